//! The routing table: an immutable snapshot of everything the request path reads —
//! active providers, catalog, keys, routing rules, header names. Built and validated
//! off the request path, published through an `ArcSwap`, read lock-free per request.
//! A request keeps the snapshot it started with, so a reload never changes a request
//! mid-flight.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::config::{ConfigError, GatewayConfig, RouteConfig};
use crate::providers::{self, ProviderProfile, ProviderRuntime};
use crate::store::StorageConfig;
use crate::upstream::ExchangeOptions;

use crate::auth::keys::KeyTable;

include!(concat!(env!("OUT_DIR"), "/embedded_filters.rs"));

/// Per-read upstream timeout when neither the server config nor the profile sets one.
pub const DEFAULT_READ_TIMEOUT_SECS: u64 = 120;

/// The catalog: compiled in, or loaded from `server.catalog`.
pub enum CatalogRef {
    Embedded(&'static Catalog),
    Loaded(Arc<Catalog>),
}

impl Deref for CatalogRef {
    type Target = Catalog;
    fn deref(&self) -> &Catalog {
        match self {
            CatalogRef::Embedded(c) => c,
            CatalogRef::Loaded(c) => c,
        }
    }
}

/// Header names with the configured prefix, computed once per snapshot.
#[derive(Debug, Clone)]
pub struct HeaderNames {
    pub prefix: String,
    pub session_id: String,
    pub session_name: String,
    pub session_path: String,
    pub project_id: String,
    pub user_id: String,
    /// `<prefix>-property-`
    pub property_prefix: String,
    pub provider: String,
    pub model_override: String,
    pub routing_rule: String,
    /// `<prefix>-feedback-expected`: the client announces whether it will score the request.
    pub feedback_expected: String,
    // response headers
    pub resp_provider: String,
    pub resp_model: String,
    pub resp_fallback: String,
    pub resp_request_id: String,
    pub resp_decision_id: String,
    /// The upstream provider's own request id, passed on.
    pub resp_upstream_request_id: String,
    /// `<prefix>-cache`: the cache mode (request) and outcome (response).
    pub cache: String,
}

impl HeaderNames {
    pub fn new(prefix: &str) -> HeaderNames {
        let p = prefix.to_ascii_lowercase();
        let h = |s: &str| format!("{p}-{s}");
        HeaderNames {
            session_id: h("session-id"),
            session_name: h("session-name"),
            session_path: h("session-path"),
            project_id: h("project-id"),
            user_id: h("user-id"),
            property_prefix: h("property-"),
            provider: h("provider"),
            model_override: h("model-override"),
            routing_rule: h("routing-rule"),
            feedback_expected: h("feedback-expected"),
            resp_provider: h("provider"),
            resp_model: h("model"),
            resp_fallback: h("fallback-used"),
            resp_request_id: h("request-id"),
            resp_decision_id: h("decision-id"),
            resp_upstream_request_id: h("upstream-request-id"),
            cache: h("cache"),
            prefix: p,
        }
    }
}

/// One configuration generation, ready to serve.
pub struct Runtime {
    pub version: u64,
    pub config: GatewayConfig,
    /// Active providers, in profile file order.
    pub providers: Vec<Arc<ProviderRuntime>>,
    by_name: HashMap<String, usize>,
    /// Every known profile (active or not), for precise error messages.
    pub known: Vec<ProviderProfile>,
    pub catalog: CatalogRef,
    pub keys: KeyTable,
    pub headers: HeaderNames,
    pub exchange: ExchangeOptions,
    /// No key configured and the operator allowed unauthenticated loopback use.
    pub open_access: bool,
    /// The typed `[storage]` section (capture and zero-retention settings are read per request).
    pub storage: StorageConfig,
    /// Model names the config mentions (routes, fallbacks, judge), with and without a
    /// `provider/` prefix: with the catalog, the bounded set of metric model labels.
    configured_models: HashSet<String>,
    /// Problems that do not stop serving (a route target or candidate no active provider
    /// serves, a model without a price): printed by `check`, logged by `serve` and reload.
    pub warnings: Vec<String>,
    /// The compiled `[firewall]` policies (`crate::firewall`).
    pub firewall: Arc<crate::firewall::Firewall>,
    /// Providers that had runtime keys when this snapshot was built (those whose
    /// activation variable is unset are active through them, when a key alone can
    /// activate them): the rebuild on a key change compares against it.
    pub keyed: BTreeSet<String>,
}

impl Runtime {
    /// Load profiles and catalog, activate providers from the environment, and check
    /// that every reference in the config resolves. Nothing here runs per request.
    pub fn build(config: GatewayConfig, version: u64) -> Result<Runtime, ConfigError> {
        Runtime::build_keyed(config, version, BTreeSet::new())
    }

    /// [`Runtime::build`] where `keyed` names the providers that have runtime keys
    /// (`auth::provider_keys`): a provider whose activation variable is unset is active
    /// when it is in `keyed` and a key alone can activate it.
    pub fn build_keyed(
        config: GatewayConfig,
        version: u64,
        keyed: BTreeSet<String>,
    ) -> Result<Runtime, ConfigError> {
        let invalid = |e: &dyn std::fmt::Display| ConfigError::Invalid(e.to_string());
        let profiles = match &config.server.filters_dir {
            Some(dir) => {
                providers::load_profiles(&config.resolve_path(dir)).map_err(|e| invalid(&e))?
            }
            None => embedded_profiles().map_err(|e| invalid(&e))?,
        };
        let catalog = match &config.server.catalog {
            Some(p) => CatalogRef::Loaded(Arc::new(
                Catalog::load(&config.resolve_path(p)).map_err(|e| invalid(&e))?,
            )),
            None => CatalogRef::Embedded(Catalog::embedded().map_err(|e| invalid(e))?),
        };
        let catalog = if config.models.is_empty() {
            catalog
        } else {
            let mut extra = Vec::with_capacity(config.models.len());
            for (id, m) in &config.models {
                let prof = profiles
                    .iter()
                    .find(|p| p.name == m.provider)
                    .ok_or_else(|| {
                        ConfigError::Invalid(format!(
                            "models.\"{id}\": unknown provider '{}'",
                            m.provider
                        ))
                    })?;
                let cp = prof.catalog_providers.first().unwrap_or(&prof.name);
                extra.push(m.to_info(id, cp));
            }
            CatalogRef::Loaded(Arc::new(catalog.with_custom(extra)))
        };
        let mut active = Vec::new();
        for p in &profiles {
            let has_key = keyed.contains(&p.name);
            if let Some(rt) =
                ProviderRuntime::activate_with(p.clone(), has_key).map_err(|e| invalid(&e))?
            {
                active.push(Arc::new(rt));
            }
        }
        // Ids and aliases of active providers; an id or alias used twice is a config error.
        let mut ids = HashSet::new();
        for p in &profiles {
            for id in p.ids() {
                if !ids.insert(id) {
                    return Err(ConfigError::Invalid(format!(
                        "provider id or alias '{id}' is used by more than one profile"
                    )));
                }
            }
        }
        let by_name = active
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.profile.ids().map(move |id| (id.to_string(), i)))
            .collect();
        let master = std::env::var("LOOPGATE_MASTER_KEY").ok();
        let keys = KeyTable::build(&config.auth.keys, master.as_deref());
        // No key at all: serving only makes sense on loopback (dev mode); anywhere else it
        // would either be open to the network or answer 401 to everything.
        if keys.is_empty() {
            if let Some(addr) = non_loopback_listener(&config) {
                return Err(ConfigError::Invalid(format!(
                    "refusing to start unauthenticated: no gateway key is configured and listener {addr} is not on loopback. \
                     Fix: create a key with `loopgate hash-key` and add its [[auth.keys]] entry to the config \
                     (or set LOOPGATE_KEYS / LOOPGATE_MASTER_KEY), or bind to 127.0.0.1 (server.listen / LOOPGATE_LISTEN)"
                )));
            }
        }
        let open_access = keys.is_empty() && config.auth.allow_unauthenticated_loopback;
        let s = &config.server;
        let exchange = ExchangeOptions {
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            read_timeout: Duration::from_secs(
                s.read_timeout_secs.unwrap_or(DEFAULT_READ_TIMEOUT_SECS),
            ),
            write_timeout: Duration::from_secs(s.write_timeout_secs),
            idle_timeout: Duration::from_secs(s.upstream_idle_timeout_secs),
        };
        let storage: StorageConfig = toml::Value::Table(config.storage.clone())
            .try_into()
            .map_err(|e| ConfigError::Invalid(format!("[storage]: {e}")))?;
        let firewall = Arc::new(
            crate::firewall::Firewall::compile(
                &config.firewall,
                config
                    .auth
                    .keys
                    .iter()
                    .filter_map(|k| Some((k.id.as_str(), k.firewall.as_deref()?))),
                config
                    .routes
                    .iter()
                    .filter_map(|(n, r)| Some((n.as_str(), r.firewall.as_deref()?))),
            )
            .map_err(|e| ConfigError::Invalid(e.to_string()))?,
        );
        let rt = Runtime {
            firewall,
            warnings: Vec::new(),
            configured_models: configured_models(&config),
            storage,
            version,
            headers: HeaderNames::new(&config.server.header_prefix),
            providers: active,
            by_name,
            known: profiles,
            catalog,
            keys,
            exchange,
            open_access,
            config,
            keyed,
        };
        rt.check_references()?;
        Ok(rt)
    }

    /// [`Runtime::build`] plus the checks against the active providers: the one
    /// validation `check`, `serve` and reload share.
    pub fn build_checked(config: GatewayConfig, version: u64) -> Result<Runtime, ConfigError> {
        Runtime::build_checked_keyed(config, version, BTreeSet::new(), false)
    }

    /// [`Runtime::build_checked`] with the providers that have runtime keys (see
    /// [`Runtime::build_keyed`]): what `serve` and hot reload publish. `keys_possible`
    /// (this gateway can hold runtime keys): a route, fallback chain or judge model that no
    /// active provider serves is a warning, not an error, when every model it names would
    /// be served by a provider a runtime key alone activates — its key may be added (or
    /// be read from the store) at any time, and its removal takes effect even when a route
    /// then has nothing left to serve it.
    pub fn build_checked_keyed(
        config: GatewayConfig,
        version: u64,
        keyed: BTreeSet<String>,
        keys_possible: bool,
    ) -> Result<Runtime, ConfigError> {
        let mut rt = Runtime::build_keyed(config, version, keyed)?;
        rt.warnings = rt.check_serving(keys_possible)?;
        Ok(rt)
    }

    /// What `check`, `serve` and reload all refuse (errors) or report (warnings): the
    /// config must be servable by the providers active in this environment.
    fn check_serving(&self, keys_possible: bool) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let err = |m: String| Err(ConfigError::Invalid(m));
        // Nothing active serves `models`: an error, or a warning when a runtime key could
        // activate a provider for each of them.
        let key_activatable =
            |m: &str| self.inactive_servers(m).iter().any(|p| p.key_activatable());
        let unserved = |m: String, models: &[&str], warnings: &mut Vec<String>| {
            if keys_possible && models.iter().all(|x| key_activatable(x)) {
                warnings.push(m);
                Ok(())
            } else {
                Err(ConfigError::Invalid(m))
            }
        };
        let served = |m: &str, p: Option<&str>| self.resolve_model(m, p).ok();
        // The catalog mode of a model the catalog lists as something other than embeddings
        // (an unlisted model passes: a self-hosted embeddings model need not be catalogued).
        let not_embeddings = |c: &super::Candidate| -> Option<&'static str> {
            let mode = self
                .catalog
                .get(&c.provider.profile.catalog_providers, &c.model)?
                .mode;
            (!matches!(
                mode,
                crate::catalog::Mode::Embedding | crate::catalog::Mode::Other
            ))
            .then(|| mode.as_str())
        };
        let missing = |m: &str| {
            let h = self.activation_hint(m);
            if h.is_empty() {
                " (no provider profile serves this model name)".to_string()
            } else {
                h
            }
        };
        // Models served somewhere, for the unpriced list: (model, provider).
        let mut used: Vec<(String, Arc<ProviderRuntime>)> = Vec::new();
        for (name, r) in &self.config.routes {
            if let Some(b) = &r.baseline {
                match served(b, None) {
                    Some(c) => used.push((c.model, c.provider)),
                    None => {
                        unserved(
                            format!(
                                "routes.{name}: baseline '{b}' is served by no active provider{}",
                                missing(b)
                            ),
                            &[b.as_str()],
                            &mut warnings,
                        )?;
                        continue;
                    }
                }
                if let Some(e) = r.prompt_routing.embeddings.as_ref().filter(|_| {
                    r.prompt_routing.mode == crate::feedback::prompt::PromptMode::Embeddings
                }) {
                    let Some(c) = served(&e.model, None) else {
                        unserved(
                            format!(
                                "routes.{name}.prompt_routing.embeddings.model: '{}' is served by no active provider{}",
                                e.model,
                                missing(&e.model)
                            ),
                            &[e.model.as_str()],
                            &mut warnings,
                        )?;
                        continue;
                    };
                    if let Some(mode) = not_embeddings(&c) {
                        return err(format!(
                            "routes.{name}.prompt_routing.embeddings.model: '{}' is not an embeddings model (catalog mode '{mode}')",
                            e.model
                        ));
                    }
                }
                for c in &r.candidates {
                    match served(c, None) {
                        Some(c) => used.push((c.model, c.provider)),
                        None => warnings.push(format!(
                            "routes.{name}: candidate '{c}' is served by no active provider{}; the router skips it",
                            missing(c)
                        )),
                    }
                }
                continue;
            }
            let mut dead = Vec::new();
            for t in &r.targets {
                match served(&t.model, t.provider.as_deref()) {
                    Some(c) => used.push((c.model, c.provider)),
                    None => dead.push(format!("'{}'{}", t.model, missing(&t.model))),
                }
            }
            if dead.len() == r.targets.len() {
                unserved(
                    format!(
                        "routes.{name}: no target is served by an active provider: {}",
                        dead.join(", ")
                    ),
                    &r.targets
                        .iter()
                        .map(|t| t.model.as_str())
                        .collect::<Vec<_>>(),
                    &mut warnings,
                )?;
            } else if !dead.is_empty() {
                warnings.push(format!(
                    "routes.{name}: skipped targets (no active provider): {}",
                    dead.join(", ")
                ));
            }
        }
        for (model, chain) in &self.config.fallbacks {
            let mut dead = Vec::new();
            for m in chain {
                match served(m, None) {
                    Some(c) => used.push((c.model, c.provider)),
                    None => dead.push(format!("'{m}'{}", missing(m))),
                }
            }
            if !chain.is_empty() && dead.len() == chain.len() {
                unserved(
                    format!(
                        "fallbacks.\"{model}\": no entry is served by an active provider: {}",
                        dead.join(", ")
                    ),
                    &chain.iter().map(String::as_str).collect::<Vec<_>>(),
                    &mut warnings,
                )?;
            } else if !dead.is_empty() {
                warnings.push(format!(
                    "fallbacks.\"{model}\": skipped entries (no active provider): {}",
                    dead.join(", ")
                ));
            }
        }
        let judge = &self.config.judge.model;
        if !judge.is_empty() {
            match served(judge, None) {
                Some(c) => used.push((c.model, c.provider)),
                None => unserved(
                    format!(
                        "judge.model '{judge}' is served by no active provider{}",
                        missing(judge)
                    ),
                    &[judge.as_str()],
                    &mut warnings,
                )?,
            }
        }
        let sem = &self.config.cache.semantic;
        if sem.used() && !sem.model.is_empty() {
            let Some(c) = served(&sem.model, None) else {
                return err(format!(
                    "cache.semantic.model: '{}' is served by no active provider{}",
                    sem.model,
                    missing(&sem.model)
                ));
            };
            if let Some(mode) = not_embeddings(&c) {
                return err(format!(
                    "cache.semantic.model: '{}' is not an embeddings model (catalog mode '{mode}')",
                    sem.model
                ));
            }
        }
        if let Some(wc) = &self.config.webhook {
            let mut wc = wc.clone();
            wc.resolve_secret(|k| std::env::var(k).ok())
                .map_err(|e| ConfigError::Invalid(format!("[webhook]: {e}")))?;
            wc.validate()
                .map_err(|e| ConfigError::Invalid(format!("[webhook]: {e}")))?;
        }
        let mut seen = HashSet::new();
        for (model, prov) in &used {
            if !seen.insert((prov.name().to_string(), model.clone())) {
                continue;
            }
            let priced = self
                .catalog
                .get(&prov.profile.catalog_providers, model)
                .is_some_and(|i| i.has_prices());
            if !priced {
                warnings.push(format!(
                    "model '{}/{model}' has no catalog price: its requests are traced with cost_unknown (add it to the catalog, server.catalog)",
                    prov.name()
                ));
            }
        }
        for (id, c) in &self.config.firewall.classifiers {
            if served(&c.model, None).is_none() {
                unserved(
                    format!(
                        "firewall.classifiers.{id}.model: '{}' is served by no active provider{}",
                        c.model,
                        missing(&c.model)
                    ),
                    &[c.model.as_str()],
                    &mut warnings,
                )?;
            }
        }
        Ok(warnings)
    }

    /// Routing rules and fallback chains may name only known providers.
    fn check_references(&self) -> Result<(), ConfigError> {
        let check = |ctx: &str, model: &str, provider: Option<&str>| -> Result<(), ConfigError> {
            let p = provider.or_else(|| {
                model
                    .split_once('/')
                    .map(|(p, _)| p)
                    .filter(|p| self.is_known(p))
            });
            if let Some(p) = p {
                if !self.is_known(p) {
                    return Err(ConfigError::Invalid(format!(
                        "{ctx}: unknown provider '{p}'"
                    )));
                }
            }
            Ok(())
        };
        for (name, r) in &self.config.routes {
            for t in &r.targets {
                check(&format!("routes.{name}"), &t.model, t.provider.as_deref())?;
            }
        }
        for (model, chain) in &self.config.fallbacks {
            for m in chain {
                check(&format!("fallbacks.{model}"), m, None)?;
            }
        }
        Ok(())
    }

    /// Zero retention for a request: the key says so, or its project is listed.
    pub fn zero_retention(&self, key_flag: bool, project: Option<&str>) -> bool {
        key_flag
            || project.is_some_and(|p| self.storage.zero_retention_projects.iter().any(|z| z == p))
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<ProviderRuntime>> {
        self.by_name.get(name).map(|&i| &self.providers[i])
    }

    /// A provider id or alias of any profile, active or not.
    pub fn is_known(&self, name: &str) -> bool {
        self.known_profile(name).is_some()
    }

    /// The profile (active or not) with this id or alias.
    pub fn known_profile(&self, name: &str) -> Option<&ProviderProfile> {
        self.known.iter().find(|p| p.ids().any(|id| id == name))
    }

    /// Inactive profiles that would serve `model` (by `provider/` prefix, catalog listing or
    /// pattern): for errors that name the variables to set.
    pub fn inactive_servers(&self, model: &str) -> Vec<&ProviderProfile> {
        let active = |p: &ProviderProfile| self.provider(&p.name).is_some();
        if let Some((prefix, _)) = model.split_once('/') {
            if let Some(p) = self.known_profile(prefix) {
                return if active(p) { Vec::new() } else { vec![p] };
            }
        }
        let listing: Vec<&str> = self.catalog.providers_for(model).collect();
        self.known
            .iter()
            .filter(|p| !active(p))
            .filter(|p| {
                p.matches_model(model)
                    || listing
                        .iter()
                        .any(|lp| p.catalog_providers.iter().any(|c| c == lp))
            })
            .collect()
    }

    /// " (set VAR for provider, ...)" naming what would activate a provider for `model`.
    pub fn activation_hint(&self, model: &str) -> String {
        let servers = self.inactive_servers(model);
        if servers.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = servers
            .iter()
            .take(4)
            .map(|p| {
                let vars = p.activation_vars().join(" or ");
                if p.key_activatable() {
                    format!(
                        "{vars} for {} or add a key with POST /v1/providers/{}/keys",
                        p.name, p.name
                    )
                } else {
                    format!("{vars} for {}", p.name)
                }
            })
            .collect();
        format!(" (set {})", parts.join("; or "))
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.config.routes.get(name)
    }

    /// A model the config or the catalog names (metric labels are limited to these).
    pub fn is_known_model(&self, model: &str) -> bool {
        self.configured_models.contains(model) || self.catalog.contains_name(model)
    }

    /// Names of the active providers.
    pub fn active_names(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|p| p.name())
    }
}

impl crate::metrics::KnownModels for Runtime {
    fn is_known_model(&self, model: &str) -> bool {
        Runtime::is_known_model(self, model)
    }
}

/// Every model name the config mentions, as written and without a `provider/` prefix.
fn configured_models(c: &GatewayConfig) -> HashSet<String> {
    let mut names: Vec<&str> = Vec::new();
    for r in c.routes.values() {
        names.extend(r.targets.iter().map(|t| t.model.as_str()));
        names.extend(r.baseline.as_deref());
        names.extend(r.candidates.iter().map(String::as_str));
    }
    for (model, chain) in &c.fallbacks {
        names.push(model);
        names.extend(chain.iter().map(String::as_str));
    }
    if !c.judge.model.is_empty() {
        names.push(&c.judge.model);
    }
    let mut set = HashSet::new();
    for n in names {
        set.insert(n.to_string());
        if let Some((_, m)) = n.split_once('/') {
            set.insert(m.to_string());
        }
    }
    set
}

/// The first listener that is not on a loopback address.
fn non_loopback_listener(c: &GatewayConfig) -> Option<&str> {
    [&c.server.listen, &c.server.metrics_listen]
        .into_iter()
        .find(|a| {
            !a.parse::<std::net::SocketAddr>()
                .map(|s| s.ip().is_loopback())
                .unwrap_or(false)
        })
        .map(String::as_str)
}

/// Parse the profiles compiled into the binary.
pub fn embedded_profiles() -> Result<Vec<ProviderProfile>, providers::ProfileError> {
    EMBEDDED_FILTERS
        .iter()
        .map(|(name, text)| ProviderProfile::parse(text, &format!("<embedded filters/{name}>")))
        .collect()
}

#[cfg(test)]
mod key_activation_tests {
    use super::*;

    /// The providers a runtime key alone activates, as docs/provider-keys.md lists them.
    #[test]
    fn which_shipped_providers_a_key_alone_activates() {
        let profiles = embedded_profiles().unwrap();
        let yes: Vec<&str> = profiles
            .iter()
            .filter(|p| p.key_activatable())
            .map(|p| p.name.as_str())
            .filter(|n| !n.starts_with("azure"))
            .collect();
        let mut want = vec![
            "ai21",
            "anthropic",
            "cerebras",
            "cohere",
            "deepinfra",
            "deepseek",
            "fireworks",
            "gemini",
            "groq",
            "huggingface",
            "mistral",
            "nebius",
            "novita",
            "openai",
            "perplexity",
            "replicate",
            "sambanova",
            "together",
            "xai",
        ];
        want.sort_unstable();
        let mut got = yes.clone();
        got.sort_unstable();
        assert_eq!(got, want);
        for p in &profiles {
            if [
                "bedrock",
                "vertex",
                "vertex-anthropic",
                "ollama",
                "ollama-native",
            ]
            .contains(&p.name.as_str())
            {
                assert!(!p.key_activatable(), "{}", p.name);
            }
        }
        // Azure's base URL is its endpoint variable: a key alone activates it only once
        // that is set (this process does not set it).
        if std::env::var("AZURE_OPENAI_ENDPOINT").is_err()
            && std::env::var("AZURE_OPENAI_BASE_URL").is_err()
        {
            let azure = profiles.iter().find(|p| p.name == "azure").unwrap();
            assert!(!azure.key_activatable());
        }
    }

    /// A keyed provider without its variable is active, with no key of its own; not keyed,
    /// it is not; Bedrock is never activated by a key.
    #[test]
    fn the_keyed_set_activates_the_runtime() {
        let keyed: BTreeSet<String> = ["groq", "bedrock"].iter().map(|s| s.to_string()).collect();
        if std::env::var("GROQ_API_KEY").is_ok() {
            return;
        }
        let rt = Runtime::build_keyed(GatewayConfig::default(), 1, keyed).unwrap();
        let groq = rt.provider("groq").expect("groq is active by its key");
        assert!(groq.by_runtime_key);
        let aws = [
            "AWS_REGION",
            "AWS_DEFAULT_REGION",
            "AWS_ACCESS_KEY_ID",
            "AWS_PROFILE",
        ];
        if aws.iter().all(|v| std::env::var(v).is_err()) {
            assert!(rt.provider("bedrock").is_none());
        }
        let rt = Runtime::build(GatewayConfig::default(), 1).unwrap();
        assert!(rt.provider("groq").is_none());
    }
}
