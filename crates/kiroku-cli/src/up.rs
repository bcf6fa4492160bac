//! `kiroku up`: the whole cluster on this machine (account service, gateway, workers),
//! each role as a child process of this one, exactly as `kiroku serve <role>` runs it
//! in production. It bootstraps a `demo` tenant (password in `.run/demo-password`) and
//! caches its owner's login exactly as `kiroku login` would, so `kiroku stream` works
//! right away.
//!
//! PostgreSQL (`KIROKU_DATABASE_URL`) and Redis (`KIROKU_REDIS_URL`) must answer;
//! `make services` starts local ones (a local `redis-server` is started here when none
//! answers and the binary exists).
//!
//! NATS at `KIROKU_NATS_URL` is used when it answers; otherwise a `nats-server -js` is
//! started with its store under `.run/` (and installed from Debian's packages first when
//! it is missing and we are root). Logs go to `.run/*.log`. Ctrl-C or SIGTERM stops
//! everything cleanly: workers drain, then the gateway stops.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use kiroku_core::supervise::{self, Started};

use crate::InputError;
use crate::serve::Signals;
use kiroku_core::settings::CommonSettings;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: CommonSettings,
    /// gRPC address of the gateway.
    #[arg(long, default_value = kiroku_gateway::DEFAULT_LISTEN)]
    listen: String,
    /// Admin HTTP address of the gateway (/healthz, /readyz, /metrics).
    #[arg(long, default_value = kiroku_gateway::DEFAULT_ADMIN_LISTEN)]
    admin_listen: String,
    /// Worker processes. They share the cores: threads are split between them.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Worker model: an installed model's name (tiny.en, base, …) or the path of a
    /// ggml file [default: tiny.en].
    #[arg(long, value_name = "NAME|PATH")]
    model: Option<String>,
    /// Worker model of the minutes (utterance finals and files), when not --model.
    #[arg(long, value_name = "NAME|PATH")]
    final_model: Option<String>,
    /// Inference threads in all [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
    /// Worker engine: whisper, or null-benchmark (BENCHMARK ONLY: no inference).
    #[arg(long, default_value = "whisper")]
    engine: String,
    /// Sessions per worker.
    #[arg(long, default_value_t = kiroku_worker::DEFAULT_MAX_SESSIONS)]
    sessions: usize,
    /// PostgreSQL as the schema owner (the account service migrates its schema).
    #[arg(long, env = "KIROKU_DATABASE_URL", default_value = kiroku_account::DEFAULT_DATABASE_URL)]
    database_url: String,
    /// Redis.
    #[arg(long, env = "KIROKU_REDIS_URL", default_value = kiroku_account::DEFAULT_REDIS_URL)]
    redis: String,
    /// gRPC address of the account service.
    #[arg(long, default_value = kiroku_account::DEFAULT_LISTEN)]
    account_listen: String,
    /// gRPC address of the audit service.
    #[arg(long, default_value = kiroku_audit::DEFAULT_LISTEN)]
    audit_listen: String,
    /// gRPC address of the storage service.
    #[arg(long, default_value = kiroku_storage::DEFAULT_LISTEN)]
    storage_listen: String,
    /// Where the local NATS store and the logs go.
    #[arg(long, default_value = ".run")]
    run_dir: PathBuf,
}

pub fn run(args: Args) -> Result<()> {
    if args.workers == 0 {
        return Err(InputError("--workers must be at least 1".into()).into());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(up(args))
}

async fn up(args: Args) -> Result<()> {
    // Caught before the first child starts: a SIGTERM during start-up stops the
    // children once they run, instead of leaving them behind.
    let mut signals = Signals::catch()?;
    std::fs::create_dir_all(&args.run_dir)
        .with_context(|| format!("creating {}", args.run_dir.display()))?;
    let run_dir = args.run_dir.canonicalize()?;
    // Started in dependency order; a failed start stops what already runs (kill on drop).
    let mut children = Children::default();
    children.nats = ensure_nats(&args.common.nats, &run_dir).await?;
    let local = Local::new(&args, run_dir)?;
    children.redis = ensure_redis(&args.redis, &local.run_dir).await?;
    let (account, account_url, account_admin) = local.start_account().await?;
    children.account = Some(account);
    let demo = bootstrap_demo(&account_url, &local.run_dir).await?;
    let (audit, audit_url, audit_admin) = local.start_service("audit", &account_url).await?;
    children.audit = Some(audit);
    let (storage, storage_url, storage_admin) =
        local.start_service("storage", &account_url).await?;
    children.storage = Some(storage);
    let (workers, worker_admins) = local.start_workers().await?;
    children.workers = workers;
    let (gateway, endpoints) = local
        .start_gateway(&account_url, &audit_url, &storage_url)
        .await?;
    children.gateway = Some(gateway);

    println!("kiroku up: {endpoints}");
    println!("  account={account_url} audit={audit_url} storage={storage_url}");
    // Every process's /healthz, /readyz and /metrics (random ports but the gateway's).
    let mut admins = vec![
        format!("account={account_admin}"),
        format!("audit={audit_admin}"),
        format!("storage={storage_admin}"),
    ];
    admins.extend(
        worker_admins
            .iter()
            .enumerate()
            .map(|(i, admin)| format!("worker-{i}={admin}")),
    );
    println!("  admin: {}", admins.join(" "));
    println!("  {demo}");
    println!(
        "  nats={} cluster={} workers={} x {} threads",
        args.common.nats,
        args.common.cluster,
        args.workers,
        local.threads_per_worker()
    );
    if local.operator.0 == kiroku_account::auth::OperatorToken::FILE_ENV {
        println!(
            "  operator token (notices): KIROKU_OPERATOR_TOKEN_FILE={}",
            local.operator.1
        );
    }
    println!("  logs in {}; Ctrl-C stops", local.run_dir.display());

    let exited = tokio::select! {
        () = signals.recv() => None,
        why = children.first_exit() => Some(why),
    };
    if let Some(why) = &exited {
        eprintln!(
            "kiroku up: {why}; stopping (logs in {})",
            local.run_dir.display()
        );
    }
    children.stop();
    println!("kiroku up: stopped");
    match exited {
        Some(why) => bail!(why),
        None => Ok(()),
    }
}

/// This machine's cluster: the arguments, the binary, the run directory and what every
/// child process is given.
struct Local<'a> {
    args: &'a Args,
    exe: PathBuf,
    run_dir: PathBuf,
    /// `KIROKU_RESUME_SECRET`: the same for every gateway of the cluster.
    resume_secret: String,
    /// The operator token (notices) as the variable to set and its value: the
    /// environment's `KIROKU_OPERATOR_TOKEN`, else `KIROKU_OPERATOR_TOKEN_FILE` naming
    /// `.run/operator-token` (0600, created once).
    operator: (&'static str, String),
}

impl<'a> Local<'a> {
    fn new(args: &'a Args, run_dir: PathBuf) -> Result<Self> {
        let random = || {
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )
        };
        let resume_secret = std::env::var("KIROKU_RESUME_SECRET").unwrap_or_else(|_| random());
        let operator = match std::env::var(kiroku_account::auth::OperatorToken::ENV) {
            Ok(token) => (kiroku_account::auth::OperatorToken::ENV, token),
            Err(_) => {
                let file = run_dir.join("operator-token");
                if !file.is_file() {
                    kiroku_account::tokens::write_private(&file, random().as_bytes())?;
                }
                (
                    kiroku_account::auth::OperatorToken::FILE_ENV,
                    file.display().to_string(),
                )
            }
        };
        Ok(Self {
            args,
            exe: std::env::current_exe().context("finding the kiroku binary")?,
            run_dir,
            resume_secret,
            operator,
        })
    }

    /// `kiroku serve <role_args>` with the cluster's environment ([`Local::start`] runs
    /// it).
    fn command(&self, role_args: &[&str]) -> Command {
        let common = &self.args.common;
        let mut command = Command::new(&self.exe);
        command
            .arg("serve")
            .args(role_args)
            .env(self.operator.0, &self.operator.1)
            .env("KIROKU_NATS_URL", &common.nats)
            .env("KIROKU_CLUSTER", &common.cluster)
            .env("KIROKU_NATS_REPLICAS", common.nats_replicas.to_string())
            .env("KIROKU_RESUME_WINDOW_S", common.resume_window_s.to_string())
            .env("KIROKU_RESUME_SECRET", &self.resume_secret)
            .env("KIROKU_DATABASE_URL", &self.args.database_url)
            .env("KIROKU_REDIS_URL", &self.args.redis);
        command
    }

    /// Starts `command` with its log in `.run/<log>.log` and waits for its ready line
    /// ([`supervise::start`], on a blocking thread: it reads a pipe).
    async fn start(&self, mut command: Command, log: &str) -> Result<Started> {
        let path = self.run_dir.join(format!("{log}.log"));
        let started = tokio::task::spawn_blocking(move || {
            supervise::start(&mut command, &path, Duration::from_secs(30))
        })
        .await
        .context("starting a service")??;
        Ok(started)
    }

    /// The schema of `role` in this cluster root (`account`, `audit_<root>`, …).
    fn schema(&self, role: &str) -> String {
        account_schema(&self.args.common.cluster).replacen("account", role, 1)
    }

    /// The account service (it migrates its schema): the child, its gRPC URL and admin
    /// address.
    async fn start_account(&self) -> Result<(Child, String, String)> {
        let schema = self.schema("account");
        let key = self.run_dir.join("account-signing-key.der");
        let key = key.display().to_string();
        let command = self.command(&[
            "account",
            "--listen",
            &self.args.account_listen,
            "--admin-listen",
            "127.0.0.1:0",
            "--schema",
            &schema,
            "--signing-key-file",
            &key,
        ]);
        let started = self.start(command, "account").await.with_context(|| {
            format!(
                "the account service (is PostgreSQL at {} up? `make services`)",
                self.args.database_url
            )
        })?;
        grpc_endpoints(started)
    }

    /// `kiroku serve <role>` (audit, storage) beside the account service: the child, its
    /// gRPC URL and admin address.
    async fn start_service(
        &self,
        role: &str,
        account_url: &str,
    ) -> Result<(Child, String, String)> {
        let listen = match role {
            "audit" => &self.args.audit_listen,
            _ => &self.args.storage_listen,
        };
        let schema = self.schema(role);
        let mut command = self.command(&[
            role,
            "--listen",
            listen,
            "--admin-listen",
            "127.0.0.1:0",
            "--account-url",
            account_url,
            "--schema",
            &schema,
        ]);
        if role == "storage" {
            self.give_master_key(&mut command)?;
        }
        let started = self
            .start(command, role)
            .await
            .with_context(|| format!("the {role} service"))?;
        grpc_endpoints(started)
    }

    /// The storage master key: the environment's, else `.run/master-key` (0600,
    /// generated once).
    fn give_master_key(&self, command: &mut Command) -> Result<()> {
        use kiroku_storage::crypto::LocalKeyProvider;
        let file = self.run_dir.join("master-key");
        if !file.is_file() {
            let key = LocalKeyProvider::generate_hex()
                .map_err(|e| anyhow::anyhow!("generating a master key: {e}"))?;
            kiroku_account::tokens::write_private(&file, key.as_bytes())?;
        }
        if std::env::var(LocalKeyProvider::ENV).is_err()
            && std::env::var(LocalKeyProvider::FILE_ENV).is_err()
        {
            command.env(LocalKeyProvider::FILE_ENV, &file);
        }
        Ok(())
    }

    /// Inference threads per worker: the budget (`--threads`, else every core) split
    /// between the workers.
    fn threads_per_worker(&self) -> usize {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        (self.args.threads.unwrap_or(cores) / self.args.workers).max(1)
    }

    /// Starts the workers and waits until each is ready (model loaded, job consumer
    /// there): the children and their admin addresses.
    async fn start_workers(&self) -> Result<(Vec<Child>, Vec<String>)> {
        let (threads, sessions) = (
            self.threads_per_worker().to_string(),
            self.args.sessions.to_string(),
        );
        let (mut workers, mut admins) = (Vec::new(), Vec::new());
        for index in 0..self.args.workers {
            let log = format!("worker-{index}");
            let mut command = self.command(&[
                "worker",
                "--threads",
                &threads,
                "--engine",
                &self.args.engine,
                "--sessions",
                &sessions,
            ]);
            if let Some(model) = &self.args.model {
                command.arg("--model").arg(model);
            }
            if let Some(model) = &self.args.final_model {
                command.arg("--final-model").arg(model);
            }
            let started = self
                .start(command, &log)
                .await
                .with_context(|| format!("worker {index}"))?;
            workers.push(started.child);
            admins.push(started.ready.admin);
        }
        for (index, (worker, admin)) in workers.iter_mut().zip(&admins).enumerate() {
            let mut waited = Duration::ZERO;
            while !ready(admin).await {
                if let Ok(Some(status)) = worker.try_wait() {
                    bail!(
                        "worker {index} exited ({status}): see {}",
                        self.run_dir.join(format!("worker-{index}.log")).display()
                    );
                }
                if waited > Duration::from_secs(120) {
                    bail!("worker {index} is not ready after 2 minutes");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                waited += Duration::from_millis(200);
            }
        }
        Ok((workers, admins))
    }

    /// The gateway, last: the child and its endpoints line.
    async fn start_gateway(
        &self,
        account_url: &str,
        audit_url: &str,
        storage_url: &str,
    ) -> Result<(Child, String)> {
        let command = self.command(&[
            "gateway",
            "--listen",
            &self.args.listen,
            "--admin-listen",
            &self.args.admin_listen,
            "--account-url",
            account_url,
            "--audit-url",
            audit_url,
            "--storage-url",
            storage_url,
        ]);
        let started = self
            .start(command, "gateway")
            .await
            .context("the gateway")?;
        Ok((started.child, started.ready.to_string()))
    }
}

/// The processes `kiroku up` runs (each killed if dropped: a failed start stops what
/// already runs).
#[derive(Default)]
struct Children {
    nats: Option<Child>,
    redis: Option<Child>,
    account: Option<Child>,
    audit: Option<Child>,
    storage: Option<Child>,
    workers: Vec<Child>,
    gateway: Option<Child>,
}

impl Children {
    /// Which service exited first, and how (a worker, the gateway, a service).
    async fn first_exit(&mut self) -> String {
        loop {
            let named = [
                ("the audit service", self.audit.as_mut()),
                ("the storage service", self.storage.as_mut()),
                ("the account service", self.account.as_mut()),
                ("the gateway", self.gateway.as_mut()),
            ];
            for (name, child) in named {
                if let Some(child) = child
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return format!("{name} exited ({status})");
                }
            }
            for worker in &mut self.workers {
                if let Ok(Some(status)) = worker.try_wait() {
                    return format!("a worker exited ({status})");
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Everything but the workers, in stopping order, each with its grace period: the
    /// gateway, the services, Redis and NATS.
    fn after_workers(&mut self) -> [(Option<&mut Child>, Duration); 6] {
        let seconds = Duration::from_secs;
        [
            (self.gateway.as_mut(), seconds(10)),
            (self.storage.as_mut(), seconds(10)),
            (self.audit.as_mut(), seconds(10)),
            (self.account.as_mut(), seconds(10)),
            (self.redis.as_mut(), seconds(5)),
            (self.nats.as_mut(), seconds(10)),
        ]
    }

    /// Every child, killed at once (a failed start, an early return).
    fn kill(&mut self) {
        let mut workers = std::mem::take(&mut self.workers);
        let rest = self
            .after_workers()
            .into_iter()
            .filter_map(|(child, _)| child);
        for child in workers.iter_mut().chain(rest) {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Workers first (they drain and hand sessions back), then the gateway, the
    /// services, Redis and NATS.
    fn stop(&mut self) {
        for worker in &self.workers {
            supervise::terminate(worker);
        }
        for worker in &mut self.workers {
            wait_or_kill(worker, Duration::from_secs(15));
        }
        for (child, grace) in self.after_workers() {
            if let Some(child) = child {
                supervise::terminate(child);
                wait_or_kill(child, grace);
            }
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gRPC service's process, URL and admin address.
fn grpc_endpoints(started: Started) -> Result<(Child, String, String)> {
    let Some(url) = started.ready.grpc else {
        bail!("{} announced no gRPC address", started.ready.role);
    };
    Ok((started.child, url, started.ready.admin))
}

/// `GET /readyz` on an admin address answers 200.
async fn ready(admin: &str) -> bool {
    let admin = admin.to_string();
    tokio::task::spawn_blocking(move || {
        supervise::http_get(&admin, "/readyz", Duration::from_secs(2))
            .is_some_and(|(status, _)| status == 200)
    })
    .await
    .unwrap_or(false)
}

/// [`supervise::wait_or_kill`], letting the runtime's other tasks run meanwhile.
fn wait_or_kill(child: &mut Child, grace: Duration) {
    tokio::task::block_in_place(|| supervise::wait_or_kill(child, grace));
}

fn nats_address(url: &str) -> Result<SocketAddr> {
    let host_port = url
        .trim_start_matches("nats://")
        .trim_start_matches("tls://")
        .split(',')
        .next()
        .unwrap_or_default()
        .rsplit('@')
        .next()
        .unwrap_or_default()
        .to_string();
    host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut addresses| addresses.next())
        .ok_or_else(|| InputError(format!("NATS URL {url:?} has no HOST:PORT")).into())
}

fn reachable(address: SocketAddr) -> bool {
    TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
}

/// Each cluster root keeps its accounts in a schema of its own.
fn account_schema(cluster: &str) -> String {
    if cluster == kiroku_core::nats::DEFAULT_ROOT {
        "account".into()
    } else {
        format!("account_{}", cluster.to_ascii_lowercase().replace('-', "_"))
    }
}

/// The demo tenant's slug and owner (`make demo` streams as this tenant).
const DEMO_SLUG: &str = "demo";
const DEMO_EMAIL: &str = "owner@demo.kiroku.local";

/// Registers the `demo` tenant on first start (a random password kept in
/// `.run/demo-password`, mode 0600), signs its owner in, and caches the login (unless
/// the user is signed in to another tenant at another account service). When the
/// owner cannot be signed in here (the owner enrolled MFA, the password file was lost
/// while the database was kept, sign-in is throttled) the cluster still starts: the
/// returned line says why no login was cached and the command that fixes it.
async fn bootstrap_demo(account_url: &str, run_dir: &Path) -> Result<String> {
    use kiroku_proto::account::v1 as pb;
    let password_file = run_dir.join("demo-password");
    // A new password is kept only once the tenant is registered with it.
    let (password, new_password) = match std::fs::read_to_string(&password_file) {
        Ok(password) => (password.trim().to_string(), false),
        Err(_) => (format!("demo-{}", uuid::Uuid::new_v4().simple()), true),
    };
    let mut client = crate::credentials::account_client(account_url).await?;
    // Sign in first: registering again on every start would spend the address's
    // registration allowance.
    let login = client
        .login(pb::LoginRequest {
            tenant_slug: DEMO_SLUG.into(),
            email: DEMO_EMAIL.into(),
            password: password.clone(),
            totp_code: String::new(),
        })
        .await;
    let sign_in = format!("kiroku login --tenant {DEMO_SLUG} --email {DEMO_EMAIL}");
    let pair = match login {
        Ok(pair) => pair.into_inner(),
        Err(status)
            if status.code() == tonic::Code::Unauthenticated
                && status.message().contains("totp code required") =>
        {
            return Ok(format!(
                "demo tenant: {DEMO_SLUG} / {DEMO_EMAIL} / password in {}; its owner uses MFA, so no \
                 login was cached: {sign_in} --totp CODE",
                password_file.display()
            ));
        }
        Err(status) if status.code() == tonic::Code::ResourceExhausted => {
            return Ok(format!(
                "demo tenant: {DEMO_SLUG}: sign-in is throttled ({}), no login was cached: \
                 {sign_in} later",
                status.message()
            ));
        }
        Err(status) if status.code() == tonic::Code::Unauthenticated => {
            let registered = client
                .register(pb::RegisterRequest {
                    tenant_slug: DEMO_SLUG.into(),
                    tenant_name: "Demo".into(),
                    email: DEMO_EMAIL.into(),
                    display_name: "Demo owner".into(),
                    password: password.clone(),
                })
                .await;
            match registered {
                Ok(registered) => {
                    if new_password {
                        kiroku_account::tokens::write_private(&password_file, password.as_bytes())?;
                    }
                    registered
                        .into_inner()
                        .tokens
                        .context("registration returned no tokens")?
                }
                Err(status) if status.code() == tonic::Code::AlreadyExists => {
                    let why = if new_password {
                        format!("{} is gone", password_file.display())
                    } else {
                        format!("it is not the one in {}", password_file.display())
                    };
                    return Ok(format!(
                        "demo tenant: {DEMO_SLUG} exists, but its owner's password is unknown here \
                         ({why}; the database was kept), so no login was cached: sign in with the \
                         owner's password ({sign_in}), or start on empty schemas with another \
                         --cluster name"
                    ));
                }
                Err(status) => bail!("registering the demo tenant: {}", status.message()),
            }
        }
        Err(status) => bail!("signing in to the demo tenant: {}", status.message()),
    };
    // A login of the user's own (another tenant at another account service: a real
    // deployment) is theirs; the demo's replaces only a demo login or one to this URL.
    if let Ok(Some(existing)) = crate::credentials::Login::load()
        && existing.account_url != account_url
        && existing.tenant_slug != DEMO_SLUG
    {
        return Ok(format!(
            "demo tenant: {DEMO_SLUG} / {DEMO_EMAIL} / password {password}; no login was cached, \
             to keep yours (tenant {} at {}): {sign_in} --account-url {account_url}",
            existing.tenant_slug, existing.account_url
        ));
    }
    let path = crate::credentials::Login::from_pair(account_url, &pair)?.save()?;
    Ok(format!(
        "demo tenant: {DEMO_SLUG} / {DEMO_EMAIL} / password {password} (login cached in {})",
        path.display()
    ))
}

/// Uses the Redis at `url` when it answers, or starts a local `redis-server`.
async fn ensure_redis(url: &str, run_dir: &Path) -> Result<Option<Child>> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| InputError(format!("redis url {url:?} must start with redis://")))?;
    let host_port = rest
        .rsplit('@')
        .next()
        .unwrap_or(rest)
        .split('/')
        .next()
        .unwrap_or(rest);
    let address = host_port
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| InputError(format!("redis url {url:?}: cannot resolve {host_port}")))?;
    if reachable(address) {
        return Ok(None);
    }
    if !address.ip().is_loopback() {
        bail!("Redis at {url} does not answer (and is not local, so it cannot be started here)");
    }
    println!("kiroku up: starting redis-server on {address}");
    let mut child = Command::new("redis-server")
        .args([
            "--bind",
            &address.ip().to_string(),
            "--port",
            &address.port().to_string(),
        ])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context(
            "starting redis-server (install it: apt-get install redis-server, or `make services`)",
        )?;
    for _ in 0..50 {
        if reachable(address) {
            return Ok(Some(child));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!("redis-server did not start on {address}")
}

/// Uses the NATS server at `url` when it answers, or starts a local one.
async fn ensure_nats(url: &str, run_dir: &Path) -> Result<Option<Child>> {
    let address = nats_address(url)?;
    if reachable(address) {
        return Ok(None);
    }
    if !address.ip().is_loopback() {
        bail!("NATS at {url} does not answer (and is not local, so it cannot be started here)");
    }
    let binary = find_nats_server().await?;
    let store = run_dir.join("nats");
    std::fs::create_dir_all(&store)?;
    println!("kiroku up: starting {} -js on {address}", binary.display());
    let mut child = Command::new(&binary)
        .arg("-js")
        .arg("-a")
        .arg(address.ip().to_string())
        .arg("-p")
        .arg(address.port().to_string())
        .arg("-sd")
        .arg(&store)
        .arg("-l")
        .arg(run_dir.join("nats.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    for _ in 0..50 {
        if reachable(address) {
            return Ok(Some(child));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    bail!(
        "nats-server did not start: see {}",
        run_dir.join("nats.log").display()
    )
}

async fn find_nats_server() -> Result<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("nats-server"));
    for candidate in candidates {
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    if nix::unistd::Uid::effective().is_root() {
        println!("kiroku up: installing nats-server (apt)");
        for args in [
            &["update", "-qq"][..],
            &["install", "-y", "-qq", "nats-server"][..],
        ] {
            let status = tokio::process::Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .await
                .context("running apt-get")?;
            if !status.success() {
                bail!("apt-get {} failed", args.join(" "));
            }
        }
        return Ok(PathBuf::from("/usr/sbin/nats-server"));
    }
    bail!(
        "nats-server is not installed and NATS does not answer: install nats-server or set KIROKU_NATS_URL"
    )
}
