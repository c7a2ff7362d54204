//! Always-valid sequential inference for canaries and automatic rollback (issue 6).
//!
//! [`TwoArmSequence`]: a confidence sequence for Δ = μ_candidate − μ_baseline with observations
//! in [0, 1]. Each arm's mean gets a normal-mixture confidence sequence for sub-Gaussian
//! increments (variance proxy ¼ for [0, 1] data): with S_n = Σ(xᵢ − μ), V_n = n/4 and any ρ > 0,
//!
//!   P(∃n: |S_n| ≥ √((V_n + ρ)·ln((V_n + ρ)/(ρ·a²)))) ≤ a,
//!
//! by Ville's inequality on the mixture martingale ∫exp(λS_n − λ²V_n/2) dN(0, 1/ρ)(λ)
//! = √(ρ/(ρ+V_n))·exp(S_n²/(2(ρ+V_n))). With a = α/2 per arm (union bound) the interval
//! [L_c − U_b, U_c − L_b] covers Δ at every n simultaneously with probability ≥ 1 − α, so it
//! may be looked at after every observation and a canary may stop whenever it likes.
//! Decision: `within_limit` when L > −max_regression, `harm` when U < −max_regression.
//!
//! [`RegressionMonitor`]: a one-sided CUSUM for "served quality is below the holdback by more
//! than the threshold". Increments are log e-values exp(λ·y − λ²/8), y = ref − x − threshold,
//! which are supermartingale factors under no regression by Hoeffding's lemma, so the average
//! run length to a false alarm is ≥ e^h (Lorden's argument); the holdback reference is its
//! lower confidence bound, so estimating it does not inflate false alarms.

use serde::{Deserialize, Serialize};

/// Running sum of one arm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    pub n: u64,
    pub sum: f64,
}

impl Arm {
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        self.sum += x.clamp(0.0, 1.0);
    }
    pub fn mean(&self) -> Option<f64> {
        (self.n > 0).then(|| self.sum / self.n as f64)
    }
}

/// Radius of the normal-mixture confidence sequence for the mean of n observations in [0, 1].
pub fn cs_radius(n: u64, alpha: f64, rho: f64) -> f64 {
    if n == 0 {
        return f64::INFINITY;
    }
    let v = n as f64 / 4.0;
    ((v + rho) * ((v + rho) / (rho * alpha * alpha)).ln()).sqrt() / n as f64
}

/// The ρ that minimises the radius at `n_opt` observations (validity holds for any ρ > 0).
pub fn tuned_rho(n_opt: u64, alpha: f64) -> f64 {
    let v = n_opt.max(1) as f64 / 4.0;
    let f = |lr: f64| {
        let rho: f64 = lr.exp();
        (v + rho) * ((v + rho) / (rho * alpha * alpha)).ln()
    };
    // Ternary search on ln ρ (the objective is unimodal in ln ρ).
    let (mut lo, mut hi) = ((v * 1e-4).ln(), (v * 1e2).ln());
    for _ in 0..100 {
        let m1 = lo + (hi - lo) / 3.0;
        let m2 = hi - (hi - lo) / 3.0;
        if f(m1) < f(m2) {
            hi = m2;
        } else {
            lo = m1;
        }
    }
    (0.5 * (lo + hi)).exp()
}

/// Verdict of a sequential test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Continue,
    /// The candidate is within the regression limit (advance the ramp).
    WithinLimit,
    /// The candidate is worse than the limit (stop and revert).
    Harm,
}

/// What `GET /v1/experiments/{id}` reports.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SequenceState {
    /// Δ̂ = mean(candidate) − mean(baseline), if both arms have data.
    pub estimate: Option<f64>,
    /// Always-valid (1 − α) interval for Δ.
    pub interval: (f64, f64),
    pub n_candidate: u64,
    pub n_baseline: u64,
    pub decision: Verdict,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SequentialError {
    #[error("alpha must be in (0, 0.5), got {0}")]
    Alpha(f64),
    #[error("max_regression must be in [0, 1], got {0}")]
    Limit(f64),
    #[error("{0}")]
    Invalid(String),
}

/// Confidence sequence for the difference in mean quality, candidate minus baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TwoArmSequence {
    pub alpha: f64,
    pub max_regression: f64,
    pub rho: f64,
    pub candidate: Arm,
    pub baseline: Arm,
}

impl TwoArmSequence {
    /// `n_opt`: per-arm sample size where the interval should be tightest.
    pub fn new(alpha: f64, max_regression: f64, n_opt: u64) -> Result<Self, SequentialError> {
        if !(alpha > 0.0 && alpha < 0.5) {
            return Err(SequentialError::Alpha(alpha));
        }
        if !(0.0..=1.0).contains(&max_regression) {
            return Err(SequentialError::Limit(max_regression));
        }
        Ok(TwoArmSequence {
            alpha,
            max_regression,
            rho: tuned_rho(n_opt, alpha / 2.0),
            candidate: Arm::default(),
            baseline: Arm::default(),
        })
    }
    pub fn push_candidate(&mut self, x: f64) {
        self.candidate.push(x);
    }
    pub fn push_baseline(&mut self, x: f64) {
        self.baseline.push(x);
    }

    pub fn state(&self) -> SequenceState {
        let a = self.alpha / 2.0;
        let (c, b) = (&self.candidate, &self.baseline);
        let (lo, hi, est) = match (c.mean(), b.mean()) {
            (Some(mc), Some(mb)) => {
                let rc = cs_radius(c.n, a, self.rho);
                let rb = cs_radius(b.n, a, self.rho);
                // Each arm's mean lies in [0, 1], so Δ lies in [−1, 1].
                let lo = ((mc - rc).max(0.0) - (mb + rb).min(1.0)).max(-1.0);
                let hi = ((mc + rc).min(1.0) - (mb - rb).max(0.0)).min(1.0);
                (lo, hi, Some(mc - mb))
            }
            _ => (-1.0, 1.0, None),
        };
        let limit = -self.max_regression;
        let decision = if lo > limit {
            Verdict::WithinLimit
        } else if hi < limit {
            Verdict::Harm
        } else {
            Verdict::Continue
        };
        SequenceState {
            estimate: est,
            interval: (lo, hi),
            n_candidate: c.n,
            n_baseline: b.n,
            decision,
        }
    }
}

/// Configuration of the live-route regression monitor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorConfig {
    /// Allowed drop of served quality below the holdback (the route's `max_regression`).
    pub threshold: f64,
    /// Extra drop beyond the threshold that should be caught fastest (sets λ = 4·shift).
    pub shift: f64,
    /// Target average run length to a false alarm, in served observations (h = ln arl0).
    pub arl0: f64,
    /// Error budget of the holdback reference's lower confidence bound.
    pub reference_alpha: f64,
    /// Holdback observations needed before monitoring starts.
    pub min_holdback: u64,
}

impl Default for MonitorConfig {
    fn default() -> Self {
        MonitorConfig {
            threshold: 0.02,
            shift: 0.05,
            arl0: 1e6,
            reference_alpha: 0.01,
            min_holdback: 100,
        }
    }
}

/// State of the monitor.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonitorState {
    pub statistic: f64,
    pub limit: f64,
    pub served: u64,
    pub holdback: u64,
    /// The holdback reference used (its lower confidence bound).
    pub reference: Option<f64>,
    /// Served observations counted when the alarm fired.
    pub alarm_at: Option<u64>,
}

/// CUSUM regression detector for a live route vs its baseline holdback.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegressionMonitor {
    pub config: MonitorConfig,
    holdback: Arm,
    served: u64,
    w: f64,
    rho: f64,
    alarm_at: Option<u64>,
}

impl RegressionMonitor {
    pub fn new(config: MonitorConfig) -> Result<Self, SequentialError> {
        let c = &config;
        let valid = (0.0..=1.0).contains(&c.threshold)
            && c.shift > 0.0
            && c.shift <= 1.0
            && c.arl0.is_finite()
            && c.arl0 > 1.0
            && c.reference_alpha > 0.0
            && c.reference_alpha < 0.5;
        if !valid {
            return Err(SequentialError::Invalid(format!(
                "monitor needs threshold in [0,1], shift in (0,1], arl0 > 1, reference_alpha in (0,0.5); got {c:?}"
            )));
        }
        Ok(RegressionMonitor {
            rho: tuned_rho(c.min_holdback.max(100) * 10, c.reference_alpha),
            config,
            holdback: Arm::default(),
            served: 0,
            w: 0.0,
            alarm_at: None,
        })
    }

    pub fn push_holdback(&mut self, x: f64) {
        self.holdback.push(x);
    }

    fn reference(&self) -> Option<f64> {
        if self.holdback.n < self.config.min_holdback {
            return None;
        }
        let m = self.holdback.mean()?;
        Some((m - cs_radius(self.holdback.n, self.config.reference_alpha, self.rho)).max(0.0))
    }

    /// Add one served observation; returns true when the alarm fires (first time only).
    pub fn push_served(&mut self, x: f64) -> bool {
        self.served += 1;
        let Some(r) = self.reference() else {
            return false;
        };
        let lambda = 4.0 * self.config.shift;
        let y = r - x.clamp(0.0, 1.0) - self.config.threshold;
        self.w = (self.w + lambda * y - lambda * lambda / 8.0).max(0.0);
        if self.alarm_at.is_none() && self.w >= self.config.arl0.ln() {
            self.alarm_at = Some(self.served);
            return true;
        }
        false
    }

    pub fn state(&self) -> MonitorState {
        MonitorState {
            statistic: self.w,
            limit: self.config.arl0.ln(),
            served: self.served,
            holdback: self.holdback.n,
            reference: self.reference(),
            alarm_at: self.alarm_at,
        }
    }

    /// After an unpin: clear the statistic and the alarm, keep the holdback data.
    pub fn reset(&mut self) {
        self.w = 0.0;
        self.alarm_at = None;
        self.served = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn bern(rng: &mut impl Rng, p: f64) -> f64 {
        if rng.gen::<f64>() < p {
            1.0
        } else {
            0.0
        }
    }

    #[test]
    fn radius_shrinks_and_rho_is_tuned() {
        let rho = tuned_rho(1000, 0.025);
        let r100 = cs_radius(100, 0.025, rho);
        let r1000 = cs_radius(1000, 0.025, rho);
        let r10000 = cs_radius(10_000, 0.025, rho);
        assert!(r100 > r1000 && r1000 > r10000);
        // Tuned ρ beats neighbours at n_opt.
        assert!(
            r1000 <= cs_radius(1000, 0.025, rho * 3.0)
                && r1000 <= cs_radius(1000, 0.025, rho / 3.0)
        );
        assert!(TwoArmSequence::new(0.7, 0.02, 100).is_err());
    }

    /// Simulate canaries; returns (fraction ever declared within_limit, mean n at decision).
    fn canary_runs(
        p_base: f64,
        p_cand: f64,
        delta: f64,
        runs: usize,
        max_n: usize,
        seed: u64,
    ) -> (f64, f64, f64) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let (mut promoted, mut harmed, mut n_sum) = (0, 0, 0u64);
        for _ in 0..runs {
            let mut t = TwoArmSequence::new(0.05, delta, 2000).unwrap();
            for _ in 0..max_n {
                t.push_candidate(bern(&mut rng, p_cand));
                t.push_baseline(bern(&mut rng, p_base));
                // Looked at after every pair: continuous monitoring.
                match t.state().decision {
                    Verdict::WithinLimit => {
                        promoted += 1;
                        n_sum += t.candidate.n;
                        break;
                    }
                    Verdict::Harm => {
                        harmed += 1;
                        n_sum += t.candidate.n;
                        break;
                    }
                    Verdict::Continue => {}
                }
            }
        }
        let decided = (promoted + harmed).max(1) as f64;
        (
            promoted as f64 / runs as f64,
            harmed as f64 / runs as f64,
            n_sum as f64 / decided,
        )
    }

    #[test]
    fn false_promotion_rate_under_the_null_is_below_alpha() {
        // The hardest null: the candidate is exactly at the limit (Δ = −δ).
        let (promo, _, _) = canary_runs(0.8, 0.7, 0.1, 300, 3000, 42);
        eprintln!("canary null (Δ = −δ = −0.10, α = 0.05, 300 runs × ≤3000 pairs, checked every pair): false promotion rate {promo:.4}");
        assert!(promo <= 0.05, "{promo}");
    }

    #[test]
    fn good_candidates_advance_and_bad_ones_stop() {
        let (promo, harm, n) = canary_runs(0.8, 0.8, 0.1, 100, 6000, 7);
        eprintln!("canary equal quality (δ = 0.10): promoted {promo:.3} harm {harm:.3} mean pairs to decision {n:.0}");
        assert!(promo >= 0.95 && harm == 0.0);
        let (promo, harm, n) = canary_runs(0.8, 0.6, 0.05, 100, 3000, 8);
        eprintln!("canary regression 0.20 (δ = 0.05): promoted {promo:.3} harm {harm:.3} mean pairs to decision {n:.0}");
        assert!(harm >= 0.99 && promo == 0.0);
        assert!(n < 1500.0);
    }

    #[test]
    fn monitor_detects_injected_regression_and_stays_quiet_otherwise() {
        let cfg = MonitorConfig::default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(99);
        let (mut false_alarms, mut delays) = (0, Vec::new());
        let runs = 100;
        for _ in 0..runs {
            let mut m = RegressionMonitor::new(cfg).unwrap();
            for _ in 0..2000 {
                m.push_holdback(bern(&mut rng, 0.85));
            }
            let mut alarmed_early = false;
            for _ in 0..3000 {
                if m.push_served(bern(&mut rng, 0.85)) {
                    alarmed_early = true;
                }
            }
            if alarmed_early {
                false_alarms += 1;
                continue;
            }
            // Silent regression: served quality drops by 0.2.
            let mut delay = None;
            for i in 1..=3000u64 {
                if m.push_served(bern(&mut rng, 0.65)) {
                    delay = Some(i);
                    break;
                }
            }
            delays.push(delay.unwrap_or(u64::MAX));
        }
        let max_delay = delays.iter().copied().max().unwrap_or(0);
        let mean_delay = delays.iter().sum::<u64>() as f64 / delays.len().max(1) as f64;
        eprintln!("monitor: {false_alarms}/{runs} false alarms in 3000 clean observations; regression of 0.20 detected after mean {mean_delay:.0}, max {max_delay} observations");
        assert_eq!(false_alarms, 0);
        assert!(max_delay <= 1500, "{max_delay}");
        let mut m = RegressionMonitor::new(cfg).unwrap();
        assert!(
            !m.push_served(0.0),
            "no monitoring before the holdback has data"
        );
        m.reset();
        assert_eq!(m.state().alarm_at, None);
    }
}
