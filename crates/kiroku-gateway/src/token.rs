//! Resume tokens: `v1.<tenant>.<session>.<mac>`, where `mac` is HMAC-SHA256 over the
//! tenant and session under the cluster's resume secret (shared by every gateway).
//!
//! The token proves that its holder opened the session; it carries no expiry of its
//! own because the resume window is measured from the client's *last* activity, which
//! only the worker knows: after `resume_window` without a client the worker closes the
//! session, and a resume then only replays the finals.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Signs and checks resume tokens.
#[derive(Clone)]
pub struct ResumeKeys {
    secret: Vec<u8>,
}

impl std::fmt::Debug for ResumeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeKeys(..)") // never print the secret
    }
}

/// The session a valid token names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeClaim {
    pub tenant: String,
    pub session: String,
}

impl ResumeKeys {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    fn mac(&self, tenant: &str, session: &str) -> HmacSha256 {
        // new_from_slice accepts keys of any length for HMAC.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(b"kiroku-resume-v1\0");
        mac.update(tenant.as_bytes());
        mac.update(b"\0");
        mac.update(session.as_bytes());
        mac
    }

    pub fn issue(&self, tenant: &str, session: &str) -> String {
        let tag = self.mac(tenant, session).finalize().into_bytes();
        format!("v1.{tenant}.{session}.{}", hex::encode(tag))
    }

    /// `None` for a malformed, foreign or forged token (the caller answers
    /// `INVALID_ARGUMENT` without saying which).
    pub fn verify(&self, token: &str) -> Option<ResumeClaim> {
        let mut parts = token.split('.');
        let (Some("v1"), Some(tenant), Some(session), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return None;
        };
        let tag = hex::decode(tag).ok()?;
        self.mac(tenant, session).verify_slice(&tag).ok()?;
        Some(ResumeClaim {
            tenant: tenant.to_string(),
            session: session.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_verify_and_forgeries_do_not() {
        let keys = ResumeKeys::new(b"secret".to_vec());
        let token = keys.issue("t1", "s1");
        assert_eq!(
            keys.verify(&token),
            Some(ResumeClaim {
                tenant: "t1".into(),
                session: "s1".into()
            })
        );
        // Another session's id with this session's MAC.
        let forged = token.replace(".s1.", ".s2.");
        assert_eq!(keys.verify(&forged), None);
        // Another cluster's secret.
        assert_eq!(ResumeKeys::new(b"other".to_vec()).verify(&token), None);
        for junk in [
            "",
            "v1",
            "v1.t1.s1",
            "v2.t1.s1.00",
            "v1.t1.s1.zz",
            &format!("{token}.x"),
        ] {
            assert_eq!(keys.verify(junk), None, "{junk:?}");
        }
    }
}
