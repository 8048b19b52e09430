//! `ddpm forward`: the forward process q(x_t | x_0) on real images, as a strip: the clean image,
//! then x_t at evenly spaced t from 0 to T − 1.
//!
//! Each x_t is drawn from x_0 in closed form, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (Ho et al. 2020,
//! Eq. 4), with its own ε. The seed notebook instead fed each noisy image back in as the next
//! x_0, which compounds the noise (the image at t_k then carries the noise of every earlier
//! column as well) and shows a process that is noisier than the one the model learns.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use data::images::{make_grid, GridSpec};
use data::{DatasetSpec, Split, Transform};
use sample::{to_u8_nchw, Generator};
use schedule::tensor::ScheduleTensors;
use schedule::{Schedule, TimestepSpacing, Timesteps};
use train::{Preset, TrainConfig};

use super::data::DatasetKind;

/// Arguments of `ddpm forward`.
#[derive(Debug, clap::Args)]
pub struct ForwardArgs {
    /// Take the schedule, dataset and image size from this preset: seed, ddpm-cifar10,
    /// fashion-mnist.
    #[arg(long, default_value = "seed")]
    preset: String,
    /// Take them from a run, a checkpoint or a diffusers folder instead (a diffusers folder has
    /// no dataset: pass --dataset).
    #[arg(long, conflicts_with = "preset")]
    checkpoint: Option<PathBuf>,
    /// The dataset's format (default: the preset's or checkpoint's dataset).
    #[arg(long, value_enum)]
    dataset: Option<DatasetKind>,
    /// train, test or train+test (with --dataset; default train).
    #[arg(long)]
    split: Option<Split>,
    /// The dataset directory, or one CIFAR .bin file (default: data/DATASET).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The first image, by index in the dataset.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// How many images, one strip each.
    #[arg(long, default_value_t = 1)]
    rows: usize,
    /// Noisy columns per strip, at evenly spaced t from 0 to T − 1.
    #[arg(long, default_value_t = 10)]
    n_steps: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Pixels per image pixel.
    #[arg(long, default_value_t = 2)]
    scale: usize,
    /// Do not download a missing dataset; fail instead.
    #[arg(long)]
    offline: bool,
    /// The PNG to write.
    #[arg(long)]
    out: PathBuf,
}

/// x_t for every `t` in `timesteps`, each drawn from `x_0` with fresh noise from `gen` (Eq. 4).
///
/// # Shapes
/// `x_0`: `[N, C, H, W]` on `sched`'s device (and `gen`'s); returns one `[N, C, H, W]` per
/// timestep.
pub fn noisy_columns(
    sched: &ScheduleTensors,
    x_0: &Tensor,
    timesteps: &[usize],
    gen: &mut Generator,
) -> Vec<Tensor> {
    let n = x_0.size()[0];
    timesteps
        .iter()
        .map(|&t| {
            let t_batch = Tensor::full([n], t as i64, (Kind::Int64, x_0.device()));
            let noise = gen
                .randn_like(x_0)
                .expect("a generator of x_0's device draws f32 noise");
            sched.add_noise(x_0, &noise, &t_batch)
        })
        .collect()
}

fn spec_of(kind: DatasetKind, split: Option<Split>) -> Result<DatasetSpec> {
    let split = split.unwrap_or(Split::Train);
    Ok(match kind {
        DatasetKind::Cifar10 => DatasetSpec::Cifar10 { split },
        DatasetKind::Mnist => DatasetSpec::Mnist { split },
        DatasetKind::FashionMnist => DatasetSpec::FashionMnist { split },
        DatasetKind::Cifar100 => DatasetSpec::Cifar100 {
            split,
            label: data::cifar::Cifar100Label::Fine,
        },
        DatasetKind::Folder | DatasetKind::Lmdb | DatasetKind::Tfrecord => bail!(
            "--dataset {} is not supported here: use a --checkpoint whose config reads it",
            kind.name()
        ),
    })
}

/// What the strip needs from a preset or a checkpoint.
struct ForwardConfig {
    schedule: schedule::BetaSchedule,
    /// `None` for a diffusers folder, which names no dataset.
    dataset: Option<DatasetSpec>,
    transform: data::TransformConfig,
}

fn config_of(args: &ForwardArgs) -> Result<ForwardConfig> {
    let from_train = |config: TrainConfig| ForwardConfig {
        schedule: config.schedule,
        dataset: Some(config.dataset),
        transform: config.transform,
    };
    let Some(given) = &args.checkpoint else {
        return Ok(from_train(
            Preset::from_name(&args.preset)
                .context("--preset")?
                .config(),
        ));
    };
    let spec = sample::PipelineSpec::resolve(given, sample::Weights::Ema)
        .with_context(|| format!("--checkpoint {}", given.display()))?;
    match spec.kind {
        sample::SourceKind::Checkpoint => {
            let state = train::checkpoint::read_state(&spec.dir)?;
            let config: TrainConfig = serde_json::from_value(state.config).with_context(|| {
                format!(
                    "{}: `config` is not a valid training configuration",
                    spec.config_file.display()
                )
            })?;
            Ok(from_train(config))
        }
        sample::SourceKind::Diffusers { .. } => {
            let size = spec.model.image_size() as usize;
            Ok(ForwardConfig {
                schedule: spec.schedule,
                dataset: None,
                transform: data::TransformConfig {
                    size: Some([size, size]),
                    flip_p: 0.0,
                    normalize: true,
                },
            })
        }
    }
}

/// Runs `ddpm forward`.
pub fn run(mut args: ForwardArgs) -> Result<()> {
    args.checkpoint = crate::checkpoint_arg::local_opt(&args.checkpoint, "--checkpoint")?;
    for (value, flag) in [
        (args.rows, "--rows"),
        (args.n_steps, "--n-steps"),
        (args.scale, "--scale"),
    ] {
        if value == 0 {
            bail!("{flag} 0: it must be at least 1");
        }
    }
    let config = config_of(&args)?;
    let schedule = Schedule::new(&config.schedule).context("the schedule")?;
    let n_train = schedule.n_steps();
    if args.n_steps > n_train {
        bail!(
            "--n-steps {} is more than the schedule's T = {n_train} steps",
            args.n_steps
        );
    }
    if !config.transform.normalize {
        bail!(
            "the configuration does not normalise images to [-1, 1] (transform.normalize = false)"
        );
    }
    let spec = match (args.dataset, &config.dataset) {
        (Some(kind), _) => spec_of(kind, args.split)?,
        (None, _) if args.split.is_some() => bail!("--split applies with --dataset"),
        (None, Some(dataset)) => dataset.clone(),
        (None, None) => bail!(
            "--checkpoint {} is a diffusers folder, which names no dataset: pass --dataset",
            args.checkpoint
                .as_deref()
                .unwrap_or(Path::new(""))
                .display()
        ),
    };
    let data_dir = crate::datasets::ensure_data(&spec, args.data.as_deref(), args.offline)?;
    let (dataset, _) = spec
        .load(&data_dir)
        .with_context(|| format!("cannot load the dataset from {}", data_dir.display()))?;
    if args.index + args.rows > dataset.len() {
        bail!(
            "--index {} --rows {} asks for images past the dataset's {}",
            args.index,
            args.rows,
            dataset.len()
        );
    }
    let transform_config = data::TransformConfig {
        flip_p: 0.0,
        ..config.transform.clone()
    };
    let transform = Transform::new(
        &transform_config,
        dataset.channels(),
        [dataset.height(), dataset.width()],
    )?;
    let [c, h, w] = transform.out_shape();
    let pixels: Vec<f32> = (args.index..args.index + args.rows)
        .flat_map(|i| transform.apply(dataset.image(i), false))
        .collect();
    let x_0 = Tensor::from_slice(&pixels).reshape([args.rows as i64, c as i64, h as i64, w as i64]);

    // Evenly spaced from 0 to T − 1, in increasing t.
    let mut timesteps = Timesteps::new(n_train, args.n_steps, TimestepSpacing::Linspace)?
        .as_slice()
        .to_vec();
    timesteps.reverse();
    let sched = ScheduleTensors::new(&schedule, Device::Cpu);
    let columns = noisy_columns(&sched, &x_0, &timesteps, &mut Generator::cpu(args.seed));
    // Row r: x_0 of image r, then its x_t for each t.
    let mut all = vec![x_0.unsqueeze(1)];
    all.extend(columns.iter().map(|x| x.clamp(-1.0, 1.0).unsqueeze(1)));
    let strip = Tensor::cat(&all, 1).reshape([-1, c as i64, h as i64, w as i64]);
    let n_cols = 1 + timesteps.len();
    let spec = GridSpec {
        nrow: n_cols,
        scale: args.scale,
        ..GridSpec::default()
    };
    let grid = make_grid(&to_u8_nchw(&strip), [args.rows * n_cols, c, h, w], &spec)?;
    write_png(&grid, &args.out)?;
    eprintln!("columns: x_0, then x_t at t = {timesteps:?} (0-based; the paper's t + 1)");
    println!("{}", args.out.display());
    Ok(())
}

fn write_png(grid: &data::images::Grid, path: &Path) -> Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("--out {}: cannot create its directory", path.display()))?;
    }
    grid.save_png(path)
        .with_context(|| format!("--out {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedule::BetaSchedule;

    /// Each column is a draw of q(x_t | x_0): (x_t − √ᾱ_t x_0)/√(1 − ᾱ_t) is standard normal
    /// in every column. Compounding the noise (the notebook) would give the later columns a
    /// larger residual variance: at t = 166 of the seed schedule about 0.88/0.61 ≈ 1.45.
    #[test]
    fn every_column_is_the_closed_form_draw_from_x0() {
        let schedule = Schedule::new(&BetaSchedule::seed_notebook()).unwrap();
        let sched = ScheduleTensors::new(&schedule, Device::Cpu);
        let x_0 = Tensor::rand([4, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 - 1.0;
        let mut timesteps = Timesteps::new(300, 10, TimestepSpacing::Linspace)
            .unwrap()
            .as_slice()
            .to_vec();
        timesteps.reverse();
        assert_eq!((timesteps[0], timesteps[9]), (0, 299));
        let columns = noisy_columns(&sched, &x_0, &timesteps, &mut Generator::cpu(0));
        for (&t, x_t) in timesteps.iter().zip(&columns) {
            let (a, b) = (
                schedule.sqrt_alphas_cumprod()[t],
                schedule.sqrt_one_minus_alphas_cumprod()[t],
            );
            let residual = (x_t - &x_0 * a) / b;
            let mean = f64::try_from(residual.mean(Kind::Double)).unwrap();
            let var = f64::try_from(residual.var(true)).unwrap();
            // 12 288 values: standard errors 0.009 (mean) and 0.013 (variance).
            assert!(
                mean.abs() < 0.05 && (var - 1.0).abs() < 0.07,
                "t = {t}: residual mean {mean}, variance {var}"
            );
        }
    }
}
