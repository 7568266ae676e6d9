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
        Command::Train(a) => run::train(*a),
        Command::Predict(a) => run::predict(a),
        #[cfg(feature = "serve")]
        Command::Serve(a) => run::serve(a),
        Command::Eval(a) => run::eval(a),
        Command::Info(a) => run::info(a),
        Command::Plot(a) => run::plot(a),
        Command::Prepare(a) => run::prepare(a),
        Command::Completions { shell } => run::completions(shell),
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
