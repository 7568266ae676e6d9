//! Minibatches of (input, target) index sequences: the textbook's random and consecutive samplers.
use crate::data::tokens::Tokens;
use crate::error::{Error, Result};
use crate::rng::Rng;
use tch::{Device, Tensor};

/// How minibatches are cut from the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BatchOrder {
    /// Non-overlapping subsequences in random order; each minibatch starts from a zero state.
    #[default]
    Random,
    /// Row r of minibatch i+1 continues where row r of minibatch i ended; the state is carried across
    /// minibatches and detached before each one (truncated backpropagation through time).
    Consecutive,
}

impl BatchOrder {
    /// The name `--sampling` and model.json give it.
    pub fn name(self) -> &'static str {
        match self {
            BatchOrder::Random => "random",
            BatchOrder::Consecutive => "consecutive",
        }
    }

    /// Minibatches per epoch for a corpus of `len` indices (0 if none fits).
    pub fn batches_per_epoch(self, len: usize, batch: usize, steps: usize) -> usize {
        match self {
            // (len - 1) / steps subsequences of `steps` inputs each, `batch` per minibatch.
            BatchOrder::Random => len.saturating_sub(1) / steps / batch,
            // `batch` rows of len / batch indices, each row cut into pieces of `steps` (+1 for targets).
            BatchOrder::Consecutive => (len / batch).saturating_sub(1) / steps,
        }
    }

    /// Checks that a corpus of `len` characters gives at least one minibatch, else says what would fit.
    pub fn check_fits(self, len: usize, batch: usize, steps: usize) -> Result<()> {
        if self.batches_per_epoch(len, batch, steps) > 0 {
            return Ok(());
        }
        // The largest steps (batch) that fits with the other as given, computed directly: searching would
        // take forever for absurd values.
        let (max_steps, max_batch) = match self {
            BatchOrder::Random => {
                ((len.saturating_sub(1) / batch.max(1)).min(steps), (len.saturating_sub(1) / steps.max(1)).min(batch))
            }
            BatchOrder::Consecutive => {
                ((len / batch.max(1)).saturating_sub(1).min(steps), (len / steps.saturating_add(1)).min(batch))
            }
        };
        let (max_steps, max_batch) = (Some(max_steps).filter(|&s| s > 0), Some(max_batch).filter(|&b| b > 0));
        debug_assert!(max_steps.is_none_or(|s| self.batches_per_epoch(len, batch, s) > 0));
        debug_assert!(max_batch.is_none_or(|b| self.batches_per_epoch(len, b, steps) > 0));
        let hint = match (max_batch, max_steps) {
            (Some(b), Some(s)) => format!("try --batch {b} or --steps {s}"),
            (Some(b), None) => format!("try --batch {b}"),
            (None, Some(s)) => format!("try --steps {s}"),
            (None, None) => "use a longer corpus or smaller --batch and --steps".to_string(),
        };
        Err(Error::CorpusTooShort { chars: len, batch, steps, sampling: self.name(), hint })
    }

    /// The order of one epoch's minibatches over a corpus of `len` indices: for each minibatch, where each
    /// of its `batch` sequences of `steps` inputs starts. Random sampling draws its shuffle of the
    /// non-overlapping subsequences from `rng`; consecutive sampling cuts `batch` rows and walks them in
    /// step. Only the start offsets are kept; [`EpochPlan::minibatch`] copies each minibatch out of the
    /// corpus when it is trained.
    pub fn plan(self, len: usize, batch: usize, steps: usize, rng: &mut Rng) -> Result<EpochPlan> {
        self.check_fits(len, batch, steps)?;
        let n = self.batches_per_epoch(len, batch, steps);
        let order = match self {
            BatchOrder::Random => {
                // Subsequence numbers as u32 (half the memory of offsets); the shuffle's swaps depend only on
                // the count, so the order is the same as with any other integer type.
                let count = (len - 1) / steps;
                let count = u32::try_from(count).map_err(|_| {
                    Error::config(
                        "--steps",
                        format!("{count} subsequences are more than random sampling can order; use larger --steps"),
                    )
                })?;
                let mut examples: Vec<u32> = (0..count).collect();
                rng.shuffle(&mut examples);
                examples.truncate(n * batch);
                Order::Shuffled(examples)
            }
            BatchOrder::Consecutive => Order::Rows { row_len: len / batch },
        };
        Ok(EpochPlan { order, n, batch, steps })
    }
}

/// Where an epoch's sequences start.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Order {
    /// Sequence j of minibatch i is subsequence `examples[i * batch + j]`, starting at that times `steps`.
    Shuffled(Vec<u32>),
    /// Sequence r of minibatch i starts at `r * row_len + i * steps`.
    Rows { row_len: usize },
}

/// One epoch's minibatches, as where their sequences start in the corpus (see [`BatchOrder::plan`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EpochPlan {
    order: Order,
    /// Minibatches.
    n: usize,
    batch: usize,
    steps: usize,
}

impl EpochPlan {
    /// Minibatches in the epoch.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the epoch has no minibatch.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Where sequence `r` of minibatch `i` starts.
    fn start(&self, i: usize, r: usize) -> usize {
        match &self.order {
            Order::Shuffled(examples) => examples[i * self.batch + r] as usize * self.steps,
            Order::Rows { row_len } => r * row_len + i * self.steps,
        }
    }

    /// Minibatch `i`'s inputs and targets (the inputs shifted by one), Int64 `[batch, steps]` each, copied
    /// out of `corpus` onto `device`.
    pub fn minibatch(&self, i: usize, corpus: Tokens<'_>, device: Device) -> (Tensor, Tensor) {
        self.minibatch_rows(i, 0..self.batch, corpus, device)
    }

    /// Rows `rows` of minibatch `i` (one process's share when several train together): Int64
    /// `[rows.len(), steps]` inputs and targets.
    pub fn minibatch_rows(
        &self,
        i: usize,
        rows: std::ops::Range<usize>,
        corpus: Tokens<'_>,
        device: Device,
    ) -> (Tensor, Tensor) {
        let n = rows.len();
        let gather = |shift: usize| {
            let mut v = Vec::with_capacity(n * self.steps);
            for r in rows.clone() {
                corpus.slice(self.start(i, r) + shift, self.steps).extend_into(&mut v);
            }
            Tensor::from_slice(&v).view([n as i64, self.steps as i64]).to_device(device)
        };
        (gather(0), gather(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use tch::Kind;

    /// The (batch, steps) layout of an Int64 tensor as rows of indices, as the tests read it.
    fn rows(t: &Tensor) -> Vec<Vec<i64>> {
        let t = t.to_kind(Kind::Int64).to_device(Device::Cpu);
        let (b, s) = (t.size()[0], t.size()[1]);
        let flat = Vec::<i64>::try_from(t.reshape([-1])).expect("Int64 tensor");
        (0..b as usize).map(|r| flat[r * s as usize..(r + 1) * s as usize].to_vec()).collect()
    }

    /// An epoch's minibatches stacked: inputs and targets `[n, batch, steps]`.
    fn whole(order: BatchOrder, c: &[i64], batch: usize, steps: usize, seed: u64) -> (Tensor, Tensor) {
        let plan = order.plan(c.len(), batch, steps, &mut Rng::new(seed)).unwrap();
        let (xs, ys): (Vec<Tensor>, Vec<Tensor>) =
            (0..plan.len()).map(|i| plan.minibatch(i, c.into(), Device::Cpu)).unzip();
        (Tensor::stack(&xs, 0), Tensor::stack(&ys, 0))
    }

    fn corpus(n: usize) -> Vec<i64> {
        (0..n as i64).collect()
    }

    #[test]
    fn random_sampler_draws_distinct_aligned_subsequences() {
        let c = corpus(1000);
        let (x, y) = whole(BatchOrder::Random, &c, 4, 7, 0);
        // (1000 - 1) / 7 = 142 subsequences, 35 minibatches of 4.
        assert_eq!(x.size(), vec![35, 4, 7]);
        let mut seen = HashSet::new();
        for i in 0..35 {
            for (xr, yr) in rows(&x.get(i)).iter().zip(rows(&y.get(i))) {
                assert_eq!(xr[0] % 7, 0, "subsequences start on multiples of steps");
                assert_eq!(xr, &(xr[0]..xr[0] + 7).collect::<Vec<_>>());
                assert_eq!(yr, (xr[0] + 1..xr[0] + 8).collect::<Vec<_>>());
                assert!(seen.insert(xr[0]), "subsequence drawn twice in one epoch");
            }
        }
        assert_eq!(seen.len(), 140);
    }

    #[test]
    fn random_sampler_shuffles_with_its_seed() {
        let c = corpus(1000);
        let a = whole(BatchOrder::Random, &c, 4, 7, 1).0;
        let b = whole(BatchOrder::Random, &c, 4, 7, 1).0;
        let d = whole(BatchOrder::Random, &c, 4, 7, 2).0;
        assert!(a.equal(&b));
        assert!(!a.equal(&d));
    }

    #[test]
    fn consecutive_sampler_continues_each_row() {
        let c = corpus(100);
        let (x, y) = whole(BatchOrder::Consecutive, &c, 3, 5, 0);
        // rows of 100 / 3 = 33 indices; (33 - 1) / 5 = 6 minibatches.
        assert_eq!(x.size(), vec![6, 3, 5]);
        for r in 0..3i64 {
            let row: Vec<i64> = (0..6).flat_map(|i| rows(&x.get(i))[r as usize].clone()).collect();
            assert_eq!(row, (r * 33..r * 33 + 30).collect::<Vec<_>>(), "row {r} runs on across minibatches");
            let next: Vec<i64> = (0..6).flat_map(|i| rows(&y.get(i))[r as usize].clone()).collect();
            assert_eq!(next, (r * 33 + 1..r * 33 + 31).collect::<Vec<_>>());
        }
    }

    #[test]
    fn shares_of_rows_put_together_are_the_whole_minibatch() {
        let c = corpus(1000);
        for order in [BatchOrder::Random, BatchOrder::Consecutive] {
            let plan = order.plan(c.len(), 6, 7, &mut Rng::new(3)).unwrap();
            for i in [0, plan.len() - 1] {
                let (x, y) = plan.minibatch(i, c[..].into(), Device::Cpu);
                let (parts_x, parts_y): (Vec<Tensor>, Vec<Tensor>) = [0..2, 2..4, 4..6]
                    .into_iter()
                    .map(|r| plan.minibatch_rows(i, r, c[..].into(), Device::Cpu))
                    .unzip();
                assert!(Tensor::cat(&parts_x, 0).equal(&x) && Tensor::cat(&parts_y, 0).equal(&y), "{order:?} {i}");
                let (one, _) = plan.minibatch_rows(i, 3..4, c[..].into(), Device::Cpu);
                assert_eq!(rows(&one), vec![rows(&x)[3].clone()]);
            }
        }
    }

    #[test]
    fn too_short_corpus_says_what_fits() {
        let err = BatchOrder::Random.check_fits(100, 32, 35).unwrap_err().to_string();
        assert!(err.contains("100 characters"), "{err}");
        assert!(err.contains("--batch 2") && err.contains("--steps 3"), "{err}");
        let err = BatchOrder::Consecutive.check_fits(100, 32, 35).unwrap_err().to_string();
        assert!(err.contains("--batch 2") && err.contains("--steps 2"), "{err}");
        assert!(BatchOrder::Random.check_fits(32 * 35 + 1, 32, 35).is_ok());
        assert!(BatchOrder::Random.check_fits(32 * 35, 32, 35).is_err());
    }

    #[test]
    fn the_hint_is_the_largest_that_fits_even_for_absurd_sizes() {
        for sampling in [BatchOrder::Random, BatchOrder::Consecutive] {
            for len in [1, 2, 7, 40, 100] {
                for (batch, steps) in [(1, 1), (3, 50), (32, 35), (7, 2), (200, 1)] {
                    let Err(err) = sampling.check_fits(len, batch, steps) else { continue };
                    let fits = |b: usize, s: usize| sampling.batches_per_epoch(len, b, s) > 0;
                    let err = err.to_string();
                    match (1..=steps).rev().find(|&s| fits(batch, s)) {
                        Some(s) => assert!(err.contains(&format!("--steps {s}")), "{err}"),
                        None => assert!(!err.contains("try --steps") && !err.contains("or --steps"), "{err}"),
                    }
                    match (1..=batch).rev().find(|&b| fits(b, steps)) {
                        Some(b) => assert!(err.contains(&format!("--batch {b}")), "{err}"),
                        None => assert!(!err.contains("try --batch"), "{err}"),
                    }
                }
            }
            // Answered at once, not by trying every size.
            let err = sampling.check_fits(100, usize::MAX, usize::MAX).unwrap_err().to_string();
            assert!(err.contains("longer corpus"), "{err}");
            let err = sampling.check_fits(100, 1 << 60, 5).unwrap_err().to_string();
            let want = if sampling == BatchOrder::Random { "try --batch 19" } else { "try --batch 16" };
            assert!(err.contains(want), "{err}");
        }
    }
}
