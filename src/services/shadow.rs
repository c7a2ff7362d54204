//! Shadow calls: on a route in `shadow` mode the client is served the baseline, untouched;
//! for a sampled share of those requests whose router pick (`would_have`) differs, the pick
//! is also called in the background with the same request, so both answers can be compared
//! (and judged).
//!
//! Off the client's path by construction: the request path only decides (a hash of the
//! request id) and keeps a reference to the body bytes it already has; the logging phase
//! hands a job to a bounded queue with `try_send` (a full queue drops the job and counts
//! it). Workers spend within a per-route daily budget (estimate held before the call,
//! settled with the real cost after), trace each call as `endpoint = "shadow"`,
//! `shadow = true` (never counted as served traffic) and never store prompt or answer text.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::Value;
use tokio::sync::{mpsc, Semaphore};

use super::judge_service::{self, AnswerCapture};
use crate::dialect::{ChatRequest, Usage};
use crate::exchange::headless;
use crate::feedback::{Decision, Mode};
use crate::gateway::Gateway;
pub use crate::rollout::jobs::ShadowJob;
use crate::rollout::jobs::{JobQueues, JudgeJob, NotQueued};
use crate::rollout::judge::{JudgeBudget, Reservation};
use crate::rollout::stable_unit;
use crate::routing::Runtime;
use crate::store::writer::StoreSlot;
use crate::store::{GroupBy, LogFilter};
use crate::trace::TraceRecord;

/// Pending shadow calls; beyond this new ones are dropped (and counted).
pub const QUEUE: usize = 1000;
/// Shadow calls in flight at once.
pub const CONCURRENCY: usize = 4;

/// What a sampled request keeps for the background work, in its request context.
pub struct RolloutCtx {
    /// The client's request body (a reference-counted view of bytes already in memory).
    pub(crate) raw: Bytes,
    /// Call this model (index into the decision's route) in the background.
    pub(crate) shadow: Option<usize>,
    /// Score the served answer (and the shadow answer) with the judge.
    pub(crate) judge: bool,
    /// The served assistant text, bounded (only when judged).
    pub(crate) answer: Option<AnswerCapture>,
}

/// Whether a request is in the shadow sample: deterministic per request id.
pub fn in_shadow_sample(request_id: &str, share: f64) -> bool {
    share > 0.0 && stable_unit("loopgate-shadow", request_id, "") < share
}

/// The model a shadow call goes to: the router's pick when it is not the baseline; otherwise
/// one of the candidates still under evaluation (explorable: within the cost and latency
/// limits and not shown worse by production evidence), chosen by request id — so a route in
/// shadow gathers evidence on its candidates even while the router keeps the baseline.
pub fn shadow_target(request_id: &str, d: &Decision) -> Option<usize> {
    if d.chosen != 0 {
        return Some(d.chosen);
    }
    let ctx = crate::feedback::RequestContext::default();
    let open: Vec<usize> = (1..d.route.models.len())
        .filter(|&i| d.route.explorable(i, &ctx))
        .collect();
    if open.is_empty() {
        return None;
    }
    let u = stable_unit("loopgate-shadow-target", request_id, "");
    open.get(((u * open.len() as f64) as usize).min(open.len() - 1))
        .copied()
}

/// Request phase (`routed::candidates`): decide once whether this request gets a shadow call
/// and/or a judge score, and keep what they need. `None` for the vast majority: no cost.
pub fn prepare(
    jobs: &JobQueues,
    rt: &Runtime,
    request_id: &str,
    req: &ChatRequest,
    route: &str,
    d: &Decision,
) -> Option<Box<RolloutCtx>> {
    let rc = rt.route(route)?;
    let shadow = (jobs.shadow_running()
        && d.route.mode == Mode::Shadow
        && d.served == 0
        && in_shadow_sample(request_id, rc.shadow.share))
    .then(|| shadow_target(request_id, d))
    .flatten();
    let judge = jobs.judge_running()
        && !rt.config.judge.model.is_empty()
        && crate::rollout::judge::should_judge(request_id, rc.judge.share);
    if shadow.is_none() && !judge {
        return None;
    }
    Some(Box::new(RolloutCtx {
        raw: req.raw.clone(),
        shadow,
        judge,
        answer: judge.then(AnswerCapture::default),
    }))
}

/// What the logging phase knows of a routed request that was served (the proxy fills it
/// from its request context).
pub struct Served<'a> {
    pub request_id: &'a str,
    pub session_id: Option<&'a str>,
    pub at_ms: i64,
    pub project_id: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub zero_retention: bool,
    pub usage: Usage,
    /// Answered with a success status, completely, to a client still there.
    pub ok: bool,
}

/// Logging phase (`routed::finish`): hand the sampled work to the background queues.
/// Never waits: a full queue drops the job.
pub fn after_request(
    jobs: &JobQueues,
    r: RolloutCtx,
    served: &Served<'_>,
    d: &Decision,
    context: Option<&'static str>,
) {
    if !served.ok {
        return;
    }
    let route = d.route.route.to_string();
    let context = context.map(str::to_string);
    let RolloutCtx {
        raw,
        shadow,
        judge,
        answer,
    } = r;
    let judge_served = judge
        && answer
            .and_then(AnswerCapture::into_text)
            .map(|text| {
                judge_service::enqueue(
                    jobs,
                    JudgeJob {
                        request_id: served.request_id.to_string(),
                        route: route.clone(),
                        model: d.served_model().to_string(),
                        context: context.clone(),
                        session_id: served.session_id.map(str::to_string),
                        at_ms: served.at_ms,
                        raw: raw.clone(),
                        answer: text,
                        shadow_of: None,
                        project_id: served.project_id.map(str::to_string),
                        zero_retention: served.zero_retention,
                    },
                )
            })
            .unwrap_or(false);
    if let (Some(t), 0) = (shadow, d.served) {
        enqueue(
            jobs,
            ShadowJob {
                shadow_of: served.request_id.to_string(),
                route,
                model: d.route.models[t].model.to_string(),
                context,
                raw,
                served_usage: served.usage,
                at_ms: served.at_ms,
                project_id: served.project_id.map(str::to_string),
                key_id: served.key_id.map(str::to_string),
                zero_retention: served.zero_retention,
                judge: judge_served,
            },
        );
    }
}

static LAST_DROP_WARN: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

/// Queue a shadow call; `false` when shadow calls are not running or the queue is full
/// (then counted in `loopgate_shadow_dropped_total` and logged).
pub fn enqueue(jobs: &JobQueues, job: ShadowJob) -> bool {
    let route = job.route.clone();
    match jobs.try_shadow(job) {
        Ok(()) => true,
        Err(NotQueued::NotRunning) => false,
        Err(NotQueued::Full) => {
            let c = crate::metrics::metrics()
                .shadow_dropped
                .with_label_values(&[&route]);
            c.inc();
            judge_service::warn_dropped("shadow", &LAST_DROP_WARN, c.get());
            false
        }
    }
}

/// The background service running shadow calls.
pub struct ShadowService {
    gw: Arc<Gateway>,
    rx: Mutex<Option<mpsc::Receiver<ShadowJob>>>,
    budget: Arc<DailySpend>,
}

/// Per-route spend of the UTC day for background calls (shadow calls, judge calls), with a
/// daily limit. Kept in memory, and seeded once per (route, day) from the traces of the
/// same kind already stored that day (those carrying `property`), so a restart does not
/// reset the day's spend.
pub(crate) struct DailySpend {
    spend: Mutex<JudgeBudget>,
    seeded: Mutex<HashSet<(String, i64)>>,
    slot: Option<StoreSlot>,
    /// The trace property only this kind of call carries (`shadow_of`, `judge_of`).
    property: &'static str,
}

impl DailySpend {
    pub(crate) fn new(slot: Option<StoreSlot>, property: &'static str) -> DailySpend {
        DailySpend {
            spend: Mutex::new(JudgeBudget::new(None)),
            seeded: Mutex::new(HashSet::new()),
            slot,
            property,
        }
    }

    /// Hold `estimate` on `route` if today's spend stays within `limit` (None: unlimited).
    pub(crate) async fn reserve(
        &self,
        route: &str,
        limit: Option<f64>,
        estimate: f64,
    ) -> Option<Reservation> {
        let now = now_unix();
        self.seed(route, now).await;
        let mut b = self.spend.lock().ok()?;
        b.set_limit(route, limit.unwrap_or(f64::INFINITY));
        b.try_reserve(route, estimate, now)
    }

    /// Replace a reservation by the real cost.
    pub(crate) fn settle(&self, r: Reservation, cost: f64) {
        if let Ok(mut b) = self.spend.lock() {
            b.settle(r, cost, now_unix());
        }
    }

    async fn seed(&self, route: &str, now_unix: i64) {
        let day = crate::rollout::judge::utc_day(now_unix);
        let first = self
            .seeded
            .lock()
            .map(|mut s| s.insert((route.to_string(), day)))
            .unwrap_or(false);
        if !first {
            return;
        }
        let Some(slot) = &self.slot else { return };
        let Some(store) = slot.wait(Duration::from_secs(5)).await else {
            return;
        };
        let filter = LogFilter {
            start_ms: Some(day * 86_400_000),
            route: Some(route.to_string()),
            ..LogFilter::default()
        };
        // Only this kind of call carries the property: the join selects exactly them.
        let group = GroupBy::Property(self.property.into());
        let rows = match tokio::time::timeout(
            Duration::from_secs(10),
            store.raw_rows(&filter, &group),
        )
        .await
        {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::warn!(route, error = %e, "background budget: today's stored spend unreadable");
                return;
            }
            Err(_) => {
                tracing::warn!(
                    route,
                    "background budget: reading today's stored spend timed out"
                );
                return;
            }
        };
        let stored: f64 = rows.iter().map(|r| r.cost_usd).sum();
        if stored > 0.0 {
            if let Ok(mut b) = self.spend.lock() {
                // Held for the rest of the day (never settled): it is already spent.
                b.set_limit(route, f64::INFINITY);
                let _ = b.try_reserve(route, stored, now_unix);
            }
        }
    }
}

impl ShadowService {
    /// Create the queue (once per process) and the service that drains it. `slot` (the
    /// trace store) seeds each route's spend of the day.
    pub fn install(gw: Arc<Gateway>, slot: Option<StoreSlot>) -> ShadowService {
        let rx = gw.jobs.install_shadow(QUEUE);
        if rx.is_none() {
            tracing::warn!("shadow service installed twice; the second one stays idle");
        }
        ShadowService {
            gw,
            rx: Mutex::new(rx),
            budget: Arc::new(DailySpend::new(slot, "shadow_of")),
        }
    }
}

#[async_trait]
impl BackgroundService for ShadowService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let rx = self.rx.lock().ok().and_then(|mut g| g.take());
        let Some(mut rx) = rx else { return };
        let permits = Arc::new(Semaphore::new(CONCURRENCY));
        loop {
            let job = tokio::select! {
                _ = shutdown.changed() => return,
                j = rx.recv() => j,
            };
            let Some(job) = job else { return };
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            let (gw, budget) = (self.gw.clone(), self.budget.clone());
            tokio::spawn(async move {
                run(&gw, &budget, job).await;
                drop(permit);
            });
        }
    }
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Held before a shadow call: the served answer's prompt tokens (same prompt) and a
/// generous completion (the request's own cap when it has one, else twice the served
/// answer or the route's expected completion, whichever is larger).
fn estimate_tokens(body: &Value, served: &Usage, expected: (u64, u64)) -> (u64, u64) {
    let prompt = if served.reported && served.prompt_tokens > 0 {
        served.prompt_tokens
    } else {
        expected.0
    };
    let cap = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64));
    let completion = cap.unwrap_or_else(|| (served.completion_tokens * 2).max(expected.1));
    (prompt, completion)
}

async fn run(gw: &Gateway, budget: &DailySpend, job: ShadowJob) {
    let m = crate::metrics::metrics();
    let count = |result: &str| {
        m.shadow_calls
            .with_label_values(&[&job.route, result])
            .inc();
    };
    let rt = gw.runtime.load_full();
    let Some(rc) = rt.route(&job.route) else {
        return count("skipped");
    };
    let cand = match rt.resolve_model(&job.model, None) {
        Ok(c) => c,
        Err(_) => return count("error"),
    };
    let mut body: Value = match serde_json::from_slice(&job.raw) {
        Ok(v @ Value::Object(_)) => v,
        _ => return count("error"),
    };
    body["model"] = Value::String(cand.model.clone());
    let (pt, ct) = estimate_tokens(
        &body,
        &job.served_usage,
        (rc.expected_prompt_tokens, rc.expected_completion_tokens),
    );
    let estimate = headless::estimate_cost(&rt, &cand, pt, ct);
    let reservation = budget
        .reserve(&job.route, rc.shadow.daily_budget, estimate)
        .await;
    let Some(reservation) = reservation else {
        return count("budget");
    };
    let id = crate::trace::ids::new_request_id();
    let ts_ms = chrono::Utc::now().timestamp_millis();
    let started = Instant::now();
    let mut attempts = Vec::new();
    let res = headless::exchange(
        &rt,
        Some(&gw.provider_keys),
        std::slice::from_ref(&cand),
        body,
        &id,
        Some(&job.route),
        &mut attempts,
    )
    .await;
    let cost = res.as_ref().map_or(0.0, |r| r.cost_usd);
    budget.settle(reservation, cost);
    if cost > 0.0 {
        m.shadow_spend_usd
            .with_label_values(&[&job.route])
            .inc_by(cost);
    }
    let mut rec = TraceRecord {
        request_id: id.clone(),
        ts_ms,
        endpoint: "shadow".into(),
        key_id: job.key_id.clone(),
        project_id: job.project_id.clone(),
        properties: vec![("shadow_of".into(), job.shadow_of.clone())],
        route: Some(job.route.clone()),
        requested_model: job.model.clone(),
        stream: false,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        zero_retention: job.zero_retention,
        shadow: true,
        ..TraceRecord::default()
    };
    match &res {
        Ok(r) => {
            rec.served_model = Some(r.served_model.clone());
            rec.provider = Some(r.provider.clone());
            rec.attempts = r.attempts.clone();
            rec.status = 200;
            rec.prompt_tokens = r.usage.prompt_tokens;
            rec.completion_tokens = r.usage.completion_tokens;
            rec.cached_tokens = r.usage.cached_tokens;
            rec.cache_creation_tokens = r.usage.cache_creation_tokens;
            rec.reasoning_tokens = r.usage.reasoning_tokens;
            rec.usage_reported = r.usage.reported;
            rec.cost_usd = r.cost_usd;
        }
        Err(e) => {
            rec.provider = Some(cand.provider.name().to_string());
            rec.attempts = attempts;
            rec.status = e.status();
            rec.error = Some(e.to_string());
        }
    }
    if gw.tracing {
        (gw.traces)(rec);
    }
    match res {
        Ok(r) => {
            count("ok");
            if job.judge {
                let text = r.text().to_string();
                if !text.is_empty() {
                    judge_service::enqueue(
                        &gw.jobs,
                        JudgeJob {
                            request_id: id,
                            route: job.route,
                            model: job.model,
                            context: job.context,
                            session_id: None,
                            at_ms: job.at_ms,
                            raw: job.raw,
                            answer: text,
                            shadow_of: Some(job.shadow_of),
                            project_id: job.project_id,
                            zero_retention: job.zero_retention,
                        },
                    );
                }
            }
        }
        Err(e) => {
            tracing::debug!(route = %job.route, model = %job.model, error = %e, "shadow call failed");
            count("error");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sampling_is_deterministic_and_independent_of_judging() {
        assert!(!in_shadow_sample("r1", 0.0));
        assert!(in_shadow_sample("r1", 1.0));
        let n = (0..10_000)
            .filter(|i| in_shadow_sample(&format!("req_{i}"), 0.25))
            .count();
        assert!((2_300..2_700).contains(&n), "{n}");
        // A different domain than the judge's: the two samples are not the same requests.
        let both = (0..10_000)
            .filter(|i| {
                let id = format!("req_{i}");
                in_shadow_sample(&id, 0.5) && crate::rollout::judge::should_judge(&id, 0.5)
            })
            .count();
        assert!((2_200..2_800).contains(&both), "{both}");
    }

    #[test]
    fn estimate_uses_the_served_prompt_and_a_generous_completion() {
        let served = Usage {
            prompt_tokens: 400,
            completion_tokens: 200,
            reported: true,
            ..Usage::default()
        };
        assert_eq!(estimate_tokens(&json!({}), &served, (500, 250)), (400, 400));
        assert_eq!(
            estimate_tokens(&json!({"max_tokens": 50}), &served, (500, 250)),
            (400, 50)
        );
        assert_eq!(
            estimate_tokens(&json!({}), &Usage::default(), (500, 250)),
            (500, 250)
        );
    }
}
