//! The sinusoidal timestep embedding shared by both networks (Vaswani et al. 2017, Sec. 3.5, as
//! used by Ho et al. 2020, App. B, and by diffusers' `get_timestep_embedding`).

use tch::{Kind, Tensor};

/// The period of the slowest frequency, as in the Transformer and in DDPM.
const MAX_PERIOD: f64 = 10_000.0;

/// Embeds integer timesteps as `[sin(t·ω_0) … sin(t·ω_{h-1}), cos(t·ω_0) … cos(t·ω_{h-1})]`
/// with `h = dim / 2` and `ω_i = exp(-ln(10000) · i / (h - freq_shift))`.
///
/// `freq_shift = 1` and `flip_sin_to_cos = false` give the DDPM paper's and the notebook's
/// embedding (`log(10000) / (half_dim - 1)`); `flip_sin_to_cos = true` puts the cosines first.
/// An odd `dim` gets one zero column at the end. The operations run in f32 in the same order as
/// diffusers' `get_timestep_embedding`, so that the result matches it bit for bit: at `t ≈ 1000`
/// one f32 ulp of a frequency already moves the phase by about 1e-4.
///
/// # Shapes
/// `timesteps`: `[N]`, any numeric kind (cast to f32). Returns `[N, dim]` f32 on the same device.
///
/// # Panics
/// When `timesteps` is not one-dimensional, or when `dim / 2 <= freq_shift` (no frequencies).
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: i64,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Tensor {
    assert_eq!(
        timesteps.dim(),
        1,
        "timesteps must be one-dimensional, got shape {:?}",
        timesteps.size()
    );
    let half_dim = dim / 2;
    assert!(
        half_dim as f64 > freq_shift,
        "embedding dim {dim} is too small for freq_shift {freq_shift}"
    );
    let exponent = Tensor::arange(half_dim, (Kind::Float, timesteps.device())) * (-MAX_PERIOD.ln());
    let exponent = exponent / (half_dim as f64 - freq_shift);
    let frequencies = exponent.exp();
    let phases = timesteps.to_kind(Kind::Float).unsqueeze(1) * frequencies.unsqueeze(0);
    let (sin, cos) = (phases.sin(), phases.cos());
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], -1)
    } else {
        Tensor::cat(&[sin, cos], -1)
    };
    if dim % 2 == 1 {
        emb.constant_pad_nd([0, 1])
    } else {
        emb
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The notebook's `SinusoidalPositionEmbeddings`, evaluated in f64 on the host.
    fn notebook_embedding(t: f64, dim: usize) -> Vec<f64> {
        let half = dim / 2;
        let scale = MAX_PERIOD.ln() / (half as f64 - 1.0);
        let phases: Vec<f64> = (0..half).map(|i| t * (-(i as f64) * scale).exp()).collect();
        phases
            .iter()
            .map(|p| p.sin())
            .chain(phases.iter().map(|p| p.cos()))
            .collect()
    }

    #[test]
    fn matches_the_notebook_formula() {
        let ts = [0i64, 1, 17, 150, 299];
        let emb = timestep_embedding(&Tensor::from_slice(&ts), 32, false, 1.0);
        assert_eq!(emb.size(), [5, 32]);
        assert_eq!(emb.kind(), Kind::Float);
        for (row, &t) in ts.iter().enumerate() {
            let expected = notebook_embedding(t as f64, 32);
            let got = Vec::<f32>::try_from(emb.get(row as i64)).unwrap();
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                // Phases up to 299 rad carry f32 rounding of ~3e-5.
                assert!((*g as f64 - e).abs() < 1e-4, "t={t}: {g} vs {e}");
            }
        }
    }

    #[test]
    fn t_zero_is_zeros_then_ones_and_flip_swaps_halves() {
        let t = Tensor::from_slice(&[0i64]);
        let emb = Vec::<f32>::try_from(timestep_embedding(&t, 8, false, 1.0).get(0)).unwrap();
        assert_eq!(emb, [0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]);
        let flipped = Vec::<f32>::try_from(timestep_embedding(&t, 8, true, 1.0).get(0)).unwrap();
        assert_eq!(flipped, [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn odd_dims_get_a_zero_column() {
        let emb = timestep_embedding(&Tensor::from_slice(&[5i64, 9]), 7, false, 1.0);
        assert_eq!(emb.size(), [2, 7]);
        assert_eq!(
            emb.select(1, 6).abs().sum(Kind::Float).double_value(&[]),
            0.0
        );
    }
}
