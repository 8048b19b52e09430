//! Bilinear resizing as `tf.image.resize` does it by default (TF 2: `method="bilinear"`,
//! `antialias=False`), the resize of the seed notebook's preprocessing.
//!
//! That call is TensorFlow's `ResizeBilinear` with `half_pixel_centers=True`: output pixel `o`
//! samples the input at `s = (o + 0.5) * in / out - 0.5`; the neighbours are
//! `lo = max(floor(s), 0)` and `hi = min(ceil(s), in - 1)` with weight `frac = s - floor(s)`.
//! Each output value is `top + (bottom - top) * fy` where `top` and `bottom` interpolate along x on
//! rows `lo` and `hi`. The result is f32 and not rounded. Without antialiasing, downsampling by
//! more than 2x skips pixels, exactly as TensorFlow does.
//!
//! [`Resizer`] computes the taps once per (input size, output size) and then runs in two passes
//! (along x into a scratch buffer, then along y), which evaluates the same expression in the same
//! order as TensorFlow, with no allocation per pixel. `scripts/golden/resize.py` checks it
//! against a numpy port of TensorFlow's kernel and against PyTorch's
//! `interpolate(mode="bilinear", align_corners=False)`.

use crate::error::{DataError, Result};

/// One output coordinate's two input neighbours and the weight of the second.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Tap {
    lo: usize,
    hi: usize,
    frac: f32,
}

/// The half-pixel-centre taps for resizing one axis from `n_in` to `n_out` pixels, in f32 as in
/// TensorFlow's `compute_interpolation_weights`.
fn taps(n_in: usize, n_out: usize) -> Vec<Tap> {
    let scale = n_in as f32 / n_out as f32;
    (0..n_out)
        .map(|o| {
            let s = (o as f32 + 0.5) * scale - 0.5;
            let floor = s.floor();
            Tap {
                lo: (floor.max(0.0)) as usize,
                hi: (s.ceil() as usize).min(n_in - 1),
                frac: s - floor,
            }
        })
        .collect()
}

/// Precomputed bilinear taps from one image size to another.
#[derive(Debug, Clone, PartialEq)]
pub struct Resizer {
    in_size: [usize; 2],
    out_size: [usize; 2],
    ys: Vec<Tap>,
    xs: Vec<Tap>,
    /// `xs` reversed: resizing with these writes the horizontally flipped image directly.
    xs_flipped: Vec<Tap>,
}

impl Resizer {
    /// Taps from `in_size` to `out_size`, both `[height, width]`.
    ///
    /// # Errors
    ///
    /// [`DataError::Config`] when a size is zero.
    ///
    /// # Examples
    ///
    /// ```
    /// let resizer = data::resize::Resizer::new([32, 32], [28, 28])?;
    /// assert_eq!(resizer.out_size(), [28, 28]);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn new(in_size: [usize; 2], out_size: [usize; 2]) -> Result<Self> {
        if in_size.contains(&0) || out_size.contains(&0) {
            return Err(DataError::Config(format!(
                "cannot resize {}x{} to {}x{}: sizes must be positive",
                in_size[0], in_size[1], out_size[0], out_size[1]
            )));
        }
        let xs = taps(in_size[1], out_size[1]);
        let xs_flipped = xs.iter().rev().copied().collect();
        Ok(Self {
            in_size,
            out_size,
            ys: taps(in_size[0], out_size[0]),
            xs,
            xs_flipped,
        })
    }

    /// The input `[height, width]`.
    pub fn in_size(&self) -> [usize; 2] {
        self.in_size
    }

    /// The output `[height, width]`.
    pub fn out_size(&self) -> [usize; 2] {
        self.out_size
    }

    /// Resizes one u8 plane (`in_size`, row-major) into `dst` (`out_size`), mirrored left to
    /// right when `flip`, then maps every value through `map` (for example the scaling to
    /// [-1, 1]). `scratch` is reused between calls so that no pixel allocates.
    ///
    /// # Panics
    ///
    /// When `src` or `dst` has the wrong length.
    ///
    /// # Examples
    ///
    /// ```
    /// let resizer = data::resize::Resizer::new([1, 2], [1, 4])?;
    /// let mut out = [0.0; 4];
    /// resizer.resize_plane(&[0, 100], &mut out, false, &mut Vec::new(), |v| v);
    /// assert_eq!(out, [0.0, 25.0, 75.0, 100.0]);
    /// resizer.resize_plane(&[0, 100], &mut out, true, &mut Vec::new(), |v| v / 100.0);
    /// assert_eq!(out, [1.0, 0.75, 0.25, 0.0]);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn resize_plane(
        &self,
        src: &[u8],
        dst: &mut [f32],
        flip: bool,
        scratch: &mut Vec<f32>,
        map: impl Fn(f32) -> f32,
    ) {
        let [in_h, in_w] = self.in_size;
        let [out_h, out_w] = self.out_size;
        assert_eq!(src.len(), in_h * in_w, "source plane is not {in_h}x{in_w}");
        assert_eq!(
            dst.len(),
            out_h * out_w,
            "destination plane is not {out_h}x{out_w}"
        );
        let xs = if flip { &self.xs_flipped } else { &self.xs };
        // Pass 1, along x: every input row, interpolated at the output columns.
        scratch.clear();
        scratch.resize(in_h * out_w, 0.0);
        for (row, out_row) in src.chunks_exact(in_w).zip(scratch.chunks_exact_mut(out_w)) {
            for (out, tap) in out_row.iter_mut().zip(xs) {
                let left = f32::from(row[tap.lo]);
                let right = f32::from(row[tap.hi]);
                *out = left + (right - left) * tap.frac;
            }
        }
        // Pass 2, along y: blend the two rows that each output row falls between.
        for (out_row, tap) in dst.chunks_exact_mut(out_w).zip(&self.ys) {
            let top = &scratch[tap.lo * out_w..(tap.lo + 1) * out_w];
            let bottom = &scratch[tap.hi * out_w..(tap.hi + 1) * out_w];
            for ((out, &t), &b) in out_row.iter_mut().zip(top).zip(bottom) {
                *out = map(t + (b - t) * tap.frac);
            }
        }
    }
}

/// Resizes CHW u8 images of `in_size` to `out_size` (`[height, width]`), bilinear as
/// `tf.image.resize`, returning unrounded f32 values on 0..255.
///
/// `src` holds any number of images of `channels` planes each; every plane is resized on its own.
///
/// # Errors
///
/// [`DataError::Config`] when a size is zero or `src` is not a whole number of images.
///
/// # Examples
///
/// ```
/// // One 2x2 grayscale image to 3x3: the centre averages all four pixels.
/// let out = data::resize::resize_bilinear(&[0, 40, 80, 120], 1, [2, 2], [3, 3])?;
/// assert_eq!(out[4], 60.0);
/// assert_eq!(out.len(), 9);
/// # Ok::<(), data::DataError>(())
/// ```
pub fn resize_bilinear(
    src: &[u8],
    channels: usize,
    in_size: [usize; 2],
    out_size: [usize; 2],
) -> Result<Vec<f32>> {
    let resizer = Resizer::new(in_size, out_size)?;
    let plane_in = in_size[0] * in_size[1];
    let plane_out = out_size[0] * out_size[1];
    let image_len = plane_in * channels;
    if channels == 0 || src.len() / image_len * image_len != src.len() {
        return Err(DataError::Config(format!(
            "{} bytes are not a whole number of {channels}x{}x{} images",
            src.len(),
            in_size[0],
            in_size[1]
        )));
    }
    let n_planes = src.len() / plane_in;
    let mut out = vec![0.0; n_planes * plane_out];
    let mut scratch = Vec::new();
    for (plane, dst) in src
        .chunks_exact(plane_in)
        .zip(out.chunks_exact_mut(plane_out))
    {
        resizer.resize_plane(plane, dst, false, &mut scratch, |v| v);
    }
    Ok(out)
}

/// Resizes CHW u8 images and rounds back to u8 (half away from zero), for storing resized images
/// (image folders) as u8.
///
/// # Errors
///
/// As [`resize_bilinear`].
///
/// # Examples
///
/// ```
/// let out = data::resize::resize_bilinear_u8(&[0, 255], 1, [1, 2], [1, 3])?;
/// assert_eq!(out, [0, 128, 255]); // the middle is 127.5
/// # Ok::<(), data::DataError>(())
/// ```
pub fn resize_bilinear_u8(
    src: &[u8],
    channels: usize,
    in_size: [usize; 2],
    out_size: [usize; 2],
) -> Result<Vec<u8>> {
    Ok(resize_bilinear(src, channels, in_size, out_size)?
        .into_iter()
        .map(|v| v.round().clamp(0.0, 255.0) as u8)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_size_is_the_identity() {
        let src: Vec<u8> = (0..=255).collect();
        let out = resize_bilinear(&src, 1, [16, 16], [16, 16]).unwrap();
        assert_eq!(out.len(), src.len());
        assert!(out.iter().zip(&src).all(|(&o, &s)| o == f32::from(s)));
    }

    #[test]
    fn taps_follow_half_pixel_centres() {
        // 4 -> 2: s = (o + 0.5) * 2 - 0.5 = 0.5, 2.5.
        assert_eq!(
            taps(4, 2),
            vec![
                Tap {
                    lo: 0,
                    hi: 1,
                    frac: 0.5
                },
                Tap {
                    lo: 2,
                    hi: 3,
                    frac: 0.5
                }
            ]
        );
        // 2 -> 4: s = (o + 0.5) / 2 - 0.5 = -0.25 (clamped to pixel 0), 0.25, 0.75, 1.25 (clamped to 1).
        let t = taps(2, 4);
        assert_eq!((t[0].lo, t[0].hi), (0, 0));
        assert_eq!((t[1].lo, t[1].hi, t[1].frac), (0, 1, 0.25));
        assert_eq!((t[3].lo, t[3].hi), (1, 1));
    }

    #[test]
    fn flipped_resize_mirrors_the_unflipped_one_exactly() {
        let src: Vec<u8> = (0..32 * 32).map(|i| (i * 37 % 256) as u8).collect();
        let resizer = Resizer::new([32, 32], [28, 28]).unwrap();
        let (mut plain, mut flipped) = (vec![0.0; 784], vec![0.0; 784]);
        let mut scratch = Vec::new();
        resizer.resize_plane(&src, &mut plain, false, &mut scratch, |v| v);
        resizer.resize_plane(&src, &mut flipped, true, &mut scratch, |v| v);
        for (a, b) in plain.chunks(28).zip(flipped.chunks(28)) {
            let mirrored: Vec<f32> = b.iter().rev().copied().collect();
            assert_eq!(a, &mirrored[..]);
        }
    }

    #[test]
    fn zero_sizes_and_ragged_input_are_rejected() {
        assert_eq!(
            Resizer::new([0, 4], [2, 2]).unwrap_err().to_string(),
            "cannot resize 0x4 to 2x2: sizes must be positive"
        );
        assert_eq!(
            resize_bilinear(&[0; 5], 1, [2, 2], [1, 1])
                .unwrap_err()
                .to_string(),
            "5 bytes are not a whole number of 1x2x2 images"
        );
    }
}
