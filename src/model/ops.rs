//! The operations around the network: one-hot encoding, the loss, the step-major order of positions, and the
//! softmax of one row of logits computed on the host.
use tch::{Kind, Tensor};

/// One-hot encoding through `scatter` (the textbook's `one_hot(x, n_class)`).
///
/// `x`: Int64 indices of shape `[n]`; returns Float `[n, n_class]` with a single 1 in each row.
pub fn one_hot(x: &Tensor, n_class: usize) -> Tensor {
    let n = x.size()[0];
    Tensor::zeros([n, n_class as i64], (Kind::Float, x.device())).scatter_value(1, &x.view([-1, 1]), 1.0)
}

/// Mean cross-entropy (nats) of `logits` `[n, V]` against Int64 `targets` `[n]`: a scalar Float tensor.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.cross_entropy_for_logits(targets)
}

/// Targets `[batch, steps]` reordered step-major, `[steps * batch]`, to line up with
/// [`crate::Network::forward`].
pub fn step_major(targets: &Tensor) -> Tensor {
    targets.transpose(0, 1).reshape([-1])
}

/// A row of logits' maximum `m` and `sum_i exp(row_i - m)`, in f64: the softmax's terms shifted so that they
/// never overflow.
fn shifted_sum(row: &[f32]) -> (f64, f64) {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, &l| m.max(l as f64));
    (max, row.iter().map(|&l| (l as f64 - max).exp()).sum())
}

/// `ln sum_i exp(row_i)` of one row of logits, in f64.
pub(crate) fn logsumexp(row: &[f32]) -> f64 {
    let (max, sum) = shifted_sum(row);
    max + sum.ln()
}

/// The probability a row of logits gives index `c` (temperature 1): `softmax(row)[c]`, in f64.
pub(crate) fn probability(row: &[f32], c: usize) -> f64 {
    let (max, sum) = shifted_sum(row);
    (row[c] as f64 - max).exp() / sum
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn one_hot_rows_have_a_single_one_at_the_index() {
        let x = Tensor::from_slice(&[0i64, 3, 6, 3]);
        let oh = one_hot(&x, 7);
        assert_eq!(oh.size(), vec![4, 7]);
        assert!(oh.sum_dim_intlist(1, false, Kind::Float).equal(&Tensor::ones([4], (Kind::Float, Device::Cpu))));
        assert!(oh.argmax(1, false).equal(&x));
        assert_eq!(oh.sum(Kind::Float).double_value(&[]), 4.0);
    }

    #[test]
    fn the_host_softmax_agrees_with_libtorchs_and_never_overflows() {
        let row = [2.0f32, 1.0, 0.5, 0.0, -1.0, 1.5];
        let theirs = Tensor::from_slice(&row).to_kind(Kind::Double).softmax(0, Kind::Double);
        for c in 0..row.len() {
            assert!((probability(&row, c) - theirs.double_value(&[c as i64])).abs() < 1e-12, "{c}");
        }
        // Logits of 1e4 would overflow exp without the shift: worked by hand, ln(e^a + e^a) = a + ln 2.
        assert!((logsumexp(&[1e4, 1e4]) - (1e4 + 2f64.ln())).abs() < 1e-9);
        assert_eq!(probability(&[1e4, -1e4], 0), 1.0);
    }
}
