//! charrnn: a character-level RNN trainer and sampler on libtorch.
//!
//! The textbook char-RNN (Dive into Deep Learning, "RNN from scratch"): characters encoded one-hot with
//! `scatter`, a tanh RNN step, mean cross-entropy, gradient clipping by global norm, SGD, truncated
//! backpropagation through time with detached state, greedy prefix-conditioned prediction and perplexity.
//!
//! ```no_run
//! use charrnn::{train, predict, Arch, Network, TrainConfig, Vocabulary};
//! let text = "分开 不分开 我不能再想 我不 我不 我不要再想你";
//! let vocab = Vocabulary::from_text(text);
//! let ids = vocab.encode(text, "the corpus").unwrap();
//! let config = TrainConfig { arch: Arch::rnn(32), steps: 4, batch_size: 2, epochs: 50, ..Default::default() };
//! let model = Network::new(config.model_config(vocab.len()), 0, tch::Device::Cpu).unwrap();
//! train(&model, &vocab, &ids, &[], &config, None, &mut ()).unwrap();
//! println!("{}", predict(&model, &vocab, "分开", 10).unwrap());
//! ```
#![deny(missing_docs)]

/// `Display` for the enums that the command line takes: the name clap parses (which serde writes too:
/// both follow the variant's name, lower-cased; `names_agree` in the tests checks it).
macro_rules! display_as_value_enum {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                let value = clap::ValueEnum::to_possible_value(self).expect("no variant is skipped");
                f.write_str(value.get_name())
            }
        }
    )*};
}

mod batches;
mod beam;
pub mod bptt;
pub mod checkpoint;
mod commands;
mod corpus;
mod device;
mod error;
mod eval;
mod lock;
mod metrics;
mod model;
mod optim;
mod params;
mod plot;
mod predict;
mod prepared;
mod resume;
mod rng;
mod serve;
#[cfg(test)]
mod testutil;
mod tokens;

mod train;

pub use batches::{rows, BatchOrder, EpochPlan};
pub use beam::{beam_search, MAX_BEAM};
pub use commands::{
    default_out, info, load_model, model_summary, run_eval, run_plot, run_predict, run_resume, run_train, EvalJob,
    EvalReport, Info, ModelSummary, PredictJob, PredictOutcome, ResumeJob, TrainJob, TrainOutcome, UnknownChars,
    LAST_DIR, PLOT_FILE,
};
pub use corpus::{read_corpus, text_hash, CorpusOptions, Vocabulary};
pub use device::{device_name, load_cuda_backend, prepare_process, set_threads, CudaStatus, DeviceSpec};
pub use error::{Error, Result};
pub use eval::{evaluate, evaluate_sample, evaluate_with_progress, perplexity, Evaluation};
pub use metrics::{read_metrics, MetricsLine, METRICS_FILE};
pub use model::{cross_entropy, one_hot, step_major, Arch, Backend, Cell, Dtype, Init, ModelConfig, Network, State};
pub use optim::{LrDecay, Optimizer, OptimizerKind};
pub use plot::{perplexity_svg, Curve};
pub use predict::{
    generate, generate_batch, generate_until, predict, Batch, Generate, Generated, Sampler, DEFAULT_NUM_CHARS,
    MAX_NUM_CHARS,
};
pub use prepared::{
    cache_dir, is_token_file, load_corpus, prepare, CorpusIds, Prepared, PreparedHeader, Source, TOKENS_VERSION,
};
pub use resume::{describe_position, BestEpoch, Moments, Position, TrainState};
pub use rng::{Rng, Stream};
pub use serve::{serve, ServeJob};
pub use tokens::Tokens;
pub use train::{
    carry_state, clip_factor, train, train_step, EpochReport, IterationReport, OnDiverge, Progress, RollbackReport,
    RunInfo, SaveReason, StepOutput, TrainConfig, TrainObserver, TrainSummary, AUTO_CHECKPOINT_SECS, DEFAULT_VAL_FRAC,
    DEFAULT_VAL_MIN_CHARS,
};

display_as_value_enum!(Cell, Init, Backend, OptimizerKind, Dtype, BatchOrder, UnknownChars, OnDiverge);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    fn agree<T: ValueEnum + serde::Serialize + std::fmt::Display>() {
        for v in T::value_variants() {
            assert_eq!(
                serde_json::to_value(v).unwrap(),
                v.to_string(),
                "model files and the command line name it alike"
            );
        }
    }

    #[test]
    fn names_agree() {
        agree::<Cell>();
        agree::<Init>();
        agree::<Backend>();
        agree::<OptimizerKind>();
        agree::<Dtype>();
        agree::<BatchOrder>();
    }
}
