//! `GET /v1/logs`, `GET /v1/logs/{request_id}`, `GET /v1/sessions/{id}`.
//!
//! Also the helpers the other read endpoints share: scope and method checks, filter
//! parsing with the key's project lock, store availability, error mapping.

use std::collections::BTreeSet;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use serde_json::{json, Map, Value};

use super::{AdminRequest, AdminResponse, Scope, Visibility};
use crate::error::GatewayError;
use crate::store::scoped::scoped;
use crate::store::writer::StoreSlot;
use crate::store::{Cursor, LogFilter, LogQuery, Store, StoreError};
use crate::trace::TraceRecord;

pub const DEFAULT_LIMIT: usize = 50;
pub const MAX_LIMIT: usize = 1000;
/// A session view returns at most this many requests (`truncated: true` beyond).
pub const SESSION_MAX: usize = 10_000;

/// Query parameters every filtered endpoint accepts.
pub const FILTER_PARAMS: &[&str] = &[
    "start",
    "from",
    "end",
    "to",
    "project",
    "project_id",
    "session",
    "session_id",
    "user",
    "user_id",
    "model",
    "provider",
    "route",
    "status",
    "property",
];

pub async fn handle(store: &StoreSlot, req: &AdminRequest) -> Option<AdminResponse> {
    let path = req.path.trim_end_matches('/');
    let res = if path == "/v1/logs" {
        list(store, req).await
    } else if let Some(id) = path.strip_prefix("/v1/logs/") {
        one(store, req, id).await
    } else if let Some(id) = path.strip_prefix("/v1/sessions/") {
        session(store, req, id).await
    } else {
        return None;
    };
    Some(res.unwrap_or_else(|e| AdminResponse::error(&e)))
}

/// Scope first (an inference key learns nothing else), then the method.
pub fn check_read(req: &AdminRequest) -> Result<(), GatewayError> {
    req.caller.require(Scope::Read)?;
    if req.method != "GET" && req.method != "HEAD" {
        return Err(GatewayError::MethodNotAllowed(format!(
            "{} is not allowed on {}; use GET",
            req.method, req.path
        )));
    }
    Ok(())
}

/// Reject parameters the endpoint does not know (a typo must not silently widen a query).
pub fn check_params(req: &AdminRequest, extra: &[&str]) -> Result<(), GatewayError> {
    for (k, _) in &req.query {
        let known = FILTER_PARAMS.contains(&k.as_str())
            || extra.contains(&k.as_str())
            || k.starts_with("property.");
        if !known {
            return Err(GatewayError::invalid(
                format!("unknown query parameter '{k}'"),
                Some(k),
            ));
        }
    }
    Ok(())
}

/// Parse the filters and apply the caller's project lock.
pub fn scoped_filter(req: &AdminRequest) -> Result<LogFilter, GatewayError> {
    let mut f =
        LogFilter::from_query(&req.query).map_err(|(m, p)| GatewayError::invalid(m, Some(&p)))?;
    if let Some(locked) = &req.caller.project {
        if f.project.as_ref().is_some_and(|p| p != locked) {
            return Err(GatewayError::Forbidden(
                "this key is locked to another project".into(),
            ));
        }
        f.project = Some(locked.clone());
    }
    Ok(f)
}

/// The store as the caller may use it: narrowed to its project when its key is locked
/// (`store::scoped`), so no handler can reach another project's rows.
pub fn store_of(slot: &StoreSlot, vis: &Visibility) -> Result<Arc<dyn Store>, GatewayError> {
    slot.get().map(|s| scoped(s, vis)).ok_or_else(|| {
        GatewayError::Unavailable("the trace store is not available yet; retry shortly".into())
    })
}

/// How long a request waits for the store while the gateway is starting (the writer opens it).
pub const STORE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The store behind an optional slot, as `vis` may use it: `None` (`storage.backend =
/// "none"`) is a 503 saying that `what` needs one; otherwise wait up to [`STORE_WAIT`] for
/// the writer to open it.
pub async fn store_for(
    slot: Option<&StoreSlot>,
    what: &str,
    vis: &Visibility,
) -> Result<Arc<dyn Store>, GatewayError> {
    let slot = slot.ok_or_else(|| {
        GatewayError::Unavailable(format!(
            "{what}: storage.backend is \"none\" on this gateway"
        ))
    })?;
    match slot.wait(STORE_WAIT).await {
        Some(s) => Ok(scoped(s, vis)),
        None => store_of(slot, vis),
    }
}

pub fn store_err(e: StoreError) -> GatewayError {
    match e {
        StoreError::Unavailable(_) | StoreError::Timeout(_) => {
            tracing::warn!(error = %e, "trace store unavailable for a read");
            GatewayError::Unavailable(
                "the trace store is temporarily unavailable; retry shortly".into(),
            )
        }
        other => {
            tracing::error!(error = %other, "trace store read failed");
            GatewayError::Internal("trace store query failed".into())
        }
    }
}

/// A stored record as an API object: `{"object":"log", ...record fields}`.
pub fn record_json(r: &TraceRecord) -> Value {
    let mut m = Map::new();
    m.insert("object".into(), Value::String("log".into()));
    if let Ok(Value::Object(fields)) = serde_json::to_value(r) {
        m.extend(fields);
    }
    Value::Object(m)
}

fn parse_limit(req: &AdminRequest) -> Result<usize, GatewayError> {
    match req.param("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(n.min(MAX_LIMIT)),
            _ => Err(GatewayError::invalid(
                format!("'limit' must be an integer between 1 and {MAX_LIMIT}"),
                Some("limit"),
            )),
        },
    }
}

async fn list(slot: &StoreSlot, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
    check_read(req)?;
    check_params(req, &["limit", "cursor", "after"])?;
    let filter = scoped_filter(req)?;
    let limit = parse_limit(req)?;
    let after = match req.param("cursor").or_else(|| req.param("after")) {
        None | Some("") => None,
        Some(c) => Some(Cursor::decode(c).ok_or_else(|| {
            GatewayError::invalid("'cursor' is not a valid cursor", Some("cursor"))
        })?),
    };
    let store = store_of(slot, &req.caller.visibility(None))?;
    // Read-your-writes: the first page includes what this instance just served.
    if after.is_none() {
        slot.settle_all().await;
    }
    let page = store
        .query_logs(&LogQuery {
            filter,
            limit,
            after,
        })
        .await
        .map_err(store_err)?;
    let data: Vec<Value> = page.records.iter().map(record_json).collect();
    let next = page.next.map(|c| c.encode());
    Ok(AdminResponse::json(
        200,
        &json!({"object": "list", "data": data, "has_more": next.is_some(), "next_cursor": next}),
    ))
}

fn decode_id(raw: &str) -> Result<String, GatewayError> {
    let id = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| GatewayError::invalid("id is not valid UTF-8", None))?
        .into_owned();
    if id.is_empty() || id.contains('/') {
        return Err(GatewayError::not_found("no such resource"));
    }
    Ok(id)
}

async fn one(
    slot: &StoreSlot,
    req: &AdminRequest,
    raw: &str,
) -> Result<AdminResponse, GatewayError> {
    check_read(req)?;
    let id = decode_id(raw)?;
    let store = store_of(slot, &req.caller.visibility(None))?;
    slot.settle(&id).await;
    // Another project's trace is not found in the scoped store: answered as unknown.
    match store.get_trace(&id).await.map_err(store_err)? {
        Some(r) => Ok(AdminResponse::json(200, &record_json(&r))),
        None => Err(GatewayError::NotFound {
            message: format!("No log with request id '{id}'"),
            code: "log_not_found",
            param: None,
        }),
    }
}

/// Totals over a session's requests.
pub fn session_totals(recs: &[TraceRecord]) -> Value {
    let mut models = BTreeSet::new();
    let mut providers = BTreeSet::new();
    let (mut errors, mut pt, mut ct, mut cached, mut cost, mut lat) =
        (0u64, 0u64, 0u64, 0u64, 0f64, 0f64);
    let unpriced = recs.iter().filter(|r| r.cost_unknown).count();
    for r in recs {
        if crate::store::is_error(r) {
            errors += 1;
        }
        pt += r.prompt_tokens;
        ct += r.completion_tokens;
        cached += r.cached_tokens;
        cost += r.cost_usd;
        lat += r.latency_ms;
        models.insert(
            r.served_model
                .clone()
                .unwrap_or_else(|| r.requested_model.clone()),
        );
        if let Some(p) = &r.provider {
            providers.insert(p.clone());
        }
    }
    let n = recs.len();
    let first = recs.iter().map(|r| r.ts_ms).min();
    let last_end = recs.iter().map(|r| r.ts_ms + r.latency_ms as i64).max();
    json!({
        "requests": n,
        "errors": errors,
        "prompt_tokens": pt,
        "completion_tokens": ct,
        "cached_tokens": cached,
        "total_tokens": pt + ct,
        "cost_usd": (cost * 1e9).round() / 1e9,
        // Requests whose cost is unknown (no catalog price): `cost_usd` excludes them.
        "cost_unknown_requests": unpriced,
        "latency_ms": (lat * 1e3).round() / 1e3,
        "avg_latency_ms": if n > 0 { ((lat / n as f64) * 1e3).round() / 1e3 } else { 0.0 },
        "models": models,
        "providers": providers,
        "first_ts_ms": first,
        "duration_ms": first.zip(last_end).map(|(a, b)| b - a),
    })
}

async fn session(
    slot: &StoreSlot,
    req: &AdminRequest,
    raw: &str,
) -> Result<AdminResponse, GatewayError> {
    check_read(req)?;
    check_params(req, &[])?;
    let id = decode_id(raw)?;
    let mut filter = scoped_filter(req)?;
    filter.session = Some(id.clone());
    let store = store_of(slot, &req.caller.visibility(None))?;
    slot.settle_all().await;
    let mut recs: Vec<TraceRecord> = Vec::new();
    let mut after = None;
    let mut truncated = false;
    // Bounded: at most SESSION_MAX / MAX_LIMIT + 1 pages.
    for _ in 0..=(SESSION_MAX / MAX_LIMIT) {
        let page = store
            .query_logs(&LogQuery {
                filter: filter.clone(),
                limit: MAX_LIMIT.min(SESSION_MAX - recs.len()).max(1),
                after,
            })
            .await
            .map_err(store_err)?;
        recs.extend(page.records);
        after = page.next;
        if after.is_none() {
            break;
        }
        if recs.len() >= SESSION_MAX {
            truncated = true;
            break;
        }
    }
    if recs.is_empty() {
        return Err(GatewayError::NotFound {
            message: format!("No session '{id}'"),
            code: "session_not_found",
            param: None,
        });
    }
    // Pages come newest first; a session reads oldest first.
    recs.reverse();
    let name = recs.iter().find_map(|r| r.session_name.clone());
    let path = recs.iter().find_map(|r| r.session_path.clone());
    let totals = session_totals(&recs);
    let data: Vec<Value> = recs.iter().map(record_json).collect();
    Ok(AdminResponse::json(
        200,
        &json!({
            "object": "session",
            "id": id,
            "name": name,
            "path": path,
            "totals": totals,
            "truncated": truncated,
            "data": data,
        }),
    ))
}
