//! The char-RNN: parameters, one-hot encoding and the recurrent cells (Dive into Deep Learning, "RNN
//! from scratch", and its GRU and LSTM chapters), written out in tensor operations.
use crate::error::{Error, Result};
use crate::params::{Layer, Params};
use crate::rng::{Rng, Stream};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// The recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Cell {
    /// `h = tanh(x W_xh + h W_hh + b_h)` (the textbook's RNN).
    #[default]
    Rnn,
    /// Gated recurrent unit with reset gate r, update gate z and candidate n, as PyTorch and cuDNN define
    /// it (the reset gate scales `h W_hn + b_hn`, not `h`):
    /// `r = σ(x W_xr + h W_hr + b_r)`, `z = σ(x W_xz + h W_hz + b_z)`,
    /// `n = tanh(x W_xn + b_n + r ⊙ (h W_hn + b_hn))`, `h' = (1 − z) ⊙ n + z ⊙ h`.
    Gru,
    /// Long short-term memory with input, forget and output gates i, f, o, candidate g and memory cell c:
    /// `c' = f ⊙ c + i ⊙ g`, `h' = o ⊙ tanh(c')`, gates as PyTorch orders them (i, f, g, o).
    Lstm,
}

impl Cell {
    /// Blocks of H columns in W_xh, W_hh and b_h: 1 (rnn), 3 (gru: r, z, n), 4 (lstm: i, f, g, o).
    pub fn blocks(self) -> usize {
        match self {
            Cell::Rnn => 1,
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }
}

fn one() -> usize {
    1
}

/// How parameters start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// The textbook's: weights N(0, 0.01), biases 0.
    #[default]
    Normal,
    /// PyTorch's default for its recurrent and linear layers: every weight and bias U(−1/√H, 1/√H).
    Uniform,
}

/// How the recurrence is computed; both give the same function of the same parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The cells written out in tensor operations, one time step at a time ([`Cell`]'s equations).
    #[default]
    Scratch,
    /// libtorch's fused multi-layer RNN/GRU/LSTM kernels (cuDNN on a GPU, its CPU kernels otherwise).
    Fused,
}

impl Backend {
    /// The faster backend for `cell` on `device`, as measured (`benches/compare_gated.sh`,
    /// `benches/results/cpu-gated.txt`): on a CPU libtorch's fused LSTM (oneDNN's kernel) trains an LSTM
    /// about 2.5 times as fast as the written-out cell, while the written-out GRU and RNN beat libtorch's
    /// (1.2x for the GRU). On a GPU the written-out cells too, for now: cuDNN's fused kernels copy this
    /// model's weights into their own layout at every call (and libtorch warns each time).
    pub fn fastest(cell: Cell, device: Device) -> Backend {
        match (cell, device) {
            (Cell::Lstm, Device::Cpu) => Backend::Fused,
            _ => Backend::Scratch,
        }
    }
}

/// The network's architecture: everything about its shape except the vocabulary. Written once, it is
/// flattened into both [`ModelConfig`] and [`crate::TrainConfig`] (so model.json's `model` and `train`
/// sections keep the fields they always had). `Default` is the textbook's. Fields added after the first
/// release default so that older models still load (as a one-layer, one-hot rnn).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Arch {
    /// Hidden units H of every layer.
    pub hidden: usize,
    /// The recurrent cell.
    #[serde(default)]
    pub cell: Cell,
    /// Stacked recurrent layers L.
    #[serde(default = "one")]
    pub layers: usize,
    /// Width D of a learned embedding of the input characters; 0 feeds one-hot vectors (the textbook's).
    #[serde(default)]
    pub embed: usize,
    /// Dropout probability between layers and before the output layer, in training only.
    #[serde(default)]
    pub dropout: f64,
    /// How the recurrence is computed (the parameters are the same either way).
    #[serde(default)]
    pub backend: Backend,
    /// How the parameters were initialised.
    #[serde(default)]
    pub init: Init,
}

impl Default for Arch {
    fn default() -> Self {
        Arch::rnn(256)
    }
}

impl Arch {
    /// A textbook RNN of `hidden` units: one layer, one-hot input, no dropout, written-out cells, N(0, 0.01)
    /// weights.
    pub fn rnn(hidden: usize) -> Self {
        Arch {
            hidden,
            cell: Cell::Rnn,
            layers: 1,
            embed: 0,
            dropout: 0.0,
            backend: Backend::Scratch,
            init: Init::Normal,
        }
    }

    /// Checks the shape is usable.
    pub fn validate(&self) -> Result<()> {
        if self.hidden == 0 {
            return Err(Error::config("--hidden", "must be at least 1"));
        }
        if self.layers == 0 {
            return Err(Error::config("--layers", "must be at least 1"));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config("--dropout", format!("must be at least 0 and below 1, got {}", self.dropout)));
        }
        Ok(())
    }
}

/// Shape of the network; saved with the model.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Vocabulary size V: width of the one-hot input and of the output layer.
    pub vocab_size: usize,
    /// Everything else about its shape.
    #[serde(flatten)]
    pub arch: Arch,
}

/// The first layer's input to [`Network::project`]: character indices (one-hot input, whose product with
/// `W_xh` is a row gather) or rows (embeddings) to multiply by `W_xh`.
enum First {
    Ids(Tensor),
    Rows(Tensor),
}

/// The precision of the output layer's matrix products in training (forward and both backward products),
/// which at the textbook's sizes are nine tenths of the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    /// Float32 throughout.
    #[default]
    Fp32,
    /// bfloat16 operands with float32 results (AMX or AVX512-BF16 units on a CPU that has them, tensor
    /// cores on a GPU); parameters, the recurrence, the softmax and the updates stay float32.
    Bf16,
}

impl Dtype {
    /// The element kind of the products' operands.
    pub(crate) fn kind(self) -> Kind {
        match self {
            Dtype::Fp32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
        }
    }

    /// `a b` (Float `[n, k]` times `[k, m]`, either possibly a transposed view) at this precision: a Float
    /// `[n, m]` result (for float32 the casts are no-ops).
    pub(crate) fn mm(self, a: &Tensor, b: &Tensor) -> Tensor {
        a.to_kind(self.kind()).mm(&b.to_kind(self.kind())).to_kind(Kind::Float)
    }
}

impl ModelConfig {
    /// The network `arch` over `vocab_size` characters.
    pub fn new(vocab_size: usize, arch: Arch) -> Self {
        ModelConfig { vocab_size, arch }
    }

    /// A textbook RNN (one layer, one-hot input, no dropout) of `hidden` units over `vocab_size` characters.
    pub fn rnn(vocab_size: usize, hidden: usize) -> Self {
        ModelConfig::new(vocab_size, Arch::rnn(hidden))
    }

    /// Checks the shape is usable.
    pub fn validate(&self) -> Result<()> {
        if self.vocab_size == 0 {
            return Err(Error::config("--corpus", "the vocabulary must have at least 1 character"));
        }
        self.arch.validate()
    }

    /// The number of parameters, computed without building the shapes; `None` if it does not fit in a
    /// `u64` (a model file claiming such a model is refused before anything is allocated).
    pub fn parameter_count(&self) -> Option<u64> {
        let (v, h, k, d, l) = (
            self.vocab_size as u64,
            self.arch.hidden as u64,
            self.arch.cell.blocks() as u64,
            self.arch.embed as u64,
            self.arch.layers as u64,
        );
        let kh = k.checked_mul(h)?;
        let gru = if self.arch.cell == Cell::Gru { h } else { 0 };
        let first_input = if d > 0 { d } else { v };
        let embedding = v.checked_mul(d)?;
        // Each layer: W_xh [I, kH], W_hh [H, kH], b_h [kH] and for a GRU b_hn [H].
        let first = first_input.checked_add(h)?.checked_add(1)?.checked_mul(kh)?.checked_add(gru)?;
        let upper =
            h.checked_mul(2)?.checked_add(1)?.checked_mul(kh)?.checked_add(gru)?.checked_mul(l.checked_sub(1)?)?;
        let output = h.checked_add(1)?.checked_mul(v)?;
        embedding.checked_add(first)?.checked_add(upper)?.checked_add(output)
    }

    /// Names and shapes of the parameters, in the order they are saved (see [`Params::specs`]).
    pub fn param_specs(&self) -> Vec<(String, Vec<i64>)> {
        Params::<()>::specs(self).into_vec()
    }
}

/// The recurrent state: hidden `h` and, for an LSTM, memory cell `c`; each Float `[L, batch, H]` (layers
/// first, as in PyTorch).
#[derive(Debug)]
pub struct State {
    /// Hidden state.
    pub h: Tensor,
    /// LSTM memory cell; `None` for other cells.
    pub c: Option<Tensor>,
}

impl State {
    /// The state of a stack of layers from each layer's final `h` (and an LSTM's `c`), each `[batch, H]`,
    /// bottom first: `[L, batch, H]` tensors. No `c`s: no memory cell.
    pub(crate) fn of_layers(hs: &[Tensor], cs: &[Tensor]) -> State {
        State { h: Tensor::stack(hs, 0), c: (!cs.is_empty()).then(|| Tensor::stack(cs, 0)) }
    }

    /// The same values cut from the autograd graph: backpropagation stops here (truncated BPTT).
    pub fn detach(&self) -> State {
        State { h: self.h.detach(), c: self.c.as_ref().map(Tensor::detach) }
    }

    /// A handle to the same tensors.
    pub fn shallow_clone(&self) -> State {
        State { h: self.h.shallow_clone(), c: self.c.as_ref().map(Tensor::shallow_clone) }
    }
}

/// Logits per block in [`Network::summed_cross_entropy`] on the CPU: 4 MiB of floats, which stay in the
/// cache between the product that writes them and the reduction that reads them. Measured on the demo model
/// (10,000 positions, V 1,757, 2 threads, AMD EPYC Zen 5): 1 MiB to 8 MiB blocks score in 70-78 ms, 64 KiB
/// blocks in 180 ms (products too small), the whole text at once in 115 ms (the logits and their
/// log-softmax written out to memory and read back).
const SCORE_BLOCK_FLOATS: usize = 1 << 20;

/// One-hot encoding through `scatter` (the textbook's `one_hot(x, n_class)`).
///
/// `x`: Int64 indices of shape `[n]`; returns Float `[n, n_class]` with a single 1 in each row.
pub fn one_hot(x: &Tensor, n_class: usize) -> Tensor {
    let n = x.size()[0];
    Tensor::zeros([n, n_class as i64], (Kind::Float, x.device())).scatter_value(1, &x.view([-1, 1]), 1.0)
}

/// A recurrent network: an optional embedding, L stacked cells (see [`Cell`]) and an affine output layer,
/// its parameters held in a `VarStore` under the names of [`ModelConfig::param_specs`].
pub struct Network {
    config: ModelConfig,
    vs: nn::VarStore,
    /// The parameters in saved order (what the optimizer and checkpoints walk).
    params: Vec<Tensor>,
    /// The same tensors by role (what the computations read).
    named: Params<Tensor>,
}

impl Network {
    /// A model with the textbook's initialisation: weights N(0, 0.01), biases 0.
    ///
    /// The weights come from charrnn's own generator seeded with `seed` (not libtorch's global one, which
    /// other threads share), so a seed gives the same model on every device and in every process.
    pub fn new(config: ModelConfig, seed: u64, device: Device) -> Result<Self> {
        config.validate()?;
        let mut rng = Rng::for_stream(seed, Stream::Init);
        let bound = 1.0 / (config.arch.hidden as f64).sqrt();
        let mut init = |name: &str, shape: &[i64]| -> Result<Tensor> {
            let n = shape.iter().product::<i64>() as usize;
            let mut values: Vec<f32> = Vec::new();
            // --hidden decides this size: running out of memory must be an error, not an abort.
            values.try_reserve_exact(n).map_err(|_| {
                Error::config(
                    "--hidden",
                    format!("a {shape:?} weight matrix does not fit in memory; use a smaller --hidden"),
                )
            })?;
            let mut draw = |f: &mut dyn FnMut(&mut Rng) -> f64| values.extend((0..n).map(|_| f(&mut rng) as f32));
            match (name, config.arch.init) {
                // The embedding is a lookup table: N(0, 1), like torch.nn.Embedding.
                ("E", _) => draw(&mut |r| r.normal()),
                (_, Init::Normal) if name.starts_with('b') => draw(&mut |_| 0.0),
                (_, Init::Normal) => draw(&mut |r| r.normal() * 0.01),
                (_, Init::Uniform) => draw(&mut |r| (2.0 * r.uniform() - 1.0) * bound),
            }
            Ok(Tensor::from_slice(&values).view(shape))
        };
        let params = config.param_specs().iter().map(|(name, shape)| init(name, shape)).collect::<Result<Vec<_>>>()?;
        Self::from_tensors(config, params, device)
    }

    /// A model with every parameter zero (a uniform predictor), for instance to load weights into.
    pub fn zeros(config: ModelConfig, device: Device) -> Result<Self> {
        let params = config
            .param_specs()
            .iter()
            .map(|(_, s)| Tensor::f_zeros(s.as_slice(), (Kind::Float, Device::Cpu)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Self::from_tensors(config, params, device)
    }

    /// A model whose parameters are copies of `params` (in [`ModelConfig::param_specs`] order), checked
    /// against `config`.
    pub fn from_tensors(config: ModelConfig, params: Vec<Tensor>, device: Device) -> Result<Self> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let specs = config.param_specs();
        if params.len() != specs.len() {
            return Err(Error::config(
                "model",
                format!("{} parameters given, a {} needs {}", params.len(), config.arch.cell, specs.len()),
            ));
        }
        let mut vars = Vec::with_capacity(specs.len());
        for ((name, shape), t) in specs.iter().zip(params.iter()) {
            if t.size() != *shape {
                return Err(Error::config("model", format!("{name} has shape {:?}, expected {shape:?}", t.size())));
            }
            vars.push(root.f_var_copy(name.as_str(), &t.to_kind(Kind::Float).to_device(device))?);
        }
        let named = Params::from_values(&Params::<()>::specs(&config), vars.iter().map(Tensor::shallow_clone));
        Ok(Network { config, vs, params: vars, named })
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
        self.vs.device()
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
        &self.named
    }

    /// The embedding table `E [V, D]` (only called with `embed > 0`).
    fn embedding(&self) -> &Tensor {
        self.named.embedding.as_ref().expect("a model with embed > 0 has an embedding")
    }

    /// Layer `l`'s parameters.
    pub(crate) fn layer(&self, l: usize) -> &Layer<Tensor> {
        &self.named.layers[l]
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

    /// Advances layer `l`'s cell one step given its input projection `xw = x W_xh + b_h` (Float
    /// `[batch, kH]`) and its state `h` (and `c`), each `[batch, H]`. Returns the new `(h, c)`.
    fn cell_step(&self, l: usize, xw: &Tensor, h: &Tensor, c: Option<&Tensor>) -> (Tensor, Option<Tensor>) {
        let hw = h.mm(&self.layer(l).w_hh);
        match self.config.arch.cell {
            Cell::Rnn => ((xw + hw).tanh(), None),
            Cell::Gru => {
                let (x3, h3) = (xw.chunk(3, 1), hw.chunk(3, 1));
                let r = (&x3[0] + &h3[0]).sigmoid();
                let z = (&x3[1] + &h3[1]).sigmoid();
                let n = (&x3[2] + r * (&h3[2] + gru_bias(self.layer(l)))).tanh();
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

    /// One step from the characters `x` (Int64 `[batch]`): for the one-layer rnn cell,
    /// `H = tanh(X W_xh + H W_hh + b_h)` and `Y = H W_hq + b_q` with X the one-hot rows of `x`.
    /// Returns `(y [batch, V], state)`. No dropout (this is for prediction).
    ///
    /// Computed with the written-out cells whatever the backend (the same function, fewer operations for a
    /// single step: prediction runs one step per character).
    pub fn step(&self, x: &Tensor, state: &State) -> (Tensor, State) {
        let c = &self.config;
        let first = if c.arch.embed > 0 {
            First::Rows(self.embedding().index_select(0, x))
        } else {
            First::Ids(x.shallow_clone())
        };
        let mut input = Tensor::new();
        let (mut hs, mut cs) = (Vec::with_capacity(c.arch.layers), Vec::new());
        for l in 0..c.arch.layers {
            let xw = self.project(l, &first, &input);
            let cell = state.c.as_ref().map(|c| c.get(l as i64));
            let (h, cell) = self.cell_step(l, &xw, &state.h.get(l as i64), cell.as_ref());
            input = h.shallow_clone();
            hs.push(h);
            cs.extend(cell);
        }
        let y = input.mm(&self.named.w_hq) + &self.named.b_q;
        (y, State::of_layers(&hs, &cs))
    }

    /// Runs the network over a minibatch. Each layer's input projection is one matrix product over all
    /// steps, as is the output layer; only the recurrence loops over time.
    ///
    /// `inputs`: Int64 `[batch, steps]`. Returns the logits, Float `[steps * batch, V]` in step-major order
    /// (row `t * batch + b` is position `t` of sequence `b`), and the final state. `train` turns dropout on.
    pub fn forward(&self, inputs: &Tensor, state: &State, train: bool) -> (Tensor, State) {
        self.forward_at(inputs, state, train, Dtype::Fp32)
    }

    /// [`Network::forward`] with the output layer's product at `precision` (autograd follows the casts, so
    /// the backward products are at that precision too).
    pub(crate) fn forward_at(&self, inputs: &Tensor, state: &State, train: bool, precision: Dtype) -> (Tensor, State) {
        let (hs, state) = self.hidden_states(inputs, state, train);
        (precision.mm(&hs, &self.named.w_hq) + &self.named.b_q, state)
    }

    /// The recurrence of [`Network::forward`] without the output layer: the top layer's states, Float
    /// `[steps * batch, H]` in step-major order (after dropout when `train`), and the final state.
    pub(crate) fn hidden_states(&self, inputs: &Tensor, state: &State, train: bool) -> (Tensor, State) {
        let c = &self.config;
        let (batch, steps) = (inputs.size()[0], inputs.size()[1]);
        let ids = inputs.transpose(0, 1).reshape([-1]);
        let (mut hs, state) = match (c.arch.backend, c.arch.embed > 0) {
            (Backend::Scratch, true) => {
                self.recur_scratch(First::Rows(self.embedding().index_select(0, &ids)), steps, batch, state, train)
            }
            // One-hot rows times W_xh are rows of W_xh: gathered, not multiplied (the same numbers, V times
            // less work; `an_embedding_equals_one_hot_times_the_table` checks the identity).
            (Backend::Scratch, false) => self.recur_scratch(First::Ids(ids), steps, batch, state, train),
            // [steps * batch, I]: embedding rows, or one-hot rows (the textbook's X) for libtorch's kernels.
            (Backend::Fused, true) => {
                self.recur_fused(self.embedding().index_select(0, &ids), steps, batch, state, train)
            }
            (Backend::Fused, false) => self.recur_fused(one_hot(&ids, c.vocab_size), steps, batch, state, train),
        };
        if c.arch.dropout > 0.0 {
            // Before the output layer (between layers it is applied by the recurrence).
            hs = hs.dropout(c.arch.dropout, train);
        }
        (hs, state)
    }

    /// The summed cross-entropy of the output layer on the top-layer states `hs` (Float `[n, H]`) against
    /// `targets` (Int64 `[n]`): `sum_i logsumexp(y_i) - y_i[targets_i]` with `y = hs W_hq + b_q`, a Double
    /// scalar. No gradient. On the CPU the logits are computed `rows` at a time (a block that stays in the
    /// cache), and neither they nor their log-softmax are ever written out whole; on a GPU in one block.
    pub(crate) fn summed_cross_entropy(&self, hs: &Tensor, targets: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let n = hs.size()[0];
        let block = std::env::var("ZZB").ok().and_then(|v| v.parse().ok()).unwrap_or(SCORE_BLOCK_FLOATS);
        let rows = if hs.device().is_cuda() { n.max(1) } else { (block / self.config.vocab_size).max(1) as i64 };
        let total = Tensor::zeros([], (Kind::Double, hs.device()));
        for start in (0..n).step_by(rows as usize) {
            let k = rows.min(n - start);
            let y = self.named.b_q.addmm(&hs.narrow(0, start, k), &self.named.w_hq);
            let picked = y.gather(1, &targets.narrow(0, start, k).unsqueeze(1), false).squeeze_dim(1);
            let _ = total.shallow_clone().f_add_(&(y.logsumexp([1], false) - picked).sum(Kind::Double));
        }
        total
    }

    /// Layer `l`'s input projection `x W_xh + b_h`, `[n, kH]`: of `first` for the bottom layer (one-hot
    /// input: a row gather of `W_xh`), else of the outputs of the layer below, `below` `[n, H]`.
    fn project(&self, l: usize, first: &First, below: &Tensor) -> Tensor {
        let w_xh = &self.layer(l).w_xh;
        let projection = match (l, first) {
            (0, First::Ids(ids)) => w_xh.index_select(0, ids),
            (0, First::Rows(rows)) => rows.mm(w_xh),
            _ => below.mm(w_xh),
        };
        projection + &self.layer(l).b_h
    }

    /// The layers written out: a loop over time per layer, each step [`Network::cell_step`].
    /// `first`: the first layer's input, `[steps * batch]` indices or `[steps * batch, D]` rows; returns the
    /// top layer's states `[steps * batch, H]` and the final state.
    fn recur_scratch(&self, first: First, steps: i64, batch: i64, state: &State, train: bool) -> (Tensor, State) {
        let c = &self.config;
        let (mut hs_end, mut cs_end) = (Vec::with_capacity(c.arch.layers), Vec::new());
        let mut xs = Tensor::new();
        for l in 0..c.arch.layers {
            if l > 0 && c.arch.dropout > 0.0 {
                xs = xs.dropout(c.arch.dropout, train);
            }
            let xw = self.project(l, &first, &xs).view([steps, batch, -1]);
            let mut h = state.h.get(l as i64);
            let mut cell = state.c.as_ref().map(|c| c.get(l as i64));
            let mut outs = Vec::with_capacity(steps as usize);
            for t in 0..steps {
                (h, cell) = self.cell_step(l, &xw.get(t), &h, cell.as_ref());
                outs.push(h.shallow_clone());
            }
            xs = Tensor::stack(&outs, 0).view([steps * batch, c.arch.hidden as i64]);
            hs_end.push(h);
            cs_end.extend(cell);
        }
        (xs, State::of_layers(&hs_end, &cs_end))
    }

    /// The same layers through libtorch's multi-layer kernels (`at::rnn_tanh`, `at::gru`, `at::lstm`:
    /// cuDNN on a GPU), fed this model's own parameters in their layout (`weight_ih = W_xh^T`,
    /// `weight_hh = W_hh^T`, `bias_ih = b_h`, `bias_hh = 0`, or `[0, 0, b_hn]` for a GRU).
    fn recur_fused(&self, xs: Tensor, steps: i64, batch: i64, state: &State, train: bool) -> (Tensor, State) {
        let c = &self.config;
        let h = c.arch.hidden as i64;
        let mut flat = Vec::with_capacity(4 * c.arch.layers);
        for l in 0..c.arch.layers {
            let layer = self.layer(l);
            let b_hh = match c.arch.cell {
                Cell::Gru => Tensor::cat(&[&layer.b_h.zeros_like().narrow(0, 0, 2 * h), gru_bias(layer)], 0),
                _ => layer.b_h.zeros_like(),
            };
            flat.extend([layer.w_xh.tr().contiguous(), layer.w_hh.tr().contiguous(), layer.b_h.shallow_clone(), b_hh]);
        }
        let input = xs.view([steps, batch, -1]);
        let (layers, p) = (c.arch.layers as i64, c.arch.dropout);
        let (out, state) = match c.arch.cell {
            Cell::Rnn => {
                let (out, h_n) = input.rnn_tanh(&state.h, &flat, true, layers, p, train, false, false);
                (out, State { h: h_n, c: None })
            }
            Cell::Gru => {
                let (out, h_n) = input.gru(&state.h, &flat, true, layers, p, train, false, false);
                (out, State { h: h_n, c: None })
            }
            Cell::Lstm => {
                let c0 = state.c.as_ref().expect("an LSTM state has a memory cell");
                let flat: Vec<&Tensor> = flat.iter().collect();
                let (out, h_n, c_n) = input.lstm(&[&state.h, c0], &flat, true, layers, p, train, false, false);
                (out, State { h: h_n, c: Some(c_n) })
            }
        };
        (out.view([steps * batch, h]), state)
    }
}

/// A GRU layer's `b_hn`.
pub(crate) fn gru_bias(layer: &Layer<Tensor>) -> &Tensor {
    layer.b_hn.as_ref().expect("a GRU layer has b_hn")
}

/// Mean cross-entropy (nats) of `logits` `[n, V]` against Int64 `targets` `[n]`: a scalar Float tensor.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.cross_entropy_for_logits(targets)
}

/// Targets `[batch, steps]` reordered step-major, `[steps * batch]`, to line up with [`Network::forward`].
pub fn step_major(targets: &Tensor) -> Tensor {
    targets.transpose(0, 1).reshape([-1])
}

#[cfg(test)]
mod tests {
    use super::*;
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
                let (ys, _) = source.forward(&x, &source.begin_state(2), false);
                let (yg, _) = grown.forward(&x, &grown.begin_state(2), false);
                assert!(yg.narrow(1, 0, 5).allclose(&ys, 1e-6, 1e-7, false), "{what}: logits");
            }
        }
        let source = small(Cell::Gru);
        for bad in [ModelConfig::new(6, source.config().arch), ModelConfig::new(9, Arch::rnn(6))] {
            assert!(source.grown(bad, 0).is_err(), "{bad:?}");
        }
    }

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
            let (logits, end) = m.forward(&inputs, &state, false);
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
        let (hs, _) = model.hidden_states(&inputs.view([4, 25]), &model.begin_state(4), false);
        let (logits, _) = model.forward(&inputs.view([4, 25]), &model.begin_state(4), false);
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
        let (a, _) = embedded.forward(&inputs, &embedded.begin_state(2), false);
        let (b, _) = one_hot_model.forward(&inputs, &one_hot_model.begin_state(2), false);
        assert!(a.allclose(&b, 1e-5, 1e-6, false));
    }

    #[test]
    fn dropout_acts_in_training_only() {
        let m = Network::new(ModelConfig::new(7, Arch { dropout: 0.5, layers: 2, ..Arch::rnn(16) }), 0, Device::Cpu)
            .unwrap();
        let inputs = Tensor::from_slice(&[1i64, 2, 3, 6]).view([2, 2]);
        let s = m.begin_state(2);
        let (eval_a, _) = m.forward(&inputs, &s, false);
        let (eval_b, _) = m.forward(&inputs, &s, false);
        assert!(eval_a.equal(&eval_b), "no dropout at evaluation");
        let (train, _) = m.forward(&inputs, &s, true);
        assert!(!train.allclose(&eval_a, 1e-6, 1e-7, false), "dropout in training");
    }

    #[test]
    fn fused_and_scratch_backends_agree_on_outputs_and_gradients() {
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            for (layers, embed) in [(1, 0), (2, 3)] {
                let scratch_config = ModelConfig::new(7, Arch { cell, layers, embed, ..Arch::rnn(6) });
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
                    let (logits, end) = m.forward(&inputs, &state, true);
                    cross_entropy(&logits, &step_major(&targets)).backward();
                    ends.push((logits, end));
                }
                let what = format!("{cell:?}, {layers} layers, embed {embed}");
                // Sums of at most max(V + H, 4H, batch·steps) = 24 terms, 4 steps × 2 layers deep (a gradient:
                // twice that and the output layer); libtorch's kernels order them their own way.
                let (forward, backward) = (fp32_reorder_bound(24, 8), fp32_reorder_bound(24, 17));
                assert_close_to(&format!("{what}: logits"), &ends[0].0, &ends[1].0, forward);
                assert_close_to(&format!("{what}: final h"), &ends[0].1.h, &ends[1].1.h, forward);
                for ((name, a), b) in scratch.named_parameters().into_iter().zip(fused.parameters()) {
                    assert_close_to(&format!("{what}: gradient of {name}"), &a.grad(), &b.grad(), backward);
                }
            }
        }
    }

    #[test]
    fn loading_weights_checks_names_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let m = small(Cell::Rnn);
        Tensor::write_safetensors(&m.named_parameters(), &path).unwrap();
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
