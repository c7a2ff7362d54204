//! The exact cache shared by a fleet through a real `redis-server` (started here on a free
//! loopback port): two gateways on one Redis, an answer stored by gateway A is a
//! `loopgate-cache: hit` on gateway B (JSON byte for byte; a stream with the same chunking
//! and usage, read by the official OpenAI Python SDK too), another project's request misses,
//! entries expire with their TTL in Redis and in the local copy, a corrupt entry written
//! straight into Redis is a miss and is deleted; a Redis that never answers or is killed
//! makes lookups misses answered 200 from the upstream within the timeout, counted in
//! `loopgate_cache_backend_errors_total`, and sharing resumes when Redis is back.
//!
//! Without `/usr/bin/redis-server` these tests are skipped with a loud message, unless
//! `LOOPGATE_REQUIRE_REDIS` is set, then they fail.

mod common;
#[path = "support/redis.rs"]
mod redis_proc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use common::{send_chat as send, upstream_calls as calls};
use loopgate::auth::keys::hash_key;
use redis_proc::{redis_available, RedisProc};
use serde_json::{json, Value};

const ALPHA: &str = "lg-test-cfleet-alpha-00000000";
const BETA: &str = "lg-test-cfleet-beta-000000000";
const SHORT: &str = "lg-test-cfleet-short-00000000";
/// Project beta, the cache off for this key.
const OFF: &str = "lg-test-cfleet-off-0000000000";
/// A request slower than this hung: 25 times the 200 ms `cache.redis_timeout_ms`.
const HUNG: Duration = Duration::from_secs(5);

fn keys_toml() -> String {
    let mut t = String::new();
    for (id, key, project) in [
        ("a", ALPHA, "alpha"),
        ("b", BETA, "beta"),
        ("s", SHORT, "alpha"),
        ("o", OFF, "beta"),
    ] {
        t.push_str(&format!(
            "[[auth.keys]]\nid = \"{id}\"\nhash = \"{}\"\nscopes = [\"inference\", \"read\"]\nproject = \"{project}\"\n",
            hash_key(key)
        ));
    }
    t
}

fn cache_toml(url: &str, prefix: &str, l1: bool) -> String {
    format!(
        "[cache]\nenabled = true\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_timeout_ms = 200\nredis_key_prefix = \"{prefix}\"\nl1 = {l1}\n\n[cache.keys.s]\nttl_secs = 2\n\n[cache.keys.o]\nenabled = false\n\n{}",
        keys_toml()
    )
}

/// OpenAI-like; every answer names the upstream call number (a replay is told from a
/// fresh answer).
fn upstream() -> Reply {
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Reply::Dynamic(Arc::new(move |r: &Received| {
        let call = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let body = r.json();
        let model = body["model"].as_str().unwrap_or("m").to_string();
        if body["stream"].as_bool() == Some(true) {
            let usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
            let call_s = format!(" #{call}");
            let parts = openai_stream_parts(&model, &["Hel", "lo", &call_s], usage);
            return Reply::Chunks(
                200,
                "text/event-stream".into(),
                parts.into_iter().map(|p| (Duration::ZERO, p)).collect(),
            );
        }
        Reply::Json(
            200,
            vec![],
            chat_json(&model, &format!("answer #{call}"), 11, 3),
        )
    }))
}

fn msg(content: &str) -> Value {
    json!({"model": "gpt-4o", "messages": [{"role": "user", "content": content}], "temperature": 0})
}

/// The Redis keys under `prefix`.
async fn keys(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> Vec<String> {
    let mut ks: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(conn)
        .await
        .expect("KEYS");
    ks.sort();
    ks
}

/// Poll until Redis holds `n` keys under `prefix` (the spawned writes landed); those keys.
async fn until_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
    n: usize,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let ks = keys(conn, prefix).await;
        if ks.len() == n {
            return ks;
        }
        assert!(
            Instant::now() < deadline,
            "Redis holds {} keys under {prefix}, want {n}: {ks:?}",
            ks.len()
        );
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The trace row of `request_id` on `gw` (cost, properties), polled until written.
async fn trace_of(gw: &GatewayProc, request_id: &str) -> (f64, HashMap<String, String>) {
    let db = gw.db_path();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = rusqlite::Connection::open(&db).ok().and_then(|c| {
            c.query_row(
                "SELECT cost_usd, properties FROM traces WHERE request_id = ?1",
                [request_id],
                |r| Ok((r.get::<_, f64>(0)?, r.get::<_, String>(1)?)),
            )
            .ok()
        });
        if let Some((cost, props)) = row {
            let v: Vec<(String, String)> = serde_json::from_str(&props).unwrap_or_default();
            return (cost, v.into_iter().collect());
        }
        assert!(Instant::now() < deadline, "no trace row for {request_id}");
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one sample of a metric series (0 when absent).
async fn metric(gw: &GatewayProc, series: &str) -> f64 {
    gw.metrics()
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn gateway(cache: &str, mock: &MockUpstream) -> GatewayProc {
    GatewayProc::start(
        cache,
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", mock.url()),
        ],
    )
}

/// One run of the official OpenAI Python SDK against `base`: a stream with usage of
/// `content`; prints `[cache header, text, total tokens]` as JSON.
async fn python_stream(base: &str, content: &str) -> Value {
    let script = r#"
import json, os
from openai import OpenAI
c = OpenAI(base_url=os.environ["LG_BASE"], api_key=os.environ["LG_KEY"], max_retries=0, timeout=20)
raw = c.chat.completions.with_raw_response.create(model="gpt-4o", stream=True,
    stream_options={"include_usage": True}, messages=[{"role": "user", "content": os.environ["LG_CONTENT"]}])
text, usage, chunks = "", None, 0
for ch in raw.parse():
    chunks += 1
    if ch.choices and ch.choices[0].delta.content:
        text += ch.choices[0].delta.content
    if ch.usage:
        usage = ch.usage.total_tokens
print(json.dumps([raw.headers.get("loopgate-cache"), text, usage, chunks]))
"#;
    let out = run_sdk_python(
        script,
        &[
            ("LG_BASE", base),
            ("LG_KEY", ALPHA),
            ("LG_CONTENT", content),
        ],
    )
    .await;
    assert!(
        out.status.success(),
        "python SDK: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(out.stdout.trim_ascii()).expect("SDK output")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_entries_by_project_with_ttl_and_drop_corrupt_ones() {
    if !redis_available() {
        return;
    }
    let redis = RedisProc::start(free_port());
    let mut conn = redis.conn().await;
    let mock = MockUpstream::start(upstream()).await;
    let p = "lgc1:";
    let a = gateway(&cache_toml(&redis.url(), p, true), &mock);
    let b = gateway(&cache_toml(&redis.url(), p, true), &mock);

    // JSON: stored by A, a hit on B, byte for byte, the original call's saving on B's trace.
    let first = send(&a, ALPHA, &msg("j1"), &[]).await;
    assert_eq!(
        (first.status, first.cache()),
        (200, Some("miss")),
        "{}",
        first.text
    );
    let stored = until_keys(&mut conn, p, 1).await;
    assert_eq!(stored[0].len(), p.len() + 64, "{stored:?}");
    let hit = send(&b, ALPHA, &msg("j1"), &[]).await;
    assert_eq!(
        (hit.status, hit.cache()),
        (200, Some("hit")),
        "{}",
        hit.text
    );
    assert_eq!(hit.content(), "answer #1");
    assert_eq!(calls(&mock, "j1"), 1);
    assert_eq!(
        hit.headers.get("loopgate-provider").map(String::as_str),
        Some("openai")
    );
    let (a_cost, _) = trace_of(&a, &first.headers["loopgate-request-id"]).await;
    let (b_cost, props) = trace_of(&b, &hit.headers["loopgate-request-id"]).await;
    assert!(a_cost > 0.0);
    assert_eq!(b_cost, 0.0);
    assert_eq!(props.get("cache").map(String::as_str), Some("hit"));
    let saved: f64 = props["cache_saved_usd"].parse().expect("saved usd");
    assert!((saved - a_cost).abs() < 1e-9, "{saved} vs {a_cost}");
    // The key in Redis has the entry TTL (300 s by default).
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&stored[0])
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!((290_000..=300_000).contains(&pttl), "{pttl}");

    // Another project (key b, project beta) never sees alpha's entry; A and B agree.
    let other = send(&b, BETA, &msg("j1"), &[]).await;
    assert_eq!((other.status, other.cache()), (200, Some("miss")));
    assert_eq!(other.content(), "answer #2");
    until_keys(&mut conn, p, 2).await;
    assert_eq!(send(&a, BETA, &msg("j1"), &[]).await.cache(), Some("hit"));
    assert_eq!(calls(&mock, "j1"), 2);

    // A stream: replayed on B as the same bytes (same chunking, usage chunk included), and
    // the stored entry holds the chunks exactly as A wrote them.
    let body = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "s1"}]});
    let before: Vec<String> = keys(&mut conn, p).await;
    let first = send(&a, ALPHA, &body, &[]).await;
    assert_eq!((first.status, first.cache()), (200, Some("miss")));
    let all = until_keys(&mut conn, p, 3).await;
    let skey = all
        .iter()
        .find(|k| !before.contains(k))
        .expect("the stream's key")
        .clone();
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(&skey)
        .query_async(&mut conn)
        .await
        .expect("GET");
    let entry = loopgate::cache::redis::decode(
        bytes::Bytes::from(raw.clone()),
        Instant::now() + Duration::from_secs(1),
    )
    .expect("the stored stream decodes");
    let loopgate::cache::Body::Stream(chunks) = &entry.body else {
        panic!("a stream entry")
    };
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    assert_eq!(chunks.concat(), first.text.as_bytes());
    assert_eq!(entry.usage.total(), 14);
    let hit = send(&b, ALPHA, &body, &[]).await;
    assert_eq!((hit.status, hit.cache()), (200, Some("hit")));
    // Byte for byte, but for the completion id: the new request's own.
    let id_of = |t: &str| -> String {
        let v: Value = serde_json::from_str(sse_events(t)[0].as_str()).expect("first event");
        v["id"].as_str().unwrap_or("").to_string()
    };
    let (ida, idb) = (id_of(&first.text), id_of(&hit.text));
    assert_ne!(ida, idb);
    assert_eq!(
        hit.text.replace(&idb, &ida),
        first.text,
        "replayed byte for byte"
    );
    assert!(hit.text.contains("\"total_tokens\":14"), "{}", hit.text);
    assert_eq!(calls(&mock, "s1"), 1);

    // The official OpenAI Python SDK: a stream on A, then the same on B reads the replay.
    let on_a = python_stream(&a.url("/v1"), "sdk-fleet").await;
    until_keys(&mut conn, p, 4).await;
    let on_b = python_stream(&b.url("/v1"), "sdk-fleet").await;
    assert_eq!(on_a[0], "miss", "{on_a}");
    assert_eq!(on_b[0], "hit", "{on_b}");
    assert_eq!(
        on_a.as_array().map(|v| &v[1..]),
        on_b.as_array().map(|v| &v[1..]),
        "same text, usage and chunk count"
    );
    assert_eq!(on_b[2], 14, "{on_b}");
    assert_eq!(calls(&mock, "sdk-fleet"), 1);

    // TTL: key `s` (project alpha) stores for 2 s; B hits before, both miss after Redis
    // expired it (B's local copy expires at the same moment).
    let t = send(&a, SHORT, &msg("t1"), &[]).await;
    assert_eq!(t.cache(), Some("miss"));
    until_keys(&mut conn, p, 5).await;
    assert_eq!(send(&b, SHORT, &msg("t1"), &[]).await.cache(), Some("hit"));
    until_keys(&mut conn, p, 4).await;
    assert_eq!(send(&b, SHORT, &msg("t1"), &[]).await.cache(), Some("miss"));
    assert_eq!(calls(&mock, "t1"), 2);
    // B's fresh answer is stored (for 2 s too), then expires.
    until_keys(&mut conn, p, 5).await;
    until_keys(&mut conn, p, 4).await;

    // A corrupt entry written straight into Redis: B (no local copy) misses, the provider
    // is not called (only-if-cached), the entry is deleted and the fault counted.
    let c = send(&a, ALPHA, &msg("c1"), &[]).await;
    assert_eq!(c.cache(), Some("miss"));
    let now = until_keys(&mut conn, p, 5).await;
    // The entry of A's `c1` answer: the JSON entry holding its text.
    let mut corrupted = 0;
    for k in &now {
        let v: Vec<u8> = redis::cmd("GET")
            .arg(k)
            .query_async(&mut conn)
            .await
            .expect("GET");
        // Every entry the gateways wrote decodes.
        let e =
            loopgate::cache::redis::decode(bytes::Bytes::from(v), Instant::now()).expect("decodes");
        if let loopgate::cache::Body::Json(j) = &e.body {
            if String::from_utf8_lossy(j).contains(&c.content()) {
                let _: () = redis::cmd("SET")
                    .arg(k)
                    .arg("LGC\u{1}not an entry")
                    .arg("PX")
                    .arg(60_000)
                    .query_async(&mut conn)
                    .await
                    .expect("SET");
                corrupted += 1;
            }
        }
    }
    assert_eq!(corrupted, 1);
    let r = send(
        &b,
        ALPHA,
        &msg("c1"),
        &[("loopgate-cache", "only-if-cached")],
    )
    .await;
    assert_eq!(r.status, 504, "{}", r.text);
    assert!(r.text.contains("cache_miss"), "{}", r.text);
    until_keys(&mut conn, p, 4).await;
    assert_eq!(
        metric(&b, "loopgate_cache_backend_errors_total{op=\"decode\"}").await,
        1.0
    );
    assert!(b.log_text().contains("did not decode"), "{}", b.log_text());
    let r = send(&b, ALPHA, &msg("c1"), &[]).await;
    assert_eq!((r.status, r.cache()), (200, Some("miss")));
    assert_eq!(calls(&mock, "c1"), 2);
    assert!(a.log_text().contains("cache: entries shared through Redis"));
    assert!(!a.log_text().contains("cache backend:"), "{}", a.log_text());

    // Analytics on B: its hits (j1, the stream, the SDK stream, t1 — all project alpha)
    // with what they saved; A served beta's hit. Forged cache properties on a request the
    // cache is off for are ignored (they would count as a beta hit saving $5).
    let forged = send(
        &b,
        OFF,
        &msg("f1"),
        &[
            ("loopgate-property-cache", "hit"),
            ("loopgate-property-cache_saved_usd", "5"),
        ],
    )
    .await;
    assert_eq!((forged.status, forged.cache()), (200, None));
    // Traces are written in order: once the last one is in, so are B's hits.
    let (_, fp) = trace_of(&b, &forged.headers["loopgate-request-id"]).await;
    assert!(
        !fp.contains_key("cache_saved_usd") && !fp.contains_key("cache"),
        "{fp:?}"
    );
    let (s, last) = admin(&b, "GET", "/v1/analytics?group_by=project", None).await;
    assert_eq!(s, 200, "{last}");
    let t = &last["totals"];
    assert_eq!(t["cache_hits"], 4, "{last}");
    let usd = t["cache_saved_usd"].as_f64().unwrap_or(0.0);
    assert!(usd > a_cost && usd < 5.0, "{last}");
    assert!(
        t["cache_saved_ms"].as_f64().unwrap_or(-1.0) >= 0.0,
        "{last}"
    );
    let rows = last["data"].as_array().cloned().unwrap_or_default();
    let alpha = rows.iter().find(|r| r["group"] == "alpha").expect("alpha");
    assert_eq!(alpha["cache_hits"], 4, "{last}");
    let beta = rows.iter().find(|r| r["group"] == "beta").expect("beta");
    assert_eq!(beta["cache_hits"], 0, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_silent_or_killed_is_a_miss_never_an_error_and_sharing_resumes() {
    if !redis_available() {
        return;
    }
    let mock = MockUpstream::start(upstream()).await;

    // A "Redis" that accepts connections and never answers: every lookup waits out the
    // 200 ms timeout and is a miss; the answer comes from the upstream.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let silent_port = silent.local_addr().expect("addr").port();
    let held = Arc::new(tokio::sync::Mutex::new(Vec::new()));
    let h2 = Arc::clone(&held);
    let accept = tokio::spawn(async move {
        while let Ok((s, _)) = silent.accept().await {
            h2.lock().await.push(s);
        }
    });
    let url = format!("redis://127.0.0.1:{silent_port}/0");
    let g = gateway(&cache_toml(&url, "lgc2:", false), &mock);
    for _ in 0..3 {
        let r = send(&g, ALPHA, &msg("q1"), &[]).await;
        assert_eq!((r.status, r.cache()), (200, Some("miss")), "{}", r.text);
        assert!(r.took < HUNG, "took {:?}", r.took);
    }
    assert_eq!(calls(&mock, "q1"), 3);
    assert!(metric(&g, "loopgate_cache_backend_errors_total{op=\"get\"}").await >= 3.0);
    let log = g.log_text();
    assert_eq!(log.matches("cache backend: get failed").count(), 1, "{log}");
    drop(g);
    accept.abort();

    // A real Redis, no local copy: a hit comes from Redis; Redis killed → misses answered
    // 200 by the upstream within the bound; Redis back on the same port → shared again.
    let redis = RedisProc::start(free_port());
    let port = redis.port;
    let g = gateway(&cache_toml(&redis.url(), "lgc3:", false), &mock);
    assert_eq!(send(&g, ALPHA, &msg("k1"), &[]).await.cache(), Some("miss"));
    let mut conn = redis.conn().await;
    until_keys(&mut conn, "lgc3:", 1).await;
    assert_eq!(send(&g, ALPHA, &msg("k1"), &[]).await.cache(), Some("hit"));
    drop(conn);
    redis.kill();
    for content in ["k1", "k2", "k1"] {
        let r = send(&g, ALPHA, &msg(content), &[]).await;
        assert_eq!((r.status, r.cache()), (200, Some("miss")), "{}", r.text);
        assert!(r.took < HUNG, "took {:?}", r.took);
        assert!(r.content().starts_with("answer #"), "{}", r.text);
    }
    assert_eq!(calls(&mock, "k1"), 3);
    assert!(metric(&g, "loopgate_cache_backend_errors_total{op=\"get\"}").await >= 3.0);
    let redis = RedisProc::start(port);
    let mut conn = redis.conn().await;
    // The connection manager reconnects by itself: a store lands, then it is a hit.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = send(&g, ALPHA, &msg("k3"), &[]).await;
        assert_eq!(r.status, 200);
        if r.cache() == Some("hit") {
            break;
        }
        assert!(Instant::now() < deadline, "sharing never resumed");
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(keys(&mut conn, "lgc3:").await.len(), 1);
    assert!(g.log_text().contains("cache backend: Redis answers again"));
}
