//! `ddpm schedule`: the tables it prints as JSON and CSV, the plot it draws, and its errors.

use std::process::Output;

use e2e::run;
use serde_json::Value;

fn stdout_of(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ddpm failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn json_of(args: &[&str]) -> Value {
    serde_json::from_str(&stdout_of(&run(args))).expect("--format json prints one JSON object")
}

fn table(json: &Value, name: &str) -> Vec<f64> {
    json["tables"][name]
        .as_array()
        .unwrap_or_else(|| panic!("no table {name}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// Relative tolerance against the float64 reference, as in the schedule crate's golden test: the
/// formulas are the same, so only the order of a few operations and the last ulp of `ln` differ.
const F64_RTOL: f64 = 1e-14;

/// `crates/schedule/tests/fixtures/linear_t1000.json`, written by `scripts/golden/schedule.py`.
fn golden_linear_t1000() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../crates/schedule/tests/fixtures/linear_t1000.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/golden/schedule.py", path.display()));
    serde_json::from_str(&text).unwrap()
}

const TABLES: [&str; 14] = [
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
    "snr",
];

#[test]
fn json_prints_every_table_of_ho2020s_linear_schedule() {
    let json = json_of(&[
        "schedule", "--kind", "linear", "--steps", "1000", "--start", "0.0001", "--end", "0.02",
        "--format", "json",
    ]);
    assert_eq!(
        json["config"],
        serde_json::json!({"kind": "linear", "n_steps": 1000, "start": 0.0001, "end": 0.02})
    );
    for name in TABLES {
        assert_eq!(table(&json, name).len(), 1000, "{name}");
    }
    assert_eq!(json["tables"].as_object().unwrap().len(), TABLES.len());

    let betas = table(&json, "betas");
    assert_eq!((betas[0], betas[999]), (1e-4, 0.02));
    // Every table at every t against the float64 reference that scripts/golden/schedule.py
    // computes with numpy from the official DDPM code and improved-diffusion (the schedule
    // crate's golden fixture): the CLI prints the shortest decimal of each f64, so it must agree
    // as the crate's tables do.
    let golden = golden_linear_t1000();
    assert_eq!(json["config"], golden["config"]);
    let reference = |name: &str| -> Vec<f64> {
        golden["tables"][name]
            .as_array()
            .unwrap_or_else(|| panic!("the fixture has no table {name}"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect()
    };
    let mut worst = (0.0f64, "");
    for name in TABLES {
        let (ours, theirs) = (table(&json, name), reference(name));
        assert_eq!(ours.len(), theirs.len(), "{name}");
        for (t, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            let err = (a - b).abs();
            assert!(
                err <= F64_RTOL * b.abs(),
                "{name}[{t}]: printed {a:e}, reference {b:e}"
            );
            if err > 0.0 && err / b.abs() > worst.0 {
                worst = (err / b.abs(), name);
            }
        }
    }
    eprintln!("worst relative error {:e} ({})", worst.0, worst.1);
    // That covers the values users check by eye, β̃_487 ≈ 0.00979, β̃_999 ≈ 0.02 (Eq. 7) and
    // ᾱ_999 ≈ 4.04e-5; β̃_0 is exactly 0.
    assert_eq!(table(&json, "posterior_variance")[0], 0.0);
    let alphas_cumprod = table(&json, "alphas_cumprod");
    // The tables agree with each other.
    let sqrt_ac = table(&json, "sqrt_alphas_cumprod");
    let snr = table(&json, "snr");
    for t in [0, 1, 500, 999] {
        assert!((sqrt_ac[t].powi(2) - alphas_cumprod[t]).abs() < 1e-15);
        assert!((snr[t] - alphas_cumprod[t] / (1.0 - alphas_cumprod[t])).abs() <= 1e-12 * snr[t]);
    }
    assert_eq!(table(&json, "alphas_cumprod_prev")[0], 1.0);
}

#[test]
fn defaults_are_ho2020_and_json() {
    let json = json_of(&["schedule"]);
    assert_eq!(
        json["config"],
        serde_json::json!({"kind": "linear", "n_steps": 1000, "start": 0.0001, "end": 0.02})
    );
}

#[test]
fn json_prints_the_cosine_schedule_with_its_last_beta_clipped() {
    let json = json_of(&[
        "schedule", "--kind", "cosine", "--steps", "1000", "--format", "json",
    ]);
    assert_eq!(
        json["config"],
        serde_json::json!({"kind": "cosine", "n_steps": 1000, "s": 0.008, "max_beta": 0.999})
    );
    let betas = table(&json, "betas");
    assert_eq!(betas[999], 0.999);
    assert!(betas[0] > 1e-5 && betas[0] < 1e-4, "{}", betas[0]);
}

#[test]
fn csv_holds_the_same_numbers_as_json() {
    let args = [
        "schedule", "--kind", "sigmoid", "--steps", "300", "--start", "0.0002", "--end", "0.03",
    ];
    let json = json_of(&[&args[..], &["--format", "json"]].concat());
    let csv = stdout_of(&run(&[&args[..], &["--format", "csv"]].concat()));
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(header[0], "t");
    assert_eq!(header[1..], TABLES);
    let rows: Vec<Vec<f64>> = lines
        .map(|line| line.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    assert_eq!(rows.len(), 300);
    for (t, row) in rows.iter().enumerate() {
        assert_eq!(row[0], t as f64);
        for (col, name) in TABLES.iter().enumerate() {
            // Both formats print the shortest decimal that reads back as the same f64.
            assert_eq!(row[col + 1], table(&json, name)[t], "{name}[{t}]");
        }
    }
}

#[test]
fn plot_draws_two_panels_into_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("schedule.png");
    let out = run(&[
        "schedule",
        "--kind",
        "cosine",
        "--steps",
        "500",
        "--plot",
        path.to_str().unwrap(),
    ]);
    assert!(
        stdout_of(&out).is_empty(),
        "--plot without --format prints no tables"
    );
    let image = image::open(&path).expect("--plot writes a PNG").to_rgb8();
    assert_eq!(image.dimensions(), (960, 840));
    // Each panel has its title, axes and curve drawn in colour, not just a white page.
    let coloured_rows = |ys: std::ops::Range<u32>| {
        ys.filter(|&y| {
            (0..image.width()).any(|x| {
                let [r, _, b] = image.get_pixel(x, y).0;
                // The curve's blue (31, 119, 180), not the black text or grey grid.
                b > 150 && r < 100
            })
        })
        .count()
    };
    assert!(coloured_rows(0..420) > 100, "the ᾱ_t panel has no curve");
    assert!(
        coloured_rows(420..840) > 100,
        "the log SNR panel has no curve"
    );

    // With --format as well, the tables are printed too.
    let both = run(&[
        "schedule",
        "--steps",
        "10",
        "--plot",
        path.to_str().unwrap(),
        "--format",
        "csv",
    ]);
    assert_eq!(stdout_of(&both).lines().count(), 11);
}

#[test]
fn bad_values_fail_with_the_flag_named() {
    let cases: [(&[&str], &str); 6] = [
        (&["--steps", "0"], "invalid --steps 0: must be at least 1"),
        (
            &["--start", "0.5", "--end", "0.1"],
            "invalid --start 0.5: must be below end = 0.1",
        ),
        (&["--end", "1.5"], "invalid --end 1.5"),
        (
            &["--kind", "cosine", "--start", "0.001"],
            "--start does not apply to --kind cosine",
        ),
        (&["--steps", "many"], "'--steps <N>'"),
        (&["--kind", "exponential"], "'--kind <KIND>'"),
    ];
    for (args, message) in cases {
        let out = run(&[&["schedule"][..], args].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?} printed tables");
    }
}

#[test]
fn an_unwritable_plot_path_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("x.png");
    let out = run(&["schedule", "--plot", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--plot") && stderr.contains("missing-dir"),
        "{stderr}"
    );
}
