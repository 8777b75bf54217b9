//! How a call is named in the trail: the operation, its target type, id and project, from the
//! route as registered.

use http::Method;

/// How a call is named in the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub operation: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub project: Option<String>,
    /// Audited even when it changes nothing (reads of audit data and key metadata).
    pub sensitive_read: bool,
}

fn singular(word: &str) -> String {
    let w = word.replace('-', "_");
    if let Some(stem) = w.strip_suffix("ies") {
        format!("{stem}y")
    } else if w.ends_with("sses") || w.ends_with("xes") {
        w[..w.len() - 2].to_string()
    } else if w.ends_with('s') && !w.ends_with("ss") {
        w[..w.len() - 1].to_string()
    } else {
        w
    }
}

fn is_param(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with('}')
}

/// Names the operation of `method` on the route `matched` (as registered, `{id}` for
/// parameters), reading parameter values from `path`. Routes added later are named by the
/// same rule: `/v1/projects/{p}/keys/{id}/rotate` is `key.rotate` on target `key` in project
/// `p`, a `POST` to a collection is `.create`, and so on.
pub fn classify(method: &Method, matched: &str, path: &str) -> Classified {
    let (rest, actual) = match (matched.strip_prefix("/v1/"), path.strip_prefix("/v1/")) {
        (Some(r), Some(a)) => (r, a),
        _ => match (matched.strip_prefix("/agent/v1/"), path.strip_prefix("/agent/v1/")) {
            (Some(r), Some(a)) => (r, a),
            _ => (matched.trim_start_matches('/'), path.trim_start_matches('/')),
        },
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let vals: Vec<&str> = actual.split('/').filter(|s| !s.is_empty()).collect();
    let value = |i: usize| vals.get(i).map(|v| v.to_string());
    let project = (segs.first() == Some(&"projects") && segs.get(1).is_some_and(|s| is_param(s)))
        .then(|| value(1))
        .flatten();
    let named = |op: &str, ty: &str, sensitive: bool| Classified {
        operation: op.to_string(),
        target_type: ty.to_string(),
        target_id: None,
        project: None,
        sensitive_read: sensitive,
    };
    let m = method.as_str();
    // The routes whose names do not follow the rule.
    match (m, matched) {
        // A browser session is a login whose token lands in a cookie (details say so).
        ("POST", "/v1/auth/tokens" | "/v1/auth/sessions") => return named("auth.login", "user", false),
        ("DELETE", "/v1/auth/tokens/current") => return named("auth.logout", "token", false),
        ("GET", "/v1/auth/tokens/current") => return named("auth.token.get", "token", false),
        ("POST", "/v1/auth/password") => return named("auth.password.change", "user", false),
        ("POST", "/v1/auth/mfa/totp") => return named("auth.mfa.enroll", "user", false),
        ("POST", "/v1/auth/mfa/totp/confirm") => return named("auth.mfa.confirm", "user", false),
        ("POST", "/v1/auth/mfa/recovery-codes") => return named("auth.recovery_codes.create", "user", false),
        ("POST", "/agent/v1/join") => return named("node.join", "node", false),
        ("POST", "/agent/v1/renew") => return named("node.certificate.renew", "node", false),
        ("PUT", "/agent/v1/status") => return named("node.status.report", "node", false),
        ("GET", "/agent/v1/config") => return named("node.config.get", "node", false),
        ("GET", "/v1/audit/events") => return named("audit.events.list", "audit_trail", true),
        ("POST", "/v1/audit/verify") => return named("audit.verify", "audit_trail", true),
        ("GET", "/v1/audit/retention") => return named("audit.retention.get", "audit_retention", true),
        ("PUT", "/v1/audit/retention") => return named("audit.retention.update", "audit_retention", true),
        ("GET", "/v1/audit/forwarding") => return named("audit.forwarding.get", "audit_forwarding", true),
        ("PUT", "/v1/audit/forwarding") => return named("audit.forwarding.update", "audit_forwarding", true),
        // Membership is a change of the group (its roles reach one more or one fewer user).
        ("PUT" | "DELETE", "/v1/groups/{id}/users/{user}") => {
            let op = if m == "PUT" {
                "group.member.add"
            } else {
                "group.member.remove"
            };
            return Classified {
                target_id: value(1),
                ..named(op, "group", false)
            };
        }
        // Attaching and detaching are volume operations on the instance's path.
        ("POST", "/v1/projects/{project}/instances/{id}/volumes") => {
            return Classified {
                target_id: value(3),
                project,
                ..named("volume.attach", "instance", false)
            };
        }
        ("DELETE", "/v1/projects/{project}/instances/{id}/volumes/{volume}") => {
            return Classified {
                target_id: value(5),
                project,
                ..named("volume.detach", "volume", false)
            };
        }
        // A node fetching a volume's passphrase (12.3.2-2): always in the trail, the node as actor.
        ("POST", "/agent/v1/volumes/{id}/passphrase") => {
            return Classified {
                target_id: value(1),
                ..named("volume.passphrase.release", "volume", false)
            };
        }
        // `instance.start`, `instance.stop`, `instance.reboot`: the action is a path value.
        ("POST", "/v1/projects/{project}/instances/{id}/{action}") => {
            let action = value(4)
                .filter(|a| (1..=32).contains(&a.len()) && a.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'));
            return Classified {
                target_id: value(3),
                project,
                ..named(
                    &format!("instance.{}", action.as_deref().unwrap_or("action")),
                    "instance",
                    false,
                )
            };
        }
        _ => {}
    }
    let sensitive_read = segs
        .iter()
        .any(|s| matches!(*s, "keys" | "signing-keys" | "certificates" | "audit"));
    let Some(last) = segs.last() else {
        return named("api.call", "api", false);
    };
    let (resource, verb, id) = if is_param(last) {
        let res = segs.get(segs.len().wrapping_sub(2)).copied().unwrap_or("api");
        let verb = match m {
            "GET" | "HEAD" => "get",
            "PUT" | "PATCH" => "update",
            "DELETE" => "delete",
            _ => "create",
        };
        (singular(res), verb.to_string(), value(segs.len() - 1))
    } else if segs.len() >= 2 && is_param(segs[segs.len() - 2]) && (!last.ends_with('s') || last.ends_with("ss")) {
        // `/things/{id}/verb`: an action on the thing.
        let res = segs.get(segs.len().wrapping_sub(3)).copied().unwrap_or("api");
        let verb = if m == "GET" {
            format!("{}.get", last.replace('-', "_"))
        } else {
            last.replace('-', "_")
        };
        (singular(res), verb, value(segs.len() - 2))
    } else {
        // A collection (`/things`, `/things/{id}/members`) or a singleton (`/security-compliance`).
        let plural = last.ends_with('s') && !last.ends_with("ss");
        let verb = match (m, plural) {
            ("GET" | "HEAD", true) => "list",
            ("GET" | "HEAD", false) => "get",
            ("POST", _) => "create",
            ("PUT" | "PATCH", _) => "update",
            ("DELETE", _) => "delete",
            _ => "call",
        };
        // The parent of a sub-collection is its target (`/groups/{id}/members`); a project's
        // own collections already carry the project.
        let under_project = segs.len() == 3 && project.is_some();
        let parent = (segs.len() >= 2 && is_param(segs[segs.len() - 2]) && !under_project)
            .then(|| value(segs.len() - 2))
            .flatten();
        (singular(last), verb.to_string(), parent)
    };
    let resource: String = resource
        .chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let resource = if resource.starts_with(|c: char| c.is_ascii_lowercase()) {
        resource
    } else {
        format!("r{resource}")
    };
    let project = if resource == "project" && project.is_none() {
        id.clone()
    } else {
        project
    };
    Classified {
        operation: format!("{resource}.{verb}"),
        target_type: resource,
        target_id: id,
        project,
        sensitive_read,
    }
}

/// Whether a call is recorded: every state change, every refused authentication or
/// authorization, reads of audit data and key metadata. Agent heartbeats and long polls are
/// telemetry (a node's state changes are visible on the node); only refusals of them count.
pub fn is_audited(method: &Method, c: &Classified, status: u16) -> bool {
    if matches!(status, 401 | 403) {
        return true;
    }
    if matches!(
        c.operation.as_str(),
        "node.status.report" | "node.config.get" | "auth.token.get"
    ) {
        return false;
    }
    let mutating = matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    mutating || c.sensitive_read
}

#[cfg(test)]
mod tests {
    use rampart_audit::record::{Actor, AuditResult, NewRecord, Target};
    use time::OffsetDateTime;

    use super::*;

    fn op(m: Method, matched: &str, path: &str) -> (String, String, Option<String>, Option<String>) {
        let c = classify(&m, matched, path);
        (c.operation, c.target_type, c.target_id, c.project)
    }

    #[test]
    fn spec_13_4_1_operations_are_named_from_the_routes() {
        let id = "0b7e1f0e-3c55-4f7e-8d2a-6a7d8c1e9f00";
        let p = "4f1d2c3b-5a6e-4b7c-8d9e-0f1a2b3c4d5e";
        assert_eq!(op(Method::POST, "/v1/users", "/v1/users").0, "user.create");
        assert_eq!(op(Method::GET, "/v1/users", "/v1/users").0, "user.list");
        assert_eq!(
            op(Method::DELETE, "/v1/users/{id}", &format!("/v1/users/{id}")),
            ("user.delete".into(), "user".into(), Some(id.into()), None)
        );
        assert_eq!(
            op(Method::POST, "/v1/users/{id}/unlock", &format!("/v1/users/{id}/unlock")).0,
            "user.unlock"
        );
        assert_eq!(
            op(
                Method::POST,
                "/v1/users/{id}/reset-password",
                &format!("/v1/users/{id}/reset-password")
            )
            .0,
            "user.reset_password"
        );
        assert_eq!(
            op(Method::POST, "/v1/role-assignments", "/v1/role-assignments").0,
            "role_assignment.create"
        );
        assert_eq!(
            op(Method::PUT, "/v1/security-compliance", "/v1/security-compliance").0,
            "security_compliance.update"
        );
        assert_eq!(
            op(Method::POST, "/v1/nodes/join-tokens", "/v1/nodes/join-tokens").0,
            "join_token.create"
        );
        assert_eq!(
            op(
                Method::POST,
                "/v1/projects/{p}/keys/{id}/schedule-deletion",
                &format!("/v1/projects/{p}/keys/{id}/schedule-deletion")
            ),
            (
                "key.schedule_deletion".into(),
                "key".into(),
                Some(id.into()),
                Some(p.into())
            )
        );
        assert_eq!(
            op(
                Method::POST,
                "/v1/projects/{p}/security-groups",
                &format!("/v1/projects/{p}/security-groups")
            ),
            (
                "security_group.create".into(),
                "security_group".into(),
                None,
                Some(p.into())
            )
        );
        assert_eq!(
            op(Method::PATCH, "/v1/projects/{id}", &format!("/v1/projects/{id}")),
            (
                "project.update".into(),
                "project".into(),
                Some(id.into()),
                Some(id.into())
            )
        );
        let g = "9d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09";
        assert_eq!(
            op(
                Method::PUT,
                "/v1/groups/{id}/users/{user}",
                &format!("/v1/groups/{g}/users/{id}")
            ),
            ("group.member.add".into(), "group".into(), Some(g.into()), None)
        );
        assert_eq!(
            op(
                Method::DELETE,
                "/v1/groups/{id}/users/{user}",
                &format!("/v1/groups/{g}/users/{id}")
            )
            .0,
            "group.member.remove"
        );
        for action in ["start", "stop", "reboot"] {
            assert_eq!(
                op(
                    Method::POST,
                    "/v1/projects/{project}/instances/{id}/{action}",
                    &format!("/v1/projects/{p}/instances/{id}/{action}")
                ),
                (
                    format!("instance.{action}"),
                    "instance".into(),
                    Some(id.into()),
                    Some(p.into())
                )
            );
        }
        assert_eq!(op(Method::POST, "/v1/auth/tokens", "/v1/auth/tokens").0, "auth.login");
        assert_eq!(
            op(Method::POST, "/v1/auth/sessions", "/v1/auth/sessions").0,
            "auth.login"
        );
        assert_eq!(op(Method::POST, "/agent/v1/join", "/agent/v1/join").0, "node.join");
        assert_eq!(
            op(Method::POST, "/agent/v1/renew", "/agent/v1/renew").0,
            "node.certificate.renew"
        );
        assert_eq!(
            op(Method::GET, "/v1/audit/events", "/v1/audit/events").0,
            "audit.events.list"
        );
        for (m, p) in [
            (Method::POST, "/v1/groups/{id}/members"),
            (Method::GET, "/v1/projects/{p}/policies"),
            (Method::POST, "/v1/projects/{p}/instances/{id}/start"),
        ] {
            let c = classify(&m, p, p);
            let rec = rampart_audit::record::seal(
                &rampart_audit::record::ChainHead::GENESIS,
                NewRecord::new(
                    OffsetDateTime::UNIX_EPOCH,
                    Actor::anonymous(),
                    c.operation.clone(),
                    Target::new(c.target_type.clone(), None, None),
                    AuditResult::success(200),
                ),
            );
            assert!(rec.is_ok(), "{p}: {} is a valid operation name", c.operation);
        }
    }

    #[test]
    fn spec_9_2_5_what_is_audited() {
        let c = |m: Method, p: &str| classify(&m, p, p);
        assert!(is_audited(&Method::POST, &c(Method::POST, "/v1/users"), 201));
        assert!(is_audited(&Method::POST, &c(Method::POST, "/v1/users"), 400));
        assert!(is_audited(
            &Method::DELETE,
            &c(Method::DELETE, "/v1/auth/tokens/current"),
            204
        ));
        assert!(!is_audited(&Method::GET, &c(Method::GET, "/v1/users"), 200));
        assert!(is_audited(&Method::GET, &c(Method::GET, "/v1/users"), 403));
        assert!(is_audited(&Method::GET, &c(Method::GET, "/v1/nodes"), 401));
        assert!(is_audited(&Method::GET, &c(Method::GET, "/v1/audit/events"), 200));
        assert!(is_audited(&Method::GET, &c(Method::GET, "/v1/projects/{p}/keys"), 200));
        assert!(!is_audited(&Method::PUT, &c(Method::PUT, "/agent/v1/status"), 200));
        assert!(is_audited(&Method::PUT, &c(Method::PUT, "/agent/v1/status"), 401));
    }
}
