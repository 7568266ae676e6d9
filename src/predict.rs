//! Prefix-conditioned generation: greedy (the textbook's) or sampled with a temperature, top-k and top-p,
//! several samples at once, stopping early at a string, streamed as it is produced.
use crate::corpus::Vocabulary;
use crate::error::{Error, Result};
use crate::model::Network;
use crate::rng::{Rng, Stream};
use std::ops::ControlFlow;
use tch::{Device, Kind, Tensor};

/// How each next character is chosen from the model's distribution.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Sampler {
    /// Softmax temperature: probabilities are `softmax(logits / T)`; 0 takes the most likely character
    /// (greedy, the textbook's), 1 the model's own distribution, more than 1 flattens it.
    pub temperature: f64,
    /// Draw only among the k most likely characters (0: no limit).
    pub top_k: usize,
    /// Draw only among the fewest most likely characters whose probabilities (after the temperature and
    /// top-k) add up to at least p (nucleus sampling; 1: no limit).
    pub top_p: f64,
    /// Seed of the draws; sample i of a batch uses `seed + i`.
    pub seed: u64,
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0 }
    }
}

impl Sampler {
    /// Checks the settings are in range.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::config(
                "--temperature",
                format!("must be 0 (greedy) or more, got {}", self.temperature),
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::config("--top-p", format!("must be above 0 and at most 1, got {}", self.top_p)));
        }
        Ok(())
    }

    /// The sampler for optional settings, under the rule `predict`, `train` and `serve` share: top-k, top-p
    /// and several samples draw at temperature 1 unless a temperature is given (greedy decoding would make
    /// them do nothing); with temperature 0 they are refused. `Err` names the first such setting:
    /// `"top_k"`, `"top_p"` or `"samples"`.
    pub fn from_settings(
        temperature: Option<f64>,
        top_k: Option<usize>,
        top_p: Option<f64>,
        seed: u64,
        samples: usize,
    ) -> std::result::Result<Sampler, &'static str> {
        let default = Sampler::default();
        let asks_to_sample = [
            (top_k.is_some_and(|k| k > 0), "top_k"),
            (top_p.is_some_and(|p| p < 1.0), "top_p"),
            (samples > 1, "samples"),
        ]
        .into_iter()
        .find_map(|(asks, name)| asks.then_some(name));
        let temperature = match (temperature, asks_to_sample) {
            (Some(0.0), Some(name)) => return Err(name),
            (Some(t), _) => t,
            (None, Some(_)) => 1.0,
            (None, None) => default.temperature,
        };
        Ok(Sampler { temperature, top_k: top_k.unwrap_or(default.top_k), top_p: top_p.unwrap_or(default.top_p), seed })
    }

    /// Picks a character from `logits` (one row, length V) with `rng`: the argmax at temperature 0, else a
    /// draw from the tempered, top-k and top-p filtered distribution. Ties go to the lower index.
    pub fn pick(&self, logits: &[f32], rng: &mut Rng) -> usize {
        if self.temperature == 0.0 {
            return argmax(logits);
        }
        let max = logits.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
        let weights: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) / self.temperature).exp()).collect();
        let v = weights.len();
        if (self.top_k == 0 || self.top_k >= v) && self.top_p >= 1.0 {
            // Nothing filtered: draw in index order, no sorting needed.
            return draw(weights.iter().copied().enumerate(), weights.iter().sum(), rng);
        }
        // Most likely first, ties in index order; only the top k need sorting.
        let by_weight = |a: &usize, b: &usize| weights[*b].total_cmp(&weights[*a]).then(a.cmp(b));
        let mut order: Vec<usize> = (0..v).collect();
        if self.top_k > 0 && self.top_k < v {
            order.select_nth_unstable_by(self.top_k - 1, by_weight);
            order.truncate(self.top_k);
        }
        order.sort_unstable_by(by_weight);
        if self.top_p < 1.0 {
            let total: f64 = order.iter().map(|&i| weights[i]).sum();
            let mut mass = 0.0;
            let keep = order.iter().position(|&i| {
                mass += weights[i];
                mass >= self.top_p * total
            });
            order.truncate(keep.map_or(order.len(), |k| k + 1));
        }
        let total = order.iter().map(|&i| weights[i]).sum();
        draw(order.iter().map(|&i| (i, weights[i])), total, rng)
    }
}

/// Draws an index from `(index, weight)` pairs whose weights add up to `total`.
fn draw(items: impl Iterator<Item = (usize, f64)>, total: f64, rng: &mut Rng) -> usize {
    let mut u = rng.uniform() * total;
    let mut last = 0;
    for (i, w) in items {
        if u < w {
            return i;
        }
        u -= w;
        last = i;
    }
    // Rounding left u at or just above the total: the last candidate.
    last
}

fn argmax(row: &[f32]) -> usize {
    row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best })
}

/// The probability the model gives character `c` at temperature 1: `softmax(row)[c]`, in f64.
fn probability(row: &[f32], c: usize) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    (row[c] as f64 - max).exp() / sum
}

/// Characters `predict` generates when not told how many.
pub const DEFAULT_NUM_CHARS: usize = 200;
/// The most characters one generation may ask for (what it keeps, 4 bytes a character per sample, stays
/// within tens of megabytes).
pub const MAX_NUM_CHARS: usize = 10_000_000;

/// What to generate.
#[derive(Debug, Clone, Default)]
pub struct Generate {
    /// Characters to generate after the prefix (fewer if `stop` comes first).
    pub num_chars: usize,
    /// Independent continuations, generated together as one batch.
    pub samples: usize,
    /// End a sample as soon as its generated text ends with this string (kept in the text).
    pub stop: Option<String>,
    /// How characters are chosen.
    pub sampler: Sampler,
    /// Record each generated character's probability in [`Generated::probs`] (a softmax over the vocabulary
    /// per character on the host: about a third of greedy generation's time, so off unless asked for).
    pub probs: bool,
    /// Beam search of this width instead of drawing ([`crate::beam_search`]): the `beam` most likely
    /// continuations, each with its probabilities and total log probability. 0: off. Needs greedy
    /// settings (temperature 0, no top-k or top-p) and one sample.
    pub beam: usize,
}

impl Generate {
    /// Checks the settings are in range (at least one sample, a non-empty stop string, the sampler's).
    pub fn validate(&self) -> Result<()> {
        if self.samples == 0 {
            return Err(Error::config("--samples", "must be at least 1"));
        }
        if self.num_chars > MAX_NUM_CHARS {
            let reason = format!(
                "{} is more than the {MAX_NUM_CHARS} characters one run may generate; run several",
                self.num_chars
            );
            return Err(Error::config("--num-chars", reason));
        }
        if self.stop.as_deref() == Some("") {
            return Err(Error::config("--stop", "must not be empty"));
        }
        if self.beam > 0 {
            let s = &self.sampler;
            if s.temperature != 0.0 || s.top_k != 0 || s.top_p < 1.0 {
                return Err(Error::config(
                    "--beam",
                    "searches for the most likely continuations: it cannot be combined with --temperature, --top-k or --top-p",
                ));
            }
            if self.samples != 1 {
                return Err(Error::config("--beam", "gives the N most likely continuations itself: drop --samples"));
            }
            if self.beam > crate::beam::MAX_BEAM {
                let reason = format!("must be from 1 to {}, got {}", crate::beam::MAX_BEAM, self.beam);
                return Err(Error::config("--beam", reason));
            }
        }
        self.sampler.validate()
    }

    /// How many continuations come back: the beam's width with beam search, else the samples.
    pub fn outputs(&self) -> usize {
        if self.beam > 0 {
            self.beam
        } else {
            self.samples
        }
    }
}

/// One generated continuation.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Generated {
    /// The prefix followed by the generated characters.
    pub text: String,
    /// The generated characters alone.
    pub generated: String,
    /// For each generated character, the probability the model gave it (softmax of the logits, temperature
    /// 1, before any filtering); empty unless [`Generate::probs`] asks for it.
    pub probs: Vec<f64>,
    /// Whether it ended at the stop string.
    pub stopped: bool,
    /// With beam search, the total log probability of the generated characters given the prefix (natural
    /// log): `sum ln probs`.
    pub log_prob: Option<f64>,
}

/// The state after reading `ids` from a zero state (`[L, 1, H]`; a zero state when `ids` is empty): what
/// generation starts from, before the prefix's last character is fed.
pub(crate) fn warm_up(model: &Network, ids: &[i64]) -> crate::model::State {
    let state = model.begin_state(1);
    if ids.is_empty() {
        return state;
    }
    let x = Tensor::from_slice(ids).to_device(model.device()).view([1, -1]);
    model.forward(&x, &state, false).1
}

/// Warms the state up over `prefix`, then generates `options.samples` continuations of up to
/// `options.num_chars` characters, one forward step per character for all samples together. `on_char(i, c)`
/// is called for each character `c` of sample `i` as soon as it is chosen (for streaming); when it returns
/// `Break`, generation stops there and the samples so far are returned.
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
) -> Result<Vec<Generated>> {
    if prefix.is_empty() {
        return Err(Error::config("--prefix", "must not be empty"));
    }
    options.validate()?;
    if options.beam > 0 {
        let beams =
            crate::beam::beam_search(model, vocab, prefix, options.num_chars, options.beam, options.stop.as_deref())?;
        for (i, b) in beams.iter().enumerate() {
            for c in b.generated.chars() {
                if on_char(i, c).is_break() {
                    return Ok(beams);
                }
            }
        }
        return Ok(beams);
    }
    let mut samples = generate_batch(model, vocab, &[(prefix, options)], &mut |_, i, c| on_char(i, c), &mut |_, _| {})?;
    Ok(samples.remove(0))
}

/// One row of a batch being generated: sample `sample` of request `request`.
struct Row {
    request: usize,
    sample: usize,
    rng: Rng,
    /// Characters still to generate.
    left: usize,
}

/// Generates several requests together, each `(prefix, options)` as [`generate_until`] would alone (see
/// [`Batch`]). `on_char(r, i, c)` sees character `c` of sample `i` of request `r` as it is chosen; `Break`
/// ends request `r` there (the others go on). `on_done(r, samples)` is called once per request as soon as
/// its last row has left. Returns each request's samples, in order.
pub fn generate_batch(
    model: &Network,
    vocab: &Vocabulary,
    requests: &[(&str, &Generate)],
    on_char: &mut dyn FnMut(usize, usize, char) -> ControlFlow<()>,
    on_done: &mut dyn FnMut(usize, &[Generated]),
) -> Result<Vec<Vec<Generated>>> {
    let mut batch = Batch::new(model, vocab);
    for (prefix, options) in requests {
        batch.admit(prefix, options)?;
    }
    let mut outputs = vec![Vec::new(); requests.len()];
    while !batch.is_empty() {
        batch.step(on_char, &mut |r, samples| {
            on_done(r, &samples);
            outputs[r] = samples;
        })?;
    }
    Ok(outputs)
}

/// Requests generated together, which may join while others run: every sample of every request is one row
/// of a batch, and each step runs the model once for all rows. A request's rows start from its own
/// warmed-up prefix and draw with its own sampler, seeds and stop string; a row leaves the batch when it has
/// its characters or its stop string, and a request is reported done as soon as its last row has left.
/// Beam search is not batched.
///
/// A request gives the texts it gives alone, up to the rounding of a batched matrix product (which can
/// differ from another batch's in the last bit, and so, rarely, change a draw that lands on a boundary).
pub struct Batch<'m> {
    model: &'m Network,
    vocab: &'m Vocabulary,
    /// Each request's settings, by id (the order of admission, from 0 again whenever the batch empties).
    requests: Vec<Generate>,
    /// Each request's samples so far (taken when it is reported done).
    outputs: Vec<Vec<Generated>>,
    /// Whether `on_char` ended the request, and whether it was reported done.
    ended: Vec<bool>,
    reported: Vec<bool>,
    rows: Vec<Row>,
    /// The character each row feeds next, and the rows' state (`[L, rows, H]`; `None` without rows).
    inputs: Vec<i64>,
    state: Option<crate::model::State>,
}

impl<'m> Batch<'m> {
    /// An empty batch for `model` over `vocab`.
    pub fn new(model: &'m Network, vocab: &'m Vocabulary) -> Self {
        Batch {
            model,
            vocab,
            requests: Vec::new(),
            outputs: Vec::new(),
            ended: Vec::new(),
            reported: Vec::new(),
            rows: Vec::new(),
            inputs: Vec::new(),
            state: None,
        }
    }

    /// Whether every request admitted has been reported done.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty() && self.reported.iter().all(|&r| r)
    }

    /// Adds a request, whose rows join at the next step (after its prefix is read); returns its id.
    pub fn admit(&mut self, prefix: &str, options: &Generate) -> Result<usize> {
        options.validate()?;
        if options.beam > 0 {
            return Err(Error::config("--beam", "beam search runs on its own, not in a batch"));
        }
        if prefix.is_empty() {
            return Err(Error::config("--prefix", "must not be empty"));
        }
        let ids = self.vocab.encode(prefix, "the prefix")?;
        if self.is_empty() {
            // Ids start again, so that nothing grows over a long-running server's life.
            (self.requests, self.outputs, self.ended, self.reported) = Default::default();
        }
        let _guard = tch::no_grad_guard();
        let (r, n) = (self.requests.len(), options.samples);
        // The same warmed-up state for every sample: [L, 1, H] -> [L, n, H].
        let start = warm_up(self.model, &ids[..ids.len() - 1]);
        let expand = |t: &Tensor| t.repeat([1, n as i64, 1]);
        let start = crate::model::State { h: expand(&start.h), c: start.c.as_ref().map(expand) };
        // Computed before anything changes, so that a failure leaves the batch as it was.
        let merged = match &self.state {
            None => start,
            Some(s) => crate::model::State {
                h: Tensor::cat(&[&s.h, &start.h], 1),
                c: s.c.as_ref().zip(start.c.as_ref()).map(|(a, b)| Tensor::cat(&[a, b], 1)),
            },
        };
        self.state = Some(merged);
        for i in 0..n {
            let rng = Rng::for_stream(options.sampler.seed.wrapping_add(i as u64), Stream::Sample);
            self.rows.push(Row { request: r, sample: i, rng, left: options.num_chars });
            self.inputs.push(ids[ids.len() - 1]);
        }
        let text = prefix.to_string();
        let first = Generated { text, generated: String::new(), probs: Vec::new(), stopped: false, log_prob: None };
        self.requests.push(options.clone());
        self.outputs.push(vec![first; n]);
        self.ended.push(false);
        self.reported.push(false);
        // Rows with nothing to generate leave at once.
        let keep: Vec<usize> = (0..self.rows.len()).filter(|&k| self.rows[k].left > 0).collect();
        self.select(&keep);
        Ok(r)
    }

    /// Reports the requests whose rows have all left (`on_done`), then, if rows are left, generates one
    /// character for each (`on_char`; `Break` ends that row's request), then reports again.
    pub fn step(
        &mut self,
        on_char: &mut dyn FnMut(usize, usize, char) -> ControlFlow<()>,
        on_done: &mut dyn FnMut(usize, Vec<Generated>),
    ) -> Result<()> {
        self.report(on_done);
        let Some(state) = self.state.take() else { return Ok(()) };
        let _guard = tch::no_grad_guard();
        let device = self.model.device();
        let x = Tensor::from_slice(&self.inputs).to_device(device);
        let (y, next) = self.model.step(&x, &state);
        self.state = Some(next);
        let logits = Vec::<f32>::try_from(y.to_device(Device::Cpu).to_kind(Kind::Float).reshape([-1]))?;
        let v = self.vocab.len();
        let (mut keep, mut chosen) = (Vec::with_capacity(self.rows.len()), Vec::with_capacity(self.rows.len()));
        for (k, row) in self.rows.iter_mut().enumerate() {
            if self.ended[row.request] {
                continue;
            }
            let options = &self.requests[row.request];
            let logits = &logits[k * v..(k + 1) * v];
            let c = options.sampler.pick(logits, &mut row.rng);
            let sample = &mut self.outputs[row.request][row.sample];
            let ch = self.vocab.chars()[c];
            sample.generated.push(ch);
            sample.text.push(ch);
            if options.probs {
                sample.probs.push(probability(logits, c));
            }
            sample.stopped = options.stop.as_deref().is_some_and(|s| sample.generated.ends_with(s));
            row.left -= 1;
            if on_char(row.request, row.sample, ch).is_break() {
                self.ended[row.request] = true;
            } else if !sample.stopped && row.left > 0 {
                keep.push(k);
                chosen.push(c as i64);
            }
        }
        // A request that ended in this step may have rows kept before it ended.
        let (keep, chosen): (Vec<usize>, Vec<i64>) =
            keep.into_iter().zip(chosen).filter(|&(k, _)| !self.ended[self.rows[k].request]).unzip();
        self.select(&keep);
        self.inputs = chosen;
        self.report(on_done);
        Ok(())
    }

    /// Calls `on_done` for each request not yet reported whose rows have all left.
    fn report(&mut self, on_done: &mut dyn FnMut(usize, Vec<Generated>)) {
        let mut live = vec![false; self.requests.len()];
        self.rows.iter().for_each(|row| live[row.request] = true);
        for (r, live) in live.into_iter().enumerate() {
            if !live && !self.reported[r] {
                self.reported[r] = true;
                on_done(r, std::mem::take(&mut self.outputs[r]));
            }
        }
    }

    /// Keeps the rows `keep` (indices, ascending) of the rows, their inputs and the state.
    fn select(&mut self, keep: &[usize]) {
        if keep.len() == self.rows.len() {
            return;
        }
        self.inputs = keep.iter().map(|&k| self.inputs[k]).collect();
        self.state = self.state.take().filter(|_| !keep.is_empty()).map(|state| {
            let index =
                Tensor::from_slice(&keep.iter().map(|&k| k as i64).collect::<Vec<_>>()).to_device(self.model.device());
            crate::model::State {
                h: state.h.index_select(1, &index),
                c: state.c.as_ref().map(|c| c.index_select(1, &index)),
            }
        });
        let mut rows: Vec<Option<Row>> = std::mem::take(&mut self.rows).into_iter().map(Some).collect();
        self.rows = keep.iter().map(|&k| rows[k].take().expect("each row is kept once")).collect();
    }
}

/// [`generate_until`] to the end: `on_char(i, c)` sees each character `c` of sample `i` as it is chosen.
pub fn generate(
    model: &Network,
    vocab: &Vocabulary,
    prefix: &str,
    options: &Generate,
    on_char: &mut dyn FnMut(usize, char),
) -> Result<Vec<Generated>> {
    generate_until(model, vocab, prefix, options, &mut |i, c| {
        on_char(i, c);
        ControlFlow::Continue(())
    })
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
    use crate::model::Arch;
    use crate::model::ModelConfig;
    use tch::Device;

    fn setup() -> (Network, Vocabulary) {
        let vocab = Vocabulary::from_text("abcdef");
        let model = Network::new(ModelConfig::rnn(6, 8), 3, Device::Cpu).unwrap();
        (model, vocab)
    }

    #[test]
    fn requests_generated_together_give_what_each_gives_alone() {
        // An LSTM: its state has a memory cell, which each row of the batch must carry as its own.
        let vocab = Vocabulary::from_text("abcdef");
        let arch = Arch { cell: crate::model::Cell::Lstm, ..Arch::rnn(8) };
        let model = Network::new(ModelConfig::new(6, arch), 3, Device::Cpu).unwrap();
        let sampled = Sampler { temperature: 1.0, top_k: 0, top_p: 1.0, seed: 11 };
        let requests = [
            ("ab", Generate { num_chars: 40, samples: 1, ..Default::default() }),
            ("fedc", Generate { num_chars: 25, samples: 3, sampler: sampled, probs: true, ..Default::default() }),
            (
                "c",
                Generate { num_chars: 60, samples: 2, sampler: sampled, stop: Some("ea".into()), ..Default::default() },
            ),
            ("d", Generate { num_chars: 0, samples: 1, ..Default::default() }),
        ];
        let refs: Vec<(&str, &Generate)> = requests.iter().map(|(p, g)| (*p, g)).collect();
        let mut seen = vec![vec![String::new(); 3]; requests.len()];
        // Every event in order: (request, Some(character)) or (request, None) when it is done.
        let events = std::cell::RefCell::new(Vec::new());
        let mut done = vec![Vec::new(); requests.len()];
        let together = generate_batch(
            &model,
            &vocab,
            &refs,
            &mut |r, i, c| {
                seen[r][i].push(c);
                events.borrow_mut().push((r, Some(c)));
                ControlFlow::Continue(())
            },
            &mut |r, samples| {
                done[r].push(samples.to_vec());
                events.borrow_mut().push((r, None));
            },
        )
        .unwrap();
        // Each request is reported done once, with its samples, as soon as its last row leaves: the empty
        // one first, the 25-character one before the 40-character one's 26th character.
        assert!(done.iter().zip(&together).all(|(d, t)| d.len() == 1 && &d[0] == t));
        let events = events.into_inner();
        assert_eq!(events[0], (3, None));
        let done_1 = events.iter().position(|e| *e == (1, None)).unwrap();
        let char_26_of_0 = events.iter().enumerate().filter(|(_, e)| e.0 == 0 && e.1.is_some()).nth(25).unwrap().0;
        assert!(done_1 < char_26_of_0, "{done_1} {char_26_of_0}");
        for ((prefix, options), batch) in requests.iter().zip(&together) {
            let alone = generate(&model, &vocab, prefix, options, &mut |_, _| {}).unwrap();
            assert_eq!(batch.len(), alone.len());
            for (b, a) in batch.iter().zip(&alone) {
                assert_eq!((&b.text, b.stopped), (&a.text, a.stopped), "{prefix}");
                // Float32 logits of a batched product against a single row's: the last bits may differ.
                assert_eq!(b.probs.len(), a.probs.len());
                assert!(b.probs.iter().zip(&a.probs).all(|(x, y)| (x - y).abs() <= 1e-6 * y), "{b:?} {a:?}");
            }
        }
        for (r, samples) in together.iter().enumerate() {
            for (i, s) in samples.iter().enumerate() {
                assert_eq!(seen[r][i], s.generated, "streamed as generated");
            }
        }
        assert!(together[2].iter().any(|s| s.stopped && s.generated.len() < 60), "a stop string must end a row early");
        // Break ends only its own request: request 1 stops after 5 characters of its first sample.
        let mut count = 0;
        let mut cut_done = Vec::new();
        let cut = generate_batch(
            &model,
            &vocab,
            &refs,
            &mut |r, _, _| {
                count += usize::from(r == 1);
                if r == 1 && count == 5 {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
            &mut |r, _| cut_done.push(r),
        )
        .unwrap();
        cut_done.sort();
        assert_eq!(cut_done, [0, 1, 2, 3], "an ended request is reported done too");
        // A request that joins a running batch after 7 steps gives what it gives alone too.
        let mut batch = Batch::new(&model, &vocab);
        let mut results = vec![Vec::new(); 2];
        batch.admit(requests[0].0, &requests[0].1).unwrap();
        for _ in 0..7 {
            batch.step(&mut |_, _, _| ControlFlow::Continue(()), &mut |r, s| results[r] = s).unwrap();
        }
        assert_eq!(batch.admit(requests[1].0, &requests[1].1).unwrap(), 1);
        while !batch.is_empty() {
            batch.step(&mut |_, _, _| ControlFlow::Continue(()), &mut |r, s| results[r] = s).unwrap();
        }
        for (result, expected) in results.iter().zip(&together) {
            let texts = |g: &[Generated]| g.iter().map(|s| s.text.clone()).collect::<Vec<_>>();
            assert_eq!(texts(result), texts(expected));
        }
        assert!(cut[1].iter().map(|s| s.generated.chars().count()).sum::<usize>() == 5, "{:?}", cut[1]);
        assert_eq!((cut[0].clone(), cut[2].clone()), (together[0].clone(), together[2].clone()));
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

    /// Frequencies of `pick` over many draws, for logits `row`.
    fn frequencies(sampler: Sampler, row: &[f32], draws: usize) -> Vec<f64> {
        let mut rng = Rng::new(9);
        let mut counts = vec![0usize; row.len()];
        for _ in 0..draws {
            counts[sampler.pick(row, &mut rng)] += 1;
        }
        counts.into_iter().map(|c| c as f64 / draws as f64).collect()
    }

    const ROW: [f32; 6] = [2.0, 1.0, 0.5, 0.0, -1.0, 1.5];

    fn softmax(row: &[f32]) -> Vec<f64> {
        (0..row.len()).map(|c| probability(row, c)).collect()
    }

    #[test]
    fn temperature_one_follows_the_model_and_near_zero_the_argmax() {
        let p = softmax(&ROW);
        let f = frequencies(Sampler { temperature: 1.0, ..Default::default() }, &ROW, 200_000);
        for (a, b) in p.iter().zip(&f) {
            assert!((a - b).abs() < 0.005, "{p:?} vs {f:?}");
        }
        let cold = frequencies(Sampler { temperature: 0.05, ..Default::default() }, &ROW, 2000);
        assert!(cold[0] > 0.99, "{cold:?}");
        let colder = frequencies(Sampler { temperature: 0.01, ..Default::default() }, &ROW, 2000);
        assert_eq!(colder[0], 1.0);
        let greedy = frequencies(Sampler::default(), &ROW, 10);
        assert_eq!(greedy[0], 1.0);
    }

    #[test]
    fn top_k_never_leaves_the_k_most_likely() {
        for k in 1..=5 {
            let f = frequencies(Sampler { temperature: 1.5, top_k: k, ..Default::default() }, &ROW, 20_000);
            let mut by_logit: Vec<usize> = (0..ROW.len()).collect();
            by_logit.sort_by(|&a, &b| ROW[b].total_cmp(&ROW[a]));
            for (rank, &i) in by_logit.iter().enumerate() {
                assert_eq!(f[i] > 0.0, rank < k, "k {k}: {f:?}");
            }
        }
    }

    #[test]
    fn top_p_keeps_the_fewest_most_likely_with_mass_at_least_p() {
        let p = softmax(&ROW);
        let mut sorted = p.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        for top_p in [0.1, 0.4, 0.6, 0.8, 0.95, 1.0] {
            let f = frequencies(Sampler { temperature: 1.0, top_p, ..Default::default() }, &ROW, 20_000);
            let kept: Vec<usize> = (0..ROW.len()).filter(|&i| f[i] > 0.0).collect();
            let mass: f64 = kept.iter().map(|&i| p[i]).sum();
            assert!(mass >= top_p - 1e-12, "p {top_p}: kept {kept:?} with mass {mass}");
            // The fewest: without its least likely member the kept set would fall short of p.
            let least = kept.iter().map(|&i| p[i]).fold(f64::INFINITY, f64::min);
            assert!(kept.len() == 1 || mass - least < top_p, "p {top_p}: kept {kept:?}");
            assert_eq!(
                kept.len(),
                sorted
                    .iter()
                    .scan(0.0, |m, x| {
                        let before = *m;
                        *m += x;
                        Some(before)
                    })
                    .take_while(|&b| b < top_p)
                    .count()
            );
        }
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
