//! Scoped MCP tokens: minted by an admin (`POST /v1/mcp/tokens`), short-lived, kept only as
//! SHA-256 hashes, each with a read or mutate scope and a project / route / tag filter
//! (a tag is a request property, `name:value`, as sent in `loopgate-property-<name>`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::rpc::RpcError;
use super::Mcp;
use crate::admin::{AdminRequest, AdminResponse, AdminRoutes, Caller, Scope};
use crate::error::GatewayError;

/// At most this many live tokens (expired ones are dropped first).
pub const MAX_TOKENS: usize = 1024;
/// Default and maximum lifetime of a token.
pub const DEFAULT_TTL_SECS: u64 = 3600;
pub const MAX_TTL_SECS: u64 = 7 * 86_400;
const MAX_ROUTES: usize = 64;
const MAX_TAGS: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenScope {
    Read,
    Mutate,
}

/// What a presented token grants.
#[derive(Debug, Clone)]
pub struct Grant {
    pub token_id: String,
    pub scope: TokenScope,
    /// The project the token is locked to (enforced by the scoped store).
    pub project: Option<String>,
    /// The routes it may see (empty: every route its project may see).
    pub routes: Vec<String>,
    /// Request properties (`name`, `value`) every request it sees carries (all must match).
    pub tags: Vec<(String, String)>,
    pub expires_ms: i64,
}

impl Grant {
    /// The admin caller this token stands for.
    pub fn caller(&self) -> Caller {
        Caller {
            key_id: Some(format!("mcp:{}", self.token_id)),
            scopes: match self.scope {
                TokenScope::Read => vec![Scope::Read],
                TokenScope::Mutate => vec![Scope::Read, Scope::Admin],
            },
            project: self.project.clone(),
        }
    }

    pub fn allows_route(&self, route: &str) -> bool {
        self.routes.is_empty() || self.routes.iter().any(|r| r == route)
    }

    /// Whether a request (its trace as `/v1/logs/{id}` shows it) is inside the tag filter.
    pub fn allows_trace(&self, trace: &Value) -> bool {
        let has = |n: &str, v: &str| match trace.get("properties") {
            Some(Value::Array(a)) => a.iter().any(|p| {
                p.get(0).and_then(Value::as_str) == Some(n)
                    && p.get(1).and_then(Value::as_str) == Some(v)
            }),
            Some(Value::Object(o)) => o.get(n).and_then(Value::as_str) == Some(v),
            _ => false,
        };
        self.tags.iter().all(|(n, v)| has(n, v))
    }
}

pub struct Tokens {
    by_hash: Mutex<HashMap<[u8; 32], Grant>>,
}

impl Default for Tokens {
    fn default() -> Self {
        Self::new()
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Tokens {
    pub fn new() -> Tokens {
        Tokens {
            by_hash: Mutex::new(HashMap::new()),
        }
    }

    /// Store a new token; returns the secret (shown once). Fails when the table is full.
    pub fn mint(&self, g: Grant) -> Result<String, GatewayError> {
        let secret = format!("lgm_{}", hex::encode(rand::random::<[u8; 24]>()));
        let now = now_ms();
        let mut t = self
            .by_hash
            .lock()
            .map_err(|_| GatewayError::Internal("token table poisoned".into()))?;
        t.retain(|_, g| g.expires_ms > now);
        if t.len() >= MAX_TOKENS {
            return Err(GatewayError::Unavailable(format!(
                "at most {MAX_TOKENS} MCP tokens may be live at once; let some expire"
            )));
        }
        t.insert(hash(&secret), g);
        Ok(secret)
    }

    /// The grant of a `Bearer` token; 401 errors for a missing, unknown or expired one.
    pub fn check(&self, authorization: Option<&str>) -> Result<Grant, RpcError> {
        let token = authorization
            .and_then(|a| {
                a.strip_prefix("Bearer ")
                    .or_else(|| a.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                RpcError::unauthorized(
                    "missing bearer token: send 'Authorization: Bearer <MCP token>' (POST /v1/mcp/tokens mints one)",
                )
            })?;
        let t = self
            .by_hash
            .lock()
            .map_err(|_| RpcError::internal("token table poisoned"))?;
        match t.get(&hash(token)) {
            None => Err(RpcError::unauthorized("unknown MCP token")),
            Some(g) if g.expires_ms <= now_ms() => Err(RpcError::unauthorized(
                "the MCP token has expired; mint a new one",
            )),
            Some(g) => Ok(g.clone()),
        }
    }
}

/// `POST /v1/mcp/tokens` (admin scope): mint a token.
pub struct McpTokenRoutes {
    pub mcp: Arc<Mcp>,
}

#[async_trait]
impl AdminRoutes for McpTokenRoutes {
    async fn handle(&self, req: &AdminRequest) -> Option<AdminResponse> {
        if req.path.trim_end_matches('/') != "/v1/mcp/tokens" {
            return None;
        }
        Some(
            self.mint(req)
                .await
                .unwrap_or_else(|e| AdminResponse::error(&e)),
        )
    }
}

fn string_list(v: &Value, name: &str, max: usize) -> Result<Vec<String>, GatewayError> {
    let bad = || {
        GatewayError::invalid(
            format!("'{name}' must be an array of at most {max} non-empty strings"),
            Some(name),
        )
    };
    let arr = v.as_array().filter(|a| a.len() <= max).ok_or_else(bad)?;
    arr.iter()
        .map(|x| {
            x.as_str()
                .filter(|s| !s.is_empty() && s.len() <= 256)
                .map(str::to_string)
                .ok_or_else(bad)
        })
        .collect()
}

impl McpTokenRoutes {
    async fn mint(&self, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
        if req.method != "POST" {
            return Err(GatewayError::MethodNotAllowed(format!(
                "Method {} is not allowed on /v1/mcp/tokens.",
                req.method
            )));
        }
        req.caller.require(Scope::Admin)?;
        let body: Map<String, Value> = if req.body.is_empty() {
            Map::new()
        } else {
            serde_json::from_slice(&req.body).map_err(|e| {
                GatewayError::invalid(format!("the body must be a JSON object: {e}"), None)
            })?
        };
        for k in body.keys() {
            if !matches!(
                k.as_str(),
                "scope" | "ttl_secs" | "project" | "routes" | "tags" | "reason"
            ) {
                return Err(GatewayError::invalid(
                    format!(
                        "unknown field '{k}' (known: scope, ttl_secs, project, routes, tags, reason)"
                    ),
                    Some(k),
                ));
            }
        }
        let scope = match body.get("scope").and_then(Value::as_str) {
            None if !body.contains_key("scope") => TokenScope::Read,
            Some("read") => TokenScope::Read,
            Some("mutate") => TokenScope::Mutate,
            _ => {
                return Err(GatewayError::invalid(
                    "'scope' must be \"read\" or \"mutate\"",
                    Some("scope"),
                ))
            }
        };
        let ttl = match body.get("ttl_secs") {
            None => DEFAULT_TTL_SECS,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=MAX_TTL_SECS).contains(n))
                .ok_or_else(|| {
                    GatewayError::invalid(
                        format!("'ttl_secs' must be an integer 1..={MAX_TTL_SECS}"),
                        Some("ttl_secs"),
                    )
                })?,
        };
        let asked_project = match body.get("project") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 256 => Some(s.clone()),
            Some(_) => {
                return Err(GatewayError::invalid(
                    "'project' must be a non-empty string",
                    Some("project"),
                ))
            }
        };
        // A project-locked admin mints only tokens of its own project.
        let project = match (&req.caller.project, asked_project) {
            (Some(locked), Some(p)) if *locked != p => {
                return Err(GatewayError::Forbidden(
                    "this key is locked to another project".into(),
                ))
            }
            (Some(locked), _) => Some(locked.clone()),
            (None, p) => p,
        };
        let routes = match body.get("routes") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => string_list(v, "routes", MAX_ROUTES)?,
        };
        let tags = match body.get("tags") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => string_list(v, "tags", MAX_TAGS)?
                .into_iter()
                .map(|t| match t.split_once(':') {
                    Some((n, v)) if !n.is_empty() => Ok((n.to_ascii_lowercase(), v.to_string())),
                    _ => Err(GatewayError::invalid(
                        "each of 'tags' must be 'name:value' (a request property)",
                        Some("tags"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        if scope == TokenScope::Mutate && !tags.is_empty() {
            return Err(GatewayError::invalid(
                "a mutate token cannot be filtered by tag: its changes apply to whole routes (filter by routes instead)",
                Some("tags"),
            ));
        }
        let reason = crate::admin::routing::reason(&body)?;
        let id = format!("mcptok_{}", hex::encode(rand::random::<[u8; 8]>()));
        let expires_ms = now_ms() + ttl as i64 * 1000;
        let grant = Grant {
            token_id: id.clone(),
            scope,
            project: project.clone(),
            routes: routes.clone(),
            tags: tags.clone(),
            expires_ms,
        };
        // Audit first: a token that cannot be audited is not minted.
        let actor = crate::admin::routing::actor(req);
        let shown_tags: Vec<String> = tags.iter().map(|(n, v)| format!("{n}:{v}")).collect();
        let new = json!({"id": id, "scope": scope, "project": project, "routes": routes, "tags": shown_tags, "expires_ms": expires_ms});
        self.mcp
            .audit(
                &actor,
                "mcp.token_mint",
                None,
                Some(new.to_string()),
                reason,
            )
            .await
            .map_err(|e| GatewayError::Unavailable(e.message))?;
        let secret = self.mcp.tokens.mint(grant)?;
        Ok(AdminResponse::json(
            201,
            &json!({
                "object": "mcp.token",
                "id": id,
                "token": secret,
                "scope": scope,
                "project": project,
                "routes": routes,
                "tags": shown_tags,
                "expires_at_ms": expires_ms,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(expires_ms: i64) -> Grant {
        Grant {
            token_id: "t".into(),
            scope: TokenScope::Read,
            project: None,
            routes: vec![],
            tags: vec![],
            expires_ms,
        }
    }

    #[test]
    fn filters_match_routes_and_every_tag() {
        let mut g = grant(0);
        assert!(g.allows_route("any") && g.allows_trace(&json!({})));
        g.routes = vec!["ra".into()];
        g.tags = vec![
            ("feature".into(), "search".into()),
            ("team".into(), "a".into()),
        ];
        assert!(g.allows_route("ra") && !g.allows_route("rb"));
        let both = json!({"properties": [["feature", "search"], ["team", "a"], ["x", "y"]]});
        let one = json!({"properties": [["feature", "search"]]});
        let other = json!({"properties": [["feature", "chat"], ["team", "a"]]});
        assert!(g.allows_trace(&both));
        assert!(!g.allows_trace(&one));
        assert!(!g.allows_trace(&other));
        assert!(!g.allows_trace(&json!({"properties": []})));
        assert!(g.allows_trace(&json!({"properties": {"feature": "search", "team": "a"}})));
        // A mutate token acts as an admin of its project; a read token only reads.
        assert!(!g.caller().has(Scope::Admin) && g.caller().has(Scope::Read));
        g.scope = TokenScope::Mutate;
        assert!(g.caller().has(Scope::Admin));
        assert_eq!(g.caller().key_id.as_deref(), Some("mcp:t"));
    }

    #[test]
    fn the_token_table_is_bounded_and_drops_expired_tokens_first() {
        let t = Tokens::new();
        for _ in 0..MAX_TOKENS {
            t.mint(grant(now_ms() - 1)).unwrap();
        }
        // All expired: dropped, so a new one fits.
        t.mint(grant(now_ms() + 60_000)).unwrap();
        for _ in 1..MAX_TOKENS {
            t.mint(grant(now_ms() + 60_000)).unwrap();
        }
        assert!(t.mint(grant(now_ms() + 60_000)).is_err());
    }

    #[test]
    fn tokens_are_checked_by_hash_and_expire() {
        let t = Tokens::new();
        let live = t.mint(grant(now_ms() + 60_000)).unwrap();
        let dead = t.mint(grant(now_ms() - 1)).unwrap();
        assert!(t.check(Some(&format!("Bearer {live}"))).is_ok());
        let e = t.check(Some(&format!("Bearer {dead}"))).unwrap_err();
        assert_eq!((e.http_status, e.code), (401, -32001));
        assert!(e.message.contains("expired"));
        assert_eq!(t.check(None).unwrap_err().http_status, 401);
        assert_eq!(t.check(Some("Bearer nope")).unwrap_err().http_status, 401);
        // Only hashes are kept.
        let held = t.by_hash.lock().unwrap();
        assert!(held.contains_key(&hash(&live)));
        assert!(!format!("{:?}", held.values().collect::<Vec<_>>()).contains(&live));
    }
}
