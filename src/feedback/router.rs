//! The pure `auto` routing decision.
//!
//! Everything that depends only on the routing table is computed once per snapshot in
//! [`PreparedRoute::prepare`] (gate confidences, static constraint rows, scores, exploration
//! weights). [`decide`] then does O(candidates) arithmetic with no allocation: it applies the
//! per-request state (spend today, exploration share, session hint, one uniform random number)
//! and returns a compact [`Decision`] holding an `Arc` of the snapshot, from which the full trace
//! is rendered off the hot path ([`Decision::trace`](crate::feedback::decision)).
//!
//! Policy (the propensity logged is the exact probability of the pick under it):
//! 1. `off` → baseline; a pin → the pinned model.
//! 2. Hard constraints first: a candidate is *promotable* only if every promotion row passes
//!    (quality, cost, latency, confidence, samples; see [`Knob::gates`]). It is *explorable* if
//!    the cost/latency rows pass, the route is under `max_exploration_share`, and its quality is
//!    not confidently violating (P(within) and P(≥ floor) ≥ 1 − min_confidence).
//! 3. Exploit: the highest score among the baseline and the promotable candidates.
//! 4. A session hint keeps the session's model if it is still the baseline, promotable or
//!    explorable (so its NPS is attributable); the pick is then deterministic (propensity 1).
//!    An explored session is released to the exploit pick once the recent window has spent
//!    half the quality budget.
//! 5. Explore with probability ε (the quality budget, capped by rate, max_exploration_share and
//!    how likely exploring is to pay off): draw from the exploration weights precomputed per
//!    snapshot (expected saving, see [`exploration_weights`]), restricted to the explorable
//!    candidates. p(m) = (1−ε)·[m = exploit] + ε·ts(m)/Σts.
//!    After a promotion that is not settled, the baseline itself is drawn with a small
//!    probability (a reference refresh, `promotion.reference_rate`) so the reference of the
//!    gate keeps moving; it is drawn on requests that continue a session on the promoted
//!    model too, and does not hold the session.
//! 6. `shadow` serves the baseline and records the pick as `would_have`.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::constraints::{Action, CandidateStats, Constraints, Knob, KnobSet};
use super::gate::{confidence_above, gate, GateOutcome};
use super::posterior::Posterior;

/// Route mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Always the baseline; nothing is computed.
    #[default]
    Off,
    /// Serve the baseline, compute and record what would have been chosen.
    Shadow,
    /// Serve the router's pick.
    Live,
}

impl Mode {
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Shadow => "shadow",
            Mode::Live => "live",
        }
    }
}

/// Weights of the published ranking score (normalised to sum to 1 when prepared).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScoreWeights {
    /// Upstream success rate.
    pub success: f64,
    /// Posterior mean quality.
    pub feedback: f64,
    /// Cost saving vs the baseline, (c_b − c_m)/c_b clamped to [−1, 1].
    pub cost: f64,
}

impl Default for ScoreWeights {
    fn default() -> Self {
        ScoreWeights {
            success: 0.4,
            feedback: 0.4,
            cost: 0.2,
        }
    }
}

impl ScoreWeights {
    /// Every weight finite and >= 0, with a positive sum.
    pub fn validate(&self) -> Result<(), String> {
        let all = [self.success, self.feedback, self.cost];
        if all.iter().all(|x| x.is_finite() && *x >= 0.0) && all.iter().sum::<f64>() > 0.0 {
            Ok(())
        } else {
            Err(format!(
                "score weights must be >= 0 with a positive sum, got {}/{}/{}",
                self.success, self.feedback, self.cost
            ))
        }
    }
}

/// Exploration settings of a route.
///
/// Exploration is bounded in *quality* terms: the expected quality the route loses to
/// exploration, counted with an upper confidence bound of each explored model's gap to the
/// baseline, stays within `budget × max_regression` per request, so every window of traffic
/// (exploration and the promoted model together) stays within `max_regression` of the
/// baseline (docs/routing-math.md). `rate` and `max_exploration_share` are hard caps on top.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExplorationConfig {
    /// Largest exploration probability per request (also capped by `max_exploration_share`).
    pub rate: f64,
    /// No longer used: exploration weights follow each candidate's expected saving
    /// (P(within) × cost saving), which orders the search by cost itself. Kept so existing
    /// configurations load.
    pub cost_penalty: f64,
    /// 0 explores the exploration set uniformly; any other value weights it by expected
    /// saving (the default). Kept as a number so existing configurations load.
    pub draws: u32,
    /// No longer used (the weights are computed exactly, not by Monte Carlo). Kept so existing
    /// configurations load.
    pub seed: u64,
    /// Share of `max_regression` that exploration may cost in expected quality (0 disables
    /// exploration; 1 spends the whole limit when the baseline is the exploit pick).
    pub budget: f64,
    /// z of the upper confidence bound on a model's quality gap used to count that cost
    /// (1.0 ≈ the 84% bound).
    pub budget_z: f64,
    /// Production samples the baseline needs before anything is explored (the gaps are
    /// measured against it).
    pub warmup: u64,
    /// Production samples before a candidate can be eliminated (P(within) < 1 − min_confidence).
    pub eliminate_after: u64,
    /// Largest exploration probability while every candidate being explored is *confidently*
    /// no worse than the baseline (gap bound at `trial_z` ≤ 0): such a trial costs no quality,
    /// so it may run above `rate` (still capped by `max_exploration_share`) and settle the
    /// promotion sooner.
    pub trial_rate: f64,
    /// z of the gap bound that admits the `trial_rate` (1.0 ≈ the 84% bound, as `budget_z`;
    /// the promotion gate itself stays at `min_confidence`). Values below `budget_z` act as it.
    pub trial_z: f64,
}

impl Default for ExplorationConfig {
    fn default() -> Self {
        ExplorationConfig {
            rate: 0.3,
            cost_penalty: 0.05,
            draws: 1024,
            seed: 0x6c6f_6f70_6761_7465,
            budget: 1.0,
            budget_z: 1.0,
            warmup: 10,
            eliminate_after: 5,
            trial_rate: 0.5,
            trial_z: 1.0,
        }
    }
}

impl ExplorationConfig {
    /// `rate` and `budget` in [0, 1], `cost_penalty` and `budget_z` >= 0.
    pub fn validate(&self) -> Result<(), String> {
        let unit = |v: f64| v.is_finite() && (0.0..=1.0).contains(&v);
        let nonneg = |v: f64| v.is_finite() && v >= 0.0;
        if unit(self.rate)
            && nonneg(self.cost_penalty)
            && unit(self.budget)
            && nonneg(self.budget_z)
            && unit(self.trial_rate)
            && nonneg(self.trial_z)
        {
            Ok(())
        } else {
            Err(format!(
                "exploration.rate, budget and trial_rate must be in [0, 1], cost_penalty, budget_z and trial_z >= 0, got {}, {}, {}, {}, {} and {}",
                self.rate, self.budget, self.trial_rate, self.cost_penalty, self.budget_z, self.trial_z
            ))
        }
    }
}

/// Promotion hysteresis of a route: leaving the baseline needs `min_confidence`, staying
/// promoted only `demote_confidence`, and another candidate replaces the promoted one only when
/// its score is higher by `switch_margin`. Regressions are caught by the change detector
/// (`[routing.posterior.change]`), not by waiting for the confidence to decay.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromotionConfig {
    /// Confidence P(within max_regression) below which a promoted model is demoted.
    pub demote_confidence: f64,
    /// How fast the promotion level tightens with the samples seen ([`promotion_level`]);
    /// 0 keeps it at `min_confidence` for ever.
    pub look_spending: f64,
    /// Score advantage a challenger needs to replace the promoted model.
    pub switch_margin: f64,
    /// Largest probability per request of serving the baseline instead of a promoted model
    /// whose promotion is not settled, scaled by (1 − confidence) / (1 − `min_confidence`):
    /// after a promotion the baseline is otherwise no longer served, so its estimate — the
    /// reference of every later gate — would stay wherever the comparison left it. Drawn on
    /// the scored requests when they are known; 0 turns it off.
    pub reference_rate: f64,
    /// A candidate's promotion is tested once per this many of its own production samples,
    /// not at every snapshot. The gateway publishes a snapshot per feedback post when feedback
    /// is slow, and every baseline score moves a candidate's confidence, so testing at every
    /// snapshot would make the number of looks — and the chance that a lucky streak promotes a
    /// candidate outside the limit — follow the traffic. On this grid the looks are what
    /// [`promotion_level`] spends over, whatever the refresh rate. 0 tests at every snapshot.
    pub look_every: u64,
    /// Samples over which a candidate must keep passing its promotion tests before it is
    /// promoted: a lucky streak that crosses the level once rarely holds over more samples,
    /// while a candidate truly within the limit gains confidence as samples arrive. 0 promotes
    /// on the first passing test.
    pub confirm_samples: u64,
}

impl Default for PromotionConfig {
    fn default() -> Self {
        PromotionConfig {
            demote_confidence: 0.8,
            switch_margin: 0.02,
            look_spending: 0.5,
            reference_rate: 0.05,
            look_every: 5,
            confirm_samples: 5,
        }
    }
}

impl PromotionConfig {
    /// `demote_confidence` in (0, 1) (used as min(demote_confidence, min_confidence)),
    /// `switch_margin` and `look_spending` >= 0, `reference_rate` in [0, 1].
    pub fn validate(&self, _min_confidence: f64) -> Result<(), String> {
        let d = self.demote_confidence;
        if d.is_finite()
            && d > 0.0
            && d < 1.0
            && self.switch_margin.is_finite()
            && self.switch_margin >= 0.0
            && self.look_spending.is_finite()
            && self.look_spending >= 0.0
            && self.reference_rate.is_finite()
            && (0.0..=1.0).contains(&self.reference_rate)
        {
            Ok(())
        } else {
            Err(format!(
                "promotion.demote_confidence must be in (0, 1), switch_margin and look_spending >= 0, reference_rate in [0, 1], got {d}, {}, {} and {}",
                self.switch_margin, self.look_spending, self.reference_rate
            ))
        }
    }
}

/// One model's inputs for a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInput {
    pub model: Arc<str>,
    pub posterior: Posterior,
    /// Estimated cost of one request (USD), from the catalog and the route's token mix.
    pub cost_per_request: f64,
    pub p95_latency_ms: Option<f64>,
    /// Upstream success rate in [0, 1], if measured.
    pub success_rate: Option<f64>,
    /// Requests this model served on the route over the recent window (the realized
    /// exploration account of the quality budget, docs/routing-math.md §3).
    pub recent_requests: u64,
}

/// A route's inputs for a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteInput {
    pub route: Arc<str>,
    pub mode: Mode,
    pub baseline: ModelInput,
    pub candidates: Vec<ModelInput>,
    pub constraints: Constraints,
    pub weights: ScoreWeights,
    pub exploration: ExplorationConfig,
    /// A pin (issue 6): serve this model, no decision.
    pub pinned: Option<Arc<str>>,
    pub table_version: u64,
}

/// Why a route could not be prepared.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    #[error("route {route}: {source}")]
    Constraints {
        route: String,
        source: super::constraints::ConstraintsError,
    },
    #[error("route {route}: pinned model {model} is neither the baseline nor a candidate")]
    UnknownPin { route: String, model: String },
    #[error("route {route}: {what}")]
    Invalid { route: String, what: String },
}

/// The published score of a model and its parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScoreComponents {
    pub success: f64,
    pub feedback: f64,
    pub cost_saving: f64,
    pub total: f64,
}

/// A model with everything precomputed for the snapshot.
#[derive(Clone, Debug)]
pub struct PreparedModel {
    pub model: Arc<str>,
    pub posterior: Posterior,
    pub stats: CandidateStats,
    /// Gate vs the baseline (for the baseline itself: trivially open).
    pub gate: GateOutcome,
    /// Rows that fail independently of per-request state (all but daily budget and share).
    pub static_failures: KnobSet,
    /// Not confidently below the regression limit or the floor.
    pub explore_quality_ok: bool,
    pub score: ScoreComponents,
    /// Exploration weight of this model (expected saving; 0 outside the exploration set).
    pub ts_prob: f64,
    pub success_rate: Option<f64>,
    /// Upper confidence bound of the quality gap q_baseline − q_model (the exploration cost of
    /// one request on this model; 0 for the baseline).
    pub gap_ub: f64,
    /// Standard deviation of that gap (the bound is mean + `budget_z` × this).
    pub gap_sd: f64,
    /// In the exploration set: alive (not eliminated), cheaper than the exploit pick, not it.
    pub in_explore: bool,
    /// The promoted incumbent, kept by hysteresis (promotable at `demote_confidence`).
    pub retained: bool,
    /// Its promotion tests ([`PromotionConfig::look_every`], `confirm_samples`).
    pub tests: PromotionTests,
    /// Requests served on the route over the recent window ([`ModelInput::recent_requests`]).
    pub recent_requests: u64,
}

impl PreparedModel {
    /// Back to inputs (for re-preparing a route with changed constraints or mode).
    pub fn into_input(self) -> ModelInput {
        ModelInput {
            model: self.model,
            posterior: self.posterior,
            cost_per_request: self.stats.cost_per_request,
            p95_latency_ms: self.stats.p95_latency_ms,
            success_rate: self.success_rate,
            recent_requests: self.recent_requests,
        }
    }

    /// P(within `max_regression` of the baseline) and P(above `min_quality`) together: the
    /// confidence the gate, the hysteresis and the exploration weights judge the model by.
    pub fn within_confidence(&self) -> f64 {
        self.gate.confidence.min(self.stats.floor_confidence)
    }
}

/// A candidate's promotion tests, carried from snapshot to snapshot (§2 of
/// docs/routing-math.md): tested once per `look_every` of its samples, promoted once its tests
/// have kept passing over `confirm_samples`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PromotionTests {
    /// Samples at its last test (`None`: never tested).
    pub last: Option<u64>,
    /// Whether this snapshot tested it (else it is not promotable unless retained).
    pub now: bool,
    /// Samples at the first test of its current run of passing tests (`None`: the last test
    /// failed).
    pub passing_since: Option<u64>,
    /// The run is confirmed: it spans `confirm_samples`, or it began with the model's first
    /// test on evidence, which sees all of it at once (after a restart, all stored feedback).
    pub confirmed: bool,
}

impl PromotionTests {
    /// This snapshot's tests of a candidate with `n` samples whose confidence `passes` the
    /// level, after `before` (its tests in the previous snapshot, if that had evidence for it).
    fn next(before: Option<PromotionTests>, n: u64, passes: bool, p: &PromotionConfig) -> Self {
        // The previous state counts unless the evidence was reset since (change detector).
        let before = before.filter(|b| b.last.is_none_or(|l| l <= n));
        let Some(b) = before else {
            return PromotionTests {
                last: Some(n),
                now: true,
                passing_since: passes.then_some(n),
                confirmed: passes,
            };
        };
        let now = b.last.is_none_or(|l| n >= l.saturating_add(p.look_every));
        if !now {
            return PromotionTests { now: false, ..b };
        }
        let passing_since = passes.then(|| b.passing_since.unwrap_or(n));
        PromotionTests {
            last: Some(n),
            now: true,
            passing_since,
            confirmed: passing_since.is_some_and(|s| {
                (b.confirmed && b.passing_since == Some(s))
                    || n >= s.saturating_add(p.confirm_samples)
            }),
        }
    }

    /// Whether the tests allow a promotion now (a confirmed run is a passing one).
    pub fn promote(&self) -> bool {
        self.now && self.confirmed
    }
}

/// An immutable, precomputed route: what the request path reads.
#[derive(Clone, Debug)]
pub struct PreparedRoute {
    pub route: Arc<str>,
    pub mode: Mode,
    pub table_version: u64,
    pub constraints: Constraints,
    pub weights: ScoreWeights,
    pub exploration: ExplorationConfig,
    /// Index 0 is the baseline.
    pub models: Vec<PreparedModel>,
    pub pinned: Option<usize>,
    /// Model indices by descending score (baseline included): the exploit ranking.
    pub ranking: Vec<usize>,
    pub promotion: PromotionConfig,
    /// The incumbent (previous snapshot's promoted model), if it is still in the route.
    pub incumbent: Option<usize>,
    /// Exploration probability from the quality budget (before per-request caps).
    pub budget_epsilon: f64,
    /// Realized quality cost of the recent window: the mean gap to the baseline of the models
    /// actually served, each at its current posterior mean (`None` below
    /// [`REALIZED_MIN_REQUESTS`] served requests).
    pub realized_gap: Option<f64>,
    /// The exploit pick without per-request state (what the exploration set is built around).
    pub static_exploit: usize,
    /// Whether a session explored on a candidate may stay on it: not once the recent window's
    /// realized gap has used the quality budget (see [`realized_gap`]).
    pub explored_sessions_open: bool,
    /// Probability (before labelling) of serving the baseline instead of a promoted exploit
    /// pick, so the reference every gate compares against keeps moving (0 when the baseline is
    /// the exploit pick or the promotion is settled).
    pub reference_refresh: f64,
}

const DYNAMIC: [Knob; 2] = [Knob::DailyBudget, Knob::MaxExplorationShare];

impl PreparedRoute {
    /// Prepare without a previous snapshot and with the default hysteresis.
    pub fn prepare(input: RouteInput) -> Result<Arc<Self>, RouteError> {
        Self::prepare_with(input, PromotionConfig::default(), None)
    }

    /// Prepare a snapshot. `previous` is the route's previous snapshot: its promoted model is
    /// the incumbent (hysteresis) and its models' last promotion tests set the next ones
    /// ([`PromotionConfig::look_every`]). Without one (a fresh start, which sees all evidence at
    /// once) every candidate is tested.
    pub fn prepare_with(
        input: RouteInput,
        promotion: PromotionConfig,
        previous: Option<&PreparedRoute>,
    ) -> Result<Arc<Self>, RouteError> {
        let incumbent = previous
            .filter(|p| p.static_exploit != 0)
            .map(|p| &*p.models[p.static_exploit].model);
        let route = input.route.to_string();
        if let Err(what) = promotion.validate(input.constraints.min_confidence) {
            return Err(RouteError::Invalid { route, what });
        }
        input
            .constraints
            .validate()
            .map_err(|source| RouteError::Constraints {
                route: route.clone(),
                source,
            })?;
        let w = input.weights;
        if let Err(what) = w.validate() {
            return Err(RouteError::Invalid { route, what });
        }
        let wsum = w.success + w.feedback + w.cost;
        let weights = ScoreWeights {
            success: w.success / wsum,
            feedback: w.feedback / wsum,
            cost: w.cost / wsum,
        };
        let ex = input.exploration;
        if let Err(what) = ex.validate() {
            return Err(RouteError::Invalid { route, what });
        }
        for m in std::iter::once(&input.baseline).chain(&input.candidates) {
            if !(m.cost_per_request.is_finite() && m.cost_per_request >= 0.0) {
                return Err(RouteError::Invalid {
                    route,
                    what: format!("model {}: cost_per_request must be >= 0", m.model),
                });
            }
        }
        let c = &input.constraints;
        let base_in = &input.baseline;
        let base_stats = CandidateStats {
            quality_mean: base_in.posterior.mean(),
            confidence: 1.0,
            floor_confidence: 1.0,
            samples: base_in.posterior.samples,
            cost_per_request: base_in.cost_per_request,
            p95_latency_ms: base_in.p95_latency_ms,
        };
        let base_success = base_in.success_rate.unwrap_or(1.0);
        let mut models = Vec::with_capacity(1 + input.candidates.len());
        for (i, m) in std::iter::once(base_in)
            .chain(&input.candidates)
            .enumerate()
        {
            let is_base = i == 0;
            let g = if is_base {
                GateOutcome {
                    confidence: 1.0,
                    samples: m.posterior.samples,
                    score_gap: 0.0,
                    gap_variance: 0.0,
                    passed: true,
                    miss: None,
                }
            } else {
                gate(
                    &m.posterior,
                    &base_in.posterior,
                    c.max_regression,
                    c.min_confidence,
                    c.min_samples,
                )
            };
            let floor_confidence = c
                .min_quality
                .map_or(1.0, |f| confidence_above(m.posterior.params(), f));
            let stats = CandidateStats {
                quality_mean: m.posterior.mean(),
                confidence: g.confidence,
                floor_confidence,
                samples: m.posterior.samples,
                cost_per_request: m.cost_per_request,
                p95_latency_ms: m.p95_latency_ms,
            };
            let mut static_failures = KnobSet::default();
            let mut tests = PromotionTests::default();
            if !is_base {
                for k in Knob::ALL {
                    if DYNAMIC.contains(&k) {
                        continue;
                    }
                    if !c.check(k, &stats, &base_stats, 0.0, 0.0).passed {
                        static_failures.insert(k);
                    }
                }
                let conf = stats.confidence.min(stats.floor_confidence);
                let n = m.posterior.samples;
                let passes = conf
                    >= promotion_level(c.min_confidence, n, c.min_samples, promotion.look_spending);
                // Its tests in the previous snapshot, if that one had evidence for it: without
                // any (a fresh start, a new candidate, the table before the first fold) this is
                // its first test on evidence.
                let before = previous
                    .and_then(|p| p.models.iter().find(|pm| pm.model == m.model))
                    .filter(|pm| pm.posterior.samples > 0)
                    .map(|pm| pm.tests);
                tests = PromotionTests::next(before, n, passes, &promotion);
                if !tests.promote() {
                    static_failures.insert(Knob::MinConfidence);
                }
            }
            let low = 1.0 - c.min_confidence;
            // Successive elimination: a candidate whose P(within) fell below 1 − min_confidence
            // is dropped from exploration. Only production evidence can eliminate: on benchmark
            // priors alone a candidate the priors undersell would never get the data to prove
            // them wrong.
            //
            // The test is repeated at every snapshot as samples arrive, so a fixed level would
            // eliminate a good candidate on early noise with probability far above 1 −
            // min_confidence. The level is spent over sample counts instead (α_n = α·6/(π²n²),
            // Σα_n = α): a candidate within the limit is eliminated with probability ≤ α over
            // its whole life, whatever the number of looks (docs/routing-math.md).
            let low_n = anytime_level(low, m.posterior.samples);
            let explore_quality_ok = (g.confidence >= low_n && floor_confidence >= low_n)
                || m.posterior.samples < ex.eliminate_after;
            let gap_sd = if is_base {
                0.0
            } else {
                (m.posterior.variance() + base_in.posterior.variance()).sqrt()
            };
            let gap_ub = if is_base {
                0.0
            } else {
                base_in.posterior.mean() - m.posterior.mean() + ex.budget_z * gap_sd
            };
            let success = m.success_rate.unwrap_or(base_success).clamp(0.0, 1.0);
            let cost_saving = if is_base || base_in.cost_per_request <= 0.0 {
                0.0
            } else {
                ((base_in.cost_per_request - m.cost_per_request) / base_in.cost_per_request)
                    .clamp(-1.0, 1.0)
            };
            let feedback = stats.quality_mean;
            let total = weights.success * success
                + weights.feedback * feedback
                + weights.cost * cost_saving;
            models.push(PreparedModel {
                model: m.model.clone(),
                posterior: m.posterior,
                stats,
                gate: g,
                static_failures,
                explore_quality_ok,
                score: ScoreComponents {
                    success,
                    feedback,
                    cost_saving,
                    total,
                },
                ts_prob: 0.0,
                success_rate: m.success_rate,
                gap_ub,
                gap_sd,
                in_explore: false,
                retained: false,
                tests,
                recent_requests: m.recent_requests,
            });
        }
        let pinned = match &input.pinned {
            None => None,
            Some(p) => Some(models.iter().position(|m| m.model == *p).ok_or_else(|| {
                RouteError::UnknownPin {
                    route: route.clone(),
                    model: p.to_string(),
                }
            })?),
        };
        let mut ranking: Vec<usize> = (0..models.len()).collect();
        // Ties keep the baseline (index 0) first: leaving it needs a strictly better score.
        ranking.sort_by(|a, b| {
            models[*b]
                .score
                .total
                .total_cmp(&models[*a].score.total)
                .then(a.cmp(b))
        });
        // Hysteresis: the incumbent stays promotable down to `demote_confidence`.
        let c_min_conf = input.constraints.min_confidence;
        let incumbent = incumbent.and_then(|name| {
            models
                .iter()
                .position(|m| &*m.model == name)
                .filter(|&i| i != 0)
        });
        if let Some(i) = incumbent {
            let m = &mut models[i];
            let mut f = m.static_failures;
            f.remove(Knob::MinConfidence);
            let demote = promotion.demote_confidence.min(c_min_conf);
            m.retained = !f.blocks(Action::Promote) && m.within_confidence() >= demote;
        }
        let mut route = PreparedRoute {
            route: input.route,
            mode: input.mode,
            table_version: input.table_version,
            constraints: input.constraints,
            weights,
            exploration: ex,
            models,
            pinned,
            ranking,
            promotion,
            incumbent,
            budget_epsilon: 0.0,
            realized_gap: None,
            static_exploit: 0,
            explored_sessions_open: true,
            reference_refresh: 0.0,
        };
        let e = route.exploit(&RequestContext::default());
        route.static_exploit = e;
        // The exploration set: alive candidates cheaper than the exploit pick (a dearer one
        // cannot save anything over it), after the baseline's warm-up.
        // Shadow mode serves the baseline whatever is picked: exploring costs no quality there,
        // so neither the warm-up nor the budget applies (only the caps).
        let shadow = route.mode == Mode::Shadow;
        let warm = shadow || route.models[0].posterior.samples >= ex.warmup;
        let e_cost = route.models[e].stats.cost_per_request;
        for (i, m) in route.models.iter_mut().enumerate().skip(1) {
            let cheaper = e == 0 || m.stats.cost_per_request < e_cost;
            m.in_explore = warm
                && i != e
                && cheaper
                && m.explore_quality_ok
                && !m.static_failures.blocks(Action::Explore);
        }
        exploration_weights(&mut route.models, &ex, e);
        route.realized_gap = realized_gap(&route.models);
        route.budget_epsilon = budget_epsilon(&route);
        if route.mode == Mode::Live && e != 0 {
            // The promotion's reference keeps moving while the promotion is not settled.
            let conf = route.models[e].within_confidence();
            let unsettled =
                ((1.0 - conf) / (1.0 - route.constraints.min_confidence).max(1e-9)).clamp(0.0, 1.0);
            route.reference_refresh = route.promotion.reference_rate * unsettled;
        }
        // An explored session stays on its candidate only while the recent window has spent
        // at most half the quality budget (where the realized account starts to slow new
        // exploration): past that, sessions already on a candidate would keep spending after
        // new exploration stopped, and one long session can carry a window below the floor.
        route.explored_sessions_open = route.mode == Mode::Shadow
            || realized_throttle(route.realized_gap, route.quality_budget()) >= 1.0;
        Ok(Arc::new(route))
    }

    pub fn baseline(&self) -> &PreparedModel {
        &self.models[0]
    }

    /// The expected quality exploration may cost per request: `exploration.budget` ×
    /// `max_regression`.
    pub fn quality_budget(&self) -> f64 {
        self.exploration.budget * self.constraints.max_regression
    }

    pub fn index_of(&self, model: &str) -> Option<usize> {
        self.models.iter().position(|m| &*m.model == model)
    }

    /// All failed rows of model `i` under the request state (baseline: none).
    pub fn failures(&self, i: usize, ctx: &RequestContext<'_>) -> KnobSet {
        if i == 0 {
            return KnobSet::default();
        }
        let m = &self.models[i];
        let mut f = m.static_failures;
        let c = &self.constraints;
        if c.daily_budget
            .is_some_and(|b| ctx.spend_today + m.stats.cost_per_request > b)
        {
            f.insert(Knob::DailyBudget);
        }
        if ctx.exploration_share >= c.max_exploration_share {
            f.insert(Knob::MaxExplorationShare);
        }
        f
    }

    pub fn promotable(&self, i: usize, ctx: &RequestContext<'_>) -> bool {
        if i == 0 {
            return false;
        }
        let mut f = self.failures(i, ctx);
        if self.models[i].retained {
            f.remove(Knob::MinConfidence);
        }
        !f.blocks(Action::Promote)
    }

    pub fn explorable(&self, i: usize, ctx: &RequestContext<'_>) -> bool {
        i != 0
            && self.models[i].in_explore
            && self.models[i].explore_quality_ok
            && !self.failures(i, ctx).blocks(Action::Explore)
    }

    /// The exploit pick: the best score among the baseline and promotable candidates; the
    /// incumbent keeps it unless that best beats it by `switch_margin`.
    pub fn exploit(&self, ctx: &RequestContext<'_>) -> usize {
        let best = self
            .ranking
            .iter()
            .copied()
            .find(|&i| i == 0 || self.promotable(i, ctx))
            .unwrap_or(0);
        match self.incumbent {
            Some(inc) if inc != best && self.promotable(inc, ctx) => {
                let lead = self.models[best].score.total - self.models[inc].score.total;
                if lead > self.promotion.switch_margin {
                    best
                } else {
                    inc
                }
            }
            _ => best,
        }
    }

    /// This request's probabilities of (exploring a candidate, refreshing the reference): the
    /// snapshot's budgeted exploration rate and its reference refresh, drawn together on the
    /// scored requests when those are known ([`Labelling`]), each keeping its share.
    pub fn draw_split(&self, ctx: &RequestContext<'_>) -> (f64, f64) {
        self.draw_split_at(ctx, self.exploit(ctx))
    }

    /// [`Self::draw_split`] with the request's exploit pick `e` already known.
    fn draw_split_at(&self, ctx: &RequestContext<'_>, e: usize) -> (f64, f64) {
        let c = &self.constraints;
        if ctx.exploration_share >= c.max_exploration_share {
            return (0.0, 0.0);
        }
        let (z, any) = self.ts_mass(ctx);
        let explore = if any && z > 0.0 {
            self.budget_epsilon
        } else {
            0.0
        };
        let refresh = if self.reference_refresh > 0.0 && e != 0 && e == self.static_exploit {
            self.reference_refresh
        } else {
            0.0
        };
        let total = explore + refresh;
        if total <= 0.0 {
            return (0.0, 0.0);
        }
        let p = ctx.labelling.exploration_probability(total);
        (p * explore / total, p * refresh / total)
    }

    /// The policy's probability of picking model `i` (without a session hint).
    pub fn probability(&self, i: usize, ctx: &RequestContext<'_>) -> f64 {
        let e = self.exploit(ctx);
        let (eps, refresh) = self.draw_split_at(ctx, e);
        let (z, _) = self.ts_mass_excluding(ctx, e);
        if i == 0 && e != 0 {
            return refresh;
        }
        let exploit = if i == e { 1.0 - eps - refresh } else { 0.0 };
        let explore = if eps > 0.0 && z > 0.0 && i != e && self.explorable(i, ctx) {
            eps * self.models[i].ts_prob / z
        } else {
            0.0
        };
        // No explorable model left once the exploit pick is excluded: ε folds back into it.
        if eps > 0.0 && z <= 0.0 && i == e {
            return 1.0 - refresh;
        }
        exploit + explore
    }

    /// Σ ts over the explorable candidates, and whether any is explorable.
    fn ts_mass(&self, ctx: &RequestContext<'_>) -> (f64, bool) {
        self.ts_mass_excluding(ctx, usize::MAX)
    }

    fn ts_mass_excluding(&self, ctx: &RequestContext<'_>, skip: usize) -> (f64, bool) {
        let mut z = 0.0;
        let mut any = false;
        for i in 1..self.models.len() {
            if i != skip && self.explorable(i, ctx) && self.models[i].ts_prob > 0.0 {
                z += self.models[i].ts_prob;
                any = true;
            }
        }
        (z, any)
    }
}

/// The largest ε whose expected quality cost stays within the budget:
/// (1 − ε)·g_e + ε·Σ ts_m·g_m ≤ budget × max_regression, with g the upper confidence bound of
/// each model's gap to the baseline (g_e = 0 when the baseline is the exploit pick). A promoted
/// model that already uses the budget leaves nothing for exploration; exploring models that
/// are confidently better than the exploit pick costs nothing and runs at the cap.
fn budget_epsilon(r: &PreparedRoute) -> f64 {
    let ex = &r.exploration;
    let cap = ex.rate.min(r.constraints.max_exploration_share);
    let e = r.static_exploit;
    let mass: f64 = r
        .models
        .iter()
        .filter(|m| m.in_explore)
        .map(|m| m.ts_prob)
        .sum();
    if cap <= 0.0 || mass <= 0.0 {
        return 0.0;
    }
    let g_bar: f64 = r
        .models
        .iter()
        .filter(|m| m.in_explore)
        .map(|m| m.ts_prob / mass * m.gap_ub)
        .sum();
    let g_e = if e == 0 { 0.0 } else { r.models[e].gap_ub };
    let budget = r.quality_budget();
    let budget = budget * realized_throttle(r.realized_gap, budget);
    // Shadow exploration serves the baseline: it costs no quality, so it runs at the cap.
    if r.mode == Mode::Shadow {
        return cap;
    }
    // The weights sum to how likely exploring is to pay off (`mass`): exploration fades as the
    // evidence settles the question, instead of running at the cap for ever.
    let cap = cap.min(mass);
    if g_bar <= g_e {
        return cap.max(trial_cap(r, mass));
    }
    ((budget - g_e) / (g_bar - g_e)).clamp(0.0, cap)
}

/// The exploration cap of a trial: `trial_rate` (within `max_exploration_share` and the weight
/// mass) when the baseline is the exploit pick and exploration, weighted as it is drawn, is no
/// worse than it at the stricter `trial_z` bound; otherwise 0 (the ordinary cap applies).
fn trial_cap(r: &PreparedRoute, mass: f64) -> f64 {
    let ex = &r.exploration;
    if r.static_exploit != 0 {
        return 0.0;
    }
    let strict: f64 = r
        .models
        .iter()
        .filter(|m| m.in_explore)
        .map(|m| m.ts_prob / mass * (m.gap_ub + (ex.trial_z - ex.budget_z) * m.gap_sd))
        .sum();
    if strict <= 0.0 {
        ex.trial_rate
            .min(r.constraints.max_exploration_share)
            .min(mass)
    } else {
        0.0
    }
}

/// The confidence a promotion needs at `samples` production samples. The gate is re-tested at
/// every snapshot as samples arrive; at a fixed level a candidate just outside the limit is
/// eventually promoted by a lucky streak far more often than 1 − `min_confidence`. The level
/// therefore tightens slowly with the samples seen (a logarithmic spending of the error over
/// looks): α_n = α / (1 + s·ln(n / min_samples)), α = 1 − `min_confidence`, s =
/// `promotion.look_spending`. Early, decisive evidence is judged at `min_confidence` itself.
pub fn promotion_level(min_confidence: f64, samples: u64, min_samples: u64, spending: f64) -> f64 {
    let n0 = min_samples.max(1) as f64;
    let n = (samples as f64).max(n0);
    1.0 - (1.0 - min_confidence) / (1.0 + spending * (n / n0).ln())
}

/// Served requests in the recent window before the realized account is trusted.
pub const REALIZED_MIN_REQUESTS: u64 = 20;

/// The mean gap to the baseline of what the route actually served over the recent window,
/// each model at its *current* posterior mean: what the last window's exploration turned out
/// to cost, as far as the evidence now tells. The planned cost of [`budget_epsilon`] uses each
/// candidate's gap bound at the time it is explored; with many candidates the best-looking one
/// is usually lucky (the winner's curse), so its bound is too low exactly when most of the
/// exploration goes to it. This account re-prices past exploration as evidence arrives.
fn realized_gap(models: &[PreparedModel]) -> Option<f64> {
    let served: u64 = models.iter().map(|m| m.recent_requests).sum();
    if served < REALIZED_MIN_REQUESTS {
        return None;
    }
    let base = models[0].posterior.mean();
    let cost: f64 = models
        .iter()
        .skip(1)
        .map(|m| m.recent_requests as f64 * (base - m.posterior.mean()))
        .sum();
    Some(cost / served as f64)
}

/// Share of the quality budget left to plan with, from the realized account: the whole budget
/// while the recent window spent at most half of it, nothing once it spent all of it, linear in
/// between. A window that overspent (a lucky candidate that was not) thereby pays back before
/// exploring more, so the windowed quality stays above the floor; a window that served better
/// models (negative realized gap) leaves the full budget.
fn realized_throttle(realized_gap: Option<f64>, budget: f64) -> f64 {
    match realized_gap {
        Some(g) if budget > 0.0 => (2.0 * (1.0 - g / budget)).clamp(0.0, 1.0),
        _ => 1.0,
    }
}

/// The per-look level of a test repeated as samples arrive: α·6/(π²·n²) at n samples, so the
/// levels over every n sum to α (a union bound over looks; anytime-valid).
pub fn anytime_level(alpha: f64, samples: u64) -> f64 {
    let n = samples.max(1) as f64;
    alpha * 6.0 / (std::f64::consts::PI * std::f64::consts::PI * n * n)
}

/// Exploration weights of the exploration set (`ts_prob`); their sum (at most 1) is how much
/// exploring can still change the decision.
///
/// The value of exploring model m is what it would save if it turned out promotable:
/// P(m within `max_regression`) × (cost of the exploit pick − cost of m) / baseline cost.
/// Weights are that value raised to `FOCUS` and normalised, so exploration concentrates on
/// the candidate most likely to pay off (a cheap model that is probably good) instead of
/// spreading over every alive candidate or chasing the cheapest model whose gap is too close to
/// call in the traffic at hand: once that candidate is promoted, the exploration set shrinks to
/// the models cheaper than it, so the search walks down the cost ladder. Each share is then
/// scaled by the model's own P(within), so exploration fades as the evidence rules candidates
/// out, and a doubtful candidate left alone in the set does not inherit the whole rate
/// (docs/routing-math.md). `draws = 0`: uniform over the set (no weighting).
fn exploration_weights(models: &mut [PreparedModel], ex: &ExplorationConfig, exploit: usize) {
    for m in models.iter_mut() {
        m.ts_prob = 0.0;
    }
    let n_eligible = models.iter().skip(1).filter(|m| m.in_explore).count();
    if n_eligible == 0 {
        return;
    }
    if ex.draws == 0 {
        let p = 1.0 / n_eligible as f64;
        for m in models.iter_mut().skip(1).filter(|m| m.in_explore) {
            m.ts_prob = p;
        }
        return;
    }
    let base_cost = models[0].stats.cost_per_request;
    let e_cost = models[exploit].stats.cost_per_request;
    let within = |m: &PreparedModel| m.within_confidence().clamp(0.0, 1.0);
    let mut sum = 0.0;
    for m in models.iter_mut().skip(1).filter(|m| m.in_explore) {
        let saving = if base_cost > 0.0 {
            ((e_cost - m.stats.cost_per_request) / base_cost).clamp(0.0, 1.0)
        } else {
            1.0
        };
        // A floor keeps a model with no estimated saving (free baseline) explorable.
        let v = (within(m) * saving.max(1e-3)).powi(FOCUS);
        m.ts_prob = v;
        sum += v;
    }
    for m in models.iter_mut().skip(1).filter(|m| m.in_explore) {
        let share = if sum > 0.0 {
            m.ts_prob / sum
        } else {
            1.0 / n_eligible as f64
        };
        m.ts_prob = within(m) * share;
    }
}

/// How sharply exploration concentrates on the most valuable candidate (see
/// [`exploration_weights`]): with 4, a candidate worth half the best one gets 1/16 of its share.
const FOCUS: i32 = 4;

/// What is known before routing about whether this request will get a per-request score.
///
/// Exploration produces evidence only where a score arrives. When the scored requests are known
/// in advance (the gateway's own judge samples by request id; a client can announce its own
/// judge's sample with the `loopgate-feedback-expected` header), exploration is drawn on them:
/// the explored share of all traffic, and so its quality cost, is unchanged, but every explored
/// request is scored instead of one in 1/share (docs/routing-math.md, "Labelled exploration").
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "known", rename_all = "snake_case")]
pub enum Labelling {
    /// Not known: exploration draws on every request alike.
    #[default]
    Unknown,
    /// The request will be scored; `share` is the route's share of scored requests.
    Scored { share: f64 },
    /// The request will not be scored; `share` as above.
    Unscored { share: f64 },
}

impl Labelling {
    pub fn is_unknown(&self) -> bool {
        matches!(self, Labelling::Unknown)
    }

    /// From a scored flag and the share of scored requests (`share` outside (0, 1]: unknown).
    pub fn from_share(scored: bool, share: f64) -> Labelling {
        if !(share > 0.0 && share <= 1.0) {
            Labelling::Unknown
        } else if scored {
            Labelling::Scored { share }
        } else {
            Labelling::Unscored { share }
        }
    }

    /// This request's exploration probability for a route-level rate `eps`: concentrated on
    /// the scored requests, so that share·p(scored) + (1 − share)·p(unscored) = eps. Above
    /// the scored share every scored request explores and the rest spills evenly onto the
    /// others.
    pub fn exploration_probability(&self, eps: f64) -> f64 {
        let eps = eps.clamp(0.0, 1.0);
        match *self {
            Labelling::Unknown => eps,
            Labelling::Scored { share } => (eps / share).min(1.0),
            Labelling::Unscored { share } => {
                if eps <= share || share >= 1.0 {
                    0.0
                } else {
                    ((eps - share) / (1.0 - share)).clamp(0.0, 1.0)
                }
            }
        }
    }
}

/// Per-request state the decision depends on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct RequestContext<'a> {
    /// Router-chosen spend on this route today (USD), for `daily_budget`.
    pub spend_today: f64,
    /// Share of this route's recent served traffic that was exploration.
    pub exploration_share: f64,
    /// The model this request's session was last served, if any.
    pub sticky: Option<&'a str>,
    /// A uniform random number in [0, 1) drawn by the caller.
    pub rng: f64,
    /// Whether this request will be scored, when known before routing.
    pub labelling: Labelling,
}

/// How the pick was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PickKind {
    /// Mode `off`.
    Off,
    /// A pin.
    Pinned,
    /// The baseline is the exploit pick (no candidate passed, or none scored higher).
    Baseline,
    /// A candidate passed every promotion row and scored best.
    Promoted,
    /// Exploration picked a model other than the exploit pick.
    Explored,
    /// The session's previous model, still allowed.
    Sticky,
    /// Kept on the baseline as the rollback monitor's reference (live routes).
    Holdback,
    /// Assigned by a running canary experiment (served: its arm's model).
    Canary,
}

impl PickKind {
    /// The serialised name (a metric label and index column on every routed request, so
    /// without going through serde).
    pub const fn as_str(self) -> &'static str {
        match self {
            PickKind::Off => "off",
            PickKind::Pinned => "pinned",
            PickKind::Baseline => "baseline",
            PickKind::Promoted => "promoted",
            PickKind::Explored => "explored",
            PickKind::Sticky => "sticky",
            PickKind::Holdback => "holdback",
            PickKind::Canary => "canary",
        }
    }
}

/// Why a served model differs from the policy's pick, or why a session hint was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Miss {
    /// The session hint names a model that is no longer allowed (or unknown).
    StickyHintDropped,
    /// The chosen candidate's provider failed; the baseline was served.
    ProviderError,
}

/// A routing decision. Cheap: one `Arc` clone plus a few numbers.
#[derive(Clone, Debug)]
pub struct Decision {
    pub route: Arc<PreparedRoute>,
    /// The policy's pick (index into `route.models`).
    pub chosen: usize,
    /// What is served (the baseline in shadow mode or after a provider error).
    pub served: usize,
    pub kind: PickKind,
    /// Probability that the policy picks `chosen` in this context.
    pub propensity: f64,
    /// Exploration probability used.
    pub epsilon: f64,
    /// The exploit pick in this context.
    pub exploit: usize,
    pub misses: [Option<Miss>; 2],
    /// Per-request state, kept so the trace can be rendered later.
    pub spend_today: f64,
    pub exploration_share: f64,
    pub sticky_model: Option<usize>,
    pub labelling: Labelling,
}

impl Decision {
    pub fn served_model(&self) -> &str {
        &self.route.models[self.served].model
    }
    pub fn chosen_model(&self) -> &str {
        &self.route.models[self.chosen].model
    }
    /// In shadow mode: what would have been served.
    pub fn would_have(&self) -> Option<&str> {
        (self.route.mode == Mode::Shadow).then(|| self.chosen_model())
    }
    pub fn is_exploration(&self) -> bool {
        self.kind == PickKind::Explored
    }
    /// Whether this request is exploration *traffic*: an explored pick, or a session held on a
    /// candidate that is not the exploit pick (the rest of an explored session). This is what
    /// `max_exploration_share` counts; counting only the explored first requests undercounted
    /// the share by the mean session length.
    pub fn explores(&self) -> bool {
        match self.kind {
            PickKind::Explored => true,
            PickKind::Sticky => self.chosen != self.exploit && self.chosen != 0,
            _ => false,
        }
    }
    /// A reference refresh: the baseline served instead of a promoted exploit pick, to keep
    /// the promotion's reference current (the only exploration that picks the baseline).
    pub fn is_reference_refresh(&self) -> bool {
        self.kind == PickKind::Explored && self.chosen == 0
    }
    /// The model the session should stay on: the pick, except after a reference refresh,
    /// which does not hold the session on the baseline.
    pub fn session_model(&self) -> usize {
        if self.is_reference_refresh() {
            self.exploit
        } else {
            self.chosen
        }
    }
    /// The chosen candidate's provider failed: serve the baseline and record the miss.
    pub fn provider_error(mut self) -> Self {
        self.served = 0;
        self.misses[1] = Some(Miss::ProviderError);
        self
    }
    pub(crate) fn context(&self) -> RequestContext<'static> {
        RequestContext {
            spend_today: self.spend_today,
            exploration_share: self.exploration_share,
            sticky: None,
            rng: 0.0,
            labelling: self.labelling,
        }
    }
}

/// Decide for one request. Pure: the same snapshot and context give the same decision.
pub fn decide(route: &Arc<PreparedRoute>, ctx: &RequestContext<'_>) -> Decision {
    let mut d = Decision {
        route: Arc::clone(route),
        chosen: 0,
        served: 0,
        kind: PickKind::Baseline,
        propensity: 1.0,
        epsilon: 0.0,
        exploit: 0,
        misses: [None, None],
        spend_today: ctx.spend_today,
        exploration_share: ctx.exploration_share,
        sticky_model: None,
        labelling: ctx.labelling,
    };
    if route.mode == Mode::Off {
        d.kind = PickKind::Off;
        return d;
    }
    if let Some(p) = route.pinned {
        d.chosen = p;
        d.served = p;
        d.kind = PickKind::Pinned;
        return d;
    }
    let e = route.exploit(ctx);
    d.exploit = e;
    if let Some(hint) = ctx.sticky {
        match route.index_of(hint) {
            Some(i)
                if i == 0
                    || i == e
                    || route.promotable(i, ctx)
                    || (route.explorable(i, ctx) && route.explored_sessions_open) =>
            {
                d.sticky_model = Some(i);
                d.chosen = i;
                d.kind = PickKind::Sticky;
                d.served = if route.mode == Mode::Live { i } else { 0 };
                if i == e && e != 0 {
                    // Most traffic continues a session: a reference refresh drawn only on
                    // sessions' first requests would run at a fraction of its rate.
                    let (_, refresh) = route.draw_split_at(ctx, e);
                    if refresh > 0.0 {
                        if ctx.rng.clamp(0.0, 1.0) < refresh {
                            d.chosen = 0;
                            d.served = 0;
                            d.kind = PickKind::Explored;
                            d.epsilon = refresh;
                            d.propensity = refresh;
                        } else {
                            d.propensity = 1.0 - refresh;
                        }
                    }
                }
                return d;
            }
            _ => d.misses[0] = Some(Miss::StickyHintDropped),
        }
    }
    let (eps, refresh) = route.draw_split_at(ctx, e);
    d.epsilon = eps + refresh;
    let mut chosen = e;
    let u = ctx.rng.clamp(0.0, 1.0);
    if refresh > 0.0 && u >= eps && u < eps + refresh {
        // A reference refresh: the baseline, so the promotion's reference keeps moving.
        chosen = 0;
    } else if eps > 0.0 && u < eps {
        // Reuse the same uniform for the exploration draw: u/ε is uniform on [0, 1).
        let (z, _) = route.ts_mass_excluding(ctx, e);
        if z > 0.0 {
            let target = u / eps * z;
            let mut acc = 0.0;
            for i in 1..route.models.len() {
                if i != e && route.explorable(i, ctx) {
                    let p = route.models[i].ts_prob;
                    if p <= 0.0 {
                        continue;
                    }
                    // Rounding may leave target ≥ Σ: the last positive entry then wins.
                    chosen = i;
                    acc += p;
                    if target < acc {
                        break;
                    }
                }
            }
        }
    }
    d.chosen = chosen;
    d.propensity = route.probability(chosen, ctx);
    d.kind = if chosen != e {
        PickKind::Explored
    } else if chosen == 0 {
        PickKind::Baseline
    } else {
        PickKind::Promoted
    };
    d.served = if route.mode == Mode::Live { chosen } else { 0 };
    d
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::feedback::posterior::{Observation, PosteriorConfig, PosteriorState, Signal};
    use proptest::prelude::*;

    /// A posterior from `n` feedback observations with `k` successes.
    pub(crate) fn post(k: u64, n: u64) -> Posterior {
        let cfg = PosteriorConfig::default();
        let mut s = PosteriorState::new();
        let ids: Vec<String> = (0..n).map(|i| format!("o{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            // Successes spread evenly: a block of failures at the end would be a change the
            // change detector (rightly) acts on.
            let i = i as u64;
            let v = if (i + 1) * k / n > i * k / n {
                1.0
            } else {
                0.0
            };
            s.fold(
                &Observation {
                    id,
                    at_ms: 0,
                    signal: Signal::Feedback,
                    value: v,
                    weight: 1.0,
                },
                &cfg,
            )
            .unwrap();
        }
        s.posterior(None, &cfg)
    }

    pub(crate) fn model(name: &str, p: Posterior, cost: f64) -> ModelInput {
        ModelInput {
            model: Arc::from(name),
            posterior: p,
            cost_per_request: cost,
            p95_latency_ms: Some(800.0),
            success_rate: Some(0.995),
            recent_requests: 0,
        }
    }

    /// A live route: baseline 90% over 2000, a cheap equal model, a cheap worse model, a new one.
    pub(crate) fn sample_route(mode: Mode) -> Arc<PreparedRoute> {
        PreparedRoute::prepare(RouteInput {
            route: Arc::from("support"),
            mode,
            baseline: model("gpt-4o", post(1800, 2000), 0.01),
            candidates: vec![
                model("gpt-4o-mini", post(1810, 2000), 0.0006),
                model("cheap-bad", post(1500, 2000), 0.0002),
                model("newcomer", post(9, 10), 0.001),
            ],
            constraints: Constraints::default(),
            weights: ScoreWeights::default(),
            exploration: ExplorationConfig::default(),
            pinned: None,
            table_version: 7,
        })
        .unwrap()
    }

    #[test]
    fn pick_kind_names_are_the_serialised_ones() {
        for k in [
            PickKind::Off,
            PickKind::Pinned,
            PickKind::Baseline,
            PickKind::Promoted,
            PickKind::Explored,
            PickKind::Sticky,
            PickKind::Holdback,
            PickKind::Canary,
        ] {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }

    #[test]
    fn promotes_the_cheap_equal_model_and_never_the_bad_one() {
        let r = sample_route(Mode::Live);
        let ctx = RequestContext {
            rng: 0.99,
            ..Default::default()
        };
        let d = decide(&r, &ctx);
        assert_eq!(d.chosen_model(), "gpt-4o-mini");
        assert_eq!(d.kind, PickKind::Promoted);
        assert_eq!(d.served_model(), "gpt-4o-mini");
        assert!((d.propensity - r.probability(d.chosen, &ctx)).abs() < 1e-15);
        assert!(d.propensity >= 1.0 - d.epsilon);
        let bad = r.index_of("cheap-bad").unwrap();
        assert!(
            !r.explorable(bad, &ctx),
            "confidently worse models are not explored"
        );
        // Sum of probabilities over actions is 1.
        let total: f64 = (0..r.models.len()).map(|i| r.probability(i, &ctx)).sum();
        assert!((total - 1.0).abs() < 1e-12, "{total}");
        // Every rng value yields an allowed pick; exploration happens below ε only.
        for k in 0..1000 {
            let ctx = RequestContext {
                rng: k as f64 / 1000.0,
                ..Default::default()
            };
            let d = decide(&r, &ctx);
            assert_ne!(d.chosen, bad);
            assert!(d.propensity > 0.0);
            if ctx.rng >= d.epsilon {
                assert_eq!(d.chosen, d.exploit);
            }
        }
    }

    #[test]
    fn shadow_serves_the_baseline_and_records_would_have() {
        let r = sample_route(Mode::Shadow);
        let d = decide(
            &r,
            &RequestContext {
                rng: 0.5,
                ..Default::default()
            },
        );
        assert_eq!(d.served_model(), "gpt-4o");
        assert_eq!(d.would_have(), Some("gpt-4o-mini"));
    }

    #[test]
    fn off_pin_budget_sticky_and_provider_error() {
        let r = sample_route(Mode::Off);
        let d = decide(&r, &RequestContext::default());
        assert_eq!((d.kind, d.served_model()), (PickKind::Off, "gpt-4o"));

        let mut input_pin = RouteInput {
            route: Arc::from("x"),
            mode: Mode::Live,
            baseline: model("a", post(90, 100), 1.0),
            candidates: vec![model("b", post(90, 100), 0.5)],
            constraints: Constraints::default(),
            weights: ScoreWeights::default(),
            exploration: ExplorationConfig::default(),
            pinned: Some(Arc::from("b")),
            table_version: 1,
        };
        let r = PreparedRoute::prepare(input_pin.clone()).unwrap();
        assert_eq!(
            decide(&r, &RequestContext::default()).kind,
            PickKind::Pinned
        );
        input_pin.pinned = Some(Arc::from("zzz"));
        assert!(matches!(
            PreparedRoute::prepare(input_pin),
            Err(RouteError::UnknownPin { .. })
        ));

        // Daily budget exhausted: the cheap model is filtered, the baseline served.
        let mut c = Constraints {
            daily_budget: Some(5.0),
            ..Constraints::default()
        };
        c.max_exploration_share = 0.05;
        let r = PreparedRoute::prepare(RouteInput {
            constraints: c,
            ..RouteInput {
                route: Arc::from("support"),
                mode: Mode::Live,
                baseline: model("gpt-4o", post(1800, 2000), 0.01),
                candidates: vec![model("gpt-4o-mini", post(1795, 2000), 0.0006)],
                constraints: Constraints::default(),
                weights: ScoreWeights::default(),
                exploration: ExplorationConfig::default(),
                pinned: None,
                table_version: 1,
            }
        })
        .unwrap();
        let d = decide(
            &r,
            &RequestContext {
                spend_today: 5.0,
                rng: 0.9,
                ..Default::default()
            },
        );
        assert_eq!(d.served_model(), "gpt-4o");
        assert!(r.failures(1, &d.context()).contains(Knob::DailyBudget));

        // Sticky: a session stays on its allowed model with propensity 1; bad hints are dropped.
        let r = sample_route(Mode::Live);
        let d = decide(
            &r,
            &RequestContext {
                sticky: Some("gpt-4o"),
                rng: 0.9,
                ..Default::default()
            },
        );
        assert_eq!(
            (d.kind, d.served_model(), d.propensity),
            (PickKind::Sticky, "gpt-4o", 1.0)
        );
        let d = decide(
            &r,
            &RequestContext {
                sticky: Some("cheap-bad"),
                rng: 0.9,
                ..Default::default()
            },
        );
        assert_eq!(d.misses[0], Some(Miss::StickyHintDropped));
        assert_ne!(d.chosen_model(), "cheap-bad");
        let d = decide(
            &r,
            &RequestContext {
                rng: 0.9,
                ..Default::default()
            },
        )
        .provider_error();
        assert_eq!(d.served_model(), "gpt-4o");
        assert_eq!(d.misses[1], Some(Miss::ProviderError));
    }

    /// Baseline at 0.6 over 300 samples; candidates with the given (successes, samples, cost).
    fn budget_route(
        cands: &[(&str, u64, u64, f64)],
        incumbent: Option<&str>,
    ) -> Arc<PreparedRoute> {
        served_route(cands, incumbent, &[])
    }

    /// [`budget_route`] with the requests each model served over the recent window (baseline
    /// first; missing entries are 0).
    fn served_route(
        cands: &[(&str, u64, u64, f64)],
        incumbent: Option<&str>,
        served: &[u64],
    ) -> Arc<PreparedRoute> {
        let mut baseline = model("base", post(180, 300), 0.01);
        let mut candidates: Vec<ModelInput> = cands
            .iter()
            .map(|(n, k, m, c)| model(n, post(*k, *m), *c))
            .collect();
        for (m, n) in std::iter::once(&mut baseline)
            .chain(candidates.iter_mut())
            .zip(served)
        {
            m.recent_requests = *n;
        }
        let input = RouteInput {
            route: Arc::from("b"),
            mode: Mode::Live,
            baseline,
            candidates,
            constraints: Constraints::default(),
            weights: ScoreWeights::default(),
            exploration: ExplorationConfig::default(),
            pinned: None,
            table_version: 1,
        };
        let previous = incumbent.map(|name| promoted_before(&input, name));
        PreparedRoute::prepare_with(input, PromotionConfig::default(), previous.as_deref()).unwrap()
    }

    /// A previous snapshot of `input` in which `name` was the promoted model (the incumbent).
    fn promoted_before(input: &RouteInput, name: &str) -> Arc<PreparedRoute> {
        let fresh = PreparedRoute::prepare(input.clone()).unwrap();
        let mut p = (*fresh).clone();
        p.static_exploit = p.index_of(name).unwrap();
        Arc::new(p)
    }

    #[test]
    fn an_overspent_window_pays_back_before_exploring_more() {
        // "bad" is now known to be 0.2 below the baseline (0.6); "new" is unknown.
        let cands = [("bad", 8, 20, 0.002), ("new", 0, 0, 0.001)];
        let fresh = served_route(&cands, None, &[0, 0, 0]);
        assert_eq!(fresh.realized_gap, None);
        assert!(fresh.budget_epsilon > 0.0);
        // Too little served traffic: the account is not trusted yet.
        let few = served_route(&cands, None, &[5, 5, 0]);
        assert_eq!(few.realized_gap, None);
        assert_eq!(few.budget_epsilon, fresh.budget_epsilon);
        // 12% of the window went to "bad": a realized gap above 0.02, the whole budget.
        let spent = served_route(&cands, None, &[440, 60, 0]);
        let g = spent.realized_gap.unwrap();
        assert!(g > 0.02 && g < 0.025, "{g}");
        assert_eq!(spent.budget_epsilon, 0.0);
        // Half the budget spent: the plan may use the whole budget again.
        let half = served_route(&cands, None, &[475, 25, 0]);
        assert!(half.realized_gap.unwrap() <= 0.0101);
        assert!((half.budget_epsilon - fresh.budget_epsilon).abs() < 0.02 * fresh.budget_epsilon);
        // In between: less than the full plan, more than nothing.
        let some = served_route(&cands, None, &[465, 35, 0]);
        assert!(some.budget_epsilon > 0.0 && some.budget_epsilon < fresh.budget_epsilon);
        // The decision trace says what the window cost.
        let d = decide(&some, &RequestContext::default());
        let why = serde_json::to_string(&d.trace("req", 0)).unwrap();
        assert!(why.contains("realized gap of the recent window"), "{why}");
    }

    #[test]
    fn labelled_exploration_keeps_the_share_and_lands_on_scored_requests() {
        // share·p(scored) + (1 − share)·p(unscored) = ε, below and above the scored share.
        for &share in &[0.05, 0.3, 0.5, 1.0] {
            for &eps in &[0.0, 0.01, 0.1, 0.3, 0.45, 0.5, 1.0] {
                let ps = Labelling::from_share(true, share).exploration_probability(eps);
                let pu = Labelling::from_share(false, share).exploration_probability(eps);
                assert!((0.0..=1.0).contains(&ps) && (0.0..=1.0).contains(&pu));
                let mean = share * ps + (1.0 - share) * pu;
                assert!(
                    (mean - eps).abs() < 1e-12,
                    "share {share} eps {eps}: {mean}"
                );
                if eps <= share {
                    assert_eq!(pu, 0.0, "nothing explored where no score comes");
                }
            }
        }
        assert_eq!(Labelling::Unknown.exploration_probability(0.2), 0.2);
        assert!(Labelling::from_share(true, 0.0).is_unknown());
        assert!(Labelling::from_share(true, f64::NAN).is_unknown());
        // Through `decide`: the explored share over many draws is ε either way, and with the
        // sample announced every explored request is a scored one.
        let r = budget_route(&[("new", 0, 0, 0.001)], None);
        let eps = r.budget_epsilon;
        assert!(eps > 0.0);
        let share = 0.3;
        let (mut explored, mut explored_scored) = (0usize, 0usize);
        let n = 20_000;
        for k in 0..n {
            let scored = k % 10 < 3;
            let d = decide(
                &r,
                &RequestContext {
                    rng: ((k * 7919) % n) as f64 / n as f64,
                    labelling: Labelling::from_share(scored, share),
                    ..Default::default()
                },
            );
            if d.kind == PickKind::Explored {
                explored += 1;
                explored_scored += usize::from(scored);
                assert!((d.propensity - r.probability(d.chosen, &d.context())).abs() < 1e-12);
            }
        }
        let observed = explored as f64 / n as f64;
        assert!(
            (observed - eps).abs() < 0.01,
            "explored {observed} vs ε {eps}"
        );
        if eps <= share {
            assert_eq!(explored, explored_scored);
        }
    }

    #[test]
    fn exploration_stops_at_the_share_cap() {
        let r = budget_route(&[("new", 0, 0, 0.001)], None);
        let ctx = RequestContext {
            exploration_share: r.constraints.max_exploration_share,
            rng: 0.0,
            ..Default::default()
        };
        assert!(r.budget_epsilon > 0.0);
        let d = decide(&r, &ctx);
        assert_eq!(d.epsilon, 0.0);
        assert_eq!(d.chosen, d.exploit);
        assert_eq!(d.propensity, 1.0);
    }

    #[test]
    fn exploration_is_bounded_in_quality_terms() {
        // Unknown candidates: each request on one may cost up to its gap's upper bound, so ε is
        // what keeps ε × mean bound within budget × max_regression.
        let r = budget_route(&[("a", 0, 0, 0.001), ("b", 0, 0, 0.002)], None);
        let c = &r.constraints;
        let mass: f64 = r.models.iter().map(|m| m.ts_prob).sum();
        let g_bar: f64 = r.models.iter().map(|m| m.ts_prob / mass * m.gap_ub).sum();
        assert!(g_bar > 0.0);
        assert!(r.budget_epsilon > 0.0);
        assert!(r.budget_epsilon * g_bar <= r.exploration.budget * c.max_regression + 1e-12);
        // A candidate confidently better than the baseline costs nothing: explored at the cap.
        let r = budget_route(&[("good", 90, 100, 0.001)], None);
        assert!(r.models[1].gap_ub < 0.0);
        // (It is also promotable: the exploit pick, so nothing is left to explore.)
        assert_eq!(r.static_exploit, 1);
        let r = budget_route(&[("good", 18, 20, 0.001), ("cheaper", 0, 0, 0.0005)], None);
        assert_eq!(r.static_exploit, 1);
        // A promoted model's own bound is charged first.
        let cap = r.exploration.rate.min(r.constraints.max_exploration_share);
        assert!(r.budget_epsilon <= cap);
        // No budget, no exploration.
        let mut input = RouteInput {
            route: Arc::from("b"),
            mode: Mode::Live,
            baseline: model("base", post(180, 300), 0.01),
            candidates: vec![model("a", post(0, 0), 0.001)],
            constraints: Constraints::default(),
            weights: ScoreWeights::default(),
            exploration: ExplorationConfig::default(),
            pinned: None,
            table_version: 1,
        };
        input.exploration.budget = 0.0;
        let r = PreparedRoute::prepare(input).unwrap();
        assert_eq!(r.budget_epsilon, 0.0);
    }

    #[test]
    fn the_promotion_level_tightens_with_the_looks() {
        // At min_samples the level is min_confidence itself; it rises slowly after.
        assert!((promotion_level(0.95, 20, 20, 1.0) - 0.95).abs() < 1e-12);
        assert!((promotion_level(0.95, 5, 20, 1.0) - 0.95).abs() < 1e-12);
        let at_54 = promotion_level(0.95, 54, 20, 1.0);
        assert!((at_54 - (1.0 - 0.05 / (1.0 + (54.0f64 / 20.0).ln()))).abs() < 1e-12);
        assert!(at_54 > 0.97 && at_54 < 0.98, "{at_54}");
        assert!(promotion_level(0.95, 2000, 20, 1.0) < 1.0);
        // 0 turns the spending off.
        assert_eq!(promotion_level(0.95, 2000, 20, 0.0), 0.95);
        // A candidate at ≈ 0.96 after many samples is not promoted; with no spending it is.
        let level = promotion_level(0.95, 160, 20, 1.0);
        let k = (80..160)
            .find(|&k| {
                let c = budget_route(&[("close", k, 160, 0.001)], None).models[1]
                    .gate
                    .confidence;
                c > 0.95 && c < level
            })
            .expect("a success count with confidence in (0.95, level)");
        let r = budget_route(&[("close", k, 160, 0.001)], None);
        assert_eq!(r.static_exploit, 0);
        let why =
            serde_json::to_string(&decide(&r, &RequestContext::default()).trace("q", 0)).unwrap();
        assert!(why.contains("look"), "{why}");
        let mut input = RouteInput {
            route: Arc::from("b"),
            mode: Mode::Live,
            baseline: model("base", post(180, 300), 0.01),
            candidates: vec![model("close", post(k, 160), 0.001)],
            constraints: Constraints::default(),
            weights: ScoreWeights::default(),
            exploration: ExplorationConfig::default(),
            pinned: None,
            table_version: 1,
        };
        input.constraints.min_confidence = 0.95;
        let off = PreparedRoute::prepare_with(
            input,
            PromotionConfig {
                look_spending: 0.0,
                ..Default::default()
            },
            None,
        )
        .unwrap();
        assert_eq!(off.static_exploit, 1);
    }

    #[test]
    fn exploration_traffic_includes_the_rest_of_an_explored_session() {
        let r = budget_route(&[("new", 0, 0, 0.001)], None);
        assert_eq!(r.static_exploit, 0);
        // The first request of the session explores...
        let first = decide(
            &r,
            &RequestContext {
                rng: 0.0,
                ..Default::default()
            },
        );
        assert_eq!(first.kind, PickKind::Explored);
        assert!(first.explores());
        // ...and the session held on that candidate is exploration traffic too.
        let held = decide(
            &r,
            &RequestContext {
                sticky: Some("new"),
                rng: 0.9,
                ..Default::default()
            },
        );
        assert_eq!(held.kind, PickKind::Sticky);
        assert!(held.explores());
        // A session held on the exploit pick (here the baseline) is not.
        let base = decide(
            &r,
            &RequestContext {
                sticky: Some("base"),
                rng: 0.9,
                ..Default::default()
            },
        );
        assert_eq!(base.kind, PickKind::Sticky);
        assert!(!base.explores());
        let plain = decide(
            &r,
            &RequestContext {
                rng: 0.99,
                ..Default::default()
            },
        );
        assert!(!plain.explores());
    }

    #[test]
    fn a_trial_of_a_confidently_no_worse_candidate_runs_above_the_rate() {
        // 18 samples: too few to promote (min_samples 20), but its gap bound is already ≤ 0.
        let r = budget_route(&[("likely", 15, 18, 0.001)], None);
        assert_eq!(r.static_exploit, 0);
        assert!(r.models[1].gap_ub <= 0.0, "{}", r.models[1].gap_ub);
        let mass: f64 = r.models.iter().map(|m| m.ts_prob).sum();
        let trial = r
            .exploration
            .trial_rate
            .min(r.constraints.max_exploration_share)
            .min(mass);
        assert!(trial > r.exploration.rate, "{trial}");
        assert!((r.budget_epsilon - trial).abs() < 1e-12);
        // A stricter trial bound (z = 3) is not met yet: back to the ordinary cap.
        let mut input = RouteInput {
            route: Arc::from("b"),
            mode: Mode::Live,
            baseline: model("base", post(180, 300), 0.01),
            candidates: vec![model("likely", post(15, 18), 0.001)],
            constraints: Constraints::default(),
            weights: ScoreWeights::default(),
            exploration: ExplorationConfig::default(),
            pinned: None,
            table_version: 1,
        };
        input.exploration.trial_z = 3.0;
        let strict = PreparedRoute::prepare(input.clone()).unwrap();
        assert!(strict.budget_epsilon <= strict.exploration.rate + 1e-12);
        assert!(strict.budget_epsilon > 0.0);
        // An unknown candidate is never on trial: its bound is far above 0.
        let unknown = budget_route(&[("new", 0, 0, 0.001)], None);
        assert!(unknown.budget_epsilon < unknown.exploration.rate);
        // The trial rate is itself a setting.
        let d = decide(&r, &RequestContext::default());
        let why = serde_json::to_string(&d.trace("req", 0)).unwrap();
        assert!(why.contains("a trial: the explored candidates"), "{why}");
        input.exploration.trial_z = 1.0;
        input.exploration.trial_rate = 0.3;
        let capped = PreparedRoute::prepare(input).unwrap();
        assert!(capped.budget_epsilon <= 0.3 + 1e-12);
    }

    #[test]
    fn warm_up_then_elimination_then_cost_ordering() {
        // The baseline has no samples yet: nothing is explored.
        let r = PreparedRoute::prepare(RouteInput {
            route: Arc::from("w"),
            mode: Mode::Live,
            baseline: model("base", post(0, 0), 0.01),
            candidates: vec![model("a", post(0, 0), 0.001)],
            constraints: Constraints::default(),
            weights: ScoreWeights::default(),
            exploration: ExplorationConfig::default(),
            pinned: None,
            table_version: 1,
        })
        .unwrap();
        assert!(!r.models[1].in_explore);
        assert_eq!(r.budget_epsilon, 0.0);
        // Confidently worse after a few samples: eliminated; unknown: explored.
        // (12 straight failures: the anytime level at 12 samples is ~2e-4.)
        let r = budget_route(&[("bad", 0, 12, 0.001), ("unknown", 0, 0, 0.001)], None);
        assert!(!r.models[1].explore_quality_ok && !r.models[1].in_explore);
        assert!(r.models[2].in_explore);
        assert_eq!(r.models[1].ts_prob, 0.0);
        // The only model of the set wins every draw where it is within the limit.
        assert!(r.models[2].ts_prob > 0.3 && r.models[2].ts_prob <= 1.0);
        // Once a candidate is promoted, only cheaper ones are explored.
        let r = budget_route(
            &[
                ("promoted", 95, 100, 0.002),
                ("dearer", 0, 0, 0.005),
                ("cheaper", 0, 0, 0.001),
            ],
            None,
        );
        assert_eq!(&*r.models[r.static_exploit].model, "promoted");
        assert!(!r.models[2].in_explore);
        assert!(r.models[3].in_explore);
    }

    #[test]
    fn exploration_concentrates_on_the_expected_saving() {
        // Baseline 0.6. A cheap candidate that is probably within the limit, a cheaper one that
        // is probably not, and a dear one that is within but saves little.
        let r = budget_route(
            &[
                ("likely", 62, 100, 0.001),
                ("doubtful", 45, 100, 0.0005),
                ("dear", 62, 100, 0.009),
            ],
            None,
        );
        let ts: Vec<f64> = r.models.iter().map(|m| m.ts_prob).collect();
        assert!(ts[1] > 5.0 * ts[2], "{ts:?}");
        assert!(ts[1] > 5.0 * ts[3], "{ts:?}");
        let sum: f64 = ts.iter().sum();
        assert!(sum > 0.0 && sum <= 1.0 + 1e-12, "{ts:?}");
        // A doubtful candidate left alone does not inherit the whole rate: its weight is its own
        // P(within).
        let alone = budget_route(&[("doubtful", 45, 100, 0.0005)], None);
        let m = &alone.models[1];
        assert!(m.in_explore);
        assert!((m.ts_prob - m.gate.confidence).abs() < 1e-12);
        assert!(m.ts_prob < 0.2, "{}", m.ts_prob);
    }

    #[test]
    fn anytime_levels_sum_to_alpha() {
        let total: f64 = (1..200_000u64).map(|n| anytime_level(0.05, n)).sum();
        assert!(total <= 0.05 && total > 0.0499, "{total}");
        assert!(anytime_level(0.05, 1) < 0.05);
    }

    /// A 0.6 baseline over 300 samples and one candidate "c" with `k` successes in `n`.
    fn one_candidate(k: u64, n: u64) -> RouteInput {
        RouteInput {
            route: Arc::from("b"),
            mode: Mode::Live,
            baseline: model("base", post(180, 300), 0.01),
            candidates: vec![model("c", post(k, n), 0.001)],
            constraints: Constraints::default(),
            weights: ScoreWeights::default(),
            exploration: ExplorationConfig::default(),
            pinned: None,
            table_version: 1,
        }
    }

    #[test]
    fn promotion_is_tested_once_per_look_every_samples_of_the_candidate() {
        // The grid alone (no confirmation).
        let promotion = PromotionConfig {
            look_every: 5,
            confirm_samples: 0,
            ..PromotionConfig::default()
        };
        let next = |k: u64, n: u64, prev: &Arc<PreparedRoute>| {
            PreparedRoute::prepare_with(one_candidate(k, n), promotion, Some(prev)).unwrap()
        };
        // A fresh start tests every candidate: 0.55 against a 0.6 baseline fails at 180.
        let failing =
            PreparedRoute::prepare_with(one_candidate(100, 180), promotion, None).unwrap();
        assert_eq!(
            (failing.models[1].tests.last, failing.models[1].tests.now),
            (Some(180), true)
        );
        // Three samples later it passes (however lucky), but the next test is at 185.
        let early = next(173, 183, &failing);
        assert!(early.models[1].gate.confidence > 0.999);
        assert_eq!(
            (early.models[1].tests.last, early.models[1].tests.now),
            (Some(180), false)
        );
        assert!(early.models[1]
            .static_failures
            .contains(Knob::MinConfidence));
        assert_eq!(early.static_exploit, 0);
        let why = decide(&early, &RequestContext::default()).trace("r", 0);
        assert!(
            why.candidates[1].filter_reasons.iter().any(|r| {
                r.starts_with(
                "passes, tested again at 185 samples: promotion is tested once per 5 of its samples"
            )
            }),
            "{:?}",
            why.candidates[1].filter_reasons
        );
        // Baseline scores alone (same candidate samples) are no new test either.
        let same = next(173, 183, &early);
        assert_eq!(same.static_exploit, 0);
        // At 185 it is tested, passes, and is promoted.
        assert_eq!(next(175, 185, &same).static_exploit, 1);
        // A failed test at 185 waits for 190, passing or not in between.
        let failed = next(100, 185, &same);
        assert_eq!(failed.models[1].tests.last, Some(185));
        let between = next(178, 188, &failed);
        assert_eq!(between.static_exploit, 0);
        assert_eq!(next(180, 190, &between).static_exploit, 1);
        // Evidence reset by the change detector (fewer samples than at the last test): tested.
        let reset = next(29, 30, &between);
        assert_eq!(
            (reset.models[1].tests.last, reset.models[1].tests.now),
            (Some(30), true)
        );
        // 0 tests at every snapshot.
        let every = PromotionConfig {
            look_every: 0,
            ..promotion
        };
        let now =
            PreparedRoute::prepare_with(one_candidate(173, 183), every, Some(&failing)).unwrap();
        assert_eq!(now.static_exploit, 1);
    }

    #[test]
    fn a_promotion_needs_passing_tests_over_confirm_samples() {
        // Tested at every snapshot, confirmed over 5 samples.
        let promotion = PromotionConfig {
            look_every: 0,
            confirm_samples: 5,
            ..PromotionConfig::default()
        };
        let next = |k: u64, n: u64, prev: &Arc<PreparedRoute>| {
            PreparedRoute::prepare_with(one_candidate(k, n), promotion, Some(prev)).unwrap()
        };
        let failing =
            PreparedRoute::prepare_with(one_candidate(100, 180), promotion, None).unwrap();
        assert_eq!(failing.models[1].tests.passing_since, None);
        // The first passing test starts the run: not promoted yet.
        let first = next(186, 195, &failing);
        assert_eq!(first.models[1].tests.passing_since, Some(195));
        assert_eq!(first.static_exploit, 0);
        let second = next(189, 199, &first);
        assert_eq!(
            (second.models[1].tests.passing_since, second.static_exploit),
            (Some(195), 0)
        );
        // Still passing five samples on: promoted.
        assert_eq!(next(190, 200, &second).static_exploit, 1);
        // A failing test in between ends the run; the next pass starts a new one.
        let dip = next(100, 197, &first);
        assert_eq!(dip.models[1].tests.passing_since, None);
        let again = next(190, 200, &dip);
        assert_eq!(
            (again.models[1].tests.passing_since, again.static_exploit),
            (Some(200), 0)
        );
        let why = decide(&again, &RequestContext::default()).trace("r", 0);
        assert!(
            why.candidates[1]
                .filter_reasons
                .iter()
                .any(|r| r.starts_with(
                    "confirming: its promotion tests pass since 200 samples, promoted at 205"
                )),
            "{:?}",
            why.candidates[1].filter_reasons
        );
        // A fresh start sees all evidence at once: one test, promoted on a pass.
        let cold = PreparedRoute::prepare_with(one_candidate(190, 200), promotion, None).unwrap();
        assert_eq!(cold.static_exploit, 1);
        // So does a restart: the table before the first fold has no evidence (priors only),
        // the next one folds all stored feedback.
        let priors_only =
            PreparedRoute::prepare_with(one_candidate(0, 0), promotion, None).unwrap();
        assert_eq!(priors_only.models[1].posterior.samples, 0);
        let restarted = next(190, 200, &priors_only);
        assert!(restarted.models[1].tests.confirmed);
        assert_eq!(restarted.static_exploit, 1);
        // With the grid, only the tests count: a dip between two tests does not end the run.
        let both = PromotionConfig {
            look_every: 5,
            ..promotion
        };
        let step = |k: u64, n: u64, prev: &Arc<PreparedRoute>| {
            PreparedRoute::prepare_with(one_candidate(k, n), both, Some(prev)).unwrap()
        };
        let start = PreparedRoute::prepare_with(one_candidate(100, 180), both, None).unwrap();
        let pass = step(176, 185, &start);
        assert_eq!(
            (pass.models[1].tests.passing_since, pass.static_exploit),
            (Some(185), 0)
        );
        let between = step(100, 187, &pass);
        assert_eq!(between.models[1].tests.passing_since, Some(185));
        assert_eq!(step(181, 190, &between).static_exploit, 1);
    }

    #[test]
    fn hysteresis_keeps_the_incumbent_and_needs_a_margin_to_switch() {
        // 0.6 baseline; the candidate is at 0.6 over 100: P(within 0.02) is well below 0.95 but
        // above 0.8? Find a case in the band and check both sides.
        let band = |k: u64, n: u64| {
            let r = budget_route(&[("c", k, n, 0.001)], None);
            r.models[1].gate.confidence
        };
        let (k, n) = (124, 200);
        let conf = band(k, n);
        assert!(conf > 0.8 && conf < 0.95, "{conf}");
        let fresh = budget_route(&[("c", k, n, 0.001)], None);
        assert_eq!(fresh.static_exploit, 0, "not promoted at {conf}");
        let kept = budget_route(&[("c", k, n, 0.001)], Some("c"));
        assert_eq!(kept.static_exploit, 1, "the incumbent stays at {conf}");
        assert!(kept.models[1].retained);
        // Below demote_confidence the incumbent goes.
        let gone = budget_route(&[("c", 100, 200, 0.001)], Some("c"));
        assert_eq!(gone.static_exploit, 0);
        // Two promotable candidates with nearly equal scores: the incumbent is not replaced.
        let two = |inc: &str| {
            budget_route(
                &[("x", 190, 200, 0.001), ("y", 190, 200, 0.0009)],
                Some(inc),
            )
            .static_exploit
        };
        assert_eq!(two("x"), 1);
        assert_eq!(two("y"), 2);
    }

    #[test]
    fn explored_sessions_are_released_once_the_window_spent_half_its_budget() {
        // "bad" is known to be 0.2 below the 0.6 baseline; "new" is unknown and explorable.
        let cands = [("bad", 8, 20, 0.002), ("new", 0, 0, 0.001)];
        let ctx = RequestContext {
            sticky: Some("new"),
            rng: 0.99,
            ..Default::default()
        };
        // 2% of the window on "bad": a realized gap of 0.004, under half the 0.02 budget.
        let calm = served_route(&cands, None, &[490, 10, 0]);
        assert!(calm.explored_sessions_open && calm.explorable(2, &ctx));
        let d = decide(&calm, &ctx);
        assert_eq!((d.kind, d.chosen_model()), (PickKind::Sticky, "new"));
        // 7%: a realized gap of 0.014. "new" may still be explored on fresh draws (the
        // throttled budget), but the session already on it goes back to the exploit pick.
        let spent = served_route(&cands, None, &[465, 35, 0]);
        assert!(!spent.explored_sessions_open && spent.explorable(2, &ctx));
        let d = decide(&spent, &ctx);
        assert_eq!(d.misses[0], Some(Miss::StickyHintDropped));
        assert_eq!(d.chosen_model(), "base");
        // The baseline and a promoted model keep their sessions whatever the window spent.
        for hint in ["base", "good"] {
            let r = served_route(
                &[("good", 195, 200, 0.001), ("bad", 8, 20, 0.002)],
                Some("good"),
                &[400, 20, 80],
            );
            assert!(!r.explored_sessions_open, "{:?}", r.realized_gap);
            let d = decide(
                &r,
                &RequestContext {
                    sticky: Some(hint),
                    rng: 0.99,
                    ..Default::default()
                },
            );
            assert_eq!((d.kind, d.chosen_model()), (PickKind::Sticky, hint));
        }
    }

    #[test]
    fn reference_refreshes_are_drawn_while_a_promotion_is_unsettled() {
        // In the hysteresis band: promoted and kept, but not settled.
        let kept = budget_route(&[("c", 124, 200, 0.001)], Some("c"));
        assert_eq!(kept.static_exploit, 1);
        let conf = kept.models[1].gate.confidence;
        let want = 0.05 * ((1.0 - conf) / 0.05).min(1.0);
        assert!((kept.reference_refresh - want).abs() < 1e-12 && want > 0.0);
        // Drawn on scored requests: share·p(scored) + (1 − share)·p(unscored) keeps the rate.
        let scored = RequestContext {
            labelling: Labelling::from_share(true, 0.3),
            ..Default::default()
        };
        let unscored = RequestContext {
            labelling: Labelling::from_share(false, 0.3),
            ..Default::default()
        };
        let (ps, pu) = (kept.probability(0, &scored), kept.probability(0, &unscored));
        assert!(
            (0.3 * ps + 0.7 * pu - want).abs() < 1e-9,
            "{ps} {pu} {want}"
        );
        // A draw inside the refresh's slice serves the baseline as exploration, with its
        // propensity, and does not hold the session on the baseline.
        let (eps, refresh) = kept.draw_split(&scored);
        let d = decide(
            &kept,
            &RequestContext {
                rng: eps + refresh / 2.0,
                ..scored
            },
        );
        assert_eq!((d.kind, d.chosen, d.served), (PickKind::Explored, 0, 0));
        assert!(d.explores());
        assert!((d.propensity - ps).abs() < 1e-12);
        assert_eq!(d.session_model(), 1);
        let why = serde_json::to_string(&d.trace("req", 0)).unwrap();
        assert!(why.contains("reference refresh"), "{why}");
        // A request continuing a session on the promoted model is refreshed at the same rate.
        let on_c = |rng: f64| {
            decide(
                &kept,
                &RequestContext {
                    sticky: Some("c"),
                    rng,
                    ..scored
                },
            )
        };
        let d = on_c(refresh / 2.0);
        assert_eq!(
            (d.kind, d.served, d.session_model()),
            (PickKind::Explored, 0, 1)
        );
        assert!((d.propensity - refresh).abs() < 1e-12);
        let d = on_c(refresh + 0.01);
        assert_eq!((d.kind, d.served), (PickKind::Sticky, 1));
        assert!((d.propensity - (1.0 - refresh)).abs() < 1e-12);
        // Every probability still sums to 1.
        let total: f64 = (0..kept.models.len())
            .map(|i| kept.probability(i, &scored))
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{total}");
        // A settled promotion, the baseline as exploit pick, or shadow mode: no refresh.
        let settled = budget_route(&[("c", 195, 200, 0.001)], Some("c"));
        assert_eq!(settled.static_exploit, 1);
        assert!(
            settled.reference_refresh < 1e-6,
            "{}",
            settled.reference_refresh
        );
        let fresh = budget_route(&[("c", 124, 200, 0.001)], None);
        assert_eq!((fresh.static_exploit, fresh.reference_refresh), (0, 0.0));
    }

    /// A promotion made against a baseline whose estimate is lucky-low (0.66 over 50 samples,
    /// truly 0.80) of a candidate truly 0.06 below it. Nothing but the baseline's own samples
    /// can correct the reference: with refreshes the route is back on the baseline, without
    /// them the false promotion stays for good.
    fn replay_lucky_reference(reference_rate: f64) -> Option<usize> {
        let (qb, qc) = (0.80, 0.74);
        let mut counts = [(33u64, 50u64), (222u64, 300u64)];
        let mut incumbent = Some("c");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut uniform = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let promotion = PromotionConfig {
            reference_rate,
            ..PromotionConfig::default()
        };
        for n in 0..4_000usize {
            let input = RouteInput {
                route: Arc::from("lucky"),
                mode: Mode::Live,
                baseline: model("base", post(counts[0].0, counts[0].1), 0.01),
                candidates: vec![model("c", post(counts[1].0, counts[1].1), 0.001)],
                constraints: Constraints::default(),
                weights: ScoreWeights::default(),
                exploration: ExplorationConfig::default(),
                pinned: None,
                table_version: n as u64,
            };
            let previous = incumbent.map(|name| promoted_before(&input, name));
            let route = PreparedRoute::prepare_with(input, promotion, previous.as_deref()).unwrap();
            if n == 0 {
                assert_eq!(route.static_exploit, 1, "promoted at the start");
                let conf = route.models[1].gate.confidence;
                assert!(conf > 0.9, "well inside the hysteresis band: {conf}");
            }
            if route.static_exploit == 0 {
                return Some(n);
            }
            incumbent = Some("c");
            let scored = uniform() < 0.3;
            let d = decide(
                &route,
                &RequestContext {
                    rng: uniform(),
                    labelling: Labelling::from_share(scored, 0.3),
                    ..Default::default()
                },
            );
            if scored {
                let q = if d.served == 0 { qb } else { qc };
                let c = &mut counts[d.served];
                c.0 += u64::from(uniform() < q);
                c.1 += 1;
            }
        }
        None
    }

    #[test]
    fn a_promotion_on_a_lucky_reference_is_withdrawn_by_reference_refreshes() {
        let back = replay_lucky_reference(PromotionConfig::default().reference_rate);
        assert!(back.is_some_and(|n| n < 2_000), "{back:?}");
        assert_eq!(replay_lucky_reference(0.0), None);
    }

    fn arb_model(name: &'static str) -> impl Strategy<Value = ModelInput> {
        (
            0u64..400,
            0u64..400,
            0.0f64..0.02,
            proptest::option::of(100.0f64..3000.0),
            0.9f64..1.0,
        )
            .prop_map(move |(k, extra, cost, p95, succ)| ModelInput {
                model: Arc::from(name),
                posterior: post(k, k + extra),
                cost_per_request: cost,
                p95_latency_ms: p95,
                success_rate: Some(succ),
                recent_requests: 0,
            })
    }

    fn arb_constraints() -> impl Strategy<Value = Constraints> {
        (
            0.0f64..0.1,
            proptest::option::of(0.3f64..0.9),
            proptest::option::of(0.0f64..0.5),
            proptest::option::of(-0.0f64..0.5),
            proptest::option::of(0.001f64..0.02),
            proptest::option::of(0.0f64..1.0),
            0.8f64..0.99,
            0u64..200,
            0.0f64..0.2,
        )
            .prop_map(|(r, q, l, ci, cpr, b, conf, n, share)| Constraints {
                max_regression: r,
                min_quality: q,
                max_latency_increase: l,
                max_cost_increase: ci,
                max_cost_per_request: cpr,
                daily_budget: b,
                min_confidence: conf,
                min_samples: n,
                max_exploration_share: share,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        // The router never serves a candidate that violates a row gating its action.
        #[test]
        fn never_selects_a_violator(
            base in arb_model("base"),
            c1 in arb_model("c1"), c2 in arb_model("c2"), c3 in arb_model("c3"),
            cons in arb_constraints(),
            spend in 0.0f64..1.0, share in 0.0f64..0.2, u in 0.0f64..1.0,
            hint in proptest::option::of(0usize..4),
        ) {
            let names = ["base", "c1", "c2", "c3"];
            let r = PreparedRoute::prepare(RouteInput {
                route: Arc::from("p"), mode: Mode::Live, baseline: base, candidates: vec![c1, c2, c3],
                constraints: cons.clone(), weights: ScoreWeights::default(),
                exploration: ExplorationConfig { rate: 0.2, draws: 256, ..ExplorationConfig::default() },
                pinned: None, table_version: 3,
            }).unwrap();
            let ctx = RequestContext { spend_today: spend, exploration_share: share, sticky: hint.map(|h| names[h]), rng: u, labelling: Default::default() };
            let d = decide(&r, &ctx);
            prop_assert!(d.propensity > 0.0 && d.propensity <= 1.0);
            if d.served != 0 {
                let m = &r.models[d.served];
                let rows = cons.evaluate(&m.stats, &r.models[0].stats, spend, share);
                let action = match d.kind {
                    PickKind::Promoted => Action::Promote,
                    PickKind::Explored => Action::Explore,
                    PickKind::Sticky => if r.promotable(d.served, &ctx) { Action::Promote } else { Action::Explore },
                    k => return Err(TestCaseError::fail(format!("unexpected kind {k:?}"))),
                };
                for row in rows {
                    if row.name.gates(action) {
                        prop_assert!(row.passed, "{:?} served via {:?} but {:?} failed", m.model, action, row);
                    }
                }
                if action == Action::Promote {
                    prop_assert!(m.gate.confidence >= cons.min_confidence);
                    prop_assert!(m.posterior.samples >= cons.min_samples);
                } else {
                    prop_assert!(share < cons.max_exploration_share);
                    prop_assert!(m.explore_quality_ok);
                }
            }
            if hint.is_none() {
                let total: f64 = (0..r.models.len()).map(|i| r.probability(i, &ctx)).sum();
                prop_assert!((total - 1.0).abs() < 1e-9, "probabilities sum to {}", total);
            }
        }
    }
}
