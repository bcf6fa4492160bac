//! The minutes end to end: real account, storage (and gateway, worker) processes against
//! the real NATS JetStream and PostgreSQL. Finals are published to `TRANSCRIPTS` as the
//! worker publishes them, or come from real speech streamed through the cluster. Tests
//! name the controls they prove (8.2.2, 10.1.1, 13.1.3).

use kiroku_tests::cluster;

use std::time::{Duration, Instant};

use cluster::{Cluster, Options, authorized, block_on};
use kiroku_proto::events::v1::TranscriptResult;
use kiroku_proto::storage::v1 as pb;
use kiroku_proto::storage::v1::storage_client::StorageClient;
use kiroku_proto::transcribe::v1 as api;
use prost::Message as _;
use tonic::Code;
use tonic::transport::Channel;

fn options() -> Options {
    Options {
        storage: true,
        ..Options::default()
    }
}

async fn storage(url: &str) -> StorageClient<Channel> {
    StorageClient::connect(url.to_string())
        .await
        .expect("storage service")
}

/// `GetMeeting` that must fail; its status.
async fn refused_meeting(
    client: &mut StorageClient<Channel>,
    token: &str,
    meeting_id: &str,
) -> tonic::Status {
    client
        .get_meeting(authorized(
            pb::GetMeetingRequest {
                meeting_id: meeting_id.into(),
            },
            token,
        ))
        .await
        .expect_err("GetMeeting was refused")
}

fn segment(start_ms: u64, text: &str) -> api::Segment {
    let words: Vec<&str> = text.split_whitespace().collect();
    let step = 400;
    api::Segment {
        start_ms,
        end_ms: start_ms + step * words.len() as u64,
        text: format!(" {text}"),
        words: words
            .iter()
            .enumerate()
            .map(|(i, w)| api::Word {
                text: format!(" {w}"),
                start_ms: start_ms + step * i as u64,
                end_ms: start_ms + step * (i as u64 + 1),
                probability: 0.9,
            })
            .collect(),
        confidence: 0.9,
        speaker: String::new(),
    }
}

/// A final as the worker publishes it.
fn final_result(
    tenant: &str,
    session: &str,
    meeting: &str,
    seq: u64,
    segment: api::Segment,
) -> TranscriptResult {
    TranscriptResult {
        tenant_id: tenant.into(),
        session_id: session.into(),
        meeting_id: meeting.into(),
        result: Some(api::StreamingResult {
            result_seq: seq,
            is_final: true,
            segment: Some(segment),
            stability: 1.0,
            language: "en".into(),
            kind: api::ResultKind::Final as i32,
        }),
        ..Default::default()
    }
}

/// Account and storage services, no gateway or worker (finals are published directly):
/// the cluster, an access token of its tenant, the URLs, the root and storage's schema.
struct StorageOnly {
    cluster: Cluster,
    token: String,
    account_url: String,
    storage_url: String,
    root: String,
    schema: String,
}

impl StorageOnly {
    fn start() -> Self {
        let cluster = Cluster::start(0, 0, options());
        let root = cluster.root.clone();
        Self {
            token: cluster.access_token(),
            account_url: cluster.account_url(),
            storage_url: cluster.storage_url(),
            schema: format!("{root}_storage"),
            root,
            cluster,
        }
    }
}

/// Publishes finals into a cluster's `TRANSCRIPTS`, as a worker does.
struct Transcripts {
    js: async_nats::jetstream::Context,
    layout: kiroku_core::nats::Layout,
}

impl Transcripts {
    async fn of(root: &str) -> Self {
        let nats = async_nats::connect(cluster::nats_url())
            .await
            .expect("nats");
        Self {
            js: async_nats::jetstream::new(nats),
            layout: kiroku_core::nats::Layout::new(root).expect("layout"),
        }
    }

    /// Publishes under `msg_id` (the worker uses `<session>:r<seq>`).
    async fn publish(&self, message: &TranscriptResult, msg_id: &str) {
        self.js
            .send_publish(
                self.layout
                    .transcript_subject(&message.tenant_id, &message.session_id),
                async_nats::jetstream::message::PublishMessage::build()
                    .payload(message.encode_to_vec().into())
                    .message_id(msg_id),
            )
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
}

async fn wait_for_segments(
    client: &mut StorageClient<Channel>,
    token: &str,
    meeting: &str,
    n: usize,
) -> pb::Meeting {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client
            .get_meeting(authorized(
                pb::GetMeetingRequest {
                    meeting_id: meeting.into(),
                },
                token,
            ))
            .await
        {
            Ok(m) if m.get_ref().segments.len() >= n => return m.into_inner(),
            Ok(_) => {}
            Err(status) => assert_eq!(status.code(), Code::NotFound, "{status:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "{meeting}: fewer than {n} segments"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// control 10.1.1 and 13.1.3: finals published twice (a worker retry after a lost ack,
/// a failover re-publishing) and out of order are stored once each, in order; the
/// database holds only ciphertext (no transcript word in any stored byte) and keyed
/// search hashes; a flipped ciphertext bit is reported as data loss, never returned as
/// text; forced row-level security on every table.
#[test]
fn control_10_1_1_finals_stored_once_encrypted_and_tamper_evident() {
    let StorageOnly {
        cluster: _cluster,
        token,
        account_url,
        storage_url,
        root,
        schema,
    } = StorageOnly::start();
    block_on(async move {
        let tenant = cluster::tenant_of(&account_url, &token).await;
        let transcripts = Transcripts::of(&root).await;
        let lines = [
            "the quarterly budget review starts now",
            "marketing spent twelve thousand on the launch",
            "we approve the budget for next year",
        ];
        // Out of order, and seq 2 twice under different message ids (JetStream's own
        // de-duplication cannot catch it: storage must).
        for (seq, id) in [(2, "s1:r2"), (1, "s1:r1"), (2, "s1:r2-retry"), (3, "s1:r3")] {
            let start = (seq - 1) * 4000;
            let message = final_result(
                &tenant,
                "s1",
                "budget-review",
                seq,
                segment(start, lines[seq as usize - 1]),
            );
            transcripts.publish(&message, id).await;
        }
        let mut client = storage(&storage_url).await;
        wait_for_segments(&mut client, &token, "budget-review", 3).await;
        // Give a wrongly stored duplicate time to show up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let meeting = wait_for_segments(&mut client, &token, "budget-review", 3).await;
        let texts: Vec<&str> = meeting.segments.iter().map(|s| s.text.trim()).collect();
        assert_eq!(texts, lines.to_vec(), "once each, in order");
        let summary = meeting.summary.expect("summary");
        assert_eq!((summary.segments, summary.language.as_str()), (3, "en"));
        assert_eq!(summary.duration_ms, 8000 + 7 * 400);
        assert_eq!(meeting.segments[1].words.len(), 7, "word timings kept");

        let owner = cluster::database_url();
        let (ok, found) = cluster::psql(
            &owner,
            &format!(
                "SELECT (SELECT count(*) FROM \"{schema}\".segments \
                         WHERE position('budget'::bytea IN sealed) > 0) \
                      + (SELECT count(*) FROM \"{schema}\".segment_terms \
                         WHERE array_to_string(terms, ' ') LIKE '%budget%')"
            ),
        );
        assert!(ok && found == "0", "plaintext at rest: {found}");
        let (ok, flags) = cluster::psql(
            &owner,
            &format!(
                "SELECT string_agg(c.relname || ':' || c.relrowsecurity || c.relforcerowsecurity, \
                 ',' ORDER BY c.relname) FROM pg_class c JOIN pg_namespace n ON \
                 n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND c.relkind = 'r' \
                 AND c.relname <> '_sqlx_migrations'"
            ),
        );
        assert!(ok, "{flags}");
        // segment_terms is the one table outside row-level security: the service role
        // cannot read it at all (see control_13_1_3_search_rows_...).
        assert_eq!(
            flags,
            "data_keys:truetrue,labels:truetrue,meetings:truetrue,segment_terms:falsefalse,\
             segments:truetrue,sessions:truetrue"
        );
        let service = owner.replacen("postgres@", "kiroku_storage@", 1);
        let (ok, seen) = cluster::psql(
            &service,
            &format!("SELECT count(*) FROM \"{schema}\".segments"),
        );
        assert!(ok && seen == "0", "rows visible without a tenant: {seen}");

        // Someone with database access flips one bit of the second final.
        let (ok, out) = cluster::psql(
            &owner,
            &format!(
                "UPDATE \"{schema}\".segments SET sealed = set_bit(sealed, 200, 1 - get_bit(sealed, 200)) \
                 WHERE result_seq = 2"
            ),
        );
        assert!(ok, "{out}");
        let status = refused_meeting(&mut client, &token, "budget-review").await;
        assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    });
}

/// control 13.1.3: the search index lives outside row-level security (so that its GIN
/// index can be used), and yet no tenant reaches another's rows: the service role can
/// neither read nor write the table, and the only two ways in (`kiroku_search`,
/// `kiroku_index_segment`) apply the transaction's tenant themselves. Erasing segments
/// erases their terms.
#[test]
fn control_13_1_3_search_rows_are_reachable_only_through_the_callers_tenant() {
    let StorageOnly {
        cluster: _cluster,
        token,
        account_url,
        storage_url,
        root,
        schema,
    } = StorageOnly::start();
    let owner = cluster::database_url();
    let other = uuid::Uuid::new_v4().simple().to_string();
    let other_in_task = other.clone();
    let tenant = block_on(async move {
        let other = other_in_task;
        let tenant = cluster::tenant_of(&account_url, &token).await;
        let transcripts = Transcripts::of(&root).await;
        for (who, text) in [
            (&tenant, "the quarterly budget review starts now"),
            (&other, "the secret budget of the other tenant"),
        ] {
            let message = final_result(who, "s1", "budget-review", 1, segment(0, text));
            transcripts.publish(&message, &format!("{who}:s1:r1")).await;
        }
        let mut client = storage(&storage_url).await;
        wait_for_segments(&mut client, &token, "budget-review", 1).await;
        tenant
    });
    let rows_of = |who: &str| {
        cluster::psql(
            &owner,
            &format!("SELECT count(*) FROM \"{schema}\".segment_terms WHERE tenant_id = '{who}'"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while rows_of(&other) != (true, "1".into()) {
        assert!(
            Instant::now() < deadline,
            "the other tenant's final was not indexed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, theirs) = cluster::psql(
        &owner,
        &format!("SELECT terms::text FROM \"{schema}\".segment_terms WHERE tenant_id = '{other}'"),
    );
    assert!(ok && theirs.starts_with('{'), "{theirs}");
    // The service role, acting for a tenant (kiroku.tenant_id, as its transactions set it).
    let service = |acting_for: &str| {
        let url = owner.replacen("postgres@", "kiroku_storage@", 1);
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}options=-ckiroku.tenant_id%3D{acting_for}")
    };
    for sql in [
        format!("SELECT count(*) FROM \"{schema}\".segment_terms"),
        format!(
            "INSERT INTO \"{schema}\".segment_terms VALUES \
             ('{tenant}', 's1', 1, 'budget-review', now(), 0, '{{x}}')"
        ),
        format!("DELETE FROM \"{schema}\".segment_terms"),
    ] {
        let (ok, out) = cluster::psql(&service(&tenant), &sql);
        assert!(!ok && out.contains("permission denied"), "{sql}: {out}");
    }
    let search = |acting_for: &str| {
        cluster::psql(
            &service(acting_for),
            &format!("SELECT count(*) FROM \"{schema}\".kiroku_search('{theirs}'::text[], 100)"),
        )
    };
    // The other tenant's own terms find its segment for it, and for no one else.
    assert_eq!(search(&other), (true, "1".into()));
    assert_eq!(search(&tenant), (true, "0".into()), "cross-tenant search");
    assert_eq!(search(""), (true, "0".into()), "search without a tenant");
    // Indexing the other tenant's segment while acting for this one changes nothing.
    let (ok, out) = cluster::psql(
        &service(&tenant),
        &format!("SELECT \"{schema}\".kiroku_index_segment('s1', 1, '{{planted}}'::text[])"),
    );
    assert!(ok, "{out}");
    let (ok, now) = cluster::psql(
        &owner,
        &format!("SELECT terms::text FROM \"{schema}\".segment_terms WHERE tenant_id = '{other}'"),
    );
    assert!(ok && now == theirs, "{now}");
    // Deleting a segment deletes its terms (tenant erasure deletes every segment).
    let (ok, out) = cluster::psql(
        &owner,
        &format!("DELETE FROM \"{schema}\".segments WHERE tenant_id = '{other}'"),
    );
    assert!(ok, "{out}");
    assert_eq!(rows_of(&other), (true, "0".into()));
    assert_eq!(rows_of(&tenant), (true, "1".into()));
}

/// control 8.2.2 and 13.1.3: real speech streamed through the cluster is stored with the
/// meeting, found by search, tagged, bookmarked and annotated (a memo with `<script>`
/// stays inert text), listed by tag, exported in every format; another tenant sees none
/// of it on any storage call.
#[test]
fn control_8_2_2_a_streamed_meeting_is_searchable_labelled_and_exportable() {
    let mut cluster = Cluster::start(1, 1, options());
    let wav = kiroku_tests::speech::synthesize(
        cluster.dir.path(),
        "standup",
        "The quarterly budget review starts now. Please share your updates.",
        16_000,
        1,
        0.5,
    )
    .expect("speech");
    let output = cluster
        .cli(&[
            "stream",
            wav.to_str().expect("utf-8"),
            "--gateway",
            &cluster.gateway_url(0),
            "--meeting",
            "standup-1126",
            "--speed",
            "4",
        ])
        .output()
        .expect("kiroku stream");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The client has gone: the finals are stored all the same. Everything below goes
    // through the gateway, the one public address.
    let gateway = cluster.gateway_url(0);
    cluster.storage.as_mut().expect("storage").grpc = Some(gateway.clone());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (ok, out, err) = cluster.run_cli(&["meetings", "search", "budget"], None);
        assert!(ok, "{err}");
        if out.contains("standup-1126") {
            assert!(out.to_lowercase().contains("budget"), "{out}");
            break;
        }
        assert!(Instant::now() < deadline, "never found: {out}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let (ok, out, err) = cluster.run_cli(&["meetings", "list"], None);
    assert!(ok && out.starts_with("standup-1126"), "{out}{err}");

    tag_bookmark_and_memo(&cluster);
    export_in_every_format(&cluster);
    // Another tenant: nothing of this meeting exists for it (control 13.1.3).
    let (storage_url, account_url) = (cluster.storage_url(), cluster.account_url());
    let slug = format!("{}-b", cluster.tenant_slug);
    let owner = cluster.access_token();
    block_on(async move {
        let other = register_other_tenant(account_url, slug).await;
        another_tenant_sees_none_of_it(&storage_url, &owner, &other).await;
    });
}

/// A tag, a bookmark and a memo holding markup, listed back and found by tag.
fn tag_bookmark_and_memo(cluster: &Cluster) {
    let label = |args: &[&str]| {
        let mut all = vec!["label", "add", "standup-1126"];
        all.extend_from_slice(args);
        let (ok, out, err) = cluster.run_cli(&all, None);
        assert!(ok, "{args:?}: {err}");
        out
    };
    label(&["--tag", "Finance"]);
    label(&["--bookmark", "00:02", "--note", "decision"]);
    label(&[
        "--memo",
        "<script>alert(1)</script> follow up",
        "--from",
        "1s",
        "--to",
        "3s",
    ]);
    let (ok, out, err) = cluster.run_cli(&["label", "list", "standup-1126"], None);
    assert!(ok, "{err}");
    assert!(out.contains("tag  Finance"), "{out}");
    assert!(out.contains("bookmark [00:00:02]  decision"), "{out}");
    assert!(
        out.contains("memo [00:00:01–00:00:03]  <script>alert(1)</script>"),
        "{out}"
    );
    let (ok, out, _) = cluster.run_cli(&["meetings", "list", "--tag", "finance"], None);
    assert!(
        ok && out.contains("standup-1126") && out.contains("[Finance]"),
        "{out}"
    );
    let (ok, out, _) = cluster.run_cli(&["meetings", "list", "--tag", "legal"], None);
    assert!(ok && out.contains("no meetings"), "{out}");
}

/// `kiroku export` in every format: each holds the words; the subtitles parse with
/// independent parsers, the DOCX keeps the memo as text and LibreOffice opens it.
fn export_in_every_format(cluster: &Cluster) {
    let dir = cluster.dir.path().to_path_buf();
    for format in ["txt", "srt", "vtt", "json", "docx"] {
        let file = dir.join(format!("standup.{format}"));
        let (ok, _, err) = cluster.run_cli(
            &[
                "export",
                "standup-1126",
                "--format",
                format,
                "--out",
                file.to_str().expect("utf-8"),
            ],
            None,
        );
        assert!(ok, "{format}: {err}");
        let bytes = std::fs::read(&file).expect("export");
        assert!(!bytes.is_empty(), "{format}");
        if format != "docx" {
            let text = String::from_utf8(bytes).expect("utf-8");
            assert!(text.to_lowercase().contains("budget"), "{format}: {text}");
        }
    }
    let srt = std::fs::read_to_string(dir.join("standup.srt")).expect("srt");
    assert!(srt.starts_with("1\n00:00:"), "{srt}");
    let vtt = std::fs::read_to_string(dir.join("standup.vtt")).expect("vtt");
    assert!(vtt.starts_with("WEBVTT\n\n00:00:"), "{vtt}");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("standup.json")).expect("json"))
            .expect("valid json");
    assert!(!json["segments"].as_array().expect("segments").is_empty());
    if let Ok(python) = std::env::var("KIROKU_TEST_PYTHON") {
        // The subtitle files parse with independent parsers.
        let check = std::process::Command::new(python)
            .arg("-c")
            .arg(
                "import sys, srt, webvtt; \
                 assert list(srt.parse(open(sys.argv[1]).read())); \
                 assert list(webvtt.read(sys.argv[2]))",
            )
            .arg(dir.join("standup.srt"))
            .arg(dir.join("standup.vtt"))
            .output()
            .expect("python");
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    // The DOCX holds the memo as text, never as markup.
    let docx = std::fs::read(dir.join("standup.docx")).expect("docx");
    let document = {
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(docx)).expect("a zip");
        let mut xml = String::new();
        std::io::Read::read_to_string(
            &mut zip.by_name("word/document.xml").expect("document.xml"),
            &mut xml,
        )
        .expect("utf-8");
        xml
    };
    assert!(
        document.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{document}"
    );
    assert!(!document.contains("<script"));
    if let Ok(soffice) = std::env::var("KIROKU_TEST_LIBREOFFICE") {
        let out = std::process::Command::new(soffice)
            .args(["--headless", "--convert-to", "pdf", "--outdir"])
            .arg(&dir)
            .arg(dir.join("standup.docx"))
            .env("HOME", &dir)
            .output()
            .expect("libreoffice");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pdf = std::fs::read(dir.join("standup.pdf")).expect("pdf written");
        assert!(pdf.starts_with(b"%PDF"), "LibreOffice opened the DOCX");
    }
}

/// A second tenant, registered through the account service: its owner's access token.
async fn register_other_tenant(account_url: String, slug: String) -> String {
    use kiroku_proto::account::v1 as account;
    account::account_service_client::AccountServiceClient::connect(account_url)
        .await
        .expect("account")
        .register(account::RegisterRequest {
            tenant_slug: slug,
            tenant_name: "Other".into(),
            email: "eve@other.example".into(),
            display_name: "Eve".into(),
            password: "eves long passphrase".into(),
        })
        .await
        .expect("register")
        .into_inner()
        .tokens
        .expect("tokens")
        .access_token
}

/// Every storage call about the first tenant's meeting answers NOT_FOUND (or nothing)
/// to `other`; bad input from the owner gets precise statuses.
async fn another_tenant_sees_none_of_it(storage_url: &str, owner: &str, other: &str) {
    let mut client = storage(storage_url).await;
    let labels = client
        .list_labels(authorized(
            pb::ListLabelsRequest {
                meeting_id: "standup-1126".into(),
            },
            owner,
        ))
        .await
        .expect("owner labels")
        .into_inner()
        .labels;
    let label_id = labels[0].label_id.clone();
    let meeting = || "standup-1126".to_string();
    let not_found = |status: tonic::Status| {
        assert_eq!(status.code(), Code::NotFound, "{status:?}");
    };
    not_found(
        client
            .get_meeting(authorized(
                pb::GetMeetingRequest {
                    meeting_id: meeting(),
                },
                other,
            ))
            .await
            .expect_err("get"),
    );
    not_found(
        client
            .export_meeting(authorized(
                pb::ExportMeetingRequest {
                    meeting_id: meeting(),
                    format: pb::ExportFormat::Txt as i32,
                },
                other,
            ))
            .await
            .expect_err("export"),
    );
    not_found(
        client
            .list_labels(authorized(
                pb::ListLabelsRequest {
                    meeting_id: meeting(),
                },
                other,
            ))
            .await
            .expect_err("labels"),
    );
    not_found(
        client
            .add_label(authorized(
                pb::AddLabelRequest {
                    meeting_id: meeting(),
                    kind: pb::LabelKind::Tag as i32,
                    text: "mine".into(),
                    ..Default::default()
                },
                other,
            ))
            .await
            .expect_err("add"),
    );
    not_found(
        client
            .remove_label(authorized(pb::RemoveLabelRequest { label_id }, other))
            .await
            .expect_err("remove"),
    );
    let hits = client
        .search(authorized(
            pb::SearchRequest {
                query: "budget".into(),
                limit: 0,
            },
            other,
        ))
        .await
        .expect("search")
        .into_inner()
        .hits;
    assert!(hits.is_empty());
    let listed = client
        .list_meetings(authorized(pb::ListMeetingsRequest::default(), other))
        .await
        .expect("list")
        .into_inner()
        .meetings;
    assert!(listed.is_empty());
    // Bad input gets precise statuses.
    let status = client
        .search(authorized(
            pb::SearchRequest {
                query: " ... ".into(),
                limit: 0,
            },
            owner,
        ))
        .await
        .expect_err("no words");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = client
        .add_label(authorized(
            pb::AddLabelRequest {
                meeting_id: meeting(),
                kind: pb::LabelKind::Memo as i32,
                text: "backwards".into(),
                at_ms: 5000,
                end_ms: 1000,
                live: false,
            },
            owner,
        ))
        .await
        .expect_err("backwards memo");
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// control 8.2.2: a bookmark set live from the stream (its Bookmark control message) is
/// stored as a label of the meeting with the caller's credentials, even before the
/// meeting's first final, and acknowledged with its label id.
#[test]
fn control_8_2_2_a_live_bookmark_from_the_stream_is_stored() {
    let cluster = Cluster::start(1, 0, options());
    let (gateway, token) = (cluster.gateway_url(0), cluster.access_token());
    block_on(async move {
        use api::stream_transcribe_request::Request as R;
        let mut client = api::transcription_client::TranscriptionClient::connect(gateway.clone())
            .await
            .expect("gateway");
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        tx.send(api::StreamTranscribeRequest {
            request: Some(R::Config(api::StreamConfig {
                audio_format: Some(api::AudioFormat {
                    encoding: api::AudioEncoding::Linear16 as i32,
                    sample_rate_hz: 16_000,
                    channels: 1,
                }),
                meeting_id: "live-bookmarks".into(),
                ..Default::default()
            })),
        })
        .await
        .expect("config");
        let mut responses = client
            .stream_transcribe(authorized(
                tokio_stream::wrappers::ReceiverStream::new(rx),
                &token,
            ))
            .await
            .expect("stream")
            .into_inner();
        responses.message().await.expect("session").expect("info");
        tx.send(api::StreamTranscribeRequest {
            request: Some(R::Control(api::Control {
                action: Some(api::control::Action::Bookmark(api::Bookmark {
                    offset_ms: 1500,
                    note: "kickoff <b>decision</b>".into(),
                })),
            })),
        })
        .await
        .expect("bookmark");
        let ack = loop {
            let message = responses.message().await.expect("response").expect("open");
            if let Some(api::stream_transcribe_response::Response::BookmarkAck(ack)) =
                message.response
            {
                break ack;
            }
        };
        assert!(!ack.bookmark_id.is_empty(), "not stored: {ack:?}");
        assert_eq!(ack.offset_ms, 1500);
        drop(tx);
        let labels = storage(&gateway)
            .await
            .list_labels(authorized(
                pb::ListLabelsRequest {
                    meeting_id: "live-bookmarks".into(),
                },
                &token,
            ))
            .await
            .expect("labels")
            .into_inner()
            .labels;
        assert_eq!(labels.len(), 1, "{labels:?}");
        assert_eq!(labels[0].label_id, ack.bookmark_id);
        assert_eq!(labels[0].kind, pb::LabelKind::Bookmark as i32);
        assert_eq!(
            (labels[0].at_ms, labels[0].text.as_str()),
            (1500, "kickoff <b>decision</b>")
        );
    });
}

/// Erasure ends the tenant's streams that run at that moment: the client is told
/// (`ABORTED`) and the worker closes the session without finalizing what it still held
/// (its closing message says why), so nothing of it is stored after the erasure.
#[test]
fn an_erasure_ends_the_tenants_running_streams() {
    let cluster = Cluster::start(1, 1, options());
    cluster.enroll_owner_mfa_with_cli();
    let token = cluster.access_token();
    let (gateway, account_url, layout, slug) = (
        cluster.gateway_url(0),
        cluster.account_url(),
        cluster.layout(),
        cluster.tenant_slug.clone(),
    );
    block_on(async move {
        use futures::StreamExt as _;
        let tenant = cluster::tenant_of(&account_url, &token).await;
        let nats = async_nats::connect(cluster::nats_url())
            .await
            .expect("nats");
        let mut transcripts = nats
            .subscribe(layout.transcript_subject(&tenant, ">"))
            .await
            .expect("subscribe");
        let mut stream =
            cluster::open_stream(&gateway, &|body| authorized(body, &token), "erased-live")
                .await
                .expect("stream");
        // Long enough for a worker to take the session.
        stream.keeps_acking(Duration::from_secs(3)).await;
        storage(&gateway)
            .await
            .erase_tenant(authorized(
                pb::EraseTenantRequest {
                    confirm_tenant_slug: slug,
                },
                &token,
            ))
            .await
            .expect("erase");
        let status = stream
            .ended_within(Duration::from_secs(15))
            .await
            .expect_err("the stream is ended");
        assert_eq!(status.code(), Code::Aborted, "{status:?}");
        assert!(status.message().contains("erased"), "{status:?}");
        let closed = tokio::time::timeout(Duration::from_secs(15), async {
            while let Some(message) = transcripts.next().await {
                let result = TranscriptResult::decode(message.payload).expect("result");
                if result.session_closed {
                    return result;
                }
            }
            panic!("subscription ended");
        })
        .await
        .expect("the worker closed the session");
        assert_eq!(closed.close_reason, kiroku_core::nats::CLOSED_ERASED);
        assert!(closed.result.is_none(), "{closed:?}");
    });
}

/// control CLD.8.1.5: the tenant's minutes leave as a bundle (JSON + WebVTT per meeting,
/// labels, a SHA-256 manifest), and erasure destroys the data key first: a copy of the
/// sealed rows taken before (a backup) and put back afterwards no longer decrypts.
#[test]
fn control_cld_8_1_5_tenant_export_and_crypto_shredding_erasure() {
    let cluster = Cluster::start(
        0,
        0,
        Options {
            audit: true,
            ..options()
        },
    );
    cluster.enroll_owner_mfa_with_cli();
    let token = cluster.access_token();
    let (account_url, storage_url, root) = (
        cluster.account_url(),
        cluster.storage_url(),
        cluster.root.clone(),
    );
    let schema = format!("{root}_storage");
    let tenant = block_on({
        let (token, storage_url) = (token.clone(), storage_url.clone());
        async move {
            let tenant = cluster::tenant_of(&account_url, &token).await;
            let transcripts = Transcripts::of(&root).await;
            let finals = [
                ("s1", "weekly sync", 1, "the budget is approved"),
                ("s1", "weekly sync", 2, "next meeting on friday"),
                ("s2", "board/2026 Q4", 1, "予算会議は金曜日です"),
            ];
            for (session, meeting, seq, text) in finals {
                let message = final_result(&tenant, session, meeting, seq, segment(0, text));
                transcripts
                    .publish(&message, &format!("{session}:r{seq}"))
                    .await;
            }
            let mut client = storage(&storage_url).await;
            wait_for_segments(&mut client, &token, "weekly sync", 2).await;
            wait_for_segments(&mut client, &token, "board/2026 Q4", 1).await;
            client
                .add_label(authorized(
                    pb::AddLabelRequest {
                        meeting_id: "weekly sync".into(),
                        kind: pb::LabelKind::Memo as i32,
                        text: "ask finance".into(),
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

    the_export_holds_every_meeting(&cluster, &cluster.dir.path().join("bundle"));

    // A copy of the sealed rows, as a backup would hold them.
    let owner = cluster::database_url();
    for table in ["meetings", "sessions", "segments"] {
        let (ok, out) = cluster::psql(
            &owner,
            &format!(
                "CREATE TABLE \"{schema}\".{table}_copy AS SELECT * FROM \"{schema}\".{table}"
            ),
        );
        assert!(ok, "{out}");
    }
    let (ok, _, err) = cluster.run_cli(&["admin", "tenant", "erase", "--confirm", "wrong"], None);
    assert!(!ok && err.contains("FailedPrecondition"), "{err}");
    the_erasure_takes_the_tenants_checkpoints_only(&cluster);
    let (ok, keys) = cluster::psql(
        &owner,
        &format!("SELECT count(*) FROM \"{schema}\".data_keys WHERE tenant_id = '{tenant}'"),
    );
    assert!(ok && keys == "0", "{keys}");
    let (ok, out, _) = cluster.run_cli(&["meetings", "list"], None);
    assert!(ok && out.contains("no meetings"), "{out}");
    // The old copy is put back: without its key it is unreadable, even once the tenant
    // has a new key.
    for table in ["meetings", "sessions", "segments"] {
        let (ok, out) = cluster::psql(
            &owner,
            &format!("INSERT INTO \"{schema}\".{table} SELECT * FROM \"{schema}\".{table}_copy"),
        );
        assert!(ok, "{out}");
    }
    block_on(async move {
        let mut client = storage(&storage_url).await;
        let status = refused_meeting(&mut client, &token, "weekly sync").await;
        assert_eq!(status.code(), Code::DataLoss, "{status:?}");
        // A new final creates a new key; the old ciphertext still does not open.
        client
            .add_label(authorized(
                pb::AddLabelRequest {
                    meeting_id: "weekly sync".into(),
                    kind: pb::LabelKind::Tag as i32,
                    text: "after".into(),
                    ..Default::default()
                },
                &token,
            ))
            .await
            .expect("a new key for new data");
        let status = refused_meeting(&mut client, &token, "weekly sync").await;
        assert_eq!(status.code(), Code::DataLoss, "{status:?}");
    });
}

/// `kiroku admin tenant export` writes both meetings (JSON and WebVTT) and the audit
/// log, and refuses a folder that is not empty.
fn the_export_holds_every_meeting(cluster: &Cluster, out: &std::path::Path) {
    let printed = export_tenant(cluster, out);
    assert!(printed.contains("2 meetings and"), "{printed}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).expect("manifest"))
            .expect("json");
    let mut paths: Vec<&str> = manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| f["path"].as_str().expect("path"))
        .collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        vec![
            "audit/log.json",
            "meetings/board_2026_Q4.json",
            "meetings/board_2026_Q4.vtt",
            "meetings/weekly_sync.json",
            "meetings/weekly_sync.vtt"
        ]
    );
    let weekly: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("meetings/weekly_sync.json")).expect("meeting"),
    )
    .expect("json");
    assert_eq!(weekly["meeting_id"], "weekly sync");
    assert_eq!(weekly["segments"].as_array().expect("segments").len(), 2);
    assert_eq!(weekly["labels"][0]["text"], "ask finance");
    let vtt = std::fs::read_to_string(out.join("meetings/board_2026_Q4.vtt")).expect("vtt");
    assert!(
        vtt.starts_with("WEBVTT") && vtt.contains("予算会議"),
        "{vtt}"
    );
    let (ok, _, err) = run_export(cluster, out);
    assert!(!ok && err.contains("not empty"), "{err}");
}

/// Worker checkpoints (they hold recent caption text) of the tenant's sessions go with
/// the erasure; one of a session that is not the tenant's stays.
fn the_erasure_takes_the_tenants_checkpoints_only(cluster: &Cluster) {
    let checkpoints = cluster.layout().checkpoints_bucket();
    let bucket = || {
        let checkpoints = checkpoints.clone();
        async move {
            let nats = async_nats::connect(cluster::nats_url())
                .await
                .expect("nats");
            let js = async_nats::jetstream::new(nats);
            js.get_key_value(checkpoints).await.expect("checkpoints")
        }
    };
    block_on(async {
        let bucket = bucket().await;
        for session in ["s1", "s2", "someone-else"] {
            bucket
                .put(session, "the budget is approved".into())
                .await
                .expect("checkpoint");
        }
    });
    let printed = cluster.erase_tenant_with_cli();
    assert!(
        printed.contains("erased 2 meetings, 3 segments, 1 labels; purged 3 messages"),
        "{printed}"
    );
    block_on(async {
        let bucket = bucket().await;
        for (session, kept) in [("s1", false), ("s2", false), ("someone-else", true)] {
            let value = bucket.get(session).await.expect("read checkpoint");
            assert_eq!(value.is_some(), kept, "checkpoint of {session}");
        }
    });
}

/// Reads a bundle's manifest: {path: sha256}.
fn manifest_files(dir: &std::path::Path) -> std::collections::BTreeMap<String, String> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest"))
            .expect("json");
    manifest["files"]
        .as_array()
        .expect("files")
        .iter()
        .map(|f| {
            (
                f["path"].as_str().expect("path").to_string(),
                f["sha256"].as_str().expect("sha256").to_string(),
            )
        })
        .collect()
}

/// control CLD.8.1.5: a tenant's bundle (two meetings, one streamed in two sessions,
/// with a tag, a bookmark and a `<script>` memo, and the tenant's audit log) imported
/// into a clean storage instance gives back the same meetings: exported again, every
/// meeting file is byte-equal and search works from the rebuilt index. A second import
/// is refused whole; a tampered, incomplete or padded bundle is refused and imports
/// nothing.
#[test]
fn control_cld_8_1_5_export_then_import_into_a_clean_instance_is_equal() {
    let mut cluster = Cluster::start(
        0,
        0,
        Options {
            audit: true,
            ..options()
        },
    );
    cluster.enroll_owner_mfa_with_cli();
    let token = cluster.access_token();
    two_meetings_with_labels(&cluster, &token);

    let exported = cluster.dir.path().join("exported");
    let printed = export_tenant(&cluster, &exported);
    assert!(printed.contains("2 meetings and"), "{printed}");
    let original = manifest_files(&exported);
    assert!(original.contains_key("audit/log.json"), "{original:?}");
    let log = std::fs::read_to_string(exported.join("audit/log.json")).expect("audit log");
    assert!(log.contains("label.added"), "{log}");

    // The clean instance: a storage service with an empty schema of its own.
    let clean = cluster.spawn_clean_storage();
    let mut on_clean = cluster.cli(&[
        "admin",
        "tenant",
        "import",
        exported.to_str().expect("utf-8"),
    ]);
    let output = on_clean
        .env("KIROKU_STORAGE_URL", &clean)
        .output()
        .expect("import");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        printed.contains("imported 2 meetings, 4 segments, 3 labels (5 files checked)"),
        "{printed}"
    );

    // Exported again from the clean instance: the same meetings, byte for byte.
    let original_storage = cluster.storage.as_ref().and_then(|s| s.grpc.clone());
    cluster.storage.as_mut().expect("storage").grpc = Some(clean.clone());
    let again = cluster.dir.path().join("again");
    export_tenant(&cluster, &again);
    the_export_is_equal(&exported, &again, &original);
    let (ok, out, err) = cluster.run_cli(&["meetings", "search", "friday"], None);
    assert!(ok && out.contains("weekly sync"), "{out}{err}");
    let (ok, out, err) = cluster.run_cli(&["meetings", "list", "--tag", "finance"], None);
    assert!(ok && out.starts_with("weekly sync"), "{out}{err}");

    // A second import would duplicate meetings: refused, nothing added.
    let (ok, _, err) = cluster.run_cli(
        &[
            "admin",
            "tenant",
            "import",
            exported.to_str().expect("utf-8"),
        ],
        None,
    );
    assert!(!ok && err.contains("AlreadyExists"), "{err}");

    // Bad bundles go to the original instance, emptied first.
    cluster.storage.as_mut().expect("storage").grpc = original_storage;
    cluster.erase_tenant_with_cli();
    bad_bundles_are_refused_and_leave_nothing(&cluster, &token, &exported);
}

/// "weekly sync" (two sessions, three finals, a tag, a bookmark and a memo) and
/// "予算会議" (one final), stored.
fn two_meetings_with_labels(cluster: &Cluster, token: &str) {
    let token = token.to_string();
    let (account_url, storage_url, root) = (
        cluster.account_url(),
        cluster.storage_url(),
        cluster.root.clone(),
    );
    block_on(async move {
        let tenant = cluster::tenant_of(&account_url, &token).await;
        let transcripts = Transcripts::of(&root).await;
        let finals = [
            ("s1", "weekly sync", 1, 0, "the budget is approved"),
            ("s1", "weekly sync", 2, 2000, "next meeting on friday"),
            ("s2", "weekly sync", 1, 0, "resumed after the break"),
            ("s3", "予算会議", 1, 0, "予算会議は金曜日です"),
        ];
        for (session, meeting, seq, start, text) in finals {
            let message = final_result(&tenant, session, meeting, seq, segment(start, text));
            transcripts
                .publish(&message, &format!("{session}:r{seq}"))
                .await;
        }
        let mut client = storage(&storage_url).await;
        wait_for_segments(&mut client, &token, "weekly sync", 3).await;
        wait_for_segments(&mut client, &token, "予算会議", 1).await;
        for (kind, text, at_ms, end_ms) in [
            (pb::LabelKind::Tag, "Finance", 0, 0),
            (pb::LabelKind::Bookmark, "decision", 2400, 0),
            (
                pb::LabelKind::Memo,
                "<script>alert(1)</script> ask",
                0,
                1000,
            ),
        ] {
            client
                .add_label(authorized(
                    pb::AddLabelRequest {
                        meeting_id: "weekly sync".into(),
                        kind: kind as i32,
                        text: text.into(),
                        at_ms,
                        end_ms,
                        live: false,
                    },
                    &token,
                ))
                .await
                .expect("label");
        }
    });
}

/// `kiroku admin tenant export --out OUT`: success, stdout, stderr.
fn run_export(cluster: &Cluster, out: &std::path::Path) -> (bool, String, String) {
    let out = out.to_str().expect("utf-8");
    cluster.run_cli(&["admin", "tenant", "export", "--out", out], None)
}

/// `kiroku admin tenant export --out OUT`, which must succeed; what it printed.
fn export_tenant(cluster: &Cluster, out: &std::path::Path) -> String {
    let (ok, printed, err) = run_export(cluster, out);
    assert!(ok, "{printed}{err}");
    printed
}

/// Every file of the first export but the audit log (which grew meanwhile) is in the
/// second with the same SHA-256 and bytes, and no file more.
fn the_export_is_equal(
    exported: &std::path::Path,
    again: &std::path::Path,
    original: &std::collections::BTreeMap<String, String>,
) {
    let reexported = manifest_files(again);
    for (path, sha) in original {
        if path == "audit/log.json" {
            continue;
        }
        assert_eq!(
            reexported.get(path),
            Some(sha),
            "{path} differs after import"
        );
        assert_eq!(
            std::fs::read(exported.join(path)).expect("file"),
            std::fs::read(again.join(path)).expect("file"),
            "{path}"
        );
    }
    assert_eq!(reexported.len(), original.len());
}

/// Bad bundles, sent past the CLI's own check, are refused by the service and leave
/// nothing behind: no manifest first, a tampered file, a missing file, an unlisted
/// file, a manifest that does not parse.
fn bad_bundles_are_refused_and_leave_nothing(
    cluster: &Cluster,
    token: &str,
    exported: &std::path::Path,
) {
    let (token, storage_url) = (token.to_string(), cluster.storage_url());
    let manifest = std::fs::read(exported.join("manifest.json")).expect("manifest");
    let file = |path: &str, data: Vec<u8>| pb::BundleFile {
        path: path.into(),
        data,
    };
    let weekly = std::fs::read(exported.join("meetings/weekly_sync.json")).expect("json");
    let mut tampered = weekly.clone();
    let at = tampered
        .windows(6)
        .position(|w| w == b"budget")
        .expect("budget in the file");
    tampered[at] = b'B';
    block_on(async move {
        let mut client = storage(&storage_url).await;
        let cases = [
            (
                vec![file("meetings/weekly_sync.json", weekly.clone())],
                Code::InvalidArgument,
                "first file must be manifest.json",
            ),
            (
                vec![
                    file("manifest.json", manifest.clone()),
                    file("meetings/weekly_sync.json", tampered),
                ],
                Code::DataLoss,
                "differs",
            ),
            (
                vec![
                    file("manifest.json", manifest.clone()),
                    file("meetings/weekly_sync.json", weekly.clone()),
                ],
                Code::DataLoss,
                "incomplete",
            ),
            (
                vec![
                    file("manifest.json", manifest.clone()),
                    file("meetings/extra.json", b"{}".to_vec()),
                ],
                Code::InvalidArgument,
                "not listed",
            ),
            (
                vec![file("manifest.json", b"{\"format\": 1}".to_vec())],
                Code::InvalidArgument,
                "manifest.json does not parse",
            ),
        ];
        for (files, code, message) in cases {
            let status = client
                .import_tenant(authorized(futures::stream::iter(files), &token))
                .await
                .expect_err("a bad bundle");
            assert_eq!(status.code(), code, "{status:?}");
            assert!(status.message().contains(message), "{status:?}");
        }
        let listed = client
            .list_meetings(authorized(pb::ListMeetingsRequest::default(), &token))
            .await
            .expect("list")
            .into_inner();
        assert!(listed.meetings.is_empty(), "{:?}", listed.meetings);
    });
}

/// An import whose client stops sending after the manifest is abandoned after the idle
/// limit (2 s here) with DEADLINE_EXCEEDED, and nothing of it is written. (Before, the
/// import's database transaction opened with the manifest and waited for the client,
/// holding a connection for as long as the client liked.)
#[test]
fn an_import_that_stalls_is_abandoned_without_writing_anything() {
    let mut options = options();
    options
        .env
        .push(("KIROKU_IMPORT_IDLE_TIMEOUT_S".into(), "2".into()));
    let cluster = Cluster::start(0, 0, options);
    cluster.enroll_owner_mfa_with_cli();
    let (token, storage_url) = (cluster.access_token(), cluster.storage_url());
    block_on(async move {
        let meeting = br#"{"meeting_id": "stalled"}"#.to_vec();
        let manifest = kiroku_storage::bundle::Manifest {
            format: kiroku_storage::bundle::FORMAT.into(),
            tenant_id: String::new(),
            tenant_slug: String::new(),
            exported_at: chrono::Utc::now(),
            meetings: 1,
            files: vec![kiroku_storage::bundle::ManifestFile::of(
                "meetings/stalled.json",
                &meeting,
            )],
        };
        let first = pb::BundleFile {
            path: kiroku_storage::bundle::MANIFEST.into(),
            data: serde_json::to_vec(&manifest).expect("manifest"),
        };
        let files =
            futures::StreamExt::chain(futures::stream::iter([first]), futures::stream::pending());
        let mut client = storage(&storage_url).await;
        let status = client
            .import_tenant(authorized(files, &token))
            .await
            .expect_err("a stalled import is abandoned");
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert!(
            status.message().contains("no bundle file within 2 s"),
            "{status:?}"
        );
        let listed = client
            .list_meetings(authorized(pb::ListMeetingsRequest::default(), &token))
            .await
            .expect("list")
            .into_inner();
        assert!(listed.meetings.is_empty(), "{:?}", listed.meetings);
    });
}

/// control 6.1.3: a service whose storage targets are outside the allowed regions (Japan
/// by default) refuses to start, saying which and why.
#[test]
fn control_6_1_3_storage_outside_the_allowed_regions_is_refused_at_start() {
    for (role, variable, value, target) in [
        (
            "storage",
            "KIROKU_DATABASE_REGION",
            "us-east-1",
            "PostgreSQL",
        ),
        ("audit", "KIROKU_NATS_REGION", "eu-west-1", "NATS JetStream"),
        ("gateway", "KIROKU_REGION", "us-east-1", "this service"),
    ] {
        let output = std::process::Command::new(cluster::kiroku())
            .args([
                "serve",
                role,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env("KIROKU_MASTER_KEY", "ab".repeat(32))
            .env_remove("KIROKU_ALLOWED_REGIONS")
            .env(variable, value)
            .output()
            .expect("kiroku");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{role}: {stderr}");
        assert!(
            stderr.contains(target)
                && stderr.contains(&format!("{value:?}"))
                && stderr.contains("outside the allowed regions [jp]"),
            "{role}: {stderr}"
        );
    }
}

/// control 10.1.1: the master key is rotated without downtime or re-encrypting the
/// minutes — the new key is deployed with the old one as previous, the operator
/// re-wraps every tenant's data key, and then the old master key is no longer needed.
#[test]
fn control_10_1_1_master_key_rotation_rewraps_every_data_key() {
    let mut cluster = Cluster::start(0, 0, options());
    let token = cluster.access_token();
    let (account_url, root) = (cluster.account_url(), cluster.root.clone());
    let schema = format!("{root}_storage");
    let read = |url: String, token: String| {
        block_on(async move {
            storage(&url)
                .await
                .get_meeting(authorized(
                    pb::GetMeetingRequest {
                        meeting_id: "rotation".into(),
                    },
                    &token,
                ))
                .await
                .map(|m| m.into_inner().segments.len())
        })
    };
    block_on({
        let (url, token) = (cluster.storage_url(), token.clone());
        async move {
            let tenant = cluster::tenant_of(&account_url, &token).await;
            let transcripts = Transcripts::of(&root).await;
            let message = final_result(&tenant, "s1", "rotation", 1, segment(0, "key rotation"));
            transcripts.publish(&message, "s1:r1").await;
            wait_for_segments(&mut storage(&url).await, &token, "rotation", 1).await;
        }
    });
    let old = cluster.master_key();
    let new = "5a".repeat(32);
    cluster.restart_storage(&[
        ("KIROKU_MASTER_KEY", new.as_str()),
        ("KIROKU_PREVIOUS_MASTER_KEY", old.as_str()),
    ]);
    assert_eq!(
        read(cluster.storage_url(), token.clone()).expect("via the previous key"),
        1
    );
    let rotate = |cluster: &Cluster| {
        let output = cluster
            .cli(&["admin", "storage", "rotate-master-key"])
            .env("KIROKU_STORAGE_URL", cluster.storage_url())
            .env("KIROKU_OPERATOR_TOKEN", cluster::OPERATOR_TOKEN)
            .output()
            .expect("kiroku");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (ok, out, err) = rotate(&cluster);
    assert!(
        ok && out.starts_with("1 data keys re-wrapped"),
        "{out}{err}"
    );
    let (ok, out, _) = rotate(&cluster);
    assert!(
        ok && out.starts_with("0 data keys re-wrapped"),
        "idempotent: {out}"
    );
    let (ok, ids) = cluster::psql(
        &cluster::database_url(),
        &format!("SELECT DISTINCT key_id FROM \"{schema}\".data_keys"),
    );
    assert!(
        ok && ids.starts_with("local:") && !ids.contains('\n'),
        "{ids}"
    );
    // The new key alone now opens everything; the old key alone opens nothing.
    cluster.restart_storage(&[("KIROKU_MASTER_KEY", new.as_str())]);
    assert_eq!(
        read(cluster.storage_url(), token.clone()).expect("new key only"),
        1
    );
    cluster.restart_storage(&[("KIROKU_MASTER_KEY", old.as_str())]);
    let status = read(cluster.storage_url(), token).expect_err("old key only");
    assert_eq!(status.code(), Code::DataLoss, "{status:?}");
}
