//! The nine declarative constraints of a route (`conf/` and `PUT /v1/constraints`).
//!
//! Quality limits: `max_regression`, `min_quality`, `max_latency_increase`.
//! Cost limits: `max_cost_increase`, `max_cost_per_request`, `daily_budget`.
//! Promotion gates: `min_confidence`, `min_samples`, `max_exploration_share`.
//!
//! [`Constraints::evaluate`] returns one [`ConstraintResult`] per knob (value vs limit), so every
//! pass and fail can be shown. Which rows must pass depends on the action: see [`Knob::gates`].

use serde::{Deserialize, Serialize};

/// One of the nine knobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    MaxRegression,
    MinQuality,
    MaxLatencyIncrease,
    MaxCostIncrease,
    MaxCostPerRequest,
    DailyBudget,
    MinConfidence,
    MinSamples,
    MaxExplorationShare,
}

/// What a pick is for: rows that must pass differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Serving a candidate instead of the baseline because it is confidently good enough.
    Promote,
    /// Serving a candidate to learn about it, within the exploration share.
    Explore,
}

impl Knob {
    pub const ALL: [Knob; 9] = [
        Knob::MaxRegression,
        Knob::MinQuality,
        Knob::MaxLatencyIncrease,
        Knob::MaxCostIncrease,
        Knob::MaxCostPerRequest,
        Knob::DailyBudget,
        Knob::MinConfidence,
        Knob::MinSamples,
        Knob::MaxExplorationShare,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            Knob::MaxRegression => "max_regression",
            Knob::MinQuality => "min_quality",
            Knob::MaxLatencyIncrease => "max_latency_increase",
            Knob::MaxCostIncrease => "max_cost_increase",
            Knob::MaxCostPerRequest => "max_cost_per_request",
            Knob::DailyBudget => "daily_budget",
            Knob::MinConfidence => "min_confidence",
            Knob::MinSamples => "min_samples",
            Knob::MaxExplorationShare => "max_exploration_share",
        }
    }
    /// Whether this row must pass for `action`.
    ///
    /// Promotion needs every quality, cost and gate row except the exploration share.
    /// Exploration needs the cost and latency rows and the exploration share; its quality check
    /// is weaker (the candidate must not be *confidently* bad, see the router) because learning
    /// about unproven models is its purpose.
    pub const fn gates(self, action: Action) -> bool {
        match (self, action) {
            (Knob::MaxExplorationShare, Action::Promote) => false,
            (_, Action::Promote) => true,
            (
                Knob::MaxLatencyIncrease
                | Knob::MaxCostIncrease
                | Knob::MaxCostPerRequest
                | Knob::DailyBudget
                | Knob::MaxExplorationShare,
                Action::Explore,
            ) => true,
            (_, Action::Explore) => false,
        }
    }
    const fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of knobs as a bitmask (cheap to copy on the request path).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KnobSet(pub u16);

impl KnobSet {
    pub fn remove(&mut self, k: Knob) {
        self.0 &= !k.bit();
    }
    pub fn insert(&mut self, k: Knob) {
        self.0 |= k.bit();
    }
    pub fn contains(self, k: Knob) -> bool {
        self.0 & k.bit() != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
    pub fn iter(self) -> impl Iterator<Item = Knob> {
        Knob::ALL.into_iter().filter(move |k| self.contains(*k))
    }
    /// Any member that gates `action`.
    pub fn blocks(self, action: Action) -> bool {
        self.iter().any(|k| k.gates(action))
    }
}

/// The outcome of one knob for one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConstraintResult {
    pub name: Knob,
    pub passed: bool,
    /// The measured value (`None`: no data yet, e.g. no latency samples; such rows pass).
    pub value: Option<f64>,
    /// The configured limit (`None`: the knob is not set).
    pub limit: Option<f64>,
}

/// Per-route constraints. Unset optional knobs do not constrain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Constraints {
    /// Largest allowed quality drop vs the baseline, as a fraction of the [0, 1] quality scale.
    pub max_regression: f64,
    /// Absolute floor on posterior mean quality.
    pub min_quality: Option<f64>,
    /// Largest allowed p95 latency increase vs the baseline (fraction: 0.2 = +20%).
    pub max_latency_increase: Option<f64>,
    /// Largest allowed cost increase per request vs the baseline (fraction; 0 = never dearer).
    pub max_cost_increase: Option<f64>,
    /// Largest estimated cost of one request, USD.
    pub max_cost_per_request: Option<f64>,
    /// Spend cap per UTC day for router-chosen candidates, USD (the baseline is always served).
    pub daily_budget: Option<f64>,
    /// Confidence required to leave the baseline (P(within max_regression) and P(≥ min_quality)).
    pub min_confidence: f64,
    /// Production samples a candidate needs before it can be promoted.
    pub min_samples: u64,
    /// Largest share of a route's traffic that may go to exploration.
    pub max_exploration_share: f64,
}

impl Default for Constraints {
    fn default() -> Self {
        Constraints {
            max_regression: 0.02,
            min_quality: None,
            max_latency_increase: None,
            max_cost_increase: Some(0.0),
            max_cost_per_request: None,
            daily_budget: None,
            min_confidence: 0.95,
            // Enough for the Beta gap posterior to be trustworthy (calibration: docs/routing-math.md);
            // the confidence row does the real work.
            min_samples: 20,
            // A hard cap only: the quality budget (exploration.budget) is what bounds exploration.
            max_exploration_share: 0.5,
        }
    }
}

/// A constraint set that failed validation: every problem, each naming its field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid constraints: {}", .0.join("; "))]
pub struct ConstraintsError(pub Vec<String>);

/// The numbers a candidate (or the baseline) is judged on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CandidateStats {
    /// Posterior mean quality.
    pub quality_mean: f64,
    /// P(q_m ≥ q_baseline − max_regression).
    pub confidence: f64,
    /// P(q_m ≥ min_quality); 1 when no floor is set.
    pub floor_confidence: f64,
    /// Production samples.
    pub samples: u64,
    /// Estimated cost of one request, USD.
    pub cost_per_request: f64,
    /// Observed p95 latency, ms (`None`: no data yet).
    pub p95_latency_ms: Option<f64>,
}

impl Constraints {
    /// Check ranges; the messages say which field, what range and what was given.
    pub fn validate(&self) -> Result<(), ConstraintsError> {
        let mut errs = Vec::new();
        let mut unit = |name: &str, v: f64, what: &str| {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                errs.push(format!("{name} must be in [0, 1] ({what}), got {v}"));
            }
        };
        unit(
            "max_regression",
            self.max_regression,
            "a drop on the 0-1 quality scale",
        );
        if let Some(v) = self.min_quality {
            unit("min_quality", v, "a floor on the 0-1 quality scale");
        }
        unit(
            "max_exploration_share",
            self.max_exploration_share,
            "a share of traffic",
        );
        if !(self.min_confidence.is_finite()
            && self.min_confidence > 0.5
            && self.min_confidence < 1.0)
        {
            errs.push(format!(
                "min_confidence must be in (0.5, 1) (a probability; 1 would never promote), got {}",
                self.min_confidence
            ));
        }
        let mut nonneg = |name: &str, v: Option<f64>, what: &str| {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    errs.push(format!(
                        "{name} must be a finite number >= 0 ({what}), got {v}"
                    ));
                }
            }
        };
        nonneg(
            "max_latency_increase",
            self.max_latency_increase,
            "a fraction: 0.2 = +20% p95",
        );
        nonneg(
            "max_cost_increase",
            self.max_cost_increase,
            "a fraction: 0.1 = +10% vs baseline",
        );
        nonneg("max_cost_per_request", self.max_cost_per_request, "USD");
        nonneg("daily_budget", self.daily_budget, "USD per UTC day");
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConstraintsError(errs))
        }
    }

    /// The configured limit of a knob, as shown in results.
    pub fn limit(&self, k: Knob) -> Option<f64> {
        match k {
            Knob::MaxRegression => Some(-self.max_regression),
            Knob::MinQuality => self.min_quality,
            Knob::MaxLatencyIncrease => self.max_latency_increase,
            Knob::MaxCostIncrease => self.max_cost_increase,
            Knob::MaxCostPerRequest => self.max_cost_per_request,
            Knob::DailyBudget => self.daily_budget,
            Knob::MinConfidence => Some(self.min_confidence),
            Knob::MinSamples => Some(self.min_samples as f64),
            Knob::MaxExplorationShare => Some(self.max_exploration_share),
        }
    }

    /// One knob for one candidate. `spend_today` is the route's router-chosen spend so far
    /// (USD); `exploration_share` the route's current share of explored traffic.
    pub fn check(
        &self,
        k: Knob,
        cand: &CandidateStats,
        base: &CandidateStats,
        spend_today: f64,
        exploration_share: f64,
    ) -> ConstraintResult {
        let limit = self.limit(k);
        let (value, passed) = match k {
            Knob::MaxRegression => {
                let gap = cand.quality_mean - base.quality_mean;
                (Some(gap), gap >= -self.max_regression)
            }
            Knob::MinQuality => (
                Some(cand.quality_mean),
                self.min_quality.is_none_or(|f| cand.quality_mean >= f),
            ),
            Knob::MaxLatencyIncrease => match (cand.p95_latency_ms, base.p95_latency_ms) {
                (Some(c), Some(b)) if b > 0.0 => {
                    let inc = c / b - 1.0;
                    (Some(inc), limit.is_none_or(|l| inc <= l))
                }
                _ => (None, true),
            },
            Knob::MaxCostIncrease => {
                if base.cost_per_request > 0.0 {
                    let inc = cand.cost_per_request / base.cost_per_request - 1.0;
                    (Some(inc), limit.is_none_or(|l| inc <= l + 1e-12))
                } else {
                    // A free baseline: any positive cost is an unbounded increase.
                    let free = cand.cost_per_request <= 0.0;
                    (free.then_some(0.0), limit.is_none() || free)
                }
            }
            Knob::MaxCostPerRequest => (
                Some(cand.cost_per_request),
                limit.is_none_or(|l| cand.cost_per_request <= l),
            ),
            Knob::DailyBudget => {
                let after = spend_today + cand.cost_per_request;
                (Some(after), limit.is_none_or(|l| after <= l))
            }
            Knob::MinConfidence => {
                let c = cand.confidence.min(cand.floor_confidence);
                (Some(c), c >= self.min_confidence)
            }
            Knob::MinSamples => (Some(cand.samples as f64), cand.samples >= self.min_samples),
            Knob::MaxExplorationShare => (
                Some(exploration_share),
                exploration_share < self.max_exploration_share,
            ),
        };
        ConstraintResult {
            name: k,
            passed,
            value,
            limit,
        }
    }

    /// All nine rows for a candidate against the baseline.
    pub fn evaluate(
        &self,
        cand: &CandidateStats,
        base: &CandidateStats,
        spend_today: f64,
        exploration_share: f64,
    ) -> Vec<ConstraintResult> {
        Knob::ALL
            .iter()
            .map(|k| self.check(*k, cand, base, spend_today, exploration_share))
            .collect()
    }

    /// Failed knobs as a bitmask (no allocation).
    pub fn failures(
        &self,
        cand: &CandidateStats,
        base: &CandidateStats,
        spend_today: f64,
        exploration_share: f64,
    ) -> KnobSet {
        let mut s = KnobSet::default();
        for k in Knob::ALL {
            if !self
                .check(k, cand, base, spend_today, exploration_share)
                .passed
            {
                s.insert(k);
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(q: f64, cost: f64, p95: Option<f64>) -> CandidateStats {
        CandidateStats {
            quality_mean: q,
            confidence: 0.99,
            floor_confidence: 1.0,
            samples: 500,
            cost_per_request: cost,
            p95_latency_ms: p95,
        }
    }

    #[test]
    fn serde_round_trip_and_unknown_fields() {
        let c: Constraints = toml::from_str(
            "max_regression = 0.03\nmin_quality = 0.7\ndaily_budget = 50.0\nmin_samples = 200\n",
        )
        .unwrap();
        assert_eq!(c.max_regression, 0.03);
        assert_eq!(c.min_samples, 200);
        assert_eq!(c.min_confidence, 0.95);
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Constraints>(&j).unwrap(), c);
        let e = serde_json::from_str::<Constraints>(r#"{"max_regresion": 0.1}"#).unwrap_err();
        assert!(
            e.to_string().contains("unknown field `max_regresion`"),
            "{e}"
        );
    }

    #[test]
    fn validation_messages_are_precise() {
        let c = Constraints {
            max_regression: 1.5,
            min_confidence: 1.0,
            daily_budget: Some(-1.0),
            ..Constraints::default()
        };
        let e = c.validate().unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert_eq!(
            e.0[0],
            "max_regression must be in [0, 1] (a drop on the 0-1 quality scale), got 1.5"
        );
        assert!(e.0[1].starts_with("min_confidence must be in (0.5, 1)"));
        assert_eq!(
            e.0[2],
            "daily_budget must be a finite number >= 0 (USD per UTC day), got -1"
        );
        assert!(Constraints::default().validate().is_ok());
    }

    #[test]
    fn nine_rows_with_values_and_limits() {
        let c = Constraints {
            min_quality: Some(0.8),
            max_latency_increase: Some(0.2),
            max_cost_increase: Some(0.0),
            max_cost_per_request: Some(0.01),
            daily_budget: Some(10.0),
            ..Constraints::default()
        };
        let base = stats(0.9, 0.02, Some(1000.0));
        let cand = stats(0.89, 0.005, Some(1300.0));
        let rows = c.evaluate(&cand, &base, 9.999, 0.01);
        assert_eq!(rows.len(), 9);
        let row = |k: Knob| *rows.iter().find(|r| r.name == k).unwrap();
        assert!(row(Knob::MaxRegression).passed);
        assert!((row(Knob::MaxRegression).value.unwrap() + 0.01).abs() < 1e-12);
        assert_eq!(row(Knob::MaxRegression).limit, Some(-0.02));
        assert!(row(Knob::MinQuality).passed);
        let lat = row(Knob::MaxLatencyIncrease);
        assert!(!lat.passed && (lat.value.unwrap() - 0.3).abs() < 1e-12);
        assert!(row(Knob::MaxCostIncrease).passed);
        assert!(row(Knob::MaxCostPerRequest).passed);
        assert!(!row(Knob::DailyBudget).passed);
        assert!(row(Knob::MinConfidence).passed);
        assert!(row(Knob::MinSamples).passed);
        assert!(row(Knob::MaxExplorationShare).passed);
        let f = c.failures(&cand, &base, 9.999, 0.01);
        assert_eq!(
            f.iter().collect::<Vec<_>>(),
            vec![Knob::MaxLatencyIncrease, Knob::DailyBudget]
        );
        assert!(f.blocks(Action::Promote) && f.blocks(Action::Explore));
    }

    #[test]
    fn missing_latency_data_passes_and_free_baseline_blocks_paid_candidates() {
        let c = Constraints {
            max_latency_increase: Some(0.1),
            ..Constraints::default()
        };
        let r = c.check(
            Knob::MaxLatencyIncrease,
            &stats(0.9, 0.0, None),
            &stats(0.9, 0.0, Some(5.0)),
            0.0,
            0.0,
        );
        assert!(r.passed && r.value.is_none());
        let r = c.check(
            Knob::MaxCostIncrease,
            &stats(0.9, 0.001, None),
            &stats(0.9, 0.0, None),
            0.0,
            0.0,
        );
        assert!(!r.passed);
    }

    #[test]
    fn gates_by_action() {
        assert!(!Knob::MaxExplorationShare.gates(Action::Promote));
        assert!(Knob::MinConfidence.gates(Action::Promote));
        assert!(!Knob::MinConfidence.gates(Action::Explore));
        assert!(Knob::DailyBudget.gates(Action::Explore));
    }
}
