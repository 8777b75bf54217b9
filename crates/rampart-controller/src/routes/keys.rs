//! The Keys API (12.4-1, 13.3-1, 13.3-3, 13.3-8): customer keys of a project, their lifecycle
//! (`key-admin`) and their cryptographic operations (`key-user`). Anyone without one of the
//! two roles on the project, a system admin included, gets 404: they cannot even learn that a
//! key exists (13.1.1-2). A key role without the right one for the operation gets 403.
//!
//! Every operation, refused or not, writes its audit facts (13.3-4): key, version, context,
//! outcome and code, never plaintext, key material or a data key. Request and response bodies
//! of these routes are never logged.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rampart_api::{
    DataKeyRequest, DataKeyResponse, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, Key as KeyView,
    KeyCreate, KeyStateView, KeyUpdate, KeyVersionView, List, ReEncryptRequest, ReEncryptResponse, ScheduleDeletion,
};
use rampart_common::error::ErrorBody;
use rampart_common::page::{PageParams, finish_page};
use rampart_common::quota::Resource;
use rampart_common::{Error, Sensitive};
use rampart_db::kms as db;
use rampart_iam::authz::Target;
use rampart_kms::storage::KeyStore;
use rampart_kms::{EncryptionContext, Key, KeyAuditFacts, KeyOperation, KeyStateName, lifecycle};
use uuid::Uuid;
use zeroize::Zeroizing;

use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::kms::{Actor, audit, blocking, facts, mutate_key};
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
        rampart_db::identity::project_by_id(&mut conn, project).await?
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

/// Audits `facts` with the result's outcome and answers: the facts also travel in the
/// response's extensions for the audit trail.
fn respond<T: IntoResponse>(principal: &Principal, mut facts: KeyAuditFacts, result: Result<T, Error>) -> Response {
    if let Err(e) = &result {
        facts.outcome = "failure";
        facts.error_code = Some(e.code());
    }
    audit(&actor(principal), &facts);
    note_facts(&facts);
    let mut response = match result {
        Ok(v) => v.into_response(),
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(facts);
    response
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

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(names("p", "id"), parameter_in = Path)]
pub struct KeyPath(
    /// Project id.
    pub Uuid,
    /// Key id.
    pub Uuid,
);

/// Keys of a project (`key-admin` or `key-user`).
#[utoipa::path(get, path = "/v1/projects/{p}/keys", tag = "keys", params(("p" = Uuid, Path, description = "Project id"), PageParams), security(("bearer" = [])),
    responses((status = 200, body = List<KeyView>), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_keys(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiQuery(page): ApiQuery<PageParams>,
) -> Result<axum::Json<List<KeyView>>, Error> {
    authorize(&state, &principal, project, Need::Either).await?;
    let page = page.validate()?;
    let rows = {
        let mut conn = state.db.conn().await?;
        db::keys(&mut conn).list(project, page.after.as_deref(), page.limit + 1).await?
    };
    let keys: Vec<Key> = rows.into_iter().map(|s| s.key).collect();
    let (keys, next) = finish_page(keys, page.limit, |k| k.name.clone());
    Ok(axum::Json(List {
        items: keys.iter().map(view).collect(),
        next,
    }))
}

/// Create a key (`key-admin`): version 1 is generated in the HSM and stored only wrapped.
#[utoipa::path(post, path = "/v1/projects/{p}/keys", tag = "keys", params(("p" = Uuid, Path, description = "Project id")), request_body = KeyCreate, security(("bearer" = [])),
    responses((status = 201, body = KeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody, description = "hsm_unavailable")))]
pub async fn create_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(project): ApiPath<Uuid>,
    ApiJson(req): ApiJson<KeyCreate>,
) -> Response {
    let mut f = facts(KeyOperation::Create, project, Uuid::nil());
    let result = async {
        authorize(&state, &principal, project, Need::Manage).await?;
        if let Some(a) = &req.algorithm {
            lifecycle::Algorithm::parse(a)?;
        }
        {
            let mut conn = state.db.conn().await?;
            crate::quota::enforce(&state, &mut conn, project, Resource::Keys, 1).await?;
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
        Ok((StatusCode::CREATED, axum::Json(view(&key))))
    }
    .await;
    respond(&principal, f, result)
}

/// One key (`key-admin` or `key-user`).
#[utoipa::path(get, path = "/v1/projects/{p}/keys/{id}", tag = "keys", params(KeyPath), security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
) -> Result<axum::Json<KeyView>, Error> {
    authorize(&state, &principal, project, Need::Either).await?;
    Ok(axum::Json(view(&load(&state, project, id).await?)))
}

/// Change a key's settings (`key-admin`): rotation period, minimum decryption version.
#[utoipa::path(patch, path = "/v1/projects/{p}/keys/{id}", tag = "keys", params(KeyPath), request_body = KeyUpdate, security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
    ApiJson(req): ApiJson<KeyUpdate>,
) -> Response {
    let f = facts(KeyOperation::SetMinDecryptionVersion, project, id);
    let result = async {
        authorize(&state, &principal, project, Need::Manage).await?;
        let (period, minimum) = (req.rotation_period_days, req.min_decryption_version);
        let (key, ()) = mutate_key(&state, project, id, move |_, key, now| {
            if let Some(p) = period {
                key.set_rotation_period(p, now)?;
            }
            if let Some(m) = minimum {
                key.set_min_decryption_version(m, now)?;
            }
            Ok(())
        })
        .await?;
        Ok(axum::Json(view(&key)))
    }
    .await;
    respond(&principal, f, result)
}

/// The lifecycle operations that take no body.
#[derive(Debug, Clone, Copy)]
enum Lifecycle {
    Rotate,
    Enable,
    Disable,
    CancelDeletion,
}

async fn lifecycle_op(state: AppState, principal: Principal, project: Uuid, id: Uuid, op: Lifecycle) -> Response {
    let operation = match op {
        Lifecycle::Rotate => KeyOperation::Rotate,
        Lifecycle::Enable => KeyOperation::Enable,
        Lifecycle::Disable => KeyOperation::Disable,
        Lifecycle::CancelDeletion => KeyOperation::CancelDeletion,
    };
    let mut f = facts(operation, project, id);
    let result = async {
        authorize(&state, &principal, project, Need::Manage).await?;
        let (key, ()) = mutate_key(&state, project, id, move |svc, key, now| match op {
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
    respond(&principal, f, result.map(|k| axum::Json(view(&k))))
}

/// Rotate (`key-admin`): a new version, generated in the HSM, becomes primary; older versions
/// still decrypt down to `min_decryption_version`.
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/rotate", tag = "keys", params(KeyPath), security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "key_pending_deletion, key_destroyed"), (status = 503, body = ErrorBody)))]
pub async fn rotate_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
) -> Response {
    lifecycle_op(state, principal, project, id, Lifecycle::Rotate).await
}

/// Enable (`key-admin`).
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/enable", tag = "keys", params(KeyPath), security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "invalid_key_state")))]
pub async fn enable_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
) -> Response {
    lifecycle_op(state, principal, project, id, Lifecycle::Enable).await
}

/// Disable (`key-admin`): every operation is refused with `key_disabled` until enabled again.
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/disable", tag = "keys", params(KeyPath), security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "invalid_key_state")))]
pub async fn disable_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
) -> Response {
    lifecycle_op(state, principal, project, id, Lifecycle::Disable).await
}

/// Cancel a scheduled deletion (`key-admin`): the key becomes `disabled`.
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/cancel-deletion", tag = "keys", params(KeyPath), security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "invalid_key_state")))]
pub async fn cancel_key_deletion(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
) -> Response {
    lifecycle_op(state, principal, project, id, Lifecycle::CancelDeletion).await
}

/// Schedule destruction in 7 to 30 days (`key-admin`); the reconciler destroys the key (all
/// its versions' material) when the window has passed.
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/schedule-deletion", tag = "keys", params(KeyPath), request_body = ScheduleDeletion, security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 400, body = ErrorBody, description = "validation_failed (pending_days)"), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "invalid_key_state")))]
pub async fn schedule_key_deletion(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
    ApiJson(req): ApiJson<ScheduleDeletion>,
) -> Response {
    let f = facts(KeyOperation::ScheduleDeletion, project, id);
    let result = async {
        authorize(&state, &principal, project, Need::Manage).await?;
        // Refused before anything is loaded: a bad window changes nothing.
        lifecycle::validate_pending_days(req.pending_days)?;
        let days = req.pending_days;
        let (key, at) = mutate_key(&state, project, id, move |_, key, now| key.schedule_deletion(days, now)).await?;
        tracing::warn!(key = %id, delete_at = %rampart_common::time::rfc3339(at), by = %principal.user.name, "key deletion scheduled");
        Ok(axum::Json(view(&key)))
    }
    .await;
    respond(&principal, f, result)
}

/// Encrypt up to 64 KiB under the primary version (`key-user`).
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/encrypt", tag = "keys", params(KeyPath), request_body = EncryptRequest, security(("bearer" = [])),
    responses((status = 200, body = EncryptResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "key_disabled, key_pending_deletion, key_destroyed"), (status = 503, body = ErrorBody, description = "hsm_unavailable")))]
pub async fn encrypt(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
    ApiJson(req): ApiJson<EncryptRequest>,
) -> Response {
    let mut f = facts(KeyOperation::Encrypt, project, id);
    let ctx = context(req.context);
    let result = async {
        authorize(&state, &principal, project, Need::Use).await?;
        admit_context(&mut f, &ctx)?;
        let plaintext = decode_b64("plaintext", &req.plaintext)?;
        let key = load(&state, project, id).await?;
        let service = state.kms.service.clone();
        let out = blocking(move || service.encrypt(&key, &plaintext, &ctx)).await??;
        Ok(out)
    }
    .await;
    if let Ok(out) = &result {
        f.key_version = Some(out.key_version);
    }
    let result = result.map(|out| {
        axum::Json(EncryptResponse {
            key_id: id,
            ciphertext: out.ciphertext,
            key_version: out.key_version,
        })
    });
    respond(&principal, f, result)
}

/// Decrypt (`key-user`). The context must be the one used to encrypt.
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/decrypt", tag = "keys", params(KeyPath), request_body = DecryptRequest, security(("bearer" = [])),
    responses((status = 200, body = DecryptResponse), (status = 400, body = ErrorBody, description = "invalid_ciphertext, context_mismatch, key_mismatch, version_below_minimum, unknown_key_version"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "key_disabled, key_pending_deletion, key_destroyed"), (status = 503, body = ErrorBody, description = "hsm_unavailable")))]
pub async fn decrypt(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
    ApiJson(req): ApiJson<DecryptRequest>,
) -> Response {
    let mut f = facts(KeyOperation::Decrypt, project, id);
    let ctx = context(req.context);
    let result = async {
        authorize(&state, &principal, project, Need::Use).await?;
        admit_context(&mut f, &ctx)?;
        let key = load(&state, project, id).await?;
        let service = state.kms.service.clone();
        let ciphertext = req.ciphertext;
        let out = blocking(move || service.decrypt(&key, &ciphertext, &ctx)).await??;
        Ok(out)
    }
    .await;
    if let Ok(out) = &result {
        f.key_version = Some(out.key_version);
    }
    let result = result.map(|out| {
        axum::Json(DecryptResponse {
            plaintext: encode_b64(&out.plaintext),
            key_version: out.key_version,
        })
    });
    respond(&principal, f, result)
}

/// A data key from the HSM's generator, in plaintext and encrypted under the key (`key-user`).
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/generate-data-key", tag = "keys", params(KeyPath), request_body = DataKeyRequest, security(("bearer" = [])),
    responses((status = 200, body = DataKeyResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn generate_data_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
    ApiJson(req): ApiJson<DataKeyRequest>,
) -> Response {
    let mut f = facts(KeyOperation::GenerateDataKey, project, id);
    let ctx = context(req.context);
    let result = async {
        authorize(&state, &principal, project, Need::Use).await?;
        admit_context(&mut f, &ctx)?;
        let key = load(&state, project, id).await?;
        let service = state.kms.service.clone();
        let bytes = req.bytes;
        let out = blocking(move || service.generate_data_key(&key, &ctx, bytes)).await??;
        Ok(out)
    }
    .await;
    if let Ok(out) = &result {
        f.key_version = Some(out.key_version);
    }
    let result = result.map(|out| {
        axum::Json(DataKeyResponse {
            key_id: id,
            plaintext: encode_b64(&out.plaintext),
            ciphertext: out.ciphertext,
            key_version: out.key_version,
        })
    });
    respond(&principal, f, result)
}

/// Decrypt and encrypt again, under the primary version of this key or of `target_key`
/// (`key-user`); the plaintext never leaves the key service.
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/re-encrypt", tag = "keys", params(KeyPath), request_body = ReEncryptRequest, security(("bearer" = [])),
    responses((status = 200, body = ReEncryptResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn re_encrypt(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
    ApiJson(req): ApiJson<ReEncryptRequest>,
) -> Response {
    let mut f = facts(KeyOperation::ReEncrypt, project, id);
    let source_ctx = context(req.context);
    let target_ctx = match req.target_context {
        Some(c) => context(Some(c)),
        None => source_ctx.clone(),
    };
    let target_id = req.target_key.unwrap_or(id);
    let result = async {
        authorize(&state, &principal, project, Need::Use).await?;
        rampart_kms::envelope::validate_context(&source_ctx)?;
        admit_context(&mut f, &target_ctx)?;
        let source = load(&state, project, id).await?;
        let target = if target_id == id {
            source.clone()
        } else {
            load(&state, project, target_id).await?
        };
        let service = state.kms.service.clone();
        let ciphertext = req.ciphertext;
        let out =
            blocking(move || service.re_encrypt(&source, &ciphertext, &source_ctx, &target, &target_ctx)).await??;
        Ok(out)
    }
    .await;
    f.key_id = target_id;
    f.source_key_id = Some(id);
    if let Ok(out) = &result {
        f.key_version = Some(out.key_version);
        f.source_key_version = Some(out.source_key_version);
    }
    let result = result.map(|out| {
        axum::Json(ReEncryptResponse {
            key_id: target_id,
            ciphertext: out.ciphertext,
            key_version: out.key_version,
            source_key_id: out.source_key_id,
            source_key_version: out.source_key_version,
        })
    });
    respond(&principal, f, result)
}
