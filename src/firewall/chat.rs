//! The firewall on OpenAI chat bodies: the request's message texts, and the choices of a
//! JSON response.

use serde_json::{Map, Value};

use super::{rewrite, Action, Hit, Phase, Report};

/// What checking a request did.
#[derive(Debug, Default)]
pub struct RequestOutcome {
    /// A `redact` rule rewrote the body: the raw bytes must be re-encoded.
    pub changed: bool,
    /// A `flag` rule matched: stored copies must be masked ([`masked_copy`]).
    pub flagged: bool,
}

/// The rule that blocked, as the client's 400 names it.
#[derive(Debug)]
pub struct Blocked {
    pub rule: String,
}

/// Visit every message text: `content` strings and `text` parts. `f(i, part, text)`.
fn each_text(body: &mut Map<String, Value>, f: &mut dyn FnMut(usize, Option<usize>, &mut String)) {
    let Some(Value::Array(messages)) = body.get_mut("messages") else {
        return;
    };
    for (i, m) in messages.iter_mut().enumerate() {
        match m.get_mut("content") {
            Some(Value::String(s)) => f(i, None, s),
            Some(Value::Array(parts)) => {
                for (j, p) in parts.iter_mut().enumerate() {
                    if p.get("type").and_then(Value::as_str) == Some("text") {
                        if let Some(Value::String(s)) = p.get_mut("text") {
                            f(i, Some(j), s);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn field(i: usize, part: Option<usize>) -> String {
    match part {
        None => format!("messages[{i}].content"),
        Some(j) => format!("messages[{i}].content[{j}].text"),
    }
}

/// True when no message text matches any rule: the fast path (no allocation).
pub fn request_is_clean(report: &Report, body: &Map<String, Value>) -> bool {
    let Some(Value::Array(messages)) = body.get("messages") else {
        return true;
    };
    messages.iter().all(|m| match m.get("content") {
        Some(Value::String(s)) => report.policy.is_clean(s),
        Some(Value::Array(parts)) => parts.iter().all(|p| {
            p.get("text")
                .and_then(Value::as_str)
                .is_none_or(|s| report.policy.is_clean(s))
        }),
        _ => true,
    })
}

/// Check a request body: record verdicts, rewrite `redact` spans in place, and stop at the
/// first `block` rule.
pub fn check_request(
    report: &mut Report,
    body: &mut Map<String, Value>,
) -> Result<RequestOutcome, Blocked> {
    let mut out = RequestOutcome::default();
    if request_is_clean(report, body) {
        return Ok(out);
    }
    let policy = report.policy.clone();
    let mut hits: Vec<Hit> = Vec::new();
    let mut blocked: Option<String> = None;
    each_text(body, &mut |i, part, s| {
        if blocked.is_some() {
            return;
        }
        policy.scan(s, &mut hits);
        if hits.is_empty() {
            return;
        }
        let mut redact = false;
        for h in &hits {
            let r = policy.rule(h);
            report.push(r, Phase::Request, || field(i, part), h.start, h.end);
            match r.action {
                Action::Block => {
                    if blocked.is_none() {
                        blocked = Some(r.id.to_string());
                    }
                }
                Action::Redact => redact = true,
                Action::Flag => out.flagged = true,
            }
        }
        if redact && blocked.is_none() {
            *s = rewrite(&policy, s, &hits, false);
            out.changed = true;
        }
    });
    if let Some(rule) = blocked {
        super::metrics()
            .blocked
            .with_label_values(&[&rule, Phase::Request.as_str()])
            .inc();
        report.blocked = Some(rule.clone());
        return Err(Blocked { rule });
    }
    Ok(out)
}

/// A copy of `body` with every match masked, `flag` ones included: what trace capture stores.
pub fn masked_copy(report: &Report, body: &Map<String, Value>) -> Map<String, Value> {
    let mut copy = body.clone();
    let mut hits = Vec::new();
    let policy = &report.policy;
    each_text(&mut copy, &mut |_, _, s| {
        policy.scan(s, &mut hits);
        if !hits.is_empty() {
            *s = rewrite(policy, s, &hits, true);
        }
    });
    copy
}

/// What checking a JSON response did.
pub struct ResponseOutcome {
    /// The body for the client, when it changed (redacted or cut).
    pub body: Option<Vec<u8>>,
    /// The body for stored copies, when it differs from what the client gets (flags).
    pub masked: Option<Vec<u8>>,
}

/// Check the choices of a chat-completions JSON response.
pub fn check_response(report: &mut Report, body: &[u8]) -> ResponseOutcome {
    let none = ResponseOutcome {
        body: None,
        masked: None,
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return none;
    };
    let policy = report.policy.clone();
    let mut masked_v: Option<Value> = None;
    let mut changed = false;
    let mut hits = Vec::new();
    let n = v
        .get("choices")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    for c in 0..n {
        let Some(text) = v["choices"][c]["message"]["content"].as_str() else {
            continue;
        };
        policy.scan(text, &mut hits);
        if hits.is_empty() {
            continue;
        }
        let mut cut: Option<(usize, String)> = None;
        let mut any_redact = false;
        let mut any_flag = false;
        for h in &hits {
            let r = policy.rule(h);
            if cut.is_some() {
                break;
            }
            report.push(
                r,
                Phase::Response,
                || format!("choices[{c}]"),
                h.start,
                h.end,
            );
            match r.action {
                Action::Block => cut = Some((h.start, r.id.to_string())),
                Action::Redact => any_redact = true,
                Action::Flag => any_flag = true,
            }
        }
        let (end, kept_hits): (usize, Vec<Hit>) = match &cut {
            Some((at, _)) => (*at, hits.iter().copied().filter(|h| h.end <= *at).collect()),
            None => (text.len(), hits.clone()),
        };
        let head = &text[..end];
        let forward = if any_redact || cut.is_some() {
            Some(rewrite(&policy, head, &kept_hits, false))
        } else {
            None
        };
        if any_flag {
            let m = masked_v.get_or_insert_with(|| v.clone());
            m["choices"][c]["message"]["content"] =
                Value::String(rewrite(&policy, head, &kept_hits, true));
            if cut.is_some() {
                m["choices"][c]["finish_reason"] = Value::String("content_filter".into());
            }
        }
        if let Some(f) = forward {
            changed = true;
            if let Some(m) = masked_v.as_mut() {
                if !any_flag {
                    m["choices"][c]["message"]["content"] = Value::String(f.clone());
                }
            }
            v["choices"][c]["message"]["content"] = Value::String(f);
        }
        if let Some((_, rule)) = cut {
            super::metrics()
                .blocked
                .with_label_values(&[&rule, Phase::Response.as_str()])
                .inc();
            v["choices"][c]["finish_reason"] = Value::String("content_filter".into());
            if let Some(m) = masked_v.as_mut() {
                m["choices"][c]["finish_reason"] = Value::String("content_filter".into());
            }
            report.blocked.get_or_insert(rule);
        }
    }
    ResponseOutcome {
        body: changed.then(|| serde_json::to_vec(&v).unwrap_or_default()),
        masked: masked_v.map(|m| serde_json::to_vec(&m).unwrap_or_default()),
    }
}
