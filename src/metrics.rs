//! Perplexity and related measures of a model on a text.
use crate::error::{Error, Result};
use crate::model::{cross_entropy, step_major, RnnModel};
use tch::{Device, Kind, Tensor};

/// Perplexity from a mean cross-entropy in nats: `exp(loss)`.
pub fn perplexity(mean_loss: f64) -> f64 {
    mean_loss.exp()
}

/// How well a model predicts a text, each character from all those before it.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Evaluation {
    /// Characters predicted (the text's length minus one).
    pub predictions: usize,
    /// Mean cross-entropy, nats per character.
    pub cross_entropy: f64,
}

impl Evaluation {
    /// `exp(cross_entropy)`.
    pub fn perplexity(&self) -> f64 {
        perplexity(self.cross_entropy)
    }

    /// Cross-entropy in bits per character.
    pub fn bits_per_char(&self) -> f64 {
        self.cross_entropy / std::f64::consts::LN_2
    }
}

/// Characters processed per forward call by [`evaluate`]; the state carries across chunks, so this only
/// trades memory for speed.
const EVAL_CHUNK: usize = 512;

/// Evaluates `model` on `ids` (character indices, at least 2) as one stream from a zero state: the mean
/// cross-entropy of predicting `ids[t + 1]` from `ids[..=t]`, for every t.
pub fn evaluate(model: &RnnModel, ids: &[i64]) -> Result<Evaluation> {
    if ids.len() < 2 {
        return Err(Error::config("--corpus", "needs at least 2 characters to evaluate"));
    }
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let text = Tensor::from_slice(ids).to_device(device);
    let n = ids.len() - 1;
    let total = Tensor::zeros([], (Kind::Double, device));
    let mut h = model.begin_state(1);
    let mut start = 0;
    while start < n {
        let len = EVAL_CHUNK.min(n - start) as i64;
        let x = text.narrow(0, start as i64, len).view([1, len]);
        let y = text.narrow(0, start as i64 + 1, len).view([1, len]);
        let (logits, h_next) = model.forward(&x, &h);
        h = h_next;
        let _ = total.shallow_clone().f_add_(&(cross_entropy(&logits, &step_major(&y)).to_kind(Kind::Double) * len as f64))?;
        start += len as usize;
    }
    let sum = total.to_device(Device::Cpu).double_value(&[]);
    Ok(Evaluation { predictions: n, cross_entropy: sum / n as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    #[test]
    fn a_uniform_model_has_perplexity_equal_to_the_vocabulary_size() {
        let config = ModelConfig { vocab_size: 37, hidden: 8 };
        let zeros = RnnModel::param_shapes(config).map(|s| Tensor::zeros(s.as_slice(), (Kind::Float, Device::Cpu)));
        let model = RnnModel::from_tensors(config, zeros, Device::Cpu).unwrap();
        let ids: Vec<i64> = (0..1500).map(|i| (i * 7 % 37) as i64).collect();
        let e = evaluate(&model, &ids).unwrap();
        assert_eq!(e.predictions, 1499);
        // Float32 logits: log-softmax of equal values is -ln 37 to about 1e-6 relative.
        assert!((e.perplexity() / 37.0 - 1.0).abs() < 1e-5, "{}", e.perplexity());
        assert!((e.bits_per_char() - 37f64.log2()).abs() < 1e-5);
    }

    #[test]
    fn chunking_does_not_change_the_result() {
        let config = ModelConfig { vocab_size: 5, hidden: 6 };
        let model = RnnModel::new(config, 9, Device::Cpu).unwrap();
        let ids: Vec<i64> = (0..EVAL_CHUNK * 2 + 17).map(|i| (i * i % 5) as i64).collect();
        let chunked = evaluate(&model, &ids).unwrap();
        // The same text in one forward pass.
        let _guard = tch::no_grad_guard();
        let n = ids.len() as i64 - 1;
        let t = Tensor::from_slice(&ids);
        let (logits, _) = model.forward(&t.narrow(0, 0, n).view([1, n]), &model.begin_state(1));
        let whole = cross_entropy(&logits, &t.narrow(0, 1, n)).double_value(&[]);
        assert!((chunked.cross_entropy - whole).abs() < 1e-5, "{} vs {whole}", chunked.cross_entropy);
    }

    #[test]
    fn one_character_cannot_be_evaluated() {
        let model = RnnModel::new(ModelConfig { vocab_size: 3, hidden: 2 }, 0, Device::Cpu).unwrap();
        assert!(evaluate(&model, &[1]).is_err());
    }
}
