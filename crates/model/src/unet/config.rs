//! [`UNetConfig`]: the hyper-parameters of the DDPM paper's U-Net, its named presets, the widths
//! and resolutions they imply, and their validation. The translation to and from a diffusers
//! `config.json` is in `diffusers.rs`, the network itself in `unet/mod.rs`.

use serde::{Deserialize, Serialize};
use tch::nn;
use torch_ext::Generator;

use super::{UNet, ARCH};
use crate::error::{invalid, ModelError};
use crate::memory_format::{convert_in_place, MemoryFormat};
use crate::validate_num_classes;

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
    /// Activation checkpointing: each residual and attention block keeps only its input in a
    /// training forward pass and recomputes its activations in backward (less memory, about one
    /// more forward pass of time). Absent in JSON means `false`, and `false` is not written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
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
            gradient_checkpointing: false,
        }
    }

    /// The paper's 256×256 model for LSUN and CelebA-HQ (Ho et al. 2020, App. B: "our LSUN and
    /// CelebA-HQ models have 114 million parameters"; the official code's `unet2d16b2c112244`,
    /// `scripts/run_lsun.py`): ch 128, ch_mult (1, 1, 2, 2, 4, 4), 2 resnets per level,
    /// attention at 16×16, no dropout (`dropout=0.0` in `run_lsun.py` and `run_celebahq.py`),
    /// GroupNorm 32, at 256×256×3 — the configuration of diffusers' `google/ddpm-church-256`,
    /// `-bedroom-256`, `-cat-256` and `-celebahq-256`: 113,673,219 parameters.
    pub fn ho2020_256() -> Self {
        Self {
            image_size: 256,
            channel_mult: vec![1, 1, 2, 2, 4, 4],
            dropout: 0.0,
            ..Self::ho2020_cifar10()
        }
    }

    /// The `fashion-mnist` preset's network: the paper's U-Net at 28×28×1 with widths 16, 32, 64
    /// (`channels` 16, `ch_mult` (1, 2, 4)), one resnet per down level, self-attention at 7×7,
    /// 8 GroupNorm groups and no dropout: 686,769 parameters. On two CPU cores it trains at about
    /// 320 images/s (a third of the notebook's SimpleUnet at the same widths) and learns much
    /// more per image: see `docs/results/runs/fashion-mnist-preset-ablation/`.
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
    pub(super) fn up_resnet_channels(&self, i: usize) -> Vec<(i64, i64)> {
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
        self.validate_levels()?;
        self.validate_scalars()?;
        self.validate_widths()
    }

    /// Channels, levels and resolutions: the network's shape.
    fn validate_levels(&self) -> Result<(), ModelError> {
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
        Ok(())
    }

    /// Dropout, normalisation, embedding and padding settings.
    fn validate_scalars(&self) -> Result<(), ModelError> {
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
        Ok(())
    }

    /// GroupNorm groups and attention heads, which must divide the widths they split.
    fn validate_widths(&self) -> Result<(), ModelError> {
        let levels = self.channel_mult.len();
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

    /// The memory format this network samples fastest in on `device`: channels-last on the CPU
    /// when its first level is at least 64 channels wide, else NCHW.
    ///
    /// Inference has no backward pass, whose GroupNorm and attention make channels-last training
    /// slower. On the 2-core reference CPU (PyTorch eager, same libtorch, forward passes) the
    /// channels-last/NCHW time is 0.96 at widths 64 and 128 (28² and 32²), 1.06 at 32 and 1.79 at
    /// 16 (the fashion-mnist preset at batch 250); the Rust paper U-Net's sampling steps at batch
    /// 16 take 0.95–0.99× their NCHW time, and the 256² presets' 114M U-Net's forward at batch 1
    /// 0.98×. NCHW on CUDA, where it has not been measured.
    pub fn inference_memory_format(&self, device: tch::Device) -> MemoryFormat {
        if device == tch::Device::Cpu && self.channels >= 64 {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Contiguous
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
