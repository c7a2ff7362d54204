//! Backend-independent checks of the trace pipeline and the read API, run against SQLite
//! (`tests/store_sqlite.rs`) and PostgreSQL (`tests/store_postgres.rs`).
//! Include with `#[path = "support/store_cases.rs"] mod cases;`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use loopgate::admin::{AdminBody, AdminRequest, Caller, Scope};
use loopgate::store::writer::{trace_pipeline, StoreSlot, TraceSink};
use loopgate::store::{
    Cursor, GroupBy, Histogram, LogFilter, LogQuery, ProjectSel, PurgeRule, StatusFilter,
    StorageConfig, Store, VirtualKeyRow,
};
use loopgate::trace::{Attempt, TraceRecord};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// 2026-01-01T00:00:00Z (hour-aligned).
pub const T0: i64 = 1_767_225_600_000;
pub const HOUR: i64 = 3_600_000;
pub const N_FIXTURE: usize = 600;

/// The newest schema migration (the same number on both backends).
pub fn latest_version() -> u32 {
    loopgate::store::migrations::latest_version()
}

pub fn record(i: usize) -> TraceRecord {
    let models = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet"];
    let model = models[i % 3];
    let provider = if i % 3 == 2 { "anthropic" } else { "openai" };
    let served = i % 50 != 7;
    let status: u16 = if !served {
        502
    } else if i.is_multiple_of(13) {
        429
    } else if i.is_multiple_of(17) {
        500
    } else {
        200
    };
    let mid_stream_error = status == 200 && i.is_multiple_of(23);
    let mut props = vec![(
        "env".to_string(),
        if i.is_multiple_of(3) { "dev" } else { "prod" }.to_string(),
    )];
    if i.is_multiple_of(4) {
        props.push(("team".to_string(), "a".to_string()));
    }
    if i % 6 == 1 {
        // An exact-cache hit: what the original answer cost and how long it took.
        props.push(("cache".to_string(), "hit".to_string()));
        props.push((
            "cache_saved_usd".to_string(),
            format!("{:.9}", 0.000_1 * (i % 5 + 1) as f64),
        ));
        props.push((
            "cache_saved_ms".to_string(),
            format!("{:.3}", 10.25 + i as f64),
        ));
    }
    props.sort();
    let prompt = 100 + i as u64;
    let completion = 10 + (i % 50) as u64;
    TraceRecord {
        request_id: format!("req-{i:05}"),
        // ~4.8 minutes apart from 00:17 on, spanning two days; some share a millisecond
        ts_ms: T0 + 17 * 60_000 + (i as i64 / 2) * 576_000 + (i as i64 % 7),
        endpoint: "chat.completions".into(),
        // Three keys, and some requests without one (loopback dev mode).
        key_id: (!i.is_multiple_of(7)).then(|| format!("k{}", i % 3)),
        session_id: Some(format!("s{}", i / 10)),
        session_name: Some(format!("name-{}", i / 10)),
        session_path: Some("/a/b".into()),
        project_id: Some(if i.is_multiple_of(2) { "alpha" } else { "beta" }.into()),
        user_id: (!i.is_multiple_of(9)).then(|| format!("u{}", i % 4)),
        properties: props,
        route: Some(if i.is_multiple_of(2) { "chat" } else { "code" }.into()),
        requested_model: if i.is_multiple_of(5) {
            "auto".into()
        } else {
            model.into()
        },
        served_model: served.then(|| model.to_string()),
        provider: served.then(|| provider.to_string()),
        attempts: vec![Attempt {
            provider: provider.into(),
            model: model.into(),
            status: Some(status),
            outcome: if status == 200 { "ok" } else { "http_error" }.into(),
            latency_ms: 12.5,
            error: (status != 200).then(|| "upstream said no".to_string()),
        }],
        status,
        stream: i % 2 == 1,
        cancelled: false,
        fallback_used: i.is_multiple_of(11),
        prompt_tokens: prompt,
        completion_tokens: completion,
        cached_tokens: i as u64 % 5,
        cache_creation_tokens: 0,
        reasoning_tokens: 0,
        usage_reported: served,
        cost_usd: prompt as f64 * 2.5e-6 + completion as f64 * 1e-5,
        // Some records unpriced: the flag round-trips through both backends.
        cost_unknown: i.is_multiple_of(9),
        latency_ms: 50.0 + ((i * 37) % 1000) as f64 + 0.25,
        ttft_ms: Some(20.5),
        request_bytes: 1000 + i as u64,
        response_bytes: 2000,
        error: if status != 200 {
            Some("upstream error".into())
        } else if mid_stream_error {
            Some("stream reset".into())
        } else {
            None
        },
        decision_id: (i.is_multiple_of(5)).then(|| format!("dec-{i}")),
        request_body: Some(format!("{{\"prompt\":{i}}}")),
        response_body: Some("{\"answer\":1}".into()),
        zero_retention: false,
        shadow: false,
        decision: None,
    }
}

pub fn fixture() -> Vec<TraceRecord> {
    (0..N_FIXTURE).map(record).collect()
}

pub fn admin() -> Caller {
    Caller {
        key_id: Some("admin".into()),
        scopes: vec![Scope::Read, Scope::Admin],
        project: None,
    }
}

pub fn inference() -> Caller {
    Caller {
        key_id: Some("inf".into()),
        scopes: vec![Scope::Inference],
        project: None,
    }
}

pub fn locked(p: &str) -> Caller {
    Caller {
        key_id: Some("locked".into()),
        scopes: vec![Scope::Read],
        project: Some(p.into()),
    }
}

pub fn req(path: &str, q: &[(&str, &str)], caller: Caller) -> AdminRequest {
    AdminRequest {
        method: "GET".into(),
        path: path.into(),
        query: q
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        body: Bytes::new(),
        caller,
        headers: vec![],
    }
}

pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, k: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(a, _)| a == k)
            .map(|(_, v)| v.as_str())
    }
}

pub async fn call(slot: &StoreSlot, r: AdminRequest) -> Resp {
    let resp = match loopgate::admin::logs::handle(slot, &r).await {
        Some(x) => x,
        None => match loopgate::admin::analytics::handle(slot, &r).await {
            Some(x) => x,
            None => loopgate::admin::export::handle(slot, &r)
                .await
                .unwrap_or_else(|| panic!("no handler for {}", r.path)),
        },
    };
    let body = match resp.body {
        AdminBody::Full(b) => b.to_vec(),
        AdminBody::Stream(mut rx) => {
            let mut v = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            loop {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(b)) => v.extend_from_slice(&b),
                    Ok(None) => break,
                    Err(_) => panic!("export stream did not end"),
                }
            }
            v
        }
    };
    Resp {
        status: resp.status,
        headers: resp.headers,
        body,
    }
}

pub async fn get(slot: &StoreSlot, path: &str, q: &[(&str, &str)]) -> Resp {
    call(slot, req(path, q, admin())).await
}

/// Equality up to 1 ulp-ish on floats: serde_json's default float parser may be off by one ulp.
pub fn assert_same(got: &TraceRecord, want: &TraceRecord) {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(b.abs()).max(1.0);
    assert!(
        close(got.cost_usd, want.cost_usd),
        "{} cost",
        want.request_id
    );
    assert!(
        close(got.latency_ms, want.latency_ms),
        "{} latency",
        want.request_id
    );
    let mut g = got.clone();
    g.cost_usd = want.cost_usd;
    g.latency_ms = want.latency_ms;
    if let (Some(a), Some(b)) = (g.ttft_ms, want.ttft_ms) {
        assert!(close(a, b));
        g.ttft_ms = want.ttft_ms;
    }
    for (ga, wa) in g.attempts.iter_mut().zip(&want.attempts) {
        assert!(close(ga.latency_ms, wa.latency_ms));
        ga.latency_ms = wa.latency_ms;
    }
    assert_eq!(&g, want);
}

fn is_error(r: &TraceRecord) -> bool {
    r.status >= 400 || r.error.is_some()
}

/// Records `0..n` where every fourth has no session and every fifth no project: the rows a
/// partial index on those columns leaves out.
pub fn records_some_without_session_or_project(n: usize) -> Vec<TraceRecord> {
    (0..n)
        .map(|i| {
            let mut r = record(i);
            if i % 4 == 3 {
                r.session_id = None;
                r.session_name = None;
                r.session_path = None;
            }
            if i % 5 == 4 {
                r.project_id = None;
            }
            r
        })
        .collect()
}

/// A log query with `f` returns exactly the records of `recs` that [`matches`] `f`, newest
/// first (as the store pages them).
pub async fn assert_logs_match(s: &dyn Store, recs: &[TraceRecord], f: &LogFilter) {
    let mut want: Vec<&TraceRecord> = recs.iter().filter(|r| matches(r, f)).collect();
    want.sort_by(|a, b| b.ts_ms.cmp(&a.ts_ms).then(b.request_id.cmp(&a.request_id)));
    let want: Vec<&str> = want.iter().map(|r| r.request_id.as_str()).collect();
    let q = LogQuery {
        filter: f.clone(),
        limit: 1000,
        after: None,
    };
    let got = s.query_logs(&q).await.expect("logs");
    let got: Vec<&str> = got.records.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(got, want, "{f:?}");
}

/// Brute-force filter semantics, the reference for the store's SQL.
pub fn matches(r: &TraceRecord, f: &LogFilter) -> bool {
    f.start_ms.is_none_or(|s| r.ts_ms >= s)
        && f.end_ms.is_none_or(|e| r.ts_ms < e)
        && f.project
            .as_ref()
            .is_none_or(|p| r.project_id.as_ref() == Some(p))
        && f.session
            .as_ref()
            .is_none_or(|p| r.session_id.as_ref() == Some(p))
        && f.user
            .as_ref()
            .is_none_or(|p| r.user_id.as_ref() == Some(p))
        && f.model
            .as_ref()
            .is_none_or(|m| r.served_model.as_ref() == Some(m) || &r.requested_model == m)
        && f.provider
            .as_ref()
            .is_none_or(|p| r.provider.as_ref() == Some(p))
        && f.route.as_ref().is_none_or(|p| r.route.as_ref() == Some(p))
        && match &f.status {
            None => true,
            Some(StatusFilter::Exact(n)) => r.status == *n,
            Some(StatusFilter::Class(d)) => r.status / 100 == *d,
            Some(StatusFilter::Error) => is_error(r),
            Some(StatusFilter::Ok) => !is_error(r),
        }
        && f.properties
            .iter()
            .all(|(n, v)| r.properties.iter().any(|(a, b)| a == n && b == v))
}

fn sorted_desc(mut v: Vec<TraceRecord>) -> Vec<TraceRecord> {
    v.sort_by(|a, b| b.ts_ms.cmp(&a.ts_ms).then(b.request_id.cmp(&a.request_id)));
    v
}

/// Every id the API returns for a query, following cursors.
pub async fn all_ids(
    slot: &StoreSlot,
    caller: Caller,
    q: &[(&str, &str)],
    limit: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let lim = limit.to_string();
    for _ in 0..10_000 {
        let mut qq: Vec<(&str, &str)> = q.to_vec();
        qq.push(("limit", &lim));
        if let Some(c) = &cursor {
            qq.push(("cursor", c));
        }
        let r = call(slot, req("/v1/logs", &qq, caller.clone())).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let v = r.json();
        assert_eq!(v["object"], "list");
        for d in v["data"].as_array().expect("data") {
            assert_eq!(d["object"], "log");
            out.push(d["request_id"].as_str().expect("id").to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return out,
        }
    }
    panic!("pagination did not end");
}

fn expect_ids(recs: &[TraceRecord], f: &LogFilter) -> Vec<String> {
    sorted_desc(recs.iter().filter(|r| matches(r, f)).cloned().collect())
        .into_iter()
        .map(|r| r.request_id)
        .collect()
}

type Agg = BTreeMap<(Option<i64>, Option<String>), (u64, u64, u64, u64, f64, Histogram)>;
/// Exact-cache hits, USD and ms saved per (bucket, group).
type CacheAgg = BTreeMap<(Option<i64>, Option<String>), (u64, f64, f64)>;

fn expected_cache(recs: &[TraceRecord], f: &LogFilter, g: &GroupBy, bucket: &str) -> CacheAgg {
    let mut out: CacheAgg = BTreeMap::new();
    let hits: Vec<TraceRecord> = recs
        .iter()
        .filter(|r| r.properties.iter().any(|(n, _)| n == "cache_saved_usd"))
        .cloned()
        .collect();
    let prop = |r: &TraceRecord, n: &str| -> f64 {
        r.properties
            .iter()
            .find(|(a, _)| a == n)
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0.0)
    };
    for (k, _) in expected_analytics(&hits, f, g, bucket) {
        let mut one = (0u64, 0.0, 0.0);
        for r in &hits {
            if expected_analytics(std::slice::from_ref(r), f, g, bucket).contains_key(&k) {
                one.0 += 1;
                one.1 += prop(r, "cache_saved_usd");
                one.2 += prop(r, "cache_saved_ms");
            }
        }
        out.insert(k, one);
    }
    out
}

fn expected_analytics(recs: &[TraceRecord], f: &LogFilter, g: &GroupBy, bucket: &str) -> Agg {
    let mut out: Agg = BTreeMap::new();
    for r in recs.iter().filter(|r| matches(r, f)) {
        let groups: Vec<Option<String>> = match g {
            GroupBy::Model => vec![Some(
                r.served_model
                    .clone()
                    .unwrap_or_else(|| r.requested_model.clone()),
            )],
            GroupBy::Provider => vec![r.provider.clone()],
            GroupBy::Project => vec![r.project_id.clone()],
            GroupBy::User => vec![r.user_id.clone()],
            GroupBy::Route => vec![r.route.clone()],
            GroupBy::Key => vec![r.key_id.clone()],
            GroupBy::Property(n) => r
                .properties
                .iter()
                .filter(|(a, _)| a == n)
                .map(|(_, v)| Some(v.clone()))
                .collect(),
        };
        let b = match bucket {
            "hour" => Some(r.ts_ms.div_euclid(HOUR) * HOUR),
            "day" => Some(r.ts_ms.div_euclid(24 * HOUR) * 24 * HOUR),
            _ => None,
        };
        for grp in groups {
            let e = out.entry((b, grp)).or_default();
            e.0 += 1;
            e.1 += is_error(r) as u64;
            e.2 += r.prompt_tokens;
            e.3 += r.completion_tokens;
            e.4 += r.cost_usd;
            e.5.record(r.latency_ms);
        }
    }
    out
}

async fn check_analytics(slot: &StoreSlot, recs: &[TraceRecord], q: &[(&str, &str)]) {
    let pairs: Vec<(String, String)> = q
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    let f = LogFilter::from_query(&pairs).expect("filter");
    let g = GroupBy::parse(
        q.iter()
            .find(|(k, _)| *k == "group_by")
            .map(|(_, v)| *v)
            .unwrap_or("model"),
    )
    .expect("group");
    let bucket = q
        .iter()
        .find(|(k, _)| *k == "bucket")
        .map(|(_, v)| *v)
        .unwrap_or("none");
    let exp = expected_analytics(recs, &f, &g, bucket);
    let cache = expected_cache(recs, &f, &g, bucket);
    let r = get(slot, "/v1/analytics", q).await;
    assert_eq!(r.status, 200, "{q:?}: {}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "analytics");
    let rows = v["data"].as_array().expect("data");
    assert_eq!(rows.len(), exp.len(), "{q:?}: rows {rows:?}");
    for row in rows {
        let key = (
            row.get("bucket_start_ms").and_then(Value::as_i64),
            row["group"].as_str().map(str::to_string),
        );
        let e = exp
            .get(&key)
            .unwrap_or_else(|| panic!("{q:?}: unexpected row {row}"));
        assert_eq!(row["requests"].as_u64(), Some(e.0), "{q:?} {row}");
        assert_eq!(row["errors"].as_u64(), Some(e.1), "{q:?} {row}");
        assert_eq!(row["prompt_tokens"].as_u64(), Some(e.2), "{q:?} {row}");
        assert_eq!(row["completion_tokens"].as_u64(), Some(e.3), "{q:?} {row}");
        assert!(
            (row["cost_usd"].as_f64().unwrap_or(-1.0) - e.4).abs() < 1e-6,
            "{q:?} {row}"
        );
        assert_eq!(
            row["p50_latency_ms"].as_f64(),
            Some(e.5.quantile(0.5)),
            "{q:?} {row}"
        );
        assert_eq!(
            row["p95_latency_ms"].as_f64(),
            Some(e.5.quantile(0.95)),
            "{q:?} {row}"
        );
        let rate = e.1 as f64 / e.0 as f64;
        assert!((row["error_rate"].as_f64().unwrap_or(-1.0) - rate).abs() < 1e-5);
        let c = cache.get(&key).copied().unwrap_or_default();
        assert_eq!(row["cache_hits"].as_u64(), Some(c.0), "{q:?} {row}");
        assert!(
            (row["cache_saved_usd"].as_f64().unwrap_or(-1.0) - c.1).abs() < 1e-9,
            "{q:?} {row} want {c:?}"
        );
        assert!(
            (row["cache_saved_ms"].as_f64().unwrap_or(-1.0) - c.2).abs() < 1e-3,
            "{q:?} {row} want {c:?}"
        );
    }
    let hits: u64 = cache.values().map(|c| c.0).sum();
    let usd: f64 = cache.values().map(|c| c.1).sum();
    let t = &v["totals"];
    // Property groupings count a trace once per value it carries; the filter-wide totals
    // are the sum of the rows either way.
    assert_eq!(t["cache_hits"].as_u64(), Some(hits), "{q:?} {t}");
    assert!((t["cache_saved_usd"].as_f64().unwrap_or(-1.0) - usd).abs() < 1e-9);
}

/// Submit and flush, retrying the flush a bounded number of times.
pub async fn submit_all(sink: &TraceSink, recs: &[TraceRecord]) {
    for r in recs {
        sink.submit(r.clone());
    }
    sink.flush().await.expect("flush");
}

/// A pipeline with a running writer on the current runtime.
pub struct Pipeline {
    pub sink: TraceSink,
    pub slot: StoreSlot,
    pub stop: tokio::sync::watch::Sender<bool>,
    pub task: tokio::task::JoinHandle<()>,
}

impl Pipeline {
    pub fn start(cfg: &StorageConfig) -> Pipeline {
        let (sink, svc, slot) = trace_pipeline(cfg);
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = svc.spawn(rx);
        Pipeline {
            sink,
            slot,
            stop,
            task,
        }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        for _ in 0..200 {
            if let Some(s) = self.slot.get() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the writer never opened the store");
    }

    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// Every read endpoint on one backend. `cfg` selects the backend; capture is switched on here.
pub async fn api_suite(mut cfg: StorageConfig) {
    cfg.capture_bodies = true;
    cfg.zero_retention_projects = vec!["secret".into()];
    let p = Pipeline::start(&cfg);
    let slot = p.slot.clone();

    // Before the writer opened the store the API answers 503 (a fresh, empty slot).
    let empty = StoreSlot::new();
    let r = get(&empty, "/v1/logs", &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "service_unavailable");

    let recs = fixture();
    submit_all(&p.sink, &recs).await;
    let store = p.store().await;
    assert_eq!(store.count_traces().await.expect("count"), N_FIXTURE as u64);
    assert_eq!(
        store.schema_version().await.expect("version"),
        latest_version()
    );
    // idempotent on request_id: a replayed batch stores nothing twice
    assert_eq!(store.insert_traces(&recs[..50]).await.expect("reinsert"), 0);
    assert_eq!(store.count_traces().await.expect("count"), N_FIXTURE as u64);

    logs_cases(&slot, &recs).await;
    one_and_session_cases(&slot, &recs).await;
    analytics_cases(&slot, &recs).await;
    export_cases(&slot, &recs).await;
    zero_retention_cases(&p.sink, &slot).await;
    purge_cases(&store, &slot, &recs).await;
    p.shutdown().await;
}

async fn logs_cases(slot: &StoreSlot, recs: &[TraceRecord]) {
    // default page
    let r = get(slot, "/v1/logs", &[]).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["data"].as_array().map(Vec::len), Some(50));
    assert_eq!(v["has_more"], true);
    // full pagination: stable order, no duplicates, nothing missing
    let all = all_ids(slot, admin(), &[], 77).await;
    assert_eq!(all, expect_ids(recs, &LogFilter::default()));
    let ids: BTreeSet<&String> = all.iter().collect();
    assert_eq!(ids.len(), N_FIXTURE);

    let t_start = "2026-01-01T06:00:00Z";
    let t_end = (T0 + 30 * HOUR + 123).to_string();
    let queries: Vec<Vec<(&str, &str)>> = vec![
        vec![("project", "alpha")],
        vec![("session", "s7")],
        vec![("user", "u1")],
        vec![("model", "gpt-4o")],
        vec![("model", "auto")],
        vec![("provider", "anthropic")],
        vec![("route", "code")],
        vec![("status", "429")],
        vec![("status", "5xx")],
        vec![("status", "4xx")],
        vec![("status", "error")],
        vec![("status", "ok")],
        vec![("property", "env:dev")],
        vec![("property.team", "a"), ("property", "env:prod")],
        vec![("start", t_start), ("end", &t_end)],
        vec![
            ("start", t_start),
            ("project", "beta"),
            ("model", "claude-3-5-sonnet"),
            ("status", "error"),
        ],
    ];
    for q in &queries {
        let pairs: Vec<(String, String)> = q
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let f = LogFilter::from_query(&pairs).expect("filter");
        let exp = expect_ids(recs, &f);
        assert!(!exp.is_empty(), "fixture should cover {q:?}");
        assert_eq!(all_ids(slot, admin(), q, 1000).await, exp, "{q:?}");
    }
    // limits and bad input
    let r = get(slot, "/v1/logs", &[("limit", "5000")]).await;
    assert_eq!(r.json()["data"].as_array().map(Vec::len), Some(600));
    for (k, v) in [
        ("limit", "0"),
        ("limit", "abc"),
        ("cursor", "%%%"),
        ("status", "9xx"),
        ("start", "yesterday"),
        ("bogus", "1"),
        ("property", "noval"),
    ] {
        let r = get(slot, "/v1/logs", &[(k, v)]).await;
        assert_eq!(r.status, 400, "{k}={v}");
        let e = r.json();
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert_eq!(e["error"]["param"], k, "{k}={v}");
    }
    // a cursor from a real page keeps working
    let c = Cursor {
        ts_ms: T0 + 10 * HOUR,
        request_id: "req-99999".into(),
    }
    .encode();
    let r = get(slot, "/v1/logs", &[("cursor", &c), ("limit", "1000")]).await;
    let n = r.json()["data"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(n, recs.iter().filter(|r| r.ts_ms <= T0 + 10 * HOUR).count());
    // scopes and project locks
    for path in [
        "/v1/logs",
        "/v1/logs/req-00001",
        "/v1/sessions/s1",
        "/v1/analytics",
        "/v1/export/logs",
    ] {
        let r = call(slot, req(path, &[], inference())).await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.json()["error"]["type"], "permission_error");
    }
    let locked_ids = all_ids(slot, locked("beta"), &[], 1000).await;
    let f = LogFilter {
        project: Some("beta".into()),
        ..Default::default()
    };
    assert_eq!(locked_ids, expect_ids(recs, &f));
    let r = call(
        slot,
        req("/v1/logs", &[("project", "alpha")], locked("beta")),
    )
    .await;
    assert_eq!(r.status, 403);
    let mut post = req("/v1/logs", &[], admin());
    post.method = "POST".into();
    assert_eq!(call(slot, post).await.status, 405);
}

async fn one_and_session_cases(slot: &StoreSlot, recs: &[TraceRecord]) {
    let r = get(slot, "/v1/logs/req-00042", &[]).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "log");
    let back: TraceRecord = serde_json::from_value(v).expect("record");
    assert_same(&back, &recs[42]);
    let r = get(slot, "/v1/logs/nope", &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "log_not_found");
    // req-00042 is alpha: a beta key must not see it
    assert_eq!(
        call(slot, req("/v1/logs/req-00042", &[], locked("beta")))
            .await
            .status,
        404
    );
    assert_eq!(
        call(slot, req("/v1/logs/req-00042", &[], locked("alpha")))
            .await
            .status,
        200
    );

    let r = get(slot, "/v1/sessions/s7", &[]).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "session");
    assert_eq!(v["name"], "name-7");
    let data = v["data"].as_array().expect("data");
    let mut exp: Vec<&TraceRecord> = recs
        .iter()
        .filter(|r| r.session_id.as_deref() == Some("s7"))
        .collect();
    exp.sort_by(|a, b| a.ts_ms.cmp(&b.ts_ms).then(a.request_id.cmp(&b.request_id)));
    let got: Vec<&str> = data
        .iter()
        .filter_map(|d| d["request_id"].as_str())
        .collect();
    let want: Vec<&str> = exp.iter().map(|r| r.request_id.as_str()).collect();
    assert_eq!(got, want, "session requests in time order");
    let t = &v["totals"];
    assert_eq!(t["requests"].as_u64(), Some(exp.len() as u64));
    assert_eq!(
        t["errors"].as_u64(),
        Some(exp.iter().filter(|r| is_error(r)).count() as u64)
    );
    assert_eq!(
        t["prompt_tokens"].as_u64(),
        Some(exp.iter().map(|r| r.prompt_tokens).sum::<u64>())
    );
    let cost: f64 = exp.iter().map(|r| r.cost_usd).sum();
    assert!((t["cost_usd"].as_f64().unwrap_or(0.0) - cost).abs() < 1e-9);
    let models: BTreeSet<String> = exp
        .iter()
        .map(|r| {
            r.served_model
                .clone()
                .unwrap_or_else(|| r.requested_model.clone())
        })
        .collect();
    let got_models: BTreeSet<String> = t["models"]
        .as_array()
        .expect("models")
        .iter()
        .filter_map(|m| m.as_str().map(str::to_string))
        .collect();
    assert_eq!(got_models, models);
    assert_eq!(get(slot, "/v1/sessions/none", &[]).await.status, 404);
    // s7 holds requests 70..79: even ones alpha, odd ones beta
    let r = call(slot, req("/v1/sessions/s7", &[], locked("alpha"))).await;
    assert_eq!(r.json()["totals"]["requests"].as_u64(), Some(5));
}

async fn analytics_cases(slot: &StoreSlot, recs: &[TraceRecord]) {
    let unaligned_start = (T0 + 30 * 60_000).to_string();
    let unaligned_end = (T0 + 40 * HOUR + 10 * 60_000).to_string();
    let aligned_end = (T0 + 24 * HOUR).to_string();
    let t0 = T0.to_string();
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("group_by", "model")],
        vec![
            ("group_by", "model"),
            ("start", &unaligned_start),
            ("end", &unaligned_end),
        ],
        vec![("group_by", "project"), ("bucket", "day")],
        vec![
            ("group_by", "provider"),
            ("bucket", "hour"),
            ("start", &t0),
            ("end", &aligned_end),
        ],
        vec![
            ("group_by", "property:env"),
            ("bucket", "hour"),
            ("project", "alpha"),
        ],
        vec![("group_by", "user"), ("status", "error")],
        vec![
            ("group_by", "route"),
            ("property", "team:a"),
            ("start", &unaligned_start),
        ],
        vec![
            ("group_by", "model"),
            ("project", "beta"),
            ("start", &unaligned_start),
            ("bucket", "day"),
        ],
        vec![("group_by", "property:team")],
        vec![("group_by", "key")],
        vec![
            ("group_by", "key"),
            ("bucket", "day"),
            ("project", "alpha"),
            ("start", &unaligned_start),
            ("end", &unaligned_end),
        ],
    ];
    for q in &cases {
        check_analytics(slot, recs, q).await;
    }
    // The fixture's cache hits are counted (the checks above compare them per row).
    let r = get(slot, "/v1/analytics", &[("group_by", "project")]).await;
    let t = &r.json()["totals"];
    assert_eq!(t["cache_hits"].as_u64(), Some(100), "{t}");
    assert!(t["cache_saved_usd"].as_f64().unwrap_or(0.0) > 0.01, "{t}");
    assert!(t["cache_saved_ms"].as_f64().unwrap_or(0.0) > 1000.0, "{t}");
    // a locked key gets its project's numbers only
    let r = call(
        slot,
        req("/v1/analytics", &[("group_by", "project")], locked("beta")),
    )
    .await;
    let v = r.json();
    let groups: Vec<&str> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|d| d["group"].as_str())
        .collect();
    assert_eq!(groups, vec!["beta"]);
    // by key, a locked key sees its project's rows only: the same numbers as an unlocked
    // caller filtering on the project
    let r = call(
        slot,
        req("/v1/analytics", &[("group_by", "key")], locked("beta")),
    )
    .await;
    assert_eq!(r.status, 200);
    let exp = expected_analytics(
        recs,
        &LogFilter {
            project: Some("beta".into()),
            ..LogFilter::default()
        },
        &GroupBy::Key,
        "none",
    );
    let v = r.json();
    let got: BTreeMap<Option<String>, u64> = v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| {
            (
                d["group"].as_str().map(str::to_string),
                d["requests"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    let want: BTreeMap<Option<String>, u64> =
        exp.iter().map(|((_, g), e)| (g.clone(), e.0)).collect();
    assert_eq!(got, want);
    assert!(got.values().sum::<u64>() < recs.len() as u64);
    assert!(got.contains_key(&Some("k0".to_string())) && got.contains_key(&None));
    for (k, val) in [
        ("group_by", "color"),
        ("bucket", "week"),
        ("group_by", "property:"),
    ] {
        let r = get(slot, "/v1/analytics", &[(k, val)]).await;
        assert_eq!(r.status, 400, "{k}={val}");
        assert_eq!(r.json()["error"]["param"], k);
    }
}

fn check_export_body(body: &[u8], expect: &[&TraceRecord]) {
    let text = std::str::from_utf8(body).expect("utf8");
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    assert_eq!(lines.len(), expect.len() + 1);
    let trailer: Value = serde_json::from_str(lines[lines.len() - 1]).expect("trailer");
    let body_len = text.len() - lines[lines.len() - 1].len() - 1;
    let digest = hex::encode(Sha256::digest(&body[..body_len]));
    assert_eq!(trailer["sha256"], digest);
    assert_eq!(trailer["count"].as_u64(), Some(expect.len() as u64));
    for (line, rec) in lines.iter().zip(expect) {
        let back: TraceRecord = serde_json::from_str(line).expect("record line");
        assert_same(&back, rec);
    }
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

async fn export_cases(slot: &StoreSlot, recs: &[TraceRecord]) {
    let mut exp: Vec<&TraceRecord> = recs
        .iter()
        .filter(|r| r.project_id.as_deref() == Some("alpha"))
        .collect();
    exp.sort_by(|a, b| b.ts_ms.cmp(&a.ts_ms).then(b.request_id.cmp(&a.request_id)));
    let r = get(slot, "/v1/export/logs", &[("project", "alpha")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-ndjson"));
    check_export_body(&r.body, &exp);
    let plain = r.body.clone();

    let r = get(
        slot,
        "/v1/export/logs",
        &[("project", "alpha"), ("gzip", "true")],
    )
    .await;
    assert_eq!(r.header("content-type"), Some("application/gzip"));
    assert_eq!(gunzip(&r.body), plain);

    let mut rq = req("/v1/export/logs", &[("project", "alpha")], admin());
    rq.headers
        .push(("accept-encoding".into(), "gzip, br".into()));
    let r = call(slot, rq).await;
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(gunzip(&r.body), plain);

    // everything (more than one page)
    let r = get(slot, "/v1/export/logs", &[]).await;
    let all: Vec<TraceRecord> = sorted_desc(recs.to_vec());
    check_export_body(&r.body, &all.iter().collect::<Vec<_>>());
    // an empty export still has a trailer
    let r = get(slot, "/v1/export/logs", &[("project", "nobody")]).await;
    check_export_body(&r.body, &[]);
    assert_eq!(
        get(slot, "/v1/export/logs", &[("gzip", "maybe")])
            .await
            .status,
        400
    );
}

async fn zero_retention_cases(sink: &TraceSink, slot: &StoreSlot) {
    let base = TraceRecord {
        ts_ms: T0 + 100 * HOUR,
        endpoint: "chat.completions".into(),
        requested_model: "gpt-4o".into(),
        status: 200,
        prompt_tokens: 7,
        completion_tokens: 3,
        cost_usd: 0.5,
        request_body: Some("secret prompt".into()),
        response_body: Some("secret completion".into()),
        ..Default::default()
    };
    let keep = TraceRecord {
        request_id: "zr-keep".into(),
        ..base.clone()
    };
    let by_key = TraceRecord {
        request_id: "zr-key".into(),
        zero_retention: true,
        ..base.clone()
    };
    let by_project = TraceRecord {
        request_id: "zr-project".into(),
        project_id: Some("secret".into()),
        ..base.clone()
    };
    submit_all(sink, &[keep, by_key, by_project]).await;
    let v = get(slot, "/v1/logs/zr-keep", &[]).await.json();
    assert_eq!(v["request_body"], "secret prompt");
    for id in ["zr-key", "zr-project"] {
        let v = get(slot, &format!("/v1/logs/{id}"), &[]).await.json();
        assert!(
            v["request_body"].is_null() && v["response_body"].is_null(),
            "{id}: {v}"
        );
        assert_eq!(v["zero_retention"], true);
        // metadata, tokens and cost are still there
        assert_eq!(v["prompt_tokens"], 7);
        assert_eq!(v["cost_usd"], 0.5);
    }
}

async fn purge_cases(store: &Arc<dyn Store>, slot: &StoreSlot, recs: &[TraceRecord]) {
    let cut = T0 + 24 * HOUR;
    let n = store
        .purge(&PurgeRule {
            before_ms: cut,
            projects: ProjectSel::Only("alpha".into()),
        })
        .await
        .expect("purge");
    let gone = recs
        .iter()
        .filter(|r| r.ts_ms < cut && r.project_id.as_deref() == Some("alpha"))
        .count();
    assert_eq!(n as usize, gone);
    let left: Vec<TraceRecord> = recs
        .iter()
        .filter(|r| !(r.ts_ms < cut && r.project_id.as_deref() == Some("alpha")))
        .cloned()
        .collect();
    assert_eq!(
        all_ids(slot, admin(), &[], 1000).await.len(),
        left.len() + 3
    );
    // property filters no longer see purged traces
    let f = LogFilter {
        properties: vec![("env".into(), "dev".into())],
        ..Default::default()
    };
    assert_eq!(
        all_ids(slot, admin(), &[("property", "env:dev")], 1000).await,
        expect_ids(&left, &f)
    );
    // the rollup lost alpha's hours before the cut too
    check_analytics(
        slot,
        &left,
        &[
            ("group_by", "project"),
            ("end", &(T0 + 48 * HOUR).to_string()),
        ],
    )
    .await;
    // default rule with an exception list leaves alpha and beta alone, purges the rest
    let n = store
        .purge(&PurgeRule {
            before_ms: T0 + 200 * HOUR,
            projects: ProjectSel::AllExcept(vec!["alpha".into(), "beta".into()]),
        })
        .await
        .expect("purge");
    assert_eq!(
        n, 3,
        "the three zero-retention test traces (no project / 'secret')"
    );
    assert_eq!(
        store.count_traces().await.expect("count") as usize,
        left.len()
    );
}

/// Records with distinct ids for load tests.
pub fn load_records(prefix: &str, n: usize) -> Vec<TraceRecord> {
    (0..n)
        .map(|i| TraceRecord {
            request_id: format!("{prefix}-{i:06}"),
            ..record(i)
        })
        .collect()
}

// ---- routing state (migration 2): decisions, feedback, audit log, route state, stats ----

use loopgate::store::routing::{verify_chain, GENESIS_HASH};
use loopgate::store::{
    AuditAppend, AuditEntry, DecisionQuery, DecisionRow, FeedbackInsert, FeedbackRow,
    RouteModelStats, RouteServed, RouteStateRow,
};

/// A trace with a routing decision attached (`ts` ties on purpose, for the cursor).
pub fn decided(i: usize) -> TraceRecord {
    let id = format!("dec-{i:04}");
    let ts = T0 + (i as i64 / 2) * 1_000;
    let d = DecisionRow {
        request_id: id.clone(),
        ts_ms: ts,
        route: format!("r{}", i % 2),
        mode: if i.is_multiple_of(4) {
            "shadow"
        } else {
            "live"
        }
        .into(),
        session_id: (i % 5 != 4).then(|| format!("ds{}", i % 3)),
        chosen: format!("m{}", (i + 1) % 3),
        served: format!("m{}", i % 3),
        baseline: "m0".into(),
        context: (i.is_multiple_of(2)).then(|| "code".to_string()),
        kind: "promoted".into(),
        shadow: i.is_multiple_of(4),
        confidence: (!i.is_multiple_of(5)).then(|| i as f64 / 40.0),
        quality: (!i.is_multiple_of(7)).then(|| 1.0 - i as f64 / 40.0),
        propensity: 0.5 + i as f64 / 100.0,
        table_version: 1_000 + i as u64,
        signed: format!("{{\"trace\":{{\"i\":{i}}},\"signature\":\"ab\"}}"),
        project: (i % 3 != 2).then(|| format!("p{}", i % 3)),
        deferred: None,
    };
    TraceRecord {
        request_id: id,
        ts_ms: ts,
        route: Some(d.route.clone()),
        session_id: d.session_id.clone(),
        served_model: Some(d.served.clone()),
        decision_id: Some(d.request_id.clone()),
        decision: Some(Box::new(d)),
        ..record(i)
    }
}

fn decision_matches(d: &DecisionRow, q: &DecisionQuery) -> bool {
    let in_range = |v: Option<f64>, lo: Option<f64>, hi: Option<f64>| {
        (lo.is_none() && hi.is_none())
            || v.is_some_and(|v| lo.is_none_or(|l| v >= l) && hi.is_none_or(|h| v <= h))
    };
    q.session_id
        .as_ref()
        .is_none_or(|s| d.session_id.as_ref() == Some(s))
        && q.route.as_ref().is_none_or(|r| &d.route == r)
        && q.model.as_ref().is_none_or(|m| &d.served == m)
        && q.project
            .as_ref()
            .is_none_or(|p| d.project.as_ref() == Some(p))
        && q.from_ms.is_none_or(|f| d.ts_ms >= f)
        && q.to_ms.is_none_or(|t| d.ts_ms < t)
        && in_range(d.confidence, q.min_confidence, q.max_confidence)
        && in_range(d.quality, q.min_quality, q.max_quality)
        && q.before.as_ref().is_none_or(|(ts, id)| {
            d.ts_ms < *ts || (d.ts_ms == *ts && d.request_id.as_str() < id.as_str())
        })
}

fn expected_ids(all: &[DecisionRow], q: &DecisionQuery) -> Vec<String> {
    let mut v: Vec<&DecisionRow> = all.iter().filter(|d| decision_matches(d, q)).collect();
    v.sort_by(|a, b| (b.ts_ms, &b.request_id).cmp(&(a.ts_ms, &a.request_id)));
    v.into_iter()
        .take(q.limit)
        .map(|d| d.request_id.clone())
        .collect()
}

async fn check_decisions(store: &Arc<dyn Store>) {
    let recs: Vec<TraceRecord> = (0..60).map(decided).collect();
    let all: Vec<DecisionRow> = recs
        .iter()
        .filter_map(|r| r.decision.as_deref().cloned())
        .collect();
    assert_eq!(store.insert_traces(&recs[..40]).await.expect("insert"), 40);
    // a retried batch (overlapping) stores neither traces nor decisions twice
    assert_eq!(store.insert_traces(&recs).await.expect("insert"), 20);
    assert_eq!(
        store.get_decision("dec-0013").await.expect("get").as_ref(),
        Some(&all[13])
    );
    assert_eq!(store.get_decision("nope").await.expect("get"), None);
    let t = store
        .get_trace("dec-0013")
        .await
        .expect("get")
        .expect("trace");
    assert!(
        t.decision.is_none(),
        "decisions are read through get_decision"
    );

    let base = DecisionQuery {
        limit: 1000,
        ..Default::default()
    };
    let queries = vec![
        base.clone(),
        DecisionQuery {
            session_id: Some("ds1".into()),
            ..base.clone()
        },
        DecisionQuery {
            route: Some("r1".into()),
            ..base.clone()
        },
        DecisionQuery {
            model: Some("m2".into()),
            ..base.clone()
        },
        DecisionQuery {
            from_ms: Some(T0 + 5_000),
            to_ms: Some(T0 + 20_000),
            ..base.clone()
        },
        DecisionQuery {
            min_confidence: Some(0.5),
            ..base.clone()
        },
        DecisionQuery {
            max_confidence: Some(0.3),
            ..base.clone()
        },
        DecisionQuery {
            min_quality: Some(0.4),
            max_quality: Some(0.8),
            ..base.clone()
        },
        DecisionQuery {
            route: Some("r0".into()),
            model: Some("m1".into()),
            min_confidence: Some(0.1),
            ..base.clone()
        },
        DecisionQuery {
            before: Some((T0 + 10_000, "dec-0021".into())),
            ..base.clone()
        },
        DecisionQuery {
            limit: 3,
            ..base.clone()
        },
        DecisionQuery {
            project: Some("p1".into()),
            route: Some("r1".into()),
            ..base.clone()
        },
    ];
    for q in &queries {
        let got: Vec<String> = store
            .query_decisions(q)
            .await
            .expect("query")
            .into_iter()
            .map(|d| d.request_id)
            .collect();
        let want = expected_ids(&all, q);
        assert!(!want.is_empty(), "{q:?} selects something");
        assert_eq!(got, want, "{q:?}");
    }
    // the rows come back whole
    let one = store
        .query_decisions(&DecisionQuery {
            session_id: Some("ds2".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(one.len(), 1);
    assert_eq!(
        Some(&one[0]),
        all.iter().find(|d| d.request_id == one[0].request_id)
    );
    // keyset paging over equal timestamps visits every row once, newest first
    let mut paged = Vec::new();
    let mut q = DecisionQuery {
        limit: 7,
        ..Default::default()
    };
    for _ in 0..20 {
        let page = store.query_decisions(&q).await.expect("page");
        let Some(last) = page.last() else { break };
        q.before = Some((last.ts_ms, last.request_id.clone()));
        paged.extend(page.into_iter().map(|d| d.request_id));
    }
    assert_eq!(paged, expected_ids(&all, &base));
    // the page size is capped
    let capped = store
        .query_decisions(&DecisionQuery {
            limit: 1_000_000,
            ..Default::default()
        })
        .await
        .expect("capped");
    assert_eq!(capped.len(), 60);
}

pub fn feedback(i: usize, key: &str) -> FeedbackRow {
    FeedbackRow {
        seq: 0,
        id: format!("fb_{key}"),
        dedup_key: key.to_string(),
        signal: if i.is_multiple_of(2) {
            "feedback"
        } else {
            "session_nps"
        }
        .into(),
        request_id: (i.is_multiple_of(2)).then(|| format!("dec-{i:04}")),
        session_id: (i % 2 == 1).then(|| format!("ds{i}")),
        route: Some("r0".into()),
        model: Some("m1".into()),
        context: (i.is_multiple_of(3)).then(|| "math".to_string()),
        value: (i % 11) as f64,
        scale: if i.is_multiple_of(2) { "binary" } else { "nps" }.into(),
        targets: if i % 2 == 1 {
            vec![
                ("r0".into(), "m1".into(), String::new()),
                ("r1".into(), "m2".into(), "code".into()),
            ]
        } else {
            Vec::new()
        },
        at_ms: T0 + i as i64,
        received_ms: T0 + 1_000 + i as i64,
        key_id: Some("k1".into()),
        comment: (i.is_multiple_of(4)).then(|| "nice \"quoted\" ✓".to_string()),
        detail: (i.is_multiple_of(5)).then(|| "{\"rubric\":\"v1\"}".to_string()),
        project: (i.is_multiple_of(2)).then(|| "p0".to_string()),
    }
}

async fn check_feedback(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    let mut stored: Vec<FeedbackRow> = Vec::new();
    for i in 0..5 {
        match a
            .insert_feedback(&feedback(i, &format!("k{i}")))
            .await
            .expect("insert")
        {
            FeedbackInsert::Inserted(r) => {
                assert!(stored.last().is_none_or(|p| r.seq > p.seq), "seq increases");
                assert_eq!(
                    r,
                    FeedbackRow {
                        seq: r.seq,
                        ..feedback(i, &format!("k{i}"))
                    }
                );
                stored.push(r);
            }
            FeedbackInsert::Duplicate(r) => panic!("fresh key reported duplicate: {r:?}"),
        }
    }
    // same dedup key, different content (and id): the original comes back unchanged
    let dup = FeedbackRow {
        id: "fb_other".into(),
        value: 99.0,
        ..feedback(2, "k2")
    };
    assert_eq!(
        b.insert_feedback(&dup).await.expect("dup"),
        FeedbackInsert::Duplicate(stored[2].clone())
    );
    // two instances insert concurrently, including a race on the same key
    let (ra, rb) = tokio::join!(
        async {
            let mut out = Vec::new();
            for i in 0..15 {
                out.push(
                    a.insert_feedback(&feedback(i, &format!("a{i}")))
                        .await
                        .expect("a"),
                );
                out.push(
                    a.insert_feedback(&feedback(i, &format!("both{i}")))
                        .await
                        .expect("a"),
                );
            }
            out
        },
        async {
            let mut out = Vec::new();
            for i in 0..15 {
                out.push(
                    b.insert_feedback(&feedback(i, &format!("b{i}")))
                        .await
                        .expect("b"),
                );
                let mut row = feedback(i, &format!("both{i}"));
                row.id = format!("fb_b_both{i}");
                out.push(b.insert_feedback(&row).await.expect("b"));
            }
            out
        }
    );
    let mut inserted = 0;
    for r in ra.iter().chain(&rb) {
        if let FeedbackInsert::Inserted(_) = r {
            inserted += 1;
        }
    }
    assert_eq!(inserted, 45, "15 a + 15 b + one winner per shared key");
    let everything = a.feedback_since(0, 10_000).await.expect("since");
    assert_eq!(everything.len(), 50);
    assert!(everything.windows(2).all(|w| w[0].seq < w[1].seq));
    assert_eq!(&everything[..5], &stored[..]);
    // every Inserted row is stored exactly as returned
    for r in ra.iter().chain(&rb) {
        if let FeedbackInsert::Inserted(r) = r {
            assert!(everything.contains(r), "{r:?}");
        }
    }
    // paging with a cursor visits everything once, in order
    let mut cursor = 0;
    let mut paged = Vec::new();
    for _ in 0..100 {
        let page = b.feedback_since(cursor, 7).await.expect("page");
        let Some(last) = page.last() else { break };
        assert!(page.len() <= 7);
        cursor = last.seq;
        paged.extend(page);
    }
    assert_eq!(paged, everything);
    assert!(a
        .feedback_since(everything[49].seq, 10)
        .await
        .expect("tail")
        .is_empty());
}

fn audit_append(who: &str, i: usize) -> AuditAppend {
    AuditAppend {
        ts_ms: T0 + i as i64,
        actor: who.into(),
        action: "constraints.update".into(),
        route: (!i.is_multiple_of(3)).then(|| "chat".to_string()),
        old: Some(format!("{{\"min_samples\":{i}}}")),
        new: Some(format!("{{\"min_samples\":{}}}", i + 1)),
        reason: (i.is_multiple_of(2)).then(|| "tuning".to_string()),
    }
}

async fn check_audit(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    assert!(a.list_audit(0, 10).await.expect("empty").is_empty());
    let (ea, eb) = tokio::join!(
        async {
            let mut v: Vec<AuditEntry> = Vec::new();
            for i in 0..12 {
                v.push(
                    a.append_audit(&audit_append("ka", i))
                        .await
                        .expect("append a"),
                );
            }
            v
        },
        async {
            let mut v: Vec<AuditEntry> = Vec::new();
            for i in 0..12 {
                v.push(
                    b.append_audit(&audit_append("kb", i))
                        .await
                        .expect("append b"),
                );
            }
            v
        }
    );
    let all = b.list_audit(0, 1000).await.expect("list");
    assert_eq!(all.len(), 24);
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=24).collect::<Vec<i64>>()
    );
    verify_chain(GENESIS_HASH, &all).expect("one unbroken chain");
    for e in ea.iter().chain(&eb) {
        assert_eq!(
            &all[(e.seq - 1) as usize],
            e,
            "returned entry is the stored one"
        );
    }
    let page = a.list_audit(5, 5).await.expect("page");
    assert_eq!(page, all[5..10].to_vec());
    verify_chain(&all[4].hash, &page).expect("a page verifies from its predecessor");
    let next = a
        .append_audit(&audit_append("ka", 99))
        .await
        .expect("append");
    assert_eq!(
        (next.seq, next.prev_hash.as_str()),
        (25, all[23].hash.as_str())
    );
}

async fn check_route_state(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    assert!(a.route_states().await.expect("empty").is_empty());
    a.put_route_state("chat", "pin", Some("{\"model\":\"m0\"}"), 10)
        .await
        .expect("put");
    a.put_route_state("chat", "constraints", Some("{\"min_samples\":5}"), 11)
        .await
        .expect("put");
    b.put_route_state("code", "pin", Some("{\"model\":\"m1\"}"), 12)
        .await
        .expect("put");
    b.put_route_state("chat", "pin", Some("{\"model\":\"m2\"}"), 13)
        .await
        .expect("overwrite");
    a.put_route_state("code", "pin", None, 14)
        .await
        .expect("delete");
    a.put_route_state("nowhere", "pin", None, 15)
        .await
        .expect("deleting nothing is fine");
    let row = |r: &str, k: &str, v: &str, t: i64| RouteStateRow {
        route: r.into(),
        key: k.into(),
        value: v.into(),
        updated_ms: t,
    };
    assert_eq!(
        b.route_states().await.expect("states"),
        vec![
            row("chat", "constraints", "{\"min_samples\":5}", 11),
            row("chat", "pin", "{\"model\":\"m2\"}", 13),
        ]
    );
}

fn vkey(id: &str, hash: &str, project: Option<&str>, t: i64) -> VirtualKeyRow {
    VirtualKeyRow {
        id: id.into(),
        hash: hash.into(),
        project: project.map(str::to_string),
        spec: format!("{{\"name\":\"{id}\"}}"),
        created_ms: t,
        updated_ms: t,
        revoked_ms: None,
    }
}

/// Virtual keys: insert, replace by id (hash and creation time kept), revoke, a duplicate
/// hash refused, every row seen through the other instance, oldest first.
async fn check_virtual_keys(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    assert!(a.virtual_keys().await.expect("empty").is_empty());
    let k1 = vkey("vk_1", "sha256:01", Some("alpha"), 10);
    let k2 = vkey("vk_2", "sha256:02", None, 11);
    a.put_virtual_key(&k1).await.expect("put 1");
    b.put_virtual_key(&k2).await.expect("put 2");
    assert_eq!(
        b.virtual_keys().await.expect("list"),
        vec![k1.clone(), k2.clone()]
    );
    // A replace never changes the hash or the creation time.
    let patched = VirtualKeyRow {
        hash: "sha256:ff".into(),
        created_ms: 99,
        project: Some("beta".into()),
        spec: "{\"name\":\"renamed\"}".into(),
        updated_ms: 20,
        ..k1.clone()
    };
    b.put_virtual_key(&patched).await.expect("patch");
    let revoked = VirtualKeyRow {
        updated_ms: 21,
        revoked_ms: Some(21),
        ..k2.clone()
    };
    a.put_virtual_key(&revoked).await.expect("revoke");
    let want_1 = VirtualKeyRow {
        hash: k1.hash.clone(),
        created_ms: k1.created_ms,
        ..patched
    };
    assert_eq!(a.virtual_keys().await.expect("list"), vec![want_1, revoked]);
    // Two keys never share a secret.
    assert!(a
        .put_virtual_key(&vkey("vk_3", "sha256:01", None, 30))
        .await
        .is_err());
    assert_eq!(b.virtual_keys().await.expect("list").len(), 2);
}

/// MCP tokens: insert, found by hash through the other instance, listed oldest first,
/// revoked once, a duplicate hash refused, expired and revoked rows purged by time.
async fn check_mcp_tokens(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    use loopgate::store::McpTokenRow;
    let tok = |id: &str, hash: &str, created: i64, expires: i64| McpTokenRow {
        id: id.into(),
        hash: hash.into(),
        project: Some("alpha".into()),
        spec: "{\"scope\":\"read\",\"routes\":[],\"tags\":[]}".into(),
        created_ms: created,
        expires_ms: expires,
        revoked_ms: None,
    };
    assert!(a.mcp_tokens().await.expect("empty").is_empty());
    let t1 = tok("mcptok_1", "sha256:a1", 10, 1_000);
    let t2 = McpTokenRow {
        project: None,
        ..tok("mcptok_2", "sha256:a2", 11, 5_000)
    };
    a.insert_mcp_token(&t1).await.expect("insert 1");
    b.insert_mcp_token(&t2).await.expect("insert 2");
    assert_eq!(
        b.mcp_token_by_hash("sha256:a1").await.expect("by hash"),
        Some(t1.clone())
    );
    assert_eq!(b.mcp_token_by_hash("sha256:zz").await.expect("none"), None);
    assert_eq!(
        a.mcp_tokens().await.expect("list"),
        vec![t1.clone(), t2.clone()]
    );
    // A second token never shares a secret or an id.
    assert!(a
        .insert_mcp_token(&tok("mcptok_3", "sha256:a1", 12, 9_000))
        .await
        .is_err());
    assert!(a
        .insert_mcp_token(&tok("mcptok_1", "sha256:a3", 12, 9_000))
        .await
        .is_err());
    // Revoked once, seen by the other instance.
    assert!(b.revoke_mcp_token("mcptok_2", 2_000).await.expect("revoke"));
    assert!(!a.revoke_mcp_token("mcptok_2", 2_500).await.expect("again"));
    assert!(!a
        .revoke_mcp_token("mcptok_9", 2_500)
        .await
        .expect("unknown"));
    let r2 = a.mcp_token_by_hash("sha256:a2").await.expect("by hash");
    assert_eq!(r2.and_then(|r| r.revoked_ms), Some(2_000));
    // Purge: rows expired or revoked before the cut-off go, others stay.
    assert_eq!(a.purge_mcp_tokens(900).await.expect("purge none"), 0);
    assert_eq!(b.purge_mcp_tokens(1_500).await.expect("purge expired"), 1);
    assert_eq!(a.mcp_tokens().await.expect("list").len(), 1);
    assert_eq!(a.purge_mcp_tokens(2_001).await.expect("purge revoked"), 1);
    assert!(b.mcp_tokens().await.expect("list").is_empty());
}

/// 2026-04-11: later than every other trace of the suite, so the stats window holds only these.
pub const STATS_T: i64 = T0 + 100 * 24 * HOUR;

fn stat_trace(id: String, ts: i64, route: &str, model: &str, latency: f64) -> TraceRecord {
    TraceRecord {
        request_id: id,
        ts_ms: ts,
        endpoint: "chat.completions".into(),
        route: Some(route.into()),
        served_model: Some(model.into()),
        status: 200,
        error: None,
        shadow: false,
        prompt_tokens: 100,
        completion_tokens: 10,
        cost_usd: 0.25,
        latency_ms: latency,
        decision: None,
        ..record(1)
    }
}

async fn check_route_model_stats(store: &Arc<dyn Store>) {
    let mut recs = Vec::new();
    // (sa, m1): 20 served rows, latencies 1..=20; 2 statuses >= 400 and one mid-stream error
    for i in 0..20 {
        let mut r = stat_trace(
            format!("st-a1-{i}"),
            STATS_T + i,
            "sa",
            "m1",
            (i + 1) as f64,
        );
        match i {
            3 => r.status = 500,
            4 => r.status = 429,
            5 => r.error = Some("stream reset".into()),
            _ => {}
        }
        recs.push(r);
    }
    // (sa, m2): 3 rows
    for i in 0..3 {
        recs.push(stat_trace(
            format!("st-a2-{i}"),
            STATS_T + i,
            "sa",
            "m2",
            7.0 + i as f64,
        ));
    }
    // excluded: shadow, judge, before the window, no route, no served model
    let mut shadow = stat_trace("st-x-shadow".into(), STATS_T + 1, "sa", "m1", 1e6);
    shadow.shadow = true;
    shadow.endpoint = "shadow".into();
    let mut judge = stat_trace("st-x-judge".into(), STATS_T + 1, "sa", "m1", 1e6);
    judge.endpoint = "judge".into();
    let early = stat_trace("st-x-early".into(), STATS_T - 1, "sa", "m1", 1e6);
    let mut no_route = stat_trace("st-x-noroute".into(), STATS_T + 1, "sa", "m1", 1e6);
    no_route.route = None;
    let mut no_model = stat_trace("st-x-nomodel".into(), STATS_T + 1, "sa", "m1", 1e6);
    no_model.served_model = None;
    recs.extend([shadow, judge, early, no_route, no_model]);
    // (sb, m1): 5,100 rows; the oldest 100 are slow and fall outside the p95 window
    for i in 0..5_100i64 {
        let lat = if i < 100 { 10_000.0 } else { (i - 99) as f64 };
        recs.push(stat_trace(
            format!("st-b1-{i:05}"),
            STATS_T + i,
            "sb",
            "m1",
            lat,
        ));
    }
    for chunk in recs.chunks(500) {
        store
            .insert_traces(chunk)
            .await
            .expect("insert stats traces");
    }
    let got = store.route_model_stats(STATS_T).await.expect("stats");
    let want = vec![
        RouteModelStats {
            route: "sa".into(),
            model: "m1".into(),
            requests: 20,
            errors: 3,
            prompt_tokens: 2_000,
            completion_tokens: 200,
            cost_usd: 5.0,
            p95_latency_ms: Some(19.0),
        },
        RouteModelStats {
            route: "sa".into(),
            model: "m2".into(),
            requests: 3,
            errors: 0,
            prompt_tokens: 300,
            completion_tokens: 30,
            cost_usd: 0.75,
            p95_latency_ms: Some(9.0),
        },
        RouteModelStats {
            route: "sb".into(),
            model: "m1".into(),
            requests: 5_100,
            errors: 0,
            prompt_tokens: 510_000,
            completion_tokens: 51_000,
            cost_usd: 1_275.0,
            p95_latency_ms: Some(4_750.0),
        },
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort_by(|x, y| (&x.route, &x.model).cmp(&(&y.route, &y.model)));
    assert_eq!(got_sorted.len(), want.len(), "{got:?}");
    for (g, w) in got_sorted.iter().zip(&want) {
        assert!((g.cost_usd - w.cost_usd).abs() < 1e-6, "{g:?}");
        assert_eq!(
            RouteModelStats {
                cost_usd: w.cost_usd,
                ..g.clone()
            },
            *w
        );
    }
    // a later window sees only the tail of (sb, m1)
    let tail = store
        .route_model_stats(STATS_T + 5_000)
        .await
        .expect("stats");
    assert_eq!(tail.len(), 1);
    assert_eq!(
        (tail[0].requests, tail[0].p95_latency_ms),
        (100, Some(4_995.0))
    );
}

/// Every routing-state method on one database, through two store instances (`a`, `b`) that
/// share it, as two gateways would.
pub async fn routing_suite(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    assert_eq!(
        a.schema_version().await.expect("version"),
        loopgate::store::migrations::latest_version()
    );
    check_decisions(&a).await;
    check_virtual_keys(&a, &b).await;
    check_mcp_tokens(&a, &b).await;
    check_feedback(&a, &b).await;
    check_audit(&a, &b).await;
    check_route_state(&a, &b).await;
    check_route_model_stats(&a).await;
    // retention removes a decision together with its trace
    let n = b
        .purge(&PurgeRule {
            before_ms: T0 + 10_000,
            projects: ProjectSel::AllExcept(Vec::new()),
        })
        .await
        .expect("purge");
    assert_eq!(n, 20);
    assert_eq!(a.get_decision("dec-0019").await.expect("get"), None);
    assert!(a.get_decision("dec-0020").await.expect("get").is_some());
    let left = a
        .query_decisions(&DecisionQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .expect("query");
    assert_eq!(left.len(), 40);
    check_key_spend(&a, &b).await;
    check_recent_served(&a, &b).await;
    check_session_nps_targets(&a, &b).await;
}

/// A session NPS credits the requests that held the session: a reference refresh (an
/// explored pick of the baseline inside a session held on the promoted model) is skipped,
/// whichever gateway stored the decisions; a session of refreshes alone credits them.
async fn check_session_nps_targets(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    let t = STATS_T + 2_000_000_000;
    let dec = |i: i64, session: &str, kind: &str, chosen: &str| {
        let id = format!("nps-{session}-{i:02}");
        let mut r = decided_as(id, t + i * 1_000, "nps-r", chosen);
        r.session_id = Some(session.into());
        r.project_id = Some("p0".into());
        if let Some(d) = r.decision.as_mut() {
            d.session_id = Some(session.into());
            d.kind = kind.into();
            d.chosen = chosen.into();
            d.baseline = "m0".into();
            d.context = None;
            d.project = Some("p0".into());
        }
        r
    };
    let recs = vec![
        dec(0, "held", "promoted", "m1"),
        dec(1, "held", "explored", "m0"),
        dec(2, "held", "sticky", "m1"),
        // an explored candidate holds its session: credited
        dec(3, "held", "explored", "m2"),
        dec(0, "refresh-only", "explored", "m0"),
    ];
    a.insert_traces(&recs).await.expect("insert decisions");
    let (mut got, latest) = loopgate::store::pending::session_targets(&**b, "held", Some("p0"))
        .await
        .expect("targets");
    got.sort();
    let tgt = |m: &str| ("nps-r".to_string(), m.to_string(), String::new());
    assert_eq!(got, vec![tgt("m1"), tgt("m1"), tgt("m2")]);
    assert_eq!(
        latest,
        t + 3_000,
        "the newest request's time, refresh or not"
    );
    let (got, _) = loopgate::store::pending::session_targets(&**b, "refresh-only", Some("p0"))
        .await
        .expect("targets");
    assert_eq!(got, vec![tgt("m0")]);
}

/// [`decided`]`(0)` as request `id` at `ts_ms` on `route`, serving `served` (trace and
/// decision alike).
fn decided_as(id: String, ts_ms: i64, route: &str, served: &str) -> TraceRecord {
    let mut r = decided(0);
    r.request_id = id.clone();
    r.decision_id = Some(id.clone());
    r.ts_ms = ts_ms;
    r.route = Some(route.into());
    r.served_model = Some(served.into());
    if let Some(d) = r.decision.as_mut() {
        d.request_id = id;
        d.ts_ms = ts_ms;
        d.route = route.into();
        d.served = served.into();
    }
    r
}

/// The realized exploration account: per route, what its last N decisions served, written
/// by one gateway and read by another.
async fn check_recent_served(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    let t = STATS_T + 1_000_000_000;
    let dec = |i: i64, route: &str, served: &str| {
        decided_as(format!("rs-{route}-{i:03}"), t + i * 1_000, route, served)
    };
    let mut recs = Vec::new();
    // rs-a: 30 older decisions on the baseline, then 10 newer on a candidate, inserted newest
    // first so insertion order cannot stand in for time order
    for i in (0..40).rev() {
        recs.push(dec(i, "rs-a", if i < 30 { "m0" } else { "m1" }));
    }
    for i in 0..3 {
        recs.push(dec(i, "rs-b", "m2"));
    }
    a.insert_traces(&recs).await.expect("insert decisions");
    let routes = ["rs-a", "rs-b", "rs-none"].map(String::from);
    let mut got = b.recent_served(&routes, 15).await.expect("recent served");
    got.sort_by(|x, y| (&x.route, &x.model).cmp(&(&y.route, &y.model)));
    let row = |route: &str, model: &str, requests| RouteServed {
        route: route.into(),
        model: model.into(),
        requests,
    };
    assert_eq!(
        got,
        vec![
            row("rs-a", "m0", 5),
            row("rs-a", "m1", 10),
            row("rs-b", "m2", 3)
        ]
    );
    // the window covers everything when it is larger; unlisted routes are not read
    let mut all = a
        .recent_served(&["rs-a".to_string()], 1_000)
        .await
        .expect("recent served");
    all.sort_by(|x, y| x.model.cmp(&y.model));
    assert_eq!(all, vec![row("rs-a", "m0", 30), row("rs-a", "m1", 10)]);
    assert!(b.recent_served(&[], 500).await.expect("none").is_empty());
}

/// Spend per (key, project, user) (reloaded by an in-process limiter at start): since the
/// day and month starts, in total, only traces before the cut-off, only costed traces.
async fn check_key_spend(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
    let day = T0 + 40 * 86_400_000; // 2026-02-10
    let month = T0 + 31 * 86_400_000; // 2026-02-01
    let cut = day + 3_600_000;
    type Row<'a> = (
        &'a str,
        Option<&'a str>,
        Option<&'a str>,
        Option<&'a str>,
        i64,
        f64,
    );
    let rows: Vec<Row<'_>> = vec![
        (
            "ks-1",
            Some("vk_ks_a"),
            Some("shop_ks"),
            None,
            month - 1,
            1.0,
        ), // total only
        (
            "ks-2",
            Some("vk_ks_a"),
            Some("shop_ks"),
            None,
            month + 5,
            0.25,
        ), // month and total
        (
            "ks-3",
            Some("vk_ks_a"),
            Some("shop_ks"),
            None,
            day + 10,
            0.125,
        ), // day, month, total
        ("ks-4", Some("vk_ks_a"), Some("shop_ks"), None, cut, 8.0), // at the cut-off: not counted
        ("ks-5", Some("vk_ks_b"), None, Some("u_ks"), day + 20, 0.5),
        (
            "ks-6",
            Some("cfg_ks"),
            Some("shop_ks"),
            Some("u_ks"),
            day + 30,
            2.0,
        ),
        ("ks-7", None, Some("p_ks"), None, day + 40, 4.0),
        ("ks-8", Some("vk_ks_b"), None, Some("u_ks"), day + 50, 0.0), // free: not listed
    ];
    let recs: Vec<TraceRecord> = rows
        .iter()
        .map(|(id, key, project, user, ts, cost)| {
            let mut r = record(3);
            r.request_id = id.to_string();
            r.key_id = key.map(str::to_string);
            r.project_id = project.map(str::to_string);
            r.user_id = user.map(str::to_string);
            r.ts_ms = *ts;
            r.cost_usd = *cost;
            r.decision = None;
            r
        })
        .collect();
    a.insert_traces(&recs).await.expect("insert");
    let mut got = b.holder_spend(day, month, cut).await.expect("holder spend");
    // Other cases' traces share the store: only this case's names.
    let mine = |v: &Option<String>| v.as_deref().is_some_and(|v| v.contains("_ks"));
    got.retain(|r| mine(&r.key_id) || mine(&r.project_id) || mine(&r.user_id));
    got.sort_by(|x, y| x.key_id.cmp(&y.key_id));
    let s = |v: Option<&str>| v.map(str::to_string);
    let row = |k, p, u, usd| loopgate::store::HolderSpend {
        key_id: s(k),
        project_id: s(p),
        user_id: s(u),
        usd,
    };
    assert_eq!(
        got,
        vec![
            row(None, Some("p_ks"), None, [4.0, 4.0, 4.0]),
            row(
                Some("cfg_ks"),
                Some("shop_ks"),
                Some("u_ks"),
                [2.0, 2.0, 2.0]
            ),
            row(
                Some("vk_ks_a"),
                Some("shop_ks"),
                None,
                [0.125, 0.375, 1.375]
            ),
            row(Some("vk_ks_b"), None, Some("u_ks"), [0.5, 0.5, 0.5]),
        ]
    );
}
