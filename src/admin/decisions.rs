//! Decision traces: `GET /v1/decisions/{id}`, `GET /v1/decisions`, `GET /v1/export/decisions`
//! and the dry run `POST /v1/routing/explain`.
//!
//! A stored decision is the signed trace (the trace's fields plus `signature`) plus index
//! columns. The API returns the signed object as stored, so any response can be verified
//! with the signing key (HMAC-SHA256 over the canonical JSON of `trace`, see docs/feedback-routing.md).

use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::export::{export_gzip, export_response, gzip_param, JsonlExport};
use super::logs::{store_err, store_for};
use super::{AdminRequest, AdminResponse, Scope};
use crate::error::GatewayError;
use crate::feedback::decision::{sign, verify_value};
use crate::routing::auto::AutoState;
use crate::routing::Runtime;
use crate::store::writer::StoreSlot;
use crate::store::{DecisionQuery, DecisionRow, Store};

const MAX_LIMIT: usize = 1000;
const EXPORT_PAGE: usize = 1000;
const MAX_PAGES: usize = 100_000;

fn check_get(req: &AdminRequest) -> Result<(), GatewayError> {
    req.caller.require(Scope::Read)?;
    if req.method != "GET" {
        return Err(GatewayError::MethodNotAllowed(format!(
            "{} is not allowed on {}; use GET",
            req.method, req.path
        )));
    }
    Ok(())
}

/// A stored decision as an API object.
pub fn decision_json(d: &DecisionRow) -> Value {
    let signed: Value = serde_json::from_str(&d.signed).unwrap_or(Value::Null);
    json!({
        "object": "routing.decision",
        "id": d.request_id,
        "created_ms": d.ts_ms,
        "route": d.route,
        "mode": d.mode,
        "session_id": d.session_id,
        "chosen": d.chosen,
        "served": d.served,
        "baseline": d.baseline,
        "context": d.context,
        "kind": d.kind,
        "shadow": d.shadow,
        "confidence": d.confidence,
        "quality": d.quality,
        "propensity": d.propensity,
        "table_version": d.table_version,
        // The signed trace exactly as stored: verify it with the signing key.
        "decision": signed,
    })
}

/// The decision `id` as the caller may see it (read-your-writes: a decision this instance just
/// made is flushed before the lookup), and the store it came from; 404 when there is none.
async fn stored_decision(
    slot: Option<&StoreSlot>,
    req: &AdminRequest,
    id: &str,
) -> Result<(Arc<dyn Store>, DecisionRow), GatewayError> {
    let store = store_for(
        slot,
        "decisions are stored with traces",
        &req.caller.visibility(None),
    )
    .await?;
    if let Some(s) = slot {
        s.settle(id).await;
    }
    match store.get_decision(id).await.map_err(store_err)? {
        Some(d) => Ok((store, d)),
        None => Err(GatewayError::NotFound {
            message: format!(
                "No decision with id '{id}' (decisions exist for `auto` requests and are stored with their trace, usually within a second)."
            ),
            code: "decision_not_found",
            param: None,
        }),
    }
}

pub async fn get_one(
    slot: Option<&StoreSlot>,
    req: &AdminRequest,
    id: &str,
) -> Result<AdminResponse, GatewayError> {
    check_get(req)?;
    let (store, d) = stored_decision(slot, req, id).await?;
    let mut v = decision_json(&d);
    // Quality signals recorded for this request since (judge dimensions, user scores).
    let fb = store.feedback_for_request(id).await.map_err(store_err)?;
    let scores: Vec<Value> = fb
        .iter()
        .map(|f| {
            json!({
                "id": f.id, "signal": f.signal, "value": f.value, "scale": f.scale,
                "model": f.model, "received_ms": f.received_ms,
                "detail": f.detail.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()),
            })
        })
        .collect();
    if let Some(o) = v.as_object_mut() {
        o.insert("scores".into(), Value::Array(scores));
    }
    Ok(AdminResponse::json(200, &v))
}

/// `POST /v1/decisions/{id}/verify`: check the stored signed trace against this gateway's
/// signing key. Read scope and the visibility rules of `GET /v1/decisions/{id}`; the answer
/// is `{"valid": bool, "key_id", "alg", "reason"}` (`reason` says why a signature fails).
pub async fn verify(
    slot: Option<&StoreSlot>,
    auto: &AutoState,
    req: &AdminRequest,
    id: &str,
) -> Result<AdminResponse, GatewayError> {
    req.caller.require(Scope::Read)?;
    if req.method != "POST" {
        return Err(GatewayError::MethodNotAllowed(format!(
            "{} is not allowed on {}; use POST",
            req.method, req.path
        )));
    }
    let (_, d) = stored_decision(slot, req, id).await?;
    let signed: Value = serde_json::from_str(&d.signed).unwrap_or(Value::Null);
    let sig = &signed["signature"];
    let result = verify_value(&signed, &auto.signing);
    Ok(AdminResponse::json(
        200,
        &json!({
            "object": "routing.decision.verification",
            "id": d.request_id,
            "valid": result.is_ok(),
            "key_id": sig["key_id"],
            "alg": sig["alg"],
            "reason": result.err().map(|e| e.to_string()),
        }),
    ))
}

fn num(req: &AdminRequest, k: &str) -> Result<Option<f64>, GatewayError> {
    match req.param(k) {
        None => Ok(None),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .map(Some)
            .ok_or_else(|| GatewayError::invalid(format!("'{k}' must be a number"), Some(k))),
    }
}

fn time(req: &AdminRequest, k: &str) -> Result<Option<i64>, GatewayError> {
    match req.param(k) {
        None => Ok(None),
        Some(v) => crate::store::query::parse_time(v).map(Some).ok_or_else(|| {
            GatewayError::invalid(
                format!("'{k}' must be unix milliseconds or an RFC 3339 time"),
                Some(k),
            )
        }),
    }
}

/// Parse the list/export filters.
fn query(req: &AdminRequest, extra: &[&str]) -> Result<DecisionQuery, GatewayError> {
    const KNOWN: &[&str] = &[
        "session_id",
        "route",
        "model",
        "from",
        "to",
        "min_confidence",
        "max_confidence",
        "min_quality",
        "max_quality",
        "limit",
        "cursor",
    ];
    for (k, _) in &req.query {
        if !KNOWN.contains(&k.as_str()) && !extra.contains(&k.as_str()) {
            return Err(GatewayError::invalid(
                format!("unknown query parameter '{k}'"),
                Some(k),
            ));
        }
    }
    let limit = match req.param("limit") {
        None => 100,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                GatewayError::invalid(format!("'limit' must be 1..={MAX_LIMIT}"), Some("limit"))
            })?,
    };
    let before = match req.param("cursor") {
        None => None,
        Some(c) => {
            let (ts, id) = c
                .split_once(':')
                .and_then(|(t, i)| Some((t.parse::<i64>().ok()?, i.to_string())))
                .ok_or_else(|| GatewayError::invalid("malformed 'cursor'", Some("cursor")))?;
            Some((ts, id))
        }
    };
    Ok(DecisionQuery {
        session_id: req.param("session_id").map(str::to_string),
        route: req.param("route").map(str::to_string),
        model: req.param("model").map(str::to_string),
        from_ms: time(req, "from")?,
        to_ms: time(req, "to")?,
        min_confidence: num(req, "min_confidence")?,
        max_confidence: num(req, "max_confidence")?,
        min_quality: num(req, "min_quality")?,
        max_quality: num(req, "max_quality")?,
        before,
        limit,
        // The caller's project lock is applied by the scoped store.
        project: None,
    })
}

pub async fn list(
    slot: Option<&StoreSlot>,
    req: &AdminRequest,
) -> Result<AdminResponse, GatewayError> {
    check_get(req)?;
    let q = query(req, &[])?;
    let store = store_for(
        slot,
        "decisions are stored with traces",
        &req.caller.visibility(None),
    )
    .await?;
    if let (Some(s), None) = (slot, &q.before) {
        s.settle_all().await;
    }
    let rows = store.query_decisions(&q).await.map_err(store_err)?;
    let next = (rows.len() == q.limit)
        .then(|| rows.last().map(|d| format!("{}:{}", d.ts_ms, d.request_id)))
        .flatten();
    let data: Vec<Value> = rows.iter().map(decision_json).collect();
    Ok(AdminResponse::json(
        200,
        &json!({"object": "list", "data": data, "has_more": next.is_some(), "next_cursor": next}),
    ))
}

/// `GET /v1/export/decisions`: JSONL of signed decisions (newest first) with a SHA-256 trailer
/// `{"sha256": ..., "count": N}` over the preceding bytes (uncompressed).
pub async fn export(
    slot: Option<&StoreSlot>,
    req: &AdminRequest,
) -> Result<AdminResponse, GatewayError> {
    check_get(req)?;
    let mut q = query(req, &["gzip"])?;
    q.limit = EXPORT_PAGE;
    let gzip = gzip_param(req)?;
    let store = store_for(
        slot,
        "decisions are stored with traces",
        &req.caller.visibility(None),
    )
    .await?;
    store.health().await.map_err(store_err)?;
    let (tx, rx) = mpsc::channel::<Bytes>(8);
    tokio::spawn(stream_export(store, q, export_gzip(req, gzip), tx));
    Ok(export_response(
        req,
        gzip,
        "loopgate-decisions.jsonl.gz",
        rx,
    ))
}

async fn stream_export(
    store: Arc<dyn Store>,
    mut q: DecisionQuery,
    gzip: bool,
    tx: mpsc::Sender<Bytes>,
) {
    let mut out = JsonlExport::new(gzip);
    for _ in 0..MAX_PAGES {
        let page = match store.query_decisions(&q).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, exported = out.count, "decision export stopped by a store error");
                let _ = tx
                    .send(out.fail("export interrupted: the store failed; retry the export"))
                    .await;
                return;
            }
        };
        for d in &page {
            // The stored signed object, byte for byte as signed: verifiable line by line.
            out.line(d.signed.as_bytes());
        }
        let chunk = out.take();
        if !chunk.is_empty() && tx.send(chunk).await.is_err() {
            return;
        }
        match page.last() {
            Some(d) if page.len() == q.limit => q.before = Some((d.ts_ms, d.request_id.clone())),
            _ => break,
        }
    }
    let last = out.finish();
    if !last.is_empty() {
        let _ = tx.send(last).await;
    }
}

/// `POST /v1/routing/explain`: what the router would pick for this chat request now, with the
/// full signed trace — no provider call, no trace row, no state change.
pub async fn explain(
    rt: &Runtime,
    auto: &AutoState,
    req: &AdminRequest,
) -> Result<AdminResponse, GatewayError> {
    if req.method != "POST" {
        return Err(GatewayError::MethodNotAllowed(
            "use POST with a chat completion body".into(),
        ));
    }
    if !(req.caller.has(Scope::Read) || req.caller.has(Scope::Inference)) {
        req.caller.require(Scope::Read)?;
    }
    let chat = crate::proxy::request::parse_chat(req.body.clone(), None)?;
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let rule = header(&rt.headers.routing_rule)
        .or_else(|| chat.model.strip_prefix("auto:"))
        .or_else(|| (chat.model == "auto").then_some("default"))
        .ok_or_else(|| {
            GatewayError::invalid(
                "explain routes `auto` requests: set model to \"auto\" or \"auto:<route>\" (or the routing-rule header)",
                Some("model"),
            )
        })?
        .to_string();
    // As on the request path: the key's project wins over the header, and a route owned by
    // another project answers like an undefined one.
    let project = req
        .caller
        .project
        .as_deref()
        .or_else(|| header(&rt.headers.project_id));
    let rc = rt
        .route(&rule)
        .filter(|rc| rc.project.is_none() || project.is_none() || rc.project.as_deref() == project)
        .ok_or_else(|| GatewayError::NotFound {
            message: format!("Routing rule '{rule}' is not defined."),
            code: "route_not_found",
            param: Some("model".into()),
        })?;
    if !rc.is_feedback() {
        return Err(GatewayError::invalid(
            format!("Routing rule '{rule}' is a static rule (no baseline): nothing to explain"),
            Some("model"),
        ));
    }
    let context = rc
        .contextual
        .then(|| crate::feedback::context::context_key(chat.messages()).as_str());
    let pool = match rc.learning {
        crate::config::Learning::Project => project,
        crate::config::Learning::Shared => None,
    };
    let view = auto.lookup_for(&rule, pool, context).ok_or_else(|| {
        let why = auto
            .table
            .load()
            .broken
            .iter()
            .find(|(r, _)| *r == rule)
            .map(|(_, e)| e.clone())
            .unwrap_or_else(|| "not in the current router table yet".into());
        GatewayError::Unavailable(format!("route '{rule}' cannot be routed: {why}"))
    })?;
    // Sticky sessions are per project, as on the request path.
    let session = header(&rt.headers.session_id).map(|s| match project {
        Some(p) => format!("{p}\u{1e}{s}"),
        None => s.to_string(),
    });
    let now = chrono::Utc::now().timestamp_millis();
    // A fixed draw: the explanation shows the exploit decision, not a random exploration.
    let d = auto.explain(
        &view.prepared,
        &rule,
        session.as_deref(),
        now,
        0.999_999,
        crate::routing::auto::ScoreHint::None,
    );
    let mut trace = d.trace("explain", now);
    trace.context = context.map(str::to_string);
    trace.pool = Some(crate::routing::auto::pool_name(view.pool.as_deref()));
    let signed = sign(&trace, &auto.signing)
        .map_err(|e| GatewayError::Internal(format!("decision could not be signed: {e}")))?;
    Ok(AdminResponse::json(
        200,
        &json!({
            "object": "routing.explanation",
            "route": rule,
            "model": d.served_model(),
            "chosen": d.chosen_model(),
            "context": context,
            "table_version": d.route.table_version,
            "decision": signed,
        }),
    ))
}
