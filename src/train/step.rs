//! One training step: forward, mean cross-entropy, backward (written out, or autograd), gradient clipping
//! by the global norm, and the update.
use crate::model::bptt;
use crate::model::config::Dtype;
use crate::model::dropout::Dropout;
use crate::model::network::Network;
use crate::model::ops::{cross_entropy, step_major};
use crate::model::state::State;
#[cfg(test)]
use crate::train::optim::clip_factor;
use crate::train::optim::Optimizer;
use crate::world::world;
use tch::{Kind, Tensor};

/// The state for the next minibatch: carried values, cut from the previous minibatch's graph so that
/// backpropagation stops at the minibatch boundary (truncated BPTT).
pub fn carry_state(state: &State) -> State {
    state.detach()
}

/// What one training step produced.
pub struct StepOutput {
    /// The minibatch's mean cross-entropy before the update (scalar Float, detached).
    pub loss: Tensor,
    /// The gradient's global L2 norm before clipping (scalar Float).
    pub grad_norm: Tensor,
    /// The loss's gradients before clipping, in [`crate::ModelConfig::param_specs`] order: views of the
    /// model's flat gradient buffer, which the next step overwrites.
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
    let (loss, state) = if bptt::supports(&model.config()) {
        // It writes the gradient into the model's flat gradient buffer itself.
        let pass = bptt::loss_and_grads(model, inputs, targets, state, precision);
        (pass.loss, pass.state)
    } else {
        let (logits, h) = model.forward_at(inputs, state, dropout, precision);
        let loss = cross_entropy(&logits, &step_major(targets));
        model.store_gradients(&Tensor::run_backward(&[&loss], &model.autograd_inputs(), false, false));
        (loss.detach(), h)
    };
    let loss = average_over_ranks(model, loss);
    let grad_norm = optimizer.update(model, clip);
    StepOutput { loss, grad_norm, grads: model.gradients(), state }
}

/// With several processes training together ([`crate::World`]), each having computed the loss and
/// gradient of an equal share of the minibatch's rows: the mean of the ranks' gradients (summed in place in
/// the model's flat gradient buffer) and of their losses, which are the whole minibatch's. Every rank gets
/// the same sums, so every rank's update is the same. `loss`: scalar Float.
fn average_over_ranks(model: &Network, loss: Tensor) -> Tensor {
    let world = world();
    if world.size() == 1 {
        return loss;
    }
    let share = 1.0 / world.size() as f64;
    let grad = model.gradient();
    world.sum_tensor(grad);
    let _ = grad.shallow_clone().g_mul_scalar_(share);
    let loss = loss.to_kind(Kind::Float).reshape([1]).copy();
    world.sum_tensor(&loss);
    loss.reshape([]) * share
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, Backend, Cell, Init, ModelConfig};
    use crate::train::optim::OptimizerKind;
    use tch::Device;
    use tch::Kind;

    fn norm(grads: &[Tensor]) -> f64 {
        grads.iter().map(|g| g.square().sum(Kind::Double).double_value(&[])).sum::<f64>().sqrt()
    }

    /// The gradients one after another, `[P]`.
    fn flat(grads: &[Tensor]) -> Tensor {
        Tensor::cat(&grads.iter().map(|g| g.reshape([-1])).collect::<Vec<_>>(), 0)
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
        let (reported, scale) = clip_factor(&flat(&grads), 1e-3);
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
        let (_, scale) = clip_factor(&flat(&grads), 1e6);
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
        m.store_gradients(&grads);
        sgd.step(m.values(), m.gradient(), &Tensor::from(0.25f32));
        for ((p, b), g) in params.iter().zip(&before).zip(&grads) {
            assert!(p.detach().allclose(&(b - g * 0.125), 1e-6, 1e-7, false));
        }
    }

    #[test]
    fn a_fused_grus_unused_bias_stays_zero_while_it_trains() {
        // cuDNN's b_hh [3H] holds b_hn in its last third. The kernel also differentiates the first two thirds
        // (their gradient is b_h's r and z parts'), which are no parameter and must not move.
        let arch = Arch { cell: Cell::Gru, layers: 2, backend: Backend::Fused, init: Init::Uniform, ..Arch::rnn(4) };
        let m = Network::new(ModelConfig::new(6, arch), 1, Device::Cpu).unwrap();
        let x = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]).view([2, 3]);
        let y = (&x + 1).remainder(6);
        let (logits, _) = m.forward(&x, &m.begin_state(2), Dropout::Seeded(1));
        let raw = Tensor::run_backward(&[cross_entropy(&logits, &step_major(&y))], &m.autograd_inputs(), false, false);
        // Saved order E?, W_xh, W_hh, b_h, b_hn: the kernel's whole b_hh stands in b_hn's place.
        assert_eq!(raw[3].size(), vec![12]);
        assert!(raw[3].narrow(0, 0, 8).abs().max().double_value(&[]) > 1e-4, "the zeroing has work to do");
        let mut adam = Optimizer::new(OptimizerKind::Adam, &m, 0.01).unwrap();
        let options =
            StepOptions { clip: 1.0, precision: crate::model::config::Dtype::Fp32, dropout: Dropout::Seeded(1) };
        let before = m.parameter_copies();
        for _ in 0..5 {
            let _ = train_step(&m, &x, &y, &m.begin_state(2), &options, &mut adam);
        }
        for unused in m.layout().unused(m.values()) {
            assert_eq!(unused.abs().max().double_value(&[]), 0.0);
        }
        let b_hn = |ps: &[Tensor]| ps[3].copy();
        assert!(!b_hn(&m.parameter_copies()).equal(&b_hn(&before)), "b_hn itself trains");
    }
}
