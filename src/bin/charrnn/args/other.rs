//! The arguments of `prepare`, `info`, `plot`, `eval` and `export`.
use crate::args::choices::UnknownArg;
use crate::args::common::DeviceArgs;
use charrnn::{CorpusOptions, EvalJob, ExportJob};
use clap::Args;
use std::path::PathBuf;

#[derive(Args)]
pub struct PrepareArgs {
    /// UTF-8 text files and folders (every file below a folder, in sorted order, hidden ones skipped, as
    /// train reads them), read in order as one text.
    #[arg(required = true, value_name = "CORPUS")]
    pub corpus: Vec<PathBuf>,
    /// The token file to write.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Keep newlines (by default each newline and carriage return becomes a space).
    #[arg(long)]
    pub keep_newlines: bool,
    /// Use only the first N characters.
    #[arg(long, value_name = "N")]
    pub limit_chars: Option<usize>,
    /// Read only the files of a folder that match GLOB (as train's --include); repeat for several.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out the files of a folder that match GLOB (as train's --exclude); repeat for several.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
}

impl PrepareArgs {
    /// How the text is read.
    pub fn options(&self) -> CorpusOptions {
        CorpusOptions { keep_newlines: self.keep_newlines, limit_chars: self.limit_chars }
    }
}

#[derive(Args)]
pub struct InfoArgs {
    /// Summarise this model folder instead (cell, sizes, parameters, vocabulary, epochs, perplexities, corpus).
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Print one JSON object instead of text (with --model: the folder, everything model.json says, the
    /// parameter count and where a resumable run stands).
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct PlotArgs {
    /// A model folder whose metrics.jsonl to draw; repeat for several runs on one chart.
    #[arg(long, value_name = "DIR", required = true)]
    pub model: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long, value_name = "FILE", default_value = "perplexity.svg")]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Model folder [default: the last model `train` wrote from this folder].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// The ONNX file to write (opset 17): characters and state in, next-character scores and state out, the
    /// vocabulary in its metadata.
    #[arg(long, value_name = "FILE", required_unless_present = "html")]
    pub onnx: Option<PathBuf>,
    /// The HTML page to write: the model and a generator in one file that works offline in a browser.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

impl ExportArgs {
    /// The library's job.
    pub fn job(&self) -> ExportJob {
        ExportJob { model: self.model.clone(), onnx: self.onnx.clone(), html: self.html.clone() }
    }
}

#[derive(Args)]
pub struct EvalArgs {
    /// Model folder [default: the last model `train` wrote from this folder].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,
    /// Text to evaluate on: files, folders or a token file, as in train; repeatable [default: the training
    /// corpus, read with the training settings].
    #[arg(long, value_name = "PATH")]
    pub corpus: Vec<PathBuf>,
    /// Use only the first N characters.
    #[arg(long, value_name = "N")]
    pub limit_chars: Option<usize>,
    /// Read the text as one stream; by default it is read in windows of the context the model was trained
    /// with (--steps for random sampling, a whole row for consecutive), each from a zero state.
    #[arg(long)]
    pub stream: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Score only the held-out part of the training corpus (the text the model did not train on, split as
    /// the run split it): the run's validation perplexity of this model.
    #[arg(long, conflicts_with_all = ["corpus", "limit_chars"])]
    pub held_out: bool,
    /// Characters the model does not know: error (name them) or skip (leave them out, the text around them
    /// joined, and say how many).
    #[arg(long, value_enum, default_value_t = UnknownArg::from(charrnn::UnknownChars::default()))]
    pub unknown: UnknownArg,
    #[command(flatten)]
    pub device: DeviceArgs,
}

impl EvalArgs {
    /// The library's job.
    pub fn job(&self) -> EvalJob {
        EvalJob {
            model: self.model.clone(),
            corpus: self.corpus.clone(),
            limit_chars: self.limit_chars,
            device: self.device.device,
            threads: self.device.threads,
            stream: self.stream,
            unknown: self.unknown.into(),
            held_out: self.held_out,
        }
    }
}
