//! Model resolution: from what the client asked for to an ordered candidate list.
//!
//! Precedence: a routing rule (header, key binding, `auto`, `auto:<rule>`) uses the
//! rule's targets and strategy; otherwise the model name picks the provider — forced by
//! the provider header or a `provider/` prefix, else the catalog, else the profiles'
//! model patterns — followed by the configured fallback chain for that model.

use std::sync::Arc;

use crate::error::GatewayError;
use crate::providers::ProviderRuntime;

use super::strategy;
use super::table::Runtime;

/// One upstream to try.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub provider: Arc<ProviderRuntime>,
    /// Provider-native model id.
    pub model: String,
}

/// What the request asked for.
#[derive(Debug, Default, Clone, Copy)]
pub struct Ask<'a> {
    pub model: &'a str,
    /// `x-provider` / `<prefix>-provider` header.
    pub forced_provider: Option<&'a str>,
    /// Rule from the `<prefix>-routing-rule` header.
    pub rule_header: Option<&'a str>,
    /// Rule the key is locked to.
    pub key_rule: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct Resolution {
    pub candidates: Vec<Candidate>,
    /// The routing rule used, if any.
    pub route: Option<String>,
    /// The rule is a feedback route: `candidates` is empty and the router picks the model.
    pub feedback: bool,
}

impl Runtime {
    /// Resolve a concrete model name (no rules) to its first candidate.
    pub fn resolve_model(
        &self,
        model: &str,
        forced: Option<&str>,
    ) -> Result<Candidate, GatewayError> {
        // A custom model: its `provider` field decides, whatever its id looks like (ids may
        // contain `/`).
        if let Some(cm) = self.config.models.get(model) {
            if forced.is_none_or(|f| f == cm.provider) {
                let prov = self
                    .provider(&cm.provider)
                    .ok_or_else(|| self.provider_unavailable(&cm.provider))?;
                return Ok(Candidate {
                    provider: prov.clone(),
                    model: cm.upstream(model).to_string(),
                });
            }
        }
        if let Some(p) = forced {
            let prov = self
                .provider(p)
                .ok_or_else(|| self.provider_unavailable(p))?;
            let m = prov
                .profile
                .ids()
                .find_map(|id| model.strip_prefix(id).and_then(|m| m.strip_prefix('/')))
                .unwrap_or(model);
            return Ok(Candidate {
                provider: prov.clone(),
                model: m.to_string(),
            });
        }
        // `provider/model` only when the prefix is a provider name: model ids contain '/' too.
        if let Some((p, m)) = model.split_once('/') {
            if self.is_known(p) {
                let prov = self
                    .provider(p)
                    .ok_or_else(|| self.provider_unavailable(p))?;
                return Ok(Candidate {
                    provider: prov.clone(),
                    model: m.to_string(),
                });
            }
        }
        // Every active provider that lists the model in the catalog or matches it by
        // pattern is eligible; the highest priority wins, a catalog listing breaks ties,
        // then the earlier profile file.
        let mut best: Option<(usize, (i32, bool))> = None;
        // The catalog's providers for this name, looked up once (a handful at most).
        let mut listing: [&str; 16] = [""; 16];
        let mut n = 0;
        for lp in self.catalog.providers_for(model) {
            if n < listing.len() {
                listing[n] = lp;
                n += 1;
            }
        }
        let listing = &listing[..n];
        for (i, prov) in self.providers.iter().enumerate() {
            let listed = listing
                .iter()
                .any(|lp| prov.profile.catalog_providers.iter().any(|c| c == lp));
            if !listed && !prov.profile.matches_model(model) {
                continue;
            }
            let rank = (prov.profile.priority, listed);
            if best.is_none_or(|(_, r)| rank > r) {
                best = Some((i, rank));
            }
        }
        match best {
            Some((i, _)) => Ok(Candidate {
                provider: self.providers[i].clone(),
                model: model.to_string(),
            }),
            None => Err(self.not_found(model)),
        }
    }

    fn not_found(&self, model: &str) -> GatewayError {
        let servers = self.inactive_servers(model);
        let message = if servers.is_empty() {
            format!("The model '{model}' does not exist or no configured provider serves it.")
        } else {
            let when = if servers.iter().any(|p| p.key_activatable()) {
                "a variable takes effect after a restart or reload, a key added through the API within a second"
            } else {
                "then restart or reload loopgate"
            };
            format!(
                "The model '{model}' is served by a provider that is not configured on this gateway: {} ({when}).",
                self.activation_hint(model).trim_start().trim_start_matches('(').trim_end_matches(')')
            )
        };
        GatewayError::NotFound {
            message,
            code: "model_not_found",
            param: Some("model".into()),
        }
    }

    fn provider_unavailable(&self, p: &str) -> GatewayError {
        if let Some(profile) = self.known_profile(p) {
            GatewayError::NotFound {
                message: if profile.key_activatable() {
                    format!(
                        "Provider '{p}' is not configured on this gateway: set {} (then restart or reload loopgate), or add a key with POST /v1/providers/{}/keys.",
                        profile.activation_vars().join(" or "),
                        profile.name
                    )
                } else {
                    format!(
                        "Provider '{p}' is not configured on this gateway: set {} (then restart or reload loopgate).",
                        profile.activation_vars().join(" or ")
                    )
                },
                code: "model_not_found",
                param: Some("model".into()),
            }
        } else {
            GatewayError::invalid_code(
                format!("Unknown provider '{p}'."),
                Some("model"),
                "unknown_provider",
            )
        }
    }

    /// A concrete model (no routing rule) and then its `[fallbacks]` chain; chain entries
    /// that do not resolve (provider not active) are skipped.
    pub fn resolve_with_fallbacks(
        &self,
        model: &str,
        forced: Option<&str>,
    ) -> Result<Vec<Candidate>, GatewayError> {
        let mut candidates = vec![self.resolve_model(model, forced)?];
        if let Some(chain) = self.fallback_chain(model, &candidates[0]) {
            candidates.extend(
                chain
                    .iter()
                    .filter_map(|m| self.resolve_model(m, None).ok()),
            );
        }
        Ok(candidates)
    }

    /// The `[fallbacks]` chain for a model: keyed by the name as asked, else by the other
    /// spelling of the same upstream model (`gpt-4o` ↔ `openai/gpt-4o`, by the provider that
    /// serves it).
    fn fallback_chain(&self, model: &str, first: &Candidate) -> Option<&Vec<String>> {
        let fb = &self.config.fallbacks;
        if fb.is_empty() {
            return None;
        }
        if let Some(c) = fb.get(model) {
            return Some(c);
        }
        if let Some((p, bare)) = model.split_once('/') {
            if self.is_known(p) {
                if let Some(c) = fb.get(bare) {
                    return Some(c);
                }
            }
        }
        fb.get(&format!("{}/{}", first.provider.name(), first.model))
    }

    /// Resolve a request to its ordered candidates.
    pub fn resolve(&self, ask: &Ask, draw: f64) -> Result<Resolution, GatewayError> {
        let rule = ask
            .key_rule
            .or(ask.rule_header)
            .or_else(|| ask.model.strip_prefix("auto:"))
            .or_else(|| (ask.model == "auto").then_some("default"));
        if let Some(name) = rule {
            if let (Some(locked), Some(h)) = (ask.key_rule, ask.rule_header) {
                if locked != h {
                    return Err(GatewayError::Forbidden(format!(
                        "this key is locked to routing rule '{locked}'"
                    )));
                }
            }
            let by_model = ask.key_rule.is_none() && ask.rule_header.is_none();
            let route = self.route(name).ok_or_else(|| {
                if by_model {
                    // `model: "auto"` is a request for feedback routing: say what to configure.
                    GatewayError::invalid_code(
                        format!(
                            "model '{}' needs a routing rule named '{name}', and none is configured. Add a feedback route to the config, e.g. [routes.{name}] with baseline = \"gpt-4o\" and candidates = [\"gpt-4o-mini\"] (see the commented example in conf/gateway.toml), then reload; or send a concrete model name.",
                            ask.model
                        ),
                        Some("model"),
                        "route_not_found",
                    )
                } else {
                    GatewayError::NotFound {
                        message: format!("Routing rule '{name}' is not defined."),
                        code: "route_not_found",
                        param: Some("model".into()),
                    }
                }
            })?;
            if route.is_feedback() {
                return Ok(Resolution {
                    candidates: Vec::new(),
                    route: Some(name.to_string()),
                    feedback: true,
                });
            }
            // Targets whose provider is not active are skipped, not fatal: a rule may
            // list providers only some deployments have keys for.
            let mut resolved = Vec::with_capacity(route.targets.len());
            let mut weights = Vec::with_capacity(route.targets.len());
            for t in &route.targets {
                if let Ok(c) = self.resolve_model(&t.model, t.provider.as_deref()) {
                    resolved.push(c);
                    weights.push(t.weight);
                }
            }
            let lat = strategy::latency();
            let order = strategy::order(
                route.strategy,
                &weights,
                |i| lat.get(&upstream_key(&resolved[i])),
                draw,
            );
            let mut slots: Vec<Option<Candidate>> = resolved.into_iter().map(Some).collect();
            let candidates: Vec<Candidate> =
                order.into_iter().filter_map(|i| slots[i].take()).collect();
            if candidates.is_empty() {
                return Err(GatewayError::NotFound {
                    message: format!(
                        "Routing rule '{name}' has no target with a configured provider."
                    ),
                    code: "model_not_found",
                    param: Some("model".into()),
                });
            }
            return Ok(Resolution {
                candidates,
                route: Some(name.to_string()),
                feedback: false,
            });
        }
        let candidates = self.resolve_with_fallbacks(ask.model, ask.forced_provider)?;
        Ok(Resolution {
            candidates,
            route: None,
            feedback: false,
        })
    }
}

/// Latency-tracker key of a candidate.
pub fn upstream_key(c: &Candidate) -> String {
    format!("{}/{}", c.provider.name(), c.model)
}
