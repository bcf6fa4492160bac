//! `kiroku`: one binary for every role and command.
//!
//! Exit codes: 0 success, 2 bad input or usage (the message says which), 1 anything
//! else. Errors are printed as one `error: ...` line on stderr.

mod account;
mod audit;
mod backup;
mod bench;
mod config;
mod credentials;
mod deadletters;
mod minutes;
mod model;
mod notice;
mod serve;
mod stream;
mod transcribe;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "kiroku",
    version,
    about = "Kiroku: streaming transcription for live meetings"
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Transcribe a WAV file and print the transcript (txt, json, srt or vtt).
    Transcribe(transcribe::Args),
    /// Fetch, convert and list Whisper models.
    #[command(subcommand)]
    Model(model::Command),
    /// Run one service in the foreground (what a container runs).
    #[command(subcommand)]
    Serve(serve::Role),
    /// Every setting (environment variable, flag, default, meaning):
    /// `kiroku config --print-defaults`.
    Config(config::Args),
    /// Run the whole cluster locally (gateway and workers; NATS reused or started).
    Up(up::Args),
    /// Stream a WAV file to a gateway in real time and show live captions.
    Stream(stream::Args),
    /// Sign in and cache the login (~/.config/kiroku, mode 0600).
    Login(account::LoginArgs),
    /// Sign out: revoke the cached session and delete it.
    Logout,
    /// Show who the cached login (or KIROKU_API_KEY) is.
    Whoami(account::AccountUrl),
    /// Join a tenant with an invitation token.
    AcceptInvite {
        #[command(flatten)]
        url: account::AccountUrl,
        token: String,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        password: account::PasswordInput,
    },
    /// Two-factor sign-in (TOTP) for your user.
    #[command(subcommand)]
    Mfa(account::MfaCommand),
    /// Recording consent of meeting participants.
    #[command(subcommand)]
    Consent(account::ConsentCommand),
    /// Tenant administration (admins with MFA).
    #[command(subcommand)]
    Admin(account::AdminCommand),
    /// The minutes: list, show and search meetings.
    #[command(subcommand)]
    Meetings(minutes::MeetingsCommand),
    /// Export a meeting as txt, srt, vtt, json or docx (stdout unless --out).
    Export(minutes::ExportArgs),
    /// Tags, bookmarks and memos on meetings.
    #[command(subcommand)]
    Label(minutes::LabelCommand),
    /// Plumbing benchmark against null-benchmark workers (see `make bench-stream`).
    #[command(hide = true)]
    BenchPlumbing(bench::Args),
}

/// An error whose cause is the user's input: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// The async runtime a client command runs its calls on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    use anyhow::Context as _;
    tokio::runtime::Runtime::new().context("starting the async runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // whisper.cpp logs its own errors; the CLI reports them as one line instead
    // (`RUST_LOG=whisper_rs=debug` shows them).
    // Services set up their own telemetry (service name, OTLP export).
    if !matches!(cli.command, Command::Serve(_)) {
        kiroku_core::telemetry::init("warn,whisper_rs=off", &config::telemetry_settings());
    }
    let result = match cli.command {
        Command::Transcribe(args) => transcribe::run(args),
        Command::Model(command) => model::run(command),
        Command::Serve(role) => serve::run(role),
        Command::Up(args) => up::run(args),
        Command::Config(args) => config::run(args),
        Command::Stream(args) => stream::run(args),
        Command::BenchPlumbing(args) => bench::run(args),
        Command::Login(args) => account::login(args),
        Command::Logout => account::logout(),
        Command::Whoami(url) => account::whoami(url),
        Command::AcceptInvite {
            url,
            token,
            name,
            password,
        } => account::accept_invite(url, token, name, password),
        Command::Mfa(command) => account::mfa(command),
        Command::Consent(command) => account::consent(command),
        Command::Admin(command) => account::admin(command),
        Command::Meetings(command) => minutes::meetings(command),
        Command::Export(args) => minutes::export(args),
        Command::Label(command) => minutes::label(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the chain of causes joined, never a backtrace.
            let message = error
                .chain()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(": ");
            eprintln!("error: {message}");
            if error.downcast_ref::<InputError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
pub fn progress_bar(len: u64, message: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let bar = if std::io::stderr().is_terminal() {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}
