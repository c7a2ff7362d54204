//! Virtual keys: `POST /v1/keys`, `GET /v1/keys[/{id}]`, `PATCH /v1/keys/{id}`,
//! `DELETE /v1/keys/{id}` (admin scope).
//!
//! The secret is returned once, by `POST`, and stored only as its SHA-256. Keys from the
//! config file are listed read-only (`"source": "config"`). A project-locked admin sees and
//! manages only its project's keys; another project's key answers like an unknown id. Every
//! change is appended to the hash-chained audit log.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::logs::{store_err, STORE_WAIT};
use super::routing::{actor, body_object};
use super::{AdminRequest, AdminResponse, AdminRoutes, Scope};
use crate::auth::keys::{generate_key, hash_key};
use crate::auth::virtual_keys::{now_ms, KeySpec, VirtualKeys};
use crate::error::GatewayError;
use crate::routing::auto::AutoState;
use crate::routing::Runtime;
use crate::store::writer::StoreSlot;
use crate::store::{AuditAppend, Store, VirtualKeyRow};

pub struct KeyRoutes {
    /// `None` with `storage.backend = "none"`: virtual keys need a store.
    pub slot: Option<StoreSlot>,
    pub vkeys: Arc<VirtualKeys>,
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub auto: Arc<AutoState>,
    /// This gateway's per-key rate and spend counters (`GET /v1/keys/{id}/usage`).
    pub limits: Arc<crate::auth::limits::Limiter>,
}

#[async_trait]
impl AdminRoutes for KeyRoutes {
    async fn handle(&self, req: &AdminRequest) -> Option<AdminResponse> {
        let path = req.path.trim_end_matches('/');
        if path == "/v1/limits" {
            let res = match req.method.as_str() {
                "GET" => self.group_limits(req).await,
                m => Err(GatewayError::MethodNotAllowed(format!(
                    "Method {m} is not allowed on {path}."
                ))),
            };
            return Some(res.unwrap_or_else(|e| AdminResponse::error(&e)));
        }
        let id = match path {
            "/v1/keys" => None,
            p => Some(p.strip_prefix("/v1/keys/")?),
        };
        let usage = id.and_then(|i| i.strip_suffix("/usage"));
        let res = match (req.method.as_str(), id) {
            ("GET", Some(_)) if usage.is_some_and(|u| !u.contains('/')) => {
                self.usage(req, usage.unwrap_or_default()).await
            }
            (_, Some(id)) if id.contains('/') => return None,
            ("POST", None) => self.create(req).await,
            ("GET", None) => self.list(req).await,
            ("GET", Some(id)) => self.get(req, id).await,
            ("PATCH", Some(id)) => self.patch(req, id).await,
            ("DELETE", Some(id)) => self.revoke(req, id).await,
            (m, _) => Err(GatewayError::MethodNotAllowed(format!(
                "Method {m} is not allowed on {path}."
            ))),
        };
        Some(res.unwrap_or_else(|e| AdminResponse::error(&e)))
    }
}

fn not_found(id: &str) -> GatewayError {
    GatewayError::NotFound {
        message: format!("No API key with id '{id}'."),
        code: "key_not_found",
        param: Some("id".into()),
    }
}

/// The public view of a stored key (never the secret or its hash).
fn view(row: &VirtualKeyRow) -> Value {
    let spec: Value = serde_json::from_str(&row.spec).unwrap_or(Value::Null);
    json!({
        "id": row.id,
        "object": "api_key",
        "source": "api",
        "spec": spec,
        "created_ms": row.created_ms,
        "updated_ms": row.updated_ms,
        "revoked_ms": row.revoked_ms,
    })
}

impl KeyRoutes {
    async fn store(&self) -> Result<Arc<dyn Store>, GatewayError> {
        let slot = self.slot.as_ref().ok_or_else(|| {
            GatewayError::Unavailable(
                "virtual keys are kept in the store: storage.backend is \"none\" on this gateway"
                    .into(),
            )
        })?;
        slot.wait(STORE_WAIT).await.ok_or_else(|| {
            GatewayError::Unavailable("the store is temporarily unavailable; retry shortly".into())
        })
    }

    /// The caller's keys: every key for an unlocked admin, its project's for a locked one.
    async fn visible(&self, req: &AdminRequest) -> Result<Vec<VirtualKeyRow>, GatewayError> {
        let rows = self
            .store()
            .await?
            .virtual_keys()
            .await
            .map_err(store_err)?;
        Ok(rows
            .into_iter()
            .filter(|r| req.caller.project.is_none() || r.project == req.caller.project)
            .collect())
    }

    async fn find(&self, req: &AdminRequest, id: &str) -> Result<VirtualKeyRow, GatewayError> {
        self.visible(req)
            .await?
            .into_iter()
            .find(|r| r.id == id)
            .ok_or_else(|| not_found(id))
    }

    /// A locked admin's keys are always in its project.
    fn lock_project(req: &AdminRequest, spec: &mut KeySpec) -> Result<(), GatewayError> {
        if let Some(p) = &req.caller.project {
            match &spec.project {
                None => spec.project = Some(p.clone()),
                Some(q) if q == p => {}
                Some(_) => {
                    return Err(GatewayError::Forbidden(format!(
                    "this key is locked to project '{p}' and can only manage keys of that project"
                )))
                }
            }
        }
        Ok(())
    }

    async fn save(
        &self,
        req: &AdminRequest,
        row: &VirtualKeyRow,
        action: &str,
        old: Option<&VirtualKeyRow>,
    ) -> Result<(), GatewayError> {
        let store = self.store().await?;
        store.put_virtual_key(row).await.map_err(store_err)?;
        self.vkeys.apply(row);
        let entry = AuditAppend {
            ts_ms: row.updated_ms,
            actor: actor(req),
            action: action.into(),
            route: None,
            old: old.map(|o| view(o).to_string()),
            new: Some(view(row).to_string()),
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

    async fn create(&self, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Admin)?;
        let mut spec = KeySpec::from_object(body_object(req)?)?;
        Self::lock_project(req, &mut spec)?;
        let secret = generate_key();
        let now = now_ms();
        let row = VirtualKeyRow {
            id: crate::proxy::ctx::random_id("vk_", crate::proxy::ctx::BASE36, 20),
            hash: hash_key(&secret),
            project: spec.project.clone(),
            spec: serde_json::to_string(&spec)
                .map_err(|e| GatewayError::Internal(e.to_string()))?,
            created_ms: now,
            updated_ms: now,
            revoked_ms: None,
        };
        self.save(req, &row, "key.create", None).await?;
        let mut v = view(&row);
        if let Some(o) = v.as_object_mut() {
            // The only time the secret leaves the gateway.
            o.insert("key".into(), Value::String(secret));
        }
        Ok(AdminResponse::json(201, &v))
    }

    async fn list(&self, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Admin)?;
        let mut data: Vec<Value> = self.visible(req).await?.iter().map(view).collect();
        let rt = self.runtime.load();
        for k in &rt.config.auth.keys {
            if req.caller.project.is_none() || k.project == req.caller.project {
                data.push(json!({
                    "id": k.id,
                    "object": "api_key",
                    "source": "config",
                    "read_only": true,
                    "spec": {"scopes": k.scopes, "project": k.project, "route": k.route,
                             "zero_retention": k.zero_retention},
                }));
            }
        }
        Ok(AdminResponse::json(
            200,
            &json!({"object": "list", "data": data}),
        ))
    }

    fn config_key(&self, req: &AdminRequest, id: &str) -> bool {
        self.runtime.load().config.auth.keys.iter().any(|k| {
            k.id == id && (req.caller.project.is_none() || k.project == req.caller.project)
        })
    }

    async fn get(&self, req: &AdminRequest, id: &str) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Admin)?;
        Ok(AdminResponse::json(200, &view(&self.find(req, id).await?)))
    }

    fn read_only(&self, req: &AdminRequest, id: &str) -> Result<(), GatewayError> {
        if self.config_key(req, id) {
            return Err(GatewayError::Conflict {
                message: format!(
                    "The key '{id}' comes from the config file and is read-only here; change it in [[auth.keys]]."
                ),
                code: "key_read_only",
            });
        }
        Ok(())
    }

    async fn patch(&self, req: &AdminRequest, id: &str) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Admin)?;
        self.read_only(req, id)?;
        let patch: Map<String, Value> = body_object(req)?;
        let old = self.find(req, id).await?;
        if old.revoked_ms.is_some() {
            return Err(GatewayError::Conflict {
                message: format!("The key '{id}' is revoked."),
                code: "key_revoked",
            });
        }
        let cur: KeySpec = serde_json::from_str(&old.spec)
            .map_err(|e| GatewayError::Internal(format!("stored key: {e}")))?;
        let mut spec = cur.patched(&patch)?;
        Self::lock_project(req, &mut spec)?;
        let row = VirtualKeyRow {
            project: spec.project.clone(),
            spec: serde_json::to_string(&spec)
                .map_err(|e| GatewayError::Internal(e.to_string()))?,
            updated_ms: now_ms().max(old.updated_ms),
            ..old.clone()
        };
        self.save(req, &row, "key.update", Some(&old)).await?;
        Ok(AdminResponse::json(200, &view(&row)))
    }

    /// A key's spend per budget period, against its budgets: this gateway's in process,
    /// the fleet's with the Redis backend.
    async fn usage(&self, req: &AdminRequest, id: &str) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Admin)?;
        let row = self.find(req, id).await?;
        let spec: KeySpec = serde_json::from_str(&row.spec)
            .map_err(|e| GatewayError::Internal(format!("stored key: {e}")))?;
        let spend = self.limits.spend_now(id, now_ms()).await?;
        let scope = if self.limits.is_shared() {
            "fleet"
        } else {
            "gateway"
        };
        let periods = crate::auth::limits::PERIOD_ORDER;
        let by_period: Map<String, Value> = periods
            .iter()
            .zip(spend)
            .map(|(p, usd)| (p.to_string(), json!(usd)))
            .collect();
        let budgets: Vec<Value> = spec
            .budgets
            .iter()
            .map(|b| {
                let spent = periods
                    .iter()
                    .position(|p| *p == b.period)
                    .map_or(0.0, |i| spend[i]);
                json!({"period": b.period, "usd": b.usd, "spent_usd": spent,
                       "remaining_usd": (b.usd - spent).max(0.0),
                       "exhausted": spent >= b.usd})
            })
            .collect();
        Ok(AdminResponse::json(
            200,
            &json!({"object": "api_key.usage", "id": id, "scope": scope,
                    "spend_usd": by_period, "budgets": budgets}),
        ))
    }

    /// `GET /v1/limits`: the projects, teams and users `[limits]` has limits for, with
    /// their spend against their budgets. A project-locked caller sees its project only
    /// (teams and users may span projects).
    async fn group_limits(&self, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
        use crate::auth::limits::{GroupKind, PERIOD_ORDER};
        req.caller.require(Scope::Admin)?;
        let rt = self.runtime.load_full();
        let now = now_ms();
        let mut data = Vec::new();
        for kind in GroupKind::ALL {
            for (name, g) in kind.configured(&rt.config.limits) {
                let visible = match req.caller.project.as_deref() {
                    None => true,
                    Some(p) => kind == GroupKind::Project && p == name,
                };
                if !visible {
                    continue;
                }
                let spend = self.limits.group_spend_now(kind, name, now).await?;
                let budgets: Vec<Value> = g
                    .budgets
                    .iter()
                    .map(|b| {
                        let spent = spend[b.period as usize];
                        json!({"period": b.period.as_str(), "usd": b.usd, "soft_pct": b.soft_pct,
                               "spent_usd": spent, "remaining_usd": (b.usd - spent).max(0.0),
                               "exhausted": spent >= b.usd})
                    })
                    .collect();
                let by_period: Map<String, Value> = PERIOD_ORDER
                    .iter()
                    .zip(spend)
                    .map(|(p, usd)| (p.to_string(), json!(usd)))
                    .collect();
                data.push(
                    json!({"object": "limit_group", "kind": kind.as_str(), "name": name,
                                 "rpm": g.rpm, "tpm": g.tpm, "budgets": budgets,
                                 "spend_usd": by_period}),
                );
            }
        }
        let scope = if self.limits.is_shared() {
            "fleet"
        } else {
            "gateway"
        };
        Ok(AdminResponse::json(
            200,
            &json!({"object": "list", "scope": scope, "data": data}),
        ))
    }

    async fn revoke(&self, req: &AdminRequest, id: &str) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Admin)?;
        self.read_only(req, id)?;
        let old = self.find(req, id).await?;
        if old.revoked_ms.is_some() {
            return Ok(AdminResponse::json(200, &view(&old)));
        }
        let now = now_ms().max(old.updated_ms);
        let row = VirtualKeyRow {
            updated_ms: now,
            revoked_ms: Some(now),
            ..old.clone()
        };
        self.save(req, &row, "key.revoke", Some(&old)).await?;
        Ok(AdminResponse::json(200, &view(&row)))
    }
}
