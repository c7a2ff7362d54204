//! Per-(route, model) quality posterior: Beta(α, β) over quality in [0, 1].
//!
//! Evidence is kept per signal as discounted sums (weight, weighted value, weighted square),
//! so that every signal's contribution, mean, variance and reliability can be shown, and so
//! that folding is order-independent: the state after a set of observations does not depend on
//! the order they arrived in (late feedback counts exactly as if it had arrived on time).
//!
//! α = α₀ + Σₛ rₛ·Wₛ·x̄ₛ and β = β₀ + Σₛ rₛ·Wₛ·(1 − x̄ₛ), where Wₛ is the discounted pseudo-count
//! of signal s, x̄ₛ its mean and rₛ ∈ (0, 1] its reliability (see [`reliability`]). The share of
//! each signal in α + β − α₀ − β₀ *is* its current weight, which is what the trace shows as phase.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::math::BetaParams;

/// A kind of quality evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// Public benchmark scores from `conf/`, as n₀ pseudo-observations.
    Benchmark,
    /// LLM-as-judge scores.
    Judge,
    /// Per-request user scores (thumbs or a declared scale).
    Feedback,
    /// One session NPS spread over the session's routed requests.
    SessionNps,
    /// Admin ratings (higher base weight).
    Admin,
}

impl Signal {
    pub const ALL: [Signal; 5] = [
        Signal::Benchmark,
        Signal::Judge,
        Signal::Feedback,
        Signal::SessionNps,
        Signal::Admin,
    ];
    pub const fn index(self) -> usize {
        match self {
            Signal::Benchmark => 0,
            Signal::Judge => 1,
            Signal::Feedback => 2,
            Signal::SessionNps => 3,
            Signal::Admin => 4,
        }
    }
    pub const fn as_str(self) -> &'static str {
        match self {
            Signal::Benchmark => "benchmark",
            Signal::Judge => "judge",
            Signal::Feedback => "feedback",
            Signal::SessionNps => "session_nps",
            Signal::Admin => "admin",
        }
    }
    /// Scores of single requests (what the change detector watches).
    pub const fn per_request(self) -> bool {
        matches!(self, Signal::Judge | Signal::Feedback | Signal::Admin)
    }
}

/// Which signal group currently dominates the posterior.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No evidence at all: only the uniform base prior.
    Prior,
    /// Benchmark priors dominate (day 0).
    Benchmark,
    /// Judge scores and per-request feedback dominate.
    AutomaticFeedback,
    /// Session NPS dominates.
    SessionNps,
    /// Admin ratings dominate.
    Admin,
}

impl Phase {
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Prior => "prior",
            Phase::Benchmark => "benchmark",
            Phase::AutomaticFeedback => "automatic_feedback",
            Phase::SessionNps => "session_nps",
            Phase::Admin => "admin",
        }
    }
}

/// Errors for malformed evidence. Messages name the field and the accepted range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PosteriorError {
    #[error("score {value} is outside the declared {scale} scale ({range})")]
    ScoreOutOfRange {
        value: f64,
        scale: &'static str,
        range: &'static str,
    },
    #[error("nps {0} is outside 0..=10")]
    NpsOutOfRange(f64),
    #[error("weight {0} must be finite and > 0")]
    BadWeight(f64),
    #[error("benchmark prior score {0} must be in [0, 1]")]
    BadPrior(f64),
    #[error("session has no routed requests to credit")]
    EmptySession,
}

/// The declared scale of a per-request score.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scale {
    /// 0 (thumbs down) or 1 (thumbs up).
    Thumbs,
    /// 1..=5 stars.
    OneToFive,
    /// 0..=10.
    ZeroToTen,
    /// Already in [0, 1] (judge scores).
    Unit,
}

/// Map a declared-scale score onto [0, 1].
pub fn normalise(value: f64, scale: Scale) -> Result<f64, PosteriorError> {
    let (lo, hi, name, range) = match scale {
        Scale::Thumbs => (0.0, 1.0, "thumbs", "0 or 1"),
        Scale::OneToFive => (1.0, 5.0, "1-5", "1..=5"),
        Scale::ZeroToTen => (0.0, 10.0, "0-10", "0..=10"),
        Scale::Unit => (0.0, 1.0, "unit", "0..=1"),
    };
    let bad = PosteriorError::ScoreOutOfRange {
        value,
        scale: name,
        range,
    };
    if !value.is_finite() || value < lo || value > hi {
        return Err(bad);
    }
    if scale == Scale::Thumbs && value != 0.0 && value != 1.0 {
        return Err(bad);
    }
    Ok((value - lo) / (hi - lo))
}

/// Map an NPS answer (0..=10) onto [0, 1].
pub fn nps_to_unit(nps: f64) -> Result<f64, PosteriorError> {
    if !nps.is_finite() || !(0.0..=10.0).contains(&nps) {
        return Err(PosteriorError::NpsOutOfRange(nps));
    }
    Ok(nps / 10.0)
}

/// Split one session's NPS over its k routed requests: each gets weight w/k, so the session
/// contributes total weight w whatever its length.
pub fn split_session_weight(total_weight: f64, k: usize) -> Result<f64, PosteriorError> {
    if k == 0 {
        return Err(PosteriorError::EmptySession);
    }
    if !total_weight.is_finite() || total_weight <= 0.0 {
        return Err(PosteriorError::BadWeight(total_weight));
    }
    Ok(total_weight / k as f64)
}

/// Tunables of the posterior. Defaults are the calibrated ones in docs/routing-math.md.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PosteriorConfig {
    /// Half-life of evidence by event time, in days (0 disables discounting).
    pub half_life_days: f64,
    /// Uniform base prior Beta(α₀, β₀) under everything else.
    pub base_alpha: f64,
    pub base_beta: f64,
    /// Cap on benchmark pseudo-counts n₀. A stronger prior breaks calibration when the
    /// benchmark is wrong for this route (see the gate's calibration tests).
    pub max_prior_strength: f64,
    /// Pseudo-observations per unit of evidence, per signal, in [`Signal::ALL`] order.
    /// The benchmark entry multiplies n₀.
    pub signal_weights: [f64; 5],
    /// Scale each signal by its measured reliability (agreement with the other signals).
    pub reliability: bool,
    /// Change detection on each model's own per-request scores.
    pub change: ChangeConfig,
}

/// The per-(route, model) change detector: a one-sided CUSUM on the model's own per-request
/// scores (judge, feedback, admin) against its running production mean,
/// S ← max(0, S + (mean − x − shift)), alarm at S > threshold. On an alarm the model's
/// production evidence is forgotten, so the posterior (and the gate) see only what came after:
/// a promoted model that regressed loses its promotion at the next snapshot, however much good
/// evidence it had collected before (docs/routing-math.md).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChangeConfig {
    pub enabled: bool,
    /// Drift allowance k: drops smaller than this are never accumulated.
    pub shift: f64,
    /// Alarm threshold h on the CUSUM statistic (quality units).
    pub threshold: f64,
    /// Production scores needed before the running mean is trusted as the reference.
    pub min_samples: u64,
}

impl Default for ChangeConfig {
    fn default() -> Self {
        ChangeConfig {
            enabled: true,
            shift: 0.1,
            threshold: 12.0,
            min_samples: 30,
        }
    }
}

impl Default for PosteriorConfig {
    fn default() -> Self {
        PosteriorConfig {
            half_life_days: 30.0,
            base_alpha: 1.0,
            base_beta: 1.0,
            max_prior_strength: 10.0,
            signal_weights: [1.0, 1.0, 1.0, 1.0, 3.0],
            reliability: true,
            change: ChangeConfig::default(),
        }
    }
}

impl PosteriorConfig {
    fn half_life_ms(&self) -> Option<f64> {
        (self.half_life_days > 0.0).then_some(self.half_life_days * 86_400_000.0)
    }
    /// 2^(−Δt / half-life) for Δt ≥ 0 in milliseconds.
    fn decay(&self, dt_ms: i64) -> f64 {
        match self.half_life_ms() {
            Some(h) if dt_ms > 0 => (-(dt_ms as f64) / h * std::f64::consts::LN_2).exp(),
            _ => 1.0,
        }
    }
    pub fn validate(&self) -> Result<(), String> {
        let pos = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(format!("{name} must be finite and > 0, got {v}"))
            }
        };
        if !self.half_life_days.is_finite() || self.half_life_days < 0.0 {
            return Err(format!(
                "half_life_days must be >= 0 (0 disables discounting), got {}",
                self.half_life_days
            ));
        }
        pos("base_alpha", self.base_alpha)?;
        pos("base_beta", self.base_beta)?;
        if !self.max_prior_strength.is_finite() || self.max_prior_strength < 0.0 {
            return Err(format!(
                "max_prior_strength must be >= 0, got {}",
                self.max_prior_strength
            ));
        }
        for (s, w) in Signal::ALL.iter().zip(self.signal_weights) {
            pos(&format!("signal_weights.{}", s.as_str()), w)?;
        }
        pos("change.shift", self.change.shift)?;
        pos("change.threshold", self.change.threshold)?;
        Ok(())
    }
}

/// Discounted sufficient statistics of one signal.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Acc {
    /// Σ w (pseudo-observations).
    w: f64,
    /// Σ w·x.
    wx: f64,
    /// Σ w·x².
    wxx: f64,
    /// Raw number of observations (not discounted, not weighted).
    count: u64,
}

impl Acc {
    fn scale(&mut self, f: f64) {
        self.w *= f;
        self.wx *= f;
        self.wxx *= f;
    }
    fn mean(&self) -> f64 {
        if self.w > 0.0 {
            (self.wx / self.w).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
    fn variance(&self) -> f64 {
        if self.w > 0.0 {
            let m = self.wx / self.w;
            (self.wxx / self.w - m * m).max(0.0)
        } else {
            0.0
        }
    }
}

/// One unit of quality evidence for one (route, model).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Observation<'a> {
    /// Unique id; folding the same id twice is a no-op that reports [`Folded::Duplicate`].
    pub id: &'a str,
    /// Event time (ms since the Unix epoch) — discounting is by event time, not arrival.
    pub at_ms: i64,
    pub signal: Signal,
    /// Quality in [0, 1] (already normalised).
    pub value: f64,
    /// Relative weight (1 for a single score, w/k for a session share).
    pub weight: f64,
}

/// What folding one observation did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Folded {
    Applied,
    /// The id was already folded; nothing changed.
    Duplicate,
}

/// Mutable, incremental posterior state (owned by the aggregator, never by the request path).
#[derive(Clone, Debug, Default)]
pub struct PosteriorState {
    acc: [Acc; 5],
    change: ChangeState,
    /// Time all accumulators are discounted to: the latest event time seen.
    t_ref_ms: Option<i64>,
    seen: HashSet<Box<str>>,
}

impl PosteriorState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Set (replace, never add) the benchmark prior: `score` in [0, 1] worth `n0` pseudo-counts
    /// (capped at `max_prior_strength`), dated `at_ms` so it is discounted like any evidence.
    pub fn set_prior(
        &mut self,
        score: f64,
        n0: f64,
        at_ms: i64,
        cfg: &PosteriorConfig,
    ) -> Result<(), PosteriorError> {
        if !score.is_finite() || !(0.0..=1.0).contains(&score) {
            return Err(PosteriorError::BadPrior(score));
        }
        if !n0.is_finite() || n0 < 0.0 {
            return Err(PosteriorError::BadWeight(n0));
        }
        let w = n0.min(cfg.max_prior_strength) * cfg.signal_weights[Signal::Benchmark.index()];
        let w = w * self.discount_to_ref(at_ms, cfg);
        self.acc[Signal::Benchmark.index()] = Acc {
            w,
            wx: w * score,
            wxx: w * score * score,
            count: 1,
        };
        Ok(())
    }

    /// Discount factor for evidence dated `at_ms`, advancing the reference time if newer.
    fn discount_to_ref(&mut self, at_ms: i64, cfg: &PosteriorConfig) -> f64 {
        match self.t_ref_ms {
            None => {
                self.t_ref_ms = Some(at_ms);
                1.0
            }
            Some(t) if at_ms > t => {
                let f = cfg.decay(at_ms - t);
                for a in &mut self.acc {
                    a.scale(f);
                }
                self.t_ref_ms = Some(at_ms);
                1.0
            }
            Some(t) => cfg.decay(t - at_ms),
        }
    }

    /// Fold one observation. Idempotent by `obs.id`.
    pub fn fold(
        &mut self,
        obs: &Observation<'_>,
        cfg: &PosteriorConfig,
    ) -> Result<Folded, PosteriorError> {
        Self::check(obs)?;
        if self.seen.contains(obs.id) {
            return Ok(Folded::Duplicate);
        }
        self.seen.insert(obs.id.into());
        self.apply(obs, cfg);
        Ok(Folded::Applied)
    }

    /// Validate an observation without folding it.
    pub fn check(obs: &Observation<'_>) -> Result<(), PosteriorError> {
        if !obs.value.is_finite() || !(0.0..=1.0).contains(&obs.value) {
            return Err(PosteriorError::ScoreOutOfRange {
                value: obs.value,
                scale: "unit",
                range: "0..=1",
            });
        }
        if !obs.weight.is_finite() || obs.weight <= 0.0 {
            return Err(PosteriorError::BadWeight(obs.weight));
        }
        Ok(())
    }

    /// Fold a validated observation without per-state id tracking: for callers (the aggregator)
    /// that deduplicate by event id themselves.
    pub(crate) fn apply(&mut self, obs: &Observation<'_>, cfg: &PosteriorConfig) {
        let f = self.discount_to_ref(obs.at_ms, cfg);
        if cfg.change.enabled && obs.signal.per_request() && self.detect(obs, cfg) {
            return;
        }
        let w = obs.weight * cfg.signal_weights[obs.signal.index()] * f;
        let a = &mut self.acc[obs.signal.index()];
        a.w += w;
        a.wx += w * obs.value;
        a.wxx += w * obs.value * obs.value;
        a.count += 1;
    }

    /// Feed the change detector; on an alarm forget the production evidence (the alarming
    /// observation starts the new segment) and return true.
    fn detect(&mut self, obs: &Observation<'_>, cfg: &PosteriorConfig) -> bool {
        let c = &cfg.change;
        let (mut n, mut w, mut wx) = (0u64, 0.0, 0.0);
        for s in Signal::ALL.into_iter().filter(|s| s.per_request()) {
            let a = &self.acc[s.index()];
            n += a.count;
            w += a.w;
            wx += a.wx;
        }
        if n < c.min_samples || w <= 0.0 {
            return false;
        }
        let reference = wx / w;
        self.change.statistic = (self.change.statistic + reference - obs.value - c.shift).max(0.0);
        if self.change.statistic <= c.threshold {
            return false;
        }
        for s in Signal::ALL.into_iter().filter(|s| *s != Signal::Benchmark) {
            self.acc[s.index()] = Acc::default();
        }
        self.change.statistic = 0.0;
        self.change.alarms += 1;
        self.change.last_alarm_ms = Some(obs.at_ms);
        self.change.alarm_reference = reference;
        let w = obs.weight * cfg.signal_weights[obs.signal.index()];
        self.acc[obs.signal.index()] = Acc {
            w,
            wx: w * obs.value,
            wxx: w * obs.value * obs.value,
            count: 1,
        };
        true
    }

    /// Number of distinct observation ids folded.
    pub fn folded_ids(&self) -> usize {
        self.seen.len()
    }

    pub fn latest_event_ms(&self) -> Option<i64> {
        self.t_ref_ms
    }

    /// An immutable posterior discounted to `at_ms` (or to the latest event if `None` or older).
    pub fn posterior(&self, at_ms: Option<i64>, cfg: &PosteriorConfig) -> Posterior {
        self.posterior_mapped(at_ms, cfg, 0.0)
    }

    /// Discounted (weight, weighted sum) of one signal's evidence.
    pub fn signal_sums(&self, s: Signal) -> (f64, f64) {
        let a = &self.acc[s.index()];
        (a.w, a.wx)
    }

    /// Like [`Self::posterior`], with session NPS moved onto the per-request quality scale by
    /// subtracting `nps_offset` (the route's learned NPS − per-request score offset).
    pub fn posterior_mapped(
        &self,
        at_ms: Option<i64>,
        cfg: &PosteriorConfig,
        nps_offset: f64,
    ) -> Posterior {
        let mut acc = self.acc;
        if nps_offset != 0.0 {
            let a = &mut acc[Signal::SessionNps.index()];
            if a.w > 0.0 {
                let m = (a.wx / a.w - nps_offset).clamp(0.0, 1.0);
                let var = a.variance();
                a.wx = a.w * m;
                a.wxx = a.w * (var + m * m);
            }
        }
        if let (Some(now), Some(t)) = (at_ms, self.t_ref_ms) {
            let f = cfg.decay(now - t);
            for a in &mut acc {
                a.scale(f);
            }
        }
        let mut p = Posterior::from_parts(&acc, cfg);
        p.change = self.change;
        p.signals[Signal::SessionNps.index()].offset = nps_offset;
        p
    }
}

/// The change detector's state of one (route, model), published with its posterior.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangeState {
    /// Current CUSUM statistic (alarm above `change.threshold`).
    pub statistic: f64,
    /// Alarms so far; each forgot the production evidence before it.
    pub alarms: u32,
    /// Event time of the last alarm.
    pub last_alarm_ms: Option<i64>,
    /// The running mean the last alarm was measured against.
    pub alarm_reference: f64,
}

/// One signal's part in a posterior, as shown in the decision trace.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignalEvidence {
    pub signal: Signal,
    /// Discounted pseudo-observations before reliability scaling.
    pub raw_weight: f64,
    /// Reliability in (0, 1]: how well the signal agrees with the other signals.
    pub reliability: f64,
    /// Effective pseudo-observations in α + β (raw_weight × reliability).
    pub weight: f64,
    /// Share of the effective evidence: the signal's current weight in the decision.
    pub share: f64,
    /// Weighted mean and variance of the signal's observations in [0, 1].
    pub mean: f64,
    pub variance: f64,
    /// Raw observation count.
    pub count: u64,
    /// Subtracted from the signal's raw values to put it on the quality scale (session NPS:
    /// learned per route against the per-request scores of the same models).
    #[serde(default)]
    pub offset: f64,
}

/// An immutable quality posterior: cheap to copy into a routing-table snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Posterior {
    pub alpha: f64,
    pub beta: f64,
    /// Per-signal breakdown in [`Signal::ALL`] order.
    pub signals: [SignalEvidence; 5],
    /// Production observations (everything but benchmarks), raw count: the `min_samples` input.
    pub samples: u64,
    pub phase: Phase,
    /// The change detector's state (see [`ChangeConfig`]).
    pub change: ChangeState,
}

impl Posterior {
    /// The posterior with no evidence but the uniform base prior.
    pub fn uninformed(cfg: &PosteriorConfig) -> Self {
        Self::from_parts(&[Acc::default(); 5], cfg)
    }

    fn from_parts(acc: &[Acc; 5], cfg: &PosteriorConfig) -> Self {
        let mut signals = [SignalEvidence {
            signal: Signal::Benchmark,
            raw_weight: 0.0,
            reliability: 1.0,
            weight: 0.0,
            share: 0.0,
            mean: 0.0,
            variance: 0.0,
            count: 0,
            offset: 0.0,
        }; 5];
        let mut alpha = cfg.base_alpha;
        let mut beta = cfg.base_beta;
        let mut total = 0.0;
        for (i, s) in Signal::ALL.iter().enumerate() {
            let r = if cfg.reliability {
                reliability(acc, *s)
            } else {
                1.0
            };
            let a = &acc[i];
            let m = a.mean();
            let w = a.w * r;
            alpha += w * m;
            beta += w * (1.0 - m);
            total += w;
            signals[i] = SignalEvidence {
                signal: *s,
                raw_weight: a.w,
                reliability: r,
                weight: w,
                share: 0.0,
                mean: m,
                variance: a.variance(),
                count: a.count,
                offset: 0.0,
            };
        }
        if total > 0.0 {
            for s in &mut signals {
                s.share = s.weight / total;
            }
        }
        let samples = acc[1..].iter().map(|a| a.count).sum();
        let phase = phase_of(&signals, total);
        Posterior {
            alpha,
            beta,
            signals,
            samples,
            phase,
            change: ChangeState::default(),
        }
    }

    pub fn params(&self) -> BetaParams {
        BetaParams::new(self.alpha, self.beta)
    }
    pub fn mean(&self) -> f64 {
        self.params().mean()
    }
    pub fn variance(&self) -> f64 {
        self.params().variance()
    }
    pub fn quantile(&self, p: f64) -> f64 {
        self.params().quantile(p)
    }
    /// Effective evidence beyond the base prior (α + β − α₀ − β₀).
    pub fn evidence(&self) -> f64 {
        self.signals.iter().map(|s| s.weight).sum()
    }
    pub fn signal(&self, s: Signal) -> &SignalEvidence {
        &self.signals[s.index()]
    }
}

fn phase_of(signals: &[SignalEvidence; 5], total: f64) -> Phase {
    // Tiny residues of decayed evidence should not name a phase.
    if total < 1e-9 {
        return Phase::Prior;
    }
    let groups = [
        (Phase::Benchmark, signals[0].weight),
        (
            Phase::AutomaticFeedback,
            signals[1].weight + signals[2].weight,
        ),
        (Phase::SessionNps, signals[3].weight),
        (Phase::Admin, signals[4].weight),
    ];
    let mut best = groups[0];
    for g in &groups[1..] {
        if g.1 > best.1 {
            best = *g;
        }
    }
    best.0
}

/// Reliability of a signal with weight `n_s` and mean `mean_s` from its agreement with a reference.
///
/// A random-effects (DerSimonian–Laird) view: the signal's mean x̄ₛ estimates the reference
/// mean x̄ᵣ with sampling variance v/nₛ + v/nᵣ (v = x̄(1 − x̄), the largest variance a [0, 1]
/// variable with that mean can have, so the estimate is conservative). Disagreement beyond that,
/// τ² = max(0, (x̄ₛ − x̄ᵣ)² − v/nₛ − v/nᵣ), is bias that more data of the same signal cannot fix,
/// so its effective count is capped: n_eff = nₛ / (1 + nₛ·τ²/v), i.e. r = 1 / (1 + nₛ·τ²/v).
/// A biased judge or a wrong benchmark therefore cannot dominate by volume.
///
/// Only disagreement that is *significant* counts: τ² subtracts four sampling variances (a
/// two-sigma margin), and fewer than [`MIN_REFERENCE`] reference observations measure nothing.
/// Without that margin a chance gap between a few admin ratings and thousands of judge scores
/// cut the judge's weight by orders of magnitude and broke calibration (the replay benchmark
/// with dense judge scores: 81% of ≥ 0.95-confidence promotions within the limit; with it: see
/// the replay table in docs/benchmarks.md).
pub fn reliability_from(n_s: f64, mean_s: f64, n_ref: f64, mean_ref: f64) -> f64 {
    if n_s <= 0.0 || n_ref < MIN_REFERENCE {
        return 1.0;
    }
    let pooled = (n_s * mean_s + n_ref * mean_ref) / (n_s + n_ref);
    let v = (pooled * (1.0 - pooled)).max(0.01);
    let d = mean_s - mean_ref;
    let tau2 = (d * d - 4.0 * (v / n_s + v / n_ref)).max(0.0);
    1.0 / (1.0 + n_s * tau2 / v)
}

/// Reference observations needed before a signal's reliability is measured at all.
pub const MIN_REFERENCE: f64 = 10.0;

fn reliability(acc: &[Acc; 5], s: Signal) -> f64 {
    let me = &acc[s.index()];
    let (mut n_ref, mut sum_ref) = (0.0, 0.0);
    // Symmetric: every production signal is checked against all the other production signals
    // (a judge against humans *and* humans against the judge), benchmarks against production.
    // The cut scales with the signal's own volume (its effective count is capped at v/τ²), so
    // when two signals disagree the large body keeps at least as much weight as the handful.
    for t in Signal::ALL {
        if t == s || t == Signal::Benchmark {
            continue;
        }
        let a = &acc[t.index()];
        n_ref += a.w;
        sum_ref += a.wx;
    }
    if n_ref <= 0.0 {
        return 1.0;
    }
    reliability_from(me.w, me.mean(), n_ref, (sum_ref / n_ref).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cfg() -> PosteriorConfig {
        PosteriorConfig::default()
    }

    fn obs(id: &str, at_ms: i64, signal: Signal, value: f64, weight: f64) -> Observation<'_> {
        Observation {
            id,
            at_ms,
            signal,
            value,
            weight,
        }
    }

    #[test]
    fn normalises_declared_scales() {
        assert_eq!(normalise(1.0, Scale::Thumbs), Ok(1.0));
        assert_eq!(normalise(0.0, Scale::Thumbs), Ok(0.0));
        assert!(normalise(0.5, Scale::Thumbs).is_err());
        assert_eq!(normalise(1.0, Scale::OneToFive), Ok(0.0));
        assert_eq!(normalise(5.0, Scale::OneToFive), Ok(1.0));
        assert_eq!(normalise(4.0, Scale::OneToFive), Ok(0.75));
        assert_eq!(normalise(7.0, Scale::ZeroToTen), Ok(0.7));
        let e = normalise(6.0, Scale::OneToFive).unwrap_err().to_string();
        assert_eq!(e, "score 6 is outside the declared 1-5 scale (1..=5)");
        assert!(normalise(f64::NAN, Scale::Unit).is_err());
        assert_eq!(nps_to_unit(9.0), Ok(0.9));
        assert!(nps_to_unit(11.0).is_err());
        assert!(split_session_weight(1.0, 0).is_err());
    }

    #[test]
    fn uninformed_is_uniform_and_phase_prior() {
        let p = Posterior::uninformed(&cfg());
        assert_eq!((p.alpha, p.beta), (1.0, 1.0));
        assert_eq!(p.phase, Phase::Prior);
        assert_eq!(p.samples, 0);
    }

    #[test]
    fn duplicate_ids_are_not_double_counted() {
        let c = cfg();
        let mut s = PosteriorState::new();
        assert_eq!(
            s.fold(&obs("a", 0, Signal::Feedback, 1.0, 1.0), &c),
            Ok(Folded::Applied)
        );
        let before = s.posterior(None, &c);
        assert_eq!(
            s.fold(&obs("a", 0, Signal::Feedback, 0.0, 1.0), &c),
            Ok(Folded::Duplicate)
        );
        assert_eq!(s.posterior(None, &c), before);
        assert_eq!(before.alpha, 2.0);
        assert_eq!(before.samples, 1);
    }

    #[test]
    fn bad_observations_are_rejected_without_state_change() {
        let c = cfg();
        let mut s = PosteriorState::new();
        assert!(s.fold(&obs("a", 0, Signal::Judge, 1.5, 1.0), &c).is_err());
        assert!(s.fold(&obs("b", 0, Signal::Judge, 0.5, 0.0), &c).is_err());
        assert_eq!(s.folded_ids(), 0);
    }

    #[test]
    fn prior_is_capped_and_replaced() {
        let c = cfg();
        let mut s = PosteriorState::new();
        s.set_prior(0.8, 1000.0, 0, &c).unwrap();
        let p = s.posterior(None, &c);
        assert!((p.alpha + p.beta - 2.0 - c.max_prior_strength).abs() < 1e-9);
        assert_eq!(p.phase, Phase::Benchmark);
        s.set_prior(0.6, 5.0, 0, &c).unwrap();
        let p = s.posterior(None, &c);
        assert!((p.alpha - 1.0 - 3.0).abs() < 1e-9, "{p:?}");
    }

    #[test]
    fn phases_follow_the_evidence() {
        let c = cfg();
        let mut s = PosteriorState::new();
        s.set_prior(0.8, 10.0, 0, &c).unwrap();
        assert_eq!(s.posterior(None, &c).phase, Phase::Benchmark);
        let ids: Vec<String> = (0..200).map(|i| format!("j{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            let v = if i % 5 == 0 { 0.0 } else { 1.0 };
            s.fold(&obs(id, 1, Signal::Judge, v, 1.0), &c).unwrap();
        }
        let p = s.posterior(None, &c);
        assert_eq!(p.phase, Phase::AutomaticFeedback);
        let ids: Vec<String> = (0..500).map(|i| format!("n{i}")).collect();
        for id in &ids {
            s.fold(&obs(id, 2, Signal::SessionNps, 0.8, 1.0), &c)
                .unwrap();
        }
        let p = s.posterior(None, &c);
        assert_eq!(p.phase, Phase::SessionNps);
        let share_sum: f64 = p.signals.iter().map(|x| x.share).sum();
        assert!((share_sum - 1.0).abs() < 1e-12);
    }

    #[test]
    fn discounting_halves_old_evidence() {
        let c = PosteriorConfig {
            half_life_days: 1.0,
            ..cfg()
        };
        let day = 86_400_000;
        let mut s = PosteriorState::new();
        s.fold(&obs("old", 0, Signal::Feedback, 1.0, 1.0), &c)
            .unwrap();
        s.fold(&obs("new", day, Signal::Feedback, 1.0, 1.0), &c)
            .unwrap();
        let p = s.posterior(None, &c);
        assert!((p.signal(Signal::Feedback).raw_weight - 1.5).abs() < 1e-12);
        // Discounting to a later "now" keeps the ratio but shrinks the total.
        let p2 = s.posterior(Some(2 * day), &c);
        assert!((p2.signal(Signal::Feedback).raw_weight - 0.75).abs() < 1e-12);
    }

    #[test]
    fn a_biased_signal_cannot_dominate_by_volume() {
        let c = cfg();
        let mut s = PosteriorState::new();
        // Humans say 0.6; a flattering judge says 0.95 ten times as often. Symmetric fusion
        // cannot know which is right: both are capped at v/τ² effective observations, so the
        // disagreement shows as a wide posterior instead of a confident 0.95.
        let ids: Vec<String> = (0..2200).map(|i| format!("e{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            if i < 200 {
                let v = if i % 5 < 3 { 1.0 } else { 0.0 };
                s.fold(&obs(id, 0, Signal::Feedback, v, 1.0), &c).unwrap();
            } else {
                s.fold(&obs(id, 0, Signal::Judge, 0.95, 1.0), &c).unwrap();
            }
        }
        let p = s.posterior(None, &c);
        let j = p.signal(Signal::Judge);
        assert!(j.reliability < 0.05, "{j:?}");
        assert!(p.evidence() < 20.0, "{p:?}");
        assert!(p.mean() < 0.9, "mean {}", p.mean());
        // An agreeing judge keeps full reliability.
        let mut s = PosteriorState::new();
        for (i, id) in ids.iter().enumerate() {
            let sig = if i < 200 {
                Signal::Feedback
            } else {
                Signal::Judge
            };
            let v = if i % 5 < 3 { 1.0 } else { 0.0 };
            s.fold(&obs(id, 0, sig, v, 1.0), &c).unwrap();
        }
        let p = s.posterior(None, &c);
        assert!(
            p.signal(Signal::Judge).reliability > 0.9,
            "{:?}",
            p.signal(Signal::Judge)
        );
    }

    #[test]
    fn a_handful_of_nps_cannot_overturn_many_judge_scores() {
        // 82 judge scores at 0.7 against 12 sessions whose NPS says 0.4: the judge keeps the
        // larger effective weight, so the estimate stays nearer the judge.
        let c = cfg();
        let mut s = PosteriorState::new();
        let ids: Vec<String> = (0..94).map(|i| format!("x{i}")).collect();
        for (i, id) in ids.iter().enumerate() {
            if i < 82 {
                let v = if i % 10 < 7 { 1.0 } else { 0.0 };
                s.fold(&obs(id, 0, Signal::Judge, v, 1.0), &c).unwrap();
            } else {
                s.fold(&obs(id, 0, Signal::SessionNps, 0.4, 1.0), &c)
                    .unwrap();
            }
        }
        let p = s.posterior(None, &c);
        let (j, n) = (p.signal(Signal::Judge), p.signal(Signal::SessionNps));
        assert!(j.weight > n.weight, "judge {j:?} nps {n:?}");
        assert!(p.mean() > 0.6, "mean {}", p.mean());
        // A learned NPS offset removes a scale mismatch: NPS 0.4 on a scale 0.3 below.
        let p = s.posterior_mapped(None, &c, -0.3);
        let n = p.signal(Signal::SessionNps);
        assert!((n.mean - 0.7).abs() < 1e-9 && n.offset == -0.3, "{n:?}");
        assert!(n.reliability > 0.99, "{n:?}");
    }

    #[test]
    fn change_detector_forgets_pre_change_evidence() {
        let c = cfg();
        let mut s = PosteriorState::new();
        let ids: Vec<String> = (0..3000).map(|i| format!("c{i}")).collect();
        // 2,000 scores at 0.8, then the model drops to 0.24 (quality × 0.3).
        let mut alarm_at = None;
        for (i, id) in ids.iter().enumerate() {
            let q = if i < 2000 { 0.8 } else { 0.24 };
            let v = if (i * 7919 % 100) as f64 / 100.0 < q {
                1.0
            } else {
                0.0
            };
            s.fold(&obs(id, i as i64, Signal::Judge, v, 1.0), &c)
                .unwrap();
            if alarm_at.is_none() && s.posterior(None, &c).change.alarms > 0 {
                alarm_at = Some(i);
            }
        }
        let at = alarm_at.expect("the drop is detected");
        assert!((2000..2100).contains(&at), "alarm at {at}");
        let p = s.posterior(None, &c);
        assert_eq!(p.change.alarms, 1);
        // Only post-alarm evidence remains: the estimate is the new level.
        assert!(p.mean() < 0.35, "{}", p.mean());
        assert!(p.samples < 1000);
    }
    proptest! {
        // Any arrival order gives the same posterior (late feedback counts as if on time).
        #[test]
        fn fold_is_order_independent(
            events in proptest::collection::vec((0i64..10_000_000_000, 0usize..5, 0.0f64..=1.0, 0.1f64..3.0), 1..40),
            seed in any::<u64>(),
        ) {
            let c = PosteriorConfig { half_life_days: 20.0, change: ChangeConfig { enabled: false, ..ChangeConfig::default() }, ..PosteriorConfig::default() };
            let ids: Vec<String> = (0..events.len()).map(|i| format!("id{i}")).collect();
            let mut a = PosteriorState::new();
            for (i, (t, s, v, w)) in events.iter().enumerate() {
                a.fold(&obs(&ids[i], *t, Signal::ALL[*s], *v, *w), &c).unwrap();
            }
            let mut order: Vec<usize> = (0..events.len()).collect();
            let mut x = seed | 1;
            for i in (1..order.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                order.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut b = PosteriorState::new();
            for &i in &order {
                let (t, s, v, w) = events[i];
                b.fold(&obs(&ids[i], t, Signal::ALL[s], v, w), &c).unwrap();
                // Re-folding is a no-op.
                prop_assert_eq!(b.fold(&obs(&ids[i], t, Signal::ALL[s], v, w), &c).unwrap(), Folded::Duplicate);
            }
            let (pa, pb) = (a.posterior(None, &c), b.posterior(None, &c));
            prop_assert!((pa.alpha - pb.alpha).abs() < 1e-9 * pa.alpha.max(1.0));
            prop_assert!((pa.beta - pb.beta).abs() < 1e-9 * pa.beta.max(1.0));
            prop_assert_eq!(pa.samples, pb.samples);
        }

        // A success never lowers the mean, a failure never raises it; evidence never shrinks.
        #[test]
        fn updates_move_the_mean_the_right_way(
            prior in proptest::collection::vec((0usize..5, 0.0f64..=1.0), 0..30),
            v in 0.0f64..=1.0,
        ) {
            let c = PosteriorConfig { reliability: false, change: ChangeConfig { enabled: false, ..ChangeConfig::default() }, ..PosteriorConfig::default() };
            let ids: Vec<String> = (0..prior.len()).map(|i| format!("p{i}")).collect();
            let mut s = PosteriorState::new();
            for (i, (sig, x)) in prior.iter().enumerate() {
                s.fold(&obs(&ids[i], 0, Signal::ALL[*sig], *x, 1.0), &c).unwrap();
            }
            let before = s.posterior(None, &c);
            let mut up = s.clone();
            up.fold(&obs("new", 0, Signal::Feedback, v, 1.0), &c).unwrap();
            let after = up.posterior(None, &c);
            prop_assert!(after.alpha + after.beta > before.alpha + before.beta);
            if v >= before.mean() { prop_assert!(after.mean() >= before.mean() - 1e-12); }
            if v <= before.mean() { prop_assert!(after.mean() <= before.mean() + 1e-12); }
            prop_assert!(after.variance() > 0.0);
        }

        // A session of k requests contributes total weight w whatever k is.
        #[test]
        fn session_split_totals_w(k in 1usize..200, w in 0.1f64..5.0, nps in 0.0f64..=10.0) {
            let c = PosteriorConfig { reliability: false, ..PosteriorConfig::default() };
            let share = split_session_weight(w, k).unwrap();
            let ids: Vec<String> = (0..k).map(|i| format!("s#{i}")).collect();
            let mut s = PosteriorState::new();
            for id in &ids {
                s.fold(&obs(id, 0, Signal::SessionNps, nps_to_unit(nps).unwrap(), share), &c).unwrap();
            }
            let p = s.posterior(None, &c);
            let sig = p.signal(Signal::SessionNps);
            prop_assert!((sig.raw_weight - w).abs() < 1e-9);
            prop_assert!((p.alpha - 1.0 - w * nps / 10.0).abs() < 1e-9);
        }
    }
}
