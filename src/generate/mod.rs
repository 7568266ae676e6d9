//! The generate layer: prefix-conditioned generation, greedy (the textbook's) or sampled with a temperature,
//! top-k and top-p, several samples at once, stopping early at a string, streamed as it is produced, or a
//! beam search for the most likely continuations. `predict` and `serve` both call it.
pub(crate) mod batch;
pub(crate) mod beam;
pub(crate) mod options;
pub(crate) mod sampler;

use crate::data::vocab::Vocabulary;
use crate::error::Result;
use crate::generate::batch::generate_batch;
use crate::generate::beam::beam_search;
use crate::generate::options::{Generate, Generated};
use crate::model::network::Network;
use std::ops::ControlFlow;

/// Warms the state up over `prefix` (not empty, every character in `vocab`), then generates
/// `options.samples` continuations of up to `options.num_chars` characters, one forward step per character
/// for all samples together, or with `options.beam` the most likely continuations ([`beam_search`]).
/// `on_char(i, c)` is called for each character `c` of sample `i` as soon as it is chosen (a beam search's
/// once it ends); when it returns `Break`, generation stops there and the samples so far are returned.
/// `keep_going()` is asked before each character is chosen and before each step of a beam search: `Break`
/// (Ctrl-C, a client that went away, a shutdown) stops generation the same way, beam searches included.
///
/// Sample `i` draws from its own generator seeded with `sampler.seed + i`, and the warm-up runs once for
/// all samples, so a batch of N gives the texts of N single runs with seeds `seed .. seed + N` (up to the
/// rounding of a batched matrix product, which can differ from a single row's in the last bit).
pub fn generate_until(
    model: &Network,
    vocab: &Vocabulary,
    prefix: &str,
    options: &Generate,
    on_char: &mut dyn FnMut(usize, char) -> ControlFlow<()>,
    keep_going: &mut dyn FnMut() -> ControlFlow<()>,
) -> Result<Vec<Generated>> {
    options.validate()?;
    if options.beam > 0 {
        let stop = options.stop.as_deref();
        let beams = beam_search(model, vocab, prefix, options.num_chars, options.beam, stop, keep_going)?;
        for (i, b) in beams.iter().enumerate() {
            for c in b.generated.chars() {
                if on_char(i, c).is_break() {
                    return Ok(beams);
                }
            }
        }
        return Ok(beams);
    }
    let mut samples = generate_batch(
        model,
        vocab,
        &[(prefix, options)],
        &mut |_, i, c| {
            keep_going()?;
            on_char(i, c)
        },
        &mut |_, _| {},
    )?;
    Ok(samples.remove(0))
}

/// [`generate_until`] to the end: `on_char(i, c)` sees each character `c` of sample `i` as it is chosen.
pub fn generate(
    model: &Network,
    vocab: &Vocabulary,
    prefix: &str,
    options: &Generate,
    on_char: &mut dyn FnMut(usize, char),
) -> Result<Vec<Generated>> {
    let on_char = &mut |i, c| {
        on_char(i, c);
        ControlFlow::Continue(())
    };
    generate_until(model, vocab, prefix, options, on_char, &mut || ControlFlow::Continue(()))
}

/// Warms the state up over `prefix`, then generates `num_chars` characters greedily (argmax at each step).
/// Returns the prefix followed by the generated characters.
pub fn predict(model: &Network, vocab: &Vocabulary, prefix: &str, num_chars: usize) -> Result<String> {
    let options = Generate { num_chars, samples: 1, ..Default::default() };
    Ok(generate(model, vocab, prefix, &options, &mut |_, _| {})?.remove(0).text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::sampler::Sampler;
    use crate::model::config::{Arch, ModelConfig};
    use tch::{Device, Kind, Tensor};

    fn setup() -> (Network, Vocabulary) {
        let vocab = Vocabulary::from_text("abcdef");
        let model = Network::new(ModelConfig::rnn(6, 8), 3, Device::Cpu).unwrap();
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

    /// A one-hot rnn over "abcdef" that, after reading character i, gives its highest logit to character
    /// `(i + 2) mod 6`: W_xh = 5 I (so h = tanh(5) e_i, the state's one-hot copy of the input), W_hh = 0,
    /// W_hq = 10 P with P the shift by two.
    fn shift_by_two() -> (Network, Vocabulary) {
        let eye = Tensor::eye(6, (Kind::Float, Device::Cpu));
        let shift = eye.roll([2], [1]);
        let zeros = || Tensor::zeros([6], (Kind::Float, Device::Cpu));
        let params = vec![&eye * 5.0, eye.zeros_like(), zeros(), shift * 10.0, zeros()];
        (Network::from_tensors(ModelConfig::rnn(6, 6), params, Device::Cpu).unwrap(), Vocabulary::from_text("abcdef"))
    }

    #[test]
    fn prediction_feeds_each_chosen_character_back() {
        let (model, vocab) = shift_by_two();
        // Worked by hand: after "ca" comes a + 2 = c, then e, a, c, e.
        assert_eq!(predict(&model, &vocab, "ca", 5).unwrap(), "caceace");
        // The whole prefix is read: its last character decides the first one generated.
        assert_eq!(predict(&model, &vocab, "ac", 3).unwrap(), "aceac");
        let options = Generate { num_chars: 3, samples: 1, probs: true, ..Default::default() };
        let probs = &generate(&model, &vocab, "f", &options, &mut |_, _| {}).unwrap()[0].probs;
        // Each step's logits are 10 tanh(5) for the chosen character and 0 for the five others.
        let top = 10.0 * 5f64.tanh();
        let expected = top.exp() / (top.exp() + 5.0);
        assert!(probs.iter().all(|p| (p - expected).abs() < 1e-5), "{probs:?} vs {expected}");
    }

    #[test]
    fn generation_has_no_dropout() {
        // In one process the dropout masks would change from call to call.
        let vocab = Vocabulary::from_text("abcdef");
        let model =
            Network::new(ModelConfig::new(6, Arch { dropout: 0.5, layers: 2, ..Arch::rnn(16) }), 1, Device::Cpu)
                .unwrap();
        let scaled: Vec<Tensor> = model.parameters().into_iter().map(|p| p.detach() * 50.0).collect();
        model.set_parameters(&scaled).unwrap();
        let options = Generate { num_chars: 20, samples: 2, probs: true, ..Default::default() };
        let a = generate(&model, &vocab, "ab", &options, &mut |_, _| {}).unwrap();
        assert_eq!(a, generate(&model, &vocab, "ab", &options, &mut |_, _| {}).unwrap());
        // Two greedy rows of one batch: the same text, and probabilities that differ at most in float32's last
        // digits (a BLAS may round the rows of one product differently), where masks would change them by 1e-2.
        assert_eq!(a[0].text, a[1].text);
        assert!(a[0].probs.iter().zip(&a[1].probs).all(|(p, q)| (p - q).abs() < 1e-5), "{:?} vs {:?}", a[0], a[1]);
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        let (model, vocab) = setup();
        assert!(predict(&model, &vocab, "", 3).unwrap_err().to_string().contains("--prefix"));
        let err = predict(&model, &vocab, "az", 3).unwrap_err().to_string();
        assert!(err.contains("'z'"), "{err}");
    }

    #[test]
    fn seeded_samples_repeat_and_a_batch_equals_single_runs() {
        let (model, vocab) = setup();
        let sampler = Sampler { temperature: 1.0, seed: 40, ..Default::default() };
        let batch = Generate { num_chars: 30, samples: 4, stop: None, sampler, probs: true, beam: 0 };
        let a = generate(&model, &vocab, "ab", &batch, &mut |_, _| {}).unwrap();
        assert_eq!(generate(&model, &vocab, "ab", &batch, &mut |_, _| {}).unwrap(), a);
        assert!(a.iter().any(|s| s.text != a[0].text), "different seeds give different samples");
        for (i, s) in a.iter().enumerate() {
            let one = Generate { samples: 1, sampler: Sampler { seed: 40 + i as u64, ..sampler }, ..batch.clone() };
            let single = generate(&model, &vocab, "ab", &one, &mut |_, _| {}).unwrap().remove(0);
            assert_eq!(single.text, s.text, "sample {i}");
            for (p, q) in single.probs.iter().zip(&s.probs) {
                assert!((p - q).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn samples_stop_at_the_stop_string_and_stream_what_they_keep() {
        let (model, vocab) = setup();
        let sampler = Sampler { temperature: 2.0, seed: 1, ..Default::default() };
        let options = Generate { num_chars: 200, samples: 3, stop: Some("a".into()), sampler, probs: true, beam: 0 };
        let mut streamed = vec![String::new(); 3];
        let out = generate(&model, &vocab, "b", &options, &mut |i, c| streamed[i].push(c)).unwrap();
        for (s, seen) in out.iter().zip(&streamed) {
            assert_eq!(&s.generated, seen);
            assert_eq!(s.text, format!("b{}", s.generated));
            assert_eq!(s.probs.len(), s.generated.chars().count());
            assert!(s.probs.iter().all(|p| *p > 0.0 && *p <= 1.0));
            if s.stopped {
                assert!(s.generated.ends_with('a') && s.generated.matches('a').count() == 1, "{}", s.generated);
            } else {
                assert_eq!(s.generated.chars().count(), 200);
            }
        }
        assert!(out.iter().any(|s| s.stopped));
        // Without probs: the same texts, no probabilities.
        let plain =
            generate(&model, &vocab, "b", &Generate { probs: false, ..options.clone() }, &mut |_, _| {}).unwrap();
        for (p, s) in plain.iter().zip(&out) {
            assert_eq!((&p.text, p.probs.len()), (&s.text, 0));
        }
        assert!(generate(&model, &vocab, "b", &Generate { samples: 0, ..options.clone() }, &mut |_, _| {}).is_err());
        let bad = Sampler { top_p: 0.0, ..sampler };
        assert!(generate(&model, &vocab, "b", &Generate { sampler: bad, ..options }, &mut |_, _| {})
            .unwrap_err()
            .to_string()
            .contains("--top-p"));
    }
}
