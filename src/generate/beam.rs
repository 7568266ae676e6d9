//! Beam search: the most likely continuations of a prefix by total log probability, rather than greedy's
//! most likely character at each step or a sample's random one.
use crate::data::vocab::Vocabulary;
use crate::error::Result;
use crate::generate::options::{check_beam, prefix_ids, Generated, MAX_BEAM};
use crate::model::network::Network;
use crate::model::ops::logsumexp;
use std::ops::ControlFlow;
use tch::{Device, Kind, Tensor};

/// One continuation being extended.
#[derive(Debug, Clone)]
struct Hypothesis {
    /// The generated characters' indices.
    ids: Vec<usize>,
    /// `sum ln p(c_t | prefix, c_<t)` over them (natural log, temperature 1).
    log_prob: f64,
    /// Each generated character's probability.
    probs: Vec<f64>,
    /// Whether it ends with the stop string (then it is not extended).
    stopped: bool,
}

/// A candidate extension: `log_prob` of hypothesis `parent` followed by character `c`.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    log_prob: f64,
    parent: usize,
    c: usize,
    p: f64,
}

/// Most likely first; ties go to the earlier parent, then to the lower character index (so that a beam of
/// 1 picks what greedy's argmax picks).
fn better(a: &Candidate, b: &Candidate) -> std::cmp::Ordering {
    b.log_prob.total_cmp(&a.log_prob).then(a.parent.cmp(&b.parent)).then(a.c.cmp(&b.c))
}

/// The `beam` most likely continuations of `prefix` of `num_chars` characters, most likely first, each
/// with its total log probability ([`Generated::log_prob`]) and its characters' probabilities. A
/// continuation that produces `stop` ends there, and competes with the full-length ones by its own total.
/// Fewer than `beam` come back when fewer continuations exist (`V^num_chars < beam`).
///
/// Each step runs the model once over all live hypotheses (`[beam]` characters, state `[L, beam, H]`),
/// scores every extension `log_prob + ln softmax(y)[c]` in f64 on the host and keeps the `beam` best.
/// `beam` 1 is greedy generation, character for character. With `beam >= V^(num_chars - 1)` the search
/// is exhaustive, so its first continuation is the most likely of all.
///
/// `keep_going()` is asked before each step; when it returns `Break` (a client that went away, a shutdown,
/// Ctrl-C) the search ends there and returns the best continuations found so far, ranked the same way.
pub fn beam_search(
    model: &Network,
    vocab: &Vocabulary,
    prefix: &str,
    num_chars: usize,
    beam: usize,
    stop: Option<&str>,
    keep_going: &mut dyn FnMut() -> ControlFlow<()>,
) -> Result<Vec<Generated>> {
    check_beam(beam, MAX_BEAM)?;
    let ids = prefix_ids(vocab, prefix)?;
    let last = ids[ids.len() - 1];
    let _guard = tch::no_grad_guard();
    let device = model.device();
    let mut state = model.state_after(&ids[..ids.len() - 1]);
    let start = Hypothesis { ids: Vec::new(), log_prob: 0.0, probs: Vec::new(), stopped: false };
    let (mut live, mut finished) = (vec![start], Vec::new());
    let mut inputs = vec![last];
    let v = vocab.len();
    for _ in 0..num_chars {
        if keep_going().is_break() {
            break;
        }
        let x = Tensor::from_slice(&inputs).to_device(device);
        let (y, next) = model.step(&x, &state);
        let logits = Vec::<f32>::try_from(y.to_device(Device::Cpu).to_kind(Kind::Float).reshape([-1]))?;
        let mut candidates = Vec::with_capacity(live.len() * v);
        for (parent, h) in live.iter().enumerate() {
            let row = &logits[parent * v..(parent + 1) * v];
            let lse = logsumexp(row);
            candidates.extend(row.iter().enumerate().map(|(c, &l)| Candidate {
                log_prob: h.log_prob + (l as f64 - lse),
                parent,
                c,
                p: (l as f64 - lse).exp(),
            }));
        }
        if candidates.len() > beam {
            candidates.select_nth_unstable_by(beam - 1, better);
            candidates.truncate(beam);
        }
        candidates.sort_unstable_by(better);
        let mut parents = Vec::with_capacity(candidates.len());
        let mut extended = Vec::with_capacity(candidates.len());
        for k in candidates {
            let mut h = live[k.parent].clone();
            h.ids.push(k.c);
            h.log_prob = k.log_prob;
            h.probs.push(k.p);
            h.stopped = stop.is_some_and(|s| ends_with(&h.ids, vocab, s));
            if h.stopped {
                finished.push(h);
            } else {
                parents.push(k.parent as i64);
                extended.push(h);
            }
        }
        live = extended;
        // A live hypothesis only loses probability as it grows: once `beam` finished ones are at least as
        // likely as the best live one, nothing live can enter the result.
        finished.sort_by(|a, b| b.log_prob.total_cmp(&a.log_prob));
        finished.truncate(beam);
        let settled = finished.len() == beam && live.first().is_none_or(|h| finished[beam - 1].log_prob >= h.log_prob);
        if live.is_empty() || settled {
            live.clear();
            break;
        }
        state = next.rows(&parents);
        inputs = live.iter().map(|h| *h.ids.last().expect("a live hypothesis has a character") as i64).collect();
    }
    // Stable: a finished hypothesis ranks before a live one of the same total (it was found first).
    let mut all: Vec<Hypothesis> = finished.into_iter().chain(live).collect();
    all.sort_by(|a, b| b.log_prob.total_cmp(&a.log_prob));
    all.truncate(beam);
    Ok(all
        .into_iter()
        .map(|h| {
            let generated: String = h.ids.iter().map(|&c| vocab.chars()[c]).collect();
            Generated {
                text: format!("{prefix}{generated}"),
                generated,
                probs: h.probs,
                stopped: h.stopped,
                log_prob: Some(h.log_prob),
            }
        })
        .collect())
}

/// Whether the characters `ids` end with `stop`.
fn ends_with(ids: &[usize], vocab: &Vocabulary, stop: &str) -> bool {
    let n = stop.chars().count();
    n <= ids.len() && ids[ids.len() - n..].iter().map(|&c| vocab.chars()[c]).eq(stop.chars())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::predict;
    use crate::model::config::ModelConfig;
    use crate::model::dropout::Dropout;

    /// A textbook RNN over the characters "abcde" with weights 40 times the initialisation's, so that the
    /// distributions are far from uniform and differ from step to step.
    fn peaked(seed: u64) -> (Network, Vocabulary) {
        let vocab = Vocabulary::from_text("abcde");
        let model = Network::new(ModelConfig::rnn(vocab.len(), 8), seed, Device::Cpu).unwrap();
        let scaled: Vec<Tensor> = model.parameters().into_iter().map(|p| p.detach() * 40.0).collect();
        model.set_parameters(&scaled).unwrap();
        (model, vocab)
    }

    /// ln p(continuation | prefix) from one forward pass over the whole text (not the step function).
    fn log_prob(model: &Network, vocab: &Vocabulary, prefix: &str, continuation: &str) -> f64 {
        let _guard = tch::no_grad_guard();
        let ids = vocab.encode(&format!("{prefix}{continuation}"), "text").unwrap();
        let n = ids.len() as i64;
        let x = Tensor::from_slice(&ids[..ids.len() - 1]).view([1, n - 1]);
        let (logits, _) = model.forward(&x, &model.begin_state(1), Dropout::Off);
        let log_softmax = logits.to_kind(Kind::Double).log_softmax(1, Kind::Double);
        let p = prefix.chars().count();
        (0..continuation.chars().count()).map(|j| log_softmax.double_value(&[(p - 1 + j) as i64, ids[p + j]])).sum()
    }

    /// Every continuation of `len` characters over "abcde", cut after the first `stop` if given, with its
    /// log probability, most likely first (ties by text).
    fn brute_force(
        model: &Network,
        vocab: &Vocabulary,
        prefix: &str,
        len: u32,
        stop: Option<&str>,
    ) -> Vec<(String, f64)> {
        let mut texts: Vec<String> = (0..5usize.pow(len))
            .map(|mut k| {
                let mut s = String::new();
                for _ in 0..len {
                    s.push(b"abcde"[k % 5] as char);
                    k /= 5;
                }
                match stop.and_then(|st| s.find(st).map(|i| i + st.len())) {
                    Some(end) => s[..end].to_string(),
                    None => s,
                }
            })
            .collect();
        texts.sort();
        texts.dedup();
        let mut scored: Vec<(String, f64)> =
            texts.into_iter().map(|t| (t.clone(), log_prob(model, vocab, prefix, &t))).collect();
        scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scored
    }

    #[test]
    fn a_wide_beam_finds_what_a_search_of_every_continuation_finds() {
        // A beam of 25 = 5^2 keeps every 2-character continuation, so at length 3 it scores all 125.
        let mut greedy_was_beaten = 0;
        for seed in 0..20 {
            let (model, vocab) = peaked(seed);
            let all = brute_force(&model, &vocab, "ab", 3, None);
            let beams = beam_search(&model, &vocab, "ab", 3, 25, None, &mut || ControlFlow::Continue(())).unwrap();
            assert_eq!(beams.len(), 25);
            for (b, (text, lp)) in beams.iter().zip(&all) {
                // Float32 logits through two paths (one step at a time, one pass), summed over 3 characters.
                assert!((b.log_prob.unwrap() - lp).abs() < 1e-4, "seed {seed}: {b:?} vs {text} {lp}");
                assert_eq!(b.text, format!("ab{text}"), "seed {seed}: rank of {lp}");
                assert!(b.log_prob.unwrap() <= 0.0);
            }
            let greedy = predict(&model, &vocab, "ab", 3).unwrap();
            let greedy_lp = log_prob(&model, &vocab, "ab", &greedy[2..]);
            if greedy_lp < all[0].1 - 1e-3 {
                greedy_was_beaten += 1;
            }
        }
        assert!(greedy_was_beaten > 0, "some of these models must have a best continuation greedy misses");
    }

    #[test]
    fn a_beam_of_one_is_greedy() {
        for seed in 0..10 {
            let (model, vocab) = peaked(seed);
            for prefix in ["a", "dcb"] {
                let beam = beam_search(&model, &vocab, prefix, 30, 1, None, &mut || ControlFlow::Continue(())).unwrap();
                assert_eq!(beam.len(), 1);
                assert_eq!(beam[0].text, predict(&model, &vocab, prefix, 30).unwrap(), "seed {seed} {prefix}");
                let sum: f64 = beam[0].probs.iter().map(|p| p.ln()).sum();
                assert!((beam[0].log_prob.unwrap() - sum).abs() < 1e-9, "{beam:?}");
            }
        }
    }

    #[test]
    fn a_stop_string_ends_a_continuation_which_competes_with_the_longer_ones() {
        let mut stopped_early = 0;
        for seed in 0..10 {
            let (model, vocab) = peaked(seed);
            let all = brute_force(&model, &vocab, "e", 3, Some("b"));
            let beams = beam_search(&model, &vocab, "e", 3, 25, Some("b"), &mut || ControlFlow::Continue(())).unwrap();
            assert_eq!(beams.len(), 25.min(all.len()));
            for (b, (text, lp)) in beams.iter().zip(&all) {
                assert_eq!(b.generated, *text, "seed {seed}");
                assert!((b.log_prob.unwrap() - lp).abs() < 1e-4);
                assert_eq!(b.stopped, text.ends_with('b'));
                stopped_early += usize::from(b.stopped && text.len() < 3);
            }
        }
        assert!(stopped_early > 0, "some best continuations must end early at the stop string");
    }

    #[test]
    fn fewer_continuations_than_the_beam_come_back_sorted_and_distinct() {
        let (model, vocab) = peaked(3);
        let beams = beam_search(&model, &vocab, "c", 2, 1000, None, &mut || ControlFlow::Continue(())).unwrap();
        assert_eq!(beams.len(), 25, "5^2 continuations of 2 characters");
        assert!(beams.windows(2).all(|w| w[0].log_prob >= w[1].log_prob));
        let mut texts: Vec<&str> = beams.iter().map(|b| b.generated.as_str()).collect();
        texts.sort();
        texts.dedup();
        assert_eq!(texts.len(), 25);
        // The probabilities of all 25 continuations add up to 1.
        let total: f64 = beams.iter().map(|b| b.log_prob.unwrap().exp()).sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        let none = beam_search(&model, &vocab, "c", 0, 4, None, &mut || ControlFlow::Continue(())).unwrap();
        assert_eq!((none.len(), none[0].text.as_str(), none[0].log_prob), (1, "c", Some(0.0)));
        assert!(beam_search(&model, &vocab, "c", 2, 0, None, &mut || ControlFlow::Continue(())).is_err());
        assert!(beam_search(&model, &vocab, "c", 2, MAX_BEAM + 1, None, &mut || ControlFlow::Continue(())).is_err());
    }

    #[test]
    fn a_search_told_to_stop_returns_the_best_continuations_so_far() {
        // Stopped before its step k + 1, a search of 6 characters has the beams of a search of k: the
        // brute force above checks those at k = 3.
        let (model, vocab) = peaked(5);
        for k in 0..4 {
            let mut asked = 0;
            let stopped = beam_search(&model, &vocab, "ab", 6, 7, None, &mut || {
                asked += 1;
                if asked > k {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })
            .unwrap();
            assert_eq!(asked, k + 1, "asked once before each step, and not again once stopped");
            let short = beam_search(&model, &vocab, "ab", k, 7, None, &mut || ControlFlow::Continue(())).unwrap();
            let texts = |b: &[Generated]| b.iter().map(|g| (g.text.clone(), g.log_prob)).collect::<Vec<_>>();
            assert_eq!(texts(&stopped), texts(&short), "stopped after {k} steps");
        }
    }
}
