//! MCP server at `/mcp` (Streamable HTTP, JSON responses; see docs/mcp.md). Revision
//! 2026-07-28 (self-contained requests: a `params._meta` envelope and routing headers,
//! `server/discover`) and the handshake revisions 2025-11-25 and 2025-06-18 (`initialize`).
//!
//! A small JSON-RPC 2.0 layer over the admin API: each tool builds an [`AdminRequest`] for
//! the caller a scoped token stands for and asks the gateway's admin route families, so a tool
//! sees exactly what the matching admin endpoint would show that caller (the project lock is
//! enforced by the scoped store). Tokens are minted by an admin (`POST /v1/mcp/tokens`), kept
//! hashed in the store (in memory without one), expire or are revoked
//! (`DELETE /v1/mcp/tokens/{id}`), and carry a read or mutate scope plus a project / route filter. Every tool
//! call is appended to the audit log. Mutating tools need a confirmation round trip.
//!
//! Layer 18, above `admin` and `proxy`: the proxy reaches it through the
//! `Gateway::mcp` handler (an [`AdminRoutes`] it is handed), and the server assembles it.

pub mod rpc;
pub mod tokens;
pub mod tools;

use std::sync::{Arc, OnceLock, Weak};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::api::{AdminBody, AdminRequest, AdminResponse, AdminRoutes};
use crate::gateway::Gateway;
use crate::routing::Runtime;
use crate::store::writer::StoreSlot;
use rpc::RpcError;
pub use tokens::{Grant, McpTokenRoutes, TokenScope, Tokens};

/// Protocol revisions this server speaks, newest first: the 2026-07-28 single-exchange
/// revision and the handshake revisions before it.
pub const PROTOCOL_VERSIONS: &[&str] = &["2026-07-28", "2025-11-25", "2025-06-18"];
/// Revisions negotiated by the `initialize` handshake, newest first.
pub const HANDSHAKE_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18"];
/// Revisions where every request is self-contained (a `params._meta` envelope and routing
/// headers; `server/discover` instead of `initialize`; no `ping`).
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];

const PROTOCOL_VERSION_KEY: &str = "io.modelcontextprotocol/protocolVersion";
const CLIENT_CAPABILITIES_KEY: &str = "io.modelcontextprotocol/clientCapabilities";
const SERVER_INFO_KEY: &str = "io.modelcontextprotocol/serverInfo";
const INSTRUCTIONS: &str = "Read loopgate's costs, routing decisions and verification reports. Mutating tools answer first with a preview and a confirmation_id; call again with only the confirmation_id to apply.";

fn server_info() -> Value {
    json!({"name": "loopgate", "title": "loopgate gateway", "version": env!("CARGO_PKG_VERSION")})
}

/// A routing header value: verbatim, or the `=?base64?…?=` form clients use for values that
/// are not plain printable ASCII (`None` when that form is malformed).
fn decode_header_value(v: &str) -> Option<String> {
    use base64::Engine;
    let Some(payload) = v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return Some(v.to_string());
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The 2026-07-28 checks on one request: the `params._meta` envelope names the revision and
/// the client's capabilities, and the routing headers agree with the body.
fn check_envelope(
    method: &str,
    params: Option<&Value>,
    header: &dyn Fn(&str) -> Option<String>,
) -> Result<(), RpcError> {
    let Some(meta) = params
        .and_then(|p| p.get("_meta"))
        .and_then(Value::as_object)
    else {
        return Err(RpcError::envelope(format!(
            "params._meta must be an object carrying the '{PROTOCOL_VERSION_KEY}' and '{CLIENT_CAPABILITIES_KEY}' envelope keys"
        )));
    };
    let missing: Vec<&str> = [PROTOCOL_VERSION_KEY, CLIENT_CAPABILITIES_KEY]
        .into_iter()
        .filter(|k| !meta.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        return Err(RpcError::envelope(format!(
            "params._meta is missing the required envelope key(s): {}",
            missing.join(", ")
        )));
    }
    let version = &meta[PROTOCOL_VERSION_KEY];
    if header("mcp-protocol-version").as_deref() != version.as_str() {
        return Err(RpcError::header_mismatch(
            "the MCP-Protocol-Version header does not match the request envelope's protocol version",
        ));
    }
    if header("mcp-method").as_deref() != Some(method) {
        return Err(RpcError::header_mismatch(
            "the Mcp-Method header does not match the request body's method",
        ));
    }
    if method == "tools/call" {
        if let Some(name) = params.and_then(|p| p.get("name")).and_then(Value::as_str) {
            let sent = header("mcp-name").and_then(|h| decode_header_value(&h));
            if sent.as_deref() != Some(name) {
                return Err(RpcError::header_mismatch(
                    "the Mcp-Name header does not match the request body's 'name' parameter",
                ));
            }
        }
    }
    let Some(version) = version.as_str() else {
        return Err(RpcError::envelope(
            "the protocol-version envelope value must be a string",
        ));
    };
    if !MODERN_VERSIONS.contains(&version) {
        return Err(RpcError::unsupported_version(version, PROTOCOL_VERSIONS));
    }
    Ok(())
}

/// The MCP server's state: tokens, pending confirmations, and what the tools read.
pub struct Mcp {
    pub tokens: Tokens,
    pub confirms: tools::Confirms,
    /// Where tool calls are audited (`None` with `storage.backend = "none"`: tools refuse).
    pub slot: Option<StoreSlot>,
    pub runtime: Arc<ArcSwap<Runtime>>,
    /// The gateway whose admin route families the tools call (weak: the gateway holds us).
    gw: OnceLock<Weak<Gateway>>,
}

impl Mcp {
    pub fn new(slot: Option<StoreSlot>, runtime: Arc<ArcSwap<Runtime>>) -> Mcp {
        Mcp {
            tokens: slot.clone().map_or_else(Tokens::new, Tokens::with_store),
            confirms: tools::Confirms::new(),
            slot,
            runtime,
            gw: OnceLock::new(),
        }
    }

    /// DNS-rebinding guard of the Streamable HTTP transport: a browser `Origin` must be the
    /// gateway's own (its authority equals `Host`) or one `[server.cors]` allows.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        if authority.is_some_and(|a| host.is_some_and(|h| a.eq_ignore_ascii_case(h))) {
            return true;
        }
        let rt = self.runtime.load();
        rt.config
            .server
            .cors
            .as_ref()
            .is_some_and(|c| c.allows_origin(origin))
    }

    /// Build the MCP server into `gw`: `/mcp` and the token routes under `/v1/mcp/tokens`.
    /// Call [`Mcp::bind`] with the gateway once it is in its `Arc`.
    pub fn assemble(gw: &mut Gateway, slot: Option<StoreSlot>) -> Arc<Mcp> {
        let mcp = Arc::new(Mcp::new(slot, gw.runtime.clone()));
        gw.admin.push(Box::new(McpTokenRoutes { mcp: mcp.clone() }));
        gw.mcp = Some(mcp.clone());
        mcp
    }

    /// Hand over the assembled gateway (once, right after it is built).
    pub fn bind(&self, gw: &Arc<Gateway>) {
        let _ = self.gw.set(Arc::downgrade(gw));
    }

    /// The gateway the tools read through (`None` before [`Mcp::bind`] or at shutdown).
    pub(crate) fn gateway(&self) -> Option<Arc<Gateway>> {
        self.gw.get().and_then(Weak::upgrade)
    }

    /// Answer one Streamable HTTP request (`req.headers` carry `authorization`).
    pub async fn handle_http(&self, req: &AdminRequest) -> AdminResponse {
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        if req.method != "POST" {
            // No server-initiated stream (GET) and no sessions to delete (DELETE).
            let mut r = rpc_response(
                405,
                &rpc::error_body(&Value::Null, &RpcError::method_http()),
            );
            r.headers.push(("allow".into(), "POST".into()));
            return r;
        }
        if let Some(origin) = header("origin") {
            if !self.origin_allowed(origin, header("host")) {
                let e = RpcError::forbidden(
                    "this Origin may not call /mcp: same origin only, or one [server.cors] allows",
                );
                return rpc_response(403, &rpc::error_body(&Value::Null, &e));
            }
        }
        if let Some(v) = header("mcp-protocol-version") {
            if !PROTOCOL_VERSIONS.contains(&v) {
                let e = RpcError::unsupported_version(v, PROTOCOL_VERSIONS);
                return rpc_response(400, &rpc::error_body(&Value::Null, &e));
            }
        }
        // 2026-07-28: each request is self-contained (see `check_envelope`).
        let modern = header("mcp-protocol-version").is_some_and(|v| MODERN_VERSIONS.contains(&v));
        let status = |e: &RpcError| {
            if modern {
                e.modern_status()
            } else {
                e.http_status
            }
        };
        let msg = match rpc::parse(&req.body) {
            Ok(m) => m,
            Err(e) => return rpc_response(status(&e), &rpc::error_body(&Value::Null, &e)),
        };
        let id = msg.id.clone().unwrap_or(Value::Null);
        // Authenticate before anything else (notifications included).
        let grant = match self.tokens.check(header("authorization")).await {
            Ok(g) => g,
            Err(e) => {
                let mut r = rpc_response(e.http_status, &rpc::error_body(&id, &e));
                r.headers.push((
                    "www-authenticate".into(),
                    "Bearer realm=\"loopgate-mcp\"".into(),
                ));
                return r;
            }
        };
        let Some(method) = msg.method.as_deref() else {
            // A response from the client (we never send requests): acknowledged.
            return accepted();
        };
        if msg.id.is_none() {
            // Notifications (`notifications/initialized`, cancellations): nothing to answer.
            return accepted();
        }
        if modern {
            let owned = |name: &str| header(name).map(str::to_string);
            if let Err(e) = check_envelope(method, msg.params.as_ref(), &owned) {
                return rpc_response(status(&e), &rpc::error_body(&id, &e));
            }
        }
        let Some(gw) = self.gateway() else {
            let e =
                RpcError::unavailable("the gateway is starting or shutting down; retry shortly");
            return rpc_response(status(&e), &rpc::error_body(&id, &e));
        };
        let result = if modern {
            self.dispatch_modern(&gw.admin, &grant, method, msg.params)
                .await
        } else {
            self.dispatch(&gw.admin, &grant, method, msg.params).await
        };
        match result {
            Ok(result) => rpc_response(200, &json!({"jsonrpc": "2.0", "id": id, "result": result})),
            Err(e) => rpc_response(status(&e), &rpc::error_body(&id, &e)),
        }
    }

    /// The 2026-07-28 methods: `server/discover` instead of the handshake, no `ping`; every
    /// result says it is complete and carries the server's identity. Tool lists depend on
    /// the token, so they are never to be cached across callers.
    async fn dispatch_modern(
        &self,
        admin: &[Box<dyn AdminRoutes>],
        grant: &Grant,
        method: &str,
        params: Option<Value>,
    ) -> Result<Value, RpcError> {
        let mut result = match method {
            "server/discover" => json!({
                "supportedVersions": PROTOCOL_VERSIONS,
                "capabilities": {"tools": {"listChanged": false}},
                "instructions": INSTRUCTIONS,
                "cacheScope": "private",
                "ttlMs": 0,
            }),
            "tools/list" => json!({
                "tools": tools::list(grant),
                "cacheScope": "private",
                "ttlMs": 0,
            }),
            "tools/call" => tools::call(self, admin, grant, params).await?,
            m => return Err(RpcError::method_not_found(m)),
        };
        result["resultType"] = json!("complete");
        result["_meta"] = json!({SERVER_INFO_KEY: server_info()});
        Ok(result)
    }

    async fn dispatch(
        &self,
        admin: &[Box<dyn AdminRoutes>],
        grant: &Grant,
        method: &str,
        params: Option<Value>,
    ) -> Result<Value, RpcError> {
        match method {
            "initialize" => {
                let asked = params
                    .as_ref()
                    .and_then(|p| p.get("protocolVersion"))
                    .and_then(Value::as_str);
                let version = asked
                    .filter(|v| HANDSHAKE_VERSIONS.contains(v))
                    .unwrap_or(HANDSHAKE_VERSIONS[0]);
                Ok(json!({
                    "protocolVersion": version,
                    "capabilities": {"tools": {"listChanged": false}},
                    "serverInfo": server_info(),
                    "instructions": INSTRUCTIONS,
                }))
            }
            "ping" => Ok(json!({})),
            "tools/list" => Ok(json!({"tools": tools::list(grant)})),
            "tools/call" => tools::call(self, admin, grant, params).await,
            m => Err(RpcError::method_not_found(m)),
        }
    }
}

#[async_trait]
impl AdminRoutes for Mcp {
    async fn handle(&self, req: &AdminRequest) -> Option<AdminResponse> {
        (req.path.trim_end_matches('/') == "/mcp").then_some(())?;
        Some(self.handle_http(req).await)
    }
}

fn rpc_response(status: u16, v: &Value) -> AdminResponse {
    AdminResponse {
        status,
        headers: vec![("content-type".into(), "application/json".into())],
        body: AdminBody::Full(Bytes::from(serde_json::to_vec(v).unwrap_or_default())),
    }
}

fn accepted() -> AdminResponse {
    AdminResponse {
        status: 202,
        headers: vec![("content-type".into(), "application/json".into())],
        body: AdminBody::Full(Bytes::new()),
    }
}

impl Mcp {
    /// Append one entry to the audit log; refuses (503) when there is no store to write it.
    pub async fn audit(
        &self,
        actor: &str,
        action: &str,
        route: Option<String>,
        new: Option<String>,
        reason: Option<String>,
    ) -> Result<(), RpcError> {
        let unavailable = || {
            RpcError::unavailable(
                "MCP tool calls are audited and the audit log needs a store: storage.backend is \"none\" or the store is not open yet",
            )
        };
        let slot = self.slot.as_ref().ok_or_else(unavailable)?;
        let store = slot
            .wait(crate::admin::logs::STORE_WAIT)
            .await
            .ok_or_else(unavailable)?;
        let entry = crate::store::AuditAppend {
            ts_ms: chrono::Utc::now().timestamp_millis(),
            actor: actor.to_string(),
            action: action.to_string(),
            route,
            old: None,
            new,
            reason,
        };
        store.append_audit(&entry).await.map_err(|e| {
            tracing::warn!(error = %e, "MCP audit append failed");
            RpcError::unavailable("the audit log is temporarily unavailable; retry shortly")
        })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_header_values_decode_verbatim_or_from_base64() {
        assert_eq!(
            decode_header_value("list_models").as_deref(),
            Some("list_models")
        );
        assert_eq!(
            decode_header_value("=?base64?bGlzdF9tb2RlbHM=?=").as_deref(),
            Some("list_models")
        );
        assert_eq!(decode_header_value("=?base64?!!?="), None);
    }

    #[test]
    fn the_envelope_and_routing_headers_must_agree_with_the_body() {
        let params = json!({"name": "list_models", "_meta": {
            PROTOCOL_VERSION_KEY: "2026-07-28", CLIENT_CAPABILITIES_KEY: {}}});
        let headers = |name: &'static str| {
            move |h: &str| match h {
                "mcp-protocol-version" => Some("2026-07-28".to_string()),
                "mcp-method" => Some("tools/call".to_string()),
                "mcp-name" => Some(name.to_string()),
                _ => None,
            }
        };
        assert!(check_envelope("tools/call", Some(&params), &headers("list_models")).is_ok());
        let e = check_envelope("tools/call", Some(&params), &headers("get_decision")).unwrap_err();
        assert_eq!((e.code, e.http_status), (rpc::HEADER_MISMATCH, 400));
        let e = check_envelope("tools/list", Some(&params), &headers("list_models")).unwrap_err();
        assert_eq!(e.code, rpc::HEADER_MISMATCH, "Mcp-Method differs");
        let e = check_envelope("tools/call", None, &headers("list_models")).unwrap_err();
        assert_eq!(e.code, rpc::INVALID_PARAMS);
        let old = json!({"name": "list_models", "_meta": {
            PROTOCOL_VERSION_KEY: "2025-11-25", CLIENT_CAPABILITIES_KEY: {}}});
        let e = check_envelope("tools/call", Some(&old), &|h: &str| match h {
            "mcp-protocol-version" => Some("2025-11-25".to_string()),
            "mcp-method" => Some("tools/call".to_string()),
            "mcp-name" => Some("list_models".to_string()),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(e.code, rpc::UNSUPPORTED_PROTOCOL_VERSION);
    }
}
