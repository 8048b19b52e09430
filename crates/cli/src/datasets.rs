//! Where `ddpm` finds a named dataset on disk: `--data DIR`, or `data/DATASET` as
//! `cargo xtask fetch-*` lays it out, fetched when missing (`ddpm train`, `ddpm eval`,
//! `ddpm forward`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use data::DatasetSpec;

/// The default directory of a dataset under `data/`, as `cargo xtask fetch-*` lays it out.
pub fn default_data_dir(spec: &DatasetSpec) -> Option<PathBuf> {
    let name = match spec {
        DatasetSpec::Cifar10 { .. } => "cifar-10-batches-bin",
        DatasetSpec::Cifar100 { .. } => "cifar-100-binary",
        DatasetSpec::FashionMnist { .. } => "fashion-mnist",
        DatasetSpec::Mnist { .. } => "mnist",
        _ => return None,
    };
    Some(Path::new("data").join(name))
}

/// Finds (and, for CIFAR and Fashion-MNIST, fetches when missing) the dataset directory.
pub fn ensure_data(spec: &DatasetSpec, given: Option<&Path>, offline: bool) -> Result<PathBuf> {
    if let Some(path) = given {
        if !path.exists() {
            bail!("--data {} does not exist", path.display());
        }
        return Ok(path.to_path_buf());
    }
    let Some(dir) = default_data_dir(spec) else {
        bail!("this dataset has no default location: pass --data DIR");
    };
    if dir.exists() {
        return Ok(dir);
    }
    let dest = Path::new("data");
    let options = fetch::FetchOptions::default();
    let fetched = match spec {
        DatasetSpec::Cifar10 { .. } if !offline => {
            eprintln!("{} is missing: fetching CIFAR-10 (as `cargo xtask fetch-cifar`)", dir.display());
            fetch::Tarball::cifar10().fetch(dest, &options)
        }
        DatasetSpec::Cifar100 { .. } if !offline => {
            eprintln!("{} is missing: fetching CIFAR-100", dir.display());
            fetch::Tarball::cifar100().fetch(dest, &options)
        }
        DatasetSpec::FashionMnist { .. } if !offline => {
            eprintln!("{} is missing: fetching Fashion-MNIST", dir.display());
            fetch::FileSet::fashion_mnist().fetch(dest, &options)
        }
        _ => bail!(
            "{} is missing: run `cargo xtask fetch-cifar` (or fetch-fashion-mnist), or pass --data DIR",
            dir.display()
        ),
    };
    fetched.with_context(|| format!("{} is missing and could not be fetched", dir.display()))
}
