//! Parameter updates: plain SGD (the textbook's) or Adam, whose moments the optimizer owns. Both work on
//! the network's flat buffers (parameters, gradient, moments), a few operations per step whatever the
//! number of parameter tensors.
use crate::error::Result;
use crate::model::config::Init;
use crate::model::flat::Layout;
use crate::model::network::Network;
use crate::openmp::parallel_rows;
use crate::simd::multiversion;
use tch::{Device, Kind, Tensor};

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

/// What one Adam update needs besides the buffers: the clipping factor, `lr / (1 - b1^t)` and
/// `sqrt(1 - b2^t)`.
struct AdamStep {
    scale: f32,
    step_size: f32,
    bias_correction2_sqrt: f32,
}

multiversion! {
    /// Adam's update of one stretch of the flat buffers, in one pass: the same operations, in the same
    /// order, as the libtorch calls of [`Optimizer::step`] make over whole buffers (what a GPU runs).
    fn adam_stretch(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], k: &AdamStep) {
        let (w1, b2, w2, eps) = ((1.0 - BETA1) as f32, BETA2 as f32, (1.0 - BETA2) as f32, EPS as f32);
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
            let g = g * k.scale;
            *m += w1 * (g - *m);
            *v = *v * b2 + (g * w2) * g;
            let denom = v.sqrt() / k.bias_correction2_sqrt + eps;
            *p += (*m * -k.step_size) / denom;
        }
    }
}

/// Adam's update in libtorch's operations, each a pass over the whole buffers (on a GPU).
fn adam_with_libtorch(
    p: &mut Tensor,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    scale: &Tensor,
    step_size: f64,
    bias_correction2_sqrt: f64,
) {
    let g = grad * scale;
    let _ = m.lerp_(&g, 1.0 - BETA1);
    let _ = v.g_mul_scalar_(BETA2).addcmul_(&(&g * (1.0 - BETA2)), &g);
    let mut denom = v.sqrt();
    let _ = denom.g_div_scalar_(bias_correction2_sqrt).g_add_scalar_(EPS);
    let _ = p.addcdiv_(&(&*m * -step_size), &denom);
}

/// [`adam_stretch`] over the whole flat buffers (contiguous Float on the CPU, of one length), in stretches
/// split among libtorch's threads.
fn adam_on_cpu(p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor, k: &AdamStep) {
    const STRETCH: usize = 1 << 14;
    let n = p.numel();
    let address = |t: &Tensor| t.data_ptr() as usize;
    let (p0, g0, m0, v0) = (address(p), address(g), address(m), address(v));
    parallel_rows(n.div_ceil(STRETCH), &|r| {
        let (start, end) = (r.start * STRETCH, (r.end * STRETCH).min(n));
        let part = |base: usize| (base as *mut f32).wrapping_add(start);
        // SAFETY: the four buffers are distinct allocations of n floats, alive for the call; each thread
        // takes the elements start..end, which no other thread touches.
        let (p, g, m, v) = unsafe {
            use std::slice::{from_raw_parts, from_raw_parts_mut};
            (
                from_raw_parts_mut(part(p0), end - start),
                from_raw_parts(part(g0), end - start),
                from_raw_parts_mut(part(m0), end - start),
                from_raw_parts_mut(part(v0), end - start),
            )
        };
        adam_stretch(p, g, m, v, k);
    });
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
        let buffers = [&p, grad, &adam.m, &adam.v];
        if buffers.iter().all(|t| t.device() == Device::Cpu && t.kind() == Kind::Float && t.is_contiguous()) {
            let k = AdamStep {
                scale: scale.double_value(&[]) as f32,
                step_size: step_size as f32,
                bias_correction2_sqrt: bias_correction2_sqrt as f32,
            };
            adam_on_cpu(&p, grad, &adam.m, &adam.v, &k);
        } else {
            adam_with_libtorch(&mut p, grad, &mut adam.m, &mut adam.v, scale, step_size, bias_correction2_sqrt);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_loop_updates_as_libtorchs_operations_do() {
        // 100,003 elements: several stretches for each thread, the last one short.
        let n = 100_003;
        let randn = || Tensor::randn([n], (Kind::Float, Device::Cpu));
        let (p, m, v) = (randn(), randn() * 0.1, randn().square() * 0.01);
        let (mut theirs, mut m2, mut v2, start) = (p.copy(), m.copy(), v.copy(), p.copy());
        let scale = Tensor::from(0.7f32);
        for t in 1..=3 {
            let grad = randn();
            let (step_size, bc2) = (0.01 / (1.0 - BETA1.powi(t)), (1.0 - BETA2.powi(t)).sqrt());
            let k = AdamStep { scale: 0.7, step_size: step_size as f32, bias_correction2_sqrt: bc2 as f32 };
            adam_on_cpu(&p, &grad, &m, &v, &k);
            adam_with_libtorch(&mut theirs, &grad, &mut m2, &mut v2, &scale, step_size, bc2);
        }
        // The same operations in the same order; libtorch's vector kernels may fuse a multiply and an add
        // (one rounding instead of two): a few float32 ulps per step, of values of order 1.
        for (ours, theirs) in [(&p, &theirs), (&m, &m2), (&v, &v2)] {
            let diff = (ours - theirs).abs().max().double_value(&[]);
            assert!(diff <= 1e-5, "difference {diff:e}");
        }
        let moved = (&p - &start).abs().gt(0.0).sum(Kind::Int64).int64_value(&[]);
        assert_eq!(moved, n, "every parameter moved");
    }
}
