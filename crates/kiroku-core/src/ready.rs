//! The one line a service prints on stdout once its ports are bound, and how it is read:
//!
//! ```text
//! kiroku gateway grpc=http://127.0.0.1:50051 admin=http://127.0.0.1:9464
//! kiroku worker admin=http://127.0.0.1:9465
//! ```
//!
//! With `--listen 127.0.0.1:0` the operating system picks the ports; `kiroku up`, the
//! test harness and deployment scripts learn them from this line. Readiness itself is
//! `GET /readyz` on the admin address.

use std::fmt;
use std::net::SocketAddr;

/// A service's ready line: its role and the base URLs of its ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyLine {
    /// `gateway`, `worker`, `account`, `audit` or `storage`.
    pub role: String,
    /// `http://host:port` of the gRPC API; none for a worker.
    pub grpc: Option<String>,
    /// `http://host:port` of `/healthz`, `/readyz` and `/metrics`.
    pub admin: String,
}

impl ReadyLine {
    pub fn new(role: &str, grpc: Option<SocketAddr>, admin: SocketAddr) -> Self {
        Self {
            role: role.to_string(),
            grpc: grpc.map(|address| format!("http://{address}")),
            admin: format!("http://{admin}"),
        }
    }

    /// Prints the line on stdout and flushes it (stdout may be a pipe).
    pub fn announce(&self) {
        use std::io::Write as _;
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{self}");
        let _ = stdout.flush();
    }

    /// Reads a line printed by [`ReadyLine::announce`]; `None` for anything else (a
    /// service that failed to start prints nothing, or an error on stderr).
    pub fn parse(line: &str) -> Option<Self> {
        let mut parts = line.split_whitespace();
        if parts.next()? != "kiroku" {
            return None;
        }
        let role = parts.next()?.to_string();
        let (mut grpc, mut admin) = (None, None);
        for part in parts {
            match part.split_once('=') {
                Some(("grpc", url)) => grpc = Some(url.to_string()),
                Some(("admin", url)) => admin = Some(url.to_string()),
                _ => {}
            }
        }
        Some(Self {
            role,
            grpc,
            admin: admin?,
        })
    }

    /// `host:port` of the admin address (what a TCP probe connects to).
    pub fn admin_address(&self) -> &str {
        self.admin.trim_start_matches("http://")
    }
}

impl fmt::Display for ReadyLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "kiroku {}", self.role)?;
        if let Some(grpc) = &self.grpc {
            write!(f, " grpc={grpc}")?;
        }
        write!(f, " admin={}", self.admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printed_line_reads_back() {
        let admin: SocketAddr = "127.0.0.1:9464".parse().expect("address");
        let grpc: SocketAddr = "[::1]:50051".parse().expect("address");
        for line in [
            ReadyLine::new("gateway", Some(grpc), admin),
            ReadyLine::new("worker", None, admin),
        ] {
            let text = line.to_string();
            assert_eq!(ReadyLine::parse(&text), Some(line), "{text}");
        }
        let gateway = ReadyLine::new("gateway", Some(grpc), admin);
        assert_eq!(
            gateway.to_string(),
            "kiroku gateway grpc=http://[::1]:50051 admin=http://127.0.0.1:9464"
        );
        assert_eq!(gateway.admin_address(), "127.0.0.1:9464");
    }

    #[test]
    fn other_lines_are_not_ready_lines() {
        for line in [
            "",
            "kiroku",
            "kiroku gateway grpc=http://127.0.0.1:1",
            "error: --listen: address in use",
            "other gateway admin=http://127.0.0.1:1",
        ] {
            assert_eq!(ReadyLine::parse(line), None, "{line:?}");
        }
    }
}
