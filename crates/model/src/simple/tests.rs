//! The notebook's U-Net: Keras padding, parameter counts of the presets, kernel layouts, BatchNorm
//! statistics, config validation.

use super::*;
use tch::nn::VarStore;
use tch::Device;

#[test]
fn keras_same_padding_matches_tensorflow() {
    // TF: out = ceil(n / s), total = max((out - 1) * s + k - n, 0), the odd pixel after.
    assert_eq!(keras_same_padding(28, 3, 1), (1, 1));
    assert_eq!(keras_same_padding(28, 4, 2), (1, 1));
    assert_eq!(keras_same_padding(14, 4, 2), (1, 1));
    assert_eq!(keras_same_padding(7, 4, 2), (1, 2));
    assert_eq!(keras_same_padding(28, 1, 1), (0, 0));
    assert_eq!(keras_same_padding(5, 2, 2), (0, 1));
}

#[test]
fn seed_cifar10_has_the_notebooks_parameter_count() {
    let vs = VarStore::new(Device::Cpu);
    let config = SimpleUnetConfig::seed_cifar10();
    let _net = config.build(&vs.root()).unwrap();
    assert_eq!(crate::parameter_count(&vs), 3_482_231);
    // The BatchNorm statistics are buffers, not parameters: 4 per block, 2 blocks each way.
    assert_eq!(
        vs.variables().len() - vs.trainable_variables().len(),
        3 * 2 * 2 * 2
    );
}

#[test]
fn kernels_are_channels_last_on_the_cpu_and_every_kernel_is_listed() {
    let vs = VarStore::new(Device::Cpu);
    let net = SimpleUnetConfig::seed_cifar10().build(&vs.root()).unwrap();
    let n_kernels = vs.variables().values().filter(|v| v.dim() == 4).count();
    assert_eq!(net.conv_kernels().len(), n_kernels);
    for (name, var) in vs.variables() {
        assert_eq!(is_channels_last(&var), var.dim() == 4, "{name}");
    }
}

#[test]
fn other_presets_have_the_pytorch_ports_parameter_counts() {
    // Counted by scripts/golden/model_simple.py's independent port.
    for (config, expected) in [
        (SimpleUnetConfig::fashion_mnist(), 236_113),
        (SimpleUnetConfig::seed_large(), 62_229_111),
    ] {
        let vs = VarStore::new(Device::Cpu);
        let _net = config.build(&vs.root()).unwrap();
        assert_eq!(crate::parameter_count(&vs), expected, "{config:?}");
    }
}

#[test]
fn grayscale_preset_keeps_its_channel_count() {
    let vs = VarStore::new(Device::Cpu);
    let net = SimpleUnetConfig::fashion_mnist().build(&vs.root()).unwrap();
    let xs = Tensor::randn([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let out = net.forward_t(&xs, &Tensor::from_slice(&[0i64, 299]), false);
    assert_eq!(out.size(), [2, 1, 28, 28]);
}

#[test]
fn batch_norm_statistics_move_only_in_train_mode() {
    let vs = VarStore::new(Device::Cpu);
    let net = SimpleUnetConfig::fashion_mnist().build(&vs.root()).unwrap();
    let running_mean = vs.variables()["downs.0.bnorm1.running_mean"].copy();
    let counter = vs.variables()["downs.0.bnorm1.num_batches_tracked"].shallow_clone();
    let xs = Tensor::randn([4, 1, 28, 28], (Kind::Float, Device::Cpu));
    let ts = Tensor::from_slice(&[1i64, 2, 3, 4]);
    let eval_a = net.forward_t(&xs, &ts, false);
    assert!(vs.variables()["downs.0.bnorm1.running_mean"].equal(&running_mean));
    assert_eq!(counter.int64_value(&[]), 0);
    let _ = net.forward_t(&xs, &ts, true);
    assert!(!vs.variables()["downs.0.bnorm1.running_mean"].equal(&running_mean));
    assert_eq!(counter.int64_value(&[]), 1);
    // Eval mode is deterministic and uses the (now updated) running statistics.
    let eval_b = net.forward_t(&xs, &ts, false);
    assert!(!eval_a.equal(&eval_b));
    assert!(eval_b.equal(&net.forward_t(&xs, &ts, false)));
}

#[test]
fn invalid_configs_are_rejected_with_the_field_named() {
    let check = |config: SimpleUnetConfig, needle: &str| {
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains(needle), "{err}");
    };
    let base = SimpleUnetConfig::seed_cifar10();
    check(
        SimpleUnetConfig {
            image_size: 30,
            ..base.clone()
        },
        "image_size 30 must be a multiple of 4",
    );
    check(
        SimpleUnetConfig {
            image_size: 28,
            ..SimpleUnetConfig::seed_large()
        },
        "multiple of 16",
    );
    check(
        SimpleUnetConfig {
            up_channels: vec![256, 128],
            ..base.clone()
        },
        "up_channels has 2 entries",
    );
    check(
        SimpleUnetConfig {
            up_channels: vec![512, 128, 28],
            ..base.clone()
        },
        "bottleneck",
    );
    check(
        SimpleUnetConfig {
            time_emb_dim: 7,
            ..base.clone()
        },
        "time_emb_dim",
    );
    check(
        SimpleUnetConfig {
            in_channels: 0,
            ..base.clone()
        },
        "in_channels",
    );
    check(
        SimpleUnetConfig {
            batch_norm_momentum: 0.99 + 1.0,
            ..base.clone()
        },
        "batch_norm_momentum",
    );
    check(
        SimpleUnetConfig {
            down_channels: vec![28],
            up_channels: vec![28],
            ..base
        },
        "down_channels",
    );
}

#[test]
fn the_large_preset_builds_and_runs() {
    let vs = VarStore::new(Device::Cpu);
    let config = SimpleUnetConfig::seed_large();
    let net = config.build(&vs.root()).unwrap();
    let xs = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let out = tch::no_grad(|| net.forward_t(&xs, &Tensor::from_slice(&[10i64]), false));
    assert_eq!(out.size(), [1, 3, 64, 64]);
}
