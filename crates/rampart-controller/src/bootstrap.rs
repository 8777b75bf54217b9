//! First start: the `default` domain, the `admin` project and the `admin` user with the
//! `system-admin` role and a one-time password in `<data-dir>/bootstrap-admin-password` (0600),
//! which must be changed at first use (API.md "Bootstrap and login").

use std::path::Path;

use rampart_common::fsutil;
use rampart_db::identity::{self, NewUser, Scope};
use rampart_db::{Db, DbError, meta};
use rampart_iam::{password, secrets};
use time::OffsetDateTime;

use crate::routes::auth::BOOTSTRAP_ADMIN_KEY;

pub const PASSWORD_FILE: &str = "bootstrap-admin-password";

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
    let hash = {
        let pw = pw.expose().to_string();
        tokio::task::spawn_blocking(move || password::hash(&pw))
            .await
            .map_err(|_| BootstrapError::Hash)?
            .map_err(|_| BootstrapError::Hash)?
    };
    // The file is written before the commit: a crash in between leaves a file for an admin
    // that does not exist (rewritten at the next start), never an admin nobody can log in as.
    let file = data_dir.join(PASSWORD_FILE);
    fsutil::write_secret(&file, format!("{}\n", pw.expose()).as_bytes()).map_err(|source| BootstrapError::Write {
        path: file.clone(),
        source,
    })?;
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
        Ok::<_, DbError>(())
    }
    .await;
    match result {
        Ok(()) => {
            rampart_db::Db::commit(tx).await?;
            tracing::info!(path = %file.display(), "bootstrapped domain 'default', project 'admin' and user 'admin'; the one-time password is in the file");
            Ok(true)
        }
        Err(DbError::Conflict(_)) => {
            // Another controller on the same database bootstrapped first: its password counts.
            drop(tx);
            let _ = std::fs::remove_file(&file);
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}
