//! Prefix-conditioned greedy prediction.
use crate::corpus::Vocabulary;
use crate::error::{Error, Result};
use crate::model::RnnModel;
use tch::Tensor;

/// Warms the state up over `prefix`, then generates `num_chars` characters greedily (argmax at each step).
///
/// Returns the prefix followed by the generated characters. Runs without gradient tracking and reads back
/// from the device once, at the end.
pub fn predict(model: &RnnModel, vocab: &Vocabulary, prefix: &str, num_chars: usize) -> Result<String> {
    if prefix.is_empty() {
        return Err(Error::config("--prefix", "must not be empty"));
    }
    let ids = vocab.encode(prefix, "the prefix")?;
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let mut state = model.begin_state(1);
    let warm_up = &ids[..ids.len() - 1];
    if !warm_up.is_empty() {
        let x = Tensor::from_slice(warm_up).to_device(device).view([1, -1]);
        state = model.forward(&x, &state, false).1;
    }
    let mut x = Tensor::from_slice(&ids[ids.len() - 1..]).to_device(device);
    let mut generated = Vec::new();
    for _ in 0..num_chars {
        let (y, next) = model.step(&x, &state);
        state = next;
        x = y.argmax(1, false);
        generated.push(x.shallow_clone());
    }
    let mut out = prefix.to_string();
    if !generated.is_empty() {
        let ids = Vec::<i64>::try_from(Tensor::cat(&generated, 0).to_device(tch::Device::Cpu))?;
        out.push_str(&vocab.decode(&ids));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use tch::Device;

    fn setup() -> (RnnModel, Vocabulary) {
        let vocab = Vocabulary::from_text("abcdef");
        let model = RnnModel::new(ModelConfig::rnn(6, 8), 3, Device::Cpu).unwrap();
        (model, vocab)
    }

    #[test]
    fn prediction_is_prefix_plus_n_and_deterministic() {
        let (model, vocab) = setup();
        let a = predict(&model, &vocab, "ab", 10).unwrap();
        assert!(a.starts_with("ab"));
        assert_eq!(a.chars().count(), 12);
        assert_eq!(predict(&model, &vocab, "ab", 10).unwrap(), a);
        assert_eq!(predict(&model, &vocab, "ab", 0).unwrap(), "ab");
    }

    #[test]
    fn prediction_follows_the_argmax_of_each_step() {
        let (model, vocab) = setup();
        let out = predict(&model, &vocab, "ca", 4).unwrap();
        let ids = vocab.encode(&out, "t").unwrap();
        let _guard = tch::no_grad_guard();
        let mut h = model.begin_state(1);
        for t in 0..ids.len() - 1 {
            let (y, h1) = model.step(&Tensor::from_slice(&[ids[t]]), &h);
            h = h1;
            if t >= 1 {
                assert_eq!(y.argmax(1, false).int64_value(&[0]), ids[t + 1], "position {}", t + 1);
            }
        }
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        let (model, vocab) = setup();
        assert!(predict(&model, &vocab, "", 3).unwrap_err().to_string().contains("--prefix"));
        let err = predict(&model, &vocab, "az", 3).unwrap_err().to_string();
        assert!(err.contains("'z'"), "{err}");
    }
}
