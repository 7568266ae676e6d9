//! A new user's first hour (issue 15): English text with newlines, sampling flags, pipes and Ctrl-C,
//! unknown characters, one numbering, messages that read well. Each test is a command as a user types it.
use crate::cli::{eval_json, wait_within, Env, Run, TIMEOUT};
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Verse with speaker names, Windows line endings (every line break is "\r\n").
const VERSE: &str =
    "ROMEO:\r\nO, she doth teach the torches to burn bright!\r\n\r\nJULIET:\r\nGood night, good night! \
parting is such sweet sorrow.\r\n-- the end --\r\n";

/// `train` on VERSE (written, repeated, to verse.txt in `env`) with small settings, followed by `extra`
/// (a flag given again there overrides the one here).
fn verse_args<'a>(env: &Env, extra: &[&'a str]) -> Vec<&'a str> {
    env.write("verse.txt", VERSE.repeat(8).as_bytes());
    let base = [
        "train",
        "--corpus",
        "verse.txt",
        "--hidden",
        "24",
        "--steps",
        "8",
        "--batch",
        "4",
        "--epochs",
        "3",
        "--lr",
        "1",
        "--clip",
        "1",
        "--pred-period",
        "1",
        "--pred-len",
        "30",
        "--device",
        "cpu",
    ];
    [&base[..], extra].concat()
}

/// Trains a small model on VERSE into `out`, with `extra` flags (see [`verse_args`]).
fn train_verse(env: &Env, out: &str, extra: &[&str]) -> Run {
    let r = env.run(&verse_args(env, &[&["--out", out][..], extra].concat()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    r
}

fn model_json(env: &Env, dir: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(env.path(dir).join("model.json")).unwrap()).unwrap()
}

fn predict(env: &Env, args: &[&str]) -> Run {
    let r = env.run(&[&["predict"][..], args].concat());
    assert_eq!(r.code, 0, "{args:?}: {}", r.stderr);
    r
}

/// Point 1: A line break is one line break whatever its convention, and the model's newline setting applies to
/// the corpus, a prefix, a stop string and an eval text alike.
#[test]
fn every_text_is_read_with_the_models_newline_setting() {
    let env = Env::new();
    train_verse(&env, "spaces", &[]);
    train_verse(&env, "lines", &["--keep-newlines"]);
    // Each "\r\n" reads as one character: 8 copies of VERSE are 8 * (its characters - its "\r\n"s).
    let per_copy = VERSE.chars().count() - VERSE.matches("\r\n").count();
    for dir in ["spaces", "lines"] {
        let json = model_json(&env, dir);
        assert_eq!(json["corpus"]["chars"], 8 * per_copy, "{dir}");
        let vocab = json["vocab"].as_str().unwrap();
        assert!(!vocab.contains('\r'), "{dir}: {vocab:?}");
        assert_eq!(vocab.contains('\n'), dir == "lines", "{dir}: {vocab:?}");
    }
    // A prefix with a line break, in each convention, is the same prefix to both models.
    for dir in ["spaces", "lines"] {
        let greedy = |prefix: &str| predict(&env, &["--model", dir, "--prefix", prefix, "--num-chars", "20", "--json"]);
        let unix: serde_json::Value = serde_json::from_str(greedy("ROMEO:\nO").stdout.trim()).unwrap();
        for other in ["ROMEO:\r\nO", "ROMEO:\rO"] {
            let r: serde_json::Value = serde_json::from_str(greedy(other).stdout.trim()).unwrap();
            assert_eq!(r["generated"], unix["generated"], "{dir}: {other:?}");
        }
        let expected_text = if dir == "lines" { "ROMEO:\nO" } else { "ROMEO: O" };
        assert!(unix["text"].as_str().unwrap().starts_with(expected_text), "{dir}: {}", unix["text"]);
    }
    // The same text with Unix and with Windows line endings scores the same.
    env.write("unix.txt", VERSE.replace("\r\n", "\n").repeat(3).as_bytes());
    env.write("windows.txt", VERSE.repeat(3).as_bytes());
    for dir in ["spaces", "lines"] {
        let (u, w) = (
            eval_json(&env, &["--model", dir, "--corpus", "unix.txt"]),
            eval_json(&env, &["--model", dir, "--corpus", "windows.txt"]),
        );
        assert_eq!((&u["chars"], &u["cross_entropy"]), (&w["chars"], &w["cross_entropy"]), "{dir}");
    }
    // A stop string with a line break ends a sample of the newline model at a line end.
    let stop = ["--num-chars", "200", "--stop", "\r\n", "--temperature", "1", "--seed", "1", "--json"];
    let r = predict(&env, &[&["--model", "lines", "--prefix", "JULIET:"][..], &stop].concat());
    let sample: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    let generated = sample["generated"].as_str().unwrap();
    assert!(sample["stopped"].as_bool().unwrap() && generated.ends_with('\n'), "{generated:?}");
    assert_eq!(generated.matches('\n').count(), 1, "{generated:?}");
}

/// Point 2: A stream whose reader goes away stops at once with status 0; Ctrl-C during a long non-streamed
/// predict prints what there is and exits 130.
#[test]
fn a_closed_pipe_ends_streaming_and_ctrl_c_prints_what_was_generated() {
    let env = Env::new();
    train_verse(&env, "m", &[]);
    // Far more than could be generated in the minute this test allows (tens of thousands per second).
    let huge = ["predict", "--model", "m", "--prefix", "ROMEO", "--num-chars", "10000000", "--temperature", "1"];
    let mut child = env
        .command(&[&huge[..], &["--stream"]].concat())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 80];
    child.stdout.as_mut().unwrap().read_exact(&mut head).unwrap();
    drop(child.stdout.take());
    // Generating all 10,000,000 would take minutes: it must stop when its reader goes away.
    let status = wait_within(&mut child, Duration::from_secs(60));
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "a closed pipe is not an error: {stderr}");

    // Without --stream, predict first notes that it prints at the end: by then Ctrl-C is caught.
    let mut child = env.command(&huge).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut note = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut note).unwrap();
    assert!(note.starts_with("note: 10000000 characters are printed when all are generated"), "{note}");
    interrupt_once_busy(&mut child);
    // stdout is read while stderr is (each can fill its pipe).
    let rest = std::thread::spawn(move || {
        let mut rest = String::new();
        stderr.read_to_string(&mut rest).unwrap();
        rest
    });
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let status = wait_within(&mut child, TIMEOUT);
    let stderr = rest.join().unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    let generated = stdout.trim_end_matches('\n').strip_prefix("ROMEO").expect("the prefix first").chars().count();
    assert!(generated > 0 && generated < 10_000_000, "{generated}");
    assert!(stderr.contains(&format!("printed the {generated} characters generated so far")), "{stderr}");

    // A beam search stops at its next step too, and prints its best beams so far, most likely first.
    let beam = ["predict", "--model", "m", "--prefix", "ROMEO", "--num-chars", "10000000", "--beam", "4", "--json"];
    let mut child = env.command(&beam).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    interrupt_once_busy(&mut child);
    let mut stdout = String::new();
    child.stdout.take().unwrap().read_to_string(&mut stdout).unwrap();
    let status = wait_within(&mut child, TIMEOUT);
    assert_eq!(status.code(), Some(130), "{stdout}");
    let beams: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(beams.len(), 4, "{stdout}");
    let lps: Vec<f64> = beams.iter().map(|b| b["log_prob"].as_f64().unwrap()).collect();
    assert!(lps.windows(2).all(|w| w[0] >= w[1]), "{lps:?}");
    for b in &beams {
        let n = b["generated"].as_str().unwrap().chars().count();
        assert!(n > 0 && n < 10_000_000 && b["text"].as_str().unwrap().starts_with("ROMEO"), "{b}");
    }
}

/// Point 2 for train: a reader that goes away (`charrnn train 2>&1 | head -1`) neither aborts the run nor
/// makes it fail: it trains to the end, saves, and exits 0.
#[test]
fn train_outlives_a_closed_pipe_and_saves() {
    use std::io::BufRead;
    let env = Env::new();
    let args = verse_args(&env, &["--out", "m", "--epochs", "40", "--verbose"]);
    let mut child = env.command(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap()).read_line(&mut first).unwrap();
    assert!(first.starts_with("training on"), "{first}");
    drop(child.stdout.take());
    let status = wait_within(&mut child, TIMEOUT);
    assert_eq!(status.code(), Some(0));
    assert_eq!(model_json(&env, "m")["epoch"], 40, "the run went on to its end");
}

/// Point 3: Samples that can contain newlines are told apart; the report's samples stay one line each.
#[test]
fn samples_with_newlines_are_separated_and_match_json() {
    let env = Env::new();
    let report = ["--keep-newlines", "--epochs", "2", "--prefix", "ROMEO:\n", "--pred-len", "60"];
    let r = train_verse(&env, "lines", &report);
    let reports: Vec<&str> = r.stdout.lines().filter(|l| l.starts_with(" - ")).collect();
    assert_eq!(reports.len(), 2, "one line per report sample: {}", r.stdout);
    assert!(reports.iter().all(|l| l.starts_with(" - ROMEO:\\n")), "{reports:?}");
    let args = ["--model", "lines", "--prefix", "ROMEO:", "--num-chars", "80", "--temperature", "1", "--seed", "4"];
    let text = predict(&env, &[&args[..], &["--samples", "3"]].concat()).stdout;
    let json = predict(&env, &[&args[..], &["--samples", "3", "--json"]].concat()).stdout;
    let expected: String = json
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("=== sample {} of 3 ===\n{}\n", i + 1, v["text"].as_str().unwrap())
        })
        .collect();
    assert_eq!(text, expected);
    // A model without newlines keeps one sample per line.
    train_verse(&env, "spaces", &[]);
    let plain =
        predict(&env, &["--model", "spaces", "--prefix", "ROMEO", "--num-chars", "30", "--samples", "3"]).stdout;
    assert_eq!(plain.lines().count(), 3, "{plain}");
}

/// Point 4: eval can skip characters the model does not know, and says how many; long lists are cut.
#[test]
fn eval_skips_unknown_characters_when_asked_and_counts_them() {
    let env = Env::new();
    train_verse(&env, "m", &[]);
    let known = VERSE.replace("\r\n", " ");
    env.write("with-z.txt", format!("{known}Z{known}ZZ{known}").as_bytes());
    env.write("without-z.txt", known.repeat(3).as_bytes());
    let r = env.fails(&["eval", "--model", "m", "--corpus", "with-z.txt"], "'Z'");
    assert!(r.stderr.contains("--unknown skip"), "{}", r.stderr);
    let skipped = eval_json(&env, &["--model", "m", "--corpus", "with-z.txt", "--unknown", "skip"]);
    assert_eq!(skipped["skipped"]["count"], 3);
    assert_eq!(skipped["skipped"]["chars"], serde_json::json!(["Z"]));
    let clean = eval_json(&env, &["--model", "m", "--corpus", "without-z.txt"]);
    assert_eq!((&skipped["chars"], &skipped["cross_entropy"]), (&clean["chars"], &clean["cross_entropy"]));
    let r = env.run(&["eval", "--model", "m", "--corpus", "with-z.txt", "--unknown", "skip"]);
    assert!(r.stderr.contains("warning: skipped 3 characters not in the model's vocabulary: 'Z'"), "{}", r.stderr);
    // 30 unknown characters: the first 20 named, then a count.
    let many: String = ('一'..).take(30).collect();
    env.write("many.txt", format!("{known}{many}").as_bytes());
    let r = env.fails(&["eval", "--model", "m", "--corpus", "many.txt"], "and 10 more");
    assert!(r.stderr.len() < 400, "{}", r.stderr);
}

/// Point 5: One rule for sampling flags: --top-k, --top-p and several --samples sample at temperature 1 unless a
/// temperature is given; with --temperature 0 they are a usage error.
#[test]
fn sampling_flags_never_do_nothing() {
    let env = Env::new();
    train_verse(&env, "m", &[]);
    let base = ["--model", "m", "--prefix", "ROMEO", "--num-chars", "60", "--seed", "9"];
    for flags in [&["--top-k", "5"][..], &["--top-p", "0.9"], &["--samples", "2"]] {
        let implied = predict(&env, &[&base[..], flags].concat()).stdout;
        let explicit = predict(&env, &[&base[..], flags, &["--temperature", "1"]].concat()).stdout;
        assert_eq!(implied, explicit, "{flags:?}");
        let r = env.run(&[&["predict"][..], &base, flags, &["--temperature", "0"]].concat());
        assert_eq!(r.code, 2, "{flags:?}");
        assert!(r.stderr.contains(flags[0]) && r.stderr.contains("Usage: charrnn predict"), "{}", r.stderr);
    }
    let greedy = predict(&env, &base).stdout;
    assert_ne!(greedy, predict(&env, &[&base[..], &["--top-k", "5"]].concat()).stdout);
    // The same rule for train's reports.
    train_verse(&env, "t", &["--top-k", "3"]);
    assert_eq!(model_json(&env, "t")["train"]["sampler"]["temperature"], 1.0);
    let r = env.run(&["train", "--corpus", "verse.txt", "--out", "u", "--top-p", "0.5", "--temperature", "0"]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("Usage: charrnn train"), "{}", r.stderr);
}

/// Point 6: A text of many lines read with its line breaks as spaces gets a note.
#[test]
fn a_text_of_many_lines_read_as_spaces_gets_a_note() {
    let env = Env::new();
    env.write("short-lines.txt", "To be or not to be,\nthat is the question.\n".repeat(60).as_bytes());
    let args =
        ["train", "--corpus", "short-lines.txt", "--hidden", "8", "--steps", "8", "--batch", "4", "--epochs", "1"];
    let r = env.run(&[&args[..], &["--out", "a"]].concat());
    assert_eq!(r.code, 0, "{}", r.stderr);
    // By hand: 120 line breaks in 2,520 characters, one every 21.
    assert!(r.stderr.contains("note: the corpus has 120 line breaks (one every 21 characters)"), "{}", r.stderr);
    assert!(r.stderr.contains("--keep-newlines"), "{}", r.stderr);
    let r = env.run(&[&args[..], &["--out", "b", "--keep-newlines"]].concat());
    assert!(!r.stderr.contains("line breaks"), "{}", r.stderr);
    // The lyrics (2 line breaks per 100 characters or so, 12 in all) get none.
    let r = env.train(&["--epochs", "1", "--out", "c"]);
    assert!(!r.stderr.contains("line breaks"), "{}", r.stderr);
}

/// Point 6, continued: a run planned to take hours, with its first report far away, says so once after a
/// few seconds, with what would help; a run with a time limit does not.
#[test]
fn a_run_of_hours_with_a_far_first_report_gets_a_note() {
    use std::io::BufRead;
    let env = Env::new();
    let long = verse_args(&env, &["--epochs", "10000000", "--pred-period", "1000000"]);
    for (extra, noted) in [(&["--out", "a"][..], true), (&["--out", "b", "--time-limit", "7s"], false)] {
        let mut child =
            env.command(&[&long[..], extra].concat()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let started = Instant::now();
        let mut note = None;
        // The note comes after 5 seconds of training; a run with a time limit ends after 7 without one.
        while started.elapsed() < Duration::from_secs(60) {
            match lines.next() {
                Some(Ok(line)) if line.starts_with("note: at this speed") => {
                    note = Some(line);
                    break;
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        let _ = child.kill();
        child.wait().unwrap();
        assert_eq!(note.is_some(), noted, "{extra:?}: {note:?}");
        if let Some(note) = note {
            assert!(note.contains("its first report (epoch 1000000)"), "{note}");
            assert!(note.contains("--pred-period") && note.contains("--time-limit"), "{note}");
        }
    }
}

/// Point 8: Messages: the cause once, the user's path, the same words for the same condition, subcommand usage.
#[test]
fn messages_name_the_cause_once_and_the_path_given() {
    let env = Env::new();
    let r = env.fails(&["train", "--corpus", "nonexist.txt"], "nonexist.txt: no such file or directory");
    assert_eq!(r.stderr.matches("no such file").count(), 1, "{}", r.stderr);
    assert!(!r.stderr.contains("os error"), "{}", r.stderr);
    train_verse(&env, "m", &[]);
    let r = env.fails(&["plot", "--model", "m", "--out", "no/such/dir/x.svg"], "no/such/dir/x.svg");
    assert!(!r.stderr.contains(".tmp"), "{}", r.stderr);
    for args in [
        &["train", "--corpus", "verse.txt", "--limit-chars", "0"][..],
        &["eval", "--model", "m", "--limit-chars", "0"],
        &["prepare", "verse.txt", "--out", "v.tokens", "--limit-chars", "0"],
    ] {
        env.fails(args, "invalid --limit-chars: must be at least 1");
    }
    let r = env.run(&["predict", "--model", "m", "--prefix", "RO", "--stream", "--samples", "2"]);
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("Usage: charrnn predict"), "{}", r.stderr);
    // A missing model folder reads the same in every command.
    let missing = "runs/nope: not a usable charrnn model: no such folder";
    for args in [
        &["predict", "--model", "runs/nope", "--prefix", "R"][..],
        &["eval", "--model", "runs/nope"],
        &["info", "--model", "runs/nope"],
        &["train", "--resume", "runs/nope"],
        &["train", "--corpus", "verse.txt", "--init-from", "runs/nope", "--out", "x"],
    ] {
        env.fails(args, missing);
    }
}

/// Point 9: The small surprises.
#[test]
fn small_surprises_are_gone() {
    let env = Env::new();
    train_verse(&env, "m", &[]);
    // A default length, and a limit that says what to do.
    let r = predict(&env, &["--model", "m", "--prefix", "ROMEO", "--json"]);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["generated"].as_str().unwrap().chars().count(), charrnn::DEFAULT_NUM_CHARS);
    env.fails(&["predict", "--model", "m", "--prefix", "R", "--num-chars", "100000000000"], "invalid --num-chars");
    // plot refuses what it cannot write.
    env.fails(&["plot", "--model", "m", "--out", "plot.png"], "plot.png does not end in .svg");
    assert!(!env.path("plot.png").exists());
    // A stop string the model could never produce is refused.
    env.fails(&["predict", "--model", "m", "--prefix", "R", "--stop", "#"], "'#'");
    // A prefix may start with '-' (VERSE has "-- the end --").
    let r = predict(&env, &["--model", "m", "--prefix", "-- the", "--num-chars", "5"]);
    assert!(r.stdout.starts_with("-- the"), "{}", r.stdout);
    // A model folder outside the working directory is not recorded in ./runs.
    let elsewhere = tempfile::tempdir().unwrap();
    let out = elsewhere.path().join("m");
    let fresh = Env::new();
    let r = fresh.run(&verse_args(&fresh, &["--out", out.to_str().unwrap(), "--epochs", "1"]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(out.join("model.json").exists());
    assert!(!fresh.path("runs").exists(), "train --out elsewhere wrote runs/ here");
}

/// Sends SIGINT to `child` once it has used a second of CPU time more than now: generation is then under
/// way (loading a tiny model takes a few hundredths), whatever the machine's speed.
fn interrupt_once_busy(child: &mut std::process::Child) {
    let busy = cpu_seconds(child.id());
    while cpu_seconds(child.id()) < busy + 1.0 {
        assert!(child.try_wait().unwrap().is_none(), "predict ended before the signal");
        std::thread::sleep(Duration::from_millis(5));
    }
    crate::checkpoints::signal(child, "INT");
}

/// The CPU time (user and system) the process `pid` has used so far, in seconds, from `/proc/PID/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces, and ends with ')'): utime and stime are
    // the 12th and 13th of them, in clock ticks.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().map(|t| t.parse::<f64>().unwrap_or(0.0)).sum());
    // SAFETY: sysconf reads a constant of the system.
    let per_second = unsafe { sysconf(SC_CLK_TCK) } as f64;
    ticks / per_second
}

extern "C" {
    fn sysconf(name: std::ffi::c_int) -> std::ffi::c_long;
}
/// `_SC_CLK_TCK` in glibc's <unistd.h>.
const SC_CLK_TCK: std::ffi::c_int = 2;
