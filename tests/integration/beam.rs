//! `predict --beam N` from the command line (issue 17): greedy at 1, the N best sorted with their log
//! probabilities, at least as likely as greedy's continuation, and the flags it cannot go with refused.
use crate::cli::Env;

/// One JSON line of `predict --json`: (generated, probs, log_prob).
fn parse(line: &str) -> (String, Vec<f64>, Option<f64>) {
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    let probs = v["probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap()).collect();
    (v["generated"].as_str().unwrap().to_string(), probs, v["log_prob"].as_f64())
}

#[test]
fn beam_search_from_the_command_line() {
    let env = Env::new();
    let r = env.train(&["--epochs", "30", "--out", "m"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let predict = |extra: &[&str]| {
        let mut args = vec!["predict", "--model", "m", "--prefix", "不知", "--num-chars", "12"];
        args.extend_from_slice(extra);
        env.run(&args)
    };
    let greedy = predict(&[]);
    assert_eq!(greedy.code, 0, "{}", greedy.stderr);
    let one = predict(&["--beam", "1"]);
    assert_eq!((one.code, &one.stdout), (0, &greedy.stdout), "{}", one.stderr);

    let greedy_json = predict(&["--json"]);
    let (_, greedy_probs, none) = parse(greedy_json.stdout.trim());
    assert_eq!(none, None, "no log_prob without --beam");
    let greedy_lp: f64 = greedy_probs.iter().map(|p| p.ln()).sum();
    let beams = predict(&["--beam", "4", "--json"]);
    assert_eq!(beams.code, 0, "{}", beams.stderr);
    let beams: Vec<_> = beams.stdout.lines().map(parse).collect();
    assert_eq!(beams.len(), 4);
    for (generated, probs, log_prob) in &beams {
        assert_eq!((generated.chars().count(), probs.len()), (12, 12));
        let sum: f64 = probs.iter().map(|p| p.ln()).sum();
        assert!((log_prob.unwrap() - sum).abs() < 1e-9 * sum.abs().max(1.0), "{log_prob:?} vs {sum}");
    }
    assert!(beams.windows(2).all(|w| w[0].2 >= w[1].2), "most likely first: {beams:?}");
    let mut texts: Vec<&String> = beams.iter().map(|b| &b.0).collect();
    texts.dedup();
    assert_eq!(texts.len(), 4, "distinct continuations");
    // Greedy's continuation is one candidate the search weighs: the best is at least as likely.
    assert!(beams[0].2.unwrap() >= greedy_lp - 1e-6, "{} < greedy {greedy_lp}", beams[0].2.unwrap());
    // Plain output: the same texts, one per line, after the prefix.
    let plain = predict(&["--beam", "4"]);
    let lines: Vec<String> = plain.stdout.lines().map(|l| l.trim_start_matches("不知").to_string()).collect();
    assert_eq!(lines, beams.iter().map(|b| b.0.clone()).collect::<Vec<_>>());

    for bad in [
        &["--beam", "2", "--temperature", "1"][..],
        &["--beam", "2", "--top-k", "3"],
        &["--beam", "2", "--top-p", "0.5"],
        &["--beam", "2", "--samples", "2"],
        &["--beam", "2", "--seed", "3"],
        &["--beam", "2", "--stream"],
        &["--beam", "0"],
        &["--beam", "1001"],
    ] {
        let r = predict(bad);
        assert_eq!(r.code, 2, "{bad:?}: {}", r.stderr);
        assert!(r.stderr.contains("--beam"), "{bad:?}: {}", r.stderr);
        assert!(r.stdout.is_empty() && !r.stderr.contains("panicked"), "{bad:?}");
    }
}
