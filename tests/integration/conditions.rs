//! Hostile conditions outside `serve` (issue 23), end to end: a reader that goes away, links and byte-order
//! marks in a folder corpus, a folder named many ways while a run writes it, durations as people write
//! them, token files whose bytes changed, and temporaries left by killed processes.
use crate::checkpoints::{assert_same_parameters, signal, spawn, wait_for};
use crate::cli::{cached_corpora, env_train_args, wait_within, Env, LYRICS, TIMEOUT};
use std::os::unix::fs::symlink;
use std::path::Path;

/// A process id that no running process has: that of a process that has ended (and been reaped).
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id()
}

#[test]
fn every_subcommand_exits_0_when_its_reader_goes_away() {
    let env = Env::new();
    assert_eq!(env.train(&["--epochs", "2", "--out", "m"]).code, 0);
    let runs: [&[&str]; 9] = [
        &["completions", "bash"],
        &["completions", "zsh"],
        &["completions", "fish"],
        &["--help"],
        &["train", "--help"],
        &["info"],
        &["info", "--model", "m"],
        &["predict", "--model", "m", "--prefix", "分开", "--num-chars", "20000"],
        &["eval", "--model", "m", "--corpus", "lyrics.txt"],
    ];
    for args in runs {
        // A pipe whose reading end is closed before charrnn starts: its first write fails (EPIPE).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut child = env.command(args).stdout(writer).stderr(std::process::Stdio::piped()).spawn().unwrap();
        let status = wait_within(&mut child, TIMEOUT);
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("error") && !stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn a_folder_corpus_follows_links_round_no_loop_and_drops_each_files_byte_order_mark() {
    let env = Env::new();
    let bom = "\u{feff}";
    for dir in ["texts", "elsewhere/more"] {
        std::fs::create_dir_all(env.path(dir)).unwrap();
    }
    env.write("texts/a.txt", format!("{bom}{}", LYRICS.repeat(3)).as_bytes());
    env.write("elsewhere/c.txt", format!("{bom}甲乙丙 {}", LYRICS).as_bytes());
    env.write("elsewhere/more/d.txt", format!("{bom}丁戊 {}", LYRICS).as_bytes());
    symlink(env.path("elsewhere/c.txt"), env.path("texts/c.txt")).unwrap();
    symlink(env.path("elsewhere/more"), env.path("texts/more")).unwrap();
    // A link back up: followed, it would read texts/ again and again.
    symlink(env.path("texts"), env.path("texts/more-again")).unwrap();
    let r = env.train(&["--corpus", "texts", "--epochs", "1", "--out", "m"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let vocab = crate::finetune::vocab(&env, "m");
    assert!("甲乙丙丁戊".chars().all(|c| vocab.contains(c)), "the linked file and folder were read: {vocab}");
    assert!(!vocab.contains('\u{feff}'), "no byte-order mark in the vocabulary");
    let notes: Vec<&str> = r.stderr.lines().filter(|l| l.contains("byte-order mark")).collect();
    assert_eq!(notes.len(), 1, "said once: {}", r.stderr);
    assert!(notes[0].contains("3 of the corpus's 3 files"), "{}", notes[0]);
    // The text read is each file's text without its mark: a.txt's lyrics three times, then c's and d's.
    let eval = crate::cli::eval_json(&env, &["--model", "m", "--corpus", "texts"]);
    assert_eq!(eval["chars"].as_u64().unwrap() as usize, 5 * LYRICS.chars().count() + 4 + 3, "{eval}");
    // A link to nothing is named.
    symlink(env.path("nowhere.txt"), env.path("texts/gone.txt")).unwrap();
    env.fails(&[&env_train_args()[..], &["--corpus", "texts", "--out", "n"]].concat(), "gone.txt");
}

/// A run that trains until stopped and writes its first checkpoint only after 100,000 epochs.
const SILENT_RUN: &[&str] = &[
    "train",
    "--corpus",
    "lyrics.txt",
    "--hidden",
    "32",
    "--batch",
    "4",
    "--steps",
    "5",
    "--epochs",
    "100000",
    "--checkpoint-every",
    "100000",
];

#[test]
fn a_folder_a_run_writes_is_one_folder_whatever_it_is_called_and_named_before_its_first_checkpoint() {
    let env = Env::new();
    std::fs::create_dir_all(env.path("real")).unwrap();
    std::fs::create_dir_all(env.path("other")).unwrap();
    let child = spawn(&env, &[SILENT_RUN, &["--out", "real/m"]].concat());
    // The run makes its folder (empty until its first checkpoint) as it starts.
    wait_for(&env.path("real/m"), TIMEOUT);
    let holder = format!("process {}", child.id());
    // Readers and resumers name the running process, not a missing model.
    for args in [
        &["predict", "--model", "real/m", "--prefix", "分开"][..],
        &["eval", "--model", "real/m", "--corpus", "lyrics.txt"],
        &["info", "--model", "real/m"],
        &["serve", "--model", "real/m", "--port", "0"],
        &["train", "--resume", "real/m"],
    ] {
        let r = env.fails(args, &holder);
        assert!(
            r.stderr.contains("has not saved its first checkpoint yet") || r.stderr.contains("being written"),
            "{args:?}: {}",
            r.stderr
        );
    }
    // A second writer is refused however it names the folder: a link to it, a link to its parent, `.` from
    // inside it, a relative path from another folder, a path through `..`.
    symlink(env.path("real/m"), env.path("mlink")).unwrap();
    symlink(env.path("real"), env.path("rlink")).unwrap();
    let second = |dir: &str, out: &str| {
        let corpus = env.path("lyrics.txt");
        let mut args = env_train_args();
        let at = args.iter().position(|a| *a == "lyrics.txt").unwrap();
        let corpus = corpus.to_str().unwrap();
        args[at] = corpus;
        args.extend_from_slice(&["--epochs", "1", "--force", "--out", out]);
        let mut cmd = env.command(&args);
        cmd.current_dir(env.path(dir));
        crate::cli::output(cmd)
    };
    for (dir, out) in
        [(".", "mlink"), (".", "rlink/m"), ("real/m", "."), ("other", "../real/m"), (".", "other/../real/./m")]
    {
        let r = second(dir, out);
        assert_ne!(r.code, 0, "from {dir}, --out {out} was accepted");
        assert!(r.stderr.contains(&holder), "from {dir}, --out {out}: {}", r.stderr);
    }
    assert_eq!(std::fs::read_dir(env.path("real/m")).unwrap().count(), 0, "nothing written by the refused runs");
    signal(&child, "KILL");
    let _ = wait_within(&mut { child }, TIMEOUT);
}

#[test]
fn durations_are_read_as_people_write_them() {
    let env = Env::new();
    for (limit, out) in [("4min", "a"), ("1h30m", "b"), ("2 days", "c"), ("90", "d")] {
        let r = env.train(&["--epochs", "1", "--out", out, "--time-limit", limit]);
        assert_eq!(r.code, 0, "--time-limit {limit}: {}", r.stderr);
        assert!(!r.stderr.contains("stopped by --time-limit"), "{limit} is long enough: {}", r.stderr);
    }
    // A short one stops the run, at its first minibatch.
    let r = env.train(&["--epochs", "1000", "--out", "e", "--time-limit", "0.5 s"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("stopped by --time-limit"), "{}", r.stderr);
    for bad in ["4x", "1h30", "soon"] {
        let r = env.train(&["--out", "bad", "--time-limit", bad]);
        assert_eq!(r.code, 2, "{bad}: {}", r.stderr);
        assert!(r.stderr.contains("expected a duration such as 90s, 4min, 1h30m or 2h"), "{bad}: {}", r.stderr);
    }
}

/// Changes the last token of the token file `path` to another character of its vocabulary (the file's
/// last byte: the tokens come last, one byte each for a vocabulary under 256).
fn change_last_token(path: &Path) {
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.last_mut().unwrap();
    *last = if *last == 0 { 1 } else { 0 };
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_token_file_whose_bytes_changed_is_prepared_again_or_refused() {
    let env = Env::new();
    assert_eq!(env.train(&["--epochs", "2", "--out", "m"]).code, 0);
    let cached = cached_corpora(&env).into_iter().map(|(path, _)| path).collect::<Vec<_>>();
    assert_eq!(cached.len(), 1, "{cached:?}");
    // The cache's header, size and sources are unchanged: only its checksum can tell.
    change_last_token(&cached[0]);
    assert_eq!(env.train(&["--epochs", "2", "--out", "n"]).code, 0);
    assert_same_parameters(&env.path("m/last"), &env.path("n/last"));
    // A token file of the user's, changed the same way, is refused naming the cause.
    let r = env.run(&["prepare", "lyrics.txt", "--out", "mine.tokens"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    change_last_token(&env.path("mine.tokens"));
    let train = [&env_train_args()[..], &["--out", "t"]].concat();
    let train: Vec<&str> = train.iter().map(|a| if *a == "lyrics.txt" { "mine.tokens" } else { a }).collect();
    env.fails(&train, "do not match the checksum in its header");
    env.fails(&["eval", "--model", "m", "--corpus", "mine.tokens"], "do not match the checksum in its header");
}

#[test]
fn temporaries_of_killed_processes_are_swept_and_a_live_ones_kept() {
    let env = Env::new();
    assert_eq!(env.train(&["--epochs", "1", "--out", "m"]).code, 0);
    let (dead, live) = (dead_pid(), std::process::id());
    // An interrupted preparation in the cache, and an interrupted checkpoint of the model folder `m`.
    let leftovers = |pid: u32| [format!(".cache/.0123456789abcdef.tokens.{pid}.tmp"), format!("m/.last.new-{pid}")];
    for pid in [dead, live] {
        let [tmp, new] = leftovers(pid);
        env.write(&tmp, b"half a token file");
        std::fs::create_dir_all(env.path(&new)).unwrap();
        env.write(&format!("{new}/model.json"), b"{");
    }
    let r = env.run(&["train", "--resume", "m", "--epochs", "2"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for (pid, kept) in [(dead, false), (live, true)] {
        for left in leftovers(pid) {
            assert_eq!(env.path(&left).exists(), kept, "{left}");
        }
    }
    // The model itself is whole.
    crate::cli::eval_json(&env, &["--model", "m"]);
}
