//! The first hour, as a new user meets it: dev mode with an SDK's token, the refusal to
//! run unauthenticated on a public address, a taken port, `auto` without a route, `check`
//! refusing what `serve` refuses, reload naming settings that need a restart, unpriced
//! models and bounded metric labels.

mod common;
#[path = "common/mocks.rs"]
mod mocks;

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn loopgate() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_loopgate"));
    for v in provider_env_vars() {
        c.env_remove(v);
    }
    c.env_remove("LOOPGATE_MASTER_KEY")
        .env_remove("LOOPGATE_KEYS")
        .env_remove("LOOPGATE_LISTEN")
        .env_remove("LOOPGATE_METRICS_LISTEN")
        .env("AWS_EC2_METADATA_DISABLED", "true");
    c
}

/// Run `loopgate serve` expecting it to exit by itself; (exit code, stderr).
fn serve_expect_exit(config: &Path, env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = loopgate();
    cmd.args(["serve", "-c", config.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            return (st.code(), err);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("loopgate serve did not exit on its own");
        }
        std::thread::sleep(Duration::from_millis(30));
    }
}

fn base_config(dir: &Path, listen: &str) -> std::path::PathBuf {
    let p = dir.join("g.toml");
    std::fs::write(
        &p,
        format!(
            "[server]\nlisten = \"{listen}\"\nmetrics_listen = \"127.0.0.1:{}\"\npid_file = \"{}\"\nupgrade_sock = \"{}\"\n[storage]\nbackend = \"none\"\n",
            free_port(),
            dir.join("p.pid").display(),
            dir.join("u.sock").display()
        ),
    )
    .unwrap();
    p
}

fn dev_mode_env(mock: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("LOOPGATE_MASTER_KEY", String::new()),
        ("OPENAI_API_KEY", "sk-upstream-key".into()),
        ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
    ]
}

/// The quickstart's Python snippet, verbatim but for the port.
fn readme_python_snippet() -> String {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let start = readme
        .find("```python\n")
        .expect("README has a python snippet")
        + 10;
    let end = start + readme[start..].find("```").unwrap();
    readme[start..end].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_accepts_any_sdk_token_and_the_readme_snippet_runs() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start(
        "[auth]\nallow_unauthenticated_loopback = true\n",
        &dev_mode_env(&mock),
    );
    let c = client();
    for auth in [
        Some("Bearer unused-on-loopback-dev-mode"),
        Some("Bearer sk-whatever"),
        None,
    ] {
        let mut r = c
            .post(g.url("/v1/chat/completions"))
            .json(&chat_body("gpt-4o-mini"));
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 200, "{auth:?}: {}", r.text().await.unwrap());
    }
    // The provider gets its own key, never the client's token.
    for req in mock.requests() {
        assert_eq!(req.header("authorization"), Some("Bearer sk-upstream-key"));
    }

    // The official OpenAI Python SDK runs the README's snippet.
    let python = Path::new(ROOT).join("target/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `bash tests/sdk/setup.sh`",
        python.display()
    );
    let snippet = readme_python_snippet();
    assert!(snippet.contains("http://127.0.0.1:8080/v1"), "{snippet}");
    let snippet = snippet.replace("http://127.0.0.1:8080", &g.url(""));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", &snippet])
            .env_remove("OPENAI_API_KEY")
            .env_remove("OPENAI_BASE_URL")
            .env("NO_PROXY", "127.0.0.1,localhost")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "README snippet failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Hello!");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_a_wrong_token_gets_a_401_that_says_what_to_do() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-x".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    let r = client()
        .post(g.url("/v1/chat/completions"))
        .header("authorization", "Bearer sk-not-a-gateway-key")
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("loopgate hash-key") && msg.contains("Bearer"),
        "{msg}"
    );
    assert_eq!(mock.count(), 0);
}

#[test]
fn refuses_to_start_unauthenticated_on_a_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path(), &format!("0.0.0.0:{}", free_port()));
    let (code, err) = serve_expect_exit(&cfg, &[]);
    assert_eq!(code, Some(2), "{err}");
    for needle in [
        "0.0.0.0",
        "loopgate hash-key",
        "127.0.0.1",
        "LOOPGATE_MASTER_KEY",
    ] {
        assert!(err.contains(needle), "'{needle}' not in: {err}");
    }
    // `check` says the same.
    let out = loopgate()
        .args(["check", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopgate hash-key"));
}

#[test]
fn serve_on_an_occupied_port_exits_with_a_clear_message() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path(), &addr);
    let (code, err) = serve_expect_exit(&cfg, &[("LOOPGATE_MASTER_KEY", "lg-some-master-key")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(&addr) && err.contains("already in use") && err.contains("LOOPGATE_LISTEN"),
        "{err}"
    );
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_without_a_route_is_a_400_naming_the_config_to_add() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-x".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    for model in ["auto", "auto:cheap"] {
        let r = client()
            .post(g.url("/v1/chat/completions"))
            .header("authorization", auth())
            .json(&chat_body(model))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{model}");
        let v: Value = r.json().await.unwrap();
        let msg = v["error"]["message"].as_str().unwrap();
        let route = if model == "auto" { "default" } else { "cheap" };
        assert!(
            msg.contains(&format!("[routes.{route}]"))
                && msg.contains("baseline")
                && msg.contains("candidates"),
            "{msg}"
        );
        assert_eq!(v["error"]["code"], "route_not_found");
    }
    // The shipped config carries the example the message points to.
    let shipped = std::fs::read_to_string(Path::new(ROOT).join("conf/gateway.toml")).unwrap();
    assert!(shipped.contains("# [routes.default]\n# baseline = "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_provider_key_names_the_variable_to_set() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-x".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    let ask = |model: &'static str, provider: Option<&'static str>| {
        let mut r = client()
            .post(g.url("/v1/chat/completions"))
            .header("authorization", auth())
            .json(&chat_body(model));
        if let Some(p) = provider {
            r = r.header("x-provider", p);
        }
        async move {
            let r = r.send().await.unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (
                status,
                v["error"]["message"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    let (s, m) = ask("command-r-plus", None).await;
    assert_eq!(s, 404);
    assert!(
        m.contains("COHERE_API_KEY") && m.contains("CO_API_KEY"),
        "{m}"
    );
    let (s, m) = ask("hugging-face/meta-llama/Llama-3.1-8B-Instruct", None).await;
    assert_eq!(s, 404);
    assert!(
        m.contains("HUGGING_FACE_API_KEY") && m.contains("HF_TOKEN"),
        "{m}"
    );
    let (s, m) = ask("my-deployment", Some("azure-openai")).await;
    assert_eq!(s, 404);
    assert!(m.contains("AZURE_OPENAI_API_KEY"), "{m}");
    let (s, m) = ask("vertex-ai/gemini-2.5-flash", None).await;
    assert_eq!(s, 404);
    assert!(m.contains("VERTEX_AI_PROJECT_ID"), "{m}");
}

// ------------------------------------------------------------ provider variables

async fn chat_ok(g: &GatewayProc, model: &str, provider: Option<&str>) -> Value {
    let mut r = client()
        .post(g.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&chat_body(model));
    if let Some(p) = provider {
        r = r.header("x-provider", p);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{model}: {text}\n{}", g.log_text());
    serde_json::from_str(&text).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cohere_api_key_activates_cohere() {
    let mock = MockUpstream::start(mocks::cohere_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("COHERE_API_KEY", "co-common-name".into()),
            ("CO_API_KEY", "co-sdk-name".into()),
            ("COHERE_BASE_URL", mock.url()),
        ],
    );
    chat_ok(&g, "command-r-plus", None).await;
    let req = &mock.requests()[0];
    assert_eq!(req.path, "/v2/chat");
    // Both set: the documented precedence, COHERE_API_KEY first.
    assert_eq!(req.header("authorization"), Some("Bearer co-common-name"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_foundry_variables_and_aliases() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("AZURE_FOUNDRY_API_KEY", "az-foundry-key".into()),
            ("AZURE_FOUNDRY_ENDPOINT", format!("{}/models", mock.url())),
        ],
    );
    chat_ok(&g, "azure-ai/my-llama", None).await;
    chat_ok(&g, "my-llama", Some("azure-foundry")).await;
    for req in mock.requests() {
        assert!(
            req.path
                .starts_with("/models/chat/completions?api-version="),
            "{}",
            req.path
        );
        assert_eq!(req.header("api-key"), Some("az-foundry-key"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hugging_face_api_key_activates_hugging_face() {
    let mock = MockUpstream::start(mocks_more_hf()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("HUGGING_FACE_API_KEY", "hf_common".into()),
            ("HF_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    let v = chat_ok(&g, "hugging-face/meta-llama/Llama-3.1-8B-Instruct", None).await;
    assert_eq!(v["choices"][0]["message"]["content"], "Hello!");
    let req = &mock.requests()[0];
    assert_eq!(req.header("authorization"), Some("Bearer hf_common"));
}

/// An OpenAI-shaped chat mock that checks the bearer token (the HF router speaks OpenAI).
fn mocks_more_hf() -> Reply {
    let chat = openai_like();
    Reply::Dynamic(Arc::new(move |r: &Received| {
        if r.header("authorization") != Some("Bearer hf_common") {
            return Reply::Json(
                401,
                vec![],
                json!({"error": "Invalid credentials"}).to_string(),
            );
        }
        chat.clone()
    }))
}

/// Google's token endpoint for an authorized user (refresh-token grant).
fn refresh_token_endpoint() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        let form = String::from_utf8_lossy(&r.body).to_string();
        if r.method == "POST"
            && form.contains("grant_type=refresh_token")
            && form.contains("refresh_token=1%2F%2Frefresh-me")
            && form.contains("client_id=cid.apps.googleusercontent.com")
        {
            return Reply::Json(200, vec![], json!({"access_token": "ya29.user-token", "expires_in": 3599, "token_type": "Bearer"}).to_string());
        }
        Reply::Json(400, vec![], json!({"error": "invalid_grant"}).to_string())
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_ai_project_id_with_an_authorized_user_adc_file() {
    let gemini = MockUpstream::start(mocks::gemini_like()).await;
    let token = MockUpstream::start(refresh_token_endpoint()).await;
    let dir = tempfile::tempdir().unwrap();
    let adc = dir.path().join("adc.json");
    std::fs::write(
        &adc,
        json!({"type": "authorized_user", "client_id": "cid.apps.googleusercontent.com",
            "client_secret": "csecret", "refresh_token": "1//refresh-me",
            "token_uri": format!("{}/token", token.url())})
        .to_string(),
    )
    .unwrap();
    let g = GatewayProc::start(
        "",
        &[
            ("VERTEX_AI_PROJECT_ID", "proj-from-table".into()),
            ("VERTEX_AI_LOCATION", "europe-west4".into()),
            ("GOOGLE_APPLICATION_CREDENTIALS", adc.display().to_string()),
            ("VERTEX_BASE_URL", gemini.url()),
        ],
    );
    chat_ok(&g, "vertex-ai/gemini-2.5-flash", None).await;
    let req = &gemini.requests()[0];
    assert!(
        req.path
            .contains("/projects/proj-from-table/locations/europe-west4/"),
        "{}",
        req.path
    );
    assert_eq!(req.header("authorization"), Some("Bearer ya29.user-token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vertex_with_the_metadata_server() {
    let gemini = MockUpstream::start(mocks::gemini_like()).await;
    let md = MockUpstream::start(Reply::Dynamic(Arc::new(|r: &Received| {
        if r.method == "GET"
            && r.path == "/computeMetadata/v1/instance/service-accounts/default/token"
            && r.header("metadata-flavor") == Some("Google")
        {
            return Reply::Json(200, vec![], json!({"access_token": "ya29.metadata", "expires_in": 3599, "token_type": "Bearer"}).to_string());
        }
        Reply::Json(404, vec![], "{}".into())
    })))
    .await;
    let home = tempfile::tempdir().unwrap();
    let g = GatewayProc::start(
        "",
        &[
            ("VERTEX_AI_PROJECT_ID", "proj-md".into()),
            ("HOME", home.path().display().to_string()),
            (
                "CLOUDSDK_CONFIG",
                home.path().join("gcloud").display().to_string(),
            ),
            ("GCE_METADATA_HOST", md.addr.to_string()),
            ("VERTEX_BASE_URL", gemini.url()),
        ],
    );
    chat_ok(&g, "gemini-2.5-flash", Some("vertex-ai")).await;
    assert_eq!(
        gemini.requests()[0].header("authorization"),
        Some("Bearer ya29.metadata")
    );
}

/// An ECS container-credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`).
fn ecs_endpoint() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        if r.method == "GET"
            && r.path == "/creds"
            && r.header("authorization") == Some("ecs-auth-token")
        {
            return Reply::Json(
                200,
                vec![],
                json!({"AccessKeyId": "ASIAECSTESTKEY", "SecretAccessKey": "ecs-secret",
                    "Token": "ecs-session-token", "Expiration": "2099-01-01T00:00:00Z",
                    "RoleArn": "arn:aws:iam::123456789012:role/test"})
                .to_string(),
            );
        }
        Reply::Json(403, vec![], "{}".into())
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_on_aws_region_with_ecs_container_credentials() {
    let bedrock = MockUpstream::start(mocks::bedrock_like()).await;
    let ecs = MockUpstream::start(ecs_endpoint()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("AWS_REGION", "us-west-2".into()),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("{}/creds", ecs.url()),
            ),
            ("AWS_CONTAINER_AUTHORIZATION_TOKEN", "ecs-auth-token".into()),
            ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock.url()),
        ],
    );
    chat_ok(&g, "anthropic.claude-3-haiku-20240307-v1:0", None).await;
    let req = &bedrock.requests()[0];
    let auth = req.header("authorization").unwrap();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=ASIAECSTESTKEY/")
            && auth.contains("/us-west-2/bedrock/aws4_request"),
        "{auth}"
    );
    assert_eq!(
        req.header("x-amz-security-token"),
        Some("ecs-session-token")
    );
    assert!(ecs.count() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bedrock_with_a_shared_credentials_file_profile() {
    let bedrock = MockUpstream::start(mocks::bedrock_like()).await;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = AKIADEFAULTIGNORED\naws_secret_access_key = nope\n\n[team]\naws_access_key_id = AKIAFROMPROFILE\naws_secret_access_key = file-secret\n",
    )
    .unwrap();
    let g = GatewayProc::start(
        "",
        &[
            ("AWS_PROFILE", "team".into()),
            ("AWS_REGION", "eu-west-1".into()),
            ("AWS_SHARED_CREDENTIALS_FILE", creds.display().to_string()),
            ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock.url()),
        ],
    );
    chat_ok(
        &g,
        "aws-bedrock/anthropic.claude-3-haiku-20240307-v1:0",
        None,
    )
    .await;
    let auth = bedrock.requests()[0]
        .header("authorization")
        .unwrap()
        .to_string();
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIAFROMPROFILE/")
            && auth.contains("/eu-west-1/bedrock/aws4_request"),
        "{auth}"
    );
}

// ------------------------------------------------------------ validation

fn check_with(toml: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.toml");
    std::fs::write(
        &p,
        format!("[auth]\nallow_unauthenticated_loopback = true\n{toml}"),
    )
    .unwrap();
    let mut cmd = loopgate();
    cmd.args(["check", "-c", p.to_str().unwrap()]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_refuses_what_serve_refuses() {
    let cases: &[(&str, &[&str])] = &[
        (
            "[webhook]\nurl = \"http://127.0.0.1:9/hook\"\nsecret_env = \"LG_NO_SUCH_SECRET\"\n",
            &["[webhook]", "LG_NO_SUCH_SECRET"],
        ),
        (
            "[routes.fast]\ntargets = [{ model = \"groq/llama-3.3-70b-versatile\" }]\n",
            &["routes.fast", "GROQ_API_KEY"],
        ),
        (
            "[routes.default]\nbaseline = \"claude-3-5-haiku-latest\"\ncandidates = [\"gpt-4o-mini\"]\n",
            &["routes.default", "baseline", "ANTHROPIC_API_KEY"],
        ),
        (
            "[judge]\nmodel = \"mistral/mistral-large-latest\"\n",
            &["judge.model", "MISTRAL_API_KEY"],
        ),
        (
            "[fallbacks]\n\"gpt-4o\" = [\"deepseek/deepseek-chat\"]\n",
            &["fallbacks", "DEEPSEEK_API_KEY"],
        ),
    ];
    for (toml, needles) in cases {
        let (code, _, err) = check_with(toml, &[("OPENAI_API_KEY", "sk-x")]);
        assert_eq!(code, Some(1), "{toml}: {err}");
        for n in *needles {
            assert!(err.contains(n), "{toml}: '{n}' not in {err}");
        }
    }
    // `serve` refuses the same config with the same message (one validation path).
    let dir = tempfile::tempdir().unwrap();
    let cfg = base_config(dir.path(), &format!("127.0.0.1:{}", free_port()));
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("[routes.fast]\ntargets = [{ model = \"groq/llama-3.3-70b-versatile\" }]\n");
    std::fs::write(&cfg, text).unwrap();
    let (code, err) = serve_expect_exit(&cfg, &[("LOOPGATE_MASTER_KEY", "lg-k")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("routes.fast") && err.contains("GROQ_API_KEY"),
        "{err}"
    );
}

#[test]
fn check_lists_unpriced_and_partly_served_models() {
    let (code, out, err) = check_with(
        "[routes.mix]\ntargets = [{ model = \"openai/my-finetune-xyz\" }, { model = \"gpt-4o-mini\" }, { model = \"groq/llama-3.1-8b-instant\" }]\n",
        &[("OPENAI_API_KEY", "sk-x")],
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("warning: model 'openai/my-finetune-xyz' has no catalog price"),
        "{out}"
    );
    assert!(
        !out.contains("'openai/gpt-4o-mini' has no catalog price"),
        "{out}"
    );
    assert!(
        out.contains("routes.mix: skipped targets") && out.contains("GROQ_API_KEY"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_reports_settings_that_need_a_restart() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-x".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    g.rewrite_config("[routing]\nsticky_ttl_secs = 60\nrecent_capacity = 10\n");
    let mut text = String::new();
    for _ in 0..300 {
        text = g.metrics().await;
        if text.contains("loopgate_config_restart_pending 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        text.contains("loopgate_config_restart_pending 2"),
        "{}",
        g.log_text()
    );
    let log = g.log_text();
    assert!(
        log.contains("routing.sticky_ttl_secs, routing.recent_capacity") && log.contains("restart"),
        "{log}"
    );
}

// ------------------------------------------------------------ costs and metrics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpriced_models_are_traced_as_cost_unknown_and_counted() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-x".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    chat_ok(&g, "openai/ft:my-private-model", None).await;
    chat_ok(&g, "gpt-4o-mini", None).await;
    let c = client();
    let mut logs = Value::Null;
    for _ in 0..200 {
        logs = c
            .get(g.url("/v1/logs"))
            .header("authorization", auth())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if logs["data"].as_array().is_some_and(|a| a.len() == 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let rows = logs["data"].as_array().expect("logs");
    assert_eq!(rows.len(), 2, "{logs}");
    for r in rows {
        let unpriced = r["requested_model"] == "openai/ft:my-private-model";
        assert_eq!(r["cost_unknown"], json!(unpriced), "{r}");
        if !unpriced {
            assert!(r["cost_usd"].as_f64().unwrap() > 0.0, "{r}");
        }
    }
    let m = g.metrics().await;
    assert!(
        m.contains("loopgate_unpriced_requests_total{model=\"other\",provider=\"openai\"} 1"),
        "{m}"
    );
}

fn series(metrics: &str) -> usize {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#') && l.contains("model=\""))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_model_names_cannot_grow_the_metric_series() {
    let mock = MockUpstream::start(Reply::Dynamic(Arc::new(|r: &Received| {
        let model = r.json()["model"].as_str().unwrap_or("").to_string();
        if model.contains("boom") {
            return Reply::Json(
                500,
                vec![],
                json!({"error": {"message": "upstream broke", "type": "server_error"}}).to_string(),
            );
        }
        Reply::Json(200, vec![], chat_json(&model, "Hello!", 11, 3))
    })))
    .await;
    let g = GatewayProc::start(
        "",
        &[
            ("OPENAI_API_KEY", "sk-x".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    let c = client();
    let send = |model: String| {
        let c = c.clone();
        let url = g.url("/v1/chat/completions");
        async move {
            c.post(url)
                .header("authorization", auth())
                .json(&chat_body(&model))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    let settle = || async {
        // The logging phase runs right after the response: wait until it counted everything.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for i in 0..3 {
        assert_eq!(send(format!("openai/warmup-{i}")).await, 200);
    }
    assert_ne!(send("openai/boom-0".into()).await, 200);
    settle().await;
    let mut before = 0;
    for _ in 0..100 {
        let m = g.metrics().await;
        if m.contains("loopgate_requests_total{endpoint=\"chat.completions\",model=\"other\",provider=\"openai\",status=\"200\"} 3") {
            before = series(&m);
            break;
        }
        settle().await;
    }
    assert!(before > 0, "metrics never showed the warm-up requests");
    for i in 0..40 {
        let name = format!("openai/rnd-{i}-{:x}", rand_u64());
        assert_eq!(send(name).await, 200);
        assert_ne!(send(format!("openai/boom-{i}")).await, 200);
    }
    let mut after_text = String::new();
    for _ in 0..100 {
        after_text = g.metrics().await;
        if after_text.contains("status=\"200\"} 43") {
            break;
        }
        settle().await;
    }
    assert!(after_text.contains("status=\"200\"} 43"), "{after_text}");
    assert_eq!(series(&after_text), before, "series grew:\n{after_text}");
    assert!(!after_text.contains("rnd-") && !after_text.contains("boom"));
    // Failed requests count against the provider that was tried, not `none`.
    let failed: Vec<&str> = after_text
        .lines()
        .filter(|l| l.starts_with("loopgate_requests_total{") && !l.contains("status=\"200\""))
        .collect();
    assert!(!failed.is_empty());
    for l in failed {
        assert!(l.contains("provider=\"openai\""), "{l}");
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(Instant::now().elapsed().as_nanos() as u64);
    h.finish()
}
