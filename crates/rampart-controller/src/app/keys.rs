//! Customer keys (12.4-1, 13.3-1, 13.3-3, 13.3-8): the keys of a project, their lifecycle
//! (`key-admin`) and their cryptographic operations (`key-user`). Anyone without one of the
//! two roles on the project, a system admin included, gets 404: they cannot even learn that a
//! key exists (13.1.1-2). A key role without the right one for the operation gets 403.
//!
//! Every operation, refused or not, writes its audit facts (13.3-4): key, version, context,
//! outcome and code, never plaintext, key material or a data key. Also here: the reconciler
//! pass over keys, and the key side of creating and deleting projects.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rampart_api::{
    DataKeyRequest, DataKeyResponse, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, Key as KeyView,
    KeyCreate, KeyStateView, KeyUpdate, KeyVersionView, List, ReEncryptRequest, ReEncryptResponse, ScheduleDeletion,
};
use rampart_common::error::ErrorChain;
use rampart_common::page::{PageParams, finish_page};
use rampart_common::quota::Resource;
use rampart_common::{Error, Sensitive};
use rampart_db::{identity, kms as db};
use rampart_iam::authz::Target;
use rampart_kms::storage::{KeyStore, StoredKey};
use rampart_kms::{
    BackendKind, EncryptionContext, Key, KeyAuditFacts, KeyOperation, KeyService, KeyStateName, KmsError, lifecycle,
};
use time::OffsetDateTime;
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::audit::operations::Operation;
use crate::auth::Principal;
use crate::kms::{Actor, audit, blocking, facts};
use crate::state::AppState;

/// What an operation needs on the project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// `key-admin` or `key-user` (read metadata).
    Either,
    /// `key-admin` (lifecycle).
    Manage,
    /// `key-user` (cryptography).
    Use,
}

/// 404 unless the caller holds a key role on the project; 403 when it holds one but not the
/// one `need`s.
async fn authorize(state: &AppState, principal: &Principal, project: Uuid, need: Need) -> Result<(), Error> {
    let p = {
        let mut conn = state.db.conn().await?;
        identity::project_by_id(&mut conn, project).await?
    };
    let Some(p) = p else {
        return Err(Error::not_found("no such project"));
    };
    let target = Target::Project {
        id: p.id,
        domain: p.domain_id,
    };
    let manage = principal.can(state, "keys.manage", target);
    let use_ = principal.can(state, "keys.use", target);
    if !manage && !use_ {
        return Err(Error::not_found("no such project"));
    }
    {
        let mut conn = state.db.conn().await?;
        crate::auth::require_enabled(&mut conn, &p).await?;
    }
    let ok = match need {
        Need::Either => true,
        Need::Manage => manage,
        Need::Use => use_,
    };
    if ok {
        Ok(())
    } else {
        let role = if need == Need::Manage { "key-admin" } else { "key-user" };
        Err(Error::forbidden(format!(
            "this operation needs the {role} role on the project"
        )))
    }
}

fn actor(principal: &Principal) -> Actor {
    Actor {
        id: Some(principal.user.id),
        name: format!("{}@{}", principal.user.name, principal.user.domain),
        source_ip: Some(principal.client_ip),
    }
}

/// The result of a key operation with its audit facts, which are written already (run log
/// and the call's audit-trail record); the route hands them on in the response's extensions.
#[derive(Debug)]
pub struct Audited<T> {
    pub facts: KeyAuditFacts,
    pub result: Result<T, Error>,
}

/// Completes `facts` with the result's outcome and writes them.
fn audited<T>(principal: &Principal, mut facts: KeyAuditFacts, result: Result<T, Error>) -> Audited<T> {
    if let Err(e) = &result {
        facts.outcome = "failure";
        facts.error_code = Some(e.code());
    }
    audit(&actor(principal), &facts);
    note_facts(&facts);
    Audited { facts, result }
}

/// Puts the key-operation facts into the call's audit-trail record (13.3-4): the version used
/// and the encryption context, keys and values. Contexts are not secret (AWS KMS logs them in
/// CloudTrail too); a context member whose name looks like a credential is still redacted by
/// the record builder. Plaintext, ciphertext and data keys never come here.
fn note_facts(facts: &KeyAuditFacts) {
    use crate::audit::note_detail;
    if let Some(v) = facts.key_version {
        note_detail("key_version", v);
    }
    if let Some(id) = facts.source_key_id {
        // Re-encryption: the path names the source key; the new ciphertext is under this one.
        note_detail("source_key_id", id.to_string());
        note_detail("target_key_id", facts.key_id.to_string());
    }
    if let Some(v) = facts.source_key_version {
        note_detail("source_key_version", v);
    }
    if !facts.context.is_empty() {
        let context: serde_json::Map<String, serde_json::Value> = facts
            .context
            .iter()
            .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
            .collect();
        note_detail("encryption_context", serde_json::Value::Object(context));
    }
}

pub fn view(key: &Key) -> KeyView {
    let state = key.state.name();
    KeyView {
        id: key.id,
        project_id: key.project,
        name: key.name.clone(),
        algorithm: key.algorithm.as_str().into(),
        state: match state {
            KeyStateName::Enabled => KeyStateView::Enabled,
            KeyStateName::Disabled => KeyStateView::Disabled,
            KeyStateName::PendingDeletion => KeyStateView::PendingDeletion,
            KeyStateName::Destroyed => KeyStateView::Destroyed,
        },
        primary_version: key.primary_version,
        min_decryption_version: key.min_decryption_version,
        rotation_period_days: key.rotation_period_days,
        last_rotated_at: key.last_rotated_at,
        next_rotation_at: key.next_rotation_at(),
        deletion_at: match key.state {
            lifecycle::KeyState::PendingDeletion { delete_at } => Some(delete_at),
            _ => None,
        },
        destroyed_at: match key.state {
            lifecycle::KeyState::Destroyed { destroyed_at } => Some(destroyed_at),
            _ => None,
        },
        created_at: key.created_at,
        updated_at: key.updated_at,
        versions: key
            .versions
            .iter()
            .map(|v| KeyVersionView {
                version: v.version,
                created_at: v.created_at,
                destroyed: v.wrapped.is_none(),
            })
            .collect(),
    }
}

async fn load(state: &AppState, project: Uuid, id: Uuid) -> Result<Key, Error> {
    let stored = {
        let mut conn = state.db.conn().await?;
        db::keys(&mut conn).get(project, id).await?
    };
    Ok(stored.ok_or_else(|| Error::not_found("no such key"))?.key)
}

fn context(c: Option<rampart_api::Context>) -> EncryptionContext {
    c.unwrap_or_default().into_iter().collect()
}

/// Puts a request's encryption context into its audit facts, but only once the caller is
/// authorized and the context is within its limits (13.4-1): a refused call must not let
/// anyone write up to a request body's worth of text into a trail kept for years.
fn admit_context(f: &mut KeyAuditFacts, ctx: &EncryptionContext) -> Result<(), Error> {
    rampart_kms::envelope::validate_context(ctx)?;
    f.context = ctx.clone();
    Ok(())
}

fn decode_b64(field: &'static str, value: &Sensitive) -> Result<Zeroizing<Vec<u8>>, Error> {
    STANDARD
        .decode(value.expose().trim())
        .map(Zeroizing::new)
        .map_err(|_| Error::field(field, format!("{field} must be standard base64")))
}

fn encode_b64(bytes: &[u8]) -> Sensitive {
    Sensitive::new(STANDARD.encode(bytes))
}

pub const LIST: Operation = Operation::new("key.list", "key").sensitive_read();

/// Keys of a project (`key-admin` or `key-user`).
pub async fn list(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    page: PageParams,
) -> Result<List<KeyView>, Error> {
    authorize(state, principal, project, Need::Either).await?;
    let page = page.validate()?;
    let rows = {
        let mut conn = state.db.conn().await?;
        db::keys(&mut conn)
            .list(project, page.after.as_deref(), page.limit + 1)
            .await?
    };
    let keys: Vec<Key> = rows.into_iter().map(|s| s.key).collect();
    let (keys, next) = finish_page(keys, page.limit, |k| k.name.clone());
    Ok(List {
        items: keys.iter().map(view).collect(),
        next,
    })
}

pub const CREATE: Operation = Operation::new("key.create", "key");

/// Creates a key (`key-admin`): version 1 is generated in the HSM and stored only wrapped.
pub async fn create(state: &AppState, principal: &Principal, project: Uuid, req: KeyCreate) -> Audited<KeyView> {
    let mut f = facts(KeyOperation::Create, project, Uuid::nil());
    let result = async {
        authorize(state, principal, project, Need::Manage).await?;
        if let Some(a) = &req.algorithm {
            lifecycle::Algorithm::parse(a)?;
        }
        {
            let mut conn = state.db.conn().await?;
            crate::quota::enforce(state, &mut conn, project, Resource::Keys, 1).await?;
        }
        let service = state.kms.service.clone();
        let now = state.now();
        let (name, period) = (req.name.clone(), req.rotation_period_days);
        let key = blocking(move || service.create_key(project, &name, period, now)).await??;
        f.key_id = key.id;
        f.key_version = Some(1);
        let mut conn = state.db.conn().await?;
        db::keys(&mut conn).insert(&key).await?;
        tracing::info!(key = %key.id, name = %key.name, %project, by = %principal.user.name, "key created");
        Ok(view(&key))
    }
    .await;
    audited(principal, f, result)
}

pub const GET: Operation = Operation::new("key.get", "key").target("id").sensitive_read();

/// One key (`key-admin` or `key-user`).
pub async fn get(state: &AppState, principal: &Principal, project: Uuid, id: Uuid) -> Result<KeyView, Error> {
    authorize(state, principal, project, Need::Either).await?;
    Ok(view(&load(state, project, id).await?))
}

pub const UPDATE: Operation = Operation::new("key.update", "key").target("id");

/// Changes a key's settings (`key-admin`): rotation period, minimum decryption version.
pub async fn update(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    req: KeyUpdate,
) -> Audited<KeyView> {
    let f = facts(KeyOperation::SetMinDecryptionVersion, project, id);
    let result = async {
        authorize(state, principal, project, Need::Manage).await?;
        let (period, minimum) = (req.rotation_period_days, req.min_decryption_version);
        let (key, ()) = mutate_key(state, project, id, move |_, key, now| {
            if let Some(p) = period {
                key.set_rotation_period(p, now)?;
            }
            if let Some(m) = minimum {
                key.set_min_decryption_version(m, now)?;
            }
            Ok(())
        })
        .await?;
        Ok(view(&key))
    }
    .await;
    audited(principal, f, result)
}

/// The lifecycle operations that take no body.
#[derive(Debug, Clone, Copy)]
pub enum Lifecycle {
    Rotate,
    Enable,
    Disable,
    CancelDeletion,
}

pub const ROTATE: Operation = Operation::new("key.rotate", "key").target("id");
pub const ENABLE: Operation = Operation::new("key.enable", "key").target("id");
pub const DISABLE: Operation = Operation::new("key.disable", "key").target("id");
pub const CANCEL_DELETION: Operation = Operation::new("key.cancel_deletion", "key").target("id");

/// Rotates, enables, disables a key or cancels its deletion (`key-admin`).
pub async fn change_state(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    op: Lifecycle,
) -> Audited<KeyView> {
    let operation = match op {
        Lifecycle::Rotate => KeyOperation::Rotate,
        Lifecycle::Enable => KeyOperation::Enable,
        Lifecycle::Disable => KeyOperation::Disable,
        Lifecycle::CancelDeletion => KeyOperation::CancelDeletion,
    };
    let mut f = facts(operation, project, id);
    let result = async {
        authorize(state, principal, project, Need::Manage).await?;
        let (key, ()) = mutate_key(state, project, id, move |svc, key, now| match op {
            Lifecycle::Rotate => svc.rotate(key, now).map(|_| ()),
            Lifecycle::Enable => key.enable(now),
            Lifecycle::Disable => key.disable(now),
            Lifecycle::CancelDeletion => key.cancel_deletion(now),
        })
        .await?;
        Ok(key)
    }
    .await;
    if let Ok(key) = &result {
        f.key_version = Some(key.primary_version);
        tracing::info!(key = %id, operation = ?op, by = %principal.user.name, "key changed");
    }
    audited(principal, f, result.map(|k| view(&k)))
}

pub const SCHEDULE_DELETION: Operation = Operation::new("key.schedule_deletion", "key").target("id");

/// Schedules destruction in 7 to 30 days (`key-admin`); the reconciler destroys the key (all
/// its versions' material) when the window has passed.
pub async fn schedule_deletion(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    req: ScheduleDeletion,
) -> Audited<KeyView> {
    let f = facts(KeyOperation::ScheduleDeletion, project, id);
    let result = async {
        authorize(state, principal, project, Need::Manage).await?;
        // Refused before anything is loaded: a bad window changes nothing.
        lifecycle::validate_pending_days(req.pending_days)?;
        let days = req.pending_days;
        let (key, at) = mutate_key(state, project, id, move |_, key, now| key.schedule_deletion(days, now)).await?;
        tracing::warn!(key = %id, delete_at = %rampart_common::time::rfc3339(at), by = %principal.user.name, "key deletion scheduled");
        Ok(view(&key))
    }
    .await;
    audited(principal, f, result)
}

/// One cryptographic operation of a key user on one key.
struct KeyUse {
    operation: KeyOperation,
    project: Uuid,
    id: Uuid,
    context: Option<rampart_api::Context>,
}

impl KeyUse {
    fn new(operation: KeyOperation, project: Uuid, id: Uuid, context: Option<rampart_api::Context>) -> Self {
        Self {
            operation,
            project,
            id,
            context,
        }
    }
}

/// The frame the key-user operations on one key share: authorize, admit the context, take the
/// input (prepared by the caller, refused only after the checks before it), load the key, call
/// the HSM off the async workers, note the key version that served and audit, whatever the
/// outcome. `render` gives that version and the answer.
async fn use_key<I, O, R>(
    state: &AppState,
    principal: &Principal,
    call: KeyUse,
    input: Result<I, Error>,
    hsm: impl FnOnce(&KeyService, &Key, &EncryptionContext, I) -> Result<O, KmsError> + Send + 'static,
    render: impl FnOnce(O) -> (u32, R),
) -> Audited<R>
where
    I: Send + 'static,
    O: Send + 'static,
{
    let mut f = facts(call.operation, call.project, call.id);
    let ctx = context(call.context);
    let result = async {
        authorize(state, principal, call.project, Need::Use).await?;
        admit_context(&mut f, &ctx)?;
        let input = input?;
        let key = load(state, call.project, call.id).await?;
        let service = state.kms.service.clone();
        Ok(blocking(move || hsm(&service, &key, &ctx, input)).await??)
    }
    .await;
    let result = result.map(|out| {
        let (version, answer) = render(out);
        f.key_version = Some(version);
        answer
    });
    audited(principal, f, result)
}

pub const ENCRYPT: Operation = Operation::new("key.encrypt", "key").target("id");

/// Encrypts up to 64 KiB under the primary version (`key-user`).
pub async fn encrypt(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    req: EncryptRequest,
) -> Audited<EncryptResponse> {
    let call = KeyUse::new(KeyOperation::Encrypt, project, id, req.context);
    let plaintext = decode_b64("plaintext", &req.plaintext);
    let hsm = |s: &KeyService, key: &Key, ctx: &EncryptionContext, plaintext: Zeroizing<Vec<u8>>| {
        s.encrypt(key, &plaintext, ctx)
    };
    use_key(state, principal, call, plaintext, hsm, |out| {
        let answer = EncryptResponse {
            key_id: id,
            ciphertext: out.ciphertext,
            key_version: out.key_version,
        };
        (out.key_version, answer)
    })
    .await
}

pub const DECRYPT: Operation = Operation::new("key.decrypt", "key").target("id");

/// Decrypts (`key-user`). The context must be the one used to encrypt.
pub async fn decrypt(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    req: DecryptRequest,
) -> Audited<DecryptResponse> {
    let call = KeyUse::new(KeyOperation::Decrypt, project, id, req.context);
    let hsm = |s: &KeyService, key: &Key, ctx: &EncryptionContext, ciphertext: String| s.decrypt(key, &ciphertext, ctx);
    use_key(state, principal, call, Ok(req.ciphertext), hsm, |out| {
        let answer = DecryptResponse {
            plaintext: encode_b64(&out.plaintext),
            key_version: out.key_version,
        };
        (out.key_version, answer)
    })
    .await
}

pub const GENERATE_DATA_KEY: Operation = Operation::new("key.generate_data_key", "key").target("id");

/// A data key from the HSM's generator, in plaintext and encrypted under the key (`key-user`).
pub async fn generate_data_key(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    req: DataKeyRequest,
) -> Audited<DataKeyResponse> {
    let call = KeyUse::new(KeyOperation::GenerateDataKey, project, id, req.context);
    let hsm = |s: &KeyService, key: &Key, ctx: &EncryptionContext, bytes| s.generate_data_key(key, ctx, bytes);
    use_key(state, principal, call, Ok(req.bytes), hsm, |out| {
        let answer = DataKeyResponse {
            key_id: id,
            plaintext: encode_b64(&out.plaintext),
            ciphertext: out.ciphertext,
            key_version: out.key_version,
        };
        (out.key_version, answer)
    })
    .await
}

pub const RE_ENCRYPT: Operation = Operation::new("key.re_encrypt", "key").target("id");

/// Decrypts and encrypts again, under the primary version of this key or of `target_key`
/// (`key-user`); the plaintext never leaves the key service.
pub async fn re_encrypt(
    state: &AppState,
    principal: &Principal,
    project: Uuid,
    id: Uuid,
    req: ReEncryptRequest,
) -> Audited<ReEncryptResponse> {
    let mut f = facts(KeyOperation::ReEncrypt, project, id);
    let source_ctx = context(req.context);
    let target_ctx = match req.target_context {
        Some(c) => context(Some(c)),
        None => source_ctx.clone(),
    };
    let target_id = req.target_key.unwrap_or(id);
    let result = async {
        authorize(state, principal, project, Need::Use).await?;
        rampart_kms::envelope::validate_context(&source_ctx)?;
        admit_context(&mut f, &target_ctx)?;
        let source = load(state, project, id).await?;
        let target = if target_id == id {
            source.clone()
        } else {
            load(state, project, target_id).await?
        };
        let service = state.kms.service.clone();
        let ciphertext = req.ciphertext;
        Ok(blocking(move || service.re_encrypt(&source, &ciphertext, &source_ctx, &target, &target_ctx)).await??)
    }
    .await;
    f.key_id = target_id;
    f.source_key_id = Some(id);
    if let Ok(out) = &result {
        f.key_version = Some(out.key_version);
        f.source_key_version = Some(out.source_key_version);
    }
    let result = result.map(|out| ReEncryptResponse {
        key_id: target_id,
        ciphertext: out.ciphertext,
        key_version: out.key_version,
        source_key_id: out.source_key_id,
        source_key_version: out.source_key_version,
    });
    audited(principal, f, result)
}

/// The key service at a glance (system readers): which HSM serves keys, where the CA keys are.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct KmsStatus {
    /// `pkcs11` or `unavailable` (key operations fail closed).
    pub backend: String,
    pub hsm: String,
    /// `hsm` or `file`.
    pub ca_key: String,
    pub tenant_ca_key: String,
}

pub const STATUS: Operation = Operation::new("statu.list", "statu");

/// Which HSM serves keys and where the CA keys are kept (`system.read`).
pub fn status(state: &AppState, principal: &Principal) -> Result<KmsStatus, Error> {
    principal.require_system(state, "system.read")?;
    Ok(KmsStatus {
        backend: match state.kms.backend_kind() {
            BackendKind::Pkcs11 => "pkcs11",
            BackendKind::Unavailable => "unavailable",
            BackendKind::InsecureSoftware => "insecure_software",
        }
        .into(),
        hsm: state.kms.description.clone(),
        ca_key: state.ca.key_mode().as_str().into(),
        tenant_ca_key: state.kms.tenant_ca.key_mode().as_str().into(),
    })
}

// ---- changes, the reconciler pass, projects ----

/// Loads, changes (off the async workers: the change may call the HSM) and stores a key, retrying
/// when another writer got there first.
pub async fn mutate_key<T: Send + 'static>(
    state: &AppState,
    project: Uuid,
    id: Uuid,
    change: impl Fn(&KeyService, &mut Key, OffsetDateTime) -> Result<T, KmsError> + Send + Sync + Clone + 'static,
) -> Result<(Key, T), Error> {
    for _ in 0..5 {
        let StoredKey { key, revision } = {
            let mut conn = state.db.conn().await?;
            db::keys(&mut conn).get(project, id).await?
        }
        .ok_or_else(|| Error::not_found("no such key"))?;
        let service = state.kms.service.clone();
        let now = state.now();
        let change = change.clone();
        let (key, out) = blocking(move || {
            let mut key = key;
            change(&service, &mut key, now).map(|out| (key, out))
        })
        .await??;
        let mut tx = state.db.begin().await?;
        if db::keys(&mut tx).save(&key, revision).await? {
            rampart_db::Db::commit(tx).await?;
            return Ok((key, out));
        }
        drop(tx);
        tracing::debug!(key = %id, "key changed concurrently; retrying");
    }
    Err(Error::conflict(
        "the key is being changed by another request; try again",
    ))
}

// ---- the reconciler pass ----

/// Rotates keys whose period has passed, destroys keys whose deletion window has passed,
/// records the server certificate, raises certificate expiry alarms.
pub async fn maintain(state: &AppState) -> Result<(), Error> {
    let due = {
        let mut conn = state.db.conn().await?;
        db::keys(&mut conn).due(state.now(), 100).await?
    };
    for (project, id) in due {
        let result = mutate_key(state, project, id, |svc, key, now| svc.run_maintenance(key, now)).await;
        match result {
            Ok((key, Some(done))) => {
                let (operation, version) = match done {
                    rampart_kms::Maintenance::Rotate => (KeyOperation::Rotate, Some(key.primary_version)),
                    rampart_kms::Maintenance::Destroy => (KeyOperation::Destroy, None),
                };
                let mut f = facts(operation, project, id);
                f.key_version = version;
                audit(&Actor::system(), &f);
            }
            Ok((_, None)) => {}
            Err(e) => {
                let mut f = facts(KeyOperation::Rotate, project, id);
                f.outcome = "failure";
                f.error_code = Some(e.code());
                audit(&Actor::system(), &f);
                tracing::warn!(key = %id, error = %e, "key maintenance failed; retried at the next pass");
            }
        }
    }
    let mut conn = state.db.conn().await?;
    crate::app::certificates::record_server_certificate(state, &mut conn).await?;
    crate::app::certificates::expiry_alarms(state, &mut conn).await?;
    Ok(())
}

/// Projects whose root keys are checked per blocking task by [`spawn_root_check`].
const ROOT_CHECK_BATCH: usize = 100;

/// After start, in the background: every project has its root keys (made when the project
/// was, so this only repairs a token restored from an older backup). One HSM lookup per
/// project: start-up must not wait for it, so the API answers first and the check runs in
/// batches until done or shutdown. Key operations make missing roots themselves meanwhile.
pub fn spawn_root_check(state: AppState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if state.kms.backend_kind() != BackendKind::Pkcs11 {
            return;
        }
        let projects = match async {
            let mut conn = state.db.conn().await?;
            Ok::<_, Error>(db::all_project_ids(&mut conn).await?)
        }
        .await
        {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot list the projects whose root keys to check");
                return;
            }
        };
        let (n, started) = (projects.len(), std::time::Instant::now());
        // One pass over the token instead of a token-wide search per project (SoftHSM2 visits
        // every object on each); a failure only means the per-project searches below.
        let service = state.kms.service.clone();
        match blocking(move || service.backend().preload_project_roots()).await {
            Ok(Ok(found)) => tracing::debug!(found, "project root keys listed in the HSM"),
            Ok(Err(e)) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot list the root keys in the HSM; checking project by project")
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "cannot list the root keys in the HSM; checking project by project")
            }
        }
        let mut failed = 0;
        for batch in projects.chunks(ROOT_CHECK_BATCH) {
            if state.shutdown.is_cancelled() {
                return;
            }
            let (service, batch) = (state.kms.service.clone(), batch.to_vec());
            let Ok(errors) = blocking(move || {
                batch
                    .into_iter()
                    .filter_map(|p| service.create_project_root(p).err().map(|e| (p, e)))
                    .collect::<Vec<_>>()
            })
            .await
            else {
                return;
            };
            for (p, e) in &errors {
                tracing::error!(project = %p, error = %ErrorChain(e), "cannot create the project's root keys in the HSM");
            }
            failed += errors.len();
        }
        tracing::info!(
            projects = n,
            failed,
            took_ms = started.elapsed().as_millis() as u64,
            "project root keys checked in the HSM"
        );
    })
}

/// A new project gets its root keys in the HSM before the call answers: transient token
/// failures are retried with backoff; if the keys still cannot be made, the project is removed
/// again and the call fails with 503 `hsm_unavailable`, so no project answers 201 without
/// its keys. Without an HSM (`kms.required = false`) key operations fail closed anyway and
/// projects are made without roots.
pub async fn project_created(state: &AppState, project: Uuid) -> Result<(), Error> {
    if state.kms.backend_kind() != BackendKind::Pkcs11 {
        return Ok(());
    }
    let service = state.kms.service.clone();
    let made = blocking(move || service.create_new_project_root(project)).await?;
    let Err(e) = made else {
        return Ok(());
    };
    tracing::error!(%project, error = %ErrorChain(&e), "cannot create the project's root keys in the HSM; the project is removed again");
    let mut conn = state.db.conn().await?;
    identity::delete_project(&mut conn, project).await?;
    Err(Error::coded(
        http::StatusCode::SERVICE_UNAVAILABLE,
        "hsm_unavailable",
        "the project's keys could not be created in the HSM, so the project was not created; try again later",
    ))
}

/// After the project is deleted: its root keys are destroyed in the HSM (crypto-shredding of
/// everything it ever encrypted).
pub async fn after_project_delete(state: &AppState, project: Uuid) {
    if state.kms.backend_kind() != BackendKind::Pkcs11 {
        tracing::warn!(%project, "the HSM is unavailable: the project's root keys stay in the token until removed by hand");
        return;
    }
    let service = state.kms.service.clone();
    match blocking(move || service.backend().destroy_project_root(project)).await {
        Ok(Ok(())) => tracing::info!(%project, "destroyed the project's root keys"),
        Ok(Err(e)) => tracing::error!(%project, error = %ErrorChain(&e), "cannot destroy the project's root keys"),
        Err(e) => tracing::error!(%project, error = %ErrorChain(&e), "cannot destroy the project's root keys"),
    }
}
