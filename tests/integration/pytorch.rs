//! Cross-checks against PyTorch itself, run with the project's `.venv` interpreter.
use charrnn::{
    clip_factor, cross_entropy, step_major, train_step, Arch, Cell, Dtype, ModelConfig, Network, Optimizer,
    OptimizerKind, State,
};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use tch::{Device, Kind, Tensor};

fn python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(p.exists(), "{} is missing: run scripts/setup.sh (make test does)", p.display());
    p
}

fn to_json(t: &Tensor) -> Value {
    let data = Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).reshape([-1])).unwrap();
    json!({ "shape": t.size(), "data": data })
}

fn from_json(v: &Value) -> Tensor {
    let shape: Vec<i64> = serde_json::from_value(v["shape"].clone()).unwrap();
    let data: Vec<f64> = serde_json::from_value(v["data"].clone()).unwrap();
    Tensor::from_slice(&data).reshape(shape).to_kind(Kind::Float)
}

/// Runs `tests/reference/SCRIPT IN.json OUT.json` with the `.venv` interpreter and returns OUT.
fn run_reference(script: &str, input: &Value) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (src, dst) = (dir.path().join("in.json"), dir.path().join("out.json"));
    std::fs::write(&src, input.to_string()).unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference").join(script);
    let status = Command::new(python()).arg(&script).arg(&src).arg(&dst).status().unwrap();
    assert!(status.success(), "the PyTorch reference {} failed", script.display());
    serde_json::from_slice(&std::fs::read(&dst).unwrap()).unwrap()
}

/// Multiplies every parameter by `factor`: larger than the textbook's 0.01 weights make gradients and
/// gates non-trivial.
fn scale(model: &Network, factor: f64) {
    tch::no_grad(|| {
        for p in model.parameters() {
            let _ = p.shallow_clone().f_mul_scalar_(factor).unwrap();
        }
    });
}

fn assert_close(name: &str, ours: &Tensor, theirs: &Tensor) {
    let diff = (ours - theirs).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "{name}: max |charrnn - PyTorch| = {diff:e}");
}

/// Training steps (forward, mean cross-entropy, backward, global-norm clipping, then SGD or Adam) agree with
/// PyTorch's nn.RNN + F.cross_entropy + clip_grad_norm_ + optim.SGD / optim.Adam on the same weights and
/// minibatch, to 1e-5: the first step's loss and clipped gradients, and the weights after several updates
/// (which checks Adam's moments and bias corrections).
#[test]
fn one_training_step_matches_pytorch() {
    let (v, h, batch, steps) = (23usize, 16usize, 4i64, 7i64);
    for (kind, name, lr, updates) in [(OptimizerKind::Sgd, "sgd", 0.7, 2), (OptimizerKind::Adam, "adam", 0.01, 4)] {
        let model = Network::new(ModelConfig::rnn(v, h), 11, Device::Cpu).unwrap();
        scale(&model, 30.0);
        tch::manual_seed(5);
        let inputs = Tensor::randint(v as i64, [batch, steps], (Kind::Int64, Device::Cpu));
        let targets = Tensor::randint(v as i64, [batch, steps], (Kind::Int64, Device::Cpu));
        let state = Tensor::randn([batch, h as i64], (Kind::Float, Device::Cpu)) * 0.3;
        let clip = 0.5;

        let mut input = json!({
            "inputs": charrnn::rows(&inputs), "targets": charrnn::rows(&targets),
            "state": to_json(&state), "lr": lr, "clip": clip, "optimizer": name,
            "updates": updates,
        });
        for (pname, p) in model.named_parameters() {
            input[pname] = to_json(p);
        }
        let reference = run_reference("train_step.py", &input);

        let mut optimizer = Optimizer::new(kind, &model, lr).unwrap();
        let state = State { h: state.unsqueeze(0), c: None };
        let first = train_step(&model, &inputs, &targets, &state, clip, Dtype::Fp32, &mut optimizer);
        let loss = first.loss.double_value(&[]);
        let ref_loss = reference["loss"].as_f64().unwrap();
        assert!((loss - ref_loss).abs() <= 1e-5, "{name}: loss {loss} vs PyTorch {ref_loss}");
        let (_, factor) = clip_factor(&first.grads, clip);
        let mut grad_norm_sq = 0.0f64;
        for ((pname, _), g) in model.named_parameters().into_iter().zip(&first.grads) {
            let clipped = g * &factor;
            assert_close(
                &format!("{name}: clipped grad of {pname}"),
                &clipped,
                &from_json(&reference[format!("grad_{pname}")]),
            );
            grad_norm_sq += clipped.square().sum(Kind::Double).double_value(&[]);
        }
        for _ in 1..updates {
            let _ = train_step(&model, &inputs, &targets, &state, clip, Dtype::Fp32, &mut optimizer);
        }
        for (pname, p) in model.named_parameters() {
            assert_close(&format!("{name}: {pname} after {updates} updates"), p, &from_json(&reference[&pname]));
        }
        // The case must exercise clipping: the clipped norm sits at theta.
        assert!((grad_norm_sq.sqrt() - clip).abs() < 1e-4, "clipped norm {}", grad_norm_sq.sqrt());
    }
}

/// Loss and gradients of every cell (rnn, gru, lstm) agree with PyTorch's nn.RNN / nn.GRU / nn.LSTM on the
/// same weights, minibatch and initial state, to 1e-5.
#[test]
fn cell_gradients_match_pytorch_layers() {
    let (v, h, batch, steps) = (11usize, 8usize, 3i64, 6i64);
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        let model = Network::new(ModelConfig::new(v, Arch { cell, ..Arch::rnn(h) }), 4, Device::Cpu).unwrap();
        scale(&model, 40.0);
        // Non-zero biases, so that a misplaced bias would show.
        tch::no_grad(|| {
            for (name, p) in model.named_parameters() {
                if name.starts_with('b') {
                    p.shallow_clone().f_copy_(&(Tensor::randn(p.size(), (Kind::Float, Device::Cpu)) * 0.3)).unwrap();
                }
            }
        });
        tch::manual_seed(7);
        let inputs = Tensor::randint(v as i64, [batch, steps], (Kind::Int64, Device::Cpu));
        let targets = Tensor::randint(v as i64, [batch, steps], (Kind::Int64, Device::Cpu));
        let mut state = model.begin_state(batch as usize);
        state.h = Tensor::randn([1, batch, h as i64], (Kind::Float, Device::Cpu)) * 0.5;
        if let Some(c) = &mut state.c {
            *c = Tensor::randn([1, batch, h as i64], (Kind::Float, Device::Cpu)) * 0.5;
        }
        let mut input = json!({
            "cell": cell.to_string(), "inputs": charrnn::rows(&inputs), "targets": charrnn::rows(&targets),
            "h": to_json(&state.h.get(0)),
        });
        if let Some(c) = &state.c {
            input["c"] = to_json(&c.get(0));
        }
        for (name, p) in model.named_parameters() {
            input[name] = to_json(p);
        }
        let reference = run_reference("cell_grads.py", &input);

        let (logits, _) = model.forward(&inputs, &state, false);
        let loss = cross_entropy(&logits, &step_major(&targets));
        loss.backward();
        let (ours, theirs) = (loss.double_value(&[]), reference["loss"].as_f64().unwrap());
        assert!((ours - theirs).abs() <= 1e-5, "{cell:?}: loss {ours} vs PyTorch {theirs}");
        for (name, p) in model.named_parameters() {
            assert_close(&format!("{cell:?}: gradient of {name}"), &p.grad(), &from_json(&reference[name]));
        }
    }
}
