//! The commands of a program written in `README.md` and `docs/**/*.md`, found and parsed with
//! the program's clap definition, so that a renamed or removed flag fails a test instead of a
//! reader. Shared by the unit tests of `ddpm` (`crates/cli/src/doc_commands.rs`) and of xtask
//! (`xtask/src/doc_commands.rs`), which include this file by path (`#[path]`): each says how
//! its program is run ([`ProgramArgs`]) and parses with its own `Cli`.
//!
//! Two kinds of command are found:
//!
//! - **Lines of a code block** (```` ```sh ````, ```` ```bash ````, ```` ```console ```` or an
//!   untagged block). Backslash continuations are joined, comments stripped, quotes honoured,
//!   and the line is cut at `&&`, `||`, `;` and `|`. These must parse completely.
//! - **Inline code** in the prose: often a fragment, so a missing required argument or a
//!   placeholder value (`-n N`) is allowed, but an unknown subcommand or flag is not.
//!
//! A `…` in a command elides the rest of it (checked as a fragment); an unquoted `$VAR` is
//! dropped, since it may expand to any number of arguments.

#![allow(dead_code)]

use clap::error::ErrorKind;
use std::path::{Path, PathBuf};

/// One command of the program found in a markdown file.
#[derive(Debug, Clone, PartialEq)]
pub struct DocCommand {
    /// 1-based line of the file where the command starts.
    pub line: usize,
    /// The arguments after the program name.
    pub args: Vec<String>,
    /// A fragment: missing arguments and placeholder values are allowed.
    pub fragment: bool,
}

/// The markdown files whose commands are checked: `README.md` and every `.md` under `docs/` of
/// the repository at `root`.
pub fn markdown_files(root: &Path) -> Vec<PathBuf> {
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

/// The program's arguments in one shell command (`None`: it does not run the program).
pub type ProgramArgs = fn(&[Word]) -> Option<Vec<String>>;

/// Every command of the program that `program` recognises in `text`, in order.
pub fn commands(text: &str, program: ProgramArgs) -> Vec<DocCommand> {
    let mut found = Vec::new();
    let mut fence: Option<bool> = None; // Some(checked) inside a code block
    let mut pending: Option<(usize, String)> = None; // a line continued with `\`
    let mut paragraph: Option<(usize, String)> = None; // prose, scanned for inline code at its end
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let trimmed = raw.trim_start();
        if fence.is_none() && (trimmed.is_empty() || trimmed.starts_with("```")) {
            if let Some((start, prose)) = paragraph.take() {
                found.extend(inline_commands(start, &prose, program));
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
                    if let Some(args) = program(&words) {
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
        found.extend(inline_commands(start, &prose, program));
    }
    found
}

/// The program's commands in the inline code of a paragraph that starts at line `start`.
fn inline_commands(start: usize, prose: &str, program: ProgramArgs) -> Vec<DocCommand> {
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
            if let Some(args) = program(&words) {
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

/// The words as arguments. An unquoted `$VAR` stays as the value of the flag before it
/// (`--data $D`) and is dropped elsewhere, where it may expand to any number of arguments
/// (`$RESUME`).
pub fn arguments(words: &[Word]) -> Vec<String> {
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
pub struct Word {
    /// The text.
    pub text: String,
    /// Some of it was quoted.
    pub quoted: bool,
}

/// Splits a shell line into simple commands (at `&&`, `||`, `;`, `|`), each a list of words;
/// a `#` at the start of a word begins a comment.
pub fn shell_commands(line: &str) -> Vec<Vec<Word>> {
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

/// Parses one command with the clap definition `P` (its program called `name`); `Err` holds
/// clap's message.
pub fn check<P: clap::Parser>(name: &str, command: &DocCommand) -> Result<(), String> {
    let argv = std::iter::once(name.to_string()).chain(command.args.iter().cloned());
    match P::try_parse_from(argv) {
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

/// Every command of `text` (found by `program`) that `P` does not parse, as
/// `FILE:LINE: NAME ARGS` and clap's message.
pub fn failures<P: clap::Parser>(
    name: &str,
    program: ProgramArgs,
    file: &str,
    text: &str,
) -> Vec<String> {
    commands(text, program)
        .iter()
        .filter_map(|command| {
            check::<P>(name, command).err().map(|message| {
                format!(
                    "{file}:{}: {name} {}\n{}",
                    command.line,
                    command.args.join(" "),
                    message.trim_end()
                )
            })
        })
        .collect()
}
