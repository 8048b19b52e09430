//! The notebook's SimpleUnet against a PyTorch port of it: the same outputs from the same weights
//! in eval mode (running statistics) and train mode (batch statistics), and the same running
//! statistics after a training pass.
//!
//! Fixtures: `scripts/golden/model_simple.py`.

mod common;

use common::{assert_gradients_match, export_dir, fixture, max_abs_diff, read_tensors};
use model::{
    load_safetensors, save_safetensors, set_memory_format, Denoiser, MemoryFormat, ModelConfig,
};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn tiny_from_fixture(format: MemoryFormat) -> (VarStore, Box<dyn Denoiser>) {
    let config = ModelConfig::from_json_file(&fixture("simple_tiny_config.json")).unwrap();
    assert_eq!(config.arch(), "simple");
    let mut vs = VarStore::new(Device::Cpu);
    let net = config.build(&vs.root()).unwrap();
    set_memory_format(&vs, format);
    load_safetensors(&mut vs, &fixture("simple_tiny.safetensors")).unwrap();
    (vs, net)
}

#[test]
fn eval_output_matches_the_pytorch_port() {
    let io = read_tensors("simple_tiny_io.safetensors");
    for format in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
        let (_vs, net) = tiny_from_fixture(format);
        let out = tch::no_grad(|| net.forward_t(&io["x"], &io["timesteps"], false));
        let err = max_abs_diff(&out, &io["out_eval"]);
        eprintln!("{format:?}: max abs error {err:e}");
        assert!(err <= TOLERANCE, "{format:?}: max abs error {err:e}");
    }
}

/// Train mode: batch statistics, the running statistics' update, and the backward pass (whose
/// in-place ReLU and additions must not disturb autograd).
#[test]
fn train_mode_forward_backward_and_running_statistics_match_pytorch() {
    let io = read_tensors("simple_tiny_io.safetensors");
    for format in [MemoryFormat::Contiguous, MemoryFormat::ChannelsLast] {
        let (vs, net) = tiny_from_fixture(format);
        let out = net.forward_t(&io["x"], &io["timesteps"], true);
        let err = max_abs_diff(&out, &io["out_train"]);
        eprintln!("{format:?}: max abs error {err:e}");
        assert!(err <= TOLERANCE, "{format:?}: max abs error {err:e}");
        let vars = vs.variables();
        assert_gradients_match(&vars, &out, &io, &format!("{format:?}"));
        for name in [
            "downs.0.bnorm1.running_mean",
            "downs.0.bnorm1.running_var",
            "ups.2.bnorm2.running_var",
        ] {
            let err = max_abs_diff(&vars[name], &io[name]);
            assert!(err <= 1e-6, "{name}: max abs error {err:e}");
        }
        // The port's counters were 7 and PyTorch adds one per training pass.
        assert_eq!(
            vars["downs.1.bnorm2.num_batches_tracked"].int64_value(&[]),
            8
        );
        assert_eq!(
            vars["downs.1.bnorm2.num_batches_tracked"].kind(),
            Kind::Int64
        );
    }
}

#[test]
fn saved_weights_have_the_pytorch_key_set() {
    let (vs, _net) = tiny_from_fixture(MemoryFormat::ChannelsLast);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    save_safetensors(&vs, &path).unwrap();
    let saved: std::collections::BTreeMap<String, Tensor> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .collect();
    let original: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(fixture("simple_tiny.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(
        saved.keys().collect::<Vec<_>>(),
        original.keys().collect::<Vec<_>>()
    );
    for (name, tensor) in &original {
        assert_eq!(saved[name].kind(), tensor.kind(), "{name}");
        assert!(saved[name].equal(tensor), "{name}");
    }
}

/// Writes a freshly initialised tiny SimpleUnet, trained for one BatchNorm pass, with its config
/// and eval-mode output for `scripts/golden/model_simple.py --verify`.
#[test]
#[ignore = "writes target/model-export/simple for `scripts/golden/model_simple.py --verify`"]
fn export() {
    tch::manual_seed(11);
    let config = ModelConfig::from_json_file(&fixture("simple_tiny_config.json")).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let net = config.build(&vs.root()).unwrap();
    let xs = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
    let ts = Tensor::from_slice(&[3i64, 50, 120, 299]);
    let _ = tch::no_grad(|| net.forward_t(&(&xs * 2.0 + 0.5), &ts, true));
    let out = net.forward_t(&xs, &ts, false);
    let dir = export_dir("simple");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_json()).unwrap();
    save_safetensors(&vs, &dir.join("model.safetensors")).unwrap();
    Tensor::write_safetensors(
        &[("x", &xs), ("timesteps", &ts), ("out", &out.contiguous())],
        dir.join("io.safetensors"),
    )
    .unwrap();
    eprintln!("wrote {}", dir.display());
}
