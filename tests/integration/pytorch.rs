//! Cross-checks against PyTorch itself (`tests/reference/network.py`, run with the project's `.venv`
//! interpreter): every cell, one layer with one-hot input and two stacked layers over an embedding, on both
//! backends; the forward pass, the gradients of a training step, and the parameters after several clipped
//! SGD or Adam updates.
use charrnn::{
    train_step, Arch, Backend, Cell, Dropout, Dtype, ModelConfig, Network, Optimizer, OptimizerKind, State, StepOptions,
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

/// An Int64 `[batch, steps]` tensor as rows of indices.
fn rows(t: &Tensor) -> Vec<Vec<i64>> {
    let b = t.size()[0];
    (0..b).map(|r| Vec::<i64>::try_from(t.get(r)).unwrap()).collect()
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

/// Asserts `max |ours - theirs| <= 1e-5`: float32 sums of at most a few dozen terms of magnitude up to a
/// few units, computed in other orders (about 1e-6), while a wrong gate, layer, bias or index changes values
/// by 1e-2 or more.
fn assert_close(name: &str, ours: &Tensor, theirs: &Tensor) {
    assert_eq!(ours.size(), theirs.size(), "{name}: shapes");
    let diff = (ours - theirs).abs().max().double_value(&[]);
    assert!(diff <= 1e-5, "{name}: max |charrnn - PyTorch| = {diff:e}");
}

/// Asserts parameters after Adam's updates agree: Adam divides each entry's step by the root of its own
/// running mean square gradient, so a gradient known to `1e-5` (what [`assert_close`] allows) moves an entry's
/// step by up to `lr · 1e-5 / (|g| + eps)`, where `|g|`, its first gradient, bounds that root from below by a
/// factor of at most sqrt(3) over 3 updates. Entries whose gradient sums cancel to near zero thus get a
/// wider allowance; every other entry, the bulk, is held to `1e-5`, which a wrong moment, bias correction or
/// rate exceeds at once.
fn assert_close_after_adam(name: &str, ours: &Tensor, theirs: &Tensor, first_grad: &Tensor, lr: f64) {
    let allowed = (first_grad.abs() + 1e-8).reciprocal() * (3.0 * 3f64.sqrt() * lr * 1e-5) + 1e-5;
    let excess = ((ours - theirs).abs() - &allowed).max().double_value(&[]);
    assert!(excess <= 0.0, "{name}: exceeds the allowance by {excess:e}");
}

/// A network of `arch` over `v` characters, with weights 40 times their initialisation's and every bias
/// drawn from N(0, 0.3), so that every gate, bias and path of the gradient matters.
fn network(v: usize, arch: Arch) -> Network {
    let model = Network::new(ModelConfig::new(v, arch), 4, Device::Cpu).unwrap();
    let mut rng = charrnn::Rng::new(17);
    let values: Vec<Tensor> = model
        .named_parameters()
        .into_iter()
        .map(|(name, p)| match name.starts_with('b') {
            true => {
                let noise: Vec<f32> = (0..p.numel()).map(|_| (rng.normal() * 0.3) as f32).collect();
                Tensor::from_slice(&noise).view(p.size().as_slice())
            }
            false => p.detach() * 40.0,
        })
        .collect();
    model.set_parameters(&values).unwrap();
    model
}

/// A minibatch of `[batch, steps]` indices below `v`, and a state of random values, both from charrnn's own
/// generator (not libtorch's, which other tests share).
fn minibatch(v: usize, arch: &Arch, batch: usize, steps: usize) -> (Tensor, Tensor, State) {
    let mut rng = charrnn::Rng::new(5);
    let mut ids = |n: usize| Tensor::from_slice(&(0..n).map(|_| rng.below(v) as i64).collect::<Vec<_>>());
    let inputs = ids(batch * steps).view([batch as i64, steps as i64]);
    let targets = ids(batch * steps).view([batch as i64, steps as i64]);
    let mut rng = charrnn::Rng::new(6);
    let shape = [arch.layers as i64, batch as i64, arch.hidden as i64];
    let mut random = || {
        let values: Vec<f32> = (0..shape.iter().product::<i64>()).map(|_| (rng.normal() * 0.5) as f32).collect();
        Tensor::from_slice(&values).view(shape)
    };
    let state = State { h: random(), c: (arch.cell == Cell::Lstm).then(&mut random) };
    (inputs, targets, state)
}

/// For every cell, for one layer over one-hot input and two stacked layers over an embedding, on the written-out
/// cells (whose backward pass charrnn writes out) and on libtorch's fused kernels (autograd): the logits and
/// final state of a forward pass, the loss and every gradient of a training step, and the parameters after
/// three clipped updates (SGD, then Adam: its moments and bias corrections), all as PyTorch's layers compute
/// them.
#[test]
fn every_cell_stacked_and_embedded_matches_pytorch_forward_gradients_and_updates() {
    let (v, h, batch, steps) = (11usize, 8usize, 3usize, 6usize);
    for cell in [Cell::Rnn, Cell::Gru, Cell::Lstm] {
        for (layers, embed) in [(1, 0), (2, 5)] {
            for (optimizer_kind, name, lr) in [(OptimizerKind::Sgd, "sgd", 0.5), (OptimizerKind::Adam, "adam", 0.01)] {
                let arch = Arch { cell, layers, embed, ..Arch::rnn(h) };
                let (inputs, targets, state) = minibatch(v, &arch, batch, steps);
                let reference_model = network(v, arch);
                let mut input = json!({
                    "cell": cell.to_string(), "layers": layers, "inputs": rows(&inputs), "targets": rows(&targets),
                    "h": to_json(&state.h), "optimizer": name, "lr": lr, "clip_share": 0.5, "updates": 3,
                });
                if let Some(c) = &state.c {
                    input["c"] = to_json(c);
                }
                for (pname, p) in reference_model.named_parameters() {
                    input[pname] = to_json(p);
                }
                let reference = run_reference("network.py", &input);
                // Half the first gradient's norm, so that clipping acts on every update.
                let clip = reference["clip"].as_f64().unwrap();
                for backend in [Backend::Scratch, Backend::Fused] {
                    let what = format!("{cell} {layers}x{h}, embed {embed}, {backend}, {name}");
                    let config = ModelConfig::new(v, Arch { backend, ..arch });
                    let values: Vec<Tensor> = reference_model.parameters().iter().map(|p| p.detach().copy()).collect();
                    let model = Network::from_tensors(config, values, Device::Cpu).unwrap();
                    // The fused kernels' weights lie one after another from the buffer's start, in PyTorch's
                    // flat-weight order and shapes: what cuDNN takes without a copy.
                    let mut offset = 0;
                    let flat = reference["flat"].as_array().unwrap();
                    assert_eq!(model.fused_layout().len(), flat.len(), "{what}");
                    for ((name, at, shape), theirs) in model.fused_layout().into_iter().zip(flat) {
                        assert_eq!(name, theirs[0].as_str().unwrap(), "{what}: flat order");
                        let their_shape: Vec<i64> = serde_json::from_value(theirs[1].clone()).unwrap();
                        assert_eq!((at, &shape), (offset, &their_shape), "{what}: {name}");
                        offset += shape.iter().product::<i64>();
                    }
                    let (logits, end) = tch::no_grad(|| model.forward(&inputs, &state, Dropout::Off));
                    assert_close(&format!("{what}: logits"), &logits, &from_json(&reference["logits"]));
                    assert_close(&format!("{what}: final h"), &end.h, &from_json(&reference["end_h"]));
                    if let Some(c) = &end.c {
                        assert_close(&format!("{what}: final c"), c, &from_json(&reference["end_c"]));
                    }
                    let mut optimizer = Optimizer::new(optimizer_kind, &model, lr).unwrap();
                    let options = StepOptions { clip, precision: Dtype::Fp32, dropout: Dropout::Seeded(0) };
                    let first = train_step(&model, &inputs, &targets, &state, &options, &mut optimizer);
                    assert!(first.grad_norm.double_value(&[]) > clip, "{what}: the case must exercise clipping");
                    let (loss, ref_loss) = (first.loss.double_value(&[]), reference["loss"].as_f64().unwrap());
                    assert!((loss - ref_loss).abs() <= 1e-5, "{what}: loss {loss} vs PyTorch {ref_loss}");
                    let names: Vec<String> = model.named_parameters().into_iter().map(|(n, _)| n).collect();
                    for (pname, g) in names.iter().zip(&first.grads) {
                        let theirs = from_json(&reference[format!("grad_{pname}")]);
                        assert!(theirs.abs().max().double_value(&[]) > 1e-4, "{what}: {pname}'s gradient vanishes");
                        assert_close(&format!("{what}: gradient of {pname}"), g, &theirs);
                    }
                    for _ in 1..3 {
                        let _ = train_step(&model, &inputs, &targets, &state, &options, &mut optimizer);
                    }
                    for (pname, p) in model.named_parameters() {
                        let what = format!("{what}: {pname} after 3 updates");
                        let theirs = from_json(&reference[&pname]);
                        match optimizer_kind {
                            OptimizerKind::Sgd => assert_close(&what, p, &theirs),
                            OptimizerKind::Adam => {
                                let grad = from_json(&reference[format!("grad_{pname}")]);
                                assert_close_after_adam(&what, p, &theirs, &grad, lr);
                            }
                        }
                    }
                }
            }
        }
    }
}
