//! `ddpm eval nll`: the negative log-likelihood bound of a checkpoint in bits per dimension on a
//! dataset split or an `.npz` of images (Ho et al. 2020, Table 2), with its standard error over
//! images, the per-t terms as JSON and a PNG plot. The computation is `eval::NllPlan`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;

use eval::{NllEvent, NllPlan, NllReport, Ranks, Source};
use model::VarianceOutput;
use sample::likelihood::ModelVariance;
use schedule::VarianceType;

use crate::device::DeviceSpec;
use crate::inception::progress_bar;
use crate::plot::{line_charts, Chart, Series};
use crate::sampler_args::{VarianceArg, WeightsArg};

/// Arguments of `ddpm eval nll`.
#[derive(Debug, clap::Args)]
pub struct NllArgs {
    /// A run directory (its newest checkpoint), one checkpoint directory, or a diffusers folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Which weights of a training checkpoint (a diffusers folder has one set).
    #[arg(long, value_enum, default_value = "ema")]
    weights: WeightsArg,
    /// The images: an .npz of uint8 NHWC images (`arr_0` or the first array) or a folder.
    #[arg(long, conflicts_with = "dataset")]
    images: Option<PathBuf>,
    /// The images: cifar10, cifar100, mnist or fashion-mnist.
    #[arg(long)]
    dataset: Option<String>,
    /// The split of --dataset.
    #[arg(long, default_value = "test")]
    split: String,
    /// The directory of --dataset (default: data/DATASET, fetched when missing).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Do not download a missing dataset; fail instead.
    #[arg(long)]
    offline: bool,
    /// Use the first N images (default: all). On a CPU each image costs T network calls.
    #[arg(long)]
    n: Option<usize>,
    /// The fixed reverse variance Σ_θ the bound is computed with (a learned-variance model
    /// uses its own).
    #[arg(long, value_enum, default_value = "large")]
    variance: VarianceArg,
    /// Do not clamp the predicted x0 to [-1, 1] in the model's mean (the official code clamps).
    #[arg(long)]
    no_clip: bool,
    /// An estimate at 1/K of the cost: t = 0 and one t drawn from each stratum of K steps,
    /// weighted by K (unbiased, but not the bound itself; 1 = every t).
    #[arg(long, value_name = "K", default_value_t = 1)]
    t_stride: usize,
    /// Images per network call.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Seeds the noise of each (image, t), so a seed fixes the estimate.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the result (total, standard error, per-t terms, per-image totals) here as JSON;
    /// the plot of bits per t goes beside it as FILE.png.
    #[arg(long)]
    out: Option<PathBuf>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// libtorch intra-op CPU threads (default: libtorch's choice).
    #[arg(long)]
    threads: Option<i32>,
    /// Share the images among N processes on this machine (as `torchrun --nproc-per-node N`);
    /// rank 0 sums the terms (the same result as one process) and reports.
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// Seconds a rank waits for the others.
    #[arg(long, value_name = "SECS", default_value_t = crate::ranks::SAMPLE_TIMEOUT_SECS)]
    dist_timeout: u64,
}

/// Runs `ddpm eval nll`.
pub fn run(args: NllArgs) -> Result<()> {
    if let Some(out) = &args.out {
        crate::cmd::eval::check_out_folder(out, "--out")?;
    }
    if let Some(n) = args.nproc_per_node {
        if !crate::launch::is_launched_rank() {
            return crate::launch::launch(n, args.device, "evaluation");
        }
    }
    let joined = crate::ranks::join(
        args.device,
        args.threads,
        std::time::Duration::from_secs(args.dist_timeout),
    )?;
    let plan = plan(&args)?;
    plan.check()?;
    let ranks = Ranks::of(joined.dist.as_ref());
    let mut bar: Option<ProgressBar> = None;
    let report = plan.run(joined.device, ranks, &mut |event| match event {
        NllEvent::Started { calls } => {
            bar = ranks
                .is_main()
                .then(|| progress_bar(calls as u64, "network calls (image batch × t)"));
        }
        NllEvent::Progress { done } => {
            if let Some(bar) = &bar {
                bar.set_position(done as u64);
            }
        }
    })?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let Some(report) = report else {
        return Ok(());
    };
    print_report(&plan, &report);
    if let Some(out) = &args.out {
        let text = serde_json::to_string_pretty(&report.to_json(&plan)).expect("serialisable");
        std::fs::write(out, text + "\n")
            .with_context(|| format!("cannot write {}", out.display()))?;
        let png = out.with_extension("png");
        plot(&report, &png)?;
        eprintln!("result written to {} and {}", out.display(), png.display());
    }
    Ok(())
}

/// The plan of the flags: the checkpoint resolved (JSON only), the images read.
fn plan(args: &NllArgs) -> Result<NllPlan> {
    let weights = match args.weights {
        WeightsArg::Ema => sample::Weights::Ema,
        WeightsArg::Model => sample::Weights::Model,
    };
    let spec = sample::PipelineSpec::resolve(&args.checkpoint, weights)
        .with_context(|| format!("--checkpoint {}", args.checkpoint.display()))?;
    let (images, what) = match (&args.images, &args.dataset) {
        (Some(path), _) => match Source::read(path, false)? {
            Source::Images(images) => (images, path.display().to_string()),
            Source::Statistics(_) | Source::Features(_) | Source::Reference(_) => {
                unreachable!("refused by Source::read")
            }
        },
        (None, Some(name)) => {
            let (images, what, _) = crate::cmd::eval::load_dataset(
                name,
                &args.split,
                args.data.as_deref(),
                args.offline,
            )?;
            (images, what)
        }
        (None, None) => bail!("pass --dataset NAME [--split test] or --images FILE.npz"),
    };
    let variance = match (spec.variance, args.variance) {
        (VarianceOutput::LearnedRange, _) => ModelVariance::LearnedRange,
        (VarianceOutput::Fixed, VarianceArg::Large) => {
            ModelVariance::Fixed(VarianceType::FixedLarge)
        }
        (VarianceOutput::Fixed, VarianceArg::Small) => {
            ModelVariance::Fixed(VarianceType::FixedSmall)
        }
    };
    Ok(NllPlan {
        n: args.n.unwrap_or(images.len()),
        spec,
        images,
        what,
        variance,
        clip_x0: !args.no_clip,
        t_stride: args.t_stride,
        batch_size: args.batch_size,
        seed: args.seed,
    })
}

/// The figure on stdout, the details on stderr.
fn print_report(plan: &NllPlan, report: &NllReport) {
    let kind = if report.t_stride > 1 {
        format!(" (estimate: --t-stride {})", report.t_stride)
    } else {
        String::new()
    };
    println!(
        "NLL {:.4} ± {:.4} bits/dim{kind}",
        report.bits_per_dim, report.std_error
    );
    let decoder = report.per_t.first().filter(|s| s.t == 0).map(|s| s.bits);
    eprintln!(
        "{} images of {} in {:.1} s; prior term {:.2e}, decoder term (t = 0) {:.4} bits/dim",
        report.per_image.len(),
        plan.what,
        report.seconds,
        report.prior_bits,
        decoder.unwrap_or(f64::NAN)
    );
}

/// Bits per dimension of each term against t (log scale: the terms span orders of magnitude).
fn plot(report: &NllReport, path: &Path) -> Result<()> {
    let series = [Series {
        label: "L_t".into(),
        points: report
            .per_t
            .iter()
            .map(|s| (s.t as f64, s.bits.max(1e-12).log10()))
            .collect(),
    }];
    line_charts(
        path,
        &[Chart {
            title: "terms of the bound (t = 0: decoder)",
            x_label: "t",
            y_label: "log10 bits/dim",
            series: &series,
        }],
    )
}
