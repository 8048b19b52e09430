//! `ddpm schedule`: print every table of a noise schedule as JSON or CSV, and plot ᾱ_t and
//! log SNR against t (the `schedule` crate computes them; see its notation table).

use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use schedule::{BetaSchedule, Schedule, ScheduleError};
use serde::Serialize;

use crate::plot::{line_charts, Chart, Series};

/// The beta schedules `ddpm schedule` can build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Evenly spaced betas (Ho et al. 2020).
    Linear,
    /// Evenly spaced square roots of betas, squared (the official DDPM code's `quad`).
    Quadratic,
    /// Nichol & Dhariwal 2021, s = 0.008, betas capped at 0.999; takes no --start or --end.
    Cosine,
    /// A sigmoid from --start to --end over [-6, 6] (the DDIM code).
    Sigmoid,
}

/// How `ddpm schedule` prints the tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One object: `config` and `tables`, one array of length T per table.
    Json,
    /// A header `t,betas,alphas,…`, then one row per step.
    Csv,
}

/// Arguments of `ddpm schedule`.
#[derive(Debug, clap::Args)]
pub struct ScheduleArgs {
    /// How the betas grow with t.
    #[arg(long, value_enum, default_value_t = Kind::Linear)]
    kind: Kind,
    /// Number of diffusion steps T; t runs from 0 (the paper's t = 1) to T - 1.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    steps: usize,
    /// First beta, for linear, quadratic and sigmoid [default: 0.0001]
    #[arg(long, value_name = "BETA")]
    start: Option<f64>,
    /// Last beta, for linear, quadratic and sigmoid [default: 0.02]
    #[arg(long, value_name = "BETA")]
    end: Option<f64>,
    /// Print every table to stdout in this format [default: json, or nothing with --plot]
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Draw ᾱ_t and log SNR against t into this PNG file.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

/// Ho et al. 2020's betas, the defaults of --start and --end.
const DEFAULT_START: f64 = 1e-4;
const DEFAULT_END: f64 = 0.02;

/// Runs `ddpm schedule`.
pub fn run(args: ScheduleArgs) -> Result<()> {
    let config = beta_schedule(&args)?;
    let schedule = Schedule::new(&config).map_err(flag_error)?;
    if let Some(path) = &args.plot {
        plot(path, &config, &schedule)
            .with_context(|| format!("cannot write --plot {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    let format = match (args.format, &args.plot) {
        (Some(format), _) => format,
        (None, Some(_)) => return Ok(()),
        (None, None) => Format::Json,
    };
    let result = print_tables(
        &mut BufWriter::new(io::stdout().lock()),
        format,
        &config,
        &schedule,
    );
    match result {
        // `ddpm schedule | head` closes the pipe early; that is not a failure.
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other.context("cannot write the tables to stdout"),
    }
}

/// The configuration the flags describe.
fn beta_schedule(args: &ScheduleArgs) -> Result<BetaSchedule> {
    let n_steps = args.steps;
    let start = args.start.unwrap_or(DEFAULT_START);
    let end = args.end.unwrap_or(DEFAULT_END);
    Ok(match args.kind {
        Kind::Linear => BetaSchedule::Linear {
            n_steps,
            start,
            end,
        },
        Kind::Quadratic => BetaSchedule::Quadratic {
            n_steps,
            start,
            end,
        },
        Kind::Sigmoid => BetaSchedule::Sigmoid {
            n_steps,
            start,
            end,
        },
        Kind::Cosine => {
            let flag = if args.start.is_some() {
                Some("--start")
            } else {
                args.end.map(|_| "--end")
            };
            if let Some(flag) = flag {
                bail!("{flag} does not apply to --kind cosine, whose betas follow from ᾱ(t) = cos²(…): drop {flag}");
            }
            BetaSchedule::cosine(n_steps)
        }
    })
}

/// Turns a schedule error about a field into one about the flag that set it.
fn flag_error(err: ScheduleError) -> anyhow::Error {
    if let ScheduleError::InvalidValue {
        field,
        value,
        reason,
    } = &err
    {
        let flag = match field.as_str() {
            "n_steps" => Some("--steps"),
            "start" => Some("--start"),
            "end" => Some("--end"),
            _ => None,
        };
        if let Some(flag) = flag {
            return anyhow::anyhow!("invalid {flag} {value}: {reason}");
        }
    }
    anyhow::Error::new(err).context("cannot build the schedule")
}

fn print_tables(
    out: &mut impl Write,
    format: Format,
    config: &BetaSchedule,
    schedule: &Schedule,
) -> io::Result<()> {
    match format {
        Format::Json => {
            #[derive(Serialize)]
            struct Output<'a> {
                config: &'a BetaSchedule,
                tables: &'a Schedule,
            }
            serde_json::to_writer_pretty(
                &mut *out,
                &Output {
                    config,
                    tables: schedule,
                },
            )?;
            writeln!(out)?;
        }
        Format::Csv => {
            let tables = schedule.tables();
            let header: Vec<&str> = tables.iter().map(|(name, _)| *name).collect();
            writeln!(out, "t,{}", header.join(","))?;
            for t in 0..schedule.n_steps() {
                // `{}` prints the shortest decimal that reads back as the same f64.
                write!(out, "{t}")?;
                for (_, table) in &tables {
                    write!(out, ",{}", table[t])?;
                }
                writeln!(out)?;
            }
        }
    }
    out.flush()
}

/// ᾱ_t in the top panel, ln SNR(t) = ln(ᾱ_t / (1 − ᾱ_t)) in the bottom one.
fn plot(path: &Path, config: &BetaSchedule, schedule: &Schedule) -> Result<()> {
    let name = describe(config);
    let t_axis = |table: &[f64], f: fn(f64) -> f64| -> Vec<(f64, f64)> {
        table
            .iter()
            .enumerate()
            .map(|(t, &v)| (t as f64, f(v)))
            .collect()
    };
    let alphas_cumprod = [Series {
        label: "ᾱ_t".into(),
        points: t_axis(schedule.alphas_cumprod(), |v| v),
    }];
    let log_snr = [Series {
        label: "ln SNR(t)".into(),
        points: t_axis(schedule.snr(), f64::ln),
    }];
    let (top, bottom) = (format!("{name}: ᾱ_t"), format!("{name}: log SNR"));
    line_charts(
        path,
        &[
            Chart {
                title: &top,
                x_label: "t (0-based)",
                y_label: "ᾱ_t",
                series: &alphas_cumprod,
            },
            Chart {
                title: &bottom,
                x_label: "t (0-based)",
                y_label: "ln(ᾱ_t / (1 − ᾱ_t))",
                series: &log_snr,
            },
        ],
    )
}

/// A one-line description of a configuration, for plot titles.
fn describe(config: &BetaSchedule) -> String {
    match config {
        BetaSchedule::Linear {
            n_steps,
            start,
            end,
        } => format!("linear β {start}…{end}, T = {n_steps}"),
        BetaSchedule::Quadratic {
            n_steps,
            start,
            end,
        } => format!("quadratic β {start}…{end}, T = {n_steps}"),
        BetaSchedule::Sigmoid {
            n_steps,
            start,
            end,
        } => format!("sigmoid β {start}…{end}, T = {n_steps}"),
        BetaSchedule::Cosine { n_steps, s, .. } => format!("cosine s = {s}, T = {n_steps}"),
        BetaSchedule::Custom { betas } => format!("custom, T = {}", betas.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule_and_config(kind: Kind, steps: usize) -> (BetaSchedule, Schedule) {
        let args = ScheduleArgs {
            kind,
            steps,
            start: None,
            end: None,
            format: None,
            plot: None,
        };
        let config = beta_schedule(&args).unwrap();
        let schedule = Schedule::new(&config).unwrap();
        (config, schedule)
    }

    #[test]
    fn csv_has_a_header_and_one_row_per_step() {
        let (config, schedule) = schedule_and_config(Kind::Linear, 5);
        let mut out = Vec::new();
        print_tables(&mut out, Format::Csv, &config, &schedule).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6);
        assert!(
            lines[0].starts_with("t,betas,alphas,alphas_cumprod,"),
            "{}",
            lines[0]
        );
        assert!(lines[5].starts_with("4,0.02,"), "{}", lines[5]);
        assert!(lines.iter().all(|line| line.split(',').count() == 15));
    }

    #[test]
    fn errors_about_a_field_name_its_flag() {
        let error = |field: &str| {
            let err = ScheduleError::InvalidValue {
                field: field.into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            };
            flag_error(err).to_string()
        };
        assert_eq!(error("n_steps"), "invalid --steps 0: must be at least 1");
        assert_eq!(error("start"), "invalid --start 0: must be at least 1");
        // A field no flag sets keeps the library's message under a context.
        assert_eq!(error("betas[3]"), "cannot build the schedule");
    }
}
