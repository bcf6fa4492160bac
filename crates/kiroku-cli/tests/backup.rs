//! Backup and restore end to end (control 12.3.1): the real `kiroku admin backup` and
//! `restore` (pg_dump and psql underneath) against the services' schemas in the real
//! PostgreSQL and their streams in the real NATS JetStream.

use kiroku_tests::cluster;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster::{Cluster, authorized, block_on};
use kiroku_proto::events::v1::TranscriptResult;
use kiroku_proto::storage::v1 as pb;
use kiroku_proto::transcribe::v1 as api;
use prost::Message as _;

const BACKUP_KEY: &str = "0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20";

fn final_result(tenant: &str, session: &str, seq: u64, text: &str) -> TranscriptResult {
    TranscriptResult {
        tenant_id: tenant.into(),
        session_id: session.into(),
        meeting_id: format!("meeting-{session}"),
        result: Some(api::StreamingResult {
            result_seq: seq,
            is_final: true,
            segment: Some(api::Segment {
                start_ms: seq * 1000,
                end_ms: seq * 1000 + 900,
                text: format!(" {text}"),
                ..Default::default()
            }),
            stability: 1.0,
            language: "en".into(),
            kind: api::ResultKind::Final as i32,
        }),
        ..Default::default()
    }
}

/// Publishes a final of `tenant`'s `session` to `TRANSCRIPTS`, as a worker does.
async fn publish_final(
    layout: &kiroku_core::nats::Layout,
    tenant: &str,
    session: &str,
    seq: u64,
    text: &str,
) {
    let js = async_nats::jetstream::new(
        async_nats::connect(cluster::nats_url())
            .await
            .expect("nats"),
    );
    js.send_publish(
        layout.transcript_subject(tenant, session),
        async_nats::jetstream::message::PublishMessage::build()
            .payload(
                final_result(tenant, session, seq, text)
                    .encode_to_vec()
                    .into(),
            )
            .message_id(format!("{session}:r{seq}")),
    )
    .await
    .expect("publish")
    .await
    .expect("ack");
}

/// Waits until storage shows `n` segments of `meeting`.
async fn wait_for_segments(
    client: &mut pb::storage_client::StorageClient<tonic::transport::Channel>,
    token: &str,
    meeting: &str,
    n: usize,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = client
            .get_meeting(authorized(
                pb::GetMeetingRequest {
                    meeting_id: meeting.into(),
                },
                token,
            ))
            .await
            .map(|m| m.into_inner().segments.len())
            .unwrap_or(0);
        if found == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{meeting}: {found} of {n} finals stored"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The three services' schemas as SQL (the byte-for-byte comparison).
fn dump(cluster: &Cluster) -> String {
    let root = &cluster.root;
    let output = Command::new("pg_dump")
        .args([
            "--no-password",
            "--quote-all-identifiers",
            // pg_dump writes a random `\restrict` key into every dump unless given one.
            "--restrict-key=kirokubackuptest",
            &format!("--schema={root}"),
            &format!("--schema={root}_audit"),
            &format!("--schema={root}_storage"),
            &format!("--dbname={}", cluster::database_url()),
        ])
        .output()
        .expect("pg_dump");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// `kiroku admin backup|restore ...` with this cluster's database, schemas and NATS.
fn admin(cluster: &Cluster, args: &[&str], key: &str) -> (bool, String, String) {
    let root = &cluster.root;
    let output = Command::new(cluster::kiroku())
        .arg("admin")
        .args(args)
        .env("KIROKU_DATABASE_URL", cluster::database_url())
        .env("KIROKU_ACCOUNT_SCHEMA", root)
        .env("KIROKU_AUDIT_SCHEMA", format!("{root}_audit"))
        .env("KIROKU_STORAGE_SCHEMA", format!("{root}_storage"))
        .env("KIROKU_NATS_URL", cluster::nats_url())
        .env("KIROKU_CLUSTER", root)
        .env("KIROKU_BACKUP_KEY", key)
        .output()
        .expect("kiroku admin");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn stop_services(cluster: &mut Cluster) {
    for proc in [
        cluster.account.take(),
        cluster.audit.take(),
        cluster.storage.take(),
    ]
    .into_iter()
    .flatten()
    {
        let mut proc = proc;
        let _ = proc.child.kill();
        let _ = proc.child.wait();
    }
}

fn start_services(cluster: &mut Cluster) {
    cluster.spawn_account();
    cluster.spawn_audit();
    cluster.spawn_storage();
}

/// Drops the services' schemas and deletes the cluster's streams: a lost database and
/// a lost NATS.
fn wipe(cluster: &Cluster) {
    let (ok, out) = cluster::psql(
        &cluster::database_url(),
        &format!(
            "DROP SCHEMA \"{0}\" CASCADE; DROP SCHEMA \"{0}_audit\" CASCADE; \
             DROP SCHEMA \"{0}_storage\" CASCADE",
            cluster.root
        ),
    );
    assert!(ok, "{out}");
    let layout = cluster.layout();
    block_on(async move {
        let js = async_nats::jetstream::new(
            async_nats::connect(cluster::nats_url())
                .await
                .expect("nats"),
        );
        for name in layout.stream_names() {
            if !name.contains("erasures") {
                js.delete_stream(&name).await.expect("delete stream");
            }
        }
    });
}

fn schema_count(cluster: &Cluster) -> String {
    let (ok, out) = cluster::psql(
        &cluster::database_url(),
        &format!(
            "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '{}%'",
            cluster.root
        ),
    );
    assert!(ok, "{out}");
    out
}

/// A copy of `dir` with `name` changed by `change`.
fn altered(dir: &Path, to: &Path, name: &str, change: impl FnOnce(&mut Vec<u8>)) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
    let mut data = std::fs::read(to.join(name)).expect("file");
    change(&mut data);
    std::fs::write(to.join(name), data).expect("write");
}

/// control 12.3.1 and CLD.8.1.5: backup → wipe (schemas dropped, streams deleted) →
/// restore gives back the same database byte for byte (pg_dump before and after) and
/// the same streams, and the services work on it (meetings, audit chain). The backup
/// holds no readable customer text. A backup altered anywhere, made with another key,
/// or restored over existing schemas without --replace is refused and changes nothing.
/// A tenant erased after the backup stays erased when the backup is restored; the other
/// tenant's rows come back unchanged.
#[test]
fn control_12_3_1_backup_wipe_restore_is_byte_equal_and_erasures_stay() {
    let mut cluster = Cluster::builder().audit().storage().start();
    cluster.enroll_owner_mfa_with_cli();
    let data = Data::of_two_tenants(&cluster);
    let dir = cluster.dir.path().join("backup");
    a_backup_outside_the_allowed_regions_is_refused(&cluster, &dir);

    let (ok, printed, err) = admin(
        &cluster,
        &["backup", "--out", dir.to_str().expect("utf-8")],
        BACKUP_KEY,
    );
    assert!(ok, "{err}");
    assert!(printed.contains("3 schemas, 8 streams"), "{printed}{err}");
    let before = dump(&cluster);
    assert!(before.contains("CREATE TABLE") && before.contains("segments"));
    nothing_in_the_backup_is_readable(&cluster, &dir);

    stop_services(&mut cluster);
    wipe(&cluster);
    assert_eq!(schema_count(&cluster), "0");
    altered_backups_and_other_keys_are_refused(&cluster, &dir);

    // The restore: byte-equal database, streams back, services work.
    let (ok, printed, err) = admin(
        &cluster,
        &["restore", dir.to_str().expect("utf-8")],
        BACKUP_KEY,
    );
    assert!(ok, "{err}");
    assert!(
        printed.contains("restored 3 schemas and 8 stream configurations"),
        "{printed}"
    );
    the_database_is_byte_equal(&before, &dump(&cluster));
    every_stream_is_back(&cluster);
    start_services(&mut cluster);
    let (ok, out, err) = cluster.run_cli(&["meetings", "show", "meeting-a1"], None);
    assert!(ok && out.contains("confidential merger plan"), "{out}{err}");
    let (ok, out, err) = cluster.run_cli(&["admin", "audit", "verify"], None);
    assert!(ok && out.contains("intact"), "{out}{err}");

    // Over existing schemas only with --replace.
    let (ok, _, err) = admin(
        &cluster,
        &["restore", dir.to_str().expect("utf-8")],
        BACKUP_KEY,
    );
    assert!(!ok && err.contains("--replace"), "{err}");

    an_erasure_after_the_backup_stays_erased(&mut cluster, &data, &dir);
}

/// The cluster tenant's meeting `meeting-a1` (two finals and a memo) and another
/// tenant's final, stored, with their audit events, before the backup.
struct Data {
    tenant: String,
    other: String,
    schema: String,
}

impl Data {
    fn of_two_tenants(cluster: &Cluster) -> Self {
        let token = cluster.access_token();
        let other = uuid::Uuid::new_v4().simple().to_string();
        let (account_url, storage_url, layout) = (
            cluster.account_url(),
            cluster.storage_url(),
            cluster.layout(),
        );
        let tenant = block_on({
            let other = other.clone();
            async move {
                let tenant = cluster::tenant_of(&account_url, &token).await;
                for (who, session, seq, text) in [
                    (&tenant, "a1", 1, "the confidential merger plan"),
                    (&tenant, "a1", 2, "closing on friday"),
                    (&other, "b1", 1, "other tenant minutes"),
                ] {
                    publish_final(&layout, who, session, seq, text).await;
                }
                let mut client = pb::storage_client::StorageClient::connect(storage_url)
                    .await
                    .expect("storage");
                wait_for_segments(&mut client, &token, "meeting-a1", 2).await;
                client
                    .add_label(authorized(
                        pb::AddLabelRequest {
                            meeting_id: "meeting-a1".into(),
                            kind: pb::LabelKind::Memo as i32,
                            text: "keep this secret memo".into(),
                            at_ms: 0,
                            end_ms: 1000,
                            live: false,
                        },
                        &token,
                    ))
                    .await
                    .expect("memo");
                tenant
            }
        });
        let data = Self {
            tenant,
            other,
            schema: format!("{}_storage", cluster.root),
        };
        // The other tenant's final is stored too (no API access to it: read the rows).
        let deadline = Instant::now() + Duration::from_secs(30);
        while data.other_rows().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the other tenant's final was never stored"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        // The audit events of the work above are stored before the backup.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, out, _) = cluster.run_cli(&["admin", "audit", "list"], None);
            if ok && out.contains("label.added") {
                break;
            }
            assert!(Instant::now() < deadline, "audit never stored: {out}");
            std::thread::sleep(Duration::from_millis(200));
        }
        data
    }

    /// The other tenant's stored segments, sealed, as `psql` prints them.
    fn other_rows(&self) -> String {
        let (ok, rows) = cluster::psql(
            &cluster::database_url(),
            &format!(
                "SELECT session_id, result_seq, encode(sealed, 'hex') FROM \"{}\".segments \
                 WHERE tenant_id = '{}' ORDER BY 1, 2",
                self.schema, self.other
            ),
        );
        assert!(ok, "{rows}");
        rows
    }
}

/// Outside the allowed regions: refused before anything is written.
fn a_backup_outside_the_allowed_regions_is_refused(cluster: &Cluster, dir: &Path) {
    let us = cluster
        .cli(&["admin", "backup", "--out", dir.to_str().expect("utf-8")])
        .env("KIROKU_BACKUP_REGION", "us-east-1")
        .env("KIROKU_BACKUP_KEY", BACKUP_KEY)
        .output()
        .expect("backup");
    assert_eq!(us.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&us.stderr).contains("outside the allowed regions"),
        "{}",
        String::from_utf8_lossy(&us.stderr)
    );
    assert!(!dir.exists());
}

/// The backup files are encrypted: no SQL, no stream configuration, no e-mail address.
fn nothing_in_the_backup_is_readable(cluster: &Cluster, dir: &Path) {
    for name in ["postgres.sql.kbk", "nats.json.kbk"] {
        let data = std::fs::read(dir.join(name)).expect("backup file");
        for readable in ["CREATE TABLE", "subjects", &cluster.owner_email] {
            assert!(
                !data
                    .windows(readable.len())
                    .any(|w| w == readable.as_bytes()),
                "{readable:?} readable in {name}"
            );
        }
    }
}

/// Refused: another key, an altered file, an altered manifest. Nothing changes.
fn altered_backups_and_other_keys_are_refused(cluster: &Cluster, dir: &Path) {
    let other_key = "00".repeat(32);
    let (ok, _, err) = admin(
        cluster,
        &["restore", dir.to_str().expect("utf-8")],
        &other_key,
    );
    assert!(!ok && err.contains("made with backup key"), "{err}");
    let flipped = cluster.dir.path().join("flipped");
    altered(dir, &flipped, "postgres.sql.kbk", |data| {
        let at = data.len() / 2;
        data[at] ^= 1;
    });
    let (ok, _, err) = admin(
        cluster,
        &["restore", flipped.to_str().expect("utf-8")],
        BACKUP_KEY,
    );
    assert!(
        !ok && err.contains("postgres.sql.kbk: size or SHA-256 differs"),
        "{err}"
    );
    let relabelled = cluster.dir.path().join("relabelled");
    altered(dir, &relabelled, "manifest.json", |data| {
        let text =
            String::from_utf8_lossy(data).replace("\"region\": \"jp\"", "\"region\": \"eu\"");
        *data = text.into_bytes();
    });
    let (ok, _, err) = admin(
        cluster,
        &["restore", relabelled.to_str().expect("utf-8")],
        BACKUP_KEY,
    );
    assert!(!ok && err.contains("was altered"), "{err}");
    assert_eq!(schema_count(cluster), "0");
}

/// `pg_dump` of the schemas before the backup and after the restore, line by line.
fn the_database_is_byte_equal(before: &str, after: &str) {
    if let Some((line, (a, b))) = before
        .lines()
        .zip(after.lines())
        .enumerate()
        .find(|(_, (a, b))| a != b)
    {
        panic!("the restored database differs at line {line}:\n  before: {a}\n  after:  {b}");
    }
    assert_eq!(
        before.len(),
        after.len(),
        "the restored database differs in length"
    );
}

fn every_stream_is_back(cluster: &Cluster) {
    let layout = cluster.layout();
    block_on(async move {
        let js = async_nats::jetstream::new(
            async_nats::connect(cluster::nats_url())
                .await
                .expect("nats"),
        );
        for name in layout.stream_names() {
            js.get_stream(&name).await.expect("restored stream");
        }
    });
}

/// Erased after the backup: the restore erases it again; the other tenant is intact.
fn an_erasure_after_the_backup_stays_erased(cluster: &mut Cluster, data: &Data, dir: &Path) {
    let other_before = data.other_rows();
    cluster.erase_tenant_with_cli();
    stop_services(cluster);
    let (ok, printed, err) = admin(
        cluster,
        &["restore", "--replace", dir.to_str().expect("utf-8")],
        BACKUP_KEY,
    );
    assert!(ok, "{err}");
    assert!(
        printed.contains("re-applied 1 tenant erasures"),
        "{printed}"
    );
    for table in ["data_keys", "meetings", "segments", "labels"] {
        let (ok, count) = cluster::psql(
            &cluster::database_url(),
            &format!(
                "SELECT count(*) FROM \"{}\".{table} WHERE tenant_id = '{}'",
                data.schema, data.tenant
            ),
        );
        assert!(ok && count == "0", "{table}: {count}");
    }
    assert_eq!(data.other_rows(), other_before);
}

/// A tenant that erased its minutes and kept using the service keeps what it stored
/// after the erasure through a restore: the register's erasure time decides what is
/// deleted again (before, every row of the tenant went, with the data key its later
/// meetings are sealed under). Restarted on the restored database, storage still
/// decrypts the later meeting.
#[test]
fn a_restore_keeps_what_an_erased_tenant_stored_after_its_erasure() {
    let mut cluster = Cluster::builder().audit().storage().start();
    cluster.enroll_owner_mfa_with_cli();
    let token = cluster.access_token();
    let (account_url, layout) = (cluster.account_url(), cluster.layout());
    let store = |session: &'static str, text: &'static str, storage_url: String| {
        let (token, account_url, layout) = (token.clone(), account_url.clone(), layout.clone());
        block_on(async move {
            let tenant = cluster::tenant_of(&account_url, &token).await;
            publish_final(&layout, &tenant, session, 1, text).await;
            let mut client = pb::storage_client::StorageClient::connect(storage_url)
                .await
                .expect("storage");
            wait_for_segments(&mut client, &token, &format!("meeting-{session}"), 1).await;
        })
    };
    store("before", "minutes that were erased", cluster.storage_url());
    cluster.erase_tenant_with_cli();
    store(
        "after",
        "minutes kept after the erasure",
        cluster.storage_url(),
    );

    let backup = tempfile::tempdir().expect("tempdir");
    let dir = backup.path().join("backup");
    let (ok, _, err) = admin(
        &cluster,
        &["backup", "--out", dir.to_str().expect("utf-8")],
        BACKUP_KEY,
    );
    assert!(ok, "{err}");
    stop_services(&mut cluster);
    let (ok, printed, err) = admin(
        &cluster,
        &["restore", "--replace", dir.to_str().expect("utf-8")],
        BACKUP_KEY,
    );
    assert!(ok, "{err}");
    assert!(
        printed.contains("re-applied 1 tenant erasures"),
        "{printed}"
    );
    start_services(&mut cluster);
    let storage_url = cluster.storage_url();
    let token = cluster.access_token();
    let segments = block_on(async move {
        let mut client = pb::storage_client::StorageClient::connect(storage_url)
            .await
            .expect("storage");
        let kept = client
            .get_meeting(authorized(
                pb::GetMeetingRequest {
                    meeting_id: "meeting-after".into(),
                },
                &token,
            ))
            .await
            .expect("the meeting stored after the erasure survives the restore")
            .into_inner()
            .segments;
        let erased = client
            .get_meeting(authorized(
                pb::GetMeetingRequest {
                    meeting_id: "meeting-before".into(),
                },
                &token,
            ))
            .await
            .expect_err("the erased meeting stays erased");
        assert_eq!(erased.code(), tonic::Code::NotFound, "{erased:?}");
        kept
    });
    assert_eq!(segments.len(), 1);
    assert!(
        segments[0].text.contains("minutes kept after the erasure"),
        "{segments:?}"
    );
}
