//! Sampled images as bytes and pictures: u8 NCHW/NHWC conversion and PNG grids.

use std::path::Path;
use tch::{Device, Kind, Tensor};

use crate::SampleError;

/// Converts `[N, C, H, W]` f32 images on [-1, 1] to u8 NCHW bytes on the CPU.
pub fn to_u8_nchw(images: &Tensor) -> Vec<u8> {
    to_u8(images, false)
}

/// Converts `[N, C, H, W]` f32 images on [-1, 1] to u8 NHWC bytes on the CPU, the layout of the
/// `.npz` files FID tools read.
pub fn to_u8_nhwc(images: &Tensor) -> Vec<u8> {
    to_u8(images, true)
}

fn to_u8(images: &Tensor, channels_last: bool) -> Vec<u8> {
    let bytes = ((images.to_kind(Kind::Float).clamp(-1.0, 1.0) + 1.0) * 127.5)
        .round()
        .to_kind(Kind::Uint8);
    let bytes = if channels_last {
        bytes.permute([0, 2, 3, 1])
    } else {
        bytes
    };
    let bytes = bytes.to_device(Device::Cpu).contiguous().view([-1]);
    Vec::<u8>::try_from(&bytes).expect("u8 tensor")
}

/// Saves `[N, C, H, W]` images on [-1, 1] as one PNG grid with `nrow` images per row.
///
/// # Errors
/// [`SampleError::Image`] naming the file when the grid cannot be made or written.
pub fn save_grid(images: &Tensor, nrow: usize, path: &Path) -> Result<(), SampleError> {
    let size = images.size();
    let shape = [
        size[0] as usize,
        size[1] as usize,
        size[2] as usize,
        size[3] as usize,
    ];
    let bytes = to_u8_nchw(images);
    let spec = data::images::GridSpec {
        nrow,
        ..data::images::GridSpec::default()
    };
    let image_err = |e: &dyn std::fmt::Display| SampleError::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let grid = data::images::make_grid(&bytes, shape, &spec).map_err(|e| image_err(&e))?;
    grid.save_png(path).map_err(|e| image_err(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn u8_layouts() {
        // One 2×1×2 image: channel 0 is [-1, 1], channel 1 is [0, 0.5].
        let xs = Tensor::from_slice(&[-1.0f32, 1.0, 0.0, 0.5]).reshape([1, 2, 1, 2]);
        assert_eq!(to_u8_nchw(&xs), [0, 255, 128, 191]);
        assert_eq!(to_u8_nhwc(&xs), [0, 128, 255, 191]);
    }
}
