//! The `charrnn` command: parses its arguments (args/), runs the subcommand (run.rs), shows the results
//! (render.rs) and maps errors to exit codes.
/// `eprintln!` that cannot panic: with stderr closed (`charrnn train 2>&1 | head`), a diagnostic is lost
/// rather than aborting the run.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod args;
mod openmp;
mod render;
mod run;
mod signals;

use args::Command;
use signals::Stopped;
use std::process::ExitCode;

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// Whether every rank of a job ends with `e` at the same point: a stop they agreed on, a divergence of the
/// loss they share, or an error they agreed on.
fn is_everywhere(e: &anyhow::Error) -> bool {
    use charrnn::Error;
    matches!(
        e.downcast_ref::<Error>(),
        Some(Error::Interrupted { .. } | Error::LimitReached { .. } | Error::Diverged { .. })
            | Some(Error::Ranks { everywhere: true, .. })
    )
}

/// Says on stderr how a command ended with `e`: stopped by a signal, or failed.
fn report(e: &anyhow::Error) {
    if let Some(charrnn::Error::Interrupted { .. }) = e.downcast_ref() {
        say!("stopped: {e}");
    } else if let Some(stopped) = e.downcast_ref::<Stopped>() {
        say!("stopped: {stopped}");
    } else {
        let line = format!("{e:#}").replace('\n', " ");
        say!("error: {line}");
    }
}

/// The exit status for `e`: 128 + the signal for a stop by signal, else 1.
fn exit_code(e: &anyhow::Error) -> ExitCode {
    let signal = match (e.downcast_ref::<charrnn::Error>(), e.downcast_ref::<Stopped>()) {
        (Some(&charrnn::Error::Interrupted { signal, .. }), _) => signal,
        (_, Some(stopped)) => stopped.signal,
        _ => return ExitCode::FAILURE,
    };
    ExitCode::from((128 + signal).clamp(0, 255) as u8)
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
    // Under mpirun or srun, this process joins the job's other ranks (see charrnn::World).
    let world = match charrnn::World::init() {
        Ok(world) => world,
        Err(e) => {
            say!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cli = args::parse();
    if world.size() > 1 && !matches!(cli.command, Command::Train(_)) {
        if world.is_root() {
            say!(
                "error: only `charrnn train` runs on several processes; run the other commands without mpirun or srun"
            );
        }
        world.finish();
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Train(a) => run::train(*a),
        Command::Predict(a) => run::predict(a),
        #[cfg(feature = "serve")]
        Command::Serve(a) => run::serve(a),
        Command::Eval(a) => run::eval(a),
        Command::Info(a) => run::info(a),
        Command::Plot(a) => run::plot(a),
        Command::Export(a) => run::export(a),
        Command::Prepare(a) => run::prepare(a),
        Command::Completions { shell } => run::completions(shell),
    };
    if let Err(e) = &result {
        if world.size() > 1 && !is_everywhere(e) {
            // An error the other ranks do not know of: they would wait for this one forever.
            let line = format!("{e:#}").replace('\n', " ");
            say!("error: rank {}: {line}; stopping every rank", world.rank());
            world.abort(1);
        }
    }
    // Rank 0 alone says how a run ended that every rank ended alike, before MPI ends: after Ctrl-C, mpirun
    // may kill the ranks while they finalize.
    let code = match &result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(e) => ExitCode::SUCCESS,
        Err(e) => {
            if world.is_root() {
                report(e);
            }
            exit_code(e)
        }
    };
    world.finish();
    code
}
