//! Compiles the C++ shim in `csrc/` against the libtorch that torch-sys links, and links it.
//!
//! - libtorch: `DEP_TCH_LIBTORCH_LIB`, printed by torch-sys (`links = "tch"`).
//! - With the `dist` feature (c10d, `csrc/dist.cpp`), Gloo headers (libtorch has Gloo inside but
//!   ships no headers): `$DDPM_GLOO_INCLUDE`, else `<repo>/.deps/gloo/usr/include`, which
//!   `cargo xtask setup` fills from Debian's libgloo-dev. `DDPM_GLOO_INCLUDE=` (set, empty)
//!   says that there are none: no fallback is looked at, and a build with `dist` fails at once.
//!   CI builds `model`, `sample` and `eval` that way, which shows that they need no Gloo.
//!   Without `dist` the Gloo headers are not looked for at all.
//! - With the `nccl` or `cuda` feature, CUDA and NCCL headers: `$DDPM_CUDA_INCLUDE` (a
//!   `:`-separated list), else the pip wheels' `nvidia/{cu13,nccl}/include` next to the torch
//!   package, plus `<repo>/.deps/cuda-headers/nvidia/cu13/include` (`crt/`, `nv/target`, which
//!   `cargo xtask setup` installs from PyPI).

use std::env;
use std::path::{Path, PathBuf};

fn main() {
    build_support::link_libtorch();

    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let repo = manifest
        .parent()
        .and_then(Path::parent)
        .expect("torch-ext sits in <repo>/crates/torch-ext")
        .to_path_buf();
    let lib = PathBuf::from(env::var_os("DEP_TCH_LIBTORCH_LIB").unwrap_or_else(|| {
        fail(
            "torch-sys did not report its libtorch (DEP_TCH_LIBTORCH_LIB): run `cargo xtask setup`",
        )
    }));
    let torch = lib
        .parent()
        .expect("libtorch's lib/ has a parent")
        .to_path_buf();
    let nccl = env::var_os("CARGO_FEATURE_NCCL").is_some();
    let cuda = env::var_os("CARGO_FEATURE_CUDA").is_some();
    let dist = env::var_os("CARGO_FEATURE_DIST").is_some();

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .pic(true)
        // Debug info for code that is mostly libtorch's headers costs compile time and gigabytes.
        .debug(false)
        .warnings(false)
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        // libtorch's headers trip these by design; they are noise in a build log.
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        // Every `extern "C"` function the shim defines is declared in csrc/torch_ext.h first
        // (which tests/ffi_header.rs checks the Rust declarations against): one that is not
        // fails here, as a definition that differs from its declaration does.
        .flag_if_supported("-Werror=missing-declarations")
        .file("csrc/core.cpp")
        .file("csrc/checkpoint.cpp");
    if dist {
        build
            .include(gloo_include(&repo))
            .flag("-DUSE_DISTRIBUTED")
            .flag("-DUSE_C10D_GLOO")
            .file("csrc/dist.cpp");
    }
    if nccl || cuda {
        for dir in cuda_includes(&repo, &torch, nccl) {
            build.include(dir);
        }
    }
    if nccl {
        build.flag("-DUSE_C10D_NCCL");
    }
    if cuda {
        build.file("csrc/cuda.cpp");
    }
    build.compile("torch_ext");

    println!("cargo:rustc-link-search=native={}", lib.display());
    if nccl || cuda {
        // ProcessGroupNCCL and CUDAGraph are in libtorch_cuda, the CUDA streams in libc10_cuda.
        println!("cargo:rustc-link-lib=dylib=torch_cuda");
        println!("cargo:rustc-link-lib=dylib=c10_cuda");
    }
    for file in [
        "csrc/torch_ext.h",
        "csrc/common.h",
        "csrc/core.cpp",
        "csrc/dist.cpp",
        "csrc/cuda.cpp",
    ] {
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=DDPM_CUDA_INCLUDE");
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    panic!("{message}");
}

/// The directory that holds `gloo/config.h` (the `dist` feature only).
fn gloo_include(repo: &Path) -> PathBuf {
    println!("cargo:rerun-if-env-changed=DDPM_GLOO_INCLUDE");
    let (dir, from) = match env::var_os("DDPM_GLOO_INCLUDE") {
        Some(dir) if dir.is_empty() => fail(
            "the `dist` feature (c10d, Gloo) needs the Gloo headers, and DDPM_GLOO_INCLUDE is set \
             empty, which says there are none: point it at a directory with gloo/config.h, or \
             unset it to use the ones `cargo xtask setup` fetches into .deps/gloo; crates that \
             need no c10d (`model`, `sample`, `eval`) build without them",
        ),
        Some(dir) => (PathBuf::from(dir), "DDPM_GLOO_INCLUDE"),
        None => (repo.join(".deps/gloo/usr/include"), "the default location"),
    };
    println!(
        "cargo:rerun-if-changed={}",
        dir.join("gloo/config.h").display()
    );
    if !dir.join("gloo/config.h").exists() {
        fail(&format!(
            "no Gloo headers in {} ({from}): run `cargo xtask setup` (it fetches Debian's libgloo-dev \
             into .deps/gloo), or set DDPM_GLOO_INCLUDE to a directory with gloo/config.h",
            dir.display()
        ));
    }
    dir
}

/// CUDA (and, for `nccl`, NCCL) include directories, checked for the headers the shim needs.
fn cuda_includes(repo: &Path, torch: &Path, nccl: bool) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = match env::var_os("DDPM_CUDA_INCLUDE") {
        Some(list) => env::split_paths(&list).collect(),
        None => {
            let site = torch.canonicalize().unwrap_or_else(|_| torch.to_path_buf());
            let nvidia = site.parent().map(|p| p.join("nvidia")).unwrap_or_default();
            vec![
                nvidia.join("cu13/include"),
                nvidia.join("nccl/include"),
                repo.join(".deps/cuda-headers/nvidia/cu13/include"),
            ]
        }
    };
    let mut needed = vec!["cuda_runtime_api.h", "crt/host_defines.h", "nv/target"];
    if nccl {
        needed.push("nccl.h");
    }
    for header in needed {
        if !dirs.iter().any(|dir| dir.join(header).exists()) {
            fail(&format!(
                "the `nccl`/`cuda` features need {header}, found in none of {dirs:?}: run `cargo xtask setup` \
                 (it installs nvidia-cuda-crt and nvidia-cuda-cccl into .deps/cuda-headers; torch's pip wheel \
                 brings the rest), or set DDPM_CUDA_INCLUDE to the include directories"
            ));
        }
    }
    dirs.into_iter().filter(|dir| dir.is_dir()).collect()
}
