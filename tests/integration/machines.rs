//! What charrnn does differently by machine (issue 16): bfloat16 where the CPU has it, a note where not.
use crate::cli::{env_train_args, output, Env};

/// `CHARRNN_CPU_FLAGS` plays a CPU: an AMD Zen 3 (AVX2, no bfloat16 units) gets a note with `--dtype bf16`
/// and `info` says bf16 is emulated; a Zen 4 (AVX512-BF16) and a Sapphire Rapids (AMX-BF16) get neither;
/// fp32 never gets the note.
#[test]
fn bf16_without_native_units_is_announced() {
    let env = Env::new();
    let zen3 = "flags : fpu avx avx2 fma";
    let cpus = [(zen3, false), ("flags : avx2 avx512f avx512_bf16", true), ("flags : avx2 amx_bf16", true)];
    for (i, (flags, native)) in cpus.into_iter().enumerate() {
        for dtype in ["bf16", "fp32"] {
            let out = format!("m-{i}-{dtype}");
            let mut cmd =
                env.command(&[&env_train_args()[..], &["--epochs", "1", "--dtype", dtype, "--out", &out]].concat());
            cmd.env("CHARRNN_CPU_FLAGS", flags);
            let r = output(cmd);
            let stderr = r.stderr;
            assert_eq!(r.code, 0, "{stderr}");
            let noted = stderr.contains("note: this CPU has no native bfloat16 product");
            assert_eq!(noted, !native && dtype == "bf16", "{flags} {dtype}: {stderr}");
        }
        let mut info = env.command(&["info"]);
        info.env("CHARRNN_CPU_FLAGS", flags);
        let stdout = output(info).stdout;
        let expected = if native { "cpu bf16 native" } else { "cpu bf16 emulated" };
        assert!(stdout.contains(expected), "{flags}: {stdout}");
    }
}

/// `--dtype auto` trains in bf16 on a CPU that multiplies bfloat16 natively and in fp32 on one that does
/// not (the CPUs played by `CHARRNN_CPU_FLAGS`, as above), says which in a note, and records the precision
/// chosen in model.json, where a resumed run finds it.
#[test]
fn dtype_auto_follows_the_cpu() {
    let env = Env::new();
    for (flags, expected) in [("flags : fpu avx avx2 fma", "fp32"), ("flags : avx2 avx512f avx512_bf16", "bf16")] {
        let out = format!("auto-{expected}");
        let mut cmd =
            env.command(&[&env_train_args()[..], &["--epochs", "1", "--dtype", "auto", "--out", &out]].concat());
        cmd.env("CHARRNN_CPU_FLAGS", flags);
        let r = output(cmd);
        let stderr = r.stderr;
        assert_eq!(r.code, 0, "{stderr}");
        assert!(stderr.contains(&format!("note: --dtype auto: {expected}, as this CPU")), "{flags}: {stderr}");
        assert!(!stderr.contains("no native bfloat16 product (neither"), "auto never picks the slow path: {stderr}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(env.path(&out).join("model.json")).unwrap()).unwrap();
        assert_eq!(json["train"]["precision"], expected, "{flags}");
    }
}

/// `--backend auto` (the default) trains every cell on the CPU written out, whose backward pass charrnn
/// writes out, but an LSTM with dropout (which goes through autograd) with libtorch's fused kernel; an
/// explicit backend is kept. The choice is recorded in model.json and named in the run's first line.
/// (On a GPU, auto picks the fused kernels: benches/gpu_check.sh checks it.)
#[test]
fn the_default_backend_is_the_faster_one_for_the_cell() {
    let env = Env::new();
    for (cell, flags, expected) in [
        ("lstm", &[][..], "scratch"),
        ("lstm", &["--layers", "2", "--dropout", "0.2"][..], "fused"),
        ("gru", &["--layers", "2", "--dropout", "0.2"][..], "scratch"),
        ("gru", &[], "scratch"),
        ("rnn", &[], "scratch"),
        ("lstm", &["--backend", "scratch"], "scratch"),
        ("gru", &["--backend", "fused"], "fused"),
    ] {
        let out = format!("{cell}-{}", flags.join(""));
        let r = env.train(&[&["--cell", cell, "--epochs", "1", "--out", &out][..], flags].concat());
        assert_eq!(r.code, 0, "{}", r.stderr);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(env.path(&out).join("model.json")).unwrap()).unwrap();
        assert_eq!(json["model"]["backend"], expected, "{cell} {flags:?}");
        let first = r.stderr.lines().next().unwrap();
        assert_eq!(first.contains("fused kernels"), expected == "fused", "{first}");
    }
    // An LSTM on the fused kernels, with dropout between its layers, resumes bit for bit (1 + 1 epochs = 2).
    let lstm = ["--cell", "lstm", "--layers", "2", "--dropout", "0.2", "--embed", "8", "--optimizer", "adam"];
    assert_eq!(env.train(&[&lstm[..], &["--epochs", "2", "--out", "whole"]].concat()).code, 0);
    assert_eq!(env.train(&[&lstm[..], &["--epochs", "1", "--out", "halves"]].concat()).code, 0);
    let resumed = env.run(&["train", "--resume", "halves", "--epochs", "2"]);
    assert_eq!(resumed.code, 0, "{}", resumed.stderr);
    let weights = |dir: &str| {
        let file = std::fs::read_dir(env.path(dir))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|x| x == "safetensors"));
        std::fs::read(file.expect("a weights file")).unwrap()
    };
    assert!(weights("whole") == weights("halves"), "resumed weights differ from an unbroken run's");
}

/// `train`, `eval` and `predict` run with GOMP_SPINCOUNT=1000 unless the user set it or OMP_WAIT_POLICY;
/// `info` runs as it is. The value is the one libgomp itself read when it started (`OMP_DISPLAY_ENV=verbose`
/// makes it print its settings then), printed once: charrnn starts itself again before libtorch and
/// libgomp are loaded, not after. The arguments (non-ASCII, with spaces) and the results survive the
/// restart.
#[test]
fn long_commands_shorten_openmp_spinning_unless_told_otherwise() {
    let env = Env::new();
    let spins = |stderr: &str| -> Vec<String> {
        stderr.lines().filter_map(|l| l.trim().strip_prefix("GOMP_SPINCOUNT = ")).map(str::to_string).collect()
    };
    let mut train = env.command(&[&env_train_args()[..], &["--epochs", "2", "--out", "m"]].concat());
    train.env_remove("GOMP_SPINCOUNT").env_remove("OMP_WAIT_POLICY").env("OMP_DISPLAY_ENV", "verbose");
    let trained = output(train);
    let stderr = trained.stderr;
    assert_eq!(trained.code, 0, "{stderr}");
    assert_eq!(spins(&stderr), ["'1000'"], "{stderr}");
    assert!(env.path("m/model.json").exists());
    let eval = ["eval", "--model", "m", "--json"];
    let predict = ["predict", "--model", "m", "--prefix", "不知 不觉", "--num-chars", "5"];
    for (user, expected) in
        [(None, "'1000'"), (Some(("GOMP_SPINCOUNT", "7")), "'7'"), (Some(("OMP_WAIT_POLICY", "passive")), "'0'")]
    {
        for args in [&eval[..], &predict[..]] {
            let mut cmd = env.command(args);
            cmd.env_remove("GOMP_SPINCOUNT").env_remove("OMP_WAIT_POLICY").env("OMP_DISPLAY_ENV", "verbose");
            if let Some((name, value)) = user {
                cmd.env(name, value);
            }
            let out = output(cmd);
            let (stdout, stderr) = (out.stdout, out.stderr);
            assert_eq!(out.code, 0, "{args:?} {user:?}: {stderr}");
            assert_eq!(spins(&stderr), [expected], "{args:?} {user:?}: {stderr}");
            if args[0] == "predict" {
                assert!(stdout.starts_with("不知 不觉") && stdout.trim_end().chars().count() == 10, "{stdout}");
            } else {
                let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
                assert_eq!(json["predictions"], 6 * crate::cli::LYRICS.chars().count() - 1, "{stdout}");
            }
        }
    }
    // info is not started again: libgomp keeps its own default.
    let mut info = env.command(&["info"]);
    info.env_remove("GOMP_SPINCOUNT").env_remove("OMP_WAIT_POLICY").env("OMP_DISPLAY_ENV", "verbose");
    let out = output(info);
    let stderr = out.stderr;
    assert!(out.code == 0 && spins(&stderr).len() == 1 && spins(&stderr)[0] != "'1000'", "{stderr}");
}
