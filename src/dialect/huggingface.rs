//! Hugging Face Inference Providers: chat goes to the OpenAI-compatible router
//! (delegated to the OpenAI dialect); embeddings go to the HF Inference feature-extraction
//! pipeline (`POST /hf-inference/models/<repo>/pipeline/feature-extraction` with
//! `{"inputs": [..]}`), whose answer is a bare JSON array of vectors.
//!
//! Inputs are always sent as an array so the answer's shape is unambiguous: one pooled
//! vector per input (`[[f32]]`). Models without a pooling layer answer with token-level
//! features (`[[[f32]]]`); choosing a pooling for them would be a guess, so that is an
//! error naming the cause. The pipeline reports no token counts: usage is 0 and marked
//! as not reported.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::openai::OpenAi;
use super::{
    ChatRequest, Dialect, DialectError, StreamTranslator, Target, Translated, UpstreamFailure,
    UpstreamRequest, Usage,
};

pub struct HuggingFace;

/// Feature-extraction path relative to the router's root (the base URL without `/v1`).
const DEFAULT_FEATURE_EXTRACTION_PATH: &str =
    "/hf-inference/models/{model}/pipeline/feature-extraction";

/// Pipeline parameters a client may add; passed through unchanged.
const NATIVE_FIELDS: &[&str] = &["truncate", "truncation_direction", "prompt_name"];

/// The Hub repo id for the HF Inference pipeline: `:hf-inference` is the only provider
/// suffix that serves it; repo ids are `[A-Za-z0-9._-]` segments joined by `/`.
fn repo_id(model: &str) -> Result<&str, DialectError> {
    let repo = match model.split_once(':') {
        None => model,
        Some((repo, "hf-inference")) => repo,
        Some((_, other)) => {
            return Err(DialectError::unsupported(
                format!("Hugging Face embeddings are served by the hf-inference provider only, not ':{other}'"),
                Some("model"),
            ))
        }
    };
    let ok = !repo.is_empty()
        && repo.split('/').all(|seg| {
            !seg.is_empty()
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        });
    if !ok {
        return Err(DialectError::unsupported(
            format!("'{model}' is not a Hugging Face Hub repo id (org/name)"),
            Some("model"),
        ));
    }
    Ok(repo)
}

/// One embedding vector: an array of numbers.
fn as_vector(v: &Value) -> Option<&Vec<Value>> {
    v.as_array()
        .filter(|a| !a.is_empty() && a.iter().all(Value::is_number))
}

impl Dialect for HuggingFace {
    fn name(&self) -> &'static str {
        "huggingface"
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
        // HF answers `{"error": "...", "estimated_time": 20.0}` while a model loads (503).
        OpenAi.classify_error(status, body)
    }

    fn build_embeddings(
        &self,
        body: &Map<String, Value>,
        t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        let inputs: Vec<Value> = match body.get("input") {
            Some(Value::String(s)) => vec![Value::String(s.clone())],
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => a.clone(),
            _ => {
                return Err(DialectError::unsupported(
                    "Hugging Face feature-extraction takes a string or a non-empty array of strings (not token arrays)",
                    Some("input"),
                ))
            }
        };
        if body.get("dimensions").is_some_and(|d| !d.is_null()) {
            return Err(DialectError::unsupported(
                "Hugging Face feature-extraction does not support 'dimensions': the vector size is fixed by the model",
                Some("dimensions"),
            ));
        }
        match body.get("encoding_format").and_then(Value::as_str) {
            // base64 is applied by the gateway to the translated floats.
            None | Some("float") | Some("base64") => {}
            Some(other) => {
                return Err(DialectError::unsupported(
                    format!("encoding_format '{other}' is not supported (use 'float' or 'base64')"),
                    Some("encoding_format"),
                ))
            }
        }
        let repo = repo_id(t.model)?;
        // OpenAI embeddings are unit length; ask the pipeline for the same unless the
        // client says otherwise.
        let normalize = body
            .get("normalize")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mut out = json!({"inputs": inputs, "normalize": normalize});
        for k in NATIVE_FIELDS {
            if let Some(v) = body.get(*k).filter(|v| !v.is_null()) {
                out[*k] = v.clone();
            }
        }
        let root = t
            .profile
            .extra
            .inference_root
            .as_deref()
            .map(str::to_string)
            .unwrap_or_else(|| {
                let b = t.endpoint.base_path.as_str();
                b.strip_suffix("/v1").unwrap_or(b).to_string()
            });
        let template = t
            .profile
            .extra
            .feature_extraction_path
            .as_deref()
            .unwrap_or(DEFAULT_FEATURE_EXTRACTION_PATH);
        Ok(UpstreamRequest {
            method: "POST",
            path: format!("{root}{}", template.replace("{model}", repo)),
            headers: vec![("content-type".into(), "application/json".into())],
            body: Bytes::from(
                serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
        })
    }

    fn translate_embeddings(&self, body: &[u8], t: &Target) -> Result<Translated, DialectError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
            let msg = err
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            return Err(DialectError::Upstream(msg));
        }
        let items = v.as_array().filter(|a| !a.is_empty()).ok_or_else(|| {
            DialectError::Malformed("feature-extraction response is not a non-empty array".into())
        })?;
        // A flat vector: a backend that unwrapped a batch of one.
        let vectors: Vec<&Vec<Value>> = if let Some(one) = as_vector(&v) {
            vec![one]
        } else if let Some(vs) = items.iter().map(as_vector).collect::<Option<Vec<_>>>() {
            vs
        } else if items.iter().all(|i| {
            i.as_array()
                .is_some_and(|t| t.iter().all(|x| as_vector(x).is_some()))
        }) {
            return Err(DialectError::Upstream(format!(
                "model '{}' returned token-level features, not one pooled vector per input; use a sentence-embedding model (e.g. sentence-transformers/*, BAAI/bge-*, intfloat/*)",
                t.model
            )));
        } else {
            return Err(DialectError::Malformed(
                "feature-extraction response is not an array of vectors".into(),
            ));
        };
        let data: Vec<Value> = vectors
            .iter()
            .enumerate()
            .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e}))
            .collect();
        let out = json!({
            "object": "list",
            "data": data,
            "model": t.model,
            // The pipeline reports no token counts: zero here, "not reported" in the trace.
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        });
        Ok(Translated {
            body: Bytes::from(
                serde_json::to_vec(&out).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
            usage: Usage::default(),
            model: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::{Endpoint, ProviderProfile};

    fn with_target<R>(model: &str, f: impl FnOnce(&Target) -> R) -> R {
        let p = ProviderProfile::parse(
            "name = \"huggingface\"\ndialect = \"huggingface\"\nbase_url = \"https://router.huggingface.co/v1\"\napi_key_env = \"HF_TOKEN\"\n",
            "test",
        )
        .unwrap();
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = Target {
            profile: &p,
            endpoint: &e,
            model,
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
    fn builds_feature_extraction_request() {
        let body = obj(json!({"model": "x", "input": "hello", "encoding_format": "base64"}));
        let up = with_target("BAAI/bge-small-en-v1.5", |t| {
            HuggingFace.build_embeddings(&body, t)
        })
        .unwrap();
        assert_eq!(
            up.path,
            "/hf-inference/models/BAAI/bge-small-en-v1.5/pipeline/feature-extraction"
        );
        let b: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(b, json!({"inputs": ["hello"], "normalize": true}));

        let body = obj(json!({"input": ["a", "b"], "truncate": true, "normalize": false}));
        let up = with_target("intfloat/e5-small-v2:hf-inference", |t| {
            HuggingFace.build_embeddings(&body, t)
        })
        .unwrap();
        assert!(up
            .path
            .starts_with("/hf-inference/models/intfloat/e5-small-v2/"));
        let b: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            b,
            json!({"inputs": ["a", "b"], "normalize": false, "truncate": true})
        );
    }

    #[test]
    fn refuses_what_the_pipeline_cannot_do() {
        for (model, body, param) in [
            (
                "a/b",
                json!({"input": "x", "dimensions": 256}),
                "dimensions",
            ),
            ("a/b", json!({"input": [[1, 2, 3]]}), "input"),
            ("a/b", json!({"input": []}), "input"),
            (
                "a/b",
                json!({"input": "x", "encoding_format": "int8"}),
                "encoding_format",
            ),
            ("a/b:together", json!({"input": "x"}), "model"),
            ("a/../b?x", json!({"input": "x"}), "model"),
        ] {
            match with_target(model, |t| {
                HuggingFace.build_embeddings(&obj(body.clone()), t)
            }) {
                Err(DialectError::Unsupported { param: p, .. }) => {
                    assert_eq!(p.as_deref(), Some(param), "{body}")
                }
                other => panic!("{model} {body}: {other:?}"),
            }
        }
    }

    #[test]
    fn translates_vectors_back() {
        let tr = with_target("a/b", |t| {
            HuggingFace.translate_embeddings(b"[[0.6,0.8],[1.0,0.0]]", t)
        })
        .unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["model"], "a/b");
        assert_eq!(
            v["data"][1],
            json!({"object": "embedding", "index": 1, "embedding": [1.0, 0.0]})
        );
        assert_eq!(v["usage"], json!({"prompt_tokens": 0, "total_tokens": 0}));
        assert!(!tr.usage.reported);
        // A flat vector is one input's embedding.
        let tr = with_target("a/b", |t| HuggingFace.translate_embeddings(b"[0.6,0.8]", t)).unwrap();
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn unpooled_and_garbage_are_errors() {
        let tokens = b"[[[0.1,0.2],[0.3,0.4]]]";
        assert!(matches!(
            with_target("bert-base-uncased/x", |t| HuggingFace.translate_embeddings(tokens, t)),
            Err(DialectError::Upstream(m)) if m.contains("token-level")
        ));
        assert!(matches!(
            with_target("a/b", |t| HuggingFace
                .translate_embeddings(br#"{"error":"Model a/b is currently loading","estimated_time":20.0}"#, t)),
            Err(DialectError::Upstream(m)) if m.contains("loading")
        ));
        for bad in [&b"nope"[..], b"[]", b"[\"a\"]", b"{}", b"[[1],[\"x\"]]"] {
            assert!(
                matches!(
                    with_target("a/b", |t| HuggingFace.translate_embeddings(bad, t)),
                    Err(DialectError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = with_target("a/b", |t| HuggingFace.translate_embeddings(&data, t));
        }
    }
}
