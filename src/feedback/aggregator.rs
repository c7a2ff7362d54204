//! Incremental folding of feedback events into per-(route, model) posteriors, and immutable
//! snapshots for publishing through the routing table's `ArcSwap`.
//!
//! The aggregator is owned by one background task; nothing on the request path touches it.
//! Folding is idempotent by event id and order-independent (discounting is by event time), so
//! every instance that folds the same shared feedback converges to the same snapshot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::Serialize;

use super::posterior::{
    normalise, nps_to_unit, split_session_weight, Observation, Posterior, PosteriorConfig,
    PosteriorError, PosteriorState, Scale, Signal,
};

/// One feedback event as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct FeedbackEvent {
    /// Unique id (e.g. the store's feedback row id); a second event with the same id is a duplicate.
    pub id: String,
    /// When the scored thing happened (ms since the epoch): discounting uses this, not arrival.
    pub at_ms: i64,
    pub kind: FeedbackKind,
}

/// What an event says.
#[derive(Clone, Debug, PartialEq)]
pub enum FeedbackKind {
    /// A per-request score: user feedback, a judge score or an admin rating.
    Score {
        route: Arc<str>,
        model: Arc<str>,
        signal: Signal,
        value: f64,
        scale: Scale,
    },
    /// A session NPS (0..=10) crediting each routed request of the session with weight w/k.
    SessionNps {
        nps: f64,
        /// (route, model) of each of the session's k routed requests.
        requests: Vec<(Arc<str>, Arc<str>)>,
    },
}

/// What folding one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum FoldOutcome {
    /// Applied to this many (route, model) posteriors.
    Applied { posteriors: usize },
    /// The event id was folded before; nothing changed.
    Duplicate,
}

/// Totals of a batch fold.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct BatchReport {
    pub applied: usize,
    pub duplicates: usize,
    /// (event id, reason) of events rejected as malformed; they are not marked as seen.
    pub rejected: Vec<(String, String)>,
}

/// An immutable snapshot of all posteriors.
#[derive(Clone, Debug, Default)]
pub struct RoutingStats {
    /// Increases with every snapshot: goes into the routing-table version.
    pub version: u64,
    /// Latest event time folded; every posterior is discounted to it.
    pub as_of_ms: Option<i64>,
    pub posteriors: HashMap<Arc<str>, HashMap<Arc<str>, Posterior>>,
}

impl RoutingStats {
    pub fn get(&self, route: &str, model: &str) -> Option<&Posterior> {
        self.posteriors.get(route)?.get(model)
    }
}

/// Folds feedback into posteriors.
#[derive(Debug)]
pub struct Aggregator {
    cfg: PosteriorConfig,
    /// Total weight w of one session's NPS (spread as w/k over its k requests).
    nps_weight: f64,
    states: HashMap<Arc<str>, HashMap<Arc<str>, PosteriorState>>,
    seen: HashSet<Box<str>>,
    version: u64,
    latest_ms: Option<i64>,
}

impl Aggregator {
    pub fn new(cfg: PosteriorConfig, nps_weight: f64) -> Result<Self, String> {
        cfg.validate()?;
        if !(nps_weight.is_finite() && nps_weight > 0.0) {
            return Err(format!(
                "nps_weight must be finite and > 0, got {nps_weight}"
            ));
        }
        Ok(Aggregator {
            cfg,
            nps_weight,
            states: HashMap::new(),
            seen: HashSet::new(),
            version: 0,
            latest_ms: None,
        })
    }

    pub fn config(&self) -> &PosteriorConfig {
        &self.cfg
    }

    fn state(&mut self, route: &Arc<str>, model: &Arc<str>) -> &mut PosteriorState {
        self.states
            .entry(Arc::clone(route))
            .or_default()
            .entry(Arc::clone(model))
            .or_default()
    }

    /// Set (replace) the benchmark prior of a (route, model) from `conf/`.
    pub fn set_prior(
        &mut self,
        route: &Arc<str>,
        model: &Arc<str>,
        score: f64,
        n0: f64,
        at_ms: i64,
    ) -> Result<(), PosteriorError> {
        let cfg = self.cfg.clone();
        self.state(route, model).set_prior(score, n0, at_ms, &cfg)
    }

    /// Fold one event. Malformed events are rejected without being marked as seen.
    pub fn fold(&mut self, ev: &FeedbackEvent) -> Result<FoldOutcome, PosteriorError> {
        if self.seen.contains(ev.id.as_str()) {
            return Ok(FoldOutcome::Duplicate);
        }
        let posteriors = match &ev.kind {
            FeedbackKind::Score {
                route,
                model,
                signal,
                value,
                scale,
            } => {
                if *signal == Signal::Benchmark || *signal == Signal::SessionNps {
                    return Err(PosteriorError::ScoreOutOfRange {
                        value: *value,
                        scale: signal.as_str(),
                        range: "benchmarks come from conf priors, NPS from session events",
                    });
                }
                let obs = Observation {
                    id: &ev.id,
                    at_ms: ev.at_ms,
                    signal: *signal,
                    value: normalise(*value, *scale)?,
                    weight: 1.0,
                };
                PosteriorState::check(&obs)?;
                let cfg = &self.cfg;
                let st = self
                    .states
                    .entry(Arc::clone(route))
                    .or_default()
                    .entry(Arc::clone(model))
                    .or_default();
                st.apply(&obs, cfg);
                1
            }
            FeedbackKind::SessionNps { nps, requests } => {
                let value = nps_to_unit(*nps)?;
                let share = split_session_weight(self.nps_weight, requests.len())?;
                // Merge the session's requests per (route, model): one observation each, weight
                // share × count, so a session is one sample per model and weighs w in total.
                let mut merged: Vec<(&Arc<str>, &Arc<str>, usize)> = Vec::new();
                for (r, m) in requests {
                    match merged.iter_mut().find(|(r2, m2, _)| *r2 == r && *m2 == m) {
                        Some(e) => e.2 += 1,
                        None => merged.push((r, m, 1)),
                    }
                }
                let cfg = self.cfg.clone();
                for (r, m, count) in &merged {
                    let obs = Observation {
                        id: &ev.id,
                        at_ms: ev.at_ms,
                        signal: Signal::SessionNps,
                        value,
                        weight: share * *count as f64,
                    };
                    self.state(r, m).apply(&obs, &cfg);
                }
                merged.len()
            }
        };
        self.seen.insert(ev.id.as_str().into());
        self.latest_ms = Some(self.latest_ms.map_or(ev.at_ms, |t| t.max(ev.at_ms)));
        Ok(FoldOutcome::Applied { posteriors })
    }

    /// Fold a batch (e.g. everything new in the store since the last cursor).
    pub fn fold_batch<'a>(
        &mut self,
        events: impl IntoIterator<Item = &'a FeedbackEvent>,
    ) -> BatchReport {
        let mut rep = BatchReport::default();
        for ev in events {
            match self.fold(ev) {
                Ok(FoldOutcome::Applied { .. }) => rep.applied += 1,
                Ok(FoldOutcome::Duplicate) => rep.duplicates += 1,
                Err(e) => rep.rejected.push((ev.id.clone(), e.to_string())),
            }
        }
        rep
    }

    /// Every (route key, model) with state.
    pub fn keys(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.states
            .iter()
            .flat_map(|(r, ms)| ms.keys().map(move |m| (Arc::clone(r), Arc::clone(m))))
            .collect()
    }

    /// Newest event time folded.
    pub fn latest_ms(&self) -> Option<i64> {
        self.latest_ms
    }

    pub fn events_folded(&self) -> usize {
        self.seen.len()
    }

    /// An immutable snapshot of every posterior, discounted to the latest event time. Session
    /// NPS is mapped onto each route's per-request quality scale first ([`nps_offset`]).
    pub fn snapshot(&mut self) -> Arc<RoutingStats> {
        self.version += 1;
        let posteriors = self
            .states
            .iter()
            .map(|(r, models)| {
                let offset = nps_offset(models.values());
                let ps = models
                    .iter()
                    .map(|(m, s)| {
                        (
                            Arc::clone(m),
                            s.posterior_mapped(self.latest_ms, &self.cfg, offset),
                        )
                    })
                    .collect();
                (Arc::clone(r), ps)
            })
            .collect();
        Arc::new(RoutingStats {
            version: self.version,
            as_of_ms: self.latest_ms,
            posteriors,
        })
    }
}

/// Session NPS weight a route needs before its NPS offset is learned.
pub const NPS_OFFSET_MIN_WEIGHT: f64 = 5.0;

/// The route's learned offset of session NPS (mapped to [0, 1] as nps/10) against the
/// per-request scores (judge, feedback, admin) of the same models: the precision-weighted mean
/// of (NPS mean − per-request mean) over the route's models. Subtracting it puts NPS on the
/// quality scale it actually has (users answer NPS on their own scale), so only the
/// *differences* NPS sees between models move the posteriors, not its level.
pub fn nps_offset<'a>(states: impl Iterator<Item = &'a PosteriorState>) -> f64 {
    let (mut num, mut den, mut nps_w) = (0.0, 0.0, 0.0);
    for st in states {
        let (wn, wxn) = st.signal_sums(Signal::SessionNps);
        let (mut wr, mut wxr) = (0.0, 0.0);
        for s in Signal::ALL.into_iter().filter(|s| s.per_request()) {
            let (w, wx) = st.signal_sums(s);
            wr += w;
            wxr += wx;
        }
        if wn <= 0.0 || wr <= 0.0 {
            continue;
        }
        nps_w += wn;
        let h = wn * wr / (wn + wr);
        num += h * (wxn / wn - wxr / wr);
        den += h;
    }
    if nps_w < NPS_OFFSET_MIN_WEIGHT || den <= 0.0 {
        return 0.0;
    }
    num / den
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(x: &str) -> Arc<str> {
        Arc::from(x)
    }

    fn score(
        id: &str,
        route: &str,
        model: &str,
        signal: Signal,
        value: f64,
        scale: Scale,
    ) -> FeedbackEvent {
        FeedbackEvent {
            id: id.into(),
            at_ms: 0,
            kind: FeedbackKind::Score {
                route: s(route),
                model: s(model),
                signal,
                value,
                scale,
            },
        }
    }

    #[test]
    fn folds_dedups_and_rejects() {
        let mut a = Aggregator::new(PosteriorConfig::default(), 1.0).unwrap();
        let e = score("f1", "r", "m", Signal::Feedback, 5.0, Scale::OneToFive);
        assert_eq!(a.fold(&e), Ok(FoldOutcome::Applied { posteriors: 1 }));
        assert_eq!(a.fold(&e), Ok(FoldOutcome::Duplicate));
        let bad = score("f2", "r", "m", Signal::Feedback, 6.0, Scale::OneToFive);
        assert!(a.fold(&bad).is_err());
        // A rejected id is not burnt: the corrected event folds.
        let fixed = score("f2", "r", "m", Signal::Feedback, 4.0, Scale::OneToFive);
        assert_eq!(a.fold(&fixed), Ok(FoldOutcome::Applied { posteriors: 1 }));
        assert!(a
            .fold(&score("f3", "r", "m", Signal::Benchmark, 1.0, Scale::Unit))
            .is_err());
        let bad2 = score("f4", "r", "m", Signal::Admin, -1.0, Scale::ZeroToTen);
        let rep = a.fold_batch([&e, &bad2]);
        assert_eq!((rep.applied, rep.duplicates, rep.rejected.len()), (0, 1, 1));
        let snap = a.snapshot();
        let p = snap.get("r", "m").unwrap();
        assert!((p.alpha - 1.0 - 1.75).abs() < 1e-12, "{p:?}");
        assert_eq!(p.samples, 2);
        assert_eq!(snap.version, 1);
        assert_eq!(a.snapshot().version, 2);
    }

    #[test]
    fn nps_credits_every_model_of_the_session() {
        let mut a = Aggregator::new(PosteriorConfig::default(), 1.0).unwrap();
        let ev = FeedbackEvent {
            id: "nps1".into(),
            at_ms: 5,
            kind: FeedbackKind::SessionNps {
                nps: 9.0,
                requests: vec![
                    (s("r"), s("a")),
                    (s("r"), s("b")),
                    (s("r"), s("a")),
                    (s("r"), s("a")),
                ],
            },
        };
        assert_eq!(a.fold(&ev), Ok(FoldOutcome::Applied { posteriors: 2 }));
        let snap = a.snapshot();
        let pa = snap
            .get("r", "a")
            .unwrap()
            .signal(Signal::SessionNps)
            .raw_weight;
        let pb = snap
            .get("r", "b")
            .unwrap()
            .signal(Signal::SessionNps)
            .raw_weight;
        assert!((pa - 0.75).abs() < 1e-12 && (pb - 0.25).abs() < 1e-12);
        let empty = FeedbackEvent {
            id: "nps2".into(),
            at_ms: 0,
            kind: FeedbackKind::SessionNps {
                nps: 5.0,
                requests: vec![],
            },
        };
        assert_eq!(a.fold(&empty), Err(PosteriorError::EmptySession));
    }

    #[test]
    fn nps_is_mapped_onto_the_per_request_scale() {
        // Judge: a at 0.5, b at 0.7. NPS says a 0.8, b 0.95: users answer ~0.27 higher.
        let mut a = Aggregator::new(PosteriorConfig::default(), 1.0).unwrap();
        let mut evs = Vec::new();
        for i in 0..100 {
            for (m, q) in [("a", 0.5), ("b", 0.7)] {
                // Evenly spread successes (no change for the change detector to see).
                let hits = |j: f64| (j * q).floor();
                let v = if hits(i as f64 + 1.0) > hits(i as f64) {
                    1.0
                } else {
                    0.0
                };
                evs.push(score(
                    &format!("{m}{i}"),
                    "r",
                    m,
                    Signal::Judge,
                    v,
                    Scale::Unit,
                ));
            }
        }
        for i in 0..20 {
            for (m, nps) in [("a", 8.0), ("b", 9.5)] {
                evs.push(FeedbackEvent {
                    id: format!("n{m}{i}"),
                    at_ms: 0,
                    kind: FeedbackKind::SessionNps {
                        nps,
                        requests: vec![(s("r"), s(m))],
                    },
                });
            }
        }
        let rep = a.fold_batch(&evs);
        assert!(rep.rejected.is_empty());
        let snap = a.snapshot();
        let (pa, pb) = (snap.get("r", "a").unwrap(), snap.get("r", "b").unwrap());
        let (na, nb) = (pa.signal(Signal::SessionNps), pb.signal(Signal::SessionNps));
        assert!((na.offset - 0.275).abs() < 0.01, "{na:?}");
        // Mapped NPS agrees with the judge, so nobody's weight is cut and the means stay put.
        assert!(
            (na.mean - 0.525).abs() < 0.02 && (nb.mean - 0.675).abs() < 0.02,
            "{na:?} {nb:?}"
        );
        assert!(pa.signal(Signal::Judge).reliability > 0.99);
        assert!((pa.mean() - 0.5).abs() < 0.03 && (pb.mean() - 0.7).abs() < 0.03);
        // Too few sessions: no offset is learned.
        let mut a = Aggregator::new(PosteriorConfig::default(), 1.0).unwrap();
        a.fold_batch(&evs[..200]);
        a.fold_batch(&evs[200..202]);
        let snap = a.snapshot();
        assert_eq!(
            snap.get("r", "a")
                .unwrap()
                .signal(Signal::SessionNps)
                .offset,
            0.0
        );
    }

    proptest! {
        // A session of k requests on one model contributes total weight w regardless of k.
        #[test]
        fn session_weight_is_w_for_any_k(k in 1usize..100, w in 0.1f64..4.0) {
            let mut a = Aggregator::new(PosteriorConfig::default(), w).unwrap();
            let ev = FeedbackEvent {
                id: "n".into(), at_ms: 0,
                kind: FeedbackKind::SessionNps { nps: 10.0, requests: vec![(s("r"), s("m")); k] },
            };
            a.fold(&ev).unwrap();
            let snap = a.snapshot();
            let sig = *snap.get("r", "m").unwrap().signal(Signal::SessionNps);
            prop_assert!((sig.raw_weight - w).abs() < 1e-9);
            prop_assert_eq!(sig.count, 1);
        }

        // Two instances folding the same events in different orders publish the same posteriors.
        #[test]
        fn instances_converge(vals in proptest::collection::vec((0usize..3, 0i64..1_000_000_000, 0.0f64..=1.0), 1..50)) {
            let evs: Vec<FeedbackEvent> = vals.iter().enumerate().map(|(i, (m, t, v))| FeedbackEvent {
                id: format!("e{i}"), at_ms: *t,
                kind: FeedbackKind::Score { route: s("r"), model: s(["a", "b", "c"][*m]), signal: Signal::Judge, value: *v, scale: Scale::Unit },
            }).collect();
            let mut a = Aggregator::new(PosteriorConfig::default(), 1.0).unwrap();
            let mut b = Aggregator::new(PosteriorConfig::default(), 1.0).unwrap();
            a.fold_batch(&evs);
            b.fold_batch(evs.iter().rev());
            b.fold_batch(&evs);
            let (sa, sb) = (a.snapshot(), b.snapshot());
            for m in ["a", "b", "c"] {
                match (sa.get("r", m), sb.get("r", m)) {
                    (Some(x), Some(y)) => {
                        prop_assert!((x.alpha - y.alpha).abs() < 1e-9 && (x.beta - y.beta).abs() < 1e-9);
                    }
                    (None, None) => {}
                    _ => prop_assert!(false, "model {} differs", m),
                }
            }
        }
    }
}
