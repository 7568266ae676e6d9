//! charrnn: a character-level RNN trainer and sampler on libtorch.
//!
//! The textbook char-RNN (Dive into Deep Learning, "RNN from scratch"): characters encoded one-hot with
//! `scatter`, a tanh RNN step, mean cross-entropy, gradient clipping by global norm, SGD, truncated
//! backpropagation through time with detached state, greedy prefix-conditioned prediction and perplexity.
//! Beyond it: GRU and LSTM cells, stacked layers, embeddings, dropout, Adam, sampling controls, beam search,
//! validation, checkpoints that survive a crash and resume exactly.
//!
//! The layers, each importing only those below it: the ground (errors, atomic writes, the generator,
//! devices) → `data` (text, vocabulary, token files, batches) → `model` (configuration, parameters, state,
//! the network, backpropagation written out) → evaluation, `generate` and `train` → `store` (model folders,
//! checkpoints, metrics, chart, lock) → `commands` (what each command of the binary does).
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
// Every type a public item exposes can be named by its users.
#![deny(unnameable_types)]

/// `Display` as the name the command line and model.json give a value (the enum's `name()`).
macro_rules! display_by_name {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }
    )*};
}

mod blas;
mod commands;
mod data;
mod device;
mod error;
mod eval;
mod generate;
mod model;
mod openmp;
mod rng;
mod simd;
pub mod store;
#[cfg(test)]
mod testutil;
mod train;
mod util;
mod world;

pub use commands::eval::{run_eval, EvalJob, EvalReport};
pub use commands::export::{run_export, ExportJob, ExportOutcome, Exported};
pub use commands::info::{info, model_summary, Info, ModelSummary};
pub use commands::load::load_model;
pub use commands::plot::run_plot;
pub use commands::predict::{run_predict, PredictJob, PredictOutcome, UnknownChars};
pub use commands::prepare::run_prepare;
pub use commands::resume::{run_resume, ResumeJob};
#[cfg(feature = "serve")]
pub use commands::serve::{serve, ServeJob};
pub use commands::train::{run_train, TrainJob, TrainOutcome};
pub use data::batches::{BatchOrder, EpochPlan};
pub use data::corpus::{cache_dir, load_corpus, load_selected, CorpusIds, Skipped};
pub use data::prepared::{is_token_file, prepare, Prepared, PreparedHeader, Source, TOKENS_VERSION};
pub use data::text::{expand_sources, select_sources, text_hash, CorpusOptions, Selection};
pub use data::tokens::{FileTokens, Tokens};
pub use data::vocab::Vocabulary;
pub use device::{
    cuda_capability_major, device_name, load_cuda_backend, native_bf16, prepare_process, set_threads, CudaStatus,
    DeviceSpec,
};
pub use error::{describe_position, Error, Result};
pub use eval::{evaluate, evaluate_sample, evaluate_with_progress, perplexity, Evaluation};
pub use generate::batch::{generate_batch, Batch};
pub use generate::beam::beam_search;
pub use generate::options::{Generate, Generated, DEFAULT_NUM_CHARS, MAX_BEAM, MAX_NUM_CHARS};
pub use generate::sampler::Sampler;
pub use generate::{generate, generate_until, predict};
pub use model::config::{Arch, Backend, Cell, Dtype, Init, ModelConfig};
pub use model::dropout::Dropout;
pub use model::network::Network;
pub use model::ops::{cross_entropy, one_hot, step_major};
pub use model::state::State;
pub use rng::{Rng, Stream};
pub use train::config::{OnDiverge, TrainConfig, AUTO_CHECKPOINT_SECS, DEFAULT_VAL_FRAC, DEFAULT_VAL_MIN_CHARS};
pub use train::observer::{
    EpochReport, IterationReport, Progress, RollbackReport, RunInfo, SaveReason, TrainObserver, TrainSummary,
};
pub use train::optim::{clip_factor, Moments, Optimizer, OptimizerKind};
pub use train::run::train;
pub use train::schedule::LrDecay;
pub use train::state::{BestEpoch, Position, TrainState};
pub use train::step::{carry_state, train_step, StepOptions, StepOutput};
pub use world::{world, World};

display_by_name!(Cell, Init, Backend, OptimizerKind, Dtype, BatchOrder, UnknownChars, OnDiverge);

#[cfg(test)]
mod tests {
    use super::*;

    /// Model files and the command line name every value alike: serde's name is the `Display` name.
    fn agree<T: serde::Serialize + std::fmt::Display>(values: &[T]) {
        for v in values {
            assert_eq!(serde_json::to_value(v).unwrap(), v.to_string());
        }
    }

    #[test]
    fn names_agree() {
        agree(&[Cell::Rnn, Cell::Gru, Cell::Lstm]);
        agree(&[Init::Normal, Init::Uniform]);
        agree(&[Backend::Scratch, Backend::Fused]);
        agree(&[OptimizerKind::Sgd, OptimizerKind::Adam]);
        agree(&[Dtype::Fp32, Dtype::Bf16]);
        agree(&[BatchOrder::Random, BatchOrder::Consecutive]);
        agree(&[OnDiverge::Stop, OnDiverge::Rollback]);
    }
}
