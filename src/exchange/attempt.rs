//! One attempt of the fallback loop, and the loop's order: shared by the proxy (which streams
//! the answer to a client) and the headless exchange (which needs it whole), so both fall back,
//! retry a rejected runtime key and classify failures by the same rules.
//!
//! An attempt is: check the candidate can take the request, build the native request, let the
//! caller add headers (trace context), sign, send, and read an error answer. What happens with
//! a successful answer (stream it, or read and translate it whole) is the caller's.

use bytes::Bytes;

use crate::auth::provider_keys::ProviderKeys;
use crate::dialect::{DialectError, Target, UpstreamRequest};
use crate::routing::{Candidate, Runtime};
use crate::upstream::{self, UpstreamError, UpstreamResponse};

use super::{build, exchange_options, key_rejected, sign_attempt, Op};

/// Extra attempts of one request with another runtime key of a provider after a 401/403/429.
pub const MAX_KEY_RETRIES: usize = 8;

/// Largest error body read from an upstream (its message and fields reach the client).
const ERROR_BODY_LIMIT: usize = 1024 * 1024;

/// Where providers put their own request id (OpenAI and most OpenAI-compatible APIs,
/// Anthropic, AWS, Azure, Google), in order of preference.
pub const UPSTREAM_REQUEST_ID_HEADERS: &[&str] = &[
    "x-request-id",
    "request-id",
    "x-amzn-requestid",
    "x-amz-request-id",
    "apim-request-id",
    "x-ms-request-id",
    "x-goog-request-id",
    "x-trace-id",
];

/// What went wrong in an attempt; each kind is presented to its caller in its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The candidate cannot take this request (a parameter or an input it does not support):
    /// a 400 when no candidate is left.
    Unsupported,
    /// Building the native request failed.
    Build,
    /// The provider's credential could not be obtained or applied.
    Sign,
    /// No answer: connect error, timeout or closed connection.
    Transport,
    /// The upstream answered with an error status.
    Http,
}

/// Why an attempt failed, and what the fallback loop may do about it.
#[derive(Debug, Clone)]
pub struct AttemptFailure {
    pub kind: FailureKind,
    /// The status the client gets when this is the last failure.
    pub status: u16,
    pub code: &'static str,
    /// What failed, without the provider's name.
    pub message: String,
    /// The request parameter at fault (`Unsupported` only).
    pub param: Option<String>,
    /// Outcome label for the trace's attempt and the attempts metric.
    pub outcome: &'static str,
    /// The upstream's status, when it answered.
    pub upstream_status: Option<u16>,
    pub retry_after: Option<String>,
    pub upstream_request_id: Option<String>,
    /// The upstream's error body (`Http` only; bounded), for fields passed through to the client.
    pub body: Bytes,
    /// Another candidate may succeed where this one failed.
    pub fallback: bool,
    /// The runtime key the attempt was signed with was rejected (and cooled down): the same
    /// candidate is worth another attempt with the provider's next key.
    pub key_rejected: bool,
}

impl AttemptFailure {
    fn new(kind: FailureKind, status: u16, code: &'static str, message: String) -> Self {
        AttemptFailure {
            kind,
            status,
            code,
            message,
            param: None,
            outcome: match kind {
                FailureKind::Unsupported => "unsupported",
                FailureKind::Build => "build_error",
                FailureKind::Sign => "sign_error",
                FailureKind::Transport | FailureKind::Http => "http_error",
            },
            upstream_status: None,
            retry_after: None,
            upstream_request_id: None,
            body: Bytes::new(),
            // Every failure but an error answer the dialect calls final is worth a fallback.
            fallback: true,
            key_rejected: false,
        }
    }

    /// A transport failure (no answer), as the client sees it: 504 for a timeout, else 502.
    pub fn transport(e: &UpstreamError) -> Self {
        let timeout = matches!(e, UpstreamError::Timeout(_));
        let mut f = AttemptFailure::new(
            FailureKind::Transport,
            if timeout { 504 } else { 502 },
            if timeout {
                "upstream_timeout"
            } else {
                "upstream_unavailable"
            },
            e.to_string(),
        );
        f.outcome = e.outcome();
        f
    }
}

/// What the fallback loop does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The same candidate again, signed with the provider's next runtime key.
    Again,
    /// The next candidate.
    Next,
    /// No further attempt: the failure is the answer.
    Stop,
}

/// The order of attempts: each candidate once, in order, and a candidate again (bounded by
/// [`MAX_KEY_RETRIES`]) when the provider rejected the runtime key it was signed with.
pub struct Plan<'c> {
    candidates: &'c [Candidate],
    /// `candidates.len()`, kept apart so the order's rules are tested without candidates.
    len: usize,
    next: usize,
    key_retries: usize,
}

impl<'c> Plan<'c> {
    pub fn new(candidates: &'c [Candidate]) -> Self {
        Plan {
            candidates,
            len: candidates.len(),
            next: 0,
            key_retries: 0,
        }
    }

    /// The next attempt's candidate and its index.
    pub fn next_attempt(&mut self) -> Option<(usize, &'c Candidate)> {
        let i = self.next;
        let cand = self.candidates.get(i)?;
        self.next += 1;
        Some((i, cand))
    }

    /// Whether a candidate after `i` remains.
    pub fn more_after(&self, i: usize) -> bool {
        i + 1 < self.len
    }

    /// What to do after attempt `i` failed with `f`.
    pub fn after(&mut self, i: usize, f: &AttemptFailure) -> Step {
        if f.key_rejected && self.key_retries < MAX_KEY_RETRIES {
            self.key_retries += 1;
            self.next = i;
            return Step::Again;
        }
        if !self.more_after(i) {
            return Step::Stop;
        }
        if f.fallback {
            Step::Next
        } else {
            Step::Stop
        }
    }
}

/// Check, build, sign and send one attempt on `cand`, and read an error answer. `prepare`
/// adds the caller's headers to the native request before it is signed (a signer that signs
/// every header covers them). `Ok` is a 2xx answer whose body is still to be read.
#[allow(clippy::too_many_arguments)]
pub async fn send(
    rt: &Runtime,
    keys: Option<&ProviderKeys>,
    cand: &Candidate,
    op: &Op<'_>,
    target: &Target<'_>,
    route: Option<&str>,
    prepare: impl FnOnce(&mut UpstreamRequest),
) -> Result<UpstreamResponse, AttemptFailure> {
    let prov = &cand.provider;
    // Capability check before any upstream call (the catalog knows vision models).
    if let Op::Chat(r) = op {
        let info = rt.catalog.get(&prov.profile.catalog_providers, &cand.model);
        if r.has_images() && info.is_some_and(|i| !i.vision && i.has_prices()) {
            let mut f = AttemptFailure::new(
                FailureKind::Unsupported,
                400,
                "model_not_vision_capable",
                format!(
                    "Model '{}' on provider '{}' does not accept image input.",
                    cand.model,
                    prov.name()
                ),
            );
            f.param = Some("messages".into());
            return Err(f);
        }
    }
    let mut req = match build(prov, op, target) {
        Ok(r) => r,
        Err(DialectError::Unsupported { message, param }) => {
            let mut f = AttemptFailure::new(
                FailureKind::Unsupported,
                400,
                "unsupported_parameter",
                message,
            );
            f.param = param;
            return Err(f);
        }
        Err(e) => {
            return Err(AttemptFailure::new(
                FailureKind::Build,
                500,
                "internal_error",
                e.to_string(),
            ))
        }
    };
    for (k, v) in &prov.profile.headers {
        req.headers.push((k.clone(), v.clone()));
    }
    prepare(&mut req);
    let used_key = sign_attempt(prov, keys, &mut req).await.map_err(|e| {
        // SignError messages name variables, never credential values.
        AttemptFailure::new(
            FailureKind::Sign,
            502,
            "upstream_auth_error",
            format!("could not authenticate to {}: {e}", prov.name()),
        )
    })?;
    let opts = exchange_options(rt, prov, route);
    let resp = upstream::send(&prov.endpoint, &req, &opts, prov.name())
        .await
        .map_err(|e| AttemptFailure::transport(&e))?;
    let status = resp.status();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let upstream_request_id = upstream_request_id(&resp);
    let retry_after = resp.header_str("retry-after").map(str::to_string);
    let body = resp.body(ERROR_BODY_LIMIT).await.unwrap_or_default();
    let retry_after = retry_after.or_else(|| retry_delay_from_body(&body));
    let class = prov.dialect().classify_error(status, &body);
    let mut f = AttemptFailure::new(FailureKind::Http, status, class.code, class.message);
    f.outcome = if class.code == "overloaded" {
        "overloaded"
    } else {
        "http_error"
    };
    f.upstream_status = Some(status);
    f.key_rejected = key_rejected(keys, used_key.as_deref(), status, retry_after.as_deref());
    f.retry_after = retry_after;
    f.upstream_request_id = upstream_request_id;
    f.fallback = class.retryable;
    f.body = body;
    Err(f)
}

/// The upstream's own request id of an answer, when it sent a usable one.
pub fn upstream_request_id(resp: &UpstreamResponse) -> Option<String> {
    UPSTREAM_REQUEST_ID_HEADERS
        .iter()
        .find_map(|h| resp.header_str(h))
        .filter(|v| !v.is_empty() && v.len() <= 256)
        .map(str::to_string)
}

/// Google APIs put the wait in the body (`RetryInfo.retryDelay: "7s"`), not in a header.
fn retry_delay_from_body(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let details = v.get("error")?.get("details")?.as_array()?;
    details.iter().find_map(|d| {
        let s = d.get("retryDelay")?.as_str()?;
        let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
        Some(format!("{}", secs.ceil() as u64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failure(fallback: bool, key_rejected: bool) -> AttemptFailure {
        let mut f = AttemptFailure::new(FailureKind::Http, 429, "rate_limit", "slow down".into());
        f.fallback = fallback;
        f.key_rejected = key_rejected;
        f
    }

    #[test]
    fn the_plan_falls_back_retries_rejected_keys_and_stops() {
        let none: [Candidate; 0] = [];
        assert!(Plan::new(&none).next_attempt().is_none());
        // Two candidates; the rules look at indices only.
        let mut p = Plan {
            candidates: &none,
            len: 2,
            next: 1,
            key_retries: 0,
        };
        assert_eq!(p.after(0, &failure(true, false)), Step::Next);
        assert_eq!(p.after(0, &failure(false, false)), Step::Stop);
        assert_eq!(p.after(1, &failure(true, false)), Step::Stop);
        for _ in 0..MAX_KEY_RETRIES {
            p.next = 1;
            assert_eq!(p.after(0, &failure(true, true)), Step::Again);
            assert_eq!(p.next, 0, "the same candidate is next");
        }
        // Retries spent: a rejected key falls back like any retryable failure.
        assert_eq!(p.after(0, &failure(true, true)), Step::Next);
        assert_eq!(p.after(1, &failure(true, true)), Step::Stop);
    }

    #[test]
    fn retry_delay_is_read_from_a_google_error_body() {
        let body = br#"{"error":{"details":[{"@type":"x"},{"retryDelay":"6.2s"}]}}"#;
        assert_eq!(retry_delay_from_body(body).as_deref(), Some("7"));
        assert_eq!(retry_delay_from_body(b"{}"), None);
    }

    #[test]
    fn transport_failures_map_timeouts_to_504() {
        let t = AttemptFailure::transport(&UpstreamError::Timeout("p".into()));
        assert_eq!(
            (t.status, t.code, t.outcome),
            (504, "upstream_timeout", "timeout")
        );
        let c = AttemptFailure::transport(&UpstreamError::Io("p".into(), "ReadError".into()));
        assert_eq!(
            (c.status, c.code, c.outcome),
            (502, "upstream_unavailable", "io_error")
        );
        assert!(c.fallback && !c.key_rejected);
    }
}
