//! How entries are shown to a tenant (control 12.4.4): stored in UTC, rendered in the
//! tenant's zone (Asia/Tokyo, +09:00, by default) as RFC 3339; exported as CSV or JSON.

use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use kiroku_proto::audit::v1::AuditEntry;

/// The zone timestamps are rendered in when a tenant has set none.
pub const DEFAULT_TIME_ZONE: &str = "Asia/Tokyo";

/// Parses an IANA zone name ("Asia/Tokyo", "UTC").
pub fn zone(name: &str) -> Result<Tz, String> {
    name.parse::<Tz>()
        .map_err(|_| format!("time zone {name:?} is not an IANA zone name such as Asia/Tokyo"))
}

/// `time` in `zone`, RFC 3339 with milliseconds and the zone's offset.
pub fn render_time(time: DateTime<Utc>, zone: Tz) -> String {
    time.with_timezone(&zone)
        .to_rfc3339_opts(SecondsFormat::Millis, false)
}

/// The CSV columns, in order.
pub const CSV_COLUMNS: [&str; 11] = [
    "seq",
    "occurred_at",
    "actor_kind",
    "actor_id",
    "action",
    "target",
    "outcome",
    "source_ip",
    "details",
    "event_id",
    "hash",
];

/// CSV with a header row; `details` as a JSON object. Cells that a spreadsheet would
/// run as a formula (`= + - @`) are prefixed with `'` (CSV injection).
pub fn csv(entries: &[AuditEntry]) -> Result<Vec<u8>, csv::Error> {
    Ok([csv_header()?, csv_rows(entries)?].concat())
}

/// The CSV header row alone: the first chunk of a streamed export.
pub fn csv_header() -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    writer.write_record(CSV_COLUMNS)?;
    writer
        .into_inner()
        .map_err(|e| csv::Error::from(std::io::Error::other(e.to_string())))
}

/// CSV rows without the header: one page of a streamed export.
pub fn csv_rows(entries: &[AuditEntry]) -> Result<Vec<u8>, csv::Error> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for e in entries {
        let details: std::collections::BTreeMap<_, _> = e.details.iter().collect();
        let details = serde_json::to_string(&details).unwrap_or_default();
        let record = [
            e.seq.to_string(),
            e.occurred_at.clone(),
            e.actor_kind.clone(),
            e.actor_id.clone(),
            e.action.clone(),
            e.target.clone(),
            e.outcome.clone(),
            e.source_ip.clone(),
            details,
            e.event_id.clone(),
            e.hash.clone(),
        ];
        writer.write_record(record.iter().map(|cell| inert(cell)))?;
    }
    writer
        .into_inner()
        .map_err(|e| csv::Error::from(std::io::Error::other(e.to_string())))
}

fn inert(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@']) {
        format!("'{cell}")
    } else {
        cell.to_string()
    }
}

/// A JSON array of entries, one entry a line.
pub fn json(entries: &[AuditEntry]) -> Vec<u8> {
    [JSON_OPEN, &json_items(entries, true), JSON_CLOSE].concat()
}

/// What opens a streamed JSON export, and what closes it; [`json_items`] go between.
pub const JSON_OPEN: &[u8] = b"[\n";
pub const JSON_CLOSE: &[u8] = b"\n]\n";

/// Entries as elements of the JSON array, one a line; `first`: no separator before the
/// first element (the first page of a streamed export).
pub fn json_items(entries: &[AuditEntry], first: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        if i > 0 || !first {
            out.extend_from_slice(b",\n");
        }
        let value = serde_json::json!({
                "seq": e.seq,
                "occurred_at": e.occurred_at,
                "actor_kind": e.actor_kind,
                "actor_id": e.actor_id,
                "action": e.action,
                "target": e.target,
                "outcome": e.outcome,
                "source_ip": e.source_ip,
                "details": e.details,
                "trace_id": e.trace_id,
                "event_id": e.event_id,
                "hash": e.hash,
        });
        // A `Value` always serializes.
        out.extend_from_slice(&serde_json::to_vec(&value).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    // control 12.4.4: golden renderings; a UTC afternoon is the next day in Tokyo.
    #[test]
    fn control_12_4_4_utc_is_rendered_in_japan_standard_time() {
        let tokyo = zone(DEFAULT_TIME_ZONE).expect("zone");
        let evening = Utc
            .with_ymd_and_hms(2026, 11, 25, 15, 30, 0)
            .single()
            .expect("time");
        assert_eq!(render_time(evening, tokyo), "2026-11-26T00:30:00.000+09:00");
        let morning = Utc
            .with_ymd_and_hms(2026, 12, 31, 14, 59, 59)
            .single()
            .expect("time")
            + chrono::Duration::milliseconds(999);
        assert_eq!(render_time(morning, tokyo), "2026-12-31T23:59:59.999+09:00");
        let new_year = Utc
            .with_ymd_and_hms(2026, 12, 31, 15, 0, 0)
            .single()
            .expect("time");
        assert_eq!(
            render_time(new_year, tokyo),
            "2027-01-01T00:00:00.000+09:00"
        );
        assert_eq!(
            render_time(evening, zone("UTC").expect("utc")),
            "2026-11-25T15:30:00.000+00:00"
        );
        assert!(zone("Mars/Olympus").is_err());
    }

    #[test]
    fn csv_quotes_and_neutralizes_formulas() {
        let entry = AuditEntry {
            seq: 1,
            occurred_at: "2026-11-26T00:30:00.000+09:00".into(),
            actor_kind: "user".into(),
            actor_id: "u1".into(),
            action: "label.added".into(),
            target: "=HYPERLINK(\"http://evil\")".into(),
            outcome: "success".into(),
            details: [("note".to_string(), "a, \"b\"\nc".to_string())].into(),
            ..Default::default()
        };
        let text = String::from_utf8(csv(&[entry]).expect("csv")).expect("utf-8");
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let row = reader.records().next().expect("row").expect("record");
        assert_eq!(&row[5], "'=HYPERLINK(\"http://evil\")");
        assert_eq!(&row[8], r#"{"note":"a, \"b\"\nc"}"#);
    }
}
