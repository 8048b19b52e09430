//! A diffusers folder with a learned variance (`variance_type: learned_range`, a U-Net of 2·C
//! output channels; `scripts/golden/learned_range_diffusers.py`) loads, and its DDPM steps match
//! diffusers' `DDPMScheduler.step` with the same noise to 1e-5: on the full chain (t = 49, 20
//! and the noiseless t = 0) and on the chain respaced to 10 of its 50 steps (t = 45, 25, 5),
//! whose betas are recomputed (Improved DDPM's respacing, diffusers' `current_beta_t`), both
//! through `ScheduleTensors::respaced_step` and through the sampler `ddpm sample` runs
//! (`Sampler::step` with `SamplerConfig::Ddpm`, all T steps or `steps: Some(10)`), which reads
//! the variance from the network's 2·C channels. Export writes the variance type back.

use std::collections::HashMap;
use std::path::PathBuf;

use model::{Prediction, VarianceOutput};
use sample::likelihood::{pred_x0_at, split_output, ModelVariance};
use sample::{Pipeline, PipelineSpec, Sampler, SamplerConfig, Weights};
use schedule::{StepVariance, TimestepSpacing, VarianceType};
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers")
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn a_learned_range_folder_steps_as_diffusers_does() {
    let folder = fixtures().join("learned_range");
    let spec = PipelineSpec::resolve(&folder, Weights::Ema).unwrap();
    assert_eq!(spec.variance, VarianceOutput::LearnedRange);
    let pipe = Pipeline::from_spec(spec, Device::Cpu).unwrap();
    let golden: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("learned_range_steps.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let x_t = &golden["x_t"];
    let cases = [
        ("full", 49, Some(48)),
        ("full", 20, Some(19)),
        ("full", 0, None),
        ("respaced", 45, Some(40)),
        ("respaced", 25, Some(20)),
        ("respaced", 5, Some(0)),
    ];
    for (name, t, t_prev) in cases {
        let key = format!("{name}_{t}");
        let t_batch = Tensor::full([2], t as i64, (Kind::Int64, Device::Cpu));
        let out = tch::no_grad(|| model::forward(pipe.net.as_ref(), x_t, &t_batch, false, None));
        assert!(
            max_abs_diff(&out, &golden[&format!("out_{key}")]) < 1e-5,
            "{key}: network"
        );
        let (eps, model_v) = split_output(&out, ModelVariance::LearnedRange);
        let model_v = model_v.unwrap();
        let x0 =
            pred_x0_at(pipe.sched.bound(), Prediction::Eps, &eps, x_t, &t_batch).clamp(-1.0, 1.0);
        assert!(
            max_abs_diff(&x0, &golden[&format!("x0_{key}")]) < 1e-5,
            "{key}: x0"
        );
        let prev = pipe
            .sched
            .respaced_step(
                &x0,
                x_t,
                t,
                t_prev,
                &golden[&format!("noise_{key}")],
                StepVariance::LearnedRange(&model_v),
            )
            .unwrap();
        // Relative to the sample's scale: diffusers computes the step's scalars in f32, these
        // come from the f64 tables (the respaced t = 5 step differs by 1.07e-5 on a sample of
        // magnitude above 1).
        let expected = &golden[&format!("prev_{key}")];
        let scale = expected.abs().max().double_value(&[]).max(1.0);
        let diff = max_abs_diff(&prev, expected);
        assert!(
            diff <= 1e-5 * scale,
            "{key}: prev_sample differs by {diff:e} (scale {scale})"
        );
    }
}

#[test]
fn the_ddpm_sampler_steps_a_learned_range_folder_as_diffusers_does() {
    let folder = fixtures().join("learned_range");
    let pipe = Pipeline::load(&folder, Weights::Ema, Device::Cpu).unwrap();
    let golden: HashMap<String, Tensor> =
        Tensor::read_safetensors(fixtures().join("learned_range_steps.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let x_t = &golden["x_t"];
    // The variance the config names is not used: the network's v_Σ is.
    let config = |steps| SamplerConfig::Ddpm {
        variance: VarianceType::FixedLarge,
        steps,
        spacing: TimestepSpacing::Leading,
    };
    for (name, steps, t) in [
        ("full", None, 49),
        ("full", None, 20),
        ("full", None, 0),
        ("respaced", Some(10), 45),
        ("respaced", Some(10), 25),
        ("respaced", Some(10), 5),
    ] {
        let key = format!("{name}_{t}");
        // The scheduler config says clip_sample: true.
        let mut sampler = Sampler::new(&pipe.sched, &config(steps), Prediction::Eps, true).unwrap();
        let i = sampler.timesteps().iter().position(|&s| s == t).unwrap();
        let t_batch = Tensor::full([2], t as i64, (Kind::Int64, Device::Cpu));
        let out = tch::no_grad(|| model::forward(pipe.net.as_ref(), x_t, &t_batch, false, None));
        let noise = &golden[&format!("noise_{key}")];
        let needs = sampler.needs_noise(i);
        assert_eq!(needs, t > 0, "{key}");
        let prev = sampler
            .step(i, &out, x_t, needs.then_some(noise))
            .prev_sample;
        // As in the test above: relative to the sample's scale (diffusers' f32 scalars).
        let expected = &golden[&format!("prev_{key}")];
        let scale = expected.abs().max().double_value(&[]).max(1.0);
        let diff = max_abs_diff(&prev, expected);
        assert!(
            diff <= 1e-5 * scale,
            "{key}: prev_sample differs by {diff:e} (scale {scale})"
        );
    }
}

#[test]
fn export_keeps_the_learned_variance() {
    let pipe =
        Pipeline::load(&fixtures().join("learned_range"), Weights::Ema, Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exported");
    pipe.export_diffusers(&out).unwrap();
    let back = PipelineSpec::resolve(&out, Weights::Ema).unwrap();
    assert_eq!(back.variance, VarianceOutput::LearnedRange);
    assert_eq!(back.model.out_channels(), 6);
}
