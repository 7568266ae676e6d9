//! Tolerances for the unit tests' floating-point comparisons, derived from the arithmetic rather than
//! from one machine's output.

/// The largest relative difference expected between two float32 evaluations of the same network that add
/// the same terms in different orders, as MKL's and ATen's AVX-512, AVX2 and scalar kernels do (each
/// blocks its sums differently): a sum of `terms` products is good to `terms · 2⁻²⁴` relative to the sum
/// of their magnitudes (Higham's γₙ), and `depth` such sums lie on the longest path from the inputs to the
/// compared value (steps × layers through a recurrence, twice that for a gradient). First order, ignoring
/// amplification by the weights: measured differences sit one to two orders of magnitude below it, while
/// a wrong gate, term or index changes values by 10⁻² or more.
pub(crate) fn fp32_reorder_bound(terms: usize, depth: usize) -> f64 {
    (terms * depth) as f64 * f64::from(f32::EPSILON) / 2.0
}

/// Asserts `max |ours - theirs| <= bound · max |theirs|`: the error of each element is relative to the
/// magnitude of the terms that made it, which the largest element stands for.
pub(crate) fn assert_close_to(what: &str, ours: &tch::Tensor, theirs: &tch::Tensor, bound: f64) {
    let diff = (ours - theirs).abs().max().double_value(&[]);
    let scale = theirs.abs().max().double_value(&[]);
    assert!(
        diff <= bound * scale,
        "{what}: max difference {diff:e} exceeds {:e} (bound {bound:e} × magnitude {scale:e})",
        bound * scale
    );
}
