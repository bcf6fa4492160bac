//! `kiroku.audit.v1.AuditService`: tenant admins (with MFA) read, verify and export
//! their own tenant's log.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use kiroku_account::auth::{Access, Principal};
use kiroku_account::checker::Checker;
use kiroku_core::db::Db;
use kiroku_proto::audit::v1 as pb;
use kiroku_proto::audit::v1::audit_service_server::AuditService;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::render;
use crate::store::{self, Query, Stored};

/// Every method: admins and owners with MFA (the audit log is admin information).
pub const METHODS: &[(&str, Access)] = &[
    ("ListEvents", Access::Admin),
    ("VerifyChain", Access::Admin),
    ("ExportEvents", Access::Admin),
    ("SetTimeZone", Access::Admin),
];

/// Largest page.
pub const MAX_PAGE: u32 = 1000;
/// Most entries in one export.
pub const MAX_EXPORT: usize = 100_000;

#[derive(Clone)]
pub struct Audit {
    db: Db,
    checker: Arc<Checker>,
}

impl std::fmt::Debug for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Audit").finish_non_exhaustive()
    }
}

fn internal(error: sqlx::Error) -> Status {
    tracing::error!(%error, "database error");
    Status::internal("internal error")
}

fn time(value: Option<prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    value.and_then(|t| DateTime::<Utc>::from_timestamp(t.seconds, t.nanos.max(0) as u32))
}

fn non_empty(value: &str) -> Option<String> {
    let value = value.trim();
    (!value.is_empty()).then(|| value.to_string())
}

impl Audit {
    pub fn new(db: Db, checker: Arc<Checker>) -> Self {
        Self { db, checker }
    }

    async fn caller<T>(&self, request: &Request<T>, method: &str) -> Result<Principal, Status> {
        let rule = METHODS
            .iter()
            .find(|(name, _)| *name == method)
            .map(|(_, rule)| *rule)
            .ok_or_else(|| Status::permission_denied("method not allowed"))?;
        self.checker.admit(request.metadata(), rule).await
    }

    /// The zone to render in: the request's, else the tenant's, else Asia/Tokyo.
    async fn zone(&self, tenant: Uuid, requested: &str) -> Result<(chrono_tz::Tz, String), Status> {
        let name = match non_empty(requested) {
            Some(name) => name,
            None => store::time_zone(&self.db, tenant)
                .await
                .map_err(internal)?
                .unwrap_or_else(|| render::DEFAULT_TIME_ZONE.to_string()),
        };
        let zone = render::zone(&name).map_err(Status::invalid_argument)?;
        Ok((zone, name))
    }

    fn query(filter: Option<pb::Filter>) -> Result<Query, Status> {
        let filter = filter.unwrap_or_default();
        let query = Query {
            from: time(filter.from),
            to: time(filter.to),
            actor_id: non_empty(&filter.actor_id),
            action: non_empty(&filter.action),
            meeting_id: non_empty(&filter.meeting_id),
            before_seq: None,
            limit: 100,
        };
        if let (Some(from), Some(to)) = (query.from, query.to)
            && from >= to
        {
            return Err(Status::invalid_argument(
                "filter: `from` must be before `to`",
            ));
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
        let caller = self.caller(&request, "ListEvents").await?;
        let request = request.into_inner();
        let (zone, zone_name) = self.zone(caller.tenant_id, &request.time_zone).await?;
        let mut query = Self::query(request.filter)?;
        let page_size = match request.page_size {
            0 => 100,
            n if n > MAX_PAGE => {
                return Err(Status::invalid_argument(format!(
                    "page_size is at most {MAX_PAGE}"
                )));
            }
            n => n,
        };
        query.limit = i64::from(page_size) + 1;
        if let Some(token) = non_empty(&request.page_token) {
            query.before_seq = Some(
                token
                    .parse()
                    .map_err(|_| Status::invalid_argument("page_token is not one we issued"))?,
            );
        }
        let mut rows = store::list(&self.db, caller.tenant_id, &query)
            .await
            .map_err(internal)?;
        let more = rows.len() > page_size as usize;
        rows.truncate(page_size as usize);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => last.entry.seq.to_string(),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListEventsResponse {
            entries: rows.iter().map(|row| Self::entry(row, zone)).collect(),
            next_page_token,
            time_zone: zone_name,
        }))
    }

    async fn verify_chain(
        &self,
        request: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::VerifyChainResponse>, Status> {
        let caller = self.caller(&request, "VerifyChain").await?;
        let (checked, broken) = store::verify(&self.db, caller.tenant_id)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::VerifyChainResponse {
            intact: broken.is_none(),
            entries_checked: checked,
            first_broken_seq: broken.as_ref().map_or(0, |b| b.seq as u64),
            problem: broken.map(|b| b.problem).unwrap_or_default(),
        }))
    }

    async fn export_events(
        &self,
        request: Request<pb::ExportEventsRequest>,
    ) -> Result<Response<pb::ExportEventsResponse>, Status> {
        let caller = self.caller(&request, "ExportEvents").await?;
        let request = request.into_inner();
        let format = pb::ExportFormat::try_from(request.format)
            .ok()
            .filter(|f| *f != pb::ExportFormat::Unspecified)
            .ok_or_else(|| Status::invalid_argument("format must be CSV or JSON"))?;
        let (zone, _) = self.zone(caller.tenant_id, &request.time_zone).await?;
        let mut query = Self::query(request.filter)?;
        query.limit = 1000;
        let mut entries = Vec::new();
        loop {
            let rows = store::list(&self.db, caller.tenant_id, &query)
                .await
                .map_err(internal)?;
            let Some(last) = rows.last() else { break };
            query.before_seq = Some(last.entry.seq);
            entries.extend(rows.iter().map(|row| Self::entry(row, zone)));
            if entries.len() > MAX_EXPORT {
                return Err(Status::out_of_range(format!(
                    "more than {MAX_EXPORT} entries: narrow the time range"
                )));
            }
        }
        // Oldest first reads naturally in a file.
        entries.reverse();
        let (data, content_type) = match format {
            pb::ExportFormat::Csv => (
                render::csv(&entries).map_err(|e| {
                    tracing::error!(error = %e, "csv");
                    Status::internal("internal error")
                })?,
                "text/csv",
            ),
            _ => (render::json(&entries), "application/json"),
        };
        Ok(Response::new(pb::ExportEventsResponse {
            data,
            entries: entries.len() as u64,
            content_type: content_type.into(),
        }))
    }

    async fn set_time_zone(
        &self,
        request: Request<pb::SetTimeZoneRequest>,
    ) -> Result<Response<pb::SetTimeZoneResponse>, Status> {
        let caller = self.caller(&request, "SetTimeZone").await?;
        let name = request.into_inner().time_zone.trim().to_string();
        render::zone(&name).map_err(Status::invalid_argument)?;
        store::set_time_zone(&self.db, caller.tenant_id, &name)
            .await
            .map_err(internal)?;
        Ok(Response::new(pb::SetTimeZoneResponse { time_zone: name }))
    }
}
