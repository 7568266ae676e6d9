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
