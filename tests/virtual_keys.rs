//! Virtual keys end to end: create (secret once), use, restrict, patch, revoke — and the
//! revocation reaching a second gateway on the same store within one second.

mod common;

use std::time::{Duration, Instant};

use common::*;
use loopgate::routing::keys::hash_key;
use serde_json::{json, Value};

const CONFIG_KEY: &str = "lg-test-config-key-000000000";

fn config() -> String {
    format!(
        "[[auth.keys]]\nid = \"cfg\"\nhash = \"{}\"\nscopes = [\"inference\"]\n",
        hash_key(CONFIG_KEY)
    )
}

async fn admin(gw: &GatewayProc, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut r = client()
        .request(m, gw.url(path))
        .header("authorization", auth());
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("send");
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
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
