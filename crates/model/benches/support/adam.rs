//! Adam (Kingma & Ba 2015, Alg. 1) on plain tensors, for the benchmarks: the model crate cannot
//! use the train crate's optimizer (dependencies point down), and tch's cannot be checkpointed.

use tch::nn::VarStore;
use tch::Tensor;

/// Adam (Kingma & Ba 2015, Alg. 1) as `torch.optim.Adam` computes it without `foreach`.
pub struct Adam {
    params: Vec<Tensor>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: i32,
    lr: f64,
    betas: (f64, f64),
    eps: f64,
}

impl Adam {
    pub fn new(vs: &VarStore, lr: f64) -> Self {
        let params = vs.trainable_variables();
        let zeros = || params.iter().map(Tensor::zeros_like).collect::<Vec<_>>();
        Self {
            exp_avg: zeros(),
            exp_avg_sq: zeros(),
            params,
            step: 0,
            lr,
            betas: (0.9, 0.999),
            eps: 1e-8,
        }
    }

    pub fn update(&mut self, grads: &[Tensor]) {
        self.step += 1;
        let (b1, b2) = self.betas;
        let step_size = self.lr / (1.0 - b1.powi(self.step));
        let bias_correction2_sqrt = (1.0 - b2.powi(self.step)).sqrt();
        tch::no_grad(|| {
            for (((p, m), v), g) in self
                .params
                .iter_mut()
                .zip(&mut self.exp_avg)
                .zip(&mut self.exp_avg_sq)
                .zip(grads)
            {
                let _ = m.lerp_(g, 1.0 - b1);
                let _ = v.lerp_(&g.square(), 1.0 - b2);
                // denom = (sqrt(v) / sqrt(1 - β2^t) + ε) / -step_size, so that p += m / denom.
                let denom = v
                    .sqrt()
                    .g_div_scalar_(bias_correction2_sqrt)
                    .g_add_scalar_(self.eps)
                    .g_div_scalar_(-step_size);
                let _ = p.addcdiv_(m, &denom);
            }
        });
    }
}
