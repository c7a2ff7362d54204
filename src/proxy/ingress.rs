//! Ingress APIs other than OpenAI's (`POST /v1/messages`, `/v1/messages/count_tokens`):
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
use crate::dialect::ingress::{messages, Ingress};
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
        (m, p) => {
            ctx.endpoint = "messages";
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
pub fn request_body(ctx: &RequestCtx, raw: Bytes) -> Result<Bytes, GatewayError> {
    match ctx.ingress {
        None => Ok(raw),
        Some(Ingress::Messages) => messages::to_chat(&raw),
    }
}

/// Write a whole OpenAI chat completion (live or from the cache) in the client's shape.
pub async fn write_whole(
    session: &mut Session,
    ctx: &mut RequestCtx,
    body: Bytes,
    extra: &[(String, String)],
) -> bool {
    let body = match ctx.ingress {
        None => body,
        Some(Ingress::Messages) => {
            match messages::from_completion(&body, &ctx.usage, &ctx.request_id) {
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
            }
        }
    };
    respond::write_full(session, ctx, 200, "application/json", body, extra).await
}

/// The stream re-encoder for the client's API (`None`: OpenAI SSE goes out as it is).
pub fn encoder(ctx: &RequestCtx) -> Option<messages::MessagesEncoder> {
    ctx.ingress.map(|i| match i {
        Ingress::Messages => messages::MessagesEncoder::new(&ctx.request_id, &ctx.requested_model),
    })
}

/// Re-encode a chunk of the internal SSE stream; `end`: the stream is over. The result may
/// be empty (a usage-only chunk): write nothing then, unless it is the end.
pub fn reencode(enc: &mut Option<messages::MessagesEncoder>, chunk: Bytes, end: bool) -> Bytes {
    let Some(enc) = enc.as_mut() else {
        return chunk;
    };
    let mut out = BytesMut::with_capacity(chunk.len() + 256);
    enc.feed(&chunk, &mut out);
    if end {
        enc.finish(&mut out);
    }
    out.freeze()
}
