//! The `ddpm` commands written in `README.md` and `docs/**/*.md` parse with this binary's clap
//! definition (the finding and parsing: `tests/src/doc_commands.rs`). A command runs `ddpm` as
//! `ddpm …`, `target/release/ddpm …` (also after `torchrun`, `timeout`, `srun` or `VAR=value`
//! prefixes) or `cargo run [--release] -p cli -- …`.

#[path = "../../../tests/src/doc_commands.rs"]
mod scan;

use scan::{arguments, commands, markdown_files, Word};
use std::path::Path;

/// The arguments given to `ddpm` by one shell command, or `None` when it does not run `ddpm`.
fn ddpm_args(words: &[Word]) -> Option<Vec<String>> {
    let texts: Vec<&str> = words.iter().map(|w| w.text.as_str()).collect();
    // `cargo run [--release] [--features F] -p cli -- ARGS`
    if texts.first() == Some(&"cargo") && texts.get(1) == Some(&"run") {
        let dashes = texts.iter().position(|&t| t == "--")?;
        let is_cli = texts[..dashes]
            .windows(2)
            .any(|w| (w[0] == "-p" || w[0] == "--package") && w[1] == "cli");
        return is_cli.then(|| arguments(&words[dashes + 1..]));
    }
    let is_ddpm = |t: &str| t == "ddpm" || t.ends_with("/ddpm");
    // `ddpm` in command position, after `VAR=value` assignments ...
    let first = words
        .iter()
        .position(|w| w.quoted || !w.text.contains('=') || w.text.starts_with('-'))?;
    if is_ddpm(texts[first]) {
        return Some(arguments(&words[first + 1..]));
    }
    // ... or run by a launcher (`torchrun … target/release/ddpm train`): a `ddpm` followed by a
    // subcommand word, so that a value such as `--sampler ddpm` is not taken for the program.
    if !LAUNCHERS.contains(&texts[first]) {
        return None;
    }
    let at = (first + 1..texts.len()).find(|&i| {
        is_ddpm(texts[i])
            && texts
                .get(i + 1)
                .is_some_and(|next| next.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
    })?;
    Some(arguments(&words[at + 1..]))
}

/// Commands that run another command given among their arguments.
const LAUNCHERS: [&str; 8] = [
    "torchrun", "srun", "timeout", "nohup", "env", "exec", "time", "mpirun",
];

/// Every failing `ddpm` command of `text`.
fn failures(file: &str, text: &str) -> Vec<String> {
    scan::failures::<super::Cli>("ddpm", ddpm_args, file, text)
}

#[test]
fn every_documented_ddpm_command_parses() {
    let mut failed = Vec::new();
    let mut n_commands = 0;
    for path in markdown_files(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")) {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        n_commands += commands(&text, ddpm_args).len();
        failed.extend(failures(&path.display().to_string(), &text));
    }
    assert!(
        n_commands >= 20,
        "only {n_commands} ddpm commands found in README.md and docs/: is the extractor broken?"
    );
    assert!(
        failed.is_empty(),
        "{} documented ddpm command(s) do not parse:\n\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

#[test]
fn a_renamed_flag_fails_with_the_file_and_line() {
    let doc = "# Guide\n\nTrain:\n\n```sh\nddpm train --preset fashion-mnist \\\n    --no-such-flag 3\n```\n";
    let failed = failures("guide.md", doc);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("guide.md:6: ddpm train --preset fashion-mnist --no-such-flag 3"),
        "{}",
        failed[0]
    );
    assert!(failed[0].contains("--no-such-flag"), "{}", failed[0]);
    // The same flag in prose fails too, and so does an unknown subcommand.
    assert_eq!(
        failures("g.md", "Use `ddpm train --no-such-flag`.").len(),
        1
    );
    assert_eq!(failures("g.md", "Use `ddpm trian --preset seed`.").len(), 1);
    // A fenced command must be complete; a fragment in prose need not be.
    assert_eq!(failures("g.md", "```sh\nddpm sample -n 10\n```").len(), 1);
    assert!(failures("g.md", "Then `ddpm sample -n N` draws them.").is_empty());
    // Inline code may run over a line break; the line reported is where it starts.
    let wrapped = failures("g.md", "Intro.\n\nRun `ddpm sample\n--no-such-flag` now.\n");
    assert_eq!(wrapped.len(), 1, "{wrapped:?}");
    assert!(
        wrapped[0].starts_with("g.md:3: ddpm sample --no-such-flag"),
        "{}",
        wrapped[0]
    );
}

#[test]
fn commands_are_found_where_they_are_run() {
    let doc = r#"
```sh
# a comment naming ddpm train --nope
cargo xtask setup && cargo run --release -p cli -- train --preset seed  # trailing --nope
RANK=3 WORLD_SIZE=4 target/release/ddpm train --run-dir "$RUN" $RESUME --data $D
cargo test -p cli --bin ddpm doc_commands
torchrun --no-python --nproc_per_node=4 target/release/ddpm train --sampler-is-a-value ddpm
ddpm sample --checkpoint runs/seed --sampler ddpm | tee log
```

```text
ddpm train --not-shell
```

```rust
// ddpm train --not-shell
```
"#;
    let found = commands(doc, ddpm_args);
    let args: Vec<Vec<&str>> = found
        .iter()
        .map(|c| c.args.iter().map(String::as_str).collect())
        .collect();
    assert_eq!(
        args,
        vec![
            vec!["train", "--preset", "seed"],
            vec!["train", "--run-dir", "$RUN", "--data", "$D"],
            vec!["train", "--sampler-is-a-value", "ddpm"],
            vec!["sample", "--checkpoint", "runs/seed", "--sampler", "ddpm"],
        ]
    );
    assert_eq!(
        found.iter().map(|c| c.line).collect::<Vec<_>>(),
        [4, 5, 7, 8]
    );
}
