//! The characters a model knows and their indices: the vocabulary.
use crate::error::{Error, Result};
use std::collections::BTreeSet;

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
