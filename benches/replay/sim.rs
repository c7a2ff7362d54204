//! The simulated production traffic, its feedback and the metrics, independent of how the router
//! is asked: [`RouterUnderTest`] is implemented in-process ([`super::inproc`]) and, later, over
//! HTTP against the real gateway. Everything here is deterministic for a seed.

use std::collections::VecDeque;

use loopgate::feedback::context::ContextKey;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use super::data::{Dataset, Row};

/// One request of the stream, as the router sees it.
pub struct Request<'a> {
    /// Position in the stream (0-based); feedback refers to it.
    pub seq: u64,
    /// Simulated request time (the HTTP mode sends it; the in-process router does not need it).
    #[allow(dead_code)]
    pub at_ms: i64,
    pub session: u64,
    /// A real conversation (MT-Bench) rather than a group of unrelated prompts.
    #[allow(dead_code)]
    pub conversation: bool,
    pub row: &'a Row,
}

/// What the router served.
#[derive(Clone, Copy, Debug)]
pub struct Routed {
    /// 0 = baseline, 1 = candidate.
    pub model: usize,
    /// Served for exploration (not the exploit pick).
    pub explored: bool,
}

/// Feedback delivered to the router.
#[derive(Clone, Debug)]
pub enum Feedback {
    /// Judge-like score of one request, quality in [0, 1].
    Judge { seq: u64, value: f64 },
    /// Admin rating 0..=10.
    Admin { seq: u64, value: f64 },
    /// Session NPS 0..=10 for the session's requests.
    SessionNps {
        session: u64,
        seqs: Vec<u64>,
        nps: f64,
    },
}

/// A decision unit's state at a snapshot (a bucket, the pool of small buckets, or the route).
#[derive(Clone, Debug)]
pub struct UnitState {
    pub name: String,
    /// Buckets whose traffic this unit decides (per-route mode: all).
    pub members: Vec<ContextKey>,
    /// The exploit pick is the candidate.
    pub promoted: bool,
    /// The gate's confidence P(q_cand ≥ q_base − max_regression).
    pub confidence: f64,
    /// Production samples (baseline, candidate).
    pub samples: [u64; 2],
    /// Rolled back to the baseline by the regression monitor.
    pub pinned: bool,
}

/// The system under test.
pub trait RouterUnderTest {
    fn route(&mut self, req: &Request<'_>) -> Routed;
    /// `at_ms`: when the scored request(s) happened; `now_seq`: the stream position at arrival.
    fn feedback(&mut self, fb: &Feedback, at_ms: i64, now_seq: u64);
    /// Publish a fresh snapshot (like the background aggregator does) and report the units.
    fn refresh(&mut self, now_seq: u64) -> Vec<UnitState>;
    /// Regression-monitor alarms: the buckets concerned and the stream position.
    fn alarms(&self) -> Vec<(Vec<ContextKey>, u64)>;
}

/// How production feedback is simulated. Defaults are documented in the report and docs/benchmarks.md.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SimConfig {
    /// Share of requests scored by an LLM judge.
    pub judge_share: f64,
    /// Requests between a response and its judge score.
    pub judge_delay: u64,
    /// Unrelated single prompts grouped into one user session (for NPS).
    pub session_len: usize,
    /// Share of sessions that answer the NPS survey.
    pub nps_rate: f64,
    /// Requests between a session's end and its NPS.
    pub nps_delay: u64,
    /// NPS = round(10 × mean session quality + N(0, noise²)), clamped to 0..=10.
    pub nps_noise: f64,
    /// Share of requests an admin rates (0..=10 = round(10 × quality)).
    pub admin_rate: f64,
    pub admin_delay: u64,
    /// A fresh snapshot is prepared every this many requests.
    pub snapshot_every: u64,
    /// Passes over the data, each freshly shuffled.
    pub epochs: usize,
    /// Simulated time per request (discounting uses event time).
    pub ms_per_request: i64,
    /// Inject a silent regression of the candidate at this fraction of the stream.
    pub regression_at: Option<f64>,
    /// Or this many requests after the first promotion (runs without a promotion measure
    /// nothing).
    pub regression_after_promotion: Option<u64>,
    /// After the regression: this share of the candidate's correct answers become wrong
    /// (MT-Bench: quality × (1 − share)).
    pub regression_share: f64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            judge_share: 0.2,
            judge_delay: 100,
            session_len: 4,
            nps_rate: 0.3,
            nps_delay: 1_000,
            nps_noise: 1.5,
            admin_rate: 0.005,
            admin_delay: 2_000,
            snapshot_every: 250,
            epochs: 4,
            ms_per_request: 1_000,
            regression_at: None,
            regression_after_promotion: None,
            regression_share: 0.5,
        }
    }
}

/// Sums over a set of requests.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Totals {
    pub n: u64,
    pub cost_served: f64,
    pub cost_base: f64,
    pub cost_cand: f64,
    pub q_served: f64,
    pub q_base: f64,
    pub q_cand: f64,
    pub baseline_calls: u64,
}

impl Totals {
    pub fn add(&mut self, served: usize, q: [f64; 2], cost: [f64; 2]) {
        self.n += 1;
        self.cost_served += cost[served];
        self.cost_base += cost[0];
        self.cost_cand += cost[1];
        self.q_served += q[served];
        self.q_base += q[0];
        self.q_cand += q[1];
        self.baseline_calls += u64::from(served == 0);
    }
    pub fn cost_pct(&self) -> f64 {
        pct(self.cost_served, self.cost_base)
    }
    pub fn quality_pct(&self) -> f64 {
        pct(self.q_served, self.q_base)
    }
    pub fn baseline_call_pct(&self) -> f64 {
        pct(self.baseline_calls as f64, self.n as f64)
    }
    /// RouteLLM's performance gap recovered: (q − q_cheap)/(q_strong − q_cheap).
    pub fn pgr(&self) -> f64 {
        let d = self.q_base - self.q_cand;
        if d.abs() < 1e-12 {
            f64::NAN
        } else {
            (self.q_served - self.q_cand) / d
        }
    }
}

pub fn pct(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        100.0 * a / b
    } else {
        f64::NAN
    }
}

/// Ground truth per bucket over the rows of the stream: mean quality of each model.
#[derive(Clone, Debug)]
pub struct Truth {
    pub n: [u64; 11],
    pub sum_q: [[f64; 2]; 11],
}

impl Truth {
    pub fn new(rows: &[Row]) -> Truth {
        let mut t = Truth {
            n: [0; 11],
            sum_q: [[0.0; 2]; 11],
        };
        for r in rows {
            let k = r.key.index();
            t.n[k] += 1;
            t.sum_q[k][0] += r.quality[0];
            t.sum_q[k][1] += r.quality[1];
        }
        t
    }
    /// True mean gap q_base − q_cand over the members' rows (traffic-weighted).
    pub fn gap(&self, members: &[ContextKey]) -> f64 {
        let (mut n, mut d) = (0u64, 0.0);
        for k in members {
            n += self.n[k.index()];
            d += self.sum_q[k.index()][0] - self.sum_q[k.index()][1];
        }
        if n == 0 {
            0.0
        } else {
            d / n as f64
        }
    }
}

/// Confidence bins of the reliability table.
pub const BINS: [f64; 7] = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99, 1.0000001];

/// A promotion seen at a snapshot.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TimelinePoint {
    pub seq: u64,
    pub unit: String,
    pub promoted: bool,
    pub confidence: f64,
    pub within: bool,
}

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RegressionResult {
    pub at: u64,
    /// Buckets served by the candidate (promoted) when the regression started.
    pub promoted_buckets: Vec<String>,
    /// Requests from the regression until the monitor's first alarm in one of them.
    pub monitor_delay: Option<u64>,
    /// Requests until the gate closed (no longer promoted) in all of them.
    pub gate_delay: Option<u64>,
}

/// Everything one run measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RunResult {
    pub overall: Totals,
    pub per_dataset: [Totals; 3],
    pub per_bucket: [Totals; 11],
    pub explored: u64,
    /// Unit-snapshots whose exploit pick was the candidate, and those truly beyond the limit.
    pub promoted_snapshots: u64,
    pub bad_promoted_snapshots: u64,
    /// Transitions baseline → candidate per unit, and the bad ones.
    pub promotions: u64,
    pub bad_promotions: u64,
    /// Among promoted snapshots with reported confidence ≥ 0.95: count and truly within.
    pub conf95: u64,
    pub conf95_within: u64,
    /// Per confidence bin, over unit-snapshots with ≥ min_samples: (Σ confidence, n, within).
    pub reliability: Vec<(f64, u64, u64)>,
    pub first_promotion: Option<u64>,
    /// Monitor alarms before any injected regression (false alarms).
    pub false_alarms: u64,
    pub regression: Option<RegressionResult>,
    /// Every promotion (transition to the candidate): unit, request, confidence, true gap.
    pub promotion_log: Vec<(String, u64, f64, f64)>,
    #[serde(skip)]
    pub timeline: Vec<TimelinePoint>,
}

/// The shuffled stream: row indices, session ids, and whether a session is a conversation.
pub struct Stream {
    pub order: Vec<usize>,
    pub session: Vec<u64>,
    pub conversation: Vec<bool>,
    /// The request is its session's last.
    pub last: Vec<bool>,
}

/// Shuffle conversations as units (MT-Bench turn 2 follows turn 1), then group single prompts
/// into sessions of `session_len`. Each of `epochs` passes is a fresh shuffle of the same
/// prompts (stationary traffic drawn from the data set).
pub fn make_stream(rows: &[Row], session_len: usize, epochs: usize, seed: u64) -> Stream {
    let mut units: Vec<Vec<usize>> = Vec::new();
    let mut conv: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        match &r.session {
            Some(s) => {
                if let Some(&u) = conv.get(s.as_str()) {
                    units[u].push(i);
                } else {
                    conv.insert(s.as_str(), units.len());
                    units.push(vec![i]);
                }
            }
            None => units.push(vec![i]),
        }
    }
    for u in &mut units {
        u.sort_by_key(|&i| rows[i].turn);
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x005e_ed0f_5717);
    let mut s = Stream {
        order: Vec::with_capacity(rows.len()),
        session: Vec::with_capacity(rows.len()),
        conversation: Vec::with_capacity(rows.len()),
        last: Vec::new(),
    };
    let mut next_session = 0u64;
    let mut open: Option<(u64, usize)> = None;
    let mut all_units = Vec::with_capacity(units.len() * epochs.max(1));
    for _ in 0..epochs.max(1) {
        units.shuffle(&mut rng);
        all_units.extend(units.iter().cloned());
    }
    for u in all_units {
        let is_conv = rows[u[0]].session.is_some();
        let sid = if is_conv {
            next_session += 1;
            next_session
        } else {
            match open {
                Some((id, n)) if n < session_len.max(1) => {
                    open = Some((id, n + 1));
                    id
                }
                _ => {
                    next_session += 1;
                    open = Some((next_session, 1));
                    next_session
                }
            }
        };
        for i in u {
            s.order.push(i);
            s.session.push(sid);
            s.conversation.push(is_conv);
        }
    }
    let mut seen = std::collections::HashSet::new();
    s.last = vec![false; s.order.len()];
    for pos in (0..s.order.len()).rev() {
        s.last[pos] = seen.insert(s.session[pos]);
    }
    s
}

fn gauss(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.gen::<f64>().max(1e-12);
    let u2: f64 = rng.gen();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// Per-run settings the metrics need.
pub struct RunSpec<'a> {
    pub rows: &'a [Row],
    pub truth: &'a Truth,
    pub max_regression: f64,
    pub min_samples: u64,
    pub seed: u64,
    pub sim: &'a SimConfig,
    pub keep_timeline: bool,
}

/// Replay the stream through `router` and measure.
pub fn run(spec: &RunSpec<'_>, router: &mut dyn RouterUnderTest) -> RunResult {
    let rows = spec.rows;
    let sim = spec.sim;
    let stream = make_stream(rows, sim.session_len, sim.epochs, spec.seed);
    let len = stream.order.len() as u64;
    let mut rng = StdRng::seed_from_u64(spec.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xfeed);
    let mut reg_at = sim.regression_at.map(|f| (f * len as f64) as u64);
    let mut res = RunResult {
        reliability: vec![(0.0, 0, 0); BINS.len() - 1],
        ..RunResult::default()
    };
    // Pending feedback (due seq, feedback, event time); each kind has a fixed delay, so FIFO.
    let mut judge_q: VecDeque<(u64, Feedback, i64)> = VecDeque::new();
    let mut admin_q: VecDeque<(u64, Feedback, i64)> = VecDeque::new();
    let mut nps_q: VecDeque<(u64, Feedback, i64)> = VecDeque::new();
    // Open sessions: id → (seqs, Σ quality).
    let mut sessions: std::collections::HashMap<u64, (Vec<u64>, f64)> =
        std::collections::HashMap::new();
    let mut was_promoted: std::collections::HashMap<String, bool> =
        std::collections::HashMap::new();
    let mut promoted_buckets_at_reg: Option<Vec<ContextKey>> = None;
    let mut served_quality: Vec<f64> = Vec::with_capacity(len as usize);

    for (pos, &ri) in stream.order.iter().enumerate() {
        let seq = pos as u64;
        let at_ms = seq as i64 * sim.ms_per_request;
        for q in [&mut judge_q, &mut admin_q, &mut nps_q] {
            while q.front().is_some_and(|(due, _, _)| *due <= seq) {
                if let Some((_, fb, t)) = q.pop_front() {
                    router.feedback(&fb, t, seq);
                }
            }
        }
        if seq.is_multiple_of(sim.snapshot_every.max(1)) {
            let units = router.refresh(seq);
            observe_snapshot(spec, seq, &units, &mut res, &mut was_promoted);
            if reg_at.is_none() {
                if let (Some(d), Some(first)) =
                    (sim.regression_after_promotion, res.first_promotion)
                {
                    reg_at = Some(first + d);
                }
            }
            if let Some(t) = reg_at {
                if seq >= t {
                    let current: Vec<ContextKey> = units
                        .iter()
                        .filter(|u| u.promoted)
                        .flat_map(|u| u.members.iter().copied())
                        .collect();
                    let r = res.regression.get_or_insert_with(|| RegressionResult {
                        at: t,
                        ..RegressionResult::default()
                    });
                    if let Some(at_t) = &promoted_buckets_at_reg {
                        if r.gate_delay.is_none()
                            && !at_t.is_empty()
                            && !at_t.iter().any(|k| current.contains(k))
                        {
                            r.gate_delay = Some(seq - t);
                        }
                    } else {
                        r.promoted_buckets =
                            current.iter().map(|k| k.as_str().to_string()).collect();
                        promoted_buckets_at_reg = Some(current);
                    }
                }
            }
        }
        let row = &rows[ri];
        let session = stream.session[pos];
        let req = Request {
            seq,
            at_ms,
            session,
            conversation: stream.conversation[pos],
            row,
        };
        let routed = router.route(&req);
        let m = routed.model.min(1);
        let mut q = row.quality;
        if reg_at.is_some_and(|t| seq >= t) {
            q[1] = if row.dataset == Dataset::MtBench {
                q[1] * (1.0 - sim.regression_share)
            } else if q[1] >= 1.0 && rng.gen::<f64>() < sim.regression_share {
                0.0
            } else {
                q[1]
            };
        }
        res.overall.add(m, q, row.cost);
        res.per_dataset[row.dataset.index()].add(m, q, row.cost);
        res.per_bucket[row.key.index()].add(m, q, row.cost);
        res.explored += u64::from(routed.explored);
        served_quality.push(q[m]);

        if rng.gen::<f64>() < sim.judge_share {
            judge_q.push_back((
                seq + sim.judge_delay,
                Feedback::Judge { seq, value: q[m] },
                at_ms,
            ));
        }
        if rng.gen::<f64>() < sim.admin_rate {
            admin_q.push_back((
                seq + sim.admin_delay,
                Feedback::Admin {
                    seq,
                    value: (10.0 * q[m]).round(),
                },
                at_ms,
            ));
        }
        let entry = sessions.entry(session).or_insert_with(|| (Vec::new(), 0.0));
        entry.0.push(seq);
        entry.1 += q[m];
        let done = stream.last[pos];
        if done {
            if let Some((seqs, sum)) = sessions.remove(&session) {
                if rng.gen::<f64>() < sim.nps_rate {
                    let mean = sum / seqs.len() as f64;
                    let nps = (10.0 * mean + sim.nps_noise * gauss(&mut rng))
                        .round()
                        .clamp(0.0, 10.0);
                    nps_q.push_back((
                        seq + sim.nps_delay,
                        Feedback::SessionNps { session, seqs, nps },
                        at_ms,
                    ));
                }
            }
        }
    }
    // Monitor alarms: before the regression they are false alarms.
    let alarms = router.alarms();
    for (members, at) in &alarms {
        match (reg_at, &promoted_buckets_at_reg) {
            (Some(t), Some(at_t)) if *at >= t => {
                if members.iter().any(|k| at_t.contains(k)) {
                    if let Some(r) = res.regression.as_mut() {
                        let d = at - t;
                        r.monitor_delay = Some(r.monitor_delay.map_or(d, |x| x.min(d)));
                    }
                }
            }
            _ => res.false_alarms += 1,
        }
    }
    res
}

fn observe_snapshot(
    spec: &RunSpec<'_>,
    seq: u64,
    units: &[UnitState],
    res: &mut RunResult,
    was: &mut std::collections::HashMap<String, bool>,
) {
    for u in units {
        let gap = spec.truth.gap(&u.members);
        let within = gap <= spec.max_regression + 1e-12;
        if u.samples[1] >= spec.min_samples && u.samples[0] >= spec.min_samples && !u.pinned {
            let b = BINS
                .windows(2)
                .position(|w| u.confidence >= w[0] && u.confidence < w[1])
                .unwrap_or(BINS.len() - 2);
            res.reliability[b].0 += u.confidence;
            res.reliability[b].1 += 1;
            res.reliability[b].2 += u64::from(within);
        }
        let prev = was.insert(u.name.clone(), u.promoted).unwrap_or(false);
        if u.promoted {
            res.promoted_snapshots += 1;
            res.bad_promoted_snapshots += u64::from(!within);
            if u.confidence >= 0.95 {
                res.conf95 += 1;
                res.conf95_within += u64::from(within);
            }
            if !prev {
                res.promotions += 1;
                res.bad_promotions += u64::from(!within);
                res.promotion_log
                    .push((u.name.clone(), seq, u.confidence, gap));
            }
            if res.first_promotion.is_none() {
                res.first_promotion = Some(seq);
            }
        }
        if spec.keep_timeline && (u.promoted || prev) {
            res.timeline.push(TimelinePoint {
                seq,
                unit: u.name.clone(),
                promoted: u.promoted,
                confidence: u.confidence,
                within,
            });
        }
    }
}
