//! Every dialect's stream translator (native stream → OpenAI `chat.completion.chunk` SSE)
//! on arbitrary upstream bytes, split into arbitrary chunks, driven as the proxy drives it.
//!
//! Input: byte 0 picks the dialect (low 4 bits) and flags: 0x10 the client asked for
//! `include_usage`, 0x20 the stream breaks (abort) instead of ending, 0x40 (Bedrock) the
//! payload is framed into valid event-stream messages first: `\0`-separated
//! `event-type, payload` pairs, an event type starting with `!` making an exception
//! frame. Then the chunk-split header (see `loopgate_fuzz::split`) and the payload.
//!
//! Properties: no panic; the output is well-framed OpenAI SSE whose payloads are chunk or
//! error JSON, ending in exactly one `data: [DONE]` (after a clean end, an upstream error
//! or an abort); the chunk split changes nothing (events, usage, model, time to first
//! token).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use loopgate::dialect::bedrock::eventstream::{event_frame, exception_frame};
use loopgate::dialect::{DialectError, Usage};
use loopgate_fuzz::{
    chat_request, check_openai_sse, chunks_at, cut_points, normalise, one_per_dialect, Provider,
    MAX_INPUT,
};

#[derive(Debug, PartialEq)]
struct Run {
    events: Vec<serde_json::Value>,
    usage: Usage,
    model: Option<String>,
    produced: bool,
}

fn run(p: &Provider, include_usage: bool, abort: bool, chunks: &[&[u8]]) -> Run {
    let req = chat_request(true, include_usage);
    let t = p.target("native-model", true);
    let mut tr = p.dialect.chat_stream(&t, &req);
    let mut out = BytesMut::new();
    let mut ended = false;
    for c in chunks {
        match tr.feed(c, &mut out) {
            Ok(()) => {}
            // The translator already wrote the error event and [DONE].
            Err(DialectError::Upstream(_)) => {
                ended = true;
                break;
            }
            Err(e) => {
                tr.abort(&e.to_string(), &mut out);
                ended = true;
                break;
            }
        }
    }
    if !ended {
        if abort {
            tr.abort("upstream stream interrupted: connection reset", &mut out);
        } else {
            let _ = tr.finish(&mut out);
        }
    }
    let sse = check_openai_sse(&out);
    assert!(
        sse.done,
        "{}: stream did not end with data: [DONE]: {:?}",
        p.dialect.name(),
        String::from_utf8_lossy(&out)
    );
    Run {
        events: normalise(sse.events),
        usage: tr.usage(),
        model: tr.model().map(str::to_string),
        produced: tr.produced_output(),
    }
}

/// `\0`-separated `event-type, payload` pairs → valid event-stream frames.
fn bedrock_frames(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut parts = payload.split(|&b| b == 0);
    while let Some(kind) = parts.next() {
        let body = parts.next().unwrap_or_default();
        let kind = String::from_utf8_lossy(kind);
        match kind.strip_prefix('!') {
            Some(exc) => out.extend(exception_frame(exc, &String::from_utf8_lossy(body))),
            None => out.extend(event_frame(&kind, body)),
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT || data.is_empty() {
        return;
    }
    let flags = data[0];
    let dialects = one_per_dialect();
    let p = dialects[usize::from(flags & 0x0f) % dialects.len()];
    let include_usage = flags & 0x10 != 0;
    let abort = flags & 0x20 != 0;
    let (cuts, payload) = cut_points(&data[1..]);
    let framed;
    let payload = if flags & 0x40 != 0 && p.dialect.name() == "bedrock" {
        framed = bedrock_frames(payload);
        &framed[..]
    } else {
        payload
    };
    let split = run(p, include_usage, abort, &chunks_at(payload, &cuts));
    let whole = run(p, include_usage, abort, &[payload]);
    assert_eq!(
        split,
        whole,
        "{}: a chunk split changed the stream",
        p.dialect.name()
    );
});
