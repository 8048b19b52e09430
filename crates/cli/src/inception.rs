//! The Inception network of `ddpm eval`: its flags, loading it (the sha256 check of the FID
//! Inception), and feature extraction with a progress bar.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

use crate::device::DeviceSpec;
use eval::{self as fid, Features, Images, InceptionExtractor, Resize};
use fetch::{Algorithm, Checksum};

/// Where `cargo xtask fetch-inception` puts the FID Inception.
const DEFAULT_INCEPTION: &str = "data/inception/default_1.pt";

/// The Inception network and how images reach it.
#[derive(Debug, clap::Args)]
pub struct InceptionArgs {
    /// The FID Inception TorchScript (from `cargo xtask fetch-inception`).
    #[arg(long, default_value = DEFAULT_INCEPTION)]
    pub inception: PathBuf,
    /// Skip the sha256 check of --inception: for another feature network, whose scores do not
    /// compare with published FIDs.
    #[arg(long)]
    pub no_verify: bool,
    /// The network's input height and width (299 for the FID Inception).
    #[arg(long, default_value_t = fid::INCEPTION_INPUT_SIZE)]
    pub input_size: i64,
    /// Bilinear resize: tf (TF1 ResizeBilinear, as the TF FID graph; comparable with published
    /// FIDs) or pytorch (upsample_bilinear2d, align_corners=False, as pytorch-fid).
    #[arg(long, default_value = "tf")]
    pub resize: String,
    /// Images per Inception forward pass.
    #[arg(long, default_value_t = 50)]
    pub batch_size: usize,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: DeviceSpec,
    /// libtorch intra-op CPU threads (default: libtorch's choice).
    #[arg(long)]
    pub threads: Option<i32>,
    /// cuDNN's autotuner on CUDA: times the convolution algorithms once per shape and keeps
    /// the fastest (faster steps; last-bit differences between processes). No effect on the CPU.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub cudnn_benchmark: bool,
}

/// Loads the extractor, verifying the file's sha256 unless told not to; on `device` when
/// given (a rank's), else on `--device` with `--threads`.
pub fn load_extractor(
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
        None => {
            // A rank's device comes from `ranks::join`, which has set the allocator already.
            let device = args.device.resolve()?;
            torch_ext::host_memory::configure(device, torch_ext::host_memory::Work::Sampling);
            device
        }
    };
    crate::runtime::configure_cudnn(device, args.cudnn_benchmark);
    let resize: Resize = args.resize.parse().context("--resize")?;
    let extractor = InceptionExtractor::load(path, device)?
        .with_input_size(args.input_size)
        .with_resize(resize)
        .with_batch_size(args.batch_size)?;
    Ok((extractor, !args.no_verify))
}

pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
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
pub fn extract(extractor: &InceptionExtractor, images: &Images, what: &str) -> Result<Features> {
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
