//! Ingress APIs other than OpenAI's (`POST /v1/messages`, `/v1/messages/count_tokens`,
//! `POST /v1/responses`):
//! the request is translated by `crate::dialect::ingress` and then takes the normal chat
//! path (auth, routing, `auto`, fallback, firewall, exact cache, traces, cost); answers
//! and errors are re-encoded in the client API's shape at the last moment, so everything
//! in between (firewall guard, cache, judge, captured bodies) keeps the internal OpenAI
//! shape — a cached answer is stored once and served to either kind of client.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;
use serde_json::json;

use crate::auth::keys::KeyEntry;
use crate::auth::Scope;
use crate::dialect::ingress::{messages, responses, Ingress};
use crate::error::GatewayError;
use crate::routing::Runtime;

use super::{request, respond, Gateway, RequestCtx};

/// Serve an ingress path (`ctx.ingress` is set).
pub async fn handle(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    key: Option<&KeyEntry>,
    method: &str,
    path: &str,
) -> Result<(), GatewayError> {
    match (method, path.trim_end_matches('/')) {
        ("POST", "/v1/messages") => super::chat(gw, rt, session, ctx, key).await,
        ("POST", "/v1/messages/count_tokens") => count_tokens(rt, session, ctx).await,
        ("POST", "/v1/responses") => super::chat(gw, rt, session, ctx, key).await,
        (m, p) => {
            ctx.endpoint = ctx.ingress.map_or("messages", |i| i.endpoint());
            Err(GatewayError::MethodNotAllowed(format!(
                "Method {m} is not allowed on {p}."
            )))
        }
    }
}

async fn count_tokens(
    rt: &Runtime,
    session: &mut Session,
    ctx: &mut RequestCtx,
) -> Result<(), GatewayError> {
    ctx.endpoint = "messages.count_tokens";
    ctx.caller.require(Scope::Inference)?;
    let raw = request::read_body(session, rt.config.server.max_body_bytes).await?;
    let n = messages::count_tokens(&raw)?;
    let body = Bytes::from(json!({ "input_tokens": n }).to_string());
    respond::write_full(session, ctx, 200, "application/json", body, &[]).await;
    Ok(())
}

/// The client's body as an OpenAI chat-completions body.
pub async fn request_body(
    gw: &Gateway,
    rt: &Runtime,
    ctx: &mut RequestCtx,
    raw: Bytes,
) -> Result<Bytes, GatewayError> {
    match ctx.ingress {
        None => Ok(raw),
        Some(Ingress::Messages) => messages::to_chat(&raw),
        Some(Ingress::Responses) => {
            let mut req = responses::parse(&raw)?;
            let history = match &req.previous_response_id {
                Some(id) => previous(gw, rt, ctx, id).await?,
                None => Vec::new(),
            };
            for r in req.references()? {
                let param = r.param.clone();
                let not_found = || GatewayError::NotFound {
                    message: format!(
                        "Item with id '{}' not found: unknown, past the trace retention, \
                         stored without its bodies, or not visible to this key's project.",
                        r.id.chars().take(140).collect::<String>()
                    ),
                    code: "item_not_found",
                    param: Some(param.clone()),
                };
                let mut exchange = stored(gw, rt, ctx, &r.request_id, &param, not_found).await?;
                if let Some(answer) = exchange.pop() {
                    req.referenced.insert(r.request_id, answer);
                }
            }
            let (chat, echo) = responses::to_chat(&req, history, ctx.trace.ts_ms / 1000)?;
            ctx.responses = Some(Box::new(echo));
            Ok(chat)
        }
    }
}

/// The chat messages of a `previous_response_id` chain, from the trace store: the stored
/// request and answer bodies of that response (`storage.capture_bodies`), within
/// retention, of the caller's own project.
async fn previous(
    gw: &Gateway,
    rt: &Runtime,
    ctx: &RequestCtx,
    id: &str,
) -> Result<Vec<serde_json::Value>, GatewayError> {
    const PARAM: &str = "previous_response_id";
    let not_found = || GatewayError::NotFound {
        message: format!(
            "Previous response with id '{}' not found: unknown, past the trace retention, \
             stored without its bodies, or not visible to this key's project.",
            id.chars().take(140).collect::<String>()
        ),
        code: "previous_response_not_found",
        param: Some(PARAM.to_string()),
    };
    let Some(rid) = responses::request_id_of(id) else {
        return Err(not_found());
    };
    stored(gw, rt, ctx, rid, PARAM, not_found).await
}

/// The chat messages (input, then the assistant answer) of an earlier `/v1/responses`
/// exchange, gateway request id `rid`, from the trace store with bodies, within retention,
/// of the caller's own project. `param`: the request field that pointed at it.
async fn stored(
    gw: &Gateway,
    rt: &Runtime,
    ctx: &RequestCtx,
    rid: &str,
    param: &str,
    not_found: impl Fn() -> GatewayError,
) -> Result<Vec<serde_json::Value>, GatewayError> {
    let slot = match &gw.store {
        Some(s) if rt.storage.capture_bodies => s,
        _ => {
            return Err(GatewayError::invalid_code(
                format!(
                    "{param}: continuing a stored response (previous_response_id, or an \
                     item_reference as clients with store: true send) needs the trace store \
                     with bodies (storage.capture_bodies = true); otherwise send the whole \
                     conversation in `input` (with the Vercel AI SDK: \
                     providerOptions.openai.store = false)."
                ),
                Some(param),
                "unsupported_parameter",
            ))
        }
    };
    let Some(store) = slot.wait(std::time::Duration::from_secs(2)).await else {
        return Err(GatewayError::Unavailable(
            "the trace store is not available".into(),
        ));
    };
    let unavailable = |e: crate::store::StoreError| GatewayError::Unavailable(e.to_string());
    let mut found = store.get_trace(rid).await.map_err(unavailable)?;
    if found.is_none() {
        // Served a moment ago by this instance: wait for its record to be written.
        slot.settle(rid).await;
        found = store.get_trace(rid).await.map_err(unavailable)?;
    }
    let Some(t) = found else {
        return Err(not_found());
    };
    if t.project_id != ctx.trace.project_id || t.endpoint != "responses" || t.status != 200 {
        return Err(not_found());
    }
    // Past retention but not purged yet (the purge runs every purge_interval_secs): gone.
    let now_ms = chrono::Utc::now().timestamp_millis();
    if rt
        .storage
        .past_retention(t.project_id.as_deref(), t.ts_ms, now_ms)
    {
        return Err(not_found());
    }
    let (Some(req), Some(resp)) = (t.request_body.as_deref(), t.response_body.as_deref()) else {
        return Err(not_found());
    };
    // A chain grows by one exchange per call: bounded so no chain grows memory without end.
    let limit = rt.config.server.max_body_bytes.saturating_mul(4);
    if req.len() + resp.len() > limit {
        return Err(GatewayError::invalid_code(
            format!(
                "the conversation of the response {param} points at is longer than {limit} \
                 bytes; send the conversation in `input` instead."
            ),
            Some(param),
            "invalid_value",
        ));
    }
    responses::history(req, resp).map_err(|e| {
        GatewayError::invalid_code(
            format!("the response {param} points at cannot be continued: {e}"),
            Some(param),
            "invalid_value",
        )
    })
}

/// Write a whole OpenAI chat completion (live or from the cache) in the client's shape.
pub async fn write_whole(
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: Bytes,
    extra: &[(String, String)],
) -> bool {
    let converted = match ctx.ingress {
        None => Ok(body),
        Some(Ingress::Messages) => {
            messages::from_completion(&body, &ctx.usage, &ctx.trace.request_id)
        }
        Some(Ingress::Responses) => {
            let echo = ctx.responses.as_deref().cloned().unwrap_or_default();
            responses::from_completion(&body, &ctx.usage, &ctx.trace.request_id, &echo)
        }
    };
    let body = match converted {
        Ok(b) => b,
        Err(e) => {
            let e = GatewayError::Upstream {
                status: 502,
                message: e.to_string(),
                retry_after: None,
                code: "bad_upstream_response",
            };
            return respond::write_error(session, ctx, &e).await;
        }
    };
    respond::write_full(session, ctx, 200, "application/json", body, extra).await
}

/// A stream re-encoder for an ingress API.
pub enum Encoder {
    Messages(Box<messages::MessagesEncoder>),
    Responses(Box<responses::ResponsesEncoder>),
}

/// The stream re-encoder for the client's API (`None`: OpenAI SSE goes out as it is).
pub fn encoder(ctx: &RequestCtx) -> Option<Encoder> {
    ctx.ingress.map(|i| match i {
        Ingress::Messages => Encoder::Messages(Box::new(messages::MessagesEncoder::new(
            &ctx.trace.request_id,
            &ctx.trace.requested_model,
        ))),
        Ingress::Responses => Encoder::Responses(Box::new(responses::ResponsesEncoder::new(
            &ctx.trace.request_id,
            &ctx.trace.requested_model,
            ctx.responses.as_deref().cloned().unwrap_or_default(),
        ))),
    })
}

/// Re-encode a chunk of the internal SSE stream; `end`: the stream is over. The result may
/// be empty (a usage-only chunk): write nothing then, unless it is the end.
pub fn reencode(enc: &mut Option<Encoder>, chunk: Bytes, end: bool) -> Bytes {
    let Some(enc) = enc.as_mut() else {
        return chunk;
    };
    let mut out = BytesMut::with_capacity(chunk.len() + 256);
    match enc {
        Encoder::Messages(m) => {
            m.feed(&chunk, &mut out);
            if end {
                m.finish(&mut out);
            }
        }
        Encoder::Responses(r) => {
            r.feed(&chunk, &mut out);
            if end {
                r.finish(&mut out);
            }
        }
    }
    out.freeze()
}
