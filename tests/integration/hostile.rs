//! Hostile input, generated (proptest): any corpus bytes and any damage to a model folder give a result or
//! an error, never a panic, a hang or an allocation the files do not justify. `PROPTEST_CASES` sets how
//! many cases each property tries (CI runs the default below).
use charrnn::checkpoint::{self, MODEL_JSON};
use charrnn::{read_corpus, Arch, CorpusOptions, Error, Network, TrainConfig, Vocabulary};
use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;
use std::sync::OnceLock;
use tch::Device;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(96)
}

/// Bytes that are often (not always) UTF-8, with newlines and the occasional invalid sequence.
fn corpus_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        "[\\PC\n\r ]{0,200}".prop_map(String::into_bytes),
        ("[\\PC\n]{0,100}", prop::collection::vec(any::<u8>(), 0..4), "[\\PC]{0,50}").prop_map(|(a, junk, b)| [
            a.into_bytes(),
            junk,
            b.into_bytes()
        ]
        .concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_corpus_bytes_give_text_or_a_clear_error(bytes in corpus_bytes(), keep_newlines in any::<bool>(), limit in prop::option::of(0usize..300)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.txt");
        std::fs::write(&path, &bytes).unwrap();
        match read_corpus(&path, &CorpusOptions { keep_newlines, limit_chars: limit }) {
            Ok(text) => {
                prop_assert!(!text.is_empty());
                prop_assert!(limit.is_none_or(|n| text.chars().count() <= n));
                prop_assert!(keep_newlines || !text.contains('\n'));
                let vocab = Vocabulary::from_text(&text);
                prop_assert_eq!(vocab.encode(&text, "the corpus").unwrap().len(), text.chars().count());
            }
            Err(Error::InvalidUtf8 { offset, .. }) => prop_assert!(std::str::from_utf8(&bytes).is_err() && offset < bytes.len()),
            Err(Error::EmptyCorpus { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn any_change_to_model_json_loads_or_is_refused(field in 0..FIELDS.len(), value in json_value()) {
        let dir = model_copy();
        let path = dir.path().join("m").join(MODEL_JSON);
        let mut json: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if let Some(slot) = json.pointer_mut(FIELDS[field]) {
            *slot = value;
        }
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        load_everything(&dir.path().join("m"))?;
    }

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
        load_everything(&m)?;
    }
}

/// The places in model.json a mutation may hit.
const FIELDS: &[&str] = &[
    "/format",
    "/version",
    "/vocab",
    "/model/vocab_size",
    "/model/hidden",
    "/model/cell",
    "/model/layers",
    "/model/embed",
    "/model/dropout",
    "/model/backend",
    "/weights",
    "/weights_bytes",
    "/epoch",
    "/train/steps",
    "/train/batch",
    "/train/sampling",
    "/train/optimizer",
    "/resume/state",
    "/resume/state_bytes",
    "/resume/position/epoch",
    "/resume/position/batch",
    "/resume/position/optimizer_step",
    "/resume/position/best",
    "/corpus/chars",
];

fn json_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(2),
            Just(1 << 20),
            Just(1 << 40),
            Just(1_000_000_000_000),
            Just(u64::MAX)
        ]
        .prop_map(Value::from),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |x| x.is_finite()).prop_map(Value::from),
        "[\\PC]{0,12}".prop_map(Value::from),
        Just(Value::from("../../etc/passwd")),
        Just(serde_json::json!([1, 2, 3])),
        Just(serde_json::json!({"epoch": 1})),
    ]
}

const TEXT: &str = "分开 不分开 我不能再想 我不 我不 我不要再想你";

/// A small trained model with a resumable checkpoint, made once; each case gets its own copy.
fn model_copy() -> tempfile::TempDir {
    static ORIGINAL: OnceLock<tempfile::TempDir> = OnceLock::new();
    let original = ORIGINAL.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let corpus = dir.path().join("c.txt");
        std::fs::write(&corpus, TEXT.repeat(8)).unwrap();
        let config = TrainConfig {
            arch: Arch { hidden: 8, cell: charrnn::Cell::Gru, layers: 2, embed: 3, ..Arch::default() },
            steps: 4,
            batch_size: 2,
            epochs: 2,
            optimizer: charrnn::OptimizerKind::Adam,
            lr: 0.01,
            val_frac: Some(0.2),
            prefixes: vec!["分开".into()],
            ..Default::default()
        };
        // This test trains in-process: its prepared corpus goes to this folder, not the user's cache.
        std::env::set_var("CHARRNN_CACHE", dir.path().join(".cache"));
        let job = charrnn::TrainJob {
            corpus: vec![corpus],
            corpus_options: CorpusOptions::default(),
            out: Some(dir.path().join("m")),
            force: false,
            init_from: None,
            device: charrnn::DeviceSpec::Cpu,
            threads: None,
            auto_dtype: false,
            auto_backend: false,
            config,
        };
        charrnn::run_train(&job, &mut ()).unwrap();
        dir
    });
    let copy = tempfile::tempdir().unwrap();
    let (from, to) = (original.path().join("m/last"), copy.path().join("m"));
    std::fs::create_dir(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    copy
}

/// Loads the model and its training state and uses them (a prediction step, then one more epoch of
/// training from the state): any outcome but a panic is acceptable, and an error must say something.
fn load_everything(dir: &Path) -> Result<(), TestCaseError> {
    let loaded = match checkpoint::load(dir, Device::Cpu) {
        Ok(loaded) => loaded,
        Err(e) => {
            prop_assert!(e.to_string().len() > 10, "{e}");
            return Ok(());
        }
    };
    let x = tch::Tensor::from_slice(&[0i64, 1]).view([1, 2]);
    let _ = loaded.model.forward(&x, &loaded.model.begin_state(1), false);
    let state = match checkpoint::load_state(dir, &loaded) {
        Ok(state) => state,
        Err(e) => {
            prop_assert!(e.to_string().len() > 10, "{e}");
            return Ok(());
        }
    };
    let text = TEXT.repeat(8);
    // (A damaged vocabulary may lack the corpus's characters: resume refuses that before training.)
    let Ok(ids) = loaded.vocab.encode(&text, "the corpus") else { return Ok(()) };
    let config = TrainConfig { epochs: state.position.epoch.saturating_add(1), ..loaded.file.train.clone() };
    let model: &Network = &loaded.model;
    if let Err(e) = charrnn::train(model, &loaded.vocab, &ids, &[], &config, Some(&state), &mut ()) {
        prop_assert!(e.to_string().len() > 10, "{e}");
    }
    Ok(())
}
