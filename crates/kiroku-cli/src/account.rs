//! Account commands: `kiroku login|logout|whoami|accept-invite`, `kiroku mfa`,
//! `kiroku consent` and `kiroku admin tenant|user|apikey|consent-policy`.
//!
//! Passwords are read from `--password-stdin` (first line of stdin) or the
//! `KIROKU_PASSWORD` environment variable, never from a flag (flags show in `ps`).

use std::io::BufRead as _;

use anyhow::{Context as _, Result, bail};
use kiroku_account::auth::Role;
use kiroku_proto::account::v1 as pb;
use kiroku_proto::account::v1::account_service_client::AccountServiceClient;
use tonic::transport::Channel;

use crate::credentials::{Login, account_client, attach, credential};
use crate::serve::DEFAULT_ACCOUNT_URL;
use crate::{InputError, runtime};

#[derive(Debug, Clone, clap::Args)]
pub struct AccountUrl {
    /// The account service [default: the cached login's, else http://127.0.0.1:50053].
    #[arg(long, env = "KIROKU_ACCOUNT_URL")]
    pub account: Option<String>,
}

impl AccountUrl {
    fn resolve(&self) -> Result<String> {
        if let Some(url) = &self.account {
            return Ok(url.clone());
        }
        Ok(Login::load()?
            .map(|login| login.account_url)
            .unwrap_or_else(|| DEFAULT_ACCOUNT_URL.to_string()))
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct PasswordInput {
    /// Read the password from the first line of stdin (else $KIROKU_PASSWORD).
    #[arg(long)]
    pub password_stdin: bool,
}

impl PasswordInput {
    fn read(&self) -> Result<String> {
        if self.password_stdin {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the password from stdin")?;
            return Ok(line.trim_end_matches(['\r', '\n']).to_string());
        }
        std::env::var("KIROKU_PASSWORD").map_err(|_| {
            InputError("give the password with --password-stdin or KIROKU_PASSWORD".into()).into()
        })
    }
}

#[derive(Debug, clap::Args)]
pub struct LoginArgs {
    #[command(flatten)]
    pub url: AccountUrl,
    /// Tenant slug.
    #[arg(long)]
    pub tenant: String,
    #[arg(long)]
    pub email: String,
    #[command(flatten)]
    pub password: PasswordInput,
    /// 6-digit code of your authenticator (once MFA is enrolled).
    #[arg(long)]
    pub totp: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum MfaCommand {
    /// Start TOTP enrollment (needs your password again): prints the otpauth:// URI
    /// and secret for your app.
    Enroll {
        #[command(flatten)]
        url: AccountUrl,
        #[command(flatten)]
        password: PasswordInput,
    },
    /// Finish enrollment with a first code; the cached login then carries MFA.
    Confirm {
        #[command(flatten)]
        url: AccountUrl,
        code: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ConsentCommand {
    /// Declare who takes part in a meeting (replaces the list).
    Participants {
        #[command(flatten)]
        url: AccountUrl,
        meeting: String,
        participants: Vec<String>,
    },
    /// Record that a participant consented to recording.
    Record {
        #[command(flatten)]
        url: AccountUrl,
        meeting: String,
        participant: String,
        /// How consent was obtained (verbal, click, written...).
        #[arg(long, default_value = "verbal")]
        method: String,
    },
    /// Show a meeting's consent status.
    Status {
        #[command(flatten)]
        url: AccountUrl,
        meeting: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    #[command(subcommand)]
    Tenant(TenantCommand),
    #[command(subcommand)]
    User(UserCommand),
    #[command(subcommand)]
    Apikey(ApiKeyCommand),
    /// The tenant's audit log: list, verify, export, time zone.
    #[command(subcommand)]
    Audit(crate::audit::AuditCommand),
    /// The tenant's usage per day: streams, audio minutes, errors, final latency.
    Usage(crate::audit::UsageArgs),
    /// Service notices: the operator publishes; every tenant user lists theirs.
    #[command(subcommand)]
    Notice(crate::notice::NoticeCommand),
    /// Back up the services' PostgreSQL schemas and JetStream configuration, encrypted
    /// with KIROKU_BACKUP_KEY(_FILE), into a new directory (service operator).
    Backup(crate::backup::BackupArgs),
    /// Restore a backup: checked whole first, then one transaction; erasures recorded
    /// since are applied again (service operator).
    Restore(crate::backup::RestoreArgs),
    /// Storage operations of the service operator (KIROKU_OPERATOR_TOKEN).
    #[command(subcommand)]
    Storage(crate::minutes::StorageAdminCommand),
    /// Messages the audit and storage services set aside: list them, replay them once
    /// the cause is fixed (service operator; NATS directly).
    #[command(subcommand)]
    DeadLetters(crate::deadletters::DeadLetterCommand),
    /// Set the tenant's recording-consent policy: none | all-participants.
    ConsentPolicy {
        #[command(flatten)]
        url: AccountUrl,
        policy: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TenantCommand {
    /// Write every meeting of the tenant (JSON + WebVTT, labels) and a SHA-256 manifest
    /// into a new directory (admins with MFA).
    Export {
        #[command(flatten)]
        url: crate::minutes::StorageUrl,
        #[command(flatten)]
        audit: crate::audit::AuditUrl,
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Import a bundle written by `export` into your tenant (admins with MFA): every file
    /// is checked against the manifest first; all meetings or none are imported, and a
    /// meeting id the tenant already has stops the import.
    Import {
        #[command(flatten)]
        url: crate::minutes::StorageUrl,
        /// The bundle's directory.
        dir: std::path::PathBuf,
    },
    /// Erase the tenant's minutes: its data key is destroyed first (no copy decrypts any
    /// more), then its meetings are deleted (owners with MFA).
    Erase {
        #[command(flatten)]
        url: crate::minutes::StorageUrl,
        /// Your tenant's slug, to confirm.
        #[arg(long)]
        confirm: String,
    },
    /// Register a new tenant and its owner, and sign in as the owner.
    Create {
        #[command(flatten)]
        url: AccountUrl,
        /// Short name used at sign-in (3-40 of a-z, 0-9, '-').
        #[arg(long)]
        slug: String,
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner_email: String,
        #[arg(long, default_value = "Owner")]
        owner_name: String,
        #[command(flatten)]
        password: PasswordInput,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Invite a user; prints the invitation token to hand over (valid 7 days).
    Invite {
        #[command(flatten)]
        url: AccountUrl,
        email: String,
        #[arg(long, default_value = "member")]
        role: String,
    },
    List(AccountUrl),
    /// Disable a user: their tokens are refused and live streams end at once.
    Disable {
        #[command(flatten)]
        url: AccountUrl,
        user_id: String,
    },
    /// Delete a user (same as disable, and the user is removed).
    Delete {
        #[command(flatten)]
        url: AccountUrl,
        user_id: String,
    },
    /// Change a user's role (viewer, member, admin, owner); their sessions end.
    Role {
        #[command(flatten)]
        url: AccountUrl,
        user_id: String,
        role: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ApiKeyCommand {
    /// Create a key; it is printed once and never shown again.
    Create {
        #[command(flatten)]
        url: AccountUrl,
        name: String,
        /// Scopes: transcribe, consent (comma-separated).
        #[arg(long, default_value = "transcribe")]
        scopes: String,
    },
    Revoke {
        #[command(flatten)]
        url: AccountUrl,
        key_id: String,
    },
    List(AccountUrl),
}

/// A call's error as the user should read it: input problems exit 2.
fn refused(status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let message = format!("{:?}: {}", status.code(), status.message());
    match status.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::FailedPrecondition
        | Code::ResourceExhausted => InputError(message).into(),
        _ => anyhow::anyhow!(message),
    }
}

/// A client plus the caller's credential, for authenticated calls.
struct Session {
    client: AccountServiceClient<Channel>,
    credential: (&'static str, tonic::metadata::AsciiMetadataValue),
}

impl Session {
    async fn open(url: &AccountUrl) -> Result<Self> {
        let credential = credential().await?;
        Ok(Self {
            client: account_client(&url.resolve()?).await?,
            credential,
        })
    }
    fn request<T>(&self, body: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(body);
        attach(request.metadata_mut(), &self.credential);
        request
    }
}

fn parse_role(name: &str) -> Result<pb::Role> {
    Role::parse(name).map(Role::to_proto).ok_or_else(|| {
        InputError(format!("role {name:?}: use viewer, member, admin or owner")).into()
    })
}

fn role_name(value: i32) -> &'static str {
    Role::from_proto(value).map_or("?", Role::as_str)
}

pub fn login(args: LoginArgs) -> Result<()> {
    let password = args.password.read()?;
    runtime()?.block_on(async move {
        let url = args.url.resolve()?;
        let mut client = account_client(&url).await?;
        let pair = client
            .login(pb::LoginRequest {
                tenant_slug: args.tenant.clone(),
                email: args.email.clone(),
                password,
                totp_code: args.totp.clone().unwrap_or_default(),
            })
            .await
            .map_err(refused)?
            .into_inner();
        let login = Login::from_pair(&url, &pair)?;
        let path = login.save()?;
        println!(
            "signed in to {} as {} ({}{}); login cached in {}",
            login.tenant_slug,
            login.email,
            login.role,
            if login.mfa { ", mfa" } else { "" },
            path.display()
        );
        Ok(())
    })
}

pub fn logout() -> Result<()> {
    if let Some(login) = Login::load()? {
        runtime()?.block_on(async {
            if let Ok(mut client) = account_client(&login.account_url).await {
                let _ = client
                    .logout(pb::LogoutRequest {
                        refresh_token: login.refresh_token.clone(),
                    })
                    .await;
            }
        });
    }
    Login::remove()?;
    println!("signed out");
    Ok(())
}

pub fn whoami(url: AccountUrl) -> Result<()> {
    runtime()?.block_on(async move {
        let mut session = Session::open(&url).await?;
        let request = session.request(pb::WhoAmIRequest {});
        let me = session
            .client
            .who_am_i(request)
            .await
            .map_err(refused)?
            .into_inner();
        println!(
            "tenant {} ({})\nuser {} <{}>\nrole {}{}",
            me.tenant_slug,
            me.tenant_id,
            me.subject,
            me.email,
            role_name(me.role),
            if me.mfa { " (mfa)" } else { "" }
        );
        Ok(())
    })
}

pub fn accept_invite(
    url: AccountUrl,
    token: String,
    name: String,
    password: PasswordInput,
) -> Result<()> {
    let password = password.read()?;
    runtime()?.block_on(async move {
        let url = url.resolve()?;
        let mut client = account_client(&url).await?;
        let pair = client
            .accept_invitation(pb::AcceptInvitationRequest {
                invitation_token: token,
                display_name: name,
                password,
            })
            .await
            .map_err(refused)?
            .into_inner();
        let login = Login::from_pair(&url, &pair)?;
        login.save()?;
        println!(
            "joined {} as {} ({}); signed in",
            login.tenant_slug, login.email, login.role
        );
        Ok(())
    })
}

pub fn mfa(command: MfaCommand) -> Result<()> {
    runtime()?.block_on(async move {
        match command {
            MfaCommand::Enroll { url, password } => {
                let current_password = password.read()?;
                let mut session = Session::open(&url).await?;
                let request = session.request(pb::EnrollMfaRequest { current_password });
                let enrollment = session.client.enroll_mfa(request).await.map_err(refused)?.into_inner();
                println!("{}", enrollment.otpauth_uri);
                eprintln!(
                    "add this to your authenticator app (secret {}), then run `kiroku mfa confirm CODE`",
                    enrollment.secret
                );
            }
            MfaCommand::Confirm { url, code } => {
                let account = url.resolve()?;
                let mut session = Session::open(&url).await?;
                let request = session.request(pb::ConfirmMfaRequest {
                    totp_code: code,
                });
                let pair = session.client.confirm_mfa(request).await.map_err(refused)?.into_inner();
                Login::from_pair(&account, &pair)?.save()?;
                println!("mfa enrolled; this login now carries mfa");
            }
        }
        Ok(())
    })
}

fn print_consent(status: &pb::ConsentStatus) {
    let policy = pb::ConsentPolicy::try_from(status.policy)
        .map(|p| p.as_str_name())
        .unwrap_or("?");
    println!(
        "meeting {}: {} (policy {policy})",
        status.meeting_id,
        if status.satisfied {
            "may be recorded"
        } else {
            "consent missing"
        }
    );
    for record in &status.consents {
        println!("  consent {} via {}", record.participant, record.method);
    }
    for missing in &status.missing {
        println!("  missing {missing}");
    }
}

pub fn consent(command: ConsentCommand) -> Result<()> {
    runtime()?.block_on(async move {
        let status = match command {
            ConsentCommand::Participants {
                url,
                meeting,
                participants,
            } => {
                let mut session = Session::open(&url).await?;
                let request = session.request(pb::SetMeetingParticipantsRequest {
                    meeting_id: meeting,
                    participants,
                });
                session.client.set_meeting_participants(request).await
            }
            ConsentCommand::Record {
                url,
                meeting,
                participant,
                method,
            } => {
                let mut session = Session::open(&url).await?;
                let request = session.request(pb::RecordConsentRequest {
                    meeting_id: meeting,
                    participant,
                    method,
                });
                session.client.record_consent(request).await
            }
            ConsentCommand::Status { url, meeting } => {
                let mut session = Session::open(&url).await?;
                let request = session.request(pb::CheckConsentRequest {
                    meeting_id: meeting,
                });
                session.client.check_consent(request).await
            }
        }
        .map_err(refused)?
        .into_inner();
        print_consent(&status);
        Ok(())
    })
}

pub fn admin(command: AdminCommand) -> Result<()> {
    let command = match command {
        AdminCommand::Audit(command) => return crate::audit::run(command),
        AdminCommand::Usage(args) => {
            return crate::audit::run(crate::audit::AuditCommand::Usage(args));
        }
        AdminCommand::Notice(command) => return crate::notice::run(command),
        AdminCommand::Storage(command) => return crate::minutes::storage_admin(command),
        AdminCommand::Backup(args) => return crate::backup::run_backup(args),
        AdminCommand::DeadLetters(command) => return crate::deadletters::run(command),
        AdminCommand::Restore(args) => return crate::backup::run_restore(args),
        AdminCommand::Tenant(TenantCommand::Export { url, audit, out }) => {
            return crate::minutes::tenant_export(url, audit, out);
        }
        AdminCommand::Tenant(TenantCommand::Import { url, dir }) => {
            return crate::minutes::tenant_import(url, dir);
        }
        AdminCommand::Tenant(TenantCommand::Erase { url, confirm }) => {
            return crate::minutes::tenant_erase(url, confirm);
        }
        command => command,
    };
    runtime()?.block_on(async move {
        match command {
            AdminCommand::Tenant(TenantCommand::Create {
                url,
                slug,
                name,
                owner_email,
                owner_name,
                password,
            }) => {
                let password = password.read()?;
                let account = url.resolve()?;
                let mut client = account_client(&account).await?;
                let registered = client
                    .register(pb::RegisterRequest {
                        tenant_slug: slug,
                        tenant_name: name,
                        email: owner_email,
                        display_name: owner_name,
                        password,
                    })
                    .await
                    .map_err(refused)?
                    .into_inner();
                let pair = registered.tokens.context("no tokens in the response")?;
                let login = Login::from_pair(&account, &pair)?;
                login.save()?;
                println!(
                    "tenant {} created ({})",
                    login.tenant_slug, registered.tenant_id
                );
                println!("owner {} ({}), signed in", login.email, registered.user_id);
                eprintln!("admin commands need MFA: run `kiroku mfa enroll`");
            }
            AdminCommand::User(command) => user(command).await?,
            AdminCommand::Apikey(command) => apikey(command).await?,
            AdminCommand::Audit(_)
            | AdminCommand::Usage(_)
            | AdminCommand::Notice(_)
            | AdminCommand::Storage(_)
            | AdminCommand::Backup(_)
            | AdminCommand::DeadLetters(_)
            | AdminCommand::Restore(_)
            | AdminCommand::Tenant(
                TenantCommand::Export { .. }
                | TenantCommand::Import { .. }
                | TenantCommand::Erase { .. },
            ) => {
                unreachable!("handled before the runtime starts")
            }
            AdminCommand::ConsentPolicy { url, policy } => {
                let policy = match policy.as_str() {
                    "none" => pb::ConsentPolicy::None,
                    "all-participants" => pb::ConsentPolicy::AllParticipants,
                    other => bail!(InputError(format!(
                        "policy {other:?}: use none or all-participants"
                    ))),
                };
                let mut session = Session::open(&url).await?;
                let request = session.request(pb::SetConsentPolicyRequest {
                    policy: policy as i32,
                });
                session
                    .client
                    .set_consent_policy(request)
                    .await
                    .map_err(refused)?;
                println!("consent policy: {}", policy.as_str_name());
            }
        }
        Ok(())
    })
}

fn print_user(user: &pb::User) {
    println!(
        "{}  {:<32} {:<7} {}{}",
        user.user_id,
        user.email,
        role_name(user.role),
        if user.disabled { "disabled" } else { "active" },
        if user.mfa_enrolled { ", mfa" } else { "" }
    );
}

async fn user(command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Invite { url, email, role } => {
            let role = parse_role(&role)?;
            let mut session = Session::open(&url).await?;
            let request = session.request(pb::InviteUserRequest {
                email: email.clone(),
                role: role as i32,
            });
            let invitation = session
                .client
                .invite_user(request)
                .await
                .map_err(refused)?
                .into_inner();
            println!("{}", invitation.invitation_token);
            eprintln!(
                "invitation for {email} created; hand over the token above: \
                 `kiroku accept-invite TOKEN --name NAME --password-stdin`"
            );
        }
        UserCommand::List(url) => {
            let mut session = Session::open(&url).await?;
            let request = session.request(pb::ListUsersRequest {});
            for user in session
                .client
                .list_users(request)
                .await
                .map_err(refused)?
                .into_inner()
                .users
            {
                print_user(&user);
            }
        }
        UserCommand::Disable { url, user_id } => {
            let mut session = Session::open(&url).await?;
            let request = session.request(pb::UserRef { user_id });
            print_user(
                &session
                    .client
                    .disable_user(request)
                    .await
                    .map_err(refused)?
                    .into_inner(),
            );
        }
        UserCommand::Delete { url, user_id } => {
            let mut session = Session::open(&url).await?;
            let request = session.request(pb::UserRef {
                user_id: user_id.clone(),
            });
            session.client.delete_user(request).await.map_err(refused)?;
            println!("user {user_id} deleted");
        }
        UserCommand::Role { url, user_id, role } => {
            let role = parse_role(&role)?;
            let mut session = Session::open(&url).await?;
            let request = session.request(pb::SetRoleRequest {
                user_id,
                role: role as i32,
            });
            print_user(
                &session
                    .client
                    .set_role(request)
                    .await
                    .map_err(refused)?
                    .into_inner(),
            );
        }
    }
    Ok(())
}

async fn apikey(command: ApiKeyCommand) -> Result<()> {
    match command {
        ApiKeyCommand::Create { url, name, scopes } => {
            let scopes = scopes
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            let mut session = Session::open(&url).await?;
            let request = session.request(pb::CreateApiKeyRequest { name, scopes });
            let created = session
                .client
                .create_api_key(request)
                .await
                .map_err(refused)?
                .into_inner();
            println!("{}", created.api_key);
            if let Some(key) = created.key {
                eprintln!(
                    "key {} created; it is shown only now (use it as KIROKU_API_KEY)",
                    key.key_id
                );
            }
        }
        ApiKeyCommand::Revoke { url, key_id } => {
            let mut session = Session::open(&url).await?;
            let request = session.request(pb::RevokeApiKeyRequest {
                key_id: key_id.clone(),
            });
            session
                .client
                .revoke_api_key(request)
                .await
                .map_err(refused)?;
            println!("api key {key_id} revoked");
        }
        ApiKeyCommand::List(url) => {
            let mut session = Session::open(&url).await?;
            let request = session.request(pb::ListApiKeysRequest {});
            for key in session
                .client
                .list_api_keys(request)
                .await
                .map_err(refused)?
                .into_inner()
                .keys
            {
                println!(
                    "{}  {:<24} {:<20} {}",
                    key.key_id,
                    key.name,
                    key.scopes.join(","),
                    if key.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    }
                );
            }
        }
    }
    Ok(())
}
