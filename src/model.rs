//! The char-RNN: parameters, one-hot encoding and the recurrent cells (Dive into Deep Learning, "RNN
//! from scratch", and its GRU and LSTM chapters), written out in tensor operations.
use crate::error::{Error, Result};
use crate::rng::{Rng, Stream};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// The recurrent cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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

    /// The name used on the command line and in model files.
    pub fn name(self) -> &'static str {
        match self {
            Cell::Rnn => "rnn",
            Cell::Gru => "gru",
            Cell::Lstm => "lstm",
        }
    }
}

/// Shape of the network; saved with the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Vocabulary size V: width of the one-hot input and of the output layer.
    pub vocab_size: usize,
    /// Hidden units H.
    pub hidden: usize,
    /// The recurrent cell (models written before cells existed are `rnn`).
    #[serde(default)]
    pub cell: Cell,
}

impl ModelConfig {
    /// A textbook RNN of `hidden` units over `vocab_size` characters.
    pub fn rnn(vocab_size: usize, hidden: usize) -> Self {
        ModelConfig { vocab_size, hidden, cell: Cell::Rnn }
    }

    /// Names and shapes of the parameters, in the order they are saved:
    /// `W_xh [V, kH]`, `W_hh [H, kH]`, `b_h [kH]` (k = [`Cell::blocks`]), for a GRU also `b_hn [H]`, then
    /// the output layer `W_hq [H, V]`, `b_q [V]`.
    pub fn param_specs(&self) -> Vec<(&'static str, Vec<i64>)> {
        let (v, h, k) = (self.vocab_size as i64, self.hidden as i64, self.cell.blocks() as i64);
        let mut specs = vec![("W_xh", vec![v, k * h]), ("W_hh", vec![h, k * h]), ("b_h", vec![k * h])];
        if self.cell == Cell::Gru {
            specs.push(("b_hn", vec![h]));
        }
        specs.extend([("W_hq", vec![h, v]), ("b_q", vec![v])]);
        specs
    }
}

/// The recurrent state: hidden `h` and, for an LSTM, memory cell `c`; each Float `[batch, H]`.
#[derive(Debug)]
pub struct State {
    /// Hidden state.
    pub h: Tensor,
    /// LSTM memory cell; `None` for other cells.
    pub c: Option<Tensor>,
}

impl State {
    /// The same values cut from the autograd graph: backpropagation stops here (truncated BPTT).
    pub fn detach(&self) -> State {
        State { h: self.h.detach(), c: self.c.as_ref().map(Tensor::detach) }
    }

    /// A handle to the same tensors.
    pub fn shallow_clone(&self) -> State {
        State { h: self.h.shallow_clone(), c: self.c.as_ref().map(Tensor::shallow_clone) }
    }
}

/// One-hot encoding through `scatter` (the textbook's `one_hot(x, n_class)`).
///
/// `x`: Int64 indices of shape `[n]`; returns Float `[n, n_class]` with a single 1 in each row.
pub fn one_hot(x: &Tensor, n_class: usize) -> Tensor {
    let n = x.size()[0];
    Tensor::zeros([n, n_class as i64], (Kind::Float, x.device())).scatter_value(1, &x.view([-1, 1]), 1.0)
}

/// A single-layer recurrent network (see [`Cell`]) with an affine output layer, its parameters held in a
/// `VarStore` under the names of [`ModelConfig::param_specs`].
pub struct RnnModel {
    config: ModelConfig,
    vs: nn::VarStore,
    params: Vec<Tensor>,
}

impl RnnModel {
    /// A model with the textbook's initialisation: weights N(0, 0.01), biases 0.
    ///
    /// The weights come from charrnn's own generator seeded with `seed` (not libtorch's global one, which
    /// other threads share), so a seed gives the same model on every device and in every process.
    pub fn new(config: ModelConfig, seed: u64, device: Device) -> Result<Self> {
        if config.vocab_size == 0 || config.hidden == 0 {
            return Err(Error::config("model", "vocabulary size and --hidden must be positive"));
        }
        let mut rng = Rng::for_stream(seed, Stream::Init);
        let mut init = |name: &str, shape: &[i64]| -> Result<Tensor> {
            if name.starts_with('b') {
                return Ok(Tensor::zeros(shape, (Kind::Float, Device::Cpu)));
            }
            let n = shape.iter().product::<i64>() as usize;
            let mut values: Vec<f32> = Vec::new();
            // --hidden decides this size: running out of memory must be an error, not an abort.
            values.try_reserve_exact(n).map_err(|_| {
                Error::config("--hidden", format!("a {shape:?} weight matrix does not fit in memory; use a smaller --hidden"))
            })?;
            values.extend((0..n).map(|_| (rng.normal() * 0.01) as f32));
            Ok(Tensor::from_slice(&values).view(shape))
        };
        let params = config.param_specs().iter().map(|(name, shape)| init(name, shape)).collect::<Result<Vec<_>>>()?;
        Self::from_tensors(config, params, device)
    }

    /// A model with every parameter zero (a uniform predictor), for instance to load weights into.
    pub fn zeros(config: ModelConfig, device: Device) -> Result<Self> {
        let params = config.param_specs().iter().map(|(_, s)| Tensor::f_zeros(s.as_slice(), (Kind::Float, Device::Cpu))).collect::<std::result::Result<Vec<_>, _>>()?;
        Self::from_tensors(config, params, device)
    }

    /// A model whose parameters are copies of `params` (in [`ModelConfig::param_specs`] order), checked
    /// against `config`.
    pub fn from_tensors(config: ModelConfig, params: Vec<Tensor>, device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let specs = config.param_specs();
        if params.len() != specs.len() {
            return Err(Error::config("model", format!("{} parameters given, a {} needs {}", params.len(), config.cell.name(), specs.len())));
        }
        let mut vars = Vec::with_capacity(specs.len());
        for ((name, shape), t) in specs.iter().zip(params.iter()) {
            if t.size() != *shape {
                return Err(Error::config("model", format!("{name} has shape {:?}, expected {shape:?}", t.size())));
            }
            vars.push(root.f_var_copy(name, &t.to_kind(Kind::Float).to_device(device))?);
        }
        Ok(RnnModel { config, vs, params: vars })
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

    /// The parameters with their names, for saving.
    pub fn named_parameters(&self) -> Vec<(&'static str, &Tensor)> {
        self.config.param_specs().into_iter().map(|(name, _)| name).zip(self.parameters()).collect()
    }

    /// A parameter by name; positions follow [`ModelConfig::param_specs`] (no allocation: this is called
    /// at every time step).
    fn param(&self, name: &str) -> &Tensor {
        let last = self.params.len() - 1;
        let i = match name {
            "W_xh" => 0,
            "W_hh" => 1,
            "b_h" => 2,
            "b_hn" => 3,
            "W_hq" => last - 1,
            "b_q" => last,
            _ => unreachable!("unknown parameter {name}"),
        };
        &self.params[i]
    }

    /// Replaces the parameter values with those of a safetensors file, checking names and shapes.
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| Error::bad_model(path, format!("cannot read weights ({e})")))?
            .into_iter()
            .collect();
        let _guard = tch::no_grad_guard();
        for ((name, shape), param) in self.config.param_specs().iter().zip(self.params.iter()) {
            let t = tensors.get(*name).ok_or_else(|| Error::bad_model(path, format!("weights lack {name}")))?;
            if t.size() != *shape || t.kind() != Kind::Float {
                let msg = format!("{name} is {:?} {:?}, expected Float {shape:?}", t.kind(), t.size());
                return Err(Error::bad_model(path, msg));
            }
            param.shallow_clone().f_copy_(t)?;
        }
        Ok(())
    }

    /// The initial state: zeros, `[batch, H]` each.
    pub fn begin_state(&self, batch: usize) -> State {
        let zeros = || Tensor::zeros([batch as i64, self.config.hidden as i64], (Kind::Float, self.device()));
        State { h: zeros(), c: (self.config.cell == Cell::Lstm).then(zeros) }
    }

    /// Advances the cell one step given the input projection `xw = x W_xh + b_h` (Float `[batch, kH]`).
    fn cell_step(&self, xw: &Tensor, state: &State) -> State {
        let hw = state.h.mm(self.param("W_hh"));
        match self.config.cell {
            Cell::Rnn => State { h: (xw + hw).tanh(), c: None },
            Cell::Gru => {
                let (x3, h3) = (xw.chunk(3, 1), hw.chunk(3, 1));
                let r = (&x3[0] + &h3[0]).sigmoid();
                let z = (&x3[1] + &h3[1]).sigmoid();
                let n = (&x3[2] + r * (&h3[2] + self.param("b_hn"))).tanh();
                let h = &n + z * (&state.h - &n);
                State { h, c: None }
            }
            Cell::Lstm => {
                let g4 = (xw + hw).chunk(4, 1);
                let (i, f, g, o) = (g4[0].sigmoid(), g4[1].sigmoid(), g4[2].tanh(), g4[3].sigmoid());
                let c = f * state.c.as_ref().expect("an LSTM state has a memory cell") + i * g;
                State { h: o * c.tanh(), c: Some(c) }
            }
        }
    }

    /// One step: the cell's update from input `x` (Float `[batch, V]`, one-hot rows), then
    /// `Y = H W_hq + b_q`. For the rnn cell, `H = tanh(X W_xh + H W_hh + b_h)`. Returns `(y [batch, V], state)`.
    pub fn step(&self, x: &Tensor, state: &State) -> (Tensor, State) {
        let next = self.cell_step(&(x.mm(self.param("W_xh")) + self.param("b_h")), state);
        let y = next.h.mm(self.param("W_hq")) + self.param("b_q");
        (y, next)
    }

    /// Runs the network over a minibatch; the same arithmetic as [`RnnModel::step`] applied at each
    /// position, with the input and output projections of all steps done as one matrix product each.
    ///
    /// `inputs`: Int64 `[batch, steps]`. Returns the logits, Float `[steps * batch, V]` in step-major order
    /// (row `t * batch + b` is position `t` of sequence `b`), and the final state.
    pub fn forward(&self, inputs: &Tensor, state: &State) -> (Tensor, State) {
        let (batch, steps) = (inputs.size()[0], inputs.size()[1]);
        let hidden = self.config.hidden as i64;
        let x = one_hot(&inputs.transpose(0, 1).reshape([-1]), self.config.vocab_size);
        let xw = (x.mm(self.param("W_xh")) + self.param("b_h")).view([steps, batch, -1]);
        let mut state = state.shallow_clone();
        let mut hs = Vec::with_capacity(steps as usize);
        for t in 0..steps {
            state = self.cell_step(&xw.get(t), &state);
            hs.push(state.h.shallow_clone());
        }
        let logits = Tensor::stack(&hs, 0).view([steps * batch, hidden]).mm(self.param("W_hq")) + self.param("b_q");
        (logits, state)
    }
}

/// Mean cross-entropy (nats) of `logits` `[n, V]` against Int64 `targets` `[n]`: a scalar Float tensor.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Tensor {
    logits.cross_entropy_for_logits(targets)
}

/// Targets `[batch, steps]` reordered step-major, `[steps * batch]`, to line up with [`RnnModel::forward`].
pub fn step_major(targets: &Tensor) -> Tensor {
    targets.transpose(0, 1).reshape([-1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(cell: Cell) -> RnnModel {
        RnnModel::new(ModelConfig { vocab_size: 7, hidden: 5, cell }, 0, Device::Cpu).unwrap()
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
        let m = RnnModel::new(ModelConfig::rnn(300, 200), 5, Device::Cpu).unwrap();
        let p = m.parameters();
        let std = p[0].std(true).double_value(&[]);
        assert!((std - 0.01).abs() < 0.0005, "std {std}");
        assert!(p[0].mean(Kind::Float).double_value(&[]).abs() < 0.0005);
        assert_eq!(p[2].abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert_eq!(p[4].abs().sum(Kind::Float).double_value(&[]), 0.0);
        let again = RnnModel::new(m.config(), 5, Device::Cpu).unwrap();
        let other = RnnModel::new(m.config(), 6, Device::Cpu).unwrap();
        assert!(again.parameters()[0].equal(p[0]));
        assert!(!other.parameters()[0].equal(p[0]));
    }

    #[test]
    fn parameter_shapes_follow_the_cell() {
        for (cell, k, n) in [(Cell::Rnn, 1, 5), (Cell::Gru, 3, 6), (Cell::Lstm, 4, 5)] {
            let m = small(cell);
            let named = m.named_parameters();
            assert_eq!(named.len(), n, "{cell:?}");
            assert_eq!(named[0].1.size(), vec![7, 5 * k]);
            assert_eq!(named[1].1.size(), vec![5, 5 * k]);
            assert_eq!(m.begin_state(3).c.is_some(), cell == Cell::Lstm);
        }
    }

    #[test]
    fn forward_equals_the_step_applied_in_turn_for_every_cell() {
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            let m = small(cell);
            let inputs = Tensor::from_slice(&[1i64, 2, 3, 4, 0, 6, 5, 5]).view([2, 4]);
            let mut state = m.begin_state(2);
            state.h = Tensor::randn([2, 5], (Kind::Float, Device::Cpu)) * 0.5;
            let (logits, end) = m.forward(&inputs, &state);
            for t in 0..4 {
                let x = one_hot(&inputs.select(1, t), 7);
                let (y, next) = m.step(&x, &state);
                state = next;
                assert!(y.allclose(&logits.narrow(0, t * 2, 2), 1e-6, 1e-6, false), "{cell:?} step {t}");
            }
            assert!(state.h.allclose(&end.h, 1e-6, 1e-6, false));
        }
    }

    #[test]
    fn rnn_step_matches_the_formula() {
        let m = small(Cell::Rnn);
        let x = one_hot(&Tensor::from_slice(&[2i64]), 7);
        let h = Tensor::full([1, 5], 0.3, (Kind::Float, Device::Cpu));
        let (y, next) = m.step(&x, &State { h: h.shallow_clone(), c: None });
        let p = m.parameters();
        // X is one-hot at 2, so X W_xh is row 2 of W_xh.
        let expect_h = (p[0].get(2) + h.get(0).matmul(p[1]) + p[2]).tanh();
        assert!(next.h.get(0).allclose(&expect_h, 1e-6, 1e-7, false));
        assert!(y.get(0).allclose(&(expect_h.matmul(p[3]) + p[4]), 1e-6, 1e-7, false));
    }

    #[test]
    fn loading_weights_checks_names_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let m = small(Cell::Rnn);
        Tensor::write_safetensors(&m.named_parameters(), &path).unwrap();
        let mut n = RnnModel::new(m.config(), 1, Device::Cpu).unwrap();
        n.load_weights(&path).unwrap();
        assert!(n.parameters()[3].equal(m.parameters()[3]));
        let mut wide = RnnModel::new(ModelConfig::rnn(7, 6), 1, Device::Cpu).unwrap();
        let err = wide.load_weights(&path).unwrap_err().to_string();
        assert!(err.contains("W_xh") && err.contains("expected"), "{err}");
        let mut gru = small(Cell::Gru);
        let err = gru.load_weights(&path).unwrap_err().to_string();
        assert!(err.contains("W_xh") || err.contains("b_hn"), "{err}");
    }

    #[test]
    fn models_written_before_cells_existed_read_as_rnn() {
        let old: ModelConfig = serde_json::from_str(r#"{"vocab_size": 9, "hidden": 4}"#).unwrap();
        assert_eq!(old, ModelConfig::rnn(9, 4));
    }
}
