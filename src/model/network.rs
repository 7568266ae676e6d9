//! The char-RNN (Dive into Deep Learning, "RNN from scratch", and its GRU and LSTM chapters): an optional
//! embedding, L stacked cells and an affine output layer, its parameters views of one flat buffer.
use crate::error::{Error, Result};
use crate::model::config::{Backend, Cell, Dtype, Init, ModelConfig};
use crate::model::dropout::Dropout;
use crate::model::flat::{Layout, Weights};
use crate::model::params::{Layer, Params};
use crate::model::recurrence::{cell_step, project, First};
use crate::model::state::State;
use crate::rng::{Rng, Stream};
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// Logits per block in [`Network::summed_cross_entropy`] on the CPU: 4 MiB of floats, which stay in the
/// cache between the product that writes them and the reduction that reads them (the README's benchmarks
/// measured 1 MiB to 8 MiB blocks alike, and both much smaller blocks and the whole text at once slower).
const SCORE_BLOCK_FLOATS: usize = 1 << 20;

/// A recurrent network: an optional embedding, L stacked cells (see [`Cell`]) and an affine output layer,
/// its parameters (named as [`ModelConfig::param_specs`] says) views of one flat buffer laid out for
/// libtorch's fused kernels, its gradient a buffer of the same layout.
pub struct Network {
    config: ModelConfig,
    device: Device,
    layout: Layout,
    /// Every parameter's value, Float `[P]`.
    values: Tensor,
    /// The gradient, Float `[P]` in the same layout (made by the first training step).
    grad: OnceLock<Tensor>,
    /// The leaves over `values` that the computations read and autograd differentiates.
    weights: Weights,
    /// The same leaves in saved order (what checkpoints walk).
    params: Vec<Tensor>,
}

/// The value charrnn's initialisation gives the parameter `name` of shape `shape` (see [`Init`]), drawn from
/// `rng`.
fn initial_value(name: &str, shape: &[i64], init: Init, hidden: usize, rng: &mut Rng) -> Result<Tensor> {
    let n = shape.iter().product::<i64>() as usize;
    let mut values: Vec<f32> = Vec::new();
    // --hidden decides this size: running out of memory must be an error, not an abort.
    values.try_reserve_exact(n).map_err(|_| {
        Error::config("--hidden", format!("a {shape:?} weight matrix does not fit in memory; use a smaller --hidden"))
    })?;
    let bound = 1.0 / (hidden as f64).sqrt();
    let mut draw = |f: &mut dyn FnMut(&mut Rng) -> f64| values.extend((0..n).map(|_| f(rng) as f32));
    match (name, init) {
        // The embedding is a lookup table: N(0, 1), like torch.nn.Embedding.
        ("E", _) => draw(&mut |r| r.normal()),
        (_, Init::Normal) if name.starts_with('b') => draw(&mut |_| 0.0),
        (_, Init::Normal) => draw(&mut |r| r.normal() * 0.01),
        (_, Init::Uniform) => draw(&mut |r| (2.0 * r.uniform() - 1.0) * bound),
    }
    Ok(Tensor::from_slice(&values).view(shape))
}

impl Network {
    /// The one way a network is made: each parameter of `config` (in [`ModelConfig::param_specs`] order) is
    /// a copy of what `value(name, shape)` gives, checked to have that shape, as a Float variable on
    /// `device`.
    fn build(
        config: ModelConfig,
        device: Device,
        mut value: impl FnMut(&str, &[i64]) -> Result<Tensor>,
    ) -> Result<Self> {
        config.validate()?;
        let layout = Layout::new(&config);
        let values = Tensor::f_zeros([layout.len()], (Kind::Float, device))?;
        let _guard = tch::no_grad_guard();
        for ((name, shape), view) in config.param_specs().iter().zip(layout.roles(&values).into_vec()) {
            let t = value(name, shape)?;
            if t.size() != *shape {
                return Err(Error::config("model", format!("{name} has shape {:?}, expected {shape:?}", t.size())));
            }
            view.shallow_clone().f_copy_(&t.to_kind(Kind::Float))?;
        }
        let weights = Weights::over(&layout, &values);
        let params = weights.named.map(Tensor::shallow_clone).into_vec();
        Ok(Network { config, device, layout, values, grad: OnceLock::new(), weights, params })
    }

    /// A model initialised as `config.arch.init` says: the textbook's weights N(0, 0.01) and zero biases, or
    /// PyTorch's U(-1/sqrt(H), 1/sqrt(H)); an embedding N(0, 1).
    ///
    /// The weights come from charrnn's own generator seeded with `seed` (not libtorch's global one, which
    /// other threads share), so a seed gives the same model on every device and in every process.
    pub fn new(config: ModelConfig, seed: u64, device: Device) -> Result<Self> {
        let mut rng = Rng::for_stream(seed, Stream::Init);
        let (init, hidden) = (config.arch.init, config.arch.hidden);
        Self::build(config, device, |name, shape| initial_value(name, shape, init, hidden, &mut rng))
    }

    /// A model with every parameter zero (a uniform predictor), for instance to load weights into.
    pub fn zeros(config: ModelConfig, device: Device) -> Result<Self> {
        Self::build(config, device, |_, shape| Ok(Tensor::f_zeros(shape, (Kind::Float, Device::Cpu))?))
    }

    /// A model whose parameters are copies of `params` (in [`ModelConfig::param_specs`] order), checked
    /// against `config`.
    pub fn from_tensors(config: ModelConfig, params: Vec<Tensor>, device: Device) -> Result<Self> {
        let needed = config.param_specs().len();
        if params.len() != needed {
            let reason = format!("{} parameters given, a {} needs {needed}", params.len(), config.arch.cell);
            return Err(Error::config("model", reason));
        }
        let mut given = params.into_iter();
        Self::build(config, device, |_, _| Ok(given.next().expect("counted above")))
    }

    /// A network of shape `config` (this one's, but for dropout, backend and a vocabulary of at least
    /// this one's V) that starts where this one stands: every parameter this network has is copied, and
    /// what a larger vocabulary adds (rows V.. of `E [V', D]` and of a one-hot first layer's
    /// `W_xh [V', kH]`, columns V.. of `W_hq [H, V']`, entries V.. of `b_q [V']`) is initialised as
    /// [`Network::new`] with `seed` initialises it. Indices below V must keep their characters (see
    /// [`crate::Vocabulary::extended`]).
    pub fn grown(&self, config: ModelConfig, seed: u64) -> Result<Network> {
        let (old, new) = (&self.config.arch, &config.arch);
        let same_shape = (old.hidden, old.cell, old.layers, old.embed, old.init)
            == (new.hidden, new.cell, new.layers, new.embed, new.init);
        if !same_shape || config.vocab_size < self.config.vocab_size {
            return Err(Error::config(
                "--init-from",
                "the architecture comes from the model (its cell, sizes and initialisation), and its vocabulary can only grow",
            ));
        }
        let grown = Network::new(config, seed, self.device())?;
        let _guard = tch::no_grad_guard();
        for (target, source) in grown.params.iter().zip(&self.params) {
            let mut target = target.shallow_clone();
            // At most one dimension (the vocabulary's) differs; the source fills its leading part.
            for (dim, (&t, &s)) in target.size().iter().zip(&source.size()).enumerate() {
                if t != s {
                    target = target.narrow(dim as i64, 0, s);
                }
            }
            target.f_copy_(source)?;
        }
        Ok(grown)
    }

    /// The network's shape.
    pub fn config(&self) -> ModelConfig {
        self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The parameters in [`ModelConfig::param_specs`] order (shallow handles: updating them updates the
    /// model).
    pub fn parameters(&self) -> Vec<&Tensor> {
        self.params.iter().collect()
    }

    /// Copies of the parameter values, detached (a snapshot that later training leaves alone).
    pub fn parameter_copies(&self) -> Vec<Tensor> {
        self.params.iter().map(|p| p.detach().copy()).collect()
    }

    /// The parameters with their names, for saving.
    pub fn named_parameters(&self) -> Vec<(String, &Tensor)> {
        self.config.param_specs().into_iter().map(|(name, _)| name).zip(self.parameters()).collect()
    }

    /// The parameters by role (shallow handles).
    pub(crate) fn named(&self) -> &Params<Tensor> {
        &self.weights.named
    }

    /// Layer `l`'s parameters.
    pub(crate) fn layer(&self, l: usize) -> &Layer<Tensor> {
        &self.weights.named.layers[l]
    }

    /// The tensors libtorch's fused kernels read, in their order and named as PyTorch names them
    /// (`weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, then layer 1's, ...), each with where it
    /// lies in the flat parameter buffer (an offset in elements, from the buffer's start) and its shape.
    pub fn fused_layout(&self) -> Vec<(String, i64, Vec<i64>)> {
        let start = self.values.data_ptr() as i64;
        let names = ["weight_ih", "weight_hh", "bias_ih", "bias_hh"];
        let mut out = Vec::new();
        for (l, four) in self.weights.fused().iter().enumerate() {
            for (name, t) in names.iter().zip(four) {
                let offset = (t.data_ptr() as i64 - start) / Kind::Float.elt_size_in_bytes() as i64;
                out.push((format!("{name}_l{l}"), offset, t.size()));
            }
        }
        out
    }

    /// Where each parameter lies in the flat buffers.
    /// Per layer, the four tensors libtorch's fused kernels take, in PyTorch's order and shapes: `w_ih`
    /// `[kH, I]`, `w_hh` `[kH, H]`, `b_ih` `[kH]`, `b_hh` `[kH]` (what an exported model's recurrent operators
    /// are built from).
    pub(crate) fn fused_weights(&self) -> Vec<[Tensor; 4]> {
        self.weights.fused()
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The flat buffer that holds every parameter, Float `[P]` (a shallow handle: updating it updates the
    /// model).
    pub(crate) fn values(&self) -> &Tensor {
        &self.values
    }

    /// The flat gradient buffer, Float `[P]` in the parameters' layout, zero where no parameter lies: what
    /// the last [`Network::store_gradients`] put there.
    pub(crate) fn gradient(&self) -> &Tensor {
        self.grad.get_or_init(|| self.values.zeros_like())
    }

    /// The gradient by parameter, in [`ModelConfig::param_specs`] order and shapes (views of the flat
    /// gradient buffer that the last training step filled).
    pub fn gradients(&self) -> Vec<Tensor> {
        self.layout.roles(self.gradient()).into_vec()
    }

    /// The leaves autograd differentiates for this model's backend, in saved order, except that a fused
    /// GRU's kernels differentiate each layer's whole `b_hh` in the place of `b_hn`.
    pub(crate) fn autograd_inputs(&self) -> Vec<Tensor> {
        self.store_order(&self.weights.named, &self.weights.b_hh)
    }

    /// Puts `grads` (in [`Network::autograd_inputs`]'s order and shapes) into the flat gradient buffer and
    /// zeroes its unused parts (what a fused GRU's kernel computes for the first two thirds of `b_hh`, which
    /// is no parameter).
    pub(crate) fn store_gradients(&self, grads: &[Tensor]) {
        let _guard = tch::no_grad_guard();
        let buffer = self.gradient();
        let targets = self.store_order(&self.layout.roles(buffer), &self.layout.b_hh(buffer));
        for (target, g) in targets.iter().zip(grads) {
            let mut target = target.shallow_clone();
            if g.defined() {
                target.copy_(g);
            } else {
                let _ = target.zero_();
            }
        }
        for mut unused in self.layout.unused(buffer) {
            let _ = unused.zero_();
        }
    }

    /// `named` in saved order, with `b_hh` in the place of each `b_hn` for a fused GRU.
    fn store_order(&self, named: &Params<Tensor>, b_hh: &[Tensor]) -> Vec<Tensor> {
        let mut roles = named.map(Tensor::shallow_clone);
        if self.config.arch.backend == Backend::Fused {
            for (layer, b) in roles.layers.iter_mut().zip(b_hh) {
                if layer.b_hn.is_some() {
                    layer.b_hn = Some(b.shallow_clone());
                }
            }
        }
        roles.into_vec()
    }

    /// The bottom layer's input for the characters `ids` (Int64 `[n]`): their embedding rows `[n, D]`, or the
    /// indices themselves (one-hot input).
    fn first(&self, ids: &Tensor) -> First {
        match &self.weights.named.embedding {
            Some(table) => First::Rows(table.index_select(0, ids)),
            None => First::Ids(ids.shallow_clone()),
        }
    }

    /// Replaces the parameter values with `values` (in [`ModelConfig::param_specs`] order, same shapes).
    pub fn set_parameters(&self, values: &[Tensor]) -> Result<()> {
        if values.len() != self.params.len() {
            return Err(Error::config(
                "model",
                format!("{} values for {} parameters", values.len(), self.params.len()),
            ));
        }
        let _guard = tch::no_grad_guard();
        for (p, v) in self.params.iter().zip(values) {
            p.shallow_clone().f_copy_(v)?;
        }
        Ok(())
    }

    /// Replaces the parameter values with those of a safetensors file, checking names and shapes.
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| Error::bad_model(path, format!("cannot read weights ({e})")))?
            .into_iter()
            .collect();
        let _guard = tch::no_grad_guard();
        for ((name, shape), param) in self.config.param_specs().iter().zip(self.params.iter()) {
            let t = tensors.get(name).ok_or_else(|| Error::bad_model(path, format!("weights lack {name}")))?;
            if t.size() != *shape || t.kind() != Kind::Float {
                let msg = format!("{name} is {:?} {:?}, expected Float {shape:?}", t.kind(), t.size());
                return Err(Error::bad_model(path, msg));
            }
            param.shallow_clone().f_copy_(t)?;
        }
        Ok(())
    }

    /// The initial state: zeros, `[L, batch, H]` each.
    pub fn begin_state(&self, batch: usize) -> State {
        let c = &self.config;
        let zeros =
            || Tensor::zeros([c.arch.layers as i64, batch as i64, c.arch.hidden as i64], (Kind::Float, self.device()));
        State { h: zeros(), c: (c.arch.cell == Cell::Lstm).then(zeros) }
    }

    /// The state after reading the characters `ids` from a zero state, `[L, 1, H]` tensors (a zero state when
    /// `ids` is empty): what generation starts from, before the prefix's last character is fed.
    pub(crate) fn state_after(&self, ids: &[i64]) -> State {
        let state = self.begin_state(1);
        if ids.is_empty() {
            return state;
        }
        let x = Tensor::from_slice(ids).to_device(self.device()).view([1, -1]);
        self.forward(&x, &state, Dropout::Off).1
    }

    /// One step from the characters `x` (Int64 `[batch]`): for the one-layer rnn cell,
    /// `H = tanh(X W_xh + H W_hh + b_h)` and `Y = H W_hq + b_q` with X the one-hot rows of `x`.
    /// Returns `(y [batch, V], state)`. No dropout (this is for prediction).
    ///
    /// Computed with the written-out cells whatever the backend (the same function, fewer operations for a
    /// single step: prediction runs one step per character).
    pub fn step(&self, x: &Tensor, state: &State) -> (Tensor, State) {
        let arch = &self.config.arch;
        let first = self.first(x);
        let mut input = Tensor::new();
        let (mut hs, mut cs) = (Vec::with_capacity(arch.layers), Vec::new());
        for (l, layer) in self.weights.named.layers.iter().enumerate() {
            let xw = project(layer, l, &first, &input);
            let cell = state.c.as_ref().map(|c| c.get(l as i64));
            let (h, cell) = cell_step(arch.cell, layer, &xw, &state.h.get(l as i64), cell.as_ref());
            input = h.shallow_clone();
            hs.push(h);
            cs.extend(cell);
        }
        let y = input.mm(&self.named().w_hq) + &self.named().b_q;
        (y, State::of_layers(&hs, &cs))
    }

    /// Runs the network over a minibatch. Each layer's input projection is one matrix product over all
    /// steps, as is the output layer; only the recurrence loops over time.
    ///
    /// `inputs`: Int64 `[batch, steps]`. Returns the logits, Float `[steps * batch, V]` in step-major order
    /// (row `t * batch + b` is position `t` of sequence `b`), and the final state. `dropout` is `Off` but in
    /// training.
    pub fn forward(&self, inputs: &Tensor, state: &State, dropout: Dropout) -> (Tensor, State) {
        self.forward_at(inputs, state, dropout, Dtype::Fp32)
    }

    /// [`Network::forward`] with the output layer's product at `precision` (autograd follows the casts, so
    /// the backward products are at that precision too).
    pub(crate) fn forward_at(
        &self,
        inputs: &Tensor,
        state: &State,
        dropout: Dropout,
        precision: Dtype,
    ) -> (Tensor, State) {
        let (hs, state) = self.hidden_states(inputs, state, dropout);
        (precision.mm(&hs, &self.named().w_hq) + &self.named().b_q, state)
    }

    /// The recurrence of [`Network::forward`] without the output layer: the top layer's states, Float
    /// `[steps * batch, H]` in step-major order (after dropout, when it is on), and the final state.
    pub(crate) fn hidden_states(&self, inputs: &Tensor, state: &State, dropout: Dropout) -> (Tensor, State) {
        let arch = &self.config.arch;
        let (batch, steps) = (inputs.size()[0], inputs.size()[1]);
        let first = self.first(&inputs.transpose(0, 1).reshape([-1]));
        let recurrence = arch.backend.recurrence();
        let (hs, state) = recurrence.run(&self.config, &self.weights, first, (steps, batch), state, dropout);
        // Before the output layer (site L; between layers the recurrence drops units).
        (dropout.apply(arch.layers as u64, arch.dropout, &hs), state)
    }

    /// The summed cross-entropy of the output layer on the top-layer states `hs` (Float `[n, H]`) against
    /// `targets` (Int64 `[n]`): `sum_i logsumexp(y_i) - y_i[targets_i]` with `y = hs W_hq + b_q`, a Double
    /// scalar. No gradient. On the CPU the logits are computed `rows` at a time (a block that stays in the
    /// cache), and neither they nor their log-softmax are ever written out whole; on a GPU in one block.
    pub(crate) fn summed_cross_entropy(&self, hs: &Tensor, targets: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let n = hs.size()[0];
        let rows =
            if hs.device().is_cuda() { n.max(1) } else { (SCORE_BLOCK_FLOATS / self.config.vocab_size).max(1) as i64 };
        let total = Tensor::zeros([], (Kind::Double, hs.device()));
        for start in (0..n).step_by(rows as usize) {
            let k = rows.min(n - start);
            let y = self.named().b_q.addmm(&hs.narrow(0, start, k), &self.named().w_hq);
            let picked = y.gather(1, &targets.narrow(0, start, k).unsqueeze(1), false).squeeze_dim(1);
            let _ = total.shallow_clone().f_add_(&(y.logsumexp([1], false) - picked).sum(Kind::Double));
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::config::{Arch, Backend};
    use crate::model::ops::{cross_entropy, one_hot, step_major};
    use crate::testutil::{assert_close_to, fp32_reorder_bound};

    fn small(cell: Cell) -> Network {
        Network::new(ModelConfig::new(7, Arch { cell, ..Arch::rnn(5) }), 0, Device::Cpu).unwrap()
    }

    #[test]
    fn parameter_count_matches_the_shapes_and_refuses_overflow() {
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            for (layers, embed) in [(1, 0), (3, 0), (2, 5)] {
                let c = ModelConfig::new(7, Arch { cell, layers, embed, ..Arch::rnn(4) });
                let counted: i64 = c.param_specs().iter().map(|(_, s)| s.iter().product::<i64>()).sum();
                assert_eq!(c.parameter_count(), Some(counted as u64), "{cell:?} {layers} {embed}");
            }
        }
        let huge = ModelConfig::new(1_000_000_000_000, Arch { hidden: 1 << 40, layers: 1 << 30, ..Arch::rnn(1) });
        assert_eq!(huge.parameter_count(), None);
    }

    #[test]
    fn a_grown_network_keeps_the_trained_rows_and_initialises_the_new_ones_as_a_fresh_model() {
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            for (layers, embed) in [(1, 0), (2, 3)] {
                let arch = Arch { cell, layers, embed, ..Arch::rnn(4) };
                let source = Network::new(ModelConfig::new(5, arch), 1, Device::Cpu).unwrap();
                let config = ModelConfig::new(8, arch);
                let grown = source.grown(config, 2).unwrap();
                let fresh = Network::new(config, 2, Device::Cpu).unwrap();
                let by_name = |m: &Network| -> HashMap<String, Tensor> {
                    m.named_parameters().into_iter().map(|(n, t)| (n, t.shallow_clone())).collect()
                };
                let (s, g, f) = (by_name(&source), by_name(&grown), by_name(&fresh));
                let what = format!("{cell:?} {layers} layers, embed {embed}");
                // Worked out from the shapes: the vocabulary is dim 0 of E and of a one-hot W_xh, dim 1 of W_hq.
                let mut vocab_dim: Vec<(&str, i64)> = vec![("W_hq", 1), ("b_q", 0)];
                vocab_dim.push(if embed > 0 { ("E", 0) } else { ("W_xh", 0) });
                for (name, value) in &g {
                    match vocab_dim.iter().find(|(n, _)| n == name) {
                        Some(&(_, dim)) => {
                            assert!(value.narrow(dim, 0, 5).equal(&s[name]), "{what}: {name} old part");
                            assert!(value.narrow(dim, 5, 3).equal(&f[name].narrow(dim, 5, 3)), "{what}: {name} new");
                        }
                        None => assert!(value.equal(&s[name]), "{what}: {name}"),
                    }
                }
                // The old characters' logits are the source model's, whatever the layout.
                let x = Tensor::from_slice(&[0i64, 4, 2, 1, 3, 0]).view([2, 3]);
                let (ys, _) = source.forward(&x, &source.begin_state(2), Dropout::Off);
                let (yg, _) = grown.forward(&x, &grown.begin_state(2), Dropout::Off);
                assert!(yg.narrow(1, 0, 5).allclose(&ys, 1e-6, 1e-7, false), "{what}: logits");
            }
        }
        let source = small(Cell::Gru);
        for bad in [ModelConfig::new(6, source.config().arch), ModelConfig::new(9, Arch::rnn(6))] {
            assert!(source.grown(bad, 0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn initialisation_follows_the_textbook_and_the_seed() {
        let m = Network::new(ModelConfig::rnn(300, 200), 5, Device::Cpu).unwrap();
        let p = m.parameters();
        let std = p[0].std(true).double_value(&[]);
        assert!((std - 0.01).abs() < 0.0005, "std {std}");
        assert!(p[0].mean(Kind::Float).double_value(&[]).abs() < 0.0005);
        assert_eq!(p[2].abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert_eq!(p[4].abs().sum(Kind::Float).double_value(&[]), 0.0);
        let again = Network::new(m.config(), 5, Device::Cpu).unwrap();
        let other = Network::new(m.config(), 6, Device::Cpu).unwrap();
        assert!(again.parameters()[0].equal(p[0]));
        assert!(!other.parameters()[0].equal(p[0]));
    }

    #[test]
    fn uniform_initialisation_fills_plus_minus_one_over_root_h() {
        let m =
            Network::new(ModelConfig::new(50, Arch { init: Init::Uniform, ..Arch::rnn(100) }), 1, Device::Cpu).unwrap();
        for (name, p) in m.named_parameters() {
            let (lo, hi) = (p.min().double_value(&[]), p.max().double_value(&[]));
            assert!(lo >= -0.1 && hi <= 0.1, "{name}: [{lo}, {hi}]");
            assert!(lo < -0.09 && hi > 0.09, "{name} should fill the range: [{lo}, {hi}]");
        }
    }

    #[test]
    fn parameter_shapes_follow_cell_layers_and_embedding() {
        for (cell, k, n) in [(Cell::Rnn, 1, 5), (Cell::Gru, 3, 6), (Cell::Lstm, 4, 5)] {
            let m = small(cell);
            let named = m.named_parameters();
            assert_eq!(named.len(), n, "{cell:?}");
            assert_eq!(named[0].1.size(), vec![7, 5 * k]);
            assert_eq!(named[1].1.size(), vec![5, 5 * k]);
            assert_eq!(m.begin_state(3).c.is_some(), cell == Cell::Lstm);
        }
        let deep = Network::new(
            ModelConfig::new(7, Arch { layers: 3, embed: 4, cell: Cell::Gru, ..Arch::rnn(5) }),
            0,
            Device::Cpu,
        )
        .unwrap();
        let names: Vec<String> = deep.named_parameters().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names[..6], ["E", "W_xh", "W_hh", "b_h", "b_hn", "W_xh_l1"]);
        assert_eq!(names.len(), 1 + 3 * 4 + 2);
        assert_eq!(deep.named_parameters()[1].1.size(), vec![4, 15], "the first layer reads the embedding");
        assert_eq!(deep.named_parameters()[5].1.size(), vec![5, 15], "upper layers read H");
        assert_eq!(deep.begin_state(2).h.size(), vec![3, 2, 5]);
    }

    #[test]
    fn forward_equals_the_step_applied_in_turn() {
        let configs = [Cell::Rnn, Cell::Gru, Cell::Lstm]
            .map(|cell| ModelConfig::new(7, Arch { cell, ..Arch::rnn(5) }))
            .into_iter()
            .chain([ModelConfig::new(7, Arch { cell: Cell::Lstm, layers: 2, embed: 3, ..Arch::rnn(5) })]);
        for config in configs {
            let m = Network::new(config, 0, Device::Cpu).unwrap();
            let inputs = Tensor::from_slice(&[1i64, 2, 3, 4, 0, 6, 5, 5]).view([2, 4]);
            let mut state = m.begin_state(2);
            state.h = Tensor::randn(state.h.size(), (Kind::Float, Device::Cpu)) * 0.5;
            let (logits, end) = m.forward(&inputs, &state, Dropout::Off);
            for t in 0..4 {
                let (y, next) = m.step(&inputs.select(1, t), &state);
                state = next;
                // The same sums, but the output layer's product has other shapes (2 rows, not 8), which a BLAS
                // may block differently: V + H = 12 terms, up to 4 steps × 2 layers deep.
                assert_close_to(
                    &format!("{config:?} step {t}"),
                    &y,
                    &logits.narrow(0, t * 2, 2),
                    fp32_reorder_bound(12, 9),
                );
            }
            assert_close_to(&format!("{config:?} final state"), &state.h, &end.h, fp32_reorder_bound(12, 8));
        }
    }

    #[test]
    fn rnn_step_matches_the_textbook_formula() {
        let m = small(Cell::Rnn);
        let h = Tensor::full([1, 1, 5], 0.3, (Kind::Float, Device::Cpu));
        let (y, next) = m.step(&Tensor::from_slice(&[2i64]), &State { h: h.shallow_clone(), c: None });
        let p = m.parameters();
        let x = one_hot(&Tensor::from_slice(&[2i64]), 7);
        let expect_h = (x.mm(p[0]) + h.get(0).mm(p[1]) + p[2]).tanh();
        assert!(next.h.get(0).allclose(&expect_h, 1e-6, 1e-7, false));
        assert!(y.allclose(&(expect_h.mm(p[3]) + p[4]), 1e-6, 1e-7, false));
    }

    #[test]
    fn the_blockwise_cross_entropy_equals_libtorchs_over_the_whole_logits() {
        // 70,001 characters: 14 rows a block, so 100 positions take 8 blocks, the last one shorter.
        let vocab = 70_001;
        let model = Network::new(ModelConfig::rnn(vocab, 4), 3, Device::Cpu).unwrap();
        let scaled: Vec<Tensor> = model.parameters().into_iter().map(|p| p.detach() * 300.0).collect();
        model.set_parameters(&scaled).unwrap();
        let _guard = tch::no_grad_guard();
        let inputs = Tensor::from_slice(&(0..100).map(|i| (i * 7919 % vocab) as i64).collect::<Vec<_>>());
        let targets = Tensor::from_slice(&(0..100).map(|i| (i * 104_729 % vocab) as i64).collect::<Vec<_>>());
        let (hs, _) = model.hidden_states(&inputs.view([4, 25]), &model.begin_state(4), Dropout::Off);
        let (logits, _) = model.forward(&inputs.view([4, 25]), &model.begin_state(4), Dropout::Off);
        assert!(SCORE_BLOCK_FLOATS / vocab < 100 && 100 % (SCORE_BLOCK_FLOATS / vocab) != 0);
        let ours = model.summed_cross_entropy(&hs, &targets).double_value(&[]);
        let libtorch = cross_entropy(&logits, &targets).double_value(&[]) * 100.0;
        // Per position: a logsumexp over 70,001 float32 terms, rounded in another order by the two, relative
        // error about 1e-6 of ~|logit| (here up to ~1e3); summed over 100 positions.
        assert!((ours - libtorch).abs() <= 1e-5 * libtorch.abs().max(1.0), "{ours} vs {libtorch}");
        assert!(libtorch > 100.0, "large logits, so that a wrong target or block would show: {libtorch}");
    }

    #[test]
    fn an_embedding_equals_one_hot_times_the_table() {
        // one-hot(x) W equals gathering rows of W: the embedding input is the one-hot input with W = E W_xh.
        let table = Tensor::randn([7, 3], (Kind::Float, Device::Cpu));
        let x = Tensor::from_slice(&[4i64, 0, 6, 4]);
        assert!(one_hot(&x, 7).mm(&table).allclose(&table.index_select(0, &x), 1e-6, 1e-7, false));
        let embedded = Network::new(ModelConfig::new(7, Arch { embed: 3, ..Arch::rnn(5) }), 0, Device::Cpu).unwrap();
        let p = embedded.parameters();
        let folded: Vec<Tensor> = std::iter::once(p[0].mm(p[1])).chain(p[2..].iter().map(|t| t.detach())).collect();
        let one_hot_model = Network::from_tensors(ModelConfig::rnn(7, 5), folded, Device::Cpu).unwrap();
        let inputs = Tensor::from_slice(&[1i64, 2, 3, 6]).view([2, 2]);
        let (a, _) = embedded.forward(&inputs, &embedded.begin_state(2), Dropout::Off);
        let (b, _) = one_hot_model.forward(&inputs, &one_hot_model.begin_state(2), Dropout::Off);
        assert!(a.allclose(&b, 1e-5, 1e-6, false));
    }

    #[test]
    fn dropout_acts_in_training_only() {
        let m = Network::new(ModelConfig::new(7, Arch { dropout: 0.5, layers: 2, ..Arch::rnn(16) }), 0, Device::Cpu)
            .unwrap();
        let inputs = Tensor::from_slice(&[1i64, 2, 3, 6]).view([2, 2]);
        let s = m.begin_state(2);
        let (eval_a, _) = m.forward(&inputs, &s, Dropout::Off);
        let (eval_b, _) = m.forward(&inputs, &s, Dropout::Off);
        assert!(eval_a.equal(&eval_b), "no dropout at evaluation");
        let (train, _) = m.forward(&inputs, &s, Dropout::Seeded(1));
        assert!(!train.allclose(&eval_a, 1e-6, 1e-7, false), "dropout in training");
        let (again, _) = m.forward(&inputs, &s, Dropout::Seeded(1));
        assert!(train.equal(&again), "the same seed, the same masks");
        let (other, _) = m.forward(&inputs, &s, Dropout::Seeded(2));
        assert!(!other.allclose(&train, 1e-6, 1e-7, false), "another seed, other masks");
    }

    #[test]
    fn fused_and_scratch_backends_agree_on_outputs_and_gradients() {
        // With dropout the masks are charrnn's own, so both backends drop the same units.
        let shapes = [(1, 0, 0.0), (2, 3, 0.0), (2, 3, 0.3), (3, 0, 0.5)];
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            for (layers, embed, dropout) in shapes {
                let scratch_config = ModelConfig::new(7, Arch { cell, layers, embed, dropout, ..Arch::rnn(6) });
                let scratch = Network::new(scratch_config, 3, Device::Cpu).unwrap();
                // Weights and biases large enough for the gates and b_hn to matter.
                let values: Vec<Tensor> = scratch.parameters().iter().map(|p| p.detach() * 40.0 + 0.05).collect();
                scratch.set_parameters(&values).unwrap();
                let fused_config =
                    ModelConfig { arch: Arch { backend: Backend::Fused, ..scratch_config.arch }, ..scratch_config };
                let fused = Network::from_tensors(fused_config, values, Device::Cpu).unwrap();
                let inputs = Tensor::from_slice(&[1i64, 2, 3, 4, 0, 6, 5, 5, 2, 2, 1, 0]).view([3, 4]);
                let targets = (&inputs + 1).remainder(7);
                let mut state = scratch.begin_state(3);
                state.h = Tensor::randn(state.h.size(), (Kind::Float, Device::Cpu)) * 0.5;
                if let Some(c) = &mut state.c {
                    *c = Tensor::randn(c.size(), (Kind::Float, Device::Cpu)) * 0.5;
                }
                let mut ends = Vec::new();
                for m in [&scratch, &fused] {
                    let (logits, end) = m.forward(&inputs, &state, Dropout::Seeded(1));
                    let loss = cross_entropy(&logits, &step_major(&targets));
                    m.store_gradients(&Tensor::run_backward(&[&loss], &m.autograd_inputs(), false, false));
                    ends.push((logits, end));
                }
                let what = format!("{cell:?}, {layers} layers, embed {embed}, dropout {dropout}");
                // Sums of at most max(V + H, 4H, batch·steps) = 24 terms, 4 steps × 3 layers deep (a gradient:
                // twice that and the output layer); libtorch's kernels order them their own way.
                let (forward, backward) = (fp32_reorder_bound(24, 12), fp32_reorder_bound(24, 25));
                assert_close_to(&format!("{what}: logits"), &ends[0].0, &ends[1].0, forward);
                assert_close_to(&format!("{what}: final h"), &ends[0].1.h, &ends[1].1.h, forward);
                let names = scratch.named_parameters().into_iter().map(|(n, _)| n);
                for ((name, a), b) in names.zip(scratch.gradients()).zip(fused.gradients()) {
                    assert_close_to(&format!("{what}: gradient of {name}"), &a, &b, backward);
                }
                for unused in fused.layout().unused(fused.gradient()) {
                    assert_eq!(unused.abs().max().double_value(&[]), 0.0, "{what}: b_hh's unused part");
                }
            }
        }
    }

    #[test]
    fn loading_weights_checks_names_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let m = small(Cell::Rnn);
        let named: Vec<(String, Tensor)> = m.named_parameters().into_iter().map(|(n, t)| (n, t.contiguous())).collect();
        Tensor::write_safetensors(&named, &path).unwrap();
        let mut n = Network::new(m.config(), 1, Device::Cpu).unwrap();
        n.load_weights(&path).unwrap();
        assert!(n.parameters()[3].equal(m.parameters()[3]));
        let mut wide = Network::new(ModelConfig::rnn(7, 6), 1, Device::Cpu).unwrap();
        let err = wide.load_weights(&path).unwrap_err().to_string();
        assert!(err.contains("W_xh") && err.contains("expected"), "{err}");
        let mut gru = small(Cell::Gru);
        let err = gru.load_weights(&path).unwrap_err().to_string();
        assert!(err.contains("W_xh") || err.contains("b_hn"), "{err}");
    }

    #[test]
    fn models_written_before_cells_existed_read_as_one_layer_rnn() {
        let old: ModelConfig = serde_json::from_str(r#"{"vocab_size": 9, "hidden": 4}"#).unwrap();
        assert_eq!(old, ModelConfig::rnn(9, 4));
    }

    #[test]
    fn bad_shapes_are_refused() {
        for (config, flag) in [
            (ModelConfig::new(7, Arch { layers: 0, ..Arch::rnn(5) }), "--layers"),
            (ModelConfig::new(7, Arch { dropout: 1.0, ..Arch::rnn(5) }), "--dropout"),
            (ModelConfig::new(7, Arch { dropout: -0.1, ..Arch::rnn(5) }), "--dropout"),
            (ModelConfig::rnn(7, 0), "--hidden"),
        ] {
            let err = Network::new(config, 0, Device::Cpu).err().unwrap().to_string();
            assert!(err.contains(flag), "{err}");
        }
    }
}
