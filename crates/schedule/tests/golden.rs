//! Golden tests: our tables against fixtures that `scripts/golden/schedule.py` computes with
//! numpy, independently of this crate, from the reference implementations (the seed notebook in
//! float32, the official DDPM code, improved-diffusion, the DDIM code, diffusers).
//!
//! Float64 references must agree to a relative 1e-14 (about 45 ulps): the formulas are the same,
//! so only the order of a few operations and the last ulp of `ln` and `cos` may differ (the tables
//! measure within 2 ulps; x̂_0 = x_t/√ᾱ − √(1/ᾱ − 1) ε_θ versus the DDIM code's
//! (x_t − √(1 − ᾱ) ε_θ)/√ᾱ measures 8e-15 at t = 0). The notebook's float32
//! tables differ from our f64 ones by float32 rounding, bounded table by table in
//! [`NOTEBOOK_F32_TOLERANCES`].

use std::path::PathBuf;

use schedule::{BetaSchedule, Schedule, TimestepSpacing, Timesteps};
use serde_json::Value;

/// Relative tolerance against float64 references.
const F64_RTOL: f64 = 1e-14;

/// Absolute tolerances of our f64 tables against the notebook's float32 ones, with the reason
/// for each. float32 keeps 24 significant bits: one ulp is 2^-24 ≈ 6.0e-8 just below 1,
/// 2^-23 ≈ 1.2e-7 in [1, 2) and 2^-29 ≈ 1.9e-9 near 0.02. Measured maxima are in brackets.
const NOTEBOOK_F32_TOLERANCES: [(&str, f64, &str); 8] = [
    // [1.1e-9]
    (
        "betas",
        1e-8,
        "tf.linspace rounds delta, delta · i and start + delta · i to f32: a few ulps of 0.02",
    ),
    // [3.0e-8]
    (
        "alphas",
        1e-7,
        "1 - beta rounds to f32: at most half an ulp below 1, 3.0e-8",
    ),
    // [2.0e-7]
    (
        "alphas_cumprod",
        4e-7,
        "f32 cumprod rounds each of the 300 products: the errors random-walk to about \
         sqrt(300) · 3e-8, not reachable at 1e-7",
    ),
    // [2.0e-7]
    (
        "alphas_cumprod_prev",
        4e-7,
        "alphas_cumprod shifted by one step",
    ),
    // [9.8e-8]
    (
        "sqrt_recip_alphas",
        1e-7,
        "values in [1, 1.011): 1 / alpha and sqrt each round once, under one ulp in all",
    ),
    // [1.7e-7]
    (
        "sqrt_alphas_cumprod",
        3e-7,
        "half of alphas_cumprod's relative error, plus one rounding",
    ),
    // [8.3e-7]
    (
        "sqrt_one_minus_alphas_cumprod",
        2e-6,
        "1 - alphas_cumprod[0] = 1e-4 carries up to 3e-8 of f32 rounding, and the square root \
         multiplies an absolute error by 1 / (2 sqrt(1e-4)) = 50",
    ),
    // [7.9e-9]
    (
        "posterior_variance",
        1e-7,
        "products and quotients of the above, scaled by beta <= 0.02",
    ),
];

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/golden/schedule.py", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .expect("an array")
        .iter()
        .map(|v| v.as_f64().expect("a number"))
        .collect()
}

/// Our schedule for a fixture's `config`, which is written in our serde format.
fn schedule_for(fixture: &Value) -> Schedule {
    let config: BetaSchedule =
        serde_json::from_value(fixture["config"].clone()).expect("a BetaSchedule");
    Schedule::new(&config).expect("a valid config")
}

fn table<'a>(schedule: &'a Schedule, name: &str) -> &'a [f64] {
    schedule
        .tables()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no table {name}"))
        .1
}

/// Checks `|ours - reference| <= atol + rtol |reference|` everywhere; returns the largest error.
fn assert_close(what: &str, ours: &[f64], reference: &[f64], rtol: f64, atol: f64) -> f64 {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let mut max_err = 0.0f64;
    for (t, (&a, &b)) in ours.iter().zip(reference).enumerate() {
        let err = (a - b).abs();
        assert!(
            err <= atol + rtol * b.abs(),
            "{what}[{t}]: ours {a:e}, reference {b:e}, error {err:e}"
        );
        max_err = max_err.max(err);
    }
    max_err
}

/// Compares every table the fixture holds against ours at [`F64_RTOL`]; returns how many.
fn assert_tables_match_f64(name: &str) -> usize {
    let golden = fixture(name);
    let schedule = schedule_for(&golden);
    let tables = golden["tables"].as_object().unwrap();
    for (table_name, reference) in tables {
        assert_close(
            &format!("{name}: {table_name}"),
            table(&schedule, table_name),
            &floats(reference),
            F64_RTOL,
            0.0,
        );
    }
    tables.len()
}

#[test]
fn notebook_linear_t300_matches_its_float32_tables_within_f32_rounding() {
    let golden = fixture("linear_t300_notebook_f32.json");
    let schedule = schedule_for(&golden);
    assert_eq!(
        schedule_for(&golden),
        Schedule::new(&BetaSchedule::seed_notebook()).unwrap()
    );
    let tables = golden["tables"].as_object().unwrap();
    assert_eq!(tables.len(), NOTEBOOK_F32_TOLERANCES.len());
    for (name, atol, _why) in NOTEBOOK_F32_TOLERANCES {
        let reference = floats(&tables[name]);
        let max_err = assert_close(
            &format!("notebook {name}"),
            table(&schedule, name),
            &reference,
            0.0,
            atol,
        );
        eprintln!("notebook {name}: max abs error {max_err:.2e} (tolerance {atol:.0e})");
    }
}

#[test]
fn notebook_linear_t300_matches_its_float64_reference() {
    // Together with the test above: we compute the notebook's schedule exactly, and differ from
    // the notebook only by its float32 rounding.
    assert_eq!(assert_tables_match_f64("linear_t300.json"), 14);
}

#[test]
fn ho2020_linear_t1000_matches_every_reference_table() {
    assert_eq!(assert_tables_match_f64("linear_t1000.json"), 14);
    let schedule = Schedule::new(&BetaSchedule::ho2020()).unwrap();
    let pv = schedule.posterior_variance();
    assert_eq!(pv[0], 0.0);
    assert!((pv[487] - 0.00979).abs() < 5e-6, "β̃_487 = {}", pv[487]);
    assert!((pv[999] - 0.02).abs() < 2e-8, "β̃_999 = {}", pv[999]);
}

#[test]
fn cosine_t1000_matches_improved_diffusion() {
    assert_eq!(assert_tables_match_f64("cosine_t1000.json"), 14);
    let schedule = Schedule::new(&BetaSchedule::cosine(1000)).unwrap();
    assert_eq!(schedule.betas()[999], 0.999, "the last beta is clipped");
    assert!(
        schedule.betas()[0] > 1e-5,
        "not the all-zero betas of integer division"
    );
}

#[test]
fn quadratic_t1000_matches_the_official_ddpm_code() {
    assert_eq!(assert_tables_match_f64("quadratic_t1000.json"), 2);
}

#[test]
fn sigmoid_t1000_matches_the_ddim_code() {
    assert_eq!(assert_tables_match_f64("sigmoid_t1000.json"), 2);
}

#[test]
fn ddim_coefficients_match_the_ddim_code() {
    let golden = fixture("ddim_linear_t1000.json");
    let schedule = schedule_for(&golden);
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    let mut final_steps = 0;
    for case in cases {
        let t = case["t"].as_u64().unwrap() as usize;
        let t_prev = case["t_prev"].as_u64().map(|t| t as usize);
        let eta = case["eta"].as_f64().unwrap();
        let what = format!("t = {t}, t_prev = {t_prev:?}, eta = {eta}");
        let c = schedule.ddim_coefficients(t, t_prev, eta).unwrap();
        let num = |key: &str| case[key].as_f64().unwrap();
        let close = |name: &str, ours: f64| {
            assert_close(
                &format!("{what}: {name}"),
                &[ours],
                &[num(name)],
                F64_RTOL,
                1e-15,
            );
        };
        close("alpha_cumprod", c.alpha_cumprod);
        close("alpha_cumprod_prev", c.alpha_cumprod_prev);
        close("sigma", c.sigma);
        close("sqrt_alpha_cumprod_prev", c.sqrt_alpha_cumprod_prev);
        close("direction_coef", c.direction_coef);
        let (x_t, eps, noise) = (num("x_t"), num("eps"), num("noise"));
        close("pred_x0", c.pred_x0(x_t, eps));
        close("prev_sample", c.prev_sample(x_t, eps, noise));
        if t_prev.is_none() {
            final_steps += 1;
            assert_eq!(c.alpha_cumprod_prev, 1.0, "{what}");
        }
    }
    assert!(final_steps >= 3, "the fixture covers t_prev = -1");
}

#[test]
fn timestep_spacings_match_diffusers() {
    let golden = fixture("timesteps.json");
    let cases = golden["cases"].as_array().unwrap();
    for case in cases {
        let n_train = case["n_train_steps"].as_u64().unwrap() as usize;
        let n_sample = case["n_sample_steps"].as_u64().unwrap() as usize;
        let spacing: TimestepSpacing = serde_json::from_value(case["spacing"].clone()).unwrap();
        let expected: Vec<usize> = case["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect();
        let ours = Timesteps::new(n_train, n_sample, spacing).unwrap();
        assert_eq!(
            ours.as_slice(),
            expected,
            "T = {n_train}, n = {n_sample}, {spacing:?} ({})",
            case["source"]
        );
    }
    assert!(cases.len() >= 24);
}

#[test]
fn quadratic_spacing_matches_the_ddim_code() {
    let golden = fixture("timesteps_quadratic.json");
    let cases = golden["cases"].as_array().unwrap();
    let (mut kept, mut refused) = (0, 0);
    for case in cases {
        let n_train = case["n_train_steps"].as_u64().unwrap() as usize;
        let n_sample = case["n_sample_steps"].as_u64().unwrap() as usize;
        let ours = Timesteps::new(n_train, n_sample, TimestepSpacing::Quadratic);
        if case["repeats"].as_bool().unwrap() {
            let err = ours.unwrap_err();
            assert_eq!(
                err.field(),
                Some("n_sample_steps"),
                "T = {n_train}, n = {n_sample}"
            );
            refused += 1;
            continue;
        }
        let expected: Vec<usize> = case["timesteps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(
            ours.unwrap().as_slice(),
            expected,
            "T = {n_train}, n = {n_sample}"
        );
        kept += 1;
    }
    assert!(
        kept >= 30 && refused >= 10,
        "{kept} kept, {refused} refused"
    );
}
