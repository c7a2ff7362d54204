//! RouterBench replay (issue 12): many candidates per route, the issue's traffic shape, shipped
//! defaults, several seeds.
//!
//! ```sh
//! cargo bench --bench replay -- --routerbench            # 5 seeds, every route (in-process)
//! cargo bench --bench replay -- --routerbench --quick    # 2 seeds, a third of the routes
//! cargo bench --profile test --bench replay -- --routerbench --http --quick --seeds 3
//!                                                         # through the real gateway
//! ```
//! `--only TEXT` keeps the routes whose name contains TEXT; `--no-priors` runs without the
//! embedded benchmark priors (in process only). `--http` drives the same traffic
//! through the built `loopgate` binary (`routerbench_http.rs`); results go to
//! `routerbench_http.{md,json}` instead of `routerbench.{md,json}`.
//!
//! Sweep aids (stderr, never in the tables): `LOOPGATE_DEBUG_WINDOW=<route>` prints which
//! models were served in that route's worst 500-request window per seed;
//! `LOOPGATE_DEBUG_SNAP=<route> LOOPGATE_DEBUG_SEED=<seed> LOOPGATE_DEBUG_RANGE=<from>-<to>`
//! prints each model's posterior, P(within), exploration weight and gap bound every 40
//! requests in that range (with `LOOPGATE_DEBUG_SIGNALS=1`, each signal's count, mean, weight,
//! reliability and offset too).
//!
//! Routes are made from `benches/data/routerbench.jsonl.gz` by a fixed rule, not picked by
//! hand: per task (ARC-Challenge, MBPP, Winogrande) and per baseline in {gpt-4-1106-preview,
//! claude-v2, claude-v1}, the route with every other model as a candidate and two routes with
//! four candidates drawn by a seeded RNG. A model dearer than the baseline is a candidate too
//! (the shipped `max_cost_increase = 0` keeps it out, as in the gateway).
//!
//! In process ([`InProcRouter`]) the router is the library's, driven as the gateway drives it: an [`Aggregator`]
//! folds the feedback events (`judge` scores, session NPS), a fresh
//! [`PreparedRoute::prepare_with`] snapshot over the previous one after every feedback event (the
//! gateway's aggregator refreshes on every feedback post's nudge) and every `SNAPSHOT_EVERY`
//! requests (`LOOPGATE_BENCH_FOLD_EACH=0`: only the latter, ~7× faster, for sweeps; it looks
//! at the gate less often than the gateway does), [`decide`] per request
//! with the same exploration-share average and session stickiness as `AutoState`, the embedded
//! benchmark priors, and every default (`Constraints`, `ExplorationConfig`, `PosteriorConfig`,
//! `PromotionConfig`). Costs per request are the task's mean logged cost per model (what the
//! gateway's catalog × token-mix estimate stands for).
//!
//! Traffic: 2,000 requests per route; sessions of 1 + round(Exp(mean 4)) requests, eight open
//! at a time; a judge score on 30% of requests (outcome + N(0, 0.1²), clamped to [0, 1]),
//! `JUDGE_DELAY` requests later; a session NPS (round(10 × session mean quality + N(0, 1.5²)),
//! clamped to 0..=10) on 10% of sessions, `NPS_DELAY` requests after the session ends.
//!
//! Metrics (truth = each model's mean outcome over the task's rows): first promotion; saving
//! over requests 1,000–2,000 as a share of the best static choice in hindsight (the cheapest
//! model within δ of the baseline); the lowest served quality (true means of the served models)
//! over any 500-request window minus (baseline − δ); promotions; calibration (promotions at
//! confidence ≥ 0.95 truly within δ); and the silent regression: the promoted model's quality
//! × 0.3 from 200 and 2,500 requests after its promotion, requests until it is no longer the
//! exploit pick.

use std::collections::{HashMap, VecDeque};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use loopgate::feedback::aggregator::{Aggregator, FeedbackEvent, FeedbackKind};
use loopgate::feedback::constraints::Constraints;
use loopgate::feedback::posterior::{PosteriorConfig, PosteriorState, Scale, Signal};
use loopgate::feedback::priors::Priors;
use loopgate::feedback::router::{
    decide, ExplorationConfig, Labelling, Mode, ModelInput, PickKind, PreparedRoute,
    PromotionConfig, RequestContext, RouteInput, ScoreWeights,
};
use loopgate::routing::auto::announced_share_step;
use loopgate::store::pending::nps_credited;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::http::{HttpEnv, HttpStats};
use super::routerbench_http::{HttpRouter, RbResponder};

const REQUESTS: usize = 2_000;
const SNAPSHOT_EVERY: usize = 20;
const JUDGE_SHARE: f64 = 0.3;
const JUDGE_NOISE: f64 = 0.1;
const JUDGE_DELAY: usize = 5;
const NPS_SHARE: f64 = 0.1;
const NPS_NOISE: f64 = 1.5;
const NPS_DELAY: usize = 10;
const SESSION_MEAN_EXTRA: f64 = 4.0;
const OPEN_SESSIONS: usize = 8;
const WINDOW: usize = 500;
const EXPLORE_EWMA: f64 = 1.0 / 200.0;
/// The gateway's default `routing.nps_weight`.
const NPS_WEIGHT: f64 = 3.0;
const BASELINES: [&str; 3] = ["gpt-4-1106-preview", "claude-v2", "claude-v1"];

pub(crate) struct Task {
    pub(crate) name: String,
    pub(crate) models: Vec<String>,
    /// Per row: the prompt text as recorded.
    pub(crate) prompts: Vec<String>,
    /// Per row: outcome per model.
    pub(crate) q: Vec<Vec<f64>>,
    /// Per row: logged USD cost per model.
    pub(crate) cost: Vec<Vec<f64>>,
    /// Mean outcome and mean cost per model.
    pub(crate) mean_q: Vec<f64>,
    pub(crate) mean_c: Vec<f64>,
}

fn load(path: &Path) -> Result<Vec<Task>, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("open {}: {e}", path.display()))?;
    let rd = std::io::BufReader::new(flate2::read::GzDecoder::new(f));
    let mut tasks: Vec<Task> = Vec::new();
    let mut costs: Vec<Vec<f64>> = Vec::new();
    for line in rd.lines() {
        let line = line.map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        let task = v["task"].as_str().ok_or("task")?.to_string();
        let ms = v["models"].as_object().ok_or("models")?;
        let ti = match tasks.iter().position(|t| t.name == task) {
            Some(i) => i,
            None => {
                let mut models: Vec<String> = ms.keys().cloned().collect();
                models.sort();
                tasks.push(Task {
                    name: task,
                    models,
                    prompts: Vec::new(),
                    q: Vec::new(),
                    cost: Vec::new(),
                    mean_q: Vec::new(),
                    mean_c: Vec::new(),
                });
                costs.push(Vec::new());
                tasks.len() - 1
            }
        };
        let t = &mut tasks[ti];
        let mut row = Vec::with_capacity(t.models.len());
        let mut row_c = Vec::with_capacity(t.models.len());
        let c = &mut costs[ti];
        c.resize(t.models.len(), 0.0);
        for (k, m) in t.models.iter().enumerate() {
            row.push(ms[m]["quality"].as_f64().ok_or("quality")?);
            let usd = ms[m]["cost_usd"].as_f64().ok_or("cost")?;
            c[k] += usd;
            row_c.push(usd);
        }
        t.q.push(row);
        t.cost.push(row_c);
        t.prompts
            .push(v["prompt"].as_str().ok_or("prompt")?.to_string());
    }
    for (t, c) in tasks.iter_mut().zip(costs) {
        let n = t.q.len() as f64;
        t.mean_c = c.iter().map(|x| x / n).collect();
        t.mean_q = (0..t.models.len())
            .map(|k| t.q.iter().map(|r| r[k]).sum::<f64>() / n)
            .collect();
    }
    Ok(tasks)
}

#[derive(Clone)]
pub(crate) struct RouteSpec {
    pub(crate) name: String,
    pub(crate) task: usize,
    /// Model indices into the task; [0] is the baseline.
    pub(crate) models: Vec<usize>,
}

fn routes(tasks: &[Task]) -> Vec<RouteSpec> {
    let mut out = Vec::new();
    for (ti, t) in tasks.iter().enumerate() {
        for b in BASELINES {
            let Some(bi) = t.models.iter().position(|m| m == b) else {
                continue;
            };
            let others: Vec<usize> = (0..t.models.len()).filter(|&k| k != bi).collect();
            out.push(RouteSpec {
                name: format!("{}/{}/all", t.name, b),
                task: ti,
                models: std::iter::once(bi).chain(others.iter().copied()).collect(),
            });
            let mut rng = StdRng::seed_from_u64(0x5eed ^ (ti as u64) << 8 ^ bi as u64);
            for k in 0..2 {
                let mut pick = others.clone();
                pick.shuffle(&mut rng);
                pick.truncate(4);
                pick.sort();
                out.push(RouteSpec {
                    name: format!("{}/{}/subset{}", t.name, b, k + 1),
                    task: ti,
                    models: std::iter::once(bi).chain(pick).collect(),
                });
            }
        }
    }
    out
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    /// A cheaper candidate at least as good as the baseline.
    Better,
    /// The best cheaper candidate is within δ but below the baseline.
    Within,
    /// No cheaper candidate within δ.
    Unsafe,
}

struct Truth {
    q: Vec<f64>,
    c: Vec<f64>,
    best: usize,
    class: Class,
}

fn truth(t: &Task, r: &RouteSpec, delta: f64) -> Truth {
    let q: Vec<f64> = r.models.iter().map(|&k| t.mean_q[k]).collect();
    let c: Vec<f64> = r.models.iter().map(|&k| t.mean_c[k]).collect();
    let cheaper = |i: usize| i != 0 && c[i] <= c[0];
    let best = (0..q.len())
        .filter(|&i| i == 0 || (cheaper(i) && q[i] >= q[0] - delta))
        .min_by(|&a, &b| c[a].total_cmp(&c[b]))
        .unwrap_or(0);
    let class = if (1..q.len()).any(|i| cheaper(i) && q[i] >= q[0]) {
        Class::Better
    } else if best != 0 {
        Class::Within
    } else {
        Class::Unsafe
    };
    Truth { q, c, best, class }
}

/// A silent regression of the promoted model, `after` requests after its first promotion.
#[derive(Clone, Copy)]
pub(crate) struct Regression {
    after: usize,
}

#[derive(Default, Clone, Debug)]
pub(crate) struct RunOut {
    first_promotion: Option<usize>,
    promotions: Vec<(usize, usize, f64)>,
    served: Vec<usize>,
    /// True quality of what was served per request (regression applied).
    served_q: Vec<f64>,
    /// Regression: onset and requests until the regressed model was no longer the exploit pick.
    onset: Option<usize>,
    rollback_after: Option<usize>,
    rolled_to_baseline: bool,
}

impl RunOut {
    /// The run as it stood after its first `n` requests (a regression whose onset lies
    /// beyond them has not happened yet).
    fn prefix(&self, n: usize) -> RunOut {
        let n = n.min(self.served.len());
        RunOut {
            first_promotion: self.first_promotion.filter(|&f| f < n),
            promotions: self
                .promotions
                .iter()
                .copied()
                .filter(|p| p.0 < n)
                .collect(),
            served: self.served[..n].to_vec(),
            served_q: self.served_q[..n].to_vec(),
            onset: None,
            rollback_after: None,
            rolled_to_baseline: false,
        }
    }
}

/// An open session: (id, requests left, the model it is held on, each request's (served model,
/// outcome, whether it held the session)).
type Session = (u64, usize, Option<usize>, Vec<(usize, f64, bool)>);

/// What routing one request did.
pub(crate) struct Routed {
    pub served: usize,
    /// The model the session stays on.
    pub session: usize,
    /// Whether the request held its session (not a reference refresh): a session NPS credits
    /// only those (`store::pending::nps_credited`, as the gateway).
    pub held_session: bool,
}

/// A feedback event of the traffic model, in the run's own terms (model = index into the
/// route's models); each router turns it into its own form (an [`Aggregator`] event in
/// process, a `POST /v1/feedback` body over HTTP).
#[derive(Clone, Debug)]
pub(crate) enum Fb {
    /// A judge score of request `seq` (served `model`), on the unit scale.
    Judge {
        id: u64,
        seq: usize,
        model: usize,
        value: f64,
        at_ms: i64,
    },
    /// A session NPS (0..=10) for every request of `session` (their served models).
    Nps {
        session: u64,
        nps: f64,
        served: Vec<usize>,
        at_ms: i64,
    },
}

struct Pending {
    due: usize,
    ev: Fb,
}

/// The route's state at a snapshot: the exploit pick and its gate confidence.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snap {
    pub exploit: usize,
    pub confidence: f64,
}

/// What the traffic model drives: the library in process ([`InProcRouter`]), or the real
/// gateway over HTTP (`routerbench_http.rs`). Both see the same requests, sessions and
/// feedback, in the same order.
pub(crate) trait Router {
    /// The snapshot before request `n` (every `SNAPSHOT_EVERY` requests, after the due
    /// feedback was delivered).
    fn snapshot(&mut self, n: usize) -> Snap;
    /// Route request `n` of `session` (prompt `row`): (served model, chosen model). `sticky`
    /// is the session's last chosen model, `draw` a uniform number for the decision, `scored`
    /// whether the judge will score it when that is announced before routing (the gateway's
    /// own judge knows by request id; an external judge says so with
    /// `loopgate-feedback-expected`), `None` when it is not announced.
    fn route(
        &mut self,
        n: usize,
        session: u64,
        sticky: Option<usize>,
        row: usize,
        draw: f64,
        scored: Option<bool>,
    ) -> Routed;
    /// Deliver one feedback event.
    fn deliver(&mut self, ev: &Fb);
}

/// The route settings under test: the shipped defaults, unless `LOOPGATE_BENCH_OVERRIDES` holds
/// a JSON object `{"constraints": {..}, "exploration": {..}, "promotion": {..}, "posterior": {..}}` (for sweeps; the
/// headline table is always run without it).
#[derive(Clone, Default, serde::Deserialize)]
#[serde(default)]
pub(crate) struct Settings {
    constraints: Constraints,
    exploration: ExplorationConfig,
    promotion: PromotionConfig,
    posterior: PosteriorConfig,
}

fn settings() -> Settings {
    match std::env::var("LOOPGATE_BENCH_OVERRIDES") {
        Ok(v) if !v.trim().is_empty() => match serde_json::from_str(&v) {
            Ok(s) => s,
            Err(e) => panic!("LOOPGATE_BENCH_OVERRIDES: {e}"),
        },
        _ => Settings::default(),
    }
}

/// The library's router, driven exactly as the gateway drives it (see the module docs).
pub(crate) struct InProcRouter<'a> {
    t: &'a Task,
    r: &'a RouteSpec,
    seed: u64,
    debug: bool,
    set: &'a Settings,
    priors: Option<&'a Priors>,
    route: Arc<str>,
    names: Vec<Arc<str>>,
    agg: Aggregator,
    cost: Vec<f64>,
    prepared: Option<Arc<PreparedRoute>>,
    share: f64,
    /// Share of announced requests announced as scored, and how many were seen (as the
    /// gateway's `AutoState` learns it).
    announced: (f64, u64),
    /// Served model per request (the stats window's trailing requests).
    served: Vec<usize>,
    /// Decisions that explored (sweep aid).
    explored_n: usize,
    /// Rebuild the snapshot after every feedback event, as the gateway's aggregator does when
    /// each `POST /v1/feedback` nudges it (`LOOPGATE_BENCH_FOLD_EACH=0`: every
    /// `SNAPSHOT_EVERY` requests only).
    fold_each: bool,
    /// The request being routed (the table version of a rebuild after a delivery).
    n: usize,
}

impl<'a> InProcRouter<'a> {
    fn new(
        t: &'a Task,
        r: &'a RouteSpec,
        seed: u64,
        debug: bool,
        priors: Option<&'a Priors>,
        set: &'a Settings,
    ) -> Self {
        let route: Arc<str> = Arc::from(r.name.as_str());
        let names: Vec<Arc<str>> = r
            .models
            .iter()
            .map(|&k| Arc::from(t.models[k].as_str()))
            .collect();
        let mut agg = match Aggregator::new(set.posterior.clone(), NPS_WEIGHT) {
            Ok(a) => a,
            Err(e) => panic!("aggregator: {e}"),
        };
        for m in &names {
            if let Some(p) = priors.and_then(|p| p.lookup(m, None)) {
                let _ = agg.set_prior(&route, m, p.score, p.n0, 0);
            }
        }
        let cost: Vec<f64> = r.models.iter().map(|&k| t.mean_c[k]).collect();
        InProcRouter {
            t,
            r,
            seed,
            debug,
            set,
            priors,
            route,
            names,
            agg,
            cost,
            prepared: None,
            share: 0.0,
            announced: (0.0, 0),
            served: Vec::new(),
            explored_n: 0,
            fold_each: std::env::var("LOOPGATE_BENCH_FOLD_EACH").as_deref() != Ok("0"),
            n: 0,
        }
    }
}

impl InProcRouter<'_> {
    fn rebuild(&mut self, n: usize) -> Snap {
        let stats = self.agg.snapshot();
        let pcfg = &self.set.posterior;
        let prior_of = |m: &str| self.priors.and_then(|p| p.lookup(m, None));
        // The gateway's stats window stands for the trailing window here.
        let mut recent = vec![0u64; self.names.len()];
        for &m in &self.served[self.served.len().saturating_sub(WINDOW)..] {
            recent[m] += 1;
        }
        let input = |i: usize| {
            let posterior = stats
                .get(&self.route, &self.names[i])
                .copied()
                .unwrap_or_else(|| {
                    let mut st = PosteriorState::new();
                    if let Some(p) = prior_of(&self.names[i]) {
                        let _ = st.set_prior(p.score, p.n0, 0, pcfg);
                    }
                    st.posterior(None, pcfg)
                });
            ModelInput {
                model: self.names[i].clone(),
                posterior,
                cost_per_request: self.cost[i],
                p95_latency_ms: None,
                success_rate: None,
                recent_requests: recent[i],
            }
        };
        let p = PreparedRoute::prepare_with(
            RouteInput {
                route: self.route.clone(),
                mode: Mode::Live,
                baseline: input(0),
                candidates: (1..self.names.len()).map(input).collect(),
                constraints: self.set.constraints.clone(),
                weights: ScoreWeights::default(),
                exploration: self.set.exploration,
                pinned: None,
                table_version: (n / SNAPSHOT_EVERY) as u64 + 1,
            },
            self.set.promotion,
            self.prepared.as_deref(),
        );
        let p = match p {
            Ok(p) => p,
            Err(e) => panic!("prepare: {e}"),
        };
        if self.debug
            && n.is_multiple_of(40)
            && std::env::var("LOOPGATE_DEBUG_RANGE")
                .ok()
                .and_then(|v| {
                    let (a, b) = v.split_once('-')?;
                    Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?))
                })
                .is_some_and(|(a, b)| n >= a && n <= b)
            && std::env::var("LOOPGATE_DEBUG_SEED")
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                == Some(self.seed)
            && std::env::var("LOOPGATE_DEBUG_SNAP").is_ok_and(|v| &*self.route == v.as_str())
        {
            eprintln!(
                "n={n} eps={:.3} share={:.3} exploit={} explored={}",
                p.budget_epsilon, self.share, p.static_exploit, self.explored_n
            );
            for (i, m) in p.models.iter().enumerate() {
                eprintln!(
                    "  {:38} true={:.3} n={:4} mean={:.3} within={:.3} ts={:.4} gap_ub={:.3} in={} tests={:?}",
                    &*m.model,
                    self.t.mean_q[self.r.models[i]],
                    m.posterior.samples,
                    m.posterior.mean(),
                    m.gate.confidence,
                    m.ts_prob,
                    m.gap_ub,
                    m.in_explore,
                    m.tests
                );
                if std::env::var("LOOPGATE_DEBUG_SIGNALS").is_ok() {
                    for s in m.posterior.signals.iter().filter(|s| s.count > 0) {
                        eprintln!(
                            "      {:?} n={} mean={:.3} raw={:.1} rel={:.2} w={:.1} off={:.3}",
                            s.signal,
                            s.count,
                            s.mean,
                            s.raw_weight,
                            s.reliability,
                            s.weight,
                            s.offset
                        );
                    }
                }
            }
        }
        let e = p.static_exploit;
        let snap = Snap {
            exploit: e,
            confidence: p.models[e].gate.confidence,
        };
        self.prepared = Some(p);
        snap
    }
}

impl Router for InProcRouter<'_> {
    fn snapshot(&mut self, n: usize) -> Snap {
        self.n = n;
        self.rebuild(n)
    }

    fn route(
        &mut self,
        n: usize,
        _session: u64,
        sticky: Option<usize>,
        _row: usize,
        draw: f64,
        scored: Option<bool>,
    ) -> Routed {
        self.n = n;
        let Some(p) = self.prepared.as_ref() else {
            return Routed {
                served: 0,
                session: 0,
                held_session: true,
            };
        };
        let ctx = RequestContext {
            spend_today: 0.0,
            exploration_share: self.share,
            sticky: sticky.map(|i| &*self.names[i]),
            rng: draw,
            labelling: scored.map_or(Labelling::Unknown, |s| {
                Labelling::from_share(s, self.announced.0)
            }),
        };
        let d = decide(p, &ctx);
        if !matches!(d.kind, PickKind::Off | PickKind::Pinned) {
            let explored = if d.explores() { 1.0 } else { 0.0 };
            self.share += EXPLORE_EWMA * (explored - self.share);
            self.explored_n += explored as usize;
            if let Some(s) = scored {
                self.announced.1 += 1;
                self.announced.0 = announced_share_step(self.announced.0, self.announced.1, s);
            }
        }
        self.served.push(d.served);
        Routed {
            served: d.served,
            session: d.session_model(),
            held_session: !d.is_reference_refresh(),
        }
    }

    fn deliver(&mut self, ev: &Fb) {
        let ev = match ev {
            Fb::Judge {
                id,
                model,
                value,
                at_ms,
                ..
            } => FeedbackEvent {
                id: format!("j{id}"),
                at_ms: *at_ms,
                kind: FeedbackKind::Score {
                    route: self.route.clone(),
                    model: self.names[*model].clone(),
                    signal: Signal::Judge,
                    value: *value,
                    scale: Scale::Unit,
                },
            },
            Fb::Nps {
                session,
                nps,
                served,
                at_ms,
            } => FeedbackEvent {
                id: format!("s{session}"),
                at_ms: *at_ms,
                kind: FeedbackKind::SessionNps {
                    nps: *nps,
                    requests: served
                        .iter()
                        .map(|m| (self.route.clone(), self.names[*m].clone()))
                        .collect(),
                },
            },
        };
        let _ = self.agg.fold(&ev);
        if self.fold_each {
            let _ = self.rebuild(self.n);
        }
    }
}

/// One run of the traffic model against `router` (2,000 requests, or until 1,000 requests
/// after a regression's onset).
pub(crate) fn run(
    t: &Task,
    r: &RouteSpec,
    seed: u64,
    regression: Option<Regression>,
    announce: bool,
    router: &mut dyn Router,
) -> RunOut {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut order: Vec<usize> = Vec::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut out = RunOut::default();
    let mut exploit_prev = 0usize;
    // Open sessions: (id, remaining, last model, outcomes with their models).
    let mut sessions: Vec<Session> = Vec::new();
    let mut next_session = 0u64;
    let mut ev_id = 0u64;
    let mut onset: Option<usize> = None;
    let mut regressed_model: Option<usize> = None;
    let mut horizon = REQUESTS;
    let mut n = 0usize;
    while n < horizon {
        // Deliver due feedback (sorted by due time on insertion).
        while pending.front().is_some_and(|p| p.due <= n) {
            if let Some(p) = pending.pop_front() {
                router.deliver(&p.ev);
            }
        }
        if n.is_multiple_of(SNAPSHOT_EVERY) {
            let Snap {
                exploit: e,
                confidence,
            } = router.snapshot(n);
            if e != 0 && e != exploit_prev {
                out.promotions.push((n, e, confidence));
                if out.first_promotion.is_none() {
                    out.first_promotion = Some(n);
                    if let Some(reg) = regression {
                        onset = Some(n + reg.after);
                        regressed_model = Some(e);
                        horizon = n + reg.after + 1_000;
                    }
                }
            }
            if let (Some(o), Some(m), None) = (onset, regressed_model, out.rollback_after) {
                if n >= o && e != m {
                    out.rollback_after = Some(n - o);
                    out.rolled_to_baseline = e == 0;
                }
            }
            exploit_prev = e;
        }
        // Pick a session: open a new one when fewer than OPEN_SESSIONS are open.
        while sessions.len() < OPEN_SESSIONS {
            let u: f64 = 1.0 - rng.gen::<f64>();
            let len = 1 + (-(u.ln()) * SESSION_MEAN_EXTRA).round() as usize;
            sessions.push((next_session, len, None, Vec::new()));
            next_session += 1;
        }
        let si = rng.gen_range(0..sessions.len());
        if order.is_empty() {
            order = (0..t.q.len()).collect();
            order.shuffle(&mut rng);
        }
        let row = order.pop().unwrap_or(0);
        let sticky = sessions[si].2;
        let draw = rng.gen::<f64>();
        // The judge's sample is drawn before routing (independent of it either way).
        let judged = rng.gen::<f64>() < JUDGE_SHARE;
        let Routed {
            served: m,
            session: chosen,
            held_session,
        } = router.route(
            n,
            sessions[si].0,
            sticky,
            row,
            draw,
            announce.then_some(judged),
        );
        let regressed = onset.is_some_and(|o| n >= o) && regressed_model == Some(m);
        let mut outcome = t.q[row][r.models[m]];
        if regressed && rng.gen::<f64>() >= 0.3 {
            outcome = 0.0;
        }
        out.served.push(m);
        out.served_q
            .push(t.mean_q[r.models[m]] * if regressed { 0.3 } else { 1.0 });
        let at_ms = n as i64 * 1_000;
        if judged {
            let v = (outcome + JUDGE_NOISE * gauss(&mut rng)).clamp(0.0, 1.0);
            ev_id += 1;
            push(
                &mut pending,
                n + JUDGE_DELAY,
                Fb::Judge {
                    id: ev_id,
                    seq: n,
                    model: m,
                    value: v,
                    at_ms,
                },
            );
        }
        let s = &mut sessions[si];
        s.2 = Some(chosen);
        s.3.push((m, outcome, held_session));
        s.1 -= 1;
        if s.1 == 0 {
            let (id, _, _, outcomes) = sessions.swap_remove(si);
            if rng.gen::<f64>() < NPS_SHARE {
                let mean = outcomes.iter().map(|x| x.1).sum::<f64>() / outcomes.len() as f64;
                let nps = (10.0 * mean + NPS_NOISE * gauss(&mut rng))
                    .round()
                    .clamp(0.0, 10.0);
                push(
                    &mut pending,
                    n + NPS_DELAY,
                    Fb::Nps {
                        session: id,
                        nps,
                        // Credited as the gateway does (`store::pending::nps_credited`).
                        served: nps_credited(outcomes.iter().map(|x| (x.0, x.2))),
                        at_ms,
                    },
                );
            }
        }
        n += 1;
    }
    out.onset = onset;
    if regression.is_none()
        && std::env::var("LOOPGATE_DEBUG_WINDOW").is_ok_and(|v| r.name == v.as_str())
    {
        let names: Vec<Arc<str>> = r
            .models
            .iter()
            .map(|&k| Arc::from(t.models[k].as_str()))
            .collect();
        debug_window(t, r, &names, &out);
    }
    out
}

/// Sweep aid: which models were served in the route's worst 500-request window.
fn debug_window(t: &Task, r: &RouteSpec, names: &[Arc<str>], out: &RunOut) {
    let xs = &out.served_q;
    if xs.len() < WINDOW {
        return;
    }
    let (mut best, mut at, mut sum) = (f64::INFINITY, 0, 0.0);
    for i in 0..xs.len() {
        sum += xs[i];
        if i >= WINDOW {
            sum -= xs[i - WINDOW];
        }
        if i + 1 >= WINDOW && sum < best {
            best = sum;
            at = i + 1 - WINDOW;
        }
    }
    let mut counts = vec![0usize; names.len()];
    for &m in &out.served[at..at + WINDOW] {
        counts[m] += 1;
    }
    let base = t.mean_q[r.models[0]];
    eprint!("worst window at {at}: ");
    for (m, c) in counts.iter().enumerate() {
        if *c > 0 {
            eprint!(
                "{}={} (gap {:.3}) ",
                names[m],
                c,
                base - t.mean_q[r.models[m]]
            );
        }
    }
    eprintln!();
}

fn push(q: &mut VecDeque<Pending>, due: usize, ev: Fb) {
    let pos = q.iter().rposition(|p| p.due <= due).map_or(0, |i| i + 1);
    q.insert(pos, Pending { due, ev });
}

fn gauss(rng: &mut StdRng) -> f64 {
    let u1: f64 = 1.0 - rng.gen::<f64>();
    let u2: f64 = rng.gen::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Lowest mean of `xs` over any window of `w` consecutive entries.
fn min_window(xs: &[f64], w: usize) -> f64 {
    if xs.len() < w {
        return f64::NAN;
    }
    let mut sum: f64 = xs[..w].iter().sum();
    let mut best = sum;
    for i in w..xs.len() {
        sum += xs[i] - xs[i - w];
        best = best.min(sum);
    }
    best / w as f64
}

struct Args {
    seeds: u64,
    quick: bool,
    out: PathBuf,
    data: PathBuf,
    /// Through the real gateway (`routerbench_http.rs`).
    http: bool,
    /// Only routes whose name contains this text.
    only: Option<String>,
    /// Whether the judge's sample is announced before routing (default; `--unannounced`: not).
    announce: bool,
    /// Without the embedded benchmark priors (`--no-priors`): every candidate starts unknown,
    /// as a model the priors do not know, or a task they say nothing about, would.
    priors: bool,
}

fn parse() -> Args {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut a = Args {
        seeds: 5,
        quick: false,
        out: root.join("target/bench-results"),
        data: root.join("benches/data/routerbench.jsonl.gz"),
        http: false,
        only: None,
        announce: true,
        priors: true,
    };
    let mut seeds_set = false;
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--seeds" => {
                a.seeds = it.next().and_then(|v| v.parse().ok()).unwrap_or(5);
                seeds_set = true;
            }
            "--quick" => a.quick = true,
            "--http" => a.http = true,
            "--only" => a.only = it.next(),
            "--unannounced" => a.announce = false,
            "--no-priors" => a.priors = false,
            "--out" => a.out = it.next().map(PathBuf::from).unwrap_or(a.out),
            "--data" => a.data = it.next().map(PathBuf::from).unwrap_or(a.data),
            _ => {}
        }
    }
    if a.quick && !seeds_set {
        a.seeds = a.seeds.min(2);
    }
    a.seeds = a.seeds.clamp(1, 100);
    a
}

/// Requests one fixed-sample test at 95% needs to show that the easiest cheaper candidate
/// truly within δ is within δ, from production scores alone (no priors, no NPS): scores are
/// Bernoulli(q) plus the judge's N(0, σ²) noise on `JUDGE_SHARE` of requests, split between
/// that candidate and the baseline in the best proportion (Neyman):
/// n = z²(σ_b + σ_c)² / (q_c − q_b + δ)². A lower bound on what any router can do without
/// informative priors (a sequential test does a little better on lucky paths, not in every
/// seed); `None` when no cheaper candidate is within δ.
fn one_test_bound(tr: &Truth, delta: f64) -> Option<f64> {
    const Z95: f64 = 1.645;
    let sd = |q: f64| (q * (1.0 - q) + JUDGE_NOISE * JUDGE_NOISE).sqrt();
    (1..tr.q.len())
        .filter(|&i| tr.c[i] <= tr.c[0] && tr.q[i] >= tr.q[0] - delta)
        .map(|i| {
            let margin = tr.q[i] - tr.q[0] + delta;
            let scores = (Z95 * (sd(tr.q[0]) + sd(tr.q[i])) / margin).powi(2);
            scores / JUDGE_SHARE
        })
        .min_by(f64::total_cmp)
}

fn fmt_opt(x: Option<usize>) -> String {
    x.map_or("–".into(), |v| v.to_string())
}

pub fn main() {
    let a = parse();
    let tasks = match load(&a.data) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("routerbench: {e}");
            std::process::exit(1);
        }
    };
    if a.http && !a.priors {
        // The gateway loads its embedded priors itself; there is no switch to turn them off.
        eprintln!("routerbench: --no-priors is for the in-process replay only");
        std::process::exit(2);
    }
    let priors = if a.priors {
        Priors::embedded().ok()
    } else {
        None
    };
    let set = settings();
    let overridden = std::env::var("LOOPGATE_BENCH_OVERRIDES").is_ok_and(|v| !v.trim().is_empty());
    let delta = set.constraints.max_regression;
    let mut all = routes(&tasks);
    if a.quick {
        all = all.into_iter().step_by(3).collect();
    }
    if let Some(only) = &a.only {
        all.retain(|r| r.name.contains(only.as_str()));
    }
    if a.http && overridden {
        eprintln!("routerbench: LOOPGATE_BENCH_OVERRIDES applies in process only; the HTTP run serves the gateway's shipped defaults");
        std::process::exit(2);
    }
    let http_env = if a.http {
        let env = RbResponder::new(&tasks).and_then(|resp| HttpEnv::with_responder(Arc::new(resp)));
        match env {
            Ok(e) => {
                eprintln!(
                    "routerbench: HTTP mode, gateway binary {}",
                    e.binary().display()
                );
                Some(e)
            }
            Err(e) => {
                eprintln!("routerbench: {e}");
                std::process::exit(1);
            }
        }
    } else {
        None
    };
    let mut http_total = HttpStats::default();
    let mut http_runs = Vec::new();
    let mut unknown_served = 0u64;
    let started = std::time::Instant::now();
    let mut md = String::new();
    md.push_str(&format!(
        "RouterBench replay, {}, {}, {}, {} requests per route, seeds 0..{}, δ = {delta}\n\n",
        if a.http {
            "through the real gateway over HTTP"
        } else {
            "in-process"
        },
        match (a.announce, a.priors) {
            (true, true) => "judge sample announced before routing (loopgate-feedback-expected)",
            (false, true) => "judge sample not announced (--unannounced)",
            (true, false) => "judge sample announced, WITHOUT benchmark priors (--no-priors)",
            (false, false) => "judge sample not announced, WITHOUT benchmark priors",
        },
        if overridden {
            "OVERRIDDEN settings (LOOPGATE_BENCH_OVERRIDES)"
        } else {
            "shipped defaults"
        },
        REQUESTS,
        a.seeds
    ));
    md.push_str("| route | class | cands | first promotion (per seed) | saving vs best static, req 1000-2000 (min / mean) | min 500-window − (baseline − δ) | promotions (mean) | rollback after regression at +200 (max) | at +2500 (max) |\n|---|---|---:|---|---|---:|---:|---:|---:|\n");
    let mut calib = (0usize, 0usize);
    let mut json_routes = Vec::new();
    let mut goals = HashMap::<&str, (usize, usize)>::new();
    // "Better" routes: (name, one-test bound in requests, first promotion ≤ 500 in every seed).
    let mut bounds: Vec<(String, f64, bool)> = Vec::new();
    for r in &all {
        let t = &tasks[r.task];
        let tr = truth(t, r, delta);
        let mut firsts = Vec::new();
        let mut savings = Vec::new();
        let mut windows = Vec::new();
        let mut promos = Vec::new();
        // Per seed: (request, promoted model, its gate confidence) of every promotion.
        let mut promo_events = Vec::new();
        let mut rb200 = Vec::new();
        let mut rb2500 = Vec::new();
        for seed in 0..a.seeds {
            let (o, regs) = match &http_env {
                None => {
                    let mut router = InProcRouter::new(t, r, seed, true, priors.as_ref(), &set);
                    let o = run(t, r, seed, None, a.announce, &mut router);
                    let regs = [200, 2500].map(|after| {
                        let mut router =
                            InProcRouter::new(t, r, seed, false, priors.as_ref(), &set);
                        run(
                            t,
                            r,
                            seed,
                            Some(Regression { after }),
                            a.announce,
                            &mut router,
                        )
                    });
                    (o, regs.map(Some))
                }
                Some(env) => {
                    let mut go = |reg: Option<Regression>, what: &str| -> RunOut {
                        let mut router = match HttpRouter::new(env, t, r, seed) {
                            Ok(x) => x,
                            Err(e) => {
                                eprintln!("routerbench: gateway: {e}");
                                std::process::exit(1);
                            }
                        };
                        let t0 = std::time::Instant::now();
                        let o = run(t, r, seed, reg, a.announce, &mut router);
                        let mut st = router.gw.stats;
                        st.wall_s = t0.elapsed().as_secs_f64();
                        unknown_served += router.unknown_served;
                        eprintln!(
                            "routerbench:   http {} seed {seed} {what}: {} requests ({} failed), feedback {} accepted / {} duplicate / {} rejected / {} skipped, {} snapshots ({} timeouts), {:.1}s ({:.0} req/s)",
                            r.name, st.requests, st.request_errors, st.feedback_accepted,
                            st.feedback_duplicate, st.feedback_rejected, st.feedback_skipped,
                            st.refreshes, st.refresh_timeouts, st.wall_s,
                            st.requests as f64 / st.wall_s.max(1e-9)
                        );
                        http_total.add(&st);
                        http_runs
                            .push(json!({"route": r.name, "seed": seed, "run": what, "stats": st}));
                        o
                    };
                    // The clean run is the first 2,000 requests of the +2,500 regression run
                    // (its onset lies after request 2,000; before it the two are the same
                    // run), so one gateway run serves both; the +200 run only when the clean
                    // part promoted (otherwise there is nothing to roll back).
                    let long = go(
                        Some(Regression { after: 2500 }),
                        "clean + regression at +2500",
                    );
                    let o = long.prefix(REQUESTS);
                    let r200 = o
                        .first_promotion
                        .is_some()
                        .then(|| go(Some(Regression { after: 200 }), "regression at +200"));
                    (o, [r200, Some(long)])
                }
            };
            firsts.push(o.first_promotion);
            let served_c: f64 = o.served[1000..2000].iter().map(|&m| tr.c[m]).sum::<f64>() / 1000.0;
            if tr.best != 0 {
                savings.push((tr.c[0] - served_c) / (tr.c[0] - tr.c[tr.best]));
            }
            windows.push(min_window(&o.served_q, WINDOW) - (tr.q[0] - delta));
            promos.push(o.promotions.len());
            promo_events.push(
                o.promotions
                    .iter()
                    .map(|&(n, m, c)| json!([n, t.models[r.models[m]], c]))
                    .collect::<Vec<_>>(),
            );
            for &(_, m, conf) in &o.promotions {
                if conf >= 0.95 {
                    calib.1 += 1;
                    if tr.q[m] >= tr.q[0] - delta {
                        calib.0 += 1;
                    }
                }
            }
            for (o, acc) in regs.into_iter().zip([&mut rb200, &mut rb2500]) {
                if let Some(o) = o.filter(|o| o.onset.is_some()) {
                    acc.push(o.rollback_after);
                }
            }
        }
        let firsts_s = firsts
            .iter()
            .map(|f| fmt_opt(*f))
            .collect::<Vec<_>>()
            .join(" ");
        let (smin, smean) = if savings.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            (
                savings.iter().copied().fold(f64::INFINITY, f64::min),
                savings.iter().sum::<f64>() / savings.len() as f64,
            )
        };
        let wmin = windows.iter().copied().fold(f64::INFINITY, f64::min);
        let pmean = promos.iter().sum::<usize>() as f64 / promos.len().max(1) as f64;
        let rb = |v: &Vec<Option<usize>>| -> String {
            if v.is_empty() {
                "n/a".into()
            } else if v.iter().any(Option::is_none) {
                format!(
                    "never ({} of {})",
                    v.iter().filter(|x| x.is_none()).count(),
                    v.len()
                )
            } else {
                v.iter()
                    .flatten()
                    .max()
                    .map_or("–".into(), |m| m.to_string())
            }
        };
        let class = match tr.class {
            Class::Better => "better",
            Class::Within => "within δ",
            Class::Unsafe => "unsafe",
        };
        let bound = one_test_bound(&tr, delta);
        // Goals of issue 12.
        match tr.class {
            Class::Better => {
                let ok_first = firsts.iter().all(|f| f.is_some_and(|x| x <= 500));
                if let Some(b) = bound {
                    bounds.push((r.name.clone(), b, ok_first));
                }
                let ok_saving = savings.iter().all(|s| *s >= 0.9);
                let g = goals
                    .entry("better: first ≤ 500 in every seed")
                    .or_default();
                g.1 += 1;
                g.0 += usize::from(ok_first);
                let g = goals
                    .entry("better: saving ≥ 90% in every seed")
                    .or_default();
                g.1 += 1;
                g.0 += usize::from(ok_saving);
            }
            Class::Unsafe => {
                let g = goals.entry("unsafe: zero promotions").or_default();
                g.1 += 1;
                g.0 += usize::from(promos.iter().all(|p| *p == 0));
                let g = goals
                    .entry("unsafe: every window ≥ baseline − δ")
                    .or_default();
                g.1 += 1;
                g.0 += usize::from(wmin >= 0.0);
            }
            Class::Within => {}
        }
        for v in [&rb200, &rb2500] {
            if !v.is_empty() {
                let g = goals
                    .entry("regression: rollback ≤ 500 in every seed")
                    .or_default();
                g.1 += 1;
                g.0 += usize::from(v.iter().all(|x| x.is_some_and(|x| x <= 500)));
            }
        }
        md.push_str(&format!(
            "| {} | {class} | {} | {firsts_s} | {} | {wmin:+.3} | {pmean:.1} | {} | {} |\n",
            r.name,
            r.models.len() - 1,
            if savings.is_empty() {
                "n/a (baseline is best)".to_string()
            } else {
                format!("{:.0}% / {:.0}%", smin * 100.0, smean * 100.0)
            },
            rb(&rb200),
            rb(&rb2500),
        ));
        json_routes.push(json!({
            "route": r.name, "class": class, "candidates": r.models.len() - 1,
            "first_promotion": firsts, "promotion_events": promo_events,
            "saving_vs_best_static": savings,
            "min_window_minus_floor": windows, "promotions": promos,
            "rollback_after_200": rb200, "rollback_after_2500": rb2500,
            "truth": {"quality": tr.q, "cost": tr.c, "best_static": tr.best},
            "one_test_bound_requests": bound,
        }));
        eprintln!("routerbench: {} done ({:.0?})", r.name, started.elapsed());
    }
    md.push_str(&format!(
        "\nCalibration: {} of {} promotions made at confidence ≥ 0.95 were truly within δ ({:.1}%).\n\nGoals (routes meeting / routes of the class):\n\n",
        calib.0,
        calib.1,
        100.0 * calib.0 as f64 / calib.1.max(1) as f64
    ));
    let mut gl: Vec<_> = goals.iter().collect();
    gl.sort();
    for (k, (ok, n)) in gl {
        md.push_str(&format!("- {k}: {ok} / {n}\n"));
    }
    if !bounds.is_empty() {
        let reachable: Vec<_> = bounds.iter().filter(|b| b.1 <= 500.0).collect();
        let out: Vec<String> = bounds
            .iter()
            .filter(|b| b.1 > 500.0)
            .map(|b| format!("{} ({:.0})", b.0, b.1))
            .collect();
        md.push_str(&format!(
            "\nOne fixed-sample test at 95% from production scores alone (no priors; `one_test_bound`) needs more than 500 requests on {} of {} \"better\" routes: {}. Of the {} where it needs at most 500 ({:.0}–{:.0}), first ≤ 500 in every seed: {} / {}.\n",
            out.len(),
            bounds.len(),
            if out.is_empty() { "none".to_string() } else { out.join(", ") },
            reachable.len(),
            reachable.iter().map(|b| b.1).fold(f64::INFINITY, f64::min),
            reachable.iter().map(|b| b.1).fold(0.0, f64::max),
            reachable.iter().filter(|b| b.2).count(),
            reachable.len(),
        ));
    }
    if a.http {
        let st = &http_total;
        md.push_str(&format!(
            "\nThrough the gateway: {} requests ({} failed, {} served models not in the route), feedback {} accepted / {} duplicate / {} rejected / {} skipped, {} snapshots ({} fold timeouts), {:.0} s of runs ({:.0} requests/s), {:.0} s in all.\n",
            st.requests, st.request_errors, unknown_served, st.feedback_accepted, st.feedback_duplicate,
            st.feedback_rejected, st.feedback_skipped, st.refreshes, st.refresh_timeouts, st.wall_s,
            st.requests as f64 / st.wall_s.max(1e-9), started.elapsed().as_secs_f64()
        ));
    }
    let stem = if a.http {
        "routerbench_http"
    } else {
        "routerbench"
    };
    let _ = std::fs::create_dir_all(&a.out);
    let _ = std::fs::write(a.out.join(format!("{stem}.md")), &md);
    let _ = std::fs::write(
        a.out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&json!({
            "routes": json_routes, "calibration": [calib.0, calib.1],
            "http": a.http.then(|| json!({"total": http_total, "runs": http_runs})),
        }))
        .unwrap_or_default(),
    );
    println!("{md}");
    eprintln!(
        "routerbench: wrote {} ({:.0?})",
        a.out.join(format!("{stem}.md")).display(),
        started.elapsed()
    );
}
