//! The audit table: appending an event exactly once at the end of its tenant's chain,
//! walking the chain, and reading entries back.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use kiroku_core::db::Db;
use kiroku_proto::events::v1::{ActorKind, AuditEvent, Outcome};
use sqlx::Row as _;
use uuid::Uuid;

use crate::chain::{Break, Entry, GENESIS, Walker};

/// A stored row.
#[derive(Debug, Clone)]
pub struct Stored {
    pub entry: Entry,
    pub occurred_at: DateTime<Utc>,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// What appending did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored at this seq, with this hash (the tenant's new chain head).
    New(i64, [u8; 32]),
    /// The event id was stored before (a redelivery or a duplicate publish).
    Duplicate,
}

fn actor_kind(kind: i32) -> &'static str {
    match ActorKind::try_from(kind) {
        Ok(ActorKind::User) => "user",
        Ok(ActorKind::ApiKey) => "api_key",
        Ok(ActorKind::System) => "system",
        Ok(ActorKind::Operator) => "operator",
        _ => "unknown",
    }
}

fn outcome(value: i32) -> &'static str {
    match Outcome::try_from(value) {
        Ok(Outcome::Success) => "success",
        Ok(Outcome::Failure) => "failure",
        _ => "unknown",
    }
}

/// Appends `event` to its tenant's chain, exactly once per event id. Appends of one
/// tenant are serialized (an advisory lock per tenant), so replicas never fork a chain.
pub async fn append(db: &Db, event: &AuditEvent) -> Result<Appended, sqlx::Error> {
    let tenant = Uuid::try_parse(&event.tenant_id).map_err(|_| {
        sqlx::Error::Protocol(format!("tenant id {:?} is not a uuid", event.tenant_id))
    })?;
    let occurred = event.occurred_at.unwrap_or_default();
    // Microseconds: what PostgreSQL stores, so the hash is over what is kept.
    let occurred_at_us = occurred.seconds * 1_000_000 + i64::from(occurred.nanos) / 1000;
    let occurred_at = DateTime::<Utc>::from_timestamp_micros(occurred_at_us).unwrap_or_default();
    let mut tx = db.tenant_tx(tenant).await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 17))")
        .bind(tenant.to_string())
        .execute(&mut *tx)
        .await?;
    let exists: Option<i64> = sqlx::query_scalar("SELECT seq FROM audit_log WHERE event_id = $1")
        .bind(&event.event_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_some() {
        tx.commit().await?;
        return Ok(Appended::Duplicate);
    }
    let last: Option<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let (seq, prev_hash) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_vec()),
    };
    let entry = Entry {
        tenant_id: tenant.to_string(),
        seq,
        event_id: event.event_id.clone(),
        occurred_at_us,
        actor_id: event.actor_id.clone(),
        actor_kind: actor_kind(event.actor_kind).to_string(),
        action: event.action.clone(),
        target: event.target.clone(),
        outcome: outcome(event.outcome).to_string(),
        source_ip: event.source_ip.clone(),
        details: event.details.clone().into_iter().collect(),
        trace_id: event.trace_id.clone(),
    };
    let hash = entry.hash(&prev_hash);
    sqlx::query(
        "INSERT INTO audit_log (tenant_id, seq, event_id, occurred_at, actor_id, actor_kind,
             action, target, outcome, source_ip, details, trace_id, prev_hash, hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
    )
    .bind(tenant)
    .bind(seq)
    .bind(&entry.event_id)
    .bind(occurred_at)
    .bind(&entry.actor_id)
    .bind(&entry.actor_kind)
    .bind(&entry.action)
    .bind(&entry.target)
    .bind(&entry.outcome)
    .bind(&entry.source_ip)
    .bind(serde_json::to_value(&entry.details).unwrap_or_default())
    .bind(&entry.trace_id)
    .bind(&prev_hash)
    .bind(hash.as_slice())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Appended::New(seq, hash))
}

const COLUMNS: &str = "tenant_id, seq, event_id, occurred_at, actor_id, actor_kind, action, \
     target, outcome, source_ip, details, trace_id, prev_hash, hash";

fn stored(row: &sqlx::postgres::PgRow) -> Result<Stored, sqlx::Error> {
    let occurred_at: DateTime<Utc> = row.try_get("occurred_at")?;
    let details: serde_json::Value = row.try_get("details")?;
    let details: BTreeMap<String, String> = serde_json::from_value(details).unwrap_or_default();
    let tenant: Uuid = row.try_get("tenant_id")?;
    Ok(Stored {
        entry: Entry {
            tenant_id: tenant.to_string(),
            seq: row.try_get("seq")?,
            event_id: row.try_get("event_id")?,
            occurred_at_us: occurred_at.timestamp_micros(),
            actor_id: row.try_get("actor_id")?,
            actor_kind: row.try_get("actor_kind")?,
            action: row.try_get("action")?,
            target: row.try_get("target")?,
            outcome: row.try_get("outcome")?,
            source_ip: row.try_get("source_ip")?,
            details,
            trace_id: row.try_get("trace_id")?,
        },
        occurred_at,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// Walks the tenant's whole chain, 1000 entries at a time.
pub async fn verify(db: &Db, tenant: Uuid) -> Result<(u64, Option<Break>), sqlx::Error> {
    let mut walker = Walker::default();
    let mut after = 0i64;
    loop {
        let mut tx = db.tenant_tx(tenant).await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 1000"
        ))
        .bind(after)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        if rows.is_empty() {
            return Ok((walker.checked, None));
        }
        for row in &rows {
            let stored = stored(row)?;
            if let Err(broken) = walker.next(&stored.entry, &stored.prev_hash, &stored.hash) {
                return Ok((walker.checked, Some(broken)));
            }
            after = stored.entry.seq;
        }
    }
}

/// The hash stored for `tenant`'s entry `seq`, if there is one.
pub async fn hash_at(db: &Db, tenant: Uuid, seq: i64) -> Result<Option<Vec<u8>>, sqlx::Error> {
    let mut tx = db.tenant_tx(tenant).await?;
    let hash = sqlx::query_scalar("SELECT hash FROM audit_log WHERE seq = $1")
        .bind(seq)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(hash)
}

/// Filters of a listing.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    pub actor_id: Option<String>,
    pub action: Option<String>,
    pub meeting_id: Option<String>,
    /// Entries with a smaller seq than this (pagination, newest first).
    pub before_seq: Option<i64>,
    /// Entries with a larger seq than this (an export's pages, oldest first).
    pub after_seq: Option<i64>,
    /// Oldest first (exports) instead of newest first (listings).
    pub oldest_first: bool,
    pub limit: i64,
}

/// Entries matching `query`, newest first unless `query.oldest_first`.
pub async fn list(db: &Db, tenant: Uuid, query: &Query) -> Result<Vec<Stored>, sqlx::Error> {
    let order = if query.oldest_first { "ASC" } else { "DESC" };
    let mut tx = db.tenant_tx(tenant).await?;
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM audit_log
         WHERE ($1::timestamptz IS NULL OR occurred_at >= $1)
           AND ($2::timestamptz IS NULL OR occurred_at < $2)
           AND ($3::text IS NULL OR actor_id = $3)
           AND ($4::text IS NULL OR action = $4)
           AND ($5::text IS NULL OR target = 'meeting/' || $5 OR details->>'meeting' = $5)
           AND ($6::bigint IS NULL OR seq < $6)
           AND ($8::bigint IS NULL OR seq > $8)
         ORDER BY seq {order} LIMIT $7"
    ))
    .bind(query.from)
    .bind(query.to)
    .bind(&query.actor_id)
    .bind(&query.action)
    .bind(&query.meeting_id)
    .bind(query.before_seq)
    .bind(query.limit)
    .bind(query.after_seq)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter().map(stored).collect()
}

/// The tenant's display zone, if set.
pub async fn time_zone(db: &Db, tenant: Uuid) -> Result<Option<String>, sqlx::Error> {
    let mut tx = db.tenant_tx(tenant).await?;
    let zone = sqlx::query_scalar("SELECT time_zone FROM tenant_settings WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(zone)
}

pub async fn set_time_zone(db: &Db, tenant: Uuid, zone: &str) -> Result<(), sqlx::Error> {
    let mut tx = db.tenant_tx(tenant).await?;
    sqlx::query(
        "INSERT INTO tenant_settings (tenant_id, time_zone) VALUES ($1, $2)
         ON CONFLICT (tenant_id) DO UPDATE SET time_zone = EXCLUDED.time_zone",
    )
    .bind(tenant)
    .bind(zone)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}

/// One row of the usage view: a day in the requested zone, or the total (`date` None).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UsageRow {
    pub date: Option<String>,
    pub streams: i64,
    pub failed_streams: i64,
    pub refused_streams: i64,
    pub audio_ms: i64,
    pub finals: i64,
    pub latency_p50_ms: Option<i32>,
    pub latency_p95_ms: Option<i32>,
}

/// The tenant's stream usage in `[from, to)`, per day in `zone` plus the total (last),
/// from the `stream.*` entries the gateway writes. Numeric details are read only when
/// they are plain digits, so a malformed entry cannot fail the view.
pub async fn usage(
    db: &Db,
    tenant: Uuid,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    zone: &str,
) -> Result<Vec<UsageRow>, sqlx::Error> {
    let mut tx = db.tenant_tx(tenant).await?;
    let rows = sqlx::query(
        "WITH e AS (
             SELECT to_char(occurred_at AT TIME ZONE $3, 'YYYY-MM-DD') AS day, action, outcome,
                    details->>'resumed' AS resumed,
                    CASE WHEN details->>'audio_ms' ~ '^[0-9]{1,15}$'
                         THEN (details->>'audio_ms')::bigint END AS audio_ms,
                    CASE WHEN details->>'finals' ~ '^[0-9]{1,9}$'
                         THEN (details->>'finals')::bigint END AS finals,
                    CASE WHEN details->>'latency_p50_ms' ~ '^[0-9]{1,9}$'
                         THEN (details->>'latency_p50_ms')::int END AS p50,
                    CASE WHEN details->>'latency_p95_ms' ~ '^[0-9]{1,9}$'
                         THEN (details->>'latency_p95_ms')::int END AS p95
             FROM audit_log
             WHERE action IN ('stream.started', 'stream.ended', 'stream.refused')
               AND occurred_at >= $1 AND occurred_at < $2)
         SELECT day,
                count(*) FILTER (WHERE action = 'stream.started'
                                   AND coalesce(resumed, '') <> 'true') AS streams,
                count(*) FILTER (WHERE action = 'stream.ended' AND outcome = 'failure') AS failed,
                count(*) FILTER (WHERE action = 'stream.refused') AS refused,
                coalesce(sum(audio_ms) FILTER (WHERE action = 'stream.ended'), 0)::bigint AS audio_ms,
                coalesce(sum(finals) FILTER (WHERE action = 'stream.ended'), 0)::bigint AS finals,
                percentile_disc(0.5) WITHIN GROUP (ORDER BY p50)
                    FILTER (WHERE action = 'stream.ended') AS p50,
                percentile_disc(0.95) WITHIN GROUP (ORDER BY p95)
                    FILTER (WHERE action = 'stream.ended') AS p95
         FROM e GROUP BY ROLLUP (day) ORDER BY day NULLS LAST",
    )
    .bind(from)
    .bind(to)
    .bind(zone)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter()
        .map(|row| {
            Ok(UsageRow {
                date: row.try_get("day")?,
                streams: row.try_get("streams")?,
                failed_streams: row.try_get("failed")?,
                refused_streams: row.try_get("refused")?,
                audio_ms: row.try_get("audio_ms")?,
                finals: row.try_get("finals")?,
                latency_p50_ms: row.try_get("p50")?,
                latency_p95_ms: row.try_get("p95")?,
            })
        })
        .collect()
}
