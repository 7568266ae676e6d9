//! The char-RNN: parameters, one-hot encoding and the tanh RNN step (Dive into Deep Learning, "RNN from
//! scratch").
use crate::error::{Error, Result};
use crate::rng::{Rng, Stream};
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// Shape of the network; saved with the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    /// Vocabulary size V: width of the one-hot input and of the output layer.
    pub vocab_size: usize,
    /// Hidden units H.
    pub hidden: usize,
}

/// Parameter names, in the order they are saved.
pub const PARAM_NAMES: [&str; 5] = ["W_xh", "W_hh", "b_h", "W_hq", "b_q"];

/// One-hot encoding through `scatter` (the textbook's `one_hot(x, n_class)`).
///
/// `x`: Int64 indices of shape `[n]`; returns Float `[n, n_class]` with a single 1 in each row.
pub fn one_hot(x: &Tensor, n_class: usize) -> Tensor {
    let n = x.size()[0];
    Tensor::zeros([n, n_class as i64], (Kind::Float, x.device())).scatter_value(1, &x.view([-1, 1]), 1.0)
}

/// A single-layer tanh RNN with an affine output layer, its parameters held in a `VarStore`.
///
/// W_xh `[V, H]`, W_hh `[H, H]`, b_h `[H]`, W_hq `[H, V]`, b_q `[V]`, all Float.
pub struct RnnModel {
    config: ModelConfig,
    vs: nn::VarStore,
    w_xh: Tensor,
    w_hh: Tensor,
    b_h: Tensor,
    w_hq: Tensor,
    b_q: Tensor,
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
        let [s_xh, s_hh, s_h, s_hq, s_q] = Self::param_shapes(config);
        let mut normal = |shape: &[i64]| -> Result<Tensor> {
            let n = shape.iter().product::<i64>() as usize;
            let mut values: Vec<f32> = Vec::new();
            // --hidden decides this size: running out of memory must be an error, not an abort.
            values.try_reserve_exact(n).map_err(|_| {
                Error::config("--hidden", format!("a {shape:?} weight matrix does not fit in memory; use a smaller --hidden"))
            })?;
            values.extend((0..n).map(|_| (rng.normal() * 0.01) as f32));
            Ok(Tensor::from_slice(&values).view(shape))
        };
        let (w_xh, w_hh, w_hq) = (normal(&s_xh)?, normal(&s_hh)?, normal(&s_hq)?);
        let zeros = |shape: &[i64]| Tensor::zeros(shape, (Kind::Float, Device::Cpu));
        Self::from_tensors(config, [w_xh, w_hh, zeros(&s_h), w_hq, zeros(&s_q)], device)
    }

    /// A model whose parameters are copies of `params` (in [`PARAM_NAMES`] order), checked against `config`.
    pub fn from_tensors(config: ModelConfig, params: [Tensor; 5], device: Device) -> Result<Self> {
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let shapes = Self::param_shapes(config);
        let mut vars = Vec::with_capacity(5);
        for ((name, shape), t) in PARAM_NAMES.iter().zip(shapes.iter()).zip(params.iter()) {
            if t.size() != *shape {
                return Err(Error::config("model", format!("{name} has shape {:?}, expected {shape:?}", t.size())));
            }
            vars.push(root.f_var_copy(name, &t.to_kind(Kind::Float).to_device(device))?);
        }
        let [w_xh, w_hh, b_h, w_hq, b_q]: [Tensor; 5] = vars.try_into().expect("five parameters");
        Ok(RnnModel { config, vs, w_xh, w_hh, b_h, w_hq, b_q })
    }

    /// Shapes of the parameters for `config`, in [`PARAM_NAMES`] order.
    pub fn param_shapes(config: ModelConfig) -> [Vec<i64>; 5] {
        let (v, h) = (config.vocab_size as i64, config.hidden as i64);
        [vec![v, h], vec![h, h], vec![h], vec![h, v], vec![v]]
    }

    /// The network's shape.
    pub fn config(&self) -> ModelConfig {
        self.config
    }

    /// The device the parameters live on.
    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// The parameters in [`PARAM_NAMES`] order (shallow handles: updating them updates the model).
    pub fn parameters(&self) -> [&Tensor; 5] {
        [&self.w_xh, &self.w_hh, &self.b_h, &self.w_hq, &self.b_q]
    }

    /// The parameters with their names, for saving.
    pub fn named_parameters(&self) -> Vec<(&'static str, &Tensor)> {
        PARAM_NAMES.iter().copied().zip(self.parameters()).collect()
    }

    /// Replaces the parameter values with those of a safetensors file, checking names and shapes.
    pub fn load_weights(&mut self, path: &Path) -> Result<()> {
        let tensors: HashMap<String, Tensor> = Tensor::read_safetensors(path)
            .map_err(|e| Error::bad_model(path, format!("cannot read weights ({e})")))?
            .into_iter()
            .collect();
        let shapes = Self::param_shapes(self.config);
        let _guard = tch::no_grad_guard();
        for ((name, shape), param) in PARAM_NAMES.iter().zip(shapes.iter()).zip(self.parameters()) {
            let t = tensors.get(*name).ok_or_else(|| Error::bad_model(path, format!("weights lack {name}")))?;
            if t.size() != *shape || t.kind() != Kind::Float {
                let msg = format!("{name} is {:?} {:?}, expected Float {shape:?}", t.kind(), t.size());
                return Err(Error::bad_model(path, msg));
            }
            param.shallow_clone().f_copy_(t)?;
        }
        Ok(())
    }

    /// The initial hidden state: zeros of shape `[batch, H]`.
    pub fn begin_state(&self, batch: usize) -> Tensor {
        Tensor::zeros([batch as i64, self.config.hidden as i64], (Kind::Float, self.device()))
    }

    /// One RNN step: `H = tanh(X W_xh + H W_hh + b_h)`, `Y = H W_hq + b_q`.
    ///
    /// `x`: Float `[batch, V]` (one-hot rows); `h`: Float `[batch, H]`. Returns `(y [batch, V], h [batch, H])`.
    pub fn step(&self, x: &Tensor, h: &Tensor) -> (Tensor, Tensor) {
        let h = (x.mm(&self.w_xh) + h.mm(&self.w_hh) + &self.b_h).tanh();
        let y = h.mm(&self.w_hq) + &self.b_q;
        (y, h)
    }

    /// Runs the RNN over a minibatch; the same arithmetic as [`RnnModel::step`] applied at each position,
    /// with the input and output projections of all steps done as one matrix product each.
    ///
    /// `inputs`: Int64 `[batch, steps]`; `h`: Float `[batch, H]`. Returns the logits, Float
    /// `[steps * batch, V]` in step-major order (row `t * batch + b` is position `t` of sequence `b`), and
    /// the final state `[batch, H]`.
    pub fn forward(&self, inputs: &Tensor, h: &Tensor) -> (Tensor, Tensor) {
        let (batch, steps) = (inputs.size()[0], inputs.size()[1]);
        let hidden = self.config.hidden as i64;
        let x = one_hot(&inputs.transpose(0, 1).reshape([-1]), self.config.vocab_size);
        let xw = (x.mm(&self.w_xh) + &self.b_h).view([steps, batch, hidden]);
        let mut h = h.shallow_clone();
        let mut hs = Vec::with_capacity(steps as usize);
        for t in 0..steps {
            h = (xw.get(t) + h.mm(&self.w_hh)).tanh();
            hs.push(h.shallow_clone());
        }
        let logits = Tensor::stack(&hs, 0).view([steps * batch, hidden]).mm(&self.w_hq) + &self.b_q;
        (logits, h)
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

    fn small() -> RnnModel {
        RnnModel::new(ModelConfig { vocab_size: 7, hidden: 5 }, 0, Device::Cpu).unwrap()
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
        let m = RnnModel::new(ModelConfig { vocab_size: 300, hidden: 200 }, 5, Device::Cpu).unwrap();
        let [w_xh, _, b_h, _, b_q] = m.parameters();
        let std = w_xh.std(true).double_value(&[]);
        assert!((std - 0.01).abs() < 0.0005, "std {std}");
        assert!(w_xh.mean(Kind::Float).double_value(&[]).abs() < 0.0005);
        assert_eq!(b_h.abs().sum(Kind::Float).double_value(&[]), 0.0);
        assert_eq!(b_q.abs().sum(Kind::Float).double_value(&[]), 0.0);
        let again = RnnModel::new(m.config(), 5, Device::Cpu).unwrap();
        let other = RnnModel::new(m.config(), 6, Device::Cpu).unwrap();
        assert!(again.parameters()[0].equal(w_xh));
        assert!(!other.parameters()[0].equal(w_xh));
    }

    #[test]
    fn forward_equals_the_textbook_step_applied_in_turn() {
        let m = small();
        let inputs = Tensor::from_slice(&[1i64, 2, 3, 4, 0, 6, 5, 5]).view([2, 4]);
        let h0 = Tensor::randn([2, 5], (Kind::Float, Device::Cpu)) * 0.5;
        let (logits, h_end) = m.forward(&inputs, &h0);
        let mut h = h0.shallow_clone();
        for t in 0..4 {
            let x = one_hot(&inputs.select(1, t), 7);
            let (y, h_next) = m.step(&x, &h);
            h = h_next;
            assert!(y.allclose(&logits.narrow(0, t * 2, 2), 1e-6, 1e-6, false), "step {t}");
        }
        assert!(h.allclose(&h_end, 1e-6, 1e-6, false));
    }

    #[test]
    fn step_matches_the_formula() {
        let m = small();
        let x = one_hot(&Tensor::from_slice(&[2i64]), 7);
        let h = Tensor::full([1, 5], 0.3, (Kind::Float, Device::Cpu));
        let (y, h1) = m.step(&x, &h);
        let [w_xh, w_hh, b_h, w_hq, b_q] = m.parameters();
        // X is one-hot at 2, so X W_xh is row 2 of W_xh.
        let expect_h = (w_xh.get(2) + h.get(0).matmul(w_hh) + b_h).tanh();
        assert!(h1.get(0).allclose(&expect_h, 1e-6, 1e-7, false));
        assert!(y.get(0).allclose(&(expect_h.matmul(w_hq) + b_q), 1e-6, 1e-7, false));
    }

    #[test]
    fn loading_weights_checks_names_and_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let m = small();
        Tensor::write_safetensors(&m.named_parameters(), &path).unwrap();
        let mut n = RnnModel::new(m.config(), 1, Device::Cpu).unwrap();
        n.load_weights(&path).unwrap();
        assert!(n.parameters()[3].equal(m.parameters()[3]));
        let mut wide = RnnModel::new(ModelConfig { vocab_size: 7, hidden: 6 }, 1, Device::Cpu).unwrap();
        let err = wide.load_weights(&path).unwrap_err().to_string();
        assert!(err.contains("W_xh") && err.contains("expected"), "{err}");
    }
}
