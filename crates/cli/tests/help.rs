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
