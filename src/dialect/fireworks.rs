//! Fireworks AI: chat and embeddings are OpenAI-compatible (delegated to the OpenAI
//! dialect); image generation goes to the FLUX `text_to_image` workflow API
//! (`POST /workflows/accounts/fireworks/models/<id>/text_to_image`, `Accept:
//! application/json` → `{"id", "base64": [..], "finishReason", "seed"}`), translated to
//! and from OpenAI `images.generations`.
//!
//! The workflow API returns image bytes only, never a hosted URL, so the OpenAI answer is
//! always `b64_json`; `response_format: "url"` is refused before any upstream call.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::openai::OpenAi;
use super::{
    ChatRequest, Dialect, DialectError, StreamTranslator, Target, Translated, UpstreamFailure,
    UpstreamRequest, Usage,
};

pub struct Fireworks;

/// Aspect ratios the FLUX workflow accepts (also what Replicate's FLUX models take).
pub const FLUX_ASPECT_RATIOS: &[&str] = &[
    "1:1", "21:9", "16:9", "3:2", "5:4", "4:5", "2:3", "9:16", "9:21", "4:3", "3:4",
];

/// Default workflow path relative to the base URL (`{model}` is the full resource name).
const DEFAULT_IMAGES_PATH: &str = "/workflows/{model}/text_to_image";

/// Fireworks-native fields a client may add to an images request; passed through.
const NATIVE_FIELDS: &[&str] = &[
    "aspect_ratio",
    "guidance_scale",
    "num_inference_steps",
    "seed",
    "safety_check",
];

/// OpenAI `size` (`"WxH"`) → the nearest allowed aspect ratio, or `None` for `auto`/absent.
///
/// Within 3% counts as the same shape (DALL·E 3's 1792x1024 is 16:9 to 1.6%); a size with
/// no close ratio is refused rather than silently changing the picture's shape.
pub fn aspect_ratio_for(
    size: Option<&str>,
    allowed: &[&str],
) -> Result<Option<String>, DialectError> {
    let Some(size) = size.filter(|s| !s.is_empty() && *s != "auto") else {
        return Ok(None);
    };
    let bad = || {
        DialectError::unsupported(
            format!(
                "size '{size}' cannot be expressed as one of this provider's aspect ratios ({})",
                allowed.join(", ")
            ),
            Some("size"),
        )
    };
    let (w, h) = size.split_once(['x', 'X']).ok_or_else(bad)?;
    let (w, h): (f64, f64) = match (w.trim().parse::<u32>(), h.trim().parse::<u32>()) {
        (Ok(w), Ok(h)) if w > 0 && h > 0 => (f64::from(w), f64::from(h)),
        _ => return Err(bad()),
    };
    let want = (w / h).ln();
    let mut best: Option<(&str, f64)> = None;
    for a in allowed {
        let Some((x, y)) = a.split_once(':') else {
            continue;
        };
        let (Ok(x), Ok(y)) = (x.parse::<f64>(), y.parse::<f64>()) else {
            continue;
        };
        let d = ((x / y).ln() - want).abs();
        if best.is_none_or(|(_, bd)| d < bd) {
            best = Some((*a, d));
        }
    }
    match best {
        // ln(1.03) ≈ 0.0296
        Some((a, d)) if d <= 0.0296 => Ok(Some(a.to_string())),
        _ => Err(bad()),
    }
}

/// `accounts/<acct>/models/<id>` as the workflow path needs it; a bare id is a Fireworks model.
fn resource_name(model: &str) -> String {
    if model.starts_with("accounts/") {
        model.to_string()
    } else {
        format!("accounts/fireworks/models/{model}")
    }
}

/// Strip a `data:image/...;base64,` prefix if the upstream sent a data URL.
pub fn strip_data_url(s: &str) -> &str {
    if s.starts_with("data:") {
        if let Some(i) = s.find(";base64,") {
            return &s[i + ";base64,".len()..];
        }
    }
    s
}

impl Dialect for Fireworks {
    fn name(&self) -> &'static str {
        "fireworks"
    }

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError> {
        OpenAi.build_chat(req, t)
    }

    fn translate_chat(
        &self,
        body: &[u8],
        t: &Target,
        req: &ChatRequest,
    ) -> Result<Translated, DialectError> {
        OpenAi.translate_chat(body, t, req)
    }

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator> {
        OpenAi.chat_stream(t, req)
    }

    fn classify_error(&self, status: u16, body: &[u8]) -> UpstreamFailure {
        OpenAi.classify_error(status, body)
    }

    fn build_embeddings(
        &self,
        body: &Map<String, Value>,
        t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        OpenAi.build_embeddings(body, t)
    }

    fn translate_embeddings(&self, body: &[u8], t: &Target) -> Result<Translated, DialectError> {
        OpenAi.translate_embeddings(body, t)
    }

    fn build_images(
        &self,
        body: &Map<String, Value>,
        t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        let prompt = body.get("prompt").and_then(Value::as_str).ok_or_else(|| {
            DialectError::unsupported("'prompt' must be a string", Some("prompt"))
        })?;
        match body.get("n") {
            None | Some(Value::Null) => {}
            Some(n) if n.as_u64() == Some(1) => {}
            Some(_) => {
                return Err(DialectError::unsupported(
                    "Fireworks text_to_image generates one image per request; send n=1 (or omit n) and repeat the request for more",
                    Some("n"),
                ))
            }
        }
        match body.get("response_format").and_then(Value::as_str) {
            None | Some("b64_json") => {}
            Some(other) => {
                return Err(DialectError::unsupported(
                    format!("Fireworks returns image bytes, not hosted URLs: response_format '{other}' is not available, use 'b64_json'"),
                    Some("response_format"),
                ))
            }
        }
        let mut out = json!({"prompt": prompt});
        if let Some(ar) =
            aspect_ratio_for(body.get("size").and_then(Value::as_str), FLUX_ASPECT_RATIOS)?
        {
            out["aspect_ratio"] = Value::String(ar);
        }
        for k in NATIVE_FIELDS {
            if let Some(v) = body.get(*k).filter(|v| !v.is_null()) {
                out[*k] = v.clone();
            }
        }
        let template = t
            .profile
            .images_path
            .as_deref()
            .unwrap_or(DEFAULT_IMAGES_PATH);
        Ok(UpstreamRequest {
            method: "POST",
            path: t
                .profile
                .path_for(t.endpoint, template, &resource_name(t.model)),
            headers: vec![
                ("content-type".into(), "application/json".into()),
                // JSON with base64 images; image/* would return one raw image.
                ("accept".into(), "application/json".into()),
            ],
            body: Bytes::from(
                serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
        })
    }

    fn translate_images(&self, body: &[u8], t: &Target) -> Result<Translated, DialectError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        let finish = v.get("finishReason").and_then(Value::as_str);
        if finish == Some("CONTENT_FILTERED") {
            return Err(DialectError::Upstream(
                "Fireworks' safety check filtered the generated image (finishReason CONTENT_FILTERED)"
                    .into(),
            ));
        }
        let images: Vec<&str> = match v.get("base64") {
            Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
            Some(Value::String(s)) => vec![s.as_str()],
            _ => {
                return Err(DialectError::Malformed(
                    "Fireworks text_to_image response has no base64 images".into(),
                ))
            }
        };
        if images.is_empty() {
            return Err(DialectError::Malformed(format!(
                "Fireworks text_to_image returned no image (finishReason {})",
                finish.unwrap_or("missing")
            )));
        }
        let data: Vec<Value> = images
            .iter()
            .map(|s| json!({"b64_json": strip_data_url(s)}))
            .collect();
        let out = json!({"created": t.created, "data": data, "output_format": "png"});
        Ok(Translated {
            body: Bytes::from(
                serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
            // Fireworks bills FLUX per inference step and reports no usage.
            usage: Usage::default(),
            model: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{Endpoint, ProviderProfile};

    fn with_target<R>(f: impl FnOnce(&Target) -> R) -> R {
        let p = ProviderProfile::parse(
            "name = \"fireworks\"\ndialect = \"fireworks\"\nbase_url = \"https://api.fireworks.ai/inference/v1\"\napi_key_env = \"FIREWORKS_API_KEY\"\nembeddings_path = \"/embeddings\"\n",
            "test",
        )
        .unwrap();
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = Target {
            profile: &p,
            endpoint: &e,
            model: "accounts/fireworks/models/flux-1-schnell-fp8",
            stream: false,
            request_id: "req-1",
            created: 1_700_000_000,
            max_output_tokens: None,
        };
        f(&t)
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn sizes_map_to_aspect_ratios() {
        let ar = |s| aspect_ratio_for(Some(s), FLUX_ASPECT_RATIOS);
        assert_eq!(ar("1024x1024").unwrap().as_deref(), Some("1:1"));
        assert_eq!(ar("1792x1024").unwrap().as_deref(), Some("16:9"));
        assert_eq!(ar("1024x1792").unwrap().as_deref(), Some("9:16"));
        assert_eq!(ar("1536x1024").unwrap().as_deref(), Some("3:2"));
        assert_eq!(ar("auto").unwrap(), None);
        assert_eq!(aspect_ratio_for(None, FLUX_ASPECT_RATIOS).unwrap(), None);
        for bad in ["4000x1000", "axb", "0x10", "1024"] {
            match ar(bad) {
                Err(DialectError::Unsupported { param, .. }) => {
                    assert_eq!(param.as_deref(), Some("size"))
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn builds_workflow_request() {
        let body = obj(
            json!({"model": "x", "prompt": "a cat", "size": "1792x1024", "n": 1,
            "response_format": "b64_json", "seed": 7, "quality": "hd"}),
        );
        let up = with_target(|t| Fireworks.build_images(&body, t)).unwrap();
        assert_eq!(
            up.path,
            "/inference/v1/workflows/accounts/fireworks/models/flux-1-schnell-fp8/text_to_image"
        );
        assert!(up
            .headers
            .contains(&("accept".to_string(), "application/json".to_string())));
        let b: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            b,
            json!({"prompt": "a cat", "aspect_ratio": "16:9", "seed": 7})
        );
        assert_eq!(
            resource_name("flux-1-dev-fp8"),
            "accounts/fireworks/models/flux-1-dev-fp8"
        );
    }

    #[test]
    fn refuses_what_the_workflow_cannot_do() {
        for (body, param) in [
            (json!({"prompt": "a", "n": 2}), "n"),
            (
                json!({"prompt": "a", "response_format": "url"}),
                "response_format",
            ),
            (json!({"prompt": "a", "size": "100x900"}), "size"),
        ] {
            match with_target(|t| Fireworks.build_images(&obj(body.clone()), t)) {
                Err(DialectError::Unsupported { param: p, .. }) => {
                    assert_eq!(p.as_deref(), Some(param))
                }
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[test]
    fn translates_images_back() {
        let resp = br#"{"id":"1234","base64":["data:image/png;base64,iVBORw0KGgo=","iVBORw0KGgp="],"finishReason":"SUCCESS","seed":42}"#;
        let tr = with_target(|t| Fireworks.translate_images(resp, t)).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["created"], 1_700_000_000u64);
        assert_eq!(v["data"][0]["b64_json"], "iVBORw0KGgo=");
        assert_eq!(v["data"][1]["b64_json"], "iVBORw0KGgp=");
        assert!(!tr.usage.reported);

        let filtered = br#"{"id":"1","base64":[],"finishReason":"CONTENT_FILTERED","seed":1}"#;
        assert!(matches!(
            with_target(|t| Fireworks.translate_images(filtered, t)),
            Err(DialectError::Upstream(m)) if m.contains("CONTENT_FILTERED")
        ));
        for bad in [&b"not json"[..], br#"{"id":"1"}"#, br#"{"base64":[]}"#] {
            assert!(matches!(
                with_target(|t| Fireworks.translate_images(bad, t)),
                Err(DialectError::Malformed(_))
            ));
        }
    }

    #[test]
    fn chat_and_embeddings_stay_openai() {
        let body = obj(json!({"model": "m", "input": ["a"]}));
        let up = with_target(|t| Fireworks.build_embeddings(&body, t)).unwrap();
        assert_eq!(up.path, "/inference/v1/embeddings");
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = with_target(|t| Fireworks.translate_images(&data, t));
        }

        #[test]
        fn any_size_string_is_mapped_or_refused(w in 0u32..5000, h in 0u32..5000) {
            let s = format!("{w}x{h}");
            if let Ok(Some(ar)) = aspect_ratio_for(Some(&s), FLUX_ASPECT_RATIOS) {
                proptest::prop_assert!(FLUX_ASPECT_RATIOS.contains(&ar.as_str()));
            }
        }
    }
}
