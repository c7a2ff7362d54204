//! OpenTelemetry export end to end: the real gateway on loopback, a mock OpenAI upstream,
//! and test OTLP receivers: HTTP/protobuf (a raw tokio HTTP/1.1 server decoding
//! `ExportTraceServiceRequest` with opentelemetry-proto's prost types) and gRPC (a tonic
//! server running the official `TraceService`).

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AV;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const OTLP_SECRET: &str = "Bearer otlp-secret-value-1234";

/// Spans a receiver got, with the service name of their resource and the request headers.
#[derive(Default)]
struct Got {
    spans: Vec<(String, Span)>,
    headers: Vec<HashMap<String, String>>,
}

type Shared = Arc<Mutex<Got>>;

fn collect(got: &Shared, req: ExportTraceServiceRequest, headers: HashMap<String, String>) {
    let mut g = got.lock().unwrap();
    g.headers.push(headers);
    for rs in req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .and_then(|r| r.attributes.iter().find(|a| a.key == "service.name"))
            .and_then(|a| a.value.as_ref())
            .and_then(|v| match &v.value {
                Some(AV::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_default();
        for ss in rs.scope_spans {
            for s in ss.spans {
                g.spans.push((service.clone(), s));
            }
        }
    }
}

/// The HTTP/protobuf receiver: `POST /v1/traces`, body decoded as `ExportTraceServiceRequest`.
async fn http_receiver(got: Shared) -> (String, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        while let Ok((mut sock, _)) = l.accept().await {
            let got = got.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: head, then content-length bytes.
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i;
                        }
                        let mut tmp = [0u8; 16 * 1024];
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let mut lines = head.split("\r\n");
                    let first = lines.next().unwrap_or_default().to_string();
                    let headers: HashMap<String, String> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
                        .collect();
                    let len: usize = headers
                        .get("content-length")
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let mut tmp = [0u8; 16 * 1024];
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let body: Vec<u8> = buf.drain(..end + 4 + len).skip(end + 4).collect();
                    assert!(first.starts_with("POST /v1/traces "), "{first}");
                    assert_eq!(
                        headers.get("content-type").map(String::as_str),
                        Some("application/x-protobuf")
                    );
                    let req = ExportTraceServiceRequest::decode(body.as_slice())
                        .expect("an ExportTraceServiceRequest");
                    collect(&got, req, headers);
                    let ok = ExportTraceServiceResponse::default().encode_to_vec();
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: {}\r\n\r\n",
                        ok.len()
                    );
                    if sock.write_all(resp.as_bytes()).await.is_err()
                        || sock.write_all(&ok).await.is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/v1/traces"), h)
}

/// The gRPC receiver: the official `TraceService` on tonic.
struct Grpc(Shared);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let headers = request
            .metadata()
            .clone()
            .into_headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    v.to_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        collect(&self.0, request.into_inner(), headers);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

async fn grpc_receiver(got: Shared) -> (String, tokio::task::JoinHandle<()>) {
    // Bound here and handed to tonic, so it listens before the gateway starts. (Picking a free
    // port and letting tonic bind it later raced with the other tests' sockets: about one run
    // in ten the port was taken in between, tonic's bind failed silently, and the export was
    // refused.)
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .serve_with_incoming(
                TraceServiceServer::new(Grpc(got)),
                tonic::transport::server::TcpIncoming::from(l),
            )
            .await;
    });
    (format!("http://{addr}"), h)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr<'a>(s: &'a Span, key: &str) -> Option<&'a AV> {
    s.attributes
        .iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn str_attr<'a>(s: &'a Span, key: &str) -> Option<&'a str> {
    match attr(s, key) {
        Some(AV::StringValue(v)) => Some(v),
        _ => None,
    }
}

fn int_attr(s: &Span, key: &str) -> Option<i64> {
    match attr(s, key) {
        Some(AV::IntValue(v)) => Some(*v),
        _ => None,
    }
}

fn f64_attr(s: &Span, key: &str) -> Option<f64> {
    match attr(s, key) {
        Some(AV::DoubleValue(v)) => Some(*v),
        _ => None,
    }
}

fn strings_attr(s: &Span, key: &str) -> Vec<String> {
    match attr(s, key) {
        Some(AV::ArrayValue(a)) => a
            .values
            .iter()
            .filter_map(|v| match &v.value {
                Some(AV::StringValue(s)) => Some(s.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The mock: OpenAI-like, but model `broken` gets a 400.
fn upstream() -> Reply {
    let ok = openai_like();
    Reply::Dynamic(Arc::new(move |r: &Received| {
        if r.json()["model"] == "broken" {
            return Reply::Json(
                400,
                vec![],
                json!({"error": {"message": "bad model", "type": "invalid_request_error", "code": "model_not_found"}}).to_string(),
            );
        }
        match &ok {
            Reply::Dynamic(f) => f(r),
            other => other.clone(),
        }
    }))
}

fn otlp_toml(endpoint: &str, protocol: &str, extra: &str) -> String {
    format!(
        "[otlp]\nenabled = true\nendpoint = \"{endpoint}\"\nprotocol = \"{protocol}\"\nservice_name = \"lg-test\"\nexport_interval_ms = 50\ntimeout_ms = 2000\n{extra}\n[otlp.headers]\nauthorization = \"{OTLP_SECRET}\"\n"
    )
}

async fn start(otlp: &str) -> (MockUpstream, GatewayProc) {
    let mock = MockUpstream::start(upstream()).await;
    let gw = GatewayProc::start(
        otlp,
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", mock.url()),
        ],
    );
    (mock, gw)
}

async fn wait_spans(got: &Shared, n: usize) -> Vec<(String, Span)> {
    wait_until(
        &format!("{n} span(s) exported"),
        Duration::from_secs(15),
        || {
            let k = got.lock().unwrap().spans.len();
            async move { k >= n }
        },
    )
    .await;
    got.lock().unwrap().spans.clone()
}

fn span_for<'a>(spans: &'a [(String, Span)], request_id: &str) -> &'a Span {
    &spans
        .iter()
        .find(|(_, s)| str_attr(s, "gen_ai.response.id") == Some(request_id))
        .unwrap_or_else(|| panic!("no span for {request_id}"))
        .1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_one_span_per_request_continues_the_client_trace() {
    let got: Shared = Arc::default();
    let (endpoint, _recv) = http_receiver(got.clone()).await;
    let (mock, gw) = start(&otlp_toml(&endpoint, "http/protobuf", "")).await;
    let c = client();

    // 1. JSON chat with the client's trace context.
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", auth())
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .header("tracestate", "vendor=abc")
        .header("loopgate-project-id", "shop")
        .json(
            &json!({"model": "gpt-4o", "temperature": 0.25, "max_tokens": 64,
            "messages": [{"role": "user", "content": "the secret prompt text"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let spans = wait_spans(&got, 1).await;
    let (service, s) = &spans[0];
    let s = s.clone();
    assert_eq!(service, "lg-test");
    assert_eq!(str_attr(&s, "gen_ai.response.id"), Some(id.as_str()));
    assert_eq!(
        hex(&s.trace_id),
        CLIENT_TRACE,
        "the client's trace continues"
    );
    assert_eq!(
        hex(&s.parent_span_id),
        CLIENT_SPAN,
        "the client's span is the parent"
    );
    assert_eq!(s.trace_state, "vendor=abc");
    assert_eq!(s.name, "chat gpt-4o");
    assert_eq!(str_attr(&s, "gen_ai.operation.name"), Some("chat"));
    assert_eq!(str_attr(&s, "gen_ai.system"), Some("openai"));
    assert_eq!(str_attr(&s, "gen_ai.request.model"), Some("gpt-4o"));
    assert_eq!(str_attr(&s, "gen_ai.response.model"), Some("gpt-4o"));
    assert_eq!(int_attr(&s, "gen_ai.usage.input_tokens"), Some(11));
    assert_eq!(int_attr(&s, "gen_ai.usage.output_tokens"), Some(3));
    assert_eq!(strings_attr(&s, "gen_ai.response.finish_reasons"), ["stop"]);
    assert_eq!(f64_attr(&s, "gen_ai.request.temperature"), Some(0.25));
    assert_eq!(int_attr(&s, "gen_ai.request.max_tokens"), Some(64));
    assert_eq!(int_attr(&s, "http.response.status_code"), Some(200));
    assert_eq!(str_attr(&s, "loopgate.project"), Some("shop"));
    assert!(attr(&s, "error.type").is_none());
    let cost = f64_attr(&s, "loopgate.cost_usd").unwrap();
    let want = 11.0 * 2.5e-6 + 3.0 * 1e-5;
    assert!((cost - want).abs() < 1e-12, "cost {cost} vs {want}");
    assert!(s.end_time_unix_nano >= s.start_time_unix_nano && s.start_time_unix_nano > 0);
    // Nothing of the prompt or the answer, nor a key.
    let dump = format!("{s:?}");
    for secret in ["secret prompt", "Hello!", "sk-test", MASTER_KEY] {
        assert!(!dump.contains(secret), "span leaks {secret}");
    }

    // The upstream call carries this trace with the gateway's span as parent.
    let up = mock.requests();
    let tp = up[0].header("traceparent").expect("traceparent upstream");
    assert_eq!(
        tp,
        format!("00-{CLIENT_TRACE}-{}-01", hex(&s.span_id)),
        "upstream traceparent"
    );
    assert_eq!(up[0].header("tracestate"), Some("vendor=abc"));

    // The collector got the configured header; the log never shows its value.
    assert_eq!(
        got.lock().unwrap().headers[0]
            .get("authorization")
            .map(String::as_str),
        Some(OTLP_SECRET)
    );
    assert!(!gw.log_text().contains("otlp-secret-value"));

    // The trace record has the trace id.
    wait_until("the trace is stored", Duration::from_secs(10), || {
        let n = trace_rows(
            &gw.db_path(),
            &format!("WHERE request_id = '{id}' AND properties LIKE '%{CLIENT_TRACE}%'"),
        );
        async move { n == 1 }
    })
    .await;

    // 2. A stream without traceparent: a new trace, no parent.
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(
            &json!({"model": "gpt-4o", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let first: serde_json::Value = serde_json::from_str(&sse_events(&text)[0]).unwrap();
    let sid = first["id"].as_str().unwrap().to_string();
    let spans = wait_spans(&got, 2).await;
    let st = span_for(&spans, &sid);
    assert_ne!(hex(&st.trace_id), CLIENT_TRACE);
    assert_eq!(st.trace_id.len(), 16);
    assert!(st.parent_span_id.is_empty(), "a new trace has no parent");
    assert!(matches!(
        attr(st, "loopgate.stream"),
        Some(AV::BoolValue(true))
    ));
    assert_eq!(strings_attr(st, "gen_ai.response.finish_reasons"), ["stop"]);
    assert_eq!(int_attr(st, "gen_ai.usage.output_tokens"), Some(3));
    assert!(f64_attr(st, "loopgate.cost_usd").unwrap() > 0.0);
    let tp = mock.requests()[1]
        .header("traceparent")
        .unwrap()
        .to_string();
    assert_eq!(
        tp,
        format!("00-{}-{}-01", hex(&st.trace_id), hex(&st.span_id))
    );

    // 3. An upstream error: error.type and the status code.
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", auth())
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&json!({"model": "openai/broken", "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let spans = wait_spans(&got, 3).await;
    let se = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| str_attr(s, "gen_ai.request.model") == Some("openai/broken"))
        .expect("span of the failed request");
    assert_eq!(str_attr(se, "error.type"), Some("http_error"));
    assert_eq!(int_attr(se, "http.response.status_code"), Some(400));
    assert_eq!(
        se.status.as_ref().map(|s| s.code),
        Some(opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32)
    );
    assert_eq!(hex(&se.trace_id), CLIENT_TRACE);

    let m = gw.metrics().await;
    assert!(m.contains("loopgate_otlp_spans_exported_total 3"), "{m}");
    assert!(m.contains("loopgate_otlp_spans_dropped_total{reason=\"queue_full\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_receiver_gets_the_span_with_its_metadata() {
    let got: Shared = Arc::default();
    let (endpoint, _recv) = grpc_receiver(got.clone()).await;
    let (mock, gw) = start(&otlp_toml(&endpoint, "grpc", "")).await;
    let r = client()
        .post(gw.url("/v1/embeddings"))
        .header("authorization", auth())
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&json!({"model": "text-embedding-3-small", "input": "hello"}))
        .send()
        .await
        .unwrap();
    // The mock answers chat-shaped JSON to embeddings: whatever the status, one span.
    let status = r.status().as_u16();
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", auth())
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&chat_body("gpt-4o-mini"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = wait_spans(&got, 2).await;
    let emb = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| str_attr(s, "gen_ai.operation.name") == Some("embeddings"))
        .expect("embeddings span");
    assert_eq!(
        int_attr(emb, "http.response.status_code"),
        Some(status as i64)
    );
    let chat = spans
        .iter()
        .map(|(_, s)| s)
        .find(|s| str_attr(s, "gen_ai.operation.name") == Some("chat"))
        .expect("chat span");
    assert_eq!(hex(&chat.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&chat.parent_span_id), CLIENT_SPAN);
    assert_eq!(str_attr(chat, "gen_ai.request.model"), Some("gpt-4o-mini"));
    assert!(f64_attr(chat, "loopgate.cost_usd").unwrap() > 0.0);
    let up = mock.requests();
    let last = up.last().unwrap();
    assert_eq!(
        last.header("traceparent"),
        Some(format!("00-{CLIENT_TRACE}-{}-01", hex(&chat.span_id)).as_str())
    );
    assert_eq!(
        got.lock().unwrap().headers[0]
            .get("authorization")
            .map(String::as_str),
        Some(OTLP_SECRET)
    );
    assert_eq!(spans[0].0, "lg-test");
}

fn counter(metrics: &str, line_prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_requests_still_succeed_and_losses_are_counted() {
    // Nothing listens there: every export fails.
    let down = format!("http://127.0.0.1:{}/v1/traces", free_port());
    let (_mock, gw) = start(&otlp_toml(&down, "http/protobuf", "batch_size = 1")).await;
    for _ in 0..3 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .header("authorization", auth())
            .json(&chat_body("gpt-4o"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    wait_until(
        "export failures are counted",
        Duration::from_secs(15),
        || async {
            let m = gw.metrics().await;
            counter(&m, "loopgate_otlp_export_failures_total") >= 1.0
                && counter(
                    &m,
                    "loopgate_otlp_spans_dropped_total{reason=\"export_failed\"}",
                ) >= 1.0
        },
    )
    .await;
    // Logged, without the header's value.
    wait_until("the failure is logged", Duration::from_secs(5), || {
        let t = gw.log_text();
        async move { t.contains("otlp: export failed") }
    })
    .await;
    assert!(!gw.log_text().contains("otlp-secret-value"));

    // A collector that accepts and never answers: the one export in flight holds the
    // queue (capacity 1), so the next spans are dropped at once and counted.
    let stall = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let stall_url = format!("http://{}/v1/traces", stall.local_addr().unwrap());
    let _hold = tokio::spawn(async move {
        let mut socks = Vec::new();
        while let Ok((s, _)) = stall.accept().await {
            socks.push(s);
        }
    });
    let (_mock2, gw2) = start(&otlp_toml(
        &stall_url,
        "http/protobuf",
        "batch_size = 1\nqueue_capacity = 1",
    ))
    .await;
    for _ in 0..6 {
        let r = client()
            .post(gw2.url("/v1/chat/completions"))
            .header("authorization", auth())
            .json(&chat_body("gpt-4o"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "export never slows a request");
    }
    wait_until(
        "a full queue drops spans",
        Duration::from_secs(10),
        || async {
            let m = gw2.metrics().await;
            counter(
                &m,
                "loopgate_otlp_spans_dropped_total{reason=\"queue_full\"}",
            ) >= 1.0
        },
    )
    .await;
}

#[test]
fn a_bad_otlp_setting_stops_the_start_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    for (toml, field) in [
        (
            "[otlp]\nenabled = true\nprotocol = \"http/json\"\n",
            "protocol",
        ),
        (
            "[otlp]\nenabled = true\nsample_ratio = 2.0\n",
            "otlp.sample_ratio",
        ),
        (
            "[otlp]\nenabled = true\nendpoint = \"https://collector:4318\"\n",
            "otlp.endpoint",
        ),
    ] {
        std::fs::write(&cfg, toml).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_loopgate"))
            .args(["check", "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{toml} was accepted");
        assert!(text.contains(field), "{toml}: {text}");
    }
}
