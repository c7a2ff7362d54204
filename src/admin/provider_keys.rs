//! Provider API keys at runtime: `POST /v1/providers/{name}/keys`,
//! `GET /v1/providers/{name}/keys`, `DELETE /v1/providers/{name}/keys/{id}` (admin scope,
//! not locked to a project: provider credentials serve the whole gateway).
//!
//! The secret is encrypted before it reaches the store (`auth::provider_keys`) and never
//! leaves the gateway again: answers carry the id, label, weight, last four characters and
//! cooldown state. Every add and delete is appended to the hash-chained audit log.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use serde_json::{json, Value};

use super::logs::{store_err, STORE_WAIT};
use super::routing::{actor, body_object};
use super::{AdminRequest, AdminResponse, AdminRoutes, Scope};
use crate::auth::provider_keys::{self as pk, ProviderKeys};
use crate::auth::virtual_keys::now_ms;
use crate::error::GatewayError;
use crate::routing::auto::AutoState;
use crate::routing::Runtime;
use crate::store::writer::StoreSlot;
use crate::store::{AuditAppend, ProviderKeyRow, Store};

pub struct ProviderKeyRoutes {
    /// `None` with `storage.backend = "none"`: provider keys need a store.
    pub slot: Option<StoreSlot>,
    pub keys: Arc<ProviderKeys>,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub auto: Arc<AutoState>,
}

#[async_trait]
impl AdminRoutes for ProviderKeyRoutes {
    async fn handle(&self, req: &AdminRequest) -> Option<AdminResponse> {
        let path = req.path.trim_end_matches('/');
        let rest = path.strip_prefix("/v1/providers/")?;
        let (name, tail) = rest.split_once("/keys")?;
        let id = match tail {
            "" => None,
            t => Some(
                t.strip_prefix('/')
                    .filter(|i| !i.is_empty() && !i.contains('/'))?,
            ),
        };
        if name.is_empty() || name.contains('/') {
            return None;
        }
        let res = match (req.method.as_str(), id) {
            ("POST", None) => self.add(req, name).await,
            ("GET", None) => self.list(req, name).await,
            ("DELETE", Some(id)) => self.delete(req, name, id).await,
            (m, _) => Err(GatewayError::MethodNotAllowed(format!(
                "Method {m} is not allowed on {path}."
            ))),
        };
        Some(res.unwrap_or_else(|e| AdminResponse::error(&e)))
    }
}

/// The public view of a stored key: never the secret.
fn view(row: &ProviderKeyRow, keys: &ProviderKeys, now: i64) -> Value {
    let cooldown = keys.cooldown(&row.id, now);
    let state = if !keys.readable(&row.provider, &row.id) {
        "undecryptable"
    } else if cooldown.is_some() {
        "cooling_down"
    } else {
        "active"
    };
    json!({
        "id": row.id,
        "object": "provider.key",
        "provider": row.provider,
        "label": row.label,
        "weight": row.weight,
        "last4": (!row.last4.is_empty()).then_some(&row.last4),
        "master_key_id": row.kid,
        "created_ms": row.created_ms,
        "state": state,
        "cooldown": cooldown.map(|c| json!({"until_ms": c.until_ms, "reason": c.reason})),
    })
}

/// The audit form: no secret, no ciphertext, no state of this gateway.
fn audit_view(row: &ProviderKeyRow) -> Value {
    json!({
        "id": row.id,
        "provider": row.provider,
        "label": row.label,
        "weight": row.weight,
        "last4": row.last4,
        "master_key_id": row.kid,
        "created_ms": row.created_ms,
    })
}

impl ProviderKeyRoutes {
    /// Admin scope, not locked to a project.
    fn allowed(req: &AdminRequest) -> Result<(), GatewayError> {
        req.caller.require(Scope::Admin)?;
        if let Some(p) = &req.caller.project {
            return Err(GatewayError::Forbidden(format!(
                "this key is locked to project '{p}'; provider keys serve the whole gateway and need an admin key without a project"
            )));
        }
        Ok(())
    }

    /// The profile's name for a provider id or alias; 404 naming it otherwise.
    fn provider(&self, name: &str) -> Result<(String, bool), GatewayError> {
        let rt = self.runtime.load();
        let prof = rt
            .known
            .iter()
            .find(|p| p.ids().any(|i| i == name))
            .ok_or_else(|| GatewayError::NotFound {
                message: format!(
                    "No provider named '{name}'. Provider keys can be added for the providers of filters/ (see GET /v1/models for the active ones)."
                ),
                code: "provider_not_found",
                param: Some("name".into()),
            })?;
        Ok((
            prof.name.clone(),
            crate::providers::auth::key_header(prof).is_some(),
        ))
    }

    async fn store(&self) -> Result<Arc<dyn Store>, GatewayError> {
        let slot = self.slot.as_ref().ok_or_else(|| {
            GatewayError::Unavailable(
                "provider keys are kept in the store: storage.backend is \"none\" on this gateway"
                    .into(),
            )
        })?;
        slot.wait(STORE_WAIT).await.ok_or_else(|| {
            GatewayError::Unavailable("the store is temporarily unavailable; retry shortly".into())
        })
    }

    /// Re-read the table so this gateway's next request sees the change at once.
    async fn refresh(&self, store: &Arc<dyn Store>) -> Result<Vec<ProviderKeyRow>, GatewayError> {
        let rows = store.provider_keys().await.map_err(store_err)?;
        self.keys.replace(&rows);
        Ok(rows)
    }

    async fn audit(
        &self,
        store: &Arc<dyn Store>,
        req: &AdminRequest,
        action: &str,
        old: Option<&ProviderKeyRow>,
        new: Option<&ProviderKeyRow>,
    ) -> Result<(), GatewayError> {
        let entry = AuditAppend {
            ts_ms: now_ms(),
            actor: actor(req),
            action: action.into(),
            route: None,
            old: old.map(|o| audit_view(o).to_string()),
            new: new.map(|n| audit_view(n).to_string()),
            reason: None,
        };
        let e = store.append_audit(&entry).await.map_err(store_err)?;
        crate::metrics::metrics()
            .audit_entries
            .with_label_values(&[action])
            .inc();
        self.auto
            .emit(crate::rollout::webhook::EventKind::Audit, || json!(e));
        Ok(())
    }

    async fn add(&self, req: &AdminRequest, name: &str) -> Result<AdminResponse, GatewayError> {
        Self::allowed(req)?;
        let (provider, keyed) = self.provider(name)?;
        if !keyed {
            return Err(GatewayError::invalid_code(
                format!(
                    "The provider '{provider}' does not authenticate with an API key (SigV4, OAuth or none); runtime keys apply to providers with bearer or header API keys."
                ),
                Some("name"),
                "provider_keys_unsupported",
            ));
        }
        let new = pk::parse_new_key(&body_object(req)?)?;
        if !self.keys.master().is_set() {
            return Err(GatewayError::Unavailable(format!(
                "Provider keys are stored encrypted and this gateway has no master key: set {} (32 random bytes, base64; `loopgate vault new-key` makes one) or {} (a file holding it), or vault.master_key_file, and restart.",
                pk::ENV_KEY,
                pk::ENV_KEY_FILE
            )));
        }
        let store = self.store().await?;
        let id = crate::trace::ids::random_id("pk_", crate::trace::ids::BASE36, 20);
        let (kid, secret) = self
            .keys
            .master()
            .seal(&provider, &id, new.secret.expose())
            .map_err(|e| GatewayError::Internal(format!("encrypting the key: {e}")))?;
        let now = now_ms();
        let row = ProviderKeyRow {
            id,
            provider,
            label: new.label,
            weight: i64::from(new.weight),
            last4: pk::last4(new.secret.expose()),
            kid,
            secret,
            created_ms: now,
            updated_ms: now,
        };
        store.put_provider_key(&row).await.map_err(store_err)?;
        self.refresh(&store).await?;
        self.audit(&store, req, "provider_key.create", None, Some(&row))
            .await?;
        Ok(AdminResponse::json(201, &view(&row, &self.keys, now)))
    }

    async fn list(&self, req: &AdminRequest, name: &str) -> Result<AdminResponse, GatewayError> {
        Self::allowed(req)?;
        let (provider, _) = self.provider(name)?;
        let store = self.store().await?;
        let rows = self.refresh(&store).await?;
        let now = now_ms();
        let data: Vec<Value> = rows
            .iter()
            .filter(|r| r.provider == provider)
            .map(|r| view(r, &self.keys, now))
            .collect();
        Ok(AdminResponse::json(
            200,
            &json!({"object": "list", "provider": provider, "data": data}),
        ))
    }

    async fn delete(
        &self,
        req: &AdminRequest,
        name: &str,
        id: &str,
    ) -> Result<AdminResponse, GatewayError> {
        Self::allowed(req)?;
        let (provider, _) = self.provider(name)?;
        let store = self.store().await?;
        let rows = store.provider_keys().await.map_err(store_err)?;
        let old = rows
            .into_iter()
            .find(|r| r.id == id && r.provider == provider)
            .ok_or_else(|| GatewayError::NotFound {
                message: format!("No key with id '{id}' for provider '{provider}'."),
                code: "provider_key_not_found",
                param: Some("id".into()),
            })?;
        store.delete_provider_key(id).await.map_err(store_err)?;
        self.refresh(&store).await?;
        self.audit(&store, req, "provider_key.delete", Some(&old), None)
            .await?;
        Ok(AdminResponse::json(
            200,
            &json!({"id": id, "object": "provider.key", "provider": provider, "deleted": true}),
        ))
    }
}
