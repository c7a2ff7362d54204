//! The proxy's glue to the LLM firewall (`crate::firewall`): the request check of the chat
//! phase, the response guards, and the verdict in the trace. The compiled policies live in
//! the runtime snapshot (`Runtime::firewall`), so a reload swaps them with the rest of the
//! config and a request keeps the policy it started with.

use bytes::BytesMut;

use crate::dialect::ChatRequest;
use crate::error::GatewayError;
use crate::firewall::classifier::{OnError, Run};
use crate::firewall::{chat, stream::StreamGuard, Report};
use crate::routing::Runtime;

use super::ctx::RequestCtx;

/// The trace property holding the firewall's verdict (reserved: a client's
/// `<prefix>property-firewall` header is dropped).
pub const PROPERTY: &str = "firewall";

/// Check a chat request before it goes upstream: `block` → 400 `firewall_blocked` naming
/// the rule, `redact` → the body is rewritten (what the upstream gets), `flag` → passes.
/// Captured request bodies are masked copies whenever a rule matched. Without a policy for
/// this request it only captures the body as the proxy always did.
pub fn check_request(
    rt: &Runtime,
    ctx: &mut RequestCtx,
    req: &mut ChatRequest,
) -> Result<(), GatewayError> {
    if rt.firewall.is_off() {
        return Ok(());
    }
    ctx.trace.properties.retain(|(k, _)| k != PROPERTY);
    let capture = super::upstream::capture(rt, ctx);
    let Some(policy) = rt.firewall.policy_for(
        ctx.caller.key_id.as_deref(),
        ctx.trace.project_id.as_deref(),
        ctx.trace.route.as_deref(),
    ) else {
        if capture {
            ctx.trace.request_body = Some(String::from_utf8_lossy(&req.raw).into_owned());
        }
        return Ok(());
    };
    let mut report = Report::new(policy.clone());
    let checked = if policy.requests {
        chat::check_request(&mut report, &mut req.body)
    } else {
        Ok(chat::RequestOutcome::default())
    };
    if capture {
        // Never the original text in a stored copy: every match masked, flags included.
        ctx.trace.request_body = Some(if report.verdicts.is_empty() && report.dropped == 0 {
            String::from_utf8_lossy(&req.raw).into_owned()
        } else {
            serde_json::Value::Object(chat::masked_copy(&report, &req.body)).to_string()
        });
    }
    let result = match checked {
        Err(b) => Err(GatewayError::invalid_code(
            format!(
                "The request was blocked by the gateway's firewall (rule '{}').",
                b.rule
            ),
            None,
            "firewall_blocked",
        )),
        Ok(out) => {
            if out.changed {
                req.raw = serde_json::to_vec(&req.body)
                    .map_err(|e| GatewayError::Internal(e.to_string()))?
                    .into();
            }
            Ok(())
        }
    };
    ctx.firewall = Some(Box::new(report));
    result
}

/// The policy's classifier model reads the request the rules let through (after any
/// redaction: the classifier never sees a masked secret). `UNSAFE` with `block` → 400
/// `firewall_blocked` naming `classifier.<id>`; with `flag` → passes, recorded. A failed,
/// late or unreadable answer follows the classifier's `on_error`: `allow` passes (the
/// outcome is recorded and counted), `block` → 503 `firewall_unavailable`.
pub async fn classify(
    rt: &Runtime,
    ctx: &mut RequestCtx,
    req: &ChatRequest,
) -> Result<(), GatewayError> {
    let Some(c) = ctx
        .firewall
        .as_deref()
        .and_then(|r| r.policy.classifier.clone())
    else {
        return Ok(());
    };
    let Some(body) = c.request(&req.body) else {
        return Ok(());
    };
    let started = std::time::Instant::now();
    let call = async {
        let candidates = rt.resolve_with_fallbacks(&c.model, None)?;
        let mut attempts = Vec::new();
        crate::exchange::headless::exchange(
            rt,
            ctx.provider_keys.as_deref(),
            &candidates,
            body,
            &ctx.trace.request_id,
            None,
            &mut attempts,
        )
        .await
    };
    let answer = tokio::time::timeout(c.timeout, call).await;
    let mut run = Run {
        classifier: c.id.to_string(),
        outcome: "error",
        category: None,
        model: None,
        latency_ms: started.elapsed().as_secs_f64() * 1000.0,
        cost_usd: 0.0,
        error: None,
    };
    let verdict = match answer {
        Err(_) => {
            run.outcome = "timeout";
            run.error = Some(format!("no answer within {} ms", c.timeout.as_millis()));
            None
        }
        Ok(Err(e)) => {
            run.error = Some(e.to_string());
            None
        }
        Ok(Ok(res)) => {
            run.model = Some(format!("{}/{}", res.provider, res.served_model));
            run.cost_usd = res.cost_usd;
            let parsed = c.parse(res.text());
            if parsed.is_none() {
                run.error = Some("the answer was neither SAFE nor UNSAFE".into());
            }
            parsed
        }
    };
    if let Some(v) = verdict {
        run.outcome = if v.is_some() { "unsafe" } else { "safe" };
        run.category = v.map(str::to_string);
    }
    crate::firewall::metrics()
        .classifier
        .with_label_values(&[&c.id, run.outcome])
        .inc();
    let Some(report) = ctx.firewall.as_deref_mut() else {
        return Ok(());
    };
    report.classifier = Some(run);
    match verdict {
        Some(Some(category)) => {
            report.push_classified(&c, category);
            if c.action != crate::firewall::Action::Block {
                return Ok(());
            }
            report.blocked = Some(c.rule.to_string());
            crate::firewall::metrics()
                .blocked
                .with_label_values(&[&c.rule, "request"])
                .inc();
            Err(GatewayError::invalid_code(
                format!(
                    "The request was blocked by the gateway's firewall (rule '{}', category '{category}').",
                    c.rule
                ),
                None,
                "firewall_blocked",
            ))
        }
        Some(None) => Ok(()),
        None => match c.on_error {
            OnError::Allow => Ok(()),
            OnError::Block => Err(GatewayError::Upstream {
                status: 503,
                message: format!(
                    "The gateway's firewall classifier '{}' could not check the request, and its policy refuses unchecked requests.",
                    c.id
                ),
                retry_after: None,
                code: "firewall_unavailable",
            }),
        },
    }
}

/// The stream guard for a streamed chat response, when the request's policy checks
/// responses. It works on a copy of the request's report: a candidate that fails before
/// sending anything leaves the context's report as it was for the next one.
pub fn stream_guard(rt: &Runtime, ctx: &RequestCtx) -> Option<StreamGuard> {
    let report = ctx.firewall.as_deref()?;
    if !report.policy.responses {
        return None;
    }
    Some(StreamGuard::new(
        report.clone(),
        rt.firewall.stream_window,
        rt.firewall.stream_max_hold,
    ))
}

/// Filter the translated SSE bytes in `out` through the guard, in place; `masked` gets
/// what a stored copy keeps (flagged text masked). `end`: the upstream is done, held text
/// goes out.
pub fn guard_stream(
    guard: &mut StreamGuard,
    out: &mut BytesMut,
    mut masked: Option<&mut BytesMut>,
    end: bool,
) {
    if out.is_empty() && !end {
        return;
    }
    let input = out.split();
    guard.feed(&input, out, masked.as_deref_mut());
    if end {
        guard.finish(out, masked);
    }
}

/// Hand the guard's report back to the context (the verdicts go to the trace).
pub fn stream_done(ctx: &mut RequestCtx, guard: StreamGuard) {
    ctx.firewall = Some(Box::new(guard.into_report()));
}

/// Check a whole chat JSON response: the body the client gets (redacted or cut), and the
/// masked body for the stored copy when it differs.
pub fn check_response(ctx: &mut RequestCtx, body: &[u8]) -> (Option<Vec<u8>>, Option<Vec<u8>>) {
    let Some(report) = ctx.firewall.as_deref_mut() else {
        return (None, None);
    };
    if !report.policy.responses {
        return (None, None);
    }
    let out = chat::check_response(report, body);
    (out.body, out.masked)
}

/// The verdict as a trace property (policy, rule ids, actions, spans; never the text).
pub fn trace_property(ctx: &mut RequestCtx) {
    let Some(report) = ctx.firewall.take() else {
        return;
    };
    let value = report.to_json().to_string();
    let at = ctx
        .trace
        .properties
        .partition_point(|(k, _)| k.as_str() < PROPERTY);
    ctx.trace
        .properties
        .insert(at, (PROPERTY.to_string(), value));
}
