//! `ddpm`: train, sample, evaluate and inspect denoising diffusion models (Ho et al. 2020).

use anyhow::Result;
use clap::{Parser, Subcommand};

mod checkpoint_arg;
mod cmd;
mod datasets;
mod device;
#[cfg(test)]
mod doc_commands;
mod elastic;
mod fid_loop;
mod inception;
mod launch;
mod plot;
mod ranks;
mod runtime;
mod sampler_args;
mod sampler_spec;
mod signals;
mod train_report;

/// Denoising diffusion probabilistic models on libtorch.
#[derive(Debug, Parser)]
#[command(name = "ddpm", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the libtorch installation, CUDA and cuDNN.
    Doctor(cmd::doctor::DoctorArgs),
    /// Print or plot a noise schedule's tables.
    Schedule(cmd::schedule::ScheduleArgs),
    /// Train a diffusion model (default: the `seed` preset, the teaching notebook).
    Train(Box<cmd::train::TrainArgs>),
    /// Inspect datasets: image grids and statistics.
    #[command(subcommand)]
    Data(cmd::data::DataCommand),
    /// Inspect the networks: layer tables, parameter counts, preset configs.
    #[command(subcommand)]
    Model(cmd::model::ModelCommand),
    /// Evaluate samples (FID and KID against a dataset or reference statistics) and models
    /// (the NLL bound in bits/dim).
    #[command(subcommand)]
    Eval(cmd::eval::EvalCommand),
    /// Draw images from a checkpoint or a diffusers folder: grids, PNGs, strips, GIFs, .npz.
    Sample(Box<cmd::sample::SampleArgs>),
    /// Draw the forward process q(x_t | x_0) of real images as a strip.
    Forward(cmd::forward::ForwardArgs),
    /// Write a run, checkpoint or diffusers folder as a diffusers folder (UNet2DModel).
    Export(cmd::export::ExportArgs),
    /// Check a run's checkpoints against the digests in their state.json.
    #[command(subcommand)]
    Checkpoint(cmd::checkpoint::CheckpointCommand),
}

fn main() {
    let cli = Cli::parse();
    // libtorch's own log lines (c10d's failed connection attempts, each with a C++ backtrace)
    // would come before the one-line errors this program prints; TORCH_CPP_LOG_LEVEL brings
    // them back.
    let _ = torch_ext::log::quiet_cpp_logs();
    let result: Result<()> = match cli.command {
        Command::Doctor(args) => cmd::doctor::run(args),
        Command::Schedule(args) => cmd::schedule::run(args),
        Command::Data(command) => cmd::data::run(command),
        Command::Model(command) => cmd::model::run(command),
        Command::Train(args) => cmd::train::run(*args),
        Command::Sample(args) => cmd::sample::run(*args),
        Command::Forward(args) => cmd::forward::run(args),
        Command::Eval(command) => cmd::eval::run(command),
        Command::Export(args) => cmd::export::run(args),
        Command::Checkpoint(command) => cmd::checkpoint::run(command),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(signals::exit_code(&err));
    }
}
