//! The crate's error type: every constructor that takes user input returns it.

use std::fmt::Debug;

/// Why a schedule, a sub-sequence of timesteps or a DDIM step cannot be built.
///
/// Messages are lowercase and name the offending field (as spelled in the API and in serde)
/// together with its value, so that a command-line front end can map the field to its flag.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// A configuration field or an argument lies outside its domain.
    #[error("invalid {field} = {value}: {reason}")]
    InvalidValue {
        /// The field or argument: `n_steps`, `start`, `end`, `s`, `max_beta`, `betas[3]`,
        /// `n_sample_steps`, `t`, `t_prev` or `eta`.
        field: String,
        /// The rejected value, formatted with `{:?}`.
        value: String,
        /// What the value must satisfy, and how to fix it.
        reason: String,
    },
    /// The betas are so large, or so many, that ᾱ_t falls below the smallest normal f64, after
    /// which 1/ᾱ_t overflows.
    #[error("alphas_cumprod underflows f64 at t = {t}: use fewer steps or smaller betas")]
    AlphasCumprodUnderflow {
        /// The first 0-based step at which ᾱ_t < `f64::MIN_POSITIVE`.
        t: usize,
    },
}

impl ScheduleError {
    /// The field an [`ScheduleError::InvalidValue`] names; `None` for other variants.
    ///
    /// ```
    /// use schedule::{BetaSchedule, Schedule};
    ///
    /// let config = BetaSchedule::Linear { n_steps: 0, start: 1e-4, end: 0.02 };
    /// let err = Schedule::new(&config).unwrap_err();
    /// assert_eq!(err.field(), Some("n_steps"));
    /// assert_eq!(err.to_string(), "invalid n_steps = 0: must be at least 1");
    /// ```
    pub fn field(&self) -> Option<&str> {
        match self {
            ScheduleError::InvalidValue { field, .. } => Some(field),
            ScheduleError::AlphasCumprodUnderflow { .. } => None,
        }
    }
}

/// Builds an [`ScheduleError::InvalidValue`].
pub(crate) fn invalid(
    field: impl Into<String>,
    value: impl Debug,
    reason: impl Into<String>,
) -> ScheduleError {
    ScheduleError::InvalidValue {
        field: field.into(),
        value: format!("{value:?}"),
        reason: reason.into(),
    }
}
