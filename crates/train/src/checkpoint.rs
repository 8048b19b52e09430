//! Checkpoints: a directory per step, written atomically, the last K kept.
//!
//! ```text
//! <run>/checkpoints/step-00001000/
//!     model.safetensors       live weights (diffusers key names)
//!     ema.safetensors         averaged weights
//!     optimizer.safetensors   Adam moments, `exp_avg.<param>` and `exp_avg_sq.<param>`
//!     state.json              step, epoch, data position, seed, counters, the resolved config,
//!                             and the XXH3-128 digest of every other file ([`crate::digest`])
//! ```
//!
//! A checkpoint is first written to `step-N.tmp`, every file fsynced, then renamed into place
//! and the parent directory fsynced: a crash at any moment leaves either the old set of
//! checkpoints or the new one, never a half-written directory under a final name. A step written
//! a second time (after a resume from an earlier checkpoint) swaps its directory in atomically,
//! so even then no moment is without a complete `step-N/`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{nn::VarStore, Device, Tensor};

use crate::TrainError;

pub use sample::layout::{
    dir_name, latest, list, CHECKPOINTS_DIR, EMA_FILE, FORMAT_VERSION, MODEL_FILE, STATE_FILE,
};

/// Everything but the tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointState {
    /// [`FORMAT_VERSION`] at writing.
    pub format_version: u32,
    /// Optimizer steps taken (the next step's 0-based index).
    pub step: u64,
    /// The epoch the next batch belongs to.
    pub epoch: u64,
    /// The index of the next batch within that epoch.
    pub batch_in_epoch: u64,
    /// The run's seed. Every step reseeds libtorch from (seed, step), so the seed and the step
    /// are the complete random state.
    pub seed: u64,
    /// EMA updates so far.
    pub ema_updates: u64,
    /// Steps skipped for a non-finite loss or gradient so far.
    pub skipped_steps: u64,
    /// The resolved training configuration.
    pub config: serde_json::Value,
    /// The number of data-parallel ranks that trained up to this checkpoint (1 in checkpoints
    /// written before data-parallel training existed).
    #[serde(default = "one")]
    pub world_size: usize,
    /// A class-conditional run's class names, by label, from its dataset (what `ddpm sample
    /// --class all` labels its rows with); absent for unconditional runs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub class_names: Vec<String>,
    /// An fp16 run's dynamic loss scale at this step ([`crate::scaler`]); absent for other
    /// precisions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<crate::scaler::LossScaleState>,
    /// The digest of every other file of the checkpoint, by file name
    /// ([`crate::digest::file_digest`]), filled in when it is written; empty in checkpoints
    /// written before digests existed, which load unverified.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub digests: BTreeMap<String, String>,
    /// `objective.timestep_sampling = "importance"`: the last losses seen at each t, oldest
    /// first ([`crate::timesteps::ImportanceSampler`]), so that a resumed run draws as the
    /// uninterrupted one; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_history: Option<Vec<Vec<f64>>>,
}

fn one() -> usize {
    1
}

/// The optimizer moments.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";

fn io_err(path: &Path, err: std::io::Error) -> TrainError {
    TrainError::io(path, err)
}

fn bad_file(path: &Path, message: impl Into<String>) -> TrainError {
    TrainError::Checkpoint {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// The named tensors of a var store, in name order.
pub fn named_tensors(vs: &VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

fn all_finite(named: &[(String, Tensor)]) -> Result<(), TrainError> {
    match model::first_non_finite(named.iter().map(|(n, t)| (n, t))) {
        None => Ok(()),
        Some(name) => Err(TrainError::NonFinite(format!(
            "weight `{name}` is not finite; refusing to write it"
        ))),
    }
}

/// Writes named tensors as safetensors and fsyncs the file; `root` is the checkpoints folder,
/// which a full-disk error names the newest checkpoint of.
fn write_tensors(path: &Path, named: &[(String, Tensor)], root: &Path) -> Result<(), TrainError> {
    model::save_named_safetensors(named, path).map_err(|e| match e {
        model::ModelError::WriteIo { source, .. } => TrainError::write(path, source, root),
        other => bad_file(path, format!("cannot write: {other}")),
    })?;
    fsync(path, root)
}

fn fsync(path: &Path, root: &Path) -> Result<(), TrainError> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| TrainError::write(path, e, root))
}

/// What goes into one checkpoint.
pub struct CheckpointContents<'a> {
    /// The JSON state.
    pub state: &'a CheckpointState,
    /// Live weights.
    pub model: &'a VarStore,
    /// Averaged weights.
    pub ema: &'a VarStore,
    /// Optimizer moments.
    pub optimizer: Vec<(String, Tensor)>,
}

impl CheckpointContents<'_> {
    /// The tensors as they are, without a copy: for a write that ends before training goes on.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            state: self.state.clone(),
            model: named_tensors(self.model),
            ema: named_tensors(self.ema),
            optimizer: self
                .optimizer
                .iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect(),
        }
    }

    /// A copy in host memory that training does not touch, for a write on another thread
    /// ([`crate::writer`]). From CUDA the copies go to pinned memory without blocking, and one
    /// synchronisation waits for all of them.
    pub fn to_host(&self) -> Snapshot {
        let shared = self.snapshot();
        let copy = |named: Vec<(String, Tensor)>| -> Vec<(String, Tensor)> {
            named
                .into_iter()
                .map(|(n, t)| {
                    // Non-blocking copies from CUDA land in pinned host memory (ATen's `_to_copy`).
                    let host = t.to_device_(Device::Cpu, t.kind(), t.device().is_cuda(), true);
                    (n, host)
                })
                .collect()
        };
        let device = shared.model.first().map(|(_, t)| t.device());
        let snapshot = tch::no_grad(|| Snapshot {
            state: shared.state,
            model: copy(shared.model),
            ema: copy(shared.ema),
            optimizer: copy(shared.optimizer),
        });
        if let Some(Device::Cuda(index)) = device {
            tch::Cuda::synchronize(index as i64);
        }
        snapshot
    }
}

/// A checkpoint's contents by value: its state and its named tensors.
pub struct Snapshot {
    /// The JSON state (its `digests` are filled in when it is written).
    pub state: CheckpointState,
    /// Live weights, in name order.
    pub model: Vec<(String, Tensor)>,
    /// Averaged weights, in name order.
    pub ema: Vec<(String, Tensor)>,
    /// Optimizer moments.
    pub optimizer: Vec<(String, Tensor)>,
}

/// Writes a checkpoint for `contents.state.step` under `root` atomically, then deletes all but
/// the newest `keep_last` (at least 1). Returns the new directory.
///
/// # Errors
/// [`TrainError::NonFinite`] when a weight is NaN or infinite (nothing is written);
/// [`TrainError::DiskFull`] when the disk fills up (the partial checkpoint is removed, the older
/// ones are untouched); [`TrainError::Io`] on other IO errors, naming the file.
pub fn save(
    root: &Path,
    contents: &CheckpointContents<'_>,
    keep_last: usize,
) -> Result<PathBuf, TrainError> {
    save_snapshot(root, &contents.snapshot(), keep_last)
}

/// [`save`] of a [`Snapshot`]: what the writer thread ([`crate::writer`]) runs.
///
/// # Errors
/// As [`save`].
pub fn save_snapshot(
    root: &Path,
    snapshot: &Snapshot,
    keep_last: usize,
) -> Result<PathBuf, TrainError> {
    let name = dir_name(snapshot.state.step);
    let final_dir = root.join(&name);
    let tmp = write_staged(root, &name, snapshot, &[])?;
    move_into_place(&tmp, &final_dir)?;
    fsync(root, root)?;
    prune(root, keep_last.max(1))?;
    Ok(final_dir)
}

/// How [`move_into_place`] put a directory in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moved {
    /// Nothing was there: one rename.
    Renamed,
    /// The old directory and the new one swapped names in one atomic rename, then the old one
    /// was deleted.
    Exchanged,
    /// The file system cannot swap: the old directory was deleted, then the new one renamed.
    Replaced,
}

/// Renames the staged directory `tmp` to `dir`. When `dir` exists (its step written again: a run
/// resumed from an earlier checkpoint reaches it once more), the two swap names in one rename
/// (Linux's `RENAME_EXCHANGE`) and the old one, now under `tmp`, is deleted, so that a crash at
/// any moment leaves a complete `dir`, old or new; a leftover `tmp` is replaced by the next
/// write. Where the file system cannot swap, the old `dir` is deleted first, as before.
fn move_into_place(tmp: &Path, dir: &Path) -> Result<Moved, TrainError> {
    if !dir.exists() {
        fs::rename(tmp, dir).map_err(|e| io_err(dir, e))?;
        return Ok(Moved::Renamed);
    }
    if exchange(tmp, dir).is_ok() {
        // `tmp` now holds the old directory.
        fs::remove_dir_all(tmp).map_err(|e| io_err(tmp, e))?;
        return Ok(Moved::Exchanged);
    }
    fs::remove_dir_all(dir).map_err(|e| io_err(dir, e))?;
    fs::rename(tmp, dir).map_err(|e| io_err(dir, e))?;
    Ok(Moved::Replaced)
}

/// Swaps the names of `a` and `b` atomically (`renameat2(…, RENAME_EXCHANGE)`).
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        CString::new(p.as_os_str().as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (a, b) = (c(a)?, c(b)?);
    // SAFETY: renameat2 through syscall(2) (glibc and musl alike) with two NUL-terminated paths
    // that outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            a.as_ptr(),
            libc::AT_FDCWD,
            b.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// No atomic swap off Linux: [`move_into_place`] replaces.
#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// Writes a checkpoint of `snapshot`, and `extra` files (name, bytes), into `root/<name>.tmp`
/// (replacing a leftover one), every file and the directory fsynced, and returns that
/// directory; the caller renames it into place. On failure the partial directory is removed.
///
/// # Errors
/// As [`save`].
pub(crate) fn write_staged(
    root: &Path,
    name: &str,
    snapshot: &Snapshot,
    extra: &[(&str, &[u8])],
) -> Result<PathBuf, TrainError> {
    all_finite(&snapshot.model)?;
    all_finite(&snapshot.ema)?;
    fs::create_dir_all(root).map_err(|e| TrainError::write(root, e, root))?;
    let tmp = root.join(format!("{name}.tmp"));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    fs::create_dir(&tmp).map_err(|e| TrainError::write(&tmp, e, root))?;
    let written = write_extra(&tmp, extra, root).and_then(|()| write_dir(&tmp, snapshot, root));
    if let Err(err) = written {
        // A half-written checkpoint is of no use, and on a full disk its space is needed.
        let _ = fs::remove_dir_all(&tmp);
        return Err(err);
    }
    Ok(tmp)
}

/// Writes and fsyncs `extra` files into `dir`.
fn write_extra(dir: &Path, extra: &[(&str, &[u8])], root: &Path) -> Result<(), TrainError> {
    for (name, bytes) in extra {
        let path = dir.join(name);
        let mut f = fs::File::create(&path).map_err(|e| TrainError::write(&path, e, root))?;
        f.write_all(bytes)
            .and_then(|_| f.sync_all())
            .map_err(|e| TrainError::write(&path, e, root))?;
    }
    Ok(())
}

/// Fsyncs a directory (after a rename inside it).
///
/// # Errors
/// [`TrainError::Io`] or [`TrainError::DiskFull`] naming it.
pub(crate) fn fsync_dir(dir: &Path) -> Result<(), TrainError> {
    fsync(dir, dir)
}

/// The files of a checkpoint, into the temporary directory `tmp`.
fn write_dir(tmp: &Path, snapshot: &Snapshot, root: &Path) -> Result<(), TrainError> {
    let pause = fault_injection_pause();
    write_tensors(&tmp.join(MODEL_FILE), &snapshot.model, root)?;
    pause();
    write_tensors(&tmp.join(EMA_FILE), &snapshot.ema, root)?;
    pause();
    write_tensors(&tmp.join(OPTIMIZER_FILE), &snapshot.optimizer, root)?;
    // Every file but state.json, which records their digests and is written last.
    let names: Vec<String> = fs::read_dir(tmp)
        .map_err(|e| io_err(tmp, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut state = snapshot.state.clone();
    state.digests = crate::digest::digest_files(tmp, &names)?;
    let state_path = tmp.join(STATE_FILE);
    let json = serde_json::to_vec_pretty(&state).expect("checkpoint states serialise");
    let mut f =
        fs::File::create(&state_path).map_err(|e| TrainError::write(&state_path, e, root))?;
    f.write_all(&json)
        .and_then(|_| f.sync_all())
        .map_err(|e| TrainError::write(&state_path, e, root))?;
    fsync(tmp, root)
}

/// Tests of crash safety set `DDPM_FAULT_CHECKPOINT_PAUSE_MS` to widen the window in which a
/// checkpoint is half-written, so that a `kill -9` lands inside it.
fn fault_injection_pause() -> impl Fn() {
    let ms = std::env::var("DDPM_FAULT_CHECKPOINT_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    move || {
        if let Some(ms) = ms {
            std::thread::sleep(std::time::Duration::from_millis(ms));
        }
    }
}

fn prune(root: &Path, keep_last: usize) -> Result<(), TrainError> {
    let all = list(root);
    let excess = all.len().saturating_sub(keep_last);
    for (_, dir) in all.into_iter().take(excess) {
        fs::remove_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    }
    Ok(())
}

/// Reads `state.json` of a checkpoint directory.
///
/// # Errors
/// [`TrainError::Io`] when it cannot be read, [`TrainError::Checkpoint`] when it is malformed;
/// both name the file.
pub fn read_state(dir: &Path) -> Result<CheckpointState, TrainError> {
    let path = dir.join(STATE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
    let state: CheckpointState =
        serde_json::from_str(&text).map_err(|e| bad_file(&path, e.to_string()))?;
    if state.format_version != FORMAT_VERSION {
        return Err(bad_file(
            &path,
            format!(
                "checkpoint format {} is not supported (this build reads {FORMAT_VERSION})",
                state.format_version
            ),
        ));
    }
    Ok(state)
}

/// Reads the named tensors of a safetensors file onto the CPU.
///
/// # Errors
/// [`TrainError::Io`] when it is missing, [`TrainError::Checkpoint`] when it is corrupt; both
/// name the file.
pub fn read_tensors(path: &Path) -> Result<Vec<(String, Tensor)>, TrainError> {
    if !path.exists() {
        return Err(io_err(
            path,
            std::io::Error::from(std::io::ErrorKind::NotFound),
        ));
    }
    Tensor::read_safetensors(path).map_err(|e| {
        bad_file(
            path,
            format!("corrupt or unreadable safetensors file ({e})"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    fn store(value: f32) -> VarStore {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = vs
            .root()
            .var_copy("w", &Tensor::from_slice(&[value, value]));
        vs
    }

    fn state(step: u64) -> CheckpointState {
        CheckpointState {
            format_version: FORMAT_VERSION,
            step,
            epoch: 0,
            batch_in_epoch: step,
            seed: 7,
            ema_updates: step,
            skipped_steps: 0,
            config: serde_json::json!({}),
            world_size: 1,
            class_names: Vec::new(),
            loss_scale: None,
            digests: BTreeMap::new(),
            timestep_history: None,
        }
    }

    #[test]
    fn keeps_the_newest_and_ignores_partial_directories() {
        let dir = tempfile::tempdir().unwrap();
        let (model, ema) = (store(1.0), store(2.0));
        for step in [10, 20, 30] {
            let contents = CheckpointContents {
                state: &state(step),
                model: &model,
                ema: &ema,
                optimizer: vec![],
            };
            save(dir.path(), &contents, 2).unwrap();
        }
        fs::create_dir(dir.path().join("step-00000040.tmp")).unwrap();
        let steps: Vec<u64> = list(dir.path()).into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![20, 30]);
        let newest = latest(dir.path()).unwrap();
        // What was saved, plus the digests `save` records of the three other files.
        let read = read_state(&newest).unwrap();
        assert_eq!(read.digests.len(), 3, "{:?}", read.digests);
        assert_eq!(
            CheckpointState {
                digests: Default::default(),
                ..read
            },
            state(30)
        );
        let ema_back = read_tensors(&newest.join(EMA_FILE)).unwrap();
        assert_eq!(ema_back[0].1.double_value(&[1]), 2.0);
    }

    /// Whether `dir` is on ext4 or tmpfs.
    fn swaps(dir: &Path) -> bool {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::ffi::OsStrExt;
            let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
            // SAFETY: statfs(2) into a zeroed struct, with a NUL-terminated path.
            let mut st: libc::statfs = unsafe { std::mem::zeroed() };
            if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
                return false;
            }
            const EXT4: i64 = 0xEF53;
            const TMPFS: i64 = 0x0102_1994;
            matches!(st.f_type as i64, EXT4 | TMPFS)
        }
        #[cfg(not(target_os = "linux"))]
        false
    }

    #[test]
    fn a_step_written_again_swaps_in_whole_and_leaves_no_staging_directory() {
        let root = tempfile::tempdir().unwrap();
        let (tmp, dir) = (
            root.path().join("step-00000002.tmp"),
            root.path().join("step-00000002"),
        );
        let stage = |marker: &str| {
            fs::create_dir(&tmp).unwrap();
            fs::write(tmp.join(marker), marker).unwrap();
        };
        stage("first");
        assert_eq!(move_into_place(&tmp, &dir).unwrap(), Moved::Renamed);
        stage("second");
        let moved = move_into_place(&tmp, &dir).unwrap();
        // ext4 and tmpfs swap (other file systems may fall back, so only these are held to it).
        if swaps(root.path()) {
            assert_eq!(moved, Moved::Exchanged);
        }
        assert!(!tmp.exists());
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["second"]);
    }

    #[test]
    fn refuses_to_write_nan_weights() {
        let dir = tempfile::tempdir().unwrap();
        let model = store(f32::NAN);
        let contents = CheckpointContents {
            state: &state(1),
            model: &model,
            ema: &store(0.0),
            optimizer: vec![],
        };
        let err = save(dir.path(), &contents, 1).unwrap_err();
        assert!(matches!(err, TrainError::NonFinite(_)), "{err}");
        assert!(list(dir.path()).is_empty());
    }

    #[test]
    fn corrupt_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.safetensors");
        fs::write(&path, b"not a safetensors file").unwrap();
        let err = read_tensors(&path).unwrap_err().to_string();
        assert!(
            err.contains("model.safetensors") && err.contains("corrupt"),
            "{err}"
        );
        let err = read_state(dir.path()).unwrap_err().to_string();
        assert!(err.contains("state.json"), "{err}");
    }
}
