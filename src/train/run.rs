//! A training run: truncated BPTT over minibatches, epoch after epoch, from the start or from a saved
//! state, with rollback after divergence, checkpoints when they are due and the reports' samples.
use crate::data::tokens::Tokens;
use crate::data::vocab::Vocabulary;
use crate::error::{Error, Result};
use crate::model::network::Network;
use crate::train::config::{OnDiverge, TrainConfig};
use crate::train::epoch::Run;
use crate::train::observer::{RollbackReport, RunInfo, SaveReason, TrainObserver, TrainSummary};
use crate::train::state::TrainState;
use crate::world::world;
use std::time::Instant;

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
    // With several processes, rank 0 alone evaluates the held-out text (and reports).
    let (corpus, val) = (corpus.into(), if world().is_root() { val.into() } else { Tokens::from(&[] as &[i64]) });
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
                    lr: config.lr_at(p.epoch + 1, p.lr_scale),
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
pub(crate) fn check_run(
    model: &Network,
    vocab: &Vocabulary,
    corpus: Tokens<'_>,
    config: &TrainConfig,
) -> Result<usize> {
    config.validate()?;
    world().check_batch(config.batch_size)?;
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
    } else if config.checkpoint_every.map_or_else(
        // The same on every rank, when several processes train together.
        || world().max([(last_save.elapsed() >= config.auto_checkpoint).into()]) == [1],
        |n| epoch.is_multiple_of(n),
    ) {
        Some(SaveReason::Periodic)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::batches::BatchOrder;
    use crate::eval::evaluate;
    use crate::model::config::{Arch, Cell, Init, ModelConfig};
    use crate::model::dropout::Dropout;
    use crate::model::ops::{cross_entropy, step_major};
    use crate::train::observer::{EpochReport, IterationReport, Progress};
    use crate::train::optim::OptimizerKind;
    use crate::train::state::Position;
    use tch::{Device, Tensor};

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
        let (logits, _) = model.forward(&x, &model.begin_state(3), Dropout::Off);
        let carried = cross_entropy(&logits, &step_major(&y)).double_value(&[]).exp();
        let reset = (0..23)
            .map(|i| {
                let (logits, _) = model.forward(&x.narrow(1, i * 5, 5), &model.begin_state(3), Dropout::Off);
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
