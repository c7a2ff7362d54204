//! Downstream writes: JSON responses, OpenAI errors, stream headers — always with the
//! gateway's response headers.

use bytes::Bytes;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use crate::error::GatewayError;
use crate::routing::HeaderNames;

use super::ctx::RequestCtx;

/// Upstream response headers worth passing on to clients.
pub fn forwardable(name: &str) -> bool {
    name == "retry-after" || name.starts_with("x-ratelimit-") || name == "openai-processing-ms"
}

/// Build a response header with the `loopgate-*` headers from the context.
pub fn response_header(
    status: u16,
    content_type: &str,
    content_length: Option<usize>,
    ctx: &RequestCtx,
    names: Option<&HeaderNames>,
    extra: &[(String, String)],
) -> Option<Box<ResponseHeader>> {
    let mut h = ResponseHeader::build(status, Some(8 + extra.len())).ok()?;
    let _ = h.insert_header("content-type", content_type);
    match content_length {
        Some(n) => {
            let _ = h.insert_header("content-length", n.to_string());
        }
        None => {
            let _ = h.insert_header("transfer-encoding", "chunked");
            let _ = h.insert_header("cache-control", "no-cache");
        }
    }
    let default_names;
    let names = match names {
        Some(n) => n,
        None => {
            default_names = HeaderNames::new("loopgate");
            &default_names
        }
    };
    let _ = h.insert_header(names.resp_request_id.clone(), ctx.trace.request_id.as_str());
    // OpenAI SDKs read `x-request-id` into `_request_id` / `response._request_id`.
    if names.resp_request_id != "x-request-id" {
        let _ = h.insert_header("x-request-id", ctx.trace.request_id.as_str());
    }
    if let Some(u) = &ctx.upstream_request_id {
        let _ = h.insert_header(names.resp_upstream_request_id.clone(), u.as_str());
    }
    if let Some(p) = &ctx.trace.provider {
        let _ = h.insert_header(names.resp_provider.clone(), p.as_str());
    }
    if let Some(m) = &ctx.trace.served_model {
        let _ = h.insert_header(names.resp_model.clone(), m.as_str());
    }
    if ctx.traced {
        let _ = h.insert_header(
            names.resp_fallback.clone(),
            if ctx.trace.fallback_used {
                "true"
            } else {
                "false"
            },
        );
    }
    if let Some(c) = &ctx.cache {
        let _ = h.insert_header(names.cache.clone(), c.status);
    }
    if let Some(d) = &ctx.trace.decision_id {
        let _ = h.insert_header(names.resp_decision_id.clone(), d.as_str());
    }
    for (k, v) in extra {
        let _ = h.append_header(k.clone(), v.as_str());
    }
    if let Some(t) = &ctx.limit {
        t.headers(|k, v| drop(h.insert_header(k, v)));
    }
    for (k, v) in &ctx.cors {
        let _ = h.append_header(*k, v.as_str());
    }
    Some(Box::new(h))
}

/// Write a complete response. Returns false if the client is gone.
pub async fn write_full(
    session: &mut Session,
    ctx: &mut RequestCtx,
    status: u16,
    content_type: &str,
    body: Bytes,
    extra: &[(String, String)],
) -> bool {
    let rt = ctx.runtime.clone();
    let Some(h) = response_header(
        status,
        content_type,
        Some(body.len()),
        ctx,
        rt.as_deref().map(|r| &r.headers),
        extra,
    ) else {
        return false;
    };
    ctx.trace.status = status;
    ctx.trace.response_bytes += body.len() as u64;
    if session.write_response_header(h, false).await.is_err() {
        ctx.trace.cancelled = true;
        return false;
    }
    if session.write_response_body(Some(body), true).await.is_err() {
        ctx.trace.cancelled = true;
        return false;
    }
    true
}

/// Write an error in the client API's shape (OpenAI's, or the ingress API's).
pub async fn write_error(session: &mut Session, ctx: &mut RequestCtx, e: &GatewayError) -> bool {
    let mut extra = Vec::new();
    if let Some(ra) = e.retry_after() {
        extra.push(("retry-after".to_string(), ra.to_string()));
    }
    if e.status() == 401 {
        extra.push(("www-authenticate".to_string(), "Bearer".to_string()));
    }
    ctx.trace.error = Some(e.to_string());
    let body = match ctx.ingress {
        Some(i) => i.error_body(e),
        None => e.to_openai(),
    };
    write_full(session, ctx, e.status(), "application/json", body, &extra).await
}
