//! Upstream phase: for each candidate, build the native request, sign it, send it, and
//! fall back to the next candidate on connect failure, timeout, 429, 5xx or an
//! "overloaded" answer — as long as nothing has gone downstream yet.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use pingora_proxy::Session;
use serde_json::Value;

use crate::dialect::{DialectError, StreamTranslator, Target, Translated};
use crate::error::GatewayError;
use crate::metrics::metrics;
use crate::routing::resolve::upstream_key;
use crate::routing::{strategy, Candidate, Runtime};
use crate::trace::Attempt;
use crate::upstream::{UpstreamError, UpstreamResponse};

use crate::exchange::attempt::{self, AttemptFailure, FailureKind, Plan, Step};
use crate::exchange::{price_known, target, translate, Op};

use super::ctx::RequestCtx;
use super::respond::{forwardable, response_header, write_error};

/// Why a candidate failed, kept for the final error if every candidate fails.
struct Failure {
    status: u16,
    provider: String,
    message: String,
    retry_after: Option<String>,
    code: &'static str,
}

impl Failure {
    fn of(provider: &str, f: &AttemptFailure) -> Failure {
        Failure {
            status: f.status,
            provider: provider.to_string(),
            message: f.message.clone(),
            retry_after: f.retry_after.clone(),
            code: f.code,
        }
    }
}

/// Resolves when the client has gone away (connection closed). Never resolves otherwise.
async fn client_gone(session: &mut Session) {
    loop {
        match session.as_downstream_mut().read_body_or_idle(true).await {
            Err(_) => return,
            // Stray bytes (pipelining) are not a disconnect; keep waiting.
            Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

fn record_attempt(
    ctx: &mut RequestCtx,
    cand: &Candidate,
    status: Option<u16>,
    outcome: &str,
    started: Instant,
    error: Option<String>,
) {
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    metrics()
        .attempts
        .with_label_values(&[cand.provider.name(), outcome])
        .inc();
    ctx.trace.attempts.push(Attempt {
        provider: cand.provider.name().to_string(),
        model: cand.model.clone(),
        status,
        outcome: outcome.to_string(),
        latency_ms,
        error,
    });
}

fn forwarded_headers(resp: &UpstreamResponse) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if let Some(h) = resp.header() {
        for (k, val) in h.headers.iter() {
            if forwardable(k.as_str()) {
                if let Ok(s) = val.to_str() {
                    v.push((k.as_str().to_string(), s.to_string()));
                }
            }
        }
    }
    v
}

/// Try the candidates in order and answer the client. Never returns an error: every
/// outcome is written downstream (or the client is gone) and recorded in `ctx`.
pub async fn serve(
    rt: &Arc<Runtime>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    op: Op<'_>,
    candidates: &[Candidate],
) {
    let created = crate::dialect::unix_now();
    let stream = op.stream();
    ctx.trace.stream = stream;
    if let (Some(o), Op::Chat(r)) = (ctx.otel.as_mut(), &op) {
        o.request_params(&r.body);
    }
    let mut last: Option<Failure> = None;
    let mut tried: Vec<String> = Vec::with_capacity(candidates.len());
    let mut first_failed: Option<String> = None;
    // Own copy: `ctx` is mutated while targets borrow the id.
    let request_id = ctx.trace.request_id.clone();

    let vault = ctx.provider_keys.clone();
    let route = ctx.trace.route.clone();
    let mut plan = Plan::new(candidates);
    while let Some((i, cand)) = plan.next_attempt() {
        let prov = &cand.provider;
        if !tried.iter().any(|t| t == prov.name()) {
            tried.push(prov.name().to_string());
        }
        let target = target(rt, cand, stream, &request_id, created);
        let started = Instant::now();
        ctx.upstream_request_id = None;

        let otel = ctx.otel.as_ref();
        let sent = tokio::select! {
            r = attempt::send(rt, vault.as_deref(), cand, &op, &target, route.as_deref(), |req| {
                if let Some(o) = otel {
                    o.inject(req);
                }
            }) => r,
            _ = client_gone(session) => {
                record_attempt(ctx, cand, None, "cancelled", started, None);
                ctx.trace.cancelled = true;
                ctx.trace.status = 499;
                return;
            }
        };
        let resp = match sent {
            Ok(r) => r,
            Err(f) => {
                ctx.upstream_request_id = f.upstream_request_id.clone();
                record_attempt(
                    ctx,
                    cand,
                    f.upstream_status,
                    f.outcome,
                    started,
                    Some(f.message.clone()),
                );
                match plan.after(i, &f) {
                    Step::Again => {
                        last = Some(Failure::of(prov.name(), &f));
                        continue;
                    }
                    Step::Next => {
                        if !matches!(f.kind, FailureKind::Unsupported | FailureKind::Build) {
                            first_failed.get_or_insert_with(|| prov.name().to_string());
                        }
                        last = Some(Failure::of(prov.name(), &f));
                        continue;
                    }
                    Step::Stop => {
                        let e = match f.kind {
                            // The last candidate cannot take the request: the client's error.
                            FailureKind::Unsupported => {
                                GatewayError::invalid_code(f.message, f.param.as_deref(), f.code)
                            }
                            FailureKind::Http => {
                                ctx.trace.provider = Some(prov.name().to_string());
                                ctx.trace.served_model = Some(cand.model.clone());
                                let mut e = final_error(&Failure::of(prov.name(), &f), &tried);
                                if f.status == 400 {
                                    if let Some((param, code)) = openai_error_fields(&f.body) {
                                        e = GatewayError::UpstreamInvalid {
                                            message: e.to_string(),
                                            param,
                                            code,
                                        };
                                    }
                                }
                                e
                            }
                            FailureKind::Build | FailureKind::Sign | FailureKind::Transport => {
                                final_error(&Failure::of(prov.name(), &f), &tried)
                            }
                        };
                        write_error(session, ctx, &e).await;
                        return;
                    }
                }
            }
        };
        ctx.upstream_request_id = attempt::upstream_request_id(&resp);

        ctx.trace.provider = Some(prov.name().to_string());
        ctx.trace.served_model = Some(cand.model.clone());
        ctx.trace.fallback_used = i > 0;
        ctx.served_index = Some(i);
        let extra = forwarded_headers(&resp);
        let result = if stream {
            let Op::Chat(r) = op else { return };
            let translator = prov.dialect().chat_stream(&target, r);
            stream_back(
                rt, session, ctx, resp, translator, &extra, cand, &op, started,
            )
            .await
        } else {
            whole_back(rt, session, ctx, resp, &target, &extra, cand, &op, started).await
        };
        match result {
            Ok(()) => {
                let ms = started.elapsed().as_secs_f64() * 1000.0;
                strategy::latency().observe(&upstream_key(cand), ms);
                if let (true, Some(from)) = (ctx.trace.fallback_used, first_failed.as_deref()) {
                    metrics()
                        .fallbacks
                        .with_label_values(&[from, prov.name()])
                        .inc();
                }
                return;
            }
            Err(f) => {
                ctx.trace.provider = None;
                ctx.trace.served_model = None;
                ctx.trace.fallback_used = false;
                first_failed.get_or_insert_with(|| prov.name().to_string());
                last = Some(f);
            }
        }
    }

    let failure = last.unwrap_or(Failure {
        status: 502,
        provider: String::new(),
        message: "no upstream candidate could be tried".into(),
        retry_after: None,
        code: "upstream_unavailable",
    });
    let e = final_error(&failure, &tried);
    write_error(session, ctx, &e).await;
}

fn final_error(f: &Failure, tried: &[String]) -> GatewayError {
    let message = if tried.len() > 1 {
        format!(
            "All providers failed (tried: {}). Last error from {}: {}",
            tried.join(", "),
            f.provider,
            f.message
        )
    } else if f.provider.is_empty() {
        f.message.clone()
    } else {
        format!("{}: {}", f.provider, f.message)
    };
    if f.status == 400 {
        return GatewayError::invalid_code(message, None, f.code);
    }
    GatewayError::Upstream {
        status: f.status,
        message,
        retry_after: f.retry_after.clone(),
        code: f.code,
    }
}

#[allow(clippy::too_many_arguments)]
async fn whole_back(
    rt: &Runtime,
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: UpstreamResponse,
    target: &Target<'_>,
    extra: &[(String, String)],
    cand: &Candidate,
    op: &Op<'_>,
    started: Instant,
) -> Result<(), Failure> {
    let prov = &cand.provider;
    let limit = rt.config.server.max_response_bytes;
    let body = tokio::select! {
        b = resp.body(limit) => b,
        _ = client_gone(session) => {
            record_attempt(ctx, cand, Some(200), "cancelled", started, None);
            ctx.trace.cancelled = true;
            ctx.trace.status = 499;
            return Ok(());
        }
    };
    let fail = |status: u16, message: String, code: &'static str| Failure {
        status,
        provider: prov.name().to_string(),
        message,
        retry_after: None,
        code,
    };
    let body = match body {
        Ok(b) => b,
        Err(e) => {
            record_attempt(
                ctx,
                cand,
                Some(200),
                e.outcome(),
                started,
                Some(e.to_string()),
            );
            let status = if matches!(e, UpstreamError::Timeout(_)) {
                504
            } else {
                502
            };
            return Err(fail(status, e.to_string(), "upstream_error"));
        }
    };
    let t = match translate(prov, op, &body, target) {
        Ok(t) => t,
        Err(e) => {
            record_attempt(
                ctx,
                cand,
                Some(200),
                "bad_response",
                started,
                Some(e.to_string()),
            );
            if matches!(e, DialectError::Pending(_)) {
                return Err(fail(504, e.to_string(), "upstream_timeout"));
            }
            return Err(fail(502, e.to_string(), "bad_upstream_response"));
        }
    };
    let t = match op {
        Op::Embeddings(body)
            if body.get("encoding_format").and_then(Value::as_str) == Some("base64") =>
        {
            Translated {
                body: embeddings_as_base64(&t.body).unwrap_or(t.body),
                ..t
            }
        }
        _ => t,
    };
    record_attempt(ctx, cand, Some(200), "ok", started, None);
    metrics()
        .upstream_latency
        .with_label_values(&[
            prov.name(),
            crate::metrics::model_label(Some(rt), &cand.model),
        ])
        .observe(started.elapsed().as_secs_f64());
    if let Some(m) = &t.model {
        ctx.trace.served_model = Some(m.clone());
    }
    ctx.usage = t.usage;
    let cost = price_known(rt, prov, t.model.as_deref(), &cand.model, op, &t.usage);
    ctx.trace.cost_usd = cost.unwrap_or(0.0);
    ctx.trace.cost_unknown = cost.is_none();
    let (t, masked) = match op {
        Op::Chat(_) => match super::firewall::check_response(ctx, &t.body) {
            (None, masked) => (t, masked),
            (Some(body), masked) => (
                Translated {
                    body: body.into(),
                    ..t
                },
                masked,
            ),
        },
        _ => (t, None),
    };
    crate::services::judge_service::capture_whole(&mut ctx.rollout, &t.body);
    if let (Some(o), Op::Chat(_)) = (ctx.otel.as_mut(), op) {
        o.scan_finish_reasons(&t.body);
    }
    if capture(rt, ctx) {
        let stored = masked.as_deref().unwrap_or(&t.body);
        ctx.trace.response_body = Some(String::from_utf8_lossy(stored).into_owned());
    }
    if let Some(c) = ctx.cache.as_mut() {
        c.keep_body(&t.body);
        super::cached::commit(ctx);
    }
    super::ingress::write_whole(session, ctx, t.body, extra).await;
    Ok(())
}

/// A stream read to its end: its usage, cost and model, then the exact cache stores it
/// (before the last write, so the client's next identical request finds it).
fn cache_stream(
    rt: &Runtime,
    ctx: &mut RequestCtx,
    tr: &dyn StreamTranslator,
    cand: &Candidate,
    op: &Op<'_>,
) {
    if let Some(m) = tr.model() {
        ctx.trace.served_model = Some(m.to_string());
    }
    ctx.usage = tr.usage();
    let cost = price_known(rt, &cand.provider, tr.model(), &cand.model, op, &ctx.usage);
    ctx.trace.cost_usd = cost.unwrap_or(0.0);
    super::cached::commit(ctx);
}

/// `encoding_format: "base64"` for dialects that always answer with float arrays: each
/// embedding becomes base64 of little-endian f32, as OpenAI sends it. Already-encoded
/// strings are left alone. `None` when the body is not an embeddings list.
fn embeddings_as_base64(body: &[u8]) -> Option<bytes::Bytes> {
    use base64::Engine;
    let mut v: Value = serde_json::from_slice(body).ok()?;
    for item in v.get_mut("data")?.as_array_mut()? {
        let Some(Value::Array(xs)) = item.get("embedding") else {
            continue;
        };
        let mut raw = Vec::with_capacity(xs.len() * 4);
        for x in xs {
            raw.extend_from_slice(&(x.as_f64()? as f32).to_le_bytes());
        }
        item["embedding"] = Value::String(base64::engine::general_purpose::STANDARD.encode(raw));
    }
    serde_json::to_vec(&v).ok().map(bytes::Bytes::from)
}

/// `param` and `code` of an OpenAI-shaped error body (`{"error":{"param":..,"code":..}}`),
/// when it has either. A numeric code is kept as its decimal string.
fn openai_error_fields(body: &[u8]) -> Option<(Option<String>, Option<String>)> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error")?.as_object()?;
    let short = |s: &str| (!s.is_empty() && s.len() <= 256).then(|| s.to_string());
    let param = e.get("param").and_then(Value::as_str).and_then(short);
    let code = match e.get("code") {
        Some(Value::String(s)) => short(s),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    (param.is_some() || code.is_some()).then_some((param, code))
}

/// Bodies are captured only when the operator turned capture on and the request is not zero-retention.
pub fn capture(rt: &Runtime, ctx: &RequestCtx) -> bool {
    !ctx.trace.zero_retention && rt.storage.capture_bodies
}

const CAPTURE_LIMIT: usize = 1024 * 1024;

#[allow(clippy::too_many_arguments)]
async fn stream_back(
    rt: &Runtime,
    session: &mut Session,
    ctx: &mut RequestCtx,
    mut resp: UpstreamResponse,
    mut tr: Box<dyn StreamTranslator>,
    extra: &[(String, String)],
    cand: &Candidate,
    op: &Op<'_>,
    started: Instant,
) -> Result<(), Failure> {
    let prov = &cand.provider;
    let mut out = BytesMut::with_capacity(4096);
    let mut header_sent = false;
    let mut captured = capture(rt, ctx).then(BytesMut::new);
    let mut guard = match op {
        Op::Chat(_) => super::firewall::stream_guard(rt, ctx),
        _ => None,
    };
    let mut masked = BytesMut::new();
    let mut reenc = super::ingress::encoder(ctx);
    let fail = |status: u16, message: String| Failure {
        status,
        provider: prov.name().to_string(),
        message,
        retry_after: None,
        code: "upstream_stream_error",
    };
    let mut outcome = "ok";
    let mut error: Option<String> = None;
    let active = metrics().active_streams.clone();
    active.inc();
    struct Dec(prometheus::IntGauge);
    impl Drop for Dec {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    let _guard = Dec(active);

    loop {
        let next = tokio::select! {
            c = resp.chunk() => c,
            _ = client_gone(session) => {
                ctx.trace.cancelled = true;
                outcome = "cancelled";
                break;
            }
        };
        let mut end = false;
        match next {
            Ok(Some(bytes)) => {
                if let Err(e) = tr.feed(&bytes, &mut out) {
                    // Nothing went downstream yet: the next candidate can still serve.
                    if !header_sent {
                        record_attempt(
                            ctx,
                            cand,
                            Some(200),
                            "stream_error",
                            started,
                            Some(e.to_string()),
                        );
                        return Err(fail(502, e.to_string()));
                    }
                    if !matches!(e, DialectError::Upstream(_)) {
                        tr.abort(&e.to_string(), &mut out);
                    }
                    outcome = "stream_error";
                    error = Some(e.to_string());
                    end = true;
                }
            }
            Ok(None) => {
                if let Err(e) = tr.finish(&mut out) {
                    if !header_sent {
                        record_attempt(
                            ctx,
                            cand,
                            Some(200),
                            "stream_error",
                            started,
                            Some(e.to_string()),
                        );
                        return Err(fail(502, e.to_string()));
                    }
                    outcome = "stream_error";
                    error = Some(e.to_string());
                }
                end = true;
            }
            Err(e) => {
                if !header_sent {
                    record_attempt(
                        ctx,
                        cand,
                        Some(200),
                        e.outcome(),
                        started,
                        Some(e.to_string()),
                    );
                    let status = if matches!(e, UpstreamError::Timeout(_)) {
                        504
                    } else {
                        502
                    };
                    return Err(fail(status, e.to_string()));
                }
                tr.abort(&format!("upstream stream interrupted: {e}"), &mut out);
                outcome = e.outcome();
                error = Some(e.to_string());
                end = true;
            }
        }
        if let Some(g) = guard.as_mut() {
            let m = captured.is_some().then_some(&mut masked);
            super::firewall::guard_stream(g, &mut out, m, end);
        }
        if ctx.trace.ttft_ms.is_none() && tr.produced_output() {
            ctx.trace.ttft_ms = Some(ctx.elapsed_ms());
            metrics()
                .ttft
                .with_label_values(&[
                    prov.name(),
                    crate::metrics::model_label(Some(rt), &cand.model),
                ])
                .observe(ctx.trace.ttft_ms.unwrap_or(0.0) / 1000.0);
        }
        if !header_sent && (!out.is_empty() || end) {
            if let Some(m) = tr.model() {
                ctx.trace.served_model = Some(m.to_string());
            }
            let Some(h) = response_header(
                200,
                "text/event-stream",
                None,
                ctx,
                Some(&rt.headers),
                extra,
            ) else {
                break;
            };
            ctx.trace.status = 200;
            if session.write_response_header(h, false).await.is_err() {
                ctx.trace.cancelled = true;
                outcome = "cancelled";
                break;
            }
            header_sent = true;
        }
        if !out.is_empty() {
            let chunk = out.split().freeze();
            ctx.trace.response_bytes += chunk.len() as u64;
            crate::services::judge_service::capture_stream(&mut ctx.rollout, &chunk);
            if let Some(o) = ctx.otel.as_mut() {
                o.scan_finish_reasons(&chunk);
            }
            if let Some(c) = ctx.cache.as_mut() {
                c.keep_chunk(&chunk);
                if end && outcome == "ok" {
                    cache_stream(rt, ctx, &*tr, cand, op);
                }
            }
            if let Some(c) = captured.as_mut() {
                let stored: &[u8] = if guard.is_some() { &masked } else { &chunk };
                if c.len() + stored.len() <= CAPTURE_LIMIT {
                    c.extend_from_slice(stored);
                }
                masked.clear();
            }
            let chunk = super::ingress::reencode(&mut reenc, chunk, end);
            let body = (!chunk.is_empty()).then_some(chunk);
            if (body.is_some() || end) && session.write_response_body(body, end).await.is_err() {
                ctx.trace.cancelled = true;
                outcome = "cancelled";
                break;
            }
        } else if end {
            if outcome == "ok" && ctx.cache.is_some() {
                cache_stream(rt, ctx, &*tr, cand, op);
            }
            let tail = super::ingress::reencode(&mut reenc, bytes::Bytes::new(), true);
            let _ = session
                .write_response_body((!tail.is_empty()).then_some(tail), true)
                .await;
        }
        if end {
            break;
        }
    }
    if ctx.trace.cancelled {
        ctx.trace.status = if header_sent { 200 } else { 499 };
    }
    if let Some(g) = guard {
        super::firewall::stream_done(ctx, g);
    }
    record_attempt(ctx, cand, Some(200), outcome, started, error.clone());
    if error.is_some() {
        ctx.trace.error = error;
    }
    metrics()
        .upstream_latency
        .with_label_values(&[
            prov.name(),
            crate::metrics::model_label(Some(rt), &cand.model),
        ])
        .observe(started.elapsed().as_secs_f64());
    if let Some(m) = tr.model() {
        ctx.trace.served_model = Some(m.to_string());
    }
    ctx.usage = tr.usage();
    let cost = price_known(rt, prov, tr.model(), &cand.model, op, &ctx.usage);
    ctx.trace.cost_usd = cost.unwrap_or(0.0);
    ctx.trace.cost_unknown = cost.is_none();
    if let Some(c) = captured {
        ctx.trace.response_body = Some(String::from_utf8_lossy(&c).into_owned());
    }
    if outcome == "ok" && !ctx.trace.cancelled {
        // A stream read to its end goes back to the pool (no connect before the next one).
        resp.release().await;
    } else {
        // Dropping without release closes the upstream connection: that is what cancels
        // the upstream request when the client left, and a broken one is never reused.
        drop(resp);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_error_param_and_code_are_read() {
        let body = br#"{"error":{"message":"bad","type":"invalid_request_error","param":"messages[0].content","code":"invalid_value"}}"#;
        assert_eq!(
            openai_error_fields(body),
            Some((
                Some("messages[0].content".into()),
                Some("invalid_value".into())
            ))
        );
        assert_eq!(
            openai_error_fields(br#"{"error":{"message":"x","code":400}}"#),
            Some((None, Some("400".into())))
        );
        assert_eq!(openai_error_fields(br#"{"error":{"message":"x"}}"#), None);
        assert_eq!(openai_error_fields(b"not json"), None);
    }

    #[test]
    fn float_embeddings_become_base64_f32() {
        use base64::Engine;
        let body = br#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.5,-0.25]},{"index":1,"embedding":"AAAA"}]}"#;
        let out: Value = serde_json::from_slice(&embeddings_as_base64(body).unwrap()).unwrap();
        let b = base64::engine::general_purpose::STANDARD
            .decode(out["data"][0]["embedding"].as_str().unwrap())
            .unwrap();
        assert_eq!(b, [0.5f32.to_le_bytes(), (-0.25f32).to_le_bytes()].concat());
        assert_eq!(out["data"][1]["embedding"], "AAAA");
    }
}
