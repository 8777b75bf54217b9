//! The account rules of spec 13.2 as pure functions: role expansion into an authorization
//! subject, the second-factor requirement, source ranges, validity windows and the password
//! lifecycle (expiry, its warning, minimum age). The controller reads the rows and the policy
//! and asks these; nothing here touches a database or a clock.

use std::collections::BTreeSet;
use std::net::IpAddr;

use rampart_api::SecurityCompliance;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::authz::{PROJECT_ROLES, SYSTEM_ROLES, Subject};
use crate::net;
use crate::password::Violation;

/// Where a role assignment is held (a project without its domain: the subject does not need it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    System,
    Domain(Uuid),
    Project(Uuid),
}

/// A project role and the roles it includes (project-admin ⊃ member ⊃ reader).
pub fn implied_roles(role: &str) -> &'static [&'static str] {
    match role {
        "project-admin" => &["project-admin", "member", "reader"],
        "member" => &["member", "reader"],
        "reader" => &["reader"],
        "key-admin" => &["key-admin"],
        "key-user" => &["key-user"],
        _ => &[],
    }
}

/// Role assignments expanded to built-in roles: a built-in role stands for itself, a custom
/// role for its bundle (`custom` gives a custom role's bundle by name), an unknown name for
/// nothing. Sorted, without duplicates.
pub fn expand_assignments<'a>(
    assignments: impl IntoIterator<Item = (Scope, String)>,
    custom: impl Fn(&str) -> Option<&'a [String]>,
) -> Vec<(Scope, String)> {
    let mut out: Vec<(Scope, String)> = Vec::new();
    for (scope, role) in assignments {
        if rampart_api::is_builtin_role(&role) {
            out.push((scope, role));
        } else if let Some(implies) = custom(&role) {
            out.extend(implies.iter().map(|r| (scope, r.clone())));
        }
    }
    out.sort();
    out.dedup();
    out
}

/// The authorization subject of a session: all the user's roles, narrowed to one project for
/// a project-scoped token, and to the credential's roles for an application credential.
pub fn subject(
    user_id: Uuid,
    expanded: &[(Scope, String)],
    project: Option<Uuid>,
    only_roles: Option<&[String]>,
) -> Subject {
    let mut s = Subject {
        user_id,
        ..Default::default()
    };
    for (scope, role) in expanded {
        match scope {
            Scope::System if SYSTEM_ROLES.contains(&role.as_str()) => s.system_roles.push(role.clone()),
            Scope::Domain(d) if role == "domain-admin" => s.domain_admin_of.push(*d),
            Scope::Project(p) if PROJECT_ROLES.contains(&role.as_str()) => {
                if project.is_some_and(|only| only != *p) {
                    continue;
                }
                match only_roles {
                    None => s.project_roles.push((*p, role.clone())),
                    // A credential carries the roles it names that the holder's role includes.
                    Some(wanted) => s.project_roles.extend(
                        wanted
                            .iter()
                            .filter(|w| implied_roles(role).contains(&w.as_str()))
                            .map(|w| (*p, w.clone())),
                    ),
                }
            }
            _ => {}
        }
    }
    if only_roles.is_some() {
        // An application credential acts inside its project only.
        s.system_roles.clear();
        s.domain_admin_of.clear();
    }
    s.system_roles.dedup();
    s.project_roles.sort();
    s.project_roles.dedup();
    s
}

/// Role names for a token response: those that apply to the session.
pub fn role_names(s: &Subject) -> Vec<String> {
    let mut names: BTreeSet<String> = s.system_roles.iter().cloned().collect();
    if !s.domain_admin_of.is_empty() {
        names.insert("domain-admin".into());
    }
    names.extend(s.project_roles.iter().map(|(_, r)| r.clone()));
    names.into_iter().collect()
}

/// The project roles a subject may hand to an application credential: those it holds, with
/// the roles they include (a member may delegate reader). Sorted.
pub fn delegable_roles(s: &Subject) -> Vec<String> {
    s.project_roles
        .iter()
        .flat_map(|(_, r)| implied_roles(r).iter().map(|x| x.to_string()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Whether the policy wants a second factor from a user holding `expanded`.
pub fn mfa_required(policy: &SecurityCompliance, expanded: &[(Scope, String)]) -> bool {
    expanded.iter().any(|(_, r)| policy.mfa_required_roles.contains(r))
}

/// Whether the client may authenticate from `ip`: the global, domain and user ranges must all
/// allow it. A list that does not parse allows nothing (fail closed).
pub fn source_allowed(policy: &SecurityCompliance, domain_cidrs: &[String], user_cidrs: &[String], ip: IpAddr) -> bool {
    [policy.allowed_source_cidrs.as_slice(), domain_cidrs, user_cidrs]
        .iter()
        .all(|list| {
            net::parse_cidrs("allowed_source_cidrs", list)
                .map(|r| net::allowed(&r, ip))
                .unwrap_or(false)
        })
}

/// Whether an account with this validity window may be used at `now` (from inclusive, until
/// exclusive).
pub fn within_validity(
    valid_from: Option<OffsetDateTime>,
    valid_until: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> bool {
    valid_from.is_none_or(|f| now >= f) && valid_until.is_none_or(|u| now < u)
}

/// When a password set at `changed_at` expires under the policy (never with expiry off).
pub fn password_expires_at(policy: &SecurityCompliance, changed_at: Option<OffsetDateTime>) -> Option<OffsetDateTime> {
    if policy.password_expires_days == 0 {
        return None;
    }
    changed_at.map(|t| t + Duration::days(policy.password_expires_days as i64))
}

/// Whether the password must be changed before the account is used again: an administrator
/// or the first-use rule said so, or it expired.
pub fn password_change_due(
    policy: &SecurityCompliance,
    change_required: bool,
    changed_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> bool {
    change_required || password_expired(policy, changed_at, now)
}

/// Whether the password has expired at `now`.
pub fn password_expired(policy: &SecurityCompliance, changed_at: Option<OffsetDateTime>, now: OffsetDateTime) -> bool {
    password_expires_at(policy, changed_at).is_some_and(|t| t <= now)
}

/// The warning a login returns while the password expires within the policy's warning period.
pub fn expiry_warning(
    policy: &SecurityCompliance,
    expires_at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Option<String> {
    let t = expires_at?;
    (t - now <= Duration::days(policy.password_expiry_warning_days as i64)).then(|| {
        format!(
            "your password expires in {} day(s), on {}; change it with POST /v1/auth/password",
            (t - now).whole_days(),
            rampart_common::time::rfc3339(t)
        )
    })
}

/// The minimum-age rule: a password changed less than the policy's minimum age ago may not be
/// changed again by its owner (it would let them cycle through the history back to an old
/// one), unless the change is forced.
pub fn minimum_age_violation(
    policy: &SecurityCompliance,
    changed_at: Option<OffsetDateTime>,
    forced: bool,
    now: OffsetDateTime,
) -> Option<Violation> {
    let young = policy.minimum_password_age_days > 0
        && changed_at.is_some_and(|t| now - t < Duration::days(policy.minimum_password_age_days as i64));
    (!forced && young).then(|| Violation {
        rule: "minimum_password_age",
        message: format!(
            "the password was changed less than {} day(s) ago",
            policy.minimum_password_age_days
        ),
    })
}

/// When a new token expires: its lifetime from `now`, cut short by any of `limits` (the
/// account's validity window, an application credential's expiry): a token never outlives
/// what it was issued from.
pub fn token_expiry(now: OffsetDateTime, lifetime: Duration, limits: &[Option<OffsetDateTime>]) -> OffsetDateTime {
    limits.iter().flatten().fold(now + lifetime, |at, l| at.min(*l))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-06-01 12:00 UTC);

    fn s(roles: &[(Scope, &str)]) -> Vec<(Scope, String)> {
        roles.iter().map(|(s, r)| (*s, r.to_string())).collect()
    }

    #[test]
    fn project_roles_include_the_lesser_ones() {
        assert_eq!(implied_roles("project-admin"), &["project-admin", "member", "reader"]);
        assert_eq!(implied_roles("member"), &["member", "reader"]);
        assert_eq!(implied_roles("key-admin"), &["key-admin"]);
        assert!(implied_roles("system-admin").is_empty());
        assert!(implied_roles("nonsense").is_empty());
    }

    #[test]
    fn custom_roles_expand_to_their_bundle_and_unknown_names_to_nothing() {
        let p = Uuid::from_u128(7);
        let bundle = vec!["member".to_string(), "key-user".to_string()];
        let out = expand_assignments(
            s(&[
                (Scope::Project(p), "ops"),
                (Scope::Project(p), "member"),
                (Scope::System, "auditor"),
                (Scope::Project(p), "gone"),
            ]),
            |name| (name == "ops").then_some(bundle.as_slice()),
        );
        assert_eq!(
            out,
            s(&[
                (Scope::System, "auditor"),
                (Scope::Project(p), "key-user"),
                (Scope::Project(p), "member"),
            ])
        );
    }

    #[test]
    fn subject_narrows_to_the_token_project() {
        let (p1, p2, d) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let held = s(&[
            (Scope::System, "system-admin"),
            (Scope::Domain(d), "domain-admin"),
            (Scope::Domain(d), "member"),
            (Scope::Project(p1), "member"),
            (Scope::Project(p2), "reader"),
            (Scope::System, "member"),
        ]);
        let all = subject(Uuid::nil(), &held, None, None);
        assert_eq!(all.system_roles, vec!["system-admin"]);
        assert_eq!(all.domain_admin_of, vec![d]);
        assert_eq!(all.project_roles.len(), 2);
        let one = subject(Uuid::nil(), &held, Some(p2), None);
        assert_eq!(one.project_roles, vec![(p2, "reader".to_string())]);
        assert_eq!(
            one.system_roles,
            vec!["system-admin"],
            "a project token keeps system roles"
        );
        assert_eq!(
            role_names(&all),
            vec!["domain-admin", "member", "reader", "system-admin"]
        );
    }

    #[test]
    fn a_credential_carries_only_named_roles_its_holder_includes() {
        let p = Uuid::from_u128(1);
        let held = s(&[(Scope::System, "system-admin"), (Scope::Project(p), "member")]);
        let wanted = vec!["reader".to_string(), "project-admin".to_string()];
        let c = subject(Uuid::nil(), &held, Some(p), Some(&wanted));
        assert_eq!(c.project_roles, vec![(p, "reader".to_string())]);
        assert!(c.system_roles.is_empty(), "credentials act inside their project only");
        assert!(c.domain_admin_of.is_empty());
    }

    #[test]
    fn delegable_roles_are_the_held_ones_with_what_they_include() {
        let p = Uuid::from_u128(1);
        let sub = subject(
            Uuid::nil(),
            &s(&[(Scope::Project(p), "member"), (Scope::Project(p), "key-user")]),
            Some(p),
            None,
        );
        assert_eq!(delegable_roles(&sub), vec!["key-user", "member", "reader"]);
        assert!(delegable_roles(&Subject::default()).is_empty());
    }

    #[test]
    fn spec_13_2_mfa_required_by_role() {
        let policy = SecurityCompliance {
            mfa_required_roles: vec!["system-admin".into()],
            ..Default::default()
        };
        assert!(mfa_required(&policy, &s(&[(Scope::System, "system-admin")])));
        assert!(!mfa_required(&policy, &s(&[(Scope::Project(Uuid::nil()), "member")])));
        let off = SecurityCompliance {
            mfa_required_roles: vec![],
            ..Default::default()
        };
        assert!(!mfa_required(&off, &s(&[(Scope::System, "system-admin")])));
    }

    #[test]
    fn spec_13_2_5_every_source_list_must_allow() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mut policy = SecurityCompliance {
            allowed_source_cidrs: vec![],
            ..Default::default()
        };
        assert!(source_allowed(&policy, &[], &[], ip));
        assert!(source_allowed(
            &policy,
            &["10.0.0.0/8".into()],
            &["10.1.0.0/16".into()],
            ip
        ));
        assert!(!source_allowed(
            &policy,
            &["10.0.0.0/8".into()],
            &["192.168.0.0/16".into()],
            ip
        ));
        assert!(!source_allowed(&policy, &["172.16.0.0/12".into()], &[], ip));
        policy.allowed_source_cidrs = vec!["192.168.0.0/16".into()];
        assert!(!source_allowed(&policy, &[], &[], ip));
        // A list that does not parse allows nothing.
        policy.allowed_source_cidrs = vec![];
        assert!(!source_allowed(&policy, &[], &["not a range".into()], ip));
    }

    #[test]
    fn spec_13_2_validity_window_bounds() {
        let (a, b) = (NOW - Duration::hours(1), NOW + Duration::hours(1));
        assert!(within_validity(None, None, NOW));
        assert!(within_validity(Some(a), Some(b), NOW));
        assert!(within_validity(Some(NOW), None, NOW), "from is inclusive");
        assert!(!within_validity(None, Some(NOW), NOW), "until is exclusive");
        assert!(!within_validity(Some(b), None, NOW));
        assert!(!within_validity(None, Some(a), NOW));
    }

    #[test]
    fn spec_13_2_password_expiry_and_its_warning() {
        let mut policy = SecurityCompliance {
            password_expires_days: 0,
            password_expiry_warning_days: 7,
            ..Default::default()
        };
        assert_eq!(password_expires_at(&policy, Some(NOW)), None, "expiry off");
        policy.password_expires_days = 90;
        assert_eq!(password_expires_at(&policy, None), None, "never set");
        let changed = NOW - Duration::days(85);
        let at = password_expires_at(&policy, Some(changed)).unwrap();
        assert_eq!(at, NOW + Duration::days(5));
        assert!(!password_expired(&policy, Some(changed), NOW));
        assert!(password_expired(&policy, Some(changed), at));
        assert!(!password_change_due(&policy, false, Some(changed), NOW));
        assert!(password_change_due(&policy, true, Some(changed), NOW));
        assert!(password_change_due(
            &policy,
            false,
            Some(changed),
            at + Duration::seconds(1)
        ));
        let w = expiry_warning(&policy, Some(at), NOW).unwrap();
        assert!(w.contains("expires in 5 day(s)"), "{w}");
        assert_eq!(expiry_warning(&policy, Some(NOW + Duration::days(8)), NOW), None);
        assert_eq!(expiry_warning(&policy, None, NOW), None);
    }

    #[test]
    fn spec_13_2_minimum_password_age() {
        let policy = SecurityCompliance {
            minimum_password_age_days: 1,
            ..Default::default()
        };
        let recent = Some(NOW - Duration::hours(2));
        let v = minimum_age_violation(&policy, recent, false, NOW).unwrap();
        assert_eq!(v.rule, "minimum_password_age");
        assert!(
            minimum_age_violation(&policy, recent, true, NOW).is_none(),
            "a forced change is allowed"
        );
        assert!(minimum_age_violation(&policy, Some(NOW - Duration::days(2)), false, NOW).is_none());
        assert!(minimum_age_violation(&policy, None, false, NOW).is_none());
        let off = SecurityCompliance {
            minimum_password_age_days: 0,
            ..Default::default()
        };
        assert!(minimum_age_violation(&off, recent, false, NOW).is_none());
    }

    #[test]
    fn a_token_never_outlives_its_limits() {
        let life = Duration::hours(8);
        assert_eq!(token_expiry(NOW, life, &[]), NOW + life);
        assert_eq!(token_expiry(NOW, life, &[None, None]), NOW + life);
        let soon = NOW + Duration::hours(1);
        assert_eq!(
            token_expiry(NOW, life, &[Some(NOW + Duration::days(1)), Some(soon)]),
            soon
        );
    }
}
