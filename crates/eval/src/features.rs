//! Inception features of u8 images: the preprocessing (f32, grayscale to RGB, bilinear resize,
//! (x − 128)/128) and batched extraction through a TorchScript module.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use data::images::ImageSet;
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor};

use super::{FidError, INCEPTION_INPUT_SIZE};

/// u8 images in NCHW order, one or three channels, all of one size.
#[derive(Debug, Clone, PartialEq)]
pub struct Images {
    set: ImageSet,
}

impl Images {
    /// Images from NCHW pixels.
    ///
    /// # Errors
    /// [`FidError::Invalid`] when `pixels` does not fill `shape`, or the channel count is not 1
    /// or 3.
    pub fn new(pixels: Vec<u8>, shape: [usize; 4]) -> Result<Self, FidError> {
        if pixels.len() != shape.iter().product::<usize>() {
            return Err(FidError::Invalid(format!(
                "{} pixels do not fill the shape {shape:?}",
                pixels.len()
            )));
        }
        if shape[1] != 1 && shape[1] != 3 {
            return Err(FidError::Invalid(format!(
                "images have {} channels; the Inception needs 1 (replicated) or 3",
                shape[1]
            )));
        }
        Ok(Self {
            set: ImageSet { pixels, shape },
        })
    }

    /// Images from NHWC pixels (the layout of sample `.npz` files and image decoders).
    ///
    /// # Errors
    /// Those of [`Images::new`].
    pub fn from_nhwc(pixels: &[u8], shape_nhwc: [usize; 4]) -> Result<Self, FidError> {
        let set = ImageSet::from_nhwc(pixels, shape_nhwc)
            .map_err(|e| FidError::Invalid(e.to_string()))?;
        Self::from_set(set)
    }

    /// Images from a set read or made by the `data` crate.
    ///
    /// # Errors
    /// [`FidError::Invalid`] when the channel count is not 1 or 3.
    pub fn from_set(set: ImageSet) -> Result<Self, FidError> {
        Self::new(set.pixels, set.shape)
    }

    /// All images of a dataset.
    pub fn from_dataset(dataset: &data::Dataset) -> Self {
        Self {
            set: ImageSet {
                pixels: dataset.images().to_vec(),
                shape: dataset.shape(),
            },
        }
    }

    /// The images a sampling call collected ([`sample::Samples`], u8 NCHW as the sample PNGs
    /// are quantised).
    ///
    /// # Errors
    /// [`FidError::Invalid`] when the channel count is not 1 or 3.
    pub fn from_samples(samples: sample::Samples) -> Result<Self, FidError> {
        let shape = samples.shape_of(samples.len());
        Self::new(samples.images, shape)
    }

    /// Images from a sampler's `[N, C, H, W]` f32 output on [-1, 1] (any device), quantised as
    /// the sample PNGs are: round((x + 1) · 127.5).
    ///
    /// # Panics
    /// When `xs` is not 4-D: sampler outputs are.
    pub fn from_tensor(xs: &Tensor) -> Result<Self, FidError> {
        let size = xs.size();
        assert_eq!(size.len(), 4, "images must be [N, C, H, W], got {size:?}");
        let shape = [
            size[0] as usize,
            size[1] as usize,
            size[2] as usize,
            size[3] as usize,
        ];
        Self::new(sample::to_u8_nchw(xs), shape)
    }

    /// Reads samples from an `.npz`: the array `arr_0` (what `numpy.savez(path, x)` writes), or
    /// else the first array; uint8, `[N, H, W, C]` with C = 1 or 3, or `[N, H, W]` grayscale.
    ///
    /// # Errors
    /// [`FidError::File`] naming the file when it cannot be read or holds another type or shape.
    pub fn read_npz(path: &Path) -> Result<Self, FidError> {
        let bad = |message: String| FidError::File {
            path: path.to_path_buf(),
            message,
        };
        let set = data::images::read_samples_npz(path)
            .map_err(|e| bad(strip_path(&e.to_string(), path)))?;
        Self::from_set(set).map_err(|e| bad(e.to_string()))
    }

    /// Writes the images as a sample `.npz`, uint8 NHWC `arr_0`, as `numpy.savez(path, samples)`
    /// does ([`data::images::write_samples_npz`]).
    ///
    /// # Errors
    /// [`FidError::File`] naming the file when it cannot be written.
    pub fn write_npz(&self, path: &Path) -> Result<(), FidError> {
        data::images::write_samples_npz(path, &self.set).map_err(|e| FidError::File {
            path: path.to_path_buf(),
            message: match e {
                // It names the path, as this error does.
                data::DataError::Write { message, .. } => message,
                other => other.to_string(),
            },
        })
    }

    /// Appends `other`, which must have the same channels, height and width.
    ///
    /// # Errors
    /// [`FidError::MixedSizes`] when the sizes differ.
    pub fn append(&mut self, other: &Images) -> Result<(), FidError> {
        if other.set.shape[1..] != self.set.shape[1..] {
            return Err(FidError::MixedSizes {
                what: "images".into(),
                message: format!(
                    "cannot append {:?} images to {:?} images",
                    &other.set.shape[1..],
                    &self.set.shape[1..]
                ),
            });
        }
        self.set.pixels.extend_from_slice(&other.set.pixels);
        self.set.shape[0] += other.set.shape[0];
        Ok(())
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.set.shape[0]
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.set.shape[0] == 0
    }

    /// `[N, C, H, W]`.
    pub fn shape(&self) -> [usize; 4] {
        self.set.shape
    }

    /// The pixels, NCHW.
    pub fn pixels(&self) -> &[u8] {
        &self.set.pixels
    }

    /// The first `n` images (all of them when there are fewer).
    pub fn take(&self, n: usize) -> Images {
        let n = n.min(self.len());
        let per_image = self.set.shape[1] * self.set.shape[2] * self.set.shape[3];
        Images {
            set: ImageSet {
                pixels: self.set.pixels[..n * per_image].to_vec(),
                shape: [n, self.set.shape[1], self.set.shape[2], self.set.shape[3]],
            },
        }
    }
}

/// Removes a leading "PATH: " from a message that a wrapping error names the path in anyway.
fn strip_path(message: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    message.strip_prefix(&prefix).unwrap_or(message).to_string()
}

/// How images are resized to the network's input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resize {
    /// TensorFlow 1's `ResizeBilinear` (`align_corners=False`, no half-pixel centres): output
    /// pixel o samples the input at o · in/out, clamped to the last pixel. The TF FID graph
    /// (TTUR's `fid.py`) resizes so inside itself, and StyleGAN2-ADA, clean-fid's
    /// `legacy_tensorflow` mode and fid-helper-pytorch (`nv_bilinear`) emulate it; scores
    /// computed this way compare with published TF FIDs (DDPM's 3.17 included).
    #[default]
    Tf,
    /// PyTorch's `upsample_bilinear2d` with `align_corners=False` (half-pixel centres, no
    /// antialiasing), as pytorch-fid resizes (`F.interpolate(..., mode="bilinear")`).
    Pytorch,
}

impl Resize {
    /// The name used on the command line and in result files.
    pub fn name(self) -> &'static str {
        match self {
            Resize::Tf => "tf",
            Resize::Pytorch => "pytorch",
        }
    }
}

impl FromStr for Resize {
    type Err = FidError;

    fn from_str(s: &str) -> Result<Self, FidError> {
        match s {
            "tf" => Ok(Resize::Tf),
            "pytorch" => Ok(Resize::Pytorch),
            _ => Err(FidError::Invalid(format!(
                "unknown resize `{s}`: use tf or pytorch"
            ))),
        }
    }
}

/// The `[n_out, n_in]` matrix of TF1 bilinear interpolation along one axis: row o has weight
/// 1 − f at floor(s) and f at min(floor(s) + 1, n_in − 1), where s = o · n_in / n_out.
fn tf_resize_matrix(n_in: usize, n_out: usize) -> Vec<f32> {
    let mut m = vec![0f32; n_out * n_in];
    let scale = n_in as f64 / n_out as f64;
    for o in 0..n_out {
        let src = o as f64 * scale;
        let i0 = (src.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        let frac = (src - i0 as f64) as f32;
        m[o * n_in + i0] += 1.0 - frac;
        m[o * n_in + i1] += frac;
    }
    m
}

/// Inception features, `[N, D]` f32, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    data: Vec<f32>,
    n: usize,
    dim: usize,
}

impl Features {
    /// Features from `n` rows of `dim` values.
    ///
    /// # Errors
    /// [`FidError::Invalid`] when `data` does not hold `n · dim` values or `dim` is 0;
    /// [`FidError::Numerical`] when a value is not finite.
    pub fn new(data: Vec<f32>, n: usize, dim: usize) -> Result<Self, FidError> {
        if dim == 0 || data.len() != n * dim {
            return Err(FidError::Invalid(format!(
                "{} feature values do not make {n} rows of {dim}",
                data.len()
            )));
        }
        if let Some(idx) = data.iter().position(|v| !v.is_finite()) {
            return Err(FidError::Numerical(format!(
                "feature {} of image {} is {}",
                idx % dim,
                idx / dim,
                data[idx]
            )));
        }
        Ok(Self { data, n, dim })
    }

    /// The number of feature vectors.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The feature dimension D.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `idx`.
    pub fn row(&self, idx: usize) -> &[f32] {
        &self.data[idx * self.dim..(idx + 1) * self.dim]
    }

    /// All rows, row-major.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
}

/// The FID Inception (or any TorchScript module with its interface) and the preprocessing in
/// front of it.
pub struct InceptionExtractor {
    module: tch::CModule,
    path: PathBuf,
    device: Device,
    input_size: i64,
    resize: Resize,
    batch_size: usize,
}

impl std::fmt::Debug for InceptionExtractor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InceptionExtractor")
            .field("path", &self.path)
            .field("device", &self.device)
            .field("input_size", &self.input_size)
            .field("resize", &self.resize)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

/// libtorch's message without the C++ backtrace that tch keeps in it ("Exception raised from
/// … (most recent call first): frame #0 …"): its first lines, which say what went wrong.
fn without_backtrace(message: &str) -> &str {
    message
        .split("\nException raised from")
        .next()
        .unwrap_or(message)
        .trim()
}

impl InceptionExtractor {
    /// Loads a TorchScript module onto `device`, for input size 299 ([`INCEPTION_INPUT_SIZE`]),
    /// [`Resize::Tf`] and batches of 50. The file's checksum is the caller's to verify (see
    /// [`super::INCEPTION_SHA256`]).
    ///
    /// # Errors
    /// [`FidError::Inception`] naming the file when it is missing or not TorchScript.
    pub fn load(path: &Path, device: Device) -> Result<Self, FidError> {
        let fail = |message: String| FidError::Inception {
            path: path.to_path_buf(),
            message,
        };
        if !path.is_file() {
            return Err(fail("no such file".into()));
        }
        let mut module = tch::CModule::load_on_device(path, device).map_err(|e| {
            fail(format!(
                "not a loadable TorchScript module (truncated or of another kind?): {}",
                without_backtrace(&e.to_string())
            ))
        })?;
        module.set_eval();
        Ok(Self {
            module,
            path: path.to_path_buf(),
            device,
            input_size: INCEPTION_INPUT_SIZE,
            resize: Resize::default(),
            batch_size: 50,
        })
    }

    /// The same module for another input size (a small stand-in network in tests).
    ///
    /// # Panics
    /// When `size` is not positive.
    pub fn with_input_size(mut self, size: i64) -> Self {
        assert!(size > 0, "input size must be positive");
        self.input_size = size;
        self
    }

    /// Another resize.
    pub fn with_resize(mut self, resize: Resize) -> Self {
        self.resize = resize;
        self
    }

    /// Another batch size; features do not depend on it beyond float rounding.
    ///
    /// # Errors
    /// [`FidError::Invalid`] for 0.
    pub fn with_batch_size(mut self, batch_size: usize) -> Result<Self, FidError> {
        if batch_size == 0 {
            return Err(FidError::Invalid("--batch-size must be at least 1".into()));
        }
        self.batch_size = batch_size;
        Ok(self)
    }

    /// The device the module runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The network's input height and width.
    pub fn input_size(&self) -> i64 {
        self.input_size
    }

    /// The resize in use.
    pub fn resize(&self) -> Resize {
        self.resize
    }

    /// The number of images per forward pass.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The module's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Turns u8 (or float on [0, 255]) images into the network's input: f32, grayscale
    /// replicated to three channels, resized bilinearly to `input_size` (unless already that
    /// size), then scaled to (x − 128)/128.
    ///
    /// # Shapes
    /// `[N, C, H, W]` with C ∈ {1, 3} → `[N, 3, S, S]` f32 on the input's device.
    pub fn preprocess(&self, xs: &Tensor) -> Tensor {
        let xs = xs.to_kind(Kind::Float);
        let [n, c, h, w] = xs.size()[..] else {
            panic!("images must be [N, C, H, W], got {:?}", xs.size())
        };
        assert!(
            c == 1 || c == 3,
            "images must have 1 or 3 channels, got {c}"
        );
        let s = self.input_size;
        let xs = if c == 1 {
            xs.expand([n, 3, h, w], false)
        } else {
            xs
        };
        let xs = if (h, w) == (s, s) {
            xs
        } else {
            match self.resize {
                Resize::Pytorch => xs.upsample_bilinear2d([s, s], false, None, None),
                Resize::Tf => {
                    // Separable: resize the width with a [W, S] matrix, then the height with
                    // an [S, H] one. Exact TF1 weights, and cheaper than the network by far.
                    let device = xs.device();
                    let rows = Tensor::from_slice(&tf_resize_matrix(h as usize, s as usize))
                        .view([s, h])
                        .to_device(device);
                    let cols = Tensor::from_slice(&tf_resize_matrix(w as usize, s as usize))
                        .view([s, w])
                        .to_device(device);
                    rows.matmul(&xs.matmul(&cols.tr()))
                }
            }
        };
        (xs - 128.0) / 128.0
    }

    /// The feature dimension D, from one forward pass of one blank image: cheap next to a set
    /// of images, so callers check reference statistics against it before extracting anything.
    ///
    /// # Errors
    /// As [`InceptionExtractor::forward`].
    pub fn feature_dim(&self) -> Result<usize, FidError> {
        let s = self.input_size;
        let xs = Tensor::zeros([1, 3, s, s], (Kind::Float, self.device));
        let out = self.forward(&xs)?;
        Ok(out.size()[1] as usize)
    }

    /// Runs the network on one preprocessed batch.
    ///
    /// # Shapes
    /// `[N, 3, S, S]` → `[N, D]` f32 on the module's device. A module that returns
    /// `[N, D, 1, 1]` (or any trailing spatial dimensions) is averaged over them.
    ///
    /// # Errors
    /// [`FidError::Inception`] naming the file when the module fails or returns another shape.
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor, FidError> {
        let fail = |message: String| FidError::Inception {
            path: self.path.clone(),
            message,
        };
        let n = xs.size()[0];
        // On the CPU, channels-last input takes oneDNN's NHWC convolutions through the whole
        // network: 5–15 % faster on a 2-core Xeon, features within 1e-5 of NCHW's.
        let xs = if xs.device() == Device::Cpu && xs.dim() == 4 {
            model::to_memory_format(xs, model::MemoryFormat::ChannelsLast)
        } else {
            xs.shallow_clone()
        };
        let out = tch::no_grad(|| self.module.forward_ts(&[&xs]))
            .map_err(|e| fail(format!("forward pass failed: {e}")))?;
        let size = out.size();
        if size.len() < 2 || size[0] != n {
            return Err(fail(format!(
                "returned shape {size:?} for {n} images; expected [{n}, D]"
            )));
        }
        let out = if size.len() > 2 {
            let spatial: Vec<i64> = (2..size.len() as i64).collect();
            out.mean_dim(&spatial[..], false, Kind::Float)
        } else {
            out.to_kind(Kind::Float)
        };
        Ok(out)
    }

    /// Features of every image, in batches of [`Self::batch_size`]; `on_batch(done, total)`
    /// after each batch (for progress bars).
    ///
    /// # Shapes
    /// `images` `[N, C, H, W]` → [`Features`] `[N, D]`.
    ///
    /// # Errors
    /// Those of [`Self::forward`]; [`FidError::Numerical`] for non-finite features.
    pub fn extract(
        &self,
        images: &Images,
        mut on_batch: impl FnMut(usize, usize),
    ) -> Result<Features, FidError> {
        let [n, c, h, w] = images.shape();
        let per_image = c * h * w;
        let mut data: Vec<f32> = Vec::new();
        let mut dim = 0;
        let mut start = 0;
        while start < n {
            let end = (start + self.batch_size).min(n);
            let batch = Tensor::from_slice(&images.pixels()[start * per_image..end * per_image])
                .view([(end - start) as i64, c as i64, h as i64, w as i64])
                .to_device(self.device);
            let feats = self.forward(&self.preprocess(&batch))?;
            let batch_dim = feats.size()[1] as usize;
            if start == 0 {
                dim = batch_dim;
                data.reserve(n * dim);
            }
            let host = feats.to_device(Device::Cpu).contiguous().view([-1]);
            data.extend(Vec::<f32>::try_from(&host).expect("f32 features"));
            start = end;
            on_batch(start, n);
        }
        Features::new(data, n, dim.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhwc_is_transposed_to_nchw() {
        // Two 1×2 RGB images: pixel values encode (image, x, channel).
        let nhwc: Vec<u8> = (0..12).collect();
        let images = Images::from_nhwc(&nhwc, [2, 1, 2, 3]).unwrap();
        assert_eq!(images.shape(), [2, 3, 1, 2]);
        assert_eq!(images.pixels(), &[0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11]);
    }

    #[test]
    fn images_reject_bad_channel_counts_and_lengths() {
        assert!(Images::new(vec![0; 8], [2, 2, 1, 2]).is_err());
        assert!(Images::new(vec![0; 5], [1, 3, 1, 2]).is_err());
        let mut a = Images::new(vec![0; 6], [1, 3, 1, 2]).unwrap();
        let b = Images::new(vec![0; 2], [1, 1, 1, 2]).unwrap();
        assert!(matches!(a.append(&b), Err(FidError::MixedSizes { .. })));
        a.append(&a.clone()).unwrap();
        assert_eq!(a.len(), 2);
    }

    #[test]
    fn tf_resize_matrix_samples_at_o_times_scale() {
        // 2 → 4: sources 0, 0.5, 1, 1.5 (the last clamps to pixel 1).
        let m = tf_resize_matrix(2, 4);
        assert_eq!(m, vec![1.0, 0.0, 0.5, 0.5, 0.0, 1.0, 0.0, 1.0]);
        // Every row sums to one, also when shrinking.
        for (n_in, n_out) in [(32, 299), (299, 32), (7, 7)] {
            for row in tf_resize_matrix(n_in, n_out).chunks(n_in) {
                assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            }
        }
    }

    #[test]
    fn sampled_images_keep_their_order_and_shape() {
        let mut samples = sample::Samples::new([1, 1, 2]);
        samples.images = vec![0, 1, 2, 3, 4, 5];
        let images = Images::from_samples(samples).unwrap();
        assert_eq!(images.shape(), [3, 1, 1, 2]);
        assert_eq!(images.pixels(), [0, 1, 2, 3, 4, 5]);
        let mut rgba = sample::Samples::new([4, 1, 1]);
        rgba.images = vec![0; 4];
        assert!(Images::from_samples(rgba).is_err());
    }
}
