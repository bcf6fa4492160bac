//! The tenant bundle (control CLD.8.1.5): what `ExportTenant` writes and `ImportTenant`
//! reads back. One JSON file per meeting (summary, every segment with its word timings,
//! confidence and speaker, every label), a WebVTT file per meeting for people, and
//! `manifest.json` naming every file with its size and SHA-256.
//!
//! The same structs serialize and deserialize, so an exported meeting imports to the
//! same meeting: export → import → export gives the same files.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use kiroku_proto::transcribe::v1 as api;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use uuid::Uuid;

/// The bundle format this build writes and reads.
pub const FORMAT: &str = "kiroku-tenant-export/2";
/// The manifest's path: last in an export, first in an import.
pub const MANIFEST: &str = "manifest.json";
/// The tenant's audit log, added by `kiroku admin tenant export` from the audit service
/// (checked on import, not imported: the log of the new tenant starts anew).
pub const AUDIT_LOG: &str = "audit/log.json";

/// One meeting, `meetings/<id>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleMeeting {
    pub meeting_id: String,
    pub title: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub language: String,
    pub duration_ms: i64,
    /// The segments' text, joined (for people and other tools; not imported).
    pub text: String,
    /// On one timeline: a meeting streamed in several sessions reads as one.
    pub segments: Vec<BundleSegment>,
    pub labels: Vec<BundleLabel>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleSegment {
    pub start_ms: u64,
    pub end_ms: u64,
    pub text: String,
    pub confidence: f32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub speaker: String,
    pub words: Vec<BundleWord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleWord {
    pub text: String,
    pub start_ms: u64,
    pub end_ms: u64,
    pub probability: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleLabel {
    pub label_id: Uuid,
    /// `tag`, `bookmark` or `memo`.
    pub kind: String,
    pub text: String,
    pub at_ms: i64,
    pub end_ms: i64,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
}

impl From<&api::Segment> for BundleSegment {
    fn from(s: &api::Segment) -> Self {
        Self {
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            text: s.text.clone(),
            confidence: s.confidence,
            speaker: s.speaker.clone(),
            words: s
                .words
                .iter()
                .map(|w| BundleWord {
                    text: w.text.clone(),
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    probability: w.probability,
                })
                .collect(),
        }
    }
}

impl From<&BundleSegment> for api::Segment {
    fn from(s: &BundleSegment) -> Self {
        Self {
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            text: s.text.clone(),
            confidence: s.confidence,
            speaker: s.speaker.clone(),
            words: s
                .words
                .iter()
                .map(|w| api::Word {
                    text: w.text.clone(),
                    start_ms: w.start_ms,
                    end_ms: w.end_ms,
                    probability: w.probability,
                })
                .collect(),
        }
    }
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub tenant_id: String,
    pub tenant_slug: String,
    pub exported_at: DateTime<Utc>,
    pub meetings: u64,
    pub files: Vec<ManifestFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

impl ManifestFile {
    pub fn of(path: &str, data: &[u8]) -> Self {
        Self {
            path: path.into(),
            bytes: data.len() as u64,
            sha256: hex::encode(sha2::Sha256::digest(data)),
        }
    }
}

/// What is wrong with a bundle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle this build reads (bad JSON, unknown format, unsafe or repeated path).
    #[error("{0}")]
    Invalid(String),
    /// A file differs from its manifest entry, or a listed file never came.
    #[error("{0}")]
    Corrupt(String),
}

/// A relative path of plain names (no `..`, no root, no empty part).
pub fn safe_path(path: &str) -> bool {
    // `/`-separated names of letters, digits, `-`, `_` and `.` (what an export writes),
    // never `.` or `..`: no traversal on any system (a backslash is a separator on
    // Windows), no control characters, nothing a shell or file system reads specially.
    !path.is_empty()
        && path.len() <= 1024
        && path.split('/').all(|name| {
            !name.is_empty()
                && name.len() <= 255
                && name != "."
                && name != ".."
                && name
                    .chars()
                    .all(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
}

impl Manifest {
    pub fn parse(data: &[u8]) -> Result<Self, BundleError> {
        let manifest: Manifest = serde_json::from_slice(data)
            .map_err(|e| BundleError::Invalid(format!("{MANIFEST} does not parse: {e}")))?;
        if manifest.format != FORMAT {
            return Err(BundleError::Invalid(format!(
                "bundle format {:?}: this build reads {FORMAT:?}",
                manifest.format
            )));
        }
        let mut seen = HashSet::new();
        for file in &manifest.files {
            if !safe_path(&file.path) || file.path == MANIFEST {
                return Err(BundleError::Invalid(format!(
                    "{MANIFEST} lists an unsafe path {:?}",
                    file.path
                )));
            }
            if !seen.insert(file.path.as_str()) {
                return Err(BundleError::Invalid(format!(
                    "{MANIFEST} lists {:?} twice",
                    file.path
                )));
            }
        }
        Ok(manifest)
    }
}

/// Checks the files of a bundle against its manifest as they arrive, in any order.
#[derive(Debug)]
pub struct Checker {
    pending: HashMap<String, ManifestFile>,
    checked: u64,
}

impl Checker {
    pub fn new(manifest: &Manifest) -> Self {
        Self {
            pending: manifest
                .files
                .iter()
                .map(|f| (f.path.clone(), f.clone()))
                .collect(),
            checked: 0,
        }
    }

    /// One file: listed, not seen before, same size and SHA-256.
    pub fn check(&mut self, path: &str, data: &[u8]) -> Result<(), BundleError> {
        let Some(expected) = self.pending.remove(path) else {
            return Err(BundleError::Invalid(format!(
                "{path:?} is not listed in {MANIFEST} (or was sent twice)"
            )));
        };
        if ManifestFile::of(path, data) != expected {
            return Err(BundleError::Corrupt(format!(
                "{path}: size or SHA-256 differs from {MANIFEST}"
            )));
        }
        self.checked += 1;
        Ok(())
    }

    /// Every listed file came; returns how many.
    pub fn finish(self) -> Result<u64, BundleError> {
        let mut missing: Vec<&String> = self.pending.keys().collect();
        missing.sort();
        match missing.first() {
            None => Ok(self.checked),
            Some(first) => Err(BundleError::Corrupt(format!(
                "the bundle is incomplete: {} listed files missing, first {first}",
                missing.len()
            ))),
        }
    }
}

/// Whether a bundle path holds a meeting to import.
pub fn is_meeting(path: &str) -> bool {
    path.starts_with("meetings/") && path.ends_with(".json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(files: &[(&str, &[u8])]) -> Manifest {
        Manifest {
            format: FORMAT.into(),
            tenant_id: Uuid::nil().to_string(),
            tenant_slug: "acme".into(),
            exported_at: Utc::now(),
            meetings: 0,
            files: files.iter().map(|(p, d)| ManifestFile::of(p, d)).collect(),
        }
    }

    #[test]
    fn every_listed_file_must_come_once_and_match() {
        let m = manifest(&[("meetings/a.json", b"{}"), ("meetings/a.vtt", b"WEBVTT")]);
        let mut checker = Checker::new(&m);
        checker
            .check("meetings/a.vtt", b"WEBVTT")
            .expect("same bytes");
        assert!(matches!(
            checker.check("meetings/a.vtt", b"WEBVTT"),
            Err(BundleError::Invalid(_))
        ));
        assert!(matches!(
            checker.check("meetings/a.json", b"{ }"),
            Err(BundleError::Corrupt(_))
        ));
        let m = manifest(&[("meetings/a.json", b"{}"), ("meetings/b.json", b"{}")]);
        let mut checker = Checker::new(&m);
        checker.check("meetings/b.json", b"{}").expect("listed");
        assert!(matches!(checker.finish(), Err(BundleError::Corrupt(e)) if e.contains("a.json")));
    }

    #[test]
    fn manifests_with_unsafe_or_repeated_paths_or_other_formats_are_refused() {
        for bad in ["../x.json", "/etc/passwd", "", "meetings/../../x"] {
            let m = manifest(&[(bad, b"")]);
            let data = serde_json::to_vec(&m).expect("json");
            assert!(Manifest::parse(&data).is_err(), "{bad:?} accepted");
        }
        let m = manifest(&[("a.json", b""), ("a.json", b"")]);
        assert!(Manifest::parse(&serde_json::to_vec(&m).expect("json")).is_err());
        let mut m = manifest(&[]);
        m.format = "kiroku-tenant-export/1".into();
        assert!(Manifest::parse(&serde_json::to_vec(&m).expect("json")).is_err());
        assert!(Manifest::parse(b"not json").is_err());
    }

    #[test]
    fn a_segment_survives_the_round_trip_through_json() {
        let segment = api::Segment {
            start_ms: 1200,
            end_ms: 3400,
            text: " 予算会議を始めます".into(),
            words: vec![api::Word {
                text: "予算".into(),
                start_ms: 1200,
                end_ms: 1700,
                probability: 0.873_421,
            }],
            confidence: 0.912_345_7,
            speaker: String::new(),
        };
        let json = serde_json::to_string(&BundleSegment::from(&segment)).expect("json");
        let back: BundleSegment = serde_json::from_str(&json).expect("parse");
        assert_eq!(api::Segment::from(&back), segment);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any manifest bytes: parsed or refused, never a panic; a parsed one lists
            /// only safe, distinct paths.
            #[test]
            fn manifests_parse_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
                if let Ok(manifest) = Manifest::parse(&bytes) {
                    for file in &manifest.files {
                        prop_assert!(safe_path(&file.path));
                    }
                }
            }

            /// Manifests with hostile paths (traversal, absolute, NUL, control
            /// characters, duplicates) are refused or hold only safe paths; the checker
            /// accepts only listed files with the listed content.
            #[test]
            fn hostile_paths_never_pass(
                paths in proptest::collection::vec(
                    prop_oneof![
                        Just("../etc/passwd".to_string()),
                        Just("/abs".to_string()),
                        Just("meetings/\0.json".to_string()),
                        Just("meetings/a.json".to_string()),
                        "[a-z/.\\\\\0\n]{0,20}",
                    ],
                    0..6,
                ),
                data in proptest::collection::vec(any::<u8>(), 0..64),
                sent in "[a-z/.]{0,12}",
            ) {
                let files: Vec<(&str, &[u8])> = paths.iter().map(|p| (p.as_str(), data.as_slice())).collect();
                let json = serde_json::to_vec(&manifest(&files)).expect("json");
                if let Ok(parsed) = Manifest::parse(&json) {
                    for file in &parsed.files {
                        prop_assert!(safe_path(&file.path), "{:?}", file.path);
                        prop_assert!(!file.path.contains(".."));
                    }
                    let mut checker = Checker::new(&parsed);
                    let listed = parsed.files.iter().any(|f| f.path == sent);
                    let accepted = checker.check(&sent, &data).is_ok();
                    prop_assert!(!accepted || listed);
                }
            }
        }
    }
}
