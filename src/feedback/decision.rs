//! The decision trace (JSON) and its signature.
//!
//! A trace is rendered from a [`Decision`] off the hot path. It is signed with HMAC-SHA256 over
//! its RFC 8785 canonical form (JCS: the JSON object without its `signature` member, keys
//! sorted, no whitespace, numbers as ECMAScript prints them), so an exported trace can be
//! verified by anyone holding the key with an off-the-shelf JCS library, whatever key order,
//! spacing or float formatting a tool gives it on the way. Signatures made before JCS
//! (`alg = "HMAC-SHA256"`) keep verifying with their own canonical form.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Sha256;

use super::constraints::{Action, ConstraintResult, Knob};
use super::posterior::{Phase, SignalEvidence};
use super::router::{Decision, Labelling, Miss, Mode, PickKind, ScoreComponents};
use crate::providers::Secret;

/// Trace schema version (bump on incompatible changes).
pub const TRACE_VERSION: u32 = 1;

/// The evidence behind the confidence number.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The candidate the confidence is about (the chosen one, or the nearest miss).
    pub model: Option<String>,
    pub samples: u64,
    /// Posterior mean gap q̄_candidate − q̄_baseline.
    pub score_gap: f64,
    /// Variance of that gap.
    pub variance: f64,
}

/// One model as the router saw it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CandidateTrace {
    pub model: String,
    pub baseline: bool,
    pub promotable: bool,
    pub explorable: bool,
    /// Why it could not be promoted / explored (empty if it could).
    pub filter_reasons: Vec<String>,
    pub confidence: f64,
    pub quality_mean: f64,
    pub quality_variance: f64,
    pub samples: u64,
    pub phase: Phase,
    pub cost_per_request: f64,
    pub p95_latency_ms: Option<f64>,
    pub score: ScoreComponents,
    /// Probability the policy picks this model in this context.
    pub propensity: f64,
}

/// The full, user-facing decision trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecisionTrace {
    pub trace_version: u32,
    pub request_id: String,
    pub route: String,
    pub mode: Mode,
    pub table_version: u64,
    pub created_at_ms: i64,
    pub baseline: String,
    /// The policy's pick.
    pub chosen: String,
    /// What the client got.
    pub served: String,
    /// Shadow mode: what would have been served.
    pub would_have: Option<String>,
    pub shadow: bool,
    pub kind: PickKind,
    pub propensity: f64,
    pub exploration_rate: f64,
    /// Whether the request was known before routing to be scored (`known`: `scored` /
    /// `unscored`, with the route's scored `share`): exploration is drawn on scored requests.
    #[serde(default, skip_serializing_if = "Labelling::is_unknown")]
    pub labelling: Labelling,
    pub phase: Phase,
    pub confidence: Option<f64>,
    pub evidence: Evidence,
    /// Signal contributions and weights of the chosen model's posterior (or the nearest miss's).
    pub signals: Vec<SignalEvidence>,
    /// The nine rows of the chosen candidate (or the nearest miss).
    pub constraints: Vec<ConstraintResult>,
    pub score: ScoreComponents,
    pub candidates: Vec<CandidateTrace>,
    pub misses: Vec<Miss>,
    pub explanation: String,
    pub reversible: bool,
    /// Prompt-context bucket whose snapshot decided (contextual routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// Learning pool whose posteriors decided: `shared` or `project:<name>` (tenancy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Prompt-level routing (`crate::feedback::prompt`): neighbours, per-model estimates, pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<serde_json::Value>,
    /// The firewall's verdict on the request (`crate::firewall::Report::to_json`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firewall: Option<serde_json::Value>,
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn reason(r: &ConstraintResult) -> String {
    let v = r.value.map_or("no data".to_string(), |v| format!("{v:.4}"));
    let l = r.limit.map_or("unset".to_string(), |l| format!("{l:.4}"));
    let rel = match r.name {
        Knob::MaxRegression | Knob::MinQuality | Knob::MinConfidence | Knob::MinSamples => "<",
        Knob::MaxExplorationShare => ">=",
        _ => ">",
    };
    format!("{}: {v} {rel} {l}", r.name.name())
}

impl Decision {
    /// Render the full trace. Allocates; call it off the request path.
    pub fn trace(&self, request_id: &str, created_at_ms: i64) -> DecisionTrace {
        let r = &*self.route;
        let ctx = self.context();
        let base = r.baseline();
        let c = &r.constraints;
        let mut candidates = Vec::with_capacity(r.models.len());
        for (i, m) in r.models.iter().enumerate() {
            let promotable = r.promotable(i, &ctx);
            let explorable = r.explorable(i, &ctx);
            let mut filter_reasons = Vec::new();
            if i != 0 {
                for row in c.evaluate(
                    &m.stats,
                    &base.stats,
                    ctx.spend_today,
                    ctx.exploration_share,
                ) {
                    if !row.passed
                        && (row.name.gates(Action::Promote) || row.name.gates(Action::Explore))
                    {
                        filter_reasons.push(reason(&row));
                    }
                }
                let conf = m.within_confidence();
                let level = crate::feedback::router::promotion_level(
                    c.min_confidence,
                    m.posterior.samples,
                    c.min_samples,
                    r.promotion.look_spending,
                );
                if conf >= c.min_confidence && conf < level && !m.retained {
                    filter_reasons.push(format!(
                        "min_confidence after {} samples: {conf:.4} < {level:.4} (the level tightens with the looks, promotion.look_spending)",
                        m.posterior.samples
                    ));
                }
                if let Some(since) = m.tests.passing_since.filter(|_| !m.retained) {
                    let at = since.saturating_add(r.promotion.confirm_samples);
                    if !m.tests.confirmed {
                        filter_reasons.push(format!(
                            "confirming: its promotion tests pass since {since} samples, promoted at {at} if they keep passing (promotion.confirm_samples)"
                        ));
                    }
                }
                if let Some(l) = m.tests.last.filter(|_| !m.tests.now && !m.retained) {
                    if conf >= level {
                        filter_reasons.push(format!(
                            "passes, tested again at {} samples: promotion is tested once per {} of its samples (promotion.look_every), last at {l}",
                            l.saturating_add(r.promotion.look_every),
                            r.promotion.look_every
                        ));
                    }
                }
                if !m.explore_quality_ok {
                    filter_reasons.push(format!(
                        "not explored: eliminated, confidently below the quality limits (P(within) = {:.4} < {:.4})",
                        m.within_confidence(),
                        1.0 - c.min_confidence
                    ));
                } else if !m.in_explore && i != r.static_exploit {
                    filter_reasons.push(if base.posterior.samples < r.exploration.warmup {
                        format!(
                            "not explored yet: the baseline has {} of {} warm-up samples",
                            base.posterior.samples, r.exploration.warmup
                        )
                    } else {
                        "not explored: not cheaper than the exploit pick".to_string()
                    });
                }
                if m.in_explore {
                    let realized = r.realized_gap.map_or(String::new(), |g| {
                        format!(", realized gap of the recent window {g:.4}")
                    });
                    // Above the ordinary cap only on a trial (exploration confidently no worse).
                    let trial = if r.budget_epsilon
                        > r.exploration.rate.min(c.max_exploration_share) + 1e-12
                    {
                        ", a trial: the explored candidates are confidently no worse than the baseline"
                    } else {
                        ""
                    };
                    filter_reasons.push(format!(
                        "exploration cost: gap upper bound {:.4} (budget {:.4} per request{realized}, ε = {:.4}{trial})",
                        m.gap_ub,
                        r.quality_budget(),
                        r.budget_epsilon
                    ));
                }
                if m.retained {
                    filter_reasons.push(format!(
                        "promoted incumbent kept by hysteresis while P(within) ≥ {:.2}",
                        r.promotion.demote_confidence
                    ));
                }
                if m.posterior.change.alarms > 0 {
                    filter_reasons.push(format!(
                        "change detector: {} alarm(s), the last against a running mean of {:.4}; evidence before it was forgotten",
                        m.posterior.change.alarms, m.posterior.change.alarm_reference
                    ));
                }
            }
            candidates.push(CandidateTrace {
                model: m.model.to_string(),
                baseline: i == 0,
                promotable,
                explorable,
                filter_reasons,
                confidence: m.gate.confidence,
                quality_mean: m.posterior.mean(),
                quality_variance: m.posterior.variance(),
                samples: m.posterior.samples,
                phase: m.posterior.phase,
                cost_per_request: m.stats.cost_per_request,
                p95_latency_ms: m.stats.p95_latency_ms,
                score: m.score,
                propensity: r.probability(i, &ctx),
            });
        }
        // The model the confidence is about: the chosen candidate, or the best-scoring one.
        let focus = if self.chosen != 0 {
            Some(self.chosen)
        } else {
            r.ranking.iter().copied().find(|&i| i != 0)
        };
        let fm = focus.map(|i| &r.models[i]);
        let chosen = &r.models[self.chosen];
        let explanation = self.explain(focus);
        DecisionTrace {
            trace_version: TRACE_VERSION,
            request_id: request_id.to_string(),
            route: r.route.to_string(),
            mode: r.mode,
            table_version: r.table_version,
            created_at_ms,
            baseline: base.model.to_string(),
            chosen: chosen.model.to_string(),
            served: self.served_model().to_string(),
            would_have: self.would_have().map(str::to_string),
            shadow: r.mode == Mode::Shadow,
            kind: self.kind,
            propensity: self.propensity,
            exploration_rate: self.epsilon,
            labelling: self.labelling,
            phase: fm.map_or(base.posterior.phase, |m| m.posterior.phase),
            confidence: fm.map(|m| m.gate.confidence),
            evidence: Evidence {
                model: fm.map(|m| m.model.to_string()),
                samples: fm.map_or(base.posterior.samples, |m| m.gate.samples),
                score_gap: fm.map_or(0.0, |m| m.gate.score_gap),
                variance: fm.map_or(0.0, |m| m.gate.gap_variance),
            },
            signals: fm.unwrap_or(base).posterior.signals.to_vec(),
            constraints: fm.map_or_else(Vec::new, |m| {
                c.evaluate(
                    &m.stats,
                    &base.stats,
                    ctx.spend_today,
                    ctx.exploration_share,
                )
            }),
            score: chosen.score,
            candidates,
            misses: self.misses.iter().flatten().copied().collect(),
            explanation,
            reversible: true,
            context: None,
            pool: None,
            prompt: None,
            firewall: None,
        }
    }

    fn explain(&self, focus: Option<usize>) -> String {
        let r = &*self.route;
        let base = r.baseline();
        let chosen = &r.models[self.chosen];
        let ctx = self.context();
        let mut s = match self.kind {
            PickKind::Off => format!("Route {} is off: served the default {}.", r.route, base.model),
            PickKind::Pinned => format!("Route {} is pinned to {}.", r.route, chosen.model),
            PickKind::Holdback => format!(
                "Served the default {} as part of the rollback monitor's holdback (the router would have chosen {}).",
                base.model, chosen.model
            ),
            PickKind::Canary => format!(
                "Canary experiment on route {}: this session's arm is {}.",
                r.route, r.models[self.served].model
            ),
            PickKind::Sticky => format!(
                "Kept the session on {} (still allowed), so its NPS stays attributable.",
                chosen.model
            ),
            PickKind::Promoted => format!(
                "Chose {} over the default {}: {} confident its quality is within {} of the default \
                 ({} samples, gap {}), cost {} lower; every constraint passed; score {:.3} vs {:.3}.",
                chosen.model,
                base.model,
                pct(chosen.gate.confidence),
                pct(r.constraints.max_regression),
                chosen.gate.samples,
                pct(chosen.gate.score_gap),
                pct(chosen.score.cost_saving),
                chosen.score.total,
                base.score.total
            ),
            PickKind::Explored if self.is_reference_refresh() => format!(
                "Served the default {} instead of the promoted {} (probability {:.4}): a reference \
                 refresh, so the default's estimate that the promotion is measured against keeps \
                 moving while the promotion is not settled ({} confident; promotion.reference_rate).{}",
                base.model,
                r.models[self.exploit].model,
                self.propensity,
                pct(r.models[self.exploit].gate.confidence),
                match self.labelling {
                    Labelling::Scored { .. } => " Drawn on a request known to be scored.",
                    _ => "",
                }
            ),
            PickKind::Explored => format!(
                "Explored {} (probability {:.4}, exploration share {} of max {}): it meets the cost \
                 and latency limits and is not known to be worse than the limit.{}",
                chosen.model,
                self.propensity,
                pct(ctx.exploration_share),
                pct(r.constraints.max_exploration_share),
                match self.labelling {
                    Labelling::Scored { share } => format!(
                        " Drawn on a request known to be scored ({} of the route's requests are), \
                         so the exploration yields evidence.",
                        pct(share)
                    ),
                    _ => String::new(),
                }
            ),
            PickKind::Baseline => match focus {
                None => format!("Served the default {}: the route has no candidates.", base.model),
                Some(i) => {
                    let m = &r.models[i];
                    let f = r.failures(i, &ctx);
                    let rows: Vec<String> = f
                        .iter()
                        .filter(|k| k.gates(Action::Promote))
                        .map(|k| reason(&r.constraints.check(k, &m.stats, &base.stats, ctx.spend_today, ctx.exploration_share)))
                        .collect();
                    if rows.is_empty() {
                        format!(
                            "Served the default {}: it scores best ({:.3}); the best candidate {} passed \
                             the gates but scored {:.3}.",
                            base.model, base.score.total, m.model, m.score.total
                        )
                    } else {
                        format!(
                            "Served the default {}: the best candidate {} did not pass ({}).",
                            base.model,
                            m.model,
                            rows.join("; ")
                        )
                    }
                }
            },
        };
        if r.mode == Mode::Shadow && self.kind != PickKind::Off {
            s.push_str(&format!(" Shadow mode: served {}.", base.model));
        }
        for m in self.misses.iter().flatten() {
            s.push_str(match m {
                Miss::StickyHintDropped => " The session's previous model is no longer allowed.",
                Miss::ProviderError => " The chosen provider failed; the default was served.",
            });
        }
        s
    }
}

/// A trace key: an id (so keys can rotate) and the secret.
#[derive(Clone, Debug)]
pub struct SigningKey {
    pub key_id: String,
    pub secret: Secret,
}

/// The signature block appended to a trace.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Signature {
    pub alg: String,
    pub key_id: String,
    /// Lowercase hex HMAC-SHA256 of the canonical form named by `alg`.
    pub value: String,
}

/// A trace with its signature (serialised flat: the trace's fields plus `signature`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SignedDecision {
    #[serde(flatten)]
    pub trace: DecisionTrace,
    pub signature: Signature,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SignError {
    #[error("decision trace is not a JSON object")]
    NotAnObject,
    #[error("decision trace has no signature")]
    Unsigned,
    #[error("signature algorithm {0:?} is neither HMAC-SHA256/JCS nor the legacy HMAC-SHA256")]
    Algorithm(String),
    #[error("signature key id {got:?} does not match the configured key {want:?}")]
    KeyId { got: String, want: String },
    #[error("signature is not valid hex")]
    BadHex,
    #[error("signature does not match: the trace was altered or signed with another key")]
    Mismatch,
    #[error("signing key is empty")]
    EmptyKey,
    #[error("could not serialise the trace: {0}")]
    Serialise(String),
}

/// The signature algorithm of new traces: HMAC-SHA256 over the RFC 8785 (JCS) form.
pub const SIGNATURE_ALG: &str = "HMAC-SHA256/JCS";
/// Traces signed before JCS: HMAC-SHA256 over [`legacy_canonical_json`].
pub const LEGACY_SIGNATURE_ALG: &str = "HMAC-SHA256";

/// The RFC 8785 (JCS) form of a value.
pub fn jcs(v: &impl Serialize) -> Result<Vec<u8>, SignError> {
    super::canonical::to_vec(v).map_err(|e| SignError::Serialise(e.to_string()))
}

/// [`jcs`] of a JSON value already parsed (verification of a stored or exported trace).
fn jcs_value(v: &Value) -> Result<Vec<u8>, SignError> {
    super::canonical::value_to_vec(v).map_err(|e| SignError::Serialise(e.to_string()))
}

/// The canonical form of traces signed before JCS (`alg = "HMAC-SHA256"`): keys sorted at every
/// level, no whitespace, numbers as serde_json prints them. Kept to verify old exports only.
pub fn legacy_canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String((*k).clone()).to_string());
                out.push(':');
                if let Some(x) = map.get(*k) {
                    write_canonical(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(xs) => {
            out.push('[');
            for (i, x) in xs.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn mac(key: &SigningKey) -> Result<Hmac<Sha256>, SignError> {
    if key.secret.is_empty() {
        return Err(SignError::EmptyKey);
    }
    Hmac::<Sha256>::new_from_slice(key.secret.expose().as_bytes()).map_err(|_| SignError::EmptyKey)
}

fn signature_of(trace: &DecisionTrace, key: &SigningKey) -> Result<Signature, SignError> {
    signature_over(&jcs(trace)?, key)
}

fn signature_over(canonical: &[u8], key: &SigningKey) -> Result<Signature, SignError> {
    let mut m = mac(key)?;
    m.update(canonical);
    Ok(Signature {
        alg: SIGNATURE_ALG.to_string(),
        key_id: key.key_id.clone(),
        value: hex::encode(m.finalize().into_bytes()),
    })
}

/// Sign a trace and render the signed JSON text (what is stored and exported) in one pass:
/// the canonical (JCS) text the signature covers, with the `signature` member appended. The
/// stored text is therefore already canonical apart from that member (keys in sorted order),
/// and the trace is serialised once, not twice.
pub fn sign_to_string(trace: &DecisionTrace, key: &SigningKey) -> Result<String, SignError> {
    let canonical = jcs(trace)?;
    let sig = signature_over(&canonical, key)?;
    let mut out = String::from_utf8(canonical)
        .map_err(|e| SignError::Serialise(format!("canonical form is not UTF-8: {e}")))?;
    // A struct canonicalises as one non-empty JSON object: replace its closing brace.
    if out.pop() != Some('}') || !out.starts_with('{') || out.len() < 2 {
        return Err(SignError::NotAnObject);
    }
    out.push_str(",\"signature\":");
    out.push_str(&serde_json::to_string(&sig).map_err(|e| SignError::Serialise(e.to_string()))?);
    out.push('}');
    Ok(out)
}

/// Sign a trace.
pub fn sign(trace: &DecisionTrace, key: &SigningKey) -> Result<SignedDecision, SignError> {
    Ok(SignedDecision {
        signature: signature_of(trace, key)?,
        trace: trace.clone(),
    })
}

/// Verify a signed trace given as JSON (e.g. one line of an export).
pub fn verify_value(v: &Value, key: &SigningKey) -> Result<(), SignError> {
    let obj = v.as_object().ok_or(SignError::NotAnObject)?;
    let sig: Signature = obj
        .get("signature")
        .cloned()
        .map(serde_json::from_value)
        .ok_or(SignError::Unsigned)?
        .map_err(|_| SignError::Unsigned)?;
    if sig.key_id != key.key_id {
        return Err(SignError::KeyId {
            got: sig.key_id,
            want: key.key_id.clone(),
        });
    }
    let tag = hex::decode(&sig.value).map_err(|_| SignError::BadHex)?;
    let mut body = obj.clone();
    body.remove("signature");
    let body = Value::Object(body);
    let mut m = mac(key)?;
    match sig.alg.as_str() {
        SIGNATURE_ALG => m.update(&jcs_value(&body)?),
        LEGACY_SIGNATURE_ALG => m.update(legacy_canonical_json(&body).as_bytes()),
        _ => return Err(SignError::Algorithm(sig.alg)),
    }
    // verify_slice compares in constant time.
    m.verify_slice(&tag).map_err(|_| SignError::Mismatch)
}

/// Verify a signed trace.
pub fn verify(signed: &SignedDecision, key: &SigningKey) -> Result<(), SignError> {
    let v = serde_json::to_value(signed).map_err(|e| SignError::Serialise(e.to_string()))?;
    verify_value(&v, key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feedback::router::tests::sample_route;
    use crate::feedback::router::{decide, RequestContext};

    fn key() -> SigningKey {
        SigningKey {
            key_id: "k1".into(),
            secret: Secret::new("trace-signing-secret".into()),
        }
    }

    proptest::proptest! {
        // Any float survives an export's text round trip (serde_json's exact float parsing) and
        // its JCS form is the same after it, so exported traces keep verifying.
        #[test]
        fn floats_round_trip_through_text_and_jcs(
            parts in proptest::collection::vec((-1.0f64..1.0, -12i32..15), 1..20)
        ) {
            let xs: Vec<f64> = parts.iter().map(|(m, e)| m * 10f64.powi(*e)).collect();
            let v = serde_json::json!({ "xs": xs, "nested": { "x": xs[0] } });
            let canon = jcs(&v).unwrap();
            let back: Value = serde_json::from_str(&serde_json::to_string_pretty(&v).unwrap()).unwrap();
            proptest::prop_assert_eq!(jcs(&back).unwrap(), canon);
        }
    }

    #[test]
    fn real_traces_canonicalise_as_the_reference_crate_does() {
        // Every decision kind of the sample route, rendered as stored: the fast writer and the
        // reference crate must agree byte for byte, or signatures would change.
        let r = sample_route(Mode::Live);
        for k in 0..200 {
            let d = crate::feedback::decide(
                &r,
                &crate::feedback::RequestContext {
                    rng: k as f64 / 200.0,
                    exploration_share: (k % 7) as f64 / 10.0,
                    sticky: (k % 5 == 0).then_some("gpt-4o"),
                    ..Default::default()
                },
            );
            let t = d.trace(&format!("req_{k}"), 1_700_000_000_000 + k);
            assert_eq!(
                jcs(&t).unwrap(),
                serde_json_canonicalizer::to_vec(&t).unwrap(),
                "trace {k}"
            );
        }
    }

    #[test]
    fn canonical_form_is_rfc8785() {
        let v: Value = serde_json::from_str(
            r#"{ "b": [1, {"z": 1.0, "a": "x y"}], "a": 0.5, "c": 1e-7, "d": 1e21, "\u00e9": "é" }"#,
        )
        .unwrap();
        // Keys by UTF-16 code units, integral floats without ".0", ECMAScript exponents.
        assert_eq!(
            String::from_utf8(jcs(&v).unwrap()).unwrap(),
            r#"{"a":0.5,"b":[1,{"a":"x y","z":1}],"c":1e-7,"d":1e+21,"é":"é"}"#
        );
        // The legacy form (old signatures) prints numbers the serde_json way.
        let v: Value =
            serde_json::from_str(r#"{ "b": [1, {"z": 1, "a": "x y"}], "a": 0.5 }"#).unwrap();
        assert_eq!(
            legacy_canonical_json(&v),
            r#"{"a":0.5,"b":[1,{"a":"x y","z":1}]}"#
        );
    }

    #[test]
    fn legacy_signatures_keep_verifying() {
        // A trace signed the pre-JCS way: HMAC over the legacy canonical form.
        let v = serde_json::json!({ "request_id": "req_old", "confidence": 0.97, "n": 3 });
        let mut m = mac(&key()).unwrap();
        m.update(legacy_canonical_json(&v).as_bytes());
        let mut signed = v.clone();
        signed["signature"] = serde_json::json!({
            "alg": LEGACY_SIGNATURE_ALG,
            "key_id": "k1",
            "value": hex::encode(m.finalize().into_bytes()),
        });
        verify_value(&signed, &key()).unwrap();
        signed["n"] = serde_json::json!(4);
        assert_eq!(verify_value(&signed, &key()), Err(SignError::Mismatch));
        signed["signature"]["alg"] = serde_json::json!("HMAC-MD5");
        assert!(matches!(
            verify_value(&signed, &key()),
            Err(SignError::Algorithm(_))
        ));
    }

    #[test]
    fn promoted_trace_has_everything_and_verifies() {
        let r = sample_route(Mode::Live);
        let d = decide(
            &r,
            &RequestContext {
                rng: 0.9,
                ..Default::default()
            },
        );
        let t = d.trace("req_1", 1_700_000_000_000);
        assert_eq!(t.chosen, "gpt-4o-mini");
        assert_eq!(t.kind, PickKind::Promoted);
        assert_eq!(t.table_version, 7);
        assert!(t.reversible);
        assert_eq!(t.constraints.len(), 9);
        assert_eq!(t.candidates.len(), 4);
        assert_eq!(t.signals.len(), 5);
        assert!(t.confidence.unwrap() >= 0.95);
        assert!(
            t.explanation
                .starts_with("Chose gpt-4o-mini over the default gpt-4o"),
            "{}",
            t.explanation
        );
        let bad = t
            .candidates
            .iter()
            .find(|c| c.model == "cheap-bad")
            .unwrap();
        assert!(
            bad.filter_reasons
                .iter()
                .any(|r| r.starts_with("min_confidence")),
            "{:?}",
            bad.filter_reasons
        );
        let newcomer = t.candidates.iter().find(|c| c.model == "newcomer").unwrap();
        assert!(
            newcomer
                .filter_reasons
                .iter()
                .any(|r| r.starts_with("min_samples: 10")),
            "{:?}",
            newcomer.filter_reasons
        );
        let psum: f64 = t.candidates.iter().map(|c| c.propensity).sum();
        assert!((psum - 1.0).abs() < 1e-9);

        eprintln!("example explanation: {}", t.explanation);
        let signed = sign(&t, &key()).unwrap();
        verify(&signed, &key()).unwrap();
        // Round trip through text with reordered keys and whitespace still verifies.
        let text = serde_json::to_string_pretty(&signed).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        verify_value(&v, &key()).unwrap();
        let back: SignedDecision = serde_json::from_str(&text).unwrap();
        assert_eq!(back, signed);
        // The stored form (rendered without a `Value`) is the same signed object.
        let stored = sign_to_string(&t, &key()).unwrap();
        verify_value(&serde_json::from_str(&stored).unwrap(), &key()).unwrap();
        assert_eq!(
            serde_json::from_str::<SignedDecision>(&stored).unwrap(),
            signed
        );
        assert_eq!(signed.signature.alg, SIGNATURE_ALG);
        // Tampering is detected.
        let mut v2 = v.clone();
        v2["served"] = Value::String("gpt-4o".into());
        assert_eq!(verify_value(&v2, &key()), Err(SignError::Mismatch));
        let other = SigningKey {
            key_id: "k1".into(),
            secret: Secret::new("other".into()),
        };
        assert_eq!(verify_value(&v, &other), Err(SignError::Mismatch));
        let wrong_id = SigningKey {
            key_id: "k2".into(),
            secret: Secret::new("x".into()),
        };
        assert!(matches!(
            verify_value(&v, &wrong_id),
            Err(SignError::KeyId { .. })
        ));
        let mut unsigned = v.clone();
        unsigned.as_object_mut().unwrap().remove("signature");
        assert_eq!(verify_value(&unsigned, &key()), Err(SignError::Unsigned));
        // The secret never shows in Debug output.
        assert!(!format!("{:?}", key()).contains("trace-signing-secret"));
    }

    #[test]
    fn baseline_and_shadow_traces_explain_the_miss() {
        let r = sample_route(Mode::Shadow);
        let d = decide(
            &r,
            &RequestContext {
                rng: 0.9,
                ..Default::default()
            },
        );
        let t = d.trace("req_2", 0);
        assert!(t.shadow);
        assert_eq!(t.served, "gpt-4o");
        assert_eq!(t.would_have.as_deref(), Some("gpt-4o-mini"));
        assert!(
            t.explanation.ends_with("Shadow mode: served gpt-4o."),
            "{}",
            t.explanation
        );

        // Daily budget spent: the default is served and the failing row is named.
        let r = sample_route(Mode::Live);
        let mut input = (*r).clone();
        input.constraints.daily_budget = Some(1.0);
        let r = std::sync::Arc::new(input);
        let d = decide(
            &r,
            &RequestContext {
                spend_today: 1.0,
                rng: 0.9,
                ..Default::default()
            },
        );
        let t = d.trace("req_3", 0);
        assert_eq!(t.served, "gpt-4o");
        assert_eq!(t.kind, PickKind::Baseline);
        assert!(t.explanation.contains("daily_budget"), "{}", t.explanation);
        eprintln!("example explanation: {}", t.explanation);
        assert!(t
            .constraints
            .iter()
            .any(|c| c.name == Knob::DailyBudget && !c.passed));
    }
}
