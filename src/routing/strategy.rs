//! Ordering a routing rule's targets: fallback (as written), weighted, latency (EWMA).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

use dashmap::DashMap;

use crate::config::Strategy;

/// Recent latency per upstream (provider/model), as an exponentially weighted mean.
///
/// Shared by request threads only (updated when an attempt finishes); reloads keep it.
pub struct LatencyTracker {
    ewma_ms: DashMap<String, AtomicU64>,
}

/// Weight of the newest observation.
const ALPHA: f64 = 0.2;

static LATENCY: LazyLock<LatencyTracker> = LazyLock::new(|| LatencyTracker {
    ewma_ms: DashMap::new(),
});

pub fn latency() -> &'static LatencyTracker {
    &LATENCY
}

impl LatencyTracker {
    pub fn observe(&self, key: &str, ms: f64) {
        if let Some(cur) = self.ewma_ms.get(key) {
            let old = f64::from_bits(cur.load(Ordering::Relaxed));
            let new = if old == 0.0 {
                ms
            } else {
                old + ALPHA * (ms - old)
            };
            cur.store(new.to_bits(), Ordering::Relaxed);
            return;
        }
        self.ewma_ms
            .insert(key.to_string(), AtomicU64::new(ms.to_bits()));
    }

    /// `None` until the upstream has been observed.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.ewma_ms
            .get(key)
            .map(|v| f64::from_bits(v.load(Ordering::Relaxed)))
    }
}

/// Order indices `0..n` of targets for one request.
///
/// `weights[i]` are the configured weights, `latency_of(i)` the EWMA (None = unseen:
/// tried first so every target gets measured), `draw` a uniform number in [0,1).
pub fn order(
    strategy: Strategy,
    weights: &[f64],
    latency_of: impl Fn(usize) -> Option<f64>,
    draw: f64,
) -> Vec<usize> {
    let n = weights.len();
    let mut idx: Vec<usize> = (0..n).collect();
    match strategy {
        Strategy::Fallback => {}
        Strategy::Weighted => {
            let total: f64 = weights.iter().sum();
            if total > 0.0 {
                let mut x = draw * total;
                let mut first = n.saturating_sub(1);
                for (i, w) in weights.iter().enumerate() {
                    if x < *w {
                        first = i;
                        break;
                    }
                    x -= w;
                }
                idx.sort_by(|a, b| weights[*b].total_cmp(&weights[*a]).then(a.cmp(b)));
                if let Some(pos) = idx.iter().position(|&i| i == first) {
                    idx.remove(pos);
                    idx.insert(0, first);
                }
            }
        }
        Strategy::Latency => {
            idx.sort_by(|a, b| {
                let la = latency_of(*a).unwrap_or(f64::NEG_INFINITY);
                let lb = latency_of(*b).unwrap_or(f64::NEG_INFINITY);
                la.total_cmp(&lb).then(a.cmp(b))
            });
        }
    }
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weighted_split_follows_weights() {
        let w = [80.0, 20.0];
        let mut first = [0usize; 2];
        for i in 0..1000 {
            let o = order(Strategy::Weighted, &w, |_| None, i as f64 / 1000.0);
            assert_eq!(o.len(), 2);
            first[o[0]] += 1;
        }
        assert_eq!(first, [800, 200]);
    }

    #[test]
    fn latency_prefers_fastest_and_unseen() {
        let lat = [Some(50.0), Some(10.0), None];
        assert_eq!(
            order(Strategy::Latency, &[1.0; 3], |i| lat[i], 0.0),
            vec![2, 1, 0]
        );
        let t = LatencyTracker {
            ewma_ms: DashMap::new(),
        };
        t.observe("a", 100.0);
        t.observe("a", 0.0);
        assert!((t.get("a").unwrap() - 80.0).abs() < 1e-9);
    }

    #[test]
    fn fallback_keeps_order() {
        assert_eq!(
            order(Strategy::Fallback, &[1.0, 5.0, 2.0], |_| None, 0.9),
            vec![0, 1, 2]
        );
    }
}
