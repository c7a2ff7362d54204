//! Issue 12 through the real gateway with the shipped defaults: a clearly better cheap candidate
//! is promoted within a few hundred requests, and when it silently regresses the change
//! detector takes the promotion back within a few hundred more.

mod common;

use std::collections::HashMap;

use common::*;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

/// A feedback route with nothing but the shipped defaults (mode live).
const ROUTE: &str = r#"
[routes.default]
baseline = "gpt-4o"
candidates = ["gpt-4o-mini"]
mode = "live"
[routing]
refresh_ms = 50
"#;

/// One `auto` request and a judge score drawn from the served model's hidden quality.
async fn one(gw: &GatewayProc, i: usize, q: &HashMap<&str, f64>, rng: &mut impl Rng) -> String {
    let c = client();
    let r = c
        .post(gw.url("/v1/chat/completions"))
        .header("authorization", auth())
        .json(&json!({"model": "auto", "messages": [{"role": "user", "content": format!("question {i}")}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let served = r.headers()["loopgate-model"].to_str().unwrap().to_string();
    let body: Value = r.json().await.unwrap();
    let score = f64::from(u8::from(rng.gen::<f64>() < q[served.as_str()]));
    let f = c
        .post(gw.url("/v1/feedback"))
        .header("authorization", auth())
        .json(&json!({"id": body["id"], "score": score, "scale": "unit", "signal": "judge"}))
        .send()
        .await
        .unwrap();
    assert_eq!(f.status(), 201, "{}", f.text().await.unwrap_or_default());
    served
}

async fn routing(gw: &GatewayProc) -> Value {
    client()
        .get(gw.url("/v1/routing"))
        .header("authorization", auth())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_defaults_promote_a_better_cheap_model_and_roll_back_its_regression() {
    let mock = MockUpstream::start(model_fleet()).await;
    let gw = GatewayProc::start(
        ROUTE,
        &[
            ("OPENAI_API_KEY", "sk-test".into()),
            ("OPENAI_BASE_URL", mock.url()),
        ],
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let mut q = HashMap::from([("gpt-4o", 0.6), ("gpt-4o-mini", 0.9)]);
    // Promotion: the last 50 of a window of 50 all on the cheap model.
    let mut streak = 0;
    let mut promoted_at = None;
    for i in 0..600 {
        let s = one(&gw, i, &q, &mut rng).await;
        streak = if s == "gpt-4o-mini" { streak + 1 } else { 0 };
        if streak >= 50 {
            promoted_at = Some(i);
            break;
        }
    }
    let Some(promoted_at) = promoted_at else {
        panic!("no promotion within 600 requests\n{:#}", routing(&gw).await);
    };
    eprintln!("promoted (50 in a row on gpt-4o-mini) at request {promoted_at}");
    // A few hundred more at the old quality, then a silent regression (quality × 0.3).
    for i in 0..150 {
        one(&gw, 1000 + i, &q, &mut rng).await;
    }
    q.insert("gpt-4o-mini", 0.27);
    let mut back = None;
    let mut streak = 0;
    for i in 0..500 {
        let s = one(&gw, 2000 + i, &q, &mut rng).await;
        streak = if s == "gpt-4o" { streak + 1 } else { 0 };
        if streak >= 30 {
            back = Some(i);
            break;
        }
    }
    let state = routing(&gw).await;
    let Some(back) = back else {
        panic!("still on the regressed model after 500 requests\n{state:#}");
    };
    eprintln!("back on the baseline (30 in a row) {back} requests after the regression");
    let mini = state["routes"][0]["models"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["model"] == "gpt-4o-mini"))
        .cloned()
        .unwrap_or_default();
    assert!(
        mini["change"]["alarms"].as_u64().unwrap_or(0) >= 1,
        "the change detector fired: {mini:#}"
    );
}
