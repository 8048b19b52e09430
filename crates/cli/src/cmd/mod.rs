//! One module per subcommand: its clap arguments and its `run` function.

pub mod data;
pub mod doctor;
pub mod model;
pub mod schedule;
pub mod train;
