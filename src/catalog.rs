//! The model catalog: prices, context windows and capabilities per provider model.
//!
//! `conf/catalog.json` is derived from LiteLLM's price table by `conf/derive_catalog.py`
//! (see `conf/CATALOG.md`). The committed file is compiled into the binary
//! ([`Catalog::embedded`]) so the gateway runs with no files on disk; a deployment can
//! load a newer one with [`Catalog::load`].
//!
//! Lookups sit on the request path (pricing every response, resolving bare model names),
//! so all indexes are built once at load time and a lookup is a hash probe plus a scan of
//! a handful of candidates, without allocating.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::Path;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::dialect::Usage;

/// The catalog committed in `conf/catalog.json`.
static EMBEDDED_JSON: &[u8] = include_bytes!("../conf/catalog.json");

static EMBEDDED: LazyLock<Result<Catalog, CatalogError>> =
    LazyLock::new(|| Catalog::from_json(EMBEDDED_JSON));

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog is not valid JSON: {0}")]
    Parse(String),
    #[error("catalog entry {index} ({key}): {message}")]
    Invalid {
        index: usize,
        key: String,
        message: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a model does (LiteLLM's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Chat,
    Embedding,
    ImageGeneration,
    Completion,
    Responses,
    #[serde(other)]
    Other,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Chat => "chat",
            Mode::Embedding => "embedding",
            Mode::ImageGeneration => "image_generation",
            Mode::Completion => "completion",
            Mode::Responses => "responses",
            Mode::Other => "other",
        }
    }
}

/// Long-context pricing: the whole request is billed at these prices once the prompt
/// exceeds `above` tokens (Gemini 2.5 Pro, Claude 1M, Grok, ...).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LongContext {
    pub above: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
}

/// One catalog entry. Prices are USD per token (per image for `per_image` and
/// `image_prices`); a missing price is unknown, not free.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Provider-native model id (what goes in the upstream request).
    pub name: String,
    /// LiteLLM provider name (`openai`, `azure`, `together_ai`, ...).
    pub provider: String,
    pub mode: Mode,
    /// The original key in LiteLLM's table.
    pub key: String,
    /// Azure data zone / deployment type or AWS region the price applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_read: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_creation: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub long_context: Option<LongContext>,
    /// Flat price per generated image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_image: Option<f64>,
    /// Price per output image token (gpt-image models bill tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_image_token: Option<f64>,
    /// Per-image prices by `quality/WxH` (or `WxH`), e.g. `"low/1024x1024": 0.011`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image_prices: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_input_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub vision: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub tools: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub response_schema: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub reasoning: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl ModelInfo {
    /// True when the entry carries any token or image price.
    pub fn has_prices(&self) -> bool {
        self.input.is_some()
            || self.output.is_some()
            || self.per_image.is_some()
            || !self.image_prices.is_empty()
    }

    /// USD cost of one request's token usage.
    ///
    /// `prompt_tokens` includes cache reads and writes (see [`Usage`]): uncached input is
    /// priced at the input price, cache reads at the cache-read price and cache writes at
    /// the cache-creation price (both falling back to the input price), completion
    /// tokens (reasoning included) at the output price. Embeddings bill input only.
    pub fn cost(&self, usage: &Usage) -> f64 {
        let (input, output, cache_read) = match self.long_context {
            Some(t) if usage.prompt_tokens > t.above => (
                t.input.or(self.input),
                t.output.or(self.output),
                t.cache_read.or(self.cache_read),
            ),
            _ => (self.input, self.output, self.cache_read),
        };
        let input = input.unwrap_or(0.0);
        if self.mode == Mode::Embedding {
            return usage.prompt_tokens as f64 * input;
        }
        // Clamp so inconsistent provider numbers can never produce a negative count.
        let cached = usage.cached_tokens.min(usage.prompt_tokens);
        let written = usage
            .cache_creation_tokens
            .min(usage.prompt_tokens - cached);
        let uncached = usage.prompt_tokens - cached - written;
        uncached as f64 * input
            + cached as f64 * cache_read.unwrap_or(input)
            + written as f64 * self.cache_creation.unwrap_or(input)
            + usage.completion_tokens as f64 * output.unwrap_or(0.0)
    }

    /// USD cost of `n` generated images, or `None` when the catalog has no per-image
    /// price for this model. `size` is OpenAI's `"1024x1024"` form (default
    /// `1024x1024`); `quality` is `low|medium|high|standard|hd` (default / `auto`: the
    /// model's `standard` price if it has one, else `medium`).
    pub fn image_cost(&self, n: u32, size: Option<&str>, quality: Option<&str>) -> Option<f64> {
        let size = size
            .filter(|s| !s.is_empty() && *s != "auto")
            .unwrap_or("1024x1024");
        let quality = quality.filter(|q| !q.is_empty() && *q != "auto");
        let mut label = String::with_capacity(size.len() + 10);
        let mut price_for = |q: &str| -> Option<f64> {
            label.clear();
            label.push_str(q);
            label.push('/');
            label.push_str(size);
            self.image_prices.get(label.as_str()).copied()
        };
        let price = match quality {
            Some(q) => price_for(q),
            None => price_for("standard").or_else(|| price_for("medium")),
        }
        .or_else(|| self.image_prices.get(size).copied())
        .or(self.per_image)
        // A size the table has under another quality only: the first listed quality.
        .or_else(|| {
            self.image_prices
                .iter()
                .find(|(k, _)| k.rsplit('/').next() == Some(size))
                .map(|(_, v)| *v)
        })?;
        Some(price * f64::from(n))
    }

    fn validate(&self, index: usize) -> Result<(), CatalogError> {
        let bad = |message: String| CatalogError::Invalid {
            index,
            key: self.key.clone(),
            message,
        };
        if self.name.is_empty() || self.provider.is_empty() {
            return Err(bad("empty name or provider".into()));
        }
        let lc = self
            .long_context
            .map(|t| [t.input, t.output, t.cache_read])
            .unwrap_or_default();
        let prices = [
            self.input,
            self.output,
            self.cache_read,
            self.cache_creation,
            self.per_image,
            self.output_image_token,
        ];
        let all = prices
            .iter()
            .chain(lc.iter())
            .flatten()
            .chain(self.image_prices.values());
        for p in all {
            if !p.is_finite() || *p < 0.0 {
                return Err(bad(format!(
                    "price {p} is not a finite non-negative number"
                )));
            }
        }
        Ok(())
    }
}

/// A model declared in `gateway.toml` (`[models."<id>"]`): extends the catalog, or overrides
/// the entry of the same provider and upstream name. Prices are USD per token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomModel {
    /// Provider profile that serves it (decides the provider: ids may contain `/`).
    pub provider: String,
    /// Model name sent upstream (default: the id).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub input_cost_per_token: Option<f64>,
    #[serde(default)]
    pub output_cost_per_token: Option<f64>,
    /// Price of cache-read input tokens (default: the input price).
    #[serde(default)]
    pub cached_input_cost_per_token: Option<f64>,
    /// Context window (max input tokens).
    #[serde(default)]
    pub context_window: Option<u64>,
    #[serde(default)]
    pub max_output_tokens: Option<u64>,
    #[serde(default = "chat_mode")]
    pub mode: Mode,
    /// Serve it without prices: its traces carry `cost_unknown` (never a silent 0).
    #[serde(default)]
    pub cost_unknown: bool,
    #[serde(default)]
    pub tools: bool,
    #[serde(default)]
    pub vision: bool,
}

fn chat_mode() -> Mode {
    Mode::Chat
}

impl CustomModel {
    /// The name sent upstream.
    pub fn upstream<'a>(&'a self, id: &'a str) -> &'a str {
        self.model
            .as_deref()
            .filter(|m| !m.is_empty())
            .unwrap_or(id)
    }

    /// Every problem names the entry: `models."<id>": ...`.
    pub fn validate(&self, id: &str) -> Result<(), String> {
        let name = format!("models.\"{id}\"");
        if id.trim().is_empty() {
            return Err("models: an entry has an empty id".into());
        }
        if self.provider.trim().is_empty() {
            return Err(format!(
                "{name}: `provider` is required (the profile that serves it)"
            ));
        }
        let prices = [
            ("input_cost_per_token", self.input_cost_per_token),
            ("output_cost_per_token", self.output_cost_per_token),
            (
                "cached_input_cost_per_token",
                self.cached_input_cost_per_token,
            ),
        ];
        for (field, p) in prices {
            if let Some(p) = p {
                if !(p.is_finite() && p >= 0.0) {
                    return Err(format!(
                        "{name}: {field} = {p} must be a finite price >= 0 (USD per token)"
                    ));
                }
            }
        }
        let needs_output = !matches!(self.mode, Mode::Embedding);
        let missing: Vec<&str> = [
            ("input_cost_per_token", self.input_cost_per_token.is_none()),
            (
                "output_cost_per_token",
                needs_output && self.output_cost_per_token.is_none(),
            ),
        ]
        .into_iter()
        .filter_map(|(f, m)| m.then_some(f))
        .collect();
        match (self.cost_unknown, missing.is_empty()) {
            (false, false) => Err(format!(
                "{name}: no {} (USD per token); set the price, or `cost_unknown = true` to serve it with unknown cost",
                missing.join(" / ")
            )),
            (true, true) => Err(format!(
                "{name}: `cost_unknown = true` contradicts its prices; remove one"
            )),
            _ => Ok(()),
        }
    }

    /// The catalog entry, under the catalog provider name `provider`.
    pub fn to_info(&self, id: &str, provider: &str) -> ModelInfo {
        ModelInfo {
            name: self.upstream(id).to_string(),
            provider: provider.to_string(),
            mode: self.mode,
            key: format!("config:models.{id}"),
            region: None,
            input: self.input_cost_per_token,
            output: self.output_cost_per_token,
            cache_read: self.cached_input_cost_per_token,
            cache_creation: None,
            long_context: None,
            per_image: None,
            output_image_token: None,
            image_prices: BTreeMap::new(),
            max_input_tokens: self.context_window,
            max_output_tokens: self.max_output_tokens,
            vision: self.vision,
            tools: self.tools,
            response_schema: false,
            reasoning: false,
        }
    }
}

#[derive(Deserialize)]
struct CatalogFile {
    #[serde(default)]
    source_sha256: Option<String>,
    entries: Vec<ModelInfo>,
}

/// The loaded catalog with its lookup indexes.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Sorted by (provider, name, region-less first, key).
    entries: Vec<ModelInfo>,
    /// Model id -> entries with that name (in `entries` order).
    by_name: HashMap<String, Vec<u32>>,
    /// Version-less id -> entries whose name adds a version suffix, best first
    /// (`-latest`, then the newest date).
    aliases: HashMap<String, Vec<u32>>,
    by_provider: HashMap<String, Range<usize>>,
    source_sha256: Option<String>,
}

impl Catalog {
    pub fn from_json(bytes: &[u8]) -> Result<Catalog, CatalogError> {
        let file: CatalogFile =
            serde_json::from_slice(bytes).map_err(|e| CatalogError::Parse(e.to_string()))?;
        for (i, e) in file.entries.iter().enumerate() {
            e.validate(i)?;
        }
        Ok(Catalog::build(file.entries, file.source_sha256))
    }

    pub fn load(path: &Path) -> Result<Catalog, CatalogError> {
        let bytes = std::fs::read(path).map_err(|source| CatalogError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Catalog::from_json(&bytes)
    }

    /// The catalog compiled into the binary, parsed once on first use.
    pub fn embedded() -> Result<&'static Catalog, &'static CatalogError> {
        EMBEDDED.as_ref()
    }

    /// Build the indexes from entries (any order).
    pub fn build(mut entries: Vec<ModelInfo>, source_sha256: Option<String>) -> Catalog {
        entries.sort_by(|a, b| {
            (
                a.provider.as_str(),
                a.name.as_str(),
                a.region.is_some(),
                a.region.as_deref(),
                a.key.as_str(),
            )
                .cmp(&(
                    b.provider.as_str(),
                    b.name.as_str(),
                    b.region.is_some(),
                    b.region.as_deref(),
                    b.key.as_str(),
                ))
        });
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::with_capacity(entries.len());
        let mut aliases: HashMap<String, Vec<u32>> = HashMap::new();
        let mut by_provider: HashMap<String, Range<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            let idx = i as u32;
            by_name.entry(e.name.clone()).or_default().push(idx);
            if let Some((base, _)) = strip_version(&e.name) {
                aliases.entry(base.to_string()).or_default().push(idx);
            }
            by_provider
                .entry(e.provider.clone())
                .and_modify(|r| r.end = i + 1)
                .or_insert(i..i + 1);
        }
        for list in aliases.values_mut() {
            // Best alias first: `-latest`, then the newest dated snapshot.
            list.sort_by(|&a, &b| {
                let rank = |i: u32| {
                    let e = &entries[i as usize];
                    let (_, kind) = strip_version(&e.name).unwrap_or(("", Suffix::Short));
                    (kind, e.region.is_some())
                };
                let (ka, kb) = (rank(a), rank(b));
                ka.cmp(&kb)
                    .then_with(|| entries[b as usize].name.cmp(&entries[a as usize].name))
                    .then(a.cmp(&b))
            });
        }
        Catalog {
            entries,
            by_name,
            aliases,
            by_provider,
            source_sha256,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[ModelInfo] {
        &self.entries
    }

    /// Whether some entry has exactly this model id (any provider).
    pub fn contains_name(&self, model: &str) -> bool {
        self.by_name.contains_key(model)
    }

    /// A copy with `extra` entries added; an extra entry replaces every entry of the same
    /// provider and name (custom models override the catalog).
    pub fn with_custom(&self, extra: Vec<ModelInfo>) -> Catalog {
        let replaced: std::collections::HashSet<(&str, &str)> = extra
            .iter()
            .map(|e| (e.provider.as_str(), e.name.as_str()))
            .collect();
        let mut entries: Vec<ModelInfo> = self
            .entries
            .iter()
            .filter(|e| !replaced.contains(&(e.provider.as_str(), e.name.as_str())))
            .cloned()
            .collect();
        entries.extend(extra);
        Catalog::build(entries, self.source_sha256.clone())
    }

    /// SHA-256 of the LiteLLM file the catalog was derived from.
    pub fn source_sha256(&self) -> Option<&str> {
        self.source_sha256.as_deref()
    }

    /// The entry of one of `providers` (LiteLLM names, in preference order) for `model`.
    ///
    /// Exact id first. Then, conservatively, a version suffix is tolerated: a suffix the
    /// catalog lacks (`gpt-4o-2099-01-01` → `gpt-4o`, `claude-x-latest` → `claude-x`) or
    /// one the client left out (`claude-sonnet-4-5` → its `-latest` or newest dated
    /// entry). Suffixes are `-latest`, `-YYYY-MM-DD`, `-YYYYMMDD`, `-MMDD`/`-YYMM` and
    /// `@NNN`. Regional price variants are used only when no global entry exists.
    pub fn get(&self, providers: &[String], model: &str) -> Option<&ModelInfo> {
        if let Some(e) = self.pick(self.by_name.get(model), providers) {
            return Some(e);
        }
        if let Some((base, _)) = strip_version(model) {
            if let Some(e) = self
                .pick(self.by_name.get(base), providers)
                .or_else(|| self.pick(self.aliases.get(base), providers))
            {
                return Some(e);
            }
        }
        self.pick(self.aliases.get(model), providers)
    }

    /// Entry of a specific LiteLLM provider for an exact model id (global price).
    pub fn get_exact(&self, provider: &str, model: &str) -> Option<&ModelInfo> {
        let list = self.by_name.get(model)?;
        let mut fallback = None;
        for &i in list {
            let e = &self.entries[i as usize];
            if e.provider == provider {
                if e.region.is_none() {
                    return Some(e);
                }
                fallback = fallback.or(Some(e));
            }
        }
        fallback
    }

    fn pick(&self, list: Option<&Vec<u32>>, providers: &[String]) -> Option<&ModelInfo> {
        let list = list?;
        let mut fallback = None;
        for p in providers {
            for &i in list {
                let e = &self.entries[i as usize];
                if e.provider == *p {
                    if e.region.is_none() {
                        return Some(e);
                    }
                    fallback = fallback.or(Some(e));
                }
            }
        }
        fallback
    }

    /// LiteLLM providers that list `model`, each once, in catalog order: for routing a
    /// bare model name. Exact id first; failing that, only the unambiguous version
    /// suffixes (`-latest`, dates) are tolerated, because the provider must accept the
    /// id as sent (`-0905` may be part of another host's model name).
    pub fn providers_for<'a>(&'a self, model: &str) -> impl Iterator<Item = &'a str> + 'a {
        let strong =
            |k: Option<(&str, Suffix)>| matches!(k, Some((_, Suffix::Latest | Suffix::Date)));
        let (list, aliases_only): (&'a [u32], bool) = match self.by_name.get(model) {
            Some(l) => (l, false),
            None => {
                let stripped = strip_version(model).filter(|k| strong(Some(*k)));
                match stripped.and_then(|(base, _)| self.by_name.get(base)) {
                    Some(l) => (l, false),
                    None => {
                        let l = stripped
                            .and_then(|(base, _)| self.aliases.get(base))
                            .or_else(|| self.aliases.get(model))
                            .map(Vec::as_slice)
                            .unwrap_or(&[]);
                        (l, true)
                    }
                }
            }
        };
        // Alias lists also hold `-NNNN` / `@NNN` variants: not strong enough to route on.
        let kept =
            move |i: u32| !aliases_only || strong(strip_version(&self.entries[i as usize].name));
        list.iter().enumerate().filter_map(move |(j, &i)| {
            if !kept(i) {
                return None;
            }
            let p = self.entries[i as usize].provider.as_str();
            // Lists hold a few entries: a backwards scan beats allocating a set.
            let seen = list[..j]
                .iter()
                .any(|&k| kept(k) && self.entries[k as usize].provider == p);
            (!seen).then_some(p)
        })
    }

    /// Models of `providers` with the given mode (`"chat"`, `"embedding"`,
    /// `"image_generation"`), global prices only, for `GET /v1/models`.
    pub fn models_for<'a>(
        &'a self,
        providers: &'a [String],
        mode: &'a str,
    ) -> impl Iterator<Item = &'a ModelInfo> + 'a {
        providers
            .iter()
            .flat_map(move |p| {
                self.by_provider
                    .get(p.as_str())
                    .and_then(|r| self.entries.get(r.clone()))
                    .unwrap_or(&[])
                    .iter()
            })
            .filter(move |e| e.region.is_none() && e.mode.as_str() == mode)
    }
}

/// Kinds of version suffix, in alias preference order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Suffix {
    Latest,
    Date,
    Short,
    At,
}

/// Split a trailing version suffix off a model id: `-latest`, `-YYYY-MM-DD`,
/// `-YYYYMMDD`, `-NNNN` (OpenAI `-0613`, Mistral `-2407`), `@NNN` (Vertex).
fn strip_version(model: &str) -> Option<(&str, Suffix)> {
    let b = model.as_bytes();
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if let Some(base) = model.strip_suffix("-latest") {
        return (!base.is_empty()).then_some((base, Suffix::Latest));
    }
    if let Some(at) = model.rfind('@') {
        if at > 0 && digits(&b[at + 1..]) {
            return Some((&model[..at], Suffix::At));
        }
    }
    let n = b.len();
    // -YYYY-MM-DD
    if n > 11 && b[n - 11] == b'-' && b[n - 6] == b'-' && b[n - 3] == b'-' {
        let (y, m, d) = (&b[n - 10..n - 6], &b[n - 5..n - 3], &b[n - 2..]);
        if y.starts_with(b"20") && digits(y) && digits(m) && digits(d) {
            return Some((&model[..n - 11], Suffix::Date));
        }
    }
    // -YYYYMMDD
    if n > 9 && b[n - 9] == b'-' && digits(&b[n - 8..]) && b[n - 8..n - 6] == *b"20" {
        return Some((&model[..n - 9], Suffix::Date));
    }
    // -NNNN
    if n > 5 && b[n - 5] == b'-' && digits(&b[n - 4..]) {
        return Some((&model[..n - 5], Suffix::Short));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat() -> &'static Catalog {
        match Catalog::embedded() {
            Ok(c) => c,
            Err(e) => panic!("embedded catalog: {e}"),
        }
    }

    fn p(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    #[test]
    fn embedded_catalog_loads() {
        let c = cat();
        assert!(c.len() > 3000, "{}", c.len());
        assert_eq!(c.source_sha256().map(str::len), Some(64));
    }

    #[test]
    fn suffixes() {
        assert_eq!(
            strip_version("gpt-4o-2024-08-06"),
            Some(("gpt-4o", Suffix::Date))
        );
        assert_eq!(
            strip_version("claude-3-5-sonnet-20241022"),
            Some(("claude-3-5-sonnet", Suffix::Date))
        );
        assert_eq!(
            strip_version("claude-3-5-sonnet-latest"),
            Some(("claude-3-5-sonnet", Suffix::Latest))
        );
        assert_eq!(strip_version("gpt-4-0613"), Some(("gpt-4", Suffix::Short)));
        assert_eq!(
            strip_version("jamba-1.5-large@001"),
            Some(("jamba-1.5-large", Suffix::At))
        );
        assert_eq!(strip_version("gpt-4o"), None);
        assert_eq!(strip_version("gpt-4o-mini"), None);
        assert_eq!(strip_version("text-embedding-ada-002"), None);
        assert_eq!(strip_version("llama-3.3-70b-versatile"), None);
        assert_eq!(strip_version("-latest"), None);
        assert_eq!(strip_version("x-1999-01-01"), None);
        assert_eq!(strip_version("é-2024-0é"), None);
    }

    #[test]
    fn gpt_4o_pricing() {
        let c = cat();
        let m = c.get(&p(&["openai"]), "gpt-4o").unwrap();
        assert_eq!(
            (m.input, m.output, m.cache_read),
            (Some(2.5e-6), Some(1e-5), Some(1.25e-6))
        );
        assert_eq!(
            (m.max_input_tokens, m.max_output_tokens),
            (Some(128_000), Some(16_384))
        );
        assert!(m.vision && m.tools && m.response_schema && !m.reasoning);
        // 1000 prompt tokens of which 400 cached, 200 completion tokens.
        let u = Usage {
            prompt_tokens: 1000,
            completion_tokens: 200,
            cached_tokens: 400,
            reported: true,
            ..Usage::default()
        };
        let want = 600.0 * 2.5e-6 + 400.0 * 1.25e-6 + 200.0 * 1e-5;
        assert!(close(m.cost(&u), want), "{} vs {want}", m.cost(&u));
        assert!(close(want, 0.004));
    }

    #[test]
    fn claude_cache_reads_and_writes() {
        let c = cat();
        let m = c.get(&p(&["anthropic"]), "claude-sonnet-4-5").unwrap();
        assert_eq!(m.key, "claude-sonnet-4-5");
        assert_eq!(
            (m.input, m.output, m.cache_read, m.cache_creation),
            (Some(3e-6), Some(1.5e-5), Some(3e-7), Some(3.75e-6))
        );
        // prompt_tokens includes both cache reads and cache writes.
        let u = Usage {
            prompt_tokens: 10_000,
            completion_tokens: 500,
            cached_tokens: 6_000,
            cache_creation_tokens: 3_000,
            reasoning_tokens: 100,
            reported: true,
        };
        let want = 1_000.0 * 3e-6 + 6_000.0 * 3e-7 + 3_000.0 * 3.75e-6 + 500.0 * 1.5e-5;
        assert!(close(m.cost(&u), want), "{} vs {want}", m.cost(&u));
        // Inconsistent numbers (cache counts above prompt) clamp instead of underflowing.
        let odd = Usage {
            prompt_tokens: 10,
            cached_tokens: 8,
            cache_creation_tokens: 8,
            ..Usage::default()
        };
        assert!(close(m.cost(&odd), 8.0 * 3e-7 + 2.0 * 3.75e-6));
    }

    #[test]
    fn cache_price_falls_back_to_input() {
        let c = cat();
        let m = c.get(&p(&["cerebras"]), "llama-3.3-70b").unwrap();
        assert_eq!((m.cache_read, m.cache_creation), (None, None));
        let u = Usage {
            prompt_tokens: 100,
            completion_tokens: 10,
            cached_tokens: 50,
            ..Usage::default()
        };
        assert!(close(m.cost(&u), 100.0 * 8.5e-7 + 10.0 * 1.2e-6));
    }

    #[test]
    fn embeddings_bill_input_only() {
        let c = cat();
        let m = c.get(&p(&["openai"]), "text-embedding-3-small").unwrap();
        assert_eq!(m.mode, Mode::Embedding);
        let u = Usage {
            prompt_tokens: 1_000_000,
            completion_tokens: 7,
            ..Usage::default()
        };
        assert!(close(m.cost(&u), 0.02));
    }

    #[test]
    fn long_context_tier() {
        let c = cat();
        let m = c.get(&p(&["gemini"]), "gemini-2.5-pro").unwrap();
        let short = Usage {
            prompt_tokens: 200_000,
            completion_tokens: 1_000,
            ..Usage::default()
        };
        assert!(close(m.cost(&short), 200_000.0 * 1.25e-6 + 1_000.0 * 1e-5));
        let long = Usage {
            prompt_tokens: 200_001,
            completion_tokens: 1_000,
            ..Usage::default()
        };
        assert!(close(m.cost(&long), 200_001.0 * 2.5e-6 + 1_000.0 * 1.5e-5));
    }

    #[test]
    fn version_suffix_tolerance() {
        let c = cat();
        let oa = p(&["openai"]);
        // Exact snapshot exists: its own entry.
        assert_eq!(
            c.get(&oa, "gpt-4o-2024-08-06").unwrap().key,
            "gpt-4o-2024-08-06"
        );
        // Unknown snapshot: the undated model's price.
        assert_eq!(c.get(&oa, "gpt-4o-2099-01-01").unwrap().key, "gpt-4o");
        assert_eq!(
            c.get(&oa, "gpt-4o-mini-2099-01-01").unwrap().key,
            "gpt-4o-mini"
        );
        assert_eq!(
            c.get(&oa, "gpt-3.5-turbo-0301").unwrap().key,
            "gpt-3.5-turbo"
        );
        // Never a different model family.
        assert!(c.get(&oa, "gpt-4o-mega").is_none());
        assert!(c.get(&oa, "gpt-4o-mini-turbo").is_none());
        // `-latest` the catalog lacks -> the plain id.
        let an = p(&["anthropic"]);
        assert_eq!(
            c.get(&an, "claude-sonnet-4-5-latest").unwrap().key,
            "claude-sonnet-4-5"
        );
        // Plain id the catalog lacks -> its newest dated snapshot.
        let mut synthetic = vec![
            entry("claude-3-5-sonnet-20240620", "anthropic", 3e-6),
            entry("claude-3-5-sonnet-20241022", "anthropic", 3.1e-6),
        ];
        synthetic.push(entry("mistral-large-2402", "mistral", 4e-6));
        synthetic.push(entry("mistral-large-latest", "mistral", 2e-6));
        let s = Catalog::build(synthetic, None);
        assert_eq!(
            s.get(&an, "claude-3-5-sonnet").unwrap().name,
            "claude-3-5-sonnet-20241022"
        );
        assert_eq!(
            s.get(&an, "claude-3-5-sonnet-latest").unwrap().name,
            "claude-3-5-sonnet-20241022"
        );
        let mi = p(&["mistral"]);
        assert_eq!(
            s.get(&mi, "mistral-large").unwrap().name,
            "mistral-large-latest"
        );
        assert!(s.get(&mi, "mistral-small").is_none());
        assert_eq!(
            s.providers_for("claude-3-5-sonnet").collect::<Vec<_>>(),
            vec!["anthropic"]
        );

        // Routing tolerates only unambiguous suffixes.
        assert_eq!(s.providers_for("claude-3-5-sonnet-latest").count(), 1);
        assert_eq!(s.providers_for("mistral-large").count(), 1);
        let short = Catalog::build(
            vec![
                entry("kimi-k2-0905", "novita", 1e-6),
                entry("kimi-k2-instruct", "novita", 1e-6),
            ],
            None,
        );
        assert_eq!(short.providers_for("kimi-k2").count(), 0);
        assert_eq!(short.providers_for("kimi-k2-instruct-0711").count(), 0);
        let got = short.get(&p(&["novita"]), "kimi-k2-instruct-0711");
        assert_eq!(got.map(|m| m.name.as_str()), Some("kimi-k2-instruct"));
    }

    fn entry(name: &str, provider: &str, input: f64) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            provider: provider.into(),
            mode: Mode::Chat,
            key: name.into(),
            region: None,
            input: Some(input),
            output: None,
            cache_read: None,
            cache_creation: None,
            long_context: None,
            per_image: None,
            output_image_token: None,
            image_prices: BTreeMap::new(),
            max_input_tokens: None,
            max_output_tokens: None,
            vision: false,
            tools: false,
            response_schema: false,
            reasoning: false,
        }
    }

    #[test]
    fn provider_preference_and_regions() {
        let c = cat();
        // Global Azure price, not the EU/US data-zone uplift.
        let az = c.get(&p(&["azure"]), "gpt-4o").unwrap();
        assert_eq!(
            (az.key.as_str(), az.region.as_deref()),
            ("azure/gpt-4o", None)
        );
        assert!(c.get(&p(&["azure"]), "gpt-6.1-sol").is_some());
        // Provider order in the slice expresses preference.
        assert_eq!(
            c.get(&p(&["azure", "openai"]), "gpt-4o").unwrap().provider,
            "azure"
        );
        assert_eq!(
            c.get(&p(&["openai", "azure"]), "gpt-4o").unwrap().provider,
            "openai"
        );
        assert!(c.get(&p(&["groq"]), "gpt-4o").is_none());
        assert!(c.get(&[], "gpt-4o").is_none());
        assert_eq!(c.get_exact("azure", "gpt-4o").unwrap().key, "azure/gpt-4o");
    }

    #[test]
    fn native_ids_and_providers_for() {
        let c = cat();
        let provs: Vec<&str> = c.providers_for("gpt-4o").collect();
        assert!(
            provs.contains(&"openai") && provs.contains(&"azure"),
            "{provs:?}"
        );
        assert_eq!(provs.iter().filter(|p| **p == "azure").count(), 1);
        let ds: Vec<&str> = c.providers_for("deepseek-chat").collect();
        assert!(
            ds.contains(&"deepseek") && !ds.contains(&"openai"),
            "{ds:?}"
        );
        assert!(c.providers_for("sonar-pro").any(|p| p == "perplexity"));
        assert_eq!(c.providers_for("no-such-model").count(), 0);
        // Prefix stripped to the id the provider's API expects.
        let t = c
            .get(
                &p(&["together_ai"]),
                "meta-llama/Llama-3.3-70B-Instruct-Turbo",
            )
            .unwrap();
        assert_eq!(t.key, "together_ai/meta-llama/Llama-3.3-70B-Instruct-Turbo");
        let f = c
            .get(&p(&["fireworks_ai"]), "accounts/fireworks/models/glm-5p3")
            .unwrap();
        assert_eq!(f.provider, "fireworks_ai");
        // Duplicate keys (`deepseek-chat` and `deepseek/deepseek-chat`): one entry.
        assert_eq!(
            c.entries()
                .iter()
                .filter(|e| e.provider == "deepseek" && e.name == "deepseek-chat")
                .count(),
            1
        );
    }

    #[test]
    fn models_listing() {
        let c = cat();
        let oa = p(&["openai"]);
        let chat: Vec<&str> = c.models_for(&oa, "chat").map(|m| m.name.as_str()).collect();
        assert!(chat.contains(&"gpt-4o") && chat.contains(&"o3"));
        assert!(!chat.contains(&"text-embedding-3-small"));
        let emb: Vec<&str> = c
            .models_for(&oa, "embedding")
            .map(|m| m.name.as_str())
            .collect();
        assert!(emb.contains(&"text-embedding-3-large"));
        // Regional duplicates are not listed.
        let az = p(&["azure"]);
        assert_eq!(
            c.models_for(&az, "chat")
                .filter(|m| m.name == "gpt-4o")
                .count(),
            1
        );
        assert_eq!(c.models_for(&p(&["nope"]), "chat").count(), 0);
    }

    #[test]
    fn image_prices() {
        let c = cat();
        let m = c.get(&p(&["openai"]), "gpt-image-1").unwrap();
        assert_eq!(m.image_cost(1, Some("1024x1024"), Some("low")), Some(0.011));
        assert!(close(
            m.image_cost(2, Some("1536x1024"), Some("high")).unwrap(),
            0.5
        ));
        // Default quality for gpt-image: medium.
        assert_eq!(m.image_cost(1, None, None), Some(0.042));
        let d = c.get(&p(&["azure"]), "dall-e-3").unwrap();
        assert_eq!(d.image_cost(1, Some("1024x1024"), None), Some(0.044));
        assert_eq!(d.image_cost(1, Some("1792x1024"), Some("hd")), Some(0.132));
        let x = c.get(&p(&["xai"]), "grok-imagine-image").unwrap();
        assert_eq!(x.image_cost(3, None, None), Some(0.06));
        // Chat models have no image price.
        assert_eq!(
            c.get(&p(&["openai"]), "gpt-4o")
                .unwrap()
                .image_cost(1, None, None),
            None
        );
    }

    /// The committed catalog is exactly what the derivation script makes from the
    /// source data (checked when the data and python3 are available).
    #[test]
    fn committed_catalog_is_reproducible() {
        use sha2::Digest;
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let src = root.join("../shared/data/model_prices.json");
        let Ok(data) = std::fs::read(&src) else {
            eprintln!("skipped: {} not present", src.display());
            return;
        };
        let sha = hex::encode(sha2::Sha256::digest(&data));
        assert_eq!(
            cat().source_sha256(),
            Some(sha.as_str()),
            "catalog derived from other data"
        );
        let Ok(dir) = tempfile::tempdir() else {
            return;
        };
        let out = dir.path().join("catalog.json");
        let status = std::process::Command::new("python3")
            .arg(root.join("conf/derive_catalog.py"))
            .arg(&src)
            .arg(&out)
            .status();
        match status {
            Ok(s) if s.success() => {
                let fresh = std::fs::read(&out).unwrap();
                assert!(
                    fresh == EMBEDDED_JSON,
                    "conf/catalog.json is stale: re-run conf/derive_catalog.py"
                );
            }
            Ok(s) => panic!("derive_catalog.py failed: {s}"),
            Err(e) => eprintln!("skipped: python3 not runnable: {e}"),
        }
    }

    #[test]
    fn rejects_bad_files() {
        assert!(matches!(
            Catalog::from_json(b"{"),
            Err(CatalogError::Parse(_))
        ));
        assert!(matches!(
            Catalog::from_json(b"{\"entries\":[{}]}"),
            Err(CatalogError::Parse(_))
        ));
        let neg =
            br#"{"entries":[{"name":"m","provider":"p","mode":"chat","key":"m","input":-1.0}]}"#;
        assert!(matches!(
            Catalog::from_json(neg),
            Err(CatalogError::Invalid { .. })
        ));
        let unknown_mode =
            br#"{"entries":[{"name":"m","provider":"p","mode":"video_generation","key":"m"}]}"#;
        assert_eq!(
            Catalog::from_json(unknown_mode).unwrap().entries()[0].mode,
            Mode::Other
        );
        assert!(matches!(
            Catalog::load(Path::new("/nonexistent/catalog.json")),
            Err(CatalogError::Io { .. })
        ));
    }
}
