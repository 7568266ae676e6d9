//! Training: truncated BPTT over minibatches, gradient clipping and SGD, reported through an observer.
use crate::batches::BatchOrder;
use crate::bptt;
use crate::corpus::Vocabulary;
use crate::error::{Error, Result};
use crate::eval::{evaluate_sample, perplexity};
use crate::model::{cross_entropy, step_major, Arch, Dtype, ModelConfig, Network, State};
use crate::optim::{LrDecay, Optimizer, OptimizerKind};
use crate::predict::{generate, Generate, Sampler};
use crate::resume::{BestEpoch, Position, TrainState};
use crate::rng::{Rng, Stream};
use crate::tokens::Tokens;
use std::time::Instant;
use tch::{Kind, Tensor};

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
    /// ([`TrainObserver::iteration`]) and the best model kept; `None`: at epoch ends only.
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnDiverge {
    /// Stop with [`Error::Diverged`]; the last checkpoint stays as it was.
    #[default]
    Stop,
    /// Go back to the parameters and optimizer state at the end of the last good epoch (kept in memory),
    /// multiply the learning rate by `rollback_lr_factor` and carry on, at most `max_rollbacks` times.
    Rollback,
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
    loss_sum: &'a Tensor,
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

/// A rollback after divergence (see [`OnDiverge::Rollback`]).
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
    /// [`Error::Interrupted`] carrying `signal`.
    fn stop_requested(&mut self) -> Option<i32> {
        None
    }
}

/// An observer that ignores everything.
impl TrainObserver for () {}

/// The state for the next minibatch: carried values, cut from the previous minibatch's graph so that
/// backpropagation stops at the minibatch boundary (truncated BPTT).
pub fn carry_state(state: &State) -> State {
    state.detach()
}

/// The gradients' global L2 norm `||g||` (over all of them together) and the clipping factor
/// `min(theta / ||g||, 1)` that scales them to a norm of at most `theta`: scalar Float tensors, left on the
/// device (no read-back).
pub fn clip_factor(grads: &[Tensor], theta: f64) -> (Tensor, Tensor) {
    let _guard = tch::no_grad_guard();
    let squares: Vec<Tensor> = grads
        .iter()
        .map(|g| {
            let flat = g.reshape([-1]);
            flat.dot(&flat)
        })
        .collect();
    let norm = Tensor::stack(&squares, 0).sum(Kind::Float).sqrt();
    let scale = (theta / &norm).clamp_max(1.0);
    (norm, scale)
}

/// What one training step produced.
pub struct StepOutput {
    /// The minibatch's mean cross-entropy before the update (scalar Float, detached).
    pub loss: Tensor,
    /// The gradient's global L2 norm before clipping (scalar Float).
    pub grad_norm: Tensor,
    /// The loss's gradients before clipping, in [`ModelConfig::param_specs`] order (under autograd, the
    /// parameters' `grad()` buffers, which the next step overwrites).
    pub grads: Vec<Tensor>,
    /// The final state, `[layers, batch, H]` tensors, possibly attached to this step's graph (pass it
    /// through [`carry_state`] before using it again).
    pub state: State,
}

/// One training step on a minibatch: forward, mean cross-entropy, backward, clip, update.
///
/// `inputs`, `targets`: Int64 `[batch, steps]`; `state`: `[layers, batch, H]` tensors. The tanh cell without
/// dropout takes the written-out backward pass ([`crate::bptt`]); other models, autograd. The output layer's
/// products are at `precision`.
pub fn train_step(
    model: &Network,
    inputs: &Tensor,
    targets: &Tensor,
    state: &State,
    clip: f64,
    precision: Dtype,
    optimizer: &mut Optimizer,
) -> StepOutput {
    let params = model.parameters();
    let (loss, grads, state) = if bptt::supports(&model.config()) {
        let pass = bptt::loss_and_grads(model, inputs, targets, state, precision);
        (pass.loss, pass.grads, pass.state)
    } else {
        for p in &params {
            p.shallow_clone().zero_grad();
        }
        let (logits, h) = model.forward_at(inputs, state, true, precision);
        let loss = cross_entropy(&logits, &step_major(targets));
        loss.backward();
        (loss.detach(), params.iter().map(|p| p.grad()).collect(), h)
    };
    let (grad_norm, scale) = clip_factor(&grads, clip);
    optimizer.step(&params, &grads, &scale);
    StepOutput { loss, grad_norm, grads, state }
}

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

/// The seed of libtorch's generator (dropout masks) for minibatch `batch` (from 0) of `epoch` (from 1): a
/// function of the position only, so that a resumed run draws the same masks.
fn minibatch_seed(seed: u64, epoch: usize, batch: usize) -> i64 {
    let mut r = Rng::new(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (batch as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    (r.next_u64() >> 1) as i64
}

/// Everything of a run that changes as it trains, besides the model's parameters.
struct Run {
    position: Position,
    optimizer: Optimizer,
    loss_sum: Tensor,
    grad_norm_sum: Tensor,
    best_params: Option<Vec<Tensor>>,
    carried: Option<State>,
}

impl Run {
    fn start(model: &Network, config: &TrainConfig) -> Result<Run> {
        let zero = || Tensor::zeros([], (Kind::Float, model.device()));
        Ok(Run {
            position: Position {
                epoch: 0,
                minibatch: 0,
                shuffle_rng: Rng::for_stream(config.seed, Stream::Shuffle).state(),
                optimizer_step: 0,
                perplexity: None,
                val_perplexity: None,
                best: None,
                elapsed: 0.0,
                lr_scale: 1.0,
                rollbacks: 0,
            },
            optimizer: Optimizer::new(config.optimizer, model, config.lr)?,
            loss_sum: zero(),
            grad_norm_sum: zero(),
            best_params: None,
            carried: None,
        })
    }

    /// The run `state` describes (copied: training goes on in its own tensors).
    fn resume(model: &Network, config: &TrainConfig, state: &TrainState) -> Result<Run> {
        let mut run = Run::start(model, config)?;
        let state = state.copy();
        run.optimizer.restore(state.position.optimizer_step, state.adam);
        (run.loss_sum, run.grad_norm_sum) = (state.loss_sum, state.grad_norm_sum);
        (run.best_params, run.carried, run.position) = (state.best, state.carry, state.position);
        Ok(run)
    }

    /// Keeps the model's parameters as the best so far if `candidate` scores lower validation perplexity than
    /// the best kept (or none is).
    fn keep_if_best(&mut self, model: &Network, candidate: BestEpoch) {
        if self.position.best.as_ref().is_none_or(|b| candidate.val_perplexity < b.val_perplexity) {
            self.best_params = Some(model.parameter_copies());
            self.position.best = Some(candidate);
        }
    }

    /// The resumable state (see [`TrainState`]), sharing this run's tensors; `carry` is the carried state in
    /// the middle of a consecutive-sampling epoch.
    fn snapshot(&self, carry: Option<&State>) -> TrainState {
        let (step, adam) = self.optimizer.state();
        TrainState {
            position: Position { optimizer_step: step, ..self.position.clone() },
            loss_sum: self.loss_sum.shallow_clone(),
            grad_norm_sum: self.grad_norm_sum.shallow_clone(),
            adam,
            best: self.best_params.as_ref().map(|b| b.iter().map(Tensor::shallow_clone).collect()),
            carry: carry.map(State::detach),
        }
    }

    /// Fails with [`Error::Diverged`] if the loss or gradient sums are not finite.
    fn check_finite(&self, epoch: usize) -> Result<(f64, f64)> {
        let loss = self.loss_sum.double_value(&[]);
        let norm = self.grad_norm_sum.double_value(&[]);
        match (loss.is_finite(), norm.is_finite()) {
            (true, true) => Ok((loss, norm)),
            (false, _) => Err(Error::Diverged { epoch, what: "the training loss".into(), kept: None }),
            (_, false) => Err(Error::Diverged { epoch, what: "the gradient norm".into(), kept: None }),
        }
    }
}

/// Trains `model` on `corpus` (character indices of `vocab`) as the textbook does, from the start or, given
/// `resume` (a [`TrainState`] that an observer saved, with the model's parameters restored), from where that
/// run stood: the same updates, shuffles and dropout masks, so that on the CPU an interrupted and resumed
/// run ends bit for bit where an uninterrupted one would. `config.epochs` is the total.
///
/// Random sampling starts every minibatch from a zero state; consecutive sampling starts each epoch from a
/// zero state and carries it across minibatches, detached. The loop reads nothing back from the device
/// except once per epoch (the epoch's perplexity and the divergence check) and what the observer asks for.
///
/// `val` (possibly empty) is held-out text, evaluated after every epoch; the best epoch's parameters are
/// kept in the checkpoints. The observer gets a checkpoint every `config.checkpoint_every` epochs, after
/// the last epoch, and when it asks to stop. A non-finite loss or gradient norm stops training with
/// [`Error::Diverged`] before anything of that epoch is checkpointed.
pub fn train<'a>(
    model: &Network,
    vocab: &Vocabulary,
    corpus: impl Into<Tokens<'a>>,
    val: impl Into<Tokens<'a>>,
    config: &TrainConfig,
    resume: Option<&TrainState>,
    observer: &mut dyn TrainObserver,
) -> Result<TrainSummary> {
    let (corpus, val) = (corpus.into(), val.into());
    let started = Instant::now();
    let batches = check_run(model, vocab, corpus, config)?;
    let mut run = match resume {
        None => Run::start(model, config)?,
        Some(state) => Run::resume(model, config, state)?.check_position(config, batches)?,
    };
    let model_config = model.config();
    observer.begin(&RunInfo {
        device: crate::device::device_name(model.device()),
        corpus_chars: corpus.len() + val.len(),
        train_chars: corpus.len(),
        vocab_size: vocab.len(),
        model: model_config,
        parameters: model_config.parameter_count().unwrap_or(0),
        minibatches: batches,
        config: config.clone(),
        resumed_at: resume.map(|s| (s.position.epoch, s.position.minibatch)),
        notes: Vec::new(),
    });
    // Validation reads the held-out text as evaluation reads text: in windows of the training context.
    let validation = (val, config.eval_context(corpus.len()));
    let mut last_save = Instant::now();
    // With rollback: the parameters and state at the end of the last good epoch.
    let mut good =
        (config.on_diverge == OnDiverge::Rollback).then(|| (model.parameter_copies(), run.snapshot(None).copy()));
    while run.position.epoch < config.epochs {
        let epoch = run.position.epoch + 1;
        let trained = run
            .train_epoch(model, (corpus, validation), config, (epoch, batches), (started, &mut last_save), observer)
            .and_then(|trained| Ok((run.finish_epoch(model, vocab, validation, config, &trained)?, trained)));
        let (report, trained) = match (trained, &good) {
            (Err(Error::Diverged { epoch, what, kept }), Some((params, state))) => {
                if run.position.rollbacks >= config.max_rollbacks {
                    return Err(Error::Diverged { epoch, what, kept });
                }
                let (lr_scale, rollbacks, elapsed) = (
                    run.position.lr_scale * config.rollback_lr_factor,
                    run.position.rollbacks + 1,
                    run.position.elapsed,
                );
                model.set_parameters(params)?;
                run = Run::resume(model, config, state)?;
                (run.position.lr_scale, run.position.rollbacks, run.position.elapsed) = (lr_scale, rollbacks, elapsed);
                let p = &run.position;
                observer.rollback(&RollbackReport {
                    diverged_in: epoch,
                    what,
                    back_to: p.epoch,
                    lr: config.lr_decay.lr_at(config.lr, p.epoch + 1) * p.lr_scale,
                    rollback: p.rollbacks,
                    max: config.max_rollbacks,
                });
                continue;
            }
            (result, _) => result?,
        };
        observer.epoch(&report);
        if let Some((params, state)) = &mut good {
            *params = model.parameter_copies();
            *state = run.snapshot(None).copy();
        }
        let reason = checkpoint_reason(config, epoch, trained.stop.is_some(), last_save);
        if let Some(why) = reason {
            observer.checkpoint(model, &run.snapshot(None), why)?;
            last_save = Instant::now();
        }
        if let (Some(stop), Some(SaveReason::Interrupted)) = (trained.stop, reason) {
            return Err(stop.error(epoch, batches, batches));
        }
    }
    let p = &run.position;
    Ok(TrainSummary {
        epochs: p.epoch,
        perplexity: p.perplexity.unwrap_or(f64::NAN),
        val_perplexity: p.val_perplexity,
        best: p.best.clone(),
    })
}

/// Checks that `config` is valid, describes `model` over `vocab`, fits `corpus` and has prefixes in the
/// vocabulary; returns the minibatches per epoch.
fn check_run(model: &Network, vocab: &Vocabulary, corpus: Tokens<'_>, config: &TrainConfig) -> Result<usize> {
    config.validate()?;
    let expected = config.model_config(vocab.len());
    if model.config() != expected {
        let reason =
            format!("the model is {:?} but the configuration and vocabulary describe {expected:?}", model.config());
        return Err(Error::config("model", reason));
    }
    config.batch_order.check_fits(corpus.len(), config.batch_size, config.steps)?;
    for p in &config.prefixes {
        vocab.encode(p, "the prefix")?;
    }
    Ok(config.batch_order.batches_per_epoch(corpus.len(), config.batch_size, config.steps))
}

/// Why a checkpoint is due after `epoch`, if one is: the last epoch, a stop requested at its end, or the
/// checkpoint period (epochs, or else `auto_checkpoint` since `last_save`).
fn checkpoint_reason(config: &TrainConfig, epoch: usize, stop: bool, last_save: Instant) -> Option<SaveReason> {
    if epoch == config.epochs {
        Some(SaveReason::Final)
    } else if stop {
        Some(SaveReason::Interrupted)
    } else if config.checkpoint_every.map_or(last_save.elapsed() >= config.auto_checkpoint, |n| epoch.is_multiple_of(n))
    {
        Some(SaveReason::Periodic)
    } else {
        None
    }
}

/// The report lines' predictions after `epoch`: one per configured prefix, every `pred_period` epochs.
fn report_samples(
    model: &Network,
    vocab: &Vocabulary,
    config: &TrainConfig,
    epoch: usize,
) -> Result<Option<Vec<String>>> {
    if !epoch.is_multiple_of(config.pred_period) {
        return Ok(None);
    }
    // Seeded by the epoch too, so that a resumed run prints the same samples.
    let sampler = Sampler { seed: config.seed.wrapping_add(epoch as u64), ..config.sampler };
    let options = Generate { num_chars: config.pred_len, samples: 1, stop: None, sampler, probs: false, beam: 0 };
    let samples =
        config.prefixes.iter().map(|p| Ok(generate(model, vocab, p, &options, &mut |_, _| {})?.remove(0).text));
    samples.collect::<Result<Vec<String>>>().map(Some)
}

/// An epoch whose minibatches all ran (or that a stop request ended at its last minibatch).
struct TrainedEpoch {
    epoch: usize,
    /// The epoch's learning rate.
    lr: f64,
    /// When it started, and the training time before it.
    start: Instant,
    elapsed_before: f64,
    /// The first minibatch this run trained (not 0 in a resumed epoch).
    first: usize,
    batches: usize,
    /// The shuffle generator after the epoch's shuffle.
    rng: Rng,
    /// Why training stops at the epoch's end, if it does.
    stop: Option<Stop>,
}

/// Why a run stops before its last epoch ends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    /// [`TrainObserver::stop_requested`] returned this signal.
    Signal(i32),
    /// `max_iters` minibatches were trained.
    MaxIters(u64),
    /// `time_limit` passed.
    TimeLimit(std::time::Duration),
}

impl Stop {
    /// The error that ends the run, after a checkpoint at minibatch `minibatch` of `minibatches` of `epoch`.
    fn error(self, epoch: usize, minibatch: usize, minibatches: usize) -> Error {
        let limit = match self {
            Stop::Signal(signal) => return Error::Interrupted { signal, epoch, minibatch, minibatches, saved: None },
            Stop::MaxIters(n) => format!("--max-iters {n}"),
            Stop::TimeLimit(t) => format!("--time-limit {}s", t.as_secs_f64()),
        };
        Error::LimitReached { limit, epoch, minibatch, minibatches, saved: None }
    }
}

impl Run {
    /// Refuses a resumed run that stands outside an epoch of `batches` minibatches or already past
    /// `config.epochs`.
    fn check_position(self, config: &TrainConfig, batches: usize) -> Result<Run> {
        let p = &self.position;
        if p.minibatch >= batches {
            let reason = format!("it stands at minibatch {} of an epoch of {batches}", p.minibatch);
            return Err(Error::TrainingState { reason });
        }
        if (p.epoch, p.minibatch) >= (config.epochs, 0) {
            let at = if p.minibatch > 0 {
                format!("epoch {} minibatch {}", p.epoch + 1, p.minibatch)
            } else {
                format!("{} epochs", p.epoch)
            };
            let reason =
                format!("the run already stands at {at}; ask for more than {} epochs", p.epoch.max(config.epochs));
            return Err(Error::config("--epochs", reason));
        }
        Ok(self)
    }

    /// Trains the minibatches of `epoch` from where the run stands. Random sampling starts each from a zero
    /// state; consecutive sampling carries the state across them (detached), from a zero state at the
    /// epoch's start. A stop requested before the last minibatch checkpoints the run and ends it with
    /// [`Error::Interrupted`].
    fn train_epoch(
        &mut self,
        model: &Network,
        (corpus, validation): (Tokens<'_>, (Tokens<'_>, usize)),
        config: &TrainConfig,
        (epoch, batches): (usize, usize),
        (started, last_save): (Instant, &mut Instant),
        observer: &mut dyn TrainObserver,
    ) -> Result<TrainedEpoch> {
        let start = Instant::now();
        let lr = config.lr_decay.lr_at(config.lr, epoch) * self.position.lr_scale;
        self.optimizer.set_lr(lr);
        let mut rng = Rng::new(self.position.shuffle_rng);
        let plan = config.batch_order.plan(corpus.len(), config.batch_size, config.steps, &mut rng)?;
        let first = self.position.minibatch;
        let elapsed_before = self.position.elapsed;
        if first == 0 {
            let _ = self.loss_sum.zero_();
            let _ = self.grad_norm_sum.zero_();
        }
        let mut state = self.carried.take().unwrap_or_else(|| model.begin_state(config.batch_size));
        let mut stop = None;
        // Where the last mid-epoch report stood: the loss sum, the minibatch and the time.
        let mut mark = match config.eval_every {
            Some(_) if first > 0 => (self.loss_sum.double_value(&[]), first, Instant::now()),
            _ => (0.0, first, start),
        };
        for i in first..batches {
            if config.arch.dropout > 0.0 {
                tch::manual_seed(minibatch_seed(config.seed, epoch, i));
            }
            let input_state = match config.batch_order {
                BatchOrder::Random => model.begin_state(config.batch_size),
                BatchOrder::Consecutive => carry_state(&state),
            };
            let (x, y) = plan.minibatch(i, corpus, model.device());
            let out = train_step(model, &x, &y, &input_state, config.clip, config.dtype, &mut self.optimizer);
            state = out.state;
            let _ = self.loss_sum.shallow_clone().f_add_(&out.loss)?;
            let _ = self.grad_norm_sum.shallow_clone().f_add_(&out.grad_norm)?;
            self.position.minibatch = i + 1;
            let progress = Progress {
                epoch,
                epochs: config.epochs,
                minibatch: i + 1,
                minibatches: batches,
                loss_sum: &self.loss_sum,
            };
            observer.minibatch(&progress);
            // Minibatches trained in all, earlier epochs included; the limits do not stop the run's very end.
            let done = ((epoch - 1) * batches + i + 1) as u64;
            let at_end = epoch == config.epochs && i + 1 == batches;
            stop = observer.stop_requested().map(Stop::Signal).or_else(|| {
                let iters = config.max_iters.filter(|&n| done >= n).map(Stop::MaxIters);
                let time = config.time_limit.filter(|&t| started.elapsed() >= t).map(Stop::TimeLimit);
                iters.or(time).filter(|_| !at_end)
            });
            // A checkpoint inside the epoch: where it stands, with the carried state of consecutive sampling.
            let save_here = |run: &mut Run, observer: &mut dyn TrainObserver, why: SaveReason| -> Result<()> {
                run.check_finite(epoch)?;
                run.position.elapsed = elapsed_before + start.elapsed().as_secs_f64();
                let carried = (config.batch_order == BatchOrder::Consecutive).then(|| state.detach());
                observer.checkpoint(model, &run.snapshot(carried.as_ref()), why)
            };
            if let Some(why) = stop.filter(|_| i + 1 < batches) {
                save_here(self, observer, SaveReason::Interrupted)?;
                return Err(why.error(epoch, i + 1, batches));
            }
            if stop.is_some() {
                break;
            }
            if config.eval_every.is_some_and(|n| done.is_multiple_of(n as u64)) && i + 1 < batches {
                let report = self.evaluate_within(model, validation, config, (epoch, i + 1, batches), &mut mark)?;
                observer.iteration(&report);
            }
            // A long epoch is checkpointed as it goes (its end has its own checkpoint).
            if config.checkpoint_every.is_none() && i + 1 < batches && last_save.elapsed() >= config.auto_checkpoint {
                save_here(self, observer, SaveReason::Periodic)?;
                *last_save = Instant::now();
            }
        }
        Ok(TrainedEpoch { epoch, lr, start, elapsed_before, first, batches, rng, stop })
    }

    /// A report in the middle of epoch `epoch` after minibatch `minibatch` of `minibatches`: the training
    /// perplexity since `mark` (which moves here), and with held-out text its perplexity, keeping the
    /// parameters if they are the best so far.
    fn evaluate_within(
        &mut self,
        model: &Network,
        (val, context): (Tokens<'_>, usize),
        config: &TrainConfig,
        (epoch, minibatch, minibatches): (usize, usize, usize),
        mark: &mut (f64, usize, Instant),
    ) -> Result<IterationReport> {
        let (loss_then, minibatch_then, since) = *mark;
        let loss_now = self.loss_sum.double_value(&[]);
        let train_perplexity = perplexity((loss_now - loss_then) / (minibatch - minibatch_then).max(1) as f64);
        let mut val_perplexity = None;
        if val.len() >= 2 {
            let vp = evaluate_sample(model, val, context, config.val_chars)?.perplexity();
            let minibatch = Some(minibatch);
            self.keep_if_best(model, BestEpoch { epoch, perplexity: train_perplexity, val_perplexity: vp, minibatch });
            val_perplexity = Some(vp);
        }
        let seconds = since.elapsed().as_secs_f64();
        *mark = (loss_now, minibatch, Instant::now());
        Ok(IterationReport {
            iteration: ((epoch - 1) * minibatches + minibatch) as u64,
            epoch: (epoch - 1) as f64 + minibatch as f64 / minibatches as f64,
            perplexity: train_perplexity,
            val_perplexity,
            seconds,
        })
    }

    /// Ends an epoch: checks the loss and gradient norms are finite, evaluates `val` in windows of
    /// `context` (keeping the best epoch's parameters), moves the position to the epoch's end and makes its
    /// report.
    fn finish_epoch(
        &mut self,
        model: &Network,
        vocab: &Vocabulary,
        (val, context): (Tokens<'_>, usize),
        config: &TrainConfig,
        t: &TrainedEpoch,
    ) -> Result<EpochReport> {
        let (epoch, batches) = (t.epoch, t.batches);
        let (loss_total, norm_total) = self.check_finite(epoch)?;
        let last = perplexity(loss_total / batches as f64);
        if !last.is_finite() {
            // A mean loss above ~709 nats: far beyond any model that learns (a uniform guess scores ln V).
            return Err(Error::Diverged { epoch, what: "the training perplexity".into(), kept: None });
        }
        // Like the textbook, the reported time is the epoch's training, without validation and predictions.
        let seconds = t.start.elapsed().as_secs_f64();
        let mut val_perplexity = None;
        if val.len() >= 2 {
            let vp = evaluate_sample(model, val, context, config.val_chars)?.perplexity();
            self.keep_if_best(model, BestEpoch { epoch, perplexity: last, val_perplexity: vp, minibatch: None });
            val_perplexity = Some(vp);
        }
        self.position = Position {
            epoch,
            minibatch: 0,
            shuffle_rng: t.rng.state(),
            perplexity: Some(last),
            val_perplexity,
            elapsed: t.elapsed_before + seconds,
            ..self.position.clone()
        };
        Ok(EpochReport {
            epoch,
            perplexity: last,
            val_perplexity,
            grad_norm: norm_total / batches as f64,
            lr: t.lr,
            seconds,
            chars: (batches - t.first) * config.batch_size * config.steps,
            elapsed: self.position.elapsed,
            samples: report_samples(model, vocab, config, epoch)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::evaluate;
    use crate::model::{Cell, Init};
    use tch::Device;

    fn norm(grads: &[Tensor]) -> f64 {
        grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt()
    }

    /// A model and its loss's gradients.
    fn model_with_grads() -> (Network, Vec<Tensor>) {
        let m = Network::new(ModelConfig::rnn(6, 4), 1, Device::Cpu).unwrap();
        let x = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]).view([2, 3]);
        let (logits, _) = m.forward(&x, &m.begin_state(2), true);
        cross_entropy(&logits, &step_major(&(x + 1).remainder(6))).backward();
        let grads = m.parameters().iter().map(|p| p.grad().copy()).collect();
        (m, grads)
    }

    #[test]
    fn clipping_caps_the_global_norm_and_keeps_direction() {
        let (_, grads) = model_with_grads();
        let before = norm(&grads);
        assert!(before > 1e-3, "test needs a gradient larger than theta, got {before}");
        let (reported, scale) = clip_factor(&grads, 1e-3);
        assert!((reported.double_value(&[]) - before).abs() < 1e-6 * before);
        let clipped: Vec<Tensor> = grads.iter().map(|g| g * &scale).collect();
        assert!((norm(&clipped) - 1e-3).abs() <= 1e-3 * 1e-5);
        for (c, g) in clipped.iter().zip(&grads) {
            assert!(c.allclose(&(g * (1e-3 / before)), 1e-5, 1e-10, false));
        }
    }

    #[test]
    fn clipping_leaves_small_gradients_alone() {
        let (_, grads) = model_with_grads();
        let (_, scale) = clip_factor(&grads, 1e6);
        assert_eq!(scale.double_value(&[]), 1.0);
    }

    #[test]
    fn detached_state_cuts_the_gradient_to_the_previous_minibatch() {
        let x = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]).view([2, 3]);
        let y = step_major(&(&x + 1).remainder(6));
        let reached = |t: &Tensor| t.grad().defined() && t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0;
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            let m =
                Network::new(ModelConfig::new(6, Arch { cell, layers: 2, ..Arch::rnn(4) }), 1, Device::Cpu).unwrap();
            for detach in [true, false] {
                let zeros = m.begin_state(2);
                let s0 = State { h: zeros.h.set_requires_grad(true), c: zeros.c.map(|c| c.set_requires_grad(true)) };
                let (_, s1) = m.forward(&x, &s0, true);
                let s1 = if detach { carry_state(&s1) } else { s1 };
                let (logits, _) = m.forward(&x, &s1, true);
                cross_entropy(&logits, &y).backward();
                assert_eq!(reached(&s0.h), !detach, "{cell:?} h, detach={detach}");
                if let Some(c) = &s0.c {
                    assert_eq!(reached(c), !detach, "{cell:?} c, detach={detach}");
                }
            }
        }
    }

    #[test]
    fn sgd_moves_against_the_scaled_gradient() {
        let (m, grads) = model_with_grads();
        let params = m.parameters();
        let before: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
        let mut sgd = Optimizer::new(OptimizerKind::Sgd, &m, 0.5).unwrap();
        sgd.step(&params, &grads, &Tensor::from(0.25f32));
        for ((p, b), g) in params.iter().zip(&before).zip(&grads) {
            assert!(p.detach().allclose(&(b - g * 0.125), 1e-6, 1e-7, false));
        }
    }

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

    /// A small SGD run (lr 1, clipping at 1) of an rnn of `hidden` units on [`corpus`]'s text, 5 steps of 3
    /// sequences, for `epochs` epochs, reporting from "ab".
    fn small(hidden: usize, epochs: usize) -> TrainConfig {
        TrainConfig {
            arch: Arch::rnn(hidden),
            steps: 5,
            batch_size: 3,
            epochs,
            lr: 1.0,
            clip: 1.0,
            prefixes: vec!["ab".into()],
            ..Default::default()
        }
    }

    /// Resumes from `checkpoint` (as the recorder kept it) on [`corpus`]'s whole text and asserts that the run
    /// ends with `expected`'s parameters, bit for bit.
    fn assert_resumes_to(expected: &Network, checkpoint: &Checkpoint, config: &TrainConfig, what: &str) {
        let (vocab, ids) = corpus();
        let (_, params, position, tensors) = checkpoint;
        let resumed =
            Network::from_tensors(expected.config(), params.iter().map(Tensor::copy).collect(), Device::Cpu).unwrap();
        let state = TrainState::from_named(position.clone(), copies(tensors), &resumed, config).unwrap();
        train(&resumed, &vocab, &ids, &[], config, Some(&state), &mut Recorder::default()).unwrap();
        for (a, b) in expected.parameters().iter().zip(resumed.parameters()) {
            assert!(a.equal(b), "{what}");
        }
    }

    /// Copies of named tensors.
    fn copies(tensors: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
        tensors.iter().map(|(n, t)| (n.clone(), t.copy())).collect()
    }

    /// A checkpoint as the recorder keeps it: why, the parameters, the position and the state's tensors.
    type Checkpoint = (SaveReason, Vec<Tensor>, Position, Vec<(String, Tensor)>);

    /// Records reports and copies of every checkpoint (model parameters and training state).
    #[derive(Default)]
    struct Recorder {
        reports: Vec<EpochReport>,
        iterations: Vec<IterationReport>,
        checkpoints: Vec<Checkpoint>,
        /// Ask to stop after this many minibatches in all (counted from this recorder's start).
        stop_after: Option<usize>,
        minibatches: usize,
        /// After the checkpoint of this epoch, make the model's weights NaN.
        poison_after: Option<usize>,
    }

    impl TrainObserver for Recorder {
        fn minibatch(&mut self, _: &Progress<'_>) {
            self.minibatches += 1;
        }
        fn epoch(&mut self, r: &EpochReport) {
            self.reports.push(r.clone());
        }
        fn iteration(&mut self, r: &IterationReport) {
            self.iterations.push(r.clone());
        }
        fn checkpoint(&mut self, model: &Network, state: &TrainState, why: SaveReason) -> Result<()> {
            let params = model.parameters().iter().map(|p| p.detach().copy()).collect();
            // Through the state file's names, as a checkpoint keeps it.
            let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
            let tensors = state.to_named(&names).into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
            self.checkpoints.push((why, params, state.position.clone(), tensors));
            if self.poison_after == Some(state.position.epoch) {
                tch::no_grad(|| {
                    let _ = model.parameters()[0].shallow_clone().fill_(f64::NAN);
                });
            }
            Ok(())
        }
        fn stop_requested(&mut self) -> Option<i32> {
            self.stop_after.filter(|&n| self.minibatches >= n).map(|_| 2)
        }
    }

    fn corpus() -> (Vocabulary, Vec<i64>) {
        let text = "abcabcabdabcabcabd".repeat(20);
        let vocab = Vocabulary::from_text(&text);
        let ids = vocab.encode(&text, "t").unwrap();
        (vocab, ids)
    }

    #[test]
    fn validation_is_reported_each_epoch_and_the_best_epoch_kept() {
        let (vocab, ids) = corpus();
        let (train_ids, val_ids) = ids.split_at(300);
        let model = Network::new(ModelConfig::rnn(vocab.len(), 16), 0, Device::Cpu).unwrap();
        let config = TrainConfig { steps: 6, batch_size: 4, pred_period: 4, pred_len: 3, ..small(16, 8) };
        let mut rec = Recorder::default();
        let summary = train(&model, &vocab, train_ids, val_ids, &config, None, &mut rec).unwrap();
        let vals: Vec<f64> = rec.reports.iter().map(|r| r.val_perplexity.expect("validation every epoch")).collect();
        let best = summary.best.expect("a best epoch");
        let argmin = vals.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 + 1;
        assert_eq!(best.epoch, argmin);
        assert_eq!(best.val_perplexity, vals[argmin - 1]);
        // The final checkpoint carries the best epoch's parameters, and they score the kept perplexity.
        let (why, _, position, tensors) = rec.checkpoints.last().unwrap();
        assert_eq!((*why, position.best.as_ref()), (SaveReason::Final, Some(&best)));
        let state = TrainState::from_named(position.clone(), copies(tensors), &model, &config).unwrap();
        let params = state.best.expect("the best epoch's parameters");
        let kept = Network::from_tensors(model.config(), params, Device::Cpu).unwrap();
        let again = evaluate(&kept, val_ids, config.eval_context(train_ids.len())).unwrap().perplexity();
        assert!((again - best.val_perplexity).abs() < 1e-9 * again, "{again} vs {}", best.val_perplexity);
    }

    /// Trains `config` from scratch, stopping after `stop_after` minibatches if given; returns the model
    /// and the recorder.
    fn run(config: &TrainConfig, stop_after: Option<usize>) -> (Network, Recorder, Result<TrainSummary>) {
        let (vocab, ids) = corpus();
        let (train_ids, val_ids) = ids.split_at(if config.val_frac.is_some() { 300 } else { ids.len() });
        let model = Network::new(config.model_config(vocab.len()), config.seed, Device::Cpu).unwrap();
        let mut rec = Recorder { stop_after, ..Default::default() };
        let result = train(&model, &vocab, train_ids, val_ids, config, None, &mut rec);
        (model, rec, result)
    }

    #[test]
    fn evaluations_within_epochs_report_and_keep_the_best() {
        let (vocab, ids) = corpus();
        let (train_ids, val_ids) = ids.split_at(300);
        let config = TrainConfig { eval_every: Some(4), val_chars: Some(40), ..small(16, 3) };
        let model = Network::new(config.model_config(vocab.len()), 0, Device::Cpu).unwrap();
        let mut rec = Recorder::default();
        let summary = train(&model, &vocab, train_ids, val_ids, &config, None, &mut rec).unwrap();
        // 19 minibatches per epoch ((300 - 1) / 5 / 3): every 4th of the 57, none of which ends an epoch.
        let per_epoch = 19;
        let at: Vec<u64> = rec.iterations.iter().map(|r| r.iteration).collect();
        assert_eq!(at, (1..=14).map(|k| 4 * k).collect::<Vec<u64>>());
        for r in &rec.iterations {
            assert!((r.epoch - r.iteration as f64 / per_epoch as f64).abs() < 1e-12, "{r:?}");
        }
        // The best of every evaluation, inside epochs or at their ends, is kept, and its parameters score it.
        let all = rec
            .iterations
            .iter()
            .filter_map(|r| r.val_perplexity)
            .chain(rec.reports.iter().filter_map(|r| r.val_perplexity));
        let lowest = all.fold(f64::INFINITY, f64::min);
        let best = summary.best.expect("a best evaluation");
        assert_eq!(best.val_perplexity, lowest);
        let (_, _, position, tensors) = rec.checkpoints.last().unwrap();
        let state = TrainState::from_named(position.clone(), copies(tensors), &model, &config).unwrap();
        let kept = Network::from_tensors(model.config(), state.best.unwrap(), Device::Cpu).unwrap();
        let context = config.eval_context(train_ids.len());
        let again = crate::eval::evaluate_sample(&kept, val_ids, context, config.val_chars).unwrap().perplexity();
        assert!((again - best.val_perplexity).abs() < 1e-9 * again, "{again} vs {best:?}");
        assert!(TrainConfig { eval_every: Some(0), ..config.clone() }.validate().is_err());
        assert!(TrainConfig { val_chars: Some(1), ..config }.validate().is_err());
    }

    #[test]
    fn long_epochs_are_checkpointed_as_they_go_and_resume_exactly() {
        // With no period set, a checkpoint comes after every minibatch that ends `auto_checkpoint` after the
        // last one: here at once, so after every minibatch.
        let config = TrainConfig { auto_checkpoint: std::time::Duration::ZERO, ..small(12, 2) };
        let (_, ids) = corpus();
        let per_epoch = config.batch_order.batches_per_epoch(ids.len(), config.batch_size, config.steps);
        let (straight, rec, result) = run(&config, None);
        result.unwrap();
        let at: Vec<(usize, usize)> = rec.checkpoints.iter().map(|c| (c.2.epoch, c.2.minibatch)).collect();
        let expected: Vec<(usize, usize)> =
            (0..2).flat_map(|e| (1..per_epoch).map(move |m| (e, m)).chain([(e + 1, 0)])).collect();
        assert_eq!(at, expected);
        assert!(rec.checkpoints.iter().rev().skip(1).all(|c| c.0 == SaveReason::Periodic));
        // From the one in the middle of epoch 2, the run ends where the unbroken one did.
        let middle = &rec.checkpoints[per_epoch + per_epoch / 2];
        assert_eq!((middle.2.epoch, middle.2.minibatch), (1, per_epoch / 2 + 1));
        assert_resumes_to(&straight, middle, &config, "resume from the middle of an epoch is exact");
    }

    #[test]
    fn limits_stop_with_a_checkpoint_and_the_run_resumes_exactly() {
        let config = small(12, 4);
        let (_, ids) = corpus();
        let per_epoch = config.batch_order.batches_per_epoch(ids.len(), config.batch_size, config.steps);
        let (straight, _, result) = run(&config, None);
        result.unwrap();
        // Three minibatches into epoch 2: a resumable checkpoint there, and the rest trains as if unbroken.
        let limited = TrainConfig { max_iters: Some(per_epoch as u64 + 3), ..config.clone() };
        let (_, first, result) = run(&limited, None);
        assert!(matches!(&result, Err(Error::LimitReached { epoch: 2, minibatch: 3, .. })), "{result:?}");
        assert!(result.unwrap_err().to_string().contains("--max-iters"));
        let stopped = first.checkpoints.last().unwrap();
        assert_eq!((stopped.0, stopped.2.epoch, stopped.2.minibatch), (SaveReason::Interrupted, 1, 3));
        assert_resumes_to(&straight, stopped, &config, "parameters differ after resuming from the limit");
        // A limit at an epoch's end stops after that epoch's report and checkpoint; one at the run's very end
        // is no stop; a time limit already passed stops after the first minibatch.
        let (_, rec, result) = run(&TrainConfig { max_iters: Some(2 * per_epoch as u64), ..config.clone() }, None);
        assert!(matches!(result, Err(Error::LimitReached { epoch: 2, .. })), "{result:?}");
        let last = &rec.checkpoints.last().unwrap().2;
        assert_eq!((rec.reports.len(), last.epoch, last.minibatch), (2, 2, 0));
        let (_, _, result) = run(&TrainConfig { max_iters: Some(4 * per_epoch as u64), ..config.clone() }, None);
        assert_eq!(result.unwrap().epochs, 4);
        let timed = TrainConfig { time_limit: Some(std::time::Duration::ZERO), ..config.clone() };
        let (_, _, result) = run(&timed, None);
        assert!(matches!(result, Err(Error::LimitReached { epoch: 1, minibatch: 1, .. })), "{result:?}");
        let zero = TrainConfig { max_iters: Some(0), ..config };
        assert!(zero.validate().unwrap_err().to_string().contains("--max-iters"));
    }

    #[test]
    fn a_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does() {
        let base = TrainConfig {
            arch: Arch { hidden: 12, ..Arch::default() },
            steps: 5,
            batch_size: 3,
            epochs: 5,
            prefixes: vec!["ab".into()],
            pred_period: 1,
            pred_len: 4,
            ..Default::default()
        };
        let configs = [
            TrainConfig { lr: 1.0, clip: 1.0, ..base.clone() },
            TrainConfig {
                arch: Arch { cell: Cell::Gru, layers: 2, embed: 4, dropout: 0.3, init: Init::Uniform, ..base.arch },
                optimizer: OptimizerKind::Adam,
                lr: 0.01,
                batch_order: BatchOrder::Consecutive,
                val_frac: Some(0.1),
                ..base.clone()
            },
            TrainConfig {
                arch: Arch { cell: Cell::Lstm, ..base.arch },
                optimizer: OptimizerKind::Adam,
                lr: 0.01,
                lr_decay: crate::LrDecay { factor: 0.5, every: 2 },
                batch_order: BatchOrder::Consecutive,
                ..base.clone()
            },
        ];
        for config in configs {
            let (straight, full, result) = run(&config, None);
            result.unwrap();
            let (vocab, ids) = corpus();
            let (train_ids, val_ids) = ids.split_at(if config.val_frac.is_some() { 300 } else { ids.len() });
            let per_epoch = config.batch_order.batches_per_epoch(train_ids.len(), config.batch_size, config.steps);
            // Stop in the middle of epoch 3, and at the end of epoch 2.
            for stop_after in [2 * per_epoch + per_epoch / 2, 2 * per_epoch] {
                let (_, first, result) = run(&config, Some(stop_after));
                assert!(matches!(result, Err(Error::Interrupted { signal: 2, .. })), "{result:?}");
                let (why, params, position, tensors) = first.checkpoints.last().unwrap();
                assert_eq!(*why, SaveReason::Interrupted);
                let resumed =
                    Network::from_tensors(straight.config(), params.iter().map(|t| t.copy()).collect(), Device::Cpu)
                        .unwrap();
                let state = TrainState::from_named(position.clone(), copies(tensors), &resumed, &config).unwrap();
                let mut rest = Recorder::default();
                train(&resumed, &vocab, train_ids, val_ids, &config, Some(&state), &mut rest).unwrap();
                for (a, b) in straight.parameters().iter().zip(resumed.parameters()) {
                    assert!(
                        a.equal(b),
                        "{:?} {:?} stopped after {stop_after}: parameters differ",
                        config.arch.cell,
                        config.batch_order
                    );
                }
                let printed = |r: &EpochReport| (r.epoch, r.perplexity, r.val_perplexity, r.samples.clone());
                let tail: Vec<_> = full.reports.iter().skip(first.reports.len()).map(printed).collect();
                assert_eq!(rest.reports.iter().map(printed).collect::<Vec<_>>(), tail);
            }
        }
    }

    #[test]
    fn consecutive_sampling_carries_the_state_across_minibatches_and_resets_it_each_epoch() {
        let (vocab, ids) = corpus();
        // A clipping threshold of 1e-30 makes every update vanish below float32's resolution of the weights,
        // so each epoch's perplexity is that of the same fixed model.
        let config = TrainConfig {
            arch: Arch { hidden: 8, ..Arch::default() },
            steps: 5,
            batch_size: 3,
            epochs: 2,
            lr: 1.0,
            clip: 1e-30,
            batch_order: BatchOrder::Consecutive,
            prefixes: vec!["ab".into()],
            pred_period: 1000,
            ..Default::default()
        };
        let model = Network::new(config.model_config(vocab.len()), 0, Device::Cpu).unwrap();
        // Weights 60 times the textbook's, so that the state carries enough to matter.
        let scaled: Vec<Tensor> = model.parameters().into_iter().map(|p| p.detach() * 60.0).collect();
        model.set_parameters(&scaled).unwrap();
        let mut rec = Recorder::default();
        train(&model, &vocab, &ids, &[], &config, None, &mut rec).unwrap();
        // Worked out directly: the corpus cut into 3 rows of 120, each read as one stream of 23 × 5 inputs
        // from a zero state (carried from minibatch to minibatch), or from a zero state at every minibatch.
        let _guard = tch::no_grad_guard();
        let rows = |shift: usize| {
            let v: Vec<i64> = (0..3).flat_map(|r| ids[r * 120 + shift..r * 120 + shift + 115].to_vec()).collect();
            Tensor::from_slice(&v).view([3, 115])
        };
        let (x, y) = (rows(0), rows(1));
        let (logits, _) = model.forward(&x, &model.begin_state(3), false);
        let carried = cross_entropy(&logits, &step_major(&y)).double_value(&[]).exp();
        let reset = (0..23)
            .map(|i| {
                let (logits, _) = model.forward(&x.narrow(1, i * 5, 5), &model.begin_state(3), false);
                cross_entropy(&logits, &step_major(&y.narrow(1, i * 5, 5))).double_value(&[])
            })
            .sum::<f64>();
        let reset = (reset / 23.0).exp();
        // Float32 losses of 345 positions, summed over 23 minibatches: good to about 1e-6 relative.
        assert!((carried - reset).abs() > 1e-3 * carried, "the test needs a state that matters: {carried} vs {reset}");
        let reported: Vec<f64> = rec.reports.iter().map(|r| r.perplexity).collect();
        assert!(
            (reported[0] - carried).abs() < 1e-5 * carried,
            "epoch 1: {reported:?} vs carried {carried}, reset {reset}"
        );
        assert_eq!(reported[1], reported[0], "epoch 2 starts again from a zero state");
    }

    #[test]
    fn divergence_stops_training_naming_the_epoch_and_saves_nothing_after_it() {
        let config = TrainConfig { checkpoint_every: Some(1), ..small(12, 6) };
        let (vocab, ids) = corpus();
        let model = Network::new(config.model_config(vocab.len()), 0, Device::Cpu).unwrap();
        let mut rec = Recorder { poison_after: Some(2), ..Default::default() };
        let err = train(&model, &vocab, &ids, &[], &config, None, &mut rec).unwrap_err();
        assert!(matches!(err, Error::Diverged { epoch: 3, .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("epoch 3") && msg.contains("--lr") && msg.contains("--clip"), "{msg}");
        let epochs: Vec<usize> = rec.checkpoints.iter().map(|c| c.2.epoch).collect();
        assert_eq!(epochs, vec![1, 2]);
        // A huge learning rate without clipping diverges in the first epoch.
        let wild = TrainConfig { lr: 1e30, clip: 1e30, checkpoint_every: None, ..config };
        let model = Network::new(wild.model_config(vocab.len()), 0, Device::Cpu).unwrap();
        let mut rec = Recorder::default();
        let err = train(&model, &vocab, &ids, &[], &wild, None, &mut rec).unwrap_err();
        assert!(matches!(err, Error::Diverged { epoch: 1, .. }), "{err:?}");
        assert!(rec.checkpoints.is_empty());
    }

    #[test]
    fn rollback_recovers_from_divergence_with_a_lower_rate_and_resumes_exactly() {
        let config = TrainConfig { checkpoint_every: Some(1), on_diverge: OnDiverge::Rollback, ..small(12, 6) };
        let (vocab, ids) = corpus();
        // NaN weights after epoch 2's checkpoint: epoch 3 diverges, goes back to the end of epoch 2 (kept in
        // memory, not the poisoned weights) with half the rate, and the run finishes.
        let model = Network::new(config.model_config(vocab.len()), 0, Device::Cpu).unwrap();
        #[derive(Default)]
        struct Rollbacks(Recorder, Vec<RollbackReport>);
        impl TrainObserver for Rollbacks {
            fn epoch(&mut self, r: &EpochReport) {
                self.0.epoch(r);
            }
            fn checkpoint(&mut self, model: &Network, state: &TrainState, why: SaveReason) -> Result<()> {
                self.0.checkpoint(model, state, why)
            }
            fn rollback(&mut self, r: &RollbackReport) {
                self.1.push(r.clone());
            }
        }
        let mut rec = Rollbacks(Recorder { poison_after: Some(2), ..Default::default() }, Vec::new());
        let summary = train(&model, &vocab, &ids, &[], &config, None, &mut rec).unwrap();
        assert_eq!(summary.epochs, 6);
        assert_eq!(rec.1.len(), 1, "{:?}", rec.1);
        let r = &rec.1[0];
        assert_eq!((r.diverged_in, r.back_to, r.lr, r.rollback, r.max), (3, 2, 0.5, 1, 3));
        let lrs: Vec<(usize, f64)> = rec.0.reports.iter().map(|r| (r.epoch, r.lr)).collect();
        assert_eq!(lrs, vec![(1, 1.0), (2, 1.0), (3, 0.5), (4, 0.5), (5, 0.5), (6, 0.5)]);
        assert!(summary.perplexity.is_finite());
        // Resuming from epoch 4's checkpoint (after the rollback) ends where the run did.
        let after = &rec.0.checkpoints[3];
        assert_eq!((after.2.epoch, after.2.lr_scale, after.2.rollbacks), (4, 0.5, 1));
        assert_resumes_to(&model, after, &config, "resume after a rollback is exact");
        // A rate that always diverges rolls back at most max_rollbacks times, then stops as without rollback.
        let wild = TrainConfig { lr: 1e30, clip: 1e30, max_rollbacks: 2, ..config.clone() };
        let model = Network::new(wild.model_config(vocab.len()), 0, Device::Cpu).unwrap();
        let mut rec = Rollbacks::default();
        let err = train(&model, &vocab, &ids, &[], &wild, None, &mut rec).unwrap_err();
        assert!(matches!(err, Error::Diverged { epoch: 1, .. }), "{err:?}");
        assert_eq!(rec.1.iter().map(|r| r.rollback).collect::<Vec<_>>(), vec![1, 2]);
        for factor in [0.0, 1.0, -0.5] {
            assert!(TrainConfig { rollback_lr_factor: factor, ..config.clone() }.validate().is_err(), "{factor}");
        }
    }

    #[test]
    fn checkpoints_come_every_n_epochs_at_the_end_and_on_request() {
        let config = TrainConfig { checkpoint_every: Some(3), ..small(8, 7) };
        let (_, rec, result) = run(&config, None);
        result.unwrap();
        let at: Vec<(SaveReason, usize, usize)> =
            rec.checkpoints.iter().map(|c| (c.0, c.2.epoch, c.2.minibatch)).collect();
        assert_eq!(at, vec![(SaveReason::Periodic, 3, 0), (SaveReason::Periodic, 6, 0), (SaveReason::Final, 7, 0)]);
        let (_, rec, result) = run(&config, Some(5));
        assert!(matches!(result, Err(Error::Interrupted { epoch: 1, minibatch: 5, .. })), "{result:?}");
        let at: Vec<(SaveReason, usize, usize)> =
            rec.checkpoints.iter().map(|c| (c.0, c.2.epoch, c.2.minibatch)).collect();
        assert_eq!(at, vec![(SaveReason::Interrupted, 0, 5)]);
    }

    #[test]
    fn a_model_unlike_the_configuration_is_refused() {
        let (vocab, ids) = corpus();
        let config = TrainConfig {
            arch: Arch::rnn(8),
            steps: 5,
            batch_size: 3,
            epochs: 1,
            prefixes: vec!["ab".into()],
            ..Default::default()
        };
        let others = [
            ModelConfig::new(vocab.len(), Arch { cell: Cell::Gru, ..config.arch }),
            ModelConfig::new(vocab.len(), Arch::rnn(9)),
            ModelConfig::new(vocab.len(), Arch { embed: 2, ..config.arch }),
            ModelConfig::new(vocab.len() + 1, config.arch),
        ];
        for other in others {
            let model = Network::new(other, 0, Device::Cpu).unwrap();
            let err = train(&model, &vocab, &ids, &[], &config, None, &mut ()).unwrap_err().to_string();
            assert!(err.contains("invalid model") && err.contains("configuration"), "{other:?}: {err}");
        }
        let model = Network::new(config.model_config(vocab.len()), 0, Device::Cpu).unwrap();
        assert!(train(&model, &vocab, &ids, &[], &config, None, &mut ()).is_ok());
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

    #[test]
    fn training_lowers_perplexity_and_reports_every_epoch() {
        struct Record(Vec<EpochReport>, usize);
        impl TrainObserver for Record {
            fn minibatch(&mut self, _: &Progress<'_>) {
                self.1 += 1;
            }
            fn epoch(&mut self, r: &EpochReport) {
                self.0.push(r.clone());
            }
        }
        let (vocab, ids) = corpus();
        let model = Network::new(ModelConfig::rnn(vocab.len(), 16), 0, Device::Cpu).unwrap();
        let config = TrainConfig { steps: 6, batch_size: 4, pred_period: 10, pred_len: 5, ..small(16, 30) };
        let mut rec = Record(Vec::new(), 0);
        let summary = train(&model, &vocab, &ids, &[], &config, None, &mut rec).unwrap();
        assert_eq!(rec.0.len(), 30);
        assert_eq!(rec.1, 30 * BatchOrder::Random.batches_per_epoch(ids.len(), 4, 6));
        assert!(
            rec.0[0].perplexity > 3.0 && summary.perplexity < 2.0,
            "{} -> {}",
            rec.0[0].perplexity,
            summary.perplexity
        );
        let with_samples: Vec<usize> = rec.0.iter().filter(|r| r.samples.is_some()).map(|r| r.epoch).collect();
        assert_eq!(with_samples, vec![10, 20, 30]);
        assert_eq!(rec.0[29].samples.as_ref().unwrap()[0].chars().count(), 7);
    }
}
