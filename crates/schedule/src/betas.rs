//! Beta schedules β_0 … β_{T−1}: linear and quadratic (Ho et al. 2020 and its official code),
//! cosine (Nichol & Dhariwal 2021, Eq. 17, as improved-diffusion computes it), sigmoid (the DDIM
//! code of Song et al. 2021, copied by diffusers) and custom lists.
//!
//! Each formula follows its reference implementation operation by operation, so that the golden
//! tests agree to a few f64 ulps.

use serde::{Deserialize, Serialize};

use crate::error::{invalid, ScheduleError};

/// The smallest β_t accepted: f64's machine epsilon.
///
/// Below it, 1 − β_t rounds to 1 in f64, ᾱ_t stops decreasing and β̃_t divides zero by zero.
pub const MIN_BETA: f64 = f64::EPSILON;

/// The offset s of the cosine schedule (Nichol & Dhariwal 2021, §3.2): it keeps β_0 from being
/// vanishingly small near t = 0.
pub const COSINE_S: f64 = 0.008;

/// The cap on the cosine schedule's betas (Nichol & Dhariwal 2021, §3.2), which keeps the last
/// step from being singular where ᾱ_t reaches 0.
pub const COSINE_MAX_BETA: f64 = 0.999;

/// How to compute β_0 … β_{T−1}: the serde configuration of a noise schedule.
///
/// Serialised with an internal `kind` tag, e.g.
/// `{"kind": "linear", "n_steps": 1000, "start": 0.0001, "end": 0.02}`. Unknown fields are
/// rejected; the cosine schedule's `s` and `max_beta` default to the paper's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BetaSchedule {
    /// β_t evenly spaced from `start` to `end` inclusive (Ho et al. 2020, §4).
    Linear {
        /// Number of diffusion steps T.
        n_steps: usize,
        /// β_0, the paper's β_1.
        start: f64,
        /// β_{T−1}, the paper's β_T.
        end: f64,
    },
    /// √β_t evenly spaced from √`start` to √`end`, then squared (the official DDPM code's
    /// `quad` schedule).
    Quadratic {
        /// Number of diffusion steps T.
        n_steps: usize,
        /// β_0.
        start: f64,
        /// β_{T−1}.
        end: f64,
    },
    /// ᾱ(τ) = cos²((τ + s)/(1 + s) · π/2) with τ = t/T, and
    /// β_t = min(1 − ᾱ((t+1)/T)/ᾱ(t/T), `max_beta`) (Nichol & Dhariwal 2021, Eq. 17).
    Cosine {
        /// Number of diffusion steps T.
        n_steps: usize,
        /// The offset s; [`COSINE_S`] when omitted.
        #[serde(default = "default_cosine_s")]
        s: f64,
        /// The cap on β_t; [`COSINE_MAX_BETA`] when omitted.
        #[serde(default = "default_cosine_max_beta")]
        max_beta: f64,
    },
    /// β_t = sigmoid(x_t) · (`end` − `start`) + `start` with x_t evenly spaced over [−6, 6] (the
    /// DDIM code's `sigmoid` schedule). The end points are approached, not reached.
    Sigmoid {
        /// Number of diffusion steps T.
        n_steps: usize,
        /// The lower asymptote of β_t.
        start: f64,
        /// The upper asymptote of β_t.
        end: f64,
    },
    /// β_t given one by one; T is the length of the list.
    Custom {
        /// β_0 … β_{T−1}.
        betas: Vec<f64>,
    },
}

fn default_cosine_s() -> f64 {
    COSINE_S
}

fn default_cosine_max_beta() -> f64 {
    COSINE_MAX_BETA
}

impl BetaSchedule {
    /// The seed notebook's schedule: linear, T = 300, from 1e-4 to 0.02 (it computes these
    /// betas with `tf.linspace` in float32; we compute them in f64).
    ///
    /// ```
    /// use schedule::BetaSchedule;
    ///
    /// let config = BetaSchedule::seed_notebook();
    /// assert_eq!(config.n_steps(), 300);
    /// assert_eq!(config.betas().unwrap()[299], 0.02);
    /// ```
    pub fn seed_notebook() -> Self {
        BetaSchedule::Linear {
            n_steps: 300,
            start: 1e-4,
            end: 0.02,
        }
    }

    /// Ho et al. 2020, §4: linear, T = 1000, from 1e-4 to 0.02.
    ///
    /// ```
    /// use schedule::BetaSchedule;
    ///
    /// let betas = BetaSchedule::ho2020().betas().unwrap();
    /// assert_eq!((betas.len(), betas[0], betas[999]), (1000, 1e-4, 0.02));
    /// ```
    pub fn ho2020() -> Self {
        BetaSchedule::Linear {
            n_steps: 1000,
            start: 1e-4,
            end: 0.02,
        }
    }

    /// Nichol & Dhariwal 2021, §3.2: the cosine schedule with s = 0.008 and betas capped at
    /// 0.999, over `n_steps` steps (the paper trains with 4000 and samples with fewer).
    ///
    /// ```
    /// use schedule::BetaSchedule;
    ///
    /// let betas = BetaSchedule::cosine(1000).betas().unwrap();
    /// assert_eq!(betas[999], 0.999);
    /// assert!(betas[0] > 0.0 && betas[0] < 1e-4);
    /// ```
    pub fn cosine(n_steps: usize) -> Self {
        BetaSchedule::Cosine {
            n_steps,
            s: COSINE_S,
            max_beta: COSINE_MAX_BETA,
        }
    }

    /// The number of diffusion steps T (for [`BetaSchedule::Custom`], the number of betas).
    ///
    /// ```
    /// use schedule::BetaSchedule;
    ///
    /// assert_eq!(BetaSchedule::Custom { betas: vec![0.1, 0.2] }.n_steps(), 2);
    /// ```
    pub fn n_steps(&self) -> usize {
        match self {
            BetaSchedule::Linear { n_steps, .. }
            | BetaSchedule::Quadratic { n_steps, .. }
            | BetaSchedule::Cosine { n_steps, .. }
            | BetaSchedule::Sigmoid { n_steps, .. } => *n_steps,
            BetaSchedule::Custom { betas } => betas.len(),
        }
    }

    /// β_0 … β_{T−1}, after checking the configuration.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidValue`] naming the field when T = 0, when `start` or `end` is
    /// not in [[`MIN_BETA`], 1), when `start` ≥ `end`, when `s` is negative or not finite, when
    /// `max_beta` is not in (0, 1), or when a computed or given β_t is not in [[`MIN_BETA`], 1).
    ///
    /// ```
    /// use schedule::BetaSchedule;
    ///
    /// let betas = BetaSchedule::Quadratic { n_steps: 3, start: 0.01, end: 0.09 }.betas().unwrap();
    /// assert!((betas[1] - 0.04).abs() < 1e-15);
    ///
    /// let bad = BetaSchedule::Linear { n_steps: 10, start: 0.02, end: 1e-4 };
    /// assert_eq!(bad.betas().unwrap_err().to_string(), "invalid start = 0.02: must be below end = 0.0001");
    /// ```
    pub fn betas(&self) -> Result<Vec<f64>, ScheduleError> {
        self.validate()?;
        let betas = match *self {
            BetaSchedule::Linear {
                n_steps,
                start,
                end,
            } => linspace(start, end, n_steps),
            BetaSchedule::Quadratic {
                n_steps,
                start,
                end,
            } => linspace(start.sqrt(), end.sqrt(), n_steps)
                .into_iter()
                .map(|b| b * b)
                .collect(),
            BetaSchedule::Cosine {
                n_steps,
                s,
                max_beta,
            } => cosine_betas(n_steps, s, max_beta),
            BetaSchedule::Sigmoid {
                n_steps,
                start,
                end,
            } => linspace(-6.0, 6.0, n_steps)
                .into_iter()
                .map(|x| 1.0 / ((-x).exp() + 1.0) * (end - start) + start)
                .collect(),
            BetaSchedule::Custom { ref betas } => betas.clone(),
        };
        check_betas(&betas)?;
        Ok(betas)
    }

    /// Checks the configuration's own fields; [`BetaSchedule::betas`] checks the result.
    fn validate(&self) -> Result<(), ScheduleError> {
        if self.n_steps() == 0 {
            return Err(match self {
                BetaSchedule::Custom { .. } => {
                    invalid("betas", "[]", "must hold at least one beta")
                }
                _ => invalid("n_steps", 0, "must be at least 1"),
            });
        }
        match *self {
            BetaSchedule::Linear { start, end, .. }
            | BetaSchedule::Quadratic { start, end, .. }
            | BetaSchedule::Sigmoid { start, end, .. } => {
                check_beta("start", start)?;
                check_beta("end", end)?;
                if start >= end {
                    return Err(invalid(
                        "start",
                        start,
                        format!("must be below end = {end:?}"),
                    ));
                }
            }
            BetaSchedule::Cosine { s, max_beta, .. } => {
                if !(s.is_finite() && s >= 0.0) {
                    return Err(invalid(
                        "s",
                        s,
                        "must be finite and at least 0 (the paper uses 0.008)",
                    ));
                }
                if !(max_beta > 0.0 && max_beta < 1.0) {
                    return Err(invalid(
                        "max_beta",
                        max_beta,
                        "must be in (0, 1) (the paper uses 0.999)",
                    ));
                }
            }
            BetaSchedule::Custom { .. } => {}
        }
        Ok(())
    }
}

/// Checks one β against [[`MIN_BETA`], 1); NaN fails too.
fn check_beta(field: &str, beta: f64) -> Result<(), ScheduleError> {
    if (MIN_BETA..1.0).contains(&beta) {
        Ok(())
    } else {
        Err(invalid(
            field,
            beta,
            format!("must be in (0, 1), and at least {MIN_BETA:e} so that 1 - beta < 1 in f64"),
        ))
    }
}

/// Checks every β_t, naming the first bad one as `betas[t]`.
fn check_betas(betas: &[f64]) -> Result<(), ScheduleError> {
    betas
        .iter()
        .enumerate()
        .try_for_each(|(t, &beta)| check_beta(&format!("betas[{t}]"), beta))
}

/// `n` values evenly spaced from `start` to `end` inclusive, computed as numpy's `linspace` does
/// (`i * step + start`, with the last value set to `end` exactly); `[start]` when `n` is 1.
fn linspace(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    let mut values: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    values[n - 1] = end;
    values
}

/// improved-diffusion's `betas_for_alpha_bar` with the cosine ᾱ(τ).
///
/// τ = t/T is computed in floating point: two Rust ports divide the integers here, get τ = 0
/// for every step and with it all-zero betas.
fn cosine_betas(n_steps: usize, s: f64, max_beta: f64) -> Vec<f64> {
    // `* PI / 2.0` rather than `* FRAC_PI_2`: improved-diffusion's order of operations, which
    // rounds differently.
    let alpha_bar = |tau: f64| {
        ((tau + s) / (1.0 + s) * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    let n = n_steps as f64;
    (0..n_steps)
        .map(|i| {
            let (tau1, tau2) = (i as f64 / n, (i + 1) as f64 / n);
            (1.0 - alpha_bar(tau2) / alpha_bar(tau1)).min(max_beta)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_betas_hit_both_end_points_exactly() {
        let betas = BetaSchedule::Linear {
            n_steps: 7,
            start: 0.1,
            end: 0.7,
        }
        .betas()
        .unwrap();
        assert_eq!((betas[0], betas[6]), (0.1, 0.7));
        assert!(
            betas.windows(2).all(|w| (w[1] - w[0] - 0.1).abs() < 1e-15),
            "{betas:?}"
        );
    }

    #[test]
    fn one_step_schedules_are_allowed() {
        assert_eq!(
            BetaSchedule::Linear {
                n_steps: 1,
                start: 0.1,
                end: 0.2
            }
            .betas()
            .unwrap(),
            vec![0.1]
        );
        let cosine = BetaSchedule::cosine(1).betas().unwrap();
        assert_eq!(cosine, vec![COSINE_MAX_BETA]);
    }

    #[test]
    fn cosine_divides_in_floating_point() {
        // Integer division t / T would give ᾱ(0) / ᾱ(0) = 1 and β = 0 at every step.
        let betas = BetaSchedule::cosine(10).betas().unwrap();
        assert!(betas.iter().all(|&b| b > 1e-3), "{betas:?}");
        assert!(betas.windows(2).all(|w| w[0] < w[1]), "{betas:?}");
    }

    #[test]
    fn sigmoid_betas_stay_strictly_between_start_and_end() {
        let betas = BetaSchedule::Sigmoid {
            n_steps: 100,
            start: 1e-4,
            end: 0.02,
        }
        .betas()
        .unwrap();
        assert!(betas.iter().all(|&b| b > 1e-4 && b < 0.02));
        // Symmetric about the middle: sigmoid(-x) = 1 - sigmoid(x).
        assert!((betas[0] + betas[99] - (1e-4 + 0.02)).abs() < 1e-15);
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let cases = [
            (
                BetaSchedule::Linear {
                    n_steps: 0,
                    start: 1e-4,
                    end: 0.02,
                },
                "n_steps",
                "0",
            ),
            (
                BetaSchedule::Linear {
                    n_steps: 5,
                    start: 0.0,
                    end: 0.02,
                },
                "start",
                "0.0",
            ),
            (
                BetaSchedule::Quadratic {
                    n_steps: 5,
                    start: 1e-4,
                    end: 1.0,
                },
                "end",
                "1.0",
            ),
            (
                BetaSchedule::Sigmoid {
                    n_steps: 5,
                    start: f64::NAN,
                    end: 0.02,
                },
                "start",
                "NaN",
            ),
            (
                BetaSchedule::Sigmoid {
                    n_steps: 5,
                    start: 0.02,
                    end: 0.02,
                },
                "start",
                "0.02",
            ),
            (
                BetaSchedule::Cosine {
                    n_steps: 5,
                    s: -0.1,
                    max_beta: 0.999,
                },
                "s",
                "-0.1",
            ),
            (
                BetaSchedule::Cosine {
                    n_steps: 5,
                    s: 0.008,
                    max_beta: 1.0,
                },
                "max_beta",
                "1.0",
            ),
            (BetaSchedule::Custom { betas: vec![] }, "betas", "\"[]\""),
            (
                BetaSchedule::Custom {
                    betas: vec![0.1, 1e-20, 0.2],
                },
                "betas[1]",
                "1e-20",
            ),
            (
                BetaSchedule::Custom {
                    betas: vec![0.1, 0.2, 1.5],
                },
                "betas[2]",
                "1.5",
            ),
        ];
        for (config, field, value) in cases {
            match config.betas() {
                Err(ScheduleError::InvalidValue {
                    field: f,
                    value: v,
                    reason,
                }) => {
                    assert_eq!((f.as_str(), v.as_str()), (field, value), "{config:?}");
                    assert!(reason.starts_with("must"), "{reason}");
                }
                other => panic!("{config:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn serde_uses_a_kind_tag_defaults_cosine_constants_and_rejects_unknown_fields() {
        let config: BetaSchedule =
            serde_json::from_str(r#"{"kind": "cosine", "n_steps": 50}"#).unwrap();
        assert_eq!(config, BetaSchedule::cosine(50));
        let json = serde_json::to_string(&BetaSchedule::ho2020()).unwrap();
        assert_eq!(
            json,
            r#"{"kind":"linear","n_steps":1000,"start":0.0001,"end":0.02}"#
        );
        let err = serde_json::from_str::<BetaSchedule>(
            r#"{"kind": "linear", "n_steps": 5, "start": 0.1, "end": 0.2, "stop": 1}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `stop`"), "{err}");
    }
}
