//! One module per subcommand: its clap arguments and its `run` function.

pub mod checkpoint;
pub mod data;
pub mod doctor;
pub mod eval;
pub mod eval_nll;
pub mod eval_sweep;
pub mod export;
pub mod forward;
pub mod model;
pub mod sample;
pub mod schedule;
pub mod train;
