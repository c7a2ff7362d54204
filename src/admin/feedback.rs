//! `POST /v1/feedback`: quality signals for the router.
//!
//! Three shapes, one endpoint:
//! - per request: `{"id": "<response id>", "score": 1, "scale": "thumbs"}` (scales `thumbs`,
//!   `one_to_five`, `zero_to_ten`, `unit`; `signal` `feedback` (default), `judge` or `admin`
//!   — the last two need the admin scope),
//! - per session: `{"session_id": "...", "nps": 0..10}`, credited to every routed request of
//!   the session with weight w/k (the session counts once),
//! - optional `comment` (≤ 2,000 chars) and `detail` (JSON, e.g. judge dimensions).
//!
//! The target's route and served model are resolved now (from the in-memory recent decisions,
//! else the store) and stored with the event, so the aggregator folds it without joins and
//! every instance folds it identically. Duplicates answer 409 with the original event; feedback
//! on a request that was not routed (a concrete model) is stored but does not move any route
//! (`"routed": false`).
//!
//! Read-your-writes: an id this instance just served is found at once (the lookup flushes the
//! trace writer, see `trace::fresh`). An id nobody has stored yet — served by another instance
//! whose writer has not flushed — is accepted as pending (`202`, see `store::pending`) and
//! settled when its trace lands; `GET /v1/feedback/{id}` shows the event's status and answers
//! 404 once pending feedback expired unmatched. A session NPS for a session without a routed
//! request waits the same way, and is stored (crediting nothing) if none arrives.

use std::collections::HashSet;

use serde_json::{json, Map, Value};

use super::logs::{store_err, store_for};
use super::{AdminRequest, AdminResponse, Scope, Visibility};
use crate::error::GatewayError;
use crate::feedback::posterior::{normalise, nps_to_unit};
use crate::metrics::metrics;
use crate::routing::auto::AutoState;
use crate::services::aggregator::{parse_scale, scale_name};
use crate::store::pending::{held_session, nps_credited};
use crate::store::writer::StoreSlot;
use crate::store::{
    DecisionQuery, FeedbackInsert, FeedbackRow, PendingFeedback, PendingInsert, Store,
};

const MAX_COMMENT: usize = 2000;
const MAX_DETAIL_BYTES: usize = 16 * 1024;
/// Routed requests of one session that an NPS can credit.
const MAX_SESSION_REQUESTS: usize = crate::store::pending::MAX_SESSION_REQUESTS;

/// `GET /v1/feedback/{id}`: a feedback event's status (`accepted` or `pending`); 404 for an
/// unknown id, including pending feedback that expired before its request was stored.
pub async fn get_one(
    slot: Option<&StoreSlot>,
    req: &AdminRequest,
    id: &str,
) -> Result<AdminResponse, GatewayError> {
    req.caller
        .require(Scope::Inference)
        .or_else(|_| req.caller.require(Scope::Admin))?;
    if req.method != "GET" {
        return Err(GatewayError::MethodNotAllowed(format!(
            "{} is not allowed on {}; use GET",
            req.method, req.path
        )));
    }
    let store = store_for(slot, "feedback needs a store", &req.caller.visibility(None)).await?;
    if let Some(row) = store.get_feedback(id).await.map_err(store_err)? {
        return Ok(AdminResponse::json(200, &event_json(&row, "accepted")));
    }
    let now = chrono::Utc::now().timestamp_millis();
    match store.get_pending_feedback(id).await.map_err(store_err)? {
        Some(p) if p.expires_ms > now => Ok(AdminResponse::json(200, &p.to_json())),
        _ => Err(GatewayError::NotFound {
            message: format!(
                "No feedback event '{id}' (pending feedback is dropped when its request is not stored within the pending window)."
            ),
            code: "feedback_not_found",
            param: None,
        }),
    }
}

/// Park an event whose target is not stored yet: 202 with the pending object, or 409.
async fn park(
    store: &dyn Store,
    row: &FeedbackRow,
    window_ms: i64,
) -> Result<AdminResponse, GatewayError> {
    let p = PendingFeedback::new(row, row.received_ms + window_ms).map_err(store_err)?;
    match store.insert_pending_feedback(&p).await.map_err(store_err)? {
        PendingInsert::Inserted => {
            metrics()
                .feedback_received
                .with_label_values(&[&row.signal, "pending"])
                .inc();
            Ok(AdminResponse::json(202, &p.to_json()))
        }
        PendingInsert::Duplicate { id, pending } => {
            metrics()
                .feedback_received
                .with_label_values(&[&row.signal, "duplicate"])
                .inc();
            let mut resp = AdminResponse::error(&GatewayError::Conflict {
                message: format!(
                    "{} feedback with the same target was already {} as {id}; it is counted once and this one was not stored",
                    row.signal,
                    if pending { "accepted as pending" } else { "recorded" }
                ),
                code: "duplicate_feedback",
            });
            resp.headers.push(("loopgate-feedback-id".into(), id));
            Ok(resp)
        }
    }
}

pub async fn handle(
    slot: Option<&StoreSlot>,
    auto: &AutoState,
    req: &AdminRequest,
) -> Result<AdminResponse, GatewayError> {
    if req.method != "POST" {
        return Err(GatewayError::MethodNotAllowed(format!(
            "{} is not allowed on /v1/feedback; use POST",
            req.method
        )));
    }
    req.caller
        .require(Scope::Inference)
        .or_else(|_| req.caller.require(Scope::Admin))?;
    let mut body: Map<String, Value> = crate::proxy::request::parse_object(&req.body)?;
    // A Messages answer's id is `msg_<request id>` (`/v1/messages`), a Responses answer's
    // `resp_<request id>` (`/v1/responses`): any of them scores it.
    if let Some(Value::String(id)) = body.get_mut("id") {
        if let Some(rest) = id.strip_prefix("msg_").or_else(|| id.strip_prefix("resp_")) {
            *id = rest.to_string();
        }
    }
    // Scoped: a locked key finds (and so scores) only its project's requests and sessions;
    // another project's id answers exactly like an unknown one.
    let vis = req.caller.visibility(None);
    let store = store_for(slot, "feedback needs a store", &vis).await?;
    for k in body.keys() {
        if !matches!(
            k.as_str(),
            "id" | "request_id"
                | "score"
                | "scale"
                | "signal"
                | "session_id"
                | "nps"
                | "comment"
                | "detail"
        ) {
            return Err(GatewayError::invalid(
                format!("unknown field '{k}'"),
                Some(k),
            ));
        }
    }
    let comment = match body.get("comment") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= MAX_COMMENT => Some(s.clone()),
        Some(Value::String(_)) => {
            return Err(GatewayError::invalid(
                format!("'comment' is longer than {MAX_COMMENT} characters"),
                Some("comment"),
            ))
        }
        Some(_) => {
            return Err(GatewayError::invalid(
                "'comment' must be a string",
                Some("comment"),
            ))
        }
    };
    let detail = match body.get("detail") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let s = serde_json::to_string(v).unwrap_or_default();
            if s.len() > MAX_DETAIL_BYTES {
                return Err(GatewayError::invalid(
                    format!("'detail' is larger than {MAX_DETAIL_BYTES} bytes"),
                    Some("detail"),
                ));
            }
            Some(s)
        }
    };
    // Read-your-writes: a request this instance just served is stored before the lookup.
    if let (Some(slot), Some(id)) = (
        slot,
        body.get("id")
            .or_else(|| body.get("request_id"))
            .and_then(Value::as_str),
    ) {
        slot.settle(id).await;
    }
    let window_ms = slot.map_or(0, StoreSlot::pending_window_ms);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let key_id = req.caller.key_id.clone();
    let (row, known) = if body.contains_key("nps")
        || (body.contains_key("session_id") && !body.contains_key("id"))
    {
        session_row(&*store, auto, &vis, &body, now_ms, key_id, comment, detail).await?
    } else {
        request_row(
            &*store, auto, req, &vis, &body, now_ms, key_id, comment, detail,
        )
        .await?
    };
    if !known {
        if window_ms > 0 {
            return park(&*store, &row, window_ms).await;
        }
        // Without a pending window a session NPS is stored at once (crediting none).
        if row.signal != "session_nps" {
            return Err(unknown_target(&row));
        }
    }
    let signal = row.signal.clone();
    match store.insert_feedback(&row).await.map_err(store_err)? {
        FeedbackInsert::Inserted(stored) => {
            metrics()
                .feedback_received
                .with_label_values(&[&signal, "accepted"])
                .inc();
            auto.nudge.notify_one();
            Ok(AdminResponse::json(201, &event_json(&stored, "accepted")))
        }
        FeedbackInsert::Duplicate(orig) => {
            metrics()
                .feedback_received
                .with_label_values(&[&signal, "duplicate"])
                .inc();
            let what = match &orig.session_id {
                Some(s) if orig.signal == "session_nps" => format!("session '{s}'"),
                _ => format!(
                    "request '{}'",
                    orig.request_id.as_deref().unwrap_or_default()
                ),
            };
            let mut resp = AdminResponse::error(&GatewayError::Conflict {
                message: format!(
                    "{} feedback for {what} was already recorded as {} (value {}); it is counted once and this one was not stored",
                    orig.signal, orig.id, orig.value
                ),
                code: "duplicate_feedback",
            });
            resp.headers
                .push(("loopgate-feedback-id".into(), orig.id.clone()));
            Ok(resp)
        }
    }
}

fn new_event_id() -> String {
    crate::proxy::ctx::random_id("fb_", crate::proxy::ctx::BASE36, 24)
}

pub fn event_json(r: &FeedbackRow, status: &str) -> Value {
    json!({
        "object": "feedback",
        "id": r.id,
        "status": status,
        "signal": r.signal,
        "request_id": r.request_id,
        "session_id": r.session_id,
        "routed": r.route.is_some() || !r.targets.is_empty(),
        "route": r.route,
        "model": r.model,
        "context": r.context,
        "value": r.value,
        "scale": r.scale,
        "credited_requests": if r.signal == "session_nps" { r.targets.len() } else { usize::from(r.route.is_some()) },
        "at_ms": r.at_ms,
        "received_ms": r.received_ms,
        "sequence": r.seq,
    })
}

#[allow(clippy::too_many_arguments)]
async fn request_row(
    store: &dyn Store,
    auto: &AutoState,
    req: &AdminRequest,
    vis: &Visibility,
    body: &Map<String, Value>,
    now_ms: i64,
    key_id: Option<String>,
    comment: Option<String>,
    detail: Option<String>,
) -> Result<(FeedbackRow, bool), GatewayError> {
    let id = body
        .get("id")
        .or_else(|| body.get("request_id"))
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 128)
        .ok_or_else(|| {
            GatewayError::invalid_code(
                "Missing 'id' (the response id to score) or 'session_id' with 'nps'.",
                Some("id"),
                "missing_required_parameter",
            )
        })?
        .to_string();
    let signal = match body
        .get("signal")
        .and_then(Value::as_str)
        .unwrap_or("feedback")
    {
        s @ "feedback" => s,
        s @ ("judge" | "admin") => {
            req.caller.require(Scope::Admin)?;
            s
        }
        other => {
            return Err(GatewayError::invalid(
                format!("'signal' must be feedback, judge or admin, got '{other}'"),
                Some("signal"),
            ))
        }
    };
    let default_scale = if signal == "judge" { "unit" } else { "thumbs" };
    let scale_s = match body.get("scale") {
        None | Some(Value::Null) => default_scale,
        Some(Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(GatewayError::invalid(
                "'scale' must be a string",
                Some("scale"),
            ))
        }
    };
    let scale = parse_scale(scale_s).ok_or_else(|| {
        GatewayError::invalid(
            format!("'scale' must be one of thumbs (0/1), one_to_five, zero_to_ten, unit; got '{scale_s}'"),
            Some("scale"),
        )
    })?;
    let score = match body.get("score") {
        Some(Value::Bool(b)) => f64::from(u8::from(*b)),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| GatewayError::invalid("'score' must be a number", Some("score")))?,
        None => {
            return Err(GatewayError::invalid_code(
                "Missing required parameter: 'score'.",
                Some("score"),
                "missing_required_parameter",
            ))
        }
    };
    normalise(score, scale).map_err(|e| GatewayError::invalid(e.to_string(), Some("score")))?;
    // Find what was served for this id: recent memory first (the trace may not be stored yet).
    let recent = auto.recent(&id).filter(|r| vis.sees(r.project.as_deref()));
    let (route, model, context, session, at_ms, project) = if let Some(r) = recent {
        (
            Some(r.route.to_string()),
            Some(r.served.to_string()),
            r.context.map(|c| c.to_string()),
            r.session,
            r.at_ms,
            r.project.map(|p| p.to_string()),
        )
    } else if let Some(d) = store.get_decision(&id).await.map_err(store_err)? {
        (
            Some(d.route),
            Some(d.served),
            d.context,
            d.session_id,
            d.ts_ms,
            d.project,
        )
    } else if let Some(t) = store.get_trace(&id).await.map_err(store_err)? {
        (
            None,
            t.served_model,
            None,
            t.session_id,
            t.ts_ms,
            t.project_id,
        )
    } else {
        // Not stored yet (or never served, or another project's: the scoped store does not
        // find those): the caller parks it as pending or rejects it. A pending event keeps the
        // caller's project so reconciliation never credits another project's request.
        (None, None, None, None, 0, vis.project().map(str::to_string))
    };
    let known = at_ms != 0;
    let dedup_key = match signal {
        "admin" => format!(
            "request:{id}:admin:{}",
            key_id.as_deref().unwrap_or("anonymous")
        ),
        s => format!("request:{id}:{s}"),
    };
    let routed = route.is_some();
    let row = FeedbackRow {
        seq: 0,
        id: new_event_id(),
        dedup_key,
        signal: signal.to_string(),
        request_id: Some(id),
        session_id: session,
        route,
        // Unrouted requests keep the served model for reference only.
        model,
        context: if routed { context } else { None },
        value: score,
        scale: scale_name(scale).to_string(),
        targets: Vec::new(),
        at_ms,
        received_ms: now_ms,
        key_id,
        comment,
        detail,
        project,
    };
    Ok((row, known))
}

/// The 404 for feedback on an unknown request id (pending feedback disabled).
fn unknown_target(row: &FeedbackRow) -> GatewayError {
    GatewayError::NotFound {
        message: format!(
            "No request with id '{}' is known to this gateway (ids are the `id` of a chat completion; traces are kept per the retention settings).",
            row.request_id.as_deref().unwrap_or_default()
        ),
        code: "unknown_request_id",
        param: Some("id".into()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn session_row(
    store: &dyn Store,
    auto: &AutoState,
    vis: &Visibility,
    body: &Map<String, Value>,
    now_ms: i64,
    key_id: Option<String>,
    comment: Option<String>,
    detail: Option<String>,
) -> Result<(FeedbackRow, bool), GatewayError> {
    let session = body
        .get("session_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && s.len() <= 256)
        .ok_or_else(|| {
            GatewayError::invalid_code(
                "Missing 'session_id' (a session NPS needs the session it rates).",
                Some("session_id"),
                "missing_required_parameter",
            )
        })?
        .to_string();
    let nps = body.get("nps").and_then(Value::as_f64).ok_or_else(|| {
        GatewayError::invalid_code(
            "Missing or non-numeric 'nps' (0..10).",
            Some("nps"),
            "missing_required_parameter",
        )
    })?;
    nps_to_unit(nps).map_err(|e| GatewayError::invalid(e.to_string(), Some("nps")))?;
    if body.contains_key("score") || body.contains_key("id") {
        return Err(GatewayError::invalid(
            "send either a per-request score (id + score) or a session NPS (session_id + nps), not both",
            Some("nps"),
        ));
    }
    // The session's routed requests: stored decisions plus those not yet stored.
    let mut seen: HashSet<String> = HashSet::new();
    // (target, whether the request held the session): see `nps_credited`.
    let mut targets: Vec<((String, String, String), bool)> = Vec::new();
    let mut projects: HashSet<Option<String>> = HashSet::new();
    let mut latest = 0i64;
    for (rid, r) in auto.recent_in_session(&session) {
        if !vis.sees(r.project.as_deref()) {
            continue;
        }
        if seen.insert(rid) {
            projects.insert(r.project.as_deref().map(str::to_string));
            latest = latest.max(r.at_ms);
            targets.push((
                (
                    r.route.to_string(),
                    r.served.to_string(),
                    r.context.as_deref().unwrap_or_default().to_string(),
                ),
                r.held_session,
            ));
        }
    }
    let stored = store
        .query_decisions(&DecisionQuery {
            session_id: Some(session.clone()),
            limit: MAX_SESSION_REQUESTS,
            ..Default::default()
        })
        .await
        .map_err(store_err)?;
    for d in stored {
        if seen.insert(d.request_id.clone()) {
            projects.insert(d.project.clone());
            latest = latest.max(d.ts_ms);
            let held = held_session(&d);
            targets.push(((d.route, d.served, d.context.unwrap_or_default()), held));
        }
    }
    let mut targets = nps_credited(targets);
    // No routed request known yet: the caller parks the NPS until one lands (or stores it
    // crediting none when the window closes).
    let known = !targets.is_empty();
    targets.truncate(MAX_SESSION_REQUESTS);
    // Session ids are chosen by clients, so two projects may use the same one: the event (and
    // its dedup key) belongs to the project of the requests it credits. Only an unlocked
    // caller can credit requests of several projects at once; that event has no project.
    // With no request known yet, a locked caller's pending NPS keeps its project, so
    // reconciliation credits only that project's requests.
    let project = match projects.len() {
        0 => vis.project().map(str::to_string),
        1 => projects.into_iter().next().flatten(),
        _ => None,
    };
    let dedup_key = match &project {
        Some(p) => format!("session:{p}:{session}"),
        None => format!("session:{session}"),
    };
    let row = FeedbackRow {
        seq: 0,
        id: new_event_id(),
        dedup_key,
        signal: "session_nps".into(),
        request_id: None,
        session_id: Some(session),
        route: None,
        model: None,
        context: None,
        value: nps,
        scale: "nps".into(),
        targets,
        at_ms: latest,
        received_ms: now_ms,
        key_id,
        comment,
        detail,
        project,
    };
    Ok((row, known))
}
