//! Encryption at rest (control 10.1.1): envelope encryption. Every tenant has its own
//! 256-bit data key; records (segments, label texts) are sealed with it by AES-256-GCM
//! with a fresh 96-bit nonce and associated data that binds the ciphertext to its tenant,
//! kind and record id (a sealed segment copied to another row or tenant does not open).
//! Data keys are stored only wrapped by the master key, through [`KeyProvider`], so a KMS
//! can take the place of [`LocalKeyProvider`]. Destroying a tenant's wrapped data key
//! makes every copy of its records unreadable (crypto-shredding).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use hmac::Mac as _;
use sha2::Digest as _;

/// Sealed-record format version (first byte).
const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Wrong key, tampered or truncated ciphertext, or associated data that does not
    /// match (another record's or tenant's ciphertext).
    #[error("decryption failed: the data was altered or belongs elsewhere")]
    Decrypt,
    #[error("unknown sealed-data version {0}")]
    Version(u8),
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("random number generator: {0}")]
    Random(String),
}

/// A tenant's data key. Zeroed when dropped.
pub struct DataKey([u8; 32]);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

fn random<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| CryptoError::Random(e.to_string()))?;
    Ok(bytes)
}

fn seal_with(cipher: &Aes256Gcm, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce = random::<NONCE_LEN>()?;
    let sealed = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)?;
    let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

fn open_with(cipher: &Aes256Gcm, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let (&version, rest) = sealed.split_first().ok_or(CryptoError::Decrypt)?;
    if version != VERSION {
        return Err(CryptoError::Version(version));
    }
    if rest.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Decrypt);
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
    cipher
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Decrypt)
}

impl DataKey {
    pub fn generate() -> Result<Self, CryptoError> {
        Ok(Self(random::<32>()?))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&self.0))
    }

    /// `version ‖ nonce ‖ AES-256-GCM(plaintext, aad)`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal_with(&self.cipher(), plaintext, aad)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        open_with(&self.cipher(), sealed, aad)
    }

    /// The key of the tenant's blind search index (HMAC-SHA256 under a key derived
    /// from the data key: erased with it).
    pub fn index_token(&self, term: &str) -> String {
        let mut derive =
            <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&self.0).expect("any length");
        derive.update(b"kiroku search index v1");
        let index_key = derive.finalize().into_bytes();
        let mut mac = <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(&index_key)
            .expect("any length");
        mac.update(term.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..16])
    }
}

/// Associated data of a record: `kiroku/v1/<tenant>/<kind>/<id>`.
pub fn aad(tenant: uuid::Uuid, kind: &str, id: &str) -> Vec<u8> {
    format!("kiroku/v1/{tenant}/{kind}/{id}").into_bytes()
}

/// Wraps and unwraps tenant data keys under a master key. Implement it for a KMS.
pub trait KeyProvider: Send + Sync + std::fmt::Debug {
    /// Names the master key a wrapped key was made with (stored beside it; rotation
    /// re-wraps every key whose id differs).
    fn key_id(&self) -> &str;
    fn wrap(&self, key: &DataKey, context: &[u8]) -> Result<Vec<u8>, CryptoError>;
    fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<DataKey, CryptoError>;
}

/// A master key held by this process: 32 bytes, given as 64 hex characters in a file
/// (`KIROKU_MASTER_KEY_FILE`) or the environment (`KIROKU_MASTER_KEY`).
pub struct LocalKeyProvider {
    id: String,
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for LocalKeyProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeyProvider")
            .field("key_id", &self.id)
            .finish_non_exhaustive()
    }
}

impl LocalKeyProvider {
    pub const ENV: &'static str = "KIROKU_MASTER_KEY";
    pub const FILE_ENV: &'static str = "KIROKU_MASTER_KEY_FILE";

    /// From 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, CryptoError> {
        let bytes = hex::decode(text.trim())
            .map_err(|_| CryptoError::MasterKey("not hexadecimal".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::MasterKey("must be 32 bytes (64 hex characters)".into()))?;
        // The id shows which key wrapped what, without revealing the key.
        let id = hex::encode(
            &sha2::Sha256::digest([b"kiroku master key id".as_slice(), &key].concat())[..8],
        );
        Ok(Self {
            id: format!("local:{id}"),
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key)),
        })
    }

    /// A new random master key, as hex (`kiroku up` writes one to `.run/master-key`).
    pub fn generate_hex() -> Result<String, CryptoError> {
        Ok(hex::encode(random::<32>()?))
    }

    /// From `KIROKU_MASTER_KEY` or the file `KIROKU_MASTER_KEY_FILE` names.
    pub fn from_env() -> Result<Self, CryptoError> {
        let secret =
            kiroku_core::secret::required_from_env(Self::ENV).map_err(CryptoError::MasterKey)?;
        Self::from_hex(&secret.text)
    }
}

impl KeyProvider for LocalKeyProvider {
    fn key_id(&self) -> &str {
        &self.id
    }
    fn wrap(&self, key: &DataKey, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        seal_with(&self.cipher, &key.0, context)
    }
    fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<DataKey, CryptoError> {
        let bytes = open_with(&self.cipher, wrapped, context)?;
        let key: [u8; 32] = bytes.try_into().map_err(|_| CryptoError::Decrypt)?;
        Ok(DataKey(key))
    }
}

/// The current master key and the ones it replaced: keys wrapped by a previous master
/// key still unwrap (until rotation re-wraps them under the current one).
#[derive(Debug)]
pub struct MasterKeys {
    current: LocalKeyProvider,
    previous: Vec<LocalKeyProvider>,
}

impl MasterKeys {
    pub const PREVIOUS_ENV: &'static str = "KIROKU_PREVIOUS_MASTER_KEY";

    pub fn new(current: LocalKeyProvider, previous: Vec<LocalKeyProvider>) -> Self {
        Self { current, previous }
    }

    /// The current key from `KIROKU_MASTER_KEY(_FILE)`, the previous one (if any) from
    /// `KIROKU_PREVIOUS_MASTER_KEY(_FILE)`.
    pub fn from_env() -> Result<Self, CryptoError> {
        let current = LocalKeyProvider::from_env()?;
        let previous = match kiroku_core::secret::from_env(Self::PREVIOUS_ENV)
            .map_err(CryptoError::MasterKey)?
        {
            Some(secret) => vec![LocalKeyProvider::from_hex(&secret.text)?],
            None => Vec::new(),
        };
        Ok(Self::new(current, previous))
    }
}

impl KeyProvider for MasterKeys {
    fn key_id(&self) -> &str {
        self.current.key_id()
    }
    fn wrap(&self, key: &DataKey, context: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.current.wrap(key, context)
    }
    fn unwrap(&self, wrapped: &[u8], context: &[u8]) -> Result<DataKey, CryptoError> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find_map(|key| key.unwrap(wrapped, context).ok())
            .ok_or(CryptoError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn master() -> LocalKeyProvider {
        LocalKeyProvider::from_hex(&"ab".repeat(32)).expect("key")
    }

    // control 10.1.1: a flipped ciphertext bit fails to decrypt.
    #[test]
    fn control_10_1_1_a_flipped_bit_or_foreign_context_does_not_decrypt() {
        let tenant = uuid::Uuid::new_v4();
        let key = DataKey::generate().expect("key");
        let aad = aad(tenant, "segment", "s1:1");
        let sealed = key.seal(b"the budget is approved", &aad).expect("seal");
        assert_eq!(
            key.open(&sealed, &aad).expect("open"),
            b"the budget is approved"
        );
        assert!(
            !sealed.windows(6).any(|w| w == b"budget"),
            "plaintext visible"
        );
        for bit in [8, 8 * 13, 8 * (sealed.len() - 1)] {
            let mut flipped = sealed.clone();
            flipped[bit / 8] ^= 1;
            assert_eq!(
                key.open(&flipped, &aad),
                Err(CryptoError::Decrypt),
                "bit {bit}"
            );
        }
        let other_record = super::aad(tenant, "segment", "s1:2");
        assert_eq!(key.open(&sealed, &other_record), Err(CryptoError::Decrypt));
        let other_tenant = super::aad(uuid::Uuid::new_v4(), "segment", "s1:1");
        assert_eq!(key.open(&sealed, &other_tenant), Err(CryptoError::Decrypt));
        let other_key = DataKey::generate().expect("key");
        assert_eq!(other_key.open(&sealed, &aad), Err(CryptoError::Decrypt));
        assert_eq!(key.open(&sealed[..10], &aad), Err(CryptoError::Decrypt));
        // Two seals of the same text differ (fresh nonces).
        assert_ne!(
            key.seal(b"x", &aad).expect("a"),
            key.seal(b"x", &aad).expect("b")
        );
    }

    #[test]
    fn data_keys_are_wrapped_by_the_master_key_only() {
        let master = master();
        let key = DataKey::generate().expect("key");
        let wrapped = master.wrap(&key, b"tenant-a").expect("wrap");
        let back = master.unwrap(&wrapped, b"tenant-a").expect("unwrap");
        assert_eq!(back.0, key.0);
        assert!(master.unwrap(&wrapped, b"tenant-b").is_err());
        let other = LocalKeyProvider::from_hex(&"cd".repeat(32)).expect("key");
        assert!(other.unwrap(&wrapped, b"tenant-a").is_err());
        assert_ne!(other.key_id(), master.key_id());
        assert!(!format!("{master:?}").contains("abab"));
        assert!(LocalKeyProvider::from_hex("abcd").is_err());
        assert!(LocalKeyProvider::from_hex(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn a_previous_master_key_still_unwraps_until_rotation() {
        let old = master();
        let key = DataKey::generate().expect("key");
        let wrapped = old.wrap(&key, b"t").expect("wrap");
        let new = LocalKeyProvider::from_hex(&"cd".repeat(32)).expect("new");
        let both = MasterKeys::new(new, vec![master()]);
        let back = both.unwrap(&wrapped, b"t").expect("via the previous key");
        assert_eq!(back.0, key.0);
        let rewrapped = both.wrap(&back, b"t").expect("rewrap");
        let only_new = LocalKeyProvider::from_hex(&"cd".repeat(32)).expect("new");
        assert!(only_new.unwrap(&rewrapped, b"t").is_ok());
        assert!(only_new.unwrap(&wrapped, b"t").is_err());
    }

    #[test]
    fn index_tokens_are_stable_per_key_and_differ_across_keys() {
        let (a, b) = (
            DataKey::generate().expect("a"),
            DataKey::generate().expect("b"),
        );
        assert_eq!(a.index_token("budget"), a.index_token("budget"));
        assert_ne!(a.index_token("budget"), a.index_token("budgets"));
        assert_ne!(a.index_token("budget"), b.index_token("budget"));
    }
}
