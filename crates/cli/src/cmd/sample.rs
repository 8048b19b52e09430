//! `ddpm sample`: draw images from a checkpoint (its EMA weights by default) or a diffusers folder,
//! through [`sample::Pipeline`], with DDPM, DDIM or
//! DPM-Solver++(2M), in batches, and write a PNG grid, one PNG per image, the notebook's
//! reverse-process strip, an animated GIF of chains and an `.npz` of uint8 NHWC images (the
//! format FID tools read).
//!
//! Every flag, output path and the checkpoint are checked before sampling starts, so a mistake
//! costs seconds, not a sampling run.
//!
//! Under a launch (torchrun, or `--nproc-per-node N`) the batches are shared out among the ranks
//! and gathered on rank 0, which writes the outputs: the same images as in one process
//! ([`crate::ranks`]).
//!
//! A class-conditional model samples the classes of `--class` (repeatable, or `all`) with
//! classifier-free guidance `--guidance W` ([`sample::guidance`]): the images come in one block
//! per class, and the grid has one row per class, labelled with the class's name.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::DeviceSpec;
use data::images::{make_grid, write_samples_npz, GridSpec, ImageSet};
use sample::{
    BatchPlan, ClassConditioning, InitialNoise, Pipeline, PipelineSpec, SampleRequest,
    SamplerConfig, Samples,
};

use crate::sampler_args::{describe, SamplerArgs};

/// Arguments of `ddpm sample`.
#[derive(Debug, clap::Args)]
pub struct SampleArgs {
    /// A run directory (its newest checkpoint), a checkpoint directory
    /// (runs/NAME/checkpoints/step-N), or a diffusers model or pipeline folder.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    sampler: SamplerArgs,
    /// How many images (default 64; with --class, --nrow per class).
    #[arg(long, short = 'n')]
    n_images: Option<usize>,
    /// A class-conditional model: sample this class (a number, or a name the model records);
    /// repeatable, or `all` for every class. The images come in one block per class, in the
    /// order given; the grid has one row per class, labelled.
    #[arg(long = "class", value_name = "C")]
    classes: Vec<String>,
    /// Start every chain from this x_T instead of the seeded draw: an f32 [N, C, H, W] array
    /// in a .npy, .npz or .safetensors file, row i for image i (N = -n). Deterministic samplers
    /// are then a function of the file alone; ancestral ones still draw their per-step noise
    /// from --seed.
    #[arg(long, value_name = "FILE")]
    noise: Option<PathBuf>,
    /// Images per batch: bounds memory; the images depend on it (see --seed).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Seed: batch b is seeded from (seed, b), so with the same --batch, a run's first batches
    /// are those of any larger run.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// libtorch intra-op CPU threads (default: libtorch's choice; in a launch on the CPU, that
    /// divided by the number of ranks on this machine).
    #[arg(long)]
    threads: Option<i32>,
    /// Share the batches among N processes on this machine (a free loopback port, one GPU each
    /// on CUDA), as `torchrun --nproc-per-node N` does; rank 0 gathers the images and writes
    /// the outputs, which are those of one process.
    #[arg(long, value_name = "N")]
    nproc_per_node: Option<usize>,
    /// Seconds a rank waits for the others (the rendezvous, the gathering of the images).
    #[arg(long, value_name = "SECS", default_value_t = crate::ranks::SAMPLE_TIMEOUT_SECS)]
    dist_timeout: u64,
    /// cuDNN's autotuner on CUDA: times the convolution algorithms once per shape and keeps
    /// the fastest (faster steps; last-bit differences between processes). No effect on the CPU.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    cudnn_benchmark: bool,
    /// Write a PNG grid of the first --grid-n images.
    #[arg(long)]
    grid: Option<PathBuf>,
    /// Images in the grid (default 64; with --class, all of them).
    #[arg(long)]
    grid_n: Option<usize>,
    /// Images per grid row (with --class: images per class when -n is not given; the grid then
    /// has one row per class).
    #[arg(long, default_value_t = 8)]
    nrow: usize,
    /// Write one PNG per image into this directory (000000.png, …).
    #[arg(long)]
    png_dir: Option<PathBuf>,
    /// Replace the numbered PNGs (000000.png, …) that --png-dir already holds. Without it, a
    /// --png-dir that holds images is refused, so that no scoring mixes them with these samples.
    #[arg(long)]
    overwrite: bool,
    /// Write the reverse-process strip of the first image (evenly spaced snapshots of its
    /// chain, the last being the sample).
    #[arg(long)]
    strip: Option<PathBuf>,
    /// Snapshots in the strip.
    #[arg(long, default_value_t = 10)]
    strip_len: usize,
    /// Write an animated GIF of the chains of the first --gif-chains images.
    #[arg(long)]
    gif: Option<PathBuf>,
    /// GIF frames, evenly spaced along the chain (fewer when the sampler has fewer steps).
    #[arg(long, default_value_t = 40)]
    gif_frames: usize,
    /// Chains shown in the GIF.
    #[arg(long, default_value_t = 16)]
    gif_chains: usize,
    /// Milliseconds per GIF frame (the last frame is held for a second).
    #[arg(long, default_value_t = 80)]
    gif_delay_ms: u32,
    /// Write every image as an .npz holding `arr_0`, uint8 [N, H, W, C] (as FID tools read).
    #[arg(long)]
    npz: Option<PathBuf>,
    /// Pixels per image pixel in the grid, strip and GIF.
    #[arg(long, default_value_t = 1)]
    scale: usize,
}

/// Checks that `path` can be written, creating its parent directories, without leaving a file
/// behind.
fn check_writable_file(path: &Path, flag: &str) -> Result<()> {
    let fail = |e: &dyn std::fmt::Display| {
        anyhow::anyhow!("{flag} {}: cannot write there: {e}", path.display())
    };
    if path.is_dir() {
        bail!("{flag} {} is a directory: pass a file name", path.display());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| fail(&e))?;
    }
    let existed = path.exists();
    fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| fail(&e))?;
    if !existed {
        fs::remove_file(path).map_err(|e| fail(&e))?;
    }
    Ok(())
}

fn check_writable_dir(dir: &Path, flag: &str) -> Result<()> {
    fs::create_dir_all(dir)
        .with_context(|| format!("{flag} {}: cannot create the directory", dir.display()))?;
    check_writable_file(&dir.join(".ddpm-write-test"), flag)
}

/// Checks the counts and the outputs.
fn check_args(args: &SampleArgs) -> Result<()> {
    for (value, flag) in [
        (args.n_images.unwrap_or(1), "--n-images"),
        (args.batch, "--batch"),
        (args.grid_n.unwrap_or(1), "--grid-n"),
        (args.nrow, "--nrow"),
        (args.strip_len, "--strip-len"),
        (args.gif_frames, "--gif-frames"),
        (args.gif_chains, "--gif-chains"),
        (args.scale, "--scale"),
    ] {
        if value == 0 {
            bail!("{flag} 0: it must be at least 1");
        }
    }
    if args.grid.is_none()
        && args.png_dir.is_none()
        && args.strip.is_none()
        && args.gif.is_none()
        && args.npz.is_none()
    {
        bail!("nothing to write: pass --grid, --png-dir, --strip, --gif or --npz");
    }
    // Only rank 0 writes the outputs, so only it tries them: the ranks of a launch would
    // race on the probe file (one removing it while another checks it).
    let launch = torch_ext::dist::LaunchEnv::from_env().context("the torchrun variables")?;
    if launch.is_some_and(|env| env.rank != 0) {
        return Ok(());
    }
    for (path, flag) in [
        (&args.grid, "--grid"),
        (&args.strip, "--strip"),
        (&args.gif, "--gif"),
        (&args.npz, "--npz"),
    ] {
        if let Some(path) = path {
            check_writable_file(path, flag)?;
        }
    }
    if let Some(dir) = &args.png_dir {
        let held = images_in(dir)?;
        if held > 0 && !args.overwrite {
            bail!(
                "--png-dir {}: the folder already holds {held} image(s), which would mix with \
                 these samples: choose an empty folder, or pass --overwrite to replace its \
                 numbered PNGs",
                dir.display()
            );
        }
        check_writable_dir(dir, "--png-dir")?;
    }
    Ok(())
}

/// How many image files `dir` holds at its top level (none when it does not exist yet).
fn images_in(dir: &Path) -> Result<usize> {
    if !dir.exists() {
        return Ok(0);
    }
    let entries = fs::read_dir(dir)
        .with_context(|| format!("--png-dir {}: cannot list it", dir.display()))?;
    let mut n = 0;
    for entry in entries {
        let path = entry
            .with_context(|| format!("--png-dir {}: cannot list it", dir.display()))?
            .path();
        if path.is_file() && data::images::is_image_name(&path) {
            n += 1;
        }
    }
    Ok(n)
}

/// Removes the numbered PNGs (`000000.png`, …) an earlier `--png-dir` wrote into `dir`.
fn clear_numbered_pngs(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir)
        .with_context(|| format!("--png-dir {}: cannot list it", dir.display()))?;
    for entry in entries {
        let path = entry
            .with_context(|| format!("--png-dir {}: cannot list it", dir.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let numbered = name.len() == 10
            && name.ends_with(".png")
            && name[..6].bytes().all(|b| b.is_ascii_digit());
        if numbered && path.is_file() {
            fs::remove_file(&path)
                .with_context(|| format!("--overwrite: cannot remove {}", path.display()))?;
        }
    }
    Ok(())
}

/// A grid of u8 NCHW images as RGB pixels: (width, height, HWC RGB).
fn rgb_grid(
    images: &[u8],
    shape: [usize; 4],
    nrow: usize,
    scale: usize,
) -> Result<(u32, u32, Vec<u8>)> {
    let spec = GridSpec {
        nrow,
        scale,
        ..GridSpec::default()
    };
    let grid = make_grid(images, shape, &spec)?;
    Ok((grid.width as u32, grid.height as u32, grid.to_rgb()))
}

/// Writes `frames` (u8 NCHW each, of `shape`) as a looping GIF, each frame a grid.
fn write_gif(
    path: &Path,
    frames: &[Vec<u8>],
    shape: [usize; 4],
    scale: usize,
    delay_ms: u32,
) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    use image::{Delay, Frame, RgbaImage};
    let nrow = (shape[0] as f64).sqrt().ceil() as usize;
    let file = fs::File::create(path)
        .with_context(|| format!("--gif {}: cannot create", path.display()))?;
    let mut encoder = GifEncoder::new_with_speed(std::io::BufWriter::new(file), 10);
    encoder
        .set_repeat(Repeat::Infinite)
        .with_context(|| format!("--gif {}", path.display()))?;
    for (k, frame) in frames.iter().enumerate() {
        let (w, h, rgb) = rgb_grid(frame, shape, nrow, scale)?;
        let rgba: Vec<u8> = rgb
            .chunks_exact(3)
            .flat_map(|p| [p[0], p[1], p[2], 255])
            .collect();
        let image = RgbaImage::from_raw(w, h, rgba).expect("grid size");
        let ms = if k + 1 == frames.len() {
            1000
        } else {
            delay_ms
        };
        encoder
            .encode_frame(Frame::from_parts(
                image,
                0,
                0,
                Delay::from_numer_denom_ms(ms, 1),
            ))
            .with_context(|| format!("--gif {}: cannot write frame {k}", path.display()))?;
    }
    Ok(())
}

/// Writes one PNG (gray or RGB) from u8 CHW.
fn write_png(path: &Path, chw: &[u8], [c, h, w]: [usize; 3]) -> Result<()> {
    let pixels: Vec<u8> = (0..h * w)
        .flat_map(|p| (0..c).map(move |ch| chw[ch * h * w + p]))
        .collect();
    data::images::save_png(path, &pixels, w, h, c)?;
    Ok(())
}

/// `n` indices spread evenly over `0..len`, ending at `len - 1` (as the sampler's snapshots).
fn evenly(len: usize, n: usize) -> Vec<usize> {
    let n = n.min(len);
    (1..=n).map(|k| k * len / n - 1).collect()
}

/// The classes `--class` names, in order: numbers, names the model records, or `all`.
///
/// # Errors
/// On an unconditional model, a class out of range or a name the model does not know.
fn parse_classes(values: &[String], spec: &PipelineSpec, checkpoint: &Path) -> Result<Vec<i64>> {
    let Some(k) = spec.num_classes() else {
        bail!(
            "--class: the model of --checkpoint {} is not class-conditional (train one with \
             `ddpm train --class-cond`)",
            checkpoint.display()
        );
    };
    let mut classes = Vec::new();
    for value in values {
        if value == "all" {
            classes.extend(0..k);
            continue;
        }
        let class = match value.parse::<i64>() {
            Ok(c) => c,
            Err(_) => spec
                .class_names
                .iter()
                .position(|name| name.eq_ignore_ascii_case(value))
                .map(|c| c as i64)
                .with_context(|| {
                    let names = if spec.class_names.is_empty() {
                        "it records no class names: use a number".to_string()
                    } else {
                        format!("its classes are {}", spec.class_names.join(", "))
                    };
                    format!("--class {value}: not a class of the model ({names}), nor a number")
                })?,
        };
        if !(0..k).contains(&class) {
            bail!(
                "--class {class} is out of range: the model has {k} classes, 0 to {}",
                k - 1
            );
        }
        classes.push(class);
    }
    Ok(classes)
}

/// What `ddpm sample` draws, worked out from its flags and the model before anything loads.
struct Plan {
    spec: PipelineSpec,
    sampler: SamplerConfig,
    /// The classes of `--class`, in order (empty: unconditional).
    classes: Vec<i64>,
    class_names: Vec<String>,
    guidance: f64,
    /// Images in all.
    n: usize,
    /// Images in the grid.
    grid_n: usize,
    /// Images per class (one grid row each).
    per_class: usize,
    /// Images whose chains are kept (the GIF's, or the strip's one).
    n_chains: usize,
    /// Snapshots kept along each chain.
    n_snapshots: usize,
    /// The starting x_T of `--noise`.
    noise: Option<InitialNoise>,
    /// Network evaluations per image.
    nfe: usize,
}

impl Plan {
    /// Resolves `--checkpoint` and the sampler, and checks the classes and counts.
    fn new(args: &SampleArgs) -> Result<Self> {
        let spec = args.sampler.resolve(&args.checkpoint)?;
        if spec.kind
            == (sample::SourceKind::Diffusers {
                scheduler_config: None,
            })
        {
            eprintln!(
                "{}: no {} beside it or in ../scheduler, so sampling uses DDPMScheduler's \
                 defaults (T = 1000, linear betas 1e-4 to 0.02, epsilon prediction, clipped)",
                spec.dir.display(),
                sample::pipeline::SCHEDULER_CONFIG
            );
        }
        // T, the number of training steps, from the config (the pipeline builds the schedule).
        let sampler = args.sampler.config_for(&spec)?;
        // First: --guidance on an unconditional model says so, not "pass --class".
        let guidance = args
            .sampler
            .guidance_for(spec.num_classes(), &args.checkpoint)?;
        let classes = if args.classes.is_empty() {
            if args.sampler.guidance.is_some() {
                bail!("--guidance applies to the classes of --class: pass --class C (or all)");
            }
            Vec::new()
        } else {
            parse_classes(&args.classes, &spec, &args.checkpoint)?
        };
        let class_names = classes.iter().map(|&c| spec.class_name(c)).collect();
        let n = match (args.n_images, classes.len()) {
            (Some(n), _) => n,
            (None, 0) => 64,
            (None, n_classes) => n_classes * args.nrow,
        };
        if !classes.is_empty() && n < classes.len() {
            bail!(
                "-n {n} is fewer images than the {} classes of --class: at least one each",
                classes.len()
            );
        }
        let noise = match &args.noise {
            Some(path) => {
                let noise = InitialNoise::read(path).context("--noise")?;
                let size = spec.model.image_size();
                noise
                    .check([spec.model.in_channels(), size, size], n)
                    .context("--noise and -n")?;
                Some(noise)
            }
            None => None,
        };
        let nfe = sampler.nfe(spec.schedule.n_steps())?;
        let (n_chains, n_snapshots) = match (args.gif.is_some(), args.strip.is_some()) {
            (true, _) => (args.gif_chains.min(n), args.gif_frames),
            (false, true) => (1, args.strip_len),
            (false, false) => (0, 0),
        };
        Ok(Self {
            grid_n: args
                .grid_n
                .unwrap_or(if classes.is_empty() { 64 } else { n }),
            // One block of images per class, one grid row per block.
            per_class: n.div_ceil(classes.len().max(1)),
            spec,
            sampler,
            classes,
            class_names,
            guidance,
            n,
            n_chains,
            n_snapshots,
            noise,
            nfe,
        })
    }

    /// The library's request for `pipe`.
    fn request(&self, args: &SampleArgs, pipe: &Pipeline) -> SampleRequest {
        let mut options = pipe.options(&self.sampler, args.sampler.clip_x0(), self.n_snapshots);
        options.initial_noise = self.noise.clone();
        if !self.classes.is_empty() {
            options.class_cond = Some(ClassConditioning::blocks(
                &self.classes,
                self.n,
                self.guidance,
            ));
        }
        SampleRequest {
            sampler: self.sampler.clone(),
            options,
            plan: BatchPlan {
                n_images: self.n,
                batch_size: args.batch.min(self.n),
                image_shape: pipe.image_shape(),
                seed: args.seed,
                n_chains: self.n_chains,
            },
        }
    }
}

/// The progress bar of rank 0 (hidden on the others), counting `n_steps` steps.
fn progress_bar(main: bool, n_steps: usize) -> ProgressBar {
    let bar = if main {
        ProgressBar::new(n_steps as u64)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{wide_bar}] {msg} ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar
}

/// Writes the outputs the flags ask for; returns the paths written, in the order reported.
fn write_outputs(args: &SampleArgs, plan: &Plan, samples: &Samples) -> Result<Vec<PathBuf>> {
    let [c, h, w] = samples.image_shape;
    let image_len = samples.image_len();
    let mut written = Vec::new();
    if let Some(dir) = &args.png_dir {
        if args.overwrite {
            clear_numbered_pngs(dir)?;
        }
        for k in 0..samples.len() {
            let path = dir.join(format!("{k:06}.png"));
            write_png(&path, samples.image(k), [c, h, w])?;
        }
    }
    if let Some(path) = &args.grid {
        let count = plan.grid_n.min(samples.len());
        let nrow = if plan.classes.is_empty() {
            args.nrow
        } else {
            plan.per_class
        };
        let spec = GridSpec {
            nrow,
            scale: args.scale,
            ..GridSpec::default()
        };
        let grid = make_grid(
            &samples.images[..count * image_len],
            samples.shape_of(count),
            &spec,
        )?;
        if plan.classes.is_empty() {
            grid.save_png(path)
                .with_context(|| format!("--grid {}", path.display()))?;
        } else {
            let (w, h, rgb) = crate::plot::label_rows(&grid, &plan.class_names)?;
            data::images::save_png(path, &rgb, w as usize, h as usize, 3)
                .with_context(|| format!("--grid {}", path.display()))?;
        }
        written.push(path.clone());
    }
    if let Some(path) = &args.strip {
        let frames = &samples.frames;
        let picked = evenly(frames.len(), args.strip_len);
        let strip: Vec<u8> = picked
            .iter()
            .flat_map(|&k| frames[k][..image_len].iter().copied())
            .collect();
        let spec = GridSpec {
            nrow: picked.len(),
            scale: args.scale,
            ..GridSpec::default()
        };
        make_grid(&strip, samples.shape_of(picked.len()), &spec)?
            .save_png(path)
            .with_context(|| format!("--strip {}", path.display()))?;
        written.push(path.clone());
    }
    if let Some(path) = &args.gif {
        let shape = samples.shape_of(plan.n_chains);
        write_gif(path, &samples.frames, shape, args.scale, args.gif_delay_ms)?;
        written.push(path.clone());
    }
    if let Some(path) = &args.npz {
        let images = ImageSet::new(samples.images.clone(), samples.shape_of(samples.len()))?;
        write_samples_npz(path, &images).with_context(|| format!("--npz {}", path.display()))?;
        written.push(path.clone());
    }
    if let Some(dir) = &args.png_dir {
        written.push(dir.clone());
    }
    Ok(written)
}

/// Runs `ddpm sample`.
pub fn run(mut args: SampleArgs) -> Result<()> {
    args.checkpoint = crate::checkpoint_arg::local(&args.checkpoint, "--checkpoint")?;
    if let Some(n) = args.nproc_per_node {
        if !crate::launch::is_launched_rank() {
            // Refused once, before any rank starts.
            check_args(&args)?;
            return crate::launch::launch(n, args.device, "sampling");
        }
    }
    check_args(&args)?;
    let plan = Plan::new(&args)?;
    let joined = crate::ranks::join(
        args.device,
        args.threads,
        std::time::Duration::from_secs(args.dist_timeout),
    )?;
    let (device, main) = (joined.device, joined.is_main());
    crate::runtime::configure_cudnn(device, args.cudnn_benchmark);
    let (dir, weights_name) = describe(&plan.spec);
    let pipe = Pipeline::from_spec(plan.spec.clone(), device)
        .with_context(|| format!("--checkpoint {}", args.checkpoint.display()))?;
    let request = plan.request(&args, &pipe);
    let n_steps = request.n_steps(&pipe)?;
    let (n, batch_plan) = (plan.n, &request.plan);
    let own_batches = match &joined.dist {
        Some(dist) => sample::shard::own_batches(batch_plan, dist.rank(), dist.world_size()),
        None => batch_plan.n_batches(),
    };
    let bar = progress_bar(main, own_batches * n_steps);
    if main {
        let ranks = joined.dist.as_ref().map_or(String::new(), |d| {
            format!(
                " ({} ranks, {own_batches} batches on rank 0)",
                d.world_size()
            )
        });
        let [c, s, _] = batch_plan.image_shape;
        eprintln!(
            "sampling {n} images of {c}x{s}x{s} from {} ({}), {:?}, {n_steps} steps, NFE {} per image, batches of {}, on {device:?}{ranks}",
            dir.display(),
            weights_name,
            plan.sampler,
            plan.nfe,
            batch_plan.batch_size
        );
        if let Some(noise) = &plan.noise {
            eprintln!("x_T from {}", noise.path.display());
        }
        if !plan.classes.is_empty() {
            eprintln!(
                "classes {} ({} images each), guidance W = {} (eps_u + W (eps_c - eps_u))",
                plan.class_names.join(", "),
                plan.per_class,
                plan.guidance
            );
        }
    }
    let started = std::time::Instant::now();
    let n_batches = batch_plan.n_batches();
    let on_batch = |batch_idx: usize, done: usize| {
        let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!(
            "batch {}/{n_batches}, {done}/{n} images, {rate:.2} img/s",
            batch_idx + 1
        ));
    };
    let samples = sample::shard::sample_images(
        &pipe,
        &request,
        joined.dist.as_ref(),
        |_, _| bar.inc(1),
        on_batch,
    )?;
    // Rank 0 has the images and writes the outputs.
    let Some(samples) = samples else {
        return Ok(());
    };
    bar.finish_and_clear();
    let written = write_outputs(&args, &plan, &samples)?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "{n} images in {secs:.1} s ({:.2} img/s), NFE {} per image",
        n as f64 / secs.max(1e-9),
        plan.nfe
    );
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spread_indices_end_at_the_last() {
        assert_eq!(evenly(40, 10), [3, 7, 11, 15, 19, 23, 27, 31, 35, 39]);
        assert_eq!(evenly(5, 10), [0, 1, 2, 3, 4]);
        assert!(evenly(0, 10).is_empty());
    }

    #[test]
    fn a_gif_has_one_frame_per_snapshot_and_decodes() {
        use image::AnimationDecoder;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chains.gif");
        let shape = [4, 3, 2, 2];
        let frames: Vec<Vec<u8>> = (0..7u8).map(|k| vec![k * 30; 48]).collect();
        write_gif(&path, &frames, shape, 1, 50).unwrap();
        let decoder = image::codecs::gif::GifDecoder::new(std::io::BufReader::new(
            fs::File::open(&path).unwrap(),
        ))
        .unwrap();
        let decoded = decoder.into_frames().collect_frames().unwrap();
        assert_eq!(decoded.len(), 7);
        // 2×2 tiles of 2 pixels with 2 pixels of padding: 10×10.
        assert_eq!(decoded[0].buffer().dimensions(), (10, 10));
        assert_eq!(decoded[3].buffer().get_pixel(2, 2).0, [90, 90, 90, 255]);
    }

    #[test]
    fn unwritable_outputs_are_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        fs::write(&file, b"x").unwrap();
        // A path under a regular file can never be created.
        let err = check_writable_file(&file.join("grid.png"), "--grid").unwrap_err();
        assert!(format!("{err:#}").starts_with("--grid "), "{err:#}");
        let err = check_writable_file(dir.path(), "--npz").unwrap_err();
        assert!(format!("{err:#}").contains("is a directory"), "{err:#}");
        // A writable path is left as it was.
        let ok = dir.path().join("sub/out.png");
        check_writable_file(&ok, "--grid").unwrap();
        assert!(!ok.exists() && ok.parent().unwrap().is_dir());
    }
}
