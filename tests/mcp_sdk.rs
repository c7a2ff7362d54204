//! The MCP server at `/mcp`: the official MCP Python SDK (venv of `tests/sdk/setup.sh`)
//! connects over Streamable HTTP, lists and calls every tool, sees the token's route filter
//! and the confirm step; plus raw JSON-RPC for the bad-input cases (401 / 403 / -32602).
//! Persisted tokens: a token survives a restart (SQLite), works on a second gateway sharing
//! PostgreSQL, and its revocation or expiry reaches every instance.

mod common;
#[path = "support/pg.rs"]
mod pg;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

const ROUTES: &str = r#"
[routes.ra]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "shadow"
[routes.shared]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "shadow"
[routing]
refresh_ms = 60
# A firewall applies to every request, so each decision carries its verdict.
[firewall]
default_policy = "std"
[firewall.policies.std]
packs = ["secrets"]
"#;

async fn start() -> (MockUpstream, GatewayProc) {
    let mock = MockUpstream::start(model_fleet()).await;
    let gw = GatewayProc::start(
        ROUTES,
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", mock.url()),
        ],
    );
    (mock, gw)
}

async fn admin(gw: &GatewayProc, method: &str, path: &str, body: Value) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let r = client()
        .request(m, gw.url(path))
        .header("authorization", format!("Bearer {MASTER_KEY}"))
        .json(&body)
        .send()
        .await
        .expect("send");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn mint(gw: &GatewayProc, body: Value) -> String {
    let (s, v) = admin(gw, "POST", "/v1/mcp/tokens", body).await;
    assert_eq!(s, 201, "{v}");
    v["token"].as_str().expect("token").to_string()
}

/// One JSON-RPC POST to `/mcp`.
async fn rpc(gw: &GatewayProc, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = client()
        .post(gw.url("/mcp"))
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(t) = token {
        r = r.header("authorization", format!("Bearer {t}"));
    }
    let r = r.send().await.expect("send");
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

fn call(name: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": args}})
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}})
}

/// Poll until `token` answers 401 "expired" (it was minted with `ttl_secs: 1`).
async fn wait_expired(gw: &GatewayProc, token: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (s, v) = rpc(gw, Some(token), initialize()).await;
        if s == 401 {
            assert!(
                v["error"]["message"].as_str().unwrap().contains("expired"),
                "{v}"
            );
            return;
        }
        assert_eq!(s, 200, "{v}");
        assert!(Instant::now() < deadline, "the token never expired");
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_python_sdk_lists_and_calls_every_tool() {
    let python = Path::new(ROOT).join("target/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `bash tests/sdk/setup.sh` (official MCP Python SDK)",
        python.display()
    );
    let (mock, gw) = start().await;
    // Traffic on "ra": one routed request in session s1, rated NPS 10.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {MASTER_KEY}"))
        .header("loopgate-session-id", "s1")
        .json(&json!({"model": "auto:ra", "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin(&gw, "GET", &format!("/v1/decisions/{id}"), json!({}))
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "decision {id} never stored");
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // A second request in s1, tagged feature=search (what a tag-filtered token sees).
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {MASTER_KEY}"))
        .header("loopgate-session-id", "s1")
        .header("loopgate-property-feature", "search")
        .json(&json!({"model": "auto:ra", "messages": [{"role": "user", "content": "find"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let tagged_id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin(&gw, "GET", &format!("/v1/logs/{tagged_id}"), json!({}))
        .await
        .0
        != 200
    {
        assert!(Instant::now() < deadline, "trace {tagged_id} never stored");
        // The pause between polls of this bounded loop.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (s, v) = admin(
        &gw,
        "POST",
        "/v1/feedback",
        json!({"session_id": "s1", "nps": 10}),
    )
    .await;
    assert!(s < 300, "{s} {v}");
    // Cost per resolved session through the analytics API: s1 (NPS 10) is resolved.
    let (s, v) = admin(
        &gw,
        "GET",
        "/v1/analytics?group_by=model&resolved_nps=9",
        json!({}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let rs = &v["resolved_sessions"];
    assert_eq!(rs["rated_sessions"], 1, "{v}");
    assert_eq!(rs["resolved_sessions"], 1, "{v}");
    assert!(rs["cost_per_resolved_session"].as_f64().is_some(), "{v}");
    let (_, v) = admin(&gw, "GET", "/v1/analytics?resolved_nps=10.5", json!({})).await;
    assert_eq!(v["error"]["param"], "resolved_nps", "{v}");

    let read = mint(
        &gw,
        json!({"scope": "read", "routes": ["ra"], "ttl_secs": 600}),
    )
    .await;
    let mutate = mint(
        &gw,
        json!({"scope": "mutate", "routes": ["ra"], "ttl_secs": 600}),
    )
    .await;
    let tagged = mint(
        &gw,
        json!({"scope": "read", "tags": ["feature:search"], "ttl_secs": 600}),
    )
    .await;
    let expired = mint(&gw, json!({"scope": "read", "ttl_secs": 1})).await;
    wait_expired(&gw, &expired).await;
    let out = Command::new(&python)
        .arg(Path::new(ROOT).join("tests/sdk/test_mcp_python.py"))
        .args([&gw.url(""), &read, &mutate, &id, &tagged, &expired])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "python MCP client failed:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&gw.log).unwrap_or_default()
    );
    for check in [
        "read_tools",
        "list_models",
        "get_analytics",
        "get_analytics_feature",
        "get_decision",
        "list_decisions",
        "get_verification",
        "explain_routing",
        "filter",
        "read_cannot_mutate",
        "bad_argument",
        "pin_confirmed",
        "confirmation_single_use",
        "constraints_confirmed",
        "experiment_confirmed",
        "mutate_filter",
        "tag_filter",
        "expired_401",
        "protocol_2026_07_28",
        "protocol_2025_11_25",
        "done",
    ] {
        assert!(
            stdout.contains(&format!("\"check\": \"{check}\"")),
            "missing {check}:\n{stdout}"
        );
    }
    // explain_routing is a dry run: no provider call, no log row.
    let logged = |v: &Value| v["data"].as_array().map(Vec::len).unwrap_or(0);
    let (_, logs_before) = admin(&gw, "GET", "/v1/logs?limit=100", json!({})).await;
    let calls_before = mock.count();
    let (s, v) = rpc(
        &gw,
        Some(&read),
        call(
            "explain_routing",
            json!({"route": "ra", "messages": [{"role": "user", "content": "dry"}]}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert!(
        v["result"]["structuredContent"]["chosen"].is_string(),
        "{v}"
    );
    // Negative check: a fixed wait for a log row or provider call that must never come.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, logs_after) = admin(&gw, "GET", "/v1/logs?limit=100", json!({})).await;
    assert_eq!(
        mock.count(),
        calls_before,
        "explain_routing called a provider"
    );
    assert_eq!(
        logged(&logs_after),
        logged(&logs_before),
        "explain_routing wrote a log row: {logs_after}"
    );
    assert!(logged(&logs_before) >= 2, "{logs_before}");

    // The project filter: a token of project "beta" sees none of this (project-less) traffic.
    let beta = mint(&gw, json!({"project": "beta", "ttl_secs": 600})).await;
    let (s, v) = rpc(
        &gw,
        Some(&beta),
        call("get_analytics", json!({"window": "1h"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["result"]["structuredContent"]["totals"]["requests"], 0,
        "{v}"
    );
    let (_, v) = rpc(
        &gw,
        Some(&beta),
        call("get_decision", json!({"request_id": id})),
    )
    .await;
    assert_eq!(v["result"]["isError"], true, "{v}");
    let (_, v) = rpc(
        &gw,
        Some(&beta),
        call("list_decisions", json!({"window": "1h"})),
    )
    .await;
    assert_eq!(v["result"]["structuredContent"]["count"], 0, "{v}");

    // Every tool call is in the audit log, under the token's id.
    let (s, v) = admin(&gw, "GET", "/v1/audit?limit=500", json!({})).await;
    assert_eq!(s, 200, "{v}");
    let text = v.to_string();
    let calls = text.matches("mcp.tool_call").count();
    assert!(calls >= 17, "only {calls} audited tool calls: {text}");
    assert!(text.contains("mcp:mcptok_"), "{text}");
    // The confirm step: each preview changed nothing, each confirmation applied once (the
    // mutate token previewed and confirmed one pin and one constraints change).
    let actions: Vec<&str> = v["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    let n = |a: &str| actions.iter().filter(|x| **x == a).count();
    assert_eq!(n("route.pin"), 1, "{actions:?}");
    assert!(
        actions.iter().filter(|x| x.contains("constraints")).count() == 1,
        "{actions:?}"
    );
    // The read token's refused pin_route is audited too, with the refusal.
    assert!(text.contains("refused: tool 'pin_route'"), "{text}");
    assert!(
        !text.contains(&read) && !text.contains(&mutate),
        "token leaked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_bad_input_is_a_json_rpc_error_with_the_right_status() {
    let (_mock, gw) = start().await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}});

    // No token, unknown token: 401 with a JSON-RPC error body.
    for tok in [None, Some("lgm_nope")] {
        let (s, v) = rpc(&gw, tok, init.clone()).await;
        assert_eq!(s, 401, "{v}");
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], 1);
        assert_eq!(v["error"]["code"], -32001, "{v}");
    }
    // A gateway key is not an MCP token.
    let (s, _) = rpc(&gw, Some(MASTER_KEY), init.clone()).await;
    assert_eq!(s, 401);

    let read = mint(&gw, json!({"scope": "read", "routes": ["ra"]})).await;
    let (s, v) = rpc(&gw, Some(&read), init.clone()).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["protocolVersion"], "2025-06-18");
    assert!(v["result"]["capabilities"]["tools"].is_object());

    // Wrong scope: a read token calling a mutating tool is a 403.
    let (s, v) = rpc(&gw, Some(&read), call("pin_route", json!({"route": "ra"}))).await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["code"], -32003);
    assert!(v["error"]["message"].as_str().unwrap().contains("mutate"));

    // Bad arguments: -32602 naming the argument.
    for (tool, args, arg) in [
        ("get_analytics", json!({"window": "forever"}), "window"),
        ("get_analytics", json!({"group_by": "colour"}), "group_by"),
        ("get_analytics", json!({"resolved_nps": 11}), "resolved_nps"),
        ("get_analytics", json!({"nope": 1}), "nope"),
        ("get_decision", json!({}), "request_id"),
        ("get_decision", json!({"request_id": 5}), "request_id"),
        ("get_verification", json!({}), "route"),
        ("list_decisions", json!({"limit": 0}), "limit"),
        (
            "list_decisions",
            json!({"min_latency_ms": "fast"}),
            "min_latency_ms",
        ),
        (
            "explain_routing",
            json!({"route": "ra", "messages": []}),
            "messages",
        ),
        ("no_such_tool", json!({}), "name"),
    ] {
        let (s, v) = rpc(&gw, Some(&read), call(tool, args.clone())).await;
        assert_eq!(s, 200, "{tool} {args}: {v}");
        assert_eq!(v["error"]["code"], -32602, "{tool} {args}: {v}");
        assert_eq!(v["error"]["data"]["argument"], arg, "{tool} {args}: {v}");
        assert!(v["error"]["message"].as_str().unwrap().contains(arg), "{v}");
    }
    let mutate = mint(&gw, json!({"scope": "mutate"})).await;
    for (args, arg) in [
        (json!({"route": "ra"}), "constraints"),
        (
            json!({"confirmation_id": "confirm_nope"}),
            "confirmation_id",
        ),
        (json!({"constraints": {"max_regression": 0.1}}), "route"),
    ] {
        let (s, v) = rpc(&gw, Some(&mutate), call("update_constraints", args.clone())).await;
        assert_eq!(s, 200, "{args}: {v}");
        assert_eq!(v["error"]["data"]["argument"], arg, "{args}: {v}");
    }
    // A change the admin endpoint would refuse is refused at the preview (no confirmation_id),
    // naming the argument.
    for (tool, args, arg) in [
        (
            "create_experiment",
            json!({"route": "ra", "candidate": "gpt-5-nope"}),
            "candidate",
        ),
        (
            "create_experiment",
            json!({"route": "ra", "candidate": "gpt-4o-mini", "alpha": 2}),
            "alpha",
        ),
        (
            "create_experiment",
            json!({"route": "ra", "candidate": "gpt-4o-mini", "ramp": "fast"}),
            "ramp",
        ),
        (
            "create_experiment",
            json!({"route": "ra", "candidate": "gpt-4o-mini", "ramp": [0.5, 0.2]}),
            "ramp",
        ),
        (
            "create_experiment",
            json!({"route": "ra", "candidate": "gpt-4o-mini", "colour": "red"}),
            "colour",
        ),
        ("create_experiment", json!({"route": "ra"}), "candidate"),
        (
            "pin_route",
            json!({"route": "ra", "model": "gpt-5-nope"}),
            "model",
        ),
        (
            "update_constraints",
            json!({"route": "ra", "constraints": {"max_regression": 5}}),
            "constraints",
        ),
        (
            "update_constraints",
            json!({"route": "ra", "constraints": {"min_confidence": "high"}}),
            "constraints",
        ),
    ] {
        let (s, v) = rpc(&gw, Some(&mutate), call(tool, args.clone())).await;
        assert_eq!(s, 200, "{tool} {args}: {v}");
        assert_eq!(v["error"]["code"], -32602, "{tool} {args}: {v}");
        assert_eq!(v["error"]["data"]["argument"], arg, "{tool} {args}: {v}");
    }
    // Malformed JSON-RPC.
    let (s, v) = rpc(&gw, Some(&read), json!([1, 2])).await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32600)));
    let (s, v) = rpc(
        &gw,
        Some(&read),
        json!({"jsonrpc": "2.0", "id": 2, "method": "resources/list"}),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_i64()), (200, Some(-32601)));
    // Notifications are accepted without a body.
    let (s, _) = rpc(
        &gw,
        Some(&read),
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(s, 202);
    // GET (no server stream) is a 405.
    let r = client()
        .get(gw.url("/mcp"))
        .header("authorization", format!("Bearer {read}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);

    // Minting: bad fields are named; a read-scoped gateway key cannot mint.
    let (s, v) = admin(&gw, "POST", "/v1/mcp/tokens", json!({"scope": "root"})).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("scope")));
    let (s, v) = admin(&gw, "POST", "/v1/mcp/tokens", json!({"ttl_secs": 0})).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("ttl_secs")));

    // Expiry: a 1-second token answers 401 once it has expired.
    let short = mint(&gw, json!({"ttl_secs": 1})).await;
    wait_expired(&gw, &short).await;
    // A tag filter needs name:value, and a mutate token cannot have one.
    let (s, v) = admin(&gw, "POST", "/v1/mcp/tokens", json!({"tags": ["x"]})).await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("tags")),
        "{v}"
    );
    let (s, v) = admin(
        &gw,
        "POST",
        "/v1/mcp/tokens",
        json!({"scope": "mutate", "tags": ["feature:x"]}),
    )
    .await;
    assert_eq!(
        (s, v["error"]["param"].as_str()),
        (400, Some("tags")),
        "{v}"
    );
    // An MCP-Protocol-Version the server does not speak: 400 naming the supported ones.
    let r = client()
        .post(gw.url("/mcp"))
        .header("authorization", format!("Bearer {read}"))
        .header("mcp-protocol-version", "1999-01-01")
        .json(&json!({"jsonrpc": "2.0", "id": 3, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32022, "{v}");
    assert!(v["error"]["data"]["supported"].as_array().is_some(), "{v}");
    // A foreign browser Origin is refused (DNS-rebinding guard); the gateway's own is not.
    for (origin, status) in [
        ("http://evil.example", 403),
        (gw.url("").trim_end_matches('/'), 200),
    ] {
        let r = client()
            .post(gw.url("/mcp"))
            .header("authorization", format!("Bearer {read}"))
            .header("origin", origin)
            .json(&json!({"jsonrpc": "2.0", "id": 5, "method": "ping"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{origin}");
    }
    // The 2026-07-28 revision: self-contained requests (an envelope in params._meta and
    // routing headers that agree with the body), server/discover, protocol errors with
    // their own HTTP status.
    let modern = |method: &str, name: Option<&str>, params: Value| {
        let mut r = client()
            .post(gw.url("/mcp"))
            .header("authorization", format!("Bearer {read}"))
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", method);
        if let Some(n) = name {
            r = r.header("mcp-name", n);
        }
        r.json(&json!({"jsonrpc": "2.0", "id": 9, "method": method, "params": params}))
            .send()
    };
    let envelope = |extra: Value| {
        let mut p = json!({"_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }});
        if let (Some(p), Value::Object(e)) = (p.as_object_mut(), extra) {
            p.extend(e);
        }
        p
    };
    let answer = |r: reqwest::Response| async move {
        let s = r.status().as_u16();
        (s, r.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (s, v) = answer(
        modern("server/discover", None, envelope(json!({})))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["supportedVersions"][0], "2026-07-28", "{v}");
    assert_eq!(v["result"]["resultType"], "complete", "{v}");
    assert_eq!(v["result"]["cacheScope"], "private", "{v}");
    assert_eq!(
        v["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "loopgate",
        "{v}"
    );
    let (s, v) = answer(
        modern("tools/list", None, envelope(json!({})))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["result"]["tools"].as_array().map(Vec::len),
        Some(6),
        "{v}"
    );
    // The tool name may come base64-wrapped in Mcp-Name.
    let (s, v) = answer(
        modern(
            "tools/call",
            Some("=?base64?bGlzdF9tb2RlbHM=?="),
            envelope(json!({"name": "list_models", "arguments": {}})),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["result"]["isError"], false, "{v}");
    for (method, name, params, code, status) in [
        // No envelope.
        ("tools/list", None, json!({}), -32602, 400),
        // The envelope lacks the client's capabilities.
        (
            "tools/list",
            None,
            json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}),
            -32602,
            400,
        ),
        // The envelope's revision disagrees with the header.
        (
            "tools/list",
            None,
            json!({"_meta": {"io.modelcontextprotocol/protocolVersion": "2025-11-25",
                "io.modelcontextprotocol/clientCapabilities": {}}}),
            -32020,
            400,
        ),
        // Mcp-Name disagrees with the tool called.
        (
            "tools/call",
            Some("get_analytics"),
            envelope(json!({"name": "list_models", "arguments": {}})),
            -32020,
            400,
        ),
        // ping and initialize are not part of 2026-07-28.
        ("ping", None, envelope(json!({})), -32601, 404),
        ("initialize", None, envelope(json!({})), -32601, 404),
        // A bad tool argument: invalid params naming it, with 400.
        (
            "tools/call",
            Some("get_analytics"),
            envelope(json!({"name": "get_analytics", "arguments": {"window": "forever"}})),
            -32602,
            400,
        ),
    ] {
        let (s, v) = answer(modern(method, name, params.clone()).await.unwrap()).await;
        assert_eq!(
            (s, v["error"]["code"].as_i64()),
            (status, Some(code)),
            "{method} {params}: {v}"
        );
    }
    // Mcp-Method disagrees with the body's method.
    let r = client()
        .post(gw.url("/mcp"))
        .header("authorization", format!("Bearer {read}"))
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .json(&json!({"jsonrpc": "2.0", "id": 10, "method": "tools/list", "params": envelope(json!({}))}))
        .send()
        .await
        .unwrap();
    let (s, v) = answer(r).await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32020)), "{v}");
    // The read token still may not mutate: 403 on this revision too.
    let (s, v) = answer(
        modern(
            "tools/call",
            Some("pin_route"),
            envelope(json!({"name": "pin_route", "arguments": {"route": "ra"}})),
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_i64()), (403, Some(-32003)), "{v}");

    // ping with a supported version.
    let r = client()
        .post(gw.url("/mcp"))
        .header("authorization", format!("Bearer {read}"))
        .header("mcp-protocol-version", "2025-06-18")
        .json(&json!({"jsonrpc": "2.0", "id": 4, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        (v["id"].clone(), v["result"].clone()),
        (json!(4), json!({}))
    );
}

fn env_of(mock: &MockUpstream) -> Vec<(&'static str, String)> {
    vec![
        ("OPENAI_API_KEY", "sk-test".into()),
        ("OPENAI_BASE_URL", mock.url()),
    ]
}

/// Kill the gateway (SIGKILL: nothing gets a chance to flush) and start it again on the same
/// config and database (port 0 in the config: fresh ports).
fn restart(gw: &mut GatewayProc, env: &[(&str, String)]) {
    let _ = gw.child.kill();
    let _ = gw.child.wait();
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    let config = gw.config.clone();
    *gw = GatewayProc::spawn(dir, config, 0, 0, env);
}

/// One token through the official MCP Python SDK: `expect` is "ok", "revoked", "expired"
/// or "unknown" (tests/sdk/test_mcp_token_python.py). Bounded in time.
fn sdk_token(gw: &GatewayProc, token: &str, expect: &str) {
    let python = Path::new(ROOT).join("target/sdk-venv/bin/python");
    assert!(
        python.exists(),
        "{} not found: run `bash tests/sdk/setup.sh` (official MCP Python SDK)",
        python.display()
    );
    let mut child = Command::new(&python)
        .arg(Path::new(ROOT).join("tests/sdk/test_mcp_token_python.py"))
        .args([&gw.url(""), token, expect])
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().ok().flatten().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        // The pause between polls of this bounded loop.
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("python output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&format!("\"token_{expect}\"")),
        "MCP SDK with a token expected {expect}:\n{stdout}\n{}\ngateway log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log_text()
    );
    print!("{stdout}");
}

/// The 401 message for `token` on `gw` (panics on any other status).
async fn refused(gw: &GatewayProc, token: &str) -> String {
    let (s, v) = rpc(gw, Some(token), initialize()).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["error"]["code"], -32001, "{v}");
    v["error"]["message"].as_str().unwrap_or("").to_string()
}

async fn listed(gw: &GatewayProc) -> Vec<Value> {
    let (s, v) = admin(gw, "GET", "/v1/mcp/tokens", json!({})).await;
    assert_eq!(s, 200, "{v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tokens_survive_a_restart_and_are_revoked_and_expire() {
    let mock = MockUpstream::start(model_fleet()).await;
    let env = env_of(&mock);
    let mut gw = GatewayProc::start(ROUTES, &env);
    let keep = mint(&gw, json!({"scope": "read", "reason": "restart test"})).await;
    let short = mint(&gw, json!({"scope": "read", "ttl_secs": 2})).await;
    let (s, v) = admin(&gw, "GET", "/v1/mcp/tokens", json!({})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["persistent"], true, "{v}");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
    // Never a secret or a hash in the listing.
    let text = v.to_string();
    assert!(!text.contains(&keep) && !text.contains("lgm_") && !text.contains("sha256"));
    // Only the hash is in the database.
    let db = rusqlite::Connection::open(gw.db_path()).unwrap();
    let hashes: Vec<String> = db
        .prepare("SELECT hash FROM mcp_tokens")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    drop(db);
    assert_eq!(hashes.len(), 2);
    assert!(hashes
        .iter()
        .all(|h| h.starts_with("sha256:") && !h.contains(&keep[4..])));

    restart(&mut gw, &env);
    // The token minted before the restart still works, through the official SDK.
    sdk_token(&gw, &keep, "ok");
    assert_eq!(listed(&gw).await.len(), 2);
    // The short-lived one expires (refused, through the SDK too).
    wait_expired(&gw, &short).await;
    sdk_token(&gw, &short, "expired");

    // Revocation takes effect at once on this instance.
    let id = listed(&gw)
        .await
        .iter()
        .find(|t| t["expires_at_ms"].as_i64() > Some(chrono_now_ms() + 60_000))
        .and_then(|t| t["id"].as_str().map(str::to_string))
        .expect("the long-lived token");
    let (s, v) = admin(
        &gw,
        "DELETE",
        &format!("/v1/mcp/tokens/{id}"),
        json!({"reason": "done"}),
    )
    .await;
    assert_eq!((s, v["revoked"].clone()), (200, json!(true)), "{v}");
    assert!(refused(&gw, &keep).await.contains("revoked"));
    sdk_token(&gw, &keep, "revoked");
    let (s, v) = admin(&gw, "DELETE", &format!("/v1/mcp/tokens/{id}"), json!({})).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["code"], "mcp_token_not_found", "{v}");
    let now = listed(&gw).await;
    let row = now.iter().find(|t| t["id"] == id.as_str()).expect("listed");
    assert!(row["revoked_at_ms"].as_i64().is_some(), "{row}");
    // Still revoked after another restart; the revocation is audited.
    restart(&mut gw, &env);
    assert!(refused(&gw, &keep).await.contains("revoked"));
    let (_, audit) = admin(&gw, "GET", "/v1/audit?limit=100", json!({})).await;
    let audit = audit.to_string();
    assert!(
        audit.contains("mcp.token_revoke") && audit.contains(&id),
        "{audit}"
    );
    // A wrong method on the token routes.
    let (s, _) = admin(&gw, "PUT", "/v1/mcp/tokens", json!({})).await;
    assert_eq!(s, 405);
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tokens_are_shared_and_revoked_across_two_gateways_on_postgres() {
    let srv = pg::PgServer::start();
    srv.create_db("mcp");
    let url = srv.url_for("mcp");
    let mock = MockUpstream::start(model_fleet()).await;
    let env = env_of(&mock);
    let storage = format!("backend = \"postgres\"\npostgres_url = \"{url}\"\n");
    let a = GatewayProc::start_full("", &storage, ROUTES, &env);
    let b = GatewayProc::start_full("", &storage, ROUTES, &env);
    // Minted on A, used on B (and A) through the official SDK.
    let token = mint(&a, json!({"scope": "read", "ttl_secs": 600})).await;
    sdk_token(&b, &token, "ok");
    let (s, v) = rpc(&a, Some(&token), initialize()).await;
    assert_eq!(s, 200, "{v}");
    let ids: Vec<Value> = listed(&b).await.iter().map(|t| t["id"].clone()).collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    let id = ids[0].as_str().unwrap().to_string();
    // Revoked on B: A (which just trusted it) refuses it within about a second.
    let (s, v) = admin(&b, "DELETE", &format!("/v1/mcp/tokens/{id}"), json!({})).await;
    assert_eq!(s, 200, "{v}");
    let t0 = Instant::now();
    // When the last accepted request was sent: a loaded machine may answer slowly, but a
    // request sent more than 1.5 s after the revocation must be refused.
    let mut last_accepted = Duration::ZERO;
    loop {
        let sent = t0.elapsed();
        let (s, v) = rpc(&a, Some(&token), initialize()).await;
        if s == 401 {
            assert!(
                v["error"]["message"].as_str().unwrap().contains("revoked"),
                "{v}"
            );
            break;
        }
        assert_eq!(s, 200, "{v}");
        last_accepted = sent;
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "A still accepts the revoked token"
        );
        // The pause between polls.
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        last_accepted < Duration::from_millis(1500),
        "A accepted the revoked token in a request sent {last_accepted:?} after the revocation"
    );
    sdk_token(&a, &token, "revoked");
    assert!(refused(&b, &token).await.contains("revoked"));
    // An expired token minted on B is refused on A.
    let short = mint(&b, json!({"scope": "read", "ttl_secs": 1})).await;
    wait_expired(&a, &short).await;
    // Unknown tokens are unknown everywhere.
    assert!(refused(&a, "lgm_nope").await.contains("unknown"));
}
