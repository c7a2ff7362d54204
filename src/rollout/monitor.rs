//! Automatic regression rollback for a live route.
//!
//! A small, deterministic share of requests (the holdback, e.g. 5%) keeps being served by
//! the route's baseline. [`RollbackMonitor`] compares the quality of everything else (the
//! served traffic) with that holdback and raises one [`RollbackEvent`] when served quality
//! has dropped below the holdback by more than the route's threshold; the caller then pins
//! the route to its baseline, audits the event, counts it and sends it to the webhook.
//!
//! Statistic: the one-sided CUSUM of [`crate::feedback::sequential::RegressionMonitor`]
//! (log e-value increments λ·y − λ²/8 with y = reference − x − threshold, alarm at
//! ln(arl0), so the average run length to a false alarm is ≥ arl0 served observations),
//! with one change: the holdback reference is the lower confidence bound of the mean of the
//! last `window` holdback observations instead of all of them, so slow drift that moves
//! baseline and served quality together (traffic mix, time of day) does not accumulate into
//! a false alarm. The bound uses the confidence-sequence radius, which is wider than a
//! fixed-n Hoeffding bound, so the reference stays below the window's true mean with
//! probability ≥ 1 − reference_alpha at each time.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use super::stable_unit;
use crate::feedback::sequential::{cs_radius, tuned_rho};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MonitorError {
    #[error("invalid rollback monitor config: {0}")]
    Invalid(String),
}

/// Per-route rollback settings.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RollbackConfig {
    /// Share of requests kept on the baseline as the reference (0 disables monitoring).
    pub holdback_share: f64,
    /// Tolerated drop of served quality below the holdback before an automatic rollback.
    pub threshold: f64,
    /// Drop beyond the threshold that should be caught fastest (λ = 4·shift).
    pub shift: f64,
    /// Average run length to a false alarm, in served observations (alarm at ln arl0).
    pub arl0: f64,
    /// Error budget of the holdback reference's lower confidence bound.
    pub reference_alpha: f64,
    /// Holdback observations needed before monitoring starts.
    pub min_holdback: u64,
    /// Holdback observations in the rolling reference window.
    pub window: usize,
}

impl Default for RollbackConfig {
    fn default() -> Self {
        RollbackConfig {
            // Off by default: the change detector on the promoted model's own scores
            // (`[routing.posterior.change]`) rolls regressions back without a holdback.
            holdback_share: 0.0,
            // Its own setting, not `max_regression`: a rollback is for a material drop.
            threshold: 0.05,
            shift: 0.05,
            arl0: 1e6,
            reference_alpha: 0.01,
            min_holdback: 100,
            window: 2000,
        }
    }
}

impl RollbackConfig {
    pub fn validate(&self) -> Result<(), MonitorError> {
        let c = self;
        let ok = (0.0..=0.5).contains(&c.holdback_share)
            && (0.0..=1.0).contains(&c.threshold)
            && c.shift > 0.0
            && c.shift <= 1.0
            && c.arl0.is_finite()
            && c.arl0 > 1.0
            && c.reference_alpha > 0.0
            && c.reference_alpha < 0.5
            && c.window >= 10
            && c.min_holdback as usize <= c.window;
        if ok {
            Ok(())
        } else {
            Err(MonitorError::Invalid(format!(
                "need holdback_share in [0, 0.5], threshold in [0, 1], shift in (0, 1], arl0 > 1, reference_alpha in (0, 0.5), window >= 10, min_holdback <= window; got {c:?}"
            )))
        }
    }
}

/// Whether this request (or session: pass the session id to keep sessions whole) is in the
/// route's baseline holdback. Deterministic, so every instance agrees.
pub fn in_holdback(route: &str, key: &str, share: f64) -> bool {
    share > 0.0 && stable_unit("loopgate-holdback", route, key) < share
}

/// Which side of the comparison an observation belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorArm {
    /// Served by the live routing decision.
    Served,
    /// Served by the baseline because the request is in the holdback.
    Holdback,
}

/// The alarm: what the caller audits, counts and sends to the webhook.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RollbackEvent {
    pub route: String,
    /// Served mean since the estimated change point − holdback window mean
    /// (negative = regression).
    pub estimate: f64,
    /// The route's tolerated drop.
    pub threshold: f64,
    pub samples: Samples,
    /// Served mean since the estimated change point (the last time the CUSUM was 0).
    pub served_mean: f64,
    /// Served observations since the estimated change point.
    pub since_change: u64,
    pub holdback_mean: f64,
    /// The holdback reference used (lower confidence bound of its window mean).
    pub reference: f64,
    pub statistic: f64,
    pub limit: f64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Samples {
    /// Served observations since the monitor started (or was reset).
    pub served: u64,
    /// Holdback observations in the reference window.
    pub holdback: u64,
    /// Served observations when the alarm fired.
    pub alarm_at: Option<u64>,
}

/// Monitor state for the admin API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MonitorReport {
    pub route: String,
    pub statistic: f64,
    pub limit: f64,
    pub reference: Option<f64>,
    pub served_mean: Option<f64>,
    pub holdback_mean: Option<f64>,
    pub samples: Samples,
    pub alarmed: bool,
}

/// A bounded window of observations with its running sum.
#[derive(Clone, Debug, Default)]
struct Window {
    xs: VecDeque<f32>,
    sum: f64,
    cap: usize,
    pushes: u64,
}

impl Window {
    fn new(cap: usize) -> Self {
        Window {
            xs: VecDeque::with_capacity(cap.min(1 << 16)),
            sum: 0.0,
            cap,
            pushes: 0,
        }
    }
    fn push(&mut self, x: f64) {
        let x = x as f32;
        if self.xs.len() == self.cap {
            if let Some(old) = self.xs.pop_front() {
                self.sum -= old as f64;
            }
        }
        self.xs.push_back(x);
        self.sum += x as f64;
        self.pushes += 1;
        // Re-add from scratch now and then so subtraction error never accumulates.
        if self.pushes.is_multiple_of((self.cap as u64).max(1)) {
            self.sum = self.xs.iter().map(|v| *v as f64).sum();
        }
    }
    fn len(&self) -> u64 {
        self.xs.len() as u64
    }
    fn mean(&self) -> Option<f64> {
        (!self.xs.is_empty()).then(|| self.sum / self.xs.len() as f64)
    }
}

/// Rollback monitor for one live route.
#[derive(Clone, Debug)]
pub struct RollbackMonitor {
    pub route: String,
    pub config: RollbackConfig,
    holdback: Window,
    served: Window,
    served_total: u64,
    /// Served observations (count, sum) since the CUSUM last was 0: the change-point
    /// estimate, so the reported drop is not diluted by pre-change traffic.
    segment: (u64, f64),
    w: f64,
    rho: f64,
    alarm_at: Option<u64>,
    reported: bool,
}

impl RollbackMonitor {
    pub fn new(route: &str, config: RollbackConfig) -> Result<Self, MonitorError> {
        config.validate()?;
        Ok(RollbackMonitor {
            route: route.to_string(),
            rho: tuned_rho(config.window as u64, config.reference_alpha),
            holdback: Window::new(config.window),
            served: Window::new(config.window),
            served_total: 0,
            segment: (0, 0.0),
            w: 0.0,
            alarm_at: None,
            reported: false,
            config,
        })
    }

    /// Lower confidence bound of the holdback window's mean, once it has enough data.
    pub fn reference(&self) -> Option<f64> {
        let n = self.holdback.len();
        if n < self.config.min_holdback.max(1) {
            return None;
        }
        let m = self.holdback.mean()?;
        Some((m - cs_radius(n, self.config.reference_alpha, self.rho)).max(0.0))
    }

    /// Add one quality observation in [0, 1] (non-finite values are ignored).
    pub fn observe(&mut self, arm: MonitorArm, value: f64) {
        if !value.is_finite() {
            return;
        }
        let x = value.clamp(0.0, 1.0);
        match arm {
            MonitorArm::Holdback => self.holdback.push(x),
            MonitorArm::Served => {
                self.served.push(x);
                self.served_total += 1;
                let Some(r) = self.reference() else {
                    return;
                };
                let lambda = 4.0 * self.config.shift;
                let y = r - x - self.config.threshold;
                self.w = (self.w + lambda * y - lambda * lambda / 8.0).max(0.0);
                if self.w == 0.0 {
                    self.segment = (0, 0.0);
                } else {
                    self.segment = (self.segment.0 + 1, self.segment.1 + x);
                }
                if self.alarm_at.is_none() && self.w >= self.limit() {
                    self.alarm_at = Some(self.served_total);
                }
            }
        }
    }

    fn limit(&self) -> f64 {
        self.config.arl0.ln()
    }

    pub fn is_alarmed(&self) -> bool {
        self.alarm_at.is_some()
    }

    fn samples(&self) -> Samples {
        Samples {
            served: self.served_total,
            holdback: self.holdback.len(),
            alarm_at: self.alarm_at,
        }
    }

    /// The rollback event, returned once when the alarm has fired (edge-triggered: the
    /// caller pins once); `None` otherwise and on later calls until [`Self::reset`].
    pub fn check(&mut self) -> Option<RollbackEvent> {
        if self.alarm_at.is_none() || self.reported {
            return None;
        }
        self.reported = true;
        let (seg_n, seg_sum) = self.segment;
        let served_mean = if seg_n > 0 {
            seg_sum / seg_n as f64
        } else {
            self.served.mean().unwrap_or(0.0)
        };
        let holdback_mean = self.holdback.mean().unwrap_or(0.0);
        Some(RollbackEvent {
            route: self.route.clone(),
            estimate: served_mean - holdback_mean,
            threshold: self.config.threshold,
            samples: self.samples(),
            served_mean,
            since_change: seg_n,
            holdback_mean,
            reference: self.reference().unwrap_or(0.0),
            statistic: self.w,
            limit: self.limit(),
        })
    }

    pub fn report(&self) -> MonitorReport {
        MonitorReport {
            route: self.route.clone(),
            statistic: self.w,
            limit: self.limit(),
            reference: self.reference(),
            served_mean: self.served.mean(),
            holdback_mean: self.holdback.mean(),
            samples: self.samples(),
            alarmed: self.is_alarmed(),
        }
    }

    /// After an unpin: clear the statistic, the alarm and the served window; keep the
    /// holdback reference.
    pub fn reset(&mut self) {
        self.w = 0.0;
        self.alarm_at = None;
        self.reported = false;
        self.served_total = 0;
        self.segment = (0, 0.0);
        self.served = Window::new(self.config.window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A monitored route: the pre-issue-12 defaults (holdback on, threshold 0.02); the shipped
    /// default has the holdback off.
    fn monitored() -> RollbackConfig {
        RollbackConfig {
            holdback_share: 0.05,
            threshold: 0.02,
            ..RollbackConfig::default()
        }
    }
    use crate::feedback::sequential::{MonitorConfig, RegressionMonitor};
    use rand::{Rng, SeedableRng};

    fn bern(rng: &mut impl Rng, p: f64) -> f64 {
        if rng.gen::<f64>() < p {
            1.0
        } else {
            0.0
        }
    }

    /// One request of a live route: holdback or served, quality drawn from the arm's rate.
    fn request(m: &mut RollbackMonitor, rng: &mut impl Rng, id: &str, p_hold: f64, p_served: f64) {
        let share = m.config.holdback_share;
        if in_holdback(&m.route.clone(), id, share) {
            m.observe(MonitorArm::Holdback, bern(rng, p_hold));
        } else {
            m.observe(MonitorArm::Served, bern(rng, p_served));
        }
    }

    #[test]
    fn holdback_is_deterministic_and_sized() {
        let n = (0..40_000)
            .filter(|i| in_holdback("support", &format!("req-{i}"), 0.05))
            .count();
        assert!((1_800..2_200).contains(&n), "{n}");
        assert!(!in_holdback("support", "x", 0.0));
        assert_eq!(in_holdback("a", "k", 0.3), in_holdback("a", "k", 0.3));
        assert!(RollbackMonitor::new(
            "r",
            RollbackConfig {
                window: 5,
                ..Default::default()
            }
        )
        .is_err());
        assert!(RollbackMonitor::new(
            "r",
            RollbackConfig {
                arl0: 0.5,
                ..Default::default()
            }
        )
        .is_err());
        let mut m = RollbackMonitor::new("r", monitored()).unwrap();
        // No reference yet: nothing is monitored.
        for _ in 0..1000 {
            m.observe(MonitorArm::Served, 0.0);
        }
        assert!(m.check().is_none());
        m.observe(MonitorArm::Served, f64::NAN);
        assert_eq!(m.report().samples.served, 1000);
    }

    #[test]
    fn silent_regression_is_detected_within_a_bounded_number_of_requests() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(606);
        let runs = 40;
        let (mut false_alarms, mut delays, mut since) = (0, Vec::new(), Vec::new());
        for run in 0..runs {
            let mut m = RollbackMonitor::new("support", monitored()).unwrap();
            // 20 000 clean requests (≈1 000 holdback observations), then served quality
            // silently drops from 0.85 to 0.65.
            for i in 0..20_000 {
                request(&mut m, &mut rng, &format!("{run}-{i}"), 0.85, 0.85);
            }
            if m.check().is_some() {
                false_alarms += 1;
                continue;
            }
            let mut delay = None;
            for i in 1..=5_000u64 {
                request(&mut m, &mut rng, &format!("{run}-late-{i}"), 0.85, 0.65);
                if let Some(ev) = m.check() {
                    assert_eq!(ev.route, "support");
                    assert!(ev.estimate < -0.1, "{ev:?}");
                    assert!(ev.since_change <= i + 200, "{ev:?}");
                    since.push(ev.since_change);
                    assert!(ev.statistic >= ev.limit);
                    delay = Some(i);
                    break;
                }
            }
            delays.push(delay.unwrap_or(u64::MAX));
            // Edge-triggered: one event per alarm; reset re-arms.
            assert!(m.check().is_none());
            m.reset();
            assert!(!m.is_alarmed());
        }
        let max = delays.iter().copied().max().unwrap_or(0);
        let mean = delays.iter().sum::<u64>() as f64 / delays.len().max(1) as f64;
        let mean_since = since.iter().sum::<u64>() as f64 / since.len().max(1) as f64;
        eprintln!(
            "rollback monitor (holdback 5%, threshold 0.02): drop 0.85 -> 0.65 detected after mean {mean:.0}, max {max} requests over {runs} runs (change point estimated {mean_since:.0} served observations back on average); {false_alarms} false alarms in the clean prefix"
        );
        assert_eq!(false_alarms, 0);
        assert!(max <= 2_000, "{max}");
    }

    #[test]
    fn smaller_regression_takes_longer_but_is_still_caught() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(608);
        let runs = 20;
        let mut delays = Vec::new();
        for run in 0..runs {
            let mut m = RollbackMonitor::new("r", monitored()).unwrap();
            for i in 0..20_000 {
                request(&mut m, &mut rng, &format!("{run}-{i}"), 0.85, 0.85);
            }
            assert!(m.check().is_none());
            let mut delay = u64::MAX;
            for i in 1..=40_000u64 {
                request(&mut m, &mut rng, &format!("{run}-late-{i}"), 0.85, 0.75);
                if m.check().is_some() {
                    delay = i;
                    break;
                }
            }
            delays.push(delay);
        }
        let max = delays.iter().copied().max().unwrap_or(0);
        let mean = delays.iter().sum::<u64>() as f64 / delays.len().max(1) as f64;
        eprintln!("rollback monitor: drop 0.85 -> 0.75 detected after mean {mean:.0}, max {max} requests over {runs} runs");
        assert!(
            max <= 40_000,
            "every run caught within 40 000 requests: {max}"
        );
    }

    #[test]
    fn no_false_alarm_over_a_long_clean_stream_and_slow_common_drift() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(607);
        let mut alarms = 0;
        for run in 0..5 {
            let mut m = RollbackMonitor::new("r", monitored()).unwrap();
            for i in 0..200_000 {
                request(&mut m, &mut rng, &format!("{run}-{i}"), 0.8, 0.8);
            }
            alarms += m.check().is_some() as u32;
        }
        eprintln!("rollback monitor: {alarms} alarms in 5 × 200 000 clean requests");
        assert_eq!(alarms, 0);

        // Baseline and served quality drift down together, 0.90 -> 0.70 over 400k requests:
        // the rolling reference follows; an all-time reference would lag and alarm.
        let mut m = RollbackMonitor::new("r", monitored()).unwrap();
        let mut all_time = RegressionMonitor::new(MonitorConfig::default()).unwrap();
        let n = 400_000;
        let mut all_time_alarm = None;
        for i in 0..n {
            let p = 0.9 - 0.2 * i as f64 / n as f64;
            let id = format!("d{i}");
            let x = bern(&mut rng, p);
            if in_holdback("r", &id, 0.05) {
                m.observe(MonitorArm::Holdback, x);
                all_time.push_holdback(x);
            } else {
                m.observe(MonitorArm::Served, x);
                if all_time.push_served(x) && all_time_alarm.is_none() {
                    all_time_alarm = Some(i);
                }
            }
        }
        eprintln!(
            "common drift 0.90 -> 0.70: rolling-window monitor alarmed: {}; all-time-reference monitor alarmed at request {:?}",
            m.is_alarmed(),
            all_time_alarm
        );
        assert!(!m.is_alarmed());
    }
}
