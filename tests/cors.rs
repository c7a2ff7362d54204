//! `[server.cors]` seen by a browser: raw HTTP/1.1 preflights and requests against the
//! real binary.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn cors_headers(&self) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.starts_with("access-control-"))
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

/// One request on its own connection (`Connection: close`), read to EOF.
fn raw(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

const APP: &str = "https://app.example.com";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_and_responses_for_allowed_origins_only() {
    let mock = MockUpstream::start(openai_like()).await;
    let g = GatewayProc::start(
        &format!(
            "[server.cors]\nallowed_origins = [\"{APP}\", \"http://localhost:5173\"]\nmax_age = 900\nallow_credentials = true\n"
        ),
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", format!("{}/v1", mock.url())),
        ],
    );
    let auth = auth();
    let port = g.port;
    tokio::task::spawn_blocking(move || {
        // Preflight from an allowed origin: answered at the edge, no key needed.
        let r = raw(
            port,
            "OPTIONS",
            "/v1/chat/completions",
            &[
                ("Origin", APP),
                ("Access-Control-Request-Method", "POST"),
                (
                    "Access-Control-Request-Headers",
                    "authorization, content-type, x-stainless-os",
                ),
            ],
            "",
        );
        assert_eq!(r.status, 204, "{}", r.body);
        assert_eq!(r.header("access-control-allow-origin"), Some(APP));
        assert_eq!(
            r.header("access-control-allow-methods"),
            Some("GET, POST, OPTIONS")
        );
        assert_eq!(
            r.header("access-control-allow-headers"),
            Some("authorization, content-type, x-stainless-os")
        );
        assert_eq!(r.header("access-control-max-age"), Some("900"));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert!(r.header("vary").is_some_and(|v| v.contains("Origin")));
        assert!(r.header("content-length").is_none() && r.body.is_empty());

        // Preflight from another origin: 403, and not one CORS header.
        let r = raw(
            port,
            "OPTIONS",
            "/v1/chat/completions",
            &[
                ("Origin", "https://evil.example"),
                ("Access-Control-Request-Method", "POST"),
            ],
            "",
        );
        assert_eq!(r.status, 403);
        assert!(r.cors_headers().is_empty(), "{:?}", r.headers);
        assert!(r.body.contains("\"error\""), "{}", r.body);

        let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}]}"#;
        // A completion for the allowed origin.
        let r = raw(
            port,
            "POST",
            "/v1/chat/completions",
            &[("Origin", APP), ("Authorization", &auth)],
            body,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("access-control-allow-origin"), Some(APP));
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        let expose = r
            .header("access-control-expose-headers")
            .unwrap_or_default();
        assert!(
            expose.contains("loopgate-request-id") && expose.contains("x-request-id"),
            "{expose}"
        );
        assert!(r.header("vary").is_some_and(|v| v.contains("Origin")));

        // Errors carry it too (401 without a key), so the browser can read the message.
        let r = raw(
            port,
            "POST",
            "/v1/chat/completions",
            &[("Origin", "http://localhost:5173")],
            body,
        );
        assert_eq!(r.status, 401, "{}", r.body);
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some("http://localhost:5173")
        );
        assert!(r.body.contains("\"error\""));

        // Streams.
        let stream_body =
            r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        let r = raw(
            port,
            "POST",
            "/v1/chat/completions",
            &[("Origin", APP), ("Authorization", &auth)],
            stream_body,
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        assert_eq!(r.header("access-control-allow-origin"), Some(APP));
        assert!(r.body.contains("[DONE]"));

        // Another origin, and no origin at all: served, without CORS headers.
        for origin in [Some("https://evil.example"), None] {
            let mut h = vec![("Authorization", auth.as_str())];
            if let Some(o) = origin {
                h.push(("Origin", o));
            }
            let r = raw(port, "POST", "/v1/chat/completions", &h, body);
            assert_eq!(r.status, 200);
            assert!(r.cors_headers().is_empty(), "{origin:?}: {:?}", r.headers);
        }

        // A plain OPTIONS (not a preflight) is not answered by CORS.
        let r = raw(
            port,
            "OPTIONS",
            "/v1/models",
            &[("Authorization", &auth)],
            "",
        );
        assert_eq!(r.status, 405, "{}", r.body);
    })
    .await
    .unwrap();
}

#[test]
fn check_rejects_unusable_cors_settings() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, needle) in [
        (
            "allowed_origins = \"*\"\nallow_credentials = true",
            "allow_credentials",
        ),
        (
            "allowed_origins = [\"https://app.example.com/\"]",
            "no path",
        ),
        ("allowed_origins = []", "allowed_origins"),
    ] {
        let p = dir.path().join("g.toml");
        std::fs::write(&p, format!("[server.cors]\n{toml}\n")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_loopgate"))
            .args(["check", "-c"])
            .arg(&p)
            .env("LOOPGATE_STATE_DIR", dir.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{toml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("server.cors") && err.contains(needle), "{err}");
    }
}
