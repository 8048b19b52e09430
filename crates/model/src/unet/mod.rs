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
//!
//! This file is the network; [`UNetConfig`], its presets and validation are in `config.rs`, and
//! its translation to and from diffusers' `config.json` in `diffusers.rs`.

mod config;
mod diffusers;

pub use config::UNetConfig;

use crate::checkpoint::{checkpointed, Shared};
use crate::init::{conv2d, linear, ZERO_SCALE};
use crate::memory_format::{is_channels_last, to_memory_format, MemoryFormat};
use crate::{add_class_embedding, batch_timesteps, timestep_embedding, ClassEmbedding, Denoiser};
use tch::nn;
use tch::Tensor;
use torch_ext::Generator;

/// The architecture's name in configuration errors.
const ARCH: &str = "ddpm";

/// SiLU of a group norm's output, in place where no backward pass will read it (evaluation
/// without autograd, as in sampling): one pass over the activations and no new tensor.
fn silu(mut xs: Tensor) -> Tensor {
    if xs.requires_grad() {
        xs.silu()
    } else {
        let _ = xs.silu_();
        xs
    }
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
    /// Dropout draws its mask from `dropout` (training mode); `None` is evaluation mode.
    /// The additions run in place on convolution outputs, which no backward pass needs.
    fn forward(&self, xs: &Tensor, temb_act: &Tensor, dropout: Option<&mut Generator>) -> Tensor {
        let mut h = silu(xs.apply(&self.norm1)).apply(&self.conv1);
        let _ = h.g_add_(
            &temb_act
                .apply(&self.time_emb_proj)
                .unsqueeze(-1)
                .unsqueeze(-1),
        );
        let h = silu(h.apply(&self.norm2));
        let h = match dropout {
            Some(gen) => gen
                .dropout(&h, self.dropout)
                .expect("dropout's generator is on the network's device"),
            None => h,
        };
        let mut h = h.apply(&self.conv2);
        let _ = match &self.conv_shortcut {
            Some(conv) => h.g_add_(&xs.apply(conv)),
            None => h.g_add_(xs),
        };
        h
    }

    /// The tensors the block reads besides its inputs.
    fn parameters(&self) -> Vec<&Tensor> {
        let convs = [
            Some(&self.conv1),
            Some(&self.conv2),
            self.conv_shortcut.as_ref(),
        ];
        let norms = [&self.norm1, &self.norm2];
        (convs.into_iter().flatten())
            .flat_map(|c| [Some(&c.ws), c.bs.as_ref()])
            .chain(
                norms
                    .into_iter()
                    .flat_map(|n| [n.ws.as_ref(), n.bs.as_ref()]),
            )
            .chain([Some(&self.time_emb_proj.ws), self.time_emb_proj.bs.as_ref()])
            .flatten()
            .collect()
    }

    /// [`ResnetBlock::forward`] on `xs`, or on `cat([xs, skip], channels)` in the up path,
    /// checkpointed when `checkpoint` is set and the pass trains (`dropout` given): see
    /// `crate::checkpoint`. The concatenation runs inside the checkpoint, so that it keeps `xs`
    /// and the skip (which the down path keeps anyway), not a copy of both.
    fn run(
        this: &Shared<Self>,
        (xs, skip): (&Tensor, Option<&Tensor>),
        temb_act: &Tensor,
        dropout: Option<&mut Generator>,
        checkpoint: bool,
    ) -> Tensor {
        match dropout {
            Some(gen) if checkpoint => {
                let block = this.clone();
                // Without dropout the block draws nothing: no generator to replay.
                let rng = (this.dropout > 0.0).then_some(gen);
                // [xs, temb_act] or [xs, temb_act, skip].
                let inputs: Vec<&Tensor> = [xs, temb_act].into_iter().chain(skip).collect();
                checkpointed(&inputs, &this.parameters(), rng, move |xs, rng, _| {
                    let input = match xs.get(2) {
                        Some(skip) => Tensor::cat(&[&xs[0], skip], 1),
                        None => xs[0].shallow_clone(),
                    };
                    block.forward(&input, &xs[1], rng)
                })
            }
            dropout => {
                let input = match skip {
                    Some(skip) => Tensor::cat(&[xs, skip], 1),
                    None => xs.shallow_clone(),
                };
                this.forward(&input, temb_act, dropout.filter(|_| this.dropout > 0.0))
            }
        }
    }
}

/// A layer outside the residual and attention blocks (a resampler, the output head), run as
/// one checkpoint of its own in training passes with `gradient_checkpointing`, so that it keeps
/// only its input: at 256² the padded input of a stride-2 conv, the upsampled input of an
/// up-sampler's conv and the head's GroupNorm and SiLU outputs are each as large as a skip.
fn checkpointed_layer<L, F>(
    layer: &Shared<L>,
    params: Vec<&Tensor>,
    xs: &Tensor,
    checkpoint: bool,
    f: F,
) -> Tensor
where
    L: 'static,
    F: Fn(&L, &Tensor) -> Tensor + Send + 'static,
{
    if !checkpoint {
        return f(layer, xs);
    }
    let layer = layer.clone();
    checkpointed(&[xs], &params, None, move |xs, _, _| f(&layer, &xs[0]))
}

/// Weight and bias of a convolution, the tensors a checkpoint of it reads.
fn conv_parameters(conv: &nn::Conv2D) -> Vec<&Tensor> {
    [Some(&conv.ws), conv.bs.as_ref()]
        .into_iter()
        .flatten()
        .collect()
}

/// The output head: GroupNorm → SiLU → `conv_out`.
#[derive(Debug)]
struct Head {
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Head {
    fn forward(&self, xs: &Tensor) -> Tensor {
        silu(xs.apply(&self.conv_norm_out)).apply(&self.conv_out)
    }

    fn parameters(&self) -> Vec<&Tensor> {
        let norm = [
            self.conv_norm_out.ws.as_ref(),
            self.conv_norm_out.bs.as_ref(),
        ];
        (norm.into_iter().flatten())
            .chain(conv_parameters(&self.conv_out))
            .collect()
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

    /// The tensors the block reads besides its input.
    fn parameters(&self) -> Vec<&Tensor> {
        [&self.to_q, &self.to_k, &self.to_v, &self.to_out]
            .into_iter()
            .flat_map(|l| [Some(&l.ws), l.bs.as_ref()])
            .chain([self.group_norm.ws.as_ref(), self.group_norm.bs.as_ref()])
            .flatten()
            .collect()
    }

    /// [`AttentionBlock::forward`], checkpointed when `checkpoint` is set (training passes only).
    fn run(this: &Shared<Self>, xs: &Tensor, checkpoint: bool) -> Tensor {
        if !checkpoint {
            return this.forward(xs);
        }
        let block = this.clone();
        checkpointed(&[xs], &this.parameters(), None, move |xs, _, _| {
            block.forward(&xs[0])
        })
    }
}

/// One level of the down path.
#[derive(Debug)]
struct DownBlock {
    resnets: Vec<Shared<ResnetBlock>>,
    attentions: Vec<Shared<AttentionBlock>>,
    /// The stride-2 conv to the next level; `None` on the deepest level.
    downsampler: Option<Shared<nn::Conv2D>>,
    downsample_padding: i64,
}

impl DownBlock {
    /// Down level `level` under `p`, from `c_prev` channels to `width`.
    fn new(
        p: &nn::Path,
        level: usize,
        [c_prev, width]: [i64; 2],
        c: &UNetConfig,
        gen: &mut Generator,
    ) -> Self {
        let levels = c.channel_mult.len();
        let n_layers = c.layers_per_block as usize;
        // Attention blocks register before resnets in diffusers' AttnDownBlock2D.
        let attentions = if c.has_attention(level) {
            (0..n_layers)
                .map(|j| Shared::new(AttentionBlock::new(p / "attentions" / j, width, c, gen)))
                .collect()
        } else {
            Vec::new()
        };
        let resnets = (0..n_layers)
            .map(|j| {
                Shared::new(ResnetBlock::new(
                    p / "resnets" / j,
                    if j == 0 { c_prev } else { width },
                    width,
                    c,
                    gen,
                ))
            })
            .collect();
        let padding = c.downsample_padding;
        let downsampler = (level + 1 < levels).then(|| {
            Shared::new(conv2d(
                p / "downsamplers" / 0 / "conv",
                width,
                width,
                3,
                2,
                padding,
                1.0,
                gen,
            ))
        });
        Self {
            resnets,
            attentions,
            downsampler,
            downsample_padding: padding,
        }
    }
}

/// One level of the up path.
#[derive(Debug)]
struct UpBlock {
    resnets: Vec<Shared<ResnetBlock>>,
    attentions: Vec<Shared<AttentionBlock>>,
    /// Nearest ×2 then this 3×3 conv; `None` on the top level.
    upsampler: Option<Shared<nn::Conv2D>>,
}

impl UpBlock {
    /// Up level `i` (0 is the deepest) under `p`.
    fn new(p: &nn::Path, i: usize, c: &UNetConfig, gen: &mut Generator) -> Self {
        let widths = c.block_out_channels();
        let level = widths.len() - 1 - i;
        let channels = c.up_resnet_channels(i);
        let attentions = if c.has_attention(level) {
            (0..channels.len())
                .map(|j| {
                    Shared::new(AttentionBlock::new(
                        p / "attentions" / j,
                        widths[level],
                        c,
                        gen,
                    ))
                })
                .collect()
        } else {
            Vec::new()
        };
        let resnets = channels
            .iter()
            .enumerate()
            .map(|(j, &(c_in, c_out))| {
                Shared::new(ResnetBlock::new(p / "resnets" / j, c_in, c_out, c, gen))
            })
            .collect();
        let upsampler = (level > 0).then(|| {
            Shared::new(conv2d(
                p / "upsamplers" / 0 / "conv",
                widths[level],
                widths[level],
                3,
                1,
                1,
                1.0,
                gen,
            ))
        });
        Self {
            resnets,
            attentions,
            upsampler,
        }
    }
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
    mid_resnets: [Shared<ResnetBlock>; 2],
    mid_attention: Shared<AttentionBlock>,
    /// `conv_norm_out` → SiLU → `conv_out`.
    head: Shared<Head>,
}

impl UNet {
    /// Creates the variables in diffusers' `state_dict` order, so that tables list them alike.
    pub(super) fn new(vs: &nn::Path, config: UNetConfig, gen: &mut Generator) -> Self {
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
            down_blocks.push(DownBlock::new(
                &(vs / "down_blocks" / level),
                level,
                [c_prev, width],
                c,
                gen,
            ));
            c_prev = width;
        }
        let up_blocks = (0..levels)
            .map(|i| UpBlock::new(&(vs / "up_blocks" / i), i, c, gen))
            .collect();

        let mid = vs / "mid_block";
        let bottom = widths[levels - 1];
        let mid_attention =
            Shared::new(AttentionBlock::new(&mid / "attentions" / 0, bottom, c, gen));
        let mid_resnets = [0, 1].map(|j| {
            Shared::new(ResnetBlock::new(
                &mid / "resnets" / j,
                bottom,
                bottom,
                c,
                gen,
            ))
        });
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
            head: Shared::new(Head {
                conv_norm_out,
                conv_out,
            }),
        }
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Every convolution kernel: the tensors whose layout is the memory format.
    pub(super) fn conv_kernels(&self) -> Vec<&Tensor> {
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
        [Some(&self.conv_in.ws), Some(&self.head.conv_out.ws)]
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
        if !train {
            return self.forward_with(xs, timesteps, class_labels, None);
        }
        // No generator given: dropout draws from libtorch's global one, as tch's dropout did.
        let mut global =
            Generator::global(xs.device()).expect("the input's device has a default generator");
        self.forward_with(xs, timesteps, class_labels, Some(&mut global))
    }

    fn forward_train(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        dropout: &mut Generator,
    ) -> Tensor {
        self.forward_with(xs, timesteps, class_labels, Some(dropout))
    }
}

impl UNet {
    /// The forward pass: training mode with dropout masks from `dropout`, or evaluation mode
    /// with `None`.
    fn forward_with(
        &self,
        xs: &Tensor,
        timesteps: &Tensor,
        class_labels: Option<&Tensor>,
        mut dropout: Option<&mut Generator>,
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
        // Checkpointing applies to training passes only.
        let ckpt = c.gradient_checkpointing && dropout.is_some();
        let resnet = |block: &Shared<ResnetBlock>,
                      h: (&Tensor, Option<&Tensor>),
                      rng: Option<&mut Generator>| {
            ResnetBlock::run(block, h, &temb_act, rng, ckpt)
        };
        let attention =
            |block: &Shared<AttentionBlock>, h: &Tensor| AttentionBlock::run(block, h, ckpt);

        let mut h = x.apply(&self.conv_in);
        let mut skips = vec![h.shallow_clone()];
        for block in &self.down_blocks {
            for (j, block_resnet) in block.resnets.iter().enumerate() {
                h = resnet(block_resnet, (&h, None), dropout.as_deref_mut());
                if let Some(block_attention) = block.attentions.get(j) {
                    h = attention(block_attention, &h);
                }
                skips.push(h.shallow_clone());
            }
            if let Some(conv) = &block.downsampler {
                let pad = block.downsample_padding == 0;
                h = checkpointed_layer(conv, conv_parameters(conv), &h, ckpt, move |conv, h| {
                    if pad {
                        h.constant_pad_nd([0, 1, 0, 1]).apply(conv)
                    } else {
                        h.apply(conv)
                    }
                });
                skips.push(h.shallow_clone());
            }
        }

        h = resnet(&self.mid_resnets[0], (&h, None), dropout.as_deref_mut());
        h = attention(&self.mid_attention, &h);
        h = resnet(&self.mid_resnets[1], (&h, None), dropout.as_deref_mut());

        for block in &self.up_blocks {
            for (j, block_resnet) in block.resnets.iter().enumerate() {
                let skip = skips.pop().expect("one skip per up resnet");
                h = resnet(block_resnet, (&h, Some(&skip)), dropout.as_deref_mut());
                if let Some(block_attention) = block.attentions.get(j) {
                    h = attention(block_attention, &h);
                }
            }
            if let Some(conv) = &block.upsampler {
                h = checkpointed_layer(conv, conv_parameters(conv), &h, ckpt, |conv, h| {
                    let (_, _, height, width) = h.size4().expect("NCHW");
                    h.upsample_nearest2d([2 * height, 2 * width], 2.0, 2.0)
                        .apply(conv)
                });
            }
        }
        let head = &self.head;
        let out = checkpointed_layer(head, head.parameters(), &h, ckpt, Head::forward);
        if out.kind() == xs.kind() {
            out
        } else {
            out.to_kind(xs.kind())
        }
    }
}

#[cfg(test)]
mod tests;
