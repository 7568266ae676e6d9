//! Parameter updates: plain SGD (the textbook's) or Adam, and a step-wise learning-rate decay.
use crate::error::{Error, Result};
use crate::model::{Init, RnnModel};
use tch::{nn, nn::OptimizerConfig, Tensor};

/// Which update rule training uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `p <- p - lr * grad` (the textbook's).
    #[default]
    Sgd,
    /// Adam (Kingma and Ba, 2015) with its usual defaults: betas 0.9 and 0.999, eps 1e-8, no weight decay;
    /// libtorch's implementation, the one `torch.optim.Adam` runs.
    Adam,
}

impl OptimizerKind {
    /// The initialisation used when none is given: the textbook's N(0, 0.01) with its SGD setting (lr 100,
    /// clipping 0.01, tuned for it), PyTorch's uniform with Adam (measured better: see the README).
    pub fn default_init(self) -> Init {
        match self {
            OptimizerKind::Sgd => Init::Normal,
            OptimizerKind::Adam => Init::Uniform,
        }
    }

    /// The learning rate used when none is given: the textbook's 100 for SGD (on the mean loss, with
    /// clipping at 0.01), Adam's customary 0.002.
    pub fn default_lr(self) -> f64 {
        match self {
            OptimizerKind::Sgd => 100.0,
            OptimizerKind::Adam => 0.002,
        }
    }
}

/// Plain SGD: `p <- p - lr * grad`.
pub fn sgd(params: &[&Tensor], lr: f64) {
    let _guard = tch::no_grad_guard();
    for p in params {
        let _ = p.shallow_clone().f_sub_(&(p.grad() * lr));
    }
}

/// An update rule bound to a model's parameters, with its state (Adam's moments).
pub struct Optimizer {
    lr: f64,
    adam: Option<nn::Optimizer>,
}

impl Optimizer {
    /// An optimizer of `kind` over `model`'s parameters at learning rate `lr`.
    pub fn new(kind: OptimizerKind, model: &RnnModel, lr: f64) -> Result<Self> {
        let adam = match kind {
            OptimizerKind::Sgd => None,
            OptimizerKind::Adam => Some(nn::Adam::default().build(model.var_store(), lr).map_err(Error::from)?),
        };
        Ok(Optimizer { lr, adam })
    }

    /// Changes the learning rate from the next step on.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
        if let Some(adam) = &mut self.adam {
            adam.set_lr(lr);
        }
    }

    /// Applies one update to `params` (the model's, whose gradients are already computed and clipped).
    pub fn step(&mut self, params: &[&Tensor]) {
        match &mut self.adam {
            Some(adam) => adam.step(),
            None => sgd(params, self.lr),
        }
    }
}

/// Step-wise learning-rate decay: the rate is multiplied by `factor` every `every` epochs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrDecay {
    /// Multiplier, in (0, 1]; 1 means no decay.
    pub factor: f64,
    /// Epochs between multiplications (at least 1).
    pub every: usize,
}

impl Default for LrDecay {
    fn default() -> Self {
        LrDecay { factor: 1.0, every: 1 }
    }
}

impl LrDecay {
    /// The learning rate for `epoch` (from 1): `base * factor ^ floor((epoch - 1) / every)`.
    pub fn lr_at(&self, base: f64, epoch: usize) -> f64 {
        base * self.factor.powi(((epoch.max(1) - 1) / self.every.max(1)) as i32)
    }

    /// Checks the factor and period.
    pub fn validate(&self) -> Result<()> {
        if !(self.factor > 0.0 && self.factor <= 1.0) {
            return Err(Error::config("--lr-decay", format!("must be above 0 and at most 1, got {}", self.factor)));
        }
        if self.every == 0 {
            return Err(Error::config("--lr-decay-every", "must be at least 1"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_steps_every_n_epochs() {
        let d = LrDecay { factor: 0.5, every: 3 };
        let lrs: Vec<f64> = (1..=7).map(|e| d.lr_at(8.0, e)).collect();
        assert_eq!(lrs, vec![8.0, 8.0, 8.0, 4.0, 4.0, 4.0, 2.0]);
        assert_eq!(LrDecay::default().lr_at(8.0, 100), 8.0);
        assert!(LrDecay { factor: 0.0, every: 1 }.validate().is_err());
        assert!(LrDecay { factor: 1.5, every: 1 }.validate().is_err());
        assert!(LrDecay { factor: 0.9, every: 0 }.validate().is_err());
    }
}
