//! Logging phase: turn the request context into a trace record and metrics. Runs after
//! the response is written; hands the record to the writer's channel without waiting.

use crate::metrics::metrics;
use crate::trace::TraceRecord;

use super::ctx::RequestCtx;

/// Served by a model without a catalog price: the cost is unknown, not 0.
fn cost_unknown(ctx: &RequestCtx) -> bool {
    if ctx.cost_usd > 0.0
        || ctx.status >= 400
        || ctx.usage.prompt_tokens + ctx.usage.completion_tokens == 0
    {
        return false;
    }
    let (Some(rt), Some(p), Some(m)) = (&ctx.runtime, &ctx.provider, &ctx.served_model) else {
        return false;
    };
    let Some(prov) = rt.provider(p) else {
        return false;
    };
    let attempt = ctx
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
        ctx.properties.push(("cost_unknown".into(), "true".into()));
    }
    super::firewall::trace_property(ctx);
    let u = ctx.usage;
    TraceRecord {
        request_id: ctx.request_id.clone(),
        ts_ms: ctx.ts_ms,
        endpoint: ctx.endpoint.to_string(),
        key_id: ctx.caller.key_id.clone(),
        session_id: ctx.session_id.take(),
        session_name: ctx.session_name.take(),
        session_path: ctx.session_path.take(),
        project_id: ctx.project_id.take(),
        user_id: ctx.user_id.take(),
        properties: std::mem::take(&mut ctx.properties),
        route: ctx.route.take(),
        requested_model: std::mem::take(&mut ctx.requested_model),
        served_model: ctx.served_model.clone(),
        provider: ctx.provider.clone(),
        attempts: std::mem::take(&mut ctx.attempts),
        status: ctx.status,
        stream: ctx.stream,
        cancelled: ctx.cancelled,
        fallback_used: ctx.fallback_used,
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        cached_tokens: u.cached_tokens,
        cache_creation_tokens: u.cache_creation_tokens,
        reasoning_tokens: u.reasoning_tokens,
        usage_reported: u.reported,
        cost_usd: ctx.cost_usd,
        cost_unknown: ctx.cost_unknown,
        latency_ms: ctx.elapsed_ms(),
        ttft_ms: ctx.ttft_ms,
        request_bytes: ctx.request_bytes,
        response_bytes: ctx.response_bytes,
        error: ctx.error.take(),
        decision_id: ctx.decision_id.take(),
        request_body: if ctx.zero_retention {
            None
        } else {
            ctx.request_body.take()
        },
        response_body: if ctx.zero_retention {
            None
        } else {
            ctx.response_body.take()
        },
        zero_retention: ctx.zero_retention,
        shadow: false,
        decision: None,
    }
}

/// Metrics for a finished model call.
pub fn observe(ctx: &RequestCtx) {
    let m = metrics();
    let rt = ctx.runtime.as_deref();
    // A request that failed after trying upstreams is counted against the last one tried.
    let last = ctx.attempts.last();
    let provider = ctx
        .provider
        .as_deref()
        .or(last.map(|a| a.provider.as_str()))
        .unwrap_or("none");
    let model = match ctx
        .served_model
        .as_deref()
        .or(last.map(|a| a.model.as_str()))
    {
        Some(name) => crate::metrics::model_label(rt, name),
        None => "none",
    };
    let status = ctx.status.to_string();
    m.requests
        .with_label_values(&[ctx.endpoint, provider, model, &status])
        .inc();
    m.request_duration
        .with_label_values(&[ctx.endpoint, if ctx.stream { "true" } else { "false" }])
        .observe(ctx.start.elapsed().as_secs_f64());
    let u = &ctx.usage;
    if u.reported {
        for (kind, n) in [
            ("prompt", u.prompt_tokens),
            ("completion", u.completion_tokens),
            ("cached", u.cached_tokens),
            ("cache_creation", u.cache_creation_tokens),
            ("reasoning", u.reasoning_tokens),
        ] {
            if n > 0 {
                m.tokens
                    .with_label_values(&[provider, model, kind])
                    .inc_by(n);
            }
        }
    }
    if ctx.cost_usd > 0.0 {
        m.cost_usd
            .with_label_values(&[provider, model])
            .inc_by(ctx.cost_usd);
    }
    if ctx.cost_unknown {
        m.unpriced.with_label_values(&[provider, model]).inc();
    }
}
