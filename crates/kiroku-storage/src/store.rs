//! The storage tables: tenant data keys, meetings and their finals (sealed), labels.
//! Every function works inside one tenant's transaction (row-level security).

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kiroku_core::db::Db;
use kiroku_proto::transcribe::v1 as api;
use prost::Message as _;
use sqlx::{Postgres, Row as _, Transaction};
use uuid::Uuid;

use crate::crypto::{self, CryptoError, DataKey, KeyProvider};
use crate::search;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("stored segment does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// An import would overwrite this meeting.
    #[error("meeting {0:?} already exists in this tenant")]
    Exists(String),
    /// An imported record that cannot be stored as it is.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Tenant data keys: created on first use, stored wrapped by the master key, unwrapped
/// per transaction. Not cached: an erased tenant's key must stop working on every
/// replica at once (unwrapping 32 bytes costs microseconds).
#[derive(Debug, Clone)]
pub struct Keys {
    provider: Arc<dyn KeyProvider>,
}

impl Keys {
    pub fn new(provider: Arc<dyn KeyProvider>) -> Self {
        Self { provider }
    }

    pub fn provider(&self) -> &dyn KeyProvider {
        self.provider.as_ref()
    }

    fn context(tenant: Uuid) -> Vec<u8> {
        format!("kiroku/v1/data-key/{tenant}").into_bytes()
    }

    /// The tenant's key, created (and stored wrapped) when it has none; `create: false`
    /// returns `None` instead.
    pub async fn get(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        tenant: Uuid,
        create: bool,
    ) -> Result<Option<Arc<DataKey>>> {
        let stored: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE tenant_id = $1")
                .bind(tenant)
                .fetch_optional(&mut **tx)
                .await?;
        let key = match stored {
            Some(wrapped) => self.provider.unwrap(&wrapped, &Self::context(tenant))?,
            None if create => {
                let key = DataKey::generate()?;
                let wrapped = self.provider.wrap(&key, &Self::context(tenant))?;
                // Two replicas racing: one insert wins, the other reads the winner's.
                let inserted = sqlx::query(
                    "INSERT INTO data_keys (tenant_id, key_id, wrapped) VALUES ($1, $2, $3)
                     ON CONFLICT (tenant_id) DO NOTHING",
                )
                .bind(tenant)
                .bind(self.provider.key_id())
                .bind(&wrapped)
                .execute(&mut **tx)
                .await?;
                if inserted.rows_affected() == 0 {
                    let wrapped: Vec<u8> =
                        sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE tenant_id = $1")
                            .bind(tenant)
                            .fetch_one(&mut **tx)
                            .await?;
                    self.provider.unwrap(&wrapped, &Self::context(tenant))?
                } else {
                    key
                }
            }
            None => return Ok(None),
        };
        Ok(Some(Arc::new(key)))
    }
}

/// Re-wraps every data key that another master key wrapped under the current one;
/// (re-wrapped, still under another key because it would not unwrap).
pub async fn rewrap_keys(db: &Db, provider: &dyn KeyProvider) -> Result<(u64, u64)> {
    let tenants: Vec<Uuid> =
        sqlx::query_scalar("SELECT tenant_id FROM kiroku_tenants_to_rewrap($1)")
            .bind(provider.key_id())
            .fetch_all(db.pool_without_tenant())
            .await?;
    let (mut done, mut failed) = (0, 0);
    for tenant in tenants {
        let mut tx = db.tenant_tx(tenant).await?;
        let wrapped: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT wrapped FROM data_keys WHERE tenant_id = $1 FOR UPDATE")
                .bind(tenant)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(wrapped) = wrapped else { continue };
        let context = Keys::context(tenant);
        match provider.unwrap(&wrapped, &context) {
            Ok(key) => {
                sqlx::query("UPDATE data_keys SET wrapped = $2, key_id = $3 WHERE tenant_id = $1")
                    .bind(tenant)
                    .bind(provider.wrap(&key, &context)?)
                    .bind(provider.key_id())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                done += 1;
            }
            Err(_) => {
                tracing::error!(%tenant, "data key wrapped by an unknown master key: not re-wrapped");
                failed += 1;
            }
        }
    }
    Ok((done, failed))
}

/// What an erasure removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Erased {
    pub meetings: u64,
    pub segments: u64,
    pub labels: u64,
}

/// Crypto-shredding (control CLD.8.1.5): the tenant's data key is destroyed and
/// committed first — from then on no copy of its sealed data anywhere decrypts — and
/// only then are its rows purged.
/// Also returns the erased sessions' ids (their worker checkpoints are purged next).
pub async fn erase_tenant(db: &Db, tenant: Uuid) -> Result<(Erased, Vec<String>)> {
    let mut tx = db.tenant_tx(tenant).await?;
    sqlx::query("DELETE FROM data_keys WHERE tenant_id = $1")
        .bind(tenant)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    let mut tx = db.tenant_tx(tenant).await?;
    let labels = sqlx::query("DELETE FROM labels")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let segments = sqlx::query("DELETE FROM segments")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let sessions: Vec<String> = sqlx::query_scalar("DELETE FROM sessions RETURNING session_id")
        .fetch_all(&mut *tx)
        .await?;
    let meetings = sqlx::query("DELETE FROM meetings")
        .execute(&mut *tx)
        .await?
        .rows_affected();
    let erased = Erased {
        meetings,
        segments,
        labels,
    };
    tx.commit().await?;
    Ok((erased, sessions))
}

/// What an import stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    pub meetings: u64,
    pub segments: u64,
    pub labels: u64,
}

/// A bundle import: every meeting in one tenant transaction, so a bundle is imported
/// whole or not at all. Each meeting becomes one session (`import-<uuid>`) holding its
/// segments on the meeting's one timeline; segments and labels are sealed with this
/// tenant's key and indexed anew.
pub struct Import {
    tx: Transaction<'static, Postgres>,
    key: Arc<DataKey>,
    tenant: Uuid,
    imported: Imported,
}

impl std::fmt::Debug for Import {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Import")
            .field("tenant", &self.tenant)
            .field("imported", &self.imported)
            .finish_non_exhaustive()
    }
}

impl Import {
    pub async fn begin(db: &Db, keys: &Keys, tenant: Uuid) -> Result<Self> {
        let mut tx = db.tenant_tx(tenant).await?;
        let key = keys
            .get(&mut tx, tenant, true)
            .await?
            .ok_or(CryptoError::Decrypt)?;
        Ok(Self {
            tx,
            key,
            tenant,
            imported: Imported::default(),
        })
    }

    pub async fn meeting(&mut self, m: &crate::bundle::BundleMeeting) -> Result<()> {
        let (tenant, tx) = (self.tenant, &mut self.tx);
        kiroku_core::validate::meeting_id("meeting_id", &m.meeting_id)
            .map_err(|e| StoreError::Invalid(e.to_string()))?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM meetings WHERE meeting_id = $1")
                .bind(&m.meeting_id)
                .fetch_optional(&mut **tx)
                .await?;
        if exists.is_some() {
            return Err(StoreError::Exists(m.meeting_id.clone()));
        }
        sqlx::query(
            "INSERT INTO meetings (tenant_id, meeting_id, title, started_at, ended_at, language)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(tenant)
        .bind(&m.meeting_id)
        .bind(&m.title)
        .bind(m.started_at)
        .bind(m.ended_at)
        .bind(&m.language)
        .execute(&mut **tx)
        .await?;
        let session = format!("import-{}", Uuid::new_v4());
        sqlx::query(
            "INSERT INTO sessions (tenant_id, session_id, meeting_id, first_seen_at, closed_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(tenant)
        .bind(&session)
        .bind(&m.meeting_id)
        .bind(m.started_at)
        .bind(m.ended_at)
        .execute(&mut **tx)
        .await?;
        for (seq, segment) in m.segments.iter().enumerate() {
            let seq = seq as i64;
            let segment = api::Segment::from(segment);
            insert_segment(
                tx,
                &self.key,
                SegmentRow {
                    tenant,
                    session_id: &session,
                    result_seq: seq,
                    meeting_id: &m.meeting_id,
                    meeting_started_at: m.started_at,
                },
                &segment,
            )
            .await?;
        }
        for label in &m.labels {
            if !matches!(label.kind.as_str(), "tag" | "bookmark" | "memo") {
                return Err(StoreError::Invalid(format!(
                    "label {}: kind {:?} is not tag, bookmark or memo",
                    label.label_id, label.kind
                )));
            }
            let sealed = self
                .key
                .seal(label.text.as_bytes(), &label_aad(tenant, label.label_id))?;
            let tag_term =
                (label.kind == "tag").then(|| self.key.index_token(&normalize_tag(&label.text)));
            sqlx::query(
                "INSERT INTO labels (tenant_id, label_id, meeting_id, kind, sealed_text, tag_term,
                     at_ms, end_ms, created_by, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(tenant)
            .bind(label.label_id)
            .bind(&m.meeting_id)
            .bind(&label.kind)
            .bind(&sealed)
            .bind(tag_term)
            .bind(label.at_ms)
            .bind(label.end_ms)
            .bind(&label.created_by)
            .bind(label.created_at)
            .execute(&mut **tx)
            .await?;
        }
        self.imported.meetings += 1;
        self.imported.segments += m.segments.len() as u64;
        self.imported.labels += m.labels.len() as u64;
        Ok(())
    }

    pub async fn commit(self) -> Result<Imported> {
        self.tx.commit().await?;
        Ok(self.imported)
    }
}

/// One final as the worker published it.
#[derive(Debug, Clone)]
pub struct Final<'a> {
    pub tenant: Uuid,
    pub session_id: &'a str,
    pub meeting_id: &'a str,
    pub result_seq: u64,
    pub language: &'a str,
    pub segment: &'a api::Segment,
}

fn segment_aad(tenant: Uuid, session: &str, seq: i64) -> Vec<u8> {
    crypto::aad(tenant, "segment", &format!("{session}:{seq}"))
}

fn label_aad(tenant: Uuid, label: Uuid) -> Vec<u8> {
    crypto::aad(tenant, "label", &label.to_string())
}

/// Stores a final once: the meeting and session rows are created on first sight; a
/// final already stored (same session and seq) is left as it is. Returns whether it was
/// new.
pub async fn persist_final(db: &Db, keys: &Keys, f: &Final<'_>) -> Result<bool> {
    let mut tx = db.tenant_tx(f.tenant).await?;
    let key = keys
        .get(&mut tx, f.tenant, true)
        .await?
        .ok_or(CryptoError::Decrypt)?;
    let started_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO meetings (tenant_id, meeting_id, title, language) VALUES ($1, $2, $2, $3)
         ON CONFLICT (tenant_id, meeting_id) DO UPDATE
             SET language = CASE WHEN meetings.language = '' THEN EXCLUDED.language
                                 ELSE meetings.language END
         RETURNING started_at",
    )
    .bind(f.tenant)
    .bind(f.meeting_id)
    .bind(f.language)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO sessions (tenant_id, session_id, meeting_id) VALUES ($1, $2, $3)
         ON CONFLICT (tenant_id, session_id) DO NOTHING",
    )
    .bind(f.tenant)
    .bind(f.session_id)
    .bind(f.meeting_id)
    .execute(&mut *tx)
    .await?;
    let inserted = insert_segment(
        &mut tx,
        &key,
        SegmentRow {
            tenant: f.tenant,
            session_id: f.session_id,
            result_seq: f.result_seq as i64,
            meeting_id: f.meeting_id,
            meeting_started_at: started_at,
        },
        f.segment,
    )
    .await?;
    tx.commit().await?;
    Ok(inserted)
}

/// Where a segment goes: its identity (session, seq) and its meeting.
struct SegmentRow<'a> {
    tenant: Uuid,
    session_id: &'a str,
    result_seq: i64,
    meeting_id: &'a str,
    meeting_started_at: DateTime<Utc>,
}

/// Seals a segment and indexes its terms, in the tenant's transaction `tx`. A segment
/// already stored (same session and seq) is left as it is; returns whether it was new.
/// The terms go in through `kiroku_index_segment` (migration 0005): the search table is
/// outside row-level security and the service role cannot write it directly.
async fn insert_segment(
    tx: &mut Transaction<'static, Postgres>,
    key: &DataKey,
    row: SegmentRow<'_>,
    segment: &api::Segment,
) -> Result<bool> {
    let sealed = key.seal(
        &segment.encode_to_vec(),
        &segment_aad(row.tenant, row.session_id, row.result_seq),
    )?;
    let inserted = sqlx::query(
        "INSERT INTO segments (tenant_id, session_id, result_seq, meeting_id, start_ms, end_ms,
             sealed, meeting_started_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (tenant_id, session_id, result_seq) DO NOTHING",
    )
    .bind(row.tenant)
    .bind(row.session_id)
    .bind(row.result_seq)
    .bind(row.meeting_id)
    .bind(segment.start_ms as i64)
    .bind(segment.end_ms as i64)
    .bind(&sealed)
    .bind(row.meeting_started_at)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if inserted {
        sqlx::query("SELECT kiroku_index_segment($1, $2, $3)")
            .bind(row.session_id)
            .bind(row.result_seq)
            .bind(index_tokens(key, &segment.text))
            .execute(&mut **tx)
            .await?;
    }
    Ok(inserted)
}

/// The keyed hashes a text is found by.
pub fn index_tokens(key: &DataKey, text: &str) -> Vec<String> {
    search::index_terms(text)
        .iter()
        .map(|term| key.index_token(term))
        .collect()
}

/// The session's last message: the meeting ends now (until another session joins it).
pub async fn close_session(db: &Db, tenant: Uuid, session: &str) -> Result<()> {
    let mut tx = db.tenant_tx(tenant).await?;
    let meeting: Option<String> = sqlx::query_scalar(
        "UPDATE sessions SET closed_at = now() WHERE session_id = $1 RETURNING meeting_id",
    )
    .bind(session)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(meeting) = meeting {
        sqlx::query("UPDATE meetings SET ended_at = now() WHERE meeting_id = $1")
            .bind(meeting)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A meeting row with its counts.
#[derive(Debug, Clone)]
pub struct MeetingRow {
    pub meeting_id: String,
    pub title: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub language: String,
    pub duration_ms: i64,
    pub segments: i64,
}

const MEETING_SELECT: &str = "SELECT m.meeting_id, m.title, m.started_at, m.ended_at, m.language,
        coalesce((SELECT sum(s.end_ms) FROM (SELECT max(end_ms) AS end_ms FROM segments g
                  WHERE g.meeting_id = m.meeting_id GROUP BY g.session_id) s), 0)::bigint
            AS duration_ms,
        (SELECT count(*) FROM segments g WHERE g.meeting_id = m.meeting_id) AS segments
     FROM meetings m";

fn meeting_row(row: &sqlx::postgres::PgRow) -> Result<MeetingRow> {
    Ok(MeetingRow {
        meeting_id: row.try_get("meeting_id")?,
        title: row.try_get("title")?,
        started_at: row.try_get("started_at")?,
        ended_at: row.try_get("ended_at")?,
        language: row.try_get("language")?,
        duration_ms: row.try_get("duration_ms")?,
        segments: row.try_get("segments")?,
    })
}

/// Meetings newest first, after `(started_at, meeting_id)` of the previous page.
pub async fn list_meetings(
    db: &Db,
    keys: &Keys,
    tenant: Uuid,
    after: Option<(DateTime<Utc>, String)>,
    tag: Option<&str>,
    limit: i64,
) -> Result<Vec<MeetingRow>> {
    let mut tx = db.tenant_tx(tenant).await?;
    let tag_term = match tag {
        Some(tag) => match keys.get(&mut tx, tenant, false).await? {
            Some(key) => Some(key.index_token(&normalize_tag(tag))),
            None => return Ok(Vec::new()),
        },
        None => None,
    };
    let (after_time, after_id) = after.unzip();
    let rows = sqlx::query(&format!(
        "{MEETING_SELECT}
         WHERE ($1::timestamptz IS NULL OR (m.started_at, m.meeting_id) < ($1, $2))
           AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM labels l
                 WHERE l.meeting_id = m.meeting_id AND l.tag_term = $3))
         ORDER BY m.started_at DESC, m.meeting_id DESC LIMIT $4"
    ))
    .bind(after_time)
    .bind(after_id)
    .bind(tag_term)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter().map(meeting_row).collect()
}

/// A meeting's segments in order: sessions in the order they began, each session's
/// segments by time; later sessions' times are shifted after the earlier ones', so the
/// meeting reads as one timeline.
pub async fn meeting(
    db: &Db,
    keys: &Keys,
    tenant: Uuid,
    meeting_id: &str,
) -> Result<Option<(MeetingRow, Vec<api::Segment>)>> {
    let mut tx = db.tenant_tx(tenant).await?;
    let Some(row) = sqlx::query(&format!("{MEETING_SELECT} WHERE m.meeting_id = $1"))
        .bind(meeting_id)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(None);
    };
    let meeting = meeting_row(&row)?;
    let rows = sqlx::query(
        "SELECT g.session_id, g.result_seq, g.sealed FROM segments g
         JOIN sessions s ON s.session_id = g.session_id
         WHERE g.meeting_id = $1 ORDER BY s.first_seen_at, g.session_id, g.start_ms, g.result_seq",
    )
    .bind(meeting_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut segments = Vec::with_capacity(rows.len());
    if !rows.is_empty() {
        let key = keys
            .get(&mut tx, tenant, false)
            .await?
            .ok_or(CryptoError::Decrypt)?;
        let (mut session, mut shift, mut session_end) = (String::new(), 0u64, 0u64);
        for row in &rows {
            let id: String = row.try_get("session_id")?;
            let seq: i64 = row.try_get("result_seq")?;
            let sealed: Vec<u8> = row.try_get("sealed")?;
            if id != session {
                shift = session_end;
                session = id.clone();
            }
            let plain = key.open(&sealed, &segment_aad(tenant, &id, seq))?;
            let mut segment = api::Segment::decode(plain.as_slice())?;
            segment.start_ms += shift;
            segment.end_ms += shift;
            for word in &mut segment.words {
                word.start_ms += shift;
                word.end_ms += shift;
            }
            session_end = session_end.max(segment.end_ms);
            segments.push(segment);
        }
    }
    tx.commit().await?;
    Ok(Some((meeting, segments)))
}

/// Segments containing every term of `query`, newest meetings first. The matches come
/// from `kiroku_search` (migration 0005), which runs outside row-level security so that
/// PostgreSQL can use the terms' GIN index, and applies this transaction's tenant
/// itself; the sealed segments are then read under row-level security as always.
pub async fn search(
    db: &Db,
    keys: &Keys,
    tenant: Uuid,
    query: &str,
    limit: i64,
) -> Result<Vec<(String, String, api::Segment)>> {
    let mut tx = db.tenant_tx(tenant).await?;
    let Some(key) = keys.get(&mut tx, tenant, false).await? else {
        return Ok(Vec::new());
    };
    let terms: Vec<String> = search::query_terms(query)
        .iter()
        .map(|term| key.index_token(term))
        .collect();
    if terms.is_empty() {
        return Ok(Vec::new());
    }
    let rows = sqlx::query(
        "SELECT g.meeting_id, m.title, g.session_id, g.result_seq, g.sealed
         FROM kiroku_search($1, $2) WITH ORDINALITY AS h (session_id, result_seq, n)
         JOIN segments g ON g.session_id = h.session_id AND g.result_seq = h.result_seq
         JOIN meetings m ON m.meeting_id = g.meeting_id
         ORDER BY h.n",
    )
    .bind(&terms)
    .bind(i32::try_from(limit).unwrap_or(i32::MAX))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    rows.iter()
        .map(|row| {
            let session: String = row.try_get("session_id")?;
            let seq: i64 = row.try_get("result_seq")?;
            let sealed: Vec<u8> = row.try_get("sealed")?;
            let plain = key.open(&sealed, &segment_aad(tenant, &session, seq))?;
            Ok((
                row.try_get("meeting_id")?,
                row.try_get("title")?,
                api::Segment::decode(plain.as_slice())?,
            ))
        })
        .collect()
}

/// Tags compare case-insensitively, surrounding spaces ignored.
pub fn normalize_tag(tag: &str) -> String {
    tag.trim().to_lowercase()
}

/// A stored label.
#[derive(Debug, Clone)]
pub struct LabelRow {
    pub label_id: Uuid,
    pub meeting_id: String,
    pub kind: String,
    pub text: String,
    pub at_ms: i64,
    pub end_ms: i64,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

/// A label to add.
#[derive(Debug, Clone)]
pub struct NewLabel<'a> {
    pub label_id: Uuid,
    pub meeting_id: &'a str,
    pub kind: &'a str,
    pub text: &'a str,
    pub at_ms: i64,
    pub end_ms: i64,
    pub created_by: &'a str,
    /// Create the meeting when it has no row yet (a live bookmark before the first final).
    pub create_meeting: bool,
}

/// Adds a label to a meeting (`None`: no such meeting for this tenant).
pub async fn add_label(
    db: &Db,
    keys: &Keys,
    tenant: Uuid,
    label: &NewLabel<'_>,
) -> Result<Option<LabelRow>> {
    let NewLabel {
        label_id,
        meeting_id,
        kind,
        text,
        at_ms,
        end_ms,
        created_by,
        create_meeting,
    } = *label;
    let mut tx = db.tenant_tx(tenant).await?;
    if create_meeting {
        sqlx::query(
            "INSERT INTO meetings (tenant_id, meeting_id, title) VALUES ($1, $2, $2)
             ON CONFLICT (tenant_id, meeting_id) DO NOTHING",
        )
        .bind(tenant)
        .bind(meeting_id)
        .execute(&mut *tx)
        .await?;
    }
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM meetings WHERE meeting_id = $1")
        .bind(meeting_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let key = keys
        .get(&mut tx, tenant, true)
        .await?
        .ok_or(CryptoError::Decrypt)?;
    let sealed = key.seal(text.as_bytes(), &label_aad(tenant, label_id))?;
    let tag_term = (kind == "tag").then(|| key.index_token(&normalize_tag(text)));
    let created_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO labels (tenant_id, label_id, meeting_id, kind, sealed_text, tag_term, at_ms,
             end_ms, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (tenant_id, label_id) DO UPDATE SET label_id = EXCLUDED.label_id
         RETURNING created_at",
    )
    .bind(tenant)
    .bind(label_id)
    .bind(meeting_id)
    .bind(kind)
    .bind(&sealed)
    .bind(tag_term)
    .bind(at_ms)
    .bind(end_ms)
    .bind(created_by)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(LabelRow {
        label_id,
        meeting_id: meeting_id.into(),
        kind: kind.into(),
        text: text.into(),
        at_ms,
        end_ms,
        created_by: created_by.into(),
        created_at,
    }))
}

/// A meeting's labels, by time then creation (`None`: no such meeting).
pub async fn labels(
    db: &Db,
    keys: &Keys,
    tenant: Uuid,
    meeting_id: &str,
) -> Result<Option<Vec<LabelRow>>> {
    let mut tx = db.tenant_tx(tenant).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM meetings WHERE meeting_id = $1")
        .bind(meeting_id)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let rows = sqlx::query(
        "SELECT label_id, meeting_id, kind, sealed_text, at_ms, end_ms, created_by, created_at
         FROM labels WHERE meeting_id = $1 ORDER BY at_ms, created_at, label_id",
    )
    .bind(meeting_id)
    .fetch_all(&mut *tx)
    .await?;
    let mut labels = Vec::with_capacity(rows.len());
    if !rows.is_empty() {
        let key = keys
            .get(&mut tx, tenant, false)
            .await?
            .ok_or(CryptoError::Decrypt)?;
        for row in &rows {
            let label_id: Uuid = row.try_get("label_id")?;
            let sealed: Vec<u8> = row.try_get("sealed_text")?;
            let text = key.open(&sealed, &label_aad(tenant, label_id))?;
            labels.push(LabelRow {
                label_id,
                meeting_id: row.try_get("meeting_id")?,
                kind: row.try_get("kind")?,
                text: String::from_utf8_lossy(&text).into_owned(),
                at_ms: row.try_get("at_ms")?,
                end_ms: row.try_get("end_ms")?,
                created_by: row.try_get("created_by")?,
                created_at: row.try_get("created_at")?,
            });
        }
    }
    tx.commit().await?;
    Ok(Some(labels))
}

/// The tag texts of several meetings, in one transaction (a meeting list page).
pub async fn tags(
    db: &Db,
    keys: &Keys,
    tenant: Uuid,
    meeting_ids: &[String],
) -> Result<std::collections::HashMap<String, Vec<String>>> {
    let mut tags: std::collections::HashMap<String, Vec<String>> = Default::default();
    let mut tx = db.tenant_tx(tenant).await?;
    let rows = sqlx::query(
        "SELECT label_id, meeting_id, sealed_text FROM labels
         WHERE kind = 'tag' AND meeting_id = ANY($1) ORDER BY created_at, label_id",
    )
    .bind(meeting_ids)
    .fetch_all(&mut *tx)
    .await?;
    if !rows.is_empty() {
        let key = keys
            .get(&mut tx, tenant, false)
            .await?
            .ok_or(CryptoError::Decrypt)?;
        for row in &rows {
            let label_id: Uuid = row.try_get("label_id")?;
            let sealed: Vec<u8> = row.try_get("sealed_text")?;
            let text = key.open(&sealed, &label_aad(tenant, label_id))?;
            tags.entry(row.try_get("meeting_id")?)
                .or_default()
                .push(String::from_utf8_lossy(&text).into_owned());
        }
    }
    tx.commit().await?;
    Ok(tags)
}

/// Removes a label; `None` when the tenant has no such label.
pub async fn remove_label(db: &Db, tenant: Uuid, label_id: Uuid) -> Result<Option<String>> {
    let mut tx = db.tenant_tx(tenant).await?;
    let meeting: Option<String> =
        sqlx::query_scalar("DELETE FROM labels WHERE label_id = $1 RETURNING meeting_id")
            .bind(label_id)
            .fetch_optional(&mut *tx)
            .await?;
    tx.commit().await?;
    Ok(meeting)
}
