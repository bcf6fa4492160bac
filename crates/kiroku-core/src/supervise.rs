//! Child processes running `kiroku serve <role>`: started, their ready line read,
//! stopped. The one supervisor of `kiroku up` and of the end-to-end test harness
//! (`tests/src/cluster.rs`).
//!
//! A service logs to stderr (here: a file of its own) and prints one ready line on
//! stdout once its ports are bound ([`ReadyLine`]). [`start`] waits for that line, then
//! keeps draining stdout so the child never blocks on a full pipe. Stopping is SIGTERM
//! ([`terminate`]: the service drains its work), then a kill after a grace period
//! ([`wait_or_kill`]). Readiness is `GET /readyz` on the admin address ([`http_get`]).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::ready::ReadyLine;

/// A started service: its process and what its ready line said.
#[derive(Debug)]
pub struct Started {
    pub child: Child,
    pub ready: ReadyLine,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create its log {}: {source}", log.display())]
    Log {
        log: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start it: {0}")]
    Spawn(#[source] std::io::Error),
    /// It exited, or printed something else, or nothing within the time allowed; it
    /// is killed.
    #[error(
        "it did not start ({}): see {}",
        match exit { Some(status) => format!("exited, {status}"), None if printed.is_empty() => format!("no ready line within {} s", waited.as_secs()), None => format!("printed {printed:?}") },
        log.display()
    )]
    NotReady {
        log: PathBuf,
        waited: Duration,
        /// What it printed instead of a ready line (empty: nothing).
        printed: String,
        exit: Option<ExitStatus>,
    },
}

impl StartError {
    /// The log of the service that did not start.
    pub fn log(&self) -> Option<&Path> {
        match self {
            Self::Log { log, .. } | Self::NotReady { log, .. } => Some(log),
            Self::Spawn(_) => None,
        }
    }
}

/// Starts `command` with stdin closed, stdout piped and stderr written to `log`
/// (created afresh), and waits up to `timeout` for its ready line. A child that prints
/// none is killed.
pub fn start(command: &mut Command, log: &Path, timeout: Duration) -> Result<Started, StartError> {
    let file = std::fs::File::create(log).map_err(|source| StartError::Log {
        log: log.to_path_buf(),
        source,
    })?;
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(file);
    let mut child = command.spawn().map_err(StartError::Spawn)?;
    let began = Instant::now();
    let line = child
        .stdout
        .take()
        .and_then(|stdout| first_line(stdout, timeout));
    if let Some(ready) = line.as_deref().and_then(ReadyLine::parse) {
        return Ok(Started { child, ready });
    }
    // An empty line is end of file: the child closed stdout, which it does as it
    // exits, a moment before it can be reaped. Wait that moment so the error says
    // how it exited rather than "no ready line".
    let exit = if line.as_deref() == Some("") {
        exit_within(&mut child, EXITING)
    } else {
        child.try_wait().ok().flatten()
    };
    let line = line.unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    Err(StartError::NotReady {
        log: log.to_path_buf(),
        waited: began.elapsed(),
        printed: line.trim().to_string(),
        exit,
    })
}

/// How long a child that closed its stdout is given to finish exiting.
const EXITING: Duration = Duration::from_secs(2);

/// The child's exit status if it exits within `within`.
fn exit_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + within;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The first line of `stdout` within `timeout` (`None` when none came, empty at end
/// of file); the rest is drained on a thread of its own.
fn first_line(stdout: ChildStdout, timeout: Duration) -> Option<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let _ = reader.read_line(&mut line);
        let _ = tx.send(line);
        let mut sink = [0u8; 4096];
        while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
    });
    rx.recv_timeout(timeout).ok()
}

/// SIGTERM: the service stops taking work, drains and exits on its own.
pub fn terminate(child: &Child) {
    let Ok(pid) = i32::try_from(child.id()) else {
        return;
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    );
}

/// Waits up to `grace` for the child to exit, then kills it; how it ended.
pub fn wait_or_kill(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    exit_within(child, grace).or_else(|| {
        let _ = child.kill();
        child.wait().ok()
    })
}

/// `GET path` on an admin address (`host:port` or `http://host:port`): the status code
/// and body, `None` when nothing answered within `timeout`.
pub fn http_get(base: &str, path: &str, timeout: Duration) -> Option<(u16, String)> {
    let address = base.trim_start_matches("http://");
    let socket = std::net::ToSocketAddrs::to_socket_addrs(address)
        .ok()?
        .next()?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shell(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.args(["-c", script]);
        command
    }

    #[test]
    fn a_service_is_started_by_its_ready_line_and_stopped_by_sigterm() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("svc.log");
        let mut command = shell(
            // The trap is set before the ready line: a service is ready only once it
            // handles SIGTERM (CI once sent it between the two).
            "trap 'echo drained >&2; exit 0' TERM; echo starting >&2; \
             echo 'kiroku worker admin=http://127.0.0.1:9'; while true; do sleep 0.05; done",
        );
        let mut started = start(&mut command, &log, Duration::from_secs(10)).expect("started");
        assert_eq!(started.ready.role, "worker");
        assert_eq!(started.ready.admin, "http://127.0.0.1:9");
        terminate(&started.child);
        let status = wait_or_kill(&mut started.child, Duration::from_secs(10)).expect("exited");
        assert!(status.success(), "{status}");
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(
            text.contains("starting") && text.contains("drained"),
            "{text}"
        );
    }

    #[test]
    fn a_child_without_a_ready_line_is_reported_with_its_log_and_killed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("svc.log");
        let error = start(
            &mut shell("echo 'cannot bind' >&2; exit 3"),
            &log,
            Duration::from_secs(10),
        )
        .expect_err("no ready line");
        assert_eq!(error.log(), Some(log.as_path()));
        assert!(error.to_string().contains("exit status: 3"), "{error}");

        let error = start(
            &mut shell("echo hello; exec sleep 30"),
            &log,
            Duration::from_secs(10),
        )
        .expect_err("not a ready line");
        assert!(error.to_string().contains("printed \"hello\""), "{error}");

        let began = Instant::now();
        let error = start(
            &mut shell("exec sleep 30"),
            &log,
            Duration::from_millis(300),
        )
        .expect_err("silent");
        assert!(error.to_string().contains("no ready line"), "{error}");
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the silent child was killed"
        );
    }

    #[test]
    fn a_child_that_ignores_sigterm_is_killed_after_the_grace() {
        let mut child = shell("trap '' TERM; exec sleep 30").spawn().expect("spawn");
        std::thread::sleep(Duration::from_millis(100));
        terminate(&child);
        let status = wait_or_kill(&mut child, Duration::from_millis(300)).expect("ended");
        assert!(!status.success());
    }
}
