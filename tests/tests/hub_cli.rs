//! `--checkpoint hf:OWNER/NAME[@REVISION]` against a stand-in Hub on 127.0.0.1
//! ([`e2e::hub::HubServer`], with `HF_ENDPOINT` pointing at it): the first call downloads what
//! sampling reads into a temporary `HF_HOME` (safetensors rather than `.bin`, nothing else),
//! a second with `HF_HUB_OFFLINE=1` works from the cache without a request, the oldest root
//! layout resolves too, and a missing repository, a private one without its token, an offline
//! miss and a pipeline that is no `UNet2DModel` each fail with their own message.

use std::path::{Path, PathBuf};
use std::process::Output;

use e2e::hub::{HubRepo, HubServer, COMMIT};
use e2e::{ddpm, path_arg, stderr_of};

fn fixture(rel: &str) -> Vec<u8> {
    let dir =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/sample/tests/fixtures/diffusers");
    std::fs::read(dir.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn repo(id: &str, files: &[(&str, Vec<u8>)], token: Option<&str>) -> HubRepo {
    HubRepo {
        id: id.into(),
        files: files
            .iter()
            .map(|(p, b)| (p.to_string(), b.clone()))
            .collect(),
        token: token.map(str::to_string),
    }
}

/// The Hub's repositories for these tests.
fn server() -> HubServer {
    let index = fixture("legacy_pipeline/model_index.json");
    let legacy = [
        ("model_index.json", index.clone()),
        (
            "unet/config.json",
            fixture("legacy_pipeline/unet/config.json"),
        ),
        (
            "unet/diffusion_pytorch_model.bin",
            fixture("legacy_pipeline/unet/diffusion_pytorch_model.bin"),
        ),
        (
            "scheduler/scheduler_config.json",
            fixture("legacy_pipeline/scheduler/scheduler_config.json"),
        ),
        ("README.md", b"# not read".to_vec()),
    ];
    let modern = [
        ("model_index.json", index),
        ("unet/config.json", fixture("modern/config.json")),
        (
            "unet/diffusion_pytorch_model.safetensors",
            fixture("modern/diffusion_pytorch_model.safetensors"),
        ),
        // Never read: safetensors is preferred.
        (
            "unet/diffusion_pytorch_model.bin",
            b"not a state dict".to_vec(),
        ),
        (
            "scheduler/scheduler_config.json",
            fixture("modern/scheduler_config.json"),
        ),
    ];
    let root = [
        ("config.json", fixture("legacy_pipeline/unet/config.json")),
        (
            "diffusion_pytorch_model.bin",
            fixture("legacy_pipeline/unet/diffusion_pytorch_model.bin"),
        ),
        (
            "scheduler_config.json",
            fixture("legacy_pipeline/scheduler/scheduler_config.json"),
        ),
    ];
    let sd_index = br#"{"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}"#;
    HubServer::start(vec![
        repo("google/ddpm-tiny", &legacy, None),
        repo("owner/modern", &modern, None),
        repo("owner/private", &modern, Some("hf_secret")),
        repo("old/root-layout", &root, None),
        repo("owner/sd", &[("model_index.json", sd_index.to_vec())], None),
    ])
}

/// `ddpm ARGS` with the Hub at `hub` and its cache in `home`; `env` adds variables.
fn hub_run(hub: &HubServer, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = ddpm(args);
    cmd.env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_CACHE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run ddpm")
}

fn sample_args(name: &str, grid: &Path) -> Vec<String> {
    [
        "sample",
        "--checkpoint",
        name,
        "--device",
        "cpu",
        "--sampler",
        "ddim",
        "--steps",
        "2",
        "-n",
        "2",
        "--grid",
        path_arg(grid),
    ]
    .map(str::to_string)
    .to_vec()
}

fn ok(out: &Output, what: &str) -> String {
    let stderr = stderr_of(out);
    assert!(out.status.success(), "{what} failed: {stderr}");
    stderr
}

fn failure(out: &Output, what: &str) -> String {
    let stderr = stderr_of(out);
    assert!(!out.status.success(), "{what} should have failed: {stderr}");
    stderr
}

fn snapshot(home: &Path, repo: &str) -> PathBuf {
    home.join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots")
        .join(COMMIT)
}

#[test]
fn hf_checkpoints_download_once_then_work_offline() {
    let hub = server();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    let grid = dir.path().join("grid.png");
    let args = sample_args("hf:google/ddpm-tiny", &grid);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&hub_run(&hub, &home, &args, &[]), "the first hf: sample");
    assert!(grid.is_file());
    let snap = snapshot(&home, "google/ddpm-tiny");
    for file in [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.bin",
        "scheduler/scheduler_config.json",
    ] {
        assert!(snap.join(file).is_file(), "{file} is not in the cache");
    }
    let requests = hub.requests();
    assert!(
        requests.iter().all(|r| !r.ends_with("README.md")),
        "{requests:?}"
    );

    // Offline, from the cache: no request at all.
    std::fs::remove_file(&grid).unwrap();
    let offline = [("HF_HUB_OFFLINE", "1")];
    ok(
        &hub_run(&hub, &home, &args, &offline),
        "the offline hf: sample",
    );
    assert!(grid.is_file());
    let summary = ["model", "summary", "--checkpoint", "hf:google/ddpm-tiny"];
    ok(&hub_run(&hub, &home, &summary, &offline), "model summary");
    let out = dir.path().join("export");
    let export = [
        "export",
        "--checkpoint",
        "hf:google/ddpm-tiny",
        "--diffusers",
        path_arg(&out),
        "--grid-samples",
        "2",
        "--grid-steps",
        "2",
        "--device",
        "cpu",
    ];
    ok(&hub_run(&hub, &home, &export, &offline), "export");
    assert!(out
        .join("unet/diffusion_pytorch_model.safetensors")
        .is_file());
    assert_eq!(hub.requests(), requests, "offline runs made requests");

    // Safetensors is preferred over .bin, which is never asked for.
    let args = sample_args("hf:owner/modern", &grid);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&hub_run(&hub, &home, &args, &[]), "the modern hf: sample");
    let modern: Vec<String> = hub
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("/owner/modern/"))
        .collect();
    assert!(
        modern.iter().any(|r| r.ends_with(".safetensors"))
            && !modern.iter().any(|r| r.ends_with(".bin")),
        "{modern:?}"
    );

    // The oldest layout: everything at the root, no model_index.json; and a revision.
    let summary = [
        "model",
        "summary",
        "--checkpoint",
        "hf:old/root-layout@main",
    ];
    let out = hub_run(&hub, &home, &summary, &[]);
    ok(&out, "model summary of the root layout");
    assert!(snapshot(&home, "old/root-layout")
        .join("config.json")
        .is_file());
}

#[test]
fn hf_failures_each_say_what_to_do() {
    let hub = server();
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("hf");
    let grid = dir.path().join("grid.png");
    let run = |name: &str, env: &[(&str, &str)]| {
        let args = sample_args(name, &grid);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        hub_run(&hub, &home, &args, env)
    };
    let missing = failure(&run("hf:nobody/nothing", &[]), "a missing repository");
    assert!(
        missing.contains("hf:nobody/nothing@main: no such repository")
            && missing.contains(&hub.endpoint),
        "{missing}"
    );
    let revision = failure(&run("hf:owner/modern@v9", &[]), "a missing revision");
    assert!(
        revision.contains("no such repository or revision"),
        "{revision}"
    );

    let private = failure(&run("hf:owner/private", &[]), "a private repository");
    assert!(
        private.contains("HTTP 401") && private.contains("set HF_TOKEN"),
        "{private}"
    );
    let wrong = failure(
        &run("hf:owner/private", &[("HF_TOKEN", "hf_wrong")]),
        "a wrong token",
    );
    assert!(wrong.contains("lacks access"), "{wrong}");
    ok(
        &run("hf:owner/private", &[("HF_TOKEN", "hf_secret")]),
        "a private repository with its token",
    );

    let offline = failure(
        &run("hf:owner/modern", &[("HF_HUB_OFFLINE", "1")]),
        "an offline miss",
    );
    assert!(
        offline.contains("HF_HUB_OFFLINE is set") && offline.contains("unset HF_HUB_OFFLINE"),
        "{offline}"
    );
    let sd = failure(&run("hf:owner/sd", &[]), "a pipeline without a UNet2DModel");
    assert!(
        sd.contains("its unet is a UNet2DConditionModel")
            && sd.contains("not a diffusers UNet2DModel"),
        "{sd}"
    );
    let bad = failure(&run("hf:no-slash", &[]), "a bad name");
    assert!(bad.contains("hf:OWNER/NAME"), "{bad}");
    // Four distinct messages for the four failures.
    let firsts: std::collections::BTreeSet<&str> = [&missing, &private, &offline, &sd]
        .iter()
        .map(|e| e.lines().last().unwrap_or(""))
        .collect();
    assert_eq!(firsts.len(), 4, "{firsts:?}");
}
