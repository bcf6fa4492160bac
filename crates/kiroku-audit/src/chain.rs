//! The hash chain of a tenant's audit log (control 12.4.1): entry `n` stores
//! `hash_n = SHA-256(hash_{n-1} || canonical(entry_n))`, with 32 zero bytes before the
//! first entry. Changing, removing or reordering any stored entry breaks every hash from
//! it on, and [`first_break`] names the first broken position.
//!
//! The canonical encoding is every field, in a fixed order, as a 4-byte big-endian
//! length followed by its bytes (numbers as decimal text), details sorted by key: no
//! two different entries encode the same.

use std::collections::BTreeMap;

use sha2::{Digest as _, Sha256};

/// The hash before the first entry.
pub const GENESIS: [u8; 32] = [0; 32];

/// One stored entry, as hashed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub tenant_id: String,
    pub seq: i64,
    pub event_id: String,
    /// Microseconds since the Unix epoch (what PostgreSQL keeps).
    pub occurred_at_us: i64,
    pub actor_id: String,
    pub actor_kind: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub source_ip: String,
    pub details: BTreeMap<String, String>,
    pub trace_id: String,
}

fn field(out: &mut Vec<u8>, value: &str) {
    out.extend_from_slice(&(value.len() as u32).to_be_bytes());
    out.extend_from_slice(value.as_bytes());
}

impl Entry {
    pub fn canonical(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        for value in [
            self.tenant_id.as_str(),
            &self.seq.to_string(),
            &self.event_id,
            &self.occurred_at_us.to_string(),
            &self.actor_id,
            &self.actor_kind,
            &self.action,
            &self.target,
            &self.outcome,
            &self.source_ip,
            &self.details.len().to_string(),
        ] {
            field(&mut out, value);
        }
        for (key, value) in &self.details {
            field(&mut out, key);
            field(&mut out, value);
        }
        field(&mut out, &self.trace_id);
        out
    }

    /// This entry's hash after `previous`.
    pub fn hash(&self, previous: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(previous);
        hasher.update(self.canonical());
        hasher.finalize().into()
    }
}

/// What is wrong at the first broken position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    pub seq: i64,
    pub problem: String,
}

/// Streaming check over entries in `seq` order (the caller pages through the table).
#[derive(Debug)]
pub struct Walker {
    expected_seq: i64,
    previous: Vec<u8>,
    pub checked: u64,
}

impl Default for Walker {
    fn default() -> Self {
        Self {
            expected_seq: 1,
            previous: GENESIS.to_vec(),
            checked: 0,
        }
    }
}

impl Walker {
    /// Checks the next stored entry with its stored previous hash and hash.
    pub fn next(
        &mut self,
        entry: &Entry,
        stored_prev: &[u8],
        stored_hash: &[u8],
    ) -> Result<(), Break> {
        if entry.seq != self.expected_seq {
            return Err(Break {
                seq: self.expected_seq,
                problem: format!(
                    "entry {} is missing (next stored is {})",
                    self.expected_seq, entry.seq
                ),
            });
        }
        if stored_prev != self.previous.as_slice() {
            return Err(Break {
                seq: entry.seq,
                problem: format!(
                    "entry {} does not link to entry {}",
                    entry.seq,
                    entry.seq - 1
                ),
            });
        }
        if entry.hash(&self.previous).as_slice() != stored_hash {
            return Err(Break {
                seq: entry.seq,
                problem: format!("entry {} was changed after it was written", entry.seq),
            });
        }
        self.previous = stored_hash.to_vec();
        self.expected_seq += 1;
        self.checked += 1;
        Ok(())
    }
}

/// The first break in a whole in-memory chain of (entry, prev_hash, hash).
pub fn first_break(chain: &[(Entry, Vec<u8>, Vec<u8>)]) -> Option<Break> {
    let mut walker = Walker::default();
    chain
        .iter()
        .find_map(|(entry, prev, hash)| walker.next(entry, prev, hash).err())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64) -> Entry {
        Entry {
            tenant_id: "t".into(),
            seq,
            event_id: format!("e{seq}"),
            occurred_at_us: 1_700_000_000_000_000 + seq,
            actor_id: "u".into(),
            actor_kind: "user".into(),
            action: "login.succeeded".into(),
            target: String::new(),
            outcome: "success".into(),
            source_ip: "127.0.0.1".into(),
            details: BTreeMap::from([("mfa".to_string(), "totp".to_string())]),
            trace_id: String::new(),
        }
    }

    fn chain(n: i64) -> Vec<(Entry, Vec<u8>, Vec<u8>)> {
        let mut previous = GENESIS.to_vec();
        (1..=n)
            .map(|seq| {
                let e = entry(seq);
                let hash = e.hash(&previous).to_vec();
                let out = (e, previous.clone(), hash.clone());
                previous = hash;
                out
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        assert_eq!(first_break(&chain(50)), None);
    }

    #[test]
    fn an_edited_entry_is_found_at_its_position() {
        let mut c = chain(50);
        c[20].0.action = "login.failed".into();
        assert_eq!(first_break(&c).map(|b| b.seq), Some(21));
    }

    #[test]
    fn a_removed_entry_is_found_at_its_position() {
        let mut c = chain(50);
        c.remove(30);
        assert_eq!(first_break(&c).map(|b| b.seq), Some(31));
    }

    #[test]
    fn a_rehashed_entry_still_breaks_the_link_to_the_next() {
        // Editing an entry and recomputing its hash does not help: the next entry's
        // stored previous hash no longer matches.
        let mut c = chain(10);
        c[4].0.target = "meeting/x".into();
        let prev = c[4].1.clone();
        c[4].2 = c[4].0.hash(&prev).to_vec();
        assert_eq!(first_break(&c).map(|b| b.seq), Some(6));
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let mut a = entry(1);
        let mut b = entry(1);
        a.action = "ab".into();
        a.target = "c".into();
        b.action = "a".into();
        b.target = "bc".into();
        assert_ne!(a.canonical(), b.canonical());
    }
}
