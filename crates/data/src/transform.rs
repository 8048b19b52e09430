//! The seed notebook's preprocessing, per image: resize (as `tf.image.resize`), random horizontal
//! flip (as `tf.image.random_flip_left_right`), and scaling to [-1, 1] (`x / 127.5 - 1`), fused
//! into one pass from u8 CHW to f32 CHW; plus the inverse, f32 in [-1, 1] back to u8, for saving
//! samples.

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::resize::Resizer;

/// Maps a u8 pixel to [-1, 1]: `v / 127.5 - 1`, as the notebook (0 → -1, 255 → 1).
///
/// # Examples
///
/// ```
/// assert_eq!(data::normalize(0), -1.0);
/// assert_eq!(data::normalize(255), 1.0);
/// ```
pub fn normalize(v: u8) -> f32 {
    scale_to_unit(f32::from(v))
}

/// Maps a value in [-1, 1] back to u8: `round((x + 1) * 127.5)`, clamped to 0..=255 (NaN → 0).
/// It inverts [`normalize`] exactly on all 256 values.
///
/// # Examples
///
/// ```
/// assert_eq!(data::denormalize(-1.0), 0);
/// assert_eq!(data::denormalize(data::normalize(200)), 200);
/// assert_eq!(data::denormalize(3.0), 255); // samples outside [-1, 1] are clipped
/// ```
pub fn denormalize(x: f32) -> u8 {
    ((x + 1.0) * 127.5).round().clamp(0.0, 255.0) as u8
}

/// [`denormalize`] over a whole buffer, for example sampled NCHW images on their way to
/// [`crate::images::make_grid`].
///
/// # Examples
///
/// ```
/// assert_eq!(data::denormalize_all(&[-1.0, 0.0, 1.0]), vec![0, 128, 255]);
/// ```
pub fn denormalize_all(xs: &[f32]) -> Vec<u8> {
    xs.iter().map(|&x| denormalize(x)).collect()
}

#[inline]
fn scale_to_unit(v: f32) -> f32 {
    // Division, not multiplication by 1/127.5: the notebook's `x / 127.5 - 1.0`, bit for bit.
    v / 127.5 - 1.0
}

/// What to do to each image between u8 storage and the f32 batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformConfig {
    /// Output `[height, width]`, resized bilinearly as `tf.image.resize`; `None` keeps the
    /// dataset's size.
    #[serde(default)]
    pub size: Option<[usize; 2]>,
    /// Probability of mirroring an image left to right, in [0, 1].
    pub flip_p: f64,
    /// Scale to [-1, 1] (`v / 127.5 - 1`); when false, values stay on 0..255.
    pub normalize: bool,
}

impl TransformConfig {
    /// The seed notebook's `preprocess_image`: resize to 28x28 (`IMG_SIZE = 28`), flip with
    /// p = 0.5, scale to [-1, 1].
    pub fn seed_cifar10() -> Self {
        Self {
            size: Some([28, 28]),
            flip_p: 0.5,
            normalize: true,
        }
    }

    /// Ho et al. 2020, Appendix B: images at their own size, random horizontal flips during
    /// training (CIFAR-10), scaled to [-1, 1].
    pub fn ho2020() -> Self {
        Self {
            size: None,
            flip_p: 0.5,
            normalize: true,
        }
    }

    /// No augmentation: the images at their own size, scaled to [-1, 1].
    pub fn plain() -> Self {
        Self {
            size: None,
            flip_p: 0.0,
            normalize: true,
        }
    }
}

/// A [`TransformConfig`] bound to an input shape, with its resize taps computed once.
#[derive(Debug, Clone, PartialEq)]
pub struct Transform {
    config: TransformConfig,
    channels: usize,
    in_size: [usize; 2],
    out_size: [usize; 2],
    resizer: Option<Resizer>,
}

impl Transform {
    /// Prepares `config` for images of `channels` planes of `in_size` (`[height, width]`).
    ///
    /// # Errors
    ///
    /// [`DataError::Config`] when `flip_p` is not in [0, 1] or a size is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// let t = data::Transform::new(&data::TransformConfig::seed_cifar10(), 3, [32, 32])?;
    /// assert_eq!(t.out_shape(), [3, 28, 28]);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn new(config: &TransformConfig, channels: usize, in_size: [usize; 2]) -> Result<Self> {
        if !(0.0..=1.0).contains(&config.flip_p) {
            return Err(DataError::Config(format!(
                "flip_p {} is not a probability in [0, 1]",
                config.flip_p
            )));
        }
        if channels == 0 || in_size.contains(&0) {
            return Err(DataError::Config(format!(
                "input shape {channels}x{}x{} has a zero dimension",
                in_size[0], in_size[1]
            )));
        }
        let out_size = config.size.unwrap_or(in_size);
        let resizer = if out_size == in_size {
            None
        } else {
            Some(Resizer::new(in_size, out_size)?)
        };
        Ok(Self {
            config: config.clone(),
            channels,
            in_size,
            out_size,
            resizer,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &TransformConfig {
        &self.config
    }

    /// `[C, H, W]` of the output.
    pub fn out_shape(&self) -> [usize; 3] {
        [self.channels, self.out_size[0], self.out_size[1]]
    }

    /// Bytes per input image, `C * H * W`.
    pub fn in_len(&self) -> usize {
        self.channels * self.in_size[0] * self.in_size[1]
    }

    /// Values per output image.
    pub fn out_len(&self) -> usize {
        self.channels * self.out_size[0] * self.out_size[1]
    }

    /// Whether to flip, given a uniform draw `u` in [0, 1): `u < flip_p`, so p = 0 never flips and
    /// p = 1 always does.
    ///
    /// ```
    /// let t = data::Transform::new(&data::TransformConfig::seed_cifar10(), 3, [32, 32])?;
    /// assert!(t.flips(0.49) && !t.flips(0.5));
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn flips(&self, u: f64) -> bool {
        u < self.config.flip_p
    }

    /// Transforms one CHW u8 image into `dst` (`out_len()` values), mirrored when `flip`.
    /// `scratch` is reused between calls.
    ///
    /// # Panics
    ///
    /// When `src` or `dst` has the wrong length.
    ///
    /// # Examples
    ///
    /// ```
    /// let config = data::TransformConfig { size: None, flip_p: 0.5, normalize: true };
    /// let t = data::Transform::new(&config, 1, [1, 2])?;
    /// let mut out = [0.0; 2];
    /// t.apply_into(&[0, 255], true, &mut out, &mut Vec::new());
    /// assert_eq!(out, [1.0, -1.0]);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn apply_into(&self, src: &[u8], flip: bool, dst: &mut [f32], scratch: &mut Vec<f32>) {
        assert_eq!(src.len(), self.in_len(), "source image has the wrong size");
        assert_eq!(dst.len(), self.out_len(), "destination has the wrong size");
        let plane_in = self.in_size[0] * self.in_size[1];
        let plane_out = self.out_size[0] * self.out_size[1];
        let normalize = self.config.normalize;
        let map = move |v: f32| if normalize { scale_to_unit(v) } else { v };
        for (src, dst) in src
            .chunks_exact(plane_in)
            .zip(dst.chunks_exact_mut(plane_out))
        {
            match &self.resizer {
                Some(resizer) => resizer.resize_plane(src, dst, flip, scratch, map),
                None => {
                    let width = self.in_size[1];
                    for (src_row, dst_row) in
                        src.chunks_exact(width).zip(dst.chunks_exact_mut(width))
                    {
                        if flip {
                            for (d, &s) in dst_row.iter_mut().zip(src_row.iter().rev()) {
                                *d = map(f32::from(s));
                            }
                        } else {
                            for (d, &s) in dst_row.iter_mut().zip(src_row) {
                                *d = map(f32::from(s));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Transforms one CHW u8 image into a new f32 buffer; see [`Transform::apply_into`].
    ///
    /// # Examples
    ///
    /// ```
    /// let config = data::TransformConfig { size: Some([1, 3]), flip_p: 0.0, normalize: false };
    /// let t = data::Transform::new(&config, 1, [1, 2])?;
    /// assert_eq!(t.apply(&[0, 255], false), vec![0.0, 127.5, 255.0]);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn apply(&self, src: &[u8], flip: bool) -> Vec<f32> {
        let mut dst = vec![0.0; self.out_len()];
        self.apply_into(src, flip, &mut dst, &mut Vec::new());
        dst
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denormalize_inverts_normalize_on_every_u8() {
        for v in 0..=255u8 {
            let x = normalize(v);
            assert!((-1.0..=1.0).contains(&x));
            assert_eq!(denormalize(x), v);
        }
        assert_eq!(denormalize(f32::NAN), 0);
        assert_eq!(denormalize(-7.0), 0);
    }

    #[test]
    fn flip_without_resize_mirrors_each_row_of_each_channel() {
        let config = TransformConfig {
            size: None,
            flip_p: 1.0,
            normalize: false,
        };
        let t = Transform::new(&config, 2, [2, 3]).unwrap();
        let src = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        assert_eq!(
            t.apply(&src, true),
            vec![3., 2., 1., 6., 5., 4., 9., 8., 7., 12., 11., 10.]
        );
        assert_eq!(
            t.apply(&src, false),
            src.iter().map(|&v| f32::from(v)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn resize_flip_and_normalize_compose_as_in_the_notebook() {
        // tf: resize -> flip -> x / 127.5 - 1; here in one pass.
        let src: Vec<u8> = (0..3 * 32 * 32).map(|i| (i * 7 % 256) as u8).collect();
        let t = Transform::new(&TransformConfig::seed_cifar10(), 3, [32, 32]).unwrap();
        let fused = t.apply(&src, true);
        let resized = crate::resize::resize_bilinear(&src, 3, [32, 32], [28, 28]).unwrap();
        for c in 0..3 {
            for y in 0..28 {
                for x in 0..28 {
                    let expected = resized[c * 784 + y * 28 + (27 - x)] / 127.5 - 1.0;
                    assert_eq!(fused[c * 784 + y * 28 + x], expected);
                }
            }
        }
    }

    #[test]
    fn flip_probability_is_validated_and_respected() {
        let bad = TransformConfig {
            flip_p: 1.5,
            ..TransformConfig::plain()
        };
        assert_eq!(
            Transform::new(&bad, 1, [2, 2]).unwrap_err().to_string(),
            "flip_p 1.5 is not a probability in [0, 1]"
        );
        let never = Transform::new(&TransformConfig::plain(), 1, [2, 2]).unwrap();
        assert!(!never.flips(0.0));
        let always = Transform::new(
            &TransformConfig {
                flip_p: 1.0,
                ..TransformConfig::plain()
            },
            1,
            [2, 2],
        )
        .unwrap();
        assert!(always.flips(0.999_999));
    }

    #[test]
    fn config_rejects_unknown_fields() {
        let json = r#"{"size": [28, 28], "flip_p": 0.5, "normalize": true, "flip": true}"#;
        let err = serde_json::from_str::<TransformConfig>(json).unwrap_err();
        assert!(err.to_string().contains("unknown field `flip`"), "{err}");
        let ok: TransformConfig =
            serde_json::from_str(r#"{"size": [28, 28], "flip_p": 0.5, "normalize": true}"#)
                .unwrap();
        assert_eq!(ok, TransformConfig::seed_cifar10());
    }
}
