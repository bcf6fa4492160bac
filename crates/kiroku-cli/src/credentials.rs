//! The CLI's sign-in: a cached login in `~/.config/kiroku/credentials.json` (mode
//! 0600; `KIROKU_CONFIG_DIR` overrides the folder), or an API key in `KIROKU_API_KEY`
//! (which wins). Expired access tokens are refreshed with the cached refresh token and
//! the file rewritten.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use kiroku_proto::account::v1 as pb;
use kiroku_proto::account::v1::account_service_client::AccountServiceClient;
use serde::{Deserialize, Serialize};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::transport::Channel;

use crate::InputError;

/// A cached login.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Login {
    pub account_url: String,
    pub tenant_slug: String,
    pub email: String,
    pub access_token: String,
    /// Unix seconds.
    pub access_expires_at: i64,
    pub refresh_token: String,
    pub mfa: bool,
    pub role: String,
}

pub fn config_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("KIROKU_CONFIG_DIR") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME") {
        return Ok(PathBuf::from(dir).join("kiroku"));
    }
    let home = std::env::var_os("HOME").context("HOME is unset; set KIROKU_CONFIG_DIR")?;
    Ok(PathBuf::from(home).join(".config").join("kiroku"))
}

fn credentials_path() -> Result<PathBuf> {
    Ok(config_dir()?.join("credentials.json"))
}

impl Login {
    pub fn from_pair(account_url: &str, pair: &pb::TokenPair) -> Result<Self> {
        let principal = pair.principal.clone().unwrap_or_default();
        Ok(Self {
            account_url: account_url.to_string(),
            tenant_slug: principal.tenant_slug.clone(),
            email: principal.email.clone(),
            access_token: pair.access_token.clone(),
            access_expires_at: pair.access_expires_at.map_or(0, |t| t.seconds),
            refresh_token: pair.refresh_token.clone(),
            mfa: principal.mfa,
            role: kiroku_account::auth::Role::from_proto(principal.role)
                .map(|r| r.as_str().to_string())
                .unwrap_or_default(),
        })
    }

    /// Writes the login (mode 0600, folder 0700).
    pub fn save(&self) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = credentials_path()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        let json = serde_json::to_vec_pretty(self)?;
        kiroku_account::tokens::write_private(&path, &json)?;
        Ok(path)
    }

    pub fn load() -> Result<Option<Self>> {
        let path = credentials_path()?;
        match std::fs::read(&path) {
            Ok(bytes) => {
                Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                    format!("{} is not a kiroku login", path.display())
                })?))
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn remove() -> Result<()> {
        match std::fs::remove_file(credentials_path()?) {
            Ok(()) => Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

pub async fn account_client(url: &str) -> Result<AccountServiceClient<Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(|_| InputError(format!("account service url {url:?} is not a URL")))?
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .with_context(|| format!("connecting to the account service at {url}"))?;
    Ok(AccountServiceClient::new(channel))
}

/// The credential header for calls to Kiroku: `KIROKU_API_KEY`, else the cached login
/// (refreshed when it expires within a minute).
pub async fn credential() -> Result<(&'static str, AsciiMetadataValue)> {
    if let Ok(key) = std::env::var("KIROKU_API_KEY")
        && !key.trim().is_empty()
    {
        let value = key
            .trim()
            .parse()
            .map_err(|_| InputError("KIROKU_API_KEY is not a valid header value".into()))?;
        return Ok((kiroku_account::auth::API_KEY_HEADER, value));
    }
    let Some(mut login) = Login::load()? else {
        bail!(InputError(
            "not signed in: run `kiroku login` (or set KIROKU_API_KEY)".into()
        ));
    };
    if login.access_expires_at - 60 <= unix_now() {
        let mut client = account_client(&login.account_url).await?;
        let pair = client
            .refresh(pb::RefreshRequest {
                refresh_token: login.refresh_token.clone(),
            })
            .await
            .map_err(|status| {
                InputError(format!(
                    "the cached login expired and could not be refreshed ({}): run `kiroku login`",
                    status.message()
                ))
            })?
            .into_inner();
        login = Login::from_pair(&login.account_url, &pair)?;
        login.save()?;
    }
    let value = format!("Bearer {}", login.access_token)
        .parse()
        .context("access token is not a header value")?;
    Ok(("authorization", value))
}

/// Adds the credential to a request's metadata.
pub fn attach(metadata: &mut MetadataMap, credential: &(&'static str, AsciiMetadataValue)) {
    metadata.insert(credential.0, credential.1.clone());
}
