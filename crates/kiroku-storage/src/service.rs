//! `kiroku.storage.v1.Storage`: a tenant's users read, search, label and export their
//! minutes. The tenant is the credential's; another tenant's meetings do not exist.

use std::sync::Arc;

use kiroku_auth::auth::{Access, Principal, SCOPE_TRANSCRIBE};
use kiroku_auth::authorized;
use kiroku_auth::checker::Checker;
use kiroku_core::audit::{AuditEmitter, AuditRecord, actions};
use kiroku_core::db::Db;
use kiroku_core::docx;
use kiroku_core::transcript::{self, Format, Transcript};
use kiroku_proto::storage::v1 as pb;
use kiroku_proto::storage::v1::storage_server::Storage as StorageApi;
use kiroku_proto::transcribe::v1 as api;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::bundle;
use crate::error::{Result, StorageError};
use crate::store::{self, Keys, LabelRow, MeetingRow, StoreError};

/// Who may call each method (deny by default).
pub const METHODS: &[(&str, Access)] = &[
    ("ListMeetings", Access::SignedIn),
    ("GetMeeting", Access::SignedIn),
    ("Search", Access::SignedIn),
    ("ExportMeeting", Access::SignedIn),
    ("ListLabels", Access::SignedIn),
    (
        "AddLabel",
        Access::Member {
            api_scope: SCOPE_TRANSCRIBE,
        },
    ),
    (
        "RemoveLabel",
        Access::Member {
            api_scope: SCOPE_TRANSCRIBE,
        },
    ),
    ("ExportTenant", Access::Admin),
    ("ImportTenant", Access::Admin),
    // Owners only: checked in the method on top of this rule.
    ("EraseTenant", Access::Admin),
    ("RotateMasterKey", Access::Operator),
];

pub const MAX_PAGE: u32 = 200;
pub const MAX_HITS: u32 = 100;
pub const MAX_QUERY_CHARS: usize = 200;
pub const MAX_LABEL_CHARS: usize = 2000;

#[derive(Clone)]
pub struct StorageService {
    db: Db,
    keys: Keys,
    checker: Arc<Checker>,
    audit: AuditEmitter,
    operator: kiroku_auth::auth::OperatorToken,
    nats: NatsParts,
    /// How long `ImportTenant` waits for the client's next file.
    import_idle_timeout: std::time::Duration,
}

/// What erasure needs of NATS: the erasure register and the streams to purge.
#[derive(Clone)]
pub struct NatsParts {
    pub js: async_nats::jetstream::Context,
    pub layout: kiroku_core::nats::Layout,
    pub erasures: async_nats::jetstream::kv::Store,
    /// Worker checkpoints (key = session id), purged for the erased tenant's sessions.
    pub checkpoints: async_nats::jetstream::kv::Store,
}

impl std::fmt::Debug for NatsParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsParts")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for StorageService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageService").finish_non_exhaustive()
    }
}

fn timestamp(time: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

fn meeting_id(value: &str) -> Result<String> {
    Ok(kiroku_core::validate::meeting_id("meeting_id", value)?)
}

fn summary(row: &MeetingRow, tags: Vec<String>) -> pb::MeetingSummary {
    pb::MeetingSummary {
        meeting_id: row.meeting_id.clone(),
        title: row.title.clone(),
        started_at: Some(timestamp(row.started_at)),
        ended_at: row.ended_at.map(timestamp),
        language: row.language.clone(),
        duration_ms: row.duration_ms.max(0) as u64,
        segments: row.segments.clamp(0, i64::from(u32::MAX)) as u32,
        tags,
    }
}

fn kind_name(kind: i32) -> Option<&'static str> {
    match pb::LabelKind::try_from(kind).ok()? {
        pb::LabelKind::Tag => Some("tag"),
        pb::LabelKind::Bookmark => Some("bookmark"),
        pb::LabelKind::Memo => Some("memo"),
        pb::LabelKind::Unspecified => None,
    }
}

fn label(row: &LabelRow) -> pb::Label {
    let kind = match row.kind.as_str() {
        "tag" => pb::LabelKind::Tag,
        "bookmark" => pb::LabelKind::Bookmark,
        _ => pb::LabelKind::Memo,
    };
    pb::Label {
        label_id: row.label_id.to_string(),
        meeting_id: row.meeting_id.clone(),
        kind: kind as i32,
        text: row.text.clone(),
        at_ms: row.at_ms.max(0) as u64,
        end_ms: row.end_ms.max(0) as u64,
        created_by: row.created_by.clone(),
        created_at: Some(timestamp(row.created_at)),
    }
}

/// The stored segments as a transcript for the renderers.
pub fn transcript(row: &MeetingRow, segments: &[api::Segment]) -> Transcript {
    let segments: Vec<transcript::Segment> = segments
        .iter()
        .map(|s| transcript::Segment {
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            text: s.text.clone(),
            words: s
                .words
                .iter()
                .map(|w| transcript::Word {
                    text: w.text.clone(),
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    probability: w.probability,
                })
                .collect(),
        })
        .collect();
    Transcript {
        duration_ms: segments.iter().map(|s| s.end_ms).max().unwrap_or(0),
        text: kiroku_core::transcript::join_words(segments.iter().map(|s| s.text.as_str())),
        language: row.language.clone(),
        segments,
    }
}

impl StorageService {
    pub fn new(
        db: Db,
        keys: Keys,
        checker: Arc<Checker>,
        audit: AuditEmitter,
        operator: kiroku_auth::auth::OperatorToken,
        nats: NatsParts,
        import_idle_timeout: std::time::Duration,
    ) -> Self {
        Self {
            db,
            keys,
            checker,
            audit,
            operator,
            nats,
            import_idle_timeout,
        }
    }

    /// Erasure, in the order that makes it final: the tenant goes into the erasure
    /// register (so a restored backup loses it again), its data key is destroyed, its
    /// rows are deleted, its audio and finals still in JetStream are purged, and the
    /// workers are told, so the sessions still running end without keeping more (their
    /// clients get `ABORTED`).
    async fn erase(&self, tenant: Uuid) -> Result<(store::Erased, u64)> {
        self.nats
            .erasures
            .put(
                tenant.simple().to_string(),
                chrono::Utc::now().to_rfc3339().into_bytes().into(),
            )
            .await
            .map_err(|error| {
                tracing::error!(%error, "erasure register unavailable");
                StorageError::unavailable("NATS is unavailable: nothing was erased; retry")
            })?;
        let (erased, sessions) = store::erase_tenant(&self.db, tenant).await?;
        // Worker checkpoints hold the tail of recent captions: they go too.
        for session in &sessions {
            if let Err(error) = self.nats.checkpoints.purge(session).await {
                tracing::error!(%error, "a session checkpoint was not purged");
                return Err(StorageError::unavailable(
                    "the minutes are erased but a session checkpoint was not purged; retry the erasure",
                ));
            }
        }
        let layout = &self.nats.layout;
        // Subjects carry the tenant id in its simple form (Principal::tenant_token).
        let token = tenant.simple().to_string();
        let mut purged = 0;
        for (stream, subject) in [
            (layout.audio_stream(), layout.audio_subject(&token, ">")),
            (
                layout.transcripts_stream(),
                layout.transcript_subject(&token, ">"),
            ),
        ] {
            let result: Result<u64, String> = async {
                let handle = self
                    .nats
                    .js
                    .get_stream(&stream)
                    .await
                    .map_err(|e| e.to_string())?;
                let purged = handle.purge().filter(subject).await;
                purged.map(|p| p.purged).map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(n) => purged += n,
                Err(error) => {
                    tracing::error!(%error, stream, "tenant messages not purged");
                    return Err(StorageError::unavailable(format!(
                        "the minutes are erased but {stream} was not purged; retry the erasure"
                    )));
                }
            }
        }
        // After the purge, so a session's closing message is not purged with the rest.
        let notice = self.nats.layout.erasure_subject(&token);
        if let Err(error) = self
            .nats
            .js
            .client()
            .publish(notice, Default::default())
            .await
        {
            // The register holds the erasure; a missed notice leaves running sessions
            // to end as usual, and what they store is newer than the erasure.
            tracing::warn!(%error, "erasure notice not published: running sessions continue");
        }
        Ok((erased, purged))
    }

    async fn caller<T>(&self, request: &Request<T>, method: &str) -> Result<Principal, Status> {
        self.checker
            .admit_method(request.metadata(), METHODS, method)
            .await
    }
}

/// A file name from a meeting id (ids are free text).
fn file_stem(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The tenant bundle's files, manifest last.
async fn bundle(
    service: &StorageService,
    tenant: Uuid,
    tenant_slug: &str,
) -> Result<Vec<pb::BundleFile>, StoreError> {
    let mut meetings = Vec::new();
    let mut after = None;
    loop {
        let page =
            store::list_meetings(&service.db, &service.keys, tenant, after.clone(), None, 200)
                .await?;
        let Some(last) = page.last() else { break };
        after = Some((last.started_at, last.meeting_id.clone()));
        meetings.extend(page);
    }
    let mut files = Vec::new();
    let mut stems = std::collections::HashSet::new();
    for row in &meetings {
        let Some((row, segments)) =
            store::meeting(&service.db, &service.keys, tenant, &row.meeting_id).await?
        else {
            continue;
        };
        let labels = store::labels(&service.db, &service.keys, tenant, &row.meeting_id)
            .await?
            .unwrap_or_default();
        // Two ids may map to one file name: number the later ones.
        let mut stem = file_stem(&row.meeting_id);
        let base = stem.clone();
        let mut n = 1;
        while !stems.insert(stem.clone()) {
            n += 1;
            stem = format!("{base}-{n}");
        }
        let transcript = transcript(&row, &segments);
        let meeting = bundle::BundleMeeting {
            meeting_id: row.meeting_id.clone(),
            title: row.title.clone(),
            started_at: row.started_at,
            ended_at: row.ended_at,
            language: row.language.clone(),
            duration_ms: row.duration_ms,
            text: transcript.text.clone(),
            segments: segments.iter().map(bundle::BundleSegment::from).collect(),
            labels: labels
                .into_iter()
                .map(|l| bundle::BundleLabel {
                    label_id: l.label_id,
                    kind: l.kind,
                    text: l.text,
                    at_ms: l.at_ms,
                    end_ms: l.end_ms,
                    created_by: l.created_by,
                    created_at: l.created_at,
                })
                .collect(),
        };
        files.push(pb::BundleFile {
            path: format!("meetings/{stem}.json"),
            data: serde_json::to_vec_pretty(&meeting).unwrap_or_default(),
        });
        files.push(pb::BundleFile {
            path: format!("meetings/{stem}.vtt"),
            data: transcript.render(Format::Vtt).into_bytes(),
        });
    }
    let manifest = bundle::Manifest {
        format: bundle::FORMAT.into(),
        tenant_id: tenant.to_string(),
        tenant_slug: tenant_slug.into(),
        exported_at: chrono::Utc::now(),
        meetings: meetings.len() as u64,
        files: files
            .iter()
            .map(|f| bundle::ManifestFile::of(&f.path, &f.data))
            .collect(),
    };
    files.push(pb::BundleFile {
        path: bundle::MANIFEST.into(),
        data: serde_json::to_vec_pretty(&manifest).unwrap_or_default(),
    });
    Ok(files)
}

impl StorageService {
    /// Reads a bundle (manifest first) into one import transaction; commits only when
    /// every listed file came and matched and the import is audited.
    /// Imports a bundle in two steps, so the database is never held while the client
    /// sends: every file is received (each within [`IMPORT_IDLE_TIMEOUT`] of the last),
    /// checked against the manifest, parsed, and spooled to a temporary file (at most
    /// [`crate::MAX_BUNDLE_BYTES`]); only a complete, verified bundle is then imported
    /// from the spool in one short transaction.
    async fn import(
        &self,
        caller: &Principal,
        mut files: tonic::Streaming<pb::BundleFile>,
    ) -> Result<(store::Imported, u64)> {
        use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};
        let idle = self.import_idle_timeout;
        let mut next = async || match tokio::time::timeout(idle, files.message()).await {
            Ok(message) => message.map_err(StorageError::from),
            Err(_) => Err(StorageError::Timeout(format!(
                "no bundle file within {} s: the import is abandoned",
                idle.as_secs()
            ))),
        };
        let first = next().await?.ok_or_else(|| {
            StorageError::invalid(format!("empty bundle: send {} first", bundle::MANIFEST))
        })?;
        if first.path != bundle::MANIFEST {
            return Err(StorageError::invalid(format!(
                "the first file must be {}, not {:?}",
                bundle::MANIFEST,
                first.path
            )));
        }
        let manifest = bundle::Manifest::parse(&first.data)?;
        let mut checker = bundle::Checker::new(&manifest);
        let spool_error = |e: std::io::Error| StorageError::internal("bundle spool", e);
        let mut spool = tokio::fs::File::from_std(tempfile::tempfile().map_err(spool_error)?);
        let (mut spooled, mut meetings) = (0u64, Vec::new());
        while let Some(file) = next().await? {
            checker.check(&file.path, &file.data)?;
            if !bundle::is_meeting(&file.path) {
                continue;
            }
            // Parsed now so a bad file is refused before anything is written.
            serde_json::from_slice::<bundle::BundleMeeting>(&file.data)
                .map_err(|e| StorageError::invalid(format!("{}: {e}", file.path)))?;
            spooled += file.data.len() as u64;
            if spooled > crate::MAX_BUNDLE_BYTES {
                return Err(StorageError::invalid(format!(
                    "the bundle's meetings exceed {} bytes; import it in parts",
                    crate::MAX_BUNDLE_BYTES
                )));
            }
            spool.write_all(&file.data).await.map_err(spool_error)?;
            meetings.push((file.path, file.data.len()));
        }
        let checked = checker.finish()?;

        spool.flush().await.map_err(spool_error)?;
        spool
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(spool_error)?;
        let mut spool = tokio::io::BufReader::new(spool);
        let mut import = store::Import::begin(&self.db, &self.keys, caller.tenant_id).await?;
        for (path, len) in meetings {
            let mut data = vec![0; len];
            spool.read_exact(&mut data).await.map_err(spool_error)?;
            let meeting: bundle::BundleMeeting = serde_json::from_slice(&data)
                .map_err(|e| StorageError::invalid(format!("{path}: {e}")))?;
            import.meeting(&meeting).await.map_err(|e| match e {
                StoreError::Invalid(_) => StorageError::invalid(format!("{path}: {e}")),
                e => e.into(),
            })?;
        }
        Ok((import.commit().await?, checked))
    }
}

/// What each RPC does, after [`StorageService::caller`] admitted the caller.
impl StorageService {
    async fn erase_tenant(
        &self,
        caller: Principal,
        request: pb::EraseTenantRequest,
    ) -> Result<pb::EraseTenantResponse> {
        if caller.role != kiroku_auth::auth::Role::Owner {
            return Err(StorageError::Denied(
                "only an owner can erase the tenant's minutes".into(),
            ));
        }
        if request.confirm_tenant_slug.trim() != caller.tenant_slug {
            return Err(StorageError::Precondition(
                "confirm_tenant_slug must be your tenant's slug".into(),
            ));
        }
        let (erased, purged) = self.erase(caller.tenant_id).await?;
        self.audit.spawn_emit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::TENANT_ERASED,
            )
            .detail("meetings", erased.meetings.to_string())
            .detail("segments", erased.segments.to_string())
            .detail("labels", erased.labels.to_string())
            .detail("stream_messages", purged.to_string()),
        );
        tracing::info!(tenant = %caller.tenant_id, ?erased, purged, "tenant minutes erased");
        Ok(pb::EraseTenantResponse {
            meetings: erased.meetings,
            segments: erased.segments,
            labels: erased.labels,
            stream_messages: purged,
        })
    }

    async fn list_meetings(
        &self,
        caller: Principal,
        request: pb::ListMeetingsRequest,
    ) -> Result<pb::ListMeetingsResponse> {
        let page_size = kiroku_core::validate::page_size(request.page_size, 50, MAX_PAGE)?;
        let after = if request.page_token.is_empty() {
            None
        } else {
            let (micros, id) = request
                .page_token
                .split_once(':')
                .and_then(|(t, id)| Some((t.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| StorageError::invalid("page_token is not one we issued"))?;
            let time = chrono::DateTime::from_timestamp_micros(micros)
                .ok_or_else(|| StorageError::invalid("page_token is not one we issued"))?;
            Some((time, id))
        };
        let tag = Some(request.tag.trim()).filter(|t| !t.is_empty());
        let mut rows = store::list_meetings(
            &self.db,
            &self.keys,
            caller.tenant_id,
            after,
            tag,
            i64::from(page_size) + 1,
        )
        .await?;
        let more = rows.len() > page_size as usize;
        rows.truncate(page_size as usize);
        let ids: Vec<String> = rows.iter().map(|r| r.meeting_id.clone()).collect();
        let mut tags = store::tags(&self.db, &self.keys, caller.tenant_id, &ids).await?;
        let meetings: Vec<pb::MeetingSummary> = rows
            .iter()
            .map(|row| summary(row, tags.remove(&row.meeting_id).unwrap_or_default()))
            .collect();
        Ok(pb::ListMeetingsResponse {
            next_page_token: match (more, rows.last()) {
                (true, Some(last)) => {
                    format!("{}:{}", last.started_at.timestamp_micros(), last.meeting_id)
                }
                _ => String::new(),
            },
            meetings,
        })
    }

    async fn get_meeting(
        &self,
        caller: Principal,
        request: pb::GetMeetingRequest,
    ) -> Result<pb::Meeting> {
        let id = meeting_id(&request.meeting_id)?;
        let (row, segments) = store::meeting(&self.db, &self.keys, caller.tenant_id, &id)
            .await?
            .ok_or_else(|| StorageError::NotFound("meeting"))?;
        let labels = store::labels(&self.db, &self.keys, caller.tenant_id, &id)
            .await?
            .unwrap_or_default();
        Ok(pb::Meeting {
            summary: Some(summary(
                &row,
                labels
                    .iter()
                    .filter(|l| l.kind == "tag")
                    .map(|l| l.text.clone())
                    .collect(),
            )),
            segments,
            labels: labels.iter().map(label).collect(),
        })
    }

    async fn search(
        &self,
        caller: Principal,
        request: pb::SearchRequest,
    ) -> Result<pb::SearchResponse> {
        let query = request.query.trim();
        if query.is_empty() || query.chars().count() > MAX_QUERY_CHARS {
            return Err(StorageError::invalid(format!(
                "query must be 1 to {MAX_QUERY_CHARS} characters"
            )));
        }
        if crate::search::query_terms(query).is_empty() {
            return Err(StorageError::invalid("query has no words to search for"));
        }
        let limit = match request.limit {
            0 => 20,
            n => n.min(MAX_HITS),
        };
        let hits = store::search(
            &self.db,
            &self.keys,
            caller.tenant_id,
            query,
            i64::from(limit),
        )
        .await?;
        Ok(pb::SearchResponse {
            hits: hits
                .into_iter()
                .map(|(meeting_id, title, segment)| pb::SearchHit {
                    meeting_id,
                    title,
                    segment: Some(segment),
                })
                .collect(),
        })
    }

    async fn export_meeting(
        &self,
        caller: Principal,
        request: pb::ExportMeetingRequest,
    ) -> Result<pb::ExportMeetingResponse> {
        let id = meeting_id(&request.meeting_id)?;
        let format = pb::ExportFormat::try_from(request.format)
            .ok()
            .filter(|f| *f != pb::ExportFormat::Unspecified)
            .ok_or_else(|| StorageError::invalid("format must be TXT, SRT, VTT, JSON or DOCX"))?;
        let (row, segments) = store::meeting(&self.db, &self.keys, caller.tenant_id, &id)
            .await?
            .ok_or_else(|| StorageError::NotFound("meeting"))?;
        let transcript = transcript(&row, &segments);
        let (data, content_type, extension) = match format {
            pb::ExportFormat::Txt => (
                transcript.render(Format::Txt).into_bytes(),
                "text/plain; charset=utf-8",
                "txt",
            ),
            pb::ExportFormat::Srt => (
                transcript.render(Format::Srt).into_bytes(),
                "application/x-subrip",
                "srt",
            ),
            pb::ExportFormat::Vtt => (
                transcript.render(Format::Vtt).into_bytes(),
                "text/vtt",
                "vtt",
            ),
            pb::ExportFormat::Json => (
                transcript.render(Format::Json).into_bytes(),
                "application/json",
                "json",
            ),
            _ => {
                let labels = store::labels(&self.db, &self.keys, caller.tenant_id, &id)
                    .await?
                    .unwrap_or_default();
                let labels: Vec<docx::Label<'_>> = labels
                    .iter()
                    .map(|l| docx::Label {
                        kind: &l.kind,
                        at_ms: (l.kind != "tag").then_some(l.at_ms.max(0) as u64),
                        end_ms: (l.kind == "memo").then_some(l.end_ms.max(0) as u64),
                        text: &l.text,
                    })
                    .collect();
                // Minutes show Japan time (the service's market); the audit log's
                // per-tenant zone setting is the audit service's.
                let jst = chrono::FixedOffset::east_opt(9 * 3600)
                    .ok_or_else(|| StorageError::internal("time zone", "UTC+9 out of range"))?;
                let started = row
                    .started_at
                    .with_timezone(&jst)
                    .format("%Y-%m-%d %H:%M JST")
                    .to_string();
                let data = docx::render(&docx::Minutes {
                    title: &row.title,
                    started_at: &started,
                    participants: &[],
                    transcript: &transcript,
                    labels: &labels,
                })
                .map_err(|e| StorageError::internal("docx", e))?;
                (
                    data,
                    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                    "docx",
                )
            }
        };
        let record = AuditRecord::new(
            caller.tenant_token(),
            caller.actor(),
            actions::MEETING_EXPORTED,
        )
        .target(format!("meeting/{id}"))
        .detail("format", extension);
        if let Err(error) = self.audit.emit(record).await {
            // The customer must be able to see every export: none without its entry.
            tracing::error!(%error, "meeting.exported not audited: export refused");
            return Err(StorageError::unavailable(
                "the audit log is unavailable; retry",
            ));
        }
        let safe: String = id
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        Ok(pb::ExportMeetingResponse {
            data,
            content_type: content_type.into(),
            file_name: format!("{safe}.{extension}"),
        })
    }

    async fn add_label(
        &self,
        caller: Principal,
        request: pb::AddLabelRequest,
    ) -> Result<pb::Label> {
        let id = meeting_id(&request.meeting_id)?;
        let kind = kind_name(request.kind)
            .ok_or_else(|| StorageError::invalid("kind must be TAG, BOOKMARK or MEMO"))?;
        let text = request.text.trim();
        let chars = text.chars().count();
        if chars > MAX_LABEL_CHARS || (kind != "bookmark" && chars == 0) {
            return Err(StorageError::invalid(format!(
                "label text must be {} to {MAX_LABEL_CHARS} characters",
                if kind == "bookmark" { 0 } else { 1 }
            )));
        }
        if kind == "tag" && (chars > 64 || text.contains(char::is_control)) {
            return Err(StorageError::invalid(
                "a tag is one line of at most 64 characters",
            ));
        }
        if text
            .chars()
            .any(|c| c.is_control() && !matches!(c, '\n' | '\t'))
        {
            return Err(StorageError::invalid(
                "label text must not contain control characters",
            ));
        }
        let (at_ms, end_ms) = match kind {
            "tag" => (0, 0),
            "bookmark" => (request.at_ms, request.at_ms),
            _ => {
                if request.end_ms < request.at_ms {
                    return Err(StorageError::invalid(
                        "a memo's end_ms must not be before its at_ms",
                    ));
                }
                (request.at_ms, request.end_ms)
            }
        };
        if at_ms > i64::MAX as u64 || end_ms > i64::MAX as u64 {
            return Err(StorageError::invalid("time out of range"));
        }
        let created_by = caller.subject.to_string();
        let row = store::add_label(
            &self.db,
            &self.keys,
            caller.tenant_id,
            &store::NewLabel {
                label_id: Uuid::new_v4(),
                meeting_id: &id,
                kind,
                text,
                at_ms: at_ms as i64,
                end_ms: end_ms as i64,
                created_by: &created_by,
                create_meeting: request.live && kind == "bookmark",
            },
        )
        .await?
        .ok_or_else(|| StorageError::NotFound("meeting"))?;
        self.audit.spawn_emit(
            AuditRecord::new(caller.tenant_token(), caller.actor(), actions::LABEL_ADDED)
                .target(format!("meeting/{id}"))
                .detail("label", row.label_id.to_string())
                .detail("kind", kind),
        );
        Ok(label(&row))
    }

    async fn list_labels(
        &self,
        caller: Principal,
        request: pb::ListLabelsRequest,
    ) -> Result<pb::ListLabelsResponse> {
        let id = meeting_id(&request.meeting_id)?;
        let rows = store::labels(&self.db, &self.keys, caller.tenant_id, &id)
            .await?
            .ok_or_else(|| StorageError::NotFound("meeting"))?;
        Ok(pb::ListLabelsResponse {
            labels: rows.iter().map(label).collect(),
        })
    }

    async fn remove_label(
        &self,
        caller: Principal,
        request: pb::RemoveLabelRequest,
    ) -> Result<pb::RemoveLabelResponse> {
        let label_id = Uuid::try_parse(request.label_id.trim())
            .map_err(|_| StorageError::NotFound("label"))?;
        let meeting = store::remove_label(&self.db, caller.tenant_id, label_id)
            .await?
            .ok_or_else(|| StorageError::NotFound("label"))?;
        self.audit.spawn_emit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::LABEL_REMOVED,
            )
            .target(format!("meeting/{meeting}"))
            .detail("label", label_id.to_string()),
        );
        Ok(pb::RemoveLabelResponse {})
    }
}

#[tonic::async_trait]
impl StorageApi for StorageService {
    type ExportTenantStream =
        std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::BundleFile, Status>> + Send>>;

    async fn export_tenant(
        &self,
        request: Request<pb::ExportTenantRequest>,
    ) -> Result<Response<Self::ExportTenantStream>, Status> {
        let caller = self.caller(&request, "ExportTenant").await?;
        let files = bundle(self, caller.tenant_id, &caller.tenant_slug)
            .await
            .map_err(StorageError::from)?;
        let record = AuditRecord::new(
            caller.tenant_token(),
            caller.actor(),
            actions::TENANT_EXPORTED,
        )
        .detail("files", files.len().to_string());
        if let Err(error) = self.audit.emit(record).await {
            tracing::error!(%error, "tenant.exported not audited: export refused");
            return Err(StorageError::unavailable("the audit log is unavailable; retry").into());
        }
        Ok(Response::new(Box::pin(futures::stream::iter(
            files.into_iter().map(Ok),
        ))))
    }

    async fn import_tenant(
        &self,
        request: Request<tonic::Streaming<pb::BundleFile>>,
    ) -> Result<Response<pb::ImportTenantResponse>, Status> {
        let caller = self.caller(&request, "ImportTenant").await?;
        let (imported, files) = self.import(&caller, request.into_inner()).await?;
        // Committed before the record: an import that fails leaves nothing to audit, and
        // a committed one is recorded (retried by the emitter) even if the client is gone.
        self.audit.spawn_emit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::TENANT_IMPORTED,
            )
            .detail("meetings", imported.meetings.to_string())
            .detail("segments", imported.segments.to_string())
            .detail("labels", imported.labels.to_string()),
        );
        tracing::info!(tenant = %caller.tenant_id, ?imported, files, "tenant bundle imported");
        Ok(Response::new(pb::ImportTenantResponse {
            meetings: imported.meetings,
            segments: imported.segments,
            labels: imported.labels,
            files,
        }))
    }

    async fn rotate_master_key(
        &self,
        request: Request<pb::RotateMasterKeyRequest>,
    ) -> Result<Response<pb::RotateMasterKeyResponse>, Status> {
        self.operator.check(&request, "RotateMasterKey")?;
        let (rewrapped, failed) = store::rewrap_keys(&self.db, self.keys.provider())
            .await
            .map_err(StorageError::from)?;
        tracing::info!(
            rewrapped,
            failed,
            master_key = self.keys.provider().key_id(),
            "master key rotation"
        );
        Ok(Response::new(pb::RotateMasterKeyResponse {
            rewrapped,
            failed,
            master_key_id: self.keys.provider().key_id().to_string(),
        }))
    }

    async fn erase_tenant(
        &self,
        request: Request<pb::EraseTenantRequest>,
    ) -> Result<Response<pb::EraseTenantResponse>, Status> {
        authorized!(self, request, "EraseTenant", |caller, body| {
            StorageService::erase_tenant(self, caller, body)
        })
    }

    async fn list_meetings(
        &self,
        request: Request<pb::ListMeetingsRequest>,
    ) -> Result<Response<pb::ListMeetingsResponse>, Status> {
        authorized!(self, request, "ListMeetings", |caller, body| {
            StorageService::list_meetings(self, caller, body)
        })
    }

    async fn get_meeting(
        &self,
        request: Request<pb::GetMeetingRequest>,
    ) -> Result<Response<pb::Meeting>, Status> {
        authorized!(self, request, "GetMeeting", |caller, body| {
            StorageService::get_meeting(self, caller, body)
        })
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        authorized!(self, request, "Search", |caller, body| {
            StorageService::search(self, caller, body)
        })
    }

    async fn export_meeting(
        &self,
        request: Request<pb::ExportMeetingRequest>,
    ) -> Result<Response<pb::ExportMeetingResponse>, Status> {
        authorized!(self, request, "ExportMeeting", |caller, body| {
            StorageService::export_meeting(self, caller, body)
        })
    }

    async fn add_label(
        &self,
        request: Request<pb::AddLabelRequest>,
    ) -> Result<Response<pb::Label>, Status> {
        authorized!(self, request, "AddLabel", |caller, body| {
            StorageService::add_label(self, caller, body)
        })
    }

    async fn list_labels(
        &self,
        request: Request<pb::ListLabelsRequest>,
    ) -> Result<Response<pb::ListLabelsResponse>, Status> {
        authorized!(self, request, "ListLabels", |caller, body| {
            StorageService::list_labels(self, caller, body)
        })
    }

    async fn remove_label(
        &self,
        request: Request<pb::RemoveLabelRequest>,
    ) -> Result<Response<pb::RemoveLabelResponse>, Status> {
        authorized!(self, request, "RemoveLabel", |caller, body| {
            StorageService::remove_label(self, caller, body)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deny by default: every RPC of the service has exactly one access rule.
    #[test]
    fn control_9_2_2_every_method_has_an_access_rule() {
        let problems =
            kiroku_auth::auth::access_table_problems("kiroku.storage.v1.Storage", METHODS);
        assert!(problems.is_empty(), "{problems:?}");
    }
}
