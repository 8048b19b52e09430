//! `ddpm model`: inspect the denoising networks — their layer tables, parameter counts, preset
//! configurations, and the memory a training run of them needs (`ddpm model memory`).

use anyhow::{bail, Context, Result};
use model::{ModelConfig, SimpleUnetConfig, UNetConfig};
use std::path::PathBuf;
use tch::nn::VarStore;

/// Subcommands of `ddpm model`.
#[derive(Debug, clap::Subcommand)]
pub enum ModelCommand {
    /// Print a network's layer table (name, shape, parameters) and its parameter count.
    Summary(SummaryArgs),
    /// Print a preset's configuration as JSON, a starting point for `--config` files.
    Config(ConfigArgs),
    /// Report the memory a training run needs per rank: parameter, gradient, Adam and EMA bytes,
    /// and the peak activation bytes of one training step measured at batch 1 on --device
    /// (scaled by the micro-batch).
    Memory(MemoryArgs),
}

/// Arguments of `ddpm model memory`: a training configuration as `ddpm train` resolves it.
#[derive(Debug, clap::Args)]
pub struct MemoryArgs {
    /// A training preset (`ddpm train --preset`).
    #[arg(long, default_value = "seed")]
    pub preset: String,
    /// A JSON file whose keys override the preset's.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Override a config key (repeatable), as `ddpm train --set`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// The global batch (--set batch_size=N).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Micro-batches per step (--set grad_accum=K).
    #[arg(long, value_name = "K")]
    pub grad_accum: Option<usize>,
    /// f32, bf16 or fp16 (--set precision=P).
    #[arg(long, value_name = "P")]
    pub precision: Option<String>,
    /// Data-parallel ranks the batch is split over.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub world_size: usize,
    /// auto, cpu, cuda or cuda:N: where the step is measured.
    #[arg(long, default_value = "cpu")]
    pub device: crate::device::DeviceSpec,
}

/// A network preset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    /// The notebook's SimpleUnet for CIFAR-10 (28×28×3, 3,482,231 parameters).
    Simple,
    /// The notebook's larger SimpleUnet, down (28, 128, 256, 512, 1024) at 64×64×3.
    SimpleLarge,
    /// The SimpleUnet for Fashion-MNIST (28×28×1).
    FashionMnist,
    /// The DDPM paper's U-Net for CIFAR-10 (32×32×3, 35,746,307 parameters).
    Ddpm,
}

impl Arch {
    fn preset(self) -> ModelConfig {
        match self {
            Arch::Simple => ModelConfig::Simple(SimpleUnetConfig::seed_cifar10()),
            Arch::SimpleLarge => ModelConfig::Simple(SimpleUnetConfig::seed_large()),
            Arch::FashionMnist => ModelConfig::Simple(SimpleUnetConfig::fashion_mnist()),
            Arch::Ddpm => ModelConfig::Ddpm(UNetConfig::ho2020_cifar10()),
        }
    }
}

/// Arguments of `ddpm model summary`.
#[derive(Debug, clap::Args)]
pub struct SummaryArgs {
    /// The network preset; with --config, the architecture the file must describe.
    #[arg(long, value_enum, required_unless_present_any = ["config", "checkpoint", "preset"])]
    pub arch: Option<Arch>,
    /// The network of a `ddpm train` preset (`ddpm-church-256`, …).
    #[arg(long, value_name = "NAME", conflicts_with_all = ["arch", "config", "checkpoint"])]
    pub preset: Option<String>,
    /// A model config JSON (`ddpm model config` prints one) or a diffusers UNet2DModel config.json.
    #[arg(long, value_name = "FILE", conflicts_with = "checkpoint")]
    pub config: Option<PathBuf>,
    /// The network of a run, a checkpoint or a diffusers folder, with its weights loaded (and
    /// checked against it).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,
}

/// Arguments of `ddpm model config`.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// The network preset.
    #[arg(long, value_enum)]
    pub arch: Arch,
    /// Print the diffusers UNet2DModel config.json instead (ddpm only).
    #[arg(long)]
    pub diffusers: bool,
}

/// Runs `ddpm model …`.
pub fn run(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Summary(args) => {
            if let Some(given) = &args.checkpoint {
                let path = &crate::checkpoint_arg::local(given, "--checkpoint")?;
                let pipe = sample::Pipeline::load(path, sample::Weights::Ema, tch::Device::Cpu)
                    .with_context(|| format!("--checkpoint {}", path.display()))?;
                check_arch(args.arch, &pipe.spec.model, &pipe.spec.config_file)?;
                println!("weights: {}", pipe.spec.weights_file.display());
                print!("{}", summary_of(&pipe.spec.model, &pipe.vs)?);
                return Ok(());
            }
            let config = match &args.preset {
                Some(name) => {
                    train::Preset::from_name(name)
                        .context("--preset")?
                        .config()
                        .model
                }
                None => resolve(args.arch, args.config.as_deref())?,
            };
            print!("{}", summary(&config)?);
            Ok(())
        }
        ModelCommand::Config(args) => {
            println!("{}", config_json(args.arch, args.diffusers)?);
            Ok(())
        }
        ModelCommand::Memory(args) => {
            let config = memory_config(&args)?;
            let device = args.device.resolve()?;
            let report = train::memory::measure(&config, args.world_size, device)
                .context("measuring one training step")?;
            print!("{}", memory_text(&report, device));
            Ok(())
        }
    }
}

/// The training configuration `ddpm model memory` measures.
fn memory_config(args: &MemoryArgs) -> Result<train::TrainConfig> {
    let file = match &args.config {
        Some(path) => Some(
            serde_json::from_str::<serde_json::Value>(
                &std::fs::read_to_string(path)
                    .with_context(|| format!("--config {}", path.display()))?,
            )
            .with_context(|| format!("--config {} is not valid JSON", path.display()))?,
        ),
        None => None,
    };
    let mut sets = Vec::new();
    for text in &args.sets {
        sets.push(train::config::parse_set(text).with_context(|| format!("--set {text}"))?);
    }
    let shortcuts: [(&str, Option<serde_json::Value>); 3] = [
        ("batch_size", args.batch_size.map(Into::into)),
        ("grad_accum", args.grad_accum.map(Into::into)),
        ("precision", args.precision.clone().map(Into::into)),
    ];
    sets.extend(
        shortcuts
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k.to_string(), v))),
    );
    let preset = train::Preset::from_name(&args.preset).context("--preset")?;
    train::TrainConfig::resolve(preset, file.as_ref(), &sets).context("in the flags")
}

/// The report as `ddpm model memory` prints it.
fn memory_text(r: &train::memory::MemoryReport, device: tch::Device) -> String {
    let mib = |b: u64| format!("{:>10.1} MiB", b as f64 / (1024.0 * 1024.0));
    let method = if device.is_cuda() {
        "the CUDA caching allocator's peak of live tensor bytes"
    } else {
        "the process's resident high-water mark (VmHWM, reset through /proc/self/clear_refs)"
    };
    format!(
        "per rank, {n} trainable parameters:\n\
         parameters (f32)  {p}\n\
         buffers           {b}\n\
         gradients         {g}\n\
         Adam moments      {o}\n\
         EMA weights       {e}\n\
         activations       {a}  ({per} per image, measured at batch 1 on {device:?} from {method}, \
         × {m} images per micro-batch)\n\
         total             {t}\n",
        n = r.n_params,
        p = mib(r.param_bytes),
        b = mib(r.buffer_bytes),
        g = mib(r.grad_bytes),
        o = mib(r.optimizer_bytes),
        e = mib(r.ema_bytes),
        a = mib(r.activation_bytes()),
        per = mib(r.activation_bytes_per_image).trim(),
        m = r.micro_batch,
        t = mib(r.total_bytes()),
    )
}

/// The configuration named by `--arch` and `--config`: the file when given (checked against
/// `--arch`), else the preset.
fn resolve(arch: Option<Arch>, file: Option<&std::path::Path>) -> Result<ModelConfig> {
    let Some(file) = file else {
        return Ok(arch
            .expect("clap requires --arch without --config")
            .preset());
    };
    let config = ModelConfig::from_json_file(file)?;
    check_arch(arch, &config, file)?;
    Ok(config)
}

/// Fails when `--arch` names another architecture than `config`, read from `file`.
fn check_arch(arch: Option<Arch>, config: &ModelConfig, file: &std::path::Path) -> Result<()> {
    if let Some(arch) = arch {
        let wanted = arch.preset().arch();
        if config.arch() != wanted {
            bail!(
                "--arch {} asks for a {wanted} model but {} describes a {} model: drop --arch or pass the matching one",
                clap::ValueEnum::to_possible_value(&arch).expect("no skipped variants").get_name(),
                file.display(),
                config.arch()
            );
        }
    }
    Ok(())
}

/// The text `ddpm model summary` prints: the configuration, then the layer table and totals.
fn summary(config: &ModelConfig) -> Result<String> {
    let vs = VarStore::new(tch::Device::Cpu);
    config.build(&vs.root()).context("building the model")?;
    summary_of(config, &vs)
}

/// The summary of a network built from `config` in `vs`.
fn summary_of(config: &ModelConfig, vs: &VarStore) -> Result<String> {
    let (c, size) = (config.in_channels(), config.image_size());
    let mut out = format!(
        "{} model, {size}×{size}×{c} in, {} channels out\nconfig: {}\n\n",
        config.arch(),
        config.out_channels(),
        serde_json::to_string(config)?
    );
    out.push_str(&model::parameter_table(vs));
    Ok(out)
}

/// A preset's configuration as pretty JSON, ours or diffusers'.
fn config_json(arch: Arch, diffusers: bool) -> Result<String> {
    match (arch.preset(), diffusers) {
        (config, false) => Ok(config.to_json()),
        (ModelConfig::Ddpm(config), true) => {
            Ok(serde_json::to_string_pretty(&config.to_diffusers_config())?)
        }
        (ModelConfig::Simple(_), true) => {
            bail!("--diffusers needs --arch ddpm: diffusers has no SimpleUnet")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_list_layers_and_the_papers_counts() {
        let text = summary(&Arch::Simple.preset()).unwrap();
        assert!(
            text.starts_with("simple model, 28×28×3 in, 3 channels out\n"),
            "{text}"
        );
        assert!(text.contains("downs.0.conv1.weight"), "{text}");
        assert!(text.contains("[128, 28, 3, 3]"), "{text}");
        assert!(text.contains("trainable parameters: 3,482,231"), "{text}");
        assert!(text.contains("buffers (not trained"), "{text}");
        let text = summary(&Arch::Ddpm.preset()).unwrap();
        assert!(
            text.contains("down_blocks.1.attentions.0.to_q.weight"),
            "{text}"
        );
        assert!(text.contains("trainable parameters: 35,746,307"), "{text}");
    }

    /// `ddpm model summary --preset ddpm-church-256`: the 256² presets' network has the count of
    /// the released `google/ddpm-*-256` weights.
    #[test]
    fn the_256_presets_network_has_the_released_count() {
        let config = train::Preset::from_name("ddpm-church-256")
            .unwrap()
            .config()
            .model;
        let text = summary(&config).unwrap();
        assert!(
            text.starts_with("ddpm model, 256×256×3 in, 3 channels out\n"),
            "{text}"
        );
        assert!(text.contains("trainable parameters: 113,673,219"), "{text}");
    }

    #[test]
    fn config_files_are_read_and_checked_against_arch() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fmnist.json");
        std::fs::write(&path, config_json(Arch::FashionMnist, false).unwrap()).unwrap();
        let config = resolve(None, Some(&path)).unwrap();
        assert_eq!(config, Arch::FashionMnist.preset());
        assert_eq!(resolve(Some(Arch::Simple), Some(&path)).unwrap(), config);
        let err = resolve(Some(Arch::Ddpm), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--arch ddpm asks for a ddpm model") && err.contains("fmnist.json"),
            "{err}"
        );

        let diffusers = dir.path().join("config.json");
        std::fs::write(&diffusers, config_json(Arch::Ddpm, true).unwrap()).unwrap();
        assert_eq!(
            resolve(Some(Arch::Ddpm), Some(&diffusers)).unwrap(),
            Arch::Ddpm.preset()
        );

        let err = resolve(None, Some(&dir.path().join("absent.json")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("absent.json"), "{err}");
        assert!(config_json(Arch::Simple, true).is_err());
    }
}
