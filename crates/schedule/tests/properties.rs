//! Property tests over random valid configurations of every kind: the invariants that training
//! and sampling rely on hold in f64, not only on paper.

use proptest::prelude::*;
use schedule::{BetaSchedule, Schedule, TimestepSpacing, Timesteps};

/// Valid configurations of every kind, with T up to a few thousand and betas up to 0.35: wide
/// enough to include the published schedules, small enough that ᾱ_t stays above f64's range.
fn beta_schedule() -> impl Strategy<Value = BetaSchedule> {
    let start_end = (1e-8f64..0.05, 1e-6f64..0.3).prop_map(|(start, width)| (start, start + width));
    prop_oneof![
        (1usize..2000, start_end.clone()).prop_map(|(n_steps, (start, end))| {
            BetaSchedule::Linear {
                n_steps,
                start,
                end,
            }
        }),
        (1usize..2000, start_end.clone()).prop_map(|(n_steps, (start, end))| {
            BetaSchedule::Quadratic {
                n_steps,
                start,
                end,
            }
        }),
        (1usize..2000, start_end).prop_map(|(n_steps, (start, end))| BetaSchedule::Sigmoid {
            n_steps,
            start,
            end
        }),
        (1usize..4000, 0.0f64..0.1, 0.5f64..0.9999).prop_map(|(n_steps, s, max_beta)| {
            BetaSchedule::Cosine {
                n_steps,
                s,
                max_beta,
            }
        }),
        prop::collection::vec(f64::EPSILON..0.35, 1..500)
            .prop_map(|betas| BetaSchedule::Custom { betas }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn alphas_cumprod_is_strictly_decreasing_inside_the_unit_interval(config in beta_schedule()) {
        let schedule = Schedule::new(&config).unwrap();
        let ac = schedule.alphas_cumprod();
        prop_assert_eq!(ac.len(), config.n_steps());
        prop_assert!(ac[0] < 1.0 && ac[ac.len() - 1] > 0.0, "{:?}", (ac[0], ac[ac.len() - 1]));
        for (t, w) in ac.windows(2).enumerate() {
            prop_assert!(w[1] < w[0], "alphas_cumprod[{}] = {:e} >= alphas_cumprod[{}] = {:e}", t + 1, w[1], t, w[0]);
        }
    }

    #[test]
    fn posterior_variance_is_between_zero_and_beta(config in beta_schedule()) {
        let schedule = Schedule::new(&config).unwrap();
        prop_assert_eq!(schedule.posterior_variance()[0], 0.0);
        prop_assert_eq!(schedule.posterior_variance().len(), schedule.betas().len());
        for (t, (&pv, &beta)) in schedule.posterior_variance().iter().zip(schedule.betas()).enumerate() {
            prop_assert!((0.0..=beta).contains(&pv), "β̃[{}] = {:e} > β[{}] = {:e}", t, pv, t, beta);
        }
    }

    #[test]
    fn every_table_is_finite(config in beta_schedule()) {
        let schedule = Schedule::new(&config).unwrap();
        for (name, table) in schedule.tables() {
            prop_assert_eq!(table.len(), config.n_steps());
            prop_assert!(table.iter().all(|x| x.is_finite()), "{} has a non-finite value", name);
        }
    }

    #[test]
    fn config_serde_round_trip_gives_identical_tables(config in beta_schedule()) {
        let json = serde_json::to_string(&config).unwrap();
        let back: BetaSchedule = serde_json::from_str(&json).unwrap();
        prop_assert_eq!(&back, &config, "{}", json);
        // Bitwise: PartialEq on f64 is exact, and no table holds a NaN.
        prop_assert_eq!(Schedule::new(&back).unwrap(), Schedule::new(&config).unwrap());
    }

    #[test]
    fn prev_timestep_follows_the_sequence(
        n_train in 1usize..3000,
        fraction in 0.0f64..1.0,
        spacing in prop_oneof![Just(TimestepSpacing::Linspace), Just(TimestepSpacing::Leading), Just(TimestepSpacing::Trailing)],
    ) {
        let n_sample = 1 + ((n_train - 1) as f64 * fraction) as usize;
        let timesteps = Timesteps::new(n_train, n_sample, spacing).unwrap();
        let steps = timesteps.as_slice();
        prop_assert_eq!(steps.len(), n_sample);
        for (idx, &t) in steps.iter().enumerate() {
            prop_assert!(t < n_train);
            prop_assert_eq!(timesteps.prev_timestep(t), steps.get(idx + 1).copied());
        }
    }
}
