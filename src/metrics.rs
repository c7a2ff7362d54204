//! Prometheus metrics. One process-wide set, registered in the default registry and
//! served by the metrics listener in Prometheus text format.
//!
//! Labels never carry secrets or unbounded client input: provider names come from the
//! profiles, and model names pass through [`model_label`], which keeps only models the
//! config or the catalog names (anything else is `other`), so a client sending random
//! `provider/<name>` models cannot grow the series count.

use std::sync::LazyLock;

use prometheus::{
    register_counter_vec, register_gauge, register_histogram_vec, register_int_counter_vec,
    register_int_gauge, register_int_gauge_vec, CounterVec, Gauge, HistogramVec, IntCounterVec,
    IntGauge, IntGaugeVec,
};

pub struct Metrics {
    /// Requests finished, by endpoint, provider, model and status.
    pub requests: IntCounterVec,
    /// Whole request duration as the client sees it.
    pub request_duration: HistogramVec,
    /// Upstream latency per attempt (header received for non-stream, last byte for stream).
    pub upstream_latency: HistogramVec,
    /// Time to first token for streams.
    pub ttft: HistogramVec,
    pub tokens: IntCounterVec,
    pub cost_usd: CounterVec,
    /// Upstream attempts by outcome (ok, connect_error, timeout, http_error, ...).
    pub attempts: IntCounterVec,
    /// A request was served by a later candidate than its first.
    pub fallbacks: IntCounterVec,
    pub active_streams: IntGauge,
    pub trace_enqueued: IntCounterVec,
    /// Traces that could not be stored (channel full, spill failed), by reason.
    pub trace_dropped: IntCounterVec,
    pub trace_written: IntCounterVec,
    pub trace_spilled: IntCounterVec,
    pub trace_queue_depth: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_version: IntGauge,
    /// Settings changed by the last reload that apply only after a restart.
    pub config_restart_pending: IntGauge,
    /// Process start time; scrape freshness.
    pub start_time: Gauge,
    /// Routing decisions of feedback routes, by route, kind and mode.
    pub routing_decisions: IntCounterVec,
    /// Routed requests whose chosen candidate failed and were served by the baseline.
    pub routing_misses: IntCounterVec,
    /// Feedback accepted through the API, by signal and result (accepted, duplicate, rejected).
    pub feedback_received: IntCounterVec,
    /// Feedback events folded into posteriors by this instance's aggregator.
    pub feedback_folded: IntCounterVec,
    /// Version of the published router table.
    pub router_table_version: IntGauge,
    /// Seconds between publishing router tables' newest folded feedback and now.
    pub router_table_age: Gauge,
    /// Audit-log entries appended, by action.
    pub audit_entries: IntCounterVec,
    /// Automatic regression rollbacks (route auto-pinned to its baseline).
    pub rollbacks: IntCounterVec,
    /// Shadow calls of would-have models, by route and result (ok, error, budget, skipped).
    pub shadow_calls: IntCounterVec,
    /// USD spent on shadow calls, by route.
    pub shadow_spend_usd: CounterVec,
    /// Shadow calls dropped because the queue was full, by route.
    pub shadow_dropped: IntCounterVec,
    /// Judge calls by result (ok, error, retry, dropped, budget).
    pub judge_calls: IntCounterVec,
    /// USD spent on judge calls.
    pub judge_spend_usd: prometheus::Counter,
    /// Successful model calls whose cost is unknown (no catalog price), by provider and model.
    pub unpriced: IntCounterVec,
    /// Exact cache, by outcome (hit, miss, bypass, stored, too_large).
    pub cache_requests: IntCounterVec,
    pub cache_saved_usd: prometheus::Counter,
    pub cache_bytes: IntGauge,
    /// Exact cache's shared backend (Redis) faults, by operation (get, set, delete, decode,
    /// write_dropped).
    pub cache_backend_errors: IntCounterVec,
    /// Semantic cache, by outcome (hit, miss, skipped, embed_error, embed_timeout, stored,
    /// not_stored).
    pub cache_semantic: IntCounterVec,
    /// Requests whose limits the shared backend (Redis) could not check in time, by what
    /// the failure mode did (`admitted`, `refused`).
    pub limits_backend_errors: IntCounterVec,
    /// Virtual keys' budgets passing their soft threshold (once per key, period and
    /// gateway), by period.
    pub budget_soft_threshold: IntCounterVec,
    /// Provider keys added at runtime and usable on this gateway, by provider.
    pub provider_keys: IntGaugeVec,
    /// Provider keys cooling down on this gateway after a 401/403/429, by provider.
    pub provider_keys_cooling: IntGaugeVec,
    /// Cooldowns started, by provider and reason (`unauthorized`, `rate_limited`).
    pub provider_key_cooldowns: IntCounterVec,
    /// OTLP spans not exported, by reason (`queue_full`, `export_failed`, `closed`).
    pub otlp_dropped: IntCounterVec,
    /// OTLP spans the collector accepted.
    pub otlp_exported: prometheus::IntCounter,
    /// OTLP export calls that failed (collector down, refused, timed out).
    pub otlp_export_failures: prometheus::IntCounter,
    /// Spans waiting in the OTLP queue (as of the exporter's last batch).
    pub otlp_queue_depth: IntGauge,
}

/// What bounds the `model` label set: the models the config or the catalog knows
/// (implemented by the routing `Runtime`; a trait so metrics stays below routing).
pub trait KnownModels {
    fn is_known_model(&self, model: &str) -> bool;
}

/// The `model` label for a model name: the name itself when the config or the catalog
/// knows it (a bounded set), `other` for anything else.
pub fn model_label<'a, K: KnownModels + ?Sized>(rt: Option<&K>, model: &'a str) -> &'a str {
    match rt {
        Some(rt) if rt.is_known_model(model) => model,
        _ => "other",
    }
}

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let m = Metrics {
        requests: register_int_counter_vec!(
            "loopgate_requests_total",
            "Requests finished, by endpoint, provider, model and HTTP status",
            &["endpoint", "provider", "model", "status"]
        )?,
        request_duration: register_histogram_vec!(
            "loopgate_request_duration_seconds",
            "Request duration as seen by the client",
            &["endpoint", "stream"],
            LATENCY_BUCKETS.to_vec()
        )?,
        upstream_latency: register_histogram_vec!(
            "loopgate_upstream_latency_seconds",
            "Upstream latency per attempt",
            &["provider", "model"],
            LATENCY_BUCKETS.to_vec()
        )?,
        ttft: register_histogram_vec!(
            "loopgate_ttft_seconds",
            "Time to first token of streamed responses",
            &["provider", "model"],
            LATENCY_BUCKETS.to_vec()
        )?,
        tokens: register_int_counter_vec!(
            "loopgate_tokens_total",
            "Tokens by provider, model and kind (prompt, completion, cached, cache_creation, reasoning)",
            &["provider", "model", "kind"]
        )?,
        cost_usd: register_counter_vec!(
            "loopgate_cost_usd_total",
            "Cost in USD computed from the model catalog",
            &["provider", "model"]
        )?,
        attempts: register_int_counter_vec!(
            "loopgate_upstream_attempts_total",
            "Upstream attempts by provider and outcome",
            &["provider", "outcome"]
        )?,
        fallbacks: register_int_counter_vec!(
            "loopgate_fallbacks_total",
            "Requests served by a fallback candidate, by the provider that failed first and the one that served",
            &["from_provider", "to_provider"]
        )?,
        active_streams: register_int_gauge!("loopgate_active_streams", "Streams currently open to clients")?,
        trace_enqueued: register_int_counter_vec!(
            "loopgate_trace_enqueued_total",
            "Trace records handed to the writer",
            &["kind"]
        )?,
        trace_dropped: register_int_counter_vec!(
            "loopgate_trace_dropped_total",
            "Trace records lost, by reason",
            &["reason"]
        )?,
        trace_written: register_int_counter_vec!(
            "loopgate_trace_written_total",
            "Trace records stored, by backend",
            &["backend"]
        )?,
        trace_spilled: register_int_counter_vec!(
            "loopgate_trace_spilled_total",
            "Trace records spilled to the local file while the store was unavailable (and replayed)",
            &["event"]
        )?,
        trace_queue_depth: register_int_gauge!(
            "loopgate_trace_queue_depth",
            "Trace records waiting in the writer's channel and buffer"
        )?,
        config_reloads: register_int_counter_vec!(
            "loopgate_config_reloads_total",
            "Configuration reloads by result (ok, failed)",
            &["result"]
        )?,
        config_version: register_int_gauge!(
            "loopgate_config_version",
            "Version number of the configuration currently serving"
        )?,
        config_restart_pending: register_int_gauge!(
            "loopgate_config_restart_pending",
            "Settings changed by the last reload that apply only after a restart (0: none)"
        )?,
        start_time: register_gauge!("loopgate_start_time_seconds", "Unix time the process started")?,
        routing_decisions: register_int_counter_vec!(
            "loopgate_routing_decisions_total",
            "Routing decisions of feedback routes, by route, kind (off, pinned, baseline, promoted, explored, sticky) and mode",
            &["route", "kind", "mode"]
        )?,
        routing_misses: register_int_counter_vec!(
            "loopgate_routing_misses_total",
            "Routed requests served by the baseline because the chosen candidate failed",
            &["route"]
        )?,
        feedback_received: register_int_counter_vec!(
            "loopgate_feedback_received_total",
            "Feedback events received through the API, by signal and result",
            &["signal", "result"]
        )?,
        feedback_folded: register_int_counter_vec!(
            "loopgate_feedback_folded_total",
            "Feedback events folded into posteriors by this instance, by result (applied, duplicate, rejected)",
            &["result"]
        )?,
        router_table_version: register_int_gauge!(
            "loopgate_router_table_version",
            "Version of the published feedback-routing table"
        )?,
        router_table_age: register_gauge!(
            "loopgate_router_table_built_seconds",
            "Unix time the current feedback-routing table was built"
        )?,
        rollbacks: register_int_counter_vec!(
            "loopgate_rollbacks_total",
            "Automatic regression rollbacks: live routes auto-pinned to their baseline",
            &["route"]
        )?,
        audit_entries: register_int_counter_vec!(
            "loopgate_audit_entries_total",
            "Audit-log entries appended by this instance, by action",
            &["action"]
        )?,
        shadow_calls: register_int_counter_vec!(
            "loopgate_shadow_calls_total",
            "Background shadow calls of would-have models, by route and result",
            &["route", "result"]
        )?,
        shadow_spend_usd: register_counter_vec!(
            "loopgate_shadow_spend_usd_total",
            "USD spent on shadow calls (catalog prices), by route",
            &["route"]
        )?,
        shadow_dropped: register_int_counter_vec!(
            "loopgate_shadow_dropped_total",
            "Shadow calls dropped because the shadow queue was full, by route",
            &["route"]
        )?,
        judge_calls: register_int_counter_vec!(
            "loopgate_judge_calls_total",
            "LLM-as-judge jobs and calls by result (ok, error, retry, dropped, budget)",
            &["result"]
        )?,
        judge_spend_usd: prometheus::register_counter!(
            "loopgate_judge_spend_usd_total",
            "USD spent on judge calls (catalog prices)"
        )?,
        unpriced: register_int_counter_vec!(
            "loopgate_unpriced_requests_total",
            "Successful model calls with no catalog price (traced with cost_unknown), by provider and model",
            &["provider", "model"]
        )?,
        cache_requests: register_int_counter_vec!(
            "loopgate_cache_requests_total",
            "Exact response cache: requests by outcome (hit, miss, bypass) and answers offered to it (stored, too_large)",
            &["outcome"]
        )?,
        cache_saved_usd: prometheus::register_counter!(
            "loopgate_cache_saved_usd_total",
            "USD the original answers of cache hits cost (catalog prices)"
        )?,
        cache_bytes: register_int_gauge!(
            "loopgate_cache_bytes",
            "Weighted bytes held by the in-memory exact cache (as of the last store)"
        )?,
        cache_backend_errors: register_int_counter_vec!(
            "loopgate_cache_backend_errors_total",
            "Exact cache's Redis backend: faults by operation (get, set, delete: timeout or error, a miss; decode: a bad entry, deleted; write_dropped: too many writes in flight)",
            &["op"]
        )?,
        cache_semantic: register_int_counter_vec!(
            "loopgate_cache_semantic_total",
            "Semantic cache: lookups by outcome (hit, miss, skipped, embed_error, embed_timeout) and answers offered to it (stored, not_stored)",
            &["outcome"]
        )?,
        limits_backend_errors: register_int_counter_vec!(
            "loopgate_limits_backend_errors_total",
            "Requests whose rate limits and budgets the shared backend could not check in time, by outcome of the failure mode",
            &["outcome"]
        )?,
        budget_soft_threshold: register_int_counter_vec!(
            "loopgate_budget_soft_threshold_total",
            "Virtual key budgets that passed their soft threshold, by period",
            &["period"]
        )?,
        provider_keys: register_int_gauge_vec!(
            "loopgate_provider_keys",
            "Provider API keys added at runtime that this gateway can use, by provider",
            &["provider"]
        )?,
        provider_keys_cooling: register_int_gauge_vec!(
            "loopgate_provider_keys_cooling_down",
            "Provider API keys left out after the provider rejected them (401/403/429), by provider",
            &["provider"]
        )?,
        provider_key_cooldowns: register_int_counter_vec!(
            "loopgate_provider_key_cooldowns_total",
            "Cooldowns of provider API keys started on this gateway, by provider and reason",
            &["provider", "reason"]
        )?,
        otlp_dropped: register_int_counter_vec!(
            "loopgate_otlp_spans_dropped_total",
            "OpenTelemetry spans not exported, by reason (queue_full, export_failed, closed)",
            &["reason"]
        )?,
        otlp_exported: prometheus::register_int_counter!(
            "loopgate_otlp_spans_exported_total",
            "OpenTelemetry spans accepted by the OTLP collector"
        )?,
        otlp_export_failures: prometheus::register_int_counter!(
            "loopgate_otlp_export_failures_total",
            "OTLP export calls that failed (collector down, refused or timed out)"
        )?,
        otlp_queue_depth: register_int_gauge!(
            "loopgate_otlp_queue_depth",
            "OpenTelemetry spans waiting for export"
        )?,
    };
    m.start_time.set(crate::dialect::unix_now() as f64);
    // Export the loss counters at zero from the start, so "nothing dropped" is visible.
    for reason in [
        "channel_full",
        "rejected",
        "spill_failed",
        "spill_corrupt",
        "decision_unsigned",
    ] {
        m.trace_dropped.with_label_values(&[reason]);
    }
    for reason in ["queue_full", "export_failed", "closed"] {
        m.otlp_dropped.with_label_values(&[reason]);
    }
    for result in ["ok", "failed"] {
        m.config_reloads.with_label_values(&[result]);
    }
    for outcome in ["admitted", "refused"] {
        m.limits_backend_errors.with_label_values(&[outcome]);
    }
    Ok(m)
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| match build() {
    Ok(m) => m,
    // Registration only fails on duplicate names, a programming error caught by tests.
    Err(e) => panic!("metrics registration failed: {e}"),
});

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Render the default registry in Prometheus text format.
pub fn render() -> Vec<u8> {
    use prometheus::Encoder;
    LazyLock::force(&METRICS);
    let mut buf = Vec::with_capacity(16 * 1024);
    let _ = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    buf
}
