//! Accounts and access, end to end: real `kiroku serve account|gateway|worker`
//! processes against the real PostgreSQL, Redis and NATS. Each test names the
//! ISO 27017 control it proves (the control id is in the test's name).

use kiroku_tests::cluster;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cluster::{Cluster, OWNER_PASSWORD, Options, authorized, block_on};
use kiroku_account::totp;
use kiroku_proto::account::v1 as pb;
use kiroku_proto::account::v1::account_service_client::AccountServiceClient;
use kiroku_proto::transcribe::v1 as api;
use tonic::Code;
use tonic::transport::Channel;

const PASSWORD: &str = "minutes of the weekly meeting";

async fn account(cluster_url: &str) -> AccountServiceClient<Channel> {
    AccountServiceClient::connect(cluster_url.to_string())
        .await
        .expect("connect to the account service")
}

fn now() -> u64 {
    kiroku_account::tokens::unix_now()
}

/// One signed-in caller.
#[derive(Clone, Debug)]
struct Caller {
    name: &'static str,
    token: String,
    #[allow(dead_code)]
    refresh: String,
    user_id: String,
}

fn with_key<T>(body: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(body);
    request
        .metadata_mut()
        .insert("x-api-key", key.parse().expect("header"));
    request
}

async fn login(
    client: &mut AccountServiceClient<Channel>,
    slug: &str,
    email: &str,
    password: &str,
    totp: &str,
) -> Result<pb::TokenPair, tonic::Status> {
    client
        .login(pb::LoginRequest {
            tenant_slug: slug.into(),
            email: email.into(),
            password: password.into(),
            totp_code: totp.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn caller(name: &'static str, pair: &pb::TokenPair) -> Caller {
    Caller {
        name,
        token: pair.access_token.clone(),
        refresh: pair.refresh_token.clone(),
        user_id: pair
            .principal
            .as_ref()
            .map(|p| p.subject.clone())
            .unwrap_or_default(),
    }
}

/// Enrolls TOTP for the caller; returns the secret and an MFA session.
async fn enroll_mfa(client: &mut AccountServiceClient<Channel>, who: &Caller) -> (Vec<u8>, Caller) {
    let enrollment = client
        .enroll_mfa(authorized(
            pb::EnrollMfaRequest {
                current_password: PASSWORD.into(),
            },
            &who.token,
        ))
        .await
        .expect("enroll")
        .into_inner();
    let secret = totp::decode_secret(&enrollment.secret).expect("base32");
    let code = totp::code_at(&secret, now()).expect("code");
    let pair = client
        .confirm_mfa(authorized(
            pb::ConfirmMfaRequest { totp_code: code },
            &who.token,
        ))
        .await
        .expect("confirm mfa")
        .into_inner();
    (secret, caller(who.name, &pair))
}

/// A tenant with one caller per role (admins and owner with MFA sessions) and API keys.
struct Tenant {
    slug: String,
    owner: Caller,
    admin_no_mfa: Caller,
    admin: Caller,
    member: Caller,
    viewer: Caller,
    transcribe_key: String,
    transcribe_key_id: String,
    consent_key: String,
}

async fn invite(
    client: &mut AccountServiceClient<Channel>,
    by: &Caller,
    slug: &str,
    name: &'static str,
    role: pb::Role,
) -> Caller {
    let email = format!("{name}@{slug}.example.com");
    let invitation = client
        .invite_user(authorized(
            pb::InviteUserRequest {
                email: email.clone(),
                role: role as i32,
            },
            &by.token,
        ))
        .await
        .expect("invite")
        .into_inner();
    let pair = client
        .accept_invitation(pb::AcceptInvitationRequest {
            invitation_token: invitation.invitation_token,
            display_name: name.into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("accept invitation")
        .into_inner();
    caller(name, &pair)
}

async fn tenant(client: &mut AccountServiceClient<Channel>, slug: &str) -> Tenant {
    let registered = client
        .register(pb::RegisterRequest {
            tenant_slug: slug.into(),
            tenant_name: slug.into(),
            email: format!("owner@{slug}.example.com"),
            display_name: "Owner".into(),
            password: PASSWORD.into(),
        })
        .await
        .expect("register")
        .into_inner();
    let owner = caller("owner", registered.tokens.as_ref().expect("tokens"));
    let (_, owner) = enroll_mfa(client, &owner).await;
    // (Confirming MFA ends the user's other sessions: two admins, one with MFA.)
    let admin = invite(client, &owner, slug, "admin", pb::Role::Admin).await;
    let (_, admin) = enroll_mfa(client, &admin).await;
    let admin_no_mfa = invite(client, &owner, slug, "admin2", pb::Role::Admin).await;
    let member = invite(client, &owner, slug, "member", pb::Role::Member).await;
    let viewer = invite(client, &owner, slug, "viewer", pb::Role::Viewer).await;
    let key = |scope: &str| pb::CreateApiKeyRequest {
        name: format!("{scope} service"),
        scopes: vec![scope.into()],
    };
    let transcribe = client
        .create_api_key(authorized(key("transcribe"), &owner.token))
        .await
        .expect("api key")
        .into_inner();
    let consent = client
        .create_api_key(authorized(key("consent"), &owner.token))
        .await
        .expect("api key")
        .into_inner();
    Tenant {
        slug: slug.into(),
        owner,
        admin_no_mfa,
        admin,
        member,
        viewer,
        transcribe_key_id: transcribe.key.expect("key").key_id,
        transcribe_key: transcribe.api_key,
        consent_key: consent.api_key,
    }
}

/// A refusal by the access rules (as opposed to a refusal of the request's content).
fn denied_by_access(status: &tonic::Status) -> bool {
    status.code() == Code::Unauthenticated
        || (status.code() == Code::PermissionDenied
            && (status.message().contains("not allow")
                || status.message().contains("mfa required")))
}

/// Calls `method` of the account service or the gateway with a harmless body.
async fn call(
    account: &mut AccountServiceClient<Channel>,
    gateway: &mut api::transcription_client::TranscriptionClient<Channel>,
    method: &str,
    credential: &Credential,
) -> Result<(), tonic::Status> {
    macro_rules! req {
        ($body:expr) => {
            credential.request($body)
        };
    }
    let missing = uuid::Uuid::new_v4().to_string();
    match method {
        "WhoAmI" => account.who_am_i(req!(pb::WhoAmIRequest {})).await.map(drop),
        "ChangePassword" => account
            .change_password(req!(pb::ChangePasswordRequest {
                current_password: "not the password at all".into(),
                new_password: "x".into(),
            }))
            .await
            .map(drop),
        "EnrollMfa" => account
            .enroll_mfa(req!(pb::EnrollMfaRequest {
                current_password: "not the password at all".into(),
            }))
            .await
            .map(drop),
        "ConfirmMfa" => account
            .confirm_mfa(req!(pb::ConfirmMfaRequest {
                totp_code: "000000".into()
            }))
            .await
            .map(drop),
        "InviteUser" => account
            .invite_user(req!(pb::InviteUserRequest {
                email: "not an email".into(),
                role: pb::Role::Member as i32,
            }))
            .await
            .map(drop),
        "ListUsers" => account
            .list_users(req!(pb::ListUsersRequest {}))
            .await
            .map(drop),
        "DisableUser" => account
            .disable_user(req!(pb::UserRef {
                user_id: missing.clone()
            }))
            .await
            .map(drop),
        "DeleteUser" => account
            .delete_user(req!(pb::UserRef {
                user_id: missing.clone()
            }))
            .await
            .map(drop),
        "SetRole" => account
            .set_role(req!(pb::SetRoleRequest {
                user_id: missing.clone(),
                role: pb::Role::Viewer as i32,
            }))
            .await
            .map(drop),
        "CreateApiKey" => account
            .create_api_key(req!(pb::CreateApiKeyRequest {
                name: String::new(),
                scopes: vec![],
            }))
            .await
            .map(drop),
        "RevokeApiKey" => account
            .revoke_api_key(req!(pb::RevokeApiKeyRequest {
                key_id: missing.clone()
            }))
            .await
            .map(drop),
        "ListApiKeys" => account
            .list_api_keys(req!(pb::ListApiKeysRequest {}))
            .await
            .map(drop),
        "VerifyApiKey" => account
            .verify_api_key(req!(pb::VerifyApiKeyRequest {}))
            .await
            .map(drop),
        "SetConsentPolicy" => account
            .set_consent_policy(req!(pb::SetConsentPolicyRequest { policy: 0 }))
            .await
            .map(drop),
        "SetMeetingParticipants" => account
            .set_meeting_participants(req!(pb::SetMeetingParticipantsRequest {
                meeting_id: "matrix".into(),
                participants: vec![],
            }))
            .await
            .map(drop),
        "RecordConsent" => account
            .record_consent(req!(pb::RecordConsentRequest {
                meeting_id: "matrix".into(),
                participant: "Ana".into(),
                method: "verbal".into(),
            }))
            .await
            .map(drop),
        "CheckConsent" => account
            .check_consent(req!(pb::CheckConsentRequest {
                meeting_id: "matrix".into()
            }))
            .await
            .map(drop),
        // The gateway: an empty request is refused as INVALID_ARGUMENT once access passed.
        "Transcribe" => gateway
            .transcribe(req!(api::TranscribeRequest::default()))
            .await
            .map(drop),
        other => panic!("no call for {other}"),
    }
}

enum Credential {
    Bearer(String),
    ApiKey(String),
}

impl Credential {
    fn request<T>(&self, body: T) -> tonic::Request<T> {
        match self {
            Self::Bearer(token) => authorized(body, token),
            Self::ApiKey(key) => with_key(body, key),
        }
    }
}

/// Every kind of caller of the role matrices, by name, with its credential.
fn matrix_callers(t: &Tenant) -> [(&'static str, Credential); 8] {
    [
        ("viewer", Credential::Bearer(t.viewer.token.clone())),
        ("member", Credential::Bearer(t.member.token.clone())),
        (
            "admin without mfa",
            Credential::Bearer(t.admin_no_mfa.token.clone()),
        ),
        ("admin", Credential::Bearer(t.admin.token.clone())),
        ("owner", Credential::Bearer(t.owner.token.clone())),
        (
            "transcribe key",
            Credential::ApiKey(t.transcribe_key.clone()),
        ),
        ("consent key", Credential::ApiKey(t.consent_key.clone())),
        ("nobody", Credential::Bearer("not-a-token".into())),
    ]
}

/// control 9.2.2 (and 9.2.3): deny-by-default RBAC, method x role, over every RPC
/// that needs a credential, on both the account service and the gateway.
#[test]
fn control_9_2_2_method_by_role_matrix() {
    let cluster = Cluster::builder().gateways(1).start();
    let account_url = cluster.account_url();
    let gateway_url = cluster.gateway_url(0);
    block_on(async move {
        let mut client = account(&account_url).await;
        let mut gateway = api::transcription_client::TranscriptionClient::connect(gateway_url)
            .await
            .expect("gateway");
        let t = tenant(&mut client, "matrix-a").await;
        // caller -> (credential, the methods it may call)
        let signed_in = ["WhoAmI", "ChangePassword", "EnrollMfa", "ConfirmMfa"];
        let member = [
            "SetMeetingParticipants",
            "RecordConsent",
            "CheckConsent",
            "Transcribe",
        ];
        let admin = [
            "InviteUser",
            "ListUsers",
            "DisableUser",
            "DeleteUser",
            "SetRole",
            "CreateApiKey",
            "RevokeApiKey",
            "ListApiKeys",
            "SetConsentPolicy",
        ];
        let all: Vec<&str> = signed_in
            .iter()
            .chain(&member)
            .chain(&admin)
            .chain(&["VerifyApiKey"])
            .copied()
            .collect();
        let allowed_for = |name: &str| -> Vec<&str> {
            match name {
                "viewer" => signed_in.to_vec(),
                "member" | "admin without mfa" => {
                    signed_in.iter().chain(&member).copied().collect()
                }
                "admin" | "owner" => signed_in
                    .iter()
                    .chain(&member)
                    .chain(&admin)
                    .copied()
                    .collect(),
                "transcribe key" => vec!["CheckConsent", "Transcribe", "VerifyApiKey"],
                "consent key" => vec!["SetMeetingParticipants", "RecordConsent", "VerifyApiKey"],
                "nobody" => vec![],
                other => panic!("{other}"),
            }
        };
        let callers = matrix_callers(&t);
        let mut failures = Vec::new();
        for (name, credential) in &callers {
            let allowed = allowed_for(name);
            for method in &all {
                let outcome = call(&mut client, &mut gateway, method, credential).await;
                let refused = matches!(&outcome, Err(status) if denied_by_access(status));
                if refused == allowed.contains(method) {
                    failures.push(format!("{name} {method}: {outcome:?}"));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "matrix mismatches:\n{}",
            failures.join("\n")
        );
    });
}

/// control 9.2.2 for the storage and audit services: the same deny-by-default matrix,
/// method x caller, over every RPC of `Storage`, `AuditService` and `NoticeService`.
/// Requests are harmless (a missing meeting, a wrong erase confirmation, a manifest that
/// does not parse): an allowed caller gets past the access rule and is refused for the
/// content, or served; a refused caller gets UNAUTHENTICATED or PERMISSION_DENIED.
#[test]
fn control_9_2_2_storage_and_audit_method_by_role_matrix() {
    use kiroku_proto::audit::v1 as audit;
    use kiroku_proto::storage::v1 as storage;
    let cluster = Cluster::builder().audit().storage().start();
    let (account_url, storage_url, audit_url) = (
        cluster.account_url(),
        cluster.storage_url(),
        cluster.audit_url(),
    );
    block_on(async move {
        let mut client = account(&account_url).await;
        let mut minutes = storage::storage_client::StorageClient::connect(storage_url)
            .await
            .expect("storage");
        let mut log = audit::audit_service_client::AuditServiceClient::connect(audit_url.clone())
            .await
            .expect("audit");
        let mut notices = audit::notice_service_client::NoticeServiceClient::connect(audit_url)
            .await
            .expect("notices");
        let t = tenant(&mut client, "matrix-s").await;
        let signed_in = [
            "ListMeetings",
            "GetMeeting",
            "Search",
            "ExportMeeting",
            "ListLabels",
            "ListNotices",
        ];
        let member = ["AddLabel", "RemoveLabel"];
        let admin = [
            "ExportTenant",
            "ImportTenant",
            "ListEvents",
            "VerifyChain",
            "ExportEvents",
            "SetTimeZone",
            "GetUsage",
        ];
        // Operator only: no tenant credential passes.
        let operator = ["RotateMasterKey", "PublishNotice"];
        let all: Vec<&str> = signed_in
            .iter()
            .chain(&member)
            .chain(&admin)
            .chain(&operator)
            .chain(&["EraseTenant"])
            .copied()
            .collect();
        let allowed_for = |name: &str| -> Vec<&str> {
            match name {
                "viewer" => signed_in.to_vec(),
                "member" | "admin without mfa" => {
                    signed_in.iter().chain(&member).copied().collect()
                }
                "admin" => signed_in
                    .iter()
                    .chain(&member)
                    .chain(&admin)
                    .copied()
                    .collect(),
                "owner" => signed_in
                    .iter()
                    .chain(&member)
                    .chain(&admin)
                    .chain(&["EraseTenant"])
                    .copied()
                    .collect(),
                "transcribe key" => member.to_vec(),
                "consent key" | "nobody" => vec![],
                other => panic!("{other}"),
            }
        };
        let callers = matrix_callers(&t);
        let missing = "no-such-meeting".to_string();
        let mut failures = Vec::new();
        for (name, credential) in &callers {
            let allowed = allowed_for(name);
            for method in &all {
                let c = credential;
                let outcome: Result<(), tonic::Status> = match *method {
                    "ListMeetings" => minutes
                        .list_meetings(c.request(storage::ListMeetingsRequest::default()))
                        .await
                        .map(drop),
                    "GetMeeting" => minutes
                        .get_meeting(c.request(storage::GetMeetingRequest {
                            meeting_id: missing.clone(),
                        }))
                        .await
                        .map(drop),
                    "Search" => minutes
                        .search(c.request(storage::SearchRequest {
                            query: "budget".into(),
                            limit: 5,
                        }))
                        .await
                        .map(drop),
                    "ExportMeeting" => minutes
                        .export_meeting(c.request(storage::ExportMeetingRequest {
                            meeting_id: missing.clone(),
                            format: 1,
                        }))
                        .await
                        .map(drop),
                    "ListLabels" => minutes
                        .list_labels(c.request(storage::ListLabelsRequest {
                            meeting_id: missing.clone(),
                        }))
                        .await
                        .map(drop),
                    "AddLabel" => minutes
                        .add_label(c.request(storage::AddLabelRequest {
                            meeting_id: missing.clone(),
                            text: "decision".into(),
                            ..Default::default()
                        }))
                        .await
                        .map(drop),
                    "RemoveLabel" => minutes
                        .remove_label(c.request(storage::RemoveLabelRequest {
                            label_id: uuid::Uuid::new_v4().to_string(),
                        }))
                        .await
                        .map(drop),
                    "ExportTenant" => minutes
                        .export_tenant(c.request(storage::ExportTenantRequest {}))
                        .await
                        .map(drop),
                    "ImportTenant" => minutes
                        .import_tenant(c.request(futures::stream::iter([storage::BundleFile {
                            path: "manifest.json".into(),
                            data: b"not json".to_vec(),
                        }])))
                        .await
                        .map(drop),
                    "EraseTenant" => minutes
                        .erase_tenant(c.request(storage::EraseTenantRequest {
                            confirm_tenant_slug: "not-this-tenant".into(),
                        }))
                        .await
                        .map(drop),
                    "RotateMasterKey" => minutes
                        .rotate_master_key(c.request(storage::RotateMasterKeyRequest {}))
                        .await
                        .map(drop),
                    "ListEvents" => log
                        .list_events(c.request(audit::ListEventsRequest::default()))
                        .await
                        .map(drop),
                    "VerifyChain" => log
                        .verify_chain(c.request(audit::VerifyChainRequest {}))
                        .await
                        .map(drop),
                    "ExportEvents" => log
                        .export_events(c.request(audit::ExportEventsRequest {
                            format: 1,
                            ..Default::default()
                        }))
                        .await
                        .map(drop),
                    "SetTimeZone" => log
                        .set_time_zone(c.request(audit::SetTimeZoneRequest {
                            time_zone: "Not/AZone".into(),
                        }))
                        .await
                        .map(drop),
                    "GetUsage" => log
                        .get_usage(c.request(audit::GetUsageRequest::default()))
                        .await
                        .map(drop),
                    "ListNotices" => notices
                        .list_notices(c.request(audit::ListNoticesRequest::default()))
                        .await
                        .map(drop),
                    "PublishNotice" => notices
                        .publish_notice(c.request(audit::PublishNoticeRequest {
                            title: "t".into(),
                            body: "b".into(),
                            ..Default::default()
                        }))
                        .await
                        .map(drop),
                    other => panic!("{other}"),
                };
                let refused = matches!(&outcome, Err(status)
                    if denied_by_access(status)
                        || (status.code() == Code::PermissionDenied
                            && (status.message().contains("only an owner")
                                || status.message().contains("operator"))));
                if refused == allowed.contains(method) {
                    failures.push(format!("{name} {method}: {outcome:?}"));
                }
            }
        }
        assert!(
            failures.is_empty(),
            "matrix mismatches:\n{}",
            failures.join("\n")
        );
    });
}

/// control 13.1.3: tenant B's admin gets NOT_FOUND for every id of tenant A, and
/// sees none of A's users or consent records.
#[test]
fn control_13_1_3_cross_tenant_ids_are_not_found() {
    let cluster = Cluster::builder().start();
    let account_url = cluster.account_url();
    block_on(async move {
        let mut client = account(&account_url).await;
        let a = tenant(&mut client, "cross-a").await;
        let b = tenant(&mut client, "cross-b").await;
        client
            .record_consent(authorized(
                pb::RecordConsentRequest {
                    meeting_id: "board".into(),
                    participant: "Ana".into(),
                    method: "written".into(),
                },
                &a.member.token,
            ))
            .await
            .expect("consent in A");
        let b_admin = &b.admin.token;
        let victim = a.member.user_id.clone();
        let outcomes = [
            (
                "DisableUser",
                client
                    .disable_user(authorized(
                        pb::UserRef {
                            user_id: victim.clone(),
                        },
                        b_admin,
                    ))
                    .await
                    .map(drop),
            ),
            (
                "DeleteUser",
                client
                    .delete_user(authorized(
                        pb::UserRef {
                            user_id: victim.clone(),
                        },
                        b_admin,
                    ))
                    .await
                    .map(drop),
            ),
            (
                "SetRole",
                client
                    .set_role(authorized(
                        pb::SetRoleRequest {
                            user_id: victim.clone(),
                            role: pb::Role::Viewer as i32,
                        },
                        b_admin,
                    ))
                    .await
                    .map(drop),
            ),
            (
                "RevokeApiKey",
                client
                    .revoke_api_key(authorized(
                        pb::RevokeApiKeyRequest {
                            key_id: a.transcribe_key_id.clone(),
                        },
                        b_admin,
                    ))
                    .await
                    .map(drop),
            ),
        ];
        for (method, outcome) in outcomes {
            let status = outcome.expect_err(method);
            assert_eq!(status.code(), Code::NotFound, "{method}: {status:?}");
        }
        let users = client
            .list_users(authorized(pb::ListUsersRequest {}, b_admin))
            .await
            .expect("list")
            .into_inner()
            .users;
        assert!(
            users
                .iter()
                .all(|u| u.user_id != victim && u.email.contains("cross-b"))
        );
        let keys = client
            .list_api_keys(authorized(pb::ListApiKeysRequest {}, b_admin))
            .await
            .expect("keys")
            .into_inner()
            .keys;
        assert!(keys.iter().all(|k| k.key_id != a.transcribe_key_id));
        let consent = client
            .check_consent(authorized(
                pb::CheckConsentRequest {
                    meeting_id: "board".into(),
                },
                &b.member.token,
            ))
            .await
            .expect("consent in B")
            .into_inner();
        assert!(consent.participants.is_empty() && consent.consents.is_empty());
        // A's member is untouched and A's key still works.
        let me = client
            .verify_api_key(with_key(pb::VerifyApiKeyRequest {}, &a.transcribe_key))
            .await
            .expect("A's key still valid")
            .into_inner();
        assert_eq!(me.tenant_slug, a.slug);
    });
}

fn psql(url: &str, sql: &str) -> String {
    let (ok, output) = cluster::psql(url, sql);
    assert!(ok, "psql {sql}: {output}");
    output
}

/// control 13.1.3: every table with a tenant_id (and the tenants table) has row-level
/// security ENABLED and FORCED, the service role owns none of them, and a query
/// without tenant context returns zero rows.
#[test]
fn control_13_1_3_every_tenant_table_forces_row_level_security() {
    let cluster = Cluster::builder().start();
    let account_url = cluster.account_url();
    block_on(async move {
        let mut client = account(&account_url).await;
        tenant(&mut client, "rls-a").await;
    });
    let owner = cluster::database_url();
    let schema = &cluster.root;
    let tables = psql(
        &owner,
        &format!(
            "SELECT c.relname || ':' || c.relrowsecurity || ':' || c.relforcerowsecurity || ':' \
             || pg_get_userbyid(c.relowner) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = '{schema}' AND c.relkind = 'r' AND (c.relname = 'tenants' OR EXISTS \
             (SELECT 1 FROM information_schema.columns k WHERE k.table_schema = n.nspname \
              AND k.table_name = c.relname AND k.column_name = 'tenant_id')) ORDER BY 1"
        ),
    );
    let rows: Vec<&str> = tables.lines().collect();
    assert!(rows.len() >= 7, "tenant tables: {rows:?}");
    for row in &rows {
        let parts: Vec<&str> = row.split(':').collect();
        assert_eq!(
            parts[1..3],
            ["true", "true"],
            "RLS not enabled and forced: {row}"
        );
        assert_ne!(parts[3], "kiroku_account", "the service role owns {row}");
    }
    // Rows exist (the owner sees them)...
    let users: u32 = psql(&owner, &format!("SELECT count(*) FROM \"{schema}\".users"))
        .parse()
        .expect("count");
    assert!(users >= 4, "{users}");
    // control 10.1.1: the stored hashes are argon2id with at least OWASP's parameters.
    let hashes = psql(
        &owner,
        &format!("SELECT password_hash FROM \"{schema}\".users"),
    );
    for hash in hashes.lines() {
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
    }
    // ...and the service role without a tenant set sees none, in every table.
    let app = owner.replacen("postgres@", "kiroku_account@", 1);
    for row in &rows {
        let table = row.split(':').next().expect("name");
        let seen = psql(&app, &format!("SELECT count(*) FROM \"{schema}\".{table}"));
        assert_eq!(seen, "0", "{table} visible without tenant context");
    }
}

/// Production shape: the schema owner is an ordinary role (no superuser, so FORCE RLS
/// binds it too). Migrations, registration and sign-in (the slug lookup runs as the
/// owner) still work, and the tables belong to that role, not to the service role.
#[test]
fn control_13_1_3_works_with_a_non_superuser_schema_owner() {
    let admin = cluster::database_url();
    // The database exists once any cluster has started; create it here otherwise.
    let _ = Command::new("psql")
        .arg(
            admin
                .rsplit_once('/')
                .map(|(base, _)| format!("{base}/postgres"))
                .expect("url"),
        )
        .args(["-q", "-c", "CREATE DATABASE kiroku_test"])
        .stderr(Stdio::null())
        .status();
    let database = admin.rsplit('/').next().expect("database name").to_string();
    for statement in [
        "CREATE ROLE kiroku_owner_test LOGIN CREATEROLE NOSUPERUSER".to_string(),
        format!("GRANT CREATE ON DATABASE \"{database}\" TO kiroku_owner_test"),
    ] {
        let _ = Command::new("psql")
            .arg(&admin)
            .args(["-q", "-c", &statement])
            .stderr(Stdio::null())
            .status();
    }
    let owner_url = admin.replacen("postgres@", "kiroku_owner_test@", 1);
    let options = Options {
        env: vec![("KIROKU_DATABASE_URL".into(), owner_url)],
        ..Options::default()
    };
    let cluster = Cluster::start(0, 0, options);
    let account_url = cluster.account_url();
    let slug = cluster.tenant_slug.clone();
    let email = cluster.owner_email.clone();
    block_on(async move {
        let mut client = account(&account_url).await;
        login(&mut client, &slug, &email, OWNER_PASSWORD, "")
            .await
            .expect("sign-in finds the tenant by slug");
    });
    let owners = psql(
        &admin,
        &format!(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = '{}'",
            cluster.root
        ),
    );
    assert_eq!(owners, "kiroku_owner_test");
}

/// Reliability promise 6 and control 9.2.3: forged, tampered, expired-by-logout and
/// missing credentials are refused by the gateway.
#[test]
fn gateway_refuses_missing_forged_and_revoked_credentials() {
    let cluster = Cluster::builder().gateways(1).start();
    let account_url = cluster.account_url();
    let gateway_url = cluster.gateway_url(0);
    block_on(async move {
        let mut client = account(&account_url).await;
        let mut gateway = api::transcription_client::TranscriptionClient::connect(gateway_url)
            .await
            .expect("gateway");
        let pair = client
            .register(pb::RegisterRequest {
                tenant_slug: "attacks".into(),
                tenant_name: "attacks".into(),
                email: "owner@attacks.example.com".into(),
                display_name: "Owner".into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("register")
            .into_inner()
            .tokens
            .expect("tokens");
        let token = pair.access_token.clone();
        // A valid token reaches the request checks (empty request: INVALID_ARGUMENT).
        let ok = gateway
            .transcribe(authorized(api::TranscribeRequest::default(), &token))
            .await
            .expect_err("empty request");
        assert_eq!(ok.code(), Code::InvalidArgument, "{ok:?}");

        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        let last = parts[2].pop().expect("signature");
        parts[2].push(if last == 'A' { 'B' } else { 'A' });
        let tampered = parts.join(".");
        let header_none = format!(
            "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
            token.split('.').nth(1).expect("payload")
        );
        for (what, credential) in [
            ("tampered signature", tampered),
            ("alg none", header_none),
            ("garbage", "abc".to_string()),
        ] {
            let status = gateway
                .transcribe(authorized(api::TranscribeRequest::default(), &credential))
                .await
                .expect_err(what);
            assert_eq!(status.code(), Code::Unauthenticated, "{what}: {status:?}");
        }
        let status = gateway
            .transcribe(tonic::Request::new(api::TranscribeRequest::default()))
            .await
            .expect_err("no credential");
        assert_eq!(status.code(), Code::Unauthenticated);
        // Logout revokes the session: its still-unexpired access token is refused.
        client
            .logout(pb::LogoutRequest {
                refresh_token: pair.refresh_token.clone(),
            })
            .await
            .expect("logout");
        let status = gateway
            .transcribe(authorized(api::TranscribeRequest::default(), &token))
            .await
            .expect_err("revoked");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("revoked"), "{status:?}");
    });
}

/// control 9.2.3: admin calls need MFA; a TOTP code works once; drift of one step.
#[test]
fn control_9_2_3_admin_calls_need_mfa_and_codes_are_single_use() {
    let cluster = Cluster::builder().start();
    let account_url = cluster.account_url();
    block_on(async move {
        let mut client = account(&account_url).await;
        let slug = "mfa-a";
        let email = "owner@mfa-a.example.com";
        let pair = client
            .register(pb::RegisterRequest {
                tenant_slug: slug.into(),
                tenant_name: slug.into(),
                email: email.into(),
                display_name: "Owner".into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("register")
            .into_inner()
            .tokens
            .expect("tokens");
        let owner = caller("owner", &pair);
        let status = client
            .list_users(authorized(pb::ListUsersRequest {}, &owner.token))
            .await
            .expect_err("no mfa yet");
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.message().contains("mfa required"), "{status:?}");

        let (secret, with_mfa) = enroll_mfa(&mut client, &owner).await;
        client
            .list_users(authorized(pb::ListUsersRequest {}, &with_mfa.token))
            .await
            .expect("admin call with mfa");
        // Sign-in now needs a code; the confirmation's code is spent; the next step's
        // code (one step of drift) works once.
        let status = login(&mut client, slug, email, PASSWORD, "")
            .await
            .expect_err("no code");
        assert_eq!(status.code(), Code::Unauthenticated);
        let next = totp::code_at(&secret, now() + 30).expect("code");
        let pair = login(&mut client, slug, email, PASSWORD, &next)
            .await
            .expect("drift");
        assert!(pair.principal.expect("principal").mfa);
        let replay = login(&mut client, slug, email, PASSWORD, &next)
            .await
            .expect_err("replay");
        assert_eq!(replay.code(), Code::Unauthenticated, "{replay:?}");
        let far = totp::code_at(&secret, now() + 90).expect("code");
        let status = login(&mut client, slug, email, PASSWORD, &far)
            .await
            .expect_err("drift 3");
        assert_eq!(status.code(), Code::Unauthenticated);
    });
}

/// control 9.2.4: change needs the current password, applies the rules, and revokes
/// the user's other sessions; refresh tokens rotate and a reused one ends the session.
#[test]
fn control_9_2_4_password_change_and_refresh_rotation() {
    let cluster = Cluster::builder().start();
    let account_url = cluster.account_url();
    block_on(async move {
        let mut client = account(&account_url).await;
        let slug = "pw-a";
        let email = "owner@pw-a.example.com";
        client
            .register(pb::RegisterRequest {
                tenant_slug: slug.into(),
                tenant_name: slug.into(),
                email: email.into(),
                display_name: "Owner".into(),
                password: "password".into(),
            })
            .await
            .expect_err("common password refused at registration");
        client
            .register(pb::RegisterRequest {
                tenant_slug: slug.into(),
                tenant_name: slug.into(),
                email: email.into(),
                display_name: "Owner".into(),
                password: PASSWORD.into(),
            })
            .await
            .expect("register");
        let first = login(&mut client, slug, email, PASSWORD, "")
            .await
            .expect("session 1");
        let second = login(&mut client, slug, email, PASSWORD, "")
            .await
            .expect("session 2");

        // Refresh rotation: the old refresh token is spent; reusing it ends session 2.
        let rotated = client
            .refresh(pb::RefreshRequest {
                refresh_token: second.refresh_token.clone(),
            })
            .await
            .expect("refresh")
            .into_inner();
        let reuse = client
            .refresh(pb::RefreshRequest {
                refresh_token: second.refresh_token.clone(),
            })
            .await
            .expect_err("reuse");
        assert_eq!(reuse.code(), Code::Unauthenticated);
        let after_reuse = client
            .refresh(pb::RefreshRequest {
                refresh_token: rotated.refresh_token.clone(),
            })
            .await
            .expect_err("family revoked after reuse");
        assert_eq!(after_reuse.code(), Code::Unauthenticated);
        let status = client
            .who_am_i(authorized(pb::WhoAmIRequest {}, &rotated.access_token))
            .await
            .expect_err("session 2 revoked");
        assert_eq!(status.code(), Code::Unauthenticated);

        let third = login(&mut client, slug, email, PASSWORD, "")
            .await
            .expect("session 3");
        let change = |current: &str, new: &str| pb::ChangePasswordRequest {
            current_password: current.into(),
            new_password: new.into(),
        };
        let wrong = client
            .change_password(authorized(
                change("wrong password!", "a new long passphrase"),
                &first.access_token,
            ))
            .await
            .expect_err("wrong current password");
        assert_eq!(wrong.code(), Code::PermissionDenied);
        for (new, why) in [("short", "at least 8"), ("12345678", "commonly used")] {
            let status = client
                .change_password(authorized(change(PASSWORD, new), &first.access_token))
                .await
                .expect_err(why);
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains(why), "{status:?}");
        }
        let fresh = client
            .change_password(authorized(
                change(PASSWORD, "a new long passphrase"),
                &first.access_token,
            ))
            .await
            .expect("change")
            .into_inner();
        for (what, token) in [
            ("session 1", &first.access_token),
            ("session 3", &third.access_token),
        ] {
            let status = client
                .who_am_i(authorized(pb::WhoAmIRequest {}, token))
                .await
                .expect_err(what);
            assert_eq!(status.code(), Code::Unauthenticated, "{what}");
        }
        client
            .refresh(pb::RefreshRequest {
                refresh_token: third.refresh_token.clone(),
            })
            .await
            .expect_err("session 3's refresh token");
        client
            .who_am_i(authorized(pb::WhoAmIRequest {}, &fresh.access_token))
            .await
            .expect("the new pair works");
        login(&mut client, slug, email, PASSWORD, "")
            .await
            .expect_err("old password");
        login(&mut client, slug, email, "a new long passphrase", "")
            .await
            .expect("new password");
    });
}

/// Sign-in throttling per client address: failures spread over many accounts still
/// lock the address out (here the limit is 3 per address). Attempts on a tenant that
/// does not exist have their own counter: once it is spent they are refused, and the
/// address can still sign in to its real tenant.
#[test]
fn failed_sign_ins_from_one_address_are_throttled_across_accounts() {
    let options = Options {
        env: vec![("KIROKU_LOGIN_ATTEMPTS_PER_IP".into(), "3".into())],
        ..Options::default()
    };
    let cluster = Cluster::start(0, 0, options);
    let account_url = cluster.account_url();
    let slug = cluster.tenant_slug.clone();
    let email = cluster.owner_email.clone();
    block_on(async move {
        let mut client = account(&account_url).await;
        for i in 0..4 {
            let status = login(
                &mut client,
                "no-such-tenant",
                &format!("nobody{i}@example.com"),
                "wrong password!",
                "",
            )
            .await
            .expect_err("unknown tenant");
            let expected = if i < 3 {
                Code::Unauthenticated
            } else {
                Code::ResourceExhausted
            };
            assert_eq!(status.code(), expected, "attempt {i}: {status:?}");
        }
        login(&mut client, &slug, &email, OWNER_PASSWORD, "")
            .await
            .expect("unknown-tenant attempts do not lock the address out of its tenant");
        for i in 0..3 {
            let status = login(
                &mut client,
                &slug,
                &format!("nobody{i}@example.com"),
                "wrong password!",
                "",
            )
            .await
            .expect_err("unknown user");
            assert_eq!(status.code(), Code::Unauthenticated);
        }
        let status = login(&mut client, &slug, &email, OWNER_PASSWORD, "")
            .await
            .expect_err("address locked");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    });
}

/// The current password asked by ChangePassword and EnrollMfa counts against the
/// account's sign-in throttle: a stolen access token cannot guess the password there.
#[test]
fn wrong_current_passwords_are_throttled_like_sign_ins() {
    let cluster = Cluster::builder().start();
    let account_url = cluster.account_url();
    let token = cluster.access_token();
    block_on(async move {
        let mut client = account(&account_url).await;
        for i in 0..5 {
            let request = if i % 2 == 0 {
                client
                    .change_password(authorized(
                        pb::ChangePasswordRequest {
                            current_password: format!("guess number {i}"),
                            new_password: "a new and long passphrase".into(),
                        },
                        &token,
                    ))
                    .await
                    .map(drop)
            } else {
                client
                    .enroll_mfa(authorized(
                        pb::EnrollMfaRequest {
                            current_password: format!("guess number {i}"),
                        },
                        &token,
                    ))
                    .await
                    .map(drop)
            };
            let status = request.expect_err("wrong password");
            assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        }
        let status = client
            .enroll_mfa(authorized(
                pb::EnrollMfaRequest {
                    current_password: OWNER_PASSWORD.into(),
                },
                &token,
            ))
            .await
            .expect_err("throttled, even with the right password");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    });
}

/// Sign-in throttling per account: after 5 failures even the right password is
/// refused with RESOURCE_EXHAUSTED and a retry delay; failures are audited.
#[test]
fn failed_sign_ins_are_throttled_and_audited() {
    let cluster = Cluster::builder().start();
    let account_url = cluster.account_url();
    let layout = cluster.layout();
    let slug = cluster.tenant_slug.clone();
    let email = cluster.owner_email.clone();
    block_on(async move {
        let mut client = account(&account_url).await;
        for _ in 0..5 {
            let status = login(&mut client, &slug, &email, "wrong password!", "")
                .await
                .expect_err("wrong password");
            assert_eq!(status.code(), Code::Unauthenticated);
        }
        let status = login(&mut client, &slug, &email, OWNER_PASSWORD, "")
            .await
            .expect_err("throttled");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        let retry = kiroku_core::status::retry_after(&status).expect("retry info");
        assert!(retry > Duration::from_secs(60), "{retry:?}");

        // The events reached JetStream AUDIT.
        let nats = async_nats::connect(cluster::nats_url())
            .await
            .expect("nats");
        let js = async_nats::jetstream::new(nats);
        let mut stream = js.get_stream(layout.audit_stream()).await.expect("AUDIT");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let messages = stream.info().await.expect("info").state.messages;
            let mut subjects = stream
                .info_with_subjects(format!("{}.audit.>", layout.root()))
                .await
                .expect("subjects");
            let mut failed = 0;
            let mut throttled = 0;
            while let Some(Ok((subject, count))) = futures::StreamExt::next(&mut subjects).await {
                if subject.ends_with(".login.failed") {
                    failed += count;
                }
                if subject.ends_with(".login.throttled") {
                    throttled += count;
                }
            }
            if failed == 5 && throttled == 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "audit events: {failed} failed, {throttled} throttled ({} messages)",
                messages
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

async fn open_stream(
    gateway_url: &str,
    credential: &Credential,
    meeting: &str,
) -> Result<cluster::LiveStream, tonic::Status> {
    cluster::open_stream(gateway_url, &|body| credential.request(body), meeting).await
}

/// control 9.2.1: disabling a user ends their live stream within seconds and their
/// token is refused afterwards; deleting a user does the same for their sessions.
#[test]
fn control_9_2_1_disabled_users_stream_is_cut() {
    let cluster = Cluster::builder().gateways(1).start();
    let account_url = cluster.account_url();
    let gateway_url = cluster.gateway_url(0);
    block_on(async move {
        let mut client = account(&account_url).await;
        let t = tenant(&mut client, "cut-a").await;
        let member = Credential::Bearer(t.member.token.clone());
        let mut stream = open_stream(&gateway_url, &member, "standup")
            .await
            .expect("stream");
        stream.keeps_acking(Duration::from_millis(500)).await;
        client
            .disable_user(authorized(
                pb::UserRef {
                    user_id: t.member.user_id.clone(),
                },
                &t.admin.token,
            ))
            .await
            .expect("disable");
        let status = stream
            .ended_within(Duration::from_secs(10))
            .await
            .expect_err("cut");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains("revoked"), "{status:?}");
        let status = open_stream(&gateway_url, &member, "standup")
            .await
            .expect_err("token refused");
        assert_eq!(status.code(), Code::Unauthenticated);
        login(
            &mut client,
            "cut-a",
            "member@cut-a.example.com",
            PASSWORD,
            "",
        )
        .await
        .expect_err("a disabled user cannot sign in");

        // Deleting: the viewer's session ends too (and the user is gone from the list).
        client
            .delete_user(authorized(
                pb::UserRef {
                    user_id: t.viewer.user_id.clone(),
                },
                &t.admin.token,
            ))
            .await
            .expect("delete");
        let status = client
            .who_am_i(authorized(pb::WhoAmIRequest {}, &t.viewer.token))
            .await
            .expect_err("deleted");
        assert_eq!(status.code(), Code::Unauthenticated);
        let users = client
            .list_users(authorized(pb::ListUsersRequest {}, &t.admin.token))
            .await
            .expect("list")
            .into_inner()
            .users;
        assert!(users.iter().all(|u| u.user_id != t.viewer.user_id));
        assert!(
            users
                .iter()
                .any(|u| u.user_id == t.member.user_id && u.disabled)
        );

        // A revoked API key's live stream ends too.
        let key = Credential::ApiKey(t.transcribe_key.clone());
        let mut stream = open_stream(&gateway_url, &key, "standup")
            .await
            .expect("key stream");
        stream.keeps_acking(Duration::from_millis(300)).await;
        client
            .revoke_api_key(authorized(
                pb::RevokeApiKeyRequest {
                    key_id: t.transcribe_key_id.clone(),
                },
                &t.admin.token,
            ))
            .await
            .expect("revoke");
        let status = stream
            .ended_within(Duration::from_secs(10))
            .await
            .expect_err("cut");
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let status = open_stream(&gateway_url, &key, "standup")
            .await
            .expect_err("revoked key refused");
        assert_eq!(status.code(), Code::Unauthenticated);
    });
}

/// Self-registration is limited per client address (10 an hour).
#[test]
fn registrations_from_one_address_are_limited() {
    let cluster = Cluster::builder().start();
    let account_url = cluster.account_url();
    block_on(async move {
        let mut client = account(&account_url).await;
        // The cluster registered its own tenant already: 9 more are allowed.
        let register = |i: usize| pb::RegisterRequest {
            tenant_slug: format!("reg-{i}"),
            tenant_name: "r".into(),
            email: format!("owner@reg-{i}.example.com"),
            display_name: "Owner".into(),
            password: PASSWORD.into(),
        };
        for i in 0..9 {
            client
                .register(register(i))
                .await
                .expect("within the limit");
        }
        let status = client
            .register(register(9))
            .await
            .expect_err("over the limit");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(kiroku_core::status::retry_after(&status).is_some());
    });
}

/// Messages stored in one of the cluster's streams.
async fn stored_messages(stream: String) -> u64 {
    let nats = async_nats::connect(cluster::nats_url())
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(nats);
    let mut stream = js.get_stream(stream).await.expect("stream");
    stream.info().await.expect("info").state.messages
}

/// control CLD.6.3.1: under the all-participants policy, a stream for a meeting whose
/// participants have not all consented is refused with FAILED_PRECONDITION and not a
/// frame (nor a session job) is published; with every consent recorded it runs.
#[test]
fn control_cld_6_3_1_no_consent_no_recording() {
    let cluster = Cluster::builder().gateways(1).start();
    let account_url = cluster.account_url();
    let gateway_url = cluster.gateway_url(0);
    let layout = cluster.layout();
    block_on(async move {
        let mut client = account(&account_url).await;
        let t = tenant(&mut client, "consent-a").await;
        let member = Credential::Bearer(t.member.token.clone());
        client
            .set_consent_policy(authorized(
                pb::SetConsentPolicyRequest {
                    policy: pb::ConsentPolicy::AllParticipants as i32,
                },
                &t.admin.token,
            ))
            .await
            .expect("policy");
        for meeting in ["", "board"] {
            let status = open_stream(&gateway_url, &member, meeting)
                .await
                .expect_err("refused");
            assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
            assert!(status.message().contains("consent"), "{status:?}");
        }
        client
            .set_meeting_participants(authorized(
                pb::SetMeetingParticipantsRequest {
                    meeting_id: "board".into(),
                    participants: vec!["Ana".into(), "Ben".into()],
                },
                &t.member.token,
            ))
            .await
            .expect("participants");
        client
            .record_consent(authorized(
                pb::RecordConsentRequest {
                    meeting_id: "board".into(),
                    participant: "Ana".into(),
                    method: "verbal".into(),
                },
                &t.member.token,
            ))
            .await
            .expect("Ana consents");
        let status = open_stream(&gateway_url, &member, "board")
            .await
            .expect_err("Ben has not consented");
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(status.message().contains("Ben"), "{status:?}");
        assert_eq!(
            stored_messages(layout.audio_stream()).await,
            0,
            "frames published"
        );
        assert_eq!(
            stored_messages(layout.sessions_stream()).await,
            0,
            "jobs published"
        );
        // A member cannot satisfy consent by dropping Ben, who has not consented; an
        // admin may (audited with the names removed). Put back for the rest.
        let without_ben = |token: &str| {
            authorized(
                pb::SetMeetingParticipantsRequest {
                    meeting_id: "board".into(),
                    participants: vec!["Ana".into()],
                },
                token,
            )
        };
        let refused = client
            .set_meeting_participants(without_ben(&t.member.token))
            .await
            .expect_err("a member drops a participant without consent");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("Ben"), "{refused:?}");
        let status = client
            .set_meeting_participants(without_ben(&t.admin.token))
            .await
            .expect("an admin may")
            .into_inner();
        assert!(status.satisfied, "{status:?}");
        client
            .set_meeting_participants(authorized(
                pb::SetMeetingParticipantsRequest {
                    meeting_id: "board".into(),
                    participants: vec!["Ana".into(), "Ben".into()],
                },
                &t.member.token,
            ))
            .await
            .expect("Ben is back");

        // Ben consents through a service's API key (scope "consent"): now it records.
        let status = client
            .record_consent(with_key(
                pb::RecordConsentRequest {
                    meeting_id: "board".into(),
                    participant: "Ben".into(),
                    method: "click".into(),
                },
                &t.consent_key,
            ))
            .await
            .expect("Ben consents")
            .into_inner();
        assert!(status.satisfied, "{status:?}");
        let mut stream = open_stream(&gateway_url, &member, "board")
            .await
            .expect("stream");
        stream.keeps_acking(Duration::from_millis(500)).await;
        assert!(stored_messages(layout.audio_stream()).await > 0);
    });
}

/// Per-tenant concurrent-stream quota: RESOURCE_EXHAUSTED with retry info; the slot
/// comes back when the stream ends, also when the client half-closed first and then
/// went away (the gateway waits for no worker on its behalf). Another tenant is not
/// affected.
#[test]
fn stream_quota_is_per_tenant_and_answers_with_retry_info() {
    let options = Options {
        env: vec![("KIROKU_STREAMS_PER_TENANT".into(), "1".into())],
        ..Options::default()
    };
    let cluster = Cluster::start(1, 0, options);
    let account_url = cluster.account_url();
    let gateway_url = cluster.gateway_url(0);
    block_on(async move {
        let mut client = account(&account_url).await;
        let a = tenant(&mut client, "quota-a").await;
        let b = tenant(&mut client, "quota-b").await;
        let mut first = open_stream(
            &gateway_url,
            &Credential::Bearer(a.member.token.clone()),
            "",
        )
        .await
        .expect("first stream");
        let status = open_stream(
            &gateway_url,
            &Credential::ApiKey(a.transcribe_key.clone()),
            "",
        )
        .await
        .expect_err("over quota");
        assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
        assert!(
            kiroku_core::status::retry_after(&status).is_some(),
            "{status:?}"
        );
        let _other_tenant = open_stream(
            &gateway_url,
            &Credential::Bearer(b.member.token.clone()),
            "",
        )
        .await
        .expect("tenant B has its own quota");
        first.half_close(Duration::from_secs(1)).await;
        drop(first);
        // The client went away (no worker runs, so no final would ever end the
        // session): the gateway ends the stream and frees the slot.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match open_stream(
                &gateway_url,
                &Credential::Bearer(a.member.token.clone()),
                "",
            )
            .await
            {
                Ok(_) => break,
                Err(status)
                    if status.code() == Code::ResourceExhausted && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(status) => panic!("slot not freed: {status:?}"),
            }
        }
    });
}

/// A private redis-server on a free port, killed on drop.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Reliability promise 7 and the documented Redis-down behaviour: with Redis gone,
/// new calls fail closed (UNAVAILABLE, never accepted unchecked), running streams
/// continue, and everything works again once Redis is back.
#[test]
fn redis_down_fails_closed_for_new_calls_and_running_streams_continue() {
    let port = free_port();
    let mut redis = PrivateRedis::start(port);
    let options = Options {
        env: vec![(
            "KIROKU_REDIS_URL".into(),
            format!("redis://127.0.0.1:{port}"),
        )],
        ..Options::default()
    };
    let cluster = Cluster::start(1, 0, options);
    let account_url = cluster.account_url();
    let gateway_url = cluster.gateway_url(0);
    let token = cluster.access_token();
    let slug = cluster.tenant_slug.clone();
    let email = cluster.owner_email.clone();
    let credential = Credential::Bearer(token.clone());
    // One runtime for the whole test: the stream's connection lives in it.
    block_on(async {
        let mut stream = open_stream(&gateway_url, &credential, "")
            .await
            .expect("stream");
        let _ = redis.child.kill();
        let _ = redis.child.wait();
        // Past a presence tick (5 s), whose revocation re-check now fails: still acking.
        stream.keeps_acking(Duration::from_secs(7)).await;
        let mut gateway =
            api::transcription_client::TranscriptionClient::connect(gateway_url.clone())
                .await
                .expect("gateway");
        let status = gateway
            .transcribe(authorized(api::TranscribeRequest::default(), &token))
            .await
            .expect_err("fail closed");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        let mut client = account(&account_url).await;
        let status = login(&mut client, &slug, &email, OWNER_PASSWORD, "")
            .await
            .expect_err("sign-in fails closed without its throttle");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        drop(stream);
        let _redis = PrivateRedis::start(redis.port);
        let mut gateway = api::transcription_client::TranscriptionClient::connect(gateway_url)
            .await
            .expect("gateway");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = gateway
                .transcribe(authorized(api::TranscribeRequest::default(), &token))
                .await
                .expect_err("empty request");
            if status.code() == Code::InvalidArgument {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not back after Redis returned: {status:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    });
}

/// The admin CLI end to end: login cached with mode 0600, admin commands refused
/// until MFA, then invite / accept / list / role / disable and API keys.
#[test]
fn admin_cli_manages_users_and_keys_after_mfa() {
    use std::os::unix::fs::PermissionsExt as _;
    let cluster = Cluster::builder().start();
    let slug = cluster.tenant_slug.clone();
    let email = cluster.owner_email.clone();
    let (ok, out, err) = cluster.run_cli(
        &["login", "--tenant", &slug, "--email", &email],
        Some(OWNER_PASSWORD),
    );
    assert!(ok, "{out}{err}");
    let credentials = cluster.config_dir().join("credentials.json");
    let mode = std::fs::metadata(&credentials)
        .expect("cached")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "credentials mode {mode:o}");
    let (ok, out, _) = cluster.run_cli(&["whoami"], None);
    assert!(ok && out.contains(&email) && out.contains("owner"), "{out}");

    let (ok, _, err) = cluster.run_cli(&["admin", "user", "list"], None);
    assert!(!ok && err.contains("mfa required"), "{err}");

    let (ok, _, err) = cluster.run_cli(&["mfa", "enroll"], Some("wrong password"));
    assert!(!ok && err.contains("current password is wrong"), "{err}");
    let (ok, uri, err) = cluster.run_cli(&["mfa", "enroll"], Some(OWNER_PASSWORD));
    assert!(ok, "{err}");
    let secret = uri
        .split("secret=")
        .nth(1)
        .and_then(|s| s.split('&').next())
        .expect("secret in the otpauth uri");
    let code = totp::code_at(&totp::decode_secret(secret).expect("base32"), now()).expect("code");
    let (ok, out, err) = cluster.run_cli(&["mfa", "confirm", &code], None);
    assert!(ok, "{out}{err}");

    let (ok, token, err) = cluster.run_cli(
        &[
            "admin",
            "user",
            "invite",
            "ana@example.com",
            "--role",
            "member",
        ],
        None,
    );
    assert!(ok, "{err}");
    // Ana accepts in her own config folder.
    let ana_dir = cluster.dir.path().join("ana");
    let output = Command::new(cluster::kiroku())
        .args([
            "accept-invite",
            token.trim(),
            "--name",
            "Ana",
            "--password-stdin",
        ])
        .env("KIROKU_CONFIG_DIR", &ana_dir)
        .env("KIROKU_ACCOUNT_URL", cluster.account_url())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(b"a long enough passphrase\n")?;
            child.wait_with_output()
        })
        .expect("accept-invite");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (ok, list, _) = cluster.run_cli(&["admin", "user", "list"], None);
    assert!(ok && list.contains("ana@example.com"), "{list}");
    let ana_id = list
        .lines()
        .find(|l| l.contains("ana@example.com"))
        .and_then(|l| l.split_whitespace().next())
        .expect("ana's id")
        .to_string();
    let (ok, out, err) = cluster.run_cli(&["admin", "user", "role", &ana_id, "viewer"], None);
    assert!(ok && out.contains("viewer"), "{out}{err}");
    let (ok, out, err) = cluster.run_cli(&["admin", "user", "disable", &ana_id], None);
    assert!(ok && out.contains("disabled"), "{out}{err}");
    let (ok, _, err) = cluster.run_cli(&["admin", "user", "role", &ana_id, "chief"], None);
    assert!(
        !ok && err.contains("viewer, member, admin or owner"),
        "{err}"
    );

    let (ok, key, err) = cluster.run_cli(&["admin", "apikey", "create", "minutes-bot"], None);
    assert!(ok && key.trim().starts_with("kk_"), "{key}{err}");
    let (ok, keys, _) = cluster.run_cli(&["admin", "apikey", "list"], None);
    assert!(
        ok && keys.contains("minutes-bot") && keys.contains("active"),
        "{keys}"
    );
    assert!(!keys.contains(key.trim()), "the secret is shown once only");
    let key_id = keys.split_whitespace().next().expect("key id").to_string();
    let (ok, _, err) = cluster.run_cli(&["admin", "apikey", "revoke", &key_id], None);
    assert!(ok, "{err}");
    let (_, keys, _) = cluster.run_cli(&["admin", "apikey", "list"], None);
    assert!(keys.contains("revoked"), "{keys}");

    let (ok, _, _) = cluster.run_cli(&["logout"], None);
    assert!(ok && !credentials.exists());
}

/// `kiroku transcribe --remote` signs in with `KIROKU_API_KEY` (or the cached login);
/// a revoked key is refused at once.
#[test]
fn transcribe_remote_uses_the_api_key_and_a_revoked_key_is_refused() {
    let cluster = Cluster::builder().gateways(1).workers(1).start();
    let wav = kiroku_tests::speech::synthesize(
        cluster.dir.path(),
        "file",
        "Good morning everyone, let us start the weekly planning meeting.",
        16_000,
        1,
        0.5,
    )
    .expect("speech");
    let account_url = cluster.account_url();
    let (key, key_id, admin_token) = block_on(async move {
        let mut client = account(&account_url).await;
        let t = tenant(&mut client, "remote-a").await;
        (t.transcribe_key, t.transcribe_key_id, t.admin.token)
    });
    let gateway = cluster.gateway_url(0);
    let transcribe = |api_key: Option<&str>| {
        let mut command = cluster.cli(&["transcribe", "--remote", &gateway]);
        command.arg(&wav);
        if let Some(key) = api_key {
            command.env("KIROKU_API_KEY", key);
        }
        command.output().expect("kiroku transcribe --remote")
    };
    for (what, api_key) in [("api key", Some(key.as_str())), ("cached login", None)] {
        let output = transcribe(api_key);
        let text = String::from_utf8_lossy(&output.stdout).to_lowercase();
        assert!(
            output.status.success() && text.contains("planning meeting"),
            "{what}: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let account_url = cluster.account_url();
    block_on(async move {
        account(&account_url)
            .await
            .revoke_api_key(authorized(pb::RevokeApiKeyRequest { key_id }, &admin_token))
            .await
            .expect("revoke");
    });
    let output = transcribe(Some(&key));
    assert_eq!(output.status.code(), Some(2), "revoked key accepted");
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Unauthenticated"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `kiroku up` for cluster `name` on free ports and the null engine, with its run
/// directory (`dir/run`) and login cache (`dir/config`) under `dir`.
fn kiroku_up(name: &str, dir: &std::path::Path) -> Command {
    let mut command = Command::new(cluster::kiroku());
    command
        .args([
            "up",
            "--cluster",
            name,
            "--engine",
            "null-benchmark",
            "--run-dir",
        ])
        .arg(dir.join("run"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--account-listen",
            "127.0.0.1:0",
            "--audit-listen",
            "127.0.0.1:0",
            "--storage-listen",
            "127.0.0.1:0",
        ])
        .env("KIROKU_CONFIG_DIR", dir.join("config"))
        .env("KIROKU_DATABASE_URL", cluster::database_url())
        .env("KIROKU_REDIS_URL", cluster::redis_url())
        .env("KIROKU_NATS_URL", cluster::nats_url())
        .env_remove("KIROKU_API_KEY");
    command
}

/// `kiroku up` (issue: found trying it as a new user) keeps starting when it cannot sign
/// the demo owner in by itself: after the owner enrolled MFA, as the README tells admins
/// to, and after `.run/demo-password` was deleted while the database was kept. Each
/// time the cluster comes up and says why no login was cached and what to run instead.
#[test]
fn kiroku_up_keeps_a_users_own_login_and_starts_after_the_demo_owner_enrolls_mfa_or_its_password_file_is_lost()
 {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("up{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let run_dir = dir.path().join("run");
    let config_dir = dir.path().join("config");
    // Starts `kiroku up`, returns it and what it printed up to its "logs in" line.
    let up = || {
        let mut child = kiroku_up(&name, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("kiroku up");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let mut printed = String::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => {
                    printed.push_str(&line);
                    printed.push('\n');
                    if line.contains("Ctrl-C stops") {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!("kiroku up did not come up:\n{printed}");
                }
            }
        }
        (child, printed)
    };
    let stop = |mut child: std::process::Child| {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = child.wait();
    };

    // A login of the user's own, to another account service, is kept.
    std::fs::create_dir_all(&config_dir).expect("config dir");
    let own = serde_json::json!({
        "account_url": "http://127.0.0.1:1",
        "tenant_slug": "acme",
        "email": "ana@acme.example",
        "access_token": "a",
        "access_expires_at": 0,
        "refresh_token": "r",
        "mfa": false,
        "role": "owner",
    })
    .to_string();
    std::fs::write(config_dir.join("credentials.json"), &own).expect("own login");
    let (zeroth, printed) = up();
    assert!(
        printed.contains("no login was cached, to keep yours (tenant acme at http://127.0.0.1:1)"),
        "{printed}"
    );
    assert_eq!(
        std::fs::read_to_string(config_dir.join("credentials.json")).expect("login"),
        own,
        "the user's own login was replaced"
    );
    stop(zeroth);
    std::fs::remove_file(config_dir.join("credentials.json")).expect("remove own login");

    let (first, printed) = up();
    assert!(printed.contains("login cached in"), "{printed}");
    // Every process's admin address is printed, and answers.
    let admin_line = printed
        .lines()
        .find_map(|line| line.trim().strip_prefix("admin: "))
        .unwrap_or_else(|| panic!("no admin line: {printed}"));
    for role in ["account", "audit", "storage", "worker-0"] {
        let address = admin_line
            .split_whitespace()
            .find_map(|part| part.strip_prefix(role)?.strip_prefix("=http://"))
            .unwrap_or_else(|| panic!("no {role} admin address: {admin_line}"));
        let (status, body) = cluster::http_get(address, "/healthz").expect("/healthz");
        assert_eq!((status, body.as_str()), (200, "ok"), "{role} at {address}");
    }
    let account_url = printed
        .split_whitespace()
        .find_map(|w| w.strip_prefix("account="))
        .expect("account url")
        .to_string();
    let password = std::fs::read_to_string(run_dir.join("demo-password")).expect("password");
    let login: serde_json::Value = serde_json::from_slice(
        &std::fs::read(config_dir.join("credentials.json")).expect("cached login"),
    )
    .expect("json");
    let token = login["access_token"].as_str().expect("token").to_string();
    block_on(async move {
        let mut client = account(&account_url).await;
        let enrollment = client
            .enroll_mfa(authorized(
                pb::EnrollMfaRequest {
                    current_password: password.trim().into(),
                },
                &token,
            ))
            .await
            .expect("enroll")
            .into_inner();
        let secret = totp::decode_secret(&enrollment.secret).expect("secret");
        let code = totp::code_at(&secret, kiroku_account::tokens::unix_now()).expect("code");
        client
            .confirm_mfa(authorized(
                pb::ConfirmMfaRequest { totp_code: code },
                &token,
            ))
            .await
            .expect("confirm");
    });
    stop(first);

    let (second, printed) = up();
    assert!(printed.contains("its owner uses MFA"), "{printed}");
    assert!(printed.contains("--totp CODE"), "{printed}");
    stop(second);

    std::fs::remove_file(run_dir.join("demo-password")).expect("remove");
    let (third, printed) = up();
    assert!(printed.contains("password is unknown here"), "{printed}");
    assert!(printed.contains("is gone"), "{printed}");
    assert!(
        !run_dir.join("demo-password").exists(),
        "a password that works for nothing"
    );
    stop(third);

    let (ok, output) = remove_cluster_state(&name);
    assert!(ok, "{output}");
}

/// Drops what a `kiroku up --cluster NAME` left in PostgreSQL (its three schemas) and
/// NATS (its streams and buckets); the psql outcome.
fn remove_cluster_state(name: &str) -> (bool, String) {
    let schema = format!("account_{name}");
    let dropped = cluster::psql(
        &cluster::database_url(),
        &format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; DROP SCHEMA IF EXISTS {} CASCADE; \
             DROP SCHEMA IF EXISTS {} CASCADE;",
            schema.replacen("account", "audit", 1),
            schema.replacen("account", "storage", 1)
        ),
    );
    let layout = kiroku_core::nats::Layout::new(name).expect("layout");
    block_on(async move {
        let nats = async_nats::connect(cluster::nats_url())
            .await
            .expect("nats");
        layout.destroy(&async_nats::jetstream::new(nats)).await;
    });
    dropped
}

/// `kiroku up` told to stop (SIGTERM) while it is still starting leaves no process of
/// its cluster behind: the signal is caught from the start, and the children that run by
/// then are stopped (before, a SIGTERM before the "Ctrl-C stops" line killed `kiroku up`
/// alone and its children ran on).
#[test]
fn kiroku_up_stopped_while_starting_leaves_no_process_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("up{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let marker = format!("KIROKU_CLUSTER={name}");
    // Processes whose environment names this cluster (what `kiroku up` gives each child).
    let cluster_processes = || -> Vec<u32> {
        std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
                    .unwrap_or(false)
            })
            .collect()
    };
    let mut up = kiroku_up(&name, dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kiroku up");
    // The first child (the account service) runs: `kiroku up` is still starting.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while cluster_processes().is_empty() {
        assert!(std::time::Instant::now() < deadline, "no child started");
        assert!(
            matches!(up.try_wait(), Ok(None)),
            "kiroku up exited while starting"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(up.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while matches!(up.try_wait(), Ok(None)) {
        if std::time::Instant::now() > deadline {
            let _ = up.kill();
            panic!("kiroku up did not stop");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = cluster_processes();
    for pid in &left {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = remove_cluster_state(&name);
    assert!(left.is_empty(), "processes left running: {left:?}");
}

/// The gateway's readiness follows the account service (credentials and consent come
/// from it): stopped, the gateway's `/readyz` answers 503 naming it.
#[test]
fn the_gateway_is_not_ready_without_the_account_service() {
    let mut cluster = Cluster::builder().gateways(1).start();
    let admin = cluster.gateways[0].admin.clone();
    let readyz = |want: u16| {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = cluster::http_get(&admin, "/readyz").expect("/readyz");
            if status == want {
                return body;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "/readyz: {status} {body}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    assert_eq!(readyz(200), "ready");
    let account = cluster.account.as_mut().expect("account");
    let _ = account.child.kill();
    let _ = account.child.wait();
    let body = readyz(503);
    assert!(body.contains("account service"), "{body}");
}
