//! Virtual keys end to end: create (secret once), use, restrict, patch, revoke — and the
//! revocation reaching a second gateway on the same store within one second.

mod common;

use std::time::{Duration, Instant};

use common::*;
use loopgate::auth::keys::hash_key;
use serde_json::{json, Value};

const CONFIG_KEY: &str = "lg-test-config-key-000000000";

fn config() -> String {
    format!(
        "[[auth.keys]]\nid = \"cfg\"\nhash = \"{}\"\nscopes = [\"inference\"]\n",
        hash_key(CONFIG_KEY)
    )
}

async fn chat_as(gw: &GatewayProc, key: &str, model: &str) -> (u16, Value) {
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .json(&chat_body(model))
        .send()
        .await
        .expect("send");
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

/// Poll until `gw` answers `key` with `want`, for at most `within`; the time it took.
async fn until_status(gw: &GatewayProc, key: &str, want: u16, within: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (s, body) = chat_as(gw, key, "gpt-4o-mini").await;
        if s == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < within,
            "still {s} after {:?} (want {want}): {body}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn start_pair(mock: &MockUpstream) -> (GatewayProc, GatewayProc) {
    let env = [
        ("OPENAI_API_KEY", "sk-test".to_string()),
        ("OPENAI_BASE_URL", mock.url()),
    ];
    let a = GatewayProc::start(&config(), &env);
    let mut env_b = env.to_vec();
    env_b.push(("LOOPGATE_DB", a.db_path().display().to_string()));
    let b = GatewayProc::start(&config(), &env_b);
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_use_restrict_patch_revoke_across_two_gateways() {
    let mock = MockUpstream::start(model_fleet()).await;
    let (a, b) = start_pair(&mock);

    let (s, created) = admin(
        &a,
        "POST",
        "/v1/keys",
        Some(
            json!({"name": "ci", "team": "infra", "allowed_models": ["gpt-4o-mini"],
                    "limits": {"rpm": 100}, "metadata": {"owner": "ops"}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let secret = created["key"]
        .as_str()
        .expect("secret returned once")
        .to_string();
    let id = created["id"].as_str().expect("id").to_string();
    assert!(secret.starts_with("lg-") && id.starts_with("vk_"));
    assert_eq!(created["spec"]["limits"]["rpm"], 100);

    // Usable at once here, and on the other gateway within a second.
    let (s, body) = chat_as(&a, &secret, "gpt-4o-mini").await;
    assert_eq!(s, 200, "{body}");
    until_status(&b, &secret, 200, Duration::from_secs(1)).await;

    // A model outside the key's list: 403; an inference key cannot manage keys.
    let (s, body) = chat_as(&a, &secret, "gpt-4o").await;
    assert_eq!(s, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("gpt-4o"));
    let r = client()
        .get(a.url("/v1/keys"))
        .header("authorization", format!("Bearer {secret}"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403);

    // The listing never shows the secret; config keys are listed read-only.
    let (s, list) = admin(&a, "GET", "/v1/keys", None).await;
    assert_eq!(s, 200);
    let text = list.to_string();
    assert!(
        !text.contains(&secret) && !text.contains("sha256:"),
        "{text}"
    );
    let data = list["data"].as_array().expect("data");
    assert!(data
        .iter()
        .any(|k| k["id"] == id.as_str() && k["source"] == "api"));
    assert!(data
        .iter()
        .any(|k| k["id"] == "cfg" && k["read_only"] == true));
    let (s, one) = admin(&a, "GET", &format!("/v1/keys/{id}"), None).await;
    assert_eq!((s, one["spec"]["team"].as_str()), (200, Some("infra")));
    let (s, body) = admin(&a, "PATCH", "/v1/keys/cfg", Some(json!({"name": "x"}))).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (409, Some("key_read_only"))
    );

    // PATCH widens the model list; the change is visible on the next request.
    let (s, body) = admin(
        &a,
        "PATCH",
        &format!("/v1/keys/{id}"),
        Some(json!({"allowed_models": ["gpt-4o-mini", "gpt-4o"], "team": null})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body["spec"].get("team").is_none(), "{body}");
    let (s, body) = chat_as(&a, &secret, "gpt-4o").await;
    assert_eq!(s, 200, "{body}");

    // Revoke on A: refused on A at once, on B within one second.
    let (s, body) = admin(&a, "DELETE", &format!("/v1/keys/{id}"), None).await;
    assert_eq!(s, 200, "{body}");
    assert!(body["revoked_ms"].is_i64());
    let (s, body) = chat_as(&a, &secret, "gpt-4o-mini").await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );
    let took = until_status(&b, &secret, 401, Duration::from_secs(1)).await;
    eprintln!("revocation reached the second gateway in {took:?}");

    // Every change is in the audit log, without the secret.
    let (s, audit) = admin(&b, "GET", "/v1/audit", None).await;
    assert_eq!(s, 200);
    let text = audit.to_string();
    for action in ["key.create", "key.update", "key.revoke"] {
        assert!(text.contains(action), "{action} missing: {text}");
    }
    assert!(!text.contains(&secret));
    assert!(!a.log_text().contains(&secret) && !b.log_text().contains(&secret));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_expiry_and_routes() {
    let mock = MockUpstream::start(model_fleet()).await;
    let gw = GatewayProc::start(
        &(config()
            + "\n[routes.r1]\ntargets = [{ model = \"gpt-4o-mini\" }]\n[routes.r2]\ntargets = [{ model = \"gpt-4o-mini\" }]\n"),
        &[
            ("OPENAI_API_KEY", "sk-test".to_string()),
            ("OPENAI_BASE_URL", mock.url()),
        ],
    );
    for (body, param) in [
        (json!({"bogus": 1}), "bogus"),
        (json!({"limits": {"rpm": -1}}), "limits.rpm"),
        (json!({"limits": {"tpm": 1.5}}), "limits.tpm"),
        (
            json!({"limits": {"models": {"gpt-4o": {"rpm": -2}}}}),
            "limits.models.gpt-4o.rpm",
        ),
        (
            json!({"budgets": [{"period": "week", "usd": 10}]}),
            "budgets[0].period",
        ),
        (
            json!({"budgets": [{"period": "day", "usd": 1, "extra": 1}]}),
            "budgets[0].extra",
        ),
        (json!({"scopes": ["root"]}), "scopes"),
    ] {
        let (s, e) = admin(&gw, "POST", "/v1/keys", Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert_eq!(e["error"]["param"].as_str(), Some(param), "{body}: {e}");
        assert!(e["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains(param));
    }

    // An expired key: 401 invalid_api_key.
    let (s, k) = admin(
        &gw,
        "POST",
        "/v1/keys",
        Some(json!({"expires_at": 1_000_000})),
    )
    .await;
    assert_eq!(s, 201, "{k}");
    let (s, body) = chat_as(&gw, k["key"].as_str().unwrap_or_default(), "gpt-4o-mini").await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (401, Some("invalid_api_key")),
        "{body}"
    );

    // A key allowed only routing rule r1: r1 served, r2 and a plain model refused (403).
    let (s, k) = admin(
        &gw,
        "POST",
        "/v1/keys",
        Some(json!({"allowed_routes": ["r1"]})),
    )
    .await;
    assert_eq!(s, 201, "{k}");
    let secret = k["key"].as_str().unwrap_or_default().to_string();
    let (s, body) = chat_as(&gw, &secret, "auto:r1").await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = chat_as(&gw, &secret, "auto:r2").await;
    assert_eq!(s, 403, "{body}");
    let (s, body) = chat_as(&gw, &secret, "gpt-4o-mini").await;
    assert_eq!(s, 403, "{body}");

    // Unknown id: 404; the config key still works.
    let (s, _) = admin(&gw, "DELETE", "/v1/keys/vk_nope", None).await;
    assert_eq!(s, 404);
    let (s, body) = chat_as(&gw, CONFIG_KEY, "gpt-4o-mini").await;
    assert_eq!(s, 200, "{body}");
}

/// Create a key on `gw` with `spec`; its secret.
async fn new_key(gw: &GatewayProc, spec: Value) -> String {
    let (s, k) = admin(gw, "POST", "/v1/keys", Some(spec)).await;
    assert_eq!(s, 201, "{k}");
    k["key"].as_str().expect("secret").to_string()
}

async fn chat_resp(gw: &GatewayProc, key: &str, body: Value) -> reqwest::Response {
    client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .json(&body)
        .send()
        .await
        .expect("send")
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_budgets_through_the_gateway() {
    let mock = MockUpstream::start(model_fleet()).await;
    let gw = GatewayProc::start(
        &config(),
        &[
            ("OPENAI_API_KEY", "sk-test".to_string()),
            ("OPENAI_BASE_URL", mock.url()),
        ],
    );

    // Requests per minute: 200 at once against 100/min admit exactly 100; the others get 429
    // rate_limit_exceeded with retry-after and the x-ratelimit-* headers.
    let key = new_key(&gw, json!({"limits": {"rpm": 100}})).await;
    let replies = futures_util::future::join_all(
        (0..200).map(|_| chat_resp(&gw, &key, chat_body("gpt-4o-mini"))),
    )
    .await;
    let ok: Vec<_> = replies.iter().filter(|r| r.status() == 200).collect();
    assert_eq!(ok.len(), 100);
    for r in &ok {
        assert_eq!(
            header(r, "x-ratelimit-limit-requests").as_deref(),
            Some("100")
        );
        let rem: u64 = header(r, "x-ratelimit-remaining-requests")
            .and_then(|v| v.parse().ok())
            .expect("remaining-requests");
        assert!(rem < 100);
        assert!(header(r, "x-ratelimit-reset-requests").is_some());
    }
    let mut refused = 0;
    for r in replies.into_iter().filter(|r| r.status() != 200) {
        assert_eq!(r.status(), 429);
        let retry: u64 = header(&r, "retry-after")
            .and_then(|v| v.parse().ok())
            .expect("retry-after in seconds");
        assert!((1..=2).contains(&retry), "{retry}");
        assert_eq!(
            header(&r, "x-ratelimit-remaining-requests").as_deref(),
            Some("0")
        );
        assert_eq!(
            header(&r, "x-ratelimit-limit-requests").as_deref(),
            Some("100")
        );
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "rate_limit_exceeded", "{body}");
        assert_eq!(body["error"]["type"], "rate_limit_error", "{body}");
        refused += 1;
    }
    assert_eq!(refused, 100);
    // Another key is not affected.
    let other = new_key(&gw, json!({"limits": {"rpm": 5}})).await;
    assert_eq!(
        chat_resp(&gw, &other, chat_body("gpt-4o-mini"))
            .await
            .status(),
        200
    );

    // Tokens per minute: charged up front from max_tokens, reconciled with the real usage
    // (the mock reports 600 tokens). Without the reconciliation the second request would
    // wait about 9 s for the bucket to refill.
    let key = new_key(&gw, json!({"limits": {"tpm": 3000}})).await;
    let mut big = chat_body("gpt-4o-mini");
    big["max_tokens"] = json!(1700);
    let r = chat_resp(&gw, &key, big.clone()).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "x-ratelimit-limit-tokens").as_deref(),
        Some("3000")
    );
    let t0 = Instant::now();
    loop {
        let r = chat_resp(&gw, &key, big.clone()).await;
        if r.status() == 200 {
            let rem: u64 = header(&r, "x-ratelimit-remaining-tokens")
                .and_then(|v| v.parse().ok())
                .expect("remaining-tokens");
            assert!(rem < 3000 - 600, "{rem}");
            break;
        }
        assert_eq!(r.status(), 429);
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the estimate was never reconciled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // A total budget of $0.0003: gpt-4o-mini at 400 + 200 tokens costs $0.00018, so two
    // requests pass (the second ends past the budget and is billed), then 429
    // insufficient_quota naming the budget.
    let (s, k) = admin(
        &gw,
        "POST",
        "/v1/keys",
        Some(json!({"budgets": [{"period": "total", "usd": 0.0003, "soft_pct": 50}]})),
    )
    .await;
    assert_eq!(s, 201, "{k}");
    let key = k["key"].as_str().expect("secret").to_string();
    let id = k["id"].as_str().expect("id").to_string();
    let t0 = Instant::now();
    let mut served = 0;
    let body = loop {
        let r = chat_resp(&gw, &key, chat_body("gpt-4o-mini")).await;
        if r.status() == 200 {
            served += 1;
        } else {
            assert_eq!(r.status(), 429);
            assert!(header(&r, "retry-after").is_none());
            break r.json::<Value>().await.expect("json");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5) && served < 20,
            "never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(served >= 2, "stopped before the budget was spent: {served}");
    assert_eq!(body["error"]["code"], "insufficient_quota", "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("total budget of $0.0003"));
    assert!(gw.log_text().contains("soft budget threshold"));

    // The spend is visible per period against the budget.
    let (s, usage) = admin(&gw, "GET", &format!("/v1/keys/{id}/usage"), None).await;
    assert_eq!(s, 200, "{usage}");
    let spent = usage["spend_usd"]["total"].as_f64().unwrap_or_default();
    assert!(
        (spent - served as f64 * 0.00018).abs() < 1e-8,
        "{usage} after {served} requests"
    );
    assert_eq!(usage["budgets"][0]["exhausted"], true, "{usage}");
    let (s, _) = admin(&gw, "GET", "/v1/keys/vk_nope/usage", None).await;
    assert_eq!(s, 404);
}

/// The soft threshold of a budget sends one signed `budget.soft_threshold` event to the
/// webhook (other kinds filtered out), and the key's requests show up in
/// `GET /v1/analytics?group_by=key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_threshold_reaches_the_webhook_once_and_analytics_group_by_key() {
    let mock = MockUpstream::start(model_fleet()).await;
    let hook = MockUpstream::start(Reply::Json(200, vec![], "{}".into())).await;
    let toml = format!(
        "{}[webhook]\nurl = \"{}/hook\"\nsecret_env = \"LG_TEST_WEBHOOK_SECRET\"\nevents = [\"budget.soft_threshold\"]\n",
        config(),
        hook.url()
    );
    let gw = GatewayProc::start(
        &toml,
        &[
            ("OPENAI_API_KEY", "sk-test".to_string()),
            ("OPENAI_BASE_URL", mock.url()),
            ("LG_TEST_WEBHOOK_SECRET", "whsec-test".to_string()),
        ],
    );
    // $0.001 a day, soft at 10% ($0.0001): each gpt-4o-mini request costs $0.00018, so
    // every request after the first finds the key past the soft threshold; five stay under
    // the budget.
    let (s, k) = admin(
        &gw,
        "POST",
        "/v1/keys",
        Some(json!({
            "name": "ci",
            "project": "alpha",
            "budgets": [{"period": "day", "usd": 0.001, "soft_pct": 10}]
        })),
    )
    .await;
    assert_eq!(s, 201, "{k}");
    let secret = k["key"].as_str().expect("secret").to_string();
    let id = k["id"].as_str().expect("id").to_string();
    for _ in 0..5 {
        let r = chat_resp(&gw, &secret, chat_body("gpt-4o-mini")).await;
        assert_eq!(r.status(), 200);
    }
    assert!(eventually(|| hook.count() >= 1, Duration::from_secs(10)).await);
    // Give a (wrong) second event time to arrive before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let key = loopgate::providers::Secret::new("whsec-test".into());
    let mut events = Vec::new();
    for got in hook.requests() {
        let sig = got.header("loopgate-signature").expect("signature");
        loopgate::rollout::webhook::verify_signature(&key, sig, &got.body, now, 300)
            .expect("signed");
        assert!(!String::from_utf8_lossy(&got.body).contains(&secret));
        events.extend(got.json()["events"].as_array().cloned().unwrap_or_default());
    }
    assert_eq!(
        events.len(),
        1,
        "once per key, budget and period: {events:?}"
    );
    let e = &events[0];
    assert_eq!(e["type"], "budget.soft_threshold", "{e}");
    assert_eq!(e["data"]["key_id"], id.as_str(), "{e}");
    assert_eq!(e["data"]["key_name"], "ci", "{e}");
    assert_eq!(e["data"]["project"], "alpha", "{e}");
    assert_eq!(e["data"]["period"], "day", "{e}");
    assert_eq!(e["data"]["budget_usd"], 0.001, "{e}");
    let spent = e["data"]["spent_usd"].as_f64().unwrap_or_default();
    assert!((spent - 0.00018).abs() < 1e-9, "{e}");
    assert!(gw.log_text().contains("soft budget threshold"));

    // Analytics by key: the five requests under the key's id (traces land asynchronously).
    let mut row = Value::Null;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(10) {
        let (s, a) = admin(&gw, "GET", "/v1/analytics?group_by=key", None).await;
        assert_eq!(s, 200, "{a}");
        row = a["data"]
            .as_array()
            .and_then(|d| d.iter().find(|r| r["group"] == id.as_str()).cloned())
            .unwrap_or(Value::Null);
        if row["requests"] == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(row["requests"], 5, "{row}");
    assert!((row["cost_usd"].as_f64().unwrap_or_default() - 5.0 * 0.00018).abs() < 1e-9);
}
