//! Backpropagation through time written out for the tanh RNN (the textbook's cell): a minibatch's loss and
//! gradients without autograd.
//!
//! Autograd records every operation of every time step and replays each backward; written out, the
//! backward pass is one matrix product and one multiply per step and layer, the weight gradients are one
//! large product each over all steps, and the softmax's gradient is computed in the logits' buffer.
//! `gradients_equal_autograds` checks every gradient against autograd's.
use crate::model::{step_major, Backend, Cell, ModelConfig, Precision, RnnModel, State, B_H, W_HH, W_XH};
use tch::{Kind, Tensor};

/// Whether [`loss_and_grads`] computes this model: the tanh cell, written out (the scratch backend), without
/// dropout. Other models train through autograd.
pub fn supports(config: &ModelConfig) -> bool {
    config.cell == Cell::Rnn && config.backend == Backend::Scratch && config.dropout == 0.0
}

/// What one pass over a minibatch gives.
pub struct Pass {
    /// Mean cross-entropy (nats) over the minibatch: a scalar Float.
    pub loss: Tensor,
    /// The loss's gradient for each parameter, in [`ModelConfig::param_specs`] order and shapes.
    pub grads: Vec<Tensor>,
    /// The final state, `[layers, batch, H]`, not attached to any graph.
    pub state: State,
}

/// Forward pass, mean cross-entropy and its gradients for a model that [`supports`] accepts.
///
/// `inputs`, `targets`: Int64 `[batch, steps]`; `state.h`: the initial state `[layers, batch, H]`, treated as
/// a constant (truncated BPTT: no gradient flows into it). The output layer's three products are at
/// `precision`.
pub fn loss_and_grads(model: &RnnModel, inputs: &Tensor, targets: &Tensor, state: &State, precision: Precision) -> Pass {
    let _guard = tch::no_grad_guard();
    let c = model.config();
    let params = model.parameters();
    let (batch, steps) = (inputs.size()[0], inputs.size()[1]);
    let (h, n) = (c.hidden as i64, batch * steps);
    let ids = step_major(inputs);
    // The embedding rows of the inputs, [n, D], when there is an embedding.
    let embedded = (c.embed > 0).then(|| params[0].index_select(0, &ids));

    // Forward. Each layer's states go to one buffer [steps + 1, batch, H] whose row 0 is the initial state,
    // so that step t reads row t and writes row t + 1, and the backward pass finds every h_{t-1} in place.
    let mut states: Vec<Tensor> = Vec::with_capacity(c.layers);
    for l in 0..c.layers {
        let (w_xh, w_hh, b_h) = (model.layer_param(l, W_XH), model.layer_param(l, W_HH), model.layer_param(l, B_H));
        let projected = match (l, &embedded) {
            // One-hot rows times W_xh are rows of W_xh.
            (0, None) => w_xh.index_select(0, &ids) + b_h,
            (0, Some(rows)) => b_h.addmm(rows, w_xh),
            _ => b_h.addmm(&outputs(&states[l - 1], steps, n, h), w_xh),
        }
        .view([steps, batch, h]);
        let hs = Tensor::empty([steps + 1, batch, h], (Kind::Float, model.device()));
        hs.get(0).copy_(&state.h.get(l as i64));
        for t in 0..steps {
            let mut next = projected.get(t).addmm_out(&hs.get(t + 1), &hs.get(t), w_hh);
            let _ = next.tanh_();
        }
        states.push(hs);
    }
    let top = outputs(&states[c.layers - 1], steps, n, h);
    let (w_hq, b_q) = (model.output_weight(), model.output_bias());
    // The output layer's operands at `precision`: `top [n, H]`, `w [H, V]`.
    let kind = match precision {
        Precision::Fp32 => Kind::Float,
        Precision::Bf16 => Kind::BFloat16,
    };
    let (top_k, w_k) = (top.to_kind(kind), w_hq.to_kind(kind));
    let logits = b_q.to_kind(kind).addmm(&top_k, &w_k);

    // Loss: the mean over rows of -log softmax(row)[target]. Its gradient with respect to the logits is
    // (softmax(row) - one_hot(target)) / n: `d` below holds n times that, and the 1/n goes on the (smaller)
    // products of `d`.
    let ys = step_major(targets).view([n, 1]);
    let (loss, mut d) = match precision {
        Precision::Fp32 => {
            let mut log_p = logits.log_softmax(1, Kind::Float);
            let loss = -log_p.gather(1, &ys, false).mean(Kind::Float);
            let _ = log_p.exp_();
            (loss, log_p)
        }
        Precision::Bf16 => {
            // The softmax in bfloat16, one pass; the loss from its target probabilities, each good to about
            // 0.4% (one that underflows below float32's smallest normal, 1.2e-38, counts as 87.3 nats).
            let p = logits.softmax(1, Kind::BFloat16);
            let p_target = p.gather(1, &ys, false).to_kind(Kind::Float).clamp_min(f64::from(f32::MIN_POSITIVE));
            (-p_target.log().mean(Kind::Float), p)
        }
    };
    drop(logits);
    let _ = d.scatter_add_(1, &ys, &Tensor::full([n, 1], -1.0, (kind, d.device())));
    let inv_n = 1.0 / n as f64;

    let mut grads: Vec<Tensor> = params.iter().map(|_| Tensor::new()).collect();
    let last = grads.len();
    grads[last - 1] = d.sum_dim_intlist(0, false, Kind::Float) * inv_n;
    grads[last - 2] = top_k.tr().mm(&d).to_kind(Kind::Float) * inv_n;
    // The gradient reaching each layer's outputs, [steps, batch, H]; the loop below turns it, in place, into
    // the gradient of the layer's pre-activations (x W_xh + h W_hh + b_h).
    let mut d_out = (d.mm(&w_k.tr()).to_kind(Kind::Float) * inv_n).view([steps, batch, h]);
    drop(d);

    for l in (0..c.layers).rev() {
        let (w_xh, w_hh) = (model.layer_param(l, W_XH), model.layer_param(l, W_HH));
        let hs = &states[l];
        // tanh'(a) = 1 - tanh(a)^2, for all steps at once.
        let mut slope = hs.narrow(0, 1, steps).square();
        let _ = slope.neg_().g_add_scalar_(1.0);
        let w_hh_t = w_hh.tr();
        // d a_t = (d out_t + d a_{t+1} W_hh^T) * tanh'(a_t), from the last step back.
        let _ = d_out.get(steps - 1).g_mul_(&slope.get(steps - 1));
        for t in (1..steps).rev() {
            let mut before = d_out.get(t - 1);
            let _ = before.addmm_(&d_out.get(t), &w_hh_t);
            let _ = before.g_mul_(&slope.get(t - 1));
        }
        let d_a = d_out.view([n, h]);
        grads[model.layer_index(l, W_HH)] = hs.narrow(0, 0, steps).reshape([n, h]).tr().mm(&d_a);
        grads[model.layer_index(l, B_H)] = d_a.sum_dim_intlist(0, false, Kind::Float);
        let w_xh_grad = model.layer_index(l, W_XH);
        match (l, &embedded) {
            (0, None) => grads[w_xh_grad] = scatter_rows(w_xh, &ids, &d_a),
            (0, Some(rows)) => {
                grads[w_xh_grad] = rows.tr().mm(&d_a);
                grads[0] = scatter_rows(params[0], &ids, &d_a.mm(&w_xh.tr()));
            }
            _ => {
                grads[w_xh_grad] = outputs(&states[l - 1], steps, n, h).tr().mm(&d_a);
                d_out = d_a.mm(&w_xh.tr()).view([steps, batch, h]);
            }
        }
    }
    let end: Vec<Tensor> = states.iter().map(|hs| hs.get(steps)).collect();
    Pass { loss, grads, state: State { h: Tensor::stack(&end, 0), c: None } }
}

/// The gradient of a table (`like`, `[V, k]`) whose rows `ids` (`[n]`) were gathered, given the rows'
/// gradient `d_rows` `[n, k]`: a zero table with each row of `d_rows` added at its index.
fn scatter_rows(like: &Tensor, ids: &Tensor, d_rows: &Tensor) -> Tensor {
    let mut grad = like.zeros_like();
    let _ = grad.index_add_(0, ids, d_rows);
    grad
}

/// A layer's outputs h_1..h_steps from its state buffer `[steps + 1, batch, H]`, as rows `[n, H]`.
fn outputs(hs: &Tensor, steps: i64, n: i64, h: i64) -> Tensor {
    hs.narrow(0, 1, steps).reshape([n, h])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::cross_entropy;
    use tch::Device;

    fn autograd(model: &RnnModel, inputs: &Tensor, targets: &Tensor, state: &State) -> (f64, Vec<Tensor>, Tensor) {
        for p in model.parameters() {
            p.shallow_clone().zero_grad();
        }
        let (logits, end) = model.forward(inputs, state, true);
        let loss = cross_entropy(&logits, &step_major(targets));
        loss.backward();
        (loss.double_value(&[]), model.parameters().iter().map(|p| p.grad().copy()).collect(), end.h.detach())
    }

    #[test]
    fn gradients_equal_autograds() {
        for (layers, embed) in [(1, 0), (3, 0), (2, 5)] {
            let config = ModelConfig { layers, embed, ..ModelConfig::rnn(13, 9) };
            let model = RnnModel::new(config, 2, Device::Cpu).unwrap();
            // Weights well above the textbook's 0.01, so that every path of the gradient matters.
            let values: Vec<Tensor> = model.parameters().iter().map(|p| p.detach() * 60.0 + 0.02).collect();
            model.set_parameters(&values).unwrap();
            tch::manual_seed(3);
            let inputs = Tensor::randint(13, [4, 7], (Kind::Int64, Device::Cpu));
            let targets = Tensor::randint(13, [4, 7], (Kind::Int64, Device::Cpu));
            let state = State { h: Tensor::randn([layers as i64, 4, 9], (Kind::Float, Device::Cpu)) * 0.5, c: None };
            let (loss, grads, end) = autograd(&model, &inputs, &targets, &state);
            let pass = loss_and_grads(&model, &inputs, &targets, &state, Precision::Fp32);
            let what = format!("{layers} layers, embed {embed}");
            assert!((pass.loss.double_value(&[]) - loss).abs() < 1e-6, "{what}: loss");
            assert!(pass.state.h.allclose(&end, 1e-6, 1e-6, false), "{what}: final state");
            for ((name, _), (ours, theirs)) in model.named_parameters().iter().zip(pass.grads.iter().zip(&grads)) {
                assert!(theirs.abs().max().double_value(&[]) > 1e-4, "{what}: {name}'s gradient should not vanish");
                assert!(ours.allclose(theirs, 1e-4, 1e-6, false), "{what}: gradient of {name}");
            }
        }
    }

    #[test]
    fn bf16_products_stay_close_to_fp32() {
        let model = RnnModel::new(ModelConfig::rnn(50, 32), 1, Device::Cpu).unwrap();
        tch::manual_seed(4);
        let inputs = Tensor::randint(50, [8, 10], (Kind::Int64, Device::Cpu));
        let targets = Tensor::randint(50, [8, 10], (Kind::Int64, Device::Cpu));
        let state = model.begin_state(8);
        let exact = loss_and_grads(&model, &inputs, &targets, &state, Precision::Fp32);
        let bf16 = loss_and_grads(&model, &inputs, &targets, &state, Precision::Bf16);
        assert!((exact.loss.double_value(&[]) - bf16.loss.double_value(&[])).abs() < 1e-3);
        for (a, b) in exact.grads.iter().zip(&bf16.grads) {
            // bfloat16 keeps 8 significant bits: each product is good to about 1%.
            let scale = a.abs().max().double_value(&[]);
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff <= 0.02 * scale, "difference {diff} against magnitude {scale}");
        }
        assert!(!exact.grads[3].equal(&bf16.grads[3]), "the output layer's gradient is computed in bfloat16");
    }

    #[test]
    fn only_the_written_out_tanh_cell_without_dropout_is_supported() {
        let base = ModelConfig::rnn(5, 4);
        assert!(supports(&base) && supports(&ModelConfig { layers: 2, embed: 3, ..base }));
        assert!(!supports(&ModelConfig { cell: Cell::Gru, ..base }));
        assert!(!supports(&ModelConfig { dropout: 0.1, ..base }));
        assert!(!supports(&ModelConfig { backend: Backend::Fused, ..base }));
    }
}
