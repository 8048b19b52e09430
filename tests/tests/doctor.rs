//! `ddpm doctor` on this machine.

use e2e::run;

#[test]
fn doctor_json_reports_a_working_libtorch() {
    let out = run(&["doctor", "--json", "--device", "cpu"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "doctor failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info: serde_json::Value = serde_json::from_str(&stdout).expect("doctor --json prints JSON");
    assert_eq!(info["tch_version"], "0.24.0");
    assert!(
        info["libtorch_version"]
            .as_str()
            .unwrap()
            .starts_with("2.11.0"),
        "{info}"
    );
    assert!(info["cpu_threads"].as_i64().unwrap() >= 1);
    assert_eq!(info["problems"], serde_json::json!([]));
    // CUDA really linked: whenever libtorch ships libtorch_cuda.so, the binary must load it.
    if info["libtorch_has_cuda"] == true {
        assert_eq!(info["libtorch_cuda_loaded"], true, "{info}");
    }
}

#[test]
fn binary_lists_libtorch_cuda_in_its_dynamic_section() {
    let out = run(&["doctor", "--json", "--device", "cpu"]);
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if info["libtorch_has_cuda"] != true {
        eprintln!("skipped: this libtorch has no libtorch_cuda.so");
        return;
    }
    let Ok(readelf) = std::process::Command::new("readelf")
        .arg("-d")
        .arg(e2e::ddpm_bin())
        .output()
    else {
        eprintln!("skipped: readelf is not installed");
        return;
    };
    let dynamic = String::from_utf8_lossy(&readelf.stdout);
    assert!(
        dynamic.contains("[libtorch_cuda.so]"),
        "NEEDED lacks libtorch_cuda.so:\n{dynamic}"
    );
    assert!(
        dynamic.contains("RUNPATH") || dynamic.contains("RPATH"),
        "no rpath:\n{dynamic}"
    );
}

#[test]
fn asking_for_missing_cuda_fails_with_a_clear_message() {
    let out = run(&["doctor", "--device", "cuda"]);
    let json = run(&["doctor", "--json", "--device", "cpu"]);
    let info: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    if info["cuda_available"] == true {
        assert!(out.status.success());
        return;
    }
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("CUDA is not available"), "{stderr}");
}
