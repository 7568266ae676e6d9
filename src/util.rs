//! Small things every layer uses: atomic file writes and the FNV-1a fingerprint.
use crate::error::{Error, Result};
use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Writes a file through `write` (given a temporary path in the same folder), fsyncs it and renames it
/// to `path`, so `path` is either the old file or the whole new one. The temporary is removed on failure.
pub(crate) fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = write(&tmp)
        .and_then(|_| File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e)))
        .and_then(|_| {
            crash_point("a temporary file written, before its rename");
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    // The user named `path`: an error names it, not the temporary.
    result.map_err(|e| match e {
        Error::Io { path: p, reason } if p == tmp => Error::Io { path: path.to_path_buf(), reason },
        e => e,
    })
}

/// The process that writes the temporary file named `name` by [`write_atomic`] (`.<file>.<pid>.tmp`), if it
/// is one.
pub(crate) fn atomic_temporary_owner(name: &str) -> Option<u32> {
    let (file, pid) = name.strip_prefix('.')?.strip_suffix(".tmp")?.rsplit_once('.')?;
    (!file.is_empty()).then_some(())?;
    pid.parse().ok()
}

/// Removes the entries of `dir` that `owner` says a process wrote as temporaries (files or folders), when
/// that process is no longer running: it was killed before it could finish or remove them.
pub(crate) fn sweep_dead_temporaries(dir: &Path, owner: impl Fn(&str) -> Option<u32>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(&owner) else { continue };
        if pid != std::process::id() && !process_alive(pid) {
            let path = entry.path();
            let _ = match entry.file_type() {
                Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
                _ => std::fs::remove_file(&path),
            };
        }
    }
}

/// Replaces `path` by `bytes` atomically (temporary file in the same folder, fsync, rename).
pub(crate) fn write_bytes_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        let mut f = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(tmp, e))
    })
}

/// Makes a folder's entries (a rename into it) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// A point where a save may be cut short by a crash (a kill, a power cut). In the unit tests, [`faults`]
/// stops the process's work there as a crash would (a panic, which skips every clean-up after it); in the
/// program it does nothing.
#[cfg(not(test))]
#[inline(always)]
pub(crate) fn crash_point(_phase: &'static str) {}

#[cfg(test)]
pub(crate) use faults::crash_point;

/// Deterministic fault injection for the tests: a crash at the n-th crash point a thread reaches.
#[cfg(test)]
pub(crate) mod faults {
    use std::cell::Cell;

    thread_local! {
        /// Crash points still to pass before the crash (`None`: no crash).
        static LEFT: Cell<Option<usize>> = const { Cell::new(None) };
        /// The phase of the last crash point passed or crashed at.
        static LAST: Cell<&'static str> = const { Cell::new("") };
    }

    /// A crash point: panics ("crashes") when it is the one [`crash_after`] chose.
    pub(crate) fn crash_point(phase: &'static str) {
        LAST.set(phase);
        match LEFT.get() {
            Some(0) => {
                LEFT.set(None);
                panic!("simulated crash: {phase}");
            }
            Some(n) => LEFT.set(Some(n - 1)),
            None => {}
        }
    }

    /// Runs `work` with a crash at the crash point after `passed` others (`None`: no crash). Returns whether
    /// it crashed, and at which phase.
    pub(crate) fn crash_after<T>(passed: Option<usize>, work: impl FnOnce() -> T) -> Result<T, &'static str> {
        LEFT.set(passed);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
        LEFT.set(None);
        match outcome {
            Ok(value) => Ok(value),
            Err(payload) => {
                if !payload.downcast_ref::<String>().is_some_and(|m| m.starts_with("simulated crash")) {
                    std::panic::resume_unwind(payload);
                }
                Err(LAST.get())
            }
        }
    }
}

/// The 64-bit FNV-1a hash, fed piece by piece: the fingerprint of texts, weight files and lock paths, written
/// as `fnv1a64:` and 16 hex digits.
pub(crate) struct Fnv1a64(u64);

impl Default for Fnv1a64 {
    fn default() -> Self {
        Fnv1a64(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a64 {
    /// Adds the next bytes.
    pub(crate) fn add_bytes(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Adds the next character (its UTF-8 bytes).
    pub(crate) fn add(&mut self, c: char) {
        self.add_bytes(c.encode_utf8(&mut [0u8; 4]).as_bytes());
    }

    /// The hash of what was added so far, as `fnv1a64:` and 16 hex digits.
    pub(crate) fn finish(&self) -> String {
        format!("fnv1a64:{:016x}", self.0)
    }

    /// The hash of `bytes` alone.
    pub(crate) fn of(bytes: &[u8]) -> String {
        let mut h = Fnv1a64::default();
        h.add_bytes(bytes);
        h.finish()
    }
}

/// A checksum of a byte stream fed in pieces of any length: 64-bit FNV-1a over its little-endian 64-bit
/// words (the last one padded with zeros), eight times fewer multiplications than over bytes; written as
/// `fnv1a64w:` and 16 hex digits.
#[derive(Default)]
pub(crate) struct WordChecksum {
    hash: Fnv1a64Word,
    /// Bytes of a word not yet complete.
    pending: Vec<u8>,
}

/// The state of [`WordChecksum`]'s hash.
struct Fnv1a64Word(u64);

impl Default for Fnv1a64Word {
    fn default() -> Self {
        Fnv1a64Word(0xcbf2_9ce4_8422_2325)
    }
}

impl WordChecksum {
    /// Adds the next bytes.
    pub(crate) fn add(&mut self, mut bytes: &[u8]) {
        if !self.pending.is_empty() {
            let take = (8 - self.pending.len()).min(bytes.len());
            self.pending.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.pending.len() < 8 {
                return;
            }
            let word = u64::from_le_bytes(self.pending[..8].try_into().expect("8 bytes"));
            self.mix(word);
            self.pending.clear();
        }
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        self.pending.extend_from_slice(words.remainder());
    }

    fn mix(&mut self, word: u64) {
        self.hash.0 = (self.hash.0 ^ word).wrapping_mul(0x0000_0100_0000_01b3);
    }

    /// The checksum of what was added.
    pub(crate) fn finish(mut self) -> String {
        if !self.pending.is_empty() {
            let mut word = [0u8; 8];
            word[..self.pending.len()].copy_from_slice(&self.pending);
            self.mix(u64::from_le_bytes(word));
        }
        format!("fnv1a64w:{:016x}", self.hash.0)
    }
}

extern "C" {
    fn kill(pid: i32, signal: i32) -> i32;
}

/// Whether the process `pid` is running (a process that left a temporary file behind and is gone cannot
/// finish it).
pub(crate) fn process_alive(pid: u32) -> bool {
    // Signal 0 checks that the process exists (EPERM: it does, and belongs to someone else).
    // SAFETY: kill with signal 0 sends nothing.
    i32::try_from(pid)
        .is_ok_and(|pid| unsafe { kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_word_checksum_does_not_depend_on_how_the_bytes_are_cut() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
        let whole = {
            let mut c = WordChecksum::default();
            c.add(&bytes);
            c.finish()
        };
        for piece in [1, 3, 7, 8, 13, 999] {
            let mut c = WordChecksum::default();
            bytes.chunks(piece).for_each(|p| c.add(p));
            assert_eq!(c.finish(), whole, "pieces of {piece}");
        }
        // Worked by hand: one word, 0x0807060504030201, xor'd into the offset basis and multiplied.
        let mut c = WordChecksum::default();
        c.add(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let expected = (0xcbf2_9ce4_8422_2325u64 ^ 0x0807_0605_0403_0201).wrapping_mul(0x0000_0100_0000_01b3);
        assert_eq!(c.finish(), format!("fnv1a64w:{expected:016x}"));
        let mut changed = bytes.clone();
        changed[500] ^= 1;
        let mut c = WordChecksum::default();
        c.add(&changed);
        assert_ne!(c.finish(), whole, "one changed bit changes it");
    }

    #[test]
    fn temporaries_of_finished_processes_are_swept_and_others_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let live = std::process::id();
        let names =
            [format!(".model.json.{gone}.tmp"), format!(".model.json.{live}.tmp"), "notes.txt".into(), ".x.tmp".into()];
        for name in &names {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        std::fs::create_dir(dir.path().join(format!(".w.{gone}.tmp"))).unwrap();
        sweep_dead_temporaries(dir.path(), atomic_temporary_owner);
        let mut left: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        let mut expected = vec![format!(".model.json.{live}.tmp"), ".x.tmp".to_string(), "notes.txt".to_string()];
        expected.sort();
        assert_eq!(left, expected);
    }

    #[test]
    fn this_process_is_alive_and_a_finished_one_is_not() {
        assert!(process_alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!process_alive(pid));
    }

    #[test]
    fn fnv1a_matches_the_published_test_vectors() {
        // From the FNV reference (Fowler, Noll, Vo: draft-eastlake-fnv, FNV-1a 64-bit test vectors).
        assert_eq!(Fnv1a64::of(b""), "fnv1a64:cbf29ce484222325");
        assert_eq!(Fnv1a64::of(b"a"), "fnv1a64:af63dc4c8601ec8c");
        assert_eq!(Fnv1a64::of(b"foobar"), "fnv1a64:85944171f73967e8");
        let mut pieces = Fnv1a64::default();
        pieces.add_bytes(b"foo");
        pieces.add('b');
        pieces.add_bytes(b"ar");
        assert_eq!(pieces.finish(), Fnv1a64::of(b"foobar"), "fed piece by piece");
    }

    #[test]
    fn an_atomic_write_replaces_the_whole_file_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.txt");
        write_bytes_atomic(&path, b"old").unwrap();
        let failed = write_atomic(&path, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::config("test", "fails half-way"))
        });
        assert!(failed.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"old", "a failed write leaves the old file");
        write_bytes_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("f.txt")], "no temporary is left");
    }
}
