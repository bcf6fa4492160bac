//! `kiroku admin backup` and `kiroku admin restore` (control 12.3.1): the services'
//! PostgreSQL schemas (account, audit, storage; `pg_dump`, plain SQL) and the JetStream
//! stream and bucket configurations, encrypted with the backup key, in the format of
//! [`kiroku_storage::backup`].
//!
//! A restore checks the whole backup (manifest MAC, every file's SHA-256) before it
//! touches anything, runs the dump through `psql` in one transaction (a failure leaves
//! the database as it was), and re-applies the erasure register: a tenant erased after
//! the backup was taken stays erased — what it stored before its erasure time is deleted
//! again, what it stored after (it may have kept using the service) stays. (A meeting
//! imported after the erasure keeps its original start time and is deleted again when
//! that time is before the erasure.) The services' secrets (master key, token signing
//! key, operator token, backup key) are not in a backup: keep them in the secret store.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result};
use kiroku_core::nats::{DEFAULT_NATS_URL, DEFAULT_ROOT, Layout};
use kiroku_storage::backup::{
    self, BackupError, BackupKey, HashingWriter, Manifest, ManifestFile, OpenReader, SealWriter,
};

use crate::{InputError, runtime};

/// Where the data is (the same settings the services take).
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// PostgreSQL as a role that reads every row (superuser or BYPASSRLS: the tables
    /// force row-level security even on their owner).
    #[arg(long, env = "KIROKU_DATABASE_URL", default_value = kiroku_account::DEFAULT_DATABASE_URL)]
    pub database_url: String,
    #[arg(long, env = "KIROKU_ACCOUNT_SCHEMA", default_value = "account")]
    pub account_schema: String,
    #[arg(long, env = "KIROKU_AUDIT_SCHEMA", default_value = "audit")]
    pub audit_schema: String,
    #[arg(long, env = "KIROKU_STORAGE_SCHEMA", default_value = "storage")]
    pub storage_schema: String,
    /// NATS (the stream configurations and the erasure register).
    #[arg(long, env = "KIROKU_NATS_URL", default_value = DEFAULT_NATS_URL)]
    pub nats: String,
    /// Cluster root of the streams.
    #[arg(long, env = "KIROKU_CLUSTER", default_value = DEFAULT_ROOT)]
    pub cluster: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct BackupArgs {
    #[command(flatten)]
    pub target: Target,
    /// A new (or empty) directory for the backup.
    #[arg(long)]
    pub out: PathBuf,
    /// Region of the place the backup is written to [default: --region] (control 6.1.3).
    #[arg(long, env = "KIROKU_BACKUP_REGION")]
    pub backup_region: Option<String>,
    /// The region this deployment runs in.
    #[arg(long, env = "KIROKU_REGION", default_value = kiroku_core::region::DEFAULT_REGION)]
    pub region: String,
    /// Regions customer data may be kept in, comma-separated.
    #[arg(long, env = "KIROKU_ALLOWED_REGIONS", default_value = kiroku_core::region::DEFAULT_REGION)]
    pub allowed_regions: String,
}

#[derive(Debug, Clone, clap::Args)]
pub struct RestoreArgs {
    #[command(flatten)]
    pub target: Target,
    /// The backup's directory.
    pub dir: PathBuf,
    /// Drop the backup's schemas first when they exist (in the same transaction).
    #[arg(long)]
    pub replace: bool,
}

fn key() -> Result<BackupKey> {
    Ok(BackupKey::from_env().map_err(|e| InputError(e.to_string()))?)
}

fn layout(target: &Target) -> Result<Layout> {
    Ok(Layout::new(&target.cluster).map_err(|e| InputError(e.to_string()))?)
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// A PostgreSQL URL made safe for a child's command line (which every user of the
/// host can read in `ps`): the password moves into a private `PGPASSFILE` (mode 0600,
/// deleted when this is dropped) and the URL keeps everything else.
struct PgTarget {
    url: String,
    passfile: Option<tempfile::NamedTempFile>,
}

impl PgTarget {
    fn new(url: &str) -> Result<Self> {
        let Some(range) = kiroku_core::url_password(url) else {
            return Ok(Self {
                url: url.to_string(),
                passfile: None,
            });
        };
        let password =
            percent_encoding::percent_decode_str(&url[range.clone()]).decode_utf8_lossy();
        // .pgpass: host:port:database:user:password, ':' and '\' escaped; any target.
        let escaped = password.replace('\\', "\\\\").replace(':', "\\:");
        let mut passfile = tempfile::Builder::new()
            .prefix("kiroku-pgpass")
            .tempfile()
            .context("creating a private password file for psql")?;
        use std::io::Write as _;
        writeln!(passfile, "*:*:*:*:{escaped}").context("writing the password file")?;
        passfile.flush()?;
        Ok(Self {
            // Without the password and the ':' before it.
            url: format!("{}{}", &url[..range.start - 1], &url[range.end..]),
            passfile: Some(passfile),
        })
    }

    /// `program` (psql, pg_dump) with the password file in its environment.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        if let Some(passfile) = &self.passfile {
            command.env("PGPASSFILE", passfile.path());
        }
        command
    }
}

/// Runs `psql -Atc SQL`; its output lines.
fn psql_query(url: &str, sql: &str) -> Result<Vec<String>> {
    let target = PgTarget::new(url)?;
    let output = target
        .command("psql")
        .args([
            "--no-password",
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
            &target.url,
        ])
        .output()
        .context("running psql (install postgresql-client)")?;
    if !output.status.success() {
        anyhow::bail!("psql: {}", String::from_utf8_lossy(&output.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect())
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Which of `schemas` exist in the database.
fn existing_schemas(url: &str, schemas: &[&String]) -> Result<Vec<String>> {
    let list = schemas
        .iter()
        .map(|s| quote_literal(s))
        .collect::<Vec<_>>()
        .join(", ");
    psql_query(
        url,
        &format!("SELECT nspname FROM pg_namespace WHERE nspname IN ({list}) ORDER BY 1"),
    )
}

/// `kiroku admin backup --out DIR`.
pub fn run_backup(args: BackupArgs) -> Result<()> {
    let key = key()?;
    let location = kiroku_core::region::DataLocation::new(&args.region, &args.allowed_regions)
        .map_err(InputError)?;
    location
        .check("the backup target", args.backup_region.as_deref())
        .map_err(InputError)?;
    let region = args
        .backup_region
        .clone()
        .unwrap_or_else(|| args.region.clone());
    let out = &args.out;
    an_empty_directory(out)?;
    let target = &args.target;
    let layout = layout(target)?;
    let schemas = service_schemas(target)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let postgres = dump_postgres(&key, out, &target.database_url, &schemas)?;
    eprintln!(
        "reading the JetStream configuration of cluster {}",
        layout.root()
    );
    let configs = runtime()?.block_on(stream_configs(&target.nats, &layout))?;
    let json = serde_json::to_vec_pretty(&configs)?;
    let nats = seal_from(&key, out, backup::NATS, |sealer| {
        sealer.write_all(&json)?;
        Ok(())
    })?;

    let manifest = Manifest {
        format: backup::FORMAT.into(),
        created_at: chrono::Utc::now(),
        region,
        key_id: key.id().into(),
        schemas,
        nats_root: layout.root().into(),
        files: vec![postgres, nats],
    };
    let data = serde_json::to_vec_pretty(&manifest)?;
    std::fs::write(out.join(backup::MANIFEST), &data)?;
    std::fs::write(out.join(backup::MANIFEST_MAC), key.mac(&data))?;
    println!(
        "backup written to {} ({} schemas, {} streams; {} encrypted with backup key {})",
        out.display(),
        manifest.schemas.len(),
        configs.len(),
        mib(manifest.files.iter().map(|f| f.bytes).sum()),
        key.id()
    );
    Ok(())
}

/// A backup goes into a new or empty directory, never over another.
fn an_empty_directory(out: &Path) -> Result<()> {
    if out.exists()
        && std::fs::read_dir(out)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(InputError(format!(
            "{} exists and is not empty: back up into a new directory",
            out.display()
        ))
        .into());
    }
    Ok(())
}

/// The services' schemas by role (account, audit, storage): distinct, and each in the
/// database.
fn service_schemas(target: &Target) -> Result<std::collections::BTreeMap<String, String>> {
    let schemas: std::collections::BTreeMap<String, String> = [
        ("account", &target.account_schema),
        ("audit", &target.audit_schema),
        ("storage", &target.storage_schema),
    ]
    .into_iter()
    .map(|(role, schema)| (role.to_string(), schema.clone()))
    .collect();
    let names: Vec<&String> = schemas.values().collect();
    if names.iter().collect::<std::collections::HashSet<_>>().len() != names.len() {
        return Err(InputError("the account, audit and storage schemas must differ".into()).into());
    }
    let found = existing_schemas(&target.database_url, &names)?;
    if let Some(missing) = names.iter().find(|s| !found.contains(s)) {
        return Err(InputError(format!(
            "schema {missing:?} does not exist in the database (KIROKU_ACCOUNT_SCHEMA, \
             KIROKU_AUDIT_SCHEMA, KIROKU_STORAGE_SCHEMA name the services' schemas)"
        ))
        .into());
    }
    Ok(schemas)
}

/// `pg_dump` of the schemas, sealed with the backup key into `out` as it streams, with
/// progress on stderr.
fn dump_postgres(
    key: &BackupKey,
    out: &Path,
    database_url: &str,
    schemas: &std::collections::BTreeMap<String, String>,
) -> Result<ManifestFile> {
    let names: Vec<&str> = schemas.values().map(String::as_str).collect();
    eprintln!("dumping PostgreSQL schemas {}", names.join(", "));
    let pg = PgTarget::new(database_url)?;
    let mut dump = pg.command("pg_dump");
    dump.args(["--no-password", "--format=plain", "--quote-all-identifiers"]);
    for schema in &names {
        dump.arg(format!("--schema={schema}"));
    }
    let mut child = dump
        .arg(format!("--dbname={}", pg.url))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running pg_dump (install postgresql-client)")?;
    let mut stdout = child.stdout.take().context("pg_dump stdout")?;
    let postgres = seal_from(key, out, backup::POSTGRES, |sealer| {
        let mut buffer = vec![0u8; backup::CHUNK];
        let (mut total, mut shown) = (0u64, 0u64);
        loop {
            let n = stdout.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            sealer.write_all(&buffer[..n])?;
            total += n as u64;
            if total - shown >= 8 << 20 {
                eprint!("\r  {}", mib(total));
                shown = total;
            }
        }
        Ok(())
    })?;
    let output = child.wait_with_output().context("waiting for pg_dump")?;
    if !output.status.success() {
        anyhow::bail!(
            "pg_dump failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    eprintln!("\r  {} of SQL", mib(postgres.plain_bytes));
    Ok(postgres)
}

/// Writes `DIR/name` sealed, from what `fill` writes; its manifest entry.
fn seal_from(
    key: &BackupKey,
    dir: &Path,
    name: &str,
    fill: impl FnOnce(
        &mut SealWriter<'_, HashingWriter<std::io::BufWriter<std::fs::File>>>,
    ) -> std::io::Result<()>,
) -> Result<ManifestFile> {
    let path = dir.join(name);
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut sealer = SealWriter::new(key, name, HashingWriter::new(std::io::BufWriter::new(file)))?;
    fill(&mut sealer).with_context(|| format!("writing {}", path.display()))?;
    let (hashing, plain_bytes) = sealer.finish()?;
    let (mut file, bytes, sha256) = hashing.finish();
    file.flush()?;
    file.get_ref().sync_all()?;
    Ok(ManifestFile {
        path: name.into(),
        bytes,
        sha256,
        plain_bytes,
    })
}

/// The configuration of every stream and bucket of the cluster that exists.
async fn stream_configs(
    url: &str,
    layout: &Layout,
) -> Result<Vec<async_nats::jetstream::stream::Config>> {
    let client = kiroku_core::nats::connect(url, "kiroku-backup")
        .await
        .with_context(|| format!("connecting to NATS at {url}"))?;
    let js = async_nats::jetstream::new(client);
    let mut configs = Vec::new();
    for name in layout.stream_names() {
        match js.get_stream(&name).await {
            Ok(mut stream) => configs.push(stream.info().await?.config.clone()),
            Err(error)
                if matches!(error.kind(),
                    async_nats::jetstream::context::GetStreamErrorKind::JetStream(e)
                        if e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                eprintln!("  stream {name} does not exist: not in the backup");
            }
            Err(error) => return Err(error).with_context(|| format!("reading stream {name}")),
        }
    }
    Ok(configs)
}

/// One entry of the erasure register: the tenant, and when its minutes were erased.
struct Erasure {
    tenant: uuid::Uuid,
    /// `None` for an entry without a readable time: everything of the tenant goes.
    at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The SQL that re-applies `erasures` to a restored `storage` schema: each tenant's
/// rows from before its erasure are deleted, what it stored after the erasure (it may
/// have kept using the service) stays, with the data key it was sealed under.
fn reerase_sql(schema: &str, erasures: &[Erasure]) -> String {
    let schema = quote_ident(schema);
    let mut sql = String::new();
    for erasure in erasures {
        let tenant = erasure.tenant;
        let before = |column: &str| match erasure.at {
            Some(at) => format!(" AND {column} <= '{}'::timestamptz", at.to_rfc3339()),
            None => String::new(),
        };
        let old_meetings = format!(
            "SELECT meeting_id FROM {schema}.meetings WHERE tenant_id = '{tenant}'{}",
            before("started_at")
        );
        sql.push_str(&format!(
            "\nDELETE FROM {schema}.labels WHERE tenant_id = '{tenant}' AND meeting_id IN ({old_meetings});\n\
             DELETE FROM {schema}.segments WHERE tenant_id = '{tenant}'{};\n\
             DELETE FROM {schema}.sessions WHERE tenant_id = '{tenant}'{};\n\
             DELETE FROM {schema}.meetings WHERE tenant_id = '{tenant}'{};\n\
             DELETE FROM {schema}.data_keys WHERE tenant_id = '{tenant}'{};\n",
            before("meeting_started_at"),
            before("first_seen_at"),
            before("started_at"),
            before("created_at"),
        ));
    }
    sql
}

/// The erasure register (empty when the bucket does not exist).
async fn erased_tenants(
    js: &async_nats::jetstream::Context,
    layout: &Layout,
) -> Result<Vec<Erasure>> {
    use futures::StreamExt as _;
    let bucket = match js.get_key_value(layout.erasures_bucket()).await {
        Ok(bucket) => bucket,
        Err(error)
            if error.kind() == async_nats::jetstream::context::KeyValueErrorKind::GetBucket =>
        {
            return Ok(Vec::new());
        }
        Err(error) => return Err(error).context("opening the erasure register"),
    };
    let mut keys = bucket
        .keys()
        .await
        .context("reading the erasure register")?;
    let mut tenants = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.context("reading the erasure register")?;
        let tenant = uuid::Uuid::try_parse(&key)
            .with_context(|| format!("erasure register entry {key:?} is not a tenant id"))?;
        let at = bucket
            .get(&key)
            .await
            .context("reading the erasure register")?
            .and_then(|value| {
                chrono::DateTime::parse_from_rfc3339(String::from_utf8_lossy(&value).trim()).ok()
            })
            .map(|at| at.with_timezone(&chrono::Utc));
        tenants.push(Erasure { tenant, at });
    }
    Ok(tenants)
}

fn refused(error: BackupError) -> anyhow::Error {
    anyhow::anyhow!("refusing to restore: {error}")
}

/// `kiroku admin restore DIR [--replace]`.
pub fn run_restore(args: RestoreArgs) -> Result<()> {
    let key = key()?;
    let dir = &args.dir;
    let manifest = verified_manifest(&key, dir)?;
    let target = &args.target;
    let layout = layout(target)?;
    if manifest.nats_root != layout.root() {
        return Err(InputError(format!(
            "the backup is of cluster {:?}, KIROKU_CLUSTER is {:?}",
            manifest.nats_root,
            layout.root()
        ))
        .into());
    }
    eprintln!(
        "backup of {} ({}), checked: manifest MAC and {} files",
        manifest.created_at.to_rfc3339(),
        manifest.region,
        manifest.files.len()
    );
    let schemas: Vec<&String> = manifest.schemas.values().collect();
    let existing = existing_schemas(&target.database_url, &schemas)?;
    if !existing.is_empty() && !args.replace {
        return Err(InputError(format!(
            "schemas {} exist: restore into a database without them, or pass --replace to drop \
             them first (in the restore's transaction)",
            existing.join(", ")
        ))
        .into());
    }

    let runtime = runtime()?;
    let js = runtime.block_on(async {
        let client = kiroku_core::nats::connect(&target.nats, "kiroku-restore")
            .await
            .with_context(|| {
                format!(
                    "connecting to NATS at {}: the erasure register must be read before a restore",
                    target.nats
                )
            })?;
        anyhow::Ok(async_nats::jetstream::new(client))
    })?;
    let erased = runtime.block_on(erased_tenants(&js, &layout))?;
    let plan = DatabaseRestore {
        schemas: &schemas,
        replace: args.replace,
        storage_schema: manifest.schemas.get("storage").map(String::as_str),
        erased: &erased,
    };
    let copied = restore_database(&key, dir, &target.database_url, &plan)?;
    eprintln!("  {} of SQL restored in one transaction", mib(copied));
    let streams = runtime.block_on(restore_streams(&key, dir, &js))?;
    println!(
        "restored {} schemas and {streams} stream configurations from {}; re-applied {} tenant erasures from the register",
        schemas.len(),
        dir.display(),
        erased.len()
    );
    Ok(())
}

/// The backup's manifest, once its MAC verifies under `key` and every file it lists
/// has the listed size and SHA-256 (and the database dump and stream configurations
/// are among them).
fn verified_manifest(key: &BackupKey, dir: &Path) -> Result<backup::Manifest> {
    let read = |name: &str| {
        std::fs::read(dir.join(name)).map_err(|e| {
            InputError(format!(
                "{}: {e} (not a backup written by `kiroku admin backup`?)",
                dir.join(name).display()
            ))
        })
    };
    let manifest_data = read(backup::MANIFEST)?;
    let mac = String::from_utf8_lossy(&read(backup::MANIFEST_MAC)?).into_owned();
    let manifest = key.verify_manifest(&manifest_data, &mac).map_err(refused)?;
    for file in &manifest.files {
        let (bytes, sha256) = backup::file_digest(&dir.join(&file.path))
            .with_context(|| format!("reading {}", file.path))?;
        if bytes != file.bytes || sha256 != file.sha256 {
            return Err(refused(BackupError::Tampered(format!(
                "{}: size or SHA-256 differs from the manifest: the backup was altered",
                file.path
            ))));
        }
    }
    for name in [backup::POSTGRES, backup::NATS] {
        if !manifest.files.iter().any(|f| f.path == name) {
            anyhow::bail!("the manifest lists no {name}");
        }
    }
    Ok(manifest)
}

/// What goes into the database restore's one transaction.
struct DatabaseRestore<'a> {
    schemas: &'a [&'a String],
    /// Drop the schemas first.
    replace: bool,
    /// Where the tenants erased after the backup are erased again.
    storage_schema: Option<&'a str>,
    erased: &'a [Erasure],
}

/// Feeds the decrypted dump (and the re-erasures) to one `psql --single-transaction`:
/// all of it commits or nothing does. The SQL bytes restored.
fn restore_database(
    key: &BackupKey,
    dir: &Path,
    database_url: &str,
    plan: &DatabaseRestore<'_>,
) -> Result<u64> {
    let pg = PgTarget::new(database_url)?;
    let mut psql = pg
        .command("psql")
        .args([
            "--no-password",
            "-X",
            "--quiet",
            "--single-transaction",
            "-v",
            "ON_ERROR_STOP=1",
            "--dbname",
            &pg.url,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running psql (install postgresql-client)")?;
    let mut stdin = psql.stdin.take().context("psql stdin")?;
    let fed: Result<u64> = (|| {
        if plan.replace {
            for schema in plan.schemas {
                writeln!(
                    stdin,
                    "DROP SCHEMA IF EXISTS {} CASCADE;",
                    quote_ident(schema)
                )?;
            }
        }
        let file = std::fs::File::open(dir.join(backup::POSTGRES))?;
        let mut reader = OpenReader::new(key, backup::POSTGRES, std::io::BufReader::new(file))?;
        let copied = std::io::copy(&mut reader, &mut stdin)?;
        if let Some(storage_schema) = plan.storage_schema.filter(|_| !plan.erased.is_empty()) {
            stdin.write_all(reerase_sql(storage_schema, plan.erased).as_bytes())?;
        }
        Ok(copied)
    })();
    if fed.is_err() {
        // Killed before its input ends: psql must not commit a partial script.
        let _ = psql.kill();
    }
    drop(stdin);
    let output = psql.wait_with_output().context("waiting for psql")?;
    if !output.status.success() {
        anyhow::bail!(
            "the restore failed and was rolled back, nothing changed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    fed.map_err(|error| {
        anyhow::anyhow!("the restore was stopped and rolled back, nothing changed: {error:#}")
    })
}

/// Creates (or updates) every stream of the backup's configurations: how many.
async fn restore_streams(
    key: &BackupKey,
    dir: &Path,
    js: &async_nats::jetstream::Context,
) -> Result<usize> {
    let file = std::fs::File::open(dir.join(backup::NATS))?;
    let mut json = Vec::new();
    OpenReader::new(key, backup::NATS, file)?.read_to_end(&mut json)?;
    let configs: Vec<async_nats::jetstream::stream::Config> =
        serde_json::from_slice(&json).context("the stream configurations do not parse")?;
    for config in &configs {
        js.create_or_update_stream(config.clone())
            .await
            .with_context(|| {
                format!(
                    "the database is restored, but stream {} is not (the services create it at start-up): retry the restore with --replace",
                    config.name
                )
            })?;
    }
    Ok(configs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The password leaves the URL a child sees on its command line for a private
    /// password file; URLs without one are passed as they are.
    #[test]
    fn passwords_go_to_a_private_file_not_the_command_line() {
        let pg = PgTarget::new("postgres://owner:s%3Acret%5C@db:5432/kiroku").expect("target");
        assert_eq!(pg.url, "postgres://owner@db:5432/kiroku");
        let passfile = pg.passfile.as_ref().expect("a password file");
        let line = std::fs::read_to_string(passfile.path()).expect("read");
        assert_eq!(line, "*:*:*:*:s\\:cret\\\\\n");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = passfile
            .path()
            .metadata()
            .expect("metadata")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "readable by others: {mode:o}");
        let plain = PgTarget::new("postgres://postgres@127.0.0.1:5432/postgres").expect("target");
        assert_eq!(plain.url, "postgres://postgres@127.0.0.1:5432/postgres");
        assert!(plain.passfile.is_none());
    }
}
