//! The head of each tenant's hash chain, anchored outside PostgreSQL (control 12.4.1).
//!
//! The chain alone shows an edit in the middle, but not the loss of its newest entries,
//! nor a chain whose hashes were all recomputed after an edit: both still verify. So
//! after every append the audit service records the tenant's newest `(seq, hash)` in
//! the NATS KV bucket `<root>-audit-heads`, with an HMAC under the anchor key
//! (`KIROKU_AUDIT_ANCHOR_KEY`, held by the audit service only). `VerifyChain` then
//! checks that the stored chain reaches the anchored seq and has the anchored hash
//! there. Someone who can change the database but not the audit service's key cannot
//! make a shortened or rewritten chain verify.
//!
//! The head only moves forward (compare-and-set on the KV revision), so replicas
//! appending for the same tenant never move it back. Without an anchor key the head is
//! recorded unsigned (fine for a laptop; production sets the key).

use async_nats::jetstream::kv;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;

/// The anchored head of one tenant's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Head {
    pub seq: i64,
    /// Hex SHA-256 of the entry at `seq`.
    pub hash: String,
    /// Hex HMAC-SHA256 of `tenant \n seq \n hash` under the anchor key; empty unsigned.
    #[serde(default)]
    pub mac: String,
}

/// The anchor key: 32 bytes, from 64 hex characters.
#[derive(Clone)]
pub struct AnchorKey([u8; 32]);

impl std::fmt::Debug for AnchorKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnchorKey(***)")
    }
}

impl AnchorKey {
    pub const ENV: &'static str = "KIROKU_AUDIT_ANCHOR_KEY";

    /// `KIROKU_AUDIT_ANCHOR_KEY`, else the file named by `KIROKU_AUDIT_ANCHOR_KEY_FILE`,
    /// else none (never a flag: flags show in `ps`).
    pub fn from_env() -> Result<Option<Self>, String> {
        kiroku_core::secret::from_env(Self::ENV)?
            .map(|secret| Self::from_hex(&secret.text))
            .transpose()
    }

    pub fn from_hex(text: &str) -> Result<Self, String> {
        let bytes = hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| format!("{} must be 64 hex characters (32 bytes)", Self::ENV))?;
        Ok(Self(bytes))
    }

    fn mac(&self, tenant: Uuid, seq: i64, hash: &str) -> String {
        let mut mac = <Hmac<Sha256>>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(format!("{tenant}\n{seq}\n{hash}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// What is wrong with an anchored head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorProblem {
    /// The head's MAC does not match (the anchor itself was tampered with).
    BadSignature,
    /// The bucket could not be read.
    Unavailable(String),
}

/// The anchors of one cluster.
#[derive(Debug, Clone)]
pub struct Anchors {
    heads: kv::Store,
    key: Option<AnchorKey>,
}

impl Anchors {
    pub fn new(heads: kv::Store, key: Option<AnchorKey>) -> Self {
        Self { heads, key }
    }

    fn sign(&self, tenant: Uuid, seq: i64, hash: &str) -> String {
        self.key
            .as_ref()
            .map(|key| key.mac(tenant, seq, hash))
            .unwrap_or_default()
    }

    /// Moves `tenant`'s head to `(seq, hash)` unless it is already at `seq` or later.
    pub async fn advance(&self, tenant: Uuid, seq: i64, hash: &[u8]) -> Result<(), String> {
        let key = tenant.simple().to_string();
        let hash = hex::encode(hash);
        let head = Head {
            seq,
            mac: self.sign(tenant, seq, &hash),
            hash,
        };
        let value = serde_json::to_vec(&head).map_err(|e| e.to_string())?;
        for _ in 0..10 {
            let current = self.heads.entry(&key).await.map_err(|e| e.to_string())?;
            let written = match current {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    let stored: Option<Head> = serde_json::from_slice(&entry.value).ok();
                    if stored.is_some_and(|s| s.seq >= seq) {
                        return Ok(());
                    }
                    self.heads
                        .update(&key, value.clone().into(), entry.revision)
                        .await
                        .is_ok()
                }
                _ => self.heads.create(&key, value.clone().into()).await.is_ok(),
            };
            if written {
                return Ok(());
            }
            // Another replica moved it meanwhile: read again.
        }
        Err(format!("the head of tenant {tenant} kept changing"))
    }

    /// `tenant`'s anchored head, its MAC checked; `None` before its first entry (or
    /// for a log older than anchoring).
    pub async fn head(&self, tenant: Uuid) -> Result<Option<Head>, AnchorProblem> {
        let entry = self
            .heads
            .get(tenant.simple().to_string())
            .await
            .map_err(|e| AnchorProblem::Unavailable(e.to_string()))?;
        let Some(bytes) = entry else { return Ok(None) };
        let head: Head = serde_json::from_slice(&bytes).map_err(|_| AnchorProblem::BadSignature)?;
        if self.key.is_some() && head.mac != self.sign(tenant, head.seq, &head.hash) {
            return Err(AnchorProblem::BadSignature);
        }
        Ok(Some(head))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mac_binds_tenant_seq_and_hash() {
        let key = AnchorKey::from_hex(&"ab".repeat(32)).expect("key");
        let tenant = Uuid::nil();
        let mac = key.mac(tenant, 7, "00ff");
        assert_eq!(mac.len(), 64);
        assert_ne!(mac, key.mac(tenant, 8, "00ff"));
        assert_ne!(mac, key.mac(tenant, 7, "00fe"));
        assert_ne!(mac, key.mac(Uuid::max(), 7, "00ff"));
        assert!(AnchorKey::from_hex("short").is_err());
        assert_eq!(format!("{key:?}"), "AnchorKey(***)");
    }
}
