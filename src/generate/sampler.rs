//! How each next character is chosen from the model's distribution: greedy (the textbook's) or drawn with a
//! temperature, top-k and top-p.
use crate::error::{Error, Result};
use crate::rng::Rng;

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ops::probability;

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
}
