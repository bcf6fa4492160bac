//! The local multi-node deployment of `deploy/local`, end to end: three `nats-server`
//! processes started from `deploy/local/node-{1,2,3}.conf` (ports moved to free ones, the
//! stores in a temporary directory) form one JetStream cluster; two gateways and three
//! workers (plus the account, audit and storage services) run on it with every stream
//! and bucket replicated three times (`KIROKU_NATS_REPLICAS=3`), and real speech is
//! streamed through it with the real `kiroku stream` client.
//!
//! - Losing a NATS server mid-stream loses nothing: the server SIGKILLed is the one the
//!   stream's gateway is connected to, made the leader of the `AUDIO` stream first (by
//!   step-downs), so the gateway's connection and the stream's leader fail at once.
//! - Every metric the dashboards and alerts use (`tests/chart/used_metrics.py --kiroku`)
//!   is exported by the running cluster's processes.

use kiroku_tests::cluster;

use std::collections::BTreeSet;
use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{
    Cluster, Options, StreamClient, authorized, block_on, check_finals_consistent, report_text,
};
use kiroku_proto::storage::v1 as storage_api;
use kiroku_tests::speech::synthesize;
use kiroku_tests::wer::word_error_rate;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn nats_server_binary() -> &'static str {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("nats-server")
}

/// Polls `ready` every 100 ms until it gives a value, for at most `timeout`.
fn poll<T>(timeout: Duration, mut ready: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = ready() {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// [`poll`], panicking with `what` (and the context `explain` returns) after `timeout`.
fn wait_for<T>(
    timeout: Duration,
    what: &str,
    ready: impl FnMut() -> Option<T>,
    explain: impl Fn() -> String,
) -> T {
    poll(timeout, ready).unwrap_or_else(|| panic!("{what}: not after {timeout:?}\n{}", explain()))
}

/// Asks the leader of `stream` to step down (JetStream API); the reply, or the error.
fn step_down(nats_url: &str, stream: &str) -> String {
    let subject = format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}");
    let url = nats_url.to_string();
    block_on(async move {
        let client = kiroku_core::nats::connect(&url, "kiroku-test")
            .await
            .expect("nats");
        match client.request(subject, "".into()).await {
            Ok(reply) => String::from_utf8_lossy(&reply.payload).to_string(),
            Err(error) => format!("error: {error}"),
        }
    })
}

/// GET on a NATS monitoring port, as JSON. HTTP/1.0, so the body is never chunked.
fn monitor_json(base: &str, path: &str) -> Option<serde_json::Value> {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if head.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// One `nats-server` of the local cluster.
struct NatsNode {
    /// `server_name` in its config: `local-1` …
    name: String,
    client_url: String,
    /// `http://127.0.0.N:PORT`: /healthz, /jsz, /connz.
    monitor: String,
    log: PathBuf,
    /// None once killed.
    child: Option<Child>,
}

/// The three NATS servers of `deploy/local`, killed on drop.
struct NatsCluster {
    nodes: Vec<NatsNode>,
    dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts the three nodes from deploy/local's config files with their ports replaced
    /// by free ones (each node keeps its own 127.0.0.N address), and waits until every
    /// node names the same JetStream meta leader.
    fn start() -> NatsCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        // [client, route, monitoring] port of node N in the config files, and a free one
        // on its address to use instead. The listeners are held until all nine are
        // chosen, so no two are the same.
        let mut listeners = Vec::new();
        let mut ports: Vec<[(u16, u16); 3]> = Vec::new();
        for n in 1..=3u16 {
            let mut node_ports = [(0, 0); 3];
            for (slot, base) in [4310u16, 6310, 8310].into_iter().enumerate() {
                let listener = TcpListener::bind(format!("127.0.0.{n}:0"))
                    .unwrap_or_else(|e| panic!("binding 127.0.0.{n} (loopback /8): {e}"));
                node_ports[slot] = (base + n, listener.local_addr().expect("addr").port());
                listeners.push(listener);
            }
            ports.push(node_ports);
        }
        drop(listeners);
        let mut nodes = Vec::new();
        for n in 1..=3usize {
            let source = repo_root().join(format!("deploy/local/node-{n}.conf"));
            let mut config = std::fs::read_to_string(&source)
                .unwrap_or_else(|e| panic!("{}: {e}", source.display()));
            let name = format!("local-{n}");
            assert!(
                config.contains(&format!("server_name: {name}")),
                "{} does not name its server {name}; update this test",
                source.display()
            );
            for (k, node_ports) in ports.iter().enumerate() {
                for (config_port, free_port) in node_ports {
                    let from = format!("127.0.0.{}:{config_port}", k + 1);
                    let to = format!("127.0.0.{}:{free_port}", k + 1);
                    // A node's own three addresses, and every route, must be there.
                    if k + 1 == n || (*config_port / 10) == 631 {
                        assert!(
                            config.contains(&from),
                            "{} has no {from}; update this test",
                            source.display()
                        );
                    }
                    config = config.replace(&from, &to);
                }
            }
            let path = dir.path().join(format!("node-{n}.conf"));
            std::fs::write(&path, config).expect("write config");
            let log = dir.path().join(format!("node-{n}.log"));
            // store_dir is relative: node-N under the working directory, as cluster.sh runs it.
            let child = Command::new(nats_server_binary())
                .arg("-c")
                .arg(&path)
                .arg("-l")
                .arg(&log)
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("nats-server (make test installs it)");
            nodes.push(NatsNode {
                name,
                client_url: format!("nats://127.0.0.{n}:{}", ports[n - 1][0].1),
                monitor: format!("http://127.0.0.{n}:{}", ports[n - 1][2].1),
                log,
                child: Some(child),
            });
        }
        let nats = NatsCluster { nodes, dir };
        let leader = wait_for(
            Duration::from_secs(60),
            "a JetStream meta leader all three nodes agree on",
            || {
                let leaders: Vec<String> = nats
                    .nodes
                    .iter()
                    .map(|node| {
                        monitor_json(&node.monitor, "/jsz")
                            .and_then(|jsz| {
                                jsz["meta_cluster"]["leader"].as_str().map(String::from)
                            })
                            .unwrap_or_default()
                    })
                    .collect();
                let first = leaders.first()?.clone();
                (!first.is_empty() && leaders.iter().all(|l| *l == first)).then_some(first)
            },
            || nats.logs(),
        );
        eprintln!(
            "NATS cluster up in {}: meta leader {leader}",
            nats.dir.path().display()
        );
        nats
    }

    /// Every node's client URL, comma-separated: `KIROKU_NATS_URL` of the services.
    fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|node| node.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn running(&self) -> impl Iterator<Item = &NatsNode> {
        self.nodes.iter().filter(|node| node.child.is_some())
    }

    /// The leader of `stream` that every running node reports (None while they
    /// disagree, or during an election).
    fn stream_leader(&self, stream: &str) -> Option<String> {
        let mut leaders = BTreeSet::new();
        for node in self.running() {
            let jsz = monitor_json(&node.monitor, "/jsz?accounts=true&streams=true")?;
            let leader = stream_detail(&jsz, stream)?["cluster"]["leader"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            leaders.insert(leader);
        }
        match leaders.into_iter().collect::<Vec<_>>().as_slice() {
            [leader] if !leader.is_empty() => Some(leader.clone()),
            _ => None,
        }
    }

    /// Messages in `stream`, as the first running node that knows it says.
    fn stream_messages(&self, stream: &str) -> Option<u64> {
        self.running().find_map(|node| {
            let jsz = monitor_json(&node.monitor, "/jsz?accounts=true&streams=true")?;
            stream_detail(&jsz, stream)?["state"]["messages"].as_u64()
        })
    }

    /// The node holding the client connection named `name` that subscribes to a subject
    /// containing `needle`: which NATS server a service's session traffic goes through.
    fn connected_node(&self, name: &str, needle: &str) -> Option<usize> {
        self.nodes.iter().position(|node| {
            node.child.is_some()
                && monitor_json(&node.monitor, "/connz?subs=1").is_some_and(|connz| {
                    connz["connections"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|connection| {
                            connection["name"] == name
                                && connection["subscriptions_list"]
                                    .as_array()
                                    .into_iter()
                                    .flatten()
                                    .any(|subject| {
                                        subject.as_str().is_some_and(|s| s.contains(needle))
                                    })
                        })
                })
        })
    }

    /// SIGKILL: no lame duck, no goodbye to the cluster.
    fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|node| {
                format!(
                    "==== {} ({})\n{}",
                    node.name,
                    node.log.display(),
                    std::fs::read_to_string(&node.log).unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn stream_detail<'a>(jsz: &'a serde_json::Value, stream: &str) -> Option<&'a serde_json::Value> {
    jsz["account_details"]
        .as_array()?
        .iter()
        .filter_map(|account| account["stream_detail"].as_array())
        .flatten()
        .find(|detail| detail["name"] == stream)
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index);
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

/// The deploy/local topology: the NATS cluster, then Kiroku on it. Fields drop in
/// order: Kiroku's processes stop before the NATS servers.
struct LocalCluster {
    kiroku: Cluster,
    nats: NatsCluster,
}

impl LocalCluster {
    /// Three NATS nodes; two gateways, three workers, account, audit and storage with
    /// `KIROKU_NATS_URL` listing all three nodes and `KIROKU_NATS_REPLICAS=3`.
    fn start() -> LocalCluster {
        let nats = NatsCluster::start();
        let kiroku = Cluster::start(
            2,
            3,
            Options {
                nats_url: nats.urls(),
                env: vec![("KIROKU_NATS_REPLICAS".into(), "3".into())],
                storage: true,
                audit: true,
                // Three workers share the machine's cores.
                worker_threads: 1,
                ..Options::default()
            },
        );
        LocalCluster { kiroku, nats }
    }

    fn gateways(&self) -> String {
        format!(
            "{},{}",
            self.kiroku.gateway_url(0),
            self.kiroku.gateway_url(1)
        )
    }

    fn logs(&self) -> String {
        format!("{}\n{}", self.kiroku.logs(), self.nats.logs())
    }
}

fn sentences() -> Vec<&'static str> {
    kiroku_tests::speech::streaming_meeting_sentences()
}

/// (start ms, end ms, text) of each final in a `kiroku stream --report`.
fn client_finals(report: &serde_json::Value) -> Vec<(u64, u64, String)> {
    report["finals"]
        .as_array()
        .expect("finals")
        .iter()
        .map(|f| {
            let segment = &f["segment"];
            (
                segment["start_ms"].as_u64().expect("start_ms"),
                segment["end_ms"].as_u64().expect("end_ms"),
                segment["text"]
                    .as_str()
                    .unwrap_or_default()
                    .trim()
                    .to_string(),
            )
        })
        .collect()
}

/// (start ms, end ms, text) of each segment of the tenant's one meeting, through the
/// storage service's ListMeetings and GetMeeting (None until the meeting exists).
fn stored_minutes(cluster: &Cluster) -> Option<Vec<(u64, u64, String)>> {
    let (url, token) = (cluster.storage_url(), cluster.access_token());
    block_on(async move {
        let mut storage = storage_api::storage_client::StorageClient::connect(url)
            .await
            .expect("storage service");
        let meetings = storage
            .list_meetings(authorized(
                storage_api::ListMeetingsRequest {
                    page_size: 10,
                    ..Default::default()
                },
                &token,
            ))
            .await
            .expect("ListMeetings")
            .into_inner()
            .meetings;
        assert!(meetings.len() <= 1, "one stream, meetings: {meetings:?}");
        let meeting_id = meetings.first()?.meeting_id.clone();
        let meeting = storage
            .get_meeting(authorized(
                storage_api::GetMeetingRequest { meeting_id },
                &token,
            ))
            .await
            .expect("GetMeeting")
            .into_inner();
        Some(
            meeting
                .segments
                .into_iter()
                .map(|s| (s.start_ms, s.end_ms, s.text.trim().to_string()))
                .collect(),
        )
    })
}

/// The client seqs of the frames in `stream` (AUDIO), in stream order: a diagnostic
/// for a lost stretch of speech (workers read the audio in this order, and skip audio
/// that arrives behind what they already decoded). Best effort: what could be read.
fn audio_order(nats_url: &str, stream: &str) -> Vec<u64> {
    use prost::Message as _;
    let (url, stream) = (nats_url.to_string(), stream.to_string());
    block_on(async move {
        let Ok(client) = kiroku_core::nats::connect(&url, "kiroku-test").await else {
            return Vec::new();
        };
        let js = async_nats::jetstream::new(client);
        let Ok(mut stream) = js.get_stream(&stream).await else {
            return Vec::new();
        };
        let Ok(info) = stream.info().await else {
            return Vec::new();
        };
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let mut seqs = Vec::new();
        for stream_seq in first..=last {
            let Ok(message) = stream.get_raw_message(stream_seq).await else {
                break;
            };
            if let Ok(frame) =
                kiroku_proto::events::v1::AudioFrame::decode(message.payload.as_ref())
            {
                seqs.push(frame.seq);
            }
        }
        seqs
    })
}

/// "a..b" runs of `seqs`, where each run is in order: one run when nothing was
/// reordered.
fn runs(seqs: &[u64]) -> Vec<String> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &seq in seqs {
        match runs.last_mut() {
            Some((_, end)) if seq == *end || seq == *end + 1 => *end = seq,
            _ => runs.push((seq, seq)),
        }
    }
    runs.iter().map(|(a, b)| format!("{a}..{b}")).collect()
}

#[test]
fn a_nats_node_killed_mid_stream_loses_nothing() {
    let mut local = LocalCluster::start();
    let audio_stream = local.kiroku.layout().audio_stream();
    let sentences = sentences();
    let reference = sentences[..6].join(" ");
    let wav = synthesize(
        local.kiroku.dir.path(),
        "meeting",
        &reference,
        16_000,
        1,
        0.5,
    )
    .expect("synthesize speech");
    let mut client =
        StreamClient::spawn(local.kiroku.dir.path(), "c", &wav, &local.gateways(), 1.0);
    client.wait_for_finals(1, Duration::from_secs(90));

    // The NATS node the stream's gateway is connected to (it subscribes to the
    // session's interim subject there).
    let target = wait_for(
        Duration::from_secs(30),
        "the gateway's connection carrying the session",
        || local.nats.connected_node("kiroku-gateway", ".interim."),
        || local.logs(),
    );
    let target_name = local.nats.nodes[target].name.clone();
    // Make it the leader of AUDIO too: step the leader down until the election lands on
    // it (a step-down elects one of the other replicas). Best effort: should ten
    // elections (or 60 s) miss it, the gateway's node is killed all the same.
    let nats_url = local.nats.urls();
    let give_up = Instant::now() + Duration::from_secs(60);
    for _ in 0..10 {
        let Some(leader) = poll(give_up.saturating_duration_since(Instant::now()), || {
            local.nats.stream_leader(&audio_stream)
        }) else {
            break;
        };
        if leader == target_name {
            break;
        }
        let reply = step_down(&nats_url, &audio_stream);
        eprintln!("AUDIO leader {leader} steps down: {reply}");
        // Until the nodes agree on another leader (should the same one be elected
        // again, the next round asks again).
        poll(Duration::from_secs(10), || {
            local
                .nats
                .stream_leader(&audio_stream)
                .filter(|l| *l != leader)
        });
    }
    let leader = local.nats.stream_leader(&audio_stream).unwrap_or_default();
    let worker_node = local
        .nats
        .connected_node("kiroku-worker", ".presence.")
        .map(|i| local.nats.nodes[i].name.clone());
    eprintln!(
        "killing {target_name}: the gateway's node; AUDIO leader {leader}; the session's worker on {worker_node:?}"
    );
    assert!(
        client.child.try_wait().expect("client").is_none(),
        "the stream ended before the kill: make the speech longer"
    );
    let frames_before = local
        .nats
        .stream_messages(&audio_stream)
        .expect("AUDIO message count");
    local.nats.kill(target);

    let report = client.finish(Duration::from_secs(240));
    let frames_after = wait_for(
        Duration::from_secs(10),
        "AUDIO message count from a surviving node",
        || local.nats.stream_messages(&audio_stream),
        || local.logs(),
    );
    eprintln!(
        "reconnects {}, AUDIO frames {frames_before} at the kill, {frames_after} in all",
        report["reconnects"]
    );
    // The kill was mid-stream: audio kept arriving (and being stored) after it.
    assert!(
        frames_after > frames_before,
        "no audio stored after the kill ({frames_before} → {frames_after})"
    );
    let order = runs(&audio_order(&nats_url, &audio_stream));
    eprintln!("AUDIO frame seqs in stream order: {order:?}");
    check_finals_consistent(&report);
    let text = report_text(&report);
    let wer = word_error_rate(&reference, &text);
    eprintln!("WER {wer:.3}: {text}");
    assert!(
        wer <= 0.15,
        "WER {wer:.3} > 0.15\nreference: {reference}\nhypothesis: {text}\n\
         AUDIO frame seqs in stream order: {order:?}\n{}",
        local.logs()
    );
    // The stored minutes are exactly the client's finals.
    let finals = client_finals(&report);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stored = stored_minutes(&local.kiroku);
        if stored.as_ref() == Some(&finals) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stored minutes differ from the client's finals\nstored {stored:?}\nclient {finals:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The Kiroku metric names the dashboards, alerts and autoscalers use, from
/// `tests/chart/used_metrics.py --kiroku` (it needs PyPI promql-parser and PyYAML:
/// `make pyenv` installs them into build/pyenv, KIROKU_TEST_PYTHON).
fn used_kiroku_metrics() -> Vec<String> {
    let python = std::env::var("KIROKU_TEST_PYTHON").unwrap_or_else(|_| {
        let venv = repo_root().join("build/pyenv/bin/python");
        if venv.is_file() {
            venv.display().to_string()
        } else {
            "python3".into()
        }
    });
    let output = Command::new(&python)
        .arg(repo_root().join("tests/chart/used_metrics.py"))
        .arg("--kiroku")
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    assert!(
        output.status.success(),
        "used_metrics.py --kiroku failed with {python} (promql-parser or PyYAML missing? \
         `make pyenv` installs them; KIROKU_TEST_PYTHON=build/pyenv/bin/python):\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let names: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| line.trim().to_string())
        .filter(|line| !line.is_empty())
        .collect();
    assert!(!names.is_empty(), "used_metrics.py --kiroku listed nothing");
    names
}

/// (sample name, value) of every sample line of Prometheus text.
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| {
            let name_end = line.find(['{', ' '])?;
            let value = line.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((line[..name_end].to_string(), value))
        })
        .collect()
}

#[test]
fn every_metric_the_dashboards_and_alerts_use_is_exported() {
    let used = used_kiroku_metrics();
    let local = LocalCluster::start();
    let sentences = sentences();
    let wav = synthesize(
        local.kiroku.dir.path(),
        "meeting",
        &sentences[..2].join(" "),
        16_000,
        1,
        0.5,
    )
    .expect("synthesize speech");
    let client = StreamClient::spawn(local.kiroku.dir.path(), "c", &wav, &local.gateways(), 2.0);
    let report = client.finish(Duration::from_secs(120));
    assert!(!report["finals"].as_array().expect("finals").is_empty());
    // kiroku_errors_total has a series only once a call failed: one without credentials.
    // On each gateway, so both have served a call.
    for url in [local.kiroku.gateway_url(0), local.kiroku.gateway_url(1)] {
        let refused = block_on(async move {
            use kiroku_proto::transcribe::v1 as api;
            api::transcription_client::TranscriptionClient::connect(url)
                .await
                .expect("gateway")
                .transcribe(api::TranscribeRequest::default())
                .await
        });
        assert_eq!(
            refused.expect_err("no credentials").code(),
            tonic::Code::Unauthenticated
        );
    }
    // One call (refused) straight to the audit and storage services, which a stream
    // does not call: every service then has served traffic.
    let (audit_url, storage_url) = (local.kiroku.audit_url(), local.kiroku.storage_url());
    block_on(async move {
        use kiroku_proto::audit::v1 as audit;
        use kiroku_proto::storage::v1 as storage;
        let listed = audit::audit_service_client::AuditServiceClient::connect(audit_url)
            .await
            .expect("audit")
            .list_events(audit::ListEventsRequest::default())
            .await;
        assert_eq!(
            listed.expect_err("refused").code(),
            tonic::Code::Unauthenticated
        );
        let listed = storage::storage_client::StorageClient::connect(storage_url)
            .await
            .expect("storage")
            .list_meetings(storage::ListMeetingsRequest::default())
            .await;
        assert_eq!(
            listed.expect_err("refused").code(),
            tonic::Code::Unauthenticated
        );
    });

    let kiroku = &local.kiroku;
    let processes: Vec<&cluster::Proc> = kiroku
        .gateways
        .iter()
        .chain(&kiroku.workers)
        .chain(&kiroku.account)
        .chain(&kiroku.audit)
        .chain(&kiroku.storage)
        .collect();
    assert_eq!(processes.len(), 8, "2 gateways, 3 workers, 3 services");
    // Counters and histograms must have moved somewhere (the stream and the refusal
    // drove every one of them); gauges (active streams, backlog) may read 0 by now.
    let mut exported: std::collections::BTreeMap<String, f64> = Default::default();
    // The RED families of every gRPC service (gateway, account, audit, storage) moved
    // on that service itself; process metrics and build info are on every process.
    let grpc_services: Vec<&cluster::Proc> = kiroku
        .gateways
        .iter()
        .chain(&kiroku.account)
        .chain(&kiroku.audit)
        .chain(&kiroku.storage)
        .collect();
    for proc in &processes {
        let (status, text) = cluster::http_get(&proc.admin, "/metrics")
            .unwrap_or_else(|| panic!("GET {}/metrics", proc.admin));
        assert_eq!(status, 200, "{}/metrics: {text}", proc.admin);
        let own: std::collections::BTreeMap<String, f64> =
            samples(&text)
                .into_iter()
                .fold(Default::default(), |mut own, (name, value)| {
                    *own.entry(name).or_default() += value;
                    own
                });
        let mut expected = vec![
            "kiroku_build_info",
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "kiroku_nats_connected",
        ];
        if grpc_services.iter().any(|p| p.admin == proc.admin) {
            expected.extend([
                "kiroku_grpc_server_requests_total",
                "kiroku_grpc_server_request_duration_seconds_count",
            ]);
        }
        for name in expected {
            // CPU time counts in 10 ms ticks: a service that has done little since it
            // started may read 0, so that one only has to be there.
            let moved = |v: &f64| *v > 0.0 || name == "process_cpu_seconds_total";
            assert!(
                own.get(name).is_some_and(moved),
                "{name} is missing or 0 on {}:\n{text}",
                proc.admin
            );
        }
        for (name, value) in samples(&text) {
            let entry = exported.entry(name).or_insert(value);
            *entry = entry.max(value);
        }
    }
    let missing: Vec<&String> = used.iter().filter(|n| !exported.contains_key(*n)).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboards or alerts, exported by no process: {missing:?}\nexported: {:?}",
        exported.keys().collect::<Vec<_>>()
    );
    // Counters that only move when something fails to be stored, or when every worker
    // is at capacity: exported (checked above) but not expected to move during a
    // healthy stream (the queue has its own test, streaming.rs `streams_beyond_…`).
    let failure_only = [
        "kiroku_consumer_dead_letters_total",
        "kiroku_consumer_retries_total",
        "kiroku_db_errors_total",
        "kiroku_streams_queued_total",
    ];
    let still: Vec<&String> = used
        .iter()
        .filter(|n| !failure_only.contains(&n.as_str()))
        .filter(|n| {
            ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .any(|suffix| n.ends_with(suffix))
                && exported[*n] <= 0.0
        })
        .collect();
    assert!(
        still.is_empty(),
        "counters and histograms that never moved during a stream: {still:?}"
    );
}
