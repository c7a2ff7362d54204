//! The in-process router under test: exactly the library's statistics — `Aggregator` folding,
//! `PreparedRoute::prepare` per snapshot, `decide` per request, `RegressionMonitor` per bucket —
//! with nothing but the HTTP layer taken away.
//!
//! Per-route mode: one decision unit, the route `default`.
//! Contextual mode: posteriors per (route, [`ContextKey`]) bucket. A bucket decides on its own
//! evidence once both models have ≥ `min_samples` samples in it; until then it belongs to the
//! *pool*, whose posterior is a traffic-weighted (post-stratified) combination of exactly its
//! member buckets' posteriors. That is the route-level fallback restricted to the traffic it
//! decides, so every gate uses only evidence about the traffic it routes (maturity depends on
//! sample counts only, never on outcomes).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use loopgate::feedback::aggregator::{Aggregator, FeedbackEvent, FeedbackKind};
use loopgate::feedback::constraints::Constraints;
use loopgate::feedback::context::{self, ContextKey};
use loopgate::feedback::posterior::{Posterior, PosteriorConfig, Scale, Signal};
use loopgate::feedback::router::{
    decide, ExplorationConfig, Mode, ModelInput, PickKind, PreparedRoute, RequestContext,
    RouteInput, ScoreWeights,
};
use loopgate::feedback::sequential::{MonitorConfig, RegressionMonitor};
use loopgate::store::pending::nps_credited;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::data::MODELS;
use super::sim::{Feedback, Request, Routed, RouterUnderTest, UnitState};

/// Benchmark priors: (score in [0, 1], pseudo-observations n0) per model, or none (neutral).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct PriorSpec {
    pub baseline: Option<(f64, f64)>,
    pub candidate: Option<(f64, f64)>,
}

#[derive(Clone, Debug)]
pub struct InProcConfig {
    pub contextual: bool,
    pub constraints: Constraints,
    pub exploration: ExplorationConfig,
    pub weights: ScoreWeights,
    pub posterior: PosteriorConfig,
    /// Total weight of one session's NPS (spread over its requests).
    pub nps_weight: f64,
    pub priors: PriorSpec,
    /// Keep a session on the model that served its first request (where allowed), as the
    /// gateway does with a session id, so the session's NPS is attributable.
    pub sticky: bool,
    /// Regression monitor per bucket (threshold = max_regression); `None` disables it.
    pub monitor: Option<MonitorConfig>,
    /// Requests over which the exploration share is measured.
    pub share_window: usize,
    /// Estimated cost per request of each model (catalog price × typical tokens).
    pub costs: [f64; 2],
    pub seed: u64,
}

struct Unit {
    name: String,
    members: Vec<usize>,
    route: Arc<PreparedRoute>,
    pinned: bool,
}

pub struct InProc {
    cfg: InProcConfig,
    agg: Aggregator,
    models: [Arc<str>; 2],
    bucket_names: Vec<Arc<str>>,
    units: Vec<Unit>,
    bucket_unit: Vec<usize>,
    /// Per stream position: (bucket, served model, whether the request held its session).
    log: Vec<(u8, u8, bool)>,
    sticky: HashMap<u64, u8>,
    window: VecDeque<bool>,
    window_explored: usize,
    monitors: Vec<RegressionMonitor>,
    alarm_at: Vec<Option<u64>>,
    promoted_bucket: Vec<bool>,
    /// Requests per bucket so far (the pool's stratification weights).
    traffic: Vec<u64>,
    rng: StdRng,
}

fn n_buckets(contextual: bool) -> usize {
    if contextual {
        ContextKey::ALL.len()
    } else {
        1
    }
}

impl InProc {
    pub fn new(cfg: InProcConfig) -> Result<InProc, String> {
        let nb = n_buckets(cfg.contextual);
        let models = [Arc::from(MODELS[0]), Arc::from(MODELS[1])];
        let bucket_names: Vec<Arc<str>> = if cfg.contextual {
            ContextKey::ALL
                .iter()
                .map(|k| Arc::from(format!("default|{}", k.as_str()).as_str()))
                .collect()
        } else {
            vec![Arc::from("default")]
        };
        let mut agg = Aggregator::new(cfg.posterior.clone(), cfg.nps_weight)?;
        for b in &bucket_names {
            for (m, p) in [cfg.priors.baseline, cfg.priors.candidate]
                .iter()
                .enumerate()
            {
                if let Some((score, n0)) = p {
                    agg.set_prior(b, &models[m], *score, *n0, 0)
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        let monitors = match cfg.monitor {
            Some(mc) => (0..nb)
                .map(|_| RegressionMonitor::new(mc).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let rng = StdRng::seed_from_u64(cfg.seed ^ 0xdec1de);
        let mut me = InProc {
            agg,
            models,
            bucket_names,
            units: Vec::new(),
            bucket_unit: vec![0; nb],
            log: Vec::with_capacity(16_384),
            sticky: HashMap::new(),
            window: VecDeque::with_capacity(cfg.share_window + 1),
            window_explored: 0,
            monitors,
            alarm_at: vec![None; nb],
            promoted_bucket: vec![false; nb],
            traffic: vec![0; nb],
            rng,
            cfg,
        };
        me.refresh(0);
        Ok(me)
    }

    fn bucket_of(&self, req: &Request<'_>) -> usize {
        if self.cfg.contextual {
            // The router computes the features itself, as the gateway does.
            context::context_key(&req.row.messages).index()
        } else {
            0
        }
    }

    fn model_input(&self, m: usize, p: Posterior) -> ModelInput {
        ModelInput {
            model: Arc::clone(&self.models[m]),
            posterior: p,
            cost_per_request: self.cfg.costs[m],
            p95_latency_ms: None,
            success_rate: None,
            recent_requests: 0,
        }
    }

    fn prepare(
        &self,
        name: &str,
        post: [Posterior; 2],
        pinned: bool,
        version: u64,
    ) -> Arc<PreparedRoute> {
        let input = RouteInput {
            route: Arc::from(name),
            mode: Mode::Live,
            baseline: self.model_input(0, post[0]),
            candidates: vec![self.model_input(1, post[1])],
            constraints: self.cfg.constraints.clone(),
            weights: self.cfg.weights,
            exploration: ExplorationConfig {
                seed: self.cfg.exploration.seed ^ self.cfg.seed,
                ..self.cfg.exploration
            },
            pinned: pinned.then(|| Arc::clone(&self.models[0])),
            table_version: version,
        };
        match PreparedRoute::prepare(input) {
            Ok(r) => r,
            // Inputs are validated when the config is built; a failure here is a driver bug.
            Err(e) => panic!("prepare {name}: {e}"),
        }
    }
}

/// The pool's posterior: a post-stratified estimate Σ w_b·q_b over its member buckets, with w_b
/// the buckets' shares of the pool's traffic (request counts, never outcomes), moment-matched to
/// a Beta. Simply adding the buckets' evidence would weight each bucket by how often each model
/// happened to be served there (exploration, sticky sessions), which differs between the models
/// and between the evidence and the traffic: a Simpson's-paradox bias that breaks calibration.
/// A bucket without evidence contributes its uniform prior's variance, so the pool cannot pass
/// the gate until every bucket with a noticeable share has data.
fn stratified(posts: &[Posterior], traffic: &[u64], cfg: &PosteriorConfig) -> Posterior {
    let Some(first) = posts.first() else {
        return Posterior::uninformed(cfg);
    };
    let total: u64 = traffic.iter().sum();
    if posts.len() == 1 {
        return *first;
    }
    let n = posts.len() as f64;
    let (mut mean, mut var) = (0.0, 0.0);
    for (p, &t) in posts.iter().zip(traffic) {
        let w = if total == 0 {
            1.0 / n
        } else {
            t as f64 / total as f64
        };
        mean += w * p.mean();
        var += w * w * p.variance();
    }
    let mean = mean.clamp(1e-6, 1.0 - 1e-6);
    // Beta with this mean and variance (at least one pseudo-observation in total).
    let k = (mean * (1.0 - mean) / var.max(1e-12) - 1.0).max(1.0);
    let mut out = *first;
    out.alpha = mean * k;
    out.beta = (1.0 - mean) * k;
    out.samples = posts.iter().map(|p| p.samples).sum();
    out
}

impl RouterUnderTest for InProc {
    fn route(&mut self, req: &Request<'_>) -> Routed {
        let b = self.bucket_of(req);
        self.traffic[b] += 1;
        let unit = &self.units[self.bucket_unit[b]];
        let share = if self.window.is_empty() {
            0.0
        } else {
            self.window_explored as f64 / self.window.len() as f64
        };
        let hint = if self.cfg.sticky {
            self.sticky
                .get(&req.session)
                .map(|&m| &*self.models[m as usize])
        } else {
            None
        };
        let ctx = RequestContext {
            spend_today: 0.0,
            exploration_share: share,
            sticky: hint,
            rng: self.rng.gen::<f64>(),
            labelling: Default::default(),
        };
        let d = decide(&unit.route, &ctx);
        let served = d.served.min(1);
        let explored = d.kind == PickKind::Explored
            || (d.kind == PickKind::Sticky && served == 1 && d.exploit == 0);
        self.window.push_back(explored);
        self.window_explored += usize::from(explored);
        if self.window.len() > self.cfg.share_window {
            if let Some(true) = self.window.pop_front() {
                self.window_explored -= 1;
            }
        }
        debug_assert_eq!(self.log.len() as u64, req.seq);
        self.log
            .push((b as u8, served as u8, !d.is_reference_refresh()));
        if self.cfg.sticky {
            // A reference refresh does not hold the session on the baseline.
            let keep = if d.is_reference_refresh() {
                d.exploit.min(1)
            } else {
                served
            };
            self.sticky.insert(req.session, keep as u8);
        }
        Routed {
            model: served,
            explored,
        }
    }

    fn feedback(&mut self, fb: &Feedback, at_ms: i64, now_seq: u64) {
        let score =
            |this: &Self, id: String, seq: u64, signal: Signal, value: f64, scale: Scale| {
                let (b, m, _) = this.log[seq as usize];
                FeedbackEvent {
                    id,
                    at_ms,
                    kind: FeedbackKind::Score {
                        route: Arc::clone(&this.bucket_names[b as usize]),
                        model: Arc::clone(&this.models[m as usize]),
                        signal,
                        value,
                        scale,
                    },
                }
            };
        let ev = match fb {
            Feedback::Judge { seq, value } => {
                let (b, m, _) = self.log[*seq as usize];
                let b = b as usize;
                if let Some(mon) = self.monitors.get_mut(b) {
                    if m == 0 {
                        mon.push_holdback(*value);
                    } else if self.promoted_bucket[b] && mon.push_served(*value) {
                        self.alarm_at[b] = Some(now_seq);
                    }
                }
                score(
                    self,
                    format!("j{seq}"),
                    *seq,
                    Signal::Judge,
                    *value,
                    Scale::Unit,
                )
            }
            Feedback::Admin { seq, value } => score(
                self,
                format!("a{seq}"),
                *seq,
                Signal::Admin,
                *value,
                Scale::ZeroToTen,
            ),
            // Contextual: a session's NPS is evidence about a bucket only if the whole session
            // was in that bucket; crediting a mixed session's NPS to each of its buckets pulls
            // every bucket towards the session mix and breaks the gate's calibration.
            Feedback::SessionNps { seqs, .. }
                if self.cfg.contextual
                    && seqs
                        .windows(2)
                        .any(|w| self.log[w[0] as usize].0 != self.log[w[1] as usize].0) =>
            {
                return;
            }
            Feedback::SessionNps { session, seqs, nps } => FeedbackEvent {
                id: format!("n{session}"),
                at_ms,
                kind: FeedbackKind::SessionNps {
                    nps: *nps,
                    // Credited as the gateway does (`store::pending::nps_credited`).
                    requests: nps_credited(seqs.iter().map(|s| {
                        let (b, m, held) = self.log[*s as usize];
                        (
                            (
                                Arc::clone(&self.bucket_names[b as usize]),
                                Arc::clone(&self.models[m as usize]),
                            ),
                            held,
                        )
                    })),
                },
            },
        };
        if let Err(e) = self.agg.fold(&ev) {
            panic!("fold {}: {e}", ev.id);
        }
    }

    fn refresh(&mut self, _now_seq: u64) -> Vec<UnitState> {
        let snap = self.agg.snapshot();
        let pcfg = self.agg.config().clone();
        let nb = self.bucket_names.len();
        let posts: Vec<[Posterior; 2]> = (0..nb)
            .map(|b| {
                let get = |m: usize| {
                    snap.get(&self.bucket_names[b], &self.models[m])
                        .copied()
                        .unwrap_or_else(|| Posterior::uninformed(&pcfg))
                };
                [get(0), get(1)]
            })
            .collect();
        let min_n = self.cfg.constraints.min_samples;
        let mut units = Vec::new();
        let mut bucket_unit = vec![0usize; nb];
        let mut pool: Vec<usize> = Vec::new();
        let version = snap.version * 64;
        for b in 0..nb {
            let alarmed = self.alarm_at[b].is_some();
            let mature = !self.cfg.contextual
                || (posts[b][0].samples >= min_n && posts[b][1].samples >= min_n);
            if alarmed || mature {
                let name = if self.cfg.contextual {
                    ContextKey::ALL[b].as_str().to_string()
                } else {
                    "default".to_string()
                };
                let route = self.prepare(&name, posts[b], alarmed, version + units.len() as u64);
                bucket_unit[b] = units.len();
                units.push(Unit {
                    name,
                    members: vec![b],
                    route,
                    pinned: alarmed,
                });
            } else {
                pool.push(b);
            }
        }
        if !pool.is_empty() {
            let p0: Vec<Posterior> = pool.iter().map(|&b| posts[b][0]).collect();
            let p1: Vec<Posterior> = pool.iter().map(|&b| posts[b][1]).collect();
            let traffic: Vec<u64> = pool.iter().map(|&b| self.traffic[b]).collect();
            let post = [
                stratified(&p0, &traffic, &pcfg),
                stratified(&p1, &traffic, &pcfg),
            ];
            let route = self.prepare("pool", post, false, version + units.len() as u64);
            for &b in &pool {
                bucket_unit[b] = units.len();
            }
            units.push(Unit {
                name: "pool".to_string(),
                members: pool,
                route,
                pinned: false,
            });
        }
        let ctx = RequestContext::default();
        let mut out = Vec::with_capacity(units.len());
        for u in &units {
            let promoted = u.route.exploit(&ctx) != 0;
            for &b in &u.members {
                self.promoted_bucket[b] = promoted;
            }
            out.push(UnitState {
                name: u.name.clone(),
                members: if self.cfg.contextual {
                    u.members.iter().map(|&b| ContextKey::ALL[b]).collect()
                } else {
                    ContextKey::ALL.to_vec()
                },
                promoted,
                confidence: u.route.models[1].gate.confidence,
                samples: [
                    u.route.models[0].posterior.samples,
                    u.route.models[1].posterior.samples,
                ],
                pinned: u.pinned,
            });
        }
        self.units = units;
        self.bucket_unit = bucket_unit;
        out
    }

    fn alarms(&self) -> Vec<(Vec<ContextKey>, u64)> {
        let mut v = Vec::new();
        for (b, a) in self.alarm_at.iter().enumerate() {
            if let Some(at) = a {
                let members = if self.cfg.contextual {
                    vec![ContextKey::ALL[b]]
                } else {
                    // Per-route: the route's alarm concerns all of its traffic.
                    ContextKey::ALL.to_vec()
                };
                v.push((members, *at));
            }
        }
        v
    }
}
