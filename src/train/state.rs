//! A run's resumable state: where it stands ([`Position`]) and the tensors that continue it exactly
//! ([`TrainState`]), with the one conversion between them and the named tensors of a checkpoint's state
//! file.
use crate::data::batches::BatchOrder;
use crate::error::{Error, Result};
use crate::model::config::Cell;
use crate::model::network::Network;
use crate::model::state::State;
use crate::train::config::TrainConfig;
use crate::train::optim::{Moments, OptimizerKind};
use tch::{Kind, Tensor};

/// The epoch with the lowest validation perplexity so far.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BestEpoch {
    /// The epoch, from 1.
    pub epoch: usize,
    /// Its training perplexity.
    pub perplexity: f64,
    /// Its validation perplexity.
    pub val_perplexity: f64,
    /// With `--eval-every`, the minibatch of the epoch where it was measured (`None`: at the epoch's end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minibatch: Option<usize>,
}

/// Where a run stands, in numbers; with the tensors of a [`TrainState`] it is everything needed to
/// continue the run exactly.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    /// Epochs completed.
    pub epoch: usize,
    /// Minibatches of epoch `epoch + 1` already trained (0 at an epoch boundary).
    #[serde(rename = "batch")]
    pub minibatch: usize,
    /// The shuffle generator's state before epoch `epoch + 1` draws its shuffle.
    pub shuffle_rng: u64,
    /// Adam's update count (0 with SGD).
    pub optimizer_step: u64,
    /// Training perplexity of epoch `epoch` (`None` before the first).
    pub perplexity: Option<f64>,
    /// Validation perplexity of epoch `epoch`, with validation.
    pub val_perplexity: Option<f64>,
    /// The best epoch so far by validation perplexity.
    pub best: Option<BestEpoch>,
    /// Seconds spent training (minibatches only) since the run began, across resumes.
    #[serde(default)]
    pub elapsed: f64,
    /// The factor on the learning rate left by rollbacks after divergence (1 without any).
    #[serde(default = "one")]
    pub lr_scale: f64,
    /// Rollbacks after divergence so far.
    #[serde(default)]
    pub rollbacks: usize,
}

fn one() -> f64 {
    1.0
}

/// A run's resumable state besides the model's own parameters: its [`Position`] and tensors on the model's
/// device (shallow handles when a checkpoint is being written).
#[derive(Debug)]
pub struct TrainState {
    /// The numbers.
    pub position: Position,
    /// The sum of the unfinished epoch's minibatch losses (scalar Float).
    pub loss_sum: Tensor,
    /// The sum of its gradient norms (scalar Float).
    pub grad_norm_sum: Tensor,
    /// Adam's moments (`None` with SGD).
    pub adam: Option<Moments>,
    /// With validation, the best epoch's parameters (in saved order).
    pub best: Option<Vec<Tensor>>,
    /// In the middle of a consecutive-sampling epoch, the state carried into the next minibatch.
    pub carry: Option<State>,
}

/// Names in the state file: scalars, and prefixes followed by a parameter's name.
const LOSS_SUM: &str = "loss_sum";
const GRAD_NORM_SUM: &str = "grad_norm_sum";
const ADAM_M: &str = "adam.m.";
const ADAM_V: &str = "adam.v.";
const BEST: &str = "best.";
const CARRY_H: &str = "carry.h";
const CARRY_C: &str = "carry.c";

impl TrainState {
    /// A copy that owns its tensors (a snapshot that later training leaves alone).
    pub fn copy(&self) -> TrainState {
        let copies = |ts: &[Tensor]| ts.iter().map(Tensor::copy).collect::<Vec<_>>();
        TrainState {
            position: self.position.clone(),
            loss_sum: self.loss_sum.copy(),
            grad_norm_sum: self.grad_norm_sum.copy(),
            adam: self.adam.as_ref().map(|a| Moments { m: copies(&a.m), v: copies(&a.v) }),
            best: self.best.as_deref().map(copies),
            carry: self.carry.as_ref().map(|c| State { h: c.h.copy(), c: c.c.as_ref().map(Tensor::copy) }),
        }
    }

    /// The tensors by name, for the state file (`names`: the model's parameter names, in saved order):
    /// `loss_sum`, `grad_norm_sum`, `adam.m.<param>`, `adam.v.<param>`, `best.<param>`, `carry.h`, `carry.c`.
    pub fn to_named(&self, names: &[String]) -> Vec<(String, Tensor)> {
        let mut out = vec![
            (LOSS_SUM.to_string(), self.loss_sum.shallow_clone()),
            (GRAD_NORM_SUM.to_string(), self.grad_norm_sum.shallow_clone()),
        ];
        let mut per_param = |prefix: &str, ts: &[Tensor]| {
            out.extend(names.iter().zip(ts).map(|(n, t)| (format!("{prefix}{n}"), t.shallow_clone())));
        };
        if let Some(adam) = &self.adam {
            per_param(ADAM_M, &adam.m);
            per_param(ADAM_V, &adam.v);
        }
        if let Some(best) = &self.best {
            per_param(BEST, best);
        }
        if let Some(carry) = &self.carry {
            out.push((CARRY_H.to_string(), carry.h.shallow_clone()));
            out.extend(carry.c.as_ref().map(|c| (CARRY_C.to_string(), c.shallow_clone())));
        }
        out
    }

    /// The state `tensors` describe for `model` trained with `config` at `position`, moved to the model's
    /// device: each tensor that the position, the optimizer and the sampling call for must be there, Float
    /// and shaped like what it stands for, or [`Error::TrainingState`] names it.
    pub fn from_named(
        position: Position,
        tensors: Vec<(String, Tensor)>,
        model: &Network,
        config: &TrainConfig,
    ) -> Result<TrainState> {
        // Each tensor is checked against the shape it must have, worked out from the model and the settings
        // without allocating it (a model file may claim any batch size).
        let device = model.device();
        let take = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let t = tensors
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, t)| t)
                .ok_or_else(|| Error::TrainingState { reason: format!("it lacks {name}") })?;
            if t.size() != shape || t.kind() != Kind::Float {
                let reason = format!("{name} is {:?} {:?}, expected Float {shape:?}", t.kind(), t.size());
                return Err(Error::TrainingState { reason });
            }
            Ok(t.to_device(device).copy())
        };
        let named = model.named_parameters();
        let per_param = |prefix: &str| -> Result<Vec<Tensor>> {
            named.iter().map(|(n, p)| take(&format!("{prefix}{n}"), &p.size())).collect()
        };
        let adam = match config.optimizer {
            OptimizerKind::Adam => Some(Moments { m: per_param(ADAM_M)?, v: per_param(ADAM_V)? }),
            OptimizerKind::Sgd => None,
        };
        let best = position.best.is_some().then(|| per_param(BEST)).transpose()?;
        let carry = if position.minibatch > 0 && config.batch_order == BatchOrder::Consecutive {
            let arch = &model.config().arch;
            let shape = [arch.layers as i64, config.batch_size.min(i64::MAX as usize) as i64, arch.hidden as i64];
            let c = (arch.cell == Cell::Lstm).then(|| take(CARRY_C, &shape)).transpose()?;
            Some(State { h: take(CARRY_H, &shape)?, c })
        } else {
            None
        };
        Ok(TrainState {
            loss_sum: take(LOSS_SUM, &[])?,
            grad_norm_sum: take(GRAD_NORM_SUM, &[])?,
            position,
            adam,
            best,
            carry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, ModelConfig};
    use tch::Device;

    /// A two-layer LSTM trained with Adam and consecutive sampling, stopped in the middle of epoch 3 with a
    /// best epoch: every kind of tensor a state can hold.
    fn full_state() -> (Network, TrainConfig, TrainState) {
        let arch = Arch { cell: Cell::Lstm, layers: 2, ..Arch::rnn(4) };
        let config = TrainConfig {
            arch,
            batch_size: 3,
            optimizer: OptimizerKind::Adam,
            batch_order: BatchOrder::Consecutive,
            ..Default::default()
        };
        let model = Network::new(ModelConfig::new(5, arch), 1, Device::Cpu).unwrap();
        let randn = |p: &Tensor| Tensor::randn(p.size(), (Kind::Float, Device::Cpu));
        let params = model.parameters();
        let best = BestEpoch { epoch: 2, perplexity: 3.0, val_perplexity: 3.5, minibatch: None };
        let position = Position {
            epoch: 2,
            minibatch: 4,
            shuffle_rng: 9,
            optimizer_step: 40,
            perplexity: Some(3.0),
            val_perplexity: Some(3.5),
            best: Some(best),
            elapsed: 1.5,
            lr_scale: 0.25,
            rollbacks: 2,
        };
        let fresh = model.begin_state(3);
        let state = TrainState {
            position,
            loss_sum: Tensor::from(7.5f32),
            grad_norm_sum: Tensor::from(0.25f32),
            adam: Some(Moments {
                m: params.iter().map(|p| randn(p)).collect(),
                v: params.iter().map(|p| randn(p)).collect(),
            }),
            best: Some(params.iter().map(|p| randn(p)).collect()),
            carry: Some(State { h: randn(&fresh.h), c: fresh.c.as_ref().map(randn) }),
        };
        (model, config, state)
    }

    fn names(model: &Network) -> Vec<String> {
        model.named_parameters().into_iter().map(|(n, _)| n).collect()
    }

    #[test]
    fn the_named_tensors_give_back_the_same_state() {
        let (model, config, state) = full_state();
        let named = state.to_named(&names(&model));
        // 2 sums, 3 × 8 per-parameter tensors (m, v, best: 3 per layer and the output layer's 2), h and c.
        assert_eq!(named.len(), 2 + 3 * 8 + 2);
        let back = TrainState::from_named(state.position.clone(), named, &model, &config).unwrap();
        assert_eq!(back.position, state.position);
        assert!(back.loss_sum.equal(&state.loss_sum) && back.grad_norm_sum.equal(&state.grad_norm_sum));
        let (a, b) = (back.adam.unwrap(), state.adam.as_ref().unwrap());
        for (x, y) in a.m.iter().zip(&b.m).chain(a.v.iter().zip(&b.v)) {
            assert!(x.equal(y));
        }
        for (x, y) in back.best.unwrap().iter().zip(state.best.as_ref().unwrap()) {
            assert!(x.equal(y));
        }
        let (c, d) = (back.carry.unwrap(), state.carry.as_ref().unwrap());
        assert!(c.h.equal(&d.h) && c.c.unwrap().equal(d.c.as_ref().unwrap()));
    }

    #[test]
    fn a_missing_or_misshapen_tensor_is_named() {
        let (model, config, state) = full_state();
        for dropped in ["adam.v.W_hh_l1", "best.b_q", "carry.c", "loss_sum"] {
            let named: Vec<(String, Tensor)> =
                state.to_named(&names(&model)).into_iter().filter(|(n, _)| n != dropped).collect();
            let err = TrainState::from_named(state.position.clone(), named, &model, &config).unwrap_err();
            assert!(matches!(&err, Error::TrainingState { reason } if reason.contains(dropped)), "{dropped}: {err}");
        }
        let named: Vec<(String, Tensor)> = state
            .to_named(&names(&model))
            .into_iter()
            .map(
                |(n, t)| {
                    if n == "adam.m.W_xh" {
                        (n, Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)))
                    } else {
                        (n, t)
                    }
                },
            )
            .collect();
        let err = TrainState::from_named(state.position.clone(), named, &model, &config).unwrap_err().to_string();
        assert!(err.contains("adam.m.W_xh is Float [2, 2]"), "{err}");
        // At an epoch boundary there is no carried state to look for; with SGD no moments.
        let position = Position { minibatch: 0, ..state.position.clone() };
        let sgd = TrainConfig { optimizer: OptimizerKind::Sgd, ..config };
        let named = state
            .to_named(&names(&model))
            .into_iter()
            .filter(|(n, _)| !n.starts_with("carry") && !n.starts_with("adam"));
        let back = TrainState::from_named(position, named.collect(), &model, &sgd).unwrap();
        assert!(back.carry.is_none() && back.adam.is_none() && back.best.is_some());
    }
}
