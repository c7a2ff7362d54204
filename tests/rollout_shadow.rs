//! Shadow mode, the LLM-as-judge and the baseline-vs-loopgate report, end to end: the real
//! gateway, one OpenAI-shaped mock serving the baseline (`gpt-4o`), the candidate
//! (`gpt-4o-mini`, slow on purpose) and the judge (`gpt-4.1-mini`).

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const JUDGE_MODEL: &str = "gpt-4.1-mini";
/// Judge behaviours the mock can switch between.
const JUDGE_OK: u8 = 0;
const JUDGE_500: u8 = 1;
const JUDGE_MALFORMED: u8 = 2;

/// Baseline answers at once; the candidate answers after `slow`; the judge grades the
/// baseline's answers 5/5 and the candidate's 2/5 (so every judged pair is a regression).
fn fleet(slow: Duration, judge: Arc<AtomicU8>) -> Reply {
    Reply::Dynamic(Arc::new(move |r: &Received| {
        let body = r.json();
        let model = body["model"].as_str().unwrap_or("m").to_string();
        if model == JUDGE_MODEL {
            let user = body["messages"][1]["content"].as_str().unwrap_or("");
            assert!(
                user.contains("<response>"),
                "judge prompt without the answer"
            );
            return match judge.load(Ordering::SeqCst) {
                JUDGE_500 => Reply::Json(
                    500,
                    vec![],
                    json!({"error": {"message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null}}).to_string(),
                ),
                JUDGE_MALFORMED => Reply::Json(
                    200,
                    vec![],
                    chat_json(&model, "I think the answer is fine.", 300, 8),
                ),
                _ => {
                    let s = if user.contains("answer from gpt-4o-mini") { 2 } else { 5 };
                    let verdict = json!({"relevance": s, "coherence": s, "helpfulness": s, "safety": 5, "rationale": "graded"});
                    Reply::Json(200, vec![], chat_json(&model, &verdict.to_string(), 300, 30))
                }
            };
        }
        let text = format!("answer from {model}");
        if body["stream"].as_bool() == Some(true) {
            let usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
            let parts = openai_stream_parts(&model, &["answer ", "from ", &model], usage);
            return Reply::Chunks(
                200,
                "text/event-stream".into(),
                parts.into_iter().map(|p| (Duration::ZERO, p)).collect(),
            );
        }
        let json = chat_json(&model, &text, 400, 200);
        if model == "gpt-4o-mini" {
            Reply::Chunks(
                200,
                "application/json".into(),
                vec![(slow, json.into_bytes())],
            )
        } else {
            Reply::Json(200, vec![], json)
        }
    }))
}

fn config(shadow_share: f64, shadow_budget: f64, judge_share: f64) -> String {
    format!(
        r#"
[routes.default]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "shadow"
[routes.default.constraints]
max_regression = 0.05
min_confidence = 0.9
min_samples = 100000
max_exploration_share = 1.0
max_cost_increase = 0.0
[routes.default.exploration]
rate = 1.0
# Successive elimination (issue 12) would drop the judged-worse candidate after 5 samples;
# these tests keep it under evaluation.
eliminate_after = 1000000
[routes.default.shadow]
share = {shadow_share}
daily_budget = {shadow_budget}
[routes.default.judge]
share = {judge_share}
daily_budget = 5.0
[judge]
model = "{JUDGE_MODEL}"
max_attempts = 2
timeout_secs = 10
[routing]
refresh_ms = 60
"#
    )
}

fn env(mock: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_API_KEY", "sk-test".into()),
        ("OPENAI_BASE_URL", mock.url()),
    ]
}

fn start(mock: &MockUpstream, toml: &str) -> GatewayProc {
    GatewayProc::start(toml, &env(mock))
}

/// Stop the gateway and start it again on the same config and database (its config asks
/// for port 0, so the new process picks fresh ports).
fn restart(mut gw: GatewayProc, mock: &MockUpstream) -> GatewayProc {
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    let config = gw.config.clone();
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    drop(gw);
    GatewayProc::spawn(dir, config, 0, 0, &env(mock))
}

/// Drop the fields the gateway mints per response.
fn strip_minted(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        o.remove("created");
    }
    v
}

async fn chat(
    gw: &GatewayProc,
    model: &str,
    content: &str,
    stream: bool,
) -> (String, Vec<u8>, f64) {
    let started = Instant::now();
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&if stream {
            json!({"model": model, "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": content}]})
        } else {
            json!({"model": model, "messages": [{"role": "user", "content": content}]})
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served = r.headers()["loopgate-model"].to_str().unwrap().to_string();
    let body = r.bytes().await.unwrap().to_vec();
    (served, body, started.elapsed().as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn db_i64(gw: &GatewayProc, sql: &str) -> i64 {
    let conn = rusqlite::Connection::open(gw.db_path()).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap_or(-1)
}

fn db_f64(gw: &GatewayProc, sql: &str) -> f64 {
    let conn = rusqlite::Connection::open(gw.db_path()).unwrap();
    conn.query_row(sql, [], |r| r.get::<_, Option<f64>>(0))
        .unwrap()
        .unwrap_or(0.0)
}

async fn get_json(gw: &GatewayProc, path: &str) -> (u16, Value) {
    let r = client()
        .get(gw.url(path))
        .header("authorization", auth())
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn signal_count(table: &Value, model: &str, signal: &str) -> u64 {
    table["routes"][0]["models"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["model"] == model))
        .and_then(|m| m["signals"].as_array())
        .and_then(|ss| ss.iter().find(|s| s["signal"] == signal))
        .and_then(|s| s["count"].as_u64())
        .unwrap_or(0)
}

/// Sum of a metric's samples whose labels include all of `labels` (`k="v"`).
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|lb| l.contains(lb)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_leaves_the_client_response_and_latency_untouched() {
    let judge = Arc::new(AtomicU8::new(JUDGE_OK));
    let mock = MockUpstream::start(fleet(Duration::from_millis(300), judge)).await;
    let gw = start(&mock, &config(1.0, 5.0, 0.0));

    // Same bytes as a direct, non-routed request for the baseline (minted id/created aside).
    let (_, direct, _) = chat(&gw, "gpt-4o", "Say hello", false).await;
    let (served, shadowed, _) = chat(&gw, "auto", "Say hello", false).await;
    assert_eq!(served, "gpt-4o");
    let direct: Value = serde_json::from_slice(&direct).unwrap();
    let shadowed: Value = serde_json::from_slice(&shadowed).unwrap();
    assert_eq!(strip_minted(direct.clone()), strip_minted(shadowed.clone()));
    assert_eq!(
        serde_json::to_string(&strip_minted(direct)).unwrap(),
        serde_json::to_string(&strip_minted(shadowed)).unwrap()
    );
    // Streams too: every event equal once the per-response id is removed.
    let (_, d, _) = chat(&gw, "gpt-4o", "Say hello", true).await;
    let (_, s, _) = chat(&gw, "auto", "Say hello", true).await;
    let events = |b: &[u8]| -> Vec<Value> {
        sse_events(&String::from_utf8_lossy(b))
            .into_iter()
            .map(|e| {
                serde_json::from_str(&e)
                    .map(strip_minted)
                    .unwrap_or(Value::String(e))
            })
            .collect()
    };
    assert_eq!(events(&d), events(&s));

    // Latency: the shadow model takes 300 ms; the client never waits for it.
    let (mut direct_ms, mut shadow_ms) = (Vec::new(), Vec::new());
    for i in 0..30 {
        direct_ms.push(chat(&gw, "gpt-4o", &format!("q{i}"), false).await.2);
        shadow_ms.push(chat(&gw, "auto", &format!("q{i}"), false).await.2);
    }
    let (md, ms) = (median(direct_ms), median(shadow_ms));
    // Relative to the direct requests measured alongside (a loaded machine slows both), and
    // below the shadow's own 300 ms, which a client that waited for it could not beat.
    assert!(
        ms < md + 100.0 && ms < 300.0,
        "shadow added latency: median {ms:.1} ms vs {md:.1} ms direct"
    );

    // Every shadow-mode request got exactly one shadow call, traced as such (share 1.0: to the
    // router's pick when it differs from the baseline, else to the candidate under evaluation).
    let picks_differ = "SELECT COUNT(*) FROM decisions";
    let shadows = "SELECT COUNT(*) FROM traces WHERE endpoint = 'shadow' AND shadow";
    assert!(
        eventually(
            || {
                // 2 + 30 routed requests, all decisions stored first.
                let p = db_i64(&gw, picks_differ);
                db_i64(&gw, "SELECT COUNT(*) FROM decisions") == 32
                    && p > 0
                    && db_i64(&gw, shadows) == p
            },
            Duration::from_secs(20)
        )
        .await,
        "picks {} vs shadow traces {}",
        db_i64(&gw, picks_differ),
        db_i64(&gw, shadows)
    );
    // Linked to the served request, costed, and without any text.
    let conn = rusqlite::Connection::open(gw.db_path()).unwrap();
    let (id, served_model, cost, req_body, resp_body): (String, String, f64, Option<String>, Option<String>) = conn
        .query_row(
            "SELECT request_id, served_model, cost_usd, request_body, response_body FROM traces WHERE endpoint = 'shadow' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!(served_model, "gpt-4o-mini");
    assert!(
        (cost - (400.0 * 0.15e-6 + 200.0 * 0.6e-6)).abs() < 1e-9,
        "{cost}"
    );
    assert!(req_body.is_none() && resp_body.is_none());
    let (s, logs) = get_json(&gw, "/v1/logs?route=default&limit=200").await;
    assert_eq!(s, 200);
    let rec = logs["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["request_id"] == id.as_str())
        .cloned()
        .unwrap_or(Value::Null);
    let shadow_of = rec["properties"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p[0] == "shadow_of"))
        .and_then(|p| p[1].as_str())
        .unwrap_or_default()
        .to_string();
    assert_eq!(rec["endpoint"], "shadow");
    assert_eq!(rec["shadow"], true);
    assert!(
        db_i64(
            &gw,
            &format!("SELECT COUNT(*) FROM decisions WHERE request_id = '{shadow_of}'")
        ) == 1,
        "shadow_of must name the served request: {rec}"
    );
    // Never counted as served traffic: no served stats for the candidate.
    assert_eq!(
        db_i64(&gw, "SELECT COUNT(*) FROM traces WHERE route = 'default' AND served_model = 'gpt-4o-mini' AND NOT shadow AND endpoint <> 'judge'"),
        0
    );
    let mut stats_ok = false;
    for _ in 0..150 {
        let (_, t) = get_json(&gw, "/v1/routing").await;
        let models = t["routes"][0]["models"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let base = models.iter().find(|m| m["model"] == "gpt-4o");
        let mini = models.iter().find(|m| m["model"] == "gpt-4o-mini");
        if let (Some(b), Some(m)) = (base, mini) {
            if !b["p95_latency_ms"].is_null() {
                assert!(m["p95_latency_ms"].is_null(), "{t}");
                assert!(m["success_rate"].is_null(), "{t}");
                stats_ok = true;
                break;
            }
        }
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(stats_ok, "served stats never appeared for the baseline");
    let m = gw.metrics().await;
    assert!(
        metric(
            &m,
            "loopgate_shadow_calls_total",
            &["result=\"ok\"", "route=\"default\""]
        ) > 0.0,
        "{m}"
    );
    assert!(metric(&m, "loopgate_shadow_spend_usd_total", &[]) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_calls_stay_within_their_daily_budget() {
    let judge = Arc::new(AtomicU8::new(JUDGE_OK));
    let mock = MockUpstream::start(fleet(Duration::from_millis(5), judge)).await;
    // One shadow call costs $0.00018 (estimated at up to $0.0003): room for a handful.
    let budget = 0.001;
    let gw = start(&mock, &config(1.0, budget, 0.0));
    for i in 0..30 {
        chat(&gw, "auto", &format!("budget {i}"), false).await;
    }
    let picks = db_i64(
        &gw,
        "SELECT COUNT(*) FROM decisions WHERE chosen <> baseline",
    );
    assert!(
        picks >= 8,
        "too few differing picks to test the budget: {picks}"
    );
    // Let the queue drain, then count.
    wait_shadow_settled(&gw, &mock, 30, 0).await;
    let n = db_i64(&gw, "SELECT COUNT(*) FROM traces WHERE endpoint = 'shadow'");
    let spent = db_f64(
        &gw,
        "SELECT SUM(cost_usd) FROM traces WHERE endpoint = 'shadow'",
    );
    assert!(n >= 1, "no shadow call at all");
    assert!(
        n < picks,
        "the budget did not stop shadow calls: {n} of {picks}"
    );
    assert!(
        spent <= budget + 1e-12,
        "shadow spend {spent} over budget {budget}"
    );
    let m = gw.metrics().await;
    assert!(
        metric(&m, "loopgate_shadow_calls_total", &["result=\"budget\""]) >= 1.0,
        "{m}"
    );
    assert_eq!(
        mock.requests()
            .iter()
            .filter(|r| r.json()["model"] == "gpt-4o-mini")
            .count() as i64,
        n
    );

    // A restart does not reset the day's spend: it is read back from the stored shadow traces.
    let gw = restart(gw, &mock);
    let decisions_before = db_i64(&gw, "SELECT COUNT(*) FROM decisions");
    let picks_before = db_i64(
        &gw,
        "SELECT COUNT(*) FROM decisions WHERE chosen <> baseline",
    );
    for i in 0..15 {
        chat(&gw, "auto", &format!("after restart {i}"), false).await;
    }
    wait_shadow_settled(&gw, &mock, decisions_before + 15, picks_before).await;
    let spent = db_f64(
        &gw,
        "SELECT SUM(cost_usd) FROM traces WHERE endpoint = 'shadow'",
    );
    assert!(
        spent <= budget + 1e-12,
        "shadow spend {spent} over budget {budget} after a restart"
    );
}

/// Wait until `decisions` decisions are stored, every shadow job this process started
/// for the differing picks beyond `picks_before` has run to its end (called, refused by
/// the budget, or dropped) and every shadow call the upstream saw is traced.
async fn wait_shadow_settled(
    gw: &GatewayProc,
    mock: &MockUpstream,
    decisions: i64,
    picks_before: i64,
) {
    wait_until(
        "every shadow job is settled and traced",
        Duration::from_secs(10),
        || async {
            let stored = db_i64(gw, "SELECT COUNT(*) FROM decisions");
            let picks = db_i64(
                gw,
                "SELECT COUNT(*) FROM decisions WHERE chosen <> baseline",
            ) - picks_before;
            let m = gw.metrics().await;
            let settled = metric(&m, "loopgate_shadow_calls_total", &[])
                + metric(&m, "loopgate_shadow_dropped_total", &[]);
            let traced = db_i64(gw, "SELECT COUNT(*) FROM traces WHERE endpoint = 'shadow'");
            let upstream = mock
                .requests()
                .iter()
                .filter(|r| r.json()["model"] == "gpt-4o-mini")
                .count() as i64;
            stored >= decisions && settled >= picks as f64 && traced == upstream
        },
    )
    .await;
}

async fn wait_signals(gw: &GatewayProc, model: &str, at_least: u64) -> Value {
    let mut t = Value::Null;
    for _ in 0..200 {
        t = get_json(gw, "/v1/routing").await.1;
        if signal_count(&t, model, "judge") >= at_least {
            return t;
        }
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn judge_scores_flow_into_routing_and_the_report_and_failures_do_not() {
    let judge = Arc::new(AtomicU8::new(JUDGE_OK));
    let mock = MockUpstream::start(fleet(Duration::from_millis(5), judge.clone())).await;
    let gw = start(&mock, &config(1.0, 5.0, 1.0));

    // (c) before any traffic: nulls and notes, never example values.
    let (s, empty) = get_json(&gw, "/v1/report/shadow?route=default&window=24h").await;
    assert_eq!(s, 200, "{empty}");
    assert_eq!(empty["baseline"]["requests"], 0);
    assert!(empty["baseline"]["cost_per_request_usd"].is_null());
    assert!(empty["baseline"]["quality"].is_null());
    assert!(empty["baseline"]["p95_latency_ms"].is_null());
    assert!(empty["loopgate"]["quality"].is_null());
    assert!(empty["projected_saving"].is_null());
    assert_eq!(empty["regression_events"]["total"], 0);
    assert!(empty["regression_events"]["rate"].is_null());
    assert!(!empty["notes"].as_array().unwrap().is_empty(), "{empty}");
    let (s, _) = get_json(&gw, "/v1/report/shadow?route=nope").await;
    assert_eq!(s, 404);
    let (s, _) = get_json(&gw, "/v1/report/shadow?route=default&window=forever").await;
    assert_eq!(s, 400);

    // (b) every routed request is judged (share 1.0): served answers, and shadow answers.
    let n = 8u64;
    for i in 0..n {
        let stream = i % 2 == 1;
        chat(&gw, "auto", &format!("judge me {i}"), stream).await;
    }
    let shadows = |gw: &GatewayProc| {
        db_i64(
            gw,
            "SELECT COUNT(*) FROM traces WHERE endpoint = 'shadow' AND status = 200",
        ) as u64
    };
    // Share 1.0: every request is shadowed (the pick, or the candidate under evaluation).
    let differ = |gw: &GatewayProc| db_i64(gw, "SELECT COUNT(*) FROM decisions") as u64;
    assert!(
        eventually(
            || {
                db_i64(&gw, "SELECT COUNT(*) FROM decisions") == n as i64
                    && differ(&gw) > 0
                    && shadows(&gw) == differ(&gw)
            },
            Duration::from_secs(10)
        )
        .await
    );
    let t = wait_signals(&gw, "gpt-4o", n).await;
    assert_eq!(signal_count(&t, "gpt-4o", "judge"), n, "{t}");
    let t = wait_signals(&gw, "gpt-4o-mini", shadows(&gw)).await;
    assert_eq!(
        signal_count(&t, "gpt-4o-mini", "judge"),
        shadows(&gw),
        "{t}"
    );
    let judge_rows = db_i64(
        &gw,
        "SELECT COUNT(*) FROM feedback WHERE signal = 'judge' AND scale = 'unit'",
    );
    assert_eq!(judge_rows as u64, n + shadows(&gw));
    // Scores only: the detail holds the dimensions and the rubric version, never text.
    let conn = rusqlite::Connection::open(gw.db_path()).unwrap();
    let (value, detail, dedup): (f64, String, String) = conn
        .query_row(
            "SELECT value, detail, dedup_key FROM feedback WHERE signal = 'judge' AND model = 'gpt-4o' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert!((value - 1.0).abs() < 1e-9, "{value}");
    let d: Value = serde_json::from_str(&detail).unwrap();
    assert_eq!(d["relevance"], 5.0);
    assert!(d["rubric_version"].is_string());
    assert!(!detail.contains("answer from") && !detail.contains("judge me"));
    assert!(dedup.starts_with("request:chatcmpl-") && dedup.ends_with(":judge"));
    // Judge calls are traced as such and not counted as served traffic.
    assert!(
        eventually(
            || db_i64(&gw, "SELECT COUNT(*) FROM traces WHERE endpoint = 'judge'") >= judge_rows,
            Duration::from_secs(5)
        )
        .await
    );
    // A decision taken now carries the judge evidence in the chosen model's posterior.
    let (_, body, _) = chat(&gw, "auto", "after judging", false).await;
    let id = serde_json::from_slice::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut dec = Value::Null;
    for _ in 0..100 {
        let (s, v) = get_json(&gw, &format!("/v1/decisions/{id}")).await;
        if s == 200 {
            dec = v;
            break;
        }
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let sigs = dec["decision"]["signals"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        sigs.iter()
            .any(|s| s["signal"] == "judge" && s["count"].as_u64().unwrap_or(0) > 0),
        "{dec}"
    );

    // (c) the report now has real numbers.
    let mut report = Value::Null;
    for _ in 0..100 {
        report = get_json(&gw, "/v1/report/shadow?route=default&window=1h")
            .await
            .1;
        if report["regression_events"]["total"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let base = &report["baseline"];
    let pick = &report["loopgate"];
    assert!(base["requests"].as_u64().unwrap() >= n, "{report}");
    let stored_cpr = db_f64(
        &gw,
        "SELECT AVG(cost_usd) FROM traces WHERE endpoint = 'chat.completions' AND route = 'default'",
    );
    assert!(stored_cpr > 0.0);
    assert!(
        (base["cost_per_request_usd"].as_f64().unwrap() - stored_cpr).abs() < 1e-9,
        "{report}"
    );
    assert!(
        (pick["cost_per_request_usd"].as_f64().unwrap() - 0.00018).abs() < 1e-9,
        "{report}"
    );
    assert_eq!(pick["source"], "shadow_calls");
    assert!(base["p95_latency_ms"].as_f64().unwrap() > 0.0);
    assert!(pick["p95_latency_ms"].as_f64().unwrap() > 0.0);
    assert!(
        (base["quality"]["mean"].as_f64().unwrap() - 1.0).abs() < 1e-9,
        "{report}"
    );
    // 2/5 everywhere but safety 5: (0.3+0.2+0.3)·0.25 + 0.2·1 = 0.4.
    assert!(
        (pick["quality"]["mean"].as_f64().unwrap() - 0.4).abs() < 1e-9,
        "{report}"
    );
    let ev = &report["regression_events"];
    assert!(ev["total"].as_u64().unwrap() > 0);
    assert_eq!(
        ev["count"], ev["total"],
        "every judged pair regressed by 0.6 > 0.05"
    );
    let saving = &report["projected_saving"];
    assert_eq!(saving["basis"], "paired");
    assert!(saving["switched_requests"].as_u64().unwrap() > 0);
    assert!(saving["usd"].as_f64().unwrap() > 0.0, "{report}");

    // (b) failures: 500s and malformed replies are retried, then dropped, never a signal.
    // Every answer so far (served and shadow) is scored before the judge starts failing.
    let all_scored = || {
        let rows = db_i64(&gw, "SELECT COUNT(*) FROM feedback WHERE signal = 'judge'");
        let shadow_traces = db_i64(
            &gw,
            "SELECT COUNT(*) FROM traces WHERE endpoint = 'shadow' AND status = 200",
        );
        let answers = db_i64(&gw, "SELECT COUNT(*) FROM decisions") + shadow_traces;
        // Nothing in flight either: every shadow call the upstream saw is traced, and every
        // judge call it saw has its score stored (a shadow answer whose trace is still on its
        // way is not counted in `answers` yet, and would be judged after the switch below).
        let reqs = mock.requests();
        let seen = |m: &str| reqs.iter().filter(|r| r.json()["model"] == m).count() as i64;
        rows == answers && seen(JUDGE_MODEL) == rows && seen("gpt-4o-mini") == shadow_traces
    };
    assert!(eventually(all_scored, Duration::from_secs(10)).await);
    let before_rows = db_i64(&gw, "SELECT COUNT(*) FROM feedback WHERE signal = 'judge'");
    let m0 = gw.metrics().await;
    let errors = |m: &str| metric(m, "loopgate_judge_calls_total", &["result=\"error\""]);
    let retries = |m: &str| metric(m, "loopgate_judge_calls_total", &["result=\"retry\""]);
    for (mode, label) in [(JUDGE_500, "e500"), (JUDGE_MALFORMED, "bad")] {
        judge.store(mode, Ordering::SeqCst);
        let before = gw.metrics().await;
        let calls0 = mock
            .requests()
            .iter()
            .filter(|r| r.json()["model"] == JUDGE_MODEL)
            .count();
        chat(&gw, "auto", &format!("failing judge {label}"), false).await;
        // Two attempts (max_attempts = 2) for the served answer, maybe for a shadow answer.
        assert!(
            eventually(
                || mock
                    .requests()
                    .iter()
                    .filter(|r| r.json()["model"] == JUDGE_MODEL)
                    .count()
                    >= calls0 + 2,
                Duration::from_secs(10)
            )
            .await
        );
        wait_until(
            &format!("the failing judge ({label}) is counted as a retry and an error"),
            Duration::from_secs(10),
            || async {
                let m = gw.metrics().await;
                errors(&m) > errors(&before) && retries(&m) > retries(&before)
            },
        )
        .await;
    }
    // The failed calls are traced before anything below is checked.
    wait_until(
        "the failed judge calls are traced",
        Duration::from_secs(10),
        || async {
            db_i64(
                &gw,
                "SELECT COUNT(*) FROM traces WHERE endpoint = 'judge' AND status = 500",
            ) >= 2
        },
    )
    .await;
    let m1 = gw.metrics().await;
    assert!(errors(&m1) >= errors(&m0) + 2.0, "{m1}");
    assert!(retries(&m1) >= retries(&m0) + 2.0, "{m1}");
    assert_eq!(
        db_i64(&gw, "SELECT COUNT(*) FROM feedback WHERE signal = 'judge'"),
        before_rows,
        "a failed judge call must never be stored as a score"
    );
    // The failed calls are traced (with their errors) but carry no score.
    assert!(
        db_i64(
            &gw,
            "SELECT COUNT(*) FROM traces WHERE endpoint = 'judge' AND status = 500"
        ) >= 2
    );
}

/// Issue 12: with the built-in judge, which requests get a score is known before routing (it
/// samples by request id), so a live route explores only on judged requests: every explored
/// request is scored, and its decision trace says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_exploration_lands_on_the_requests_the_judge_will_score() {
    let judge = Arc::new(AtomicU8::new(JUDGE_OK));
    let mock = MockUpstream::start(fleet(Duration::ZERO, judge)).await;
    // Judge share 0.4, exploration capped at 0.3: no exploration needs to spill onto
    // unjudged requests.
    let toml = config(0.0, 0.0, 0.4)
        .replace("mode = \"shadow\"", "mode = \"live\"")
        .replace("max_exploration_share = 1.0", "max_exploration_share = 0.3")
        .replace("rate = 1.0", "rate = 0.3")
        .replace("max_regression = 0.05", "max_regression = 0.2");
    let gw = start(&mock, &toml);
    let mut ids = Vec::new();
    for i in 0..240 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", auth())
            .json(&json!({"model": "auto", "messages": [{"role": "user", "content": format!("q{i}")}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let v: Value = r.json().await.unwrap();
        ids.push(v["id"].as_str().unwrap().to_string());
    }
    let mut explored = Vec::new();
    for _ in 0..200 {
        let (_, v) = get_json(&gw, "/v1/decisions?route=default&limit=1000").await;
        let data = v["data"].as_array().cloned().unwrap_or_default();
        if data.len() >= ids.len() {
            explored = data
                .into_iter()
                .filter(|d| d["kind"] == "explored")
                .collect();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        explored.len() >= 3,
        "too little exploration to judge: {}",
        explored.len()
    );
    for d in &explored {
        let id = d["id"].as_str().unwrap();
        assert!(
            loopgate::rollout::judge::should_judge(id, 0.4),
            "explored a request the judge will not score: {id}"
        );
        let (s, full) = get_json(&gw, &format!("/v1/decisions/{id}")).await;
        assert_eq!(s, 200);
        assert_eq!(full["decision"]["labelling"]["known"], "scored", "{full}");
        assert_eq!(full["decision"]["labelling"]["share"], 0.4, "{full}");
    }
    // The non-explored decisions are labelled too: the judge's sample is known for every one.
    let unscored = ids
        .iter()
        .find(|id| !loopgate::rollout::judge::should_judge(id, 0.4))
        .unwrap();
    let (_, full) = get_json(&gw, &format!("/v1/decisions/{unscored}")).await;
    assert_eq!(full["decision"]["labelling"]["known"], "unscored", "{full}");
}
