//! The MCP tools: definitions (`tools/list`) and calls (`tools/call`), each an adapter over
//! an admin endpoint called as the token's caller, then narrowed to the token's route filter.

use std::collections::HashMap;
use std::sync::Mutex;

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::rpc::RpcError;
use super::tokens::{Grant, TokenScope};
use super::Mcp;
use crate::admin::routing::RoutingRoutes;
use crate::admin::{AdminBody, AdminRequest, AdminRoutes, Visibility};
use crate::error::GatewayError;
use crate::feedback::constraints::Constraints;
use crate::feedback::sequential::SequentialError;
use crate::rollout::canary::{CanaryError, Experiment, ExperimentSpec};

/// Pending confirmations: at most this many at once, each valid this long.
pub const MAX_PENDING: usize = 256;
pub const CONFIRM_TTL_MS: i64 = 5 * 60 * 1000;
const MAX_WINDOW_SECS: u64 = 90 * 86_400;
/// How many decision rows `list_decisions` returns at most (each latency filter costs a lookup).
const MAX_DECISIONS: u64 = 100;
/// How many catalog models `list_models` lists per provider at most.
const MAX_MODELS_PER_PROVIDER: usize = 200;

const READ_TOOLS: &[&str] = &[
    "get_analytics",
    "get_decision",
    "get_verification",
    "list_decisions",
    "explain_routing",
    "list_models",
];
const MUTATE_TOOLS: &[&str] = &["create_experiment", "update_constraints", "pin_route"];

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn schema(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "properties": props, "required": required, "additionalProperties": false})
}

fn definition(name: &str) -> Value {
    let window = json!({"type": "string", "description": "a duration such as 30m, 24h or 7d (at most 90d); default 24h"});
    let route = json!({"type": "string", "description": "a routing rule (route) name"});
    let confirm = json!({"type": "string", "description": "the confirmation_id a first call returned: applies that change"});
    let reason = json!({"type": "string", "description": "why (kept in the audit log)"});
    let (title, description, input) = match name {
        "get_analytics" => (
            "Analytics",
            "Requests, errors, tokens, cost and latency grouped by model, provider, project, route, user or feature for a window; with resolved_nps, also the cost per resolved session (sessions whose NPS >= resolved_nps) per group.",
            schema(
                json!({
                    "group_by": {"type": "string", "enum": ["model", "provider", "project", "route", "user", "key", "feature"]},
                    "window": window,
                    "route": route,
                    "model": {"type": "string"},
                    "provider": {"type": "string"},
                    "resolved_nps": {"type": "number", "minimum": 0, "maximum": 10, "description": "NPS (0-10) at or above which a session counts as resolved"},
                }),
                &[],
            ),
        ),
        "get_decision" => (
            "One routing decision",
            "One request's full routing audit: signals, constraints, chosen vs baseline, and the signed decision.",
            schema(json!({"request_id": {"type": "string"}}), &["request_id"]),
        ),
        "get_verification" => (
            "Verification report",
            "Side-by-side quality and cost of a feedback route's baseline and served models on real traffic, with evidence counts.",
            schema(json!({"route": route, "window": window}), &["route"]),
        ),
        "list_decisions" => (
            "List decisions",
            "Routing decisions, newest first, filtered by session, route, window, quality and latency.",
            schema(
                json!({
                    "session_id": {"type": "string"},
                    "route": route,
                    "window": window,
                    "min_quality": {"type": "number"},
                    "max_quality": {"type": "number"},
                    "min_latency_ms": {"type": "number", "minimum": 0},
                    "max_latency_ms": {"type": "number", "minimum": 0},
                    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_DECISIONS},
                }),
                &[],
            ),
        ),
        "explain_routing" => (
            "Explain routing (dry run)",
            "Which model a route would pick for these messages and why. A dry run: no provider call, no log row.",
            schema(
                json!({"route": route, "messages": {"type": "array", "items": {"type": "object"}, "description": "chat messages as in /v1/chat/completions"}}),
                &["route", "messages"],
            ),
        ),
        "list_models" => (
            "Models and prices",
            "The configured providers with their models and prices (USD per token), and the routes.",
            schema(json!({}), &[]),
        ),
        "create_experiment" => (
            "Create a canary experiment",
            "Start a canary experiment on a route (body of POST /v1/experiments). First call: a preview and a confirmation_id; second call with only confirmation_id: applies it.",
            schema(
                json!({
                    "route": route,
                    "candidate": {"type": "string", "description": "a candidate model of the route"},
                    "baseline": {"type": "string", "description": "the route's baseline (default)"},
                    "ramp": {"type": "array", "items": {"type": "number"}, "description": "strictly increasing traffic shares in (0, 1]"},
                    "metric": {"type": "string", "enum": ["quality", "judge", "feedback", "success"]},
                    "max_regression": {"type": "number"},
                    "alpha": {"type": "number"},
                    "min_samples_per_step": {"type": "integer", "minimum": 1},
                    "auto_promote": {"type": "boolean"},
                    "max_samples_per_arm": {"type": "integer", "minimum": 1},
                    "n_opt": {"type": "integer", "minimum": 1},
                    "confirmation_id": confirm,
                }),
                &[],
            ),
        ),
        "update_constraints" => (
            "Update route constraints",
            "Change a feedback route's constraints. First call: a preview and a confirmation_id; second call with only confirmation_id: applies it.",
            schema(
                json!({"route": route, "constraints": {"type": "object", "description": "the knobs to change"}, "reason": reason, "confirmation_id": confirm}),
                &[],
            ),
        ),
        "pin_route" => (
            "Pin a route",
            "Pin a feedback route to one model (default: its baseline). First call: a preview and a confirmation_id; second call with only confirmation_id: applies it.",
            schema(
                json!({"route": route, "model": {"type": "string"}, "reason": reason, "confirmation_id": confirm}),
                &[],
            ),
        ),
        _ => ("", "", json!({})),
    };
    let mutating = MUTATE_TOOLS.contains(&name);
    json!({
        "name": name,
        "title": title,
        "description": description,
        "inputSchema": input,
        "annotations": {"readOnlyHint": !mutating, "destructiveHint": mutating, "idempotentHint": !mutating, "openWorldHint": false},
    })
}

/// The tools a token sees: mutating ones only with the mutate scope.
pub fn list(grant: &Grant) -> Vec<Value> {
    let mut names: Vec<&str> = READ_TOOLS.to_vec();
    if grant.scope == TokenScope::Mutate {
        names.extend_from_slice(MUTATE_TOOLS);
    }
    names.into_iter().map(definition).collect()
}

/// A tool's arguments with typed, argument-naming accessors.
struct Args(Map<String, Value>);

impl Args {
    fn known(&self, names: &[&str]) -> Result<(), RpcError> {
        match self.0.keys().find(|k| !names.contains(&k.as_str())) {
            Some(k) => Err(RpcError::invalid_params(
                k,
                format!("unknown argument (known: {})", names.join(", ")),
            )),
            None => Ok(()),
        }
    }
    fn str(&self, name: &str) -> Result<Option<String>, RpcError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.is_empty() && s.len() <= 512 => Ok(Some(s.clone())),
            Some(_) => Err(RpcError::invalid_params(
                name,
                "must be a non-empty string of at most 512 bytes",
            )),
        }
    }
    fn req_str(&self, name: &str) -> Result<String, RpcError> {
        self.str(name)?
            .ok_or_else(|| RpcError::invalid_params(name, "is required"))
    }
    fn num(&self, name: &str, min: f64, max: f64) -> Result<Option<f64>, RpcError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .filter(|n| n.is_finite() && (min..=max).contains(n))
                .map(Some)
                .ok_or_else(|| {
                    RpcError::invalid_params(name, format!("must be a number in {min}..={max}"))
                }),
        }
    }
    /// A window as a start time in ms (default 24h).
    fn window_start(&self) -> Result<i64, RpcError> {
        let s = self.str("window")?.unwrap_or_else(|| "24h".into());
        let secs = parse_window(&s).ok_or_else(|| {
            RpcError::invalid_params(
                "window",
                "must be a duration such as 30m, 24h or 7d (at most 90d)",
            )
        })?;
        Ok(now_ms() - secs as i64 * 1000)
    }
}

fn parse_window(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    let secs = n.checked_mul(match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    })?;
    (1..=MAX_WINDOW_SECS).contains(&secs).then_some(secs)
}

/// A failed tool: a protocol error (bad arguments, scope) or a tool-level error the model sees.
enum Fail {
    Rpc(RpcError),
    Tool(String),
}

impl From<RpcError> for Fail {
    fn from(e: RpcError) -> Fail {
        Fail::Rpc(e)
    }
}

struct Pending {
    token_id: String,
    tool: String,
    args: Map<String, Value>,
    expires_ms: i64,
}

/// Confirmation ids of previewed changes (bounded, expiring, single use).
pub struct Confirms {
    m: Mutex<HashMap<String, Pending>>,
}

impl Default for Confirms {
    fn default() -> Self {
        Self::new()
    }
}

impl Confirms {
    pub fn new() -> Confirms {
        Confirms {
            m: Mutex::new(HashMap::new()),
        }
    }

    fn put(&self, p: Pending) -> Result<String, RpcError> {
        let now = now_ms();
        let mut m = self
            .m
            .lock()
            .map_err(|_| RpcError::internal("confirmation table poisoned"))?;
        m.retain(|_, p| p.expires_ms > now);
        if m.len() >= MAX_PENDING {
            return Err(RpcError::unavailable(format!(
                "{MAX_PENDING} changes already await confirmation; confirm them or let them expire"
            )));
        }
        let id = format!("confirm_{}", hex::encode(rand::random::<[u8; 12]>()));
        m.insert(id.clone(), p);
        Ok(id)
    }

    /// Take a pending change for this token and tool (single use).
    fn take(&self, id: &str, token_id: &str, tool: &str) -> Result<Map<String, Value>, RpcError> {
        let mut m = self
            .m
            .lock()
            .map_err(|_| RpcError::internal("confirmation table poisoned"))?;
        let fits = m
            .get(id)
            .is_some_and(|p| p.token_id == token_id && p.tool == tool && p.expires_ms > now_ms());
        match (fits, m.remove(id)) {
            (true, Some(p)) => Ok(p.args),
            (_, other) => {
                // A foreign id stays for its owner.
                if let Some(p) = other.filter(|p| p.token_id != token_id || p.tool != tool) {
                    m.insert(id.to_string(), p);
                }
                Err(RpcError::invalid_params(
                    "confirmation_id",
                    "unknown, expired, already used, or issued for another tool or token",
                ))
            }
        }
    }
}

/// `tools/call`.
pub async fn call(
    mcp: &Mcp,
    admin: &[Box<dyn AdminRoutes>],
    grant: &Grant,
    params: Option<Value>,
) -> Result<Value, RpcError> {
    let mut params = match params {
        Some(Value::Object(o)) => o,
        _ => return Err(RpcError::invalid_params("name", "is required")),
    };
    let name = match params.remove("name") {
        Some(Value::String(s)) => s,
        _ => {
            return Err(RpcError::invalid_params(
                "name",
                "is required (a tool name)",
            ))
        }
    };
    let args = match params.remove("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(o)) => o,
        Some(_) => return Err(RpcError::invalid_params("arguments", "must be an object")),
    };
    let mutating = MUTATE_TOOLS.contains(&name.as_str());
    if !mutating && !READ_TOOLS.contains(&name.as_str()) {
        return Err(RpcError::invalid_params(
            "name",
            format!(
                "unknown tool '{}'",
                name.chars().take(100).collect::<String>()
            ),
        ));
    }
    let refused = (mutating && grant.scope != TokenScope::Mutate)
        .then(|| RpcError::forbidden(format!("tool '{name}' needs a token with the mutate scope")));
    // Every call is audited before it runs (a refused one too, with the refusal as its
    // reason); a call that cannot be audited does not run.
    let route = args
        .get("route")
        .and_then(Value::as_str)
        .map(|r| r.chars().take(256).collect::<String>());
    let audited = json!({"tool": name, "arguments": audit_args(&args)});
    mcp.audit(
        &format!("mcp:{}", grant.token_id),
        "mcp.tool_call",
        route,
        Some(audited.to_string()),
        refused.as_ref().map(|e| format!("refused: {}", e.message)),
    )
    .await?;
    if let Some(e) = refused {
        return Err(e);
    }
    let out = run(mcp, admin, grant, &name, Args(args)).await;
    match out {
        Ok(v) => Ok(json!({
            "content": [{"type": "text", "text": serde_json::to_string(&v).unwrap_or_default()}],
            "structuredContent": v,
            "isError": false,
        })),
        Err(Fail::Tool(msg)) => Ok(json!({
            "content": [{"type": "text", "text": msg}],
            "isError": true,
        })),
        Err(Fail::Rpc(e)) => Err(e),
    }
}

/// Arguments as audited: message contents are not kept, only their count.
fn audit_args(args: &Map<String, Value>) -> Value {
    let mut a = args.clone();
    if let Some(Value::Array(m)) = a.get("messages") {
        let n = m.len();
        a.insert("messages".into(), json!(format!("<{n} messages>")));
    }
    Value::Object(a)
}

fn route_check(grant: &Grant, route: &str) -> Result<(), Fail> {
    if grant.allows_route(route) {
        Ok(())
    } else {
        Err(Fail::Tool(format!(
            "Routing rule '{route}' is not defined."
        )))
    }
}

/// The route a route-filtered token's read defaults to (its only route), or the argument.
fn scoped_route(grant: &Grant, arg: Option<String>) -> Result<Option<String>, Fail> {
    match arg {
        Some(r) => route_check(grant, &r).map(|_| Some(r)),
        None if grant.routes.len() == 1 => Ok(grant.routes.first().cloned()),
        None if grant.routes.is_empty() => Ok(None),
        None => Err(Fail::Rpc(RpcError::invalid_params(
            "route",
            "is required: this token may see several routes, name one of them",
        ))),
    }
}

async fn run(
    mcp: &Mcp,
    admin: &[Box<dyn AdminRoutes>],
    grant: &Grant,
    name: &str,
    args: Args,
) -> Result<Value, Fail> {
    let q = |k: &str, v: String| (k.to_string(), v);
    match name {
        "get_analytics" => {
            args.known(&[
                "group_by",
                "window",
                "route",
                "model",
                "provider",
                "resolved_nps",
            ])?;
            let group = match args.str("group_by")?.as_deref() {
                None => "model".to_string(),
                Some("feature") => "property:feature".to_string(),
                Some(g @ ("model" | "provider" | "project" | "route" | "user" | "key")) => {
                    g.to_string()
                }
                Some(_) => {
                    return Err(RpcError::invalid_params(
                        "group_by",
                        "must be one of model, provider, project, route, user, key, feature",
                    )
                    .into())
                }
            };
            let mut query = vec![
                q("group_by", group),
                q("start", args.window_start()?.to_string()),
            ];
            if let Some(r) = scoped_route(grant, args.str("route")?)? {
                query.push(q("route", r));
            }
            for k in ["model", "provider"] {
                if let Some(v) = args.str(k)? {
                    query.push(q(k, v));
                }
            }
            for (n, v) in &grant.tags {
                query.push(q("property", format!("{n}:{v}")));
            }
            if let Some(n) = args.num("resolved_nps", 0.0, 10.0)? {
                query.push(q("resolved_nps", n.to_string()));
            }
            admin_call(admin, grant, "GET", "/v1/analytics", query, None).await
        }
        "get_decision" => {
            args.known(&["request_id"])?;
            let id = args.req_str("request_id")?;
            if id.contains('/') {
                return Err(RpcError::invalid_params("request_id", "must not contain '/'").into());
            }
            let path = format!("/v1/decisions/{id}");
            let v = admin_call(admin, grant, "GET", &path, vec![], None).await?;
            let hidden = || Fail::Tool(format!("No decision with id '{id}'."));
            if !v
                .get("route")
                .and_then(Value::as_str)
                .is_none_or(|r| grant.allows_route(r))
            {
                return Err(hidden());
            }
            if !grant.tags.is_empty() {
                let trace =
                    admin_call(admin, grant, "GET", &format!("/v1/logs/{id}"), vec![], None)
                        .await
                        .map_err(|_| hidden())?;
                if !grant.allows_trace(&trace) {
                    return Err(hidden());
                }
            }
            Ok(v)
        }
        "get_verification" => {
            args.known(&["route", "window"])?;
            let route = args.req_str("route")?;
            route_check(grant, &route)?;
            if !grant.tags.is_empty() {
                return Err(Fail::Tool(
                    "get_verification reports on a whole route, and this token is filtered by tag"
                        .into(),
                ));
            }
            let window = args.str("window")?.unwrap_or_else(|| "24h".into());
            if parse_window(&window).is_none() {
                return Err(RpcError::invalid_params(
                    "window",
                    "must be a duration such as 30m, 24h or 7d (at most 90d)",
                )
                .into());
            }
            let query = vec![q("route", route), q("window", window)];
            admin_call(admin, grant, "GET", "/v1/report/shadow", query, None).await
        }
        "list_decisions" => list_decisions(admin, grant, &args).await,
        "explain_routing" => {
            args.known(&["route", "messages"])?;
            let route = args.req_str("route")?;
            route_check(grant, &route)?;
            let messages = match args.0.get("messages") {
                Some(Value::Array(m)) if !m.is_empty() => Value::Array(m.clone()),
                _ => {
                    return Err(
                        RpcError::invalid_params("messages", "must be a non-empty array").into(),
                    )
                }
            };
            let model = if route == "default" {
                "auto".to_string()
            } else {
                format!("auto:{route}")
            };
            let body = json!({"model": model, "messages": messages});
            admin_call(
                admin,
                grant,
                "POST",
                "/v1/routing/explain",
                vec![],
                Some(body),
            )
            .await
        }
        "list_models" => {
            args.known(&[])?;
            Ok(list_models(mcp, grant))
        }
        _ => mutate(mcp, admin, grant, name, args).await,
    }
}

async fn list_decisions(
    admin: &[Box<dyn AdminRoutes>],
    grant: &Grant,
    args: &Args,
) -> Result<Value, Fail> {
    args.known(&[
        "session_id",
        "route",
        "window",
        "min_quality",
        "max_quality",
        "min_latency_ms",
        "max_latency_ms",
        "limit",
    ])?;
    let q = |k: &str, v: String| (k.to_string(), v);
    let limit = args
        .num("limit", 1.0, MAX_DECISIONS as f64)?
        .unwrap_or(20.0) as usize;
    let mut query = vec![q("from", args.window_start()?.to_string())];
    let route = args.str("route")?;
    if let Some(r) = &route {
        route_check(grant, r)?;
        query.push(q("route", r.clone()));
    }
    if let Some(s) = args.str("session_id")? {
        query.push(q("session_id", s));
    }
    for k in ["min_quality", "max_quality"] {
        if let Some(n) = args.num(k, f64::MIN, f64::MAX)? {
            query.push(q(k, n.to_string()));
        }
    }
    let min_lat = args.num("min_latency_ms", 0.0, f64::MAX)?;
    let max_lat = args.num("max_latency_ms", 0.0, f64::MAX)?;
    // Latency lives on the trace: read a bounded page and look each row's trace up.
    let by_trace = min_lat.is_some() || max_lat.is_some() || !grant.tags.is_empty();
    let page = if by_trace {
        MAX_DECISIONS as usize
    } else {
        limit
    };
    query.push(q("limit", page.to_string()));
    let v = admin_call(admin, grant, "GET", "/v1/decisions", query, None).await?;
    let rows = v
        .get("data")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut out = Vec::new();
    for mut d in rows {
        if out.len() >= limit {
            break;
        }
        if !d
            .get("route")
            .and_then(Value::as_str)
            .is_none_or(|r| grant.allows_route(r))
        {
            continue;
        }
        if by_trace {
            let id = d.get("id").and_then(Value::as_str).unwrap_or_default();
            if id.is_empty() || id.contains('/') {
                continue;
            }
            let path = format!("/v1/logs/{id}");
            let Ok(trace) = admin_call(admin, grant, "GET", &path, vec![], None).await else {
                continue;
            };
            if !grant.allows_trace(&trace) {
                continue;
            }
            let Some(lat) = trace.get("latency_ms").and_then(Value::as_f64) else {
                continue;
            };
            if min_lat.is_some_and(|m| lat < m) || max_lat.is_some_and(|m| lat > m) {
                continue;
            }
            d["latency_ms"] = json!(lat);
        }
        out.push(d);
    }
    Ok(json!({"object": "list", "count": out.len(), "data": out}))
}

fn list_models(mcp: &Mcp, grant: &Grant) -> Value {
    let rt = mcp.runtime.load_full();
    let vis = Visibility::new(grant.project.as_deref(), Some(&rt.config));
    let mut providers = Vec::new();
    for p in &rt.providers {
        let mut models = Vec::new();
        let mut truncated = false;
        for m in rt.catalog.models_for(&p.profile.catalog_providers, "chat") {
            if models.len() >= MAX_MODELS_PER_PROVIDER {
                truncated = true;
                break;
            }
            models.push(json!({
                "model": m.name,
                "input_cost_per_token": m.input,
                "output_cost_per_token": m.output,
            }));
        }
        providers.push(json!({"provider": p.name(), "models": models, "truncated": truncated}));
    }
    let routes: Vec<Value> = rt
        .config
        .routes
        .iter()
        .filter(|(name, _)| vis.owns_route(name) && grant.allows_route(name))
        .map(|(name, rc)| {
            json!({"route": name, "feedback": rc.is_feedback(), "baseline": rc.baseline, "candidates": rc.candidates})
        })
        .collect();
    json!({"object": "list", "providers": providers, "routes": routes})
}

/// The admin request a mutating tool makes, and the read that shows the current state.
struct Plan {
    method: &'static str,
    path: String,
    body: Value,
    /// The admin read (path, query) that shows what the change replaces.
    current: (String, Vec<(String, String)>),
}

fn plan(name: &str, args: &Map<String, Value>) -> Result<Plan, RpcError> {
    let a = Args(args.clone());
    let route = a.req_str("route")?;
    let q = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
    match name {
        "update_constraints" => {
            a.known(&["route", "constraints", "reason"])?;
            if !matches!(args.get("constraints"), Some(Value::Object(o)) if !o.is_empty()) {
                return Err(RpcError::invalid_params(
                    "constraints",
                    "is required: an object of the knobs to change",
                ));
            }
            a.str("reason")?;
            Ok(Plan {
                method: "PATCH",
                path: "/v1/constraints".into(),
                body: Value::Object(args.clone()),
                current: ("/v1/constraints".into(), q("route", &route)),
            })
        }
        "pin_route" => {
            a.known(&["route", "model", "reason"])?;
            a.str("model")?;
            a.str("reason")?;
            let mut body = args.clone();
            body.remove("route");
            let enc =
                percent_encoding::utf8_percent_encode(&route, percent_encoding::NON_ALPHANUMERIC)
                    .to_string();
            Ok(Plan {
                method: "POST",
                path: format!("/v1/routes/{enc}/pin"),
                body: Value::Object(body),
                current: ("/v1/routing".into(), q("route", &route)),
            })
        }
        _ => {
            a.known(EXPERIMENT_ARGS)?;
            a.req_str("candidate")?;
            Ok(Plan {
                method: "POST",
                path: "/v1/experiments".into(),
                body: Value::Object(args.clone()),
                current: ("/v1/routing".into(), q("route", &route)),
            })
        }
    }
}

/// The arguments of `create_experiment`: the fields of `POST /v1/experiments`.
const EXPERIMENT_ARGS: &[&str] = &[
    "route",
    "candidate",
    "baseline",
    "ramp",
    "metric",
    "max_regression",
    "alpha",
    "min_samples_per_step",
    "auto_promote",
    "max_samples_per_arm",
    "n_opt",
];

/// An admin-layer error as a tool failure: a 400 naming a parameter is invalid params naming
/// it, anything else a tool error the model can read (as `admin_call` maps answers).
fn gw_fail(e: GatewayError) -> Fail {
    match (e.status(), e.param()) {
        (400, Some(p)) => Fail::Rpc(RpcError::invalid_params(p, e.to_string())),
        _ => Fail::Tool(e.to_string()),
    }
}

/// Check a mutating tool's change the way the admin endpoint will when it is applied, so a
/// bad argument is refused at the first call (naming it) instead of after the confirmation.
/// `current`: the admin read the preview shows (for constraints: the effective ones).
fn validate(
    mcp: &Mcp,
    grant: &Grant,
    name: &str,
    args: &Map<String, Value>,
    current: &Value,
) -> Result<(), Fail> {
    let rt = mcp.runtime.load_full();
    let vis = Visibility::new(grant.project.as_deref(), Some(&rt.config));
    let route = args
        .get("route")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let rc = RoutingRoutes::feedback_route(&rt, route, &vis).map_err(gw_fail)?;
    let baseline = rc.baseline.clone().unwrap_or_default();
    let bad = |arg: &str, m: String| Fail::Rpc(RpcError::invalid_params(arg, m));
    match name {
        "update_constraints" => {
            let effective = current["data"]
                .as_array()
                .and_then(|d| d.iter().find(|x| x["route"] == route))
                .map(|x| x["constraints"].clone())
                .or_else(|| serde_json::to_value(&rc.constraints).ok());
            let mut merged = effective
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default();
            if let Some(Value::Object(patch)) = args.get("constraints") {
                for (k, v) in patch {
                    merged.insert(k.clone(), v.clone());
                }
            }
            let new: Constraints = serde_json::from_value(Value::Object(merged))
                .map_err(|e| bad("constraints", e.to_string()))?;
            new.validate()
                .map_err(|e| bad("constraints", e.to_string()))?;
        }
        "pin_route" => {
            if let Some(m) = args.get("model").and_then(Value::as_str) {
                if *m != baseline && !rc.candidates.iter().any(|c| c == m) {
                    return Err(bad(
                        "model",
                        format!("'{m}' is neither the baseline nor a candidate of route '{route}'"),
                    ));
                }
            }
        }
        _ => {
            // Each field alone, so a wrongly typed one is named.
            for (k, v) in args
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "route" | "candidate"))
            {
                let probe = json!({"route": route, "candidate": "c", k.as_str(): v});
                serde_json::from_value::<ExperimentSpec>(probe)
                    .map_err(|e| bad(k, e.to_string()))?;
            }
            let candidate = args
                .get("candidate")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !rc.candidates.iter().any(|c| c == candidate) {
                return Err(bad(
                    "candidate",
                    format!(
                        "'{candidate}' is not a candidate of route '{route}' (candidates: {})",
                        rc.candidates.join(", ")
                    ),
                ));
            }
            if args
                .get("baseline")
                .and_then(Value::as_str)
                .is_some_and(|b| b != baseline)
            {
                return Err(bad(
                    "baseline",
                    format!("the baseline of route '{route}' is '{baseline}'"),
                ));
            }
            let mut spec: ExperimentSpec = serde_json::from_value(Value::Object(args.clone()))
                .map_err(|e| bad("route", e.to_string()))?;
            spec.baseline = Some(baseline);
            Experiment::new("preview", spec, now_ms()).map_err(|e| {
                let arg = match &e {
                    CanaryError::Sequential(SequentialError::Alpha(_)) => "alpha",
                    CanaryError::Sequential(SequentialError::Limit(_)) => "max_regression",
                    CanaryError::Sequential(_) => "n_opt",
                    _ if e.to_string().contains("ramp") => "ramp",
                    _ if e.to_string().contains("min_samples_per_step") => "min_samples_per_step",
                    _ => "candidate",
                };
                bad(arg, e.to_string())
            })?;
        }
    }
    Ok(())
}

async fn mutate(
    mcp: &Mcp,
    admin: &[Box<dyn AdminRoutes>],
    grant: &Grant,
    name: &str,
    args: Args,
) -> Result<Value, Fail> {
    if let Some(id) = args.0.get("confirmation_id") {
        let Some(id) = id.as_str() else {
            return Err(RpcError::invalid_params("confirmation_id", "must be a string").into());
        };
        if args.0.len() != 1 {
            return Err(RpcError::invalid_params(
                "confirmation_id",
                "send it alone: the change applied is the one previewed",
            )
            .into());
        }
        let pending = mcp.confirms.take(id, &grant.token_id, name)?;
        let p = plan(name, &pending)?;
        let applied = admin_call(admin, grant, p.method, &p.path, vec![], Some(p.body)).await?;
        return Ok(json!({"status": "applied", "result": applied}));
    }
    let p = plan(name, &args.0)?;
    let route = args.req_str("route")?;
    route_check(grant, &route)?;
    let (cur_path, cur_query) = p.current;
    let current = admin_call(admin, grant, "GET", &cur_path, cur_query, None).await?;
    validate(mcp, grant, name, &args.0, &current)?;
    let expires_ms = now_ms() + CONFIRM_TTL_MS;
    let id = mcp.confirms.put(Pending {
        token_id: grant.token_id.clone(),
        tool: name.to_string(),
        args: args.0,
        expires_ms,
    })?;
    Ok(json!({
        "status": "confirmation_required",
        "confirmation_id": id,
        "expires_at_ms": expires_ms,
        "would_apply": {"method": p.method, "path": p.path, "body": p.body},
        "current": current,
        "next": format!("call {name} again with only {{\"confirmation_id\": \"{id}\"}} to apply"),
    }))
}

/// Call an admin endpoint as the token's caller. A 400 naming a parameter is a JSON-RPC
/// invalid-params error naming it; any other failure is a tool error the model can read.
async fn admin_call(
    admin: &[Box<dyn AdminRoutes>],
    grant: &Grant,
    method: &str,
    path: &str,
    query: Vec<(String, String)>,
    body: Option<Value>,
) -> Result<Value, Fail> {
    let req = AdminRequest {
        method: method.to_string(),
        path: path.to_string(),
        query,
        body: body
            .map(|b| Bytes::from(serde_json::to_vec(&b).unwrap_or_default()))
            .unwrap_or_default(),
        caller: grant.caller(),
        headers: Vec::new(),
    };
    for routes in admin {
        let Some(resp) = routes.handle(&req).await else {
            continue;
        };
        let AdminBody::Full(bytes) = resp.body else {
            return Err(Fail::Tool(
                "the endpoint streams; not available as a tool".into(),
            ));
        };
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&resp.status) {
            return Ok(v);
        }
        let msg = v["error"]["message"]
            .as_str()
            .unwrap_or("the request failed")
            .to_string();
        return Err(match (resp.status, v["error"]["param"].as_str()) {
            (400, Some(p)) => Fail::Rpc(RpcError::invalid_params(p, msg)),
            (503, _) => Fail::Rpc(RpcError::unavailable(msg)),
            _ => Fail::Tool(msg),
        });
    }
    Err(Fail::Tool(format!("no handler for {method} {path}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_are_bounded() {
        assert_eq!(parse_window("24h"), Some(86_400));
        assert_eq!(parse_window("30m"), Some(1800));
        assert_eq!(parse_window("90d"), Some(90 * 86_400));
        for bad in ["", "h", "91d", "10x", "0h", "-1h", "99999999999999999999d"] {
            assert_eq!(parse_window(bad), None, "{bad}");
        }
    }

    #[test]
    fn confirmations_are_single_use_bounded_and_bound_to_token_and_tool() {
        let c = Confirms::new();
        let p = |tok: &str, exp: i64| Pending {
            token_id: tok.into(),
            tool: "pin_route".into(),
            args: Map::new(),
            expires_ms: exp,
        };
        let id = c.put(p("a", now_ms() + 60_000)).unwrap();
        assert!(c.take(&id, "b", "pin_route").is_err());
        assert!(c.take(&id, "a", "update_constraints").is_err());
        assert!(c.take(&id, "a", "pin_route").is_ok());
        let e = c.take(&id, "a", "pin_route").unwrap_err();
        assert_eq!(e.code, -32602);
        assert!(e.message.contains("confirmation_id"));
        let old = c.put(p("a", now_ms() - 1)).unwrap();
        assert!(c.take(&old, "a", "pin_route").is_err());
        for _ in 0..MAX_PENDING {
            c.put(p("a", now_ms() + 60_000)).unwrap();
        }
        assert!(c.put(p("a", now_ms() + 60_000)).is_err());
    }

    #[test]
    fn mutating_tools_are_listed_only_for_mutate_tokens() {
        let mut g = Grant {
            token_id: "t".into(),
            scope: TokenScope::Read,
            project: None,
            routes: vec![],
            tags: vec![],
            expires_ms: 0,
        };
        let names = |g: &Grant| -> Vec<String> {
            list(g)
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names(&g).len(), READ_TOOLS.len());
        assert!(!names(&g).contains(&"pin_route".to_string()));
        g.scope = TokenScope::Mutate;
        assert!(names(&g).contains(&"pin_route".to_string()));
        for t in list(&g) {
            assert!(!t["description"].as_str().unwrap().is_empty());
            assert_eq!(t["inputSchema"]["type"], "object");
        }
    }
}
