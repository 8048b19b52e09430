//! The seed notebook's `SimpleUnet` (FIT3181 DDPM notebook, itself after DeepFindr's PyTorch
//! "Diffusion models from scratch" tutorial), on libtorch.
//!
//! The architecture, per block and in the notebook's order:
//!
//! - time: sinusoidal embedding (dim 32) → Linear(32) → ReLU, computed once; a class-conditional
//!   network adds its learned class embedding (`class_embedding`, `num_classes + 1` rows of the
//!   embedding's width, the last the null label) to it, as diffusers' U-Net adds its class
//!   embedding to the output of its time MLP;
//! - `conv0`: 3×3 conv to `down_channels[0]`;
//! - down block: conv 3×3 → ReLU → BatchNorm; add ReLU(Linear(t)) over the image;
//!   conv 3×3 → ReLU → BatchNorm; 4×4 stride-2 conv;
//! - up block: the same on `cat([x, skip], channels)`, ending in a 4×4 stride-2 transposed conv;
//! - `output`: 1×1 conv.
//!
//! Keras semantics are reproduced exactly: "same" padding (see [`keras_same_padding`]),
//! `glorot_uniform` kernels with zero biases, BatchNorm with eps 1e-3 and momentum 0.99 (PyTorch's
//! momentum is the weight of the new batch, so 0.01). Two things the notebook gets wrong are fixed:
//! BatchNorm runs in train mode while training and in eval mode otherwise (the notebook never
//! updates its running statistics), and the output conv has `out_channels` filters instead of a
//! hard-coded 3. Parameter names follow the PyTorch port (`downs.0.conv1.weight`,
//! `downs.0.bnorm1.running_mean`, `time_mlp.1.weight`, ...), so its `state_dict` loads one to one.

use crate::checkpoint::{checkpointed, Pass, Shared};
use crate::error::{invalid, ModelError};
use crate::init::{conv2d, fan_avg_uniform_, linear, GLOROT};
use crate::memory_format::{convert_in_place, is_channels_last, to_memory_format, MemoryFormat};
use crate::{
    add_class_embedding, batch_timesteps, timestep_embedding, validate_num_classes, ClassEmbedding,
    Denoiser,
};
use serde::{Deserialize, Serialize};
use tch::nn::{self, Init, Module, ModuleT};
use tch::{Kind, Tensor};
use torch_ext::Generator;

const ARCH: &str = "simple";

/// Hyper-parameters of the notebook's [`SimpleUnet`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimpleUnetConfig {
    /// Image channels in (3 for RGB, 1 for grayscale).
    pub in_channels: i64,
    /// Channels of the predicted noise; equal to `in_channels` for ε-prediction.
    pub out_channels: i64,
    /// Image height and width; divisible by `2^(down_channels.len() - 1)`.
    pub image_size: i64,
    /// `conv0`'s width, then each down block's width.
    pub down_channels: Vec<i64>,
    /// The bottleneck width (equal to the last down width), then each up block's width.
    pub up_channels: Vec<i64>,
    /// Width of the sinusoidal time embedding and of its Linear layer.
    pub time_emb_dim: i64,
    /// BatchNorm's epsilon (Keras' default 1e-3).
    pub batch_norm_eps: f64,
    /// Weight of a new batch in BatchNorm's running statistics (PyTorch convention: Keras'
    /// momentum 0.99 is 0.01 here).
    pub batch_norm_momentum: f64,
    /// Class-conditional with this many classes: a `class_embedding` of `num_classes + 1` rows
    /// (the last is the null label) added to the time embedding; `None` (null in JSON, or absent
    /// in configurations saved before class conditioning existed) for an unconditional network.
    #[serde(default)]
    pub num_classes: Option<i64>,
    /// Activation checkpointing: each block keeps only its input in a training forward pass and
    /// recomputes its activations in backward. Absent in JSON means `false`, and `false` is not
    /// written.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gradient_checkpointing: bool,
}

impl SimpleUnetConfig {
    /// The notebook's CIFAR-10 model: 28×28×3, down (28, 128, 256), up (256, 128, 28), time
    /// embedding 32, Keras BatchNorm. 3,482,231 trainable parameters, the notebook's count.
    pub fn seed_cifar10() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            image_size: 28,
            down_channels: vec![28, 128, 256],
            up_channels: vec![256, 128, 28],
            time_emb_dim: 32,
            batch_norm_eps: 1e-3,
            batch_norm_momentum: 0.01,
            num_classes: None,
            gradient_checkpointing: false,
        }
    }

    /// The notebook's larger (`stanford_dogs`) model: down (28, 128, 256, 512, 1024) and the mirrored
    /// up path. Four stride-2 levels need a size divisible by 16, so it runs at 64×64, the size of
    /// the DeepFindr tutorial this branch comes from (the notebook's 28 cannot work with it).
    pub fn seed_large() -> Self {
        Self {
            image_size: 64,
            down_channels: vec![28, 128, 256, 512, 1024],
            up_channels: vec![1024, 512, 256, 128, 28],
            ..Self::seed_cifar10()
        }
    }

    /// A grayscale variant for Fashion-MNIST (28×28×1), the notebook's architecture at a
    /// quarter of its deeper widths — down (16, 32, 64) — for about 14× fewer FLOPs per image
    /// (34 M multiply-adds instead of 483 M), so that two CPU cores make thousands of training
    /// steps in half an hour. 236,113 parameters.
    pub fn fashion_mnist() -> Self {
        Self {
            in_channels: 1,
            out_channels: 1,
            down_channels: vec![16, 32, 64],
            up_channels: vec![64, 32, 16],
            ..Self::seed_cifar10()
        }
    }

    /// The number of down (and of up) blocks.
    pub fn n_blocks(&self) -> usize {
        self.down_channels.len().saturating_sub(1)
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
        if self.down_channels.len() < 2 {
            return Err(invalid(
                ARCH,
                "down_channels needs conv0's width and at least one block's width",
            ));
        }
        if self.up_channels.len() != self.down_channels.len() {
            return Err(invalid(
                ARCH,
                format!(
                    "up_channels has {} entries but down_channels has {}: the up path mirrors the down path",
                    self.up_channels.len(),
                    self.down_channels.len()
                ),
            ));
        }
        if self
            .down_channels
            .iter()
            .chain(&self.up_channels)
            .any(|&c| c < 1)
        {
            return Err(invalid(
                ARCH,
                "every entry of down_channels and up_channels must be at least 1",
            ));
        }
        if self.up_channels[0] != self.down_channels[self.n_blocks()] {
            return Err(invalid(
                ARCH,
                format!(
                    "up_channels[0] ({}) must equal the last down_channels entry ({}): it is the bottleneck width",
                    self.up_channels[0],
                    self.down_channels[self.n_blocks()]
                ),
            ));
        }
        if self.time_emb_dim < 4 || self.time_emb_dim % 2 != 0 {
            return Err(invalid(
                ARCH,
                format!(
                    "time_emb_dim must be even and at least 4, got {}",
                    self.time_emb_dim
                ),
            ));
        }
        let factor = 1i64 << self.n_blocks();
        if self.image_size < factor || self.image_size % factor != 0 {
            return Err(invalid(
                ARCH,
                format!(
                    "image_size {} must be a multiple of {factor}: {} stride-2 blocks halve it and the up path \
                     concatenates each level with its skip",
                    self.image_size,
                    self.n_blocks()
                ),
            ));
        }
        validate_num_classes(ARCH, self.num_classes)?;
        if !(self.batch_norm_eps > 0.0) {
            return Err(invalid(ARCH, "batch_norm_eps must be positive"));
        }
        if !(0.0..=1.0).contains(&self.batch_norm_momentum) {
            return Err(invalid(
                ARCH,
                "batch_norm_momentum must lie in [0, 1] (PyTorch convention, Keras 0.99 is 0.01)",
            ));
        }
        Ok(())
    }

    /// Validates the configuration and creates the network's variables under `vs`, with the
    /// kernels in [`Self::preferred_memory_format`] for the var store's device, initialised from
    /// a CPU generator seeded with 0 (for weights that are loaded next; see [`Self::build_with`]).
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] from [`Self::validate`].
    pub fn build(&self, vs: &nn::Path) -> Result<SimpleUnet, ModelError> {
        self.build_with(vs, &mut Generator::cpu(0))
    }

    /// As [`Self::build`], with the initial weights drawn from `gen` (see [`crate::ModelConfig::build_with`]).
    ///
    /// # Errors
    /// [`ModelError::InvalidConfig`] from [`Self::validate`].
    pub fn build_with(&self, vs: &nn::Path, gen: &mut Generator) -> Result<SimpleUnet, ModelError> {
        self.validate()?;
        let net = SimpleUnet::new(vs, self.clone(), gen);
        let format = self.preferred_memory_format(vs.device());
        for kernel in net.conv_kernels() {
            convert_in_place(kernel, format);
        }
        Ok(net)
    }

    /// The memory format this network trains fastest in on `device`.
    ///
    /// Channels-last on the CPU: at the notebook's shape (batch 128, 28×28×3, 2 threads) a
    /// training step takes about 0.75× the NCHW time, here and in PyTorch (oneDNN's NHWC
    /// convolutions skip the reorders of its NCHW path). NCHW on CUDA, where it has not been
    /// measured (`DDPM_BENCH_DEVICE=cuda cargo bench -p model` compares both).
    pub fn preferred_memory_format(&self, device: tch::Device) -> MemoryFormat {
        if device.is_cuda() {
            MemoryFormat::Contiguous
        } else {
            MemoryFormat::ChannelsLast
        }
    }
}

/// TensorFlow's "same" padding `(before, after)` along one axis of a convolution.
///
/// TF pads `total = max((ceil(n / s) - 1) · s + k - n, 0)` and puts the odd element after. For
/// the notebook's layers on even sizes this is symmetric: 3×3 stride 1 gives (1, 1), and 4×4
/// stride 2 gives (1, 1) as well (`(n/2 - 1)·2 + 4 - n = 2`), so PyTorch's `padding=1` is exact.
/// A transposed conv with "same" padding is the adjoint of the conv that maps its output size to
/// its input size, so its padding is `keras_same_padding(2n, 4, 2) = (1, 1)`: PyTorch's
/// `ConvTranspose2d(k=4, s=2, padding=1)`, whose output is `2n` like Keras'.
pub fn keras_same_padding(input: i64, kernel: i64, stride: i64) -> (i64, i64) {
    let output = (input + stride - 1) / stride;
    let total = ((output - 1) * stride + kernel - input).max(0);
    (total / 2, total - total / 2)
}

/// The symmetric padding of a Keras "same" layer, which [`SimpleUnetConfig::validate`] guarantees.
fn symmetric_same_padding(input: i64, kernel: i64, stride: i64) -> i64 {
    let (before, after) = keras_same_padding(input, kernel, stride);
    assert_eq!(
        before, after,
        "asymmetric same padding on size {input}: the config validation missed it"
    );
    before
}

/// `BatchNorm2d` with PyTorch's state: it counts the batches it was trained on, as
/// `num_batches_tracked` does, so that its variables are exactly a PyTorch `state_dict`'s.
#[derive(Debug)]
struct BatchNorm {
    inner: nn::BatchNorm,
    num_batches_tracked: Tensor,
    eps: f64,
    momentum: f64,
}

impl BatchNorm {
    fn new(vs: nn::Path, channels: i64, config: &SimpleUnetConfig) -> Self {
        let bn_config = nn::BatchNormConfig {
            eps: config.batch_norm_eps,
            momentum: config.batch_norm_momentum,
            ws_init: Init::Const(1.0),
            bs_init: Init::Const(0.0),
            ..Default::default()
        };
        let inner = nn::batch_norm2d(&vs, channels, bn_config);
        let counter = Tensor::zeros([], (Kind::Int64, vs.device()));
        let num_batches_tracked = vs.add("num_batches_tracked", counter, false);
        Self {
            inner,
            num_batches_tracked,
            eps: config.batch_norm_eps,
            momentum: config.batch_norm_momentum,
        }
    }

    /// Train mode normalises by the batch statistics and updates the running ones, except in a
    /// checkpoint's [`Pass::Replay`], which computes the same output with the same kernel (on
    /// copies of the running statistics) and leaves the state as the first pass left it.
    fn forward_t(&self, xs: &Tensor, train: bool, pass: Pass) -> Tensor {
        if !train {
            return self.inner.forward_t(xs, false);
        }
        if pass == Pass::Replay {
            let bn = &self.inner;
            let (mean, var) = tch::no_grad(|| (bn.running_mean.copy(), bn.running_var.copy()));
            return xs.batch_norm(
                bn.ws.as_ref(),
                bn.bs.as_ref(),
                Some(&mean),
                Some(&var),
                true,
                self.momentum,
                self.eps,
                true,
            );
        }
        tch::no_grad(|| {
            let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
        });
        self.inner.forward_t(xs, true)
    }
}

/// The last layer of a block: down-sampling conv or up-sampling transposed conv.
#[derive(Debug)]
enum Transform {
    Down(nn::Conv2D),
    Up(nn::ConvTranspose2D),
}

/// One down or up block of the notebook.
#[derive(Debug)]
struct Block {
    time_mlp: nn::Linear,
    conv1: nn::Conv2D,
    conv1_padding: i64,
    transform: Transform,
    conv2: nn::Conv2D,
    bnorm1: BatchNorm,
    bnorm2: BatchNorm,
}

impl Block {
    /// A block on `size`×`size` inputs of `c_in` channels (the concatenation, for up blocks).
    fn new(
        vs: nn::Path,
        c_in: i64,
        c_out: i64,
        size: i64,
        up: bool,
        config: &SimpleUnetConfig,
        gen: &mut Generator,
    ) -> Self {
        let time_mlp = linear(&vs / "time_mlp", config.time_emb_dim, c_out, GLOROT, gen);
        let pad3 = symmetric_same_padding(size, 3, 1);
        let conv1 = conv2d(&vs / "conv1", c_in, c_out, 3, 1, pad3, GLOROT, gen);
        let transform = if up {
            // The adjoint of a "same" 4×4 stride-2 conv from 2·size to size.
            let padding = symmetric_same_padding(2 * size, 4, 2);
            let config = nn::ConvTransposeConfig {
                stride: 2,
                padding,
                ws_init: Init::Const(0.0),
                bs_init: Init::Const(0.0),
                ..Default::default()
            };
            let conv = nn::conv_transpose2d(&vs / "transform", c_out, c_out, 4, config);
            fan_avg_uniform_(&conv.ws, GLOROT, gen);
            Transform::Up(conv)
        } else {
            let padding = symmetric_same_padding(size, 4, 2);
            Transform::Down(conv2d(
                &vs / "transform",
                c_out,
                c_out,
                4,
                2,
                padding,
                GLOROT,
                gen,
            ))
        };
        let conv2 = conv2d(&vs / "conv2", c_out, c_out, 3, 1, pad3, GLOROT, gen);
        let bnorm1 = BatchNorm::new(&vs / "bnorm1", c_out, config);
        let bnorm2 = BatchNorm::new(&vs / "bnorm2", c_out, config);
        Self {
            time_mlp,
            conv1,
            conv1_padding: pad3,
            transform,
            conv2,
            bnorm1,
            bnorm2,
        }
    }

    /// # Shapes
    /// `xs`: `[N, c_in, s, s]`, `t_emb`: `[N, time_emb_dim]` → `[N, c_out, s/2, s/2]` (down) or
    /// `[N, c_out, 2s, 2s]` (up).
    ///
    /// ReLU and the time addition run in place: a convolution's backward needs its input, not its
    /// output, and BatchNorm's needs its input and batch statistics, so overwriting those outputs
    /// is safe for autograd and saves three image-sized allocations per block.
    ///
    /// `doubled` means that the block's input is `cat([xs, xs], channels)`, which the first up
    /// block always gets (the notebook concatenates the bottleneck with itself: its last skip is
    /// the current `x`). A convolution over two copies of `xs` is one convolution over `xs` with
    /// the two halves of the kernel summed, at half the cost; autograd gives each half the same
    /// gradient, as the concatenation would.
    ///
    /// `pass` is [`Pass::Replay`] in a checkpoint's recomputation (see `crate::checkpoint`).
    fn forward(
        &self,
        xs: &Tensor,
        doubled: bool,
        t_emb: &Tensor,
        train: bool,
        pass: Pass,
    ) -> Tensor {
        let mut h = if doubled {
            let half = self.conv1.ws.size()[1] / 2;
            let kernel = self.conv1.ws.narrow(1, 0, half) + self.conv1.ws.narrow(1, half, half);
            let padding = [self.conv1_padding; 2];
            xs.conv2d(&kernel, self.conv1.bs.as_ref(), [1, 1], padding, [1, 1], 1)
        } else {
            xs.apply(&self.conv1)
        };
        let _ = h.relu_();
        let mut h = self.bnorm1.forward_t(&h, train, pass);
        let time = t_emb.apply(&self.time_mlp).relu();
        let _ = h.g_add_(&time.unsqueeze(-1).unsqueeze(-1));
        let mut h = h.apply(&self.conv2);
        let _ = h.relu_();
        let h = self.bnorm2.forward_t(&h, train, pass);
        match &self.transform {
            Transform::Down(conv) => h.apply(conv),
            Transform::Up(conv) => h.apply(conv),
        }
    }

    /// The trainable tensors the block reads besides its inputs.
    fn parameters(&self) -> Vec<&Tensor> {
        let (transform_ws, transform_bs) = match &self.transform {
            Transform::Down(conv) => (&conv.ws, conv.bs.as_ref()),
            Transform::Up(conv) => (&conv.ws, conv.bs.as_ref()),
        };
        let norms = [&self.bnorm1.inner, &self.bnorm2.inner];
        [
            Some(&self.time_mlp.ws),
            self.time_mlp.bs.as_ref(),
            Some(&self.conv1.ws),
            self.conv1.bs.as_ref(),
            Some(&self.conv2.ws),
            self.conv2.bs.as_ref(),
            Some(transform_ws),
            transform_bs,
        ]
        .into_iter()
        .chain(
            norms
                .into_iter()
                .flat_map(|n| [n.ws.as_ref(), n.bs.as_ref()]),
        )
        .flatten()
        .collect()
    }

    /// [`Block::forward`], checkpointed in training passes when `checkpoint` is set.
    fn run(
        this: &Shared<Self>,
        xs: &Tensor,
        doubled: bool,
        t_emb: &Tensor,
        train: bool,
        checkpoint: bool,
    ) -> Tensor {
        if !(train && checkpoint) {
            return this.forward(xs, doubled, t_emb, train, Pass::First);
        }
        let block = this.clone();
        checkpointed(
            &[xs, t_emb],
            &this.parameters(),
            None,
            move |xs, _, pass| block.forward(&xs[0], doubled, &xs[1], true, pass),
        )
    }
}

/// The notebook's U-Net: ε_θ(x_t, t) with BatchNorm, ReLU and a concatenating skip per level.
#[derive(Debug)]
pub struct SimpleUnet {
    config: SimpleUnetConfig,
    time_mlp: nn::Linear,
    conv0: nn::Conv2D,
    downs: Vec<Shared<Block>>,
    ups: Vec<Shared<Block>>,
    output: nn::Conv2D,
    class_embedding: Option<ClassEmbedding>,
}

impl SimpleUnet {
    fn new(vs: &nn::Path, config: SimpleUnetConfig, gen: &mut Generator) -> Self {
        let c = &config;
        let n = c.n_blocks();
        // The notebook's `time_mlp` is `Sequential(embedding, Dense, ReLU)`: the Dense is item 1.
        let time_mlp = linear(
            vs / "time_mlp" / 1,
            c.time_emb_dim,
            c.time_emb_dim,
            GLOROT,
            gen,
        );
        let conv0 = conv2d(
            vs / "conv0",
            c.in_channels,
            c.down_channels[0],
            3,
            1,
            1,
            GLOROT,
            gen,
        );
        let downs = (0..n)
            .map(|i| {
                let size = c.image_size >> i;
                Shared::new(Block::new(
                    vs / "downs" / i,
                    c.down_channels[i],
                    c.down_channels[i + 1],
                    size,
                    false,
                    c,
                    gen,
                ))
            })
            .collect();
        let ups = (0..n)
            .map(|i| {
                // The input is the previous output concatenated with the skip of the same size.
                let size = c.image_size >> (n - i);
                let c_in = c.up_channels[i] + c.down_channels[n - i];
                Shared::new(Block::new(
                    vs / "ups" / i,
                    c_in,
                    c.up_channels[i + 1],
                    size,
                    true,
                    c,
                    gen,
                ))
            })
            .collect();
        let output = conv2d(
            vs / "output",
            c.up_channels[n],
            c.out_channels,
            1,
            1,
            0,
            GLOROT,
            gen,
        );
        // Last, so that an unconditional network's initial weights stay what they were.
        let class_embedding = ClassEmbedding::new(vs, c.num_classes, c.time_emb_dim, gen);
        Self {
            config,
            time_mlp,
            conv0,
            downs,
            ups,
            output,
            class_embedding,
        }
    }

    /// Every convolution kernel: the tensors whose layout is the memory format.
    fn conv_kernels(&self) -> Vec<&Tensor> {
        let blocks = self.downs.iter().chain(&self.ups);
        let block_kernels = blocks.flat_map(|b| {
            let transform = match &b.transform {
                Transform::Down(conv) => &conv.ws,
                Transform::Up(conv) => &conv.ws,
            };
            [&b.conv1.ws, &b.conv2.ws, transform]
        });
        std::iter::once(&self.conv0.ws)
            .chain(block_kernels)
            .chain([&self.output.ws])
            .collect()
    }

    /// The configuration the network was built from.
    pub fn config(&self) -> &SimpleUnetConfig {
        &self.config
    }
}

impl Denoiser for SimpleUnet {
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
        let format = if is_channels_last(&self.conv0.ws) {
            MemoryFormat::ChannelsLast
        } else {
            MemoryFormat::Contiguous
        };
        let x = to_memory_format(xs, format);
        let timesteps = batch_timesteps(timesteps, xs.size()[0]);
        let t_emb = timestep_embedding(&timesteps, self.config.time_emb_dim, false, 1.0)
            .to_kind(self.time_mlp.ws.kind())
            .apply(&self.time_mlp)
            .relu();
        let t_emb = add_class_embedding(
            self.class_embedding.as_ref(),
            t_emb,
            class_labels,
            xs.size()[0],
            "SimpleUnet",
        );
        let ckpt = self.config.gradient_checkpointing;
        let mut x = x.apply(&self.conv0);
        let mut skips = Vec::with_capacity(self.downs.len());
        for down in &self.downs {
            x = Block::run(down, &x, false, &t_emb, train, ckpt);
            skips.push(x.shallow_clone());
        }
        // The last skip is the bottleneck itself: the first up block sees cat([x, x]).
        skips.pop();
        x = Block::run(&self.ups[0], &x, true, &t_emb, train, ckpt);
        for up in &self.ups[1..] {
            let skip = skips.pop().expect("one skip per up block");
            let input = Tensor::cat(&[&x, &skip], 1);
            x = Block::run(up, &input, false, &t_emb, train, ckpt);
        }
        let out = self.output.forward(&x);
        if out.kind() == xs.kind() {
            out
        } else {
            out.to_kind(xs.kind())
        }
    }
}

#[cfg(test)]
mod tests;
