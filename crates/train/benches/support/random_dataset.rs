//! Random u8 images of a training configuration's shape, for benches that need a `Dataset`
//! (`benches/step.rs`, `examples/bench_serve.rs`, included by `#[path]`).

use data::Dataset;
use tch::{Device, Kind, Tensor};
use train::TrainConfig;

/// Eight batches of random images, stored at the size the configuration's transform reads
/// (CIFAR's 32×32 when it resizes, else the model's size), drawn from libtorch's generator.
pub fn random_dataset(config: &TrainConfig) -> Dataset {
    let c = config.model.in_channels() as usize;
    let stored = if config.transform.size.is_some() {
        32
    } else {
        config.model.image_size() as usize
    };
    let n = config.batch_size * 8;
    let pixels: Vec<u8> = Vec::try_from(Tensor::randint(
        256,
        [(n * c * stored * stored) as i64],
        (Kind::Uint8, Device::Cpu),
    ))
    .expect("u8 pixels");
    Dataset::new(pixels, vec![0; n], c, stored, stored, vec!["x".into()]).expect("a dataset")
}
