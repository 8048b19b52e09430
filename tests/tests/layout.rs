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
        "crates/sample",
        "crates/eval",
        "crates/fetch",
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

/// `cargo tree -e normal -p PACKAGE`: the package's normal (not dev, not build) dependencies.
fn tree(package: &str) -> String {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
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
    let tree = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(tree.starts_with(package), "unexpected output: {tree}");
    tree
}

/// Whether `tree` lists the workspace crate `name` (as `name v0.1.0 (/path)`).
fn has_crate(tree: &str, name: &str) -> bool {
    tree.lines().any(|line| {
        line.trim_start_matches(|c: char| !c.is_ascii_alphanumeric())
            .starts_with(&format!("{name} v"))
    })
}

#[test]
fn schedule_and_data_do_not_depend_on_libtorch() {
    for package in ["schedule", "data"] {
        let tree = tree(package);
        assert!(
            !tree.contains("tch ") && !tree.contains("torch-sys"),
            "{package} pulls libtorch in:\n{tree}"
        );
    }
}

#[test]
fn dependencies_point_down() {
    // Sampling and scoring link neither the training loop nor the optimizer.
    for package in ["sample", "eval"] {
        let tree = tree(package);
        assert!(
            !has_crate(&tree, "train"),
            "{package} depends on train:\n{tree}"
        );
    }
    // The dataset library holds no HTTP client; the network crate no doctor code.
    let data = tree("data");
    for http in ["ureq", "tar", "indicatif"] {
        assert!(!has_crate(&data, http), "data depends on {http}:\n{data}");
    }
    let model = tree("model");
    assert!(
        !has_crate(&model, "libloading"),
        "model depends on libloading:\n{model}"
    );
    for lower in ["sample", "eval", "train", "fetch"] {
        assert!(
            !has_crate(&model, lower),
            "model depends on {lower}:\n{model}"
        );
    }
    let eval = tree("eval");
    assert!(
        has_crate(&eval, "sample") && !has_crate(&eval, "fetch"),
        "{eval}"
    );
    let train = tree("train");
    assert!(
        has_crate(&train, "sample") && !has_crate(&train, "eval"),
        "{train}"
    );
}

#[test]
fn every_crate_inherits_the_declared_rust_version() {
    let workspace = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    assert!(
        workspace.contains("rust-version = \"1.87\""),
        "[workspace.package] rust-version"
    );
    let mut manifests = vec![
        root().join("xtask/Cargo.toml"),
        root().join("tests/Cargo.toml"),
    ];
    for entry in std::fs::read_dir(root().join("crates")).unwrap() {
        manifests.push(entry.unwrap().path().join("Cargo.toml"));
    }
    for manifest in manifests {
        let text = std::fs::read_to_string(&manifest).unwrap();
        assert!(
            text.contains("rust-version.workspace = true"),
            "{} does not inherit rust-version",
            manifest.display()
        );
    }
}

/// The backticked words of a markdown table cell.
fn code_spans(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

/// ARCHITECTURE.md's dependency table lists every crate's normal workspace dependencies (and
/// `tch`) as `cargo metadata` reports them: the map cannot drift from the manifests.
#[test]
fn the_architecture_dependency_table_matches_the_manifests() {
    use std::collections::{BTreeMap, BTreeSet};
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(root())
        .args([
            "metadata",
            "--offline",
            "--no-deps",
            "--format-version",
            "1",
        ])
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = metadata["packages"].as_array().unwrap();
    let names: BTreeSet<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .chain(["tch"])
        .collect();
    let actual: BTreeMap<&str, BTreeSet<&str>> = packages
        .iter()
        .filter(|p| p["name"] != "e2e")
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap())
                .filter(|name| names.contains(name))
                .collect();
            (p["name"].as_str().unwrap(), deps)
        })
        .collect();

    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let table = text
        .split("| crate | depends on |")
        .nth(1)
        .expect("ARCHITECTURE.md has a `| crate | depends on |` table");
    let documented: BTreeMap<&str, BTreeSet<&str>> = table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').collect();
            let krate = code_spans(cells[1])[0];
            let deps = code_spans(cells[2])
                .into_iter()
                .filter(|name| names.contains(name))
                .collect();
            (krate, deps)
        })
        .collect();
    assert_eq!(
        documented, actual,
        "ARCHITECTURE.md's dependency table (left) differs from the manifests (right)"
    );
}

/// `cargo tree --prefix none` with `args`: one `name vX.Y.Z (path) [features]` line per crate.
fn tree_lines(args: &[&str]) -> Vec<String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(root())
        .args(["tree", "--offline", "--prefix", "none"])
        .args(args)
        .output()
        .expect("run cargo tree");
    assert!(
        out.status.success(),
        "cargo tree {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The features of torch-ext that `packages` built together (as `cargo build -p a -p b` does)
/// turn on, from `cargo tree -f "{p} [{f}]"`.
fn torch_ext_features(packages: &[&str]) -> Vec<String> {
    let mut args = vec!["-e", "normal", "-f", "{p} [{f}]"];
    for package in packages {
        args.extend(["-p", package]);
    }
    let lines = tree_lines(&args);
    let line = lines
        .iter()
        .find(|line| line.starts_with("torch-ext v"))
        .unwrap_or_else(|| panic!("{packages:?} do not depend on torch-ext:\n{lines:#?}"));
    let features = &line[line.rfind('[').unwrap() + 1..line.rfind(']').unwrap()];
    features
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn model_sample_and_eval_build_without_c10d_and_gloo() {
    // torch-ext compiles c10d (csrc/dist.cpp) and looks for the Gloo headers only with its
    // `dist` feature; CI builds these three with `DDPM_GLOO_INCLUDE=` (no Gloo headers).
    let features = torch_ext_features(&["model", "sample", "eval"]);
    assert!(
        !features.iter().any(|f| f == "dist" || f == "nccl"),
        "model, sample and eval turn on torch-ext's {features:?}"
    );
    // The crates that run ranks turn it on.
    for package in ["train", "cli"] {
        let features = torch_ext_features(&[package]);
        assert!(
            features.iter().any(|f| f == "dist"),
            "{package} builds torch-ext without `dist`: {features:?}"
        );
    }
    // And sampling across ranks needs no training code.
    assert!(!has_crate(&tree("sample"), "train"));
}

/// The workspace crates (path dependencies) among `cargo tree` lines.
fn ours(lines: &[String]) -> std::collections::BTreeSet<String> {
    let root = root().display().to_string();
    lines
        .iter()
        .filter(|line| line.contains(&format!("({root}")))
        .map(|line| line.split(' ').next().unwrap().to_string())
        .collect()
}

#[test]
fn torch_ext_and_build_support_sit_at_the_bottom() {
    // torch-ext builds on tch alone (and build-support, in its build script), with every
    // feature: no crate of ours sits below it.
    let torch_ext = tree_lines(&["-e", "normal,build", "-p", "torch-ext", "--all-features"]);
    assert_eq!(
        ours(&torch_ext),
        ["build-support", "torch-ext"].map(String::from).into(),
        "{torch_ext:#?}"
    );
    // build-support depends on no crate of ours, not even for its tests.
    let build_support = tree_lines(&["-e", "all", "-p", "build-support"]);
    assert_eq!(
        ours(&build_support),
        ["build-support".to_string()].into(),
        "{build_support:#?}"
    );
}
