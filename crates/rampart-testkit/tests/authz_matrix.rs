//! The authorization matrix (spec 9.3-5, 13.1.1-1, 13.2-4), generated from the OpenAPI
//! document: every operation is called with no token, a malformed token, an expired token,
//! and by a holder of each project role on ANOTHER project. Nothing may answer 2xx except
//! operations on the caller's own account and the role catalogue; lists may answer 200 but must
//! not show the other project's objects. The result is checked in as a golden file
//! (`tests/golden/authz-matrix.txt`); regenerate it with `REGENERATE=1` after a deliberate
//! change and review the diff.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::Method;
use rampart_api::{
    ApplicationCredential, ApplicationCredentialCreate, Client, Group, GroupCreate, List, Project, ProjectCreate, Role,
    RoleAssignment, RoleCreate, ScopeRef,
};
use rampart_common::time::ManualClock;
use rampart_testkit::{ClusterOptions, TestCluster};
use time::{Duration, OffsetDateTime};

const ROLES: &[&str] = &["project-admin", "member", "reader", "key-admin", "key-user"];

/// Operations on the caller's own account: any authenticated caller may use them.
fn self_service(method: &Method, path: &str) -> bool {
    path.starts_with("/v1/auth/")
        || (path == "/v1/application-credentials" && (method == Method::GET || method == Method::POST))
}

/// Readable by every authenticated caller: the catalogue of roles.
fn catalogue(method: &Method, path: &str) -> bool {
    method == Method::GET && path.starts_with("/v1/roles")
}

struct Ids {
    other_project: uuid::Uuid,
    admin_user: uuid::Uuid,
    default_domain: uuid::Uuid,
    group: uuid::Uuid,
    assignment: uuid::Uuid,
    credential: uuid::Uuid,
}

fn fill(path: &str, ids: &Ids) -> String {
    let id = if path.starts_with("/v1/projects/{id}") {
        ids.other_project.to_string()
    } else if path.starts_with("/v1/users/{id}") {
        ids.admin_user.to_string()
    } else if path.starts_with("/v1/domains/{id}") {
        ids.default_domain.to_string()
    } else if path.starts_with("/v1/groups/{id}") {
        ids.group.to_string()
    } else if path.starts_with("/v1/roles/{id}") {
        "ops".to_string()
    } else if path.starts_with("/v1/role-assignments/{id}") {
        ids.assignment.to_string()
    } else if path.starts_with("/v1/application-credentials/{id}") {
        ids.credential.to_string()
    } else {
        uuid::Uuid::new_v4().to_string()
    };
    let url = path
        .replace("{id}", &id)
        .replace("{rule}", &uuid::Uuid::new_v4().to_string())
        .replace("{p}", &ids.other_project.to_string())
        .replace("{project}", &ids.other_project.to_string())
        .replace("{action}", "stop")
        .replace("{volume}", &uuid::Uuid::new_v4().to_string())
        .replace("{name}", "intruder")
        .replace("{user}", &ids.admin_user.to_string());
    if path.ends_with("/reachability") {
        // A well-formed question, so only authorization can refuse it.
        let (a, b) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
        return format!("{url}?from={a}&to={b}&protocol=tcp&port=80");
    }
    url
}

/// A body that would be valid for a caller with the right roles, aimed at the other project.
fn body(method: &Method, path: &str, ids: &Ids) -> Option<serde_json::Value> {
    if method == Method::GET || method == Method::DELETE {
        return None;
    }
    Some(match path {
        "/v1/domains" => serde_json::json!({"name": "intruder"}),
        "/v1/projects" => serde_json::json!({"name": "intruder"}),
        "/v1/users" => serde_json::json!({"name": "intruder"}),
        "/v1/groups" => serde_json::json!({"name": "intruder"}),
        "/v1/roles" => serde_json::json!({"name": "intruder", "implies": ["reader"]}),
        "/v1/role-assignments" => {
            serde_json::json!({"user": ids.admin_user, "role": "reader", "scope": {"project": ids.other_project}})
        }
        "/v1/users/{id}/reset-password" => serde_json::json!({"password": "Totally-new-pass-99"}),
        "/v1/security-compliance" => serde_json::to_value(rampart_api::SecurityCompliance::default()).unwrap(),
        "/v1/application-credentials" => serde_json::json!({"name": "x", "project": "other"}),
        "/v1/audit/retention" => {
            serde_json::json!({"operation_days": 180, "run_days": 30, "blackbox_days": 90, "security_days": 365})
        }
        "/v1/signing-keys" => serde_json::json!({
            "name": "intruder", "public_key": "ed25519:11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=",
            "project": ids.other_project,
        }),
        "/v1/flavors" => serde_json::json!({"name": "intruder", "vcpus": 1, "memory_mib": 256, "root_disk_gib": 1}),
        "/v1/projects/{project}/compute-settings" => serde_json::json!({"image_signature_policy": "off"}),
        "/v1/projects/{project}/images" => serde_json::json!({"name": "intruder", "disk_format": "raw"}),
        "/v1/projects/{project}/instances" => serde_json::json!({"name": "intruder", "image": "x", "flavor": "x"}),
        "/v1/projects/{project}/alarms" => serde_json::json!({
            "name": "intruder", "instance": uuid::Uuid::new_v4(), "metric": "cpu_percent", "comparison": ">",
            "threshold": 90.0, "periods": 3, "datapoints": 2, "period_s": 60,
        }),
        "/v1/projects/{p}/vpcs" => serde_json::json!({"name": "intruder", "cidr": "10.0.0.0/16"}),
        "/v1/projects/{p}/subnets" => {
            serde_json::json!({"vpc": uuid::Uuid::new_v4(), "name": "intruder", "cidr": "10.0.1.0/24"})
        }
        "/v1/projects/{p}/security-groups" => serde_json::json!({"name": "intruder"}),
        "/v1/projects/{p}/security-groups/{id}/rules" => serde_json::json!(
            {"direction": "ingress", "protocol": "tcp", "port_min": 22, "port_max": 22, "remote_cidr": "0.0.0.0/0"}
        ),
        "/v1/projects/{p}/segmentation-policies" => serde_json::json!(
            {"name": "intruder", "from": {"role": "a"}, "to": {"role": "b"}, "protocol": "tcp", "ports": [22], "action": "allow"}
        ),
        "/v1/projects/{p}/ports" => serde_json::json!({"subnet": uuid::Uuid::new_v4()}),
        "/v1/projects/{p}/ports/{id}/binding" => serde_json::json!(
            {"node": uuid::Uuid::new_v4(), "device": {"kind": "veth", "peer_netns": "x", "peer_name": "eth0"}}
        ),
        "/v1/projects/{p}/keys" => serde_json::json!({"name": "intruder"}),
        "/v1/projects/{p}/keys/{id}/encrypt" => serde_json::json!({"plaintext": "aW50cnVkZXI="}),
        "/v1/projects/{p}/keys/{id}/decrypt" | "/v1/projects/{p}/keys/{id}/re-encrypt" => {
            serde_json::json!({"ciphertext": "aW50cnVkZXI="})
        }
        "/v1/projects/{p}/keys/{id}/schedule-deletion" => serde_json::json!({"pending_days": 7}),
        "/v1/certificates" => serde_json::json!({"project": ids.other_project, "csr": "intruder"}),
        "/v1/certificates/import" => serde_json::json!({"project": ids.other_project, "certificate": "intruder"}),
        "/v1/projects/{project}/volumes" => serde_json::json!({"name": "intruder", "size_gib": 1}),
        "/v1/projects/{project}/volumes/{id}/extend" => serde_json::json!({"size_gib": 2}),
        "/v1/projects/{project}/volumes/{id}/access" => serde_json::json!({"grants": []}),
        "/v1/projects/{project}/volumes/{id}/snapshots" => serde_json::json!({"name": "intruder"}),
        "/v1/projects/{project}/instances/{id}/volumes" => serde_json::json!({"volume": uuid::Uuid::new_v4()}),
        "/v1/projects/{project}/volume-settings" => serde_json::json!({"allow_unencrypted": true}),
        "/v1/volume-types" => serde_json::json!({"name": "intruder"}),
        _ => serde_json::json!({}),
    })
}

async fn call(
    c: &TestCluster,
    token: Option<&str>,
    method: &Method,
    path: &str,
    body: &Option<serde_json::Value>,
) -> (u16, String) {
    let tls = rampart_api::tls::client_config(c.controller.ca_pem().as_bytes(), None).unwrap();
    let http = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    let mut req = http.request(method.clone(), format!("{}{}", c.controller.url(), path));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spec_9_3_5_every_operation_refuses_outsiders() {
    let clock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
    let c = TestCluster::start(ClusterOptions {
        clock: Some(clock.clone()),
        ..Default::default()
    })
    .await;
    let home = c.admin_project().await;
    let other: Project = c
        .admin
        .post(
            "/v1/projects",
            &ProjectCreate {
                name: "other".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let group: Group = c
        .admin
        .post(
            "/v1/groups",
            &GroupCreate {
                name: "staff".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let _: Role = c
        .admin
        .post(
            "/v1/roles",
            &RoleCreate {
                name: "ops".into(),
                description: None,
                implies: vec!["member".into()],
            },
        )
        .await
        .unwrap();
    let me = c.admin.current_token().await.unwrap();
    let assignments: List<RoleAssignment> = c
        .admin
        .get(&format!("/v1/role-assignments?user={}", me.user.id))
        .await
        .unwrap();
    let system_assignment = assignments
        .items
        .iter()
        .find(|a| a.scope.system == Some(true))
        .unwrap()
        .id;
    // Somebody else's objects inside the other project: a member there with a credential.
    let insider_id = c
        .create_user(
            "insider",
            "Kittiwake-sorrel-81",
            &[(
                "member",
                ScopeRef {
                    project: Some(other.id),
                    ..Default::default()
                },
            )],
        )
        .await;
    let (insider, _) = c.anon.login_as("insider", "Kittiwake-sorrel-81").await.unwrap();
    let cred: ApplicationCredential = insider
        .post(
            "/v1/application-credentials",
            &ApplicationCredentialCreate {
                name: "ci".into(),
                project: "other".into(),
                roles: None,
                expires_at: None,
                password: None,
                totp: None,
            },
        )
        .await
        .unwrap();
    let domains: List<rampart_api::Domain> = c.admin.get("/v1/domains").await.unwrap();
    let ids = Ids {
        other_project: other.id,
        admin_user: me.user.id,
        default_domain: domains.items.iter().find(|d| d.name == "default").unwrap().id,
        group: group.id,
        assignment: system_assignment,
        credential: cred.id,
    };
    for role in ROLES {
        c.create_user(
            &format!("as-{role}"),
            "Shearwater-pebble-63",
            &[(
                role,
                ScopeRef {
                    project: Some(home),
                    ..Default::default()
                },
            )],
        )
        .await;
    }
    // An expired token: issued, then the clock moves past its lifetime.
    let (expiring, _) = c.anon.login_as("as-reader", "Shearwater-pebble-63").await.unwrap();
    let expired = expiring.token().unwrap().expose().to_string();
    clock.advance(Duration::minutes(61));
    let mut tokens: Vec<(String, Client)> = Vec::new();
    for role in ROLES {
        let (client, _) = c
            .anon
            .login_as(&format!("as-{role}"), "Shearwater-pebble-63")
            .await
            .unwrap();
        tokens.push((role.to_string(), client));
    }

    let doc = rampart_controller::routes::public_openapi();
    let mut rows: BTreeMap<String, String> = BTreeMap::new();
    let mut failures = Vec::new();
    for (path, item) in &doc.paths.paths {
        let ops = [
            (Method::GET, &item.get),
            (Method::POST, &item.post),
            (Method::PUT, &item.put),
            (Method::PATCH, &item.patch),
            (Method::DELETE, &item.delete),
        ];
        for (method, op) in ops {
            let Some(op) = op else { continue };
            if op.security.as_ref().is_none_or(|s| s.is_empty()) {
                continue;
            }
            let url = fill(path, &ids);
            let b = body(&method, path, &ids);
            let mut row = Vec::new();
            for (label, token) in [
                ("none", None),
                ("bad", Some("rpt_not-a-token")),
                ("expired", Some(expired.as_str())),
            ] {
                let (status, _) = call(&c, token, &method, &url, &b).await;
                if status != 401 {
                    failures.push(format!("{method} {path} with {label} token: {status}"));
                }
                row.push(format!("{label}={status}"));
            }
            let kind = if self_service(&method, path) {
                "self"
            } else if catalogue(&method, path) {
                "catalogue"
            } else {
                ""
            };
            if kind.is_empty() {
                for (role, client) in &tokens {
                    let (status, text) = call(&c, client.token().map(|t| t.expose()), &method, &url, &b).await;
                    let is_list = method == Method::GET && !path.contains('{');
                    let verdict = if is_list && status == 200 {
                        // Lists may answer, filtered: nothing of the other project may show.
                        let leaks = [other.id, ids.credential, insider_id]
                            .iter()
                            .any(|id| text.contains(&id.to_string()));
                        if leaks {
                            failures.push(format!("{method} {path} as {role}: shows the other project's objects"));
                        }
                        format!("{role}=200-filtered")
                    } else {
                        if !(status == 403 || status == 404) {
                            failures.push(format!("{method} {path} as {role}: {status} {text}"));
                        }
                        format!("{role}={status}")
                    };
                    row.push(verdict);
                }
            } else {
                row.push(kind.to_string());
            }
            rows.insert(format!("{method:6} {path}"), row.join(" "));
        }
    }
    let table: String = rows.iter().map(|(k, v)| format!("{k} | {v}\n")).collect();
    let golden = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/authz-matrix.txt");
    // The header names the variable of its day; kept as it is so that the file stays
    // byte-identical (the old name is still honoured: rampart_common::testing).
    let header = "# Generated by crates/rampart-testkit/tests/authz_matrix.rs: each operation with no, malformed and expired\n# tokens, then as each project role held on another project. UPDATE_GOLDEN=1 regenerates it.\n";
    let text = format!("{header}{table}");
    assert!(failures.is_empty(), "authorization failures:\n{}", failures.join("\n"));
    rampart_common::testing::golden(&golden, &text);
    c.shutdown().await;
}
