//! Exact response cache (layer 4): a bounded in-memory store of complete, successful chat
//! answers — JSON bodies and SSE streams with their original chunking — keyed by the
//! canonical request after resolution (served provider and model, every output-affecting
//! body field) and the project. See `docs/cache.md`.
//!
//! This module is pure state and policy: the proxy (`src/proxy/cached.rs`) asks
//! [`plan`] what to do with a request, serves an [`Entry`] on a hit and offers what it
//! served back through [`CacheCtx`]. With `backend = "redis"` entries also go to a Redis
//! shared by a fleet ([`redis`]), with this store as a local copy in front of it.

pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::dialect::Usage;

pub mod semantic;

/// `[cache]` in the gateway config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Cache every route and key (otherwise only the ones opted in below).
    pub enabled: bool,
    /// Default time to live of an entry.
    pub ttl_secs: u64,
    /// Bound of the in-memory store (bytes of cached bodies and chunks).
    pub max_bytes: u64,
    /// Largest answer (JSON body or all stream chunks) that is stored; a larger one is not.
    pub max_entry_bytes: u64,
    /// Requests with a `temperature` above this bypass the cache unless forced.
    pub max_temperature: f64,
    /// Per routing rule opt-in / opt-out and TTL.
    pub routes: BTreeMap<String, CacheRule>,
    /// Per gateway key (by key id) opt-in / opt-out, TTL and default mode.
    pub keys: BTreeMap<String, CacheRule>,
    /// Where entries live: this process's memory, or a Redis shared by a fleet.
    pub backend: Backend,
    /// `redis://[user:password@]host:port[/db]` or `unix:///path`; env `LOOPGATE_CACHE_REDIS_URL`.
    pub redis_url: Option<String>,
    /// Longest a lookup waits for Redis before it is a miss (and a write before it is dropped).
    pub redis_timeout_ms: u64,
    /// Prefix of every cache key in Redis (several fleets on one Redis).
    pub redis_key_prefix: String,
    /// With `backend = "redis"`: keep a local copy of entries in front of Redis (bounded by
    /// `max_bytes`).
    pub l1: bool,
    /// `[cache.semantic]`: the second lookup, by embedding similarity (`semantic`).
    pub semantic: semantic::SemanticConfig,
}

/// `[cache] backend`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In this gateway's memory: per instance.
    #[default]
    Memory,
    /// In Redis: shared by every gateway on the same Redis and key prefix.
    Redis,
}

impl CacheConfig {
    /// Checks naming the offending field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=10_000).contains(&self.redis_timeout_ms) {
            return Err(format!(
                "cache.redis_timeout_ms must be from 1 to 10000, got {}",
                self.redis_timeout_ms
            ));
        }
        let p = &self.redis_key_prefix;
        if p.len() > 64 || p.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err(
                "cache.redis_key_prefix must be at most 64 bytes without spaces or control characters"
                    .into(),
            );
        }
        if !(self.max_temperature.is_finite() && self.max_temperature >= 0.0) {
            return Err(format!(
                "cache.max_temperature must be a number >= 0, got {}",
                self.max_temperature
            ));
        }
        if self.backend == Backend::Redis {
            let Some(url) = self.redis_url.as_deref() else {
                return Err(
                    "cache.backend = \"redis\" needs cache.redis_url (or LOOPGATE_CACHE_REDIS_URL)"
                        .into(),
                );
            };
            if !["redis://", "redis+unix://", "unix://"]
                .iter()
                .any(|s| url.starts_with(s))
            {
                return Err(
                    "cache.redis_url must start with redis:// or unix:// (TLS is not supported)"
                        .into(),
                );
            }
            // Parsing only (nothing is connected); the error never repeats the URL (password).
            if ::redis::Client::open(url).is_err() {
                return Err("cache.redis_url is not a valid Redis URL".into());
            }
        }
        Ok(())
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: false,
            ttl_secs: 300,
            max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            max_temperature: 1.0,
            routes: BTreeMap::new(),
            keys: BTreeMap::new(),
            backend: Backend::Memory,
            redis_url: None,
            redis_timeout_ms: 50,
            redis_key_prefix: "loopgate:cache:".into(),
            l1: true,
            semantic: semantic::SemanticConfig::default(),
        }
    }
}

/// `[cache.routes.<name>]` / `[cache.keys.<id>]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheRule {
    pub enabled: bool,
    pub ttl_secs: Option<u64>,
    /// Mode used when the request carries no `<prefix>-cache` / `Cache-Control` directive
    /// (a key's default wins over a route's).
    pub mode: Option<Mode>,
}

impl Default for CacheRule {
    fn default() -> Self {
        CacheRule {
            enabled: true,
            ttl_secs: None,
            mode: None,
        }
    }
}

/// The request header `<prefix>-cache` (or a key's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Look up, store on a miss.
    Default,
    /// Neither look up nor store.
    NoStore,
    /// Skip the lookup, store the fresh answer.
    Refresh,
    /// Serve from the cache or answer 504 `cache_miss`.
    OnlyIfCached,
    /// Like `default`, also for requests that would bypass (`n > 1`, tool results, high temperature).
    Force,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "default" => Mode::Default,
            "no-store" => Mode::NoStore,
            "refresh" => Mode::Refresh,
            "only-if-cached" => Mode::OnlyIfCached,
            "force" => Mode::Force,
            _ => return None,
        })
    }
}

/// The mode a standard `Cache-Control` request header asks for (used when the request has
/// no `<prefix>-cache` header): `no-store` → no-store, `no-cache` / `max-age=0` → refresh,
/// `only-if-cached` → only-if-cached.
pub fn from_cache_control(v: &str) -> Option<Mode> {
    let mut mode = None;
    for d in v.split(',').map(|d| d.trim().to_ascii_lowercase()) {
        match d.as_str() {
            "no-store" => return Some(Mode::NoStore),
            "no-cache" | "max-age=0" => mode = Some(Mode::Refresh),
            "only-if-cached" => mode = mode.or(Some(Mode::OnlyIfCached)),
            _ => {}
        }
    }
    mode
}

/// Trace properties the cache sets (a client's `<prefix>-property-<name>` of these names is
/// ignored, so analytics of hits and savings cannot be forged).
pub const PROPERTIES: &[&str] = &["cache", "cache_saved_usd", "cache_saved_ms"];

/// A 256-bit digest of the canonical request.
pub type Key = [u8; 32];

/// What was cached: a complete JSON answer or every SSE chunk as it went downstream.
#[derive(Debug)]
pub enum Body {
    Json(Bytes),
    Stream(Vec<Bytes>),
}

#[derive(Debug)]
pub struct Entry {
    pub body: Body,
    pub provider: String,
    pub model: Option<String>,
    pub usage: Usage,
    pub cost_usd: f64,
    /// How long the original answer took end to end.
    pub latency_ms: f64,
    /// The id the original answer carried (rewritten to the new request's on replay).
    pub request_id: String,
    pub expires: Instant,
}

impl Entry {
    pub(crate) fn weight(&self) -> u32 {
        let body = match &self.body {
            Body::Json(b) => b.len(),
            Body::Stream(v) => v.iter().map(|c| c.len() + 16).sum(),
        };
        (body + self.provider.len() + self.request_id.len() + 256).min(u32::MAX as usize) as u32
    }
}

/// Each entry lives until its own `expires` (TTLs differ per route and key).
struct PerEntryTtl;

impl moka::Expiry<Key, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(&self, _k: &Key, e: &Arc<Entry>, now: Instant) -> Option<Duration> {
        Some(e.expires.saturating_duration_since(now))
    }
}

/// The bounded store (TinyLFU admission, byte weights, per-entry TTL) shared by every request,
/// and the Redis behind it when `backend = "redis"`.
pub struct Cache {
    store: moka::sync::Cache<Key, Arc<Entry>>,
    max_bytes: u64,
    /// The in-memory store is used (always with `memory`; `l1` with `redis`).
    local: bool,
    shared: Option<Arc<redis::Shared>>,
}

impl Cache {
    /// Sized from `[cache].max_bytes`; the backend from `[cache].backend` (both fixed for the
    /// life of the process). Nothing is connected until the first lookup.
    pub fn new(cfg: &CacheConfig) -> Cache {
        let store = moka::sync::Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(|_k: &Key, e: &Arc<Entry>| e.weight())
            .expire_after(PerEntryTtl)
            .build();
        let shared = match cfg.backend {
            Backend::Memory => None,
            Backend::Redis => match redis::Shared::new(cfg) {
                Ok(s) => {
                    tracing::info!(
                        redis = %s.endpoint(),
                        l1 = cfg.l1,
                        "cache: entries shared through Redis"
                    );
                    Some(Arc::new(s))
                }
                Err(e) => {
                    // Validation checked the URL; this only guards a config built in code.
                    tracing::error!("cache: the Redis backend is off: {e}");
                    None
                }
            },
        };
        Cache {
            store,
            max_bytes: cfg.max_bytes,
            local: shared.is_none() || cfg.l1,
            shared,
        }
    }

    /// Where the shared entries live (scheme, host, port; never credentials), if any.
    pub fn shared_endpoint(&self) -> Option<String> {
        self.shared.as_ref().map(|s| s.endpoint())
    }

    /// The live entry for `key`: the local store first, then Redis (bounded by
    /// `cache.redis_timeout_ms`; a fault or a bad entry is a miss, never an error).
    pub async fn lookup(&self, key: &Key) -> Option<Arc<Entry>> {
        if self.local {
            if let Some(e) = self.get(key) {
                return Some(e);
            }
        }
        let e = Arc::new(self.shared.as_ref()?.get(key).await?);
        if self.local && u64::from(e.weight()) <= self.max_bytes {
            self.store.insert(*key, Arc::clone(&e));
        }
        Some(e)
    }

    /// Offer a complete answer: into the local store at once, to Redis off the request path
    /// (a spawned write; dropped and counted when too many are in flight). `false`: stored
    /// nowhere (it alone outweighs the local store and there is no Redis).
    pub fn offer(&self, key: Key, e: Entry) -> bool {
        let e = Arc::new(e);
        let mut stored = false;
        if self.local && u64::from(e.weight()) <= self.max_bytes {
            self.store.insert(key, Arc::clone(&e));
            stored = true;
        }
        if let Some(s) = &self.shared {
            s.put(key, e);
            stored = true;
        }
        stored
    }

    /// The live entry for `key` in the local store; an expired one is evicted and is a miss.
    pub fn get(&self, key: &Key) -> Option<Arc<Entry>> {
        let e = self.store.get(key)?;
        if e.expires <= Instant::now() {
            self.store.invalidate(key);
            return None;
        }
        Some(e)
    }

    /// Store `e` locally (not when it alone outweighs the whole store). `false`: not stored.
    pub fn insert(&self, key: Key, e: Entry) -> bool {
        if u64::from(e.weight()) > self.max_bytes {
            return false;
        }
        self.store.insert(key, Arc::new(e));
        true
    }

    /// Weighted size as last maintained (cheap; may lag pending evictions).
    pub fn bytes(&self) -> u64 {
        self.store.weighted_size()
    }

    pub fn invalidate(&self, key: &Key) {
        self.store.invalidate(key);
    }

    /// Entries and weighted size (after pending maintenance).
    pub fn stats(&self) -> (u64, u64) {
        self.store.run_pending_tasks();
        (self.store.entry_count(), self.store.weighted_size())
    }
}

/// What the cache does for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Not enabled for this route / key: no header, nothing done.
    Off,
    /// Enabled but skipped (`no-store`, or a bypass rule): `<prefix>-cache: bypass`.
    Bypass,
    /// Look up (unless `refresh`), and store a successful answer.
    Use { mode: Mode, ttl_secs: u64 },
}

/// Decide what to do with a chat request on `route` from key `key_id`.
pub fn plan(
    cfg: &CacheConfig,
    route: Option<&str>,
    key_id: Option<&str>,
    header: Option<Mode>,
    body: &Map<String, Value>,
) -> Plan {
    let route_rule = route.and_then(|r| cfg.routes.get(r));
    let key_rule = key_id.and_then(|k| cfg.keys.get(k));
    // The most specific rule wins: key, then route, then the global switch.
    let enabled = key_rule
        .map(|r| r.enabled)
        .or(route_rule.map(|r| r.enabled))
        .unwrap_or(cfg.enabled);
    if !enabled {
        return Plan::Off;
    }
    let ttl_secs = key_rule
        .and_then(|r| r.ttl_secs)
        .or(route_rule.and_then(|r| r.ttl_secs))
        .unwrap_or(cfg.ttl_secs);
    let mode = header
        .or(key_rule.and_then(|r| r.mode))
        .or(route_rule.and_then(|r| r.mode))
        .unwrap_or(Mode::Default);
    if mode == Mode::NoStore || ttl_secs == 0 {
        return Plan::Bypass;
    }
    if mode != Mode::Force && bypasses(cfg, body) {
        return Plan::Bypass;
    }
    Plan::Use { mode, ttl_secs }
}

/// `n > 1`, tool results in the conversation, or a temperature above the bound.
fn bypasses(cfg: &CacheConfig, body: &Map<String, Value>) -> bool {
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return true;
    }
    if body
        .get("temperature")
        .and_then(Value::as_f64)
        .is_some_and(|t| t > cfg.max_temperature)
    {
        return true;
    }
    body.get("messages")
        .and_then(Value::as_array)
        .is_some_and(|ms| {
            ms.iter().any(|m| {
                matches!(
                    m.get("role").and_then(Value::as_str),
                    Some("tool" | "function")
                )
            })
        })
}

/// Body fields that never change the answer (routing, bookkeeping, transport).
const IGNORED: &[&str] = &["model", "user", "metadata", "store", "stream"];

/// The key of a request served by `provider`/`model` for `project`: a SHA-256 over the
/// project, the served target, the response shape and every other body field, with object
/// keys in sorted order (so field order on the wire does not matter).
pub fn key(
    project: Option<&str>,
    provider: &str,
    model: &str,
    stream: bool,
    body: &Map<String, Value>,
) -> Key {
    let mut h = Sha256::new();
    h.update(b"loopgate-cache-v1\0");
    match project {
        Some(p) => {
            h.update(b"p");
            str_into(&mut h, p);
        }
        None => h.update(b"n"),
    }
    str_into(&mut h, provider);
    str_into(&mut h, model);
    h.update([u8::from(stream)]);
    let mut fields: Vec<(&String, &Value)> = body
        .iter()
        .filter(|(k, _)| !IGNORED.contains(&k.as_str()))
        .collect();
    fields.sort_unstable_by(|a, b| a.0.cmp(b.0));
    h.update((fields.len() as u64).to_le_bytes());
    for (k, v) in fields {
        str_into(&mut h, k);
        value_into(&mut h, v);
    }
    h.finalize().into()
}

fn str_into(h: &mut Sha256, s: &str) {
    h.update((s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn value_into(h: &mut Sha256, v: &Value) {
    match v {
        Value::Null => h.update(b"0"),
        Value::Bool(b) => h.update(if *b { b"t" } else { b"f" }),
        Value::Number(n) => {
            h.update(b"#");
            // Same number, same key: 1 and 1.0 both hash as the f64 when not an integer.
            match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => h.update(i.to_le_bytes()),
                (None, Some(u)) => h.update(u.to_le_bytes()),
                _ => {
                    let f = n.as_f64().unwrap_or(0.0);
                    if f.fract() == 0.0 && f.abs() < 9.0e15 {
                        h.update((f as i64).to_le_bytes())
                    } else {
                        h.update(f.to_bits().to_le_bytes())
                    }
                }
            }
        }
        Value::String(s) => {
            h.update(b"s");
            str_into(h, s);
        }
        Value::Array(a) => {
            h.update(b"[");
            h.update((a.len() as u64).to_le_bytes());
            for x in a {
                value_into(h, x);
            }
        }
        Value::Object(o) => {
            h.update(b"{");
            h.update((o.len() as u64).to_le_bytes());
            let mut ks: Vec<(&String, &Value)> = o.iter().collect();
            ks.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (k, x) in ks {
                str_into(h, k);
                value_into(h, x);
            }
        }
    }
}

/// Per-request cache state carried on the request context.
pub struct CacheCtx {
    /// `hit`, `miss` or `bypass` (the `<prefix>-cache` response header).
    pub status: &'static str,
    /// Where a successful answer is stored (`None`: not stored).
    pub key: Option<Key>,
    /// The store it goes to (set with `key`).
    pub store: Option<Arc<Cache>>,
    pub ttl_secs: u64,
    pub body: Option<Bytes>,
    pub chunks: Vec<Bytes>,
    chunk_bytes: usize,
    /// `[cache].max_entry_bytes`: a larger answer is not stored.
    limit: usize,
    overflow: bool,
}

impl std::fmt::Debug for CacheCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheCtx")
            .field("status", &self.status)
            .field("stored", &self.key.is_some())
            .finish_non_exhaustive()
    }
}

impl CacheCtx {
    pub fn new(status: &'static str, key: Option<Key>, ttl_secs: u64, limit: u64) -> CacheCtx {
        CacheCtx {
            status,
            key,
            store: None,
            ttl_secs,
            body: None,
            chunks: Vec::new(),
            chunk_bytes: 0,
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            overflow: false,
        }
    }

    /// The JSON answer as written downstream (not kept above the entry bound).
    pub fn keep_body(&mut self, b: &Bytes) {
        if self.key.is_some() && b.len() <= self.limit {
            self.body = Some(b.clone());
        }
    }

    /// One SSE chunk as written downstream (its boundaries are kept for the replay).
    pub fn keep_chunk(&mut self, c: &Bytes) {
        if self.key.is_none() || self.overflow {
            return;
        }
        self.chunk_bytes += c.len();
        if self.chunk_bytes > self.limit {
            self.overflow = true;
            self.chunks = Vec::new();
            return;
        }
        self.chunks.push(c.clone());
    }

    /// What to store, when the answer is complete and cacheable.
    pub fn take_body(&mut self, stream: bool) -> Option<Body> {
        if stream {
            if self.overflow || self.chunks.is_empty() {
                return None;
            }
            Some(Body::Stream(std::mem::take(&mut self.chunks)))
        } else {
            self.body.take().map(Body::Json)
        }
    }
}

/// `bytes` with every occurrence of `from` replaced by `to` (same length: ids of replayed
/// answers become the new request's id). Unchanged when the lengths differ.
pub fn rewrite_id(bytes: &Bytes, from: &str, to: &str) -> Bytes {
    if from.len() != to.len() || from.is_empty() || from == to {
        return bytes.clone();
    }
    let f = from.as_bytes();
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i + f.len() <= bytes.len() {
        if &bytes[i..i + f.len()] == f {
            let o = out.get_or_insert_with(|| bytes.to_vec());
            o[i..i + f.len()].copy_from_slice(to.as_bytes());
            i += f.len();
        } else {
            i += 1;
        }
    }
    out.map(Bytes::from).unwrap_or_else(|| bytes.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn key_ignores_field_order_and_routing_fields_but_not_content() {
        let a = body(
            json!({"model":"auto","messages":[{"role":"user","content":"hi"}],"temperature":0,"user":"u1"}),
        );
        let b = body(
            json!({"temperature":0,"messages":[{"content":"hi","role":"user"}],"model":"gpt-4o","user":"u2"}),
        );
        let c = body(json!({"temperature":0,"messages":[{"content":"hi!","role":"user"}]}));
        let k = |p, m: &Map<String, Value>| key(p, "openai", "gpt-4o", false, m);
        assert_eq!(k(Some("p1"), &a), k(Some("p1"), &b));
        assert_ne!(k(Some("p1"), &a), k(Some("p1"), &c));
        assert_ne!(k(Some("p1"), &a), k(Some("p2"), &a));
        assert_ne!(k(Some("p1"), &a), k(None, &a));
        assert_ne!(
            key(None, "openai", "gpt-4o", false, &a),
            key(None, "openai", "gpt-4o", true, &a)
        );
        assert_ne!(
            key(None, "openai", "gpt-4o", false, &a),
            key(None, "groq", "gpt-4o", false, &a)
        );
        let d = body(json!({"temperature":0.5,"messages":[{"role":"user","content":"hi"}]}));
        assert_ne!(k(None, &a), k(None, &d));
    }

    #[test]
    fn plan_honours_opt_in_modes_and_bypass_rules() {
        let mut cfg = CacheConfig::default();
        let plain = body(json!({"messages":[{"role":"user","content":"hi"}]}));
        assert_eq!(plan(&cfg, None, None, None, &plain), Plan::Off);
        cfg.routes.insert("r".into(), CacheRule::default());
        assert_eq!(
            plan(&cfg, Some("r"), None, None, &plain),
            Plan::Use {
                mode: Mode::Default,
                ttl_secs: 300
            }
        );
        cfg.keys.insert(
            "k".into(),
            CacheRule {
                enabled: false,
                ..CacheRule::default()
            },
        );
        assert_eq!(plan(&cfg, Some("r"), Some("k"), None, &plain), Plan::Off);
        assert_eq!(
            plan(&cfg, Some("r"), None, Some(Mode::NoStore), &plain),
            Plan::Bypass
        );
        let n2 = body(json!({"n":2,"messages":[]}));
        let tool = body(json!({"messages":[{"role":"tool","content":"42","tool_call_id":"x"}]}));
        let hot = body(json!({"temperature":1.5,"messages":[]}));
        for b in [&n2, &tool, &hot] {
            assert_eq!(plan(&cfg, Some("r"), None, None, b), Plan::Bypass);
            assert!(matches!(
                plan(&cfg, Some("r"), None, Some(Mode::Force), b),
                Plan::Use { .. }
            ));
        }
    }

    #[test]
    fn entries_expire_and_ids_are_rewritten() {
        let c = Cache::new(&CacheConfig::default());
        let e = |secs: u64| Entry {
            body: Body::Json(Bytes::from_static(b"{}")),
            provider: "p".into(),
            model: None,
            usage: Usage::default(),
            cost_usd: 0.0,
            latency_ms: 1.0,
            request_id: "x".into(),
            expires: Instant::now() + Duration::from_secs(secs),
        };
        c.insert([1; 32], e(60));
        c.insert([2; 32], e(0));
        assert!(c.get(&[1; 32]).is_some());
        assert!(c.get(&[2; 32]).is_none());
        let b = Bytes::from_static(b"{\"id\":\"chatcmpl-AAA\",\"x\":\"chatcmpl-AAA\"}");
        assert_eq!(
            &rewrite_id(&b, "chatcmpl-AAA", "chatcmpl-BBB")[..],
            b"{\"id\":\"chatcmpl-BBB\",\"x\":\"chatcmpl-BBB\"}"
        );
        assert_eq!(rewrite_id(&b, "chatcmpl-AAA", "short"), b);
    }

    #[test]
    fn total_bytes_stay_bounded_and_cache_control_maps_to_modes() {
        let cfg = CacheConfig {
            max_bytes: 20_000,
            ..CacheConfig::default()
        };
        let c = Cache::new(&cfg);
        for i in 0..200u8 {
            let stored = c.insert(
                [i; 32],
                Entry {
                    body: Body::Json(Bytes::from(vec![b'x'; 1000])),
                    provider: "p".into(),
                    model: None,
                    usage: Usage::default(),
                    cost_usd: 0.0,
                    latency_ms: 1.0,
                    request_id: "x".into(),
                    expires: Instant::now() + Duration::from_secs(60),
                },
            );
            assert!(stored);
        }
        let (entries, bytes) = c.stats();
        assert!(bytes <= 20_000, "{bytes} bytes");
        assert!((1..=20).contains(&entries), "{entries} entries");
        let whale = Entry {
            body: Body::Json(Bytes::from(vec![b'x'; 30_000])),
            provider: "p".into(),
            model: None,
            usage: Usage::default(),
            cost_usd: 0.0,
            latency_ms: 1.0,
            request_id: "x".into(),
            expires: Instant::now() + Duration::from_secs(60),
        };
        assert!(!c.insert([255; 32], whale));

        assert_eq!(from_cache_control("no-store"), Some(Mode::NoStore));
        assert_eq!(
            from_cache_control("no-cache, no-store"),
            Some(Mode::NoStore)
        );
        assert_eq!(from_cache_control("No-Cache"), Some(Mode::Refresh));
        assert_eq!(from_cache_control("max-age=0"), Some(Mode::Refresh));
        assert_eq!(
            from_cache_control("only-if-cached"),
            Some(Mode::OnlyIfCached)
        );
        assert_eq!(from_cache_control("max-age=60"), None);
    }

    #[test]
    fn backend_settings_are_validated_naming_the_field() {
        let ok = CacheConfig::default();
        assert!(ok.validate().is_ok());
        let redis = |url: Option<&str>| CacheConfig {
            backend: Backend::Redis,
            redis_url: url.map(str::to_string),
            ..CacheConfig::default()
        };
        assert!(redis(None)
            .validate()
            .is_err_and(|e| e.contains("cache.redis_url")));
        assert!(redis(Some("rediss://h:6379"))
            .validate()
            .is_err_and(|e| e.contains("cache.redis_url")));
        let e = redis(Some("redis://:s3cret@[bad")).validate().unwrap_err();
        assert!(
            e.contains("cache.redis_url") && !e.contains("s3cret"),
            "{e}"
        );
        assert!(redis(Some("redis://:pw@127.0.0.1:6379/0"))
            .validate()
            .is_ok());
        assert!(redis(Some("unix:///run/redis.sock")).validate().is_ok());
        let t = CacheConfig {
            redis_timeout_ms: 0,
            ..CacheConfig::default()
        };
        assert!(t
            .validate()
            .is_err_and(|e| e.contains("cache.redis_timeout_ms")));
        let p = CacheConfig {
            redis_key_prefix: "a b".into(),
            ..CacheConfig::default()
        };
        assert!(p
            .validate()
            .is_err_and(|e| e.contains("cache.redis_key_prefix")));
        let parsed: CacheConfig =
            toml::from_str("backend = \"redis\"\nredis_url = \"redis://h\"\nl1 = false\n")
                .expect("parse");
        assert_eq!((parsed.backend, parsed.l1), (Backend::Redis, false));
        assert!(toml::from_str::<CacheConfig>("backend = \"memcached\"\n").is_err());
    }

    #[test]
    fn stream_chunks_above_the_entry_bound_are_dropped() {
        let mut c = CacheCtx::new("miss", Some([0; 32]), 60, 10);
        c.keep_chunk(&Bytes::from_static(b"data: 123\n\n"));
        assert!(c.take_body(true).is_none());
        let mut c = CacheCtx::new("miss", Some([0; 32]), 60, 100);
        c.keep_chunk(&Bytes::from_static(b"a"));
        c.keep_chunk(&Bytes::from_static(b"b"));
        assert!(matches!(c.take_body(true), Some(Body::Stream(v)) if v.len() == 2));
        let mut c = CacheCtx::new("miss", Some([0; 32]), 60, 3);
        c.keep_body(&Bytes::from_static(b"{\"a\":1}"));
        assert!(c.take_body(false).is_none());
    }
}
