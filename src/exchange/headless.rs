//! Headless exchange: one non-streamed chat completion through the gateway's own provider
//! layer, with no downstream session. Background work (shadow calls, the judge) uses it so
//! any configured provider can serve them, with the same build → sign → send → translate
//! steps and the same fallback rules as client traffic (the proxy's `upstream` phase).

use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use crate::dialect::Usage;
use crate::error::GatewayError;
use crate::metrics::metrics;
use crate::routing::{Candidate, Runtime};
use crate::trace::Attempt;

use super::attempt::{self, AttemptFailure, FailureKind, Plan, Step};
use super::{price, translate, Op};
use crate::auth::provider_keys::ProviderKeys;

/// The answer of one headless exchange.
#[derive(Debug, Clone)]
pub struct HeadlessResult {
    /// The OpenAI chat.completion body, as the client path would have answered.
    pub body: Value,
    pub usage: Usage,
    /// Catalog price of the exchange (0 when the model has no price).
    pub cost_usd: f64,
    pub provider: String,
    /// The model the provider reports (else the candidate's).
    pub served_model: String,
    /// Whole exchange, every attempt included.
    pub latency_ms: f64,
    pub attempts: Vec<Attempt>,
}

impl HeadlessResult {
    /// The assistant text of the first choice (empty when it answered with tool calls only).
    pub fn text(&self) -> &str {
        self.body
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

/// One chat completion, no streaming, trying `candidates` in order (fallback on connect
/// errors, timeouts, 429, 5xx and "overloaded", as on the client path).
pub async fn chat_once(
    rt: &Runtime,
    candidates: &[Candidate],
    body: Value,
    request_id: &str,
) -> Result<HeadlessResult, GatewayError> {
    let mut attempts = Vec::new();
    exchange(rt, None, candidates, body, request_id, None, &mut attempts).await
}

fn attempt(cand: &Candidate, status: Option<u16>, outcome: &str, started: Instant) -> Attempt {
    metrics()
        .attempts
        .with_label_values(&[cand.provider.name(), outcome])
        .inc();
    Attempt {
        provider: cand.provider.name().to_string(),
        model: cand.model.clone(),
        status,
        outcome: outcome.to_string(),
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        error: None,
    }
}

fn failed(
    cand: &Candidate,
    status: Option<u16>,
    outcome: &str,
    started: Instant,
    e: String,
) -> Attempt {
    Attempt {
        error: Some(e),
        ..attempt(cand, status, outcome, started)
    }
}

/// As [`chat_once`], recording every attempt in `attempts` even when all fail (the caller
/// traces failed background calls too). `route` selects the route's read timeout.
/// `keys`: the provider keys added at runtime (signing and cooldowns as on the client path).
pub async fn exchange(
    rt: &Runtime,
    keys: Option<&ProviderKeys>,
    candidates: &[Candidate],
    body: Value,
    request_id: &str,
    route: Option<&str>,
    attempts: &mut Vec<Attempt>,
) -> Result<HeadlessResult, GatewayError> {
    let began = Instant::now();
    let Value::Object(mut map) = body else {
        return Err(GatewayError::invalid(
            "a headless chat request must be a JSON object",
            None,
        ));
    };
    // Background calls never stream: the whole answer is needed at once.
    map.insert("stream".into(), Value::Bool(false));
    map.remove("stream_options");
    if !map.get("model").is_some_and(Value::is_string) {
        let m = candidates
            .first()
            .map(|c| c.model.clone())
            .unwrap_or_default();
        map.insert("model".into(), Value::String(m));
    }
    let raw = serde_json::to_vec(&map).map_err(|e| GatewayError::Internal(e.to_string()))?;
    // The client path's validation, so a background call never sends what a client could not.
    let req = super::parse::parse_chat(Bytes::from(raw), None)?;
    let op = Op::Chat(&req);
    let created = crate::dialect::unix_now();
    let limit = rt.config.server.max_response_bytes;
    let mut last: Option<GatewayError> = None;

    // The client path's attempt and order: fallback, and a rejected runtime key retried with
    // the provider's next one.
    let mut plan = Plan::new(candidates);
    while let Some((i, cand)) = plan.next_attempt() {
        let prov = &cand.provider;
        let target = super::target(rt, cand, false, request_id, created);
        let started = Instant::now();
        let resp = match attempt::send(rt, keys, cand, &op, &target, route, |_| {}).await {
            Ok(r) => r,
            Err(f) => {
                attempts.push(failed(
                    cand,
                    f.upstream_status,
                    f.outcome,
                    started,
                    f.message.clone(),
                ));
                let step = plan.after(i, &f);
                let e = headless_error(prov.name(), f);
                if step == Step::Stop {
                    return Err(e);
                }
                last = Some(e);
                continue;
            }
        };
        let status = resp.status();
        let bytes = match resp.body(limit).await {
            Ok(b) => b,
            Err(e) => {
                attempts.push(failed(
                    cand,
                    Some(status),
                    e.outcome(),
                    started,
                    e.to_string(),
                ));
                last = Some(headless_error(prov.name(), AttemptFailure::transport(&e)));
                continue;
            }
        };
        let t = match translate(prov, &op, &bytes, &target) {
            Ok(t) => t,
            Err(e) => {
                attempts.push(failed(
                    cand,
                    Some(status),
                    "bad_response",
                    started,
                    e.to_string(),
                ));
                last = Some(upstream_error(502, e.to_string(), "bad_upstream_response"));
                continue;
            }
        };
        attempts.push(attempt(cand, Some(status), "ok", started));
        let body: Value = serde_json::from_slice(&t.body)
            .map_err(|e| GatewayError::Internal(format!("translated body is not JSON: {e}")))?;
        let cost_usd = price(rt, prov, t.model.as_deref(), &cand.model, &op, &t.usage);
        return Ok(HeadlessResult {
            body,
            usage: t.usage,
            cost_usd,
            provider: prov.name().to_string(),
            served_model: t.model.unwrap_or_else(|| cand.model.clone()),
            latency_ms: began.elapsed().as_secs_f64() * 1000.0,
            attempts: std::mem::take(attempts),
        });
    }
    Err(last.unwrap_or_else(|| {
        upstream_error(
            502,
            "no upstream candidate could be tried".into(),
            "upstream_unavailable",
        )
    }))
}

fn upstream_error(status: u16, message: String, code: &'static str) -> GatewayError {
    GatewayError::Upstream {
        status,
        message,
        retry_after: None,
        code,
    }
}

/// A failed attempt as the error of a headless exchange.
fn headless_error(provider: &str, f: AttemptFailure) -> GatewayError {
    match f.kind {
        FailureKind::Unsupported => {
            GatewayError::invalid_code(f.message, f.param.as_deref(), f.code)
        }
        FailureKind::Build => GatewayError::Internal(f.message),
        // The message already names the provider.
        FailureKind::Sign => upstream_error(f.status, f.message, f.code),
        FailureKind::Transport | FailureKind::Http => {
            upstream_error(f.status, format!("{provider}: {}", f.message), f.code)
        }
    }
}

/// Catalog price of `usage` on a candidate (0 when the model has no price): the estimate
/// background budgets hold before a call.
pub fn estimate_cost(
    rt: &Runtime,
    cand: &Candidate,
    prompt_tokens: u64,
    completion_tokens: u64,
) -> f64 {
    let usage = Usage {
        prompt_tokens,
        completion_tokens,
        reported: true,
        ..Usage::default()
    };
    rt.catalog
        .get(&cand.provider.profile.catalog_providers, &cand.model)
        .map_or(0.0, |m| m.cost(&usage))
}

/// One embedding of `text` through the gateway's own embeddings path (the same build → sign →
/// send → translate as client traffic), trying `candidates` in order. Used by prompt routing;
/// the caller bounds it with a timeout and falls back to in-process features on any error.
pub async fn embed_once(
    rt: &Runtime,
    keys: Option<&ProviderKeys>,
    candidates: &[Candidate],
    text: &str,
    request_id: &str,
) -> Result<Vec<f32>, GatewayError> {
    let created = crate::dialect::unix_now();
    let mut last: Option<GatewayError> = None;
    for cand in candidates {
        let prov = &cand.provider;
        let mut body = serde_json::Map::new();
        body.insert("model".into(), Value::String(cand.model.clone()));
        body.insert("input".into(), Value::String(text.to_string()));
        let op = Op::Embeddings(&body);
        let target = super::target(rt, cand, false, request_id, created);
        let started = Instant::now();
        // Any failure moves on to the next candidate: the caller bounds the whole call with a
        // short timeout, so a rejected key is cooled down (by the attempt) but not retried here.
        let resp = match attempt::send(rt, keys, cand, &op, &target, None, |_| {}).await {
            Ok(r) => r,
            Err(f) => {
                attempt(cand, f.upstream_status, f.outcome, started);
                last = Some(headless_error(prov.name(), f));
                continue;
            }
        };
        let status = resp.status();
        let bytes = match resp.body(16 * 1024 * 1024).await {
            Ok(b) => b,
            Err(e) => {
                last = Some(headless_error(prov.name(), AttemptFailure::transport(&e)));
                continue;
            }
        };
        attempt(cand, Some(status), "ok", started);
        let t = translate(prov, &op, &bytes, &target)
            .map_err(|e| upstream_error(502, e.to_string(), "bad_upstream_response"))?;
        let v: Value = serde_json::from_slice(&t.body)
            .map_err(|e| upstream_error(502, e.to_string(), "bad_upstream_response"))?;
        let emb = v
            .pointer("/data/0/embedding")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty() && a.len() <= 16_384)
            .ok_or_else(|| {
                upstream_error(
                    502,
                    "embeddings response has no data[0].embedding".into(),
                    "bad_upstream_response",
                )
            })?;
        return emb
            .iter()
            .map(|x| x.as_f64().map(|f| f as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| {
                upstream_error(
                    502,
                    "embedding is not numeric".into(),
                    "bad_upstream_response",
                )
            });
    }
    Err(last.unwrap_or_else(|| {
        upstream_error(
            502,
            "no embeddings candidate".into(),
            "upstream_unavailable",
        )
    }))
}
