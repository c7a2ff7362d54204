//! Feedback routes on the request path: ask the router for the model, serve it with the
//! baseline behind it, and record the decision with the trace.

use std::sync::Arc;

use crate::dialect::ChatRequest;
use crate::error::GatewayError;
use crate::feedback::prompt::state::{EmbeddingOutcome, PromptOutcome, Seen};
use crate::feedback::prompt::{PromptMode, PromptPickKind};
use crate::feedback::{Labelling, Mode, PickKind};
use crate::metrics::metrics;
use crate::rollout::canary::Arm;
use crate::routing::auto::{RecentDecision, ScoreHint};
use crate::routing::{Candidate, Runtime};
use crate::store::DecisionRow;

use super::ctx::{AutoCtx, RequestCtx};
use super::Gateway;

/// Text embedded for prompt routing: the last user message, at most this many bytes of its end.
const EMBED_TEXT_BYTES: usize = 8192;

/// For routes with `prompt_routing.mode = "embeddings"`: the prompt's embedding from the
/// configured model through the gateway's own embeddings path, bounded by the route's timeout.
/// Never an error for the request: a failure is carried to the trace and the router falls back
/// to in-process features.
pub async fn prompt_embedding(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    ctx: &RequestCtx,
    req: &ChatRequest,
    route: &str,
) -> EmbeddingOutcome {
    let Some(e) = rt
        .route(route)
        .filter(|rc| rc.prompt_routing.mode == PromptMode::Embeddings)
        .and_then(|rc| rc.prompt_routing.embeddings.as_ref())
    else {
        return EmbeddingOutcome::NotConfigured;
    };
    if gw.prompt.index(route).is_none() {
        return EmbeddingOutcome::NotConfigured;
    }
    let mut text = String::new();
    if let Some(m) = req
        .messages()
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(serde_json::Value::as_str) == Some("user"))
    {
        match m.get("content") {
            Some(serde_json::Value::String(t)) => text.push_str(t),
            Some(serde_json::Value::Array(parts)) => {
                for t in parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(serde_json::Value::as_str))
                {
                    text.push_str(t);
                    text.push('\n');
                }
            }
            _ => {}
        }
    }
    if text.len() > EMBED_TEXT_BYTES {
        let mut cut = text.len() - EMBED_TEXT_BYTES;
        while !text.is_char_boundary(cut) {
            cut += 1;
        }
        text.drain(..cut);
    }
    if text.trim().is_empty() {
        return EmbeddingOutcome::Failed("no user text to embed".into());
    }
    let cands = match rt.resolve_with_fallbacks(&e.model, None) {
        Ok(c) => c,
        Err(err) => {
            return EmbeddingOutcome::Failed(format!("embeddings model '{}': {err}", e.model))
        }
    };
    let call = crate::exchange::headless::embed_once(
        rt,
        ctx.provider_keys.as_deref(),
        &cands,
        &text,
        &ctx.trace.request_id,
    );
    match tokio::time::timeout(std::time::Duration::from_millis(e.timeout_ms), call).await {
        Ok(Ok(v)) => EmbeddingOutcome::Ok(Arc::from(v)),
        Ok(Err(err)) => EmbeddingOutcome::Failed(format!("embeddings model '{}': {err}", e.model)),
        Err(_) => EmbeddingOutcome::Failed(format!(
            "embeddings model '{}' timed out after {} ms",
            e.model, e.timeout_ms
        )),
    }
}

/// The candidates for a request on feedback route `route`: the router's pick (with its
/// fallbacks), then the baseline (with its fallbacks) for when the pick's provider fails.
pub fn candidates(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    ctx: &mut RequestCtx,
    req: &ChatRequest,
    route: &str,
    embedding: EmbeddingOutcome,
) -> Result<Vec<Candidate>, GatewayError> {
    // A route that declares a project serves only that project (and unlocked callers
    // without a project): to any other project it answers like an undefined route.
    let rc = rt
        .route(route)
        .filter(|rc| {
            rc.project.is_none()
                || ctx.trace.project_id.is_none()
                || rc.project == ctx.trace.project_id
        })
        .ok_or_else(|| GatewayError::NotFound {
            message: format!("Routing rule '{route}' is not defined."),
            code: "route_not_found",
            param: Some("model".into()),
        })?;
    let baseline = rc.baseline.as_deref().unwrap_or_default();
    let context = rc
        .contextual
        .then(|| crate::feedback::context::context_key(req.messages()).as_str());
    let pool = match rc.learning {
        crate::config::Learning::Project => ctx.trace.project_id.as_deref(),
        crate::config::Learning::Shared => None,
    };
    let Some(view) = gw.auto.lookup_for(route, pool, context) else {
        // Route unusable in the current table (e.g. just added by a reload, or its candidates
        // cannot be prepared): serve the baseline without a decision.
        return rt.resolve_with_fallbacks(baseline, None);
    };
    // Sticky sessions are per project: session ids are the clients' and may collide.
    let sticky_key: Option<std::borrow::Cow<'_, str>> =
        match (&ctx.trace.project_id, &ctx.trace.session_id) {
            (Some(p), Some(s)) => Some(format!("{p}\u{1e}{s}").into()),
            (_, s) => s.as_deref().map(Into::into),
        };
    let hint = score_hint(gw.jobs.judge_running(), rt, ctx, rc);
    let mut d = gw.auto.decide(
        &view.prepared,
        route,
        sticky_key.as_deref(),
        ctx.trace.ts_ms,
        rand::random::<f64>(),
        hint,
    );
    let prompt = prompt_pick(gw, rt, ctx, req, route, &mut d, embedding);
    if d.kind != PickKind::Pinned {
        let holdback = view.holdback_share;
        if let Some(e) = view.experiment {
            // A canary assigns by session (or request) and serves its arm for real.
            let key = ctx
                .trace
                .session_id
                .as_deref()
                .unwrap_or(&ctx.trace.request_id);
            let arm = e.assign(key);
            let model = match arm {
                Arm::Candidate => e.candidate.as_str(),
                Arm::Baseline => e.baseline.as_str(),
            };
            if let Some(i) = d.route.index_of(model) {
                let share = e.share();
                d.served = i;
                d.chosen = i;
                d.kind = PickKind::Canary;
                d.propensity = if arm == Arm::Candidate {
                    share
                } else {
                    1.0 - share
                };
            }
        } else if d.route.mode == Mode::Live
            && holdback > 0.0
            && crate::rollout::monitor::in_holdback(route, &ctx.trace.request_id, holdback)
        {
            d.served = 0;
            d.kind = PickKind::Holdback;
            d.propensity = holdback;
        }
    }
    let mut cands = match rt.resolve_with_fallbacks(d.served_model(), None) {
        Ok(c) => c,
        Err(_) if d.served != 0 => Vec::new(),
        Err(e) => return Err(e),
    };
    let baseline_from = cands.len();
    if d.served != 0 {
        cands.extend(rt.resolve_with_fallbacks(baseline, None)?);
    }
    gw.auto.remember(
        &ctx.trace.request_id,
        RecentDecision {
            route: Arc::clone(&d.route.route),
            served: Arc::clone(&d.route.models[d.served].model),
            context: context.map(Arc::from),
            session: ctx.trace.session_id.clone(),
            at_ms: ctx.trace.ts_ms,
            project: ctx.trace.project_id.as_deref().map(Arc::from),
            held_session: !d.is_reference_refresh(),
        },
    );
    ctx.rollout =
        crate::services::shadow::prepare(&gw.jobs, rt, &ctx.trace.request_id, req, route, &d);
    ctx.trace.decision_id = Some(ctx.trace.request_id.clone());
    ctx.auto = Some(Box::new(AutoCtx {
        decision: d,
        context,
        baseline_from,
        pool: view.pool,
        prompt,
    }));
    Ok(cands)
}

/// Whether this request will be scored, as far as it is known before routing: the gateway's
/// own judge (when it runs) samples by request id, the same test `services::shadow::prepare`
/// applies, so it is known now; else the client's announcement.
fn score_hint(
    judge_running: bool,
    rt: &Runtime,
    ctx: &RequestCtx,
    rc: &crate::config::RouteConfig,
) -> ScoreHint {
    if judge_running && !rt.config.judge.model.is_empty() && rc.judge.share > 0.0 {
        let sampled = crate::rollout::judge::should_judge(&ctx.trace.request_id, rc.judge.share);
        return ScoreHint::Judge {
            scored: sampled || ctx.feedback_expected == Some(true),
            share: rc.judge.share,
        };
    }
    ctx.feedback_expected
        .map_or(ScoreHint::None, ScoreHint::Announced)
}

/// Prompt-level routing on top of the route-level decision: only an exploit pick (baseline or
/// promoted) is refined, and only towards a cheaper model; pins, stickiness, route-level
/// exploration, canaries and holdback keep their say. The request's features go to the
/// background so its feedback can label them.
fn prompt_pick(
    gw: &Gateway,
    rt: &Arc<Runtime>,
    ctx: &RequestCtx,
    req: &ChatRequest,
    route: &str,
    d: &mut crate::feedback::Decision,
    embedding: EmbeddingOutcome,
) -> Option<Box<PromptOutcome>> {
    let rc = rt.route(route)?;
    if rc.prompt_routing.mode == PromptMode::Off || d.route.mode == Mode::Off {
        return None;
    }
    let raw = Box::new(crate::feedback::prompt::raw_features(req.messages()));
    let (emb, fallback) = match embedding {
        EmbeddingOutcome::Ok(e) => (Some(e), None),
        EmbeddingOutcome::Failed(why) => (None, Some(why)),
        EmbeddingOutcome::NotConfigured => (None, None),
    };
    let seen = |explored: bool| Seen {
        request_id: Arc::from(ctx.trace.request_id.as_str()),
        route: Arc::clone(&d.route.route),
        raw: raw.clone(),
        embedding: emb.clone(),
        at_ms: ctx.trace.ts_ms,
        explored,
    };
    if !matches!(d.kind, PickKind::Baseline | PickKind::Promoted) {
        gw.prompt.seen(seen(false));
        return None;
    }
    let Some(index) = gw.prompt.index(route) else {
        gw.prompt.seen(seen(false));
        return None;
    };
    // Exploration only where a score is certain: the judge samples by request id, or the
    // client announced its own judge's sample.
    let (labelled, share) = match d.labelling {
        Labelling::Unknown => (false, 0.0),
        Labelling::Scored { share } => (true, share),
        Labelling::Unscored { share } => (false, share),
    };
    let pick = crate::feedback::prompt::state::decide(
        &index,
        &raw,
        emb.as_deref(),
        rand::random::<f64>(),
        labelled,
        share,
    );
    let route_pick = Arc::clone(&d.route.models[d.chosen].model);
    let current_cost = d.route.models[d.chosen].stats.cost_per_request;
    let target = &index.models[pick.chosen];
    let mut applied = false;
    if pick.chosen != 0 && target.cost < current_cost {
        if let Some(i) = d.route.index_of(&target.model) {
            d.chosen = i;
            d.served = if d.route.mode == Mode::Live { i } else { 0 };
            d.kind = if pick.kind == PromptPickKind::Explored {
                PickKind::Explored
            } else {
                PickKind::Promoted
            };
            d.propensity *= pick.propensity;
            applied = true;
        }
    }
    let s = seen(applied && pick.kind == PromptPickKind::Explored);
    gw.prompt.seen(s);
    Some(Box::new(PromptOutcome {
        index,
        pick,
        applied,
        route_pick,
        embedding_fallback: fallback,
        raw,
    }))
}

/// After serving: a pick whose provider failed was served by the baseline — record the miss.
pub fn after_serve(gw: &Gateway, ctx: &mut RequestCtx) {
    let Some(a) = ctx.auto.as_mut() else { return };
    let fell_back =
        a.decision.served != 0 && ctx.served_index.is_some_and(|i| i >= a.baseline_from);
    if fell_back {
        a.decision = a.decision.clone().provider_error();
        metrics()
            .routing_misses
            .with_label_values(&[&*a.decision.route.route])
            .inc();
        gw.auto.remember(
            &ctx.trace.request_id,
            RecentDecision {
                route: Arc::clone(&a.decision.route.route),
                served: Arc::clone(&a.decision.route.models[0].model),
                context: a.context.map(Arc::from),
                session: ctx.trace.session_id.clone(),
                at_ms: ctx.trace.ts_ms,
                project: ctx.trace.project_id.as_deref().map(Arc::from),
                held_session: !a.decision.is_reference_refresh(),
            },
        );
    }
}

/// Logging phase: metrics, router spend, and the signed decision row for the trace.
pub fn finish(gw: &Gateway, ctx: &mut RequestCtx) -> Option<Box<DecisionRow>> {
    let a = ctx.auto.take()?;
    if let Some(rollout) = ctx.rollout.take() {
        let served = crate::services::shadow::Served {
            request_id: &ctx.trace.request_id,
            session_id: ctx.trace.session_id.as_deref(),
            at_ms: ctx.trace.ts_ms,
            project_id: ctx.trace.project_id.as_deref(),
            key_id: ctx.caller.key_id.as_deref(),
            zero_retention: ctx.trace.zero_retention,
            usage: ctx.usage,
            ok: (200..400).contains(&ctx.trace.status)
                && !ctx.trace.cancelled
                && ctx.trace.error.is_none(),
        };
        crate::services::shadow::after_request(&gw.jobs, *rollout, &served, &a.decision, a.context);
    }
    let d = &a.decision;
    metrics()
        .routing_decisions
        .with_label_values(&[&*d.route.route, d.kind.as_str(), d.route.mode.as_str()])
        .inc();
    if d.served != 0 && d.route.mode == Mode::Live && ctx.trace.status < 400 {
        gw.auto
            .add_spend(&d.route.route, ctx.trace.cost_usd, ctx.trace.ts_ms);
    }
    if !gw.tracing {
        return None;
    }
    // The trace writer renders and signs the trace, off the worker threads ...
    let mut row = gw.auto.decision_row_deferred(
        a.decision,
        &ctx.trace.request_id,
        ctx.trace.ts_ms,
        ctx.trace.session_id.as_deref(),
        a.context,
        a.pool,
        a.prompt,
        ctx.firewall.as_ref().map(|r| r.to_json()),
    );
    row.project.clone_from(&ctx.trace.project_id);
    if gw.auto.wants(crate::rollout::webhook::EventKind::Decision) {
        // ... unless a decision webhook is to send the signed text now.
        if let Err(e) = row.settle() {
            tracing::error!(request_id = %ctx.trace.request_id, error = %e, "decision trace could not be signed");
            return None;
        }
        gw.auto
            .emit(crate::rollout::webhook::EventKind::Decision, || {
                serde_json::from_str(&row.signed).unwrap_or(serde_json::Value::Null)
            });
    }
    Some(Box::new(row))
}
