//! The exact cache on the request path (`crate::cache` holds the store and the policy):
//! [`before`] plans, looks up and serves hits; [`after`] stores a complete answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use pingora_proxy::Session;

use crate::cache::{self, Body, CacheCtx, Entry, Mode, Plan};
use crate::dialect::ChatRequest;
use crate::error::GatewayError;
use crate::routing::{Candidate, Runtime};

use super::ctx::RequestCtx;
use super::respond::response_header;
use super::{request, Gateway};

/// Before the exchange. `Ok(true)`: the request was answered from the cache.
pub async fn before(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    key_id: Option<&str>,
    req: &ChatRequest,
    candidates: &[Candidate],
) -> Result<bool, GatewayError> {
    let header = match request::header(session, &rt.headers.cache) {
        None | Some("") => {
            request::header(session, "cache-control").and_then(cache::from_cache_control)
        }
        Some(v) => Some(Mode::parse(v).ok_or_else(|| {
            GatewayError::invalid(
                format!(
                    "'{}' must be one of no-store, refresh, only-if-cached, force, default",
                    rt.headers.cache
                ),
                None,
            )
        })?),
    };
    let limit = rt.config.cache.max_entry_bytes;
    let (mode, ttl_secs) = match cache::plan(
        &rt.config.cache,
        ctx.trace.route.as_deref(),
        key_id,
        header,
        &req.body,
    ) {
        Plan::Off => return Ok(false),
        Plan::Bypass => {
            ctx.cache = Some(Box::new(CacheCtx::new("bypass", None, 0, 0)));
            count("bypass");
            mark(ctx, "bypass", &[]);
            return Ok(false);
        }
        Plan::Use { mode, ttl_secs } => (mode, ttl_secs),
    };
    let Some(first) = candidates.first() else {
        return Ok(false);
    };
    let k = cache::key(
        ctx.trace.project_id.as_deref(),
        first.provider.name(),
        &first.model,
        req.stream,
        &req.body,
    );
    let hit = if mode == Mode::Refresh {
        None
    } else {
        // Bounded by `cache.redis_timeout_ms` with the Redis backend; a fault is a miss.
        gw.cache.lookup(&k).await
    };
    // Exact first, then semantic (`proxy::semantic`; off unless configured).
    let (hit, sem) = match hit {
        Some(e) => (Some((e, None)), Vec::new()),
        None => {
            let refresh = mode == Mode::Refresh;
            match super::semantic::lookup(gw, rt, ctx, key_id, req, first, refresh).await {
                Some(o) => (o.hit.map(|(e, s)| (e, Some(s))), o.props),
                None => (None, Vec::new()),
            }
        }
    };
    let Some((entry, similarity)) = hit else {
        if mode == Mode::OnlyIfCached {
            ctx.cache = Some(Box::new(CacheCtx::new("miss", None, 0, 0)));
            count("miss");
            mark(ctx, "miss", &sem);
            return Err(GatewayError::Upstream {
                status: 504,
                message: "No cached answer for this request (only-if-cached).".into(),
                retry_after: None,
                code: "cache_miss",
            });
        }
        let mut c = CacheCtx::new("miss", Some(k), ttl_secs, limit);
        c.store = Some(Arc::clone(&gw.cache));
        ctx.cache = Some(Box::new(c));
        count("miss");
        mark(ctx, "miss", &sem);
        return Ok(false);
    };
    ctx.cache = Some(Box::new(CacheCtx::new("hit", None, 0, 0)));
    count("hit");
    crate::metrics::metrics()
        .cache_saved_usd
        .inc_by(entry.cost_usd.max(0.0));
    serve_hit(rt, session, ctx, &entry, similarity, sem).await;
    Ok(true)
}

/// `similarity`: a semantic hit (`<prefix>-cache-match` header, `sem` trace properties).
async fn serve_hit(
    rt: &Runtime,
    session: &mut Session,
    ctx: &mut RequestCtx,
    e: &Entry,
    similarity: Option<f32>,
    sem: Vec<(&'static str, String)>,
) {
    let extra: Vec<(String, String)> = similarity
        .map(|s| {
            (
                format!("{}-cache-match", rt.headers.prefix),
                format!("semantic; similarity={s:.4}"),
            )
        })
        .into_iter()
        .collect();
    ctx.trace.provider = Some(e.provider.clone());
    ctx.trace.served_model = e.model.clone();
    ctx.usage = e.usage;
    ctx.trace.cost_usd = 0.0;
    let id = ctx.trace.request_id.clone();
    match &e.body {
        Body::Json(b) => {
            let body = cache::rewrite_id(b, &e.request_id, &id);
            super::ingress::write_whole(session, ctx, body, &extra).await;
        }
        Body::Stream(chunks) => {
            let Some(h) = response_header(
                200,
                "text/event-stream",
                None,
                ctx,
                Some(&rt.headers),
                &extra,
            ) else {
                return;
            };
            ctx.trace.status = 200;
            if session.write_response_header(h, false).await.is_err() {
                ctx.trace.cancelled = true;
                return;
            }
            let last = chunks.len().saturating_sub(1);
            // Stored in the internal (OpenAI) shape: re-encoded for an ingress client.
            let mut reenc = super::ingress::encoder(ctx);
            for (i, c) in chunks.iter().enumerate() {
                let c = cache::rewrite_id(c, &e.request_id, &id);
                let c = super::ingress::reencode(&mut reenc, c, i == last);
                ctx.trace.response_bytes += c.len() as u64;
                if ctx.trace.ttft_ms.is_none() {
                    ctx.trace.ttft_ms = Some(ctx.elapsed_ms());
                }
                let body = (!c.is_empty()).then_some(c);
                if (body.is_some() || i == last)
                    && session.write_response_body(body, i == last).await.is_err()
                {
                    ctx.trace.cancelled = true;
                    return;
                }
            }
        }
    }
    let saved_ms = (e.latency_ms - ctx.elapsed_ms()).max(0.0);
    let mut saved = vec![
        ("cache_saved_usd", format!("{:.9}", e.cost_usd)),
        ("cache_saved_ms", format!("{saved_ms:.3}")),
    ];
    saved.extend(sem);
    mark(ctx, "hit", &saved);
}

/// The trace properties `cache` = outcome (and, on a hit, what it saved). Set by the
/// gateway only: a client's `<prefix>-property-cache*` header of the same name is replaced.
fn mark(ctx: &mut RequestCtx, outcome: &str, extra: &[(&str, String)]) {
    ctx.trace.properties.retain(|(k, _)| {
        !matches!(
            k.as_str(),
            "cache" | "cache_saved_usd" | "cache_saved_ms" | "cache_semantic" | "cache_similarity"
        )
    });
    ctx.trace.properties.push(("cache".into(), outcome.into()));
    for (k, v) in extra {
        ctx.trace.properties.push(((*k).into(), v.clone()));
    }
    ctx.trace.properties.sort();
}

/// Store the complete, successful answer of a planned miss. Called by the exchange with
/// the whole answer in hand and *before* its last byte goes downstream, so the client's
/// next identical request already finds it. `ctx` carries the served provider, model,
/// usage and cost of the answer.
pub fn commit(ctx: &mut RequestCtx) {
    let Some(c) = ctx.cache.as_mut() else {
        return;
    };
    let (Some(k), Some(store)) = (c.key.take(), c.store.take()) else {
        return;
    };
    // Only an answer of the target the key names (not a fallback's) is stored.
    let ok = ctx.trace.error.is_none() && !ctx.trace.cancelled && !ctx.trace.fallback_used;
    let Some(provider) = ctx.trace.provider.clone().filter(|_| ok) else {
        return;
    };
    let ttl = c.ttl_secs;
    let Some(body) = c.take_body(ctx.trace.stream) else {
        // Above `max_entry_bytes` (the only way a complete answer has nothing kept).
        count("too_large");
        return;
    };
    let entry = Entry {
        body,
        provider,
        model: ctx.trace.served_model.clone(),
        usage: ctx.usage,
        cost_usd: ctx.trace.cost_usd,
        latency_ms: ctx.elapsed_ms(),
        request_id: ctx.trace.request_id.clone(),
        expires: Instant::now() + Duration::from_secs(ttl),
    };
    super::semantic::offer(ctx.semantic.take(), &entry);
    let stored = store.offer(k, entry);
    count(if stored { "stored" } else { "too_large" });
    crate::metrics::metrics()
        .cache_bytes
        .set(i64::try_from(store.bytes()).unwrap_or(i64::MAX));
}

/// `loopgate_cache_requests_total{outcome}` (a fixed label set).
fn count(outcome: &'static str) {
    crate::metrics::metrics()
        .cache_requests
        .with_label_values(&[outcome])
        .inc();
}
