//! `POST /v1/feedback` bodies, through the real handler and a real SQLite store: per-request
//! scores (every scale and signal), session NPS, comments and details.
//!
//! Each input is sent twice, by an inference-scoped key and by an admin key. Two request
//! ids and one session are known (remembered as recent routed decisions), so valid bodies
//! reach the store; deduplication keeps the store bounded however long the run.
//!
//! Properties: no panic; the answer is 201 (stored), 409 (duplicate) or a 400/403/404 with
//! the OpenAI error shape — never a 5xx; every answer body is JSON.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use loopgate::admin::{feedback, AdminBody, AdminRequest, Caller, Scope};
use loopgate::routing::auto::{AutoState, RecentDecision};
use loopgate::store::sqlite::SqliteStore;
use loopgate::store::writer::StoreSlot;
use loopgate::store::Store;
use loopgate_fuzz::MAX_INPUT;
use serde_json::Value;

struct World {
    rt: tokio::runtime::Runtime,
    slot: StoreSlot,
    auto: AutoState,
    // Keeps the database directory alive for the process.
    _dir: tempfile::TempDir,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fuzz.db");
        let store: Arc<dyn Store> = Arc::new(
            rt.block_on(SqliteStore::open(&path.to_string_lossy(), 5000))
                .expect("sqlite store opens"),
        );
        let auto = AutoState::new(Some("k".into()), "k1", 60, 100);
        // chatcmpl-c: a reference refresh inside session s1 (does not hold it).
        for (id, session, held_session) in [
            ("chatcmpl-a", Some("s1"), true),
            ("chatcmpl-b", None, true),
            ("chatcmpl-c", Some("s1"), false),
        ] {
            auto.remember(
                id,
                RecentDecision {
                    route: "default".into(),
                    served: "gpt-4o-mini".into(),
                    context: Some("code".into()),
                    session: session.map(str::to_string),
                    at_ms: 1_700_000_000_000,
                    project: None,
                    held_session,
                },
            );
        }
        World {
            rt,
            slot: StoreSlot::with(store),
            auto,
            _dir: dir,
        }
    })
}

fn caller(scopes: Vec<Scope>) -> Caller {
    Caller {
        key_id: Some("key_fuzz".into()),
        scopes,
        project: None,
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let w = world();
    for scopes in [vec![Scope::Inference], vec![Scope::Admin]] {
        let req = AdminRequest {
            method: "POST".into(),
            path: "/v1/feedback".into(),
            query: Vec::new(),
            body: Bytes::copy_from_slice(data),
            caller: caller(scopes),
            headers: Vec::new(),
        };
        let (status, body) = match w
            .rt
            .block_on(feedback::handle(Some(&w.slot), &w.auto, &req))
        {
            Ok(resp) => {
                let AdminBody::Full(b) = resp.body else {
                    panic!("feedback answered with a stream");
                };
                (resp.status, b)
            }
            Err(e) => (e.status(), e.to_openai()),
        };
        assert!(
            matches!(status, 201 | 400 | 403 | 404 | 409),
            "feedback answered {status}: {:?}",
            String::from_utf8_lossy(&body)
        );
        let v: Value = serde_json::from_slice(&body).expect("answer body is JSON");
        if status != 201 {
            assert!(
                v.pointer("/error/message").is_some_and(Value::is_string),
                "error without the OpenAI shape: {v}"
            );
        }
    }
});
