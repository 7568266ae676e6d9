//! Hostile model folders: every field of model.json set to a value of every kind (or removed), every tensor of
//! the training state removed, misshapen, of another kind or not finite, and random damage to the files'
//! bytes (proptest; `PROPTEST_CASES` sets how many cases, CI runs the default below) give a model that loads
//! and trains, or an error that says something; never a panic, a hang or an allocation the files do not
//! justify. (The text reader's fuzzing, across chunk and file boundaries, is a unit test of `data::text`.)
use crate::cli::Env;
use charrnn::store::{self as checkpoint, MODEL_JSON};
use charrnn::{Network, TrainConfig};
use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(96)
}

const TEXT: &str = "分开 不分开 我不能再想 我不 我不 我不要再想你";

/// A small two-layer GRU with an embedding, trained with Adam, consecutive sampling and validation by the
/// `charrnn` binary and stopped inside an epoch (so its state holds moments, the best epoch, a position inside
/// the epoch and the carried state), made once; each case gets its own copy of its resumable checkpoint
/// `m/last`.
fn model_copy() -> tempfile::TempDir {
    static ORIGINAL: OnceLock<Env> = OnceLock::new();
    let original = ORIGINAL.get_or_init(|| {
        let env = Env::new();
        env.write("c.txt", TEXT.repeat(8).as_bytes());
        let r = env.run(&[
            "train",
            "--corpus",
            "c.txt",
            "--cell",
            "gru",
            "--layers",
            "2",
            "--embed",
            "3",
            "--hidden",
            "8",
            "--steps",
            "4",
            "--batch",
            "2",
            "--epochs",
            "3",
            "--optimizer",
            "adam",
            "--lr",
            "0.01",
            "--val-frac",
            "0.2",
            "--sampling",
            "consecutive",
            "--prefix",
            "分开",
            "--max-iters",
            "25",
            "--out",
            "m",
        ]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        env
    });
    let copy = tempfile::tempdir().unwrap();
    let (from, to) = (original.path("m/last"), copy.path().join("m"));
    std::fs::create_dir(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    copy
}

/// Loads the model and its training state and uses them (a forward pass, then one more epoch of training
/// from the state): any outcome but a panic is acceptable, and an error must say something.
fn load_everything(dir: &Path) -> Result<(), String> {
    let says_something = |e: charrnn::Error| match e.to_string().len() > 10 {
        true => Ok(()),
        false => Err(format!("an error that says nothing: {e}")),
    };
    let loaded = match checkpoint::load(dir, Device::Cpu) {
        Ok(loaded) => loaded,
        Err(e) => return says_something(e),
    };
    let x = Tensor::from_slice(&[0i64, 1]).view([1, 2]);
    let _ = loaded.model.forward(&x, &loaded.model.begin_state(1), charrnn::Dropout::Off);
    let state = match checkpoint::load_state(dir, &loaded) {
        Ok(state) => state,
        Err(e) => return says_something(e),
    };
    let text = TEXT.repeat(8);
    // (A damaged vocabulary may lack the corpus's characters: resume refuses that before training.)
    let Ok(ids) = loaded.vocab.encode(&text, "the corpus") else { return Ok(()) };
    let config = TrainConfig { epochs: state.position.epoch.saturating_add(1), ..loaded.file.train.clone() };
    let model: &Network = &loaded.model;
    match charrnn::train(model, &loaded.vocab, &ids, &[], &config, Some(&state), &mut ()) {
        Ok(_) => Ok(()),
        Err(e) => says_something(e),
    }
}

/// Every JSON pointer inside `value` (objects' members and arrays' elements, at every depth), `prefix` first.
fn pointers(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => map.iter().for_each(|(k, v)| pointers(v, format!("{prefix}/{k}"), out)),
        Value::Array(items) => items.iter().enumerate().for_each(|(i, v)| pointers(v, format!("{prefix}/{i}"), out)),
        _ => {}
    }
    if !prefix.is_empty() {
        out.push(prefix);
    }
}

/// A value of every JSON kind, and the numbers and strings that size checks and path checks must survive.
fn hostile_values() -> Vec<Value> {
    let json = |s: &str| serde_json::from_str::<Value>(s).unwrap();
    vec![
        Value::Null,
        Value::Bool(true),
        json("-1"),
        json("0"),
        json("1"),
        json("1099511627776"),
        Value::from(u64::MAX),
        json("1e308"),
        json("-0.5"),
        json("\"\""),
        json("\"../../etc/passwd\""),
        json("[1, 2, 3]"),
        json(r#"{"epoch": 1}"#),
    ]
}

/// Every field of model.json, each set to every hostile value in turn and removed: the model loads and
/// trains, or is refused with a reason. (The README says every field is checked: this walks them all.)
#[test]
fn any_change_to_any_field_of_model_json_loads_or_is_refused() {
    let dir = model_copy();
    let path = dir.path().join("m").join(MODEL_JSON);
    let original: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let mut fields = Vec::new();
    pointers(&original, String::new(), &mut fields);
    assert!(fields.len() > 80, "model.json has {} fields: the walk must reach them all", fields.len());
    for field in &fields {
        let (parent, key) = field.rsplit_once('/').unwrap();
        let removed = {
            let mut json = original.clone();
            match json.pointer_mut(parent).unwrap() {
                Value::Object(map) => drop(map.remove(key)),
                Value::Array(items) => drop(items.remove(key.parse::<usize>().unwrap())),
                _ => unreachable!("a pointer's parent holds it"),
            }
            json
        };
        let changed = hostile_values().into_iter().map(|value| {
            let mut json = original.clone();
            *json.pointer_mut(field).unwrap() = value;
            json
        });
        for json in std::iter::once(removed).chain(changed) {
            std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
            if let Err(e) = load_everything(&dir.path().join("m")) {
                panic!("{field} = {:?}: {e}", json.pointer(field));
            }
        }
    }
}

/// A change to one tensor: its replacement, or `None` to remove it.
type Change = fn(&Tensor) -> Option<Tensor>;

/// Every tensor of the training state removed, given another shape, another kind, or values that are not
/// finite: the state loads and trains, or is refused naming what is wrong.
#[test]
fn any_change_to_any_tensor_of_the_training_state_loads_or_is_refused() {
    let dir = model_copy();
    let m = dir.path().join("m");
    let json: Value = serde_json::from_slice(&std::fs::read(m.join(MODEL_JSON)).unwrap()).unwrap();
    let state_path = m.join(json["resume"]["state"].as_str().unwrap());
    let original = Tensor::read_safetensors(&state_path).unwrap();
    assert!(original.len() > 20, "the state holds moments, the best epoch and sums: {}", original.len());
    let changes: [(&str, Change); 5] = [
        ("removed", |_| None),
        ("misshapen", |_| Some(Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)))),
        ("double", |t| Some(t.to_kind(Kind::Double))),
        ("int64", |t| Some(t.to_kind(Kind::Int64))),
        ("not finite", |t| Some(t.full_like(f64::NAN))),
    ];
    for (name, _) in &original {
        for (what, change) in &changes {
            let tensors: Vec<(String, Tensor)> = original
                .iter()
                .filter_map(
                    |(n, t)| if n == name { change(t).map(|c| (n.clone(), c)) } else { Some((n.clone(), t.copy())) },
                )
                .collect();
            Tensor::write_safetensors(&tensors, &state_path).unwrap();
            // The recorded size follows, so that the change reaches the state's own checks.
            let mut json = json.clone();
            json["resume"]["state_bytes"] = Value::from(std::fs::metadata(&state_path).unwrap().len());
            std::fs::write(m.join(MODEL_JSON), serde_json::to_vec(&json).unwrap()).unwrap();
            if let Err(e) = load_everything(&m) {
                panic!("{name} {what}: {e}");
            }
            if *what != "not finite" {
                let loaded = checkpoint::load(&m, Device::Cpu).unwrap();
                let err = checkpoint::load_state(&m, &loaded).err().map(|e| e.to_string()).unwrap_or_default();
                assert!(err.contains(name.as_str()), "{name} {what} must be refused naming it: {err:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_files_load_or_are_refused(which in 0..3usize, at in any::<prop::sample::Index>(), byte in any::<u8>(), truncate in any::<bool>()) {
        let dir = model_copy();
        let m = dir.path().join("m");
        let json: Value = serde_json::from_slice(&std::fs::read(m.join(MODEL_JSON)).unwrap()).unwrap();
        let target = match which {
            0 => m.join(MODEL_JSON),
            1 => m.join(json["weights"].as_str().unwrap()),
            _ => m.join(json["resume"]["state"].as_str().unwrap()),
        };
        let mut bytes = std::fs::read(&target).unwrap();
        let i = at.index(bytes.len());
        if truncate { bytes.truncate(i) } else { bytes[i] = byte }
        std::fs::write(&target, &bytes).unwrap();
        if which > 0 {
            // Keep the recorded sizes right, so that the damage reaches the safetensors reader.
            let mut json = json;
            let key = if which == 1 { "/weights_bytes" } else { "/resume/state_bytes" };
            *json.pointer_mut(key).unwrap() = Value::from(bytes.len());
            std::fs::write(m.join(MODEL_JSON), serde_json::to_vec(&json).unwrap()).unwrap();
        }
        load_everything(&m).map_err(TestCaseError::fail)?;
    }
}
