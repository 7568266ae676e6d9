//! What charrnn does differently by machine (issue 16): bfloat16 where the CPU has it, a note where not.
use crate::cli::Env;

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
            let mut cmd = env.command();
            cmd.env("CHARRNN_CPU_FLAGS", flags).args(crate::cli::env_train_args());
            let r = cmd.args(["--epochs", "1", "--dtype", dtype, "--out", &out]).output().unwrap();
            let stderr = String::from_utf8(r.stderr).unwrap();
            assert!(r.status.success(), "{stderr}");
            let noted = stderr.contains("note: this CPU has no native bfloat16 product");
            assert_eq!(noted, !native && dtype == "bf16", "{flags} {dtype}: {stderr}");
        }
        let info = env.command().env("CHARRNN_CPU_FLAGS", flags).arg("info").output().unwrap();
        let stdout = String::from_utf8(info.stdout).unwrap();
        let expected = if native { "cpu bf16 native" } else { "cpu bf16 emulated" };
        assert!(stdout.contains(expected), "{flags}: {stdout}");
    }
}

/// `train` (and `eval`) run with GOMP_SPINCOUNT=1000 unless the user set it or OMP_WAIT_POLICY: read from
/// the running process's own environment, which `/proc` shows as it was at its last exec.
#[test]
fn long_commands_shorten_openmp_spinning_unless_told_otherwise() {
    use std::io::BufRead;
    let env = Env::new();
    for (user, expected) in [
        (None, Some("GOMP_SPINCOUNT=1000")),
        (Some(("GOMP_SPINCOUNT", "7")), Some("GOMP_SPINCOUNT=7")),
        (Some(("OMP_WAIT_POLICY", "passive")), None),
    ] {
        let mut cmd = env.command();
        if let Some((name, value)) = user {
            cmd.env(name, value);
        }
        cmd.args(crate::cli::env_train_args()).args(["--epochs", "100000", "--out", "spin", "--force"]);
        let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let mut first = String::new();
        std::io::BufReader::new(child.stderr.as_mut().unwrap()).read_line(&mut first).unwrap();
        assert!(first.starts_with("training on"), "{first}");
        let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let vars: Vec<String> = environ.split(|&b| b == 0).map(|v| String::from_utf8_lossy(v).into_owned()).collect();
        let spin: Vec<&String> = vars.iter().filter(|v| v.starts_with("GOMP_SPINCOUNT=")).collect();
        assert_eq!(spin.first().map(|s| s.as_str()), expected, "{user:?}");
    }
}
