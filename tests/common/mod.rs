//! Test harness: scriptable mock upstreams speaking raw HTTP/1.1 on loopback (so faults
//! such as resets, stalls and truncated lines are real), and the real `loopgate` binary
//! started as a child process.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// What the mock does with a request.
#[derive(Clone)]
pub enum Reply {
    /// Status, extra headers, body.
    Json(u16, Vec<(String, String)>, String),
    /// Chunked response: each part written after its delay.
    Chunks(u16, String, Vec<(Duration, Vec<u8>)>),
    /// Write these body bytes (chunked) then drop the connection without the last chunk.
    Reset(String, Vec<Vec<u8>>),
    /// Never answer.
    Stall,
    /// Close the connection right away without answering.
    Close,
    /// Choose per request.
    Dynamic(Arc<dyn Fn(&Received) -> Reply + Send + Sync>),
}

pub struct MockUpstream {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Connections the gateway closed while the mock was still writing or waiting.
    pub closed_early: Arc<Mutex<u32>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.handle.abort();
    }
}

impl MockUpstream {
    pub async fn start(reply: Reply) -> MockUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let closed_early = Arc::new(Mutex::new(0));
        let (r2, c2) = (received.clone(), closed_early.clone());
        let handle = tokio::spawn(async move {
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    return;
                };
                let (r3, c3, reply) = (r2.clone(), c2.clone(), reply.clone());
                tokio::spawn(async move {
                    let _ = serve_conn(sock, reply, r3, c3).await;
                });
            }
        });
        MockUpstream {
            addr,
            received,
            closed_early,
            handle,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }
}

async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let mut lines = head.split("\r\n");
            let first = lines.next()?;
            let mut parts = first.split(' ');
            let method = parts.next()?.to_string();
            let path = parts.next()?.to_string();
            let mut headers = HashMap::new();
            for l in lines {
                if let Some((k, v)) = l.split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let len: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                let mut tmp = vec![0u8; 64 * 1024];
                let n = sock.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            return Some(Received {
                method,
                path,
                headers,
                body,
            });
        }
        let mut tmp = vec![0u8; 64 * 1024];
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        529 => "Overloaded",
        _ => "Status",
    }
}

async fn serve_conn(
    mut sock: TcpStream,
    reply: Reply,
    rec: Arc<Mutex<Vec<Received>>>,
    closed: Arc<Mutex<u32>>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let Some(req) = read_request(&mut sock, &mut buf).await else {
            return Ok(());
        };
        rec.lock().unwrap().push(req.clone());
        let mut r = reply.clone();
        while let Reply::Dynamic(f) = r {
            r = f(&req);
        }
        match r {
            Reply::Json(status, headers, body) => {
                let mut head = format!("HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n", reason(status), body.len());
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                sock.write_all(head.as_bytes()).await?;
                sock.write_all(body.as_bytes()).await?;
            }
            Reply::Chunks(status, ctype, parts) => {
                let head = format!("HTTP/1.1 {status} {}\r\ncontent-type: {ctype}\r\ntransfer-encoding: chunked\r\n\r\n", reason(status));
                sock.write_all(head.as_bytes()).await?;
                for (delay, part) in parts {
                    if !delay.is_zero() {
                        // The scripted delay of this mock chunk: the point of the script.
                        tokio::time::sleep(delay).await;
                    }
                    let frame = [
                        format!("{:x}\r\n", part.len()).into_bytes(),
                        part,
                        b"\r\n".to_vec(),
                    ]
                    .concat();
                    if sock.write_all(&frame).await.is_err() {
                        *closed.lock().unwrap() += 1;
                        return Ok(());
                    }
                }
                sock.write_all(b"0\r\n\r\n").await?;
            }
            Reply::Reset(ctype, parts) => {
                let head = format!("HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ntransfer-encoding: chunked\r\n\r\n");
                sock.write_all(head.as_bytes()).await?;
                for part in parts {
                    let frame = [
                        format!("{:x}\r\n", part.len()).into_bytes(),
                        part,
                        b"\r\n".to_vec(),
                    ]
                    .concat();
                    sock.write_all(&frame).await?;
                }
                #[allow(deprecated)]
                sock.set_linger(Some(Duration::from_secs(0)))?;
                return Ok(());
            }
            Reply::Stall => {
                // Hold the connection until the peer goes away.
                let mut tmp = [0u8; 1024];
                loop {
                    match sock.read(&mut tmp).await {
                        Ok(0) | Err(_) => {
                            *closed.lock().unwrap() += 1;
                            return Ok(());
                        }
                        Ok(_) => {}
                    }
                }
            }
            Reply::Close => return Ok(()),
            Reply::Dynamic(_) => unreachable!(),
        }
    }
}

// ---------- OpenAI-shaped payloads ----------

pub fn chat_json(model: &str, content: &str, prompt: u64, completion: u64) -> String {
    serde_json::json!({
        "id": "chatcmpl-upstream", "object": "chat.completion", "created": 1700000000u64, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "logprobs": null, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        "system_fingerprint": "fp_test"
    })
    .to_string()
}

pub fn sse(v: serde_json::Value) -> Vec<u8> {
    format!("data: {v}\n\n").into_bytes()
}

/// A faithful OpenAI stream: role chunk, content pieces, finish chunk, usage chunk (if
/// the request asked for it, as OpenAI does), `[DONE]`.
pub fn openai_stream_parts(model: &str, pieces: &[&str], with_usage: bool) -> Vec<Vec<u8>> {
    let chunk = |delta: serde_json::Value, finish: serde_json::Value| {
        let mut c = serde_json::json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000u64, "model": model,
            "system_fingerprint": "fp_test", "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]});
        if with_usage {
            c["usage"] = serde_json::Value::Null;
        }
        sse(c)
    };
    let mut parts = vec![chunk(
        serde_json::json!({"role": "assistant", "content": ""}),
        serde_json::Value::Null,
    )];
    for p in pieces {
        parts.push(chunk(
            serde_json::json!({"content": p}),
            serde_json::Value::Null,
        ));
    }
    parts.push(chunk(serde_json::json!({}), serde_json::json!("stop")));
    if with_usage {
        parts.push(sse(serde_json::json!({"id": "chatcmpl-up", "object": "chat.completion.chunk", "created": 1700000000u64, "model": model,
            "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": pieces.len(), "total_tokens": 11 + pieces.len()}})));
    }
    parts.push(b"data: [DONE]\n\n".to_vec());
    parts
}

/// A mock that behaves like OpenAI's chat endpoint for JSON and streams.
pub fn openai_like() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        let body = r.json();
        let model = body["model"].as_str().unwrap_or("m").to_string();
        if body["stream"].as_bool() == Some(true) {
            let usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
            let parts = openai_stream_parts(&model, &["Hel", "lo", "!"], usage);
            Reply::Chunks(
                200,
                "text/event-stream".into(),
                parts.into_iter().map(|p| (Duration::ZERO, p)).collect(),
            )
        } else {
            Reply::Json(200, vec![], chat_json(&model, "Hello!", 11, 3))
        }
    }))
}

/// A fleet of models behind one OpenAI-style mock: each answers with its own name in the
/// content (feedback-routing and rollout tests).
pub fn model_fleet() -> Reply {
    Reply::Dynamic(Arc::new(|r: &Received| {
        let body = r.json();
        let model = body["model"].as_str().unwrap_or("m").to_string();
        Reply::Json(
            200,
            vec![],
            chat_json(&model, &format!("answer from {model}"), 400, 200),
        )
    }))
}

/// The `authorization` header of the test master key (every scope).
pub fn auth() -> String {
    format!("Bearer {MASTER_KEY}")
}

/// One admin API call with the master key: status and JSON body (`null` when not JSON).
pub async fn admin(
    gw: &GatewayProc,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut r = client()
        .request(m, gw.url(path))
        .header("authorization", auth());
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.expect("send");
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(serde_json::Value::Null))
}

// ---------- the gateway process ----------

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct GatewayProc {
    pub child: Child,
    pub port: u16,
    pub metrics_port: u16,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub config: PathBuf,
}

impl Drop for GatewayProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub const MASTER_KEY: &str = "lg-test-master-key-0123456789";

/// Provider env vars of the whole profile set, cleared so the test decides what is active.
pub fn provider_env_vars() -> Vec<String> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/filters")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            for key in ["api_key_env", "activate_env", "base_url_env"] {
                if let Some(rest) = line.trim().strip_prefix(key) {
                    // `"X"` or `["X", "Y"]`: every quoted name.
                    v.extend(rest.split('"').skip(1).step_by(2).map(str::to_string));
                }
            }
        }
    }
    v.sort();
    v.dedup();
    v
}

impl GatewayProc {
    /// Start `loopgate serve` with `extra_toml` appended to a base config and `env` set.
    pub fn start(extra_toml: &str, env: &[(&str, String)]) -> GatewayProc {
        Self::start_with_server("", extra_toml, env)
    }

    /// As `start`, with extra lines inside the `[server]` table.
    pub fn start_with_server(
        server_extra: &str,
        extra_toml: &str,
        env: &[(&str, String)],
    ) -> GatewayProc {
        Self::start_full(server_extra, "", extra_toml, env)
    }

    /// As `start`, with extra lines inside the `[server]` and `[storage]` tables.
    pub fn start_full(
        server_extra: &str,
        storage_extra: &str,
        extra_toml: &str,
        env: &[(&str, String)],
    ) -> GatewayProc {
        let dir = tempfile::tempdir().unwrap();
        // Port 0: the gateway picks and holds its ports and names them in its log.
        let (port, metrics_port) = (0, 0);
        let config = dir.path().join("gateway.toml");
        let filters = concat!(env!("CARGO_MANIFEST_DIR"), "/filters");
        let db = dir.path().join("traces.db");
        let base = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nmetrics_listen = \"127.0.0.1:{metrics_port}\"\nthreads = 2\nfilters_dir = \"{filters}\"\nconnect_timeout_ms = 5000\npid_file = \"{pid}\"\nupgrade_sock = \"{sock}\"\n{extra_server}\n[storage]\nsqlite_path = \"{db}\"\nspill_path = \"{spill}\"\nflush_interval_ms = 20\n{storage_extra}\n",
            pid = dir.path().join("lg.pid").display(),
            sock = dir.path().join("lg.sock").display(),
            db = db.display(),
            spill = dir.path().join("spill.jsonl").display(),
            extra_server = server_extra,
        );
        std::fs::write(&config, format!("{base}\n#EXTRA\n{extra_toml}\n")).unwrap();
        Self::spawn(dir, config, port, metrics_port, env)
    }

    pub fn spawn(
        dir: tempfile::TempDir,
        config: PathBuf,
        port: u16,
        metrics_port: u16,
        env: &[(&str, String)],
    ) -> GatewayProc {
        let log = dir.path().join("gateway.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopgate"));
        cmd.arg("serve").arg("-c").arg(&config);
        for v in provider_env_vars() {
            cmd.env_remove(v);
        }
        cmd.env_remove("LOOPGATE_LISTEN")
            .env_remove("LOOPGATE_METRICS_LISTEN")
            .env_remove("LOOPGATE_DB");
        cmd.env("LOOPGATE_MASTER_KEY", MASTER_KEY);
        cmd.env("LOOPGATE_LOG", "info");
        // The AWS chain must never reach a real metadata service or the developer's ~/.aws.
        cmd.env("AWS_EC2_METADATA_DISABLED", "true")
            .env(
                "AWS_SHARED_CREDENTIALS_FILE",
                dir.path().join("no-aws-credentials"),
            )
            .env("AWS_CONFIG_FILE", dir.path().join("no-aws-config"))
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("GOOGLE_CLOUD_PROJECT")
            .env_remove("VERTEX_AI_LOCATION")
            .env_remove("VERTEX_LOCATION")
            .env_remove("AZURE_FOUNDRY_ENDPOINT")
            .env_remove("AZURE_AI_ENDPOINT");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::from(logf.try_clone().unwrap()))
            .stderr(Stdio::from(logf));
        let child = cmd.spawn().expect("spawn loopgate");
        let mut g = GatewayProc {
            child,
            port,
            metrics_port,
            dir,
            log,
            config,
        };
        g.wait_ready();
        g
    }

    /// The ports a gateway started on port 0 picked: from its "starting loopgate" log line.
    fn ports_from_log(&self) -> Option<(u16, u16)> {
        let text = self.log_text();
        let line = text.lines().find(|l| l.contains("starting loopgate"))?;
        let port_of = |key: &str| -> Option<u16> {
            let at = line.split_whitespace().find_map(|w| w.strip_prefix(key))?;
            at.trim_matches('"').rsplit(':').next()?.parse().ok()
        };
        Some((port_of("listen=")?, port_of("metrics=")?))
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.port == 0 && Instant::now() < deadline {
            if let Some((port, metrics_port)) = self.ports_from_log() {
                (self.port, self.metrics_port) = (port, metrics_port);
                break;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("gateway exited ({status}); log:\n{}", self.log_text());
            }
            // The pause between polls of this bounded loop.
            std::thread::sleep(Duration::from_millis(20));
        }
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).is_ok()
            {
                return;
            }
            // The pause between polls of this bounded loop.
            std::thread::sleep(Duration::from_millis(30));
        }
        panic!("gateway did not start; log:\n{}", self.log_text());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("traces.db")
    }

    pub fn rewrite_config(&self, extra_toml: &str) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let base = text.split("\n#EXTRA\n").next().unwrap().to_string();
        let mut f = std::fs::File::create(&self.config).unwrap();
        write!(f, "{base}\n#EXTRA\n{extra_toml}\n").unwrap();
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The SDK virtualenv's Python (`bash tests/sdk/setup.sh` makes it); fails with the setup
/// command when it is missing.
pub fn sdk_python() -> PathBuf {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python");
    assert!(
        py.exists(),
        "run `bash tests/sdk/setup.sh` to install the official OpenAI SDKs"
    );
    py
}

/// Keep a developer's real provider settings and proxies away from an SDK child process:
/// it must talk to the loopback gateway and nothing else.
pub trait SdkIsolated {
    fn sdk_isolated(&mut self) -> &mut Self;
}

impl SdkIsolated for Command {
    fn sdk_isolated(&mut self) -> &mut Command {
        for var in [
            "OPENAI_API_KEY",
            "OPENAI_BASE_URL",
            "OPENAI_ORG_ID",
            "OPENAI_PROJECT_ID",
            "ANTHROPIC_API_KEY",
            "ANTHROPIC_AUTH_TOKEN",
            "ANTHROPIC_BASE_URL",
            "HTTP_PROXY",
            "HTTPS_PROXY",
            "http_proxy",
            "https_proxy",
        ] {
            self.env_remove(var);
        }
        self.env("NO_PROXY", "127.0.0.1,localhost")
    }
}

/// Run a Python script with the SDK virtualenv, isolated from the host's settings, with `env`
/// set; waits at most 60 s (a hung SDK fails the test) and returns its output.
pub async fn run_sdk_python(script: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(sdk_python());
    cmd.arg("-c").arg(script);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .sdk_isolated()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("python SDK run timed out");
        }
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.wait_with_output().expect("output")
}

/// A chat completion answer as the cache tests read it: status, headers, body, time taken.
pub struct ChatResp {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub text: String,
    pub took: Duration,
}

impl ChatResp {
    /// The `loopgate-cache` header (`hit`, `miss`, ...).
    pub fn cache(&self) -> Option<&str> {
        self.headers.get("loopgate-cache").map(String::as_str)
    }
    /// The `loopgate-cache-match` header.
    pub fn matched(&self) -> Option<&str> {
        self.headers.get("loopgate-cache-match").map(String::as_str)
    }
    /// The similarity the `loopgate-cache-match` header reports.
    pub fn similarity(&self) -> Option<f32> {
        self.matched()?
            .strip_prefix("semantic; similarity=")?
            .parse()
            .ok()
    }
    pub fn id(&self) -> String {
        self.headers
            .get("loopgate-request-id")
            .cloned()
            .unwrap_or_default()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or(serde_json::Value::Null)
    }
    /// The first choice's message content.
    pub fn content(&self) -> String {
        self.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

/// `POST /v1/chat/completions` with `key` and extra headers; the whole answer read.
pub async fn send_chat(
    gw: &GatewayProc,
    key: &str,
    body: &serde_json::Value,
    headers: &[(&str, &str)],
) -> ChatResp {
    let t0 = Instant::now();
    let mut r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .json(body);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let text = resp.text().await.unwrap_or_default();
    ChatResp {
        status,
        headers,
        text,
        took: t0.elapsed(),
    }
}

/// How many requests the mock received whose first message is `content`.
pub fn upstream_calls(mock: &MockUpstream, content: &str) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.json()["messages"][0]["content"].as_str() == Some(content))
        .count()
}

pub fn chat_body(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "Say hello"}]})
}

/// Parse an SSE body into its `data:` payloads.
pub fn sse_events(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|e| {
            e.lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_string)
        })
        .collect()
}

/// Wait until `f` holds or time runs out (bounded polling for async effects).
pub async fn eventually<F: FnMut() -> bool>(mut f: F, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

/// How often [`wait_until`] re-checks its condition.
pub const POLL_EVERY: Duration = Duration::from_millis(20);

/// Poll the async condition `f` every [`POLL_EVERY`] until it holds; panic naming `what`
/// if it still does not hold after `within`. Use it instead of a fixed sleep before an
/// assertion on something the gateway does in the background (a trace flushed, a reload
/// applied, a metric updated): it returns as soon as the condition holds, and a slow
/// machine only makes it wait longer, never fail.
pub async fn wait_until<F, Fut>(what: &str, within: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {within:?} waiting until {what}");
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Count trace rows in the gateway's SQLite file.
pub fn trace_rows(db: &std::path::Path, where_clause: &str) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row(
        &format!("SELECT COUNT(*) FROM traces {where_clause}"),
        [],
        |r| r.get(0),
    )
    .unwrap_or(-1)
}
