//! Signed webhooks: decision, audit, rollback, experiment and budget events pushed to an operator's
//! endpoint (e.g. to land them in their own warehouse).
//!
//! - [`WebhookSender::try_send`] never blocks and never fails the caller: events go into a
//!   bounded queue; when it is full the event is dropped and counted.
//! - A [`WebhookWorker`] drains the queue in order, posting batches of up to `max_batch`
//!   events as one JSON body `{"delivery_id": "...", "events": [...]}`.
//! - Every POST carries `loopgate-signature: t=<unix seconds>,v1=<hex>` where
//!   `v1 = HMAC-SHA256(secret, "<t>." + body)` over the exact body bytes; receivers recompute
//!   it, compare in constant time and reject stale `t` (replay protection).
//! - Connect errors, timeouts, 408, 429 and 5xx are retried with exponential backoff and
//!   jitter (a `Retry-After` is honoured up to `max_retry_after_ms`), re-sending the same
//!   body and delivery id so receivers can de-duplicate; after `max_attempts` (or at once on
//!   another 4xx) the batch is dead-lettered and counted.
//!
//! Metrics (register with [`WebhookStats::register`]): `loopgate_webhook_sent_total`,
//! `loopgate_webhook_retried_total`, `loopgate_webhook_dead_lettered_total`,
//! `loopgate_webhook_dropped_total` (all counting events, except `retried` which counts
//! re-sent POSTs) and the gauge `loopgate_webhook_queue_depth`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prometheus::{IntCounter, IntGauge, Registry};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::Backoff;
use crate::dialect::UpstreamRequest;
use crate::providers::{Endpoint, Secret};
use crate::upstream::{self, ExchangeOptions};

/// Header carrying the signature.
pub const SIGNATURE_HEADER: &str = "loopgate-signature";
/// Header carrying the delivery id (the same on every retry of a batch).
pub const DELIVERY_HEADER: &str = "loopgate-delivery";
/// Header carrying the 1-based attempt number.
pub const ATTEMPT_HEADER: &str = "loopgate-attempt";
/// Largest receiver response body read (then discarded).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WebhookError {
    #[error("invalid webhook config: {0}")]
    Config(String),
    #[error("webhook secret env var {0} is not set")]
    MissingSecret(String),
    #[error("webhook metrics: {0}")]
    Metrics(String),
}

/// Kinds of event a webhook can subscribe to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A routing decision trace (high volume: subscribe deliberately).
    Decision,
    /// An audit-log entry: constraint changes, pins and unpins, with who and why.
    Audit,
    /// An automatic regression rollback.
    Rollback,
    /// A canary experiment transition (advanced, reverted, promoted, stopped).
    Experiment,
    /// A virtual key's spend passed the `soft_pct` share of one of its budgets (once per
    /// key, budget period and gateway).
    #[serde(rename = "budget.soft_threshold")]
    BudgetSoftThreshold,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::Decision,
        EventKind::Audit,
        EventKind::Rollback,
        EventKind::Experiment,
        EventKind::BudgetSoftThreshold,
    ];
    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

fn all_kinds() -> Vec<EventKind> {
    EventKind::ALL.to_vec()
}

/// `[webhook]` configuration.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `https://...` (or `http://` for a receiver on the same host/network).
    pub url: String,
    /// Environment variable holding the signing secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// The signing secret (filled from `secret_env`; never serialised).
    #[serde(skip)]
    pub secret: Secret,
    /// Event kinds to send; all when absent.
    #[serde(default = "all_kinds")]
    pub events: Vec<EventKind>,
    /// Bound on one POST: connect, send and response.
    #[serde(default = "d_timeout")]
    pub timeout_ms: u64,
    /// POSTs per batch in all, first attempt included.
    #[serde(default = "d_attempts")]
    pub max_attempts: u32,
    #[serde(default = "d_base")]
    pub backoff_base_ms: u64,
    #[serde(default = "d_cap")]
    pub backoff_cap_ms: u64,
    /// Longest `Retry-After` honoured (a longer one waits this long).
    #[serde(default = "d_retry_after")]
    pub max_retry_after_ms: u64,
    /// Events waiting to be sent; beyond this, new events are dropped and counted.
    #[serde(default = "d_queue")]
    pub queue_capacity: usize,
    /// Events per POST.
    #[serde(default = "d_batch")]
    pub max_batch: usize,
}

fn d_timeout() -> u64 {
    10_000
}
fn d_attempts() -> u32 {
    8
}
fn d_base() -> u64 {
    500
}
fn d_cap() -> u64 {
    60_000
}
fn d_retry_after() -> u64 {
    300_000
}
fn d_queue() -> usize {
    10_000
}
fn d_batch() -> usize {
    100
}

impl WebhookConfig {
    /// A config with defaults for `url` and `secret`.
    pub fn new(url: &str, secret: Secret) -> Self {
        WebhookConfig {
            url: url.to_string(),
            secret_env: None,
            secret,
            events: all_kinds(),
            timeout_ms: d_timeout(),
            max_attempts: d_attempts(),
            backoff_base_ms: d_base(),
            backoff_cap_ms: d_cap(),
            max_retry_after_ms: d_retry_after(),
            queue_capacity: d_queue(),
            max_batch: d_batch(),
        }
    }

    /// Fill `secret` from `secret_env` through `lookup` (e.g. `|k| std::env::var(k).ok()`).
    pub fn resolve_secret(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), WebhookError> {
        if let Some(name) = &self.secret_env {
            match lookup(name) {
                Some(v) if !v.is_empty() => self.secret = Secret::new(v),
                _ => return Err(WebhookError::MissingSecret(name.clone())),
            }
        }
        Ok(())
    }

    pub fn backoff(&self) -> Backoff {
        Backoff {
            base_ms: self.backoff_base_ms,
            cap_ms: self.backoff_cap_ms,
        }
    }

    pub fn validate(&self) -> Result<Endpoint, WebhookError> {
        let bad = |m: String| Err(WebhookError::Config(m));
        if !(self.url.starts_with("https://") || self.url.starts_with("http://")) {
            return bad("url must start with https:// or http://".into());
        }
        let ep = Endpoint::parse(&self.url).map_err(WebhookError::Config)?;
        if self.secret.is_empty() {
            return bad("a signing secret is required (secret_env)".into());
        }
        if self.events.is_empty() {
            return bad("events must name at least one kind".into());
        }
        if self.timeout_ms == 0
            || self.max_attempts == 0
            || self.backoff_base_ms == 0
            || self.backoff_cap_ms < self.backoff_base_ms
            || self.queue_capacity == 0
            || self.max_batch == 0
        {
            return bad("timeout_ms, max_attempts, backoff_base_ms, queue_capacity and max_batch must be > 0, backoff_cap_ms >= backoff_base_ms".into());
        }
        Ok(ep)
    }
}

/// URL without query (a token may hide there) for Debug output and logs.
fn redacted_url(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or("")
}

impl fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redacted_url(&self.url))
            .field("secret_env", &self.secret_env)
            .field("secret", &self.secret)
            .field("events", &self.events)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("backoff_base_ms", &self.backoff_base_ms)
            .field("backoff_cap_ms", &self.backoff_cap_ms)
            .field("max_retry_after_ms", &self.max_retry_after_ms)
            .field("queue_capacity", &self.queue_capacity)
            .field("max_batch", &self.max_batch)
            .finish()
    }
}

/// One event as the receiver sees it inside `events`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique id (`evt_` + 32 hex digits): receivers de-duplicate on it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// Unix milliseconds when the event happened.
    pub created_at: i64,
    pub data: Value,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl WebhookEvent {
    pub fn new(kind: EventKind, data: Value) -> Self {
        WebhookEvent {
            id: format!("evt_{:032x}", rand::random::<u128>()),
            kind,
            created_at: now_ms(),
            data,
        }
    }
}

fn hmac_key(secret: &Secret) -> ring::hmac::Key {
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.expose().as_bytes())
}

/// The signed payload: `"<t>." + body`.
fn signed_payload(t: u64, body: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(body.len() + 24);
    p.extend_from_slice(t.to_string().as_bytes());
    p.push(b'.');
    p.extend_from_slice(body);
    p
}

/// The `loopgate-signature` header value for `body` sent at unix time `t`.
pub fn signature_header(secret: &Secret, t: u64, body: &[u8]) -> String {
    let mut ctx = ring::hmac::Context::with_key(&hmac_key(secret));
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={t},v1={}", hex::encode(ctx.sign().as_ref()))
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignatureError {
    #[error("malformed signature header")]
    Malformed,
    #[error("signature timestamp outside the tolerance")]
    Stale,
    #[error("signature mismatch")]
    Mismatch,
}

/// Verify a `loopgate-signature` header (what a Rust receiver would do): the timestamp must
/// be within `tolerance_secs` of `now_unix`, and one `v1` must match in constant time.
pub fn verify_signature(
    secret: &Secret,
    header: &str,
    body: &[u8],
    now_unix: u64,
    tolerance_secs: u64,
) -> Result<(), SignatureError> {
    let mut t = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| SignatureError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed)?;
    if sigs.is_empty() {
        return Err(SignatureError::Malformed);
    }
    if now_unix.abs_diff(t) > tolerance_secs {
        return Err(SignatureError::Stale);
    }
    let key = hmac_key(secret);
    let payload = signed_payload(t, body);
    // ring::hmac::verify compares in constant time.
    let ok = sigs
        .iter()
        .any(|s| ring::hmac::verify(&key, &payload, s).is_ok());
    if ok {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The sender's counters and queue gauge.
#[derive(Clone, Debug)]
pub struct WebhookStats {
    /// Events delivered (2xx).
    pub sent: IntCounter,
    /// POSTs re-sent after a retryable failure.
    pub retried: IntCounter,
    /// Events given up on (attempts exhausted or a non-retryable 4xx).
    pub dead_lettered: IntCounter,
    /// Events dropped because the queue was full (or the worker had stopped).
    pub dropped: IntCounter,
    pub queue_depth: IntGauge,
}

/// Plain numbers of [`WebhookStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    pub sent: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub dropped: u64,
    pub queue_depth: i64,
}

impl WebhookStats {
    /// Unregistered counters; see [`Self::register`].
    pub fn new() -> Result<Self, WebhookError> {
        let err = |e: prometheus::Error| WebhookError::Metrics(e.to_string());
        Ok(WebhookStats {
            sent: IntCounter::new(
                "loopgate_webhook_sent_total",
                "Webhook events delivered (2xx)",
            )
            .map_err(err)?,
            retried: IntCounter::new(
                "loopgate_webhook_retried_total",
                "Webhook POSTs retried after a connect error, timeout, 408, 429 or 5xx",
            )
            .map_err(err)?,
            dead_lettered: IntCounter::new(
                "loopgate_webhook_dead_lettered_total",
                "Webhook events given up on after max_attempts or a non-retryable 4xx",
            )
            .map_err(err)?,
            dropped: IntCounter::new(
                "loopgate_webhook_dropped_total",
                "Webhook events dropped because the queue was full",
            )
            .map_err(err)?,
            queue_depth: IntGauge::new(
                "loopgate_webhook_queue_depth",
                "Webhook events waiting to be sent",
            )
            .map_err(err)?,
        })
    }

    /// Register in a registry (e.g. `prometheus::default_registry()`); once per process.
    pub fn register(&self, r: &Registry) -> Result<(), WebhookError> {
        let err = |e: prometheus::Error| WebhookError::Metrics(e.to_string());
        r.register(Box::new(self.sent.clone())).map_err(err)?;
        r.register(Box::new(self.retried.clone())).map_err(err)?;
        r.register(Box::new(self.dead_lettered.clone()))
            .map_err(err)?;
        r.register(Box::new(self.dropped.clone())).map_err(err)?;
        r.register(Box::new(self.queue_depth.clone()))
            .map_err(err)?;
        Ok(())
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            sent: self.sent.get(),
            retried: self.retried.get(),
            dead_lettered: self.dead_lettered.get(),
            dropped: self.dropped.get(),
            queue_depth: self.queue_depth.get(),
        }
    }
}

/// What happened to an event handed to [`WebhookSender::try_send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// The webhook does not subscribe to this kind.
    Filtered,
    /// The queue was full (counted in `dropped`).
    Dropped,
    /// The worker has stopped (counted in `dropped`).
    Closed,
}

/// The producer side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct WebhookSender {
    tx: mpsc::Sender<WebhookEvent>,
    kinds: u8,
    stats: Arc<WebhookStats>,
}

impl fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSender")
            .field("queued", &self.queue_len())
            .finish()
    }
}

impl WebhookSender {
    /// Build the sender and its worker; run the worker with [`WebhookWorker::run`] (or
    /// [`WebhookWorker::spawn`]) on a tokio runtime. `stats` may be shared across
    /// reloads so the counters are registered once.
    pub fn new(
        config: WebhookConfig,
        stats: Arc<WebhookStats>,
    ) -> Result<(WebhookSender, WebhookWorker), WebhookError> {
        let endpoint = config.validate()?;
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let kinds = config.events.iter().fold(0u8, |k, e| k | e.bit());
        let sender = WebhookSender {
            tx,
            kinds,
            stats: stats.clone(),
        };
        let worker = WebhookWorker {
            rx,
            endpoint,
            config,
            stats,
        };
        Ok((sender, worker))
    }

    /// Whether events of this kind are sent (skip building them otherwise).
    pub fn wants(&self, kind: EventKind) -> bool {
        self.kinds & kind.bit() != 0
    }

    /// Queue an event without waiting.
    pub fn try_send(&self, event: WebhookEvent) -> Enqueued {
        if !self.wants(event.kind) {
            return Enqueued::Filtered;
        }
        match self.tx.try_send(event) {
            Ok(()) => {
                self.stats.queue_depth.inc();
                Enqueued::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.stats.dropped.inc();
                Enqueued::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.stats.dropped.inc();
                Enqueued::Closed
            }
        }
    }

    pub fn queue_len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    pub fn stats(&self) -> &Arc<WebhookStats> {
        &self.stats
    }
}

/// How one POST went.
#[derive(Debug, Clone, PartialEq)]
enum Attempt {
    Delivered,
    Retry {
        retry_after: Option<Duration>,
        why: String,
    },
    Permanent(u16),
}

/// Parse `Retry-After`: delay-seconds or an HTTP-date (relative to `now_unix`).
pub fn parse_retry_after(v: &str, now_unix: i64) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?.timestamp();
    Some(Duration::from_secs(
        at.saturating_sub(now_unix).max(0) as u64
    ))
}

/// The consumer side: posts queued events until every sender is dropped and the queue is
/// empty. Deliveries are sequential, so receivers see events in order.
pub struct WebhookWorker {
    rx: mpsc::Receiver<WebhookEvent>,
    endpoint: Endpoint,
    config: WebhookConfig,
    stats: Arc<WebhookStats>,
}

impl fmt::Debug for WebhookWorker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookWorker")
            .field("config", &self.config)
            .finish()
    }
}

impl WebhookWorker {
    /// The next queued event, taken without sending it (other modules' tests).
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Option<WebhookEvent> {
        self.rx.try_recv().ok()
    }

    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run())
    }

    pub async fn run(mut self) {
        let max_batch = self.config.max_batch;
        while let Some(first) = self.rx.recv().await {
            let mut batch = vec![first];
            while batch.len() < max_batch {
                match self.rx.try_recv() {
                    Ok(e) => batch.push(e),
                    Err(_) => break,
                }
            }
            self.stats.queue_depth.sub(batch.len() as i64);
            self.deliver(batch).await;
        }
    }

    async fn deliver(&self, batch: Vec<WebhookEvent>) {
        let n = batch.len() as u64;
        let delivery_id = format!("dlv_{:032x}", rand::random::<u128>());
        let body = match serde_json::to_vec(&json!({
            "delivery_id": delivery_id,
            "events": batch,
        })) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::warn!(error = %e, "webhook batch could not be serialised; dead-lettered");
                self.stats.dead_lettered.inc_by(n);
                return;
            }
        };
        let backoff = self.config.backoff();
        let max_attempts = self.config.max_attempts.max(1);
        for attempt in 1..=max_attempts {
            match self.post(&body, &delivery_id, attempt).await {
                Attempt::Delivered => {
                    self.stats.sent.inc_by(n);
                    return;
                }
                Attempt::Permanent(status) => {
                    tracing::warn!(host = %self.endpoint.host, delivery = %delivery_id, status, events = n,
                        "webhook receiver rejected the delivery; dead-lettered");
                    self.stats.dead_lettered.inc_by(n);
                    return;
                }
                Attempt::Retry { retry_after, why } => {
                    if attempt == max_attempts {
                        tracing::warn!(host = %self.endpoint.host, delivery = %delivery_id, attempts = attempt,
                            last_error = %why, events = n, "webhook delivery failed; dead-lettered");
                        self.stats.dead_lettered.inc_by(n);
                        return;
                    }
                    let mut wait = backoff.delay(attempt, rand::random::<f64>());
                    if let Some(ra) = retry_after {
                        wait =
                            wait.max(ra.min(Duration::from_millis(self.config.max_retry_after_ms)));
                    }
                    tracing::debug!(host = %self.endpoint.host, delivery = %delivery_id, attempt,
                        error = %why, wait_ms = wait.as_millis() as u64, "webhook delivery will be retried");
                    self.stats.retried.inc();
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    async fn post(&self, body: &Bytes, delivery_id: &str, attempt: u32) -> Attempt {
        let t = crate::dialect::unix_now();
        let path = if self.endpoint.base_path.is_empty() {
            "/".to_string()
        } else {
            self.endpoint.base_path.clone()
        };
        let req = UpstreamRequest {
            method: "POST",
            path,
            headers: vec![
                ("content-type".into(), "application/json".into()),
                (
                    SIGNATURE_HEADER.into(),
                    signature_header(&self.config.secret, t, body),
                ),
                (DELIVERY_HEADER.into(), delivery_id.to_string()),
                (ATTEMPT_HEADER.into(), attempt.to_string()),
            ],
            body: body.clone(),
        };
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let opts = ExchangeOptions {
            connect_timeout: timeout,
            read_timeout: timeout,
            write_timeout: timeout,
            idle_timeout: Duration::from_secs(60),
        };
        let who = self.endpoint.host.clone();
        let exchange = async {
            let resp = upstream::send(&self.endpoint, &req, &opts, &who).await?;
            let status = resp.status();
            let retry_after = resp
                .header_str("retry-after")
                .and_then(|v| parse_retry_after(v, t as i64));
            // Read (and discard) the body so the connection can be reused.
            let _ = resp.body(MAX_RESPONSE_BYTES).await;
            Ok::<_, upstream::UpstreamError>((status, retry_after))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Err(_) => Attempt::Retry {
                retry_after: None,
                why: "timeout".into(),
            },
            Ok(Err(e)) => Attempt::Retry {
                retry_after: None,
                why: e.outcome().to_string(),
            },
            Ok(Ok((status, retry_after))) => match status {
                200..=299 => Attempt::Delivered,
                408 | 429 | 500..=599 => Attempt::Retry {
                    retry_after,
                    why: format!("HTTP {status}"),
                },
                s => Attempt::Permanent(s),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    const SECRET: &str = "whsec_test_0123456789";

    #[derive(Debug, Clone)]
    struct Received {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        at: Instant,
    }

    impl Received {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// How the receiver answers one request.
    #[derive(Clone)]
    struct Reply {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        /// Hold the response this long (a slow receiver).
        delay: Duration,
    }

    fn reply(status: u16) -> Reply {
        Reply {
            status,
            headers: vec![],
            delay: Duration::ZERO,
        }
    }

    /// A real HTTP/1.1 receiver on loopback: replies from `script` in order (the last one
    /// repeats), records every request.
    async fn receiver(
        script: Vec<Reply>,
    ) -> (
        String,
        Arc<Mutex<Vec<Received>>>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/loopgate", listener.local_addr().unwrap());
        let got = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let got2 = got.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let got = got2.clone();
                let script = script.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                    let mut lines = head.split("\r\n");
                    let request_line = lines.next().unwrap_or("").to_string();
                    assert!(
                        request_line.starts_with("POST /hooks/loopgate HTTP/1.1"),
                        "{request_line}"
                    );
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .iter()
                        .find(|(k, _)| k == "content-length")
                        .and_then(|(_, v)| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < head_end + len {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buf[head_end..head_end + len].to_vec();
                    got.lock().unwrap().push(Received {
                        headers,
                        body,
                        at: Instant::now(),
                    });
                    let r = {
                        let mut s = script.lock().unwrap();
                        if s.len() > 1 {
                            s.pop_front().unwrap()
                        } else {
                            s.front().cloned().unwrap_or(reply(200))
                        }
                    };
                    tokio::time::sleep(r.delay).await;
                    let mut resp = format!(
                        "HTTP/1.1 {} X\r\ncontent-length: 2\r\nconnection: close\r\n",
                        r.status
                    );
                    for (k, v) in &r.headers {
                        resp.push_str(&format!("{k}: {v}\r\n"));
                    }
                    resp.push_str("\r\nok");
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (url, got, task)
    }

    fn config(url: &str) -> WebhookConfig {
        let mut c = WebhookConfig::new(url, Secret::new(SECRET.into()));
        c.timeout_ms = 2_000;
        c.backoff_base_ms = 5;
        c.backoff_cap_ms = 20;
        c.max_attempts = 3;
        c
    }

    fn stats() -> Arc<WebhookStats> {
        Arc::new(WebhookStats::new().unwrap())
    }

    /// Poll until `f` holds (bounded: 10 s).
    async fn wait_for(mut f: impl FnMut() -> bool) {
        let start = Instant::now();
        while !f() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "condition not reached in time"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn signature_matches_a_fixed_vector_and_verifies() {
        let s = Secret::new(SECRET.into());
        let body = br#"{"delivery_id":"dlv_1","events":[]}"#;
        let h = signature_header(&s, 1_763_856_000, body);
        // Computed independently: python3 -c 'import hmac,hashlib;print(hmac.new(b"whsec_test_0123456789", b"1763856000." + b"{\"delivery_id\":\"dlv_1\",\"events\":[]}", hashlib.sha256).hexdigest())'
        assert_eq!(h, format!("t=1763856000,v1={}", FIXED_VECTOR));
        assert_eq!(verify_signature(&s, &h, body, 1_763_856_100, 300), Ok(()));
        assert_eq!(
            verify_signature(&s, &h, body, 1_763_857_000, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(&s, &h, b"{}", 1_763_856_000, 300),
            Err(SignatureError::Mismatch)
        );
        let other = Secret::new("other".into());
        assert_eq!(
            verify_signature(&other, &h, body, 1_763_856_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify_signature(&s, "v1=zz", body, 0, 300),
            Err(SignatureError::Malformed)
        );
        assert_eq!(
            verify_signature(&s, "t=1", body, 1, 300),
            Err(SignatureError::Malformed)
        );
    }

    const FIXED_VECTOR: &str = "de8825eb0efb1f4ca421343b8daac655e36ce7e06a0432dae46fb641695006e7";

    #[test]
    fn config_parses_validates_and_never_shows_the_secret() {
        let mut c: WebhookConfig = toml::from_str(
            "url = \"https://hooks.example.com/loopgate?token=abc\"\nsecret_env = \"LG_HOOK\"\nevents = [\"audit\", \"rollback\"]\n",
        )
        .unwrap();
        assert_eq!(c.max_attempts, 8);
        assert!(c.validate().is_err(), "no secret yet");
        assert_eq!(
            c.resolve_secret(|_| None),
            Err(WebhookError::MissingSecret("LG_HOOK".into()))
        );
        c.resolve_secret(|k| (k == "LG_HOOK").then(|| SECRET.to_string()))
            .unwrap();
        let ep = c.validate().unwrap();
        assert!(ep.tls);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains(SECRET) && !dbg.contains("token=abc"), "{dbg}");
        assert!(toml::from_str::<WebhookConfig>("url = \"x\"\nsurprise = 1\n").is_err());
        assert!(toml::from_str::<WebhookConfig>("url = \"x\"\nevents = [\"nope\"]\n").is_err());
        let mut bad = config("ftp://x");
        assert!(bad.validate().is_err());
        bad = config("http://127.0.0.1:1/");
        bad.max_batch = 0;
        assert!(bad.validate().is_err());
        let (sender, worker) = WebhookSender::new(config("http://127.0.0.1:1/h"), stats()).unwrap();
        assert!(!format!("{sender:?}{worker:?}").contains(SECRET));
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        assert_eq!(parse_retry_after(" 7 ", 0), Some(Duration::from_secs(7)));
        let now = chrono::DateTime::parse_from_rfc2822("Sun, 06 Nov 1994 08:49:37 GMT")
            .unwrap()
            .timestamp();
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let mut c = config("http://127.0.0.1:1/h");
        c.queue_capacity = 4;
        c.events = vec![EventKind::Audit, EventKind::Rollback];
        let (sender, _worker) = WebhookSender::new(c, stats()).unwrap();
        let outcomes: Vec<Enqueued> = (0..10)
            .map(|i| sender.try_send(WebhookEvent::new(EventKind::Audit, json!({"i": i}))))
            .collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == Enqueued::Queued).count(),
            4
        );
        assert_eq!(
            outcomes.iter().filter(|o| **o == Enqueued::Dropped).count(),
            6
        );
        assert_eq!(
            sender.try_send(WebhookEvent::new(EventKind::Decision, json!({}))),
            Enqueued::Filtered
        );
        assert!(!sender.wants(EventKind::Decision));
        let s = sender.stats().snapshot();
        assert_eq!((s.dropped, s.queue_depth), (6, 4));
        assert_eq!(sender.queue_len(), 4);
        drop(_worker);
        assert_eq!(
            sender.try_send(WebhookEvent::new(EventKind::Audit, json!({}))),
            Enqueued::Closed
        );
        assert_eq!(sender.stats().snapshot().dropped, 7);
        // Registers once under the documented names.
        let reg = Registry::new();
        sender.stats().register(&reg).unwrap();
        let names: Vec<String> = reg.gather().iter().map(|m| m.name().to_string()).collect();
        for n in [
            "loopgate_webhook_sent_total",
            "loopgate_webhook_retried_total",
            "loopgate_webhook_dead_lettered_total",
            "loopgate_webhook_dropped_total",
            "loopgate_webhook_queue_depth",
        ] {
            assert!(names.iter().any(|x| x == n), "{names:?}");
        }
        assert!(sender.stats().register(&reg).is_err());
    }

    #[tokio::test]
    async fn delivers_signed_batches_the_receiver_can_verify() {
        let (url, got, server) = receiver(vec![reply(200)]).await;
        let (sender, worker) = WebhookSender::new(config(&url), stats()).unwrap();
        let events: Vec<WebhookEvent> = (0..3)
            .map(|i| WebhookEvent::new(EventKind::Rollback, json!({"route": "support", "n": i})))
            .collect();
        for e in &events {
            assert_eq!(sender.try_send(e.clone()), Enqueued::Queued);
        }
        let handle = worker.spawn();
        let st = sender.stats().clone();
        wait_for(|| st.snapshot().sent == 3).await;
        let got = got.lock().unwrap().clone();
        let mut seen = Vec::new();
        let secret = Secret::new(SECRET.into());
        for r in &got {
            let sig = r.header(SIGNATURE_HEADER).unwrap();
            verify_signature(&secret, sig, &r.body, crate::dialect::unix_now(), 300).unwrap();
            assert_eq!(r.header("content-type"), Some("application/json"));
            assert_eq!(r.header(ATTEMPT_HEADER), Some("1"));
            let v: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(v["delivery_id"].as_str(), r.header(DELIVERY_HEADER));
            for e in v["events"].as_array().unwrap() {
                assert_eq!(e["type"], "rollback");
                seen.push(serde_json::from_value::<WebhookEvent>(e.clone()).unwrap());
            }
        }
        assert_eq!(seen, events, "every event once, in order");
        let s = st.snapshot();
        assert_eq!(
            (s.retried, s.dead_lettered, s.dropped, s.queue_depth),
            (0, 0, 0, 0)
        );
        drop(sender);
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
        server.abort();
    }

    #[tokio::test]
    async fn retries_5xx_and_429_with_retry_after_then_succeeds() {
        let mut r429 = reply(429);
        r429.headers = vec![("retry-after", "1")];
        let (url, got, server) = receiver(vec![reply(500), r429, reply(200)]).await;
        let (sender, worker) = WebhookSender::new(config(&url), stats()).unwrap();
        let handle = worker.spawn();
        sender.try_send(WebhookEvent::new(EventKind::Audit, json!({"who": "ops"})));
        let st = sender.stats().clone();
        wait_for(|| st.snapshot().sent == 1).await;
        let got = got.lock().unwrap().clone();
        assert_eq!(got.len(), 3);
        let attempts: Vec<&str> = got
            .iter()
            .filter_map(|r| r.header(ATTEMPT_HEADER))
            .collect();
        assert_eq!(attempts, vec!["1", "2", "3"]);
        assert!(
            got.iter().all(|r| r.body == got[0].body),
            "same body on every retry"
        );
        assert!(got
            .iter()
            .all(|r| r.header(DELIVERY_HEADER) == got[0].header(DELIVERY_HEADER)));
        // The 500 waits the backoff (≤ 20 ms); the 429 waits its Retry-After of 1 s.
        let gap = got[2].at.duration_since(got[1].at);
        assert!(gap >= Duration::from_millis(950), "{gap:?}");
        let s = st.snapshot();
        assert_eq!((s.sent, s.retried, s.dead_lettered), (1, 2, 0));
        drop(sender);
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
        server.abort();
    }

    #[tokio::test]
    async fn dead_letters_after_max_attempts_and_on_client_errors() {
        let (url, got, server) = receiver(vec![reply(503)]).await;
        let (sender, worker) = WebhookSender::new(config(&url), stats()).unwrap();
        let handle = worker.spawn();
        sender.try_send(WebhookEvent::new(EventKind::Audit, json!({})));
        sender.try_send(WebhookEvent::new(EventKind::Audit, json!({})));
        let st = sender.stats().clone();
        wait_for(|| st.snapshot().dead_lettered == 2).await;
        assert_eq!(
            got.lock().unwrap().len(),
            3,
            "max_attempts = 3 POSTs, then give up"
        );
        assert_eq!(st.snapshot().retried, 2);
        assert_eq!(st.snapshot().sent, 0);
        drop(sender);
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
        server.abort();

        // A 4xx other than 408/429 is not retried.
        let (url, got, server) = receiver(vec![reply(401)]).await;
        let (sender, worker) = WebhookSender::new(config(&url), stats()).unwrap();
        let handle = worker.spawn();
        sender.try_send(WebhookEvent::new(EventKind::Audit, json!({})));
        let st = sender.stats().clone();
        wait_for(|| st.snapshot().dead_lettered == 1).await;
        assert_eq!(got.lock().unwrap().len(), 1);
        assert_eq!(st.snapshot().retried, 0);
        drop(sender);
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
        server.abort();

        // Nobody listening: connect errors are retried, then dead-lettered.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/loopgate", closed.local_addr().unwrap());
        drop(closed);
        let (sender, worker) = WebhookSender::new(config(&url), stats()).unwrap();
        let handle = worker.spawn();
        sender.try_send(WebhookEvent::new(EventKind::Audit, json!({})));
        let st = sender.stats().clone();
        wait_for(|| st.snapshot().dead_lettered == 1).await;
        assert_eq!(st.snapshot().retried, 2);
        drop(sender);
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn a_slow_receiver_never_blocks_try_send() {
        let mut slow = reply(200);
        slow.delay = Duration::from_millis(1500);
        let (url, got, server) = receiver(vec![slow]).await;
        let mut c = config(&url);
        c.queue_capacity = 1000;
        c.max_batch = 10;
        let (sender, worker) = WebhookSender::new(c, stats()).unwrap();
        let handle = worker.spawn();
        sender.try_send(WebhookEvent::new(EventKind::Audit, json!({"first": true})));
        // Let the worker pick it up and wait on the receiver.
        wait_for(|| !got.lock().unwrap().is_empty()).await;
        let start = Instant::now();
        let mut worst = Duration::ZERO;
        let mut queued = 0;
        for i in 0..20_000 {
            let t = Instant::now();
            if sender.try_send(WebhookEvent::new(EventKind::Audit, json!({"i": i})))
                == Enqueued::Queued
            {
                queued += 1;
            }
            worst = worst.max(t.elapsed());
        }
        let total = start.elapsed();
        let s = sender.stats().snapshot();
        eprintln!("slow receiver: 20 000 try_send in {total:?} (worst {worst:?}); queued {queued}, dropped {}", s.dropped);
        assert!(total < Duration::from_millis(1000), "{total:?}");
        assert_eq!(queued, 1000);
        assert_eq!(s.dropped, 19_000);
        drop(sender);
        handle.abort();
        server.abort();
    }
}
