//! The routing table: an immutable snapshot of everything the request path reads —
//! active providers, catalog, keys, routing rules, header names. Built and validated
//! off the request path, published through an `ArcSwap`, read lock-free per request.
//! A request keeps the snapshot it started with, so a reload never changes a request
//! mid-flight.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use crate::catalog::Catalog;
use crate::config::{ConfigError, GatewayConfig, RouteConfig};
use crate::providers::{self, ProviderProfile, ProviderRuntime};
use crate::store::StorageConfig;
use crate::upstream::ExchangeOptions;

use super::keys::KeyTable;

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
    // response headers
    pub resp_provider: String,
    pub resp_model: String,
    pub resp_fallback: String,
    pub resp_request_id: String,
    pub resp_decision_id: String,
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
            resp_provider: h("provider"),
            resp_model: h("model"),
            resp_fallback: h("fallback-used"),
            resp_request_id: h("request-id"),
            resp_decision_id: h("decision-id"),
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
}

impl Runtime {
    /// Load profiles and catalog, activate providers from the environment, and check
    /// that every reference in the config resolves. Nothing here runs per request.
    pub fn build(config: GatewayConfig, version: u64) -> Result<Runtime, ConfigError> {
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
            if let Some(rt) = ProviderRuntime::activate(p.clone()).map_err(|e| invalid(&e))? {
                active.push(Arc::new(rt));
            }
        }
        let by_name = active
            .iter()
            .enumerate()
            .map(|(i, p)| (p.name().to_string(), i))
            .collect();
        let master = std::env::var("LOOPGATE_MASTER_KEY").ok();
        let keys = KeyTable::build(&config.auth.keys, master.as_deref());
        let open_access = keys.is_empty() && config.auth.allow_unauthenticated_loopback;
        if open_access && !listeners_are_loopback(&config) {
            return Err(ConfigError::Invalid(
                "no gateway key is configured and a listener is not on loopback: configure auth.keys or LOOPGATE_MASTER_KEY"
                    .into(),
            ));
        }
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
        let rt = Runtime {
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
        };
        rt.check_references()?;
        Ok(rt)
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

    pub fn is_known(&self, name: &str) -> bool {
        self.known.iter().any(|p| p.name == name)
    }

    pub fn route(&self, name: &str) -> Option<&RouteConfig> {
        self.config.routes.get(name)
    }

    /// Names of the active providers.
    pub fn active_names(&self) -> impl Iterator<Item = &str> {
        self.providers.iter().map(|p| p.name())
    }
}

fn listeners_are_loopback(c: &GatewayConfig) -> bool {
    [&c.server.listen, &c.server.metrics_listen]
        .iter()
        .all(|a| {
            a.parse::<std::net::SocketAddr>()
                .map(|s| s.ip().is_loopback())
                .unwrap_or(false)
        })
}

/// Parse the profiles compiled into the binary.
pub fn embedded_profiles() -> Result<Vec<ProviderProfile>, providers::ProfileError> {
    EMBEDDED_FILTERS
        .iter()
        .map(|(name, text)| ProviderProfile::parse(text, &format!("<embedded filters/{name}>")))
        .collect()
}
