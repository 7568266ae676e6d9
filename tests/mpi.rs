//! The `mpi` feature's tests (`cargo test --features mpi`, which needs Open MPI; `make test` installs it).
//!
//! Run by cargo, this binary is the driver: it starts `mpirun -np 2` jobs of charrnn and compares them with
//! one process. Started by mpirun with `--ranks`, it is one of the ranks: the checks that must look inside
//! every rank (the same weights after every step) run there through the library.
use charrnn::{
    train, Arch, BatchOrder, Cell, Network, OptimizerKind, SaveReason, TrainConfig, TrainObserver, TrainState,
    Vocabulary, World,
};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

fn main() {
    if std::env::args().any(|a| a == "--ranks") {
        return ranks();
    }
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let tests: [(&str, fn()); 7] = [
        ("every_rank_starts_from_rank_0s_weights", every_rank_starts_from_rank_0s_weights),
        ("two_ranks_train_what_one_process_trains", two_ranks_train_what_one_process_trains),
        ("every_rank_holds_the_same_weights_after_every_step", every_rank_holds_the_same_weights_after_every_step),
        ("a_run_resumes_on_another_number_of_processes", a_run_resumes_on_another_number_of_processes),
        ("a_killed_rank_ends_the_job_and_the_checkpoint_loads", a_killed_rank_ends_the_job_and_the_checkpoint_loads),
        ("ctrl_c_to_mpirun_stops_every_rank_with_a_checkpoint", ctrl_c_to_mpirun_stops_every_rank_with_a_checkpoint),
        ("jobs_started_unlike_are_refused_with_one_line", jobs_started_unlike_are_refused_with_one_line),
    ];
    let mut ran = 0;
    for (name, test) in tests {
        if filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str())) {
            println!("test {name} ...");
            test();
            println!("test {name} ... ok");
            ran += 1;
        }
    }
    println!("\ntest result: ok. {ran} passed");
}

/// The bundled corpus.
fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/yuanqu.txt")
}

/// `mpirun` starting `np` processes of `program` (as root too, as CI runs it).
fn mpirun(np: usize, program: &str) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-np", &np.to_string(), program]);
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c
}

/// One `mpirun` job of two charrnn processes, rank 0 and rank 1, each started in its own working folder
/// (relative to the job's) with its own arguments.
fn two_programs((dir0, args0): (&str, &[&str]), (dir1, args1): (&str, &[&str])) -> Command {
    let mut c = Command::new("mpirun");
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1").env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    c.args(["--oversubscribe", "-np", "1", "-wdir", dir0, CHARRNN]).args(args0);
    c.args([":", "-np", "1", "-wdir", dir1, CHARRNN]).args(args1);
    c
}

const CHARRNN: &str = env!("CARGO_BIN_EXE_charrnn");

/// Runs `command` in `dir`, returning its output; `what` names it in failures.
fn run(mut command: Command, dir: &Path) -> Output {
    command.current_dir(dir).output().expect("the command starts")
}

/// Runs `charrnn args` on `np` processes (1: without mpirun) in `dir`, and asserts it ends as `ok` says.
fn charrnn(np: usize, args: &[&str], dir: &Path, ok: bool) -> Output {
    let mut c = if np == 1 { Command::new(CHARRNN) } else { mpirun(np, CHARRNN) };
    c.args(args);
    let out = run(c, dir);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.success(), ok, "charrnn {args:?} on {np}: {err}");
    out
}

/// The weights of the model folder `dir` (its `model.json`'s weights file), by name.
fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("model.json")).unwrap()).unwrap();
    let mut named = Tensor::read_safetensors(dir.join(json["weights"].as_str().unwrap())).unwrap();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// The largest difference between the weights of two model folders.
fn max_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.iter().map(|t| &t.0).collect::<Vec<_>>(), b.iter().map(|t| &t.0).collect::<Vec<_>>());
    a.iter().zip(&b).map(|((_, x), (_, y))| (x - y).abs().max().double_value(&[])).fold(0.0, f64::max)
}

/// A small run's flags: SGD at the textbook's lr 1 and clip 1, 8 rows of 8 steps.
fn small(cell: &str, out: &str) -> Vec<String> {
    let corpus = corpus().display().to_string();
    let flags = "--limit-chars 3000 --device cpu --hidden 16 --batch 8 --steps 8 --lr 1 --clip 1 --seed 3 -q";
    let mut args: Vec<String> = ["train", "--corpus", &corpus, "--cell", cell, "--out", out].map(String::from).into();
    args.extend(flags.split(' ').map(String::from));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// How far two runs that sum the same gradients in another order may drift apart in `steps` steps.
///
/// Each gradient element is the mean over the minibatch's 64 positions; two ranks take two means of 32 and
/// their mean, which moves it by at most about 64 · 2⁻²⁴ ≈ 4e-6 of the sum of its terms' sizes. With lr 1 and
/// the gradient's norm clipped to 1 (so each term's share is below 1), each step adds at most that to a
/// weight; a factor of 4 is left for the recurrence amplifying earlier differences in later gradients.
fn tolerance(steps: usize) -> f64 {
    4.0 * steps as f64 * 64.0 * f64::from(f32::EPSILON) / 2.0
}

fn two_ranks_train_what_one_process_trains() {
    for cell in ["rnn", "gru", "lstm"] {
        for embed in [None, Some("8")] {
            for sampling in ["random", "consecutive"] {
                let dir = tempfile::tempdir().unwrap();
                let what = format!("{cell} embed {embed:?} {sampling}");
                let mut args = small(cell, "");
                args.extend(["--epochs", "1", "--max-iters", "6", "--sampling", sampling].map(String::from));
                if let Some(e) = embed {
                    args.extend(["--embed".into(), e.into(), "--layers".into(), "2".into()]);
                }
                let out = |args: &[String], name: &str| {
                    let mut a = args.to_vec();
                    a[6] = name.into();
                    a
                };
                charrnn(1, &strs(&out(&args, "one")), dir.path(), true);
                charrnn(2, &strs(&out(&args, "two")), dir.path(), true);
                let d = max_difference(&dir.path().join("one/last"), &dir.path().join("two/last"));
                assert!(d <= tolerance(6), "{what}: the weights differ by {d}");
                // Run on half the batch, the weights are another model's: the comparison tells them apart.
                let mut half = out(&args, "half");
                half.extend(["--batch", "4"].map(String::from));
                charrnn(1, &strs(&half), dir.path(), true);
                let d = max_difference(&dir.path().join("one/last"), &dir.path().join("half/last"));
                assert!(d > 100.0 * tolerance(6), "{what}: half the batch gives {d}");
            }
        }
    }
}

fn every_rank_starts_from_rank_0s_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Each rank's working folder holds another model at the same path "src" (trained from another seed).
    for (sub, seed) in [("r0", "1"), ("r1", "2")] {
        std::fs::create_dir(d.join(sub)).unwrap();
        let mut a = small("gru", "src");
        a.extend(["--epochs", "1", "--seed", seed].map(String::from));
        charrnn(1, &strs(&a), &d.join(sub), true);
    }
    // The source model's architecture is the run's: no --cell, no --hidden.
    let mut args = small("gru", "m");
    for flag in ["--cell", "--hidden"] {
        let at = args.iter().position(|a| a == flag).unwrap();
        args.drain(at..at + 2);
    }
    args.extend(["--epochs", "1", "--max-iters", "4", "--init-from", "src"].map(String::from));
    let out = run(two_programs(("r0", &strs(&args)), ("r1", &strs(&args))), d);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // What one process trains from rank 0's model, not from rank 1's.
    for sub in ["r0", "r1"] {
        charrnn(
            1,
            &strs(&args.iter().map(|a| if a == "m" { "alone".into() } else { a.clone() }).collect::<Vec<_>>()),
            &d.join(sub),
            true,
        );
    }
    let together = d.join("r0/m/last");
    let from0 = max_difference(&together, &d.join("r0/alone/last"));
    let from1 = max_difference(&together, &d.join("r1/alone/last"));
    assert!(from0 <= tolerance(4) && from1 > 100.0 * tolerance(4), "{from0} {from1}");
}

fn every_rank_holds_the_same_weights_after_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = mpirun(2, std::env::current_exe().unwrap().to_str().unwrap());
    c.arg("--ranks");
    let out = run(c, dir.path());
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Three runs of 2 epochs of 23 minibatches ((1,500 - 1) / 8 / 8 random, (1,500 / 8 - 1) / 8 consecutive,
    // rounded down), each compared after its step.
    assert!(stdout.contains("rank 0 compared 138 steps") && stdout.contains("rank 1 compared 138 steps"), "{stdout}");
}

/// One rank of [`every_rank_holds_the_same_weights_after_every_step`]: the collectives on values worked
/// out by hand, then three runs whose every step's weights and Adam moments are compared between the ranks.
fn ranks() {
    let world = World::init().expect("MPI starts");
    assert_eq!(world.size(), 2);
    let r = world.rank();
    // Rank r gives r + 1 and 10 (r + 1): the sums are 1 + 2 and 10 + 20 on both.
    let mut values = [(r + 1) as f32, (10 * (r + 1)) as f32];
    world.sum_f32(&mut values);
    assert_eq!(values, [3.0, 30.0]);
    assert_eq!(world.max([r as i64, 5 - r as i64]), [1, 5]);
    let joined = world.gather_rows(&Tensor::full([2, 1, 3], r as f64, (tch::Kind::Float, Device::Cpu)), 1);
    assert_eq!(joined.size(), vec![2, 2, 3]);
    assert!(
        joined.select(1, 0).eq(0.0).all().int64_value(&[]) == 1
            && joined.select(1, 1).eq(1.0).all().int64_value(&[]) == 1
    );
    assert_eq!(world.rows(8), r * 4..r * 4 + 4);

    let text: String = std::fs::read_to_string(corpus()).unwrap().chars().take(1500).collect();
    let vocab = Vocabulary::from_text(&text);
    let ids = vocab.encode(&text, "the corpus").unwrap();
    let mut compared = 0;
    for (cell, embed, dropout, order) in [
        (Cell::Rnn, 0, 0.0, BatchOrder::Random),
        (Cell::Gru, 8, 0.3, BatchOrder::Consecutive),
        (Cell::Lstm, 8, 0.3, BatchOrder::Consecutive),
    ] {
        let config = TrainConfig {
            arch: Arch { cell, embed, dropout, layers: 2, ..Arch::rnn(12) },
            steps: 8,
            batch_size: 8,
            epochs: 2,
            optimizer: OptimizerKind::Adam,
            lr: 0.01,
            batch_order: order,
            prefixes: vec![text.chars().next().unwrap().to_string()],
            auto_checkpoint: Duration::ZERO,
            ..Default::default()
        };
        let model = Network::new(config.model_config(vocab.len()), 0, Device::Cpu).unwrap();
        let mut alike = Alike { world, steps: 0 };
        train(&model, &vocab, &ids, &[], &config, None, &mut alike).unwrap();
        compared += alike.steps;
    }
    println!("rank {r} compared {compared} steps");
    world.finish();
}

fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let values = Vec::<f32>::try_from(t.reshape([-1])).unwrap();
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// An observer that, at the checkpoint after every minibatch, asserts every rank holds the same bytes.
struct Alike {
    world: &'static World,
    steps: usize,
}

impl TrainObserver for Alike {
    fn checkpoint(&mut self, model: &Network, state: &TrainState, why: SaveReason) -> charrnn::Result<()> {
        let mut bytes: Vec<u8> = model.parameters().iter().flat_map(|p| tensor_bytes(&p.detach())).collect();
        let moments = state.adam.as_ref().expect("Adam's moments");
        for t in moments.m.iter().chain(&moments.v) {
            bytes.extend(tensor_bytes(t));
        }
        let all = self.world.gather_bytes(&bytes);
        assert!(all.iter().all(|b| b == &all[0]), "the ranks' weights differ after step {} ({why:?})", self.steps + 1);
        self.steps += 1;
        Ok(())
    }
}

/// The `stretches` model.json records: (epoch, minibatch, processes) each.
fn stretches(dir: &Path) -> Vec<(u64, u64, u64)> {
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("model.json")).unwrap()).unwrap();
    let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
    json["stretches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (n(s, "epoch"), n(s, "minibatch"), n(s, "processes")))
        .collect()
}

fn a_run_resumes_on_another_number_of_processes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // An LSTM with dropout and consecutive sampling (its carried state is split among the ranks): 2 epochs
    // of 11 minibatches, straight on one process; stopped after 7 on 2 (or 1) and resumed on 1 (or 2).
    let extra = ["--epochs", "2", "--batch", "16", "--layers", "2", "--dropout", "0.2", "--sampling", "consecutive"];
    let args = |out: &str| {
        let mut a = small("lstm", out);
        a.extend(extra.map(String::from));
        a
    };
    charrnn(1, &strs(&args("straight")), d, true);
    for (first, then) in [(2u64, 1u64), (1, 2)] {
        let out = format!("from{first}");
        let mut stopped = args(&out);
        stopped.extend(["--max-iters", "7"].map(String::from));
        charrnn(first as usize, &strs(&stopped), d, true);
        charrnn(then as usize, &["train", "--resume", &out, "-q"], d, true);
        let diff = max_difference(&d.join("straight/last"), &d.join(&out).join("last"));
        assert!(diff <= tolerance(22), "{first} then {then} processes: the weights differ by {diff}");
        assert_eq!(stretches(&d.join(&out).join("last")), vec![(0, 0, first), (0, 7, then)]);
        let info = charrnn(1, &["info", "--model", &out], d, true);
        let processes = |n: u64| format!("{n} process{}", if n == 1 { "" } else { "es" });
        let line = format!(
            "trained by {} from the start; {} from epoch 1, after minibatch 7",
            processes(first),
            processes(then)
        );
        assert!(String::from_utf8_lossy(&info.stdout).contains(&line), "{}", String::from_utf8_lossy(&info.stdout));
    }
}

/// Starts a long `mpirun -np 2` run into `dir/out` that checkpoints every epoch, and waits for its first
/// checkpoint; returns the job.
fn long_run(dir: &Path) -> std::process::Child {
    let corpus = corpus().display().to_string();
    let mut c = mpirun(2, CHARRNN);
    c.args(["train", "--corpus", &corpus, "--limit-chars", "40000", "--device", "cpu", "--hidden", "128"]);
    c.args(["--epochs", "1000", "--checkpoint-every", "1", "--out", "out", "-q"]);
    let child = c.current_dir(dir).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while !dir.join("out/last/model.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "no checkpoint within 2 minutes");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// Waits at most `bound` for `child` to end; its output.
fn ends_within(child: std::process::Child, bound: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let pid = child.id();
    let waiter = std::thread::spawn(move || child.wait_with_output().unwrap());
    while !waiter.is_finished() {
        if started.elapsed() > bound {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the job did not end within {bound:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (waiter.join().unwrap(), started.elapsed())
}

/// The process id of rank `rank` of a job started here (from its environment, which mpirun sets).
fn rank_pid(rank: usize) -> u32 {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let (Ok(cmd), Ok(env)) =
            (std::fs::read(entry.path().join("cmdline")), std::fs::read(entry.path().join("environ")))
        else {
            continue;
        };
        let is_charrnn = cmd.split(|&b| b == 0).next().is_some_and(|p| p.ends_with(b"charrnn"));
        if is_charrnn && env.split(|&b| b == 0).any(|v| v == wanted.as_bytes()) {
            return pid;
        }
    }
    panic!("no rank {rank} running");
}

fn a_killed_rank_ends_the_job_and_the_checkpoint_loads() {
    let dir = tempfile::tempdir().unwrap();
    let job = long_run(dir.path());
    assert!(Command::new("kill").args(["-9", &rank_pid(1).to_string()]).status().unwrap().success());
    let (out, took) = ends_within(job, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("rank 1") && stderr.contains("signal 9"), "{stderr}");
    eprintln!("  the job ended {took:?} after rank 1 was killed");
    // The last complete checkpoint loads, and the run resumes from it on one process.
    let eval = charrnn(1, &["eval", "--model", "out", "--device", "cpu"], dir.path(), true);
    assert!(String::from_utf8_lossy(&eval.stdout).contains("perplexity"));
    charrnn(1, &["train", "--resume", "out", "--max-iters", "1", "-q"], dir.path(), true);
}

fn ctrl_c_to_mpirun_stops_every_rank_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let job = long_run(dir.path());
    let before = std::fs::read(dir.path().join("out/last/model.json")).unwrap();
    assert!(Command::new("kill").args(["-INT", &job.id().to_string()]).status().unwrap().success());
    let (out, _) = ends_within(job, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    // Rank 0 alone says it, once.
    assert_eq!(stderr.matches("stopped: interrupted at").count(), 1, "{stderr}");
    assert!(stderr.contains("saved a resumable checkpoint"), "{stderr}");
    let after = std::fs::read(dir.path().join("out/last/model.json")).unwrap();
    assert_ne!(before, after, "the stop wrote its own checkpoint");
    charrnn(1, &["train", "--resume", "out", "--max-iters", "1", "-q"], dir.path(), true);
}

/// The lines of `stderr` that charrnn wrote as errors.
fn error_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.starts_with("error:")).map(String::from).collect()
}

fn jobs_started_unlike_are_refused_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A batch the two ranks cannot share.
    let mut args = small("gru", "m");
    args.extend(["--batch", "7"].map(String::from));
    let out = charrnn(2, &strs(&args), d, false);
    let lines = error_lines(&out);
    assert!(lines.len() == 1 && lines[0].contains("among 2 processes; use --batch 6 or --batch 8"), "{lines:?}");
    assert!(!d.join("m").exists(), "nothing written");
    // Ranks started with other settings (mpirun's one job of two programs).
    let (a, mut b) = (small("gru", "m"), small("gru", "m"));
    b.extend(["--hidden", "17"].map(String::from));
    let out = run(two_programs((".", &strs(&a)), (".", &strs(&b))), d);
    let lines = error_lines(&out);
    assert!(!out.status.success());
    assert!(lines.len() == 1 && lines[0].contains("rank 1 was started with other settings than rank 0"), "{lines:?}");
    // The same path holding another text on each rank (each in its own working folder).
    for (sub, text) in
        [("r0", "分开 不分开 我不能再想 我不 我不 我不要再想你 ".repeat(80)), ("r1", "abc de fg ".repeat(400))]
    {
        std::fs::create_dir(d.join(sub)).unwrap();
        std::fs::write(d.join(sub).join("c.txt"), text).unwrap();
    }
    let same = ["train", "--corpus", "c.txt", "--device", "cpu", "--hidden", "8", "--out", "m", "-q"];
    let out = run(two_programs(("r0", &same), ("r1", &same)), d);
    let lines = error_lines(&out);
    assert!(lines.len() == 1 && lines[0].contains("rank 1 read another text than rank 0"), "{lines:?}");
    // Commands other than train.
    let out = charrnn(2, &["info"], d, false);
    let lines = error_lines(&out);
    assert!(lines.len() == 1 && lines[0].contains("only `charrnn train` runs on several processes"), "{lines:?}");
}
