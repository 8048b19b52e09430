//! Activation checkpointing (`gradient_checkpointing`) changes memory, not results: a training
//! pass of a tiny paper U-Net and a tiny SimpleUnet gives the same output, the same gradient for
//! every tensor (relative difference ≤ 1e-6), the same BatchNorm state and leaves the dropout
//! generator in the same state with checkpointing as without, also with dropout 0.1, where the
//! recomputation must replay the masks of the first pass.

use std::collections::BTreeMap;

use model::{ModelConfig, SimpleUnetConfig, UNetConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};
use torch_ext::Generator;

fn tiny_unet(dropout: f64) -> UNetConfig {
    UNetConfig {
        image_size: 16,
        channels: 8,
        channel_mult: vec![1, 2],
        layers_per_block: 1,
        attention_resolutions: vec![8],
        norm_num_groups: 4,
        dropout,
        ..UNetConfig::ho2020_cifar10()
    }
}

fn tiny_simple() -> SimpleUnetConfig {
    SimpleUnetConfig {
        image_size: 16,
        down_channels: vec![8, 16, 32],
        up_channels: vec![32, 16, 8],
        time_emb_dim: 16,
        ..SimpleUnetConfig::seed_cifar10()
    }
}

fn with_checkpointing(config: &ModelConfig, on: bool) -> ModelConfig {
    let mut config = config.clone();
    config.set_gradient_checkpointing(on);
    config
}

/// What a training pass leaves behind.
struct Pass {
    output: Tensor,
    /// Every variable's gradient (trainable ones) or value (buffers), by name.
    grads: BTreeMap<String, Tensor>,
    buffers: BTreeMap<String, Tensor>,
    /// Draws of the dropout generator after the pass: its state.
    next_draws: Tensor,
}

/// Builds the network, gives every weight a non-trivial value (the official init zeroes the
/// last layer of each residual branch), and runs one training pass and its backward.
fn train_pass(config: &ModelConfig) -> Pass {
    let vs = VarStore::new(Device::Cpu);
    let net = config
        .build_with(&vs.root(), &mut Generator::cpu(3))
        .unwrap();
    let mut init = Generator::cpu(4);
    tch::no_grad(|| {
        for (_, mut var) in vs.trainable_variables().into_iter().map(|v| ((), v)) {
            let mut noise = init.randn_like(&var).unwrap();
            let _ = noise.g_mul_scalar_(0.2);
            let _ = var.g_add_(&noise);
        }
    });
    let mut data = Generator::cpu(5);
    let xs = data
        .randn(&[2, 3, 16, 16], (Kind::Float, Device::Cpu))
        .unwrap();
    let target = data
        .randn(&[2, 3, 16, 16], (Kind::Float, Device::Cpu))
        .unwrap();
    let t = Tensor::from_slice(&[3i64, 700]);
    let mut dropout = Generator::cpu(11);
    let output = net.forward_train(&xs, &t, None, &mut dropout);
    (&output - &target).square().mean(Kind::Float).backward();
    let (mut grads, mut buffers) = (BTreeMap::new(), BTreeMap::new());
    for (name, var) in vs.variables() {
        if var.requires_grad() {
            grads.insert(name, var.grad().copy());
        } else {
            buffers.insert(name, var.copy());
        }
    }
    let next_draws = dropout.randn(&[16], (Kind::Float, Device::Cpu)).unwrap();
    Pass {
        output: output.detach(),
        grads,
        buffers,
        next_draws,
    }
}

fn relative(a: &Tensor, b: &Tensor) -> f64 {
    let diff = (a - b).norm().double_value(&[]);
    diff / b.norm().double_value(&[]).max(1e-30)
}

/// Checkpointing against the plain pass; returns the plain pass for further checks.
fn assert_checkpointing_changes_nothing(config: &ModelConfig) -> Pass {
    let plain = train_pass(&with_checkpointing(config, false));
    let ckpt = train_pass(&with_checkpointing(config, true));
    assert!(ckpt.output.equal(&plain.output), "outputs differ");
    assert_eq!(
        ckpt.grads.keys().collect::<Vec<_>>(),
        plain.grads.keys().collect::<Vec<_>>()
    );
    let scale = plain
        .grads
        .values()
        .map(|g| g.norm().double_value(&[]))
        .fold(0.0, f64::max);
    let mut failures = Vec::new();
    for (name, reference) in &plain.grads {
        let grad = &ckpt.grads[name];
        assert!(grad.defined() && reference.defined(), "{name}: no gradient");
        if name.ends_with("to_k.bias") {
            // Softmax ignores a constant added to a row of scores, so the key bias has no
            // gradient: both are rounding noise (~1e-9), compared against the gradients' scale.
            let diff = (grad - reference).norm().double_value(&[]);
            assert!(diff <= 1e-6 * scale, "{name}: difference {diff:e}");
            continue;
        }
        assert!(
            reference.norm().double_value(&[]) > 1e-6 * scale,
            "{name}: no gradient"
        );
        let rel = relative(grad, reference);
        if rel > 1e-6 {
            failures.push(format!("{name}: relative difference {rel:e}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    for (name, reference) in &plain.buffers {
        assert!(ckpt.buffers[name].equal(reference), "buffer {name} differs");
    }
    assert!(
        ckpt.next_draws.equal(&plain.next_draws),
        "the dropout generator ends elsewhere"
    );
    plain
}

#[test]
fn the_unets_gradients_are_the_same_with_checkpointing() {
    assert_checkpointing_changes_nothing(&ModelConfig::Ddpm(tiny_unet(0.0)));
}

#[test]
fn the_unets_gradients_are_the_same_with_checkpointing_and_dropout() {
    let with = assert_checkpointing_changes_nothing(&ModelConfig::Ddpm(tiny_unet(0.1)));
    // The masks were drawn (so the replay had something to replay): without dropout the pass
    // differs and the generator is not advanced.
    let without = train_pass(&ModelConfig::Ddpm(tiny_unet(0.0)));
    assert!(!with.output.equal(&without.output));
    assert!(!with.next_draws.equal(&without.next_draws));
}

#[test]
fn the_simple_unets_gradients_and_batch_norm_state_are_the_same_with_checkpointing() {
    let plain = assert_checkpointing_changes_nothing(&ModelConfig::Simple(tiny_simple()));
    // The first pass updated the running statistics once, and the replay did not again.
    let tracked = &plain.buffers["downs.0.bnorm1.num_batches_tracked"];
    assert_eq!(tracked.int64_value(&[]), 1);
}

#[test]
fn sampling_passes_need_no_generator_and_ignore_checkpointing() {
    let config = ModelConfig::Ddpm(tiny_unet(0.1));
    let outputs: Vec<Tensor> = [false, true]
        .iter()
        .map(|&on| {
            let vs = VarStore::new(Device::Cpu);
            let net = with_checkpointing(&config, on)
                .build_with(&vs.root(), &mut Generator::cpu(3))
                .unwrap();
            let xs = Tensor::ones([1, 3, 16, 16], (Kind::Float, Device::Cpu));
            net.forward_t(&xs, &Tensor::from_slice(&[5i64]), false)
        })
        .collect();
    assert!(outputs[0].equal(&outputs[1]));
}

#[test]
fn a_training_pass_draws_its_masks_from_the_given_generator_only() {
    let vs = VarStore::new(Device::Cpu);
    let net = ModelConfig::Ddpm(tiny_unet(0.5))
        .build_with(&vs.root(), &mut Generator::cpu(3))
        .unwrap();
    tch::no_grad(|| {
        for mut var in vs.trainable_variables() {
            let _ = var.normal_(0.0, 0.1);
        }
    });
    let xs = Tensor::ones([1, 3, 16, 16], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[5i64]);
    let run = |seed| net.forward_train(&xs, &t, None, &mut Generator::cpu(seed));
    let a = run(1);
    // Whatever the global generator does in between, the same seed gives the same masks.
    tch::manual_seed(123);
    let _ = Tensor::rand([1000], (Kind::Float, Device::Cpu));
    assert!(run(1).equal(&a));
    assert!(!run(2).equal(&a));
}
