//! `/v1/analytics` latency over 1 million traces in SQLite, through the admin handler
//! (query + aggregation + JSON), for rollup-answerable queries and for the raw-row path.
//!
//! `cargo bench --bench analytics_query`. The 1M-trace database is generated once
//! (bulk insert through `Store::insert_traces`, which also maintains the rollup) into
//! `target/bench-data/analytics-1m.db` and reused; delete it to regenerate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use loopgate::admin::{AdminBody, AdminRequest, Caller, Scope};
use loopgate::store::writer::StoreSlot;
use loopgate::store::{Backend, StorageConfig, Store};
use loopgate::trace::TraceRecord;

const N: u64 = 1_000_000;
/// 2026-01-01T00:00:00Z; traces spread over 30 days.
const T0: i64 = 1_767_225_600_000;
const SPAN_MS: i64 = 30 * 86_400_000;

fn rec(i: u64) -> TraceRecord {
    const MODELS: [&str; 12] = [
        "gpt-4o",
        "gpt-4o-mini",
        "o3-mini",
        "claude-3-5-sonnet",
        "claude-3-5-haiku",
        "gemini-2.0-flash",
        "gemini-1.5-pro",
        "llama-3.1-70b",
        "llama-3.1-8b",
        "mistral-large",
        "deepseek-chat",
        "grok-2",
    ];
    const PROVIDERS: [&str; 5] = ["openai", "anthropic", "gemini", "groq", "mistral"];
    // cheap deterministic scramble
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 17;
    let m = (h % 12) as usize;
    TraceRecord {
        request_id: format!("r{i:09}"),
        ts_ms: T0 + (i as i64 * SPAN_MS) / N as i64,
        endpoint: "chat.completions".into(),
        session_id: Some(format!("s{}", i / 6)),
        project_id: Some(format!("proj-{}", h % 20)),
        user_id: Some(format!("user-{}", (h >> 8) % 2000)),
        properties: vec![
            (
                "env".into(),
                ["prod", "staging", "dev"][(h % 3) as usize].into(),
            ),
            ("team".into(), format!("t{}", (h >> 4) % 8)),
        ],
        route: Some(format!("route-{}", (h >> 12) % 10)),
        requested_model: MODELS[m].into(),
        served_model: Some(MODELS[m].into()),
        provider: Some(PROVIDERS[m % 5].into()),
        status: if h.is_multiple_of(61) {
            500
        } else if h.is_multiple_of(97) {
            429
        } else {
            200
        },
        prompt_tokens: 200 + h % 4000,
        completion_tokens: 50 + h % 800,
        usage_reported: true,
        cost_usd: (200 + h % 4000) as f64 * 2.5e-6,
        latency_ms: 80.0 + (h % 5000) as f64 * 0.7,
        ..Default::default()
    }
}

fn db_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("bench-data");
    let _ = std::fs::create_dir_all(&dir);
    dir.join("analytics-1m.db")
}

async fn prepare() -> Arc<dyn Store> {
    let cfg = StorageConfig {
        backend: Backend::Sqlite,
        sqlite_path: db_path().to_string_lossy().into_owned(),
        ..Default::default()
    };
    let store = loopgate::store::open(&cfg).await.expect("open");
    let have = store.count_traces().await.expect("count");
    if have < N {
        let t = Instant::now();
        let batch = 10_000u64;
        let mut i = have;
        while i < N {
            let recs: Vec<TraceRecord> = (i..(i + batch).min(N)).map(rec).collect();
            store.insert_traces(&recs).await.expect("insert");
            i += batch;
        }
        println!(
            "generated {} traces in {:.1}s ({:.0} records/s through insert_traces)",
            N - have,
            t.elapsed().as_secs_f64(),
            (N - have) as f64 / t.elapsed().as_secs_f64()
        );
    }
    store
}

fn request(q: &[(&str, &str)]) -> AdminRequest {
    AdminRequest {
        method: "GET".into(),
        path: "/v1/analytics".into(),
        query: q
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        body: Bytes::new(),
        caller: Caller {
            key_id: Some("bench".into()),
            scopes: vec![Scope::Read],
            project: None,
        },
        headers: vec![],
    }
}

async fn run(slot: &StoreSlot, q: &AdminRequest) -> usize {
    let r = loopgate::admin::analytics::handle(slot, q)
        .await
        .expect("handled");
    assert_eq!(r.status, 200);
    match r.body {
        AdminBody::Full(b) => b.len(),
        AdminBody::Stream(_) => 0,
    }
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(prepare());
    let slot = StoreSlot::with(store);
    // a week in the middle, not hour-aligned (edges come from raw rows)
    let start = (T0 + 10 * 86_400_000 + 1_234_567).to_string();
    let end = (T0 + 17 * 86_400_000 + 7_654_321).to_string();
    let cases: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("model_30d", vec![("group_by", "model")]),
        (
            "model_7d_unaligned",
            vec![("group_by", "model"), ("start", &start), ("end", &end)],
        ),
        (
            "provider_30d_by_day",
            vec![("group_by", "provider"), ("bucket", "day")],
        ),
        (
            "project_7d_by_hour",
            vec![
                ("group_by", "project"),
                ("bucket", "hour"),
                ("start", &start),
                ("end", &end),
            ],
        ),
        ("property_env_30d", vec![("group_by", "property:env")]),
        (
            "route_one_project_30d",
            vec![("group_by", "route"), ("project", "proj-3")],
        ),
        (
            "user_7d",
            vec![("group_by", "user"), ("start", &start), ("end", &end)],
        ),
        // not answerable by the rollup: raw rows
        (
            "raw_model_7d_provider_filter",
            vec![
                ("group_by", "model"),
                ("provider", "openai"),
                ("start", &start),
                ("end", &end),
            ],
        ),
        (
            "raw_model_30d_status_error",
            vec![("group_by", "model"), ("status", "error")],
        ),
    ];
    let mut g = c.benchmark_group("analytics_1m_sqlite");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    for (name, q) in &cases {
        let r = request(q);
        g.bench_function(*name, |b| b.iter(|| rt.block_on(run(&slot, &r))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
