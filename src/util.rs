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

#[cfg(test)]
mod tests {
    use super::*;

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
