//! `ddpm eval sweep`: which sampler a checkpoint should use. Every (sampler, NFE, seed) of
//! `--samplers`, `--nfe` and `--seeds` is scored against one reference ([`eval::SweepPlan`]:
//! one `ddpm eval fid --checkpoint` each, sharded across the ranks of a launch), with the full
//! DDPM chain as the reference line. After every pair the folder `--out` gets `sweep.json`
//! (the table, read back to resume: pairs already scored are kept), `sweep.md` (the summary)
//! and `sweep.png` (FID against NFE, one line per sampler).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::ProgressBar;

use eval::{
    CheckpointSamples, FidEvent, KidConfig, Ranks, SweepEvent, SweepPair, SweepPlan, SweepTable,
};

use crate::inception::{load_extractor, progress_bar, InceptionArgs};
use crate::plot::{line_charts, Chart, Series};
use crate::sampler_args::{SamplerArgs, WeightsArg};
use crate::sampler_spec::{parse_list, SamplerSpec};

/// Arguments of `ddpm eval sweep`.
#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// A run directory (its newest checkpoint), one checkpoint directory, or a diffusers folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// The samplers, comma-separated, each `name[:part]…` with parts an order (3), a spacing
    /// (quadratic, trailing, …), `sde`, `eta=X`: the values of `ddpm sample`'s sampler flags,
    /// e.g. dpm-solver++:3,ddim:quadratic,ddim.
    #[arg(long)]
    samplers: String,
    /// Network evaluations per image, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5,10,20,50")]
    nfe: Vec<usize>,
    /// Seeds, comma-separated: every pair is drawn from each (the same x_T for every sampler).
    #[arg(long, value_delimiter = ',', default_value = "0")]
    seeds: Vec<u64>,
    /// Samples per pair.
    #[arg(long, default_value_t = 1000)]
    n: usize,
    /// Reference: statistics (.npz with `mu`, `sigma`; FID), features (`ddpm eval stats
    /// --features`; FID and KID) or sample images.
    #[arg(long = "ref")]
    reference: PathBuf,
    /// The reference line: the full chain, as a spec (`ddpm:small` is σ² = β̃, `ddpm:large`
    /// σ² = β), scored once per seed.
    #[arg(long, default_value = "ddpm:small", conflicts_with = "no_full_chain")]
    full_chain: String,
    /// Do not score the full chain (it costs T network evaluations per image).
    #[arg(long)]
    no_full_chain: bool,
    /// Which weights of a training checkpoint.
    #[arg(long, value_enum, default_value = "ema")]
    weights: WeightsArg,
    /// Do not clamp the predicted x0 to [-1, 1] (every sampler).
    #[arg(long)]
    no_clip: bool,
    /// Samples per sampler batch.
    #[arg(long, default_value_t = 250)]
    sample_batch_size: usize,
    /// The output folder: sweep.json, sweep.md, sweep.png.
    #[arg(long)]
    out: PathBuf,
    /// Share each pair's sampling among N processes on this machine; rank 0 scores.
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// Seconds a rank waits for the others.
    #[arg(long, value_name = "SECS", default_value_t = crate::ranks::SAMPLE_TIMEOUT_SECS)]
    dist_timeout: u64,
    #[command(flatten)]
    inception: InceptionArgs,
}

impl SweepArgs {
    /// The flags every spec gets: the weights, and `--no-clip`.
    fn extra_flags(&self) -> Vec<String> {
        let weights = match self.weights {
            WeightsArg::Ema => "ema",
            WeightsArg::Model => "model",
        };
        let mut extra = vec!["--weights".to_string(), weights.to_string()];
        if self.no_clip {
            extra.push("--no-clip".into());
        }
        extra
    }

    /// The plan: every flag and pair checked against the checkpoint (its JSON only) before
    /// anything is sampled.
    fn plan(&self) -> Result<SweepPlan> {
        if self.nfe.is_empty() || self.nfe.contains(&0) {
            bail!("--nfe needs network evaluations of at least 1, e.g. 5,10,20,50");
        }
        if self.seeds.is_empty() {
            bail!("--seeds needs at least one seed");
        }
        if self.n < 2 {
            bail!("--n {}: FID needs at least 2 samples", self.n);
        }
        if !self.reference.exists() {
            bail!("--ref {}: no such file or folder", self.reference.display());
        }
        std::fs::create_dir_all(&self.out)
            .with_context(|| format!("--out {}: cannot create the folder", self.out.display()))?;
        let extra = self.extra_flags();
        // The flags but the sampler: weights and clipping, as every spec gets them.
        let base: SamplerArgs = {
            let spec = SamplerSpec::parse("ddpm", "--samplers")?;
            spec.args_for(None, &extra, "--samplers")?
        };
        let spec = base.resolve(&self.checkpoint)?;
        let n_train_steps = spec.schedule.n_steps();
        let specs = parse_list(&self.samplers, "--samplers")?;
        let mut pairs = Vec::new();
        for &seed in &self.seeds {
            for s in &specs {
                if s.is_full_chain() {
                    bail!("--samplers `{}`: the DDPM chain takes all T = {n_train_steps} steps; it is the reference line (--full-chain)", s.label);
                }
                for &nfe in &self.nfe {
                    pairs.push(SweepPair {
                        label: s.label.clone(),
                        nfe,
                        seed,
                        sampler: s.config(nfe, n_train_steps, &extra, "--samplers")?,
                        full_chain: false,
                        clip_x0: s.clip_x0,
                    });
                }
            }
            if !self.no_full_chain {
                let s = SamplerSpec::parse(&self.full_chain, "--full-chain")?;
                if !s.is_full_chain() {
                    bail!("--full-chain `{}`: the reference line is the DDPM chain (ddpm, ddpm:small or ddpm:large)", s.label);
                }
                pairs.push(SweepPair {
                    label: s.label.clone(),
                    nfe: n_train_steps,
                    seed,
                    sampler: s.config(n_train_steps, n_train_steps, &extra, "--full-chain")?,
                    full_chain: true,
                    clip_x0: s.clip_x0,
                });
            }
        }
        let samples = CheckpointSamples {
            spec,
            sampler: pairs[0].sampler.clone(),
            clip_x0: base.clip_x0(),
            guidance: 1.0,
            n: self.n,
            batch_size: self.sample_batch_size,
            seed: self.seeds[0],
            class_balanced: false,
            save_samples: None,
        };
        samples.classes()?;
        let plan = SweepPlan {
            samples,
            reference: self.reference.clone(),
            pairs,
            table: self.out.join("sweep.json"),
            kid: KidConfig {
                n_subsets: 100,
                subset_size: 1000,
                seed: 0,
            },
            inception_verified: false,
        };
        // A table of other settings is refused now, not after the first pair.
        plan.todo()?;
        Ok(plan)
    }
}

/// Runs `ddpm eval sweep`.
pub fn run(args: SweepArgs) -> Result<()> {
    if let Some(n) = args.nproc_per_node {
        if !crate::launch::is_launched_rank() {
            args.plan()?;
            return crate::launch::launch(n, args.inception.device, "evaluation");
        }
    }
    let mut plan = args.plan()?;
    let joined = crate::ranks::join(
        args.inception.device,
        args.inception.threads,
        std::time::Duration::from_secs(args.dist_timeout),
    )?;
    let ranks = Ranks::of(joined.dist.as_ref());
    if !ranks.is_main() {
        plan.draw_on_rank(joined.device, ranks)?;
        return Ok(());
    }
    let (extractor, verified) = load_extractor(&args.inception, Some(joined.device))?;
    plan.inception_verified = verified;
    let todo = plan.todo()?.len();
    eprintln!(
        "{} pairs ({todo} to score, {} kept from {}) of {} samples each",
        plan.pairs.len(),
        plan.pairs.len() - todo,
        plan.table.display(),
        args.n
    );
    let mut bar: Option<ProgressBar> = None;
    let mut written: Result<()> = Ok(());
    let table = plan.run(&extractor, ranks, &mut |event| match event {
        SweepEvent::Pair { index, of, pair } => eprintln!(
            "[{}/{of}] {} at NFE {}, seed {}",
            index + 1,
            pair.label,
            pair.nfe,
            pair.seed
        ),
        SweepEvent::Fid(FidEvent::Sampling { n }) => bar = Some(progress_bar(n as u64, "samples")),
        SweepEvent::Fid(FidEvent::Extracting { n, .. }) => {
            bar = Some(progress_bar(n as u64, "Inception features"))
        }
        SweepEvent::Fid(FidEvent::Sampled { done } | FidEvent::Extracted { done }) => {
            if let Some(bar) = &bar {
                bar.set_position(done as u64);
            }
        }
        SweepEvent::Fid(_) => {
            if let Some(bar) = bar.take() {
                bar.finish_and_clear();
            }
        }
        SweepEvent::Scored { row, table } => {
            eprintln!("FID {:.4}, {:.2} images/s", row.fid, row.images_per_s);
            if written.is_ok() {
                written = write_outputs(table, &args.out);
            }
        }
    })?;
    written?;
    write_outputs(&table, &args.out)?;
    print!("{}", table.to_markdown());
    for name in ["sweep.json", "sweep.md", "sweep.png"] {
        println!("{}", args.out.join(name).display());
    }
    Ok(())
}

/// Writes `sweep.md` and `sweep.png` into `out` (the table saves `sweep.json` itself).
fn write_outputs(table: &SweepTable, out: &Path) -> Result<()> {
    let md = out.join("sweep.md");
    std::fs::write(&md, table.to_markdown())
        .with_context(|| format!("cannot write {}", md.display()))?;
    let series = plot_series(table);
    if series.iter().all(|s| s.points.is_empty()) {
        return Ok(());
    }
    line_charts(
        &out.join("sweep.png"),
        &[Chart {
            title: "FID against network evaluations (mean over seeds)",
            x_label: "NFE",
            y_label: "FID",
            series: &series,
        }],
    )
}

/// One line per sampler over its NFEs, and the full chain as a flat line across them.
fn plot_series(table: &SweepTable) -> Vec<Series> {
    let summary = table.summary();
    let mut series: Vec<Series> = Vec::new();
    for line in summary.iter().filter(|l| !l.full_chain) {
        let point = (line.nfe as f64, line.fid_mean);
        match series.iter_mut().find(|s| s.label == line.sampler) {
            Some(s) => s.points.push(point),
            None => series.push(Series {
                label: line.sampler.clone(),
                points: vec![point],
            }),
        }
    }
    for s in &mut series {
        s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let nfes = summary
        .iter()
        .filter(|l| !l.full_chain)
        .map(|l| l.nfe as f64);
    let (lo, hi) = nfes.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
        (lo.min(x), hi.max(x))
    });
    for line in summary.iter().filter(|l| l.full_chain) {
        let (lo, hi) = if lo.is_finite() {
            (lo, hi)
        } else {
            (line.nfe as f64, line.nfe as f64)
        };
        series.push(Series {
            label: format!("{}, all {} steps", line.sampler, line.nfe),
            points: vec![(lo, line.fid_mean), (hi, line.fid_mean)],
        });
    }
    series
}
