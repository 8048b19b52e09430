//! `training_loss` against `scripts/golden/objective.py`: every target (ε, x_0, v), every loss
//! (L1, L2, Huber at two thresholds), with and without min-SNR-γ weighting, at t = 0, 1, 500,
//! 998 and 999 for the whole batch and in two batches with a different t per sample.
//!
//! The network is a stand-in the script replicates exactly, out = 0.5 x_t + 0.001 t, so the
//! expected loss depends on x_t and hence on `add_noise`. The reference computes in float64 from
//! the same f32 inputs; ours computes in f32 from f32 tables. Each loss must agree to a relative
//! [`RTOL`].

use std::collections::BTreeSet;
use std::path::Path;

use model::Denoiser;
use model::Prediction;
use schedule::tensor::ScheduleTensors;
use schedule::{BetaSchedule, Schedule};
use serde::Deserialize;
use tch::{Device, Kind, Tensor};
use train::objective::{training_loss, LossKind, ObjectiveConfig};

/// Relative tolerance of an f32 loss against the float64 reference: the f32 tables, x_t and the
/// element losses each carry about half an ulp (6e-8) of rounding, and a loss is a mean of 192
/// such terms. Measured worst: 2.2e-7 (ε, L2, γ = 5, t = 1), so 1e-6 leaves a factor of 4.6;
/// a weight off by 1e-4 (v's min-SNR weight with SNR for SNR + 1, at t = 0) fails.
const RTOL: f64 = 1e-6;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    #[allow(dead_code)]
    generator: String,
    #[allow(dead_code)]
    reference: String,
    schedule: BetaSchedule,
    stand_in: StandIn,
    shape: [i64; 4],
    x_0: Vec<f64>,
    noise: Vec<f64>,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    objective: ObjectiveConfig,
    t: Vec<i64>,
    loss: f64,
}

/// out = `out_scale` · x_t + `t_scale` · t, with t broadcast over each sample.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StandIn {
    out_scale: f64,
    t_scale: f64,
}

impl Denoiser for StandIn {
    fn forward_t(&self, xs: &Tensor, timesteps: &Tensor, _train: bool) -> Tensor {
        let t = timesteps
            .to_kind(Kind::Float)
            .reshape([xs.size()[0], 1, 1, 1]);
        xs * self.out_scale + t * self.t_scale
    }
}

fn fixture() -> Fixture {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/objective_golden.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/golden/objective.py", path.display()));
    serde_json::from_str(&text).unwrap()
}

#[test]
fn training_loss_matches_the_float64_reference() {
    let fixture = fixture();
    let st = ScheduleTensors::new(&Schedule::new(&fixture.schedule).unwrap(), Device::Cpu);
    let tensor = |v: &[f64]| {
        let n: i64 = fixture.shape.iter().product();
        assert_eq!(
            v.len() as i64,
            n,
            "fixture tensor of shape {:?}",
            fixture.shape
        );
        Tensor::from_slice(&v.iter().map(|&x| x as f32).collect::<Vec<_>>()).reshape(fixture.shape)
    };
    let x_0 = tensor(&fixture.x_0);
    let noise = tensor(&fixture.noise);

    let mut worst = (0.0f64, String::new());
    let mut covered = BTreeSet::new();
    let mut timesteps = BTreeSet::new();
    for case in &fixture.cases {
        assert_eq!(
            case.t.len() as i64,
            fixture.shape[0],
            "{}: one t per sample",
            case.name
        );
        case.objective.validate().unwrap();
        let t = Tensor::from_slice(&case.t);
        let loss = training_loss(
            &fixture.stand_in,
            &st,
            &case.objective,
            &x_0,
            &noise,
            &t,
            None,
        );
        assert_eq!(loss.size(), Vec::<i64>::new(), "{}: a 0-d loss", case.name);
        assert_eq!(loss.kind(), Kind::Float, "{}", case.name);
        let ours = loss.double_value(&[]);
        let relative = (ours - case.loss).abs() / case.loss.abs();
        assert!(
            relative <= RTOL,
            "{}: loss {ours:e}, reference {:e} (relative error {relative:e})",
            case.name,
            case.loss
        );
        if relative >= worst.0 {
            worst = (relative, case.name.clone());
        }
        let o = &case.objective;
        let mixed_t = case.t.iter().collect::<BTreeSet<_>>().len() > 1;
        covered.insert((
            format!("{:?}", o.prediction),
            format!("{:?}", o.loss),
            o.min_snr_gamma.is_some(),
            mixed_t,
        ));
        timesteps.extend(case.t.iter().copied());
    }
    eprintln!(
        "{} cases, worst relative error {:e} ({})",
        fixture.cases.len(),
        worst.0,
        worst.1
    );

    // A fixture that lost cases would pass vacuously: every combination must be there.
    for prediction in [Prediction::Eps, Prediction::X0, Prediction::V] {
        for loss in [LossKind::L1, LossKind::L2, LossKind::Huber] {
            for weighted in [false, true] {
                for mixed_t in [false, true] {
                    let key = (
                        format!("{prediction:?}"),
                        format!("{loss:?}"),
                        weighted,
                        mixed_t,
                    );
                    assert!(covered.contains(&key), "the fixture lacks {key:?}");
                }
            }
        }
    }
    for t in [0, 1, 998, 999] {
        assert!(timesteps.contains(&t), "the fixture lacks t = {t}");
    }
    let deltas: BTreeSet<u64> = fixture
        .cases
        .iter()
        .filter(|c| c.objective.loss == LossKind::Huber)
        .map(|c| c.objective.huber_delta.to_bits())
        .collect();
    assert!(deltas.len() >= 2, "Huber at more than one threshold");
}

/// Classifier-free guidance's training: dropped labels become the null label, and a null-label
/// sample goes through the same loss as any other — the batch loss is the mean of the samples'
/// losses whatever their labels, and the null label's embedding learns from exactly the
/// samples that carry it.
#[test]
fn null_label_samples_go_through_the_same_loss() {
    use train::objective::{drop_labels, training_loss_cond};
    tch::manual_seed(0);
    let st = ScheduleTensors::new(
        &Schedule::new(&BetaSchedule::Linear {
            n_steps: 100,
            start: 1e-4,
            end: 0.02,
        })
        .unwrap(),
        Device::Cpu,
    );
    // The paper's U-Net (GroupNorm: no batch statistics), tiny, 2 classes + null.
    let config = model::ModelConfig::Ddpm(model::UNetConfig {
        in_channels: 1,
        out_channels: 1,
        image_size: 8,
        channels: 8,
        channel_mult: vec![1, 2],
        attention_resolutions: vec![4],
        norm_num_groups: 4,
        dropout: 0.0,
        num_classes: Some(2),
        ..model::UNetConfig::ho2020_cifar10()
    });
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let net = config.build(&vs.root()).unwrap();
    for (name, mut var) in vs.variables() {
        if name.ends_with("conv_out.weight") || name.ends_with("conv2.weight") {
            let _ = tch::no_grad(|| var.normal_(0.0, 0.1));
        }
    }
    let objective = ObjectiveConfig {
        p_uncond: 0.1,
        ..ObjectiveConfig::ho2020()
    };
    let cpu = (Kind::Float, Device::Cpu);
    let x_0 = Tensor::randn([4, 1, 8, 8], cpu);
    let noise = Tensor::randn([4, 1, 8, 8], cpu);
    let t = Tensor::from_slice(&[5i64, 40, 70, 99]);
    // Draws below p_uncond drop their labels.
    let labels = drop_labels(
        &Tensor::from_slice(&[0i64, 1, 1, 0]),
        &Tensor::from_slice(&[0.05f32, 0.5, 0.01, 0.9]),
        objective.p_uncond,
        2,
    );
    assert_eq!(Vec::<i64>::try_from(&labels).unwrap(), [2, 1, 2, 0]);
    let loss = |idx: &[i64], labels: Option<&Tensor>| {
        let idx = Tensor::from_slice(idx);
        let labels = labels.map(|l| l.index_select(0, &idx));
        training_loss_cond(
            net.as_ref(),
            &st,
            &objective,
            &x_0.index_select(0, &idx),
            &noise.index_select(0, &idx),
            &t.index_select(0, &idx),
            labels.as_ref(),
            None,
            None,
        )
    };
    let batch = loss(&[0, 1, 2, 3], Some(&labels)).double_value(&[]);
    let per_sample: f64 = (0..4)
        .map(|i| loss(&[i], Some(&labels)).double_value(&[]))
        .sum::<f64>()
        / 4.0;
    assert!(
        (batch - per_sample).abs() <= 1e-5 * batch,
        "batch {batch} vs mean of samples {per_sample}"
    );
    // No labels is the null label for all.
    let nulls = Tensor::from_slice(&[2i64, 2, 2, 2]);
    let unconditional = training_loss(net.as_ref(), &st, &objective, &x_0, &noise, &t, None);
    assert_eq!(
        unconditional.double_value(&[]),
        loss(&[0, 1, 2, 3], Some(&nulls)).double_value(&[])
    );
    // The gradient reaches each label's embedding row, the null label's too, and no other.
    let table = vs.variables()["class_embedding.weight"].shallow_clone();
    let row_grads = |labels: &[i64]| {
        let mut table = table.shallow_clone();
        table.zero_grad();
        loss(&[0, 1, 2, 3], Some(&Tensor::from_slice(labels))).backward();
        (0..3)
            .map(|k| {
                table
                    .grad()
                    .get(k)
                    .abs()
                    .sum(Kind::Double)
                    .double_value(&[])
            })
            .collect::<Vec<f64>>()
    };
    let with_null = row_grads(&[2, 1, 2, 0]);
    assert!(with_null.iter().all(|&g| g > 0.0), "{with_null:?}");
    let without = row_grads(&[0, 1, 1, 0]);
    assert!(
        without[0] > 0.0 && without[1] > 0.0 && without[2] == 0.0,
        "{without:?}"
    );
}
