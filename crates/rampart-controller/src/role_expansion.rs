//! The database half of role expansion: a user's role assignments (direct and through its
//! groups) read and expanded to built-in roles by `rampart_iam::rules`, which also turns them
//! into an authorization subject. Depends on no other module of the controller, so both the
//! authentication middleware and the application layer can use it.

use rampart_common::Error;
use rampart_db::identity::{self, Scope};
use rampart_db::{Conn, groups};
use rampart_iam::rules;
use uuid::Uuid;

/// A role assignment's scope as the identity rules see it.
pub fn rule_scope(scope: Scope) -> rules::Scope {
    match scope {
        Scope::System => rules::Scope::System,
        Scope::Domain(d) => rules::Scope::Domain(d),
        Scope::Project(p) => rules::Scope::Project(p),
    }
}

/// Every built-in role `user_id` holds, at every scope (custom roles expanded to their bundles).
pub async fn expanded_assignments(conn: &mut Conn, user_id: Uuid) -> Result<Vec<(rules::Scope, String)>, Error> {
    let assignments = identity::role_assignments(conn, user_id).await?;
    let custom = groups::roles(conn).await?;
    Ok(rules::expand_assignments(
        assignments.into_iter().map(|a| (rule_scope(a.scope), a.role)),
        |name| custom.iter().find(|c| c.name == name).map(|c| c.implies.as_slice()),
    ))
}
