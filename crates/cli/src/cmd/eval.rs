//! `ddpm eval`: FID and KID of samples (an `.npz`, an image folder, a dataset, or fresh samples
//! from a checkpoint) against reference statistics or a dataset, and `ddpm eval stats` to cache
//! a dataset's statistics. The metrics themselves live in the `eval` crate.
//!
//! A class-conditional checkpoint is sampled class-balanced (image `i` of class `i mod K`, guided
//! with `--guidance W`); `--class-balanced` insists on it (a class-conditional model, `--n` a
//! multiple of K) and adds one FID per class, against the reference images of that class when
//! the reference is a labelled dataset (`--dataset`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use crate::device::DeviceSpec;
use data::images::{read_image_dir, read_npz, write_npz, NpyArray, NpyData};
use data::DatasetSpec;
use eval::{
    self as fid, Features, FidError, Images, InceptionExtractor, Kid, KidConfig, Resize, Statistics,
};
use fetch::{Algorithm, Checksum};
use sample::{BatchPlan, ClassConditioning, Pipeline};
use schedule::Schedule;

use super::sampler_args::SamplerArgs;

/// Where `cargo xtask fetch-inception` puts the FID Inception.
const DEFAULT_INCEPTION: &str = "data/inception/default_1.pt";

/// Subcommands of `ddpm eval`.
#[derive(Debug, clap::Subcommand)]
pub enum EvalCommand {
    /// FID and KID of samples against a reference; prints both and writes a JSON result.
    Fid(Box<FidArgs>),
    /// Inception statistics (`mu`, `sigma`) of a dataset or a sample set, as an .npz.
    Stats(Box<StatsArgs>),
}

/// The Inception network and how images reach it.
#[derive(Debug, clap::Args)]
pub struct InceptionArgs {
    /// The FID Inception TorchScript (from `cargo xtask fetch-inception`).
    #[arg(long, default_value = DEFAULT_INCEPTION)]
    inception: PathBuf,
    /// Skip the sha256 check of --inception: for another feature network, whose scores do not
    /// compare with published FIDs.
    #[arg(long)]
    no_verify: bool,
    /// The network's input height and width (299 for the FID Inception).
    #[arg(long, default_value_t = fid::INCEPTION_INPUT_SIZE)]
    input_size: i64,
    /// Bilinear resize: tf (TF1 ResizeBilinear, as the TF FID graph; comparable with published
    /// FIDs) or pytorch (upsample_bilinear2d, align_corners=False, as pytorch-fid).
    #[arg(long, default_value = "tf")]
    resize: String,
    /// Images per Inception forward pass.
    #[arg(long, default_value_t = 50)]
    batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// libtorch intra-op CPU threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// cuDNN's autotuner on CUDA: times the convolution algorithms once per shape and keeps
    /// the fastest (faster steps; last-bit differences between processes). No effect on the CPU.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    cudnn_benchmark: bool,
}

/// A dataset named on the command line.
#[derive(Debug, Clone, clap::Args)]
pub struct DatasetArgs {
    /// cifar10, cifar100, mnist or fashion-mnist.
    #[arg(long)]
    dataset: Option<String>,
    /// train, test or train+test.
    #[arg(long, default_value = "train")]
    split: String,
    /// The dataset directory (default: data/DATASET, fetched when missing).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Do not download a missing dataset; fail instead.
    #[arg(long)]
    offline: bool,
}

/// Arguments of `ddpm eval fid`.
#[derive(Debug, clap::Args)]
pub struct FidArgs {
    /// Samples: an .npz of uint8 NHWC images (`arr_0` or the first array) or a folder of images.
    #[arg(long, conflicts_with_all = ["checkpoint", "samples_dataset"])]
    samples: Option<PathBuf>,
    /// Draw the samples from a run directory (its newest checkpoint), one checkpoint directory,
    /// or a diffusers folder; --weights picks EMA (default) or live weights.
    #[arg(long, conflicts_with = "samples_dataset")]
    checkpoint: Option<PathBuf>,
    /// Samples from a dataset instead (e.g. a test split, for the FID floor of real data).
    #[arg(long)]
    samples_dataset: Option<String>,
    /// The split of --samples-dataset.
    #[arg(long, default_value = "test")]
    samples_split: String,
    /// The directory of --samples-dataset (default: data/DATASET).
    #[arg(long)]
    samples_data: Option<PathBuf>,
    /// Reference: statistics (.npz with `mu`, `sigma`; FID only), features (.npz from
    /// `ddpm eval stats --features`; FID and KID, without extracting them again), or sample
    /// images (.npz or folder; FID and KID).
    #[arg(long = "ref", conflicts_with = "dataset")]
    reference: Option<PathBuf>,
    #[command(flatten)]
    ref_dataset: DatasetArgs,
    /// Use the first N images of each side (with --checkpoint: draw N samples).
    #[arg(long)]
    n: Option<usize>,
    /// The sampler for --checkpoint (the same flags as `ddpm sample`).
    #[command(flatten)]
    sampler: SamplerArgs,
    /// Samples per sampler batch.
    #[arg(long, default_value_t = 256)]
    sample_batch_size: usize,
    /// With a class-conditional --checkpoint: exactly --n / K samples of each of its K classes
    /// (class-conditional checkpoints are always sampled balanced, image i of class i mod K),
    /// and also the FID of each class against the reference images of that class (with
    /// --dataset, whose labels are the model's classes).
    #[arg(long, requires = "checkpoint")]
    class_balanced: bool,
    /// Seeds the sampler (as `ddpm sample --seed`: with the same --sample-batch-size as its
    /// --batch, the same images) and the KID subsets.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write the drawn samples as uint8 NHWC `arr_0`.
    #[arg(long)]
    save_samples: Option<PathBuf>,
    /// KID subsets (clean-fid and torch-fidelity use 100).
    #[arg(long, default_value_t = 100)]
    kid_subsets: usize,
    /// Images per KID subset (capped at the smaller set).
    #[arg(long, default_value_t = 1000)]
    kid_subset_size: usize,
    /// Write the result here as JSON.
    #[arg(long)]
    out: Option<PathBuf>,
    /// With --checkpoint: share the sampler's batches among N processes on this machine (as
    /// `torchrun --nproc-per-node N`); rank 0 gathers the samples (the same as in one process)
    /// and scores them.
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// Seconds a rank waits for the others (the rendezvous, the gathering of the samples).
    #[arg(long, value_name = "SECS", default_value_t = super::ranks::SAMPLE_TIMEOUT_SECS)]
    dist_timeout: u64,
    #[command(flatten)]
    inception: InceptionArgs,
}

/// Arguments of `ddpm eval stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    #[command(flatten)]
    dataset: DatasetArgs,
    /// Sample images (.npz or folder) instead of a dataset.
    #[arg(long, conflicts_with = "dataset")]
    samples: Option<PathBuf>,
    /// Use the first N images.
    #[arg(long)]
    n: Option<usize>,
    /// The .npz to write (`mu` float64 of shape (D), `sigma` float64 of shape (D, D)).
    #[arg(long)]
    out: PathBuf,
    /// Also store the Inception features (`features`, float32 [N, D]) in --out, so that
    /// `ddpm eval fid --ref` computes KID from the file instead of extracting them again.
    #[arg(long)]
    features: bool,
    #[command(flatten)]
    inception: InceptionArgs,
}

/// Runs `ddpm eval`.
pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Fid(args) => run_fid(*args),
        EvalCommand::Stats(args) => run_stats(*args),
    }
}

/// Parses `--dataset NAME --split SPLIT` into a [`DatasetSpec`].
fn dataset_spec(name: &str, split: &str) -> Result<DatasetSpec> {
    let split: data::Split = split.parse().context("--split")?;
    let kind = match name {
        "cifar10" | "cifar-10" => "cifar10",
        "cifar100" | "cifar-100" => "cifar100",
        "mnist" => "mnist",
        "fashion-mnist" | "fashion_mnist" | "fmnist" => "fashion-mnist",
        _ => bail!("unknown dataset `{name}`: use cifar10, cifar100, mnist or fashion-mnist"),
    };
    let mut value = json!({"kind": kind, "split": split.as_str()});
    if kind == "cifar100" {
        value["label"] = json!("fine");
    }
    Ok(serde_json::from_value(value).expect("a valid dataset spec"))
}

/// A dataset's labels and class names, for per-class FID.
struct Labelled {
    labels: Vec<u16>,
    names: Vec<String>,
}

/// Loads a named dataset's images (fetching it when missing, as `ddpm train` does), with its
/// labels.
fn load_dataset(
    name: &str,
    split: &str,
    dir: Option<&Path>,
    offline: bool,
) -> Result<(Images, String, Labelled)> {
    let spec = dataset_spec(name, split)?;
    let dir = crate::cmd::train::ensure_data(&spec, dir, offline)?;
    let (dataset, _) = spec
        .load(&dir)
        .with_context(|| format!("cannot load {name} from {}", dir.display()))?;
    let labelled = Labelled {
        labels: dataset.labels().to_vec(),
        names: dataset.class_names().to_vec(),
    };
    Ok((
        Images::from_dataset(&dataset),
        format!("{name} {split} ({})", dir.display()),
        labelled,
    ))
}

/// The rows of `features` whose label is `class`.
fn class_features(features: &Features, labels: &[i64], class: i64) -> Result<Features> {
    let rows: Vec<usize> = (0..features.len().min(labels.len()))
        .filter(|&i| labels[i] == class)
        .collect();
    let data: Vec<f32> = rows
        .iter()
        .flat_map(|&i| features.row(i).iter().copied())
        .collect();
    Ok(Features::new(data, rows.len(), features.dim())?)
}

/// The samples of a class-conditional checkpoint: their classes, the guidance, the class names.
struct SampledClasses {
    labels: Vec<i64>,
    num_classes: i64,
    names: Vec<String>,
}

/// What an `.npz` or folder holds.
enum Source {
    Images(Images),
    Statistics(Statistics),
    /// Inception features saved by `ddpm eval stats --features`.
    Features(Features),
}

/// Reads `features` (`[N, D]`, float32 or float64) from an `.npz` written by
/// `ddpm eval stats --features`.
fn read_features(path: &Path) -> Result<Features> {
    let arrays = read_npz(path).with_context(|| format!("cannot read {}", path.display()))?;
    let (_, array) = arrays
        .iter()
        .find(|(name, _)| name == "features")
        .with_context(|| format!("{}: no array `features`", path.display()))?;
    let [n, dim] = array.shape[..] else {
        bail!(
            "{}: `features` has shape {:?}; expected [N, D]",
            path.display(),
            array.shape
        );
    };
    let values = match &array.data {
        NpyData::F32(v) => v.clone(),
        NpyData::F64(v) => v.iter().map(|&x| x as f32).collect(),
        _ => bail!("{}: `features` is not float32 or float64", path.display()),
    };
    Features::new(values, n, dim).with_context(|| format!("{}: `features`", path.display()))
}

/// Reads images from an `.npz` or folder, statistics from an `.npz` with `mu` and `sigma`, or
/// features from an `.npz` with `features` (which wins over its `mu` and `sigma`).
fn read_source(path: &Path, allow_stats: bool) -> Result<Source> {
    if path.is_dir() {
        return Ok(Source::Images(Images::from_set(read_image_dir(path)?)?));
    }
    if !path.exists() {
        bail!("{} does not exist", path.display());
    }
    let names: Vec<String> = read_npz(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    if names.iter().any(|n| n == "features") {
        if !allow_stats {
            bail!(
                "{} holds Inception features, not images: pass it as --ref",
                path.display()
            );
        }
        return Ok(Source::Features(read_features(path)?));
    }
    if names.iter().any(|n| n == "mu" || n == "sigma") {
        if !allow_stats {
            bail!(
                "{} holds statistics (`mu`, `sigma`), not images: pass it as --ref",
                path.display()
            );
        }
        return Ok(Source::Statistics(Statistics::read_npz(path)?));
    }
    Ok(Source::Images(Images::read_npz(path)?))
}

/// Keeps the first `n` images and requires at least two.
fn limit(images: Images, n: Option<usize>, what: &str) -> Result<Images> {
    let images = match n {
        Some(n) if n < images.len() => images.take(n),
        _ => images,
    };
    if images.len() < 2 {
        return Err(FidError::TooFewImages {
            what: what.to_string(),
            n: images.len(),
        }
        .into());
    }
    Ok(images)
}

/// Loads the extractor, verifying the file's sha256 unless told not to; on `device` when
/// given (a rank's), else on `--device` with `--threads`.
fn load_extractor(
    args: &InceptionArgs,
    device: Option<tch::Device>,
) -> Result<(InceptionExtractor, bool)> {
    if let (Some(n), None) = (args.threads, device) {
        tch::set_num_threads(n);
    }
    let path = &args.inception;
    if !path.is_file() {
        bail!(
            "{} is missing: run `cargo xtask fetch-inception` or pass --inception PATH",
            path.display()
        );
    }
    if !args.no_verify {
        let file =
            std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let actual = Checksum::compute(Algorithm::Sha256, std::io::BufReader::new(file))
            .with_context(|| format!("cannot read {}", path.display()))?;
        if actual.hex() != fid::INCEPTION_SHA256 {
            bail!(
                "{}: sha256 {} is not the FID Inception's {}: run `cargo xtask fetch-inception` \
                 to get it, or pass --no-verify to use another network (its scores do not compare \
                 with published FIDs)",
                path.display(),
                actual.hex(),
                fid::INCEPTION_SHA256
            );
        }
    }
    let device = match device {
        Some(device) => device,
        None => args.device.resolve()?,
    };
    crate::runtime::configure_cudnn(device, args.cudnn_benchmark);
    let resize: Resize = args.resize.parse().context("--resize")?;
    let extractor = InceptionExtractor::load(path, device)?
        .with_input_size(args.input_size)
        .with_resize(resize)
        .with_batch_size(args.batch_size)?;
    Ok((extractor, !args.no_verify))
}

fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {pos}/{len} {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Inception features of a set of images, with a progress bar.
fn extract(extractor: &InceptionExtractor, images: &Images, what: &str) -> Result<Features> {
    let bar = progress_bar(
        images.len() as u64,
        &format!("Inception features of {what}"),
    );
    let started = Instant::now();
    let features = extractor.extract(images, |done, _| bar.set_position(done as u64));
    bar.finish_and_clear();
    let features = features.with_context(|| format!("features of {what}"))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "features of {what}: {} images in {secs:.1} s ({:.1} images/s)",
        images.len(),
        images.len() as f64 / secs.max(1e-9)
    );
    Ok(features)
}

/// Draws `n` samples from a checkpoint's EMA weights (class-balanced for a class-conditional
/// one); in a launch, shared among the ranks and gathered on rank 0 (the others get `None`).
fn sample_checkpoint(
    args: &FidArgs,
    path: &Path,
    device: tch::Device,
    dist: Option<&torch_ext::Distributed>,
) -> Result<Option<(Images, serde_json::Value, Option<SampledClasses>)>> {
    let n = args.n.unwrap_or(10_000);
    if n < 2 {
        return Err(FidError::TooFewImages {
            what: "--n".into(),
            n,
        }
        .into());
    }
    if args.sample_batch_size == 0 {
        bail!("--sample-batch-size must be at least 1");
    }
    let spec = args.sampler.resolve(path)?;
    let schedule = Schedule::new(&spec.schedule)
        .with_context(|| format!("{}: schedule", spec.config_file.display()))?;
    let sampler = args.sampler.config(schedule.n_steps())?;
    let guidance = args.sampler.guidance_for(spec.num_classes(), path)?;
    let classes = match spec.num_classes() {
        None if args.class_balanced => bail!(
            "--class-balanced: the model of --checkpoint {} is not class-conditional",
            path.display()
        ),
        None => None,
        Some(k) => {
            if args.class_balanced && !n.is_multiple_of(k as usize) {
                bail!(
                    "--class-balanced: --n {n} does not split into the model's {k} classes \
                     equally: pass a multiple of {k}"
                );
            }
            Some(SampledClasses {
                labels: ClassConditioning::balanced(k, n, guidance).labels,
                num_classes: k,
                names: (0..k).map(|c| spec.class_name(c)).collect(),
            })
        }
    };
    let pipe = Pipeline::from_spec(spec, device)
        .with_context(|| format!("--checkpoint {}", path.display()))?;
    let mut options = pipe.options(args.sampler.clip_x0(), 0);
    if let Some(classes) = &classes {
        options.class_cond = Some(ClassConditioning {
            labels: classes.labels.clone(),
            guidance,
        });
    }
    // The same batches, seeds and images as `ddpm sample --batch B --seed S` with this sampler.
    let plan = BatchPlan {
        n_images: n,
        batch_size: args.sample_batch_size.min(n),
        image_shape: pipe.image_shape(),
        seed: args.seed,
        n_chains: 0,
    };
    let main = dist.is_none_or(torch_ext::Distributed::is_main);
    let bar = if main {
        progress_bar(n as u64, "samples")
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut images: Option<Images> = None;
    let batches: Box<dyn Iterator<Item = Result<sample::SampledBatch>>> = match dist {
        None => Box::new(
            pipe.sample_batches(&sampler, &options, plan, |_, _| {})?
                .map(|b| b.map_err(anyhow::Error::from)),
        ),
        Some(dist) => Box::new(
            super::ranks::sample_sharded(&pipe, &sampler, &options, &plan, dist, |_, _| {})?
                .into_iter()
                .map(Ok),
        ),
    };
    if !main {
        return Ok(None);
    }
    for batch in batches {
        let batch = Images::from_tensor(&batch?.output.images)?;
        match images.as_mut() {
            Some(all) => all.append(&batch)?,
            None => images = Some(batch),
        }
        bar.set_position(images.as_ref().map_or(0, Images::len) as u64);
    }
    bar.finish_and_clear();
    let images = images.expect("n >= 2");
    eprintln!(
        "sampled {n} images from {} in {:.1} s",
        pipe.spec.dir.display(),
        started.elapsed().as_secs_f64()
    );
    if let Some(out) = &args.save_samples {
        images.write_npz(out)?;
        eprintln!("samples written to {}", out.display());
    }
    let mut meta = json!({
        "checkpoint": pipe.spec.dir.display().to_string(),
        "step": pipe.spec.step,
        "sampler": serde_json::to_value(&sampler).expect("serialisable"),
        "seed": args.seed,
        "ranks": dist.map_or(1, torch_ext::Distributed::world_size),
    });
    if let Some(classes) = &classes {
        meta["classes"] = json!(classes.num_classes);
        meta["class_balanced"] = json!(true);
        meta["guidance"] = json!(guidance);
    }
    Ok(Some((images, meta, classes)))
}

fn run_fid(args: FidArgs) -> Result<()> {
    if let Some(n) = args.nproc_per_node {
        if !crate::launch::is_launched_rank() {
            return crate::launch::launch(n, args.inception.device);
        }
    }
    let started = Instant::now();
    // Everything that can be checked is checked before any image is sampled or scored.
    if args.kid_subsets == 0 {
        bail!(
            "--kid-subsets 0: KID needs at least 1 subset (clean-fid and torch-fidelity use 100)"
        );
    }
    if args.kid_subset_size < 2 {
        bail!(
            "--kid-subset-size {}: a KID subset needs at least 2 images",
            args.kid_subset_size
        );
    }
    if args.samples.is_none() && args.checkpoint.is_none() && args.samples_dataset.is_none() {
        bail!("pass --samples FILE_OR_DIR, --checkpoint DIR or --samples-dataset NAME");
    }
    let joined = super::ranks::join(
        args.inception.device,
        args.inception.threads,
        std::time::Duration::from_secs(args.dist_timeout),
    )?;
    if !joined.is_main() {
        // The other ranks draw their share of the samples; rank 0 does the rest.
        if let Some(path) = &args.checkpoint {
            sample_checkpoint(&args, path, joined.device, joined.dist.as_ref())?;
        }
        return Ok(());
    }
    let (extractor, verified) = load_extractor(&args.inception, Some(joined.device))?;
    // The reference first: cheap to read, and statistics of another network's dimension are
    // refused before the samples are drawn.
    let mut ref_labels: Option<Labelled> = None;
    let reference = match (&args.reference, &args.ref_dataset.dataset) {
        (Some(path), _) => (read_source(path, true)?, path.display().to_string()),
        (None, Some(name)) => {
            let (images, what, labelled) = load_dataset(
                name,
                &args.ref_dataset.split,
                args.ref_dataset.data.as_deref(),
                args.ref_dataset.offline,
            )?;
            ref_labels = Some(labelled);
            (Source::Images(images), what)
        }
        (None, None) => bail!("pass --ref STATS_OR_SAMPLES or --dataset NAME [--split SPLIT]"),
    };
    let (reference, ref_what) = reference;
    let reference = match reference {
        Source::Statistics(stats) => {
            let d = extractor
                .feature_dim()
                .with_context(|| format!("{}", extractor.path().display()))?;
            if stats.dim() != d {
                bail!(
                    "{ref_what}: statistics of dimension {} cannot be compared with the {d}-dimensional \
                     features of {}: make them with this network (`ddpm eval stats`)",
                    stats.dim(),
                    extractor.path().display()
                );
            }
            Source::Statistics(stats)
        }
        Source::Features(features) => {
            let d = extractor
                .feature_dim()
                .with_context(|| format!("{}", extractor.path().display()))?;
            if features.dim() != d {
                bail!(
                    "{ref_what}: features of dimension {} cannot be compared with the {d}-dimensional \
                     features of {}: make them with this network (`ddpm eval stats --features`)",
                    features.dim(),
                    extractor.path().display()
                );
            }
            let n = args.n.unwrap_or(usize::MAX).min(features.len());
            if n < 2 {
                return Err(FidError::TooFewImages { what: ref_what, n }.into());
            }
            let kept = Features::new(features.as_slice()[..n * d].to_vec(), n, d)?;
            Source::Features(kept)
        }
        Source::Images(images) => Source::Images(limit(images, args.n, &ref_what)?),
    };
    // The samples.
    let mut sampled_classes: Option<SampledClasses> = None;
    let (samples, samples_what, samples_meta) =
        match (&args.samples, &args.checkpoint, &args.samples_dataset) {
            (Some(path), _, _) => match read_source(path, false)? {
                Source::Images(images) => (
                    images,
                    path.display().to_string(),
                    json!({"path": path.display().to_string()}),
                ),
                Source::Statistics(_) | Source::Features(_) => {
                    unreachable!("refused by read_source")
                }
            },
            (None, Some(path), _) => {
                let (images, meta, classes) =
                    sample_checkpoint(&args, path, extractor.device(), joined.dist.as_ref())?
                        .expect("rank 0 gathers the samples");
                sampled_classes = classes;
                (images, format!("samples of {}", path.display()), meta)
            }
            (None, None, Some(name)) => {
                let (images, what, _) = load_dataset(
                    name,
                    &args.samples_split,
                    args.samples_data.as_deref(),
                    args.ref_dataset.offline,
                )?;
                (images, what.clone(), json!({"dataset": what}))
            }
            (None, None, None) => unreachable!("checked above"),
        };
    let samples = limit(samples, args.n, &samples_what)?;

    let samples_features = extract(&extractor, &samples, &samples_what)?;
    let samples_stats = Statistics::from_features(&samples_features)?;
    let (ref_stats, ref_features, ref_n) = match reference {
        Source::Statistics(stats) => (stats, None, None),
        Source::Features(features) => {
            let n = features.len();
            (
                Statistics::from_features(&features)?,
                Some(features),
                Some(n),
            )
        }
        Source::Images(images) => {
            let features = extract(&extractor, &images, &ref_what)?;
            (
                Statistics::from_features(&features)?,
                Some(features),
                Some(images.len()),
            )
        }
    };
    let fid_value = fid::frechet_distance(&samples_stats, &ref_stats)
        .with_context(|| format!("FID of {samples_what} against {ref_what}"))?;
    let kid: Option<Kid> = match &ref_features {
        Some(ref_features) => {
            let config = KidConfig {
                n_subsets: args.kid_subsets,
                subset_size: args.kid_subset_size,
                seed: args.seed,
            };
            Some(fid::kid(&samples_features, ref_features, &config)?)
        }
        None => None,
    };
    // FID per class: the samples of each class against the reference images of that class.
    let mut per_class = Vec::new();
    if let (true, Some(classes)) = (args.class_balanced, &sampled_classes) {
        match (&ref_labels, &ref_features) {
            (Some(labelled), Some(ref_features)) if !labelled.names.is_empty() => {
                if labelled.names.len() as i64 != classes.num_classes {
                    bail!(
                        "--class-balanced: {ref_what} has {} classes but the model {}: per-class \
                         FID needs the dataset the model was trained on",
                        labelled.names.len(),
                        classes.num_classes
                    );
                }
                let ref_labels: Vec<i64> = labelled.labels.iter().map(|&l| i64::from(l)).collect();
                for k in 0..classes.num_classes {
                    let ours = class_features(&samples_features, &classes.labels, k)?;
                    let theirs = class_features(ref_features, &ref_labels, k)?;
                    let name = labelled.names[k as usize].clone();
                    if ours.len() < 2 || theirs.len() < 2 {
                        bail!(
                            "--class-balanced: class {k} ({name}) has {} samples and {} reference \
                             images: FID needs at least 2 of each (raise --n)",
                            ours.len(),
                            theirs.len()
                        );
                    }
                    let fid_k = fid::frechet_distance(
                        &Statistics::from_features(&ours)?,
                        &Statistics::from_features(&theirs)?,
                    )
                    .with_context(|| format!("FID of class {k} ({name})"))?;
                    per_class.push(json!({
                        "class": k,
                        "name": name,
                        "model_name": classes.names[k as usize],
                        "fid": fid_k,
                        "n_samples": ours.len(),
                        "n_reference": theirs.len(),
                    }));
                }
            }
            _ => eprintln!(
                "per-class FID needs a labelled reference dataset (--dataset NAME); {ref_what} has \
                 no labels, so only the class-balanced FID is reported"
            ),
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if sampled_classes.is_some() {
        println!("FID {fid_value:.4} (class-balanced)");
    } else {
        println!("FID {fid_value:.4}");
    }
    for entry in &per_class {
        println!(
            "FID class {} ({}) {:.4}",
            entry["class"],
            entry["name"].as_str().unwrap_or_default(),
            entry["fid"].as_f64().unwrap_or(f64::NAN)
        );
    }
    match &kid {
        Some(k) => println!(
            "KID {:.6} ± {:.6} ({} subsets of {})",
            k.mean, k.std, k.n_subsets, k.subset_size
        ),
        None => {
            println!("KID n/a (the reference is statistics only; pass images, --dataset or `ddpm eval stats --features` output for KID)")
        }
    }
    eprintln!(
        "{} samples against {ref_what} in {seconds:.1} s",
        samples.len()
    );
    if let Some(out) = &args.out {
        let result = json!({
            "fid": fid_value,
            "kid": kid,
            "samples": {"source": samples_what, "n": samples.len(), "details": samples_meta},
            "reference": {"source": ref_what, "n": ref_n},
            "inception": {
                "path": extractor.path().display().to_string(),
                "sha256_verified": verified,
                "input_size": extractor.input_size(),
                "resize": extractor.resize().name(),
                "dim": samples_features.dim(),
            },
            "seconds": seconds,
        });
        let mut result = result;
        if !per_class.is_empty() {
            result["per_class"] = json!(per_class);
        }
        let text = serde_json::to_string_pretty(&result).expect("serialisable") + "\n";
        std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))?;
    }
    Ok(())
}

fn run_stats(args: StatsArgs) -> Result<()> {
    let (extractor, _) = load_extractor(&args.inception, None)?;
    let (images, what) = match (&args.samples, &args.dataset.dataset) {
        (Some(path), _) => match read_source(path, false)? {
            Source::Images(images) => (images, path.display().to_string()),
            Source::Statistics(_) | Source::Features(_) => unreachable!("refused by read_source"),
        },
        (None, Some(name)) => {
            let (images, what, _) = load_dataset(
                name,
                &args.dataset.split,
                args.dataset.data.as_deref(),
                args.dataset.offline,
            )?;
            (images, what)
        }
        (None, None) => bail!("pass --dataset NAME [--split SPLIT] or --samples FILE_OR_DIR"),
    };
    let images = limit(images, args.n, &what)?;
    let features = extract(&extractor, &images, &what)?;
    let stats = Statistics::from_features(&features)?;
    if args.features {
        let (n, d) = (features.len(), features.dim());
        let arrays = [
            (
                "mu",
                NpyArray::new(vec![d], NpyData::F64(stats.mu().to_vec()))?,
            ),
            (
                "sigma",
                NpyArray::new(vec![d, d], NpyData::F64(stats.sigma().to_vec()))?,
            ),
            (
                "features",
                NpyArray::new(vec![n, d], NpyData::F32(features.as_slice().to_vec()))?,
            ),
        ];
        let named: Vec<(&str, &NpyArray)> = arrays.iter().map(|(k, v)| (*k, v)).collect();
        write_npz(&args.out, &named)
            .with_context(|| format!("cannot write {}", args.out.display()))?;
    } else {
        stats.write_npz(&args.out)?;
    }
    eprintln!(
        "statistics{} of {} images of {what} ({}-d) written to {}",
        if args.features { " and features" } else { "" },
        images.len(),
        stats.dim(),
        args.out.display()
    );
    Ok(())
}
