//! The two layers that write the records of API calls: [`record_calls`] (outermost: the
//! completion record of every audited call, the refusal limiter) and [`write_ahead`]
//! (innermost: the `pending` record before a state-changing handler runs).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::Method;
use rampart_audit::flood::Caller;
use rampart_audit::record::{Actor, AuditResult, Target};
use rampart_common::Error;
use rampart_common::error::{ErrorChain, ErrorCode};
use serde_json::Value;

use super::operations::{Operations, UNDECLARED, is_audited, resolve};
use super::slot::{AuditSlot, CallInfo, SLOT, SlotData, note};
use crate::auth::ClientIp;
use crate::state::AppState;

/// The id of what a `201 Created` made, from its JSON body (`id`, or `node_id`).
fn created_id(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let id = v.get("id").or_else(|| v.get("node_id"))?;
    id.as_str().map(str::to_string)
}

/// What [`record_calls`] needs: the state, and the operation each route's use case declares.
#[derive(Clone)]
pub struct Recorder {
    pub state: AppState,
    pub operations: Arc<Operations>,
}

/// The middleware: see the module documentation.
pub async fn record_calls(State(recorder): State<Recorder>, req: Request, next: Next) -> Response {
    let Recorder { state, operations } = recorder;
    let start = Instant::now();
    let method = req.method().clone();
    let Some(matched) = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()) else {
        // No route: 404 or 405 from the fallbacks, nothing happened.
        return next.run(req).await;
    };
    let (user_agent, request_id) = {
        let header = |name| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        (header(http::header::USER_AGENT), header(crate::http::REQUEST_ID))
    };
    let operation = operations.get(&method, &matched).unwrap_or_else(|| {
        tracing::error!(%method, route = %matched, "a route without a declared audit operation");
        &UNDECLARED
    });
    let class = resolve(operation, &matched, req.uri().path());
    let mutating = matches!(method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    let info = CallInfo {
        now: state.now(),
        start,
        write_ahead: mutating && is_audited(&method, &class, 200),
        class,
        client_ip: req.extensions().get::<ClientIp>().map(|c| c.0.to_string()),
        user_agent,
        request_id,
    };
    let slot = AuditSlot(Arc::new(Mutex::new(SlotData {
        call: Some(info.clone()),
        ..SlotData::default()
    })));
    let response = SLOT.scope(slot.clone(), next.run(req)).await;
    let status = response.status().as_u16();
    if !is_audited(&method, &info.class, status) {
        return response;
    }
    let caller = {
        let data = slot.0.lock().expect("audit slot lock");
        if data.rate_limited {
            return response;
        }
        authenticated_caller(data.actor.as_ref(), &info)
    };
    if let Some(caller) = caller
        && (400..500).contains(&status)
        && state.audit.refusals.refused(&caller, Instant::now())
    {
        tracing::warn!(principal = ?caller.principal, source = ?caller.source, limit = state.audit.config.refused_calls_per_minute, operation = %info.class.operation, "refused-call limit reached: further calls of this principal from this address get 429 for the rest of the minute");
    }
    let code = response.extensions().get::<ErrorCode>().map(|c| c.0.to_string());
    let (response, created) = if status == 201 {
        let (parts, body) = response.into_parts();
        match axum::body::to_bytes(body, 4 << 20).await {
            Ok(bytes) => {
                let id = created_id(&bytes);
                (Response::from_parts(parts, Body::from(bytes)), id)
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot read a response body for its audit record");
                return Error::internal("auditing the call", "response body unreadable").into_response();
            }
        }
    } else {
        (response, None)
    };
    let mut data = std::mem::take(&mut *slot.0.lock().expect("audit slot lock"));
    let actor = data.actor.take().unwrap_or_else(Actor::anonymous);
    let class = &info.class;
    let target = Target::new(
        class.target_type.clone(),
        data.target_id.or(created).or(class.target_id.clone()),
        data.target_project.or(class.project.clone()),
    );
    if let Some(seq) = data.intent_seq {
        data.details.insert("intent_seq".into(), seq.into());
    }
    let result = AuditResult::from_status(status, code);
    let mut main = info.record(&actor, class.operation.clone(), target, result);
    main.details = data.details;
    let mut records = vec![main];
    for (op, target, result, details) in data.events {
        let mut r = info.record(&actor, op, target, result);
        r.details = details;
        records.push(r);
    }
    for rec in records {
        if let Err(e) = state.audit.log.append(rec).await {
            tracing::error!(error = %ErrorChain(&e), operation = %class.operation, status, intent_seq = ?data.intent_seq, "audit record not written; the call fails");
            return match data.intent_seq {
                // The handler ran: say so, so that nobody retries blindly.
                Some(seq) if (200..400).contains(&status) => Error::Unavailable(format!(
                    "the operation was performed, but its completion record could not be written; the audit trail holds it as pending record {seq}"
                ))
                .into_response(),
                _ => e.into_public().into_response(),
            };
        }
    }
    state.audit.wake_pump.notify_one();
    response
}

/// Whom the refusal limiter counts a call against: authenticated principals only (an
/// unauthenticated refusal names nobody and carries nothing from the request but its address).
fn authenticated_caller(actor: Option<&Actor>, info: &CallInfo) -> Option<Caller> {
    let principal = actor?.id.clone()?;
    Some(Caller {
        principal: Some(principal),
        source: info.client_ip.clone(),
    })
}

/// The write-ahead step of a state-changing call (see the module documentation): the innermost
/// layer of every route group, so the pending record names the authenticated actor and a call
/// refused by authentication changes nothing and needs none.
pub async fn write_ahead(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limited = SLOT
        .try_with(|s| {
            let mut d = s.0.lock().expect("audit slot lock");
            let caller = authenticated_caller(d.actor.as_ref(), d.call.as_ref()?)?;
            let wait = state.audit.refusals.retry_after(&caller, Instant::now())?;
            d.rate_limited = true;
            Some(wait)
        })
        .ok()
        .flatten();
    if let Some(retry_after_s) = limited {
        return Error::RateLimited { retry_after_s }.into_response();
    }
    let due = SLOT
        .try_with(|s| {
            let d = s.0.lock().expect("audit slot lock");
            let info = d.call.as_ref().filter(|c| c.write_ahead && d.intent_seq.is_none())?;
            let actor = d.actor.clone().unwrap_or_else(Actor::anonymous);
            let c = &info.class;
            let target = Target::new(c.target_type.clone(), c.target_id.clone(), c.project.clone());
            Some(info.record(&actor, c.operation.clone(), target, AuditResult::pending()))
        })
        .ok()
        .flatten();
    if let Some(rec) = due {
        let op = rec.operation.clone();
        match state.audit.log.append(rec).await {
            Ok(r) => {
                note(|s| s.intent_seq = Some(r.seq));
                // Its transactions mark the intent as committed (see `reconcile_intents`).
                return rampart_db::intents::scope(r.seq, next.run(req)).await;
            }
            Err(e) => {
                tracing::error!(error = %ErrorChain(&e), operation = %op, "write-ahead audit record not written; the call is refused before it runs");
                return e.into_public().into_response();
            }
        }
    }
    next.run(req).await
}
