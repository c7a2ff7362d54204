//! Criterion benchmarks for the native (non-OpenAI) dialects: request build and
//! per-chunk stream translation.
//!
//! Each dialect is one [`Case`] in [`cases`]; to add a dialect, write a function that
//! returns its `Case` (profile TOML, model, a realistic native stream split into the
//! chunks a provider would send) and list it in `cases()`. Everything else is shared.
//!
//! Run: `cargo bench --bench dialects_native` (filter: `-- anthropic`).

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{json, Value};

use loopgate::dialect::{dialect_for, ChatRequest, Target};
use loopgate::providers::{Endpoint, ProviderProfile};

/// One dialect under test.
struct Case {
    /// Benchmark group name (and the dialect name).
    name: &'static str,
    profile: &'static str,
    model: &'static str,
    /// The native stream as the network would deliver it: one entry per chunk.
    chunks: Vec<Vec<u8>>,
}

/// A typical agent request: system prompt, a few turns, an image, two tools.
fn chat_body(stream: bool) -> Value {
    let long = "Explain the trade-offs of consistent hashing in distributed caches. ".repeat(40);
    json!({
        "model": "bench",
        "stream": stream,
        "stream_options": {"include_usage": true},
        "max_tokens": 1024,
        "temperature": 0.3,
        "messages": [
            {"role": "system", "content": "You are a careful senior engineer."},
            {"role": "user", "content": [
                {"type": "text", "text": long},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="}}]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{\"q\":\"consistent hashing\"}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "Karger et al. 1997 ..."},
            {"role": "user", "content": "Now summarise in five bullet points."}
        ],
        "tools": [
            {"type": "function", "function": {"name": "search", "description": "Web search",
                "parameters": {"type": "object", "additionalProperties": false,
                    "properties": {"q": {"type": "string"}, "k": {"type": ["integer", "null"]}}, "required": ["q"]}}},
            {"type": "function", "function": {"name": "fetch", "description": "Fetch a URL",
                "parameters": {"type": "object", "properties": {"url": {"type": "string"}}, "required": ["url"]}}}
        ],
        "tool_choice": "auto"
    })
}

fn request(body: Value) -> ChatRequest {
    let raw = Bytes::from(serde_json::to_vec(&body).unwrap());
    let map = body.as_object().unwrap().clone();
    ChatRequest {
        raw,
        model: "bench".into(),
        stream: map.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: true,
        body: map,
    }
}

/// Split a stream into realistic network chunks: each event, with every third one cut
/// in the middle (providers' chunks do not follow event boundaries).
fn netsplit(events: &[String]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(events.len() * 2);
    for (i, e) in events.iter().enumerate() {
        let b = e.as_bytes();
        if i % 3 == 2 && b.len() > 8 {
            out.push(b[..b.len() / 2].to_vec());
            out.push(b[b.len() / 2..].to_vec());
        } else {
            out.push(b.to_vec());
        }
    }
    out
}

fn anthropic() -> Case {
    let mut ev = vec![
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_01\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":1200,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":800,\"output_tokens\":1}}}\n\n".to_string(),
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".to_string(),
    ];
    for i in 0..200 {
        ev.push(format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"token {i} of the answer \"}}}}\n\n"));
    }
    ev.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n".into(),
    );
    ev.push("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"search\",\"input\":{}}}\n\n".into());
    for frag in ["{\\\"q\\\":", " \\\"consistent", " hashing\\\"}"] {
        ev.push(format!("event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":\"{frag}\"}}}}\n\n"));
    }
    ev.push(
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n".into(),
    );
    ev.push("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":412}}\n\n".into());
    ev.push("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n".into());
    Case {
        name: "anthropic",
        profile: "name = \"anthropic\"\ndialect = \"anthropic\"\nbase_url = \"https://api.anthropic.com\"\nchat_path = \"/v1/messages\"\napi_key_env = \"ANTHROPIC_API_KEY\"\nauth = \"header\"\nauth_header = \"x-api-key\"\n",
        model: "claude-sonnet-4-5",
        chunks: netsplit(&ev),
    }
}

fn gemini() -> Case {
    let mut ev = Vec::new();
    for i in 0..100 {
        ev.push(format!("data: {{\"candidates\": [{{\"content\": {{\"parts\": [{{\"text\": \"token {i} of the answer, a little longer \"}}],\"role\": \"model\"}},\"index\": 0}}],\"usageMetadata\": {{\"promptTokenCount\": 1200,\"candidatesTokenCount\": {i},\"totalTokenCount\": {}}},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}}\r\n\r\n", 1200 + i));
    }
    ev.push("data: {\"candidates\": [{\"content\": {\"parts\": [{\"functionCall\": {\"name\": \"search\",\"args\": {\"q\": \"consistent hashing\"}}}],\"role\": \"model\"},\"finishReason\": \"STOP\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 1200,\"candidatesTokenCount\": 412,\"thoughtsTokenCount\": 96,\"totalTokenCount\": 1708},\"modelVersion\": \"gemini-2.5-flash\",\"responseId\": \"r1\"}\r\n\r\n".into());
    Case {
        name: "gemini",
        profile: "name = \"gemini\"\ndialect = \"gemini\"\nbase_url = \"https://generativelanguage.googleapis.com\"\napi_key_env = \"GEMINI_API_KEY\"\nauth = \"header\"\nauth_header = \"x-goog-api-key\"\nmodel_in_body = false\n",
        model: "gemini-2.5-flash",
        chunks: netsplit(&ev),
    }
}

/// Bedrock ConverseStream: binary event-stream frames (built with the real encoder), cut
/// like `netsplit` does: every third frame split in the middle.
fn bedrock() -> Case {
    use loopgate::dialect::bedrock::eventstream::event_frame;
    let mut frames = vec![event_frame(
        "messageStart",
        br#"{"role":"assistant","p":"abcdefghij"}"#,
    )];
    for i in 0..200 {
        let p = format!(
            r#"{{"contentBlockIndex":0,"delta":{{"text":"token {i} of the answer "}},"p":"abcdefghijklmn"}}"#
        );
        frames.push(event_frame("contentBlockDelta", p.as_bytes()));
    }
    frames.push(event_frame(
        "contentBlockStop",
        br#"{"contentBlockIndex":0,"p":"abc"}"#,
    ));
    frames.push(event_frame(
        "contentBlockStart",
        br#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tooluse_01","name":"search"}},"p":"ab"}"#,
    ));
    for frag in [r#"{\"q\":"#, r#" \"consistent"#, r#" hashing\"}"#] {
        let p = format!(
            r#"{{"contentBlockIndex":1,"delta":{{"toolUse":{{"input":"{frag}"}}}},"p":"abcd"}}"#
        );
        frames.push(event_frame("contentBlockDelta", p.as_bytes()));
    }
    frames.push(event_frame(
        "contentBlockStop",
        br#"{"contentBlockIndex":1}"#,
    ));
    frames.push(event_frame(
        "messageStop",
        br#"{"stopReason":"tool_use","p":"abcdefgh"}"#,
    ));
    frames.push(event_frame(
        "metadata",
        br#"{"usage":{"inputTokens":1200,"outputTokens":412,"totalTokens":2412,"cacheReadInputTokens":800},"metrics":{"latencyMs":2100},"p":"abc"}"#,
    ));
    let mut chunks = Vec::with_capacity(frames.len() * 2);
    for (i, f) in frames.into_iter().enumerate() {
        if i % 3 == 2 {
            let (a, b) = f.split_at(f.len() / 2);
            chunks.push(a.to_vec());
            chunks.push(b.to_vec());
        } else {
            chunks.push(f);
        }
    }
    Case {
        name: "bedrock",
        profile: "name = \"bedrock\"\ndialect = \"bedrock\"\nbase_url = \"https://bedrock-runtime.us-east-1.amazonaws.com\"\nauth = \"sigv4\"\n",
        model: "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
        chunks,
    }
}

/// Cohere v2 chat stream (SSE with typed events).
fn cohere() -> Case {
    let mut ev = vec![
        "event: message-start\ndata: {\"id\":\"29f14a5a\",\"type\":\"message-start\",\"delta\":{\"message\":{\"role\":\"assistant\",\"content\":[],\"tool_plan\":\"\",\"tool_calls\":[],\"citations\":[]}}}\n\n".to_string(),
        "event: content-start\ndata: {\"type\":\"content-start\",\"index\":0,\"delta\":{\"message\":{\"content\":{\"type\":\"text\",\"text\":\"\"}}}}\n\n".to_string(),
    ];
    for i in 0..200 {
        ev.push(format!("event: content-delta\ndata: {{\"type\":\"content-delta\",\"index\":0,\"delta\":{{\"message\":{{\"content\":{{\"text\":\"token {i} of the answer \"}}}}}}}}\n\n"));
    }
    ev.push("event: content-end\ndata: {\"type\":\"content-end\",\"index\":0}\n\n".into());
    ev.push("event: tool-call-start\ndata: {\"type\":\"tool-call-start\",\"index\":0,\"delta\":{\"message\":{\"tool_calls\":{\"id\":\"search_1\",\"type\":\"function\",\"function\":{\"name\":\"search\",\"arguments\":\"\"}}}}}\n\n".into());
    for frag in ["{\\\"q\\\":", " \\\"consistent", " hashing\\\"}"] {
        ev.push(format!("event: tool-call-delta\ndata: {{\"type\":\"tool-call-delta\",\"index\":0,\"delta\":{{\"message\":{{\"tool_calls\":{{\"function\":{{\"arguments\":\"{frag}\"}}}}}}}}}}\n\n"));
    }
    ev.push("event: tool-call-end\ndata: {\"type\":\"tool-call-end\",\"index\":0}\n\n".into());
    ev.push("event: message-end\ndata: {\"type\":\"message-end\",\"delta\":{\"finish_reason\":\"TOOL_CALL\",\"usage\":{\"billed_units\":{\"input_tokens\":1200,\"output_tokens\":412},\"tokens\":{\"input_tokens\":1290,\"output_tokens\":412}}}}\n\n".into());
    Case {
        name: "cohere",
        profile: "name = \"cohere\"\ndialect = \"cohere\"\nbase_url = \"https://api.cohere.com\"\nchat_path = \"/v2/chat\"\napi_key_env = \"CO_API_KEY\"\n",
        model: "command-a-03-2025",
        chunks: netsplit(&ev),
    }
}

/// Every benchmarked dialect. Append new cases here.
fn cases() -> Vec<Case> {
    vec![anthropic(), gemini(), bedrock(), cohere()]
}

fn bench_case(c: &mut Criterion, case: &Case) {
    let profile = ProviderProfile::parse(case.profile, "bench.toml").expect("bench profile parses");
    let endpoint = Endpoint::parse(&profile.base_url).expect("bench base_url parses");
    let dialect = dialect_for(profile.dialect);
    let target = |stream| Target {
        profile: &profile,
        endpoint: &endpoint,
        model: case.model,
        stream,
        request_id: "chatcmpl-bench",
        created: 1_700_000_000,
        max_output_tokens: Some(8192),
    };
    let mut g = c.benchmark_group(case.name);

    let req = request(chat_body(false));
    let t = target(false);
    g.throughput(Throughput::Elements(1));
    g.bench_function("build_chat", |b| {
        b.iter(|| dialect.build_chat(black_box(&req), &t).expect("builds"))
    });

    let sreq = request(chat_body(true));
    let st = target(true);
    let total: usize = case.chunks.iter().map(Vec::len).sum();
    g.throughput(Throughput::Elements(case.chunks.len() as u64));
    g.bench_function("stream_per_chunk", |b| {
        b.iter(|| {
            let mut s = dialect.chat_stream(&st, &sreq);
            let mut out = BytesMut::with_capacity(total * 2);
            for ch in &case.chunks {
                // Error events are part of some fixtures; the cost is what is measured.
                let _ = s.feed(black_box(ch), &mut out);
            }
            let _ = s.finish(&mut out);
            out
        })
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    for case in cases() {
        bench_case(c, &case);
    }
}

criterion_group!(dialects_native, benches);
criterion_main!(dialects_native);
