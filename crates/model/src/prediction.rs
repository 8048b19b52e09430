//! What a denoising network predicts: the noise ε, the clean image x_0, or the velocity v; and
//! whether it also predicts the variance of the reverse step ([`VarianceOutput`]).
//!
//! The training objective chooses its target by it and the samplers turn the network's output
//! back into ε and x̂_0 by it, so it sits here, below both.

use serde::{Deserialize, Serialize};

/// What the network predicts.
///
/// Serialised in snake case (`"eps"`, `"x0"`, `"v"`), as training configs and checkpoints
/// record it under `objective.prediction`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise ε (Ho et al. 2020).
    Eps,
    /// The clean image x_0.
    X0,
    /// The velocity v = √ᾱ_t ε − √(1−ᾱ_t) x_0 (Salimans & Ho 2022).
    V,
}

/// Whether the network also outputs the variance Σ_θ of the reverse step.
///
/// Serialised as `"fixed"` or `"learned_range"` (diffusers' `variance_type` name), as training
/// configs and checkpoints record it under `objective.variance`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceOutput {
    /// C output channels, the prediction only; the variance is fixed (β_t or β̃_t).
    #[default]
    Fixed,
    /// 2·C output channels: the prediction, then v_Σ ∈ [−1, 1], which interpolates
    /// ln Σ_θ = v ln β_t + (1 − v) ln β̃_t with v = (v_Σ + 1)/2 (Nichol & Dhariwal 2021, Eq. 15).
    LearnedRange,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_names_are_the_ones_checkpoints_record() {
        for (prediction, name) in [
            (Prediction::Eps, "\"eps\""),
            (Prediction::X0, "\"x0\""),
            (Prediction::V, "\"v\""),
        ] {
            assert_eq!(serde_json::to_string(&prediction).unwrap(), name);
            assert_eq!(
                serde_json::from_str::<Prediction>(name).unwrap(),
                prediction
            );
        }
    }
}
