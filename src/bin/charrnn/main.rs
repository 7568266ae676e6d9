//! The `charrnn` command: parses arguments (args.rs), calls the library, shows the results (render.rs) and
//! maps errors to exit codes.
/// `eprintln!` that cannot panic: with stderr closed (`charrnn train 2>&1 | head`), a diagnostic is lost
/// rather than aborting the run.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod render;

use anyhow::Context;
use args::{Command, EvalArgs, InfoArgs, PlotArgs, PredictArgs, PrepareArgs, ServeArgs, TrainArgs, TrainTask};
use render::Reporter;
use std::io::Write;
use std::ops::ControlFlow;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Makes the first SIGINT or SIGTERM a request (recorded in the returned number, which the training loop
/// polls after each minibatch) and a second one an immediate exit with status 128 + signal.
fn catch_stop_signals() -> std::io::Result<Arc<AtomicUsize>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let received = Arc::new(AtomicUsize::new(0));
    let once = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Handlers run in the order registered: the exit checks the flag before this signal sets it.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&once))?;
        signal_hook::flag::register(sig, Arc::clone(&once))?;
        signal_hook::flag::register_usize(sig, Arc::clone(&received), sig as usize)?;
    }
    Ok(received)
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    let signal = catch_stop_signals().context("cannot install the Ctrl-C handler")?;
    let mut reporter = Reporter::new(signal, args.quiet, args.verbose);
    let (outcome, what) = match args.into_task() {
        TrainTask::Resume(job) => {
            let what = format!("resuming {} failed", job.dir.display());
            (charrnn::run_resume(&job, &mut reporter), what)
        }
        TrainTask::New(job) => {
            let corpus: Vec<String> = job.corpus.iter().map(|p| p.display().to_string()).collect();
            let what = format!("training on {} failed", corpus.join(", "));
            (charrnn::run_train(&job, &mut reporter), what)
        }
    };
    if let Some(bar) = &reporter.bar {
        bar.finish_and_clear();
    }
    let outcome = match outcome {
        Err(e @ charrnn::Error::Interrupted { .. }) => return Err(e.into()),
        // A limit the user set is a normal end: the checkpoint is saved, and the message says how to go on.
        Err(e @ charrnn::Error::LimitReached { .. }) => {
            say!("{e}");
            return Ok(());
        }
        other => other.context(what)?,
    };
    if let Some(e) = reporter.write_error {
        return Err(e.into());
    }
    render::train_outcome(&outcome, reporter.quiet);
    Ok(())
}

/// A command other than `train` stopped by SIGINT or SIGTERM after showing what it had (exit 128 + signal).
#[derive(Debug)]
struct Stopped {
    signal: i32,
    what: String,
}

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "interrupted; {}", self.what)
    }
}

impl std::error::Error for Stopped {}

fn predict(args: PredictArgs) -> anyhow::Result<()> {
    if args.stream && args.samples > 1 {
        let msg = format!("--stream writes a single sample; drop --stream or --samples {}", args.samples);
        args::usage_error("predict", clap::error::ErrorKind::ArgumentConflict, msg);
    }
    let signal = catch_stop_signals().context("cannot install the Ctrl-C handler")?;
    if !args.stream && !args.json && (100_001..=charrnn::MAX_NUM_CHARS).contains(&args.num_chars) {
        say!(
            "note: {} characters are printed when all are generated; --stream shows them as they come, and Ctrl-C prints what there is",
            args.num_chars
        );
    }
    let mut out = std::io::stdout().lock();
    let mut write_error = None;
    let outcome = charrnn::run_predict(&args.job(), &mut |_, c| {
        if signal.load(Ordering::Relaxed) != 0 {
            return ControlFlow::Break(());
        }
        if args.stream {
            // A reader that went away (a closed pipe) ends generation at once.
            if let Err(e) = write!(out, "{c}").and_then(|_| out.flush()) {
                write_error = Some(e);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    })?;
    if let Some(e) = write_error {
        return Err(e.into());
    }
    render::predict_outcome(&mut out, &outcome, args.json, args.stream)?;
    match signal.load(Ordering::Relaxed) {
        0 => Ok(()),
        sig => {
            let n: usize = outcome.samples.iter().map(|s| s.generated.chars().count()).sum();
            let what = format!("printed the {n} characters generated so far");
            Err(Stopped { signal: sig as i32, what }.into())
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    charrnn::serve(&args.job(), &mut |address, model| {
        say!("serving {} on http://{address} (Ctrl-C stops)", model.display());
    })?;
    say!("stopped");
    Ok(())
}

fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let mut bar = render::EvalProgress::new();
    let report = charrnn::run_eval(&args.job(), &mut |done, total| bar.update(done, total));
    bar.finish();
    let report = report?;
    Ok(render::eval_report(&mut std::io::stdout().lock(), &report, args.json)?)
}

fn info(args: InfoArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match args.model {
        Some(dir) => render::model_summary(&mut out, &charrnn::model_summary(Some(&dir))?)?,
        None => render::system_info(&mut out, &charrnn::info())?,
    }
    Ok(())
}

fn prepare(args: PrepareArgs) -> anyhow::Result<()> {
    args.options().validate()?;
    let header = charrnn::prepare(&args.corpus, &args.options(), &args.out)?;
    render::prepared(&args.out, &header);
    Ok(())
}

fn plot(args: PlotArgs) -> anyhow::Result<()> {
    charrnn::run_plot(&args.model, &args.out)?;
    say!("wrote {}", args.out.display());
    Ok(())
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

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

fn main() -> ExitCode {
    // Before libtorch (and MKL in it) starts, and before any other thread.
    charrnn::prepare_process();
    // libtorch failures that tch turns into panics still get one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("unknown panic");
        say!("error: internal error: {}", msg.lines().next().unwrap_or(msg));
    }));
    let cli = args::parse();
    let result = match cli.command {
        Command::Train(a) => train(*a),
        Command::Predict(a) => predict(a),
        Command::Serve(a) => serve(a),
        Command::Eval(a) => eval(a),
        Command::Info(a) => info(a),
        Command::Plot(a) => plot(a),
        Command::Prepare(a) => prepare(a),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut args::command(), "charrnn", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(&charrnn::Error::Interrupted { signal, .. }) = e.downcast_ref() {
                say!("stopped: {e}");
                return ExitCode::from((128 + signal).clamp(0, 255) as u8);
            }
            if let Some(stopped) = e.downcast_ref::<Stopped>() {
                say!("stopped: {stopped}");
                return ExitCode::from((128 + stopped.signal).clamp(0, 255) as u8);
            }
            let line = format!("{e:#}").replace('\n', " ");
            say!("error: {line}");
            ExitCode::FAILURE
        }
    }
}
