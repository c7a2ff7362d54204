//! Bedrock dialect tests: request mapping, Converse JSON, ConverseStream frames.
//! Fixtures follow the shapes in the Bedrock API reference (Converse, ConverseStream).

use super::eventstream::{event_frame, exception_frame};
use super::*;
use crate::providers::{Endpoint, ProviderProfile};
use proptest::prelude::*;

pub(crate) fn profile() -> ProviderProfile {
    ProviderProfile::parse(
        r#"
name = "bedrock"
dialect = "bedrock"
base_url = "https://bedrock-runtime.us-east-1.amazonaws.com"
auth = "sigv4"
"#,
        "test",
    )
    .unwrap()
}

pub(crate) fn chat(body: Value) -> ChatRequest {
    let raw = Bytes::from(serde_json::to_vec(&body).unwrap());
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    ChatRequest {
        raw,
        model: body["model"].as_str().unwrap_or("m").to_string(),
        body: body.as_object().unwrap().clone(),
        stream,
        include_usage,
    }
}

fn with_target<R>(model: &str, stream: bool, f: impl FnOnce(&Target) -> R) -> R {
    let p = profile();
    let e = Endpoint::parse(&p.base_url).unwrap();
    let t = Target {
        profile: &p,
        endpoint: &e,
        model,
        stream,
        request_id: "chatcmpl-test",
        created: 1_700_000_000,
        max_output_tokens: Some(4096),
    };
    f(&t)
}

const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

fn full_request() -> Value {
    json!({
        "model": "us.anthropic.claude-3-5-sonnet-20241022-v2:0",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image and what's the weather in Paris?"},
                {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{PNG}")}}
            ]},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "tooluse_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
            ]},
            {"role": "tool", "tool_call_id": "tooluse_abc", "content": "18C, sunny"},
            {"role": "user", "content": "Thanks, summarise."}
        ],
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": "required",
        "max_tokens": 300,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": "END",
        "user": "u1"
    })
}

#[test]
fn builds_converse_request() {
    let req = chat(full_request());
    let up = with_target("us.anthropic.claude-3-5-sonnet-20241022-v2:0", false, |t| {
        Bedrock.build_chat(&req, t)
    })
    .unwrap();
    assert_eq!(
        up.path,
        "/model/us.anthropic.claude-3-5-sonnet-20241022-v2%3A0/converse"
    );
    let b: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(b["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        b["inferenceConfig"],
        json!({"maxTokens": 300, "temperature": 0.2, "topP": 0.9, "stopSequences": ["END"]})
    );
    let msgs = b["messages"].as_array().unwrap();
    assert_eq!(
        msgs.len(),
        3,
        "tool result and the next user turn merge into one user message"
    );
    assert_eq!(
        msgs[0]["content"][1],
        json!({"image": {"format": "png", "source": {"bytes": PNG}}})
    );
    assert_eq!(
        msgs[1],
        json!({"role": "assistant", "content": [{"toolUse": {"toolUseId": "tooluse_abc", "name": "get_weather", "input": {"city": "Paris"}}}]})
    );
    assert_eq!(msgs[2]["role"], "user");
    assert_eq!(
        msgs[2]["content"][0],
        json!({"toolResult": {"toolUseId": "tooluse_abc", "content": [{"text": "18C, sunny"}]}})
    );
    assert_eq!(msgs[2]["content"][1], json!({"text": "Thanks, summarise."}));
    assert_eq!(b["toolConfig"]["toolChoice"], json!({"any": {}}));
    assert_eq!(
        b["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"]["required"],
        json!(["city"])
    );
    assert!(b.get("user").is_none() && b.get("model").is_none());

    let stream = with_target("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-3-70b-instruct-v1:0", true, |t| {
        Bedrock.build_chat(&req, t)
    })
    .unwrap();
    assert_eq!(
        stream.path,
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.meta.llama3-3-70b-instruct-v1%3A0/converse-stream"
    );
    assert!(stream
        .headers
        .iter()
        .any(|(n, v)| n == "accept" && v == "application/vnd.amazon.eventstream"));
}

#[test]
fn tool_choice_variants() {
    let mut body = full_request();
    body["tool_choice"] = json!({"type": "function", "function": {"name": "get_weather"}});
    let b = converse_body(&chat(body.clone())).unwrap();
    assert_eq!(
        b["toolConfig"]["toolChoice"],
        json!({"tool": {"name": "get_weather"}})
    );
    body["tool_choice"] = json!("auto");
    assert_eq!(
        converse_body(&chat(body.clone())).unwrap()["toolConfig"]["toolChoice"],
        json!({"auto": {}})
    );
    // "none" without tool history: no toolConfig at all.
    let b = converse_body(&chat(
        json!({"messages": [{"role": "user", "content": "hi"}],
        "tools": body["tools"].clone(), "tool_choice": "none"}),
    ))
    .unwrap();
    assert!(b.get("toolConfig").is_none());
}

#[test]
fn unsupported_inputs_are_clear_errors() {
    let remote = chat(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]}]}));
    let err = converse_body(&remote).unwrap_err();
    assert!(
        matches!(&err, DialectError::Unsupported { message, .. } if message.contains("inline images")),
        "{err:?}"
    );
    let n2 = chat(json!({"n": 2, "messages": [{"role": "user", "content": "x"}]}));
    assert!(matches!(
        converse_body(&n2),
        Err(DialectError::Unsupported { .. })
    ));
    let tiff = chat(json!({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}]}]}));
    assert!(converse_body(&tiff).is_err());
}

#[test]
fn translates_text_response_with_cache_usage() {
    let body = br#"{"output":{"message":{"role":"assistant","content":[{"text":"Hello there."}]}},
        "stopReason":"end_turn",
        "usage":{"inputTokens":12,"outputTokens":4,"totalTokens":126,"cacheReadInputTokens":100,"cacheWriteInputTokens":10},
        "metrics":{"latencyMs":321}}"#;
    let req = chat(json!({"messages": [{"role": "user", "content": "hi"}]}));
    let tr = with_target("amazon.nova-lite-v1:0", false, |t| {
        Bedrock.translate_chat(body, t, &req)
    })
    .unwrap();
    let v: Value = serde_json::from_slice(&tr.body).unwrap();
    assert_eq!(v["id"], "chatcmpl-test");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "amazon.nova-lite-v1:0");
    assert_eq!(v["choices"][0]["message"]["content"], "Hello there.");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 122);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
    assert_eq!(v["usage"]["total_tokens"], 126);
    assert_eq!(
        (tr.usage.cached_tokens, tr.usage.cache_creation_tokens),
        (100, 10)
    );
}

#[test]
fn translates_tool_use_response() {
    let body = br#"{"output":{"message":{"role":"assistant","content":[
        {"text":"Let me check."},
        {"toolUse":{"toolUseId":"tooluse_kZJMlvQmRJ6eAyJE5GIl7Q","name":"get_weather","input":{"city":"Paris","unit":"c"}}}]}},
        "stopReason":"tool_use","usage":{"inputTokens":300,"outputTokens":40,"totalTokens":340}}"#;
    let req = chat(json!({"messages": [{"role": "user", "content": "hi"}]}));
    let tr = with_target("m", false, |t| Bedrock.translate_chat(body, t, &req)).unwrap();
    let v: Value = serde_json::from_slice(&tr.body).unwrap();
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls");
    assert_eq!(
        c["message"]["tool_calls"][0]["id"],
        "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
    );
    let args: Value = serde_json::from_str(
        c["message"]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(args, json!({"city": "Paris", "unit": "c"}));
    assert_eq!(tr.usage.total(), 340);
    for (stop, want) in [
        ("max_tokens", "length"),
        ("stop_sequence", "stop"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ] {
        let body = format!(
            r#"{{"output":{{"message":{{"role":"assistant","content":[{{"text":"x"}}]}}}},"stopReason":"{stop}","usage":{{"inputTokens":1,"outputTokens":1}}}}"#
        );
        let tr = with_target("m", false, |t| {
            Bedrock.translate_chat(body.as_bytes(), t, &req)
        })
        .unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["choices"][0]["finish_reason"], want, "{stop}");
    }
    assert!(with_target("m", false, |t| Bedrock.translate_chat(
        b"{\"message\":\"x\"}",
        t,
        &req
    ))
    .is_err());
}

fn text_stream() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(event_frame(
        "messageStart",
        br#"{"role":"assistant","p":"abcdefghijkl"}"#,
    ));
    s.extend(event_frame(
        "contentBlockDelta",
        br#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"abcd"}"#,
    ));
    s.extend(event_frame(
        "contentBlockDelta",
        br#"{"contentBlockIndex":0,"delta":{"text":" world \u00e9"},"p":"ab"}"#,
    ));
    s.extend(event_frame(
        "contentBlockStop",
        br#"{"contentBlockIndex":0,"p":"abcdefg"}"#,
    ));
    s.extend(event_frame(
        "messageStop",
        br#"{"stopReason":"end_turn","p":"abc"}"#,
    ));
    s.extend(event_frame(
        "metadata",
        br#"{"usage":{"inputTokens":25,"outputTokens":3,"totalTokens":28},"metrics":{"latencyMs":412},"p":"abcdefghijklmnopq"}"#,
    ));
    s
}

fn tool_stream() -> Vec<u8> {
    let mut s = Vec::new();
    s.extend(event_frame("messageStart", br#"{"role":"assistant"}"#));
    s.extend(event_frame(
        "contentBlockDelta",
        br#"{"contentBlockIndex":0,"delta":{"text":"Checking."}}"#,
    ));
    s.extend(event_frame(
        "contentBlockStop",
        br#"{"contentBlockIndex":0}"#,
    ));
    s.extend(event_frame(
        "contentBlockStart",
        br#"{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tooluse_1","name":"get_weather"}}}"#,
    ));
    s.extend(event_frame(
        "contentBlockDelta",
        br#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\"city\":"}}}"#,
    ));
    s.extend(event_frame(
        "contentBlockDelta",
        br#"{"contentBlockIndex":1,"delta":{"toolUse":{"input":"\"Paris\"}"}}}"#,
    ));
    s.extend(event_frame(
        "contentBlockStop",
        br#"{"contentBlockIndex":1}"#,
    ));
    s.extend(event_frame(
        "contentBlockStart",
        br#"{"contentBlockIndex":2,"start":{"toolUse":{"toolUseId":"tooluse_2","name":"get_time"}}}"#,
    ));
    s.extend(event_frame(
        "contentBlockDelta",
        br#"{"contentBlockIndex":2,"delta":{"toolUse":{"input":"{}"}}}"#,
    ));
    s.extend(event_frame(
        "contentBlockStop",
        br#"{"contentBlockIndex":2}"#,
    ));
    s.extend(event_frame("messageStop", br#"{"stopReason":"tool_use"}"#));
    s.extend(event_frame(
        "metadata",
        br#"{"usage":{"inputTokens":50,"outputTokens":20,"totalTokens":75,"cacheReadInputTokens":5},"metrics":{"latencyMs":1}}"#,
    ));
    s
}

pub(crate) fn events(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "stream must end with [DONE]: {text}"
    );
    text.split("\n\n")
        .filter(|e| !e.is_empty() && *e != "data: [DONE]")
        .map(|e| serde_json::from_str(e.strip_prefix("data: ").unwrap()).unwrap())
        .collect()
}

/// Feed `input` cut at the (sorted) positions in `cuts`, stopping at the first error,
/// then `finish`: (first error or finish result, output, usage). Shared by the
/// Bedrock, Cohere and Ollama stream tests.
pub(crate) fn drive(
    s: &mut dyn StreamTranslator,
    input: &[u8],
    cuts: &[usize],
) -> (Result<(), DialectError>, Vec<u8>, Usage) {
    let mut out = BytesMut::new();
    let mut last = 0;
    let mut res = Ok(());
    for &c in cuts.iter().chain(std::iter::once(&input.len())) {
        if let Err(e) = s.feed(&input[last..c], &mut out) {
            res = Err(e);
            break;
        }
        last = c;
    }
    if res.is_ok() {
        res = s.finish(&mut out);
    }
    (res, out.to_vec(), s.usage())
}

fn run(
    input: &[u8],
    chunks: &[usize],
    include_usage: bool,
) -> (Result<(), DialectError>, Vec<u8>, Usage) {
    drive(
        &mut BedrockStream::new("chatcmpl-test", 1, "m", include_usage),
        input,
        chunks,
    )
}

#[test]
fn streams_text_with_usage() {
    let (res, out, usage) = run(&text_stream(), &[], true);
    res.unwrap();
    let ev = events(&out);
    assert!(ev.iter().all(|e| e["id"] == "chatcmpl-test"));
    assert_eq!(
        ev[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello world é");
    let fin = ev
        .iter()
        .find(|e| e["choices"][0]["finish_reason"].is_string())
        .unwrap();
    assert_eq!(fin["choices"][0]["finish_reason"], "stop");
    let last = ev.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["total_tokens"], 28);
    assert_eq!(usage.prompt_tokens, 25);
    for e in &ev[..ev.len() - 1] {
        assert_eq!(e["object"], "chat.completion.chunk");
        assert!(e["usage"].is_null());
    }
    // Without include_usage: no usage chunk, no usage keys, usage still recorded.
    let (_, out, usage) = run(&text_stream(), &[], false);
    assert!(events(&out)
        .iter()
        .all(|e| e.get("usage").is_none() && !e["choices"].as_array().unwrap().is_empty()));
    assert_eq!(usage.total(), 28);
}

#[test]
fn streams_tool_calls() {
    let (res, out, usage) = run(&tool_stream(), &[], false);
    res.unwrap();
    let ev = events(&out);
    let mut args = [String::new(), String::new()];
    let mut starts = Vec::new();
    for e in &ev {
        for tc in e["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = tc["index"].as_u64().unwrap() as usize;
            if let Some(id) = tc["id"].as_str() {
                starts.push((
                    i,
                    id.to_string(),
                    tc["function"]["name"].as_str().unwrap().to_string(),
                ));
            }
            args[i].push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    assert_eq!(
        starts,
        vec![
            (0, "tooluse_1".into(), "get_weather".into()),
            (1, "tooluse_2".into(), "get_time".into())
        ]
    );
    assert_eq!(
        serde_json::from_str::<Value>(&args[0]).unwrap(),
        json!({"city": "Paris"})
    );
    assert_eq!(args[1], "{}");
    assert_eq!(
        ev.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(
        (
            usage.prompt_tokens,
            usage.cached_tokens,
            usage.completion_tokens
        ),
        (55, 5, 20)
    );
}

#[test]
fn exception_frame_becomes_error_event() {
    let mut input = event_frame("messageStart", br#"{"role":"assistant"}"#);
    input.extend(event_frame(
        "contentBlockDelta",
        br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
    ));
    input.extend(exception_frame(
        "throttlingException",
        "Too many requests, please wait before trying again.",
    ));
    for ty in [
        "throttlingException",
        "modelStreamErrorException",
        "validationException",
        "internalServerException",
        "serviceUnavailableException",
    ] {
        let mut input = input.clone();
        if ty != "throttlingException" {
            input = event_frame("messageStart", br#"{"role":"assistant"}"#);
            input.extend(exception_frame(ty, "boom"));
        }
        let mut s = BedrockStream::new("x", 1, "m", true);
        let mut out = BytesMut::new();
        let err = s.feed(&input, &mut out).unwrap_err();
        assert!(
            matches!(&err, DialectError::Upstream(m) if m.contains(ty)),
            "{err:?}"
        );
        s.finish(&mut out).unwrap();
        s.abort("again", &mut out);
        let ev = events(&out);
        let e = ev.last().unwrap();
        assert!(e["error"]["message"].as_str().unwrap().contains(ty));
        if ty == "throttlingException" {
            assert_eq!(e["error"]["code"], "rate_limit_exceeded");
        }
        assert_eq!(
            String::from_utf8(out.to_vec())
                .unwrap()
                .matches("[DONE]")
                .count(),
            1
        );
    }
}

#[test]
fn truncated_and_corrupt_streams() {
    let full = text_stream();
    // Cut inside a frame.
    let (res, out, _) = run(&full[..full.len() - 5], &[], false);
    assert!(matches!(res, Err(DialectError::Truncated(_))));
    assert!(events(&out).last().unwrap().get("error").is_some());
    // Cut between frames, before messageStop.
    let two = {
        let mut s = event_frame("messageStart", br#"{"role":"assistant"}"#);
        s.extend(event_frame(
            "contentBlockDelta",
            br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
        ));
        s
    };
    let (res, out, _) = run(&two, &[], false);
    assert!(matches!(res, Err(DialectError::Truncated(_))));
    assert!(events(&out).last().unwrap().get("error").is_some());
    // A flipped payload byte fails the message CRC.
    let mut bad = full.clone();
    bad[40] ^= 0x01;
    let (res, out, _) = run(&bad, &[], false);
    assert!(matches!(res, Err(DialectError::Malformed(_))));
    assert!(events(&out).last().unwrap().get("error").is_some());
}

/// Found by fuzz/dialect_stream: frames that arrived in the same read as a corrupt frame
/// were dropped, so what the client saw depended on where the upstream's chunks ended.
#[test]
fn frames_before_a_corrupt_frame_are_translated_whatever_the_split() {
    let mut input = event_frame("messageStart", br#"{"role":"assistant"}"#);
    input.extend(event_frame(
        "contentBlockDelta",
        br#"{"contentBlockIndex":0,"delta":{"text":"Hi"}}"#,
    ));
    let good = input.len();
    let mut bad = event_frame(
        "contentBlockDelta",
        br#"{"contentBlockIndex":0,"delta":{"text":"lo"}}"#,
    );
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    input.extend(bad);
    let (r1, whole, _) = run(&input, &[], false);
    let (r2, split, _) = run(&input, &[good], false);
    assert!(matches!(r1, Err(DialectError::Malformed(_))), "{r1:?}");
    assert!(matches!(r2, Err(DialectError::Malformed(_))), "{r2:?}");
    assert_eq!(
        String::from_utf8_lossy(&whole),
        String::from_utf8_lossy(&split)
    );
    let ev = events(&whole);
    assert_eq!(ev[1]["choices"][0]["delta"]["content"], "Hi");
    assert!(ev.last().unwrap().get("error").is_some());
}

proptest! {
    #[test]
    fn any_split_gives_same_output(cuts in proptest::collection::vec(0usize..4000, 0..12), tools in any::<bool>()) {
        let input = if tools { tool_stream() } else { text_stream() };
        let (r1, whole, u1) = run(&input, &[], true);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort();
        let (r2, split, u2) = run(&input, &cuts, true);
        prop_assert!(r1.is_ok() && r2.is_ok());
        prop_assert_eq!(whole, split);
        prop_assert_eq!(u1, u2);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic(data in proptest::collection::vec(any::<u8>(), 0..2048), cut in 0usize..2048) {
        let cut = cut.min(data.len());
        let (res, out, _) = run(&data, &[cut], false);
        // Random bytes never pass both CRCs: always an error, always terminated.
        prop_assert!(res.is_err());
        prop_assert!(String::from_utf8(out).unwrap().ends_with("data: [DONE]\n\n"));
    }
}

/// The profiles this module's author owns load, validate and pick the right dialect.
#[test]
fn owned_profiles_load() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("filters");
    let load = |f: &str| {
        let text = std::fs::read_to_string(dir.join(f)).unwrap();
        ProviderProfile::parse(&text, f).unwrap_or_else(|e| panic!("{e}"))
    };
    let b = load("bedrock.toml");
    assert_eq!(b.dialect.as_str(), "bedrock");
    assert_eq!(
        b.activation_vars(),
        vec![
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_BEARER_TOKEN_BEDROCK",
            "AWS_PROFILE",
            "AWS_CONTAINER_CREDENTIALS_FULL_URI",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
            "AWS_WEB_IDENTITY_TOKEN_FILE"
        ]
    );
    assert!(b.matches_model("us.anthropic.claude-3-5-sonnet-20241022-v2:0"));
    assert!(b.matches_model("arn:aws:bedrock:us-east-1:123456789012:inference-profile/x"));
    assert!(!b.matches_model("gpt-4o"));
    let e = Endpoint::parse(&b.base_url).unwrap();
    assert!(e.tls && e.host.starts_with("bedrock-runtime.") && e.host.ends_with(".amazonaws.com"));
    let c = load("cohere.toml");
    assert_eq!(
        (c.chat_path.as_str(), c.embeddings_path.as_deref()),
        ("/v2/chat", Some("/v2/embed"))
    );
    assert!(c.matches_model("command-a-03-2025") && c.matches_model("embed-v4.0"));
    let o = load("ollama-native.toml");
    assert_eq!(
        (o.name.as_str(), o.dialect.as_str(), o.activation_var()),
        ("ollama-native", "ollama", Some("OLLAMA_HOST"))
    );
    assert!(o.models.is_empty());
    let h = load("huggingface.toml");
    assert_eq!(
        (h.dialect.as_str(), h.api_key_vars()),
        (
            "huggingface",
            vec!["HUGGING_FACE_API_KEY", "HF_TOKEN", "HUGGINGFACE_API_KEY"]
        )
    );
    assert!(h.embeddings_path.is_none());
    let a = load("azure-foundry.toml");
    let ep = Endpoint::parse("https://res.services.ai.azure.com/models").unwrap();
    assert_eq!(
        a.path_for(&ep, &a.chat_path, "Llama-3.3-70B-Instruct"),
        "/models/chat/completions?api-version=2024-05-01-preview"
    );
    assert_eq!(a.auth_header.as_deref(), Some("api-key"));
}

#[test]
fn classifies_bedrock_errors() {
    let f = Bedrock.classify_error(
        429,
        br#"{"message":"Too many requests, please wait before trying again."}"#,
    );
    assert!(f.retryable);
    assert_eq!(f.code, "rate_limit_exceeded");
    assert_eq!(
        f.message,
        "Too many requests, please wait before trying again."
    );
    assert!(
        Bedrock
            .classify_error(424, br#"{"message":"Model error"}"#)
            .retryable
    );
    assert!(
        !Bedrock
            .classify_error(400, br#"{"message":"Malformed input request"}"#)
            .retryable
    );
}

const SCHEMA: &str =
    r#"{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}"#;

fn json_schema_request(stream: bool) -> Value {
    json!({"messages": [{"role": "user", "content": "x"}], "stream": stream,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": serde_json::from_str::<Value>(SCHEMA).unwrap()}}})
}

#[test]
fn json_mode_is_a_forced_tool() {
    let v = converse_body(&chat(json_schema_request(false))).unwrap();
    assert_eq!(
        v["toolConfig"],
        json!({"tools": [{"toolSpec": {"name": "json_response", "description": crate::dialect::JSON_TOOL_DESCRIPTION,
            "inputSchema": {"json": serde_json::from_str::<Value>(SCHEMA).unwrap()}}}],
            "toolChoice": {"any": {}}})
    );
    let v = converse_body(&chat(
        json!({"response_format": {"type": "json_object"}, "messages": [{"role": "user", "content": "x"}]}),
    ))
    .unwrap();
    assert_eq!(
        v["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"],
        json!({"json": {"type": "object"}})
    );
    // With the request's own tools the format is asked for in the system prompt.
    let v = converse_body(&chat(json!({"response_format": {"type": "json_object"},
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "messages": [{"role": "user", "content": "x"}]})))
    .unwrap();
    assert_eq!(v["toolConfig"]["tools"][0]["toolSpec"]["name"], "f");
    assert!(v["system"][0]["text"].as_str().unwrap().contains("JSON"));
}

#[test]
fn forced_tool_input_is_the_answer() {
    let body = br#"{"output":{"message":{"role":"assistant","content":[
        {"toolUse":{"toolUseId":"tooluse_1","name":"json_response","input":{"city":"Paris"}}}]}},
        "stopReason":"tool_use","usage":{"inputTokens":3,"outputTokens":4,"totalTokens":7}}"#;
    let req = chat(json_schema_request(false));
    let tr = with_target("m", false, |t| Bedrock.translate_chat(body, t, &req)).unwrap();
    let v: Value = serde_json::from_slice(&tr.body).unwrap();
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(c["message"]["content"], r#"{"city":"Paris"}"#);
    assert!(c["message"].get("tool_calls").is_none() || c["message"]["tool_calls"].is_null());

    let mut s = Vec::new();
    s.extend(event_frame("messageStart", br#"{"role":"assistant"}"#));
    s.extend(event_frame(
        "contentBlockStart",
        br#"{"contentBlockIndex":0,"start":{"toolUse":{"toolUseId":"tooluse_1","name":"json_response"}}}"#,
    ));
    s.extend(event_frame(
        "contentBlockDelta",
        br#"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"{\"city\":"}}}"#,
    ));
    s.extend(event_frame(
        "contentBlockDelta",
        br#"{"contentBlockIndex":0,"delta":{"toolUse":{"input":"\"Paris\"}"}}}"#,
    ));
    s.extend(event_frame(
        "contentBlockStop",
        br#"{"contentBlockIndex":0}"#,
    ));
    s.extend(event_frame("messageStop", br#"{"stopReason":"tool_use"}"#));
    s.extend(event_frame(
        "metadata",
        br#"{"usage":{"inputTokens":3,"outputTokens":4,"totalTokens":7}}"#,
    ));
    let mut st = BedrockStream::new("chatcmpl-test", 1, "m", false);
    st.json_mode = true;
    let (res, out, _) = drive(&mut st, &s, &[]);
    res.unwrap();
    let ev = events(&out);
    let content: String = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, r#"{"city":"Paris"}"#);
    assert!(ev
        .iter()
        .all(|e| e["choices"][0]["delta"].get("tool_calls").is_none()));
    assert_eq!(ev.last().unwrap()["choices"][0]["finish_reason"], "stop");
}
