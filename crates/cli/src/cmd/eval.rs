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
use indicatif::ProgressBar;
use serde_json::json;

use data::images::{write_npz, NpyArray, NpyData};
use data::DatasetSpec;
use eval::{self as fid, FidError, Images, InceptionExtractor, KidConfig, Source, Statistics};
use sample::{BatchPlan, ClassConditioning, Pipeline, SampleRequest};

use crate::inception::{extract, load_extractor, progress_bar, InceptionArgs};
use crate::sampler_args::SamplerArgs;
use crate::sources::read_source;

/// Subcommands of `ddpm eval`.
#[derive(Debug, clap::Subcommand)]
pub enum EvalCommand {
    /// FID and KID of samples against a reference; prints both and writes a JSON result.
    Fid(Box<FidArgs>),
    /// Inception statistics (`mu`, `sigma`) of a dataset or a sample set, as an .npz.
    Stats(Box<StatsArgs>),
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
    #[arg(long, value_name = "SECS", default_value_t = crate::ranks::SAMPLE_TIMEOUT_SECS)]
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
    let dir = crate::datasets::ensure_data(&spec, dir, offline)?;
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

/// The samples of a class-conditional checkpoint: their classes, the guidance, the class names.
struct SampledClasses {
    labels: Vec<i64>,
    num_classes: i64,
    names: Vec<String>,
}

/// The classes of `n` samples of the checkpoint `path` (whose pipeline is `spec`): image `i` of
/// class `i mod K` for a class-conditional model, none otherwise; `--class-balanced` insists on
/// a class-conditional model and `n` a multiple of K.
fn sampled_classes(
    args: &FidArgs,
    spec: &sample::PipelineSpec,
    n: usize,
    guidance: f64,
    path: &Path,
) -> Result<Option<SampledClasses>> {
    Ok(match spec.num_classes() {
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
    })
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
    let sampler = args.sampler.config(spec.schedule.n_steps())?;
    let guidance = args.sampler.guidance_for(spec.num_classes(), path)?;
    let classes = sampled_classes(args, &spec, n, guidance, path)?;
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
    let request = SampleRequest {
        sampler,
        options,
        plan: BatchPlan {
            n_images: n,
            batch_size: args.sample_batch_size.min(n),
            image_shape: pipe.image_shape(),
            seed: args.seed,
            n_chains: 0,
        },
    };
    let main = dist.is_none_or(torch_ext::Distributed::is_main);
    let bar = if main {
        progress_bar(n as u64, "samples")
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let on_batch = |_, done: usize| bar.set_position(done as u64);
    let Some(samples) = sample::shard::sample_images(&pipe, &request, dist, |_, _| {}, on_batch)?
    else {
        return Ok(None);
    };
    bar.finish_and_clear();
    let images = Images::from_samples(samples)?;
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
        "sampler": serde_json::to_value(&request.sampler).expect("serialisable"),
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

/// The checks of `ddpm eval fid`'s flags that need no file: everything that can be checked is
/// checked before any image is sampled or scored.
fn check_fid_args(args: &FidArgs) -> Result<()> {
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
    Ok(())
}

/// The reference of `ddpm eval fid` (`--ref` or `--dataset`), what to call it, and its labels
/// when it is a dataset. Statistics and features of another network's dimension are refused
/// here, before the samples are drawn.
fn read_reference(
    args: &FidArgs,
    extractor: &InceptionExtractor,
) -> Result<(Source, String, Option<Labelled>)> {
    let (reference, ref_what, ref_labels) = match (&args.reference, &args.ref_dataset.dataset) {
        (Some(path), _) => (read_source(path, true)?, path.display().to_string(), None),
        (None, Some(name)) => {
            let (images, what, labelled) = load_dataset(
                name,
                &args.ref_dataset.split,
                args.ref_dataset.data.as_deref(),
                args.ref_dataset.offline,
            )?;
            (Source::Images(images), what, Some(labelled))
        }
        (None, None) => bail!("pass --ref STATS_OR_SAMPLES or --dataset NAME [--split SPLIT]"),
    };
    let dim_of = |what: &str, dim: usize, how: &str| -> Result<()> {
        let d = extractor
            .feature_dim()
            .with_context(|| format!("{}", extractor.path().display()))?;
        if dim != d {
            bail!(
                "{ref_what}: {what} of dimension {dim} cannot be compared with the {d}-dimensional \
                 features of {}: make them with this network (`{how}`)",
                extractor.path().display()
            );
        }
        Ok(())
    };
    let reference = match reference {
        Source::Statistics(stats) => {
            dim_of("statistics", stats.dim(), "ddpm eval stats")?;
            Source::Statistics(stats)
        }
        Source::Features(features) => {
            dim_of("features", features.dim(), "ddpm eval stats --features")?;
            Source::Features(fid::first_features(features, args.n, &ref_what)?)
        }
        Source::Images(images) => Source::Images(fid::first_images(images, args.n, &ref_what)?),
    };
    Ok((reference, ref_what, ref_labels))
}

/// The samples of `ddpm eval fid` (`--samples`, `--checkpoint` or `--samples-dataset`), what to
/// call them, what the JSON result says of them, and the classes of a checkpoint's samples.
fn read_samples(
    args: &FidArgs,
    extractor: &InceptionExtractor,
    joined: &crate::ranks::Joined,
) -> Result<(Images, String, serde_json::Value, Option<SampledClasses>)> {
    Ok(
        match (&args.samples, &args.checkpoint, &args.samples_dataset) {
            (Some(path), _, _) => match read_source(path, false)? {
                Source::Images(images) => (
                    images,
                    path.display().to_string(),
                    json!({"path": path.display().to_string()}),
                    None,
                ),
                Source::Statistics(_) | Source::Features(_) => {
                    unreachable!("refused by read_source")
                }
            },
            (None, Some(path), _) => {
                let (images, meta, classes) =
                    sample_checkpoint(args, path, extractor.device(), joined.dist.as_ref())?
                        .expect("rank 0 gathers the samples");
                (
                    images,
                    format!("samples of {}", path.display()),
                    meta,
                    classes,
                )
            }
            (None, None, Some(name)) => {
                let (images, what, _) = load_dataset(
                    name,
                    &args.samples_split,
                    args.samples_data.as_deref(),
                    args.ref_dataset.offline,
                )?;
                (images, what.clone(), json!({"dataset": what}), None)
            }
            (None, None, None) => unreachable!("checked by check_fid_args"),
        },
    )
}

/// The classes of the samples and of the reference for the FID of each class: with
/// `--class-balanced`, a class-conditional checkpoint and a labelled reference dataset of as
/// many classes, each with at least 2 of the `n_samples` samples and of the reference images.
/// `Ok(None)` when per-class FID does not apply; the caller says why.
fn class_pairs(
    args: &FidArgs,
    (sampled, n_samples): (Option<&SampledClasses>, usize),
    ref_labels: Option<&Labelled>,
    reference: &Source,
    ref_what: &str,
) -> Result<Option<(fid::Classes, fid::Classes)>> {
    let (true, Some(classes)) = (args.class_balanced, sampled) else {
        return Ok(None);
    };
    let (labelled, n_reference) = match (ref_labels, reference) {
        (Some(labelled), Source::Images(images)) if !labelled.names.is_empty() => {
            (labelled, images.len())
        }
        _ => return Ok(None),
    };
    if labelled.names.len() as i64 != classes.num_classes {
        bail!(
            "--class-balanced: {ref_what} has {} classes but the model {}: per-class \
             FID needs the dataset the model was trained on",
            labelled.names.len(),
            classes.num_classes
        );
    }
    let ours = fid::Classes {
        labels: classes.labels.clone(),
        names: classes.names.clone(),
    };
    let theirs = fid::Classes {
        labels: labelled.labels.iter().map(|&l| i64::from(l)).collect(),
        names: labelled.names.clone(),
    };
    let count = |labels: &[i64], n: usize, k: i64| {
        labels[..n.min(labels.len())]
            .iter()
            .filter(|&&l| l == k)
            .count()
    };
    for k in 0..classes.num_classes {
        let (n_ours, n_theirs) = (
            count(&ours.labels, n_samples, k),
            count(&theirs.labels, n_reference, k),
        );
        if n_ours < 2 || n_theirs < 2 {
            bail!(
                "--class-balanced: class {k} ({}) has {n_ours} samples and {n_theirs} reference \
                 images: FID needs at least 2 of each (raise --n)",
                theirs.names[k as usize]
            );
        }
    }
    Ok(Some((ours, theirs)))
}

fn run_fid(args: FidArgs) -> Result<()> {
    if let Some(n) = args.nproc_per_node {
        if !crate::launch::is_launched_rank() {
            return crate::launch::launch(n, args.inception.device);
        }
    }
    let started = Instant::now();
    check_fid_args(&args)?;
    let joined = crate::ranks::join(
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
    // The reference first: cheap to read, and refused early when it does not fit.
    let (reference, ref_what, ref_labels) = read_reference(&args, &extractor)?;
    let (samples, samples_what, samples_meta, sampled) = read_samples(&args, &extractor, &joined)?;
    let samples = fid::first_images(samples, args.n, &samples_what)?;
    let samples_features = extract(&extractor, &samples, &samples_what)?;
    let classes = class_pairs(
        &args,
        (sampled.as_ref(), samples.len()),
        ref_labels.as_ref(),
        &reference,
        &ref_what,
    )?;
    let kid_config = KidConfig {
        n_subsets: args.kid_subsets,
        subset_size: args.kid_subset_size,
        seed: args.seed,
    };
    let scores = fid::score(
        &samples_features,
        reference,
        |images| extract(&extractor, images, &ref_what),
        &kid_config,
        classes.as_ref().map(|(ours, theirs)| (ours, theirs)),
    )?;
    if args.class_balanced && sampled.is_some() && classes.is_none() {
        eprintln!(
            "per-class FID needs a labelled reference dataset (--dataset NAME); {ref_what} has \
             no labels, so only the class-balanced FID is reported"
        );
    }
    let report = FidReport {
        scores: &scores,
        class_balanced: sampled.is_some(),
        samples: (&samples_what, samples.len(), samples_meta),
        reference: &ref_what,
        extractor: (&extractor, verified, samples_features.dim()),
        seconds: started.elapsed().as_secs_f64(),
    };
    report.print();
    match &args.out {
        Some(out) => report.write_json(out),
        None => Ok(()),
    }
}

/// What `ddpm eval fid` prints and writes as JSON.
struct FidReport<'a> {
    scores: &'a fid::FidScores,
    /// Whether the samples are a class-conditional checkpoint's, sampled class-balanced.
    class_balanced: bool,
    /// What the samples are, how many, and their JSON details.
    samples: (&'a str, usize, serde_json::Value),
    reference: &'a str,
    /// The network, whether its sha256 was verified, the feature dimension.
    extractor: (&'a InceptionExtractor, bool, usize),
    seconds: f64,
}

impl FidReport<'_> {
    /// The scores on stdout, the sets and the time on stderr.
    fn print(&self) {
        let s = self.scores;
        if self.class_balanced {
            println!("FID {:.4} (class-balanced)", s.fid);
        } else {
            println!("FID {:.4}", s.fid);
        }
        for entry in &s.per_class {
            println!(
                "FID class {} ({}) {:.4}",
                entry.class, entry.name, entry.fid
            );
        }
        match &s.kid {
            Some(k) => println!(
                "KID {:.6} ± {:.6} ({} subsets of {})",
                k.mean, k.std, k.n_subsets, k.subset_size
            ),
            None => {
                println!("KID n/a (the reference is statistics only; pass images, --dataset or `ddpm eval stats --features` output for KID)")
            }
        }
        eprintln!(
            "{} samples against {} in {:.1} s",
            self.samples.1, self.reference, self.seconds
        );
    }

    /// The result as JSON in `out`.
    fn write_json(&self, out: &Path) -> Result<()> {
        let (extractor, verified, dim) = self.extractor;
        let (what, n, details) = &self.samples;
        let mut result = json!({
            "fid": self.scores.fid,
            "kid": self.scores.kid,
            "samples": {"source": what, "n": n, "details": details},
            "reference": {"source": self.reference, "n": self.scores.n_reference},
            "inception": {
                "path": extractor.path().display().to_string(),
                "sha256_verified": verified,
                "input_size": extractor.input_size(),
                "resize": extractor.resize().name(),
                "dim": dim,
            },
            "seconds": self.seconds,
        });
        if !self.scores.per_class.is_empty() {
            let per_class: Vec<serde_json::Value> = self
                .scores
                .per_class
                .iter()
                .map(|c| {
                    json!({
                        "class": c.class,
                        "name": c.name,
                        "model_name": c.model_name,
                        "fid": c.fid,
                        "n_samples": c.n_samples,
                        "n_reference": c.n_reference,
                    })
                })
                .collect();
            result["per_class"] = json!(per_class);
        }
        let text = serde_json::to_string_pretty(&result).expect("serialisable") + "\n";
        std::fs::write(out, text).with_context(|| format!("cannot write {}", out.display()))
    }
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
    let images = fid::first_images(images, args.n, &what)?;
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
