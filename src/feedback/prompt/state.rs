//! The gateway side of prompt routing: per-route memories of labelled examples and the
//! published indexes.
//!
//! The request path only (1) loads the published map of indexes (`ArcSwap`, lock-free) and
//! (2) hands the request's features to the background with a non-blocking `try_send` on a
//! bounded channel (a full channel drops the example and counts it). Everything else — pairing
//! features with feedback, the bounded memories, rebuilding indexes — runs in the feedback
//! aggregator's task ([`PromptState::label`], [`PromptState::rebuild`]) behind a mutex no request
//! ever takes.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::{json, Value};

use super::config::{PromptMode, PromptRoutingConfig};
use super::features::{RawFeatures, HASHED, STRUCT_NAMES};
use super::index::{Example, FeatureSource, ModelFacts, PromptIndex, PromptPick};

/// Requests whose features wait for feedback (oldest dropped first).
pub const PENDING_CAPACITY: usize = 20_000;
/// How long features wait for feedback.
pub const PENDING_MAX_AGE_MS: i64 = 3_600_000;
/// Channel slots between the request path and the aggregator.
const CHANNEL: usize = 8192;

/// A routed request's features, sent from the request path.
pub struct Seen {
    pub request_id: Arc<str>,
    pub route: Arc<str>,
    pub raw: Box<RawFeatures>,
    pub embedding: Option<Arc<[f32]>>,
    pub at_ms: i64,
    /// Served by prompt-level exploration.
    pub explored: bool,
}

struct Pending {
    explored: bool,
    route: Arc<str>,
    raw: Box<RawFeatures>,
    embedding: Option<Arc<[f32]>>,
    at_ms: i64,
}

#[derive(Default)]
struct Inner {
    pending: HashMap<Arc<str>, Pending>,
    order: VecDeque<Arc<str>>,
    memories: HashMap<Arc<str>, VecDeque<Example>>,
    /// Routes with new labels since their last build.
    dirty: HashSet<Arc<str>>,
    /// Inputs of each route's last build (models, costs, limits), to rebuild on change.
    built: HashMap<Arc<str>, String>,
    version: u64,
}

/// Shared prompt-routing state (one per gateway).
pub struct PromptState {
    pub indexes: ArcSwap<HashMap<String, Arc<PromptIndex>>>,
    tx: tokio::sync::mpsc::Sender<Seen>,
    rx: Mutex<tokio::sync::mpsc::Receiver<Seen>>,
    inner: Mutex<Inner>,
    /// Examples dropped because the channel was full.
    pub dropped: AtomicU64,
}

impl Default for PromptState {
    fn default() -> Self {
        PromptState::new()
    }
}

/// Why a request decided on in-process features although embeddings are configured.
#[derive(Clone, Debug, PartialEq)]
pub enum EmbeddingOutcome {
    /// Not configured for the route.
    NotConfigured,
    Ok(Arc<[f32]>),
    /// The call failed or timed out: in-process fallback, with the reason for the trace.
    Failed(String),
}

/// What the prompt router did for one request, carried to the logging phase.
#[derive(Clone, Debug)]
pub struct PromptOutcome {
    pub index: Arc<PromptIndex>,
    pub pick: PromptPick,
    /// Did the pick change the served model?
    pub applied: bool,
    /// The route-level pick it replaced.
    pub route_pick: Arc<str>,
    pub embedding_fallback: Option<String>,
    pub raw: Box<RawFeatures>,
}

impl PromptOutcome {
    /// The `prompt` section of the decision trace (allocates; off the request path).
    pub fn trace(&self) -> Value {
        let ix = &*self.index;
        let p = &self.pick;
        let models: Vec<Value> = (0..p.n_models)
            .map(|m| {
                let e = p.estimates[m];
                json!({
                    "model": &*ix.models[m].model,
                    "quality": round(f64::from(e.quality)),
                    "sd": round(f64::from(e.sd)),
                    "neighbours": e.neighbours,
                    "labels": ix.labels.get(m).copied().unwrap_or(0),
                    "regression_at_confidence": if m == 0 { Value::Null } else { json!(round(f64::from(e.regression_ucb))) },
                    "eligible": m == 0 || e.eligible,
                    "cost_per_request": ix.models[m].cost,
                })
            })
            .collect();
        let neighbours: Vec<Value> = p.neighbours[..p.n_neighbours]
            .iter()
            .filter_map(|n| {
                let ex = ix.meta.get(n.example as usize)?;
                Some(json!({
                    "request_id": &*ex.request_id,
                    "model": &*ix.models.get(ex.model as usize)?.model,
                    "similarity": round(f64::from(n.similarity)),
                    "outcome": round(f64::from(ex.reward)),
                }))
            })
            .collect();
        // The structural features and the strongest learned-weight hashed dimensions.
        let structural: serde_json::Map<String, Value> = STRUCT_NAMES
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.to_string(),
                    json!(round(f64::from(self.raw.v[HASHED + i]))),
                )
            })
            .collect();
        let mut dims: Vec<(usize, f32)> = (0..HASHED)
            .map(|d| (d, (self.raw.v[d] * ix.idf[d]).abs()))
            .filter(|(_, w)| *w > 0.0)
            .collect();
        dims.sort_by(|a, b| b.1.total_cmp(&a.1));
        dims.truncate(5);
        json!({
            "method": "knn",
            "source": p.source,
            "embedding_fallback": self.embedding_fallback,
            "k": ix.params.k,
            "pick": &*ix.models[p.chosen].model,
            "kind": p.kind,
            "applied": self.applied,
            "route_pick": &*self.route_pick,
            "propensity": p.propensity,
            "partner": ix.partner.map(|p| &*ix.models[p].model),
            "tau": if ix.tau.is_finite() { json!(round(ix.tau)) } else { Value::Null },
            "z": round(ix.z),
            "est_regression": round(ix.est_regression),
            "est_saving": round(ix.est_saving),
            "examples": ix.meta.len(),
            "index_version": ix.version,
            "models": models,
            "neighbours": neighbours,
            "features": {
                "structural": structural,
                "top_dims": dims.iter().map(|(d, w)| json!({"dim": d, "weight": round(f64::from(*w))})).collect::<Vec<_>>(),
            },
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

impl PromptState {
    pub fn new() -> PromptState {
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL);
        PromptState {
            indexes: ArcSwap::from_pointee(HashMap::new()),
            tx,
            rx: Mutex::new(rx),
            inner: Mutex::new(Inner::default()),
            dropped: AtomicU64::new(0),
        }
    }

    /// The route's published index, if prompt routing is on and it has been built.
    pub fn index(&self, route: &str) -> Option<Arc<PromptIndex>> {
        self.indexes.load().get(route).cloned()
    }

    /// Request path: remember a routed request's features until its feedback arrives.
    pub fn seen(&self, s: Seen) {
        if self.tx.try_send(s).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn drain(&self, inner: &mut Inner) {
        let Ok(mut rx) = self.rx.lock() else { return };
        while let Ok(s) = rx.try_recv() {
            if inner.pending.contains_key(&s.request_id) {
                continue;
            }
            inner.order.push_back(Arc::clone(&s.request_id));
            inner.pending.insert(
                s.request_id,
                Pending {
                    explored: s.explored,
                    route: s.route,
                    raw: s.raw,
                    embedding: s.embedding,
                    at_ms: s.at_ms,
                },
            );
            while inner.order.len() > PENDING_CAPACITY {
                if let Some(old) = inner.order.pop_front() {
                    inner.pending.remove(&old);
                }
            }
        }
    }

    /// Aggregator: a per-request score (`value` on [0, 1]) for `model` on `request_id`. The
    /// request's features join the route's memory as a labelled example. Unknown requests (not
    /// prompt-routed, served by another instance, or older than the pending window) are skipped.
    pub fn label(
        &self,
        request_id: &str,
        model: &str,
        value: f64,
        weight: f64,
        capacity: impl Fn(&str) -> Option<usize>,
    ) -> bool {
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        self.drain(&mut inner);
        if !(value.is_finite() && weight.is_finite() && weight > 0.0) {
            return false;
        }
        let Some(p) = inner.pending.get(request_id) else {
            return false;
        };
        let Some(cap) = capacity(&p.route) else {
            return false;
        };
        let ex = Example {
            request_id: Arc::from(request_id),
            raw: p.raw.clone(),
            embedding: p.embedding.clone(),
            model: Arc::from(model),
            reward: value.clamp(0.0, 1.0) as f32,
            weight: weight as f32,
            at_ms: p.at_ms,
            explored: p.explored,
        };
        let route = Arc::clone(&p.route);
        let mem = inner.memories.entry(Arc::clone(&route)).or_default();
        mem.push_back(ex);
        while mem.len() > cap {
            mem.pop_front();
        }
        inner.dirty.insert(route);
        true
    }

    /// Aggregator: rebuild the index of every prompt-routed route whose labels or inputs
    /// changed, and publish. `routes` gives each route's config and model facts (index 0: the
    /// baseline) with its quality limits.
    pub fn rebuild(
        &self,
        routes: &[(String, PromptRoutingConfig, Vec<ModelFacts>, f64, f64)],
        now_ms: i64,
    ) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        self.drain(&mut inner);
        // Features that never got feedback age out.
        while let Some(front) = inner.order.front().cloned() {
            match inner.pending.get(&front) {
                Some(p) if now_ms - p.at_ms <= PENDING_MAX_AGE_MS => break,
                _ => {
                    inner.order.pop_front();
                    inner.pending.remove(&front);
                }
            }
        }
        let current = self.indexes.load_full();
        let mut next: HashMap<String, Arc<PromptIndex>> = HashMap::new();
        let mut changed = false;
        for (name, cfg, facts, max_regression, min_confidence) in routes {
            if cfg.mode == PromptMode::Off {
                continue;
            }
            let key: Arc<str> = Arc::from(name.as_str());
            let params = cfg.params(*max_regression, *min_confidence);
            let sig = format!(
                "{params:?}|{}",
                facts
                    .iter()
                    .map(|f| format!("{}:{}:{}:{}", f.model, f.cost, f.prior_mean, f.allowed))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            let unchanged = inner.built.get(&key) == Some(&sig) && !inner.dirty.contains(&key);
            if let (true, Some(ix)) = (unchanged, current.get(name)) {
                next.insert(name.clone(), Arc::clone(ix));
                continue;
            }
            inner.version += 1;
            let version = inner.version;
            let mem = inner.memories.entry(Arc::clone(&key)).or_default();
            while mem.len() > cfg.capacity {
                mem.pop_front();
            }
            let examples: Vec<Example> = mem.iter().cloned().collect();
            let ix =
                PromptIndex::build(Arc::clone(&key), facts.clone(), params, &examples, version);
            next.insert(name.clone(), Arc::new(ix));
            inner.built.insert(Arc::clone(&key), sig);
            inner.dirty.remove(&key);
            changed = true;
        }
        // Routes that turned prompt routing off lose their memory.
        let live: HashSet<&str> = next.keys().map(String::as_str).collect();
        inner.memories.retain(|k, _| live.contains(&**k));
        inner.built.retain(|k, _| live.contains(&**k));
        if changed || next.len() != current.len() {
            self.indexes.store(Arc::new(next));
        }
    }

    /// Labelled examples held for a route (status, tests).
    pub fn memory_len(&self, route: &str) -> usize {
        self.inner
            .lock()
            .ok()
            .and_then(|i| i.memories.get(route).map(VecDeque::len))
            .unwrap_or(0)
    }
}

/// Decide for one prompt on a route's index (request path): features in-process, the
/// embedding when one was obtained. Returns the pick and the features (for [`Seen`]).
pub fn decide(
    index: &Arc<PromptIndex>,
    raw: &RawFeatures,
    embedding: Option<&[f32]>,
    u: f64,
    labelled: bool,
    label_share: f64,
) -> PromptPick {
    match embedding.and_then(super::index::quantise_embedding) {
        Some(q) => index.decide(raw, Some(&q), u, labelled, label_share),
        None => {
            let mut p = index.decide(raw, None, u, labelled, label_share);
            p.source = FeatureSource::InProcess;
            p
        }
    }
}

/// A route's model facts for its prompt index, from its published route-level snapshot:
/// estimated cost per request, the route posterior's mean (benchmark priors included) and
/// whether the route's cost / latency rows let the model be served; then the route's
/// `max_regression` and `min_confidence`.
pub fn route_inputs(
    prepared: &crate::feedback::router::PreparedRoute,
) -> (Vec<ModelFacts>, f64, f64) {
    use crate::feedback::constraints::Action;
    let facts = prepared
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| ModelFacts {
            model: Arc::clone(&m.model),
            cost: m.stats.cost_per_request,
            prior_mean: m.posterior.mean(),
            allowed: i == 0 || !m.static_failures.blocks(Action::Explore),
        })
        .collect();
    let c = &prepared.constraints;
    (facts, c.max_regression, c.min_confidence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::prompt::text_features;

    fn facts() -> Vec<ModelFacts> {
        vec![
            ModelFacts {
                model: Arc::from("big"),
                cost: 1.0,
                prior_mean: 0.9,
                allowed: true,
            },
            ModelFacts {
                model: Arc::from("small"),
                cost: 0.1,
                prior_mean: 0.8,
                allowed: true,
            },
        ]
    }

    fn cfg(capacity: usize) -> PromptRoutingConfig {
        PromptRoutingConfig {
            mode: PromptMode::InProcess,
            capacity,
            ..Default::default()
        }
    }

    #[test]
    fn features_wait_for_feedback_and_memory_is_bounded() {
        let s = PromptState::new();
        for i in 0..40 {
            s.seen(Seen {
                request_id: Arc::from(format!("r{i}").as_str()),
                route: Arc::from("team/support"),
                raw: Box::new(text_features(&format!("question number {i}"))),
                embedding: None,
                at_ms: 1_000,
                explored: false,
            });
        }
        let cap = |r: &str| (r == "team/support").then_some(16);
        // Unknown requests and other routes are skipped.
        assert!(!s.label("nope", "big", 1.0, 1.0, cap));
        assert!(!s.label("r0", "big", f64::NAN, 1.0, cap));
        for i in 0..40 {
            assert!(s.label(&format!("r{i}"), "big", 1.0, 1.0, cap));
        }
        assert_eq!(
            s.memory_len("team/support"),
            16,
            "capped at the route's capacity"
        );
        let routes = vec![("team/support".to_string(), cfg(16), facts(), 0.02, 0.95)];
        s.rebuild(&routes, 2_000);
        let ix = s.index("team/support").unwrap();
        assert_eq!(ix.meta.len(), 16);
        assert_eq!(ix.labels, vec![16, 0]);
        // Nothing changed: the same snapshot stays published.
        s.rebuild(&routes, 3_000);
        assert!(Arc::ptr_eq(&ix, &s.index("team/support").unwrap()));
        // Pending features age out after an hour.
        s.seen(Seen {
            request_id: Arc::from("late"),
            route: Arc::from("team/support"),
            raw: Box::new(text_features("late")),
            embedding: None,
            at_ms: 5_000,
            explored: false,
        });
        s.rebuild(&routes, 5_000 + PENDING_MAX_AGE_MS + 1);
        assert!(!s.label("late", "big", 1.0, 1.0, cap));
        // Turning prompt routing off drops the index and the memory.
        s.rebuild(&[], 10_000);
        assert!(s.index("team/support").is_none());
        assert_eq!(s.memory_len("team/support"), 0);
    }

    #[test]
    fn trace_names_neighbours_models_and_fallback() {
        let s = PromptState::new();
        let cap = |_: &str| Some(100);
        for i in 0..20 {
            let id = format!("r{i}");
            s.seen(Seen {
                request_id: Arc::from(id.as_str()),
                route: Arc::from("r"),
                raw: Box::new(text_features(&format!("write a python function {i}"))),
                embedding: None,
                at_ms: 0,
                explored: false,
            });
            s.label(&id, if i % 2 == 0 { "big" } else { "small" }, 1.0, 1.0, cap);
        }
        s.rebuild(&[("r".into(), cfg(100), facts(), 0.02, 0.95)], 1);
        let ix = s.index("r").unwrap();
        let raw = text_features("write a python function 7");
        let pick = decide(&ix, &raw, None, 0.5, false, 0.0);
        let out = PromptOutcome {
            index: Arc::clone(&ix),
            pick,
            applied: false,
            route_pick: Arc::from("big"),
            embedding_fallback: Some("embeddings model 'e' timed out after 150 ms".into()),
            raw: Box::new(raw),
        };
        let t = out.trace();
        assert_eq!(t["method"], "knn");
        assert_eq!(t["source"], "in_process");
        assert!(t["embedding_fallback"]
            .as_str()
            .unwrap()
            .contains("timed out"));
        assert_eq!(t["models"].as_array().unwrap().len(), 2);
        let n = t["neighbours"].as_array().unwrap();
        assert!(!n.is_empty());
        assert_eq!(
            n[0]["request_id"], "r7",
            "the same prompt is the nearest neighbour"
        );
        assert!(t["features"]["structural"]["length"].as_f64().unwrap() > 0.0);
    }
}
