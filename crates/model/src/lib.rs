//! Denoising networks ε_θ(x_t, t) on libtorch (tch).
//!
//! - [`device`]: the `--device auto|cpu|cuda[:N]` choice, resolved once and passed down.
//! - [`runtime`]: what libtorch this process runs on (versions, CUDA, cuDNN), as `ddpm doctor` shows.

pub mod device;
pub mod runtime;
