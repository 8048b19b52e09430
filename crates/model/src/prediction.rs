//! What a denoising network predicts: the noise ε, the clean image x_0, or the velocity v.
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
