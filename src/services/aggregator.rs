//! The background feedback aggregator (a Pingora background service).
//!
//! Every `routing.refresh_ms` (or at once when nudged by new feedback, a reload or an operator
//! change) it
//! 1. reads feedback rows past its cursor from the store and folds them into the
//!    [`Aggregator`] (idempotent by event id, order-independent by event time),
//! 2. every few refreshes re-reads served-traffic stats (success rate, p95 latency, token
//!    mix), today's router spend and the operator's route state (mode, constraints, pins),
//! 3. rebuilds every feedback route's [`PreparedRoute`] (and per-context snapshots) and
//!    publishes a new [`RouterTable`] through the `ArcSwap` the request path reads.
//!
//! With PostgreSQL every instance folds the same shared rows, so all instances converge to the
//! same posteriors; spend and traffic stats are read from the shared store too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::RouteConfig;
use crate::dialect::Usage;
use crate::gateway::Gateway;
use crate::metrics::metrics;
use crate::rollout::canary::{Arm, Experiment, ExperimentSpec, ExperimentState};
use crate::rollout::monitor::{MonitorArm, RollbackMonitor};
use crate::routing::auto::{AutoRoute, RouteInfo, RouteRollout, RouterTable};
use crate::routing::Runtime;
use crate::store::writer::StoreSlot;
use crate::store::{AuditAppend, ScoredDecision};
use crate::store::{FeedbackRow, RouteModelStats, RouteServed, RouteStateRow, Store};

use crate::feedback::aggregator::{Aggregator, FeedbackEvent, FeedbackKind, RoutingStats};
use crate::feedback::constraints::Constraints;
use crate::feedback::posterior::{Posterior, PosteriorState, Scale, Signal};
use crate::feedback::priors::Priors;
use crate::feedback::router::{Mode, ModelInput, PreparedRoute, RouteInput};
use crate::routing::pools::{pool_key, Pools};

/// Separator between a route and a context bucket in posterior keys (`default\u{1f}math`).
pub const CONTEXT_SEP: char = '\u{1f}';

/// Posterior key of a route's context bucket.
pub fn context_key(route: &str, context: &str) -> String {
    format!("{route}{CONTEXT_SEP}{context}")
}

/// Map a stored feedback row to the aggregator's events (route level, and context level when
/// the scored decision used a context bucket). Errors name what is wrong with the row.
pub fn events_for(row: &FeedbackRow) -> Result<Vec<FeedbackEvent>, String> {
    events_in(row, &Pools::default())
}

/// As [`events_for`], keyed by the learning pool the row's project trains.
pub fn events_in(row: &FeedbackRow, pools: &Pools) -> Result<Vec<FeedbackEvent>, String> {
    let mut out = Vec::with_capacity(2);
    let project = row.project.as_deref();
    match row.signal.as_str() {
        // An NPS stored for a session with no routed request credits nothing.
        "session_nps" if row.targets.is_empty() => {}
        "session_nps" => {
            let requests: Vec<(Arc<str>, Arc<str>)> = row
                .targets
                .iter()
                .map(|(r, m, _)| (Arc::from(pools.key(r, project)), Arc::from(m.as_str())))
                .collect();
            let ctx_requests: Vec<(Arc<str>, Arc<str>)> = row
                .targets
                .iter()
                .filter(|(_, _, c)| !c.is_empty())
                .map(|(r, m, c)| {
                    (
                        Arc::from(context_key(&pools.key(r, project), c)),
                        Arc::from(m.as_str()),
                    )
                })
                .collect();
            out.push(FeedbackEvent {
                id: row.id.clone(),
                at_ms: row.at_ms,
                kind: FeedbackKind::SessionNps {
                    nps: row.value,
                    requests,
                },
            });
            if !ctx_requests.is_empty() {
                out.push(FeedbackEvent {
                    id: format!("{}#ctx", row.id),
                    at_ms: row.at_ms,
                    kind: FeedbackKind::SessionNps {
                        nps: row.value,
                        requests: ctx_requests,
                    },
                });
            }
        }
        s => {
            let signal = match s {
                "feedback" => Signal::Feedback,
                "judge" => Signal::Judge,
                "admin" => Signal::Admin,
                other => return Err(format!("unknown signal '{other}'")),
            };
            let scale =
                parse_scale(&row.scale).ok_or_else(|| format!("unknown scale '{}'", row.scale))?;
            // Feedback on a request that was not routed is kept but moves no route.
            let (Some(route), Some(model)) = (&row.route, &row.model) else {
                return Ok(Vec::new());
            };
            let mk = |id: String, route: Arc<str>| FeedbackEvent {
                id,
                at_ms: row.at_ms,
                kind: FeedbackKind::Score {
                    route,
                    model: Arc::from(model.as_str()),
                    signal,
                    value: row.value,
                    scale,
                },
            };
            let key = pools.key(route, project);
            out.push(mk(row.id.clone(), Arc::from(&*key)));
            if let Some(c) = row.context.as_deref().filter(|c| !c.is_empty()) {
                out.push(mk(
                    format!("{}#ctx", row.id),
                    Arc::from(context_key(&key, c)),
                ));
            }
        }
    }
    Ok(out)
}

/// Prompt routing: a per-request score labels the request's features (when this instance
/// prompt-routed it). Session NPS carries no request ids and is not used per prompt.
fn label_prompt(gw: &Gateway, rt: &Runtime, row: &FeedbackRow) {
    let (Some(req), Some(model)) = (&row.request_id, &row.model) else {
        return;
    };
    if row.signal == "session_nps" {
        return;
    }
    let Some(v) = parse_scale(&row.scale)
        .and_then(|s| crate::feedback::posterior::normalise(row.value, s).ok())
    else {
        return;
    };
    gw.prompt.label(req, model, v, 1.0, |route| {
        rt.route(route)
            .filter(|rc| rc.prompt_routing.mode != crate::feedback::prompt::PromptMode::Off)
            .map(|rc| rc.prompt_routing.capacity)
    });
}

/// Prompt routing: rebuild the indexes of the routes that use it from the new route snapshots.
fn rebuild_prompt(gw: &Gateway, rt: &Runtime, table: &RouterTable, now_ms: i64) {
    let routes: Vec<_> = rt
        .config
        .routes
        .iter()
        .filter(|(_, r)| r.prompt_routing.mode != crate::feedback::prompt::PromptMode::Off)
        .filter_map(|(n, r)| {
            let ar = table.routes.get(n)?;
            let (facts, max_regression, min_confidence) =
                crate::feedback::prompt::state::route_inputs(&ar.prepared);
            Some((
                n.clone(),
                r.prompt_routing.clone(),
                facts,
                max_regression,
                min_confidence,
            ))
        })
        .collect();
    gw.prompt.rebuild(&routes, now_ms);
}

/// The priors category for a prompt-context bucket (see `conf/PRIORS.md`).
pub fn prior_category(context: &str) -> &'static str {
    match context {
        "math" | "mcq-math" => "math",
        "code" => "coding",
        "mcq" | "mcq-long" => "knowledge",
        "chat-short" | "chat-long" | "chat-multi" | "writing" | "extraction" => "chat",
        _ => "general",
    }
}

/// Accepted scale names (the API also takes these aliases).
pub fn parse_scale(s: &str) -> Option<Scale> {
    Some(match s {
        "thumbs" | "binary" | "0-1" => Scale::Thumbs,
        "one_to_five" | "1-5" | "five" | "stars" => Scale::OneToFive,
        "zero_to_ten" | "0-10" | "ten" => Scale::ZeroToTen,
        "unit" | "0..1" => Scale::Unit,
        _ => return None,
    })
}

/// Canonical stored name of a scale.
pub fn scale_name(s: Scale) -> &'static str {
    match s {
        Scale::Thumbs => "thumbs",
        Scale::OneToFive => "one_to_five",
        Scale::ZeroToTen => "zero_to_ten",
        Scale::Unit => "unit",
    }
}

/// Served-traffic facts the builder needs, read from the store.
#[derive(Debug, Clone, Default)]
pub struct Traffic {
    /// (route, provider-native model) → stats over the window.
    pub by_model: HashMap<(String, String), RouteModelStats>,
    /// route → router spend today (non-baseline models), USD.
    pub spend_today: HashMap<String, f64>,
    /// Operator state per (route, key).
    pub states: HashMap<(String, String), String>,
    /// (route, route model name) → requests it served among the route's last
    /// `routing.realized_window_requests` decisions: the realized exploration account.
    pub recent_served: HashMap<(String, String), u64>,
}

impl Traffic {
    pub fn from_rows(
        window: Vec<RouteModelStats>,
        today: Vec<RouteModelStats>,
        states: Vec<RouteStateRow>,
        baselines: &HashMap<String, String>,
    ) -> Traffic {
        let mut spend_today: HashMap<String, f64> = HashMap::new();
        for s in today {
            if baselines.get(&s.route).is_some_and(|b| *b == s.model) {
                continue;
            }
            *spend_today.entry(s.route.clone()).or_default() += s.cost_usd;
        }
        Traffic {
            by_model: window
                .into_iter()
                .map(|s| ((s.route.clone(), s.model.clone()), s))
                .collect(),
            spend_today,
            states: states
                .into_iter()
                .map(|r| ((r.route, r.key), r.value))
                .collect(),
            recent_served: HashMap::new(),
        }
    }

    /// Set the realized account's counts (see [`Traffic::recent_served`]).
    pub fn with_recent_served(mut self, rows: Vec<RouteServed>) -> Traffic {
        self.recent_served = rows
            .into_iter()
            .map(|r| ((r.route, r.model), r.requests))
            .collect();
        self
    }

    fn state(&self, route: &str, key: &str) -> Option<&str> {
        self.states
            .get(&(route.to_string(), key.to_string()))
            .map(String::as_str)
    }
}

/// A pin stored in route state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct PinState {
    pub model: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub actor: Option<String>,
    #[serde(default)]
    pub at_ms: i64,
    /// Set by the automatic regression rollback rather than an operator.
    #[serde(default)]
    pub automatic: bool,
}

/// A stored experiment (route state `experiment`): its spec, and the operator's last action.
/// Its state is not stored: every instance derives it from the scored decisions, identically.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ExperimentRecord {
    pub id: String,
    pub spec: ExperimentSpec,
    pub created_ms: i64,
    #[serde(default)]
    pub operator: Option<OperatorAction>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct OperatorAction {
    /// `stop` or `promote`.
    pub action: String,
    pub at_ms: i64,
    #[serde(default)]
    pub reason: Option<String>,
    pub actor: String,
}

/// A per-request score on [0, 1], or None for rows that are not scores.
fn unit_score(r: &ScoredDecision) -> Option<f64> {
    let scale = parse_scale(&r.scale)?;
    crate::feedback::posterior::normalise(r.value, scale).ok()
}

/// Replay an experiment over its scored decisions (feedback order): the same rows give the
/// same state on every instance.
pub fn derive_experiment(rec: &ExperimentRecord, rows: &[ScoredDecision]) -> Option<Experiment> {
    let mut e = Experiment::new(&rec.id, rec.spec.clone(), rec.created_ms).ok()?;
    for r in rows
        .iter()
        .filter(|r| r.kind == "canary" && r.ts_ms >= rec.created_ms)
    {
        let Some(x) = unit_score(r) else { continue };
        let arm = if r.served == e.candidate {
            Arm::Candidate
        } else {
            Arm::Baseline
        };
        if e.observe(arm, x) {
            e.evaluate(r.ts_ms);
        }
    }
    if let Some(op) = &rec.operator {
        let _ = match op.action.as_str() {
            "stop" => e.stop(
                op.reason.as_deref().unwrap_or("stopped by the operator"),
                op.at_ms,
            ),
            "promote" => e.promote(op.at_ms),
            _ => Ok(crate::rollout::canary::Transition::None),
        };
    }
    Some(e)
}

/// The effective mode, constraints and pin of a route (config, overridden by the API).
pub fn effective_state(
    name: &str,
    rc: &RouteConfig,
    traffic: &Traffic,
) -> (
    Mode,
    &'static str,
    Constraints,
    &'static str,
    Option<PinState>,
) {
    let (mode, mode_src) = match traffic
        .state(name, "mode")
        .and_then(|v| serde_json::from_str::<Mode>(v).ok())
    {
        Some(m) => (m, "api"),
        None => (rc.mode, "config"),
    };
    let (constraints, c_src) = match traffic
        .state(name, "constraints")
        .and_then(|v| serde_json::from_str::<Constraints>(v).ok())
        .filter(|c| c.validate().is_ok())
    {
        Some(c) => (c, "api"),
        None => (rc.constraints.clone(), "config"),
    };
    let pin = traffic
        .state(name, "pin")
        .and_then(|v| serde_json::from_str::<PinState>(v).ok());
    (mode, mode_src, constraints, c_src, pin)
}

/// Everything a table build reads.
pub struct BuildInputs<'a> {
    pub rt: &'a Runtime,
    pub stats: &'a RoutingStats,
    pub traffic: &'a Traffic,
    pub priors: Option<&'a Priors>,
    pub posterior_cfg: &'a crate::feedback::posterior::PosteriorConfig,
    /// The table published before this one: each route's promoted model is its incumbent
    /// (promotion hysteresis).
    pub previous: Option<&'a RouterTable>,
    pub version: u64,
    pub now_ms: i64,
    pub events_folded: u64,
    /// Experiments and monitors derived at the last rollout evaluation.
    pub rollout: &'a HashMap<String, RouteRollout>,
}

/// Build the router table for every feedback route of the runtime's config.
pub fn build_table(inp: &BuildInputs<'_>) -> RouterTable {
    let mut table = RouterTable {
        version: inp.version,
        built_ms: inp.now_ms,
        events_folded: inp.events_folded,
        rollout: inp.rollout.clone(),
        ..Default::default()
    };
    let pools = Pools::of(&inp.rt.config);
    for (name, rc) in inp.rt.config.routes.iter().filter(|(_, r)| r.is_feedback()) {
        match build_route(inp, &pools, name, rc) {
            Ok(ar) => {
                table.routes.insert(name.clone(), ar);
            }
            Err(e) => table.broken.push((name.clone(), e)),
        }
    }
    table
}

struct ModelFacts {
    name: String,
    native: String,
    cost: f64,
    p95: Option<f64>,
    success: Option<f64>,
    /// Requests served among the route's last `routing.realized_window_requests` decisions.
    served: u64,
}

fn build_route(
    inp: &BuildInputs<'_>,
    pools: &Pools,
    name: &str,
    rc: &RouteConfig,
) -> Result<AutoRoute, String> {
    let rt = inp.rt;
    let baseline = rc.baseline.as_deref().unwrap_or_default();
    let (mut mode, mut mode_source, constraints, constraints_source, pin) =
        effective_state(name, rc, inp.traffic);
    let experiment = inp.rollout.get(name).and_then(|r| r.experiment.clone());
    // An experiment promoted by its own ramp (auto_promote) turns the route live.
    if let Some(e) = &experiment {
        if e.state == ExperimentState::Promoted && e.auto_promote && mode != Mode::Live {
            mode = Mode::Live;
            mode_source = "experiment";
        }
    }
    let assigning = experiment.filter(|e| {
        matches!(
            e.state,
            ExperimentState::Running | ExperimentState::ReadyToPromote
        )
    });
    let mut info = RouteInfo {
        mode_source: "",
        constraints_source,
        pin_reason: pin.as_ref().and_then(|p| p.reason.clone()),
        ..Default::default()
    };
    // Token mix over every model of the route, measured when there is traffic.
    let (mut n, mut p, mut c) = (0u64, 0u64, 0u64);
    for ((r, _), s) in &inp.traffic.by_model {
        if r == name {
            n += s.requests;
            p += s.prompt_tokens;
            c += s.completion_tokens;
        }
    }
    if n > 0 {
        info.prompt_tokens = p as f64 / n as f64;
        info.completion_tokens = c as f64 / n as f64;
        info.token_mix_measured = true;
    } else {
        info.prompt_tokens = rc.expected_prompt_tokens as f64;
        info.completion_tokens = rc.expected_completion_tokens as f64;
    }
    let (route_pt, route_ct) = (info.prompt_tokens, info.completion_tokens);
    let facts = |m: &str| -> Result<ModelFacts, String> {
        let cand = rt
            .resolve_model(m, None)
            .map_err(|e| format!("not servable: {e}"))?;
        let s = inp
            .traffic
            .by_model
            .get(&(name.to_string(), cand.model.clone()));
        // Per-model token mix (a verbose model costs what it writes), shrunk towards the
        // route's mix by TOKEN_PRIOR pseudo-requests while the model has little traffic.
        let own = model_usage(route_pt, route_ct, s);
        let price = rt
            .catalog
            .get(&cand.provider.profile.catalog_providers, &cand.model)
            .filter(|i| i.has_prices())
            .map(|i| i.cost(&own));
        Ok(ModelFacts {
            name: m.to_string(),
            native: cand.model.clone(),
            cost: price.ok_or("no price in the model catalog: cost limits cannot be checked")?,
            p95: s.and_then(|s| s.p95_latency_ms),
            success: s
                .filter(|s| s.requests > 0)
                .map(|s| (s.requests - s.errors.min(s.requests)) as f64 / s.requests as f64),
            served: inp
                .traffic
                .recent_served
                .get(&(name.to_string(), m.to_string()))
                .copied()
                .unwrap_or(0),
        })
    };
    let base = match facts(baseline) {
        Ok(f) => f,
        Err(e) if e.starts_with("no price") => {
            // The baseline is always allowed; without a price candidates cannot look cheaper.
            info.excluded.push((baseline.to_string(), e));
            let cand = rt
                .resolve_model(baseline, None)
                .map_err(|e| e.to_string())?;
            ModelFacts {
                name: baseline.to_string(),
                native: cand.model,
                cost: 0.0,
                p95: None,
                success: None,
                served: 0,
            }
        }
        Err(e) => return Err(format!("baseline '{baseline}' {e}")),
    };
    let mut cands = Vec::new();
    for m in &rc.candidates {
        match facts(m) {
            Ok(f) => cands.push(f),
            Err(e) => info.excluded.push((m.clone(), e)),
        }
    }
    let pinned = pin.as_ref().and_then(|p| {
        (p.model == base.name || cands.iter().any(|c| c.name == p.model))
            .then(|| Arc::from(p.model.as_str()))
    });
    // `previous`: the same pool's (and context's) snapshot in the previous table, for the
    // hysteresis and the promotion tests' state.
    let prepare =
        |key: &str, previous: Option<&PreparedRoute>| -> Result<Arc<PreparedRoute>, String> {
            let input = |f: &ModelFacts| ModelInput {
                model: Arc::from(f.name.as_str()),
                posterior: posterior_of(inp, key, &f.name),
                cost_per_request: f.cost,
                p95_latency_ms: f.p95,
                success_rate: f.success,
                recent_requests: f.served,
            };
            PreparedRoute::prepare_with(
                RouteInput {
                    route: Arc::from(name),
                    mode,
                    baseline: input(&base),
                    candidates: cands.iter().map(input).collect(),
                    constraints: constraints.clone(),
                    weights: rc.score,
                    exploration: rc.exploration,
                    pinned: pinned.clone(),
                    table_version: inp.version,
                },
                rc.promotion,
                previous,
            )
            .map_err(|e| e.to_string())
        };
    info.mode_source = mode_source;
    // The snapshots of one learning pool (`key`: the route, or a project's pool key), after
    // that pool's snapshots in the previous table (`previous`).
    let snapshots = |key: &str,
                     previous: Option<&AutoRoute>|
     -> Result<(Arc<PreparedRoute>, Snapshots), String> {
        let mut contexts = HashMap::new();
        if rc.contextual {
            let prefix = format!("{key}{CONTEXT_SEP}");
            for k in inp.stats.posteriors.keys() {
                if let Some(ctx) = k.strip_prefix(&prefix) {
                    let before = previous.and_then(|ar| ar.contexts.get(ctx));
                    contexts.insert(ctx.to_string(), prepare(k, before.map(|p| &**p))?);
                }
            }
        }
        Ok((prepare(key, previous.map(|ar| &*ar.prepared))?, contexts))
    };
    let previous = inp.previous.and_then(|t| t.routes.get(name));
    let (prepared, contexts) = snapshots(name, previous)?;
    let _ = base.native;
    let holdback_share = if mode == Mode::Live && pin.is_none() {
        rc.rollback.holdback_share
    } else {
        0.0
    };
    let mut route = AutoRoute {
        prepared,
        contexts,
        contextual: rc.contextual,
        info,
        holdback_share,
        experiment: assigning,
        pool: None,
        pools: HashMap::new(),
    };
    for project in pools.projects_of(name) {
        let (prepared, contexts) = snapshots(
            &pool_key(name, project),
            previous.and_then(|ar| ar.pools.get(project)),
        )?;
        let pool = AutoRoute {
            prepared,
            contexts,
            pool: Some(Arc::from(project)),
            ..route.clone()
        };
        route.pools.insert(project.to_string(), pool);
    }
    Ok(route)
}

/// Per-context-bucket snapshots of one learning pool.
type Snapshots = HashMap<String, Arc<PreparedRoute>>;

/// The posterior of (route key, model): folded evidence when there is any, else the prior.
fn posterior_of(inp: &BuildInputs<'_>, key: &str, model: &str) -> Posterior {
    if let Some(p) = inp.stats.get(key, model) {
        return *p;
    }
    let mut st = PosteriorState::new();
    let category = key.split_once(CONTEXT_SEP).map(|(_, c)| prior_category(c));
    if let Some(pr) = inp.priors.and_then(|p| p.lookup(model, category)) {
        let _ = st.set_prior(pr.score, pr.n0, inp.now_ms, inp.posterior_cfg);
    }
    st.posterior(None, inp.posterior_cfg)
}

/// Set the benchmark prior of every (route key, model) the aggregator knows or the config
/// names, dated at the newest folded event so priors fade only by evidence, identically on
/// every instance.
fn apply_priors(agg: &mut Aggregator, rt: &Runtime, priors: Option<&Priors>, at_ms: i64) {
    let Some(priors) = priors else { return };
    let pools = Pools::of(&rt.config);
    let mut keys: Vec<(Arc<str>, Arc<str>)> = Vec::new();
    for (name, rc) in rt.config.routes.iter().filter(|(_, r)| r.is_feedback()) {
        // The shared pool and every project pool start from the route's priors.
        let own = pools.projects_of(name).map(|p| pool_key(name, p));
        for key in std::iter::once(name.clone()).chain(own) {
            let route: Arc<str> = Arc::from(key.as_str());
            for m in rc.baseline.iter().chain(&rc.candidates) {
                keys.push((Arc::clone(&route), Arc::from(m.as_str())));
            }
        }
    }
    for (route, model) in agg.keys() {
        if route.contains(CONTEXT_SEP) {
            keys.push((route, model));
        }
    }
    for (route, model) in keys {
        let category = route
            .split_once(CONTEXT_SEP)
            .map(|(_, c)| prior_category(c));
        if let Some(p) = priors.lookup(&model, category) {
            let _ = agg.set_prior(&route, &model, p.score, p.n0, at_ms);
        }
    }
}

/// The aggregator service.
pub struct AggregatorService {
    pub gw: Arc<Gateway>,
    pub slot: Option<StoreSlot>,
}

struct Loop {
    agg: Aggregator,
    cursor: i64,
    traffic: Traffic,
    last_traffic: Option<Instant>,
    version: u64,
    priors: Option<Arc<Priors>>,
    rollout: HashMap<String, RouteRollout>,
    last_rollout: Option<Instant>,
    /// When the table was last rebuilt, and from which config version.
    last_build: Option<(Instant, u64)>,
}

/// Routed requests are remembered this long for early feedback (traces are stored by then).
/// The traffic facts of every feedback route, read from the store: the stats window
/// (`routing.stats_window_hours`), today's spend, operator state, and the realized account
/// over each route's last `routing.realized_window_requests` decisions.
pub async fn read_traffic(
    rt: &Runtime,
    store: &dyn Store,
    now_ms: i64,
) -> Result<Traffic, crate::store::StoreError> {
    let window_ms = rt.config.routing.stats_window_hours as i64 * 3_600_000;
    let midnight = now_ms - now_ms.rem_euclid(86_400_000);
    let baselines: HashMap<String, String> = rt
        .config
        .routes
        .iter()
        .filter_map(|(n, r)| {
            let b = r.baseline.as_deref()?;
            let native = rt.resolve_model(b, None).ok()?.model;
            Some((n.clone(), native))
        })
        .collect();
    // Feedback routes only (a baseline): the realized account is theirs.
    let routes: Vec<String> = rt
        .config
        .routes
        .iter()
        .filter(|(_, r)| r.baseline.is_some())
        .map(|(n, _)| n.clone())
        .collect();
    let (w, t, s, r) = tokio::join!(
        store.route_model_stats(now_ms - window_ms),
        store.route_model_stats(midnight),
        store.route_states(),
        store.recent_served(&routes, rt.config.routing.realized_window_requests)
    );
    Ok(Traffic::from_rows(w?, t?, s?, &baselines).with_recent_served(r?))
}

const RECENT_MAX_AGE_MS: i64 = 15 * 60 * 1000;
const FEEDBACK_PAGE: usize = 5000;

impl AggregatorService {
    fn load_priors(rt: &Runtime) -> Option<Arc<Priors>> {
        let embedded = || match Priors::embedded() {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::error!(error = %e, "embedded priors unusable; routes start from uniform priors");
                None
            }
        };
        let path = &rt.config.routing.priors;
        if path.is_empty() {
            return embedded();
        }
        let full = rt.config.resolve_path(path);
        match std::fs::read_to_string(&full)
            .map_err(|e| e.to_string())
            .and_then(|t| Priors::from_toml(&t).map_err(|e| e.to_string()))
        {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                tracing::warn!(path = %full.display(), error = %e, "priors file unusable; using the embedded priors");
                embedded()
            }
        }
    }

    /// Build and publish the first table synchronously (priors only), before serving.
    pub fn initial_table(gw: &Gateway) {
        let rt = gw.runtime.load_full();
        let priors = Self::load_priors(&rt);
        let stats = RoutingStats::default();
        let table = build_table(&BuildInputs {
            rt: &rt,
            stats: &stats,
            traffic: &Traffic::default(),
            priors: priors.as_deref(),
            posterior_cfg: &rt.config.routing.posterior,
            previous: None,
            version: 1,
            now_ms: chrono::Utc::now().timestamp_millis(),
            events_folded: 0,
            rollout: &HashMap::new(),
        });
        for (r, e) in &table.broken {
            tracing::warn!(route = %r, error = %e, "feedback route unusable; serving its baseline only");
        }
        gw.auto.table.store(Arc::new(table));
    }

    async fn refresh(&self, st: &mut Loop, store: Option<Arc<dyn Store>>) {
        let rt = self.gw.runtime.load_full();
        let now_ms = chrono::Utc::now().timestamp_millis();
        // The cadence of the traffic re-read, the rollout evaluation and the idle rebuild.
        let every = Duration::from_millis(rt.config.routing.stats_refresh_ms);
        let mut folded_rows = 0usize;
        let mut traffic_refreshed = false;
        let mut rollout_evaluated = false;
        if let Some(store) = &store {
            // 1. Fold new feedback (into the learning pool of its project, see `Pools`).
            let pools = Pools::of(&rt.config);
            loop {
                let rows = match store.feedback_since(st.cursor, FEEDBACK_PAGE).await {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "aggregator: reading feedback failed; will retry");
                        break;
                    }
                };
                let n = rows.len();
                folded_rows += n;
                for row in &rows {
                    st.cursor = st.cursor.max(row.seq);
                    label_prompt(&self.gw, &rt, row);
                    match events_in(row, &pools) {
                        Ok(evs) => {
                            for ev in &evs {
                                let label = match st.agg.fold(ev) {
                                    Ok(crate::feedback::FoldOutcome::Applied { .. }) => "applied",
                                    Ok(crate::feedback::FoldOutcome::Duplicate) => "duplicate",
                                    Err(e) => {
                                        tracing::warn!(id = %ev.id, error = %e, "aggregator: feedback event rejected");
                                        "rejected"
                                    }
                                };
                                metrics().feedback_folded.with_label_values(&[label]).inc();
                            }
                        }
                        Err(e) => {
                            tracing::warn!(id = %row.id, error = %e, "aggregator: feedback row unusable");
                            metrics()
                                .feedback_folded
                                .with_label_values(&["rejected"])
                                .inc();
                        }
                    }
                }
                if n < FEEDBACK_PAGE {
                    break;
                }
            }
            // 2. Traffic stats, spend and operator state (less often).
            let dirty = self
                .gw
                .auto
                .states_dirty
                .swap(false, std::sync::atomic::Ordering::AcqRel);
            if dirty || st.last_traffic.is_none_or(|t| t.elapsed() >= every) {
                match read_traffic(&rt, store.as_ref(), now_ms).await {
                    Ok(traffic) => {
                        st.traffic = traffic;
                        for (route, usd) in &st.traffic.spend_today {
                            self.gw.auto.set_stored_spend(route, *usd, now_ms);
                        }
                        st.last_traffic = Some(Instant::now());
                        traffic_refreshed = true;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "aggregator: reading traffic stats failed; keeping the last ones");
                    }
                }
            }
        }
        // 3. Canaries and rollback monitors, from the scored decisions in the store.
        if let Some(store) = &store {
            let due = st.last_rollout.is_none_or(|t| t.elapsed() >= every);
            if folded_rows > 0 || due || traffic_refreshed {
                self.evaluate_rollout(&rt, store, st, now_ms).await;
                st.last_rollout = Some(Instant::now());
                rollout_evaluated = true;
            }
        }
        self.gw.auto.sweep(now_ms, RECENT_MAX_AGE_MS);
        // 4. Rebuild and publish — only when an input changed: new feedback, fresh traffic
        // stats or operator state, a rollout evaluation, another config; and at least every
        // `stats_refresh_ms` (time-dependent parts: evidence decay, the published table's
        // age). An idle gateway thus rebuilds every route once per stats refresh instead of
        // every `refresh_ms`.
        let changed = folded_rows > 0
            || traffic_refreshed
            || rollout_evaluated
            || st
                .last_build
                .is_none_or(|(at, version)| version != rt.version || at.elapsed() >= every);
        if !changed {
            return;
        }
        st.last_build = Some((Instant::now(), rt.version));
        let at = st.agg.latest_ms().unwrap_or(now_ms);
        apply_priors(&mut st.agg, &rt, st.priors.as_deref(), at);
        let stats = st.agg.snapshot();
        st.version += 1;
        let previous = self.gw.auto.table.load_full();
        let table = build_table(&BuildInputs {
            rt: &rt,
            stats: &stats,
            traffic: &st.traffic,
            priors: st.priors.as_deref(),
            posterior_cfg: st.agg.config(),
            previous: Some(&previous),
            version: st.version,
            now_ms,
            events_folded: st.agg.events_folded() as u64,
            rollout: &st.rollout,
        });
        metrics().router_table_version.set(st.version as i64);
        metrics().router_table_age.set(now_ms as f64 / 1000.0);
        rebuild_prompt(&self.gw, &rt, &table, now_ms);
        self.gw.auto.table.store(Arc::new(table));
    }
}

/// Pseudo-requests of the route's token mix a model's own mix is shrunk towards.
const TOKEN_PRIOR: f64 = 20.0;

/// The token mix a model's cost is estimated with: its own mean prompt and completion tokens
/// per request on the route, shrunk towards the route's mix by [`TOKEN_PRIOR`] pseudo-requests.
pub fn model_usage(route_prompt: f64, route_completion: f64, s: Option<&RouteModelStats>) -> Usage {
    let (n, own_p, own_c) = s.map_or((0.0, 0, 0), |s| {
        (s.requests as f64, s.prompt_tokens, s.completion_tokens)
    });
    let k = TOKEN_PRIOR;
    let mix = |own: u64, route: f64| ((own as f64 + k * route) / (n + k)).round() as u64;
    Usage {
        prompt_tokens: mix(own_p, route_prompt),
        completion_tokens: mix(own_c, route_completion),
        reported: true,
        ..Default::default()
    }
}

/// Scored decisions read per route and evaluation (the newest are kept).
const ROLLOUT_ROWS: usize = 200_000;

impl AggregatorService {
    async fn evaluate_rollout(
        &self,
        rt: &Runtime,
        store: &Arc<dyn Store>,
        st: &mut Loop,
        now_ms: i64,
    ) {
        let mut out = HashMap::new();
        for (name, rc) in rt.config.routes.iter().filter(|(_, r)| r.is_feedback()) {
            let (mode, _, _, _, pin) = effective_state(name, rc, &st.traffic);
            let record = st
                .traffic
                .state(name, "experiment")
                .and_then(|v| serde_json::from_str::<ExperimentRecord>(v).ok());
            let rb_since: i64 = st
                .traffic
                .state(name, "rollback_since")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let monitor_on =
                mode == Mode::Live && rc.rollback.holdback_share > 0.0 && pin.is_none();
            if !monitor_on && record.is_none() {
                continue;
            }
            let since = match &record {
                Some(r) if monitor_on => r.created_ms.min(rb_since),
                Some(r) => r.created_ms,
                None => rb_since,
            };
            let rows = match store.scored_decisions(name, since, ROLLOUT_ROWS).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(route = %name, error = %e, "rollout: reading scored decisions failed");
                    if let Some(prev) = st.rollout.get(name) {
                        out.insert(name.clone(), prev.clone());
                    }
                    continue;
                }
            };
            let mut rr = RouteRollout::default();
            if let Some(rec) = &record {
                rr.experiment = derive_experiment(rec, &rows).map(Arc::new);
            }
            if monitor_on {
                // The rollback threshold is its own setting (`[routes.x.rollback] threshold`).
                if let Ok(mut m) = RollbackMonitor::new(name, rc.rollback) {
                    let mut alarm = None;
                    for r in rows.iter().filter(|r| r.ts_ms >= rb_since) {
                        let arm = match r.kind.as_str() {
                            "holdback" => MonitorArm::Holdback,
                            "promoted" | "explored" | "sticky" | "baseline" => MonitorArm::Served,
                            _ => continue,
                        };
                        if let Some(x) = unit_score(r) {
                            m.observe(arm, x);
                            if alarm.is_none() {
                                alarm = m.check();
                            }
                        }
                    }
                    rr.monitor = Some(m.report());
                    if let Some(ev) = alarm {
                        self.auto_pin(store, st, name, rc, &ev, now_ms).await;
                    }
                }
            }
            out.insert(name.clone(), rr);
        }
        st.rollout = out;
    }

    /// Pin a regressing live route to its baseline: stored, audited, counted, sent.
    async fn auto_pin(
        &self,
        store: &Arc<dyn Store>,
        st: &mut Loop,
        route: &str,
        rc: &RouteConfig,
        ev: &crate::rollout::monitor::RollbackEvent,
        now_ms: i64,
    ) {
        let baseline = rc.baseline.clone().unwrap_or_default();
        let reason = format!(
            "automatic rollback: served quality {:.4} vs holdback {:.4} (reference {:.4}): drop {:.4} beyond the limit {:.4} after {} served requests since the change",
            ev.served_mean, ev.holdback_mean, ev.reference, -ev.estimate, ev.threshold, ev.since_change
        );
        let pin = PinState {
            model: baseline,
            reason: Some(reason.clone()),
            actor: Some("loopgate".into()),
            at_ms: now_ms,
            automatic: true,
        };
        let v = serde_json::to_string(&pin).unwrap_or_default();
        if let Err(e) = store.put_route_state(route, "pin", Some(&v), now_ms).await {
            tracing::error!(route, error = %e, "automatic rollback: pin could not be stored");
            return;
        }
        let entry = AuditAppend {
            ts_ms: now_ms,
            actor: "loopgate".into(),
            action: "route.auto_pin".into(),
            route: Some(route.to_string()),
            old: None,
            new: Some(v.clone()),
            reason: Some(reason.clone()),
        };
        match store.append_audit(&entry).await {
            Ok(_) => metrics()
                .audit_entries
                .with_label_values(&["route.auto_pin"])
                .inc(),
            Err(e) => tracing::error!(route, error = %e, "automatic rollback: audit entry failed"),
        }
        metrics().rollbacks.with_label_values(&[route]).inc();
        tracing::warn!(route, %reason, "route auto-pinned to its baseline");
        self.gw.auto.emit(
            crate::rollout::webhook::EventKind::Rollback,
            || serde_json::json!({"route": route, "pin": pin, "event": ev}),
        );
        // Apply at once on this instance; others read it at their next refresh.
        st.traffic
            .states
            .insert((route.to_string(), "pin".to_string()), v);
    }
}

#[async_trait]
impl BackgroundService for AggregatorService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let rt = self.gw.runtime.load_full();
        let cfg = &rt.config.routing;
        let agg = match Aggregator::new(cfg.posterior.clone(), cfg.nps_weight) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "feedback aggregator cannot start");
                return;
            }
        };
        let mut st = Loop {
            agg,
            cursor: 0,
            traffic: Traffic::default(),
            last_traffic: None,
            version: self.gw.auto.table.load().version,
            priors: Self::load_priors(&rt),
            rollout: HashMap::new(),
            last_rollout: None,
            last_build: None,
        };
        let mut config_version = rt.version;
        let mut pools = Pools::of(&rt.config);
        loop {
            let rt = self.gw.runtime.load_full();
            if rt.version != config_version {
                config_version = rt.version;
                let now = Pools::of(&rt.config);
                if now != pools {
                    // Other learning pools: fold every event again into the new keys, as a
                    // fresh instance would.
                    match Aggregator::new(
                        rt.config.routing.posterior.clone(),
                        rt.config.routing.nps_weight,
                    ) {
                        Ok(a) => {
                            st.agg = a;
                            st.cursor = 0;
                            pools = now;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "learning pools changed but the aggregator cannot restart; keeping the old pools")
                        }
                    }
                }
                st.priors = Self::load_priors(&rt);
                // Reloads may change routes: read operator state and stats again now.
                st.last_traffic = None;
            }
            let store = self.slot.as_ref().and_then(StoreSlot::get);
            self.refresh(&mut st, store).await;
            let wait = Duration::from_millis(rt.config.routing.refresh_ms);
            tokio::select! {
                _ = self.gw.auto.nudge.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(signal: &str, ctx: Option<&str>) -> FeedbackRow {
        FeedbackRow {
            seq: 1,
            id: "fb_1".into(),
            dedup_key: "x".into(),
            signal: signal.into(),
            request_id: Some("r".into()),
            route: Some("default".into()),
            model: Some("m".into()),
            context: ctx.map(str::to_string),
            value: 1.0,
            scale: "thumbs".into(),
            at_ms: 5,
            ..Default::default()
        }
    }

    #[test]
    fn scores_map_to_route_and_context_events() {
        let evs = events_for(&row("feedback", Some("math"))).unwrap_or_default();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1].id, "fb_1#ctx");
        match &evs[1].kind {
            FeedbackKind::Score { route, .. } => assert_eq!(&**route, "default\u{1f}math"),
            k => panic!("unexpected {k:?}"),
        }
        assert_eq!(events_for(&row("judge", None)).map(|e| e.len()), Ok(1));
        assert!(events_for(&row("bogus", None)).is_err());
        let mut r = row("feedback", None);
        r.scale = "percent".into();
        assert!(events_for(&r).is_err());
    }

    #[test]
    fn session_nps_spreads_over_its_targets() {
        let mut r = row("session_nps", None);
        r.value = 9.0;
        r.targets = vec![
            ("default".into(), "a".into(), "math".into()),
            ("default".into(), "b".into(), String::new()),
        ];
        let evs = events_for(&r).unwrap_or_default();
        assert_eq!(evs.len(), 2);
        match &evs[0].kind {
            FeedbackKind::SessionNps { requests, nps } => {
                assert_eq!(requests.len(), 2);
                assert_eq!(*nps, 9.0);
            }
            k => panic!("unexpected {k:?}"),
        }
        match &evs[1].kind {
            FeedbackKind::SessionNps { requests, .. } => assert_eq!(requests.len(), 1),
            k => panic!("unexpected {k:?}"),
        }
    }

    #[test]
    fn a_verbose_model_is_costed_by_its_own_token_mix() {
        let stats = |requests, completion| RouteModelStats {
            route: "r".into(),
            model: "m".into(),
            requests,
            prompt_tokens: requests * 500,
            completion_tokens: completion,
            ..Default::default()
        };
        // No traffic: the route's mix.
        let u = model_usage(500.0, 250.0, None);
        assert_eq!((u.prompt_tokens, u.completion_tokens), (500, 250));
        // 1,000 requests writing 1,000 tokens each: close to its own mix.
        let u = model_usage(500.0, 250.0, Some(&stats(1000, 1_000_000)));
        assert!((980..=1000).contains(&u.completion_tokens), "{u:?}");
        // 5 requests: mostly the route's mix still.
        let u = model_usage(500.0, 250.0, Some(&stats(5, 5_000)));
        assert_eq!(u.completion_tokens, 400);
    }

    #[test]
    fn scale_names_round_trip() {
        for s in [
            Scale::Thumbs,
            Scale::OneToFive,
            Scale::ZeroToTen,
            Scale::Unit,
        ] {
            assert_eq!(parse_scale(scale_name(s)), Some(s));
        }
        assert_eq!(parse_scale("1-5"), Some(Scale::OneToFive));
    }
}

#[cfg(test)]
mod pool_tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::GatewayConfig;

    /// A project's learning pool keeps its own promotion across tables: the incumbent (and the
    /// promotion tests) come from the pool's previous snapshot, not the route's shared one.
    #[test]
    fn a_project_pool_keeps_its_own_incumbent() {
        let cfg = GatewayConfig::parse(
            "[routes.r]\nbaseline = \"gpt-4o\"\ncandidates = [\"gpt-4o-mini\"]\nmode = \"live\"\nlearning = \"project\"\nproject = \"p1\"\n",
            "test",
        )
        .unwrap();
        let keyed: BTreeSet<String> = ["openai".to_string()].into();
        let rt = Runtime::build_keyed(cfg, 1, keyed).unwrap();
        let posterior_cfg = rt.config.routing.posterior.clone();
        let pool = pool_key("r", "p1");
        // Judge scores for the pool only: (baseline, candidate) successes of `n` each.
        let stats = |base: u64, cand: u64, n: u64| {
            let mut agg =
                Aggregator::new(posterior_cfg.clone(), rt.config.routing.nps_weight).unwrap();
            for (model, k) in [("gpt-4o", base), ("gpt-4o-mini", cand)] {
                for i in 0..n {
                    // Successes spread evenly, as the change detector expects of steady data.
                    let v = if (i + 1) * k / n > i * k / n {
                        1.0
                    } else {
                        0.0
                    };
                    agg.fold(&FeedbackEvent {
                        id: format!("{model}-{i}"),
                        at_ms: i as i64,
                        kind: FeedbackKind::Score {
                            route: Arc::from(pool.as_str()),
                            model: Arc::from(model),
                            signal: Signal::Judge,
                            value: v,
                            scale: Scale::Unit,
                        },
                    })
                    .unwrap();
                }
            }
            agg.snapshot()
        };
        let traffic = Traffic::default();
        let build = |stats: &RoutingStats, previous: Option<&RouterTable>| {
            build_table(&BuildInputs {
                rt: &rt,
                stats,
                traffic: &traffic,
                priors: None,
                posterior_cfg: &rt.config.routing.posterior,
                previous,
                version: 1,
                now_ms: 0,
                events_folded: 0,
                rollout: &HashMap::new(),
            })
        };
        let served = |t: &RouterTable| {
            let ar = &t.routes["r"];
            let p = &ar.pools["p1"].prepared;
            (
                ar.prepared.static_exploit,
                p.models[p.static_exploit].model.to_string(),
            )
        };
        // The pool's candidate is clearly as good: promoted in the pool, not in the shared
        // route (which has no evidence).
        let first = build(&stats(240, 270, 300), None);
        assert_eq!(served(&first), (0, "gpt-4o-mini".to_string()));
        // Its confidence falls into the hysteresis band: kept, as the pool's incumbent.
        let band = stats(240, 246, 300);
        let conf = {
            let t = build(&band, None);
            let p = &t.routes["r"].pools["p1"].prepared;
            p.models[1].gate.confidence
        };
        assert!(conf > 0.8 && conf < 0.95, "{conf}");
        let second = build(&band, Some(&first));
        assert_eq!(served(&second), (0, "gpt-4o-mini".to_string()));
        assert!(second.routes["r"].pools["p1"].prepared.models[1].retained);
    }
}
