//! A real Kiroku cluster for end-to-end tests: `kiroku serve gateway|worker` processes
//! against the real NATS server, under a cluster root of their own (so tests running
//! in parallel never share streams or jobs). Dropping the cluster kills the processes
//! and deletes its streams.
//!
//! Enabled by the `cluster` feature; the tests of `kiroku-cli` use it. The processes are
//! the `kiroku` binary Cargo builds for those tests ([`kiroku`]).

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kiroku_core::nats::Layout;
use kiroku_core::ready::ReadyLine;

/// The `kiroku` binary under test: `KIROKU_TEST_BIN` if set, else the one Cargo built
/// beside the test executable (`target/<profile>/kiroku`; test executables live in
/// `target/<profile>/deps`). Cargo builds a package's binaries for its integration tests,
/// and nextest names it in `NEXTEST_BIN_EXE_kiroku`.
pub fn kiroku() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        for variable in ["KIROKU_TEST_BIN", "NEXTEST_BIN_EXE_kiroku"] {
            if let Ok(path) = std::env::var(variable) {
                return path;
            }
        }
        let test = std::env::current_exe().expect("the test executable's path");
        let profile = test
            .parent()
            .and_then(Path::parent)
            .expect("the test executable is in target/<profile>/deps");
        let binary = profile.join("kiroku");
        assert!(
            binary.exists(),
            "no kiroku binary at {}: run the tests with cargo, or set KIROKU_TEST_BIN",
            binary.display()
        );
        binary.display().to_string()
    })
}

/// PostgreSQL as the schema owner (each cluster migrates a schema of its own).
pub fn database_url() -> String {
    std::env::var("KIROKU_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/kiroku_test".into())
}

pub fn redis_url() -> String {
    std::env::var("KIROKU_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The password of every test tenant's owner.
pub const OWNER_PASSWORD: &str = "correct horse battery staple";

pub fn nats_url() -> String {
    std::env::var("KIROKU_NATS_URL").unwrap_or_else(|_| kiroku_core::nats::DEFAULT_NATS_URL.into())
}

/// A child process whose stderr goes to a log file.
#[derive(Debug)]
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
    /// gRPC URL (gateways) and admin URL.
    pub grpc: Option<String>,
    pub admin: String,
}

impl Proc {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

/// The service operator's token every test cluster is configured with.
pub const OPERATOR_TOKEN: &str = "test-operator-token-0123456789abcdef";

#[derive(Debug, Clone)]
pub struct Options {
    pub ack_wait_s: f64,
    pub resume_window_s: u64,
    pub engine: &'static str,
    pub nats_url: String,
    pub worker_threads: usize,
    pub worker_sessions: usize,
    pub env: Vec<(String, String)>,
    /// Also run the audit service.
    pub audit: bool,
    /// Also run the storage service.
    pub storage: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            ack_wait_s: 3.0,
            resume_window_s: 60,
            engine: "whisper",
            nats_url: nats_url(),
            worker_threads: 2,
            worker_sessions: 4,
            env: Vec::new(),
            audit: false,
            storage: false,
        }
    }
}

#[derive(Debug)]
pub struct Cluster {
    pub root: String,
    pub options: Options,
    pub dir: tempfile::TempDir,
    pub gateways: Vec<Proc>,
    pub workers: Vec<Proc>,
    pub account: Option<Proc>,
    pub audit: Option<Proc>,
    pub storage: Option<Proc>,
    /// Other services started by a test (a clean storage instance).
    pub extra: Vec<Proc>,
    /// The tenant the cluster registered, whose owner login is cached in `config_dir`.
    pub tenant_slug: String,
    pub owner_email: String,
    secret: String,
    /// 64 hex characters: the storage service's master key.
    master_key: String,
}

/// Starts a service of a test cluster ([`kiroku_core::supervise::start`]); panics with
/// its log when it did not start.
fn start_service(
    command: &mut Command,
    log: &Path,
    timeout: Duration,
    what: &str,
) -> (Child, ReadyLine) {
    match kiroku_core::supervise::start(command, log, timeout) {
        Ok(started) => (started.child, started.ready),
        Err(error) => panic!(
            "{what}: {error}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        ),
    }
}

/// GET on the admin port; (status, body).
pub fn http_get(base: &str, path: &str) -> Option<(u16, String)> {
    kiroku_core::supervise::http_get(base, path, Duration::from_secs(5))
}

/// What [`Cluster::builder`] starts: `Cluster::builder().gateways(1).workers(2)
/// .storage().start()`. The account service always runs.
#[derive(Debug, Clone, Default)]
pub struct ClusterBuilder {
    gateways: usize,
    workers: usize,
    options: Options,
}

impl ClusterBuilder {
    pub fn gateways(mut self, count: usize) -> Self {
        self.gateways = count;
        self
    }
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = count;
        self
    }
    /// Also run the audit service.
    pub fn audit(mut self) -> Self {
        self.options.audit = true;
        self
    }
    /// Also run the storage service.
    pub fn storage(mut self) -> Self {
        self.options.storage = true;
        self
    }
    /// The remaining options (NATS URL, worker threads, environment…).
    pub fn options(mut self, options: Options) -> Self {
        let (audit, storage) = (self.options.audit, self.options.storage);
        self.options = options;
        self.options.audit |= audit;
        self.options.storage |= storage;
        self
    }
    pub fn start(self) -> Cluster {
        Cluster::start(self.gateways, self.workers, self.options)
    }
}

impl Cluster {
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// `gateways` gateways and `workers` workers beside the account service (and the
    /// audit and storage services when `options` asks).
    pub fn start(gateways: usize, workers: usize, options: Options) -> Cluster {
        let root = format!("t{}", uuid::Uuid::new_v4().simple())[..13].to_string();
        let mut cluster = Cluster {
            root,
            options,
            dir: tempfile::tempdir().expect("tempdir"),
            gateways: Vec::new(),
            workers: Vec::new(),
            account: None,
            audit: None,
            storage: None,
            extra: Vec::new(),
            tenant_slug: String::new(),
            owner_email: String::new(),
            secret: format!("{}", uuid::Uuid::new_v4().simple()),
            master_key: format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
        };
        cluster.spawn_account();
        cluster.register_tenant();
        if cluster.options.audit {
            cluster.spawn_audit();
        }
        if cluster.options.storage {
            cluster.spawn_storage();
        }
        for _ in 0..workers {
            cluster.spawn_worker();
        }
        for _ in 0..gateways {
            cluster.spawn_gateway();
        }
        cluster
    }

    /// Where the CLI of this cluster caches its login (`KIROKU_CONFIG_DIR`).
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    pub fn account_url(&self) -> String {
        self.account
            .as_ref()
            .and_then(|a| a.grpc.clone())
            .expect("account url")
    }

    /// A `kiroku` client command signed in as this cluster's cached login.
    pub fn cli(&self, args: &[&str]) -> Command {
        let mut command = Command::new(kiroku());
        command
            .args(args)
            .env("KIROKU_CONFIG_DIR", self.config_dir())
            .env("KIROKU_ACCOUNT_URL", self.account_url())
            .env_remove("KIROKU_API_KEY");
        command
    }

    /// `kiroku admin tenant erase --confirm <slug>` as the owner; what it printed.
    pub fn erase_tenant_with_cli(&self) -> String {
        let (ok, printed, err) = self.run_cli(
            &["admin", "tenant", "erase", "--confirm", &self.tenant_slug],
            None,
        );
        assert!(ok, "erase failed: {err}");
        printed
    }

    /// The cached owner login's access token (fresh: tests are shorter than its life).
    pub fn access_token(&self) -> String {
        let login: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.config_dir().join("credentials.json")).expect("cached login"),
        )
        .expect("login json");
        login["access_token"]
            .as_str()
            .expect("access token")
            .to_string()
    }

    /// Runs the `kiroku` CLI signed in as the cached login (`KIROKU_PASSWORD` set when
    /// given); (succeeded, stdout, stderr).
    pub fn run_cli(&self, args: &[&str], password: Option<&str>) -> (bool, String, String) {
        let mut command = self.cli(args);
        if let Some(audit) = &self.audit {
            command.env("KIROKU_AUDIT_URL", audit.grpc.clone().unwrap_or_default());
        }
        if let Some(storage) = &self.storage {
            command.env(
                "KIROKU_STORAGE_URL",
                storage.grpc.clone().unwrap_or_default(),
            );
        }
        if let Some(password) = password {
            command.env("KIROKU_PASSWORD", password);
        }
        let output = command.output().expect("run kiroku");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    }

    pub fn spawn_account(&mut self) {
        let key = self.dir.path().join("signing-key.der");
        let (mut command, log) = self.command(
            &[
                "serve",
                "account",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--schema",
                &self.root,
                "--signing-key-file",
                key.to_str().expect("utf-8 path"),
            ],
            "account.log",
        );
        let (child, ReadyLine { grpc, admin, .. }) = start_service(
            &mut command,
            &log,
            Duration::from_secs(60),
            "account service",
        );
        self.account = Some(Proc {
            child,
            log,
            grpc,
            admin,
        });
    }

    /// The cached CLI login of the owner enrolls TOTP (its session then carries MFA, and
    /// `access_token` returns an admin-capable token).
    pub fn enroll_owner_mfa_with_cli(&self) {
        let (ok, uri, err) = self.run_cli(&["mfa", "enroll"], Some(OWNER_PASSWORD));
        assert!(ok, "{err}");
        let secret = uri
            .split("secret=")
            .nth(1)
            .and_then(|s| s.split('&').next())
            .expect("secret");
        let secret = kiroku_account::totp::decode_secret(secret).expect("base32");
        let code = kiroku_account::totp::code_at(&secret, kiroku_account::tokens::unix_now())
            .expect("code");
        let (ok, _, err) = self.run_cli(&["mfa", "confirm", &code], None);
        assert!(ok, "{err}");
    }

    /// Signs the owner in through gRPC, enrolls TOTP and returns an access token whose
    /// session passed MFA (what admin calls need).
    pub fn owner_token_with_mfa(&self) -> String {
        use kiroku_proto::account::v1 as pb;
        let url = self.account_url();
        let (slug, email) = (self.tenant_slug.clone(), self.owner_email.clone());
        block_on(async move {
            let mut client = pb::account_service_client::AccountServiceClient::connect(url)
                .await
                .expect("account service");
            let pair = client
                .login(pb::LoginRequest {
                    tenant_slug: slug,
                    email,
                    password: OWNER_PASSWORD.into(),
                    totp_code: String::new(),
                })
                .await
                .expect("owner login")
                .into_inner();
            let enrollment = client
                .enroll_mfa(authorized(
                    pb::EnrollMfaRequest {
                        current_password: OWNER_PASSWORD.into(),
                    },
                    &pair.access_token,
                ))
                .await
                .expect("enroll")
                .into_inner();
            let secret = kiroku_account::totp::decode_secret(&enrollment.secret).expect("secret");
            let code = kiroku_account::totp::code_at(&secret, kiroku_account::tokens::unix_now())
                .expect("code");
            client
                .confirm_mfa(authorized(
                    pb::ConfirmMfaRequest { totp_code: code },
                    &pair.access_token,
                ))
                .await
                .expect("confirm")
                .into_inner()
                .access_token
        })
    }

    /// Starts `kiroku serve <role>` on free ports with its own schema `<root>_<role>`.
    fn spawn_service(&self, role: &str) -> Proc {
        self.spawn_service_in(role, &format!("{}_{role}", self.root))
    }

    /// A second, empty storage service of this cluster (schema `<root>_storage_clean`):
    /// a clean instance to import into.
    /// Returns its gRPC URL.
    pub fn spawn_clean_storage(&mut self) -> String {
        let proc = self.spawn_service_in("storage", &format!("{}_storage_clean", self.root));
        let url = proc.grpc.clone().expect("grpc url");
        self.extra.push(proc);
        url
    }

    fn spawn_service_in(&self, role: &str, schema: &str) -> Proc {
        let account_url = self.account_url();
        let (mut command, log) = self.command(
            &[
                "serve",
                role,
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--schema",
                schema,
                "--account-url",
                &account_url,
            ],
            &format!(
                "{}.log",
                schema
                    .trim_start_matches(&self.root)
                    .trim_start_matches('_')
            ),
        );
        let (child, ReadyLine { grpc, admin, .. }) = start_service(
            &mut command,
            &log,
            Duration::from_secs(60),
            &format!("{role} service"),
        );
        Proc {
            child,
            log,
            grpc,
            admin,
        }
    }

    pub fn spawn_audit(&mut self) {
        self.audit = Some(self.spawn_service("audit"));
    }

    /// The storage service, with this cluster's master key.
    pub fn spawn_storage(&mut self) {
        self.storage = Some(self.spawn_service("storage"));
    }

    /// Stops the storage service and starts it again with `env` added (other master
    /// keys, say).
    pub fn restart_storage(&mut self, env: &[(&str, &str)]) {
        if let Some(mut old) = self.storage.take() {
            let _ = old.child.kill();
            let _ = old.child.wait();
        }
        let saved = self.options.env.clone();
        self.options
            .env
            .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.storage = Some(self.spawn_service("storage"));
        self.options.env = saved;
    }

    /// The storage master key this cluster starts with (64 hex characters).
    pub fn master_key(&self) -> String {
        self.master_key.clone()
    }

    pub fn storage_url(&self) -> String {
        self.storage
            .as_ref()
            .and_then(|s| s.grpc.clone())
            .expect("storage url")
    }

    pub fn audit_url(&self) -> String {
        self.audit
            .as_ref()
            .and_then(|a| a.grpc.clone())
            .expect("audit url")
    }

    /// Registers the cluster's tenant and caches its owner's login.
    fn register_tenant(&mut self) {
        self.tenant_slug = format!("tenant-{}", &self.root[1..9]);
        self.owner_email = format!("owner@{}.example.com", self.tenant_slug);
        let output = self
            .cli(&[
                "admin",
                "tenant",
                "create",
                "--slug",
                &self.tenant_slug,
                "--name",
                "Test tenant",
                "--owner-email",
                &self.owner_email,
            ])
            .env("KIROKU_PASSWORD", OWNER_PASSWORD)
            .output()
            .expect("run kiroku admin tenant create");
        assert!(
            output.status.success(),
            "tenant create failed: {}\n{}",
            String::from_utf8_lossy(&output.stderr),
            self.account
                .as_ref()
                .map(Proc::log_text)
                .unwrap_or_default()
        );
    }

    /// `kiroku <args>` with this cluster's environment, and the path of its log.
    fn command(&self, args: &[&str], log_name: &str) -> (Command, PathBuf) {
        let log = self.dir.path().join(log_name);
        let mut command = Command::new(kiroku());
        command
            .args(args)
            .env("KIROKU_NATS_URL", &self.options.nats_url)
            .env("KIROKU_CLUSTER", &self.root)
            .env("KIROKU_RESUME_SECRET", &self.secret)
            .env("KIROKU_DATABASE_URL", database_url())
            .env("KIROKU_REDIS_URL", redis_url())
            .env("KIROKU_OPERATOR_TOKEN", OPERATOR_TOKEN)
            .env("KIROKU_MASTER_KEY", &self.master_key)
            .env(
                "KIROKU_RESUME_WINDOW_S",
                self.options.resume_window_s.to_string(),
            )
            .env(
                "RUST_LOG",
                "info,kiroku_worker=debug,kiroku_gateway=debug,whisper_rs=off",
            )
            // Tests size workers by --sessions: on a shared 2-core machine a debug-build
            // worker's streams lag, and admission by lag would make tests wait on it.
            .env("KIROKU_WORKER_ADMIT_MAX_LAG_S", "0")
            .envs(self.options.env.iter().map(|(k, v)| (k, v)));
        (command, log)
    }

    pub fn spawn_gateway(&mut self) -> usize {
        let index = self.gateways.len();
        // Without an audit service the forwarded audit API answers UNAVAILABLE.
        let audit_url = self
            .audit
            .as_ref()
            .and_then(|a| a.grpc.clone())
            .unwrap_or_else(|| "http://127.0.0.1:9".into());
        let storage_url = self
            .storage
            .as_ref()
            .and_then(|s| s.grpc.clone())
            .unwrap_or_else(|| "http://127.0.0.1:9".into());
        let (mut command, log) = self.command(
            &[
                "serve",
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
                "--account-url",
                &self.account_url(),
                "--audit-url",
                &audit_url,
                "--storage-url",
                &storage_url,
            ],
            &format!("gateway-{index}.log"),
        );
        let (child, ReadyLine { grpc, admin, .. }) =
            start_service(&mut command, &log, Duration::from_secs(30), "gateway");
        self.gateways.push(Proc {
            child,
            log,
            grpc,
            admin,
        });
        index
    }

    pub fn spawn_worker(&mut self) -> usize {
        self.spawn_worker_with(&[])
    }

    /// A worker with `extra` arguments (`--model base`, `--pool NAME`).
    pub fn spawn_worker_with(&mut self, extra: &[&str]) -> usize {
        let index = self.workers.len();
        let threads = self.options.worker_threads.to_string();
        let sessions = self.options.worker_sessions.to_string();
        let ack_wait = self.options.ack_wait_s.to_string();
        let mut args = vec![
            "serve",
            "worker",
            "--engine",
            self.options.engine,
            "--threads",
            &threads,
            "--sessions",
            &sessions,
            "--ack-wait-s",
            &ack_wait,
        ];
        args.extend_from_slice(extra);
        let (mut command, log) = self.command(&args, &format!("worker-{index}.log"));
        let (mut child, ReadyLine { admin, .. }) =
            start_service(&mut command, &log, Duration::from_secs(30), "worker");
        // Ready = model loaded and the job consumer exists.
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get(&admin, "/readyz").map(|(s, _)| s) != Some(200) {
            if Instant::now() > deadline {
                let _ = child.kill();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "worker exited ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "worker not ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.workers.push(Proc {
            child,
            log,
            grpc: None,
            admin,
        });
        index
    }

    pub fn gateway_url(&self, index: usize) -> String {
        self.gateways[index].grpc.clone().expect("gateway url")
    }

    pub fn logs(&self) -> String {
        self.gateways
            .iter()
            .chain(&self.workers)
            .chain(&self.account)
            .chain(&self.audit)
            .chain(&self.storage)
            .chain(&self.extra)
            .map(|p| format!("==== {}\n{}", p.log.display(), p.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }

    pub fn layout(&self) -> Layout {
        Layout::new(&self.root).expect("valid root")
    }

    /// Consumers on the cluster's TRANSCRIPTS and AUDIO streams (leak checks).
    pub fn consumer_count(&self) -> usize {
        let layout = self.layout();
        let url = self.options.nats_url.clone();
        block_on(async move {
            let client = async_nats::connect(url).await.expect("nats");
            let js = async_nats::jetstream::new(client);
            let mut total = 0;
            for name in [layout.transcripts_stream(), layout.audio_stream()] {
                let mut stream = js.get_stream(name).await.expect("stream");
                total += stream.info().await.expect("info").state.consumer_count;
            }
            total
        })
    }
}

/// Runs one SQL statement with psql; (succeeded, stdout and stderr).
pub fn psql(url: &str, sql: &str) -> (bool, String) {
    let output = Command::new("psql")
        .arg(url)
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .stderr(Stdio::piped())
        .output()
        .expect("psql");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    )
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authorized<T>(body: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header value"),
    );
    request
}

pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for proc in self
            .gateways
            .iter_mut()
            .chain(self.workers.iter_mut())
            .chain(self.account.iter_mut())
            .chain(self.audit.iter_mut())
            .chain(self.storage.iter_mut())
            .chain(self.extra.iter_mut())
        {
            let _ = proc.child.kill();
            let _ = proc.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // The account schema of this cluster.
        let _ = Command::new("psql")
            .arg(database_url())
            .args([
                "-q",
                "-c",
                &format!(
                    "DROP SCHEMA IF EXISTS \"{0}\" CASCADE; \
                     DROP SCHEMA IF EXISTS \"{0}_audit\" CASCADE; \
                     DROP SCHEMA IF EXISTS \"{0}_storage\" CASCADE; \
                     DROP SCHEMA IF EXISTS \"{0}_storage_clean\" CASCADE",
                    self.root
                ),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let layout = self.layout();
        let url = self.options.nats_url.clone();
        block_on(async move {
            if let Ok(Ok(client)) = tokio::time::timeout(
                Duration::from_secs(3),
                kiroku_core::nats::connect(&url, "kiroku-test-cleanup"),
            )
            .await
            {
                layout.destroy(&async_nats::jetstream::new(client)).await;
            }
        });
    }
}

/// A running `kiroku stream` client.
#[derive(Debug)]
pub struct StreamClient {
    pub child: Child,
    pub report: PathBuf,
    lines: mpsc::Receiver<String>,
    pub stdout: Vec<String>,
    stderr: PathBuf,
}

impl StreamClient {
    pub fn spawn(dir: &Path, name: &str, wav: &Path, gateways: &str, speed: f64) -> StreamClient {
        Self::spawn_with(dir, name, wav, gateways, speed, &[])
    }

    /// `kiroku stream` with `extra` arguments (`--language ja`).
    pub fn spawn_with(
        dir: &Path,
        name: &str,
        wav: &Path,
        gateways: &str,
        speed: f64,
        extra: &[&str],
    ) -> StreamClient {
        let report = dir.join(format!("{name}.report.json"));
        let stderr = dir.join(format!("{name}.client.log"));
        let mut child = Command::new(kiroku())
            .args([
                "stream",
                wav.to_str().expect("utf8"),
                "--gateway",
                gateways,
                "--speed",
                &speed.to_string(),
                "--stats",
                "--report",
            ])
            .arg(&report)
            .args(extra)
            // The cluster's owner login (`Cluster::config_dir`); dir is the cluster's.
            .env("KIROKU_CONFIG_DIR", dir.join("config"))
            .env_remove("KIROKU_API_KEY")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("client log"))
            .spawn()
            .expect("spawn kiroku stream");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        StreamClient {
            child,
            report,
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    /// Waits until `n` final lines were printed.
    pub fn wait_for_finals(&mut self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.stdout.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.stdout.push(line),
                Err(_) => panic!(
                    "only {} finals after {timeout:?}: {:?}\nclient: {}",
                    self.stdout.len(),
                    self.stdout,
                    self.stderr_text()
                ),
            }
        }
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Waits for the client to exit successfully; its report.
    pub fn finish(mut self, timeout: Duration) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait().expect("wait") {
                Some(status) => {
                    assert!(
                        status.success(),
                        "kiroku stream failed ({status}): {}",
                        self.stderr_text()
                    );
                    break;
                }
                None if Instant::now() > deadline => {
                    let _ = self.child.kill();
                    panic!(
                        "kiroku stream did not finish in {timeout:?}: {}",
                        self.stderr_text()
                    );
                }
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let text = std::fs::read_to_string(&self.report).expect("report written");
        serde_json::from_str(&text).expect("report is JSON")
    }
}

/// The joined text of a report's finals (with spaces only where the script has them).
pub fn report_text(report: &serde_json::Value) -> String {
    kiroku_core::transcript::join_words(
        report["finals"]
            .as_array()
            .expect("finals")
            .iter()
            .map(|f| f["segment"]["text"].as_str().unwrap_or_default()),
    )
}

/// Finals are numbered 1, 2, 3… without gaps or repeats, and their audio spans and
/// words are in order without overlap: nothing missing, nothing doubled. Each caption is
/// replaced by exactly one later final: the final with its `result_seq`, which arrived
/// after it, and whose words reach past the caption's first word.
pub fn check_finals_consistent(report: &serde_json::Value) {
    check_finals_in_order(report);
    let finals = report["finals"].as_array().expect("finals");
    let captions = report["captions"].as_array().expect("captions");
    for caption in captions {
        let seq = caption["result_seq"].as_u64().expect("caption seq");
        let final_ = finals
            .iter()
            .find(|f| f["result_seq"].as_u64() == Some(seq))
            .unwrap_or_else(|| panic!("caption {caption} is replaced by no final"));
        assert!(
            final_["arrival_ms"].as_f64() >= caption["arrival_ms"].as_f64(),
            "caption {caption} arrived after its final {final_}"
        );
        let caption_start = caption["segment"]["start_ms"].as_u64().expect("start");
        let final_end = final_["segment"]["end_ms"].as_u64().expect("end");
        let previous_end = finals
            .iter()
            .find(|f| f["result_seq"].as_u64() == Some(seq - 1))
            .map_or(0, |f| f["segment"]["end_ms"].as_u64().unwrap_or(0));
        assert!(
            caption_start + 500 >= previous_end && caption_start <= final_end + 500,
            "caption {caption} lies outside its final's time span ({previous_end}..{final_end})"
        );
    }
}

fn check_finals_in_order(report: &serde_json::Value) {
    let finals = report["finals"].as_array().expect("finals");
    assert!(!finals.is_empty(), "no finals");
    let mut previous_end = 0u64;
    for (index, final_) in finals.iter().enumerate() {
        assert_eq!(
            final_["result_seq"].as_u64(),
            Some(index as u64 + 1),
            "result seqs: {finals:?}"
        );
        for word in final_["segment"]["words"].as_array().expect("words") {
            let start = word["start_ms"].as_u64().expect("start");
            let end = word["end_ms"].as_u64().expect("end");
            assert!(
                start + 150 >= previous_end,
                "word {word} overlaps the previous word ending at {previous_end}"
            );
            assert!(end >= start);
            previous_end = previous_end.max(end);
        }
    }
}

/// The tenant id of a token, in the simple form events and subjects carry.
pub async fn tenant_of(account_url: &str, token: &str) -> String {
    use kiroku_proto::account::v1 as account;
    let me =
        account::account_service_client::AccountServiceClient::connect(account_url.to_string())
            .await
            .expect("account")
            .who_am_i(authorized(account::WhoAmIRequest {}, token))
            .await
            .expect("whoami")
            .into_inner();
    uuid::Uuid::try_parse(&me.tenant_id)
        .expect("uuid")
        .simple()
        .to_string()
}

/// What a live stream sends: requests from a channel.
pub type RequestStream =
    tokio_stream::wrappers::ReceiverStream<kiroku_proto::transcribe::v1::StreamTranscribeRequest>;

/// 100 ms of a quiet tone at 16 kHz mono.
pub fn tone_frame(seq: u64) -> kiroku_proto::transcribe::v1::StreamTranscribeRequest {
    let data = (0..1600)
        .flat_map(|i| ((((seq * 1600 + i) as f32 * 0.05).sin() * 2000.0) as i16).to_le_bytes())
        .collect();
    kiroku_proto::transcribe::v1::StreamTranscribeRequest {
        request: Some(
            kiroku_proto::transcribe::v1::stream_transcribe_request::Request::Audio(
                kiroku_proto::transcribe::v1::AudioFrame { data, seq },
            ),
        ),
    }
}

pub fn stream_config(meeting: &str) -> kiroku_proto::transcribe::v1::StreamTranscribeRequest {
    kiroku_proto::transcribe::v1::StreamTranscribeRequest {
        request: Some(
            kiroku_proto::transcribe::v1::stream_transcribe_request::Request::Config(
                kiroku_proto::transcribe::v1::StreamConfig {
                    audio_format: Some(kiroku_proto::transcribe::v1::AudioFormat {
                        encoding: kiroku_proto::transcribe::v1::AudioEncoding::Linear16 as i32,
                        sample_rate_hz: 16_000,
                        channels: 1,
                    }),
                    meeting_id: meeting.into(),
                    ..Default::default()
                },
            ),
        ),
    }
}

/// A live stream that sends a frame every 100 ms until dropped.
#[derive(Debug)]
pub struct LiveStream {
    pub responses: tonic::Streaming<kiroku_proto::transcribe::v1::StreamTranscribeResponse>,
    pub sender: tokio::task::JoinHandle<()>,
}

impl Drop for LiveStream {
    fn drop(&mut self) {
        self.sender.abort();
    }
}

pub async fn open_stream(
    gateway_url: &str,
    credential: &impl Fn(RequestStream) -> tonic::Request<RequestStream>,
    meeting: &str,
) -> Result<LiveStream, tonic::Status> {
    let mut gateway =
        kiroku_proto::transcribe::v1::transcription_client::TranscriptionClient::connect(
            gateway_url.to_string(),
        )
        .await
        .expect("gateway");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(stream_config(meeting)).await.expect("config");
    let sender = tokio::spawn(async move {
        for seq in 1.. {
            if tx.send(tone_frame(seq)).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let request = credential(tokio_stream::wrappers::ReceiverStream::new(rx));
    let mut responses = match gateway.stream_transcribe(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            sender.abort();
            return Err(status);
        }
    };
    // The first answer is the session, or the refusal.
    match tokio::time::timeout(Duration::from_secs(10), responses.message()).await {
        Ok(Ok(Some(first))) => {
            assert!(matches!(
                first.response,
                Some(
                    kiroku_proto::transcribe::v1::stream_transcribe_response::Response::Session(_)
                )
            ));
            Ok(LiveStream { responses, sender })
        }
        Ok(Ok(None)) => panic!("stream closed without a session"),
        Ok(Err(status)) => {
            sender.abort();
            Err(status)
        }
        Err(_) => panic!("no session within 10 s"),
    }
}

impl LiveStream {
    /// Waits for the stream to end; its final status (Ok when closed normally).
    pub async fn ended_within(&mut self, limit: Duration) -> Result<(), tonic::Status> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.responses.message()).await {
                Err(_) => panic!("the stream still runs after {limit:?}"),
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None)) => return Ok(()),
                Ok(Err(status)) => return Err(status),
            }
        }
    }

    /// The client stops sending (half-close) and reads what the gateway still answers
    /// for `period`: afterwards the gateway has nothing more to send, so a client that
    /// then goes away is noticed only by the cancelled call, not by a failed send.
    pub async fn half_close(&mut self, period: Duration) {
        self.sender.abort();
        let until = tokio::time::Instant::now() + period;
        while let Ok(Ok(Some(_))) = tokio::time::timeout_at(until, self.responses.message()).await {
        }
    }

    /// Audio acks keep coming for `period`: the stream is alive.
    pub async fn keeps_acking(&mut self, period: Duration) {
        let until = tokio::time::Instant::now() + period;
        let mut acks = 0;
        while tokio::time::Instant::now() < until {
            match tokio::time::timeout(Duration::from_secs(3), self.responses.message()).await {
                Ok(Ok(Some(response))) => {
                    if matches!(
                        response.response,
                        Some(kiroku_proto::transcribe::v1::stream_transcribe_response::Response::AudioAck(_))
                    ) {
                        acks += 1;
                    }
                }
                other => panic!("the running stream stopped: {other:?}"),
            }
        }
        assert!(acks > 0, "no audio acks");
    }
}

/// The entries of the caller's audit log with `action`, newest first (the first page).
pub async fn audit_entries(
    client: &mut kiroku_proto::audit::v1::audit_service_client::AuditServiceClient<
        tonic::transport::Channel,
    >,
    token: &str,
    action: &str,
) -> Vec<kiroku_proto::audit::v1::AuditEntry> {
    use kiroku_proto::audit::v1 as pb;
    client
        .list_events(authorized(
            pb::ListEventsRequest {
                filter: Some(pb::Filter {
                    action: action.into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
            token,
        ))
        .await
        .expect("list audit entries")
        .into_inner()
        .entries
}
