//! Image grids: many u8 NCHW images tiled into one HWC image, as torchvision's `make_grid`
//! (`nrow` images per row, `padding` pixels around each, filled with `pad_value`), with integer
//! upscaling and an optional blank band under each tile for a caption.
//!
//! `ddpm data show` draws dataset images with their labels; training and sampling save sample
//! grids after [`crate::denormalize_all`] (or the `sample` crate's `to_u8_nchw`) has turned f32
//! in [-1, 1] into u8.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};

/// How to lay images out in a grid.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GridSpec {
    /// Images per row.
    pub nrow: usize,
    /// Pixels between tiles and around the border.
    pub padding: usize,
    /// The value of padding and caption pixels, in every channel.
    pub pad_value: u8,
    /// Each image pixel becomes a `scale` x `scale` block (nearest neighbour).
    pub scale: usize,
    /// Blank rows under each tile, for a caption.
    pub caption_height: usize,
}

impl Default for GridSpec {
    /// torchvision's `make_grid` defaults: 8 per row, 2 pixels of black padding, no scaling.
    fn default() -> Self {
        Self {
            nrow: 8,
            padding: 2,
            pad_value: 0,
            scale: 1,
            caption_height: 0,
        }
    }
}

/// Where one tile sits in a [`Grid`], in output pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    /// Left edge of the (scaled) image.
    pub x: usize,
    /// Top edge of the image.
    pub y: usize,
    /// Scaled image width.
    pub width: usize,
    /// Scaled image height; the caption band, if any, starts at `y + height`.
    pub height: usize,
}

/// A grid image: `height` rows of `width` pixels of `channels` interleaved u8 values (HWC).
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// 1 (gray) or 3 (RGB).
    pub channels: usize,
    /// HWC pixels, `height * width * channels` values.
    pub pixels: Vec<u8>,
    /// One cell per input image, in input order.
    pub cells: Vec<Cell>,
}

/// Tiles `shape = [N, C, H, W]` u8 images (NCHW, C = 1 or 3) into one image, row by row.
///
/// With `n = N` and `cols = min(nrow, n)`, the grid is `cols` tiles wide and `ceil(n / cols)`
/// tiles high; a tile is `W * scale + padding` wide and `H * scale + caption_height + padding`
/// high, and the whole grid has `padding` more on the right and at the bottom (torchvision's
/// layout when `scale = 1` and `caption_height = 0`).
///
/// # Errors
///
/// [`DataError::Config`] when `images` does not match `shape`, N is 0, C is not 1 or 3, or
/// `nrow` or `scale` is 0.
///
/// # Examples
///
/// ```
/// // Two 1x1 gray images side by side with 1 pixel of padding (value 9).
/// let spec = data::images::GridSpec { nrow: 2, padding: 1, pad_value: 9, ..Default::default() };
/// let grid = data::images::make_grid(&[100, 200], [2, 1, 1, 1], &spec)?;
/// assert_eq!((grid.width, grid.height), (5, 3));
/// assert_eq!(grid.pixels, [9, 9, 9, 9, 9, 9, 100, 9, 200, 9, 9, 9, 9, 9, 9]);
/// # Ok::<(), data::DataError>(())
/// ```
pub fn make_grid(images: &[u8], shape: [usize; 4], spec: &GridSpec) -> Result<Grid> {
    let [n, c, h, w] = shape;
    if n == 0 || h == 0 || w == 0 || !(c == 1 || c == 3) {
        return Err(DataError::Config(format!(
            "cannot tile {n}x{c}x{h}x{w} images: need at least one image of 1 or 3 channels"
        )));
    }
    if images.len() != n * c * h * w {
        return Err(DataError::Config(format!(
            "{} bytes are not {n}x{c}x{h}x{w} images",
            images.len()
        )));
    }
    if spec.nrow == 0 || spec.scale == 0 {
        return Err(DataError::Config(
            "a grid needs nrow and scale of at least 1".into(),
        ));
    }
    let cols = spec.nrow.min(n);
    let rows = n.div_ceil(cols);
    let (tile_w, tile_h) = (w * spec.scale, h * spec.scale);
    let cell_w = tile_w + spec.padding;
    let cell_h = tile_h + spec.caption_height + spec.padding;
    let (width, height) = (cols * cell_w + spec.padding, rows * cell_h + spec.padding);
    let mut pixels = vec![spec.pad_value; width * height * c];
    let mut cells = Vec::with_capacity(n);
    let plane = h * w;
    for (idx, image) in images.chunks_exact(c * plane).enumerate() {
        let x0 = (idx % cols) * cell_w + spec.padding;
        let y0 = (idx / cols) * cell_h + spec.padding;
        cells.push(Cell {
            x: x0,
            y: y0,
            width: tile_w,
            height: tile_h,
        });
        for ty in 0..tile_h {
            let row = (y0 + ty) * width;
            let sy = ty / spec.scale;
            for tx in 0..tile_w {
                let src = sy * w + tx / spec.scale;
                let dst = (row + x0 + tx) * c;
                for ch in 0..c {
                    pixels[dst + ch] = image[ch * plane + src];
                }
            }
        }
    }
    Ok(Grid {
        width,
        height,
        channels: c,
        pixels,
        cells,
    })
}

impl Grid {
    /// The pixels as RGB (gray repeated in all three channels).
    ///
    /// # Examples
    ///
    /// ```
    /// let grid = data::images::make_grid(&[7], [1, 1, 1, 1], &data::images::GridSpec { padding: 0, ..Default::default() })?;
    /// assert_eq!(grid.to_rgb(), [7, 7, 7]);
    /// # Ok::<(), data::DataError>(())
    /// ```
    pub fn to_rgb(&self) -> Vec<u8> {
        match self.channels {
            3 => self.pixels.clone(),
            _ => self.pixels.iter().flat_map(|&v| [v, v, v]).collect(),
        }
    }

    /// Writes the grid as a PNG (gray or RGB as the grid is).
    ///
    /// # Errors
    ///
    /// [`DataError::Write`] naming `path` when encoding or writing fails.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        super::save_png(path, &self.pixels, self.width, self.height, self.channels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_torchvision_make_grid() {
        // torchvision.utils.make_grid(torch.zeros(10, 3, 4, 5), nrow=4, padding=2) is 3 x 20 x 30.
        let grid = make_grid(
            &[0; 10 * 3 * 4 * 5],
            [10, 3, 4, 5],
            &GridSpec {
                nrow: 4,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((grid.height, grid.width, grid.channels), (20, 30, 3));
        assert_eq!(
            grid.cells[5],
            Cell {
                x: 9,
                y: 8,
                width: 5,
                height: 4
            }
        );
    }

    #[test]
    fn channels_are_interleaved_and_images_scaled_with_caption_space() {
        // One 1x2 RGB image: pixel 0 is (1, 2, 3), pixel 1 is (4, 5, 6); planes R, G, B.
        let image = [1, 4, 2, 5, 3, 6];
        let spec = GridSpec {
            nrow: 1,
            padding: 0,
            pad_value: 255,
            scale: 2,
            caption_height: 1,
        };
        let grid = make_grid(&image, [1, 3, 1, 2], &spec).unwrap();
        assert_eq!((grid.width, grid.height), (4, 3));
        let row = [1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6];
        assert_eq!(&grid.pixels[..12], &row);
        assert_eq!(&grid.pixels[12..24], &row);
        assert_eq!(&grid.pixels[24..], &[255; 12], "caption band");
    }

    #[test]
    fn bad_shapes_are_rejected() {
        let spec = GridSpec::default();
        assert_eq!(
            make_grid(&[0; 5], [1, 1, 2, 2], &spec)
                .unwrap_err()
                .to_string(),
            "5 bytes are not 1x1x2x2 images"
        );
        assert!(make_grid(&[0; 8], [1, 2, 2, 2], &spec).is_err());
        assert!(make_grid(&[], [0, 1, 2, 2], &spec).is_err());
    }

    #[test]
    fn png_round_trips_through_the_image_crate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grid.png");
        let images: Vec<u8> = (0..2 * 3 * 2 * 2).map(|v| v as u8 * 10).collect();
        let grid = make_grid(&images, [2, 3, 2, 2], &GridSpec::default()).unwrap();
        grid.save_png(&path).unwrap();
        let back = image::open(&path).unwrap().to_rgb8();
        assert_eq!(
            (back.width() as usize, back.height() as usize),
            (grid.width, grid.height)
        );
        assert_eq!(back.into_raw(), grid.pixels);
        let err = grid
            .save_png(&dir.path().join("no/such/dir/grid.png"))
            .unwrap_err();
        assert!(err.to_string().starts_with("cannot write "), "{err}");
    }
}
