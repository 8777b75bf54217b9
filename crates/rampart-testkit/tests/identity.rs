//! Identity and access through the API (spec 9.2, 9.3, 13.1, 13.2): lockout, MFA, validity
//! windows, password policy, source ranges, application credentials, separation of duties.

use std::sync::Arc;

use http::StatusCode;
use rampart_api::{
    ApplicationCredential, ApplicationCredentialCreate, ApplicationCredentialLogin, List, LoginRequest, PasswordChange,
    RecoveryCodes, RoleAssignment, RoleAssignmentCreate, ScopeRef, SecurityCompliance, TokenScope, User, UserCreate,
};
use rampart_common::Sensitive;
use rampart_common::time::ManualClock;
use rampart_testkit::{ClusterOptions, MfaUser, TestCluster};
use time::{Duration, OffsetDateTime};

fn login(user: &str, password: &str) -> LoginRequest {
    LoginRequest {
        username: user.into(),
        password: Some(Sensitive::new(password)),
        domain: None,
        project: None,
        totp: None,
        application_credential: None,
    }
}

fn project_scope(p: uuid::Uuid) -> ScopeRef {
    ScopeRef {
        project: Some(p),
        ..Default::default()
    }
}

fn system_scope() -> ScopeRef {
    ScopeRef {
        system: Some(true),
        ..Default::default()
    }
}

async fn clocked() -> (TestCluster, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let c = TestCluster::start(ClusterOptions {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    (c, clock)
}

async fn status_of<T>(r: Result<T, rampart_api::ClientError>) -> (Option<StatusCode>, Option<String>) {
    match r {
        Ok(_) => (Some(StatusCode::OK), None),
        Err(e) => (e.status(), e.code().map(str::to_string)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_6_lockout_after_consecutive_failures_same_answer_expiry_and_unlock() {
    let (c, clock) = clocked().await;
    let p = c.admin_project().await;
    let id = c
        .create_user("lou", "Quokka-harbour-19", &[("reader", project_scope(p))])
        .await;
    let wrong = async || c.anon.login(&login("lou", "Not-her-password-1")).await;
    let first = wrong().await.unwrap_err();
    // A success resets the count: four failures, a success, four failures: still open.
    for _ in 0..3 {
        wrong().await.unwrap_err();
    }
    c.anon.login(&login("lou", "Quokka-harbour-19")).await.unwrap();
    for _ in 0..4 {
        wrong().await.unwrap_err();
    }
    c.anon
        .login(&login("lou", "Quokka-harbour-19"))
        .await
        .expect("not locked after 4");
    // Every credential path counts: a wrong current password on a password change too.
    for _ in 0..4 {
        wrong().await.unwrap_err();
    }
    let change = PasswordChange {
        username: "lou".into(),
        domain: None,
        current_password: Sensitive::new("Not-her-password-1"),
        new_password: Sensitive::new("Walrus-lantern-88"),
        totp: None,
    };
    c.anon.change_password(&change).await.unwrap_err();
    // Locked: the right password gets exactly the answer of a wrong one.
    let locked = c.anon.login(&login("lou", "Quokka-harbour-19")).await.unwrap_err();
    assert_eq!(locked.status(), Some(StatusCode::UNAUTHORIZED));
    assert_eq!(
        locked.to_string(),
        first.to_string(),
        "a locked account is indistinguishable"
    );
    let u: User = c.admin.get(&format!("/v1/users/{id}")).await.unwrap();
    assert!(
        u.locked_until.unwrap() > OffsetDateTime::now_utc() + Duration::minutes(29),
        "locked for lockout_duration_s"
    );
    // An administrator unlocks.
    c.admin
        .send::<()>(http::Method::POST, &format!("/v1/users/{id}/unlock"), None)
        .await
        .unwrap();
    c.anon
        .login(&login("lou", "Quokka-harbour-19"))
        .await
        .expect("unlocked");
    // Lock again, then let the lock expire.
    for _ in 0..5 {
        wrong().await.unwrap_err();
    }
    assert!(c.anon.login(&login("lou", "Quokka-harbour-19")).await.is_err());
    clock.advance(Duration::seconds(1801));
    c.anon
        .login(&login("lou", "Quokka-harbour-19"))
        .await
        .expect("lock expired");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_2_admin_roles_need_mfa_codes_work_once_and_recovery_codes() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let (sec, mfa) = c.security_admin().await;
    let info = sec.current_token().await.unwrap();
    assert_eq!(info.scope, TokenScope::Full);
    assert_eq!(info.roles, ["security-admin"]);
    sec.get::<SecurityCompliance>("/v1/security-compliance").await.unwrap();
    // Without the code: mfa_required; with a wrong one: invalid_credentials.
    let e = c.anon.login(&login("secops", "Sentinel-kestrel-44")).await.unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (Some(StatusCode::UNAUTHORIZED), Some("mfa_required"))
    );
    let mut bad = login("secops", "Sentinel-kestrel-44");
    bad.totp = Some(Sensitive::new("000000"));
    assert_eq!(
        c.anon.login(&bad).await.unwrap_err().code(),
        Some("invalid_credentials")
    );
    // A code is accepted once.
    let code = mfa.next_code().await;
    let mut once = login("secops", "Sentinel-kestrel-44");
    once.totp = Some(Sensitive::new(&code));
    c.anon.login(&once).await.expect("fresh code");
    assert_eq!(
        c.anon.login(&once).await.unwrap_err().code(),
        Some("invalid_credentials"),
        "replayed code"
    );
    // Recovery codes stand in for a lost device, once each.
    let codes: RecoveryCodes = sec
        .post("/v1/auth/mfa/recovery-codes", &serde_json::json!({}))
        .await
        .unwrap();
    assert_eq!(codes.codes.len(), 10);
    let mut recovery = login("secops", "Sentinel-kestrel-44");
    recovery.totp = Some(codes.codes[3].clone());
    c.anon.login(&recovery).await.expect("recovery code");
    assert!(c.anon.login(&recovery).await.is_err(), "recovery code used up");
    // Another security admin removes the factor (the system admin is outranked): the next
    // login must enrol again.
    let users: List<User> = c.admin.get("/v1/users").await.unwrap();
    let sec_id = users.items.iter().find(|u| u.name == "secops").unwrap().id;
    assert_eq!(
        c.admin
            .send::<()>(http::Method::DELETE, &format!("/v1/users/{sec_id}/mfa"), None)
            .await
            .unwrap_err()
            .code(),
        Some("outranked")
    );
    c.bootstrap_security_admin()
        .await
        .send::<()>(http::Method::DELETE, &format!("/v1/users/{sec_id}/mfa"), None)
        .await
        .unwrap();
    assert!(sec.current_token().await.is_err(), "sessions ended with the reset");
    let t = c.anon.login(&login("secops", "Sentinel-kestrel-44")).await.unwrap();
    assert_eq!(t.scope, TokenScope::MfaEnrollment);
    let enrolling = c.anon.clone().with_token(t.token);
    assert_eq!(
        enrolling
            .get::<SecurityCompliance>("/v1/security-compliance")
            .await
            .unwrap_err()
            .code(),
        Some("mfa_required")
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_3_accounts_only_work_inside_their_validity_window() {
    let (c, clock) = clocked().await;
    let p = c.admin_project().await;
    let start = OffsetDateTime::now_utc() + Duration::hours(1);
    let end = start + Duration::hours(1);
    let _: User = c
        .admin
        .post(
            "/v1/users",
            &UserCreate {
                name: "contractor".into(),
                password: Some(Sensitive::new("Pelican-ribbon-52")),
                password_change_required: Some(false),
                valid_from: Some(start),
                valid_until: Some(end),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let users: List<User> = c.admin.get("/v1/users").await.unwrap();
    let id = users.items.iter().find(|u| u.name == "contractor").unwrap().id;
    let _: RoleAssignment = c
        .admin
        .post(
            "/v1/role-assignments",
            &RoleAssignmentCreate {
                user: Some(id),
                group: None,
                role: "reader".into(),
                scope: project_scope(p),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        c.anon
            .login(&login("contractor", "Pelican-ribbon-52"))
            .await
            .unwrap_err()
            .code(),
        Some("invalid_credentials")
    );
    clock.advance(Duration::minutes(61));
    let t = c
        .anon
        .login(&login("contractor", "Pelican-ribbon-52"))
        .await
        .expect("inside the window");
    assert!(t.expires_at <= end, "a token never outlives its user's window");
    let session = c.anon.clone().with_token(t.token);
    session.current_token().await.unwrap();
    clock.advance(Duration::minutes(59) + Duration::seconds(5));
    assert_eq!(
        session.current_token().await.unwrap_err().code(),
        Some("unauthenticated")
    );
    assert!(c.anon.login(&login("contractor", "Pelican-ribbon-52")).await.is_err());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_2_4_history_minimum_age_expiry_warning_and_expiry() {
    let (c, clock) = clocked().await;
    let (sec, _) = c.security_admin().await;
    let policy = SecurityCompliance {
        unique_last_password_count: 3,
        minimum_password_age_days: 1,
        password_expires_days: 30,
        password_expiry_warning_days: 14,
        ..Default::default()
    };
    let _: SecurityCompliance = sec
        .request(http::Method::PUT, "/v1/security-compliance", Some(&policy))
        .await
        .unwrap();
    let p = c.admin_project().await;
    c.create_user("rotor", "Heron-basalt-31", &[("reader", project_scope(p))])
        .await;
    let change = async |from: &str, to: &str| {
        c.anon
            .change_password(&PasswordChange {
                username: "rotor".into(),
                domain: None,
                current_password: Sensitive::new(from),
                new_password: Sensitive::new(to),
                totp: None,
            })
            .await
    };
    let rules = |e: rampart_api::ClientError| match e {
        rampart_api::ClientError::Api { body, .. } => body.error.details.unwrap()["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["rule"].as_str().unwrap().to_string())
            .collect::<Vec<_>>(),
        other => panic!("{other}"),
    };
    clock.advance(Duration::days(2));
    change("Heron-basalt-31", "Marten-quarry-64").await.unwrap();
    assert_eq!(
        rules(change("Marten-quarry-64", "Osprey-cobble-27").await.unwrap_err()),
        ["minimum_password_age"]
    );
    clock.advance(Duration::days(2));
    assert_eq!(
        rules(change("Marten-quarry-64", "Heron-basalt-31").await.unwrap_err()),
        ["history"],
        "recent password reused"
    );
    clock.advance(Duration::days(20));
    let t = c.anon.login(&login("rotor", "Marten-quarry-64")).await.unwrap();
    assert!(t.password_expires_at.is_some());
    assert!(t.warnings.iter().any(|w| w.contains("expires")), "{:?}", t.warnings);
    clock.advance(Duration::days(9));
    let e = c.anon.login(&login("rotor", "Marten-quarry-64")).await.unwrap_err();
    assert_eq!(e.code(), Some("password_change_required"), "expired");
    change("Marten-quarry-64", "Osprey-cobble-27")
        .await
        .expect("an expired password can still be changed");
    c.anon.login(&login("rotor", "Osprey-cobble-27")).await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_2_3_shipped_and_operator_deny_lists() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let (sec, _) = c.security_admin().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("company-words.txt");
    std::fs::write(&file, "# banned\nWombat-Lantern-Ossify\n").unwrap();
    let policy = SecurityCompliance {
        password_deny_list_files: vec![file.to_string_lossy().into()],
        ..Default::default()
    };
    let _: SecurityCompliance = sec
        .request(http::Method::PUT, "/v1/security-compliance", Some(&policy))
        .await
        .unwrap();
    let create = async |pw: &str| {
        c.admin
            .post::<_, User>(
                "/v1/users",
                &UserCreate {
                    name: format!("u{}", pw.len()),
                    password: Some(Sensitive::new(pw)),
                    ..Default::default()
                },
            )
            .await
    };
    for pw in ["1qaz2wsx3edc", "Wombat-Lantern-Ossify"] {
        let e = create(pw).await.unwrap_err();
        assert_eq!(e.code(), Some("policy_violation"), "{pw}");
        let body = e.to_string();
        assert!(!body.contains(pw), "the password is never echoed");
    }
    create("Gannet-thistle-90").await.unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_5_source_ranges_per_user_and_trusted_proxies() {
    let c = TestCluster::start(ClusterOptions {
        configure: Box::new(|cfg| cfg.api.trusted_proxies = vec!["127.0.0.1/32".into()]),
        ..Default::default()
    })
    .await;
    let p = c.admin_project().await;
    let id = c
        .create_user("remote", "Bittern-meadow-12", &[("reader", project_scope(p))])
        .await;
    let patch = async |cidrs: &[&str]| {
        c.admin
            .request::<_, User>(
                http::Method::PATCH,
                &format!("/v1/users/{id}"),
                Some(&serde_json::json!({ "allowed_source_cidrs": cidrs })),
            )
            .await
    };
    let (session, _) = c.anon.login_as("remote", "Bittern-meadow-12").await.unwrap();
    patch(&["10.0.0.0/8"]).await.unwrap();
    assert_eq!(
        c.anon
            .login(&login("remote", "Bittern-meadow-12"))
            .await
            .unwrap_err()
            .code(),
        Some("invalid_credentials")
    );
    assert_eq!(
        session.current_token().await.unwrap_err().code(),
        Some("unauthenticated"),
        "live tokens too"
    );
    // Through the trusted proxy at 127.0.0.1, the forwarded client address counts.
    patch(&["198.51.100.0/24"]).await.unwrap();
    let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), None).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let send = |xff: Option<&str>| {
        let mut r = http
            .post(format!("{}/v1/auth/tokens", c.controller.url()))
            .json(&serde_json::json!({"username": "remote", "password": "Bittern-meadow-12"}));
        if let Some(x) = xff {
            r = r.header("x-forwarded-for", x);
        }
        r.send()
    };
    assert_eq!(send(Some("198.51.100.7")).await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(send(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(Some("203.0.113.9")).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_4_application_credentials_are_scoped_and_die_with_their_credential() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let p = c.admin_project().await;
    c.create_user("owner", "Plover-granite-58", &[("member", project_scope(p))])
        .await;
    let (owner, _) = c.anon.login_as("owner", "Plover-granite-58").await.unwrap();
    let denied = owner
        .post::<_, ApplicationCredential>(
            "/v1/application-credentials",
            &ApplicationCredentialCreate {
                name: "ci".into(),
                project: "admin".into(),
                roles: Some(vec!["project-admin".into()]),
                expires_at: None,
                password: None,
                totp: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(denied.status(), Some(StatusCode::FORBIDDEN), "roles one does not hold");
    let cred: ApplicationCredential = owner
        .post(
            "/v1/application-credentials",
            &ApplicationCredentialCreate {
                name: "ci".into(),
                project: "admin".into(),
                roles: Some(vec!["reader".into()]),
                expires_at: None,
                password: None,
                totp: None,
            },
        )
        .await
        .unwrap();
    let secret = cred.secret.clone().expect("secret shown once");
    let listed: List<ApplicationCredential> = owner.get("/v1/application-credentials").await.unwrap();
    assert!(listed.items[0].secret.is_none(), "never shown again");
    let as_cred = |secret: Sensitive| LoginRequest {
        username: String::new(),
        password: None,
        domain: None,
        project: None,
        totp: None,
        application_credential: Some(ApplicationCredentialLogin { id: cred.id, secret }),
    };
    let t = c.anon.login(&as_cred(secret.clone())).await.unwrap();
    assert_eq!(t.roles, ["reader"]);
    assert_eq!(t.project.as_ref().unwrap().id, p);
    let bot = c.anon.clone().with_token(t.token);
    let e = bot
        .post::<_, ApplicationCredential>(
            "/v1/application-credentials",
            &ApplicationCredentialCreate {
                name: "more".into(),
                project: "admin".into(),
                roles: None,
                expires_at: None,
                password: None,
                totp: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.status(),
        Some(StatusCode::FORBIDDEN),
        "a credential cannot mint credentials"
    );
    assert_eq!(
        c.anon
            .login(&as_cred(Sensitive::new("wrong-secret")))
            .await
            .unwrap_err()
            .code(),
        Some("invalid_credentials")
    );
    owner
        .send::<()>(
            http::Method::DELETE,
            &format!("/v1/application-credentials/{}", cred.id),
            None,
        )
        .await
        .unwrap();
    assert!(bot.current_token().await.is_err(), "its tokens died with it");
    assert!(c.anon.login(&as_cred(secret)).await.is_err());
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_2_separation_of_duties_through_the_api() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    // The system admin reads the policy but cannot weaken it.
    c.admin
        .get::<SecurityCompliance>("/v1/security-compliance")
        .await
        .unwrap();
    let e = c
        .admin
        .request::<_, SecurityCompliance>(
            http::Method::PUT,
            "/v1/security-compliance",
            Some(&SecurityCompliance::default()),
        )
        .await;
    assert_eq!(status_of(e).await.0, Some(StatusCode::FORBIDDEN));
    // It may name the first security admin, but not a second one, and never itself.
    let (sec, _) = c.security_admin().await;
    let other = c.create_user("another", "Avocet-drizzle-35", &[]).await;
    let grant = |user, role: &str| RoleAssignmentCreate {
        user: Some(user),
        group: None,
        role: role.into(),
        scope: system_scope(),
    };
    let e = c
        .admin
        .post::<_, RoleAssignment>("/v1/role-assignments", &grant(other, "security-admin"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
    let me = c.admin.current_token().await.unwrap().user.id;
    let e = c
        .admin
        .post::<_, RoleAssignment>("/v1/role-assignments", &grant(me, "auditor"))
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN), "no self-grants");
    // The security admin grants audit roles, changes the policy, but runs nothing else.
    let _: RoleAssignment = sec
        .post("/v1/role-assignments", &grant(other, "auditor"))
        .await
        .unwrap();
    let _: SecurityCompliance = sec
        .request(
            http::Method::PUT,
            "/v1/security-compliance",
            Some(&SecurityCompliance::default()),
        )
        .await
        .unwrap();
    let e = sec
        .post::<_, rampart_api::Domain>(
            "/v1/domains",
            &rampart_api::DomainCreate {
                name: "x".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
    let e = sec
        .post::<_, User>(
            "/v1/users",
            &UserCreate {
                name: "y".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::FORBIDDEN));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_1_domain_admins_stay_in_their_domain() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let acme: rampart_api::Domain = c
        .admin
        .post(
            "/v1/domains",
            &rampart_api::DomainCreate {
                name: "acme".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let boss: User = c
        .admin
        .post(
            "/v1/users",
            &UserCreate {
                name: "boss".into(),
                domain: Some("acme".into()),
                password: Some(Sensitive::new("Curlew-harvest-77")),
                password_change_required: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let _: RoleAssignment = c
        .admin
        .post(
            "/v1/role-assignments",
            &RoleAssignmentCreate {
                user: Some(boss.id),
                group: None,
                role: "domain-admin".into(),
                scope: ScopeRef {
                    domain: Some(acme.id),
                    ..Default::default()
                },
            },
        )
        .await
        .unwrap();
    let boss_mfa = MfaUser::enrol_in(&c.anon, "boss", "Curlew-harvest-77", Some("acme"))
        .await
        .unwrap();
    let b = boss_mfa.login(&c.anon).await.unwrap();
    let p: rampart_api::Project = b
        .post(
            "/v1/projects",
            &rampart_api::ProjectCreate {
                name: "shop".into(),
                domain: Some("acme".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(p.domain_id, acme.id);
    let e = b
        .post::<_, rampart_api::Project>(
            "/v1/projects",
            &rampart_api::ProjectCreate {
                name: "x".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(
        e.status(),
        Some(StatusCode::NOT_FOUND),
        "the default domain is invisible to it"
    );
    let admin_id = c.admin.current_token().await.unwrap().user.id;
    assert_eq!(
        b.get::<User>(&format!("/v1/users/{admin_id}"))
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::NOT_FOUND)
    );
    let users: List<User> = b.get("/v1/users").await.unwrap();
    assert!(
        users.items.iter().all(|u| u.domain_id == acme.id),
        "only its domain's users"
    );
    let projects: List<rampart_api::Project> = b.get("/v1/projects").await.unwrap();
    assert!(projects.items.iter().all(|p| p.domain_id == acme.id));
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_4_role_removal_and_disabling_end_sessions_at_once() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let p = c.admin_project().await;
    let id = c
        .create_user("temp", "Dunlin-marble-40", &[("reader", project_scope(p))])
        .await;
    let (s, _) = c.anon.login_as("temp", "Dunlin-marble-40").await.unwrap();
    let assignments: List<RoleAssignment> = c.admin.get(&format!("/v1/role-assignments?user={id}")).await.unwrap();
    assert_eq!(assignments.items.len(), 1);
    c.admin
        .send::<()>(
            http::Method::DELETE,
            &format!("/v1/role-assignments/{}", assignments.items[0].id),
            None,
        )
        .await
        .unwrap();
    assert_eq!(s.current_token().await.unwrap_err().code(), Some("unauthenticated"));
    let _: RoleAssignment = c
        .admin
        .post(
            "/v1/role-assignments",
            &RoleAssignmentCreate {
                user: Some(id),
                group: None,
                role: "reader".into(),
                scope: project_scope(p),
            },
        )
        .await
        .unwrap();
    let (s, _) = c.anon.login_as("temp", "Dunlin-marble-40").await.unwrap();
    let _: User = c
        .admin
        .request(
            http::Method::PATCH,
            &format!("/v1/users/{id}"),
            Some(&serde_json::json!({"enabled": false})),
        )
        .await
        .unwrap();
    assert!(s.current_token().await.is_err());
    assert_eq!(
        c.anon
            .login(&login("temp", "Dunlin-marble-40"))
            .await
            .unwrap_err()
            .code(),
        Some("invalid_credentials")
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_1_1_groups_and_custom_roles_grant_what_they_bundle() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let p = c.admin_project().await;
    let role: rampart_api::Role = c
        .admin
        .post(
            "/v1/roles",
            &rampart_api::RoleCreate {
                name: "ops".into(),
                description: None,
                // Key roles come from key admins only, so the system admin bundles others.
                implies: vec!["member".into(), "reader".into()],
            },
        )
        .await
        .unwrap();
    assert!(!role.builtin);
    let e = c
        .admin
        .post::<_, rampart_api::Role>(
            "/v1/roles",
            &rampart_api::RoleCreate {
                name: "boss".into(),
                description: None,
                implies: vec!["system-admin".into()],
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some("validation_failed"), "bundles cannot carry system roles");
    let g: rampart_api::Group = c
        .admin
        .post(
            "/v1/groups",
            &rampart_api::GroupCreate {
                name: "team".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let id = c.create_user("dev", "Sandpiper-ledger-66", &[]).await;
    c.admin
        .send::<()>(http::Method::PUT, &format!("/v1/groups/{}/users/{id}", g.id), None)
        .await
        .unwrap();
    let _: RoleAssignment = c
        .admin
        .post(
            "/v1/role-assignments",
            &RoleAssignmentCreate {
                user: None,
                group: Some(g.id),
                role: "ops".into(),
                scope: project_scope(p),
            },
        )
        .await
        .unwrap();
    let (_, t) = c.anon.login_as("dev", "Sandpiper-ledger-66").await.unwrap();
    assert_eq!(t.roles, ["member", "reader"]);
    c.admin
        .send::<()>(http::Method::DELETE, &format!("/v1/groups/{}/users/{id}", g.id), None)
        .await
        .unwrap();
    let (_, t) = c.anon.login_as("dev", "Sandpiper-ledger-66").await.unwrap();
    assert!(t.roles.is_empty());
    let e = c
        .admin
        .send::<()>(http::Method::DELETE, "/v1/roles/ops", None)
        .await
        .unwrap_err();
    assert_eq!(e.status(), Some(StatusCode::CONFLICT), "still assigned to the group");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_3_3_cookie_sessions_need_same_origin_and_csrf_token() {
    let c = TestCluster::start(ClusterOptions::default()).await;
    let p = c.admin_project().await;
    c.create_user("browser", "Plover-saffron-31", &[("reader", project_scope(p))])
        .await;
    let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), None).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let base = c.controller.url().trim_end_matches('/').to_string();
    let r = http
        .post(format!("{base}/v1/auth/sessions"))
        .json(&serde_json::json!({"username": "browser", "password": "Plover-saffron-31"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let set_cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    for attr in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(set_cookie.contains(attr), "{attr} missing from the session cookie");
    }
    let session_token = set_cookie
        .split(';')
        .next()
        .unwrap()
        .strip_prefix("rampart_session=")
        .unwrap()
        .to_string();
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body.get("token").is_none(), "the token stays out of reach of scripts");
    assert!(!body.to_string().contains(&session_token));
    let csrf = body["csrf_token"].as_str().unwrap().to_string();
    let cookie = format!("rampart_session={session_token}");

    let current = async || {
        http.get(format!("{base}/v1/auth/tokens/current"))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap()
            .status()
    };
    assert_eq!(current().await, StatusCode::OK, "safe calls work with the cookie alone");
    let logout = async |origin: Option<&str>, site: Option<&str>, token: Option<&str>| {
        let mut r = http
            .delete(format!("{base}/v1/auth/tokens/current"))
            .header("cookie", &cookie);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(s) = site {
            r = r.header("sec-fetch-site", s);
        }
        if let Some(t) = token {
            r = r.header("x-csrf-token", t);
        }
        r.send().await.unwrap()
    };
    let refused = [
        (Some(base.as_str()), None, None),
        (Some(base.as_str()), None, Some("0000")),
        (Some("https://evil.example"), None, Some(csrf.as_str())),
        (None, None, Some(csrf.as_str())),
        (Some(base.as_str()), Some("cross-site"), Some(csrf.as_str())),
    ];
    for (origin, site, token) in refused {
        let r = logout(origin, site, token).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{origin:?} {site:?} {token:?}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "csrf_check_failed");
        assert_eq!(current().await, StatusCode::OK, "a refused call changes nothing");
    }
    let r = logout(Some(&base), Some("same-origin"), Some(&csrf)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers()["set-cookie"].to_str().unwrap().contains("Max-Age=0"));
    assert_eq!(current().await, StatusCode::UNAUTHORIZED, "logged out");

    let r = http
        .post(format!("{base}/v1/auth/sessions"))
        .json(&serde_json::json!({"username": "browser",
            "application_credential": {"id": uuid::Uuid::new_v4(), "secret": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    c.shutdown().await;
}
