//! Canary experiments: ramp a candidate model on a route step by step (e.g. 1% → 5% → 25%
//! → 100%), advancing only when an always-valid confidence sequence shows the candidate
//! within the route's regression limit, and reverting as soon as it shows harm.
//!
//! - Assignment is sticky: a session's arm comes from a stable hash of (experiment id,
//!   session key) compared with the current share, so a session stays in its arm while the
//!   share grows (the candidate set only gains sessions).
//! - One [`TwoArmSequence`] runs over the whole experiment: it is valid at every
//!   observation, so evaluating after each request and stopping at any step keeps
//!   P(false promotion) ≤ α. Each step also needs `min_samples_per_step` fresh samples per
//!   arm, so every share is actually exercised before the next.
//! - The last ramp value is always 1.0 and means "promote": with `auto_promote` the
//!   experiment becomes `promoted` (the caller flips the route to the candidate); without,
//!   it reports `ready_to_promote`, keeps the last tested split and keeps watching for harm
//!   until the operator promotes or stops it.

use serde::{Deserialize, Serialize};

use super::stable_unit;
use crate::feedback::sequential::{
    cs_radius, SequenceState, SequentialError, TwoArmSequence, Verdict,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    Baseline,
    Candidate,
}

/// The quality signal the experiment compares, each observation in [0, 1].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Judge and feedback blended as the router blends them.
    #[default]
    Quality,
    /// LLM-as-judge overall score.
    Judge,
    /// Explicit user feedback only.
    Feedback,
    /// Upstream success (1) or failure (0).
    Success,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CanaryError {
    #[error("invalid experiment: {0}")]
    Invalid(String),
    #[error(transparent)]
    Sequential(#[from] SequentialError),
    #[error("cannot {action} an experiment that is {state}")]
    State { action: &'static str, state: String },
}

/// The body of `POST /v1/experiments`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    pub route: String,
    pub candidate: String,
    /// Defaults to the route's default model (filled by the caller).
    #[serde(default)]
    pub baseline: Option<String>,
    #[serde(default = "default_ramp")]
    pub ramp: Vec<f64>,
    #[serde(default)]
    pub metric: Metric,
    /// Largest tolerated drop of the metric, candidate vs baseline.
    #[serde(default = "default_max_regression")]
    pub max_regression: f64,
    /// Error budget: P(promoting a candidate worse than the limit) ≤ alpha.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_min_samples")]
    pub min_samples_per_step: u64,
    #[serde(default)]
    pub auto_promote: bool,
    /// Stop as inconclusive when an arm reaches this many samples without a verdict.
    #[serde(default)]
    pub max_samples_per_arm: Option<u64>,
    /// Per-arm sample size where the confidence sequence is tightest.
    #[serde(default = "default_n_opt")]
    pub n_opt: u64,
}

fn default_ramp() -> Vec<f64> {
    vec![0.01, 0.05, 0.25, 1.0]
}
fn default_max_regression() -> f64 {
    0.02
}
fn default_alpha() -> f64 {
    0.05
}
fn default_min_samples() -> u64 {
    200
}
fn default_n_opt() -> u64 {
    2000
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ExperimentState {
    Running,
    /// The ramp passed its last tested step; waiting for the operator's flip.
    ReadyToPromote,
    /// The candidate serves all of the route's traffic.
    Promoted,
    /// Stopped by the operator or as inconclusive; all traffic on the baseline.
    Stopped {
        reason: String,
    },
    /// The sequence showed harm; all traffic back on the baseline.
    Reverted {
        reason: String,
    },
}

impl ExperimentState {
    pub fn name(&self) -> &'static str {
        match self {
            ExperimentState::Running => "running",
            ExperimentState::ReadyToPromote => "ready_to_promote",
            ExperimentState::Promoted => "promoted",
            ExperimentState::Stopped { .. } => "stopped",
            ExperimentState::Reverted { .. } => "reverted",
        }
    }
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            ExperimentState::Promoted
                | ExperimentState::Stopped { .. }
                | ExperimentState::Reverted { .. }
        )
    }
}

/// What one `evaluate` changed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "transition", rename_all = "snake_case")]
pub enum Transition {
    None,
    Advanced {
        step: usize,
        from_share: f64,
        to_share: f64,
    },
    ReadyToPromote,
    Promoted,
    Reverted {
        reason: String,
    },
    Stopped {
        reason: String,
    },
}

/// One entry of the experiment's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub at_ms: i64,
    pub step: usize,
    pub share: f64,
    pub transition: Transition,
}

/// Samples per arm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ArmCounts {
    pub candidate: u64,
    pub baseline: u64,
}

/// A canary experiment; serialisable so it can be persisted and restored whole.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Experiment {
    pub id: String,
    pub route: String,
    pub candidate: String,
    pub baseline: String,
    /// Strictly increasing shares in (0, 1], the last one 1.0 (= promotion).
    pub ramp: Vec<f64>,
    /// Index into `ramp` of the current split.
    pub step: usize,
    pub metric: Metric,
    pub max_regression: f64,
    pub alpha: f64,
    pub min_samples_per_step: u64,
    pub auto_promote: bool,
    pub max_samples_per_arm: Option<u64>,
    pub state: ExperimentState,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub sequence: TwoArmSequence,
    /// Samples since the current step began.
    pub step_samples: ArmCounts,
    pub history: Vec<HistoryEntry>,
}

/// One arm's estimate with its always-valid interval.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ArmEstimate {
    pub samples: u64,
    pub mean: Option<f64>,
    pub interval: (f64, f64),
}

/// What comes next.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NextStep {
    /// Advance to this share once the test allows it.
    Share { step: usize, share: f64 },
    /// Promote (automatically, or the operator's flip).
    Promote { automatic: bool },
    /// Nothing: the experiment is over.
    None,
}

/// `GET /v1/experiments/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentReport {
    pub id: String,
    pub route: String,
    pub candidate: String,
    pub baseline: String,
    pub metric: Metric,
    pub state: ExperimentState,
    pub auto_promote: bool,
    pub ramp: Vec<f64>,
    pub step: usize,
    /// Share of sessions on the candidate now.
    pub share: f64,
    pub next_step: NextStep,
    pub max_regression: f64,
    pub alpha: f64,
    pub candidate_arm: ArmEstimate,
    pub baseline_arm: ArmEstimate,
    /// Δ = candidate − baseline: estimate, always-valid interval and the test's verdict.
    pub difference: SequenceState,
    pub samples_in_step: ArmCounts,
    pub min_samples_per_step: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub history: Vec<HistoryEntry>,
}

fn normalise_ramp(ramp: &[f64]) -> Result<Vec<f64>, CanaryError> {
    let bad = |m: String| Err(CanaryError::Invalid(m));
    if ramp.is_empty() {
        return bad("ramp must not be empty".into());
    }
    let mut prev = 0.0;
    for &s in ramp {
        if !(s > prev && s <= 1.0) {
            return bad(format!(
                "ramp must be strictly increasing shares in (0, 1], got {ramp:?}"
            ));
        }
        prev = s;
    }
    let mut out = ramp.to_vec();
    // Reaching 100% is promotion; a ramp that stops short still ends in it.
    if prev < 1.0 {
        out.push(1.0);
    }
    if out.len() < 2 {
        return bad("ramp needs at least one step below 1.0 to test".into());
    }
    Ok(out)
}

impl Experiment {
    pub fn new(id: &str, spec: ExperimentSpec, now_ms: i64) -> Result<Self, CanaryError> {
        let baseline = spec
            .baseline
            .clone()
            .filter(|b| !b.is_empty())
            .ok_or_else(|| CanaryError::Invalid("baseline model is required".into()))?;
        if id.is_empty() || spec.route.is_empty() || spec.candidate.is_empty() {
            return Err(CanaryError::Invalid(
                "id, route and candidate must not be empty".into(),
            ));
        }
        if spec.candidate == baseline {
            return Err(CanaryError::Invalid(
                "candidate and baseline must differ".into(),
            ));
        }
        if spec.min_samples_per_step == 0 {
            return Err(CanaryError::Invalid(
                "min_samples_per_step must be > 0".into(),
            ));
        }
        let ramp = normalise_ramp(&spec.ramp)?;
        let sequence = TwoArmSequence::new(spec.alpha, spec.max_regression, spec.n_opt)?;
        Ok(Experiment {
            id: id.to_string(),
            route: spec.route,
            candidate: spec.candidate,
            baseline,
            ramp,
            step: 0,
            metric: spec.metric,
            max_regression: spec.max_regression,
            alpha: spec.alpha,
            min_samples_per_step: spec.min_samples_per_step,
            auto_promote: spec.auto_promote,
            max_samples_per_arm: spec.max_samples_per_arm,
            state: ExperimentState::Running,
            created_ms: now_ms,
            updated_ms: now_ms,
            sequence,
            step_samples: ArmCounts::default(),
            history: Vec::new(),
        })
    }

    /// Share of sessions the candidate serves now.
    pub fn share(&self) -> f64 {
        match self.state {
            ExperimentState::Running | ExperimentState::ReadyToPromote => {
                self.ramp.get(self.step).copied().unwrap_or(0.0)
            }
            ExperimentState::Promoted => 1.0,
            ExperimentState::Stopped { .. } | ExperimentState::Reverted { .. } => 0.0,
        }
    }

    /// The arm of a session (or, without a session, a request). Sticky and monotone:
    /// a session on the candidate stays there as the share grows.
    pub fn assign(&self, key: &str) -> Arm {
        if stable_unit("loopgate-canary", &self.id, key) < self.share() {
            Arm::Candidate
        } else {
            Arm::Baseline
        }
    }

    /// Record one observation of the metric (in [0, 1]) for a request served by `arm`.
    /// Returns false when it was not counted (experiment over, value not finite).
    pub fn observe(&mut self, arm: Arm, value: f64) -> bool {
        let live = matches!(
            self.state,
            ExperimentState::Running | ExperimentState::ReadyToPromote
        );
        if !live || !value.is_finite() {
            return false;
        }
        let x = value.clamp(0.0, 1.0);
        match arm {
            Arm::Candidate => {
                self.sequence.push_candidate(x);
                self.step_samples.candidate += 1;
            }
            Arm::Baseline => {
                self.sequence.push_baseline(x);
                self.step_samples.baseline += 1;
            }
        }
        true
    }

    fn record(&mut self, now_ms: i64, t: Transition) -> Transition {
        self.updated_ms = now_ms;
        self.history.push(HistoryEntry {
            at_ms: now_ms,
            step: self.step,
            share: self.share(),
            transition: t.clone(),
        });
        t
    }

    /// Apply the stopping rule once; cheap enough to call after every observation.
    pub fn evaluate(&mut self, now_ms: i64) -> Transition {
        if !matches!(
            self.state,
            ExperimentState::Running | ExperimentState::ReadyToPromote
        ) {
            return Transition::None;
        }
        let st = self.sequence.state();
        if st.decision == Verdict::Harm {
            let reason = format!(
                "candidate {} is worse than baseline {} by more than {}: difference {:+.4}, interval [{:+.4}, {:+.4}] at {} / {} samples",
                self.candidate,
                self.baseline,
                self.max_regression,
                st.estimate.unwrap_or(0.0),
                st.interval.0,
                st.interval.1,
                st.n_candidate,
                st.n_baseline
            );
            self.state = ExperimentState::Reverted {
                reason: reason.clone(),
            };
            return self.record(now_ms, Transition::Reverted { reason });
        }
        if self.state == ExperimentState::ReadyToPromote {
            return Transition::None;
        }
        let enough = self.step_samples.candidate >= self.min_samples_per_step
            && self.step_samples.baseline >= self.min_samples_per_step;
        if st.decision == Verdict::WithinLimit && enough {
            let last_tested = self.ramp.len().saturating_sub(2);
            if self.step < last_tested {
                let from_share = self.share();
                self.step += 1;
                self.step_samples = ArmCounts::default();
                let t = Transition::Advanced {
                    step: self.step,
                    from_share,
                    to_share: self.share(),
                };
                return self.record(now_ms, t);
            }
            if self.auto_promote {
                self.step = self.ramp.len() - 1;
                self.state = ExperimentState::Promoted;
                return self.record(now_ms, Transition::Promoted);
            }
            self.state = ExperimentState::ReadyToPromote;
            return self.record(now_ms, Transition::ReadyToPromote);
        }
        if let Some(max) = self.max_samples_per_arm {
            if st.n_candidate >= max || st.n_baseline >= max {
                let reason = format!(
                    "inconclusive: {} / {} samples without a verdict (interval [{:+.4}, {:+.4}])",
                    st.n_candidate, st.n_baseline, st.interval.0, st.interval.1
                );
                self.state = ExperimentState::Stopped {
                    reason: reason.clone(),
                };
                return self.record(now_ms, Transition::Stopped { reason });
            }
        }
        Transition::None
    }

    /// The operator's flip: promote a running or ready experiment.
    pub fn promote(&mut self, now_ms: i64) -> Result<Transition, CanaryError> {
        match self.state {
            ExperimentState::Running | ExperimentState::ReadyToPromote => {
                self.step = self.ramp.len() - 1;
                self.state = ExperimentState::Promoted;
                Ok(self.record(now_ms, Transition::Promoted))
            }
            _ => Err(CanaryError::State {
                action: "promote",
                state: self.state.name().to_string(),
            }),
        }
    }

    /// The operator stops the experiment: all traffic back on the baseline.
    pub fn stop(&mut self, reason: &str, now_ms: i64) -> Result<Transition, CanaryError> {
        if self.state.is_final() {
            return Err(CanaryError::State {
                action: "stop",
                state: self.state.name().to_string(),
            });
        }
        self.state = ExperimentState::Stopped {
            reason: reason.to_string(),
        };
        Ok(self.record(
            now_ms,
            Transition::Stopped {
                reason: reason.to_string(),
            },
        ))
    }

    fn arm_estimate(&self, arm: &crate::feedback::sequential::Arm) -> ArmEstimate {
        let r = cs_radius(arm.n, self.alpha / 2.0, self.sequence.rho);
        let mean = arm.mean();
        let interval = match mean {
            Some(m) => ((m - r).max(0.0), (m + r).min(1.0)),
            None => (0.0, 1.0),
        };
        ArmEstimate {
            samples: arm.n,
            mean,
            interval,
        }
    }

    pub fn next_step(&self) -> NextStep {
        match self.state {
            ExperimentState::Running => {
                let last_tested = self.ramp.len().saturating_sub(2);
                if self.step < last_tested {
                    NextStep::Share {
                        step: self.step + 1,
                        share: self.ramp[self.step + 1],
                    }
                } else {
                    NextStep::Promote {
                        automatic: self.auto_promote,
                    }
                }
            }
            ExperimentState::ReadyToPromote => NextStep::Promote { automatic: false },
            _ => NextStep::None,
        }
    }

    pub fn report(&self) -> ExperimentReport {
        ExperimentReport {
            id: self.id.clone(),
            route: self.route.clone(),
            candidate: self.candidate.clone(),
            baseline: self.baseline.clone(),
            metric: self.metric,
            state: self.state.clone(),
            auto_promote: self.auto_promote,
            ramp: self.ramp.clone(),
            step: self.step,
            share: self.share(),
            next_step: self.next_step(),
            max_regression: self.max_regression,
            alpha: self.alpha,
            candidate_arm: self.arm_estimate(&self.sequence.candidate),
            baseline_arm: self.arm_estimate(&self.sequence.baseline),
            difference: self.sequence.state(),
            samples_in_step: self.step_samples,
            min_samples_per_step: self.min_samples_per_step,
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
            history: self.history.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn spec(ramp: Vec<f64>, max_regression: f64, min_samples: u64) -> ExperimentSpec {
        ExperimentSpec {
            route: "support".into(),
            candidate: "cheap-model".into(),
            baseline: Some("big-model".into()),
            ramp,
            metric: Metric::Quality,
            max_regression,
            alpha: 0.05,
            min_samples_per_step: min_samples,
            auto_promote: false,
            max_samples_per_arm: None,
            n_opt: 1000,
        }
    }

    /// Drive an experiment with simulated traffic: one session per request, Bernoulli
    /// quality per arm. Returns the experiment after it ends or after `max_requests`.
    fn drive(
        mut e: Experiment,
        p_base: f64,
        p_cand: f64,
        max_requests: u64,
        rng: &mut impl Rng,
        run: u64,
    ) -> Experiment {
        for i in 0..max_requests {
            let arm = e.assign(&format!("r{run}-s{i}"));
            let p = match arm {
                Arm::Candidate => p_cand,
                Arm::Baseline => p_base,
            };
            let x = if rng.gen::<f64>() < p { 1.0 } else { 0.0 };
            e.observe(arm, x);
            e.evaluate(i as i64);
            if matches!(
                e.state,
                ExperimentState::Reverted { .. }
                    | ExperimentState::Promoted
                    | ExperimentState::ReadyToPromote
                    | ExperimentState::Stopped { .. }
            ) {
                break;
            }
        }
        e
    }

    #[test]
    fn spec_validation_and_ramp_normalisation() {
        let e = Experiment::new("e1", spec(vec![0.01, 0.05, 0.25], 0.05, 10), 0).unwrap();
        assert_eq!(e.ramp, vec![0.01, 0.05, 0.25, 1.0]);
        assert!(Experiment::new("e1", spec(vec![0.1, 0.05, 1.0], 0.05, 10), 0).is_err());
        assert!(Experiment::new("e1", spec(vec![1.0], 0.05, 10), 0).is_err());
        assert!(Experiment::new("e1", spec(vec![0.0, 1.0], 0.05, 10), 0).is_err());
        assert!(Experiment::new("e1", spec(vec![], 0.05, 10), 0).is_err());
        let mut s = spec(vec![0.5], 0.05, 10);
        s.baseline = None;
        assert!(Experiment::new("e1", s, 0).is_err());
        let mut s = spec(vec![0.5], 0.05, 10);
        s.alpha = 0.9;
        assert!(matches!(
            Experiment::new("e1", s, 0),
            Err(CanaryError::Sequential(_))
        ));
        // The POST body with defaults.
        let s: ExperimentSpec =
            serde_json::from_str(r#"{"route": "r", "candidate": "c", "baseline": "b"}"#).unwrap();
        assert_eq!(s.ramp, vec![0.01, 0.05, 0.25, 1.0]);
        assert!(serde_json::from_str::<ExperimentSpec>(
            r#"{"route": "r", "candidate": "c", "x": 1}"#
        )
        .is_err());
    }

    #[test]
    fn assignment_is_sticky_and_monotone_in_the_share() {
        let mut e = Experiment::new("exp-7", spec(vec![0.05, 0.25, 0.5], 0.05, 1), 0).unwrap();
        let keys: Vec<String> = (0..20_000).map(|i| format!("session-{i}")).collect();
        let mut prev: Vec<Arm> = keys.iter().map(|k| e.assign(k)).collect();
        let frac = |arms: &[Arm]| {
            arms.iter().filter(|a| **a == Arm::Candidate).count() as f64 / arms.len() as f64
        };
        assert!((frac(&prev) - 0.05).abs() < 0.01);
        for step in 1..3 {
            e.step = step;
            let now: Vec<Arm> = keys.iter().map(|k| e.assign(k)).collect();
            for (a, b) in prev.iter().zip(&now) {
                if *a == Arm::Candidate {
                    assert_eq!(*b, Arm::Candidate, "a candidate session moved back");
                }
            }
            assert!((frac(&now) - e.ramp[step]).abs() < 0.015);
            prev = now;
        }
        // Same key, same arm; different experiments split independently.
        let other = Experiment::new("exp-8", spec(vec![0.5], 0.05, 1), 0).unwrap();
        let e2 = Experiment::new("exp-7", spec(vec![0.5], 0.05, 1), 0).unwrap();
        let agree = keys
            .iter()
            .filter(|k| other.assign(k) == e2.assign(k))
            .count() as f64
            / keys.len() as f64;
        assert!((agree - 0.5).abs() < 0.02, "{agree}");
        // Over: everybody on the baseline; promoted: everybody on the candidate.
        e.stop("operator", 1).unwrap();
        assert!(keys.iter().all(|k| e.assign(k) == Arm::Baseline));
        assert!(!e.observe(Arm::Candidate, 1.0));
        assert!(e.stop("again", 2).is_err());
        assert!(e.promote(3).is_err());
    }

    #[test]
    fn truly_worse_candidate_stops_and_reverts() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let e = Experiment::new("worse", spec(vec![0.05, 0.25, 0.5], 0.05, 100), 0).unwrap();
        let e = drive(e, 0.8, 0.6, 200_000, &mut rng, 0);
        assert!(
            matches!(e.state, ExperimentState::Reverted { .. }),
            "{:?}",
            e.state
        );
        assert_eq!(e.share(), 0.0);
        let r = e.report();
        eprintln!(
            "canary worse (0.8 vs 0.6, δ 0.05): reverted at step {} after {} candidate / {} baseline samples; Δ̂ {:?} interval {:?}",
            r.step, r.candidate_arm.samples, r.baseline_arm.samples, r.difference.estimate, r.difference.interval
        );
        assert_eq!(r.step, 0, "harm is caught on the first step");
        assert!(r.difference.interval.1 < -0.05);
        assert_eq!(r.next_step, NextStep::None);
        assert!(matches!(
            r.history.last().map(|h| &h.transition),
            Some(Transition::Reverted { .. })
        ));
    }

    #[test]
    fn as_good_candidate_advances_through_the_ramp() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let e = Experiment::new("good", spec(vec![0.05, 0.25, 0.5], 0.1, 100), 0).unwrap();
        let e = drive(e, 0.8, 0.8, 200_000, &mut rng, 0);
        assert_eq!(e.state, ExperimentState::ReadyToPromote, "{:?}", e.report());
        let r = e.report();
        let steps: Vec<f64> = r
            .history
            .iter()
            .filter_map(|h| match h.transition {
                Transition::Advanced { to_share, .. } => Some(to_share),
                _ => None,
            })
            .collect();
        assert_eq!(steps, vec![0.25, 0.5]);
        eprintln!(
            "canary as good (0.8 vs 0.8, δ 0.10): ready to promote after {} candidate / {} baseline samples, Δ interval {:?}",
            r.candidate_arm.samples, r.baseline_arm.samples, r.difference.interval
        );
        // Ready: keeps the last tested split, waits for the operator.
        assert_eq!(r.share, 0.5);
        assert_eq!(r.next_step, NextStep::Promote { automatic: false });
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["state"]["state"], "ready_to_promote");
        assert_eq!(json["next_step"]["kind"], "promote");
        assert!(json["candidate_arm"]["interval"].is_array());
        let mut e = e;
        assert_eq!(e.promote(99).unwrap(), Transition::Promoted);
        assert_eq!(e.share(), 1.0);
        assert_eq!(e.assign("anyone"), Arm::Candidate);
        // Persisted and restored whole.
        let back: Experiment = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn auto_promote_flips_and_max_samples_stops_inconclusive() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut s = spec(vec![0.2, 0.5], 0.1, 100);
        s.auto_promote = true;
        let e = drive(
            Experiment::new("auto", s, 0).unwrap(),
            0.8,
            0.8,
            200_000,
            &mut rng,
            0,
        );
        assert_eq!(e.state, ExperimentState::Promoted);
        assert_eq!(e.step, e.ramp.len() - 1);

        let mut s = spec(vec![0.2, 0.5], 0.05, 100);
        s.max_samples_per_arm = Some(300);
        // At exactly the limit the test cannot decide quickly: stop as inconclusive.
        let e = drive(
            Experiment::new("slow", s, 0).unwrap(),
            0.8,
            0.75,
            200_000,
            &mut rng,
            1,
        );
        assert!(
            matches!(e.state, ExperimentState::Stopped { .. }),
            "{:?}",
            e.state
        );
    }

    #[test]
    fn false_promotion_rate_stays_under_alpha() {
        // Hardest case: the candidate is exactly at the limit (Δ = −δ); anything worse is
        // easier. A "false promotion" here is even one ramp advance.
        let started = std::time::Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2026);
        let runs = 300;
        let (mut advanced, mut reverted) = (0, 0);
        for run in 0..runs {
            let e = Experiment::new("null", spec(vec![0.3, 0.6], 0.1, 50), 0).unwrap();
            let e = drive(e, 0.8, 0.7, 6_000, &mut rng, run);
            if e.step > 0
                || !matches!(
                    e.state,
                    ExperimentState::Running | ExperimentState::Reverted { .. }
                )
            {
                advanced += 1;
            }
            if matches!(e.state, ExperimentState::Reverted { .. }) {
                reverted += 1;
            }
        }
        let rate = advanced as f64 / runs as f64;
        eprintln!(
            "canary null (Δ = −δ = −0.10, α = 0.05, {runs} runs × 6000 requests, evaluated every request): false advance/promotion rate {rate:.4}, reverted {reverted}, {:?}",
            started.elapsed()
        );
        assert!(rate <= 0.05, "{rate}");
    }
}
