//! Dropout whose masks come from the run's own seed, not from libtorch's global generator (which every
//! thread of a process shares, and which a resumed run could not put back where it stood).
//!
//! Element `i` of a mask is kept when a counter-based hash of `(key, i)` is at least `p · 2³²`: the mask is
//! a function of the key and the position alone, so it is the same on every device, in every process and
//! whatever else draws random numbers meanwhile. On a GPU it is computed there with integer tensor
//! operations; on the CPU in one pass of plain integer arithmetic (the same hash, several times faster than
//! a dozen tensor passes over 64-bit integers).
use crate::rng::Rng;
use tch::{Device, Kind, Tensor};

/// Whether a pass drops units: `Off` for evaluation and generation, `Seeded(seed)` in training, each
/// minibatch with its own seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropout {
    /// No dropout.
    Off,
    /// Masks drawn from this seed.
    Seeded(u64),
    /// One process's rows of the masks `Seeded(seed)` draws for a whole minibatch, when several processes
    /// share its rows ([`crate::World`]): this one computes `rows` rows from row `first` of `batch`, so
    /// that together they drop what one process would.
    Shard {
        /// The minibatch's seed.
        seed: u64,
        /// The first of this process's rows.
        first: usize,
        /// How many rows it has.
        rows: usize,
        /// Rows in the whole minibatch.
        batch: usize,
    },
}

/// 2³² − 1: the hash works on 32-bit values held in Int64 tensors, so that no product overflows.
const LOW32: i64 = 0xFFFF_FFFF;
/// The multiplier of the 32-bit integer hash below (below 2²⁷: a product with a 32-bit value fits in 59 bits).
const MIX: i64 = 0x045d_9f3b;

/// A 32-bit integer hash (the avalanche hash of Thomas Mueller): two rounds of xor-shift and multiply.
fn hash32_u32(mut x: u32) -> u32 {
    x = ((x >> 16) ^ x).wrapping_mul(MIX as u32);
    x = ((x >> 16) ^ x).wrapping_mul(MIX as u32);
    (x >> 16) ^ x
}

/// [`hash32_u32`] of each element of `x` (Int64 values below 2³²), with tensor operations on `x`'s device.
fn hash32(x: &Tensor) -> Tensor {
    let round = |x: &Tensor| (x.bitwise_right_shift_tensor_scalar(16).bitwise_xor_tensor(x) * MIX).bitwise_and(LOW32);
    let x = round(&round(x));
    x.bitwise_right_shift_tensor_scalar(16).bitwise_xor_tensor(&x)
}

/// Where a process's rows lie in the whole minibatch's mask: `(first, rows, batch, width)`; element `e` of
/// a step-major `[steps * rows, width]` mask is element [`Window::whole`] of the whole `[steps * batch,
/// width]` one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    first: i64,
    rows: i64,
    batch: i64,
    width: i64,
}

impl Window {
    /// The index in the whole minibatch's mask of element `e` of this window's.
    fn whole(&self, e: i64) -> i64 {
        let (k, j) = (e / self.width, e % self.width);
        ((k / self.rows) * self.batch + self.first + k % self.rows) * self.width + j
    }
}

/// Keys `k1`, `k2` give element `i` the bits `hash32(hash32(i ^ k1) ^ k2)`; it is kept (`scale`) when they
/// are at least `threshold`, else dropped (0). `n` elements, Float `[n]`, computed on the host; with a
/// window, element `e` takes the bits of element `window.whole(e)`.
fn mask_on_host(k1: u32, k2: u32, threshold: u64, scale: f32, n: i64, window: Option<Window>) -> Tensor {
    let keep = |i: i64| u64::from(hash32_u32(hash32_u32(i as u32 ^ k1) ^ k2)) >= threshold;
    let at = |e: i64| window.map_or(e, |w| w.whole(e));
    Tensor::from_slice(&(0..n).map(|e| if keep(at(e)) { scale } else { 0.0 }).collect::<Vec<f32>>())
}

/// [`mask_on_host`]'s mask computed with tensor operations on `device`.
fn mask_by_tensors(
    k1: u32,
    k2: u32,
    threshold: u64,
    scale: f32,
    n: i64,
    window: Option<Window>,
    device: Device,
) -> Tensor {
    let mut index = Tensor::arange(n, (Kind::Int64, device));
    if let Some(w) = window {
        let (k, j) = (index.floor_divide_scalar(w.width), index.remainder(w.width));
        index = ((k.floor_divide_scalar(w.rows) * w.batch + w.first + k.remainder(w.rows)) * w.width) + j;
    }
    let bits = hash32(&hash32(&index.bitwise_xor(k1 as i64)).bitwise_xor(k2 as i64));
    bits.ge(threshold as i64).to_kind(Kind::Float) * f64::from(scale)
}

impl Dropout {
    /// Whether units are dropped at probability `p`.
    pub(crate) fn drops(self, p: f64) -> bool {
        self != Dropout::Off && p > 0.0
    }

    /// The dropout mask for `site` (which layer boundary of the pass) with drop probability `p`: Float
    /// `shape` on `device`, each element 0 (dropped) or `1 / (1 - p)` (kept and scaled, as in inverted
    /// dropout). `None` when nothing is dropped (`Off`, or `p` 0). A [`Dropout::Shard`]'s `shape` is
    /// step-major `[steps * rows, width]`.
    pub(crate) fn mask(self, site: u64, p: f64, shape: &[i64], device: Device) -> Option<Tensor> {
        let (seed, window) = match self.drops(p).then_some(self)? {
            Dropout::Off => return None,
            Dropout::Seeded(seed) => (seed, None),
            Dropout::Shard { seed, first, rows, batch } => {
                let width = *shape.last()?;
                (seed, Some(Window { first: first as i64, rows: rows as i64, batch: batch as i64, width }))
            }
        };
        let mut keys = Rng::new(seed ^ site.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let (k1, k2) = ((keys.next_u64() as i64) & LOW32, (keys.next_u64() as i64) & LOW32);
        let n: i64 = shape.iter().product();
        // Kept with probability 1 - p: the hash is at least p · 2^32.
        let threshold = (p * 4_294_967_296.0).ceil() as i64;
        let scale = 1.0 / (1.0 - p);
        let (k1, k2) = (k1 as u32, k2 as u32);
        let mask = match device {
            Device::Cpu => mask_on_host(k1, k2, threshold as u64, scale as f32, n, window),
            _ => mask_by_tensors(k1, k2, threshold as u64, scale as f32, n, window, device),
        };
        Some(mask.view(shape))
    }

    /// `x` with its units dropped as [`Dropout::mask`] says for `site`; `x` itself when nothing is dropped.
    pub(crate) fn apply(self, site: u64, p: f64, x: &Tensor) -> Tensor {
        match self.mask(site, p, &x.size(), x.device()) {
            Some(mask) => x * mask,
            None => x.shallow_clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(mask: &Tensor) -> Vec<bool> {
        Vec::<f32>::try_from(mask.reshape([-1])).unwrap().iter().map(|&v| v != 0.0).collect()
    }

    #[test]
    fn the_hash_matches_the_same_hash_computed_with_u32_arithmetic() {
        // Worked out by hand for 1: (1 >> 16) ^ 1 = 1, times 0x45d9f3b is 0x45d9f3b; xor'd with its top half
        // 0x45d gives 0x45d9b66, times 0x45d9f3b modulo 2^32 is 0x31252a82 (with Python's integers); xor'd with
        // its top half 0x3125 gives 0x31251ba7.
        assert_eq!(hash32_u32(1), 0x3125_1ba7);
        // The tensor form (the GPU's) gives what the u32 form (the CPU's) gives, across the 32-bit range.
        let inputs: Vec<i64> = [0u32, 1, 2, 0xFFFF, 0x10000, 0xDEAD_BEEF, u32::MAX].iter().map(|&x| x as i64).collect();
        let ours = Vec::<i64>::try_from(hash32(&Tensor::from_slice(&inputs))).unwrap();
        let theirs: Vec<i64> = inputs.iter().map(|&x| hash32_u32(x as u32) as i64).collect();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn the_host_and_the_tensor_forms_give_the_same_mask() {
        for (k1, k2, threshold) in [(0u32, 0u32, 1u64 << 31), (0xDEAD_BEEF, 7, 429_496_730), (u32::MAX, 1, 1 << 32)] {
            let host = mask_on_host(k1, k2, threshold, 2.0, 10_000, None);
            assert!(host.equal(&mask_by_tensors(k1, k2, threshold, 2.0, 10_000, None, Device::Cpu)), "{k1} {k2}");
            let window = Some(Window { first: 3, rows: 2, batch: 8, width: 5 });
            let host = mask_on_host(k1, k2, threshold, 2.0, 1_000, window);
            assert!(host.equal(&mask_by_tensors(k1, k2, threshold, 2.0, 1_000, window, Device::Cpu)), "{k1} {k2}");
        }
    }

    #[test]
    fn a_shards_mask_is_its_rows_of_the_whole_minibatchs() {
        // Step-major [steps * batch, width] masks: the shard's rows are rows first..first + rows of each step.
        let (steps, batch, width) = (7, 6, 5);
        let whole = Dropout::Seeded(9).mask(2, 0.5, &[steps * batch, width], Device::Cpu).unwrap();
        let whole = whole.view([steps, batch, width]);
        for (first, rows) in [(0, 3), (3, 3), (2, 1), (0, 6)] {
            let shard = Dropout::Shard { seed: 9, first, rows, batch: batch as usize };
            let mask = shard.mask(2, 0.5, &[steps * rows as i64, width], Device::Cpu).unwrap();
            let expected = whole.narrow(1, first as i64, rows as i64).reshape([steps * rows as i64, width]);
            assert!(mask.equal(&expected), "rows {first}..{}", first + rows);
        }
    }

    #[test]
    fn masks_keep_one_minus_p_scaled_and_depend_on_the_seed_and_site_alone() {
        let shape = [200, 500];
        for p in [0.1, 0.5, 0.9] {
            let mask = Dropout::Seeded(3).mask(0, p, &shape, Device::Cpu).unwrap();
            let kept_share = kept(&mask).iter().filter(|&&k| k).count() as f64 / 100_000.0;
            // A binomial share of 100,000 draws: its standard deviation is below 0.0016.
            assert!((kept_share - (1.0 - p)).abs() < 0.01, "p {p}: kept {kept_share}");
            let values = Vec::<f32>::try_from(mask.reshape([-1])).unwrap();
            let scale = (1.0 / (1.0 - p)) as f32;
            assert!(values.iter().all(|&v| v == 0.0 || v == scale), "p {p}");
        }
        let a = Dropout::Seeded(3).mask(1, 0.5, &shape, Device::Cpu).unwrap();
        // libtorch's global generator moving in between changes nothing.
        let _ = Tensor::rand([1000], (Kind::Float, Device::Cpu));
        assert!(a.equal(&Dropout::Seeded(3).mask(1, 0.5, &shape, Device::Cpu).unwrap()), "same seed, same mask");
        for other in
            [Dropout::Seeded(4).mask(1, 0.5, &shape, Device::Cpu), Dropout::Seeded(3).mask(2, 0.5, &shape, Device::Cpu)]
        {
            let other = kept(&other.unwrap());
            let agree = kept(&a).iter().zip(&other).filter(|(x, y)| x == y).count() as f64 / 100_000.0;
            // Independent masks of p = 0.5 agree on about half the elements.
            assert!((agree - 0.5).abs() < 0.01, "{agree}");
        }
        assert!(Dropout::Off.mask(0, 0.5, &shape, Device::Cpu).is_none());
        assert!(Dropout::Seeded(3).mask(0, 0.0, &shape, Device::Cpu).is_none());
    }
}
