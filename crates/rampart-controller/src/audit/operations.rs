//! How a call is named in the trail. Each use case declares its [`Operation`] next to its
//! function in `app/`; the route that calls it binds the two when it is registered
//! (`crate::routes::audited!`), and the middleware reads the operation of the matched route
//! from the [`Operations`] table. Only the target id and the project come from the path: they
//! are data of the call, not its name.

use std::collections::HashMap;

use http::Method;

/// What a use case is called in the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Operation {
    /// `key.rotate`. A `{param}` in it is replaced by the value of that path parameter when
    /// it is a short lowercase word, by the parameter's name otherwise (`instance.{action}`
    /// is `instance.start`, and `instance.action` in the documentation).
    pub name: &'static str,
    pub target_type: &'static str,
    /// The path parameter holding the target's id, if the path names one.
    pub target_param: Option<&'static str>,
    /// Audited even when it changes nothing (reads of audit data and key metadata).
    pub sensitive_read: bool,
    /// Telemetry (agent heartbeats and long polls, token introspection): only refusals are
    /// recorded; what they change shows on the node.
    pub telemetry: bool,
}

impl Operation {
    pub const fn new(name: &'static str, target_type: &'static str) -> Self {
        Self {
            name,
            target_type,
            target_param: None,
            sensitive_read: false,
            telemetry: false,
        }
    }

    /// The target's id is the value of the path parameter `param`.
    pub const fn target(self, param: &'static str) -> Self {
        Self {
            target_param: Some(param),
            ..self
        }
    }

    /// A read that is recorded as well (audit data, key metadata, certificates).
    pub const fn sensitive_read(self) -> Self {
        Self {
            sensitive_read: true,
            ..self
        }
    }

    /// Only refusals are recorded.
    pub const fn telemetry(self) -> Self {
        Self {
            telemetry: true,
            ..self
        }
    }
}

/// The name of a route that no use case declared: never served, since the architecture test
/// checks that every route has its operation; kept so that a call is recorded all the same.
pub const UNDECLARED: Operation = Operation::new("api.call", "api");

/// The operation of every route, by method and path as registered (`/v1/users/{id}`).
#[derive(Debug, Default, Clone)]
pub struct Operations(HashMap<(Method, String), &'static Operation>);

impl Operations {
    pub fn bind(&mut self, method: Method, path: impl Into<String>, op: &'static Operation) {
        self.0.insert((method, path.into()), op);
    }

    pub fn get(&self, method: &Method, path: &str) -> Option<&'static Operation> {
        self.0.get(&(method.clone(), path.to_string())).copied()
    }

    /// Every route, `(method, path, operation)`.
    pub fn iter(&self) -> impl Iterator<Item = (&Method, &str, &'static Operation)> {
        self.0.iter().map(|((m, p), op)| (m, p.as_str(), *op))
    }
}

/// How a call is named in the trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub operation: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub project: Option<String>,
    /// Audited even when it changes nothing (reads of audit data and key metadata).
    pub sensitive_read: bool,
    pub telemetry: bool,
}

fn is_param(seg: &str) -> bool {
    seg.starts_with('{') && seg.ends_with('}')
}

/// The call `path` of the route `matched` (as registered, `{id}` for parameters) as recorded:
/// the operation its use case declared, with its target id and project read from the path
/// (the project of everything under `/v1/projects/{p}/`).
pub fn resolve(op: &Operation, matched: &str, path: &str) -> Classified {
    let segs: Vec<&str> = matched.split('/').collect();
    let vals: Vec<&str> = path.split('/').collect();
    let param = |name: &str| {
        let i = segs.iter().position(|s| is_param(s) && &s[1..s.len() - 1] == name)?;
        vals.get(i).map(|v| v.to_string())
    };
    let project = match segs.as_slice() {
        ["", "v1", "projects", p, ..] if is_param(p) => vals.get(3).map(|v| v.to_string()),
        _ => None,
    };
    Classified {
        operation: name(op.name, &param),
        target_type: op.target_type.to_string(),
        target_id: op.target_param.and_then(param),
        project,
        sensitive_read: op.sensitive_read,
        telemetry: op.telemetry,
    }
}

/// `op.name` with its `{param}` (if any) replaced by the parameter's value: a word of 1 to 32
/// lowercase letters and `_` (an operation name is not the place for arbitrary input), the
/// parameter's name otherwise.
fn name(template: &str, param: &dyn Fn(&str) -> Option<String>) -> String {
    let Some((head, rest)) = template.split_once('{') else {
        return template.to_string();
    };
    let Some((p, tail)) = rest.split_once('}') else {
        return template.to_string();
    };
    let value = param(p)
        .filter(|v| (1..=32).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .unwrap_or_else(|| p.to_string());
    format!("{head}{value}{tail}")
}

/// Whether a call is recorded: every state change, every refused authentication or
/// authorization, reads of audit data and key metadata. Agent heartbeats and long polls are
/// telemetry (a node's state changes are visible on the node); only refusals of them count.
pub fn is_audited(method: &Method, c: &Classified, status: u16) -> bool {
    if matches!(status, 401 | 403) {
        return true;
    }
    if c.telemetry {
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
    use crate::app;

    const ID: &str = "0b7e1f0e-3c55-4f7e-8d2a-6a7d8c1e9f00";
    const P: &str = "4f1d2c3b-5a6e-4b7c-8d9e-0f1a2b3c4d5e";

    fn call(op: &Operation, matched: &str, path: &str) -> (String, String, Option<String>, Option<String>) {
        let c = resolve(op, matched, path);
        (c.operation, c.target_type, c.target_id, c.project)
    }

    #[test]
    fn spec_13_4_1_the_declared_operation_names_the_call_and_the_path_gives_its_target() {
        assert_eq!(
            call(
                &app::identity::users::DELETE_USER,
                "/v1/users/{id}",
                &format!("/v1/users/{ID}")
            ),
            ("user.delete".into(), "user".into(), Some(ID.into()), None)
        );
        assert_eq!(
            call(
                &app::keys::SCHEDULE_DELETION,
                "/v1/projects/{p}/keys/{id}/schedule-deletion",
                &format!("/v1/projects/{P}/keys/{ID}/schedule-deletion")
            ),
            (
                "key.schedule_deletion".into(),
                "key".into(),
                Some(ID.into()),
                Some(P.into())
            )
        );
        // A project's collection: the project, no target id (a create names what it made).
        assert_eq!(
            call(
                &app::network::security_groups::CREATE_GROUP,
                "/v1/projects/{p}/security-groups",
                &format!("/v1/projects/{P}/security-groups")
            ),
            (
                "security_group.create".into(),
                "security_group".into(),
                None,
                Some(P.into())
            )
        );
        assert_eq!(
            call(
                &app::identity::projects::UPDATE_PROJECT,
                "/v1/projects/{id}",
                &format!("/v1/projects/{ID}")
            ),
            (
                "project.update".into(),
                "project".into(),
                Some(ID.into()),
                Some(ID.into())
            )
        );
        // Membership is a change of the group: the target is `{id}`, not the last parameter.
        let g = "9d3c2b1a-0f9e-4d8c-b7a6-5e4d3c2b1a09";
        assert_eq!(
            call(
                &app::groups::ADD_GROUP_MEMBER,
                "/v1/groups/{id}/users/{user}",
                &format!("/v1/groups/{g}/users/{ID}")
            ),
            ("group.member.add".into(), "group".into(), Some(g.into()), None)
        );
    }

    #[test]
    fn spec_13_4_1_a_name_parameter_takes_only_a_short_lowercase_word() {
        let route = "/v1/projects/{project}/instances/{id}/{action}";
        for action in ["start", "stop", "reboot"] {
            assert_eq!(
                call(
                    &app::compute::instances::POWER,
                    route,
                    &format!("/v1/projects/{P}/instances/{ID}/{action}")
                ),
                (
                    format!("instance.{action}"),
                    "instance".into(),
                    Some(ID.into()),
                    Some(P.into())
                )
            );
        }
        // Whatever else a caller puts there does not become an operation name.
        for junk in ["Start", "x.y", "%2e", "", &"a".repeat(33)] {
            let path = format!("/v1/projects/{P}/instances/{ID}/{junk}");
            assert_eq!(
                resolve(&app::compute::instances::POWER, route, &path).operation,
                "instance.action"
            );
        }
        // The documentation shows the parameter's name.
        assert_eq!(
            resolve(&app::compute::instances::POWER, route, route).operation,
            "instance.action"
        );
    }

    #[test]
    fn spec_13_4_1_every_declared_name_is_a_valid_operation_name() {
        let operations = crate::routes::operations();
        let mut n = 0;
        for (_, path, op) in operations.iter() {
            let c = resolve(op, path, path);
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
            assert!(rec.is_ok(), "{path}: {} is a valid operation name", c.operation);
            n += 1;
        }
        assert!(n > 150, "{n} routes");
    }

    #[test]
    fn spec_9_2_5_what_is_audited() {
        let c = |op: &Operation| resolve(op, "/", "/");
        let create = c(&app::identity::users::CREATE_USER);
        assert!(is_audited(&Method::POST, &create, 201));
        assert!(is_audited(&Method::POST, &create, 400));
        assert!(is_audited(&Method::DELETE, &c(&app::sessions::login::LOGOUT), 204));
        let list = c(&app::identity::users::LIST_USERS);
        assert!(!is_audited(&Method::GET, &list, 200));
        assert!(is_audited(&Method::GET, &list, 403));
        assert!(is_audited(&Method::GET, &c(&app::nodes::LIST_NODES), 401));
        assert!(is_audited(&Method::GET, &c(&app::audit::LIST_EVENTS), 200));
        assert!(is_audited(&Method::GET, &c(&app::keys::LIST), 200));
        let heartbeat = c(&app::agent::STATUS);
        assert!(!is_audited(&Method::PUT, &heartbeat, 200));
        assert!(is_audited(&Method::PUT, &heartbeat, 401));
    }
}
