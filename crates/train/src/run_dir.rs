//! A run directory held by one trainer at a time.
//!
//! ```text
//! <run>/
//!     .lock           the exclusive lock; holds the PID of the trainer that has it
//!     config.json     the resolved configuration
//!     metrics.jsonl   one line per `log_every` steps
//!     loss_curve.png  drawn from metrics.jsonl by the command line
//!     checkpoints/    see [`crate::checkpoint`]
//!     samples/        reverse-process strips and grids
//!     tb/             TensorBoard event files (see [`crate::tensorboard`])
//! ```
//!
//! [`RunDir::lock`] takes an exclusive `flock(2)` on `.lock` before anything else is written.
//! The kernel releases it when the process ends, however it ends (`kill -9` included), so a lock
//! is never stale; the file itself stays behind (deleting a lock file races with the next
//! locker). A second trainer on the same directory fails at once, naming the directory and the
//! holder's PID. Readers (`ddpm sample`, `ddpm eval`) take no lock: checkpoints appear by an
//! atomic rename, so they always see complete ones.

use std::fs;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::TrainError;

/// The lock file inside a run directory.
pub const LOCK_FILE: &str = ".lock";

/// The files and folders a run writes; a fresh run refuses a directory that holds any of them.
pub const RUN_FILES: [&str; 6] = [
    "config.json",
    "metrics.jsonl",
    "loss_curve.png",
    crate::checkpoint::CHECKPOINTS_DIR,
    "samples",
    crate::tensorboard::TB_DIR,
];

/// A run directory whose exclusive lock this process holds (released on drop), or, on the
/// ranks other than 0 of a data-parallel run, one that rank 0 holds ([`RunDir::follow`]).
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    /// Holding the open file is holding the lock; `None` for a follower.
    lock: Option<fs::File>,
}

impl RunDir {
    /// Creates `path` if needed and takes its lock, then writes this process's PID into the
    /// lock file.
    ///
    /// # Errors
    /// [`TrainError::Locked`] when another process holds the lock (with its PID when the lock
    /// file names one); [`TrainError::RunDirNotADirectory`] when `path` is a file;
    /// [`TrainError::LockNotAFile`] when its lock file is a directory;
    /// [`TrainError::Io`] when the directory or the lock file cannot be made.
    pub fn lock(path: &Path) -> Result<Self, TrainError> {
        if path.exists() && !path.is_dir() {
            return Err(TrainError::RunDirNotADirectory {
                path: path.to_path_buf(),
            });
        }
        fs::create_dir_all(path).map_err(|e| TrainError::io(path, e))?;
        let lock_path = path.join(LOCK_FILE);
        if lock_path.is_dir() {
            return Err(TrainError::LockNotAFile { path: lock_path });
        }
        // Not truncated on open: until we hold the lock, the PID in it is the holder's.
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| TrainError::io(&lock_path, e))?;
        if !try_lock_exclusive(&file).map_err(|e| TrainError::io(&lock_path, e))? {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            return Err(TrainError::Locked {
                dir: path.to_path_buf(),
                pid: text.trim().parse().ok(),
            });
        }
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| writeln!(file, "{}", std::process::id()))
            .map_err(|e| TrainError::io(&lock_path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            lock: Some(file),
        })
    }

    /// The run directory as a rank other than 0 of a data-parallel run sees it: rank 0 holds
    /// the lock and writes every file; a trainer given this reads checkpoints (to resume) and
    /// writes nothing. Takes no lock and touches nothing.
    pub fn follow(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            lock: None,
        }
    }

    /// Whether this process holds the directory's lock (false for [`RunDir::follow`]).
    pub fn is_locked(&self) -> bool {
        self.lock.is_some()
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The [`RUN_FILES`] present in the directory.
    pub fn run_files(&self) -> Vec<PathBuf> {
        RUN_FILES
            .iter()
            .map(|name| self.path.join(name))
            .filter(|p| p.symlink_metadata().is_ok())
            .collect()
    }

    /// Checks that the directory holds none of the [`RUN_FILES`], as a fresh run needs.
    ///
    /// # Errors
    /// [`TrainError::RunExists`] listing the files found.
    pub fn ensure_fresh(&self) -> Result<(), TrainError> {
        let files = self.run_files();
        if files.is_empty() {
            return Ok(());
        }
        Err(TrainError::RunExists {
            dir: self.path.clone(),
            files: files
                .iter()
                .filter_map(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .collect(),
        })
    }

    /// Deletes the [`RUN_FILES`] (what `ddpm train --overwrite` does); other files stay.
    ///
    /// # Errors
    /// [`TrainError::Io`] naming the first file that cannot be removed.
    pub fn clear(&self) -> Result<(), TrainError> {
        for path in self.run_files() {
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| TrainError::io(&path, e))?;
        }
        Ok(())
    }
}

/// `flock(fd, LOCK_EX | LOCK_NB)`: true when taken, false when another open file holds it.
#[cfg(unix)]
fn try_lock_exclusive(file: &fs::File) -> std::io::Result<bool> {
    use std::os::unix::io::AsRawFd;
    loop {
        // SAFETY: flock only reads the descriptor, which `file` keeps open for the call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let err = std::io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(err),
        }
    }
}

/// Elsewhere there is no lock: training works, but nothing stops a second trainer.
#[cfg(not(unix))]
fn try_lock_exclusive(_file: &fs::File) -> std::io::Result<bool> {
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_fails_naming_the_holder_and_the_first_is_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path().join("run");
        let first = RunDir::lock(&run).unwrap();
        // flock locks belong to open files, so a second open in this process conflicts too.
        let err = RunDir::lock(&run).unwrap_err();
        match &err {
            TrainError::Locked { dir, pid } => {
                assert_eq!(dir, &run);
                assert_eq!(*pid, Some(std::process::id()));
            }
            other => panic!("{other}"),
        }
        let text = err.to_string();
        assert!(
            text.contains(&run.display().to_string())
                && text.contains(&format!("PID {}", std::process::id())),
            "{text}"
        );
        drop(first);
        let again = RunDir::lock(&run).unwrap();
        assert!(again.run_files().is_empty(), "the lock file is no run file");
    }

    #[test]
    fn run_files_are_listed_and_cleared_leaving_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::lock(dir.path()).unwrap();
        fs::write(dir.path().join("metrics.jsonl"), "{}\n").unwrap();
        fs::create_dir_all(dir.path().join("checkpoints/step-00000001")).unwrap();
        fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let names: Vec<String> = run
            .run_files()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["metrics.jsonl", "checkpoints"]);
        run.clear().unwrap();
        assert!(run.run_files().is_empty());
        assert!(dir.path().join("notes.txt").exists());
    }
}
