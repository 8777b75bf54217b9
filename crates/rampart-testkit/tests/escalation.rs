//! One principal acting on another (spec 13.1.1-2, 13.2-1, 13.2-2, 13.2-4, 13.2-6): the
//! privilege-escalation paths an independent review climbed, each tried again through the API
//! as the attacker did. Every test here failed on the controller before the grant rules of
//! `docs/authz.md` ("Rules the API enforces") existed.

use std::sync::Arc;

use http::{Method, StatusCode};
use rampart_api::{
    ApplicationCredential, ApplicationCredentialCreate, ApplicationCredentialLogin, Client, ClientError, Group,
    GroupCreate, List, LoginRequest, PasswordChange, Project, RoleAssignment, RoleAssignmentCreate, ScopeRef,
    SecurityCompliance, User,
};
use rampart_common::Sensitive;
use rampart_common::time::ManualClock;
use rampart_testkit::{ClusterOptions, TestCluster};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

const PW: &str = "Bittern-orchard-62";

fn system() -> ScopeRef {
    ScopeRef {
        system: Some(true),
        ..Default::default()
    }
}

fn project(p: Uuid) -> ScopeRef {
    ScopeRef {
        project: Some(p),
        ..Default::default()
    }
}

fn domain(d: Uuid) -> ScopeRef {
    ScopeRef {
        domain: Some(d),
        ..Default::default()
    }
}

fn answer<T>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Ok(_) => (200, String::new()),
        Err(e) => (
            e.status().map(|s| s.as_u16()).unwrap_or_default(),
            e.code().unwrap_or_default().to_string(),
        ),
    }
}

async fn default_domain(c: &TestCluster) -> Uuid {
    let ds: List<rampart_api::Domain> = c.admin.get("/v1/domains").await.unwrap();
    ds.items.iter().find(|d| d.name == "default").unwrap().id
}

async fn new_project(c: &TestCluster, name: &str) -> Uuid {
    let p: Project = c
        .admin
        .post("/v1/projects", &serde_json::json!({ "name": name }))
        .await
        .unwrap();
    p.id
}

async fn user_id(c: &TestCluster, name: &str) -> Uuid {
    let users: List<User> = c.admin.get("/v1/users?limit=500").await.unwrap();
    users.items.iter().find(|u| u.name == name).unwrap().id
}

async fn grant(client: &Client, user: Uuid, role: &str, scope: ScopeRef) -> Result<RoleAssignment, ClientError> {
    client
        .post(
            "/v1/role-assignments",
            &RoleAssignmentCreate {
                user: Some(user),
                group: None,
                role: role.into(),
                scope,
            },
        )
        .await
}

async fn grant_group(client: &Client, group: Uuid, role: &str, scope: ScopeRef) -> Result<RoleAssignment, ClientError> {
    client
        .post(
            "/v1/role-assignments",
            &RoleAssignmentCreate {
                user: None,
                group: Some(group),
                role: role.into(),
                scope,
            },
        )
        .await
}

/// The security admin sets the security-compliance policy.
async fn set_policy(c: &TestCluster, policy: SecurityCompliance) {
    let _: SecurityCompliance = c
        .bootstrap_security_admin()
        .await
        .request(Method::PUT, "/v1/security-compliance", Some(&policy))
        .await
        .unwrap();
}

/// A domain admin of `default`, logged in with its second factor.
async fn domain_admin(c: &TestCluster, name: &str) -> Client {
    let d = default_domain(c).await;
    c.create_user(name, PW, &[("domain-admin", domain(d))]).await;
    c.login_user(name, PW).await
}

async fn reset_password(actor: &Client, target: Uuid) -> Result<(), ClientError> {
    actor
        .send(
            Method::POST,
            &format!("/v1/users/{target}/reset-password"),
            Some(&serde_json::json!({"password": "Heron-quarry-5521"})),
        )
        .await
        .map(|_| ())
}

async fn act(actor: &Client, op: &str, target: Uuid, group: Uuid) -> (u16, String) {
    let r = match op {
        "reset_password" => reset_password(actor, target).await,
        "reset_mfa" => actor
            .send::<()>(Method::DELETE, &format!("/v1/users/{target}/mfa"), None)
            .await
            .map(|_| ()),
        "unlock" => actor
            .send::<()>(Method::POST, &format!("/v1/users/{target}/unlock"), None)
            .await
            .map(|_| ()),
        "disable" => actor
            .request::<_, User>(
                Method::PATCH,
                &format!("/v1/users/{target}"),
                Some(&serde_json::json!({"enabled": false})),
            )
            .await
            .map(|_| ()),
        "restrict_sources" => actor
            .request::<_, User>(
                Method::PATCH,
                &format!("/v1/users/{target}"),
                Some(&serde_json::json!({"allowed_source_cidrs": ["192.0.2.0/24"]})),
            )
            .await
            .map(|_| ()),
        "add_to_group" => actor
            .send::<()>(Method::PUT, &format!("/v1/groups/{group}/users/{target}"), None)
            .await
            .map(|_| ()),
        "remove_from_group" => actor
            .send::<()>(Method::DELETE, &format!("/v1/groups/{group}/users/{target}"), None)
            .await
            .map(|_| ()),
        "delete" => actor
            .send::<()>(Method::DELETE, &format!("/v1/users/{target}"), None)
            .await
            .map(|_| ()),
        other => panic!("no operation {other}"),
    };
    match r {
        Ok(()) => (204, String::new()),
        Err(e) => answer::<()>(Err(e)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_2_credential_resets_and_account_changes_need_every_role_of_the_target() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let p = c.admin_project().await;
    let dadmin = domain_admin(&c, "dadmin").await;
    let admin = c.admin.current_token().await.unwrap().user.id;
    let security = user_id(&c, "security").await;
    let (_sec, _) = c.security_admin().await;
    let secops = user_id(&c, "secops").await;
    let member = c.create_user("plain", PW, &[("member", project(p))]).await;
    let group: Group = c
        .admin
        .post(
            "/v1/groups",
            &GroupCreate {
                name: "helpers".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // The domain admin of `default` cannot touch the system admin in any way.
    for op in [
        "reset_password",
        "reset_mfa",
        "unlock",
        "disable",
        "restrict_sources",
        "add_to_group",
        "delete",
    ] {
        assert_eq!(
            act(&dadmin, op, admin, group.id).await,
            (403, "outranked".into()),
            "domain admin → system admin: {op}"
        );
    }
    // The system admin cannot touch either security admin.
    for target in [security, secops] {
        for op in [
            "reset_password",
            "reset_mfa",
            "disable",
            "restrict_sources",
            "add_to_group",
            "delete",
        ] {
            assert_eq!(
                act(&c.admin, op, target, group.id).await,
                (403, "outranked".into()),
                "system admin → security admin: {op}"
            );
        }
    }
    // What they outrank, they administer.
    assert_eq!(act(&dadmin, "reset_password", member, group.id).await.0, 204);
    assert_eq!(act(&dadmin, "add_to_group", member, group.id).await.0, 204);
    assert_eq!(act(&c.admin, "reset_mfa", member, group.id).await.0, 204);
    // The security admin unlocks anyone (the lockout policy is its duty)...
    let sec = c.bootstrap_security_admin().await;
    assert_eq!(act(sec, "unlock", admin, group.id).await.0, 204);
    // ...but resets nobody's password.
    assert_eq!(act(sec, "reset_password", member, group.id).await.0, 403);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_2_group_membership_grants_only_what_the_caller_may_grant() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let d = default_domain(&c).await;
    let p = c.admin_project().await;
    let dadmin = domain_admin(&c, "dadmin").await;
    let sec = c.bootstrap_security_admin().await.clone();
    let mk = async |name: &str| -> Uuid {
        let g: Group = c
            .admin
            .post(
                "/v1/groups",
                &GroupCreate {
                    name: name.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        g.id
    };
    let (admins, auditors, securities, members) = (
        mk("admins").await,
        mk("auditors").await,
        mk("secs").await,
        mk("members").await,
    );
    grant_group(&c.admin, admins, "system-admin", system()).await.unwrap();
    grant_group(&sec, auditors, "auditor", system()).await.unwrap();
    grant_group(&sec, securities, "security-admin", system()).await.unwrap();
    grant_group(&c.admin, members, "member", project(p)).await.unwrap();
    let recruit = c.create_user("recruit", PW, &[]).await;
    let add = async |actor: &Client, g: Uuid| act(actor, "add_to_group", recruit, g).await;
    // The review's three climbs: domain admin → system-admin group, domain admin → auditor
    // group, system admin → security-admin group.
    assert_eq!(add(&dadmin, admins).await, (403, "outranked".into()));
    assert_eq!(add(&dadmin, auditors).await, (403, "outranked".into()));
    assert_eq!(add(&c.admin, securities).await, (403, "outranked".into()));
    assert_eq!(add(&c.admin, auditors).await, (403, "outranked".into()));
    // Nor can the system admin empty or delete the security admins' group.
    assert_eq!(
        answer(
            c.admin
                .send::<()>(Method::DELETE, &format!("/v1/groups/{securities}"), None)
                .await
        ),
        (403, "outranked".into())
    );
    // A group of project roles is the domain admin's to fill.
    assert_eq!(add(&dadmin, members).await.0, 204);
    assert_eq!(act(&dadmin, "remove_from_group", recruit, members).await.0, 204);
    // The trail names the membership change and its group (not `user.update`).
    let events: List<rampart_audit::record::AuditRecord> = c
        .admin
        .get("/v1/audit/events?operation=group.member.*&result=success")
        .await
        .unwrap();
    let ops: Vec<(&str, Option<&str>)> = events
        .items
        .iter()
        .map(|e| (e.operation.as_str(), e.target.id.as_deref()))
        .collect();
    let m = members.to_string();
    assert!(ops.contains(&("group.member.add", Some(m.as_str()))), "{ops:?}");
    assert!(ops.contains(&("group.member.remove", Some(m.as_str()))), "{ops:?}");
    let _ = d;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_2_system_admin_reaches_no_tenant_key_and_cannot_replace_the_security_admin() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let p = new_project(&c, "tenant").await;
    let d = default_domain(&c).await;
    let dadmin = domain_admin(&c, "dadmin").await;
    let mole = c.create_user("mole", PW, &[]).await;
    for actor in [&c.admin, &dadmin] {
        for role in ["key-user", "key-admin"] {
            assert_eq!(answer(grant(actor, mole, role, project(p)).await).0, 403, "{role}");
        }
    }
    // No "first security admin" path, and the bootstrap one cannot be removed.
    assert_eq!(answer(grant(&c.admin, mole, "security-admin", system()).await).0, 403);
    assert_eq!(answer(grant(&c.admin, mole, "auditor", system()).await).0, 403);
    let security = user_id(&c, "security").await;
    assert_eq!(
        act(&c.admin, "delete", security, Uuid::new_v4()).await,
        (403, "outranked".into())
    );
    let theirs: List<RoleAssignment> = c
        .admin
        .get(&format!("/v1/role-assignments?user={security}"))
        .await
        .unwrap();
    let a = &theirs.items[0];
    assert_eq!(a.role, "security-admin");
    let (status, _) = answer(
        c.admin
            .send::<()>(Method::DELETE, &format!("/v1/role-assignments/{}", a.id), None)
            .await,
    );
    assert_eq!(status, 403);
    // A custom role that gains a key role once assigned would hand it out past the rules.
    let _: rampart_api::Role = c
        .admin
        .post("/v1/roles", &serde_json::json!({"name": "ops", "implies": ["member"]}))
        .await
        .unwrap();
    grant(&c.admin, mole, "ops", project(p)).await.unwrap();
    let (status, _) = answer(
        c.admin
            .request::<_, rampart_api::Role>(
                Method::PATCH,
                "/v1/roles/ops",
                Some(&serde_json::json!({"implies": ["member", "key-user"]})),
            )
            .await,
    );
    assert_eq!(status, 409);
    let _ = d;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_2_key_roles_come_from_key_admins_and_grants_stay_in_their_domain() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let p = new_project(&c, "shop").await;
    c.create_user("padmin", PW, &[("project-admin", project(p))]).await;
    let padmin = c.login_user("padmin", PW).await;
    let (k1, k2, u) = (
        c.create_user("k1", PW, &[]).await,
        c.create_user("k2", PW, &[]).await,
        c.create_user("u", PW, &[]).await,
    );
    // The project admin names the first key admin, and only the first.
    assert_eq!(answer(grant(&padmin, u, "key-user", project(p)).await).0, 403);
    let first = grant(&padmin, k1, "key-admin", project(p)).await.unwrap();
    assert_eq!(answer(grant(&padmin, k2, "key-admin", project(p)).await).0, 403);
    // From then on the key admins decide.
    let k1c = c.login_user("k1", PW).await;
    grant(&k1c, u, "key-user", project(p)).await.unwrap();
    grant(&k1c, k2, "key-admin", project(p)).await.unwrap();
    assert_eq!(
        answer(grant(&k1c, k1, "key-user", project(p)).await).0,
        403,
        "no self-grant"
    );
    assert_eq!(
        answer(
            padmin
                .send::<()>(Method::DELETE, &format!("/v1/role-assignments/{}", first.id), None)
                .await
        )
        .0,
        403,
        "the project admin cannot take the key admin away"
    );
    // A grant across domains gets the answer of a user that does not exist.
    let _: rampart_api::Domain = c
        .admin
        .post("/v1/domains", &serde_json::json!({"name": "acme"}))
        .await
        .unwrap();
    let stranger: User = c
        .admin
        .post(
            "/v1/users",
            &serde_json::json!({"name": "stranger", "domain": "acme", "password": PW, "password_change_required": false}),
        )
        .await
        .unwrap();
    let cross = grant(&padmin, stranger.id, "member", project(p)).await.unwrap_err();
    let ghost = grant(&padmin, Uuid::new_v4(), "member", project(p)).await.unwrap_err();
    assert_eq!(cross.status(), Some(StatusCode::BAD_REQUEST));
    assert_eq!(
        cross.to_string(),
        ghost.to_string(),
        "same answer for another domain's user and none"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_4_application_credentials_die_with_incident_response_and_need_a_fresh_login() {
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let c = TestCluster::start(ClusterOptions {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let p = c.admin_project().await;
    let id = c.create_user("robot", PW, &[("member", project(p))]).await;
    let make = async |pw: &str, name: &str| -> ApplicationCredential {
        let (me, _) = c.anon.login_as("robot", pw).await.unwrap();
        me.post(
            "/v1/application-credentials",
            &ApplicationCredentialCreate {
                name: name.into(),
                project: "admin".into(),
                roles: None,
                expires_at: None,
                password: None,
                totp: None,
            },
        )
        .await
        .unwrap()
    };
    let use_it = async |cred: &ApplicationCredential| {
        answer(
            c.anon
                .login(&LoginRequest {
                    username: String::new(),
                    password: None,
                    domain: None,
                    project: None,
                    totp: None,
                    application_credential: Some(ApplicationCredentialLogin {
                        id: cred.id,
                        secret: cred.secret.clone().unwrap(),
                    }),
                })
                .await,
        )
        .0
    };
    // A password reset by an administrator ends it.
    let cred = make(PW, "after-reset").await;
    assert_eq!(use_it(&cred).await, 200);
    reset_password(&c.admin, id).await.unwrap();
    assert_eq!(use_it(&cred).await, 401);
    // The owner sets a new password (the reset forces it) before going on.
    c.anon
        .change_password(&PasswordChange {
            username: "robot".into(),
            domain: None,
            current_password: Sensitive::new("Heron-quarry-5521"),
            new_password: Sensitive::new(format!("{PW}x")),
            totp: None,
        })
        .await
        .unwrap();
    let pw = format!("{PW}x");
    // A forced password change ends it, and so does a second-factor reset.
    let cred = make(&pw, "after-force").await;
    c.admin
        .request::<_, User>(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(&serde_json::json!({"password_change_required": true})),
        )
        .await
        .unwrap();
    assert_eq!(use_it(&cred).await, 401);
    c.admin
        .request::<_, User>(
            Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(&serde_json::json!({"password_change_required": false})),
        )
        .await
        .unwrap();
    let cred = make(&pw, "after-mfa-reset").await;
    c.admin
        .send::<()>(Method::DELETE, &format!("/v1/users/{id}/mfa"), None)
        .await
        .unwrap();
    assert_eq!(use_it(&cred).await, 401);
    // A token older than five minutes cannot mint one without the password again.
    let (me, _) = c.anon.login_as("robot", &pw).await.unwrap();
    clock.advance(Duration::minutes(6));
    let req = |password: Option<&str>| ApplicationCredentialCreate {
        name: "stolen".into(),
        project: "admin".into(),
        roles: None,
        expires_at: None,
        password: password.map(Sensitive::new),
        totp: None,
    };
    assert_eq!(
        answer(
            me.post::<_, ApplicationCredential>("/v1/application-credentials", &req(None))
                .await
        ),
        (401, "reauthentication_required".into())
    );
    assert_eq!(
        answer(
            me.post::<_, ApplicationCredential>("/v1/application-credentials", &req(Some("Wrong-guess-1234")))
                .await
        ),
        (401, "invalid_credentials".into())
    );
    let ok: ApplicationCredential = me.post("/v1/application-credentials", &req(Some(&pw))).await.unwrap();
    assert_eq!(use_it(&ok).await, 200);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_2_a_phished_password_alone_cannot_change_the_password_of_an_mfa_account() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let (sec, mfa) = c.security_admin().await;
    let change = |totp: Option<String>| PasswordChange {
        username: "secops".into(),
        domain: None,
        current_password: Sensitive::new("Sentinel-kestrel-44"),
        new_password: Sensitive::new("Phisher-owns-this-77"),
        totp: totp.map(Sensitive::new),
    };
    assert_eq!(
        answer(c.anon.change_password(&change(None)).await),
        (401, "mfa_required".into())
    );
    assert_eq!(
        answer(c.anon.change_password(&change(Some("000000".into()))).await),
        (401, "invalid_credentials".into())
    );
    // The owner's session survived both attempts.
    sec.current_token().await.expect("still logged in");
    let code = mfa.next_code().await;
    c.anon.change_password(&change(Some(code))).await.unwrap();
    assert!(sec.current_token().await.is_err(), "a real change ends the sessions");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_6_a_burst_of_parallel_guesses_evaluates_at_most_the_threshold() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let p = c.admin_project().await;
    // The per-source limit is tested on its own below; here one client makes the burst.
    set_policy(
        &c,
        SecurityCompliance {
            source_failure_limit: 0,
            ..Default::default()
        },
    )
    .await;
    let id = c.create_user("target", PW, &[("reader", project(p))]).await;
    let wrong = |i: usize| {
        let anon = c.anon.clone();
        tokio::spawn(async move {
            anon.login_as("target", &format!("Wrong-guess-{i:04}"))
                .await
                .map(|_| ())
        })
    };
    let burst: Vec<_> = (0..40).map(wrong).collect();
    for h in burst {
        assert!(h.await.unwrap().is_err());
    }
    let e = c.anon.login_as("target", PW).await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_credentials"), "locked during the burst");
    let events: List<rampart_audit::record::AuditRecord> = c
        .admin
        .get(&format!(
            "/v1/audit/events?operation=auth.login&result=failure&actor={id}&limit=200"
        ))
        .await
        .unwrap();
    let evaluated = events
        .items
        .iter()
        .filter(|r| r.details.get("reason").and_then(|v| v.as_str()) == Some("wrong_password"))
        .count();
    assert_eq!(evaluated, 5, "exactly lockout_failure_attempts passwords were checked");
    let u: User = c.admin.get(&format!("/v1/users/{id}")).await.unwrap();
    assert!(u.locked_until.is_some());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_6_one_source_cannot_lock_every_account() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let p = c.admin_project().await;
    set_policy(
        &c,
        SecurityCompliance {
            source_failure_limit: 6,
            ..Default::default()
        },
    )
    .await;
    // An account whose sources exclude this client cannot be locked from here at all.
    let fenced = c.create_user("fenced", PW, &[("reader", project(p))]).await;
    c.admin
        .request::<_, User>(
            Method::PATCH,
            &format!("/v1/users/{fenced}"),
            Some(&serde_json::json!({"allowed_source_cidrs": ["192.0.2.0/24"]})),
        )
        .await
        .unwrap();
    for i in 0..6 {
        let e = c
            .anon
            .login_as("fenced", &format!("Wrong-guess-{i:04}"))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Some("invalid_credentials"));
    }
    let u: User = c.admin.get(&format!("/v1/users/{fenced}")).await.unwrap();
    assert_eq!(u.locked_until, None, "failures from outside its sources do not lock it");
    // Six failures used this source's budget: the next attempt is refused unchecked, even
    // with a right password, and locks nothing.
    let open = c.create_user("open", PW, &[("reader", project(p))]).await;
    let e = c.anon.login_as("open", "Wrong-guess-9999").await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    let e = c.anon.login_as("open", PW).await.unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::TOO_MANY_REQUESTS));
    let u: User = c.admin.get(&format!("/v1/users/{open}")).await.unwrap();
    assert_eq!(u.locked_until, None);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_1_a_disabled_project_refuses_every_call_scoped_to_it() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let p = new_project(&c, "paused").await;
    c.create_user("worker", PW, &[("member", project(p)), ("key-user", project(p))])
        .await;
    let worker = c.login_user("worker", PW).await;
    let vpcs = format!("/v1/projects/{p}/vpcs");
    let _: serde_json::Value = worker
        .post(&vpcs, &serde_json::json!({"name": "before", "cidr": "10.20.0.0/16"}))
        .await
        .unwrap();
    c.admin
        .request::<_, Project>(
            Method::PATCH,
            &format!("/v1/projects/{p}"),
            Some(&serde_json::json!({"enabled": false})),
        )
        .await
        .unwrap();
    let disabled = (403, "project_disabled".to_string());
    assert_eq!(
        answer(
            worker
                .post::<_, serde_json::Value>(&vpcs, &serde_json::json!({"name": "after", "cidr": "10.21.0.0/16"}))
                .await
        ),
        disabled
    );
    assert_eq!(answer(worker.get::<serde_json::Value>(&vpcs).await), disabled);
    assert_eq!(
        answer(worker.get::<serde_json::Value>(&format!("/v1/projects/{p}/keys")).await),
        disabled,
        "the key routes check the project too"
    );
    assert_eq!(
        answer(c.admin.get::<serde_json::Value>(&vpcs).await).1,
        "project_disabled",
        "whatever the token"
    );
    c.admin
        .request::<_, Project>(
            Method::PATCH,
            &format!("/v1/projects/{p}"),
            Some(&serde_json::json!({"enabled": true})),
        )
        .await
        .unwrap();
    worker.get::<serde_json::Value>(&vpcs).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_2_answers_reveal_nothing_the_caller_may_not_see() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let p = c.admin_project().await;
    let _: rampart_api::Domain = c
        .admin
        .post("/v1/domains", &serde_json::json!({"name": "hidden"}))
        .await
        .unwrap();
    c.create_user("nosy", PW, &[("project-admin", project(p))]).await;
    let nosy = c.login_user("nosy", PW).await;
    // A domain that exists and one that does not answer alike.
    let a = answer(nosy.get::<List<Project>>("/v1/projects?domain=hidden").await);
    let b = answer(nosy.get::<List<Project>>("/v1/projects?domain=nowhere").await);
    assert_eq!(a, b);
    assert_eq!(a.0, 404);
    // Deleting the security admin's assignment says nothing about what it is.
    let security = user_id(&c, "security").await;
    let theirs: List<RoleAssignment> = c
        .admin
        .get(&format!("/v1/role-assignments?user={security}"))
        .await
        .unwrap();
    let e = nosy
        .send::<()>(
            Method::DELETE,
            &format!("/v1/role-assignments/{}", theirs.items[0].id),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::NOT_FOUND));
    assert!(!e.to_string().contains("security"), "{e}");
    let ghost = nosy
        .send::<()>(
            Method::DELETE,
            &format!("/v1/role-assignments/{}", Uuid::new_v4()),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), ghost.to_string());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_2_system_readers_see_no_tenant_encryption_context_or_key_id() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    // Counted skip without SoftHSM2; a failure under RAMPART_TEST_REQUIRE_HSM=1 (CI).
    let hsm = c.has_hsm();
    if !rampart_common::testing::require(rampart_common::testing::Need::Hsm, hsm, "softhsm2 missing") {
        c.shutdown().await;
        return;
    }
    let p = new_project(&c, "vaulted").await;
    c.create_user("kadmin", PW, &[("key-admin", project(p))]).await;
    c.create_user("kuser", PW, &[("key-user", project(p))]).await;
    let kadmin = c.login_user("kadmin", PW).await;
    let kuser = c.login_user("kuser", PW).await;
    let key: rampart_api::Key = kadmin
        .create_key(
            p,
            &rampart_api::KeyCreate {
                name: "payroll".into(),
                algorithm: None,
                rotation_period_days: None,
            },
        )
        .await
        .unwrap();
    let _: serde_json::Value = kuser
        .post(
            &format!("/v1/projects/{p}/keys/{}/encrypt", key.id),
            &serde_json::json!({"plaintext": "aGVsbG8=", "context": {"tenant": "acme-payroll-2026"}}),
        )
        .await
        .unwrap();
    let path = "/v1/audit/events?operation=key.encrypt";
    let as_admin = serde_json::to_string(&c.admin.get::<serde_json::Value>(path).await.unwrap()).unwrap();
    assert!(as_admin.contains("encryption_context_sha256"), "{as_admin}");
    assert!(!as_admin.contains("acme-payroll-2026"), "{as_admin}");
    assert!(
        !as_admin.contains(&key.id.to_string()),
        "the system admin learns no key id"
    );
    c.create_user("aud", PW, &[("auditor", system())]).await;
    let auditor = c.login_user("aud", PW).await;
    let as_auditor = serde_json::to_string(&auditor.get::<serde_json::Value>(path).await.unwrap()).unwrap();
    assert!(!as_auditor.contains("acme-payroll-2026"));
    assert!(as_auditor.contains(&key.id.to_string()), "auditors correlate by key id");
    c.shutdown().await;
}

/// Logs in a fresh holder of each role, for the matrix.
async fn matrix_actor(c: &TestCluster, role: &str, d: Uuid, p: Uuid) -> Client {
    let name = format!("actor-{role}");
    let scope = match role {
        "system-admin" | "security-admin" | "auditor" => system(),
        "domain-admin" => domain(d),
        _ => project(p),
    };
    c.create_user(&name, PW, &[(role, scope)]).await;
    c.login_user(&name, PW).await
}

/// The principal matrix (spec 13.1.1-2, 13.2-2): every operation on another account, by a holder
/// of each role, on an account holding each role. Recorded in `golden/principal-matrix.txt`
/// (`REGENERATE=1` regenerates it); a change of the rules shows as a diff to review.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_2_principal_matrix_actor_role_by_target_role() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let d = default_domain(&c).await;
    let p = new_project(&c, "matrix").await;
    // So that MFA codes never run out for the many logins: no second factor needed here (the
    // rules do not depend on it).
    set_policy(
        &c,
        SecurityCompliance {
            mfa_required_roles: vec![],
            source_failure_limit: 0,
            ..Default::default()
        },
    )
    .await;
    let actors = [
        "system-admin",
        "security-admin",
        "auditor",
        "domain-admin",
        "project-admin",
        "member",
        "key-admin",
    ];
    let targets = [
        "system-admin",
        "security-admin",
        "auditor",
        "domain-admin",
        "project-admin",
        "member",
        "reader",
        "key-admin",
        "key-user",
        "none",
    ];
    let ops = [
        "unlock",
        "reset_mfa",
        "reset_password",
        "restrict_sources",
        "add_to_group",
        "remove_from_group",
        "disable",
        "delete",
    ];
    let group: Group = c
        .admin
        .post(
            "/v1/groups",
            &GroupCreate {
                name: "matrix".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut n = 0;
    let mut make_target = async |role: &str| -> Uuid {
        n += 1;
        let name = format!("t{n}-{role}");
        match role {
            "none" => c.create_user(&name, PW, &[]).await,
            "system-admin" | "security-admin" | "auditor" => c.create_user(&name, PW, &[(role, system())]).await,
            "domain-admin" => c.create_user(&name, PW, &[(role, domain(d))]).await,
            _ => c.create_user(&name, PW, &[(role, project(p))]).await,
        }
    };
    let mut lines = Vec::new();
    for actor_role in actors {
        let actor = matrix_actor(&c, actor_role, d, p).await;
        for target_role in targets {
            let mut target = make_target(target_role).await;
            let mut row = Vec::new();
            for op in ops {
                let (status, code) = act(&actor, op, target, group.id).await;
                row.push(format!(
                    "{op}={status}{}",
                    if code.is_empty() {
                        String::new()
                    } else {
                        format!(":{code}")
                    }
                ));
                if op == "delete" && status == 204 {
                    target = make_target(target_role).await;
                }
            }
            lines.push(format!("{actor_role:15} → {target_role:15} {}", row.join(" ")));
        }
    }
    let text = lines.join("\n") + "\n";
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/principal-matrix.txt");
    rampart_common::testing::golden(&path, &text);
    // The rules the matrix must show whatever the golden file says.
    for line in &lines {
        let outranked = |actor: &str, target: &str| line.starts_with(&format!("{actor:15} → {target:15}"));
        if outranked("domain-admin", "system-admin")
            || outranked("system-admin", "security-admin")
            || outranked("system-admin", "key-user")
            || outranked("domain-admin", "auditor")
        {
            assert!(!line.contains("=204"), "{line}");
        }
    }
    c.shutdown().await;
}
