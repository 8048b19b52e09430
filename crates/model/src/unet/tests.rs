//! The paper's U-Net: parameter counts and diffusers names, the near-zero init of residual
//! branches, kernel layouts, output shape, dropout.

use super::*;
use crate::init::testing::wake_up;
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
fn ho2020_256_has_the_released_weights_parameter_count() {
    // diffusers' UNet2DModel with google/ddpm-church-256's config.json counts 113,673,219
    // parameters in 450 tensors.
    let vs = VarStore::new(Device::Cpu);
    let _net = UNetConfig::ho2020_256().build(&vs.root()).unwrap();
    assert_eq!(crate::parameter_count(&vs), 113_673_219);
    let vars = vs.variables();
    assert_eq!(vars.len(), 450);
    for (name, shape) in [
        ("down_blocks.4.attentions.1.to_q.weight", vec![512, 512]),
        ("down_blocks.5.resnets.1.conv2.weight", vec![512, 512, 3, 3]),
        ("up_blocks.1.attentions.2.to_v.weight", vec![512, 512]),
        ("up_blocks.5.resnets.2.conv1.weight", vec![128, 256, 3, 3]),
    ] {
        assert_eq!(vars.get(name).map(Tensor::size), Some(shape), "{name}");
    }
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
