//! Backpropagation through time written out for every cell (the textbook's tanh RNN, the GRU and the LSTM):
//! a minibatch's loss and gradients without autograd.
//!
//! Autograd records every operation of every time step and replays each backward; written out, the
//! backward pass is a matrix product and a few in-place multiplies per step and layer (the factors that do
//! not depend on the incoming gradient are computed for all steps at once beforehand), the weight gradients
//! are one large product each over all steps, and the softmax's gradient is computed in the logits' buffer.
//! On the CPU the gated cells' steps run in charrnn's own loops ([`gates`]); the gradients go straight into
//! the model's flat gradient buffer. `gradients_equal_autograds` checks every gradient against autograd's,
//! both ways.
use crate::model::config::{Backend, Cell, Dtype, ModelConfig};
use crate::model::gates;
use crate::model::network::Network;
use crate::model::ops::step_major;
use crate::model::params::Layer;
use crate::model::recurrence::gru_bias;
use crate::model::state::State;
use tch::{Device, Kind, Tensor};

/// Whether [`loss_and_grads`] computes this model: any cell written out (the scratch backend), without
/// dropout. Other models train through autograd.
pub fn supports(config: &ModelConfig) -> bool {
    config.arch.backend == Backend::Scratch && config.arch.dropout == 0.0
}

/// What one pass over a minibatch gives besides the gradient, which it writes into the model's flat
/// gradient buffer ([`Network::gradients`] reads it by parameter).
pub struct Pass {
    /// Mean cross-entropy (nats) over the minibatch: a scalar Float.
    pub loss: Tensor,
    /// The final state, `[layers, batch, H]`, not attached to any graph.
    pub state: State,
}

/// What a layer's forward pass keeps for its backward pass.
struct Tape {
    /// The layer's states `[steps + 1, batch, H]`; row 0 is the initial state, so that step t reads row t
    /// and writes row t + 1, and the backward pass finds every h_{t-1} in place.
    hs: Tensor,
    /// The cell's saved values.
    cell: Saved,
}

/// What a cell's backward pass needs besides the states.
enum Saved {
    Rnn,
    /// The gates r, z and the candidate n side by side, `[steps, batch, 3H]`, and `h W_hn + b_hn`,
    /// `[steps, batch, H]`.
    Gru {
        gates: Tensor,
        hn: Tensor,
    },
    /// The activated gates i, f, g, o side by side, `[steps, batch, 4H]`, and the memory cells
    /// `[steps + 1, batch, H]` (row 0 the initial one).
    Lstm {
        gates: Tensor,
        cs: Tensor,
    },
}

/// Forward pass, mean cross-entropy and its gradients for a model that [`supports`] accepts.
///
/// `inputs`, `targets`: Int64 `[batch, steps]`; `state`: the initial state (`h` and an LSTM's `c`, each
/// `[layers, batch, H]`), treated as a constant (truncated BPTT: no gradient flows into it). The output
/// layer's three products are at `precision`.
pub fn loss_and_grads(model: &Network, inputs: &Tensor, targets: &Tensor, state: &State, precision: Dtype) -> Pass {
    let kernels = inputs.device() == Device::Cpu;
    pass(model, inputs, targets, state, precision, kernels)
}

/// [`loss_and_grads`], with the gated cells' elementwise steps in charrnn's CPU kernels ([`gates`]) when
/// `kernels`, else in libtorch's operations (what a GPU runs).
fn pass(model: &Network, inputs: &Tensor, targets: &Tensor, state: &State, precision: Dtype, kernels: bool) -> Pass {
    let _guard = tch::no_grad_guard();
    let c = model.config();
    let p = model.named();
    let (batch, steps) = (inputs.size()[0], inputs.size()[1]);
    let (h, n) = (c.arch.hidden as i64, batch * steps);
    let ids = step_major(inputs);
    // The bottom layer's input. With fewer characters than the minibatch has positions, folded: the
    // positions gather rows of a table of every character's projection, [V, kH] (`W_xh + b_h` for one-hot
    // input; `E W_xh + b_h` for an embedding, which then costs V, not n, rows of products, forward and
    // back). Else one-hot rows gather rows of W_xh, or the embedding rows of the positions, [n, D], are
    // multiplied by W_xh.
    let fold = (c.vocab_size as i64) < n;
    let embedded = p.embedding.as_ref().filter(|_| !fold).map(|e| e.index_select(0, &ids));

    // Forward, layer by layer: the input projections x W_xh + b_h of all steps at once, [steps, batch, kH],
    // then the recurrence.
    let mut tapes: Vec<Tape> = Vec::with_capacity(c.arch.layers);
    for l in 0..c.arch.layers {
        let (w_xh, b_h) = (&p.layers[l].w_xh, &p.layers[l].b_h);
        let projected = match (l, &embedded, &p.embedding) {
            (0, Some(rows), _) => b_h.addmm(rows, w_xh),
            // One-hot rows times W_xh are rows of W_xh.
            (0, None, None) if fold => (w_xh + b_h).contiguous().index_select(0, &ids),
            (0, None, None) => w_xh.index_select(0, &ids) + b_h,
            (0, None, Some(table)) => b_h.addmm(table, w_xh).index_select(0, &ids),
            _ => b_h.addmm(&outputs(&tapes[l - 1].hs, steps, n, h), w_xh),
        }
        .view([steps, batch, -1]);
        let c0 = state.c.as_ref().map(|c| c.get(l as i64));
        tapes.push(forward_layer(model, l, &projected, &state.h.get(l as i64), c0.as_ref(), kernels));
    }
    let top = outputs(&tapes[c.arch.layers - 1].hs, steps, n, h);
    let (w_hq, b_q) = (&p.w_hq, &p.b_q);
    // The output layer's operands at `precision`: `top [n, H]`, `w [H, V]`.
    let kind = precision.kind();
    let (top_k, w_k) = (top.to_kind(kind), w_hq.to_kind(kind));
    let logits = b_q.to_kind(kind).addmm(&top_k, &w_k);

    // Loss: the mean over rows of -log softmax(row)[target]. Its gradient with respect to the logits is
    // (softmax(row) - one_hot(target)) / n: `d` below holds n times that, and the 1/n goes on the (smaller)
    // products of `d`.
    let ys = step_major(targets).view([n, 1]);
    let (loss, mut d) = match precision {
        Dtype::Fp32 => {
            let mut log_p = logits.log_softmax(1, Kind::Float);
            let loss = -log_p.gather(1, &ys, false).mean(Kind::Float);
            let _ = log_p.exp_();
            (loss, log_p)
        }
        Dtype::Bf16 => {
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

    // The gradients go straight into the model's flat gradient buffer, by role.
    let grads = model.layout().roles(model.gradient());
    put(&grads.b_q, &(d.sum_dim_intlist(0, false, Kind::Float) * inv_n));
    product_into(&grads.w_hq, &top_k.tr(), &d, inv_n);
    // The gradient reaching the top layer's outputs, [steps, batch, H].
    let mut d_out = (d.mm(&w_k.tr()).to_kind(Kind::Float) * inv_n).view([steps, batch, h]);
    drop(d);

    for l in (0..c.arch.layers).rev() {
        let w_xh = &p.layers[l].w_xh;
        // The gradient of the layer's input projection, [n, kH].
        let g = &grads.layers[l];
        let d_pre = backward_layer(model, l, &tapes[l], d_out.shallow_clone(), g, kernels);
        match (l, &embedded, &p.embedding) {
            (0, Some(rows), Some(_)) => {
                put(&g.b_h, &d_pre.sum_dim_intlist(0, false, Kind::Float));
                product_into(&g.w_xh, &rows.tr(), &d_pre, 1.0);
                scatter_rows_into(grads.embedding.as_ref().expect("an embedding"), &ids, &d_pre.mm(&w_xh.tr()));
            }
            (0, None, None) if !fold => {
                put(&g.b_h, &d_pre.sum_dim_intlist(0, false, Kind::Float));
                // Scattered by columns into W_xh^T, [kH, V], as the flat buffer holds it (W_xh is its
                // transposed view): each of its rows gathers from a row of d_pre^T in the cache.
                let mut w_ih = g.w_xh.tr();
                let _ = w_ih.zero_();
                let _ = w_ih.index_add_(1, &ids, &d_pre.tr());
            }
            (0, None, table) => {
                // The gradient of the folded table: each character's rows of d_pre summed, [V, kH].
                let by_char = Tensor::zeros([c.vocab_size as i64, d_pre.size()[1]], (Kind::Float, d_pre.device()));
                scatter_rows_into(&by_char, &ids, &d_pre);
                put(&g.b_h, &by_char.sum_dim_intlist(0, false, Kind::Float));
                match table {
                    None => put(&g.w_xh, &by_char),
                    Some(table) => {
                        product_into(&g.w_xh, &table.tr(), &by_char, 1.0);
                        let embedding = grads.embedding.as_ref().expect("an embedding");
                        product_into(embedding, &by_char, &w_xh.tr(), 1.0);
                    }
                }
            }
            _ => {
                put(&g.b_h, &d_pre.sum_dim_intlist(0, false, Kind::Float));
                product_into(&g.w_xh, &outputs(&tapes[l - 1].hs, steps, n, h).tr(), &d_pre, 1.0);
                d_out = d_pre.mm(&w_xh.tr()).view([steps, batch, h]);
            }
        }
    }
    let end: Vec<Tensor> = tapes.iter().map(|t| t.hs.get(steps)).collect();
    let cells: Vec<Tensor> = tapes
        .iter()
        .filter_map(|t| match &t.cell {
            Saved::Lstm { cs, .. } => Some(cs.get(steps)),
            _ => None,
        })
        .collect();
    for mut unused in model.layout().unused(model.gradient()) {
        let _ = unused.zero_();
    }
    Pass { loss, state: State::of_layers(&end, &cells) }
}

/// Layer `l`'s recurrence from its input projection `projected` `[steps, batch, kH]` and initial state `h0`
/// (and an LSTM's `c0`), `[batch, H]`.
fn forward_layer(
    model: &Network,
    l: usize,
    projected: &Tensor,
    h0: &Tensor,
    c0: Option<&Tensor>,
    kernels: bool,
) -> Tape {
    let (steps, batch, h) = (projected.size()[0], projected.size()[1], model.config().arch.hidden as i64);
    // W_hh row-major for the steps' products: the flat buffer holds its transpose, and MKL multiplies by
    // the row-major copy about a fifth faster at these shapes (a copy per minibatch pays for itself).
    let w_hh = &model.layer(l).w_hh.contiguous();
    let hs = Tensor::empty([steps + 1, batch, h], (Kind::Float, projected.device()));
    hs.get(0).copy_(h0);
    match model.config().arch.cell {
        Cell::Rnn => {
            // h_t = tanh(x_t W_xh + b_h + h_{t-1} W_hh)
            for t in 0..steps {
                let mut next = projected.get(t).addmm_out(&hs.get(t + 1), &hs.get(t), w_hh);
                let _ = next.tanh_();
            }
            Tape { hs, cell: Saved::Rnn }
        }
        Cell::Gru => {
            let b_hn = gru_bias(model.layer(l));
            let gates = Tensor::empty([steps, batch, 3 * h], (Kind::Float, projected.device()));
            let hn = Tensor::empty([steps, batch, h], (Kind::Float, projected.device()));
            let hw = Tensor::empty([batch, 3 * h], (Kind::Float, projected.device()));
            if kernels {
                gates::gru_forward_layer(h as usize, projected, w_hh, &b_hn.contiguous(), &hs, &gates, &hn, &hw);
                return Tape { hs, cell: Saved::Gru { gates, hn } };
            }
            for t in 0..steps {
                let (x, g, hn_t) = (projected.get(t), gates.get(t), hn.get(t));
                let _ = hs.get(t).mm_out(&hw, w_hh);
                // r, z = σ(x W_xr + h W_hr + b_r), σ(x W_xz + h W_hz + b_z)
                let mut rz = x.narrow(1, 0, 2 * h).add_out(&g.narrow(1, 0, 2 * h), &hw.narrow(1, 0, 2 * h));
                let _ = rz.sigmoid_();
                // n = tanh(x W_xn + b_n + r (h W_hn + b_hn))
                let _ = hw.narrow(1, 2 * h, h).add_out(&hn_t, b_hn);
                let mut cand = x.narrow(1, 2 * h, h).addcmul_out(&g.narrow(1, 2 * h, h), &g.narrow(1, 0, h), &hn_t);
                let _ = cand.tanh_();
                // h' = n + z (h - n)
                let _ = cand.lerp_tensor_out(&hs.get(t + 1), &hs.get(t), &g.narrow(1, h, h));
            }
            Tape { hs, cell: Saved::Gru { gates, hn } }
        }
        Cell::Lstm => {
            let gates = Tensor::empty([steps, batch, 4 * h], (Kind::Float, projected.device()));
            let cs = Tensor::empty([steps + 1, batch, h], (Kind::Float, projected.device()));
            cs.get(0).copy_(c0.expect("an LSTM state has a memory cell"));
            if kernels {
                gates::lstm_forward_layer(h as usize, projected, w_hh, &gates, &cs, &hs);
                return Tape { hs, cell: Saved::Lstm { gates, cs } };
            }
            for t in 0..steps {
                let g = gates.get(t);
                // i, f, g, o = σ, σ, tanh, σ of x W_x + b + h W_hh
                let _ = projected.get(t).addmm_out(&g, &hs.get(t), w_hh);
                let _ = g.narrow(1, 0, 2 * h).sigmoid_();
                let _ = g.narrow(1, 2 * h, h).tanh_();
                let _ = g.narrow(1, 3 * h, h).sigmoid_();
                // c' = f c + i g; h' = o tanh(c')
                let c_next = cs.get(t + 1);
                let _ = g.narrow(1, h, h).mul_out(&c_next, &cs.get(t));
                let _ = c_next.shallow_clone().addcmul_(&g.narrow(1, 0, h), &g.narrow(1, 2 * h, h));
                let mut h_next = c_next.tanh_out(&hs.get(t + 1));
                let _ = h_next.g_mul_(&g.narrow(1, 3 * h, h));
            }
            Tape { hs, cell: Saved::Lstm { gates, cs } }
        }
    }
}

/// Layer `l`'s backward pass from the gradient reaching its outputs, `d_out` `[steps, batch, H]` (used as
/// working space). Puts the gradients of `W_hh` (and a GRU's `b_hn`) into `grads` (the layer's), and returns the gradient of
/// the layer's input projection `x W_xh + b_h`, `[steps * batch, kH]`.
fn backward_layer(
    model: &Network,
    l: usize,
    tape: &Tape,
    d_out: Tensor,
    grads: &Layer<Tensor>,
    kernels: bool,
) -> Tensor {
    let (steps, batch, h) = (d_out.size()[0], d_out.size()[1], model.config().arch.hidden as i64);
    let n = steps * batch;
    let w_hh_t = model.layer(l).w_hh.tr();
    let h_prev = tape.hs.narrow(0, 0, steps);
    match &tape.cell {
        Saved::Rnn => {
            // tanh'(a) = 1 - tanh(a)^2, for all steps at once.
            let mut slope = tape.hs.narrow(0, 1, steps).square();
            let _ = slope.neg_().g_add_scalar_(1.0);
            // d a_t = (d out_t + d a_{t+1} W_hh^T) tanh'(a_t), from the last step back, in place.
            let _ = d_out.get(steps - 1).g_mul_(&slope.get(steps - 1));
            for t in (1..steps).rev() {
                let mut before = d_out.get(t - 1);
                let _ = before.addmm_(&d_out.get(t), &w_hh_t);
                let _ = before.g_mul_(&slope.get(t - 1));
            }
            let d_a = d_out.view([n, h]);
            product_into(&grads.w_hh, &h_prev.reshape([n, h]).tr(), &d_a, 1.0);
            d_a
        }
        Saved::Gru { gates: g_all, hn } if kernels => {
            let d_x = Tensor::empty([steps, batch, 3 * h], (Kind::Float, d_out.device()));
            let d_h = Tensor::empty([steps, batch, 3 * h], (Kind::Float, d_out.device()));
            gates::gru_backward_layer(h as usize, &d_out, g_all, hn, &tape.hs, &w_hh_t, &d_x, &d_h);
            let d_h = d_h.view([n, 3 * h]);
            product_into(&grads.w_hh, &h_prev.reshape([n, h]).tr(), &d_h, 1.0);
            put(gru_bias(grads), &d_h.narrow(1, 2 * h, h).sum_dim_intlist(0, false, Kind::Float));
            d_x.view([n, 3 * h])
        }
        Saved::Gru { gates, hn } => {
            let (r, z, cand) = (gates.narrow(2, 0, h), gates.narrow(2, h, h), gates.narrow(2, 2 * h, h));
            // With g the gradient reaching h_t: d a_n = g (1 - z)(1 - n^2), d a_z = g (h_{t-1} - n) z (1 - z),
            // d a_r = d a_n (h W_hn + b_hn) r (1 - r), and the gradient of h W_hn + b_hn is d a_n r. The
            // factors after g and d a_n, for all steps at once:
            let n_slope = (cand.square().neg() + 1.0) * (z.neg() + 1.0);
            let z_slope = (&h_prev - &cand) * &z * (z.neg() + 1.0);
            let r_slope = hn * &r * (r.neg() + 1.0);
            // The gradients of x W_x + b_h and of h W_hh (+ b_hn) per step: [d a_r, d a_z, d a_n] and
            // [d a_r, d a_z, d a_n r].
            let d_x = Tensor::empty([steps, batch, 3 * h], (Kind::Float, d_out.device()));
            let d_h = Tensor::empty([steps, batch, 3 * h], (Kind::Float, d_out.device()));
            for t in (0..steps).rev() {
                let (g, dx, dh) = (d_out.get(t), d_x.get(t), d_h.get(t));
                let d_an = g.mul_out(&dx.narrow(1, 2 * h, h), &n_slope.get(t));
                let _ = d_an.mul_out(&dh.narrow(1, 2 * h, h), &r.get(t));
                let _ = g.mul_out(&dh.narrow(1, h, h), &z_slope.get(t));
                let _ = d_an.mul_out(&dh.narrow(1, 0, h), &r_slope.get(t));
                if t > 0 {
                    // The gradient reaching h_{t-1}: g z + [d a_r, d a_z, d hn] W_hh^T, added to d out_{t-1}.
                    let mut before = d_out.get(t - 1);
                    let _ = before.addcmul_(&g, &z.get(t));
                    let _ = before.addmm_(&dh, &w_hh_t);
                }
            }
            d_x.narrow(2, 0, 2 * h).copy_(&d_h.narrow(2, 0, 2 * h));
            let d_h = d_h.view([n, 3 * h]);
            product_into(&grads.w_hh, &h_prev.reshape([n, h]).tr(), &d_h, 1.0);
            put(gru_bias(grads), &d_h.narrow(1, 2 * h, h).sum_dim_intlist(0, false, Kind::Float));
            d_x.view([n, 3 * h])
        }
        Saved::Lstm { gates, cs } if kernels => {
            let d_a = Tensor::empty([steps, batch, 4 * h], (Kind::Float, d_out.device()));
            let d_c = Tensor::zeros([1, batch, h], (Kind::Float, d_out.device()));
            gates::lstm_backward_layer(h as usize, &d_out, gates, cs, &w_hh_t, &d_a, &d_c);
            let d_a = d_a.view([n, 4 * h]);
            product_into(&grads.w_hh, &h_prev.reshape([n, h]).tr(), &d_a, 1.0);
            d_a
        }
        Saved::Lstm { gates, cs } => {
            let (i, f, g, o) =
                (gates.narrow(2, 0, h), gates.narrow(2, h, h), gates.narrow(2, 2 * h, h), gates.narrow(2, 3 * h, h));
            let c_prev = cs.narrow(0, 0, steps);
            let tanh_c = cs.narrow(0, 1, steps).tanh();
            // With dh the gradient reaching h_t and dc the one reaching c_t (from step t + 1, plus
            // dh o (1 - tanh(c)^2) through h_t): d a_o = dh tanh(c) o (1 - o), d a_i = dc g i (1 - i),
            // d a_f = dc c_{t-1} f (1 - f), d a_g = dc i (1 - g^2); c_{t-1} gets dc f. The factors after dh
            // and dc, for all steps at once:
            let o_slope = &tanh_c * &o * (o.neg() + 1.0);
            let c_slope = (tanh_c.square().neg() + 1.0) * &o;
            let i_slope = &g * &i * (i.neg() + 1.0);
            let f_slope = &c_prev * &f * (f.neg() + 1.0);
            let g_slope = (g.square().neg() + 1.0) * &i;
            let d_a = Tensor::empty([steps, batch, 4 * h], (Kind::Float, d_out.device()));
            let d_c = Tensor::zeros([batch, h], (Kind::Float, d_out.device()));
            for t in (0..steps).rev() {
                let (dh, da) = (d_out.get(t), d_a.get(t));
                let _ = dh.mul_out(&da.narrow(1, 3 * h, h), &o_slope.get(t));
                let dc = d_c.shallow_clone().addcmul_(&dh, &c_slope.get(t));
                let _ = dc.mul_out(&da.narrow(1, 0, h), &i_slope.get(t));
                let _ = dc.mul_out(&da.narrow(1, h, h), &f_slope.get(t));
                let _ = dc.mul_out(&da.narrow(1, 2 * h, h), &g_slope.get(t));
                if t > 0 {
                    let _ = d_c.shallow_clone().g_mul_(&f.get(t));
                    let _ = d_out.get(t - 1).addmm_(&da, &w_hh_t);
                }
            }
            let d_a = d_a.view([n, 4 * h]);
            product_into(&grads.w_hh, &h_prev.reshape([n, h]).tr(), &d_a, 1.0);
            d_a
        }
    }
}

/// Copies `value` into `target` (a view of the flat gradient buffer).
fn put(target: &Tensor, value: &Tensor) {
    target.shallow_clone().copy_(value);
}

/// Sets `target` (`[rows, k]`, any strides) to the gradient of a table whose rows `ids` (`[n]`) were
/// gathered, given the gathered rows' gradient `d_rows` `[n, k]`: zero, with each row of `d_rows` added at
/// its index.
fn scatter_rows_into(target: &Tensor, ids: &Tensor, d_rows: &Tensor) {
    let mut target = target.shallow_clone();
    let _ = target.zero_();
    let _ = target.index_add_(0, ids, d_rows);
}

/// Sets `target` to `scale · a b`, the product computed into it (float32) whatever its strides (a row- or
/// column-major view of the flat gradient buffer); a product in bfloat16 is computed, then converted in.
fn product_into(target: &Tensor, a: &Tensor, b: &Tensor, scale: f64) {
    let mut target = target.shallow_clone();
    if a.kind() == Kind::Float && b.kind() == Kind::Float {
        let _ = a.mm_out(&target, b);
    } else {
        target.copy_(&a.mm(b));
    }
    if scale != 1.0 {
        let _ = target.g_mul_scalar_(scale);
    }
}

/// A layer's outputs h_1..h_steps from its state buffer `[steps + 1, batch, H]`, as rows `[n, H]`.
fn outputs(hs: &Tensor, steps: i64, n: i64, h: i64) -> Tensor {
    hs.narrow(0, 1, steps).reshape([n, h])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;
    use crate::model::dropout::Dropout;
    use crate::model::ops::cross_entropy;
    use crate::testutil::{assert_close_to, fp32_reorder_bound};
    use tch::Device;

    fn autograd(model: &Network, inputs: &Tensor, targets: &Tensor, state: &State) -> (f64, Vec<Tensor>, State) {
        for p in model.parameters() {
            p.shallow_clone().zero_grad();
        }
        let (logits, end) = model.forward(inputs, state, Dropout::Seeded(1));
        let loss = cross_entropy(&logits, &step_major(targets));
        loss.backward();
        (loss.double_value(&[]), model.parameters().iter().map(|p| p.grad().copy()).collect(), end.detach())
    }

    #[test]
    fn gradients_equal_autograds() {
        // 28 positions: a vocabulary of 13 is folded into the first layer's table, one of 40 is not.
        let cases = [Cell::Rnn, Cell::Gru, Cell::Lstm].into_iter().flat_map(|cell| {
            [(cell, 1, 0, 13), (cell, 3, 0, 13), (cell, 2, 5, 13), (cell, 1, 0, 40), (cell, 2, 5, 40)]
        });
        for (cell, layers, embed, v) in cases {
            let config = ModelConfig::new(v, Arch { cell, layers, embed, ..Arch::rnn(9) });
            let model = Network::new(config, 2, Device::Cpu).unwrap();
            // Weights well above the textbook's 0.01, so that every path of the gradient matters.
            let values: Vec<Tensor> = model.parameters().iter().map(|p| p.detach() * 60.0 + 0.02).collect();
            model.set_parameters(&values).unwrap();
            tch::manual_seed(3);
            let inputs = Tensor::randint(v as i64, [4, 7], (Kind::Int64, Device::Cpu));
            let targets = Tensor::randint(v as i64, [4, 7], (Kind::Int64, Device::Cpu));
            let random = || Tensor::randn([layers as i64, 4, 9], (Kind::Float, Device::Cpu)) * 0.5;
            let state = State { h: random(), c: (cell == Cell::Lstm).then(random) };
            let (loss, grads, end) = autograd(&model, &inputs, &targets, &state);
            // Both ways of computing the gated cells' steps: charrnn's CPU kernels and libtorch's operations.
            for kernels in [true, false] {
                let pass = pass(&model, &inputs, &targets, &state, Dtype::Fp32, kernels);
                let what = format!("{cell:?}, {layers} layers, embed {embed}, V {v}, kernels {kernels}");
                // The longest sum has max(I + H, k·H, batch·steps) = max(22, 36, 28) terms; steps × layers sums lie
                // on the forward path, twice that (and the output layer) on a gradient's.
                let terms = 36;
                let forward = fp32_reorder_bound(terms, 7 * layers);
                let backward = fp32_reorder_bound(terms, 2 * 7 * layers + 1);
                assert_close_to(&format!("{what}: loss"), &pass.loss, &Tensor::from(loss), forward);
                assert_close_to(&format!("{what}: final state"), &pass.state.h, &end.h, forward);
                if let Some(c) = &end.c {
                    assert_close_to(&format!("{what}: final memory cell"), pass.state.c.as_ref().unwrap(), c, forward);
                }
                for ((name, _), (ours, theirs)) in
                    model.named_parameters().iter().zip(model.gradients().iter().zip(&grads))
                {
                    assert!(theirs.abs().max().double_value(&[]) > 1e-4, "{what}: {name}'s gradient should not vanish");
                    assert_close_to(&format!("{what}: gradient of {name}"), ours, theirs, backward);
                }
            }
        }
    }

    #[test]
    fn bf16_products_stay_close_to_fp32() {
        let model = Network::new(ModelConfig::rnn(50, 32), 1, Device::Cpu).unwrap();
        tch::manual_seed(4);
        let inputs = Tensor::randint(50, [8, 10], (Kind::Int64, Device::Cpu));
        let targets = Tensor::randint(50, [8, 10], (Kind::Int64, Device::Cpu));
        let state = model.begin_state(8);
        let run = |precision| {
            let pass = loss_and_grads(&model, &inputs, &targets, &state, precision);
            (pass.loss, model.gradients().iter().map(Tensor::copy).collect::<Vec<_>>())
        };
        let (exact, bf16) = (run(Dtype::Fp32), run(Dtype::Bf16));
        assert!((exact.0.double_value(&[]) - bf16.0.double_value(&[])).abs() < 1e-3);
        for (a, b) in exact.1.iter().zip(&bf16.1) {
            // bfloat16 keeps 8 significant bits: each product is good to about 1%.
            let scale = a.abs().max().double_value(&[]);
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff <= 0.02 * scale, "difference {diff} against magnitude {scale}");
        }
        assert!(!exact.1[3].equal(&bf16.1[3]), "the output layer's gradient is computed in bfloat16");
    }

    #[test]
    fn every_written_out_cell_without_dropout_is_supported() {
        let base = ModelConfig::rnn(5, 4);
        assert!(supports(&base) && supports(&ModelConfig { arch: Arch { layers: 2, embed: 3, ..base.arch }, ..base }));
        assert!(
            supports(&ModelConfig { arch: Arch { cell: Cell::Gru, ..base.arch }, ..base })
                && supports(&ModelConfig { arch: Arch { cell: Cell::Lstm, ..base.arch }, ..base })
        );
        assert!(!supports(&ModelConfig { arch: Arch { dropout: 0.1, ..base.arch }, ..base }));
        assert!(!supports(&ModelConfig { arch: Arch { backend: Backend::Fused, ..base.arch }, ..base }));
    }
}
