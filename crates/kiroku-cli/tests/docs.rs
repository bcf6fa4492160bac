//! Control CLD.12.1.5: the admin manual and the README describe operations with commands
//! that exist. Every `kiroku ...` line of their shell blocks is run with `--help`
//! appended: clap parses the subcommand path and every flag before the help, so a
//! renamed subcommand or flag fails here (positional values and required arguments are
//! not checked; `--help` stops before that).

use std::path::Path;
use std::process::Command;

const KIROKU: &str = env!("CARGO_BIN_EXE_kiroku");

/// Splits a shell line into words: double and single quotes group, nothing else.
fn words(line: &str) -> Vec<String> {
    let (mut words, mut word, mut quote, mut any) = (Vec::new(), String::new(), None, false);
    for c in line.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), c) => word.push(c),
            (None, '"' | '\'') => {
                quote = Some(c);
                any = true;
            }
            (None, c) if c.is_whitespace() => {
                if any || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                any = false;
            }
            (None, c) => word.push(c),
        }
    }
    if any || !word.is_empty() {
        words.push(word);
    }
    words
}

/// The `kiroku` command lines of a Markdown file's fenced blocks, as argument lists
/// (comments, `[optional]` parts, a trailing `\` or `&` dropped; `a | b | c`
/// alternatives of the last word expanded).
fn documented_commands(markdown: &str) -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    let (mut fenced, mut shell) = (false, false);
    for line in markdown.lines() {
        if let Some(info) = line.trim_start().strip_prefix("```") {
            fenced = !fenced;
            shell = fenced && matches!(info.trim(), "sh" | "bash" | "console");
            continue;
        }
        // `a; b` is two commands.
        for part in line.split("; ") {
            commands.extend(
                command_line(part.trim())
                    .filter(|_| shell)
                    .unwrap_or_default(),
            );
        }
    }
    commands
}

/// One shell line's `kiroku` commands (see [`documented_commands`]).
fn command_line(line: &str) -> Option<Vec<Vec<String>>> {
    if !line.starts_with("kiroku ") {
        return None;
    }
    let mut commands = Vec::new();
    {
        let mut line = line.split(" #").next().unwrap_or_default().to_string();
        // A command substitution is one value.
        while let (Some(start), Some(end)) = (line.find("$("), line.find(')')) {
            if end < start {
                break;
            }
            line.replace_range(start..=end, "VALUE");
        }
        while let (Some(start), Some(end)) = (line.find('['), line.find(']')) {
            if end < start {
                break;
            }
            line.replace_range(start..=end, "");
        }
        let line = line.trim_end_matches(['\\', '&', ' ']);
        let mut alternatives = line.split(" | ");
        let first = words(alternatives.next().unwrap_or_default());
        let stem = first[..first.len().saturating_sub(1)].to_vec();
        commands.push(first);
        for alternative in alternatives {
            let mut command = stem.clone();
            command.extend(words(alternative));
            commands.push(command);
        }
    }
    Some(commands)
}

#[test]
fn control_cld_12_1_5_every_documented_command_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut checked = 0;
    let mut failures = Vec::new();
    // The README, every page of docs/ (runbooks included) and the local cluster's guide.
    let mut docs = vec![
        "README.md".to_string(),
        "deploy/local/README.md".to_string(),
    ];
    for dir in ["docs", "docs/runbooks"] {
        let mut pages: Vec<String> = std::fs::read_dir(root.join(dir))
            .expect(dir)
            .filter_map(|entry| entry.ok())
            .map(|entry| entry.file_name().to_string_lossy().into_owned())
            .filter(|name| name.ends_with(".md"))
            .map(|name| format!("{dir}/{name}"))
            .collect();
        pages.sort();
        docs.extend(pages);
    }
    for doc in &docs {
        let text = std::fs::read_to_string(root.join(doc)).expect(doc);
        for command in documented_commands(&text) {
            let output = Command::new(KIROKU)
                .args(&command[1..])
                .arg("--help")
                .env_remove("KIROKU_API_KEY")
                .output()
                .expect("run kiroku");
            checked += 1;
            if !output.status.success() {
                failures.push(format!(
                    "{doc}: {}\n    {}",
                    command.join(" "),
                    String::from_utf8_lossy(&output.stderr)
                        .lines()
                        .next()
                        .unwrap_or_default()
                ));
            }
        }
    }
    assert!(checked >= 40, "only {checked} documented commands found");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn documented_commands_are_read_as_a_shell_would() {
    let commands = documented_commands(
        "text\n```sh\nkiroku admin user list | disable ID   # note\nkiroku meetings list [--tag x]\n\
         kiroku admin notice publish --title \"a b\" \\\nnot kiroku\nkiroku whoami; kiroku logout\n\
         kiroku admin backup --out /b/$(date +%F)/\n```\nkiroku outside\n```\nkiroku diagram\n```\n",
    );
    let expected: Vec<Vec<&str>> = vec![
        vec!["kiroku", "admin", "user", "list"],
        vec!["kiroku", "admin", "user", "disable", "ID"],
        vec!["kiroku", "meetings", "list"],
        vec!["kiroku", "admin", "notice", "publish", "--title", "a b"],
        vec!["kiroku", "whoami"],
        vec!["kiroku", "logout"],
        vec!["kiroku", "admin", "backup", "--out", "/b/VALUE/"],
    ];
    assert_eq!(commands, expected);
}
