//! The recurrence: L stacked cells run over a minibatch, computed two ways behind one trait (the cells
//! written out in tensor operations, or libtorch's fused kernels), which give the same function of the same
//! parameters.
use crate::model::config::{Backend, Cell, ModelConfig};
use crate::model::dropout::Dropout;
use crate::model::flat::Weights;
use crate::model::ops::one_hot;
use crate::model::params::Layer;
use crate::model::state::State;
use tch::Tensor;

/// The bottom layer's input, step-major: character indices `[n]` (one-hot input, whose product with `W_xh`
/// is a row gather) or rows `[n, D]` (embeddings) to multiply by `W_xh`.
pub(crate) enum First {
    Ids(Tensor),
    Rows(Tensor),
}

/// A way to run the layers.
pub(crate) trait Recurrence {
    /// Runs `config`'s layers (weights `weights`) over `shape = (steps, batch)`: `steps` steps of `batch`
    /// sequences, from `state`
    /// (`[L, batch, H]` tensors): returns the top layer's outputs, Float `[steps * batch, H]` in step-major
    /// order, and the final state. Between layers the units are dropped as `dropout` says (site `l` before
    /// layer `l`).
    fn run(
        &self,
        config: &ModelConfig,
        weights: &Weights,
        first: First,
        shape: (i64, i64),
        state: &State,
        dropout: Dropout,
    ) -> (Tensor, State);
}

/// The cells written out, one time step at a time ([`Cell`]'s equations).
struct Scratch;

/// libtorch's multi-layer kernels (`at::rnn_tanh`, `at::gru`, `at::lstm`: oneDNN on a CPU, cuDNN on a GPU).
struct Fused;

impl Backend {
    /// How this backend runs the layers.
    pub(crate) fn recurrence(self) -> &'static dyn Recurrence {
        match self {
            Backend::Scratch => &Scratch,
            Backend::Fused => &Fused,
        }
    }
}

/// A GRU layer's `b_hn`.
pub(crate) fn gru_bias(layer: &Layer<Tensor>) -> &Tensor {
    layer.b_hn.as_ref().expect("a GRU layer has b_hn")
}

/// Layer `l`'s input projection `x W_xh + b_h`, `[n, kH]`: of `first` for the bottom layer (one-hot input: a
/// row gather of `W_xh`), else of the outputs of the layer below, `below` `[n, H]`.
pub(crate) fn project(layer: &Layer<Tensor>, l: usize, first: &First, below: &Tensor) -> Tensor {
    let projection = match (l, first) {
        (0, First::Ids(ids)) => layer.w_xh.index_select(0, ids),
        (0, First::Rows(rows)) => rows.mm(&layer.w_xh),
        _ => below.mm(&layer.w_xh),
    };
    projection + &layer.b_h
}

/// Advances a layer's `cell` one step given its input projection `xw = x W_xh + b_h` (Float `[batch, kH]`)
/// and its state `h` (and `c`), each `[batch, H]`. Returns the new `(h, c)`.
pub(crate) fn cell_step(
    cell: Cell,
    layer: &Layer<Tensor>,
    xw: &Tensor,
    h: &Tensor,
    c: Option<&Tensor>,
) -> (Tensor, Option<Tensor>) {
    let hw = h.mm(&layer.w_hh);
    match cell {
        Cell::Rnn => ((xw + hw).tanh(), None),
        Cell::Gru => {
            let (x3, h3) = (xw.chunk(3, 1), hw.chunk(3, 1));
            let r = (&x3[0] + &h3[0]).sigmoid();
            let z = (&x3[1] + &h3[1]).sigmoid();
            let n = (&x3[2] + r * (&h3[2] + gru_bias(layer))).tanh();
            (&n + z * (h - &n), None)
        }
        Cell::Lstm => {
            let g4 = (xw + hw).chunk(4, 1);
            let (i, f, g, o) = (g4[0].sigmoid(), g4[1].sigmoid(), g4[2].tanh(), g4[3].sigmoid());
            let c = f * c.expect("an LSTM state has a memory cell") + i * g;
            (o * c.tanh(), Some(c))
        }
    }
}

impl Recurrence for Scratch {
    fn run(
        &self,
        config: &ModelConfig,
        weights: &Weights,
        first: First,
        (steps, batch): (i64, i64),
        state: &State,
        dropout: Dropout,
    ) -> (Tensor, State) {
        let arch = &config.arch;
        let (mut hs_end, mut cs_end) = (Vec::with_capacity(arch.layers), Vec::new());
        let mut xs = Tensor::new();
        for (l, layer) in weights.named.layers.iter().enumerate() {
            if l > 0 {
                xs = dropout.apply(l as u64, arch.dropout, &xs);
            }
            let xw = project(layer, l, &first, &xs).view([steps, batch, -1]);
            let mut h = state.h.get(l as i64);
            let mut cell = state.c.as_ref().map(|c| c.get(l as i64));
            let mut outs = Vec::with_capacity(steps as usize);
            for t in 0..steps {
                (h, cell) = cell_step(arch.cell, layer, &xw.get(t), &h, cell.as_ref());
                outs.push(h.shallow_clone());
            }
            xs = Tensor::stack(&outs, 0).view([steps * batch, arch.hidden as i64]);
            hs_end.push(h);
            cs_end.extend(cell);
        }
        (xs, State::of_layers(&hs_end, &cs_end))
    }
}

impl Recurrence for Fused {
    /// The kernels read the weights where they lie in the flat buffer, which is laid out as they take them
    /// (`weight_ih = W_xh^T`, `weight_hh = W_hh^T`, `bias_ih = b_h`, `bias_hh = 0`, or `[0, 0, b_hn]` for a
    /// GRU), so cuDNN copies nothing. With dropout between layers, each layer is one call and the masks are
    /// charrnn's own; else one call runs them all.
    fn run(
        &self,
        config: &ModelConfig,
        weights: &Weights,
        first: First,
        (steps, batch): (i64, i64),
        state: &State,
        dropout: Dropout,
    ) -> (Tensor, State) {
        let arch = &config.arch;
        let h = arch.hidden as i64;
        let flat = weights.fused();
        // [steps * batch, I]: embedding rows, or one-hot rows (the textbook's X).
        let xs = match first {
            First::Rows(rows) => rows,
            First::Ids(ids) => one_hot(&ids, config.vocab_size),
        };
        // cuDNN keeps what backpropagation needs only in a training pass.
        let train = dropout != Dropout::Off;
        let per_layer = arch.layers > 1 && dropout.drops(arch.dropout);
        if !per_layer {
            let weights: Vec<&Tensor> = flat.iter().flatten().collect();
            let (out, end) = fused_call(arch.cell, &xs.view([steps, batch, -1]), state, &weights, train);
            return (out.view([steps * batch, h]), end);
        }
        let (mut hs, mut cs) = (Vec::with_capacity(arch.layers), Vec::new());
        let mut x = xs;
        for (l, weights) in flat.iter().enumerate() {
            if l > 0 {
                x = dropout.apply(l as u64, arch.dropout, &x);
            }
            let layer_state =
                State { h: state.h.narrow(0, l as i64, 1), c: state.c.as_ref().map(|c| c.narrow(0, l as i64, 1)) };
            // cuDNN reads a call's weights in place only from the start of their storage, where layer 0
            // lies; an upper layer's four tensors are packed into a buffer of their own (what cuDNN would do
            // itself, with a warning at every call).
            let weights = if l > 0 && x.device().is_cuda() {
                packed(weights)
            } else {
                weights.each_ref().map(Tensor::shallow_clone)
            };
            let (out, end) = fused_call(
                arch.cell,
                &x.view([steps, batch, -1]),
                &layer_state,
                &weights.iter().collect::<Vec<_>>(),
                train,
            );
            x = out.view([steps * batch, h]);
            hs.push(end.h.squeeze_dim(0));
            cs.extend(end.c.map(|c| c.squeeze_dim(0)));
        }
        (x, State::of_layers(&hs, &cs))
    }
}

/// A layer's four weight tensors copied one after another into a new buffer, as views of it (autograd
/// follows the copy back to the originals).
fn packed(weights: &[Tensor; 4]) -> [Tensor; 4] {
    let buffer = Tensor::cat(&weights.iter().map(|w| w.reshape([-1])).collect::<Vec<_>>(), 0);
    let mut offset = 0;
    weights.each_ref().map(|w| {
        let view = buffer.narrow(0, offset, w.numel() as i64).view(w.size().as_slice());
        offset += w.numel() as i64;
        view
    })
}

/// One call of libtorch's kernel for `cell` over `input` (`[steps, batch, I]`) from `state`, with as many
/// layers as `weights` holds groups of four; no dropout inside. Returns `[steps, batch, H]` and the final
/// state.
fn fused_call(cell: Cell, input: &Tensor, state: &State, weights: &[&Tensor], train: bool) -> (Tensor, State) {
    let layers = (weights.len() / 4) as i64;
    match cell {
        Cell::Rnn => {
            let (out, h_n) = input.rnn_tanh(&state.h, weights, true, layers, 0.0, train, false, false);
            (out, State { h: h_n, c: None })
        }
        Cell::Gru => {
            let (out, h_n) = input.gru(&state.h, weights, true, layers, 0.0, train, false, false);
            (out, State { h: h_n, c: None })
        }
        Cell::Lstm => {
            let c0 = state.c.as_ref().expect("an LSTM state has a memory cell");
            let (out, h_n, c_n) = input.lstm(&[&state.h, c0], weights, true, layers, 0.0, train, false, false);
            (out, State { h: h_n, c: Some(c_n) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn packed_weights_lie_in_one_buffer_in_order_and_pass_their_gradients_back() {
        let shapes: [&[i64]; 4] = [&[4, 3], &[4, 2], &[4], &[4]];
        let originals = shapes.map(|s| Tensor::randn(s, (Kind::Float, Device::Cpu)).set_requires_grad(true));
        let copies = packed(&originals);
        let start = copies[0].data_ptr() as usize;
        let mut offset = 0;
        for (original, copy) in originals.iter().zip(&copies) {
            assert_eq!(copy.data_ptr() as usize, start + 4 * offset, "one after another");
            assert!(copy.is_contiguous() && copy.equal(original));
            offset += original.numel();
        }
        // d/dw sum(w²) = 2w reaches each original through the copy.
        let loss = copies.iter().map(|c| (c * c).sum(Kind::Float)).reduce(|a, b| a + b).unwrap();
        for (g, original) in Tensor::run_backward(&[loss], &originals, false, false).iter().zip(&originals) {
            assert!(g.allclose(&(original * 2.0), 1e-6, 1e-6, false));
        }
    }
}
