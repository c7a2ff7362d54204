//! Logging phase: turn the request context into a trace record and metrics. Runs after
//! the response is written; hands the record to the writer's channel without waiting.

use crate::metrics::metrics;
use crate::trace::TraceRecord;

use super::ctx::RequestCtx;

/// Served by a model without a catalog price: the cost is unknown, not 0.
fn cost_unknown(ctx: &RequestCtx) -> bool {
    if ctx.trace.cost_usd > 0.0
        || ctx.trace.status >= 400
        || ctx.usage.prompt_tokens + ctx.usage.completion_tokens == 0
    {
        return false;
    }
    let (Some(rt), Some(p), Some(m)) = (&ctx.runtime, &ctx.trace.provider, &ctx.trace.served_model)
    else {
        return false;
    };
    let Some(prov) = rt.provider(p) else {
        return false;
    };
    let attempt = ctx
        .trace
        .attempts
        .iter()
        .rev()
        .find(|a| a.outcome == "ok")
        .map(|a| a.model.as_str());
    let priced = |name: &str| {
        rt.catalog
            .get(&prov.profile.catalog_providers, name)
            .is_some_and(|i| i.has_prices())
    };
    !(priced(m) || attempt.is_some_and(priced))
}

pub fn trace_record(ctx: &mut RequestCtx) -> TraceRecord {
    if cost_unknown(ctx) {
        ctx.trace
            .properties
            .push(("cost_unknown".into(), "true".into()));
    }
    super::firewall::trace_property(ctx);
    // What only the end of the request knows; the rest was filled in as it went.
    let u = ctx.usage;
    let latency_ms = ctx.elapsed_ms();
    let t = &mut ctx.trace;
    t.endpoint = ctx.endpoint.to_string();
    t.key_id = ctx.caller.key_id.clone();
    t.prompt_tokens = u.prompt_tokens;
    t.completion_tokens = u.completion_tokens;
    t.cached_tokens = u.cached_tokens;
    t.cache_creation_tokens = u.cache_creation_tokens;
    t.reasoning_tokens = u.reasoning_tokens;
    t.usage_reported = u.reported;
    t.latency_ms = latency_ms;
    if t.zero_retention {
        t.request_body = None;
        t.response_body = None;
    }
    // The last use of the request context: the record moves out whole (no copies).
    std::mem::take(t)
}

/// The labelled series of the last request a worker thread finished. Consecutive requests
/// mostly share endpoint, provider, model and status, and a labelled lookup costs a hash of
/// every label and a lock; a series is resolved only when the old code would have touched it
/// (resolving creates it, and a zero series must not appear in the scrape).
struct Series {
    endpoint: &'static str,
    provider: String,
    model: String,
    status: u16,
    stream: bool,
    requests: prometheus::IntCounter,
    duration: prometheus::Histogram,
    tokens: [Option<prometheus::IntCounter>; 5],
    cost: Option<prometheus::Counter>,
    unpriced: Option<prometheus::IntCounter>,
}

impl Series {
    /// Resolve the two series every request touches (creating them if new); the token,
    /// cost and unpriced series are resolved on first use.
    fn new(endpoint: &'static str, provider: &str, model: &str, status: u16, stream: bool) -> Self {
        let m = metrics();
        Series {
            endpoint,
            provider: provider.to_string(),
            model: model.to_string(),
            status,
            stream,
            requests: m.requests.with_label_values(&[
                endpoint,
                provider,
                model,
                &status.to_string(),
            ]),
            duration: m
                .request_duration
                .with_label_values(&[endpoint, if stream { "true" } else { "false" }]),
            tokens: Default::default(),
            cost: None,
            unpriced: None,
        }
    }

    fn matches(
        &self,
        endpoint: &str,
        provider: &str,
        model: &str,
        status: u16,
        stream: bool,
    ) -> bool {
        self.status == status
            && self.stream == stream
            && self.endpoint == endpoint
            && self.provider == provider
            && self.model == model
    }
}

thread_local! {
    static LAST: std::cell::RefCell<Option<Series>> = const { std::cell::RefCell::new(None) };
}

const TOKEN_KINDS: [&str; 5] = [
    "prompt",
    "completion",
    "cached",
    "cache_creation",
    "reasoning",
];

/// Metrics for a finished model call.
pub fn observe(ctx: &RequestCtx) {
    let rt = ctx.runtime.as_deref();
    // A request that failed after trying upstreams is counted against the last one tried.
    let last = ctx.trace.attempts.last();
    let provider = ctx
        .trace
        .provider
        .as_deref()
        .or(last.map(|a| a.provider.as_str()))
        .unwrap_or("none");
    let model = match ctx
        .trace
        .served_model
        .as_deref()
        .or(last.map(|a| a.model.as_str()))
    {
        Some(name) => crate::metrics::model_label(rt, name),
        None => "none",
    };
    let (status, stream) = (ctx.trace.status, ctx.trace.stream);
    let done = LAST.with(|cell| {
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return false;
        };
        if !slot
            .as_ref()
            .is_some_and(|s| s.matches(ctx.endpoint, provider, model, status, stream))
        {
            *slot = Some(Series::new(ctx.endpoint, provider, model, status, stream));
        }
        if let Some(s) = slot.as_mut() {
            record(ctx, s, provider, model);
        }
        true
    });
    if !done {
        // The thread's cache is busy: a series for this request alone (a lookup per label).
        let mut once = Series::new(ctx.endpoint, provider, model, status, stream);
        record(ctx, &mut once, provider, model);
    }
}

fn record(ctx: &RequestCtx, s: &mut Series, provider: &str, model: &str) {
    let m = metrics();
    s.requests.inc();
    s.duration.observe(ctx.start.elapsed().as_secs_f64());
    let u = &ctx.usage;
    if u.reported {
        let counts = [
            u.prompt_tokens,
            u.completion_tokens,
            u.cached_tokens,
            u.cache_creation_tokens,
            u.reasoning_tokens,
        ];
        for ((kind, n), slot) in TOKEN_KINDS.iter().zip(counts).zip(s.tokens.iter_mut()) {
            if n > 0 {
                slot.get_or_insert_with(|| m.tokens.with_label_values(&[provider, model, kind]))
                    .inc_by(n);
            }
        }
    }
    if ctx.trace.cost_usd > 0.0 {
        s.cost
            .get_or_insert_with(|| m.cost_usd.with_label_values(&[provider, model]))
            .inc_by(ctx.trace.cost_usd);
    }
    if ctx.trace.cost_unknown {
        s.unpriced
            .get_or_insert_with(|| m.unpriced.with_label_values(&[provider, model]))
            .inc();
    }
}
