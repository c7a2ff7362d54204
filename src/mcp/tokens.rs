//! Scoped MCP tokens: minted by an admin (`POST /v1/mcp/tokens`), short-lived, kept only as
//! SHA-256 hashes, each with a read or mutate scope and a project / route / tag filter
//! (a tag is a request property, `name:value`, as sent in `loopgate-property-<name>`).
//!
//! With a store (SQLite or PostgreSQL) tokens live in its `mcp_tokens` table: a token minted
//! on one instance works on every instance sharing the store and survives restarts. A
//! presented token is looked up by hash and its answer cached for [`CACHE_TTL`], so a
//! revocation (`DELETE /v1/mcp/tokens/{id}`) on any instance takes effect everywhere within
//! that time (at once on the revoking instance). Expired and revoked rows are purged
//! [`PURGE_GRACE_MS`] after they stop working, on the next mint or listing. With
//! `storage.backend = "none"` tokens are held in memory by the instance that minted them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::rpc::RpcError;
use super::Mcp;
use crate::admin::{AdminRequest, AdminResponse, AdminRoutes, Caller, Scope};
use crate::error::GatewayError;
use crate::store::writer::StoreSlot;
use crate::store::{McpTokenRow, Store};

/// At most this many live tokens (expired ones are dropped first).
pub const MAX_TOKENS: usize = 1024;
/// Default and maximum lifetime of a token.
pub const DEFAULT_TTL_SECS: u64 = 3600;
pub const MAX_TTL_SECS: u64 = 7 * 86_400;
const MAX_ROUTES: usize = 64;
const MAX_TAGS: usize = 16;
/// How long an instance trusts its last store answer about a presented token: the bound on
/// how late a revocation made elsewhere takes effect here.
pub const CACHE_TTL: Duration = Duration::from_millis(500);
/// Cached answers kept at most (stale ones are dropped first, then all).
const MAX_CACHED: usize = 4096;
/// Expired or revoked tokens stay listed (and answer "expired" / "revoked") this long.
pub const PURGE_GRACE_MS: i64 = 60_000;
/// A store call of the token path waits at most this long.
const STORE_WAIT: Duration = Duration::from_secs(3);

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

    fn shown_tags(&self) -> Vec<String> {
        self.tags.iter().map(|(n, v)| format!("{n}:{v}")).collect()
    }

    /// The stored JSON of what the token grants besides its project and expiry.
    fn spec(&self) -> String {
        json!({"scope": self.scope, "routes": self.routes, "tags": self.shown_tags()}).to_string()
    }

    /// The grant of a stored row (`None`: a row this version cannot read).
    fn of_row(row: &McpTokenRow) -> Option<Grant> {
        let spec: Value = serde_json::from_str(&row.spec).ok()?;
        let scope = match spec.get("scope").and_then(Value::as_str)? {
            "read" => TokenScope::Read,
            "mutate" => TokenScope::Mutate,
            _ => return None,
        };
        let strings = |k: &str| -> Option<Vec<String>> {
            match spec.get(k) {
                None | Some(Value::Null) => Some(Vec::new()),
                Some(Value::Array(a)) => a.iter().map(|x| x.as_str().map(str::to_string)).collect(),
                Some(_) => None,
            }
        };
        let tags = strings("tags")?
            .into_iter()
            .map(|t| {
                t.split_once(':')
                    .map(|(n, v)| (n.to_string(), v.to_string()))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(Grant {
            token_id: row.id.clone(),
            scope,
            project: row.project.clone(),
            routes: strings("routes")?,
            tags,
            expires_ms: row.expires_ms,
        })
    }
}

/// A token as `GET /v1/mcp/tokens` lists it (never its secret or hash).
fn listed(g: &Grant, created_ms: i64, revoked_ms: Option<i64>) -> Value {
    json!({
        "object": "mcp.token",
        "id": g.token_id,
        "scope": g.scope,
        "project": g.project,
        "routes": g.routes,
        "tags": g.shown_tags(),
        "created_at_ms": created_ms,
        "expires_at_ms": g.expires_ms,
        "revoked_at_ms": revoked_ms,
    })
}

/// One token held in memory (`storage.backend = "none"`).
#[derive(Debug, Clone)]
struct Held {
    grant: Grant,
    created_ms: i64,
    revoked_ms: Option<i64>,
}

/// Where tokens live: the store, or this instance's memory.
pub struct Tokens {
    slot: Option<StoreSlot>,
    /// Without a store: every token, by hash.
    held: Mutex<HashMap<[u8; 32], Held>>,
    /// With a store: the last answer about each presented hash (`None`: unknown).
    cache: Mutex<HashMap<[u8; 32], Cached>>,
}

/// A cached store answer about a presented hash: when it was read, and the token (`None`:
/// unknown).
type Cached = (Instant, Option<Held>);

impl Default for Tokens {
    fn default() -> Self {
        Self::new()
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hash_text(h: &[u8; 32]) -> String {
    format!("sha256:{}", hex::encode(h))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn store_down(e: impl std::fmt::Display) -> GatewayError {
    tracing::warn!(error = %e, "MCP token store call failed");
    GatewayError::Unavailable(
        "the MCP token store is temporarily unavailable; retry shortly".into(),
    )
}

impl Tokens {
    /// Tokens held in this instance's memory only (no store).
    pub fn new() -> Tokens {
        Tokens {
            slot: None,
            held: Mutex::new(HashMap::new()),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Tokens kept in the store of `slot` (shared by every instance on it).
    pub fn with_store(slot: StoreSlot) -> Tokens {
        Tokens {
            slot: Some(slot),
            ..Tokens::new()
        }
    }

    /// Whether tokens survive a restart and are shared (`false`: in memory).
    pub fn persistent(&self) -> bool {
        self.slot.is_some()
    }

    async fn store(&self) -> Result<Option<Arc<dyn Store>>, GatewayError> {
        match &self.slot {
            None => Ok(None),
            Some(slot) => slot.wait(STORE_WAIT).await.map(Some).ok_or_else(|| {
                GatewayError::Unavailable(
                    "the store holding MCP tokens is not open yet; retry shortly".into(),
                )
            }),
        }
    }

    fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>, GatewayError> {
        m.lock()
            .map_err(|_| GatewayError::Internal("token table poisoned".into()))
    }

    /// Store a new token; returns the secret (shown once). Fails when the table is full.
    pub async fn mint(&self, g: Grant) -> Result<String, GatewayError> {
        let secret = format!("lgm_{}", hex::encode(rand::random::<[u8; 24]>()));
        let now = now_ms();
        let Some(store) = self.store().await? else {
            let mut t = Self::lock(&self.held)?;
            t.retain(|_, h| h.grant.expires_ms > now && h.revoked_ms.is_none());
            if t.len() >= MAX_TOKENS {
                return Err(full());
            }
            t.insert(
                hash(&secret),
                Held {
                    grant: g,
                    created_ms: now,
                    revoked_ms: None,
                },
            );
            return Ok(secret);
        };
        let live = self.stored_rows(&store, now).await?;
        let live = live
            .iter()
            .filter(|r| r.expires_ms > now && r.revoked_ms.is_none())
            .count();
        if live >= MAX_TOKENS {
            return Err(full());
        }
        let row = McpTokenRow {
            id: g.token_id.clone(),
            hash: hash_text(&hash(&secret)),
            project: g.project.clone(),
            spec: g.spec(),
            created_ms: now,
            expires_ms: g.expires_ms,
            revoked_ms: None,
        };
        tokio::time::timeout(STORE_WAIT, store.insert_mcp_token(&row))
            .await
            .map_err(store_down)?
            .map_err(store_down)?;
        Ok(secret)
    }

    /// Every stored row, after purging those past [`PURGE_GRACE_MS`].
    async fn stored_rows(
        &self,
        store: &Arc<dyn Store>,
        now: i64,
    ) -> Result<Vec<McpTokenRow>, GatewayError> {
        let purged = tokio::time::timeout(STORE_WAIT, store.purge_mcp_tokens(now - PURGE_GRACE_MS))
            .await
            .map_err(store_down)?
            .map_err(store_down)?;
        if purged > 0 {
            tracing::info!(purged, "MCP tokens purged (expired or revoked)");
        }
        tokio::time::timeout(STORE_WAIT, store.mcp_tokens())
            .await
            .map_err(store_down)?
            .map_err(store_down)
    }

    /// The tokens visible to a caller locked to `project` (or all), oldest first, without
    /// secrets; expired and revoked ones until they are purged.
    pub async fn list(&self, project: Option<&str>) -> Result<Vec<Value>, GatewayError> {
        let now = now_ms();
        let visible = |p: &Option<String>| project.is_none() || p.as_deref() == project;
        let Some(store) = self.store().await? else {
            let mut t = Self::lock(&self.held)?;
            t.retain(|_, h| {
                h.grant.expires_ms > now - PURGE_GRACE_MS
                    && h.revoked_ms.is_none_or(|r| r > now - PURGE_GRACE_MS)
            });
            let mut v: Vec<&Held> = t.values().filter(|h| visible(&h.grant.project)).collect();
            v.sort_by(|a, b| {
                (a.created_ms, &a.grant.token_id).cmp(&(b.created_ms, &b.grant.token_id))
            });
            return Ok(v
                .into_iter()
                .map(|h| listed(&h.grant, h.created_ms, h.revoked_ms))
                .collect());
        };
        let rows = self.stored_rows(&store, now).await?;
        Ok(rows
            .iter()
            .filter(|r| visible(&r.project))
            .filter_map(|r| Grant::of_row(r).map(|g| listed(&g, r.created_ms, r.revoked_ms)))
            .collect())
    }

    /// Revoke a token by id, if the caller (locked to `project`, or not) can see it.
    /// `Ok(false)`: no such live token.
    pub async fn revoke(&self, id: &str, project: Option<&str>) -> Result<bool, GatewayError> {
        let now = now_ms();
        let visible = |p: &Option<String>| project.is_none() || p.as_deref() == project;
        let Some(store) = self.store().await? else {
            let mut t = Self::lock(&self.held)?;
            let Some(h) = t
                .values_mut()
                .find(|h| h.grant.token_id == id && visible(&h.grant.project))
            else {
                return Ok(false);
            };
            if h.revoked_ms.is_some() {
                return Ok(false);
            }
            h.revoked_ms = Some(now);
            return Ok(true);
        };
        let rows = self.stored_rows(&store, now).await?;
        if !rows
            .iter()
            .any(|r| r.id == id && r.revoked_ms.is_none() && visible(&r.project))
        {
            return Ok(false);
        }
        let done = tokio::time::timeout(STORE_WAIT, store.revoke_mcp_token(id, now))
            .await
            .map_err(store_down)?
            .map_err(store_down)?;
        // This instance stops trusting its cached answer at once.
        Self::lock(&self.cache)?
            .retain(|_, (_, h)| h.as_ref().is_none_or(|h| h.grant.token_id != id));
        Ok(done)
    }

    /// What this instance knows about a hash: memory, or the store through the cache.
    async fn lookup(&self, h: [u8; 32]) -> Result<Option<Held>, RpcError> {
        fn poisoned<T>(_: T) -> RpcError {
            RpcError::internal("token table poisoned")
        }
        let Some(slot) = &self.slot else {
            return Ok(self.held.lock().map_err(poisoned)?.get(&h).cloned());
        };
        if let Some((at, found)) = self.cache.lock().map_err(poisoned)?.get(&h) {
            if at.elapsed() < CACHE_TTL {
                return Ok(found.clone());
            }
        }
        let unavailable = || {
            RpcError::unavailable("the MCP token store is temporarily unavailable; retry shortly")
        };
        let store = slot.wait(STORE_WAIT).await.ok_or_else(unavailable)?;
        let row = tokio::time::timeout(STORE_WAIT, store.mcp_token_by_hash(&hash_text(&h)))
            .await
            .map_err(|_| unavailable())?
            .map_err(|e| {
                tracing::warn!(error = %e, "MCP token lookup failed");
                unavailable()
            })?;
        let found = row.and_then(|r| {
            Grant::of_row(&r).map(|grant| Held {
                grant,
                created_ms: r.created_ms,
                revoked_ms: r.revoked_ms,
            })
        });
        let mut cache = self.cache.lock().map_err(poisoned)?;
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, (at, _)| at.elapsed() < CACHE_TTL);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(h, (Instant::now(), found.clone()));
        Ok(found)
    }

    /// The grant of a `Bearer` token; 401 errors for a missing, unknown, revoked or expired one.
    pub async fn check(&self, authorization: Option<&str>) -> Result<Grant, RpcError> {
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
        match self.lookup(hash(token)).await? {
            None => Err(RpcError::unauthorized("unknown MCP token")),
            Some(h) if h.revoked_ms.is_some() => Err(RpcError::unauthorized(
                "the MCP token has been revoked; mint a new one",
            )),
            Some(h) if h.grant.expires_ms <= now_ms() => Err(RpcError::unauthorized(
                "the MCP token has expired; mint a new one",
            )),
            Some(h) => Ok(h.grant),
        }
    }
}

fn full() -> GatewayError {
    GatewayError::Unavailable(format!(
        "at most {MAX_TOKENS} MCP tokens may be live at once; let some expire or revoke some"
    ))
}

/// `POST /v1/mcp/tokens` (mint), `GET /v1/mcp/tokens` (list, no secrets) and
/// `DELETE /v1/mcp/tokens/{id}` (revoke); admin scope, a project-locked admin sees and
/// changes only its project's tokens.
pub struct McpTokenRoutes {
    pub mcp: Arc<Mcp>,
}

#[async_trait]
impl AdminRoutes for McpTokenRoutes {
    async fn handle(&self, req: &AdminRequest) -> Option<AdminResponse> {
        let path = req.path.trim_end_matches('/');
        let res = if path == "/v1/mcp/tokens" {
            match req.method.as_str() {
                "POST" => self.mint(req).await,
                "GET" => self.list(req).await,
                m => Err(GatewayError::MethodNotAllowed(format!(
                    "Method {m} is not allowed on /v1/mcp/tokens (POST mints, GET lists)."
                ))),
            }
        } else {
            let id = path.strip_prefix("/v1/mcp/tokens/")?;
            match req.method.as_str() {
                "DELETE" => self.revoke(req, id).await,
                m => Err(GatewayError::MethodNotAllowed(format!(
                    "Method {m} is not allowed on /v1/mcp/tokens/{{id}} (DELETE revokes)."
                ))),
            }
        };
        Some(res.unwrap_or_else(|e| AdminResponse::error(&e)))
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
    async fn list(&self, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Admin)?;
        let data = self.mcp.tokens.list(req.caller.project.as_deref()).await?;
        Ok(AdminResponse::json(
            200,
            &json!({"object": "list", "persistent": self.mcp.tokens.persistent(), "data": data}),
        ))
    }

    async fn revoke(&self, req: &AdminRequest, id: &str) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Admin)?;
        let reason = if req.body.is_empty() {
            None
        } else {
            let body: Map<String, Value> = serde_json::from_slice(&req.body).map_err(|e| {
                GatewayError::invalid(format!("the body must be a JSON object: {e}"), None)
            })?;
            crate::admin::routing::reason(&body)?
        };
        let not_found = || {
            GatewayError::NotFound {
            message: format!(
                "MCP token '{}' not found (unknown, already revoked, purged, or of another project).",
                id.chars().take(80).collect::<String>()
            ),
            code: "mcp_token_not_found",
            param: Some("id".into()),
        }
        };
        if id.is_empty() || id.len() > 128 {
            return Err(not_found());
        }
        if !self
            .mcp
            .tokens
            .revoke(id, req.caller.project.as_deref())
            .await?
        {
            return Err(not_found());
        }
        let actor = crate::admin::routing::actor(req);
        if let Err(e) = self
            .mcp
            .audit(
                &actor,
                "mcp.token_revoke",
                None,
                Some(json!({"id": id}).to_string()),
                reason,
            )
            .await
        {
            // The revocation stands; its audit entry could not be written.
            tracing::warn!(error = %e.message, token = id, "MCP token revocation not audited");
        }
        Ok(AdminResponse::json(
            200,
            &json!({"object": "mcp.token", "id": id, "revoked": true}),
        ))
    }

    async fn mint(&self, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
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
        let secret = self.mcp.tokens.mint(grant).await?;
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

    #[tokio::test]
    async fn the_token_table_is_bounded_and_drops_expired_tokens_first() {
        let t = Tokens::new();
        for _ in 0..MAX_TOKENS {
            t.mint(grant(now_ms() - 1)).await.unwrap();
        }
        // All expired: dropped, so a new one fits.
        t.mint(grant(now_ms() + 60_000)).await.unwrap();
        for _ in 1..MAX_TOKENS {
            t.mint(grant(now_ms() + 60_000)).await.unwrap();
        }
        assert!(t.mint(grant(now_ms() + 60_000)).await.is_err());
    }

    #[tokio::test]
    async fn tokens_are_checked_by_hash_expire_and_revoke() {
        let t = Tokens::new();
        let live = t.mint(grant(now_ms() + 60_000)).await.unwrap();
        let dead = t.mint(grant(now_ms() - 1)).await.unwrap();
        assert!(t.check(Some(&format!("Bearer {live}"))).await.is_ok());
        let e = t.check(Some(&format!("Bearer {dead}"))).await.unwrap_err();
        assert_eq!((e.http_status, e.code), (401, -32001));
        assert!(e.message.contains("expired"));
        assert_eq!(t.check(None).await.unwrap_err().http_status, 401);
        assert_eq!(
            t.check(Some("Bearer nope")).await.unwrap_err().http_status,
            401
        );
        // Only hashes are kept.
        {
            let held = t.held.lock().unwrap();
            assert!(held.contains_key(&hash(&live)));
            assert!(!format!("{:?}", held.values().collect::<Vec<_>>()).contains(&live));
        }
        // Listed without secrets; revoked by id (another project's key cannot).
        let listed = t.list(None).await.unwrap();
        assert_eq!(listed.len(), 2);
        assert!(!Value::Array(listed.clone()).to_string().contains(&live));
        assert!(!t.revoke("t", Some("other")).await.unwrap());
        assert!(t.list(Some("other")).await.unwrap().is_empty());
        let mut one = grant(now_ms() + 60_000);
        one.token_id = "t2".into();
        let second = t.mint(one).await.unwrap();
        assert!(t.revoke("t2", None).await.unwrap());
        assert!(!t.revoke("t2", None).await.unwrap());
        let e = t
            .check(Some(&format!("Bearer {second}")))
            .await
            .unwrap_err();
        assert!(e.message.contains("revoked"), "{}", e.message);
    }

    #[test]
    fn a_stored_grant_reads_back() {
        let mut g = grant(123);
        g.routes = vec!["ra".into()];
        g.tags = vec![("feature".into(), "a:b".into())];
        g.project = Some("p".into());
        let row = McpTokenRow {
            id: "t".into(),
            hash: hash_text(&hash("x")),
            project: g.project.clone(),
            spec: g.spec(),
            created_ms: 1,
            expires_ms: g.expires_ms,
            revoked_ms: None,
        };
        let back = Grant::of_row(&row).unwrap();
        assert_eq!(back.routes, g.routes);
        assert_eq!(back.tags, g.tags);
        assert_eq!(
            (back.project, back.expires_ms, back.scope),
            (g.project, 123, TokenScope::Read)
        );
        assert!(row.hash.starts_with("sha256:") && row.hash.len() == 7 + 64);
        assert!(Grant::of_row(&McpTokenRow {
            spec: "{}".into(),
            ..row
        })
        .is_none());
    }
}
