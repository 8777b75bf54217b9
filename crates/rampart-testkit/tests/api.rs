//! The API contract of the foundation: login and passwords, the error format, request ids,
//! pagination, security headers.

use http::{Method, StatusCode};
use rampart_api::{JoinTokenCreate, LoginRequest, PasswordChange};
use rampart_common::Sensitive;
#[allow(unused_imports)]
use rampart_testkit as _;
use rampart_testkit::{ADMIN_PASSWORD, ClusterOptions, TestCluster};

async fn cluster() -> TestCluster {
    TestCluster::start(ClusterOptions::default()).await
}

/// A raw request to the cluster with the admin token (or none), returning status, headers, body.
async fn raw(
    c: &TestCluster,
    method: Method,
    path: &str,
    token: bool,
    body: Option<(&str, &str)>,
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), None).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let mut req = http.request(method, format!("{}{}", c.controller.url(), path));
    if token {
        req = req.bearer_auth(c.admin.token().unwrap().expose());
    }
    if let Some((content_type, data)) = body {
        req = req.header("content-type", content_type).body(data.to_string());
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    (status, headers, json)
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_1_2_5_bootstrap_password_must_be_changed_at_first_use() {
    // A fresh controller, before anyone logged in.
    let dir = tempfile::tempdir().unwrap();
    let mut config = TestCluster::test_config();
    config.database.url = format!("sqlite://{}", dir.path().join("db.sqlite").display());
    // The restart below uses the same HSM token (the CA key may be in it).
    let restart_config = config.clone();
    let controller = rampart_controller::Controller::start(rampart_controller::ControllerOptions {
        config,
        data_dir: dir.path().to_path_buf(),
        clock: rampart_common::time::system_clock(),
    })
    .await
    .unwrap();
    let file = dir.path().join("bootstrap-admin-password");
    assert_eq!(rampart_common::fsutil::mode_of(&file).unwrap(), 0o600);
    let bootstrap = std::fs::read_to_string(&file).unwrap().trim().to_string();
    assert!(bootstrap.len() >= 20, "a long random password");
    let anon = rampart_api::Client::with_ca(&controller.url(), controller.ca_pem().as_bytes()).unwrap();
    let err = anon.login(&login("admin", &bootstrap)).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(err.code(), Some("password_change_required"));

    // A weak new password: 422 naming each rule, never echoing it.
    let weak = "adminadmin";
    let err = anon
        .change_password(&PasswordChange {
            username: "admin".into(),
            domain: None,
            current_password: Sensitive::new(&bootstrap),
            new_password: Sensitive::new(weak),
            totp: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("policy_violation"));
    let rampart_api::ClientError::Api { body, .. } = &err else {
        panic!()
    };
    let rules: Vec<&str> = body.error.details.as_ref().unwrap()["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect();
    assert_eq!(
        rules,
        ["min_length", "min_char_classes", "not_username", "min_strength"]
    );
    assert!(!serde_json::to_string(body).unwrap().contains(weak));

    anon.change_password(&PasswordChange {
        username: "admin".into(),
        domain: None,
        current_password: Sensitive::new(&bootstrap),
        new_password: Sensitive::new("A-much-better-passphrase"),
        totp: None,
    })
    .await
    .unwrap();
    assert!(!file.exists(), "the spent one-time password is removed");
    let err = anon.login(&login("admin", &bootstrap)).await.unwrap_err();
    assert_eq!(err.code(), Some("invalid_credentials"));
    // The admin's role needs a second factor: the first token can only enrol one.
    let (client, token) = anon.login_as("admin", "A-much-better-passphrase").await.unwrap();
    assert_eq!(token.scope, rampart_api::TokenScope::MfaEnrollment);
    assert_eq!(client.nodes().await.unwrap_err().code(), Some("mfa_required"));
    assert_eq!(token.user.name, "admin");
    assert_eq!(token.user.domain, "default");
    assert!(token.roles.contains(&"system-admin".to_string()));
    client.current_token().await.unwrap();
    controller.shutdown().await;

    // A restart does not bootstrap again.
    let config = restart_config;
    let controller = rampart_controller::Controller::start(rampart_controller::ControllerOptions {
        config,
        data_dir: dir.path().to_path_buf(),
        clock: rampart_common::time::system_clock(),
    })
    .await
    .unwrap();
    assert!(!file.exists());
    controller.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_6_failed_logins_look_the_same_whatever_the_reason() {
    let c = cluster().await;
    let wrong_password = c.anon.login(&login("admin", "Not-the-password-1")).await.unwrap_err();
    let unknown_user = c.anon.login(&login("nobody", "Not-the-password-1")).await.unwrap_err();
    let mut unknown_domain = login("admin", ADMIN_PASSWORD);
    unknown_domain.domain = Some("elsewhere".into());
    let unknown_domain = c.anon.login(&unknown_domain).await.unwrap_err();
    for e in [&wrong_password, &unknown_user, &unknown_domain] {
        assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(e.to_string(), wrong_password.to_string(), "identical answers");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_4_tokens_die_on_logout_and_on_password_change() {
    let c = cluster().await;
    let project = c.admin_project().await;
    c.create_user(
        "operator",
        "Ledger-wombat-73",
        &[(
            "reader",
            rampart_api::ScopeRef {
                project: Some(project),
                ..Default::default()
            },
        )],
    )
    .await;
    let (a, _) = c.anon.login_as("operator", "Ledger-wombat-73").await.unwrap();
    let (b, _) = c.anon.login_as("operator", "Ledger-wombat-73").await.unwrap();
    let info = a.current_token().await.unwrap();
    assert_eq!(info.user.name, "operator");
    assert!(info.expires_at > time::OffsetDateTime::now_utc() + time::Duration::minutes(55));
    a.logout().await.unwrap();
    assert_eq!(a.current_token().await.unwrap_err().code(), Some("unauthenticated"));
    assert_eq!(
        a.current_token().await.unwrap_err().status(),
        Some(StatusCode::UNAUTHORIZED)
    );
    b.current_token().await.unwrap();
    c.anon
        .change_password(&PasswordChange {
            username: "operator".into(),
            domain: None,
            current_password: Sensitive::new("Ledger-wombat-73"),
            new_password: Sensitive::new("Another-good-passphrase"),
            totp: None,
        })
        .await
        .unwrap();
    assert_eq!(
        b.current_token().await.unwrap_err().code(),
        Some("unauthenticated"),
        "every token revoked"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_2_4_every_api_call_needs_a_valid_token() {
    let c = cluster().await;
    let bad = c.anon.clone().with_token(Sensitive::new("rpt_not-a-real-token"));
    for client in [&c.anon, &bad] {
        let e = client.nodes().await.unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(e.code(), Some("unauthenticated"));
        let e = client.create_join_token(&JoinTokenCreate::default()).await.unwrap_err();
        assert_eq!(e.status(), Some(StatusCode::UNAUTHORIZED));
    }
    // The open routes.
    c.anon.health().await.unwrap();
    let (status, _, doc) = raw(&c, Method::GET, "/v1/openapi.json", false, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(doc["info"]["title"], "Rampart API");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_3_1_malformed_requests_get_clear_errors() {
    let c = cluster().await;
    let json = "application/json";
    type Case<'a> = (Method, &'a str, Option<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        (
            Method::POST,
            "/v1/nodes/join-tokens",
            Some((json, "{\"ttl_s\": 120, \"colour\": \"red\"}")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/nodes/join-tokens",
            Some((json, "{not json")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/nodes/join-tokens",
            Some(("text/plain", "{}")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/nodes/join-tokens",
            Some((json, "{\"ttl_s\": \"soon\"}")),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/nodes/join-tokens",
            Some((json, "{\"ttl_s\": 5}")),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            Method::POST,
            "/v1/nodes/join-tokens",
            Some((json, "{\"node_name\": \"Bad Name;\"}")),
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            Method::GET,
            "/v1/nodes?limit=0",
            None,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            Method::GET,
            "/v1/nodes?limit=1001",
            None,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            Method::GET,
            "/v1/nodes?cursor=garbage",
            None,
            StatusCode::BAD_REQUEST,
            "validation_failed",
        ),
        (
            Method::GET,
            "/v1/nodes?sort=name",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/nodes/not-a-uuid",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/nodes/00000000-0000-4000-8000-000000000000",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/no-such-thing",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::PATCH,
            "/v1/health",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got, headers, json) = raw(&c, method.clone(), path, true, body).await;
        assert_eq!(got, status, "{method} {path} {body:?}: {json}");
        assert_eq!(json["error"]["code"], code, "{method} {path}: {json}");
        assert!(!json["error"]["message"].as_str().unwrap().is_empty());
        assert!(headers.contains_key("x-request-id"));
    }
    // A wrongly typed password is not echoed back.
    let (status, _, json) = raw(
        &c,
        Method::POST,
        "/v1/auth/tokens",
        false,
        Some((json, "{\"username\":\"admin\",\"password\":98765432123}")),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!json.to_string().contains("98765432123"), "{json}");
    // Too large a body.
    let big = format!("{{\"node_name\": \"{}\"}}", "a".repeat(2 << 20));
    let (status, _, json) = raw(
        &c,
        Method::POST,
        "/v1/nodes/join-tokens",
        true,
        Some(("application/json", &big)),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{json}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_13_4_1_every_response_has_our_own_request_id() {
    let c = cluster().await;
    let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), None).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let mut seen = std::collections::HashSet::new();
    for path in ["/v1/health", "/v1/nodes", "/v1/nope"] {
        let resp = http
            .get(format!("{}{}", c.controller.url(), path))
            .header("x-request-id", "forged\"id")
            .send()
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_string();
        assert_ne!(id, "forged\"id");
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
        assert!(seen.insert(id));
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_3_4_security_headers_on_every_response() {
    let c = cluster().await;
    for (path, token) in [
        ("/v1/health", false),
        ("/v1/nodes", true),
        ("/v1/nodes", false),
        ("/v1/x", false),
    ] {
        let (_, headers, _) = raw(&c, Method::GET, path, token, None).await;
        assert_eq!(
            headers["strict-transport-security"], "max-age=31536000; includeSubDomains",
            "{path}"
        );
        assert_eq!(headers["cache-control"], "no-store");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["x-frame-options"], "DENY");
        assert!(
            headers["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("default-src 'none'")
        );
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_with_limit_and_cursor() {
    let mut c = cluster().await;
    for name in ["n-c", "n-a", "n-e", "n-b", "n-d"] {
        c.add_agent(name).await;
    }
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(cur) => format!("/v1/nodes?limit=2&cursor={cur}"),
            None => "/v1/nodes?limit=2".to_string(),
        };
        let page: rampart_api::List<rampart_api::Node> = c.admin.get(&path).await.unwrap();
        assert!(page.items.len() <= 2);
        names.extend(page.items.into_iter().map(|n| n.name));
        pages += 1;
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    assert_eq!(names, ["n-a", "n-b", "n-c", "n-d", "n-e"]);
    assert_eq!(pages, 3);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_api_requires_a_client_certificate() {
    let c = cluster().await;
    for (method, path) in [
        (Method::GET, "/agent/v1/config?after=0"),
        (Method::PUT, "/agent/v1/status"),
    ] {
        let body = (method == Method::PUT).then_some(("application/json", "{}"));
        let (status, _, json) = raw(&c, method, path, true, body).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(json["error"]["code"], "client_certificate_required");
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_system_admins_manage_nodes() {
    let c = cluster().await;
    // An operator without system roles: a user of the admin project made directly in the DB
    // (the identity API comes with its own capability).
    let state = &c.controller.state;
    let mut conn = state.db.conn().await.unwrap();
    let domain = rampart_db::identity::find_domain(&mut conn, "default")
        .await
        .unwrap()
        .unwrap();
    let hash = rampart_iam::password::hash("Member-passphrase-1").unwrap();
    let user = rampart_db::identity::insert_user(
        &mut conn,
        rampart_db::identity::NewUser {
            domain_id: domain.id,
            name: "alice",
            password_hash: Some(&hash),
            password_change_required: false,
        },
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    let project = rampart_db::identity::find_project(&mut conn, domain.id, "admin")
        .await
        .unwrap()
        .unwrap();
    rampart_db::identity::assign_role(
        &mut conn,
        user.id,
        "member",
        rampart_db::identity::Scope::Project(project.id),
        time::OffsetDateTime::now_utc(),
    )
    .await
    .unwrap();
    drop(conn);
    let (alice, token) = c.anon.login_as("alice", "Member-passphrase-1").await.unwrap();
    assert_eq!(token.roles, ["member"], "an unscoped token carries the user's roles");
    let mut scoped = login("alice", "Member-passphrase-1");
    scoped.project = Some("admin".into());
    assert_eq!(c.anon.login(&scoped).await.unwrap().roles, ["member"]);
    scoped.project = Some("other".into());
    assert_eq!(
        c.anon.login(&scoped).await.unwrap_err().status(),
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(alice.nodes().await.unwrap_err().status(), Some(StatusCode::FORBIDDEN));
    assert_eq!(
        alice
            .create_join_token(&JoinTokenCreate::default())
            .await
            .unwrap_err()
            .status(),
        Some(StatusCode::FORBIDDEN)
    );
    c.shutdown().await;
}

/// A browser session (cookie and CSRF token) of a new user who may read the admin's project.
async fn browser_session(c: &TestCluster) -> (String, String) {
    let p = c.admin_project().await;
    let scope = rampart_api::ScopeRef {
        project: Some(p),
        ..Default::default()
    };
    c.create_user("browser", "Plover-saffron-31", &[("reader", scope)])
        .await;
    let (status, headers, body) = raw(
        c,
        Method::POST,
        "/v1/auth/sessions",
        false,
        Some((
            "application/json",
            r#"{"username":"browser","password":"Plover-saffron-31"}"#,
        )),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let cookie = headers["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (cookie, body["csrf_token"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_3_3_csrf_origin_is_the_api_origin_not_the_request_host() {
    let c = cluster().await;
    let (cookie, csrf) = browser_session(&c).await;
    let port = c.controller.addrs[0].port();
    let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), None).unwrap();
    // HTTP/1.1, where the Host header is what the client says it is.
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .http1_only()
        .build()
        .unwrap();
    let logout = async |origin: &str, host: Option<&str>| {
        let mut r = http
            .delete(format!("{}/v1/auth/tokens/current", c.controller.url()))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .header("origin", origin);
        if let Some(h) = host {
            r = r.header("host", h);
        }
        let r = r.send().await.unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap_or_default();
        (status, body)
    };
    // DNS rebinding: the attacker's name resolves to the API, so the page's Origin and the
    // request's Host both carry it and agree with each other. Refused: it is not the API's.
    let rebound = format!("rebound.attacker.test:{port}");
    let (status, body) = logout(&format!("https://{rebound}"), Some(&rebound)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "csrf_check_failed", "{body}");
    // The API's own origins (the certificate's names on its port) are accepted, whatever the
    // Host header.
    let (status, body) = logout(&format!("https://localhost:{port}"), Some(&rebound)).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_3_3_configured_api_origins_replace_the_defaults() {
    let c = TestCluster::start(ClusterOptions {
        configure: Box::new(|config| config.api.origins = vec!["https://Cloud.Example.test".into()]),
        ..Default::default()
    })
    .await;
    let (cookie, csrf) = browser_session(&c).await;
    let logout = async |origin: &str| {
        let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), None).unwrap();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .build()
            .unwrap();
        http.delete(format!("{}/v1/auth/tokens/current", c.controller.url()))
            .header("cookie", &cookie)
            .header("x-csrf-token", &csrf)
            .header("origin", origin)
            .send()
            .await
            .unwrap()
            .status()
    };
    // The API's own address is no longer an origin once the operator names them.
    assert_eq!(logout(&c.controller.url()).await, StatusCode::FORBIDDEN);
    assert_eq!(logout("https://cloud.example.test").await, StatusCode::NO_CONTENT);
    c.shutdown().await;
}

fn clause<'a>(
    r: &'a rampart_api::conformance::ConformanceReport,
    id: &str,
) -> &'a rampart_api::conformance::ClauseConformance {
    r.clauses
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("clause {id} in the report"))
}

/// `GET /v1/conformance` probes the running cloud: the transport probes speak TLS 1.1, weak
/// suites and plain HTTP to the controller's own listener, the others read the policy, the
/// stored hashes, the audit chain and the HSM. A probe fails when its mechanism is absent in
/// this very cloud: forwarding is off here (no remote log server), and a data directory opened
/// to other users fails the file-permission probe until it is private again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_15_3_live_conformance_probes_the_running_cloud() {
    use std::os::unix::fs::PermissionsExt;
    let c = cluster().await;
    let security = c.bootstrap_security_admin().await;
    let report: rampart_api::conformance::ConformanceReport = security.get("/v1/conformance").await.expect("report");
    assert!(report.clauses.len() >= 80, "{} clauses", report.clauses.len());
    assert!(report.probed >= 20, "{} probed", report.probed);
    for id in [
        "9.3-4", "9.3-2", "9.2-2", "9.2-3", "13.2-6", "13.2-2", "13.4-1", "13.4-6", "9.1-1e",
    ] {
        let cl = clause(&report, id);
        assert_eq!(cl.status, "pass", "{cl:?}");
        assert!(cl.probe && !cl.tests.is_empty(), "{cl:?}");
    }
    let tls = clause(&report, "9.3-4");
    assert!(
        tls.evidence.contains("TLS 1.1 ClientHello got fatal alert"),
        "{}",
        tls.evidence
    );
    if c.has_hsm() {
        assert_eq!(
            clause(&report, "13.3-9").status,
            "pass",
            "{:?}",
            clause(&report, "13.3-9")
        );
    }
    let fwd = clause(&report, "13.4-5");
    assert_eq!(fwd.status, "fail", "{fwd:?}");
    assert!(fwd.evidence.contains("forwarding is off"), "{}", fwd.evidence);
    assert_eq!(clause(&report, "9.1-3").status, "not_probed");
    assert_eq!(
        report.failed,
        report.clauses.iter().filter(|c| c.status == "fail").count() as u32
    );

    let dir = c.data_dir.path();
    let before = std::fs::metadata(dir).unwrap().permissions().mode();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opened: rampart_api::conformance::ConformanceReport = security.get("/v1/conformance").await.expect("report");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(before)).unwrap();
    let cl = clause(&opened, "9.1-1e");
    assert_eq!(cl.status, "fail", "{cl:?}");
    assert!(cl.evidence.contains("0755"), "{}", cl.evidence);

    let anon_status = match c.anon.get::<serde_json::Value>("/v1/conformance").await {
        Ok(_) => 200,
        Err(e) => e.status().map(|s| s.as_u16()).unwrap_or(0),
    };
    assert_eq!(anon_status, 401);
}
