//! The AWS event-stream binary decoder (Bedrock ConverseStream) under arbitrary chunk
//! splits.
//!
//! The first byte's top bit asks for CRC repair: every frame's prelude and message CRC
//! are recomputed before decoding, so the fuzzer gets past the checksums into the
//! header parser.
//!
//! Properties: no panic; any split yields exactly the messages (and error) of the unsplit
//! input; every decoded message
//! re-encodes to a frame that decodes to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopgate::dialect::bedrock::eventstream::{encode_frame, EventStreamDecoder, Message};
use loopgate_fuzz::{split, MAX_INPUT};

fn decode(chunks: &[&[u8]]) -> (Vec<Message>, bool) {
    let mut d = EventStreamDecoder::new();
    let mut out = Vec::new();
    for c in chunks {
        if d.feed(c, &mut out).is_err() {
            return (out, false);
        }
    }
    (out, true)
}

/// Recompute both CRCs of every frame the length fields describe (lengths are kept).
fn repair_crcs(buf: &mut [u8]) {
    let mut pos = 0;
    while buf.len() - pos >= 16 {
        let f = &mut buf[pos..];
        let total = u32::from_be_bytes([f[0], f[1], f[2], f[3]]) as usize;
        let crc = crc32fast::hash(&f[..8]).to_be_bytes();
        f[8..12].copy_from_slice(&crc);
        if total < 16 || total > f.len() {
            return;
        }
        let crc = crc32fast::hash(&f[..total - 4]).to_be_bytes();
        f[total - 4..total].copy_from_slice(&crc);
        pos += total;
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT || data.is_empty() {
        return;
    }
    let repair = data[0] & 0x80 != 0;
    let (chunks, whole) = split(data);
    let owned;
    let (chunks, whole): (Vec<&[u8]>, &[u8]) = if repair {
        let mut w = whole.to_vec();
        repair_crcs(&mut w);
        owned = w;
        // Re-cut the repaired bytes at the same offsets.
        let mut cuts = Vec::with_capacity(chunks.len());
        let mut at = 0;
        for c in &chunks {
            cuts.push(&owned[at..at + c.len()]);
            at += c.len();
        }
        (cuts, &owned[..])
    } else {
        (chunks, whole)
    };
    let (split_msgs, split_ok) = decode(&chunks);
    let (whole_msgs, whole_ok) = decode(&[whole]);
    assert_eq!(
        split_ok, whole_ok,
        "a chunk split changed the decode outcome"
    );
    assert_eq!(split_msgs, whole_msgs, "a chunk split changed the messages");
    for m in &whole_msgs {
        let headers: Vec<(&str, _)> = m
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.clone()))
            .collect();
        let frame = encode_frame(&headers, &m.payload);
        let (again, ok) = decode(&[&frame]);
        assert!(ok, "a re-encoded message does not decode");
        assert_eq!(
            again.as_slice(),
            std::slice::from_ref(m),
            "re-encoding changed a message"
        );
    }
});
