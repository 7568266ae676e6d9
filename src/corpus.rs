//! Reading a text corpus and mapping its characters to indices (the vocabulary).
use crate::error::{Error, Result};
use std::collections::BTreeSet;
use std::path::Path;

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

    /// Reads `text` as the options say, without the character limit: each line break (`\r\n`, `\r` or `\n`)
    /// becomes one `\n`, or a space unless newlines are kept. What every text given to a model goes through
    /// (its corpus, a prefix, a stop string, an evaluation text).
    pub fn read_text(&self, text: &str) -> String {
        let mut reader = CharReader::new(*self);
        text.chars().filter_map(|c| reader.read(c)).collect()
    }

    /// Applies the options, the character limit included, to decoded text.
    pub fn apply(&self, text: &str) -> String {
        let mut reader = CharReader::new(*self);
        let chars = text.chars().filter_map(|c| reader.read(c));
        match self.limit_chars {
            Some(n) => chars.take(n).collect(),
            None => chars.collect(),
        }
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

/// Reads a UTF-8 corpus file and applies `options`.
///
/// Errors: the file cannot be read, is not UTF-8 (naming the byte offset), or is empty after the options.
pub fn read_corpus(path: &Path, options: &CorpusOptions) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let text = String::from_utf8(bytes)
        .map_err(|e| Error::InvalidUtf8 { path: path.to_path_buf(), offset: e.utf8_error().valid_up_to() })?;
    let text = options.apply(&text);
    if text.is_empty() {
        return Err(Error::EmptyCorpus { path: path.to_path_buf() });
    }
    Ok(text)
}

/// A fingerprint of `text` (64-bit FNV-1a of its UTF-8 bytes, as `fnv1a64:` and 16 hex digits), recorded
/// with a model so that resuming can tell whether the corpus changed.
pub fn text_hash(text: &str) -> String {
    let mut h = TextHash::default();
    h.add_bytes(text.as_bytes());
    h.finish()
}

/// [`text_hash`] computed piece by piece, for text read in a stream.
pub(crate) struct TextHash(u64);

impl Default for TextHash {
    fn default() -> Self {
        TextHash(0xcbf2_9ce4_8422_2325)
    }
}

impl TextHash {
    /// Adds the next bytes of the text.
    pub(crate) fn add_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Adds the next character.
    pub(crate) fn add(&mut self, c: char) {
        self.add_bytes(c.encode_utf8(&mut [0u8; 4]).as_bytes());
    }

    /// The fingerprint of the text added so far, as [`text_hash`] writes it.
    pub(crate) fn finish(&self) -> String {
        format!("fnv1a64:{:016x}", self.0)
    }
}

/// The characters a model knows and their indices. A vocabulary read from a text lists its characters in
/// ascending Unicode scalar value; one grown by [`Vocabulary::extended`] keeps an existing vocabulary's
/// order and appends the new characters (ascending among themselves), so a saved vocabulary may be in any
/// order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocabulary {
    /// The characters in index order.
    chars: Vec<char>,
    /// Each character with its index, sorted by character (for lookups).
    sorted: Vec<(char, u32)>,
}

impl Vocabulary {
    /// The vocabulary of `text`: each distinct character once, sorted.
    pub fn from_text(text: &str) -> Self {
        let set: BTreeSet<char> = text.chars().collect();
        Self::from_unique(set.into_iter().collect())
    }

    /// A vocabulary from a saved list, in index order; fails on an empty list or a repeated character.
    pub fn from_chars(chars: Vec<char>) -> std::result::Result<Self, String> {
        if chars.is_empty() {
            return Err("the vocabulary is empty".into());
        }
        let v = Self::from_unique(chars);
        if let Some(w) = v.sorted.windows(2).find(|w| w[0].0 == w[1].0) {
            return Err(format!("the vocabulary lists {:?} twice", w[0].0));
        }
        Ok(v)
    }

    fn from_unique(chars: Vec<char>) -> Self {
        let mut sorted: Vec<(char, u32)> = chars.iter().enumerate().map(|(i, &c)| (c, i as u32)).collect();
        sorted.sort_unstable();
        Vocabulary { chars, sorted }
    }

    /// This vocabulary followed by the characters of `more` that it lacks, in ascending order: every
    /// character keeps its index, and the new ones get the indices from `len()` on.
    pub fn extended(&self, more: impl IntoIterator<Item = char>) -> Vocabulary {
        let new: BTreeSet<char> = more.into_iter().filter(|&c| self.index(c).is_none()).collect();
        Self::from_unique(self.chars.iter().copied().chain(new).collect())
    }

    /// Whether the characters are in ascending order (as in every vocabulary read from a text).
    pub fn is_sorted(&self) -> bool {
        self.chars.windows(2).all(|w| w[0] < w[1])
    }

    /// Number of characters, V.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Always false: a vocabulary has at least one character.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters in index order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// Index of `c`, if known.
    pub fn index(&self, c: char) -> Option<usize> {
        self.sorted.binary_search_by_key(&c, |&(k, _)| k).ok().map(|i| self.sorted[i].1 as usize)
    }

    /// Character at index `i`.
    ///
    /// Panics if `i >= len()`; indices come from the model's own outputs.
    pub fn char(&self, i: usize) -> char {
        self.chars[i]
    }

    /// Encodes `text` as indices; `what` names the text in the error listing unknown characters.
    pub fn encode(&self, text: &str, what: &'static str) -> Result<Vec<i64>> {
        let mut unknown: Vec<char> = Vec::new();
        let ids = text
            .chars()
            .map(|c| match self.index(c) {
                Some(i) => i as i64,
                None => {
                    if !unknown.contains(&c) {
                        unknown.push(c);
                    }
                    -1
                }
            })
            .collect();
        if unknown.is_empty() {
            Ok(ids)
        } else {
            Err(Error::UnknownChars { what, chars: unknown })
        }
    }

    /// Decodes indices back to text.
    pub fn decode(&self, ids: &[i64]) -> String {
        ids.iter().map(|&i| self.char(i as usize)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_of_every_convention_read_as_one_newline_or_one_space() {
        // Unix, Windows and old Mac line breaks, and a blank line written each way (worked by hand).
        let text = "a\nb\r\nc\rd\r\n\r\ne\r\rf";
        assert_eq!(CorpusOptions::default().apply(text), "a b c d  e  f");
        let keep = CorpusOptions { keep_newlines: true, limit_chars: None };
        assert_eq!(keep.apply(text), "a\nb\nc\nd\n\ne\n\nf");
        assert_eq!(keep.read_text("\r\n\n"), "\n\n");
        let limited = CorpusOptions { keep_newlines: true, limit_chars: Some(3) };
        assert_eq!(limited.apply("a\r\nbc"), "a\nb", "a line break counts as one character");
        assert_eq!(limited.read_text("a\r\nbc"), "a\nbc", "read_text has no limit");
    }

    #[test]
    fn limit_counts_characters_not_bytes() {
        let opts = CorpusOptions { keep_newlines: false, limit_chars: Some(3) };
        assert_eq!(opts.apply("分开不分开"), "分开不");
    }

    #[test]
    fn invalid_utf8_names_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.txt");
        std::fs::write(&path, b"abc\xffdef").unwrap();
        let err = read_corpus(&path, &CorpusOptions::default()).unwrap_err();
        assert!(matches!(err, Error::InvalidUtf8 { offset: 3, .. }), "{err}");
        assert!(err.to_string().contains("byte offset 3"));
    }

    #[test]
    fn empty_corpus_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.txt");
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(read_corpus(&path, &CorpusOptions::default()), Err(Error::EmptyCorpus { .. })));
    }

    #[test]
    fn vocabulary_is_sorted_and_round_trips() {
        let v = Vocabulary::from_text("分开 不分开");
        assert_eq!(v.chars(), &[' ', '不', '分', '开']);
        let ids = v.encode("不分开", "t").unwrap();
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(v.decode(&ids), "不分开");
        assert_eq!(Vocabulary::from_chars(v.chars().to_vec()).unwrap(), v);
        assert!(Vocabulary::from_chars(vec!['b', 'a', 'b']).is_err());
        assert!(Vocabulary::from_chars(Vec::new()).is_err());
    }

    #[test]
    fn an_extended_vocabulary_keeps_every_index_and_appends_new_characters_in_order() {
        let v = Vocabulary::from_text("dbca");
        let grown = v.extended("zxa b".chars());
        // Worked by hand: a b c d keep 0..4; ' ' (U+20), x, z are new, ascending.
        assert_eq!(grown.chars(), &['a', 'b', 'c', 'd', ' ', 'x', 'z']);
        assert!(!grown.is_sorted() && v.is_sorted());
        for (i, c) in "abcd xz".chars().enumerate() {
            assert_eq!(grown.index(c), Some(i), "{c:?}");
        }
        assert_eq!(grown.index('q'), None);
        assert_eq!(grown.encode("z a", "t").unwrap(), vec![6, 4, 0]);
        // A saved unsorted vocabulary reads back with the same indices.
        assert_eq!(Vocabulary::from_chars(grown.chars().to_vec()).unwrap(), grown);
        assert_eq!(v.extended("abc".chars()), v);
    }

    #[test]
    fn unknown_characters_are_named_once_each() {
        let v = Vocabulary::from_text("abc");
        match v.encode("axbxy", "the prefix").unwrap_err() {
            Error::UnknownChars { chars, what } => {
                assert_eq!(chars, vec!['x', 'y']);
                assert_eq!(what, "the prefix");
            }
            e => panic!("unexpected {e}"),
        }
    }
}
