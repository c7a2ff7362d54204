//! The interface between the proxy and the HTTP APIs served on top of it (the admin API and
//! the MCP server): a request, a response, the route-family trait, and the table of admin
//! endpoints.
//!
//! It sits below `proxy` so the proxy dispatches to handlers it is handed at assembly
//! (`Gateway::admin`, `Gateway::mcp`) without importing the layers that implement them.

pub mod endpoints;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::auth::Caller;
use crate::error::GatewayError;

#[derive(Debug, Clone)]
pub struct AdminRequest {
    pub method: String,
    /// Path without query, e.g. `/v1/logs/abc`.
    pub path: String,
    /// Decoded query pairs in order.
    pub query: Vec<(String, String)>,
    pub body: Bytes,
    pub caller: Caller,
    /// Lower-cased request headers the handlers may need (e.g. `accept-encoding`).
    pub headers: Vec<(String, String)>,
}

impl AdminRequest {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

pub enum AdminBody {
    Full(Bytes),
    /// Streamed as chunked transfer encoding (exports).
    Stream(mpsc::Receiver<Bytes>),
}

pub struct AdminResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: AdminBody,
}

impl AdminResponse {
    pub fn json(status: u16, v: &serde_json::Value) -> Self {
        AdminResponse {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: AdminBody::Full(Bytes::from(serde_json::to_vec(v).unwrap_or_default())),
        }
    }

    pub fn error(e: &GatewayError) -> Self {
        AdminResponse {
            status: e.status(),
            headers: vec![("content-type".into(), "application/json".into())],
            body: AdminBody::Full(e.to_openai()),
        }
    }
}

/// A family of admin endpoints. The proxy asks each in turn; `None` means "not mine".
#[async_trait::async_trait]
pub trait AdminRoutes: Send + Sync {
    async fn handle(&self, req: &AdminRequest) -> Option<AdminResponse>;
}
