//! Virtual keys: gateway keys created and revoked at runtime through `/v1/keys`.
//!
//! The store (SQLite / PostgreSQL) is the source of truth; every instance mirrors the live
//! keys in an [`ArcSwap`] map keyed by the SHA-256 of the secret, rebuilt by a background
//! poll every [`REFRESH`]. A request looks a key up with one atomic load and one hash-map
//! probe; a revocation on any instance reaches every other one within one refresh (and
//! the instance that revoked drops the key at once).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Scope;
use crate::auth::keys::{digest, parse_hash, KeyEntry};
use crate::error::GatewayError;
use crate::store::{Store, VirtualKeyRow};

/// How often each instance re-reads the key table from the store.
pub const REFRESH: Duration = Duration::from_millis(250);

/// Fields a client may set on a key (`POST` / `PATCH /v1/keys`).
pub const SPEC_FIELDS: &[&str] = &[
    "name",
    "scopes",
    "project",
    "team",
    "user",
    "allowed_models",
    "allowed_routes",
    "metadata",
    "expires_at",
    "limits",
    "budgets",
];
const LIMIT_FIELDS: &[&str] = &["rpm", "tpm", "models"];
const MODEL_LIMIT_FIELDS: &[&str] = &["rpm", "tpm"];
const BUDGET_FIELDS: &[&str] = &["period", "usd", "soft_pct"];
/// Budget periods.
pub const PERIODS: &[&str] = &["day", "month", "total"];

const MAX_TEXT: usize = 256;
const MAX_LIST: usize = 256;
const MAX_METADATA_BYTES: usize = 8 * 1024;

/// Requests and tokens per minute.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
}

/// Rate limits of a key: for the key as a whole and per model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub models: BTreeMap<String, Rate>,
}

/// A spending cap in USD over one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// `day`, `month` (UTC calendar) or `total`.
    pub period: String,
    pub usd: f64,
    /// Share of `usd` (0–100) past which a soft-threshold event fires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_pct: Option<f64>,
}

/// Everything about a key except its secret.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default = "default_scopes")]
    pub scopes: Vec<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Empty: every model.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    /// Empty: every routing rule.
    #[serde(default)]
    pub allowed_routes: Vec<String>,
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// Unix seconds after which the key is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub budgets: Vec<Budget>,
}

fn default_scopes() -> Vec<Scope> {
    vec![Scope::Inference]
}

fn unknown_field(path: &str, allowed: &[&str]) -> GatewayError {
    GatewayError::invalid(
        format!(
            "Unknown field '{path}' (allowed: {}).",
            allowed
                .iter()
                .map(|f| {
                    let base = path.rsplit_once('.').map(|(b, _)| b);
                    match base {
                        Some(b) => format!("{b}.{f}"),
                        None => f.to_string(),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(path),
    )
}

fn check_fields(
    obj: &Map<String, Value>,
    prefix: &str,
    allowed: &[&str],
) -> Result<(), GatewayError> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            return Err(unknown_field(&path, allowed));
        }
    }
    Ok(())
}

fn bad(field: &str, what: &str) -> GatewayError {
    GatewayError::invalid(format!("'{field}' {what}"), Some(field))
}

/// A non-negative whole number or null.
fn count(v: &Value, field: &str) -> Result<(), GatewayError> {
    match v {
        Value::Null => Ok(()),
        Value::Number(n) if n.as_u64().is_some() => Ok(()),
        _ => Err(bad(field, "must be a non-negative integer")),
    }
}

fn rate(obj: &Map<String, Value>, prefix: &str, allowed: &[&str]) -> Result<(), GatewayError> {
    check_fields(obj, prefix, allowed)?;
    for f in ["rpm", "tpm"] {
        if let Some(v) = obj.get(f) {
            count(v, &format!("{prefix}.{f}"))?;
        }
    }
    Ok(())
}

fn text(v: &Value, field: &str) -> Result<(), GatewayError> {
    match v {
        Value::Null => Ok(()),
        Value::String(s) if !s.is_empty() && s.len() <= MAX_TEXT => Ok(()),
        _ => Err(bad(
            field,
            &format!("must be a non-empty string of at most {MAX_TEXT} bytes"),
        )),
    }
}

fn text_list(v: &Value, field: &str) -> Result<(), GatewayError> {
    match v {
        Value::Array(a) if a.len() <= MAX_LIST => a.iter().try_for_each(|x| match x {
            Value::String(_) => text(x, field),
            _ => Err(bad(field, "must be a list of strings")),
        }),
        _ => Err(bad(
            field,
            &format!("must be a list of at most {MAX_LIST} strings"),
        )),
    }
}

/// Validate a client-supplied (partial) key object: every field known, every value of the
/// right shape. Errors name the field (`limits.rpm`, `budgets[0].period`).
pub fn validate_fields(obj: &Map<String, Value>) -> Result<(), GatewayError> {
    check_fields(obj, "", SPEC_FIELDS)?;
    for (k, v) in obj {
        match k.as_str() {
            "name" | "project" | "team" | "user" => text(v, k)?,
            "allowed_models" | "allowed_routes" => text_list(v, k)?,
            "scopes" => {
                let ok = v.as_array().is_some_and(|a| {
                    a.iter()
                        .all(|s| matches!(s.as_str(), Some("inference" | "read" | "admin")))
                });
                if !ok {
                    return Err(bad(
                        "scopes",
                        "must be a list of 'inference', 'read', 'admin'",
                    ));
                }
            }
            "metadata" => {
                let ok = v.is_object()
                    && serde_json::to_vec(v).map_or(0, |b| b.len()) <= MAX_METADATA_BYTES;
                if !ok {
                    return Err(bad(
                        "metadata",
                        &format!("must be an object of at most {MAX_METADATA_BYTES} bytes"),
                    ));
                }
            }
            "expires_at" => match v {
                Value::Null => {}
                Value::Number(n) if n.as_i64().is_some_and(|s| s > 0) => {}
                _ => return Err(bad("expires_at", "must be a Unix time in seconds")),
            },
            "limits" => {
                let Some(l) = v.as_object() else {
                    return Err(bad("limits", "must be an object"));
                };
                check_fields(l, "limits", LIMIT_FIELDS)?;
                rate(
                    &l.iter()
                        .filter(|(k, _)| *k != "models")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    "limits",
                    LIMIT_FIELDS,
                )?;
                if let Some(m) = l.get("models") {
                    let Some(m) = m.as_object().filter(|m| m.len() <= MAX_LIST) else {
                        return Err(bad(
                            "limits.models",
                            "must be an object of model -> {rpm, tpm}",
                        ));
                    };
                    for (model, r) in m {
                        let field = format!("limits.models.{model}");
                        let Some(r) = r.as_object() else {
                            return Err(bad(&field, "must be an object {rpm, tpm}"));
                        };
                        rate(r, &field, MODEL_LIMIT_FIELDS)?;
                    }
                }
            }
            "budgets" => {
                let Some(list) = v.as_array().filter(|a| a.len() <= PERIODS.len()) else {
                    return Err(bad("budgets", "must be a list of at most 3 budgets"));
                };
                for (i, b) in list.iter().enumerate() {
                    let field = format!("budgets[{i}]");
                    let Some(b) = b.as_object() else {
                        return Err(bad(&field, "must be an object {period, usd, soft_pct}"));
                    };
                    check_fields(b, &field, BUDGET_FIELDS)?;
                    let period = b.get("period").and_then(Value::as_str);
                    if !period.is_some_and(|p| PERIODS.contains(&p)) {
                        return Err(bad(
                            &format!("{field}.period"),
                            "must be one of 'day', 'month', 'total'",
                        ));
                    }
                    let usd = b.get("usd").and_then(Value::as_f64);
                    if !usd.is_some_and(|u| u.is_finite() && u >= 0.0) {
                        return Err(bad(
                            &format!("{field}.usd"),
                            "must be a non-negative number",
                        ));
                    }
                    if let Some(s) = b.get("soft_pct") {
                        if !s.as_f64().is_some_and(|s| (0.0..=100.0).contains(&s)) {
                            return Err(bad(
                                &format!("{field}.soft_pct"),
                                "must be a number from 0 to 100",
                            ));
                        }
                    }
                }
                let mut periods: Vec<&str> = list
                    .iter()
                    .filter_map(|b| b.get("period").and_then(Value::as_str))
                    .collect();
                periods.sort_unstable();
                periods.dedup();
                if periods.len() != list.len() {
                    return Err(bad("budgets", "may hold at most one budget per period"));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

impl KeySpec {
    /// Neither a rate limit nor a budget: the request path skips such a key in one branch.
    pub fn unlimited(&self) -> bool {
        self.limits.rpm.is_none()
            && self.limits.tpm.is_none()
            && self.limits.models.is_empty()
            && self.budgets.is_empty()
    }

    /// Parse a validated object.
    pub fn from_object(obj: Map<String, Value>) -> Result<KeySpec, GatewayError> {
        validate_fields(&obj)?;
        // Nulls mean "unset" in a PATCH; serde's defaults fill them.
        let obj: Map<String, Value> = obj.into_iter().filter(|(_, v)| !v.is_null()).collect();
        serde_json::from_value(Value::Object(obj))
            .map_err(|e| GatewayError::invalid(format!("invalid key: {e}"), None))
    }

    /// Apply a `PATCH` body: each present field replaces the stored one (null clears it).
    pub fn patched(&self, patch: &Map<String, Value>) -> Result<KeySpec, GatewayError> {
        validate_fields(patch)?;
        let mut cur = match serde_json::to_value(self) {
            Ok(Value::Object(m)) => m,
            _ => Map::new(),
        };
        for (k, v) in patch {
            cur.insert(k.clone(), v.clone());
        }
        KeySpec::from_object(cur)
    }

    pub fn model_allowed(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }

    pub fn route_allowed(&self, route: Option<&str>) -> bool {
        self.allowed_routes.is_empty()
            || route.is_some_and(|r| self.allowed_routes.iter().any(|a| a == r))
    }
}

/// A live virtual key as the request path sees it.
#[derive(Debug)]
pub struct VirtualKey {
    pub entry: Arc<KeyEntry>,
    pub spec: KeySpec,
    /// `expires_at` in milliseconds.
    pub expires_ms: Option<i64>,
}

/// 403 when a virtual key may not use `model`.
pub fn check_model(key: Option<&VirtualKey>, model: &str) -> Result<(), GatewayError> {
    match key {
        Some(k) if !k.spec.model_allowed(model) => Err(GatewayError::Forbidden(format!(
            "The API key '{}' may not use the model '{model}'.",
            k.entry.id
        ))),
        _ => Ok(()),
    }
}

/// 403 when a virtual key may not use the routing rule a request resolved to.
pub fn check_route(key: Option<&VirtualKey>, route: Option<&str>) -> Result<(), GatewayError> {
    match key {
        Some(k) if !k.spec.route_allowed(route) => Err(GatewayError::Forbidden(format!(
            "The API key '{}' may not use the routing rule '{}'.",
            k.entry.id,
            route.unwrap_or("(none)")
        ))),
        _ => Ok(()),
    }
}

/// The in-process mirror of the store's live virtual keys.
#[derive(Default)]
pub struct VirtualKeys {
    by_hash: ArcSwap<HashMap<[u8; 32], Arc<VirtualKey>>>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Build the request-path form of a stored row (`None`: revoked or unreadable).
pub fn live(row: &VirtualKeyRow) -> Option<(Option<[u8; 32]>, Arc<VirtualKey>)> {
    if row.revoked_ms.is_some() {
        return None;
    }
    let spec: KeySpec = serde_json::from_str(&row.spec).ok()?;
    let entry = Arc::new(KeyEntry {
        id: row.id.clone(),
        scopes: spec.scopes.clone(),
        project: spec.project.clone(),
        route: None,
        zero_retention: false,
    });
    Some((
        parse_hash(&row.hash),
        Arc::new(VirtualKey {
            entry,
            expires_ms: spec.expires_at.map(|s| s.saturating_mul(1000)),
            spec,
        }),
    ))
}

impl VirtualKeys {
    pub fn new() -> VirtualKeys {
        VirtualKeys::default()
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.load().is_empty()
    }

    /// Resolve a presented secret (one atomic load, one SHA-256, one probe).
    pub fn lookup(&self, presented: &str) -> Option<Arc<VirtualKey>> {
        self.by_hash.load().get(&digest(presented)).cloned()
    }

    /// Like [`lookup`](Self::lookup), telling an expired key apart.
    pub fn resolve(
        &self,
        presented: &str,
        now_ms: i64,
    ) -> Result<Option<Arc<VirtualKey>>, GatewayError> {
        match self.lookup(presented) {
            Some(k) if k.expires_ms.is_some_and(|e| now_ms >= e) => Err(
                GatewayError::Unauthorized(format!("The API key '{}' has expired.", k.entry.id)),
            ),
            found => Ok(found),
        }
    }

    /// Replace the mirror with the store's rows.
    pub fn replace(&self, rows: &[VirtualKeyRow]) {
        let map = rows
            .iter()
            .filter_map(live)
            .filter_map(|(h, k)| Some((h?, k)))
            .collect();
        self.by_hash.store(Arc::new(map));
    }

    /// Apply one change made on this instance at once (the poll confirms it).
    pub fn apply(&self, row: &VirtualKeyRow) {
        let Some(h) = parse_hash(&row.hash) else {
            return;
        };
        let mut map = HashMap::clone(&self.by_hash.load());
        match live(row) {
            Some((_, k)) => map.insert(h, k),
            None => map.remove(&h),
        };
        self.by_hash.store(Arc::new(map));
    }

    /// Re-read the store every [`REFRESH`] until the process ends. A failed read keeps
    /// the last mirror (logged once per outage). The same poll mirrors the provider keys
    /// added at runtime (`provider_keys`), so an add or delete reaches every gateway the
    /// way a revocation does.
    pub async fn refresh_loop(
        self: Arc<Self>,
        store: impl Fn() -> Option<Arc<dyn Store>>,
        provider_keys: Option<Arc<super::provider_keys::ProviderKeys>>,
    ) {
        let mut failing = false;
        let mut pk_failing = false;
        let mut tick = tokio::time::interval(REFRESH);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(s) = store() else { continue };
            match tokio::time::timeout(REFRESH * 4, s.virtual_keys()).await {
                Ok(Ok(rows)) => {
                    if failing {
                        tracing::info!("virtual keys: store readable again");
                    }
                    failing = false;
                    self.replace(&rows);
                }
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "virtual keys: cannot read the store; keeping the last key table");
                }
                Err(_) if !failing => {
                    failing = true;
                    tracing::warn!(
                        "virtual keys: store read timed out; keeping the last key table"
                    );
                }
                _ => {}
            }
            let Some(pk) = &provider_keys else { continue };
            match tokio::time::timeout(REFRESH * 4, s.provider_keys()).await {
                Ok(Ok(rows)) => {
                    pk_failing = false;
                    pk.replace(&rows);
                }
                Ok(Err(e)) if !pk_failing => {
                    pk_failing = true;
                    pk.mark_loaded();
                    tracing::warn!(error = %e, "provider keys: cannot read the store; keeping the last key table");
                }
                Err(_) if !pk_failing => {
                    pk_failing = true;
                    pk.mark_loaded();
                    tracing::warn!(
                        "provider keys: store read timed out; keeping the last key table"
                    );
                }
                _ => pk.publish_gauges(now_ms()),
            }
        }
    }
}

/// The background poll as a Pingora service.
pub struct RefreshService {
    pub keys: Arc<VirtualKeys>,
    /// Provider keys added at runtime, mirrored by the same poll.
    pub provider_keys: Option<Arc<super::provider_keys::ProviderKeys>>,
    pub slot: crate::store::writer::StoreSlot,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for RefreshService {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let slot = self.slot.clone();
        tokio::select! {
            _ = self.keys.clone().refresh_loop(move || slot.get(), self.provider_keys.clone()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn param(r: Result<KeySpec, GatewayError>) -> String {
        match r {
            Err(e) => e.param().unwrap_or_default().to_string(),
            Ok(_) => "ok".into(),
        }
    }

    #[test]
    fn bad_input_names_the_field() {
        assert_eq!(param(KeySpec::from_object(obj(json!({"nope": 1})))), "nope");
        assert_eq!(
            param(KeySpec::from_object(obj(json!({"limits": {"rpm": -1}})))),
            "limits.rpm"
        );
        assert_eq!(
            param(KeySpec::from_object(obj(json!({"limits": {"rpmx": 1}})))),
            "limits.rpmx"
        );
        assert_eq!(
            param(KeySpec::from_object(obj(
                json!({"limits": {"models": {"gpt-4o": {"tpm": -5}}}})
            ))),
            "limits.models.gpt-4o.tpm"
        );
        assert_eq!(
            param(KeySpec::from_object(obj(
                json!({"budgets": [{"period": "week", "usd": 1}]})
            ))),
            "budgets[0].period"
        );
        assert_eq!(
            param(KeySpec::from_object(obj(
                json!({"budgets": [{"period": "day", "usd": -1}]})
            ))),
            "budgets[0].usd"
        );
        let ok = KeySpec::from_object(obj(json!({
            "name": "ci", "project": "alpha", "allowed_models": ["gpt-4o"],
            "limits": {"rpm": 100, "models": {"gpt-4o": {"tpm": 1000}}},
            "budgets": [{"period": "day", "usd": 5.0, "soft_pct": 80}]
        })));
        let s = ok.unwrap_or_default();
        assert_eq!(s.limits.rpm, Some(100));
        assert_eq!(s.scopes, vec![Scope::Inference]);
        assert!(s.model_allowed("gpt-4o") && !s.model_allowed("gpt-4o-mini"));
    }

    #[test]
    fn patch_replaces_and_clears() {
        let s = KeySpec::from_object(obj(json!({"name": "a", "team": "t", "limits": {"rpm": 5}})))
            .unwrap_or_default();
        let p = s
            .patched(&obj(json!({"team": null, "limits": {"tpm": 9}})))
            .unwrap_or_default();
        assert_eq!(p.name.as_deref(), Some("a"));
        assert_eq!(p.team, None);
        assert_eq!(p.limits.rpm, None);
        assert_eq!(p.limits.tpm, Some(9));
    }

    #[test]
    fn mirror_resolves_expires_and_revokes() {
        let secret = crate::auth::keys::generate_key();
        let mut row = VirtualKeyRow {
            id: "vk_1".into(),
            hash: crate::auth::keys::hash_key(&secret),
            project: None,
            spec: json!({"scopes": ["inference"], "expires_at": 2_000}).to_string(),
            created_ms: 1,
            updated_ms: 1,
            revoked_ms: None,
        };
        let m = VirtualKeys::new();
        m.replace(std::slice::from_ref(&row));
        assert!(matches!(m.resolve(&secret, 1_000_000), Ok(Some(_))));
        assert!(m.resolve(&secret, 2_000_000).is_err());
        assert!(matches!(m.resolve("other", 0), Ok(None)));
        row.revoked_ms = Some(5);
        m.apply(&row);
        assert!(m.lookup(&secret).is_none());
    }
}
