//! The audit log end to end: real account, audit (and gateway) processes against the
//! real NATS JetStream and PostgreSQL; events published to `AUDIT` as every service
//! publishes them. Tests name the controls they prove (12.4.1, 12.4.4).

use kiroku_tests::cluster;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cluster::{Cluster, Options, authorized, block_on};
use kiroku_core::audit::{Actor, AuditEmitter, AuditRecord};
use kiroku_proto::account::v1 as account;
use kiroku_proto::audit::v1 as pb;
use kiroku_proto::audit::v1::audit_service_client::AuditServiceClient;
use tonic::Code;
use tonic::transport::Channel;

fn options() -> Options {
    Options {
        audit: true,
        ..Options::default()
    }
}

async fn audit(url: &str) -> AuditServiceClient<Channel> {
    AuditServiceClient::connect(url.to_string())
        .await
        .expect("audit service")
        .max_decoding_message_size(256 << 20)
}

async fn emitter(cluster_root: &str) -> AuditEmitter {
    let nats = async_nats::connect(cluster::nats_url())
        .await
        .expect("nats");
    AuditEmitter::new(
        async_nats::jetstream::new(nats),
        kiroku_core::nats::Layout::new(cluster_root).expect("layout"),
    )
}

async fn verify(client: &mut AuditServiceClient<Channel>, token: &str) -> pb::VerifyChainResponse {
    client
        .verify_chain(authorized(pb::VerifyChainRequest {}, token))
        .await
        .expect("verify")
        .into_inner()
}

/// Waits until the tenant's chain holds at least `n` entries; returns the verification.
async fn wait_for_entries(
    client: &mut AuditServiceClient<Channel>,
    token: &str,
    n: u64,
) -> pb::VerifyChainResponse {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = verify(client, token).await;
        if result.entries_checked >= n || !result.intact {
            return result;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {n} entries stored",
            result.entries_checked
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `ExportEventsStream` of a log longer than one page (1,000 entries): several chunks,
/// the CSV header and the JSON brackets once, every entry once and oldest first, and the
/// same bytes as the unary export.
async fn check_streamed_export(client: &mut AuditServiceClient<Channel>, token: &str, total: u64) {
    for format in [pb::ExportFormat::Json, pb::ExportFormat::Csv] {
        let request = || {
            authorized(
                pb::ExportEventsRequest {
                    format: format as i32,
                    ..Default::default()
                },
                token,
            )
        };
        let mut chunks = client
            .export_events_stream(request())
            .await
            .expect("streamed export")
            .into_inner();
        let (mut data, mut entries, mut count) = (Vec::new(), 0, 0);
        while let Some(chunk) = chunks.message().await.expect("chunk") {
            data.extend(chunk.data);
            entries += chunk.entries;
            count += 1;
        }
        assert!(count >= 3, "{count} chunks for {total} entries");
        assert_eq!(entries, total);
        let seqs: Vec<u64> = if format == pb::ExportFormat::Json {
            let rows: Vec<serde_json::Value> = serde_json::from_slice(&data).expect("json");
            rows.iter().filter_map(|r| r["seq"].as_u64()).collect()
        } else {
            csv::Reader::from_reader(data.as_slice())
                .records()
                .map(|r| r.expect("row")[0].parse().expect("seq"))
                .collect()
        };
        assert_eq!(
            seqs,
            (1..=total).collect::<Vec<_>>(),
            "every entry once, oldest first"
        );
        let unary = client
            .export_events(request())
            .await
            .expect("unary export")
            .into_inner();
        assert_eq!(unary.entries, total);
        assert!(
            unary.data == data,
            "the streamed export differs from the unary one"
        );
    }
    // Nothing matches: still a well-formed (empty) file.
    let mut chunks = client
        .export_events_stream(authorized(
            pb::ExportEventsRequest {
                format: pb::ExportFormat::Json as i32,
                filter: Some(pb::Filter {
                    action: "no.such.action".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("empty export")
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = chunks.message().await.expect("chunk") {
        data.extend(chunk.data);
    }
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&data).expect("empty json");
    assert!(rows.is_empty());
}

/// control 12.4.1: thousands of events form an intact chain, stored once each (a
/// re-published event id is not stored twice); the service role cannot change rows; an
/// edited row and a deleted row are each reported at their position.
#[test]
fn control_12_4_1_the_chain_holds_thousands_and_shows_tampering() {
    let cluster = Cluster::start(0, 0, options());
    let token = cluster_owner_token(&cluster);
    let (audit_url, account_url, root) = (
        cluster.audit_url(),
        cluster.account_url(),
        cluster.root.clone(),
    );
    let total = block_on({
        let token = token.clone();
        async move {
            let tenant = cluster::tenant_of(&account_url, &token).await;
            let emitter = emitter(&root).await;
            let mut client = audit(&audit_url).await;
            // The security events of the set-up (registration, sign-ins, MFA) come first.
            let before = wait_for_entries(&mut client, &token, 3)
                .await
                .entries_checked;
            let publishes = (0..2000).map(|i| {
                let record = AuditRecord::new(&tenant, Actor::user("load"), "test.load")
                    .target(format!("item/{i}"))
                    .detail("i", i.to_string());
                let emitter = emitter.clone();
                async move { emitter.emit(record).await.expect("publish") }
            });
            futures::future::join_all(publishes).await;
            // The same event twice, under two different NATS message ids (so JetStream's
            // de-duplication does not hide it): the audit store keeps one.
            let event = kiroku_proto::events::v1::AuditEvent {
                event_id: "duplicate-event".into(),
                tenant_id: tenant.clone(),
                action: "test.duplicate".into(),
                ..Default::default()
            };
            let js = async_nats::jetstream::new(
                async_nats::connect(cluster::nats_url())
                    .await
                    .expect("nats"),
            );
            let subject = kiroku_core::nats::Layout::new(&root)
                .expect("layout")
                .audit_subject(&tenant, "test.duplicate");
            for msg_id in ["a", "b"] {
                let message = async_nats::jetstream::message::PublishMessage::build()
                    .payload(prost::Message::encode_to_vec(&event).into())
                    .message_id(msg_id);
                js.send_publish(subject.clone(), message)
                    .await
                    .expect("publish")
                    .await
                    .expect("ack");
            }
            let expected = before + 2001;
            let result = wait_for_entries(&mut client, &token, expected).await;
            assert!(result.intact, "{result:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
            let result = verify(&mut client, &token).await;
            assert_eq!(
                result.entries_checked, expected,
                "the duplicate was stored twice"
            );
            let duplicates = cluster::audit_entries(&mut client, &token, "test.duplicate").await;
            assert_eq!(duplicates.len(), 1);
            check_streamed_export(&mut client, &token, expected).await;
            expected
        }
    });

    let owner = cluster::database_url();
    let table = format!("\"{}_audit\".audit_log", cluster.root);
    let service = owner.replacen("postgres@", "kiroku_audit@", 1);
    for statement in [
        format!("UPDATE {table} SET action = 'x' WHERE seq = 5"),
        format!("DELETE FROM {table} WHERE seq = 5"),
    ] {
        let (ok, output) = cluster::psql(&service, &statement);
        assert!(
            !ok && output.contains("permission denied"),
            "{statement}: {output}"
        );
    }
    // control 13.1.3: forced RLS on every audit table; no rows without a tenant.
    let (ok, flags) = cluster::psql(
        &owner,
        &format!(
            "SELECT string_agg(c.relname || ':' || c.relrowsecurity || c.relforcerowsecurity, ',' \
             ORDER BY c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = '{}_audit' AND c.relkind = 'r' AND c.relname <> '_sqlx_migrations'",
            cluster.root
        ),
    );
    assert!(ok, "{flags}");
    assert_eq!(
        flags,
        "audit_log:truetrue,notice_deliveries:truetrue,notices:truetrue,tenant_settings:truetrue"
    );
    let (ok, seen) = cluster::psql(&service, &format!("SELECT count(*) FROM {table}"));
    assert!(ok && seen == "0", "rows visible without a tenant: {seen}");
    // Someone with the owner's rights edits entry 1234, then deletes entry 700.
    let audit_url = cluster.audit_url();
    let (ok, output) = cluster::psql(
        &owner,
        &format!("UPDATE {table} SET action = 'login.succeeded' WHERE seq = 1234"),
    );
    assert!(ok, "{output}");
    let result = block_on({
        let (audit_url, token) = (audit_url.clone(), token.clone());
        async move { verify(&mut audit(&audit_url).await, &token).await }
    });
    assert!(!result.intact);
    assert_eq!(result.first_broken_seq, 1234, "{result:?}");
    assert_eq!(result.entries_checked, 1233);
    let (ok, output) = cluster::psql(&owner, &format!("DELETE FROM {table} WHERE seq = 700"));
    assert!(ok, "{output}");
    let result = block_on(async move { verify(&mut audit(&audit_url).await, &token).await });
    assert_eq!(result.first_broken_seq, 700, "{result:?}");
    assert!(result.problem.contains("missing"), "{result:?}");
    assert!(total > 2000);
}

/// control 12.4.1: the chain's end is anchored outside the database. Someone with the
/// database owner's rights replaces the newest entry with a forged one whose hashes are
/// recomputed (the chain alone still verifies), then deletes the newest entries: each
/// is reported, at its position, against the anchored head.
#[test]
fn control_12_4_1_a_rewritten_or_shortened_chain_is_caught_by_its_anchor() {
    let cluster = Cluster::start(0, 0, options());
    let token = cluster_owner_token(&cluster);
    let (audit_url, account_url, root) = (
        cluster.audit_url(),
        cluster.account_url(),
        cluster.root.clone(),
    );
    let (tenant, last) = block_on({
        let (token, audit_url) = (token.clone(), audit_url.clone());
        async move {
            let tenant = cluster::tenant_of(&account_url, &token).await;
            let emitter = emitter(&root).await;
            let mut client = audit(&audit_url).await;
            let before = wait_for_entries(&mut client, &token, 3)
                .await
                .entries_checked;
            for i in 0..10 {
                emitter
                    .emit(
                        AuditRecord::new(&tenant, Actor::user("tester"), "test.anchor")
                            .target(format!("item/{i}")),
                    )
                    .await
                    .expect("publish");
            }
            let result = wait_for_entries(&mut client, &token, before + 10).await;
            assert!(result.intact, "{result:?}");
            (tenant, result.entries_checked)
        }
    });
    // The anchored head follows the newest entry (written just after it is committed).
    let heads = cluster.layout().audit_heads_bucket();
    let key = uuid::Uuid::parse_str(&tenant)
        .expect("tenant id")
        .simple()
        .to_string();
    block_on(async move {
        let js = async_nats::jetstream::new(
            async_nats::connect(cluster::nats_url())
                .await
                .expect("nats"),
        );
        let bucket = js.get_key_value(heads).await.expect("heads bucket");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let head = bucket.get(&key).await.expect("read head");
            let seq = head
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(&v).ok())
                .and_then(|v| v["seq"].as_u64());
            if seq == Some(last) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the head never reached {last}: {seq:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let owner = cluster::database_url();
    let table = format!("\"{}_audit\".audit_log", cluster.root);
    let (ok, previous) = cluster::psql(
        &owner,
        &format!(
            "SELECT encode(hash, 'hex') FROM {table} WHERE seq = {}",
            last - 1
        ),
    );
    assert!(ok, "{previous}");
    let tenant = uuid::Uuid::parse_str(&tenant).expect("tenant id");
    let forged = kiroku_audit::chain::Entry {
        tenant_id: tenant.to_string(),
        seq: last as i64,
        event_id: "forged".into(),
        occurred_at_us: 1_767_225_600_000_000,
        actor_id: "tester".into(),
        actor_kind: "user".into(),
        action: "test.forged".into(),
        target: String::new(),
        outcome: "success".into(),
        source_ip: String::new(),
        details: Default::default(),
        trace_id: String::new(),
    };
    let hash = forged.hash(&hex::decode(previous.trim()).expect("hex"));
    let (ok, output) = cluster::psql(
        &owner,
        &format!(
            "BEGIN; DELETE FROM {table} WHERE seq = {last}; \
             INSERT INTO {table} (tenant_id, seq, event_id, occurred_at, actor_id, actor_kind, \
               action, target, outcome, source_ip, details, trace_id, prev_hash, hash) \
             VALUES ('{tenant}', {last}, 'forged', '2026-01-01 00:00:00+00', 'tester', 'user', \
               'test.forged', '', 'success', '', '{{}}', '', decode('{}', 'hex'), \
               decode('{}', 'hex')); COMMIT;",
            previous.trim(),
            hex::encode(hash)
        ),
    );
    assert!(ok, "{output}");
    let verify_now = || {
        let (audit_url, token) = (audit_url.clone(), token.clone());
        block_on(async move { verify(&mut audit(&audit_url).await, &token).await })
    };
    let result = verify_now();
    assert!(!result.intact, "a rewritten chain verified: {result:?}");
    assert_eq!(result.first_broken_seq, last, "{result:?}");
    assert!(result.problem.contains("rewritten"), "{result:?}");

    let (ok, output) = cluster::psql(
        &owner,
        &format!("DELETE FROM {table} WHERE seq > {}", last - 3),
    );
    assert!(ok, "{output}");
    let result = verify_now();
    assert!(!result.intact, "a shortened chain verified: {result:?}");
    assert_eq!(result.first_broken_seq, last - 2, "{result:?}");
    assert!(result.problem.contains("missing"), "{result:?}");
}

/// Hostile input never stops the audit log. Sign-ins with a NUL in the e-mail are
/// refused as INVALID_ARGUMENT (before anything is counted or audited); an event whose
/// strings hold NUL and escape characters (published straight to `AUDIT`, as a buggy or
/// older service might) is stored with those characters replaced; an undecodable
/// message goes to the dead-letter stream with its reason, is counted on `/metrics`, and
/// the events after it are stored as usual.
#[test]
fn hostile_audit_input_is_refused_or_stored_harmlessly_and_poison_is_set_aside() {
    use kiroku_proto::account::v1 as account;
    let cluster = Cluster::start(0, 0, options());
    let token = cluster_owner_token(&cluster);
    let (audit_url, account_url) = (cluster.audit_url(), cluster.account_url());
    let slug = cluster.tenant_slug.clone();
    let layout = cluster.layout();
    block_on({
        let token = token.clone();
        async move {
            let tenant = cluster::tenant_of(&account_url, &token).await;
            let mut accounts =
                account::account_service_client::AccountServiceClient::connect(account_url)
                    .await
                    .expect("account");
            for i in 0..12 {
                let refused = accounts
                    .login(account::LoginRequest {
                        tenant_slug: slug.clone(),
                        email: format!("owner{i}\0@example.com"),
                        password: "wrong password!".into(),
                        totp_code: String::new(),
                    })
                    .await
                    .expect_err("NUL in the e-mail");
                assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
                assert!(
                    refused.message().contains("email holds a NUL"),
                    "{refused:?}"
                );
            }
            let mut client = audit(&audit_url).await;
            let before = wait_for_entries(&mut client, &token, 3)
                .await
                .entries_checked;

            let js = async_nats::jetstream::new(
                async_nats::connect(cluster::nats_url())
                    .await
                    .expect("nats"),
            );
            let hostile = kiroku_proto::events::v1::AuditEvent {
                event_id: "hostile-strings".into(),
                tenant_id: tenant.clone(),
                action: "test.hostile".into(),
                target: "email/a\0b\u{1b}[2J".into(),
                details: [("note".to_string(), "x\0y".to_string())].into(),
                ..Default::default()
            };
            let subject = layout.audit_subject(&tenant, "test.hostile");
            let publish = |payload: Vec<u8>| {
                let (js, subject) = (js.clone(), subject.clone());
                async move {
                    js.publish(subject, payload.into())
                        .await
                        .expect("publish")
                        .await
                        .expect("stored in AUDIT");
                }
            };
            publish(prost::Message::encode_to_vec(&hostile)).await;
            publish(b"\xff\xff not an audit event".to_vec()).await;
            let after = kiroku_proto::events::v1::AuditEvent {
                event_id: "after-the-poison".into(),
                tenant_id: tenant.clone(),
                action: "test.after".into(),
                ..Default::default()
            };
            publish(prost::Message::encode_to_vec(&after)).await;

            let result = wait_for_entries(&mut client, &token, before + 2).await;
            assert!(result.intact, "{result:?}");
            let listed = client
                .list_events(authorized(
                    pb::ListEventsRequest {
                        filter: Some(pb::Filter {
                            action: "test.hostile".into(),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .expect("list")
                .into_inner();
            let entry = listed.entries.first().expect("the hostile event is stored");
            assert_eq!(entry.target, "email/a\u{fffd}b\u{fffd}[2J");
            assert_eq!(
                entry.details.get("note").map(String::as_str),
                Some("x\u{fffd}y")
            );

            // The undecodable message waits in the dead-letter stream, with its reason.
            let dead = js
                .get_stream(layout.dead_letter_stream())
                .await
                .expect("dead-letter stream");
            let message = dead
                .get_last_raw_message_by_subject(&layout.dead_letter_subject("audit"))
                .await
                .expect("a dead letter");
            assert_eq!(message.payload.as_ref(), b"\xff\xff not an audit event");
            let headers = message.headers;
            let reason = headers
                .get(kiroku_core::nats::DEAD_REASON_HEADER)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default();
            assert!(reason.contains("undecodable audit event"), "{reason:?}");
            assert_eq!(
                headers
                    .get(kiroku_core::nats::DEAD_SUBJECT_HEADER)
                    .map(|v| v.as_str()),
                Some(subject.as_str())
            );
        }
    });
    let admin = &cluster.audit.as_ref().expect("audit").admin;
    let (_, metrics) = cluster::http_get(admin, "/metrics").expect("/metrics");
    assert!(
        metrics.contains("kiroku_consumer_dead_letters_total{consumer=\"audit\"} 1"),
        "{metrics}"
    );

    // A good event set aside (as during a long database outage) is replayed by the
    // operator to where it came from and stored; the undecodable one stays listed.
    let layout = cluster.layout();
    let tenant_token = block_on({
        let (account_url, token) = (cluster.account_url(), token.clone());
        async move { cluster::tenant_of(&account_url, &token).await }
    });
    let subject = layout.audit_subject(&tenant_token, "test.replayed");
    block_on({
        let (layout, subject) = (layout.clone(), subject.clone());
        async move {
            let js = async_nats::jetstream::new(
                async_nats::connect(cluster::nats_url())
                    .await
                    .expect("nats"),
            );
            let event = kiroku_proto::events::v1::AuditEvent {
                event_id: "set-aside".into(),
                tenant_id: tenant_token,
                action: "test.replayed".into(),
                ..Default::default()
            };
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(kiroku_core::nats::DEAD_SUBJECT_HEADER, subject.as_str());
            headers.insert(
                kiroku_core::nats::DEAD_REASON_HEADER,
                "still failing after 50 deliveries: database down",
            );
            js.publish_with_headers(
                layout.dead_letter_subject("audit"),
                headers,
                prost::Message::encode_to_vec(&event).into(),
            )
            .await
            .expect("publish")
            .await
            .expect("stored");
        }
    });
    let dead_letters = |args: &[&str]| {
        let output = std::process::Command::new(cluster::kiroku())
            .args(["admin", "dead-letters"])
            .args(args)
            .env("KIROKU_NATS_URL", cluster::nats_url())
            .env("KIROKU_CLUSTER", &cluster.root)
            .output()
            .expect("kiroku admin dead-letters");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let listed = dead_letters(&["list"]);
    let line = listed
        .lines()
        .find(|l| l.contains("database down"))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(listed.contains("undecodable audit event"), "{listed}");
    let seq = line.split_whitespace().next().expect("seq").to_string();
    assert!(dead_letters(&["replay", "--seq", &seq]).contains("replayed 1"));
    let listed = dead_letters(&["list"]);
    assert!(!listed.contains("database down"), "{listed}");
    assert!(listed.contains("undecodable audit event"), "{listed}");
    let audit_url = cluster.audit_url();
    block_on(async move {
        let mut client = audit(&audit_url).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let entries = cluster::audit_entries(&mut client, &token, "test.replayed").await;
            if entries.len() == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the replayed event was not stored"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

/// The MFA token of the cluster's owner, made once per cluster (enrolling again is
/// refused), kept in the cluster folder.
fn cluster_owner_token(cluster: &Cluster) -> String {
    let path = cluster.dir.path().join("owner-mfa-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        return token;
    }
    let token = cluster.owner_token_with_mfa();
    std::fs::write(&path, &token).expect("write token");
    token
}

/// control 12.4.4 and 12.4.1: filters, newest-first pagination without gaps or
/// repeats, times in +09:00 by default, the tenant's own zone when set, CSV and JSON
/// exports of exactly the filtered entries.
#[test]
fn control_12_4_4_listing_filters_pages_and_renders_in_jst() {
    let cluster = Cluster::start(0, 0, options());
    let token = cluster_owner_token(&cluster);
    let (audit_url, account_url, root) = (
        cluster.audit_url(),
        cluster.account_url(),
        cluster.root.clone(),
    );
    block_on(async move {
        let tenant = cluster::tenant_of(&account_url, &token).await;
        let emitter = emitter(&root).await;
        for i in 0..25 {
            let actor = if i % 5 == 0 { "alice" } else { "bot" };
            emitter
                .emit(
                    AuditRecord::new(&tenant, Actor::user(actor), "test.ping")
                        .target(format!("meeting/m{}", i % 2))
                        .detail("n", i.to_string()),
                )
                .await
                .expect("publish");
        }
        let mut client = audit(&audit_url).await;
        wait_for_entries(&mut client, &token, 25).await;
        let list = |filter: pb::Filter, page_size: u32, page_token: String, zone: &str| {
            authorized(
                pb::ListEventsRequest {
                    filter: Some(filter),
                    page_size,
                    page_token,
                    time_zone: zone.into(),
                },
                &token,
            )
        };
        let pings = pb::Filter {
            action: "test.ping".into(),
            ..Default::default()
        };
        let mut seen = Vec::new();
        let mut page_token = String::new();
        let mut pages = 0;
        loop {
            let page = client
                .list_events(list(pings.clone(), 10, page_token.clone(), ""))
                .await
                .expect("page")
                .into_inner();
            pages += 1;
            assert_eq!(page.time_zone, "Asia/Tokyo");
            for entry in &page.entries {
                assert!(
                    entry.occurred_at.ends_with("+09:00"),
                    "{}",
                    entry.occurred_at
                );
                assert_eq!(entry.action, "test.ping");
            }
            seen.extend(page.entries.iter().map(|e| e.seq));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(pages, 3);
        assert_eq!(seen.len(), 25);
        assert!(
            seen.windows(2).all(|w| w[0] > w[1]),
            "newest first, no repeats: {seen:?}"
        );

        let by_actor = client
            .list_events(list(
                pb::Filter {
                    actor_id: "alice".into(),
                    ..pings.clone()
                },
                100,
                String::new(),
                "",
            ))
            .await
            .expect("actor filter")
            .into_inner()
            .entries;
        assert_eq!(by_actor.len(), 5);
        let by_meeting = client
            .list_events(list(
                pb::Filter {
                    meeting_id: "m1".into(),
                    ..pings.clone()
                },
                100,
                String::new(),
                "",
            ))
            .await
            .expect("meeting filter")
            .into_inner()
            .entries;
        assert_eq!(by_meeting.len(), 12);
        let future = client
            .list_events(list(
                pb::Filter {
                    from: Some(prost_types::Timestamp::from(
                        std::time::SystemTime::now() + Duration::from_secs(3600),
                    )),
                    ..pings.clone()
                },
                100,
                String::new(),
                "",
            ))
            .await
            .expect("time filter")
            .into_inner()
            .entries;
        assert!(future.is_empty());

        // The request's zone, then the tenant's setting.
        let utc = client
            .list_events(list(pings.clone(), 1, String::new(), "UTC"))
            .await
            .expect("utc")
            .into_inner();
        assert!(
            utc.entries[0].occurred_at.ends_with("+00:00"),
            "{:?}",
            utc.entries[0]
        );
        let bad = client
            .list_events(list(pings.clone(), 1, String::new(), "Mars/Olympus"))
            .await
            .expect_err("bad zone");
        assert_eq!(bad.code(), Code::InvalidArgument);
        client
            .set_time_zone(authorized(
                pb::SetTimeZoneRequest {
                    time_zone: "America/New_York".into(),
                },
                &token,
            ))
            .await
            .expect("set zone");
        let ny = client
            .list_events(list(pings.clone(), 1, String::new(), ""))
            .await
            .expect("ny")
            .into_inner();
        assert_eq!(ny.time_zone, "America/New_York");
        assert!(
            ny.entries[0].occurred_at.ends_with("-05:00"),
            "{:?}",
            ny.entries[0]
        );

        for (format, content) in [
            (pb::ExportFormat::Csv, "text/csv"),
            (pb::ExportFormat::Json, "application/json"),
        ] {
            let export = client
                .export_events(authorized(
                    pb::ExportEventsRequest {
                        filter: Some(pings.clone()),
                        format: format as i32,
                        time_zone: "Asia/Tokyo".into(),
                    },
                    &token,
                ))
                .await
                .expect("export")
                .into_inner();
            assert_eq!(export.entries, 25);
            assert_eq!(export.content_type, content);
            let text = String::from_utf8(export.data).expect("utf-8");
            if format == pb::ExportFormat::Csv {
                let mut reader = csv::Reader::from_reader(text.as_bytes());
                assert_eq!(reader.headers().expect("header").get(0), Some("seq"));
                let rows: Vec<_> = reader.records().map(|r| r.expect("row")).collect();
                assert_eq!(rows.len(), 25);
                assert!(rows.iter().all(|r| r[1].ends_with("+09:00")));
            } else {
                let rows: Vec<serde_json::Value> = serde_json::from_str(&text).expect("json");
                assert_eq!(rows.len(), 25);
                assert!(
                    rows[0]["seq"].as_u64() < rows[24]["seq"].as_u64(),
                    "oldest first"
                );
            }
        }
    });
}

/// control 12.4.1 and 13.1.3: a tenant's admin never sees another tenant's entries, and
/// the log is for admins with MFA only.
#[test]
fn control_12_4_1_tenants_see_only_their_own_log() {
    let cluster_a = Cluster::start(0, 0, options());
    let token_a = cluster_owner_token(&cluster_a);
    // Tenant B: registered on the same cluster's account service.
    let account_url = cluster_a.account_url();
    let audit_url = cluster_a.audit_url();
    let root = cluster_a.root.clone();
    block_on(async move {
        use kiroku_proto::account::v1 as account;
        let mut accounts =
            account::account_service_client::AccountServiceClient::connect(account_url.clone())
                .await
                .expect("account");
        let registered = accounts
            .register(account::RegisterRequest {
                tenant_slug: "audit-b".into(),
                tenant_name: "B".into(),
                email: "owner@audit-b.example.com".into(),
                display_name: "B".into(),
                password: "another long passphrase".into(),
            })
            .await
            .expect("register B")
            .into_inner();
        let b_plain = registered.tokens.expect("tokens").access_token;
        let mut client = audit(&audit_url).await;
        let denied = client
            .list_events(authorized(pb::ListEventsRequest::default(), &b_plain))
            .await
            .expect_err("no mfa");
        assert_eq!(denied.code(), Code::PermissionDenied);
        let enrollment = accounts
            .enroll_mfa(authorized(
                account::EnrollMfaRequest {
                    current_password: "another long passphrase".into(),
                },
                &b_plain,
            ))
            .await
            .expect("enroll")
            .into_inner();
        let secret = kiroku_account::totp::decode_secret(&enrollment.secret).expect("secret");
        let code = kiroku_account::totp::code_at(&secret, kiroku_account::tokens::unix_now())
            .expect("code");
        let token_b = accounts
            .confirm_mfa(authorized(
                account::ConfirmMfaRequest { totp_code: code },
                &b_plain,
            ))
            .await
            .expect("confirm")
            .into_inner()
            .access_token;

        let tenant_a = cluster::tenant_of(&account_url, &token_a).await;
        let emitter = emitter(&root).await;
        for _ in 0..5 {
            emitter
                .emit(AuditRecord::new(
                    &tenant_a,
                    Actor::user("a"),
                    "test.secret-of-a",
                ))
                .await
                .expect("publish");
        }
        wait_for_entries(&mut client, &token_a, 5).await;
        let a_entries = client
            .list_events(authorized(pb::ListEventsRequest::default(), &token_a))
            .await
            .expect("A")
            .into_inner()
            .entries;
        let b_entries = client
            .list_events(authorized(pb::ListEventsRequest::default(), &token_b))
            .await
            .expect("B")
            .into_inner()
            .entries;
        assert!(a_entries.iter().any(|e| e.action == "test.secret-of-a"));
        assert!(!b_entries.is_empty(), "B's own sign-up events");
        assert!(b_entries.iter().all(|e| e.action != "test.secret-of-a"));
        let a_ids: Vec<_> = a_entries.iter().map(|e| &e.event_id).collect();
        assert!(b_entries.iter().all(|e| !a_ids.contains(&&e.event_id)));
        // Each tenant's chain starts at 1 and verifies on its own.
        assert!(verify(&mut client, &token_b).await.intact);
        assert_eq!(b_entries.iter().map(|e| e.seq).min(), Some(1));
    });
}

/// `kiroku admin audit list|verify|export|time-zone` as an admin signed in with MFA.
#[test]
fn admin_audit_cli_lists_verifies_and_exports() {
    let cluster = Cluster::start(0, 0, options());
    let (ok, _, err) = cluster.run_cli(&["admin", "audit", "list"], None);
    assert!(!ok && err.contains("mfa required"), "{err}");
    cluster.enroll_owner_mfa_with_cli();

    // The set-up's own events: registration, sign-in, MFA enrolment.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (ok, out, err) = cluster.run_cli(
            &["admin", "audit", "list", "--action", "mfa.enrolled"],
            None,
        );
        assert!(ok, "{err}");
        if out.contains("mfa.enrolled") {
            assert!(out.contains("+09:00"), "{out}");
            // The actor as a person reads it: the owner's e-mail, recorded with the event.
            assert!(out.contains(&format!("{}:", cluster.owner_email)), "{out}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "mfa.enrolled never listed: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, out, err) = cluster.run_cli(&["admin", "audit", "verify"], None);
    assert!(ok && out.contains("intact"), "{out}{err}");
    let file = cluster.dir.path().join("audit.csv");
    let (ok, _, err) = cluster.run_cli(
        &[
            "admin",
            "audit",
            "export",
            "--format",
            "csv",
            "--out",
            file.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(ok, "{err}");
    let csv = std::fs::read_to_string(&file).expect("export written");
    assert!(csv.starts_with("seq,occurred_at,"), "{csv}");
    assert!(
        csv.contains("tenant.registered") && csv.contains("mfa.enrolled"),
        "{csv}"
    );
    let (ok, out, _) = cluster.run_cli(&["admin", "audit", "time-zone", "UTC"], None);
    assert!(ok && out.contains("UTC"), "{out}");
    let (ok, out, _) = cluster.run_cli(&["admin", "audit", "list", "--limit", "1"], None);
    assert!(ok && out.contains("+00:00"), "{out}");
    let (ok, _, err) = cluster.run_cli(&["admin", "audit", "export", "--format", "xml"], None);
    assert!(!ok && err.contains("use csv or json"), "{err}");
}

/// Opens a live stream as `token` (no worker needed), waits for its session, then hangs
/// up; or returns the refusal.
async fn stream_once(gateway_url: &str, token: &str, meeting: &str) -> Result<(), tonic::Status> {
    use kiroku_proto::transcribe::v1 as api;
    let mut client =
        api::transcription_client::TranscriptionClient::connect(gateway_url.to_string())
            .await
            .expect("gateway");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let config = api::StreamTranscribeRequest {
        request: Some(api::stream_transcribe_request::Request::Config(
            api::StreamConfig {
                audio_format: Some(api::AudioFormat {
                    encoding: api::AudioEncoding::Linear16 as i32,
                    sample_rate_hz: 16_000,
                    channels: 1,
                }),
                meeting_id: meeting.into(),
                ..Default::default()
            },
        )),
    };
    tx.send(config).await.expect("config");
    let mut responses = client
        .stream_transcribe(authorized(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            token,
        ))
        .await?
        .into_inner();
    responses.message().await?.expect("session");
    drop(tx);
    drop(responses);
    Ok(())
}

/// control 12.4.1: every action of the one list (`kiroku_core::audit::actions::ALL`) is
/// performed, and the log holds each exactly as many times as it was performed.
#[test]
fn control_12_4_1_every_audited_action_is_logged_exactly_once_per_occurrence() {
    use kiroku_core::audit::actions as a;
    let cluster = Cluster::start(
        1,
        0,
        Options {
            storage: true,
            ..options()
        },
    );
    let (account_url, audit_url, gateway_url) = (
        cluster.account_url(),
        cluster.audit_url(),
        cluster.gateway_url(0),
    );
    let (slug, email) = (cluster.tenant_slug.clone(), cluster.owner_email.clone());
    let (root, storage_url) = (cluster.root.clone(), cluster.storage_url());
    block_on(async move {
        let mut expected = Expected::default();
        expected.did(a::TENANT_REGISTERED); // the cluster's own registration
        let mut accounts =
            account::account_service_client::AccountServiceClient::connect(account_url.clone())
                .await
                .expect("account");
        let admin = owner_signs_in_with_mfa(&mut accounts, &slug, &email, &mut expected).await;
        a_member_joins_is_throttled_and_leaves(&mut accounts, &slug, &admin, &mut expected).await;
        an_api_key_is_created_and_revoked(&mut accounts, &admin, &mut expected).await;
        streams_need_consent(&mut accounts, &gateway_url, &admin, &mut expected).await;
        the_operator_publishes_a_notice(&audit_url, &slug, &mut expected).await;
        let minutes = Minutes {
            account_url: &account_url,
            storage_url: &storage_url,
            root: &root,
            slug: &slug,
            admin: &admin,
        };
        minutes
            .are_labelled_exported_erased_and_imported(&mut expected)
            .await;

        for action in a::ALL {
            assert!(
                expected.0.contains_key(action),
                "the test does not perform {action}"
            );
        }
        let stored = stored_event_counts(&audit_url, &admin, expected.0.values().sum()).await;
        let expected: BTreeMap<String, u64> = expected
            .0
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        assert_eq!(stored, expected);
    });
}

/// The audit events a test caused, by action: each step says what it did.
#[derive(Debug, Default)]
struct Expected(BTreeMap<&'static str, u64>);

impl Expected {
    fn did(&mut self, action: &'static str) {
        *self.0.entry(action).or_default() += 1;
    }
}

type Accounts = account::account_service_client::AccountServiceClient<Channel>;

fn login(slug: &str, email: &str, password: &str, code: &str) -> account::LoginRequest {
    account::LoginRequest {
        tenant_slug: slug.into(),
        email: email.into(),
        password: password.into(),
        totp_code: code.into(),
    }
}

/// A wrong password, a sign-in, MFA enrolment, a wrong code and a sign-in with MFA:
/// the owner's admin-capable access token.
async fn owner_signs_in_with_mfa(
    accounts: &mut Accounts,
    slug: &str,
    email: &str,
    expected: &mut Expected,
) -> String {
    use kiroku_core::audit::actions as a;
    let pw = cluster::OWNER_PASSWORD;
    accounts
        .login(login(slug, email, "wrong password!", ""))
        .await
        .expect_err("wrong");
    expected.did(a::LOGIN_FAILED);
    let owner = accounts
        .login(login(slug, email, pw, ""))
        .await
        .expect("login")
        .into_inner();
    expected.did(a::LOGIN_SUCCEEDED);
    let enrollment = accounts
        .enroll_mfa(authorized(
            account::EnrollMfaRequest {
                current_password: pw.into(),
            },
            &owner.access_token,
        ))
        .await
        .expect("enroll")
        .into_inner();
    let secret = kiroku_account::totp::decode_secret(&enrollment.secret).expect("secret");
    let now = kiroku_account::tokens::unix_now();
    let code = |offset: u64| kiroku_account::totp::code_at(&secret, now + offset).expect("code");
    accounts
        .confirm_mfa(authorized(
            account::ConfirmMfaRequest { totp_code: code(0) },
            &owner.access_token,
        ))
        .await
        .expect("confirm");
    expected.did(a::MFA_ENROLLED);
    accounts
        .login(login(slug, email, pw, "000000"))
        .await
        .expect_err("wrong code");
    expected.did(a::MFA_FAILED);
    let owner = accounts
        .login(login(slug, email, pw, &code(30)))
        .await
        .expect("mfa login")
        .into_inner();
    expected.did(a::LOGIN_SUCCEEDED);
    expected.did(a::MFA_USED);
    owner.access_token
}

/// A member is invited and joins, changes the password, reuses a refresh token, signs
/// in and out, is throttled after five wrong passwords (audited once however often it
/// retries), gets another role, and is disabled and deleted.
async fn a_member_joins_is_throttled_and_leaves(
    accounts: &mut Accounts,
    slug: &str,
    admin: &str,
    expected: &mut Expected,
) {
    use kiroku_core::audit::actions as a;
    let invitation = accounts
        .invite_user(authorized(
            account::InviteUserRequest {
                email: "ben@example.com".into(),
                role: account::Role::Member as i32,
            },
            admin,
        ))
        .await
        .expect("invite")
        .into_inner();
    expected.did(a::USER_INVITED);
    let ben = accounts
        .accept_invitation(account::AcceptInvitationRequest {
            invitation_token: invitation.invitation_token,
            display_name: "Ben".into(),
            password: "bens long passphrase".into(),
        })
        .await
        .expect("accept")
        .into_inner();
    expected.did(a::USER_JOINED);
    let ben_id = ben.principal.clone().expect("principal").subject;
    let ben = accounts
        .change_password(authorized(
            account::ChangePasswordRequest {
                current_password: "bens long passphrase".into(),
                new_password: "bens new passphrase".into(),
            },
            &ben.access_token,
        ))
        .await
        .expect("change")
        .into_inner();
    expected.did(a::PASSWORD_CHANGED);
    let rotated = accounts
        .refresh(account::RefreshRequest {
            refresh_token: ben.refresh_token.clone(),
        })
        .await
        .expect("refresh")
        .into_inner();
    accounts
        .refresh(account::RefreshRequest {
            refresh_token: ben.refresh_token.clone(),
        })
        .await
        .expect_err("reuse");
    expected.did(a::TOKEN_REUSE_DETECTED);
    let _ = rotated;
    let session = accounts
        .login(login(slug, "ben@example.com", "bens new passphrase", ""))
        .await
        .expect("ben")
        .into_inner();
    expected.did(a::LOGIN_SUCCEEDED);
    accounts
        .logout(account::LogoutRequest {
            refresh_token: session.refresh_token,
        })
        .await
        .expect("logout");
    expected.did(a::LOGOUT);
    for _ in 0..5 {
        accounts
            .login(login(slug, "ben@example.com", "not bens password", ""))
            .await
            .expect_err("wrong");
        expected.did(a::LOGIN_FAILED);
    }
    accounts
        .login(login(slug, "ben@example.com", "bens new passphrase", ""))
        .await
        .expect_err("throttled");
    expected.did(a::LOGIN_THROTTLED);
    // More attempts in the same window are refused too, but audited once: the
    // exact count below fails if each wrote its own event.
    for _ in 0..5 {
        let refused = accounts
            .login(login(slug, "ben@example.com", "bens new passphrase", ""))
            .await
            .expect_err("still throttled");
        assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    }
    accounts
        .set_role(authorized(
            account::SetRoleRequest {
                user_id: ben_id.clone(),
                role: account::Role::Viewer as i32,
            },
            admin,
        ))
        .await
        .expect("role");
    expected.did(a::ROLE_CHANGED);
    accounts
        .disable_user(authorized(
            account::UserRef {
                user_id: ben_id.clone(),
            },
            admin,
        ))
        .await
        .expect("disable");
    expected.did(a::USER_DISABLED);
    accounts
        .delete_user(authorized(account::UserRef { user_id: ben_id }, admin))
        .await
        .expect("delete");
    expected.did(a::USER_DELETED);
}

async fn an_api_key_is_created_and_revoked(
    accounts: &mut Accounts,
    admin: &str,
    expected: &mut Expected,
) {
    use kiroku_core::audit::actions as a;
    let key = accounts
        .create_api_key(authorized(
            account::CreateApiKeyRequest {
                name: "bot".into(),
                scopes: vec!["transcribe".into()],
            },
            admin,
        ))
        .await
        .expect("key")
        .into_inner();
    expected.did(a::APIKEY_CREATED);
    accounts
        .revoke_api_key(authorized(
            account::RevokeApiKeyRequest {
                key_id: key.key.expect("key").key_id,
            },
            admin,
        ))
        .await
        .expect("revoke");
    expected.did(a::APIKEY_REVOKED);
}

/// A stream, a consent policy that refuses the next one, and the consent it needs.
async fn streams_need_consent(
    accounts: &mut Accounts,
    gateway_url: &str,
    admin: &str,
    expected: &mut Expected,
) {
    use kiroku_core::audit::actions as a;
    stream_once(gateway_url, admin, "standup")
        .await
        .expect("stream");
    expected.did(a::STREAM_STARTED);
    expected.did(a::STREAM_ENDED);
    accounts
        .set_consent_policy(authorized(
            account::SetConsentPolicyRequest {
                policy: account::ConsentPolicy::AllParticipants as i32,
            },
            admin,
        ))
        .await
        .expect("policy");
    expected.did(a::CONSENT_POLICY_CHANGED);
    let refused = stream_once(gateway_url, admin, "board")
        .await
        .expect_err("no consent");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    expected.did(a::STREAM_REFUSED);
    accounts
        .set_meeting_participants(authorized(
            account::SetMeetingParticipantsRequest {
                meeting_id: "board".into(),
                participants: vec!["Ana".into()],
            },
            admin,
        ))
        .await
        .expect("participants");
    expected.did(a::CONSENT_PARTICIPANTS_SET);
    accounts
        .record_consent(authorized(
            account::RecordConsentRequest {
                meeting_id: "board".into(),
                participant: "Ana".into(),
                method: "verbal".into(),
            },
            admin,
        ))
        .await
        .expect("consent");
    expected.did(a::CONSENT_GIVEN);
}

async fn the_operator_publishes_a_notice(audit_url: &str, slug: &str, expected: &mut Expected) {
    use kiroku_core::audit::actions as a;
    let mut publish = tonic::Request::new(pb::PublishNoticeRequest {
        kind: pb::NoticeKind::Change as i32,
        title: "New default model".into(),
        body: "base replaces tiny.en on 1 December.".into(),
        tenants: vec![slug.to_string()],
        detected_at: None,
    });
    publish.metadata_mut().insert(
        "x-kiroku-operator-token",
        cluster::OPERATOR_TOKEN.parse().expect("ascii"),
    );
    pb::notice_service_client::NoticeServiceClient::connect(audit_url.to_string())
        .await
        .expect("notices")
        .publish_notice(publish)
        .await
        .expect("publish");
    expected.did(a::NOTICE_PUBLISHED);
}

/// The tenant's minutes and the cluster they live in.
struct Minutes<'a> {
    account_url: &'a str,
    storage_url: &'a str,
    root: &'a str,
    slug: &'a str,
    admin: &'a str,
}

impl Minutes<'_> {
    /// A final as a worker publishes it, then a label added and removed, a meeting
    /// export, a tenant export, erasure, and the bundle imported back.
    async fn are_labelled_exported_erased_and_imported(&self, expected: &mut Expected) {
        use kiroku_core::audit::actions as a;
        let (admin, slug) = (self.admin, self.slug);
        use kiroku_proto::storage::v1 as storage;
        let tenant = cluster::tenant_of(self.account_url, admin).await;
        let layout = kiroku_core::nats::Layout::new(self.root).expect("layout");
        let final_ = kiroku_proto::events::v1::TranscriptResult {
            tenant_id: tenant.clone(),
            session_id: "s-audit".into(),
            meeting_id: "minutes-1".into(),
            result: Some(kiroku_proto::transcribe::v1::StreamingResult {
                result_seq: 1,
                is_final: true,
                segment: Some(kiroku_proto::transcribe::v1::Segment {
                    end_ms: 1000,
                    text: " hello".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        async_nats::jetstream::new(
            async_nats::connect(cluster::nats_url())
                .await
                .expect("nats"),
        )
        .publish(
            layout.transcript_subject(&tenant, "s-audit"),
            prost::Message::encode_to_vec(&final_).into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
        let mut minutes =
            storage::storage_client::StorageClient::connect(self.storage_url.to_string())
                .await
                .expect("storage");
        let deadline = Instant::now() + Duration::from_secs(30);
        let label = loop {
            match minutes
                .add_label(authorized(
                    storage::AddLabelRequest {
                        meeting_id: "minutes-1".into(),
                        kind: storage::LabelKind::Tag as i32,
                        text: "finance".into(),
                        ..Default::default()
                    },
                    admin,
                ))
                .await
            {
                Ok(label) => break label.into_inner(),
                Err(status) => assert_eq!(status.code(), Code::NotFound),
            }
            assert!(Instant::now() < deadline, "the final was never stored");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        expected.did(a::LABEL_ADDED);
        minutes
            .remove_label(authorized(
                storage::RemoveLabelRequest {
                    label_id: label.label_id,
                },
                admin,
            ))
            .await
            .expect("remove");
        expected.did(a::LABEL_REMOVED);
        minutes
            .export_meeting(authorized(
                storage::ExportMeetingRequest {
                    meeting_id: "minutes-1".into(),
                    format: storage::ExportFormat::Srt as i32,
                },
                admin,
            ))
            .await
            .expect("export");
        expected.did(a::MEETING_EXPORTED);
        let mut bundle = minutes
            .export_tenant(authorized(storage::ExportTenantRequest {}, admin))
            .await
            .expect("tenant export")
            .into_inner();
        let mut files = Vec::new();
        while let Some(file) = bundle.message().await.expect("bundle") {
            files.push(file);
        }
        expected.did(a::TENANT_EXPORTED);
        minutes
            .erase_tenant(authorized(
                storage::EraseTenantRequest {
                    confirm_tenant_slug: slug.to_string(),
                },
                admin,
            ))
            .await
            .expect("erase");
        expected.did(a::TENANT_ERASED);
        // The bundle back into the emptied tenant, manifest first.
        files.rotate_right(1);
        minutes
            .import_tenant(authorized(futures::stream::iter(files), admin))
            .await
            .expect("import");
        expected.did(a::TENANT_IMPORTED);
    }
}

/// Waits until the tenant's chain holds `total` events (the stream's end event comes
/// when the gateway notices the hang-up), then counts the stored events by action.
async fn stored_event_counts(audit_url: &str, admin: &str, total: u64) -> BTreeMap<String, u64> {
    let mut audit = audit(audit_url).await;
    let stored = wait_for_entries(&mut audit, admin, total)
        .await
        .entries_checked;
    assert!(stored >= total, "{stored} of {total} events stored");
    // Anything more (a duplicate) would show in the counts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = audit
            .list_events(authorized(
                pb::ListEventsRequest {
                    page_size: 1000,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
                admin,
            ))
            .await
            .expect("list")
            .into_inner();
        for entry in &page.entries {
            *counts.entry(entry.action.clone()).or_default() += 1;
        }
        if page.next_page_token.is_empty() {
            return counts;
        }
        page_token = page.next_page_token;
    }
}

/// control CLD.12.4.5: the per-tenant usage view counts a real streamed meeting (its
/// audio minutes, finals and final latency) and a refused stream, per day in JST.
#[test]
fn control_cld_12_4_5_usage_view_counts_streams_audio_errors_and_latency() {
    use kiroku_proto::account::v1 as account;
    let cluster = Cluster::start(1, 1, options());
    let wav = kiroku_tests::speech::synthesize(
        cluster.dir.path(),
        "usage",
        "The quarterly budget review starts now. Please share your updates.",
        16_000,
        1,
        0.5,
    )
    .expect("speech");
    let seconds = {
        let reader = hound::WavReader::open(&wav).expect("wav");
        f64::from(reader.duration()) / f64::from(reader.spec().sample_rate)
    };
    let client =
        cluster::StreamClient::spawn(cluster.dir.path(), "u", &wav, &cluster.gateway_url(0), 1.0);
    let report = client.finish(Duration::from_secs(120));
    let finals = report["finals"].as_array().expect("finals").len() as u64;
    assert!(finals >= 1);
    cluster.enroll_owner_mfa_with_cli();
    let admin = cluster.access_token();
    let (account_url, audit_url, gateway_url) = (
        cluster.account_url(),
        cluster.audit_url(),
        cluster.gateway_url(0),
    );
    let today = || {
        chrono::Utc::now()
            .with_timezone(&chrono_tz::Asia::Tokyo)
            .format("%Y-%m-%d")
            .to_string()
    };
    let day_before = today();
    block_on(async move {
        account::account_service_client::AccountServiceClient::connect(account_url)
            .await
            .expect("account")
            .set_consent_policy(authorized(
                account::SetConsentPolicyRequest {
                    policy: account::ConsentPolicy::AllParticipants as i32,
                },
                &admin,
            ))
            .await
            .expect("policy");
        let refused = stream_once(&gateway_url, &admin, "board")
            .await
            .expect_err("no consent");
        assert_eq!(refused.code(), Code::FailedPrecondition);

        let mut audit = audit(&audit_url).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let usage = loop {
            let usage = audit
                .get_usage(usage_in("", &admin))
                .await
                .expect("usage")
                .into_inner();
            let total = usage.total.clone().expect("total");
            if total.refused_streams == 1 && total.finals > 0 {
                break usage;
            }
            assert!(
                Instant::now() < deadline,
                "usage never showed both streams: {usage:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        eprintln!("{usage:?}");
        assert_eq!(usage.time_zone, "Asia/Tokyo");
        let total = usage.total.expect("total");
        assert_eq!(total.streams, 1, "the refused stream never started");
        assert_eq!(total.failed_streams, 0);
        assert_eq!(total.finals, finals);
        let minutes = seconds / 60.0;
        assert!(
            (total.audio_minutes - minutes).abs() <= minutes * 0.05,
            "{} audio minutes for {seconds:.1} s",
            total.audio_minutes
        );
        assert!(total.final_latency_p50_ms > 0);
        assert!(total.final_latency_p95_ms >= total.final_latency_p50_ms);
        assert_eq!(usage.days.len(), 1);
        assert!(
            [day_before, today()].contains(&usage.days[0].date),
            "{:?}",
            usage.days
        );
        assert_eq!(usage.days[0].streams, 1);

        let utc = audit
            .get_usage(usage_in("UTC", &admin))
            .await
            .expect("utc")
            .into_inner();
        assert_eq!(utc.time_zone, "UTC");
        let backwards = audit
            .get_usage(authorized(
                pb::GetUsageRequest {
                    from: Some(prost_types::Timestamp {
                        seconds: 2_000_000_000,
                        nanos: 0,
                    }),
                    to: Some(prost_types::Timestamp {
                        seconds: 1_000_000_000,
                        nanos: 0,
                    }),
                    time_zone: String::new(),
                },
                &admin,
            ))
            .await
            .expect_err("from after to");
        assert_eq!(backwards.code(), Code::InvalidArgument);
    });
    let (ok, out, err) = cluster.run_cli(&["admin", "usage"], None);
    eprintln!("{out}");
    assert!(ok, "{err}");
    let total = out
        .lines()
        .find(|line| line.starts_with("total"))
        .expect("total row");
    let cells: Vec<&str> = total.split_whitespace().collect();
    assert_eq!(&cells[1..4], &["1", "0", "1"], "{out}");
    assert!(out.contains("(days in Asia/Tokyo)"), "{out}");
}

fn usage_in(zone: &str, token: &str) -> tonic::Request<pb::GetUsageRequest> {
    authorized(
        pb::GetUsageRequest {
            time_zone: zone.into(),
            ..Default::default()
        },
        token,
    )
}

/// The gateway is the one public address: the account, audit and notice APIs answer
/// through it unchanged, and the client's address reaches the account service from the
/// connection (a client-supplied `x-forwarded-for` is replaced), while a trusted proxy's
/// header is believed (control 12.4.1: the audit log records who, and from where).
#[test]
fn the_gateway_forwards_account_audit_and_notice_apis_with_the_client_address() {
    use kiroku_proto::account::v1 as account;
    let mut cluster = Cluster::start(1, 0, options());
    // A second gateway behind an "ingress" on loopback: it believes the ingress's
    // x-forwarded-for (the rightmost entry it did not add itself).
    cluster
        .options
        .env
        .push(("KIROKU_GATEWAY_TRUSTED_PROXIES".into(), "127.0.0.1".into()));
    let second = cluster.spawn_gateway();
    let behind_ingress = cluster.gateway_url(second);
    let admin = cluster.owner_token_with_mfa();
    let (gateway_url, account_url) = (cluster.gateway_url(0), cluster.account_url());
    let (slug, email) = (cluster.tenant_slug.clone(), cluster.owner_email.clone());
    block_on(async move {
        let wrong_login = |ip: &str| {
            let mut request = tonic::Request::new(account::LoginRequest {
                tenant_slug: slug.clone(),
                email: email.clone(),
                password: "not the password".into(),
                totp_code: String::new(),
            });
            request
                .metadata_mut()
                .insert("x-forwarded-for", ip.parse().expect("ascii"));
            request
        };
        let mut through_gateway =
            account::account_service_client::AccountServiceClient::connect(gateway_url.clone())
                .await
                .expect("gateway");
        let status = through_gateway
            .login(wrong_login("203.0.113.9"))
            .await
            .expect_err("wrong password");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let me = through_gateway
            .who_am_i(authorized(account::WhoAmIRequest {}, &admin))
            .await
            .expect("whoami through the gateway")
            .into_inner();
        assert!(me.mfa);
        // Directly from a trusted proxy address (loopback by default): believed.
        account::account_service_client::AccountServiceClient::connect(account_url)
            .await
            .expect("account")
            .login(wrong_login("198.51.100.7"))
            .await
            .expect_err("wrong password");
        // Through the ingress: the client forged the first entry, the ingress appended
        // the address it saw.
        account::account_service_client::AccountServiceClient::connect(behind_ingress)
            .await
            .expect("gateway behind the ingress")
            .login(wrong_login("192.0.2.66, 203.0.113.50"))
            .await
            .expect_err("wrong password");

        let mut audit = audit(&gateway_url).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let sources = loop {
            let entries = cluster::audit_entries(&mut audit, &admin, "login.failed").await;
            if entries.len() >= 3 {
                break entries.into_iter().map(|e| e.source_ip).collect::<Vec<_>>();
            }
            assert!(Instant::now() < deadline, "{entries:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(
            sources,
            vec!["203.0.113.50", "198.51.100.7", "127.0.0.1"],
            "newest first"
        );
        let mut notice_client =
            pb::notice_service_client::NoticeServiceClient::connect(gateway_url)
                .await
                .expect("gateway");
        let notices = notice_client
            .list_notices(authorized(pb::ListNoticesRequest::default(), &admin))
            .await
            .expect("notices through the gateway")
            .into_inner();
        assert!(notices.notices.is_empty());
        // Operator methods are not served by the public gateway, even with the token.
        let mut publish = tonic::Request::new(pb::PublishNoticeRequest {
            title: "maintenance".into(),
            body: "tonight".into(),
            ..Default::default()
        });
        publish.metadata_mut().insert(
            kiroku_account::auth::OperatorToken::METADATA,
            cluster::OPERATOR_TOKEN.parse().expect("ascii"),
        );
        let refused = notice_client
            .publish_notice(publish)
            .await
            .expect_err("operator method through the gateway");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused
                .message()
                .contains("not served by the public gateway"),
            "{refused:?}"
        );
    });
}

/// `body` with `token` as the operator token (none when empty).
fn with_operator_token<T>(body: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    if !token.is_empty() {
        request.metadata_mut().insert(
            kiroku_account::auth::OperatorToken::METADATA,
            token.parse().expect("ascii"),
        );
    }
    request
}

/// Refused operator calls go into the operator's own audit log (they belong to no
/// tenant): each wrong or missing token while under the limit, then one
/// `operator.throttled` a minute, never more. The operator reads the log with its token
/// on the internal address; a tenant admin never sees it, and the public gateway drops
/// an operator token instead of honouring it.
#[test]
fn refused_operator_calls_are_in_the_operators_audit_log() {
    let cluster = Cluster::start(
        1,
        0,
        Options {
            storage: true,
            ..options()
        },
    );
    let token = cluster_owner_token(&cluster);
    let (audit_url, storage_url, gateway_url) = (
        cluster.audit_url(),
        cluster.storage_url(),
        cluster.gateway_url(0),
    );
    block_on({
        let token = token.clone();
        async move {
            use kiroku_proto::storage::v1 as storage;
            let wrong = "a-wrong-operator-token-that-is-long-enough";
            let mut notices = pb::notice_service_client::NoticeServiceClient::connect(audit_url)
                .await
                .expect("notices");
            for token in [wrong, ""] {
                let request = with_operator_token(pb::PublishNoticeRequest::default(), token);
                let refused = notices.publish_notice(request).await.expect_err("refused");
                assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
            }
            let mut keys = storage::storage_client::StorageClient::connect(storage_url)
                .await
                .expect("storage");
            let limit = kiroku_account::auth::OperatorToken::MAX_FAILURES_PER_MINUTE;
            for attempt in 1..=limit + 2 {
                let request = with_operator_token(storage::RotateMasterKeyRequest {}, wrong);
                let refused = keys.rotate_master_key(request).await.expect_err("refused");
                let expected = if attempt <= limit {
                    Code::Unauthenticated
                } else {
                    Code::ResourceExhausted
                };
                assert_eq!(refused.code(), expected, "attempt {attempt}: {refused:?}");
            }
            // Through the public gateway the operator token counts for nothing.
            let mut audit = audit(&gateway_url).await;
            let request =
                with_operator_token(pb::ListEventsRequest::default(), cluster::OPERATOR_TOKEN);
            let refused = audit.list_events(request).await.expect_err("no credential");
            assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
            // A tenant admin's log holds none of it.
            let own = audit
                .list_events(authorized(
                    pb::ListEventsRequest {
                        page_size: 1000,
                        ..Default::default()
                    },
                    &token,
                ))
                .await
                .expect("tenant log")
                .into_inner()
                .entries;
            assert!(
                own.iter().all(|e| !e.action.starts_with("operator.")),
                "{own:?}"
            );
        }
    });

    let operator_cli = |args: &[&str]| {
        let output = cluster
            .cli(args)
            .env("KIROKU_AUDIT_URL", cluster.audit_url())
            .env(
                kiroku_account::auth::OperatorToken::ENV,
                cluster::OPERATOR_TOKEN,
            )
            .output()
            .expect("kiroku");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        assert!(output.status.success(), "{args:?}: {stderr}");
        stdout
    };
    let limit = kiroku_account::auth::OperatorToken::MAX_FAILURES_PER_MINUTE as usize;
    let deadline = Instant::now() + Duration::from_secs(30);
    let listed = loop {
        let listed = operator_cli(&["admin", "audit", "list", "--operator"]);
        if listed.lines().count() >= limit + 3 {
            break listed;
        }
        assert!(Instant::now() < deadline, "operator log: {listed}");
        std::thread::sleep(Duration::from_millis(300));
    };
    let count = |needle: &str| listed.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count("operator.refused"), limit + 2, "{listed}");
    assert_eq!(count("operator.throttled"), 1, "{listed}");
    assert_eq!(count("method/PublishNotice"), 2, "{listed}");
    assert_eq!(count("method/RotateMasterKey"), limit + 1, "{listed}");
    assert_eq!(listed.lines().count(), limit + 3, "nothing else: {listed}");
    let verified = operator_cli(&["admin", "audit", "verify", "--operator"]);
    assert!(verified.contains("intact"), "{verified}");
}
