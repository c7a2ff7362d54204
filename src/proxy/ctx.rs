//! Per-request state: what the trace and the metrics need, filled in as the request
//! moves through the phases.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::auth::Caller;
use crate::dialect::Usage;
use crate::routing::Runtime;
use crate::trace::TraceRecord;

/// Requests currently being handled (for graceful shutdown).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

pub fn in_flight() -> usize {
    IN_FLIGHT.load(Ordering::Acquire)
}

/// Counts a request from context creation until the context is dropped (after logging).
pub struct InFlight(());

impl InFlight {
    fn enter() -> InFlight {
        IN_FLIGHT.fetch_add(1, Ordering::AcqRel);
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A feedback route's decision, carried from the request phase to logging.
pub struct AutoCtx {
    pub decision: crate::feedback::Decision,
    /// Prompt-context bucket (contextual routes).
    pub context: Option<&'static str>,
    /// Candidates from this index on are the baseline's (served after a provider error).
    pub baseline_from: usize,
    /// The project whose learning pool decided (`None`: the shared pool).
    pub pool: Option<std::sync::Arc<str>>,
    /// What the prompt router did (routes with `prompt_routing`).
    pub prompt: Option<Box<crate::feedback::prompt::state::PromptOutcome>>,
}

pub struct RequestCtx {
    _in_flight: InFlight,
    pub start: Instant,
    /// `chat.completions`, `embeddings`, `images.generations`, `models`, `admin`, ...
    pub endpoint: &'static str,
    /// The client API when it is not OpenAI's (`/v1/messages`: `proxy::ingress`).
    pub ingress: Option<crate::dialect::ingress::Ingress>,
    /// What a `/v1/responses` answer echoes from its request (`proxy::ingress`).
    pub responses: Option<Box<crate::dialect::ingress::responses::Echo>>,
    /// Only model calls produce traces.
    pub traced: bool,
    pub runtime: Option<Arc<Runtime>>,
    /// Provider API keys added at runtime (`None`: providers' own credentials only).
    pub provider_keys: Option<Arc<crate::auth::provider_keys::ProviderKeys>>,
    pub caller: Caller,
    /// The virtual key of the request, if it used one (its model/route policy and limits).
    pub vkey: Option<std::sync::Arc<crate::auth::virtual_keys::VirtualKey>>,
    /// The virtual key's rate-limit ticket: its `x-ratelimit-*` headers, settled at the end.
    pub limit: Option<crate::auth::limits::Ticket>,
    /// The request's trace record, filled in as the request goes (the logging phase
    /// completes it: key, endpoint, token counts, latency) and handed to the trace outlet.
    pub trace: TraceRecord,
    /// Token usage as reported (copied into `trace` at the end).
    pub usage: Usage,
    /// The serving upstream's own request id (`loopgate-upstream-request-id`).
    pub upstream_request_id: Option<String>,
    /// The routing decision of a feedback route (`model: "auto"`).
    pub auto: Option<Box<AutoCtx>>,
    /// `<prefix>-feedback-expected`: the client said it will (or will not) score this request.
    pub feedback_expected: Option<bool>,
    /// Index of the candidate that served the request.
    pub served_index: Option<usize>,
    /// Shadow call / judge sampling of this request (`crate::services::shadow`).
    pub rollout: Option<Box<crate::services::shadow::RolloutCtx>>,
    /// CORS headers for this request's responses (`[server.cors]`; empty without).
    pub cors: Vec<(&'static str, String)>,
    /// The firewall's policy and verdicts for this request (`proxy::firewall`).
    pub firewall: Option<Box<crate::firewall::Report>>,
    /// Exact-cache state (`crate::cache`; `None`: the cache is off for this request).
    pub cache: Option<Box<crate::cache::CacheCtx>>,
    /// Semantic-cache insert planned on a miss (`proxy::semantic`; `None`: nothing to store).
    pub semantic: Option<Box<super::semantic::Pending>>,
    /// W3C trace context and what the OpenTelemetry span needs (`None`: `[otlp]` off).
    pub otel: Option<Box<crate::trace::otel::OtelCtx>>,
}

impl RequestCtx {
    pub fn new() -> Self {
        RequestCtx {
            _in_flight: InFlight::enter(),
            start: Instant::now(),
            endpoint: "unknown",
            ingress: None,
            responses: None,
            traced: false,
            runtime: None,
            provider_keys: None,
            caller: Caller::default(),
            vkey: None,
            limit: None,
            trace: TraceRecord {
                request_id: new_request_id(),
                ts_ms: chrono::Utc::now().timestamp_millis(),
                ..TraceRecord::default()
            },
            usage: Usage::default(),
            upstream_request_id: None,
            auto: None,
            feedback_expected: None,
            served_index: None,
            rollout: None,
            cors: Vec::new(),
            firewall: None,
            cache: None,
            semantic: None,
            otel: None,
        }
    }

    pub fn elapsed_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        Self::new()
    }
}

pub use crate::trace::ids::{new_request_id, random_id, BASE36, BASE62};
