//! Datasets on disk to u8 images in memory to f32 NCHW batches, in pure Rust (no libtorch).

/// Dataset downloads with checksums, resume and atomic extraction.
#[cfg(feature = "fetch")]
pub mod fetch;
