//! The `cargo xtask` commands written in `README.md` and `docs/**/*.md` parse with xtask's clap
//! definition, as `ddpm`'s do with the CLI's (the finding and parsing:
//! `tests/src/doc_commands.rs`), so a renamed or removed flag fails a test instead of a reader.

#[path = "../../tests/src/doc_commands.rs"]
mod scan;

use scan::{arguments, commands, markdown_files, Word};
use std::path::Path;

/// The arguments of `cargo xtask ARGS`, or `None` for any other command.
fn xtask_args(words: &[Word]) -> Option<Vec<String>> {
    match words {
        [cargo, xtask, rest @ ..] if cargo.text == "cargo" && xtask.text == "xtask" => {
            Some(arguments(rest))
        }
        _ => None,
    }
}

/// Every failing `cargo xtask` command of `text`.
fn failures(file: &str, text: &str) -> Vec<String> {
    scan::failures::<super::Cli>("cargo xtask", xtask_args, file, text)
}

#[test]
fn every_documented_xtask_command_parses() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut failed = Vec::new();
    let mut n_commands = 0;
    for path in markdown_files(&root) {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        n_commands += commands(&text, xtask_args).len();
        failed.extend(failures(&path.display().to_string(), &text));
    }
    assert!(
        n_commands >= 10,
        "only {n_commands} cargo xtask commands found in README.md and docs/: is the extractor \
         broken?"
    );
    assert!(
        failed.is_empty(),
        "{} documented cargo xtask command(s) do not parse:\n\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

#[test]
fn a_renamed_xtask_flag_fails_with_the_file_and_line() {
    let doc = "Bench:\n\n```sh\ncargo xtask bench --quick --no-such-flag\n```\n";
    let failed = failures("b.md", doc);
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(
        failed[0].starts_with("b.md:4: cargo xtask bench --quick --no-such-flag"),
        "{}",
        failed[0]
    );
    assert_eq!(failures("b.md", "Run `cargo xtask fetch-cifer`.").len(), 1);
    // Other cargo commands are not xtask's, and a fragment in prose may leave values out.
    assert!(failures("b.md", "```sh\ncargo test -p cli --no-such-flag\n```").is_empty());
    assert!(failures("b.md", "Then `cargo xtask quality --minutes N`.").is_empty());
    assert!(failures("b.md", "```sh\ncargo xtask setup && cargo xtask test\n```").is_empty());
}
