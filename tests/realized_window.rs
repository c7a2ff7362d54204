//! Issue 12: the quality budget's realized exploration account is the route's last
//! `routing.realized_window_requests` routed requests, read from the store's decisions, not
//! the served counts of the traffic-stats window (a day by default), which dilute recent
//! overspending.

use std::collections::HashMap;
use std::sync::Arc;

use loopgate::config::GatewayConfig;
use loopgate::feedback::aggregator::RoutingStats;
use loopgate::feedback::priors::Priors;
use loopgate::routing::Runtime;
use loopgate::services::aggregator::{build_table, read_traffic, BuildInputs};
use loopgate::store::sqlite::SqliteStore;
use loopgate::store::{DecisionRow, Store};
use loopgate::trace::TraceRecord;

/// Issue 12: the realized exploration account reads the route's last 500 decisions, not
/// the day of traffic: 500 recent requests that all went to a worse candidate must spend
/// the budget even after 10,000 older baseline requests in the stats window.
#[tokio::test]
async fn realized_account_is_the_last_window_not_the_day() {
    // This binary's only test: the process environment is its own.
    std::env::set_var("OPENAI_API_KEY", "sk-test-realized-window");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("r.db");
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(db.to_str().unwrap(), 2000).await.unwrap());
    let cfg = GatewayConfig::parse(
        "[routes.r]\nbaseline = \"gpt-4o\"\ncandidates = [\"gpt-4o-mini\"]\nmode = \"live\"\n",
        "test",
    )
    .unwrap();
    let rt = Runtime::build(cfg, 1).unwrap();
    let now = chrono::Utc::now().timestamp_millis();
    let rec = |i: i64, ts: i64, model: &str| {
        let id = format!("req-{i:05}");
        TraceRecord {
            request_id: id.clone(),
            ts_ms: ts,
            endpoint: "chat.completions".into(),
            route: Some("r".into()),
            requested_model: "auto".into(),
            served_model: Some(model.into()),
            status: 200,
            latency_ms: 100.0,
            decision_id: Some(id.clone()),
            decision: Some(Box::new(DecisionRow {
                request_id: id,
                ts_ms: ts,
                route: "r".into(),
                mode: "live".into(),
                chosen: model.into(),
                served: model.into(),
                baseline: "gpt-4o".into(),
                kind: "explored".into(),
                propensity: 1.0,
                table_version: 1,
                signed: "{}".into(),
                ..Default::default()
            })),
            ..Default::default()
        }
    };
    // A day of baseline traffic two hours ago, then the last 500 requests all explored.
    let mut recs: Vec<TraceRecord> = (0..10_000)
        .map(|i| rec(i, now - 2 * 3_600_000 + i, "gpt-4o"))
        .collect();
    recs.extend((0..500).map(|i| rec(10_000 + i, now - 1_000 + i, "gpt-4o-mini")));
    for chunk in recs.chunks(1_000) {
        store.insert_traces(chunk).await.unwrap();
    }
    let traffic = read_traffic(&rt, store.as_ref(), now).await.unwrap();
    let key = ("r".to_string(), "gpt-4o-mini".to_string());
    assert_eq!(traffic.recent_served.get(&key), Some(&500));
    let priors = Priors::embedded().unwrap();
    let table = build_table(&BuildInputs {
        rt: &rt,
        stats: &RoutingStats::default(),
        traffic: &traffic,
        priors: Some(&priors),
        posterior_cfg: &rt.config.routing.posterior,
        previous: None,
        version: 1,
        now_ms: now,
        events_folded: 0,
        rollout: &HashMap::new(),
    });
    let route = &table
        .routes
        .get("r")
        .unwrap_or_else(|| panic!("{:?}", table.broken))
        .prepared;
    let mean = |name: &str| {
        route
            .models
            .iter()
            .find(|m| &*m.model == name)
            .map(|m| m.posterior.mean())
            .unwrap()
    };
    let gap = mean("gpt-4o") - mean("gpt-4o-mini");
    assert!(
        gap > 0.0,
        "the candidate must look worse for this test: {gap}"
    );
    // The whole window went to the candidate: the account is its full gap (with the day
    // of traffic it would be diluted 21-fold).
    let realized = route.realized_gap.unwrap();
    assert!((realized - gap).abs() < 1e-9, "{realized} vs {gap}");
}
