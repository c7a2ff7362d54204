//! Tenancy: every admin/API endpoint × {same project, other project, unlocked admin, wrong
//! scope}, against the real gateway, with the expected status and body. Another project's id
//! must answer exactly like an unknown id (same status, same body). A new endpoint in
//! `loopgate::admin::endpoints::ENDPOINTS` without a row here fails `every_endpoint_has_a_row`.
//!
//! Plus isolated learning: two projects on one `learning = "project"` route train separate
//! posteriors, and each decision trace names the pool that decided.

mod common;

use std::time::Duration;

use common::*;
use loopgate::admin::endpoints::{matches, ENDPOINTS};
use loopgate::auth::keys::hash_key;
use serde_json::{json, Value};

/// Alpha: every scope; beta: every scope (the other project); the wrong-scope keys are
/// alpha's too, so only the scope differs.
const KEYS: &[(&str, &str, &str, &str)] = &[
    (
        "a",
        "lg-test-alpha-all-000000000000",
        "alpha",
        r#"["inference", "read", "admin"]"#,
    ),
    (
        "b",
        "lg-test-beta-all-0000000000000",
        "beta",
        r#"["inference", "read", "admin"]"#,
    ),
    (
        "a_inf",
        "lg-test-alpha-inference-00000",
        "alpha",
        r#"["inference"]"#,
    ),
    (
        "a_read",
        "lg-test-alpha-read-0000000000",
        "alpha",
        r#"["read"]"#,
    ),
    ("a_none", "lg-test-alpha-none-0000000000", "alpha", "[]"),
];

fn secret(name: &str) -> &'static str {
    if name == "master" {
        return MASTER_KEY;
    }
    KEYS.iter()
        .find(|k| k.0 == name)
        .map(|k| k.1)
        .expect("known key")
}

fn config() -> String {
    let mut t = String::new();
    for (id, key, project, scopes) in KEYS {
        t.push_str(&format!(
            "[[auth.keys]]\nid = \"{id}\"\nhash = \"{}\"\nscopes = {scopes}\nproject = \"{project}\"\n",
            hash_key(key)
        ));
    }
    t.push_str(
        r#"
[routes.ra]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "shadow"
project = "alpha"
[routes.shared]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "shadow"
learning = "project"
[routing]
refresh_ms = 60
[limits.projects.alpha]
rpm = 1000000
[limits.projects.beta]
rpm = 1000000
[limits.teams.crew]
rpm = 1000000
"#,
    );
    t
}

/// A gateway with the two projects. `pending_secs` is `storage.pending_feedback_secs`: the
/// matrix runs with 0 (feedback on an unknown id is a 404 at once, so "another project's id
/// answers exactly like an unknown id" compares byte for byte); with a window, both are
/// accepted as pending alike (see `pending_feedback_for_another_project_is_never_credited`).
async fn start_with(pending_secs: u64) -> (MockUpstream, GatewayProc) {
    let mock = MockUpstream::start(model_fleet()).await;
    let gw = GatewayProc::start_full(
        "",
        &format!("pending_feedback_secs = {pending_secs}"),
        &config(),
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", mock.url()),
            (
                "LOOPGATE_VAULT_KEY",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
            ),
        ],
    );
    (mock, gw)
}

async fn start() -> (MockUpstream, GatewayProc) {
    start_with(0).await
}

async fn call(
    gw: &GatewayProc,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut r = client()
        .request(m, gw.url(path))
        .header("authorization", format!("Bearer {}", secret(key)));
    if let Some(b) = body {
        r = r.json(b);
    }
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// One chat request on `model` with a session; returns the response (= request, decision) id.
async fn chat(gw: &GatewayProc, key: &str, model: &str, session: &str) -> String {
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {}", secret(key)))
        .header("loopgate-session-id", session)
        .json(&json!({"model": model, "messages": [{"role": "user", "content": "hello"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    let v: Value = r.json().await.expect("json");
    v["id"].as_str().expect("id").to_string()
}

async fn stored(gw: &GatewayProc, id: &str) {
    let path = format!("/v1/decisions/{id}");
    let mut ok = false;
    for _ in 0..200 {
        if call(gw, "master", "GET", &path, None).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ok, "decision {id} never stored");
}

/// Expected answer for one caller: status, substrings the body must and must not contain.
#[derive(Clone, Debug)]
struct Expect {
    /// Any of these.
    status: Vec<u16>,
    has: Vec<String>,
    lacks: Vec<String>,
}

fn st(status: u16) -> Expect {
    Expect {
        status: vec![status],
        has: vec![],
        lacks: vec![],
    }
}

/// Either status: experiment state is derived at the aggregator's next refresh, so a second
/// operator action right after the first may still see the experiment running.
fn either(a: u16, b: u16) -> Expect {
    Expect {
        status: vec![a, b],
        has: vec![],
        lacks: vec![],
    }
}

fn has(status: u16, has: &[&str], lacks: &[&str]) -> Expect {
    Expect {
        status: vec![status],
        has: has.iter().map(|s| s.to_string()).collect(),
        lacks: lacks.iter().map(|s| s.to_string()).collect(),
    }
}

struct Row {
    method: &'static str,
    /// The `ENDPOINTS` pattern this row covers.
    pattern: &'static str,
    path: String,
    body: Option<Value>,
    /// The key lacking the scope this endpoint needs.
    wrong_key: &'static str,
    wrong: Expect,
    other: Expect,
    same: Expect,
    admin: Expect,
    /// The same request naming an unknown id instead of alpha's: the other project must get
    /// exactly its answer.
    unknown: Option<Unknown>,
}

struct Unknown {
    path: String,
    body: Option<Value>,
    /// Alpha's id and the unknown one (the answers may quote the id they were asked about).
    mine: String,
    theirs: String,
}

/// The unknown-id variant of a request: `mine` replaced by `theirs` in the JSON body's
/// values and in the path segment or query value that is exactly `mine`.
fn unknown(path: &str, body: Option<&Value>, mine: &str, theirs: &str) -> Unknown {
    let (base, query) = path.split_once('?').unwrap_or((path, ""));
    let swap = |x: &str| {
        if x == mine {
            theirs.to_string()
        } else {
            x.to_string()
        }
    };
    let mut p = base.split('/').map(swap).collect::<Vec<_>>().join("/");
    if !query.is_empty() {
        let q: Vec<String> = query
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => format!("{k}={}", swap(v)),
                None => kv.to_string(),
            })
            .collect();
        p = format!("{p}?{}", q.join("&"));
    }
    fn walk(v: &Value, mine: &str, theirs: &str) -> Value {
        match v {
            Value::String(s) if s == mine => Value::String(theirs.into()),
            Value::String(s) if s.strip_prefix("auto:") == Some(mine) => {
                Value::String(format!("auto:{theirs}"))
            }
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| (k.clone(), walk(x, mine, theirs)))
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, mine, theirs)).collect()),
            x => x.clone(),
        }
    }
    Unknown {
        path: p,
        body: body.map(|b| walk(b, mine, theirs)),
        mine: mine.into(),
        theirs: theirs.into(),
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    method: &'static str,
    pattern: &'static str,
    path: String,
    body: Option<Value>,
    wrong_key: &'static str,
    expect: [Expect; 4],
    unknown: Option<(&str, &str)>,
) -> Row {
    let [wrong, other, same, admin] = expect;
    let unknown = unknown.map(|(m, t)| self::unknown(&path, body.as_ref(), m, t));
    Row {
        method,
        pattern,
        path,
        body,
        wrong_key,
        wrong,
        other,
        same,
        admin,
        unknown,
    }
}

/// Ids of the fixture: alpha's request and session on its own route `ra`, beta's request on
/// the shared route, alpha's experiment.
struct Ids {
    a: String,
    b: String,
    exp: String,
    /// A feedback event of alpha's (a session NPS).
    fb: String,
    /// A virtual key of alpha's.
    key: String,
    /// An MCP token (its id) of alpha's.
    mcp: String,
}

fn rows(ids: &Ids) -> Vec<Row> {
    let (a, b, exp, fb, key, mcp) = (
        ids.a.as_str(),
        ids.b.as_str(),
        ids.exp.as_str(),
        ids.fb.as_str(),
        ids.key.as_str(),
        ids.mcp.as_str(),
    );
    let ra = "\"route\":\"ra\"";
    let shared = "\"route\":\"shared\"";
    let forbidden = st(403);
    let listing = || {
        [
            forbidden.clone(),
            has(200, &[], &[a]),
            has(200, &[a], &[b]),
            has(200, &[a, b], &[]),
        ]
    };
    let one = |wrong: u16, same: u16, admin: u16| [st(wrong), st(404), st(same), st(admin)];
    let chat = json!({"model": "auto:ra", "messages": [{"role": "user", "content": "hi"}]});
    vec![
        row(
            "GET",
            "/v1/logs",
            "/v1/logs".into(),
            None,
            "a_inf",
            listing(),
            None,
        ),
        row(
            "GET",
            "/v1/logs/{id}",
            format!("/v1/logs/{a}"),
            None,
            "a_inf",
            one(403, 200, 200),
            Some((a, "chatcmpl-unknown")),
        ),
        row(
            "GET",
            "/v1/sessions/{id}",
            "/v1/sessions/sa".into(),
            None,
            "a_inf",
            [st(403), st(404), has(200, &[a], &[b]), has(200, &[a], &[])],
            Some(("sa", "nosuchsession")),
        ),
        row(
            "GET",
            "/v1/analytics",
            "/v1/analytics?group_by=project".into(),
            None,
            "a_inf",
            [
                st(403),
                has(200, &[], &["alpha"]),
                has(200, &["alpha"], &["beta"]),
                has(200, &["alpha", "beta"], &[]),
            ],
            None,
        ),
        row(
            "GET",
            "/v1/export/logs",
            "/v1/export/logs".into(),
            None,
            "a_inf",
            listing(),
            None,
        ),
        row(
            "GET",
            "/v1/export/decisions",
            "/v1/export/decisions".into(),
            None,
            "a_inf",
            listing(),
            None,
        ),
        row(
            "GET",
            "/v1/decisions",
            "/v1/decisions".into(),
            None,
            "a_inf",
            listing(),
            None,
        ),
        // Verification reads the decision like GET /v1/decisions/{id}: same visibility.
        row(
            "POST",
            "/v1/decisions/{id}/verify",
            format!("/v1/decisions/{a}/verify"),
            None,
            "a_inf",
            [
                st(403),
                st(404),
                has(200, &[a, "\"valid\":true"], &[]),
                has(200, &[a, "\"valid\":true"], &[]),
            ],
            Some((a, "chatcmpl-unknown")),
        ),
        row(
            "GET",
            "/v1/decisions/{id}",
            format!("/v1/decisions/{a}"),
            None,
            "a_inf",
            [
                st(403),
                st(404),
                has(200, &[a, "\"pool\":\"shared\""], &[]),
                has(200, &[a], &[]),
            ],
            Some((a, "chatcmpl-unknown")),
        ),
        row(
            "POST",
            "/v1/routing/explain",
            "/v1/routing/explain".into(),
            Some(chat),
            "a_none",
            [
                st(403),
                st(404),
                has(200, &["routing.explanation"], &[]),
                has(200, &["routing.explanation"], &[]),
            ],
            Some(("ra", "nosuchroute")),
        ),
        row(
            "GET",
            "/v1/routing",
            "/v1/routing".into(),
            None,
            "a_inf",
            [
                st(403),
                has(200, &[], &[ra, shared]),
                has(200, &[ra], &[shared]),
                has(200, &[ra, shared], &[]),
            ],
            None,
        ),
        row(
            "GET",
            "/v1/constraints",
            "/v1/constraints".into(),
            None,
            "a_inf",
            [
                st(403),
                has(200, &[], &[ra, shared]),
                has(200, &[ra], &[shared]),
                has(200, &[ra, shared], &[]),
            ],
            None,
        ),
        row(
            "GET",
            "/v1/audit",
            "/v1/audit".into(),
            None,
            "a_inf",
            [
                st(403),
                has(200, &[], &[ra, shared]),
                has(200, &[ra], &[shared]),
                has(200, &[ra, shared], &[]),
            ],
            None,
        ),
        row(
            "GET",
            "/v1/report/shadow",
            "/v1/report/shadow?route=ra".into(),
            None,
            "a_inf",
            one(403, 200, 200),
            Some(("ra", "nosuchroute")),
        ),
        row(
            "GET",
            "/v1/experiments",
            "/v1/experiments".into(),
            None,
            "a_inf",
            [
                st(403),
                has(200, &[], &[exp]),
                has(200, &[exp], &[]),
                has(200, &[exp], &[]),
            ],
            None,
        ),
        row(
            "GET",
            "/v1/experiments/{id}",
            format!("/v1/experiments/{exp}"),
            None,
            "a_inf",
            one(403, 200, 200),
            Some((exp, "exp_nosuchexperiment")),
        ),
        // Writes: the other project must not reach alpha's data or routes.
        row(
            "POST",
            "/v1/feedback",
            "/v1/feedback".into(),
            Some(json!({"id": a, "score": 1})),
            "a_read",
            [
                st(403),
                st(404),
                has(201, &["accepted", "\"routed\":true"], &[]),
                has(409, &["duplicate_feedback"], &[]),
            ],
            Some((a, "chatcmpl-unknown")),
        ),
        row(
            "POST",
            "/v1/feedback",
            "/v1/feedback".into(),
            Some(json!({"session_id": "sa", "nps": 9})),
            "a_read",
            [
                // A session id is the client's own name: another project's NPS on the same
                // name is its own event, crediting none of alpha's requests, exactly as for a
                // session nobody used (stored at once with `pending_feedback_secs = 0`). Its
                // body has a fresh id and clock, so it is compared by content, not bytes.
                has(403, &[], &[]),
                has(
                    201,
                    &["\"credited_requests\":0", "\"routed\":false"],
                    &[a, "gpt-4o"],
                ),
                has(201, &["accepted"], &[]),
                has(409, &["duplicate_feedback"], &[]),
            ],
            None,
        ),
        row(
            "GET",
            "/v1/feedback/{id}",
            format!("/v1/feedback/{fb}"),
            None,
            "a_read",
            [
                st(403),
                st(404),
                has(200, &["accepted", fb], &[]),
                has(200, &["accepted", fb], &[]),
            ],
            Some((fb, "fb_nosuchevent0000000000000")),
        ),
        row(
            "POST",
            "/v1/feedback",
            "/v1/feedback".into(),
            Some(json!({"id": a, "score": 1, "signal": "admin"})),
            "a_inf",
            [
                st(403),
                st(404),
                has(201, &["accepted"], &[]),
                has(201, &["accepted"], &[]),
            ],
            Some((a, "chatcmpl-unknown")),
        ),
        row(
            "PUT",
            "/v1/constraints",
            "/v1/constraints".into(),
            Some(json!({"route": "ra", "constraints": {"min_samples": 41}})),
            "a_read",
            one(403, 200, 200),
            Some(("ra", "nosuchroute")),
        ),
        row(
            "PATCH",
            "/v1/constraints",
            "/v1/constraints".into(),
            Some(json!({"route": "ra", "constraints": {"min_samples": 42}})),
            "a_read",
            one(403, 200, 200),
            Some(("ra", "nosuchroute")),
        ),
        row(
            "DELETE",
            "/v1/constraints",
            "/v1/constraints?route=ra".into(),
            None,
            "a_read",
            one(403, 200, 200),
            Some(("ra", "nosuchroute")),
        ),
        row(
            "POST",
            "/v1/routes/{route}/mode",
            "/v1/routes/ra/mode".into(),
            Some(json!({"mode": "shadow"})),
            "a_read",
            one(403, 200, 200),
            Some(("ra", "nosuchroute")),
        ),
        row(
            "PUT",
            "/v1/routes/{route}/mode",
            "/v1/routes/ra/mode".into(),
            Some(json!({"mode": "shadow"})),
            "a_read",
            one(403, 200, 200),
            Some(("ra", "nosuchroute")),
        ),
        row(
            "POST",
            "/v1/routes/{route}/pin",
            "/v1/routes/ra/pin".into(),
            Some(json!({})),
            "a_read",
            one(403, 200, 200),
            Some(("ra", "nosuchroute")),
        ),
        row(
            "PUT",
            "/v1/routes/{route}/pin",
            "/v1/routes/ra/pin".into(),
            Some(json!({})),
            "a_read",
            one(403, 200, 200),
            Some(("ra", "nosuchroute")),
        ),
        // The second unpin finds nothing pinned.
        row(
            "DELETE",
            "/v1/routes/{route}/pin",
            "/v1/routes/ra/pin".into(),
            None,
            "a_read",
            [st(403), st(404), st(200), has(404, &["not_pinned"], &[])],
            Some(("ra", "nosuchroute")),
        ),
        // Alpha reaches its route (one experiment runs there already: 409), beta does not.
        row(
            "POST",
            "/v1/experiments",
            "/v1/experiments".into(),
            Some(json!({"route": "ra", "candidate": "gpt-4o-mini"})),
            "a_read",
            [
                st(403),
                st(404),
                has(409, &["experiment_running"], &[]),
                has(409, &["experiment_running"], &[]),
            ],
            Some(("ra", "nosuchroute")),
        ),
        // A scoped MCP token of alpha: beta (locked to beta) cannot mint one for alpha.
        row(
            "POST",
            "/v1/mcp/tokens",
            "/v1/mcp/tokens".into(),
            Some(json!({"project": "alpha", "scope": "read", "ttl_secs": 60})),
            "a_read",
            [
                st(403),
                st(403),
                has(201, &["\"project\":\"alpha\"", "lgm_"], &[]),
                has(201, &["\"project\":\"alpha\"", "lgm_"], &[]),
            ],
            None,
        ),
        // Alpha's tokens are listed (never a secret or hash) to alpha and the unlocked admin.
        row(
            "GET",
            "/v1/mcp/tokens",
            "/v1/mcp/tokens".into(),
            None,
            "a_read",
            [
                st(403),
                has(200, &[], &[mcp]),
                has(200, &[mcp], &["lgm_", "sha256:"]),
                has(200, &[mcp], &["lgm_", "sha256:"]),
            ],
            None,
        ),
        // Beta cannot revoke alpha's token (answered as an unknown id); alpha can, once.
        row(
            "DELETE",
            "/v1/mcp/tokens/{id}",
            format!("/v1/mcp/tokens/{mcp}"),
            None,
            "a_read",
            [
                st(403),
                has(404, &["mcp_token_not_found"], &[]),
                has(200, &["\"revoked\":true"], &[]),
                has(404, &["mcp_token_not_found"], &[]),
            ],
            Some((mcp, "mcptok_nosuchtoken")),
        ),
        row(
            "POST",
            "/v1/experiments/{id}/promote",
            format!("/v1/experiments/{exp}/promote"),
            Some(json!({})),
            "a_read",
            [st(403), st(404), st(200), either(200, 409)],
            Some((exp, "exp_nosuchexperiment")),
        ),
        row(
            "POST",
            "/v1/experiments/{id}/stop",
            format!("/v1/experiments/{exp}/stop"),
            Some(json!({})),
            "a_read",
            [st(403), st(404), either(200, 409), either(200, 409)],
            Some((exp, "exp_nosuchexperiment")),
        ),
        // Virtual keys: a locked admin manages its project's keys only.
        row(
            "POST",
            "/v1/keys",
            "/v1/keys".into(),
            Some(json!({"project": "alpha", "name": "m"})),
            "a_read",
            [st(403), st(403), st(201), st(201)],
            None,
        ),
        row(
            "GET",
            "/v1/keys",
            "/v1/keys".into(),
            None,
            "a_read",
            [
                st(403),
                has(200, &[], &[key]),
                has(200, &[key], &["\"key\":", "sha256:"]),
                has(200, &[key], &["\"key\":", "sha256:"]),
            ],
            None,
        ),
        row(
            "GET",
            "/v1/keys/{id}",
            format!("/v1/keys/{key}"),
            None,
            "a_read",
            one(403, 200, 200),
            Some((key, "vk_nosuchkey")),
        ),
        row(
            "PATCH",
            "/v1/keys/{id}",
            format!("/v1/keys/{key}"),
            Some(json!({"name": "renamed"})),
            "a_read",
            one(403, 200, 200),
            Some((key, "vk_nosuchkey")),
        ),
        row(
            "GET",
            "/v1/keys/{id}/usage",
            format!("/v1/keys/{key}/usage"),
            None,
            "a_read",
            one(403, 200, 200),
            Some((key, "vk_nosuchkey")),
        ),
        // Each locked admin sees its own project's limits only; teams and users span
        // projects, so only an unlocked admin sees them.
        // The caller's own key id, scopes and project: nothing of another project's.
        row(
            "GET",
            "/v1/whoami",
            "/v1/whoami".into(),
            None,
            "a_inf",
            [
                st(403),
                has(200, &["\"project\":\"beta\""], &["alpha"]),
                has(200, &["\"project\":\"alpha\""], &["beta"]),
                has(200, &["\"admin\":true"], &["alpha", "beta"]),
            ],
            None,
        ),
        row(
            "GET",
            "/v1/limits",
            "/v1/limits".into(),
            None,
            "a_read",
            [
                st(403),
                has(200, &["\"name\":\"beta\""], &["alpha", "crew"]),
                has(200, &["\"name\":\"alpha\""], &["beta", "crew"]),
                has(200, &["alpha", "beta", "crew"], &[]),
            ],
            None,
        ),
        // Revoking twice answers the revoked key both times.
        row(
            "DELETE",
            "/v1/keys/{id}",
            format!("/v1/keys/{key}"),
            None,
            "a_read",
            one(403, 200, 200),
            Some((key, "vk_nosuchkey")),
        ),
        // Provider keys serve the whole gateway: no project-locked admin manages them.
        row(
            "POST",
            "/v1/providers/{name}/keys",
            "/v1/providers/openai/keys".into(),
            Some(json!({"key": "sk-isolation-provider-key-0000", "label": "iso"})),
            "a_read",
            [
                st(403),
                st(403),
                st(403),
                has(201, &["pk_", "\"last4\":\"0000\""], &["sk-isolation"]),
            ],
            None,
        ),
        row(
            "GET",
            "/v1/providers/{name}/keys",
            "/v1/providers/openai/keys".into(),
            None,
            "a_read",
            [
                st(403),
                st(403),
                st(403),
                has(200, &["\"label\":\"iso\""], &["sk-isolation"]),
            ],
            None,
        ),
        row(
            "DELETE",
            "/v1/providers/{name}/keys/{id}",
            "/v1/providers/openai/keys/pk_nosuchkey".into(),
            None,
            "a_read",
            [
                st(403),
                st(403),
                st(403),
                has(404, &["provider_key_not_found"], &[]),
            ],
            None,
        ),
    ]
}

fn check(r: &Row, who: &str, e: &Expect, status: u16, body: &str) {
    let at = format!("{} {} as {who}", r.method, r.path);
    assert!(
        e.status.contains(&status),
        "{at}: {status} not in {:?}: {body}",
        e.status
    );
    for h in &e.has {
        assert!(body.contains(h.as_str()), "{at}: body lacks {h}: {body}");
    }
    for l in &e.lacks {
        assert!(!body.contains(l.as_str()), "{at}: body leaks {l}: {body}");
    }
}

/// Every endpoint of the admin route table has at least one row (and every row names a
/// real endpoint): an endpoint added without its tenancy row fails here.
#[test]
fn every_endpoint_has_a_row() {
    let ids = Ids {
        a: "chatcmpl-a".into(),
        b: "chatcmpl-b".into(),
        exp: "exp_x".into(),
        fb: "fb_x".into(),
        key: "vk_x".into(),
        mcp: "mcptok_x".into(),
    };
    let rows = rows(&ids);
    for e in ENDPOINTS {
        assert!(
            rows.iter()
                .any(|r| r.method == e.method && r.pattern == e.path),
            "endpoint {} {} has no row in the tenancy matrix (tests/isolation.rs)",
            e.method,
            e.path
        );
    }
    for r in &rows {
        let path = r.path.split('?').next().unwrap_or_default();
        assert!(
            ENDPOINTS
                .iter()
                .any(|e| e.method == r.method && e.path == r.pattern && matches(e.path, path)),
            "row {} {} matches no endpoint",
            r.method,
            r.path
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenancy_matrix() {
    let (_mock, gw) = start().await;
    let a = chat(&gw, "a", "auto:ra", "sa").await;
    let b = chat(&gw, "b", "auto:shared", "sb").await;
    // Beta cannot even use alpha's route: it answers like an undefined one.
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", format!("Bearer {}", secret("b")))
        .json(&json!({"model": "auto:ra", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
    stored(&gw, &a).await;
    stored(&gw, &b).await;
    // An audit entry on the shared route (only the unlocked admin may change it) and an
    // experiment on alpha's route.
    let (s, body) = call(
        &gw,
        "master",
        "PUT",
        "/v1/constraints",
        Some(&json!({"route": "shared", "constraints": {"min_samples": 40}})),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = call(
        &gw,
        "a",
        "PUT",
        "/v1/constraints",
        Some(&json!({"route": "shared", "constraints": {"min_samples": 40}})),
    )
    .await;
    assert_eq!(
        s, 404,
        "a locked key cannot change a route it does not own: {body}"
    );
    let (s, body) = call(
        &gw,
        "master",
        "POST",
        "/v1/experiments",
        Some(&json!({"route": "ra", "candidate": "gpt-4o-mini"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let exp = serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("experiment id")
        .to_string();
    // A feedback event of alpha's, on a session of its own (the matrix posts on "sa").
    chat(&gw, "a", "auto:ra", "sa_fb").await;
    let (s, body) = call(
        &gw,
        "a",
        "POST",
        "/v1/feedback",
        Some(&json!({"session_id": "sa_fb", "nps": 8})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let fb = serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("feedback id")
        .to_string();
    let (s, body) = call(
        &gw,
        "a",
        "POST",
        "/v1/keys",
        Some(&json!({"name": "alpha app"})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let key = serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("key id")
        .to_string();
    let (s, body) = call(
        &gw,
        "a",
        "POST",
        "/v1/mcp/tokens",
        Some(&json!({"scope": "read", "ttl_secs": 600})),
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let mcp = serde_json::from_str::<Value>(&body).expect("json")["id"]
        .as_str()
        .expect("mcp token id")
        .to_string();
    let ids = Ids {
        a,
        b,
        exp,
        fb,
        key,
        mcp,
    };
    for r in rows(&ids) {
        let body = r.body.as_ref();
        let (s, t) = call(&gw, r.wrong_key, r.method, &r.path, body).await;
        check(&r, "wrong scope", &r.wrong, s, &t);
        let (s, other) = call(&gw, "b", r.method, &r.path, body).await;
        check(&r, "other project", &r.other, s, &other);
        if let Some(u) = &r.unknown {
            // Exactly the unknown id's answer (its id put back): nothing tells them apart.
            assert_ne!(
                u.path.clone() + &format!("{:?}", u.body),
                r.path.clone() + &format!("{body:?}")
            );
            let (us, ut) = call(&gw, "b", r.method, &u.path, u.body.as_ref()).await;
            assert_eq!(
                (us, ut.replace(u.theirs.as_str(), &u.mine)),
                (s, other.clone()),
                "{} {}: other project vs unknown id",
                r.method,
                r.path
            );
        }
        let (s, t) = call(&gw, "a", r.method, &r.path, body).await;
        check(&r, "same project", &r.same, s, &t);
        let (s, t) = call(&gw, "master", r.method, &r.path, body).await;
        check(&r, "unlocked admin", &r.admin, s, &t);
    }
}

/// The samples of each model in a pool (`None`: the route's shared pool).
async fn samples(gw: &GatewayProc, project: Option<&str>) -> Vec<u64> {
    let (_, t) = call(gw, "master", "GET", "/v1/routing?route=shared", None).await;
    let v: Value = serde_json::from_str(&t).expect("json");
    let route = &v["routes"][0];
    let models = match project {
        None => &route["models"],
        Some(p) => {
            let pools = route["pools"].as_array().expect("pools");
            &pools.iter().find(|x| x["project"] == p).expect("pool")["models"]
        }
    };
    models
        .as_array()
        .expect("models")
        .iter()
        .map(|m| m["samples"].as_f64().unwrap_or(0.0).round() as u64)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projects_learn_separately_on_a_project_learning_route() {
    let (_mock, gw) = start().await;
    let before = (
        samples(&gw, Some("alpha")).await,
        samples(&gw, Some("beta")).await,
        samples(&gw, None).await,
    );
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(chat(&gw, "a", "auto:shared", &format!("sa{i}")).await);
    }
    let b = chat(&gw, "b", "auto:shared", "sb").await;
    let m = chat(&gw, "master", "auto:shared", "sm").await;
    for id in ids.iter().chain([&b, &m]) {
        stored(&gw, id).await;
    }
    // Each decision names the pool that decided.
    for (key, id, pool) in [
        ("a", &ids[0], "project:alpha"),
        ("b", &b, "project:beta"),
        ("master", &m, "shared"),
    ] {
        let (s, t) = call(&gw, key, "GET", &format!("/v1/decisions/{id}"), None).await;
        assert_eq!(s, 200, "{t}");
        let v: Value = serde_json::from_str(&t).expect("json");
        assert_eq!(v["decision"]["pool"], pool, "{t}");
    }
    // Feedback on alpha's requests only.
    for id in &ids {
        let (s, t) = call(
            &gw,
            "a",
            "POST",
            "/v1/feedback",
            Some(&json!({"id": id, "score": 1})),
        )
        .await;
        assert_eq!(s, 201, "{t}");
    }
    let total = |v: &Vec<u64>| v.iter().sum::<u64>();
    let mut moved = false;
    for _ in 0..200 {
        if total(&samples(&gw, Some("alpha")).await) >= total(&before.0) + 6 {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(moved, "alpha's pool did not learn from alpha's feedback");
    assert_eq!(
        samples(&gw, Some("beta")).await,
        before.1,
        "beta's pool moved"
    );
    assert_eq!(samples(&gw, None).await, before.2, "the shared pool moved");
    // Beta's key cannot see alpha's pool in its own view, nor post on alpha's requests.
    let (s, _) = call(
        &gw,
        "b",
        "POST",
        "/v1/feedback",
        Some(&json!({"id": ids[1], "score": 0})),
    )
    .await;
    assert_eq!(s, 404);
}

/// With a pending window, feedback on an id the caller's project does not know is accepted as
/// pending exactly like an unknown id (no existence leak), and reconciliation never credits
/// another project's request: the event is dropped (its status reads 404) and alpha's pool
/// does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_feedback_for_another_project_is_never_credited() {
    let (_mock, gw) = start_with(30).await;
    let a = chat(&gw, "a", "auto:shared", "sa").await;
    stored(&gw, &a).await;
    let before = samples(&gw, Some("alpha")).await;
    let post = |id: String| {
        let gw = &gw;
        async move {
            call(
                gw,
                "b",
                "POST",
                "/v1/feedback",
                Some(&json!({"id": id, "score": 0})),
            )
            .await
        }
    };
    let (s_other, t_other) = post(a.clone()).await;
    let (s_unknown, t_unknown) = post("chatcmpl-unknownunknownunknown".into()).await;
    assert_eq!(s_other, 202, "{t_other}");
    assert_eq!(s_unknown, 202, "{t_unknown}");
    let shape = |t: &str| -> Vec<String> {
        let v: Value = serde_json::from_str(t).expect("json");
        let mut keys: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(shape(&t_other), shape(&t_unknown));
    let v: Value = serde_json::from_str(&t_other).expect("json");
    let fb = v["id"].as_str().expect("pending id").to_string();
    // Reconciliation runs after every stored batch and once a second: the event is dropped.
    let mut dropped = false;
    for _ in 0..200 {
        let (s, _) = call(&gw, "b", "GET", &format!("/v1/feedback/{fb}"), None).await;
        if s == 404 {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        dropped,
        "pending feedback on alpha's request was not dropped"
    );
    // Nothing was credited to alpha: no stored event on alpha's request, alpha's pool unchanged.
    let (s, t) = call(&gw, "a", "GET", &format!("/v1/decisions/{a}"), None).await;
    assert_eq!(s, 200, "{t}");
    assert!(!t.contains(&fb), "{t}");
    assert_eq!(
        samples(&gw, Some("alpha")).await,
        before,
        "alpha's pool moved"
    );
}
