//! The hybrid loss of learned variances (`objective.variance = "learned_range"`, Improved DDPM)
//! against `scripts/golden/hybrid_loss.py` (numpy re-typing improved-diffusion's
//! `training_losses`): L_simple and L_vlb of each sample at t = 0, 1, 37 and 99 and the loss to
//! 1e-6 relative, and L_vlb's gradient reaching the variance channels only; and the L_vlb-only
//! loss (`objective.loss = "vlb"`), T·L_t from the same reference, training both halves.

use e2e::floats;
use model::{Denoiser, Prediction, VarianceOutput};
use schedule::tensor::ScheduleTensors;
use schedule::Schedule;
use serde_json::Value;
use tch::{Device, Kind, Tensor};
use train::objective::{
    learned_range_vlb, simple_loss, training_loss, vlb_loss, LossKind, ObjectiveConfig,
};

/// A network whose output is fixed: the fixture's 2·C channels, whatever the input.
#[derive(Debug)]
struct Fixed(Tensor);

impl Denoiser for Fixed {
    fn forward_t(&self, _xs: &Tensor, _timesteps: &Tensor, _train: bool) -> Tensor {
        self.0.shallow_clone()
    }
}

struct Golden {
    json: Value,
    sched: ScheduleTensors,
    shape: Vec<i64>,
}

impl Golden {
    fn load() -> Self {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/hybrid_loss_golden.json"
        );
        let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let schedule = Schedule::from_betas(floats(&json["schedule_betas"])).unwrap();
        let shape = json["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        Self {
            sched: ScheduleTensors::new(&schedule, Device::Cpu),
            json,
            shape,
        }
    }

    fn tensor(&self, key: &str) -> Tensor {
        let values: Vec<f32> = floats(&self.json[key]).iter().map(|&x| x as f32).collect();
        Tensor::from_slice(&values).reshape(self.shape.as_slice())
    }

    fn t(&self) -> Tensor {
        let t: Vec<i64> = self.json["t"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        Tensor::from_slice(&t)
    }
}

fn values(xs: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(xs.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn assert_rel(ours: &[f64], expected: &[f64], what: &str) {
    assert_eq!(ours.len(), expected.len(), "{what}");
    for (i, (a, b)) in ours.iter().zip(expected).enumerate() {
        let rel = (a - b).abs() / b.abs();
        assert!(rel <= 1e-6, "{what}[{i}]: {a} vs {b} (relative {rel:e})");
    }
}

fn hybrid() -> ObjectiveConfig {
    ObjectiveConfig {
        variance: VarianceOutput::LearnedRange,
        ..ObjectiveConfig::ho2020()
    }
}

#[test]
fn the_terms_and_the_loss_match_the_reference_at_several_t() {
    let g = Golden::load();
    let (x_0, noise, t) = (g.tensor("x_0"), g.tensor("noise"), g.t());
    // x_t as the trainer forms it (f32 tables and tensors) is the script's, bit for bit.
    let x_t = g.sched.add_noise(&x_0, &noise, &t);
    assert_eq!(values(&x_t), values(&g.tensor("x_t")));
    let (eps, v) = (g.tensor("eps_out"), g.tensor("v_out"));
    let simple = simple_loss(&g.sched, &hybrid(), &eps, &x_0, &noise, &t);
    assert_rel(&values(&simple), &floats(&g.json["simple"]), "L_simple");
    let vlb = learned_range_vlb(&g.sched, Prediction::Eps, &eps, &v, &x_0, &x_t, &t);
    assert_rel(&values(&vlb), &floats(&g.json["vlb"]), "L_vlb");
    let net = Fixed(Tensor::cat(&[&eps, &v], 1));
    let loss = training_loss(&net, &g.sched, &hybrid(), &x_0, &noise, &t, None);
    let expected = g.json["loss"].as_f64().unwrap();
    assert_rel(&[loss.double_value(&[])], &[expected], "loss");
}

#[test]
fn the_vlb_gradient_reaches_the_variance_channels_only() {
    let g = Golden::load();
    let (x_0, noise, t) = (g.tensor("x_0"), g.tensor("noise"), g.t());
    let x_t = g.sched.add_noise(&x_0, &noise, &t);
    let output = Tensor::cat(&[g.tensor("eps_out"), g.tensor("v_out")], 1).set_requires_grad(true);
    let halves = output.split(g.shape[1], 1);
    let vlb = learned_range_vlb(
        &g.sched,
        Prediction::Eps,
        &halves[0],
        &halves[1],
        &x_0,
        &x_t,
        &t,
    );
    vlb.sum(Kind::Float).backward();
    let grad = output.grad();
    let grads = grad.split(g.shape[1], 1);
    assert_eq!(grads[0].abs().sum(Kind::Double).double_value(&[]), 0.0);
    assert!(grads[1].abs().min().double_value(&[]) > 0.0);

    // The whole hybrid loss trains both: L_simple the prediction, L_vlb the variance.
    let output = Tensor::cat(&[g.tensor("eps_out"), g.tensor("v_out")], 1).set_requires_grad(true);
    let net = Fixed(output.shallow_clone());
    training_loss(&net, &g.sched, &hybrid(), &x_0, &noise, &t, None).backward();
    let grad = output.grad();
    for half in grad.split(g.shape[1], 1) {
        assert!(half.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    }
}

#[test]
fn the_vlb_only_loss_is_t_times_the_term_and_trains_both_halves() {
    let g = Golden::load();
    let (x_0, noise, t) = (g.tensor("x_0"), g.tensor("noise"), g.t());
    let x_t = g.sched.add_noise(&x_0, &noise, &t);
    let output = Tensor::cat(&[g.tensor("eps_out"), g.tensor("v_out")], 1).set_requires_grad(true);
    let n_steps = g.sched.schedule().n_steps() as f64;
    let expected: Vec<f64> = floats(&g.json["vlb"]).iter().map(|v| v * n_steps).collect();
    let per_sample = vlb_loss(&g.sched, Prediction::Eps, &output, &x_0, &x_t, &t);
    assert_rel(&values(&per_sample), &expected, "T L_vlb");
    let config = ObjectiveConfig {
        loss: LossKind::Vlb,
        ..hybrid()
    };
    config.validate().unwrap();
    let net = Fixed(output.shallow_clone());
    let loss = training_loss(&net, &g.sched, &config, &x_0, &noise, &t, None);
    let mean = expected.iter().sum::<f64>() / expected.len() as f64;
    assert_rel(&[loss.double_value(&[])], &[mean], "loss");
    loss.backward();
    // Unlike the hybrid's L_vlb, the mean learns from it too (improved-diffusion's RESCALED_KL).
    for half in output.grad().split(g.shape[1], 1) {
        assert!(half.abs().sum(Kind::Double).double_value(&[]) > 0.0);
    }
}

#[test]
fn learned_range_needs_twice_the_channels() {
    let mut config = train::Preset::Seed.config();
    config.objective.variance = VarianceOutput::LearnedRange;
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("model.out_channels"), "{err}");
}
