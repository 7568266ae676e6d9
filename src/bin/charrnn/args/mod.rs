//! The command line's schema (clap), one module per subcommand, and its conversion into the library's jobs.
//! Defaults are read from the library (`TrainConfig::default()`, `OptimizerKind::default_lr`, ...), never
//! written here.
mod choices;
mod common;
mod generate;
mod other;
mod train;

pub use generate::PredictArgs;
#[cfg(feature = "serve")]
pub use generate::ServeArgs;
pub use other::{EvalArgs, ExportArgs, InfoArgs, PlotArgs, PrepareArgs};
pub use train::{TrainArgs, TrainTask};

use clap::{CommandFactory, Parser, Subcommand};
use common::{ARCH, DRAW, NEW_RUN};

const EXAMPLES: &str = "\
Examples:
  charrnn train --corpus data/yuanqu.txt --limit-chars 10000
  charrnn predict --prefix 分开 --num-chars 10
  charrnn eval --json
  charrnn serve --port 8080
  charrnn info
  charrnn plot --model runs/yuanqu
  charrnn export --onnx yuanqu.onnx --html yuanqu.html
  charrnn completions bash";

/// Character-level RNN trainer and sampler (the textbook char-RNN on libtorch).
#[derive(Parser)]
#[command(name = "charrnn", version, after_help = EXAMPLES, args_override_self = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Train a model on a text file and save it.
    #[command(after_help = "Examples:
  charrnn train --corpus data/yuanqu.txt --limit-chars 10000
  charrnn train --corpus lyrics.txt --sampling consecutive --epochs 100 --prefix 分开 --prefix 不分开
  charrnn train --corpus lyrics.txt --cell lstm --layers 2 --embed 64 --dropout 0.2 --hidden 128
  charrnn train --corpus lyrics.txt --cell gru --optimizer adam --lr-decay 0.5 --lr-decay-every 10
  charrnn train --corpus lyrics.txt --cell lstm --backend fused --val-frac 0.1
  charrnn train --corpus notes.txt --keep-newlines --hidden 128 --out runs/notes --device cpu --threads 2
  charrnn train --corpus big.txt --cell lstm --optimizer adam --epochs 50 --checkpoint-every 5
  charrnn train --resume runs/big --epochs 80

Ctrl-C (or SIGTERM) finishes the current minibatch, saves a resumable checkpoint and exits with status 130
(143); a second Ctrl-C exits at once, leaving the last complete checkpoint.")]
    Train(Box<TrainArgs>),
    /// Generate text after a prefix: greedily, or sampled with a temperature, top-k and top-p.
    #[command(after_help = "Examples:
  charrnn predict --prefix 分开 --num-chars 10
  charrnn predict --model runs/yuanqu --prefix 不分开 --num-chars 50
  charrnn predict --prefix 分开 --num-chars 100 --temperature 0.8 --top-k 40 --seed 7 --samples 5
  charrnn predict --prefix 分开 --num-chars 2000 --temperature 1 --top-p 0.9 --stream --stop 。
  charrnn predict --prefix 分开x --num-chars 20 --unknown skip --json")]
    Predict(PredictArgs),
    /// Serve a model over HTTP: a JSON API, streamed as Server-Sent Events, and a web page at /.
    #[command(after_help = "Examples:
  charrnn serve
  charrnn serve --model runs/demo --port 8080
  curl -s localhost:8080/v1/generate -d '{\"prefix\": \"分开\", \"num_chars\": 20}'
  curl -sN localhost:8080/v1/generate -d '{\"prefix\": \"分开\", \"temperature\": 0.8, \"stream\": true}'

Ctrl-C (or SIGTERM) stops accepting connections and lets running requests finish for --grace seconds.")]
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
    /// Prepare a corpus: read text files once and write their characters as a token file, which train and
    /// eval read piece by piece as they need it (they prepare and cache one themselves on first use; this
    /// makes one explicitly).
    #[command(after_help = "Examples:
  charrnn prepare data/yuanqu.txt --out yuanqu.tokens
  charrnn prepare part1.txt part2.txt --keep-newlines --out book.tokens
  charrnn prepare src/ --keep-newlines --include '*.rs' --out code.tokens
  charrnn train --corpus book.tokens --cell gru --embed 64")]
    Prepare(PrepareArgs),
    /// Measure a model's perplexity on a text.
    #[command(after_help = "Examples:
  charrnn eval
  charrnn eval --model runs/yuanqu --corpus other.txt --limit-chars 5000 --json
  charrnn eval --stream")]
    Eval(EvalArgs),
    /// Show versions, CUDA and cuDNN availability, the device `auto` picks and CPU threads; or summarise a
    /// model.
    #[command(after_help = "Examples:\n  charrnn info\n  charrnn info --model runs/yuanqu")]
    Info(InfoArgs),
    /// Chart training and validation perplexity per epoch of one or more runs (SVG, log scale).
    #[command(
        after_help = "Examples:\n  charrnn plot --model runs/yuanqu\n  charrnn plot --model runs/rnn --model runs/gru --out cells.svg"
    )]
    Plot(PlotArgs),
    /// Write a model as files that run without charrnn: ONNX, for onnxruntime and the other ONNX runtimes,
    /// and one HTML page that generates text in a browser, offline.
    #[command(after_help = "Examples:
  charrnn export --onnx yuanqu.onnx
  charrnn export --model runs/shakespeare --onnx shakespeare.onnx --html shakespeare.html

The graph takes `chars` (Int64 [batch, steps], indices in the vocabulary's order) and the state `h0` (and
`c0` for an LSTM, Float [layers, batch, hidden], zeros to start); it gives `logits` (Float [batch, steps,
vocabulary]) and the state after the last step, `h` (and `c`). The metadata holds the vocabulary
(charrnn.vocab), the newline setting (charrnn.keep_newlines) and model.json (charrnn.model).")]
    Export(ExportArgs),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  charrnn completions bash > ~/.local/share/bash-completion/completions/charrnn\n  charrnn completions zsh > ~/.zfunc/_charrnn\n  charrnn completions fish > ~/.config/fish/completions/charrnn.fish"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The command line's schema: [`Cli`], with every flag of the groups [`NEW_RUN`], [`ARCH`] and [`DRAW`] made
/// to conflict with `--resume`, and those of [`ARCH`] with `--init-from`, flag by flag (a conflict with a
/// whole group would list all its flags in the error instead of the one given).
pub fn command() -> clap::Command {
    ignore_case_of_choices(Cli::command()).mut_subcommand("train", |mut train| {
        let members = |train: &clap::Command, group: &str| -> Vec<clap::Id> {
            let group = train.get_groups().find(|g| g.get_id() == group).expect("train's groups exist");
            group.get_args().cloned().collect()
        };
        let new_run: Vec<clap::Id> = [NEW_RUN, ARCH, DRAW].iter().flat_map(|g| members(&train, g)).collect();
        for id in new_run {
            train = train.mut_arg(id, |a| a.conflicts_with("resume"));
        }
        for id in members(&train, ARCH) {
            train = train.mut_arg(id, |a| a.conflicts_with("init_from"));
        }
        train
    })
}

/// `cmd` with every choice of every subcommand taken in any case (`--cell GRU` is `--cell gru`).
fn ignore_case_of_choices(mut cmd: clap::Command) -> clap::Command {
    let choices: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| a.get_action().takes_values() && !a.get_possible_values().is_empty())
        .map(|a| a.get_id().clone())
        .collect();
    for id in choices {
        cmd = cmd.mut_arg(id, |a| a.ignore_case(true));
    }
    let subcommands: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    for name in subcommands {
        cmd = cmd.mut_subcommand(name, ignore_case_of_choices);
    }
    cmd
}

/// Exits with a usage error of the subcommand `name` (its usage line, status 2), as clap's own.
pub fn usage_error(name: &str, kind: clap::error::ErrorKind, message: impl std::fmt::Display) -> ! {
    let mut cmd = command();
    cmd.build();
    let sub = cmd.find_subcommand_mut(name).expect("a subcommand of charrnn");
    sub.error(kind, message).exit()
}

/// The parsed command line (exits with clap's usage error on bad arguments).
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use charrnn::TrainConfig;
    use common::{parse_duration, parse_duration_or_zero};

    /// The flags a resumed run accepts (besides --resume itself and --help).
    const RESUMABLE: [&str; 16] = [
        "corpus",
        "epochs",
        "checkpoint-every",
        "max-iters",
        "time-limit",
        "device",
        "threads",
        "quiet",
        "verbose",
        "lr",
        "lr-decay",
        "lr-decay-every",
        "prefix",
        "pred-period",
        "eval-every",
        "val-chars",
    ];

    /// `charrnn train --resume m` plus one flag (with a value it accepts, if it takes one).
    fn with_resume(arg: &clap::Arg) -> Vec<String> {
        let long = arg.get_long().expect("train's flags are long");
        let mut argv = vec!["charrnn".to_string(), "train".into(), "--resume".into(), "m".into(), format!("--{long}")];
        if arg.get_action().takes_values() {
            let value = arg.get_possible_values().first().map_or("1".to_string(), |v| v.get_name().to_string());
            argv.push(match long {
                "device" => "cpu".into(),
                "time-limit" => "90s".into(),
                _ => value,
            });
        }
        argv
    }

    #[test]
    fn every_train_flag_outside_the_resumable_set_is_refused_with_resume() {
        let cli = command();
        let train = cli.find_subcommand("train").unwrap();
        let mut refused = 0;
        for arg in train.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["resume", "help"].contains(&long) {
                continue;
            }
            let argv = with_resume(arg);
            let result = command().try_get_matches_from(&argv);
            if RESUMABLE.contains(&long) {
                assert!(result.is_ok(), "{argv:?}: {}", result.err().unwrap());
            } else {
                let err = result.err().unwrap_or_else(|| panic!("{argv:?} was accepted"));
                assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict, "{argv:?}");
                assert!(err.to_string().contains(&format!("--{long}")), "{argv:?}: {err}");
                // The error names the flag given and --resume, not every flag of a new run.
                let before_usage = err.to_string().split("Usage").next().unwrap_or_default().to_string();
                assert_eq!(before_usage.matches("--").count(), 2, "{argv:?}: {err}");
                refused += 1;
            }
        }
        // The 30 flags of a new run, --out to --top-p (so the walk saw them all).
        assert_eq!(refused, 30);
    }

    #[test]
    fn architecture_flags_are_refused_with_init_from_and_run_settings_accepted() {
        let base = ["charrnn", "train", "--corpus", "c.txt", "--init-from", "m"];
        for flag in ["--hidden=8", "--cell=gru", "--layers=2", "--embed=4", "--init=uniform"] {
            let err = command().try_get_matches_from(base.iter().copied().chain([flag])).err();
            let err = err.unwrap_or_else(|| panic!("{flag} was accepted with --init-from"));
            assert_eq!(err.kind(), clap::error::ErrorKind::ArgumentConflict, "{flag}");
            assert!(err.to_string().contains(flag.split('=').next().unwrap()), "{flag}: {err}");
            let before_usage = err.to_string().split("Usage").next().unwrap_or_default().to_string();
            assert_eq!(before_usage.matches("--").count(), 2, "{flag}: {err}");
        }
        for flag in ["--dropout=0.1", "--backend=fused", "--lr=0.1", "--optimizer=adam", "--out=o", "--force"] {
            let matches = command().try_get_matches_from(base.iter().copied().chain([flag]));
            assert!(matches.is_ok(), "{flag}: {}", matches.err().unwrap());
        }
        let err = command().try_get_matches_from(["charrnn", "train", "--resume", "m", "--init-from", "m"]);
        assert_eq!(err.err().map(|e| e.kind()), Some(clap::error::ErrorKind::ArgumentConflict));
    }

    #[test]
    fn durations_read_as_people_write_them() {
        // Worked out by hand.
        let cases = [
            ("90", 90.0),
            ("90s", 90.0),
            ("1.5m", 90.0),
            ("4min", 240.0),
            ("1h30m", 5400.0),
            ("1h 30min", 5400.0),
            ("2h", 7200.0),
            ("1.5 hours", 5400.0),
            ("1d", 86_400.0),
            ("2 days 3h", 183_600.0),
            ("0.001s", 0.001),
        ];
        for (text, secs) in cases {
            assert_eq!(parse_duration(text), Ok(std::time::Duration::from_secs_f64(secs)), "{text}");
        }
        for bad in ["abc", "", "0", "0s", "-5m", "3w", "h", "inf", "1h30", "1..5h", "NaNs"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
        // --grace may be none at all; anything else is read as above.
        assert_eq!(parse_duration_or_zero("0"), Ok(std::time::Duration::ZERO));
        assert_eq!(parse_duration_or_zero(" 0.0 "), Ok(std::time::Duration::ZERO));
        assert_eq!(parse_duration_or_zero("1m30s"), Ok(std::time::Duration::from_secs(90)));
        assert!(parse_duration_or_zero("-1").is_err() && parse_duration_or_zero("0x").is_err());
    }

    #[test]
    fn defaults_come_from_the_library() {
        let cli = Cli::try_parse_from(["charrnn", "train", "--corpus", "x.txt"]).unwrap();
        let Command::Train(args) = cli.command else { panic!("train") };
        let Ok(TrainTask::New(job)) = args.into_task() else { panic!("a new run") };
        let mut expected = TrainConfig::default();
        // Two settings follow the optimizer, and report prefixes are chosen from the corpus.
        expected.arch.init = expected.optimizer.default_init();
        expected.prefixes = Vec::new();
        assert_eq!(job.config, expected);
        #[cfg(feature = "serve")]
        {
            let Command::Serve(args) = Cli::try_parse_from(["charrnn", "serve"]).unwrap().command else { panic!() };
            assert_eq!(format!("{:?}", args.job()), format!("{:?}", charrnn::ServeJob::default()));
        }
    }

    #[test]
    fn a_resumed_run_keeps_its_epochs_unless_given() {
        for (argv, epochs) in [(vec!["--epochs", "9"], Some(9)), (vec![], None)] {
            let all = [&["charrnn", "train", "--resume", "m"][..], &argv].concat();
            let Command::Train(args) = Cli::try_parse_from(&all).unwrap().command else { panic!("train") };
            let Ok(TrainTask::Resume(job)) = args.into_task() else { panic!("a resumed run") };
            assert_eq!(job.epochs, epochs);
        }
    }
}
