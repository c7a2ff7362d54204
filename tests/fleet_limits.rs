//! Virtual keys' limits and budgets shared by a fleet through a real `redis-server` (started
//! here on a free loopback port): two gateways on one Redis and one SQLite store enforce one
//! rate limit and one budget together; Redis killed mid-load meets the configured failure
//! mode (fail_open admits and counts, fail_closed answers 503) and both recover when it
//! returns; an in-process gateway keeps a key's spend across a restart.
//!
//! Without `/usr/bin/redis-server` the Redis tests are skipped with a loud message, unless
//! `LOOPGATE_REQUIRE_REDIS` is set (CI installs it: `.ci/setup --test`), then they fail.

mod common;
#[path = "support/redis.rs"]
mod redis_proc;

use std::time::{Duration, Instant};

use common::*;
use redis_proc::{redis_available, RedisProc};
use serde_json::{json, Value};

const REDIS_PASSWORD: &str = "fleet-test-redis-password-7f3a";
/// gpt-4o-mini at 400 prompt + 200 completion tokens (the mock's usage).
const COST: f64 = 0.00018;

/// A request slower than this hung: 25 times the 200 ms `limits.timeout_ms`, so a loaded
/// machine does not trip it, while a request waiting on a dead Redis without a bound does.
const HUNG: Duration = Duration::from_secs(5);

fn limits_toml(url: &str, mode: &str) -> String {
    // The URL goes through LOOPGATE_REDIS_URL in the tests that carry a password.
    let url_line = if url.is_empty() {
        String::new()
    } else {
        format!("redis_url = \"{url}\"\n")
    };
    format!(
        "[limits]\nbackend = \"redis\"\n{url_line}failure_mode = \"{mode}\"\ntimeout_ms = 200\nkey_prefix = \"lgtest:\"\n"
    )
}

/// Create a key on `gw`: (secret, id).
async fn new_key(gw: &GatewayProc, spec: Value) -> (String, String) {
    let (s, k) = admin(gw, "POST", "/v1/keys", Some(spec)).await;
    assert_eq!(s, 201, "{k}");
    (
        k["key"].as_str().expect("secret").to_string(),
        k["id"].as_str().expect("id").to_string(),
    )
}

async fn chat(gw: &GatewayProc, key: &str) -> (u16, Value, Duration) {
    let t0 = Instant::now();
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .expect("send");
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null), t0.elapsed())
}

/// Poll until `gw` answers `key` with 200, at most `within` (the key reached its copy).
async fn until_served(gw: &GatewayProc, key: &str, within: Duration) {
    let t0 = Instant::now();
    loop {
        let (s, body, _) = chat(gw, key).await;
        if s == 200 {
            return;
        }
        assert!(t0.elapsed() < within, "still {s} after {within:?}: {body}");
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Poll `GET /v1/keys/{id}/usage` on `gw` until the total spend is `want` (±1e-9), at most
/// `within`; the last answer.
async fn until_spend(gw: &GatewayProc, id: &str, want: f64, within: Duration) -> Value {
    let t0 = Instant::now();
    loop {
        let (s, usage) = admin(gw, "GET", &format!("/v1/keys/{id}/usage"), None).await;
        let total = usage["spend_usd"]["total"].as_f64().unwrap_or(-1.0);
        if s == 200 && (total - want).abs() < 1e-9 {
            return usage;
        }
        assert!(
            t0.elapsed() < within,
            "spend never reached {want} within {within:?}: {s} {usage}"
        );
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of one sample of `metric` with `labels` (as written in the exposition).
async fn metric(gw: &GatewayProc, series: &str) -> f64 {
    let text = gw.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn upstream_env(mock: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_API_KEY", "sk-test".to_string()),
        ("OPENAI_BASE_URL", mock.url()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_and_one_sqlite_enforce_one_limit_and_one_budget() {
    if !redis_available() {
        return;
    }
    let redis = RedisProc::start_with(free_port(), None);
    let mock = MockUpstream::start(model_fleet()).await;
    let limits = limits_toml(&redis.url_with(None), "fail_closed");
    let a = GatewayProc::start(&limits, &upstream_env(&mock));
    let mut env_b = upstream_env(&mock);
    env_b.push(("LOOPGATE_DB", a.db_path().display().to_string()));
    let b = GatewayProc::start(&limits, &env_b);
    one_limit_and_one_budget(&a, &b).await;
}

#[path = "support/pg.rs"]
mod pg;

/// As above on one PostgreSQL database (the issue's fleet: Redis and PostgreSQL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_and_one_postgres_enforce_one_limit_and_one_budget() {
    if !redis_available() {
        return;
    }
    let redis = RedisProc::start_with(free_port(), None);
    let srv = pg::PgServer::start();
    srv.create_db("fleet");
    let storage = format!(
        "backend = \"postgres\"\npostgres_url = \"{}\"",
        srv.url_for("fleet")
    );
    let mock = MockUpstream::start(model_fleet()).await;
    let limits = limits_toml(&redis.url_with(None), "fail_closed");
    let a = GatewayProc::start_full("", &storage, &limits, &upstream_env(&mock));
    let b = GatewayProc::start_full("", &storage, &limits, &upstream_env(&mock));
    one_limit_and_one_budget(&a, &b).await;
}

async fn one_limit_and_one_budget(a: &GatewayProc, b: &GatewayProc) {
    // The limited key first, then an unlimited probe: once B serves the probe, its copy of
    // the key table (read whole) holds the limited key too, and no limited request was
    // spent on finding out.
    let (limited, _) = new_key(a, json!({"limits": {"rpm": 100}})).await;
    let (probe, _) = new_key(a, json!({})).await;
    until_served(b, &probe, Duration::from_secs(2)).await;

    // 200 concurrent requests, half on each gateway, against 100 per minute: exactly 100,
    // wherever they land (which gateway wins the race is the scheduler's business: in one
    // CI run B's 100 all came first and A refused every one of its own).
    let replies = futures_util::future::join_all((0..200).map(|i| {
        let gw = if i % 2 == 0 { a } else { b };
        let key = limited.clone();
        async move { chat(gw, &key).await }
    }))
    .await;
    assert_eq!(replies.iter().filter(|r| r.0 == 200).count(), 100);
    for (s, body, _) in replies.iter().filter(|r| r.0 != 200) {
        assert_eq!(*s, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    }

    // And each gateway counts the other's requests, in three bursts whose outcome does not
    // depend on a race: 50 on A (all admitted), 30 on B (all admitted), then 120 split
    // evenly, of which exactly the remaining 20 are admitted.
    let (limited, _) = new_key(a, json!({"limits": {"rpm": 100}})).await;
    let (probe, _) = new_key(a, json!({})).await;
    until_served(b, &probe, Duration::from_secs(2)).await;
    let burst = |gws: Vec<&'static str>| {
        let limited = limited.clone();
        async move {
            futures_util::future::join_all(gws.into_iter().map(|g| {
                let gw = if g == "a" { a } else { b };
                let key = limited.clone();
                async move { chat(gw, &key).await }
            }))
            .await
        }
    };
    let admitted = |replies: &[(u16, Value, _)]| replies.iter().filter(|r| r.0 == 200).count();
    let first = burst(vec!["a"; 50]).await;
    assert_eq!(admitted(&first), 50, "A alone, under the limit");
    let second = burst(vec!["b"; 30]).await;
    assert_eq!(admitted(&second), 30, "B, still under the shared limit");
    let third = burst(
        (0..120)
            .map(|i| if i % 2 == 0 { "a" } else { "b" })
            .collect(),
    )
    .await;
    assert_eq!(
        admitted(&third),
        20,
        "the shared limit's remainder, across both gateways"
    );
    for (s, body, _) in third.iter().filter(|r| r.0 != 200) {
        assert_eq!(*s, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
    }

    // One budget together: $0.0003 in total, each request costs $0.00018. A's request is
    // settled in Redis (B's usage shows it), B's ends past the budget and is billed, then
    // both gateways refuse with insufficient_quota.
    let (key, id) = new_key(
        a,
        json!({"budgets": [{"period": "total", "usd": 0.0003, "soft_pct": 50}]}),
    )
    .await;
    let (probe, _) = new_key(a, json!({})).await;
    until_served(b, &probe, Duration::from_secs(2)).await;
    let (s, body, _) = chat(a, &key).await;
    assert_eq!(s, 200, "{body}");
    let usage = until_spend(b, &id, COST, Duration::from_secs(3)).await;
    assert_eq!(usage["scope"], "fleet", "{usage}");
    let (s, body, _) = chat(b, &key).await;
    assert_eq!(s, 200, "under the budget on B: {body}");
    let usage = until_spend(a, &id, 2.0 * COST, Duration::from_secs(3)).await;
    assert_eq!(usage["budgets"][0]["exhausted"], true, "{usage}");
    for gw in [a, b] {
        let (s, body, _) = chat(gw, &key).await;
        assert_eq!(s, 429, "{body}");
        assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("total budget of $0.0003"));
    }
    // B's admission saw A's spend past the soft threshold (50%): metric and log line there.
    let soft = "loopgate_budget_soft_threshold_total{period=\"total\"}";
    assert_eq!(metric(b, soft).await, 1.0, "{}", b.metrics().await);
    assert!(b.log_text().contains("soft budget threshold"));
    assert!(a.log_text().contains("shared through Redis"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_load_meets_the_failure_mode_and_recovers() {
    if !redis_available() {
        return;
    }
    let redis = RedisProc::start_with(free_port(), Some(REDIS_PASSWORD));
    let url = redis.url_with(Some(REDIS_PASSWORD));
    let mock = MockUpstream::start(model_fleet()).await;
    let mut env = upstream_env(&mock);
    env.push(("LOOPGATE_REDIS_URL", url.clone()));
    let open = GatewayProc::start(&limits_toml("", "fail_open"), &env);
    let closed = GatewayProc::start(&limits_toml("", "fail_closed"), &env);
    let (k_open, _) = new_key(&open, json!({"limits": {"rpm": 100000}})).await;
    let (k_closed, _) = new_key(&closed, json!({"limits": {"rpm": 100000}})).await;
    let (s, body, _) = chat(&open, &k_open).await;
    assert_eq!(s, 200, "{body}");
    let (s, body, _) = chat(&closed, &k_closed).await;
    assert_eq!(s, 200, "{body}");

    // Load on both gateways; Redis is killed while it runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = |gw: &GatewayProc, key: String| {
        let url = gw.url("/v1/chat/completions");
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::Acquire) {
                    break;
                }
                let t0 = Instant::now();
                let r = client()
                    .post(&url)
                    .header("authorization", format!("Bearer {key}"))
                    .json(&chat_body("gpt-4o-mini"))
                    .send()
                    .await
                    .expect("send");
                let s = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                seen.push((s, body, t0.elapsed()));
            }
            seen
        })
    };
    let load_open = load(&open, k_open.clone());
    let load_closed = load(&closed, k_closed.clone());
    // Redis is killed mid-load: once the loads are running (the upstream serves them).
    let served = mock.count();
    wait_until(
        "the loads reach the upstream",
        Duration::from_secs(10),
        || async { mock.count() >= served + 20 },
    )
    .await;
    let admitted = "loopgate_limits_backend_errors_total{outcome=\"admitted\"}";
    let (redis_dir, port) = redis.kill_keeping_dir();
    // Keep loading until the closed gateway has refused for a while (bounded).
    let t0 = Instant::now();
    loop {
        let (s, body, took) = chat(&closed, &k_closed).await;
        assert!(took < HUNG, "a request hung {took:?}");
        if s == 503 {
            assert_eq!(body["error"]["code"], "limits_unavailable", "{body}");
            assert!(body["error"]["message"].is_string(), "{body}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "never refused: {s} {body}"
        );
        // The pause between polls.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The open gateway's load runs through the outage too: until it has admitted a
    // request unchecked.
    wait_until(
        "fail_open admits a request unchecked during the outage",
        Duration::from_secs(10),
        || async { metric(&open, admitted).await >= 1.0 },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    let seen_open = load_open.await.expect("load");
    let seen_closed = load_closed.await.expect("load");

    // fail_open: every request served, none hung; the admitted-unchecked ones counted.
    assert!(!seen_open.is_empty());
    for (s, body, took) in &seen_open {
        assert_eq!(*s, 200, "fail_open refused: {body}");
        assert!(*took < HUNG, "a request hung {took:?}");
    }
    assert!(
        metric(&open, admitted).await >= 1.0,
        "{}",
        open.metrics().await
    );
    // fail_closed: served until the kill, 503 limits_unavailable after; nothing else.
    assert!(
        seen_closed.iter().any(|r| r.0 == 503),
        "no 503 during the outage"
    );
    for (s, body, took) in &seen_closed {
        assert!(*s == 200 || *s == 503, "{s} {body}");
        assert!(*took < HUNG, "a request hung {took:?}");
    }
    let refused = "loopgate_limits_backend_errors_total{outcome=\"refused\"}";
    assert!(metric(&closed, refused).await >= 1.0);

    // Redis returns on the same port: both gateways check limits again.
    let redis = RedisProc::start_in(redis_dir, port, Some(REDIS_PASSWORD));
    let t0 = Instant::now();
    loop {
        let (s, body, _) = chat(&closed, &k_closed).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "{body}");
        assert!(t0.elapsed() < Duration::from_secs(10), "never recovered");
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Limits apply again after the recovery (a fresh Redis: a new key with rpm 1).
    let (one, _) = new_key(&open, json!({"limits": {"rpm": 1}})).await;
    let t0 = Instant::now();
    let before = metric(&open, admitted).await;
    loop {
        // Until the open gateway's connection is back its requests are admitted unchecked;
        // then the second request of the minute is refused.
        let (s, body, _) = chat(&open, &one).await;
        if s == 429 {
            assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
            break;
        }
        assert_eq!(s, 200, "{body}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "limits never applied again: {}",
            open.log_text()
        );
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metric(&open, admitted).await >= before);

    // One warning per outage, one line at recovery; the password is nowhere.
    for gw in [&open, &closed] {
        let log = gw.log_text();
        assert_eq!(
            log.matches("the failure mode applies until Redis answers again")
                .count(),
            1,
            "{log}"
        );
        assert!(log.contains("Redis answers again"), "{log}");
        assert!(!log.contains(REDIS_PASSWORD), "password in the log");
        assert!(!gw.metrics().await.contains(REDIS_PASSWORD));
        assert!(log.contains(&format!("redis://127.0.0.1:{port}")), "{log}");
    }
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_the_in_process_spend() {
    let mock = MockUpstream::start(model_fleet()).await;
    let mut a = GatewayProc::start("", &upstream_env(&mock));
    let (key, id) = new_key(
        &a,
        json!({"budgets": [{"period": "day", "usd": 0.0003}, {"period": "total", "usd": 0.0005}]}),
    )
    .await;
    for _ in 0..2 {
        let (s, body, _) = chat(&a, &key).await;
        assert_eq!(s, 200, "{body}");
    }
    let usage = until_spend(&a, &id, 2.0 * COST, Duration::from_secs(3)).await;
    assert_eq!(usage["scope"], "gateway", "{usage}");
    // Both traces are in the store before the gateway dies.
    let db = a.db_path();
    let t0 = Instant::now();
    loop {
        let n: i64 = rusqlite::Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM traces WHERE key_id = ?1",
                    [&id],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0);
        if n == 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "traces not stored: {n}"
        );
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = a.child.kill();
    let _ = a.child.wait();

    let mut env = upstream_env(&mock);
    env.push(("LOOPGATE_DB", db.display().to_string()));
    let b = GatewayProc::start("", &env);
    // The spend comes back from the store (day and total), and the daily budget holds.
    let usage = until_spend(&b, &id, 2.0 * COST, Duration::from_secs(5)).await;
    assert!(
        (usage["spend_usd"]["day"].as_f64().unwrap_or_default() - 2.0 * COST).abs() < 1e-9,
        "{usage}"
    );
    // The key reaches the new gateway's copy of the key table within one refresh.
    let t0 = Instant::now();
    let (s, body) = loop {
        let (s, body, _) = chat(&b, &key).await;
        if s != 401 || t0.elapsed() > Duration::from_secs(2) {
            break (s, body);
        }
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("daily budget"));
    assert!(b.log_text().contains("reloaded from the store"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_then_up() {
    if !redis_available() {
        return;
    }
    // Nothing listens on the port yet: the gateway starts anyway (Redis is contacted on
    // the first limited request) and fail_closed refuses until Redis is there.
    let port = free_port();
    let mock = MockUpstream::start(model_fleet()).await;
    let limits = limits_toml(&format!("redis://127.0.0.1:{port}/0"), "fail_closed");
    let gw = GatewayProc::start(&limits, &upstream_env(&mock));
    let (key, _) = new_key(&gw, json!({"limits": {"rpm": 1000}})).await;
    let (open_key, _) = new_key(&gw, json!({})).await;
    let (s, body, took) = chat(&gw, &key).await;
    assert_eq!(s, 503, "{body}");
    assert_eq!(body["error"]["code"], "limits_unavailable", "{body}");
    assert!(took < HUNG, "{took:?}");
    // A key without limits or budgets never needs Redis.
    let (s, body, _) = chat(&gw, &open_key).await;
    assert_eq!(s, 200, "{body}");
    let _redis = RedisProc::start_with(port, None);
    let t0 = Instant::now();
    loop {
        let (s, body, _) = chat(&gw, &key).await;
        if s == 200 {
            break;
        }
        assert_eq!(s, 503, "{body}");
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "never connected: {}",
            gw.log_text()
        );
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One chat request with `key` and extra headers (`loopgate-user-id`, `loopgate-project-id`).
async fn chat_with(gw: &GatewayProc, key: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .json(&chat_body("gpt-4o-mini"));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("send");
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

/// The entry of `GET /v1/limits` for `kind`/`name` once its total spend is `want`, polled
/// at most `within`.
async fn until_group_spend(
    gw: &GatewayProc,
    kind: &str,
    name: &str,
    want: f64,
    within: Duration,
) -> Value {
    let t0 = Instant::now();
    loop {
        let (s, list) = admin(gw, "GET", "/v1/limits", None).await;
        let entry = list["data"]
            .as_array()
            .and_then(|d| d.iter().find(|g| g["kind"] == kind && g["name"] == name))
            .cloned()
            .unwrap_or(Value::Null);
        let total = entry["spend_usd"]["total"].as_f64().unwrap_or(-1.0);
        if s == 200 && (total - want).abs() < 1e-9 {
            return entry;
        }
        assert!(
            t0.elapsed() < within,
            "{kind} {name} never spent {want} within {within:?}: {s} {list}"
        );
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn message(body: &Value) -> &str {
    body["error"]["message"].as_str().unwrap_or_default()
}

const GROUPS: &str = r#"
[limits.projects.shop]
rpm = 30
[limits.teams.payments]
budgets = [{ period = "total", usd = 0.0003, soft_pct = 50 }]
[limits.users.bob]
rpm = 3
"#;

/// Limits of a project, a team and a user bind every key of theirs on both gateways of one
/// Redis: the project's 30 requests per minute across two keys and two gateways, the team's
/// budget spent by two keys, a user named by the request or by the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_teams_and_users_share_limits_and_budgets_across_two_gateways() {
    if !redis_available() {
        return;
    }
    let redis = RedisProc::start_with(free_port(), None);
    let mock = MockUpstream::start(model_fleet()).await;
    let limits = format!(
        "{}{GROUPS}",
        limits_toml(&redis.url_with(None), "fail_closed")
    );
    let a = GatewayProc::start(&limits, &upstream_env(&mock));
    let mut env_b = upstream_env(&mock);
    env_b.push(("LOOPGATE_DB", a.db_path().display().to_string()));
    let b = GatewayProc::start(&limits, &env_b);

    // The project: two keys of `shop`, one used on each gateway, 40 requests at once.
    let (k1, _) = new_key(&a, json!({"project": "shop"})).await;
    let (k2, _) = new_key(&a, json!({"project": "shop"})).await;
    let (probe, _) = new_key(&a, json!({})).await;
    until_served(&b, &probe, Duration::from_secs(2)).await;
    let replies = futures_util::future::join_all((0..40).map(|i| {
        let (gw, key) = if i % 2 == 0 { (&a, &k1) } else { (&b, &k2) };
        async move { chat_with(gw, key, &[]).await }
    }))
    .await;
    assert_eq!(replies.iter().filter(|r| r.0 == 200).count(), 30);
    for (s, body) in replies.iter().filter(|r| r.0 != 200) {
        assert_eq!(*s, 429, "{body}");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        assert!(message(body).contains("the project 'shop'"), "{body}");
    }

    // The team: its budget is spent by two keys on two gateways, then both are refused.
    let (t1, _) = new_key(&a, json!({"team": "payments"})).await;
    let (t2, _) = new_key(&a, json!({"team": "payments"})).await;
    let (probe, _) = new_key(&a, json!({})).await;
    until_served(&b, &probe, Duration::from_secs(2)).await;
    let (s, body) = chat_with(&a, &t1, &[]).await;
    assert_eq!(s, 200, "{body}");
    until_group_spend(&b, "team", "payments", COST, Duration::from_secs(3)).await;
    let (s, body) = chat_with(&b, &t2, &[]).await;
    assert_eq!(s, 200, "under the team's budget on B: {body}");
    let team = until_group_spend(&a, "team", "payments", 2.0 * COST, Duration::from_secs(3)).await;
    assert_eq!(team["budgets"][0]["exhausted"], true, "{team}");
    for (gw, key) in [(&a, &t1), (&b, &t2)] {
        let (s, body) = chat_with(gw, key, &[]).await;
        assert_eq!(s, 429, "{body}");
        assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
        assert!(
            message(&body).contains("The team 'payments' has used its total budget of $0.0003"),
            "{body}"
        );
    }

    // The user: named by the request's header on a key without a user...
    let bob = [("loopgate-user-id", "bob")];
    for gw in [&a, &b, &a] {
        let (s, body) = chat_with(gw, &probe, &bob).await;
        assert_eq!(s, 200, "{body}");
    }
    let (s, body) = chat_with(&b, &probe, &bob).await;
    assert_eq!(s, 429, "{body}");
    assert!(message(&body).contains("the user 'bob'"), "{body}");
    let (s, body) = chat_with(&b, &probe, &[("loopgate-user-id", "carol")]).await;
    assert_eq!(s, 200, "carol has no limit: {body}");
    // ...or by the key, which a header cannot override.
    let (kb, _) = new_key(&a, json!({"user": "bob"})).await;
    until_served(&b, &probe, Duration::from_secs(2)).await;
    let (s, body) = chat_with(&a, &kb, &[("loopgate-user-id", "carol")]).await;
    assert_eq!(s, 429, "{body}");
    assert!(message(&body).contains("the user 'bob'"), "{body}");

    let (s, list) = admin(&b, "GET", "/v1/limits", None).await;
    assert_eq!(s, 200, "{list}");
    assert_eq!(list["scope"], "fleet", "{list}");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(3), "{list}");
    // A's admission saw the team past its soft threshold (50%).
    let soft = "loopgate_budget_soft_threshold_total{period=\"total\"}";
    assert!(
        metric(&a, soft).await + metric(&b, soft).await >= 1.0,
        "{}",
        a.metrics().await
    );
}

/// In process: a project's budget counts config-file keys too (project by header), its
/// spend comes back from the store after a restart, and a user limit added by a reload
/// applies without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_budget_survives_a_restart_and_group_limits_apply_on_reload() {
    let groups = "[limits.projects.shop]\nbudgets = [{ period = \"day\", usd = 0.0003 }]\n";
    let mock = MockUpstream::start(model_fleet()).await;
    let mut a = GatewayProc::start(groups, &upstream_env(&mock));
    let (key, _) = new_key(&a, json!({"project": "shop"})).await;
    let (s, body) = chat_with(&a, &key, &[]).await;
    assert_eq!(s, 200, "{body}");
    // The master key (from the environment, not a virtual key) names the project by header.
    let shop = [("loopgate-project-id", "shop")];
    let (s, body) = chat_with(&a, MASTER_KEY, &shop).await;
    assert_eq!(s, 200, "{body}");
    let entry = until_group_spend(&a, "project", "shop", 2.0 * COST, Duration::from_secs(3)).await;
    assert_eq!(entry["budgets"][0]["exhausted"], true, "{entry}");
    let (s, body) = chat_with(&a, MASTER_KEY, &shop).await;
    assert_eq!(s, 429, "{body}");
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    assert!(
        message(&body).contains("The project 'shop' has used its daily budget"),
        "{body}"
    );
    let (s, body) = chat_with(&a, MASTER_KEY, &[]).await;
    assert_eq!(s, 200, "another project is not limited: {body}");

    // Both costed traces of the project are stored before the gateway dies.
    let db = a.db_path();
    let t0 = Instant::now();
    while trace_rows(&db, "WHERE project_id = 'shop' AND cost_usd > 0") < 2 {
        assert!(t0.elapsed() < Duration::from_secs(5), "traces not stored");
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let _ = a.child.kill();
    let _ = a.child.wait();

    let mut env = upstream_env(&mock);
    env.push(("LOOPGATE_DB", db.display().to_string()));
    let b = GatewayProc::start(groups, &env);
    until_group_spend(&b, "project", "shop", 2.0 * COST, Duration::from_secs(5)).await;
    let (s, body) = chat_with(&b, MASTER_KEY, &shop).await;
    assert_eq!(s, 429, "the spend came back: {body}");

    // A reload adds a user limit; it applies to the next requests, no restart.
    b.rewrite_config(&format!("{groups}[limits.users.zed]\nrpm = 1\n"));
    let zed = [("loopgate-user-id", "zed")];
    wait_until(
        "the reloaded user limit refuses zed's second request",
        Duration::from_secs(10),
        || async {
            let (s, body) = chat_with(&b, MASTER_KEY, &zed).await;
            s == 429 && message(&body).contains("the user 'zed'")
        },
    )
    .await;
    assert!(
        !b.log_text().contains("apply only after a restart"),
        "{}",
        b.log_text()
    );
}
