//! `ddpm data`: inspect datasets.

/// Subcommands of `ddpm data`.
#[derive(Debug, clap::Subcommand)]
pub enum DataCommand {}

/// Runs `ddpm data …`.
pub fn run(command: DataCommand) -> anyhow::Result<()> {
    match command {}
}
