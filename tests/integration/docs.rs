//! The README and docs/ name only commands and flags that exist: every `charrnn COMMAND … --flag` they show
//! (in code, a command continued over lines with `\`), and every flag in the flag tables of docs/usage.md's
//! command sections, is in that command's `--help`.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

const COMMANDS: [&str; 9] = ["train", "predict", "serve", "prepare", "eval", "plot", "export", "info", "completions"];

/// The `--flags` in `text`.
fn flags(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("--") {
        let after = &rest[at + 2..];
        let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
        let before = rest[..at].chars().last();
        if name.len() > 1
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && before.is_none_or(|c| !c.is_alphanumeric())
        {
            out.push(format!("--{}", name.trim_end_matches('-')));
        }
        rest = &after[name.len()..];
    }
    out
}

/// The documentation's text, each file's lines with commands continued over `\` joined.
fn documents() -> Vec<(String, Vec<String>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<_> = std::fs::read_dir(root.join("docs")).unwrap().map(|e| e.unwrap().path()).collect();
    docs.sort();
    files.extend(docs.into_iter().filter(|p| p.extension().is_some_and(|e| e == "md")));
    files
        .iter()
        .map(|f| {
            let text = std::fs::read_to_string(f).unwrap().replace("\\\n", " ");
            (f.file_name().unwrap().to_string_lossy().into_owned(), text.lines().map(String::from).collect())
        })
        .collect()
}

#[test]
fn every_command_and_flag_the_documentation_names_exists() {
    let help: BTreeMap<&str, String> = COMMANDS
        .iter()
        .map(|c| {
            let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("charrnn"))
                .args([c, "--help"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{c} --help");
            (*c, String::from_utf8(out.stdout).unwrap())
        })
        .collect();
    let exists = |command: &str, flag: &str| {
        help[command].match_indices(flag).any(|(at, _)| {
            let next = help[command][at + flag.len()..].chars().next();
            next.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '-'))
        })
    };
    let mut checked = BTreeSet::new();
    let mut missing = Vec::new();
    for (file, lines) in documents() {
        let mut section: Option<&str> = None;
        for line in &lines {
            // docs/usage.md's sections are the commands; their tables' first column holds the flags.
            if let Some(h) = line.strip_prefix("### ") {
                section =
                    COMMANDS.iter().copied().find(|c| h.eq_ignore_ascii_case(c) || (*c == "eval" && h == "Evaluate"));
            } else if line.starts_with("## ") {
                section = None;
            }
            if let (Some(command), true) = (section, file == "usage.md" && line.starts_with("| `--")) {
                for flag in flags(line.split('|').nth(1).unwrap()) {
                    checked.insert((command, flag.clone()));
                    if !exists(command, &flag) {
                        missing.push(format!("{file}: {command} {flag} (table)"));
                    }
                }
            }
            // Every `charrnn COMMAND …` written out, up to what ends a shell command.
            for (at, _) in line.match_indices("charrnn ") {
                let rest = &line[at + "charrnn ".len()..];
                let Some(command) = COMMANDS.iter().copied().find(|c| rest.starts_with(&format!("{c} ")) || rest == *c)
                else {
                    continue;
                };
                let end = ["`", " | ", ";", "&&", " #", ")", " >"]
                    .iter()
                    .filter_map(|s| rest.find(s))
                    .min()
                    .unwrap_or(rest.len());
                for flag in flags(&rest[..end]) {
                    checked.insert((command, flag.clone()));
                    if !exists(command, &flag) {
                        missing.push(format!("{file}: charrnn {command} {flag}"));
                    }
                }
            }
        }
    }
    assert!(missing.is_empty(), "named in the documentation but not in --help: {missing:#?}");
    // The check has something to check: most commands' flags appear.
    let commands: BTreeSet<&str> = checked.iter().map(|(c, _)| *c).collect();
    assert!(checked.len() > 60 && commands.len() >= 8, "{} flags of {commands:?}", checked.len());
}

#[test]
fn the_readme_is_short_and_links_every_page_of_docs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.lines().count() < 250, "the README has {} lines", readme.lines().count());
    for page in
        std::fs::read_dir(root.join("docs")).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
    {
        assert!(readme.contains(&format!("(docs/{page})")), "the README does not link docs/{page}");
    }
}
