//! A prepared corpus: the text of one or more files read once in a streaming pass, its vocabulary built and
//! its characters encoded to a token file of the narrowest width the vocabulary allows (1, 2 or 4 bytes
//! each), from which training and evaluation read the windows they use.
//!
//! The file is: 16 bytes of magic, the format version (u32, little-endian), the length of a JSON header
//! (u32), the header ([`PreparedHeader`]: width, length, vocabulary, fingerprint, sources, reading options),
//! zero padding to a multiple of 8 bytes, then the tokens, little-endian.
use crate::data::text::{for_each_char, CorpusOptions, CHUNK};
use crate::data::tokens::{FileTokens, Tokens};
use crate::data::vocab::Vocabulary;
use crate::error::{Error, Result};
use crate::util::{write_atomic, Fnv1a64, WordChecksum};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The first bytes of every token file.
const MAGIC: &[u8; 16] = b"charrnn-tokens\0\0";
/// The format version this build writes and reads.
pub const TOKENS_VERSION: u32 = 1;
/// Unicode code points (the size of the tables indexed by a character).
const CODE_POINTS: usize = 0x11_0000;

/// A source file of a prepared corpus, as it was when it was read.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    /// The file, as given (made absolute).
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Its modification time, in nanoseconds since the Unix epoch (0 if unknown).
    pub modified_ns: u128,
}

impl Source {
    /// `path` as it is now.
    pub fn of(path: &Path) -> Result<Source> {
        let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let modified_ns =
            meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        Ok(Source { path, size: meta.len(), modified_ns })
    }
}

/// What a token file says about itself.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreparedHeader {
    /// Bytes per token: 1, 2 or 4.
    pub width: u8,
    /// Tokens (characters) in the file.
    pub len: u64,
    /// The vocabulary, in index order (sorted, but in a text remapped to a model's vocabulary), as one string.
    pub vocab: String,
    /// The text's FNV-1a fingerprint ([`crate::text_hash`] of the text as read).
    pub hash: String,
    /// The files read, in order.
    pub sources: Vec<Source>,
    /// How they were read.
    pub options: CorpusOptions,
    /// Line breaks in the text read (`\r\n`, `\r` or `\n`, whether kept or read as spaces); absent in
    /// files prepared before it was counted.
    #[serde(default)]
    pub line_breaks: Option<u64>,
    /// Files that started with a byte-order mark, which was dropped.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub boms: u64,
    /// A checksum of the token bytes (64-bit FNV-1a over their 64-bit words), checked when the file is
    /// opened; absent in files prepared before it was kept (which are then read unchecked).
    #[serde(default)]
    pub checksum: Option<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The narrowest token width for a vocabulary of `size` characters.
fn width_for(size: usize) -> u8 {
    match size {
        0..=256 => 1,
        257..=65_536 => 2,
        _ => 4,
    }
}

/// Reads `paths` (in order, as one text) with `options` and writes the prepared corpus to `out` (atomically:
/// a failure leaves no file). Two streaming passes: the first builds the vocabulary and the fingerprint, the
/// second encodes; the text is never held whole in memory.
pub fn prepare(paths: &[PathBuf], options: &CorpusOptions, out: &Path) -> Result<PreparedHeader> {
    let sources = paths.iter().map(|p| Source::of(p)).collect::<Result<Vec<_>>>()?;
    // Which characters occur, by code point (a table, not a set: this runs once per character).
    let mut seen = vec![false; CODE_POINTS];
    let mut hash = Fnv1a64::default();
    let read = for_each_char(paths, options, CHUNK, |c| {
        seen[c as usize] = true;
        hash.add(c);
    })?;
    let len = read.chars;
    if len == 0 {
        let path = paths.first().cloned().unwrap_or_default();
        return Err(Error::EmptyCorpus { path });
    }
    let vocab: Vec<char> = (0..CODE_POINTS as u32).filter(|&c| seen[c as usize]).filter_map(char::from_u32).collect();
    drop(seen);
    let header = PreparedHeader {
        width: width_for(vocab.len()),
        len,
        vocab: vocab.iter().collect(),
        hash: hash.finish(),
        sources,
        options: *options,
        line_breaks: Some(read.line_breaks),
        boms: read.boms,
        checksum: None,
    };
    let mut index = vec![0u32; CODE_POINTS];
    for (i, &c) in vocab.iter().enumerate() {
        index[c as usize] = i as u32;
    }
    write_token_file(out, header, |push| for_each_char(paths, options, CHUNK, |c| push(index[c as usize])).map(|_| ()))
}

/// Writes a token file at `out` (atomically: a failure leaves no file) described by `header` (its checksum
/// filled in here), its tokens what `produce` passes to the function it is given, in order: exactly
/// `header.len` of them, or the text changed while it was read, an error.
fn write_token_file(
    out: &Path,
    mut header: PreparedHeader,
    produce: impl FnOnce(&mut dyn FnMut(u32)) -> Result<()>,
) -> Result<PreparedHeader> {
    // Known once the tokens are written: the header is written with a checksum of the same length, then
    // again with the real one.
    header.checksum = Some(WordChecksum::default().finish());
    write_atomic(out, |tmp| {
        let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut w = BufWriter::with_capacity(CHUNK, file);
        w.write_all(&head_bytes(&header)).map_err(|e| Error::io(tmp, e))?;
        let (mut failed, mut written) = (None, 0u64);
        let width = header.width as usize;
        let mut checksum = WordChecksum::default();
        let mut pending: Vec<u8> = Vec::with_capacity(CHUNK + 4);
        produce(&mut |token| {
            pending.extend_from_slice(&token.to_le_bytes()[..width]);
            written += 1;
            if pending.len() >= CHUNK {
                checksum.add(&pending);
                if failed.is_none() {
                    failed = w.write_all(&pending).err();
                }
                pending.clear();
            }
        })?;
        checksum.add(&pending);
        if let Some(e) = failed.or_else(|| w.write_all(&pending).err()) {
            return Err(Error::io(tmp, e));
        }
        if written != header.len {
            let reason =
                format!("the sources changed while they were read ({} characters, then {written})", header.len);
            return Err(Error::config("--corpus", reason));
        }
        header.checksum = Some(checksum.finish());
        let mut file = w.into_inner().map_err(|e| Error::io(tmp, e.into_error()))?;
        file.rewind().and_then(|_| file.write_all(&head_bytes(&header))).map_err(|e| Error::io(tmp, e))
    })?;
    Ok(header)
}

/// Tokens read at a time when a token file is read whole (a bounded piece of memory).
const TOKENS_AT_A_TIME: usize = 1 << 20;

/// `source`'s text in the indices of `vocab`, as a token file at `out`: source token `i` becomes
/// `table[i]`, or is left out where that is `None` (a character `vocab` lacks). Two passes over the
/// source, a bounded piece at a time: the first counts what stays and fingerprints its text.
pub(crate) fn write_remapped(
    source: &Prepared,
    vocab: &Vocabulary,
    table: &[Option<u32>],
    out: &Path,
) -> Result<PreparedHeader> {
    let tokens = source.tokens();
    let each_piece = |f: &mut dyn FnMut(&[i64])| {
        for start in (0..tokens.len()).step_by(TOKENS_AT_A_TIME) {
            f(&tokens.slice(start, TOKENS_AT_A_TIME.min(tokens.len() - start)).to_vec());
        }
    };
    let (mut kept, mut hash) = (0u64, Fnv1a64::default());
    each_piece(&mut |piece| {
        for j in piece.iter().filter_map(|&t| table[t as usize]) {
            kept += 1;
            hash.add(vocab.char(j as usize));
        }
    });
    let h = &source.header;
    let header = PreparedHeader {
        width: width_for(vocab.len()),
        len: kept,
        vocab: vocab.chars().iter().collect(),
        hash: hash.finish(),
        sources: h.sources.clone(),
        options: h.options,
        line_breaks: h.line_breaks.filter(|_| kept == h.len),
        boms: h.boms,
        checksum: None,
    };
    write_token_file(out, header, |push| {
        each_piece(&mut |piece| piece.iter().filter_map(|&t| table[t as usize]).for_each(&mut *push));
        Ok(())
    })
}

/// The bytes before a token file's tokens: the magic, the version, the header's length and the header,
/// padded to a multiple of 8 bytes.
fn head_bytes(header: &PreparedHeader) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("the header serialises");
    let mut head = Vec::with_capacity(24 + json.len() + 8);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&TOKENS_VERSION.to_le_bytes());
    head.extend_from_slice(&(json.len() as u32).to_le_bytes());
    head.extend_from_slice(&json);
    head.resize(head.len().next_multiple_of(8), 0);
    head
}

/// An open token file, its header and vocabulary checked and its tokens read on demand (positioned reads:
/// the process holds only what it copies out, whatever the corpus's size).
pub struct Prepared {
    file: File,
    /// Where the tokens start.
    offset: u64,
    /// What the file says about itself.
    pub header: PreparedHeader,
    /// Its vocabulary.
    pub vocab: Vocabulary,
}

impl Prepared {
    /// Opens the token file at `path`, checking its magic, version, header, size, checksum and every token
    /// (one pass over the tokens, 1 MiB at a time).
    pub fn open(path: &Path) -> Result<Prepared> {
        let (file, offset, header, vocab) = Self::read_header(path)?;
        let bad = |reason: String| Error::BadCorpus { path: path.to_path_buf(), reason };
        let (checksum, max) =
            scan(&file, offset, header.len * header.width as u64, header.width).map_err(|e| Error::io(path, e))?;
        if header.checksum.as_ref().is_some_and(|c| *c != checksum) {
            return Err(bad("its tokens do not match the checksum in its header: they changed after it was prepared (a disk error, a tool that rewrote it); prepare it again".into()));
        }
        // Every token must index the vocabulary: checked once here, so that readers can trust them.
        if max.is_some_and(|m| m as usize >= vocab.len()) {
            let reason = format!("a token ({}) is outside its vocabulary of {}", max.unwrap_or(0), vocab.len());
            return Err(bad(reason));
        }
        Ok(Prepared { file, offset, header, vocab })
    }

    /// The header of the token file at `path` (checked as [`Prepared::open`] checks it, but without reading
    /// the tokens).
    pub fn header_of(path: &Path) -> Result<PreparedHeader> {
        Self::read_header(path).map(|(_, _, header, _)| header)
    }

    /// The open file, where its tokens start, its header and its vocabulary, checked but for the tokens.
    fn read_header(path: &Path) -> Result<(File, u64, PreparedHeader, Vocabulary)> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let size = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let bad = |reason: String| Error::BadCorpus { path: path.to_path_buf(), reason };
        let mut head = [0u8; 24];
        if file.read_exact(&mut head).is_err() || &head[..16] != MAGIC {
            return Err(bad("not a charrnn token file (prepare one with `charrnn prepare`)".into()));
        }
        let version = u32::from_le_bytes(head[16..20].try_into().expect("4 bytes"));
        if version > TOKENS_VERSION {
            let reason = format!("format version {version} is newer than this charrnn understands ({TOKENS_VERSION}); upgrade charrnn or prepare the corpus again");
            return Err(bad(reason));
        }
        let json_len = u32::from_le_bytes(head[20..24].try_into().expect("4 bytes")) as u64;
        if 24 + json_len > size {
            return Err(bad("truncated header".into()));
        }
        let mut json = vec![0u8; json_len as usize];
        file.read_exact(&mut json).map_err(|e| Error::io(path, e))?;
        let header: PreparedHeader =
            serde_json::from_slice(&json).map_err(|e| bad(format!("corrupted header ({e})")))?;
        let offset = (24 + json_len).next_multiple_of(8);
        if ![1, 2, 4].contains(&header.width) {
            return Err(bad(format!("token width {} is not 1, 2 or 4", header.width)));
        }
        let expected = (header.len as u128) * header.width as u128 + offset as u128;
        if size as u128 != expected {
            return Err(bad(format!("truncated or altered: {size} bytes, its header says {expected}")));
        }
        let vocab = Vocabulary::from_chars(header.vocab.chars().collect()).map_err(bad)?;
        if width_for(vocab.len()) > header.width {
            return Err(bad(format!("{} characters do not fit tokens of {} bytes", vocab.len(), header.width)));
        }
        Ok((file, offset, header, vocab))
    }

    /// The tokens.
    pub fn tokens(&self) -> Tokens<'_> {
        let (start, len, width) = (self.offset, self.header.len as usize, self.header.width);
        Tokens::File(FileTokens { file: &self.file, start, len, width })
    }
}

/// The checksum of the `bytes` token bytes of `file` from `offset`, and the largest token (of `width` bytes,
/// little-endian), if any.
fn scan(file: &File, offset: u64, bytes: u64, width: u8) -> std::io::Result<(String, Option<u32>)> {
    let mut buf = vec![0u8; CHUNK.min(bytes as usize)];
    let (mut checksum, mut max, mut at) = (WordChecksum::default(), None::<u32>, 0u64);
    while at < bytes {
        let chunk = &mut buf[..(bytes - at).min(CHUNK as u64) as usize];
        file.read_exact_at(chunk, offset + at)?;
        checksum.add(chunk);
        let largest = match width {
            1 => chunk.iter().copied().max().map(u32::from),
            2 => chunk.chunks_exact(2).map(|b| u32::from(u16::from_le_bytes([b[0], b[1]]))).max(),
            _ => chunk.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).max(),
        };
        max = max.max(largest);
        at += chunk.len() as u64;
    }
    Ok((checksum.finish(), max))
}

/// Whether `path` starts like a token file.
pub fn is_token_file(path: &Path) -> bool {
    let mut head = [0u8; 16];
    File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok() && &head == MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::text::text_hash;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn prepared_tokens_equal_the_text_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        // Multi-byte characters straddle the 1 MiB chunk boundary, with CRLF line ends.
        let line = "分开 不分开\r\n我不能再想 é ü\n";
        let text = line.repeat(CHUNK / line.len() + 50);
        let path = write(dir.path(), "t.txt", &text);
        for options in [
            CorpusOptions::default(),
            CorpusOptions { keep_newlines: true, limit_chars: None },
            CorpusOptions { keep_newlines: false, limit_chars: Some(1001) },
        ] {
            let out = dir.path().join("t.tokens");
            let header = prepare(std::slice::from_ref(&path), &options, &out).unwrap();
            let whole: String =
                options.read_text(&text).chars().take(options.limit_chars.unwrap_or(usize::MAX)).collect();
            let vocab = Vocabulary::from_text(&whole);
            let prepared = Prepared::open(&out).unwrap();
            assert_eq!(prepared.vocab, vocab, "{options:?}");
            assert_eq!(prepared.tokens().to_vec(), vocab.encode(&whole, "t").unwrap(), "{options:?}");
            assert_eq!(header.hash, text_hash(&whole));
            assert_eq!(header.len as usize, whole.chars().count());
            assert_eq!(header.width, 1);
        }
    }

    #[test]
    fn a_remapped_token_file_holds_the_text_in_the_other_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "t.txt", "bacab");
        let out = dir.path().join("t.tokens");
        prepare(&[path], &CorpusOptions::default(), &out).unwrap();
        let source = Prepared::open(&out).unwrap();
        // Into a vocabulary of another order that lacks 'b': the text without its b's, worked by hand.
        let vocab = Vocabulary::from_chars(vec!['c', 'a', 'z']).unwrap();
        let table: Vec<Option<u32>> = source.vocab.chars().iter().map(|&c| vocab.index(c).map(|i| i as u32)).collect();
        let remapped_path = dir.path().join("r.tokens");
        let header = write_remapped(&source, &vocab, &table, &remapped_path).unwrap();
        let remapped = Prepared::open(&remapped_path).unwrap();
        assert_eq!(remapped.tokens().to_vec(), vec![1, 0, 1]);
        assert_eq!(
            (header.len, header.hash.as_str(), remapped.vocab.chars()),
            (3, text_hash("aca").as_str(), vocab.chars())
        );
        // Into a vocabulary that has every character: the same text, whose fingerprint is the source's.
        let grown = source.vocab.extended("xy".chars());
        let grown = Vocabulary::from_chars(grown.chars().iter().rev().copied().collect()).unwrap();
        let table: Vec<Option<u32>> = source.vocab.chars().iter().map(|&c| grown.index(c).map(|i| i as u32)).collect();
        let header = write_remapped(&source, &grown, &table, &remapped_path).unwrap();
        assert_eq!(Prepared::open(&remapped_path).unwrap().tokens().to_vec(), grown.encode("bacab", "t").unwrap());
        assert_eq!(header.hash, source.header.hash);
    }

    #[test]
    fn several_files_read_as_one_text_and_widths_follow_the_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.txt", "abc");
        let b = write(dir.path(), "b.txt", "cde");
        let out = dir.path().join("ab.tokens");
        prepare(&[a, b], &CorpusOptions::default(), &out).unwrap();
        assert_eq!(Prepared::open(&out).unwrap().tokens().to_vec(), vec![0, 1, 2, 2, 3, 4]);
        for (size, width) in [(256, 1), (257, 2), (65_536, 2), (65_537, 4)] {
            // `size` distinct characters from U+4E00 on (U+D800..U+DFFF are not characters: skipped).
            let text: String = (0x4E00u32..).filter_map(char::from_u32).take(size).collect();
            let path = write(dir.path(), "v.txt", &text);
            let header = prepare(&[path], &CorpusOptions::default(), &out).unwrap();
            assert_eq!(header.width, width, "{size}");
            let prepared = Prepared::open(&out).unwrap();
            let tokens = prepared.tokens();
            assert_eq!(tokens.len(), size);
            assert_eq!(tokens.slice(size - 2, 2).to_vec(), vec![size as i64 - 2, size as i64 - 1]);
        }
    }

    #[test]
    fn bad_sources_and_damaged_files_are_refused_with_reasons() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "good.txt", "ok");
        let bad_path = dir.path().join("bad.txt");
        std::fs::write(&bad_path, b"ab\xc3\x28cd").unwrap();
        let out = dir.path().join("x.tokens");
        let err = prepare(&[good.clone(), bad_path], &CorpusOptions::default(), &out).unwrap_err().to_string();
        assert!(err.contains("bad.txt") && err.contains("byte offset 2"), "{err}");
        assert!(!out.exists(), "nothing half-written");
        let empty = write(dir.path(), "empty.txt", "");
        assert!(matches!(prepare(&[empty], &CorpusOptions::default(), &out), Err(Error::EmptyCorpus { .. })));

        prepare(&[good], &CorpusOptions::default(), &out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        let damaged = dir.path().join("d.tokens");
        std::fs::write(&damaged, &bytes[..bytes.len() - 1]).unwrap();
        assert!(Prepared::open(&damaged).err().unwrap().to_string().contains("truncated"));
        let mut newer = bytes.clone();
        newer[16..20].copy_from_slice(&(TOKENS_VERSION + 1).to_le_bytes());
        std::fs::write(&damaged, &newer).unwrap();
        assert!(Prepared::open(&damaged).err().unwrap().to_string().contains("newer than this charrnn"));
        // "ok": tokens 0 ('k') and 1 ('o') swapped into "ko" stay within the vocabulary; the checksum tells.
        let n = bytes.len();
        let mut swapped = bytes.clone();
        swapped.swap(n - 2, n - 1);
        std::fs::write(&damaged, &swapped).unwrap();
        let err = Prepared::open(&damaged).err().unwrap().to_string();
        assert!(err.contains("do not match the checksum in its header"), "{err}");
        // A file without a checksum (prepared before there was one) is read unchecked, its tokens still held to
        // its vocabulary.
        let header = Prepared::header_of(&out).unwrap();
        let unchecked = PreparedHeader { checksum: None, ..header };
        let mut old = head_bytes(&unchecked);
        old.extend_from_slice(&swapped[n - 2..]);
        std::fs::write(&damaged, &old).unwrap();
        assert_eq!(Prepared::open(&damaged).unwrap().tokens().to_vec(), vec![0, 1]);
        *old.last_mut().unwrap() = 200;
        std::fs::write(&damaged, &old).unwrap();
        assert!(Prepared::open(&damaged).err().unwrap().to_string().contains("outside its vocabulary"));
        std::fs::write(&damaged, b"plain text, not tokens").unwrap();
        assert!(Prepared::open(&damaged).err().unwrap().to_string().contains("not a charrnn token file"));
    }
}
