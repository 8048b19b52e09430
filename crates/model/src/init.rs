//! Weight initialisation shared by both networks.
//!
//! Keras' default `glorot_uniform` (the notebook) and the official DDPM code's
//! `variance_scaling(scale, mode="fan_avg", distribution="uniform")` (Ho et al. 2020,
//! `diffusion_tf/nn.py: default_init`) are one family: a uniform distribution on `±limit` with
//! `limit = sqrt(3 · scale / fan_avg)`, `fan_avg = (fan_in + fan_out) / 2`. Glorot is `scale = 1`.

use tch::nn::Init;

/// The scale the official DDPM code gives the last layer of every residual branch and the output
/// convolution: TensorFlow's variance scaling rejects 0, so "zero" init is 1e-10.
pub(crate) const ZERO_SCALE: f64 = 1e-10;

/// Fan-average uniform variance scaling for a weight of PyTorch layout.
///
/// `dims` is `[out, in]` for a linear layer, `[out, in, kh, kw]` for a convolution and
/// `[in, out, kh, kw]` for a transposed convolution; the fan sum is the same either way.
pub(crate) fn fan_avg_uniform(dims: &[i64], scale: f64) -> Init {
    let receptive_field: i64 = dims.iter().skip(2).product();
    let fan_sum = (dims[0] + dims[1]) * receptive_field;
    let limit = (6.0 * scale / fan_sum as f64).sqrt();
    Init::Uniform {
        lo: -limit,
        up: limit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glorot_limit_for_a_conv_kernel() {
        // Keras: fan_in = 3*3*28, fan_out = 3*3*128, limit = sqrt(6 / (fan_in + fan_out)).
        let Init::Uniform { lo, up } = fan_avg_uniform(&[128, 28, 3, 3], 1.0) else {
            panic!()
        };
        let expected = (6.0f64 / (9.0 * 28.0 + 9.0 * 128.0)).sqrt();
        assert!((up - expected).abs() < 1e-15 && (lo + expected).abs() < 1e-15);
    }
}
