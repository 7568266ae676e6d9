//! Criterion benchmarks of the textbook workload: one training step (batch 32, steps 35, hidden 256) on the
//! first 10,000 characters of the bundled corpus, greedy prediction of 50 characters, evaluation, and sampled
//! generation of 2,000 characters for 1 and 64 samples at once, greedy generation beside the time to read the
//! weights of a step once; then a larger model (2 layers of 512-unit GRUs,
//! embedding 256, Adam): a training step in fp32 and bf16, and prediction; and the optimizer's update alone
//! (clipping and Adam) for that GRU and for an LSTM 2 x 1024.
//!
//! Run: `make bench` (or `cargo bench --bench train_step`). CPU only; libtorch's CPU ops are synchronous,
//! so reading the clock after each call measures finished work.
use charrnn::{
    evaluate, generate, load_corpus, predict, train_step, Arch, BatchOrder, Cell, CorpusOptions, Dropout, Dtype,
    Generate, Init, ModelConfig, Network, Optimizer, OptimizerKind, Rng, Sampler, StepOptions,
};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use std::path::Path;
use tch::Device;

/// A training step's options: clipping at `clip`, the output layer at `precision`, no dropout.
fn step(clip: f64, precision: Dtype) -> StepOptions {
    StepOptions { clip, precision, dropout: Dropout::Seeded(0) }
}

fn textbook_workload(c: &mut Criterion) {
    // The allocator and MKL settings the CLI runs with.
    charrnn::prepare_process();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/yuanqu.txt");
    let prepared = load_corpus(&[path], &CorpusOptions { keep_newlines: false, limit_chars: Some(10_000) }).unwrap();
    let (vocab, ids) = (prepared.vocab.clone(), prepared.tokens().to_vec());
    let model = Network::new(ModelConfig::rnn(vocab.len(), 256), 0, Device::Cpu).unwrap();
    let plan = BatchOrder::Random.plan(ids.len(), 32, 35, &mut Rng::new(0)).unwrap();
    let (x, y) = plan.minibatch(0, (&ids).into(), Device::Cpu);
    let state = model.begin_state(32);

    let mut g = c.benchmark_group("textbook");
    g.sample_size(20);
    g.throughput(Throughput::Elements(32 * 35));
    let mut sgd = Optimizer::new(OptimizerKind::Sgd, &model, 100.0).unwrap();
    g.bench_function("train_step (chars)", |b| {
        b.iter(|| train_step(&model, &x, &y, &state, &step(0.01, Dtype::Fp32), &mut sgd))
    });
    g.bench_function("train_step bf16 (chars)", |b| {
        b.iter(|| train_step(&model, &x, &y, &state, &step(0.01, Dtype::Bf16), &mut sgd))
    });
    g.throughput(Throughput::Elements(50));
    g.bench_function("predict 50 (chars)", |b| b.iter(|| predict(&model, &vocab, "分开", 50).unwrap()));
    g.throughput(Throughput::Elements(ids.len() as u64));
    g.bench_function("eval 10k in windows of 35 (chars)", |b| b.iter(|| evaluate(&model, &ids, 35).unwrap()));
    g.bench_function("eval 10k as one stream (chars)", |b| b.iter(|| evaluate(&model, &ids, usize::MAX).unwrap()));
    g.finish();

    // Sampled generation (temperature 1, top-k 40, top-p 0.95) of 2,000 characters, one sample and 64 at once,
    // and greedy generation, on one thread as `predict` runs; beside it the floor for one step, reading the
    // weights a step reads (W_hh, b_h, W_hq, b_q; one row of W_xh) once, from the cache, also on one thread.
    let threads = tch::get_num_threads();
    charrnn::set_threads(Some(1)).unwrap();
    let mut g = c.benchmark_group("generate");
    g.sample_size(10);
    g.throughput(Throughput::Elements(2000));
    let greedy = Generate { num_chars: 2000, samples: 1, ..Default::default() };
    g.bench_function("1 x 2000 greedy (chars)", |b| {
        b.iter(|| generate(&model, &vocab, "分开", &greedy, &mut |_, _| {}).unwrap())
    });
    let step_weights: Vec<u32> = model.parameters()[1..]
        .iter()
        .flat_map(|p| Vec::<f32>::try_from(p.detach().reshape([-1])).unwrap())
        .map(f32::to_bits)
        .collect();
    g.throughput(Throughput::Bytes(4 * step_weights.len() as u64));
    g.bench_function("read a step's weights once (bytes)", |b| {
        b.iter(|| std::hint::black_box(&step_weights).iter().fold(0u32, |a, &w| a.wrapping_add(w)))
    });
    let sampler = Sampler { temperature: 1.0, top_k: 40, top_p: 0.95, seed: 0 };
    for samples in [1usize, 64] {
        let options = Generate { num_chars: 2000, samples, stop: None, sampler, probs: false, beam: 0 };
        g.throughput(Throughput::Elements((2000 * samples) as u64));
        g.bench_function(format!("{samples} x 2000 sampled (chars)"), |b| {
            b.iter(|| generate(&model, &vocab, "分开", &options, &mut |_, _| {}).unwrap())
        });
    }
    g.finish();
    charrnn::set_threads(Some(threads as usize)).unwrap();

    // A larger model: two layers of 512-unit GRUs over a 256-wide embedding, trained with Adam.
    let mut g = c.benchmark_group("gru 2x512");
    g.sample_size(10);
    g.throughput(Throughput::Elements(32 * 35));
    let config = ModelConfig::new(
        vocab.len(),
        Arch { cell: Cell::Gru, layers: 2, embed: 256, init: Init::Uniform, ..Arch::rnn(512) },
    );
    let gru = Network::new(config, 0, Device::Cpu).unwrap();
    let mut adam = Optimizer::new(OptimizerKind::Adam, &gru, 0.002).unwrap();
    let state = gru.begin_state(32);
    for precision in [Dtype::Fp32, Dtype::Bf16] {
        g.bench_function(format!("train_step {} (chars)", precision), |b| {
            b.iter(|| train_step(&gru, &x, &y, &state, &step(1.0, precision), &mut adam))
        });
    }
    g.throughput(Throughput::Elements(50));
    g.bench_function("predict 50 (chars)", |b| b.iter(|| predict(&gru, &vocab, "分开", 50).unwrap()));
    g.finish();

    // The update alone (clipping's norm and scale, then Adam), on the gradient the last step left: for the
    // GRU above (3.9M parameters in 11 tensors) and an LSTM 2 x 1024 over an embedding of 128 (13.2M in 11).
    let mut g = c.benchmark_group("optimizer step");
    g.sample_size(20);
    let config = ModelConfig::new(65, Arch { cell: Cell::Lstm, layers: 2, embed: 128, ..Arch::rnn(1024) });
    let lstm = Network::new(config, 0, Device::Cpu).unwrap();
    let ids65: Vec<i64> = ids.iter().map(|&i| i % 65).collect();
    let (x65, y65) = plan.minibatch(0, (&ids65).into(), Device::Cpu);
    for (name, model) in [("gru 2x512", &gru), ("lstm 2x1024", &lstm)] {
        let mut adam = Optimizer::new(OptimizerKind::Adam, model, 0.002).unwrap();
        let (x, y) = if name.starts_with("lstm") { (&x65, &y65) } else { (&x, &y) };
        let _ = train_step(model, x, y, &model.begin_state(32), &step(1.0, Dtype::Fp32), &mut adam);
        g.throughput(Throughput::Elements(model.config().parameter_count().unwrap_or(0)));
        // Fresh moments for each update: the same gradient applied thousands of times would decay the
        // moments of its zero entries into subnormal floats, whose arithmetic is many times slower.
        let fresh = || Optimizer::new(OptimizerKind::Adam, model, 0.002).unwrap();
        g.bench_function(format!("clip + adam, {name} (parameters)"), |b| {
            b.iter_batched(fresh, |mut adam| adam.update(model, 1.0), BatchSize::LargeInput)
        });
    }
    g.finish();
}

criterion_group!(benches, textbook_workload);
criterion_main!(benches);
