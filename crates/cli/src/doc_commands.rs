//! The `ddpm` commands written in `README.md` and `docs/**/*.md` parse with this binary's clap
//! definition, so a renamed or removed flag fails a test instead of a reader.
//!
//! Two kinds of command are checked:
//!
//! - **Lines of a code block** (```` ```sh ````, ```` ```bash ````, ```` ```console ```` or an
//!   untagged block) that run `ddpm`: `ddpm …`, `target/release/ddpm …` (also after
//!   `torchrun`, `timeout`, `srun` or `VAR=value` prefixes) and `cargo run [--release] -p cli
//!   -- …`. Backslash continuations are joined, comments stripped, quotes honoured, and the line
//!   is cut at `&&`, `||`, `;` and `|`. These must parse completely.
//! - **Inline code** in the prose, `` `ddpm sample --checkpoint runs/seed` ``: often a fragment,
//!   so a missing required argument or a placeholder value (`-n N`) is allowed, but an unknown
//!   subcommand or flag is not.
//!
//! A `…` in a command elides the rest of it (checked as a fragment); an unquoted `$VAR` is
//! dropped, since it may expand to any number of arguments.

use clap::error::ErrorKind;
use clap::Parser;
use std::path::{Path, PathBuf};

/// One `ddpm` command found in a markdown file.
#[derive(Debug, Clone, PartialEq)]
struct DocCommand {
    /// 1-based line of the file where the command starts.
    line: usize,
    /// The arguments after the program name.
    args: Vec<String>,
    /// A fragment: missing arguments and placeholder values are allowed.
    fragment: bool,
}

/// The markdown files whose commands are checked: `README.md` and every `.md` under `docs/`.
fn markdown_files() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut files = vec![root.join("README.md")];
    let mut dirs = vec![root.join("docs")];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "md") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every `ddpm` command in `text`, in order.
fn commands(text: &str) -> Vec<DocCommand> {
    let mut found = Vec::new();
    let mut fence: Option<bool> = None; // Some(checked) inside a code block
    let mut pending: Option<(usize, String)> = None; // a line continued with `\`
    let mut paragraph: Option<(usize, String)> = None; // prose, scanned for inline code at its end
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let trimmed = raw.trim_start();
        if fence.is_none() && (trimmed.is_empty() || trimmed.starts_with("```")) {
            if let Some((start, prose)) = paragraph.take() {
                found.extend(inline_commands(start, &prose));
            }
        }
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            fence = match fence {
                Some(_) => None,
                None => {
                    let lang = trimmed.trim_start_matches(['`', '~']).trim();
                    Some(matches!(lang, "" | "sh" | "bash" | "shell" | "console"))
                }
            };
            continue;
        }
        match fence {
            Some(true) => {
                let (start, mut joined) = pending.take().unwrap_or((line_no, String::new()));
                let body = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
                if let Some(head) = body.trim_end().strip_suffix('\\') {
                    joined.push_str(head);
                    joined.push(' ');
                    pending = Some((start, joined));
                    continue;
                }
                joined.push_str(body);
                for words in shell_commands(&joined) {
                    if let Some(args) = ddpm_args(&words) {
                        let (args, elided) = elide(args);
                        found.push(DocCommand {
                            line: start,
                            args,
                            fragment: elided,
                        });
                    }
                }
            }
            Some(false) => {}
            None => {
                let (_, prose) = paragraph.get_or_insert((line_no, String::new()));
                prose.push_str(raw);
                prose.push('\n');
            }
        }
    }
    if let Some((start, prose)) = paragraph {
        found.extend(inline_commands(start, &prose));
    }
    found
}

/// The `ddpm` commands in the inline code of a paragraph that starts at line `start`.
fn inline_commands(start: usize, prose: &str) -> Vec<DocCommand> {
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(open) = prose[at..].find('`').map(|i| at + i) {
        let ticks = prose[open..].chars().take_while(|&c| c == '`').count();
        let body = open + ticks;
        let Some(close) = prose[body..].find(&"`".repeat(ticks)).map(|i| body + i) else {
            break;
        };
        let span = prose[body..close].replace('\n', " ");
        let line = start + prose[..body].matches('\n').count();
        for words in shell_commands(&span) {
            if let Some(args) = ddpm_args(&words) {
                found.push(DocCommand {
                    line,
                    args: elide(args).0,
                    fragment: true,
                });
            }
        }
        at = close + ticks;
    }
    found
}

/// The arguments up to a `…` or `...`, and whether one was there.
fn elide(args: Vec<String>) -> (Vec<String>, bool) {
    match args.iter().position(|a| a == "…" || a == "...") {
        Some(at) => (args[..at].to_vec(), true),
        None => (args, false),
    }
}

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

/// The words as arguments. An unquoted `$VAR` stays as the value of the flag before it
/// (`--data $D`) and is dropped elsewhere, where it may expand to any number of arguments
/// (`$RESUME`).
fn arguments(words: &[Word]) -> Vec<String> {
    let mut args: Vec<String> = Vec::with_capacity(words.len());
    for w in words {
        let after_flag = args
            .last()
            .is_some_and(|prev| prev.starts_with('-') && !prev.contains('='));
        if w.quoted || !w.text.starts_with('$') || after_flag {
            args.push(w.text.clone());
        }
    }
    args
}

/// One shell word after quote removal.
#[derive(Debug, Clone, PartialEq)]
struct Word {
    text: String,
    /// Some of it was quoted.
    quoted: bool,
}

/// Splits a shell line into simple commands (at `&&`, `||`, `;`, `|`), each a list of words;
/// a `#` at the start of a word begins a comment.
fn shell_commands(line: &str) -> Vec<Vec<Word>> {
    let mut commands = vec![Vec::new()];
    let mut word: Option<Word> = None;
    let mut chars = line.chars().peekable();
    let end_word = |word: &mut Option<Word>, commands: &mut Vec<Vec<Word>>| {
        if let Some(w) = word.take() {
            commands.last_mut().expect("one command").push(w);
        }
    };
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => end_word(&mut word, &mut commands),
            '#' if word.is_none() => break,
            '&' | '|' | ';' => {
                end_word(&mut word, &mut commands);
                if matches!(chars.peek(), Some('&') | Some('|')) {
                    chars.next();
                }
                commands.push(Vec::new());
            }
            '\'' | '"' => {
                let w = word.get_or_insert(Word {
                    text: String::new(),
                    quoted: true,
                });
                w.quoted = true;
                while let Some(q) = chars.next() {
                    if q == c {
                        break;
                    }
                    if q == '\\' && c == '"' {
                        if let Some(escaped) = chars.next() {
                            w.text.push(escaped);
                        }
                        continue;
                    }
                    w.text.push(q);
                }
            }
            '\\' => {
                let w = word.get_or_insert(Word {
                    text: String::new(),
                    quoted: true,
                });
                if let Some(escaped) = chars.next() {
                    w.text.push(escaped);
                }
            }
            _ => word
                .get_or_insert(Word {
                    text: String::new(),
                    quoted: false,
                })
                .text
                .push(c),
        }
    }
    end_word(&mut word, &mut commands);
    commands.retain(|c| !c.is_empty());
    commands
}

/// Parses one command with the clap definition; `Err` holds clap's message.
fn check(command: &DocCommand) -> Result<(), String> {
    let argv = std::iter::once("ddpm".to_string()).chain(command.args.iter().cloned());
    match super::Cli::try_parse_from(argv) {
        Ok(_) => Ok(()),
        Err(err) => {
            let allowed = match err.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => true,
                ErrorKind::MissingRequiredArgument
                | ErrorKind::MissingSubcommand
                | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                | ErrorKind::InvalidValue
                | ErrorKind::ValueValidation => command.fragment,
                _ => false,
            };
            if allowed {
                Ok(())
            } else {
                Err(err.render().to_string())
            }
        }
    }
}

/// Every failing command of `text`, as `FILE:LINE: ddpm ARGS` and clap's message.
fn failures(file: &str, text: &str) -> Vec<String> {
    commands(text)
        .iter()
        .filter_map(|command| {
            check(command).err().map(|message| {
                format!(
                    "{file}:{}: ddpm {}\n{}",
                    command.line,
                    command.args.join(" "),
                    message.trim_end()
                )
            })
        })
        .collect()
}

#[test]
fn every_documented_ddpm_command_parses() {
    let mut failed = Vec::new();
    let mut n_commands = 0;
    for path in markdown_files() {
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        n_commands += commands(&text).len();
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
    let found = commands(doc);
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
