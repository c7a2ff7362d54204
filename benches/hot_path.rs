//! Data-plane hot path, one function at a time (criterion): request parsing and
//! validation, the OpenAI dialect's request build (raw passthrough vs rewrite), whole
//! response translation, per-chunk stream translation, the chunk encoder, model
//! resolution, gateway-key lookup and a virtual key's limit and budget check.
//!
//! `cargo bench --bench hot_path` (about two minutes on 2 cores).

use std::hint::black_box;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use loopgate::auth::keys::hash_key;
use loopgate::config::GatewayConfig;
use loopgate::dialect::openai::{OpenAi, OpenAiStream};
use loopgate::dialect::{ChatRequest, ChunkEncoder, Dialect, StreamTranslator, Target};
use loopgate::proxy::request::parse_chat;
use loopgate::routing::{Ask, Runtime};

const GATEWAY_KEY: &str = "lg-bench-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG";

fn small_body() -> Bytes {
    Bytes::from_static(
        br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about latency."}],"temperature":0.7,"max_completion_tokens":256}"#,
    )
}

/// An agent turn: a system prompt, tool definitions and a long history of tool calls and
/// tool results, about 200 KiB in all.
fn agent_body(stream: bool) -> Bytes {
    let mut messages = vec![
        serde_json::json!({"role": "system", "content": "You are a coding agent. ".repeat(80)}),
    ];
    let file = "fn main() {\n    println!(\"hello\");\n}\n".repeat(40);
    let mut i = 0;
    while serde_json::to_vec(&messages).map(|v| v.len()).unwrap_or(0) < 200 * 1024 {
        messages.push(serde_json::json!({"role": "user", "content": format!("Step {i}: open src/file_{i}.rs and fix the bug.")}));
        messages.push(serde_json::json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": format!("call_{i}"), "type": "function", "function": {"name": "read_file", "arguments": format!("{{\"path\":\"src/file_{i}.rs\"}}")}}
        ]}));
        messages.push(serde_json::json!({"role": "tool", "tool_call_id": format!("call_{i}"), "content": file}));
        i += 1;
    }
    let tools: Vec<_> = ["read_file", "write_file", "run_tests", "search"]
        .iter()
        .map(|n| {
            serde_json::json!({"type": "function", "function": {"name": n, "description": "A tool.",
                "parameters": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}})
        })
        .collect();
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": messages,
        "tools": tools,
        "tool_choice": "auto",
        "stream": stream,
        "temperature": 0.2,
    });
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// A runtime on the repo's `filters/`, with a few providers activated through the
/// environment (as `loopgate serve` would see them).
fn runtime() -> Runtime {
    for (k, v) in [
        ("OPENAI_API_KEY", "sk-bench"),
        ("GROQ_API_KEY", "gsk-bench"),
        ("MISTRAL_API_KEY", "mistral-bench"),
        ("DEEPSEEK_API_KEY", "ds-bench"),
        ("ANTHROPIC_API_KEY", "sk-ant-bench"),
    ] {
        std::env::set_var(k, v);
    }
    let filters = concat!(env!("CARGO_MANIFEST_DIR"), "/filters");
    let toml = format!(
        r#"
[server]
filters_dir = "{filters}"
watch = false
[[auth.keys]]
id = "bench"
hash = "{hash}"
[fallbacks]
"gpt-4o" = ["groq/llama-3.3-70b-versatile", "mistral-large-latest"]
[routes.fast]
strategy = "fallback"
targets = [{{ model = "groq/llama-3.3-70b-versatile" }}, {{ model = "gpt-4o-mini" }}]
"#,
        hash = hash_key(GATEWAY_KEY)
    );
    let cfg = match GatewayConfig::parse(&toml, "bench") {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e}"),
    };
    match Runtime::build(cfg, 1) {
        Ok(rt) => rt,
        Err(e) => panic!("bench runtime: {e}"),
    }
}

fn parse(raw: Bytes) -> ChatRequest {
    match parse_chat(raw, None) {
        Ok(r) => r,
        Err(e) => panic!("bench body does not parse: {e}"),
    }
}

fn bench_parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse_chat");
    let small = small_body();
    g.throughput(Throughput::Bytes(small.len() as u64));
    g.bench_function("small", |b| {
        b.iter(|| parse_chat(black_box(small.clone()), None))
    });
    let agent = agent_body(false);
    g.throughput(Throughput::Bytes(agent.len() as u64));
    g.bench_function("agent_200k", |b| {
        b.iter(|| parse_chat(black_box(agent.clone()), None))
    });
    g.finish();
}

fn bench_build(c: &mut Criterion) {
    let rt = runtime();
    let Some(openai) = rt.provider("openai").cloned() else {
        panic!("openai profile not active")
    };
    let target = |model: &'static str, stream: bool| Target {
        profile: &openai.profile,
        endpoint: &openai.endpoint,
        model,
        stream,
        request_id: "chatcmpl-bench",
        created: 1_700_000_000,
        max_output_tokens: None,
    };
    let mut g = c.benchmark_group("openai_build_chat");
    // Raw passthrough: model matches, no quirk applies, the client's bytes go out as-is.
    let small = parse(small_body());
    g.bench_function("small_passthrough", |b| {
        b.iter(|| OpenAi.build_chat(black_box(&small), &target("gpt-4o-mini", false)))
    });
    // Rewrite: `max_tokens` is renamed for OpenAI, so the body is re-serialised.
    let renamed = parse(Bytes::from_static(
        br#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about latency."}],"temperature":0.7,"max_tokens":256}"#,
    ));
    g.bench_function("small_rewrite", |b| {
        b.iter(|| OpenAi.build_chat(black_box(&renamed), &target("gpt-4o-mini", false)))
    });
    let agent = parse(agent_body(false));
    g.bench_function("agent_200k_passthrough", |b| {
        b.iter(|| OpenAi.build_chat(black_box(&agent), &target("gpt-4o-mini", false)))
    });
    // A stream without `include_usage` is rewritten to ask for usage (to price it).
    let agent_stream = parse(agent_body(true));
    g.bench_function("agent_200k_rewrite_stream_usage", |b| {
        b.iter(|| OpenAi.build_chat(black_box(&agent_stream), &target("gpt-4o-mini", true)))
    });
    g.finish();
}

const COMPLETION: &[u8] = br#"{"id":"chatcmpl-upstream","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Packets cross the wire,\nmicroseconds fall like leaves,\nthe proxy stays still.","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":19,"total_tokens":43,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"system_fingerprint":"fp_bench"}"#;

const DELTA: &[u8] = b"data: {\"id\":\"chatcmpl-upstream\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_bench\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" latency\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n";

/// A recorded-style OpenAI stream: role chunk, `n` content deltas, finish, usage, `[DONE]`.
fn recorded_stream(n: usize) -> Vec<u8> {
    let head = "data: {\"id\":\"chatcmpl-upstream\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_bench\",\"choices\":[{\"index\":0,\"delta\":";
    let mut s = String::new();
    s.push_str(head);
    s.push_str("{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n");
    for i in 0..n {
        s.push_str(head);
        s.push_str(&format!("{{\"content\":\" tok{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"));
    }
    s.push_str(head);
    s.push_str("{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n");
    s.push_str("data: {\"id\":\"chatcmpl-upstream\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_bench\",\"choices\":[],\"usage\":{\"prompt_tokens\":24,\"completion_tokens\":100,\"total_tokens\":124}}\n\n");
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

/// Split points that are deterministic but land anywhere, including inside
/// `data:` prefixes, JSON strings and the blank line between events.
fn split_points(len: usize) -> Vec<usize> {
    let mut v = Vec::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut at = 0;
    while at < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        at += 1 + (x % 300) as usize;
        v.push(at.min(len));
    }
    v
}

fn bench_translate(c: &mut Criterion) {
    let rt = runtime();
    let Some(openai) = rt.provider("openai").cloned() else {
        panic!("openai profile not active")
    };
    let req = parse(small_body());
    let t = Target {
        profile: &openai.profile,
        endpoint: &openai.endpoint,
        model: "gpt-4o-mini",
        stream: false,
        request_id: "chatcmpl-bench",
        created: 1_700_000_000,
        max_output_tokens: None,
    };
    c.bench_function("openai_translate_chat", |b| {
        b.iter(|| OpenAi.translate_chat(black_box(COMPLETION), &t, &req))
    });

    let mut g = c.benchmark_group("openai_stream");
    g.throughput(Throughput::Elements(1));
    // One content delta into a translator that is mid-stream (its first chunk already seen).
    g.bench_function("feed_one_delta", |b| {
        let mut s = OpenAiStream::new("chatcmpl-bench", true, 1_700_000_000);
        let mut out = BytesMut::with_capacity(4096);
        let _ = s.feed(DELTA, &mut out);
        b.iter(|| {
            out.clear();
            let r = s.feed(black_box(DELTA), &mut out);
            black_box(&out);
            r
        })
    });
    let whole = recorded_stream(100);
    let cuts = split_points(whole.len());
    g.throughput(Throughput::Elements(103));
    g.bench_function("whole_stream_100_deltas_split", |b| {
        b.iter_batched_ref(
            || {
                (
                    OpenAiStream::new("chatcmpl-bench", true, 1_700_000_000),
                    BytesMut::with_capacity(64 * 1024),
                )
            },
            |(s, out)| {
                let mut from = 0;
                for &to in &cuts {
                    if s.feed(&whole[from..to], out).is_err() {
                        break;
                    }
                    from = to;
                }
                let _ = s.finish(out);
                black_box(out.len())
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();

    c.bench_function("chunk_encoder_content_delta", |b| {
        let mut e = ChunkEncoder::new("chatcmpl-bench", 1_700_000_000, "claude-sonnet-4-5", true);
        let mut out = BytesMut::with_capacity(4096);
        e.start(0, &mut out);
        b.iter(|| {
            out.clear();
            e.content(0, black_box(" latency"), &mut out);
            black_box(out.len())
        })
    });
}

fn bench_resolve_and_keys(c: &mut Criterion) {
    let rt = runtime();
    let mut g = c.benchmark_group("resolve");
    for (name, model) in [
        ("catalog_model", "gpt-4o-mini"),
        ("provider_prefix", "groq/llama-3.3-70b-versatile"),
        ("with_fallback_chain", "gpt-4o"),
        ("routing_rule", "auto:fast"),
    ] {
        let ask = Ask {
            model,
            ..Ask::default()
        };
        if let Err(e) = rt.resolve(&ask, 0.5) {
            panic!("resolve {model}: {e}");
        }
        g.bench_function(name, |b| b.iter(|| rt.resolve(black_box(&ask), 0.5)));
    }
    g.finish();
    // Per-request costs the proxy pays today outside the dialect (see the benchmark notes).
    let mut g = c.benchmark_group("proxy_overheads");
    g.bench_function("header_names_clone", |b| {
        b.iter(|| black_box(&rt.headers).clone())
    });
    let agent = parse(agent_body(true));
    g.bench_function("agent_200k_body_map_clone", |b| {
        b.iter(|| black_box(&agent.body).clone())
    });
    g.finish();
    let mut g = c.benchmark_group("key_lookup");
    g.bench_function("hit", |b| {
        b.iter(|| rt.keys.lookup(black_box(GATEWAY_KEY)).is_some())
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            rt.keys
                .lookup(black_box("lg-wrong-key-0123456789abcdefghijklmnopqrstuv"))
                .is_some()
        })
    });
    g.finish();
}

/// A virtual key's limit and budget check and its settlement (`auth::limits`): requests and
/// tokens per minute for the key and the model, and a daily budget, never refused here.
fn bench_key_limits(c: &mut Criterion) {
    use loopgate::auth::limits::Limiter;
    use loopgate::auth::virtual_keys::{KeySpec, VirtualKey};
    let spec = serde_json::json!({
        "limits": {"rpm": 1_000_000_000u64, "tpm": 1_000_000_000_000u64,
                   "models": {"gpt-4o-mini": {"rpm": 1_000_000_000u64}}},
        "budgets": [{"period": "day", "usd": 1e12, "soft_pct": 90}]
    });
    let spec = KeySpec::from_object(spec.as_object().cloned().unwrap_or_default())
        .unwrap_or_else(|e| panic!("spec: {e}"));
    let key = std::sync::Arc::new(VirtualKey {
        entry: std::sync::Arc::new(loopgate::auth::keys::KeyEntry {
            id: "vk_bench".into(),
            scopes: spec.scopes.clone(),
            project: None,
            route: None,
            zero_retention: false,
        }),
        expires_ms: None,
        spec,
    });
    let limiter = Limiter::new();
    let mut g = c.benchmark_group("key_limits");
    g.bench_function("admit_and_settle", |b| {
        b.iter(|| {
            let mut slot = None;
            let r = limiter.admit(Some(black_box(&key)), "gpt-4o-mini", 500, &mut slot);
            if let Some(t) = slot.as_mut() {
                t.settle(600, 0.0002);
            }
            r.is_ok()
        })
    });
    g.bench_function("no_limits", |b| {
        b.iter(|| {
            let mut slot = None;
            limiter
                .admit(None, black_box("gpt-4o-mini"), 500, &mut slot)
                .is_ok()
        })
    });
    bench_redis_admit(&mut g, &key);
    g.finish();
}

/// The same check through the Redis backend: one admission round trip to a real
/// `redis-server` on loopback (started here; skipped with a message when it is missing),
/// with the settlement sent off the measured path as in the gateway.
fn bench_redis_admit(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    key: &std::sync::Arc<loopgate::auth::virtual_keys::VirtualKey>,
) {
    const REDIS: &str = "/usr/bin/redis-server";
    if !std::path::Path::new(REDIS).exists() {
        eprintln!("key_limits/redis_admit_and_settle skipped: {REDIS} not found");
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"));
    let mut child = std::process::Command::new(REDIS)
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("redis-server: {e}"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let cfg = loopgate::config::LimitsConfig {
        backend: loopgate::config::LimitsBackend::Redis,
        redis_url: Some(format!("redis://127.0.0.1:{port}/0")),
        timeout_ms: 1000,
        ..Default::default()
    };
    let limiter = loopgate::auth::limits::Limiter::with_config(&cfg)
        .unwrap_or_else(|e| panic!("limiter: {e}"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    g.bench_function("redis_admit_and_settle", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut slot = None;
                let r = limiter
                    .admit_request(
                        &cfg,
                        loopgate::auth::limits::Who {
                            key: Some(black_box(key)),
                            ..Default::default()
                        },
                        "gpt-4o-mini",
                        500,
                        &mut slot,
                    )
                    .await;
                assert!(r.is_ok(), "{r:?}");
                if let Some(t) = slot.as_mut() {
                    t.settle(600, 0.0002);
                }
            })
        })
    });
    let _ = child.kill();
    let _ = child.wait();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_parse, bench_build, bench_translate, bench_resolve_and_keys, bench_key_limits
}
criterion_main!(benches);
