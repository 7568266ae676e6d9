//! One epoch of a run: the run's changing state ([`Run`]), its minibatches in order with the stop requests
//! and limits checked after each, the evaluations inside it, and its end (the divergence check, validation,
//! the report).
use crate::data::batches::BatchOrder;
use crate::data::tokens::Tokens;
use crate::data::vocab::Vocabulary;
use crate::error::{Error, Result};
use crate::eval::{evaluate_sample, perplexity};
use crate::generate::generate;
use crate::generate::options::Generate;
use crate::generate::sampler::Sampler;
use crate::model::dropout::Dropout;
use crate::model::network::Network;
use crate::model::state::State;
use crate::rng::{Rng, Stream};
use crate::train::config::TrainConfig;
use crate::train::observer::{EpochReport, IterationReport, Progress, SaveReason, TrainObserver};
use crate::train::optim::Optimizer;
use crate::train::state::{BestEpoch, Position, TrainState};
use crate::train::step::{carry_state, train_step, StepOptions};
use crate::world::world;
use std::time::Instant;
use tch::{Kind, Tensor};

/// The seed of the dropout masks of minibatch `batch` (from 0) of `epoch` (from 1): a function of the
/// position only, so that a resumed run draws the same masks.
fn minibatch_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
    let mut r = Rng::new(
        seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (batch as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F),
    );
    r.next_u64()
}

/// Everything of a run that changes as it trains, besides the model's parameters.
pub(crate) struct Run {
    pub(crate) position: Position,
    optimizer: Optimizer,
    loss_sum: Tensor,
    grad_norm_sum: Tensor,
    best_params: Option<Vec<Tensor>>,
    carried: Option<State>,
}

impl Run {
    pub(crate) fn start(model: &Network, config: &TrainConfig) -> Result<Run> {
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
    pub(crate) fn resume(model: &Network, config: &TrainConfig, state: &TrainState) -> Result<Run> {
        let mut run = Run::start(model, config)?;
        let state = state.copy();
        run.optimizer.restore(state.position.optimizer_step, state.adam);
        (run.loss_sum, run.grad_norm_sum) = (state.loss_sum, state.grad_norm_sum);
        let rows = world().rows(config.batch_size);
        let own = |t: Tensor| t.narrow(1, rows.start as i64, rows.len() as i64).contiguous();
        let carried = state.carry.map(|c| State { h: own(c.h), c: c.c.map(own) });
        (run.best_params, run.carried, run.position) = (state.best, carried, state.position);
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
    pub(crate) fn snapshot(&self, carry: Option<&State>) -> TrainState {
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

/// An epoch whose minibatches all ran (or that a stop request ended at its last minibatch).
pub(crate) struct TrainedEpoch {
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
    pub(crate) stop: Option<Stop>,
}

/// Why a run stops before its last epoch ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Stop {
    /// [`TrainObserver::stop_requested`] returned this signal.
    Signal(i32),
    /// `max_iters` minibatches were trained.
    MaxIters(u64),
    /// `time_limit` passed.
    TimeLimit(std::time::Duration),
}

impl Stop {
    /// The error that ends the run, after a checkpoint at minibatch `minibatch` of `minibatches` of `epoch`.
    pub(crate) fn error(self, epoch: usize, minibatch: usize, minibatches: usize) -> Error {
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
    pub(crate) fn check_position(self, config: &TrainConfig, batches: usize) -> Result<Run> {
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
    pub(crate) fn train_epoch(
        &mut self,
        model: &Network,
        (corpus, validation): (Tokens<'_>, (Tokens<'_>, usize)),
        config: &TrainConfig,
        (epoch, batches): (usize, usize),
        (started, last_save): (Instant, &mut Instant),
        observer: &mut dyn TrainObserver,
    ) -> Result<TrainedEpoch> {
        let start = Instant::now();
        let lr = config.lr_at(epoch, self.position.lr_scale);
        self.optimizer.set_lr(lr);
        let mut rng = Rng::new(self.position.shuffle_rng);
        let plan = config.batch_order.plan(corpus.len(), config.batch_size, config.steps, &mut rng)?;
        let first = self.position.minibatch;
        let elapsed_before = self.position.elapsed;
        if first == 0 {
            let _ = self.loss_sum.zero_();
            let _ = self.grad_norm_sum.zero_();
        }
        // With several processes, this one's share of each minibatch's rows (and of the carried state).
        let rows = world().rows(config.batch_size);
        let mut state = self.carried.take().unwrap_or_else(|| model.begin_state(rows.len()));
        let mut stop = None;
        // Where the last mid-epoch report stood: the loss sum, the minibatch and the time.
        let mut mark = match config.eval_every {
            Some(_) if first > 0 => (self.loss_sum.double_value(&[]), first, Instant::now()),
            _ => (0.0, first, start),
        };
        for i in first..batches {
            let step = StepOptions {
                clip: config.clip,
                precision: config.dtype,
                dropout: match minibatch_seed(config.seed, epoch, i) {
                    seed if rows.len() == config.batch_size => Dropout::Seeded(seed),
                    seed => Dropout::Shard { seed, first: rows.start, rows: rows.len(), batch: config.batch_size },
                },
            };
            let input_state = match config.batch_order {
                BatchOrder::Random => model.begin_state(rows.len()),
                BatchOrder::Consecutive => carry_state(&state),
            };
            let (x, y) = plan.minibatch_rows(i, rows.clone(), corpus, model.device());
            let out = train_step(model, &x, &y, &input_state, &step, &mut self.optimizer);
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
            // What the clocks and signals say, the same on every rank (any rank's says so for all).
            let [signal, time_up, save_due] = world().max([
                observer.stop_requested().unwrap_or(0).into(),
                config.time_limit.is_some_and(|t| started.elapsed() >= t).into(),
                (last_save.elapsed() >= config.auto_checkpoint).into(),
            ]);
            stop = Some(signal as i32).filter(|&s| s != 0).map(Stop::Signal).or_else(|| {
                let iters = config.max_iters.filter(|&n| done >= n).map(Stop::MaxIters);
                let time = config.time_limit.filter(|_| time_up != 0).map(Stop::TimeLimit);
                iters.or(time).filter(|_| !at_end)
            });
            // A checkpoint inside the epoch: where it stands, with the carried state of consecutive sampling
            // (every rank's rows of it).
            let save_here = |run: &mut Run, observer: &mut dyn TrainObserver, why: SaveReason| -> Result<()> {
                run.check_finite(epoch)?;
                run.position.elapsed = elapsed_before + start.elapsed().as_secs_f64();
                let whole = |t: &Tensor| world().gather_rows(&t.detach(), 1);
                let carried = (config.batch_order == BatchOrder::Consecutive)
                    .then(|| State { h: whole(&state.h), c: state.c.as_ref().map(whole) });
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
            if config.checkpoint_every.is_none() && i + 1 < batches && save_due != 0 {
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
    pub(crate) fn finish_epoch(
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

/// The report lines' predictions after `epoch`: one per configured prefix, every `pred_period` epochs.
fn report_samples(
    model: &Network,
    vocab: &Vocabulary,
    config: &TrainConfig,
    epoch: usize,
) -> Result<Option<Vec<String>>> {
    // Rank 0 alone reports, when several processes train together.
    if !epoch.is_multiple_of(config.pred_period) || !world().is_root() {
        return Ok(None);
    }
    // Seeded by the epoch too, so that a resumed run prints the same samples.
    let sampler = Sampler { seed: config.seed.wrapping_add(epoch as u64), ..config.sampler };
    let options = Generate { num_chars: config.pred_len, samples: 1, stop: None, sampler, probs: false, beam: 0 };
    let samples =
        config.prefixes.iter().map(|p| Ok(generate(model, vocab, p, &options, &mut |_, _| {})?.remove(0).text));
    samples.collect::<Result<Vec<String>>>().map(Some)
}
