//! A SIMULATED provider fleet for `loopgate demo` and the replay benchmark: a small
//! OpenAI-compatible HTTP server on loopback that answers each chat request with the requested
//! model's *recorded* outcome on that prompt from the replay data (usage from the data), so the
//! gateway's real code paths run against real per-prompt quality and cost — with no API keys.
//!
//! It also plays the LLM judge: a request whose answer carries the simulator's marker
//! `[sim:<row id>:<model>]` is scored from that row's recorded quality (rubric JSON).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::data::{Row, CHEAP, STRONG};

/// The models the simulator serves, as provider-native ids.
pub fn model_of(requested: &str) -> Option<&'static str> {
    let m = requested.to_ascii_lowercase();
    if m.contains("gpt-4-1106") {
        Some(STRONG)
    } else if m.contains("mixtral-8x7b") {
        Some(CHEAP)
    } else {
        None
    }
}

pub struct SimFleet {
    pub addr: SocketAddr,
    /// Requests answered per replay model, and judge calls (the replay responder of
    /// [`SimFleet::start`]; empty for a custom [`Responder`]).
    pub served: Arc<HashMap<&'static str, AtomicU64>>,
}

/// What a simulated fleet answers: one OpenAI chat request body in, (status, JSON body) out.
/// [`SimFleet::start`] answers from the embedded RouteLLM replay set; other replay sets (the
/// RouterBench replay of `benches/replay/routerbench.rs`) bring their own.
pub trait Responder: Send + Sync + 'static {
    fn answer(&self, request: &Value) -> (u16, Value);
}

/// The RouteLLM replay set as a [`Responder`] (also plays the judge).
struct ReplayResponder {
    index: Index,
    counts: Arc<HashMap<&'static str, AtomicU64>>,
}

impl Responder for ReplayResponder {
    fn answer(&self, request: &Value) -> (u16, Value) {
        answer(&self.index, &self.counts, request)
    }
}

struct Index {
    rows: Arc<Vec<Row>>,
    by_prompt: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
}

impl SimFleet {
    /// Serve on `127.0.0.1:port` (0: any free port) until the runtime stops.
    pub async fn start(rows: Arc<Vec<Row>>, port: u16) -> std::io::Result<SimFleet> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let mut by_prompt = HashMap::new();
        let mut by_id = HashMap::new();
        for (i, r) in rows.iter().enumerate() {
            by_prompt.entry(r.prompt.clone()).or_insert(i);
            by_id.insert(r.id.clone(), i);
        }
        let index = Index {
            rows,
            by_prompt,
            by_id,
        };
        let served: Arc<HashMap<&'static str, AtomicU64>> = Arc::new(
            [
                (STRONG, AtomicU64::new(0)),
                (CHEAP, AtomicU64::new(0)),
                ("judge", AtomicU64::new(0)),
            ]
            .into_iter()
            .collect(),
        );
        let responder = ReplayResponder {
            index,
            counts: Arc::clone(&served),
        };
        Self::serve(listener, Arc::new(responder), served)
    }

    /// Serve `responder` on `127.0.0.1:port` (0: any free port) until the runtime stops.
    pub async fn start_with(responder: Arc<dyn Responder>, port: u16) -> std::io::Result<SimFleet> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        Self::serve(listener, responder, Arc::new(HashMap::new()))
    }

    fn serve(
        listener: TcpListener,
        responder: Arc<dyn Responder>,
        served: Arc<HashMap<&'static str, AtomicU64>>,
    ) -> std::io::Result<SimFleet> {
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let responder = Arc::clone(&responder);
                tokio::spawn(async move {
                    let _ = serve_conn(sock, &*responder).await;
                });
            }
        });
        Ok(SimFleet { addr, served })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
}

/// Read one HTTP/1.1 request (headers + content-length body); None at EOF.
async fn read_request(
    sock: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<(String, Vec<u8>)>> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim()
                        .eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            let total = end + 4 + len;
            while buf.len() < total {
                let mut chunk = [0u8; 16384];
                let n = sock.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(None);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..total].to_vec();
            buf.drain(..total);
            let line = head.lines().next().unwrap_or_default().to_string();
            return Ok(Some((line, body)));
        }
        let mut chunk = [0u8; 16384];
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve_conn(mut sock: TcpStream, responder: &dyn Responder) -> std::io::Result<()> {
    sock.set_nodelay(true)?;
    let mut buf = Vec::new();
    while let Some((line, body)) = read_request(&mut sock, &mut buf).await? {
        let (status, v) = if line.contains("/chat/completions") {
            match serde_json::from_slice::<Value>(&body) {
                Ok(req) => responder.answer(&req),
                Err(_) => (
                    400,
                    json!({"error": {"message": "simulator: body is not JSON", "type": "invalid_request_error"}}),
                ),
            }
        } else {
            (
                404,
                json!({"error": {"message": format!("simulator: unknown URL {line}"), "type": "invalid_request_error"}}),
            )
        };
        let text = serde_json::to_vec(&v).unwrap_or_default();
        let head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-simulated: loopgate-demo\r\n\r\n",
            if status == 200 { "OK" } else { "Error" },
            text.len()
        );
        // One write: head and body in separate segments stall ~40 ms per response on
        // Nagle + delayed ACK.
        let mut out = head.into_bytes();
        out.extend_from_slice(&text);
        sock.write_all(&out).await?;
    }
    Ok(())
}

/// The text of the last user message of an OpenAI chat request (parts joined by newlines).
pub fn last_user_text(body: &Value) -> String {
    body["messages"]
        .as_array()
        .and_then(|ms| ms.iter().rev().find(|m| m["role"] == "user"))
        .map(|m| match &m["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        })
        .unwrap_or_default()
}

fn answer(index: &Index, counts: &HashMap<&'static str, AtomicU64>, req: &Value) -> (u16, Value) {
    let requested = req["model"].as_str().unwrap_or_default().to_string();
    let text = last_user_text(req);
    // A judge call: score the marked answer from the data.
    if let Some(start) = text.find("[sim:") {
        let marker = &text[start + 5..];
        let end = marker.find(']').unwrap_or(marker.len());
        let mut parts = marker[..end].rsplitn(2, ':');
        let model = parts.next().unwrap_or_default();
        let id = parts.next().unwrap_or_default();
        if let Some(o) = index
            .by_id
            .get(id)
            .and_then(|&i| index.rows[i].outcome(model))
        {
            if let Some(c) = counts.get("judge") {
                c.fetch_add(1, Ordering::Relaxed);
            }
            let s = 1.0 + 4.0 * o.quality;
            let content = json!({"relevance": s, "coherence": s, "helpfulness": s, "safety": 5,
                                 "rationale": "simulated judge: the recorded outcome of this answer"})
            .to_string();
            return (200, completion(&requested, &content, 300, 40));
        }
    }
    let Some(model) = model_of(&requested) else {
        return (
            404,
            json!({"error": {"message": format!("simulator: model '{requested}' is not simulated"), "type": "invalid_request_error", "code": "model_not_found"}}),
        );
    };
    let Some(&i) = index.by_prompt.get(&text) else {
        return (
            400,
            json!({"error": {"message": "simulator: prompt is not in the replay set", "type": "invalid_request_error"}}),
        );
    };
    let row = &index.rows[i];
    let Some(o) = row.outcome(model) else {
        return (
            500,
            json!({"error": {"message": "simulator: no outcome", "type": "api_error"}}),
        );
    };
    if let Some(c) = counts.get(model) {
        c.fetch_add(1, Ordering::Relaxed);
    }
    let content = format!(
        "[sim:{}:{}] Simulated answer of {} (recorded quality {:.2} on {}).",
        row.id, model, model, o.quality, row.dataset
    );
    (
        200,
        completion(&requested, &content, o.prompt_tokens, o.completion_tokens),
    )
}

/// A non-streamed OpenAI chat completion with the given usage.
pub fn completion(model: &str, content: &str, prompt: u64, completion: u64) -> Value {
    json!({
        "id": "chatcmpl-sim", "object": "chat.completion", "created": crate::dialect::unix_now(), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::http::Client;

    /// Answers `echo-model` with usage from the prompt's length; anything else is a 404.
    struct Echo;

    impl Responder for Echo {
        fn answer(&self, request: &Value) -> (u16, Value) {
            let model = request["model"].as_str().unwrap_or_default();
            if model != "acme/echo-model" {
                return (404, json!({"error": {"message": "unknown model"}}));
            }
            let text = last_user_text(request);
            (200, completion(model, &text, text.len() as u64, 7))
        }
    }

    #[tokio::test]
    async fn a_custom_responder_answers_over_loopback_http() {
        let fleet = SimFleet::start_with(Arc::new(Echo), 0).await.unwrap();
        let mut c = Client::new(fleet.addr, "unused");
        let body = json!({"model": "acme/echo-model", "messages": [
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "x"},
            {"role": "user", "content": [{"type": "text", "text": "hello"}]}]});
        let r = c
            .send("POST", "/v1/chat/completions", Some(&body), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let v = r.json();
        assert_eq!(v["choices"][0]["message"]["content"], "hello");
        assert_eq!(v["usage"]["prompt_tokens"], 5);
        assert_eq!(v["usage"]["total_tokens"], 12);
        let other = json!({"model": "other", "messages": [{"role": "user", "content": "a"}]});
        let r = c
            .send("POST", "/v1/chat/completions", Some(&other), &[])
            .await
            .unwrap();
        assert_eq!(r.status, 404);
        // Not a chat call: the fleet's own 404.
        let r = c.send("GET", "/v1/models", None, &[]).await.unwrap();
        assert_eq!(r.status, 404);
        assert!(fleet.served.is_empty());
    }
}
