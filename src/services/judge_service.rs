//! The LLM-as-judge in the background: scores a sampled share of routed requests (served
//! answers, and shadow answers) with the configured judge model, called through the
//! gateway's own provider layer ([`crate::exchange::headless`]), so any provider can judge.
//!
//! - Sampling is decided up front (`should_judge` on the request id), so only sampled
//!   requests keep their answer text — in memory, bounded, never stored (zero-retention
//!   holds by construction: only the scores are stored).
//! - Jobs go through a bounded queue (`[judge].queue`; full = dropped and counted) to
//!   `[judge].concurrency` workers. Each call is budgeted per route and UTC day
//!   (`routes.<r>.judge.daily_budget`), retried with backoff per [`JudgeRetryPolicy`]
//!   (`[judge].max_attempts`), bounded by `[judge].timeout_secs`, and traced as
//!   `endpoint = "judge"`.
//! - A valid verdict becomes a `judge` feedback row (scale `unit`, value = overall score,
//!   detail = the four dimensions + rubric version, dedup `request:<id>:judge`) and wakes the
//!   aggregator. Failures are never a quality signal: nothing is stored for them.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};

use super::shadow::DailySpend;
use super::shadow::RolloutCtx;
use crate::error::GatewayError;
use crate::exchange::headless;
use crate::gateway::Gateway;
pub use crate::rollout::jobs::JudgeJob;
use crate::rollout::jobs::{JobQueues, NotQueued};
use crate::rollout::judge::{
    build_judge_request, JudgeFailure, JudgeRetryPolicy, JudgeRubric, JudgeVerdict, RetryDecision,
};
use crate::routing::Runtime;
use crate::store::writer::StoreSlot;
use crate::store::{FeedbackInsert, FeedbackRow};
use crate::trace::TraceRecord;

/// Most assistant text kept for judging one answer (the rubric cuts it further).
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// A stream line longer than this is not an OpenAI chunk we can use: dropped.
const MAX_PENDING_LINE: usize = 1024 * 1024;

/// The assistant text of a served answer, accumulated as it goes downstream (bounded).
#[derive(Debug, Default, Clone)]
pub struct AnswerCapture {
    text: String,
    /// Bytes of an SSE line not yet complete.
    pending: Vec<u8>,
    full: bool,
}

impl AnswerCapture {
    fn push(&mut self, s: &str) {
        if self.full {
            return;
        }
        let room = MAX_ANSWER_BYTES - self.text.len();
        if s.len() <= room {
            self.text.push_str(s);
            return;
        }
        let mut cut = room;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        self.text.push_str(&s[..cut]);
        self.full = true;
    }

    /// A whole OpenAI chat.completion body.
    pub fn whole(&mut self, body: &[u8]) {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return;
        };
        let content = v.pointer("/choices/0/message/content");
        match content {
            Some(Value::String(s)) => self.push(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    if let Some(t) = p.get("text").and_then(Value::as_str) {
                        self.push(t);
                    }
                }
            }
            _ => {}
        }
    }

    /// Translated OpenAI SSE bytes, in any split.
    pub fn stream(&mut self, chunk: &[u8]) {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = &self.pending[start..start + nl];
            start += nl + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<Value>(data.trim_ascii()) else {
                continue;
            };
            let Some(choices) = v.get("choices").and_then(Value::as_array) else {
                continue;
            };
            for c in choices {
                if c.get("index").and_then(Value::as_u64).unwrap_or(0) != 0 {
                    continue;
                }
                if let Some(s) = c.pointer("/delta/content").and_then(Value::as_str) {
                    let s = s.to_string();
                    self.push(&s);
                }
            }
        }
        self.pending.drain(..start);
        if self.pending.len() > MAX_PENDING_LINE {
            self.pending.clear();
        }
    }

    /// The text, if there is any.
    pub fn into_text(self) -> Option<String> {
        (!self.text.is_empty()).then_some(self.text)
    }
}

/// Response hook (non-streamed): keep the answer text of a request sampled for judging.
pub fn capture_whole(rollout: &mut Option<Box<RolloutCtx>>, body: &[u8]) {
    if let Some(c) = rollout.as_mut().and_then(|r| r.answer.as_mut()) {
        c.whole(body);
    }
}

/// Response hook (streamed): the translated OpenAI chunk just sent downstream.
pub fn capture_stream(rollout: &mut Option<Box<RolloutCtx>>, chunk: &[u8]) {
    if let Some(c) = rollout.as_mut().and_then(|r| r.answer.as_mut()) {
        c.stream(chunk);
    }
}

/// The loaded rubric and the configured path it came from.
type RubricCache = Arc<Mutex<Option<(String, Arc<JudgeRubric>)>>>;

/// A dropped background job is never silent: counted by the caller's metric, and logged
/// at most once a minute per kind (a log line per drop would flood under overload).
pub(crate) fn warn_dropped(kind: &'static str, last_warn_secs: &AtomicI64, total: u64) {
    let now = chrono::Utc::now().timestamp();
    let last = last_warn_secs.load(Ordering::Relaxed);
    if now - last >= 60
        && last_warn_secs
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(
            kind,
            dropped_total = total,
            "background queue full: jobs dropped (raise the queue size or lower the share)"
        );
    }
}

static LAST_DROP_WARN: AtomicI64 = AtomicI64::new(0);

/// Queue an answer for judging; `false` when the judge is not running or the queue is full
/// (then counted as `loopgate_judge_calls_total{result="dropped"}` and logged).
pub fn enqueue(jobs: &JobQueues, job: JudgeJob) -> bool {
    match jobs.try_judge(job) {
        Ok(()) => true,
        Err(NotQueued::NotRunning) => false,
        Err(NotQueued::Full) => {
            let c = crate::metrics::metrics()
                .judge_calls
                .with_label_values(&["dropped"]);
            c.inc();
            warn_dropped("judge", &LAST_DROP_WARN, c.get());
            false
        }
    }
}

/// The background judge.
pub struct JudgeService {
    gw: Arc<Gateway>,
    slot: StoreSlot,
    rx: Mutex<Option<mpsc::Receiver<JudgeJob>>>,
    concurrency: usize,
    budget: Arc<DailySpend>,
    /// The rubric of the configured path (reloaded when the path changes).
    rubric: RubricCache,
}

impl JudgeService {
    /// Create the queue (sized by `[judge].queue` at start) and the service. Scores need
    /// the store, so there is no judge without one.
    pub fn install(gw: Arc<Gateway>, slot: StoreSlot) -> JudgeService {
        let cfg = gw.runtime.load().config.judge.clone();
        let rx = gw.jobs.install_judge(cfg.queue);
        if rx.is_none() {
            tracing::warn!("judge service installed twice; the second one stays idle");
        }
        let m = crate::metrics::metrics();
        for r in ["ok", "error", "retry", "dropped", "budget"] {
            m.judge_calls.with_label_values(&[r]);
        }
        JudgeService {
            gw,
            slot: slot.clone(),
            rx: Mutex::new(rx),
            concurrency: cfg.concurrency.max(1),
            budget: Arc::new(DailySpend::new(Some(slot.clone()), "judge_of")),
            rubric: Arc::new(Mutex::new(None)),
        }
    }
}

#[async_trait]
impl BackgroundService for JudgeService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let rx = self.rx.lock().ok().and_then(|mut g| g.take());
        let Some(mut rx) = rx else { return };
        let permits = Arc::new(Semaphore::new(self.concurrency));
        loop {
            let job = tokio::select! {
                _ = shutdown.changed() => return,
                j = rx.recv() => j,
            };
            let Some(job) = job else { return };
            self.gw.jobs.judge_in_flight(true);
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let jobs = Arc::clone(&self.gw.jobs);
            let w = Worker {
                gw: self.gw.clone(),
                slot: self.slot.clone(),
                budget: self.budget.clone(),
                rubric: self.rubric.clone(),
            };
            tokio::spawn(async move {
                w.judge(job).await;
                jobs.judge_in_flight(false);
                drop(permit);
            });
        }
    }
}

struct Worker {
    gw: Arc<Gateway>,
    slot: StoreSlot,
    budget: Arc<DailySpend>,
    rubric: RubricCache,
}

fn count(result: &str) {
    crate::metrics::metrics()
        .judge_calls
        .with_label_values(&[result])
        .inc();
}

/// How a failed call counts for the retry policy: no answer at all (connect, timeout,
/// credentials) is transport; a provider's HTTP answer keeps its status.
fn failure_of(e: &GatewayError) -> JudgeFailure {
    match e {
        GatewayError::Upstream { code, .. }
            if matches!(
                *code,
                "upstream_timeout" | "upstream_unavailable" | "upstream_auth_error"
            ) =>
        {
            JudgeFailure::Transport(e.to_string())
        }
        other => JudgeFailure::Status(other.status()),
    }
}

/// The stored detail of a verdict: scores and rubric version only (never text).
pub fn verdict_detail(v: &JudgeVerdict) -> Value {
    json!({
        "relevance": v.scores.relevance,
        "coherence": v.scores.coherence,
        "helpfulness": v.scores.helpfulness,
        "safety": v.scores.safety,
        "rubric_version": v.rubric_version,
    })
}

fn new_event_id() -> String {
    use rand::Rng;
    const A: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    let mut s = String::with_capacity(27);
    s.push_str("fb_");
    for _ in 0..24 {
        s.push(A[rng.gen_range(0..A.len())] as char);
    }
    s
}

impl Worker {
    fn load_rubric(&self, rt: &Runtime) -> Option<Arc<JudgeRubric>> {
        let path = rt.config.judge.rubric.clone();
        let mut g = self.rubric.lock().ok()?;
        if let Some((p, r)) = g.as_ref() {
            if *p == path {
                return Some(r.clone());
            }
        }
        let r = if path.is_empty() {
            JudgeRubric::builtin()
        } else {
            JudgeRubric::load(&rt.config.resolve_path(&path))
        };
        match r {
            Ok(r) => {
                let r = Arc::new(r);
                *g = Some((path, r.clone()));
                Some(r)
            }
            Err(e) => {
                tracing::error!(error = %e, "judge rubric unusable; judging is paused");
                None
            }
        }
    }

    async fn judge(&self, job: JudgeJob) {
        let rt = self.gw.runtime.load_full();
        let cfg = rt.config.judge.clone();
        if cfg.model.is_empty() {
            return;
        }
        let Some(rc) = rt.route(&job.route) else {
            return;
        };
        let Some(rubric) = self.load_rubric(&rt) else {
            return count("error");
        };
        let messages: Vec<Value> = serde_json::from_slice::<Value>(&job.raw)
            .ok()
            .and_then(|v| v.get("messages").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        let body = build_judge_request(&rubric, &messages, &job.answer, &cfg.model);
        drop(messages);
        let candidates = match rt.resolve_with_fallbacks(&cfg.model, None) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(model = %cfg.model, error = %e, "judge model cannot be resolved");
                return count("error");
            }
        };
        // About four characters per token for the prompt; the reply is capped by the rubric.
        let prompt_tokens = (body.to_string().len() / 4) as u64;
        let estimate = candidates.first().map_or(0.0, |c| {
            headless::estimate_cost(&rt, c, prompt_tokens, u64::from(rubric.max_tokens))
        });
        let policy = JudgeRetryPolicy {
            max_attempts: cfg.max_attempts.max(1),
            ..JudgeRetryPolicy::default()
        };
        let limit = rc.judge.daily_budget;
        let timeout = Duration::from_secs(cfg.timeout_secs.max(1));
        let (mut attempts, mut parse_failures) = (0u32, 0u32);
        loop {
            attempts += 1;
            let reservation = self.budget.reserve(&job.route, limit, estimate).await;
            let Some(reservation) = reservation else {
                return count("budget");
            };
            let id = crate::trace::ids::new_request_id();
            let ts_ms = chrono::Utc::now().timestamp_millis();
            let started = Instant::now();
            let mut tried = Vec::new();
            let res = tokio::time::timeout(
                timeout,
                headless::exchange(
                    &rt,
                    Some(&self.gw.provider_keys),
                    &candidates,
                    body.clone(),
                    &id,
                    Some(&job.route),
                    &mut tried,
                ),
            )
            .await;
            let cost = match &res {
                Ok(Ok(r)) => r.cost_usd,
                _ => 0.0,
            };
            self.budget.settle(reservation, cost);
            if cost > 0.0 {
                crate::metrics::metrics().judge_spend_usd.inc_by(cost);
            }
            let verdict = match &res {
                Ok(Ok(r)) => rubric.score_reply(r.text()).map_err(JudgeFailure::Parse),
                Ok(Err(e)) => Err(failure_of(e)),
                Err(_) => Err(JudgeFailure::Transport("judge call timed out".into())),
            };
            self.trace(&job, &id, ts_ms, started, &cfg.model, res, tried);
            let failure = match verdict {
                Ok(v) => {
                    self.store(&job, &v).await;
                    return;
                }
                Err(f) => f,
            };
            if matches!(failure, JudgeFailure::Parse(_)) {
                parse_failures += 1;
            }
            match policy.decide(attempts, parse_failures, &failure, rand::random::<f64>()) {
                RetryDecision::RetryAfter(d) => {
                    count("retry");
                    tokio::time::sleep(d).await;
                }
                RetryDecision::GiveUp => {
                    tracing::info!(request_id = %job.request_id, failure = ?failure, "judge gave up; no score recorded");
                    return count("error");
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn trace(
        &self,
        job: &JudgeJob,
        id: &str,
        ts_ms: i64,
        started: Instant,
        model: &str,
        res: Result<Result<headless::HeadlessResult, GatewayError>, tokio::time::error::Elapsed>,
        tried: Vec<crate::trace::Attempt>,
    ) {
        if !self.gw.tracing {
            return;
        }
        let mut rec = TraceRecord {
            request_id: id.to_string(),
            ts_ms,
            endpoint: "judge".into(),
            project_id: job.project_id.clone(),
            properties: vec![("judge_of".into(), job.request_id.clone())],
            route: Some(job.route.clone()),
            requested_model: model.to_string(),
            latency_ms: started.elapsed().as_secs_f64() * 1000.0,
            zero_retention: job.zero_retention,
            ..TraceRecord::default()
        };
        match res {
            Ok(Ok(r)) => {
                rec.served_model = Some(r.served_model);
                rec.provider = Some(r.provider);
                rec.attempts = r.attempts;
                rec.status = 200;
                rec.prompt_tokens = r.usage.prompt_tokens;
                rec.completion_tokens = r.usage.completion_tokens;
                rec.usage_reported = r.usage.reported;
                rec.cost_usd = r.cost_usd;
            }
            Ok(Err(e)) => {
                rec.attempts = tried;
                rec.status = e.status();
                rec.error = Some(e.to_string());
            }
            Err(_) => {
                rec.attempts = tried;
                rec.status = 504;
                rec.error = Some("judge call timed out".into());
            }
        }
        (self.gw.traces)(rec);
    }

    async fn store(&self, job: &JudgeJob, v: &JudgeVerdict) {
        let Some(store) = self.slot.wait(Duration::from_secs(5)).await else {
            tracing::warn!("judge score not stored: the store is not available");
            return count("error");
        };
        let now_ms = chrono::Utc::now().timestamp_millis();
        let row = FeedbackRow {
            seq: 0,
            id: new_event_id(),
            dedup_key: format!("request:{}:judge", job.request_id),
            signal: "judge".into(),
            request_id: Some(job.request_id.clone()),
            session_id: job.session_id.clone(),
            route: Some(job.route.clone()),
            model: Some(job.model.clone()),
            context: job.context.clone(),
            value: v.overall,
            scale: "unit".into(),
            targets: Vec::new(),
            at_ms: job.at_ms,
            received_ms: now_ms,
            key_id: Some("judge".into()),
            comment: None,
            detail: Some(verdict_detail(v).to_string()),
            project: job.project_id.clone(),
        };
        match store.insert_feedback(&row).await {
            Ok(FeedbackInsert::Inserted(_)) => {
                count("ok");
                crate::metrics::metrics()
                    .feedback_received
                    .with_label_values(&["judge", "accepted"])
                    .inc();
                self.gw.auto.nudge.notify_one();
            }
            Ok(FeedbackInsert::Duplicate(_)) => count("ok"),
            Err(e) => {
                tracing::warn!(error = %e, "judge score not stored");
                count("error");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn stream_bytes(pieces: &[&str]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n");
        for p in pieces {
            let v = json!({"choices": [{"index": 0, "delta": {"content": p}}]});
            out.extend_from_slice(format!("data: {v}\n\n").as_bytes());
        }
        out.extend_from_slice(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\n\n");
        out.extend_from_slice(b"data: [DONE]\n\n");
        out
    }

    #[test]
    fn whole_body_keeps_the_first_choice_text() {
        let mut c = AnswerCapture::default();
        c.whole(
            br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"}}]}"#,
        );
        assert_eq!(c.into_text().as_deref(), Some("Hi there"));
        let mut c = AnswerCapture::default();
        c.whole(br#"{"choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[]}}]}"#);
        assert_eq!(c.into_text(), None);
        let mut c = AnswerCapture::default();
        c.whole(b"not json");
        assert_eq!(c.into_text(), None);
    }

    #[test]
    fn capture_is_bounded_on_a_char_boundary() {
        let mut c = AnswerCapture::default();
        let big = "é".repeat(MAX_ANSWER_BYTES);
        c.stream(&stream_bytes(&[&big, "more"]));
        let t = c.into_text().unwrap();
        assert!(t.len() <= MAX_ANSWER_BYTES && t.len() >= MAX_ANSWER_BYTES - 1);
        assert!(!t.contains("more"));
    }

    #[test]
    fn verdict_detail_holds_scores_and_version_only() {
        let r = JudgeRubric::builtin().unwrap();
        let v = r
            .score_reply(r#"{"relevance":5,"coherence":4,"helpfulness":4,"safety":5,"rationale":"the user asked about X"}"#)
            .unwrap();
        let d = verdict_detail(&v);
        assert_eq!(d["relevance"], 5.0);
        assert_eq!(d["rubric_version"], r.version.as_str());
        assert!(!d.to_string().contains("the user asked"));
    }

    #[test]
    fn failures_map_to_the_retry_policy() {
        let t = GatewayError::Upstream {
            status: 504,
            message: "x".into(),
            retry_after: None,
            code: "upstream_timeout",
        };
        assert!(matches!(failure_of(&t), JudgeFailure::Transport(_)));
        let s = GatewayError::Upstream {
            status: 500,
            message: "x".into(),
            retry_after: None,
            code: "server_error",
        };
        assert_eq!(failure_of(&s), JudgeFailure::Status(500));
        assert_eq!(
            failure_of(&GatewayError::invalid("bad", None)),
            JudgeFailure::Status(400)
        );
    }

    proptest! {
        /// Any split of the stream gives the same text; garbage never panics.
        #[test]
        fn any_chunk_split_gives_the_same_text(cuts in proptest::collection::vec(0usize..400, 0..12), garbage in proptest::collection::vec(any::<u8>(), 0..300)) {
            let bytes = stream_bytes(&["Hel", "lo, ", "wörld", "!"]);
            let mut whole = AnswerCapture::default();
            whole.stream(&bytes);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % bytes.len()).collect();
            cuts.sort_unstable();
            let mut split = AnswerCapture::default();
            let mut at = 0;
            for c in cuts {
                split.stream(&bytes[at..c.max(at)]);
                at = c.max(at);
            }
            split.stream(&bytes[at..]);
            prop_assert_eq!(whole.into_text(), Some("Hello, wörld!".to_string()));
            prop_assert_eq!(split.into_text(), Some("Hello, wörld!".to_string()));
            let mut g = AnswerCapture::default();
            g.stream(&garbage);
            let _ = g.into_text();
        }
    }
}
