//! What training reports, and to whom: the reports of minibatches, epochs, evaluations and rollbacks, the
//! reasons for a checkpoint, and the [`TrainObserver`] trait that receives them (the training loop never
//! prints or writes files itself).
use crate::error::Result;
use crate::eval::perplexity;
use crate::model::config::ModelConfig;
use crate::model::network::Network;
use crate::train::config::TrainConfig;
use crate::train::state::{BestEpoch, TrainState};
use tch::Tensor;

/// Where training is inside an epoch; given to [`TrainObserver::minibatch`] after each minibatch.
pub struct Progress<'a> {
    /// Current epoch, from 1.
    pub epoch: usize,
    /// Total epochs.
    pub epochs: usize,
    /// Minibatches done in this epoch, from 1.
    pub minibatch: usize,
    /// Minibatches per epoch.
    pub minibatches: usize,
    pub(crate) loss_sum: &'a Tensor,
}

impl Progress<'_> {
    /// Perplexity over this epoch's minibatches so far. Reads the value back from the device, so call it
    /// only as often as it is shown.
    pub fn running_perplexity(&self) -> f64 {
        perplexity(self.loss_sum.double_value(&[]) / self.minibatch as f64)
    }
}

/// What one epoch achieved.
#[derive(Debug, Clone)]
pub struct EpochReport {
    /// The epoch, from 1.
    pub epoch: usize,
    /// exp of the mean training loss over the epoch's minibatches (the textbook's "perplexity").
    pub perplexity: f64,
    /// Wall time of the epoch's training (not its validation and predictions), in seconds.
    pub seconds: f64,
    /// Characters trained in that time (fewer than an epoch's in the first epoch of a resumed run).
    pub chars: usize,
    /// Training time since the run began, across resumes, in seconds.
    pub elapsed: f64,
    /// Perplexity on the held-out text, read as [`crate::evaluate`] does; `None` without validation.
    pub val_perplexity: Option<f64>,
    /// Mean over the epoch's minibatches of the gradient's global L2 norm before clipping.
    pub grad_norm: f64,
    /// The learning rate of the epoch.
    pub lr: f64,
    /// Every `pred_period` epochs: one prediction per configured prefix (prefix included).
    pub samples: Option<Vec<String>>,
}

impl EpochReport {
    /// Characters trained per second of the epoch's training.
    pub fn chars_per_sec(&self) -> f64 {
        self.chars as f64 / self.seconds.max(1e-9)
    }
}

/// What an evaluation inside an epoch found (see [`TrainConfig::eval_every`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IterationReport {
    /// Minibatches trained in all.
    pub iteration: u64,
    /// Epochs trained, with their fraction: 2.25 is a quarter into epoch 3.
    pub epoch: f64,
    /// Training perplexity over the minibatches since the previous report (or the epoch's start).
    pub perplexity: f64,
    /// Perplexity of the held-out text, with validation.
    pub val_perplexity: Option<f64>,
    /// Seconds since the previous report (or the epoch's start).
    pub seconds: f64,
}

/// A rollback after divergence (see [`crate::OnDiverge::Rollback`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RollbackReport {
    /// The epoch that diverged.
    pub diverged_in: usize,
    /// What stopped being finite.
    pub what: String,
    /// Epochs completed by the state gone back to.
    pub back_to: usize,
    /// The learning rate from here on.
    pub lr: f64,
    /// Which rollback this is, from 1, and how many are allowed.
    pub rollback: usize,
    /// The most rollbacks allowed.
    pub max: usize,
}

/// Why [`TrainObserver::checkpoint`] is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaveReason {
    /// A periodic checkpoint at the end of an epoch.
    Periodic,
    /// The end of the last epoch.
    Final,
    /// [`TrainObserver::stop_requested`] asked to stop.
    Interrupted,
}

/// What a run is about to do, given to [`TrainObserver::begin`] once everything is checked, before the first
/// minibatch.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// The device, in words.
    pub device: String,
    /// Characters read from the corpus.
    pub corpus_chars: usize,
    /// Of which trained on (the rest is held out).
    pub train_chars: usize,
    /// The vocabulary size.
    pub vocab_size: usize,
    /// The network and its parameter count.
    pub model: ModelConfig,
    /// Parameters in all.
    pub parameters: u64,
    /// Minibatches per epoch.
    pub minibatches: usize,
    /// The settings.
    pub config: TrainConfig,
    /// For a resumed run, where it stood: (epochs completed, minibatches into the next).
    pub resumed_at: Option<(usize, usize)>,
    /// What the user should know before the run starts (a resumed run's changed learning rate), a line each.
    pub notes: Vec<String>,
}

/// Receives training progress and checkpoints; the library never prints or writes files itself.
pub trait TrainObserver {
    /// Called once before the first minibatch.
    fn begin(&mut self, _info: &RunInfo) {}
    /// Called after every minibatch.
    fn minibatch(&mut self, _progress: &Progress<'_>) {}
    /// Called after every epoch.
    fn epoch(&mut self, _report: &EpochReport) {}
    /// Called at each evaluation inside an epoch (`eval_every`).
    fn iteration(&mut self, _report: &IterationReport) {}
    /// Called when training diverged and went back to the last good epoch (`on_diverge: Rollback`).
    fn rollback(&mut self, _report: &RollbackReport) {}
    /// Called when a checkpoint is due, with the model and everything else needed to resume: save them.
    /// An error stops training.
    fn checkpoint(&mut self, _model: &Network, _state: &TrainState, _why: SaveReason) -> Result<()> {
        Ok(())
    }
    /// Called after every minibatch: `Some(signal)` stops training after a checkpoint, with
    /// [`crate::Error::Interrupted`] carrying `signal`.
    fn stop_requested(&mut self) -> Option<i32> {
        None
    }
}

/// An observer that ignores everything.
impl TrainObserver for () {}

/// The outcome of a training run.
#[derive(Debug)]
pub struct TrainSummary {
    /// Epochs trained in all (a resumed run's earlier epochs included).
    pub epochs: usize,
    /// Training perplexity of the last epoch.
    pub perplexity: f64,
    /// Validation perplexity of the last epoch, with validation.
    pub val_perplexity: Option<f64>,
    /// With validation: the epoch of lowest validation perplexity (its parameters went to the last
    /// checkpoint as `best.<name>`).
    pub best: Option<BestEpoch>,
}
