//! The binary starts and describes itself. (Its presence also makes `cargo test` build the
//! `ddpm` binary that the workspace's end-to-end tests drive.)

#[test]
fn help_lists_the_subcommands() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ddpm"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["doctor", "schedule", "data"] {
        assert!(text.contains(sub), "--help lacks {sub}:\n{text}");
    }
}

/// cuDNN's autotuner is on by default and `--cudnn-benchmark false` turns it off; anything but a
/// boolean is refused before any work.
#[test]
fn train_sample_and_eval_take_the_cudnn_switch() {
    let ddpm = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ddpm"))
            .args(args)
            .output()
            .unwrap()
    };
    for command in [&["train"][..], &["sample"], &["eval", "fid"]] {
        let help = ddpm(&[command, &["--help"]].concat());
        let text = String::from_utf8_lossy(&help.stdout);
        assert!(
            text.contains("--cudnn-benchmark <BOOL>") && text.contains("[default: true]"),
            "{command:?}:\n{text}"
        );
        let bad = ddpm(&[command, &["--cudnn-benchmark", "maybe"]].concat());
        assert!(!bad.status.success());
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(err.contains("invalid value 'maybe'"), "{command:?}: {err}");
    }
}
