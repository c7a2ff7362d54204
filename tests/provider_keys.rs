//! Provider API keys at runtime, end to end against the real binary: add keys through the
//! admin API, requests signed with them per weight, a 401 from the provider failing over
//! to the next key (and cooling the rejected one down), a 429 with `retry-after`, delete,
//! two gateways on one SQLite file, restart, master-key rotation, a wrong master key —
//! and the secrets absent from the database files, logs, metrics and every answer.

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ENV_KEY: &str = "sk-env-provider-key-0000000000";
const KEY_A: &str = "sk-runtime-alpha-111111111111111111";
const KEY_B: &str = "sk-runtime-bravo-222222222222222222";
/// Two master keys (32 bytes, base64) and a malformed one.
const VAULT_1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const VAULT_2: &str = "HxwdHhscGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgE=";

/// What the mock provider answers per key: 0 serve, 1 → 401, 2 → 429 with `retry-after: 3`.
#[derive(Clone, Default)]
struct Modes(Arc<[AtomicU8; 3]>);

impl Modes {
    fn set(&self, key: &str, mode: u8) {
        let i = match key {
            KEY_A => 0,
            KEY_B => 1,
            _ => 2,
        };
        self.0[i].store(mode, Ordering::SeqCst);
    }
    fn get(&self, key: &str) -> u8 {
        match key {
            KEY_A => self.0[0].load(Ordering::SeqCst),
            KEY_B => self.0[1].load(Ordering::SeqCst),
            _ => self.0[2].load(Ordering::SeqCst),
        }
    }
}

/// An OpenAI-compatible provider that knows the three keys and answers real OpenAI error
/// bodies (the key masked, as OpenAI does) for the modes above.
fn provider(modes: Modes) -> Reply {
    Reply::Dynamic(Arc::new(move |r: &Received| {
        let key = r
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_string();
        let model = r.json()["model"].as_str().unwrap_or("m").to_string();
        if ![ENV_KEY, KEY_A, KEY_B].contains(&key.as_str()) || modes.get(&key) == 1 {
            let masked = format!(
                "{}***{}",
                &key[..key.len().min(3)],
                &key[key.len().saturating_sub(2)..]
            );
            return Reply::Json(
                401,
                vec![],
                json!({"error": {"message": format!("Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."),
                                 "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
                .to_string(),
            );
        }
        if modes.get(&key) == 2 {
            return Reply::Json(
                429,
                vec![("retry-after".into(), "3".into())],
                json!({"error": {"message": "Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1.",
                                 "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
                .to_string(),
            );
        }
        let who = match key.as_str() {
            KEY_A => "alpha",
            KEY_B => "bravo",
            _ => "env",
        };
        Reply::Json(
            200,
            vec![],
            chat_json(&model, &format!("served with {who}"), 11, 3),
        )
    }))
}

fn env(mock: &MockUpstream, vault: Option<&str>) -> Vec<(&'static str, String)> {
    let mut v = vec![
        ("OPENAI_API_KEY", ENV_KEY.to_string()),
        ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
    ];
    if let Some(k) = vault {
        v.push(("LOOPGATE_VAULT_KEY", k.to_string()));
    }
    v
}

/// Which key the provider saw on each request so far.
fn used(mock: &MockUpstream) -> Vec<String> {
    mock.requests()
        .iter()
        .filter_map(|r| r.header("authorization"))
        .map(|a| a.trim_start_matches("Bearer ").to_string())
        .collect()
}

fn count(mock: &MockUpstream, key: &str) -> usize {
    used(mock).iter().filter(|k| *k == key).count()
}

/// Every answer body the test saw, for the leak check at the end.
#[derive(Default, Clone)]
struct Seen(Arc<Mutex<String>>);

impl Seen {
    fn add(&self, v: &Value) {
        if let Ok(mut s) = self.0.lock() {
            s.push_str(&v.to_string());
            s.push('\n');
        }
    }
    fn text(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

async fn call(
    g: &GatewayProc,
    seen: &Seen,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let (s, v) = admin(g, method, path, body).await;
    seen.add(&v);
    (s, v)
}

async fn chat(g: &GatewayProc, seen: &Seen) -> (u16, Value) {
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .expect("send");
    let s = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    seen.add(&v);
    (s, v)
}

fn content(v: &Value) -> &str {
    v["choices"][0]["message"]["content"].as_str().unwrap_or("")
}

async fn add(g: &GatewayProc, seen: &Seen, key: &str, weight: u32, label: &str) -> String {
    let (s, v) = call(
        g,
        seen,
        "POST",
        "/v1/providers/openai/keys",
        Some(json!({"key": key, "weight": weight, "label": label})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("pk_"), "{v}");
    assert_eq!(v["weight"], weight);
    assert_eq!(v["label"], label);
    assert_eq!(v["last4"], &key[key.len() - 4..]);
    assert_eq!(v["state"], "active");
    assert!(
        !v.to_string().contains(key),
        "the secret is never returned: {v}"
    );
    id
}

async fn key_view(g: &GatewayProc, seen: &Seen, id: &str) -> Value {
    let (s, v) = call(g, seen, "GET", "/v1/providers/openai/keys", None).await;
    assert_eq!(s, 200, "{v}");
    v["data"]
        .as_array()
        .and_then(|d| d.iter().find(|k| k["id"] == id).cloned())
        .unwrap_or(Value::Null)
}

fn metric(m: &str, prefix: &str) -> f64 {
    m.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_failover_cooldowns_delete_audit_and_no_secret_anywhere() {
    let modes = Modes::default();
    let mock = MockUpstream::start(provider(modes.clone())).await;
    let g = GatewayProc::start("", &env(&mock, Some(VAULT_1)));
    let seen = Seen::default();

    // Bad input, in the OpenAI error shape, naming the field or the provider.
    let (s, v) = call(
        &g,
        &seen,
        "POST",
        "/v1/providers/nosuchprovider/keys",
        Some(json!({"key": KEY_A})),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("nosuchprovider"),
        "{v}"
    );
    assert_eq!(v["error"]["code"], "provider_not_found");
    for (body, param) in [
        (json!({}), "key"),
        (json!({"key": ""}), "key"),
        (json!({"key": KEY_A, "weight": -1}), "weight"),
        (json!({"key": KEY_A, "weight": 2.5}), "weight"),
        (json!({"key": KEY_A, "label": 7}), "label"),
        (json!({"key": KEY_A, "region": "eu"}), "region"),
    ] {
        let (s, v) = call(
            &g,
            &seen,
            "POST",
            "/v1/providers/openai/keys",
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, 400, "{body}: {v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        assert_eq!(v["error"]["param"], param, "{body}: {v}");
    }
    let (s, v) = call(
        &g,
        &seen,
        "POST",
        "/v1/providers/bedrock/keys",
        Some(json!({"key": KEY_A})),
    )
    .await;
    assert_eq!(s, 400, "SigV4 providers take no API key: {v}");

    // Without runtime keys the provider's own key (env var) signs.
    let (s, v) = chat(&g, &seen).await;
    assert_eq!((s, content(&v)), (200, "served with env"), "{v}");

    let a = add(&g, &seen, KEY_A, 3, "alpha").await;
    let b = add(&g, &seen, KEY_B, 1, "bravo").await;

    // Runtime keys take precedence over the env key, chosen per weight (3:1).
    let before = used(&mock).len();
    for _ in 0..10 {
        let replies = futures_util::future::join_all((0..20).map(|_| chat(&g, &seen))).await;
        for (s, v) in replies {
            assert_eq!(s, 200, "{v}");
        }
    }
    let window: Vec<String> = used(&mock)[before..].to_vec();
    let on_a = window.iter().filter(|k| *k == KEY_A).count();
    let on_b = window.iter().filter(|k| *k == KEY_B).count();
    assert_eq!(on_a + on_b, 200, "only runtime keys while they are usable");
    assert!(
        (120..=180).contains(&on_a),
        "weight 3 vs 1: {on_a} on A, {on_b} on B"
    );

    // The provider rejects A (401): every request still succeeds, on B, and A cools down.
    modes.set(KEY_A, 1);
    let a_before = count(&mock, KEY_A);
    let t0 = Instant::now();
    while count(&mock, KEY_A) == a_before {
        assert!(t0.elapsed() < Duration::from_secs(10), "A was never tried");
        let (s, v) = chat(&g, &seen).await;
        assert_eq!((s, content(&v)), (200, "served with bravo"), "{v}");
    }
    let a_tries = count(&mock, KEY_A);
    for _ in 0..20 {
        let (s, v) = chat(&g, &seen).await;
        assert_eq!((s, content(&v)), (200, "served with bravo"), "{v}");
    }
    assert_eq!(
        count(&mock, KEY_A),
        a_tries,
        "a cooled-down key is not used"
    );
    let va = key_view(&g, &seen, &a).await;
    assert_eq!(va["state"], "cooling_down", "{va}");
    assert_eq!(va["cooldown"]["reason"], "unauthorized", "{va}");
    let m = g.metrics().await;
    assert_eq!(
        metric(
            &m,
            "loopgate_provider_keys_cooling_down{provider=\"openai\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "loopgate_provider_key_cooldowns_total{provider=\"openai\",reason=\"unauthorized\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "loopgate_provider_keys{provider=\"openai\"}"),
        2.0
    );

    // B gets 429 with retry-after: 3 → B cools down for 3 s; with both runtime keys out,
    // the provider's own key serves the retry of the same request.
    modes.set(KEY_B, 2);
    let (s, v) = chat(&g, &seen).await;
    assert_eq!((s, content(&v)), (200, "served with env"), "{v}");
    let vb = key_view(&g, &seen, &b).await;
    assert_eq!(vb["state"], "cooling_down", "{vb}");
    assert_eq!(vb["cooldown"]["reason"], "rate_limited", "{vb}");
    let left = vb["cooldown"]["until_ms"].as_i64().unwrap_or(0)
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
    assert!(
        (1_500..=3_100).contains(&left),
        "retry-after 3 s honoured: {left} ms left"
    );
    modes.set(KEY_B, 0);
    let t0 = Instant::now();
    loop {
        if key_view(&g, &seen, &b).await["state"] == "active" {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(6), "B never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (s, v) = chat(&g, &seen).await;
    assert_eq!((s, content(&v)), (200, "served with bravo"), "{v}");

    // Delete A: gone from the list, never used again (even once its cooldown would end).
    modes.set(KEY_A, 0);
    let (s, v) = call(
        &g,
        &seen,
        "DELETE",
        &format!("/v1/providers/openai/keys/{a}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = call(
        &g,
        &seen,
        "DELETE",
        &format!("/v1/providers/openai/keys/{a}"),
        None,
    )
    .await;
    assert_eq!(s, 404, "{v}");
    assert!(key_view(&g, &seen, &a).await.is_null());
    let a_after = count(&mock, KEY_A);
    for _ in 0..20 {
        let (s, v) = chat(&g, &seen).await;
        assert_eq!((s, content(&v)), (200, "served with bravo"), "{v}");
    }
    assert_eq!(count(&mock, KEY_A), a_after);

    // Every add and delete is in the hash-chained audit log, without the secret.
    let (s, v) = call(&g, &seen, "GET", "/v1/audit", None).await;
    assert_eq!(s, 200, "{v}");
    let text = v.to_string();
    assert_eq!(text.matches("provider_key.create").count(), 2, "{text}");
    assert_eq!(text.matches("provider_key.delete").count(), 1, "{text}");

    // The secrets are nowhere: database (and its WAL), log, metrics, answers.
    wait_until("traces written", Duration::from_secs(10), || async {
        trace_rows(&g.db_path(), "") >= 240
    })
    .await;
    let mut db = std::fs::read(g.db_path()).unwrap_or_default();
    let mut wal = g.db_path().into_os_string();
    wal.push("-wal");
    db.extend(std::fs::read(&wal).unwrap_or_default());
    let db = String::from_utf8_lossy(&db).to_string();
    assert!(
        db.contains("provider_keys"),
        "the key table is in this file"
    );
    let m = g.metrics().await;
    let log = g.log_text();
    let answers = seen.text();
    for secret in [KEY_A, KEY_B, VAULT_1] {
        assert!(!db.contains(secret), "secret in the database files");
        assert!(!log.contains(secret), "secret in the log");
        assert!(!m.contains(secret), "secret in metrics");
        assert!(!answers.contains(secret), "secret in an API answer");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_sqlite_file_see_adds_and_deletes() {
    let mock = MockUpstream::start(provider(Modes::default())).await;
    let a = GatewayProc::start("", &env(&mock, Some(VAULT_1)));
    let mut env_b = env(&mock, Some(VAULT_1));
    env_b.push(("LOOPGATE_DB", a.db_path().display().to_string()));
    let b = GatewayProc::start("", &env_b);
    add_and_delete_reach_the_other_gateway(&a, &b).await;
}

#[path = "support/pg.rs"]
mod pg;

/// The same on one PostgreSQL database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_postgres_see_adds_and_deletes() {
    let srv = pg::PgServer::start();
    srv.create_db("vault");
    let storage = format!(
        "backend = \"postgres\"\npostgres_url = \"{}\"",
        srv.url_for("vault")
    );
    let mock = MockUpstream::start(provider(Modes::default())).await;
    let a = GatewayProc::start_full("", &storage, "", &env(&mock, Some(VAULT_1)));
    let b = GatewayProc::start_full("", &storage, "", &env(&mock, Some(VAULT_1)));
    add_and_delete_reach_the_other_gateway(&a, &b).await;
}

async fn add_and_delete_reach_the_other_gateway(a: &GatewayProc, b: &GatewayProc) {
    let seen = Seen::default();
    let id = add(a, &seen, KEY_A, 1, "shared").await;
    let t0 = Instant::now();
    loop {
        let (s, v) = chat(b, &seen).await;
        assert_eq!(s, 200, "{v}");
        if content(&v) == "served with alpha" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the add did not reach B within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("add reached the second gateway in {:?}", t0.elapsed());
    let (s, v) = call(
        a,
        &seen,
        "DELETE",
        &format!("/v1/providers/openai/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let t0 = Instant::now();
    loop {
        let (s, v) = chat(b, &seen).await;
        assert_eq!(s, 200, "{v}");
        if content(&v) == "served with env" {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "the delete did not reach B within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("delete reached the second gateway in {:?}", t0.elapsed());
    // Rotation on the next request: B answers only from A's table now.
    for _ in 0..10 {
        let (_, v) = chat(b, &seen).await;
        assert_eq!(content(&v), "served with env");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_master_key_is_a_clear_error_and_nothing_is_stored() {
    let mock = MockUpstream::start(provider(Modes::default())).await;
    let g = GatewayProc::start("", &env(&mock, None));
    let seen = Seen::default();
    let (s, v) = call(
        &g,
        &seen,
        "POST",
        "/v1/providers/openai/keys",
        Some(json!({"key": KEY_A})),
    )
    .await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("LOOPGATE_VAULT_KEY"),
        "{v}"
    );
    assert_eq!(v["error"]["type"], "api_error");
    let (s, v) = call(&g, &seen, "GET", "/v1/providers/openai/keys", None).await;
    assert_eq!(
        (s, v["data"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
}

/// Run `loopgate` with `args` and `env` (provider vars cleared); exit code and output.
fn run(args: &[&str], env: &[(&str, String)]) -> (i32, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_loopgate"));
    cmd.args(args);
    for v in provider_env_vars() {
        cmd.env_remove(v);
    }
    cmd.env_remove("LOOPGATE_VAULT_KEY")
        .env_remove("LOOPGATE_VAULT_KEY_FILE")
        .env_remove("LOOPGATE_VAULT_KEY_PREVIOUS")
        .env_remove("LOOPGATE_DB");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run loopgate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_rotation_and_wrong_master_key() {
    let mock = MockUpstream::start(provider(Modes::default())).await;
    let seen = Seen::default();
    let mut first = GatewayProc::start("", &env(&mock, Some(VAULT_1)));
    add(&first, &seen, KEY_A, 1, "kept").await;
    let _ = first.child.kill();
    let _ = first.child.wait();
    let db = first.db_path().display().to_string();
    let config = first.config.display().to_string();
    let with_db = |vault: Option<&str>, extra: &[(&'static str, String)]| {
        let mut e = env(&mock, vault);
        e.push(("LOOPGATE_DB", db.clone()));
        e.extend(extra.iter().cloned());
        e
    };

    // Restart: the key is read back (decrypted with the master key) and used.
    {
        let g = GatewayProc::start("", &with_db(Some(VAULT_1), &[]));
        let (s, v) = chat(&g, &seen).await;
        assert_eq!((s, content(&v)), (200, "served with alpha"), "{v}");
    }

    // A wrong (well-formed) master key: a clear error naming the variable, never the env
    // key silently, never garbage sent upstream.
    {
        let before = used(&mock).len();
        let g = GatewayProc::start("", &with_db(Some(VAULT_2), &[]));
        let (s, v) = chat(&g, &seen).await;
        assert_eq!(s, 502, "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("cannot be decrypted") && msg.contains("LOOPGATE_VAULT_KEY"),
            "{v}"
        );
        assert_eq!(used(&mock).len(), before, "nothing was sent upstream");
        let (_, list) = call(&g, &seen, "GET", "/v1/providers/openai/keys", None).await;
        assert_eq!(list["data"][0]["state"], "undecryptable", "{list}");
        assert!(g.log_text().contains("cannot be decrypted"), "logged once");
    }

    // A malformed master key stops the start with a message saying what to set.
    let (code, out) = run(&["serve", "-c", &config], &with_db(Some("not-a-key"), &[]));
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("LOOPGATE_VAULT_KEY") && out.contains("32"),
        "{out}"
    );

    // Rotation: re-encrypt under VAULT_2, reading VAULT_1 as the previous key.
    let (code, out) = run(
        &["vault", "rotate", "-c", &config],
        &with_db(Some(VAULT_2), &[]),
    );
    assert_ne!(
        code, 0,
        "without the previous key the row cannot be read: {out}"
    );
    let (code, out) = run(
        &["vault", "rotate", "-c", &config],
        &with_db(
            Some(VAULT_2),
            &[("LOOPGATE_VAULT_KEY_PREVIOUS", VAULT_1.to_string())],
        ),
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("re-encrypted 1"), "{out}");
    {
        let g = GatewayProc::start("", &with_db(Some(VAULT_2), &[]));
        let (s, v) = chat(&g, &seen).await;
        assert_eq!((s, content(&v)), (200, "served with alpha"), "{v}");
    }
    {
        // The old key alone no longer reads it.
        let g = GatewayProc::start("", &with_db(Some(VAULT_1), &[]));
        let (s, _) = chat(&g, &seen).await;
        assert_eq!(s, 502);
    }
    let (code, out) = run(&["vault", "new-key"], &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(out.trim().len(), 44, "32 bytes in base64: {out}");
    let answers = seen.text();
    assert!(!answers.contains(KEY_A));
}

/// Background calls (here shadow calls of a feedback route in shadow mode) sign with the
/// runtime keys too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_calls_use_the_runtime_keys() {
    let mock = MockUpstream::start(provider(Modes::default())).await;
    let toml = r#"
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
eliminate_after = 1000000
[routes.default.shadow]
share = 1.0
daily_budget = 5.0
[routing]
refresh_ms = 60
"#;
    let g = GatewayProc::start(toml, &env(&mock, Some(VAULT_1)));
    let seen = Seen::default();
    add(&g, &seen, KEY_A, 1, "shadow").await;
    for _ in 0..5 {
        let r = client()
            .post(g.url("/v1/chat/completions"))
            .header("authorization", auth())
            .json(&chat_body("auto"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
    }
    wait_until(
        "a shadow call to gpt-4o-mini signed with the runtime key",
        Duration::from_secs(10),
        || async {
            mock.requests().iter().any(|r| {
                r.json()["model"] == "gpt-4o-mini"
                    && r.header("authorization") == Some(&format!("Bearer {KEY_A}")[..])
            })
        },
    )
    .await;
    assert_eq!(
        count(&mock, ENV_KEY),
        0,
        "the env key signed nothing: {:?}",
        used(&mock)
    );
}

/// `GET /v1/models` ids.
async fn model_ids(g: &GatewayProc) -> Vec<String> {
    let r = client()
        .get(g.url("/v1/models"))
        .header("authorization", auth())
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.unwrap_or(Value::Null);
    v["data"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter_map(|m| m["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Poll `cond` on `g` (at most `limit`, 20 ms apart); the time it took.
async fn within<F, Fut>(limit: Duration, what: &str, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if cond().await {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "{what} not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 15: a provider whose variable is unset becomes active on every gateway of the
/// store when its first runtime key is added, and inactive again when the last is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runtime_key_activates_a_provider_without_its_variable() {
    let mock = MockUpstream::start(provider(Modes::default())).await;
    // No OPENAI_API_KEY: only where the provider is (the mock) and the vault key.
    let env_a = vec![
        ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ("LOOPGATE_VAULT_KEY", VAULT_1.to_string()),
    ];
    // A route and a fallback chain that only the key-activated provider serves: with a
    // vault key the start accepts them (a warning), they serve once the key is added.
    let a = GatewayProc::start(
        "[routes.default]\ntargets = [{ model = \"gpt-4o-mini\" }]\n\n[fallbacks]\n\"gpt-4o\" = [\"openai/gpt-4o-mini\"]\n",
        &env_a,
    );
    let mut env_b = env_a.clone();
    env_b.push(("LOOPGATE_DB", a.db_path().display().to_string()));
    let b = GatewayProc::start("", &env_b);
    let seen = Seen::default();
    assert!(
        a.log_text()
            .contains("routes.default: no target is served by an active provider"),
        "{}",
        a.log_text()
    );

    // Inactive: the documented error, naming both ways to activate it; not listed.
    for g in [&a, &b] {
        let (s, v) = chat(g, &seen).await;
        assert_eq!(s, 404, "{v}");
        assert_eq!(v["error"]["code"], "model_not_found", "{v}");
        let msg = v["error"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains("OPENAI_API_KEY") && msg.contains("POST /v1/providers/openai/keys"),
            "{v}"
        );
        assert!(!model_ids(g).await.iter().any(|m| m == "gpt-4o-mini"));
    }
    assert!(mock.requests().is_empty(), "nothing reached the provider");

    // Add a key on A: both gateways serve with it within a second, and list the models.
    let id = add(&a, &seen, KEY_A, 1, "first").await;
    for g in [&a, &b] {
        let took = within(Duration::from_secs(1), "activation", || async {
            let (s, v) = chat(g, &seen).await;
            s == 200 && content(&v) == "served with alpha"
        })
        .await;
        eprintln!("active in {took:?}");
        assert!(model_ids(g).await.iter().any(|m| m == "gpt-4o-mini"));
        // A `provider/` model works too.
        let r = client()
            .post(g.url("/v1/chat/completions"))
            .header("authorization", auth())
            .json(&chat_body("openai/gpt-4o-mini"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status().as_u16(), 200);
    }
    // The routing rule (model "auto") over it on A.
    let r = client()
        .post(a.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&chat_body("auto"))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.headers()["loopgate-provider"], "openai");
    assert!(
        used(&mock).iter().all(|k| k == KEY_A),
        "only the runtime key signs: {:?}",
        used(&mock)
    );

    // Delete it on A: inactive again on both within a second.
    let (s, v) = call(
        &a,
        &seen,
        "DELETE",
        &format!("/v1/providers/openai/keys/{id}"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    for g in [&a, &b] {
        let took = within(Duration::from_secs(1), "deactivation", || async {
            chat(g, &seen).await.0 == 404
        })
        .await;
        eprintln!("inactive in {took:?}");
        assert!(!model_ids(g).await.iter().any(|m| m == "gpt-4o-mini"));
    }
    let served = used(&mock).len();
    let (s, _) = chat(&b, &seen).await;
    assert_eq!(s, 404);
    assert_eq!(used(&mock).len(), served, "nothing reaches the provider");

    // Azure needs its endpoint variable: a key alone leaves it inactive, with a warning.
    let (s, v) = call(
        &a,
        &seen,
        "POST",
        "/v1/providers/azure/keys",
        Some(json!({"key": KEY_B})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    within(Duration::from_secs(1), "the azure warning", || async {
        a.log_text().contains("stays inactive")
    })
    .await;

    for g in [&a, &b] {
        let log = g.log_text();
        assert!(log.contains("provider active"), "{log}");
        assert!(log.contains("provider inactive"), "{log}");
        for secret in [KEY_A, KEY_B] {
            assert!(!log.contains(secret), "secret in the log");
        }
    }
}

/// A gateway started after the key was added serves the provider too, from its first read
/// of the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_gateway_is_activated_by_the_stored_key() {
    let mock = MockUpstream::start(provider(Modes::default())).await;
    let env_a = vec![
        ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ("LOOPGATE_VAULT_KEY", VAULT_1.to_string()),
    ];
    let a = GatewayProc::start("", &env_a);
    let seen = Seen::default();
    add(&a, &seen, KEY_B, 1, "stored").await;
    let mut env_b = env_a.clone();
    env_b.push(("LOOPGATE_DB", a.db_path().display().to_string()));
    let b = GatewayProc::start("", &env_b);
    within(
        Duration::from_secs(2),
        "activation after a start",
        || async {
            let (s, v) = chat(&b, &seen).await;
            s == 200 && content(&v) == "served with bravo"
        },
    )
    .await;
}
