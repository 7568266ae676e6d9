//! The gated cells' recurrences on the CPU, in charrnn's own loops: each thread of libtorch's OpenMP team
//! takes its share of the minibatch's rows through all of a layer's steps, and each step is one product on
//! that thread (MKL's `sgemm_`, called on the slices: [`crate::blas`]) and one pass over the step's gates,
//! forward (a GRU's or an LSTM's gates and new state) and backward (the gradients of the gate
//! pre-activations), instead of a dozen libtorch calls that each read and write the whole step.
//!
//! The passes are compiled for AVX-512, for AVX2 with FMA and for plain x86-64, and the widest the CPU has
//! is chosen at run time ([`crate::simd`]); `exp` is a polynomial that vectorises (below). Every slice holds
//! rows: `[rows, kH]` gate rows in the cell's gate order (GRU r, z, n; LSTM i, f, g, o), `[rows, H]` state
//! rows.

use crate::blas::gemm;
use crate::openmp::parallel_rows;
use crate::simd::multiversion;
use std::ops::Range;
use tch::{Device, Kind, Tensor};

/// A contiguous Float tensor on the CPU, `[steps, ...]`, read and written a step at a time as a slice of
/// floats.
struct Steps {
    ptr: *mut f32,
    /// Elements per step.
    len: usize,
    /// Steps.
    count: i64,
    _tensor: Tensor,
}

// SAFETY: `Steps` only hands out its memory through `at`, `rows` (shared) and the unsafe `at_mut`,
// `rows_mut`, whose callers keep writes disjoint: threads may share it as they share a `&[f32]`.
unsafe impl Sync for Steps {}

impl Steps {
    /// `t`'s steps (its first dimension); `None` unless it is a contiguous Float tensor on the CPU.
    fn of(t: &Tensor) -> Option<Steps> {
        let fits = t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous() && t.dim() >= 1;
        let count = t.size()[0];
        let len = if fits && count > 0 { t.numel() / count as usize } else { return None };
        Some(Steps { ptr: t.data_ptr() as *mut f32, len, count, _tensor: t.shallow_clone() })
    }

    /// Step `i`'s elements.
    fn at(&self, i: i64) -> &[f32] {
        assert!((0..self.count).contains(&i), "step {i} of {}", self.count);
        // SAFETY: `_tensor` keeps the memory alive, and step i lies inside it.
        unsafe { std::slice::from_raw_parts(self.ptr.add(i as usize * self.len), self.len) }
    }

    /// Every step's elements, one after another.
    fn whole(&self) -> &[f32] {
        // SAFETY: as for `at`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len * self.count as usize) }
    }

    /// Rows `rows` of step `i`, whose rows are `width` elements.
    fn rows(&self, i: i64, rows: &Range<usize>, width: usize) -> &[f32] {
        &self.at(i)[rows.start * width..rows.end * width]
    }

    /// Rows `rows` of step `i`, to write.
    ///
    /// # Safety
    /// As for [`Steps::at_mut`], for these rows.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows_mut(&self, i: i64, rows: &Range<usize>, width: usize) -> &mut [f32] {
        unsafe { &mut self.at_mut(i)[rows.start * width..rows.end * width] }
    }

    /// Step `i`'s elements, to write.
    ///
    /// # Safety
    /// No other slice of step `i` of this tensor, or of memory it shares, may be alive while this one is.
    #[allow(clippy::mut_from_ref)]
    unsafe fn at_mut(&self, i: i64) -> &mut [f32] {
        assert!((0..self.count).contains(&i), "step {i} of {}", self.count);
        // SAFETY: as for `at`; the caller keeps the slice unaliased.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i as usize * self.len), self.len) }
    }
}

/// `e^x` in float32 for the gates, written so that it vectorises: `x = k ln 2 + r` with k an integer (the
/// rounding by adding 1.5 · 2²³, which leaves k in the low mantissa bits) and |r| <= ln 2 / 2, `e^r` by its
/// Taylor series to r⁷ (truncation below 1e-8 relative), and `2^k` built in the exponent bits. Inputs are
/// clamped to [-87, 88], where `2^k` stays a normal float: below, the gates' `1 / (1 + e^x)` is 1 or 0
/// within float32's resolution anyway.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const SHIFTER: f32 = 12_582_912.0;
    // ln 2 in two parts (Cody and Waite): k · LN2_HI is exact for |k| < 2⁹.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + SHIFTER;
    let k = t - SHIFTER;
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let p = 1.0 / 5040.0;
    let p = p * r + 1.0 / 720.0;
    let p = p * r + 1.0 / 120.0;
    let p = p * r + 1.0 / 24.0;
    let p = p * r + 1.0 / 6.0;
    let p = p * r + 0.5;
    let p = (p * r) * r + r + 1.0;
    // (k + 127) << 23, from k's low 9 bits in t's mantissa.
    p * f32::from_bits((t.to_bits() << 23).wrapping_add(127 << 23))
}

/// The logistic sigmoid `1 / (1 + e^-x)`.
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `tanh x = 1 - 2 / (1 + e^2x)`: good to about 1e-7 absolute, the float32 resolution of values near 1.
#[inline(always)]
fn tanh(x: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp(2.0 * x))
}

multiversion! {
    /// A GRU step forward, `h` units: from the input projection `x = x W_x + b` and `hw = h W_hh` (rows of
    /// 3h), `b_hn` (h) and the state `h_prev` (rows of h), writes the gates `r, z, n` (rows of 3h),
    /// `hn = h W_hn + b_hn` (rows of h) and the new state `h_next = n + z (h_prev - n)` (rows of h), where
    /// `r = σ(x_r + hw_r)`, `z = σ(x_z + hw_z)`, `n = tanh(x_n + r hn)`.
    fn gru_forward(
        h: usize,
        x: &[f32],
        hw: &[f32],
        b_hn: &[f32],
        h_prev: &[f32],
        gates: &mut [f32],
        hn: &mut [f32],
        h_next: &mut [f32],
    ) {
        let b_hn = &b_hn[..h];
        let rows = x.chunks_exact(3 * h).zip(hw.chunks_exact(3 * h)).zip(h_prev.chunks_exact(h));
        let outs = gates.chunks_exact_mut(3 * h).zip(hn.chunks_exact_mut(h)).zip(h_next.chunks_exact_mut(h));
        for (((x, hw), hp), ((g, hn), out)) in rows.zip(outs) {
            let (xr, xz, xn) = (&x[..h], &x[h..2 * h], &x[2 * h..3 * h]);
            let (hr, hz, hh) = (&hw[..h], &hw[h..2 * h], &hw[2 * h..3 * h]);
            let (gr, rest) = g.split_at_mut(h);
            let (gz, gn) = rest.split_at_mut(h);
            let (gz, gn, hn, out, hp) = (&mut gz[..h], &mut gn[..h], &mut hn[..h], &mut out[..h], &hp[..h]);
            for j in 0..h {
                let r = sigmoid(xr[j] + hr[j]);
                let z = sigmoid(xz[j] + hz[j]);
                let a = hh[j] + b_hn[j];
                let n = tanh(xn[j] + r * a);
                (gr[j], gz[j], gn[j], hn[j]) = (r, z, n, a);
                out[j] = n + z * (hp[j] - n);
            }
        }
    }
}

multiversion! {
    /// A GRU step backward, `h` units: from `d` (rows of h), the gradient reaching the step's output, and
    /// what its forward pass kept (`gates` r, z, n, `hn`, `h_prev`), writes the gradients of the input
    /// projection `dx = [d a_r, d a_z, d a_n]` and of `h W_hh + [0, 0, b_hn]`, `dh = [d a_r, d a_z, d a_n r]`
    /// (rows of 3h), and adds `d z` (what reaches `h_prev` directly) to `before` when given. With
    /// `d a_n = d (1 - z)(1 - n²)`, `d a_z = d (h_prev - n) z (1 - z)`, `d a_r = d a_n hn r (1 - r)`.
    fn gru_backward(
        h: usize,
        d: &[f32],
        gates: &[f32],
        hn: &[f32],
        h_prev: &[f32],
        dx: &mut [f32],
        dh: &mut [f32],
        before: Option<&mut [f32]>,
    ) {
        let rows = d.chunks_exact(h).zip(gates.chunks_exact(3 * h)).zip(hn.chunks_exact(h)).zip(h_prev.chunks_exact(h));
        for (b, (((d, g), hn), hp)) in rows.enumerate() {
            let (r, z, n) = (&g[..h], &g[h..2 * h], &g[2 * h..3 * h]);
            let (d, hn, hp) = (&d[..h], &hn[..h], &hp[..h]);
            let (dxr, rest) = dx[b * 3 * h..(b + 1) * 3 * h].split_at_mut(h);
            let (dxz, dxn) = rest.split_at_mut(h);
            let (dhr, rest) = dh[b * 3 * h..(b + 1) * 3 * h].split_at_mut(h);
            let (dhz, dhn) = rest.split_at_mut(h);
            let (dxz, dxn, dhz, dhn) = (&mut dxz[..h], &mut dxn[..h], &mut dhz[..h], &mut dhn[..h]);
            for j in 0..h {
                let d_an = d[j] * (1.0 - z[j]) * (1.0 - n[j] * n[j]);
                let d_az = d[j] * (hp[j] - n[j]) * z[j] * (1.0 - z[j]);
                let d_ar = d_an * hn[j] * r[j] * (1.0 - r[j]);
                (dxr[j], dxz[j], dxn[j]) = (d_ar, d_az, d_an);
                (dhr[j], dhz[j], dhn[j]) = (d_ar, d_az, d_an * r[j]);
            }
        }
        if let Some(before) = before {
            for ((b, d), g) in before.chunks_exact_mut(h).zip(d.chunks_exact(h)).zip(gates.chunks_exact(3 * h)) {
                let (b, d, z) = (&mut b[..h], &d[..h], &g[h..2 * h]);
                for j in 0..h {
                    b[j] += d[j] * z[j];
                }
            }
        }
    }
}

multiversion! {
    /// An LSTM step forward, `h` units: `gates` (rows of 4h) holds the pre-activations `x W_x + b + h W_hh`
    /// and receives the activated gates `i, f, g, o = σ, σ, tanh, σ`; from the memory cell `c_prev` (rows of
    /// h), writes `c_next = f c_prev + i g` and `h_next = o tanh(c_next)`.
    fn lstm_forward(h: usize, gates: &mut [f32], c_prev: &[f32], c_next: &mut [f32], h_next: &mut [f32]) {
        let rows = gates.chunks_exact_mut(4 * h).zip(c_prev.chunks_exact(h));
        for ((g, cp), (cn, out)) in rows.zip(c_next.chunks_exact_mut(h).zip(h_next.chunks_exact_mut(h))) {
            // One simple loop per activation, which the compiler vectorises across units.
            let (ifg, go) = g.split_at_mut(3 * h);
            for v in &mut ifg[..2 * h] {
                *v = sigmoid(*v);
            }
            for v in &mut ifg[2 * h..] {
                *v = tanh(*v);
            }
            for v in go.iter_mut() {
                *v = sigmoid(*v);
            }
            let (i, f, gg, o) = (&ifg[..h], &ifg[h..2 * h], &ifg[2 * h..3 * h], &go[..h]);
            let (cp, cn, out) = (&cp[..h], &mut cn[..h], &mut out[..h]);
            for j in 0..h {
                let c = f[j] * cp[j] + i[j] * gg[j];
                cn[j] = c;
                out[j] = o[j] * tanh(c);
            }
        }
    }
}

multiversion! {
    /// An LSTM step backward, `h` units: from `d` (rows of h), the gradient reaching the step's output, and
    /// `dc` (rows of h), the one reaching its memory cell from the step after, and what the forward pass
    /// kept (the activated `gates` i, f, g, o, the cells `c_prev` and `c`), writes the gradient of the gate
    /// pre-activations `da` (rows of 4h) and leaves in `dc` what reaches `c_prev`. With
    /// `dc' = dc + d o (1 - tanh² c)`: `d a_i = dc' g i (1 - i)`, `d a_f = dc' c_prev f (1 - f)`,
    /// `d a_g = dc' i (1 - g²)`, `d a_o = d tanh(c) o (1 - o)`, and `c_prev` gets `dc' f`.
    fn lstm_backward(h: usize, d: &[f32], gates: &[f32], c_prev: &[f32], c: &[f32], da: &mut [f32], dc: &mut [f32]) {
        let rows = d.chunks_exact(h).zip(gates.chunks_exact(4 * h)).zip(c_prev.chunks_exact(h)).zip(c.chunks_exact(h));
        for ((((d, g), cp), c), (da, dc)) in rows.zip(da.chunks_exact_mut(4 * h).zip(dc.chunks_exact_mut(h))) {
            let (i, f, gg, o) = (&g[..h], &g[h..2 * h], &g[2 * h..3 * h], &g[3 * h..4 * h]);
            let (d, cp, c, dc) = (&d[..h], &cp[..h], &c[..h], &mut dc[..h]);
            let (dai, rest) = da.split_at_mut(h);
            let (daf, rest) = rest.split_at_mut(h);
            let (dag, dao) = rest.split_at_mut(h);
            let (daf, dag, dao) = (&mut daf[..h], &mut dag[..h], &mut dao[..h]);
            for j in 0..h {
                let tc = tanh(c[j]);
                let total = dc[j] + d[j] * o[j] * (1.0 - tc * tc);
                dao[j] = d[j] * tc * o[j] * (1.0 - o[j]);
                dai[j] = total * gg[j] * i[j] * (1.0 - i[j]);
                daf[j] = total * cp[j] * f[j] * (1.0 - f[j]);
                dag[j] = total * i[j] * (1.0 - gg[j] * gg[j]);
                dc[j] = total * f[j];
            }
        }
    }
}

/// Runs `each(rows)` on every thread of libtorch's team, each with its share of the batch's `batch` rows.
/// The batch's rows are independent through a layer's recurrence (only the weights, which are read, are
/// shared), so each thread runs its rows through all the steps on its own: no fork or join per step, and
/// each step's product (`rows x [h, kh]`) is MKL's on one thread, called directly on the slices
/// ([`gemm`]), which at these sizes runs about as fast per row as two threads on all rows would, without
/// their synchronisation.
fn by_rows(batch: i64, each: &(dyn Fn(&Range<usize>) + Sync)) {
    parallel_rows(batch as usize, &|rows| {
        let _guard = tch::no_grad_guard();
        each(&rows);
    });
}

/// A GRU layer forward, `h` units, over `x` `[steps, B, 3h]` (the input projections `x W_x + b`) with
/// `w_hh` `[h, 3h]` (row-major) and `b_hn` `[h]`: fills `hs` `[steps + 1, B, h]` (step 0 given), the gates
/// `[steps, B, 3h]` and `hn` `[steps, B, h]` ([`gru_forward`]); `hw` `[B, 3h]` is working space.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gru_forward_layer(
    h: usize,
    x: &Tensor,
    w_hh: &Tensor,
    b_hn: &Tensor,
    hs: &Tensor,
    gates: &Tensor,
    hn: &Tensor,
    hw: &Tensor,
) {
    let (xs, b, hss, gs, hns) = (steps(x), steps(b_hn), steps(hs), steps(gates), steps(hn));
    let (hws, w_hh) = (steps(&hw.unsqueeze(0)), steps(w_hh));
    let w = 3 * h;
    let count = x.size()[0];
    by_rows(x.size()[1], &|r| {
        for t in 0..count {
            // SAFETY: this thread alone writes its rows of hw, of step t of gates and hn and of step t + 1 of
            // hs, and reads its rows of step t of hs.
            let hw = unsafe { hws.rows_mut(0, r, w) };
            gemm(r.len(), w, h, hss.rows(t, r, h), w_hh.whole(), 0.0, hw);
            let (g, n, next) = unsafe { (gs.rows_mut(t, r, w), hns.rows_mut(t, r, h), hss.rows_mut(t + 1, r, h)) };
            gru_forward(h, xs.rows(t, r, w), hws.rows(0, r, w), b.whole(), hss.rows(t, r, h), g, n, next);
        }
    });
}

/// A GRU layer backward, `h` units, from `d` `[steps, B, h]`, the gradients reaching the outputs (working
/// space: what reaches each step's state is added in), the forward pass's `gates`, `hn` and `hs`, and
/// `w_hh_t` `[3h, h]`: fills `dx` and `dh` `[steps, B, 3h]`, the gradients of the input projections and of
/// `h W_hh + [0, 0, b_hn]` ([`gru_backward`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gru_backward_layer(
    h: usize,
    d: &Tensor,
    gates: &Tensor,
    hn: &Tensor,
    hs: &Tensor,
    w_hh_t: &Tensor,
    dx: &Tensor,
    dh: &Tensor,
) {
    let (ds, gs, hns, hss, dxs, dhs) = (steps(d), steps(gates), steps(hn), steps(hs), steps(dx), steps(dh));
    let w_hh_t = steps(w_hh_t);
    let w = 3 * h;
    let count = d.size()[0];
    by_rows(d.size()[1], &|r| {
        for t in (0..count).rev() {
            // SAFETY: this thread alone writes its rows of step t of dx and dh and of step t - 1 of d; it
            // reads its rows of step t of d, another step.
            let (x, y, before) =
                unsafe { (dxs.rows_mut(t, r, w), dhs.rows_mut(t, r, w), (t > 0).then(|| ds.rows_mut(t - 1, r, h))) };
            gru_backward(h, ds.rows(t, r, h), gs.rows(t, r, w), hns.rows(t, r, h), hss.rows(t, r, h), x, y, before);
            if t > 0 {
                // SAFETY: as above, step t - 1 of d.
                gemm(r.len(), h, w, dhs.rows(t, r, w), w_hh_t.whole(), 1.0, unsafe { ds.rows_mut(t - 1, r, h) });
            }
        }
    });
}

/// An LSTM layer forward, `h` units, over `x` `[steps, B, 4h]` (the input projections) with `w_hh`
/// `[h, 4h]`: fills `gates` `[steps, B, 4h]` (activated), `cs` and `hs` `[steps + 1, B, h]` (step 0 given)
/// ([`lstm_forward`]).
pub(crate) fn lstm_forward_layer(h: usize, x: &Tensor, w_hh: &Tensor, gates: &Tensor, cs: &Tensor, hs: &Tensor) {
    let (xs, gs, css, hss, w_hh) = (steps(x), steps(gates), steps(cs), steps(hs), steps(w_hh));
    let count = x.size()[0];
    by_rows(x.size()[1], &|r| {
        for t in 0..count {
            // SAFETY: this thread alone writes its rows of step t of gates and of step t + 1 of cs and hs.
            let (g, c, out) =
                unsafe { (gs.rows_mut(t, r, 4 * h), css.rows_mut(t + 1, r, h), hss.rows_mut(t + 1, r, h)) };
            // The pre-activations x W_x + b + h W_hh.
            g.copy_from_slice(xs.rows(t, r, 4 * h));
            gemm(r.len(), 4 * h, h, hss.rows(t, r, h), w_hh.whole(), 1.0, g);
            lstm_forward(h, g, css.rows(t, r, h), c, out);
        }
    });
}

/// An LSTM layer backward, `h` units, from `d` `[steps, B, h]` (working space, as for the GRU), the forward
/// pass's `gates` and `cs`, and `w_hh_t` `[4h, h]`: fills `da` `[steps, B, 4h]`, the gradients of the gate
/// pre-activations ([`lstm_backward`]); `dc` `[1, B, h]`, zero, is working space.
pub(crate) fn lstm_backward_layer(
    h: usize,
    d: &Tensor,
    gates: &Tensor,
    cs: &Tensor,
    w_hh_t: &Tensor,
    da: &Tensor,
    dc: &Tensor,
) {
    let (ds, gs, css, das, dcs, w_hh_t) = (steps(d), steps(gates), steps(cs), steps(da), steps(dc), steps(w_hh_t));
    let count = d.size()[0];
    by_rows(d.size()[1], &|r| {
        for t in (0..count).rev() {
            // SAFETY: this thread alone writes its rows of step t of da and of dc.
            let (a, c) = unsafe { (das.rows_mut(t, r, 4 * h), dcs.rows_mut(0, r, h)) };
            lstm_backward(h, ds.rows(t, r, h), gs.rows(t, r, 4 * h), css.rows(t, r, h), css.rows(t + 1, r, h), a, c);
            if t > 0 {
                // SAFETY: this thread alone writes its rows of step t - 1 of d.
                gemm(r.len(), h, 4 * h, das.rows(t, r, 4 * h), w_hh_t.whole(), 1.0, unsafe {
                    ds.rows_mut(t - 1, r, h)
                });
            }
        }
    });
}

/// `t`'s steps as slices: the kernels get contiguous Float tensors on the CPU.
fn steps(t: &Tensor) -> Steps {
    Steps::of(t).expect("the CPU kernels get contiguous Float tensors on the CPU")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every float32 from -100 to 100 in steps of about 1e-3, and the small values around 0.
    fn inputs() -> impl Iterator<Item = f32> {
        (-100_000..=100_000).map(|i| i as f32 * 1e-3).chain((-300..=300).map(|i| i as f32 * 1e-7))
    }

    #[test]
    fn exp_sigmoid_and_tanh_agree_with_double_precision() {
        // Against f64's own functions: exp to a few float32 ulps relative, the gates to about 1e-7 absolute
        // (their values lie in [-1, 1], where float32's spacing near 1 is 6e-8).
        let mut worst = [0f64; 3];
        for x in inputs() {
            let xd = f64::from(x);
            if xd.abs() < 80.0 {
                worst[0] = worst[0].max((f64::from(exp(x)) - xd.exp()).abs() / xd.exp());
            }
            worst[1] = worst[1].max((f64::from(sigmoid(x)) - 1.0 / (1.0 + (-xd).exp())).abs());
            worst[2] = worst[2].max((f64::from(tanh(x)) - xd.tanh()).abs());
        }
        assert!(worst[0] < 4.0 * f64::from(f32::EPSILON), "exp: relative {:e}", worst[0]);
        assert!(worst[1] < 2.0 * f64::from(f32::EPSILON), "sigmoid: {:e}", worst[1]);
        assert!(worst[2] < 2.0 * f64::from(f32::EPSILON), "tanh: {:e}", worst[2]);
        // The extremes saturate instead of overflowing to inf or NaN.
        assert_eq!((sigmoid(1e4), tanh(-1e4), tanh(1e4)), (1.0, -1.0, 1.0));
        assert!((0.0..1e-37).contains(&sigmoid(-1e4)));
    }
}
