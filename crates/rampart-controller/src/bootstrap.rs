//! First start: the `default` domain, the `admin` project, the `admin` user with the
//! `system-admin` role and a one-time password in `<data-dir>/bootstrap-admin-password` (0600),
//! and the `security` user with the `security-admin` role and its own one-time password in
//! `<data-dir>/bootstrap-security-password` (0600); both must be changed at first use (API.md
//! "Bootstrap and login"). Separation of duties starts here (spec 13.1.1-2): only security
//! admins appoint security admins and auditors, so the first one cannot come from the system
//! admin; later, `rampart admin recover-security-admin` (host root, controller stopped) is the
//! break-glass way to a new one.

use std::path::Path;

use rampart_common::fsutil;
use rampart_db::identity::{self, NewUser, Scope};
use rampart_db::{Db, DbError, meta};
use rampart_iam::{password, secrets};
use time::OffsetDateTime;

/// Where the bootstrap users' ids are kept: their one-time password files go once they change
/// their passwords.
pub const BOOTSTRAP_ADMIN_KEY: &str = "bootstrap_admin_user_id";
pub const BOOTSTRAP_SECURITY_KEY: &str = "bootstrap_security_user_id";
pub const PASSWORD_FILE: &str = "bootstrap-admin-password";
pub const SECURITY_PASSWORD_FILE: &str = "bootstrap-security-password";
/// The bootstrap security admin's name.
pub const SECURITY_ADMIN: &str = "security";

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot write {path}")]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("password hashing failed")]
    Hash,
}

/// Creates the bootstrap identity if the database has none; true when it did.
pub async fn ensure(db: &Db, data_dir: &Path, now: OffsetDateTime) -> Result<bool, BootstrapError> {
    {
        let mut conn = db.conn().await?;
        if identity::find_domain(&mut conn, "default").await?.is_some() {
            return Ok(false);
        }
    }
    let pw = secrets::random_password(5);
    let security_pw = secrets::random_password(5);
    let (hash, security_hash) = {
        let (a, b) = (pw.expose().to_string(), security_pw.expose().to_string());
        tokio::task::spawn_blocking(move || {
            Ok::<_, ()>((password::hash(&a).map_err(|_| ())?, password::hash(&b).map_err(|_| ())?))
        })
        .await
        .map_err(|_| BootstrapError::Hash)?
        .map_err(|_| BootstrapError::Hash)?
    };
    // The files are written before the commit: a crash in between leaves files for admins
    // that do not exist (rewritten at the next start), never an admin nobody can log in as.
    let file = data_dir.join(PASSWORD_FILE);
    let security_file = data_dir.join(SECURITY_PASSWORD_FILE);
    for (path, secret) in [(&file, &pw), (&security_file, &security_pw)] {
        fsutil::write_secret(path, format!("{}\n", secret.expose()).as_bytes()).map_err(|source| {
            BootstrapError::Write {
                path: path.clone(),
                source,
            }
        })?;
    }
    let mut tx = db.begin().await?;
    let result = async {
        let domain = identity::insert_domain(&mut tx, "default", now).await?;
        let project = identity::insert_project(&mut tx, domain.id, "admin", now).await?;
        let user = identity::insert_user(
            &mut tx,
            NewUser {
                domain_id: domain.id,
                name: "admin",
                password_hash: Some(&hash),
                password_change_required: true,
            },
            now,
        )
        .await?;
        identity::assign_role(&mut tx, user.id, "system-admin", Scope::System, now).await?;
        identity::assign_role(&mut tx, user.id, "project-admin", Scope::Project(project.id), now).await?;
        meta::set(&mut tx, BOOTSTRAP_ADMIN_KEY, &user.id.to_string()).await?;
        let security = identity::insert_user(
            &mut tx,
            NewUser {
                domain_id: domain.id,
                name: SECURITY_ADMIN,
                password_hash: Some(&security_hash),
                password_change_required: true,
            },
            now,
        )
        .await?;
        identity::assign_role(&mut tx, security.id, "security-admin", Scope::System, now).await?;
        meta::set(&mut tx, BOOTSTRAP_SECURITY_KEY, &security.id.to_string()).await?;
        Ok::<_, DbError>(())
    }
    .await;
    match result {
        Ok(()) => {
            rampart_db::Db::commit(tx).await?;
            tracing::info!(path = %file.display(), security = %security_file.display(), "bootstrapped domain 'default', project 'admin', user 'admin' (system-admin) and user 'security' (security-admin); their one-time passwords are in the files");
            Ok(true)
        }
        Err(DbError::Conflict(_)) => {
            // Another controller on the same database bootstrapped first: its password counts.
            drop(tx);
            let _ = std::fs::remove_file(&file);
            let _ = std::fs::remove_file(&security_file);
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// What a break-glass recovery did.
#[derive(Debug)]
pub struct Recovered {
    pub user_id: uuid::Uuid,
    pub created: bool,
    pub password_file: std::path::PathBuf,
}

/// Break-glass (`rampart admin recover-security-admin`, host root, controller stopped): makes
/// `name` in the default domain a usable security admin again — created if missing, enabled,
/// unlocked, its window and sources cleared, its second factor removed, every session and
/// application credential revoked, `security-admin` granted — with a new one-time password
/// written to `<data-dir>/bootstrap-security-password` (0600), to be changed at first login
/// where a second factor is enrolled again. The caller records it in the audit trail.
pub async fn recover_security_admin(
    db: &Db,
    data_dir: &Path,
    name: &str,
    now: OffsetDateTime,
) -> Result<Recovered, BootstrapError> {
    let pw = secrets::random_password(5);
    let hash = {
        let pw = pw.expose().to_string();
        tokio::task::spawn_blocking(move || password::hash(&pw))
            .await
            .map_err(|_| BootstrapError::Hash)?
            .map_err(|_| BootstrapError::Hash)?
    };
    let file = data_dir.join(SECURITY_PASSWORD_FILE);
    let mut tx = db.begin().await?;
    let domain = identity::find_domain(&mut tx, "default")
        .await?
        .ok_or_else(|| DbError::Corrupt("the default domain is missing: start the controller once first".into()))?;
    let (mut user, created) = match identity::find_user(&mut tx, domain.id, name).await? {
        Some(u) => (u, false),
        None => (
            identity::insert_user(
                &mut tx,
                NewUser {
                    domain_id: domain.id,
                    name,
                    password_hash: Some(&hash),
                    password_change_required: true,
                },
                now,
            )
            .await?,
            true,
        ),
    };
    user.enabled = true;
    user.valid_from = None;
    user.valid_until = None;
    user.allowed_source_cidrs.clear();
    user.password_change_required = true;
    identity::update_user_profile(&mut tx, &user).await?;
    identity::set_password(&mut tx, user.id, &hash, true, now).await?;
    identity::remove_totp(&mut tx, user.id).await?;
    identity::unlock(&mut tx, user.id).await?;
    identity::revoke_user_tokens(&mut tx, user.id, now).await?;
    identity::assign_role(&mut tx, user.id, "security-admin", Scope::System, now).await?;
    meta::set(&mut tx, BOOTSTRAP_SECURITY_KEY, &user.id.to_string()).await?;
    fsutil::write_secret(&file, format!("{}\n", pw.expose()).as_bytes()).map_err(|source| BootstrapError::Write {
        path: file.clone(),
        source,
    })?;
    rampart_db::Db::commit(tx).await?;
    Ok(Recovered {
        user_id: user.id,
        created,
        password_file: file,
    })
}
