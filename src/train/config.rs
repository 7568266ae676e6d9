//! Training hyperparameters: [`TrainConfig`], whose `Default` is the textbook's, and the checks of their
//! ranges.
use crate::data::batches::BatchOrder;
use crate::error::{Error, Result};
use crate::generate::sampler::Sampler;
use crate::model::config::{Arch, Dtype, ModelConfig};
use crate::train::optim::OptimizerKind;
use crate::train::schedule::LrDecay;

/// Training hyperparameters. `Default` is the textbook's setting (Dive into Deep Learning, 1st ed., §6.4).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// The network to train (its architecture; the vocabulary comes from the corpus).
    #[serde(flatten)]
    pub arch: Arch,
    /// Time steps per sequence (BPTT length).
    pub steps: usize,
    /// Sequences per minibatch (`--batch`).
    #[serde(rename = "batch")]
    pub batch_size: usize,
    /// Update rule.
    #[serde(default)]
    pub optimizer: OptimizerKind,
    /// Learning rate (of SGD: applied to the gradient of the mean loss).
    pub lr: f64,
    /// Learning-rate decay.
    #[serde(default)]
    pub lr_decay: LrDecay,
    /// Gradient clipping threshold theta on the global L2 norm.
    pub clip: f64,
    /// The precision of the output layer's products (`--dtype`).
    #[serde(default, rename = "precision")]
    pub dtype: Dtype,
    /// Passes over the corpus.
    pub epochs: usize,
    /// How minibatches are cut from the corpus (`--sampling`).
    #[serde(rename = "sampling")]
    pub batch_order: BatchOrder,
    /// Seed of the parameter initialisation and the random sampler.
    pub seed: u64,
    /// Prefixes to predict from every `pred_period` epochs.
    pub prefixes: Vec<String>,
    /// Fraction of the corpus (its end) held out for validation; `None` means 0.1 for corpora of at least
    /// 20,000 characters, else 0 (see [`TrainConfig::resolved_val_frac`]).
    #[serde(default)]
    pub val_frac: Option<f64>,
    /// Epochs between progress reports with predictions.
    pub pred_period: usize,
    /// Characters generated per prediction in those reports.
    pub pred_len: usize,
    /// How the report predictions choose characters (greedy by default; the seed is `seed` plus the epoch).
    #[serde(default)]
    pub sampler: Sampler,
    /// Epochs between checkpoints; `None`: after every minibatch that ends at least `auto_checkpoint` (by
    /// default [`AUTO_CHECKPOINT_SECS`]) after the previous checkpoint, so that an epoch of hours is saved
    /// every minute or so too. There is always one after the last epoch.
    #[serde(default)]
    pub checkpoint_every: Option<usize>,
    /// Stop (with a resumable checkpoint) once the run has trained this many minibatches in all, its
    /// earlier epochs and resumes included. Not saved: each invocation sets its own.
    #[serde(skip)]
    pub max_iters: Option<u64>,
    /// Stop (with a resumable checkpoint) after the minibatch that ends this long after `train` was called.
    /// Not saved.
    #[serde(skip)]
    pub time_limit: Option<std::time::Duration>,
    /// Minibatches between evaluations of the held-out text inside an epoch, each with a report
    /// ([`crate::TrainObserver::iteration`]) and the best model kept; `None`: at epoch ends only.
    #[serde(default)]
    pub eval_every: Option<usize>,
    /// At most about this many held-out characters per evaluation, spread over the held-out part
    /// ([`crate::evaluate_sample`]); `None`: all of it.
    #[serde(default)]
    pub val_chars: Option<usize>,
    /// What a non-finite loss or gradient norm does: stop (keeping the last checkpoint), or roll back.
    #[serde(default)]
    pub on_diverge: OnDiverge,
    /// With rollback, the factor on the learning rate after each rollback, in (0, 1).
    #[serde(default = "half")]
    pub rollback_lr_factor: f64,
    /// With rollback, how many rollbacks a run may make before it stops as without.
    #[serde(default = "three")]
    pub max_rollbacks: usize,
    /// With `checkpoint_every: None`, the least time between two checkpoints. Not saved.
    #[serde(skip, default = "auto_checkpoint")]
    pub auto_checkpoint: std::time::Duration,
}

fn half() -> f64 {
    0.5
}

fn three() -> usize {
    3
}

/// What training does when the loss or the gradient norm stops being finite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDiverge {
    /// Stop with [`Error::Diverged`]; the last checkpoint stays as it was.
    #[default]
    Stop,
    /// Go back to the parameters and optimizer state at the end of the last good epoch (kept in memory),
    /// multiply the learning rate by `rollback_lr_factor` and carry on, at most `max_rollbacks` times.
    Rollback,
}

impl OnDiverge {
    /// The name `--on-diverge` and model.json give it.
    pub fn name(self) -> &'static str {
        match self {
            OnDiverge::Stop => "stop",
            OnDiverge::Rollback => "rollback",
        }
    }
}

fn auto_checkpoint() -> std::time::Duration {
    std::time::Duration::from_secs(AUTO_CHECKPOINT_SECS)
}

/// With `val_frac: None`, the fraction held out of corpora of at least [`DEFAULT_VAL_MIN_CHARS`] characters.
pub const DEFAULT_VAL_FRAC: f64 = 0.1;

/// With `val_frac: None`, the shortest corpus (in characters) that gets a validation split.
pub const DEFAULT_VAL_MIN_CHARS: usize = 20_000;

/// With `checkpoint_every: None`, the least time between two checkpoints, in seconds.
pub const AUTO_CHECKPOINT_SECS: u64 = 60;

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            arch: Arch::default(),
            steps: 35,
            batch_size: 32,
            optimizer: OptimizerKind::Sgd,
            lr: OptimizerKind::Sgd.default_lr(),
            lr_decay: LrDecay::default(),
            clip: 0.01,
            dtype: Dtype::Fp32,
            epochs: 250,
            batch_order: BatchOrder::Random,
            seed: 0,
            prefixes: vec!["分开".into(), "不分开".into()],
            val_frac: None,
            pred_period: 50,
            pred_len: 50,
            sampler: Sampler::default(),
            checkpoint_every: None,
            max_iters: None,
            time_limit: None,
            eval_every: None,
            val_chars: None,
            on_diverge: OnDiverge::Stop,
            rollback_lr_factor: half(),
            max_rollbacks: three(),
            auto_checkpoint: auto_checkpoint(),
        }
    }
}

impl TrainConfig {
    /// The validation fraction for a corpus of `chars` characters: the configured one, else 0.1 from 20,000
    /// characters on and 0 below.
    pub fn resolved_val_frac(&self, chars: usize) -> f64 {
        self.val_frac.unwrap_or(if chars >= DEFAULT_VAL_MIN_CHARS { DEFAULT_VAL_FRAC } else { 0.0 })
    }

    /// Characters held out for validation from a corpus of `chars` (its end): that fraction of it, rounded.
    pub fn held_out(&self, chars: usize) -> usize {
        (chars as f64 * self.resolved_val_frac(chars)).round() as usize
    }

    /// The learning rate of `epoch` (from 1): the decayed rate times `lr_scale`, the factor that rollbacks
    /// after divergence left (1 without any).
    pub fn lr_at(&self, epoch: usize, lr_scale: f64) -> f64 {
        self.lr_decay.lr_at(self.lr, epoch) * lr_scale
    }

    /// The network these settings describe, over `vocab_size` characters.
    pub fn model_config(&self, vocab_size: usize) -> ModelConfig {
        ModelConfig::new(vocab_size, self.arch)
    }

    /// Checks every value is in range (positive sizes, finite positive rates).
    pub fn validate(&self) -> Result<()> {
        self.arch.validate()?;
        self.lr_decay.validate()?;
        if let Some(f) = self.val_frac {
            if !(0.0..1.0).contains(&f) {
                return Err(Error::config("--val-frac", format!("must be at least 0 and below 1, got {f}")));
            }
        }
        let positive = [
            ("--steps", self.steps),
            ("--batch", self.batch_size),
            ("--epochs", self.epochs),
            ("--pred-period", self.pred_period),
        ];
        for (name, v) in positive {
            if v == 0 {
                return Err(Error::config(name, "must be at least 1"));
            }
        }
        for (name, v) in [("--lr", self.lr), ("--clip", self.clip)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::config(name, format!("must be a positive number, got {v}")));
            }
        }
        self.sampler.validate()?;
        if !(self.rollback_lr_factor > 0.0 && self.rollback_lr_factor < 1.0) {
            let reason = format!("must be above 0 and below 1, got {}", self.rollback_lr_factor);
            return Err(Error::config("--rollback-lr-factor", reason));
        }
        if self.eval_every == Some(0) {
            return Err(Error::config("--eval-every", "must be at least 1"));
        }
        if self.val_chars.is_some_and(|n| n < 2) {
            return Err(Error::config("--val-chars", "must be at least 2"));
        }
        if self.max_iters == Some(0) {
            return Err(Error::config("--max-iters", "must be at least 1"));
        }
        if self.checkpoint_every == Some(0) {
            return Err(Error::config("--checkpoint-every", "must be at least 1"));
        }
        if self.prefixes.iter().any(|p| p.is_empty()) {
            return Err(Error::config("--prefix", "must not be empty"));
        }
        Ok(())
    }
}

impl TrainConfig {
    /// How many characters of context a model trained with this config saw from a zero state: `steps` for
    /// random sampling, a whole row (`corpus_chars / batch`) for consecutive sampling. [`crate::evaluate`]
    /// reads text in windows of this length, so that evaluation sees text the way training did.
    pub fn eval_context(&self, corpus_chars: usize) -> usize {
        match self.batch_order {
            BatchOrder::Random => self.steps,
            BatchOrder::Consecutive => (corpus_chars / self.batch_size.max(1)).max(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_defaults_to_a_tenth_of_large_corpora() {
        let auto = TrainConfig::default();
        assert_eq!(auto.resolved_val_frac(19_999), 0.0);
        assert_eq!(auto.resolved_val_frac(20_000), 0.1);
        let set = TrainConfig { val_frac: Some(0.25), ..Default::default() };
        assert_eq!(set.resolved_val_frac(100), 0.25);
        assert!(TrainConfig { val_frac: Some(1.0), ..Default::default() }
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--val-frac"));
    }

    #[test]
    fn invalid_hyperparameters_are_named() {
        let bad = TrainConfig { lr: -1.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("--lr"));
        let bad = TrainConfig { batch_size: 0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("--batch"));
        let bad = TrainConfig { clip: f64::NAN, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("--clip"));
    }
}
