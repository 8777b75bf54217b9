//! The Keys API (12.4-1, 13.3-1, 13.3-3, 13.3-8): the routes of [`crate::app::keys`], which
//! holds the rules (who may do what, the audit facts of every operation). Request and
//! response bodies of these routes are never logged.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rampart_api::{
    DataKeyRequest, DataKeyResponse, DecryptRequest, DecryptResponse, EncryptRequest, EncryptResponse, Key as KeyView,
    KeyCreate, KeyUpdate, List, ReEncryptRequest, ReEncryptResponse, ScheduleDeletion,
};
use rampart_common::Error;
use rampart_common::error::ErrorBody;
use rampart_common::page::PageParams;
use uuid::Uuid;

use crate::app::keys::{self as app, Audited, Lifecycle};
use crate::auth::Principal;
use crate::http::{ApiJson, ApiPath, ApiQuery};
use crate::state::AppState;

/// Renders a key operation's answer with `status`; its audit facts travel in the response's
/// extensions for the audit trail.
fn render<T: serde::Serialize>(status: StatusCode, done: Audited<T>) -> Response {
    let mut response = match done.result {
        Ok(v) => (status, axum::Json(v)).into_response(),
        Err(e) => e.into_response(),
    };
    response.extensions_mut().insert(done.facts);
    response
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
    Ok(axum::Json(app::list(&state, &principal, project, page).await?))
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
    render(StatusCode::CREATED, app::create(&state, &principal, project, req).await)
}

/// One key (`key-admin` or `key-user`).
#[utoipa::path(get, path = "/v1/projects/{p}/keys/{id}", tag = "keys", params(KeyPath), security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
) -> Result<axum::Json<KeyView>, Error> {
    Ok(axum::Json(app::get(&state, &principal, project, id).await?))
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
    render(StatusCode::OK, app::update(&state, &principal, project, id, req).await)
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
    render(
        StatusCode::OK,
        app::change_state(&state, &principal, project, id, Lifecycle::Rotate).await,
    )
}

/// Enable (`key-admin`).
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/enable", tag = "keys", params(KeyPath), security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "invalid_key_state")))]
pub async fn enable_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
) -> Response {
    render(
        StatusCode::OK,
        app::change_state(&state, &principal, project, id, Lifecycle::Enable).await,
    )
}

/// Disable (`key-admin`): every operation is refused with `key_disabled` until enabled again.
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/disable", tag = "keys", params(KeyPath), security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "invalid_key_state")))]
pub async fn disable_key(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
) -> Response {
    render(
        StatusCode::OK,
        app::change_state(&state, &principal, project, id, Lifecycle::Disable).await,
    )
}

/// Cancel a scheduled deletion (`key-admin`): the key becomes `disabled`.
#[utoipa::path(post, path = "/v1/projects/{p}/keys/{id}/cancel-deletion", tag = "keys", params(KeyPath), security(("bearer" = [])),
    responses((status = 200, body = KeyView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "invalid_key_state")))]
pub async fn cancel_key_deletion(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(KeyPath(project, id)): ApiPath<KeyPath>,
) -> Response {
    render(
        StatusCode::OK,
        app::change_state(&state, &principal, project, id, Lifecycle::CancelDeletion).await,
    )
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
    render(
        StatusCode::OK,
        app::schedule_deletion(&state, &principal, project, id, req).await,
    )
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
    render(StatusCode::OK, app::encrypt(&state, &principal, project, id, req).await)
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
    render(StatusCode::OK, app::decrypt(&state, &principal, project, id, req).await)
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
    render(
        StatusCode::OK,
        app::generate_data_key(&state, &principal, project, id, req).await,
    )
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
    render(
        StatusCode::OK,
        app::re_encrypt(&state, &principal, project, id, req).await,
    )
}
