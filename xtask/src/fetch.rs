//! `cargo xtask fetch-*`: dataset and weight downloads.

/// The download subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum FetchCommand {}

/// Runs a download subcommand.
pub fn run(command: FetchCommand) -> anyhow::Result<()> {
    match command {}
}
