//! The exchange engine: what every upstream call does, client traffic and background
//! callers alike — validate the request (`parse`), build the native request with the
//! provider's dialect, sign it, send it with the route's timeouts, translate and price the
//! answer — and, for callers without a downstream session (the judge, shadow calls, the
//! demo), the whole fallback loop (`headless`).
//!
//! Session-free: it never sees Pingora's `Session`, so the proxy (which streams to a client)
//! and the background services (which need the whole answer) share it. It sits below
//! `services` and `proxy` and above `routing` (candidates and the runtime snapshot).

pub mod attempt;
pub mod headless;
pub mod parse;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::auth::provider_keys::{LiveKey, Pick, ProviderKeys};
use crate::auth::virtual_keys::now_ms;
use crate::dialect::{ChatRequest, DialectError, Target, Translated, UpstreamRequest};
use crate::providers::{ProviderRuntime, SignError};
use crate::routing::{Candidate, Runtime};
use crate::upstream::ExchangeOptions;

/// What is being asked of the upstream.
#[derive(Clone, Copy)]
pub enum Op<'a> {
    Chat(&'a ChatRequest),
    Embeddings(&'a Map<String, Value>),
    Images(&'a Map<String, Value>),
}

impl Op<'_> {
    /// Whether the answer is streamed (a chat request with `stream: true`).
    pub fn stream(&self) -> bool {
        matches!(self, Op::Chat(r) if r.stream)
    }
}

pub async fn sign(prov: &ProviderRuntime, req: &mut UpstreamRequest) -> Result<(), SignError> {
    let host = prov.endpoint.host_header();
    match prov.signer.sign(req, host) {
        Err(SignError::NotReady(_)) => {
            // First use before the background refresh ran: fetch once, then sign.
            prov.signer.refresh().await?;
            prov.signer.sign(req, host)
        }
        other => other,
    }
}

/// Sign one attempt: with one of the provider's runtime keys when it has usable ones
/// (weighted choice among those not cooling down), else with the provider's own
/// credential (its env var). Returns the runtime key used, for [`key_rejected`].
pub async fn sign_attempt(
    prov: &ProviderRuntime,
    keys: Option<&ProviderKeys>,
    req: &mut UpstreamRequest,
) -> Result<Option<Arc<LiveKey>>, SignError> {
    if let Some(keys) = keys {
        keys.wait_loaded().await;
        match keys.pick(prov.name(), now_ms()) {
            Pick::Key(k) => {
                crate::providers::auth::sign_with_key(&prov.profile, req, k.secret())?;
                return Ok(Some(k));
            }
            Pick::Unreadable(n) => {
                return Err(SignError::Credential(format!(
                    "{n} provider key(s) of {} are stored but cannot be decrypted with this gateway's master key ({}); \
                     set the key they were added under (or it as {} during a rotation)",
                    prov.name(),
                    crate::auth::provider_keys::ENV_KEY,
                    crate::auth::provider_keys::ENV_KEY_PREVIOUS,
                )))
            }
            Pick::None | Pick::AllCooling => {}
        }
    }
    sign(prov, req).await.map(|()| None)
}

/// After an error answer to an attempt signed with a runtime key: on 401/403/429 the key
/// is cooled down and the same candidate is worth another attempt with the provider's
/// next key (or its own credential once every runtime key is cooling down).
pub fn key_rejected(
    keys: Option<&ProviderKeys>,
    used: Option<&LiveKey>,
    status: u16,
    retry_after: Option<&str>,
) -> bool {
    match (keys, used) {
        (Some(k), Some(u)) => k.reject(u, status, retry_after, now_ms()),
        _ => false,
    }
}

/// Timeouts for one attempt. Read timeout precedence: the routing rule's, then the
/// server config's (when set), then the provider profile's, then the built-in default.
pub fn exchange_options(
    rt: &Runtime,
    prov: &ProviderRuntime,
    route: Option<&str>,
) -> ExchangeOptions {
    let mut o = rt.exchange;
    if let (None, Some(s)) = (
        rt.config.server.read_timeout_secs,
        prov.profile.read_timeout_secs,
    ) {
        o.read_timeout = Duration::from_secs(s);
    }
    if let Some(s) = route
        .and_then(|r| rt.route(r))
        .and_then(|r| r.read_timeout_secs)
    {
        o.read_timeout = Duration::from_secs(s);
    }
    o
}

/// Price a response from the catalog (served model first, then the requested id).
pub fn price(
    rt: &Runtime,
    prov: &ProviderRuntime,
    served: Option<&str>,
    model: &str,
    op: &Op,
    usage: &crate::dialect::Usage,
) -> f64 {
    price_known(rt, prov, served, model, op, usage).unwrap_or(0.0)
}

/// The request's cost, or `None` when the catalog has no price for it (unknown, not free).
pub fn price_known(
    rt: &Runtime,
    prov: &ProviderRuntime,
    served: Option<&str>,
    model: &str,
    op: &Op,
    usage: &crate::dialect::Usage,
) -> Option<f64> {
    let cat = &prov.profile.catalog_providers;
    let info = served
        .and_then(|s| rt.catalog.get(cat, s))
        .or_else(|| rt.catalog.get(cat, model))?;
    let tokens_priced = info.input.is_some() || info.output.is_some();
    match op {
        Op::Images(body) => {
            let n = body.get("n").and_then(Value::as_u64).unwrap_or(1) as u32;
            let size = body.get("size").and_then(Value::as_str);
            let quality = body.get("quality").and_then(Value::as_str);
            info.image_cost(n, size, quality)
                .or_else(|| tokens_priced.then(|| info.cost(usage)))
        }
        _ => tokens_priced.then(|| info.cost(usage)),
    }
}

/// What the dialect needs to know about one attempt on `cand` (the same for the proxy's
/// serve loop and the headless loops).
pub fn target<'a>(
    rt: &Runtime,
    cand: &'a Candidate,
    stream: bool,
    request_id: &'a str,
    created: u64,
) -> Target<'a> {
    let prov = &cand.provider;
    Target {
        profile: &prov.profile,
        endpoint: &prov.endpoint,
        model: &cand.model,
        stream,
        request_id,
        created,
        max_output_tokens: rt
            .catalog
            .get(&prov.profile.catalog_providers, &cand.model)
            .and_then(|m| m.max_output_tokens),
    }
}

pub fn build(prov: &ProviderRuntime, op: &Op, t: &Target) -> Result<UpstreamRequest, DialectError> {
    match op {
        Op::Chat(r) => prov.dialect().build_chat(r, t),
        Op::Embeddings(b) => prov.dialect().build_embeddings(b, t),
        Op::Images(b) => prov.dialect().build_images(b, t),
    }
}

pub fn translate(
    prov: &ProviderRuntime,
    op: &Op,
    body: &[u8],
    t: &Target,
) -> Result<Translated, DialectError> {
    match op {
        Op::Chat(r) => prov.dialect().translate_chat(body, t, r),
        Op::Embeddings(_) => prov.dialect().translate_embeddings(body, t),
        Op::Images(_) => prov.dialect().translate_images(body, t),
    }
}
