//! The operator dashboard at `/ui` in a real browser: the real gateway with real traffic
//! (chat requests on a feedback route with `model: "auto"`, feedback, a virtual key), then
//! headless Chromium (Debian's `chromium`, driven by playwright-core from
//! `tests/sdk/setup.sh`) signs in, opens every page, pins and unpins a route, verifies a
//! decision's signature, checks that a read key cannot mutate, and saves screenshots under
//! `target/ui-screenshots/`. Any console error, failed request or key in a URL fails it.
//!
//! Without Chromium or the driver the browser test is skipped with a reason, unless
//! `LOOPGATE_REQUIRE_CHROMIUM` is set (`.ci/run` sets it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use loopgate::auth::keys::hash_key;
use serde_json::{json, Value};

const READ_KEY: &str = "lg-test-ui-read-only-00000000";
const DECISION_KEY: &str = "test-ui-decision-signing-key";
/// How long the browser script may run before it is killed.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(240);

fn config() -> String {
    format!(
        r#"
[[auth.keys]]
id = "ui-reader"
hash = "{read}"
scopes = ["read"]

[routes.default]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "live"
[routes.default.constraints]
max_regression = 0.05
min_confidence = 0.8
min_samples = 5
max_exploration_share = 0.5
[routes.default.exploration]
rate = 0.4

[routes.support]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "shadow"

[routing]
refresh_ms = 60
"#,
        read = hash_key(READ_KEY)
    )
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Chromium and the driver, or why the browser part cannot run.
fn browser() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("LOOPGATE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        return Err(format!(
            "{} not found (apt-get install chromium, or bash .ci/setup --test)",
            chromium.display()
        ));
    }
    let driver = root().join("tests/sdk/node_modules/playwright-core");
    if !driver.exists() {
        return Err("playwright-core not installed (bash tests/sdk/setup.sh)".into());
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("node not found".into());
    }
    Ok((chromium, driver))
}

async fn chat(gw: &GatewayProc, model: &str, i: usize, session: &str, project: &str) -> String {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", auth())
        .header("loopgate-session-id", session)
        .header("loopgate-project-id", project)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": format!("question {i}")}]}))
        .send()
        .await
        .expect("chat");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    r.headers()
        .get("loopgate-request-id")
        .or_else(|| r.headers().get("x-request-id"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// Real traffic: `auto` requests on both feedback routes in two sessions and projects, a
/// few concrete-model calls, one failing call, feedback on each auto answer, a virtual key.
async fn traffic(gw: &GatewayProc) {
    let mut ids = Vec::new();
    for i in 0..24 {
        let (session, project) = if i % 2 == 0 {
            ("sess-ui-a", "alpha")
        } else {
            ("sess-ui-b", "beta")
        };
        let model = if i % 3 == 0 { "auto:support" } else { "auto" };
        ids.push(chat(gw, model, i, session, project).await);
    }
    for i in 0..4 {
        chat(gw, "gpt-4o-mini", 100 + i, "sess-ui-c", "alpha").await;
    }
    for (n, id) in ids.iter().enumerate() {
        let (s, v) = admin(
            gw,
            "POST",
            "/v1/feedback",
            Some(json!({"id": id, "score": if n % 4 == 0 { 0 } else { 1 }})),
        )
        .await;
        assert!(s == 200 || s == 201 || s == 202, "feedback: {s} {v}");
    }
    let (s, v) = admin(
        gw,
        "POST",
        "/v1/keys",
        Some(json!({"name": "ui-test-key", "budgets": [{"period": "month", "usd": 5}]})),
    )
    .await;
    assert!(s == 200 || s == 201, "key: {s} {v}");
    wait_until(
        "the decisions are stored",
        Duration::from_secs(20),
        || async {
            let (s, v) = admin(gw, "GET", "/v1/decisions?limit=100", None).await;
            s == 200 && v["data"].as_array().map_or(0, Vec::len) >= 24
        },
    )
    .await;
    wait_until("the traces are stored", Duration::from_secs(20), || async {
        let (s, v) = admin(gw, "GET", "/v1/analytics", None).await;
        s == 200 && v["totals"]["requests"].as_u64().unwrap_or(0) >= 28
    })
    .await;
}

/// Run the browser script under a hard timeout; its stdout and stderr.
fn run_browser(script: &Path, env: &[(&str, String)]) -> (bool, String) {
    let mut cmd = Command::new("node");
    cmd.arg(script)
        .current_dir(root().join("tests/sdk"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn node");
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let ok = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break false;
            }
        }
    };
    let out = child.wait_with_output().expect("output");
    let text = format!(
        "{}\n--- stderr ---\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (ok, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_in_a_real_browser() {
    let mock = MockUpstream::start(model_fleet()).await;
    let gw = GatewayProc::start(
        &config(),
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", mock.url()),
            ("LOOPGATE_DECISION_KEY", DECISION_KEY.into()),
        ],
    );
    traffic(&gw).await;

    // The assets' own guarantees, without a browser: headers, 304, 404 in the API's shape,
    // and no secret in any of them.
    let c = client();
    let r = c.get(gw.url("/ui")).send().await.expect("ui");
    assert_eq!(r.status(), 200);
    let etag = r.headers()["etag"].to_str().expect("etag").to_string();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let r = c
        .get(gw.url("/ui/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("ui");
    assert_eq!(r.status(), 304);
    let r = c.get(gw.url("/ui/secrets.json")).send().await.expect("ui");
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.expect("json error");
    assert_eq!(v["error"]["code"], "unknown_url", "{v}");
    for asset in [
        "/ui",
        "/ui/app.js",
        "/ui/api.js",
        "/ui/pages.js",
        "/ui/charts.js",
        "/ui/style.css",
    ] {
        let text = c
            .get(gw.url(asset))
            .send()
            .await
            .expect("asset")
            .text()
            .await
            .expect("text");
        for secret in [MASTER_KEY, READ_KEY, DECISION_KEY, "sk-test"] {
            assert!(!text.contains(secret), "{asset} holds a secret");
        }
    }

    let (chromium, _driver) = match browser() {
        Ok(b) => b,
        Err(why) if std::env::var_os("LOOPGATE_REQUIRE_CHROMIUM").is_some() => {
            panic!("LOOPGATE_REQUIRE_CHROMIUM is set but the browser cannot run: {why}")
        }
        Err(why) => {
            eprintln!("skipping the browser part: {why}");
            return;
        }
    };
    let shots = root().join("target/ui-screenshots");
    let _ = std::fs::remove_dir_all(&shots);
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let script = root().join("tests/sdk/test_dashboard.mjs");
    let env = [
        ("LOOPGATE_URL", gw.url("")),
        ("LOOPGATE_ADMIN_KEY", MASTER_KEY.to_string()),
        ("LOOPGATE_READ_KEY", READ_KEY.to_string()),
        ("LOOPGATE_SCREENSHOTS", shots.display().to_string()),
        ("LOOPGATE_CHROMIUM", chromium.display().to_string()),
    ];
    let (ok, out) = tokio::task::spawn_blocking(move || run_browser(&script, &env))
        .await
        .expect("join");
    println!("{out}");
    assert!(
        ok,
        "the browser checks failed:\n{out}\n--- gateway log ---\n{}",
        gw.log_text()
    );

    // What the clicks did, seen through the API: a pin and an unpin in the audit log, no pin
    // left, and the screenshots on disk.
    let (s, audit) = admin(&gw, "GET", "/v1/audit?limit=100", None).await;
    assert_eq!(s, 200, "{audit}");
    let text = audit.to_string();
    assert!(
        text.contains("route.pin") && text.contains("route.unpin"),
        "{text}"
    );
    let (_, table) = admin(&gw, "GET", "/v1/routing", None).await;
    let route = table["routes"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["route"] == "default"))
        .cloned()
        .unwrap_or(Value::Null);
    assert!(route["pinned"].is_null(), "{route}");
    for shot in [
        "overview",
        "decision-verified",
        "routes-pinned",
        "read-routes",
    ] {
        assert!(shots.join(format!("{shot}.png")).exists(), "no {shot}.png");
    }
}
