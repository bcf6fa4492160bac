//! Access tokens: short-lived EdDSA (Ed25519) JWTs, and the opaque secrets (refresh
//! tokens, API keys, invitations) whose SHA-256 alone is stored.
//!
//! The account service signs; gateways and the account service verify with the public
//! key (from `GetSigningKeys`). Verification pins `alg` to EdDSA (no `none`, no HMAC
//! confusion) and checks issuer, audience and expiry; revocation is checked separately
//! in Redis ([`crate::auth::Revocations`]).

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::auth::Role;

pub const ISSUER: &str = "kiroku-account";
pub const AUDIENCE: &str = "kiroku";

/// Claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// User id.
    pub sub: Uuid,
    /// Tenant id: the only source of a request's tenant.
    pub tid: Uuid,
    /// Tenant slug (display only).
    pub tsl: String,
    pub role: Role,
    /// Whether this session passed TOTP.
    pub mfa: bool,
    /// Session (refresh-token family) id: logout and password change revoke it.
    pub sid: Uuid,
    pub email: String,
    pub iat: u64,
    pub exp: u64,
}

/// Why a token was refused; the message is safe to return to the caller.
#[derive(Debug, thiserror::Error)]
#[error("invalid access token: {0}")]
pub struct TokenRejected(pub String);

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// Identifier of a public key (`kid` header): the first 8 bytes of its SHA-256, hex.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// The account service's signing key.
pub struct Signer {
    encoding: EncodingKey,
    public_key: [u8; 32],
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads the PKCS#8 DER key at `path`, creating it (mode 0600) when the file does
    /// not exist. Every replica of the account service must use the same file (a
    /// Kubernetes secret in production).
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let der = match std::fs::read(path) {
            Ok(der) => der,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
                let der = SigningKey::from_bytes(&seed)
                    .to_pkcs8_der()
                    .map_err(|e| anyhow::anyhow!("encoding the signing key: {e}"))?
                    .as_bytes()
                    .to_vec();
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("creating {}", parent.display()))?;
                }
                write_private(path, &der)?;
                tracing::info!(path = %path.display(), "created a new token signing key");
                der
            }
            Err(error) => {
                return Err(error).with_context(|| format!("reading {}", path.display()));
            }
        };
        Self::from_pkcs8_der(&der).with_context(|| format!("signing key {}", path.display()))
    }

    pub fn from_pkcs8_der(der: &[u8]) -> anyhow::Result<Self> {
        let key = SigningKey::from_pkcs8_der(der)
            .map_err(|e| anyhow::anyhow!("not an Ed25519 PKCS#8 key: {e}"))?;
        let public_key = key.verifying_key().to_bytes();
        Ok(Self {
            encoding: EncodingKey::from_ed_der(der),
            key_id: key_id(&public_key),
            public_key,
        })
    }

    pub fn public_key(&self) -> &[u8; 32] {
        &self.public_key
    }
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.key_id.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }
}

/// Writes a secret file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Verifies access tokens against a set of public keys.
#[derive(Clone)]
pub struct Verifier {
    keys: Vec<(String, DecodingKey)>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<_> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("Verifier").field("keys", &ids).finish()
    }
}

impl Verifier {
    /// `public_keys`: raw 32-byte Ed25519 public keys.
    pub fn new<'a>(public_keys: impl IntoIterator<Item = &'a [u8]>) -> Self {
        // Only EdDSA: a token whose header says `none` or `HS256` is refused before
        // any key is tried.
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        Self {
            keys: public_keys
                .into_iter()
                .map(|key| (key_id(key), DecodingKey::from_ed_der(key)))
                .collect(),
            validation,
        }
    }

    pub fn verify(&self, token: &str) -> Result<Claims, TokenRejected> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|e| TokenRejected(e.to_string()))?;
        if header.alg != Algorithm::EdDSA {
            return Err(TokenRejected(format!(
                "algorithm {:?} not accepted",
                header.alg
            )));
        }
        let key = match &header.kid {
            Some(kid) => self.keys.iter().find(|(id, _)| id == kid),
            None => None,
        }
        .ok_or_else(|| TokenRejected("unknown signing key".into()))?;
        jsonwebtoken::decode::<Claims>(token, &key.1, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| TokenRejected(e.to_string()))
    }
}

/// An opaque secret handed to a client once: `<prefix>_<tenant>_<64 hex>`. The tenant
/// part lets the service open the right tenant's rows (row-level security) before it
/// looks the hash up; the random part carries 256 bits.
pub fn new_secret(prefix: &str, tenant: Uuid) -> anyhow::Result<String> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    Ok(format!(
        "{prefix}_{}_{}",
        tenant.simple(),
        hex::encode(random)
    ))
}

/// The tenant a secret of kind `prefix` belongs to, if it is well-formed.
pub fn secret_tenant(prefix: &str, secret: &str) -> Option<Uuid> {
    let mut parts = secret.trim().split('_');
    let (kind, tenant, random) = (parts.next()?, parts.next()?, parts.next()?);
    if kind != prefix || parts.next().is_some() || random.len() != 64 {
        return None;
    }
    Uuid::try_parse(tenant).ok()
}

/// What is stored for a secret: its SHA-256 (secrets are 256-bit random, so a fast
/// hash is enough; passwords are different and use argon2id).
pub fn secret_hash(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.trim().as_bytes()).to_vec()
}

/// Claims for a new access token.
#[allow(clippy::too_many_arguments)]
pub fn claims(
    tenant: Uuid,
    tenant_slug: &str,
    user: Uuid,
    email: &str,
    role: Role,
    mfa: bool,
    session: Uuid,
    ttl: Duration,
) -> Claims {
    let now = unix_now();
    Claims {
        iss: ISSUER.into(),
        aud: AUDIENCE.into(),
        sub: user,
        tid: tenant,
        tsl: tenant_slug.into(),
        role,
        mfa,
        sid: session,
        email: email.into(),
        iat: now,
        exp: now + ttl.as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        let der = SigningKey::from_bytes(&[7u8; 32])
            .to_pkcs8_der()
            .expect("der")
            .as_bytes()
            .to_vec();
        Signer::from_pkcs8_der(&der).expect("signer")
    }

    fn sample(ttl: Duration) -> Claims {
        claims(
            Uuid::new_v4(),
            "acme",
            Uuid::new_v4(),
            "ana@example.com",
            Role::Member,
            false,
            Uuid::new_v4(),
            ttl,
        )
    }

    fn b64(bytes: &[u8]) -> String {
        // URL-safe base64 without padding, as in JWTs
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |acc, b| (acc << 8) | *b as u32) << (8 * (3 - chunk.len()));
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn a_signed_token_verifies_and_carries_its_claims() {
        let signer = signer();
        let claims = sample(Duration::from_secs(60));
        let token = signer.sign(&claims).expect("sign");
        let verifier = Verifier::new([signer.public_key().as_slice()]);
        assert_eq!(verifier.verify(&token).expect("verify"), claims);
    }

    // Reliability promise 6 and control 9.2.3's token checks: each attack is refused.
    #[test]
    fn alg_none_is_refused() {
        let signer = signer();
        let verifier = Verifier::new([signer.public_key().as_slice()]);
        let claims = serde_json::to_vec(&sample(Duration::from_secs(60))).expect("json");
        let header = format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            signer.key_id()
        );
        let token = format!("{}.{}.", b64(header.as_bytes()), b64(&claims));
        assert!(verifier.verify(&token).is_err());
    }

    #[test]
    fn an_hmac_token_signed_with_the_public_key_is_refused() {
        let signer = signer();
        let verifier = Verifier::new([signer.public_key().as_slice()]);
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(signer.key_id().to_string());
        let token = jsonwebtoken::encode(
            &header,
            &sample(Duration::from_secs(60)),
            &EncodingKey::from_secret(signer.public_key()),
        )
        .expect("hmac token");
        assert!(verifier.verify(&token).is_err());
    }

    #[test]
    fn expired_wrong_audience_wrong_issuer_and_tampered_tokens_are_refused() {
        let signer = signer();
        let verifier = Verifier::new([signer.public_key().as_slice()]);

        let mut expired = sample(Duration::from_secs(60));
        expired.iat -= 3600;
        expired.exp = unix_now() - 60;
        assert!(
            verifier
                .verify(&signer.sign(&expired).expect("sign"))
                .is_err()
        );

        let mut audience = sample(Duration::from_secs(60));
        audience.aud = "someone-else".into();
        assert!(
            verifier
                .verify(&signer.sign(&audience).expect("sign"))
                .is_err()
        );

        let mut issuer = sample(Duration::from_secs(60));
        issuer.iss = "evil".into();
        assert!(
            verifier
                .verify(&signer.sign(&issuer).expect("sign"))
                .is_err()
        );

        // Change the payload (role: owner) and keep the signature.
        let token = signer.sign(&sample(Duration::from_secs(60))).expect("sign");
        let parts: Vec<&str> = token.split('.').collect();
        let mut forged = sample(Duration::from_secs(60));
        forged.role = Role::Owner;
        let payload = b64(&serde_json::to_vec(&forged).expect("json"));
        let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
        assert!(verifier.verify(&tampered).is_err());

        // A token signed by another key.
        let other = Signer::from_pkcs8_der(
            SigningKey::from_bytes(&[9u8; 32])
                .to_pkcs8_der()
                .expect("der")
                .as_bytes(),
        )
        .expect("signer");
        let foreign = other.sign(&sample(Duration::from_secs(60))).expect("sign");
        assert!(verifier.verify(&foreign).is_err());
    }

    #[test]
    fn secrets_carry_their_tenant_and_nothing_else_parses() {
        let tenant = Uuid::new_v4();
        let secret = new_secret("rt", tenant).expect("secret");
        assert_eq!(secret_tenant("rt", &secret), Some(tenant));
        assert_eq!(secret_tenant("kk", &secret), None);
        assert_eq!(secret_tenant("rt", "rt_x_y"), None);
        assert_eq!(secret_tenant("rt", &format!("{secret}_extra")), None);
        assert_eq!(secret_hash(&secret).len(), 32);
    }
}
