//! Requests generated together: every sample of every request is one row of a batch that runs the model once
//! a step, and a request may join while others run (continuous batching).
use crate::data::vocab::Vocabulary;
use crate::error::{Error, Result};
use crate::generate::options::{prefix_ids, Generate, Generated};
use crate::model::network::Network;
use crate::model::ops::probability;
use crate::model::state::State;
use crate::rng::{Rng, Stream};
use std::ops::ControlFlow;
use tch::{Device, Kind, Tensor};

/// One row of a batch being generated: sample `sample` of request `request`.
struct Row {
    request: usize,
    sample: usize,
    rng: Rng,
    /// Characters still to generate.
    left: usize,
}

/// Generates several requests together, each `(prefix, options)` as [`crate::generate_until`] would alone (see
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
    state: Option<State>,
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
        let ids = prefix_ids(self.vocab, prefix)?;
        if self.is_empty() {
            // Ids start again, so that nothing grows over a long-running server's life.
            (self.requests, self.outputs, self.ended, self.reported) = Default::default();
        }
        let _guard = tch::no_grad_guard();
        let (r, n) = (self.requests.len(), options.samples);
        // The same warmed-up state for every sample: [L, 1, H] -> [L, n, H].
        let start = self.model.state_after(&ids[..ids.len() - 1]).repeat_rows(n);
        // Computed before anything changes, so that a failure leaves the batch as it was.
        let merged = match &self.state {
            None => start,
            Some(s) => s.concat(&start),
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
        let index: Vec<i64> = keep.iter().map(|&k| k as i64).collect();
        self.state = self.state.take().filter(|_| !keep.is_empty()).map(|state| state.rows(&index));
        let mut rows: Vec<Option<Row>> = std::mem::take(&mut self.rows).into_iter().map(Some).collect();
        self.rows = keep.iter().map(|&k| rows[k].take().expect("each row is kept once")).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::generate;
    use crate::generate::sampler::Sampler;
    use crate::model::config::{Arch, Cell, ModelConfig};

    #[test]
    fn requests_generated_together_give_what_each_gives_alone() {
        // An LSTM: its state has a memory cell, which each row of the batch must carry as its own.
        let vocab = Vocabulary::from_text("abcdef");
        let arch = Arch { cell: Cell::Lstm, ..Arch::rnn(8) };
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
}
