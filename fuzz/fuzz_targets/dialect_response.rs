//! Every dialect's whole-response translators (chat, embeddings, images) and its error
//! classifier, on arbitrary upstream bodies.
//!
//! Input: byte 0 picks the dialect, byte 1 the operation (and the HTTP status for the
//! error classifier), the rest is the upstream body.
//!
//! Properties: no panic; a translated body is a JSON object of the OpenAI shape for its
//! operation (chat: `object` "chat.completion", the gateway's id, a `choices` array);
//! a classified error carries a bounded message and a snake_case code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopgate_fuzz::{chat_request, one_per_dialect, MAX_INPUT, REQUEST_ID};
use serde_json::Value;

fn json_object(body: &[u8], what: &str) -> serde_json::Map<String, Value> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => o,
        other => panic!(
            "{what}: translated body is not a JSON object ({other:?}): {:?}",
            String::from_utf8_lossy(body)
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT || data.len() < 2 {
        return;
    }
    let dialects = one_per_dialect();
    let p = dialects[usize::from(data[0]) % dialects.len()];
    let op = data[1];
    let body = &data[2..];
    let name = p.dialect.name();
    match op % 4 {
        0 => {
            let stream = op & 0x10 != 0;
            let req = chat_request(false, false);
            let t = p.target("native-model", stream);
            if let Ok(tr) = p.dialect.translate_chat(body, &t, &req) {
                let o = json_object(&tr.body, name);
                assert_eq!(
                    o.get("object").and_then(Value::as_str),
                    Some("chat.completion"),
                    "{name}: object type"
                );
                assert_eq!(
                    o.get("id").and_then(Value::as_str),
                    Some(REQUEST_ID),
                    "{name}: response id"
                );
                assert!(
                    o.get("choices").is_some_and(Value::is_array),
                    "{name}: no choices array"
                );
            }
        }
        1 => {
            let t = p.target("native-model", false);
            if let Ok(tr) = p.dialect.translate_embeddings(body, &t) {
                let o = json_object(&tr.body, name);
                assert!(
                    o.get("data").is_some_and(Value::is_array),
                    "{name}: embeddings without a data array"
                );
            }
        }
        2 => {
            let t = p.target("native-model", false);
            if let Ok(tr) = p.dialect.translate_images(body, &t) {
                let o = json_object(&tr.body, name);
                assert!(
                    o.get("data").is_some_and(Value::is_array),
                    "{name}: images without a data array"
                );
            }
        }
        _ => {
            // Statuses the proxy classifies: 4xx and 5xx (and a few odd ones).
            let status = 400 + u16::from(op >> 2) * 3;
            let f = p.dialect.classify_error(status, body);
            assert!(
                f.message.chars().count() <= 2100,
                "{name}: unbounded error message ({} chars)",
                f.message.chars().count()
            );
            assert!(
                !f.code.is_empty() && f.code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{name}: error code {:?} is not an OpenAI-style code",
                f.code
            );
        }
    }
});
