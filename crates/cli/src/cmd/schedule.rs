//! `ddpm schedule`: print or plot a noise schedule's tables.

/// Arguments of `ddpm schedule`.
#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {}

/// Runs `ddpm schedule`.
pub fn run(_args: ScheduleArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ddpm schedule` is not built yet")
}
