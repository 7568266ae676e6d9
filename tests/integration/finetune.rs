//! `train --init-from`: a new run that starts from a trained model, on a text with new characters.
use crate::cli::Env;
use charrnn::{Arch, ModelConfig, Network};
use std::collections::HashMap;
use tch::{Device, Tensor};

/// A second text: the lyrics' 分开 and 不分开 among English words, so it has characters the lyrics lack.
const SECOND: &str = "the quick brown fox 分开 jumps over 不分开 the lazy dog, and my zebra quit. ";

/// `train --corpus CORPUS --init-from FROM --out OUT` with the small settings of the other tests (but no
/// architecture flags, which --init-from refuses), plus `extra`.
fn fine_tune(env: &Env, corpus: &str, from: &str, out: &str, extra: &[&str]) -> crate::cli::Run {
    let base = [
        "train",
        "--corpus",
        corpus,
        "--init-from",
        from,
        "--out",
        out,
        "--steps",
        "5",
        "--batch",
        "4",
        "--clip",
        "1",
        "--pred-period",
        "1000",
        "--device",
        "cpu",
    ];
    env.run(&[&base[..], extra].concat())
}

fn weights(env: &Env, dir: &str) -> HashMap<String, Tensor> {
    let loaded = charrnn::store::load(&env.path(dir), Device::Cpu).unwrap();
    loaded.model.named_parameters().into_iter().map(|(n, t)| (n, t.detach().copy())).collect()
}

/// The vocabulary of the model in `dir`, from its model.json.
pub(crate) fn vocab(env: &Env, dir: &str) -> String {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(env.path(dir).join("model.json")).unwrap()).unwrap();
    json["vocab"].as_str().unwrap().to_string()
}

/// For every cell, one-hot and embedded: the fine-tuned model's vocabulary is the source's followed by the
/// new characters in ascending order; before its first update (a learning rate of 1e-30 moves no weight
/// by more than 1e-30 per step: lr times the clipped gradient norm, at most 1) the old characters' input
/// and output rows are the source model's and the new ones are a fresh model's (same seed); after real
/// training it predicts from prefixes of both texts, evaluates on both and resumes.
#[test]
fn init_from_keeps_the_trained_rows_and_starts_new_characters_as_a_fresh_model() {
    let env = Env::new();
    env.write("second.txt", SECOND.repeat(12).as_bytes());
    for cell in ["rnn", "gru", "lstm"] {
        for embed in ["0", "4"] {
            let what = format!("{cell}, embed {embed}");
            let src = format!("src-{cell}-{embed}");
            let r = env.train(&["--cell", cell, "--embed", embed, "--hidden", "16", "--epochs", "3", "--out", &src]);
            assert_eq!(r.code, 0, "{what}: {}", r.stderr);
            let at_start = format!("start-{cell}-{embed}");
            let r = fine_tune(&env, "second.txt", &src, &at_start, &["--epochs", "1", "--lr", "1e-30", "--seed", "7"]);
            assert_eq!(r.code, 0, "{what}: {}", r.stderr);
            assert!(r.stderr.contains(&format!("note: starting from {src} (3 epochs)")), "{what}: {}", r.stderr);

            // The vocabulary, worked out by hand: the lyrics' characters keep their order, then the
            // second text's new ones, ascending.
            let (old, grown) = (vocab(&env, &src), vocab(&env, &at_start));
            let mut new: Vec<char> = SECOND.chars().filter(|&c| !old.contains(c)).collect();
            new.sort();
            new.dedup();
            assert_eq!(grown, format!("{old}{}", new.iter().collect::<String>()), "{what}");
            let (v_old, v_new) = (old.chars().count() as i64, grown.chars().count() as i64);

            let (s, g) = (weights(&env, &src), weights(&env, &at_start));
            let arch: Arch = charrnn::store::load(&env.path(&src), Device::Cpu).unwrap().model.config().arch;
            assert_eq!((arch.cell.to_string(), arch.embed.to_string()), (cell.to_string(), embed.to_string()));
            let fresh = Network::new(ModelConfig::new(v_new as usize, arch), 7, Device::Cpu).unwrap();
            let f: HashMap<String, Tensor> =
                fresh.named_parameters().into_iter().map(|(n, t)| (n, t.detach().copy())).collect();
            let input = if embed == "0" { "W_xh" } else { "E" };
            for (name, dim) in [(input, 0), ("W_hq", 1), ("b_q", 0)] {
                let close = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) <= 1e-20;
                assert!(close(&g[name].narrow(dim, 0, v_old), &s[name]), "{what}: {name}, old characters");
                let fresh_part = f[name].narrow(dim, v_old, v_new - v_old);
                assert!(close(&g[name].narrow(dim, v_old, v_new - v_old), &fresh_part), "{what}: {name}, new ones");
            }
            for name in ["W_hh", "b_h"] {
                assert!((&g[name] - &s[name]).abs().max().double_value(&[]) <= 1e-20, "{what}: {name}");
            }

            // Trained for real, it continues prefixes of both texts with characters of both.
            let tuned = format!("tuned-{cell}-{embed}");
            let r = fine_tune(&env, "second.txt", &src, &tuned, &["--epochs", "4", "--lr", "1"]);
            assert_eq!(r.code, 0, "{what}: {}", r.stderr);
            for prefix in ["分开", "the quick"] {
                let r = env.run(&["predict", "--model", &tuned, "--prefix", prefix, "--num-chars", "6"]);
                assert_eq!(r.code, 0, "{what}: {}", r.stderr);
                let text = r.stdout.trim_end_matches('\n');
                assert!(text.starts_with(prefix) && text.chars().count() == prefix.chars().count() + 6, "{text}");
                assert!(text.chars().all(|c| grown.contains(c)), "{what}: {text}");
            }
            // It evaluates on both texts; on the one it was tuned on it beats a uniform guess (perplexity V).
            for corpus in ["lyrics.txt", "second.txt"] {
                let v = crate::cli::eval_json(&env, &["--model", &tuned, "--corpus", corpus]);
                let ppl = v["perplexity"].as_f64().unwrap();
                assert!(ppl.is_finite() && ppl > 1.0, "{what}: {corpus}: {ppl}");
                assert!(corpus == "lyrics.txt" || ppl < v_new as f64, "{what}: {corpus}: {ppl}");
            }
        }
    }
}

/// A fine-tuned model resumes exactly: 2 epochs, then resumed to 4, gives the weights of 4 uninterrupted
/// epochs; model.json and `info` keep where it started; the source's newline setting carries over.
#[test]
fn a_fine_tuned_run_records_its_origin_and_resumes_exactly() {
    let env = Env::new();
    env.write("second.txt", format!("{SECOND}\n").repeat(12).as_bytes());
    let r = env.train(&["--cell", "gru", "--hidden", "16", "--epochs", "2", "--keep-newlines", "--out", "src"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let args = ["--optimizer", "adam", "--lr", "0.01", "--sampling", "consecutive"];
    let r = fine_tune(&env, "second.txt", "src", "whole", &[&args[..], &["--epochs", "4"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = fine_tune(&env, "second.txt", "src", "split", &[&args[..], &["--epochs", "2"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = env.run(&["train", "--resume", "split", "--epochs", "4"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (whole, split) = (weights(&env, "whole"), weights(&env, "split"));
    for (name, w) in &whole {
        assert!(w.equal(&split[name]), "{name} differs after resuming a fine-tuned run");
    }
    assert!(vocab(&env, "whole").contains('\n'), "the source kept newlines, so the fine-tuned run does");
    let file = charrnn::store::read_model_file(&env.path("split")).unwrap();
    let origin = file.init_from.expect("model.json records where the run started");
    assert_eq!(origin.model, std::fs::canonicalize(env.path("src")).unwrap());
    assert_eq!((origin.epoch, file.epoch, file.version), (2, 4, 2));
    let r = env.run(&["info", "--model", "split"]);
    assert!(
        r.stdout.contains(&format!("started from {} (epoch 2, weights fnv1a64:", origin.model.display())),
        "{}",
        r.stdout
    );
    // The backend and the output layer's precision are this run's to choose.
    let r = fine_tune(&env, "second.txt", "src", "fused", &["--epochs", "1", "--backend", "fused", "--dtype", "bf16"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let file = charrnn::store::read_model_file(&env.path("fused")).unwrap();
    assert_eq!((file.model.arch.backend.to_string(), file.train.dtype.to_string()), ("fused".into(), "bf16".into()));
    assert_eq!(file.model.arch.cell.to_string(), "gru");
    // Fine-tuning in place (--out the source folder) needs no --force.
    let r = fine_tune(&env, "second.txt", "whole", "whole", &["--epochs", "1"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(charrnn::store::read_model_file(&env.path("whole")).unwrap().init_from.unwrap().epoch, 4);
}

/// Bad uses of --init-from: one error line (or clap's usage error), a non-zero exit, the existing model
/// untouched.
#[test]
fn bad_init_from_is_refused_and_leaves_the_output_alone() {
    let env = Env::new();
    env.write("second.txt", SECOND.repeat(12).as_bytes());
    assert_eq!(env.train(&["--epochs", "2", "--out", "src"]).code, 0);
    assert_eq!(env.train(&["--epochs", "1", "--out", "out"]).code, 0);
    let before = std::fs::read(env.path("out/model.json")).unwrap();
    let copy = |name: &str| {
        std::fs::create_dir(env.path(name)).unwrap();
        for e in std::fs::read_dir(env.path("src")).unwrap().flatten().filter(|e| e.path().is_file()) {
            std::fs::copy(e.path(), env.path(name).join(e.file_name())).unwrap();
        }
    };
    copy("damaged");
    env.write("damaged/model.json", b"{ not json");
    copy("newer");
    let json = std::fs::read_to_string(env.path("newer/model.json")).unwrap();
    env.write("newer/model.json", json.replace("\"version\": 1", "\"version\": 99").as_bytes());
    for (from, needle) in [
        ("nowhere", "no such folder"),
        ("damaged", "corrupted JSON"),
        ("newer", "format version 99 is newer"),
        ("lyrics.txt", "no such folder"),
    ] {
        let args =
            ["train", "--corpus", "second.txt", "--init-from", from, "--out", "out", "--force", "--device", "cpu"];
        let r = env.fails(&args, needle);
        assert!(r.stderr.contains(from), "{from}: {}", r.stderr);
        assert_eq!(std::fs::read(env.path("out/model.json")).unwrap(), before, "{from}");
    }
    for extra in [&["--hidden", "8"][..], &["--cell", "gru"], &["--resume", "out"]] {
        let args = [&["train", "--corpus", "second.txt", "--init-from", "src"][..], extra].concat();
        let r = env.run(&args);
        assert_eq!(r.code, 2, "{args:?}");
        assert!(r.stderr.contains("cannot be used with") && r.stderr.contains(extra[0]), "{}", r.stderr);
    }
    // Without --force, an occupied --out other than the source is refused as for any new run.
    env.fails(&["train", "--corpus", "second.txt", "--init-from", "src", "--out", "out"], "out already holds files");
    assert_eq!(std::fs::read(env.path("out/model.json")).unwrap(), before);
}
