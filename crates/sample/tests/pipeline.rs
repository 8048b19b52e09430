//! `sample::Pipeline` on diffusers folders made by diffusers itself
//! (`scripts/golden/diffusers_folders.py`): a legacy pipeline folder (`unet/` with a `.bin` state
//! dict under the deprecated attention names, `scheduler/`) and a modern model folder
//! (safetensors), against diffusers' outputs on fixed inputs; the export round trip; bad input.

use std::path::{Path, PathBuf};

use e2e::{copy_dir, verify_in_diffusers};
use model::ModelConfig;
use model::Prediction;
use sample::pipeline::{DIFFUSERS_BIN, DIFFUSERS_CONFIG, DIFFUSERS_SAFETENSORS, SCHEDULER_CONFIG};
use sample::{Pipeline, PipelineSpec, SourceKind, Weights};
use schedule::BetaSchedule;
use tch::{Device, Kind, Tensor};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/diffusers")
}

fn io() -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("io.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// The network's eval-mode output on the fixture's inputs.
fn output(pipe: &Pipeline) -> Tensor {
    let io = io();
    tch::no_grad(|| pipe.net.forward_t(&io["x"], &io["timesteps"], false))
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().to_kind(Kind::Double).double_value(&[])
}

#[test]
fn a_modern_diffusers_folder_loads_with_its_scheduler_and_matches_diffusers() {
    let pipe = Pipeline::load(&fixtures().join("modern"), Weights::Ema, Device::Cpu).unwrap();
    let spec = &pipe.spec;
    assert_eq!(
        spec.kind,
        SourceKind::Diffusers {
            scheduler_config: Some(fixtures().join("modern").join(SCHEDULER_CONFIG))
        }
    );
    assert_eq!(
        spec.weights_file,
        fixtures().join("modern").join(DIFFUSERS_SAFETENSORS)
    );
    assert_eq!(
        spec.schedule,
        BetaSchedule::Quadratic {
            n_steps: 500,
            start: 0.00085,
            end: 0.012
        }
    );
    assert_eq!((spec.prediction, spec.clip_sample), (Prediction::V, false));
    assert!(matches!(spec.model, ModelConfig::Ddpm(_)));
    let err = max_abs_diff(&output(&pipe), &io()["out_modern"]);
    println!("modern folder vs diffusers: max abs error {err:.3e}");
    assert!(err <= 1e-5, "{err}");
}

#[test]
fn a_legacy_pipeline_folder_with_a_bin_state_dict_matches_diffusers() {
    let root = fixtures().join("legacy_pipeline");
    let pipe = Pipeline::load(&root, Weights::Ema, Device::Cpu).unwrap();
    let spec = &pipe.spec;
    assert_eq!(spec.dir, root.join("unet"));
    assert_eq!(spec.weights_file, root.join("unet").join(DIFFUSERS_BIN));
    assert_eq!(
        spec.kind,
        SourceKind::Diffusers {
            scheduler_config: Some(root.join("scheduler").join(SCHEDULER_CONFIG))
        }
    );
    assert_eq!(
        spec.schedule,
        BetaSchedule::Linear {
            n_steps: 1000,
            start: 1e-4,
            end: 0.02
        }
    );
    assert_eq!((spec.prediction, spec.clip_sample), (Prediction::Eps, true));
    let err = max_abs_diff(&output(&pipe), &io()["out_legacy"]);
    println!("legacy folder vs diffusers: max abs error {err:.3e}");
    assert!(err <= 1e-5, "{err}");
}

#[test]
fn sampling_from_a_diffusers_folder_is_reproducible() {
    let pipe = Pipeline::load(&fixtures().join("modern"), Weights::Ema, Device::Cpu).unwrap();
    let ddim = sample::SamplerConfig::Ddim {
        steps: 4,
        eta: 0.0,
        spacing: schedule::TimestepSpacing::Trailing,
        timesteps: None,
    };
    let a = pipe.generate(&ddim, 3, 5).unwrap();
    assert_eq!(a.size(), [3, 3, 8, 8]);
    assert!(bool::try_from(a.isfinite().all()).unwrap());
    assert_eq!(max_abs_diff(&a, &pipe.generate(&ddim, 3, 5).unwrap()), 0.0);
    assert!(max_abs_diff(&a, &pipe.generate(&ddim, 3, 6).unwrap()) > 0.0);
}

/// Exports `source`, reloads the export here, and (when diffusers is importable) loads it with
/// diffusers in the checked-in script, comparing both outputs with the source network's.
fn round_trip(source: &Path) {
    let pipe = Pipeline::load(source, Weights::Ema, Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exported");
    pipe.export_diffusers(&out).unwrap();
    for file in [DIFFUSERS_CONFIG, DIFFUSERS_SAFETENSORS, SCHEDULER_CONFIG] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let back = Pipeline::load(&out, Weights::Ema, Device::Cpu).unwrap();
    assert_eq!(back.spec.model, pipe.spec.model);
    assert_eq!(back.spec.schedule, pipe.spec.schedule);
    assert_eq!(back.spec.prediction, pipe.spec.prediction);
    let expected = output(&pipe);
    assert_eq!(max_abs_diff(&output(&back), &expected), 0.0);
    // Modern names only.
    let names: Vec<String> = Tensor::read_safetensors(out.join(DIFFUSERS_SAFETENSORS))
        .unwrap()
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(names.iter().any(|n| n.contains(".to_q.")), "{names:?}");
    assert!(!names
        .iter()
        .any(|n| n.contains(".query.") || n.contains("proj_attn")));

    let io = io();
    let io_file = dir.path().join("io.safetensors");
    let betas = Tensor::from_slice(pipe.schedule.betas());
    Tensor::write_safetensors(
        &[
            ("x", &io["x"]),
            ("timesteps", &io["timesteps"]),
            ("out", &expected),
            ("betas", &betas),
        ],
        &io_file,
    )
    .unwrap();
    verify_in_diffusers(&out, &io_file, "the export");
}

#[test]
fn a_legacy_folder_exports_with_modern_names_that_diffusers_loads() {
    round_trip(&fixtures().join("legacy_pipeline"));
}

#[test]
fn a_modern_folder_exports_and_diffusers_loads_it() {
    round_trip(&fixtures().join("modern"));
}

#[test]
fn weights_that_do_not_fit_the_config_name_the_file_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("m");
    copy_dir(&fixtures().join("modern"), &folder);
    let config_path = folder.join(DIFFUSERS_CONFIG);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["block_out_channels"] = serde_json::json!([8, 32]);
    std::fs::write(&config_path, config.to_string()).unwrap();
    // The config is valid on its own, so the spec resolves; the weights are refused on load.
    PipelineSpec::resolve(&folder, Weights::Ema).unwrap();
    let err = Pipeline::load(&folder, Weights::Ema, Device::Cpu).unwrap_err();
    // The details are in the source, as `{:#}` prints the chain.
    let err = format!(
        "{err}: {}",
        std::error::Error::source(&err).expect("a source error")
    );
    assert!(
        err.contains(DIFFUSERS_SAFETENSORS) && err.contains("down_blocks.1.resnets.0.conv1.weight"),
        "{err}"
    );
}

#[test]
fn a_bin_that_is_not_a_state_dict_is_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("unet");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(
        fixtures()
            .join("legacy_pipeline/unet")
            .join(DIFFUSERS_CONFIG),
        folder.join(DIFFUSERS_CONFIG),
    )
    .unwrap();
    std::fs::copy(
        fixtures().join("not_a_state_dict.bin"),
        folder.join(DIFFUSERS_BIN),
    )
    .unwrap();
    let err = Pipeline::load(&folder, Weights::Ema, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(DIFFUSERS_BIN) && err.contains("state dict"),
        "{err}"
    );
    std::fs::write(folder.join(DIFFUSERS_BIN), b"garbage, not a pickle").unwrap();
    let err = Pipeline::load(&folder, Weights::Ema, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains(DIFFUSERS_BIN), "{err}");
}

#[test]
fn an_unsupported_block_type_is_refused_before_any_work_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("m");
    copy_dir(&fixtures().join("modern"), &folder);
    let config_path = folder.join(DIFFUSERS_CONFIG);
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["down_block_types"][1] = serde_json::json!("CrossAttnDownBlock2D");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let err = PipelineSpec::resolve(&folder, Weights::Ema)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(DIFFUSERS_CONFIG) && err.contains("CrossAttnDownBlock2D"),
        "{err}"
    );
    // An unsupported scheduler key is named with its file too.
    copy_dir(&fixtures().join("modern"), &dir.path().join("s"));
    let sched_path = dir.path().join("s").join(SCHEDULER_CONFIG);
    let mut sched: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&sched_path).unwrap()).unwrap();
    sched["variance_type"] = serde_json::json!("learned_range");
    std::fs::write(&sched_path, sched.to_string()).unwrap();
    let err = PipelineSpec::resolve(&dir.path().join("s"), Weights::Ema)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(SCHEDULER_CONFIG) && err.contains("variance_type"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// A class-conditional diffusers model (scripts/golden/class_cond.py): `num_class_embeds = 4`,
// 3 classes and the null label.

fn class_cond_io() -> std::collections::HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join("class_cond_io.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn class_cond_output(pipe: &Pipeline, labels: Option<&Tensor>) -> Tensor {
    let io = class_cond_io();
    tch::no_grad(|| {
        pipe.net
            .forward_cond(&io["x"], &io["timesteps"], labels, false)
    })
}

#[test]
fn a_class_conditional_diffusers_model_matches_diffusers_with_labels_and_guidance() {
    let pipe = Pipeline::load(&fixtures().join("class_cond"), Weights::Ema, Device::Cpu).unwrap();
    // num_class_embeds 4 = 3 classes + the null label.
    assert_eq!(pipe.num_classes(), Some(3));
    assert_eq!(pipe.spec.num_classes(), Some(3));
    assert_eq!(
        pipe.spec.class_name(1),
        "1",
        "no names recorded: the numbers"
    );
    let io = class_cond_io();
    let err = max_abs_diff(
        &class_cond_output(&pipe, Some(&io["class_labels"])),
        &io["out"],
    );
    println!(
        "class-conditional U-Net vs diffusers, labels [0, 1, 2, null]: max abs error {err:.3e}"
    );
    assert!(err <= 1e-5, "{err}");
    // No labels is the null label for every image.
    let err_null = max_abs_diff(&class_cond_output(&pipe, None), &io["out_null"]);
    println!("no labels vs diffusers with the null label: max abs error {err_null:.3e}");
    assert!(err_null <= 1e-5, "{err_null}");
    // Guidance at W = 3 in one batched forward against diffusers' pipelines' formula.
    let guided = tch::no_grad(|| {
        sample::guided_forward(
            pipe.net.as_ref(),
            &io["x"],
            &io["timesteps"],
            &io["guided_labels"],
            3.0,
            None,
        )
    });
    let err_guided = max_abs_diff(&guided, &io["guided_w3"]);
    println!("guided (W = 3) vs diffusers: max abs error {err_guided:.3e}");
    assert!(err_guided <= 1e-5, "{err_guided}");
}

#[test]
fn a_class_conditional_model_exports_with_its_class_names_and_diffusers_loads_it() {
    let mut pipe =
        Pipeline::load(&fixtures().join("class_cond"), Weights::Ema, Device::Cpu).unwrap();
    pipe.spec.class_names = vec!["cat".into(), "dog".into(), "emu".into()];
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("exported");
    pipe.export_diffusers(&out).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join(DIFFUSERS_CONFIG)).unwrap())
            .unwrap();
    assert_eq!(config["num_class_embeds"], serde_json::json!(4));
    assert_eq!(
        config[sample::pipeline::CLASS_NAMES_KEY],
        serde_json::json!(["cat", "dog", "emu"])
    );
    let back = Pipeline::load(&out, Weights::Ema, Device::Cpu).unwrap();
    assert_eq!(back.spec.model, pipe.spec.model);
    assert_eq!(back.spec.class_name(2), "emu");
    let io = class_cond_io();
    let expected = class_cond_output(&pipe, Some(&io["class_labels"]));
    assert_eq!(
        max_abs_diff(
            &class_cond_output(&back, Some(&io["class_labels"])),
            &expected
        ),
        0.0
    );
    let io_file = dir.path().join("io.safetensors");
    Tensor::write_safetensors(
        &[
            ("x", &io["x"]),
            ("timesteps", &io["timesteps"]),
            ("class_labels", &io["class_labels"]),
            ("out", &expected),
        ],
        &io_file,
    )
    .unwrap();
    verify_in_diffusers(&out, &io_file, "the class-conditional export");
}

#[test]
fn class_conditional_generation_is_seeded_and_checks_its_labels() {
    let pipe = Pipeline::load(&fixtures().join("class_cond"), Weights::Ema, Device::Cpu).unwrap();
    let ddim = sample::SamplerConfig::Ddim {
        steps: 3,
        eta: 0.0,
        spacing: schedule::TimestepSpacing::Trailing,
        timesteps: None,
    };
    let a = pipe.generate_classes(&ddim, &[0, 2, 1], 3.0, 5).unwrap();
    assert_eq!(a.size(), [3, 3, 8, 8]);
    assert_eq!(
        max_abs_diff(
            &a,
            &pipe.generate_classes(&ddim, &[0, 2, 1], 3.0, 5).unwrap()
        ),
        0.0
    );
    // Another class or another scale changes the images.
    assert!(
        max_abs_diff(
            &a,
            &pipe.generate_classes(&ddim, &[1, 2, 1], 3.0, 5).unwrap()
        ) > 0.0
    );
    assert!(
        max_abs_diff(
            &a,
            &pipe.generate_classes(&ddim, &[0, 2, 1], 1.0, 5).unwrap()
        ) > 0.0
    );
    let err = pipe
        .generate_classes(&ddim, &[0, 3], 2.0, 5)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("class 3 is out of range") && err.contains("3 classes"),
        "{err}"
    );
    // An unconditional network takes no labels.
    let plain = Pipeline::load(&fixtures().join("modern"), Weights::Ema, Device::Cpu).unwrap();
    let err = plain
        .generate_classes(&ddim, &[0], 2.0, 5)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not class-conditional"), "{err}");
}

/// A network whose first level is 64 channels wide samples channels-last on the CPU (its
/// training layout is NCHW), and computes the same function as in NCHW.
#[test]
fn a_wide_network_loads_channels_last_for_sampling_on_the_cpu_with_the_same_outputs() {
    let mut spec = PipelineSpec::resolve(&fixtures().join("modern"), Weights::Ema).unwrap();
    let ModelConfig::Ddpm(narrow) = &spec.model else {
        panic!("the modern fixture is a UNet2DModel");
    };
    assert_eq!(
        spec.model.inference_memory_format(Device::Cpu),
        model::MemoryFormat::Contiguous,
        "the fixture's {} channels stay NCHW",
        narrow.channels
    );
    let wide = model::UNetConfig {
        channels: 64,
        ..narrow.clone()
    };
    spec.model = ModelConfig::Ddpm(wide);
    let dir = tempfile::tempdir().unwrap();
    let vs = tch::nn::VarStore::new(Device::Cpu);
    spec.model
        .build_with(&vs.root(), &mut sample::Generator::cpu(3))
        .unwrap();
    // Weights far from the near-zero residual branches of a fresh network.
    tch::no_grad(|| {
        for v in vs.variables().values() {
            v.shallow_clone().copy_(&(v.randn_like() * 0.1));
        }
    });
    assert!(vs.variables().values().all(Tensor::is_contiguous));
    spec.weights_file = dir.path().join("wide.safetensors");
    spec.kind = SourceKind::Checkpoint;
    model::save_safetensors(&vs, &spec.weights_file).unwrap();

    let pipe = Pipeline::from_spec(spec, Device::Cpu).unwrap();
    let kernels: Vec<Tensor> = pipe
        .vs
        .variables()
        .into_values()
        .filter(|v| v.dim() == 4)
        .collect();
    assert!(!kernels.is_empty());
    assert!(kernels.iter().all(model::is_channels_last));
    let channels_last = output(&pipe);
    model::set_memory_format(&pipe.vs, model::MemoryFormat::Contiguous);
    let nchw = output(&pipe);
    assert!(max_abs_diff(&channels_last, &nchw) < 1e-5);
    assert!(channels_last.abs().max().double_value(&[]) > 0.1);
}
