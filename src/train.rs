//! Training: truncated BPTT over minibatches, gradient clipping and SGD, reported through an observer.
use crate::batches::Sampling;
use crate::corpus::Vocabulary;
use crate::error::{Error, Result};
use crate::metrics::{evaluate, perplexity};
use crate::model::{cross_entropy, step_major, Backend, Cell, Init, ModelConfig, RnnModel, State};
use crate::predict::predict;
use crate::optim::{LrDecay, Optimizer, OptimizerKind};
use crate::rng::{Rng, Stream};
use std::time::Instant;
use tch::{Kind, Tensor};

/// Training hyperparameters. `Default` is the textbook's setting (Dive into Deep Learning, 1st ed., §6.4).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Hidden units H.
    pub hidden: usize,
    /// The recurrent cell.
    #[serde(default)]
    pub cell: Cell,
    /// Stacked recurrent layers.
    #[serde(default = "one")]
    pub layers: usize,
    /// Embedding width; 0 feeds one-hot vectors.
    #[serde(default)]
    pub embed: usize,
    /// Dropout between layers and before the output layer (training only).
    #[serde(default)]
    pub dropout: f64,
    /// How the recurrence is computed.
    #[serde(default)]
    pub backend: Backend,
    /// How the parameters start.
    #[serde(default)]
    pub init: Init,
    /// Time steps per sequence (BPTT length).
    pub steps: usize,
    /// Sequences per minibatch.
    pub batch: usize,
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
    /// Passes over the corpus.
    pub epochs: usize,
    /// How minibatches are cut.
    pub sampling: Sampling,
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
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            hidden: 256,
            cell: Cell::Rnn,
            layers: 1,
            embed: 0,
            dropout: 0.0,
            backend: Backend::Scratch,
            init: Init::Normal,
            steps: 35,
            batch: 32,
            optimizer: OptimizerKind::Sgd,
            lr: 100.0,
            lr_decay: LrDecay::default(),
            clip: 0.01,
            epochs: 250,
            sampling: Sampling::Random,
            seed: 0,
            prefixes: vec!["分开".into(), "不分开".into()],
            val_frac: None,
            pred_period: 50,
            pred_len: 50,
        }
    }
}

fn one() -> usize {
    1
}

impl TrainConfig {
    /// The validation fraction for a corpus of `chars` characters: the configured one, else 0.1 from 20,000
    /// characters on and 0 below.
    pub fn resolved_val_frac(&self, chars: usize) -> f64 {
        self.val_frac.unwrap_or(if chars >= 20_000 { 0.1 } else { 0.0 })
    }

    /// The network these settings describe, over `vocab_size` characters.
    pub fn model_config(&self, vocab_size: usize) -> ModelConfig {
        let (hidden, cell, layers, embed, dropout, backend, init) =
            (self.hidden, self.cell, self.layers, self.embed, self.dropout, self.backend, self.init);
        ModelConfig { vocab_size, hidden, cell, layers, embed, dropout, backend, init }
    }

    /// Checks every value is in range (positive sizes, finite positive rates).
    pub fn validate(&self) -> Result<()> {
        self.model_config(1).validate()?;
        self.lr_decay.validate()?;
        if let Some(f) = self.val_frac {
            if !(0.0..1.0).contains(&f) {
                return Err(Error::config("--val-frac", format!("must be at least 0 and below 1, got {f}")));
            }
        }
        let positive = [
            ("--hidden", self.hidden),
            ("--steps", self.steps),
            ("--batch", self.batch),
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
        match self.sampling {
            Sampling::Random => self.steps,
            Sampling::Consecutive => (corpus_chars / self.batch.max(1)).max(1),
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
    pub batch: usize,
    /// Minibatches per epoch.
    pub batches: usize,
    loss_sum: &'a Tensor,
}

impl Progress<'_> {
    /// Perplexity over this epoch's minibatches so far. Reads the value back from the device, so call it
    /// only as often as it is shown.
    pub fn running_perplexity(&self) -> f64 {
        perplexity(self.loss_sum.double_value(&[]) / self.batch as f64)
    }
}

/// What one epoch achieved.
#[derive(Debug, Clone)]
pub struct EpochReport {
    /// The epoch, from 1.
    pub epoch: usize,
    /// exp of the mean training loss over the epoch's minibatches (the textbook's "perplexity").
    pub perplexity: f64,
    /// Wall time of the epoch's training (not its predictions), in seconds.
    pub seconds: f64,
    /// Perplexity on the held-out text, read as [`crate::evaluate`] does; `None` without validation.
    pub val_perplexity: Option<f64>,
    /// Every `pred_period` epochs: one greedy prediction per configured prefix (prefix included).
    pub samples: Option<Vec<String>>,
}

/// Receives training progress; the library never prints.
pub trait TrainObserver {
    /// Called after every minibatch.
    fn minibatch(&mut self, _progress: &Progress<'_>) {}
    /// Called after every epoch.
    fn epoch(&mut self, _report: &EpochReport) {}
}

/// An observer that ignores everything.
impl TrainObserver for () {}

/// The state for the next minibatch: carried values, cut from the previous minibatch's graph so that
/// backpropagation stops at the minibatch boundary (truncated BPTT).
pub fn carry_state(state: &State) -> State {
    state.detach()
}

/// Scales all gradients by `min(theta / ||g||, 1)`, `||g||` being the L2 norm over all of them together.
///
/// Stays on the device (no read-back). Returns the norm before clipping, a scalar Float tensor.
pub fn clip_gradients(params: &[&Tensor], theta: f64) -> Tensor {
    let _guard = tch::no_grad_guard();
    let squares: Vec<Tensor> = params.iter().map(|p| p.grad().square().sum(Kind::Float)).collect();
    let norm = Tensor::stack(&squares, 0).sum(Kind::Float).sqrt();
    let scale = (theta / &norm).clamp_max(1.0);
    for p in params {
        let _ = p.grad().f_mul_(&scale);
    }
    norm
}

/// One training step on a minibatch: forward, mean cross-entropy, backward, clip, update.
///
/// `inputs`, `targets`: Int64 `[batch, steps]`; `state`: `[layers, batch, H]` tensors. Returns the loss before the
/// update (scalar Float, detached) and the final hidden state (still attached to this step's graph; pass it
/// through [`carry_state`] before using it again). The clipped gradients stay in the parameters' `grad()`.
pub fn train_step(model: &RnnModel, inputs: &Tensor, targets: &Tensor, state: &State, clip: f64, optimizer: &mut Optimizer) -> (Tensor, State) {
    let params = model.parameters();
    for p in &params {
        p.shallow_clone().zero_grad();
    }
    let (logits, h) = model.forward(inputs, state, true);
    let loss = cross_entropy(&logits, &step_major(targets));
    loss.backward();
    let _ = clip_gradients(&params, clip);
    optimizer.step(&params);
    (loss.detach(), h)
}

/// The outcome of a training run.
#[derive(Debug)]
pub struct TrainSummary {
    /// Epochs run.
    pub epochs: usize,
    /// Training perplexity of the last epoch.
    pub perplexity: f64,
    /// Validation perplexity of the last epoch, with validation.
    pub val_perplexity: Option<f64>,
    /// With validation: the epoch of lowest validation perplexity.
    pub best: Option<BestEpoch>,
}

/// The epoch with the lowest validation perplexity so far.
#[derive(Debug)]
pub struct BestEpoch {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Its training perplexity.
    pub perplexity: f64,
    /// Its validation perplexity.
    pub val_perplexity: f64,
    /// A copy of the parameters after it, in [`crate::ModelConfig::param_specs`] order.
    pub params: Vec<Tensor>,
}

/// Trains `model` on `corpus` (character indices of `vocab`) as the textbook does.
///
/// Random sampling starts every minibatch from a zero state; consecutive sampling starts each epoch from a
/// zero state and carries it across minibatches, detached. The loop reads nothing back from the device
/// except once per epoch (the epoch's perplexity) and what the observer asks for.
///
/// `val` (possibly empty) is held-out text, evaluated after every epoch; the best epoch's parameters are
/// kept in the summary.
pub fn train(model: &RnnModel, vocab: &Vocabulary, corpus: &[i64], val: &[i64], config: &TrainConfig, observer: &mut dyn TrainObserver) -> Result<TrainSummary> {
    config.validate()?;
    config.sampling.check_fits(corpus.len(), config.batch, config.steps)?;
    for p in &config.prefixes {
        vocab.encode(p, "the prefix")?;
    }
    let mut rng = Rng::for_stream(config.seed, Stream::Shuffle);
    // Dropout masks come from libtorch's generator.
    tch::manual_seed(config.seed as i64);
    let device = model.device();
    let mut optimizer = Optimizer::new(config.optimizer, model, config.lr)?;
    let mut last = f64::NAN;
    let mut last_val = None;
    let mut best: Option<BestEpoch> = None;
    let context = config.eval_context(corpus.len());
    for epoch in 1..=config.epochs {
        let start = Instant::now();
        optimizer.set_lr(config.lr_decay.lr_at(config.lr, epoch));
        let (xs, ys) = config.sampling.epoch(corpus, config.batch, config.steps, &mut rng, device)?;
        let batches = xs.size()[0] as usize;
        let loss_sum = Tensor::zeros([], (Kind::Float, device));
        let mut state = model.begin_state(config.batch);
        for i in 0..batches {
            let input_state = match config.sampling {
                Sampling::Random => model.begin_state(config.batch),
                Sampling::Consecutive => carry_state(&state),
            };
            let (loss, h) = train_step(model, &xs.get(i as i64), &ys.get(i as i64), &input_state, config.clip, &mut optimizer);
            state = h;
            let _ = loss_sum.shallow_clone().f_add_(&loss)?;
            observer.minibatch(&Progress { epoch, epochs: config.epochs, batch: i + 1, batches, loss_sum: &loss_sum });
        }
        last = perplexity(loss_sum.double_value(&[]) / batches as f64);
        // Like the textbook, the reported time is the epoch's training, without validation and predictions.
        let seconds = start.elapsed().as_secs_f64();
        if val.len() >= 2 {
            let vp = evaluate(model, val, context)?.perplexity();
            if best.as_ref().is_none_or(|b| vp < b.val_perplexity) {
                let params = model.parameters().iter().map(|p| p.detach().copy()).collect();
                best = Some(BestEpoch { epoch, perplexity: last, val_perplexity: vp, params });
            }
            last_val = Some(vp);
        }
        let samples = if epoch % config.pred_period == 0 {
            let s: Result<Vec<String>> = config.prefixes.iter().map(|p| predict(model, vocab, p, config.pred_len)).collect();
            Some(s?)
        } else {
            None
        };
        observer.epoch(&EpochReport { epoch, perplexity: last, val_perplexity: last_val, seconds, samples });
    }
    Ok(TrainSummary { epochs: config.epochs, perplexity: last, val_perplexity: last_val, best })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::sgd;
    use tch::Device;

    fn grad_norm(params: &[&Tensor]) -> f64 {
        params.iter().map(|p| p.grad().square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt()
    }

    fn model_with_grads() -> RnnModel {
        let m = RnnModel::new(ModelConfig::rnn(6, 4), 1, Device::Cpu).unwrap();
        let x = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]).view([2, 3]);
        let (logits, _) = m.forward(&x, &m.begin_state(2), true);
        cross_entropy(&logits, &step_major(&(x + 1).remainder(6))).backward();
        m
    }

    #[test]
    fn clipping_caps_the_global_norm_and_keeps_direction() {
        let m = model_with_grads();
        let params = m.parameters();
        let before: Vec<Tensor> = params.iter().map(|p| p.grad().copy()).collect();
        let norm = grad_norm(&params);
        assert!(norm > 1e-3, "test needs a gradient larger than theta, got {norm}");
        let reported = clip_gradients(&params, 1e-3).double_value(&[]);
        assert!((reported - norm).abs() < 1e-6 * norm);
        assert!(grad_norm(&params) <= 1e-3 * (1.0 + 1e-5));
        for (p, b) in params.iter().zip(&before) {
            assert!(p.grad().allclose(&(b * (1e-3 / norm)), 1e-5, 1e-10, false));
        }
    }

    #[test]
    fn clipping_leaves_small_gradients_alone() {
        let m = model_with_grads();
        let params = m.parameters();
        let before: Vec<Tensor> = params.iter().map(|p| p.grad().copy()).collect();
        let _ = clip_gradients(&params, 1e6);
        for (p, b) in params.iter().zip(&before) {
            assert!(p.grad().equal(b));
        }
    }

    #[test]
    fn detached_state_cuts_the_gradient_to_the_previous_minibatch() {
        let x = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]).view([2, 3]);
        let y = step_major(&(&x + 1).remainder(6));
        let reached = |t: &Tensor| t.grad().defined() && t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0;
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            let m = RnnModel::new(ModelConfig { cell, layers: 2, ..ModelConfig::rnn(6, 4) }, 1, Device::Cpu).unwrap();
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
    fn sgd_moves_against_the_gradient() {
        let m = model_with_grads();
        let params = m.parameters();
        let before: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
        sgd(&params, 0.5);
        for (p, b) in params.iter().zip(&before) {
            assert!(p.detach().allclose(&(b - p.grad() * 0.5), 1e-6, 1e-7, false));
        }
    }

    #[test]
    fn validation_defaults_to_a_tenth_of_large_corpora() {
        let auto = TrainConfig::default();
        assert_eq!(auto.resolved_val_frac(19_999), 0.0);
        assert_eq!(auto.resolved_val_frac(20_000), 0.1);
        let set = TrainConfig { val_frac: Some(0.25), ..Default::default() };
        assert_eq!(set.resolved_val_frac(100), 0.25);
        assert!(TrainConfig { val_frac: Some(1.0), ..Default::default() }.validate().unwrap_err().to_string().contains("--val-frac"));
    }

    #[test]
    fn validation_is_reported_each_epoch_and_the_best_epoch_kept() {
        struct Record(Vec<f64>);
        impl TrainObserver for Record {
            fn epoch(&mut self, r: &EpochReport) {
                self.0.push(r.val_perplexity.expect("validation every epoch"));
            }
        }
        let text = "abcabcabdabcabcabd".repeat(20);
        let vocab = Vocabulary::from_text(&text);
        let ids = vocab.encode(&text, "t").unwrap();
        let (train_ids, val_ids) = ids.split_at(300);
        let model = RnnModel::new(ModelConfig::rnn(vocab.len(), 16), 0, Device::Cpu).unwrap();
        let config = TrainConfig {
            hidden: 16, steps: 6, batch: 4, lr: 1.0, clip: 1.0, epochs: 8,
            prefixes: vec!["ab".into()], pred_period: 4, pred_len: 3, ..Default::default()
        };
        let mut rec = Record(Vec::new());
        let summary = train(&model, &vocab, train_ids, val_ids, &config, &mut rec).unwrap();
        let best = summary.best.expect("a best epoch");
        let argmin = rec.0.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 + 1;
        assert_eq!(best.epoch, argmin);
        assert_eq!(best.val_perplexity, rec.0[argmin - 1]);
        // The kept parameters score the kept perplexity.
        let kept = RnnModel::from_tensors(model.config(), best.params, Device::Cpu).unwrap();
        let again = evaluate(&kept, val_ids, config.eval_context(train_ids.len())).unwrap().perplexity();
        assert!((again - best.val_perplexity).abs() < 1e-9 * again, "{again} vs {}", best.val_perplexity);
    }

    #[test]
    fn invalid_hyperparameters_are_named() {
        let bad = TrainConfig { lr: -1.0, ..Default::default() };
        assert!(bad.validate().unwrap_err().to_string().contains("--lr"));
        let bad = TrainConfig { batch: 0, ..Default::default() };
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
        let text = "abcabcabdabcabcabd".repeat(20);
        let vocab = Vocabulary::from_text(&text);
        let ids = vocab.encode(&text, "t").unwrap();
        let model = RnnModel::new(ModelConfig::rnn(vocab.len(), 16), 0, Device::Cpu).unwrap();
        let config = TrainConfig {
            hidden: 16, steps: 6, batch: 4, lr: 1.0, clip: 1.0, epochs: 30,
            prefixes: vec!["ab".into()], pred_period: 10, pred_len: 5, ..Default::default()
        };
        let mut rec = Record(Vec::new(), 0);
        let summary = train(&model, &vocab, &ids, &[], &config, &mut rec).unwrap();
        assert_eq!(rec.0.len(), 30);
        assert_eq!(rec.1, 30 * Sampling::Random.batches_per_epoch(ids.len(), 4, 6));
        assert!(rec.0[0].perplexity > 3.0 && summary.perplexity < 2.0, "{} -> {}", rec.0[0].perplexity, summary.perplexity);
        let with_samples: Vec<usize> = rec.0.iter().filter(|r| r.samples.is_some()).map(|r| r.epoch).collect();
        assert_eq!(with_samples, vec![10, 20, 30]);
        assert_eq!(rec.0[29].samples.as_ref().unwrap()[0].chars().count(), 7);
    }
}
