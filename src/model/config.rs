//! The network's configuration: the cell, the architecture written once ([`Arch`]), the shape with its
//! vocabulary ([`ModelConfig`]), how parameters start, how the recurrence is computed, and the output
//! layer's precision.
use crate::error::{Error, Result};
use tch::{Device, Kind, Tensor};

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
    /// The name `--cell` and model.json give it.
    pub fn name(self) -> &'static str {
        match self {
            Cell::Rnn => "rnn",
            Cell::Gru => "gru",
            Cell::Lstm => "lstm",
        }
    }

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// The textbook's: weights N(0, 0.01), biases 0.
    #[default]
    Normal,
    /// PyTorch's default for its recurrent and linear layers: every weight and bias U(−1/√H, 1/√H).
    Uniform,
}

impl Init {
    /// The name `--init` and model.json give it.
    pub fn name(self) -> &'static str {
        match self {
            Init::Normal => "normal",
            Init::Uniform => "uniform",
        }
    }
}

/// How the recurrence is computed; both give the same function of the same parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// The cells written out in tensor operations, one time step at a time ([`Cell`]'s equations).
    #[default]
    Scratch,
    /// libtorch's fused multi-layer RNN/GRU/LSTM kernels (cuDNN on a GPU, its CPU kernels otherwise).
    Fused,
}

impl Backend {
    /// The name `--backend` and model.json give it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scratch => "scratch",
            Backend::Fused => "fused",
        }
    }

    /// The faster backend for `cell` with `dropout` on `device`, as measured (`benches/compare_gated.sh`,
    /// `benches/results/cpu-gated.txt`). On a GPU libtorch's fused kernels (cuDNN's), which read the weights
    /// in place from the flat parameter buffer. On a CPU the written-out cells, whose backward pass charrnn
    /// writes out (with its own elementwise kernels) where there is no dropout; with dropout, backpropagation
    /// goes through autograd, and there libtorch's fused LSTM (oneDNN's) is the faster.
    pub fn fastest(cell: Cell, device: Device, dropout: f64) -> Backend {
        match (cell, device) {
            (_, Device::Cuda(_)) => Backend::Fused,
            (Cell::Lstm, _) if dropout > 0.0 => Backend::Fused,
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

/// The precision of the output layer's matrix products in training (forward and both backward products),
/// which at the textbook's sizes are nine tenths of the arithmetic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
    /// The name `--dtype` and model.json give it.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Fp32 => "fp32",
            Dtype::Bf16 => "bf16",
        }
    }

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_the_fused_kernels_on_a_gpu_and_the_written_out_cells_on_a_cpu() {
        for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
            assert_eq!(Backend::fastest(cell, Device::Cuda(0), 0.0), Backend::Fused, "{cell:?}");
            assert_eq!(Backend::fastest(cell, Device::Cuda(0), 0.3), Backend::Fused, "{cell:?}");
            assert_eq!(Backend::fastest(cell, Device::Cpu, 0.0), Backend::Scratch, "{cell:?}");
        }
        // With dropout the backward pass is autograd's, where oneDNN's LSTM is the faster.
        assert_eq!(Backend::fastest(Cell::Lstm, Device::Cpu, 0.3), Backend::Fused);
        assert_eq!(Backend::fastest(Cell::Gru, Device::Cpu, 0.3), Backend::Scratch);
    }
}
