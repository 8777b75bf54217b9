//! The key store of rampart-db (`rampart_kms::storage::KeyStore` over `kms_keys` and
//! `kms_key_versions`): its contract on every backend, and what a database dump holds.

use std::sync::Arc;

use rampart_db::identity;
use rampart_db::kms::keys;
use rampart_db::testing::TestDb;
use rampart_kms::envelope::{EncryptionContext, MaterialId};
use rampart_kms::soft::InsecureSoftwareBackend;
use rampart_kms::storage::KeyStore;
use rampart_kms::{KeyBackend, KeyService};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

fn now() -> OffsetDateTime {
    // Millisecond precision, as stored.
    rampart_common::time::from_ms(rampart_common::time::to_ms(OffsetDateTime::now_utc()))
}

async fn project(db: &rampart_db::Db, t: OffsetDateTime) -> Uuid {
    let mut c = db.conn().await.unwrap();
    let d = identity::insert_domain(&mut c, "default", t).await.unwrap();
    identity::insert_project(&mut c, d.id, "p", t).await.unwrap().id
}

#[tokio::test]
async fn key_store_checks_revisions_and_round_trips_keys_on_every_backend() {
    let svc = KeyService::new(Arc::new(InsecureSoftwareBackend::new()));
    for t in TestDb::all().await {
        let db = t.connect().await;
        let t0 = now();
        let p = project(&db, t0).await;
        let mut a = svc.create_key(p, "a", Some(30), t0).unwrap();
        let b = svc.create_key(p, "b", None, t0).unwrap();
        let mut c = db.conn().await.unwrap();
        let mut store = keys(&mut c);
        store.insert(&b).await.unwrap();
        store.insert(&a).await.unwrap();
        let dup = svc.create_key(p, "a", None, t0).unwrap();
        assert!(store.insert(&dup).await.is_err(), "a second key named a");

        let loaded = store.get(p, a.id).await.unwrap().unwrap();
        assert_eq!((&loaded.key, loaded.revision), (&a, 0));
        assert!(
            store.get(Uuid::new_v4(), a.id).await.unwrap().is_none(),
            "in another project"
        );

        svc.rotate(&mut a, t0 + Duration::days(1)).unwrap();
        assert!(store.save(&a, 0).await.unwrap());
        assert!(!store.save(&a, 0).await.unwrap(), "a writer holding revision 0 loses");
        let loaded = store.get(p, a.id).await.unwrap().unwrap();
        assert_eq!((&loaded.key, loaded.revision), (&a, 1));
        assert_eq!(loaded.key.versions.len(), 2);

        let names: Vec<String> = store
            .list(p, None, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.key.name)
            .collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(store.list(p, Some("a"), 10).await.unwrap().len(), 1);

        assert!(store.due(t0, 10).await.unwrap().is_empty());
        assert_eq!(store.due(t0 + Duration::days(40), 10).await.unwrap(), vec![(p, a.id)]);

        a.schedule_deletion(Some(7), t0).unwrap();
        a.destroy(t0 + Duration::days(8)).unwrap();
        assert!(store.save(&a, 1).await.unwrap());
        let destroyed = store.get(p, a.id).await.unwrap().unwrap().key;
        assert!(
            destroyed.versions.iter().all(|v| v.wrapped.is_none()),
            "material dropped"
        );
        drop(c);
        db.close().await;
    }
}

#[tokio::test]
async fn spec_13_3_5_database_dump_holds_no_plaintext_key() {
    let soft_backend = Arc::new(InsecureSoftwareBackend::new());
    type Revealing = Option<Arc<InsecureSoftwareBackend>>;
    let mut backends: Vec<(Arc<dyn KeyBackend>, Revealing)> = vec![(soft_backend.clone(), Some(soft_backend))];
    if let Some(h) = rampart_kms::testutil::backend() {
        backends.push((h as Arc<dyn KeyBackend>, None));
    }
    for (backend, reveal) in backends {
        let svc = KeyService::new(backend);
        let t = TestDb::sqlite();
        let path = t.sqlite_path().unwrap();
        let db = t.connect().await;
        let t0 = now();
        let project = project(&db, t0).await;
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        let mut wrapped = Vec::new();
        let mut c = db.conn().await.unwrap();
        for name in ["disks", "objects"] {
            let mut key = svc.create_key(project, name, Some(90), t0).unwrap();
            keys(&mut c).insert(&key).await.unwrap();
            svc.rotate(&mut key, t0 + Duration::days(1)).unwrap();
            assert!(keys(&mut c).save(&key, 0).await.unwrap());
            let ctx: EncryptionContext = [("volume".to_string(), name.to_string())].into_iter().collect();
            secrets.push(svc.generate_data_key(&key, &ctx, None).unwrap().plaintext.to_vec());
            let canary = format!("PLAINTEXT-CANARY-{name}-0123456789").into_bytes();
            svc.encrypt(&key, &canary, &ctx).unwrap();
            secrets.push(canary);
            for v in &key.versions {
                wrapped.push(v.wrapped.as_ref().unwrap().to_base64());
                if let Some(soft) = &reveal {
                    // The software stand-in can show its material, so the test can look for it.
                    let id = MaterialId {
                        project,
                        key_id: key.id,
                        version: v.version,
                    };
                    secrets.push(soft.reveal_for_test(&id, v.wrapped.as_ref().unwrap()).to_vec());
                }
            }
        }
        drop(c);
        // Closing checkpoints the write-ahead log into the file.
        db.close().await;
        let file = std::fs::read(&path).unwrap();
        assert!(
            file.windows(wrapped[0].len()).any(|w| w == wrapped[0].as_bytes()),
            "the wrapped material is in the file"
        );
        rampart_common::testing::assert_no_secret(&file, &secrets);
        for side in ["-wal", "-journal"] {
            if let Ok(b) = std::fs::read(format!("{}{side}", path.display())) {
                rampart_common::testing::assert_no_secret(&b, &secrets);
            }
        }
        // And the SQL text of `.dump`, when the sqlite3 shell is there.
        if let Ok(out) = std::process::Command::new("sqlite3").arg(&path).arg(".dump").output() {
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("kms_key_versions") && wrapped.iter().all(|w| text.contains(w.as_str())));
            rampart_common::testing::assert_no_secret(&out.stdout, &secrets);
        } else {
            eprintln!("note: sqlite3 not installed: checked the database file only");
        }
    }
}
