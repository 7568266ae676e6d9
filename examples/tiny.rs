//! Train a tiny char-RNN on a string in memory with the library API, then predict from it.
//!
//! Run: `cargo run --release --example tiny`
use charrnn::{predict, train, Arch, BatchOrder, EpochReport, Network, TrainConfig, TrainObserver, Vocabulary};

struct PrintEvery;

impl TrainObserver for PrintEvery {
    fn epoch(&mut self, r: &EpochReport) {
        if let Some(samples) = &r.samples {
            println!("epoch {}, perplexity {:.3}: {}", r.epoch, r.perplexity, samples.join(" | "));
        }
    }
}

fn main() -> charrnn::Result<()> {
    let text = "分开 不分开 我不能再想 我不 我不 我不要再想你 不知不觉 你已经离开我 ".repeat(20);
    let vocab = Vocabulary::from_text(&text);
    let ids = vocab.encode(&text, "the corpus")?;
    let config = TrainConfig {
        arch: Arch::rnn(64),
        steps: 8,
        batch_size: 4,
        lr: 1.0,
        clip: 1.0,
        epochs: 40,
        batch_order: BatchOrder::Consecutive,
        prefixes: vec!["分开".into()],
        pred_period: 10,
        pred_len: 12,
        ..Default::default()
    };
    // The model the configuration describes (train refuses any other).
    let model = Network::new(config.model_config(vocab.len()), 0, tch::Device::Cpu)?;
    let summary = train(&model, &vocab, &ids, &[], &config, None, &mut PrintEvery)?;
    println!("final perplexity {:.3}", summary.perplexity);
    println!("{}", predict(&model, &vocab, "不知", 12)?);
    Ok(())
}
