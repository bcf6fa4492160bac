//! Recording consent: a tenant's policy, a meeting's participants and their answers.

use chrono::{DateTime, Utc};
use kiroku_core::audit::{AuditRecord, actions};
use kiroku_proto::account::v1 as pb;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{AccountError, Result};

use super::*;

impl State {
    pub(super) async fn set_consent_policy(
        &self,
        caller: Principal,
        request: pb::SetConsentPolicyRequest,
    ) -> Result<pb::SetConsentPolicyResponse> {
        let policy = match pb::ConsentPolicy::try_from(request.policy) {
            Ok(policy @ (pb::ConsentPolicy::None | pb::ConsentPolicy::AllParticipants)) => policy,
            _ => {
                return Err(AccountError::Invalid(
                    "policy must be NONE or ALL_PARTICIPANTS".into(),
                ));
            }
        };
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        sqlx::query("UPDATE tenants SET consent_policy = $2 WHERE id = $1")
            .bind(caller.tenant_id)
            .bind(policy as i16)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.audit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::CONSENT_POLICY_CHANGED,
            )
            .detail("policy", policy.as_str_name()),
        );
        Ok(pb::SetConsentPolicyResponse {
            policy: policy as i32,
        })
    }

    pub(super) async fn consent_status(
        tx: &mut Transaction<'static, Postgres>,
        tenant: Uuid,
        meeting: &str,
    ) -> Result<pb::ConsentStatus> {
        let policy: i16 = sqlx::query_scalar("SELECT consent_policy FROM tenants WHERE id = $1")
            .bind(tenant)
            .fetch_one(&mut **tx)
            .await?;
        let participants: Vec<String> = sqlx::query_scalar(
            "SELECT participant FROM meeting_participants WHERE meeting_id = $1 ORDER BY participant",
        )
        .bind(meeting)
        .fetch_all(&mut **tx)
        .await?;
        let consents: Vec<(String, String, DateTime<Utc>, String)> = sqlx::query_as(
            "SELECT participant, method, given_at, recorded_by FROM consents
             WHERE meeting_id = $1 ORDER BY given_at",
        )
        .bind(meeting)
        .fetch_all(&mut **tx)
        .await?;
        let missing: Vec<String> = participants
            .iter()
            .filter(|p| !consents.iter().any(|(who, ..)| who == *p))
            .cloned()
            .collect();
        let policy =
            pb::ConsentPolicy::try_from(i32::from(policy)).unwrap_or(pb::ConsentPolicy::None);
        let satisfied = match policy {
            pb::ConsentPolicy::AllParticipants => !participants.is_empty() && missing.is_empty(),
            _ => true,
        };
        Ok(pb::ConsentStatus {
            meeting_id: meeting.to_string(),
            policy: policy as i32,
            satisfied,
            participants,
            consents: consents
                .into_iter()
                .map(
                    |(participant, method, given_at, recorded_by)| pb::ConsentRecord {
                        participant,
                        method,
                        given_at: Some(timestamp(given_at)),
                        recorded_by,
                    },
                )
                .collect(),
            missing,
        })
    }

    pub(super) async fn set_participants(
        &self,
        caller: Principal,
        request: pb::SetMeetingParticipantsRequest,
    ) -> Result<pb::ConsentStatus> {
        let meeting = check_meeting_id(&request.meeting_id)?;
        if request.participants.len() > 100 {
            return Err(AccountError::Invalid(
                "at most 100 participants per meeting".into(),
            ));
        }
        let participants = request
            .participants
            .iter()
            .map(|p| check_text("participant", p, 200))
            .collect::<Result<Vec<_>>>()?;
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        // Consent cannot be "satisfied" by dropping whoever has not given it: removing a
        // participant without consent takes an admin, and every removal is audited.
        let before = Self::consent_status(&mut tx, caller.tenant_id, &meeting).await?;
        let removed: Vec<&String> = before
            .participants
            .iter()
            .filter(|p| !participants.contains(p))
            .collect();
        let removed_without_consent: Vec<&String> = removed
            .iter()
            .copied()
            .filter(|p| !before.consents.iter().any(|c| &c.participant == *p))
            .collect();
        if !removed_without_consent.is_empty()
            && crate::auth::authorize(&caller, crate::auth::Access::Admin).is_err()
        {
            return Err(AccountError::Denied(format!(
                "removing participants who have not consented ({}) needs an admin with MFA",
                removed_without_consent
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let removed = removed
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query("DELETE FROM meeting_participants WHERE meeting_id = $1")
            .bind(&meeting)
            .execute(&mut *tx)
            .await?;
        for participant in &participants {
            sqlx::query(
                "INSERT INTO meeting_participants (tenant_id, meeting_id, participant)
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(caller.tenant_id)
            .bind(&meeting)
            .bind(participant)
            .execute(&mut *tx)
            .await?;
        }
        let status = Self::consent_status(&mut tx, caller.tenant_id, &meeting).await?;
        tx.commit().await?;
        self.audit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::CONSENT_PARTICIPANTS_SET,
            )
            .target(format!("meeting/{meeting}"))
            .detail("participants", participants.len().to_string())
            .detail("removed", removed),
        );
        Ok(status)
    }

    pub(super) async fn record_consent(
        &self,
        caller: Principal,
        request: pb::RecordConsentRequest,
    ) -> Result<pb::ConsentStatus> {
        let meeting = check_meeting_id(&request.meeting_id)?;
        let participant = check_text("participant", &request.participant, 200)?;
        let method = check_text("consent method", &request.method, 40)?;
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        // The limit applies to new participants only.
        let declared: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM meeting_participants WHERE meeting_id = $1
             AND NOT EXISTS (SELECT 1 FROM meeting_participants
                             WHERE meeting_id = $1 AND participant = $2)",
        )
        .bind(&meeting)
        .bind(&participant)
        .fetch_one(&mut *tx)
        .await?;
        if declared >= 100 {
            return Err(AccountError::Invalid(
                "at most 100 participants per meeting".into(),
            ));
        }
        // Consent makes the person a participant of the meeting.
        sqlx::query(
            "INSERT INTO meeting_participants (tenant_id, meeting_id, participant)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(caller.tenant_id)
        .bind(&meeting)
        .bind(&participant)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO consents (id, tenant_id, meeting_id, participant, method, recorded_by)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(Uuid::new_v4())
        .bind(caller.tenant_id)
        .bind(&meeting)
        .bind(&participant)
        .bind(&method)
        .bind(caller.subject.to_string())
        .execute(&mut *tx)
        .await?;
        let status = Self::consent_status(&mut tx, caller.tenant_id, &meeting).await?;
        tx.commit().await?;
        self.audit(
            AuditRecord::new(
                caller.tenant_token(),
                caller.actor(),
                actions::CONSENT_GIVEN,
            )
            .target(format!("meeting/{meeting}"))
            .detail("participant", participant)
            .detail("method", method),
        );
        Ok(status)
    }

    /// An empty meeting id asks "may I stream without naming a meeting?": yes only
    /// under the NONE policy.
    pub(super) async fn check_consent(
        &self,
        caller: Principal,
        request: pb::CheckConsentRequest,
    ) -> Result<pb::ConsentStatus> {
        let meeting = if request.meeting_id.trim().is_empty() {
            String::new()
        } else {
            check_meeting_id(&request.meeting_id)?
        };
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let status = Self::consent_status(&mut tx, caller.tenant_id, &meeting).await?;
        tx.commit().await?;
        Ok(status)
    }
}
