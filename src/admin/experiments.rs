//! Canary experiments: `POST /v1/experiments`, `GET /v1/experiments[/{id}]`,
//! `POST /v1/experiments/{id}/stop`, `POST /v1/experiments/{id}/promote`.
//!
//! The spec is stored in the route's state; the experiment's progress (step, estimates,
//! verdict) is derived by every instance from the scored decisions (see
//! `services::aggregator::derive_experiment`), so all instances agree without coordination.
//! Promotion to `live` is the operator's `promote` unless the spec set `auto_promote`.

use serde_json::{json, Value};

use super::logs::store_err;
use super::routing::{actor, body_object, reason, RoutingRoutes};
use super::{AdminRequest, AdminResponse, Scope, Visibility};
use crate::error::GatewayError;
use crate::feedback::Mode;
use crate::rollout::canary::{Experiment, ExperimentSpec};
use crate::routing::Runtime;
use crate::services::aggregator::{effective_state, ExperimentRecord, OperatorAction};
use crate::store::AuditAppend;

fn new_id() -> String {
    crate::proxy::ctx::random_id("exp_", crate::proxy::ctx::BASE36, 20)
}

/// The derived experiment for a record (the last refresh's, else a fresh one).
fn current(r: &RoutingRoutes, rec: &ExperimentRecord) -> Option<Experiment> {
    let t = r.auto.table.load();
    if let Some(e) = t
        .rollout
        .get(&rec.spec.route)
        .and_then(|x| x.experiment.as_ref())
        .filter(|e| e.id == rec.id)
    {
        return Some((**e).clone());
    }
    Experiment::new(&rec.id, rec.spec.clone(), rec.created_ms).ok()
}

/// The experiments the caller may see (the scoped store shows a locked caller its routes').
async fn records(
    r: &RoutingRoutes,
    vis: &Visibility,
) -> Result<Vec<ExperimentRecord>, GatewayError> {
    let store = r.store(vis).await?;
    let states = store.route_states().await.map_err(store_err)?;
    Ok(states
        .into_iter()
        .filter(|s| s.key == "experiment")
        .filter_map(|s| serde_json::from_str::<ExperimentRecord>(&s.value).ok())
        .collect())
}

fn report(r: &RoutingRoutes, rec: &ExperimentRecord) -> Value {
    match current(r, rec) {
        Some(e) => {
            let mut v = serde_json::to_value(e.report()).unwrap_or(Value::Null);
            if let Some(o) = v.as_object_mut() {
                o.insert("object".into(), json!("experiment"));
                o.insert("operator".into(), json!(rec.operator));
            }
            v
        }
        None => json!({"object": "experiment", "id": rec.id, "error": "spec no longer valid"}),
    }
}

pub async fn handle(
    r: &RoutingRoutes,
    rt: &Runtime,
    req: &AdminRequest,
    path: &str,
) -> Result<AdminResponse, GatewayError> {
    let rest = path
        .trim_start_matches("/v1/experiments")
        .trim_start_matches('/');
    let vis = req.caller.visibility(Some(&rt.config));
    match (req.method.as_str(), rest.split_once('/')) {
        ("GET", None) if rest.is_empty() => {
            req.caller.require(Scope::Read)?;
            let data: Vec<Value> = records(r, &vis)
                .await?
                .iter()
                .map(|x| report(r, x))
                .collect();
            Ok(AdminResponse::json(
                200,
                &json!({"object": "list", "data": data}),
            ))
        }
        ("GET", None) => {
            req.caller.require(Scope::Read)?;
            let rec = records(r, &vis)
                .await?
                .into_iter()
                .find(|x| x.id == rest)
                .ok_or_else(|| not_found(rest))?;
            Ok(AdminResponse::json(200, &report(r, &rec)))
        }
        ("POST", None) if rest.is_empty() => create(r, rt, req, &vis).await,
        ("POST", Some((id, action @ ("stop" | "promote")))) => {
            operate(r, rt, req, &vis, id, action).await
        }
        (m, _) => Err(GatewayError::MethodNotAllowed(format!(
            "{m} is not allowed on {path}"
        ))),
    }
}

fn not_found(id: &str) -> GatewayError {
    GatewayError::NotFound {
        message: format!("No experiment with id '{id}'."),
        code: "experiment_not_found",
        param: None,
    }
}

async fn create(
    r: &RoutingRoutes,
    rt: &Runtime,
    req: &AdminRequest,
    vis: &Visibility,
) -> Result<AdminResponse, GatewayError> {
    req.caller.require(Scope::Admin)?;
    let mut spec: ExperimentSpec = serde_json::from_slice(&req.body)
        .map_err(|e| GatewayError::invalid(format!("experiment spec: {e}"), None))?;
    let rc = RoutingRoutes::feedback_route(rt, &spec.route, vis)?;
    let baseline = rc.baseline.clone().unwrap_or_default();
    if !rc.candidates.contains(&spec.candidate) {
        return Err(GatewayError::invalid(
            format!(
                "'{}' is not a candidate of route '{}' (candidates: {})",
                spec.candidate,
                spec.route,
                rc.candidates.join(", ")
            ),
            Some("candidate"),
        ));
    }
    match &spec.baseline {
        Some(b) if *b != baseline => {
            return Err(GatewayError::invalid(
                format!("the baseline of route '{}' is '{baseline}'", spec.route),
                Some("baseline"),
            ))
        }
        _ => spec.baseline = Some(baseline),
    }
    let now = chrono::Utc::now().timestamp_millis();
    let id = new_id();
    // Validates ramp, alpha, limits.
    Experiment::new(&id, spec.clone(), now)
        .map_err(|e| GatewayError::invalid(e.to_string(), None))?;
    if let Some(old) = records(r, vis)
        .await?
        .into_iter()
        .find(|x| x.spec.route == spec.route)
    {
        if current(r, &old).is_some_and(|e| !e.state.is_final()) {
            return Err(GatewayError::Conflict {
                message: format!(
                    "route '{}' already runs experiment {}; stop it first",
                    spec.route, old.id
                ),
                code: "experiment_running",
            });
        }
    }
    let rec = ExperimentRecord {
        id: id.clone(),
        spec: spec.clone(),
        created_ms: now,
        operator: None,
    };
    let v = serde_json::to_string(&rec).unwrap_or_default();
    r.change(
        vis,
        &spec.route,
        "experiment",
        Some(v.clone()),
        AuditAppend {
            ts_ms: now,
            actor: actor(req),
            action: "experiment.start".into(),
            route: Some(spec.route.clone()),
            old: None,
            new: Some(v),
            reason: None,
        },
    )
    .await?;
    Ok(AdminResponse::json(201, &report(r, &rec)))
}

async fn operate(
    r: &RoutingRoutes,
    rt: &Runtime,
    req: &AdminRequest,
    vis: &Visibility,
    id: &str,
    action: &str,
) -> Result<AdminResponse, GatewayError> {
    req.caller.require(Scope::Admin)?;
    let body = body_object(req)?;
    let mut rec = records(r, vis)
        .await?
        .into_iter()
        .find(|x| x.id == id)
        .ok_or_else(|| not_found(id))?;
    if current(r, &rec).is_some_and(|e| e.state.is_final()) {
        return Err(GatewayError::Conflict {
            message: format!("experiment {id} has already ended"),
            code: "experiment_ended",
        });
    }
    let now = chrono::Utc::now().timestamp_millis();
    let old = serde_json::to_string(&rec).ok();
    rec.operator = Some(OperatorAction {
        action: action.to_string(),
        at_ms: now,
        reason: reason(&body)?,
        actor: actor(req),
    });
    let v = serde_json::to_string(&rec).unwrap_or_default();
    let route = rec.spec.route.clone();
    r.change(
        vis,
        &route,
        "experiment",
        Some(v.clone()),
        AuditAppend {
            ts_ms: now,
            actor: actor(req),
            action: format!("experiment.{action}"),
            route: Some(route.clone()),
            old,
            new: Some(v),
            reason: reason(&body)?,
        },
    )
    .await?;
    if action == "promote" {
        // The manual flip: the route goes live (audited like any mode change).
        let rc = RoutingRoutes::feedback_route(rt, &route, vis)?;
        let traffic = r.current_traffic(vis).await?;
        let (old_mode, ..) = effective_state(&route, rc, &traffic);
        r.change(
            vis,
            &route,
            "mode",
            serde_json::to_string(&Mode::Live).ok(),
            AuditAppend {
                ts_ms: now,
                actor: actor(req),
                action: "route.mode".into(),
                route: Some(route.clone()),
                old: serde_json::to_string(&old_mode).ok(),
                new: serde_json::to_string(&Mode::Live).ok(),
                reason: Some(format!("experiment {id} promoted")),
            },
        )
        .await?;
    }
    Ok(AdminResponse::json(200, &report(r, &rec)))
}
