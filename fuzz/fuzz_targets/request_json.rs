//! Client request bodies: chat completions, embeddings and image generation, then every
//! provider's request builder on whatever validated.
//!
//! Properties: no panic; a validated chat request's forwarded bytes (`raw`) parse to the
//! validated body; every built upstream JSON body parses.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use loopgate::proxy::request::{parse_chat, parse_model_call};
use loopgate_fuzz::{providers, MAX_INPUT};
use serde_json::Value;

fn check_built(body: &[u8], what: &str) {
    if body.is_empty() {
        return;
    }
    if let Err(e) = serde_json::from_slice::<Value>(body) {
        panic!(
            "{what}: built body is not JSON ({e}): {:?}",
            String::from_utf8_lossy(body)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    for model_override in [None, Some("override-model")] {
        if let Ok(req) = parse_chat(Bytes::copy_from_slice(data), model_override) {
            let reparsed: Value =
                serde_json::from_slice(&req.raw).expect("forwarded chat bytes parse");
            assert_eq!(
                reparsed,
                Value::Object(req.body.clone()),
                "forwarded bytes differ from the validated body"
            );
            if let Some(m) = model_override {
                assert_eq!(req.model, m);
            }
            for p in providers() {
                let t = p.target("native-model", req.stream);
                if let Ok(up) = p.dialect.build_chat(&req, &t) {
                    check_built(&up.body, &p.profile.name);
                }
            }
        }
        for endpoint in ["embeddings", "images"] {
            if let Ok((body, _model)) = parse_model_call(data, model_override, endpoint) {
                for p in providers() {
                    let t = p.target("native-model", false);
                    let built = if endpoint == "embeddings" {
                        p.dialect.build_embeddings(&body, &t)
                    } else {
                        p.dialect.build_images(&body, &t)
                    };
                    if let Ok(up) = built {
                        check_built(&up.body, &p.profile.name);
                    }
                }
            }
        }
    }
});
