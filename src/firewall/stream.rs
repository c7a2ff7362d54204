//! The firewall on a streamed response: OpenAI SSE chunks are checked as they pass.
//!
//! Each choice's `delta.content` goes through a buffer. What is older than the last
//! `window` bytes is final: it is checked, redacted and sent; the last `window` bytes wait for
//! the next chunk, so a secret split across chunks is still matched whole. A match that runs
//! to the end of the buffer (a private-key block still arriving) holds everything from its
//! start, up to `max_hold` bytes. Every event is re-encoded as one `data: <json>\n\n` event,
//! so the SSE framing never breaks; held text is sent in the choice's next chunk, at its
//! `finish_reason` chunk, or in a chunk of its own before `[DONE]`.

use bytes::{BufMut, BytesMut};
use serde_json::{Map, Value};

use super::{rewrite, Action, Hit, Phase, Report};

/// Most choices tracked (`n` is capped at 128 by request validation).
const MAX_CHOICES: usize = 128;
/// Most bytes of an incomplete event kept between chunks.
const MAX_PARTIAL: usize = 4 * 1024 * 1024;

#[derive(Default)]
struct ChoiceBuf {
    pending: String,
    /// Offset of `pending[0]` in the choice's whole text.
    offset: usize,
}

/// A choice's text ready to go: for the client, and for stored copies (flags masked).
struct Emitted {
    client: String,
    masked: Option<String>,
    /// A `block` rule cut the text here: finish the choice with `content_filter`.
    cut: Option<String>,
}

pub struct StreamGuard {
    report: Report,
    window: usize,
    max_hold: usize,
    partial: Vec<u8>,
    choices: Vec<ChoiceBuf>,
    /// `id`, `object`, `created`, `model` of the stream, for chunks the guard sends itself.
    template: Map<String, Value>,
    /// A `block` rule ended the stream: everything after is dropped.
    cut: bool,
    hits: Vec<Hit>,
}

impl StreamGuard {
    pub fn new(report: Report, window: usize, max_hold: usize) -> StreamGuard {
        StreamGuard {
            report,
            window,
            max_hold,
            partial: Vec::new(),
            choices: Vec::new(),
            template: Map::new(),
            cut: false,
            hits: Vec::new(),
        }
    }

    /// The report with this stream's verdicts added.
    pub fn into_report(self) -> Report {
        self.report
    }

    /// Filter translated SSE bytes: `input` in, what the client gets out (and, with
    /// `capture`, what a stored copy gets: flagged text masked).
    pub fn feed(&mut self, input: &[u8], out: &mut BytesMut, mut capture: Option<&mut BytesMut>) {
        if self.cut {
            return;
        }
        self.partial.extend_from_slice(input);
        let mut start = 0;
        while let Some(rel) = find(&self.partial[start..], b"\n\n") {
            let end = start + rel + 2;
            let event = self.partial[start..end].to_vec();
            start = end;
            self.event(&event, out, capture.as_deref_mut());
            if self.cut {
                self.partial.clear();
                return;
            }
        }
        self.partial.drain(..start);
        if self.partial.len() > MAX_PARTIAL {
            // Not SSE as the translators write it: pass it on rather than grow.
            let rest = std::mem::take(&mut self.partial);
            out.put_slice(&rest);
            if let Some(c) = capture {
                c.put_slice(&rest);
            }
        }
    }

    /// The upstream ended: send what is still held.
    pub fn finish(&mut self, out: &mut BytesMut, capture: Option<&mut BytesMut>) {
        if self.cut {
            return;
        }
        let rest = std::mem::take(&mut self.partial);
        let mut capture = capture;
        self.flush_all(out, capture.as_deref_mut());
        if !rest.is_empty() {
            out.put_slice(&rest);
            if let Some(c) = capture {
                c.put_slice(&rest);
            }
        }
    }

    fn event(&mut self, event: &[u8], out: &mut BytesMut, capture: Option<&mut BytesMut>) {
        let payload = event
            .strip_prefix(b"data: ")
            .or_else(|| event.strip_prefix(b"data:"))
            .map(|p| p.trim_ascii());
        let Some(payload) = payload else {
            pass(event, out, capture);
            return;
        };
        if payload == b"[DONE]" {
            let mut capture = capture;
            self.flush_all(out, capture.as_deref_mut());
            pass(event, out, capture);
            return;
        }
        let Ok(Value::Object(mut chunk)) = serde_json::from_slice::<Value>(payload) else {
            pass(event, out, capture);
            return;
        };
        if self.template.is_empty() {
            for k in ["id", "object", "created", "model", "system_fingerprint"] {
                if let Some(v) = chunk.get(k) {
                    self.template.insert(k.to_string(), v.clone());
                }
            }
        }
        let Some(Value::Array(choices)) = chunk.get_mut("choices") else {
            pass(event, out, capture);
            return;
        };
        let mut masked: Vec<(usize, String)> = Vec::new();
        let mut touched = false;
        let mut cut_at: Option<usize> = None;
        for (pos, c) in choices.iter_mut().enumerate() {
            let idx = c
                .get("index")
                .and_then(Value::as_u64)
                .map_or(pos, |i| i as usize);
            if idx >= MAX_CHOICES {
                continue;
            }
            let finishing = c.get("finish_reason").is_some_and(|f| !f.is_null());
            let text = c
                .get_mut("delta")
                .and_then(|d| d.get_mut("content"))
                .and_then(|t| match t {
                    Value::String(s) => Some(std::mem::take(s)),
                    _ => None,
                });
            if text.is_none() && !finishing {
                continue;
            }
            if self.choices.len() <= idx {
                self.choices.resize_with(idx + 1, ChoiceBuf::default);
            }
            self.choices[idx]
                .pending
                .push_str(text.as_deref().unwrap_or(""));
            let e = self.take(idx, finishing);
            if e.client.is_empty() && text.is_none() {
                continue;
            }
            touched = true;
            if let Some(d) = c.get_mut("delta").and_then(Value::as_object_mut) {
                d.insert("content".into(), Value::String(e.client));
            } else if let Some(o) = c.as_object_mut() {
                let mut d = Map::new();
                d.insert("content".into(), Value::String(e.client));
                o.insert("delta".into(), Value::Object(d));
            }
            if let Some(m) = e.masked {
                masked.push((pos, m));
            }
            if e.cut.is_some() {
                if let Some(o) = c.as_object_mut() {
                    o.insert(
                        "finish_reason".into(),
                        Value::String("content_filter".into()),
                    );
                }
                cut_at = Some(pos);
                break;
            }
        }
        if let Some(pos) = cut_at {
            if let Some(Value::Array(choices)) = chunk.get_mut("choices") {
                choices.truncate(pos + 1);
            }
        }
        if !touched {
            pass(event, out, capture);
        } else {
            let value = Value::Object(chunk);
            write_event(out, &value);
            if let Some(c) = capture {
                if masked.is_empty() {
                    write_event(c, &value);
                } else {
                    let mut copy = value;
                    for (pos, m) in masked {
                        copy["choices"][pos]["delta"]["content"] = Value::String(m);
                    }
                    write_event(c, &copy);
                }
            }
        }
        if cut_at.is_some() {
            self.cut = true;
            out.put_slice(b"data: [DONE]\n\n");
        }
    }

    /// The final part of choice `idx`'s buffer, checked (all of it when `all`).
    fn take(&mut self, idx: usize, all: bool) -> Emitted {
        let policy = self.report.policy.clone();
        let buf = &mut self.choices[idx];
        let len = buf.pending.len();
        let all = all || len > self.max_hold;
        let mut base = if all {
            len
        } else {
            floor_boundary(&buf.pending, len.saturating_sub(self.window))
        };
        if base == 0 {
            return Emitted {
                client: String::new(),
                masked: None,
                cut: None,
            };
        }
        policy.scan(&buf.pending, &mut self.hits);
        // A match across the boundary waits whole for the next chunk.
        if let Some(h) = self.hits.iter().find(|h| h.start < base && h.end > base) {
            base = h.start;
        }
        self.hits.retain(|h| h.end <= base);
        let mut cut: Option<(usize, String)> = None;
        let mut flagged = false;
        let mut kept = 0;
        for h in &self.hits {
            let r = policy.rule(h);
            let off = buf.offset;
            self.report.push(
                r,
                Phase::Response,
                || format!("choices[{idx}]"),
                off + h.start,
                off + h.end,
            );
            match r.action {
                Action::Block => {
                    cut = Some((h.start, r.id.to_string()));
                    break;
                }
                Action::Flag => flagged = true,
                Action::Redact => {}
            }
            kept += 1;
        }
        let end = cut.as_ref().map_or(base, |(at, _)| *at);
        let hits = &self.hits[..kept];
        let head = &buf.pending[..end];
        let client = rewrite(&policy, head, hits, false);
        let masked = flagged.then(|| rewrite(&policy, head, hits, true));
        buf.pending.drain(..base);
        buf.offset += base;
        if let Some((_, rule)) = &cut {
            super::metrics()
                .blocked
                .with_label_values(&[rule, Phase::Response.as_str()])
                .inc();
            self.report.blocked.get_or_insert_with(|| rule.clone());
        }
        Emitted {
            client,
            masked,
            cut: cut.map(|(_, r)| r),
        }
    }

    /// Send every choice's held text in chunks of the guard's own.
    fn flush_all(&mut self, out: &mut BytesMut, mut capture: Option<&mut BytesMut>) {
        for idx in 0..self.choices.len() {
            if self.choices[idx].pending.is_empty() {
                continue;
            }
            let e = self.take(idx, true);
            let chunk = |text: String, finish: Option<&str>| {
                let mut m = self.template.clone();
                m.entry("object")
                    .or_insert_with(|| Value::String("chat.completion.chunk".into()));
                let mut c = Map::new();
                c.insert("index".into(), Value::from(idx));
                let mut d = Map::new();
                d.insert("content".into(), Value::String(text));
                c.insert("delta".into(), Value::Object(d));
                c.insert(
                    "finish_reason".into(),
                    finish.map_or(Value::Null, |f| Value::String(f.into())),
                );
                m.insert("choices".into(), Value::Array(vec![Value::Object(c)]));
                Value::Object(m)
            };
            let finish = e.cut.as_ref().map(|_| "content_filter");
            let v = chunk(e.client, finish);
            write_event(out, &v);
            if let Some(c) = capture.as_deref_mut() {
                match e.masked {
                    Some(m) => write_event(c, &chunk(m, finish)),
                    None => write_event(c, &v),
                }
            }
            if e.cut.is_some() {
                self.cut = true;
                out.put_slice(b"data: [DONE]\n\n");
                return;
            }
        }
    }
}

fn pass(event: &[u8], out: &mut BytesMut, capture: Option<&mut BytesMut>) {
    out.put_slice(event);
    if let Some(c) = capture {
        c.put_slice(event);
    }
}

fn write_event(out: &mut BytesMut, v: &Value) {
    out.put_slice(b"data: ");
    if serde_json::to_writer((&mut *out).writer(), v).is_err() {
        out.put_slice(b"{}");
    }
    out.put_slice(b"\n\n");
}

fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}
