//! One writer per model folder: an exclusive advisory lock, held for a whole run and released by the
//! operating system when the process ends (a crash leaves no stale lock). The lock file is named after the
//! folder's canonical path (a new run's folder is created first), so that relative paths, `.`, `..` and
//! symbolic links to the folder or to any folder above it all name the same lock. It lives in a folder
//! private to the user, `$XDG_RUNTIME_DIR/charrnn-locks` or else `<temporary folder>/charrnn-locks-<uid>`
//! (mode 0700), so that a model folder and its parent hold nothing but what training writes, and no other
//! user can block or take a lock.
use crate::error::{Error, Result};
use crate::util::Fnv1a64;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The lock on a model folder; dropping it releases the folder (and removes the folders this lock created
/// again, if they are still empty: a run that failed before its first checkpoint leaves nothing).
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
    /// The folders created for the run, the model folder first, then those above it that were missing.
    created: Vec<PathBuf>,
}

impl Drop for FolderLock {
    fn drop(&mut self) {
        remove_if_empty(&self.created);
    }
}

/// Removes `dirs`, in order, as long as each is empty.
fn remove_if_empty(dirs: &[PathBuf]) {
    for dir in dirs {
        // Fails, as it should, unless the folder is empty.
        if std::fs::remove_dir(dir).is_err() {
            return;
        }
    }
}

/// Creates the folder `dir` and those above it that are missing; returns the ones it created, `dir` first.
fn create_folders(dir: &Path) -> Result<Vec<PathBuf>> {
    let missing: Vec<PathBuf> =
        dir.ancestors().take_while(|a| !a.as_os_str().is_empty() && !a.exists()).map(Path::to_path_buf).collect();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    Ok(missing)
}

extern "C" {
    fn getuid() -> u32;
}

/// The user's folder of lock files, created private (0700) if need be, and refused if another user owns it
/// or others may write in it.
fn locks_dir() -> Result<PathBuf> {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { getuid() };
    let runtime = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|d| d.is_absolute());
    let dir = match runtime {
        Some(runtime) => runtime.join("charrnn-locks"),
        None => std::env::temp_dir().join(format!("charrnn-locks-{uid}")),
    };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(|e| Error::io(&dir, e))?;
    let meta = std::fs::symlink_metadata(&dir).map_err(|e| Error::io(&dir, e))?;
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o022 != 0 {
        let reason = format!(
            "{} holds the locks of model folders but is not a folder of yours that only you can write; remove it, or set XDG_RUNTIME_DIR",
            dir.display()
        );
        return Err(Error::config("lock", reason));
    }
    Ok(dir)
}

/// The lock file of the model folder `dir`, which exists.
fn lock_path(dir: &Path) -> Result<PathBuf> {
    let canonical = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    let key = Fnv1a64::of(canonical.as_os_str().as_encoded_bytes());
    Ok(locks_dir()?.join(format!("{}.lock", &key[8..])))
}

/// The open lock file of `dir`, and whether this process now holds it; `Err(holder)`: another process holds
/// it (`holder` names it as well as the file says).
fn try_lock(dir: &Path) -> Result<std::result::Result<File, String>> {
    let path = lock_path(dir)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(Ok(file)),
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.rewind().and_then(|_| file.read_to_string(&mut pid));
            Ok(Err(match pid.trim() {
                "" => "another process".to_string(),
                pid => format!("process {pid}"),
            }))
        }
        Err(TryLockError::Error(e)) => Err(Error::io(&path, e)),
    }
}

/// The other charrnn process writing the model folder `dir` now, named ("process N"), if one is.
pub(crate) fn writer_of(dir: &Path) -> Option<String> {
    if !dir.is_dir() {
        return None;
    }
    // Taking the lock for a moment, when it is free, leaves it free again at once (the file is closed).
    try_lock(dir).ok()?.err().filter(|holder| *holder != format!("process {}", std::process::id()))
}

impl FolderLock {
    /// Takes the folder `dir` (which exists) for this process, or says which process is writing it.
    pub fn acquire(dir: &Path) -> Result<FolderLock> {
        match try_lock(dir)? {
            Ok(mut file) => {
                // Which process holds it, for the message another one will print.
                let _ = file.set_len(0).and_then(|_| write!(file, "{}", std::process::id()));
                Ok(FolderLock { _file: file, created: Vec::new() })
            }
            Err(holder) => {
                let reason = format!(
                    "{} is being written by another charrnn run ({holder}); wait for it to end or stop it, or choose another --out",
                    dir.display()
                );
                Err(Error::config("--out", reason))
            }
        }
    }

    /// Takes the model folder `out` for a new run, creating it if need be: it must be a folder, and hold
    /// nothing unless the run may replace it (`force`) or starts from the model in it (`source`). Checked
    /// under the folder's lock, so that no other run can fill it in between.
    pub(crate) fn claim_for_new_run(out: &Path, force: bool, source: Option<&Path>) -> Result<FolderLock> {
        if out.exists() && !out.is_dir() {
            return Err(Error::config("--out", format!("{} exists and is not a folder", out.display())));
        }
        let created = create_folders(out)?;
        // Removed when the lock goes, if the run never saved into them; or now, if the lock was refused.
        let mut lock = FolderLock::acquire(out).inspect_err(|_| remove_if_empty(&created))?;
        lock.created = created;
        let occupied = std::fs::read_dir(out).is_ok_and(|mut entries| entries.next().is_some());
        let canonical = |dir: &Path| std::fs::canonicalize(dir).ok();
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
    fn a_folder_has_one_writer_at_a_time_whatever_it_is_called() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("real").join("m");
        std::fs::create_dir_all(&out).unwrap();
        let first = FolderLock::acquire(&out).unwrap();
        let err = FolderLock::acquire(&out).unwrap_err().to_string();
        assert!(
            err.contains("being written by another charrnn run") && err.contains(&std::process::id().to_string()),
            "{err}"
        );
        // (This process holds it: another one would be named.)
        assert_eq!(writer_of(&out), None);
        // The same folder through a link to it, a link to the folder above it, and `..`.
        std::os::unix::fs::symlink(&out, dir.path().join("mlink")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("rlink")).unwrap();
        for other_name in [dir.path().join("mlink"), dir.path().join("rlink/m"), out.join("../m")] {
            assert!(FolderLock::acquire(&other_name).is_err(), "{}", other_name.display());
        }
        // Another folder is free, and the folder is free again once the lock is dropped.
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        FolderLock::acquire(&other).unwrap();
        drop(first);
        assert_eq!(writer_of(&out), None);
        FolderLock::acquire(&dir.path().join("mlink")).unwrap();
    }

    #[test]
    fn the_lock_folder_is_private_to_the_user() {
        let dir = locks_dir().unwrap();
        let meta = std::fs::metadata(&dir).unwrap();
        assert_eq!(meta.mode() & 0o077, 0, "{}: {:o}", dir.display(), meta.mode());
    }

    #[test]
    fn a_new_run_creates_its_folder_and_leaves_nothing_if_it_never_saves() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("runs/new");
        let lock = FolderLock::claim_for_new_run(&out, false, None).unwrap();
        assert!(out.is_dir());
        drop(lock);
        assert!(!dir.path().join("runs").exists(), "the empty folders the run made are removed");
        let lock = FolderLock::claim_for_new_run(&out, false, None).unwrap();
        std::fs::write(out.join("model.json"), b"{}").unwrap();
        drop(lock);
        assert!(out.join("model.json").exists(), "a folder the run saved into stays");
        let err = FolderLock::claim_for_new_run(&out, false, None).unwrap_err().to_string();
        assert!(err.contains("already holds files"), "{err}");
    }
}
