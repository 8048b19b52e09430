//! The documentation's snippets are tested: every markdown file with Rust in it is a doctest
//! of `src/lib.rs` (`#[doc = include_str!(…)]`), and in those files every code block says its
//! language, so that rustdoc compiles the Rust ones and leaves the shell, TOML and text alone.
//! (The `ddpm` commands in them are checked by `crates/cli/src/doc_commands.rs`.)

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `README.md` and every `.md` under `docs/`, relative to the repository root.
fn markdown_files() -> Vec<String> {
    let mut files = vec!["README.md".to_string()];
    let mut dirs = vec![PathBuf::from("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(root().join(&dir)).unwrap() {
            let name = dir.join(entry.unwrap().file_name());
            if root().join(&name).is_dir() {
                dirs.push(name);
            } else if name.extension().is_some_and(|e| e == "md") {
                files.push(name.to_str().expect("UTF-8 file names").to_string());
            }
        }
    }
    files.sort();
    files
}

/// The files that `src/lib.rs` includes as doctests.
fn doctest_files() -> Vec<String> {
    let lib = std::fs::read_to_string(root().join("tests/src/lib.rs")).unwrap();
    lib.lines()
        .filter_map(|line| {
            let path = line.trim().strip_prefix("#[doc = include_str!(\"../../")?;
            Some(path.strip_suffix("\")]")?.to_string())
        })
        .collect()
}

/// The info strings of the opening fences of `text`, with their 1-based lines.
fn fences(text: &str) -> Vec<(usize, String)> {
    let mut open = false;
    let mut found = Vec::new();
    for (idx, line) in text.lines().enumerate() {
        let Some(info) = line.trim_start().strip_prefix("```") else {
            continue;
        };
        if !open {
            found.push((idx + 1, info.trim().to_string()));
        }
        open = !open;
    }
    found
}

#[test]
fn every_markdown_file_with_rust_is_a_doctest() {
    let included = doctest_files();
    assert!(included.contains(&"README.md".to_string()), "{included:?}");
    for file in markdown_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        let has_rust = fences(&text)
            .iter()
            .any(|(_, info)| info.split(',').next() == Some("rust"));
        assert!(
            !has_rust || included.contains(&file),
            "{file} has Rust snippets but is not tested: add \
             `#[doc = include_str!(\"../../{file}\")]` to tests/src/lib.rs"
        );
    }
    for file in &included {
        assert!(
            root().join(file).is_file(),
            "tests/src/lib.rs includes {file}, which does not exist"
        );
    }
}

#[test]
fn every_code_block_of_a_doctest_file_names_its_language() {
    for file in doctest_files() {
        let text = std::fs::read_to_string(root().join(&file)).unwrap();
        for (line, info) in fences(&text) {
            assert!(
                !info.is_empty(),
                "{}:{line}: a code block without a language is compiled as Rust: tag it \
                 (```sh, ```text, ```rust)",
                Path::new(&file).display()
            );
        }
    }
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a markdown file's headings (outside code blocks).
fn anchors(text: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            found.push(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// The targets of the inline links `[text](target)` of a markdown file.
fn link_targets(text: &str) -> Vec<&str> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .collect()
}

#[test]
fn relative_links_of_the_docs_point_at_files_and_headings() {
    let mut files = markdown_files();
    files.retain(|f| !f.starts_with("docs/results/"));
    files.push("ARCHITECTURE.md".to_string());
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for target in link_targets(&text) {
            if target.contains("://") {
                continue;
            }
            let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
            let resolved = if path.is_empty() {
                root().join(file)
            } else {
                root().join(file).parent().unwrap().join(path)
            };
            if !resolved.exists() {
                broken.push(format!("{file}: {target} (no such file)"));
            } else if !fragment.is_empty() && resolved.extension().is_some_and(|e| e == "md") {
                let linked = std::fs::read_to_string(&resolved).unwrap();
                if !anchors(&linked).iter().any(|a| a == fragment) {
                    broken.push(format!("{file}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn headings_become_githubs_anchors() {
    assert_eq!(
        anchor(" `train`: the loop, EMA, checkpoints"),
        "train-the-loop-ema-checkpoints"
    );
    assert_eq!(
        anchor(" No GPU: Fashion-MNIST in 30 minutes"),
        "no-gpu-fashion-mnist-in-30-minutes"
    );
    assert_eq!(
        link_targets("see [a](docs/a.md#x) and [b](b.md)."),
        ["docs/a.md#x", "b.md"]
    );
}

/// The repository paths the docs name in code spans (`crates/…`, `docs/…`, `scripts/…`,
/// `tests/…`, `xtask/…`), without placeholders such as `<date>` or `*`.
fn named_paths(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|span| {
            ["crates/", "docs/", "scripts/", "tests/", "xtask/"]
                .iter()
                .any(|dir| span.starts_with(dir))
                && span
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c))
        })
        .collect()
}

#[test]
fn the_files_the_docs_name_exist() {
    let mut files = markdown_files();
    files.retain(|f| !f.starts_with("docs/results/"));
    files.push("ARCHITECTURE.md".to_string());
    let mut missing = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        for path in named_paths(&text) {
            if !root().join(path).exists() {
                missing.push(format!("{file}: `{path}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "the docs name files that do not exist:\n{}",
        missing.join("\n")
    );
    assert_eq!(
        named_paths("`crates/cli/src/main.rs`, `docs/results/<date>.md`, `tests/`, `ddpm`"),
        ["crates/cli/src/main.rs", "tests/"]
    );
}
