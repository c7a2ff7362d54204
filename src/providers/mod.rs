//! Provider profiles: one TOML file per provider in `filters/`.
//!
//! A profile is data: which dialect speaks to the provider, where it lives, how it
//! authenticates, which env var switches it on, and which request parameters it does
//! not accept. Adding an OpenAI-compatible provider is adding a file.
//!
//! String values may reference the environment as `${VAR}` or `${VAR:-default}`;
//! they are expanded when the profile is loaded (and again on every reload).

pub mod auth;
pub mod aws_chain;
pub mod google_oauth;
pub mod sigv4;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

pub use crate::upstream::{Endpoint, UpstreamRequest};

pub use auth::{SignError, Signer};

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// How a provider authenticates requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum AuthScheme {
    /// `Authorization: Bearer <key>`
    #[default]
    Bearer,
    /// The key in a named header (`auth_header`), e.g. `api-key`, `x-api-key`, `x-goog-api-key`.
    Header,
    /// No authentication (local Ollama).
    None,
    /// AWS Signature Version 4 (Bedrock); a Bedrock API key falls back to bearer.
    Sigv4,
    /// Google service-account OAuth2 access token (Vertex AI).
    GoogleOauth,
}

/// The API family a provider speaks, i.e. which `dialect` module translates for it.
/// A closed set: a profile naming an unknown dialect fails to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum DialectKind {
    /// OpenAI Chat Completions and its many compatible APIs.
    #[serde(rename = "openai")]
    OpenAi,
    /// Anthropic Messages.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// Google Gemini API (generateContent).
    #[serde(rename = "gemini")]
    Gemini,
    /// Gemini on Vertex AI.
    #[serde(rename = "vertex")]
    Vertex,
    /// Claude on Vertex AI (rawPredict).
    #[serde(rename = "vertex-anthropic")]
    VertexAnthropic,
    /// Amazon Bedrock Converse.
    #[serde(rename = "bedrock")]
    Bedrock,
    /// Cohere v2 chat.
    #[serde(rename = "cohere")]
    Cohere,
    /// Ollama native /api/chat.
    #[serde(rename = "ollama")]
    Ollama,
    /// Fireworks FLUX image generation.
    #[serde(rename = "fireworks")]
    Fireworks,
    /// Hugging Face feature-extraction embeddings.
    #[serde(rename = "huggingface")]
    HuggingFace,
    /// Replicate predictions.
    #[serde(rename = "replicate")]
    Replicate,
}

impl DialectKind {
    /// Every dialect, in the order the docs list them.
    pub const ALL: [DialectKind; 11] = [
        DialectKind::OpenAi,
        DialectKind::Anthropic,
        DialectKind::Gemini,
        DialectKind::Vertex,
        DialectKind::VertexAnthropic,
        DialectKind::Bedrock,
        DialectKind::Cohere,
        DialectKind::Ollama,
        DialectKind::Fireworks,
        DialectKind::HuggingFace,
        DialectKind::Replicate,
    ];

    /// The name a profile writes in its `dialect` key.
    pub fn as_str(self) -> &'static str {
        match self {
            DialectKind::OpenAi => "openai",
            DialectKind::Anthropic => "anthropic",
            DialectKind::Gemini => "gemini",
            DialectKind::Vertex => "vertex",
            DialectKind::VertexAnthropic => "vertex-anthropic",
            DialectKind::Bedrock => "bedrock",
            DialectKind::Cohere => "cohere",
            DialectKind::Ollama => "ollama",
            DialectKind::Fireworks => "fireworks",
            DialectKind::HuggingFace => "huggingface",
            DialectKind::Replicate => "replicate",
        }
    }
}

impl fmt::Display for DialectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A provider profile as written in `filters/<name>.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderProfile {
    /// Provider id used in `provider/model`, `x-provider`, metrics and traces.
    pub name: String,
    #[serde(default)]
    pub display_name: Option<String>,
    /// The API family the provider speaks.
    pub dialect: DialectKind,
    /// Base URL including any path prefix, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Env var that overrides `base_url` (private endpoint, local mock).
    #[serde(default)]
    pub base_url_env: Option<String>,
    /// Other ids accepted in `provider/model` and the provider header (`azure-openai`).
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Env var holding the API key, or a list in precedence order (the first one set
    /// wins, e.g. the common name then the vendor SDK's own). Never logged.
    #[serde(default)]
    pub api_key_env: Option<OneOrMany>,
    /// Env var whose presence activates the provider (or a list: any one of them
    /// activates it, e.g. AWS keys or a Bedrock API key); defaults to `api_key_env`.
    #[serde(default)]
    pub activate_env: Option<OneOrMany>,
    #[serde(default)]
    pub auth: AuthScheme,
    /// Header name for `auth = "header"`.
    #[serde(default)]
    pub auth_header: Option<String>,
    /// Model-name glob patterns (`*` wildcard) this provider serves.
    #[serde(default)]
    pub models: Vec<String>,
    /// `litellm_provider` names of this provider's entries in the model catalog.
    #[serde(default)]
    pub catalog_providers: Vec<String>,
    /// Higher wins when several active providers match a model name.
    #[serde(default)]
    pub priority: i32,
    /// Request parameters the provider rejects; dropped before sending.
    #[serde(default)]
    pub unsupported_params: Vec<String>,
    /// Parameters the provider spells differently: `from = "to"`.
    #[serde(default)]
    pub rename_params: BTreeMap<String, String>,
    /// Whether the provider honours `stream_options.include_usage`.
    #[serde(default = "yes")]
    pub stream_usage: bool,
    /// Chat path relative to `base_url`; `{model}` is replaced by the model id.
    #[serde(default = "default_chat_path")]
    pub chat_path: String,
    #[serde(default)]
    pub embeddings_path: Option<String>,
    #[serde(default)]
    pub images_path: Option<String>,
    /// Query string appended to every path (e.g. Azure's `api-version=...`).
    #[serde(default)]
    pub query: Option<String>,
    /// Static headers added to every request.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Per-read upstream timeout; reasoning models need minutes.
    #[serde(default)]
    pub read_timeout_secs: Option<u64>,
    /// Whether the model id is sent in the body (`false` for Azure deployments, Vertex).
    #[serde(default = "yes")]
    pub model_in_body: bool,
    /// Dialect-specific settings (region, project, location, API versions, ...).
    #[serde(default)]
    pub extra: DialectSettings,
}

/// Dialect- and signer-specific settings of a profile (`[extra]` in its TOML file). Typed so
/// a misspelt key fails the load instead of being ignored. String values may reference the
/// environment (`${VAR}`); one that expands to nothing counts as unset.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialectSettings {
    /// `anthropic-version` header (Anthropic) or body field (Claude on Vertex).
    #[serde(default)]
    pub anthropic_version: Option<String>,
    /// `anthropic-beta` header (Anthropic).
    #[serde(default)]
    pub anthropic_beta: Option<String>,
    /// API version in the path (Gemini `v1beta`, Vertex `v1`).
    #[serde(default)]
    pub api_version: Option<String>,
    /// Embeddings task type (Gemini, Vertex), e.g. `RETRIEVAL_DOCUMENT`.
    #[serde(default)]
    pub embedding_task_type: Option<String>,
    /// Default `input_type` of `/v2/embed` (Cohere).
    #[serde(default)]
    pub embed_input_type: Option<String>,
    /// Google Cloud project (Vertex).
    #[serde(default)]
    pub project: Option<String>,
    /// Google Cloud location (Vertex), e.g. `us-central1`.
    #[serde(default)]
    pub location: Option<String>,
    /// Service-account JSON file (Google OAuth).
    #[serde(default)]
    pub credentials_file: Option<String>,
    /// Service-account JSON inline (Google OAuth).
    #[serde(default)]
    pub credentials_json: Option<String>,
    /// Token endpoint override (Google OAuth; private access, tests).
    #[serde(default)]
    pub token_uri: Option<String>,
    /// OAuth scope override (Google OAuth).
    #[serde(default)]
    pub oauth_scope: Option<String>,
    /// Region signed for when the host names none (SigV4).
    #[serde(default)]
    pub region: Option<String>,
    /// Service name signed for (SigV4), `bedrock`.
    #[serde(default)]
    pub service: Option<String>,
    /// Feature-extraction path relative to the inference root (Hugging Face).
    #[serde(default)]
    pub feature_extraction_path: Option<String>,
    /// Inference root override (Hugging Face).
    #[serde(default)]
    pub inference_root: Option<String>,
    /// Seconds to wait synchronously for a prediction (Replicate `Prefer: wait`).
    #[serde(default)]
    pub wait_secs: Option<u64>,
    /// `Cancel-After` for predictions the gateway stopped waiting for (Replicate).
    #[serde(default)]
    pub cancel_after: Option<String>,
    /// The input field a Replicate model takes the token limit in.
    #[serde(default)]
    pub max_tokens_param: Option<String>,
}

impl DialectSettings {
    fn expand_env(&mut self) {
        for v in [
            &mut self.anthropic_version,
            &mut self.anthropic_beta,
            &mut self.api_version,
            &mut self.embedding_task_type,
            &mut self.embed_input_type,
            &mut self.project,
            &mut self.location,
            &mut self.credentials_file,
            &mut self.credentials_json,
            &mut self.token_uri,
            &mut self.oauth_scope,
            &mut self.region,
            &mut self.service,
            &mut self.feature_extraction_path,
            &mut self.inference_root,
            &mut self.cancel_after,
            &mut self.max_tokens_param,
        ] {
            if let Some(s) = v.take() {
                let s = expand_env(&s);
                *v = (!s.is_empty()).then_some(s);
            }
        }
    }
}

/// A string or a list of strings in TOML.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn names(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(v) => vec![v.as_str()],
            OneOrMany::Many(vs) => vs.iter().map(String::as_str).collect(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_chat_path() -> String {
    "/chat/completions".to_string()
}

impl ProviderProfile {
    pub fn parse(text: &str, file: &str) -> Result<Self, ProfileError> {
        let mut p: ProviderProfile = toml::from_str(text).map_err(|e| ProfileError::Invalid {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        p.expand_env();
        p.validate(file)?;
        Ok(p)
    }

    fn validate(&self, file: &str) -> Result<(), ProfileError> {
        let bad = |message: String| ProfileError::Invalid {
            file: file.to_string(),
            message,
        };
        let id_ok = |n: &str| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        };
        if let Some(n) = std::iter::once(&self.name)
            .chain(&self.aliases)
            .find(|n| !id_ok(n))
        {
            return Err(bad(format!(
                "name or alias '{n}' must be non-empty [a-z0-9_-]"
            )));
        }
        if self.auth == AuthScheme::Header && self.auth_header.is_none() {
            return Err(bad("auth = \"header\" needs auth_header".into()));
        }
        if matches!(self.auth, AuthScheme::Bearer | AuthScheme::Header)
            && self.api_key_env.is_none()
        {
            return Err(bad("auth needs api_key_env".into()));
        }
        if !self.chat_path.starts_with('/') {
            return Err(bad("chat_path must start with '/'".into()));
        }
        Ok(())
    }

    fn expand_env(&mut self) {
        self.base_url = expand_env(&self.base_url);
        if let Some(q) = &self.query {
            self.query = Some(expand_env(q));
        }
        for v in self.headers.values_mut() {
            *v = expand_env(v);
        }
        self.extra.expand_env();
    }

    /// The (first) env var that switches this provider on.
    pub fn activation_var(&self) -> Option<&str> {
        self.activation_vars().into_iter().next()
    }

    /// Every env var that switches this provider on (any one suffices).
    pub fn activation_vars(&self) -> Vec<&str> {
        match &self.activate_env {
            Some(v) => v.names(),
            None => self.api_key_vars(),
        }
    }

    /// The API key variables in precedence order.
    pub fn api_key_vars(&self) -> Vec<&str> {
        self.api_key_env
            .as_ref()
            .map(OneOrMany::names)
            .unwrap_or_default()
    }

    /// The API key: the first of `api_key_vars` that is set and non-empty.
    pub fn api_key(&self) -> Option<Secret> {
        self.api_key_vars()
            .into_iter()
            .find_map(|v| std::env::var(v).ok().filter(|x| !x.is_empty()))
            .map(Secret::new)
    }

    /// The id and every alias.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }

    /// True when one of the activation vars is set and non-empty.
    pub fn is_activated(&self) -> bool {
        self.activation_vars()
            .iter()
            .any(|v| std::env::var(v).map(|x| !x.is_empty()).unwrap_or(false))
    }

    /// True when a runtime API key alone (`POST /v1/providers/{name}/keys`) can activate
    /// this provider: it authenticates with a bearer or header API key, nothing but that
    /// key's variable activates it (no region, project or host variable), and its base URL
    /// resolves without one (Azure's needs its endpoint variable set).
    pub fn key_activatable(&self) -> bool {
        let keyed = matches!(self.auth, AuthScheme::Bearer | AuthScheme::Header);
        let keys = self.api_key_vars();
        let only_key = match &self.activate_env {
            None => true,
            Some(v) => v.names().iter().all(|n| keys.contains(n)),
        };
        keyed && only_key && Endpoint::parse(&self.effective_base_url()).is_ok()
    }

    /// True when `model` matches one of the profile's patterns.
    pub fn matches_model(&self, model: &str) -> bool {
        self.models.iter().any(|p| glob_match(p, model))
    }

    /// Effective base URL: the `base_url_env` override if set, else `base_url`.
    pub fn effective_base_url(&self) -> String {
        self.base_url_env
            .as_deref()
            .and_then(|v| std::env::var(v).ok())
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| self.base_url.clone())
    }

    /// Path (with base prefix and query) for a template such as `chat_path`.
    pub fn path_for(&self, endpoint: &Endpoint, template: &str, model: &str) -> String {
        let mut path =
            String::with_capacity(endpoint.base_path.len() + template.len() + model.len() + 32);
        path.push_str(&endpoint.base_path);
        path.push_str(&template.replace("{model}", model));
        if let Some(q) = &self.query {
            path.push(if path.contains('?') { '&' } else { '?' });
            path.push_str(q);
        }
        path
    }
}

/// `${VAR}` / `${VAR:-default}` expansion; unknown vars expand to "" (or the default).
/// The default may itself hold references: `${A:-${B}}` is A, else B (documented
/// alternative variable names).
pub fn expand_env(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        // The matching `}`, counting nested `${`.
        let mut depth = 0usize;
        let mut end = None;
        let b = after.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'$' && b.get(i + 1) == Some(&b'{') {
                depth += 1;
                i += 2;
                continue;
            }
            if b[i] == b'}' {
                if depth == 0 {
                    end = Some(i);
                    break;
                }
                depth -= 1;
            }
            i += 1;
        }
        match end {
            Some(end) => {
                let spec = &after[..end];
                let (var, default) = match spec.split_once(":-") {
                    Some((v, d)) => (v, Some(d)),
                    None => (spec, None),
                };
                match std::env::var(var).ok().filter(|v| !v.is_empty()) {
                    Some(v) => out.push_str(&v),
                    None => out.push_str(&expand_env(default.unwrap_or(""))),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// `*` matches any run of characters; everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut pos = 0;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        if i == 0 {
            if !text.starts_with(part) {
                return false;
            }
            pos = part.len();
        } else if i == parts.len() - 1 {
            return text.len() >= pos + part.len() && text[pos..].ends_with(part);
        } else {
            match text[pos..].find(part) {
                Some(p) => pos += p + part.len(),
                None => return false,
            }
        }
    }
    true
}

/// A secret value: never printed by `Debug` or `Display`.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// An active provider: profile, endpoint, credentials and dialect, ready for requests.
pub struct ProviderRuntime {
    pub profile: ProviderProfile,
    pub endpoint: Endpoint,
    pub signer: Arc<dyn Signer>,
    /// Active only because it has runtime keys (its activation variable is unset): its
    /// signer has no key of its own.
    pub by_runtime_key: bool,
}

impl fmt::Debug for ProviderRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderRuntime")
            .field("name", &self.profile.name)
            .field("endpoint", &self.endpoint)
            .field("dialect", &self.profile.dialect)
            .finish()
    }
}

impl ProviderRuntime {
    pub fn name(&self) -> &str {
        &self.profile.name
    }

    /// Build the runtime for an active profile (`None` when its activation var is unset).
    pub fn activate(profile: ProviderProfile) -> Result<Option<ProviderRuntime>, ProfileError> {
        ProviderRuntime::activate_with(profile, false)
    }

    /// [`ProviderRuntime::activate`], where `runtime_key` says the provider has at least
    /// one runtime key: a profile whose activation variable is unset is then active when
    /// a key alone can activate it ([`ProviderProfile::key_activatable`]), with a signer
    /// that has no key of its own (requests sign with the runtime keys).
    pub fn activate_with(
        profile: ProviderProfile,
        runtime_key: bool,
    ) -> Result<Option<ProviderRuntime>, ProfileError> {
        let by_runtime_key = if profile.is_activated() {
            false
        } else if runtime_key && profile.key_activatable() {
            true
        } else {
            return Ok(None);
        };
        let file = format!("filters/{}.toml", profile.name);
        let endpoint = Endpoint::parse(&profile.effective_base_url()).map_err(|message| {
            ProfileError::Invalid {
                file: file.clone(),
                message,
            }
        })?;
        let signer = if by_runtime_key {
            auth::runtime_keys_only(&profile)
        } else {
            auth::signer_for(&profile).map_err(|e| ProfileError::Invalid {
                file,
                message: e.to_string(),
            })?
        };
        Ok(Some(ProviderRuntime {
            profile,
            endpoint,
            signer,
            by_runtime_key,
        }))
    }
}

/// Load every `*.toml` profile in a directory, sorted by file name.
pub fn load_profiles(dir: &Path) -> Result<Vec<ProviderProfile>, ProfileError> {
    let rd = std::fs::read_dir(dir).map_err(|e| ProfileError::Io {
        file: dir.display().to_string(),
        source: e,
    })?;
    let mut files: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    let mut out = Vec::with_capacity(files.len());
    let mut seen = std::collections::HashSet::new();
    for f in files {
        let name = f.display().to_string();
        let text = std::fs::read_to_string(&f).map_err(|e| ProfileError::Io {
            file: name.clone(),
            source: e,
        })?;
        let p = ProviderProfile::parse(&text, &name)?;
        if !seen.insert(p.name.clone()) {
            return Err(ProfileError::Invalid {
                file: name,
                message: format!("duplicate provider name '{}'", p.name),
            });
        }
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globbing() {
        assert!(glob_match("gpt-*", "gpt-4o"));
        assert!(glob_match("claude-*-haiku*", "claude-3-5-haiku-latest"));
        assert!(!glob_match("gpt-*", "chatgpt"));
        assert!(glob_match("*", "x"));
        assert!(glob_match("llama*70b", "llama-3.1-70b"));
        assert!(!glob_match("llama*70b", "llama-3.1-8b"));
    }

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("https://api.openai.com/v1/").unwrap();
        assert_eq!(
            (e.tls, e.host.as_str(), e.port, e.base_path.as_str()),
            (true, "api.openai.com", 443, "/v1")
        );
        let e = Endpoint::parse("127.0.0.1:11434").unwrap();
        assert_eq!((e.tls, e.port, e.base_path.as_str()), (false, 11434, ""));
        assert_eq!(e.host_header(), "127.0.0.1:11434");
        assert!(Endpoint::parse("ftp://x").is_err());
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("LG_TEST_X", "abc");
        assert_eq!(expand_env("a${LG_TEST_X}b${LG_NOPE:-d}"), "aabcbd");
        assert_eq!(expand_env("${LG_NOPE:-${LG_TEST_X}}/v1"), "abc/v1");
        assert_eq!(expand_env("${LG_TEST_X:-${LG_NOPE}}"), "abc");
        assert_eq!(expand_env("${LG_NOPE:-${LG_NOPE2:-z}}"), "z");
    }
}
