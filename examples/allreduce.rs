//! What averaging the gradient over processes costs: the all-reduce that charrnn's training step makes of
//! its flat gradient buffer ([`charrnn::World::sum_tensor`]), for a GRU 1x256 over an embedding of 64 (the
//! CPU benchmark's model) and the LSTM 2x1024 over an embedding of 128 of the GPU benchmark, on the ranks
//! of an `mpirun` job, and of a million floats. Rank 0 prints the median and the fastest of 20 timed calls after 3 untimed ones.
//!
//! Run: `cargo build --release --features mpi --example allreduce && mpirun -np 2 target/release/examples/allreduce`
use charrnn::{Arch, Cell, ModelConfig, World};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn main() -> charrnn::Result<()> {
    let world = World::init()?;
    // Tiny Shakespeare's 65 characters.
    let models = [
        ("gru 1x256, embed 64", ModelConfig::new(65, Arch { cell: Cell::Gru, embed: 64, ..Arch::rnn(256) })),
        (
            "lstm 2x1024, embed 128",
            ModelConfig::new(65, Arch { cell: Cell::Lstm, layers: 2, embed: 128, ..Arch::rnn(1024) }),
        ),
    ];
    let sizes = [("1M floats".to_string(), 1_000_000)]
        .into_iter()
        .chain(models.map(|(name, c)| (name.to_string(), c.parameter_count().expect("a size that fits"))));
    for (name, n) in sizes {
        let grad = Tensor::ones([n as i64], (Kind::Float, Device::Cpu));
        let mut times = Vec::new();
        for i in 0..23 {
            // Every rank starts the call together.
            world.max([0]);
            let start = Instant::now();
            world.sum_tensor(&grad);
            if i >= 3 {
                times.push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
        times.sort_by(f64::total_cmp);
        if world.is_root() {
            println!(
                "{name}: {n} floats ({:.1} MB), {} processes: all-reduce median {:.2} ms, fastest {:.2} ms ({:.2} GB/s of gradient)",
                n as f64 * 4e-6,
                world.size(),
                times[times.len() / 2],
                times[0],
                n as f64 * 4e-9 / (times[times.len() / 2] * 1e-3)
            );
        }
    }
    world.finish();
    Ok(())
}
