//! Fresh databases for tests, on every backend.
//!
//! SQLite always runs. PostgreSQL runs when `RAMPART_TEST_POSTGRES_URL` names a server
//! (`scripts/ci/start-postgres.sh` starts one and prints it); each test gets a database of its
//! own, dropped afterwards. With `RAMPART_TEST_REQUIRE_POSTGRES=1` (as in CI) a missing server
//! fails the test instead of skipping PostgreSQL silently.

use std::path::PathBuf;

use crate::{Backend, ConnectOptions, Db};

pub const POSTGRES_URL_ENV: &str = "RAMPART_TEST_POSTGRES_URL";
pub const POSTGRES_CA_ENV: &str = "RAMPART_TEST_POSTGRES_CA";
pub const REQUIRE_POSTGRES_ENV: &str = "RAMPART_TEST_REQUIRE_POSTGRES";

/// A database made for one test; removed when dropped.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_drop: Option<(String, String)>,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl TestDb {
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("rampart.db").display());
        TestDb {
            backend: Backend::Sqlite,
            url,
            _dir: Some(dir),
            pg_drop: None,
        }
    }

    /// A fresh PostgreSQL database, or `None` when no server is configured (and none required).
    pub async fn postgres() -> Option<TestDb> {
        let admin = match std::env::var(POSTGRES_URL_ENV) {
            Ok(url) if !url.is_empty() => url,
            _ => {
                // Counted as a skip: the PostgreSQL half of the test did not run.
                rampart_common::testing::require(
                    rampart_common::testing::Need::Postgres,
                    false,
                    "no PostgreSQL (RAMPART_TEST_POSTGRES_URL unset; scripts/ci/start-postgres.sh)",
                );
                return None;
            }
        };
        sqlx::any::install_default_drivers();
        let name = format!("rampart_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL: {e}"));
        // The name is ours (a UUID), not input: safe to format into DDL.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let url = replace_db_name(&admin, &name);
        Some(TestDb {
            backend: Backend::Postgres,
            url,
            _dir: None,
            pg_drop: Some((admin, name)),
        })
    }

    /// Every backend this run can test: SQLite, plus PostgreSQL when configured.
    pub async fn all() -> Vec<TestDb> {
        let mut v = vec![TestDb::sqlite()];
        if let Some(pg) = TestDb::postgres().await {
            v.push(pg);
        }
        v
    }

    pub async fn connect(&self) -> Db {
        Db::connect(&self.url, &ConnectOptions::default())
            .await
            .expect("connect to test database")
    }

    /// The SQLite file, for tests that inspect it.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        self._dir.as_ref().map(|d| d.path().join("rampart.db"))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.pg_drop.take() {
            // Drop may run inside a runtime: use a thread with its own.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(async {
                    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&admin).await.ok()?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await
                    .ok()
                })
            })
            .join();
        }
    }
}

/// `postgres://u:p@h:1/old?x=y` with the database name replaced.
pub fn replace_db_name(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[scheme_end..]
        .find('/')
        .map(|i| i + scheme_end)
        .unwrap_or(base.len());
    let mut out = format!("{}/{}", &base[..path_start], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}
