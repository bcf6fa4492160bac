//! The backup format (control 12.3.1): what `kiroku admin backup` writes and `kiroku
//! admin restore` reads. A backup is a directory:
//!
//! ```text
//! manifest.json       what is inside, each file's size and SHA-256 (of its ciphertext)
//! manifest.json.mac   HMAC-SHA256 of manifest.json under the backup key
//! postgres.sql.kbk    the services' PostgreSQL schemas (pg_dump, plain SQL), encrypted
//! nats.json.kbk       the JetStream stream and bucket configurations, encrypted
//! ```
//!
//! Files are encrypted with AES-256-GCM in 64 KiB chunks (the STREAM construction: a
//! nonce of a random per-file prefix, the chunk counter and a last-chunk flag; the file's
//! name as associated data), so a file of any size is sealed without holding it in
//! memory, and a changed, reordered, truncated or swapped chunk fails. The manifest is
//! authenticated by its MAC; with every file's SHA-256 in it, `restore` checks the whole
//! backup before it touches anything.
//!
//! The backup key (`KIROKU_BACKUP_KEY` or `KIROKU_BACKUP_KEY_FILE`, 64 hex characters)
//! is not the master key: backups can be kept by other people than the ones who run
//! the storage service. Tenant data inside the dump stays sealed with the tenants' data
//! keys as well.

use std::io::{self, Read, Write};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use chrono::{DateTime, Utc};
use hmac::Mac as _;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The format this build writes and reads.
pub const FORMAT: &str = "kiroku-backup/1";
pub const MANIFEST: &str = "manifest.json";
pub const MANIFEST_MAC: &str = "manifest.json.mac";
pub const POSTGRES: &str = "postgres.sql.kbk";
pub const NATS: &str = "nats.json.kbk";

const MAGIC: &[u8; 4] = b"KBK1";
const PREFIX_LEN: usize = 7;
/// Plaintext bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const TAG_LEN: usize = 16;

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("backup key: {0}")]
    Key(String),
    /// The backup was changed, truncated, or made with another key.
    #[error("{0}")]
    Tampered(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The backup key, and the two keys derived from it (encryption, manifest MAC).
pub struct BackupKey {
    id: String,
    cipher: Aes256Gcm,
    mac: [u8; 32],
}

impl std::fmt::Debug for BackupKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupKey").field("id", &self.id).finish()
    }
}

fn derive(key: &[u8; 32], purpose: &str) -> [u8; 32] {
    let mut mac = <HmacSha256 as hmac::Mac>::new_from_slice(key).expect("any key length");
    mac.update(purpose.as_bytes());
    mac.finalize().into_bytes().into()
}

impl BackupKey {
    pub const ENV: &'static str = "KIROKU_BACKUP_KEY";

    /// From 64 hex characters (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Result<Self, BackupError> {
        let bytes =
            hex::decode(text.trim()).map_err(|_| BackupError::Key("not hexadecimal".into()))?;
        let key: [u8; 32] = bytes
            .try_into()
            .map_err(|_| BackupError::Key("must be 32 bytes (64 hex characters)".into()))?;
        let id = hex::encode(
            &sha2::Sha256::digest([b"kiroku backup key id".as_slice(), &key].concat())[..8],
        );
        let enc = derive(&key, "kiroku/v1/backup/encryption");
        Ok(Self {
            id,
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&enc)),
            mac: derive(&key, "kiroku/v1/backup/manifest-mac"),
        })
    }

    /// From `KIROKU_BACKUP_KEY` or the file `KIROKU_BACKUP_KEY_FILE` names.
    pub fn from_env() -> Result<Self, BackupError> {
        let secret = kiroku_core::secret::required_from_env(Self::ENV).map_err(BackupError::Key)?;
        Self::from_hex(&secret.text)
    }

    /// Names the key without revealing it (in the manifest, so a restore with another
    /// key says so).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The manifest's MAC, hex.
    pub fn mac(&self, manifest: &[u8]) -> String {
        let mut mac = <HmacSha256 as hmac::Mac>::new_from_slice(&self.mac).expect("any key length");
        mac.update(manifest);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Checks the manifest against its MAC (constant time) and parses it.
    pub fn verify_manifest(&self, manifest: &[u8], mac_hex: &str) -> Result<Manifest, BackupError> {
        let parsed: Option<Manifest> = serde_json::from_slice(manifest).ok();
        let expected = hex::decode(mac_hex.trim()).unwrap_or_default();
        let mut mac = <HmacSha256 as hmac::Mac>::new_from_slice(&self.mac).expect("any key length");
        mac.update(manifest);
        if mac.verify_slice(&expected).is_err() {
            return Err(BackupError::Tampered(match parsed {
                Some(m) if m.key_id != self.id => format!(
                    "this backup was made with backup key {}, not with this one ({}): set the key it was made with",
                    m.key_id, self.id
                ),
                _ => format!("{MANIFEST} does not match its MAC: the backup was altered"),
            }));
        }
        let manifest =
            parsed.ok_or_else(|| BackupError::Invalid(format!("{MANIFEST} does not parse")))?;
        if manifest.format != FORMAT {
            return Err(BackupError::Invalid(format!(
                "backup format {:?}: this build reads {FORMAT:?}",
                manifest.format
            )));
        }
        Ok(manifest)
    }

    fn nonce(prefix: &[u8; PREFIX_LEN], counter: u32, last: bool) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..PREFIX_LEN].copy_from_slice(prefix);
        nonce[PREFIX_LEN..PREFIX_LEN + 4].copy_from_slice(&counter.to_be_bytes());
        nonce[11] = u8::from(last);
        nonce
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub created_at: DateTime<Utc>,
    /// The region of the place the backup was written to (control 6.1.3).
    pub region: String,
    pub key_id: String,
    /// The PostgreSQL schemas in `postgres.sql.kbk`, by service (`account`, `audit`,
    /// `storage`).
    pub schemas: std::collections::BTreeMap<String, String>,
    /// The NATS cluster root whose configurations `nats.json.kbk` holds.
    pub nats_root: String,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    /// Size and SHA-256 of the file as stored (ciphertext).
    pub bytes: u64,
    pub sha256: String,
    /// Size of the plaintext.
    pub plain_bytes: u64,
}

/// Seals everything written to it into `inner`, chunk by chunk; [`SealWriter::finish`]
/// writes the last chunk (without it the file reads as truncated).
pub struct SealWriter<'k, W: Write> {
    key: &'k BackupKey,
    aad: Vec<u8>,
    prefix: [u8; PREFIX_LEN],
    counter: u32,
    buffer: Vec<u8>,
    inner: W,
    plain_bytes: u64,
}

impl<W: Write> std::fmt::Debug for SealWriter<'_, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealWriter").finish_non_exhaustive()
    }
}

impl<'k, W: Write> SealWriter<'k, W> {
    pub fn new(key: &'k BackupKey, name: &str, mut inner: W) -> Result<Self, BackupError> {
        let mut prefix = [0u8; PREFIX_LEN];
        getrandom::fill(&mut prefix).map_err(|e| BackupError::Key(format!("random: {e}")))?;
        inner.write_all(MAGIC)?;
        inner.write_all(&prefix)?;
        Ok(Self {
            key,
            aad: name.as_bytes().to_vec(),
            prefix,
            counter: 0,
            buffer: Vec::with_capacity(CHUNK),
            inner,
            plain_bytes: 0,
        })
    }

    fn seal_chunk(&mut self, last: bool) -> io::Result<()> {
        let nonce = BackupKey::nonce(&self.prefix, self.counter, last);
        let sealed = self
            .key
            .cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &self.buffer,
                    aad: &self.aad,
                },
            )
            .map_err(|_| io::Error::other("encryption failed"))?;
        self.inner.write_all(&(sealed.len() as u32).to_be_bytes())?;
        self.inner.write_all(&sealed)?;
        self.buffer.clear();
        self.counter = self
            .counter
            .checked_add(1)
            .ok_or_else(|| io::Error::other("file too large for one backup stream"))?;
        Ok(())
    }

    /// Writes the last chunk; returns the inner writer and the plaintext size.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.seal_chunk(true)?;
        self.inner.flush()?;
        Ok((self.inner, self.plain_bytes))
    }
}

impl<W: Write> Write for SealWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&data[..n]);
        self.plain_bytes += n as u64;
        if self.buffer.len() == CHUNK {
            self.seal_chunk(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads what [`SealWriter`] wrote; any altered, reordered, missing or foreign chunk is
/// an `InvalidData` error, and so is a file that ends before its last chunk.
pub struct OpenReader<'k, R: Read> {
    key: &'k BackupKey,
    aad: Vec<u8>,
    prefix: [u8; PREFIX_LEN],
    counter: u32,
    plain: Vec<u8>,
    at: usize,
    done: bool,
    inner: R,
}

impl<R: Read> std::fmt::Debug for OpenReader<'_, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenReader").finish_non_exhaustive()
    }
}

fn tampered(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

impl<'k, R: Read> OpenReader<'k, R> {
    pub fn new(key: &'k BackupKey, name: &str, mut inner: R) -> io::Result<Self> {
        let mut header = [0u8; 4 + PREFIX_LEN];
        inner
            .read_exact(&mut header)
            .map_err(|_| tampered("not a Kiroku backup file (too short)"))?;
        if &header[..4] != MAGIC {
            return Err(tampered("not a Kiroku backup file"));
        }
        let mut prefix = [0u8; PREFIX_LEN];
        prefix.copy_from_slice(&header[4..]);
        Ok(Self {
            key,
            aad: name.as_bytes().to_vec(),
            prefix,
            counter: 0,
            plain: Vec::new(),
            at: 0,
            done: false,
            inner,
        })
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let mut len = [0u8; 4];
        self.inner
            .read_exact(&mut len)
            .map_err(|_| tampered("the file ends before its last chunk (truncated)"))?;
        let len = u32::from_be_bytes(len) as usize;
        if !(TAG_LEN..=CHUNK + TAG_LEN).contains(&len) {
            return Err(tampered("a chunk has an impossible length"));
        }
        let mut sealed = vec![0u8; len];
        self.inner
            .read_exact(&mut sealed)
            .map_err(|_| tampered("the file ends inside a chunk (truncated)"))?;
        for last in [false, true] {
            let nonce = BackupKey::nonce(&self.prefix, self.counter, last);
            if let Ok(plain) = self.key.cipher.decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &sealed,
                    aad: &self.aad,
                },
            ) {
                self.plain = plain;
                self.at = 0;
                self.counter += 1;
                if last {
                    self.done = true;
                    let mut rest = [0u8; 1];
                    if self.inner.read(&mut rest)? != 0 {
                        return Err(tampered("data after the last chunk"));
                    }
                }
                return Ok(());
            }
        }
        Err(tampered(
            "a chunk does not decrypt: the file was altered or made with another key",
        ))
    }
}

impl<R: Read> Read for OpenReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.at == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.plain.len() - self.at);
        out[..n].copy_from_slice(&self.plain[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through (the manifest's size and
/// SHA-256 of each stored file).
pub struct HashingWriter<W: Write> {
    pub inner: W,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<W: Write> std::fmt::Debug for HashingWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashingWriter").finish_non_exhaustive()
    }
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: sha2::Sha256::new(),
            bytes: 0,
        }
    }

    /// (bytes, SHA-256 hex).
    pub fn finish(self) -> (W, u64, String) {
        (self.inner, self.bytes, hex::encode(self.hasher.finalize()))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.hasher.update(&data[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The size and SHA-256 of a stored file.
pub fn file_digest(path: &std::path::Path) -> io::Result<(u64, String)> {
    let mut file = std::fs::File::open(path)?;
    let mut hashing = HashingWriter::new(io::sink());
    io::copy(&mut file, &mut hashing)?;
    let (_, bytes, sha) = hashing.finish();
    Ok((bytes, sha))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> BackupKey {
        BackupKey::from_hex(&hex::encode([byte; 32])).expect("key")
    }

    fn seal(key: &BackupKey, name: &str, data: &[u8]) -> Vec<u8> {
        let mut writer = SealWriter::new(key, name, Vec::new()).expect("writer");
        writer.write_all(data).expect("write");
        writer.finish().expect("finish").0
    }

    fn open(key: &BackupKey, name: &str, sealed: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        OpenReader::new(key, name, sealed)?.read_to_end(&mut out)?;
        Ok(out)
    }

    // control 12.3.1: a backup file decrypts only whole, unaltered, under its name and key.
    #[test]
    fn control_12_3_1_backup_files_round_trip_and_refuse_any_change() {
        let k = key(7);
        let data: Vec<u8> = (0..(3 * CHUNK + 123)).map(|i| (i % 251) as u8).collect();
        for size in [0, 1, CHUNK, data.len()] {
            let sealed = seal(&k, POSTGRES, &data[..size]);
            assert_eq!(open(&k, POSTGRES, &sealed).expect("open"), &data[..size]);
        }
        let sealed = seal(&k, POSTGRES, &data);
        assert!(
            !sealed.windows(64).any(|w| w == &data[1000..1064]),
            "plaintext visible"
        );
        // A flipped bit in any chunk.
        for at in [20, CHUNK + 100, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[at] ^= 1;
            assert!(open(&k, POSTGRES, &bad).is_err(), "flip at {at} accepted");
        }
        // Truncated at a chunk boundary (a whole last chunk missing) or inside one.
        let first_chunk = 4 + PREFIX_LEN + 4 + CHUNK + TAG_LEN;
        assert!(open(&k, POSTGRES, &sealed[..first_chunk]).is_err());
        assert!(open(&k, POSTGRES, &sealed[..sealed.len() - 5]).is_err());
        // Extra bytes, another file's name, another key.
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(open(&k, POSTGRES, &longer).is_err());
        assert!(open(&k, NATS, &sealed).is_err());
        assert!(open(&key(8), POSTGRES, &sealed).is_err());
        // Chunks swapped.
        let mut swapped = sealed.clone();
        let (a, b) = (4 + PREFIX_LEN, 4 + PREFIX_LEN + 4 + CHUNK + TAG_LEN);
        let chunk = b - a;
        let first = swapped[a..b].to_vec();
        let second = swapped[b..b + chunk].to_vec();
        swapped[a..b].copy_from_slice(&second);
        swapped[b..b + chunk].copy_from_slice(&first);
        assert!(open(&k, POSTGRES, &swapped).is_err());
    }

    #[test]
    fn control_12_3_1_the_manifest_is_authenticated_and_names_its_key() {
        let k = key(1);
        let manifest = Manifest {
            format: FORMAT.into(),
            created_at: Utc::now(),
            region: "jp".into(),
            key_id: k.id().into(),
            schemas: [("account".to_string(), "account".to_string())].into(),
            nats_root: "kiroku".into(),
            files: vec![],
        };
        let data = serde_json::to_vec_pretty(&manifest).expect("json");
        let mac = k.mac(&data);
        assert_eq!(k.verify_manifest(&data, &mac).expect("valid"), manifest);
        let mut altered = data.clone();
        let at = altered.windows(2).position(|w| w == b"jp").expect("jp");
        altered[at] = b'u';
        let error = k.verify_manifest(&altered, &mac).expect_err("altered");
        assert!(error.to_string().contains("altered"), "{error}");
        let error = key(2).verify_manifest(&data, &mac).expect_err("other key");
        assert!(error.to_string().contains(k.id()), "{error}");
        assert!(BackupKey::from_hex("abc").is_err());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes as a backup file: refused or read, never a panic; a sealed
            /// file with any byte flipped or any tail cut is refused (authenticated
            /// encryption), never returned altered.
            #[test]
            fn backup_files_open_or_are_refused(
                bytes in proptest::collection::vec(any::<u8>(), 0..2048),
                data in proptest::collection::vec(any::<u8>(), 0..4096),
                flip in any::<usize>(),
                cut in any::<usize>(),
            ) {
                let key = key(7);
                let _ = open(&key, "meetings.dump", &bytes);
                let sealed = seal(&key, "meetings.dump", &data);
                prop_assert_eq!(open(&key, "meetings.dump", &sealed).expect("intact"), data.clone());
                let mut flipped = sealed.clone();
                let at = flip % flipped.len();
                flipped[at] ^= 0x01;
                prop_assert!(open(&key, "meetings.dump", &flipped).is_err());
                let cut_at = cut % sealed.len();
                prop_assert!(open(&key, "meetings.dump", &sealed[..cut_at]).is_err());
            }

            /// Any manifest and MAC: verified or refused, never a panic.
            #[test]
            fn manifests_verify_or_are_refused(
                manifest in proptest::collection::vec(any::<u8>(), 0..512),
                mac in "[0-9a-f]{0,80}",
            ) {
                let key = key(3);
                let _ = key.verify_manifest(&manifest, &mac);
            }
        }
    }
}
