//! What each subcommand does: its arguments turned into the library's job, the call, and what is shown.
#[cfg(feature = "serve")]
use crate::args::ServeArgs;
use crate::args::{self, EvalArgs, ExportArgs, InfoArgs, PlotArgs, PredictArgs, PrepareArgs, TrainArgs, TrainTask};
use crate::render::{self, Reporter};
use crate::signals::{catch_stop_signals, Stopped};
use anyhow::Context;
use clap::error::ErrorKind;
use std::io::Write;
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;

pub fn train(args: TrainArgs) -> anyhow::Result<()> {
    let signal = catch_stop_signals().context("cannot install the Ctrl-C handler")?;
    // With several processes, rank 0 alone reports.
    let root = charrnn::world().is_root();
    let mut reporter = Reporter::new(signal, args.quiet || !root, args.verbose && root);
    let task = args.into_task().unwrap_or_else(|msg| args::usage_error("train", ErrorKind::ArgumentConflict, msg));
    let (outcome, what) = match task {
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
            if root {
                say!("{e}");
            }
            return Ok(());
        }
        other => other.context(what)?,
    };
    if let Some(e) = reporter.write_error {
        return Err(e.into());
    }
    if root {
        render::train_outcome(&outcome, reporter.quiet);
    }
    Ok(())
}

pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    if args.stream && args.samples > 1 {
        let msg = format!("--stream writes a single sample; drop --stream or --samples {}", args.samples);
        args::usage_error("predict", ErrorKind::ArgumentConflict, msg);
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
    let job = args.job().unwrap_or_else(|msg| args::usage_error("predict", ErrorKind::ArgumentConflict, msg));
    let on_char = &mut |_, c| {
        if args.stream {
            // A reader that went away (a closed pipe) ends generation at once.
            if let Err(e) = write!(out, "{c}").and_then(|_| out.flush()) {
                write_error = Some(e);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    };
    let keep_going = &mut || match signal.load(Ordering::Relaxed) {
        0 => ControlFlow::Continue(()),
        _ => ControlFlow::Break(()),
    };
    let outcome = charrnn::run_predict(&job, on_char, keep_going)?;
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

#[cfg(feature = "serve")]
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    charrnn::serve(&args.job(), &mut |address, model| {
        say!("serving {} on http://{address} (Ctrl-C stops)", model.display());
    })?;
    say!("stopped");
    Ok(())
}

pub fn eval(args: EvalArgs) -> anyhow::Result<()> {
    let mut bar = render::EvalProgress::new();
    let report = charrnn::run_eval(&args.job(), &mut |done, total| bar.update(done, total));
    bar.finish();
    let report = report?;
    Ok(render::eval_report(&mut std::io::stdout().lock(), &report, args.json)?)
}

pub fn info(args: InfoArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let json = match (args.model, args.json) {
        (Some(dir), false) => return Ok(render::model_summary(&mut out, &charrnn::model_summary(Some(&dir))?)?),
        (None, false) => return Ok(render::system_info(&mut out, &charrnn::info())?),
        (Some(dir), true) => serde_json::to_string(&charrnn::model_summary(Some(&dir))?)?,
        (None, true) => serde_json::to_string(&charrnn::info())?,
    };
    Ok(writeln!(out, "{json}")?)
}

pub fn prepare(args: PrepareArgs) -> anyhow::Result<()> {
    let select = charrnn::Selection { include: args.include.clone(), exclude: args.exclude.clone() };
    let (header, notes) = charrnn::run_prepare(&args.corpus, &args.options(), &select, &args.out)?;
    for note in notes {
        say!("note: {note}");
    }
    render::prepared(&args.out, &header);
    Ok(())
}

pub fn plot(args: PlotArgs) -> anyhow::Result<()> {
    charrnn::run_plot(&args.model, &args.out)?;
    say!("wrote {}", args.out.display());
    Ok(())
}

pub fn export(args: ExportArgs) -> anyhow::Result<()> {
    let outcome = charrnn::run_export(&args.job())?;
    for f in &outcome.files {
        say!("wrote {} ({} bytes): {}", f.file.display(), f.bytes, outcome.description);
    }
    Ok(())
}

/// Prints the completion script of `shell`.
pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    // Written here, not by clap_complete, which panics when the reader goes away (`| head -1`).
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut args::command(), "charrnn", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    Ok(out.flush()?)
}
