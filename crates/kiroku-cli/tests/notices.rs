//! Service notices end to end (controls 12.1.2, 12.6.1, 16.1.1): the operator publishes
//! through the real audit service, the account service names each tenant's admins, and
//! the mail goes over SMTP to a real SMTP server (Python's aiosmtpd, `tests/smtp/sink.py`)
//! started by the test; tenants list their notices through the web API.

use kiroku_tests::cluster;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, OPERATOR_TOKEN, Options, authorized, block_on};
use kiroku_proto::account::v1 as account;
use kiroku_proto::audit::v1 as pb;
use kiroku_proto::audit::v1::notice_service_client::NoticeServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// The aiosmtpd server, stopped on drop.
struct SmtpSink {
    child: Child,
    dir: PathBuf,
}

impl SmtpSink {
    fn start(port: u16, dir: &Path) -> Self {
        let python = std::env::var("KIROKU_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/smtp/sink.py");
        let mut child = Command::new(&python)
            .arg(script)
            .arg(port.to_string())
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the SMTP server (python)");
        let mut line = String::new();
        let stdout = child.stdout.take().expect("stdout");
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read");
        assert_eq!(
            line.trim(),
            "ready",
            "the SMTP sink did not start with {python}: aiosmtpd missing? `make test` \
             installs it (KIROKU_TEST_PYTHON)"
        );
        Self {
            child,
            dir: dir.to_path_buf(),
        }
    }

    /// Every complete mail so far, in arrival order.
    fn mails(&self) -> Vec<serde_json::Value> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .collect()
            })
            .unwrap_or_default();
        paths.sort();
        paths
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).expect("mail")).expect("json"))
            .collect()
    }

    fn wait_for(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mails = self.mails();
            if mails.len() >= n {
                return mails;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} mails arrived",
                mails.len()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The raw messages (for what a parser might hide).
    fn raw(&self) -> Vec<String> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .expect("dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).expect("eml")).to_string())
            .collect()
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

fn operator<T>(body: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert(
        "x-kiroku-operator-token",
        OPERATOR_TOKEN.parse().expect("ascii"),
    );
    request
}

fn header<'a>(mail: &'a serde_json::Value, name: &str) -> Vec<&'a str> {
    mail["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .filter(|h| h[0].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
        .filter_map(|h| h[1].as_str())
        .collect()
}

fn recipients(mails: &[serde_json::Value]) -> Vec<String> {
    let mut all: Vec<String> = mails
        .iter()
        .flat_map(|m| m["rcpt_tos"].as_array().expect("rcpts").clone())
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect();
    all.sort();
    all
}

fn hours_ago(hours: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: chrono::Utc::now().timestamp() - hours * 3600,
        nanos: 0,
    }
}

async fn notices(url: &str) -> NoticeServiceClient<Channel> {
    NoticeServiceClient::connect(url.to_string())
        .await
        .expect("audit service")
}

async fn list(client: &mut NoticeServiceClient<Channel>, token: &str) -> Vec<pb::Notice> {
    client
        .list_notices(authorized(pb::ListNoticesRequest::default(), token))
        .await
        .expect("list")
        .into_inner()
        .notices
}

/// Invites `email` with `role` into the admin's tenant; the new user's access token.
async fn add_user(account_url: &str, admin: &str, email: &str, role: account::Role) -> String {
    let mut accounts =
        account::account_service_client::AccountServiceClient::connect(account_url.to_string())
            .await
            .expect("account");
    let invitation = accounts
        .invite_user(authorized(
            account::InviteUserRequest {
                email: email.into(),
                role: role as i32,
            },
            admin,
        ))
        .await
        .expect("invite")
        .into_inner();
    accounts
        .accept_invitation(account::AcceptInvitationRequest {
            invitation_token: invitation.invitation_token,
            display_name: email.into(),
            password: "a long enough passphrase".into(),
        })
        .await
        .expect("accept")
        .into_inner()
        .access_token
}

/// control 12.1.2, 12.6.1 and 16.1.1: a notice published by the operator reaches the web
/// API of exactly the tenants it concerns and the mailbox of every admin and owner there
/// (not members, not other tenants), through a real SMTP server, with correct headers
/// and no header injection; mail that cannot be sent waits and goes out once the server
/// answers; an incident is flagged when its 72-hour deadline was missed.
#[test]
fn control_12_1_2_16_1_1_notices_reach_web_and_every_admins_mailbox() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cluster = cluster_mailing_to(port);
    let people = people_of_two_tenants(&cluster);
    let audit_url = cluster.audit_url();

    // The SMTP server is not up yet: the notice is stored, its mail waits.
    publish_maintenance_while_mail_is_down(&cluster);
    let sink = SmtpSink::start(port, &dir.path().join("mail"));
    the_waiting_mail_goes_to_tenant_as_admins(&sink, &cluster.owner_email);

    block_on({
        let (audit_url, people) = (audit_url.clone(), people.clone());
        async move {
            let mut client = notices(&audit_url).await;
            incidents_are_flagged_when_late(&mut client).await;
            bad_notices_are_refused(&mut client, &people.owner_a).await;
            each_tenant_lists_what_concerns_it(&mut client, &people).await;
        }
    });

    every_admin_got_mail_and_no_one_else(&sink);
    everything_was_sent(&audit_url);
    a_member_lists_the_notices_with_the_cli(&cluster, &dir.path().join("member-config"));
}

/// A cluster with the audit service, whose notice mail goes to 127.0.0.1:`port`.
fn cluster_mailing_to(port: u16) -> Cluster {
    let env = |k: &str, v: &str| (k.to_string(), v.to_string());
    Cluster::start(
        0,
        0,
        Options {
            audit: true,
            env: vec![
                env("KIROKU_SMTP_HOST", "127.0.0.1"),
                env("KIROKU_SMTP_PORT", &port.to_string()),
                env("KIROKU_SMTP_TLS", "none"),
                env("KIROKU_SMTP_FROM", "Kiroku Notices <notices@kiroku.test>"),
            ],
            ..Options::default()
        },
    )
}

/// Tenant A's owner (with MFA) and member, and tenant B's owner; A also has an admin,
/// `ada@tenant-a.example`.
#[derive(Clone)]
struct People {
    owner_a: String,
    member_a: String,
    owner_b: String,
}

fn people_of_two_tenants(cluster: &Cluster) -> People {
    let owner_a = cluster.owner_token_with_mfa();
    let (account_url, slug_a) = (cluster.account_url(), cluster.tenant_slug.clone());
    let (member_a, owner_b) = block_on({
        let owner_a = owner_a.clone();
        async move {
            add_user(
                &account_url,
                &owner_a,
                "ada@tenant-a.example",
                account::Role::Admin,
            )
            .await;
            let member = add_user(
                &account_url,
                &owner_a,
                "mo@tenant-a.example",
                account::Role::Member,
            )
            .await;
            let mut accounts =
                account::account_service_client::AccountServiceClient::connect(account_url.clone())
                    .await
                    .expect("account");
            let b = accounts
                .register(account::RegisterRequest {
                    tenant_slug: format!("{slug_a}-b"),
                    tenant_name: "Tenant B".into(),
                    email: "owner@tenant-b.example".into(),
                    display_name: "Bo".into(),
                    password: "tenant b passphrase".into(),
                })
                .await
                .expect("register B")
                .into_inner();
            (member, b.tokens.expect("tokens").access_token)
        }
    });
    People {
        owner_a,
        member_a,
        owner_b,
    }
}

/// The operator publishes a maintenance notice for tenant A with the CLI while no SMTP
/// server answers: stored, two mails pending.
fn publish_maintenance_while_mail_is_down(cluster: &Cluster) {
    let audit_url = cluster.audit_url();
    let output = cluster
        .cli(&[
            "admin",
            "notice",
            "publish",
            "--kind",
            "maintenance",
            "--title",
            "計画メンテナンス 12月1日 02:00–04:00",
            "--body",
            "The service is read-only during the window.\nStreams resume afterwards.",
            "--tenant",
            &cluster.tenant_slug,
        ])
        .env("KIROKU_AUDIT_URL", &audit_url)
        .env("KIROKU_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .output()
        .expect("kiroku");
    let (ok, out, err) = (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).to_string(),
        String::from_utf8_lossy(&output.stderr).to_string(),
    );
    assert!(ok, "publish: {out}\n{err}");
    assert!(out.contains("2 mail(s) queued"), "{out}");
    let pending = block_on(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        operator_list(&audit_url).await
    });
    assert_eq!(pending.len(), 1);
    assert_eq!((pending[0].mails_pending, pending[0].mails_sent), (2, 0));
}

/// Once the server answers, the waiting maintenance mail reaches tenant A's admin and
/// owner, one message each, with well-formed headers and times in JST.
fn the_waiting_mail_goes_to_tenant_as_admins(sink: &SmtpSink, owner_a_email: &str) {
    let first = sink.wait_for(2);
    assert_eq!(
        recipients(&first),
        vec![
            "ada@tenant-a.example".to_string(),
            owner_a_email.to_string()
        ]
    );
    for mail in &first {
        let rcpt = mail["rcpt_tos"].as_array().expect("rcpt");
        assert_eq!(rcpt.len(), 1, "one recipient per message");
        for name in ["From", "To", "Subject", "Date", "Message-ID"] {
            assert_eq!(header(mail, name).len(), 1, "{name} in {mail}");
        }
        assert_eq!(header(mail, "To")[0], rcpt[0].as_str().expect("rcpt"));
        assert_eq!(
            header(mail, "From")[0],
            "Kiroku Notices <notices@kiroku.test>"
        );
        assert_eq!(
            header(mail, "Subject")[0],
            "[Kiroku] Maintenance: 計画メンテナンス 12月1日 02:00–04:00"
        );
        let body = mail["body"].as_str().expect("body");
        assert!(body.contains("Streams resume afterwards."), "{body}");
        assert!(body.contains("+09:00"), "times in JST: {body}");
    }
}

/// An incident for every tenant, detected `detected` hours ago.
fn incident(title: &str, detected: i64) -> pb::PublishNoticeRequest {
    pb::PublishNoticeRequest {
        kind: pb::NoticeKind::Incident as i32,
        title: title.into(),
        body: "Some captions were delayed. No data was lost.".into(),
        tenants: vec![],
        detected_at: Some(hours_ago(detected)),
    }
}

/// Published 80 hours after detection: past the 72-hour deadline; after 1 hour: not.
async fn incidents_are_flagged_when_late(client: &mut NoticeServiceClient<Channel>) {
    let late = client
        .publish_notice(operator(incident("Delayed captions (late)", 80)))
        .await
        .expect("late incident")
        .into_inner();
    assert!(late.past_deadline, "{late:?}");
    let timely = client
        .publish_notice(operator(incident("Delayed captions", 1)))
        .await
        .expect("incident")
        .into_inner();
    assert!(!timely.past_deadline);
}

/// Refused: header injection, unknown tenant, missing or wrong operator token, a tenant
/// owner, an incident without its detection time.
async fn bad_notices_are_refused(client: &mut NoticeServiceClient<Channel>, owner_a: &str) {
    let mut injected = incident("Outage\r\nBcc: evil@attacker.example", 1);
    let status = client
        .publish_notice(operator(injected.clone()))
        .await
        .expect_err("injection");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    injected.title = "Outage".into();
    injected.tenants = vec!["no-such-tenant".into()];
    let status = client
        .publish_notice(operator(injected.clone()))
        .await
        .expect_err("unknown tenant");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    injected.tenants.clear();
    let mut wrong = tonic::Request::new(injected.clone());
    wrong.metadata_mut().insert(
        "x-kiroku-operator-token",
        "not-the-operator-token-0123456789abcdef"
            .parse()
            .expect("ascii"),
    );
    let status = client.publish_notice(wrong).await.expect_err("wrong token");
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .publish_notice(authorized(injected.clone(), owner_a))
        .await
        .expect_err("owner is no operator");
    assert_eq!(status.code(), Code::Unauthenticated);
    injected.detected_at = None;
    let status = client
        .publish_notice(operator(injected))
        .await
        .expect_err("no detection time");
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// The web API: each tenant sees what concerns it, newest first, in JST, with its own
/// mail counts only.
async fn each_tenant_lists_what_concerns_it(
    client: &mut NoticeServiceClient<Channel>,
    people: &People,
) {
    let seen_a = list(client, &people.member_a).await;
    let titles: Vec<&str> = seen_a.iter().map(|n| n.title.as_str()).collect();
    assert_eq!(
        titles,
        vec![
            "Delayed captions",
            "Delayed captions (late)",
            "計画メンテナンス 12月1日 02:00–04:00"
        ]
    );
    assert!(seen_a.iter().all(|n| n.published_at.ends_with("+09:00")));
    assert!(
        seen_a.iter().all(|n| n.tenants.is_empty()),
        "audience is the operator's"
    );
    assert!(seen_a[1].past_deadline && !seen_a[0].past_deadline);
    assert!(seen_a[0].deadline.ends_with("+09:00"));
    let seen_b = list(client, &people.owner_b).await;
    let titles: Vec<&str> = seen_b.iter().map(|n| n.title.as_str()).collect();
    assert_eq!(titles, vec!["Delayed captions", "Delayed captions (late)"]);
    assert!(seen_b.iter().all(|n| n.mails_sent + n.mails_pending == 1));
}

/// 2 maintenance + 2 incidents × (2 admins of A + 1 owner of B): no member, no injected
/// recipient, no Bcc header; the late incident's mail names its deadline.
fn every_admin_got_mail_and_no_one_else(sink: &SmtpSink) {
    let mails = sink.wait_for(8);
    std::thread::sleep(Duration::from_millis(500));
    let mails = if sink.mails().len() > mails.len() {
        sink.mails()
    } else {
        mails
    };
    assert_eq!(mails.len(), 8, "{:?}", recipients(&mails));
    let rcpts = recipients(&mails);
    assert!(
        !rcpts.iter().any(|r| r.contains("mo@")),
        "members get no mail"
    );
    assert!(!rcpts.iter().any(|r| r.contains("evil")), "{rcpts:?}");
    assert_eq!(
        rcpts
            .iter()
            .filter(|r| *r == "owner@tenant-b.example")
            .count(),
        2
    );
    for raw in sink.raw() {
        let head = raw.split("\r\n\r\n").next().unwrap_or_default();
        assert!(!head.to_ascii_lowercase().contains("\nbcc:"), "{head}");
    }
    let incident = mails
        .iter()
        .find(|m| header(m, "Subject")[0] == "[Kiroku] Incident: Delayed captions (late)")
        .expect("incident mail");
    let body = incident["body"].as_str().expect("body");
    assert!(
        body.contains("Notification deadline (72 hours): "),
        "{body}"
    );
    assert!(body.contains("Detected: "), "{body}");
}

/// Every notice as the operator sees it.
async fn operator_list(audit_url: &str) -> Vec<pb::Notice> {
    notices(audit_url)
        .await
        .list_notices(operator(pb::ListNoticesRequest::default()))
        .await
        .expect("operator list")
        .into_inner()
        .notices
}

/// The operator's view: three notices, no mail pending or failed.
fn everything_was_sent(audit_url: &str) {
    let all = block_on(operator_list(audit_url));
    assert_eq!(all.len(), 3);
    assert!(
        all.iter()
            .all(|n| n.mails_pending == 0 && n.mails_failed == 0)
    );
    assert_eq!(all[2].tenants.len(), 1, "the maintenance named tenant A");
}

/// The member signs in with the CLI (its own config dir) and lists the notices.
fn a_member_lists_the_notices_with_the_cli(cluster: &Cluster, member_dir: &Path) {
    let run = |args: &[&str]| {
        let output = cluster
            .cli(args)
            .env("KIROKU_CONFIG_DIR", member_dir)
            .env("KIROKU_AUDIT_URL", cluster.audit_url())
            .env("KIROKU_PASSWORD", "a long enough passphrase")
            .output()
            .expect("kiroku");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let (ok, out, err) = run(&[
        "login",
        "--tenant",
        &cluster.tenant_slug,
        "--email",
        "mo@tenant-a.example",
    ]);
    assert!(ok, "{out}\n{err}");
    let (ok, out, err) = run(&["admin", "notice", "list"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("PAST DEADLINE"), "{out}");
    assert!(out.contains("計画メンテナンス"), "{out}");
}
