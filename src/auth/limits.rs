//! Per-key rate limits and budgets, enforced in process on the request path.
//!
//! - **Requests per minute** (per key, and per key and model): a GCRA limiter from the
//!   `governor` crate with a burst of the whole minute's quota.
//! - **Tokens per minute**: a lock-free GCRA on one atomic (the theoretical arrival time in
//!   nanoseconds), charged up front with an estimate and reconciled with the real usage
//!   when the request ends (a refund or a top-up moves the same atomic).
//! - **Budgets** in USD per day, month (UTC calendar) or in total: atomic nano-dollar
//!   counters fed from the trace's cost when the request ends. A request is refused once a
//!   budget is spent; a stream that ends past it is billed in full, never cut.
//!
//! With `[limits] backend = "memory"` (the default) the state lives in process, per key id,
//! and survives `PATCH` (a changed limit rebuilds the rate state; spend is kept); at start
//! the spend of the current periods is reloaded from the store's traces
//! ([`Limiter::seed_spend`]). With `backend = "redis"` the same checks run in Redis
//! ([`super::fleet`]), shared by every gateway on it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use super::fleet::{Fleet, FleetTicket, SharedLimit, Verdict, WINDOW_US};
use super::virtual_keys::{Budget, Limits, Rate, VirtualKey};
use crate::config::{FailureMode, GroupBudget, GroupLimits, LimitsBackend, LimitsConfig};
use crate::error::GatewayError;
use crate::rollout::webhook::{EventKind, WebhookEvent, WebhookSender};

type Gov = RateLimiter<NotKeyed, InMemoryState, DefaultClock, StateInformationMiddleware>;

const MINUTE: Duration = Duration::from_secs(60);
const NANOS_PER_USD: f64 = 1_000_000_000.0;

/// Tokens per minute as GCRA on one atomic: `tat` is the theoretical arrival time (ns since
/// `start`); the bucket is full when `tat <= now` and empty when `tat >= now + 60 s`.
struct TokenRate {
    tpm: u64,
    /// Nanoseconds of the window one token uses (60 s / tpm), as a float for big limits.
    ns_per_token: f64,
    tat: AtomicI64,
}

const WINDOW_NS: i64 = 60_000_000_000;

impl TokenRate {
    fn new(tpm: u64) -> TokenRate {
        TokenRate {
            tpm,
            ns_per_token: WINDOW_NS as f64 / tpm.max(1) as f64,
            tat: AtomicI64::new(0),
        }
    }

    /// The tokens a request of `tokens` is charged up front (capped at the whole minute,
    /// so one big request can pass an empty bucket).
    fn charge(&self, tokens: u64) -> u64 {
        tokens.min(self.tpm)
    }

    fn cost(&self, tokens: u64) -> i64 {
        (tokens as f64 * self.ns_per_token).min(i64::MAX as f64 / 2.0) as i64
    }

    /// Take `tokens` (capped at the whole minute, so one big request can pass an empty
    /// bucket); `Err(wait)` when they do not fit now.
    fn take(&self, now: i64, tokens: u64) -> Result<Snapshot, Duration> {
        if self.tpm == 0 {
            return Err(MINUTE);
        }
        let cost = self.cost(self.charge(tokens));
        let mut cur = self.tat.load(Ordering::Acquire);
        loop {
            let base = cur.max(now);
            let next = base.saturating_add(cost);
            if next - now > WINDOW_NS {
                let wait = (next - now - WINDOW_NS).max(0) as u64;
                return Err(Duration::from_nanos(wait));
            }
            match self
                .tat
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(self.snapshot_at(now, next)),
                Err(seen) => cur = seen,
            }
        }
    }

    /// Move the charge by `delta` tokens (negative: a refund). Never refused.
    fn adjust(&self, delta: i64) {
        if delta == 0 {
            return;
        }
        let d = (delta as f64 * self.ns_per_token) as i64;
        self.tat.fetch_add(d, Ordering::AcqRel);
    }

    fn snapshot_at(&self, now: i64, tat: i64) -> Snapshot {
        let used_ns = (tat - now).clamp(0, WINDOW_NS);
        let remaining = ((WINDOW_NS - used_ns) as f64 / self.ns_per_token) as u64;
        Snapshot {
            limit: self.tpm,
            remaining: remaining.min(self.tpm),
            reset: Duration::from_nanos(used_ns as u64),
        }
    }
}

/// Which limit refused a request (named in the message; formatted only on refusal).
#[derive(Debug, Clone, Copy)]
enum Scope<'a> {
    Key,
    Model(&'a str),
    Group(GroupKind, &'a str),
}

impl std::fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Key => f.write_str("this API key"),
            Scope::Model(m) => write!(f, "the model '{m}' on this API key"),
            Scope::Group(k, n) => write!(f, "the {} '{n}'", k.as_str()),
        }
    }
}

/// The holders of limits above a key: `[limits.projects]`, `[limits.teams]`, `[limits.users]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    Project,
    Team,
    User,
}

impl GroupKind {
    pub const ALL: [GroupKind; 3] = [GroupKind::Project, GroupKind::Team, GroupKind::User];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Project => "project",
            GroupKind::Team => "team",
            GroupKind::User => "user",
        }
    }

    /// The configured groups of this kind.
    pub fn configured(
        self,
        cfg: &LimitsConfig,
    ) -> &std::collections::BTreeMap<String, GroupLimits> {
        match self {
            GroupKind::Project => &cfg.projects,
            GroupKind::Team => &cfg.teams,
            GroupKind::User => &cfg.users,
        }
    }
}

/// One budget as the checks see it, from a key's spec or a group's config.
#[derive(Debug, Clone, Copy)]
struct Cap {
    slot: usize,
    usd: f64,
    soft_pct: Option<f64>,
}

impl Cap {
    fn of_key(b: &Budget) -> Cap {
        Cap {
            slot: period_slot(&b.period),
            usd: b.usd,
            soft_pct: b.soft_pct,
        }
    }

    fn of_group(b: &GroupBudget) -> Cap {
        Cap {
            slot: b.period as usize,
            usd: b.usd,
            soft_pct: b.soft_pct,
        }
    }

    fn nanos(&self) -> u64 {
        (self.usd * NANOS_PER_USD).min(u64::MAX as f64) as u64
    }
}

/// Who a request's limits and budgets belong to: its virtual key (with the key's per-model
/// limits), then its project, team and user when `[limits]` names them.
#[derive(Clone, Copy)]
enum Holder<'a> {
    Key(&'a VirtualKey),
    Group(GroupKind, &'a str, &'a GroupLimits),
}

impl<'a> Holder<'a> {
    fn scope(&self) -> Scope<'a> {
        match self {
            Holder::Key(_) => Scope::Key,
            Holder::Group(k, n, _) => Scope::Group(*k, n),
        }
    }

    fn caps(&self) -> impl Iterator<Item = Cap> + 'a {
        let (k, g): (&'a [Budget], &'a [GroupBudget]) = match self {
            Holder::Key(key) => (&key.spec.budgets, &[]),
            Holder::Group(_, _, g) => (&[], &g.budgets),
        };
        k.iter().map(Cap::of_key).chain(g.iter().map(Cap::of_group))
    }

    /// The key or group limits as rate limits (a group has no per-model limits).
    fn rate_of(&self) -> (Option<u64>, Option<u64>) {
        match self {
            Holder::Key(k) => (k.spec.limits.rpm, k.spec.limits.tpm),
            Holder::Group(_, _, g) => (g.rpm, g.tpm),
        }
    }

    /// The id of its counters in Redis: the key id, or `<kind>:<name>`.
    fn shared_id(&self) -> String {
        match self {
            Holder::Key(k) => k.entry.id.clone(),
            Holder::Group(kind, name, _) => format!("{}:{name}", kind.as_str()),
        }
    }
}

/// One holder's (rpm, tpm) for the Redis script, its scope, its Redis id and its model.
type SharedRate<'a> = (
    (Option<u64>, Option<u64>),
    Scope<'a>,
    &'a str,
    Option<&'a str>,
);

/// The request's side of admission: its virtual key (none for config-file keys), project
/// and user id (the key's `user` wins over the request's).
#[derive(Clone, Copy, Default)]
pub struct Who<'a> {
    pub key: Option<&'a Arc<VirtualKey>>,
    pub project: Option<&'a str>,
    pub user: Option<&'a str>,
}

/// The holders of a request, in the order they are checked; `None` where nothing applies.
fn holders<'a>(cfg: &'a LimitsConfig, who: &Who<'a>) -> [Option<Holder<'a>>; 4] {
    let spec = who.key.map(|k| &k.spec);
    let group = |kind: GroupKind, name: Option<&'a str>| {
        let map = kind.configured(cfg);
        if map.is_empty() {
            return None;
        }
        let (name, g) = map.get_key_value(name?)?;
        (!g.is_empty()).then_some(Holder::Group(kind, name.as_str(), g))
    };
    [
        who.key
            .filter(|k| !k.spec.unlimited())
            .map(|k| Holder::Key(k)),
        group(GroupKind::Project, who.project),
        group(GroupKind::Team, spec.and_then(|s| s.team.as_deref())),
        group(
            GroupKind::User,
            spec.and_then(|s| s.user.as_deref()).or(who.user),
        ),
    ]
}

/// One limit's state for the response headers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    pub limit: u64,
    pub remaining: u64,
    /// Until the limit is fully replenished.
    pub reset: Duration,
}

/// Requests and tokens per minute for one scope (the key, or the key and one model).
struct RateState {
    rpm: Option<(u64, Gov)>,
    tpm: Option<TokenRate>,
}

impl RateState {
    fn new(r: &Rate) -> Option<Arc<RateState>> {
        let rpm = r.rpm.map(|n| {
            // rpm 0 refuses everything: governor needs a non-zero burst, so 0 is checked
            // before the limiter is asked.
            let burst = NonZeroU32::new(u32::try_from(n).unwrap_or(u32::MAX).max(1))
                .unwrap_or(NonZeroU32::MIN);
            let quota = Quota::with_period(MINUTE / burst.get())
                .unwrap_or_else(|| Quota::per_minute(burst))
                .allow_burst(burst);
            (
                n,
                RateLimiter::direct(quota).with_middleware::<StateInformationMiddleware>(),
            )
        });
        let tpm = r.tpm.map(TokenRate::new);
        (rpm.is_some() || tpm.is_some()).then(|| Arc::new(RateState { rpm, tpm }))
    }

    fn requests(&self, scope: Scope<'_>) -> Result<Option<Snapshot>, Box<Refusal>> {
        let Some((n, gov)) = &self.rpm else {
            return Ok(None);
        };
        let per = MINUTE.div_f64((*n).max(1) as f64);
        if *n == 0 {
            return Err(Box::new(Refusal::requests(scope, 0, MINUTE)));
        }
        match gov.check() {
            Ok(s) => {
                let remaining = u64::from(s.remaining_burst_capacity());
                Ok(Some(Snapshot {
                    limit: *n,
                    remaining,
                    reset: per.mul_f64(n.saturating_sub(remaining) as f64),
                }))
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(gov.clock().now());
                Err(Box::new(Refusal::requests(scope, *n, wait)))
            }
        }
    }
}

/// The rate state of one key: the limits it was built from, the key's own and per model.
struct Rates {
    limits: Limits,
    key: Option<Arc<RateState>>,
    models: HashMap<String, Arc<RateState>>,
}

impl Rates {
    fn new(limits: &Limits) -> Rates {
        Rates {
            limits: limits.clone(),
            key: RateState::new(&Rate {
                rpm: limits.rpm,
                tpm: limits.tpm,
            }),
            models: limits
                .models
                .iter()
                .filter_map(|(m, r)| Some((m.clone(), RateState::new(r)?)))
                .collect(),
        }
    }
}

/// Spend in nano-dollars for the current day, the current month and in total.
struct Spend {
    /// (period index, nano-USD) per period, in [`PERIOD_ORDER`].
    slots: [(AtomicI64, AtomicU64); 3],
    /// Soft thresholds already reported, per period and period index.
    soft_seen: [AtomicI64; 3],
}

/// The budget periods in the order of [`Limiter::spend`].
pub const PERIOD_ORDER: [&str; 3] = ["day", "month", "total"];

fn period_slot(period: &str) -> usize {
    PERIOD_ORDER.iter().position(|p| *p == period).unwrap_or(2)
}

/// The index of the current day / month (UTC) / the single total period.
fn period_index(slot: usize, now_ms: i64) -> i64 {
    match slot {
        0 => now_ms.div_euclid(86_400_000),
        1 => {
            use chrono::Datelike;
            chrono::DateTime::from_timestamp_millis(now_ms)
                .map_or(0, |d| i64::from(d.year()) * 12 + i64::from(d.month0()))
        }
        _ => 0,
    }
}

/// Unix ms of the start of the current UTC day and month.
fn period_starts(now_ms: i64) -> (i64, i64) {
    use chrono::Datelike;
    let day = now_ms.div_euclid(86_400_000) * 86_400_000;
    let month = chrono::DateTime::from_timestamp_millis(now_ms)
        .and_then(|d| chrono::NaiveDate::from_ymd_opt(d.year(), d.month(), 1))
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map_or(day, |d| d.and_utc().timestamp_millis());
    (day, month)
}

/// Until the period rolls over (`None` for `total`).
fn until_next_period(slot: usize, now_ms: i64) -> Option<Duration> {
    let next_ms = match slot {
        0 => (now_ms.div_euclid(86_400_000) + 1) * 86_400_000,
        1 => {
            use chrono::Datelike;
            let d = chrono::DateTime::from_timestamp_millis(now_ms)?;
            let (y, m) = if d.month() == 12 {
                (d.year() + 1, 1)
            } else {
                (d.year(), d.month() + 1)
            };
            chrono::NaiveDate::from_ymd_opt(y, m, 1)?
                .and_hms_opt(0, 0, 0)?
                .and_utc()
                .timestamp_millis()
        }
        _ => return None,
    };
    Some(Duration::from_millis((next_ms - now_ms).max(0) as u64))
}

impl Spend {
    fn new() -> Spend {
        Spend {
            slots: Default::default(),
            soft_seen: [AtomicI64::new(-1), AtomicI64::new(-1), AtomicI64::new(-1)],
        }
    }

    /// Nano-dollars spent in `slot`'s current period.
    fn spent(&self, slot: usize, now_ms: i64) -> u64 {
        let (idx, nanos) = &self.slots[slot];
        if idx.load(Ordering::Acquire) == period_index(slot, now_ms) {
            nanos.load(Ordering::Acquire)
        } else {
            0
        }
    }

    fn add(&self, now_ms: i64, nanos: u64) {
        for slot in 0..3 {
            self.add_slot(slot, now_ms, nanos);
        }
    }

    fn add_slot(&self, slot: usize, now_ms: i64, nanos: u64) {
        let (idx, counter) = &self.slots[slot];
        let want = period_index(slot, now_ms);
        let cur = idx.load(Ordering::Acquire);
        if cur != want
            && idx
                .compare_exchange(cur, want, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This thread rolled the period over; a concurrent add may land in the
            // old total and be lost, which only errs towards admitting.
            counter.store(0, Ordering::Release);
        }
        counter.fetch_add(nanos, Ordering::AcqRel);
    }
}

/// Everything the limiter keeps about one key.
struct KeyState {
    rates: ArcSwap<Rates>,
    spend: Spend,
}

/// Why a request was refused: the error for the client and the limit's headers.
#[derive(Debug)]
pub struct Refusal {
    pub error: GatewayError,
    /// `requests` or `tokens`, and the state of that limit.
    pub headers: Option<(&'static str, Snapshot)>,
}

fn retry_secs(wait: Duration) -> String {
    wait.as_secs_f64().ceil().max(1.0).to_string()
}

impl Refusal {
    fn requests(scope: Scope<'_>, limit: u64, wait: Duration) -> Refusal {
        Refusal {
            error: GatewayError::Upstream {
                status: 429,
                message: format!(
                    "Rate limit reached for {scope}: {limit} requests per minute. Retry in {:.1}s.",
                    wait.as_secs_f64()
                ),
                retry_after: Some(retry_secs(wait)),
                code: "rate_limit_exceeded",
            },
            headers: Some((
                "requests",
                Snapshot {
                    limit,
                    remaining: 0,
                    reset: wait,
                },
            )),
        }
    }

    fn tokens(scope: Scope<'_>, limit: u64, wait: Duration) -> Refusal {
        Refusal {
            error: GatewayError::Upstream {
                status: 429,
                message: format!(
                    "Rate limit reached for {scope}: {limit} tokens per minute. Retry in {:.1}s.",
                    wait.as_secs_f64()
                ),
                retry_after: Some(retry_secs(wait)),
                code: "rate_limit_exceeded",
            },
            headers: Some((
                "tokens",
                Snapshot {
                    limit,
                    remaining: 0,
                    reset: wait,
                },
            )),
        }
    }

    fn budget(holder: &Holder<'_>, b: &Cap, spent_nanos: u64, wait: Option<Duration>) -> Refusal {
        let what = match b.slot {
            0 => "daily",
            1 => "monthly",
            _ => "total",
        };
        let who = match holder {
            Holder::Key(k) => format!("The API key '{}'", k.entry.id),
            Holder::Group(kind, name, _) => format!("The {} '{name}'", kind.as_str()),
        };
        Refusal {
            error: GatewayError::Upstream {
                status: 429,
                message: format!(
                    "{who} has used its {what} budget of ${} (spent ${:.6}).",
                    b.usd,
                    spent_nanos as f64 / NANOS_PER_USD
                ),
                retry_after: wait.map(retry_secs),
                code: "insufficient_quota",
            },
            headers: None,
        }
    }
}

/// An admitted request: what to reconcile when it ends, and its rate headers.
pub struct Ticket {
    /// The spend of each holder (key, project, team, user) the cost goes to.
    states: [Option<Arc<KeyState>>; 4],
    /// Every rate limit that took tokens (the key's model, key, project, team, user).
    rates: [Option<Arc<RateState>>; 5],
    estimate: u64,
    requests: Option<Snapshot>,
    tokens: Option<Snapshot>,
    settled: bool,
    /// Admitted through the shared backend: what to settle there.
    fleet: Option<FleetTicket>,
}

impl Ticket {
    fn refused(r: &Refusal) -> Ticket {
        let (requests, tokens) = match r.headers {
            Some(("requests", s)) => (Some(s), None),
            Some((_, s)) => (None, Some(s)),
            None => (None, None),
        };
        Ticket {
            states: Default::default(),
            rates: Default::default(),
            estimate: 0,
            requests,
            tokens,
            settled: true,
            fleet: None,
        }
    }

    /// The OpenAI-style `x-ratelimit-*` headers for this request's tightest limits.
    pub fn headers(&self, mut put: impl FnMut(&'static str, String)) {
        if let Some(s) = self.requests {
            put("x-ratelimit-limit-requests", s.limit.to_string());
            put("x-ratelimit-remaining-requests", s.remaining.to_string());
            put("x-ratelimit-reset-requests", duration_text(s.reset));
        }
        if let Some(s) = self.tokens {
            put("x-ratelimit-limit-tokens", s.limit.to_string());
            put("x-ratelimit-remaining-tokens", s.remaining.to_string());
            put("x-ratelimit-reset-tokens", duration_text(s.reset));
        }
    }

    /// The request ended: reconcile the token estimate with the real usage and add its cost
    /// to the key's spend. Called once; later calls do nothing.
    pub fn settle(&mut self, tokens: u64, cost_usd: f64) {
        if std::mem::replace(&mut self.settled, true) {
            return;
        }
        if let Some(f) = self.fleet.take() {
            let nanos = if cost_usd.is_finite() && cost_usd > 0.0 {
                (cost_usd * NANOS_PER_USD).round() as u64
            } else {
                0
            };
            f.settle(tokens, nanos);
            return;
        }
        for r in self.rates.iter().flatten() {
            if let Some(t) = &r.tpm {
                t.adjust(tokens as i64 - t.charge(self.estimate) as i64);
            }
        }
        if cost_usd.is_finite() && cost_usd > 0.0 {
            let now_ms = super::virtual_keys::now_ms();
            let nanos = (cost_usd * NANOS_PER_USD).round() as u64;
            for s in self.states.iter().flatten() {
                s.spend.add(now_ms, nanos);
            }
        }
    }
}

/// Go-style duration text as OpenAI sends it: `20ms`, `1.5s`, `6m0s`.
pub fn duration_text(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches('0').trim_end_matches('.'))
    } else {
        format!("{}m{}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// Report a budget's soft threshold once per holder, period and gateway: a log line,
/// `loopgate_budget_soft_threshold_total` and, when a webhook is configured, a
/// `budget.soft_threshold` event (queued: never blocks, a full queue drops and counts).
fn soft_threshold(
    state: &KeyState,
    holder: &Holder<'_>,
    b: &Cap,
    spent: u64,
    now_ms: i64,
    webhook: Option<&WebhookSender>,
) {
    let Some(pct) = b.soft_pct else { return };
    let slot = b.slot;
    let soft = (b.usd * pct / 100.0 * NANOS_PER_USD) as u64;
    let idx = period_index(slot, now_ms);
    if spent >= soft && state.spend.soft_seen[slot].swap(idx, Ordering::AcqRel) != idx {
        crate::metrics::metrics()
            .budget_soft_threshold
            .with_label_values(&[PERIOD_ORDER[slot]])
            .inc();
        let (scope, name) = match holder {
            Holder::Key(k) => ("key", k.entry.id.as_str()),
            Holder::Group(kind, name, _) => (kind.as_str(), *name),
        };
        tracing::warn!(
            scope,
            name,
            period = PERIOD_ORDER[slot],
            budget_usd = b.usd,
            spent_usd = spent as f64 / NANOS_PER_USD,
            "soft budget threshold passed"
        );
        if let Some(w) = webhook.filter(|w| w.wants(EventKind::BudgetSoftThreshold)) {
            let _ = w.try_send(WebhookEvent::new(
                EventKind::BudgetSoftThreshold,
                soft_threshold_event(holder, b, spent),
            ));
        }
    }
}

/// The `data` of a `budget.soft_threshold` event (never the key's secret or hash).
fn soft_threshold_event(holder: &Holder<'_>, b: &Cap, spent: u64) -> serde_json::Value {
    let mut data = match holder {
        Holder::Key(key) => serde_json::json!({
            "scope": "key",
            "key_id": key.entry.id,
            "key_name": key.spec.name,
            "project": key.spec.project,
        }),
        Holder::Group(kind, name, _) => serde_json::json!({
            "scope": kind.as_str(),
            "name": name,
        }),
    };
    if let Some(o) = data.as_object_mut() {
        o.insert("period".into(), PERIOD_ORDER[b.slot].into());
        o.insert("budget_usd".into(), b.usd.into());
        o.insert("soft_pct".into(), b.soft_pct.into());
        o.insert("spent_usd".into(), (spent as f64 / NANOS_PER_USD).into());
    }
    data
}

/// The per-key limiter of one gateway.
pub struct Limiter {
    keys: DashMap<String, Arc<KeyState>>,
    /// Projects, teams and users (in [`GroupKind::ALL`] order) by name: only names the
    /// configuration has limits for get a state, so clients cannot grow these maps.
    groups: [DashMap<String, Arc<KeyState>>; 3],
    epoch: Instant,
    /// The shared backend (`[limits] backend = "redis"`); `None`: in process.
    fleet: Option<Arc<Fleet>>,
    /// Unix ms at creation; whether the spend before it was reloaded from the store.
    started_ms: i64,
    loaded: std::sync::atomic::AtomicBool,
    /// Where `budget.soft_threshold` events go (`[webhook]`), once the server set it.
    webhook: std::sync::OnceLock<WebhookSender>,
}

impl Default for Limiter {
    fn default() -> Self {
        Limiter::new()
    }
}

/// A request's token estimate: a quarter of the body's bytes plus the completion cap.
pub fn estimate(body: &serde_json::Map<String, serde_json::Value>, body_bytes: usize) -> u64 {
    let cap = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|f| body.get(*f).and_then(serde_json::Value::as_u64))
        .unwrap_or(0);
    (body_bytes as u64 / 4).saturating_add(cap)
}

impl Limiter {
    pub fn new() -> Limiter {
        Limiter {
            keys: DashMap::new(),
            groups: Default::default(),
            epoch: Instant::now(),
            fleet: None,
            started_ms: super::virtual_keys::now_ms(),
            loaded: std::sync::atomic::AtomicBool::new(false),
            webhook: std::sync::OnceLock::new(),
        }
    }

    /// Send budget events to `sender` (the gateway's `[webhook]`); the first call wins.
    pub fn set_webhook(&self, sender: WebhookSender) {
        let _ = self.webhook.set(sender);
    }

    /// The limiter `[limits]` asks for (Redis is not contacted until the first request).
    pub fn with_config(cfg: &LimitsConfig) -> Result<Limiter, String> {
        let mut l = Limiter::new();
        if cfg.backend == LimitsBackend::Redis {
            l.fleet = Some(Arc::new(Fleet::new(cfg)?));
        }
        Ok(l)
    }

    /// Where the shared backend is (redacted: no credentials); `None` in process.
    pub fn endpoint(&self) -> Option<String> {
        self.fleet.as_ref().map(|f| f.endpoint())
    }

    /// Whether counters and spend are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.fleet.is_some()
    }

    /// Add a key's spend of the current day, month and total (USD), as recomputed from the
    /// store's traces of requests that started before this limiter existed (in process
    /// only: with Redis the spend is already shared there).
    pub fn seed_spend(&self, id: &str, usd: [f64; 3], now_ms: i64) {
        if self.fleet.is_some() {
            return;
        }
        seed_into(&self.keys, id, usd, now_ms);
    }

    /// Unix ms when this limiter was made: the spend of requests that started earlier is
    /// reloaded from the store ([`reload_spend`](Self::reload_spend)).
    pub fn started_ms(&self) -> i64 {
        self.started_ms
    }

    /// Whether the spend reload from the store is done (or not needed).
    pub fn spend_loaded(&self) -> bool {
        self.fleet.is_some() || self.loaded.load(Ordering::Acquire)
    }

    /// Reload the spend of the current day, month and total of every virtual key and of
    /// the projects, teams and users `groups` has limits for, from the store's traces (in
    /// process only; once, at start). Returns the keys and groups seeded.
    pub async fn reload_spend(
        &self,
        store: &dyn crate::store::Store,
        groups: &LimitsConfig,
    ) -> Result<usize, crate::store::StoreError> {
        if self.fleet.is_some() {
            return Ok(0);
        }
        let now_ms = super::virtual_keys::now_ms();
        let (day_ms, month_ms) = period_starts(now_ms);
        let rows = store
            .holder_spend(day_ms, month_ms, self.started_ms)
            .await?;
        // A key's team and user come from its spec (the trace has neither of the key's).
        let mut owners: HashMap<String, (Option<String>, Option<String>)> = HashMap::new();
        if !groups.teams.is_empty() || !groups.users.is_empty() {
            for row in store.virtual_keys().await? {
                if let Ok(spec) = serde_json::from_str::<super::virtual_keys::KeySpec>(&row.spec) {
                    owners.insert(row.id, (spec.team, spec.user));
                }
            }
        }
        let mut keys: HashMap<&str, [f64; 3]> = HashMap::new();
        let mut sums: [HashMap<&str, [f64; 3]>; 3] = Default::default();
        for r in &rows {
            let key = r.key_id.as_deref();
            if let Some(k) = key.filter(|k| k.starts_with("vk_")) {
                add_spend(&mut keys, k, &r.usd);
            }
            let (team, key_user) = key
                .and_then(|k| owners.get(k))
                .map_or((None, None), |(t, u)| (t.as_deref(), u.as_deref()));
            let names = [
                r.project_id.as_deref(),
                team,
                key_user.or(r.user_id.as_deref()),
            ];
            for (kind, name) in GroupKind::ALL.into_iter().zip(names) {
                if let Some(n) = name.filter(|n| kind.configured(groups).contains_key(*n)) {
                    add_spend(&mut sums[kind as usize], n, &r.usd);
                }
            }
        }
        for (id, usd) in &keys {
            self.seed_spend(id, *usd, now_ms);
        }
        for kind in GroupKind::ALL {
            for (name, usd) in &sums[kind as usize] {
                self.seed_group_spend(kind, name, *usd, now_ms);
            }
        }
        self.loaded.store(true, Ordering::Release);
        Ok(keys.len() + sums.iter().map(HashMap::len).sum::<usize>())
    }

    /// Add a project's, team's or user's spend (USD) as recomputed from the store.
    pub fn seed_group_spend(&self, kind: GroupKind, name: &str, usd: [f64; 3], now_ms: i64) {
        if self.fleet.is_some() {
            return;
        }
        seed_into(&self.groups[kind as usize], name, usd, now_ms);
    }

    /// The spend of key `id` in the current day, month and in total (USD): this gateway's
    /// in process, the fleet's with Redis.
    pub async fn spend_now(&self, id: &str, now_ms: i64) -> Result<[f64; 3], GatewayError> {
        let Some(f) = &self.fleet else {
            return Ok(self.spend(id, now_ms));
        };
        let keys = f.spend_keys(id, period_index(0, now_ms), period_index(1, now_ms));
        match f.spend(&keys).await {
            Ok(n) => Ok(n.map(|v| v as f64 / NANOS_PER_USD)),
            Err(e) => {
                f.log_fault("reading spend", &e);
                Err(GatewayError::Unavailable(format!(
                    "the shared limits store did not answer: {e}"
                )))
            }
        }
    }

    /// Admit one request of `who` for `model` with an estimate of `tokens`: in process or
    /// through Redis (async only then, bounded by `limits.timeout_ms`). Budgets first, then
    /// requests and tokens per minute of the key's model, the key, the project, the team
    /// and the user; nothing is taken unless all fit. The ticket (headers, and what to
    /// reconcile) goes into `slot` whether or not the request is admitted. A request no
    /// limit applies to costs a few branches.
    pub async fn admit_request(
        &self,
        cfg: &LimitsConfig,
        who: Who<'_>,
        model: &str,
        tokens: u64,
        slot: &mut Option<Ticket>,
    ) -> Result<(), GatewayError> {
        let holders = holders(cfg, &who);
        if holders.iter().all(Option::is_none) {
            return Ok(());
        }
        let checked = match &self.fleet {
            None => self.check(&holders, model, tokens),
            Some(fleet) => self.check_shared(fleet, &holders, model, tokens).await,
        };
        fill_slot(checked, slot)
    }

    /// [`admit_request`](Self::admit_request) for a key alone, in process.
    pub fn admit(
        &self,
        key: Option<&Arc<VirtualKey>>,
        model: &str,
        tokens: u64,
        slot: &mut Option<Ticket>,
    ) -> Result<(), GatewayError> {
        let cfg = LimitsConfig::default();
        let holders = holders(
            &cfg,
            &Who {
                key,
                ..Who::default()
            },
        );
        if holders.iter().all(Option::is_none) {
            return Ok(());
        }
        fill_slot(self.check(&holders, model, tokens), slot)
    }

    async fn check_shared(
        &self,
        fleet: &Arc<Fleet>,
        holders: &[Option<Holder<'_>>; 4],
        model: &str,
        tokens: u64,
    ) -> Result<Ticket, Box<Refusal>> {
        let now_ms = super::virtual_keys::now_ms();
        let (day, month) = (period_index(0, now_ms), period_index(1, now_ms));
        let present: Vec<(Holder<'_>, String)> = holders
            .iter()
            .flatten()
            .map(|h| (*h, h.shared_id()))
            .collect();
        let spend_keys: Vec<[String; 3]> = present
            .iter()
            .map(|(_, id)| fleet.spend_keys(id, day, month))
            .collect();
        let caps: Vec<[i64; 3]> = present
            .iter()
            .map(|(h, _)| {
                let mut c = [-1i64; 3];
                for b in h.caps() {
                    c[b.slot] = b.nanos().min(i64::MAX as u64) as i64;
                }
                c
            })
            .collect();
        // The narrower scope first, as in process; nothing is taken unless all fit.
        let mut rates: Vec<SharedRate<'_>> = Vec::with_capacity(5);
        for (h, id) in &present {
            if let Holder::Key(k) = h {
                if let Some(r) = k.spec.limits.models.get(model) {
                    rates.push(((r.rpm, r.tpm), Scope::Model(model), id, Some(model)));
                }
            }
            rates.push((h.rate_of(), h.scope(), id, None));
        }
        let mut limits: Vec<SharedLimit> = Vec::new();
        // Per limit: scope, tokens (not requests), the limit, the tokens charged.
        let mut meta: Vec<(Scope<'_>, bool, u64, u64)> = Vec::new();
        for ((rpm, tpm), scope, id, name) in rates {
            if let Some(n) = rpm {
                if n == 0 {
                    return Err(Box::new(Refusal::requests(scope, 0, MINUTE)));
                }
                let us = WINDOW_US / n as f64;
                limits.push(SharedLimit {
                    key: fleet.rate_key(id, name, "rpm"),
                    us_per_unit: us,
                    cost_us: us,
                });
                meta.push((scope, false, n, 0));
            }
            if let Some(n) = tpm {
                if n == 0 {
                    return Err(Box::new(Refusal::tokens(scope, 0, MINUTE)));
                }
                let us = WINDOW_US / n as f64;
                let charged = tokens.min(n);
                limits.push(SharedLimit {
                    key: fleet.rate_key(id, name, "tpm"),
                    us_per_unit: us,
                    cost_us: charged as f64 * us,
                });
                meta.push((scope, true, n, charged));
            }
        }
        let fleet_ticket = |charged: bool| FleetTicket {
            fleet: fleet.clone(),
            spend_keys: spend_keys.clone(),
            tokens: if charged {
                limits
                    .iter()
                    .zip(&meta)
                    .filter(|(_, m)| m.1)
                    .map(|(l, m)| (l.key.clone(), l.us_per_unit, m.3))
                    .collect()
            } else {
                Vec::new()
            },
        };
        let mut ticket = Ticket {
            states: Default::default(),
            rates: Default::default(),
            estimate: tokens,
            requests: None,
            tokens: None,
            settled: false,
            fleet: None,
        };
        match fleet.admit(&spend_keys, &caps, &limits).await {
            Ok(Verdict::Admitted { spent, used_us }) => {
                for (i, (h, _)) in present.iter().enumerate() {
                    let mut caps = h.caps().filter(|b| b.soft_pct.is_some()).peekable();
                    if caps.peek().is_none() {
                        continue;
                    }
                    let state = self.state_of(h);
                    for b in caps {
                        let s = spent.get(i * 3 + b.slot).copied().unwrap_or(0);
                        soft_threshold(&state, h, &b, s, now_ms, self.webhook.get());
                    }
                }
                for ((l, m), used) in limits.iter().zip(&meta).zip(used_us) {
                    let free = (WINDOW_US - used as f64).max(0.0);
                    let s = Snapshot {
                        limit: m.2,
                        remaining: ((free / l.us_per_unit).floor() as u64).min(m.2),
                        reset: Duration::from_micros(used),
                    };
                    let cur = if m.1 {
                        &mut ticket.tokens
                    } else {
                        &mut ticket.requests
                    };
                    if cur.is_none_or(|c| s.remaining < c.remaining) {
                        *cur = Some(s);
                    }
                }
                ticket.fleet = Some(fleet_ticket(true));
                Ok(ticket)
            }
            Ok(Verdict::Budget { slot, spent }) => {
                let (h, _) = &present[(slot / 3).min(present.len().saturating_sub(1))];
                let period = slot % 3;
                let b = h.caps().find(|b| b.slot == period).unwrap_or(Cap {
                    slot: period,
                    usd: 0.0,
                    soft_pct: None,
                });
                Err(Box::new(Refusal::budget(
                    h,
                    &b,
                    spent,
                    until_next_period(period, now_ms),
                )))
            }
            Ok(Verdict::Rate { index, wait }) => {
                let (scope, is_tokens, n, _) = meta[index.min(meta.len().saturating_sub(1))];
                Err(Box::new(if is_tokens {
                    Refusal::tokens(scope, n, wait)
                } else {
                    Refusal::requests(scope, n, wait)
                }))
            }
            Err(e) => match fleet.failure_mode {
                FailureMode::FailOpen => {
                    fleet.fault("admission", &e, "admitted");
                    // Nothing was charged; the request's cost still goes to the shared
                    // spend when it ends, if Redis answers by then.
                    ticket.fleet = Some(fleet_ticket(false));
                    Ok(ticket)
                }
                FailureMode::FailClosed => {
                    fleet.fault("admission", &e, "refused");
                    Err(Box::new(Refusal {
                        error: fleet.unavailable(),
                        headers: None,
                    }))
                }
            },
        }
    }

    /// This gateway's spend of key `id` in the current day, month and in total (USD).
    pub fn spend(&self, id: &str, now_ms: i64) -> [f64; 3] {
        let Some(s) = self.keys.get(id) else {
            return [0.0; 3];
        };
        [0, 1, 2].map(|slot| s.spend.spent(slot, now_ms) as f64 / NANOS_PER_USD)
    }

    /// This gateway's spend of a project, team or user (USD; zero when it has no state).
    pub fn group_spend(&self, kind: GroupKind, name: &str, now_ms: i64) -> [f64; 3] {
        let Some(s) = self.groups[kind as usize].get(name) else {
            return [0.0; 3];
        };
        [0, 1, 2].map(|slot| s.spend.spent(slot, now_ms) as f64 / NANOS_PER_USD)
    }

    /// The spend of a project, team or user in the current day, month and in total (USD):
    /// this gateway's in process, the fleet's with Redis.
    pub async fn group_spend_now(
        &self,
        kind: GroupKind,
        name: &str,
        now_ms: i64,
    ) -> Result<[f64; 3], GatewayError> {
        match &self.fleet {
            None => Ok(self.group_spend(kind, name, now_ms)),
            Some(_) => {
                self.spend_now(&format!("{}:{name}", kind.as_str()), now_ms)
                    .await
            }
        }
    }

    /// The state of one holder: made on first use; its rate state is rebuilt when its
    /// limits changed (a key's `PATCH`, a group's reload), its spend kept.
    fn state_of(&self, h: &Holder<'_>) -> Arc<KeyState> {
        let (map, id) = match h {
            Holder::Key(k) => (&self.keys, k.entry.id.as_str()),
            Holder::Group(kind, name, _) => (&self.groups[*kind as usize], *name),
        };
        if let Some(s) = map.get(id) {
            return s.clone();
        }
        map.entry(id.to_string())
            .or_insert_with(|| {
                Arc::new(KeyState {
                    rates: ArcSwap::from_pointee(Rates::new(&Limits::default())),
                    spend: Spend::new(),
                })
            })
            .clone()
    }

    /// The holder's current rate state (rebuilt when its limits changed).
    fn rates_of(state: &KeyState, h: &Holder<'_>) -> Arc<Rates> {
        let rates = state.rates.load_full();
        let same = match h {
            Holder::Key(k) => rates.limits == k.spec.limits,
            Holder::Group(_, _, g) => {
                rates.limits.rpm == g.rpm
                    && rates.limits.tpm == g.tpm
                    && rates.limits.models.is_empty()
            }
        };
        if same {
            return rates;
        }
        let limits = match h {
            Holder::Key(k) => k.spec.limits.clone(),
            Holder::Group(_, _, g) => Limits {
                rpm: g.rpm,
                tpm: g.tpm,
                models: Default::default(),
            },
        };
        let fresh = Arc::new(Rates::new(&limits));
        let prev = state.rates.compare_and_swap(&rates, fresh.clone());
        if Arc::ptr_eq(&prev, &rates) {
            fresh
        } else {
            arc_swap::Guard::into_inner(prev)
        }
    }

    fn check(
        &self,
        holders: &[Option<Holder<'_>>; 4],
        model: &str,
        tokens: u64,
    ) -> Result<Ticket, Box<Refusal>> {
        let now_ms = super::virtual_keys::now_ms();
        let mut ticket = Ticket {
            states: Default::default(),
            rates: Default::default(),
            estimate: tokens,
            requests: None,
            tokens: None,
            settled: false,
            fleet: None,
        };
        // Budgets of every holder first: a spent budget refuses before any rate is taken.
        let mut scopes: [Option<(Arc<RateState>, Scope<'_>)>; 5] = Default::default();
        for (i, h) in holders.iter().enumerate() {
            let Some(h) = h else { continue };
            let state = self.state_of(h);
            for b in h.caps() {
                let spent = state.spend.spent(b.slot, now_ms);
                if spent >= b.nanos() {
                    return Err(Box::new(Refusal::budget(
                        h,
                        &b,
                        spent,
                        until_next_period(b.slot, now_ms),
                    )));
                }
                soft_threshold(&state, h, &b, spent, now_ms, self.webhook.get());
            }
            let rates = Self::rates_of(&state, h);
            if i == 0 {
                scopes[0] = rates
                    .models
                    .get(model)
                    .map(|r| (r.clone(), Scope::Model(model)));
            }
            scopes[i + 1] = rates.key.clone().map(|r| (r, h.scope()));
            ticket.states[i] = Some(state);
        }
        let now_ns = self.epoch.elapsed().as_nanos().min(i64::MAX as u128) as i64;
        // The narrower scope first, so a model refusal costs the key nothing; tokens taken
        // before a later refusal are given back.
        let mut took: [Option<&TokenRate>; 5] = [None; 5];
        let refund = |took: &[Option<&TokenRate>; 5]| {
            for t in took.iter().flatten() {
                t.adjust(-(t.charge(tokens) as i64));
            }
        };
        for (i, entry) in scopes.iter().enumerate() {
            let Some((rate, scope)) = entry else { continue };
            match rate.requests(*scope) {
                Ok(Some(s)) => {
                    if ticket
                        .requests
                        .is_none_or(|cur| s.remaining < cur.remaining)
                    {
                        ticket.requests = Some(s);
                    }
                }
                Ok(None) => {}
                Err(r) => {
                    refund(&took);
                    return Err(r);
                }
            }
            if let Some(t) = &rate.tpm {
                match t.take(now_ns, tokens) {
                    Ok(s) => {
                        took[i] = Some(t);
                        if ticket.tokens.is_none_or(|cur| s.remaining < cur.remaining) {
                            ticket.tokens = Some(s);
                        }
                    }
                    Err(wait) => {
                        refund(&took);
                        return Err(Box::new(Refusal::tokens(*scope, t.tpm, wait)));
                    }
                }
            }
        }
        for (i, entry) in scopes.into_iter().enumerate() {
            ticket.rates[i] = entry.map(|(r, _)| r);
        }
        Ok(ticket)
    }
}

fn add_spend<'a>(m: &mut HashMap<&'a str, [f64; 3]>, k: &'a str, usd: &[f64; 3]) {
    let e = m.entry(k).or_insert([0.0; 3]);
    for (sum, v) in e.iter_mut().zip(usd) {
        *sum += v;
    }
}

/// Reloads the spend of virtual keys from the store once at start (in process backend), so
/// a restart does not reset budgets. Retries while the store is not up, for a bounded time.
pub struct SpendReload {
    pub limiter: Arc<Limiter>,
    pub slot: crate::store::writer::StoreSlot,
    /// `[limits]` at start: which projects, teams and users to reload (one added later by
    /// a reload counts from then on).
    pub groups: LimitsConfig,
}

impl SpendReload {
    /// Attempts, one per second at most, before giving up (logged).
    const ATTEMPTS: u32 = 120;

    async fn run(&self) {
        let mut warned = false;
        for _ in 0..Self::ATTEMPTS {
            let Some(store) = self.slot.wait(Duration::from_secs(1)).await else {
                continue;
            };
            match self
                .limiter
                .reload_spend(store.as_ref(), &self.groups)
                .await
            {
                Ok(n) => {
                    tracing::info!(
                        keys = n,
                        "limits: the spend of keys, projects, teams and users reloaded from the store"
                    );
                    return;
                }
                Err(e) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(error = %e, "limits: cannot reload spend from the store yet; retrying");
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        tracing::error!(
            "limits: spend not reloaded from the store; budgets count only this process's requests"
        );
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for SpendReload {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        if self.limiter.spend_loaded() {
            return;
        }
        tokio::select! {
            _ = self.run() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Keep the ticket of an admission (its headers, and what to reconcile) in `slot`, whether
/// or not the request was admitted.
fn fill_slot(
    checked: Result<Ticket, Box<Refusal>>,
    slot: &mut Option<Ticket>,
) -> Result<(), GatewayError> {
    match checked {
        Ok(t) => {
            *slot = Some(t);
            Ok(())
        }
        Err(r) => {
            *slot = Some(Ticket::refused(&r));
            Err(r.error)
        }
    }
}

/// Add a holder's recomputed spend (day, month, total; USD) to its state in `map`, creating
/// the state (without rates) when the holder has not been seen yet.
fn seed_into(map: &DashMap<String, Arc<KeyState>>, name: &str, usd: [f64; 3], now_ms: i64) {
    let state = map
        .entry(name.to_string())
        .or_insert_with(|| {
            Arc::new(KeyState {
                rates: ArcSwap::from_pointee(Rates::new(&Limits::default())),
                spend: Spend::new(),
            })
        })
        .clone();
    for (slot, usd) in usd.into_iter().enumerate() {
        if usd.is_finite() && usd > 0.0 {
            state
                .spend
                .add_slot(slot, now_ms, (usd * NANOS_PER_USD).round() as u64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::keys::KeyEntry;
    use crate::auth::virtual_keys::KeySpec;

    fn key(spec: serde_json::Value) -> Arc<VirtualKey> {
        let spec =
            KeySpec::from_object(spec.as_object().cloned().unwrap_or_default()).unwrap_or_default();
        Arc::new(VirtualKey {
            entry: Arc::new(KeyEntry {
                id: "vk_t".into(),
                scopes: spec.scopes.clone(),
                project: None,
                route: None,
                zero_retention: false,
            }),
            expires_ms: None,
            spec,
        })
    }

    fn admit(l: &Limiter, k: &Arc<VirtualKey>, model: &str, tokens: u64) -> Result<Ticket, u16> {
        let mut slot = None;
        match l.admit(Some(k), model, tokens, &mut slot) {
            Ok(()) => slot.ok_or(0),
            Err(e) => Err(e.status()),
        }
    }

    #[test]
    fn requests_per_minute_admit_exactly_the_quota() {
        let l = Limiter::new();
        let k = key(serde_json::json!({"limits": {"rpm": 5}}));
        let ok = (0..8).filter(|_| admit(&l, &k, "m", 0).is_ok()).count();
        assert_eq!(ok, 5);
        let mut slot = None;
        let e = l.admit(Some(&k), "m", 0, &mut slot);
        assert!(matches!(
            e,
            Err(GatewayError::Upstream {
                status: 429,
                code: "rate_limit_exceeded",
                retry_after: Some(_),
                ..
            })
        ));
        let mut h = Vec::new();
        if let Some(t) = &slot {
            t.headers(|k, v| h.push((k, v)));
        }
        assert!(h.contains(&("x-ratelimit-remaining-requests", "0".to_string())));
        assert!(h.contains(&("x-ratelimit-limit-requests", "5".to_string())));
    }

    #[test]
    fn tokens_are_estimated_then_reconciled() {
        let l = Limiter::new();
        let k = key(serde_json::json!({"limits": {"tpm": 1000}}));
        let mut t = admit(&l, &k, "m", 900).unwrap_or_else(|_| panic!("first fits"));
        assert_eq!(admit(&l, &k, "m", 200).err(), Some(429));
        // The request really used 100 tokens: 800 come back.
        t.settle(100, 0.0);
        let t2 = admit(&l, &k, "m", 200).unwrap_or_else(|_| panic!("fits after refund"));
        assert!(t2
            .tokens
            .is_some_and(|s| s.remaining >= 690 && s.remaining <= 700));
    }

    #[test]
    fn per_model_limit_does_not_spend_the_key_quota() {
        let l = Limiter::new();
        let k = key(serde_json::json!({"limits": {"rpm": 3, "models": {"big": {"rpm": 1}}}}));
        assert!(admit(&l, &k, "big", 0).is_ok());
        assert_eq!(admit(&l, &k, "big", 0).err(), Some(429));
        assert!(admit(&l, &k, "small", 0).is_ok());
        assert!(admit(&l, &k, "small", 0).is_ok());
        assert_eq!(admit(&l, &k, "small", 0).err(), Some(429));
    }

    #[test]
    fn budget_stops_after_the_spend_and_names_it() {
        let l = Limiter::new();
        let k = key(serde_json::json!({"budgets": [{"period": "day", "usd": 0.01}]}));
        let mut t = admit(&l, &k, "m", 0).unwrap_or_else(|_| panic!("under budget"));
        // A stream that ends past the budget is billed in full.
        t.settle(0, 0.02);
        t.settle(0, 5.0); // settled once
        let mut slot = None;
        match l.admit(Some(&k), "m", 0, &mut slot) {
            Err(GatewayError::Upstream {
                status: 429,
                code: "insufficient_quota",
                message,
                retry_after,
            }) => {
                assert!(message.contains("daily budget"), "{message}");
                assert!(message.contains("$0.01 (spent $0.020000)"), "{message}");
                assert!(retry_after.is_some());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn soft_threshold_queues_one_webhook_event_per_period_and_never_blocks() {
        use crate::rollout::webhook::{WebhookConfig, WebhookStats};
        let mut c = WebhookConfig::new(
            "http://127.0.0.1:9/hook",
            crate::providers::Secret::new("whsec".into()),
        );
        c.queue_capacity = 1;
        let stats = Arc::new(WebhookStats::new().unwrap_or_else(|e| panic!("{e}")));
        // The worker is never run: events stay queued where the test can read them.
        let (sender, mut worker) = WebhookSender::new(c, stats).unwrap_or_else(|e| panic!("{e}"));
        let l = Limiter::new();
        l.set_webhook(sender.clone());
        let k = key(serde_json::json!({
            "project": "shop",
            "budgets": [{"period": "day", "usd": 1.0, "soft_pct": 50}]
        }));
        let mut t = admit(&l, &k, "m", 0).unwrap_or_else(|_| panic!("under budget"));
        t.settle(0, 0.4);
        assert!(admit(&l, &k, "m", 0).is_ok());
        assert_eq!(sender.queue_len(), 0, "40% is under the soft threshold");
        let mut t = admit(&l, &k, "m", 0).unwrap_or_else(|_| panic!("under budget"));
        t.settle(0, 0.2);
        for _ in 0..5 {
            assert!(admit(&l, &k, "m", 0).is_ok());
        }
        assert_eq!(sender.queue_len(), 1, "once per key, budget and period");
        assert_eq!(
            sender.stats().snapshot().dropped,
            0,
            "no second event tried"
        );
        let e = worker
            .try_recv()
            .unwrap_or_else(|| panic!("an event was queued"));
        assert_eq!(e.kind, EventKind::BudgetSoftThreshold);
        assert_eq!(e.data["key_id"], "vk_t");
        assert_eq!(e.data["project"], "shop");
        assert_eq!(e.data["period"], "day");
        assert_eq!(e.data["budget_usd"], 1.0);
        assert!((e.data["spent_usd"].as_f64().unwrap_or_default() - 0.6).abs() < 1e-9);
        // A full queue drops the event (counted); the request is still admitted.
        sender.try_send(WebhookEvent::new(EventKind::Audit, serde_json::json!({})));
        let k2 = Arc::new(VirtualKey {
            entry: Arc::new(KeyEntry {
                id: "vk_u".into(),
                ..(*k.entry).clone()
            }),
            spec: k.spec.clone(),
            expires_ms: None,
        });
        let mut t = admit(&l, &k2, "m", 0).unwrap_or_else(|_| panic!("under budget"));
        t.settle(0, 0.9);
        assert!(admit(&l, &k2, "m", 0).is_ok());
        assert_eq!(sender.stats().snapshot().dropped, 1);
    }

    #[test]
    fn patch_rebuilds_rates_and_keeps_spend() {
        let l = Limiter::new();
        let k1 = key(
            serde_json::json!({"limits": {"rpm": 1}, "budgets": [{"period": "total", "usd": 1}]}),
        );
        let mut t = admit(&l, &k1, "m", 0).unwrap_or_else(|_| panic!("first"));
        t.settle(0, 1.5);
        let k2 = key(
            serde_json::json!({"limits": {"rpm": 2}, "budgets": [{"period": "total", "usd": 2}]}),
        );
        assert!(admit(&l, &k2, "m", 0).is_ok());
        let k3 = key(
            serde_json::json!({"limits": {"rpm": 2}, "budgets": [{"period": "total", "usd": 1}]}),
        );
        assert_eq!(admit(&l, &k3, "m", 0).err(), Some(429));
    }

    #[test]
    fn reloaded_spend_adds_to_what_this_gateway_counted() {
        let l = Limiter::new();
        let k = key(serde_json::json!({"budgets": [{"period": "day", "usd": 1.0}]}));
        let mut t = admit(&l, &k, "m", 0).unwrap_or_else(|_| panic!("under budget"));
        t.settle(0, 0.25);
        let now = crate::auth::virtual_keys::now_ms();
        l.seed_spend("vk_t", [0.5, 0.5, 2.0], now);
        assert_eq!(l.spend("vk_t", now), [0.75, 0.75, 2.25]);
        assert!(admit(&l, &k, "m", 0).is_ok());
        l.seed_spend("vk_t", [0.25, 0.0, 0.0], now);
        assert_eq!(admit(&l, &k, "m", 0).err(), Some(429));
        let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        assert_eq!(
            period_starts(t0 + 40 * 86_400_000 + 5 * 3_600_000),
            (t0 + 40 * 86_400_000, t0 + 31 * 86_400_000)
        );
    }

    fn groups(toml_text: &str) -> LimitsConfig {
        toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn admit_who(l: &Limiter, cfg: &LimitsConfig, who: Who<'_>) -> Result<Ticket, String> {
        let mut slot = None;
        let r =
            futures_util::FutureExt::now_or_never(l.admit_request(cfg, who, "m", 10, &mut slot))
                .unwrap_or_else(|| panic!("in process admission never waits"));
        match r {
            Ok(()) => Ok(slot.unwrap_or_else(|| {
                Ticket::refused(&Refusal {
                    error: GatewayError::Internal(String::new()),
                    headers: None,
                })
            })),
            Err(GatewayError::Upstream { message, .. }) => Err(message),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn a_project_limit_binds_every_key_of_the_project_and_config_keys_too() {
        let cfg = groups("[projects.shop]\nrpm = 3\n[projects.idle]\n");
        let l = Limiter::new();
        let (k1, k2) = (
            key(serde_json::json!({"project": "shop"})),
            key(serde_json::json!({"project": "shop", "limits": {"rpm": 100}})),
        );
        let shop = |k| Who {
            key: k,
            project: Some("shop"),
            user: None,
        };
        assert!(admit_who(&l, &cfg, shop(Some(&k1))).is_ok());
        assert!(admit_who(&l, &cfg, shop(Some(&k2))).is_ok());
        // A config-file key (no virtual key) naming the project by header.
        assert!(admit_who(&l, &cfg, shop(None)).is_ok());
        let refused = admit_who(&l, &cfg, shop(Some(&k2)))
            .err()
            .unwrap_or_default();
        assert!(
            refused.contains("the project 'shop': 3 requests per minute"),
            "{refused}"
        );
        // Other projects, unconfigured or without limits, are free and get no state.
        for p in ["other", "idle"] {
            let who = Who {
                project: Some(p),
                ..Who::default()
            };
            assert!(admit_who(&l, &cfg, who).is_ok());
        }
        assert_eq!(l.groups[0].len(), 1, "only the limited project has state");
    }

    #[test]
    fn team_budget_and_user_limits_come_from_the_key_first() {
        let cfg = groups(
            "[teams.pay]\nbudgets = [{ period = \"month\", usd = 0.5 }]\n[users.bob]\ntpm = 15\n",
        );
        let l = Limiter::new();
        let t = key(serde_json::json!({"team": "pay"}));
        let who = Who {
            key: Some(&t),
            ..Who::default()
        };
        let mut ticket = admit_who(&l, &cfg, who).unwrap_or_else(|e| panic!("{e}"));
        ticket.settle(10, 0.75);
        let refused = admit_who(&l, &cfg, who).err().unwrap_or_default();
        assert!(
            refused.contains("The team 'pay' has used its monthly budget of $0.5"),
            "{refused}"
        );
        let now = crate::auth::virtual_keys::now_ms();
        assert_eq!(
            l.group_spend(GroupKind::Team, "pay", now),
            [0.75, 0.75, 0.75]
        );
        // The key's `user` wins over the request's: 10 + 10 tokens > 15 for bob.
        let b = key(serde_json::json!({"user": "bob"}));
        let as_carol = Who {
            key: Some(&b),
            project: None,
            user: Some("carol"),
        };
        assert!(admit_who(&l, &cfg, as_carol).is_ok());
        let refused = admit_who(&l, &cfg, as_carol).err().unwrap_or_default();
        assert!(
            refused.contains("the user 'bob': 15 tokens per minute"),
            "{refused}"
        );
        // A request naming bob without a key counts against the same limit.
        let anon = Who {
            user: Some("bob"),
            ..Who::default()
        };
        assert!(admit_who(&l, &cfg, anon).is_err());
    }

    #[test]
    fn a_refusal_by_a_wider_scope_gives_back_the_narrower_tokens() {
        let cfg = groups("[projects.shop]\ntpm = 15\n");
        let l = Limiter::new();
        let k = key(serde_json::json!({"limits": {"tpm": 100}}));
        let who = Who {
            key: Some(&k),
            project: Some("shop"),
            user: None,
        };
        assert!(admit_who(&l, &cfg, who).is_ok()); // 10 of 15 project tokens
        assert!(admit_who(&l, &cfg, who).is_err()); // the project refuses
        let t = admit_who(
            &l,
            &cfg,
            Who {
                project: None,
                ..who
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
        // The key's bucket holds the first request's 10 only: the refused one was refunded.
        assert!(
            t.tokens
                .is_some_and(|s| s.remaining >= 79 && s.remaining <= 80),
            "{:?}",
            t.tokens
        );
    }

    #[test]
    fn group_limits_are_validated_naming_the_field() {
        let bad = |t: &str| {
            groups(t)
                .validate()
                .err()
                .unwrap_or_else(|| panic!("accepted: {t}"))
        };
        assert!(
            bad("[projects.a]\nbudgets = [{ period = \"day\", usd = -1 }]\n")
                .contains("limits.projects.a.budgets[0].usd")
        );
        assert!(bad(
            "[teams.a]\nbudgets = [{ period = \"day\", usd = 1 }, { period = \"day\", usd = 2 }]\n"
        )
        .contains("at most one budget per period"));
        assert!(bad("[users.\"a{b}\"]\nrpm = 1\n").contains("limits.users"));
        assert!(
            bad("[users.a]\nbudgets = [{ period = \"day\", usd = 1, soft_pct = 120 }]\n")
                .contains("soft_pct")
        );
        assert!(toml::from_str::<LimitsConfig>(
            "[projects.a]\nbudgets = [{ period = \"week\", usd = 1 }]\n"
        )
        .is_err());
        assert!(toml::from_str::<LimitsConfig>("[projects.a]\nrpmm = 1\n").is_err());
        assert!(groups("[projects.a]\nrpm = 0\n").validate().is_ok());
    }

    #[test]
    fn periods_roll_over() {
        let t0 = 1_767_225_600_000; // 2026-01-01T00:00:00Z
        assert_eq!(period_index(0, t0 + 86_400_000), period_index(0, t0) + 1);
        assert_eq!(
            period_index(1, t0 + 31 * 86_400_000),
            period_index(1, t0) + 1
        );
        assert_eq!(
            until_next_period(1, t0),
            Some(Duration::from_millis(31 * 86_400_000))
        );
        assert_eq!(until_next_period(2, t0), None);
        assert_eq!(duration_text(Duration::from_millis(20)), "20ms");
        assert_eq!(duration_text(Duration::from_millis(1500)), "1.5s");
        assert_eq!(duration_text(Duration::from_secs(360)), "6m0s");
    }
}
