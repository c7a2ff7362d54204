//! Writing OpenAI `chat.completion.chunk` SSE events.
//!
//! Every non-OpenAI dialect funnels its deltas through one [`ChunkEncoder`], so the
//! stream contract clients rely on lives in one place: fixed `id`/`created`/`model`,
//! `object: "chat.completion.chunk"`, `"usage": null` on every chunk when the client
//! asked for `include_usage`, one final `choices: []` chunk with the usage, and always
//! `data: [DONE]`.

use bytes::{BufMut, BytesMut};
use serde_json::{json, Value};

use super::Usage;

#[derive(Debug, Clone)]
pub struct ChunkEncoder {
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    role_sent: Vec<bool>,
    done: bool,
}

impl ChunkEncoder {
    pub fn new(id: &str, created: u64, model: &str, include_usage: bool) -> Self {
        ChunkEncoder {
            id: id.to_string(),
            created,
            model: model.to_string(),
            include_usage,
            role_sent: Vec::new(),
            done: false,
        }
    }

    pub fn set_model(&mut self, model: &str) {
        if !model.is_empty() {
            self.model = model.to_string();
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    fn write_chunk(&self, choices: Value, out: &mut BytesMut) {
        let mut chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        write_data(&chunk, out);
    }

    fn delta(&mut self, index: u32, mut delta: Value, out: &mut BytesMut) {
        let i = index as usize;
        if self.role_sent.len() <= i {
            self.role_sent.resize(i + 1, false);
        }
        if !self.role_sent[i] {
            delta["role"] = json!("assistant");
            self.role_sent[i] = true;
        }
        self.write_chunk(
            json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": null}]),
            out,
        );
    }

    /// The opening chunk: role and empty content, as OpenAI sends it.
    pub fn start(&mut self, index: u32, out: &mut BytesMut) {
        self.delta(index, json!({"content": ""}), out);
    }

    pub fn content(&mut self, index: u32, text: &str, out: &mut BytesMut) {
        if text.is_empty() {
            return;
        }
        self.delta(index, json!({"content": text}), out);
    }

    /// Reasoning text some providers expose (DeepSeek-style `reasoning_content`).
    pub fn reasoning(&mut self, index: u32, text: &str, out: &mut BytesMut) {
        if text.is_empty() {
            return;
        }
        self.delta(index, json!({"reasoning_content": text}), out);
    }

    /// First delta of a tool call: id and name, empty arguments.
    pub fn tool_call_start(
        &mut self,
        index: u32,
        tool_index: u32,
        id: &str,
        name: &str,
        out: &mut BytesMut,
    ) {
        self.delta(
            index,
            json!({"tool_calls": [{"index": tool_index, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""}}]}),
            out,
        );
    }

    pub fn tool_call_args(
        &mut self,
        index: u32,
        tool_index: u32,
        fragment: &str,
        out: &mut BytesMut,
    ) {
        if fragment.is_empty() {
            return;
        }
        self.delta(
            index,
            json!({"tool_calls": [{"index": tool_index, "function": {"arguments": fragment}}]}),
            out,
        );
    }

    pub fn finish_reason(&mut self, index: u32, reason: &str, out: &mut BytesMut) {
        self.write_chunk(
            json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}]),
            out,
        );
    }

    /// Usage chunk (only if the client asked) and `[DONE]`. Idempotent.
    pub fn end(&mut self, usage: &Usage, out: &mut BytesMut) {
        if self.done {
            return;
        }
        if self.include_usage {
            let chunk = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "system_fingerprint": null,
                "choices": [],
                "usage": usage.to_openai(),
            });
            write_data(&chunk, out);
        }
        write_done(out);
        self.done = true;
    }

    /// An error event after the 200, then `[DONE]`. Idempotent with [`Self::end`].
    pub fn error(&mut self, message: &str, kind: &str, code: &str, out: &mut BytesMut) {
        if self.done {
            return;
        }
        write_error_event(message, kind, code, out);
        write_done(out);
        self.done = true;
    }
}

/// The OpenAI `chat.completion` body for a single assistant message — text (or null when
/// only tool calls came back), tool calls and reasoning text — as the translated dialects
/// return it.
pub fn single_choice_completion(
    t: &super::Target,
    text: String,
    tool_calls: Vec<Value>,
    reasoning: String,
    finish: &str,
    usage: Usage,
) -> Result<super::Translated, super::DialectError> {
    let mut message = json!({
        "role": "assistant",
        "content": if text.is_empty() && !tool_calls.is_empty() { Value::Null } else { Value::String(text) },
        "refusal": null,
    });
    if !tool_calls.is_empty() {
        message["tool_calls"] = Value::Array(tool_calls);
    }
    if !reasoning.is_empty() {
        message["reasoning_content"] = Value::String(reasoning);
    }
    let out = json!({
        "id": t.request_id,
        "object": "chat.completion",
        "created": t.created,
        "model": t.model,
        "system_fingerprint": null,
        "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": finish}],
        "usage": usage.to_openai(),
    });
    let body =
        serde_json::to_vec(&out).map_err(|e| super::DialectError::Malformed(e.to_string()))?;
    Ok(super::Translated {
        body: bytes::Bytes::from(body),
        usage,
        model: None,
    })
}

/// `data: <json>\n\n`
pub fn write_data(v: &Value, out: &mut BytesMut) {
    out.put_slice(b"data: ");
    let mut w = out.writer();
    // Writing a Value to memory cannot fail.
    let _ = serde_json::to_writer(&mut w, v);
    let out = w.into_inner();
    out.put_slice(b"\n\n");
}

pub fn write_done(out: &mut BytesMut) {
    out.put_slice(b"data: [DONE]\n\n");
}

/// `data: {"error":{...}}\n\n` — how OpenAI reports a failure after the stream began.
pub fn write_error_event(message: &str, kind: &str, code: &str, out: &mut BytesMut) {
    write_data(
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
        out,
    );
}

/// Map common native stop reasons to OpenAI `finish_reason`.
pub fn finish_reason_from(native: &str) -> &'static str {
    match native {
        "stop" | "end_turn" | "stop_sequence" | "STOP" | "COMPLETE" | "FINISH_REASON_STOP"
        | "eos" => "stop",
        "length" | "max_tokens" | "MAX_TOKENS" | "model_length" => "length",
        "tool_calls" | "tool_use" | "TOOL_CALL" | "function_call" => "tool_calls",
        "content_filter"
        | "SAFETY"
        | "RECITATION"
        | "guardrail_intervened"
        | "content_filtered"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "refusal" => "content_filter",
        _ => "stop",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_contract() {
        let mut e = ChunkEncoder::new("chatcmpl-1", 7, "m", true);
        let mut out = BytesMut::new();
        e.start(0, &mut out);
        e.content(0, "hi", &mut out);
        e.finish_reason(0, "stop", &mut out);
        e.end(
            &Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                reported: true,
                ..Default::default()
            },
            &mut out,
        );
        e.end(&Usage::default(), &mut out);
        let s = String::from_utf8(out.to_vec()).unwrap();
        let events: Vec<&str> = s.split("\n\n").filter(|x| !x.is_empty()).collect();
        assert_eq!(events.len(), 5);
        assert_eq!(events[4], "data: [DONE]");
        for e in &events[..3] {
            let v: Value = serde_json::from_str(&e[6..]).unwrap();
            assert_eq!(v["object"], "chat.completion.chunk");
            assert!(v.get("usage").unwrap().is_null());
        }
        let last: Value = serde_json::from_str(&events[3][6..]).unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 5);
        let first: Value = serde_json::from_str(&events[0][6..]).unwrap();
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    }
}
