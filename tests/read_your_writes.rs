//! Read-your-writes as a client meets it: feedback, decision and log lookups immediately
//! after the response (no sleep, no retry) on one instance whose writer flushes rarely, and
//! on two instances sharing PostgreSQL, where feedback for an id served by the other
//! instance is accepted as pending and settled when the trace lands.

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ROUTE: &str = r#"
[routes.default]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "shadow"
[routing]
refresh_ms = 60
"#;

/// A gateway with its own `[storage]` table (the shared base pins `flush_interval_ms = 20`,
/// which would hide the problem this file tests).
fn start(storage: &str, mock: &MockUpstream) -> GatewayProc {
    let dir = tempfile::tempdir().unwrap();
    // Port 0: the gateway picks and holds its ports and names them in its log.
    let (port, metrics_port) = (0, 0);
    let config = dir.path().join("gateway.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nthreads = 2\nfilters_dir = \"{filters}\"\npid_file = \"{pid}\"\nupgrade_sock = \"{sock}\"\n[storage]\nsqlite_path = \"{db}\"\nspill_path = \"{spill}\"\n{storage}\n{ROUTE}\n",
        filters = concat!(env!("CARGO_MANIFEST_DIR"), "/filters"),
        pid = dir.path().join("lg.pid").display(),
        sock = dir.path().join("lg.sock").display(),
        db = dir.path().join("traces.db").display(),
        spill = dir.path().join("spill.jsonl").display(),
    );
    std::fs::write(&config, text).unwrap();
    GatewayProc::spawn(
        dir,
        config,
        port,
        metrics_port,
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", mock.url()),
        ],
    )
}

async fn chat(gw: &GatewayProc, body: Value, session: Option<&str>) -> (String, reqwest::Response) {
    let mut rb = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&body);
    if let Some(s) = session {
        rb = rb.header("loopgate-session-id", s);
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 200);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    (id, r)
}

async fn get(gw: &GatewayProc, path: &str) -> (u16, Value) {
    let r = client()
        .get(gw.url(path))
        .header("authorization", auth())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn feedback(gw: &GatewayProc, v: Value) -> (u16, Value) {
    let r = client()
        .post(gw.url("/v1/feedback"))
        .header("authorization", auth())
        .json(&v)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap())
}

/// Poll `GET path` until `ok` holds (bounded).
async fn poll(
    gw: &GatewayProc,
    path: &str,
    within: Duration,
    ok: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let deadline = Instant::now() + within;
    loop {
        let (s, v) = get(gw, path).await;
        if ok(s, &v) || Instant::now() >= deadline {
            return (s, v);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_reads_its_writes_immediately() {
    let mock = MockUpstream::start(openai_like()).await;
    // The writer would flush only every 30 s: every lookup below must not depend on it.
    let gw = start(
        "flush_interval_ms = 30000\npending_feedback_secs = 1",
        &mock,
    );

    // `auto`: the decision and feedback right after the response.
    let (id, r) = chat(&gw, chat_body("auto"), Some("sess-a")).await;
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["id"], id, "x-request-id is the response id");
    let (s, d) = get(&gw, &format!("/v1/decisions/{id}")).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["id"], id);
    let (s, f) = feedback(&gw, json!({"id": id, "score": 1})).await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(f["routed"], true);

    // A concrete model: feedback, the log entry and the newest row of /v1/logs.
    let (id2, r) = chat(&gw, chat_body("gpt-4o"), Some("sess-plain")).await;
    drop(r.bytes().await.unwrap());
    let (s, f) = feedback(&gw, json!({"id": id2, "score": 0})).await;
    assert_eq!(s, 201, "{f}");
    assert_eq!(f["routed"], false);
    let (s, l) = get(&gw, &format!("/v1/logs/{id2}")).await;
    assert_eq!(s, 200, "{l}");
    let (s, l) = get(&gw, "/v1/logs?limit=1").await;
    assert_eq!(s, 200);
    assert_eq!(l["data"][0]["request_id"], id2, "{l}");

    // A stream: the id is known once the last byte arrived.
    let mut sb = chat_body("gpt-4o");
    sb["stream"] = json!(true);
    let (id3, r) = chat(&gw, sb, None).await;
    drop(r.text().await.unwrap());
    let (s, f) = feedback(&gw, json!({"id": id3, "score": 1})).await;
    assert_eq!(s, 201, "{f}");

    // Session NPS for a session with only concrete-model requests: accepted (pending a
    // routed request), then stored crediting none when the window closes.
    let (s, n) = feedback(&gw, json!({"session_id": "sess-plain", "nps": 8})).await;
    assert_eq!(s, 202, "{n}");
    assert_eq!(n["status"], "pending");
    let fb = n["id"].as_str().unwrap().to_string();
    let (s, v) = poll(
        &gw,
        &format!("/v1/feedback/{fb}"),
        Duration::from_secs(10),
        |s, v| s == 200 && v["status"] == "accepted",
    )
    .await;
    assert_eq!((s, &v["status"]), (200, &json!("accepted")), "{v}");
    assert_eq!(v["credited_requests"], 0);
    // A session with routed requests is credited at once.
    let (s, n) = feedback(&gw, json!({"session_id": "sess-a", "nps": 9})).await;
    assert_eq!(s, 201, "{n}");
    assert_eq!(n["credited_requests"], 1);

    // An id nobody served: pending, then gone (404) after the window.
    let (s, p) = feedback(&gw, json!({"id": "chatcmpl-neverserved", "score": 1})).await;
    assert_eq!(s, 202, "{p}");
    assert!(p["message"].as_str().unwrap().contains("pending"), "{p}");
    let fb = p["id"].as_str().unwrap().to_string();
    let (s, v) = get(&gw, &format!("/v1/feedback/{fb}")).await;
    assert_eq!((s, &v["status"]), (200, &json!("pending")), "{v}");
    let (s, v) = poll(
        &gw,
        &format!("/v1/feedback/{fb}"),
        Duration::from_secs(10),
        |s, _| s == 404,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "feedback_not_found");
    // A second score for the same pending target is a duplicate while it waits.
    let (s, _) = feedback(&gw, json!({"id": "chatcmpl-other", "score": 1})).await;
    assert_eq!(s, 202);
    let (s, v) = feedback(&gw, json!({"id": "chatcmpl-other", "score": 0})).await;
    assert_eq!(s, 409, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_postgres_settle_pending_feedback() {
    let srv = pg::PgServer::start();
    srv.create_db("ryw");
    let url = srv.url_for("ryw");
    let mock = MockUpstream::start(openai_like()).await;
    // Instance 1 flushes every 400 ms; instance 2 never gets the chance to see the trace first.
    let a = start(
        &format!("backend = \"postgres\"\npostgres_url = \"{url}\"\nflush_interval_ms = 400\npending_feedback_secs = 3"),
        &mock,
    );
    let b = start(
        &format!("backend = \"postgres\"\npostgres_url = \"{url}\"\nflush_interval_ms = 400\npending_feedback_secs = 3"),
        &mock,
    );
    let (id, r) = chat(&a, chat_body("auto"), Some("fleet-s")).await;
    drop(r.bytes().await.unwrap());
    // Instance 1 itself answers at once.
    let (s, d) = get(&a, &format!("/v1/decisions/{id}")).await;
    assert_eq!(s, 200, "{d}");

    // Feedback to instance 2 right away: accepted (pending, or direct if the trace landed).
    let (id2, r) = chat(&a, chat_body("auto"), Some("fleet-s")).await;
    drop(r.bytes().await.unwrap());
    let (s, f) = feedback(&b, json!({"id": id2, "score": 1})).await;
    assert!(s == 202 || s == 201, "{s} {f}");
    let fb = f["id"].as_str().unwrap().to_string();
    // Reconciled when instance 1's writer stores the trace: the event is accepted with the
    // decision's route and model, visible through either instance.
    let (s, v) = poll(
        &b,
        &format!("/v1/feedback/{fb}"),
        Duration::from_secs(15),
        |s, v| s == 200 && v["status"] == "accepted",
    )
    .await;
    assert_eq!((s, &v["status"]), (200, &json!("accepted")), "{v}");
    assert_eq!(v["routed"], true, "{v}");
    assert_eq!(v["model"], "gpt-4o", "{v}");
    assert_eq!(v["request_id"], id2);
    let (s, d) = poll(
        &b,
        &format!("/v1/decisions/{id2}"),
        Duration::from_secs(5),
        |s, _| s == 200,
    )
    .await;
    assert_eq!(s, 200, "{d}");
    assert!(
        d["scores"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == fb.as_str()),
        "{d}"
    );

    // Unknown everywhere: pending on instance 2, 404 after the window.
    let (s, p) = feedback(&b, json!({"id": "chatcmpl-nowhere", "score": 0})).await;
    assert_eq!(s, 202, "{p}");
    let fb = p["id"].as_str().unwrap().to_string();
    let (s, v) = poll(
        &a,
        &format!("/v1/feedback/{fb}"),
        Duration::from_secs(15),
        |s, _| s == 404,
    )
    .await;
    assert_eq!(s, 404, "{v}");
}
