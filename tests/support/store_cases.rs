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
use loopgate::store::{
    Cursor, GroupBy, Histogram, LogFilter, ProjectSel, PurgeRule, StatusFilter, StorageConfig,
    Store,
};
use loopgate::trace::writer::{trace_pipeline, StoreSlot, TraceSink};
use loopgate::trace::{Attempt, TraceRecord};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// 2026-01-01T00:00:00Z (hour-aligned).
pub const T0: i64 = 1_767_225_600_000;
pub const HOUR: i64 = 3_600_000;
pub const N_FIXTURE: usize = 600;

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
    props.sort();
    let prompt = 100 + i as u64;
    let completion = 10 + (i % 50) as u64;
    TraceRecord {
        request_id: format!("req-{i:05}"),
        // ~4.8 minutes apart from 00:17 on, spanning two days; some share a millisecond
        ts_ms: T0 + 17 * 60_000 + (i as i64 / 2) * 576_000 + (i as i64 % 7),
        endpoint: "chat.completions".into(),
        key_id: Some("k1".into()),
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
    }
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
    assert_eq!(store.schema_version().await.expect("version"), 1);
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
    ];
    for q in &cases {
        check_analytics(slot, recs, q).await;
    }
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
