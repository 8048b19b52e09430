//! Denoising networks ε_θ(x_t, t) on libtorch (tch).
//!
//! - [`SimpleUnet`]: the seed notebook's small U-Net (BatchNorm, ReLU, 4×4 stride-2 convs), with
//!   its CIFAR-10 preset at 3,482,231 parameters.
//! - [`UNet`]: the DDPM paper's U-Net (Ho et al. 2020, App. B), 35,746,307 parameters at 32×32×3,
//!   weight-compatible with diffusers' `UNet2DModel` in both directions.
//! - [`ModelConfig`]: either one's configuration, as JSON (`{"arch": "simple", ...}`), and
//!   [`ModelConfig::build`], which validates it and returns a `Box<dyn` [`Denoiser`]`>`.
//! - [`load_safetensors`] / [`save_safetensors`]: weights on disk, checked key by key.
//! - [`set_memory_format`]: channels-last kernels, faster on CPU and CUDA.
//! - [`Precision`]: f32, bf16 autocast on CUDA ([`autocast_bf16`]) or fp16 autocast
//!   ([`autocast_to`]); [`forward`] and
//!   [`forward_cond`] run a network at it and return f32, as losses and samplers compute.
//! - [`Prediction`]: what a network predicts (ε, x_0 or v), which the training objective and the
//!   samplers both read.
//!
//! Both networks take `[N, C, H, W]` images and `[N]` integer timesteps (`t = 0` is the paper's
//! `t = 1`) and return a tensor of the image's shape and kind.
//!
//! # Class conditioning
//! With `num_classes = Some(K)` in its configuration, either network also takes `[N]` class
//! labels ([`Denoiser::forward_cond`]): a learned embedding of `K + 1` rows, `class_embedding`,
//! is added to the time embedding after the time MLP, as diffusers' `UNet2DModel(num_class_embeds
//! = K + 1)` does. Labels `0..K` are the classes; label `K` is the *null label*, "no class", that
//! classifier-free guidance trains with (label dropout) and samples the unconditional half with
//! (the convention of DiT's `LabelEmbedding`, whose extra last row is the null class). Without
//! labels a class-conditional network sees the null label. A network built without
//! `num_classes` has no such embedding, no extra weights and takes no labels.
//!
//! # Speed
//! `cargo xtask bench` times forward and training steps of both networks against PyTorch eager
//! on the same libtorch, alternating step by step, and writes the ratios to
//! `docs/results/`; `crates/train/benches/unet.rs` times both memory formats with criterion. Each
//! network is built in the layout it measured fastest in ([`MemoryFormat`]).

mod checkpoint;
mod embedding;
mod error;
mod init;
mod memory_format;
mod precision;
mod prediction;
mod simple;
mod unet;
mod weights;

pub use embedding::timestep_embedding;
pub use error::{ModelError, ShapeMismatch, WeightMismatch};
pub use memory_format::{is_channels_last, set_memory_format, to_memory_format, MemoryFormat};
pub use precision::{
    autocast_bf16, autocast_to, check_autocast, cuda_autocast_kind, forward, forward_cond,
    forward_train, Precision,
};
pub use prediction::{Prediction, VarianceOutput};
pub use simple::{keras_same_padding, SimpleUnet, SimpleUnetConfig};
pub use unet::{UNet, UNetConfig};
pub use weights::{
    check_finite, check_finite_named, first_non_finite, load_named_tensors, load_safetensors,
    load_safetensors_renamed, parameter_count, parameter_table, parameters, save_named_safetensors,
    save_safetensors, ParameterInfo,
};

use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;
use torch_ext::Generator;

/// ε_θ(x_t, t): a network that predicts the noise in a batch of images.
pub trait Denoiser: std::fmt::Debug + Send {
    /// Predicts the noise in `xs` at timesteps `timesteps`.
    ///
    /// `train` selects training behaviour: BatchNorm uses (and updates) batch statistics and
    /// dropout is active; with `train = false` the output is deterministic.
    ///
    /// # Shapes
    /// `xs`: `[N, C, H, W]` (f32, or bf16 with a bf16 var store); `timesteps`: `[N]` integers
    /// (`Kind::Int64`), or one timestep for the whole batch. Returns `[N, C_out, H, W]` of `xs`'s
    /// kind.
    ///
    /// # Panics
    /// On shapes that do not fit the network (a programming error, not a user input).
    fn forward_t(&self, xs: &Tensor, timesteps: &Tensor, train: bool) -> Tensor;

    /// Predicts the noise in `xs` at `timesteps` for the classes `class_labels`: as
    /// [`Denoiser::forward_t`], which is this with `None`. Labels are `0..K` for the `K` classes
    /// of [`Denoiser::num_classes`] and `K` for the null label ("no class"); `None` means the null
    /// label for every image.
    ///
    /// # Shapes
    /// As [`Denoiser::forward_t`]; `class_labels`: `[N]` (or one label for the whole batch)
    /// `Kind::Int64` on the network's device.
    ///
    /// # Panics
    /// With labels, on a network that is not class-conditional, or on labels outside `0..=K` (a
    /// programming error: callers check user input against [`Denoiser::num_classes`]).
    fn forward_cond(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        assert!(
            class_labels.is_none(),
            "class labels given to a network that is not class-conditional"
        );
        self.forward_t(xs, timesteps, train)
    }

    /// The number of classes `K` of a class-conditional network (its null label is `K`), or
    /// `None` for an unconditional one.
    fn num_classes(&self) -> Option<i64> {
        None
    }

    /// A training-mode forward pass ([`Denoiser::forward_cond`] with `train = true`) whose
    /// dropout masks come from `dropout`, a generator the caller owns (on the network's device),
    /// instead of libtorch's global one: a run reseeds it per step, so its masks are a function
    /// of the run's seed and step, whatever else the process draws. Networks without dropout
    /// ignore it. Evaluation and sampling use [`Denoiser::forward_cond`] and need none.
    ///
    /// # Shapes
    /// As [`Denoiser::forward_cond`].
    fn forward_train(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        dropout: &mut Generator,
    ) -> Tensor {
        let _ = dropout;
        self.forward_cond(xs, timesteps, class_labels, true)
    }
}

/// The two networks' configurations, tagged by `arch` in JSON:
/// `{"arch": "simple", "in_channels": 3, ...}` or `{"arch": "ddpm", "channels": 128, ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "arch", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// The seed notebook's [`SimpleUnet`].
    Simple(SimpleUnetConfig),
    /// The DDPM paper's [`UNet`].
    Ddpm(UNetConfig),
}

impl ModelConfig {
    /// Validates the configuration and creates the network's variables under `vs`, initialised
    /// from a CPU generator seeded with 0: the same weights every time, meant for networks whose
    /// weights are loaded next. A run initialises its own with [`Self::build_with`].
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] naming the offending field.
    pub fn build(&self, vs: &tch::nn::Path) -> Result<Box<dyn Denoiser>, ModelError> {
        self.build_with(vs, &mut Generator::cpu(0))
    }

    /// Validates the configuration and creates the network's variables under `vs`, drawing the
    /// random initial weights from `gen` in construction order (libtorch's global generator is
    /// not used). A CPU generator gives the same initial weights on every device; the draws are
    /// copied to the var store's device.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] naming the offending field.
    pub fn build_with(
        &self,
        vs: &tch::nn::Path,
        gen: &mut Generator,
    ) -> Result<Box<dyn Denoiser>, ModelError> {
        Ok(match self {
            Self::Simple(config) => Box::new(config.build_with(vs, gen)?),
            Self::Ddpm(config) => Box::new(config.build_with(vs, gen)?),
        })
    }

    /// Whether the network draws random numbers in training mode (dropout), from the generator
    /// given to [`Denoiser::forward_train`].
    pub fn uses_dropout(&self) -> bool {
        match self {
            Self::Simple(_) => false,
            Self::Ddpm(config) => config.dropout > 0.0,
        }
    }

    /// Whether the network checkpoints its blocks' activations in training passes
    /// (`gradient_checkpointing`).
    pub fn gradient_checkpointing(&self) -> bool {
        match self {
            Self::Simple(config) => config.gradient_checkpointing,
            Self::Ddpm(config) => config.gradient_checkpointing,
        }
    }

    /// Turns activation checkpointing on or off, as `ddpm train --gradient-checkpointing` does.
    pub fn set_gradient_checkpointing(&mut self, on: bool) {
        match self {
            Self::Simple(config) => config.gradient_checkpointing = on,
            Self::Ddpm(config) => config.gradient_checkpointing = on,
        }
    }

    /// Checks the configuration without building anything.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] naming the offending field.
    pub fn validate(&self) -> Result<(), ModelError> {
        match self {
            Self::Simple(config) => config.validate(),
            Self::Ddpm(config) => config.validate(),
        }
    }

    /// The `arch` tag: `"simple"` or `"ddpm"`.
    pub fn arch(&self) -> &'static str {
        match self {
            Self::Simple(_) => "simple",
            Self::Ddpm(_) => "ddpm",
        }
    }

    /// The number of classes of a class-conditional network (its null label is this number), or
    /// `None` for an unconditional one.
    pub fn num_classes(&self) -> Option<i64> {
        match self {
            Self::Simple(config) => config.num_classes,
            Self::Ddpm(config) => config.num_classes,
        }
    }

    /// Makes the network class-conditional with `num_classes` classes (or unconditional with
    /// `None`), as `ddpm train --class-cond` does once the dataset's classes are known.
    pub fn set_num_classes(&mut self, num_classes: Option<i64>) {
        match self {
            Self::Simple(config) => config.num_classes = num_classes,
            Self::Ddpm(config) => config.num_classes = num_classes,
        }
    }

    /// The memory format the network samples fastest in on `device`
    /// ([`UNetConfig::inference_memory_format`]; the notebook's network keeps its training
    /// preference, [`SimpleUnetConfig::preferred_memory_format`]). Loaders of weights for
    /// sampling lay the kernels out in it with [`set_memory_format`].
    pub fn inference_memory_format(&self, device: tch::Device) -> MemoryFormat {
        match self {
            Self::Simple(config) => config.preferred_memory_format(device),
            Self::Ddpm(config) => config.inference_memory_format(device),
        }
    }

    /// Channels of the images the network takes.
    pub fn in_channels(&self) -> i64 {
        match self {
            Self::Simple(config) => config.in_channels,
            Self::Ddpm(config) => config.in_channels,
        }
    }

    /// Channels of the noise the network predicts.
    pub fn out_channels(&self) -> i64 {
        match self {
            Self::Simple(config) => config.out_channels,
            Self::Ddpm(config) => config.out_channels,
        }
    }

    /// Height and width of the images the network takes.
    pub fn image_size(&self) -> i64 {
        match self {
            Self::Simple(config) => config.image_size,
            Self::Ddpm(config) => config.image_size,
        }
    }

    /// Parses a configuration from JSON text: a tagged [`ModelConfig`], or a diffusers
    /// `UNet2DModel` `config.json` (recognised by its `_class_name`).
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] when the JSON does not describe a valid configuration.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|err| error::invalid("model", format!("not valid JSON: {err}")))?;
        let config = if value.get("_class_name").is_some() {
            Self::Ddpm(UNetConfig::from_diffusers_config(&value)?)
        } else {
            serde_json::from_value(value).map_err(|err| error::invalid("model", err.to_string()))?
        };
        config.validate()?;
        Ok(config)
    }

    /// Reads a configuration file (see [`Self::from_json`]).
    ///
    /// # Errors
    /// [`ModelError::ConfigFile`] naming the file.
    pub fn from_json_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|err| ModelError::ConfigFile {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })?;
        Self::from_json(&text).map_err(|err| ModelError::ConfigFile {
            path: path.to_path_buf(),
            reason: err.to_string(),
        })
    }

    /// The configuration as pretty-printed JSON, which [`Self::from_json`] reads back.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("configs serialise")
    }
}

/// One timestep per sample: `[N]` as given, or a single timestep repeated `n` times.
fn batch_timesteps(timesteps: &Tensor, n: i64) -> Tensor {
    per_sample(timesteps, n, "timesteps")
}

/// One value per sample: `[N]` as given, or a single value repeated `n` times.
fn per_sample(values: &Tensor, n: i64, what: &str) -> Tensor {
    match values.size().as_slice() {
        [len] if *len == n => values.shallow_clone(),
        [] | [1] => values.reshape([1]).expand([n], false),
        shape => panic!("{what} must have shape [{n}] or [1], got {shape:?}"),
    }
}

/// The optional class embedding of both networks: `K + 1` rows of the time embedding's width,
/// under the key `class_embedding.weight` (diffusers' name), initialised N(0, 1) as PyTorch's
/// `nn.Embedding` is.
#[derive(Debug)]
struct ClassEmbedding {
    table: Tensor,
    num_classes: i64,
}

impl ClassEmbedding {
    /// `Some` when the configuration is class-conditional. Drawn after every other layer the
    /// network makes before it, so that the initial weights of unconditional networks are those
    /// they always had.
    fn new(
        vs: &tch::nn::Path,
        num_classes: Option<i64>,
        dim: i64,
        gen: &mut Generator,
    ) -> Option<Self> {
        let num_classes = num_classes?;
        let table = (vs / "class_embedding").var(
            "weight",
            &[num_classes + 1, dim],
            tch::nn::Init::Const(0.0),
        );
        let mut draws = Tensor::empty([num_classes + 1, dim], (tch::Kind::Float, gen.device()));
        gen.normal_(&mut draws, 0.0, 1.0)
            .expect("normal draws into a fresh f32 tensor of the generator's device");
        tch::no_grad(|| table.shallow_clone().copy_(&draws));
        Some(Self { table, num_classes })
    }

    /// The embedding of each sample's label (the null label without labels), `[N, dim]` in the
    /// table's kind.
    fn forward(&self, class_labels: Option<&Tensor>, n: i64) -> Tensor {
        let labels = match class_labels {
            Some(labels) => per_sample(labels, n, "class labels"),
            None => Tensor::full(
                [n],
                self.num_classes,
                (tch::Kind::Int64, self.table.device()),
            ),
        };
        Tensor::embedding(&self.table, &labels, -1, false, false)
    }
}

/// `emb` plus the class embedding of each sample's label, for a class-conditional network;
/// `emb` itself otherwise, which must then get no labels (`network` names it in the panic).
fn add_class_embedding(
    class_embedding: Option<&ClassEmbedding>,
    emb: Tensor,
    class_labels: Option<&Tensor>,
    n: i64,
    network: &str,
) -> Tensor {
    match class_embedding {
        Some(embedding) => emb + embedding.forward(class_labels, n),
        None => {
            assert!(
                class_labels.is_none(),
                "class labels given to a {network} that is not class-conditional"
            );
            emb
        }
    }
}

/// Checks a `num_classes` setting.
fn validate_num_classes(arch: &'static str, num_classes: Option<i64>) -> Result<(), ModelError> {
    match num_classes {
        Some(k) if k < 1 => Err(error::invalid(
            arch,
            format!("num_classes {k} is invalid: a class-conditional network needs at least 1 class (or null for none)"),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::testing::wake_up;

    #[test]
    fn configs_round_trip_through_tagged_json() {
        for config in [
            ModelConfig::Simple(SimpleUnetConfig::seed_cifar10()),
            ModelConfig::Ddpm(UNetConfig::ho2020_cifar10()),
        ] {
            let json = config.to_json();
            assert!(
                json.contains(&format!("\"arch\": \"{}\"", config.arch())),
                "{json}"
            );
            assert_eq!(ModelConfig::from_json(&json).unwrap(), config);
        }
    }

    #[test]
    fn unknown_fields_and_invalid_values_are_rejected() {
        let mut value =
            serde_json::to_value(ModelConfig::Simple(SimpleUnetConfig::seed_cifar10())).unwrap();
        value["dropout"] = serde_json::json!(0.1);
        let err = ModelConfig::from_json(&value.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown field `dropout`"), "{err}");
        let mut value =
            serde_json::to_value(ModelConfig::Ddpm(UNetConfig::ho2020_cifar10())).unwrap();
        value["image_size"] = serde_json::json!(30);
        let err = ModelConfig::from_json(&value.to_string())
            .unwrap_err()
            .to_string();
        assert!(err.contains("image_size 30"), "{err}");
    }

    #[test]
    fn a_diffusers_config_json_is_recognised() {
        let text = UNetConfig::ho2020_cifar10()
            .to_diffusers_config()
            .to_string();
        assert_eq!(
            ModelConfig::from_json(&text).unwrap(),
            ModelConfig::Ddpm(UNetConfig::ho2020_cifar10())
        );
    }

    #[test]
    fn one_timestep_is_broadcast_over_the_batch() {
        let t = batch_timesteps(&Tensor::from_slice(&[7i64]), 3);
        assert_eq!(Vec::<i64>::try_from(&t).unwrap(), [7, 7, 7]);
        let t = batch_timesteps(&Tensor::from_slice(&[1i64, 2, 3]), 3);
        assert_eq!(Vec::<i64>::try_from(&t).unwrap(), [1, 2, 3]);
    }

    #[test]
    fn bf16_var_stores_take_and_return_bf16_images() {
        for config in [
            ModelConfig::Simple(SimpleUnetConfig::fashion_mnist()),
            ModelConfig::Ddpm(UNetConfig {
                in_channels: 1,
                out_channels: 1,
                image_size: 8,
                channels: 8,
                channel_mult: vec![1, 2],
                attention_resolutions: vec![4],
                norm_num_groups: 4,
                ..UNetConfig::ho2020_cifar10()
            }),
        ] {
            let mut vs = tch::nn::VarStore::new(tch::Device::Cpu);
            let net = config.build(&vs.root()).unwrap();
            vs.bfloat16();
            let size = config.image_size();
            let xs = Tensor::randn([2, 1, size, size], (tch::Kind::BFloat16, tch::Device::Cpu));
            let out = net.forward_t(&xs, &Tensor::from_slice(&[3i64, 4]), true);
            assert_eq!(out.kind(), tch::Kind::BFloat16, "{}", config.arch());
            assert_eq!(out.size(), xs.size());
        }
    }

    /// Both networks, tiny, grayscale 8×8, with `num_classes`.
    fn tiny_configs(num_classes: Option<i64>) -> [ModelConfig; 2] {
        [
            ModelConfig::Simple(SimpleUnetConfig {
                in_channels: 1,
                out_channels: 1,
                image_size: 8,
                down_channels: vec![8, 16],
                up_channels: vec![16, 8],
                time_emb_dim: 16,
                num_classes,
                ..SimpleUnetConfig::seed_cifar10()
            }),
            ModelConfig::Ddpm(UNetConfig {
                in_channels: 1,
                out_channels: 1,
                image_size: 8,
                channels: 8,
                channel_mult: vec![1, 2],
                attention_resolutions: vec![4],
                norm_num_groups: 4,
                dropout: 0.0,
                num_classes,
                ..UNetConfig::ho2020_cifar10()
            }),
        ]
    }

    #[test]
    fn a_class_conditional_network_adds_one_embedding_to_the_unconditional_weights() {
        for (plain, cond) in tiny_configs(None).into_iter().zip(tiny_configs(Some(3))) {
            let arch = plain.arch();
            let (vs_plain, vs_cond) = (
                tch::nn::VarStore::new(tch::Device::Cpu),
                tch::nn::VarStore::new(tch::Device::Cpu),
            );
            let net_plain = plain
                .build_with(&vs_plain.root(), &mut Generator::cpu(5))
                .unwrap();
            let net_cond = cond
                .build_with(&vs_cond.root(), &mut Generator::cpu(5))
                .unwrap();
            assert_eq!(
                (net_plain.num_classes(), net_cond.num_classes()),
                (None, Some(3))
            );
            let (a, b) = (vs_plain.variables(), vs_cond.variables());
            assert!(!a.contains_key("class_embedding.weight"), "{arch}");
            // Exactly one more tensor, of K + 1 rows (the null label last) by the time
            // embedding's width; every other weight is the unconditional network's.
            assert_eq!(b.len(), a.len() + 1, "{arch}");
            let width = match &cond {
                ModelConfig::Simple(c) => c.time_emb_dim,
                ModelConfig::Ddpm(c) => c.time_embed_dim(),
            };
            assert_eq!(b["class_embedding.weight"].size(), [4, width], "{arch}");
            for (name, tensor) in &a {
                assert!(tensor.equal(&b[name]), "{arch}: {name}");
            }
        }
    }

    #[test]
    fn labels_change_the_output_and_no_labels_mean_the_null_label() {
        for config in tiny_configs(Some(3)) {
            let arch = config.arch();
            let vs = tch::nn::VarStore::new(tch::Device::Cpu);
            let net = config.build(&vs.root()).unwrap();
            wake_up(&vs);
            let xs = Tensor::randn([4, 1, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
            let t = Tensor::from_slice(&[3i64, 10, 20, 40]);
            let run = |labels: Option<&[i64]>| {
                let labels = labels.map(Tensor::from_slice);
                tch::no_grad(|| net.forward_cond(&xs, &t, labels.as_ref(), false))
            };
            let null = run(Some(&[3, 3, 3, 3]));
            assert!(run(None).equal(&null), "{arch}: None is the null label");
            assert!(net.forward_t(&xs, &t, false).equal(&null), "{arch}");
            let a = run(Some(&[0, 1, 2, 0]));
            let b = run(Some(&[1, 1, 0, 0]));
            // Images whose labels differ differ; those whose labels agree do not.
            for (i, differs) in [true, false, true, false].into_iter().enumerate() {
                let i = i as i64;
                assert_eq!(!a.get(i).equal(&b.get(i)), differs, "{arch}: image {i}");
            }
            // One label for the whole batch is broadcast.
            let one = run(Some(&[2]));
            assert!(one.equal(&run(Some(&[2, 2, 2, 2]))), "{arch}");
        }
    }

    #[test]
    #[should_panic(expected = "not class-conditional")]
    fn labels_for_an_unconditional_network_are_a_programming_error() {
        let [config, _] = tiny_configs(None);
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = config.build(&vs.root()).unwrap();
        let xs = Tensor::zeros([1, 1, 8, 8], (tch::Kind::Float, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[0i64]);
        let _ = net.forward_cond(&xs, &Tensor::from_slice(&[1i64]), Some(&labels), false);
    }

    #[test]
    fn num_classes_is_optional_in_json_and_checked() {
        // Configurations saved before class conditioning have no `num_classes`.
        let mut value =
            serde_json::to_value(ModelConfig::Simple(SimpleUnetConfig::seed_cifar10())).unwrap();
        assert_eq!(value["num_classes"], serde_json::Value::Null);
        value.as_object_mut().unwrap().remove("num_classes");
        let old = ModelConfig::from_json(&value.to_string()).unwrap();
        assert_eq!(old.num_classes(), None);
        for config in tiny_configs(Some(10)) {
            assert_eq!(ModelConfig::from_json(&config.to_json()).unwrap(), config);
        }
        for mut config in tiny_configs(Some(0)) {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains("num_classes 0"), "{err}");
            config.set_num_classes(Some(2));
            config.validate().unwrap();
        }
    }

    #[test]
    fn build_returns_a_working_denoiser_and_reports_sizes() {
        let config = ModelConfig::Simple(SimpleUnetConfig::fashion_mnist());
        assert_eq!((config.in_channels(), config.image_size()), (1, 28));
        let vs = tch::nn::VarStore::new(tch::Device::Cpu);
        let net = config.build(&vs.root()).unwrap();
        let xs = Tensor::zeros([2, 1, 28, 28], (tch::Kind::Float, tch::Device::Cpu));
        assert_eq!(
            net.forward_t(&xs, &Tensor::from_slice(&[5i64]), false)
                .size(),
            [2, 1, 28, 28]
        );
    }
}
