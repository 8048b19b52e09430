//! The networks on CUDA: the same outputs as on the CPU in f32 (both memory formats), bf16
//! autocast that really runs in bf16 and stays close to f32, and weights that load onto the GPU.
//!
//! `cargo test -p model --features cuda-tests --test cuda` on a machine with a CUDA device.

#![cfg(feature = "cuda-tests")]

mod common;

use common::{fixture, max_abs_diff, read_tensors};
use model::{
    autocast_bf16, cuda_autocast_kind, load_safetensors, save_safetensors, set_memory_format,
    Denoiser, MemoryFormat, ModelConfig,
};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn cuda() -> Device {
    assert!(
        tch::Cuda::is_available(),
        "the cuda-tests feature needs a CUDA device"
    );
    Device::Cuda(0)
}

fn build(
    config_file: &str,
    weights: &str,
    device: Device,
    format: MemoryFormat,
) -> (VarStore, Box<dyn Denoiser>) {
    let config = ModelConfig::from_json_file(&fixture(config_file)).unwrap();
    let mut vs = VarStore::new(device);
    let net = config.build(&vs.root()).unwrap();
    set_memory_format(&vs, format);
    load_safetensors(&mut vs, &fixture(weights)).unwrap();
    (vs, net)
}

#[test]
fn both_networks_match_their_references_on_cuda_in_f32() {
    let device = cuda();
    // libtorch lets cuDNN convolutions use TF32 (10-bit mantissa) by default, and tch cannot turn
    // it off: the tolerance is relative to the output's scale, not the CPU test's 1e-4.
    let close = |out: &Tensor, reference: &Tensor, what: &str| {
        let err = max_abs_diff(&out.to(Device::Cpu), reference);
        let scale = reference.abs().max().double_value(&[]);
        assert!(
            err <= 5e-3 * scale.max(1.0),
            "{what}: max abs error {err:e} against a scale of {scale}"
        );
    };
    for format in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
        let io = read_tensors("unet_tiny_io.safetensors");
        let (_vs, net) = build(
            "unet_tiny/config.json",
            "unet_tiny/diffusion_pytorch_model.safetensors",
            device,
            format,
        );
        let out =
            tch::no_grad(|| net.forward_t(&io["x"].to(device), &io["timesteps"].to(device), false));
        close(&out, &io["out"], &format!("ddpm {format:?}"));

        let io = read_tensors("simple_tiny_io.safetensors");
        let (_vs, net) = build(
            "simple_tiny_config.json",
            "simple_tiny.safetensors",
            device,
            format,
        );
        let out =
            tch::no_grad(|| net.forward_t(&io["x"].to(device), &io["timesteps"].to(device), false));
        close(&out, &io["out_eval"], &format!("simple {format:?}"));
    }
}

#[test]
fn bf16_autocast_runs_in_bf16_and_stays_close_to_f32() {
    let device = cuda();
    let io = read_tensors("unet_tiny_io.safetensors");
    let (_vs, net) = build(
        "unet_tiny/config.json",
        "unet_tiny/diffusion_pytorch_model.safetensors",
        device,
        MemoryFormat::ChannelsLast,
    );
    let (xs, ts) = (io["x"].to(device), io["timesteps"].to(device));
    let before = cuda_autocast_kind();
    let (out, inner_kind, matmul_kind) = autocast_bf16(device, || {
        let probe = Tensor::ones([4, 4], (Kind::Float, device));
        (
            tch::no_grad(|| net.forward_t(&xs, &ts, false)),
            cuda_autocast_kind(),
            probe.matmul(&probe).kind(),
        )
    });
    assert_eq!(inner_kind, Kind::BFloat16);
    assert_eq!(
        matmul_kind,
        Kind::BFloat16,
        "autocast must cast matmuls to bf16"
    );
    assert_eq!(
        cuda_autocast_kind(),
        before,
        "the previous autocast dtype is restored"
    );
    // The network hands back its input's kind, and bf16 keeps about 3 significant digits.
    assert_eq!(out.kind(), Kind::Float);
    let reference = &io["out"];
    let err = max_abs_diff(&out.to(Device::Cpu), reference);
    let scale = reference.abs().max().double_value(&[]);
    assert!(
        err <= 0.05 * scale,
        "bf16 max abs error {err:e} against a scale of {scale}"
    );
}

#[test]
fn training_steps_run_under_autocast_and_weights_round_trip_through_the_gpu() {
    let device = cuda();
    let config = ModelConfig::from_json_file(&fixture("simple_tiny_config.json")).unwrap();
    let vs = VarStore::new(device);
    let net = config.build(&vs.root()).unwrap();
    let xs = Tensor::randn([8, 3, 16, 16], (Kind::Float, device));
    let ts = Tensor::randint(300, [8], (Kind::Int64, device));
    let out = autocast_bf16(device, || net.forward_t(&xs, &ts, true));
    let loss = out.mse_loss(&xs, tch::Reduction::Mean);
    let params = vs.trainable_variables();
    let grads = Tensor::run_backward(&[&loss], &params, false, false);
    assert_eq!(grads.len(), params.len(), "one gradient per parameter");
    for (p, g) in params.iter().zip(&grads) {
        assert_eq!(
            g.kind(),
            p.kind(),
            "gradients of f32 master weights are f32"
        );
        assert!(bool::try_from(g.isfinite().all()).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_safetensors(&vs, &path).unwrap();
    let mut cpu = VarStore::new(Device::Cpu);
    let _cpu_net = config.build(&cpu.root()).unwrap();
    load_safetensors(&mut cpu, &path).unwrap();
    for (name, var) in vs.variables() {
        assert!(cpu.variables()[&name].equal(&var.to(Device::Cpu)), "{name}");
    }
}
