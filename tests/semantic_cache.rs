//! The semantic cache through the real gateway on loopback, against a mock OpenAI upstream
//! that serves chat completions and `/v1/embeddings` with deterministic vectors derived from
//! the words of the input (content words weigh 1, stop words 0.2, each word hashed to one of
//! 64 dimensions), so a paraphrase lands close and another question far.
//!
//! Covered: a paraphrase is a semantic hit (`loopgate-cache-match` header, trace properties),
//! exact lookups come first, a different question / project / system prompt is a miss, a
//! per-key threshold and opt-out, a failing or stalled embeddings endpoint is a plain miss
//! (200 from upstream, counted in the metric), a stream hit is replayed as SSE, and the
//! official OpenAI Python SDK reads a semantic hit.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use loopgate::auth::keys::hash_key;
use serde_json::{json, Value};

const ALPHA: &str = "lg-test-sem-alpha-00000000000";
const BETA: &str = "lg-test-sem-beta-000000000000";
const STRICT: &str = "lg-test-sem-strict-0000000000";
const OPTOUT: &str = "lg-test-sem-optout-0000000000";

fn keys_toml() -> String {
    let mut t = String::new();
    for (id, key, project) in [
        ("a", ALPHA, "alpha"),
        ("b", BETA, "beta"),
        ("strict", STRICT, "alpha"),
        ("optout", OPTOUT, "alpha"),
    ] {
        t.push_str(&format!(
            "[[auth.keys]]\nid = \"{id}\"\nhash = \"{}\"\nscopes = [\"inference\", \"read\"]\nproject = \"{project}\"\n",
            hash_key(key)
        ));
    }
    t
}

const CONFIG: &str = r#"
[cache]
enabled = true
ttl_secs = 600

[cache.semantic]
enabled = true
model = "text-embedding-3-small"
threshold = 0.9
timeout_ms = 300

[cache.semantic.keys.strict]
threshold = 0.99

[cache.semantic.keys.optout]
enabled = false
"#;

const STOP: &[&str] = &[
    "what", "is", "the", "of", "a", "an", "me", "tell", "please", "how", "do", "i", "to", "can",
    "you", "whats", "s", "in", "about",
];

/// The mock's embedding of `text`: a bag of words over 64 hashed dimensions.
fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0f32; 64];
    for w in text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        // FNV-1a, so the vectors are the same on every run.
        let mut h: u32 = 0x811c_9dc5;
        for b in w.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        v[(h % 64) as usize] += if STOP.contains(&w) { 0.2 } else { 1.0 };
    }
    v
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let n = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (n(a) * n(b))
}

/// What the embeddings endpoint does: 0 answers, 1 fails with a 500, 2 never answers.
struct Mock {
    embeddings: Arc<AtomicU8>,
    upstream: MockUpstream,
}

impl Mock {
    /// Chat calls whose last message is `content`.
    fn chats(&self, content: &str) -> usize {
        self.upstream
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/chat/completions"))
            .filter(|r| {
                r.json()["messages"]
                    .as_array()
                    .and_then(|m| m.last())
                    .and_then(|m| m["content"].as_str())
                    == Some(content)
            })
            .count()
    }
    fn embedding_calls(&self) -> usize {
        self.upstream
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/embeddings"))
            .count()
    }
}

async fn mock() -> Mock {
    let mode = Arc::new(AtomicU8::new(0));
    let n = Arc::new(AtomicU64::new(0));
    let m2 = Arc::clone(&mode);
    let reply = Reply::Dynamic(Arc::new(move |r: &Received| {
        let body = r.json();
        if r.path.ends_with("/embeddings") {
            match m2.load(Ordering::SeqCst) {
                1 => {
                    return Reply::Json(
                        500,
                        vec![],
                        json!({"error": {"message": "embedder down", "type": "server_error", "param": null, "code": null}}).to_string(),
                    )
                }
                2 => return Reply::Stall,
                _ => {}
            }
            let input = body["input"].as_str().unwrap_or("");
            let v = embed(input);
            return Reply::Json(
                200,
                vec![],
                json!({"object": "list", "model": body["model"],
                    "data": [{"object": "embedding", "index": 0, "embedding": v}],
                    "usage": {"prompt_tokens": 5, "total_tokens": 5}})
                .to_string(),
            );
        }
        let call = n.fetch_add(1, Ordering::SeqCst) + 1;
        let model = body["model"].as_str().unwrap_or("m").to_string();
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
            .to_string();
        if body["stream"].as_bool() == Some(true) {
            let usage = body["stream_options"]["include_usage"].as_bool() == Some(true);
            let call_s = format!(" #{call}");
            let parts = openai_stream_parts(&model, &["Sun", "light", &call_s], usage);
            return Reply::Chunks(
                200,
                "text/event-stream".into(),
                parts.into_iter().map(|p| (Duration::ZERO, p)).collect(),
            );
        }
        Reply::Json(
            200,
            vec![],
            chat_json(&model, &format!("answer #{call} to {last}"), 11, 3),
        )
    }));
    Mock {
        embeddings: mode,
        upstream: MockUpstream::start(reply).await,
    }
}

async fn start() -> (Mock, GatewayProc) {
    let m = mock().await;
    let gw = GatewayProc::start(
        &format!("{CONFIG}\n{}", keys_toml()),
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", m.upstream.url()),
        ],
    );
    (m, gw)
}

async fn send(gw: &GatewayProc, key: &str, body: &Value) -> ChatResp {
    send_chat(gw, key, body, &[]).await
}

fn ask(content: &str) -> Value {
    json!({"model": "gpt-4o", "temperature": 0, "messages": [
        {"role": "system", "content": "You answer geography questions briefly."},
        {"role": "user", "content": content}]})
}

/// `loopgate_cache_semantic_total{outcome}` as last scraped.
async fn semantic_metric(gw: &GatewayProc, outcome: &str) -> u64 {
    let m = gw.metrics().await;
    let line = format!("loopgate_cache_semantic_total{{outcome=\"{outcome}\"}} ");
    m.lines()
        .find_map(|l| l.strip_prefix(&line))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Wait until `n` answers have been stored in the semantic cache (inserts run off the
/// request path).
async fn stored(gw: &GatewayProc, n: u64) {
    wait_until(
        &format!("{n} semantic inserts"),
        Duration::from_secs(10),
        || async { semantic_metric(gw, "stored").await >= n },
    )
    .await;
}

/// The trace properties of `request_id`, polled until its row is written.
async fn trace_props(gw: &GatewayProc, request_id: &str) -> HashMap<String, String> {
    let db = gw.db_path();
    let q = |id: &str| -> Option<String> {
        let conn = rusqlite::Connection::open(&db).ok()?;
        conn.query_row(
            "SELECT properties FROM traces WHERE request_id = ?1",
            [id],
            |r| r.get(0),
        )
        .ok()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(p) = q(request_id) {
            let v: Vec<(String, String)> = serde_json::from_str(&p).unwrap_or_default();
            return v.into_iter().collect();
        }
        assert!(
            Instant::now() < deadline,
            "no trace row for {request_id}; log:\n{}",
            gw.log_text()
        );
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const Q: &str = "What is the capital of France?";
const PARAPHRASE: &str = "Tell me the capital of France, please";
const OTHER: &str = "How do I bake sourdough bread?";

#[test]
fn the_mock_embeddings_separate_paraphrases_from_other_questions() {
    let (q, p, o) = (embed(Q), embed(PARAPHRASE), embed(OTHER));
    let close = cosine(&q, &p);
    assert!((0.9..0.99).contains(&close), "{close}");
    assert!(cosine(&q, &o) < 0.5, "{}", cosine(&q, &o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paraphrases_hit_other_questions_projects_and_system_prompts_miss() {
    let (m, gw) = start().await;

    let first = send(&gw, ALPHA, &ask(Q)).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.cache(), Some("miss"));
    assert_eq!(first.matched(), None);
    assert_eq!(first.content(), format!("answer #1 to {Q}"));
    stored(&gw, 1).await;

    // Exact first: the same request is an exact hit, no embeddings call for it.
    let emb_before = m.embedding_calls();
    let exact = send(&gw, ALPHA, &ask(Q)).await;
    assert_eq!(exact.cache(), Some("hit"));
    assert_eq!(exact.matched(), None, "an exact hit is not semantic");
    assert_eq!(m.embedding_calls(), emb_before);

    // A paraphrase: the stored answer, the similarity in the header and in the trace.
    let hit = send(&gw, ALPHA, &ask(PARAPHRASE)).await;
    assert_eq!(hit.status, 200, "{}", hit.text);
    assert_eq!(hit.cache(), Some("hit"), "{:?}", hit.headers);
    let sim = hit.similarity().expect("similarity header");
    let want = cosine(&embed(Q), &embed(PARAPHRASE));
    assert!((sim - want).abs() < 0.01, "header {sim}, vectors {want}");
    assert!((0.9..1.0).contains(&sim), "{sim}");
    assert_eq!(hit.content(), first.content());
    assert_eq!(m.chats(PARAPHRASE), 0, "a hit never calls the upstream");
    let props = trace_props(&gw, &hit.id()).await;
    assert_eq!(props.get("cache").map(String::as_str), Some("hit"));
    assert_eq!(props.get("cache_semantic").map(String::as_str), Some("hit"));
    let traced: f32 = props["cache_similarity"].parse().unwrap();
    assert!((traced - sim).abs() < 1e-3, "{traced} vs {sim}");

    // A different question: a miss, answered by the upstream.
    let other = send(&gw, ALPHA, &ask(OTHER)).await;
    assert_eq!(other.status, 200);
    assert_eq!(other.cache(), Some("miss"));
    assert_eq!(other.matched(), None);
    assert_eq!(m.chats(OTHER), 1);
    let props = trace_props(&gw, &other.id()).await;
    assert_eq!(
        props.get("cache_semantic").map(String::as_str),
        Some("miss")
    );
    let far: f32 = props["cache_similarity"].parse().unwrap();
    assert!(far < 0.9, "{far}");

    // The same question under another project: a miss.
    let beta = send(&gw, BETA, &ask(PARAPHRASE)).await;
    assert_eq!(beta.cache(), Some("miss"));
    assert_eq!(beta.matched(), None);
    assert_eq!(m.chats(PARAPHRASE), 1);

    // Another system prompt: a different task, a miss.
    let mut pirate = ask(PARAPHRASE);
    pirate["messages"][0]["content"] = json!("You are a pirate. Answer in pirate speak.");
    let p = send(&gw, ALPHA, &pirate).await;
    assert_eq!(p.cache(), Some("miss"));
    assert_eq!(p.matched(), None);
    // Tools change the task too.
    let mut tools = ask(PARAPHRASE);
    tools["tools"] = json!([{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]);
    assert_eq!(send(&gw, ALPHA, &tools).await.cache(), Some("miss"));
    // So does another served model.
    let mut mini = ask(PARAPHRASE);
    mini["model"] = json!("gpt-4o-mini");
    assert_eq!(send(&gw, ALPHA, &mini).await.cache(), Some("miss"));
    assert_eq!(m.chats(PARAPHRASE), 4);

    // A key with a stricter threshold (same project): the neighbour is found, not served.
    let strict = send(&gw, STRICT, &ask(PARAPHRASE)).await;
    assert_eq!(strict.cache(), Some("miss"));
    let props = trace_props(&gw, &strict.id()).await;
    assert_eq!(
        props.get("cache_semantic").map(String::as_str),
        Some("miss")
    );
    let near: f32 = props["cache_similarity"].parse().unwrap();
    assert!((near - sim).abs() < 1e-3, "{near} vs {sim}");
    // A key that opts out: the exact cache only.
    let out = send(&gw, OPTOUT, &ask("Capital of France, tell me")).await;
    assert_eq!(out.cache(), Some("miss"));
    let props = trace_props(&gw, &out.id()).await;
    assert_eq!(props.get("cache_semantic"), None);

    assert!(semantic_metric(&gw, "hit").await >= 1);
    assert!(semantic_metric(&gw, "miss").await >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_failures_and_timeouts_are_misses_and_streams_replay() {
    let (m, gw) = start().await;

    // The embeddings endpoint answers 500: the request is served by the upstream, a miss.
    m.embeddings.store(1, Ordering::SeqCst);
    let r = send(&gw, ALPHA, &ask(Q)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.cache(), Some("miss"));
    assert_eq!(r.content(), format!("answer #1 to {Q}"));
    let props = trace_props(&gw, &r.id()).await;
    assert_eq!(
        props.get("cache_semantic").map(String::as_str),
        Some("error")
    );
    assert!(semantic_metric(&gw, "embed_error").await >= 1);

    // It never answers: bounded by timeout_ms (300), still a 200 miss.
    m.embeddings.store(2, Ordering::SeqCst);
    let t0 = Instant::now();
    let r = send(&gw, ALPHA, &ask(PARAPHRASE)).await;
    let took = t0.elapsed();
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.cache(), Some("miss"));
    assert!(took < Duration::from_secs(3), "{took:?}");
    let props = trace_props(&gw, &r.id()).await;
    assert_eq!(
        props.get("cache_semantic").map(String::as_str),
        Some("timeout")
    );
    assert!(semantic_metric(&gw, "embed_timeout").await >= 1);
    // Nothing was stored without an embedding.
    assert_eq!(semantic_metric(&gw, "stored").await, 0);

    // Back up: a stream is stored, and a paraphrase replays it as SSE.
    m.embeddings.store(0, Ordering::SeqCst);
    let stream = |content: &str| {
        let mut b = ask(content);
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
        b
    };
    let s1 = send(&gw, ALPHA, &stream("Which river flows through Paris?")).await;
    assert_eq!(s1.status, 200, "{}", s1.text);
    assert_eq!(s1.cache(), Some("miss"));
    stored(&gw, 1).await;
    let s2 = send(
        &gw,
        ALPHA,
        &stream("Which river flows through Paris, please?"),
    )
    .await;
    assert_eq!(s2.cache(), Some("hit"), "{:?}", s2.headers);
    assert!(
        s2.similarity().is_some_and(|s| s >= 0.9),
        "{:?}",
        s2.matched()
    );
    assert_eq!(
        s2.headers.get("content-type").map(String::as_str),
        Some("text/event-stream")
    );
    let text = |t: &str| -> String {
        sse_events(t)
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|e| {
                e["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(String::from)
            })
            .collect()
    };
    assert_eq!(text(&s2.text), text(&s1.text));
    assert!(text(&s2.text).starts_with("Sunlight #"), "{}", s2.text);
    assert!(s2.text.trim_end().ends_with("data: [DONE]"), "{}", s2.text);
    assert_eq!(m.chats("Which river flows through Paris, please?"), 0);
    // A JSON request does not match a stored stream (the stream flag is in the scope).
    let plain = send(&gw, ALPHA, &ask("Which river flows through Paris, please?")).await;
    assert_eq!(plain.cache(), Some("miss"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_python_sdk_reads_a_semantic_hit() {
    let (m, gw) = start().await;
    let first = send(&gw, ALPHA, &ask("What is the capital of Italy?")).await;
    assert_eq!(first.cache(), Some("miss"));
    stored(&gw, 1).await;

    let script = r#"
import os
from openai import OpenAI
c = OpenAI(base_url=os.environ["LG_BASE"], api_key=os.environ["LG_KEY"], max_retries=0, timeout=20)
r = c.chat.completions.with_raw_response.create(model="gpt-4o", temperature=0, messages=[
    {"role": "system", "content": "You answer geography questions briefly."},
    {"role": "user", "content": "Please tell me the capital of Italy"}])
print(r.headers.get("loopgate-cache"))
print(r.headers.get("loopgate-cache-match"))
print(r.parse().choices[0].message.content)
"#;
    let base = gw.url("/v1");
    let out = run_sdk_python(script, &[("LG_BASE", &base), ("LG_KEY", ALPHA)]).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "python SDK: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"hit"), "{stdout}");
    assert!(
        lines
            .get(1)
            .is_some_and(|l| l.starts_with("semantic; similarity=0.")),
        "{stdout}"
    );
    assert_eq!(lines.get(2).copied(), Some(first.content().as_str()));
    assert_eq!(m.chats("Please tell me the capital of Italy"), 0);
}

#[test]
fn check_names_the_field_of_a_bad_semantic_setting() {
    let dir = tempfile::tempdir().unwrap();
    let run = |sem: &str| {
        let p = dir.path().join("g.toml");
        std::fs::write(
            &p,
            format!("[cache]\nenabled = true\n[cache.semantic]\n{sem}\n"),
        )
        .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_loopgate"));
        for v in provider_env_vars() {
            cmd.env_remove(v);
        }
        let out = cmd
            .args(["check", "-c"])
            .arg(&p)
            .env("LOOPGATE_STATE_DIR", dir.path())
            .env("OPENAI_API_KEY", "sk-test")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    for (sem, needle) in [
        (
            "enabled = true\nmodel = \"no-such-embedder\"",
            "cache.semantic.model: 'no-such-embedder' is served by no active provider",
        ),
        (
            "enabled = true\nmodel = \"gpt-4o\"",
            "cache.semantic.model: 'gpt-4o' is not an embeddings model",
        ),
        ("enabled = true", "cache.semantic.model must name"),
        (
            "model = \"text-embedding-3-small\"\nthreshold = 1.5",
            "cache.semantic.threshold must be in (0, 1]",
        ),
        (
            "model = \"text-embedding-3-small\"\n[cache.semantic.routes.faq]\nthreshold = 0",
            "cache.semantic.routes.faq.threshold",
        ),
        (
            "enabled = true\nmodel = \"text-embedding-3-small\"\ntimeout_ms = 0",
            "cache.semantic.timeout_ms",
        ),
    ] {
        let (code, err) = run(sem);
        assert_eq!(code, Some(1), "{sem}: {err}");
        assert!(err.contains(needle), "{sem}: {err}");
    }
    let (code, err) = run("enabled = true\nmodel = \"text-embedding-3-small\"");
    assert_eq!(code, Some(0), "{err}");
}
