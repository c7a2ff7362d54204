//! Vertex AI: Gemini models (`dialect = "vertex"`) and Claude models
//! (`dialect = "vertex-anthropic"`) behind Google Cloud's regional endpoints.
//!
//! Bodies and streams are the Gemini and Anthropic ones (this module only adds the
//! Vertex paths and Claude's `anthropic_version` body field); authentication is a
//! service-account OAuth2 token, see `crate::providers::google_oauth`.
//!
//! The project and location come from the profile's `extra` table (`project`,
//! `location`, usually `${VERTEX_PROJECT}` and `${VERTEX_LOCATION:-us-central1}`).

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::anthropic::{self, Flavor};
use super::gemini::{self, path_model, GeminiStream};
use super::{
    ChatRequest, Dialect, DialectError, StreamTranslator, Target, Translated, UpstreamFailure,
    UpstreamRequest, Usage,
};
use crate::providers::ProviderProfile;

/// Gemini models on Vertex AI.
pub struct Vertex;
/// Anthropic (Claude) models on Vertex AI.
pub struct VertexAnthropic;

pub const DEFAULT_LOCATION: &str = "us-central1";

/// The Vertex AI base URL for a location (`global` has no regional host).
pub fn base_url_for(location: &str) -> String {
    if location.is_empty() || location == "global" {
        "https://aiplatform.googleapis.com".to_string()
    } else {
        format!("https://{location}-aiplatform.googleapis.com")
    }
}

/// `(project, location)` from the profile's `extra`.
pub fn project_location(profile: &ProviderProfile) -> Result<(&str, &str), DialectError> {
    let project = profile.extra.project.as_deref().ok_or_else(|| {
        DialectError::unsupported(
            format!(
                "provider '{}' has no Vertex AI project configured (set VERTEX_AI_PROJECT_ID)",
                profile.name
            ),
            None,
        )
    })?;
    let location = profile
        .extra
        .location
        .as_deref()
        .unwrap_or(DEFAULT_LOCATION);
    let ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if !ok(project) || !ok(location) {
        return Err(DialectError::unsupported(
            format!(
                "provider '{}' has an invalid Vertex AI project or location",
                profile.name
            ),
            None,
        ));
    }
    Ok((project, location))
}

/// `{base}/v1/projects/{p}/locations/{l}/publishers/{publisher}/models/{model}:{method}`
fn model_path(t: &Target, publisher: &str, method: &str) -> Result<String, DialectError> {
    let (project, location) = project_location(t.profile)?;
    let ver = t.profile.extra.api_version.as_deref().unwrap_or("v1");
    let template = format!(
        "/{ver}/projects/{project}/locations/{location}/publishers/{publisher}/models/{}:{method}",
        path_model(t.model)
    );
    Ok(t.profile.path_for(t.endpoint, &template, t.model))
}

fn json_request(path: String, body: &Value) -> Result<UpstreamRequest, DialectError> {
    Ok(UpstreamRequest {
        method: "POST",
        path,
        headers: vec![("content-type".into(), "application/json".into())],
        body: Bytes::from(
            serde_json::to_vec(body).map_err(|e| DialectError::Malformed(e.to_string()))?,
        ),
    })
}

impl Dialect for Vertex {
    fn name(&self) -> &'static str {
        "vertex"
    }

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError> {
        let body = gemini::build_body(req, t)?;
        let method = if t.stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        json_request(model_path(t, "google", method)?, &Value::Object(body))
    }

    fn translate_chat(
        &self,
        body: &[u8],
        t: &Target,
        _req: &ChatRequest,
    ) -> Result<Translated, DialectError> {
        gemini::translate_body(body, t)
    }

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(GeminiStream::new(t, req, None))
    }

    fn classify_error(&self, status: u16, body: &[u8]) -> UpstreamFailure {
        gemini::classify(status, body)
    }

    /// Vertex text embeddings (`:predict`), which, unlike the Gemini API, report tokens.
    fn build_embeddings(
        &self,
        body: &Map<String, Value>,
        t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        let inputs = gemini::embedding_inputs(body)?;
        let instances: Vec<Value> = inputs
            .iter()
            .map(|s| {
                let mut i = json!({"content": s});
                if let Some(task) = t.profile.extra.embedding_task_type.as_deref() {
                    i["task_type"] = Value::String(task.to_string());
                }
                i
            })
            .collect();
        let mut req = json!({"instances": instances});
        if let Some(d) = body.get("dimensions").and_then(Value::as_u64) {
            req["parameters"] = json!({"outputDimensionality": d});
        }
        json_request(model_path(t, "google", "predict")?, &req)
    }

    fn translate_embeddings(&self, body: &[u8], t: &Target) -> Result<Translated, DialectError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        if let Some(msg) = v
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(Value::as_str)
        {
            return Err(DialectError::Upstream(msg.chars().take(2000).collect()));
        }
        let preds = v
            .get("predictions")
            .and_then(Value::as_array)
            .ok_or_else(|| {
                DialectError::Malformed("embeddings response has no predictions array".into())
            })?;
        let mut tokens = 0;
        let mut counted = !preds.is_empty();
        let mut vectors = Vec::with_capacity(preds.len());
        for p in preds {
            let e = p.get("embeddings").unwrap_or(&Value::Null);
            match e
                .get("statistics")
                .and_then(|s| s.get("token_count"))
                .and_then(Value::as_f64)
            {
                Some(n) => tokens += n as u64,
                None => counted = false,
            }
            vectors.push(e.get("values").unwrap_or(&Value::Null));
        }
        let usage = Usage {
            prompt_tokens: tokens,
            reported: counted,
            ..Usage::default()
        };
        gemini::embeddings_response(&vectors, t.model, usage)
    }
}

impl Dialect for VertexAnthropic {
    fn name(&self) -> &'static str {
        "vertex-anthropic"
    }

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError> {
        let body = anthropic::build_body(req, t, Flavor::Vertex)?;
        let method = if t.stream {
            "streamRawPredict"
        } else {
            "rawPredict"
        };
        let mut up = json_request(model_path(t, "anthropic", method)?, &Value::Object(body))?;
        if t.stream {
            up.headers
                .push(("accept".into(), "text/event-stream".into()));
        }
        Ok(up)
    }

    fn translate_chat(
        &self,
        body: &[u8],
        t: &Target,
        req: &ChatRequest,
    ) -> Result<Translated, DialectError> {
        anthropic::translate_body(body, t, super::forced_json_schema(&req.body).is_some())
    }

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(anthropic::AnthropicStream::new(t, req))
    }

    /// Claude on Vertex answers with Anthropic error bodies from the model and Google
    /// ones from the platform (quota, auth): both are understood.
    fn classify_error(&self, status: u16, body: &[u8]) -> UpstreamFailure {
        let a = anthropic::classify(status, body);
        if a.retryable {
            return a;
        }
        gemini::classify(status, body)
    }
}

#[cfg(test)]
mod tests {
    use super::super::anthropic::test_support::*;
    use super::*;
    use crate::providers::Endpoint;

    const GEMINI: &str = r#"
name = "vertex"
dialect = "vertex"
base_url = "https://us-east5-aiplatform.googleapis.com"
auth = "google_oauth"
activate_env = "GOOGLE_APPLICATION_CREDENTIALS"
model_in_body = false
[extra]
project = "my-proj"
location = "us-east5"
"#;

    const CLAUDE: &str = r#"
name = "vertex-anthropic"
dialect = "vertex-anthropic"
base_url = "https://aiplatform.googleapis.com"
auth = "google_oauth"
activate_env = "GOOGLE_APPLICATION_CREDENTIALS"
model_in_body = false
[extra]
project = "my-proj"
location = "global"
"#;

    #[test]
    fn gemini_paths_and_body() {
        let p = profile(GEMINI);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let req =
            request(json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10}));
        let up = Vertex
            .build_chat(&req, &target(&p, &e, "gemini-2.5-pro", false))
            .unwrap();
        assert_eq!(
            up.path,
            "/v1/projects/my-proj/locations/us-east5/publishers/google/models/gemini-2.5-pro:generateContent"
        );
        let v: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(v["contents"][0]["parts"][0]["text"], "Hi");
        assert_eq!(v["generationConfig"]["maxOutputTokens"], 10);
        let up = Vertex
            .build_chat(&req, &target(&p, &e, "gemini-2.5-pro", true))
            .unwrap();
        assert!(up
            .path
            .ends_with("/models/gemini-2.5-pro:streamGenerateContent?alt=sse"));
    }

    #[test]
    fn claude_paths_and_body() {
        let p = profile(CLAUDE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let req = request(
            json!({"model": "claude-sonnet-4-5@20250929", "messages": [{"role": "user", "content": "Hi"}]}),
        );
        let up = VertexAnthropic
            .build_chat(&req, &target(&p, &e, "claude-sonnet-4-5@20250929", true))
            .unwrap();
        assert_eq!(
            up.path,
            "/v1/projects/my-proj/locations/global/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"
        );
        let v: Value = serde_json::from_slice(&up.body).unwrap();
        assert!(v.get("model").is_none());
        assert_eq!(v["anthropic_version"], "vertex-2023-10-16");
        assert_eq!(v["stream"], true);
        assert_eq!(v["max_tokens"], 8192);
        assert!(!up.headers.iter().any(|(k, _)| k == "anthropic-version"));
        let up = VertexAnthropic
            .build_chat(&req, &target(&p, &e, "claude-sonnet-4-5@20250929", false))
            .unwrap();
        assert!(up.path.ends_with(":rawPredict"));
    }

    #[test]
    fn base_urls_and_missing_project() {
        assert_eq!(
            base_url_for("europe-west1"),
            "https://europe-west1-aiplatform.googleapis.com"
        );
        assert_eq!(base_url_for("global"), "https://aiplatform.googleapis.com");
        let p = profile(&GEMINI.replace("project = \"my-proj\"", "project = \"\""));
        let e = Endpoint::parse(&p.base_url).unwrap();
        let req = request(json!({"messages": [{"role": "user", "content": "Hi"}]}));
        assert!(matches!(
            Vertex.build_chat(&req, &target(&p, &e, "gemini-2.5-pro", false)),
            Err(DialectError::Unsupported { .. })
        ));
        let p = profile(&GEMINI.replace("project = \"my-proj\"", "project = \"a/b\""));
        assert!(project_location(&p).is_err());
    }

    #[test]
    fn claude_stream_and_errors_reuse_anthropic() {
        let p = profile(CLAUDE);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = target(&p, &e, "claude-sonnet-4-5", true);
        let req = request(json!({"messages": [], "stream": true}));
        let input = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":7,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hi\"}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
        );
        let (out, results, usage) = run(VertexAnthropic.chat_stream(&t, &req), &[input.as_bytes()]);
        assert!(results.iter().all(Result::is_ok));
        let (content, _, fin) = reassemble(&events(&out));
        assert_eq!((content.as_str(), fin), ("Hi", vec!["stop".to_string()]));
        assert_eq!(usage.total(), 9);
        let f = VertexAnthropic.classify_error(
            429,
            br#"{"error":{"code":429,"message":"Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert!(f.retryable);
        let f = VertexAnthropic.classify_error(
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(f.code, "overloaded");
    }

    #[test]
    fn embeddings_predict() {
        let p = profile(GEMINI);
        let e = Endpoint::parse(&p.base_url).unwrap();
        let t = target(&p, &e, "text-embedding-005", false);
        let body = json!({"input": "hello", "dimensions": 256});
        let up = Vertex
            .build_embeddings(body.as_object().unwrap(), &t)
            .unwrap();
        assert!(up
            .path
            .ends_with("/publishers/google/models/text-embedding-005:predict"));
        let v: Value = serde_json::from_slice(&up.body).unwrap();
        assert_eq!(
            v,
            json!({"instances": [{"content": "hello"}], "parameters": {"outputDimensionality": 256}})
        );
        let resp = br#"{"predictions":[{"embeddings":{"statistics":{"truncated":false,"token_count":3},"values":[0.1,-0.2]}}],
            "metadata":{"billableCharacterCount":5}}"#;
        let tr = Vertex.translate_embeddings(resp, &t).unwrap();
        assert_eq!((tr.usage.prompt_tokens, tr.usage.reported), (3, true));
        let v: Value = serde_json::from_slice(&tr.body).unwrap();
        assert_eq!(v["data"][0]["embedding"], json!([0.1, -0.2]));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
    }
}

#[cfg(test)]
mod profile_tests {
    use crate::providers::{AuthScheme, ProviderProfile};

    #[test]
    fn shipped_profiles_parse() {
        for (file, text, dialect) in [
            (
                "anthropic.toml",
                include_str!("../../filters/anthropic.toml"),
                "anthropic",
            ),
            (
                "gemini.toml",
                include_str!("../../filters/gemini.toml"),
                "gemini",
            ),
            (
                "vertex.toml",
                include_str!("../../filters/vertex.toml"),
                "vertex",
            ),
            (
                "vertex-anthropic.toml",
                include_str!("../../filters/vertex-anthropic.toml"),
                "vertex-anthropic",
            ),
        ] {
            let p = ProviderProfile::parse(text, file).unwrap();
            assert_eq!(p.dialect.as_str(), dialect);
            if dialect.starts_with("vertex") {
                assert_eq!(p.auth, AuthScheme::GoogleOauth);
                assert!(!p.model_in_body);
                assert!(
                    p.base_url.ends_with("-aiplatform.googleapis.com"),
                    "{}",
                    p.base_url
                );
            }
        }
    }
}
