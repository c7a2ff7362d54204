//! The operator dashboard at `/ui`: static assets compiled into the binary (`ui/` in the
//! repository), served before gateway-key auth. The pages hold no data: they sign in from
//! the browser with an admin or read key kept in `sessionStorage` and call the `/v1` admin
//! API with `Authorization: Bearer`, so no ambient credential (cookie) exists to forge a
//! request with (no CSRF), and no key ever appears in a URL.
//!
//! Every answer carries a strict Content-Security-Policy (same-origin scripts, styles and
//! fetches only, no inline script, no framing), `nosniff`, `no-referrer`, and an ETag with
//! `cache-control: no-cache`, so a browser revalidates and gets `304` while the binary is
//! unchanged. Unknown paths answer `404` in the API's error shape.

use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::api::{AdminBody, AdminRequest, AdminResponse, AdminRoutes};
use crate::config::Scope;
use crate::error::GatewayError;
use crate::routing::Runtime;

/// The response headers of every `/ui` answer (errors included).
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
    ),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
];

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/ui/index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../ui/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/app.js"),
    },
    Asset {
        path: "/ui/api.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/api.js"),
    },
    Asset {
        path: "/ui/charts.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/charts.js"),
    },
    Asset {
        path: "/ui/pages.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../ui/pages.js"),
    },
    Asset {
        path: "/ui/style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../ui/style.css"),
    },
    Asset {
        path: "/ui/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("../../ui/favicon.svg"),
    },
];

/// Strong ETags: the first 16 bytes of each asset's SHA-256, computed once.
static ETAGS: LazyLock<Vec<String>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|a| format!("\"{}\"", hex::encode(&Sha256::digest(a.body)[..16])))
        .collect()
});

pub struct Ui {
    runtime: Arc<ArcSwap<Runtime>>,
}

impl Ui {
    pub fn new(runtime: Arc<ArcSwap<Runtime>>) -> Ui {
        Ui { runtime }
    }
}

fn with_security(mut r: AdminResponse) -> AdminResponse {
    r.headers.extend(
        SECURITY_HEADERS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    r
}

fn not_found(path: &str) -> GatewayError {
    GatewayError::NotFound {
        message: format!("Unknown dashboard path: {path}."),
        code: "unknown_url",
        param: None,
    }
}

/// Whether an `If-None-Match` value names this ETag (a list, or `*`).
fn etag_matches(header: &str, etag: &str) -> bool {
    header
        .split(',')
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// The answer to one `/ui` request (pure: tested without a server).
pub fn serve(req: &AdminRequest, enabled: bool) -> AdminResponse {
    let path = match req.path.as_str() {
        "/ui" | "/ui/" => "/ui/index.html",
        p => p,
    };
    let found = ASSETS.iter().position(|a| a.path == path);
    let resp = match found {
        _ if !enabled => AdminResponse::error(&not_found(&req.path)),
        None => AdminResponse::error(&not_found(&req.path)),
        Some(_) if !matches!(req.method.as_str(), "GET" | "HEAD") => {
            let mut r = AdminResponse::error(&GatewayError::MethodNotAllowed(format!(
                "{} is not allowed on {}; use GET",
                req.method, req.path
            )));
            r.headers.push(("allow".into(), "GET, HEAD".into()));
            r
        }
        Some(i) => {
            let asset = &ASSETS[i];
            let etag = ETAGS.get(i).cloned().unwrap_or_default();
            let fresh = req
                .headers
                .iter()
                .find(|(k, _)| k == "if-none-match")
                .is_some_and(|(_, v)| etag_matches(v, &etag));
            let (status, body) = if fresh {
                (304, Bytes::new())
            } else {
                (200, Bytes::from_static(asset.body))
            };
            AdminResponse {
                status,
                headers: vec![
                    ("content-type".into(), asset.content_type.into()),
                    ("etag".into(), etag),
                    ("cache-control".into(), "no-cache".into()),
                ],
                body: AdminBody::Full(body),
            }
        }
    };
    with_security(resp)
}

/// `GET /v1/whoami`: what the signed-in key may do, so the dashboard disables what it cannot
/// (the server enforces every scope anyway). Read scope; answers only the caller's own
/// key id, scopes and project lock, never a secret.
pub struct WhoAmI;

#[async_trait]
impl AdminRoutes for WhoAmI {
    async fn handle(&self, req: &AdminRequest) -> Option<AdminResponse> {
        if req.path.trim_end_matches('/') != "/v1/whoami" {
            return None;
        }
        Some(whoami(req).unwrap_or_else(|e| AdminResponse::error(&e)))
    }
}

fn whoami(req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
    req.caller.require(Scope::Read)?;
    if req.method != "GET" {
        return Err(GatewayError::MethodNotAllowed(format!(
            "{} is not allowed on {}; use GET",
            req.method, req.path
        )));
    }
    let c = &req.caller;
    let scopes: Vec<Scope> = [Scope::Inference, Scope::Read, Scope::Admin]
        .into_iter()
        .filter(|s| c.has(*s))
        .collect();
    Ok(AdminResponse::json(
        200,
        &serde_json::json!({
            "object": "caller",
            "key_id": c.key_id,
            "scopes": scopes,
            "project": c.project,
            "admin": c.has(Scope::Admin),
        }),
    ))
}

#[async_trait]
impl AdminRoutes for Ui {
    async fn handle(&self, req: &AdminRequest) -> Option<AdminResponse> {
        let enabled = self.runtime.load().config.ui.enabled;
        Some(serve(req, enabled))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str, inm: Option<&str>) -> AdminRequest {
        AdminRequest {
            method: "GET".into(),
            path: path.into(),
            query: vec![],
            body: Bytes::new(),
            caller: crate::auth::Caller::default(),
            headers: inm
                .map(|v| vec![("if-none-match".to_string(), v.to_string())])
                .unwrap_or_default(),
        }
    }

    fn header<'a>(r: &'a AdminResponse, k: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn serves_assets_with_security_headers_and_revalidates() {
        let r = serve(&get("/ui", None), true);
        assert_eq!(r.status, 200);
        assert!(header(&r, "content-security-policy")
            .is_some_and(|c| c.contains("frame-ancestors 'none'")));
        assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
        let etag = header(&r, "etag").map(str::to_string);
        let again = serve(&get("/ui/", etag.as_deref()), true);
        assert_eq!(again.status, 304);
        assert_eq!(serve(&get("/ui/app.js", Some("\"x\"")), true).status, 200);
    }

    #[test]
    fn unknown_paths_and_disabled_answer_404() {
        for p in ["/ui/nope.js", "/ui/../Cargo.toml", "/ui/index.html/x"] {
            let r = serve(&get(p, None), true);
            assert_eq!(r.status, 404, "{p}");
            assert!(header(&r, "content-security-policy").is_some());
        }
        assert_eq!(serve(&get("/ui", None), false).status, 404);
        let mut post = get("/ui/app.js", None);
        post.method = "POST".into();
        assert_eq!(serve(&post, true).status, 405);
    }

    #[test]
    fn assets_hold_no_inline_script_and_keep_keys_in_session_storage() {
        let html = std::str::from_utf8(ASSETS[0].body).unwrap_or_default();
        assert!(!html.contains("<script>"), "inline script breaks the CSP");
        assert!(!html.contains("style=\""), "inline style breaks the CSP");
        for a in ASSETS {
            let text = String::from_utf8_lossy(a.body);
            // Keys stay in sessionStorage: never localStorage, never a cookie.
            for banned in ["localStorage.", "document.cookie"] {
                assert!(!text.contains(banned), "{}: uses {banned}", a.path);
            }
        }
    }
}
