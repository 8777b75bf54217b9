//! The key service against both backends: every scenario runs on the software stand-in (fast,
//! always) and on a real SoftHSM2 token (skipped with a note when SoftHSM2 is absent, fatal
//! with `RAMPART_TEST_REQUIRE_HSM=1`).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rampart_common::time::{Clock, ManualClock};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use crate::backend::KeyBackend;
use crate::envelope::{EncryptionContext, Envelope, MaterialId, WrappedKey};
use crate::error::{HsmError, KmsError};
use crate::lifecycle::{Key, KeyState, Maintenance};
use crate::service::{KeyAuditFacts, KeyOperation, KeyService};
use crate::soft::InsecureSoftwareBackend;
use crate::storage::{self, KeyStore, MemoryKeyStore};

fn soft() -> Arc<dyn KeyBackend> {
    Arc::new(InsecureSoftwareBackend::new())
}

fn hsm() -> Option<Arc<dyn KeyBackend>> {
    crate::testutil::backend().map(|b| b as Arc<dyn KeyBackend>)
}

fn t0() -> OffsetDateTime {
    datetime!(2026-06-01 0:00 UTC)
}

fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn setup(b: Arc<dyn KeyBackend>) -> (KeyService, Key) {
    let svc = KeyService::new(b);
    let key = svc.create_key(Uuid::new_v4(), "volumes", None, t0()).unwrap();
    (svc, key)
}

fn flip(ciphertext: &str, at: usize) -> String {
    let mut b = STANDARD.decode(ciphertext).unwrap();
    b[at] ^= 0x01;
    STANDARD.encode(b)
}

fn spec_12_4_1_encrypt_decrypt_round_trip_with_context(b: Arc<dyn KeyBackend>) {
    let (svc, key) = setup(b);
    let c = ctx(&[("tenant", "t-1"), ("volume", "vol-9")]);
    let enc = svc.encrypt(&key, b"attack at dawn", &c).unwrap();
    assert_eq!(enc.key_version, 1);
    let env = Envelope::from_base64(&enc.ciphertext).unwrap();
    assert_eq!(env.header.key_id, key.id);
    assert_eq!(env.header.key_version, 1);
    assert_eq!(env.sealed.len(), 14 + 16, "ciphertext plus a 128-bit tag");
    let dec = svc.decrypt(&key, &enc.ciphertext, &c).unwrap();
    assert_eq!(&dec.plaintext[..], b"attack at dawn");
    assert!(!format!("{dec:?}").contains("attack"));
    // Empty plaintext and empty context work too.
    let e = svc.encrypt(&key, b"", &EncryptionContext::new()).unwrap();
    assert!(
        svc.decrypt(&key, &e.ciphertext, &EncryptionContext::new())
            .unwrap()
            .plaintext
            .is_empty()
    );
    // Two encryptions of one plaintext differ (fresh nonce from the backend's generator).
    let again = svc.encrypt(&key, b"attack at dawn", &c).unwrap();
    assert_ne!(again.ciphertext, enc.ciphertext);
}

fn spec_12_4_1_wrong_context_is_context_mismatch(b: Arc<dyn KeyBackend>) {
    let (svc, key) = setup(b);
    let c = ctx(&[("volume", "vol-1")]);
    let enc = svc.encrypt(&key, b"secret", &c).unwrap();
    for wrong in [
        ctx(&[("volume", "vol-2")]),
        EncryptionContext::new(),
        ctx(&[("volume", "vol-1"), ("x", "y")]),
    ] {
        let e = svc.decrypt(&key, &enc.ciphertext, &wrong).unwrap_err();
        assert!(matches!(e, KmsError::ContextMismatch), "{e:?}");
        assert_eq!(e.code(), "context_mismatch");
    }
}

fn spec_13_3_6_tampered_ciphertext_is_invalid_ciphertext(b: Arc<dyn KeyBackend>) {
    let (svc, key) = setup(b);
    let c = ctx(&[("volume", "vol-1")]);
    let enc = svc.encrypt(&key, b"0123456789abcdef", &c).unwrap();
    let len = STANDARD.decode(&enc.ciphertext).unwrap().len();
    // Nonce, ciphertext and tag bytes: authentication fails, one error for all.
    for at in 33..len {
        let e = svc.decrypt(&key, &flip(&enc.ciphertext, at), &c).unwrap_err();
        assert!(matches!(e, KmsError::InvalidCiphertext), "byte {at}: {e:?}");
        assert_eq!(e.to_string(), "the ciphertext is not valid");
    }
    // Header bytes: refused before or by authentication, never decrypted.
    for at in 0..33 {
        let e = svc.decrypt(&key, &flip(&enc.ciphertext, at), &c).unwrap_err();
        assert!(
            matches!(
                e,
                KmsError::InvalidCiphertext
                    | KmsError::KeyMismatch
                    | KmsError::UnknownKeyVersion { .. }
                    | KmsError::VersionBelowMinimum { .. }
                    | KmsError::ContextMismatch
            ),
            "byte {at}: {e:?}"
        );
    }
    let truncated = STANDARD.encode(&STANDARD.decode(&enc.ciphertext).unwrap()[..len - 1]);
    assert!(matches!(
        svc.decrypt(&key, &truncated, &c),
        Err(KmsError::InvalidCiphertext)
    ));
    assert!(matches!(
        svc.decrypt(&key, "not base64!", &c),
        Err(KmsError::InvalidCiphertext)
    ));
}

fn spec_13_3_6_wrong_key_is_key_mismatch_and_relabelling_fails(b: Arc<dyn KeyBackend>) {
    let svc = KeyService::new(b);
    let project = Uuid::new_v4();
    let a = svc.create_key(project, "a", None, t0()).unwrap();
    let other = svc.create_key(project, "b", None, t0()).unwrap();
    let c = EncryptionContext::new();
    let enc = svc.encrypt(&a, b"for a only", &c).unwrap();
    let e = svc.decrypt(&other, &enc.ciphertext, &c).unwrap_err();
    assert!(matches!(e, KmsError::KeyMismatch), "{e:?}");
    // Rewriting the header to name the other key: its key and the associated data differ.
    let mut env = Envelope::from_base64(&enc.ciphertext).unwrap();
    env.header.key_id = other.id;
    let e = svc.decrypt(&other, &env.to_base64(), &c).unwrap_err();
    assert!(matches!(e, KmsError::InvalidCiphertext), "{e:?}");
}

fn spec_13_3_8_old_version_decrypts_after_rotation_until_minimum_passes_it(b: Arc<dyn KeyBackend>) {
    let (svc, mut key) = setup(b);
    let c = ctx(&[("object", "o-1")]);
    let v1 = svc.encrypt(&key, b"written under v1", &c).unwrap();
    assert_eq!(svc.rotate(&mut key, t0() + Duration::days(1)).unwrap(), 2);
    let v2 = svc.encrypt(&key, b"written under v2", &c).unwrap();
    assert_eq!(v2.key_version, 2);
    assert_eq!(
        &svc.decrypt(&key, &v1.ciphertext, &c).unwrap().plaintext[..],
        b"written under v1"
    );
    // Re-encrypt moves the old ciphertext to the primary version without showing plaintext.
    let moved = svc.re_encrypt(&key, &v1.ciphertext, &c, &key, &c).unwrap();
    assert_eq!((moved.key_version, moved.source_key_version), (2, 1));
    key.set_min_decryption_version(2, t0() + Duration::days(2)).unwrap();
    let e = svc.decrypt(&key, &v1.ciphertext, &c).unwrap_err();
    assert!(
        matches!(e, KmsError::VersionBelowMinimum { version: 1, minimum: 2 }),
        "{e:?}"
    );
    assert_eq!(e.code(), "version_below_minimum");
    assert_eq!(
        &svc.decrypt(&key, &moved.ciphertext, &c).unwrap().plaintext[..],
        b"written under v1"
    );
    assert_eq!(
        &svc.decrypt(&key, &v2.ciphertext, &c).unwrap().plaintext[..],
        b"written under v2"
    );
}

fn spec_13_3_1_disabled_pending_and_destroyed_keys_refuse_use(b: Arc<dyn KeyBackend>) {
    let (svc, mut key) = setup(b);
    let c = EncryptionContext::new();
    let enc = svc.encrypt(&key, b"x", &c).unwrap();
    key.disable(t0()).unwrap();
    for r in [
        svc.encrypt(&key, b"x", &c).map(|_| ()),
        svc.decrypt(&key, &enc.ciphertext, &c).map(|_| ()),
        svc.generate_data_key(&key, &c, None).map(|_| ()),
    ] {
        assert_eq!(r.unwrap_err().code(), "key_disabled");
    }
    key.enable(t0()).unwrap();
    let at = key.schedule_deletion(Some(7), t0()).unwrap();
    assert_eq!(
        svc.decrypt(&key, &enc.ciphertext, &c).unwrap_err().code(),
        "key_pending_deletion"
    );
    assert_eq!(svc.encrypt(&key, b"x", &c).unwrap_err().code(), "key_pending_deletion");
    key.cancel_deletion(t0()).unwrap();
    assert_eq!(key.state, KeyState::Disabled);
    key.enable(t0()).unwrap();
    assert!(svc.decrypt(&key, &enc.ciphertext, &c).is_ok());
    key.schedule_deletion(Some(7), t0()).unwrap();
    assert_eq!(svc.run_maintenance(&mut key, at).unwrap(), Some(Maintenance::Destroy));
    assert_eq!(
        svc.decrypt(&key, &enc.ciphertext, &c).unwrap_err().code(),
        "key_destroyed"
    );
    // Even if someone flips the stored state back, there is no material left to use.
    key.state = KeyState::Enabled;
    assert_eq!(
        svc.decrypt(&key, &enc.ciphertext, &c).unwrap_err().code(),
        "key_destroyed"
    );
}

fn spec_12_4_1_generate_data_key_returns_plaintext_and_its_ciphertext(b: Arc<dyn KeyBackend>) {
    let (svc, key) = setup(b);
    let c = ctx(&[("volume", "vol-7")]);
    let dk = svc.generate_data_key(&key, &c, None).unwrap();
    assert_eq!(dk.plaintext.len(), 32);
    assert!(!format!("{dk:?}").contains(&hex::encode(&dk.plaintext[..4])));
    let back = svc.decrypt(&key, &dk.ciphertext, &c).unwrap();
    assert_eq!(&back.plaintext[..], &dk.plaintext[..]);
    let other = svc.generate_data_key(&key, &c, Some(64)).unwrap();
    assert_eq!(other.plaintext.len(), 64);
    assert_ne!(&other.plaintext[..32], &dk.plaintext[..]);
    for bad in [0, 8, 65] {
        assert_eq!(
            svc.generate_data_key(&key, &c, Some(bad)).unwrap_err().code(),
            "validation_failed"
        );
    }
}

fn spec_12_4_1_re_encrypt_between_keys(b: Arc<dyn KeyBackend>) {
    let svc = KeyService::new(b);
    let project = Uuid::new_v4();
    let a = svc.create_key(project, "a", None, t0()).unwrap();
    let target = svc.create_key(project, "b", None, t0()).unwrap();
    let ca = ctx(&[("k", "a")]);
    let cb = ctx(&[("k", "b")]);
    let enc = svc.encrypt(&a, b"moving", &ca).unwrap();
    let r = svc.re_encrypt(&a, &enc.ciphertext, &ca, &target, &cb).unwrap();
    assert_eq!(r.source_key_id, a.id);
    assert_eq!(
        &svc.decrypt(&target, &r.ciphertext, &cb).unwrap().plaintext[..],
        b"moving"
    );
    assert_eq!(
        svc.re_encrypt(&a, &enc.ciphertext, &cb, &target, &cb)
            .unwrap_err()
            .code(),
        "context_mismatch"
    );
}

fn spec_13_3_6_altered_wrapped_material_or_binding_fails_unwrap(b: Arc<dyn KeyBackend>) {
    let (svc, key) = setup(b.clone());
    let id = MaterialId {
        project: key.project,
        key_id: key.id,
        version: 1,
    };
    let wrapped = key.versions[0].wrapped.clone().unwrap();
    let nonce = [9u8; 12];
    let aad = b"associated";
    assert!(b.encrypt(&id, &wrapped, &nonce, aad, b"p").is_ok());
    // Every single flipped byte of the wrapped material.
    for at in 0..wrapped.as_bytes().len() {
        let mut bytes = wrapped.as_bytes().to_vec();
        bytes[at] ^= 0x01;
        let e = b
            .encrypt(&id, &WrappedKey::from_bytes(bytes), &nonce, aad, b"p")
            .unwrap_err();
        assert!(
            matches!(e, HsmError::WrappedKeyInvalid | HsmError::WrappedKeyFormat { .. }),
            "byte {at}: {e:?}"
        );
    }
    // The same material presented as another version or another key of the project.
    for other in [
        MaterialId { version: 2, ..id },
        MaterialId {
            key_id: Uuid::new_v4(),
            ..id
        },
    ] {
        let e = b.encrypt(&other, &wrapped, &nonce, aad, b"p").unwrap_err();
        assert!(matches!(e, HsmError::WrappedKeyInvalid), "{e:?}");
    }
    // Through the service: a swapped row is an internal integrity failure, not a decryption.
    let enc = svc.encrypt(&key, b"x", &EncryptionContext::new()).unwrap();
    let mut altered = key.clone();
    let mut bytes = wrapped.as_bytes().to_vec();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    altered.versions[0].wrapped = Some(WrappedKey::from_bytes(bytes));
    assert_eq!(
        svc.decrypt(&altered, &enc.ciphertext, &EncryptionContext::new())
            .unwrap_err()
            .code(),
        "internal_error"
    );
}

fn spec_13_3_3_reconciler_rotates_by_period_on_a_movable_clock(b: Arc<dyn KeyBackend>) {
    let clock = ManualClock::new(t0());
    let svc = KeyService::new(b);
    let mut key = svc.create_key(Uuid::new_v4(), "auto", Some(30), clock.now()).unwrap();
    let c = EncryptionContext::new();
    let first = svc.encrypt(&key, b"day zero", &c).unwrap();
    let mut rotations = 0;
    // One reconciler pass per day for 100 days.
    for _ in 0..100 {
        clock.advance(Duration::days(1));
        if let Some(m) = svc.run_maintenance(&mut key, clock.now()).unwrap() {
            assert_eq!(m, Maintenance::Rotate);
            rotations += 1;
        }
    }
    assert_eq!(rotations, 3, "days 30, 60 and 90");
    assert_eq!(key.primary_version, 4);
    assert_eq!(key.last_rotated_at, t0() + Duration::days(90));
    assert_eq!(key.next_rotation_at(), Some(t0() + Duration::days(120)));
    assert_eq!(svc.encrypt(&key, b"x", &c).unwrap().key_version, 4);
    assert_eq!(
        &svc.decrypt(&key, &first.ciphertext, &c).unwrap().plaintext[..],
        b"day zero"
    );
    let materials: std::collections::HashSet<_> = key
        .versions
        .iter()
        .map(|v| v.wrapped.clone().unwrap().to_base64())
        .collect();
    assert_eq!(materials.len(), 4, "each version has its own material");
}

fn spec_13_3_4_audit_facts_carry_no_plaintext_or_key(b: Arc<dyn KeyBackend>) {
    let (svc, mut key) = setup(b);
    let canary = b"CANARY-PLAINTEXT-7f3a";
    let c = ctx(&[("volume", "vol-1")]);
    let enc = svc.encrypt(&key, canary, &c).unwrap();
    let dk = svc.generate_data_key(&key, &c, None).unwrap();
    let mut records = vec![
        KeyAuditFacts::new(KeyOperation::Encrypt, &key)
            .version(enc.key_version)
            .context(&c)
            .result(&Ok::<_, KmsError>(())),
        KeyAuditFacts::new(KeyOperation::GenerateDataKey, &key)
            .version(dk.key_version)
            .context(&c),
    ];
    let failed = svc.decrypt(&key, &enc.ciphertext, &ctx(&[("volume", "other")]));
    records.push(
        KeyAuditFacts::new(KeyOperation::Decrypt, &key)
            .context(&c)
            .result(&failed),
    );
    let v = svc.rotate(&mut key, t0()).unwrap();
    records.push(KeyAuditFacts::new(KeyOperation::Rotate, &key).version(v));
    let text = serde_json::to_string(&records).unwrap();
    assert!(text.contains("\"key.decrypt\"") && text.contains("\"context_mismatch\"") && text.contains("vol-1"));
    let dk_forms = [hex::encode(&dk.plaintext[..]), STANDARD.encode(&dk.plaintext[..])];
    assert!(!text.contains("CANARY"), "{text}");
    for f in dk_forms {
        assert!(!text.contains(&f[..16]), "data key in audit facts");
    }
    for v in &key.versions {
        assert!(!text.contains(&v.wrapped.as_ref().unwrap().to_base64()[..16]));
    }
}

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod software_backend {
            $( #[test] fn $name() { super::$name(super::soft()); } )*
        }
        mod softhsm_backend {
            $( #[test] fn $name() { if let Some(b) = super::hsm() { super::$name(b); } } )*
        }
    };
}

on_both_backends!(
    spec_12_4_1_encrypt_decrypt_round_trip_with_context,
    spec_12_4_1_wrong_context_is_context_mismatch,
    spec_13_3_6_tampered_ciphertext_is_invalid_ciphertext,
    spec_13_3_6_wrong_key_is_key_mismatch_and_relabelling_fails,
    spec_13_3_8_old_version_decrypts_after_rotation_until_minimum_passes_it,
    spec_13_3_1_disabled_pending_and_destroyed_keys_refuse_use,
    spec_12_4_1_generate_data_key_returns_plaintext_and_its_ciphertext,
    spec_12_4_1_re_encrypt_between_keys,
    spec_13_3_6_altered_wrapped_material_or_binding_fails_unwrap,
    spec_13_3_3_reconciler_rotates_by_period_on_a_movable_clock,
    spec_13_3_4_audit_facts_carry_no_plaintext_or_key,
);

#[test]
fn spec_13_3_7_unavailable_hsm_fails_closed() {
    let svc = KeyService::new(Arc::new(crate::UnavailableBackend::new("no HSM configured")));
    let e = svc.create_key(Uuid::new_v4(), "k", None, t0()).unwrap_err();
    assert_eq!(e.code(), "hsm_unavailable");
    assert_eq!(e.http_status(), 503);
    // A key whose rows exist cannot be used either: no software path takes over.
    let key = KeyService::new(soft())
        .create_key(Uuid::new_v4(), "k", None, t0())
        .unwrap();
    let c = EncryptionContext::new();
    assert_eq!(svc.encrypt(&key, b"x", &c).unwrap_err().code(), "hsm_unavailable");
    assert_eq!(
        svc.generate_data_key(&key, &c, None).unwrap_err().code(),
        "hsm_unavailable"
    );
}

#[test]
fn spec_13_3_5_software_material_is_refused_by_the_hsm() {
    let Some(hsm) = hsm() else { return };
    let soft_svc = KeyService::new(soft());
    let key = soft_svc.create_key(Uuid::new_v4(), "k", None, t0()).unwrap();
    let svc = KeyService::new(hsm.clone());
    svc.create_project_root(key.project).unwrap();
    let id = MaterialId {
        project: key.project,
        key_id: key.id,
        version: 1,
    };
    let e = hsm
        .encrypt(&id, key.versions[0].wrapped.as_ref().unwrap(), &[0; 12], b"a", b"p")
        .unwrap_err();
    assert!(matches!(e, HsmError::WrappedKeyFormat { format: 0x7f }), "{e:?}");
}

#[test]
fn spec_13_3_5_stored_keys_hold_no_plaintext_key() {
    let soft_backend = Arc::new(InsecureSoftwareBackend::new());
    type Revealing = Option<Arc<InsecureSoftwareBackend>>;
    let mut backends: Vec<(Arc<dyn KeyBackend>, Revealing)> = vec![(soft_backend.clone(), Some(soft_backend))];
    if let Some(h) = hsm() {
        backends.push((h, None));
    }
    for (backend, reveal) in backends {
        let svc = KeyService::new(backend);
        let project = Uuid::new_v4();
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        let mut store = MemoryKeyStore::new();
        for name in ["disks", "objects"] {
            let mut key = svc.create_key(project, name, Some(90), t0()).unwrap();
            svc.rotate(&mut key, t0() + Duration::days(1)).unwrap();
            let c = ctx(&[("volume", name)]);
            secrets.push(svc.generate_data_key(&key, &c, None).unwrap().plaintext.to_vec());
            let canary = format!("PLAINTEXT-CANARY-{name}-0123456789").into_bytes();
            svc.encrypt(&key, &canary, &c).unwrap();
            secrets.push(canary);
            if let Some(soft) = &reveal {
                // The software stand-in can show its material, so the test can look for it.
                for v in &key.versions {
                    let id = MaterialId {
                        project,
                        key_id: key.id,
                        version: v.version,
                    };
                    secrets.push(soft.reveal_for_test(&id, v.wrapped.as_ref().unwrap()).to_vec());
                }
            }
            storage::ready(store.insert(&key)).unwrap();
        }
        // What storage receives: the database rows and their dump are checked by
        // rampart-db's `spec_13_3_5_database_dump_holds_no_plaintext_key`.
        let stored = format!("{:?}", store.contents());
        assert!(stored.contains("WrappedKey"), "the versions are stored, wrapped");
        rampart_common::testing::assert_no_secret(stored.as_bytes(), &secrets);
    }
}
