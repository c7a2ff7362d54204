//! Feedback routing on the request path (`model: "auto"`).
//!
//! The background aggregator (`services::aggregator`) publishes a [`RouterTable`] — one
//! immutable [`PreparedRoute`] per feedback route (and per prompt-context bucket) — through an
//! `ArcSwap`. A request loads it lock-free, adds the little per-request state the decision
//! needs (today's router spend, the recent exploration share, its session's previous model, a
//! random number) and calls the pure [`decide`]. Everything here is atomics or sharded maps
//! touched only by requests; the background task only swaps the table and stores a spend
//! figure read from the store.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use serde::Serialize;

use crate::feedback::decision::{sign_to_string, SigningKey};
use crate::feedback::prompt::state::PromptOutcome;
use crate::feedback::router::PreparedRoute;
use crate::feedback::{decide, Decision, Labelling, PickKind, RequestContext};
use crate::providers::Secret;
use crate::store::DecisionRow;
use crate::trace::DeferredTrace;

/// How a route's inputs looked when its snapshot was built (for `GET /v1/routing`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RouteInfo {
    /// Token mix used for the cost estimates, and whether it was measured or configured.
    pub prompt_tokens: f64,
    pub completion_tokens: f64,
    pub token_mix_measured: bool,
    /// Models left out of the snapshot and why (provider not configured, no price, ...).
    pub excluded: Vec<(String, String)>,
    /// Where mode / constraints / pin came from: `config` or `api`.
    pub mode_source: &'static str,
    pub constraints_source: &'static str,
    pub pin_reason: Option<String>,
}

/// One feedback route in the published table.
#[derive(Debug, Clone)]
pub struct AutoRoute {
    /// The route-level snapshot (every request's fallback).
    pub prepared: Arc<PreparedRoute>,
    /// Per-context-bucket snapshots (contextual routes), used when the bucket has evidence.
    pub contexts: HashMap<String, Arc<PreparedRoute>>,
    pub contextual: bool,
    pub info: RouteInfo,
    /// Share of live traffic kept on the baseline for the rollback monitor (0: off).
    pub holdback_share: f64,
    /// A canary experiment that is assigning traffic (running or ready to promote).
    pub experiment: Option<Arc<crate::rollout::canary::Experiment>>,
    /// The project whose learning pool this is (`None`: the shared pool).
    pub pool: Option<Arc<str>>,
    /// `learning = "project"`: each configured project's own snapshots, by project.
    pub pools: HashMap<String, AutoRoute>,
}

/// Rollout state of a route derived from stored data at the last refresh (for the API).
#[derive(Debug, Clone, Default)]
pub struct RouteRollout {
    /// The route's latest experiment (any state).
    pub experiment: Option<Arc<crate::rollout::canary::Experiment>>,
    pub monitor: Option<crate::rollout::monitor::MonitorReport>,
}

/// The published router table.
#[derive(Debug, Clone, Default)]
pub struct RouterTable {
    /// Increases with every publication.
    pub version: u64,
    pub built_ms: i64,
    /// Feedback events folded so far (by this instance).
    pub events_folded: u64,
    pub routes: HashMap<String, AutoRoute>,
    /// Feedback routes that could not be prepared, with the reason (served baseline-only).
    pub broken: Vec<(String, String)>,
    /// Experiments and rollback monitors per route.
    pub rollout: HashMap<String, RouteRollout>,
}

/// One feedback route as a request sees it (see [`AutoState::lookup`]).
pub struct RouteView {
    pub prepared: Arc<PreparedRoute>,
    pub holdback_share: f64,
    pub experiment: Option<Arc<crate::rollout::canary::Experiment>>,
    /// The project whose pool decides (`None`: the shared pool).
    pub pool: Option<Arc<str>>,
}

/// A routed request remembered briefly, so feedback that arrives before its trace is stored
/// still finds its route and model.
#[derive(Debug, Clone)]
pub struct RecentDecision {
    pub route: Arc<str>,
    pub served: Arc<str>,
    pub context: Option<Arc<str>>,
    pub session: Option<String>,
    pub at_ms: i64,
    /// The request's project (tenancy scope of feedback on it).
    pub project: Option<Arc<str>>,
    /// Whether the request held its session (not a reference refresh): a session NPS credits
    /// only those (`store::pending::nps_credited`).
    pub held_session: bool,
}

/// Per-route counters the decision reads.
#[derive(Debug, Default)]
struct RouteCounters {
    /// UTC day (days since the epoch) the spend figures belong to.
    day: AtomicI64,
    /// Router spend today as last read from the store (micro-USD), shared by all instances.
    stored_micros: AtomicU64,
    /// Router spend this instance added since that read (micro-USD).
    local_micros: AtomicU64,
    /// Exponentially weighted share of exploration picks (f64 bits).
    explore_share: AtomicU64,
    /// Share of announced requests announced as scored (f64 bits), and how many were seen
    /// (the average is a plain mean until it has `EXPLORE_EWMA`'s horizon).
    announced_share: AtomicU64,
    announced_seen: AtomicU64,
}

/// Weight of one decision in the exploration-share average (≈ the last 200 decisions).
const EXPLORE_EWMA: f64 = 1.0 / 200.0;

/// What the request path knows, before routing, about whether a request will be scored.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ScoreHint {
    /// Nothing: feedback may or may not come.
    #[default]
    None,
    /// The gateway's own judge samples the route at `share` (by request id, so it is known
    /// now); `scored`: this request is in the sample.
    Judge { scored: bool, share: f64 },
    /// The client announced whether its own judge will score this request
    /// (`loopgate-feedback-expected`); the route's share is learned from the announcements.
    Announced(bool),
}

/// The route's announced share after one more announcement (`seen` counts it): a plain mean
/// over the first announcements, then an exponential average over the exploration share's
/// horizon. The replay benchmark learns the share with the same step.
pub fn announced_share_step(share: f64, seen: u64, scored: bool) -> f64 {
    let w = (1.0 / seen.max(1) as f64).max(EXPLORE_EWMA);
    let x = if scored { 1.0 } else { 0.0 };
    share + w * (x - share)
}

/// Update an `f64` kept as bits in an atomic (lock-free; a lost race retries).
fn update_f64(cell: &AtomicU64, f: impl Fn(f64) -> f64) {
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
        Some(f(f64::from_bits(bits)).to_bits())
    });
}

fn day_of(ms: i64) -> i64 {
    ms.div_euclid(86_400_000)
}

/// Live feedback-routing state shared by every request.
pub struct AutoState {
    pub table: ArcSwap<RouterTable>,
    counters: DashMap<String, RouteCounters>,
    /// `(route, session)` → (model, when).
    sticky: DashMap<(String, String), (Arc<str>, i64)>,
    recent: DashMap<String, RecentDecision>,
    /// Shared with the trace writer, which signs deferred decision rows.
    pub signing: Arc<SigningKey>,
    /// Whether the signing key was generated at start (signatures do not survive restarts).
    pub ephemeral_key: bool,
    sticky_ttl_ms: i64,
    recent_capacity: usize,
    /// Wakes the aggregator (new feedback, reload, operator change).
    pub nudge: tokio::sync::Notify,
    /// Operator state changed on this instance: re-read it at the next refresh.
    pub states_dirty: std::sync::atomic::AtomicBool,
    /// Signed webhook for decision / audit / rollback / experiment / budget events, when configured.
    pub webhook: std::sync::OnceLock<crate::rollout::webhook::WebhookSender>,
}

impl AutoState {
    pub fn new(
        signing_key: Option<String>,
        key_id: &str,
        sticky_ttl_secs: u64,
        recent_capacity: usize,
    ) -> AutoState {
        let (secret, ephemeral) = match signing_key.filter(|k| !k.is_empty()) {
            Some(k) => (k, false),
            None => {
                let bytes: [u8; 32] = rand::random();
                (hex::encode(bytes), true)
            }
        };
        AutoState {
            table: ArcSwap::from_pointee(RouterTable::default()),
            counters: DashMap::new(),
            sticky: DashMap::new(),
            recent: DashMap::new(),
            signing: Arc::new(SigningKey {
                key_id: key_id.to_string(),
                secret: Secret::new(secret),
            }),
            ephemeral_key: ephemeral,
            sticky_ttl_ms: (sticky_ttl_secs as i64).saturating_mul(1000),
            recent_capacity: recent_capacity.max(1),
            nudge: tokio::sync::Notify::new(),
            states_dirty: std::sync::atomic::AtomicBool::new(false),
            webhook: std::sync::OnceLock::new(),
        }
    }

    /// Whether a webhook subscribes to events of `kind`.
    pub fn wants(&self, kind: crate::rollout::webhook::EventKind) -> bool {
        self.webhook.get().is_some_and(|w| w.wants(kind))
    }

    /// Queue a webhook event (never blocks; a full queue drops and counts).
    pub fn emit(
        &self,
        kind: crate::rollout::webhook::EventKind,
        data: impl FnOnce() -> serde_json::Value,
    ) {
        if let Some(w) = self.webhook.get() {
            if w.wants(kind) {
                let _ = w.try_send(crate::rollout::webhook::WebhookEvent::new(kind, data()));
            }
        }
    }

    /// What a request for `route` (and prompt context) decides with, from one table load:
    /// the snapshot, the holdback share and the assigning experiment.
    pub fn lookup(&self, route: &str, context: Option<&str>) -> Option<RouteView> {
        self.lookup_for(route, None, context)
    }

    /// As [`Self::lookup`], deciding with `project`'s learning pool when the route keeps one
    /// for it (`learning = "project"`), else with the shared pool.
    pub fn lookup_for(
        &self,
        route: &str,
        project: Option<&str>,
        context: Option<&str>,
    ) -> Option<RouteView> {
        let t = self.table.load();
        let shared = t.routes.get(route)?;
        let ar = project.and_then(|p| shared.pools.get(p)).unwrap_or(shared);
        Some(RouteView {
            pool: ar.pool.clone(),
            prepared: Arc::clone(
                context
                    .and_then(|c| ar.contexts.get(c))
                    .unwrap_or(&ar.prepared),
            ),
            holdback_share: ar.holdback_share,
            experiment: ar.experiment.clone(),
        })
    }

    /// The snapshot a request for `route` (and prompt context) decides with.
    pub fn prepared(&self, route: &str, context: Option<&str>) -> Option<Arc<PreparedRoute>> {
        self.lookup(route, context).map(|v| v.prepared)
    }

    fn spend_today(&self, route: &str, now_ms: i64) -> f64 {
        let Some(c) = self.counters.get(route) else {
            return 0.0;
        };
        if c.day.load(Ordering::Relaxed) != day_of(now_ms) {
            return 0.0;
        }
        let micros =
            c.stored_micros.load(Ordering::Relaxed) + c.local_micros.load(Ordering::Relaxed);
        micros as f64 / 1e6
    }

    fn exploration_share(&self, route: &str) -> f64 {
        self.counters.get(route).map_or(0.0, |c| {
            f64::from_bits(c.explore_share.load(Ordering::Relaxed))
        })
    }

    /// The session's model on this route, if it was served within the sticky TTL.
    fn sticky_of(&self, route: &str, session: Option<&str>, now_ms: i64) -> Option<Arc<str>> {
        let e = self
            .sticky
            .get(&(route.to_string(), session?.to_string()))?;
        (now_ms - e.1 <= self.sticky_ttl_ms).then(|| Arc::clone(&e.0))
    }

    /// The route's share of announced requests that were announced as scored (0 before any).
    fn announced_share(&self, route: &str) -> f64 {
        self.counters.get(route).map_or(0.0, |c| {
            f64::from_bits(c.announced_share.load(Ordering::Relaxed))
        })
    }

    /// The hint as the decision uses it: whether this request will be scored, and the share of
    /// scored requests it is one of.
    pub fn labelling(&self, route: &str, hint: ScoreHint) -> Labelling {
        match hint {
            ScoreHint::None => Labelling::Unknown,
            ScoreHint::Judge { scored, share } => Labelling::from_share(scored, share),
            ScoreHint::Announced(scored) => {
                Labelling::from_share(scored, self.announced_share(route))
            }
        }
    }

    fn context<'a>(
        &self,
        route: &str,
        sticky: Option<&'a str>,
        now_ms: i64,
        rng: f64,
        hint: ScoreHint,
    ) -> RequestContext<'a> {
        RequestContext {
            spend_today: self.spend_today(route, now_ms),
            exploration_share: self.exploration_share(route),
            sticky,
            rng,
            labelling: self.labelling(route, hint),
        }
    }

    /// Decide for one request. `rng` is a uniform draw in [0, 1).
    pub fn decide(
        &self,
        prepared: &Arc<PreparedRoute>,
        route: &str,
        session: Option<&str>,
        now_ms: i64,
        rng: f64,
        hint: ScoreHint,
    ) -> Decision {
        let d = self.explain(prepared, route, session, now_ms, rng, hint);
        self.after_decision(route, session, &d, now_ms, hint);
        d
    }

    /// A decision without side effects (dry runs: `POST /v1/routing/explain`).
    pub fn explain(
        &self,
        prepared: &Arc<PreparedRoute>,
        route: &str,
        session: Option<&str>,
        now_ms: i64,
        rng: f64,
        hint: ScoreHint,
    ) -> Decision {
        let sticky = self.sticky_of(route, session, now_ms);
        decide(
            prepared,
            &self.context(route, sticky.as_deref(), now_ms, rng, hint),
        )
    }

    fn after_decision(
        &self,
        route: &str,
        session: Option<&str>,
        d: &Decision,
        now_ms: i64,
        hint: ScoreHint,
    ) {
        if matches!(d.kind, PickKind::Off | PickKind::Pinned) {
            return;
        }
        let c = self.counters.entry(route.to_string()).or_default();
        if let ScoreHint::Announced(scored) = hint {
            let seen = c.announced_seen.fetch_add(1, Ordering::Relaxed) + 1;
            update_f64(&c.announced_share, |s| {
                announced_share_step(s, seen, scored)
            });
        }
        let explored = if d.explores() { 1.0 } else { 0.0 };
        update_f64(&c.explore_share, |s| s + EXPLORE_EWMA * (explored - s));
        drop(c);
        if let Some(s) = session {
            let model = Arc::clone(&d.route.models[d.session_model()].model);
            self.sticky
                .insert((route.to_string(), s.to_string()), (model, now_ms));
        }
    }

    /// Count router spend (a non-baseline model served) toward today's budget.
    pub fn add_spend(&self, route: &str, usd: f64, now_ms: i64) {
        if !(usd.is_finite() && usd > 0.0) {
            return;
        }
        let c = self.counters.entry(route.to_string()).or_default();
        let today = day_of(now_ms);
        if c.day.swap(today, Ordering::Relaxed) != today {
            c.stored_micros.store(0, Ordering::Relaxed);
            c.local_micros.store(0, Ordering::Relaxed);
        }
        c.local_micros
            .fetch_add((usd * 1e6).round() as u64, Ordering::Relaxed);
    }

    /// The aggregator's read of today's router spend from the store (all instances).
    pub fn set_stored_spend(&self, route: &str, usd: f64, now_ms: i64) {
        let c = self.counters.entry(route.to_string()).or_default();
        c.day.store(day_of(now_ms), Ordering::Relaxed);
        c.stored_micros
            .store((usd.max(0.0) * 1e6).round() as u64, Ordering::Relaxed);
        // The store now includes what this instance had written; traces still in the writer
        // are briefly uncounted (the budget is enforced to within one refresh interval).
        c.local_micros.store(0, Ordering::Relaxed);
    }

    /// Remember a routed request until its trace is surely stored.
    pub fn remember(&self, request_id: &str, r: RecentDecision) {
        self.recent.insert(request_id.to_string(), r);
    }

    pub fn recent(&self, request_id: &str) -> Option<RecentDecision> {
        self.recent.get(request_id).map(|r| r.clone())
    }

    /// Recent routed requests of a session (not yet necessarily stored).
    pub fn recent_in_session(&self, session: &str) -> Vec<(String, RecentDecision)> {
        self.recent
            .iter()
            .filter(|e| e.value().session.as_deref() == Some(session))
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect()
    }

    /// Drop remembered requests older than `max_age_ms` (and the oldest beyond capacity) and
    /// expired sticky sessions. Called by the aggregator, off the request path.
    pub fn sweep(&self, now_ms: i64, max_age_ms: i64) {
        self.recent.retain(|_, r| now_ms - r.at_ms <= max_age_ms);
        if self.recent.len() > self.recent_capacity {
            let mut ages: Vec<i64> = self.recent.iter().map(|e| e.value().at_ms).collect();
            ages.sort_unstable();
            let cut = ages[ages.len() - self.recent_capacity];
            self.recent.retain(|_, r| r.at_ms >= cut);
        }
        let ttl = self.sticky_ttl_ms;
        self.sticky.retain(|_, v| now_ms - v.1 <= ttl);
    }

    /// Render, sign and index a decision for storage (after the response; allocates).
    /// `pool` is the project whose learning pool decided (`None`: the shared pool).
    pub fn decision_row(
        &self,
        d: &Decision,
        request_id: &str,
        at_ms: i64,
        session: Option<&str>,
        context: Option<&str>,
        pool: Option<&str>,
    ) -> Result<DecisionRow, String> {
        self.decision_row_with(d, request_id, at_ms, session, context, pool, None, None)
    }

    /// As [`Self::decision_row`], with the prompt router's and the firewall's sections of
    /// the trace.
    #[allow(clippy::too_many_arguments)] // the trace's labels, each from a different phase
    pub fn decision_row_with(
        &self,
        d: &Decision,
        request_id: &str,
        at_ms: i64,
        session: Option<&str>,
        context: Option<&str>,
        pool: Option<&str>,
        prompt: Option<&PromptOutcome>,
        firewall: Option<serde_json::Value>,
    ) -> Result<DecisionRow, String> {
        let mut row = index_row(d, request_id, at_ms, session, context);
        row.signed = render_and_sign(
            d,
            request_id,
            at_ms,
            context,
            pool,
            prompt,
            firewall,
            &self.signing,
        )?;
        Ok(row)
    }

    /// As [`Self::decision_row_with`], but only the index columns now: the trace is rendered
    /// and signed when the trace writer settles the row ([`DecisionRow::settle`]), on its own
    /// thread. Rendering and hashing a trace costs several times the decision itself, and the
    /// request path (the logging phase on a worker thread) should not pay for it.
    #[allow(clippy::too_many_arguments)] // the trace's labels, each from a different phase
    pub fn decision_row_deferred(
        &self,
        d: Decision,
        request_id: &str,
        at_ms: i64,
        session: Option<&str>,
        context: Option<&'static str>,
        pool: Option<Arc<str>>,
        prompt: Option<Box<PromptOutcome>>,
        firewall: Option<serde_json::Value>,
    ) -> DecisionRow {
        let mut row = index_row(&d, request_id, at_ms, session, context);
        let signing = Arc::clone(&self.signing);
        let id = row.request_id.clone();
        row.deferred = Some(DeferredTrace::new(move || {
            render_and_sign(
                &d,
                &id,
                at_ms,
                context,
                pool.as_deref(),
                prompt.as_deref(),
                firewall.clone(),
                &signing,
            )
        }));
        row
    }
}

/// A decision row's index columns (everything but the signed trace).
fn index_row(
    d: &Decision,
    request_id: &str,
    at_ms: i64,
    session: Option<&str>,
    context: Option<&str>,
) -> DecisionRow {
    let served = &d.route.models[d.served];
    DecisionRow {
        request_id: request_id.to_string(),
        ts_ms: at_ms,
        route: d.route.route.to_string(),
        mode: d.route.mode.as_str().to_string(),
        session_id: session.map(str::to_string),
        chosen: d.chosen_model().to_string(),
        served: d.served_model().to_string(),
        baseline: d.route.models[0].model.to_string(),
        context: context.map(str::to_string),
        kind: d.kind.as_str().to_string(),
        shadow: d.route.mode == crate::feedback::Mode::Shadow,
        confidence: (d.chosen != 0).then(|| d.route.models[d.chosen].gate.confidence),
        quality: Some(served.posterior.mean()),
        propensity: d.propensity,
        table_version: d.route.table_version,
        signed: String::new(),
        project: None,
        deferred: None,
    }
}

/// The signed trace text of a decision (render, canonicalise, sign; allocates).
#[allow(clippy::too_many_arguments)] // the trace's labels, each from a different phase
#[inline(never)] // its own entry in profiles (`benches/instructions.rs`); off the request path
fn render_and_sign(
    d: &Decision,
    request_id: &str,
    at_ms: i64,
    context: Option<&str>,
    pool: Option<&str>,
    prompt: Option<&PromptOutcome>,
    firewall: Option<serde_json::Value>,
    signing: &SigningKey,
) -> Result<String, String> {
    let mut trace = d.trace(request_id, at_ms);
    trace.context = context.map(str::to_string);
    trace.pool = Some(pool_name(pool));
    trace.prompt = prompt.map(PromptOutcome::trace);
    trace.firewall = firewall;
    sign_to_string(&trace, signing).map_err(|e| e.to_string())
}

/// The decision trace's `pool`: `shared` or `project:<name>`.
pub fn pool_name(project: Option<&str>) -> String {
    match project {
        None => "shared".to_string(),
        Some(p) => format!("project:{p}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_resets_with_the_day_and_store_reads_replace_local() {
        let s = AutoState::new(Some("k".into()), "k1", 60, 10);
        let day = 20_000 * 86_400_000;
        s.add_spend("r", 0.5, day + 10);
        assert!((s.spend_today("r", day + 20) - 0.5).abs() < 1e-9);
        s.set_stored_spend("r", 2.0, day + 30);
        s.add_spend("r", 0.25, day + 40);
        assert!((s.spend_today("r", day + 50) - 2.25).abs() < 1e-9);
        // Next day: nothing spent yet.
        assert_eq!(s.spend_today("r", day + 86_400_000 + 1), 0.0);
        s.add_spend("r", 0.1, day + 86_400_000 + 2);
        assert!((s.spend_today("r", day + 86_400_000 + 3) - 0.1).abs() < 1e-9);
    }

    #[test]
    fn a_deferred_row_settles_to_the_eagerly_signed_text() {
        let s = AutoState::new(Some("k".into()), "k1", 60, 10);
        let r = crate::feedback::router::tests::sample_route(crate::feedback::Mode::Live);
        for k in 0..20 {
            let d = decide(
                &r,
                &RequestContext {
                    rng: k as f64 / 20.0,
                    ..Default::default()
                },
            );
            let fw = Some(serde_json::json!({"verdict": "allow"}));
            let eager = s
                .decision_row_with(
                    &d,
                    "req",
                    7,
                    Some("s"),
                    Some("code"),
                    Some("p"),
                    None,
                    fw.clone(),
                )
                .unwrap();
            let mut row = s.decision_row_deferred(
                d,
                "req",
                7,
                Some("s"),
                Some("code"),
                Some("p".into()),
                None,
                fw,
            );
            assert!(row.signed.is_empty() && row.deferred.is_some());
            row.settle().unwrap();
            assert!(row.deferred.is_none());
            assert_eq!(row, eager);
            let v: serde_json::Value = serde_json::from_str(&row.signed).unwrap();
            crate::feedback::decision::verify_value(&v, &s.signing).unwrap();
            assert_eq!(v["kind"], row.kind.as_str());
        }
    }

    #[test]
    fn sweep_bounds_recent_by_age_and_capacity() {
        let s = AutoState::new(None, "k1", 60, 3);
        assert!(s.ephemeral_key);
        for i in 0..6 {
            s.remember(
                &format!("r{i}"),
                RecentDecision {
                    route: "d".into(),
                    served: "m".into(),
                    context: None,
                    session: Some("s".into()),
                    at_ms: 1000 + i,
                    project: None,
                    held_session: true,
                },
            );
        }
        s.sweep(1005, 10_000);
        assert_eq!(s.recent.len(), 3);
        assert!(s.recent("r5").is_some() && s.recent("r0").is_none());
        s.sweep(100_000, 10);
        assert!(s.recent_in_session("s").is_empty());
    }
}
