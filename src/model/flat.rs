//! One flat parameter buffer: every parameter of a network is a view into one contiguous Float tensor, laid
//! out as libtorch's fused RNN kernels take their weights (cuDNN's flat-weight layout), so that they read
//! them in place; the gradient and Adam's moments are buffers of the same layout, updated in a few
//! operations each.
//!
//! The layout, in Float elements from offset 0: for each layer, bottom first, `w_ih [kH, I]`,
//! `w_hh [kH, H]`, `b_ih [kH]` and `b_hh [kH]` (cuDNN's order and shapes: `w_ih` and `w_hh` are the
//! transposes of charrnn's `W_xh [I, kH]` and `W_hh [H, kH]`, `b_ih` is `b_h`, and `b_hh` is zero but for a
//! GRU's last third, which is `b_hn`); then the embedding `E [V, D]`, `W_hq [H, V]` and `b_q [V]`. The
//! recurrent part comes first because cuDNN takes its weights from the start of their storage.
use crate::model::config::{Cell, ModelConfig};
use crate::model::params::{Layer, Params};
use tch::Tensor;

/// Where one tensor lies in the buffer: its first element and its shape (row-major).
#[derive(Debug, Clone, PartialEq)]
struct Span {
    offset: i64,
    shape: Vec<i64>,
}

impl Span {
    fn numel(&self) -> i64 {
        self.shape.iter().product()
    }

    /// The tensor as a view of `buf`.
    fn of(&self, buf: &Tensor) -> Tensor {
        buf.narrow(0, self.offset, self.numel()).view(self.shape.as_slice())
    }
}

/// One layer's four tensors in cuDNN's order.
#[derive(Debug, Clone, PartialEq)]
struct LayerSpans {
    w_ih: Span,
    w_hh: Span,
    b_ih: Span,
    b_hh: Span,
}

/// Where every parameter of a network lies in its flat buffer (see the module's documentation).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Layout {
    cell: Cell,
    hidden: i64,
    layers: Vec<LayerSpans>,
    embedding: Option<Span>,
    w_hq: Span,
    b_q: Span,
    len: i64,
}

impl Layout {
    /// The layout of `config`'s parameters.
    pub(crate) fn new(config: &ModelConfig) -> Layout {
        let specs = Params::<()>::specs(config);
        let mut len = 0;
        let mut take = |shape: Vec<i64>| {
            let span = Span { offset: len, shape };
            len += span.numel();
            span
        };
        let layers = specs
            .layers
            .iter()
            .map(|l| {
                let (input, kh, h) = (l.w_xh.1[0], l.w_xh.1[1], l.w_hh.1[0]);
                LayerSpans {
                    w_ih: take(vec![kh, input]),
                    w_hh: take(vec![kh, h]),
                    b_ih: take(vec![kh]),
                    b_hh: take(vec![kh]),
                }
            })
            .collect();
        let embedding = specs.embedding.map(|(_, shape)| take(shape));
        let w_hq = take(specs.w_hq.1);
        let b_q = take(specs.b_q.1);
        Layout { cell: config.arch.cell, hidden: config.arch.hidden as i64, layers, embedding, w_hq, b_q, len }
    }

    /// The buffer's length P in elements.
    pub(crate) fn len(&self) -> i64 {
        self.len
    }

    /// The parameters by role as views of `buf` (`[P]`): `W_xh` and `W_hh` are transposed views of `w_ih` and
    /// `w_hh`, `b_h` is `b_ih`, a GRU's `b_hn` the last third of `b_hh`.
    pub(crate) fn roles(&self, buf: &Tensor) -> Params<Tensor> {
        let h = self.hidden;
        Params {
            embedding: self.embedding.as_ref().map(|s| s.of(buf)),
            layers: self
                .layers
                .iter()
                .map(|l| Layer {
                    w_xh: l.w_ih.of(buf).tr(),
                    w_hh: l.w_hh.of(buf).tr(),
                    b_h: l.b_ih.of(buf),
                    b_hn: (self.cell == Cell::Gru).then(|| l.b_hh.of(buf).narrow(0, 2 * h, h)),
                })
                .collect(),
            w_hq: self.w_hq.of(buf),
            b_q: self.b_q.of(buf),
        }
    }

    /// Each layer's `b_hh` (`[kH]`) as a view of `buf`.
    pub(crate) fn b_hh(&self, buf: &Tensor) -> Vec<Tensor> {
        self.layers.iter().map(|l| l.b_hh.of(buf)).collect()
    }

    /// The parts of `buf` that hold no parameter and stay zero: `b_hh`, but for a GRU's last third.
    pub(crate) fn unused(&self, buf: &Tensor) -> Vec<Tensor> {
        let h = self.hidden;
        self.b_hh(buf).into_iter().map(|b| if self.cell == Cell::Gru { b.narrow(0, 0, 2 * h) } else { b }).collect()
    }
}

/// A network's parameters as the tensors that autograd differentiates: leaves that are views of the flat
/// buffer (they share its memory, so an update of the buffer is an update of them).
pub(crate) struct Weights {
    /// The parameters by role (`W_xh` and `W_hh` with transposed strides).
    pub(crate) named: Params<Tensor>,
    /// Each layer's whole `b_hh` `[kH]`: for a GRU a leaf of its own (over the same memory as `b_hn`, what
    /// the fused kernel differentiates), else a zero view that requires no gradient.
    pub(crate) b_hh: Vec<Tensor>,
}

impl Weights {
    /// The leaves over `buf` (`[P]`, laid out as `layout` says).
    pub(crate) fn over(layout: &Layout, buf: &Tensor) -> Weights {
        let leaf = |t: &Tensor| t.detach().set_requires_grad(true);
        let named = layout.roles(buf).map(leaf);
        let b_hh =
            layout.b_hh(buf).iter().map(|b| if layout.cell == Cell::Gru { leaf(b) } else { b.detach() }).collect();
        Weights { named, b_hh }
    }

    /// Per layer, the four tensors libtorch's fused kernels take (`w_ih`, `w_hh`, `b_ih`, `b_hh`), each at its
    /// place in the buffer: views of the leaves, so that the kernels' gradients reach them.
    pub(crate) fn fused(&self) -> Vec<[Tensor; 4]> {
        self.named
            .layers
            .iter()
            .zip(&self.b_hh)
            .map(|(l, b_hh)| [l.w_xh.tr(), l.w_hh.tr(), l.b_h.shallow_clone(), b_hh.shallow_clone()])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::Arch;
    use tch::{Device, Kind};

    #[test]
    fn the_layout_is_cudnns_and_every_view_shares_the_buffer() {
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            let (v, h, d, k) = (7i64, 5i64, 3i64, cell.blocks() as i64);
            let config = ModelConfig::new(7, Arch { cell, layers: 2, embed: 3, ..Arch::rnn(5) });
            let layout = Layout::new(&config);
            // Worked out by hand: layer 0 reads D, layer 1 reads H; each has kH(I + H) weights and 2kH biases.
            let layer = |input: i64| k * h * (input + h) + 2 * k * h;
            let expected = layer(d) + layer(h) + v * d + h * v + v;
            assert_eq!(layout.len(), expected, "{cell:?}");
            let buf = Tensor::arange(expected, (Kind::Float, Device::Cpu));
            let at = |t: &Tensor| {
                assert_eq!(t.data_ptr() as usize - buf.data_ptr() as usize, 4 * t.storage_offset() as usize);
                t.storage_offset()
            };
            let roles = layout.roles(&buf);
            let l0 = &roles.layers[0];
            // cuDNN's order from offset 0: w_ih [kH, D], w_hh [kH, H], b_ih [kH], b_hh [kH], then layer 1.
            assert_eq!(at(&l0.w_xh), 0);
            assert_eq!((l0.w_xh.size(), l0.w_xh.stride()), (vec![d, k * h], vec![1, d]), "W_xh = w_ih^T");
            assert_eq!(at(&l0.w_hh), k * h * d);
            assert_eq!((l0.w_hh.size(), l0.w_hh.stride()), (vec![h, k * h], vec![1, h]));
            assert_eq!(at(&l0.b_h), k * h * (d + h));
            let b_hh0 = k * h * (d + h) + k * h;
            assert_eq!(
                l0.b_hn.as_ref().map(at),
                (cell == Cell::Gru).then_some(b_hh0 + 2 * h),
                "b_hn: b_hh's last third"
            );
            assert_eq!(at(&roles.layers[1].w_xh), layer(d));
            assert_eq!(at(roles.embedding.as_ref().unwrap()), layer(d) + layer(h));
            assert_eq!(at(&roles.w_hq), layer(d) + layer(h) + v * d);
            assert_eq!((at(&roles.b_q), roles.b_q.size()), (expected - v, vec![v]));
            // Every element belongs to exactly one parameter, or to the unused part of a b_hh.
            let covered = Tensor::zeros([expected], (Kind::Float, Device::Cpu));
            for t in layout.roles(&covered).into_vec().into_iter().chain(layout.unused(&covered)) {
                let _ = t.shallow_clone().g_add_scalar_(1.0);
            }
            assert_eq!(covered.eq(1.0).all().int64_value(&[]), 1, "{cell:?}: every element once");
            assert_eq!(layout.unused(&buf)[0].size(), vec![if cell == Cell::Gru { 2 * h } else { k * h }]);
        }
    }

    #[test]
    fn the_fused_kernels_weights_are_the_leaves_memory() {
        let config = ModelConfig::new(6, Arch { cell: Cell::Gru, layers: 2, ..Arch::rnn(4) });
        let layout = Layout::new(&config);
        let buf = Tensor::randn([layout.len()], (Kind::Float, Device::Cpu));
        let weights = Weights::over(&layout, &buf);
        let mut offset = 0;
        for (l, four) in weights.fused().iter().enumerate() {
            for t in four {
                assert!(t.is_contiguous(), "layer {l}");
                assert_eq!(
                    t.data_ptr() as usize,
                    buf.data_ptr() as usize + 4 * offset,
                    "layer {l}: in place, in order"
                );
                offset += t.numel();
            }
        }
        assert_eq!(offset as i64, layout.len() - 6 * 4 - 6, "the recurrent part comes first");
        // A leaf is the buffer's memory: a change to the buffer shows in it.
        let _ = buf.narrow(0, 0, 1).fill_(42.0);
        assert_eq!(weights.named.layers[0].w_xh.double_value(&[0, 0]), 42.0);
        assert!(weights.named.layers[0].w_xh.requires_grad() && weights.b_hh[1].requires_grad());
    }
}
