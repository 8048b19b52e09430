//! `ddpm checkpoint`: check a run's checkpoints on disk (`ddpm checkpoint verify RUN_DIR`)
//! against the digests their `state.json` records ([`train::digest`]).

use anyhow::{bail, Result};
use std::path::PathBuf;
use train::digest::{self, Verified};

/// Subcommands of `ddpm checkpoint`.
#[derive(Debug, clap::Subcommand)]
pub enum CheckpointCommand {
    /// Check every checkpoint of a run, and `checkpoints/best/`, against the digests in their
    /// state.json (or one checkpoint, given its directory); exits 1 naming each file that does
    /// not match.
    Verify(VerifyArgs),
}

/// Arguments of `ddpm checkpoint verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The run directory (`ddpm train --run-dir`), or one checkpoint directory
    /// (`<run>/checkpoints/step-N`, `best`, a copied one).
    #[arg(value_name = "RUN_DIR")]
    pub run_dir: PathBuf,
}

/// Runs a `ddpm checkpoint` subcommand.
///
/// # Errors
/// When the run holds no checkpoint, or any checkpoint does not match its digests.
pub fn run(command: CheckpointCommand) -> Result<()> {
    match command {
        CheckpointCommand::Verify(args) => verify(&args),
    }
}

fn verify(args: &VerifyArgs) -> Result<()> {
    let checks = digest::verify_run(&args.run_dir)?;
    let mut n_bad = 0;
    for check in &checks {
        let dir = check.dir.display();
        match &check.outcome {
            Ok(Verified::Checked(n)) => println!("ok          {dir} ({n} files match)"),
            Ok(Verified::Unverified) => {
                println!("unverified  {dir} (written before checkpoints had digests)")
            }
            Err(err) => {
                n_bad += 1;
                println!("BAD         {dir}: {err}");
            }
        }
    }
    if n_bad > 0 {
        bail!(
            "{n_bad} of {} checkpoints under {} do not match their digests: resume falls back \
             past them; delete them or resume from an older one with --resume-from",
            checks.len(),
            args.run_dir.display()
        );
    }
    Ok(())
}
