//! One training step: forward, mean cross-entropy, backward (written out, or autograd), gradient clipping
//! by the global norm, and the update.
use crate::model::bptt;
use crate::model::config::Dtype;
use crate::model::dropout::Dropout;
use crate::model::network::Network;
use crate::model::ops::{cross_entropy, step_major};
use crate::model::state::State;
use crate::train::optim::Optimizer;
use tch::{Kind, Tensor};

/// The state for the next minibatch: carried values, cut from the previous minibatch's graph so that
/// backpropagation stops at the minibatch boundary (truncated BPTT).
pub fn carry_state(state: &State) -> State {
    state.detach()
}

/// The gradients' global L2 norm `||g||` (over all of them together) and the clipping factor
/// `min(theta / ||g||, 1)` that scales them to a norm of at most `theta`: scalar Float tensors, left on the
/// device (no read-back).
pub fn clip_factor(grads: &[Tensor], theta: f64) -> (Tensor, Tensor) {
    let _guard = tch::no_grad_guard();
    let squares: Vec<Tensor> = grads
        .iter()
        .map(|g| {
            let flat = g.reshape([-1]);
            flat.dot(&flat)
        })
        .collect();
    let norm = Tensor::stack(&squares, 0).sum(Kind::Float).sqrt();
    let scale = (theta / &norm).clamp_max(1.0);
    (norm, scale)
}

/// What one training step produced.
pub struct StepOutput {
    /// The minibatch's mean cross-entropy before the update (scalar Float, detached).
    pub loss: Tensor,
    /// The gradient's global L2 norm before clipping (scalar Float).
    pub grad_norm: Tensor,
    /// The loss's gradients before clipping, in [`crate::ModelConfig::param_specs`] order (under autograd, the
    /// parameters' `grad()` buffers, which the next step overwrites).
    pub grads: Vec<Tensor>,
    /// The final state, `[layers, batch, H]` tensors, possibly attached to this step's graph (pass it
    /// through [`carry_state`] before using it again).
    pub state: State,
}

/// How a step is taken, besides its minibatch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepOptions {
    /// Gradient clipping threshold theta on the global L2 norm.
    pub clip: f64,
    /// The precision of the output layer's products.
    pub precision: Dtype,
    /// The minibatch's dropout masks (their seed).
    pub dropout: Dropout,
}

/// One training step on a minibatch: forward, mean cross-entropy, backward, clip, update.
///
/// `inputs`, `targets`: Int64 `[batch, steps]`; `state`: `[layers, batch, H]` tensors. The written-out cells
/// without dropout take the written-out backward pass (`bptt`); other models, autograd.
pub fn train_step(
    model: &Network,
    inputs: &Tensor,
    targets: &Tensor,
    state: &State,
    options: &StepOptions,
    optimizer: &mut Optimizer,
) -> StepOutput {
    let StepOptions { clip, precision, dropout } = *options;
    let params = model.parameters();
    let (loss, grads, state) = if bptt::supports(&model.config()) {
        let pass = bptt::loss_and_grads(model, inputs, targets, state, precision);
        (pass.loss, pass.grads, pass.state)
    } else {
        for p in &params {
            p.shallow_clone().zero_grad();
        }
        let (logits, h) = model.forward_at(inputs, state, dropout, precision);
        let loss = cross_entropy(&logits, &step_major(targets));
        loss.backward();
        (loss.detach(), params.iter().map(|p| p.grad()).collect(), h)
    };
    let (grad_norm, scale) = clip_factor(&grads, clip);
    optimizer.step(&params, &grads, &scale);
    StepOutput { loss, grad_norm, grads, state }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, Cell, ModelConfig};
    use crate::train::optim::OptimizerKind;
    use tch::Device;

    fn norm(grads: &[Tensor]) -> f64 {
        grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt()
    }

    /// A model and its loss's gradients.
    fn model_with_grads() -> (Network, Vec<Tensor>) {
        let m = Network::new(ModelConfig::rnn(6, 4), 1, Device::Cpu).unwrap();
        let x = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]).view([2, 3]);
        let (logits, _) = m.forward(&x, &m.begin_state(2), Dropout::Seeded(1));
        cross_entropy(&logits, &step_major(&(x + 1).remainder(6))).backward();
        let grads = m.parameters().iter().map(|p| p.grad().copy()).collect();
        (m, grads)
    }

    #[test]
    fn clipping_caps_the_global_norm_and_keeps_direction() {
        let (_, grads) = model_with_grads();
        let before = norm(&grads);
        assert!(before > 1e-3, "test needs a gradient larger than theta, got {before}");
        let (reported, scale) = clip_factor(&grads, 1e-3);
        assert!((reported.double_value(&[]) - before).abs() < 1e-6 * before);
        let clipped: Vec<Tensor> = grads.iter().map(|g| g * &scale).collect();
        assert!((norm(&clipped) - 1e-3).abs() <= 1e-3 * 1e-5);
        for (c, g) in clipped.iter().zip(&grads) {
            assert!(c.allclose(&(g * (1e-3 / before)), 1e-5, 1e-10, false));
        }
    }

    #[test]
    fn clipping_leaves_small_gradients_alone() {
        let (_, grads) = model_with_grads();
        let (_, scale) = clip_factor(&grads, 1e6);
        assert_eq!(scale.double_value(&[]), 1.0);
    }

    #[test]
    fn detached_state_cuts_the_gradient_to_the_previous_minibatch() {
        let x = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]).view([2, 3]);
        let y = step_major(&(&x + 1).remainder(6));
        let reached = |t: &Tensor| t.grad().defined() && t.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0;
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            let m =
                Network::new(ModelConfig::new(6, Arch { cell, layers: 2, ..Arch::rnn(4) }), 1, Device::Cpu).unwrap();
            for detach in [true, false] {
                let zeros = m.begin_state(2);
                let s0 = State { h: zeros.h.set_requires_grad(true), c: zeros.c.map(|c| c.set_requires_grad(true)) };
                let (_, s1) = m.forward(&x, &s0, Dropout::Seeded(1));
                let s1 = if detach { carry_state(&s1) } else { s1 };
                let (logits, _) = m.forward(&x, &s1, Dropout::Seeded(1));
                cross_entropy(&logits, &y).backward();
                assert_eq!(reached(&s0.h), !detach, "{cell:?} h, detach={detach}");
                if let Some(c) = &s0.c {
                    assert_eq!(reached(c), !detach, "{cell:?} c, detach={detach}");
                }
            }
        }
    }

    #[test]
    fn sgd_moves_against_the_scaled_gradient() {
        let (m, grads) = model_with_grads();
        let params = m.parameters();
        let before: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
        let mut sgd = Optimizer::new(OptimizerKind::Sgd, &m, 0.5).unwrap();
        sgd.step(&params, &grads, &Tensor::from(0.25f32));
        for ((p, b), g) in params.iter().zip(&before).zip(&grads) {
            assert!(p.detach().allclose(&(b - g * 0.125), 1e-6, 1e-7, false));
        }
    }
}
