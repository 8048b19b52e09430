//! The DDPM paper's U-Net (Ho et al. 2020, App. B; the official `unet2d16b2` model), written to
//! diffusers' `UNet2DModel` conventions so that its weights load one to one in both directions.
//!
//! Per level: `layers_per_block` residual blocks (GroupNorm → SiLU → conv, plus a projection of
//! the time embedding, then GroupNorm → SiLU → dropout → conv, with a 1×1 shortcut when the width
//! changes), self-attention after each of them at the configured resolutions, and a stride-2 conv
//! between levels. The middle runs resnet → attention → resnet; the up path mirrors the down path
//! with one more resnet per level, each on `cat([h, skip], channels)`, and nearest ×2 + conv
//! between levels. The time embedding is sinusoidal, then Linear(4·ch) → SiLU → Linear(4·ch);
//! a class-conditional network adds a learned class embedding to it there (diffusers'
//! `class_embedding`, see the crate docs for the null label).
//!
//! diffusers' conventions, all reproduced exactly: `freq_shift` 1 and `flip_sin_to_cos` false (the
//! paper's embedding), `downsample_padding` 0 (pad right and bottom by one, then a 3×3 stride-2
//! conv with no padding: TensorFlow's "same"), one attention head of full width scaled by
//! `1/sqrt(C)`, GroupNorm eps 1e-6, and the state-dict names (`down_blocks.1.attentions.0.to_q.weight`,
//! `mid_block.resnets.1.conv2.bias`, ...). Fresh weights follow the official initialisation: fan-avg
//! uniform variance scaling, zero biases, and a near-zero scale for the last conv of every residual
//! branch, the attention output projection and `conv_out`.

use crate::error::{invalid, ModelError};
use crate::init::{fan_avg_uniform_, ZERO_SCALE};
use crate::memory_format::{convert_in_place, is_channels_last, to_memory_format, MemoryFormat};
use crate::{
    add_class_embedding, batch_timesteps, timestep_embedding, validate_num_classes, ClassEmbedding,
    Denoiser,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tch::nn::{self, Init};
use tch::Tensor;
use torch_ext::Generator;

const ARCH: &str = "ddpm";

/// Hyper-parameters of the paper's [`UNet`], in the paper's terms where it has them and in
/// diffusers' otherwise. [`UNetConfig::to_diffusers_config`] and
/// [`UNetConfig::from_diffusers_config`] translate to and from a diffusers `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Image channels in.
    pub in_channels: i64,
    /// Channels of the predicted noise.
    pub out_channels: i64,
    /// Image height and width (diffusers' `sample_size`); divisible by `2^(levels - 1)`.
    pub image_size: i64,
    /// The base width `ch`; the time embedding is `4 · ch` wide.
    pub channels: i64,
    /// Width of each level as a multiple of `channels` (`ch_mult`).
    pub channel_mult: Vec<i64>,
    /// Residual blocks per down level (`num_res_blocks`); up levels have one more.
    pub layers_per_block: i64,
    /// Resolutions (in pixels) at which resnets are followed by self-attention.
    pub attention_resolutions: Vec<i64>,
    /// Dropout probability inside the residual blocks, active in train mode only.
    pub dropout: f64,
    /// GroupNorm groups; divides every width in the network.
    pub norm_num_groups: i64,
    /// GroupNorm epsilon.
    pub norm_eps: f64,
    /// Width of one attention head; `None` gives one head of the level's full width.
    pub attention_head_dim: Option<i64>,
    /// Shift of the embedding's frequency denominator (`half_dim - freq_shift`).
    pub freq_shift: f64,
    /// Whether the embedding puts the cosines first.
    pub flip_sin_to_cos: bool,
    /// 0: pad right and bottom by one before a 3×3 stride-2 conv (TF "same", the paper); 1: pad
    /// symmetrically by one.
    pub downsample_padding: i64,
    /// Class-conditional with this many classes: a `class_embedding` of `num_classes + 1` rows
    /// (the last is the null label) added to the time embedding; `None` (null in JSON, or absent
    /// in configurations saved before class conditioning existed) for an unconditional network.
    /// diffusers' `num_class_embeds` is `num_classes + 1`.
    #[serde(default)]
    pub num_classes: Option<i64>,
}

impl UNetConfig {
    /// The paper's CIFAR-10 model (Ho et al. 2020, App. B): ch 128, ch_mult (1, 2, 2, 2), 2 resnets
    /// per level, attention at 16×16, dropout 0.1, at 32×32×3 — diffusers'
    /// `google/ddpm-cifar10-32` configuration, 35,746,307 parameters.
    pub fn ho2020_cifar10() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            image_size: 32,
            channels: 128,
            channel_mult: vec![1, 2, 2, 2],
            layers_per_block: 2,
            attention_resolutions: vec![16],
            dropout: 0.1,
            norm_num_groups: 32,
            norm_eps: 1e-6,
            attention_head_dim: None,
            freq_shift: 1.0,
            flip_sin_to_cos: false,
            downsample_padding: 0,
            num_classes: None,
        }
    }

    /// The `fashion-mnist` preset's network: the paper's U-Net at 28×28×1 with widths 16, 32, 64
    /// (`channels` 16, `ch_mult` (1, 2, 4)), one resnet per down level, self-attention at 7×7,
    /// 8 GroupNorm groups and no dropout: 686,769 parameters. On two CPU cores it trains at about
    /// 320 images/s (a third of the notebook's SimpleUnet at the same widths) and learns much
    /// more per image: see `docs/runs/fashion-mnist-preset-ablation/`.
    pub fn fashion_mnist() -> Self {
        Self {
            in_channels: 1,
            out_channels: 1,
            image_size: 28,
            channels: 16,
            channel_mult: vec![1, 2, 4],
            layers_per_block: 1,
            attention_resolutions: vec![7],
            dropout: 0.0,
            norm_num_groups: 8,
            ..Self::ho2020_cifar10()
        }
    }

    /// The width of each level (diffusers' `block_out_channels`).
    pub fn block_out_channels(&self) -> Vec<i64> {
        self.channel_mult
            .iter()
            .map(|m| m * self.channels)
            .collect()
    }

    /// The width of the time embedding MLP, `4 · channels`.
    pub fn time_embed_dim(&self) -> i64 {
        4 * self.channels
    }

    /// The resolution of level `level` (0 is the input's).
    pub fn level_resolution(&self, level: usize) -> i64 {
        self.image_size >> level
    }

    /// Whether the resnets of level `level` are followed by self-attention.
    pub fn has_attention(&self, level: usize) -> bool {
        self.attention_resolutions
            .contains(&self.level_resolution(level))
    }

    /// `(in, out)` widths of the resnets of up level `i` (0 is the deepest), following the skip
    /// stack: the last resnet of each level takes the skip from the level above's down-sampler.
    fn up_resnet_channels(&self, i: usize) -> Vec<(i64, i64)> {
        let reversed: Vec<i64> = self.block_out_channels().into_iter().rev().collect();
        let n = reversed.len();
        let out = reversed[i];
        let prev_out = reversed[i.saturating_sub(1)];
        let skip_last = reversed[(i + 1).min(n - 1)];
        let layers = self.layers_per_block as usize;
        (0..=layers)
            .map(|j| {
                let h = if j == 0 { prev_out } else { out };
                let skip = if j == layers { skip_last } else { out };
                (h + skip, out)
            })
            .collect()
    }

    /// Checks that the configuration describes a network that can be built and run.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] naming the offending field.
    pub fn validate(&self) -> Result<(), ModelError> {
        if self.in_channels < 1 || self.out_channels < 1 {
            return Err(invalid(
                ARCH,
                "in_channels and out_channels must be at least 1",
            ));
        }
        if self.channels < 1
            || self.channel_mult.is_empty()
            || self.channel_mult.iter().any(|&m| m < 1)
        {
            return Err(invalid(ARCH, "channels and every channel_mult entry must be at least 1, with one entry per level"));
        }
        if self.layers_per_block < 1 {
            return Err(invalid(ARCH, "layers_per_block must be at least 1"));
        }
        let levels = self.channel_mult.len();
        let factor = 1i64 << (levels - 1);
        if self.image_size < factor || self.image_size % factor != 0 {
            return Err(invalid(
                ARCH,
                format!(
                    "image_size {} must be a multiple of {factor} for {levels} levels joined by stride-2 convs",
                    self.image_size
                ),
            ));
        }
        let resolutions: Vec<i64> = (0..levels).map(|l| self.level_resolution(l)).collect();
        if let Some(r) = self
            .attention_resolutions
            .iter()
            .find(|r| !resolutions.contains(r))
        {
            return Err(invalid(
                ARCH,
                format!(
                    "attention resolution {r} is none of the levels' resolutions {resolutions:?}"
                ),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(invalid(
                ARCH,
                format!("dropout must lie in [0, 1), got {}", self.dropout),
            ));
        }
        if !(self.norm_eps > 0.0) {
            return Err(invalid(ARCH, "norm_eps must be positive"));
        }
        if !(self.freq_shift >= 0.0 && (self.channels / 2) as f64 > self.freq_shift) {
            return Err(invalid(
                ARCH,
                format!(
                    "freq_shift {} must be at least 0 and below channels / 2 = {}",
                    self.freq_shift,
                    self.channels / 2
                ),
            ));
        }
        validate_num_classes(ARCH, self.num_classes)?;
        if self.downsample_padding != 0 && self.downsample_padding != 1 {
            return Err(invalid(
                ARCH,
                "downsample_padding must be 0 (TF \"same\") or 1",
            ));
        }
        let widths = self.block_out_channels();
        let mut normalized: Vec<i64> = widths.clone();
        normalized.extend(
            (0..levels)
                .flat_map(|i| self.up_resnet_channels(i))
                .map(|(c_in, _)| c_in),
        );
        if self.norm_num_groups < 1 {
            return Err(invalid(ARCH, "norm_num_groups must be at least 1"));
        }
        if let Some(c) = normalized.iter().find(|&&c| c % self.norm_num_groups != 0) {
            return Err(invalid(
                ARCH,
                format!(
                    "norm_num_groups {} does not divide the width {c} of a GroupNorm",
                    self.norm_num_groups
                ),
            ));
        }
        if let Some(head_dim) = self.attention_head_dim {
            let attended = (0..levels)
                .filter(|&l| self.has_attention(l))
                .map(|l| widths[l])
                .chain([widths[levels - 1]]);
            if head_dim < 1 {
                return Err(invalid(ARCH, "attention_head_dim must be at least 1"));
            }
            if let Some(c) = attended.into_iter().find(|c| c % head_dim != 0) {
                return Err(invalid(
                    ARCH,
                    format!(
                        "attention_head_dim {head_dim} does not divide the attention width {c}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Validates the configuration and creates the network's variables under `vs`, with the
    /// kernels in [`Self::preferred_memory_format`] for the var store's device, initialised from
    /// a CPU generator seeded with 0 (for weights that are loaded next; see [`Self::build_with`]).
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] from [`Self::validate`].
    pub fn build(&self, vs: &nn::Path) -> Result<UNet, ModelError> {
        self.build_with(vs, &mut Generator::cpu(0))
    }

    /// As [`Self::build`], with the initial weights drawn from `gen` (see [`crate::ModelConfig::build_with`]).
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] from [`Self::validate`].
    pub fn build_with(&self, vs: &nn::Path, gen: &mut Generator) -> Result<UNet, ModelError> {
        self.validate()?;
        let net = UNet::new(vs, self.clone(), gen);
        let format = self.preferred_memory_format(vs.device());
        for kernel in net.conv_kernels() {
            convert_in_place(kernel, format);
        }
        Ok(net)
    }

    /// The memory format this network trains fastest in on `device`: NCHW.
    ///
    /// On the CPU (batch 16, 32×32×3, 2 threads) a channels-last training step takes about 1.3×
    /// the NCHW time, here and in PyTorch, and inference is barely faster; on CUDA it has not been
    /// measured (`DDPM_BENCH_DEVICE=cuda cargo bench -p model` compares both).
    pub fn preferred_memory_format(&self, _device: tch::Device) -> MemoryFormat {
        MemoryFormat::Contiguous
    }

    /// The equivalent diffusers `UNet2DModel` `config.json`: `UNet2DModel.from_config(...)` on it
    /// builds a model that loads this network's weights (see [`crate::save_safetensors`]). A
    /// class-conditional network has `num_class_embeds = num_classes + 1` (its last embedding is
    /// the null label) and `class_embed_type` null.
    pub fn to_diffusers_config(&self) -> Value {
        let levels = self.channel_mult.len();
        let down: Vec<&str> = (0..levels)
            .map(|l| {
                if self.has_attention(l) {
                    "AttnDownBlock2D"
                } else {
                    "DownBlock2D"
                }
            })
            .collect();
        let up: Vec<&str> = (0..levels)
            .rev()
            .map(|l| {
                if self.has_attention(l) {
                    "AttnUpBlock2D"
                } else {
                    "UpBlock2D"
                }
            })
            .collect();
        let mut config = json!({
            "_class_name": "UNet2DModel",
            "sample_size": self.image_size,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "center_input_sample": false,
            "time_embedding_type": "positional",
            "freq_shift": self.freq_shift,
            "flip_sin_to_cos": self.flip_sin_to_cos,
            "down_block_types": down,
            "mid_block_type": "UNetMidBlock2D",
            "up_block_types": up,
            "block_out_channels": self.block_out_channels(),
            "layers_per_block": self.layers_per_block,
            "mid_block_scale_factor": 1,
            "downsample_padding": self.downsample_padding,
            "downsample_type": "conv",
            "upsample_type": "conv",
            "dropout": self.dropout,
            "act_fn": "silu",
            "attention_head_dim": self.attention_head_dim,
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": self.norm_eps,
            "resnet_time_scale_shift": "default",
            "add_attention": true,
        });
        if let Some(k) = self.num_classes {
            config["class_embed_type"] = Value::Null;
            config["num_class_embeds"] = json!(k + 1);
        }
        config
    }

    /// The modern name of a diffusers `UNet2DModel` state-dict key. Checkpoints saved before
    /// diffusers 0.15 (the `google/ddpm-*` repositories among them) name the attention
    /// projections `query`, `key`, `value` and `proj_attn`; diffusers renames them on load to
    /// `to_q`, `to_k`, `to_v` and `to_out.0` (`_convert_deprecated_attention_blocks`), and so
    /// does this. Other keys come back unchanged.
    ///
    /// ```
    /// use model::UNetConfig;
    ///
    /// let key = UNetConfig::modern_diffusers_key("mid_block.attentions.0.proj_attn.weight");
    /// assert_eq!(key, "mid_block.attentions.0.to_out.0.weight");
    /// assert_eq!(UNetConfig::modern_diffusers_key("conv_in.bias"), "conv_in.bias");
    /// ```
    pub fn modern_diffusers_key(name: &str) -> String {
        let parts: Vec<&str> = name.split('.').collect();
        // `…attentions.<i>.<old>.<weight|bias>`: only attention blocks' projections are renamed.
        if let [.., attentions, idx, old, _param] = parts.as_slice() {
            if *attentions == "attentions" && idx.parse::<usize>().is_ok() {
                let new = match *old {
                    "query" => "to_q",
                    "key" => "to_k",
                    "value" => "to_v",
                    "proj_attn" => "to_out.0",
                    _ => return name.to_string(),
                };
                let n = parts.len();
                let mut out: Vec<&str> = parts[..n - 2].to_vec();
                out.push(new);
                out.push(parts[n - 1]);
                return out.join(".");
            }
        }
        name.to_string()
    }

    /// Reads a diffusers `UNet2DModel` `config.json` (e.g. `google/ddpm-cifar10-32`'s), with
    /// diffusers' defaults for absent keys.
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] when the file uses a feature this network does not have (other
    /// block types, Fourier or learned time embeddings, class embeddings other than a table,
    /// scale-shift norms, ...) or when the result fails [`Self::validate`].
    ///
    /// `num_class_embeds = N` reads as `num_classes = N − 1`: the last embedding is taken as the
    /// null label of classifier-free guidance (this toolkit's and DiT's convention), so a model
    /// trained by diffusers' scripts without one has its last class read as the null label.
    pub fn from_diffusers_config(config: &Value) -> Result<Self, ModelError> {
        let obj = config
            .as_object()
            .ok_or_else(|| invalid(ARCH, "a diffusers config must be a JSON object"))?;
        let get = |key: &str| obj.get(key).filter(|v| !v.is_null());
        let int = |key: &str, default: i64| -> Result<i64, ModelError> {
            match get(key) {
                None => Ok(default),
                Some(v) => v.as_i64().ok_or_else(|| {
                    invalid(ARCH, format!("diffusers key `{key}` must be an integer"))
                }),
            }
        };
        let float = |key: &str, default: f64| -> Result<f64, ModelError> {
            match get(key) {
                None => Ok(default),
                Some(v) => v.as_f64().ok_or_else(|| {
                    invalid(ARCH, format!("diffusers key `{key}` must be a number"))
                }),
            }
        };
        let string = |key: &str| get(key).and_then(Value::as_str);
        let strings = |key: &str| -> Result<Option<Vec<String>>, ModelError> {
            get(key)
                .map(|v| {
                    serde_json::from_value::<Vec<String>>(v.clone()).map_err(|_| {
                        invalid(
                            ARCH,
                            format!("diffusers key `{key}` must be a list of strings"),
                        )
                    })
                })
                .transpose()
        };
        if let Some(class) = string("_class_name") {
            if class != "UNet2DModel" {
                return Err(invalid(
                    ARCH,
                    format!("a {class} config is not a UNet2DModel config"),
                ));
            }
        }
        // Features this network does not implement must be at their off/default setting.
        let expect = |key: &str, wanted: &str, default: &str| -> Result<(), ModelError> {
            let found = match get(key) {
                None => default.to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            };
            if found == wanted {
                Ok(())
            } else {
                Err(invalid(
                    ARCH,
                    format!("diffusers `{key}` = {found} is not supported (only {wanted})"),
                ))
            }
        };
        expect("time_embedding_type", "positional", "positional")?;
        expect("act_fn", "silu", "silu")?;
        expect("resnet_time_scale_shift", "default", "default")?;
        expect("center_input_sample", "false", "false")?;
        expect("mid_block_type", "UNetMidBlock2D", "UNetMidBlock2D")?;
        expect("downsample_type", "conv", "conv")?;
        expect("upsample_type", "conv", "conv")?;
        expect("add_attention", "true", "true")?;
        expect("class_embed_type", "null", "null")?;
        let num_classes = match get("num_class_embeds") {
            None => None,
            Some(v) => match v.as_i64() {
                Some(n) if n >= 2 => Some(n - 1),
                _ => {
                    return Err(invalid(
                        ARCH,
                        format!(
                            "diffusers `num_class_embeds` = {v} is not supported: it must be an \
                             integer of at least 2 (the classes and, last, the null label)"
                        ),
                    ))
                }
            },
        };
        expect("time_embedding_dim", "null", "null")?;
        expect("attn_norm_num_groups", "null", "null")?;
        if float("mid_block_scale_factor", 1.0)? != 1.0 {
            return Err(invalid(
                ARCH,
                "diffusers `mid_block_scale_factor` other than 1 is not supported",
            ));
        }
        let widths: Vec<i64> = match get("block_out_channels") {
            None => vec![224, 448, 672, 896],
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                invalid(
                    ARCH,
                    "diffusers key `block_out_channels` must be a list of integers",
                )
            })?,
        };
        let channels = *widths
            .first()
            .ok_or_else(|| invalid(ARCH, "block_out_channels is empty"))?;
        if channels < 1 || widths.iter().any(|w| w % channels != 0) {
            return Err(invalid(
                ARCH,
                format!("block_out_channels {widths:?} are not multiples of the first"),
            ));
        }
        let down = strings("down_block_types")?.unwrap_or_else(|| {
            [
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]
            .map(String::from)
            .to_vec()
        });
        let up = strings("up_block_types")?.unwrap_or_else(|| {
            [
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]
            .map(String::from)
            .to_vec()
        });
        if down.len() != widths.len() || up.len() != widths.len() {
            return Err(invalid(
                ARCH,
                "down_block_types, up_block_types and block_out_channels differ in length",
            ));
        }
        let image_size = match get("sample_size") {
            Some(Value::Array(sizes)) if sizes.len() == 2 && sizes[0] == sizes[1] => {
                sizes[0].as_i64()
            }
            Some(v) => v.as_i64(),
            None => None,
        }
        .ok_or_else(|| {
            invalid(
                ARCH,
                "diffusers key `sample_size` must be one integer (square images)",
            )
        })?;
        let mut attention_resolutions = Vec::new();
        for (level, (d, u)) in down.iter().zip(up.iter().rev()).enumerate() {
            let attn = match (d.as_str(), u.as_str()) {
                ("DownBlock2D", "UpBlock2D") => false,
                ("AttnDownBlock2D", "AttnUpBlock2D") => true,
                (d, u) => {
                    return Err(invalid(
                        ARCH,
                        format!(
                            "`down_block_types`[{level}] = {d} with `up_block_types`[{}] = {u} is not supported (DownBlock2D/UpBlock2D or AttnDownBlock2D/AttnUpBlock2D, mirrored)",
                            down.len() - 1 - level
                        ),
                    ))
                }
            };
            if attn {
                attention_resolutions.push(image_size >> level);
            }
        }
        let attention_head_dim = match get("attention_head_dim") {
            None if obj.contains_key("attention_head_dim") => None,
            None => Some(8),
            Some(v) => Some(v.as_i64().ok_or_else(|| {
                invalid(
                    ARCH,
                    "diffusers `attention_head_dim` must be an integer or null",
                )
            })?),
        };
        let config = Self {
            in_channels: int("in_channels", 3)?,
            out_channels: int("out_channels", 3)?,
            image_size,
            channels,
            channel_mult: widths.iter().map(|w| w / channels).collect(),
            layers_per_block: int("layers_per_block", 2)?,
            attention_resolutions,
            dropout: float("dropout", 0.0)?,
            norm_num_groups: int("norm_num_groups", 32)?,
            norm_eps: float("norm_eps", 1e-5)?,
            attention_head_dim,
            freq_shift: float("freq_shift", 0.0)?,
            flip_sin_to_cos: match get("flip_sin_to_cos") {
                None => true,
                Some(v) => v.as_bool().ok_or_else(|| {
                    invalid(ARCH, "diffusers `flip_sin_to_cos` must be a boolean")
                })?,
            },
            downsample_padding: int("downsample_padding", 1)?,
            num_classes,
        };
        config.validate()?;
        Ok(config)
    }
}

/// A convolution with the official DDPM initialisation.
// The layer's shape, its init scale and the generator: nothing here groups naturally.
#[allow(clippy::too_many_arguments)]
fn conv2d(
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

/// A linear layer with the official DDPM initialisation.
fn linear(vs: nn::Path, d_in: i64, d_out: i64, scale: f64, gen: &mut Generator) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: Init::Const(0.0),
        bs_init: Some(Init::Const(0.0)),
        bias: true,
    };
    let linear = nn::linear(vs, d_in, d_out, config);
    fan_avg_uniform_(&linear.ws, scale, gen);
    linear
}

fn group_norm(vs: nn::Path, channels: i64, config: &UNetConfig) -> nn::GroupNorm {
    let gn_config = nn::GroupNormConfig {
        eps: config.norm_eps,
        ..Default::default()
    };
    nn::group_norm(vs, config.norm_num_groups, channels, gn_config)
}

/// diffusers' `ResnetBlock2D` with the default time-embedding mode (added after conv1).
#[derive(Debug)]
struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
    dropout: f64,
}

impl ResnetBlock {
    fn new(vs: nn::Path, c_in: i64, c_out: i64, config: &UNetConfig, gen: &mut Generator) -> Self {
        let temb = config.time_embed_dim();
        Self {
            norm1: group_norm(&vs / "norm1", c_in, config),
            conv1: conv2d(&vs / "conv1", c_in, c_out, 3, 1, 1, 1.0, gen),
            time_emb_proj: linear(&vs / "time_emb_proj", temb, c_out, 1.0, gen),
            norm2: group_norm(&vs / "norm2", c_out, config),
            conv2: conv2d(&vs / "conv2", c_out, c_out, 3, 1, 1, ZERO_SCALE, gen),
            conv_shortcut: (c_in != c_out)
                .then(|| conv2d(&vs / "conv_shortcut", c_in, c_out, 1, 1, 0, 1.0, gen)),
            dropout: config.dropout,
        }
    }

    /// # Shapes
    /// `xs`: `[N, c_in, H, W]`, `temb_act`: SiLU of the time embedding, `[N, 4·ch]` →
    /// `[N, c_out, H, W]`.
    ///
    /// The additions run in place on convolution outputs, which no backward pass needs.
    fn forward(&self, xs: &Tensor, temb_act: &Tensor, train: bool) -> Tensor {
        let mut h = xs.apply(&self.norm1).silu().apply(&self.conv1);
        let _ = h.g_add_(
            &temb_act
                .apply(&self.time_emb_proj)
                .unsqueeze(-1)
                .unsqueeze(-1),
        );
        let mut h = h
            .apply(&self.norm2)
            .silu()
            .dropout(self.dropout, train)
            .apply(&self.conv2);
        let _ = match &self.conv_shortcut {
            Some(conv) => h.g_add_(&xs.apply(conv)),
            None => h.g_add_(xs),
        };
        h
    }
}

/// diffusers' `Attention` as its `AttnDownBlock2D` uses it: GroupNorm, single-matrix q/k/v over
/// the pixels, scaled dot-product attention, output projection, residual.
#[derive(Debug)]
struct AttentionBlock {
    group_norm: nn::GroupNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
}

impl AttentionBlock {
    fn new(vs: nn::Path, channels: i64, config: &UNetConfig, gen: &mut Generator) -> Self {
        let head_dim = config.attention_head_dim.unwrap_or(channels);
        Self {
            group_norm: group_norm(&vs / "group_norm", channels, config),
            to_q: linear(&vs / "to_q", channels, channels, 1.0, gen),
            to_k: linear(&vs / "to_k", channels, channels, 1.0, gen),
            to_v: linear(&vs / "to_v", channels, channels, 1.0, gen),
            to_out: linear(&vs / "to_out" / 0, channels, channels, ZERO_SCALE, gen),
            heads: channels / head_dim,
        }
    }

    /// # Shapes
    /// `xs`: `[N, C, H, W]` → `[N, C, H, W]`.
    fn forward(&self, xs: &Tensor) -> Tensor {
        let (n, c, h, w) = xs.size4().expect("attention takes NCHW input");
        let head_dim = c / self.heads;
        // [N, C, H, W] → [N, HW, C]: free for channels-last input.
        let tokens = xs
            .apply(&self.group_norm)
            .reshape([n, c, h * w])
            .transpose(1, 2);
        let split = |t: Tensor| t.reshape([n, h * w, self.heads, head_dim]).transpose(1, 2);
        let q = split(tokens.apply(&self.to_q));
        let k = split(tokens.apply(&self.to_k));
        let v = split(tokens.apply(&self.to_v));
        let attended = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        );
        let out = attended
            .transpose(1, 2)
            .reshape([n, h * w, c])
            .apply(&self.to_out);
        // In place on the projection's output, which its backward does not need.
        let mut out = out.transpose(1, 2).reshape([n, c, h, w]);
        let _ = out.g_add_(xs);
        out
    }
}

/// One level of the down path.
#[derive(Debug)]
struct DownBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<AttentionBlock>,
    /// The stride-2 conv to the next level; `None` on the deepest level.
    downsampler: Option<nn::Conv2D>,
    downsample_padding: i64,
}

/// One level of the up path.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<AttentionBlock>,
    /// Nearest ×2 then this 3×3 conv; `None` on the top level.
    upsampler: Option<nn::Conv2D>,
}

/// The paper's U-Net, ε_θ(x_t, t), with diffusers' `UNet2DModel` parameter names.
#[derive(Debug)]
pub struct UNet {
    config: UNetConfig,
    conv_in: nn::Conv2D,
    linear_1: nn::Linear,
    linear_2: nn::Linear,
    class_embedding: Option<ClassEmbedding>,
    down_blocks: Vec<DownBlock>,
    up_blocks: Vec<UpBlock>,
    mid_resnets: [ResnetBlock; 2],
    mid_attention: AttentionBlock,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl UNet {
    /// Creates the variables in diffusers' `state_dict` order, so that tables list them alike.
    fn new(vs: &nn::Path, config: UNetConfig, gen: &mut Generator) -> Self {
        let c = &config;
        let widths = c.block_out_channels();
        let levels = widths.len();
        let temb = c.time_embed_dim();
        let conv_in = conv2d(vs / "conv_in", c.in_channels, c.channels, 3, 1, 1, 1.0, gen);
        let linear_1 = linear(
            vs / "time_embedding" / "linear_1",
            c.channels,
            temb,
            1.0,
            gen,
        );
        let linear_2 = linear(vs / "time_embedding" / "linear_2", temb, temb, 1.0, gen);

        let mut down_blocks = Vec::with_capacity(levels);
        let mut c_prev = c.channels;
        for (level, &width) in widths.iter().enumerate() {
            let p = vs / "down_blocks" / level;
            let n_layers = c.layers_per_block as usize;
            // Attention blocks register before resnets in diffusers' AttnDownBlock2D.
            let attentions = if c.has_attention(level) {
                (0..n_layers)
                    .map(|j| AttentionBlock::new(&p / "attentions" / j, width, c, gen))
                    .collect()
            } else {
                Vec::new()
            };
            let resnets = (0..n_layers)
                .map(|j| {
                    ResnetBlock::new(
                        &p / "resnets" / j,
                        if j == 0 { c_prev } else { width },
                        width,
                        c,
                        gen,
                    )
                })
                .collect();
            let padding = c.downsample_padding;
            let downsampler = (level + 1 < levels).then(|| {
                conv2d(
                    &p / "downsamplers" / 0 / "conv",
                    width,
                    width,
                    3,
                    2,
                    padding,
                    1.0,
                    gen,
                )
            });
            down_blocks.push(DownBlock {
                resnets,
                attentions,
                downsampler,
                downsample_padding: padding,
            });
            c_prev = width;
        }

        let mut up_blocks = Vec::with_capacity(levels);
        for i in 0..levels {
            let level = levels - 1 - i;
            let p = vs / "up_blocks" / i;
            let channels = c.up_resnet_channels(i);
            let attentions = if c.has_attention(level) {
                (0..channels.len())
                    .map(|j| AttentionBlock::new(&p / "attentions" / j, widths[level], c, gen))
                    .collect()
            } else {
                Vec::new()
            };
            let resnets = channels
                .iter()
                .enumerate()
                .map(|(j, &(c_in, c_out))| {
                    ResnetBlock::new(&p / "resnets" / j, c_in, c_out, c, gen)
                })
                .collect();
            let upsampler = (level > 0).then(|| {
                conv2d(
                    &p / "upsamplers" / 0 / "conv",
                    widths[level],
                    widths[level],
                    3,
                    1,
                    1,
                    1.0,
                    gen,
                )
            });
            up_blocks.push(UpBlock {
                resnets,
                attentions,
                upsampler,
            });
        }

        let mid = vs / "mid_block";
        let bottom = widths[levels - 1];
        let mid_attention = AttentionBlock::new(&mid / "attentions" / 0, bottom, c, gen);
        let mid_resnets =
            [0, 1].map(|j| ResnetBlock::new(&mid / "resnets" / j, bottom, bottom, c, gen));
        let conv_norm_out = group_norm(vs / "conv_norm_out", c.channels, c);
        let conv_out = conv2d(
            vs / "conv_out",
            c.channels,
            c.out_channels,
            3,
            1,
            1,
            ZERO_SCALE,
            gen,
        );
        // Drawn last, so that an unconditional network's initial weights stay what they were
        // and a class-conditional one starts from them.
        let class_embedding = ClassEmbedding::new(vs, c.num_classes, temb, gen);
        Self {
            config,
            conv_in,
            linear_1,
            linear_2,
            class_embedding,
            down_blocks,
            up_blocks,
            mid_resnets,
            mid_attention,
            conv_norm_out,
            conv_out,
        }
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Every convolution kernel: the tensors whose layout is the memory format.
    fn conv_kernels(&self) -> Vec<&Tensor> {
        let resnets = (self.down_blocks.iter().flat_map(|b| &b.resnets))
            .chain(&self.mid_resnets)
            .chain(self.up_blocks.iter().flat_map(|b| &b.resnets));
        let resnet_kernels = resnets.flat_map(|r| {
            [
                Some(&r.conv1.ws),
                Some(&r.conv2.ws),
                r.conv_shortcut.as_ref().map(|c| &c.ws),
            ]
        });
        let resamplers = (self.down_blocks.iter().map(|b| b.downsampler.as_ref()))
            .chain(self.up_blocks.iter().map(|b| b.upsampler.as_ref()))
            .map(|conv| conv.map(|c| &c.ws));
        [Some(&self.conv_in.ws), Some(&self.conv_out.ws)]
            .into_iter()
            .chain(resnet_kernels)
            .chain(resamplers)
            .flatten()
            .collect()
    }
}

impl Denoiser for UNet {
    fn forward_t(&self, xs: &Tensor, timesteps: &Tensor, train: bool) -> Tensor {
        self.forward_cond(xs, timesteps, None, train)
    }

    fn num_classes(&self) -> Option<i64> {
        self.config.num_classes
    }

    fn forward_cond(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        train: bool,
    ) -> Tensor {
        let format = if is_channels_last(&self.conv_in.ws) {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Contiguous
        };
        let x = to_memory_format(xs, format);
        let timesteps = batch_timesteps(timesteps, xs.size()[0]);
        let c = &self.config;
        let t_emb = timestep_embedding(&timesteps, c.channels, c.flip_sin_to_cos, c.freq_shift)
            .to_kind(self.linear_1.ws.kind());
        let temb = t_emb.apply(&self.linear_1).silu().apply(&self.linear_2);
        // diffusers: `emb = emb + class_emb`, after the time MLP and before any resnet.
        let temb = add_class_embedding(
            self.class_embedding.as_ref(),
            temb,
            class_labels,
            xs.size()[0],
            "U-Net",
        );
        // Every resnet applies SiLU to the embedding before its projection; do it once.
        let temb_act = temb.silu();

        let mut h = x.apply(&self.conv_in);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.down_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                h = resnet.forward(&h, &temb_act, train);
                if let Some(attention) = block.attentions.get(j) {
                    h = attention.forward(&h);
                }
                skips.push(h.shallow_clone());
            }
            if let Some(conv) = &block.downsampler {
                if block.downsample_padding == 0 {
                    h = h.constant_pad_nd([0, 1, 0, 1]);
                }
                h = h.apply(conv);
                skips.push(h.shallow_clone());
            }
        }

        h = self.mid_resnets[0].forward(&h, &temb_act, train);
        h = self.mid_attention.forward(&h);
        h = self.mid_resnets[1].forward(&h, &temb_act, train);

        for block in &self.up_blocks {
            for (j, resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                h = resnet.forward(&Tensor::cat(&[&h, &skip], 1), &temb_act, train);
                if let Some(attention) = block.attentions.get(j) {
                    h = attention.forward(&h);
                }
            }
            if let Some(conv) = &block.upsampler {
                let (_, _, height, width) = h.size4().expect("NCHW");
                h = h
                    .upsample_nearest2d([2 * height, 2 * width], 2.0, 2.0)
                    .apply(conv);
            }
        }
        let out = h.apply(&self.conv_norm_out).silu().apply(&self.conv_out);
        if out.kind() == xs.kind() {
            out
        } else {
            out.to_kind(xs.kind())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;
    use tch::{Device, Kind};

    fn tiny() -> UNetConfig {
        UNetConfig {
            image_size: 16,
            channels: 8,
            channel_mult: vec![1, 2, 2],
            attention_resolutions: vec![8],
            norm_num_groups: 4,
            ..UNetConfig::ho2020_cifar10()
        }
    }

    #[test]
    fn the_fashion_mnist_network_has_the_pytorch_ports_parameter_count() {
        // Counted by scripts/bench/unet_torch.py (the quality race's peer builds it from the same
        // configuration).
        let vs = VarStore::new(Device::Cpu);
        let net = UNetConfig::fashion_mnist().build(&vs.root()).unwrap();
        assert_eq!(crate::parameter_count(&vs), 686_769);
        let xs = Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu));
        let t = Tensor::from_slice(&[0i64, 299]);
        assert_eq!(net.forward_t(&xs, &t, false).size(), vec![2, 1, 28, 28]);
    }

    #[test]
    fn ho2020_has_the_papers_parameter_count_and_diffusers_names() {
        let vs = VarStore::new(Device::Cpu);
        let _net = UNetConfig::ho2020_cifar10().build(&vs.root()).unwrap();
        assert_eq!(crate::parameter_count(&vs), 35_746_307);
        let vars = vs.variables();
        assert_eq!(vars.len(), 328, "diffusers' state_dict has 328 tensors");
        for (name, shape) in [
            ("conv_in.weight", vec![128, 3, 3, 3]),
            ("time_embedding.linear_1.weight", vec![512, 128]),
            ("down_blocks.1.attentions.0.to_q.weight", vec![256, 256]),
            (
                "down_blocks.1.resnets.0.conv_shortcut.weight",
                vec![256, 128, 1, 1],
            ),
            (
                "down_blocks.0.downsamplers.0.conv.weight",
                vec![128, 128, 3, 3],
            ),
            ("mid_block.attentions.0.group_norm.weight", vec![256]),
            ("mid_block.resnets.1.conv2.bias", vec![256]),
            ("up_blocks.0.resnets.0.conv1.weight", vec![256, 512, 3, 3]),
            ("up_blocks.2.attentions.2.to_out.0.weight", vec![256, 256]),
            (
                "up_blocks.3.resnets.2.conv_shortcut.weight",
                vec![128, 256, 1, 1],
            ),
            ("up_blocks.2.upsamplers.0.conv.weight", vec![256, 256, 3, 3]),
            ("conv_norm_out.weight", vec![128]),
            ("conv_out.weight", vec![3, 128, 3, 3]),
        ] {
            assert_eq!(vars.get(name).map(Tensor::size), Some(shape), "{name}");
        }
        assert!(!vars.contains_key("down_blocks.3.downsamplers.0.conv.weight"));
        assert!(!vars.contains_key("up_blocks.3.upsamplers.0.conv.weight"));
    }

    /// The official init scales the last layer of every residual branch and `conv_out` to ~0, so a
    /// fresh network ignores `t` and dropout; give those layers ordinary weights.
    fn wake_up(vs: &VarStore) {
        for (name, mut var) in vs.variables() {
            if ["conv2.weight", "to_out.0.weight", "conv_out.weight"]
                .iter()
                .any(|s| name.ends_with(s))
            {
                let _ = tch::no_grad(|| var.normal_(0.0, 0.1));
            }
        }
    }

    #[test]
    fn fresh_residual_branches_start_near_zero() {
        let vs = VarStore::new(Device::Cpu);
        let net = tiny().build(&vs.root()).unwrap();
        let xs = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let out = net.forward_t(&xs, &Tensor::from_slice(&[1i64, 900]), true);
        assert!(out.abs().max().double_value(&[]) < 1e-3);
    }

    #[test]
    fn kernels_stay_nchw_and_every_kernel_is_listed() {
        let vs = VarStore::new(Device::Cpu);
        let net = UNetConfig::ho2020_cifar10().build(&vs.root()).unwrap();
        let n_kernels = vs.variables().values().filter(|v| v.dim() == 4).count();
        assert_eq!(net.conv_kernels().len(), n_kernels);
        assert!(vs.variables().values().all(Tensor::is_contiguous));
    }

    #[test]
    fn output_has_the_input_shape_and_depends_on_t() {
        let vs = VarStore::new(Device::Cpu);
        let config = UNetConfig {
            in_channels: 1,
            out_channels: 1,
            ..tiny()
        };
        let net = config.build(&vs.root()).unwrap();
        wake_up(&vs);
        let xs = Tensor::randn([3, 1, 16, 16], (Kind::Float, Device::Cpu));
        let out = net.forward_t(&xs, &Tensor::from_slice(&[0i64, 10, 999]), false);
        assert_eq!(out.size(), [3, 1, 16, 16]);
        let same_x = Tensor::cat(&[xs.get(0).unsqueeze(0), xs.get(0).unsqueeze(0)], 0);
        let two_ts = net.forward_t(&same_x, &Tensor::from_slice(&[0i64, 500]), false);
        assert!(!two_ts.get(0).allclose(&two_ts.get(1), 1e-5, 1e-5, false));
    }

    #[test]
    fn dropout_acts_only_in_train_mode() {
        let vs = VarStore::new(Device::Cpu);
        let net = tiny().build(&vs.root()).unwrap();
        wake_up(&vs);
        let xs = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let ts = Tensor::from_slice(&[3i64, 7]);
        assert!(net
            .forward_t(&xs, &ts, false)
            .equal(&net.forward_t(&xs, &ts, false)));
        assert!(!net
            .forward_t(&xs, &ts, true)
            .equal(&net.forward_t(&xs, &ts, true)));
    }

    #[test]
    fn diffusers_config_round_trips() {
        let config = UNetConfig::ho2020_cifar10();
        let json = config.to_diffusers_config();
        assert_eq!(
            json["down_block_types"],
            json!([
                "DownBlock2D",
                "AttnDownBlock2D",
                "DownBlock2D",
                "DownBlock2D"
            ])
        );
        assert_eq!(
            json["up_block_types"],
            json!(["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"])
        );
        assert_eq!(json["block_out_channels"], json!([128, 256, 256, 256]));
        assert_eq!(UNetConfig::from_diffusers_config(&json).unwrap(), config);
    }

    #[test]
    fn diffusers_defaults_apply_to_absent_keys() {
        let json = json!({
            "_class_name": "UNet2DModel",
            "sample_size": 32,
            "block_out_channels": [64, 128, 128, 128],
        });
        let config = UNetConfig::from_diffusers_config(&json).unwrap();
        assert_eq!(config.freq_shift, 0.0);
        assert!(config.flip_sin_to_cos);
        assert_eq!(config.downsample_padding, 1);
        assert_eq!(config.attention_head_dim, Some(8));
        assert_eq!(config.attention_resolutions, vec![16, 8, 4]);
        assert_eq!(config.norm_eps, 1e-5);
    }

    #[test]
    fn class_conditional_configs_map_to_num_class_embeds_with_the_null_label_last() {
        let config = UNetConfig {
            num_classes: Some(10),
            ..UNetConfig::ho2020_cifar10()
        };
        let json = config.to_diffusers_config();
        assert_eq!(json["num_class_embeds"], json!(11));
        assert_eq!(json["class_embed_type"], Value::Null);
        assert_eq!(UNetConfig::from_diffusers_config(&json).unwrap(), config);
        // Unconditional exports carry no class keys, as before.
        let plain = UNetConfig::ho2020_cifar10().to_diffusers_config();
        assert!(plain.get("num_class_embeds").is_none());
        for (value, needle) in [
            (json!(1), "num_class_embeds"),
            (json!("ten"), "num_class_embeds"),
        ] {
            let mut bad = json.clone();
            bad["num_class_embeds"] = value;
            let err = UNetConfig::from_diffusers_config(&bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{err}");
        }
        let mut other = json.clone();
        other["class_embed_type"] = json!("timestep");
        let err = UNetConfig::from_diffusers_config(&other)
            .unwrap_err()
            .to_string();
        assert!(err.contains("class_embed_type"), "{err}");
    }

    #[test]
    fn unsupported_diffusers_features_are_named() {
        let mut json = UNetConfig::ho2020_cifar10().to_diffusers_config();
        json["resnet_time_scale_shift"] = json!("scale_shift");
        let err = UNetConfig::from_diffusers_config(&json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("resnet_time_scale_shift"), "{err}");
        let mut json = UNetConfig::ho2020_cifar10().to_diffusers_config();
        json["down_block_types"][0] = json!("CrossAttnDownBlock2D");
        let err = UNetConfig::from_diffusers_config(&json)
            .unwrap_err()
            .to_string();
        assert!(err.contains("CrossAttnDownBlock2D"), "{err}");
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_field_named() {
        let check = |config: UNetConfig, needle: &str| {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        };
        let base = UNetConfig::ho2020_cifar10();
        check(
            UNetConfig {
                image_size: 36,
                ..base.clone()
            },
            "image_size 36 must be a multiple of 8",
        );
        check(
            UNetConfig {
                attention_resolutions: vec![12],
                ..base.clone()
            },
            "attention resolution 12",
        );
        check(
            UNetConfig {
                norm_num_groups: 48,
                ..base.clone()
            },
            "norm_num_groups 48",
        );
        check(
            UNetConfig {
                attention_head_dim: Some(96),
                ..base.clone()
            },
            "attention_head_dim 96",
        );
        check(
            UNetConfig {
                dropout: 1.0,
                ..base.clone()
            },
            "dropout",
        );
        check(
            UNetConfig {
                downsample_padding: 2,
                ..base.clone()
            },
            "downsample_padding",
        );
        check(
            UNetConfig {
                channel_mult: vec![],
                ..base.clone()
            },
            "channel_mult",
        );
        check(
            UNetConfig {
                channels: 2,
                norm_num_groups: 1,
                ..base
            },
            "freq_shift",
        );
    }
}
