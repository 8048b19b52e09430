//! A researcher's own crate, outside this workspace, that depends on `sample` by path and calls
//! `build_support::link_libtorch()` from its `build.rs` (as the README says), builds and runs: it
//! samples from the diffusers fixture folder and writes a grid.
//!
//! Ignored by default: its first build compiles torch-sys' C++ wrapper in a separate target
//! directory (`target/external-crate`, kept between runs), about 6 minutes on two cores; a rerun
//! takes about 30 seconds. Run it with `cargo test -p e2e --test external_crate -- --ignored`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

const MAIN: &str = r#"
use sample::{Pipeline, SamplerConfig, Weights};
use schedule::TimestepSpacing;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (folder, out) = (args.next().unwrap(), args.next().unwrap());
    let pipe = Pipeline::load(folder.as_ref(), Weights::Ema, tch::Device::Cpu)?;
    let ddim = SamplerConfig::Ddim {
        steps: 3, eta: 0.0, spacing: TimestepSpacing::Trailing, timesteps: None,
    };
    let images = pipe.generate(&ddim, 4, 0)?;
    sample::save_grid(&images, 2, out.as_ref())?;
    println!("sampled {:?}", images.size());
    Ok(())
}
"#;

#[test]
#[ignore = "slow: the first build compiles torch-sys in its own target directory (~6 min on 2 cores)"]
fn a_crate_outside_the_workspace_builds_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let krate = dir.path().join("my-sampler");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    let path = |p: &str| root().join(p).display().to_string();
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            r#"[package]
name = "my-sampler"
version = "0.1.0"
edition = "2021"

[dependencies]
sample = {{ path = "{sample}" }}
schedule = {{ path = "{schedule}" }}
tch = "=0.24.0"

[build-dependencies]
build-support = {{ path = "{build_support}" }}

[workspace]
"#,
            sample = path("crates/sample"),
            schedule = path("crates/schedule"),
            build_support = path("crates/build-support"),
        ),
    )
    .unwrap();
    std::fs::write(
        krate.join("build.rs"),
        "fn main() {\n    build_support::link_libtorch();\n}\n",
    )
    .unwrap();
    std::fs::write(krate.join("src/main.rs"), MAIN).unwrap();
    // The workspace's lock file pins the same versions, so the build needs no network.
    std::fs::copy(root().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();

    let libtorch = root()
        .join(".libtorch")
        .canonicalize()
        .expect("run `cargo xtask setup`");
    let grid = dir.path().join("grid.png");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = std::time::Instant::now();
    let out = Command::new(cargo)
        .current_dir(&krate)
        .env("LIBTORCH", &libtorch)
        .env("LIBTORCH_CXX11_ABI", "1")
        .env("CARGO_TARGET_DIR", root().join("target/external-crate"))
        // Nothing of this workspace's environment may make it work by accident.
        .env_remove("LD_LIBRARY_PATH")
        .args(["run", "--offline", "--quiet", "--"])
        .arg(root().join("crates/sample/tests/fixtures/diffusers/modern"))
        .arg(&grid)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the external crate failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sampled [4, 3, 8, 8]"), "{stdout}");
    assert!(grid.is_file());
    eprintln!(
        "external crate built and ran in {:.0} s",
        started.elapsed().as_secs_f64()
    );
}
