//! Safe rollout building blocks (issue 6): signed webhooks, the LLM-as-judge's pure parts,
//! canary experiments and automatic regression rollback.
//!
//! Everything here is self-contained and tested in isolation; the proxy, the admin API and
//! the background services wire it in.
//!
//! - [`webhook`]: bounded, never-blocking event queue drained by a signed, retrying sender
//! - [`judge`]: versioned rubric, judge request builder, tolerant-but-strict reply parser,
//!   deterministic sampling and a per-route daily budget
//! - [`canary`]: the canary experiment state machine on an always-valid confidence sequence
//! - [`monitor`]: CUSUM rollback monitor for live routes against a baseline holdback

pub mod canary;
pub mod jobs;
pub mod judge;
pub mod monitor;
pub mod webhook;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A stable uniform number in [0, 1) for `(domain, a, b)`.
///
/// Stable across processes, machines and releases (FNV-1a 64 with a splitmix64 finaliser,
/// no random seed), so every gateway instance puts the same session in the same arm.
/// The domain separates uses: canary arms, holdbacks and judge sampling are independent.
pub fn stable_unit(domain: &str, a: &str, b: &str) -> f64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    for part in [domain.as_bytes(), a.as_bytes(), b.as_bytes()] {
        for &byte in part {
            h ^= byte as u64;
            h = h.wrapping_mul(PRIME);
        }
        // A separator that cannot occur inside UTF-8 text, so ("ab", "c") != ("a", "bc").
        h ^= 0xff;
        h = h.wrapping_mul(PRIME);
    }
    // splitmix64 finaliser: FNV's low bits are weak for short, similar keys.
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    // Top 53 bits -> [0, 1).
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Exponential backoff with jitter: attempt k (1-based) waits a uniform time in
/// [d/2, d] where d = min(cap, base·2^(k−1)) ("equal jitter": never zero, still spread).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    pub base_ms: u64,
    pub cap_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base_ms: 500,
            cap_ms: 60_000,
        }
    }
}

impl Backoff {
    /// The un-jittered ceiling for retry `attempt` (1 = the first retry).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(32);
        let d = self.base_ms.saturating_mul(1u64 << exp).min(self.cap_ms);
        Duration::from_millis(d)
    }

    /// The wait before retry `attempt`, given `unit` uniform in [0, 1) (the caller's RNG,
    /// so this stays pure and testable).
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let c = self.ceiling(attempt).as_secs_f64();
        let u = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.5
        };
        Duration::from_secs_f64(c * (0.5 + 0.5 * u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_unit_is_stable_separated_and_uniform() {
        assert_eq!(stable_unit("x", "a", "b"), stable_unit("x", "a", "b"));
        assert_ne!(stable_unit("x", "ab", "c"), stable_unit("x", "a", "bc"));
        assert_ne!(stable_unit("x", "a", "b"), stable_unit("y", "a", "b"));
        // Sequential ids spread evenly over ten buckets.
        let mut buckets = [0u32; 10];
        for i in 0..100_000 {
            let u = stable_unit("canary", "exp-1", &format!("req-{i}"));
            assert!((0.0..1.0).contains(&u));
            buckets[(u * 10.0) as usize] += 1;
        }
        for b in buckets {
            assert!((9_500..10_500).contains(&b), "{buckets:?}");
        }
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let b = Backoff {
            base_ms: 100,
            cap_ms: 1_000,
        };
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(5), Duration::from_millis(1_000));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(1_000));
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, f64::NAN), Duration::from_millis(300));
    }
}
