//! Optional CORS for browser clients (`[server.cors]`).
//!
//! Preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are answered
//! at the edge, before authentication (browsers never send credentials on a preflight).
//! Every other response to an allowed origin — JSON, errors, streams, admin — carries
//! `Access-Control-Allow-Origin` through [`super::respond::response_header`]. An origin
//! that is not allowed gets no CORS header at all (its preflight: 403).

use pingora_http::RequestHeader;
use pingora_proxy::Session;

use super::ctx::RequestCtx;
use super::respond;
pub use crate::config::cors::{CorsConfig, OneOrMany};
use crate::error::GatewayError;

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Set the CORS headers of this request's responses; answer a preflight. Returns true
/// when the request has been answered.
pub async fn apply(session: &mut Session, ctx: &mut RequestCtx) -> bool {
    let Some(rt) = ctx.runtime.clone() else {
        return false;
    };
    let Some(cors) = &rt.config.server.cors else {
        return false;
    };
    let req = session.req_header();
    let origin = header(req, "origin").map(str::to_string);
    let preflight = req.method == http::Method::OPTIONS
        && origin.is_some()
        && req.headers.contains_key("access-control-request-method");
    if !preflight {
        let names = &rt.headers;
        let own = [
            names.resp_request_id.as_str(),
            names.resp_provider.as_str(),
            names.resp_model.as_str(),
            names.resp_fallback.as_str(),
            names.resp_decision_id.as_str(),
            "x-request-id",
            "retry-after",
        ];
        ctx.cors = cors.response_headers(origin.as_deref(), &own);
        return false;
    }
    ctx.endpoint = "cors";
    let origin = origin.unwrap_or_default();
    let Some(headers) =
        cors.preflight_headers(&origin, header(req, "access-control-request-headers"))
    else {
        let e = GatewayError::Forbidden(format!(
            "Origin '{origin}' is not allowed by this gateway's [server.cors] allowed_origins."
        ));
        respond::write_error(session, ctx, &e).await;
        return true;
    };
    let Some(mut h) = respond::response_header(204, "text/plain", Some(0), ctx, None, &[]) else {
        return true;
    };
    // 204 carries neither a body nor its length.
    let _ = h.remove_header("content-length");
    let _ = h.remove_header("content-type");
    for (k, v) in headers {
        let _ = h.insert_header(k, v);
    }
    ctx.trace.status = 204;
    if session.write_response_header(h, true).await.is_err() {
        ctx.trace.cancelled = true;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(toml_text: &str) -> CorsConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn validation_rejects_unusable_settings() {
        assert!(cfg("allowed_origins = \"*\"").validate().is_ok());
        assert!(cfg("allowed_origins = [\"https://a.example:8443\"]")
            .validate()
            .is_ok());
        for bad in [
            "allowed_origins = []",
            "allowed_origins = [\"https://a.example/\"]",
            "allowed_origins = [\"a.example\"]",
            "allowed_origins = [\"https://*.example\"]",
            "allowed_origins = \"*\"\nallow_credentials = true",
            "allowed_origins = \"*\"\nallowed_methods = [\"PO ST\"]",
            "allowed_origins = \"*\"\nallowed_headers = [\"bad header\"]",
        ] {
            assert!(cfg(bad).validate().is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_match_exactly_and_any_echoes_star() {
        let c = cfg("allowed_origins = [\"https://app.example\"]\nallow_credentials = true");
        let h = c.response_headers(Some("https://app.example"), &["x-request-id"]);
        assert!(h.contains(&("access-control-allow-origin", "https://app.example".into())));
        assert!(h.contains(&("access-control-allow-credentials", "true".into())));
        assert!(h.contains(&("vary", "Origin".into())));
        let h = c.response_headers(Some("https://evil.example"), &[]);
        assert!(h.iter().all(|(k, _)| !k.starts_with("access-control")));
        assert!(c
            .preflight_headers("https://app.example.evil", None)
            .is_none());

        let any = cfg("allowed_origins = \"*\"");
        let h = any.response_headers(Some("https://x.example"), &["a"]);
        assert!(h.contains(&("access-control-allow-origin", "*".into())));
        assert!(!h.iter().any(|(k, _)| *k == "vary"));
        let p = any
            .preflight_headers(
                "https://x.example",
                Some("authorization, content-type,x-stainless-os, bad\r\nx"),
            )
            .unwrap();
        assert!(p.contains(&(
            "access-control-allow-headers",
            "authorization, content-type, x-stainless-os".into()
        )));
        assert!(p.contains(&("access-control-max-age", "600".into())));
    }
}
