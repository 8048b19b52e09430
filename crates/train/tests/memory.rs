//! `train::memory::measure` (`ddpm model memory`) on a tiny configuration: the counted bytes
//! agree with the network's parameter count, and the measured activation peak is positive,
//! grows with the network's width, and is scaled by the micro-batch. Its own test binary: the
//! CPU measurement reads the process's resident high-water mark, which other tests running on
//! parallel threads would move.

mod common;
use common::{tiny_config, tiny_unet};

use model::ModelConfig;
use tch::nn::VarStore;
use tch::Device;
use train::config::TrainConfig;
use train::memory::measure;

#[test]
fn the_memory_report_counts_the_tensors_and_measures_the_activations() {
    let config = TrainConfig {
        model: tiny_unet(0.0),
        grad_accum: 2,
        ..tiny_config()
    };
    let report = measure(&config, 2, Device::Cpu).unwrap();
    let vs = VarStore::new(Device::Cpu);
    config.model.build(&vs.root()).unwrap();
    let n_params: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    assert_eq!(report.n_params, n_params as u64);
    assert_eq!(report.param_bytes, 4 * report.n_params);
    assert_eq!(report.grad_bytes, report.param_bytes);
    assert_eq!(
        report.optimizer_bytes,
        2 * report.param_bytes,
        "Adam's two moments"
    );
    assert_eq!(report.buffer_bytes, 0, "GroupNorm has no buffers");
    assert_eq!(report.ema_bytes, report.param_bytes);
    assert_eq!(
        report.micro_batch, 4,
        "16 images / (2 micro-batches × 2 ranks)"
    );
    assert!(report.activation_bytes_per_image > 0);
    assert_eq!(
        report.activation_bytes(),
        4 * report.activation_bytes_per_image
    );
    assert_eq!(
        report.total_bytes(),
        report.param_bytes
            + report.grad_bytes
            + report.optimizer_bytes
            + report.ema_bytes
            + report.activation_bytes()
    );
    // A 16 times larger image (32×32 instead of 8×8) and 4 times the channels: the
    // activations grow with them.
    let ModelConfig::Ddpm(mut unet) = tiny_unet(0.0) else {
        unreachable!("tiny_unet is the paper's U-Net");
    };
    unet.image_size = 32;
    unet.channels = 32;
    unet.norm_num_groups = 8;
    unet.attention_resolutions = vec![16];
    let wide = TrainConfig {
        model: ModelConfig::Ddpm(unet),
        transform: data::TransformConfig {
            size: Some([32, 32]),
            ..config.transform.clone()
        },
        ..config.clone()
    };
    let big = measure(&wide, 2, Device::Cpu).unwrap();
    eprintln!(
        "activation bytes per image: tiny {} B, wide {} B",
        report.activation_bytes_per_image, big.activation_bytes_per_image
    );
    assert!(
        big.activation_bytes_per_image > 8 * report.activation_bytes_per_image,
        "{} vs {}",
        big.activation_bytes_per_image,
        report.activation_bytes_per_image
    );
    // A batch that does not split is refused before anything is built.
    let err = measure(&config, 3, Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("grad_accum = 2 micro-batches × 3 ranks"),
        "{err}"
    );
}
