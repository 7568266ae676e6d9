//! One writer per model folder: an exclusive advisory lock, held for a whole run and released by the
//! operating system when the process ends (a crash leaves no stale lock). The lock file lives in the
//! system's temporary folder, named after the model folder's absolute path, so that a model folder and its
//! parent hold nothing but what training writes.
use crate::error::{Error, Result};
use crate::util::Fnv1a64;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock on a model folder; dropping it releases the folder.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

/// The lock file of model folder `dir` (which may not exist yet).
fn lock_path(dir: &Path) -> PathBuf {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    // Absolute even when the folder (or its parent) does not exist yet: two runs into `runs/x` from different
    // working folders are different folders.
    let parent =
        std::fs::canonicalize(parent).or_else(|_| std::path::absolute(parent)).unwrap_or_else(|_| parent.to_path_buf());
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let key = Fnv1a64::of(parent.join(name).display().to_string().as_bytes());
    std::env::temp_dir().join("charrnn-locks").join(format!("{}.lock", &key[8..]))
}

impl FolderLock {
    /// Takes the folder `dir` for this process, or says which process is writing it.
    pub fn acquire(dir: &Path) -> Result<FolderLock> {
        let path = lock_path(dir);
        let folder = path.parent().expect("a lock file has a folder");
        std::fs::create_dir_all(folder).map_err(|e| Error::io(folder, e))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        match file.try_lock() {
            Ok(()) => {
                // Which process holds it, for the message another one will print.
                let _ = file.set_len(0).and_then(|_| write!(file, "{}", std::process::id()));
                Ok(FolderLock { _file: file })
            }
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.rewind().and_then(|_| file.read_to_string(&mut pid));
                let holder = if pid.trim().is_empty() {
                    "another process".to_string()
                } else {
                    format!("process {}", pid.trim())
                };
                let reason = format!(
                    "{} is being written by another charrnn run ({holder}); wait for it to end or stop it, or choose another --out",
                    dir.display()
                );
                Err(Error::config("--out", reason))
            }
            Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
        }
    }
}

/// The folder `dir`'s canonical path, when it exists.
fn canonical(dir: &Path) -> Option<PathBuf> {
    std::fs::canonicalize(dir).ok()
}

impl FolderLock {
    /// Takes the model folder `out` for a new run: it must be a folder (or not exist yet), and hold nothing
    /// unless the run may replace it (`force`) or starts from the model in it (`source`). Checked under the
    /// folder's lock, so that no other run can fill it in between.
    pub(crate) fn claim_for_new_run(out: &Path, force: bool, source: Option<&Path>) -> Result<FolderLock> {
        if out.exists() && !out.is_dir() {
            return Err(Error::config("--out", format!("{} exists and is not a folder", out.display())));
        }
        let lock = FolderLock::acquire(out)?;
        let occupied = std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some());
        let into_source = source.is_some_and(|src| canonical(src) == canonical(out));
        if occupied && !force && !into_source {
            let reason = format!(
                "{} already holds files; continue its run with `charrnn train --resume {0}`, replace it with --force, or choose another --out",
                out.display()
            );
            return Err(Error::config("--out", reason));
        }
        Ok(lock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_has_one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("m");
        let first = FolderLock::acquire(&out).unwrap();
        let err = FolderLock::acquire(&out).unwrap_err().to_string();
        assert!(
            err.contains("being written by another charrnn run") && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        // Another folder is free, so is a folder of the same relative name elsewhere, and the folder is free
        // again once the lock is dropped.
        FolderLock::acquire(&dir.path().join("other")).unwrap();
        assert_ne!(lock_path(Path::new("runs/x")), lock_path(&dir.path().join("runs/x")));
        drop(first);
        FolderLock::acquire(&out).unwrap();
    }
}
