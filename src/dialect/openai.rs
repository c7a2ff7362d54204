//! The OpenAI dialect, shared by every OpenAI-compatible provider (OpenAI, Azure OpenAI,
//! Groq, Mistral, DeepSeek, xAI, Perplexity, Together, Fireworks, Cerebras, SambaNova,
//! DeepInfra, Nebius, Novita, AI21, Ollama's `/v1`).
//!
//! Requests pass through with the profile's quirks applied (model id, dropped and
//! renamed parameters). Responses keep the provider's fields but take the gateway's
//! request id as `id`, and streams are normalised to the usage contract: the gateway
//! always asks for usage (to price the request) and shows the usage chunk only to
//! clients that asked for it.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::encode::{write_data, write_done, write_error_event};
use super::sse::{SseDecoder, SseEvent};
use super::{
    ChatRequest, Dialect, DialectError, StreamTranslator, Target, Translated, UpstreamRequest,
    Usage,
};

pub struct OpenAi;

const JSON: (&str, &str) = ("content-type", "application/json");

impl OpenAi {
    /// Apply a profile's parameter quirks to a body; returns true if anything changed.
    fn apply_quirks(body: &mut Map<String, Value>, t: &Target) -> bool {
        let mut changed = false;
        for p in &t.profile.unsupported_params {
            changed |= body.remove(p).is_some();
        }
        for (from, to) in &t.profile.rename_params {
            if let Some(v) = body.remove(from) {
                // An explicit value under the new name wins.
                if !body.contains_key(to) {
                    body.insert(to.clone(), v);
                }
                changed = true;
            }
        }
        changed
    }

    /// True when the body needs more than the usage request (model, dropped or renamed
    /// parameters), i.e. a full re-serialisation.
    fn needs_rewrite(req: &ChatRequest, t: &Target) -> bool {
        let b = &req.body;
        let model_ok = if t.profile.model_in_body {
            b.get("model").and_then(Value::as_str) == Some(t.model)
        } else {
            !b.contains_key("model")
        };
        !model_ok
            || t.profile
                .unsupported_params
                .iter()
                .any(|p| b.contains_key(p))
            || t.profile.rename_params.keys().any(|p| b.contains_key(p))
    }

    /// The upstream body through a clone of the client's map: model set (or removed), the
    /// profile's quirks applied, the usage request added to a stream; serialised again.
    fn build_body_tree(req: &ChatRequest, t: &Target) -> Result<Bytes, DialectError> {
        let mut body = req.body.clone();
        if t.profile.model_in_body {
            body.insert("model".into(), Value::String(t.model.to_string()));
        } else {
            body.remove("model");
        }
        Self::apply_quirks(&mut body, t);
        if req.stream && t.profile.stream_usage {
            // Always ask for usage so streamed requests can be priced.
            let opts = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(o) = opts {
                o.insert("include_usage".into(), Value::Bool(true));
            }
        }
        Ok(Bytes::from(
            serde_json::to_vec(&body).map_err(|e| DialectError::Malformed(e.to_string()))?,
        ))
    }

    /// [`Self::build_body_tree`]'s result for the common rewrite — only `model` differs (an
    /// alias, a `provider/` prefix, a routed `auto`), no parameter quirk applies, and a stream
    /// that needs the usage request has no `stream_options` yet — spliced into the client's
    /// bytes: `model` replaced in its place (appended if absent), the usage request appended,
    /// every other member's bytes as sent. `None` for anything else. `req.raw` is what
    /// `req.body` was parsed from (`parse_chat` and the firewall keep them in step), so a full
    /// parse already accepted it.
    fn splice_model(req: &ChatRequest, t: &Target, usage: bool) -> Option<Bytes> {
        let b = &req.body;
        if !t.profile.model_in_body
            || t.profile
                .unsupported_params
                .iter()
                .any(|p| b.contains_key(p))
            || t.profile.rename_params.keys().any(|p| b.contains_key(p))
            || (usage && b.contains_key("stream_options"))
        {
            return None;
        }
        let members = raw_members(&req.raw)?;
        let mut out = Vec::with_capacity(req.raw.len() + t.model.len() + 48);
        out.push(b'{');
        let mut model_seen = false;
        for (i, (k, v)) in members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_key(&mut out, k, matches!(k, Cow::Borrowed(_)))?;
            out.push(b':');
            if k == "model" {
                model_seen = true;
                write_json_str(&mut out, t.model)?;
            } else {
                out.extend_from_slice(v.get().as_bytes());
            }
        }
        if !model_seen {
            if !members.is_empty() {
                out.push(b',');
            }
            out.extend_from_slice(br#""model":"#);
            write_json_str(&mut out, t.model)?;
        }
        if usage {
            // There is at least the model before it.
            out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
        }
        out.push(b'}');
        Some(Bytes::from(out))
    }

    /// The stream needs `stream_options.include_usage` added so it can be priced.
    fn needs_usage(req: &ChatRequest, t: &Target) -> bool {
        req.stream && t.profile.stream_usage && !req.include_usage
    }

    /// Add `"stream_options":{"include_usage":true}` to the client's bytes without
    /// re-serialising them (a large agent body costs hundreds of µs to clone and write).
    /// Only when the body has no `stream_options` at all; `None` otherwise.
    fn splice_usage(req: &ChatRequest) -> Option<Bytes> {
        if req.body.contains_key("stream_options") {
            return None;
        }
        let raw = &req.raw[..];
        let end = raw.iter().rposition(|&b| b == b'}')?;
        let mut out = Vec::with_capacity(raw.len() + 40);
        out.extend_from_slice(&raw[..end]);
        // The body is a non-empty object (it has `model` and `messages`), so a comma is right.
        out.extend_from_slice(br#","stream_options":{"include_usage":true}"#);
        out.extend_from_slice(&raw[end..]);
        Some(Bytes::from(out))
    }
}

impl Dialect for OpenAi {
    fn name(&self) -> &'static str {
        "openai"
    }

    fn build_chat(&self, req: &ChatRequest, t: &Target) -> Result<UpstreamRequest, DialectError> {
        let rewrite = Self::needs_rewrite(req, t);
        let usage = Self::needs_usage(req, t);
        let spliced = if !rewrite && usage {
            Self::splice_usage(req)
        } else {
            None
        };
        let body = if let Some(b) = spliced {
            b
        } else if rewrite || usage {
            match Self::splice_model(req, t, usage) {
                Some(b) => b,
                None => Self::build_body_tree(req, t)?,
            }
        } else {
            req.raw.clone()
        };
        Ok(UpstreamRequest {
            method: "POST",
            path: t
                .profile
                .path_for(t.endpoint, &t.profile.chat_path, t.model),
            headers: vec![(JSON.0.into(), JSON.1.into())],
            body,
        })
    }

    fn translate_chat(
        &self,
        body: &[u8],
        t: &Target,
        _req: &ChatRequest,
    ) -> Result<Translated, DialectError> {
        // The common case spliced from the upstream's bytes; anything unusual (an error
        // object, a malformed body, input only a full parse judges) through the JSON tree.
        match splice_completion(body, t) {
            Some(tr) => Ok(tr),
            None => translate_chat_tree(body, t),
        }
    }

    fn chat_stream(&self, t: &Target, req: &ChatRequest) -> Box<dyn StreamTranslator> {
        Box::new(OpenAiStream::new(
            t.request_id,
            req.include_usage,
            t.created,
        ))
    }

    fn build_embeddings(
        &self,
        body: &Map<String, Value>,
        t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        let path = t.profile.embeddings_path.as_deref().ok_or_else(|| {
            DialectError::unsupported(
                format!("provider {} does not offer embeddings", t.profile.name),
                Some("model"),
            )
        })?;
        let mut body = body.clone();
        if t.profile.model_in_body {
            body.insert("model".into(), Value::String(t.model.to_string()));
        } else {
            body.remove("model");
        }
        Self::apply_quirks(&mut body, t);
        Ok(UpstreamRequest {
            method: "POST",
            path: t.profile.path_for(t.endpoint, path, t.model),
            headers: vec![(JSON.0.into(), JSON.1.into())],
            body: Bytes::from(
                serde_json::to_vec(&body).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
        })
    }

    fn translate_embeddings(&self, body: &[u8], t: &Target) -> Result<Translated, DialectError> {
        let mut v: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        if !v.get("data").is_some_and(Value::is_array) {
            return Err(DialectError::Malformed(
                "embeddings response has no data array".into(),
            ));
        }
        let usage = v
            .get("usage")
            .and_then(Usage::from_openai)
            .unwrap_or_default();
        let model = v.get("model").and_then(Value::as_str).map(str::to_string);
        v.insert("object".into(), Value::String("list".into()));
        if model.is_none() {
            v.insert("model".into(), Value::String(t.model.to_string()));
        }
        Ok(Translated {
            body: Bytes::from(
                serde_json::to_vec(&v).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
            usage,
            model,
        })
    }

    fn build_images(
        &self,
        body: &Map<String, Value>,
        t: &Target,
    ) -> Result<UpstreamRequest, DialectError> {
        let path = t.profile.images_path.as_deref().ok_or_else(|| {
            DialectError::unsupported(
                format!(
                    "provider {} does not offer image generation",
                    t.profile.name
                ),
                Some("model"),
            )
        })?;
        let mut body = body.clone();
        body.insert("model".into(), Value::String(t.model.to_string()));
        Self::apply_quirks(&mut body, t);
        Ok(UpstreamRequest {
            method: "POST",
            path: t.profile.path_for(t.endpoint, path, t.model),
            headers: vec![(JSON.0.into(), JSON.1.into())],
            body: Bytes::from(
                serde_json::to_vec(&body).map_err(|e| DialectError::Malformed(e.to_string()))?,
            ),
        })
    }

    fn translate_images(&self, body: &[u8], _t: &Target) -> Result<Translated, DialectError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
        if !v.get("data").is_some_and(Value::is_array) {
            return Err(DialectError::Malformed(
                "images response has no data array".into(),
            ));
        }
        let usage = v
            .get("usage")
            .and_then(Usage::from_openai)
            .unwrap_or_default();
        Ok(Translated {
            body: Bytes::copy_from_slice(body),
            usage,
            model: None,
        })
    }
}

/// The non-stream translation through a full JSON tree: parse the completion into a map,
/// rewrite `id`, `object`, `created` and `model`, serialise it again. Every error and every
/// body [`splice_completion`] declines comes here, so both paths answer alike.
fn translate_chat_tree(body: &[u8], t: &Target) -> Result<Translated, DialectError> {
    let mut v: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| DialectError::Malformed(format!("response is not JSON: {e}")))?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(DialectError::Upstream(
            super::extract_error_message(
                &serde_json::to_vec(&serde_json::json!({"error": err})).unwrap_or_default(),
            )
            .unwrap_or_else(|| "upstream error".into()),
        ));
    }
    if !v.get("choices").is_some_and(Value::is_array) {
        return Err(DialectError::Malformed(
            "response has no choices array".into(),
        ));
    }
    let usage = v
        .get("usage")
        .and_then(Usage::from_openai)
        .unwrap_or_default();
    let model = v.get("model").and_then(Value::as_str).map(str::to_string);
    v.insert("id".into(), Value::String(t.request_id.to_string()));
    v.insert("object".into(), Value::String("chat.completion".into()));
    if !v.get("created").is_some_and(Value::is_u64) {
        v.insert("created".into(), Value::from(t.created));
    }
    if model.is_none() {
        v.insert("model".into(), Value::String(t.model.to_string()));
    }
    let mut out = Vec::with_capacity(body.len() + 64);
    serde_json::to_writer(&mut out, &v).map_err(|e| DialectError::Malformed(e.to_string()))?;
    Ok(Translated {
        body: Bytes::from(out),
        usage,
        model,
    })
}

/// A top-level member of an upstream completion: its key (escapes resolved) and the bytes
/// of its value as sent.
type Member<'a> = (Cow<'a, str>, &'a RawValue);

/// An object key, borrowed from the input unless it had escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The members of a top-level object in their order, values left as raw bytes.
struct Members<'a>(Vec<Member<'a>>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members<'de>, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(8));
                while let Some(Key(k)) = m.next_key()? {
                    let v: &'de RawValue = m.next_value()?;
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parse a top-level JSON object into its members without building a tree; `None` when
/// the body is not a JSON object, has a key twice, or holds something a full parse into
/// a `Value` would judge differently from the raw skip ([`needs_tree`]).
fn top_level_members(body: &[u8]) -> Option<Vec<Member<'_>>> {
    if needs_tree(body) {
        return None;
    }
    raw_members(body)
}

/// A top-level JSON object's members without building a tree, for bytes a full parse has
/// already accepted (no [`needs_tree`] scan); `None` when it is not an object or has a key
/// twice.
fn raw_members(body: &[u8]) -> Option<Vec<Member<'_>>> {
    let Members(members) = serde_json::from_slice(body).ok()?;
    // Duplicate keys: a map keeps the last value at the first one's place; leave that to it.
    for (i, (k, _)) in members.iter().enumerate() {
        if members[..i].iter().any(|(p, _)| p == k) {
            return None;
        }
    }
    Some(members)
}

/// serde_json's nesting limit for a `Value` parse is 128; anything near it takes the tree.
const MAX_SPLICE_DEPTH: usize = 100;

/// True when `b` may hold input that serde_json's raw-value skip accepts but a parse into a
/// `Value` rejects: a `\\u` escape in the surrogate range that is not a high-low pair (a
/// `String` must be valid UTF-8), nesting deeper than [`MAX_SPLICE_DEPTH`] (the skip has no
/// recursion limit), or a number that might overflow an `f64` (an exponent of three or more
/// digits, or more than 200 digits). Conservative: a false alarm only costs the tree path.
/// It assumes nothing about validity: the raw parse that follows checks the syntax.
fn needs_tree(b: &[u8]) -> bool {
    fn hex4(b: &[u8], at: usize) -> Option<u32> {
        let h = b.get(at..at + 4)?;
        let s = std::str::from_utf8(h).ok()?;
        u32::from_str_radix(s, 16).ok()
    }
    let n = b.len();
    let mut depth = 0usize;
    let mut i = 0;
    while i < n {
        match b[i] {
            b'"' => {
                i += 1;
                // To the next quote or backslash (string contents are most of a body).
                while let Some(off) = b.get(i..).and_then(|r| memchr::memchr2(b'"', b'\\', r)) {
                    i += off;
                    match b[i] {
                        b'"' => break,
                        b'\\' if b.get(i + 1) == Some(&b'u') => {
                            let Some(cp) = hex4(b, i + 2) else {
                                return true;
                            };
                            if (0xD800..0xDC00).contains(&cp) {
                                let paired = b.get(i + 6) == Some(&b'\\')
                                    && b.get(i + 7) == Some(&b'u')
                                    && hex4(b, i + 8)
                                        .is_some_and(|lo| (0xDC00..0xE000).contains(&lo));
                                if !paired {
                                    return true;
                                }
                                i += 12;
                            } else if (0xDC00..0xE000).contains(&cp) {
                                return true;
                            } else {
                                i += 6;
                            }
                        }
                        _ => i += 2,
                    }
                }
                i += 1;
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_SPLICE_DEPTH {
                    return true;
                }
                i += 1;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let (mut digits, mut exp_digits, mut in_exp) = (0usize, 0usize, false);
                while i < n {
                    match b[i] {
                        b'0'..=b'9' => {
                            digits += 1;
                            if in_exp {
                                exp_digits += 1;
                            }
                        }
                        b'e' | b'E' => in_exp = true,
                        b'.' | b'-' | b'+' => {}
                        _ => break,
                    }
                    i += 1;
                }
                if exp_digits >= 3 || digits > 200 {
                    return true;
                }
            }
            _ => i += 1,
        }
    }
    false
}

/// A raw JSON value as `Value::as_u64` reads it: plain digits that fit a `u64` (serde_json
/// makes anything else — a sign, a fraction, an exponent, a larger integer — an `i64` or an
/// `f64`); `None` otherwise. The bytes passed a JSON parse, so there are no leading zeros.
fn raw_u64(raw: &str) -> Option<u64> {
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        raw.parse().ok()
    } else {
        None
    }
}

/// [`Usage::from_openai`] of a usage object read from its members' bytes instead of a tree;
/// `None` when an object in the way has a key twice (the tree keeps the last value).
fn usage_from_raw(raw: &str) -> Option<Usage> {
    fn find<'a>(members: &[Member<'a>], name: &str) -> Option<&'a str> {
        members
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.get())
    }
    let top = raw_members(raw.as_bytes())?;
    let n = |v: Option<&str>| v.and_then(raw_u64).unwrap_or(0);
    let nested = |outer: &str, inner: &str| -> Option<u64> {
        match find(&top, outer) {
            Some(d) if d.starts_with('{') => Some(n(find(&raw_members(d.as_bytes())?, inner))),
            _ => Some(0),
        }
    };
    Some(Usage {
        prompt_tokens: n(find(&top, "prompt_tokens")),
        completion_tokens: n(find(&top, "completion_tokens")),
        cached_tokens: nested("prompt_tokens_details", "cached_tokens")?
            .max(n(find(&top, "prompt_cache_hit_tokens"))),
        cache_creation_tokens: 0,
        reasoning_tokens: nested("completion_tokens_details", "reasoning_tokens")?,
        reported: true,
    })
}

/// Write `s` as a JSON string.
fn write_json_str(out: &mut Vec<u8>, s: &str) -> Option<()> {
    serde_json::to_writer(out, s).ok()
}

/// Write an object key: one borrowed from the input (`as_sent`) as it was sent (it had no
/// escapes, and a JSON string without escapes holds no quote, backslash or control
/// character), an unescaped one escaped again.
fn write_key(out: &mut Vec<u8>, k: &str, as_sent: bool) -> Option<()> {
    if as_sent {
        out.push(b'"');
        out.extend_from_slice(k.as_bytes());
        out.push(b'"');
        Some(())
    } else {
        write_json_str(out, k)
    }
}

/// The non-stream translation without a JSON tree: the completion's top-level members are
/// copied byte for byte in their order, except `id` (the gateway's request id), `object`
/// (`chat.completion`), `created` (kept when it is an unsigned integer, else the gateway's)
/// and `model` (kept when it is a string, else the target's); the ones missing are appended
/// in that order, as inserting into the tree's map does. `usage` and `model` are read from
/// their own bytes. `None` for anything [`translate_chat_tree`] must judge: a body that is
/// not a JSON object (or fails [`top_level_members`]), a non-null `error`, no `choices`
/// array.
fn splice_completion(body: &[u8], t: &Target) -> Option<Translated> {
    let members = top_level_members(body)?;
    let get = |name: &str| {
        members
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.get())
    };
    if get("error").is_some_and(|e| e != "null") {
        return None;
    }
    if !get("choices").is_some_and(|c| c.starts_with('[')) {
        return None;
    }
    let usage = match get("usage") {
        Some(u) if u.starts_with('{') => match usage_from_raw(u) {
            Some(usage) => usage,
            None => {
                let v: Value = serde_json::from_str(u).ok()?;
                Usage::from_openai(&v).unwrap_or_default()
            }
        },
        _ => Usage::default(),
    };
    let model = match get("model") {
        Some(m) if m.starts_with('"') => Some(serde_json::from_str::<String>(m).ok()?),
        _ => None,
    };
    let created_ok = get("created").is_some_and(|c| raw_u64(c).is_some());
    let mut out = Vec::with_capacity(body.len() + t.request_id.len() + 32);
    out.push(b'{');
    let mut first = true;
    let mut seen = [false; 4];
    let mut sep = |out: &mut Vec<u8>| {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
    };
    for (k, v) in &members {
        sep(&mut out);
        write_key(&mut out, k, matches!(k, Cow::Borrowed(_)))?;
        out.push(b':');
        match &**k {
            "id" => {
                seen[0] = true;
                write_json_str(&mut out, t.request_id)?;
            }
            "object" => {
                seen[1] = true;
                out.extend_from_slice(br#""chat.completion""#);
            }
            "created" => {
                seen[2] = true;
                if created_ok {
                    out.extend_from_slice(v.get().as_bytes());
                } else {
                    out.extend_from_slice(t.created.to_string().as_bytes());
                }
            }
            "model" => {
                seen[3] = true;
                if model.is_some() {
                    out.extend_from_slice(v.get().as_bytes());
                } else {
                    write_json_str(&mut out, t.model)?;
                }
            }
            _ => out.extend_from_slice(v.get().as_bytes()),
        }
    }
    if !seen[0] {
        sep(&mut out);
        out.extend_from_slice(br#""id":"#);
        write_json_str(&mut out, t.request_id)?;
    }
    if !seen[1] {
        sep(&mut out);
        out.extend_from_slice(br#""object":"chat.completion""#);
    }
    if !seen[2] {
        sep(&mut out);
        out.extend_from_slice(br#""created":"#);
        out.extend_from_slice(t.created.to_string().as_bytes());
    }
    if !seen[3] {
        sep(&mut out);
        out.extend_from_slice(br#""model":"#);
        write_json_str(&mut out, t.model)?;
    }
    out.push(b'}');
    Some(Translated {
        body: Bytes::from(out),
        usage,
        model,
    })
}

/// Add to `into` the members of `from` it lacks (one level into nested objects): the
/// upstream's usage stays as sent, and the standard members are there even when the
/// upstream named them differently (e.g. DeepSeek's `prompt_cache_hit_tokens`).
fn fill_missing(into: &mut Value, from: Value) {
    let (Value::Object(a), Value::Object(b)) = (into, from) else {
        return;
    };
    for (k, v) in b {
        match a.get_mut(&k) {
            None | Some(Value::Null) => {
                a.insert(k, v);
            }
            Some(existing @ Value::Object(_)) => fill_missing(existing, v),
            Some(_) => {}
        }
    }
}

/// Chunk fields copied onto a usage chunk the gateway builds itself.
const USAGE_CHUNK_FIELDS: &[&str] = &["system_fingerprint", "service_tier"];

/// Normalises an OpenAI-compatible SSE stream.
pub struct OpenAiStream {
    decoder: SseDecoder,
    events: Vec<SseEvent>,
    id: Value,
    created: u64,
    include_usage: bool,
    usage: Usage,
    /// The upstream's usage object as sent (details, unknown members), shown to the client.
    usage_raw: Option<Value>,
    /// The upstream's own usage-only chunk (fingerprint, service tier, unknown fields).
    usage_chunk: Option<Map<String, Value>>,
    /// Chunk-level fields clients bill or branch on, for a usage chunk the gateway builds.
    extras: Map<String, Value>,
    model: Option<String>,
    saw_done: bool,
    saw_finish: bool,
    produced: bool,
    ended: bool,
}

impl OpenAiStream {
    pub fn new(request_id: &str, include_usage: bool, created: u64) -> Self {
        OpenAiStream {
            decoder: SseDecoder::new(),
            events: Vec::with_capacity(4),
            id: Value::String(request_id.to_string()),
            created,
            include_usage,
            usage: Usage::default(),
            usage_raw: None,
            usage_chunk: None,
            extras: Map::new(),
            model: None,
            saw_done: false,
            saw_finish: false,
            produced: false,
            ended: false,
        }
    }

    fn handle(&mut self, data: &str, out: &mut BytesMut) -> Result<(), DialectError> {
        let data = data.trim();
        if data == "[DONE]" {
            self.saw_done = true;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut chunk: Map<String, Value> = serde_json::from_str(data)
            .map_err(|e| DialectError::Malformed(format!("stream chunk is not JSON: {e}")))?;
        if let Some(err) = chunk.get("error").filter(|e| !e.is_null()) {
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .or_else(|| err.as_str())
                .unwrap_or("upstream error")
                .to_string();
            if !self.ended {
                write_error_event(&msg, "api_error", "upstream_error", out);
                write_done(out);
                self.ended = true;
            }
            return Err(DialectError::Upstream(msg));
        }
        // Usage may come in its own chunk, in the last content chunk, or (Groq) in x_groq.
        let usage = chunk.remove("usage").filter(|u| !u.is_null()).or_else(|| {
            chunk
                .get_mut("x_groq")
                .and_then(|x| x.as_object_mut())
                .and_then(|x| x.remove("usage"))
        });
        if let Some(u) = usage {
            if let Some(parsed) = Usage::from_openai(&u) {
                self.usage = parsed;
            }
            if u.is_object() {
                self.usage_raw = Some(u);
            }
        }
        for k in USAGE_CHUNK_FIELDS {
            if !self.extras.contains_key(*k) {
                if let Some(v) = chunk.get(*k).filter(|v| !v.is_null()) {
                    self.extras.insert((*k).to_string(), v.clone());
                }
            }
        }
        if self.model.is_none() {
            self.model = chunk
                .get("model")
                .and_then(Value::as_str)
                .map(str::to_string);
            // The final usage chunk must carry the same `created` as the others.
            if let Some(c) = chunk.get("created").and_then(Value::as_u64) {
                self.created = c;
            }
        }
        let choices_empty = chunk
            .get("choices")
            .and_then(Value::as_array)
            .is_none_or(|c| c.is_empty());
        if choices_empty {
            // The usage-only chunk: re-emitted by `finish` for clients that asked, with every
            // field the upstream sent.
            if self.usage_raw.is_some() {
                self.usage_chunk = Some(chunk);
            }
            return Ok(());
        }
        if let Some(choices) = chunk.get("choices").and_then(Value::as_array) {
            for c in choices {
                if c.get("finish_reason").is_some_and(|f| !f.is_null()) {
                    self.saw_finish = true;
                }
                if let Some(d) = c.get("delta") {
                    if d.get("content")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty())
                        || d.get("tool_calls").is_some()
                        || d.get("reasoning_content")
                            .and_then(Value::as_str)
                            .is_some_and(|s| !s.is_empty())
                    {
                        self.produced = true;
                    }
                }
            }
        }
        chunk.insert("id".into(), self.id.clone());
        chunk.insert(
            "object".into(),
            Value::String("chat.completion.chunk".into()),
        );
        if self.include_usage {
            chunk.insert("usage".into(), Value::Null);
        }
        write_data(&Value::Object(chunk), out);
        Ok(())
    }

    fn drain(&mut self, out: &mut BytesMut) -> Result<(), DialectError> {
        let events = std::mem::take(&mut self.events);
        let mut result = Ok(());
        for ev in &events {
            if self.ended {
                break;
            }
            if let Err(e) = self.handle(&ev.data, out) {
                result = Err(e);
                break;
            }
        }
        self.events = events;
        self.events.clear();
        result
    }

    fn write_usage_and_done(&mut self, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        if self.include_usage {
            // The upstream's usage chunk edited in place (unknown keys and their order kept),
            // or one built from the stream's fields when usage came inside a content chunk.
            let mut c = self.usage_chunk.take().unwrap_or_default();
            c.insert("id".into(), self.id.clone());
            c.insert(
                "object".into(),
                Value::String("chat.completion.chunk".into()),
            );
            c.entry("created").or_insert(Value::from(self.created));
            c.entry("model")
                .or_insert_with(|| Value::String(self.model.clone().unwrap_or_default()));
            for (k, v) in std::mem::take(&mut self.extras) {
                c.entry(k).or_insert(v);
            }
            c.insert("choices".into(), Value::Array(Vec::new()));
            let norm = self.usage.to_openai();
            let usage = match self.usage_raw.take() {
                Some(mut raw) => {
                    fill_missing(&mut raw, norm);
                    raw
                }
                None => norm,
            };
            c.insert("usage".into(), usage);
            write_data(&Value::Object(c), out);
        }
        write_done(out);
        self.ended = true;
    }
}

impl StreamTranslator for OpenAiStream {
    fn feed(&mut self, input: &[u8], out: &mut BytesMut) -> Result<(), DialectError> {
        if self.ended {
            return Ok(());
        }
        // Events decoded before a bad line are still translated (chunking must not matter).
        let decoded = self.decoder.feed(input, &mut self.events);
        self.drain(out)?;
        if self.ended {
            return Ok(());
        }
        decoded
    }

    fn finish(&mut self, out: &mut BytesMut) -> Result<(), DialectError> {
        if self.ended {
            return Ok(());
        }
        let drained = self
            .decoder
            .finish(&mut self.events)
            .and_then(|_| self.drain(out));
        if let Err(e) = drained {
            if self.ended {
                return Err(e);
            }
            let msg = "upstream stream ended with an incomplete event";
            self.abort(msg, out);
            return Err(DialectError::Truncated(msg.into()));
        }
        if self.ended {
            return Ok(());
        }
        if !self.saw_done && !self.saw_finish {
            let msg = "upstream stream ended before completion";
            self.abort(msg, out);
            return Err(DialectError::Truncated(msg.into()));
        }
        self.write_usage_and_done(out);
        Ok(())
    }

    fn abort(&mut self, message: &str, out: &mut BytesMut) {
        if self.ended {
            return;
        }
        write_error_event(message, "api_error", "upstream_error", out);
        write_done(out);
        self.ended = true;
    }

    fn usage(&self) -> Usage {
        self.usage
    }

    fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    fn produced_output(&self) -> bool {
        self.produced
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_usage_contract_and_id_rewrite() {
        let up = concat!(
            "data: {\"id\":\"up-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
            "data: {\"id\":\"up-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"id\":\"up-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
            "data: [DONE]\n\n"
        );
        for include in [true, false] {
            let mut s = OpenAiStream::new("chatcmpl-lg", include, 9);
            let mut out = BytesMut::new();
            for b in up.as_bytes().chunks(7) {
                s.feed(b, &mut out).unwrap();
            }
            s.finish(&mut out).unwrap();
            let text = String::from_utf8(out.to_vec()).unwrap();
            let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
            assert_eq!(*events.last().unwrap(), "data: [DONE]");
            assert_eq!(events.len(), if include { 4 } else { 3 });
            for e in &events[..events.len() - 1] {
                let v: Value = serde_json::from_str(&e[6..]).unwrap();
                assert_eq!(v["id"], "chatcmpl-lg");
                if include {
                    assert!(v.get("usage").is_some());
                } else {
                    assert!(v.get("usage").is_none());
                }
            }
            assert_eq!(s.usage().total(), 7);
            assert!(s.produced_output());
        }
    }

    #[test]
    fn truncated_stream_is_reported() {
        let mut s = OpenAiStream::new("x", false, 1);
        let mut out = BytesMut::new();
        s.feed(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"cho",
            &mut out,
        )
        .unwrap();
        assert!(matches!(
            s.finish(&mut out),
            Err(DialectError::Truncated(_))
        ));
        let text = String::from_utf8(out.to_vec()).unwrap();
        assert!(text.contains("\"error\""));
        assert!(text.ends_with("data: [DONE]\n\n"));
    }
}

#[cfg(test)]
mod splice_tests {
    use super::*;
    use crate::providers::{Endpoint, ProviderProfile};

    #[test]
    fn usage_request_is_spliced_into_the_clients_bytes() {
        let profile = ProviderProfile::parse(
            "name = \"p\"\ndialect = \"openai\"\nbase_url = \"http://h/v1\"\napi_key_env = \"X\"\n",
            "p.toml",
        )
        .unwrap();
        let ep = Endpoint::parse("http://h/v1").unwrap();
        let raw = br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"}"}]}  "#;
        let body: Map<String, Value> = serde_json::from_slice(raw).unwrap();
        let req = ChatRequest {
            raw: Bytes::from_static(raw),
            body,
            model: "m".into(),
            stream: true,
            include_usage: false,
        };
        let t = Target {
            profile: &profile,
            endpoint: &ep,
            model: "m",
            stream: true,
            request_id: "r",
            created: 1,
            max_output_tokens: None,
        };
        let out = OpenAi.build_chat(&req, &t).unwrap();
        let v: Value = serde_json::from_slice(&out.body).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["messages"][0]["content"], "}");
        assert_eq!(out.path, "/v1/chat/completions");
    }
}

#[cfg(test)]
mod translate_splice_tests {
    use super::*;
    use crate::providers::{Endpoint, ProviderProfile};

    fn profile() -> ProviderProfile {
        ProviderProfile::parse(
            "name = \"p\"\ndialect = \"openai\"\nbase_url = \"http://h/v1\"\napi_key_env = \"X\"\n",
            "p.toml",
        )
        .unwrap()
    }

    fn request() -> ChatRequest {
        let raw = br#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        ChatRequest {
            raw: Bytes::from_static(raw),
            body: serde_json::from_slice(raw).unwrap(),
            model: "m".into(),
            stream: false,
            include_usage: false,
        }
    }

    /// Run `f` with a target whose request id needs escaping in JSON.
    fn with_target<R>(f: impl FnOnce(&Target) -> R) -> R {
        let profile = profile();
        let ep = Endpoint::parse("http://h/v1").unwrap();
        let t = Target {
            profile: &profile,
            endpoint: &ep,
            model: "gpt-\"target\"",
            stream: false,
            request_id: "chatcmpl-lg\u{e9}\"1",
            created: 1_765_000_000,
            max_output_tokens: None,
        };
        f(&t)
    }

    const OK: &[&str] = &[
        // The load bench's completion.
        r#"{"id":"chatcmpl-mock","object":"chat.completion","created":1700000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"Packets cross the wire,\nmicroseconds fall like leaves,\nthe proxy stays still.","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":24,"completion_tokens":19,"total_tokens":43,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":7,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_mock"}"#,
        // Tool calls with JSON-in-a-string arguments.
        r#"{"id":"c1","object":"chat.completion","created":1,"model":"gpt-4o","choices":[{"index":0,"message":{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\",\"unit\":\"c\"}"}},{"id":"call_2","type":"function","function":{"name":"t","arguments":"{}"}}]},"finish_reason":"tool_calls"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#,
        // Unicode escapes (a surrogate pair, U+2028, an escaped key that is `id`), raw UTF-8.
        r#"{"\u0069d":"up","object":"x","created":5,"model":"m\u00e9","choices":[{"message":{"content":"caf\u00e9 \ud83d\ude00 \u2028 \/ \"q\" \\ é 😀","role":"assistant"}}],"k\u00e9y":"v"}"#,
        // Nulls where values are optional, and an `error: null`.
        r#"{"id":null,"object":null,"created":null,"model":null,"choices":[{"message":{"content":null}}],"usage":null,"error":null,"system_fingerprint":null}"#,
        // Numbers: floats, exponents, big integers, negative zero, a non-integer `created`.
        r#"{"id":"x","created":1.7e9,"model":"m","choices":[{"logprobs":{"content":[{"token":"a","logprob":-1.234e-5,"bytes":[97]},{"token":"b","logprob":-0.1,"top":0.30000000000000004}]},"n":12345678901234567890123,"m":-9223372036854775809,"z":-0,"e":1E+2,"f":1e-99,"g":0.5e10}],"usage":{"prompt_tokens":5.0,"completion_tokens":18446744073709551615,"total_tokens":-1}}"#,
        r#"{"id":"x","created":18446744073709551616,"model":"m","choices":[]}"#,
        r#"{"id":"x","created":-5,"choices":[]}"#,
        r#"{"id":"x","created":18446744073709551615,"choices":[]}"#,
        // Missing id, object, created and model.
        r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}"#,
        r#"{"choices":[],"model":"kept"}"#,
        // Extra vendor fields (Groq, Azure, DeepSeek).
        r#"{"id":"x","object":"chat.completion","created":2,"model":"llama","choices":[{"index":0,"message":{"role":"assistant","content":"ok","reasoning_content":"think"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4,"prompt_cache_hit_tokens":2,"queue_time":0.01},"x_groq":{"id":"req_1"},"prompt_filter_results":[{"prompt_index":0,"content_filter_results":{}}]}"#,
        // Pretty-printed, with whitespace everywhere it may be.
        "{\n  \"id\" : \"x\" ,\n  \"choices\" : [ { \"message\" : { \"content\" : \"a\" } } ] ,\n  \"usage\" : { \"prompt_tokens\" : 1 , \"completion_tokens\" : 2 }\n}\n",
        " \t\r\n{\"choices\":[]} \n",
        // Nested duplicate keys (the map keeps the last value).
        r#"{"id":"x","choices":[{"message":{"content":"a","content":"b"}}],"usage":{"prompt_tokens":1,"prompt_tokens":9}}"#,
        // Deep but within the limit.
        r#"{"choices":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
        // Empty key and a key that needs escaping.
        r#"{"":1,"a\"b\n":2,"choices":[]}"#,
    ];

    /// Bodies the tree path must judge (errors, malformed input, input the raw skip is more
    /// lenient with than a `Value` parse).
    fn tree_only() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = [
            r#"{"error":{"message":"bad key","type":"invalid_request_error"}}"#,
            r#"{"error":"plain text error","choices":[]}"#,
            r#"{"error":{"code":500},"choices":[{"message":{}}]}"#,
            r#"{"error":false,"choices":[]}"#,
            "",
            "not json",
            "[]",
            "null",
            r#""string""#,
            "{}",
            r#"{"choices":{}}"#,
            r#"{"choices":null}"#,
            r#"{"choices":"[]"}"#,
            r#"{"choices":[]"#,
            r#"{"choices":[]} x"#,
            r#"{"choices":[],}"#,
            r#"{"choices":[01]}"#,
            r#"{"choices":["\ud800"]}"#,
            r#"{"choices":["\udc00"]}"#,
            r#"{"choices":["\ud800\u0041"]}"#,
            r#"{"choices":["\ud800\n"]}"#,
            r#"{"\ud800":1,"choices":[]}"#,
            r#"{"choices":[1e400]}"#,
            r#"{"choices":[-1e400]}"#,
            r#"{"choices":[1e-400]}"#,
            r#"{"choices":[1.5E+308]}"#,
            r#"{"choices":[],"model":"a","model":"b"}"#,
            r#"{"id":"a","choices":[],"id":"b"}"#,
            r#"{"choices":[],"created":1,"created":1.5}"#,
            r#"{"choices":[],"choices":{}}"#,
            "{\"choices\":[\"a\u{1}b\"]}",
            r#"{"choices":["\x"]}"#,
            r#"{"choices":["\u12"]}"#,
            r#"{"choices":["abc\"#,
            r#"{"choices":["\ud83d\"#,
            r#"{"choices":["\u"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect();
        v.push(b"{\"choices\":[\"\xff\"]}".to_vec());
        v.push(b"{\"choices\":[],\"k\":\"\xc3\"}".to_vec());
        let deep = |n: usize| format!("{{\"choices\":[{}1{}]}}", "[".repeat(n), "]".repeat(n));
        v.push(deep(130).into_bytes());
        v.push(deep(126).into_bytes());
        v.push(format!("{{\"choices\":[{}]}}", "9".repeat(400)).into_bytes());
        v
    }

    /// The spliced translation answers exactly as the tree: the same JSON (top-level order
    /// included), usage and model, or the same error.
    fn assert_same(body: &[u8], t: &Target) {
        let new = OpenAi.translate_chat(body, t, &request());
        let old = translate_chat_tree(body, t);
        let shown = String::from_utf8_lossy(body);
        match (new, old) {
            (Ok(n), Ok(o)) => {
                let nv: Map<String, Value> = serde_json::from_slice(&n.body)
                    .unwrap_or_else(|e| panic!("spliced body is not JSON ({e}) for {shown}"));
                let ov: Map<String, Value> = serde_json::from_slice(&o.body).unwrap();
                assert_eq!(nv, ov, "body differs for {shown}");
                assert!(
                    nv.keys().eq(ov.keys()),
                    "key order differs for {shown}: {:?} vs {:?}",
                    nv.keys().collect::<Vec<_>>(),
                    ov.keys().collect::<Vec<_>>()
                );
                assert_eq!(n.usage, o.usage, "usage differs for {shown}");
                assert_eq!(n.model, o.model, "model differs for {shown}");
            }
            (Err(n), Err(o)) => {
                assert_eq!(
                    format!("{n:?}"),
                    format!("{o:?}"),
                    "error differs for {shown}"
                )
            }
            (n, o) => panic!(
                "one path failed for {shown}: spliced {:?}, tree {:?}",
                n.map(|x| x.body),
                o.map(|x| x.body)
            ),
        }
    }

    #[test]
    fn spliced_completions_match_the_tree() {
        with_target(|t| {
            for body in OK {
                assert!(
                    splice_completion(body.as_bytes(), t).is_some(),
                    "not spliced: {body}"
                );
                assert_same(body.as_bytes(), t);
            }
        });
    }

    #[test]
    fn errors_and_unusual_bodies_take_the_tree() {
        with_target(|t| {
            for body in tree_only() {
                assert!(
                    splice_completion(&body, t).is_none(),
                    "spliced: {}",
                    String::from_utf8_lossy(&body)
                );
                assert_same(&body, t);
            }
        });
    }

    #[test]
    fn fields_are_rewritten_in_place_and_others_kept_verbatim() {
        with_target(|t| {
            let body = br#"{"id":"up","object":"x","created":7,"model":"m","choices":[{"message":{"content":"caf\u00e9"}}],"usage":{"prompt_tokens":2,"completion_tokens":3},"z":1.50}"#;
            let tr = splice_completion(body, t).unwrap();
            let text = std::str::from_utf8(&tr.body).unwrap();
            assert_eq!(
                text,
                r#"{"id":"chatcmpl-lgé\"1","object":"chat.completion","created":7,"model":"m","choices":[{"message":{"content":"caf\u00e9"}}],"usage":{"prompt_tokens":2,"completion_tokens":3},"z":1.50}"#
            );
            assert_eq!(tr.usage.total(), 5);
            assert_eq!(tr.model.as_deref(), Some("m"));
            let tr = splice_completion(br#"{"choices":[],"model":7,"created":"1"}"#, t).unwrap();
            assert_eq!(
                std::str::from_utf8(&tr.body).unwrap(),
                r#"{"choices":[],"model":"gpt-\"target\"","created":1765000000,"id":"chatcmpl-lgé\"1","object":"chat.completion"}"#
            );
            assert_eq!(tr.model, None);
        });
    }

    #[test]
    fn usage_read_from_bytes_is_the_trees() {
        let cases = [
            (
                r#"{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}"#,
                true,
            ),
            (
                r#"{"prompt_tokens":9,"completion_tokens":1,"prompt_tokens_details":{"cached_tokens":3,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":4}}"#,
                true,
            ),
            (
                r#"{"prompt_tokens":9,"prompt_cache_hit_tokens":6,"prompt_tokens_details":{"cached_tokens":3}}"#,
                true,
            ),
            (
                r#"{"prompt_tokens":5.0,"completion_tokens":-1,"prompt_cache_hit_tokens":1e1}"#,
                true,
            ),
            (
                r#"{"prompt_tokens":"5","completion_tokens":null,"prompt_tokens_details":[1]}"#,
                true,
            ),
            (
                r#"{"prompt_tokens":18446744073709551616,"completion_tokens":18446744073709551615}"#,
                true,
            ),
            (
                r#"{"prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":1e2}}"#,
                true,
            ),
            (
                r#"{"completion_tokens_details":{"reasoning_tokens":{"n":1}},"x":{"y":[1,2]}}"#,
                true,
            ),
            (r#"{}"#, true),
            (r#"{"prompt_tokens":1,"prompt_tokens":2}"#, false),
            (
                r#"{"prompt_tokens_details":{"cached_tokens":3,"cached_tokens":4}}"#,
                false,
            ),
        ];
        for (raw, spliced) in cases {
            let tree = Usage::from_openai(&serde_json::from_str(raw).unwrap()).unwrap();
            let got = usage_from_raw(raw);
            assert_eq!(got.is_some(), spliced, "{raw}");
            if let Some(u) = got {
                assert_eq!(u, tree, "{raw}");
            }
            // Through the whole translation (the tree path when the bytes decline).
            let body = format!(r#"{{"choices":[],"usage":{raw}}}"#);
            with_target(|t| assert_same(body.as_bytes(), t));
        }
    }

    /// Mutations of the corpus (bytes dropped, duplicated, replaced by JSON-significant
    /// ones, truncation): both paths still answer alike.
    #[test]
    fn mutated_bodies_answer_as_the_tree() {
        const BYTES: &[u8] = b"\"\\{}[],:0123456789-+.eEuUdDcCfFaA nul\xff\x01";
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((seed >> 33) as usize) % n.max(1)
        };
        let corpus: Vec<Vec<u8>> = OK
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .chain(tree_only())
            .collect();
        with_target(|t| {
            let mut spliced = 0;
            for _ in 0..20_000 {
                let mut b = corpus[next(corpus.len())].clone();
                for _ in 0..=next(3) {
                    let at = next(b.len() + 1);
                    match next(4) {
                        0 if at < b.len() => {
                            b.remove(at);
                        }
                        1 if at < b.len() => b.insert(at, b[at]),
                        2 => b.insert(at, BYTES[next(BYTES.len())]),
                        _ if at < b.len() => b[at] = BYTES[next(BYTES.len())],
                        _ => b.truncate(at),
                    }
                }
                spliced += usize::from(splice_completion(&b, t).is_some());
                assert_same(&b, t);
            }
            // The mutations must reach the spliced path, not only the tree's errors.
            assert!(spliced > 1_000, "only {spliced} mutated bodies spliced");
        });
    }
}

#[cfg(test)]
mod build_splice_tests {
    use super::*;
    use crate::providers::{Endpoint, ProviderProfile};

    fn profile(extra: &str) -> ProviderProfile {
        ProviderProfile::parse(
            &format!(
                "name = \"p\"\ndialect = \"openai\"\nbase_url = \"http://h/v1\"\napi_key_env = \"X\"\n{extra}"
            ),
            "p.toml",
        )
        .unwrap()
    }

    fn request(raw: &str) -> ChatRequest {
        let body: Map<String, Value> = serde_json::from_str(raw).unwrap();
        let include_usage = body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        ChatRequest {
            raw: Bytes::copy_from_slice(raw.as_bytes()),
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .into(),
            stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
            include_usage,
            body,
        }
    }

    const BODIES: &[&str] = &[
        r#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"temperature":0.7}"#,
        r#"{"messages":[{"role":"user","content":"caf\u00e9 \ud83d\ude00 \"q\""}],"model":"openai/gpt-4o-mini","max_completion_tokens":256,"tools":[{"type":"function","function":{"name":"f","parameters":{"type":"object"}}}]}"#,
        r#"{"model":"auto","stream":true,"messages":[{"role":"user","content":"}"}]}"#,
        r#"{"model":"auto","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"user","content":"x"}]}"#,
        r#"{"model":"auto","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#,
        "{\n \"model\" : \"a\" ,\n \"messages\" : [ {\"role\":\"user\",\"content\":\"x\"} ] , \"seed\" : 12345678901234567890123 }",
        r#"{"model":"m","messages":[{"role":"user","content":"x"}],"logit_bias":{"50256":-100},"n":1,"x_vendor":null}"#,
        r#"{"model":"a","messages":[],"model":"b"}"#,
        r#"{"model":"a","messages":[{"role":"user","content":"x"}],"max_tokens":9,"user":"u"}"#,
    ];

    /// The spliced body is the tree's (same JSON, top-level order included) for every body,
    /// model and profile; the splice declines quirks and existing `stream_options` it would
    /// have to edit.
    #[test]
    fn spliced_request_bodies_match_the_tree() {
        let ep = Endpoint::parse("http://h/v1").unwrap();
        let profiles = [
            (profile(""), true),
            (profile("unsupported_params = [\"user\"]\n"), false),
            (
                profile("[rename_params]\nmax_tokens = \"max_completion_tokens\"\n"),
                false,
            ),
            (profile("model_in_body = false\n"), false),
        ];
        let mut spliced = 0;
        for (p, plain) in &profiles {
            for body in BODIES {
                for model in ["gpt-4o-mini", "we\"ird/\u{e9}"] {
                    let req = request(body);
                    let t = Target {
                        profile: p,
                        endpoint: &ep,
                        model,
                        stream: req.stream,
                        request_id: "r",
                        created: 1,
                        max_output_tokens: None,
                    };
                    let tree = OpenAi::build_body_tree(&req, &t).unwrap();
                    let usage = OpenAi::needs_usage(&req, &t);
                    let got = OpenAi.build_chat(&req, &t).unwrap().body;
                    let a: Map<String, Value> = serde_json::from_slice(&got).unwrap();
                    let b: Map<String, Value> = serde_json::from_slice(&tree).unwrap();
                    assert_eq!(a, b, "{body} for {model}");
                    assert!(a.keys().eq(b.keys()), "key order of {body} for {model}");
                    if let Some(s) = OpenAi::splice_model(&req, &t, usage) {
                        spliced += 1;
                        let s: Map<String, Value> = serde_json::from_slice(&s).unwrap();
                        assert_eq!(s, b, "{body} for {model}");
                        assert!(s.keys().eq(b.keys()), "key order of {body} for {model}");
                    }
                    let quirky = !*plain
                        && (req.body.contains_key("user") || req.body.contains_key("max_tokens"));
                    let declines = quirky
                        || !p.model_in_body
                        || body.matches("\"model\"").count() > 1
                        || (usage && body.contains("stream_options"));
                    assert_eq!(
                        OpenAi::splice_model(&req, &t, usage).is_none(),
                        declines,
                        "{body} with {model}"
                    );
                }
            }
        }
        assert!(spliced >= 12, "only {spliced} spliced");
    }

    #[test]
    fn a_routed_request_keeps_the_clients_bytes_but_the_model() {
        let p = profile("");
        let ep = Endpoint::parse("http://h/v1").unwrap();
        let req = request(
            r#"{"model":"auto","messages":[{"role":"user","content":"caf\u00e9"}],"temperature":0.70}"#,
        );
        let t = Target {
            profile: &p,
            endpoint: &ep,
            model: "gpt-4o-mini",
            stream: false,
            request_id: "r",
            created: 1,
            max_output_tokens: None,
        };
        let out = OpenAi.build_chat(&req, &t).unwrap();
        assert_eq!(
            std::str::from_utf8(&out.body).unwrap(),
            r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"caf\u00e9"}],"temperature":0.70}"#
        );
    }
}
