//! Parameter updates: plain SGD (the textbook's) or Adam, whose moments the optimizer owns. Both work on
//! the network's flat buffers (parameters, gradient, moments), a few operations per step whatever the
//! number of parameter tensors.
use crate::error::Result;
use crate::model::config::Init;
use crate::model::flat::Layout;
use crate::model::network::Network;
use tch::Tensor;

/// Which update rule training uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// `p <- p - lr * grad` (the textbook's).
    #[default]
    Sgd,
    /// Adam (Kingma and Ba, 2015) with its usual defaults: betas 0.9 and 0.999, eps 1e-8, no weight decay;
    /// computed as `torch.optim.Adam` computes it.
    Adam,
}

impl OptimizerKind {
    /// The name `--optimizer` and model.json give it.
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
        }
    }

    /// The initialisation used when none is given: the textbook's N(0, 0.01) with its SGD setting (lr 100,
    /// clipping 0.01, tuned for it), PyTorch's uniform with Adam (measured better: see the README).
    pub fn default_init(self) -> Init {
        match self {
            OptimizerKind::Sgd => Init::Normal,
            OptimizerKind::Adam => Init::Uniform,
        }
    }

    /// The learning rate used when none is given: the textbook's 100 for SGD (on the mean loss, with
    /// clipping at 0.01), Adam's customary 0.002.
    pub fn default_lr(self) -> f64 {
        match self {
            OptimizerKind::Sgd => 100.0,
            OptimizerKind::Adam => 0.002,
        }
    }
}

/// The gradient's global L2 norm `||g||` (of the whole flat gradient, every parameter together) and the
/// clipping factor `min(theta / ||g||, 1)` that scales it to a norm of at most `theta`: scalar Float tensors,
/// left on the device (no read-back).
pub fn clip_factor(grad: &Tensor, theta: f64) -> (Tensor, Tensor) {
    let _guard = tch::no_grad_guard();
    let flat = grad.reshape([-1]);
    let norm = flat.dot(&flat).sqrt();
    let scale = (theta / &norm).clamp_max(1.0);
    (norm, scale)
}

/// Adam's constants (PyTorch's defaults).
const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// Adam's moments by parameter (in saved order): the running means of the gradient (`m`) and of its square
/// (`v`), each shaped like the parameter (what checkpoints hold).
#[derive(Debug)]
pub struct Moments {
    /// First moments.
    pub m: Vec<Tensor>,
    /// Second moments.
    pub v: Vec<Tensor>,
}

/// Adam's state: the number of updates made and the moments, flat buffers laid out as the parameters.
struct AdamState {
    step: u64,
    m: Tensor,
    v: Tensor,
}

/// An update rule bound to a model's parameters, with its state (Adam's moments), which can be saved and
/// restored so that a resumed run updates exactly as an uninterrupted one.
pub struct Optimizer {
    lr: f64,
    layout: Layout,
    adam: Option<AdamState>,
}

impl Optimizer {
    /// An optimizer of `kind` over `model`'s parameters at learning rate `lr`.
    pub fn new(kind: OptimizerKind, model: &Network, lr: f64) -> Result<Self> {
        let adam = match kind {
            OptimizerKind::Sgd => None,
            OptimizerKind::Adam => {
                let values = model.values();
                Some(AdamState { step: 0, m: values.f_zeros_like()?, v: values.f_zeros_like()? })
            }
        };
        Ok(Optimizer { lr, layout: model.layout().clone(), adam })
    }

    /// Changes the learning rate from the next step on.
    pub fn set_lr(&mut self, lr: f64) {
        self.lr = lr;
    }

    /// Clips `model`'s gradient (what the last pass stored in its flat gradient buffer) to a global L2 norm
    /// of at most `clip` and applies one update to its parameters. Returns the gradient's norm before
    /// clipping (a scalar Float, left on the device).
    pub fn update(&mut self, model: &Network, clip: f64) -> Tensor {
        let (norm, scale) = clip_factor(model.gradient(), clip);
        self.step(model.values(), model.gradient(), &scale);
        norm
    }

    /// Applies one update to `values` (the model's flat parameter buffer, `[P]`) from the flat gradient
    /// `grad` (`[P]`, the same layout) scaled by `scale` (a scalar Float: the clipping factor). Where no
    /// parameter lies the gradient is zero, and so stay the values and the moments.
    ///
    /// SGD: `p <- p - lr * scale * g`, one pass. Adam follows `torch.optim.Adam` (single-tensor form)
    /// operation for operation on `g = scale * grad`: `m <- lerp(m, g, 1 - b1)`, `v <- b2 v + (1 - b2) g^2`,
    /// `p <- p - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)`, each a pass over the buffers.
    pub(crate) fn step(&mut self, values: &Tensor, grad: &Tensor, scale: &Tensor) {
        let _guard = tch::no_grad_guard();
        let mut p = values.shallow_clone();
        let Some(adam) = &mut self.adam else {
            let _ = p.addcmul_(grad, &(scale * -self.lr));
            return;
        };
        adam.step += 1;
        let t = adam.step as i32;
        let step_size = self.lr / (1.0 - BETA1.powi(t));
        let bias_correction2_sqrt = (1.0 - BETA2.powi(t)).sqrt();
        let g = grad * scale;
        let _ = adam.m.lerp_(&g, 1.0 - BETA1);
        let _ = adam.v.g_mul_scalar_(BETA2).addcmul_(&(&g * (1.0 - BETA2)), &g);
        let mut denom = adam.v.sqrt();
        let _ = denom.g_div_scalar_(bias_correction2_sqrt).g_add_scalar_(EPS);
        let _ = p.addcdiv_(&(&adam.m * -step_size), &denom);
    }

    /// Adam's update count (0 for SGD) and its moments (shallow handles: they change with the next step).
    pub fn state(&self) -> (u64, Option<Moments>) {
        match &self.adam {
            None => (0, None),
            Some(adam) => {
                let views = |t: &Tensor| self.layout.roles(t).into_vec();
                (adam.step, Some(Moments { m: views(&adam.m), v: views(&adam.v) }))
            }
        }
    }

    /// Restores what [`Optimizer::state`] returned: `step` and `moments` (copied into the flat buffers;
    /// [`TrainState::from_named`] checked their shapes against the parameters).
    ///
    /// [`TrainState::from_named`]: crate::train::state::TrainState::from_named
    pub fn restore(&mut self, step: u64, moments: Option<Moments>) {
        if let (Some(adam), Some(moments)) = (&mut self.adam, moments) {
            let _guard = tch::no_grad_guard();
            for (flat, named) in [(&adam.m, &moments.m), (&adam.v, &moments.v)] {
                for (mut view, value) in self.layout.roles(flat).into_vec().into_iter().zip(named) {
                    view.copy_(value);
                }
            }
            adam.step = step;
        }
    }
}
