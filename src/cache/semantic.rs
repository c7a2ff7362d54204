//! Semantic cache (layer 4 state, like the exact cache): answers stored by the embedding
//! of the request's last user message, looked up by nearest neighbour above a similarity
//! threshold, within a scope that pins everything else about the request. See the
//! "Semantic cache" section of `docs/cache.md`.
//!
//! This module is pure state and policy: the proxy computes the embedding (through the
//! gateway's own embeddings path), asks [`SemanticCache::lookup`], and offers complete
//! answers back with [`SemanticCache::insert`] off the request path.
//!
//! Memory is bounded three ways: `max_scopes` scopes (least recently used dropped first),
//! `max_entries` vectors per scope (oldest dropped first), and `max_bytes` of stored answers
//! over all scopes (moka, byte-weighted, per-entry TTL).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Body, Entry, Key};

/// `[cache.semantic]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticConfig {
    /// Semantic lookups for every request the exact cache is on for (otherwise only the
    /// routes and keys opted in below).
    pub enabled: bool,
    /// The embeddings model, any the gateway serves (`text-embedding-3-small`,
    /// `ollama/nomic-embed-text`, ...).
    pub model: String,
    /// Default cosine similarity at or above which a stored answer is served, in (0, 1].
    pub threshold: f64,
    /// Bound on the embeddings call on the request path; past it the request is a miss.
    pub timeout_ms: u64,
    /// Vectors kept per scope (the oldest is dropped first).
    pub max_entries: usize,
    /// Scopes kept (project × system prompt, tools and parameters × served model).
    pub max_scopes: u64,
    /// Bytes of stored answers over all scopes.
    pub max_bytes: u64,
    /// Per routing rule opt-in / opt-out and threshold.
    pub routes: BTreeMap<String, SemanticRule>,
    /// Per gateway key (by key id) opt-in / opt-out and threshold.
    pub keys: BTreeMap<String, SemanticRule>,
}

impl Default for SemanticConfig {
    fn default() -> Self {
        SemanticConfig {
            enabled: false,
            model: String::new(),
            threshold: 0.95,
            timeout_ms: 200,
            max_entries: 1000,
            max_scopes: 10_000,
            max_bytes: 64 * 1024 * 1024,
            routes: BTreeMap::new(),
            keys: BTreeMap::new(),
        }
    }
}

/// `[cache.semantic.routes.<name>]` / `[cache.semantic.keys.<id>]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SemanticRule {
    pub enabled: bool,
    pub threshold: Option<f64>,
}

impl Default for SemanticRule {
    fn default() -> Self {
        SemanticRule {
            enabled: true,
            threshold: None,
        }
    }
}

/// Largest `max_entries` (vectors of one scope).
pub const MAX_ENTRIES: usize = 100_000;

impl SemanticConfig {
    /// Whether any route, key or the global switch turns semantic lookups on.
    pub fn used(&self) -> bool {
        self.enabled
            || self.routes.values().any(|r| r.enabled)
            || self.keys.values().any(|r| r.enabled)
    }

    /// Every field in range; a used semantic cache names its model. Errors name the field.
    pub fn validate(&self) -> Result<(), String> {
        let thr = |field: String, t: f64| {
            if t.is_finite() && t > 0.0 && t <= 1.0 {
                Ok(())
            } else {
                Err(format!("{field} must be in (0, 1], got {t}"))
            }
        };
        thr("cache.semantic.threshold".into(), self.threshold)?;
        for (kind, rules) in [("routes", &self.routes), ("keys", &self.keys)] {
            for (name, r) in rules {
                if let Some(t) = r.threshold {
                    thr(format!("cache.semantic.{kind}.{name}.threshold"), t)?;
                }
            }
        }
        if !(1..=10_000).contains(&self.timeout_ms) {
            return Err(format!(
                "cache.semantic.timeout_ms must be in 1..=10000, got {}",
                self.timeout_ms
            ));
        }
        if !(1..=MAX_ENTRIES).contains(&self.max_entries) {
            return Err(format!(
                "cache.semantic.max_entries must be in 1..={MAX_ENTRIES}, got {}",
                self.max_entries
            ));
        }
        if !(1..=1_000_000).contains(&self.max_scopes) {
            return Err(format!(
                "cache.semantic.max_scopes must be in 1..=1000000, got {}",
                self.max_scopes
            ));
        }
        if self.max_bytes == 0 {
            return Err("cache.semantic.max_bytes must be > 0".into());
        }
        if self.used() && self.model.trim().is_empty() {
            return Err(
                "cache.semantic.model must name an embeddings model when the semantic cache is enabled"
                    .into(),
            );
        }
        Ok(())
    }

    /// The similarity threshold for a request on `route` from key `key_id`, or `None` when
    /// semantic lookups are off for it. The most specific rule wins: key, route, global.
    pub fn threshold_for(&self, route: Option<&str>, key_id: Option<&str>) -> Option<f32> {
        let route_rule = route.and_then(|r| self.routes.get(r));
        let key_rule = key_id.and_then(|k| self.keys.get(k));
        let enabled = key_rule
            .map(|r| r.enabled)
            .or(route_rule.map(|r| r.enabled))
            .unwrap_or(self.enabled);
        if !enabled || self.model.is_empty() {
            return None;
        }
        let t = key_rule
            .and_then(|r| r.threshold)
            .or(route_rule.and_then(|r| r.threshold))
            .unwrap_or(self.threshold);
        Some(t as f32)
    }
}

/// Text embedded: the last user message, at most this many bytes of its end.
pub const EMBED_TEXT_BYTES: usize = 8192;

/// What a request is looked up and stored by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Everything but the last user message's text: two requests can only match when this
    /// is equal.
    pub scope: Key,
    /// The last user message's text (its tail, at most [`EMBED_TEXT_BYTES`]).
    pub text: String,
}

/// The query of a chat request served by `provider`/`model` for `project`, embedded with
/// `embed_model`. `None` (no semantic lookup) when there is no user message with text, or
/// the last one carries anything but text (an image, audio, a file).
///
/// The scope is the exact cache's key of the request with the last user message's content
/// blanked, plus the embeddings model: project, served target, stream flag, the system
/// prompt, tools, `response_format`, sampling parameters and every earlier turn.
pub fn query(
    project: Option<&str>,
    provider: &str,
    model: &str,
    stream: bool,
    body: &Map<String, Value>,
    embed_model: &str,
) -> Option<Query> {
    let messages = body.get("messages")?.as_array()?;
    let i = messages
        .iter()
        .rposition(|m| m.get("role").and_then(Value::as_str) == Some("user"))?;
    let mut text = String::new();
    match messages[i].get("content")? {
        Value::String(t) => text.push_str(t),
        Value::Array(parts) => {
            for p in parts {
                if p.get("type").and_then(Value::as_str) != Some("text") {
                    return None;
                }
                text.push_str(p.get("text").and_then(Value::as_str)?);
                text.push('\n');
            }
        }
        _ => return None,
    }
    if text.trim().is_empty() {
        return None;
    }
    if text.len() > EMBED_TEXT_BYTES {
        let mut cut = text.len() - EMBED_TEXT_BYTES;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
    let mut scoped = body.clone();
    if let Some(Value::Array(ms)) = scoped.get_mut("messages") {
        if let Some(Value::Object(m)) = ms.get_mut(i) {
            m.insert("content".into(), Value::String("\u{0}semantic".into()));
            m.remove("name");
        }
    }
    scoped.insert(
        "\u{0}semantic_embeddings_model".into(),
        Value::String(embed_model.to_string()),
    );
    Some(Query {
        scope: super::key(project, provider, model, stream, &scoped),
        text,
    })
}

/// `v` scaled to unit length (`None`: empty, zero or not finite).
pub fn normalize(mut v: Vec<f32>) -> Option<Vec<f32>> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if v.is_empty() || !n.is_finite() || n == 0.0 {
        return None;
    }
    for x in &mut v {
        *x /= n;
    }
    Some(v)
}

/// A stored answer and the scope it belongs to.
struct Stored {
    entry: Arc<Entry>,
    scope: Key,
    weight: u32,
}

struct PerEntryTtl;

impl moka::Expiry<u64, Arc<Stored>> for PerEntryTtl {
    fn expire_after_create(&self, _k: &u64, s: &Arc<Stored>, now: Instant) -> Option<Duration> {
        Some(s.entry.expires.saturating_duration_since(now))
    }
}

/// One scope's index. Its lock is held only for an in-memory index operation (microseconds:
/// a search, an add, a removal), never across I/O or an `await`, and never while calling
/// into the entry store.
struct Scope {
    inner: Mutex<ScopeIndex>,
}

struct ScopeIndex {
    index: usearch::Index,
    dims: usize,
    /// Ids in insertion order (the oldest is dropped first past `max_entries`).
    order: VecDeque<u64>,
}

impl Scope {
    fn lock(&self) -> MutexGuard<'_, ScopeIndex> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Neighbours examined per lookup (the nearest may have expired).
const NEIGHBOURS: usize = 4;

/// The bounded semantic store shared by every request.
pub struct SemanticCache {
    scopes: moka::sync::Cache<Key, Arc<Scope>>,
    entries: moka::sync::Cache<u64, Arc<Stored>>,
    next: AtomicU64,
    max_entries: usize,
    max_bytes: u64,
}

/// What a lookup found.
#[derive(Debug, Clone)]
pub struct Found {
    /// The stored answer, when the nearest live neighbour is at or above the threshold.
    pub entry: Option<Arc<Entry>>,
    /// Cosine similarity of the nearest live neighbour (`None`: the scope is empty).
    pub similarity: Option<f32>,
}

impl SemanticCache {
    /// Sized from `[cache.semantic]` (`max_entries`, `max_scopes`, `max_bytes` are fixed for
    /// the life of the process).
    pub fn new(cfg: &SemanticConfig) -> SemanticCache {
        let scopes: moka::sync::Cache<Key, Arc<Scope>> = moka::sync::Cache::builder()
            .max_capacity(cfg.max_scopes)
            .build();
        // An answer evicted (bytes, TTL) takes its vector out of its scope's index. Never
        // called with a scope lock held: no scope lock is held across an entry-store call.
        let indexes = scopes.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(cfg.max_bytes)
            .weigher(|_k: &u64, s: &Arc<Stored>| s.weight)
            .expire_after(PerEntryTtl)
            .eviction_listener(move |id: Arc<u64>, s: Arc<Stored>, _cause| {
                if let Some(scope) = indexes.get(&s.scope) {
                    let mut g = scope.lock();
                    if g.index.remove(*id).is_ok_and(|n| n > 0) {
                        g.order.retain(|x| *x != *id);
                    }
                }
            })
            .build();
        SemanticCache {
            scopes,
            entries,
            next: AtomicU64::new(1),
            max_entries: cfg.max_entries.clamp(1, MAX_ENTRIES),
            max_bytes: cfg.max_bytes,
        }
    }

    /// The nearest live answer of `scope` to the unit vector `v`, served when its cosine
    /// similarity is at least `threshold`.
    pub fn lookup(&self, scope: &Key, v: &[f32], threshold: f32) -> Found {
        let mut found = Found {
            entry: None,
            similarity: None,
        };
        let Some(s) = self.scopes.get(scope) else {
            return found;
        };
        let matches = {
            let g = s.lock();
            if g.dims != v.len() || g.index.size() == 0 {
                return found;
            }
            match g.index.search(v, NEIGHBOURS) {
                Ok(m) => m,
                Err(_) => return found,
            }
        };
        let mut stale = Vec::new();
        for (id, dist) in matches.keys.iter().zip(&matches.distances) {
            let Some(st) = self.entries.get(id) else {
                stale.push(*id);
                continue;
            };
            if st.entry.expires <= Instant::now() {
                self.entries.invalidate(id);
                stale.push(*id);
                continue;
            }
            let sim = (1.0 - dist).clamp(-1.0, 1.0);
            found.similarity = Some(sim);
            if sim >= threshold {
                found.entry = Some(Arc::clone(&st.entry));
            }
            break;
        }
        if !stale.is_empty() {
            let mut g = s.lock();
            for id in stale {
                let _ = g.index.remove(id);
                g.order.retain(|x| *x != id);
            }
        }
        found
    }

    /// Store `e` under the unit vector `v` in `scope`. `false`: not stored (too large for
    /// the store, a dimension that differs from the scope's, or an index error).
    pub fn insert(&self, scope: Key, v: &[f32], e: Entry) -> bool {
        // The answer plus its vector and graph links in the index.
        let weight =
            weight(&e).saturating_add(u32::try_from(v.len() * 4 + 256).unwrap_or(u32::MAX));
        if u64::from(weight) > self.max_bytes || v.is_empty() {
            return false;
        }
        let created = self.scopes.try_get_with(scope, || {
            new_index(v.len()).map(|index| {
                Arc::new(Scope {
                    inner: Mutex::new(ScopeIndex {
                        index,
                        dims: v.len(),
                        order: VecDeque::new(),
                    }),
                })
            })
        });
        let Ok(s) = created else {
            return false;
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        // The entry first: a lookup that finds the id in the index finds its answer.
        self.entries.insert(
            id,
            Arc::new(Stored {
                entry: Arc::new(e),
                scope,
                weight,
            }),
        );
        let mut dropped = Vec::new();
        let added = {
            let mut g = s.lock();
            let ok = g.dims == v.len() && {
                let need = g.index.size() + 1;
                if need > g.index.capacity() {
                    let cap = (need * 2).max(16).min(self.max_entries + 1).max(need);
                    let _ = g.index.reserve(cap);
                }
                g.index.add(id, v).is_ok()
            };
            if ok {
                g.order.push_back(id);
                while g.order.len() > self.max_entries {
                    if let Some(old) = g.order.pop_front() {
                        let _ = g.index.remove(old);
                        dropped.push(old);
                    }
                }
            }
            ok
        };
        if !added {
            dropped.push(id);
        }
        for old in dropped {
            self.entries.invalidate(&old);
        }
        added
    }

    /// Scopes, stored answers and their weighted bytes (after pending maintenance).
    pub fn stats(&self) -> (u64, u64, u64) {
        self.scopes.run_pending_tasks();
        self.entries.run_pending_tasks();
        (
            self.scopes.entry_count(),
            self.entries.entry_count(),
            self.entries.weighted_size(),
        )
    }

    /// Vectors held by `scope`'s index.
    pub fn scope_len(&self, scope: &Key) -> usize {
        self.scopes.get(scope).map_or(0, |s| s.lock().index.size())
    }
}

/// An empty cosine HNSW index over f32 vectors of `dims` (usearch's default connectivity
/// and expansion factors). Fails only on zero dimensions or allocation failure.
fn new_index(dims: usize) -> Result<usearch::Index, String> {
    let opts = usearch::IndexOptions {
        dimensions: dims,
        metric: usearch::MetricKind::Cos,
        quantization: usearch::ScalarKind::F32,
        connectivity: 0,
        expansion_add: 0,
        expansion_search: 0,
        multi: false,
    };
    usearch::Index::new(&opts).map_err(|e| e.to_string())
}

/// Bytes held by a stored answer (body or chunks plus a fixed overhead).
fn weight(e: &Entry) -> u32 {
    let body = match &e.body {
        Body::Json(b) => b.len(),
        Body::Stream(v) => v.iter().map(|c| c.len() + 16).sum(),
    };
    (body + e.provider.len() + e.request_id.len() + 256).min(u32::MAX as usize) as u32
}

/// A copy of `b` sharing its bytes (the exact and the semantic store hold the same buffers).
pub fn share(b: &Body) -> Body {
    match b {
        Body::Json(j) => Body::Json(j.clone()),
        Body::Stream(cs) => Body::Stream(cs.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialect::Usage;
    use bytes::Bytes;
    use serde_json::json;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn entry(text: &str, secs: u64) -> Entry {
        Entry {
            body: Body::Json(Bytes::from(text.to_string())),
            provider: "p".into(),
            model: None,
            usage: Usage::default(),
            cost_usd: 0.0,
            latency_ms: 1.0,
            request_id: "x".into(),
            expires: Instant::now() + Duration::from_secs(secs),
        }
    }

    fn unit(v: &[f32]) -> Vec<f32> {
        normalize(v.to_vec()).unwrap()
    }

    #[test]
    fn scope_pins_everything_but_the_last_user_text() {
        let q = |p: Option<&str>, b: Value| query(p, "openai", "gpt-4o", false, &body(b), "e");
        let a = q(
            Some("p"),
            json!({"model":"x","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"What is Rust?"}],"temperature":0}),
        )
        .unwrap();
        let b = q(
            Some("p"),
            json!({"temperature":0,"model":"y","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"Tell me about Rust"}]}),
        )
        .unwrap();
        assert_eq!(a.scope, b.scope);
        assert_eq!(a.text, "What is Rust?");
        let other_system = q(
            Some("p"),
            json!({"model":"x","messages":[{"role":"system","content":"be verbose"},{"role":"user","content":"What is Rust?"}],"temperature":0}),
        )
        .unwrap();
        assert_ne!(a.scope, other_system.scope);
        let other_project = q(
            Some("q"),
            json!({"model":"x","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"What is Rust?"}],"temperature":0}),
        )
        .unwrap();
        assert_ne!(a.scope, other_project.scope);
        let tools = q(
            Some("p"),
            json!({"model":"x","tools":[{"type":"function","function":{"name":"f"}}],"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"What is Rust?"}],"temperature":0}),
        )
        .unwrap();
        assert_ne!(a.scope, tools.scope);
        let m = body(json!({"messages":[{"role":"user","content":"hi"}]}));
        assert_ne!(
            query(None, "openai", "gpt-4o", false, &m, "e")
                .unwrap()
                .scope,
            query(None, "openai", "gpt-4o-mini", false, &m, "e")
                .unwrap()
                .scope
        );
        assert_ne!(
            query(None, "openai", "gpt-4o", false, &m, "e")
                .unwrap()
                .scope,
            query(None, "openai", "gpt-4o", false, &m, "f")
                .unwrap()
                .scope
        );
        // An image in the last user message: no semantic lookup.
        assert!(q(
            None,
            json!({"messages":[{"role":"user","content":[{"type":"text","text":"what is this"},{"type":"image_url","image_url":{"url":"data:"}}]}]})
        )
        .is_none());
        assert!(q(None, json!({"messages":[{"role":"system","content":"s"}]})).is_none());
    }

    #[test]
    fn threshold_rules_and_validation_name_the_field() {
        let mut c = SemanticConfig {
            model: "e".into(),
            ..SemanticConfig::default()
        };
        assert_eq!(c.threshold_for(Some("r"), None), None);
        c.routes.insert(
            "r".into(),
            SemanticRule {
                enabled: true,
                threshold: Some(0.9),
            },
        );
        assert_eq!(c.threshold_for(Some("r"), None), Some(0.9));
        c.keys.insert(
            "k".into(),
            SemanticRule {
                enabled: false,
                threshold: None,
            },
        );
        assert_eq!(c.threshold_for(Some("r"), Some("k")), None);
        assert!(c.validate().is_ok());
        c.routes.get_mut("r").unwrap().threshold = Some(0.0);
        assert!(c
            .validate()
            .unwrap_err()
            .contains("cache.semantic.routes.r.threshold"));
        c.routes.get_mut("r").unwrap().threshold = Some(1.0);
        c.threshold = 1.5;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("cache.semantic.threshold"));
        c.threshold = 0.9;
        c.model.clear();
        assert!(c.validate().unwrap_err().contains("cache.semantic.model"));
    }

    #[test]
    fn nearest_above_threshold_is_served_and_scopes_stay_bounded() {
        let cfg = SemanticConfig {
            max_entries: 3,
            ..SemanticConfig::default()
        };
        let c = SemanticCache::new(&cfg);
        let s = [7u8; 32];
        assert!(c.insert(s, &unit(&[1.0, 0.0, 0.0]), entry("a", 60)));
        let f = c.lookup(&s, &unit(&[0.99, 0.1, 0.0]), 0.95);
        assert!(f.entry.is_some());
        assert!(f.similarity.unwrap() > 0.99);
        let f = c.lookup(&s, &unit(&[0.0, 1.0, 0.0]), 0.95);
        assert!(f.entry.is_none());
        assert!(c
            .lookup(&[8u8; 32], &unit(&[1.0, 0.0, 0.0]), 0.5)
            .entry
            .is_none());
        // A different dimension never matches.
        assert!(c.lookup(&s, &unit(&[1.0, 0.0]), 0.1).entry.is_none());
        // Past max_entries the oldest goes.
        for i in 0..5 {
            let v = unit(&[0.0, 1.0, i as f32]);
            assert!(c.insert(s, &v, entry("b", 60)));
        }
        assert_eq!(c.scope_len(&s), 3);
        assert!(c.lookup(&s, &unit(&[1.0, 0.0, 0.0]), 0.95).entry.is_none());
        // Expired entries are a miss.
        let t = [9u8; 32];
        assert!(c.insert(t, &unit(&[1.0, 1.0]), entry("c", 0)));
        assert!(c.lookup(&t, &unit(&[1.0, 1.0]), 0.5).entry.is_none());
        assert_eq!(c.scope_len(&t), 0);
    }

    #[test]
    fn scopes_and_bytes_are_bounded() {
        let cfg = SemanticConfig {
            max_scopes: 4,
            max_bytes: 10_000,
            ..SemanticConfig::default()
        };
        let c = SemanticCache::new(&cfg);
        for i in 0..50u8 {
            c.insert(
                [i; 32],
                &unit(&[1.0, i as f32]),
                entry(&"x".repeat(900), 60),
            );
        }
        let (scopes, _, bytes) = c.stats();
        assert!(scopes <= 4, "{scopes} scopes");
        assert!(bytes <= 10_000, "{bytes} bytes");
        // Answers evicted for bytes take their vectors out of the index.
        let one = SemanticCache::new(&cfg);
        for i in 0..50u8 {
            one.insert(
                [0; 32],
                &unit(&[1.0, i as f32]),
                entry(&"x".repeat(900), 60),
            );
        }
        let (_, entries, bytes) = one.stats();
        assert!(bytes <= 10_000, "{bytes} bytes");
        assert!(one.scope_len(&[0; 32]) as u64 <= entries + 1, "{entries}");
        assert!(!c.insert([1; 32], &unit(&[1.0]), entry(&"x".repeat(20_000), 60)));
    }

    /// `cargo test --lib cache::semantic -- --ignored --nocapture`: insert and lookup cost
    /// of one full scope (1000 vectors of 1536 dimensions, text-embedding-3-small's size).
    #[test]
    #[ignore = "timing, run by hand"]
    fn timing_of_a_full_scope() {
        let c = SemanticCache::new(&SemanticConfig::default());
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let vs: Vec<Vec<f32>> = (0..1000)
            .map(|_| unit(&(0..1536).map(|_| next()).collect::<Vec<_>>()))
            .collect();
        let t = Instant::now();
        for v in &vs {
            assert!(c.insert([1; 32], v, entry("x", 600)));
        }
        let insert = t.elapsed() / 1000;
        let t = Instant::now();
        for v in &vs {
            assert!(c.lookup(&[1; 32], v, 0.99).entry.is_some());
        }
        let lookup = t.elapsed() / 1000;
        println!("1000 x 1536-d: insert {insert:?} each, lookup {lookup:?} each (hits: all)");
    }
}
