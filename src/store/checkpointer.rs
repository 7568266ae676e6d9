//! The checkpointer: what the training loop's observer calls lands here. It passes progress on to the user's
//! observer and writes the checkpoints: the model to use in the model folder (the best epoch by validation,
//! else the latest parameters), the metrics log and the chart, and the resumable state in `<folder>/last`.
use crate::error::{Error, Result};
use crate::model::network::Network;
use crate::store::chart::{write_perplexity_svg, Curve};
use crate::store::format::{ModelFile, ValidationInfo};
use crate::store::layout::{record_last_model, LAST_DIR, PLOT_FILE};
use crate::store::metrics::{append_metrics, replace_metrics, MetricsLine};
use crate::store::save::save_parts;
use crate::train::observer::{
    EpochReport, IterationReport, Progress, RollbackReport, RunInfo, SaveReason, TrainObserver,
};
use crate::train::state::TrainState;
use crate::util::crash_point;
use std::path::Path;
use tch::Tensor;

/// Passes progress on to the user's observer and writes the checkpoints: the model to use in `out` (the
/// best epoch by validation, else the current parameters) and the resumable state in `out/last`.
pub(crate) struct Checkpointer<'a> {
    inner: &'a mut dyn TrainObserver,
    out: &'a Path,
    template: &'a ModelFile,
    n_val: usize,
    /// Epochs of the last complete checkpoint.
    saved: Option<usize>,
    /// The best epoch last written to `out`.
    best_saved: Option<usize>,
    /// Whether `out` is recorded as the last model.
    recorded: bool,
    /// Whether to record it (see [`Checkpointer::recording`]).
    record: bool,
    /// Lines for `metrics.jsonl` of epochs not yet checkpointed.
    pending_metrics: Vec<String>,
    /// Notes for [`RunInfo::notes`].
    notes: &'a [String],
}

impl<'a> Checkpointer<'a> {
    /// A checkpointer into the model folder `out`, whose files `template` describes (epoch, perplexities and
    /// files are filled in at each save); `held_out` characters are held out for validation; `saved` is the
    /// epochs of the last complete checkpoint already on disk (a resumed run's); `notes` go to the observer's
    /// [`RunInfo`].
    pub(crate) fn new(
        out: &'a Path,
        template: &'a ModelFile,
        held_out: usize,
        saved: Option<usize>,
        notes: &'a [String],
        inner: &'a mut dyn TrainObserver,
    ) -> Self {
        Checkpointer {
            inner,
            out,
            template,
            n_val: held_out,
            saved,
            best_saved: None,
            recorded: false,
            record: true,
            pending_metrics: Vec::new(),
            notes,
        }
    }

    /// With `false`, leaves `runs/last-model` alone (`train --no-record`): a throwaway run.
    pub(crate) fn recording(self, record: bool) -> Self {
        Checkpointer { record, ..self }
    }

    /// Epochs of the last complete checkpoint, if there is one.
    pub(crate) fn saved(&self) -> Option<usize> {
        self.saved
    }

    /// Whether the model folder is recorded as the last model trained here.
    pub(crate) fn recorded(&self) -> bool {
        self.recorded
    }

    /// What model.json says of validation, for a model of `epoch` scoring `perplexity`.
    fn validation(&self, perplexity: Option<f64>, epoch: usize) -> Option<ValidationInfo> {
        let frac = self.template.train.val_frac.unwrap_or(0.0);
        perplexity.map(|perplexity| ValidationInfo { frac, chars: self.n_val, perplexity, epoch })
    }
}

impl TrainObserver for Checkpointer<'_> {
    fn minibatch(&mut self, progress: &Progress<'_>) {
        self.inner.minibatch(progress);
    }

    fn epoch(&mut self, report: &EpochReport) {
        self.inner.epoch(report);
        let line = MetricsLine {
            epoch: report.epoch,
            train_perplexity: report.perplexity,
            val_perplexity: report.val_perplexity,
            learning_rate: report.lr,
            grad_norm: report.grad_norm,
            chars_per_sec: report.chars_per_sec(),
            elapsed_sec: report.elapsed,
        };
        self.pending_metrics.push(serde_json::to_string(&line).expect("metrics serialise"));
    }

    fn stop_requested(&mut self) -> Option<i32> {
        self.inner.stop_requested()
    }

    fn iteration(&mut self, report: &IterationReport) {
        self.inner.iteration(report);
    }

    fn rollback(&mut self, report: &RollbackReport) {
        self.inner.rollback(report);
    }

    fn begin(&mut self, info: &RunInfo) {
        self.inner.begin(&RunInfo { notes: self.notes.to_vec(), ..info.clone() });
    }

    fn checkpoint(&mut self, model: &Network, state: &TrainState, why: SaveReason) -> Result<()> {
        self.inner.checkpoint(model, state, why)?;
        let p = &state.position;
        let params: Vec<(String, Tensor)> =
            model.named_parameters().into_iter().map(|(n, t)| (n, t.shallow_clone())).collect();
        let mut file = ModelFile {
            epoch: p.epoch,
            perplexity: p.perplexity,
            validation: self.validation(p.val_perplexity, p.epoch),
            ..self.template.clone()
        };
        // The model to use: with validation the best epoch (rewritten only when it changes), else the latest.
        match &p.best {
            Some(best) if self.best_saved != Some(best.epoch) => {
                let kept = state.best.as_ref().ok_or_else(|| Error::TrainingState {
                    reason: format!("it names epoch {} the best but holds no parameters of it", best.epoch),
                })?;
                let best_params: Vec<(String, Tensor)> =
                    params.iter().zip(kept).map(|((n, _), t)| (n.clone(), t.shallow_clone())).collect();
                let best_file = ModelFile {
                    epoch: best.epoch,
                    perplexity: Some(best.perplexity).filter(|x| x.is_finite()),
                    validation: self.validation(Some(best.val_perplexity), best.epoch),
                    ..file.clone()
                };
                save_parts(self.out, &best_params, best_file, None)?;
                self.best_saved = Some(best.epoch);
            }
            Some(_) => {}
            None => save_parts(self.out, &params, file.clone(), None)?,
        }
        // The log of the epochs this checkpoint covers (a resumed run trims what a crash left after it); a new
        // run's first checkpoint starts it afresh.
        crash_point("the model to use saved");
        if self.saved.is_none() {
            replace_metrics(self.out, &self.pending_metrics)?;
        } else {
            append_metrics(self.out, &self.pending_metrics)?;
        }
        self.pending_metrics.clear();
        if why != SaveReason::Periodic {
            let label = self
                .out
                .file_name()
                .map_or_else(|| self.out.display().to_string(), |n| n.to_string_lossy().into_owned());
            let curve = Curve::of_run(self.out, label)?;
            if !curve.points.is_empty() {
                write_perplexity_svg(&[curve], &self.out.join(PLOT_FILE))?;
            }
        }
        crash_point("the metrics and the chart written");
        file.resume = None;
        save_parts(&self.out.join(LAST_DIR), &params, file, Some(state))?;
        self.saved = Some(p.epoch);
        if !self.recorded {
            self.recorded = !self.record || record_last_model(self.out).is_ok();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::text::CorpusOptions;
    use crate::data::vocab::Vocabulary;
    use crate::model::config::ModelConfig;
    use crate::store::format::CorpusInfo;
    use crate::store::layout::MODEL_JSON;
    use crate::store::load::{load, load_state};
    use crate::train::config::TrainConfig;
    use crate::train::state::{BestEpoch, Position};
    use crate::util::faults::crash_after;
    use std::collections::BTreeSet;
    use tch::{Device, Kind};

    /// A model of `seed`'s weights and the state of a run that stands at the end of `epoch`, its best epoch
    /// 1 (with parameters of their own), and the description of its folder.
    fn run_at(epoch: usize, seed: u64) -> (Network, TrainState, ModelFile) {
        let vocab = Vocabulary::from_text("abcdef");
        let config = TrainConfig { val_frac: Some(0.2), ..Default::default() };
        let model = Network::new(config.model_config(vocab.len()), seed, Device::Cpu).unwrap();
        let best = Network::new(config.model_config(vocab.len()), seed + 100, Device::Cpu).unwrap();
        let scalar = || Tensor::zeros([], (Kind::Float, Device::Cpu));
        let state = TrainState {
            position: Position {
                epoch,
                minibatch: 0,
                shuffle_rng: 1,
                optimizer_step: 0,
                perplexity: Some(5.0),
                val_perplexity: Some(5.5),
                best: Some(BestEpoch { epoch: 1, perplexity: 5.0, val_perplexity: 5.5, minibatch: None }),
                elapsed: 1.0,
                lr_scale: 1.0,
                rollbacks: 0,
            },
            loss_sum: scalar(),
            grad_norm_sum: scalar(),
            adam: None,
            best: Some(best.parameter_copies()),
            carry: None,
        };
        let corpus = CorpusInfo::record(&["c.txt".into()], CorpusOptions::default(), 100, "fnv1a64:0".into());
        let file = ModelFile::for_run(&vocab, ModelConfig::rnn(6, 256), config, corpus, "cpu".into(), None);
        (model, state, file)
    }

    /// Whether the model folder `dir` loads whole (model.json, weights) and, for a resumable checkpoint, its
    /// training state too; `Err` says what does not.
    fn loads(dir: &Path, resumable: bool) -> std::result::Result<usize, String> {
        let loaded = load(dir, Device::Cpu).map_err(|e| e.to_string())?;
        if resumable {
            load_state(dir, &loaded).map_err(|e| e.to_string())?;
        }
        Ok(loaded.file.epoch)
    }

    /// Checkpoints cut short by a crash at every crash point in turn (a panic that skips all clean-up, as a
    /// kill does): the first one of a new run, a later one of the same run, and the first one of a run that
    /// replaces another's model (`--force`). After each crash, the model folder and its checkpoint are
    /// either absent (only before a new run's first complete save) or load whole, the old or the new.
    #[test]
    fn a_crash_at_any_point_of_a_checkpoint_leaves_models_that_load_whole() {
        let mut phases = BTreeSet::new();
        for scenario in ["first", "later", "forced"] {
            let mut crashes = 0;
            for k in 0.. {
                let dir = tempfile::tempdir().unwrap();
                let out = dir.path().join("m");
                let (saved, before) = match scenario {
                    "first" => (None, None),
                    // The same run at epoch 2, checkpointing epoch 3; or another run's model of epoch 7.
                    "later" | "forced" => {
                        let (model, state, file) = run_at(if scenario == "later" { 2 } else { 7 }, 1);
                        let mut inner = ();
                        let mut previous = Checkpointer::new(&out, &file, 20, None, &[], &mut inner);
                        previous.checkpoint(&model, &state, SaveReason::Final).unwrap();
                        (if scenario == "later" { Some(2) } else { None }, Some(state.position.epoch))
                    }
                    _ => unreachable!(),
                };
                let (model, state, file) = run_at(3, 2);
                let mut inner = ();
                let mut checkpointer = Checkpointer::new(&out, &file, 20, saved, &[], &mut inner);
                let outcome = crash_after(Some(k), || checkpointer.checkpoint(&model, &state, SaveReason::Final));
                let phase = match outcome {
                    Ok(result) => {
                        result.unwrap();
                        break;
                    }
                    Err(phase) => phase,
                };
                crashes += 1;
                phases.insert(phase);
                let what = format!("{scenario}, crash {k} ({phase})");
                // The model to use is the best epoch's, the first in every run here.
                match (loads(&out, false), before) {
                    (Ok(epoch), _) => assert_eq!(epoch, 1, "{what}"),
                    (Err(e), Some(_)) => panic!("{what}: the model folder no longer loads: {e}"),
                    (Err(_), None) => assert!(!out.join(MODEL_JSON).exists(), "{what}: a half-written model"),
                }
                match (loads(&out.join(LAST_DIR), true), before) {
                    (Ok(epoch), Some(old)) => assert!(epoch == old || epoch == 3, "{what}: checkpoint of {epoch}"),
                    (Ok(epoch), None) => assert_eq!(epoch, 3, "{what}"),
                    (Err(e), Some(_)) => panic!("{what}: the checkpoint no longer loads: {e}"),
                    (Err(_), None) => assert!(!out.join(LAST_DIR).join(MODEL_JSON).exists(), "{what}: half-written"),
                }
                // The next checkpoint, uninterrupted, completes and leaves the new run's files.
                let mut inner = ();
                let mut again = Checkpointer::new(&out, &file, 20, saved, &[], &mut inner);
                again.checkpoint(&model, &state, SaveReason::Final).unwrap();
                assert_eq!(loads(&out.join(LAST_DIR), true), Ok(3), "{what}: the next checkpoint");
            }
            assert!(crashes >= 8, "{scenario}: only {crashes} crash points were reached");
        }
        for phase in [
            "a new model folder made under a temporary name",
            "a new model folder renamed into place",
            "the weights written",
            "the training state written",
            "a temporary file written, before its rename",
            "model.json replaced",
            "the model to use saved",
            "the metrics and the chart written",
        ] {
            assert!(phases.contains(phase), "no crash at {phase:?}: {phases:?}");
        }
    }
}
