//! The workspace's shape: the layered crates exist, and the pure crates stay free of libtorch.

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn the_layout_has_every_layer() {
    for dir in [
        "crates/schedule",
        "crates/data",
        "crates/model",
        "crates/train",
        "crates/cli",
        "xtask",
        "tests",
        "data",
    ] {
        assert!(root().join(dir).is_dir(), "{dir} is missing");
    }
    assert!(root().join("data/README.md").is_file());
    let cli = std::fs::read_to_string(root().join("crates/cli/Cargo.toml")).unwrap();
    assert!(
        cli.contains("name = \"cli\"") && cli.contains("name = \"ddpm\""),
        "package cli, binary ddpm"
    );
    let config = std::fs::read_to_string(root().join(".cargo/config.toml")).unwrap();
    assert!(config.contains("xtask = "), "the `cargo xtask` alias");
}

#[test]
fn schedule_and_data_do_not_depend_on_libtorch() {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    for package in ["schedule", "data"] {
        let out = Command::new(&cargo)
            .current_dir(root())
            .args(["tree", "--offline", "-e", "normal", "-p", package])
            .output()
            .expect("run cargo tree");
        assert!(
            out.status.success(),
            "cargo tree -p {package}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tree = String::from_utf8_lossy(&out.stdout);
        assert!(tree.starts_with(package), "unexpected output: {tree}");
        assert!(
            !tree.contains("tch ") && !tree.contains("torch-sys"),
            "{package} pulls libtorch in:\n{tree}"
        );
    }
}
