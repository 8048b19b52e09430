//! Images as u8 buffers, and the files they come from and go to: one home for image IO.
//!
//! - [`ImageSet`]: N images of one size, u8, in NCHW order (planar, as tensors are), with the
//!   layout conversions to and from NHWC (interleaved, as image files and `.npz` sample sets
//!   are): [`nhwc_to_nchw`], [`nchw_to_nhwc`].
//! - Image files: [`read_image`] decodes one PNG, JPEG, GIF or BMP to CHW u8,
//!   [`list_image_files`] finds them under a folder, [`read_image_dir`] reads a folder of
//!   samples as they are, and [`save_png`] writes one.
//! - [`make_grid`]: many images tiled into one picture, as torchvision's `make_grid`.
//! - NumPy `.npy`/`.npz` ([`read_npz`], [`write_npz`]), and sample sets in them as FID tools
//!   exchange them, uint8 NHWC `arr_0` ([`read_samples_npz`], [`write_samples_npz`]).
//!
//! Nothing here touches libtorch: the crates above turn tensors into these bytes (the `sample`
//! crate's `to_u8_nchw`) and hand them down.

mod file;
mod grid;
mod npz;

pub(crate) use file::map_parallel;
pub use file::{
    decode_image_bytes, is_image_name, list_image_files, read_image, read_image_dir, save_png,
    Skipped,
};
pub use grid::{make_grid, Cell, Grid, GridSpec};
pub use npz::{read_npz, read_samples_npz, write_npz, write_samples_npz, NpyArray, NpyData};

use crate::error::{DataError, Result};

/// N images of one size, u8, NCHW: image `i`'s channel `c` is the row-major `H × W` plane at
/// `pixels[(i * C + c) * H * W..]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSet {
    /// `N * C * H * W` values.
    pub pixels: Vec<u8>,
    /// `[N, C, H, W]`.
    pub shape: [usize; 4],
}

impl ImageSet {
    /// Images from NCHW pixels.
    ///
    /// # Errors
    /// [`DataError::Config`] when `pixels` does not fill `shape`.
    ///
    /// ```
    /// let set = data::images::ImageSet::new(vec![0; 2 * 3 * 4 * 4], [2, 3, 4, 4])?;
    /// assert_eq!(set.len(), 2);
    /// assert!(data::images::ImageSet::new(vec![0; 5], [2, 3, 4, 4]).is_err());
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn new(pixels: Vec<u8>, shape: [usize; 4]) -> Result<Self> {
        check_len(pixels.len(), shape, "NCHW")?;
        Ok(Self { pixels, shape })
    }

    /// Images from NHWC pixels, `shape_nhwc = [N, H, W, C]` (the layout of image files and of
    /// sample `.npz` files).
    ///
    /// # Errors
    /// [`DataError::Config`] when `pixels` does not fill `shape_nhwc`.
    ///
    /// ```
    /// // One 1×2 RGB image: pixels (1, 2, 3) and (4, 5, 6).
    /// let set = data::images::ImageSet::from_nhwc(&[1, 2, 3, 4, 5, 6], [1, 1, 2, 3])?;
    /// assert_eq!((set.pixels, set.shape), (vec![1, 4, 2, 5, 3, 6], [1, 3, 1, 2]));
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn from_nhwc(pixels: &[u8], shape_nhwc: [usize; 4]) -> Result<Self> {
        check_len(pixels.len(), shape_nhwc, "NHWC")?;
        let [n, h, w, c] = shape_nhwc;
        Ok(Self {
            pixels: nhwc_to_nchw(pixels, shape_nhwc),
            shape: [n, c, h, w],
        })
    }

    /// The pixels in NHWC order, with `[N, H, W, C]`.
    pub fn to_nhwc(&self) -> (Vec<u8>, [usize; 4]) {
        let [n, c, h, w] = self.shape;
        (nchw_to_nhwc(&self.pixels, self.shape), [n, h, w, c])
    }

    /// The number of images.
    pub fn len(&self) -> usize {
        self.shape[0]
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.shape[0] == 0
    }
}

fn check_len(len: usize, shape: [usize; 4], layout: &str) -> Result<()> {
    if len != shape.iter().product::<usize>() {
        return Err(DataError::Config(format!(
            "{len} pixels do not fill the {layout} shape {shape:?}"
        )));
    }
    Ok(())
}

/// Interleaved NHWC to planar NCHW; `shape_nhwc = [N, H, W, C]`.
///
/// # Panics
/// When `nhwc` does not fill the shape (a programming error: [`ImageSet::from_nhwc`] checks).
///
/// ```
/// // Two 1×1 RGB images.
/// assert_eq!(data::images::nhwc_to_nchw(&[1, 2, 3, 4, 5, 6], [2, 1, 1, 3]), [1, 2, 3, 4, 5, 6]);
/// // One 1×2 gray-alpha image: (1, 2), (3, 4).
/// assert_eq!(data::images::nhwc_to_nchw(&[1, 2, 3, 4], [1, 1, 2, 2]), [1, 3, 2, 4]);
/// ```
pub fn nhwc_to_nchw(nhwc: &[u8], shape_nhwc: [usize; 4]) -> Vec<u8> {
    let [n, h, w, c] = shape_nhwc;
    assert_eq!(nhwc.len(), n * h * w * c, "{shape_nhwc:?} NHWC pixels");
    let plane = h * w;
    let mut nchw = vec![0u8; nhwc.len()];
    if c == 0 || plane == 0 {
        return nchw;
    }
    for (src, dst) in nhwc
        .chunks_exact(plane * c)
        .zip(nchw.chunks_exact_mut(plane * c))
    {
        for (px_idx, px) in src.chunks_exact(c).enumerate() {
            for (ch, &v) in px.iter().enumerate() {
                dst[ch * plane + px_idx] = v;
            }
        }
    }
    nchw
}

/// Planar NCHW to interleaved NHWC; `shape = [N, C, H, W]`.
///
/// # Panics
/// When `nchw` does not fill the shape (a programming error: [`ImageSet::new`] checks).
///
/// ```
/// // One 1×2 image of two channels: planes [1, 2] and [3, 4].
/// assert_eq!(data::images::nchw_to_nhwc(&[1, 2, 3, 4], [1, 2, 1, 2]), [1, 3, 2, 4]);
/// ```
pub fn nchw_to_nhwc(nchw: &[u8], shape: [usize; 4]) -> Vec<u8> {
    let [n, c, h, w] = shape;
    assert_eq!(nchw.len(), n * c * h * w, "{shape:?} NCHW pixels");
    let plane = h * w;
    let mut nhwc = vec![0u8; nchw.len()];
    if c == 0 || plane == 0 {
        return nhwc;
    }
    for (src, dst) in nchw
        .chunks_exact(plane * c)
        .zip(nhwc.chunks_exact_mut(plane * c))
    {
        for (ch, channel) in src.chunks_exact(plane).enumerate() {
            for (px_idx, &v) in channel.iter().enumerate() {
                dst[px_idx * c + ch] = v;
            }
        }
    }
    nhwc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_round_trip() {
        let shape = [3, 3, 2, 5];
        let nchw: Vec<u8> = (0..shape.iter().product::<usize>())
            .map(|v| v as u8)
            .collect();
        let set = ImageSet::new(nchw.clone(), shape).unwrap();
        let (nhwc, shape_nhwc) = set.to_nhwc();
        assert_eq!(shape_nhwc, [3, 2, 5, 3]);
        // Image 1, row 1, column 4, channel 2 in both layouts.
        assert_eq!(
            nhwc[((2 + 1) * 5 + 4) * 3 + 2],
            nchw[((3 + 2) * 2 + 1) * 5 + 4]
        );
        assert_eq!(ImageSet::from_nhwc(&nhwc, shape_nhwc).unwrap(), set);
    }

    #[test]
    fn buffers_that_do_not_fill_the_shape_are_refused() {
        let err = ImageSet::from_nhwc(&[0; 5], [1, 2, 2, 1]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "5 pixels do not fill the NHWC shape [1, 2, 2, 1]"
        );
    }
}
