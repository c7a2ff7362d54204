//! The Pingora data plane. [`LoopgateProxy`] implements `ProxyHttp` and only wires hooks:
//! `request_filter` runs the whole exchange (see `upstream` for why the gateway drives
//! upstreams itself) and always answers, `logging` records the trace and metrics.
//!
//! Phases, one file each: [`request`] (auth, body, parse, context), [`upstream`]
//! (exchange, fallback, streaming), [`respond`] (downstream writes), [`logging`].

pub mod cached;
pub mod cors;
pub mod ctx;
pub mod firewall;
pub mod ingress;
pub mod logging;
pub mod request;
pub mod respond;
pub mod routed;
pub mod semantic;
pub mod upstream;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorType};
use pingora_proxy::{ProxyHttp, Session};
use serde_json::{json, Value};

use crate::api::{AdminBody, AdminRequest, AdminResponse, AdminRoutes};
use crate::auth::Scope;
use crate::error::GatewayError;
use crate::routing::{Ask, Runtime};

/// The shared state lives below the proxy (`crate::gateway`) so background services use it
/// without importing the proxy.
pub use crate::gateway::{Gateway, TraceHook};
pub use ctx::RequestCtx;

/// Mark a traced request as served here before anything reaches the client.
fn begin(gw: &Gateway, ctx: &RequestCtx) {
    if let Some(r) = &gw.recent {
        r.begin(&ctx.trace.request_id);
    }
}

pub struct LoopgateProxy {
    pub gw: Arc<Gateway>,
}

#[async_trait]
impl ProxyHttp for LoopgateProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        let mut ctx = RequestCtx::new();
        ctx.provider_keys = Some(self.gw.provider_keys.clone());
        ctx
    }

    /// Never reached: `request_filter` answers every request.
    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "loopgate answers in request_filter",
        ))
    }

    async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<bool> {
        handle(&self.gw, session, ctx).await;
        Ok(true)
    }

    async fn logging(&self, _session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(t) = ctx.limit.as_mut() {
            t.settle(
                ctx.usage.prompt_tokens + ctx.usage.completion_tokens,
                ctx.trace.cost_usd,
            );
        }
        if ctx.traced {
            logging::observe(ctx);
            let decision = routed::finish(&self.gw, ctx);
            let otel = self.gw.otlp.as_deref().zip(ctx.otel.take());
            if self.gw.tracing || otel.is_some() {
                if let Some((_, o)) = &otel {
                    ctx.trace
                        .properties
                        .push(("otel_trace_id".into(), o.trace_id_hex()));
                }
                let mut rec = logging::trace_record(ctx);
                rec.decision = decision;
                if let Some((out, o)) = &otel {
                    // Built from the finished record; `submit` only enqueues.
                    out.submit(&rec, o);
                }
                if self.gw.tracing {
                    (self.gw.traces)(rec);
                }
            }
        }
    }
}

fn is_admin_path(path: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "/v1/logs",
        "/v1/sessions",
        "/v1/analytics",
        "/v1/export",
        "/v1/feedback",
        "/v1/decisions",
        "/v1/routing",
        "/v1/constraints",
        "/v1/audit",
        "/v1/experiments",
        "/v1/routes",
        "/v1/report",
        "/v1/keys",
        "/v1/limits",
        "/v1/mcp",
        "/v1/providers",
        "/v1/whoami",
    ];
    PREFIXES
        .iter()
        .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

async fn handle(gw: &Gateway, session: &mut Session, ctx: &mut RequestCtx) {
    let rt = gw.runtime.load_full();
    ctx.runtime = Some(rt.clone());
    let method = session.req_header().method.as_str().to_string();
    let path = session.req_header().uri.path().to_string();
    if crate::daemon::draining() {
        // Old process of a graceful upgrade or shutdown: clients reconnect to the new one.
        session.set_keepalive(None);
    }
    if cors::apply(session, ctx).await {
        return;
    }

    if method == "GET" && matches!(path.as_str(), "/health" | "/healthz" | "/readyz") {
        ctx.endpoint = "health";
        let body =
            json!({"status": "ok", "config_version": rt.version, "providers": rt.providers.len()});
        respond::write_full(session, ctx, 200, "application/json", to_bytes(&body), &[]).await;
        return;
    }

    if let (Some(mcp), "/mcp") = (&gw.mcp, path.trim_end_matches('/')) {
        ctx.endpoint = "mcp";
        if let Err(e) = unauthenticated(mcp.as_ref(), session, ctx, &method, "/mcp").await {
            respond::write_error(session, ctx, &e).await;
        }
        return;
    }

    if let (Some(ui), true) = (&gw.ui, path == "/ui" || path.starts_with("/ui/")) {
        ctx.endpoint = "ui";
        if let Err(e) = unauthenticated(ui.as_ref(), session, ctx, &method, &path).await {
            respond::write_error(session, ctx, &e).await;
        }
        return;
    }

    ctx.ingress = crate::dialect::ingress::Ingress::for_path(&path);
    if let Some(o) = &gw.otlp {
        let h = &session.req_header().headers;
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
        ctx.otel = Some(o.begin(get("traceparent"), get("tracestate")));
    }
    let key = match request::authenticate(&rt, &gw.vkeys, session) {
        Ok((k, vk)) => {
            ctx.vkey = vk;
            k
        }
        Err(e) => {
            ctx.endpoint = "auth";
            respond::write_error(session, ctx, &e).await;
            return;
        }
    };
    ctx.caller = request::caller_for(key.as_deref());
    ctx.trace.zero_retention = key.as_ref().is_some_and(|k| k.zero_retention);

    let route = (method.as_str(), path.trim_end_matches('/'));
    let result = match route {
        ("POST", "/v1/chat/completions" | "/chat/completions") => {
            chat(gw, &rt, session, ctx, key.as_deref()).await
        }
        (m, p) if ctx.ingress.is_some() => {
            ingress::handle(gw, &rt, session, ctx, key.as_deref(), m, p).await
        }
        ("POST", "/v1/embeddings" | "/embeddings") => {
            begin(gw, ctx);
            other_model_call(&rt, &gw.limits, session, ctx, key.as_deref(), "embeddings").await
        }
        ("POST", "/v1/images/generations" | "/images/generations") => {
            begin(gw, ctx);
            other_model_call(
                &rt,
                &gw.limits,
                session,
                ctx,
                key.as_deref(),
                "images.generations",
            )
            .await
        }
        ("GET", "/v1/models" | "/models") => {
            ctx.endpoint = "models";
            models(&rt, session, ctx, None).await
        }
        ("GET", p) if p.starts_with("/v1/models/") => {
            ctx.endpoint = "models";
            let id = p["/v1/models/".len()..].to_string();
            models(&rt, session, ctx, Some(&id)).await
        }
        (_, p) if is_admin_path(p) => {
            ctx.endpoint = "admin";
            admin(gw, session, ctx, &method, p).await
        }
        (m, p)
            if matches!(
                p,
                "/v1/chat/completions" | "/v1/embeddings" | "/v1/models" | "/v1/images/generations"
            ) =>
        {
            Err(GatewayError::MethodNotAllowed(format!(
                "Method {m} is not allowed on {p}."
            )))
        }
        (m, p) => Err(GatewayError::NotFound {
            message: format!("Unknown request URL: {m} {p}. Please check the URL for typos."),
            code: "unknown_url",
            param: None,
        }),
    };
    if let Err(e) = result {
        respond::write_error(session, ctx, &e).await;
    }
}

fn to_bytes(v: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

pub(crate) async fn chat(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    key: Option<&crate::auth::keys::KeyEntry>,
) -> Result<(), GatewayError> {
    ctx.endpoint = ctx.ingress.map_or("chat.completions", |i| i.endpoint());
    ctx.traced = true;
    begin(gw, ctx);
    ctx.caller.require(Scope::Inference)?;
    request::context_headers(rt, session, ctx, key);
    ctx.feedback_expected = request::feedback_expected(session, &rt.headers.feedback_expected)?;
    ctx.trace.zero_retention =
        rt.zero_retention(ctx.trace.zero_retention, ctx.trace.project_id.as_deref());
    let raw = request::read_body(session, rt.config.server.max_body_bytes).await?;
    ctx.trace.request_bytes = raw.len() as u64;
    let raw = ingress::request_body(gw, rt, ctx, raw).await?;
    let model_override = request::header(session, &rt.headers.model_override).map(str::to_string);
    let mut req = request::parse_chat(raw, model_override.as_deref())?;
    ctx.trace.requested_model = req.model.clone();
    crate::auth::virtual_keys::check_model(ctx.vkey.as_deref(), &req.model)?;
    ctx.trace.stream = req.stream;
    if ctx.trace.user_id.is_none() {
        ctx.trace.user_id = req
            .body
            .get("user")
            .and_then(Value::as_str)
            .map(|s| s.chars().take(512).collect());
    }
    // With a firewall the body is captured after its check (a masked copy).
    if upstream::capture(rt, ctx) && rt.firewall.is_off() {
        ctx.trace.request_body = Some(String::from_utf8_lossy(&req.raw).into_owned());
    }
    let forced = request::header(session, "x-provider")
        .or_else(|| request::header(session, &rt.headers.provider))
        .map(str::to_string);
    let rule_header = request::header(session, &rt.headers.routing_rule).map(str::to_string);
    let ask = Ask {
        model: &req.model,
        forced_provider: forced.as_deref(),
        rule_header: rule_header.as_deref(),
        key_rule: key.and_then(|k| k.route.as_deref()),
    };
    let resolution = rt.resolve(&ask, rand::random::<f64>())?;
    crate::auth::virtual_keys::check_route(ctx.vkey.as_deref(), resolution.route.as_deref())?;
    let est = crate::auth::limits::estimate(&req.body, req.raw.len());
    let who = crate::auth::limits::Who {
        key: ctx.vkey.as_ref(),
        project: ctx.trace.project_id.as_deref(),
        user: ctx.trace.user_id.as_deref(),
    };
    gw.limits
        .admit_request(&rt.config.limits, who, &req.model, est, &mut ctx.limit)
        .await?;
    ctx.trace.route = resolution.route.clone();
    firewall::check_request(rt, ctx, &mut req)?;
    firewall::classify(rt, ctx, &req).await?;
    let candidates = match (&resolution.route, resolution.feedback) {
        (Some(route), true) => {
            let embedding = routed::prompt_embedding(gw, rt, ctx, &req, route).await;
            routed::candidates(gw, rt, ctx, &req, route, embedding)?
        }
        _ => resolution.candidates,
    };
    let key_id = key.map(|k| k.id.as_str());
    if cached::before(gw, rt, session, ctx, key_id, &req, &candidates).await? {
        return Ok(());
    }
    upstream::serve(
        rt,
        session,
        ctx,
        crate::exchange::Op::Chat(&req),
        &candidates,
    )
    .await;
    if resolution.feedback {
        routed::after_serve(gw, ctx);
    }
    Ok(())
}

async fn other_model_call(
    rt: &Arc<Runtime>,
    limits: &crate::auth::limits::Limiter,
    session: &mut Session,
    ctx: &mut RequestCtx,
    key: Option<&crate::auth::keys::KeyEntry>,
    endpoint: &'static str,
) -> Result<(), GatewayError> {
    ctx.endpoint = endpoint;
    ctx.traced = true;
    ctx.caller.require(Scope::Inference)?;
    request::context_headers(rt, session, ctx, key);
    ctx.trace.zero_retention =
        rt.zero_retention(ctx.trace.zero_retention, ctx.trace.project_id.as_deref());
    let raw = request::read_body(session, rt.config.server.max_body_bytes).await?;
    ctx.trace.request_bytes = raw.len() as u64;
    let model_override = request::header(session, &rt.headers.model_override).map(str::to_string);
    let (body, model) = request::parse_model_call(&raw, model_override.as_deref(), endpoint)?;
    ctx.trace.requested_model = model.clone();
    crate::auth::virtual_keys::check_model(ctx.vkey.as_deref(), &model)?;
    let est = crate::auth::limits::estimate(&body, raw.len());
    let who = crate::auth::limits::Who {
        key: ctx.vkey.as_ref(),
        project: ctx.trace.project_id.as_deref(),
        user: ctx.trace.user_id.as_deref(),
    };
    limits
        .admit_request(&rt.config.limits, who, &model, est, &mut ctx.limit)
        .await?;
    let forced = request::header(session, "x-provider")
        .or_else(|| request::header(session, &rt.headers.provider))
        .map(str::to_string);
    let candidates = rt.resolve_with_fallbacks(&model, forced.as_deref())?;
    let op = if endpoint == "embeddings" {
        crate::exchange::Op::Embeddings(&body)
    } else {
        crate::exchange::Op::Images(&body)
    };
    upstream::serve(rt, session, ctx, op, &candidates).await;
    Ok(())
}

/// `GET /v1/models`: the catalog's models of the active providers, plus routing rules as `auto:<rule>`.
async fn models(
    rt: &Runtime,
    session: &mut Session,
    ctx: &mut RequestCtx,
    one: Option<&str>,
) -> Result<(), GatewayError> {
    ctx.caller.require(Scope::Inference)?;
    let mut seen = std::collections::HashSet::new();
    let mut data = Vec::new();
    for p in &rt.providers {
        for mode in ["chat", "embedding", "image_generation"] {
            for m in rt.catalog.models_for(&p.profile.catalog_providers, mode) {
                if seen.insert(m.name.as_str()) {
                    data.push(json!({"id": m.name, "object": "model", "created": 0, "owned_by": p.name()}));
                }
            }
        }
    }
    for name in rt.config.routes.keys() {
        let id = if name == "default" {
            "auto".to_string()
        } else {
            format!("auto:{name}")
        };
        data.push(json!({"id": id, "object": "model", "created": 0, "owned_by": "loopgate"}));
    }
    let body = match one {
        None => json!({"object": "list", "data": data}),
        Some(id) => match data.into_iter().find(|m| m["id"] == id) {
            Some(m) => m,
            None => {
                return Err(GatewayError::NotFound {
                    message: format!(
                        "The model '{id}' does not exist or no configured provider serves it."
                    ),
                    code: "model_not_found",
                    param: Some("model".into()),
                })
            }
        },
    };
    respond::write_full(session, ctx, 200, "application/json", to_bytes(&body), &[]).await;
    Ok(())
}

async fn admin(
    gw: &Gateway,
    session: &mut Session,
    ctx: &mut RequestCtx,
    method: &str,
    path: &str,
) -> Result<(), GatewayError> {
    let rt = ctx
        .runtime
        .clone()
        .ok_or_else(|| GatewayError::Internal("no runtime".into()))?;
    // Only endpoints of the route table are served (each has its tenancy-matrix row).
    if !crate::api::endpoints::known_path(path) {
        return Err(GatewayError::NotFound {
            message: format!("Unknown request URL: {method} {path}."),
            code: "unknown_url",
            param: None,
        });
    }
    let body = request::read_body(session, rt.config.server.max_body_bytes).await?;
    let query = session
        .req_header()
        .uri
        .query()
        .map(parse_query)
        .unwrap_or_default();
    let headers = session
        .req_header()
        .headers
        .iter()
        .filter(|(k, _)| k.as_str() != "authorization")
        .filter_map(|(k, v)| {
            v.to_str()
                .ok()
                .map(|v| (k.as_str().to_string(), v.to_string()))
        })
        .collect();
    let req = AdminRequest {
        method: method.to_string(),
        path: path.to_string(),
        query,
        body,
        caller: ctx.caller.clone(),
        headers,
    };
    for routes in &gw.admin {
        if let Some(resp) = routes.handle(&req).await {
            write_admin(session, ctx, resp).await;
            return Ok(());
        }
    }
    Err(GatewayError::NotFound {
        message: format!("Unknown request URL: {method} {path}."),
        code: "unknown_url",
        param: None,
    })
}

/// A handler that authenticates by itself (`/mcp`): the request with its own headers
/// (`authorization` included) and no gateway caller.
async fn unauthenticated(
    routes: &dyn AdminRoutes,
    session: &mut Session,
    ctx: &mut RequestCtx,
    method: &str,
    path: &str,
) -> Result<(), GatewayError> {
    let max = ctx
        .runtime
        .as_ref()
        .map_or(1 << 20, |r| r.config.server.max_body_bytes);
    let body = request::read_body(session, max).await?;
    let headers = session
        .req_header()
        .headers
        .iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect();
    let req = AdminRequest {
        method: method.to_string(),
        path: path.to_string(),
        query: Vec::new(),
        body,
        caller: crate::auth::Caller::default(),
        headers,
    };
    let resp = routes
        .handle(&req)
        .await
        .ok_or_else(|| GatewayError::NotFound {
            message: format!("Unknown request URL: {method} {path}."),
            code: "unknown_url",
            param: None,
        })?;
    write_admin(session, ctx, resp).await;
    Ok(())
}

async fn write_admin(session: &mut Session, ctx: &mut RequestCtx, resp: AdminResponse) {
    let content_type = resp
        .headers
        .iter()
        .find(|(k, _)| k == "content-type")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| "application/json".into());
    let extra: Vec<(String, String)> = resp
        .headers
        .into_iter()
        .filter(|(k, _)| k != "content-type")
        .collect();
    match resp.body {
        AdminBody::Full(b) => {
            respond::write_full(session, ctx, resp.status, &content_type, b, &extra).await;
        }
        AdminBody::Stream(mut rx) => {
            let rt = ctx.runtime.clone();
            let Some(h) = respond::response_header(
                resp.status,
                &content_type,
                None,
                ctx,
                rt.as_deref().map(|r| &r.headers),
                &extra,
            ) else {
                return;
            };
            ctx.trace.status = resp.status;
            if session.write_response_header(h, false).await.is_err() {
                ctx.trace.cancelled = true;
                return;
            }
            while let Some(chunk) = rx.recv().await {
                ctx.trace.response_bytes += chunk.len() as u64;
                if session
                    .write_response_body(Some(chunk), false)
                    .await
                    .is_err()
                {
                    ctx.trace.cancelled = true;
                    return;
                }
            }
            let _ = session.write_response_body(None, true).await;
        }
    }
}

/// Decode `a=1&b=x%20y` into pairs (`+` is a space, as in forms).
pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let dec = |s: &str| {
                percent_encoding::percent_decode_str(&s.replace('+', " "))
                    .decode_utf8_lossy()
                    .into_owned()
            };
            (dec(k), dec(v))
        })
        .collect()
}
