//! Authorization: every API operation asks one [`Authorizer::authorize`] question, answered by
//! Cedar policies (`policies/builtin.cedar`, validated against `policies/schema.cedarschema`)
//! plus optional operator policies (for instance `forbid` rules on time windows or source
//! ranges). The request context carries the time, the client address and whether the session
//! used a second factor.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::str::FromStr;

use cedar_policy::{
    Context, Decision, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicySet, Request, RestrictedExpression,
    Schema, ValidationMode, Validator,
};
use time::OffsetDateTime;
use uuid::Uuid;

const SCHEMA: &str = include_str!("../policies/schema.cedarschema");
const BUILTIN: &str = include_str!("../policies/builtin.cedar");

/// The actions of the schema.
pub const ACTIONS: &[&str] = &[
    "system.read",
    "system.manage",
    "security.read",
    "security.manage",
    "audit.read",
    "audit.verify",
    "audit.manage",
    "domain.manage",
    "identity.read",
    "identity.manage",
    "user.unlock",
    "user.reset_password",
    "assignment.system",
    "assignment.security",
    "assignment.domain",
    "project.read",
    "project.write",
    "project.admin",
    "keys.manage",
    "keys.use",
    "assignment.project",
    "assignment.key",
    "assignment.key_first",
    "volume.read",
    "volume.attach",
    "volume.detach",
    "volume.snapshot",
    "volume.extend",
    "volume.delete",
    "volume.access",
    "self.manage",
];

/// The actions of the schema as named constants, so a call site cannot misspell one (a typo in
/// a string would simply be denied by Cedar, silently).
pub mod action {
    pub const SYSTEM_READ: &str = "system.read";
    pub const SYSTEM_MANAGE: &str = "system.manage";
    pub const SECURITY_READ: &str = "security.read";
    pub const SECURITY_MANAGE: &str = "security.manage";
    pub const AUDIT_READ: &str = "audit.read";
    pub const AUDIT_VERIFY: &str = "audit.verify";
    pub const AUDIT_MANAGE: &str = "audit.manage";
    pub const DOMAIN_MANAGE: &str = "domain.manage";
    pub const IDENTITY_READ: &str = "identity.read";
    pub const IDENTITY_MANAGE: &str = "identity.manage";
    pub const USER_UNLOCK: &str = "user.unlock";
    pub const USER_RESET_PASSWORD: &str = "user.reset_password";
    pub const ASSIGNMENT_SYSTEM: &str = "assignment.system";
    pub const ASSIGNMENT_SECURITY: &str = "assignment.security";
    pub const ASSIGNMENT_DOMAIN: &str = "assignment.domain";
    pub const PROJECT_READ: &str = "project.read";
    pub const PROJECT_WRITE: &str = "project.write";
    pub const PROJECT_ADMIN: &str = "project.admin";
    pub const KEYS_MANAGE: &str = "keys.manage";
    pub const KEYS_USE: &str = "keys.use";
    pub const ASSIGNMENT_PROJECT: &str = "assignment.project";
    pub const ASSIGNMENT_KEY: &str = "assignment.key";
    pub const ASSIGNMENT_KEY_FIRST: &str = "assignment.key_first";
    pub const VOLUME_READ: &str = "volume.read";
    pub const VOLUME_ATTACH: &str = "volume.attach";
    pub const VOLUME_DETACH: &str = "volume.detach";
    pub const VOLUME_SNAPSHOT: &str = "volume.snapshot";
    pub const VOLUME_EXTEND: &str = "volume.extend";
    pub const VOLUME_DELETE: &str = "volume.delete";
    pub const VOLUME_ACCESS: &str = "volume.access";
    pub const SELF_MANAGE: &str = "self.manage";

    /// Every constant above, in the order of [`super::ACTIONS`].
    pub const ALL: &[&str] = &[
        SYSTEM_READ,
        SYSTEM_MANAGE,
        SECURITY_READ,
        SECURITY_MANAGE,
        AUDIT_READ,
        AUDIT_VERIFY,
        AUDIT_MANAGE,
        DOMAIN_MANAGE,
        IDENTITY_READ,
        IDENTITY_MANAGE,
        USER_UNLOCK,
        USER_RESET_PASSWORD,
        ASSIGNMENT_SYSTEM,
        ASSIGNMENT_SECURITY,
        ASSIGNMENT_DOMAIN,
        PROJECT_READ,
        PROJECT_WRITE,
        PROJECT_ADMIN,
        KEYS_MANAGE,
        KEYS_USE,
        ASSIGNMENT_PROJECT,
        ASSIGNMENT_KEY,
        ASSIGNMENT_KEY_FIRST,
        VOLUME_READ,
        VOLUME_ATTACH,
        VOLUME_DETACH,
        VOLUME_SNAPSHOT,
        VOLUME_EXTEND,
        VOLUME_DELETE,
        VOLUME_ACCESS,
        SELF_MANAGE,
    ];

    /// Actions that let a caller see a project (and so get 403 rather than 404 from it): key
    /// admins and key users see the project whose keys they hold.
    pub const PROJECT_VISIBLE: &[&str] = &[PROJECT_READ, KEYS_USE, KEYS_MANAGE];
}

/// Roles held at system scope.
pub const SYSTEM_ROLES: &[&str] = &["system-admin", "security-admin", "auditor"];
/// Roles held on a project.
pub const PROJECT_ROLES: &[&str] = &["project-admin", "member", "reader", "key-admin", "key-user"];
/// System roles that only security admins grant (separation of duties, spec 13.1.1-2).
pub const SECURITY_ROLES: &[&str] = &["security-admin", "auditor"];
/// Project roles that reach tenant key material: only the project's key admins grant them.
pub const KEY_ROLES: &[&str] = &["key-admin", "key-user"];

/// Where a role is held, with what the grant rules need to know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RoleScope {
    System,
    Domain(Uuid),
    Project { id: Uuid, domain: Uuid },
}

#[derive(Debug, thiserror::Error)]
pub enum AuthzError {
    #[error("the authorization schema does not parse: {0}")]
    Schema(String),
    #[error("the authorization policies do not parse: {0}")]
    Parse(String),
    #[error("the authorization policies do not validate against the schema: {0}")]
    Invalid(String),
    #[error("cannot read operator policies from {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Who asks: the roles that apply to this session, already expanded from custom roles.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub user_id: Uuid,
    pub system_roles: Vec<String>,
    /// Domains where the user is `domain-admin`.
    pub domain_admin_of: Vec<Uuid>,
    /// `(project, role)` pairs.
    pub project_roles: Vec<(Uuid, String)>,
}

/// What the question is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    System,
    Domain(Uuid),
    Project {
        id: Uuid,
        domain: Uuid,
    },
    /// A volume of a project. `restricted`: it has grants; `granted`: the volume actions the
    /// grants give the caller (directly or through a group), as [`volume_grant_bit`] bits.
    Volume {
        id: Uuid,
        project: Uuid,
        domain: Uuid,
        restricted: bool,
        granted: u8,
    },
    User(Uuid),
}

/// The actions a per-volume grant can give, in the order of their bits.
pub const VOLUME_GRANT_ACTIONS: [&str; 6] = ["read", "attach", "detach", "snapshot", "extend", "delete"];

/// The bit of a grant action (`read`, `attach`, ...) in [`Target::Volume`]'s `granted`.
pub fn volume_grant_bit(action: &str) -> Option<u8> {
    VOLUME_GRANT_ACTIONS.iter().position(|a| *a == action).map(|i| 1u8 << i)
}

#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    pub now: OffsetDateTime,
    pub source_ip: IpAddr,
    pub mfa: bool,
}

/// A decision and the policies that made it (for logs and tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    pub because: Vec<String>,
}

pub struct Authorizer {
    schema: Schema,
    policies: PolicySet,
    engine: cedar_policy::Authorizer,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").finish_non_exhaustive()
    }
}

fn uid(ty: &str, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(
        EntityTypeName::from_str(&format!("Rampart::{ty}")).expect("valid type name"),
        EntityId::new(id),
    )
}

fn grant(scope: &str, id: Uuid, role: &str) -> EntityUid {
    uid("Grant", &format!("{scope}/{id}/{role}"))
}

type Attrs = HashMap<String, RestrictedExpression>;

/// The entities of project `id` (its role grants, chained, and its domain), added through
/// `add`; returns the project's uid.
fn project_entity(add: &mut impl FnMut(EntityUid, Attrs, HashSet<EntityUid>), id: Uuid, domain: Uuid) -> EntityUid {
    let g = |role: &str| grant("project", id, role);
    // The role chain: project-admin ⊂ member ⊂ reader; the domain's admins are
    // project admins of every project in the domain.
    add(g("project-admin"), HashMap::new(), HashSet::from([g("member")]));
    add(g("member"), HashMap::new(), HashSet::from([g("reader")]));
    add(g("reader"), HashMap::new(), HashSet::new());
    add(g("own-admin"), HashMap::new(), HashSet::new());
    add(g("key-admin"), HashMap::new(), HashSet::new());
    add(g("key-user"), HashMap::new(), HashSet::new());
    let domain_admins = grant("domain", domain, "domain-admin");
    add(
        domain_admins.clone(),
        HashMap::new(),
        HashSet::from([g("project-admin")]),
    );
    let dom = uid("Domain", &domain.to_string());
    add(
        dom.clone(),
        HashMap::from([(
            "admins".to_string(),
            RestrictedExpression::new_entity_uid(domain_admins),
        )]),
        HashSet::new(),
    );
    let proj = uid("Project", &id.to_string());
    let attrs = HashMap::from([
        ("readers".to_string(), RestrictedExpression::new_entity_uid(g("reader"))),
        ("members".to_string(), RestrictedExpression::new_entity_uid(g("member"))),
        (
            "admins".to_string(),
            RestrictedExpression::new_entity_uid(g("project-admin")),
        ),
        (
            "own_admins".to_string(),
            RestrictedExpression::new_entity_uid(g("own-admin")),
        ),
        (
            "key_admins".to_string(),
            RestrictedExpression::new_entity_uid(g("key-admin")),
        ),
        (
            "key_users".to_string(),
            RestrictedExpression::new_entity_uid(g("key-user")),
        ),
    ]);
    add(proj.clone(), attrs, HashSet::from([dom]));
    proj
}

impl Authorizer {
    /// The built-in policies plus `extra` operator policies (Cedar text), all validated
    /// against the schema: a typo in an operator file stops start-up instead of silently
    /// never matching.
    pub fn new(extra: Option<&str>) -> Result<Authorizer, AuthzError> {
        let (schema, _) = Schema::from_cedarschema_str(SCHEMA).map_err(|e| AuthzError::Schema(e.to_string()))?;
        let mut text = BUILTIN.to_string();
        if let Some(extra) = extra {
            text.push('\n');
            text.push_str(extra);
        }
        let policies = PolicySet::from_str(&text).map_err(|e| AuthzError::Parse(e.to_string()))?;
        let result = Validator::new(schema.clone()).validate(&policies, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors: Vec<String> = result.validation_errors().map(|e| e.to_string()).collect();
            return Err(AuthzError::Invalid(errors.join("; ")));
        }
        Ok(Authorizer {
            schema,
            policies,
            engine: cedar_policy::Authorizer::new(),
        })
    }

    pub fn from_file(path: Option<&std::path::Path>) -> Result<Authorizer, AuthzError> {
        match path {
            None => Authorizer::new(None),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| AuthzError::Read { path: p.into(), source })?;
                Authorizer::new(Some(&text))
            }
        }
    }

    /// May `subject` do `action` on `target` in `ctx`?
    pub fn authorize(&self, subject: &Subject, action: &str, target: Target, ctx: &Ctx) -> Verdict {
        if !applies(action, target) {
            // A project action asked of the system (or the reverse) has a plain answer: no.
            // Asking Cedar would fail schema validation and log an error for a question that
            // is only a caller probing where a right might be.
            return Verdict {
                allowed: false,
                because: vec!["not_applicable".into()],
            };
        }
        match self.evaluate(subject, action, target, ctx) {
            Ok(v) => v,
            Err(e) => {
                // Fail closed: a request the engine cannot evaluate is denied.
                tracing::error!(action, error = %e, "authorization request could not be evaluated");
                Verdict {
                    allowed: false,
                    because: vec![format!("error: {e}")],
                }
            }
        }
    }

    fn evaluate(&self, subject: &Subject, action: &str, target: Target, ctx: &Ctx) -> Result<Verdict, String> {
        let mut entities: HashMap<EntityUid, (HashMap<String, RestrictedExpression>, HashSet<EntityUid>)> =
            HashMap::new();
        let mut add = |u: EntityUid, attrs: HashMap<String, RestrictedExpression>, parents: HashSet<EntityUid>| {
            let e = entities.entry(u).or_insert_with(|| (HashMap::new(), HashSet::new()));
            e.0.extend(attrs);
            e.1.extend(parents);
        };
        let user = uid("User", &subject.user_id.to_string());
        let mut parents: HashSet<EntityUid> = HashSet::new();
        for r in &subject.system_roles {
            let role = uid("Role", r);
            add(role.clone(), HashMap::new(), HashSet::new());
            parents.insert(role);
        }
        for d in &subject.domain_admin_of {
            parents.insert(grant("domain", *d, "domain-admin"));
        }
        for (p, r) in &subject.project_roles {
            parents.insert(grant("project", *p, r));
            if r == "project-admin" {
                parents.insert(grant("project", *p, "own-admin"));
            }
        }
        for g in &parents {
            add(g.clone(), HashMap::new(), HashSet::new());
        }
        add(user.clone(), HashMap::new(), parents);

        let resource = match target {
            Target::System => {
                let s = uid("System", "rampart");
                add(s.clone(), HashMap::new(), HashSet::new());
                s
            }
            Target::Domain(d) => {
                let admins = grant("domain", d, "domain-admin");
                add(admins.clone(), HashMap::new(), HashSet::new());
                let dom = uid("Domain", &d.to_string());
                add(
                    dom.clone(),
                    HashMap::from([("admins".to_string(), RestrictedExpression::new_entity_uid(admins))]),
                    HashSet::new(),
                );
                dom
            }
            Target::Project { id, domain } => project_entity(&mut add, id, domain),
            Target::Volume {
                id,
                project,
                domain,
                restricted,
                granted,
            } => {
                let proj = project_entity(&mut add, project, domain);
                let mut grants = HashMap::new();
                let mut held = HashSet::new();
                for (i, a) in VOLUME_GRANT_ACTIONS.iter().enumerate() {
                    let g = uid("Grant", &format!("volume/{id}/{a}"));
                    add(g.clone(), HashMap::new(), HashSet::new());
                    if granted & (1 << i) != 0 {
                        held.insert(g.clone());
                    }
                    grants.insert(a.to_string(), RestrictedExpression::new_entity_uid(g));
                }
                add(user.clone(), HashMap::new(), held);
                let vol = uid("Volume", &id.to_string());
                let attrs = HashMap::from([
                    (
                        "project".to_string(),
                        RestrictedExpression::new_entity_uid(proj.clone()),
                    ),
                    ("restricted".to_string(), RestrictedExpression::new_bool(restricted)),
                    (
                        "grants".to_string(),
                        RestrictedExpression::new_record(grants).map_err(|e| e.to_string())?,
                    ),
                ]);
                add(vol.clone(), attrs, HashSet::from([proj]));
                vol
            }
            Target::User(u) => {
                let other = uid("User", &u.to_string());
                add(other.clone(), HashMap::new(), HashSet::new());
                other
            }
        };
        let entities = entities
            .into_iter()
            .map(|(u, (attrs, parents))| Entity::new(u, attrs, parents).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        // The policies were validated against the schema at start and these entities are built
        // here, not taken from input: re-validating them on every request would only cost time.
        let entities = Entities::from_entities(entities, None).map_err(|e| e.to_string())?;
        let now = ctx
            .now
            .to_offset(time::UtcOffset::UTC)
            .format(&time::format_description::well_known::Rfc3339)
            .map_err(|e| e.to_string())?;
        // Cedar's datetime takes at most millisecond precision and a "Z" suffix.
        let now = format!("{}Z", &now[..19]);
        let context = Context::from_pairs([
            ("now".to_string(), RestrictedExpression::new_datetime(now)),
            (
                "source_ip".to_string(),
                RestrictedExpression::new_ip(crate::net::canonical(ctx.source_ip).to_string()),
            ),
            ("mfa".to_string(), RestrictedExpression::new_bool(ctx.mfa)),
        ])
        .map_err(|e| e.to_string())?;
        let request = Request::new(user, uid("Action", action), resource, context, Some(&self.schema))
            .map_err(|e| e.to_string())?;
        let response = self.engine.is_authorized(&request, &self.policies, &entities);
        // Name policies by their `@id` annotation (Cedar numbers them `policy0`, `policy1`...).
        let because = response
            .diagnostics()
            .reason()
            .map(|id| {
                self.policies
                    .policy(id)
                    .and_then(|p| p.annotation("id"))
                    .map(str::to_string)
                    .unwrap_or_else(|| id.to_string())
            })
            .collect::<Vec<_>>();
        let errors: Vec<String> = response.diagnostics().errors().map(|e| e.to_string()).collect();
        if !errors.is_empty() {
            tracing::warn!(action, errors = ?errors, "policy evaluation errors (treated as not matching)");
        }
        Ok(Verdict {
            allowed: response.decision() == Decision::Allow,
            because,
        })
    }
}

impl Authorizer {
    /// May `subject` grant (or revoke) `role` at `scope`? Each role maps to the Cedar action
    /// that governs it: `assignment.system` for system-admin, `assignment.security` for the
    /// security roles, `assignment.domain` for domain-admin, `assignment.project` (or the
    /// domain's `assignment.domain`) for the project roles, and `assignment.key` for the key
    /// roles; `first_key_admin` (the project has no key admin yet) also lets a project admin
    /// name one (`assignment.key_first`). A role that is not held at that scope: never.
    pub fn may_grant(&self, subject: &Subject, ctx: &Ctx, role: &str, scope: RoleScope, first_key_admin: bool) -> bool {
        let ask = |action: &str, target: Target| self.authorize(subject, action, target, ctx).allowed;
        match scope {
            RoleScope::System => match role {
                "system-admin" => ask("assignment.system", Target::System),
                r if SECURITY_ROLES.contains(&r) => ask("assignment.security", Target::System),
                _ => false,
            },
            RoleScope::Domain(d) => {
                role == "domain-admin"
                    && (ask("assignment.domain", Target::System) || ask("assignment.domain", Target::Domain(d)))
            }
            RoleScope::Project { id, domain } => {
                let project = Target::Project { id, domain };
                if KEY_ROLES.contains(&role) {
                    ask("assignment.key", project)
                        || (first_key_admin && role == "key-admin" && ask("assignment.key_first", project))
                } else if PROJECT_ROLES.contains(&role) {
                    ask("assignment.project", project)
                        || ask("assignment.domain", Target::System)
                        || ask("assignment.domain", Target::Domain(domain))
                } else {
                    false
                }
            }
        }
    }

    /// May `subject` act on a principal holding `held` (reset its password or second factor,
    /// unlock, disable, delete, change its window or sources, add it to or remove it from a
    /// group)? Only when it could grant every one of those roles itself: acting on an account
    /// is as good as holding its roles, so nobody acts on an account that outranks them.
    pub fn may_act_on(&self, subject: &Subject, ctx: &Ctx, held: &[(RoleScope, String)]) -> bool {
        held.iter()
            .all(|(scope, role)| self.may_grant(subject, ctx, role, *scope, false))
    }
}

/// The role × action table of the built-in policies, evaluated (not written by hand): each
/// built-in role held alone, on the target it applies to. `docs/authz.md` embeds it; a test
/// fails when the two drift apart.
/// Whether an action's resource is a project (its target needs the project's domain).
pub fn is_project_action(action: &str) -> bool {
    action.starts_with("project.")
        || action.starts_with("keys.")
        || action.starts_with("assignment.project")
        || action.starts_with("assignment.key")
}

/// Whether the schema lets `action` be asked about `target` at all.
pub fn applies(action: &str, target: Target) -> bool {
    match target {
        Target::Project { .. } => is_project_action(action),
        Target::Volume { .. } => is_volume_action(action),
        Target::User(_) => action == "self.manage",
        Target::Domain(_) => matches!(
            action,
            "domain.manage"
                | "identity.read"
                | "identity.manage"
                | "user.unlock"
                | "user.reset_password"
                | "assignment.system"
                | "assignment.security"
                | "assignment.domain"
        ),
        Target::System => !is_project_action(action) && !is_volume_action(action) && action != "self.manage",
    }
}

/// Whether an action's resource is a volume.
pub fn is_volume_action(action: &str) -> bool {
    action.starts_with("volume.")
}

const SAMPLE_USER: Uuid = Uuid::from_u128(1);
const SAMPLE_DOMAIN: Uuid = Uuid::from_u128(2);
const SAMPLE_PROJECT: Uuid = Uuid::from_u128(3);
const SAMPLE_VOLUME: Uuid = Uuid::from_u128(4);

fn sample_ctx() -> Ctx {
    Ctx {
        now: OffsetDateTime::UNIX_EPOCH,
        source_ip: IpAddr::from([127, 0, 0, 1]),
        mfa: true,
    }
}

/// Each built-in role held alone by one user, on the sample domain or project.
fn sample_holders() -> Vec<(&'static str, RoleScope)> {
    let project = RoleScope::Project {
        id: SAMPLE_PROJECT,
        domain: SAMPLE_DOMAIN,
    };
    vec![
        ("system-admin", RoleScope::System),
        ("security-admin", RoleScope::System),
        ("auditor", RoleScope::System),
        ("domain-admin", RoleScope::Domain(SAMPLE_DOMAIN)),
        ("project-admin", project),
        ("member", project),
        ("reader", project),
        ("key-admin", project),
        ("key-user", project),
    ]
}

fn sample_subject(user_id: Uuid, role: &str, scope: RoleScope) -> Subject {
    let mut s = Subject {
        user_id,
        ..Default::default()
    };
    match scope {
        RoleScope::System => s.system_roles.push(role.into()),
        RoleScope::Domain(d) => s.domain_admin_of.push(d),
        RoleScope::Project { id, .. } => s.project_roles.push((id, role.into())),
    }
    s
}

/// The role × action table of the built-in policies, evaluated (not written by hand): each
/// built-in role held alone, on the target it applies to. `docs/authz.md` embeds it; a test
/// fails when the two drift apart.
pub fn role_action_table(authz: &Authorizer) -> String {
    let (user, domain, project, ctx) = (SAMPLE_USER, SAMPLE_DOMAIN, SAMPLE_PROJECT, sample_ctx());
    let roles: Vec<(&str, Subject)> = sample_holders()
        .into_iter()
        .map(|(r, scope)| (r, sample_subject(user, r, scope)))
        .collect();
    let mut out = String::from("| action | on | ");
    out.push_str(&roles.iter().map(|(r, _)| *r).collect::<Vec<_>>().join(" | "));
    out.push_str(" |\n|---|---|");
    out.push_str(&"---|".repeat(roles.len()));
    out.push('\n');
    for action in ACTIONS {
        let targets: Vec<(&str, Target)> = match *action {
            a if is_project_action(a) => {
                vec![("its project", Target::Project { id: project, domain })]
            }
            a if is_volume_action(a) => {
                let volume = |restricted, granted| Target::Volume {
                    id: SAMPLE_VOLUME,
                    project,
                    domain,
                    restricted,
                    granted,
                };
                vec![
                    ("its project's volume, no grants", volume(false, 0)),
                    ("a volume with grants, none to the caller", volume(true, 0)),
                    (
                        "a volume with grants giving the caller every action",
                        volume(true, 0x3f),
                    ),
                ]
            }
            "self.manage" => vec![("own account", Target::User(user))],
            a if a.starts_with("system.") || a.starts_with("security.") || a.starts_with("audit.") => {
                vec![("system", Target::System)]
            }
            _ => vec![("system", Target::System), ("its domain", Target::Domain(domain))],
        };
        for (label, target) in targets {
            out.push_str(&format!("| `{action}` | {label} |"));
            for (_, s) in &roles {
                let v = authz.authorize(s, action, target, &ctx);
                out.push_str(if v.allowed { " ✔ |" } else { " · |" });
            }
            out.push('\n');
        }
    }
    out
}

/// Who may act on whom (reset a password or second factor, unlock, disable, delete, change a
/// window or sources, move in or out of a group): each built-in role held alone (rows) against
/// an account holding one role on the same domain or project (columns), evaluated through
/// [`Authorizer::may_act_on`]. `docs/authz.md` embeds it.
pub fn principal_action_table(authz: &Authorizer) -> String {
    let ctx = sample_ctx();
    let holders = sample_holders();
    let mut out = String::from("| actor ╲ account holding | ");
    out.push_str(&holders.iter().map(|(r, _)| *r).collect::<Vec<_>>().join(" | "));
    out.push_str(" | no role |\n|---|");
    out.push_str(&"---|".repeat(holders.len() + 1));
    out.push('\n');
    for (actor_role, actor_scope) in &holders {
        let actor = sample_subject(SAMPLE_USER, actor_role, *actor_scope);
        out.push_str(&format!("| {actor_role} |"));
        let targets = holders
            .iter()
            .map(|(r, sc)| vec![(*sc, r.to_string())])
            .chain(std::iter::once(vec![]));
        for held in targets {
            out.push_str(if authz.may_act_on(&actor, &ctx, &held) {
                " ✔ |"
            } else {
                " · |"
            });
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Ctx {
        Ctx {
            now: OffsetDateTime::now_utc(),
            source_ip: IpAddr::from([127, 0, 0, 1]),
            mfa: true,
        }
    }

    fn subject(system: &[&str], projects: &[(Uuid, &str)]) -> Subject {
        Subject {
            user_id: Uuid::new_v4(),
            system_roles: system.iter().map(|s| s.to_string()).collect(),
            domain_admin_of: vec![],
            project_roles: projects.iter().map(|(p, r)| (*p, r.to_string())).collect(),
        }
    }

    #[test]
    fn policies_validate_against_the_schema() {
        Authorizer::new(None).unwrap();
        let err = Authorizer::new(Some(
            "permit(principal, action == Rampart::Action::\"no.such\", resource);",
        ))
        .unwrap_err();
        assert!(matches!(err, AuthzError::Invalid(_)), "{err}");
    }

    #[test]
    fn spec_13_1_1_2_separation_of_duties() {
        let a = Authorizer::new(None).unwrap();
        let admin = subject(&["system-admin"], &[]);
        let auditor = subject(&["auditor"], &[]);
        let security = subject(&["security-admin"], &[]);
        let sys = Target::System;
        assert!(a.authorize(&admin, "system.manage", sys, &ctx()).allowed);
        assert!(
            !a.authorize(&admin, "audit.manage", sys, &ctx()).allowed,
            "admin cannot change retention"
        );
        assert!(
            !a.authorize(&admin, "security.manage", sys, &ctx()).allowed,
            "admin cannot weaken the password policy"
        );
        assert!(!a.authorize(&admin, "assignment.security", sys, &ctx()).allowed);
        assert!(a.authorize(&auditor, "audit.read", sys, &ctx()).allowed);
        assert!(!a.authorize(&auditor, "system.manage", sys, &ctx()).allowed);
        assert!(!a.authorize(&auditor, "identity.manage", sys, &ctx()).allowed);
        assert!(a.authorize(&security, "security.manage", sys, &ctx()).allowed);
        assert!(!a.authorize(&security, "system.manage", sys, &ctx()).allowed);
        // Nobody at system scope uses a tenant's keys or reads its project.
        let p = Target::Project {
            id: Uuid::new_v4(),
            domain: Uuid::new_v4(),
        };
        for s in [&admin, &auditor, &security] {
            for action in ["keys.use", "keys.manage", "project.read"] {
                assert!(!a.authorize(s, action, p, &ctx()).allowed, "{action}");
            }
        }
    }

    #[test]
    fn spec_13_1_1_1_project_roles_nest_and_stay_in_their_project() {
        let a = Authorizer::new(None).unwrap();
        let (p1, p2, d) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let t1 = Target::Project { id: p1, domain: d };
        let t2 = Target::Project { id: p2, domain: d };
        let admin = subject(&[], &[(p1, "project-admin")]);
        let member = subject(&[], &[(p1, "member")]);
        let reader = subject(&[], &[(p1, "reader")]);
        for (s, read, write, adm) in [
            (&admin, true, true, true),
            (&member, true, true, false),
            (&reader, true, false, false),
        ] {
            assert_eq!(a.authorize(s, "project.read", t1, &ctx()).allowed, read);
            assert_eq!(a.authorize(s, "project.write", t1, &ctx()).allowed, write);
            assert_eq!(a.authorize(s, "project.admin", t1, &ctx()).allowed, adm);
            for action in ["project.read", "project.write", "project.admin"] {
                assert!(!a.authorize(s, action, t2, &ctx()).allowed, "another project: {action}");
            }
        }
        // Key roles are not implied by project-admin.
        assert!(!a.authorize(&admin, "keys.use", t1, &ctx()).allowed);
        assert!(
            a.authorize(&subject(&[], &[(p1, "key-user")]), "keys.use", t1, &ctx())
                .allowed
        );
        // A domain admin administers every project of the domain, not of another.
        let dadmin = Subject {
            user_id: Uuid::new_v4(),
            domain_admin_of: vec![d],
            ..Default::default()
        };
        assert!(a.authorize(&dadmin, "project.admin", t1, &ctx()).allowed);
        assert!(
            a.authorize(&dadmin, "identity.manage", Target::Domain(d), &ctx())
                .allowed
        );
        assert!(
            !a.authorize(&dadmin, "identity.manage", Target::Domain(Uuid::new_v4()), &ctx())
                .allowed
        );
        assert!(
            !a.authorize(
                &dadmin,
                "project.read",
                Target::Project {
                    id: p2,
                    domain: Uuid::new_v4()
                },
                &ctx()
            )
            .allowed
        );
        assert!(!a.authorize(&dadmin, "identity.manage", Target::System, &ctx()).allowed);
    }

    #[test]
    fn spec_13_1_1_2_grant_rules_follow_separation_of_duties() {
        let a = Authorizer::new(None).unwrap();
        let (p, d) = (Uuid::new_v4(), Uuid::new_v4());
        let proj = RoleScope::Project { id: p, domain: d };
        let admin = subject(&["system-admin"], &[]);
        let security = subject(&["security-admin"], &[]);
        let padmin = subject(&[], &[(p, "project-admin")]);
        let kadmin = subject(&[], &[(p, "key-admin")]);
        let dadmin = Subject {
            user_id: Uuid::new_v4(),
            domain_admin_of: vec![d],
            ..Default::default()
        };
        let c = ctx();
        // Security roles come only from security admins.
        assert!(!a.may_grant(&admin, &c, "security-admin", RoleScope::System, false));
        assert!(!a.may_grant(&admin, &c, "auditor", RoleScope::System, false));
        assert!(a.may_grant(&security, &c, "auditor", RoleScope::System, false));
        assert!(!a.may_grant(&security, &c, "system-admin", RoleScope::System, false));
        // Key roles come only from the project's key admins; a project admin names the first.
        for s in [&admin, &dadmin, &padmin] {
            assert!(!a.may_grant(s, &c, "key-user", proj, false));
            assert!(!a.may_grant(s, &c, "key-admin", proj, false));
        }
        assert!(a.may_grant(&padmin, &c, "key-admin", proj, true));
        assert!(!a.may_grant(&padmin, &c, "key-user", proj, true));
        assert!(
            !a.may_grant(&dadmin, &c, "key-admin", proj, true),
            "a domain admin is no project's own admin"
        );
        assert!(
            !a.may_grant(&admin, &c, "key-admin", proj, true),
            "no system role reaches tenant keys"
        );
        assert!(a.may_grant(&kadmin, &c, "key-user", proj, false));
        assert!(!a.may_grant(&kadmin, &c, "member", proj, false));
        // Acting on an account needs every one of its roles.
        let held = |r: &str, s: RoleScope| vec![(s, r.to_string())];
        assert!(!a.may_act_on(&dadmin, &c, &held("system-admin", RoleScope::System)));
        assert!(!a.may_act_on(&admin, &c, &held("security-admin", RoleScope::System)));
        assert!(!a.may_act_on(&admin, &c, &held("key-user", proj)));
        assert!(a.may_act_on(&admin, &c, &held("member", proj)));
        assert!(a.may_act_on(&dadmin, &c, &held("member", proj)));
        let mut both = held("member", proj);
        both.push((RoleScope::System, "auditor".into()));
        assert!(!a.may_act_on(&dadmin, &c, &both));
    }

    #[test]
    fn a_question_about_the_wrong_kind_of_resource_is_a_quiet_no() {
        let a = Authorizer::new(None).unwrap();
        let padmin = subject(&[], &[(Uuid::new_v4(), "project-admin")]);
        // What granting roles used to ask of every caller: project actions on the system.
        for action in ["assignment.project", "assignment.key", "keys.use", "project.read"] {
            let v = a.authorize(&padmin, action, Target::System, &ctx());
            assert_eq!(v.because, ["not_applicable"], "{action}");
        }
        // Every action of the schema, asked where the schema lets it be asked, evaluates.
        for action in ACTIONS {
            for t in [
                Target::System,
                Target::Domain(Uuid::new_v4()),
                Target::Project {
                    id: Uuid::new_v4(),
                    domain: Uuid::new_v4(),
                },
                Target::Volume {
                    id: Uuid::new_v4(),
                    project: Uuid::new_v4(),
                    domain: Uuid::new_v4(),
                    restricted: true,
                    granted: 1,
                },
                Target::User(Uuid::new_v4()),
            ] {
                if applies(action, t) {
                    let v = a.authorize(&padmin, action, t, &ctx());
                    assert!(
                        !v.because.iter().any(|b| b.starts_with("error")),
                        "{action} {t:?}: {v:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn operator_policies_cannot_loosen_the_grant_rules() {
        let a = Authorizer::new(Some(
            r#"permit (principal in Rampart::Role::"system-admin", action, resource);"#,
        ))
        .unwrap();
        let admin = subject(&["system-admin"], &[]);
        let (p, d) = (Uuid::new_v4(), Uuid::new_v4());
        assert!(!a.may_grant(&admin, &ctx(), "security-admin", RoleScope::System, false));
        assert!(!a.may_grant(
            &admin,
            &ctx(),
            "key-user",
            RoleScope::Project { id: p, domain: d },
            false
        ));
        assert!(
            !a.authorize(&admin, "keys.use", Target::Project { id: p, domain: d }, &ctx())
                .allowed
        );
    }

    #[test]
    fn self_service_only_on_ones_own_account() {
        let a = Authorizer::new(None).unwrap();
        let s = subject(&[], &[]);
        assert!(a.authorize(&s, "self.manage", Target::User(s.user_id), &ctx()).allowed);
        assert!(
            !a.authorize(&s, "self.manage", Target::User(Uuid::new_v4()), &ctx())
                .allowed
        );
    }

    #[test]
    fn spec_13_2_5_operator_policies_express_time_windows_and_source_ranges() {
        let extra = r#"
            @id("admins-from-the-office")
            forbid (principal in Rampart::Role::"system-admin", action, resource)
            unless { context.source_ip.isInRange(ip("10.0.0.0/8")) };
            @id("no-changes-at-night")
            forbid (principal, action == Rampart::Action::"system.manage", resource)
            when { context.now.toTime() < duration("6h") };
        "#;
        let a = Authorizer::new(Some(extra)).unwrap();
        let admin = subject(&["system-admin"], &[]);
        let at = |h: u8, ip: [u8; 4]| Ctx {
            now: time::macros::datetime!(2026-11-29 0:00 UTC) + time::Duration::hours(h as i64),
            source_ip: IpAddr::from(ip),
            mfa: true,
        };
        assert!(
            a.authorize(&admin, "system.manage", Target::System, &at(12, [10, 1, 2, 3]))
                .allowed
        );
        let v = a.authorize(&admin, "system.manage", Target::System, &at(12, [192, 0, 2, 1]));
        assert!(!v.allowed);
        assert_eq!(v.because, ["admins-from-the-office"]);
        let v = a.authorize(&admin, "system.manage", Target::System, &at(3, [10, 1, 2, 3]));
        assert!(!v.allowed);
        assert_eq!(v.because, ["no-changes-at-night"]);
        assert!(
            a.authorize(&admin, "system.read", Target::System, &at(3, [10, 1, 2, 3]))
                .allowed
        );
    }

    #[test]
    fn spec_12_3_3_volume_grants_narrow_members_and_readers_but_not_project_admins() {
        let a = Authorizer::new(None).unwrap();
        let (p, d, v) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let vol = |restricted, granted| Target::Volume {
            id: v,
            project: p,
            domain: d,
            restricted,
            granted,
        };
        let member = subject(&[], &[(p, "member")]);
        let reader = subject(&[], &[(p, "reader")]);
        let padmin = subject(&[], &[(p, "project-admin")]);
        let outsider = subject(&[], &[(Uuid::new_v4(), "project-admin")]);
        let attach = volume_grant_bit("attach").unwrap();
        let read = volume_grant_bit("read").unwrap();
        let ok = |s: &Subject, action: &str, t| a.authorize(s, action, t, &ctx()).allowed;
        // No grants: the project roles decide.
        assert!(ok(&member, "volume.attach", vol(false, 0)));
        assert!(ok(&reader, "volume.read", vol(false, 0)));
        assert!(!ok(&reader, "volume.attach", vol(false, 0)), "readers never attach");
        assert!(
            !ok(&member, "volume.access", vol(false, 0)),
            "only admins change grants"
        );
        // Grants exist: a member needs one for the action.
        assert!(!ok(&member, "volume.attach", vol(true, 0)));
        assert!(!ok(&member, "volume.attach", vol(true, read)));
        assert!(ok(&member, "volume.attach", vol(true, attach)));
        assert!(!ok(&member, "volume.delete", vol(true, attach)));
        // A grant does not lift a reader above its role.
        assert!(!ok(&reader, "volume.attach", vol(true, attach)));
        assert!(ok(&reader, "volume.read", vol(true, read)));
        // Project admins keep every right; another project's admin has none.
        for action in ACTIONS.iter().filter(|x| x.starts_with("volume.")) {
            assert!(ok(&padmin, action, vol(true, 0)), "{action}");
            assert!(!ok(&outsider, action, vol(false, 0x3f)), "{action}");
        }
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// `docs/authz.md` embeds the evaluated role × action and principal tables.
    #[test]
    fn docs_authz_tables_match_the_policies() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/authz.md");
        let authz = Authorizer::new(None).unwrap();
        for (name, table) in [
            ("ROLE ACTION TABLE", role_action_table(&authz)),
            ("PRINCIPAL TABLE", principal_action_table(&authz)),
        ] {
            let doc = std::fs::read_to_string(&path).unwrap();
            let (begin, end) = (format!("<!-- BEGIN {name} -->\n"), format!("<!-- END {name} -->"));
            let start = doc.find(&begin).expect("begin marker") + begin.len();
            let stop = doc.find(&end).expect("end marker");
            // The whole document with this table as the policies give it: equal to the file
            // exactly when the table between the markers is.
            let expected = format!("{}{}{}", &doc[..start], table, &doc[stop..]);
            rampart_common::testing::golden(&path, &expected);
        }
    }

    #[test]
    fn action_constants_are_the_schema_actions() {
        assert_eq!(super::action::ALL, ACTIONS);
    }
}
