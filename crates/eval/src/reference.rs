//! Reference statistics of a dataset split, cached on disk and scored against: what FID in the
//! training loop compares its samples with.
//!
//! The statistics depend on more than the images: the resolution they are scored at, the
//! resize in front of the network, the network itself. A [`ReferenceKey`] names all of them, and
//! the cache file's name records them, e.g. `fashion-mnist-train-28px-tf-7ff4a85c.npz`
//! (dataset, split, resolution, resize, the first 8 hex digits of the network file's sha256).
//! Beside it, `….json` holds the whole key, the image count and a fingerprint of the images
//! and of the `.npz`. A cache is used only when all of them match what the caller has now;
//! otherwise it is rebuilt, and [`CacheStatus::Rebuilt`] says why. A stale file is never used
//! silently.
//!
//! The `.npz` holds `mu` (float64 `[D]`) and `sigma` (float64 `[D, D]`), pytorch-fid's and
//! clean-fid's layout (both read it as reference statistics), and `kid_features` (float32
//! `[M, D]`): the features of [`KID_REFERENCE_IMAGES`] images spread evenly over the set, the
//! reference side of the KID (which needs features, not moments).

use std::fs;
use std::path::{Path, PathBuf};

use data::images::{read_npz, write_npz, NpyArray, NpyData};
use serde::{Deserialize, Serialize};

use super::{
    frechet_distance, kid, Features, FidError, Images, InceptionExtractor, Kid, KidConfig, Resize,
    Statistics, INCEPTION_INPUT_SIZE,
};

/// The version of the cache's sidecar format.
pub const CACHE_FORMAT: u32 = 1;

/// Reference images whose features are kept for the KID (spread evenly over the set): 16 MB of
/// float32 features at D = 2048.
pub const KID_REFERENCE_IMAGES: usize = 2000;

/// What reference statistics depend on. Two equal keys over the same images give the same
/// statistics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceKey {
    /// The dataset, e.g. `fashion-mnist`, `cifar10`, or `folder-<name>`.
    pub dataset: String,
    /// Its split: `train`, `test`, `train+test`.
    pub split: String,
    /// `[height, width]` the images are scored at (a model's resolution: the dataset's images
    /// are resized to it first).
    pub size: [usize; 2],
    /// The resize in front of the network.
    pub resize: Resize,
    /// The sha256 of the network's TorchScript file, lowercase hex.
    pub inception_sha256: String,
    /// The network's input size (299 for the FID Inception).
    pub input_size: i64,
    /// Only the first N images of the split; `None`: all of them.
    pub max_images: Option<usize>,
}

impl ReferenceKey {
    /// The cache's file name without extension, e.g. `fashion-mnist-train-28px-tf-7ff4a85c`;
    /// non-square sizes read `32x48px`, a subset adds `-first1000`, another input size
    /// `-in16`. Characters other than ASCII letters, digits, `+`, `.` and `-` become `_`.
    pub fn file_stem(&self) -> String {
        let [h, w] = self.size;
        let size = if h == w {
            format!("{h}px")
        } else {
            format!("{h}x{w}px")
        };
        let hash: String = self.inception_sha256.chars().take(8).collect();
        let mut stem = format!(
            "{}-{}-{size}-{}-{hash}",
            self.dataset,
            self.split,
            self.resize.name()
        );
        if let Some(n) = self.max_images {
            stem.push_str(&format!("-first{n}"));
        }
        if self.input_size != INCEPTION_INPUT_SIZE {
            stem.push_str(&format!("-in{}", self.input_size));
        }
        stem.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "+.-".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    }
}

/// The sidecar `.json` of a cache file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    format: u32,
    key: ReferenceKey,
    n_images: usize,
    /// FNV-1a 64 of the images' shape and pixels.
    images_fnv1a64: String,
    feature_dim: usize,
    n_kid_features: usize,
    /// FNV-1a 64 of the `.npz` file, so that a sidecar never vouches for another file.
    npz_fnv1a64: String,
}

/// Statistics of a reference set and the features the KID compares with.
#[derive(Debug, Clone, PartialEq)]
pub struct Reference {
    /// μ and Σ of every reference image's features.
    pub statistics: Statistics,
    /// The features of up to [`KID_REFERENCE_IMAGES`] of them, spread evenly.
    pub kid_features: Features,
    /// The number of reference images.
    pub n_images: usize,
}

/// FID and KID of a set of samples against a [`Reference`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleScores {
    /// The FID against the reference's statistics.
    pub fid: f64,
    /// The KID against the reference's KID features.
    pub kid: Kid,
}

impl Reference {
    /// The reference of a set's features: their statistics, and rows `k · N / M` for
    /// k < M = min(N, [`KID_REFERENCE_IMAGES`]) for the KID.
    ///
    /// # Errors
    /// As [`Statistics::from_features`].
    pub fn from_features(features: &Features) -> Result<Self, FidError> {
        let statistics = Statistics::from_features(features)?;
        let n = features.len();
        let m = n.min(KID_REFERENCE_IMAGES);
        let mut rows = Vec::with_capacity(m * features.dim());
        for k in 0..m {
            rows.extend_from_slice(features.row(k * n / m));
        }
        Ok(Self {
            statistics,
            kid_features: Features::new(rows, m, features.dim())?,
            n_images: n,
        })
    }

    /// Scores `samples`: their features through `extractor`, the FID against the statistics and
    /// the KID against the KID features.
    ///
    /// # Errors
    /// [`FidError::Invalid`] when the network's features do not have the reference's dimension;
    /// those of [`InceptionExtractor::extract`], [`frechet_distance`] and [`kid()`].
    pub fn score(
        &self,
        extractor: &InceptionExtractor,
        samples: &Images,
        kid_config: &KidConfig,
    ) -> Result<SampleScores, FidError> {
        let features = extractor.extract(samples, |_, _| {})?;
        if features.dim() != self.statistics.dim() {
            return Err(FidError::Invalid(format!(
                "{} gives {}-dimensional features, the reference statistics are {}-dimensional",
                extractor.path().display(),
                features.dim(),
                self.statistics.dim()
            )));
        }
        self.score_features(&features, kid_config)
    }

    /// Scores samples by their features (extracted as the reference's were): the FID against
    /// the statistics and the KID against the KID features.
    ///
    /// # Errors
    /// [`FidError::Invalid`] when the features do not have the reference's dimension; those of
    /// [`frechet_distance`] and [`kid()`].
    pub fn score_features(
        &self,
        features: &Features,
        kid_config: &KidConfig,
    ) -> Result<SampleScores, FidError> {
        if features.dim() != self.statistics.dim() {
            return Err(FidError::Invalid(format!(
                "the samples' features are {}-dimensional, the reference statistics are {}-dimensional",
                features.dim(),
                self.statistics.dim()
            )));
        }
        let fid = frechet_distance(&Statistics::from_features(features)?, &self.statistics)?;
        let kid = kid(features, &self.kid_features, kid_config)?;
        Ok(SampleScores { fid, kid })
    }
}

/// How [`ReferenceCache::load_or_build`] got its statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheStatus {
    /// Read from the cache, whose record matched.
    Reused,
    /// Computed and written: there was no cache.
    Built,
    /// Computed and written over a cache that did not match, for this reason.
    Rebuilt {
        /// What did not match.
        reason: String,
    },
    /// Computed, but the cache could not be written (a read-only data directory): the next run
    /// computes them again.
    NotWritten {
        /// The write error.
        reason: String,
    },
}

/// Reference statistics cached under a directory, under the name their [`ReferenceKey`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferenceCache {
    key: ReferenceKey,
    npz: PathBuf,
    sidecar: PathBuf,
}

impl ReferenceCache {
    /// The cache of `key` in `dir`: `dir/<stem>.npz` and `dir/<stem>.json`.
    pub fn new(dir: &Path, key: ReferenceKey) -> Self {
        let stem = key.file_stem();
        Self {
            npz: dir.join(format!("{stem}.npz")),
            sidecar: dir.join(format!("{stem}.json")),
            key,
        }
    }

    /// The key.
    pub fn key(&self) -> &ReferenceKey {
        &self.key
    }

    /// The statistics file.
    pub fn npz_path(&self) -> &Path {
        &self.npz
    }

    /// The record beside it.
    pub fn sidecar_path(&self) -> &Path {
        &self.sidecar
    }

    /// The cached reference of `images`, when the cache exists and its record matches the key,
    /// the images (count and fingerprint) and the `.npz`.
    ///
    /// # Errors
    /// A message saying what is missing or does not match.
    pub fn load(&self, images: &Images) -> Result<Reference, String> {
        let text = match fs::read_to_string(&self.sidecar) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !self.npz.exists() => {
                return Err("no cache".into())
            }
            Err(e) => return Err(format!("{}: {e}", self.sidecar.display())),
        };
        let record: Sidecar = serde_json::from_str(&text)
            .map_err(|e| format!("{} does not parse: {e}", self.sidecar.display()))?;
        if record.format != CACHE_FORMAT {
            return Err(format!(
                "{} is format {}, this build writes {CACHE_FORMAT}",
                self.sidecar.display(),
                record.format
            ));
        }
        if record.key != self.key {
            return Err(format!(
                "{} records another key ({}) than this run's ({})",
                self.sidecar.display(),
                serde_json::to_string(&record.key).expect("keys serialise"),
                serde_json::to_string(&self.key).expect("keys serialise"),
            ));
        }
        if record.n_images != images.len() {
            return Err(format!(
                "it holds the statistics of {} images, the dataset has {} now",
                record.n_images,
                images.len()
            ));
        }
        if record.images_fnv1a64 != images_fingerprint(images) {
            return Err("the dataset's images changed since it was written".into());
        }
        let bytes = fs::read(&self.npz).map_err(|e| format!("{}: {e}", self.npz.display()))?;
        if record.npz_fnv1a64 != hex(fnv1a64(FNV_OFFSET, &bytes)) {
            return Err(format!(
                "{} is not the file its record {} describes",
                self.npz.display(),
                self.sidecar.display()
            ));
        }
        let reference = read_reference(&self.npz).map_err(|e| e.to_string())?;
        if reference.statistics.dim() != record.feature_dim
            || reference.kid_features.len() != record.n_kid_features
        {
            return Err(format!(
                "{} does not hold the arrays its record describes",
                self.npz.display()
            ));
        }
        Ok(Reference {
            n_images: record.n_images,
            ..reference
        })
    }

    /// The reference of `images` (the reference set, already at the key's size): read from the
    /// cache when [`ReferenceCache::load`] accepts it, otherwise computed through `extractor`
    /// (`on_batch(done, total)` after each batch) and written, `.npz` and record each through a
    /// temporary file and a rename.
    ///
    /// # Errors
    /// [`FidError::Invalid`] when the images are not at the key's size or the extractor's
    /// settings differ from the key's; those of [`InceptionExtractor::extract`] and
    /// [`Statistics::from_features`]. A cache that cannot be written is no error
    /// ([`CacheStatus::NotWritten`]).
    pub fn load_or_build(
        &self,
        images: &Images,
        extractor: &InceptionExtractor,
        on_batch: impl FnMut(usize, usize),
    ) -> Result<(Reference, CacheStatus), FidError> {
        let [_, _, h, w] = images.shape();
        if [h, w] != self.key.size {
            return Err(FidError::Invalid(format!(
                "reference images are {h}x{w}, the key says {:?}",
                self.key.size
            )));
        }
        if extractor.resize() != self.key.resize || extractor.input_size() != self.key.input_size {
            return Err(FidError::Invalid(format!(
                "the extractor resizes with {} to {}, the key says {} to {}",
                extractor.resize().name(),
                extractor.input_size(),
                self.key.resize.name(),
                self.key.input_size
            )));
        }
        let miss = match self.load(images) {
            Ok(reference) => return Ok((reference, CacheStatus::Reused)),
            Err(reason) => reason,
        };
        let features = extractor.extract(images, on_batch)?;
        let reference = Reference::from_features(&features)?;
        let status = match self.write(&reference, images) {
            Err(e) => CacheStatus::NotWritten {
                reason: e.to_string(),
            },
            Ok(()) if miss == "no cache" => CacheStatus::Built,
            Ok(()) => CacheStatus::Rebuilt { reason: miss },
        };
        Ok((reference, status))
    }

    fn write(&self, reference: &Reference, images: &Images) -> Result<(), FidError> {
        let tmp = with_suffix(&self.npz, ".tmp");
        write_reference(reference, &tmp)?;
        let file_err = |path: &Path, e: std::io::Error| FidError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let bytes = fs::read(&tmp).map_err(|e| file_err(&tmp, e))?;
        let record = Sidecar {
            format: CACHE_FORMAT,
            key: self.key.clone(),
            n_images: images.len(),
            images_fnv1a64: images_fingerprint(images),
            feature_dim: reference.statistics.dim(),
            n_kid_features: reference.kid_features.len(),
            npz_fnv1a64: hex(fnv1a64(FNV_OFFSET, &bytes)),
        };
        let json_tmp = with_suffix(&self.sidecar, ".tmp");
        let json = serde_json::to_string_pretty(&record).expect("records serialise") + "\n";
        fs::write(&json_tmp, json).map_err(|e| file_err(&json_tmp, e))?;
        // The statistics first: a record is only ever beside the file it describes, or beside a
        // file it does not describe and then refuses (its fingerprint).
        fs::rename(&tmp, &self.npz).map_err(|e| file_err(&self.npz, e))?;
        fs::rename(&json_tmp, &self.sidecar).map_err(|e| file_err(&self.sidecar, e))
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Writes `mu`, `sigma` (float64) and `kid_features` (float32) to an `.npz`.
fn write_reference(reference: &Reference, path: &Path) -> Result<(), FidError> {
    let bad = |e: data::DataError| FidError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let (stats, kid) = (&reference.statistics, &reference.kid_features);
    let d = stats.dim();
    let mu = NpyArray::new(vec![d], NpyData::F64(stats.mu().to_vec())).map_err(bad)?;
    let sigma = NpyArray::new(vec![d, d], NpyData::F64(stats.sigma().to_vec())).map_err(bad)?;
    let features = NpyArray::new(
        vec![kid.len(), kid.dim()],
        NpyData::F32(kid.as_slice().to_vec()),
    )
    .map_err(bad)?;
    write_npz(
        path,
        &[("mu", &mu), ("sigma", &sigma), ("kid_features", &features)],
    )
    .map_err(bad)
}

/// Reads what [`write_reference`] writes (`n_images` is left at the KID features' count).
pub(crate) fn read_reference(path: &Path) -> Result<Reference, FidError> {
    let bad = |message: String| FidError::File {
        path: path.to_path_buf(),
        message,
    };
    let arrays = read_npz(path).map_err(|e| bad(e.to_string()))?;
    let get = |name: &str| {
        arrays
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a)
            .ok_or_else(|| bad(format!("no array `{name}`")))
    };
    let (mu, sigma, features) = (get("mu")?, get("sigma")?, get("kid_features")?);
    let (NpyData::F64(mu_v), NpyData::F64(sigma_v), NpyData::F32(feat_v)) =
        (&mu.data, &sigma.data, &features.data)
    else {
        return Err(bad(
            "`mu` and `sigma` must be float64, `kid_features` float32".into(),
        ));
    };
    let statistics =
        Statistics::new(mu_v.clone(), sigma_v.clone()).map_err(|e| bad(e.to_string()))?;
    let [m, d] = features.shape[..] else {
        return Err(bad(format!(
            "`kid_features` has shape {:?}; expected [M, D]",
            features.shape
        )));
    };
    if d != statistics.dim() {
        return Err(bad(format!(
            "`kid_features` are {d}-dimensional, `mu` {}",
            statistics.dim()
        )));
    }
    let kid_features = Features::new(feat_v.clone(), m, d).map_err(|e| bad(e.to_string()))?;
    Ok(Reference {
        statistics,
        kid_features,
        n_images: m,
    })
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits: a fingerprint against accidents, not an adversary.
fn fnv1a64(mut hash: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn hex(v: u64) -> String {
    format!("{v:016x}")
}

/// The fingerprint of a set of images: FNV-1a 64 over its shape (u64 little-endian) and pixels.
fn images_fingerprint(images: &Images) -> String {
    let mut hash = FNV_OFFSET;
    for d in images.shape() {
        hash = fnv1a64(hash, &(d as u64).to_le_bytes());
    }
    hex(fnv1a64(hash, images.pixels()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ReferenceKey {
        ReferenceKey {
            dataset: "fashion-mnist".into(),
            split: "train".into(),
            size: [28, 28],
            resize: Resize::Pytorch,
            inception_sha256: super::super::INCEPTION_SHA256.into(),
            input_size: INCEPTION_INPUT_SIZE,
            max_images: None,
        }
    }

    #[test]
    fn the_file_name_records_the_key() {
        assert_eq!(
            key().file_stem(),
            "fashion-mnist-train-28px-pytorch-7ff4a85c"
        );
        let other = ReferenceKey {
            dataset: "folder-my cats".into(),
            split: "train+test".into(),
            size: [32, 48],
            resize: Resize::Tf,
            input_size: 16,
            max_images: Some(1000),
            inception_sha256: "0123456789abcdef".into(),
        };
        assert_eq!(
            other.file_stem(),
            "folder-my_cats-train+test-32x48px-tf-01234567-first1000-in16"
        );
    }

    #[test]
    fn kid_features_are_spread_over_the_set() {
        let n = 5000;
        let features = Features::new((0..n).map(|i| i as f32).collect(), n, 1).unwrap();
        let r = Reference::from_features(&features).unwrap();
        assert_eq!(r.kid_features.len(), KID_REFERENCE_IMAGES);
        assert_eq!(r.kid_features.row(1), [2.0]);
        assert_eq!(r.kid_features.row(KID_REFERENCE_IMAGES - 1), [4997.0]);
        assert_eq!(r.n_images, n);
    }

    #[test]
    fn a_written_reference_reads_back_and_any_mismatch_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let images =
            Images::new((0..2 * 28 * 28).map(|i| i as u8).collect(), [2, 1, 28, 28]).unwrap();
        let features = Features::new(vec![1.0, 2.0, 0.5, 3.0, 4.0, 1.5], 3, 2).unwrap();
        let reference = Reference {
            n_images: 2,
            ..Reference::from_features(&features).unwrap()
        };
        let cache = ReferenceCache::new(dir.path(), key());
        assert_eq!(cache.load(&images).unwrap_err(), "no cache");
        cache.write(&reference, &images).unwrap();
        assert_eq!(cache.load(&images).unwrap(), reference);
        assert!(cache
            .npz_path()
            .ends_with("fashion-mnist-train-28px-pytorch-7ff4a85c.npz"));
        // pytorch-fid reads the file as statistics.
        assert_eq!(
            Statistics::read_npz(cache.npz_path()).unwrap(),
            reference.statistics
        );

        let mut changed = images.pixels().to_vec();
        changed[5] ^= 1;
        let changed = Images::new(changed, images.shape()).unwrap();
        assert!(cache.load(&changed).unwrap_err().contains("changed"));
        let fewer = images.take(1);
        assert!(cache.load(&fewer).unwrap_err().contains("2 images"));
        // Another key under the same file name (renamed by hand) is refused by its record.
        let other = ReferenceCache::new(
            dir.path(),
            ReferenceKey {
                max_images: Some(2),
                ..key()
            },
        );
        fs::copy(cache.npz_path(), other.npz_path()).unwrap();
        fs::copy(cache.sidecar_path(), other.sidecar_path()).unwrap();
        assert!(other.load(&images).unwrap_err().contains("another key"));
        // A statistics file that its record does not describe.
        let mut bytes = fs::read(cache.npz_path()).unwrap();
        let last = bytes.len() - 30;
        bytes[last] ^= 0xff;
        fs::write(cache.npz_path(), bytes).unwrap();
        assert!(cache.load(&images).unwrap_err().contains("not the file"));
    }
}
