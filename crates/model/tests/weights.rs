//! Loading weights checks every key: missing, unexpected, mis-shaped and mis-typed tensors are
//! listed, nothing is loaded from a file that does not fit, and unreadable files are named.

mod common;

use common::fixture;
use model::{load_safetensors, save_safetensors, ModelConfig, ModelError, SimpleUnetConfig};
use std::collections::BTreeMap;
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn tiny() -> (VarStore, Box<dyn model::Denoiser>) {
    let config = ModelConfig::from_json_file(&fixture("simple_tiny_config.json")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let net = config.build(&vs.root()).unwrap();
    (vs, net)
}

fn fixture_tensors() -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(fixture("simple_tiny.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn write(path: &Path, tensors: &BTreeMap<String, Tensor>) {
    let list: Vec<(&String, &Tensor)> = tensors.iter().collect();
    Tensor::write_safetensors(&list, path).unwrap();
}

/// A copy of every variable, to check that a failed load changed nothing.
fn snapshot(vs: &VarStore) -> BTreeMap<String, Tensor> {
    vs.variables()
        .into_iter()
        .map(|(k, v)| (k, v.copy()))
        .collect()
}

fn assert_unchanged(vs: &VarStore, before: &BTreeMap<String, Tensor>) {
    for (name, var) in vs.variables() {
        assert!(
            var.equal(&before[&name]),
            "{name} changed although the load failed"
        );
    }
}

#[test]
fn every_kind_of_mismatch_is_listed_and_nothing_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let mut tensors = fixture_tensors();
    tensors.remove("downs.1.conv2.weight");
    tensors.remove("ups.0.bnorm1.running_var");
    tensors.insert(
        "downs.1.conv3.weight".into(),
        Tensor::zeros([2, 2], (Kind::Float, Device::Cpu)),
    );
    tensors.insert(
        "output.weight".into(),
        Tensor::zeros([3, 4, 3, 3], (Kind::Float, Device::Cpu)),
    );
    tensors.insert(
        "conv0.bias".into(),
        Tensor::zeros([4], (Kind::Int64, Device::Cpu)),
    );
    write(&path, &tensors);

    let (mut vs, _net) = tiny();
    let before = snapshot(&vs);
    let err = load_safetensors(&mut vs, &path).unwrap_err();
    let ModelError::Mismatch {
        path: err_path,
        mismatch,
    } = &err
    else {
        panic!("{err}")
    };
    assert_eq!(err_path, &path);
    assert_eq!(
        mismatch.missing,
        ["downs.1.conv2.weight", "ups.0.bnorm1.running_var"]
    );
    assert_eq!(mismatch.unexpected, ["downs.1.conv3.weight"]);
    assert_eq!(mismatch.wrong_shape.len(), 1);
    assert_eq!(mismatch.wrong_shape[0].name, "output.weight");
    assert_eq!(mismatch.wrong_shape[0].expected, [3, 4, 1, 1]);
    assert_eq!(mismatch.wrong_shape[0].found, [3, 4, 3, 3]);
    assert_eq!(mismatch.wrong_dtype.len(), 1);
    assert_eq!(mismatch.wrong_dtype[0].0, "conv0.bias");
    let message = err.to_string();
    for needle in [
        "bad.safetensors",
        "nothing was loaded",
        "2 missing (downs.1.conv2.weight, ups.0.bnorm1.running_var)",
        "1 unexpected (downs.1.conv3.weight)",
        "output.weight: model [3, 4, 1, 1], file [3, 4, 3, 3]",
        "conv0.bias: Int64 for a Float variable",
    ] {
        assert!(message.contains(needle), "`{needle}` not in: {message}");
    }
    assert_unchanged(&vs, &before);
}

#[test]
fn a_single_missing_key_is_enough_to_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("partial.safetensors");
    let mut tensors = fixture_tensors();
    tensors.remove("time_mlp.1.bias");
    write(&path, &tensors);
    let (mut vs, _net) = tiny();
    let before = snapshot(&vs);
    let err = load_safetensors(&mut vs, &path).unwrap_err().to_string();
    assert!(err.contains("1 missing (time_mlp.1.bias)"), "{err}");
    assert_unchanged(&vs, &before);
}

#[test]
fn corrupt_and_absent_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let (mut vs, _net) = tiny();

    let truncated = dir.path().join("truncated.safetensors");
    let bytes = std::fs::read(fixture("simple_tiny.safetensors")).unwrap();
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = load_safetensors(&mut vs, &truncated).unwrap_err();
    assert!(matches!(err, ModelError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("truncated.safetensors is not a valid safetensors file"),
        "{err}"
    );

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not a tensor file").unwrap();
    let err = load_safetensors(&mut vs, &garbage).unwrap_err();
    assert!(
        matches!(err, ModelError::Corrupt { .. })
            && err.to_string().contains("garbage.safetensors"),
        "{err}"
    );

    let absent = dir.path().join("absent.safetensors");
    let err = load_safetensors(&mut vs, &absent).unwrap_err();
    assert!(
        matches!(err, ModelError::Read { .. }) && err.to_string().contains("absent.safetensors"),
        "{err}"
    );
}

#[test]
fn half_precision_files_load_into_f32_variables() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bf16.safetensors");
    let tensors: BTreeMap<String, Tensor> = fixture_tensors()
        .into_iter()
        .map(|(k, v)| {
            if v.is_floating_point() {
                (k, v.to_kind(Kind::BFloat16))
            } else {
                (k, v)
            }
        })
        .collect();
    write(&path, &tensors);
    let (mut vs, _net) = tiny();
    load_safetensors(&mut vs, &path).unwrap();
    let vars = vs.variables();
    assert_eq!(vars["conv0.weight"].kind(), Kind::Float);
    assert!(vars["conv0.weight"].equal(&tensors["conv0.weight"].to_kind(Kind::Float)));
}

#[test]
fn save_then_load_restores_every_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let vs = VarStore::new(Device::Cpu);
    let _net = SimpleUnetConfig::fashion_mnist().build(&vs.root()).unwrap();
    save_safetensors(&vs, &path).unwrap();
    assert!(!dir.path().join("model.safetensors.partial").exists());
    let mut other = VarStore::new(Device::Cpu);
    let _net2 = SimpleUnetConfig::fashion_mnist()
        .build(&other.root())
        .unwrap();
    load_safetensors(&mut other, &path).unwrap();
    for (name, var) in vs.variables() {
        assert!(other.variables()[&name].equal(&var), "{name}");
    }
    // A file for another architecture is refused with its keys listed.
    let mut unet_vs = VarStore::new(Device::Cpu);
    let tiny_unet = model::UNetConfig {
        image_size: 16,
        channels: 8,
        channel_mult: vec![1, 2],
        attention_resolutions: vec![],
        norm_num_groups: 4,
        ..model::UNetConfig::ho2020_cifar10()
    };
    let _unet = tiny_unet.build(&unet_vs.root()).unwrap();
    let err = load_safetensors(&mut unet_vs, &path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing (conv_in.bias") && err.contains("unexpected (conv0.bias"),
        "{err}"
    );
}

#[test]
fn writing_into_a_missing_directory_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/dir/model.safetensors");
    let (vs, _net) = tiny();
    let err = save_safetensors(&vs, &path).unwrap_err();
    // A file-system failure keeps its io::Error (whose kind tells a full disk from others).
    assert!(
        matches!(&err, ModelError::WriteIo { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
        "{err}"
    );
    assert!(
        err.to_string().contains("no/such/dir/model.safetensors"),
        "{err}"
    );
}
