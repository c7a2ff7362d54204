//! End-to-end: the official OpenAI SDKs (Python and Node) drive the real `loopgate`
//! binary in front of mock upstreams of every provider dialect.
//!
//! The SDKs are installed by `bash tests/sdk/setup.sh` (a venv in `target/sdk-venv`,
//! `tests/sdk/node_modules`). Without them these tests fail and say so: never skipped.
//! One test per dialect, so a failure names the dialect; each runs the Python and the
//! Node script (tests/sdk/test_openai_*.{py,mjs}) concurrently against one gateway.

mod common;
#[path = "common/mocks.rs"]
mod mocks;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn python() -> PathBuf {
    Path::new(ROOT).join("target/sdk-venv/bin/python")
}

/// Panics (test failure) with the setup command when an SDK is missing.
fn require_sdks() {
    let hint = "run `bash tests/sdk/setup.sh` to install the official OpenAI SDKs (Python venv in target/sdk-venv, npm package in tests/sdk/node_modules)";
    let py = python();
    assert!(py.exists(), "{} not found: {hint}", py.display());
    let ok = Command::new(&py)
        .args(["-c", "import openai"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the openai Python package is not importable from {}: {hint}",
        py.display()
    );
    let node_pkg = Path::new(ROOT).join("tests/sdk/node_modules/openai/package.json");
    assert!(
        node_pkg.exists(),
        "{} not found: {hint}",
        node_pkg.display()
    );
    let node = Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        node,
        "`node` is not on PATH: install Node.js (>= 18), then {hint}"
    );
}

/// What one SDK run checks.
struct Case<'a> {
    model: &'a str,
    provider: &'a str,
    embed_model: Option<&'a str>,
    listed: Option<&'a str>,
}

fn script_cmd(lang: &str, g: &GatewayProc, c: &Case) -> Command {
    let mut cmd = match lang {
        "python" => {
            let mut c = Command::new(python());
            c.arg(Path::new(ROOT).join("tests/sdk/test_openai_python.py"));
            c
        }
        _ => {
            let mut c = Command::new("node");
            c.arg(Path::new(ROOT).join("tests/sdk/test_openai_node.mjs"));
            c
        }
    };
    cmd.current_dir(Path::new(ROOT).join("tests/sdk"))
        .env("LOOPGATE_BASE_URL", g.url("/v1"))
        .env("LOOPGATE_KEY", MASTER_KEY)
        .env("LG_MODEL", c.model)
        .env("LG_PROVIDER", c.provider)
        // Never let a developer's real settings leak into the SDKs.
        .sdk_isolated()
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.env_remove("LG_EMBED_MODEL")
        .env_remove("LG_LISTED_MODEL");
    if let Some(m) = c.embed_model {
        cmd.env("LG_EMBED_MODEL", m);
    }
    if let Some(m) = c.listed {
        cmd.env("LG_LISTED_MODEL", m);
    }
    cmd
}

/// Run both SDK scripts concurrently (bounded in time); panic with their output on failure.
fn run_sdks(g: &GatewayProc, c: &Case) {
    require_sdks();
    let mut children = Vec::new();
    for lang in ["python", "node"] {
        let child = script_cmd(lang, g, c)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {lang}: {e}"));
        children.push((lang, child));
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut failures = Vec::new();
    for (lang, mut child) in children {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if Instant::now() < deadline => {
                    // The pause between polls of this bounded loop.
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    break;
                }
            }
        }
        let out = child.wait_with_output().expect("collect script output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            print!("{text}");
        } else {
            failures.push(format!(
                "--- {lang} SDK against {} ({}) exited with {}:\n{text}",
                c.model, c.provider, out.status
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n--- gateway log (tail):\n{}",
        failures.join("\n"),
        tail(&g.log_text(), 40)
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------- per dialect

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_openai() {
    let mock = MockUpstream::start(mocks::openai_full()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-test-openai".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    run_sdks(
        &g,
        &Case {
            model: "gpt-4o-mini",
            provider: "openai",
            embed_model: Some("text-embedding-3-small"),
            listed: Some("gpt-4o-mini"),
        },
    );
    // The SDKs' default base64 embeddings reached the upstream as asked.
    assert!(mock
        .requests()
        .iter()
        .any(|r| r.path == "/v1/embeddings" && r.json()["encoding_format"] == "base64"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_anthropic() {
    let mock = MockUpstream::start(mocks::anthropic_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("ANTHROPIC_API_KEY", "sk-ant-test".into()),
            ("ANTHROPIC_BASE_URL", mock.url()),
        ],
    );
    run_sdks(
        &g,
        &Case {
            model: "claude-sonnet-4-5",
            provider: "anthropic",
            embed_model: None,
            listed: Some("claude-sonnet-4-5"),
        },
    );
    assert!(mock.requests().iter().all(|r| r.path == "/v1/messages"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_gemini() {
    let mock = MockUpstream::start(mocks::gemini_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("GEMINI_API_KEY", "gm-test".into()),
            ("GEMINI_BASE_URL", mock.url()),
        ],
    );
    run_sdks(
        &g,
        &Case {
            model: "gemini-2.5-flash",
            provider: "gemini",
            embed_model: Some("gemini-embedding-001"),
            listed: Some("gemini-2.5-flash"),
        },
    );
    assert!(mock
        .requests()
        .iter()
        .any(|r| r.path.contains(":streamGenerateContent?alt=sse")));
}

/// A throwaway service-account key (fresh RSA key from `openssl`) whose token endpoint is `token_uri`.
pub fn service_account_file(dir: &Path, token_uri: &str) -> PathBuf {
    let pem_path = dir.join("sa-key.pem");
    let st = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&pem_path)
        .stderr(Stdio::null())
        .status()
        .expect("openssl is needed to make a throwaway service-account key");
    assert!(st.success(), "openssl genpkey failed");
    let pem = std::fs::read_to_string(&pem_path).unwrap();
    let key = serde_json::json!({
        "type": "service_account", "project_id": "test-proj", "private_key_id": "kid-test",
        "private_key": pem, "client_email": "loopgate-test@test-proj.iam.gserviceaccount.com",
        "client_id": "1234567890", "token_uri": token_uri,
    });
    let path = dir.join("sa.json");
    std::fs::write(&path, key.to_string()).unwrap();
    path
}

/// Vertex env (Gemini and Claude on Vertex) with a loopback token endpoint.
async fn vertex_setup(
    dir: &Path,
    gemini: &MockUpstream,
    claude: &MockUpstream,
    token: &MockUpstream,
) -> Vec<(&'static str, String)> {
    let token_uri = format!("{}/token", token.url());
    let sa = service_account_file(dir, &token_uri);
    vec![
        ("GOOGLE_APPLICATION_CREDENTIALS", sa.display().to_string()),
        ("VERTEX_PROJECT", "test-proj".into()),
        ("VERTEX_TOKEN_URI", token_uri),
        ("VERTEX_BASE_URL", gemini.url()),
        ("VERTEX_ANTHROPIC_BASE_URL", claude.url()),
    ]
}

/// The credential refresher fetches the first token in the background: wait for it to
/// reach the token endpoint. No wait for the token to be stored: a request signed before
/// the fetch finished waits for that fetch (`exchange::sign`).
async fn wait_token(token: &MockUpstream) {
    assert!(
        eventually(|| token.count() > 0, Duration::from_secs(10)).await,
        "no token request reached the token endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_vertex_gemini_and_claude() {
    let gemini = MockUpstream::start(mocks::gemini_like()).await;
    let claude = MockUpstream::start(mocks::anthropic_like()).await;
    let token = MockUpstream::start(mocks::google_token_endpoint()).await;
    let keydir = tempfile::tempdir().unwrap();
    let env = vertex_setup(keydir.path(), &gemini, &claude, &token).await;
    let g = GatewayProc::start("", &env);
    wait_token(&token).await;
    run_sdks(
        &g,
        &Case {
            model: "vertex/gemini-2.5-flash",
            provider: "vertex",
            embed_model: Some("vertex/text-embedding-005"),
            listed: None,
        },
    );
    run_sdks(
        &g,
        &Case {
            model: "vertex-anthropic/claude-sonnet-4-5@20250929",
            provider: "vertex-anthropic",
            embed_model: None,
            listed: None,
        },
    );
    for r in gemini.requests().iter().chain(claude.requests().iter()) {
        assert_eq!(
            r.header("authorization"),
            Some("Bearer ya29.test-access-token"),
            "{}",
            r.path
        );
        assert!(
            r.path.starts_with("/v1/projects/test-proj/locations/"),
            "{}",
            r.path
        );
    }
    assert!(claude
        .requests()
        .iter()
        .all(|r| r.json()["anthropic_version"] == "vertex-2023-10-16"
            && r.json().get("model").is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_bedrock() {
    let mock = MockUpstream::start(mocks::bedrock_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", mock.url()),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE".into()),
            (
                "AWS_SECRET_ACCESS_KEY",
                "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            ),
        ],
    );
    run_sdks(
        &g,
        &Case {
            model: "anthropic.claude-sonnet-4-5-20250929-v1:0",
            provider: "bedrock",
            embed_model: None,
            listed: None,
        },
    );
    let reqs = mock.requests();
    assert!(reqs.iter().any(|r| r.path.ends_with("/converse-stream")));
    for r in &reqs {
        let auth = r.header("authorization").unwrap_or("");
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
                && auth.contains("/us-east-1/bedrock/aws4_request"),
            "{auth}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_cohere() {
    let mock = MockUpstream::start(mocks::cohere_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("CO_API_KEY", "co-test".into()),
            ("COHERE_BASE_URL", mock.url()),
        ],
    );
    run_sdks(
        &g,
        &Case {
            model: "command-a-03-2025",
            provider: "cohere",
            embed_model: Some("embed-english-v3.0"),
            listed: Some("command-a-03-2025"),
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_ollama_native() {
    let mock = MockUpstream::start(mocks::ollama_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("OLLAMA_HOST", mock.url()),
            ("OLLAMA_NATIVE_BASE_URL", mock.url()),
        ],
    );
    run_sdks(
        &g,
        &Case {
            model: "ollama-native/llama3.2",
            provider: "ollama-native",
            embed_model: Some("ollama-native/nomic-embed-text"),
            listed: None,
        },
    );
    assert!(mock.requests().iter().any(|r| r.path == "/api/chat"));
}

// ---------------------------------------------------------------- virtual keys

/// Create a virtual key on `g`; its secret.
async fn virtual_key(g: &GatewayProc, spec: serde_json::Value) -> String {
    let r = client()
        .post(g.url("/v1/keys"))
        .header("authorization", auth())
        .json(&spec)
        .send()
        .await
        .expect("create key");
    assert_eq!(r.status(), 201);
    let v: serde_json::Value = r.json().await.expect("json");
    v["key"].as_str().expect("secret").to_string()
}

/// A virtual key's rate limit and budget as both SDKs see them: the success headers,
/// `RateLimitError` with `rate_limit_exceeded`, `retry-after` and `x-ratelimit-*`, and
/// `insufficient_quota` for a spent budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_virtual_key_limits() {
    require_sdks();
    let mock = MockUpstream::start(mocks::openai_full()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-test-openai".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    let budget = virtual_key(
        &g,
        serde_json::json!({"budgets": [{"period": "total", "usd": 0}]}),
    )
    .await;
    let mut children = Vec::new();
    for (lang, script) in [
        ("python", "test_key_limits.py"),
        ("node", "test_key_limits.mjs"),
    ] {
        let rpm = virtual_key(&g, serde_json::json!({"limits": {"rpm": 1}})).await;
        let mut cmd = match lang {
            "python" => Command::new(python()),
            _ => Command::new("node"),
        };
        let child = cmd
            .arg(Path::new(ROOT).join("tests/sdk").join(script))
            .current_dir(Path::new(ROOT).join("tests/sdk"))
            .env("LOOPGATE_BASE_URL", g.url("/v1"))
            .env("LG_RPM_KEY", rpm)
            .env("LG_BUDGET_KEY", &budget)
            .sdk_isolated()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {lang}: {e}"));
        children.push((lang, child));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut failures = Vec::new();
    for (lang, mut child) in children {
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            // The pause between polls of this bounded loop.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = child.kill();
        let out = child.wait_with_output().expect("collect script output");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            failures.push(format!("--- {lang} exited with {}:\n{text}", out.status));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n--- gateway log (tail):\n{}",
        failures.join("\n"),
        tail(&g.log_text(), 40)
    );
}
