//! Shared pieces of the fuzz targets: input splitting, the provider targets built from the
//! embedded profiles, and the checks every translated output must pass.

use std::sync::OnceLock;

use bytes::Bytes;
use loopgate::dialect::{dialect_for, ChatRequest, Dialect, Target};
use loopgate::providers::{Endpoint, ProviderProfile};
use serde_json::{json, Value};

/// Request id and `created` every target uses (the outputs are checked against them).
pub const REQUEST_ID: &str = "chatcmpl-fuzz";
pub const CREATED: u64 = 1_700_000_000;

/// Largest input a target processes; libFuzzer's `-max_len` keeps most inputs far below.
pub const MAX_INPUT: usize = 1 << 20;

/// One provider as the proxy would reach it.
pub struct Provider {
    pub profile: ProviderProfile,
    pub endpoint: Endpoint,
    pub dialect: &'static dyn Dialect,
}

impl Provider {
    pub fn target<'a>(&'a self, model: &'a str, stream: bool) -> Target<'a> {
        Target {
            profile: &self.profile,
            endpoint: &self.endpoint,
            model,
            stream,
            request_id: REQUEST_ID,
            created: CREATED,
            max_output_tokens: Some(4096),
        }
    }
}

/// Every embedded provider profile (`filters/*.toml`), in file order.
pub fn providers() -> &'static [Provider] {
    static P: OnceLock<Vec<Provider>> = OnceLock::new();
    P.get_or_init(|| {
        loopgate::routing::table::embedded_profiles()
            .expect("embedded profiles parse")
            .into_iter()
            .map(|profile| {
                let endpoint = Endpoint::parse(&profile.base_url)
                    .or_else(|_| Endpoint::parse("https://upstream.example.com/v1"))
                    .expect("fallback endpoint parses");
                let dialect = dialect_for(profile.dialect);
                Provider {
                    profile,
                    endpoint,
                    dialect,
                }
            })
            .collect()
    })
}

/// One provider per dialect (the first profile using it), so a selector byte reaches
/// every translator equally often.
pub fn one_per_dialect() -> &'static [&'static Provider] {
    static P: OnceLock<Vec<&'static Provider>> = OnceLock::new();
    P.get_or_init(|| {
        loopgate::providers::DialectKind::ALL
            .iter()
            .map(|d| {
                providers()
                    .iter()
                    .find(|p| p.profile.dialect == *d)
                    .unwrap_or_else(|| panic!("no embedded profile uses dialect {d}"))
            })
            .collect()
    })
}

/// The chat request the response and stream translators are given (tools included, so
/// tool-call paths are reachable).
pub fn chat_request(stream: bool, include_usage: bool) -> ChatRequest {
    let mut body = json!({
        "model": "m",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
        "stream": stream,
    });
    if stream {
        body["stream_options"] = json!({"include_usage": include_usage});
    }
    let raw = Bytes::from(serde_json::to_vec(&body).expect("serialises"));
    ChatRequest {
        raw,
        body: body.as_object().cloned().unwrap_or_default(),
        model: "m".into(),
        stream,
        include_usage: stream && include_usage,
    }
}

/// Split `data` into a header-chosen set of chunks: the first byte gives the number of
/// cuts (low 4 bits), then two bytes per cut give its offset. Returns the chunks of the
/// remaining bytes (which are the payload) and the payload itself.
pub fn split(data: &[u8]) -> (Vec<&[u8]>, &[u8]) {
    let (cuts, payload) = cut_points(data);
    (chunks_at(payload, &cuts), payload)
}

/// The raw cut offsets from the header of `data` (see [`split`]) and the payload after it.
pub fn cut_points(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let n = usize::from(n & 0x0f);
    let hdr = (n * 2).min(rest.len());
    let (cuts_raw, payload) = rest.split_at(hdr);
    let cuts = cuts_raw
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    (cuts, payload)
}

/// Cut `buf` at `cuts` (each taken modulo `buf.len() + 1`).
pub fn chunks_at<'a>(buf: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (buf.len() + 1)).collect();
    cuts.sort_unstable();
    let mut chunks = Vec::with_capacity(cuts.len() + 1);
    let mut last = 0;
    for c in cuts {
        chunks.push(&buf[last..c]);
        last = c;
    }
    chunks.push(&buf[last..]);
    chunks
}

/// What an OpenAI SSE stream written by a translator contained.
#[derive(Debug, Default, PartialEq)]
pub struct SseOutput {
    /// The JSON payloads, in order (`[DONE]` excluded).
    pub events: Vec<Value>,
    pub done: bool,
}

/// Check that `out` is well-framed OpenAI SSE: UTF-8, `data: <payload>\n\n` events only,
/// each payload a JSON chunk or error object (or the final `[DONE]`), nothing after
/// `[DONE]`. Panics (a fuzz finding) otherwise.
pub fn check_openai_sse(out: &[u8]) -> SseOutput {
    let text = std::str::from_utf8(out).expect("translated stream is UTF-8");
    assert!(
        text.is_empty() || text.ends_with("\n\n"),
        "translated stream does not end on an event boundary: {text:?}"
    );
    let mut res = SseOutput::default();
    for ev in text.split_terminator("\n\n") {
        assert!(!res.done, "event after [DONE]: {ev:?}");
        let payload = ev
            .strip_prefix("data: ")
            .unwrap_or_else(|| panic!("event is not a single data line: {ev:?}"));
        assert!(
            !payload.contains('\n') && !payload.contains('\r'),
            "event payload spans lines: {payload:?}"
        );
        if payload == "[DONE]" {
            res.done = true;
            continue;
        }
        let v: Value = serde_json::from_str(payload)
            .unwrap_or_else(|e| panic!("event payload is not JSON ({e}): {payload:?}"));
        check_chunk(&v);
        res.events.push(v);
    }
    res
}

/// A chunk has the gateway's id and the chunk object type; an error event has the OpenAI
/// error shape.
fn check_chunk(v: &Value) {
    let o = v.as_object().expect("event payload is a JSON object");
    // Passed-through OpenAI chunks may carry `"error": null`.
    if let Some(e) = o.get("error").filter(|e| !e.is_null()) {
        assert!(
            e.get("message").is_some_and(Value::is_string),
            "error event without a message: {v}"
        );
        return;
    }
    assert_eq!(
        o.get("object").and_then(Value::as_str),
        Some("chat.completion.chunk"),
        "chunk object type: {v}"
    );
    assert_eq!(
        o.get("id").and_then(Value::as_str),
        Some(REQUEST_ID),
        "chunk id: {v}"
    );
    assert!(
        o.get("choices").is_some_and(Value::is_array),
        "chunk without a choices array: {v}"
    );
}

/// Upstream-minted values that legitimately differ between two runs (Gemini tool-call ids
/// are random when the upstream sends none) are blanked before outputs are compared.
pub fn normalise(mut events: Vec<Value>) -> Vec<Value> {
    for e in &mut events {
        if let Some(choices) = e.get_mut("choices").and_then(Value::as_array_mut) {
            for c in choices {
                for key in ["delta", "message"] {
                    if let Some(tcs) = c
                        .get_mut(key)
                        .and_then(|d| d.get_mut("tool_calls"))
                        .and_then(Value::as_array_mut)
                    {
                        for tc in tcs {
                            if let Some(id) = tc.get_mut("id") {
                                *id = Value::Null;
                            }
                        }
                    }
                }
            }
        }
    }
    events
}
