//! Feedback-routing endpoints as one [`AdminRoutes`] family:
//! - `POST /v1/feedback` (see [`super::feedback`]),
//! - `GET /v1/decisions`, `GET /v1/decisions/{id}`, `POST /v1/decisions/{id}/verify`,
//!   `GET /v1/export/decisions`,
//!   `POST /v1/routing/explain` (see [`super::decisions`]),
//! - `GET /v1/routing`: the published router table (posteriors, phases, gates, costs),
//! - `GET|PUT|DELETE /v1/constraints`: per-route constraints, every change audited,
//! - `POST /v1/routes/{route}/mode`, `POST|DELETE /v1/routes/{route}/pin`: operator switches,
//! - `GET /v1/audit`: the hash-chained audit log, verified on read.
//!
//! Operator state lives in the store (`route_state`), so it survives restarts and every
//! instance sharing the store applies it at its next refresh; this instance applies it at once.

use std::sync::Arc;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use serde_json::{json, Map, Value};

use super::logs::{store_err, store_for};
use super::{AdminRequest, AdminResponse, AdminRoutes, Scope, Visibility};
use crate::error::GatewayError;
use crate::feedback::constraints::Constraints;
use crate::feedback::{Mode, Signal};
use crate::metrics::metrics;
use crate::routing::auto::AutoState;
use crate::routing::Runtime;
use crate::services::aggregator::{effective_state, PinState, Traffic};
use crate::store::routing::{verify_chain, GENESIS_HASH};
use crate::store::writer::StoreSlot;
use crate::store::{AuditAppend, AuditEntry, Store};

pub struct RoutingRoutes {
    /// `None` with `storage.backend = "none"`.
    pub slot: Option<StoreSlot>,
    pub auto: Arc<AutoState>,
    pub runtime: Arc<ArcSwap<Runtime>>,
}

#[async_trait]
impl AdminRoutes for RoutingRoutes {
    async fn handle(&self, req: &AdminRequest) -> Option<AdminResponse> {
        let path = req.path.trim_end_matches('/');
        let slot = self.slot.as_ref();
        let rt = self.runtime.load_full();
        let res = match path {
            "/v1/feedback" => super::feedback::handle(slot, &self.auto, req).await,
            "/v1/decisions" => super::decisions::list(slot, req).await,
            "/v1/export/decisions" => super::decisions::export(slot, req).await,
            "/v1/routing/explain" => super::decisions::explain(&rt, &self.auto, req).await,
            "/v1/routing" => self.table(&rt, req).await,
            "/v1/constraints" => self.constraints(&rt, req).await,
            "/v1/audit" => self.audit(req).await,
            "/v1/report/shadow" => super::report::shadow(slot, &rt, &self.auto, req).await,
            p if p == "/v1/experiments" || p.starts_with("/v1/experiments/") => {
                super::experiments::handle(self, &rt, req, p).await
            }
            p if p.starts_with("/v1/feedback/") => {
                super::feedback::get_one(slot, req, &p["/v1/feedback/".len()..]).await
            }
            p if verify_id(p).is_some() => {
                let id = verify_id(p).unwrap_or_default();
                super::decisions::verify(slot, &self.auto, req, id).await
            }
            p if p.starts_with("/v1/decisions/") => {
                super::decisions::get_one(slot, req, &p["/v1/decisions/".len()..]).await
            }
            p if p.starts_with("/v1/routes/") => {
                let rest = &p["/v1/routes/".len()..];
                // Route names may hold any character: `/` percent-encoded (`%2F`) or raw.
                let decode = |r: &str| {
                    percent_encoding::percent_decode_str(r)
                        .decode_utf8_lossy()
                        .into_owned()
                };
                match rest.rsplit_once('/') {
                    Some((route, "mode")) => self.mode(&rt, req, &decode(route)).await,
                    Some((route, "pin")) => self.pin(&rt, req, &decode(route)).await,
                    _ => return None,
                }
            }
            _ => return None,
        };
        Some(res.unwrap_or_else(|e| AdminResponse::error(&e)))
    }
}

/// The id of `/v1/decisions/{id}/verify`.
fn verify_id(path: &str) -> Option<&str> {
    path.strip_prefix("/v1/decisions/")?
        .strip_suffix("/verify")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

pub(crate) fn actor(req: &AdminRequest) -> String {
    req.caller
        .key_id
        .clone()
        .unwrap_or_else(|| "loopback".into())
}

pub(crate) fn reason(body: &Map<String, Value>) -> Result<Option<String>, GatewayError> {
    match body.get("reason") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.chars().count() <= 1000 => Ok(Some(s.clone())),
        Some(_) => Err(GatewayError::invalid(
            "'reason' must be a string of at most 1000 characters",
            Some("reason"),
        )),
    }
}

pub(crate) fn body_object(req: &AdminRequest) -> Result<Map<String, Value>, GatewayError> {
    if req.body.is_empty() {
        return Ok(Map::new());
    }
    crate::proxy::request::parse_object(&req.body)
}

impl RoutingRoutes {
    pub(crate) async fn store(&self, vis: &Visibility) -> Result<Arc<dyn Store>, GatewayError> {
        store_for(
            self.slot.as_ref(),
            "operator state is kept in the store",
            vis,
        )
        .await
    }

    /// A feedback route the caller may see. A route owned by another project (or by none,
    /// for a locked caller) answers exactly like an undefined one.
    pub(crate) fn feedback_route<'a>(
        rt: &'a Runtime,
        route: &str,
        vis: &Visibility,
    ) -> Result<&'a crate::config::RouteConfig, GatewayError> {
        match rt.route(route).filter(|_| vis.owns_route(route)) {
            Some(rc) if rc.is_feedback() => Ok(rc),
            Some(_) => Err(GatewayError::invalid(
                format!("route '{route}' is a static rule, not a feedback route (no baseline)"),
                Some("route"),
            )),
            None => Err(GatewayError::NotFound {
                message: format!("Routing rule '{route}' is not defined."),
                code: "route_not_found",
                param: Some("route".into()),
            }),
        }
    }

    /// Store the new state, append the audit entry, and wake the aggregator.
    pub(crate) async fn change(
        &self,
        vis: &Visibility,
        route: &str,
        key: &str,
        value: Option<String>,
        entry: AuditAppend,
    ) -> Result<AuditEntry, GatewayError> {
        let store = self.store(vis).await?;
        store
            .put_route_state(route, key, value.as_deref(), entry.ts_ms)
            .await
            .map_err(store_err)?;
        let e = store.append_audit(&entry).await.map_err(store_err)?;
        metrics()
            .audit_entries
            .with_label_values(&[&entry.action])
            .inc();
        self.auto
            .emit(crate::rollout::webhook::EventKind::Audit, || json!(e));
        self.auto
            .states_dirty
            .store(true, std::sync::atomic::Ordering::Release);
        self.auto.nudge.notify_one();
        Ok(e)
    }

    /// The operator state as the aggregator last read it, plus what is in the store now.
    pub(crate) async fn current_traffic(&self, vis: &Visibility) -> Result<Traffic, GatewayError> {
        let store = self.store(vis).await?;
        let states = store.route_states().await.map_err(store_err)?;
        Ok(Traffic::from_rows(
            Vec::new(),
            Vec::new(),
            states,
            &Default::default(),
        ))
    }

    async fn table(&self, rt: &Runtime, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Read)?;
        if req.method != "GET" {
            return Err(GatewayError::MethodNotAllowed("use GET".into()));
        }
        let vis = req.caller.visibility(Some(&rt.config));
        let t = self.auto.table.load();
        let mut routes = Vec::new();
        let mut names: Vec<&String> = t.routes.keys().collect();
        names.sort();
        for name in names {
            let ar = &t.routes[name];
            if req.param("route").is_some_and(|r| r != name) || !vis.owns_route(name) {
                continue;
            }
            let p = &ar.prepared;
            let models: Vec<Value> = p
                .models
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let signals: Vec<Value> = Signal::ALL
                        .iter()
                        .map(|s| {
                            let e = m.posterior.signal(*s);
                            json!({"signal": s.as_str(), "share": e.share, "weight": e.weight,
                                   "reliability": e.reliability, "mean": e.mean, "count": e.count,
                                   "offset": e.offset})
                        })
                        .collect();
                    json!({
                        "model": &*m.model,
                        "baseline": i == 0,
                        "quality_mean": m.posterior.mean(),
                        "quality_interval_95": [m.posterior.quantile(0.025), m.posterior.quantile(0.975)],
                        "samples": m.posterior.samples,
                        "phase": m.posterior.phase.as_str(),
                        "signals": signals,
                        "confidence": m.gate.confidence,
                        "cost_per_request": m.stats.cost_per_request,
                        "p95_latency_ms": m.stats.p95_latency_ms,
                        "success_rate": m.success_rate,
                        "score": m.score,
                        "static_failures": m.static_failures.iter().map(|k| k.name()).collect::<Vec<_>>(),
                        "exploration_probability": m.ts_prob,
                        "in_exploration_set": m.in_explore,
                        "gap_upper_bound": m.gap_ub,
                        "retained_by_hysteresis": m.retained,
                        "promotion_tests": {"last_at_samples": m.tests.last, "tested_now": m.tests.now,
                                            "passing_since_samples": m.tests.passing_since,
                                            "confirmed": m.tests.confirmed},
                        "change": m.posterior.change,
                    })
                })
                .collect();
            let contexts: Vec<Value> = {
                let mut cs: Vec<(&String, &Arc<crate::feedback::PreparedRoute>)> =
                    ar.contexts.iter().collect();
                cs.sort_by(|a, b| a.0.cmp(b.0));
                cs.iter()
                    .map(|(c, pr)| {
                        json!({
                            "context": c,
                            "exploit": &*pr.models[pr.exploit(&crate::feedback::RequestContext::default())].model,
                            "models": pr.models.iter().map(|m| json!({
                                "model": &*m.model, "quality_mean": m.posterior.mean(),
                                "samples": m.posterior.samples, "confidence": m.gate.confidence,
                            })).collect::<Vec<_>>(),
                        })
                    })
                    .collect()
            };
            // Project learning pools (`learning = "project"`), as far as the caller sees them.
            let mut pools: Vec<(&String, &crate::routing::auto::AutoRoute)> = ar
                .pools
                .iter()
                .filter(|(project, _)| vis.sees(Some(project.as_str())))
                .collect();
            pools.sort_by(|a, b| a.0.cmp(b.0));
            let pools: Vec<Value> = pools
                .iter()
                .map(|(project, pr)| {
                    let p = &pr.prepared;
                    json!({
                        "project": project,
                        "pool": crate::routing::auto::pool_name(Some(project.as_str())),
                        "exploit": &*p.models[p.exploit(&crate::feedback::RequestContext::default())].model,
                        "models": p.models.iter().map(|m| json!({
                            "model": &*m.model, "quality_mean": m.posterior.mean(),
                            "samples": m.posterior.samples, "confidence": m.gate.confidence,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect();
            routes.push(json!({
                "route": name,
                "learning": rt.route(name).map(|rc| rc.learning),
                "pools": pools,
                "mode": p.mode.as_str(),
                "mode_source": ar.info.mode_source,
                "baseline": &*p.models[0].model,
                // The model the router serves now outside exploration (route-level snapshot).
                "exploit": &*p.models[p.exploit(&crate::feedback::RequestContext::default())].model,
                "pinned": p.pinned.map(|i| &*p.models[i].model),
                "pin_reason": ar.info.pin_reason,
                "constraints": p.constraints,
                "constraints_source": ar.info.constraints_source,
                "weights": p.weights,
                "exploration": p.exploration,
                "exploration_epsilon": p.budget_epsilon,
                "promotion": p.promotion,
                "token_mix": {"prompt_tokens": ar.info.prompt_tokens, "completion_tokens": ar.info.completion_tokens, "measured": ar.info.token_mix_measured},
                "excluded": ar.info.excluded.iter().map(|(m, e)| json!({"model": m, "reason": e})).collect::<Vec<_>>(),
                "models": models,
                "contextual": ar.contextual,
                "contexts": contexts,
                "holdback_share": ar.holdback_share,
                "rollback_monitor": t.rollout.get(name).and_then(|r| r.monitor.as_ref()),
                "experiment": t.rollout.get(name).and_then(|r| r.experiment.as_ref()).map(|e| json!({
                    "id": e.id, "state": e.state.name(), "step": e.step, "share": e.share(), "candidate": e.candidate,
                })),
            }));
        }
        let broken: Vec<Value> = t
            .broken
            .iter()
            .filter(|(r, _)| vis.owns_route(r))
            .map(|(r, e)| json!({"route": r, "error": e}))
            .collect();
        Ok(AdminResponse::json(
            200,
            &json!({
                "object": "routing.table",
                "version": t.version,
                "built_ms": t.built_ms,
                "events_folded": t.events_folded,
                "signing_key_id": self.auto.signing.key_id,
                "signing_key_ephemeral": self.auto.ephemeral_key,
                "routes": routes,
                "broken": broken,
            }),
        ))
    }

    async fn constraints(
        &self,
        rt: &Runtime,
        req: &AdminRequest,
    ) -> Result<AdminResponse, GatewayError> {
        let vis = req.caller.visibility(Some(&rt.config));
        match req.method.as_str() {
            "GET" => {
                req.caller.require(Scope::Read)?;
                let traffic = self.current_traffic(&vis).await?;
                let mut data = Vec::new();
                for (name, rc) in rt.config.routes.iter().filter(|(_, r)| r.is_feedback()) {
                    if req.param("route").is_some_and(|r| r != name) || !vis.owns_route(name) {
                        continue;
                    }
                    let (_, _, c, src, _) = effective_state(name, rc, &traffic);
                    data.push(json!({"route": name, "constraints": c, "source": src, "config": rc.constraints}));
                }
                Ok(AdminResponse::json(
                    200,
                    &json!({"object": "list", "data": data}),
                ))
            }
            "PUT" | "PATCH" => {
                req.caller.require(Scope::Admin)?;
                let body = body_object(req)?;
                let route = body
                    .get("route")
                    .and_then(Value::as_str)
                    .or_else(|| req.param("route"))
                    .ok_or_else(|| {
                        GatewayError::invalid_code(
                            "Missing 'route'.",
                            Some("route"),
                            "missing_required_parameter",
                        )
                    })?
                    .to_string();
                let rc = Self::feedback_route(rt, &route, &vis)?;
                let patch = body
                    .get("constraints")
                    .and_then(Value::as_object)
                    .ok_or_else(|| {
                        GatewayError::invalid_code(
                            "Missing 'constraints' (an object of the knobs to change).",
                            Some("constraints"),
                            "missing_required_parameter",
                        )
                    })?;
                let traffic = self.current_traffic(&vis).await?;
                let (_, _, old, _, _) = effective_state(&route, rc, &traffic);
                // Merge the given knobs over the current ones (null clears an optional knob).
                let mut merged = serde_json::to_value(&old)
                    .ok()
                    .and_then(|v| v.as_object().cloned())
                    .unwrap_or_default();
                for (k, v) in patch {
                    merged.insert(k.clone(), v.clone());
                }
                let new: Constraints =
                    serde_json::from_value(Value::Object(merged)).map_err(|e| {
                        GatewayError::invalid(format!("constraints: {e}"), Some("constraints"))
                    })?;
                new.validate()
                    .map_err(|e| GatewayError::invalid(e.to_string(), Some("constraints")))?;
                let old_s = serde_json::to_string(&old).unwrap_or_default();
                let new_s = serde_json::to_string(&new).unwrap_or_default();
                let entry = self
                    .change(
                        &vis,
                        &route,
                        "constraints",
                        Some(new_s.clone()),
                        AuditAppend {
                            ts_ms: chrono::Utc::now().timestamp_millis(),
                            actor: actor(req),
                            action: "constraints.update".into(),
                            route: Some(route.clone()),
                            old: Some(old_s),
                            new: Some(new_s),
                            reason: reason(&body)?,
                        },
                    )
                    .await?;
                Ok(AdminResponse::json(
                    200,
                    &json!({"object": "routing.constraints", "route": route, "constraints": new, "source": "api", "audit": entry}),
                ))
            }
            "DELETE" => {
                req.caller.require(Scope::Admin)?;
                let route = req
                    .param("route")
                    .ok_or_else(|| {
                        GatewayError::invalid_code(
                            "Missing 'route' query parameter.",
                            Some("route"),
                            "missing_required_parameter",
                        )
                    })?
                    .to_string();
                let rc = Self::feedback_route(rt, &route, &vis)?;
                let traffic = self.current_traffic(&vis).await?;
                let (_, _, old, _, _) = effective_state(&route, rc, &traffic);
                let entry = self
                    .change(
                        &vis,
                        &route,
                        "constraints",
                        None,
                        AuditAppend {
                            ts_ms: chrono::Utc::now().timestamp_millis(),
                            actor: actor(req),
                            action: "constraints.reset".into(),
                            route: Some(route.clone()),
                            old: serde_json::to_string(&old).ok(),
                            new: serde_json::to_string(&rc.constraints).ok(),
                            reason: None,
                        },
                    )
                    .await?;
                Ok(AdminResponse::json(
                    200,
                    &json!({"object": "routing.constraints", "route": route, "constraints": rc.constraints, "source": "config", "audit": entry}),
                ))
            }
            m => Err(GatewayError::MethodNotAllowed(format!(
                "{m} is not allowed on /v1/constraints; use GET, PUT or DELETE"
            ))),
        }
    }

    async fn mode(
        &self,
        rt: &Runtime,
        req: &AdminRequest,
        route: &str,
    ) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Admin)?;
        if req.method != "POST" && req.method != "PUT" {
            return Err(GatewayError::MethodNotAllowed(
                "use POST {\"mode\": \"off|shadow|live\"}".into(),
            ));
        }
        let vis = req.caller.visibility(Some(&rt.config));
        let rc = Self::feedback_route(rt, route, &vis)?;
        let body = body_object(req)?;
        let mode: Mode = body
            .get("mode")
            .cloned()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or_else(|| {
                GatewayError::invalid("'mode' must be off, shadow or live", Some("mode"))
            })?;
        let traffic = self.current_traffic(&vis).await?;
        let (old, ..) = effective_state(route, rc, &traffic);
        let entry = self
            .change(
                &vis,
                route,
                "mode",
                serde_json::to_string(&mode).ok(),
                AuditAppend {
                    ts_ms: chrono::Utc::now().timestamp_millis(),
                    actor: actor(req),
                    action: "route.mode".into(),
                    route: Some(route.to_string()),
                    old: serde_json::to_string(&old).ok(),
                    new: serde_json::to_string(&mode).ok(),
                    reason: reason(&body)?,
                },
            )
            .await?;
        Ok(AdminResponse::json(
            200,
            &json!({"object": "routing.mode", "route": route, "mode": mode, "previous": old, "audit": entry}),
        ))
    }

    async fn pin(
        &self,
        rt: &Runtime,
        req: &AdminRequest,
        route: &str,
    ) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Admin)?;
        let vis = req.caller.visibility(Some(&rt.config));
        let rc = Self::feedback_route(rt, route, &vis)?;
        let traffic = self.current_traffic(&vis).await?;
        let (.., old) = effective_state(route, rc, &traffic);
        let now = chrono::Utc::now().timestamp_millis();
        match req.method.as_str() {
            "POST" | "PUT" => {
                let body = body_object(req)?;
                let baseline = rc.baseline.clone().unwrap_or_default();
                let model = match body.get("model") {
                    None | Some(Value::Null) => baseline,
                    Some(Value::String(m)) if *m == baseline || rc.candidates.contains(m) => m.clone(),
                    Some(Value::String(m)) => {
                        return Err(GatewayError::invalid(
                            format!("model '{m}' is neither the baseline nor a candidate of route '{route}'"),
                            Some("model"),
                        ))
                    }
                    Some(_) => return Err(GatewayError::invalid("'model' must be a string", Some("model"))),
                };
                let pin = PinState {
                    model,
                    reason: reason(&body)?,
                    actor: Some(actor(req)),
                    at_ms: now,
                    automatic: false,
                };
                let v = serde_json::to_string(&pin).unwrap_or_default();
                let entry = self
                    .change(
                        &vis,
                        route,
                        "pin",
                        Some(v.clone()),
                        AuditAppend {
                            ts_ms: now,
                            actor: actor(req),
                            action: "route.pin".into(),
                            route: Some(route.to_string()),
                            old: old.as_ref().and_then(|p| serde_json::to_string(p).ok()),
                            new: Some(v),
                            reason: pin.reason.clone(),
                        },
                    )
                    .await?;
                Ok(AdminResponse::json(
                    200,
                    &json!({"object": "routing.pin", "route": route, "pinned": pin, "audit": entry}),
                ))
            }
            "DELETE" => {
                let body = body_object(req)?;
                let Some(old) = old else {
                    return Err(GatewayError::NotFound {
                        message: format!("route '{route}' is not pinned"),
                        code: "not_pinned",
                        param: None,
                    });
                };
                // The rollback monitor starts afresh from now: old evidence must not re-pin.
                let store = self.store(&vis).await?;
                store
                    .put_route_state(route, "rollback_since", Some(&now.to_string()), now)
                    .await
                    .map_err(store_err)?;
                let entry = self
                    .change(
                        &vis,
                        route,
                        "pin",
                        None,
                        AuditAppend {
                            ts_ms: now,
                            actor: actor(req),
                            action: "route.unpin".into(),
                            route: Some(route.to_string()),
                            old: serde_json::to_string(&old).ok(),
                            new: None,
                            reason: reason(&body)?,
                        },
                    )
                    .await?;
                Ok(AdminResponse::json(
                    200,
                    &json!({"object": "routing.pin", "route": route, "pinned": null, "audit": entry}),
                ))
            }
            m => Err(GatewayError::MethodNotAllowed(format!(
                "{m} is not allowed; use POST or DELETE"
            ))),
        }
    }

    async fn audit(&self, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
        req.caller.require(Scope::Read)?;
        if req.method != "GET" {
            return Err(GatewayError::MethodNotAllowed(
                "the audit log is append-only; use GET".into(),
            ));
        }
        for (k, _) in &req.query {
            if !matches!(k.as_str(), "after" | "limit" | "route") {
                return Err(GatewayError::invalid(
                    format!("unknown query parameter '{k}'"),
                    Some(k),
                ));
            }
        }
        let after: i64 = match req.param("after") {
            None => 0,
            Some(v) => v.parse().ok().filter(|n| *n >= 0).ok_or_else(|| {
                GatewayError::invalid("'after' must be a sequence number >= 0", Some("after"))
            })?,
        };
        let limit: usize = match req.param("limit") {
            None => 100,
            Some(v) => v
                .parse()
                .ok()
                .filter(|n| (1..=1000).contains(n))
                .ok_or_else(|| GatewayError::invalid("'limit' must be 1..=1000", Some("limit")))?,
        };
        let vis = req.caller.visibility(Some(&self.runtime.load().config));
        let store = self.store(&vis).await?;
        // One entry before the page, so the page's first link is verified too.
        let start = (after - 1).max(0);
        let mut rows = store
            .list_audit(start, limit + 1)
            .await
            .map_err(store_err)?;
        let prev = if after > 0 && rows.first().is_some_and(|e| e.seq == after) {
            rows.remove(0).hash
        } else if after == 0 {
            GENESIS_HASH.to_string()
        } else {
            rows.retain(|e| e.seq > after);
            rows.first()
                .map(|e| e.prev_hash.clone())
                .unwrap_or_default()
        };
        rows.truncate(limit);
        let verified = verify_chain(&prev, &rows);
        let next = (rows.len() == limit)
            .then(|| rows.last().map(|e| e.seq))
            .flatten();
        let route = req.param("route");
        let data: Vec<&AuditEntry> = rows
            .iter()
            .filter(|e| route.is_none_or(|r| e.route.as_deref() == Some(r)))
            // A locked caller sees the entries of the routes its project owns.
            .filter(|e| {
                e.route.as_deref().is_some_and(|r| vis.owns_route(r)) || vis == Visibility::All
            })
            .collect();
        Ok(AdminResponse::json(
            200,
            &json!({
                "object": "list",
                "data": data,
                "chain_verified": verified.is_ok(),
                "chain_error": verified.err(),
                "has_more": next.is_some(),
                "next_after": next,
            }),
        ))
    }
}
