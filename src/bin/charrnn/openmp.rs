//! OpenMP's waiting threads made quieter for the long commands: they start themselves again, before libtorch
//! and libgomp load, with `GOMP_SPINCOUNT=1000` added to their environment.
/// OpenMP's spin before a waiting thread sleeps: libgomp's default (300,000 spins, unless `OMP_WAIT_POLICY`
/// or `GOMP_SPINCOUNT` say otherwise) keeps idle threads busy long enough that two charrnn processes on
/// shared cores slow each other several times over (once 40 times). With 1,000, training beside another
/// one or beside a busy loop runs close to the best setting (`benches/loaded_machine.sh`, README).
const QUIETER_SPIN: &std::ffi::CStr = c"GOMP_SPINCOUNT=1000";

/// libgomp reads its environment in its initialiser, which runs when libtorch is loaded, before `main`, and
/// the C library's own initialiser (which sets up `environ`) runs before it, so `setenv` cannot come in
/// between. Functions in an executable's `.preinit_array` run before every shared library's initialiser
/// (the ELF rule for `DT_PREINIT_ARRAY`), when only the loader's relocations (about a millisecond) have been
/// done: this one starts `train`, `eval` and `predict` again at once with [`QUIETER_SPIN`] added to the
/// environment the kernel gave, before libtorch starts (which is what costs a tenth of a second). A value
/// the user set, or `OMP_WAIT_POLICY`, is kept. `tests/integration/machines.rs` checks what libgomp itself
/// read (`OMP_DISPLAY_ENV=verbose`).
#[used]
#[link_section = ".preinit_array"]
static QUIETER_OPENMP_WAITS: PreInit = rerun_with_quieter_openmp_waits;

/// What glibc passes to a `.preinit_array` function: `argc`, `argv` and `envp`, as `main` would get them.
type PreInit = extern "C" fn(std::ffi::c_int, *const *const std::ffi::c_char, *const *const std::ffi::c_char);

extern "C" fn rerun_with_quieter_openmp_waits(
    argc: std::ffi::c_int,
    argv: *const *const std::ffi::c_char,
    envp: *const *const std::ffi::c_char,
) {
    use std::ffi::{c_char, c_int, CStr};
    extern "C" {
        fn execve(path: *const c_char, argv: *const *const c_char, envp: *const *const c_char) -> c_int;
    }
    // No allocation: the C library is not initialised yet. A larger environment is left as it is.
    const MAX_VARS: usize = 2048;
    // SAFETY: argv and envp are the kernel's NULL-terminated arrays of NUL-terminated strings (argv has argc
    // entries); nothing but this function runs yet. execve only returns when it fails, and then this process
    // goes on as it is.
    unsafe {
        if argc < 2 || argv.is_null() || envp.is_null() || (*argv.add(1)).is_null() {
            return;
        }
        if !matches!(CStr::from_ptr(*argv.add(1)).to_bytes(), b"train" | b"eval" | b"predict") {
            return;
        }
        let mut env = [std::ptr::null::<c_char>(); MAX_VARS];
        let mut n = 0;
        while !(*envp.add(n)).is_null() {
            let var = CStr::from_ptr(*envp.add(n)).to_bytes();
            if var.starts_with(b"GOMP_SPINCOUNT=") || var.starts_with(b"OMP_WAIT_POLICY=") || n + 2 >= MAX_VARS {
                return;
            }
            env[n] = *envp.add(n);
            n += 1;
        }
        env[n] = QUIETER_SPIN.as_ptr();
        execve(c"/proc/self/exe".as_ptr(), argv, env.as_ptr());
    }
}
