//! A sampler named in one word, as `ddpm eval sweep --samplers` takes them:
//! `name[:part]…`, each part an order (`dpm-solver++:3`), a spacing (`ddim:quadratic`), `sde`,
//! a DDPM variance (`ddpm:small`), `eta=X`, or the clamping of x̂_0 for that sampler alone
//! (`no-clip` or `clip`, over the sweep's `--no-clip` and the checkpoint's `clip_sample`). The parts become the sampler flags of `ddpm
//! sample` ([`SamplerArgs`]), parsed by the same clap definitions, so every sampler, spacing and
//! option those flags accept is accepted here, with the same checks.

use anyhow::{bail, Result};
use clap::{FromArgMatches, Parser};

use sample::SamplerConfig;

use crate::sampler_args::SamplerArgs;

/// The sampler flags alone, for parsing a spec's flags with clap.
#[derive(Debug, Parser)]
#[command(no_binary_name = true, disable_help_flag = true)]
struct Flags {
    #[command(flatten)]
    sampler: SamplerArgs,
}

/// A parsed `name[:part]…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SamplerSpec {
    /// The spec as written: the sampler's label in tables and plots.
    pub label: String,
    /// The sampler flags it stands for (without `--steps`).
    flags: Vec<String>,
    /// Its own clamping of x̂_0 (`no-clip`: `Some(false)`, `clip`: `Some(true)`).
    pub clip_x0: Option<bool>,
}

impl SamplerSpec {
    /// Parses `spec`, with `flag` (the option it came from) in errors.
    ///
    /// # Errors
    /// An empty name or part, or a part given twice.
    pub fn parse(spec: &str, flag: &str) -> Result<Self> {
        let mut parts = spec.split(':');
        let name = parts.next().unwrap_or_default().trim();
        if name.is_empty() {
            bail!("{flag} `{spec}`: a sampler spec is name[:order][:spacing], e.g. dpm-solver++:3 or ddim:quadratic");
        }
        let mut flags = vec!["--sampler".to_string(), name.to_string()];
        let mut clip_x0 = None;
        for part in parts {
            let part = part.trim();
            if let Some(clip) = match part {
                "clip" => Some(true),
                "no-clip" => Some(false),
                _ => None,
            } {
                if clip_x0.replace(clip).is_some() {
                    bail!("{flag} `{spec}`: `{part}` sets the clamping a second time");
                }
                continue;
            }
            let (key, value) = match part {
                "" => bail!("{flag} `{spec}`: an empty part between colons"),
                "sde" => ("--sde", None),
                "prk" => ("--prk", None),
                "small" | "large" => ("--variance", Some(part)),
                _ if part.bytes().all(|b| b.is_ascii_digit()) => ("--order", Some(part)),
                _ => match part.strip_prefix("eta=") {
                    Some(eta) => ("--eta", Some(eta)),
                    None => ("--spacing", Some(part)),
                },
            };
            if flags.iter().any(|f| f == key) {
                bail!("{flag} `{spec}`: `{part}` sets {key} a second time");
            }
            flags.push(key.to_string());
            flags.extend(value.map(str::to_string));
        }
        Ok(Self {
            label: spec.trim().to_string(),
            flags,
            clip_x0,
        })
    }

    /// Whether the spec names the DDPM chain (all T steps, whatever the NFE).
    pub fn is_full_chain(&self) -> bool {
        self.flags[1] == "ddpm"
    }

    /// The sampler flags of this spec with `--steps nfe` when given and `extra` flags
    /// (`--weights`, `--no-clip`), parsed.
    ///
    /// # Errors
    /// A value the flags refuse, naming `flag` and the spec.
    pub fn args_for(
        &self,
        nfe: Option<usize>,
        extra: &[String],
        flag: &str,
    ) -> Result<SamplerArgs> {
        let mut argv = self.flags.clone();
        if let Some(nfe) = nfe {
            argv.extend(["--steps".to_string(), nfe.to_string()]);
        }
        argv.extend(extra.iter().cloned());
        let matches = <Flags as clap::CommandFactory>::command()
            .try_get_matches_from(&argv)
            .map_err(|e| {
                let text = e.render().to_string();
                let first = text
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ");
                anyhow::anyhow!("{flag} `{}`: {first}", self.label)
            })?;
        Ok(Flags::from_arg_matches(&matches)?.sampler)
    }

    /// The sampler at `nfe` network evaluations per image on a schedule of T =
    /// `n_train_steps`, with `extra` flags; DDPM takes all T steps and ignores `nfe`.
    ///
    /// # Errors
    /// A sampler, order, spacing or option the sampler flags refuse, or an NFE the sampler
    /// cannot take on this schedule, naming `flag` and the spec.
    pub fn config(
        &self,
        nfe: usize,
        n_train_steps: usize,
        extra: &[String],
        flag: &str,
    ) -> Result<SamplerConfig> {
        // Heun evaluates the network twice per step but the last, PLMS once more than its steps.
        let per_step = match self.flags[1].as_str() {
            "heun" => Some((
                nfe.div_ceil(2),
                " (2 per step but the last: heun takes an odd NFE)",
            )),
            "pndm" if self.flags.iter().any(|f| f == "--prk") => Some((
                nfe.saturating_sub(9),
                " (steps + 9: pndm:prk takes an NFE of 13 and up)",
            )),
            "pndm" => Some((
                nfe.max(2) - 1,
                " (steps + 1: pndm takes an NFE of 1 or 3 and up)",
            )),
            _ => None,
        };
        let steps = (!self.is_full_chain()).then_some(per_step.map_or(nfe, |(s, _)| s));
        let args = self.args_for(steps, extra, flag)?;
        let config = args
            .config(n_train_steps)
            .map_err(|e| anyhow::anyhow!("{flag} `{}` at NFE {nfe}: {e:#}", self.label))?;
        // What the sampler counts, so that the table's NFE is the network's work.
        let counted = config.nfe(n_train_steps)?;
        if !self.is_full_chain() && counted != nfe {
            bail!(
                "{flag} `{}` at NFE {nfe}: its chain takes {counted} network evaluations{}",
                self.label,
                per_step.map_or("", |(_, why)| why)
            );
        }
        Ok(config)
    }
}

/// Parses a comma-separated list of specs (`dpm-solver++:3,unipc,ddim:quadratic`).
///
/// # Errors
/// As [`SamplerSpec::parse`], or an empty list, or a spec named twice.
pub fn parse_list(list: &str, flag: &str) -> Result<Vec<SamplerSpec>> {
    let mut specs: Vec<SamplerSpec> = Vec::new();
    for item in list.split(',').filter(|s| !s.trim().is_empty()) {
        let spec = SamplerSpec::parse(item, flag)?;
        if specs.iter().any(|s| s.label == spec.label) {
            bail!("{flag}: `{}` is named twice", spec.label);
        }
        specs.push(spec);
    }
    if specs.is_empty() {
        bail!("{flag} names no sampler: pass e.g. dpm-solver++,ddim:quadratic");
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schedule::TimestepSpacing;

    fn config(spec: &str, nfe: usize) -> Result<SamplerConfig> {
        SamplerSpec::parse(spec, "--samplers")?.config(nfe, 300, &[], "--samplers")
    }

    #[test]
    fn specs_map_to_the_sampler_flags() {
        assert_eq!(
            config("ddim:quadratic", 10).unwrap(),
            SamplerConfig::Ddim {
                steps: 10,
                eta: 0.0,
                spacing: TimestepSpacing::Quadratic,
                timesteps: None,
            }
        );
        assert_eq!(
            config("dpm-solver++", 20).unwrap(),
            SamplerConfig::dpm_solver_pp(20, TimestepSpacing::Trailing)
        );
        assert_eq!(
            config("ddim:eta=0.5:linspace", 5).unwrap(),
            SamplerConfig::Ddim {
                steps: 5,
                eta: 0.5,
                spacing: TimestepSpacing::Linspace,
                timesteps: None,
            }
        );
        let ddpm = SamplerSpec::parse("ddpm:small", "--full-chain").unwrap();
        assert!(ddpm.is_full_chain());
        assert_eq!(
            ddpm.config(7, 300, &[], "--full-chain").unwrap(),
            SamplerConfig::seed_notebook()
        );
    }

    #[test]
    fn heun_and_pndm_take_their_steps_from_the_nfe() {
        let heun = config("heun:karras", 9).unwrap();
        assert_eq!(heun.nfe(300).unwrap(), 9);
        assert!(
            matches!(heun, SamplerConfig::Heun { steps: 5, .. }),
            "{heun:?}"
        );
        let m = format!("{:#}", config("heun", 10).unwrap_err());
        assert!(m.contains("NFE 10") && m.contains("odd"), "{m}");
        assert_eq!(config("euler-ancestral", 10).unwrap().nfe(300).unwrap(), 10);
        let pndm = config("pndm", 10).unwrap();
        assert!(
            matches!(pndm, SamplerConfig::Pndm { steps: 9, .. }),
            "{pndm:?}"
        );
        let prk = config("pndm:prk", 19).unwrap();
        assert!(
            matches!(
                prk,
                SamplerConfig::Pndm {
                    steps: 10,
                    prk: true,
                    ..
                }
            ),
            "{prk:?}"
        );
        let m = format!("{:#}", config("pndm", 2).unwrap_err());
        assert!(m.contains("NFE 2") && m.contains("pndm"), "{m}");
    }

    #[test]
    fn bad_specs_are_errors_naming_the_flag_and_the_spec() {
        let message = |spec: &str, nfe| format!("{:#}", config(spec, nfe).unwrap_err());
        let m = message("ddim:sideways", 10);
        assert!(
            m.starts_with("--samplers `ddim:sideways`") && m.contains("sideways"),
            "{m}"
        );
        let m = message("euler-sideways", 10);
        assert!(m.starts_with("--samplers `euler-sideways`"), "{m}");
        let m = message("ddim", 301);
        assert!(m.contains("NFE 301") && m.contains("T = 300"), "{m}");
        let m = message("ddim:quadratic", 20);
        assert!(m.contains("quadratic"), "{m}");
        let m = message("ddim:leading:trailing", 10);
        assert!(m.contains("a second time"), "{m}");
        assert!(parse_list(" , ", "--samplers").is_err());
        let m = format!("{:#}", parse_list("ddim,ddim", "--samplers").unwrap_err());
        assert!(m.contains("named twice"), "{m}");
        assert_eq!(
            parse_list("ddim,dpm-solver++", "--samplers").unwrap().len(),
            2
        );
    }

    #[test]
    fn a_spec_may_set_its_own_clamping() {
        let spec = SamplerSpec::parse("dpm-solver++:3:no-clip", "--samplers").unwrap();
        assert_eq!(spec.clip_x0, Some(false));
        assert_eq!(spec.label, "dpm-solver++:3:no-clip");
        assert_eq!(
            spec.config(10, 300, &[], "--samplers").unwrap(),
            config("dpm-solver++:3", 10).unwrap()
        );
        assert_eq!(
            SamplerSpec::parse("ddim:clip", "--samplers")
                .unwrap()
                .clip_x0,
            Some(true)
        );
        assert_eq!(
            SamplerSpec::parse("ddim", "--samplers").unwrap().clip_x0,
            None
        );
        let m = format!(
            "{:#}",
            SamplerSpec::parse("ddim:clip:no-clip", "--samplers").unwrap_err()
        );
        assert!(
            m.contains("`ddim:clip:no-clip`") && m.contains("a second time"),
            "{m}"
        );
    }
}
