//! `charrnn export --onnx`, read back by onnxruntime (`tests/reference/onnx_run.py`, in the project's
//! `.venv`): for every cell, one and two layers, over one-hot input and over an embedding, the exported model
//! scores a text as `charrnn eval` does, continues a prefix greedily as `charrnn predict` does, carries its
//! state across calls, and its metadata decodes the vocabulary.
use crate::cli::{Env, LYRICS};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;

/// Runs the onnxruntime reader on `model` with `input`; its output.
fn onnx_run(env: &Env, model: &str, input: &Value) -> Value {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/reference/onnx_run.py");
    env.write("in.json", input.to_string().as_bytes());
    let mut command = Command::new(python);
    command.arg(script).arg(env.path(model)).arg(env.path("in.json")).arg(env.path("out.json"));
    let out = command.output().unwrap();
    assert!(out.status.success(), "onnx_run.py: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&std::fs::read(env.path("out.json")).unwrap()).unwrap()
}

#[test]
fn an_exported_model_computes_what_charrnn_does_in_onnxruntime() {
    let env = Env::new();
    for cell in ["rnn", "gru", "lstm"] {
        for (layers, embed) in [("1", "0"), ("1", "8"), ("2", "0"), ("2", "8")] {
            let what = format!("{cell} {layers} layers, embed {embed}");
            let dir = format!("runs/{cell}{layers}e{embed}");
            let r = env.train(&["--cell", cell, "--layers", layers, "--embed", embed, "--out", &dir, "--epochs", "8"]);
            assert_eq!(r.code, 0, "{what}: {}", r.stderr);
            let file = format!("{cell}{layers}e{embed}.onnx");
            let r = env.run(&["export", "--model", &dir, "--onnx", &file]);
            assert_eq!(r.code, 0, "{what}: {}", r.stderr);
            assert!(
                r.stderr.starts_with(&format!("wrote {file} ("))
                    && r.stderr.contains(&format!("charrnn {cell} {layers}x32")),
                "{}",
                r.stderr
            );
            let eval: Value = serde_json::from_str(&env.run(&["eval", "--model", &dir, "--json"]).stdout).unwrap();
            let predicted = env.run(&["predict", "--model", &dir, "--prefix", "分开", "--num-chars", "12"]).stdout;
            let input = json!({
                "text": LYRICS.repeat(6), "context": eval["context"], "prefix": "分开", "num_chars": 12, "split": 3,
            });
            let onnx = onnx_run(&env, &file, &input);
            // The same positions scored; the mean cross-entropy of float32 logits (each log-probability good to
            // about 1e-6 here: sums of a few dozen float32 terms of a few units), taken here in float64.
            assert_eq!(onnx["predictions"], eval["predictions"], "{what}");
            let (ours, theirs) = (eval["cross_entropy"].as_f64().unwrap(), onnx["cross_entropy"].as_f64().unwrap());
            assert!((ours - theirs).abs() <= 1e-5, "{what}: charrnn {ours}, onnxruntime {theirs}");
            assert_eq!(onnx["greedy"].as_str().unwrap(), predicted.strip_suffix('\n').unwrap(), "{what}");
            // Reading a window in two calls that carry the state gives what one call gives, to float32's
            // rounding of the same operations.
            assert!(onnx["carry_diff"].as_f64().unwrap() <= 1e-5, "{what}: {}", onnx["carry_diff"]);
            let json: Value =
                serde_json::from_slice(&std::fs::read(env.path(&dir).join("model.json")).unwrap()).unwrap();
            assert_eq!(onnx["vocab"], json["vocab"], "{what}");
            assert_eq!((onnx["keep_newlines"].as_bool(), &onnx["model"]["model"]), (Some(false), &json["model"]));
            let state: &[&str] = if cell == "lstm" { &["h0", "c0"] } else { &["h0"] };
            let outs: &[&str] = if cell == "lstm" { &["logits", "h", "c"] } else { &["logits", "h"] };
            assert_eq!(onnx["inputs"], json!([&["chars"][..], state].concat()), "{what}");
            assert_eq!(onnx["outputs"], json!(outs), "{what}");
        }
    }
}

#[test]
fn export_refuses_what_it_cannot_write() {
    let env = Env::new();
    assert_eq!(env.train(&["--out", "runs/m", "--epochs", "1"]).code, 0);
    env.fails(&["export", "--model", "runs/m", "--onnx", "m.txt"], "does not end in .onnx");
    env.fails(&["export", "--model", "runs/m", "--html", "m.txt"], "does not end in .html");
    let r = env.run(&["export", "--model", "runs/m"]);
    assert!(r.code == 2 && r.stderr.contains("--onnx"), "{}", r.stderr);
    env.fails(&["export", "--model", "runs/none", "--onnx", "m.onnx"], "runs/none");
    env.fails(&["export", "--model", "runs/m", "--onnx", "no/such/folder/m.onnx"], "no/such/folder");
    assert!(!env.path("m.onnx").exists() && !env.path("m.txt").exists());
}
