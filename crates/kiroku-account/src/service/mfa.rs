//! TOTP multi-factor enrolment and confirmation.

use kiroku_core::audit::{AuditRecord, actions};
use kiroku_proto::account::v1 as pb;
use uuid::Uuid;

use crate::auth::Principal;
use crate::error::{AccountError, Result};
use crate::tokens;
use crate::totp;

use super::*;

impl State {
    pub(super) async fn enroll_mfa(
        &self,
        caller: Principal,
        request: pb::EnrollMfaRequest,
    ) -> Result<pb::EnrollMfaResponse> {
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let user = user_by_id(&mut tx, caller.subject).await?;
        if user.totp_enabled {
            return Err(AccountError::Precondition("mfa is already enrolled".into()));
        }
        self.check_current_password(&caller, &user, request.current_password)
            .await?;
        let secret = totp::new_secret().map_err(AccountError::Internal)?;
        let (uri, base32) =
            totp::enrollment(&secret, &user.email).map_err(AccountError::Internal)?;
        sqlx::query("UPDATE users SET totp_secret = $2, totp_last_step = NULL WHERE id = $1")
            .bind(user.id)
            .bind(&secret)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(pb::EnrollMfaResponse {
            otpauth_uri: uri,
            secret: base32,
        })
    }

    pub(super) async fn confirm_mfa(
        &self,
        caller: Principal,
        request: pb::ConfirmMfaRequest,
    ) -> Result<pb::TokenPair> {
        let mut tx = self.db.tenant_tx(caller.tenant_id).await?;
        let user = user_by_id(&mut tx, caller.subject).await?;
        if user.totp_enabled {
            return Err(AccountError::Precondition("mfa is already enrolled".into()));
        }
        let Some(secret) = user.totp_secret.clone() else {
            return Err(AccountError::Precondition("start with EnrollMfa".into()));
        };
        let Some(step) = totp::verify(
            &secret,
            &request.totp_code,
            tokens::unix_now(),
            user.totp_last_step,
        ) else {
            // The caller is signed in; what is wrong is the code.
            return Err(AccountError::Invalid("totp code wrong or expired".into()));
        };
        sqlx::query("UPDATE users SET totp_enabled = true, totp_last_step = $2 WHERE id = $1")
            .bind(user.id)
            .bind(step)
            .execute(&mut *tx)
            .await?;
        // Sessions opened before MFA end: from now on every session of this user
        // passed TOTP.
        let families = Self::revoke_user_families(&mut tx, user.id).await?;
        let tokens = self
            .issue(&mut tx, &user, &caller.tenant_slug, true, Uuid::new_v4())
            .await?;
        tx.commit().await?;
        self.revoke_sessions(caller.tenant_id, &families).await?;
        self.audit(AuditRecord::new(
            caller.tenant_token(),
            caller.actor(),
            actions::MFA_ENROLLED,
        ));
        Ok(tokens)
    }
}
