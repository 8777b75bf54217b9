//! Volume passphrases (12.3.2-2): 32 random bytes from the KMS `generate_data_key` under the
//! project's service-managed key `volumes` (made on first use, like AWS's `aws/ebs`) or a key
//! the creator names, with the encryption context `{"rampart:volume", "rampart:project"}`.
//! Only the wrapped form is stored. A node gets the plaintext over mTLS for a volume placed on
//! it, and only while the volume holds data; any other node is told the volume does not exist.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rampart_api::storage::VolumePassphrase;
use rampart_common::{Error, Sensitive};
use rampart_db::kms as kdb;
use rampart_db::volumes as db;
use rampart_iam::authz::{Target, action};
use rampart_kms::storage::KeyStore;
use rampart_kms::{EncryptionContext, Key};
use uuid::Uuid;

use crate::auth::Principal;
use crate::kms::blocking;
use crate::state::AppState;

use crate::audit::operations::Operation;

/// The name of each project's service-managed volume key.
pub const SERVICE_KEY: &str = "volumes";
/// Bytes of a volume passphrase.
const PASSPHRASE_BYTES: usize = 32;

fn context(volume: Uuid, project: Uuid) -> EncryptionContext {
    EncryptionContext::from([
        ("rampart:volume".to_string(), volume.to_string()),
        ("rampart:project".to_string(), project.to_string()),
    ])
}

async fn find_key(state: &AppState, project: Uuid, key: &str) -> Result<Option<Key>, Error> {
    let mut conn = state.db.conn().await?;
    let mut store = kdb::keys(&mut conn);
    if let Ok(id) = Uuid::try_parse(key) {
        return Ok(store.get(project, id).await?.map(|s| s.key));
    }
    let mut after: Option<String> = None;
    loop {
        let page = store.list(project, after.as_deref(), 500).await?;
        if let Some(k) = page.iter().find(|s| s.key.name == key) {
            return Ok(Some(k.key.clone()));
        }
        match page.last() {
            Some(last) if page.len() == 500 => after = Some(last.key.name.clone()),
            _ => return Ok(None),
        }
    }
}

/// The key that wraps a new volume's passphrase: the one the caller names (it needs
/// `key-user` on the project), else the project's `volumes` key, created on first use.
pub async fn wrapping_key(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    domain: Uuid,
    named: Option<&str>,
) -> Result<Key, Error> {
    if let Some(name) = named {
        if !principal.can(state, action::KEYS_USE, Target::Project { id: project, domain }) {
            return Err(Error::forbidden(
                "naming a key for a volume needs the key-user role on the project",
            ));
        }
        return find_key(state, project, name)
            .await?
            .ok_or_else(|| Error::field("kms_key", "no key of that id or name in this project"));
    }
    if let Some(k) = find_key(state, project, SERVICE_KEY).await? {
        return Ok(k);
    }
    let service = state.kms.service.clone();
    let now = state.now();
    let key = blocking(move || service.create_key(project, SERVICE_KEY, None, now)).await??;
    let mut conn = state.db.conn().await?;
    match kdb::keys(&mut conn).insert(&key).await {
        Ok(()) => {
            tracing::info!(%project, key = %key.id, "created the project's service-managed volume key");
            Ok(key)
        }
        // Another request made it first: use that one.
        Err(rampart_db::DbError::Conflict(_)) => {
            drop(conn);
            find_key(state, project, SERVICE_KEY)
                .await?
                .ok_or_else(|| Error::internal("creating the volume key", "key vanished"))
        }
        Err(e) => Err(e.into()),
    }
}

/// A new passphrase for `volume`, wrapped under `key`; the plaintext is zeroed on return.
pub async fn new_wrapped(state: &AppState, key: Key, volume: Uuid, project: Uuid) -> Result<String, Error> {
    let service = state.kms.service.clone();
    let ctx = context(volume, project);
    let data = blocking(move || service.generate_data_key(&key, &ctx, Some(PASSPHRASE_BYTES))).await??;
    Ok(data.ciphertext)
}

/// The passphrase of `source` (a volume a snapshot was taken of), wrapped anew for the volume
/// `volume` made from that snapshot: the copy opens with the same passphrase (a snapshot keeps
/// its volume's key), but each volume's wrapped key is bound to its own id by the encryption
/// context. Wrapped under `target` when the creator named a key, else under `source`'s key.
/// The plaintext never leaves the KMS service.
pub async fn rewrap_for_copy(
    state: &AppState,
    source: &db::VolumeRow,
    target: Option<Key>,
    volume: Uuid,
) -> Result<(Uuid, String), Error> {
    let (Some(key_id), Some(wrapped)) = (source.kms_key_id, source.wrapped_key.clone()) else {
        return Err(Error::internal(
            "copying a volume passphrase",
            "the snapshot's volume has no wrapped key",
        ));
    };
    let source_key = {
        let mut conn = state.db.conn().await?;
        kdb::keys(&mut conn).get(source.project_id, key_id).await?
    }
    .ok_or_else(|| Error::internal("copying a volume passphrase", "the volume's key is gone"))?
    .key;
    let target = target.unwrap_or_else(|| source_key.clone());
    let target_id = target.id;
    let service = state.kms.service.clone();
    let (from, to) = (
        context(source.id, source.project_id),
        context(volume, source.project_id),
    );
    let out = blocking(move || service.re_encrypt(&source_key, &wrapped, &from, &target, &to)).await??;
    Ok((target_id, out.ciphertext))
}

pub const RELEASE_PASSPHRASE: Operation = Operation::new("volume.passphrase.release", "volume").target("id");

/// `POST /agent/v1/volumes/{id}/passphrase`: the passphrase of a volume placed on `node` that
/// still holds data; 404 for any other node, a deleted volume, or an unencrypted one.
pub async fn release(state: &AppState, node: Uuid, id: Uuid) -> Result<VolumePassphrase, Error> {
    let not_found = || Error::not_found("no such volume on this node");
    let row = {
        let mut conn = state.db.conn().await?;
        db::volume_by_id(&mut conn, id).await?
    }
    .filter(|v| v.node_id == Some(node) && v.status != "deleted")
    .ok_or_else(not_found)?;
    crate::audit::note(|slot| {
        slot.target_id = Some(id.to_string());
        slot.target_project = Some(row.project_id.to_string());
    });
    let (Some(key_id), Some(wrapped)) = (row.kms_key_id, row.wrapped_key.clone()) else {
        return Err(not_found());
    };
    let key = {
        let mut conn = state.db.conn().await?;
        kdb::keys(&mut conn).get(row.project_id, key_id).await?
    }
    .ok_or_else(|| Error::internal("releasing a volume passphrase", "the volume's key is gone"))?
    .key;
    let service = state.kms.service.clone();
    let ctx = context(id, row.project_id);
    let plain = blocking(move || service.decrypt(&key, &wrapped, &ctx)).await??;
    crate::audit::note_detail("node", node.to_string());
    tracing::info!(volume = %id, %node, "volume passphrase released to its node");
    Ok(VolumePassphrase {
        passphrase: Sensitive::new(STANDARD.encode(&plain.plaintext)),
    })
}
