//! The learning rate over a run: a step-wise decay of the configured rate.
use crate::error::{Error, Result};

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

    /// This decay with the factor and the period replaced where given.
    pub fn with(self, factor: Option<f64>, every: Option<usize>) -> LrDecay {
        LrDecay { factor: factor.unwrap_or(self.factor), every: every.unwrap_or(self.every) }
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
        assert_eq!(d.with(None, Some(2)), LrDecay { factor: 0.5, every: 2 });
        assert_eq!(d.with(Some(0.9), None), LrDecay { factor: 0.9, every: 3 });
        assert!(LrDecay { factor: 0.0, every: 1 }.validate().is_err());
        assert!(LrDecay { factor: 1.5, every: 1 }.validate().is_err());
        assert!(LrDecay { factor: 0.9, every: 0 }.validate().is_err());
    }
}
