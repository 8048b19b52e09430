//! Helpers for the end-to-end tests: find the `ddpm` binary that cargo built beside us and run it.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `ddpm` binary of the same profile as this test (`target/<profile>/ddpm`).
///
/// `cargo xtask test` builds it before the tests; a plain `cargo test --workspace` builds it too,
/// because the `cli` package has integration tests of its own.
pub fn ddpm_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/ddpm
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let bin = profile_dir.join("ddpm");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p cli` (cargo xtask test does it)",
        bin.display()
    );
    bin
}

/// A `Command` for `ddpm` with the given arguments.
pub fn ddpm(args: &[&str]) -> Command {
    let mut cmd = Command::new(ddpm_bin());
    cmd.args(args);
    cmd
}

/// Runs `ddpm` and returns its output, whatever the exit status.
pub fn run(args: &[&str]) -> Output {
    ddpm(args).output().expect("cannot start ddpm")
}

/// The repository's `shared/` folder (a sibling of the checkout), holding small real data.
pub fn shared_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}
