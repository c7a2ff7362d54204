//! The per-route prompt index: labelled examples as quantised unit vectors, an inverted-file
//! (IVF) partition for sub-linear nearest-neighbour search, and the per-prompt decision.
//!
//! Built off the request path ([`PromptIndex::build`]) from the route's labelled examples;
//! queried on it ([`PromptIndex::decide`]) with no allocation: fixed-size arrays on the stack.
//!
//! Estimator. For model m and prompt x, the `k` most similar labelled examples served by m give
//! kernel-weighted evidence (κ = weight · max(cos, 0)) on top of a prior at m's route-level mean
//! with `prior_weight` pseudo-observations: a Beta(a, b) per (prompt, model). Its mean is q̂_m(x)
//! and its variance the uncertainty; with no close neighbours the estimate falls back to the
//! route-level mean, with its (wide) uncertainty.
//!
//! Rule. (1) Strict: the cheapest allowed candidate whose regression at the route's confidence
//! is within the limit *for this prompt* — q̂_b(x) − q̂_m(x) + z·sd ≤ max_regression, with
//! z = Φ⁻¹(min_confidence). (2) Budgeted: otherwise the route's *partner* candidate when its
//! regression at confidence for this prompt is at most τ (weakly supported prompts stay home). The partner and τ are calibrated in the
//! background ([`PromptIndex::build`]) on *measured* outcomes: for the policy at τ, the average
//! regression over the route's labelled prompts plus z standard errors must stay within half of
//! `max_regression` (exploration may spend the other half) — the quality budget is spent on the
//! prompts predicted to lose least.
//! (3) Else the baseline. Exploration (bounded in quality terms, only on requests known to get a
//! score) gathers the labels the calibration needs.

use std::sync::Arc;

use serde::Serialize;

use super::features::{RawFeatures, DIM, HASHED};

/// Most models a route's prompt router considers (baseline included).
pub const MAX_MODELS: usize = 32;
/// Most neighbours per model.
pub const MAX_K: usize = 16;
/// Neighbours kept for the trace.
pub const TRACE_NEIGHBOURS: usize = 5;
/// Rows compared per query (IVF probes stop there).
pub const MAX_ROWS: usize = 192;
/// Fixed-point scale of quantised unit vectors (components in [-1, 1]).
const Q: f32 = 8191.0;
const Q2: f32 = Q * Q;

/// A labelled example (background memory).
#[derive(Clone, Debug)]
pub struct Example {
    pub request_id: Arc<str>,
    pub raw: Box<RawFeatures>,
    /// Normalised embedding, when the route uses an embeddings model and the call succeeded.
    pub embedding: Option<Arc<[f32]>>,
    pub model: Arc<str>,
    /// Outcome on [0, 1].
    pub reward: f32,
    /// Evidence weight (signal reliability).
    pub weight: f32,
    pub at_ms: i64,
    /// Served by prompt-level exploration (its regression is charged to the exploration budget).
    pub explored: bool,
}

/// What the index needs to know about a route's models.
#[derive(Clone, Debug)]
pub struct ModelFacts {
    pub model: Arc<str>,
    pub cost: f64,
    /// Route-level quality estimate used when a model has no labels (the route's posterior).
    pub prior_mean: f64,
    /// May the prompt router serve it (route cost / latency rows pass)?
    pub allowed: bool,
}

/// Tunables (from the route's `[routes.<name>.prompt_routing]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IndexParams {
    pub k: usize,
    pub prior_weight: f64,
    pub max_regression: f64,
    pub min_confidence: f64,
    pub explore: f64,
    pub explore_labels: u32,
    pub nprobe: usize,
    /// Largest predicted regression of one prompt the budgeted rule accepts.
    pub max_prompt_regression: f64,
}

/// Quantised unit vectors with an IVF partition.
#[derive(Debug, Default)]
pub struct VecIndex {
    pub dim: usize,
    /// Row-major, grouped by cluster.
    vecs: Vec<i16>,
    /// Example index (into `PromptIndex::meta`) of each row.
    rows: Vec<u32>,
    centroids: Vec<i16>,
    /// Row range of each cluster.
    ranges: Vec<(u32, u32)>,
}

/// Σ a·b over equal-length i16 slices; |Σ| ≤ Q² by Cauchy–Schwarz (unit vectors).
#[inline]
fn dot(a: &[i16], b: &[i16]) -> i32 {
    let n = a.len().min(b.len());
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    let mut s = {
        use std::arch::x86_64::{
            __m128i, _mm_add_epi32, _mm_cvtsi128_si32, _mm_loadu_si128, _mm_madd_epi16,
            _mm_setzero_si128, _mm_shuffle_epi32,
        };
        // SAFETY: SSE2 is part of the x86_64 baseline; every load reads 8 i16 within
        // `a[..n]` / `b[..n]` (i + 8 <= n), unaligned loads allowed.
        unsafe {
            let mut acc = _mm_setzero_si128();
            while i + 8 <= n {
                let x = _mm_loadu_si128(a.as_ptr().add(i) as *const __m128i);
                let y = _mm_loadu_si128(b.as_ptr().add(i) as *const __m128i);
                acc = _mm_add_epi32(acc, _mm_madd_epi16(x, y));
                i += 8;
            }
            let hi = _mm_shuffle_epi32(acc, 0b01_00_11_10);
            let acc = _mm_add_epi32(acc, hi);
            let hi = _mm_shuffle_epi32(acc, 0b10_11_00_01);
            _mm_cvtsi128_si32(_mm_add_epi32(acc, hi))
        }
    };
    #[cfg(not(target_arch = "x86_64"))]
    let mut s = 0i32;
    while i < n {
        s += i32::from(a[i]) * i32::from(b[i]);
        i += 1;
    }
    s
}

fn quantise(v: &[f32], out: &mut [i16]) -> bool {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !(n.is_finite() && n > 0.0) {
        out.iter_mut().for_each(|o| *o = 0);
        return false;
    }
    for (o, x) in out.iter_mut().zip(v) {
        *o = (x / n * Q).round().clamp(-Q, Q) as i16;
    }
    true
}

impl VecIndex {
    /// Partition `vectors` (unit, f32) into ≈ √n clusters by a few Lloyd iterations from evenly
    /// spaced seeds: deterministic, O(n·√n·dim) per build.
    fn build(dim: usize, vectors: &[(u32, Vec<f32>)]) -> VecIndex {
        let n = vectors.len();
        let mut idx = VecIndex {
            dim,
            ..Default::default()
        };
        if n == 0 {
            return idx;
        }
        let c = ((n as f64).sqrt() as usize).clamp(1, 32);
        let mut cents: Vec<Vec<f32>> = (0..c).map(|i| vectors[i * n / c].1.clone()).collect();
        let mut assign = vec![0usize; n];
        for _ in 0..4 {
            for (a, (_, v)) in assign.iter_mut().zip(vectors) {
                let mut best = (f32::NEG_INFINITY, 0);
                for (j, ce) in cents.iter().enumerate() {
                    let s: f32 = ce.iter().zip(v).map(|(x, y)| x * y).sum();
                    if s > best.0 {
                        best = (s, j);
                    }
                }
                *a = best.1;
            }
            let mut sums = vec![vec![0f32; dim]; c];
            for (a, (_, v)) in assign.iter().zip(vectors) {
                for (s, x) in sums[*a].iter_mut().zip(v) {
                    *s += x;
                }
            }
            for (ce, s) in cents.iter_mut().zip(sums) {
                let norm = s.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    *ce = s.into_iter().map(|x| x / norm).collect();
                }
            }
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| assign[i]);
        let mut counts = vec![0u32; c];
        for &a in &assign {
            counts[a] += 1;
        }
        let mut start = 0u32;
        idx.ranges = counts
            .iter()
            .map(|&k| {
                let r = (start, start + k);
                start += k;
                r
            })
            .collect();
        idx.vecs = vec![0; n * dim];
        idx.rows = Vec::with_capacity(n);
        for (r, &i) in order.iter().enumerate() {
            quantise(&vectors[i].1, &mut idx.vecs[r * dim..(r + 1) * dim]);
            idx.rows.push(vectors[i].0);
        }
        idx.centroids = vec![0; c * dim];
        for (j, ce) in cents.iter().enumerate() {
            quantise(ce, &mut idx.centroids[j * dim..(j + 1) * dim]);
        }
        idx
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Visit (row's example index, cosine) for the rows of the `nprobe` clusters nearest `q`.
    #[inline]
    fn search(&self, q: &[i16], nprobe: usize, mut visit: impl FnMut(u32, f32)) {
        let c = self.ranges.len();
        if c == 0 || q.len() != self.dim {
            return;
        }
        let mut best = [(i32::MIN, 0usize); 8];
        let np = nprobe.clamp(1, best.len()).min(c);
        for j in 0..c {
            let s = dot(q, &self.centroids[j * self.dim..(j + 1) * self.dim]);
            if s > best[np - 1].0 {
                let mut p = np - 1;
                while p > 0 && best[p - 1].0 < s {
                    best[p] = best[p - 1];
                    p -= 1;
                }
                best[p] = (s, j);
            }
        }
        // At most MAX_ROWS rows, nearest clusters first: the cost stays bounded however
        // unevenly the prompts cluster.
        let mut budget = MAX_ROWS;
        for &(s, j) in &best[..np] {
            if s == i32::MIN || budget == 0 {
                continue;
            }
            let (a, b) = self.ranges[j];
            let b = b.min(a + budget as u32);
            budget -= (b - a) as usize;
            for r in a as usize..b as usize {
                let s = dot(q, &self.vecs[r * self.dim..(r + 1) * self.dim]);
                visit(self.rows[r], s as f32 * (1.0 / Q2));
            }
        }
    }
}

/// Per-example metadata of the index.
#[derive(Clone, Debug)]
pub struct ExampleMeta {
    pub request_id: Arc<str>,
    pub model: u16,
    pub reward: f32,
    pub weight: f32,
}

/// Where the query vector came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FeatureSource {
    InProcess,
    Embeddings,
}

/// One model's per-prompt estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ModelEstimate {
    pub quality: f32,
    pub sd: f32,
    /// Neighbours of this model used (with positive similarity).
    pub neighbours: u8,
    /// Regression vs the baseline at the route's confidence (q̂_b − q̂_m + z·sd).
    pub regression_ucb: f32,
    pub eligible: bool,
}

/// A neighbour that drove the estimate (for the trace).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Neighbour {
    pub example: u32,
    pub similarity: f32,
}

/// How the prompt router picked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromptPickKind {
    /// No candidate eligible: baseline.
    Baseline,
    /// The cheapest eligible candidate.
    Eligible,
    /// Exploration of a plausibly eligible candidate with few labels.
    Explored,
}

/// The per-prompt decision: `Copy`, no heap; the trace is rendered from it and the index.
#[derive(Clone, Copy, Debug)]
pub struct PromptPick {
    /// Index into the index's models (0: baseline).
    pub chosen: usize,
    pub kind: PromptPickKind,
    pub source: FeatureSource,
    pub n_models: usize,
    pub estimates: [ModelEstimate; MAX_MODELS],
    pub neighbours: [Neighbour; TRACE_NEIGHBOURS],
    pub n_neighbours: usize,
    /// Probability of this pick given the prompt.
    pub propensity: f64,
}

/// A route's published prompt index.
#[derive(Debug)]
pub struct PromptIndex {
    pub route: Arc<str>,
    pub models: Vec<ModelFacts>,
    pub params: IndexParams,
    /// Learned per-dimension weights (inverse document frequency over the labelled prompts).
    pub idf: [f32; DIM],
    pub inproc: VecIndex,
    /// Index over examples that have an embedding (same `meta`).
    pub embedded: VecIndex,
    pub meta: Vec<ExampleMeta>,
    /// Route-level mean and labelled weight per model (shrinkage targets).
    pub route_mean: Vec<(f64, f64)>,
    /// z = Φ⁻¹(min_confidence).
    pub z: f64,
    /// The candidate that takes the prompts the quality budget allows (see [`Self::calibrate`]).
    pub partner: Option<usize>,
    /// Calibrated threshold on the partner's regression at confidence q̂_b(x) − q̂_p(x) + z·sd.
    pub tau: f64,
    /// Policy's measured average regression at the route's confidence and its saving share at
    /// λ, over the labelled prompts.
    pub est_regression: f64,
    pub est_saving: f64,
    /// Labels per model.
    pub labels: Vec<u32>,
    /// Exploration probability in effect (within the exploration budget).
    pub explore_rate: f64,
    /// Per example: served by prompt-level exploration.
    explored: Vec<bool>,
    pub version: u64,
}

/// Normal quantile (Acklam's rational approximation, |ε| < 1.2e-9).
pub fn normal_quantile(p: f64) -> f64 {
    let p = p.clamp(1e-12, 1.0 - 1e-12);
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    let pl = 0.02425;
    if p < pl {
        let q = (-2.0 * p.ln()).sqrt();
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    } else if p <= 1.0 - pl {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    } else {
        -normal_quantile(1.0 - p)
    }
}

/// Top-k per model, on the stack.
struct Hits {
    n: [u8; MAX_MODELS],
    h: [[(f32, u32); MAX_K]; MAX_MODELS],
}

impl Hits {
    fn new() -> Hits {
        Hits {
            n: [0; MAX_MODELS],
            h: [[(0.0, 0); MAX_K]; MAX_MODELS],
        }
    }

    #[inline]
    fn push(&mut self, m: usize, k: usize, s: f32, e: u32) {
        let n = self.n[m] as usize;
        let row = &mut self.h[m];
        if n < k {
            let mut p = n;
            while p > 0 && row[p - 1].0 < s {
                row[p] = row[p - 1];
                p -= 1;
            }
            row[p] = (s, e);
            self.n[m] += 1;
        } else if s > row[k - 1].0 {
            let mut p = k - 1;
            while p > 0 && row[p - 1].0 < s {
                row[p] = row[p - 1];
                p -= 1;
            }
            row[p] = (s, e);
        }
    }
}

/// A query vector, quantised with the index's weights.
pub struct Query {
    pub v: [i16; DIM],
}

impl PromptIndex {
    /// Build from labelled examples (oldest first). `examples` beyond the route's models are
    /// ignored; `version` tags the snapshot.
    pub fn build(
        route: Arc<str>,
        models: Vec<ModelFacts>,
        params: IndexParams,
        examples: &[Example],
        version: u64,
    ) -> PromptIndex {
        let models: Vec<ModelFacts> = models.into_iter().take(MAX_MODELS).collect();
        let mi = |m: &str| models.iter().position(|f| &*f.model == m);
        let usable: Vec<(&Example, u16)> = examples
            .iter()
            .filter_map(|e| mi(&e.model).map(|i| (e, i as u16)))
            .collect();
        // Inverse document frequency of each hashed dimension over the labelled prompts.
        let mut df = [0u32; DIM];
        for (e, _) in &usable {
            for (d, x) in e.raw.v[..HASHED].iter().enumerate() {
                df[d] += u32::from(*x != 0.0);
            }
        }
        let n = usable.len() as f32;
        let mut idf = [1.0f32; DIM];
        for d in 0..HASHED {
            idf[d] = ((n + 1.0) / (df[d] as f32 + 1.0)).ln() + 1.0;
        }
        // Structural dimensions weigh like a handful of words.
        for w in &mut idf[HASHED..] {
            *w = 1.5;
        }
        let mut meta = Vec::with_capacity(usable.len());
        let mut vin = Vec::with_capacity(usable.len());
        let mut vemb = Vec::new();
        let mut labels = vec![0u32; models.len()];
        let mut sums = vec![(0f64, 0f64); models.len()];
        for (i, (e, m)) in usable.iter().enumerate() {
            meta.push(ExampleMeta {
                request_id: Arc::clone(&e.request_id),
                model: *m,
                reward: e.reward.clamp(0.0, 1.0),
                weight: e.weight.max(0.0),
            });
            labels[*m as usize] += 1;
            sums[*m as usize].0 += f64::from(e.weight) * f64::from(e.reward);
            sums[*m as usize].1 += f64::from(e.weight);
            vin.push((i as u32, weigh(&e.raw, &idf)));
            if let Some(x) = &e.embedding {
                vemb.push((i as u32, x.to_vec()));
            }
        }
        let emb_dim = vemb.first().map_or(0, |(_, v)| v.len());
        vemb.retain(|(_, v)| v.len() == emb_dim);
        let route_mean = models
            .iter()
            .zip(&sums)
            .map(|(f, &(s, w))| {
                // Beta prior worth one observation at the route posterior's mean.
                ((f.prior_mean + s) / (1.0 + w), w)
            })
            .collect();
        let mut idx = PromptIndex {
            route,
            params,
            idf,
            inproc: VecIndex::build(DIM, &vin),
            embedded: VecIndex::build(emb_dim, &vemb),
            meta,
            route_mean,
            z: normal_quantile(params.min_confidence),
            partner: None,
            tau: f64::NEG_INFINITY,
            est_regression: 0.0,
            est_saving: 0.0,
            labels,
            explore_rate: 0.0,
            explored: usable.iter().map(|(e, _)| e.explored).collect(),
            models,
            version,
        };
        idx.calibrate(&vin);
        idx.explore_rate = idx.exploration_rate(&vin);
        idx
    }

    /// Weighted, quantised query vector for raw features.
    pub fn query(&self, raw: &RawFeatures) -> Query {
        let mut v = [0i16; DIM];
        let mut w = [0f32; DIM];
        for ((o, x), k) in w.iter_mut().zip(&raw.v).zip(&self.idf) {
            *o = x * k;
        }
        quantise(&w, &mut v);
        Query { v }
    }

    // Models, estimates and hits are parallel arrays indexed by model.
    #[allow(clippy::needless_range_loop)]
    /// Per-model Beta evidence for a query (excluding example `skip`, for leave-one-out).
    fn estimates(
        &self,
        q: &[i16],
        index: &VecIndex,
        skip: Option<u32>,
        out: &mut [ModelEstimate; MAX_MODELS],
        trace: Option<&mut ([Neighbour; TRACE_NEIGHBOURS], usize)>,
    ) {
        let nm = self.models.len();
        let k = self.params.k.clamp(1, MAX_K);
        let mut hits = Hits::new();
        index.search(q, self.params.nprobe, |e, s| {
            if Some(e) != skip {
                let m = self.meta[e as usize].model as usize;
                hits.push(m, k, s, e);
            }
        });
        let n0 = self.params.prior_weight;
        for m in 0..nm {
            let (mu, w) = self.route_mean[m];
            let prior = n0.min(w + 1.0);
            let (mut a, mut b) = (prior * mu, prior * (1.0 - mu));
            let mut used = 0u8;
            for &(s, e) in &hits.h[m][..hits.n[m] as usize] {
                if s <= 0.0 {
                    continue;
                }
                let ex = &self.meta[e as usize];
                let kappa = f64::from(ex.weight) * f64::from(s);
                a += kappa * f64::from(ex.reward);
                b += kappa * (1.0 - f64::from(ex.reward));
                used += 1;
            }
            let t = (a + b).max(1e-9);
            let mean = a / t;
            let var = a * b / (t * t * (t + 1.0));
            out[m] = ModelEstimate {
                quality: mean as f32,
                sd: var.sqrt() as f32,
                neighbours: used,
                regression_ucb: 0.0,
                eligible: false,
            };
        }
        let (qb, vb) = (f64::from(out[0].quality), f64::from(out[0].sd).powi(2));
        for e in out.iter_mut().take(nm).skip(1) {
            let sd = (vb + f64::from(e.sd).powi(2)).sqrt();
            e.regression_ucb = (qb - f64::from(e.quality) + self.z * sd) as f32;
        }
        if let Some((tr, n)) = trace {
            *n = 0;
            for m in 0..nm {
                for &(s, e) in &hits.h[m][..hits.n[m] as usize] {
                    let cand = Neighbour {
                        example: e,
                        similarity: s,
                    };
                    if *n < TRACE_NEIGHBOURS {
                        tr[*n] = cand;
                        *n += 1;
                    } else if let Some(min) = (0..TRACE_NEIGHBOURS)
                        .min_by(|&x, &y| tr[x].similarity.total_cmp(&tr[y].similarity))
                    {
                        if tr[min].similarity < s {
                            tr[min] = cand;
                        }
                    }
                }
            }
            tr[..*n].sort_by(|x, y| y.similarity.total_cmp(&x.similarity));
        }
    }

    /// The pick: the cheapest allowed model whose regression at the route's confidence is within
    /// `max_regression` for this prompt (strict rule); else the partner when its regression at
    /// the route's confidence for this prompt is at most τ; else the baseline.
    #[allow(clippy::needless_range_loop)]
    fn pick(
        &self,
        est: &mut [ModelEstimate; MAX_MODELS],
        partner: Option<usize>,
        tau: f64,
    ) -> usize {
        let limit = self.params.max_regression;
        let base_cost = self.models.first().map_or(0.0, |m| m.cost);
        let mut best = (base_cost, 0usize);
        for m in 1..self.models.len() {
            let f = &self.models[m];
            est[m].eligible = f.allowed && f64::from(est[m].regression_ucb) <= limit;
            if est[m].eligible && f.cost < best.0 {
                best = (f.cost, m);
            }
        }
        if best.1 != 0 {
            return best.1;
        }
        match partner {
            Some(p)
                if self.models[p].allowed
                    && f64::from(est[p].regression_ucb) <= tau
                    && f64::from(est[0].quality) - f64::from(est[p].quality)
                        <= self.params.max_prompt_regression =>
            {
                p
            }
            _ => 0,
        }
    }

    /// Decide for one prompt. `u` is a uniform draw in [0, 1) (exploration). `labelled`: this
    /// request is known to get a score (the judge samples it, decided by request id before
    /// routing) — exploration happens only there, at rate ε / `label_share`, so every explored
    /// request teaches something while the explored share of traffic stays ε.
    pub fn decide(
        &self,
        raw: &RawFeatures,
        embedding: Option<&[i16]>,
        u: f64,
        labelled: bool,
        label_share: f64,
    ) -> PromptPick {
        let mut pick = PromptPick {
            chosen: 0,
            kind: PromptPickKind::Baseline,
            source: FeatureSource::InProcess,
            n_models: self.models.len(),
            estimates: [ModelEstimate::default(); MAX_MODELS],
            neighbours: [Neighbour::default(); TRACE_NEIGHBOURS],
            n_neighbours: 0,
            propensity: 1.0,
        };
        let mut tr = ([Neighbour::default(); TRACE_NEIGHBOURS], 0usize);
        match embedding.filter(|e| e.len() == self.embedded.dim && !self.embedded.is_empty()) {
            Some(e) => {
                pick.source = FeatureSource::Embeddings;
                self.estimates(e, &self.embedded, None, &mut pick.estimates, Some(&mut tr));
            }
            None => {
                let q = self.query(raw);
                self.estimates(&q.v, &self.inproc, None, &mut pick.estimates, Some(&mut tr));
            }
        }
        (pick.neighbours, pick.n_neighbours) = tr;
        let exploit = self.pick(&mut pick.estimates, self.partner, self.tau);
        pick.chosen = exploit;
        pick.kind = if exploit == 0 {
            PromptPickKind::Baseline
        } else {
            PromptPickKind::Eligible
        };
        let target = if labelled && label_share > 0.0 {
            self.explore_target(&pick.estimates, exploit)
        } else {
            None
        };
        if let Some(x) = target {
            let eps = (self.explore_rate / label_share).min(1.0);
            if u < eps {
                pick.chosen = x;
                pick.kind = PromptPickKind::Explored;
                pick.propensity = eps;
            } else {
                pick.propensity = 1.0 - eps;
            }
        }
        pick
    }

    /// Exploration target: the cheaper allowed candidate with fewer than `explore_labels` labels
    /// and the highest upper confidence bound on its route-level quality (UCB1-style: untried
    /// candidates first, then the most promising; a candidate its labels rule out stops being
    /// explored), when that bound reaches the baseline's route-level mean minus the limit.
    fn explore_target(&self, _est: &[ModelEstimate; MAX_MODELS], exploit: usize) -> Option<usize> {
        if self.explore_rate <= 0.0 {
            return None;
        }
        let cost_now = self.models[exploit].cost;
        let floor = self.route_mean[0].0 - self.params.max_regression;
        let mut best: Option<(f64, usize)> = None;
        for m in 1..self.models.len() {
            let f = &self.models[m];
            if m == exploit || !f.allowed || f.cost >= cost_now {
                continue;
            }
            if self.labels[m] >= self.params.explore_labels {
                continue;
            }
            let (mu, w) = self.route_mean[m];
            let ucb = mu + self.z * (mu * (1.0 - mu) / (w + 1.0)).sqrt().max(0.5 / (w + 1.0));
            if ucb >= floor && best.is_none_or(|(u, _)| ucb > u) {
                best = Some((ucb, m));
            }
        }
        best.map(|(_, m)| m)
    }

    /// Exploration probability within the exploration budget (half of `max_regression`, as a
    /// long-run average): ε·R_x ≤ max_regression/2, where R_x is the measured regression of
    /// explored requests (upper confidence bound; a pessimistic 0.25 until measured).
    fn exploration_rate(&self, vin: &[(u32, Vec<f32>)]) -> f64 {
        let (mut sum, mut sq, mut n) = (0.0f64, 0.0f64, 0u32);
        let mut q = [0i16; DIM];
        for (e, v) in vin {
            if !self.explored.get(*e as usize).copied().unwrap_or(false) {
                continue;
            }
            quantise(v, &mut q);
            let mut est = [ModelEstimate::default(); MAX_MODELS];
            self.estimates(&q, &self.inproc, Some(*e), &mut est, None);
            let d = f64::from(est[0].quality) - f64::from(self.meta[*e as usize].reward);
            sum += d;
            sq += d * d;
            n += 1;
        }
        let r = if n < MIN_VERIFY {
            0.25
        } else {
            let k = f64::from(n);
            let mean = sum / k;
            let s2 = (sq / k - mean * mean).max(0.05);
            (mean + self.z * (s2 / k).sqrt()).max(0.01)
        };
        self.params
            .explore
            .min(0.5 * self.params.max_regression / r)
    }

    /// Lower the price of quality λ from ∞ (the strict per-prompt rule) as far as the policy's
    /// *measured* average regression stays within `max_regression` at the route's confidence.
    ///
    /// Predicted, then corrected by measurement (doubly robust): predictions chosen for looking
    /// good are biased in their own favour, so for every labelled example served by the
    /// candidate the policy routes it to (leave-one-out), the residual of the predicted
    /// regression against the measured one (q̂_baseline(x) − outcome) is taken. Per candidate m:
    /// R_m = P_m·(mean predicted regression over its routed prompts + mean residual); its
    /// standard error from the residuals; R + z·se must be ≤ the limit.
    /// A candidate the policy routes to with fewer than [`MIN_VERIFY`] samples counts with its
    /// predicted regression at confidence instead (conservative).
    fn calibrate(&mut self, vin: &[(u32, Vec<f32>)]) {
        let nm = self.models.len();
        if nm < 2 || vin.len() < 30 {
            return;
        }
        let step = (vin.len() / 1024).max(1);
        let mut rows: Vec<([ModelEstimate; MAX_MODELS], u16, f32)> = Vec::new();
        let mut q = [0i16; DIM];
        for (e, v) in vin.iter().step_by(step) {
            quantise(v, &mut q);
            let mut est = [ModelEstimate::default(); MAX_MODELS];
            self.estimates(&q, &self.inproc, Some(*e), &mut est, None);
            let ex = &self.meta[*e as usize];
            rows.push((est, ex.model, ex.reward));
        }
        let base_cost = self.models[0].cost;
        let z = self.z;
        let evaluate = |partner: Option<usize>, tau: f64| -> (f64, f64) {
            let mut routed = [0u32; MAX_MODELS];
            let mut pred = [0f64; MAX_MODELS];
            let mut pred_ucb = [0f64; MAX_MODELS];
            let mut sum = [0f64; MAX_MODELS];
            let mut sq = [0f64; MAX_MODELS];
            let mut n = [0u32; MAX_MODELS];
            let mut saving = 0.0;
            for (est, model, reward) in &rows {
                let mut est = *est;
                let m = self.pick(&mut est, partner, tau);
                if m == 0 {
                    continue;
                }
                let predicted = f64::from(est[0].quality) - f64::from(est[m].quality);
                routed[m] += 1;
                pred[m] += predicted;
                pred_ucb[m] += f64::from(est[m].regression_ucb);
                saving += (base_cost - self.models[m].cost) / base_cost;
                if usize::from(*model) == m {
                    // Residual of the prediction against the measured outcome.
                    let d = f64::from(est[0].quality) - f64::from(*reward) - predicted;
                    sum[m] += d;
                    sq[m] += d * d;
                    n[m] += 1;
                }
            }
            let total = rows.len() as f64;
            let (mut r, mut var) = (0.0, 0.0);
            for m in 1..nm {
                if routed[m] == 0 {
                    continue;
                }
                let share = f64::from(routed[m]) / total;
                let k = f64::from(routed[m]);
                if n[m] < MIN_VERIFY {
                    r += share * pred_ucb[m] / k;
                    continue;
                }
                let nm_ = f64::from(n[m]);
                let mean = sum[m] / nm_;
                let s2 = (sq[m] / nm_ - mean * mean).max(0.05);
                r += share * (pred[m] / k + mean);
                var += share * share * s2 / nm_;
            }
            let saving = if base_cost > 0.0 { saving / total } else { 0.0 };
            (r + z * var.sqrt(), saving)
        };
        // Half of the route's budget: exploration may spend the other half
        // (`exploration_rate`), so the two together stay within `max_regression`.
        let limit = 0.5 * self.params.max_regression;
        let mut best = (None, f64::NEG_INFINITY, evaluate(None, f64::NEG_INFINITY));
        if base_cost <= 0.0 {
            (self.est_regression, self.est_saving) = best.2;
            return;
        }
        // Each verified, allowed, cheaper candidate as the partner: the largest τ whose measured
        // regression at confidence is within the limit (bisection; it grows with τ); keep the
        // partner whose calibrated policy saves most.
        for p in 1..nm {
            let f = &self.models[p];
            if !f.allowed || f.cost >= base_cost || self.labels[p] < MIN_VERIFY {
                continue;
            }
            let (mut lo, mut hi) = (-1.0f64, 2.0f64);
            if evaluate(Some(p), lo).0 > limit {
                continue;
            }
            for _ in 0..16 {
                let mid = 0.5 * (lo + hi);
                if evaluate(Some(p), mid).0 <= limit {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            // Then the smallest τ that routes the same prompts; τ is set midway between it and
            // the largest feasible one (a margin on either side for prompts unlike any seen).
            let top = evaluate(Some(p), lo);
            let mut down = (-1.0f64, lo);
            for _ in 0..16 {
                let mid = 0.5 * (down.0 + down.1);
                if evaluate(Some(p), mid).1 >= top.1 - 1e-12 {
                    down.1 = mid;
                } else {
                    down.0 = mid;
                }
            }
            let tau = 0.5 * (down.1 + lo);
            let out = evaluate(Some(p), tau);
            if out.0 > limit {
                continue;
            }
            if out.1 > best.2 .1 {
                best = (Some(p), tau, out);
            }
        }
        self.partner = best.0;
        self.tau = best.1;
        (self.est_regression, self.est_saving) = best.2;
    }
}

/// Samples a candidate needs before its measured regression replaces its predicted one.
pub const MIN_VERIFY: u32 = 10;

/// IDF-weighted copy of raw features (f32, not normalised).
fn weigh(raw: &RawFeatures, idf: &[f32; DIM]) -> Vec<f32> {
    raw.v.iter().zip(idf).map(|(x, w)| x * w).collect()
}

/// Normalise and quantise an embedding for [`PromptIndex::decide`].
pub fn quantise_embedding(e: &[f32]) -> Option<Vec<i16>> {
    let mut out = vec![0i16; e.len()];
    quantise(e, &mut out).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::prompt::features::text_features;

    const NOUNS: [&str; 12] = [
        "list", "tree", "graph", "string", "matrix", "queue", "stack", "heap", "map", "set",
        "array", "table",
    ];
    const PLACES: [&str; 12] = [
        "France", "Peru", "Japan", "Kenya", "Chile", "Norway", "Egypt", "India", "Spain", "Ghana",
        "Laos", "Fiji",
    ];

    fn code(i: usize) -> String {
        format!(
            "Write a python function that reverses a {} and returns the {} in place; def solve(x): return x",
            NOUNS[i % 12],
            NOUNS[(i / 12) % 12]
        )
    }

    fn trivia(i: usize) -> String {
        format!(
            "Which river flows through the capital of {}, and how long is it compared to {}?",
            PLACES[i % 12],
            PLACES[(i / 12) % 12]
        )
    }

    fn facts() -> Vec<ModelFacts> {
        ["big", "small", "tiny"]
            .iter()
            .zip([1.0, 0.1, 0.01])
            .map(|(m, cost)| ModelFacts {
                model: Arc::from(*m),
                cost,
                prior_mean: 0.5,
                allowed: true,
            })
            .collect()
    }

    fn params() -> IndexParams {
        crate::feedback::prompt::PromptRoutingConfig::default().params(0.02, 0.95)
    }

    fn ex(i: usize, text: &str, model: &str, reward: f32) -> Example {
        Example {
            request_id: Arc::from(format!("r{i}-{model}").as_str()),
            raw: Box::new(text_features(text)),
            embedding: None,
            model: Arc::from(model),
            reward,
            weight: 1.0,
            at_ms: i as i64,
            explored: false,
        }
    }

    /// `small` is as good as `big` on code prompts and useless on trivia; `tiny` useless on both.
    fn examples() -> Vec<Example> {
        let mut v = Vec::new();
        // Enough outcomes that the measured regression is known to ±0.01 at 95%.
        for i in 0..400 {
            v.push(ex(i, &code(i), "big", 1.0));
            v.push(ex(i, &trivia(i), "big", 1.0));
            v.push(ex(i, &code(i + 1), "small", 1.0));
            v.push(ex(i, &trivia(i + 1), "small", 0.0));
            if i % 4 == 0 {
                v.push(ex(i, &code(i + 2), "tiny", 0.0));
                v.push(ex(i, &trivia(i + 2), "tiny", 0.0));
            }
        }
        v
    }

    #[test]
    fn learns_which_prompts_the_cheap_model_handles() {
        let ix = PromptIndex::build(Arc::from("r"), facts(), params(), &examples(), 1);
        assert_eq!(ix.partner, Some(1), "small is the verified partner");
        // Within half the budget (exploration may spend the other half).
        assert!(ix.est_regression <= 0.01 + 1e-9, "{}", ix.est_regression);
        assert!(ix.est_saving > 0.0, "{}", ix.est_saving);
        // Prompts of the same kinds, with words the index has never seen.
        let unseen_code = text_features(
            "Write a python function that reverses a deque and returns the trie in place; def solve(x): return x",
        );
        let unseen_trivia = text_features(
            "Which river flows through the capital of Austria, and how long is it compared to Nepal?",
        );
        let p = ix.decide(&unseen_code, None, 0.99, false, 0.3);
        assert_eq!(
            (p.chosen, p.kind),
            (1, PromptPickKind::Eligible),
            "{:?}",
            p.estimates
        );
        // The neighbours that drove it are code prompts, most similar first.
        assert!(p.n_neighbours > 0);
        let first = &ix.meta[p.neighbours[0].example as usize];
        assert!(first.request_id.starts_with('r'));
        assert!(p.neighbours[..p.n_neighbours]
            .windows(2)
            .all(|w| w[0].similarity >= w[1].similarity));
        let p = ix.decide(&unseen_trivia, None, 0.99, false, 0.3);
        assert_eq!(p.chosen, 0, "tau {} est {:?}", ix.tau, &p.estimates[..3]);
        assert!(p.estimates[1].quality < 0.5 && p.estimates[0].quality > 0.8);
    }

    #[test]
    fn without_verified_outcomes_it_stays_on_the_baseline() {
        // Only baseline labels: no candidate is verified, the strict rule cannot pass either.
        let v: Vec<Example> = examples()
            .into_iter()
            .filter(|e| &*e.model == "big")
            .collect();
        let ix = PromptIndex::build(Arc::from("r"), facts(), params(), &v, 1);
        assert_eq!(ix.partner, None);
        for i in 0..20 {
            let p = ix.decide(&text_features(&code(i)), None, 0.99, false, 0.3);
            assert_eq!(p.chosen, 0);
        }
        // An empty index decides too (route just turned on).
        let ix = PromptIndex::build(Arc::from("r"), facts(), params(), &[], 1);
        assert_eq!(
            ix.decide(&text_features("hi"), None, 0.5, false, 0.3)
                .chosen,
            0
        );
    }

    #[test]
    fn exploration_only_on_labelled_requests_and_within_budget() {
        let v: Vec<Example> = examples()
            .into_iter()
            .filter(|e| &*e.model == "big")
            .collect();
        let ix = PromptIndex::build(Arc::from("r"), facts(), params(), &v, 1);
        // Unmeasured exploration is assumed to cost 0.25: ε = min(0.05, 0.01 / 0.25).
        assert!(
            (ix.explore_rate - 0.04).abs() < 1e-12,
            "{}",
            ix.explore_rate
        );
        let f = text_features(&code(3));
        let mut explored = 0;
        for k in 0..1000 {
            let u = k as f64 / 1000.0;
            assert_eq!(
                ix.decide(&f, None, u, false, 0.3).kind,
                PromptPickKind::Baseline
            );
            let p = ix.decide(&f, None, u, true, 0.3);
            if p.kind == PromptPickKind::Explored {
                explored += 1;
                assert!(p.chosen != 0 && (p.propensity - 0.04 / 0.3).abs() < 1e-12);
            }
        }
        // ε / label share of the labelled requests: the explored share of all traffic stays ε.
        assert!(
            (explored as f64 / 1000.0 - 0.04 / 0.3).abs() < 0.01,
            "{explored}"
        );
        // A model the route may not serve is never picked nor explored.
        let mut f2 = facts();
        f2[1].allowed = false;
        f2[2].allowed = false;
        let ix = PromptIndex::build(Arc::from("r"), f2, params(), &examples(), 1);
        for k in 0..100 {
            let p = ix.decide(&text_features(&code(k)), None, k as f64 / 100.0, true, 0.3);
            assert_eq!(p.chosen, 0);
        }
    }

    #[test]
    fn index_search_is_exact_for_small_sets_and_bounded_for_large() {
        let v = examples();
        let ix = PromptIndex::build(Arc::from("r"), facts(), params(), &v, 1);
        assert_eq!(ix.inproc.len(), v.len());
        let mut seen = 0;
        let q = ix.query(&text_features(&code(5)));
        ix.inproc.search(&q.v, ix.params.nprobe, |_, s| {
            assert!((-1.01..=1.01).contains(&s));
            seen += 1;
        });
        assert!(seen > 0 && seen <= MAX_ROWS, "{seen}");
        assert!((normal_quantile(0.95) - 1.644_853_6).abs() < 1e-6);
        assert!((normal_quantile(0.5)).abs() < 1e-9);
        let a: Vec<i16> = (0..131).map(|i| (i * 37 % 200) as i16 - 100).collect();
        let b: Vec<i16> = (0..131).map(|i| (i * 91 % 200) as i16 - 100).collect();
        let want: i32 = a
            .iter()
            .zip(&b)
            .map(|(x, y)| i32::from(*x) * i32::from(*y))
            .sum();
        assert_eq!(dot(&a, &b), want);
    }
}
