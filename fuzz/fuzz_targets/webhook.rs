//! The webhook's untrusted inputs: the receiver's `Retry-After` header, and on the receiving
//! side the `loopgate-signature` header and the delivery body (`verify_signature`, the
//! event envelope).
//!
//! Input: up to the first `\n` is the header value, the rest the body.
//!
//! Properties: no panic; a `Retry-After` never yields a delay beyond what its text says
//! (delay-seconds parse exactly); a forged header never verifies, while the header we sign
//! for any body always does; a delivery body that decodes re-encodes to events that parse back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use loopgate::providers::Secret;
use loopgate::rollout::webhook::{
    parse_retry_after, signature_header, verify_signature, WebhookEvent,
};
use loopgate_fuzz::MAX_INPUT;
use serde::Deserialize;

const NOW: u64 = 1_700_000_000;

#[derive(Deserialize)]
struct Delivery {
    #[allow(dead_code)]
    delivery_id: String,
    events: Vec<WebhookEvent>,
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let header = String::from_utf8_lossy(header);

    if let Some(d) = parse_retry_after(&header, NOW as i64) {
        if let Ok(secs) = header.trim().parse::<u64>() {
            assert_eq!(d.as_secs(), secs, "delay-seconds must parse exactly");
        }
    }

    let secret = Secret::new("whsec_fuzz_0123456789".into());
    let good = signature_header(&secret, NOW, body);
    // A header the fuzzer wrote verifies only if it carries our MAC for this body.
    if verify_signature(&secret, &header, body, NOW, 300).is_ok() {
        let mac = good.rsplit("v1=").next().unwrap_or_default();
        assert!(
            header.contains(mac),
            "a forged signature verified: {header:?}"
        );
    }
    assert_eq!(verify_signature(&secret, &good, body, NOW, 300), Ok(()));
    assert!(verify_signature(&secret, &good, body, NOW + 301, 300).is_err());

    if let Ok(d) = serde_json::from_slice::<Delivery>(body) {
        for e in &d.events {
            let again = serde_json::to_vec(e).expect("an event serialises");
            let back: WebhookEvent =
                serde_json::from_slice(&again).expect("re-encoded event parses");
            // `data` may hold floats, which serde_json reads back to within one ulp only.
            assert_eq!(
                (&back.id, back.kind, back.created_at),
                (&e.id, e.kind, e.created_at),
                "an event changed across encode/decode"
            );
        }
    }
});
