//! `kiroku admin audit list|verify|export|time-zone`: the tenant's audit log (admins
//! with MFA), timestamps in the tenant's zone (Asia/Tokyo unless set).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use kiroku_proto::audit::v1 as pb;
use kiroku_proto::audit::v1::audit_service_client::AuditServiceClient;

use crate::InputError;
use crate::credentials::{attach, credential};

/// Where the CLI finds the audit service by default.
pub use kiroku_core::settings::DEFAULT_AUDIT_URL;

#[derive(Debug, Clone, clap::Args)]
pub struct AuditUrl {
    /// The audit service.
    #[arg(long, env = "KIROKU_AUDIT_URL", default_value = DEFAULT_AUDIT_URL)]
    pub audit: String,
}

/// Which log a listing, verification or export reads.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    #[command(flatten)]
    pub url: AuditUrl,
    /// The service operator's own log (refused operator calls), read with
    /// KIROKU_OPERATOR_TOKEN on the audit service's internal address.
    #[arg(long)]
    pub operator: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FilterArgs {
    /// From this time (RFC 3339, e.g. 2026-11-26T09:00:00+09:00).
    #[arg(long)]
    pub from: Option<String>,
    /// Before this time (RFC 3339).
    #[arg(long)]
    pub to: Option<String>,
    /// Only this actor (user or API key id).
    #[arg(long)]
    pub actor: Option<String>,
    /// Only this action, e.g. login.failed.
    #[arg(long)]
    pub action: Option<String>,
    /// Only this meeting.
    #[arg(long)]
    pub meeting: Option<String>,
    /// Render times in this IANA zone instead of the tenant's.
    #[arg(long)]
    pub zone: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// Newest first.
    List {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Entries to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Check the tenant's hash chain; exit 1 naming the first broken entry.
    Verify(LogArgs),
    /// Write the log as CSV or JSON (stdout unless --out).
    Export {
        #[command(flatten)]
        log: LogArgs,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, default_value = "csv")]
        format: String,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Set the zone the tenant's timestamps are shown in (IANA name).
    TimeZone {
        #[command(flatten)]
        url: AuditUrl,
        zone: String,
    },
    /// Usage per day (`kiroku admin usage`).
    #[command(skip)]
    Usage(UsageArgs),
}

/// `kiroku admin usage`: streams, audio minutes, errors and final latency per day.
#[derive(Debug, Clone, clap::Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub url: AuditUrl,
    /// From this time (RFC 3339) [default: 30 days before --to].
    #[arg(long)]
    pub from: Option<String>,
    /// Before this time (RFC 3339) [default: now].
    #[arg(long)]
    pub to: Option<String>,
    /// Cut days in this IANA zone instead of the tenant's.
    #[arg(long)]
    pub zone: Option<String>,
}

pub fn timestamp(text: &Option<String>, what: &str) -> Result<Option<prost_types::Timestamp>> {
    let Some(text) = text else { return Ok(None) };
    let time = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|_| InputError(format!("--{what} {text:?} is not an RFC 3339 time")))?;
    Ok(Some(prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }))
}

impl FilterArgs {
    fn filter(&self) -> Result<pb::Filter> {
        Ok(pb::Filter {
            from: timestamp(&self.from, "from")?,
            to: timestamp(&self.to, "to")?,
            actor_id: self.actor.clone().unwrap_or_default(),
            action: self.action.clone().unwrap_or_default(),
            meeting_id: self.meeting.clone().unwrap_or_default(),
        })
    }
}

pub fn refused(status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::InvalidArgument
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::OutOfRange
        | Code::FailedPrecondition => InputError(message).into(),
        _ => anyhow::anyhow!(message),
    }
}

pub fn run(command: AuditCommand) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let (url, operator) = match &command {
            AuditCommand::List { log, .. }
            | AuditCommand::Verify(log)
            | AuditCommand::Export { log, .. } => (log.url.audit.clone(), log.operator),
            AuditCommand::TimeZone { url, .. } | AuditCommand::Usage(UsageArgs { url, .. }) => {
                (url.audit.clone(), false)
            }
        };
        let credential = if operator {
            crate::notice::operator_credential()?
        } else {
            credential().await?
        };
        let mut client =
            AuditServiceClient::new(connect(&url).await?).max_decoding_message_size(256 << 20);
        let cred = &credential;
        match command {
            AuditCommand::List { filter, limit, .. } => {
                list_events(&mut client, &filter, limit, cred).await?;
            }
            AuditCommand::Verify(_) => verify_chain(&mut client, cred).await?,
            AuditCommand::Export {
                filter,
                format,
                out,
                ..
            } => export(&mut client, &filter, &format, out, cred).await?,
            AuditCommand::TimeZone { zone, .. } => {
                let set = client
                    .set_time_zone(authed(pb::SetTimeZoneRequest { time_zone: zone }, cred))
                    .await
                    .map_err(refused)?
                    .into_inner();
                println!("audit times are shown in {}", set.time_zone);
            }
            AuditCommand::Usage(args) => {
                let usage = client
                    .get_usage(authed(
                        pb::GetUsageRequest {
                            from: timestamp(&args.from, "from")?,
                            to: timestamp(&args.to, "to")?,
                            time_zone: args.zone.clone().unwrap_or_default(),
                        },
                        cred,
                    ))
                    .await
                    .map_err(refused)?
                    .into_inner();
                print_usage(&usage);
            }
        }
        Ok(())
    })
}

type Client = AuditServiceClient<tonic::transport::Channel>;
type Credential = (&'static str, tonic::metadata::AsciiMetadataValue);

/// `kiroku audit list`: up to `limit` entries, a page at a time.
async fn list_events(
    client: &mut Client,
    filter: &FilterArgs,
    limit: u32,
    cred: &Credential,
) -> Result<()> {
    let mut shown = 0u32;
    let mut page_token = String::new();
    while shown < limit {
        let page = client
            .list_events(authed(
                pb::ListEventsRequest {
                    filter: Some(filter.filter()?),
                    page_size: (limit - shown).min(kiroku_audit::MAX_PAGE),
                    page_token: page_token.clone(),
                    time_zone: filter.zone.clone().unwrap_or_default(),
                },
                cred,
            ))
            .await
            .map_err(refused)?
            .into_inner();
        for e in &page.entries {
            // The actor's e-mail or key name as recorded, else its id.
            let actor = e
                .details
                .get(kiroku_core::audit::ACTOR_DETAIL)
                .filter(|name| !name.trim().is_empty())
                .unwrap_or(&e.actor_id);
            println!(
                "{:>6}  {}  {:<24} {:<8} {:<9} {}:{}  {}",
                e.seq,
                e.occurred_at,
                e.action,
                e.outcome,
                e.actor_kind,
                actor,
                if e.target.is_empty() { "-" } else { &e.target },
                e.source_ip
            );
            shown += 1;
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(())
}

/// `kiroku audit verify`: an error when the chain is broken.
async fn verify_chain(client: &mut Client, cred: &Credential) -> Result<()> {
    let result = client
        .verify_chain(authed(pb::VerifyChainRequest {}, cred))
        .await
        .map_err(refused)?
        .into_inner();
    if !result.intact {
        anyhow::bail!(
            "audit chain BROKEN at entry {}: {} ({} entries verified before it)",
            result.first_broken_seq,
            result.problem,
            result.entries_checked
        );
    }
    println!(
        "audit chain intact: {} entries verified",
        result.entries_checked
    );
    Ok(())
}

/// `kiroku audit export`: to `out` (written beside it and renamed at the end, so an
/// export that fails half-way leaves no truncated file behind) or stdout.
async fn export(
    client: &mut Client,
    filter: &FilterArgs,
    format: &str,
    out: Option<PathBuf>,
    cred: &Credential,
) -> Result<()> {
    let format = match format {
        "csv" => pb::ExportFormat::Csv,
        "json" => pb::ExportFormat::Json,
        other => {
            return Err(InputError(format!("format {other:?}: use csv or json")).into());
        }
    };
    let request = authed(
        pb::ExportEventsRequest {
            filter: Some(filter.filter()?),
            format: format as i32,
            time_zone: filter.zone.clone().unwrap_or_default(),
        },
        cred,
    );
    let Some(path) = out else {
        let mut stdout = std::io::stdout().lock();
        stream_export(client, request, &mut stdout, false).await?;
        return Ok(());
    };
    let part = path.with_extension("part");
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?,
    );
    let result = stream_export(client, request, &mut file, true).await;
    let entries = match result.and_then(|n| {
        use std::io::Write as _;
        file.flush()?;
        Ok(n)
    }) {
        Ok(n) => n,
        Err(error) => {
            let _ = std::fs::remove_file(&part);
            return Err(error);
        }
    };
    std::fs::rename(&part, &path).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("{entries} entries written to {}", path.display());
    Ok(())
}

/// Connects to the audit service (notices use it too).
pub async fn connect(url: &str) -> Result<tonic::transport::Channel> {
    tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|_| InputError(format!("audit service url {url:?} is not a URL")))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .with_context(|| format!("connecting to the audit service at {url}"))
}

/// A request carrying the caller's credential.
pub fn authed<T>(
    body: T,
    credential: &(&'static str, tonic::metadata::AsciiMetadataValue),
) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    attach(request.metadata_mut(), credential);
    request
}

fn print_usage(usage: &pb::GetUsageResponse) {
    println!(
        "{:<10}  {:>7}  {:>6}  {:>7}  {:>9}  {:>6}  {:>11}  {:>11}",
        "day", "streams", "failed", "refused", "audio min", "finals", "latency p50", "latency p95"
    );
    let line = |label: &str, u: &pb::Usage| {
        let ms = |v: u32| {
            if v == 0 {
                "-".to_string()
            } else {
                format!("{v} ms")
            }
        };
        println!(
            "{:<10}  {:>7}  {:>6}  {:>7}  {:>9.1}  {:>6}  {:>11}  {:>11}",
            label,
            u.streams,
            u.failed_streams,
            u.refused_streams,
            u.audio_minutes,
            u.finals,
            ms(u.final_latency_p50_ms),
            ms(u.final_latency_p95_ms)
        );
    };
    for day in &usage.days {
        line(&day.date, day);
    }
    if let Some(total) = &usage.total {
        line("total", total);
    }
    println!("(days in {})", usage.time_zone);
}

/// The tenant's whole audit log as JSON (oldest first), for the tenant bundle.
pub async fn export_all(
    url: &str,
    credential: &(&'static str, tonic::metadata::AsciiMetadataValue),
) -> Result<pb::ExportEventsResponse> {
    let mut client = AuditServiceClient::new(connect(url).await?);
    let request = authed(
        pb::ExportEventsRequest {
            filter: None,
            format: pb::ExportFormat::Json as i32,
            time_zone: String::new(),
        },
        credential,
    );
    let mut data = Vec::new();
    let entries = stream_export(&mut client, request, &mut data, false).await?;
    Ok(pb::ExportEventsResponse {
        data,
        entries,
        content_type: "application/json".into(),
    })
}

/// Writes a streamed export (`ExportEventsStream`) into `sink` chunk by chunk; the
/// number of entries. With `progress`, a count on stderr every 10,000 entries.
async fn stream_export(
    client: &mut AuditServiceClient<tonic::transport::Channel>,
    request: tonic::Request<pb::ExportEventsRequest>,
    sink: &mut impl std::io::Write,
    progress: bool,
) -> Result<u64> {
    const PROGRESS_EVERY: u64 = 10_000;
    let mut chunks = client
        .export_events_stream(request)
        .await
        .map_err(refused)?
        .into_inner();
    let mut entries = 0;
    while let Some(chunk) = chunks.message().await.map_err(refused)? {
        sink.write_all(&chunk.data)?;
        if progress && (entries + chunk.entries) / PROGRESS_EVERY > entries / PROGRESS_EVERY {
            eprintln!("{} entries so far…", entries + chunk.entries);
        }
        entries += chunk.entries;
    }
    Ok(entries)
}
