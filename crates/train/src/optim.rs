//! Adam and AdamW (Kingma & Ba 2015; Loshchilov & Hutter 2019) on tensors, with a learning-rate
//! schedule (linear warm-up, optional cosine decay) and gradient clipping by global norm.
//!
//! tch's built-in optimizers keep their moments inside libtorch where they cannot be saved, so a
//! resumed run would restart Adam from zero. Here the moments are plain tensors, named after the
//! parameters, and go into the checkpoint.
//!
//! The update is libtorch's fused multi-tensor kernel (`torch._fused_adam_` / `_fused_adamw_`,
//! what `torch.optim.Adam(fused=True)` runs), through torch-ext: one pass over every parameter,
//! gradient and moment, a few kernel launches on CUDA for the whole model. The gradient norm is
//! `_foreach_norm` over all gradients. Nothing here reads a value back to the host: the step
//! count the bias corrections use lives on the device ([`Adam::steps_tensor`]), and
//! [`Adam::step_on_device`] takes the learning rate, a clipping scale and a skip flag as device
//! tensors, so that a training step runs without a host synchronisation.

use serde::{Deserialize, Serialize};
use tch::{nn::VarStore, Device, Kind, Tensor};
use torch_ext::foreach;
use torch_ext::{AdamConfig, AdamTensors};

use crate::TrainError;

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam; `weight_decay` is added to the gradient (L2 regularisation), as `torch.optim.Adam`.
    Adam,
    /// AdamW; `weight_decay` shrinks the weights directly (decoupled), as `torch.optim.AdamW`.
    AdamW,
}

/// How the learning rate moves after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LrDecay {
    /// Constant after warm-up (the notebook and the paper).
    Constant,
    /// Cosine from `lr` down to `min_lr` at the last step.
    Cosine,
}

/// Optimizer settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Adam or AdamW.
    pub kind: OptimizerKind,
    /// Peak learning rate.
    pub lr: f64,
    /// Adam β1.
    pub beta1: f64,
    /// Adam β2.
    pub beta2: f64,
    /// Adam ε (added after bias correction, as PyTorch does).
    pub eps: f64,
    /// Weight decay (see [`OptimizerKind`]).
    pub weight_decay: f64,
    /// Steps of linear warm-up from 0 to `lr` (the paper: 5000).
    pub warmup_steps: u64,
    /// Decay after warm-up.
    pub decay: LrDecay,
    /// The floor of cosine decay.
    pub min_lr: f64,
    /// Clip gradients to this global L2 norm (the paper: 1.0); `null` for none.
    pub grad_clip: Option<f64>,
}

impl OptimConfig {
    /// The notebook's optimizer: `tf.keras.optimizers.Adam(learning_rate=0.001)` (Keras' ε is 1e-7).
    pub fn seed_notebook() -> Self {
        Self {
            kind: OptimizerKind::Adam,
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-7,
            weight_decay: 0.0,
            warmup_steps: 0,
            decay: LrDecay::Constant,
            min_lr: 0.0,
            grad_clip: None,
        }
    }

    /// Ho et al. 2020, App. B: Adam 2e-4, 5000 warm-up steps, gradients clipped to norm 1.
    pub fn ho2020() -> Self {
        Self {
            lr: 2e-4,
            eps: 1e-8,
            warmup_steps: 5000,
            grad_clip: Some(1.0),
            ..Self::seed_notebook()
        }
    }

    /// Checks ranges, naming the bad field.
    ///
    /// # Errors
    /// [`TrainError::Config`] for a non-positive learning rate, betas outside [0, 1), and so on.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |field: &str, value: f64, want: &str| {
            Err(TrainError::Config(format!(
                "optim.{field} = {value} is invalid: {want}"
            )))
        };
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad("lr", self.lr, "it must be positive");
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("beta1", self.beta1, "it must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2", self.beta2, "it must be in [0, 1)");
        }
        if !(self.eps > 0.0) {
            return bad("eps", self.eps, "it must be positive");
        }
        if !(self.weight_decay >= 0.0) {
            return bad("weight_decay", self.weight_decay, "it must be >= 0");
        }
        if !(self.min_lr >= 0.0 && self.min_lr <= self.lr) {
            return bad("min_lr", self.min_lr, "it must be in [0, lr]");
        }
        if let Some(clip) = self.grad_clip {
            if !(clip > 0.0) {
                return bad(
                    "grad_clip",
                    clip,
                    "it must be positive, or null for no clipping",
                );
            }
        }
        Ok(())
    }

    /// The learning rate at 0-based `step` of a run of `total_steps` steps.
    pub fn lr_at(&self, step: u64, total_steps: u64) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        match self.decay {
            LrDecay::Constant => self.lr,
            LrDecay::Cosine => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                self.min_lr
                    + 0.5
                        * (self.lr - self.min_lr)
                        * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }
}

impl OptimConfig {
    /// [`OptimConfig::lr_at`] computed on the device: `n` is a one-element tensor holding the
    /// 0-based update index (any dtype; integers below 2²⁴ are exact in f32). Returns a 0-dim
    /// f64 tensor on `n`'s device, with the host formula's operations in the same order, so
    /// that on the CPU it equals `lr_at` bit for bit during warm-up and at constant rates (the
    /// cosine may differ in the last bit, from another `cos`).
    pub fn lr_tensor(&self, n: &Tensor, total_steps: u64) -> Tensor {
        let n = n.to_kind(Kind::Double).reshape([]);
        let after_warmup = match self.decay {
            LrDecay::Constant => n.full_like(self.lr),
            LrDecay::Cosine => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let progress = ((&n - self.warmup_steps as f64) / span).clamp(0.0, 1.0);
                ((progress * std::f64::consts::PI).cos() + 1.0) * (0.5 * (self.lr - self.min_lr))
                    + self.min_lr
            }
        };
        if self.warmup_steps == 0 {
            return after_warmup;
        }
        let warm = ((&n + 1.0) * self.lr) / self.warmup_steps as f64;
        warm.where_self(&n.lt(self.warmup_steps as f64), &after_warmup)
    }

    /// Whether the learning rate is the same at every step (no warm-up, no decay).
    pub fn is_constant(&self) -> bool {
        self.warmup_steps == 0 && self.decay == LrDecay::Constant
    }

    fn adam_config(&self, lr: f64) -> AdamConfig {
        AdamConfig {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            weight_decay: self.weight_decay,
            eps: self.eps,
            amsgrad: false,
            maximize: false,
        }
    }
}

/// Adam/AdamW over the trainable variables of a var store, with saveable moments.
#[derive(Debug)]
pub struct Adam {
    config: OptimConfig,
    names: Vec<String>,
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    /// Updates applied so far: a 0-dim f32 tensor on the parameters' device, which the fused
    /// kernels read for the bias corrections (one tensor, listed once per parameter).
    steps: Tensor,
}

impl Adam {
    /// An optimizer for every trainable variable of `vs`, in name order.
    pub fn new(vs: &VarStore, config: OptimConfig) -> Self {
        let mut named: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let (names, params): (Vec<_>, Vec<_>) = named.into_iter().unzip();
        let zeros = |p: &Tensor| Tensor::zeros_like(p).set_requires_grad(false);
        let exp_avg = params.iter().map(zeros).collect();
        let exp_avg_sq = params.iter().map(zeros).collect();
        let device = params.first().map_or(Device::Cpu, Tensor::device);
        Self {
            config,
            names,
            params,
            exp_avg,
            exp_avg_sq,
            steps: Tensor::zeros([], (Kind::Float, device)),
        }
    }

    /// The number of updates applied so far (reads the device-side count: a synchronisation).
    pub fn step_count(&self) -> u64 {
        self.steps.double_value(&[]) as u64
    }

    /// The update count as the kernels read it: a 0-dim f32 tensor on the parameters' device.
    pub fn steps_tensor(&self) -> &Tensor {
        &self.steps
    }

    /// The settings.
    pub fn config(&self) -> &OptimConfig {
        &self.config
    }

    /// The parameters' device (the CPU for an empty var store).
    pub fn device(&self) -> Device {
        self.steps.device()
    }

    /// The defined gradients, in parameter order (shallow: in-place ops reach the parameters').
    pub fn grads(&self) -> Vec<Tensor> {
        self.params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect()
    }

    /// Zeroes the gradients in place (one `_foreach_zero_`); they keep their storage.
    pub fn zero_grad(&mut self) {
        let mut grads = self.grads();
        foreach::foreach_zero_(&mut grads).expect("gradients of one device and dtype");
    }

    /// The global L2 norm of all gradients, as a 0-d f32 tensor on the parameters' device
    /// (`_foreach_norm`, then the norm of the norms; reading it synchronises, so the caller
    /// decides when).
    pub fn grad_norm(&self) -> Tensor {
        let grads = self.grads();
        if grads.is_empty() {
            return Tensor::zeros([], (Kind::Float, self.device()));
        }
        tch::no_grad(|| foreach::global_norm(&grads)).expect("gradients of one device and dtype")
    }

    /// Scales the gradients in place so that their global norm is at most `max_norm`, given
    /// their norm as a device tensor (`torch.nn.utils.clip_grad_norm_`: by
    /// `min(1, max_norm / (norm + 1e-6))`, without reading the norm back).
    /// [`Adam::step_on_device`] can instead fold this scaling into the update
    /// ([`Adam::clip_scale`]).
    pub fn clip_grad_norm(&mut self, norm: &Tensor, max_norm: f64) {
        let coef = (max_norm / (norm + 1e-6)).clamp_max(1.0);
        let mut grads = self.grads();
        foreach::foreach_mul_tensor_(&mut grads, &coef).expect("gradients of one device and dtype");
    }

    /// The divisor that clips gradients of global norm `norm` to `max_norm`:
    /// `max(1, (norm + 1e-6) / max_norm)`, the reciprocal of `clip_grad_norm_`'s coefficient, as
    /// an f32 tensor for [`Adam::step_on_device`]'s `grad_scale`.
    pub fn clip_scale(norm: &Tensor, max_norm: f64) -> Tensor {
        ((norm.to_kind(Kind::Float) + 1e-6) / max_norm).clamp_min(1.0)
    }

    /// Applies one update with learning rate `lr` (Kingma & Ba 2015, Alg. 1, with PyTorch's
    /// placement of ε after bias correction), to the parameters that have a gradient.
    pub fn step(&mut self, lr: f64) {
        let _ = self.steps.g_add_scalar_(1.0);
        self.fused(&self.config.adam_config(lr), None, None, None);
    }

    /// One update that stays on the device: the learning rate `lr` is a one-element tensor (see
    /// [`OptimConfig::lr_tensor`]); when `found_inf` (a 0-dim f32 tensor) holds 1 nothing changes,
    /// not even the step count; `grad_scale`, when given, divides the gradients first (and in
    /// place), which is how [`Adam::clip_scale`] clips inside the same pass.
    pub fn step_on_device(&mut self, lr: &Tensor, found_inf: &Tensor, grad_scale: Option<&Tensor>) {
        // As torch.optim.Adam(fused=True) with a GradScaler: the kernel reads the incremented
        // count, and a skipped step does not count.
        let _ = self.steps.g_add_(&(1.0 - found_inf));
        // CUDA kernels read an f32 learning rate on the device; the CPU reads it as a double.
        let lr = if self.device().is_cuda() {
            lr.to_kind(Kind::Float)
        } else {
            lr.shallow_clone()
        };
        let config = self.config.adam_config(f64::NAN);
        self.fused(&config, Some(&lr), grad_scale, Some(found_inf));
    }

    fn fused(
        &mut self,
        config: &AdamConfig,
        lr: Option<&Tensor>,
        grad_scale: Option<&Tensor>,
        found_inf: Option<&Tensor>,
    ) {
        // Parameters without a gradient (not reached by the loss) are left alone, as
        // torch.optim does.
        let (mut params, mut grads, mut m, mut v) = (vec![], vec![], vec![], vec![]);
        for ((p, e), s) in self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            let g = p.grad();
            if g.defined() {
                params.push(p.shallow_clone());
                grads.push(g);
                m.push(e.shallow_clone());
                v.push(s.shallow_clone());
            }
        }
        let mut steps: Vec<Tensor> = params.iter().map(|_| self.steps.shallow_clone()).collect();
        let tensors = AdamTensors {
            params: &mut params,
            grads: &mut grads,
            exp_avgs: &mut m,
            exp_avg_sqs: &mut v,
            max_exp_avg_sqs: &mut [],
            state_steps: &mut steps,
        };
        let adamw = self.config.kind == OptimizerKind::AdamW;
        let result = tch::no_grad(|| match (adamw, lr) {
            (false, None) => foreach::fused_adam_(tensors, config, grad_scale, found_inf),
            (true, None) => foreach::fused_adamw_(tensors, config, grad_scale, found_inf),
            (false, Some(lr)) => {
                foreach::fused_adam_tensor_lr_(tensors, config, lr, grad_scale, found_inf)
            }
            (true, Some(lr)) => {
                foreach::fused_adamw_tensor_lr_(tensors, config, lr, grad_scale, found_inf)
            }
        });
        result.expect("parameters, gradients and moments of one device and dtype");
    }

    /// The moments as named tensors (`exp_avg.<param>`, `exp_avg_sq.<param>`) for a checkpoint.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.names.len());
        for (name, (m, v)) in self
            .names
            .iter()
            .zip(self.exp_avg.iter().zip(&self.exp_avg_sq))
        {
            out.push((format!("exp_avg.{name}"), m.shallow_clone()));
            out.push((format!("exp_avg_sq.{name}"), v.shallow_clone()));
        }
        out
    }

    /// Restores moments saved by [`Adam::state_tensors`] and the update count.
    ///
    /// # Errors
    /// [`TrainError::OptimizerState`] when a moment is missing or has the wrong shape.
    pub fn load_state(
        &mut self,
        tensors: &[(String, Tensor)],
        step: u64,
    ) -> Result<(), TrainError> {
        let map: std::collections::HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        tch::no_grad(|| {
            for (name, (m, v)) in self
                .names
                .iter()
                .zip(self.exp_avg.iter_mut().zip(self.exp_avg_sq.iter_mut()))
            {
                for (prefix, dst) in [("exp_avg", &mut *m), ("exp_avg_sq", &mut *v)] {
                    let key = format!("{prefix}.{name}");
                    let src = map
                        .get(key.as_str())
                        .ok_or_else(|| TrainError::OptimizerState(format!("no moment `{key}`")))?;
                    if src.size() != dst.size() {
                        return Err(TrainError::OptimizerState(format!(
                            "`{key}` has shape {:?}, the model needs {:?}",
                            src.size(),
                            dst.size()
                        )));
                    }
                    dst.copy_(src);
                }
            }
            Ok(())
        })?;
        let _ = self.steps.fill_(step as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn, Device};

    /// One Adam update on p = [1, -2] with gradient [0.5, 0.1]: after the first step Adam moves
    /// each coordinate by lr·sign(g) (m̂ = g, v̂ = g², so m̂/√v̂ = ±1), up to ε.
    #[test]
    fn first_adam_step_moves_by_lr_times_sign() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs
            .root()
            .var_copy("p", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut opt = Adam::new(
            &vs,
            OptimConfig {
                eps: 1e-12,
                ..OptimConfig::seed_notebook()
            },
        );
        let loss = (&p * Tensor::from_slice(&[0.5f32, 0.1])).sum(Kind::Float);
        loss.backward();
        opt.step(0.01);
        let got: Vec<f32> = Vec::try_from(&p).unwrap();
        assert!(
            (got[0] - 0.99).abs() < 1e-6 && (got[1] + 2.01).abs() < 1e-6,
            "{got:?}"
        );
        assert_eq!(opt.step_count(), 1);
    }

    /// Matches torch.optim.Adam and AdamW over three steps on p = [1, -0.5] with
    /// f(p) = sum((p − target)²)/2, lr 0.1, betas (0.9, 0.999), ε 1e-8: without weight decay,
    /// and with Adam's L2 and AdamW's decoupled decay (0.5). The reference trajectories come from
    /// `scripts/golden/optim.py` (torch, float64). We compute in f32, as torch's own f32 run does
    /// (6.7e-8 from float64 at most); values are below 1, where 1e-6 is about 16 f32 ulps.
    /// Measured: 6.7e-8 from float64, and 1.5e-8 (one f32 ulp or so) from torch's f32 run, whose
    /// default for-loop implementation rounds in another order than the fused kernel. Weight decay moves the
    /// third step by more than 1e-4, so an optimizer that ignored it would fail.
    #[test]
    fn three_steps_match_torch_adam() {
        #[derive(serde::Deserialize)]
        struct Fixture {
            p0: Vec<f32>,
            lr: f64,
            betas: [f64; 2],
            eps: f64,
            cases: Vec<Case>,
        }
        #[derive(serde::Deserialize)]
        struct Case {
            kind: OptimizerKind,
            weight_decay: f64,
            target: f64,
            p_after_each_step: Vec<Vec<f64>>,
            p_after_each_step_f32: Vec<Vec<f64>>,
        }
        const ATOL: f64 = 1e-6;
        let fixture: Fixture =
            serde_json::from_str(include_str!("../tests/fixtures/adam_three_steps.json")).unwrap();
        let kinds: Vec<(OptimizerKind, bool)> = fixture
            .cases
            .iter()
            .map(|c| (c.kind, c.weight_decay > 0.0))
            .collect();
        for kind in [
            (OptimizerKind::Adam, false),
            (OptimizerKind::Adam, true),
            (OptimizerKind::AdamW, true),
        ] {
            assert!(kinds.contains(&kind), "the fixture lacks {kind:?}");
        }
        let (mut worst, mut worst_f32) = (0.0f64, 0.0f64);
        for case in &fixture.cases {
            let vs = nn::VarStore::new(Device::Cpu);
            let p = vs.root().var_copy("p", &Tensor::from_slice(&fixture.p0));
            let mut opt = Adam::new(
                &vs,
                OptimConfig {
                    kind: case.kind,
                    lr: fixture.lr,
                    beta1: fixture.betas[0],
                    beta2: fixture.betas[1],
                    eps: fixture.eps,
                    weight_decay: case.weight_decay,
                    ..OptimConfig::seed_notebook()
                },
            );
            assert_eq!(case.p_after_each_step.len(), 3);
            assert_eq!(case.p_after_each_step_f32.len(), 3);
            for (step, (want, torch_f32)) in case
                .p_after_each_step
                .iter()
                .zip(&case.p_after_each_step_f32)
                .enumerate()
            {
                opt.zero_grad();
                (&p - case.target)
                    .square()
                    .sum(Kind::Float)
                    .g_mul_scalar(0.5)
                    .backward();
                opt.step(fixture.lr);
                let got: Vec<f32> = Vec::try_from(&p).unwrap();
                assert_eq!((got.len(), torch_f32.len()), (want.len(), want.len()));
                for ((&g, &w), &w32) in got.iter().zip(want).zip(torch_f32) {
                    let err = (f64::from(g) - w).abs();
                    assert!(
                        err <= ATOL,
                        "{:?} weight_decay {} step {}: {got:?} vs torch {want:?}",
                        case.kind,
                        case.weight_decay,
                        step + 1
                    );
                    worst = worst.max(err);
                    worst_f32 = worst_f32.max((f64::from(g) - w32).abs());
                }
            }
            assert_eq!(opt.step_count(), 3);
        }
        eprintln!(
            "worst error {worst:e} against torch in float64, {worst_f32:e} against its f32 run"
        );
    }

    #[test]
    fn warmup_then_cosine() {
        let c = OptimConfig {
            warmup_steps: 10,
            decay: LrDecay::Cosine,
            min_lr: 0.0,
            lr: 1.0,
            ..OptimConfig::seed_notebook()
        };
        assert!((c.lr_at(0, 110) - 0.1).abs() < 1e-12);
        assert!((c.lr_at(9, 110) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(10, 110) - 1.0).abs() < 1e-12);
        assert!((c.lr_at(60, 110) - 0.5).abs() < 1e-12);
        assert!(c.lr_at(110, 110).abs() < 1e-12);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var_copy("p", &Tensor::from_slice(&[3.0f32, 4.0]));
        let mut opt = Adam::new(&vs, OptimConfig::seed_notebook());
        (&p * &p).sum(Kind::Float).g_mul_scalar(0.5).backward();
        let norm = opt.grad_norm();
        assert!((norm.double_value(&[]) - 5.0).abs() < 1e-6);
        let scale = Adam::clip_scale(&norm, 1.0);
        assert!((scale.double_value(&[]) - 5.0).abs() < 1e-5);
        opt.clip_grad_norm(&norm, 1.0);
        assert!((opt.grad_norm().double_value(&[]) - 1.0).abs() < 1e-5);
        // Below the limit nothing changes.
        opt.clip_grad_norm(&opt.grad_norm(), 2.0);
        assert!((opt.grad_norm().double_value(&[]) - 1.0).abs() < 1e-5);
        assert_eq!(
            Adam::clip_scale(&opt.grad_norm(), 2.0).double_value(&[]),
            1.0
        );
    }

    /// The device-side learning rate is the host schedule's, at every step of warm-up, the
    /// constant phase and the cosine.
    #[test]
    fn the_device_learning_rate_follows_the_host_schedule() {
        for decay in [LrDecay::Constant, LrDecay::Cosine] {
            for warmup_steps in [0, 7] {
                let c = OptimConfig {
                    warmup_steps,
                    decay,
                    min_lr: 1e-5,
                    lr: 3e-4,
                    ..OptimConfig::seed_notebook()
                };
                for n in 0..40u64 {
                    let host = c.lr_at(n, 30);
                    let device = c.lr_tensor(&Tensor::from(n as f32), 30).double_value(&[]);
                    let tol = if decay == LrDecay::Cosine { 1e-18 } else { 0.0 };
                    assert!(
                        (host - device).abs() <= tol,
                        "{decay:?} warmup {warmup_steps} step {n}: {host} vs {device}"
                    );
                }
            }
        }
    }

    /// `step_on_device` with `found_inf = 1` changes nothing, not even the count; with 0 it is
    /// `step(lr)`; a `grad_scale` of the clipping divisor is clipping then stepping.
    #[test]
    fn device_steps_skip_clip_and_count_on_the_device() {
        let make = || {
            let vs = nn::VarStore::new(Device::Cpu);
            let p = vs
                .root()
                .var_copy("p", &Tensor::from_slice(&[1.0f32, -2.0, 0.5]));
            let opt = Adam::new(&vs, OptimConfig::seed_notebook());
            (vs, p, opt)
        };
        let backward = |p: &Tensor| (p * p * 3.0).sum(Kind::Float).backward();
        let (_a, pa, mut host) = make();
        let (_b, pb, mut device) = make();
        let lr = Tensor::from(0.01f64);
        for skip in [false, true, false] {
            for (p, opt) in [(&pa, &mut host), (&pb, &mut device)] {
                opt.zero_grad();
                backward(p);
            }
            let before = pb.copy();
            if !skip {
                host.step(0.01);
            }
            let found_inf = Tensor::from(if skip { 1.0f32 } else { 0.0 });
            device.step_on_device(&lr, &found_inf, None);
            if skip {
                assert!(pb.equal(&before), "a skipped step moved the parameter");
            }
            assert!(pa.equal(&pb), "skip {skip}");
        }
        assert_eq!((host.step_count(), device.step_count()), (2, 2));

        let (_c, pc, mut clipped) = make();
        let (_d, pd, mut folded) = make();
        backward(&pc);
        let norm = clipped.grad_norm();
        assert!(norm.double_value(&[]) > 1.0);
        clipped.clip_grad_norm(&norm, 1.0);
        clipped.step(0.01);
        backward(&pd);
        let scale = Adam::clip_scale(&folded.grad_norm(), 1.0);
        folded.step_on_device(&lr, &Tensor::from(0.0f32), Some(&scale));
        assert!((&pc - &pd).abs().max().double_value(&[]) < 1e-7);
    }

    #[test]
    fn state_round_trips_and_rejects_wrong_shapes() {
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root().var_copy("p", &Tensor::from_slice(&[1.0f32, 2.0]));
        let mut opt = Adam::new(&vs, OptimConfig::seed_notebook());
        (&p * &p).sum(Kind::Float).backward();
        opt.step(0.1);
        let saved: Vec<(String, Tensor)> = opt
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.copy()))
            .collect();
        let mut fresh = Adam::new(&vs, OptimConfig::seed_notebook());
        fresh.load_state(&saved, 1).unwrap();
        assert_eq!(fresh.state_tensors().len(), saved.len());
        for ((_, a), (_, b)) in fresh.state_tensors().iter().zip(&saved) {
            assert!(a.equal(b));
        }
        let bad = vec![(
            "exp_avg.p".to_string(),
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        )];
        let err = fresh.load_state(&bad, 1).unwrap_err().to_string();
        assert!(err.contains("exp_avg.p") && err.contains("[3]"), "{err}");
    }
}
