//! Writing image tensors as PNG grids.

use std::path::Path;
use tch::Tensor;

use crate::sample::to_u8_nchw;
use crate::TrainError;

/// Saves `[N, C, H, W]` images on [-1, 1] as one PNG grid with `nrow` images per row.
///
/// # Errors
/// [`TrainError::Checkpoint`] naming the file when it cannot be written.
pub fn save_grid(images: &Tensor, nrow: usize, path: &Path) -> Result<(), TrainError> {
    let size = images.size();
    let shape = [
        size[0] as usize,
        size[1] as usize,
        size[2] as usize,
        size[3] as usize,
    ];
    let bytes = to_u8_nchw(images);
    let spec = data::grid::GridSpec {
        nrow,
        ..data::grid::GridSpec::default()
    };
    let grid = data::grid::make_grid(&bytes, shape, &spec)
        .map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    grid.save_png(path)
        .map_err(|e| TrainError::Checkpoint(format!("{}: {e}", path.display())))
}
