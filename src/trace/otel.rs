//! OpenTelemetry: one span per model call, built from the finished trace record and handed
//! to a bounded queue (the OTLP exporter service drains it off the request path).
//!
//! What is here is the request-path half: the `[otlp]` settings, W3C trace context
//! (`traceparent` / `tracestate`: parsed from the client, written onto upstream requests),
//! the per-request [`OtelCtx`], the span's attributes (GenAI semantic conventions plus
//! `loopgate.*`), and [`Otel`], the outlet whose `submit` only enqueues (a full queue is a
//! counted drop). Never the prompt or the answer, never a key.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::{Duration, UNIX_EPOCH};

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{Array, InstrumentationScope, KeyValue, StringValue, Value};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::metrics::metrics;
use crate::trace::TraceRecord;
use crate::upstream::UpstreamRequest;

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    /// Protobuf over HTTP `POST <endpoint>` (default port 4318, path `/v1/traces`).
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    /// The gRPC `TraceService` (default port 4317).
    #[serde(rename = "grpc")]
    Grpc,
}

impl OtlpProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            OtlpProtocol::HttpProtobuf => "http/protobuf",
            OtlpProtocol::Grpc => "grpc",
        }
    }

    fn parse(s: &str) -> Option<OtlpProtocol> {
        match s.trim() {
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            "grpc" => Some(OtlpProtocol::Grpc),
            _ => None,
        }
    }
}

/// `[otlp]`: optional export of one span per model call. Read at start (a change applies
/// after a restart).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    pub enabled: bool,
    /// Collector URL (`http://host:port[/path]`); unset: `http://localhost:4318/v1/traces`
    /// (HTTP) or `http://localhost:4317` (gRPC).
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// Extra request headers / gRPC metadata (often a credential: never logged).
    pub headers: BTreeMap<String, String>,
    /// `service.name` of the exported resource.
    pub service_name: String,
    /// Longest one export call may take.
    pub timeout_ms: u64,
    /// Most spans per export call.
    pub batch_size: usize,
    /// Spans waiting for export; past it new spans are dropped (counted).
    pub queue_capacity: usize,
    /// Longest a span waits for its batch to fill.
    pub export_interval_ms: u64,
    /// Longest shutdown waits for the queue to be exported.
    pub shutdown_timeout_ms: u64,
    /// Share of new traces exported, 0.0–1.0 (a client's `traceparent` sampled flag wins).
    pub sample_ratio: f64,
    /// A standard `OTEL_*` variable that could not be applied (reported by `validate`).
    #[serde(skip)]
    pub env_error: Option<String>,
}

impl std::fmt::Debug for OtlpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Header values are often credentials: only their names.
        f.debug_struct("OtlpConfig")
            .field("enabled", &self.enabled)
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("service_name", &self.service_name)
            .field("timeout_ms", &self.timeout_ms)
            .field("batch_size", &self.batch_size)
            .field("queue_capacity", &self.queue_capacity)
            .field("export_interval_ms", &self.export_interval_ms)
            .field("shutdown_timeout_ms", &self.shutdown_timeout_ms)
            .field("sample_ratio", &self.sample_ratio)
            .finish()
    }
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            enabled: false,
            endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            headers: BTreeMap::new(),
            service_name: "loopgate".into(),
            timeout_ms: 10_000,
            batch_size: 512,
            queue_capacity: 4096,
            export_interval_ms: 1000,
            shutdown_timeout_ms: 5000,
            sample_ratio: 1.0,
            env_error: None,
        }
    }
}

impl OtlpConfig {
    /// The URL the exporter sends to: the configured endpoint (for HTTP, `/v1/traces` is
    /// added when it has no path), else the protocol's default.
    pub fn resolved_endpoint(&self) -> String {
        match (&self.endpoint, self.protocol) {
            (Some(e), OtlpProtocol::HttpProtobuf) => {
                let e = e.trim();
                let rest = e.split_once("://").map_or(e, |(_, r)| r);
                if rest.trim_end_matches('/').contains('/') {
                    e.to_string()
                } else {
                    format!("{}/v1/traces", e.trim_end_matches('/'))
                }
            }
            (Some(e), OtlpProtocol::Grpc) => e.trim().to_string(),
            (None, OtlpProtocol::HttpProtobuf) => "http://localhost:4318/v1/traces".into(),
            (None, OtlpProtocol::Grpc) => "http://localhost:4317".into(),
        }
    }

    /// The standard variables, over the file: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as
    /// is) or `OTEL_EXPORTER_OTLP_ENDPOINT` (a base: HTTP adds `/v1/traces`),
    /// `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`, `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` (ms),
    /// `OTEL_SERVICE_NAME`, and `OTEL_SDK_DISABLED=true` (turns export off).
    pub fn apply_env(&mut self, var: &dyn Fn(&str) -> Option<String>) {
        let either = |a: &str, b: &str| {
            var(a)
                .map(|v| (a.to_string(), v))
                .or_else(|| var(b).map(|v| (b.to_string(), v)))
        };
        if let Some((name, v)) = either(
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ) {
            match OtlpProtocol::parse(&v) {
                Some(p) => self.protocol = p,
                None => {
                    self.env_error = Some(format!(
                        "{name} '{v}' is not supported: use \"http/protobuf\" or \"grpc\""
                    ))
                }
            }
        }
        if let Some(v) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            self.endpoint = Some(v);
        } else if let Some(v) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            self.endpoint = Some(match self.protocol {
                OtlpProtocol::HttpProtobuf => {
                    format!("{}/v1/traces", v.trim().trim_end_matches('/'))
                }
                OtlpProtocol::Grpc => v,
            });
        }
        if let Some((name, v)) = either(
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ) {
            match v.trim().parse::<u64>() {
                Ok(ms) => self.timeout_ms = ms,
                Err(_) => {
                    self.env_error = Some(format!("{name} '{v}' is not a number of milliseconds"))
                }
            }
        }
        if let Some(v) = var("OTEL_SERVICE_NAME") {
            self.service_name = v;
        }
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            self.enabled = false;
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if let Some(e) = &self.env_error {
            return Err(format!("otlp: {e}"));
        }
        if let Some(e) = &self.endpoint {
            let e = e.trim();
            if e.starts_with("https://") {
                return Err(format!(
                    "otlp.endpoint '{e}': TLS is not built in; export over http:// to a collector on the host or in the pod"
                ));
            }
            let Some(rest) = e.strip_prefix("http://") else {
                return Err(format!("otlp.endpoint '{e}' must be an http:// URL"));
            };
            if rest.is_empty() || rest.starts_with('/') {
                return Err(format!("otlp.endpoint '{e}' has no host"));
            }
            if self.resolved_endpoint().parse::<http::Uri>().is_err() {
                return Err(format!("otlp.endpoint '{e}' is not a valid URL"));
            }
        }
        for (k, v) in &self.headers {
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                return Err(format!("otlp.headers: '{k}' is not a valid header name"));
            }
            if http::HeaderValue::from_str(v).is_err() {
                // Never echo the value: it is often a credential.
                return Err(format!(
                    "otlp.headers.{k}: the value is not a valid header value"
                ));
            }
        }
        if self.service_name.trim().is_empty() {
            return Err("otlp.service_name must not be empty".into());
        }
        if !(1..=120_000).contains(&self.timeout_ms) {
            return Err(format!(
                "otlp.timeout_ms must be from 1 to 120000, got {}",
                self.timeout_ms
            ));
        }
        if !(1..=65_536).contains(&self.batch_size) {
            return Err(format!(
                "otlp.batch_size must be from 1 to 65536, got {}",
                self.batch_size
            ));
        }
        if !(1..=1_048_576).contains(&self.queue_capacity) {
            return Err(format!(
                "otlp.queue_capacity must be from 1 to 1048576, got {}",
                self.queue_capacity
            ));
        }
        if !(1..=60_000).contains(&self.export_interval_ms) {
            return Err(format!(
                "otlp.export_interval_ms must be from 1 to 60000, got {}",
                self.export_interval_ms
            ));
        }
        if self.shutdown_timeout_ms > 60_000 {
            return Err(format!(
                "otlp.shutdown_timeout_ms must be at most 60000, got {}",
                self.shutdown_timeout_ms
            ));
        }
        if !(self.sample_ratio.is_finite() && (0.0..=1.0).contains(&self.sample_ratio)) {
            return Err(format!(
                "otlp.sample_ratio must be from 0.0 to 1.0, got {}",
                self.sample_ratio
            ));
        }
        Ok(())
    }
}

/// A parsed W3C `traceparent`: trace id, parent span id, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

fn hex_into(s: &str, out: &mut [u8]) -> bool {
    let b = s.as_bytes();
    if b.len() != out.len() * 2 {
        return false;
    }
    let nib = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    for (i, o) in out.iter_mut().enumerate() {
        match (nib(b[2 * i]), nib(b[2 * i + 1])) {
            (Some(h), Some(l)) => *o = h << 4 | l,
            _ => return false,
        }
    }
    true
}

/// Parse `traceparent` as W3C Trace Context level 1 says: `00-<32 hex>-<16 hex>-<2 hex>`
/// (lower case, ids not all zero; version `ff` invalid; a later version may append fields).
pub fn parse_traceparent(v: &str) -> Option<TraceParent> {
    let v = v.trim();
    let mut parts = v.splitn(5, '-');
    let (ver, tid, pid, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let rest = parts.next();
    let mut version = [0u8; 1];
    if !hex_into(ver, &mut version) || version[0] == 0xff {
        return None;
    }
    if version[0] == 0 && rest.is_some() {
        return None;
    }
    let mut p = TraceParent {
        trace_id: [0; 16],
        parent_id: [0; 8],
        flags: 0,
    };
    let mut f = [0u8; 1];
    if !hex_into(tid, &mut p.trace_id)
        || !hex_into(pid, &mut p.parent_id)
        || !hex_into(flags, &mut f)
    {
        return None;
    }
    if p.trace_id == [0; 16] || p.parent_id == [0; 8] {
        return None;
    }
    p.flags = f[0];
    Some(p)
}

fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

/// Longest `tracestate` passed on (W3C: at most 32 members; 512 bytes is what vendors keep).
const MAX_TRACESTATE: usize = 512;
/// At most this many distinct finish reasons per request.
const MAX_FINISH_REASONS: usize = 8;

/// Per-request trace context: the gateway's span and what only the request path sees.
#[derive(Debug, Clone)]
pub struct OtelCtx {
    pub trace_id: [u8; 16],
    /// The gateway's span, the parent of the upstream call.
    pub span_id: [u8; 8],
    /// The client's span, when it sent a `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    pub sampled: bool,
    /// The client's `tracestate`, when valid (passed on unchanged).
    pub tracestate: Option<String>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u64>,
    pub finish_reasons: Vec<String>,
}

impl OtelCtx {
    /// The trace id in hex (the trace record's `otel_trace_id` property).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// `traceparent` for the upstream call: this trace, the gateway's span as parent.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex(&self.trace_id),
            hex(&self.span_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Put `traceparent` (and the client's `tracestate`) on an upstream request, replacing
    /// any the dialect or the profile set.
    pub fn inject(&self, req: &mut UpstreamRequest) {
        req.set_header("traceparent", self.traceparent());
        if let Some(ts) = &self.tracestate {
            req.set_header("tracestate", ts.clone());
        }
    }

    /// The sampling parameters of a chat request (when set).
    pub fn request_params(&mut self, body: &serde_json::Map<String, serde_json::Value>) {
        self.temperature = body.get("temperature").and_then(serde_json::Value::as_f64);
        self.max_tokens = body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens"))
            .and_then(serde_json::Value::as_u64);
    }

    /// Note the `finish_reason`s in OpenAI-shaped JSON (a whole answer or stream chunks).
    pub fn scan_finish_reasons(&mut self, bytes: &[u8]) {
        const NEEDLE: &[u8] = b"\"finish_reason\":\"";
        let mut at = 0;
        while let Some(i) = find(&bytes[at..], NEEDLE) {
            let start = at + i + NEEDLE.len();
            let Some(len) = bytes[start..].iter().take(64).position(|&c| c == b'"') else {
                return;
            };
            if let Ok(r) = std::str::from_utf8(&bytes[start..start + len]) {
                if !self.finish_reasons.iter().any(|x| x == r)
                    && self.finish_reasons.len() < MAX_FINISH_REASONS
                {
                    self.finish_reasons.push(r.to_string());
                }
            }
            at = start + len;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    loop {
        let b: [u8; N] = std::array::from_fn(|_| rand::random::<u8>());
        if b != [0; N] {
            return b;
        }
    }
}

/// The request path's outlet: starts trace contexts and enqueues finished spans.
pub struct Otel {
    tx: mpsc::Sender<SpanData>,
    sample_ratio: f64,
    scope: InstrumentationScope,
}

/// Why a span was not exported (the `reason` label of `loopgate_otlp_spans_dropped_total`).
pub const DROP_REASONS: [&str; 3] = ["queue_full", "export_failed", "closed"];

impl Otel {
    /// The outlet and the receiving end the exporter service drains.
    pub fn channel(cfg: &OtlpConfig) -> (Otel, mpsc::Receiver<SpanData>) {
        let (tx, rx) = mpsc::channel(cfg.queue_capacity.max(1));
        let scope = InstrumentationScope::builder("loopgate")
            .with_version(env!("CARGO_PKG_VERSION"))
            .build();
        (
            Otel {
                tx,
                sample_ratio: cfg.sample_ratio,
                scope,
            },
            rx,
        )
    }

    /// The trace context of a new request from the client's headers (invalid ones are
    /// ignored: a new trace starts).
    pub fn begin(&self, traceparent: Option<&str>, tracestate: Option<&str>) -> Box<OtelCtx> {
        let parent = traceparent.and_then(parse_traceparent);
        let (trace_id, parent_id, sampled) = match parent {
            Some(p) => (p.trace_id, Some(p.parent_id), p.flags & 1 == 1),
            None => {
                let t: [u8; 16] = random_nonzero();
                // Ratio sampling on the trace id's low 8 bytes, as TraceIdRatioBased does.
                let low = u64::from_be_bytes(t[8..].try_into().unwrap_or([0; 8]));
                let sampled = self.sample_ratio >= 1.0
                    || (low >> 1) < (self.sample_ratio * (1u64 << 63) as f64) as u64;
                (t, None, sampled)
            }
        };
        let tracestate = parent
            .and(tracestate)
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE)
            .filter(|s| TraceState::from_str(s).is_ok())
            .map(str::to_string);
        Box::new(OtelCtx {
            trace_id,
            span_id: random_nonzero(),
            parent_id,
            sampled,
            tracestate,
            temperature: None,
            max_tokens: None,
            finish_reasons: Vec::new(),
        })
    }

    /// Enqueue the span of a finished request; never waits (a full queue is a counted drop).
    pub fn submit(&self, rec: &TraceRecord, o: &OtelCtx) {
        if !o.sampled {
            return;
        }
        let span = span_data(rec, o, self.scope.clone());
        if let Err(e) = self.tx.try_send(span) {
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "closed",
            };
            metrics().otlp_dropped.with_label_values(&[reason]).inc();
        }
    }
}

/// `gen_ai.operation.name` of a trace record's endpoint.
fn operation(endpoint: &str) -> &str {
    match endpoint {
        "chat.completions" | "messages" | "responses" => "chat",
        "embeddings" => "embeddings",
        "images.generations" => "generate_content",
        other => other,
    }
}

/// The span of one finished request: GenAI semantic-convention attributes and
/// `loopgate.*`, nothing of the prompt or the answer.
pub fn span_data(rec: &TraceRecord, o: &OtelCtx, scope: InstrumentationScope) -> SpanData {
    let op = operation(&rec.endpoint);
    let mut a: Vec<KeyValue> = Vec::with_capacity(24);
    let s = |k: &'static str, v: &str| KeyValue::new(k, v.to_string());
    a.push(s("gen_ai.operation.name", op));
    let last = rec.attempts.last();
    if let Some(p) = rec
        .provider
        .as_deref()
        .or(last.map(|x| x.provider.as_str()))
    {
        a.push(s("gen_ai.system", p));
        a.push(s("gen_ai.provider.name", p));
    }
    a.push(s("gen_ai.request.model", &rec.requested_model));
    if let Some(m) = &rec.served_model {
        a.push(s("gen_ai.response.model", m));
    }
    if let Some(t) = o.temperature {
        a.push(KeyValue::new("gen_ai.request.temperature", t));
    }
    if let Some(m) = o.max_tokens {
        a.push(KeyValue::new("gen_ai.request.max_tokens", m as i64));
    }
    if rec.usage_reported {
        a.push(KeyValue::new(
            "gen_ai.usage.input_tokens",
            rec.prompt_tokens as i64,
        ));
        a.push(KeyValue::new(
            "gen_ai.usage.output_tokens",
            rec.completion_tokens as i64,
        ));
    }
    if !o.finish_reasons.is_empty() {
        let v: Vec<StringValue> = o.finish_reasons.iter().map(|r| r.clone().into()).collect();
        a.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            Value::Array(Array::String(v)),
        ));
    }
    a.push(KeyValue::new("gen_ai.response.id", rec.request_id.clone()));
    a.push(KeyValue::new(
        "http.response.status_code",
        rec.status as i64,
    ));
    let error_type = error_type(rec);
    if let Some(e) = &error_type {
        a.push(s("error.type", e));
    }
    a.push(KeyValue::new("loopgate.cost_usd", rec.cost_usd));
    if rec.cost_unknown {
        a.push(KeyValue::new("loopgate.cost_unknown", true));
    }
    a.push(KeyValue::new("loopgate.stream", rec.stream));
    if let Some(r) = &rec.route {
        a.push(s("loopgate.route", r));
    }
    if let Some(p) = &rec.project_id {
        a.push(s("loopgate.project", p));
    }
    if let Some(d) = &rec.decision_id {
        a.push(s("loopgate.decision_id", d));
    }
    if let Some(d) = &rec.decision {
        a.push(s("loopgate.chosen_model", &d.chosen));
        a.push(s("loopgate.baseline_model", &d.baseline));
        a.push(s("loopgate.decision_kind", &d.kind));
    }
    if let Some((_, c)) = rec.properties.iter().find(|(k, _)| k == "cache") {
        a.push(s("loopgate.cache", c));
    }
    if rec.fallback_used {
        a.push(KeyValue::new("loopgate.fallback_used", true));
    }
    a.push(KeyValue::new(
        "loopgate.attempts",
        rec.attempts.len() as i64,
    ));

    let start = UNIX_EPOCH + Duration::from_millis(rec.ts_ms.max(0) as u64);
    let end = start + Duration::from_secs_f64((rec.latency_ms.max(0.0)) / 1000.0);
    let trace_state = o
        .tracestate
        .as_deref()
        .and_then(|s| TraceState::from_str(s).ok())
        .unwrap_or_default();
    let model = rec.served_model.as_deref().unwrap_or(&rec.requested_model);
    SpanData {
        span_context: SpanContext::new(
            TraceId::from_bytes(o.trace_id),
            SpanId::from_bytes(o.span_id),
            TraceFlags::SAMPLED,
            false,
            trace_state,
        ),
        parent_span_id: o.parent_id.map_or(SpanId::INVALID, SpanId::from_bytes),
        parent_span_is_remote: o.parent_id.is_some(),
        span_kind: SpanKind::Server,
        name: Cow::Owned(if model.is_empty() {
            op.to_string()
        } else {
            format!("{op} {model}")
        }),
        start_time: start,
        end_time: end.max(start),
        attributes: a,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match error_type {
            Some(e) => Status::error(e),
            None => Status::Unset,
        },
        instrumentation_scope: scope,
    }
}

/// `error.type`: low cardinality, never a message: the last failed attempt's outcome
/// (`timeout`, `http_error`, ...) or the status code, `stream_error` for a stream that
/// broke after its header, `cancelled` when the client went away.
fn error_type(rec: &TraceRecord) -> Option<String> {
    if rec.cancelled {
        return Some("cancelled".into());
    }
    if rec.status >= 400 {
        return Some(match rec.attempts.last() {
            Some(a) if a.outcome != "ok" => a.outcome.clone(),
            _ => rec.status.to_string(),
        });
    }
    rec.error.as_ref().map(|_| "stream_error".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_parsed_as_w3c_says() {
        let p =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(hex(&p.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(hex(&p.parent_id), "00f067aa0ba902b7");
        assert_eq!(p.flags, 1);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(parse_traceparent(bad).is_none(), "{bad}");
        }
        // A later version may carry more fields.
        assert!(
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-xyz")
                .is_some()
        );
    }

    #[test]
    fn the_client_trace_continues_and_a_new_one_starts_without() {
        let (o, _rx) = Otel::channel(&OtlpConfig::default());
        let c = o.begin(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("vendor=abc"),
        );
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            c.parent_id.map(|p| hex(&p)).as_deref(),
            Some("00f067aa0ba902b7")
        );
        assert!(c.sampled);
        assert_eq!(c.tracestate.as_deref(), Some("vendor=abc"));
        let tp = c.traceparent();
        assert!(tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(tp.ends_with("-01"));
        assert_ne!(&tp[36..52], "00f067aa0ba902b7");
        let n = o.begin(None, Some("vendor=abc"));
        assert!(n.parent_id.is_none() && n.tracestate.is_none() && n.sampled);
        let unsampled = o.begin(
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"),
            None,
        );
        assert!(!unsampled.sampled);
        let zero = Otel::channel(&OtlpConfig {
            sample_ratio: 0.0,
            ..OtlpConfig::default()
        })
        .0;
        assert!(!(0..50).any(|_| zero.begin(None, None).sampled));
    }

    #[test]
    fn finish_reasons_are_collected_once_each() {
        let (o, _rx) = Otel::channel(&OtlpConfig::default());
        let mut c = o.begin(None, None);
        c.scan_finish_reasons(
            br#"{"choices":[{"finish_reason":"stop"},{"finish_reason":"length"}]}"#,
        );
        c.scan_finish_reasons(br#"data: {"choices":[{"delta":{},"finish_reason":"stop"}]}"#);
        assert_eq!(c.finish_reasons, ["stop", "length"]);
    }

    #[test]
    fn config_is_validated_and_env_applies() {
        let mut c = OtlpConfig::default();
        assert!(c.validate().is_ok());
        assert_eq!(c.resolved_endpoint(), "http://localhost:4318/v1/traces");
        c.endpoint = Some("http://collector:4318".into());
        assert_eq!(c.resolved_endpoint(), "http://collector:4318/v1/traces");
        c.endpoint = Some("https://collector:4318".into());
        assert!(c.validate().unwrap_err().contains("otlp.endpoint"));
        c.endpoint = None;
        c.headers
            .insert("authorization".into(), "Bearer s3cret\n".into());
        let e = c.validate().unwrap_err();
        assert!(e.contains("otlp.headers.authorization") && !e.contains("s3cret"));
        assert!(!format!("{c:?}").contains("s3cret"));
        c.headers.clear();
        c.sample_ratio = 1.5;
        assert!(c.validate().unwrap_err().contains("otlp.sample_ratio"));
        c.sample_ratio = 1.0;
        let env = |k: &str| match k {
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("grpc".to_string()),
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://otel:4317".to_string()),
            "OTEL_SERVICE_NAME" => Some("gw-eu".to_string()),
            _ => None,
        };
        c.apply_env(&env);
        assert_eq!(c.protocol, OtlpProtocol::Grpc);
        assert_eq!(c.resolved_endpoint(), "http://otel:4317");
        assert_eq!(c.service_name, "gw-eu");
        c.apply_env(&|k: &str| {
            (k == "OTEL_EXPORTER_OTLP_PROTOCOL").then(|| "http/json".to_string())
        });
        assert!(c
            .validate()
            .unwrap_err()
            .contains("OTEL_EXPORTER_OTLP_PROTOCOL"));
    }
}
