//! The incremental SSE and NDJSON decoders under arbitrary chunk splits.
//!
//! Properties: no panic; any split yields exactly the events (and error) of the unsplit
//! input; every decoded event re-encodes to SSE that decodes to the same event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopgate::dialect::sse::{NdjsonDecoder, SseDecoder, SseEvent};
use loopgate_fuzz::{split, MAX_INPUT};

fn sse(chunks: &[&[u8]]) -> (Vec<SseEvent>, bool) {
    let mut d = SseDecoder::new();
    let mut ev = Vec::new();
    for c in chunks {
        if d.feed(c, &mut ev).is_err() {
            return (ev, false);
        }
    }
    let ok = d.finish(&mut ev).is_ok();
    (ev, ok)
}

fn ndjson(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, bool) {
    let mut d = NdjsonDecoder::new();
    let mut lines = Vec::new();
    for c in chunks {
        if d.feed(c, &mut lines).is_err() {
            return (lines, false);
        }
    }
    d.finish(&mut lines);
    (lines, true)
}

fn encode(events: &[SseEvent]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in events {
        if !e.event.is_empty() {
            out.extend_from_slice(format!("event: {}\n", e.event).as_bytes());
        }
        for line in e.data.split('\n') {
            out.extend_from_slice(format!("data: {line}\n").as_bytes());
        }
        out.push(b'\n');
    }
    out
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let (chunks, whole) = split(data);
    let (split_events, split_ok) = sse(&chunks);
    let (whole_events, whole_ok) = sse(&[whole]);
    assert_eq!(split_ok, whole_ok, "a chunk split changed the SSE outcome");
    assert_eq!(
        split_events, whole_events,
        "a chunk split changed the SSE events"
    );
    if whole_ok {
        let (again, ok) = sse(&[&encode(&whole_events)]);
        assert!(ok, "re-encoded events do not decode");
        assert_eq!(again, whole_events, "re-encoded events decode differently");
    }
    let (split_lines, split_ok) = ndjson(&chunks);
    let (whole_lines, whole_ok) = ndjson(&[whole]);
    assert_eq!(
        split_ok, whole_ok,
        "a chunk split changed the NDJSON outcome"
    );
    assert_eq!(
        split_lines, whole_lines,
        "a chunk split changed the NDJSON lines"
    );
    for l in &whole_lines {
        assert!(!l.is_empty() && !l.contains(&b'\n'), "NDJSON line framing");
    }
});
