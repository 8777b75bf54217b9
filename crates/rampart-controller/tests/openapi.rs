//! The OpenAPI documents are generated from the routes; the checked-in copies under
//! `openapi/` are what clients build against, so any drift fails here.
//! Regenerate with: `REGENERATE=1 cargo nextest run --workspace -E 'binary(openapi)'`.

use std::path::PathBuf;

use rampart_controller::routes::{agent_openapi, public_openapi};

fn check(doc: utoipa::openapi::OpenApi, file: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(file);
    let generated = serde_json::to_string_pretty(&doc).unwrap() + "\n";
    rampart_common::testing::golden(&path, &generated);
}

#[test]
fn openapi_documents_match_the_checked_in_files() {
    check(public_openapi(), "openapi/rampart-v1.json");
    check(agent_openapi(), "openapi/rampart-agent-v1.json");
}

#[test]
fn the_contract_paths_of_api_md_are_served() {
    let doc = public_openapi();
    let paths: Vec<&String> = doc.paths.paths.keys().collect();
    for p in [
        "/v1/health",
        "/v1/auth/tokens",
        "/v1/auth/password",
        "/v1/auth/tokens/current",
        "/v1/nodes",
        "/v1/nodes/join-tokens",
    ] {
        assert!(paths.iter().any(|x| x.as_str() == p), "{p} missing from {paths:?}");
    }
    let agent = agent_openapi();
    for p in ["/agent/v1/join", "/agent/v1/config", "/agent/v1/status"] {
        assert!(agent.paths.paths.contains_key(p), "{p}");
    }
}

#[test]
fn every_authenticated_operation_declares_the_bearer_scheme_and_a_401() {
    let doc = public_openapi();
    let open = [
        "/v1/health",
        "/readyz",
        "/v1/ca/certificate",
        // Relying parties fetch the CRL without an account.
        "/v1/ca/crl",
        "/v1/auth/tokens",
        "/v1/auth/password",
    ];
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("get", &item.get),
            ("post", &item.post),
            ("put", &item.put),
            ("patch", &item.patch),
            ("delete", &item.delete),
        ] {
            let Some(op) = op else { continue };
            if open.contains(&path.as_str()) && !(path == "/v1/auth/tokens" && method != "post") {
                continue;
            }
            // Opening a browser session is a login: it takes credentials, not a token.
            if path == "/v1/auth/sessions" && method == "post" {
                continue;
            }
            assert!(
                op.security.as_ref().is_some_and(|s| !s.is_empty()),
                "{method} {path} has no security requirement"
            );
            assert!(
                op.responses.responses.contains_key("401"),
                "{method} {path} documents no 401"
            );
        }
    }
}
