//! The exact response cache through the real gateway on loopback, against a mock OpenAI
//! upstream: hits and misses (`loopgate-cache` header, upstream call counts, trace rows),
//! SSE replay (strict parse and the official Python SDK), key scoping (model, parameters,
//! stream, project), request modes and `Cache-Control`, TTL expiry, the entry bound,
//! errors never cached, per-key opt-in with the cache off by default.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use common::{send_chat as send, upstream_calls as calls};
use loopgate::auth::keys::hash_key;
use serde_json::{json, Value};

const ALPHA: &str = "lg-test-cache-alpha-000000000";
const BETA: &str = "lg-test-cache-beta-0000000000";
const ALPHA2: &str = "lg-test-cache-alpha2-00000000";

fn keys_toml() -> String {
    let mut t = String::new();
    for (id, key, project) in [
        ("a", ALPHA, "alpha"),
        ("b", BETA, "beta"),
        ("a2", ALPHA2, "alpha"),
    ] {
        t.push_str(&format!(
            "[[auth.keys]]\nid = \"{id}\"\nhash = \"{}\"\nscopes = [\"inference\", \"read\"]\nproject = \"{project}\"\n",
            hash_key(key)
        ));
    }
    t
}

/// OpenAI-like, plus: content "fail" → a 400 error, content "big" → a 10 KiB answer, and
/// every answer names the upstream call number (so a replay is told from a fresh answer).
fn upstream() -> Reply {
    let n = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Reply::Dynamic(Arc::new(move |r: &Received| {
        let call = n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let body = r.json();
        let model = body["model"].as_str().unwrap_or("m").to_string();
        let content = body["messages"][0]["content"].as_str().unwrap_or("");
        if content == "fail" {
            return Reply::Json(
                400,
                vec![],
                json!({"error": {"message": "bad", "type": "invalid_request_error", "param": null, "code": null}})
                    .to_string(),
            );
        }
        if body["stream"].as_bool() == Some(true) {
            let usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
            let call_s = format!(" #{call}");
            let parts = openai_stream_parts(&model, &["Hel", "lo", &call_s], usage);
            if content == "cut" {
                // Two events, then the connection drops: a partial stream.
                return Reply::Reset("text/event-stream".into(), parts[..2].to_vec());
            }
            return Reply::Chunks(
                200,
                "text/event-stream".into(),
                parts.into_iter().map(|p| (Duration::ZERO, p)).collect(),
            );
        }
        let text = if content == "big" {
            "x".repeat(10 * 1024)
        } else {
            format!("answer #{call}")
        };
        Reply::Json(200, vec![], chat_json(&model, &text, 11, 3))
    }))
}

/// Upstream calls whose first message is `content`.
fn msg(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}], "temperature": 0})
}

/// The trace row of `request_id` (cost, properties JSON), polled until written.
async fn trace_of(gw: &GatewayProc, request_id: &str) -> (f64, String, i64) {
    let db = gw.db_path();
    let q = |id: &str| -> Option<(f64, String, i64)> {
        let conn = rusqlite::Connection::open(&db).ok()?;
        conn.query_row(
            "SELECT cost_usd, properties, status FROM traces WHERE request_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(row) = q(request_id) {
            return row;
        }
        assert!(
            Instant::now() < deadline,
            "no trace row for {request_id}; log:\n{}",
            gw.log_text()
        );
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn props(json_text: &str) -> HashMap<String, String> {
    let v: Vec<(String, String)> = serde_json::from_str(json_text).unwrap_or_default();
    v.into_iter().collect()
}

async fn start_on(extra: &str) -> (MockUpstream, GatewayProc) {
    let mock = MockUpstream::start(upstream()).await;
    let gw = GatewayProc::start(
        &format!("{extra}\n{}", keys_toml()),
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", mock.url()),
        ],
    );
    (mock, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_hits_scoping_modes_errors_and_traces() {
    let (mock, gw) =
        start_on("[cache]\nenabled = true\nttl_secs = 600\nmax_entry_bytes = 4096\n").await;

    // Miss, then hit: the upstream is called once, the answer is the same, the trace says so.
    let m1 = send(&gw, ALPHA, &msg("gpt-4o", "q1"), &[]).await;
    assert_eq!(m1.status, 200, "{}", m1.text);
    assert_eq!(m1.cache(), Some("miss"));
    let h1 = send(&gw, ALPHA, &msg("gpt-4o", "q1"), &[]).await;
    assert_eq!(h1.status, 200, "{}", h1.text);
    assert_eq!(h1.cache(), Some("hit"));
    assert_eq!(calls(&mock, "q1"), 1);
    assert_eq!(h1.content(), m1.content());
    assert_eq!(h1.content(), "answer #1");
    assert_ne!(h1.id(), m1.id(), "a hit is its own request");
    assert_eq!(
        h1.headers.get("loopgate-provider").map(String::as_str),
        Some("openai")
    );
    assert_eq!(h1.json()["usage"]["total_tokens"], 14);
    // Field order and routing-only fields (`user`) do not change the key.
    let reordered = json!({"temperature": 0, "user": "someone", "messages": [{"content": "q1", "role": "user"}], "model": "gpt-4o"});
    assert_eq!(send(&gw, ALPHA, &reordered, &[]).await.cache(), Some("hit"));
    // Another key of the same project shares the project's entries.
    assert_eq!(
        send(&gw, ALPHA2, &msg("gpt-4o", "q1"), &[]).await.cache(),
        Some("hit")
    );
    assert_eq!(calls(&mock, "q1"), 1);

    let (miss_cost, miss_props, _) = trace_of(&gw, &m1.id()).await;
    let (hit_cost, hit_props, hit_status) = trace_of(&gw, &h1.id()).await;
    assert!(miss_cost > 0.0, "the miss paid: {miss_cost}");
    assert_eq!(hit_cost, 0.0);
    assert_eq!(hit_status, 200);
    assert_eq!(
        props(&miss_props).get("cache").map(String::as_str),
        Some("miss")
    );
    let hp = props(&hit_props);
    assert_eq!(hp.get("cache").map(String::as_str), Some("hit"));
    let saved: f64 = hp
        .get("cache_saved_usd")
        .and_then(|v| v.parse().ok())
        .unwrap_or(-1.0);
    assert!(
        (saved - miss_cost).abs() < 1e-9,
        "saved {saved} vs {miss_cost}"
    );
    assert!(hp.contains_key("cache_saved_ms"));

    // Tenant isolation: another project never sees alpha's answer.
    let b1 = send(&gw, BETA, &msg("gpt-4o", "q1"), &[]).await;
    assert_eq!(b1.cache(), Some("miss"));
    assert_ne!(b1.content(), h1.content());
    assert_eq!(calls(&mock, "q1"), 2);
    assert_eq!(
        send(&gw, BETA, &msg("gpt-4o", "q1"), &[]).await.content(),
        b1.content()
    );
    // A client cannot pick the project of a project-locked key by header.
    let spoof = send(
        &gw,
        BETA,
        &msg("gpt-4o", "q1"),
        &[("loopgate-project-id", "alpha")],
    )
    .await;
    assert_eq!(spoof.content(), b1.content());

    // Another model, another parameter value, a stream: their own entries.
    assert_eq!(
        send(&gw, ALPHA, &msg("gpt-4o-mini", "q1"), &[])
            .await
            .cache(),
        Some("miss")
    );
    let mut t = msg("gpt-4o", "q1");
    t["temperature"] = json!(0.5);
    assert_eq!(send(&gw, ALPHA, &t, &[]).await.cache(), Some("miss"));
    let mut mt = msg("gpt-4o", "q1");
    mt["max_tokens"] = json!(5);
    assert_eq!(send(&gw, ALPHA, &mt, &[]).await.cache(), Some("miss"));
    assert_eq!(calls(&mock, "q1"), 5);

    // Bypass rules: n > 1, tool results, temperature above the bound; `force` overrides.
    let mut n2 = msg("gpt-4o", "q2");
    n2["n"] = json!(2);
    assert_eq!(send(&gw, ALPHA, &n2, &[]).await.cache(), Some("bypass"));
    assert_eq!(send(&gw, ALPHA, &n2, &[]).await.cache(), Some("bypass"));
    let mut hot = msg("gpt-4o", "q2");
    hot["temperature"] = json!(1.5);
    assert_eq!(send(&gw, ALPHA, &hot, &[]).await.cache(), Some("bypass"));
    assert_eq!(
        send(&gw, ALPHA, &hot, &[("loopgate-cache", "force")])
            .await
            .cache(),
        Some("miss")
    );
    assert_eq!(
        send(&gw, ALPHA, &hot, &[("loopgate-cache", "force")])
            .await
            .cache(),
        Some("hit")
    );
    assert_eq!(calls(&mock, "q2"), 4);

    // Request modes: no-store and Cache-Control: no-store bypass (and store nothing);
    // refresh / no-cache skip the lookup and store the fresh answer.
    for h in [
        ("loopgate-cache", "no-store"),
        ("cache-control", "no-store"),
    ] {
        let r = send(&gw, ALPHA, &msg("gpt-4o", "q3"), &[h]).await;
        assert_eq!(r.cache(), Some("bypass"), "{h:?}");
        let (_, p, _) = trace_of(&gw, &r.id()).await;
        assert_eq!(props(&p).get("cache").map(String::as_str), Some("bypass"));
    }
    let only = send(
        &gw,
        ALPHA,
        &msg("gpt-4o", "q3"),
        &[("loopgate-cache", "only-if-cached")],
    )
    .await;
    assert_eq!(only.status, 504, "{}", only.text);
    assert_eq!(only.json()["error"]["code"], "cache_miss");
    assert_eq!(calls(&mock, "q3"), 2);
    let a = send(&gw, ALPHA, &msg("gpt-4o", "q3"), &[]).await;
    assert_eq!(a.cache(), Some("miss"));
    for h in [("loopgate-cache", "refresh"), ("cache-control", "no-cache")] {
        let r = send(&gw, ALPHA, &msg("gpt-4o", "q3"), &[h]).await;
        assert_eq!(r.cache(), Some("miss"), "{h:?}");
    }
    assert_eq!(calls(&mock, "q3"), 5);
    let latest = send(
        &gw,
        ALPHA,
        &msg("gpt-4o", "q3"),
        &[("cache-control", "only-if-cached")],
    )
    .await;
    assert_eq!(latest.cache(), Some("hit"));
    assert_ne!(latest.content(), a.content(), "refresh replaced the entry");
    assert_eq!(calls(&mock, "q3"), 5);
    let bad = send(
        &gw,
        ALPHA,
        &msg("gpt-4o", "q3"),
        &[("loopgate-cache", "sometimes")],
    )
    .await;
    assert_eq!(bad.status, 400, "{}", bad.text);

    // Errors are never cached.
    for _ in 0..2 {
        let r = send(&gw, ALPHA, &msg("gpt-4o", "fail"), &[]).await;
        assert_eq!(r.status, 400, "{}", r.text);
        assert_ne!(r.cache(), Some("hit"));
    }
    assert_eq!(calls(&mock, "fail"), 2);

    // Above max_entry_bytes: served, never stored.
    for _ in 0..2 {
        let r = send(&gw, ALPHA, &msg("gpt-4o", "big"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.cache(), Some("miss"));
    }
    assert_eq!(calls(&mock, "big"), 2);

    // An answer is offered to the store after its last byte went out: poll (bounded).
    let want = [
        "loopgate_cache_requests_total{outcome=\"hit\"}",
        "loopgate_cache_requests_total{outcome=\"too_large\"} 2",
        "loopgate_cache_bytes",
        "loopgate_cache_saved_usd_total",
    ];
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut m = gw.metrics().await;
    while !want.iter().all(|l| m.contains(l)) && Instant::now() < deadline {
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = gw.metrics().await;
    }
    for line in want {
        assert!(m.contains(line), "{line} missing in metrics");
    }
}

/// Strict SSE: every event is one `data: ` line ending in a blank line, every payload is
/// JSON until the final `[DONE]`; nothing after it.
fn strict_sse(text: &str) -> Vec<Value> {
    assert!(
        text.ends_with("\n\n"),
        "stream does not end an event: {text:?}"
    );
    let events: Vec<&str> = text[..text.len() - 2].split("\n\n").collect();
    let (last, rest) = events.split_last().expect("events");
    assert_eq!(*last, "data: [DONE]");
    rest.iter()
        .map(|e| {
            assert!(!e.contains('\n'), "multi-line event {e:?}");
            let d = e
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data line: {e:?}"));
            serde_json::from_str(d).unwrap_or_else(|_| panic!("not JSON: {d:?}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_replay_as_sse_with_usage() {
    let (mock, gw) = start_on("[cache]\nenabled = true\n").await;
    let body = json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "s1"}]});
    let first = send(&gw, ALPHA, &body, &[]).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.cache(), Some("miss"));
    let second = send(&gw, ALPHA, &body, &[]).await;
    assert_eq!(second.cache(), Some("hit"));
    assert_eq!(
        second.headers.get("content-type").map(String::as_str),
        Some("text/event-stream")
    );
    assert_eq!(calls(&mock, "s1"), 1);
    let (a, b) = (strict_sse(&first.text), strict_sse(&second.text));
    assert_eq!(a.len(), b.len());
    let text = |evs: &[Value]| -> String {
        evs.iter()
            .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
            .collect()
    };
    assert_eq!(text(&b), "Hello #1");
    assert_eq!(text(&a), text(&b));
    let usage = |evs: &[Value]| {
        evs.iter()
            .rev()
            .find(|e| e["usage"].is_object())
            .map(|e| e["usage"].clone())
    };
    assert_eq!(usage(&b).expect("usage replayed")["total_tokens"], 14);
    assert_eq!(usage(&a), usage(&b));
    let (hit_cost, hit_props, _) = trace_of(&gw, &second.id()).await;
    assert_eq!(hit_cost, 0.0);
    assert_eq!(
        props(&hit_props).get("cache").map(String::as_str),
        Some("hit")
    );
    // A stream the upstream cuts short is never stored.
    let mut cut = body.clone();
    cut["messages"][0]["content"] = json!("cut");
    for _ in 0..2 {
        let r = send(&gw, ALPHA, &cut, &[]).await;
        assert_eq!(r.cache(), Some("miss"));
        assert!(
            !r.text.ends_with("data: [DONE]\n\n") || r.text.contains("error"),
            "{}",
            r.text
        );
    }
    assert_eq!(calls(&mock, "cut"), 2);
    // The same messages without `stream` are a different entry.
    let mut plain = body.clone();
    plain.as_object_mut().map(|o| {
        o.remove("stream");
        o.remove("stream_options")
    });
    assert_eq!(send(&gw, ALPHA, &plain, &[]).await.cache(), Some("miss"));

    // The official OpenAI Python SDK reads both the fresh and the replayed stream.
    let script = r#"
import os, sys
from openai import OpenAI
c = OpenAI(base_url=os.environ["LG_BASE"], api_key=os.environ["LG_KEY"], max_retries=0, timeout=20)
out = []
for i in range(2):
    raw = c.chat.completions.with_raw_response.create(model="gpt-4o", stream=True,
        stream_options={"include_usage": True}, messages=[{"role": "user", "content": "sdk"}])
    status = raw.headers.get("loopgate-cache")
    text, usage = "", None
    for ch in raw.parse():
        if ch.choices and ch.choices[0].delta.content:
            text += ch.choices[0].delta.content
        if ch.usage:
            usage = ch.usage.total_tokens
    out.append((status, text, usage))
    r = c.chat.completions.with_raw_response.create(model="gpt-4o", messages=[{"role": "user", "content": "sdk"}])
    out.append((r.headers.get("loopgate-cache"), r.parse().choices[0].message.content, r.parse().usage.total_tokens))
print(out)
assert [o[0] for o in out] == ["miss", "miss", "hit", "hit"], out
assert out[0][1:] == out[2][1:] and out[1][1:] == out[3][1:], out
assert out[0][2] == 14 and out[0][1].startswith("Hello"), out
"#;
    let base = gw.url("/v1");
    let out = run_sdk_python(script, &[("LG_BASE", &base), ("LG_KEY", ALPHA)]).await;
    assert!(
        out.status.success(),
        "python SDK: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(calls(&mock, "sdk"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_per_key_opt_in_default_mode_and_ttl() {
    // Global switch off; key `a` opts in with a 1 s TTL, key `a2` opts in with `no-store`
    // as its default mode, key `b` is not listed.
    let (mock, gw) = start_on(
        "[cache]\nttl_secs = 600\n[cache.keys.a]\nttl_secs = 1\n[cache.keys.a2]\nmode = \"no-store\"\n",
    )
    .await;
    for _ in 0..2 {
        let r = send(&gw, BETA, &msg("gpt-4o", "t1"), &[]).await;
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.cache(), None, "no header when the cache is off");
    }
    assert_eq!(calls(&mock, "t1"), 2);
    for _ in 0..2 {
        assert_eq!(
            send(&gw, ALPHA2, &msg("gpt-4o", "t1"), &[]).await.cache(),
            Some("bypass")
        );
    }
    // The key's default mode yields to the request header.
    assert_eq!(
        send(
            &gw,
            ALPHA2,
            &msg("gpt-4o", "t1"),
            &[("loopgate-cache", "default")]
        )
        .await
        .cache(),
        Some("miss")
    );
    assert_eq!(calls(&mock, "t1"), 5);

    let first = send(&gw, ALPHA, &msg("gpt-4o", "t2"), &[]).await;
    assert_eq!(first.cache(), Some("miss"));
    let stored = Instant::now();
    let again = send(&gw, ALPHA, &msg("gpt-4o", "t2"), &[]).await;
    // Served from the entry while it lives (the TTL is 1 s).
    if stored.elapsed() < Duration::from_millis(900) {
        assert_eq!(again.cache(), Some("hit"));
    }
    // Expired after its TTL: polled (bounded) until the entry is gone.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut expired = false;
    while Instant::now() < deadline {
        let r = send(
            &gw,
            ALPHA,
            &msg("gpt-4o", "t2"),
            &[("loopgate-cache", "only-if-cached")],
        )
        .await;
        if r.status == 504 {
            expired = true;
            break;
        }
        assert_eq!(r.cache(), Some("hit"));
        // The pause between polls.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(expired, "entry still served after 5 s with a 1 s TTL");
    assert!(
        stored.elapsed() >= Duration::from_millis(900),
        "expired early"
    );
    assert_eq!(
        send(&gw, ALPHA, &msg("gpt-4o", "t2"), &[]).await.cache(),
        Some("miss")
    );
}
