//! The trace record: one per request, written off the hot path.

use serde::{Deserialize, Serialize};

/// One upstream attempt (a request may try several candidates).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Attempt {
    pub provider: String,
    pub model: String,
    /// Upstream HTTP status, if one was received.
    pub status: Option<u16>,
    /// `ok`, `connect_error`, `timeout`, `http_error`, `overloaded`, `stream_error`, `cancelled`, `sign_error`.
    pub outcome: String,
    pub latency_ms: f64,
    /// Upstream error message (never contains credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything recorded about one request.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TraceRecord {
    pub request_id: String,
    /// Start time, unix milliseconds.
    pub ts_ms: i64,
    /// `chat.completions`, `embeddings`, `images.generations`, `shadow`, `judge`.
    pub endpoint: String,
    /// Gateway key id (never the key itself).
    pub key_id: Option<String>,
    pub session_id: Option<String>,
    pub session_name: Option<String>,
    pub session_path: Option<String>,
    pub project_id: Option<String>,
    pub user_id: Option<String>,
    /// Custom properties from `loopgate-property-<name>` headers, sorted by name.
    pub properties: Vec<(String, String)>,
    /// Routing rule used, if any.
    pub route: Option<String>,
    pub requested_model: String,
    pub served_model: Option<String>,
    pub provider: Option<String>,
    pub attempts: Vec<Attempt>,
    /// Status returned to the client (200 for streams that errored after the header).
    pub status: u16,
    pub stream: bool,
    /// The client went away before the response finished.
    pub cancelled: bool,
    pub fallback_used: bool,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    pub cache_creation_tokens: u64,
    pub reasoning_tokens: u64,
    /// False when the upstream never reported usage (tokens then unknown, not zero).
    pub usage_reported: bool,
    pub cost_usd: f64,
    /// The model has no catalog price: `cost_usd` is 0 because unknown, not free.
    #[serde(default)]
    pub cost_unknown: bool,
    pub latency_ms: f64,
    pub ttft_ms: Option<f64>,
    pub request_bytes: u64,
    pub response_bytes: u64,
    /// Error message returned to the client or seen mid-stream.
    pub error: Option<String>,
    /// Routing decision id for `auto` requests.
    pub decision_id: Option<String>,
    /// Captured bodies (only with capture on and zero-retention off).
    pub request_body: Option<String>,
    pub response_body: Option<String>,
    /// Zero-retention: no prompt/completion text is ever stored for this request.
    pub zero_retention: bool,
    /// A shadow call, not served traffic.
    pub shadow: bool,
    /// The routing decision of an `auto` request, stored with the trace in one transaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Box<DecisionRow>>,
}

/// One routing decision as stored (index columns + the signed trace JSON).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DecisionRow {
    /// Equals the request id (and the response id the client sees).
    pub request_id: String,
    pub ts_ms: i64,
    pub route: String,
    /// `off`, `shadow` or `live`.
    pub mode: String,
    pub session_id: Option<String>,
    /// The policy's pick.
    pub chosen: String,
    /// What was served (baseline in shadow mode or after a provider error).
    pub served: String,
    pub baseline: String,
    /// Prompt-context bucket the decision used (e.g. `math`, `code`), if contextual routing is on.
    pub context: Option<String>,
    /// `off`, `pinned`, `baseline`, `promoted`, `explored`, `sticky`.
    pub kind: String,
    pub shadow: bool,
    /// Gate confidence of the chosen model (None for the baseline).
    pub confidence: Option<f64>,
    /// Posterior mean quality of the served model.
    pub quality: Option<f64>,
    pub propensity: f64,
    pub table_version: u64,
    /// The signed decision trace, JSON (the trace's fields plus `signature`).
    pub signed: String,
    /// Project of the request (the key's lock or the project header): the tenancy scope.
    #[serde(default)]
    pub project: Option<String>,
    /// Renders and signs `signed` later: set on the request path, run by the trace writer
    /// ([`DecisionRow::settle`]) so the worker threads never render or hash the trace.
    #[serde(skip)]
    pub deferred: Option<DeferredTrace>,
}

/// A decision trace still to be rendered and signed (a closure over the decision; the trace
/// module does not know how). Cloning shares it; equality is identity.
#[derive(Clone)]
pub struct DeferredTrace(std::sync::Arc<dyn Fn() -> Result<String, String> + Send + Sync>);

impl DeferredTrace {
    pub fn new(render: impl Fn() -> Result<String, String> + Send + Sync + 'static) -> Self {
        DeferredTrace(std::sync::Arc::new(render))
    }
}

impl std::fmt::Debug for DeferredTrace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeferredTrace(..)")
    }
}

impl PartialEq for DeferredTrace {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl DecisionRow {
    /// Render and sign a deferred trace into `signed` (a no-op when it is already there).
    pub fn settle(&mut self) -> Result<(), String> {
        if let Some(render) = self.deferred.take() {
            self.signed = (render.0)()?;
        }
        Ok(())
    }
}
