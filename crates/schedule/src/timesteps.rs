//! Sub-sequences of the T training steps for samplers that take fewer steps (DDIM, Song et al.
//! 2021, §4.2), with the `timestep_spacing` choices of diffusers' `DDIMScheduler` (compared by
//! Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed"), the DDIM
//! paper's `quadratic` spacing, and explicit lists ([`Timesteps::from_list`]).
//!
//! The sequences are computed in exact integer arithmetic, rounding halves to even as numpy's
//! `np.round` does. diffusers computes `trailing` with a float `np.arange`, which for some
//! (T, n), e.g. T = 300 and n = 7, yields an extra step −1, and for others rounds a tie the other
//! way; where its floats are exact the results agree (see the golden tests).

use serde::{Deserialize, Serialize};

use crate::error::{invalid, ScheduleError};

/// How to choose n of the T training steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    /// round(i · (T − 1)/(n − 1)) for i < n: from 0 to T − 1 inclusive (diffusers' `linspace`);
    /// `[0]` when n = 1.
    Linspace,
    /// i · ⌊T/n⌋ for i < n: starts at 0 and reaches T − 1 only when n = T (diffusers' `leading`
    /// with `steps_offset = 0`).
    Leading,
    /// round(T − i · T/n) − 1 for i < n: starts at T − 1, so sampling begins from pure noise
    /// (diffusers' `trailing`; Lin et al. 2024 recommend it for few steps).
    Trailing,
    /// ⌊(i · √(0.8 T)/(n − 1))²⌋ for i < n, in f64 as numpy computes it: the DDIM paper's
    /// `--skip_type quad` (ermongroup/ddim, `runners/diffusion.py`: `seq = (np.linspace(0,
    /// np.sqrt(T * 0.8), n) ** 2)`, each truncated with `int`), which its Table 1 uses for
    /// CIFAR-10. It ends at ⌊0.8 T⌋ and crowds the steps near t = 0; for larger n the first
    /// values repeat (T = 300 from n = 17, T = 1000 from n = 30), where the DDIM code takes
    /// no-op steps: such an n is refused.
    Quadratic,
}

/// A strictly decreasing sequence of timesteps to sample with, in sampling order, each in
/// 0..T. Index `t` is the paper's step t + 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timesteps {
    n_train_steps: usize,
    timesteps: Vec<usize>,
}

impl Timesteps {
    /// `n_sample_steps` of `n_train_steps` steps, chosen by `spacing`, in sampling order
    /// (largest first).
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidValue`] naming `n_train_steps` when it is 0, or `n_sample_steps`
    /// unless 1 ≤ `n_sample_steps` ≤ `n_train_steps`.
    ///
    /// ```
    /// use schedule::{Timesteps, TimestepSpacing};
    ///
    /// let steps = |spacing| Timesteps::new(1000, 4, spacing).unwrap().as_slice().to_vec();
    /// assert_eq!(steps(TimestepSpacing::Linspace), [999, 666, 333, 0]);
    /// assert_eq!(steps(TimestepSpacing::Leading), [750, 500, 250, 0]);
    /// assert_eq!(steps(TimestepSpacing::Trailing), [999, 749, 499, 249]);
    /// ```
    pub fn new(
        n_train_steps: usize,
        n_sample_steps: usize,
        spacing: TimestepSpacing,
    ) -> Result<Self, ScheduleError> {
        if n_train_steps == 0 {
            return Err(invalid(
                "n_train_steps",
                n_train_steps,
                "must be at least 1",
            ));
        }
        if !(1..=n_train_steps).contains(&n_sample_steps) {
            return Err(invalid(
                "n_sample_steps",
                n_sample_steps,
                format!("must be between 1 and n_train_steps = {n_train_steps}"),
            ));
        }
        if spacing == TimestepSpacing::Quadratic {
            return Self::from_list(n_train_steps, &quadratic(n_train_steps, n_sample_steps))
                .map_err(|_| {
                    invalid(
                        "n_sample_steps",
                        n_sample_steps,
                        format!(
                            "quadratic spacing repeats timesteps near 0 for T = {n_train_steps} \
                             at this many steps (the DDIM code takes no-op steps there): use \
                             fewer steps or another spacing"
                        ),
                    )
                });
        }
        // u128 keeps i · T exact for any usize T.
        let (big_t, n) = (n_train_steps as u128, n_sample_steps as u128);
        let timesteps: Vec<usize> = (0..n)
            .rev()
            .map(|i| match spacing {
                TimestepSpacing::Linspace if n == 1 => 0,
                TimestepSpacing::Linspace => round_half_even(i * (big_t - 1), n - 1),
                TimestepSpacing::Leading => i * (big_t / n),
                // i runs backwards, so n − i − 1 counts the steps taken: T − k · T/n, k = 0, 1, ….
                TimestepSpacing::Trailing => round_half_even(big_t * (i + 1), n) - 1,
                TimestepSpacing::Quadratic => unreachable!("handled above"),
            })
            .map(|t| usize::try_from(t).expect("timesteps are below n_train_steps"))
            .collect();
        debug_assert!(timesteps.windows(2).all(|w| w[0] > w[1]), "{timesteps:?}");
        debug_assert!(timesteps[0] < n_train_steps);
        Ok(Timesteps {
            n_train_steps,
            timesteps,
        })
    }

    /// An explicit sequence, such as `999, 800, 600, 400, 200, 0`, in sampling order.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::InvalidValue`] naming `n_train_steps` when it is 0, or `timesteps` when
    /// the list is empty, not strictly decreasing, or reaches `n_train_steps`.
    ///
    /// ```
    /// use schedule::Timesteps;
    ///
    /// let timesteps = Timesteps::from_list(1000, &[999, 500, 0]).unwrap();
    /// assert_eq!(timesteps.prev_timestep(500), Some(0));
    /// let err = Timesteps::from_list(1000, &[500, 999]).unwrap_err();
    /// assert_eq!(err.field(), Some("timesteps"));
    /// ```
    pub fn from_list(n_train_steps: usize, timesteps: &[usize]) -> Result<Self, ScheduleError> {
        if n_train_steps == 0 {
            return Err(invalid(
                "n_train_steps",
                n_train_steps,
                "must be at least 1",
            ));
        }
        let fail = |reason: String| Err(invalid("timesteps", timesteps, reason));
        if timesteps.is_empty() {
            return fail("must hold at least one timestep".into());
        }
        if let Some(&t) = timesteps.iter().find(|&&t| t >= n_train_steps) {
            return fail(format!(
                "{t} is not a timestep of the schedule: each must be below T = {n_train_steps}"
            ));
        }
        if let Some(w) = timesteps.windows(2).find(|w| w[0] <= w[1]) {
            return fail(format!(
                "must decrease strictly, largest first, but {} is followed by {}",
                w[0], w[1]
            ));
        }
        Ok(Timesteps {
            n_train_steps,
            timesteps: timesteps.to_vec(),
        })
    }

    /// Every step `n_train_steps` − 1, …, 0.
    ///
    /// # Panics
    ///
    /// When `n_train_steps` is 0.
    ///
    /// ```
    /// use schedule::Timesteps;
    ///
    /// assert_eq!(Timesteps::full(3).as_slice(), &[2, 1, 0]);
    /// ```
    pub fn full(n_train_steps: usize) -> Self {
        assert!(n_train_steps > 0, "a schedule has at least one step");
        Timesteps {
            n_train_steps,
            timesteps: (0..n_train_steps).rev().collect(),
        }
    }

    /// The timesteps, largest first.
    ///
    /// ```
    /// use schedule::{Timesteps, TimestepSpacing};
    ///
    /// let timesteps = Timesteps::new(10, 3, TimestepSpacing::Trailing).unwrap();
    /// assert_eq!(timesteps.as_slice(), &[9, 6, 2]);
    /// ```
    pub fn as_slice(&self) -> &[usize] {
        &self.timesteps
    }

    /// The number of sampling steps n.
    ///
    /// ```
    /// use schedule::{Timesteps, TimestepSpacing};
    ///
    /// assert_eq!(Timesteps::new(1000, 50, TimestepSpacing::Leading).unwrap().len(), 50);
    /// ```
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    /// Always false: a sequence has at least one step.
    ///
    /// ```
    /// use schedule::Timesteps;
    ///
    /// assert!(!Timesteps::full(1).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// The number of training steps T the sequence was drawn from.
    ///
    /// ```
    /// use schedule::{Timesteps, TimestepSpacing};
    ///
    /// assert_eq!(Timesteps::new(1000, 50, TimestepSpacing::Leading).unwrap().n_train_steps(), 1000);
    /// ```
    pub fn n_train_steps(&self) -> usize {
        self.n_train_steps
    }

    /// The step sampled after `t`: the largest timestep of the sequence below `t`, or `None`
    /// when there is none and the step from `t` produces x_0 (ᾱ_prev = 1). Samplers call this
    /// instead of writing `t - 1`, which is wrong whenever steps are skipped.
    ///
    /// ```
    /// use schedule::{Timesteps, TimestepSpacing};
    ///
    /// let timesteps = Timesteps::new(1000, 4, TimestepSpacing::Trailing).unwrap();
    /// assert_eq!(timesteps.prev_timestep(999), Some(749));
    /// assert_eq!(timesteps.prev_timestep(249), None);
    /// assert_eq!(Timesteps::full(1000).prev_timestep(500), Some(499));
    /// ```
    pub fn prev_timestep(&self, t: usize) -> Option<usize> {
        // The sequence is decreasing: skip the entries ≥ t, take the first one below.
        let idx = self.timesteps.partition_point(|&s| s >= t);
        self.timesteps.get(idx).copied()
    }

    /// Every (t, t_prev) pair in sampling order, t_prev from [`Timesteps::prev_timestep`]: what
    /// a sampler loops over.
    ///
    /// ```
    /// use schedule::{Timesteps, TimestepSpacing};
    ///
    /// let timesteps = Timesteps::new(10, 3, TimestepSpacing::Linspace).unwrap();
    /// let pairs: Vec<_> = timesteps.pairs().collect();
    /// assert_eq!(pairs, [(9, Some(4)), (4, Some(0)), (0, None)]);
    /// ```
    pub fn pairs(&self) -> impl Iterator<Item = (usize, Option<usize>)> + '_ {
        self.timesteps
            .iter()
            .enumerate()
            .map(|(idx, &t)| (t, self.timesteps.get(idx + 1).copied()))
    }
}

/// The DDIM code's quadratic sequence, largest first: numpy's `linspace(0, √(0.8 T), n)`
/// (`i · step` with step = stop/(n − 1), the last point set to `stop`), squared and truncated.
fn quadratic(n_train_steps: usize, n_sample_steps: usize) -> Vec<usize> {
    let stop = (n_train_steps as f64 * 0.8).sqrt();
    let n = n_sample_steps;
    let point = |i: usize| match n {
        1 => 0.0,
        _ if i == n - 1 => stop,
        _ => i as f64 * (stop / (n - 1) as f64),
    };
    // Truncation as Python's `int` (the values are ≥ 0).
    (0..n)
        .rev()
        .map(|i| (point(i) * point(i)) as usize)
        .collect()
}

/// num/den rounded to the nearest integer, ties to even (numpy's `np.round`).
fn round_half_even(num: u128, den: u128) -> u128 {
    let (quotient, remainder) = (num / den, num % den);
    match (2 * remainder).cmp(&den) {
        std::cmp::Ordering::Greater => quotient + 1,
        std::cmp::Ordering::Equal if quotient % 2 == 1 => quotient + 1,
        _ => quotient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_ties_go_to_even() {
        assert_eq!(
            [
                round_half_even(5, 2),
                round_half_even(7, 2),
                round_half_even(7, 3)
            ],
            [2, 4, 2]
        );
        // linspace(0, 999, 7) has the ties 166.5, 499.5 and 832.5.
        let timesteps = Timesteps::new(1000, 7, TimestepSpacing::Linspace).unwrap();
        assert_eq!(timesteps.as_slice(), &[999, 832, 666, 500, 333, 166, 0]);
    }

    #[test]
    fn every_spacing_gives_n_distinct_steps_in_range() {
        for n_train in [1, 2, 3, 10, 300, 1000] {
            for n in 1..=n_train {
                for spacing in [
                    TimestepSpacing::Linspace,
                    TimestepSpacing::Leading,
                    TimestepSpacing::Trailing,
                ] {
                    let ts = Timesteps::new(n_train, n, spacing).unwrap();
                    assert_eq!(ts.len(), n);
                    assert!(
                        ts.as_slice().windows(2).all(|w| w[0] > w[1]),
                        "{n_train} {n} {spacing:?}"
                    );
                    assert!(ts.as_slice()[0] < n_train);
                    if spacing == TimestepSpacing::Trailing {
                        assert_eq!(ts.as_slice()[0], n_train - 1);
                    }
                    if n == n_train {
                        assert_eq!(ts, Timesteps::full(n_train));
                    }
                }
            }
        }
    }

    #[test]
    fn quadratic_spacing_is_the_ddim_papers_and_refuses_repeats() {
        // The DDIM code's `seq` for T = 1000, 10 steps: [0, 9, 39, 88, 158, 246, 355, 483, 632, 800].
        let ts = Timesteps::new(1000, 10, TimestepSpacing::Quadratic).unwrap();
        assert_eq!(ts.as_slice(), &[800, 632, 483, 355, 246, 158, 88, 39, 9, 0]);
        assert_eq!(
            Timesteps::new(300, 1, TimestepSpacing::Quadratic)
                .unwrap()
                .as_slice(),
            &[0]
        );
        assert!(Timesteps::new(300, 16, TimestepSpacing::Quadratic).is_ok());
        let err = Timesteps::new(300, 17, TimestepSpacing::Quadratic).unwrap_err();
        assert_eq!(err.field(), Some("n_sample_steps"));
        assert!(err.to_string().contains("quadratic"), "{err}");
        assert!(Timesteps::new(1000, 30, TimestepSpacing::Quadratic).is_err());
    }

    #[test]
    fn explicit_lists_are_checked_naming_timesteps() {
        let ts = Timesteps::from_list(300, &[299, 150, 7]).unwrap();
        assert_eq!(
            ts.pairs().collect::<Vec<_>>(),
            [(299, Some(150)), (150, Some(7)), (7, None)]
        );
        let message = |list: &[usize]| {
            let err = Timesteps::from_list(300, list).unwrap_err();
            assert_eq!(err.field(), Some("timesteps"));
            err.to_string()
        };
        assert!(message(&[]).contains("at least one"));
        assert!(
            message(&[300, 0]).contains("below T = 300"),
            "{}",
            message(&[300, 0])
        );
        assert!(message(&[5, 5]).contains("5 is followed by 5"));
        assert!(message(&[0, 5]).contains("decrease strictly"));
        assert_eq!(
            Timesteps::from_list(0, &[0]).unwrap_err().field(),
            Some("n_train_steps")
        );
    }

    #[test]
    fn prev_timestep_walks_the_sequence_and_handles_steps_outside_it() {
        let ts = Timesteps::new(1000, 10, TimestepSpacing::Leading).unwrap();
        let walked: Vec<usize> =
            std::iter::successors(Some(900), |&t| ts.prev_timestep(t)).collect();
        assert_eq!(walked, ts.as_slice());
        assert_eq!(ts.prev_timestep(999), Some(900));
        assert_eq!(ts.prev_timestep(555), Some(500));
        assert_eq!(ts.prev_timestep(0), None);
    }

    #[test]
    fn bad_counts_are_errors_naming_the_argument() {
        let field =
            |r: Result<Timesteps, ScheduleError>| r.unwrap_err().field().unwrap().to_owned();
        assert_eq!(
            field(Timesteps::new(0, 1, TimestepSpacing::Leading)),
            "n_train_steps"
        );
        assert_eq!(
            field(Timesteps::new(10, 0, TimestepSpacing::Leading)),
            "n_sample_steps"
        );
        let err = Timesteps::new(10, 11, TimestepSpacing::Trailing).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid n_sample_steps = 11: must be between 1 and n_train_steps = 10"
        );
    }
}
