//! The semantic cache on the request path (`crate::cache::semantic` holds the store and the
//! policy): after an exact miss, [`lookup`] embeds the last user message through the
//! gateway's own embeddings path (bounded by `cache.semantic.timeout_ms`) and asks the
//! store; [`offer`] stores a complete answer off the request path, reusing that embedding.
//! An embeddings failure or timeout is a miss, never an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::auth::provider_keys::ProviderKeys;
use crate::cache::semantic::{self, SemanticCache};
use crate::cache::Entry;
use crate::dialect::ChatRequest;
use crate::routing::{Candidate, Runtime};

use super::ctx::RequestCtx;
use super::Gateway;

/// A planned insert: where the answer goes and the embedding it goes under.
pub struct Pending {
    store: Arc<SemanticCache>,
    scope: crate::cache::Key,
    /// The unit embedding computed for the lookup (`None` on `refresh`: embedded when stored).
    vector: Option<Vec<f32>>,
    text: String,
    rt: Arc<Runtime>,
    keys: Option<Arc<ProviderKeys>>,
    request_id: String,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("embedded", &self.vector.is_some())
            .finish_non_exhaustive()
    }
}

/// What the semantic stage did, for the trace and the response.
pub struct Outcome {
    /// The stored answer and its similarity, on a hit.
    pub hit: Option<(Arc<Entry>, f32)>,
    /// Trace properties: `cache_semantic` (hit, miss, skipped, error, timeout) and, when a
    /// neighbour was compared, `cache_similarity`.
    pub props: Vec<(&'static str, String)>,
}

/// The semantic stage after an exact miss. `None`: semantic lookups are off for this request.
/// `refresh`: no lookup, the fresh answer is stored.
pub async fn lookup(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    ctx: &mut RequestCtx,
    key_id: Option<&str>,
    req: &ChatRequest,
    first: &Candidate,
    refresh: bool,
) -> Option<Outcome> {
    let cfg = &rt.config.cache.semantic;
    let threshold = cfg.threshold_for(ctx.trace.route.as_deref(), key_id)?;
    let mut out = Outcome {
        hit: None,
        props: Vec::new(),
    };
    let Some(q) = semantic::query(
        ctx.trace.project_id.as_deref(),
        first.provider.name(),
        &first.model,
        req.stream,
        &req.body,
        &cfg.model,
    ) else {
        count("skipped");
        out.props.push(("cache_semantic", "skipped".into()));
        return Some(out);
    };
    let mut pending = Pending {
        store: Arc::clone(&gw.semantic),
        scope: q.scope,
        vector: None,
        text: q.text,
        rt: Arc::clone(rt),
        keys: ctx.provider_keys.clone(),
        request_id: ctx.trace.request_id.clone(),
    };
    if refresh {
        ctx.semantic = Some(Box::new(pending));
        return Some(out);
    }
    let v = match embed(&pending, cfg.timeout_ms).await {
        Ok(v) => v,
        Err(outcome) => {
            count(outcome);
            let p = if outcome == "embed_timeout" {
                "timeout"
            } else {
                "error"
            };
            out.props.push(("cache_semantic", p.into()));
            return Some(out);
        }
    };
    let found = gw.semantic.lookup(&pending.scope, &v, threshold);
    if let Some(s) = found.similarity {
        out.props.push(("cache_similarity", format!("{s:.4}")));
    }
    if let (Some(e), Some(s)) = (found.entry, found.similarity) {
        count("hit");
        out.props.push(("cache_semantic", "hit".into()));
        out.hit = Some((e, s));
        return Some(out);
    }
    count("miss");
    out.props.push(("cache_semantic", "miss".into()));
    pending.vector = Some(v);
    ctx.semantic = Some(Box::new(pending));
    Some(out)
}

/// The unit embedding of the pending text, bounded by `timeout_ms`. `Err`: the metric outcome.
async fn embed(p: &Pending, timeout_ms: u64) -> Result<Vec<f32>, &'static str> {
    let model = &p.rt.config.cache.semantic.model;
    let cands =
        p.rt.resolve_with_fallbacks(model, None)
            .map_err(|_| "embed_error")?;
    let call = crate::exchange::headless::embed_once(
        &p.rt,
        p.keys.as_deref(),
        &cands,
        &p.text,
        &p.request_id,
    );
    match tokio::time::timeout(Duration::from_millis(timeout_ms), call).await {
        Ok(Ok(v)) => semantic::normalize(v).ok_or("embed_error"),
        Ok(Err(e)) => {
            tracing::debug!(model = %model, error = %e, "semantic cache: embeddings call failed");
            Err("embed_error")
        }
        Err(_) => Err("embed_timeout"),
    }
}

/// Store a complete answer the exact cache just stored (same rules: successful, not a
/// fallback's, within `max_entry_bytes`), off the request path: a spawned task adds it to
/// the index (embedding the text first on `refresh`, bounded like the lookup).
pub fn offer(pending: Option<Box<Pending>>, e: &Entry) {
    let Some(p) = pending else {
        return;
    };
    let entry = Entry {
        body: semantic::share(&e.body),
        provider: e.provider.clone(),
        model: e.model.clone(),
        usage: e.usage,
        cost_usd: e.cost_usd,
        latency_ms: e.latency_ms,
        request_id: e.request_id.clone(),
        expires: e.expires,
    };
    tokio::spawn(async move {
        let mut p = p;
        let v = match p.vector.take() {
            Some(v) => v,
            None => {
                let bound = p.rt.config.cache.semantic.timeout_ms;
                match embed(&p, bound).await {
                    Ok(v) => v,
                    Err(outcome) => {
                        count(outcome);
                        return;
                    }
                }
            }
        };
        if entry.expires <= Instant::now() {
            return;
        }
        let stored = p.store.insert(p.scope, &v, entry);
        count(if stored { "stored" } else { "not_stored" });
    });
}

/// `loopgate_cache_semantic_total{outcome}` (a fixed label set).
fn count(outcome: &'static str) {
    crate::metrics::metrics()
        .cache_semantic
        .with_label_values(&[outcome])
        .inc();
}
