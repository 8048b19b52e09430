//! LSUN's LMDB layout: a folder with `data.mdb` (and `lock.mdb`), the unnamed database holding
//! one encoded image per value (WebP as LSUN ships it; JPEG and PNG work too) under the image's
//! id as key. Read with `heed` (the LMDB C library), which reads databases written by Python's
//! `lmdb` package.
//!
//! Opening walks the keys once, in LMDB's (byte-sorted) order, which is also the order
//! ProgressiveGAN's `create_lsun` read them in; the keys are the index (about 44 bytes a record:
//! 130 MB for LSUN Bedroom's 3 million). Values are read on demand, each in its own short read
//! transaction, and copied out of the map.
//!
//! LMDB forbids opening one database twice in a process at the same time (and `heed` refuses
//! to), so opened environments are shared: a second [`LmdbRecords::open`] of the same folder
//! while the first is alive reuses its environment. This registry is the crate's one piece of
//! process-wide state, and it only ever holds weak references.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use heed::types::{Bytes, DecodeIgnore};
use heed::{CommitOrAbort, Database, EnvFlags, EnvOpenOptions};

use super::{Record, Records};
use crate::error::{DataError, Result};

/// The records of one LMDB database; see the [module docs](self).
pub struct LmdbRecords {
    path: PathBuf,
    shared: Arc<SharedEnv>,
    /// Every key, back to back; key `i` is `keys[ends[i - 1]..ends[i]]`.
    keys: Vec<u8>,
    ends: Vec<u64>,
}

/// An open environment and its unnamed database.
struct SharedEnv {
    env: heed::Env,
    db: Database<'static, Bytes, Bytes>,
    span: MapSpan,
}

/// The environments open in this process, by canonical path.
fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<SharedEnv>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Weak<SharedEnv>>>> = OnceLock::new();
    OPEN.get_or_init(Mutex::default)
}

impl std::fmt::Debug for LmdbRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LmdbRecords")
            .field("path", &self.path)
            .field("len", &self.ends.len())
            .finish()
    }
}

fn lmdb_error(path: &Path, what: &str) -> impl Fn(heed::Error) -> DataError {
    let (path, what) = (path.to_path_buf(), what.to_string());
    move |err| DataError::Dims {
        path: path.clone(),
        message: format!("{what}: {err}"),
    }
}

impl LmdbRecords {
    /// Opens the database in folder `dir` read-only and without LMDB's lock (so a read-only copy
    /// works; nobody may write the dataset while it is read), or shares the
    /// environment this process already has open there, and lists its keys.
    ///
    /// # Errors
    ///
    /// [`DataError::Missing`] when `dir` holds no `data.mdb`, [`DataError::Dims`] when LMDB
    /// cannot open it or has no unnamed database.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.join("data.mdb").is_file() {
            return Err(DataError::Missing {
                path: dir.join("data.mdb"),
                hint: "an LMDB dataset is the folder that holds data.mdb, as LSUN's \
                       `church_outdoor_train_lmdb`"
                    .into(),
            });
        }
        let canonical = dir.canonicalize().map_err(|source| DataError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let shared = {
            let mut open = registry()
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match open.get(&canonical).and_then(Weak::upgrade) {
                Some(shared) => shared,
                None => {
                    let shared = Arc::new(open_env(dir)?);
                    open.retain(|_, weak| weak.strong_count() > 0);
                    open.insert(canonical, Arc::downgrade(&shared));
                    shared
                }
            }
        };
        let (env, db) = (&shared.env, shared.db);
        let (mut keys, mut ends) = (Vec::new(), Vec::new());
        {
            let list_error = lmdb_error(dir, "cannot list the keys");
            let rtxn = env.read_txn().map_err(&list_error)?;
            for entry in db
                .remap_data_type::<DecodeIgnore>()
                .iter(&rtxn)
                .map_err(&list_error)?
            {
                let (key, ()) = entry.map_err(&list_error)?;
                shared.span.read(key);
                keys.extend_from_slice(key);
                ends.push(keys.len() as u64);
            }
        }
        // The walk touched every leaf page (and the kernel mapped their neighbours).
        shared.span.release();
        Ok(Self {
            path: dir.to_path_buf(),
            shared,
            keys,
            ends,
        })
    }

    /// The key of record `idx`.
    ///
    /// # Panics
    /// When `idx >= len()`.
    pub fn key(&self, idx: usize) -> &[u8] {
        let start = if idx == 0 { 0 } else { self.ends[idx - 1] };
        &self.keys[start as usize..self.ends[idx] as usize]
    }

    fn get(&self, key: &[u8]) -> std::result::Result<Vec<u8>, heed::Error> {
        let rtxn = self.shared.env.read_txn()?;
        let value = self
            .shared
            .db
            .get(&rtxn, key)?
            .ok_or(heed::Error::Mdb(heed::MdbError::NotFound))?;
        let copy = value.to_vec();
        self.shared.span.read(value);
        Ok(copy)
    }
}

/// Opens the environment in `dir` read-only, without LMDB's lock (so a read-only copy of the
/// data works; the dataset must not be written while it is read), and its unnamed database.
fn open_env(dir: &Path) -> Result<SharedEnv> {
    let mut options = EnvOpenOptions::new();
    // SAFETY: the map is only read, and the docs require that nobody writes the dataset while
    // it is read (NO_LOCK skips the reader table that would otherwise guard it).
    let env = unsafe {
        options
            .flags(EnvFlags::READ_ONLY | EnvFlags::NO_LOCK | EnvFlags::NO_READ_AHEAD)
            .open(dir)
    }
    .map_err(lmdb_error(dir, "cannot open the LMDB database"))?;
    let rtxn = env
        .read_txn()
        .map_err(lmdb_error(dir, "cannot start a read transaction"))?;
    let db: Database<'static, Bytes, Bytes> = env
        .open_databases_and_commit(rtxn, |opener, rtxn| {
            opener
                .open_database::<Bytes, Bytes>(rtxn, None)
                .map(CommitOrAbort::<_, ()>::Commit)
        })
        .map_err(lmdb_error(dir, "cannot open the unnamed database"))?
        .unwrap_commit()
        .ok_or_else(|| DataError::Dims {
            path: dir.to_path_buf(),
            message: "the LMDB environment has no unnamed database".into(),
        })?;
    Ok(SharedEnv {
        env,
        db,
        span: MapSpan::default(),
    })
}

/// Bytes of values read between two releases of the map's pages ([`MapSpan::release`]).
const RELEASE_EVERY: usize = 4 << 20;

/// The part of LMDB's map this process has read, so that its pages can leave the resident set.
///
/// Reading a database larger than memory through a map would otherwise grow the resident set
/// to the database's size (the kernel also maps neighbouring pages on each fault). Every
/// [`RELEASE_EVERY`] bytes the whole span read so far is released with `MADV_DONTNEED`: the
/// pages stay in the page cache, leave this process's resident memory, and fault back in from
/// the cache if read again.
#[derive(Debug, Default)]
struct MapSpan {
    /// The lowest and highest address read, and the bytes read since the last release.
    state: Mutex<(usize, usize, usize)>,
}

impl MapSpan {
    /// Records that `bytes` (inside the map) were read, releasing the span when due.
    fn read(&self, bytes: &[u8]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (lo, hi) = (
            bytes.as_ptr() as usize,
            bytes.as_ptr() as usize + bytes.len(),
        );
        let (min, max, since) = *state;
        let min = if min == 0 { lo } else { min.min(lo) };
        *state = (min, max.max(hi), since + bytes.len());
        if state.2 >= RELEASE_EVERY {
            state.2 = 0;
            release(state.0, state.1);
        }
    }

    /// Releases the span read so far now.
    fn release(&self) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        release(state.0, state.1);
    }
}

/// `MADV_DONTNEED` on the whole pages of `[lo, hi)`; best effort (a failure leaves them mapped).
fn release(lo: usize, hi: usize) {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    let (start, end) = (lo.div_ceil(page) * page, hi / page * page);
    if lo == 0 || end <= start {
        return;
    }
    // SAFETY: [start, end) lies between two addresses read from LMDB's one contiguous,
    // read-only, file-backed shared map, so inside it. MADV_DONTNEED on such a mapping only
    // drops this process's page-table entries; a later read (another thread's included) faults
    // the same file contents back in, so no reference into the map is invalidated.
    unsafe {
        libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
    }
}

/// A key as text when it is printable ASCII (LSUN's are hex ids), as hex otherwise.
fn show_key(key: &[u8]) -> String {
    if !key.is_empty() && key.iter().all(|b| b.is_ascii_graphic()) {
        String::from_utf8_lossy(key).into_owned()
    } else {
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        format!("0x{hex}")
    }
}

impl Records for LmdbRecords {
    fn path(&self) -> &Path {
        &self.path
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    fn name(&self, idx: usize) -> String {
        format!("key {}", show_key(self.key(idx)))
    }

    fn read(&self, idx: usize) -> std::result::Result<Record, String> {
        self.get(self.key(idx))
            .map(Record::Encoded)
            .map_err(|err| format!("cannot read the value: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_show_as_text_or_hex() {
        assert_eq!(show_key(b"0a1b2c"), "0a1b2c");
        assert_eq!(show_key(&[0, 255]), "0x00ff");
        assert_eq!(show_key(b"a b"), "0x612062");
    }

    #[test]
    fn a_folder_without_data_mdb_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        let err = LmdbRecords::open(dir.path()).unwrap_err();
        assert!(matches!(err, DataError::Missing { .. }), "{err}");
        assert!(err.to_string().contains("data.mdb"), "{err}");
    }
}
