//! Routing benchmarks: one `auto` decision over a route with 10 candidates (target < 5 µs p50)
//! and folding feedback events into posteriors (target ≥ 100k events/s).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use loopgate::feedback::aggregator::{Aggregator, FeedbackEvent, FeedbackKind};
use loopgate::feedback::constraints::Constraints;
use loopgate::feedback::posterior::{
    Observation, Posterior, PosteriorConfig, PosteriorState, Scale, Signal,
};
use loopgate::feedback::router::{
    decide, ExplorationConfig, Mode, ModelInput, PreparedRoute, RequestContext, RouteInput,
    ScoreWeights,
};

fn posterior(k: u64, n: u64) -> Posterior {
    let cfg = PosteriorConfig::default();
    let mut s = PosteriorState::new();
    for i in 0..n {
        let id = format!("o{i}");
        let value = if i < k { 1.0 } else { 0.0 };
        let obs = Observation {
            id: &id,
            at_ms: 0,
            signal: Signal::Feedback,
            value,
            weight: 1.0,
        };
        let _ = s.fold(&obs, &cfg);
    }
    s.posterior(None, &cfg)
}

fn route() -> Arc<PreparedRoute> {
    let model = |name: String, p: Posterior, cost: f64| ModelInput {
        model: Arc::from(name.as_str()),
        posterior: p,
        cost_per_request: cost,
        p95_latency_ms: Some(900.0),
        success_rate: Some(0.995),
        recent_requests: 0,
    };
    let candidates = (0..10)
        .map(|i| {
            model(
                format!("cand-{i}"),
                posterior(1790 - 20 * i, 2000),
                0.001 * (i + 1) as f64,
            )
        })
        .collect();
    let prepared = PreparedRoute::prepare(RouteInput {
        route: Arc::from("bench"),
        mode: Mode::Live,
        baseline: model("baseline".into(), posterior(1800, 2000), 0.02),
        candidates,
        constraints: Constraints {
            daily_budget: Some(1000.0),
            ..Constraints::default()
        },
        weights: ScoreWeights::default(),
        exploration: ExplorationConfig::default(),
        pinned: None,
        table_version: 1,
    });
    match prepared {
        Ok(r) => r,
        Err(e) => panic!("bench route: {e}"),
    }
}

fn bench_decide(c: &mut Criterion) {
    let r = route();
    let mut i = 0u64;
    c.bench_function("decide_10_candidates", |b| {
        b.iter(|| {
            i = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let ctx = RequestContext {
                spend_today: 12.0,
                exploration_share: 0.01,
                sticky: None,
                rng: (i >> 11) as f64 / (1u64 << 53) as f64,
                labelling: Default::default(),
            };
            black_box(decide(black_box(&r), &ctx))
        })
    });
    // The whole request-path step: table lookup, per-route counters, sticky session map,
    // the decision and its bookkeeping (what `proxy::routed::candidates` calls).
    let state = loopgate::routing::auto::AutoState::new(Some("k".into()), "k1", 3600, 1000);
    let mut table = loopgate::routing::auto::RouterTable::default();
    table.routes.insert(
        "bench".into(),
        loopgate::routing::auto::AutoRoute {
            prepared: Arc::clone(&r),
            contexts: Default::default(),
            contextual: false,
            info: Default::default(),
            holdback_share: 0.0,
            experiment: None,
            pool: None,
            pools: Default::default(),
        },
    );
    state.table.store(Arc::new(table));
    let mut j = 0u64;
    c.bench_function("auto_state_decide_10_candidates_with_session", |b| {
        b.iter(|| {
            j = j.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let p = state.prepared("bench", None).expect("route");
            let session = if j & 1 == 0 { Some("session-a") } else { None };
            black_box(state.decide(
                &p,
                "bench",
                session,
                1_700_000_000_000,
                (j >> 11) as f64 / (1u64 << 53) as f64,
                // The common case with an announced judge sample: concentrate on scored requests.
                loopgate::routing::auto::ScoreHint::Announced(j & 4 == 0),
            ))
        })
    });
    c.bench_function("decision_row_render_and_sign_10_candidates", |b| {
        let d = decide(
            &r,
            &RequestContext {
                spend_today: 1.0,
                exploration_share: 0.0,
                sticky: None,
                rng: 0.5,
                labelling: Default::default(),
            },
        );
        b.iter(|| black_box(state.decision_row(&d, "chatcmpl-x", 0, Some("s"), None, None)))
    });
    c.bench_function("decide_and_trace_10_candidates", |b| {
        b.iter(|| {
            let ctx = RequestContext {
                spend_today: 12.0,
                exploration_share: 0.01,
                sticky: None,
                rng: 0.5,
                labelling: Default::default(),
            };
            black_box(decide(&r, &ctx).trace("req", 0))
        })
    });
    // The signed row's parts, to see where its time goes: the JCS canonical form the HMAC
    // covers, and the plain JSON text that is stored.
    let trace = decide(
        &r,
        &RequestContext {
            rng: 0.5,
            ..Default::default()
        },
    )
    .trace("req", 0);
    c.bench_function("decision_trace_jcs_10_candidates", |b| {
        b.iter(|| black_box(loopgate::feedback::decision::jcs(&trace)))
    });
    c.bench_function("decision_trace_to_json_10_candidates", |b| {
        b.iter(|| black_box(serde_json::to_string(&trace)))
    });
    c.bench_function("prepare_route_10_candidates", |b| {
        let input = RouteInput {
            route: Arc::from("bench"),
            mode: Mode::Live,
            baseline: r.models[0].clone().into_input(),
            candidates: r.models[1..]
                .iter()
                .map(|m| m.clone().into_input())
                .collect(),
            constraints: r.constraints.clone(),
            weights: ScoreWeights::default(),
            exploration: ExplorationConfig::default(),
            pinned: None,
            table_version: 2,
        };
        b.iter_batched(
            || input.clone(),
            |i| black_box(PreparedRoute::prepare(i)),
            BatchSize::SmallInput,
        )
    });
}

fn events(n: usize) -> Vec<FeedbackEvent> {
    let routes: Vec<Arc<str>> = (0..5)
        .map(|i| Arc::from(format!("route-{i}").as_str()))
        .collect();
    let models: Vec<Arc<str>> = (0..10)
        .map(|i| Arc::from(format!("model-{i}").as_str()))
        .collect();
    (0..n)
        .map(|i| {
            let kind = if i % 10 == 9 {
                FeedbackKind::SessionNps {
                    nps: (i % 11) as f64,
                    requests: (0..4)
                        .map(|k| (routes[i % 5].clone(), models[(i + k) % 10].clone()))
                        .collect(),
                }
            } else {
                FeedbackKind::Score {
                    route: routes[i % 5].clone(),
                    model: models[(i / 5) % 10].clone(),
                    signal: if i % 2 == 0 {
                        Signal::Judge
                    } else {
                        Signal::Feedback
                    },
                    value: (i % 2) as f64,
                    scale: Scale::Thumbs,
                }
            };
            FeedbackEvent {
                id: format!("evt-{i:08}"),
                at_ms: (i as i64) * 1000,
                kind,
            }
        })
        .collect()
}

fn bench_fold(c: &mut Criterion) {
    let evs = events(100_000);
    let mut g = c.benchmark_group("aggregator");
    g.throughput(Throughput::Elements(evs.len() as u64));
    g.sample_size(10);
    g.bench_function("fold_100k_events", |b| {
        b.iter_batched(
            || Aggregator::new(PosteriorConfig::default(), 1.0).map_err(|e| e.to_string()),
            |a| {
                if let Ok(mut a) = a {
                    black_box(a.fold_batch(&evs));
                    black_box(a.snapshot());
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

/// Prompt-level routing on the request path: in-process features of a realistic prompt plus the
/// nearest-neighbour decision over a full index (2,048 labelled examples, 11 models). Target:
/// < 5 µs p50 together.
fn bench_prompt(c: &mut Criterion) {
    use loopgate::feedback::prompt::{
        raw_features, text_features, Example, ModelFacts, PromptIndex, PromptRoutingConfig,
    };
    use rand::{Rng, SeedableRng};
    let words: Vec<String> = (0..3000).map(|i| format!("w{i:x}q")).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut text = |n: usize| -> String {
        let mut s = String::from("Answer the question.\n");
        for _ in 0..n {
            // Zipf-ish: small indices are common.
            let u: f64 = rng.gen();
            s.push_str(&words[((u * u * u) * 2999.0) as usize]);
            s.push(' ');
        }
        s.push_str("\nA) first\nB) second\nC) third\nD) fourth\nAnswer:");
        s
    };
    let models: Vec<ModelFacts> = (0..11)
        .map(|i| ModelFacts {
            model: Arc::from(format!("m{i}").as_str()),
            cost: if i == 0 {
                0.01
            } else {
                0.001 * i as f64 / 11.0
            },
            prior_mean: 0.8,
            allowed: true,
        })
        .collect();
    let examples: Vec<Example> = (0..2048)
        .map(|i| Example {
            request_id: Arc::from(format!("r{i}").as_str()),
            raw: Box::new(text_features(&text(60 + i % 120))),
            embedding: None,
            model: Arc::clone(&models[i % 11].model),
            reward: (i % 3 != 0) as u8 as f32,
            weight: 1.0,
            at_ms: i as i64,
            explored: false,
        })
        .collect();
    let cfg = PromptRoutingConfig::default();
    let index = PromptIndex::build(
        Arc::from("bench"),
        models,
        cfg.params(0.02, 0.95),
        &examples,
        1,
    );
    let prompt = text(250);
    let messages = vec![
        serde_json::json!({"role": "system", "content": "You are a careful assistant."}),
        serde_json::json!({"role": "user", "content": prompt}),
    ];
    let mut k = 0u64;
    c.bench_function("prompt_features_and_decide_2048_examples_11_models", |b| {
        b.iter(|| {
            k = k.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let raw = raw_features(black_box(&messages));
            black_box(index.decide(
                &raw,
                None,
                (k >> 11) as f64 / (1u64 << 53) as f64,
                k & 1 == 0,
                0.3,
            ))
        })
    });
    c.bench_function("prompt_features_only", |b| {
        b.iter(|| black_box(raw_features(black_box(&messages))))
    });
}

criterion_group!(benches, bench_decide, bench_fold, bench_prompt);
criterion_main!(benches);
