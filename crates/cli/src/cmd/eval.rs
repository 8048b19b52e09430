//! `ddpm eval`: FID and KID of samples (an `.npz`, an image folder, a dataset, or fresh samples
//! from a checkpoint) against reference statistics or a dataset, and `ddpm eval stats` to cache
//! a dataset's statistics. The metrics themselves live in the `eval` crate.
//!
//! A class-conditional checkpoint is sampled class-balanced (image `i` of class `i mod K`, guided
//! with `--guidance W`); `--class-balanced` insists on it (a class-conditional model, `--n` a
//! multiple of K) and adds one FID per class, against the reference images of that class when
//! the reference is a labelled dataset (`--dataset`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;
use serde_json::json;

use data::images::{write_npz, NpyArray, NpyData};
use data::DatasetSpec;
use eval::{
    self as fid, CheckpointSamples, Classes, FidEvent, FidPlan, FidReport, Images, KidConfig,
    Ranks, ReferenceSet, SampleSet, Source, Statistics,
};

use crate::inception::{extract, load_extractor, progress_bar, InceptionArgs};
use crate::sampler_args::SamplerArgs;

/// Subcommands of `ddpm eval`.
#[derive(Debug, clap::Subcommand)]
pub enum EvalCommand {
    /// FID and KID of samples against a reference; prints both and writes a JSON result.
    Fid(Box<FidArgs>),
    /// Inception statistics (`mu`, `sigma`) of a dataset or a sample set, as an .npz.
    Stats(Box<StatsArgs>),
    /// FID against network evaluations: every sampler of --samplers at every --nfe, against
    /// one reference, with the full chain as reference line; a table and a plot, resumable.
    Sweep(Box<super::eval_sweep::SweepArgs>),
    /// The negative log-likelihood bound of a checkpoint in bits/dim on images (the paper's
    /// Table 2), with its standard error and per-t terms.
    Nll(Box<super::eval_nll::NllArgs>),
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
        EvalCommand::Sweep(args) => super::eval_sweep::run(*args),
        EvalCommand::Nll(args) => super::eval_nll::run(*args),
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

/// Loads a named dataset's images (fetching it when missing, as `ddpm train` does), what to
/// call them, and their classes.
pub(crate) fn load_dataset(
    name: &str,
    split: &str,
    dir: Option<&Path>,
    offline: bool,
) -> Result<(Images, String, Classes)> {
    let spec = dataset_spec(name, split)?;
    let dir = crate::datasets::ensure_data(&spec, dir, offline)?;
    let (dataset, _) = spec
        .load(&dir)
        .with_context(|| format!("cannot load {name} from {}", dir.display()))?;
    let classes = Classes {
        labels: dataset.labels().iter().map(|&l| i64::from(l)).collect(),
        names: dataset.class_names().to_vec(),
    };
    Ok((
        Images::from_dataset(&dataset),
        format!("{name} {split} ({})", dir.display()),
        classes,
    ))
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
    if let (Some(n), None) = (args.nproc_per_node, &args.checkpoint) {
        bail!(
            "--nproc-per-node {n} shares the sampling of --checkpoint among processes; scoring \
             --samples or --samples-dataset runs in one process: drop --nproc-per-node"
        );
    }
    if let Some(out) = &args.out {
        check_out_folder(out, "--out")?;
    }
    if let Some(out) = &args.save_samples {
        check_out_folder(out, "--save-samples")?;
    }
    Ok(())
}

/// Refuses an output file whose folder does not exist, before any expensive work.
pub(crate) fn check_out_folder(out: &Path, flag: &str) -> Result<()> {
    match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => bail!(
            "{flag} {}: the folder {} does not exist: create it first",
            out.display(),
            parent.display()
        ),
        _ => Ok(()),
    }
}

/// How `--checkpoint PATH` is sampled: the sampler flags resolved against the checkpoint (its
/// JSON only), `--n` (default 10,000), the batch size, the seed, the class balance.
fn checkpoint_samples(args: &FidArgs, path: &Path) -> Result<CheckpointSamples> {
    let spec = args.sampler.resolve(path)?;
    let sampler = args.sampler.config_for(&spec)?;
    let guidance = args.sampler.guidance_for(spec.num_classes(), path)?;
    let samples = CheckpointSamples {
        spec,
        sampler,
        clip_x0: args.sampler.clip_x0(),
        guidance,
        n: args.n.unwrap_or(10_000),
        batch_size: args.sample_batch_size,
        seed: args.seed,
        class_balanced: args.class_balanced,
        save_samples: args.save_samples.clone(),
    };
    samples.classes()?;
    Ok(samples)
}

/// The reference of `ddpm eval fid`: `--ref`, or `--dataset` (loaded, fetched when missing).
fn reference_set(args: &FidArgs) -> Result<ReferenceSet> {
    Ok(match (&args.reference, &args.ref_dataset.dataset) {
        (Some(path), _) => ReferenceSet::File(path.clone()),
        (None, Some(name)) => {
            let (images, what, classes) = load_dataset(
                name,
                &args.ref_dataset.split,
                args.ref_dataset.data.as_deref(),
                args.ref_dataset.offline,
            )?;
            ReferenceSet::Dataset {
                images,
                what,
                classes,
            }
        }
        (None, None) => bail!("pass --ref STATS_OR_SAMPLES or --dataset NAME [--split SPLIT]"),
    })
}

/// The samples of `ddpm eval fid`: `--samples`, `--checkpoint` (already planned) or
/// `--samples-dataset`.
fn sample_set(args: &FidArgs, checkpoint: Option<CheckpointSamples>) -> Result<SampleSet> {
    Ok(match (&args.samples, checkpoint, &args.samples_dataset) {
        (Some(path), _, _) => SampleSet::File(path.clone()),
        (None, Some(checkpoint), _) => SampleSet::Checkpoint(Box::new(checkpoint)),
        (None, None, Some(name)) => {
            let (images, what, _) = load_dataset(
                name,
                &args.samples_split,
                args.samples_data.as_deref(),
                args.ref_dataset.offline,
            )?;
            SampleSet::Images { images, what }
        }
        (None, None, None) => unreachable!("checked by check_fid_args"),
    })
}

fn run_fid(mut args: FidArgs) -> Result<()> {
    args.checkpoint = crate::checkpoint_arg::local_opt(&args.checkpoint, "--checkpoint")?;
    if let Some(n) = args.nproc_per_node {
        if !crate::launch::is_launched_rank() {
            check_fid_args(&args)?;
            return crate::launch::launch(n, args.inception.device, "evaluation");
        }
    }
    check_fid_args(&args)?;
    let joined = crate::ranks::join(
        args.inception.device,
        args.inception.threads,
        std::time::Duration::from_secs(args.dist_timeout),
    )?;
    let ranks = Ranks::of(joined.dist.as_ref());
    let checkpoint = match &args.checkpoint {
        Some(path) => Some(checkpoint_samples(&args, path)?),
        None => None,
    };
    let mut progress = Progress::default();
    if !ranks.is_main() {
        // The other ranks draw their share of the samples; rank 0 does the rest.
        if let Some(checkpoint) = checkpoint {
            checkpoint.draw(joined.device, ranks, &mut |event| progress.on(event))?;
        }
        return Ok(());
    }
    let (extractor, verified) = load_extractor(&args.inception, Some(joined.device))?;
    let plan = FidPlan {
        reference: reference_set(&args)?,
        samples: sample_set(&args, checkpoint)?,
        n: args.n,
        kid: KidConfig {
            n_subsets: args.kid_subsets,
            subset_size: args.kid_subset_size,
            seed: args.seed,
        },
        inception_verified: verified,
    };
    let report = plan.run(&extractor, ranks, &mut |event| progress.on(event))?;
    print_report(&report);
    match &args.out {
        Some(out) => {
            let text = serde_json::to_string_pretty(&report.to_json()).expect("serialisable");
            std::fs::write(out, text + "\n")
                .with_context(|| format!("cannot write {}", out.display()))
        }
        None => Ok(()),
    }
}

/// The progress bars and messages of `ddpm eval fid` (rank 0's; the other ranks' stay hidden).
#[derive(Default)]
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn on(&mut self, event: FidEvent<'_>) {
        match event {
            FidEvent::Sampling { n } => self.bar = Some(progress_bar(n as u64, "samples")),
            FidEvent::Extracting { what, n } => {
                let what = format!("Inception features of {what}");
                self.bar = Some(progress_bar(n as u64, &what));
            }
            FidEvent::Sampled { done } | FidEvent::Extracted { done } => {
                if let Some(bar) = &self.bar {
                    bar.set_position(done as u64);
                }
            }
            FidEvent::SamplingDone {
                n,
                checkpoint,
                seconds,
            } => {
                self.finish();
                eprintln!(
                    "sampled {n} images from {} in {seconds:.1} s",
                    checkpoint.display()
                );
            }
            FidEvent::SamplesSaved { path } => {
                eprintln!("samples written to {}", path.display());
            }
            FidEvent::ExtractingDone { what, n, seconds } => {
                self.finish();
                eprintln!(
                    "features of {what}: {n} images in {seconds:.1} s ({:.1} images/s)",
                    n as f64 / seconds.max(1e-9)
                );
            }
            FidEvent::NoPerClass { reference } => eprintln!(
                "per-class FID needs a labelled reference dataset (--dataset NAME); {reference} \
                 has no labels, so only the class-balanced FID is reported"
            ),
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// The scores on stdout, the sets and the time on stderr.
fn print_report(report: &FidReport) {
    let s = &report.scores;
    if report.class_balanced {
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
        report.samples.n, report.reference, report.seconds
    );
}

fn run_stats(args: StatsArgs) -> Result<()> {
    check_out_folder(&args.out, "--out")?;
    let (extractor, _) = load_extractor(&args.inception, None)?;
    let (images, what) = match (&args.samples, &args.dataset.dataset) {
        (Some(path), _) => match Source::read(path, false)? {
            Source::Images(images) => (images, path.display().to_string()),
            Source::Statistics(_) | Source::Features(_) | Source::Reference(_) => {
                unreachable!("refused by Source::read")
            }
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
