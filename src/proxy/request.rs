//! Request phase: authenticate, read the body under a cap, parse and validate the
//! OpenAI request, and pick up the context headers for the trace.

use bytes::{Bytes, BytesMut};
use pingora_proxy::Session;

use crate::auth::keys::KeyEntry;
use crate::auth::Caller;
use crate::error::GatewayError;
use crate::routing::Runtime;

use super::ctx::RequestCtx;

/// The request contract lives in the exchange engine; the request phase applies it.
pub use crate::exchange::parse::{parse_chat, parse_model_call, parse_object, take_model};

/// Limits on client-supplied context values (they land in traces and indexes).
const MAX_PROPERTIES: usize = 32;
const MAX_VALUE_LEN: usize = 512;

/// Headers up to which [`header`] compares names instead of hashing one.
const SCAN_HEADERS: usize = 16;

pub fn header<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    let h = &session.req_header().headers;
    // A request asks for ~15 names, most absent: with a few headers, comparing the stored
    // (lowercase) names is cheaper than parsing and hashing `name` for each lookup. Same
    // answer as `get`: the first value of the first entry of that name.
    let v = if h.len() <= SCAN_HEADERS {
        h.iter()
            .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    } else {
        h.get(name)
    };
    v.and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Authenticate the gateway key from `Authorization: Bearer <key>` (or `x-api-key: <key>`).
///
/// Dev mode (`open_access`: no key configured, every listener on loopback) accepts any
/// token or none, since every OpenAI SDK always sends one.
pub fn authenticate(
    rt: &Runtime,
    vkeys: &crate::auth::virtual_keys::VirtualKeys,
    session: &Session,
) -> Result<Authenticated, GatewayError> {
    if rt.open_access {
        return Ok((None, None));
    }
    let presented = header(session, "authorization").and_then(|v| {
        let (scheme, rest) = v.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
    });
    // The Anthropic SDKs send their key as `x-api-key` (`/v1/messages`).
    let presented = presented.or_else(|| header(session, "x-api-key"));
    if rt.keys.is_empty() && vkeys.is_empty() {
        return Err(GatewayError::Unauthorized(
            "No gateway key is configured on this gateway. Create one with `loopgate hash-key` and add it under [[auth.keys]] (or set LOOPGATE_MASTER_KEY), or for local development set `allow_unauthenticated_loopback = true` in [auth] with every listener on 127.0.0.1.".into(),
        ));
    }
    match presented {
        Some(k) => match rt.keys.lookup(k) {
            Some(e) => Ok((Some(e.clone()), None)),
            None => match vkeys.resolve(k, crate::auth::virtual_keys::now_ms())? {
                Some(v) => Ok((Some(v.entry.clone()), Some(v))),
                None => Err(GatewayError::Unauthorized(
                    "Incorrect API key provided. Send a loopgate gateway key as `Authorization: Bearer <key>` (keys are created with `loopgate hash-key` and configured under [[auth.keys]] or LOOPGATE_KEYS / LOOPGATE_MASTER_KEY, or created with `POST /v1/keys`; a revoked key is refused); a provider's own API key is not a gateway key."
                        .into(),
                )),
            },
        },
        None => Err(GatewayError::Unauthorized(
            "You didn't provide an API key. Send a loopgate gateway key as `Authorization: Bearer <key>` (the OpenAI SDKs send their `api_key` this way), or as `x-api-key: <key>` (the Anthropic SDKs' way).".into(),
        )),
    }
}

/// The key entry of an authenticated request, and its virtual key if it used one.
pub type Authenticated = (
    Option<std::sync::Arc<KeyEntry>>,
    Option<std::sync::Arc<crate::auth::virtual_keys::VirtualKey>>,
);

/// The caller for a key, or the open-access caller (every scope, no key id).
pub fn caller_for(key: Option<&KeyEntry>) -> Caller {
    match key {
        Some(k) => k.caller(),
        None => Caller {
            key_id: None,
            scopes: vec![
                crate::auth::Scope::Inference,
                crate::auth::Scope::Read,
                crate::auth::Scope::Admin,
            ],
            project: None,
        },
    }
}

/// Read the whole request body, refusing more than `cap` bytes.
///
/// Answers `Expect: 100-continue` first (Pingora never does), and rejects an
/// oversized declared `Content-Length` before reading anything.
pub async fn read_body(session: &mut Session, cap: usize) -> Result<Bytes, GatewayError> {
    let declared = header(session, "content-length").and_then(|v| v.parse::<usize>().ok());
    let expects_continue =
        header(session, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    if declared.is_some_and(|n| n > cap) {
        // Without `Expect`, the client is already sending: drain (bounded) so it reads
        // our 413 instead of a broken pipe.
        if !expects_continue {
            drain(session).await;
        }
        return Err(GatewayError::BodyTooLarge { limit: cap });
    }
    if expects_continue {
        session
            .as_downstream_mut()
            .write_continue_response()
            .await
            .map_err(|e| {
                GatewayError::invalid(format!("could not answer Expect: 100-continue: {e}"), None)
            })?;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(4096).min(cap));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > cap {
                    drain(session).await;
                    return Err(GatewayError::BodyTooLarge { limit: cap });
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                return Err(GatewayError::invalid(
                    format!("could not read the request body: {}", e.etype().as_str()),
                    None,
                ))
            }
        }
    }
    Ok(buf.freeze())
}

/// Read and discard the rest of an oversized body, bounded in time and size; the
/// connection is not reused afterwards.
async fn drain(session: &mut Session) {
    const DRAIN_LIMIT: usize = 256 * 1024 * 1024;
    session.set_keepalive(None);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut seen = 0usize;
        while let Ok(Some(c)) = session.read_request_body().await {
            seen += c.len();
            if seen > DRAIN_LIMIT {
                break;
            }
        }
    })
    .await;
}

fn clip(v: &str) -> String {
    let mut end = v.len().min(MAX_VALUE_LEN);
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    v[..end].to_string()
}

/// The `<prefix>-feedback-expected` header: whether the client's own judge will score this
/// request (`true` / `false`, also `1` / `0`); absent: not announced.
pub fn feedback_expected(session: &Session, name: &str) -> Result<Option<bool>, GatewayError> {
    let Some(v) = header(session, name) else {
        return Ok(None);
    };
    if v.eq_ignore_ascii_case("true") || v == "1" {
        Ok(Some(true))
    } else if v.eq_ignore_ascii_case("false") || v == "0" {
        Ok(Some(false))
    } else {
        Err(GatewayError::InvalidRequest {
            message: format!(
                "header '{name}' must be 'true' or 'false' (whether your judge will score this request)"
            ),
            param: Some(name.to_string()),
            code: Some("invalid_header"),
        })
    }
}

/// Session, project, user and custom properties from the request headers.
pub fn context_headers(
    rt: &Runtime,
    session: &Session,
    ctx: &mut RequestCtx,
    key: Option<&KeyEntry>,
) {
    let h = &rt.headers;
    ctx.trace.session_id = header(session, &h.session_id).map(clip);
    ctx.trace.session_name = header(session, &h.session_name).map(clip);
    ctx.trace.session_path = header(session, &h.session_path).map(clip);
    // A key locked to a project always wins over the header.
    ctx.trace.project_id = key
        .and_then(|k| k.project.clone())
        .or_else(|| header(session, &h.project_id).map(clip));
    ctx.trace.user_id = header(session, &h.user_id).map(clip);
    let mut props = Vec::new();
    for (name, value) in session.req_header().headers.iter() {
        if let Some(p) = name.as_str().strip_prefix(h.property_prefix.as_str()) {
            // `cache`, `cache_saved_*` are set by the gateway only (analytics sums them).
            if props.len() >= MAX_PROPERTIES
                || p.is_empty()
                || crate::cache::PROPERTIES.contains(&p)
            {
                continue;
            }
            if let Ok(v) = value.to_str() {
                props.push((clip(p), clip(v.trim())));
            }
        }
    }
    props.sort();
    ctx.trace.properties = props;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::ChatRequest;

    fn parse(s: &str) -> Result<ChatRequest, GatewayError> {
        parse_chat(Bytes::from(s.to_string()), None)
    }

    fn param_of(r: Result<ChatRequest, GatewayError>) -> (u16, Option<String>) {
        let e = r.err().unwrap();
        (e.status(), e.param().map(str::to_string))
    }

    #[test]
    fn validation_names_the_param() {
        assert_eq!(param_of(parse("{")), (400, None));
        assert_eq!(param_of(parse("[]")), (400, None));
        assert_eq!(
            param_of(parse(r#"{"messages":[{"role":"user","content":"x"}]}"#)),
            (400, Some("model".into()))
        );
        assert_eq!(
            param_of(parse(r#"{"model":"m"}"#)),
            (400, Some("messages".into()))
        );
        assert_eq!(
            param_of(parse(r#"{"model":3,"messages":[]}"#)),
            (400, Some("model".into()))
        );
        assert_eq!(
            param_of(parse(r#"{"model":"m","messages":"hi"}"#)),
            (400, Some("messages".into()))
        );
        assert_eq!(
            param_of(parse(
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"temperature":"hot"}"#
            )),
            (400, Some("temperature".into()))
        );
        assert_eq!(
            param_of(parse(
                r#"{"model":"m","messages":[{"role":"wizard","content":"x"}]}"#
            )),
            (400, Some("messages[0].role".into()))
        );
        assert_eq!(
            param_of(parse(
                r#"{"model":"m","messages":[{"role":"user","content":"x"}],"stream_options":{"include_usage":true}}"#
            )),
            (400, Some("stream_options".into()))
        );
    }

    #[test]
    fn valid_request_and_override() {
        let r = parse_chat(
            Bytes::from_static(br#"{"model":"a","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#),
            Some("b"),
        )
        .unwrap();
        assert_eq!(r.model, "b");
        assert!(r.stream && r.include_usage);
        assert_eq!(r.body["model"], "b");
    }
}
