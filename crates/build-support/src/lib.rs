//! Link settings for every crate whose executables (binaries, tests, benches) run on libtorch.
//!
//! Two problems are fixed here, once, for the whole workspace:
//!
//! 1. The GNU linker is invoked with `--as-needed`, and no Rust symbol references
//!    `libtorch_cuda.so`, so the linker drops it from the binary's `DT_NEEDED` list. libtorch
//!    registers its CUDA backend from that library's static initialisers, so without it
//!    `tch::Cuda::is_available()` is false even on a GPU machine. We wrap `-ltorch_cuda` in
//!    `--no-as-needed` whenever the libtorch directory has the library.
//! 2. Executables get an rpath to the libtorch `lib/` directory so that they run without
//!    `LD_LIBRARY_PATH` on the machine that built them.
//!
//! `cargo:rustc-link-arg` does not propagate to dependent packages, so each package with
//! executables calls [`link_libtorch`] from its own `build.rs`.

use std::path::PathBuf;

/// The libtorch directory the build uses: `$LIBTORCH` (set by `.cargo/config.toml` to the
/// `.libtorch` link that `cargo xtask setup` makes), with symlinks resolved.
pub fn libtorch_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("LIBTORCH")?);
    Some(dir.canonicalize().unwrap_or(dir))
}

/// Emits the link arguments described in the crate docs. Call it from `build.rs`.
pub fn link_libtorch() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    let Some(dir) = libtorch_dir() else {
        println!("cargo:warning=LIBTORCH is not set: run `cargo xtask setup`");
        return;
    };
    let lib = dir.join("lib");
    println!("cargo:rerun-if-changed={}", lib.display());
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    if lib.join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{}", lib.display());
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
    println!("cargo:rustc-env=DDPM_LIBTORCH_DIR={}", dir.display());
}
