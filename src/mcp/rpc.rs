//! JSON-RPC 2.0 message parsing and errors, as MCP's Streamable HTTP transport carries them.

use serde_json::{json, Value};

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
pub const INTERNAL_ERROR: i64 = -32603;
/// The `MCP-Protocol-Version` is not one this server speaks (data: `supported`, `requested`).
pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
/// 2026-07-28: a routing header (`MCP-Protocol-Version`, `Mcp-Method`, `Mcp-Name`) disagrees
/// with the body.
pub const HEADER_MISMATCH: i64 = -32020;
/// Server-defined: the bearer token is missing, unknown or expired.
pub const UNAUTHORIZED: i64 = -32001;
/// Server-defined: the token's scope or filter does not allow this.
pub const FORBIDDEN: i64 = -32003;

/// One incoming message (request, notification or response).
#[derive(Debug)]
pub struct Message {
    /// `None` for a notification.
    pub id: Option<Value>,
    /// `None` for a response.
    pub method: Option<String>,
    pub params: Option<Value>,
}

/// A JSON-RPC error plus the HTTP status it travels with.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
    pub http_status: u16,
}

impl RpcError {
    fn new(code: i64, message: impl Into<String>, http_status: u16) -> RpcError {
        RpcError {
            code,
            message: message.into(),
            data: None,
            http_status,
        }
    }
    pub fn parse(m: impl Into<String>) -> RpcError {
        RpcError::new(PARSE_ERROR, m, 400)
    }
    pub fn invalid_request(m: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_REQUEST, m, 400)
    }
    pub fn unsupported_version(requested: &str, supported: &[&str]) -> RpcError {
        let requested: String = requested.chars().take(40).collect();
        let mut e = RpcError::new(
            UNSUPPORTED_PROTOCOL_VERSION,
            format!(
                "unsupported MCP-Protocol-Version '{requested}'; supported: {}",
                supported.join(", ")
            ),
            400,
        );
        e.data = Some(json!({"supported": supported, "requested": requested}));
        e
    }
    pub fn method_http() -> RpcError {
        RpcError::new(
            INVALID_REQUEST,
            "only POST is served on /mcp (no server-initiated stream, no sessions)",
            405,
        )
    }
    pub fn method_not_found(m: &str) -> RpcError {
        let m: String = m.chars().take(100).collect();
        RpcError::new(METHOD_NOT_FOUND, format!("method '{m}' not found"), 200)
    }
    /// Bad arguments: the message and `data.argument` name the argument.
    pub fn invalid_params(argument: &str, m: impl Into<String>) -> RpcError {
        let mut e = RpcError::new(
            INVALID_PARAMS,
            format!("invalid argument '{argument}': {}", m.into()),
            200,
        );
        e.data = Some(json!({"argument": argument}));
        e
    }
    /// 2026-07-28: the per-request envelope (`params._meta`) is missing or malformed.
    pub fn envelope(m: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, m, 400)
    }
    pub fn header_mismatch(m: impl Into<String>) -> RpcError {
        RpcError::new(HEADER_MISMATCH, m, 400)
    }
    /// The HTTP status of this error on the 2026-07-28 single-exchange transport: protocol
    /// errors carry their own (400, or 404 for an unknown method); auth and availability
    /// errors keep theirs.
    pub fn modern_status(&self) -> u16 {
        match self.code {
            PARSE_ERROR
            | INVALID_REQUEST
            | INVALID_PARAMS
            | HEADER_MISMATCH
            | UNSUPPORTED_PROTOCOL_VERSION => 400,
            METHOD_NOT_FOUND => 404,
            _ => self.http_status,
        }
    }
    pub fn internal(m: impl Into<String>) -> RpcError {
        RpcError::new(INTERNAL_ERROR, m, 500)
    }
    pub fn unauthorized(m: impl Into<String>) -> RpcError {
        RpcError::new(UNAUTHORIZED, m, 401)
    }
    pub fn forbidden(m: impl Into<String>) -> RpcError {
        RpcError::new(FORBIDDEN, m, 403)
    }
    pub fn unavailable(m: impl Into<String>) -> RpcError {
        RpcError::new(INTERNAL_ERROR, m, 503)
    }
}

/// The error response body for a request `id` (`null` when it could not be read).
pub fn error_body(id: &Value, e: &RpcError) -> Value {
    let mut err = json!({"code": e.code, "message": e.message});
    if let Some(d) = &e.data {
        err["data"] = d.clone();
    }
    json!({"jsonrpc": "2.0", "id": id, "error": err})
}

/// Parse one JSON-RPC message (batches were removed from MCP in 2025-06-18).
pub fn parse(body: &[u8]) -> Result<Message, RpcError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| RpcError::parse(format!("the body is not JSON: {e}")))?;
    let Value::Object(mut o) = v else {
        return Err(RpcError::invalid_request(
            "a message must be one JSON-RPC object (batches are not part of MCP since 2025-06-18)",
        ));
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(RpcError::invalid_request("'jsonrpc' must be \"2.0\""));
    }
    let id = match o.remove("id") {
        None => None,
        Some(v @ (Value::String(_) | Value::Number(_))) => Some(v),
        Some(_) => {
            return Err(RpcError::invalid_request(
                "'id' must be a string or a number",
            ))
        }
    };
    let method = match o.remove("method") {
        None => None,
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(RpcError::invalid_request("'method' must be a string")),
    };
    if method.is_none() && id.is_none() {
        return Err(RpcError::invalid_request(
            "a message needs 'method' or 'id'",
        ));
    }
    let params = match o.remove("params") {
        None | Some(Value::Null) => None,
        Some(p @ Value::Object(_)) => Some(p),
        Some(_) => return Err(RpcError::invalid_request("'params' must be an object")),
    };
    Ok(Message { id, method, params })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests_notifications_and_rejects_batches() {
        let m = parse(br#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#).unwrap();
        assert_eq!(m.id, Some(json!(1)));
        assert_eq!(m.method.as_deref(), Some("ping"));
        let n = parse(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#).unwrap();
        assert!(n.id.is_none());
        assert_eq!(parse(b"[]").unwrap_err().code, INVALID_REQUEST);
        assert_eq!(parse(b"{").unwrap_err().code, PARSE_ERROR);
        assert_eq!(
            parse(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#)
                .unwrap_err()
                .code,
            INVALID_REQUEST
        );
        assert_eq!(
            parse(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}"#)
                .unwrap_err()
                .code,
            INVALID_REQUEST
        );
    }

    #[test]
    fn invalid_params_names_the_argument() {
        let e = RpcError::invalid_params("route", "must be a string");
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("'route'"));
        let b = error_body(&json!(7), &e);
        assert_eq!(b["error"]["data"]["argument"], "route");
        assert_eq!(b["id"], 7);
    }
}
