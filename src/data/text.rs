//! Reading text: how a corpus is read (line breaks, a length limit), the files a list of files and folders
//! names, and the one streaming reader that every command reads text through.
use crate::error::{Error, Result};
use crate::util::Fnv1a64;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Bytes read from a source at a time.
pub(crate) const CHUNK: usize = 1 << 20;

/// The byte-order mark, U+FEFF: at the start of a file it says how the text is encoded and is not part of
/// it.
const BOM: char = '\u{feff}';

/// What a pass of [`for_each_char`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TextRead {
    /// Characters passed on.
    pub(crate) chars: u64,
    /// Of which line breaks (`\r\n`, `\r` or `\n`).
    pub(crate) line_breaks: u64,
    /// Files that started with a byte-order mark, dropped.
    pub(crate) boms: u64,
}

/// How a corpus file is read; saved with the model so `eval` can read it again the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct CorpusOptions {
    /// Keep '\n' and '\r' as they are; by default (as in the textbook) each becomes a space.
    pub keep_newlines: bool,
    /// Keep only the first this many characters (after newline handling).
    pub limit_chars: Option<usize>,
}

impl CorpusOptions {
    /// Checks the options are usable: a character limit, if any, of at least 1.
    pub fn validate(&self) -> Result<()> {
        if self.limit_chars == Some(0) {
            return Err(Error::config("--limit-chars", "must be at least 1"));
        }
        Ok(())
    }

    /// Reads `text` as the options say, without the character limit: a byte-order mark at its start is
    /// dropped, and each line break (`\r\n`, `\r` or `\n`) becomes one `\n`, or a space unless newlines are
    /// kept. What every text given to a model goes through (its corpus, a prefix, a stop string, an
    /// evaluation text).
    pub fn read_text(&self, text: &str) -> String {
        let mut reader = CharReader::new(*self);
        let text = text.strip_prefix(BOM).unwrap_or(text);
        text.chars().filter_map(|c| reader.read(c)).collect()
    }
}

/// [`CorpusOptions::read_text`] one character at a time, for text read in a stream.
pub(crate) struct CharReader {
    keep_newlines: bool,
    /// Line breaks read so far.
    pub(crate) line_breaks: u64,
    /// Whether the previous character was `\r` (whose `\n` is then part of the same line break).
    after_cr: bool,
}

impl CharReader {
    pub(crate) fn new(options: CorpusOptions) -> Self {
        CharReader { keep_newlines: options.keep_newlines, line_breaks: 0, after_cr: false }
    }

    /// What `c` reads as, or `None` for the `\n` of a `\r\n` whose `\r` was read already.
    pub(crate) fn read(&mut self, c: char) -> Option<char> {
        let after_cr = std::mem::replace(&mut self.after_cr, c == '\r');
        match c {
            '\n' if after_cr => None,
            '\n' | '\r' => {
                self.line_breaks += 1;
                Some(if self.keep_newlines { '\n' } else { ' ' })
            }
            c => Some(c),
        }
    }
}

/// Decodes the UTF-8 text of `paths` (concatenated), `chunk` bytes at a time ([`CHUNK`] outside tests),
/// drops a byte-order mark at the start of each file, applies `options` (newlines, character limit) and
/// calls `each` with every character; the first invalid UTF-8 before the limit is an error naming its file
/// and byte offset. Stops at the character limit. The answer does not depend on `chunk`.
pub(crate) fn for_each_char(
    paths: &[PathBuf],
    options: &CorpusOptions,
    chunk: usize,
    mut each: impl FnMut(char),
) -> Result<TextRead> {
    let limit = options.limit_chars.map_or(u64::MAX, |n| n as u64);
    let (mut count, mut boms) = (0u64, 0u64);
    let mut buf = vec![0u8; chunk.max(1)];
    // One reader for the whole text: a `\r` ending one file and a `\n` starting the next are one line break.
    let mut reader = CharReader::new(*options);
    let done = |count, reader: &CharReader, boms| TextRead { chars: count, line_breaks: reader.line_breaks, boms };
    for path in paths {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        // Bytes of a character cut by the end of the previous chunk, and the file offset of `carry[0]`.
        let mut carry: Vec<u8> = Vec::new();
        let mut offset = 0u64;
        let mut first = true;
        loop {
            if count >= limit {
                return Ok(done(count, &reader, boms));
            }
            let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                if !carry.is_empty() {
                    return Err(Error::InvalidUtf8 { path: path.clone(), offset: offset as usize });
                }
                break;
            }
            carry.extend_from_slice(&buf[..n]);
            // The valid text, and where an invalid sequence starts (`None`: at most an incomplete character
            // at the end, whose bytes wait for the next chunk).
            let (valid, invalid_at) = match std::str::from_utf8(&carry) {
                Ok(_) => (carry.len(), None),
                Err(e) if e.error_len().is_none() => (e.valid_up_to(), None),
                Err(e) => (e.valid_up_to(), Some(e.valid_up_to())),
            };
            let mut text = std::str::from_utf8(&carry[..valid]).expect("valid up to here");
            if first && !text.is_empty() {
                first = false;
                if let Some(rest) = text.strip_prefix(BOM) {
                    (text, boms) = (rest, boms + 1);
                }
            }
            for c in text.chars() {
                if count >= limit {
                    return Ok(done(count, &reader, boms));
                }
                if let Some(c) = reader.read(c) {
                    each(c);
                    count += 1;
                }
            }
            if let Some(at) = invalid_at.filter(|_| count < limit) {
                return Err(Error::InvalidUtf8 { path: path.clone(), offset: offset as usize + at });
            }
            offset += valid as u64;
            carry.drain(..valid);
        }
    }
    Ok(done(count, &reader, boms))
}

/// Which of a folder's files a corpus reads: those whose path below the folder (or name) matches one of
/// `include` (all when it is empty) and none of `exclude`; globs as a shell's (`*.rs`, `docs/**`, `*.{md,txt}`),
/// where `*` also crosses `/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Selection {
    /// Read only the files that match one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    /// Leave out the files that match one of these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
}

impl Selection {
    /// Whether no pattern is given.
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// The patterns compiled, or an error naming the one that is not a glob.
    fn compile(&self) -> Result<(Option<globset::GlobSet>, globset::GlobSet)> {
        let set = |flag: &'static str, patterns: &[String]| -> Result<globset::GlobSet> {
            let mut set = globset::GlobSetBuilder::new();
            for p in patterns {
                let glob =
                    globset::Glob::new(p).map_err(|e| Error::config(flag, format!("{p:?} is not a glob: {e}")))?;
                set.add(glob);
            }
            set.build().map_err(|e| Error::config(flag, e.to_string()))
        };
        let include = (!self.include.is_empty()).then(|| set("--include", &self.include)).transpose()?;
        Ok((include, set("--exclude", &self.exclude)?))
    }
}

/// Whether the file at `path` looks like text: its first 8 KiB hold no NUL byte and are UTF-8 (a character
/// cut at their end aside).
fn looks_like_text(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut head = Vec::with_capacity(8192);
    std::fs::File::open(path).and_then(|f| f.take(8192).read_to_end(&mut head)).map_err(|e| Error::io(path, e))?;
    if head.contains(&0) {
        return Ok(false);
    }
    Ok(match std::str::from_utf8(&head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none() && head.len() == 8192,
    })
}

/// The text files that `paths` name, in order: a file is itself; a folder is every regular file below it,
/// in sorted path order, skipping hidden files and folders (names starting with a dot) and the files that
/// are not text ([`select_sources`] with no pattern). Symbolic links are followed, to files and to folders,
/// but never into a folder that contains the link (a loop, read once); a link to nothing is an error naming
/// it. A folder without any text file is an error.
pub fn expand_sources(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    Ok(select_sources(paths, &Selection::default())?.0)
}

/// [`expand_sources`] with a folder's files chosen by `selection`, and those that are not text (a NUL byte
/// or invalid UTF-8 at their start: images, archives, binaries) left out: the files, and those left out as
/// not text. A file named itself is always read.
pub fn select_sources(paths: &[PathBuf], selection: &Selection) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let (include, exclude) = selection.compile()?;
    let mut not_text = Vec::new();
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut Vec::new(), &mut found)?;
            if found.is_empty() {
                return Err(Error::config(
                    "--corpus",
                    format!("{} holds no files (hidden ones are skipped)", path.display()),
                ));
            }
            let before = files.len();
            for file in found {
                let below = file.strip_prefix(path).unwrap_or(&file);
                if include.as_ref().is_some_and(|set| !set.is_match(below)) || exclude.is_match(below) {
                    continue;
                }
                if looks_like_text(&file)? {
                    files.push(file);
                } else {
                    not_text.push(file);
                }
            }
            if files.len() == before {
                let what =
                    if selection.is_empty() { "text files" } else { "text files that --include and --exclude select" };
                return Err(Error::config("--corpus", format!("{} holds no {what}", path.display())));
            }
        } else {
            files.push(path.clone());
        }
    }
    Ok((files, not_text))
}

/// `dir`'s files into `out`, in sorted order; `within` holds the canonical paths of the folders being
/// read, `dir`'s own and those above it.
fn walk(dir: &Path, within: &mut Vec<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    if within.contains(&canonical) {
        return Ok(());
    }
    within.push(canonical);
    let mut entries: Vec<std::fs::DirEntry> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .collect::<std::io::Result<_>>()
        .map_err(|e| Error::io(dir, e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // What the entry is, a link followed to what it names.
        let kind = std::fs::metadata(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                let reason =
                    format!("{} is a symbolic link to nothing; remove it or point it at a file", path.display());
                Error::config("--corpus", reason)
            }
            _ => Error::io(&path, e),
        })?;
        if kind.is_dir() {
            walk(&path, within, out)?;
        } else if kind.is_file() {
            out.push(path);
        }
    }
    within.pop();
    Ok(())
}

/// A fingerprint of `text` (64-bit FNV-1a of its UTF-8 bytes, as `fnv1a64:` and 16 hex digits), recorded
/// with a model so that resuming can tell whether the corpus changed.
pub fn text_hash(text: &str) -> String {
    Fnv1a64::of(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_folders_files_are_chosen_by_glob_and_what_is_not_text_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let put = |name: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, bytes).unwrap();
        };
        put("a.rs", b"fn a() {}");
        put("b.txt", "分开".as_bytes());
        put("src/c.rs", b"fn c() {}");
        put("target/d.rs", b"fn d() {}");
        // A PNG's signature holds a NUL-free but non-UTF-8 byte (0x89); a binary with NULs.
        put("logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR");
        put("tool.bin", b"ELF\x00\x01\x02");
        // UTF-8 cut at the 8 KiB mark is still text.
        put("long.txt", &[&b"x".repeat(8191)[..], "分".as_bytes()].concat());
        let names = |select: &Selection| {
            let (files, not_text) = select_sources(&[dir.path().to_path_buf()], select).unwrap();
            let rel = |v: Vec<PathBuf>| -> Vec<String> {
                v.iter().map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string()).collect()
            };
            (rel(files), rel(not_text))
        };
        let all = names(&Selection::default());
        assert_eq!(all.0, ["a.rs", "b.txt", "long.txt", "src/c.rs", "target/d.rs"]);
        assert_eq!(all.1, ["logo.png", "tool.bin"]);
        let rust = Selection { include: vec!["*.rs".into()], exclude: vec!["target/**".into()] };
        assert_eq!(names(&rust).0, ["a.rs", "src/c.rs"]);
        let text = Selection { include: vec!["*.{txt,md}".into()], exclude: vec![] };
        assert_eq!(names(&text), (vec!["b.txt".to_string(), "long.txt".into()], vec![]));
        // A file named itself is read whatever it holds; nothing selected, or a bad glob, is an error.
        let png = dir.path().join("logo.png");
        assert_eq!(select_sources(std::slice::from_ref(&png), &rust).unwrap().0, [png]);
        let none = Selection { include: vec!["*.py".into()], exclude: vec![] };
        let err = select_sources(&[dir.path().to_path_buf()], &none).unwrap_err().to_string();
        assert!(err.contains("holds no text files that --include and --exclude select"), "{err}");
        let bad = Selection { include: vec!["a[".into()], exclude: vec![] };
        let err = select_sources(&[dir.path().to_path_buf()], &bad).unwrap_err().to_string();
        assert!(err.contains("--include") && err.contains("\"a[\" is not a glob"), "{err}");
    }

    /// Every character [`for_each_char`] passes for `files` (written to a temporary folder), and its counts.
    fn read_all(files: &[&[u8]], options: CorpusOptions, chunk: usize) -> Result<(String, u64, u64)> {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(k, bytes)| {
                let path = dir.path().join(format!("{k}.txt"));
                std::fs::write(&path, bytes).unwrap();
                path
            })
            .collect();
        let mut text = String::new();
        let read = for_each_char(&paths, &options, chunk, |c| text.push(c))?;
        Ok((text, read.chars, read.line_breaks))
    }

    #[test]
    fn line_breaks_of_every_convention_read_as_one_newline_or_one_space() {
        // Unix, Windows and old Mac line breaks, and a blank line written each way (worked by hand).
        let text = "a\nb\r\nc\rd\r\n\r\ne\r\rf";
        assert_eq!(CorpusOptions::default().read_text(text), "a b c d  e  f");
        let keep = CorpusOptions { keep_newlines: true, limit_chars: None };
        assert_eq!(keep.read_text(text), "a\nb\nc\nd\n\ne\n\nf");
        assert_eq!(keep.read_text("\r\n\n"), "\n\n");
        assert_eq!(read_all(&[text.as_bytes()], keep, 3).unwrap(), (keep.read_text(text), 13, 7));
        // A `\r` that ends one file and the `\n` that starts the next are one line break.
        assert_eq!(read_all(&[b"a\r", b"\nb"], keep, 1).unwrap(), ("a\nb".to_string(), 3, 1));
        let limited = CorpusOptions { keep_newlines: true, limit_chars: Some(3) };
        assert_eq!(read_all(&[b"a\r\nbc"], limited, 2).unwrap().0, "a\nb", "a line break counts as one character");
        assert_eq!(limited.read_text("a\r\nbc"), "a\nbc", "read_text has no limit");
    }

    #[test]
    fn links_in_a_folder_are_followed_but_not_round_a_loop_and_a_link_to_nothing_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (corpus, elsewhere) = (dir.path().join("corpus"), dir.path().join("elsewhere"));
        std::fs::create_dir_all(corpus.join("sub")).unwrap();
        std::fs::create_dir_all(&elsewhere).unwrap();
        for (path, text) in
            [(corpus.join("a.txt"), "a"), (corpus.join("sub/b.txt"), "b"), (elsewhere.join("c.txt"), "c")]
        {
            std::fs::write(path, text).unwrap();
        }
        let link = |to: &Path, at: &str| std::os::unix::fs::symlink(to, corpus.join(at)).unwrap();
        link(&elsewhere, "d-folder");
        link(&elsewhere.join("c.txt"), "e-file.txt");
        link(&corpus, "sub/f-loop");
        let names: Vec<String> = expand_sources(std::slice::from_ref(&corpus))
            .unwrap()
            .iter()
            .map(|p| p.strip_prefix(&corpus).unwrap().display().to_string())
            .collect();
        // Sorted by name; the loop back to the corpus itself is not read again.
        assert_eq!(names, ["a.txt", "d-folder/c.txt", "e-file.txt", "sub/b.txt"]);
        link(&dir.path().join("gone"), "g-dangling");
        let err = expand_sources(std::slice::from_ref(&corpus)).unwrap_err().to_string();
        assert!(err.contains("g-dangling is a symbolic link to nothing"), "{err}");
    }

    #[test]
    fn a_byte_order_mark_is_dropped_at_the_start_of_each_file_only() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = ["\u{feff}ab", "\u{feff}c\u{feff}d", "e"]
            .iter()
            .enumerate()
            .map(|(k, text)| {
                let path = dir.path().join(format!("{k}.txt"));
                std::fs::write(&path, text).unwrap();
                path
            })
            .collect();
        for chunk in [1, 2, CHUNK] {
            let mut text = String::new();
            let read = for_each_char(&paths, &CorpusOptions::default(), chunk, |c| text.push(c)).unwrap();
            // Worked by hand: the two leading marks go, the one inside the second file stays.
            assert_eq!((text.as_str(), read.chars, read.boms), ("abc\u{feff}de", 6, 2), "chunk {chunk}");
        }
        assert_eq!(CorpusOptions::default().read_text("\u{feff}分开\u{feff}"), "分开\u{feff}");
    }

    #[test]
    fn the_limit_counts_characters_not_bytes() {
        let options = CorpusOptions { keep_newlines: false, limit_chars: Some(3) };
        assert_eq!(read_all(&["分开不分开".as_bytes()], options, CHUNK).unwrap().0, "分开不");
    }

    #[test]
    fn invalid_utf8_names_the_file_and_the_offset() {
        for chunk in [1, 2, 3, CHUNK] {
            let err = read_all(&[b"ok", b"abc\xffdef"], CorpusOptions::default(), chunk).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidUtf8 { path, offset: 3 } if path.ends_with("1.txt")),
                "chunk {chunk}: {err}"
            );
            assert!(err.to_string().contains("byte offset 3"));
            // A character cut off by the end of the file.
            let err = read_all(&["ab分".as_bytes()[..4].as_ref()], CorpusOptions::default(), chunk).unwrap_err();
            assert!(matches!(err, Error::InvalidUtf8 { offset: 2, .. }), "chunk {chunk}: {err}");
        }
    }

    /// What reading `files` as one text gives, worked out without the streaming reader: each file decoded
    /// whole by the standard library, the line breaks of the concatenation replaced by string operations,
    /// the limit applied to the result. `Err((file, offset))`: the first invalid byte within the limit.
    fn oracle(
        files: &[Vec<u8>],
        keep: bool,
        limit: Option<usize>,
    ) -> std::result::Result<(String, u64), (usize, usize)> {
        let read = |text: &str| -> (String, u64) {
            let lines = text.replace("\r\n", "\n").replace('\r', "\n");
            let kept: String = lines.chars().take(limit.unwrap_or(usize::MAX)).collect();
            let breaks = kept.matches('\n').count() as u64;
            (if keep { kept } else { kept.replace('\n', " ") }, breaks)
        };
        let mut text = String::new();
        // Each file's text, without a byte-order mark at its start.
        let own = |s: &str| s.strip_prefix('\u{feff}').unwrap_or(s).to_string();
        for (k, bytes) in files.iter().enumerate() {
            match std::str::from_utf8(bytes) {
                Ok(s) => text.push_str(&own(s)),
                Err(e) => {
                    text.push_str(&own(std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap()));
                    let (before, _) = read(&text);
                    // A `\r` at the very end may still become part of a `\r\n`: it is one character either way.
                    if limit.is_some_and(|n| before.chars().count() >= n) {
                        return Ok(read(&text));
                    }
                    return Err((k, e.valid_up_to()));
                }
            }
        }
        Ok(read(&text))
    }

    /// Bytes that are often UTF-8, with every line-break convention, multi-byte characters, byte-order marks
    /// (at a file's start or inside it) and the occasional invalid or cut-off sequence.
    fn text_bytes() -> impl Strategy<Value = Vec<u8>> {
        let piece = prop_oneof![
            Just(b"\r".to_vec()),
            Just(b"\n".to_vec()),
            Just(b"\r\n".to_vec()),
            Just("分".as_bytes().to_vec()),
            Just("é".as_bytes().to_vec()),
            Just("😀".as_bytes().to_vec()),
            Just("\u{feff}".as_bytes().to_vec()),
            "[a-z ]{1,3}".prop_map(String::into_bytes),
            Just(vec![0xff]),
            Just("分".as_bytes()[..2].to_vec()),
            Just(vec![0xc3]),
        ];
        prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

        /// Across chunk boundaries (chunks of 1 to 7 bytes cut every character somewhere) and file boundaries,
        /// the streaming reader gives what decoding the files whole gives.
        #[test]
        fn the_reader_agrees_with_decoding_whole_files(
            files in prop::collection::vec(text_bytes(), 1..4),
            chunk in 1usize..8,
            keep_newlines in any::<bool>(),
            limit in prop::option::of(1usize..40),
        ) {
            let refs: Vec<&[u8]> = files.iter().map(Vec::as_slice).collect();
            let options = CorpusOptions { keep_newlines, limit_chars: limit };
            match (read_all(&refs, options, chunk), oracle(&files, keep_newlines, limit)) {
                (Ok((text, count, breaks)), Ok((expected, expected_breaks))) => {
                    prop_assert_eq!(&text, &expected);
                    prop_assert_eq!(count as usize, expected.chars().count());
                    prop_assert_eq!(breaks, expected_breaks);
                }
                (Err(Error::InvalidUtf8 { path, offset }), Err((file, at))) => {
                    prop_assert!(path.ends_with(format!("{file}.txt")), "{} vs file {file}", path.display());
                    prop_assert_eq!(offset, at);
                }
                (ours, theirs) => prop_assert!(false, "reader {:?} vs oracle {:?}", ours.map(|r| r.0), theirs),
            }
        }
    }
}
