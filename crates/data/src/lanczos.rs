//! Antialiased Lanczos resizing as Pillow does it (`Image.resize(size, Image.LANCZOS)`, which
//! older Pillow called `ANTIALIAS`), the filter ProgressiveGAN's `dataset_tool.py` used to make
//! the paper's 256² LSUN data (`create_lsun`: centre crop to the short side, then this resize).
//!
//! The algorithm follows Pillow's `Resample.c` as documented by its behaviour: a separable
//! filter whose support (3 input pixels for Lanczos-3) widens by the downscale factor so that
//! every input pixel contributes (the antialiasing), weights normalised to sum to 1 and then
//! quantised to 22-bit fixed point, the horizontal pass first into a u8 image of only the rows
//! the vertical pass reads, then the vertical pass, each output rounded and clamped to 0..=255.
//! Doing the same arithmetic gives Pillow's pixels exactly on lossless inputs (the golden test
//! `tests/stream_golden.rs` checks PNG values to 0 levels).

use crate::error::{DataError, Result};

/// Fixed-point bits of the weights, as Pillow's 8-bit path (`32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

/// The Lanczos-3 window: `sinc(x) sinc(x / 3)` on `[-3, 3)`, zero outside.
fn lanczos3(x: f64) -> f64 {
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            return 1.0;
        }
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// The taps of one axis: for output `i`, input `start[i]..start[i] + len` with fixed-point
/// weights `weights[i * stride..]`.
#[derive(Debug, Clone, PartialEq)]
struct Taps {
    start: Vec<usize>,
    len: Vec<usize>,
    stride: usize,
    weights: Vec<i32>,
}

impl Taps {
    /// The taps that resize `in_len` samples to `out_len`.
    fn new(in_len: usize, out_len: usize) -> Self {
        let scale = in_len as f64 / out_len as f64;
        let filter_scale = scale.max(1.0);
        let support = 3.0 * filter_scale;
        let stride = support.ceil() as usize * 2 + 1;
        let mut taps = Taps {
            start: Vec::with_capacity(out_len),
            len: Vec::with_capacity(out_len),
            stride,
            weights: vec![0; out_len * stride],
        };
        // Pillow multiplies by the reciprocal; dividing would round differently.
        let inv_scale = 1.0 / filter_scale;
        let mut row = vec![0.0f64; stride];
        for out_idx in 0..out_len {
            let center = (out_idx as f64 + 0.5) * scale;
            // Truncation toward zero, as C's `(int)` cast; then clamped to the input.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(in_len as i64) as usize;
            let n = hi - lo;
            let mut sum = 0.0;
            for (k, w) in row.iter_mut().enumerate().take(n) {
                *w = lanczos3(((k + lo) as f64 - center + 0.5) * inv_scale);
                sum += *w;
            }
            let dst = &mut taps.weights[out_idx * stride..out_idx * stride + n];
            for (d, &w) in dst.iter_mut().zip(&row[..n]) {
                let w = if sum == 0.0 { w } else { w / sum };
                let q = w * f64::from(1u32 << PRECISION_BITS);
                *d = if w < 0.0 {
                    (q - 0.5) as i32
                } else {
                    (q + 0.5) as i32
                };
            }
            taps.start.push(lo);
            taps.len.push(n);
        }
        taps
    }

    fn weights(&self, out_idx: usize) -> &[i32] {
        let at = out_idx * self.stride;
        &self.weights[at..at + self.len[out_idx]]
    }
}

/// A fixed-point sum back to u8: round half up, clamp to 0..=255.
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// A Lanczos resizer from one plane size to another, its taps computed once.
#[derive(Debug, Clone, PartialEq)]
pub struct LanczosResizer {
    in_size: [usize; 2],
    out_size: [usize; 2],
    rows: Taps,
    cols: Taps,
}

impl LanczosResizer {
    /// A resizer from `in_size` to `out_size` (`[height, width]`).
    ///
    /// # Errors
    ///
    /// [`DataError::Config`] when a size is zero.
    pub fn new(in_size: [usize; 2], out_size: [usize; 2]) -> Result<Self> {
        if in_size.contains(&0) || out_size.contains(&0) {
            return Err(DataError::Config(format!(
                "cannot resize {}x{} to {}x{}: a size is zero",
                in_size[0], in_size[1], out_size[0], out_size[1]
            )));
        }
        Ok(Self {
            in_size,
            out_size,
            rows: Taps::new(in_size[0], out_size[0]),
            cols: Taps::new(in_size[1], out_size[1]),
        })
    }

    /// Resizes one plane (`in_size`, row-major) into `dst` (`out_size`); `scratch` holds the
    /// horizontal pass and is reused between calls.
    ///
    /// # Panics
    ///
    /// When `src` or `dst` has the wrong length.
    pub fn resize_plane(&self, src: &[u8], dst: &mut [u8], scratch: &mut Vec<u8>) {
        let ([in_h, in_w], [out_h, out_w]) = (self.in_size, self.out_size);
        assert_eq!(src.len(), in_h * in_w, "source plane has the wrong size");
        assert_eq!(
            dst.len(),
            out_h * out_w,
            "destination plane has the wrong size"
        );
        let need_cols = in_w != out_w;
        let need_rows = in_h != out_h;
        // Pillow's horizontal pass covers only the rows the vertical pass reads.
        let (first, last) = if need_rows {
            let last = self.rows.start[out_h - 1] + self.rows.len[out_h - 1];
            (self.rows.start[0], last)
        } else {
            (0, in_h)
        };
        let horizontal: &[u8] = if need_cols {
            scratch.clear();
            scratch.resize((last - first) * out_w, 0);
            for (row, out_row) in src[first * in_w..last * in_w]
                .chunks_exact(in_w)
                .zip(scratch.chunks_exact_mut(out_w))
            {
                for (x, out) in out_row.iter_mut().enumerate() {
                    let start = self.cols.start[x];
                    let weights = self.cols.weights(x);
                    let mut acc = 1i32 << (PRECISION_BITS - 1);
                    for (&p, &w) in row[start..start + weights.len()].iter().zip(weights) {
                        acc += i32::from(p) * w;
                    }
                    *out = clip8(acc);
                }
            }
            scratch
        } else {
            &src[first * in_w..last * in_w]
        };
        if !need_rows {
            dst.copy_from_slice(horizontal);
            return;
        }
        let mut acc = vec![0i32; out_w];
        for (y, out_row) in dst.chunks_exact_mut(out_w).enumerate() {
            let start = self.rows.start[y] - first;
            acc.fill(1i32 << (PRECISION_BITS - 1));
            for (k, &w) in self.rows.weights(y).iter().enumerate() {
                let row = &horizontal[(start + k) * out_w..(start + k + 1) * out_w];
                for (a, &p) in acc.iter_mut().zip(row) {
                    *a += i32::from(p) * w;
                }
            }
            for (out, &a) in out_row.iter_mut().zip(&acc) {
                *out = clip8(a);
            }
        }
    }
}

/// Resizes a CHW u8 image of `in_size` to `out_size` with Pillow's antialiased Lanczos filter.
///
/// # Errors
///
/// [`DataError::Config`] when a size is zero or `chw` is not `channels` planes of `in_size`.
///
/// # Examples
///
/// ```
/// // A flat image stays flat; a 4x4 downscale of a step keeps its mean.
/// let out = data::lanczos::resize_lanczos_u8(&[7; 2 * 8 * 8], 2, [8, 8], [4, 4])?;
/// assert_eq!(out, vec![7; 2 * 4 * 4]);
/// # Ok::<(), data::DataError>(())
/// ```
pub fn resize_lanczos_u8(
    chw: &[u8],
    channels: usize,
    in_size: [usize; 2],
    out_size: [usize; 2],
) -> Result<Vec<u8>> {
    let plane_in = in_size[0] * in_size[1];
    if chw.len() != channels * plane_in {
        return Err(DataError::Config(format!(
            "{} bytes are not a {channels}x{}x{} image",
            chw.len(),
            in_size[0],
            in_size[1]
        )));
    }
    let resizer = LanczosResizer::new(in_size, out_size)?;
    let plane_out = out_size[0] * out_size[1];
    let mut out = vec![0u8; channels * plane_out];
    let mut scratch = Vec::new();
    for (src, dst) in chw
        .chunks_exact(plane_in)
        .zip(out.chunks_exact_mut(plane_out))
    {
        resizer.resize_plane(src, dst, &mut scratch);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point_and_cover_the_support() {
        let taps = Taps::new(300, 64);
        for i in 0..64 {
            let sum: i64 = taps.weights(i).iter().map(|&w| i64::from(w)).sum();
            // Each weight rounds by at most half a unit.
            assert!(
                (sum - (1 << PRECISION_BITS)).abs() <= taps.len[i] as i64,
                "{sum}"
            );
        }
        // Downscaling by 300/64 widens the support to about 3 * 4.7 input pixels each side.
        assert!(taps.len[32] >= 28, "{}", taps.len[32]);
    }

    #[test]
    fn identity_size_copies_and_upscaling_interpolates() {
        let src: Vec<u8> = (0..16).map(|v| v * 10).collect();
        let r = LanczosResizer::new([4, 4], [4, 4]).unwrap();
        let mut dst = vec![0; 16];
        r.resize_plane(&src, &mut dst, &mut Vec::new());
        assert_eq!(dst, src);
        let up = resize_lanczos_u8(&[0, 0, 255, 255], 1, [1, 4], [1, 8]).unwrap();
        assert_eq!(up.len(), 8);
        assert!(up[0] < 20 && up[7] > 235, "{up:?}");
        assert!(
            up.windows(2).skip(2).take(3).all(|w| w[0] <= w[1]),
            "{up:?}"
        );
    }
}
