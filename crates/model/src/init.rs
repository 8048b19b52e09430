//! Weight initialisation shared by both networks.
//!
//! Keras' default `glorot_uniform` (the notebook) and the official DDPM code's
//! `variance_scaling(scale, mode="fan_avg", distribution="uniform")` (Ho et al. 2020,
//! `diffusion_tf/nn.py: default_init`) are one family: a uniform distribution on `±limit` with
//! `limit = sqrt(3 · scale / fan_avg)`, `fan_avg = (fan_in + fan_out) / 2`. Glorot is `scale = 1`.
//!
//! The draws come from a generator the caller owns ([`torch_ext::Generator`]), not from libtorch's
//! global one: layers are created with zero weights and then filled here, in construction order,
//! with numbers drawn on the generator's device. With a CPU generator a seed gives the same
//! initial weights on every device.

use tch::nn::{self, Init};
use tch::{Kind, Tensor};
use torch_ext::Generator;

/// Keras' `glorot_uniform`, the notebook's initialisation: fan-average scaling with scale 1.
pub(crate) const GLOROT: f64 = 1.0;

/// The scale the official DDPM code gives the last layer of every residual branch and the output
/// convolution: TensorFlow's variance scaling rejects 0, so "zero" init is 1e-10.
pub(crate) const ZERO_SCALE: f64 = 1e-10;

/// The limit of fan-average uniform variance scaling for a weight of PyTorch layout.
///
/// `dims` is `[out, in]` for a linear layer, `[out, in, kh, kw]` for a convolution and
/// `[in, out, kh, kw]` for a transposed convolution; the fan sum is the same either way.
pub(crate) fn fan_avg_limit(dims: &[i64], scale: f64) -> f64 {
    let receptive_field: i64 = dims.iter().skip(2).product();
    let fan_sum = (dims[0] + dims[1]) * receptive_field;
    (6.0 * scale / fan_sum as f64).sqrt()
}

/// Fills the weight `ws` with U(−limit, limit) of [`fan_avg_limit`]`(ws.size(), scale)`, drawn
/// from `gen` on its device and copied to `ws`'s.
pub(crate) fn fan_avg_uniform_(ws: &Tensor, scale: f64, gen: &mut Generator) {
    let limit = fan_avg_limit(&ws.size(), scale);
    let mut draws = Tensor::empty(ws.size(), (Kind::Float, gen.device()));
    gen.uniform_(&mut draws, -limit, limit)
        .expect("uniform draws into a fresh f32 tensor of the generator's device");
    tch::no_grad(|| ws.shallow_clone().copy_(&draws));
}

/// A convolution with a fan-average uniform kernel of `scale` and a zero bias.
// The layer's shape, its init scale and the generator: nothing here groups naturally.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d(
    vs: nn::Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
    scale: f64,
    gen: &mut Generator,
) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding,
        ws_init: Init::Const(0.0),
        bs_init: Init::Const(0.0),
        ..Default::default()
    };
    let conv = nn::conv2d(vs, c_in, c_out, kernel, config);
    fan_avg_uniform_(&conv.ws, scale, gen);
    conv
}

/// A linear layer with a fan-average uniform weight of `scale` and a zero bias.
pub(crate) fn linear(
    vs: nn::Path,
    d_in: i64,
    d_out: i64,
    scale: f64,
    gen: &mut Generator,
) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: Init::Const(0.0),
        bs_init: Some(Init::Const(0.0)),
        bias: true,
    };
    let linear = nn::linear(vs, d_in, d_out, config);
    fan_avg_uniform_(&linear.ws, scale, gen);
    linear
}

/// Test support for both networks.
#[cfg(test)]
pub(crate) mod testing {
    /// Gives the near-zero layers of a fresh network ordinary weights, so that its output
    /// depends on its inputs: the official init scales the last layer of every residual branch
    /// and `conv_out` to ~0 ([`super::ZERO_SCALE`]), so a fresh network ignores `t` and dropout.
    pub(crate) fn wake_up(vs: &tch::nn::VarStore) {
        for (name, mut var) in vs.variables() {
            if ["conv2.weight", "to_out.0.weight", "conv_out.weight"]
                .iter()
                .any(|s| name.ends_with(s))
            {
                let _ = tch::no_grad(|| var.normal_(0.0, 0.1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glorot_limit_for_a_conv_kernel() {
        // Keras: fan_in = 3*3*28, fan_out = 3*3*128, limit = sqrt(6 / (fan_in + fan_out)).
        let limit = fan_avg_limit(&[128, 28, 3, 3], 1.0);
        let expected = (6.0f64 / (9.0 * 28.0 + 9.0 * 128.0)).sqrt();
        assert!((limit - expected).abs() < 1e-15);
    }

    #[test]
    fn weights_fill_the_range_from_the_generator_alone() {
        let ws = Tensor::zeros([64, 32, 3, 3], (Kind::Float, tch::Device::Cpu));
        let draw = |seed| {
            let ws = ws.copy();
            fan_avg_uniform_(&ws, 1.0, &mut Generator::cpu(seed));
            ws
        };
        let (a, b) = (draw(4), draw(4));
        // The global generator in between does not shift ours.
        tch::manual_seed(1);
        let _ = Tensor::randn([10], (Kind::Float, tch::Device::Cpu));
        assert!(a.equal(&b) && a.equal(&draw(4)));
        assert!(!a.equal(&draw(5)));
        let limit = fan_avg_limit(&[64, 32, 3, 3], 1.0);
        let max = a.abs().max().double_value(&[]);
        assert!(max <= limit && max > 0.95 * limit, "{max} vs {limit}");
    }
}
