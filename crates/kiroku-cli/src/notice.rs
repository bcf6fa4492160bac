//! `kiroku admin notice publish|list`: service notices (controls 12.1.2, 12.6.1, 16.1.1).
//! The operator publishes with `KIROKU_OPERATOR_TOKEN`; any signed-in tenant user lists
//! the notices that concern their tenant, the operator (`--operator`) lists all.

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use kiroku_account::auth::OperatorToken;
use kiroku_proto::audit::v1 as pb;
use kiroku_proto::audit::v1::notice_service_client::NoticeServiceClient;

use crate::InputError;
use crate::audit::{AuditUrl, authed, connect, refused, timestamp};
use crate::credentials::credential;

#[derive(Debug, clap::Subcommand)]
pub enum NoticeCommand {
    /// Publish a notice to every tenant (or those given) and mail their admins
    /// (operator only: KIROKU_OPERATOR_TOKEN).
    Publish {
        #[command(flatten)]
        url: AuditUrl,
        /// change, maintenance, vulnerability or incident.
        #[arg(long)]
        kind: String,
        /// One line, at most 200 characters.
        #[arg(long)]
        title: String,
        /// The text (or --body-file).
        #[arg(
            long,
            conflicts_with = "body_file",
            required_unless_present = "body_file"
        )]
        body: Option<String>,
        #[arg(long)]
        body_file: Option<PathBuf>,
        /// Incidents: when it was detected (RFC 3339); the deadline is 72 hours later.
        #[arg(long)]
        detected_at: Option<String>,
        /// A tenant id or slug (repeat for several) [default: every tenant].
        #[arg(long = "tenant")]
        tenants: Vec<String>,
    },
    /// Notices newest first: your tenant's, or every notice with --operator.
    List {
        #[command(flatten)]
        url: AuditUrl,
        /// As the operator (KIROKU_OPERATOR_TOKEN): every notice and its mail counts.
        #[arg(long)]
        operator: bool,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
}

/// The operator token from `KIROKU_OPERATOR_TOKEN`, or the file `KIROKU_OPERATOR_TOKEN_FILE`
/// names (`kiroku up` writes `.run/operator-token`).
pub fn operator_credential() -> Result<(&'static str, tonic::metadata::AsciiMetadataValue)> {
    let token = kiroku_core::secret::from_env(OperatorToken::ENV)
        .map_err(|e| anyhow::anyhow!("reading the operator token: {e}"))?
        .ok_or_else(|| {
            InputError(format!(
                "set {} (or {}) to act as the operator",
                OperatorToken::ENV,
                OperatorToken::FILE_ENV
            ))
        })?
        .text;
    let value = token.trim().parse().map_err(|_| {
        InputError(format!(
            "{} is not a valid header value",
            OperatorToken::ENV
        ))
    })?;
    Ok((OperatorToken::METADATA, value))
}

fn kind_name(kind: i32) -> &'static str {
    match pb::NoticeKind::try_from(kind) {
        Ok(pb::NoticeKind::Change) => "change",
        Ok(pb::NoticeKind::Maintenance) => "maintenance",
        Ok(pb::NoticeKind::Vulnerability) => "vulnerability",
        Ok(pb::NoticeKind::Incident) => "incident",
        _ => "unknown",
    }
}

fn print_notice(notice: &pb::Notice) {
    println!(
        "{}  {:<13} {}  [{}]",
        notice.published_at,
        kind_name(notice.kind),
        notice.title,
        notice.id
    );
    if !notice.deadline.is_empty() {
        println!(
            "    detected {}  deadline {}{}",
            notice.detected_at,
            notice.deadline,
            if notice.past_deadline {
                "  PAST DEADLINE"
            } else {
                ""
            }
        );
    }
    if !notice.tenants.is_empty() {
        println!("    tenants: {}", notice.tenants.join(", "));
    }
    println!(
        "    mail: {} sent, {} pending, {} failed",
        notice.mails_sent, notice.mails_pending, notice.mails_failed
    );
    for line in notice.body.lines() {
        println!("    | {line}");
    }
}

pub fn run(command: NoticeCommand) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        match command {
            NoticeCommand::Publish {
                url,
                kind,
                title,
                body,
                body_file,
                detected_at,
                tenants,
            } => {
                let kind = match kind.as_str() {
                    "change" => pb::NoticeKind::Change,
                    "maintenance" => pb::NoticeKind::Maintenance,
                    "vulnerability" => pb::NoticeKind::Vulnerability,
                    "incident" => pb::NoticeKind::Incident,
                    other => {
                        return Err(InputError(format!(
                            "kind {other:?}: use change, maintenance, vulnerability or incident"
                        ))
                        .into());
                    }
                };
                let body = match (body, body_file) {
                    (Some(body), _) => body,
                    (None, Some(path)) => std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?,
                    (None, None) => {
                        return Err(InputError("give --body or --body-file".into()).into());
                    }
                };
                let credential = operator_credential()?;
                let mut client = NoticeServiceClient::new(connect(&url.audit).await?);
                let notice = client
                    .publish_notice(authed(
                        pb::PublishNoticeRequest {
                            kind: kind as i32,
                            title,
                            body,
                            tenants,
                            detected_at: timestamp(&detected_at, "detected-at")?,
                        },
                        &credential,
                    ))
                    .await
                    .map_err(refused)?
                    .into_inner();
                println!(
                    "notice {} published; {} mail(s) queued",
                    notice.id, notice.mails_pending
                );
                if !notice.deadline.is_empty() {
                    println!(
                        "notification deadline {}{}",
                        notice.deadline,
                        if notice.past_deadline {
                            " (ALREADY PAST)"
                        } else {
                            ""
                        }
                    );
                }
            }
            NoticeCommand::List {
                url,
                operator,
                limit,
            } => {
                let credential = if operator {
                    operator_credential()?
                } else {
                    credential().await?
                };
                let mut client = NoticeServiceClient::new(connect(&url.audit).await?);
                let mut shown = 0u32;
                let mut page_token = String::new();
                while shown < limit {
                    let page = client
                        .list_notices(authed(
                            pb::ListNoticesRequest {
                                page_size: (limit - shown).min(kiroku_audit::MAX_PAGE),
                                page_token: page_token.clone(),
                            },
                            &credential,
                        ))
                        .await
                        .map_err(refused)?
                        .into_inner();
                    for notice in &page.notices {
                        print_notice(notice);
                        shown += 1;
                    }
                    if page.next_page_token.is_empty() {
                        break;
                    }
                    page_token = page.next_page_token;
                }
                if shown == 0 {
                    println!("no notices");
                }
            }
        }
        Ok(())
    })
}
