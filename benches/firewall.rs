//! The LLM firewall's cost on a chat request (criterion): the fast path of a clean 2 KiB
//! prompt through every built-in pack plus custom regex and keyword rules, the same prompt
//! with one secret to redact, the stream guard per chunk, and what a cacheable request pays
//! before it goes upstream or is answered from the cache: the exact-cache key of the 2 KiB
//! request, the in-memory lookup (a hit), and the firewall's fast path (issue 16's
//! "cache lookup + firewall fast path < 20 µs").
//!
//! `cargo bench --bench firewall` (well under a minute).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use loopgate::firewall::{chat, stream::StreamGuard, Firewall, FirewallConfig, Policy, Report};
use serde_json::{json, Map, Value};

const CONFIG: &str = r#"
default_policy = "std"
[policies.std]
packs = ["injection", "pii", "secrets"]
rules = ["codename", "topics"]
[rules.codename]
pattern = "(?i)project\\s+falcon"
[rules.topics]
keywords = ["nerve agent synthesis", "build a pipe bomb", "credit card dump"]
"#;

fn policy() -> Arc<Policy> {
    let cfg: FirewallConfig = toml::from_str(CONFIG).expect("config");
    let fw = Firewall::compile(&cfg, [], []).expect("compile");
    fw.policy("std").expect("policy").clone()
}

/// About 2 KiB of ordinary prose in a system and a user message.
fn body(extra: &str) -> Map<String, Value> {
    let prose = "The quarterly report shows revenue growth of 12 percent, driven by the new \
                 subscription tier and lower churn in the enterprise segment. ";
    let mut user = prose.repeat(13);
    user.push_str(extra);
    let v = json!({"model": "gpt-4o-mini", "messages": [
        {"role": "system", "content": "You are a careful financial analyst. Answer briefly."},
        {"role": "user", "content": user}]});
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fn bench(c: &mut Criterion) {
    let p = policy();
    let clean = body("");
    let len = serde_json::to_vec(&clean).map(|v| v.len()).unwrap_or(0);
    let mut g = c.benchmark_group("firewall");
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes(len as u64));
    g.bench_function("request_clean_2k", |b| {
        b.iter_batched_ref(
            || (Report::new(p.clone()), clean.clone()),
            |(r, body)| black_box(chat::check_request(r, body).is_ok()),
            BatchSize::SmallInput,
        )
    });
    let dirty = body("My key is sk-proj-abcdefghijklmnopqrstuvwxyz012345, check it.");
    g.bench_function("request_redact_2k", |b| {
        b.iter_batched_ref(
            || (Report::new(p.clone()), dirty.clone()),
            |(r, body)| black_box(chat::check_request(r, body).is_ok()),
            BatchSize::SmallInput,
        )
    });
    let chunk = |t: &str| {
        let ev = json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": t}, "finish_reason": null}]});
        format!("data: {ev}\n\n").into_bytes()
    };
    let chunks: Vec<Vec<u8>> = (0..64)
        .map(|i| chunk(&format!("token {i} of a fairly ordinary answer, ")))
        .collect();
    g.throughput(Throughput::Elements(chunks.len() as u64));
    g.bench_function("stream_64_chunks", |b| {
        b.iter_batched_ref(
            || StreamGuard::new(Report::new(p.clone()), 256, 16 * 1024),
            |guard| {
                let mut out = BytesMut::with_capacity(8192);
                for c in &chunks {
                    guard.feed(c, &mut out, None);
                }
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    // The exact cache's lookup on the same request, then the firewall: key (SHA-256 over
    // the canonical body) + in-memory get (a hit) + the clean-prompt check.
    let cache = loopgate::cache::Cache::new(&loopgate::cache::CacheConfig::default());
    let key = loopgate::cache::key(Some("bench"), "openai", "gpt-4o-mini", false, &clean);
    cache.insert(
        key,
        loopgate::cache::Entry {
            body: loopgate::cache::Body::Json(bytes::Bytes::from_static(b"{\"id\":\"x\"}")),
            provider: "openai".into(),
            model: Some("gpt-4o-mini".into()),
            usage: Default::default(),
            cost_usd: 0.0,
            latency_ms: 1.0,
            request_id: "x".into(),
            expires: std::time::Instant::now() + Duration::from_secs(3600),
        },
    );
    let mut g = c.benchmark_group("cache");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("key_2k", |b| {
        b.iter(|| {
            black_box(loopgate::cache::key(
                Some("bench"),
                "openai",
                "gpt-4o-mini",
                false,
                black_box(&clean),
            ))
        })
    });
    g.bench_function("key_lookup_hit_and_firewall_2k", |b| {
        b.iter_batched_ref(
            || (Report::new(p.clone()), clean.clone()),
            |(r, body)| {
                let clean_ok = chat::check_request(r, body).is_ok();
                let k = loopgate::cache::key(Some("bench"), "openai", "gpt-4o-mini", false, body);
                black_box((clean_ok, cache.get(&k).is_some()))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
