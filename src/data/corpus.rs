//! A corpus loaded for a model: prepared once (and cached) from its files, then read in a given vocabulary.
use crate::data::prepared::{is_token_file, prepare, write_remapped, Prepared, PreparedHeader, Source};
use crate::data::text::{select_sources, text_hash, CorpusOptions, Selection};
use crate::data::tokens::Tokens;
use crate::data::vocab::Vocabulary;
use crate::error::{Error, Result};
use crate::util::{atomic_temporary_owner, sweep_dead_temporaries};
use std::path::{Path, PathBuf};

/// Characters left out of a text because a vocabulary lacks them.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Skipped {
    /// How many were left out.
    pub count: usize,
    /// Which, each once.
    pub chars: Vec<char>,
}

impl std::fmt::Display for Skipped {
    /// "N characters not in the model's vocabulary: 'x', 'y'" (the first 20, then a count).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chars = crate::error::quote_chars(&self.chars);
        write!(f, "{} characters not in the model's vocabulary: {chars}", self.count)
    }
}

/// A corpus's character indices in a given vocabulary, read from a token file: the prepared file itself
/// when its vocabulary is that one, else a copy remapped to it, cached beside prepared corpora (so that a
/// corpus of any size is read in bounded memory either way).
pub struct CorpusIds(Prepared);

impl CorpusIds {
    /// `prepared`'s text in `vocab`'s indices; characters that `vocab` lacks are an error naming them.
    pub fn in_vocab(prepared: Prepared, vocab: &Vocabulary) -> Result<CorpusIds> {
        Self::remap(prepared, vocab, false).map(|(ids, _)| ids)
    }

    /// `prepared`'s text in `vocab`'s indices, with the characters that `vocab` lacks left out (the text
    /// around them joined); also returns how many were left out and which (each once, in the order of
    /// `prepared`'s vocabulary).
    pub fn in_vocab_skipping(prepared: Prepared, vocab: &Vocabulary) -> Result<(CorpusIds, Skipped)> {
        Self::remap(prepared, vocab, true)
    }

    fn remap(prepared: Prepared, vocab: &Vocabulary, skip: bool) -> Result<(CorpusIds, Skipped)> {
        if prepared.vocab == *vocab {
            return Ok((CorpusIds(prepared), Skipped::default()));
        }
        let table: Vec<Option<u32>> =
            prepared.vocab.chars().iter().map(|&c| vocab.index(c).map(|i| i as u32)).collect();
        let unknown: Vec<char> =
            prepared.vocab.chars().iter().zip(&table).filter(|(_, i)| i.is_none()).map(|(&c, _)| c).collect();
        if !unknown.is_empty() && !skip {
            return Err(Error::UnknownChars { what: "the corpus", chars: unknown });
        }
        // Named after the text (its header, checksum and sources included) and the vocabulary.
        let description = serde_json::to_string(&prepared.header).expect("the header serialises");
        let key = text_hash(&format!("{description}\n{}", vocab.chars().iter().collect::<String>()));
        let remapped =
            cached_or_prepared(&key, "remapped-", |out| write_remapped(&prepared, vocab, &table, out).map(|_| ()))?;
        let skipped = Skipped { count: (prepared.header.len - remapped.header.len) as usize, chars: unknown };
        Ok((CorpusIds(remapped), skipped))
    }

    /// The indices.
    pub fn tokens(&self) -> Tokens<'_> {
        self.0.tokens()
    }
}

/// The token file named after `key` (a fingerprint, `fnv1a64:…`) in the cache, when it is whole; else the
/// one `write` writes there, or, where the cache cannot be written, into a private temporary file (removed
/// once open).
fn cached_or_prepared(key: &str, kind: &str, write: impl Fn(&Path) -> Result<()>) -> Result<Prepared> {
    let dir = cache_dir();
    let name = format!("{kind}{}.tokens", key.trim_start_matches("fnv1a64:"));
    let cached = dir.join(&name);
    if Prepared::header_of(&cached).is_ok_and(|h| h.checksum.is_some()) {
        if let Ok(prepared) = Prepared::open(&cached) {
            return Ok(prepared);
        }
    }
    if std::fs::create_dir_all(&dir).is_ok() && write(&cached).is_ok() {
        return Prepared::open(&cached);
    }
    let tmp = std::env::temp_dir().join(format!("{PRIVATE}{}-{name}", std::process::id()));
    let result = write(&tmp).and_then(|_| Prepared::open(&tmp));
    let _ = std::fs::remove_file(&tmp);
    result
}

/// The folder where prepared corpora are cached: `$CHARRNN_CACHE`, else `$XDG_CACHE_HOME/charrnn`, else
/// `~/.cache/charrnn`, else the system's temporary folder.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    var("CHARRNN_CACHE")
        .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("charrnn")))
        .or_else(|| var("HOME").map(|d| d.join(".cache").join("charrnn")))
        .unwrap_or_else(|| std::env::temp_dir().join("charrnn-cache"))
}

/// How the private token files of a process begin: `charrnn-<pid>-<key>.tokens`.
const PRIVATE: &str = "charrnn-";

/// The process of a private token file (or of its temporary, `.charrnn-<pid>-….tokens.<pid>.tmp`), by name.
fn private_token_file_owner(name: &str) -> Option<u32> {
    let name = name.strip_prefix('.').unwrap_or(name);
    let (pid, rest) = name.strip_prefix(PRIVATE)?.split_once('-')?;
    rest.contains(".tokens").then(|| pid.parse().ok())?
}

/// The prepared form of the text in `paths` (files and folders, see [`crate::expand_sources`]) read with
/// `options`, or of a token file given alone (whose own reading options then apply; `options` must leave
/// them alone). A text is prepared once into [`cache_dir`] and reused while its sources are unchanged (the
/// same files, each of the same size and modification time, read with the same options); when the cache
/// cannot be written, it is prepared into a temporary file, removed once open.
pub fn load_corpus(paths: &[PathBuf], options: &CorpusOptions) -> Result<Prepared> {
    Ok(load_selected(paths, options, &Selection::default())?.0)
}

/// [`load_corpus`] with a folder's files chosen by `selection` (see [`select_sources`]); also the files
/// left out because they are not text.
pub fn load_selected(
    paths: &[PathBuf],
    options: &CorpusOptions,
    selection: &Selection,
) -> Result<(Prepared, Vec<PathBuf>)> {
    if let [path] = paths {
        if is_token_file(path) {
            let prepared = Prepared::open(path)?;
            if *options != CorpusOptions::default() && *options != prepared.header.options {
                let reason = "a prepared corpus keeps the newline and length settings it was prepared with; drop --keep-newlines and --limit-chars, or give the text file";
                return Err(Error::config("--corpus", reason));
            }
            return Ok((prepared, Vec::new()));
        }
    }
    if paths.is_empty() {
        return Err(Error::config("--corpus", "give at least one file or folder"));
    }
    let (files, not_text) = select_sources(paths, selection)?;
    if let Some(token_file) = files.iter().find(|f| is_token_file(f)) {
        let reason = format!("{} is a prepared corpus, which can only be given alone", token_file.display());
        return Err(Error::config("--corpus", reason));
    }
    let sources = files.iter().map(|f| Source::of(f)).collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = sources.iter().map(|s| s.path.display().to_string()).collect();
    // "crlf bom": token files cached before `\r\n` read as one line break, or before byte-order marks were
    // dropped, have other names, so none is reused.
    let key = text_hash(&format!("{}\n{options:?}\ncrlf bom", names.join("\n")));
    let dir = cache_dir();
    // What preparations that were killed left behind.
    sweep_dead_temporaries(&dir, atomic_temporary_owner);
    sweep_dead_temporaries(&std::env::temp_dir(), private_token_file_owner);
    let cached = dir.join(format!("{}.tokens", key.trim_start_matches("fnv1a64:")));
    // The header first: a cache of changed sources (or one without a checksum, from before there was one)
    // is prepared again without reading its tokens; a cache whose tokens fail their checksum, after.
    let usable = |h: PreparedHeader| h.sources == sources && h.options == *options && h.checksum.is_some();
    if Prepared::header_of(&cached).is_ok_and(usable) {
        if let Ok(prepared) = Prepared::open(&cached) {
            return Ok((prepared, not_text));
        }
    }
    if std::fs::create_dir_all(&dir).is_ok() {
        match prepare(&files, options, &cached) {
            Ok(header) if header.sources == sources => return Ok((Prepared::open(&cached)?, not_text)),
            Ok(_) => {}
            // The cache could not be written: prepare privately below.
            Err(Error::Io { path: failed, .. }) if !files.contains(&failed) => {}
            Err(e) => return Err(e),
        }
    }
    // No usable cache (or a source changed while it was read): a private temporary file.
    let tmp = std::env::temp_dir().join(format!("{PRIVATE}{}-{}.tokens", std::process::id(), &key[8..]));
    let result = prepare(&files, options, &tmp).and_then(|_| Prepared::open(&tmp));
    let _ = std::fs::remove_file(&tmp);
    Ok((result?, not_text))
}
