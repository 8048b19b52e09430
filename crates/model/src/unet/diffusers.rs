//! The translation between [`UNetConfig`] and a diffusers `UNet2DModel` `config.json`, both
//! ways, and the state-dict key names of diffusers before 0.15.

use serde_json::{json, Map, Value};

use super::{UNetConfig, ARCH};
use crate::error::{invalid, ModelError};

/// `UNet2DModel`'s `block_out_channels` when a config leaves it out.
const DEFAULT_BLOCK_OUT_CHANNELS: [i64; 4] = [224, 448, 672, 896];

/// The `UNet2DModel` features this network does not implement, each with the one value it
/// accepts (diffusers' default), in the order they are checked.
const FIXED_BEFORE_CLASSES: [(&str, &str); 9] = [
    ("time_embedding_type", "positional"),
    ("act_fn", "silu"),
    ("resnet_time_scale_shift", "default"),
    ("center_input_sample", "false"),
    ("mid_block_type", "UNetMidBlock2D"),
    ("downsample_type", "conv"),
    ("upsample_type", "conv"),
    ("add_attention", "true"),
    ("class_embed_type", "null"),
];

/// As [`FIXED_BEFORE_CLASSES`], checked after `num_class_embeds`.
const FIXED_AFTER_CLASSES: [(&str, &str); 2] = [
    ("time_embedding_dim", "null"),
    ("attn_norm_num_groups", "null"),
];

impl UNetConfig {
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
        let keys = Keys::new(config)?;
        if let Some(class) = keys.string("_class_name") {
            if class != "UNet2DModel" {
                return Err(invalid(
                    ARCH,
                    format!("a {class} config is not a UNet2DModel config"),
                ));
            }
        }
        keys.expect_all(&FIXED_BEFORE_CLASSES)?;
        let num_classes = keys.num_classes()?;
        keys.expect_all(&FIXED_AFTER_CLASSES)?;
        if keys.float("mid_block_scale_factor", 1.0)? != 1.0 {
            return Err(invalid(
                ARCH,
                "diffusers `mid_block_scale_factor` other than 1 is not supported",
            ));
        }
        let widths = keys.block_out_channels()?;
        let channels = widths[0];
        let (down, up) = keys.block_types(widths.len())?;
        let image_size = keys.sample_size()?;
        let attention_resolutions = attention_resolutions(&down, &up, image_size)?;
        let attention_head_dim = keys.attention_head_dim()?;
        let config = Self {
            in_channels: keys.int("in_channels", 3)?,
            out_channels: keys.int("out_channels", 3)?,
            image_size,
            channels,
            channel_mult: widths.iter().map(|w| w / channels).collect(),
            layers_per_block: keys.int("layers_per_block", 2)?,
            attention_resolutions,
            dropout: keys.float("dropout", 0.0)?,
            norm_num_groups: keys.int("norm_num_groups", 32)?,
            norm_eps: keys.float("norm_eps", 1e-5)?,
            attention_head_dim,
            freq_shift: keys.float("freq_shift", 0.0)?,
            flip_sin_to_cos: match keys.get("flip_sin_to_cos") {
                None => true,
                Some(v) => v.as_bool().ok_or_else(|| {
                    invalid(ARCH, "diffusers `flip_sin_to_cos` must be a boolean")
                })?,
            },
            downsample_padding: keys.int("downsample_padding", 1)?,
            num_classes,
            // A training setting of ours, not part of diffusers' architecture.
            gradient_checkpointing: false,
        };
        config.validate()?;
        Ok(config)
    }
}

/// The keys of a diffusers `config.json`, read with diffusers' defaults; a null value counts as
/// absent.
struct Keys<'a> {
    obj: &'a Map<String, Value>,
}

impl<'a> Keys<'a> {
    fn new(config: &'a Value) -> Result<Self, ModelError> {
        let obj = config
            .as_object()
            .ok_or_else(|| invalid(ARCH, "a diffusers config must be a JSON object"))?;
        Ok(Self { obj })
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn int(&self, key: &str, default: i64) -> Result<i64, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_i64()
                .ok_or_else(|| invalid(ARCH, format!("diffusers key `{key}` must be an integer"))),
        }
    }

    fn float(&self, key: &str, default: f64) -> Result<f64, ModelError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| invalid(ARCH, format!("diffusers key `{key}` must be a number"))),
        }
    }

    fn string(&self, key: &str) -> Option<&'a str> {
        self.get(key).and_then(Value::as_str)
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, ModelError> {
        self.get(key)
            .map(|v| {
                serde_json::from_value::<Vec<String>>(v.clone()).map_err(|_| {
                    invalid(
                        ARCH,
                        format!("diffusers key `{key}` must be a list of strings"),
                    )
                })
            })
            .transpose()
    }

    /// Refuses a feature this network does not implement: each key must be absent or at the
    /// one value it supports.
    fn expect_all(&self, fixed: &[(&str, &str)]) -> Result<(), ModelError> {
        for &(key, wanted) in fixed {
            let found = match self.get(key) {
                None => wanted.to_string(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            };
            if found != wanted {
                return Err(invalid(
                    ARCH,
                    format!("diffusers `{key}` = {found} is not supported (only {wanted})"),
                ));
            }
        }
        Ok(())
    }

    /// `num_class_embeds = N` as `num_classes = N − 1` (the last embedding is the null label).
    fn num_classes(&self) -> Result<Option<i64>, ModelError> {
        let Some(v) = self.get("num_class_embeds") else {
            return Ok(None);
        };
        match v.as_i64() {
            Some(n) if n >= 2 => Ok(Some(n - 1)),
            _ => Err(invalid(
                ARCH,
                format!(
                    "diffusers `num_class_embeds` = {v} is not supported: it must be an \
                     integer of at least 2 (the classes and, last, the null label)"
                ),
            )),
        }
    }

    /// `block_out_channels`, each a multiple of the first (the base width).
    fn block_out_channels(&self) -> Result<Vec<i64>, ModelError> {
        let widths: Vec<i64> = match self.get("block_out_channels") {
            None => DEFAULT_BLOCK_OUT_CHANNELS.to_vec(),
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
        Ok(widths)
    }

    /// `sample_size`: one integer, or a square `[size, size]`.
    fn sample_size(&self) -> Result<i64, ModelError> {
        match self.get("sample_size") {
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
        })
    }

    /// `down_block_types` and `up_block_types`, one per level of `levels`.
    fn block_types(&self, levels: usize) -> Result<(Vec<String>, Vec<String>), ModelError> {
        let down = self.strings("down_block_types")?.unwrap_or_else(|| {
            [
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]
            .map(String::from)
            .to_vec()
        });
        let up = self.strings("up_block_types")?.unwrap_or_else(|| {
            [
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]
            .map(String::from)
            .to_vec()
        });
        if down.len() != levels || up.len() != levels {
            let widths = if self.obj.contains_key("block_out_channels") {
                format!("block_out_channels has {levels}")
            } else {
                format!(
                    "block_out_channels is missing, so diffusers' default \
                     {DEFAULT_BLOCK_OUT_CHANNELS:?} gives {levels}"
                )
            };
            return Err(invalid(
                ARCH,
                format!(
                    "one block type per level: down_block_types has {} entries and \
                     up_block_types {}, but {widths}",
                    down.len(),
                    up.len()
                ),
            ));
        }
        Ok((down, up))
    }

    /// `attention_head_dim`: diffusers' default 8 when absent, one full-width head when null.
    fn attention_head_dim(&self) -> Result<Option<i64>, ModelError> {
        match self.get("attention_head_dim") {
            None if self.obj.contains_key("attention_head_dim") => Ok(None),
            None => Ok(Some(8)),
            Some(v) => Ok(Some(v.as_i64().ok_or_else(|| {
                invalid(
                    ARCH,
                    "diffusers `attention_head_dim` must be an integer or null",
                )
            })?)),
        }
    }
}

/// The resolutions of the levels whose blocks attend, from `down` and the mirrored `up` block
/// types.
fn attention_resolutions(
    down: &[String],
    up: &[String],
    image_size: i64,
) -> Result<Vec<i64>, ModelError> {
    let mut resolutions = Vec::new();
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
            resolutions.push(image_size >> level);
        }
    }
    Ok(resolutions)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
