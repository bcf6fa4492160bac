//! Notices from the service operator to tenants (controls 12.1.2, 12.6.1, 16.1.1):
//! changes, maintenance, vulnerabilities and incidents. A notice is stored with one mail
//! delivery per admin and owner address of every tenant it concerns (an outbox: the
//! mailer sends what is due, retries failures with back-off, and records the outcome),
//! so a notice is never lost between the web API and the mail.
//!
//! An incident carries its detection time and a notification deadline 72 hours later; a
//! notice that did not reach every recipient before its deadline is flagged
//! ([`past_deadline`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use kiroku_core::db::Db;
use kiroku_proto::account::v1::TenantRecipients;
use kiroku_proto::audit::v1 as pb;
use lettre::message::{Mailbox, Message, header::ContentType};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport as _, Tokio1Executor};
use sha2::Digest as _;
use sqlx::Row as _;
use tokio::sync::Notify;
use tracing::{info, warn};
use uuid::Uuid;

use crate::render;

/// The time from an incident's detection to the deadline for notifying tenants.
pub const INCIDENT_DEADLINE: Duration = Duration::from_secs(72 * 3600);
/// Longest title, in characters.
pub const MAX_TITLE: usize = 200;
/// Longest body, in characters.
pub const MAX_BODY: usize = 20_000;
/// Most tenants one notice may name.
pub const MAX_TENANTS: usize = 1000;
/// Mail attempts per recipient before a delivery is marked failed: back-off doubles from
/// 2 s to at most 10 minutes, so this is about three days of a mail server being down.
/// A permanent refusal (SMTP 5xx, e.g. an unknown mailbox) fails at once.
pub const MAX_ATTEMPTS: i32 = 440;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Change,
    Maintenance,
    Vulnerability,
    Incident,
}

impl Kind {
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::NoticeKind::try_from(value).ok()? {
            pb::NoticeKind::Change => Some(Self::Change),
            pb::NoticeKind::Maintenance => Some(Self::Maintenance),
            pb::NoticeKind::Vulnerability => Some(Self::Vulnerability),
            pb::NoticeKind::Incident => Some(Self::Incident),
            pb::NoticeKind::Unspecified => None,
        }
    }
    pub fn to_proto(self) -> pb::NoticeKind {
        match self {
            Self::Change => pb::NoticeKind::Change,
            Self::Maintenance => pb::NoticeKind::Maintenance,
            Self::Vulnerability => pb::NoticeKind::Vulnerability,
            Self::Incident => pb::NoticeKind::Incident,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Change => "change",
            Self::Maintenance => "maintenance",
            Self::Vulnerability => "vulnerability",
            Self::Incident => "incident",
        }
    }
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Change,
            Self::Maintenance,
            Self::Vulnerability,
            Self::Incident,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
    /// How the kind reads in a mail subject.
    fn label(self) -> &'static str {
        match self {
            Self::Change => "Change",
            Self::Maintenance => "Maintenance",
            Self::Vulnerability => "Vulnerability",
            Self::Incident => "Incident",
        }
    }
}

/// A checked publish request.
#[derive(Debug, Clone)]
pub struct Draft {
    pub kind: Kind,
    pub title: String,
    pub body: String,
    /// Tenant ids or slugs as given; empty: every tenant.
    pub tenants: Vec<String>,
    pub detected_at: Option<DateTime<Utc>>,
}

/// Checks a publish request: the reason goes back as `INVALID_ARGUMENT`.
pub fn validate(request: pb::PublishNoticeRequest, now: DateTime<Utc>) -> Result<Draft, String> {
    let kind = Kind::from_proto(request.kind)
        .ok_or("kind must be change, maintenance, vulnerability or incident")?;
    let title = request.title.trim().to_string();
    if title.is_empty() || title.chars().count() > MAX_TITLE {
        return Err(format!("title must be 1 to {MAX_TITLE} characters"));
    }
    // A line break in a title would end the mail's Subject header (header injection).
    if title.chars().any(char::is_control) {
        return Err("title must not contain control characters (line breaks included)".into());
    }
    let body = request.body.trim().to_string();
    if body.is_empty() || body.chars().count() > MAX_BODY {
        return Err(format!("body must be 1 to {MAX_BODY} characters"));
    }
    if body
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(
            "body must not contain control characters other than line breaks and tabs".into(),
        );
    }
    if request.tenants.len() > MAX_TENANTS {
        return Err(format!("at most {MAX_TENANTS} tenants per notice"));
    }
    let tenants: Vec<String> = request
        .tenants
        .iter()
        .map(|t| t.trim().to_string())
        .collect();
    if tenants.iter().any(String::is_empty) {
        return Err("a tenant must be an id or a slug, not empty".into());
    }
    let detected_at = match (kind, request.detected_at) {
        (Kind::Incident, None) => {
            return Err("an incident needs detected_at (when it was detected)".into());
        }
        (Kind::Incident, Some(t)) => {
            let at = DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32)
                .ok_or("detected_at is out of range")?;
            if at > now + chrono::Duration::minutes(5) {
                return Err("detected_at is in the future".into());
            }
            Some(at)
        }
        (_, Some(_)) => return Err("detected_at is for incidents only".into()),
        (_, None) => None,
    };
    Ok(Draft {
        kind,
        title,
        body,
        tenants,
        detected_at,
    })
}

/// Whether an incident notice missed its deadline: it was published after it, or some
/// recipient was not mailed before it (still pending or failed once it passed, or sent
/// late).
pub fn past_deadline(
    deadline: Option<DateTime<Utc>>,
    published_at: DateTime<Utc>,
    unsent: u32,
    last_sent_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> bool {
    let Some(deadline) = deadline else {
        return false;
    };
    if published_at > deadline {
        return true;
    }
    if unsent > 0 {
        return now > deadline;
    }
    last_sent_at.is_some_and(|sent| sent > deadline)
}

/// A stored notice with its delivery counts (over the rows the reader may see).
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: Uuid,
    pub seq: i64,
    pub kind: Kind,
    pub title: String,
    pub body: String,
    pub tenants: Option<Vec<Uuid>>,
    pub detected_at: Option<DateTime<Utc>>,
    pub deadline: Option<DateTime<Utc>>,
    pub published_at: DateTime<Utc>,
    pub sent: u32,
    pub pending: u32,
    pub failed: u32,
    pub last_sent_at: Option<DateTime<Utc>>,
}

impl Stored {
    /// The API form, times rendered in `zone`; `operator` adds the audience.
    pub fn to_proto(&self, zone: Tz, operator: bool, now: DateTime<Utc>) -> pb::Notice {
        let time =
            |t: Option<DateTime<Utc>>| t.map(|t| render::render_time(t, zone)).unwrap_or_default();
        pb::Notice {
            id: self.id.to_string(),
            kind: self.kind.to_proto() as i32,
            title: self.title.clone(),
            body: self.body.clone(),
            published_at: render::render_time(self.published_at, zone),
            detected_at: time(self.detected_at),
            deadline: time(self.deadline),
            past_deadline: past_deadline(
                self.deadline,
                self.published_at,
                self.pending + self.failed,
                self.last_sent_at,
                now,
            ),
            tenants: if operator {
                self.tenants.iter().flatten().map(Uuid::to_string).collect()
            } else {
                Vec::new()
            },
            mails_sent: self.sent,
            mails_pending: self.pending,
            mails_failed: self.failed,
        }
    }
}

/// Who reads notices.
#[derive(Debug, Clone, Copy)]
pub enum Reader {
    Operator,
    Tenant(Uuid),
}

/// Stores a notice and one pending delivery per recipient, in one transaction.
pub async fn insert(
    db: &Db,
    draft: &Draft,
    recipients: &[TenantRecipients],
) -> Result<Stored, sqlx::Error> {
    let id = Uuid::new_v4();
    let deadline = draft.detected_at.map(|at| {
        at + chrono::Duration::from_std(INCIDENT_DEADLINE).unwrap_or(chrono::Duration::zero())
    });
    let audience: Option<Vec<Uuid>> = if draft.tenants.is_empty() {
        None
    } else {
        let ids = recipients
            .iter()
            .map(|t| Uuid::try_parse(&t.tenant_id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| sqlx::Error::Protocol(format!("account service tenant id: {e}")))?;
        Some(ids)
    };
    let mut tx = db.operator_tx().await?;
    let row = sqlx::query(
        "INSERT INTO notices (id, kind, title, body, tenants, detected_at, deadline)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING seq, published_at",
    )
    .bind(id)
    .bind(draft.kind.as_str())
    .bind(&draft.title)
    .bind(&draft.body)
    .bind(&audience)
    .bind(draft.detected_at)
    .bind(deadline)
    .fetch_one(&mut *tx)
    .await?;
    let mut pending = 0u32;
    for tenant in recipients {
        let tenant_id = Uuid::try_parse(&tenant.tenant_id)
            .map_err(|e| sqlx::Error::Protocol(format!("account service tenant id: {e}")))?;
        for email in &tenant.emails {
            sqlx::query(
                "INSERT INTO notice_deliveries (notice_id, tenant_id, email) VALUES ($1, $2, $3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(tenant_id)
            .bind(email)
            .execute(&mut *tx)
            .await?;
            pending += 1;
        }
    }
    tx.commit().await?;
    Ok(Stored {
        id,
        seq: row.try_get("seq")?,
        kind: draft.kind,
        title: draft.title.clone(),
        body: draft.body.clone(),
        tenants: audience,
        detected_at: draft.detected_at,
        deadline,
        published_at: row.try_get("published_at")?,
        sent: 0,
        pending,
        failed: 0,
        last_sent_at: None,
    })
}

/// Notices the reader may see, newest first, before `before_seq`.
pub async fn list(
    db: &Db,
    reader: Reader,
    before_seq: Option<i64>,
    limit: i64,
) -> Result<Vec<Stored>, sqlx::Error> {
    let mut tx = match reader {
        Reader::Operator => db.operator_tx().await?,
        Reader::Tenant(tenant) => db.tenant_tx(tenant).await?,
    };
    let rows = sqlx::query(
        "SELECT n.id, n.seq, n.kind, n.title, n.body, n.tenants, n.detected_at, n.deadline,
                n.published_at,
                count(d.email) FILTER (WHERE d.state = 'sent') AS sent,
                count(d.email) FILTER (WHERE d.state = 'pending') AS pending,
                count(d.email) FILTER (WHERE d.state = 'failed') AS failed,
                max(d.sent_at) AS last_sent_at
         FROM notices n LEFT JOIN notice_deliveries d ON d.notice_id = n.id
         WHERE ($1::bigint IS NULL OR n.seq < $1)
         GROUP BY n.id ORDER BY n.seq DESC LIMIT $2",
    )
    .bind(before_seq)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter()
        .map(|row| {
            let kind: String = row.try_get("kind")?;
            let count = |name: &str| -> Result<u32, sqlx::Error> {
                Ok(row.try_get::<i64, _>(name)?.clamp(0, i64::from(u32::MAX)) as u32)
            };
            Ok(Stored {
                id: row.try_get("id")?,
                seq: row.try_get("seq")?,
                kind: Kind::parse(&kind)
                    .ok_or_else(|| sqlx::Error::Protocol(format!("unknown notice kind {kind}")))?,
                title: row.try_get("title")?,
                body: row.try_get("body")?,
                tenants: row.try_get("tenants")?,
                detected_at: row.try_get("detected_at")?,
                deadline: row.try_get("deadline")?,
                published_at: row.try_get("published_at")?,
                sent: count("sent")?,
                pending: count("pending")?,
                failed: count("failed")?,
                last_sent_at: row.try_get("last_sent_at")?,
            })
        })
        .collect()
}

/// How mail leaves: `KIROKU_SMTP_*` (see `kiroku serve audit --help`).
#[derive(Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub tls: SmtpTls,
    pub from: Mailbox,
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from.to_string())
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Transport security to the SMTP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain SMTP: only for a relay on the same host or a test sink.
    None,
    /// STARTTLS required (port 587).
    StartTls,
    /// TLS from the first byte (port 465).
    Tls,
}

impl std::str::FromStr for SmtpTls {
    type Err = String;
    fn from_str(value: &str) -> Result<Self, String> {
        match value {
            "none" => Ok(Self::None),
            "starttls" => Ok(Self::StartTls),
            "tls" => Ok(Self::Tls),
            other => Err(format!(
                "SMTP TLS mode {other:?}: use none, starttls or tls"
            )),
        }
    }
}

/// Sends notice mail.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").finish_non_exhaustive()
    }
}

impl Mailer {
    pub fn new(config: &SmtpConfig) -> Result<Self, String> {
        type Smtp = AsyncSmtpTransport<Tokio1Executor>;
        let builder = match config.tls {
            SmtpTls::None => Smtp::builder_dangerous(config.host.as_str()),
            SmtpTls::StartTls => Smtp::starttls_relay(&config.host)
                .map_err(|e| format!("SMTP host {}: {e}", config.host))?,
            SmtpTls::Tls => {
                Smtp::relay(&config.host).map_err(|e| format!("SMTP host {}: {e}", config.host))?
            }
        };
        let mut builder = builder
            .port(config.port)
            .timeout(Some(Duration::from_secs(20)));
        if let Some(user) = &config.username {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                config.password.clone().unwrap_or_default(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from: config.from.clone(),
        })
    }
}

/// What one mail says.
#[derive(Debug, Clone)]
pub struct Mail<'a> {
    pub notice_id: Uuid,
    pub kind: Kind,
    pub title: &'a str,
    pub body: &'a str,
    pub published_at: DateTime<Utc>,
    pub detected_at: Option<DateTime<Utc>>,
    pub deadline: Option<DateTime<Utc>>,
}

/// One message to one recipient (recipients never see each other). The title is
/// validated on publish; control characters are replaced here as well, so no title can
/// add a header. The Message-ID is stable per notice and recipient, so a retried send is
/// recognizable as the same mail.
pub fn compose(from: &Mailbox, to: &str, mail: &Mail<'_>, zone: Tz) -> Result<Message, String> {
    let to: Mailbox = to
        .parse()
        .map_err(|e| format!("recipient address {to:?}: {e}"))?;
    let title: String = mail
        .title
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut text = format!(
        "{title}\n\nKind: {}\nPublished: {}\n",
        mail.kind.label(),
        render::render_time(mail.published_at, zone)
    );
    if let (Some(detected), Some(deadline)) = (mail.detected_at, mail.deadline) {
        text.push_str(&format!(
            "Detected: {}\nNotification deadline (72 hours): {}\n",
            render::render_time(detected, zone),
            render::render_time(deadline, zone)
        ));
    }
    text.push_str(&format!(
        "\n{}\n\n-- \nKiroku service notices. Every notice for your tenant: \
         `kiroku admin notice list`.\n",
        mail.body
    ));
    let recipient = hex::encode(&sha2::Sha256::digest(to.email.to_string().as_bytes())[..8]);
    let domain = from.email.domain().to_string();
    Message::builder()
        .from(from.clone())
        .to(to)
        .subject(format!("[Kiroku] {}: {title}", mail.kind.label()))
        .message_id(Some(format!(
            "<notice-{}-{recipient}@{domain}>",
            mail.notice_id.simple()
        )))
        .date_now()
        .header(ContentType::TEXT_PLAIN)
        .body(text)
        .map_err(|e| format!("building the mail: {e}"))
}

/// Sends every delivery that is due, at most `batch` of them; returns how many were sent.
/// Rows are locked while they are sent (`SKIP LOCKED`), so several audit replicas never
/// mail the same recipient twice at once.
pub async fn deliver_due(db: &Db, mailer: &Mailer, batch: i64) -> Result<usize, sqlx::Error> {
    let mut tx = db.operator_tx().await?;
    let rows = sqlx::query(
        "SELECT d.notice_id, d.tenant_id, d.email, d.attempts, n.kind, n.title, n.body,
                n.published_at, n.detected_at, n.deadline
         FROM notice_deliveries d JOIN notices n ON n.id = d.notice_id
         WHERE d.state = 'pending' AND d.next_attempt_at <= now()
         ORDER BY n.seq, d.tenant_id, d.email LIMIT $1
         FOR UPDATE OF d SKIP LOCKED",
    )
    .bind(batch)
    .fetch_all(&mut *tx)
    .await?;
    let mut zones: HashMap<Uuid, Tz> = HashMap::new();
    let mut sent = 0;
    for row in &rows {
        let notice_id: Uuid = row.try_get("notice_id")?;
        let tenant: Uuid = row.try_get("tenant_id")?;
        let email: String = row.try_get("email")?;
        let attempts: i32 = row.try_get("attempts")?;
        let kind: String = row.try_get("kind")?;
        let title: String = row.try_get("title")?;
        let body: String = row.try_get("body")?;
        let zone = match zones.get(&tenant) {
            Some(zone) => *zone,
            None => {
                let name = crate::store::time_zone(db, tenant)
                    .await?
                    .unwrap_or_else(|| render::DEFAULT_TIME_ZONE.to_string());
                let zone = render::zone(&name).unwrap_or(chrono_tz::Asia::Tokyo);
                zones.insert(tenant, zone);
                zone
            }
        };
        let mail = Mail {
            notice_id,
            kind: Kind::parse(&kind).unwrap_or(Kind::Change),
            title: &title,
            body: &body,
            published_at: row.try_get("published_at")?,
            detected_at: row.try_get("detected_at")?,
            deadline: row.try_get("deadline")?,
        };
        // Err((problem, permanent)).
        let outcome = match compose(&mailer.from, &email, &mail, zone) {
            Ok(message) => mailer
                .transport
                .send(message)
                .await
                .map(|_| ())
                .map_err(|e| (e.to_string(), e.is_permanent())),
            Err(problem) => Err((problem, true)),
        };
        match outcome {
            Ok(()) => {
                sent += 1;
                sqlx::query(
                    "UPDATE notice_deliveries SET state = 'sent', sent_at = now(),
                         attempts = attempts + 1, last_error = NULL
                     WHERE notice_id = $1 AND tenant_id = $2 AND email = $3",
                )
                .bind(notice_id)
                .bind(tenant)
                .bind(&email)
                .execute(&mut *tx)
                .await?;
            }
            Err((problem, permanent)) => {
                let attempts = attempts + 1;
                let state = if permanent || attempts >= MAX_ATTEMPTS {
                    "failed"
                } else {
                    "pending"
                };
                // 2, 4, 8 … seconds, at most ten minutes.
                let backoff = 2f64.powi(attempts.min(10)).min(600.0);
                warn!(%notice_id, %tenant, attempts, problem = %problem, "notice mail not sent");
                sqlx::query(
                    "UPDATE notice_deliveries SET state = $4, attempts = $5, last_error = $6,
                         next_attempt_at = now() + make_interval(secs => $7)
                     WHERE notice_id = $1 AND tenant_id = $2 AND email = $3",
                )
                .bind(notice_id)
                .bind(tenant)
                .bind(&email)
                .bind(state)
                .bind(attempts)
                .bind(&problem)
                .bind(backoff)
                .execute(&mut *tx)
                .await?;
            }
        }
    }
    tx.commit().await?;
    Ok(sent)
}

/// The mailer task: sends what is due when woken (a publish) and every few seconds
/// (retries), until dropped.
pub async fn run_mailer(db: Db, mailer: Mailer, wake: Arc<Notify>) {
    loop {
        match deliver_due(&db, &mailer, 50).await {
            Ok(0) => {}
            Ok(sent) => {
                info!(sent, "notice mail sent");
                // More may be due right away.
                continue;
            }
            Err(error) => warn!(%error, "notice mailer: database error"),
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(kind: pb::NoticeKind, title: &str) -> pb::PublishNoticeRequest {
        pb::PublishNoticeRequest {
            kind: kind as i32,
            title: title.into(),
            body: "Body.\nSecond line.".into(),
            tenants: vec![],
            detected_at: None,
        }
    }

    #[test]
    fn titles_that_could_inject_headers_are_refused() {
        let now = Utc::now();
        for bad in [
            "Maintenance\r\nBcc: victim@example.com",
            "Maintenance\nBcc: x@example.com",
            "a\u{0}b",
            "",
            &"x".repeat(MAX_TITLE + 1),
        ] {
            assert!(
                validate(request(pb::NoticeKind::Change, bad), now).is_err(),
                "{bad:?}"
            );
        }
        assert!(validate(request(pb::NoticeKind::Change, "計画メンテナンス"), now).is_ok());
    }

    #[test]
    fn incidents_need_a_detection_time_in_the_past() {
        let now = Utc::now();
        assert!(validate(request(pb::NoticeKind::Incident, "Outage"), now).is_err());
        let mut incident = request(pb::NoticeKind::Incident, "Outage");
        incident.detected_at = Some(prost_types::Timestamp {
            seconds: now.timestamp() + 3600,
            nanos: 0,
        });
        assert!(validate(incident.clone(), now).is_err());
        incident.detected_at = Some(prost_types::Timestamp {
            seconds: now.timestamp() - 3600,
            nanos: 0,
        });
        assert!(validate(incident.clone(), now).is_ok());
        let mut change = request(pb::NoticeKind::Change, "New model");
        change.detected_at = incident.detected_at;
        assert!(validate(change, now).is_err());
        assert!(validate(request(pb::NoticeKind::Unspecified, "x"), now).is_err());
    }

    // control 16.1.1: the 72-hour deadline is flagged when missed.
    #[test]
    fn the_deadline_flag_covers_late_publishing_late_and_missing_mail() {
        let detected = Utc::now() - chrono::Duration::hours(80);
        let deadline = detected + chrono::Duration::hours(72);
        let now = Utc::now();
        let early = detected + chrono::Duration::hours(1);
        // Published and mailed in time.
        assert!(!past_deadline(Some(deadline), early, 0, Some(early), now));
        // Published after the deadline.
        assert!(past_deadline(Some(deadline), now, 0, Some(now), now));
        // Mail still pending when the deadline passed.
        assert!(past_deadline(Some(deadline), early, 1, None, now));
        // Pending, but the deadline is still ahead.
        assert!(!past_deadline(
            Some(now + chrono::Duration::hours(1)),
            now,
            1,
            None,
            now
        ));
        // Sent after the deadline.
        assert!(past_deadline(Some(deadline), early, 0, Some(now), now));
        // Not an incident.
        assert!(!past_deadline(None, now, 3, None, now));
    }

    #[test]
    fn a_mail_has_one_subject_and_one_recipient() {
        let from: Mailbox = "Kiroku <notices@kiroku.example>".parse().expect("from");
        let mail = Mail {
            notice_id: Uuid::new_v4(),
            kind: Kind::Incident,
            title: "Outage\r\nBcc: victim@example.com",
            body: "Details.",
            published_at: Utc::now(),
            detected_at: Some(Utc::now()),
            deadline: Some(Utc::now() + chrono::Duration::hours(72)),
        };
        let message = compose(&from, "admin@tenant.example", &mail, chrono_tz::Asia::Tokyo)
            .expect("composed");
        let raw = String::from_utf8(message.formatted()).expect("utf-8");
        let head = raw.split("\r\n\r\n").next().expect("headers");
        assert!(!head.contains("\r\nBcc:"), "{head}");
        assert_eq!(
            head.matches("\r\nSubject:").count() + head.starts_with("Subject:") as usize,
            1
        );
        assert!(head.contains("To: admin@tenant.example"), "{head}");
        assert!(head.contains("Message-ID: <notice-"), "{head}");
        assert!(head.contains("Date: "), "{head}");
        assert!(raw.contains("+09:00"), "{raw}");
    }
}
