//! Evaluation: perplexity and related measures of a model on a text.
use crate::data::tokens::Tokens;
use crate::error::{Error, Result};
use crate::model::dropout::Dropout;
use crate::model::network::Network;
use crate::model::ops::step_major;
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

/// Positions (rows x steps) scored per forward call by [`evaluate`] at most; the state carries across calls,
/// so this bounds memory without changing the result.
const EVAL_POSITIONS: usize = 16_384;

/// Logits (positions x V floats) computed per forward call at most: 64 MiB, so that a large vocabulary
/// scores fewer positions per call instead of needing more memory (16,384 positions of a 65,536-character
/// vocabulary would be 4.3 GB).
const EVAL_LOGITS: usize = 1 << 24;

/// Positions per forward call for a vocabulary of `vocab` characters.
fn positions_per_call(vocab: usize) -> usize {
    (EVAL_LOGITS / vocab.max(1)).clamp(1, EVAL_POSITIONS)
}

/// Evaluates `model` on `ids` (character indices, at least 2): the mean cross-entropy of predicting
/// `ids[t + 1]` from the characters before it, for every t.
///
/// The text is cut into windows of `context` characters, each read from a zero state, the way the model
/// saw text in training (see [`crate::TrainConfig::eval_context`]); `context >= ids.len() - 1` reads the
/// whole text as one stream. Windows are scored side by side as a batch, a bounded number of positions at a
/// time, each copied out of `ids` when it is scored (so a memory-mapped corpus is never read whole).
pub fn evaluate<'a>(model: &Network, ids: impl Into<Tokens<'a>>, context: usize) -> Result<Evaluation> {
    evaluate_with_progress(model, ids.into(), context, &mut |_, _| {})
}

/// [`evaluate`], calling `progress(done, total)` with the predictions scored so far after each forward call
/// (for a progress bar on a long text).
pub fn evaluate_with_progress(
    model: &Network,
    ids: Tokens<'_>,
    context: usize,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Evaluation> {
    if ids.len() < 2 {
        return Err(Error::config("--corpus", "needs at least 2 characters to evaluate"));
    }
    if context == 0 {
        return Err(Error::config("context", "must be at least 1"));
    }
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let n = ids.len() - 1;
    let w = context.min(n);
    let total = Tensor::zeros([], (Kind::Double, device));
    // Full windows, `rows` at a time, then the shorter last window on its own.
    let full = n / w;
    let positions = positions_per_call(model.config().vocab_size);
    let rows_per_call = (positions / w.min(positions)).max(1);
    let mut windows: Vec<(usize, usize, usize)> =
        (0..full).step_by(rows_per_call).map(|r| (r * w, (full - r).min(rows_per_call), w)).collect();
    if !n.is_multiple_of(w) {
        windows.push((full * w, 1, n % w));
    }
    let mut done = 0;
    for (start, rows, len) in windows {
        // Steps t..t + k of the `rows` windows from `start`, shifted by `shift`: Int64 `[rows, k]`.
        let chunk = |t: usize, k: usize, shift: usize| {
            let mut v = Vec::with_capacity(rows * k);
            for r in 0..rows {
                ids.slice(start + r * len + t + shift, k).extend_into(&mut v);
            }
            Tensor::from_slice(&v).view([rows as i64, k as i64]).to_device(device)
        };
        let mut h = model.begin_state(rows);
        // Long single streams run faster in moderate chunks (measured: 512 steps beat 10,000 in one call).
        let steps_per_call = (positions / rows).clamp(1, 512);
        for t in (0..len).step_by(steps_per_call) {
            let k = steps_per_call.min(len - t);
            let (hs, h_next) = model.hidden_states(&chunk(t, k, 0), &h, Dropout::Off);
            h = h_next;
            let _ = total.shallow_clone().f_add_(&model.summed_cross_entropy(&hs, &step_major(&chunk(t, k, 1))))?;
            done += rows * k;
            progress(done, n);
        }
    }
    let sum = total.to_device(Device::Cpu).double_value(&[]);
    Ok(Evaluation { predictions: n, cross_entropy: sum / n as f64 })
}

/// Pieces of the text that [`evaluate_sample`] scores, spread over it.
const SAMPLE_PIECES: usize = 8;

/// Like [`evaluate`], but scoring at most about `max_chars` characters of `ids` when it is longer: equal
/// pieces from the starts of equal parts of the text (`SAMPLE_PIECES` of them), each evaluated on its own (its
/// windows from a zero state), their cross-entropies combined by their numbers of predictions. `None`, or a
/// text no longer than `max_chars`, scores the whole text.
pub fn evaluate_sample<'a>(
    model: &Network,
    ids: impl Into<Tokens<'a>>,
    context: usize,
    max_chars: Option<usize>,
) -> Result<Evaluation> {
    let ids = ids.into();
    let Some(max) = max_chars.filter(|&m| m < ids.len()) else { return evaluate(model, ids, context) };
    let pieces = SAMPLE_PIECES.min(max / 2).max(1);
    let (part, piece) = (ids.len() / pieces, (max / pieces).max(2));
    let (mut predictions, mut total) = (0, 0.0);
    for p in 0..pieces {
        let e = evaluate(model, ids.slice(p * part, piece.min(part)), context)?;
        predictions += e.predictions;
        total += e.cross_entropy * e.predictions as f64;
    }
    Ok(Evaluation { predictions, cross_entropy: total / predictions as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, ModelConfig};
    use crate::model::ops::cross_entropy;

    #[test]
    fn a_uniform_model_has_perplexity_equal_to_the_vocabulary_size() {
        let config = ModelConfig::rnn(37, 8);
        let model = Network::zeros(config, Device::Cpu).unwrap();
        let ids: Vec<i64> = (0..1500).map(|i| (i * 7 % 37) as i64).collect();
        let e = evaluate(&model, &ids, 35).unwrap();
        assert_eq!(e.predictions, 1499);
        // Float32 logits: log-softmax of equal values is -ln 37 to about 1e-6 relative.
        assert!((e.perplexity() / 37.0 - 1.0).abs() < 1e-5, "{}", e.perplexity());
        assert!((e.bits_per_char() - 37f64.log2()).abs() < 1e-5);
    }

    /// Cross-entropy summed over `ids` read from a zero state in one forward pass: the reference.
    fn one_pass_sum(model: &Network, ids: &[i64]) -> f64 {
        let n = ids.len() as i64 - 1;
        let t = Tensor::from_slice(ids);
        let (logits, _) = model.forward(&t.narrow(0, 0, n).view([1, n]), &model.begin_state(1), Dropout::Off);
        cross_entropy(&logits, &t.narrow(0, 1, n)).double_value(&[]) * n as f64
    }

    #[test]
    fn one_stream_equals_a_single_pass_despite_chunking() {
        // Weights 50x the textbook's, so that the state carries enough that restarting it at a chunk's start
        // would show (with the textbook's 0.01-scale weights it moves the mean by about 1e-8).
        let config = ModelConfig::rnn(5, 6);
        let small = Network::new(config, 9, Device::Cpu).unwrap();
        let model =
            Network::from_tensors(config, small.parameters().iter().map(|p| p.detach() * 50.0).collect(), Device::Cpu)
                .unwrap();
        let ids: Vec<i64> = (0..EVAL_POSITIONS * 2 + 17).map(|i| (i * i % 5) as i64).collect();
        let stream = evaluate(&model, &ids, usize::MAX).unwrap();
        let _guard = tch::no_grad_guard();
        let whole = one_pass_sum(&model, &ids) / (ids.len() - 1) as f64;
        // The same float32 losses, each good to about 1e-6 relative, averaged in double here and by
        // libtorch's float32 mean there (pairwise: about log2(32,785) x 6e-8 = 1e-6 relative).
        assert!((stream.cross_entropy - whole).abs() < 1e-5 * whole, "{} vs {whole}", stream.cross_entropy);
    }

    #[test]
    fn windows_are_read_from_a_zero_state_each() {
        // Weights 50x the textbook's, so that the state carries enough to tell windows from one stream.
        let config = ModelConfig::rnn(5, 6);
        let small = Network::new(config, 9, Device::Cpu).unwrap();
        let scaled = small.parameters().into_iter().map(|p| p.detach() * 50.0).collect();
        let model = Network::from_tensors(config, scaled, Device::Cpu).unwrap();
        let ids: Vec<i64> = (0..103).map(|i| (i * 3 % 5) as i64).collect();
        let windowed = evaluate(&model, &ids, 10).unwrap();
        // Windows of 10 targets: ids[10k ..= 10k + 10], the last one with the 2 that remain.
        let _guard = tch::no_grad_guard();
        let sum: f64 = (0..11).map(|k| one_pass_sum(&model, &ids[10 * k..(10 * k + 11).min(103)])).sum();
        assert!((windowed.cross_entropy - sum / 102.0).abs() < 1e-5, "{} vs {}", windowed.cross_entropy, sum / 102.0);
        let stream = evaluate(&model, &ids, usize::MAX).unwrap();
        assert!((windowed.cross_entropy - stream.cross_entropy).abs() > 1e-4, "windows must differ from one stream");
    }

    #[test]
    fn logits_per_call_stay_bounded_for_any_vocabulary() {
        for vocab in [1, 30, 1027, 65_536, 70_000, 1 << 20, 1 << 30] {
            let p = positions_per_call(vocab);
            assert!((1..=EVAL_POSITIONS).contains(&p), "{vocab}: {p}");
            assert!(p == 1 || p * vocab <= EVAL_LOGITS, "{vocab}: {p} positions of {vocab} logits");
        }
        assert_eq!(positions_per_call(30), EVAL_POSITIONS, "small vocabularies keep the full chunk");
        // A vocabulary beyond 16 bits, evaluated in several calls: a uniform model scores ln V exactly.
        let vocab = 70_000;
        let model = Network::zeros(ModelConfig::rnn(vocab, 2), Device::Cpu).unwrap();
        let ids: Vec<i64> = (0..700).map(|i| (i * 997 % vocab) as i64).collect();
        let e = evaluate(&model, &ids, usize::MAX).unwrap();
        assert!(positions_per_call(vocab) < 699, "the text must take several calls");
        assert!((e.cross_entropy / (vocab as f64).ln() - 1.0).abs() < 1e-5, "{}", e.perplexity());
    }

    #[test]
    fn evaluation_has_no_dropout() {
        // In one process the dropout masks would change from call to call.
        let model =
            Network::new(ModelConfig::new(5, Arch { dropout: 0.5, layers: 2, ..Arch::rnn(16) }), 1, Device::Cpu)
                .unwrap();
        let scaled: Vec<Tensor> = model.parameters().into_iter().map(|p| p.detach() * 50.0).collect();
        model.set_parameters(&scaled).unwrap();
        let ids: Vec<i64> = (0..200).map(|i| (i * 3 % 5) as i64).collect();
        assert_eq!(evaluate(&model, &ids, 10).unwrap(), evaluate(&model, &ids, 10).unwrap());
    }

    #[test]
    fn a_sample_scores_pieces_spread_over_the_text() {
        let model = Network::new(ModelConfig::rnn(5, 6), 9, Device::Cpu).unwrap();
        let ids: Vec<i64> = (0..1000).map(|i| (i * 7 % 5) as i64).collect();
        // Long enough or no limit: the whole text.
        for max in [None, Some(1000), Some(5000)] {
            assert_eq!(evaluate_sample(&model, &ids, 10, max).unwrap(), evaluate(&model, &ids, 10).unwrap());
        }
        // 160 characters: 20 from the start of each eighth (125 characters), worked out here piece by piece.
        let sample = evaluate_sample(&model, &ids, 10, Some(160)).unwrap();
        let pieces: Vec<Evaluation> =
            (0..8).map(|p| evaluate(&model, &ids[p * 125..p * 125 + 20], 10).unwrap()).collect();
        let n: usize = pieces.iter().map(|e| e.predictions).sum();
        let ce = pieces.iter().map(|e| e.cross_entropy * e.predictions as f64).sum::<f64>() / n as f64;
        assert_eq!(sample.predictions, 8 * 19);
        assert!((sample.cross_entropy - ce).abs() < 1e-12, "{} vs {ce}", sample.cross_entropy);
    }

    #[test]
    fn progress_counts_every_prediction_once() {
        let model = Network::new(ModelConfig::rnn(5, 6), 9, Device::Cpu).unwrap();
        let ids: Vec<i64> = (0..EVAL_POSITIONS * 2 + 17).map(|i| (i * 3 % 5) as i64).collect();
        for context in [35, usize::MAX] {
            let mut seen = Vec::new();
            evaluate_with_progress(&model, (&ids).into(), context, &mut |done, total| seen.push((done, total)))
                .unwrap();
            let n = ids.len() - 1;
            assert!(seen.len() > 1 && seen.windows(2).all(|w| w[0].0 < w[1].0), "{seen:?}");
            assert_eq!(*seen.last().unwrap(), (n, n));
        }
    }

    #[test]
    fn one_character_cannot_be_evaluated() {
        let model = Network::new(ModelConfig::rnn(3, 2), 0, Device::Cpu).unwrap();
        assert!(evaluate(&model, &[1], 35).is_err());
    }
}
