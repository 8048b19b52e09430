//! The multi-tensor kernels (lerp, norms, clipping, mul-add) against their definitions, and the
//! fused Adam and AdamW against hand-written steps, with a tensor learning rate, `found_inf` and
//! `grad_scale`.

use super::*;
use crate::Generator;
use tch::{Device, Kind};

const CPU_F32: (Kind, Device) = (Kind::Float, Device::Cpu);

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

fn shallow(xs: &[Tensor]) -> Vec<Tensor> {
    xs.iter().map(Tensor::shallow_clone).collect()
}

#[test]
fn lerp_is_an_ema_update() {
    let mut gen = Generator::cpu(0);
    let params: Vec<Tensor> = [vec![3i64, 4], vec![5]]
        .iter()
        .map(|s| gen.randn(s, CPU_F32).unwrap())
        .collect();
    let mut ema: Vec<Tensor> = params.iter().map(|p| p.zeros_like()).collect();
    let decay = 0.9;
    let expected: Vec<Tensor> = ema
        .iter()
        .zip(&params)
        .map(|(e, p)| e * decay + p * (1.0 - decay))
        .collect();
    foreach_lerp_(&mut ema, &params, 1.0 - decay).unwrap();
    for (e, x) in ema.iter().zip(&expected) {
        assert!(max_abs_diff(e, x) < 1e-7);
    }
    assert!(
        ema[0].abs().sum(Kind::Double).double_value(&[]) > 0.0,
        "ema moved"
    );
    assert!(matches!(
        foreach_lerp_(&mut ema, &params[..1], 0.5),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn a_tensor_weight_lerps_as_a_scalar_one_and_zero_leaves_the_list() {
    let mut gen = Generator::cpu(2);
    let ends: Vec<Tensor> = [vec![3i64, 4], vec![5]]
        .iter()
        .map(|s| gen.randn(s, CPU_F32).unwrap())
        .collect();
    let start: Vec<Tensor> = ends.iter().map(|e| gen.randn_like(e).unwrap()).collect();
    for weight in [0.25, 0.9] {
        let mut by_scalar: Vec<Tensor> = start.iter().map(Tensor::copy).collect();
        let mut by_tensor: Vec<Tensor> = start.iter().map(Tensor::copy).collect();
        foreach_lerp_(&mut by_scalar, &ends, weight).unwrap();
        foreach_lerp_tensor_(&mut by_tensor, &ends, &Tensor::from(weight as f32)).unwrap();
        for (a, b) in by_scalar.iter().zip(&by_tensor) {
            assert!(max_abs_diff(a, b) < 1e-7, "weight {weight}");
        }
        assert!(max_abs_diff(&by_tensor[0], &start[0]) > 1e-3, "moved");
    }
    let mut untouched: Vec<Tensor> = start.iter().map(Tensor::copy).collect();
    foreach_lerp_tensor_(&mut untouched, &ends, &Tensor::from(0.0f32)).unwrap();
    for (a, b) in untouched.iter().zip(&start) {
        assert!(a.equal(b), "a weight of 0 changed a tensor");
    }
    let two = Tensor::from_slice(&[0.5f32, 0.5]);
    assert!(foreach_lerp_tensor_(&mut untouched, &ends, &two).is_err());
    assert!(matches!(
        foreach_lerp_tensor_(&mut untouched, &ends[..1], &Tensor::from(0.5f32)),
        Err(Error::InvalidArgument(_))
    ));
}

#[test]
fn norms_and_the_global_norm() {
    let xs = vec![
        Tensor::from_slice(&[3.0f32, 4.0]),
        Tensor::from_slice(&[12.0f32]).reshape([1, 1]),
    ];
    let norms: Vec<f64> = foreach_norm(&xs, 2.0)
        .unwrap()
        .iter()
        .map(|n| n.double_value(&[]))
        .collect();
    assert_eq!(norms, vec![5.0, 12.0]);
    let total = global_norm(&xs).unwrap();
    assert_eq!(total.dim(), 0);
    assert_eq!(total.double_value(&[]), 13.0);
    let l1: Vec<f64> = foreach_norm(&xs, 1.0)
        .unwrap()
        .iter()
        .map(|n| n.double_value(&[]))
        .collect();
    assert_eq!(l1, vec![7.0, 12.0]);
    assert!(global_norm(&[]).is_err());
}

#[test]
fn clipping_scales_to_max_norm_and_leaves_small_gradients() {
    let mut grads = vec![
        Tensor::from_slice(&[3.0f32, 4.0]),
        Tensor::from_slice(&[12.0f32]),
    ];
    let total = clip_grad_norm_(&mut grads, 1.3).unwrap();
    assert_eq!(total.double_value(&[]), 13.0);
    let after = global_norm(&grads).unwrap().double_value(&[]);
    assert!((after - 1.3).abs() < 1e-5, "{after}");
    assert!((grads[0].double_value(&[0]) - 0.3).abs() < 1e-5);

    let mut small = vec![Tensor::from_slice(&[0.3f32, 0.4])];
    let _ = clip_grad_norm_(&mut small, 1.0).unwrap();
    assert_eq!(Vec::<f32>::try_from(&small[0]).unwrap(), vec![0.3, 0.4]);
    assert!(clip_grad_norm_(&mut small, 0.0).is_err());
}

#[test]
fn mul_add_zero_update_in_place() {
    let a = Tensor::from_slice(&[1.0f32, 2.0]);
    let b = Tensor::from_slice(&[10.0f32]);
    // Shallow clones share storage: the in-place ops must reach the originals.
    let mut xs = vec![a.shallow_clone(), b.shallow_clone()];
    foreach_mul_scalar_(&mut xs, 3.0).unwrap();
    assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![3.0, 6.0]);
    foreach_mul_tensor_(&mut xs, &Tensor::from(0.5f32)).unwrap();
    assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![1.5, 3.0]);
    foreach_add_scalar_(&mut xs, 1.0).unwrap();
    assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![16.0]);
    let others = vec![
        Tensor::from_slice(&[1.0f32, 1.0]),
        Tensor::from_slice(&[2.0f32]),
    ];
    foreach_add_(&mut xs, &others, -2.0).unwrap();
    assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![0.5, 2.0]);
    assert_eq!(Vec::<f32>::try_from(&b).unwrap(), vec![12.0]);
    foreach_zero_(&mut xs).unwrap();
    assert_eq!(Vec::<f32>::try_from(&a).unwrap(), vec![0.0, 0.0]);
    // Shape mismatches are libtorch errors, not aborts.
    let err = foreach_add_(
        &mut xs,
        &[Tensor::zeros([3], CPU_F32), Tensor::zeros([1], CPU_F32)],
        1.0,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Torch {
                op: "foreach_add_",
                ..
            }
        ),
        "{err}"
    );
}

/// Bias-corrected Adam (or AdamW), written with plain tch ops, as `torch.optim.Adam` documents it.
struct ReferenceAdam {
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: i32,
}

impl ReferenceAdam {
    fn new(params: &[Tensor]) -> Self {
        Self {
            m: params.iter().map(Tensor::zeros_like).collect(),
            v: params.iter().map(Tensor::zeros_like).collect(),
            t: 0,
        }
    }

    fn step(&mut self, params: &mut [Tensor], grads: &[Tensor], c: &AdamConfig, adamw: bool) {
        self.t += 1;
        let bc1 = 1.0 - c.beta1.powi(self.t);
        let bc2 = 1.0 - c.beta2.powi(self.t);
        for i in 0..params.len() {
            let mut g = grads[i].shallow_clone();
            if adamw {
                params[i] = &params[i] * (1.0 - c.lr * c.weight_decay);
            } else {
                g = &g + &params[i] * c.weight_decay;
            }
            self.m[i] = &self.m[i] * c.beta1 + &g * (1.0 - c.beta1);
            self.v[i] = &self.v[i] * c.beta2 + (&g * &g) * (1.0 - c.beta2);
            let denom = self.v[i].sqrt() / bc2.sqrt() + c.eps;
            params[i] = &params[i] - (&self.m[i] / denom) * (c.lr / bc1);
        }
    }
}

struct FusedState {
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    steps: Vec<Tensor>,
}

impl FusedState {
    fn new(params: &[Tensor]) -> Self {
        Self {
            params: params.iter().map(|p| p.copy()).collect(),
            m: params.iter().map(Tensor::zeros_like).collect(),
            v: params.iter().map(Tensor::zeros_like).collect(),
            steps: params.iter().map(|_| Tensor::from(0.0f32)).collect(),
        }
    }

    fn step(&mut self, grads: &[Tensor], c: &AdamConfig, adamw: bool, found_inf: Option<&Tensor>) {
        // As torch.optim.Adam(fused=True): increment the steps, then the fused kernel.
        foreach_add_scalar_(&mut self.steps, 1.0).unwrap();
        let mut grads = shallow(grads);
        let tensors = AdamTensors {
            params: &mut self.params,
            grads: &mut grads,
            exp_avgs: &mut self.m,
            exp_avg_sqs: &mut self.v,
            max_exp_avg_sqs: &mut [],
            state_steps: &mut self.steps,
        };
        if adamw {
            fused_adamw_(tensors, c, None, found_inf).unwrap();
        } else {
            fused_adam_(tensors, c, None, found_inf).unwrap();
        }
    }
}

fn check_against_reference(adamw: bool) {
    let mut gen = Generator::cpu(5);
    let params: Vec<Tensor> = [vec![4i64, 3], vec![7], vec![2, 2, 2]]
        .iter()
        .map(|s| gen.randn(s, CPU_F32).unwrap())
        .collect();
    let config = AdamConfig {
        lr: 0.01,
        weight_decay: 0.1,
        ..AdamConfig::default()
    };
    let mut fused = FusedState::new(&params);
    let mut reference = ReferenceAdam::new(&params);
    let mut expected: Vec<Tensor> = params.iter().map(|p| p.copy()).collect();
    for _ in 0..3 {
        let grads: Vec<Tensor> = params.iter().map(|p| gen.randn_like(p).unwrap()).collect();
        fused.step(&grads, &config, adamw, None);
        reference.step(&mut expected, &grads, &config, adamw);
    }
    for i in 0..params.len() {
        assert!(
            max_abs_diff(&fused.params[i], &expected[i]) < 1e-6,
            "param {i}"
        );
        assert!(
            max_abs_diff(&fused.m[i], &reference.m[i]) < 1e-6,
            "exp_avg {i}"
        );
        assert!(
            max_abs_diff(&fused.v[i], &reference.v[i]) < 1e-6,
            "exp_avg_sq {i}"
        );
        assert!(
            max_abs_diff(&fused.params[i], &params[i]) > 1e-3,
            "param {i} moved"
        );
        assert_eq!(
            fused.steps[i].double_value(&[]),
            3.0,
            "the kernel does not count steps itself"
        );
    }
}

#[test]
fn fused_adam_matches_a_hand_written_adam_for_three_steps() {
    check_against_reference(false);
}

#[test]
fn fused_adamw_matches_a_hand_written_adamw_for_three_steps() {
    check_against_reference(true);
}

#[test]
fn a_tensor_learning_rate_gives_the_scalar_ones_results() {
    let mut gen = Generator::cpu(9);
    let params: Vec<Tensor> = [vec![4i64, 3], vec![7]]
        .iter()
        .map(|s| gen.randn(s, CPU_F32).unwrap())
        .collect();
    let config = AdamConfig {
        lr: 0.01,
        weight_decay: 0.1,
        ..AdamConfig::default()
    };
    for adamw in [false, true] {
        let mut scalar = FusedState::new(&params);
        let mut tensor = FusedState::new(&params);
        for _ in 0..3 {
            let grads: Vec<Tensor> = params.iter().map(|p| gen.randn_like(p).unwrap()).collect();
            scalar.step(&grads, &config, adamw, None);
            // A double on the CPU: read exactly as the scalar.
            foreach_add_scalar_(&mut tensor.steps, 1.0).unwrap();
            let mut grads = shallow(&grads);
            let tensors = AdamTensors {
                params: &mut tensor.params,
                grads: &mut grads,
                exp_avgs: &mut tensor.m,
                exp_avg_sqs: &mut tensor.v,
                max_exp_avg_sqs: &mut [],
                state_steps: &mut tensor.steps,
            };
            let lr = Tensor::from(0.01f64);
            let ignored = AdamConfig { lr: 5.0, ..config };
            if adamw {
                fused_adamw_tensor_lr_(tensors, &ignored, &lr, None, None).unwrap();
            } else {
                fused_adam_tensor_lr_(tensors, &ignored, &lr, None, None).unwrap();
            }
        }
        for (a, b) in scalar.params.iter().zip(&tensor.params) {
            assert!(
                a.equal(b),
                "adamw {adamw}: the tensor lr changed the update"
            );
        }
    }
}

#[test]
fn found_inf_skips_the_step_entirely() {
    let mut gen = Generator::cpu(6);
    let params: Vec<Tensor> = [vec![5i64], vec![2, 3]]
        .iter()
        .map(|s| gen.randn(s, CPU_F32).unwrap())
        .collect();
    let config = AdamConfig::default();
    let mut fused = FusedState::new(&params);
    let grads: Vec<Tensor> = params.iter().map(|p| gen.randn_like(p).unwrap()).collect();
    fused.step(&grads, &config, false, None);
    let before: Vec<Vec<Tensor>> = [&fused.params, &fused.m, &fused.v]
        .iter()
        .map(|l| l.iter().map(|t| t.copy()).collect())
        .collect();

    let found_inf = Tensor::ones([1], CPU_F32);
    fused.step(&grads, &config, false, Some(&found_inf));
    for (list, old) in [&fused.params, &fused.m, &fused.v].iter().zip(&before) {
        for (t, o) in list.iter().zip(old) {
            assert!(t.equal(o), "found_inf = 1 changed a tensor");
        }
    }
    // found_inf = 0 does step.
    let found_inf = Tensor::zeros([1], CPU_F32);
    fused.step(&grads, &config, false, Some(&found_inf));
    assert!(!fused.params[0].equal(&before[0][0]));
}

#[test]
fn grad_scale_divides_the_gradients_first() {
    let mut gen = Generator::cpu(8);
    let params: Vec<Tensor> = [vec![6i64], vec![3, 2]]
        .iter()
        .map(|s| gen.randn(s, CPU_F32).unwrap())
        .collect();
    let grads: Vec<Tensor> = params.iter().map(|p| gen.randn_like(p).unwrap()).collect();
    let config = AdamConfig::default();
    let mut plain = FusedState::new(&params);
    plain.step(&grads, &config, false, None);

    let mut scaled = FusedState::new(&params);
    foreach_add_scalar_(&mut scaled.steps, 1.0).unwrap();
    let mut scaled_grads: Vec<Tensor> = grads.iter().map(|g| g * 1024.0).collect();
    let grad_scale = Tensor::from_slice(&[1024.0f32]);
    let tensors = AdamTensors {
        params: &mut scaled.params,
        grads: &mut scaled_grads,
        exp_avgs: &mut scaled.m,
        exp_avg_sqs: &mut scaled.v,
        max_exp_avg_sqs: &mut [],
        state_steps: &mut scaled.steps,
    };
    fused_adam_(tensors, &config, Some(&grad_scale), None).unwrap();
    for i in 0..params.len() {
        assert!(max_abs_diff(&scaled.params[i], &plain.params[i]) < 1e-6);
        assert!(max_abs_diff(&scaled.m[i], &plain.m[i]) < 1e-6);
    }
    // The kernel unscales the gradients in place, as AdamTensors documents.
    for (s, g) in scaled_grads.iter().zip(&grads) {
        assert!(max_abs_diff(s, g) < 1e-6);
    }
}

#[test]
fn fused_adam_checks_its_lists() {
    let mut params = vec![Tensor::zeros([2], CPU_F32)];
    let mut grads = vec![];
    let mut m = vec![Tensor::zeros([2], CPU_F32)];
    let mut v = vec![Tensor::zeros([2], CPU_F32)];
    let mut steps = vec![Tensor::from(0.0f32)];
    let tensors = AdamTensors {
        params: &mut params,
        grads: &mut grads,
        exp_avgs: &mut m,
        exp_avg_sqs: &mut v,
        max_exp_avg_sqs: &mut [],
        state_steps: &mut steps,
    };
    let err = fused_adam_(tensors, &AdamConfig::default(), None, None).unwrap_err();
    assert!(err.to_string().contains("1 params but 0 grads"), "{err}");
}
