//! `kiroku.audit.v1.AuditService`: tenant admins (with MFA) read, verify and export
//! their own tenant's log.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kiroku_auth::auth::{Access, OperatorToken, Principal};
use kiroku_auth::checker::Checker;
use kiroku_core::audit::{Actor, AuditEmitter, AuditRecord, actions};
use kiroku_core::db::Db;
use kiroku_proto::account::v1::ListNoticeRecipientsRequest;
use kiroku_proto::account::v1::account_service_client::AccountServiceClient;
use kiroku_proto::audit::v1 as pb;
use kiroku_proto::audit::v1::audit_service_server::AuditService;
use kiroku_proto::audit::v1::notice_service_server::NoticeService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::error::{AuditError, Result, respond};
use crate::store::{self, Query, Stored};
use crate::{notice, render};

/// Every method: admins and owners with MFA (the audit log is admin information).
pub const METHODS: &[(&str, Access)] = &[
    ("ListEvents", Access::Admin),
    ("VerifyChain", Access::Admin),
    ("ExportEvents", Access::Admin),
    ("ExportEventsStream", Access::Admin),
    ("SetTimeZone", Access::Admin),
    ("GetUsage", Access::Admin),
];

/// The notice methods: publishing is the operator's; listing is open to every signed-in
/// user of a tenant (their tenant's notices) and to the operator (every notice).
pub const NOTICE_METHODS: &[(&str, Access)] = &[
    ("PublishNotice", Access::Operator),
    ("ListNotices", Access::SignedIn),
];

/// The usage view's default period.
pub const DEFAULT_USAGE_DAYS: i64 = 30;
/// The usage view's longest period.
pub const MAX_USAGE_DAYS: i64 = 366;

/// Largest page.
pub const MAX_PAGE: u32 = 1000;
/// Most entries in one unary export (`ExportEvents`); `ExportEventsStream` has no limit.
pub const MAX_EXPORT: usize = 100_000;
/// Entries read from the database and rendered per chunk of a streamed export.
const EXPORT_PAGE: i64 = 1000;
/// Chunks a streamed export renders ahead of a slow client (memory: a few pages).
const EXPORT_CHUNKS_AHEAD: usize = 4;

/// An export in progress: pages of entries read oldest first, rendered one at a time so
/// memory stays a page however long the log is.
struct Export {
    db: Db,
    tenant: Uuid,
    zone: chrono_tz::Tz,
    format: pb::ExportFormat,
    query: Query,
    /// Nothing rendered yet (the header or `[` comes next).
    started: bool,
    /// Whether an entry was rendered (JSON separators).
    any: bool,
    done: bool,
}

impl Export {
    fn content_type(&self) -> &'static str {
        match self.format {
            pb::ExportFormat::Csv => "text/csv",
            _ => "application/json",
        }
    }

    /// The next chunk and how many entries it holds; `None` after the last.
    async fn next_chunk(&mut self) -> Result<Option<(Vec<u8>, u64)>> {
        if self.done {
            return Ok(None);
        }
        let csv = self.format == pb::ExportFormat::Csv;
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            if csv {
                out = render::csv_header().map_err(csv_error)?;
            } else {
                out.extend_from_slice(render::JSON_OPEN);
            }
        }
        let rows = store::list(&self.db, self.tenant, &self.query).await?;
        let entries: Vec<_> = rows
            .iter()
            .map(|row| Audit::entry(row, self.zone))
            .collect();
        if let Some(last) = rows.last() {
            self.query.after_seq = Some(last.entry.seq);
        }
        if csv {
            out.extend(render::csv_rows(&entries).map_err(csv_error)?);
        } else {
            out.extend(render::json_items(&entries, !self.any));
        }
        self.any |= !entries.is_empty();
        if (rows.len() as i64) < self.query.limit {
            self.done = true;
            if !csv {
                out.extend_from_slice(render::JSON_CLOSE);
            }
        }
        Ok(Some((out, entries.len() as u64)))
    }
}

fn csv_error(error: csv::Error) -> AuditError {
    AuditError::internal("csv", error)
}

#[derive(Clone)]
pub struct Audit {
    db: Db,
    checker: Arc<Checker>,
    anchors: crate::anchor::Anchors,
    operator: OperatorToken,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

fn time(value: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    value.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

fn non_empty(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

impl Audit {
    /// `operator`: admits the service operator to its own log
    /// ([`kiroku_core::audit::OPERATOR_LOG`]).
    pub fn new(
        db: Db,
        checker: Arc<Checker>,
        anchors: crate::anchor::Anchors,
        operator: OperatorToken,
    ) -> Self {
        Self {
            db,
            checker,
            anchors,
            operator,
        }
    }

    /// Whose log the caller reads: a tenant admin's tenant, or with the operator token
    /// the operator's own log (refused operator calls).
    async fn log_of<T>(&self, request: &Request<T>, method: &str) -> Result<Uuid, Status> {
        if OperatorToken::presented(request.metadata()) {
            self.operator.check(request, method)?;
            Ok(Uuid::nil())
        } else {
            Ok(self.caller(request, method).await?.tenant_id)
        }
    }

    /// Checks the stored chain's end against its anchored head: `(first broken seq,
    /// problem)` when entries after the head's seq are gone or the entry there has
    /// another hash (the chain was shortened or rewritten).
    async fn check_head(
        &self,
        tenant: uuid::Uuid,
        head: Result<Option<crate::anchor::Head>, crate::anchor::AnchorProblem>,
        checked: u64,
    ) -> Result<Option<(u64, String)>> {
        use crate::anchor::AnchorProblem;
        let head = match head {
            Ok(Some(head)) => head,
            Ok(None) => return Ok(None),
            Err(AnchorProblem::BadSignature) => {
                return Ok(Some((
                    0,
                    "the anchored chain head has an invalid signature: the anchor was altered"
                        .into(),
                )));
            }
            Err(AnchorProblem::Unavailable(error)) => {
                tracing::error!(%error, "reading the anchored chain head");
                return Err(AuditError::unavailable(
                    "the anchored chain head cannot be read; retry",
                ));
            }
        };
        let anchored = head.seq.max(0) as u64;
        if anchored > checked {
            return Ok(Some((
                checked + 1,
                format!(
                    "entries {} to {anchored} are missing: the log ends at {checked} but entry {anchored} was anchored",
                    checked + 1
                ),
            )));
        }
        let stored = store::hash_at(&self.db, tenant, head.seq)
            .await?
            .map(hex::encode);
        if stored.as_deref() != Some(head.hash.as_str()) {
            return Ok(Some((
                anchored,
                format!("entry {anchored} differs from its anchored hash: the chain was rewritten"),
            )));
        }
        Ok(None)
    }

    async fn caller<T>(&self, request: &Request<T>, method: &str) -> Result<Principal, Status> {
        self.checker
            .admit_method(request.metadata(), METHODS, method)
            .await
    }

    /// The zone to render in: the request's, else the tenant's, else Asia/Tokyo.
    async fn zone(&self, tenant: Uuid, requested: &str) -> Result<(chrono_tz::Tz, String)> {
        let name = match non_empty(requested) {
            Some(name) => name,
            None => store::time_zone(&self.db, tenant)
                .await?
                .unwrap_or_else(|| render::DEFAULT_TIME_ZONE.to_string()),
        };
        let zone = render::zone(&name).map_err(AuditError::invalid)?;
        Ok((zone, name))
    }

    /// An export of `request`'s entries, oldest first.
    async fn export(&self, tenant: Uuid, request: pb::ExportEventsRequest) -> Result<Export> {
        let format = pb::ExportFormat::try_from(request.format)
            .ok()
            .filter(|f| *f != pb::ExportFormat::Unspecified)
            .ok_or_else(|| AuditError::invalid("format must be CSV or JSON"))?;
        let (zone, _) = self.zone(tenant, &request.time_zone).await?;
        let mut query = Self::query(request.filter)?;
        query.limit = EXPORT_PAGE;
        query.oldest_first = true;
        Ok(Export {
            db: self.db.clone(),
            tenant,
            zone,
            format,
            query,
            started: false,
            any: false,
            done: false,
        })
    }

    fn query(filter: Option<pb::Filter>) -> Result<Query> {
        let filter = filter.unwrap_or_default();
        let query = Query {
            from: time(filter.from),
            to: time(filter.to),
            actor_id: non_empty(&filter.actor_id),
            action: non_empty(&filter.action),
            meeting_id: non_empty(&filter.meeting_id),
            before_seq: None,
            after_seq: None,
            oldest_first: false,
            limit: 100,
        };
        if let (Some(from), Some(to)) = (query.from, query.to)
            && from >= to
        {
            return Err(AuditError::invalid("filter: `from` must be before `to`"));
        }
        Ok(query)
    }

    fn entry(stored: &Stored, zone: chrono_tz::Tz) -> pb::AuditEntry {
        let e = &stored.entry;
        pb::AuditEntry {
            seq: e.seq as u64,
            event_id: e.event_id.clone(),
            occurred_at: render::render_time(stored.occurred_at, zone),
            actor_id: e.actor_id.clone(),
            actor_kind: e.actor_kind.clone(),
            action: e.action.clone(),
            target: e.target.clone(),
            outcome: e.outcome.clone(),
            source_ip: e.source_ip.clone(),
            details: e.details.clone().into_iter().collect(),
            trace_id: e.trace_id.clone(),
            hash: hex::encode(&stored.hash),
        }
    }
}

#[tonic::async_trait]
impl AuditService for Audit {
    async fn list_events(
        &self,
        request: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        respond(async move {
            let tenant = self.log_of(&request, "ListEvents").await?;
            let request = request.into_inner();
            let (zone, zone_name) = self.zone(tenant, &request.time_zone).await?;
            let mut query = Self::query(request.filter)?;
            let page_size = kiroku_core::validate::page_size(request.page_size, 100, MAX_PAGE)
                .map_err(Status::from)?;
            query.limit = i64::from(page_size) + 1;
            if let Some(token) = non_empty(&request.page_token) {
                query.before_seq = Some(
                    token
                        .parse()
                        .map_err(|_| AuditError::invalid("page_token is not one we issued"))?,
                );
            }
            let mut rows = store::list(&self.db, tenant, &query).await?;
            let more = rows.len() > page_size as usize;
            rows.truncate(page_size as usize);
            let next_page_token = match (more, rows.last()) {
                (true, Some(last)) => last.entry.seq.to_string(),
                _ => String::new(),
            };
            Ok(pb::ListEventsResponse {
                entries: rows.iter().map(|row| Self::entry(row, zone)).collect(),
                next_page_token,
                time_zone: zone_name,
            })
        })
        .await
    }

    async fn verify_chain(
        &self,
        request: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::VerifyChainResponse>, Status> {
        respond(async move {
            let tenant = self.log_of(&request, "VerifyChain").await?;
            // The head first: it only moves after its entry is committed, so the walk that
            // follows sees at least that entry even while events keep arriving.
            let head = self.anchors.head(tenant).await;
            let (checked, broken) = store::verify(&self.db, tenant).await?;
            let broken = match broken {
                Some(b) => Some((b.seq as u64, b.problem)),
                None => self.check_head(tenant, head, checked).await?,
            };
            Ok(pb::VerifyChainResponse {
                intact: broken.is_none(),
                entries_checked: checked,
                first_broken_seq: broken.as_ref().map_or(0, |b| b.0),
                problem: broken.map(|b| b.1).unwrap_or_default(),
            })
        })
        .await
    }

    async fn export_events(
        &self,
        request: Request<pb::ExportEventsRequest>,
    ) -> Result<Response<pb::ExportEventsResponse>, Status> {
        respond(async move {
        let tenant = self.log_of(&request, "ExportEvents").await?;
        let mut export = self.export(tenant, request.into_inner()).await?;
        let mut data = Vec::new();
        let mut entries = 0;
        while let Some((chunk, n)) = export.next_chunk().await? {
            data.extend(chunk);
            entries += n;
            if entries as usize > MAX_EXPORT {
                return Err(AuditError::OutOfRange(format!(
                    "more than {MAX_EXPORT} entries: narrow the time range, or use ExportEventsStream"
                )));
            }
        }
        Ok(pb::ExportEventsResponse {
            data,
            entries,
            content_type: export.content_type().into(),
        })
        })
        .await
    }

    type ExportEventsStreamStream =
        tokio_stream::wrappers::ReceiverStream<Result<pb::ExportEventsChunk, Status>>;

    async fn export_events_stream(
        &self,
        request: Request<pb::ExportEventsRequest>,
    ) -> Result<Response<Self::ExportEventsStreamStream>, Status> {
        let tenant = self.log_of(&request, "ExportEventsStream").await?;
        let mut export = self.export(tenant, request.into_inner()).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(EXPORT_CHUNKS_AHEAD);
        tokio::spawn(async move {
            let content_type = export.content_type();
            loop {
                let chunk = match export.next_chunk().await {
                    Ok(Some((data, entries))) => Ok(pb::ExportEventsChunk {
                        data,
                        entries,
                        content_type: content_type.into(),
                    }),
                    Ok(None) => return,
                    Err(error) => Err(Status::from(error)),
                };
                let failed = chunk.is_err();
                // A client that went away ends the export.
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn set_time_zone(
        &self,
        request: Request<pb::SetTimeZoneRequest>,
    ) -> Result<Response<pb::SetTimeZoneResponse>, Status> {
        respond(async move {
            let caller = self.caller(&request, "SetTimeZone").await?;
            let name = request.into_inner().time_zone.trim().to_string();
            render::zone(&name).map_err(AuditError::invalid)?;
            store::set_time_zone(&self.db, caller.tenant_id, &name).await?;
            Ok(pb::SetTimeZoneResponse { time_zone: name })
        })
        .await
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<Response<pb::GetUsageResponse>, Status> {
        respond(async move {
            let caller = self.caller(&request, "GetUsage").await?;
            let request = request.into_inner();
            let (_, zone_name) = self.zone(caller.tenant_id, &request.time_zone).await?;
            let to = time(request.to).unwrap_or_else(Utc::now);
            let from = time(request.from)
                .unwrap_or_else(|| to - chrono::Duration::days(DEFAULT_USAGE_DAYS));
            if from >= to {
                return Err(AuditError::invalid("`from` must be before `to`"));
            }
            if to - from > chrono::Duration::days(MAX_USAGE_DAYS) {
                return Err(AuditError::invalid(format!(
                    "the period is at most {MAX_USAGE_DAYS} days"
                )));
            }
            let rows = store::usage(&self.db, caller.tenant_id, from, to, &zone_name).await?;
            let usage = |row: &store::UsageRow| pb::Usage {
                date: row.date.clone().unwrap_or_default(),
                streams: row.streams.max(0) as u64,
                failed_streams: row.failed_streams.max(0) as u64,
                refused_streams: row.refused_streams.max(0) as u64,
                audio_minutes: row.audio_ms.max(0) as f64 / 60_000.0,
                finals: row.finals.max(0) as u64,
                final_latency_p50_ms: row.latency_p50_ms.unwrap_or(0).max(0) as u32,
                final_latency_p95_ms: row.latency_p95_ms.unwrap_or(0).max(0) as u32,
            };
            Ok(pb::GetUsageResponse {
                total: rows.iter().find(|row| row.date.is_none()).map(usage),
                days: rows
                    .iter()
                    .filter(|row| row.date.is_some())
                    .map(usage)
                    .collect(),
                time_zone: zone_name,
            })
        })
        .await
    }
}

/// `kiroku.audit.v1.NoticeService`.
#[derive(Clone)]
pub struct Notices {
    db: Db,
    checker: Arc<Checker>,
    operator: OperatorToken,
    accounts: AccountServiceClient<kiroku_core::grpc_metrics::MeteredChannel>,
    audit: AuditEmitter,
    /// Wakes the mailer after a publish.
    wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices").finish_non_exhaustive()
    }
}

impl Notices {
    pub fn new(
        db: Db,
        checker: Arc<Checker>,
        operator: OperatorToken,
        accounts: AccountServiceClient<kiroku_core::grpc_metrics::MeteredChannel>,
        audit: AuditEmitter,
        wake: Arc<tokio::sync::Notify>,
    ) -> Self {
        Self {
            db,
            checker,
            operator,
            accounts,
            audit,
            wake,
        }
    }
}

#[tonic::async_trait]
impl NoticeService for Notices {
    async fn publish_notice(
        &self,
        request: Request<pb::PublishNoticeRequest>,
    ) -> Result<Response<pb::Notice>, Status> {
        respond(async move {
        self.operator.check(&request, "PublishNotice")?;
        let now = Utc::now();
        let draft =
            notice::validate(request.into_inner(), now).map_err(AuditError::invalid)?;
        // The recipients first: an unknown tenant refuses the notice before anything is
        // stored, and a stored notice always has its deliveries.
        let mut ask = Request::new(ListNoticeRecipientsRequest {
            tenants: draft.tenants.clone(),
        });
        self.operator.attach(&mut ask)?;
        let recipients = self
            .accounts
            .clone()
            .list_notice_recipients(ask)
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => AuditError::NotFound(
                    "a tenant named in the notice does not exist (give ids or slugs)".into(),
                ),
                _ => AuditError::unavailable(format!(
                    "the account service cannot list recipients: {}",
                    status.message()
                )),
            })?
            .into_inner()
            .tenants;
        let stored = notice::insert(&self.db, &draft, &recipients)
            .await
            ?;
        self.wake.notify_one();
        // Every concerned tenant's log shows the notice (control 12.4.1).
        for tenant in &recipients {
            let record = AuditRecord::new(
                &tenant.tenant_id,
                Actor::operator(),
                actions::NOTICE_PUBLISHED,
            )
            .target(format!("notice/{}", stored.id))
            .detail("kind", draft.kind.as_str())
            .detail("title", draft.title.clone());
            if let Err(error) = self.audit.emit(record).await {
                tracing::error!(%error, tenant = %tenant.tenant_id, "notice.published not audited");
            }
        }
        tracing::info!(notice = %stored.id, kind = draft.kind.as_str(), tenants = recipients.len(), mails = stored.pending, "notice published");
        Ok(stored.to_proto(chrono_tz::UTC, true, now))
        })
        .await
    }

    async fn list_notices(
        &self,
        request: Request<pb::ListNoticesRequest>,
    ) -> Result<Response<pb::ListNoticesResponse>, Status> {
        respond(async move {
            let (reader, zone) = if OperatorToken::presented(request.metadata()) {
                self.operator.check(&request, "ListNotices")?;
                (notice::Reader::Operator, chrono_tz::UTC)
            } else {
                let caller = self
                    .checker
                    .admit(request.metadata(), Access::SignedIn)
                    .await?;
                let name = store::time_zone(&self.db, caller.tenant_id)
                    .await?
                    .unwrap_or_else(|| render::DEFAULT_TIME_ZONE.to_string());
                (
                    notice::Reader::Tenant(caller.tenant_id),
                    render::zone(&name).unwrap_or(chrono_tz::Asia::Tokyo),
                )
            };
            let request = request.into_inner();
            let page_size = kiroku_core::validate::page_size(request.page_size, 100, MAX_PAGE)
                .map_err(Status::from)?;
            let before = match non_empty(&request.page_token) {
                Some(token) => Some(
                    token
                        .parse::<i64>()
                        .map_err(|_| AuditError::invalid("page_token is not one we issued"))?,
                ),
                None => None,
            };
            let mut rows = notice::list(&self.db, reader, before, i64::from(page_size) + 1).await?;
            let more = rows.len() > page_size as usize;
            rows.truncate(page_size as usize);
            let now = Utc::now();
            let operator = matches!(reader, notice::Reader::Operator);
            Ok(pb::ListNoticesResponse {
                next_page_token: match (more, rows.last()) {
                    (true, Some(last)) => last.seq.to_string(),
                    _ => String::new(),
                },
                notices: rows
                    .iter()
                    .map(|row| row.to_proto(zone, operator, now))
                    .collect(),
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deny by default: every RPC of the service has exactly one access rule.
    #[test]
    fn control_9_2_2_every_method_has_an_access_rule() {
        let problems =
            kiroku_auth::auth::access_table_problems("kiroku.audit.v1.AuditService", METHODS);
        assert!(problems.is_empty(), "{problems:?}");
        let problems = kiroku_auth::auth::access_table_problems(
            "kiroku.audit.v1.NoticeService",
            NOTICE_METHODS,
        );
        assert!(problems.is_empty(), "{problems:?}");
    }
}
