//! The command line's schema (clap), one module per subcommand, and its conversion into the library's jobs.
//! Defaults are read from the library (`TrainConfig::default()`, `OptimizerKind::default_lr`, ...), never
//! written here.
mod choices;
mod generate;
mod other;
mod train;

pub use generate::PredictArgs;
#[cfg(feature = "serve")]
pub use generate::ServeArgs;
pub use other::{EvalArgs, InfoArgs, PlotArgs, PrepareArgs};
pub use train::{TrainArgs, TrainTask};

use charrnn::DeviceSpec;
use clap::{Args, CommandFactory, Parser, Subcommand};

/// The argument groups whose flags a resumed run refuses (and, for [`ARCH`], `--init-from` too).
/// The argument group of [`train::NewRunArgs`].
pub(crate) const NEW_RUN: &str = "new-run";
/// The argument group of [`train::ArchArgs`].
pub(crate) const ARCH: &str = "arch";
/// The argument group of [`generate::DrawArgs`].
pub(crate) const DRAW: &str = "draw";

const EXAMPLES: &str = "\
Examples:
  charrnn train --corpus data/yuanqu.txt --limit-chars 10000
  charrnn predict --prefix 分开 --num-chars 10
  charrnn eval --json
  charrnn serve --port 8080
  charrnn info
  charrnn plot --model runs/yuanqu
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
    /// eval memory-map (they prepare and cache one themselves on first use; this makes one explicitly).
    #[command(after_help = "Examples:
  charrnn prepare data/yuanqu.txt --out yuanqu.tokens
  charrnn prepare part1.txt part2.txt --keep-newlines --out book.tokens
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
    Cli::command().mut_subcommand("train", |mut train| {
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

/// Where libtorch computes (shared by train, predict, serve and eval).
#[derive(Args)]
pub struct DeviceArgs {
    /// Device: auto, cpu, cuda or cuda:N.
    #[arg(long, default_value_t = DeviceSpec::Auto, value_name = "D")]
    pub device: DeviceSpec,
    /// CPU threads for libtorch [default: one per core for train and eval, 1 for predict and serve].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}
