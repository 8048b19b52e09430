//! Class-conditional sampling and classifier-free guidance (Ho & Salimans 2022).
//!
//! A class-conditional network ([`model::Denoiser::num_classes`] = `Some(K)`) predicts
//! ε_θ(x_t, t, c) for a class `c` in `0..K`, and ε_θ(x_t, t, ∅) for the null label `K`, which it
//! was trained on by replacing labels at random (label dropout, `objective.p_uncond`). The guided
//! prediction is diffusers' form,
//!
//! ```text
//! ε̃ = ε_u + W · (ε_c − ε_u),     ε_c = ε_θ(x_t, t, c),  ε_u = ε_θ(x_t, t, ∅),
//! ```
//!
//! with W the *guidance scale* (`--guidance`): W = 1 is plain conditional sampling (ε̃ = ε_c),
//! W = 0 unconditional sampling, W > 1 trades diversity for fidelity to the class. Ho & Salimans
//! (2022, Eq. 6) write the same as ε̃ = (1 + w) ε_c − w ε_u; their guidance strength is
//! w = W − 1 (their w = 0 is plain conditional sampling, their w = 2 is W = 3 here).
//!
//! The guidance acts on the network's output whatever it predicts (ε, x_0 or v), as diffusers'
//! pipelines apply it: for ε and x_0 predictions the result is the same affine combination of
//! the two x̂_0, for v of the two v̂. Both halves run as one forward pass over a batch of twice the
//! size (the images twice, the labels then the null labels), so guidance costs one network call
//! per step, at double batch; at W = 1 only the conditional half runs.

use tch::Tensor;

use model::Denoiser;

use crate::SampleError;

/// The classes of a request's images and the guidance scale W.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassConditioning {
    /// The class of each image of the request, in image order (`0..K`).
    pub labels: Vec<i64>,
    /// W of ε̃ = ε_u + W (ε_c − ε_u) (see the module docs); 1 is plain conditional sampling.
    pub guidance: f64,
}

impl ClassConditioning {
    /// Image `i` of `n` gets class `i mod K`: every class equally often (up to one image) and
    /// in every batch, as class-balanced FID wants.
    ///
    /// ```
    /// let c = sample::ClassConditioning::balanced(3, 7, 2.0);
    /// assert_eq!(c.labels, [0, 1, 2, 0, 1, 2, 0]);
    /// ```
    pub fn balanced(num_classes: i64, n: usize, guidance: f64) -> Self {
        Self {
            labels: (0..n as i64).map(|i| i % num_classes.max(1)).collect(),
            guidance,
        }
    }

    /// `n` images in blocks of ⌈n / classes.len()⌉ consecutive images per class, in the order of
    /// `classes`: one grid row per class when a row holds one block.
    ///
    /// ```
    /// let c = sample::ClassConditioning::blocks(&[4, 1], 6, 3.0);
    /// assert_eq!(c.labels, [4, 4, 4, 1, 1, 1]);
    /// ```
    ///
    /// # Panics
    /// When `classes` is empty.
    pub fn blocks(classes: &[i64], n: usize, guidance: f64) -> Self {
        assert!(!classes.is_empty(), "blocks of no class");
        let per_class = n.div_ceil(classes.len()).max(1);
        Self {
            labels: (0..n).map(|i| classes[i / per_class]).collect(),
            guidance,
        }
    }

    /// The conditioning of the `len` images from image `start` on (one batch of a request).
    ///
    /// # Panics
    /// When the range reaches past the labels.
    pub fn slice(&self, start: usize, len: usize) -> Self {
        Self {
            labels: self.labels[start..start + len].to_vec(),
            guidance: self.guidance,
        }
    }

    /// Checks the conditioning against a network of `num_classes` classes and a request of
    /// `n_images` images.
    ///
    /// # Errors
    /// [`SampleError::Config`] when the network is not class-conditional, the number of labels
    /// is not `n_images`, a label is outside `0..K`, or the guidance scale is not finite.
    pub fn validate(&self, num_classes: Option<i64>, n_images: usize) -> Result<(), SampleError> {
        let Some(k) = num_classes else {
            return Err(SampleError::Config(
                "class labels for a network that is not class-conditional: sample it without \
                 classes, or train one with --class-cond"
                    .into(),
            ));
        };
        if self.labels.len() != n_images {
            return Err(SampleError::Config(format!(
                "{} class labels for {n_images} images: give one label per image",
                self.labels.len()
            )));
        }
        if let Some(bad) = self.labels.iter().find(|&&l| !(0..k).contains(&l)) {
            return Err(SampleError::Config(format!(
                "class {bad} is out of range: the network has {k} classes, 0 to {}",
                k - 1
            )));
        }
        if !self.guidance.is_finite() {
            return Err(SampleError::Config(format!(
                "guidance = {} is invalid: it must be a finite number (1 is plain conditional sampling)",
                self.guidance
            )));
        }
        Ok(())
    }
}

/// ε̃ = ε_u + W (ε_c − ε_u), diffusers' classifier-free guidance (see the module docs).
///
/// # Shapes
/// `cond`, `uncond`: the network's outputs, of one shape; returns that shape.
pub fn guide(cond: &Tensor, uncond: &Tensor, scale: f64) -> Tensor {
    uncond + (cond - uncond) * scale
}

/// The guided output of `model` at (`xs`, `t`) for the classes `class_labels`, in f32: at
/// `scale = 1` the conditional output alone; otherwise one forward pass over
/// `cat([xs, xs])` with `cat([class_labels, null labels])`, split and combined by [`guide`].
///
/// # Shapes
/// `xs`: `[N, C, H, W]`; `t`, `class_labels`: `[N]` int64 on `xs`'s device. Returns
/// `[N, C, H, W]` f32, or `[N, 2C, H, W]` for a network that learns its variance, whose v_Σ
/// channels are the conditional pass's, unguided.
///
/// # Panics
/// When the network is not class-conditional (a programming error: [`ClassConditioning::validate`]
/// checks user input).
pub fn guided_forward(
    model: &dyn Denoiser,
    xs: &Tensor,
    t: &Tensor,
    class_labels: &Tensor,
    scale: f64,
    autocast: Option<tch::Kind>,
) -> Tensor {
    let null = model
        .num_classes()
        .expect("guidance needs a class-conditional network");
    if scale == 1.0 {
        return model::forward_cond(model, xs, t, Some(class_labels), false, autocast);
    }
    let n = xs.size()[0];
    // One per image (a single value stands for the whole batch), then twice.
    let twice = |values: &Tensor| {
        let values = values.reshape([-1]).expand([n], false);
        Tensor::cat(&[&values, &values], 0)
    };
    let labels = twice(class_labels);
    let _ = labels.narrow(0, n, n).fill_(null);
    let both = model::forward_cond(
        model,
        &Tensor::cat(&[xs, xs], 0),
        &twice(t),
        Some(&labels),
        false,
        autocast,
    );
    let (cond, uncond) = (both.narrow(0, 0, n), both.narrow(0, n, n));
    let c = xs.size()[1];
    if both.size()[1] == 2 * c {
        // A network that learns its variance: only the prediction is guided; v_Σ is the
        // conditional pass's, as GLIDE's sampler keeps it (extrapolating it could leave the
        // range [β̃, β] that Eq. 15 interpolates in).
        let guided = guide(&cond.narrow(1, 0, c), &uncond.narrow(1, 0, c), scale);
        return Tensor::cat(&[guided, cond.narrow(1, c, c)], 1);
    }
    guide(&cond, &uncond, scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    /// Two classes (null label 2) and a learned variance: the prediction (y + 1) x, then
    /// v_Σ = 0.3 y − 0.5.
    #[derive(Debug)]
    struct LearnedVariance;

    impl Denoiser for LearnedVariance {
        fn forward_t(&self, xs: &Tensor, timesteps: &Tensor, train: bool) -> Tensor {
            self.forward_cond(xs, timesteps, None, train)
        }

        fn forward_cond(
            &self,
            xs: &Tensor,
            _timesteps: &Tensor,
            class_labels: Option<&Tensor>,
            _train: bool,
        ) -> Tensor {
            let n = xs.size()[0];
            let y = class_labels
                .expect("labels")
                .to_kind(Kind::Float)
                .view([n, 1, 1, 1]);
            Tensor::cat(&[xs * (&y + 1.0), xs.zeros_like() + &y * 0.3 - 0.5], 1)
        }

        fn num_classes(&self) -> Option<i64> {
            Some(2)
        }
    }

    #[test]
    fn guidance_leaves_a_learned_variance_unguided() {
        let cpu = (Kind::Float, Device::Cpu);
        let xs = Tensor::ones([2, 1, 2, 2], cpu);
        let t = Tensor::from_slice(&[3i64, 3]);
        let labels = Tensor::from_slice(&[0i64, 1]);
        let out = guided_forward(&LearnedVariance, &xs, &t, &labels, 3.0, None);
        assert_eq!(out.size(), [2, 2, 2, 2]);
        // Prediction: ε_u + 3 (ε_c − ε_u) with ε_u = 3 (the null label 2), ε_c = y + 1.
        let eps = Vec::<f32>::try_from(out.narrow(1, 0, 1).reshape([-1])).unwrap();
        assert_eq!(eps, [-3.0, -3.0, -3.0, -3.0, 0.0, 0.0, 0.0, 0.0]);
        // v_Σ: the conditional pass's, 0.3 y − 0.5.
        let v = Vec::<f32>::try_from(out.narrow(1, 1, 1).reshape([-1])).unwrap();
        for (got, y) in v.iter().zip([0.0f32, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]) {
            assert!((got - (0.3 * y - 0.5)).abs() < 1e-6, "{v:?}");
        }
    }
}
