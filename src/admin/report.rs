//! `GET /v1/report/shadow?route=...&window=24h`: the baseline-vs-loopgate table for one
//! feedback route, computed from stored data only (decisions, traces, feedback), never from
//! example values. Where there is no data the figure is `null` and a note says why.
//!
//! - **baseline**: the route's requests the baseline served (their traces).
//! - **loopgate**: what loopgate's pick did on the same traffic — in shadow mode the shadow
//!   calls of the would-have model (traces `endpoint = "shadow"`, `shadow_of = <request>`),
//!   in live mode the requests a candidate served.
//! - **quality**: judge scores, per-request feedback and session NPS, each normalised to
//!   [0, 1] and blended as one mean with a 95% t-interval.
//! - **regression events**: judged pairs (the served baseline answer and the shadow answer to
//!   the same request) where the pick scored lower than the baseline by more than the route's
//!   `max_regression`, over all judged pairs.
//! - **projected saving**: the cost difference per request (paired on the same requests when
//!   shadow pairs exist) times the window's requests the router would move off the baseline.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value};

use super::logs::{store_err, store_for};
use super::{AdminRequest, AdminResponse, Scope};
use crate::error::GatewayError;
use crate::feedback::posterior::{normalise, nps_to_unit};
use crate::routing::auto::AutoState;
use crate::routing::Runtime;
use crate::services::aggregator::parse_scale;
use crate::store::routing::percentile_nearest_rank;
use crate::store::writer::StoreSlot;
use crate::store::{Cursor, DecisionQuery, DecisionRow, LogFilter, LogQuery, Store};
use crate::trace::TraceRecord;

/// Upper bound on rows read per source (decisions, traces); the report says when it is hit.
const MAX_ROWS: usize = 50_000;
const MAX_FEEDBACK_ROWS: usize = 500_000;
const PAGE: usize = 1_000;
const MAX_WINDOW_SECS: u64 = 90 * 86_400;

/// `24h`, `30m`, `7d`, `3600s` or plain seconds.
pub fn parse_window(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().last()? {
        (i, c) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let n: u64 = num.parse().ok()?;
    let secs = n.checked_mul(match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return None,
    })?;
    (1..=MAX_WINDOW_SECS).contains(&secs).then_some(secs)
}

/// Two-sided 95% Student-t quantile for `df` degrees of freedom.
fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => T[df - 1],
        31..=40 => 2.021,
        41..=60 => 2.000,
        61..=120 => 1.980,
        _ => 1.960,
    }
}

/// Mean of scores in [0, 1] with a 95% t-interval (clamped to [0, 1]); `null` when empty,
/// no interval with a single score.
pub fn mean_interval(v: &[f64]) -> Value {
    if v.is_empty() {
        return Value::Null;
    }
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let interval = if n >= 2 {
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let half = t95(n - 1) * (var / n as f64).sqrt();
        json!([(mean - half).max(0.0), (mean + half).min(1.0)])
    } else {
        Value::Null
    };
    json!({"mean": mean, "interval_95": interval, "n": n})
}

/// One side of the table.
#[derive(Default)]
struct Arm<'a> {
    traces: Vec<&'a TraceRecord>,
    /// Request ids whose feedback belongs to this arm.
    ids: HashSet<String>,
    scores: Vec<f64>,
    by_signal: BTreeMap<String, usize>,
    models: BTreeMap<String, usize>,
}

impl Arm<'_> {
    fn cost_per_request(&self) -> Option<f64> {
        (!self.traces.is_empty())
            .then(|| self.traces.iter().map(|t| t.cost_usd).sum::<f64>() / self.traces.len() as f64)
    }

    fn json(&self) -> Value {
        let mut lat: Vec<f64> = self
            .traces
            .iter()
            .filter(|t| t.status < 400 && t.error.is_none())
            .map(|t| t.latency_ms)
            .collect();
        let errors = self
            .traces
            .iter()
            .filter(|t| t.status >= 400 || t.error.is_some())
            .count();
        json!({
            "requests": self.traces.len(),
            "errors": errors,
            "cost_per_request_usd": self.cost_per_request(),
            "total_cost_usd": (!self.traces.is_empty()).then(|| self.traces.iter().map(|t| t.cost_usd).sum::<f64>()),
            "p95_latency_ms": percentile_nearest_rank(&mut lat, 0.95),
            "quality": mean_interval(&self.scores),
            "quality_signals": self.by_signal,
            "models": self.models,
        })
    }
}

async fn decisions(
    store: &dyn Store,
    route: &str,
    from_ms: i64,
) -> Result<(Vec<DecisionRow>, bool), GatewayError> {
    let mut out: Vec<DecisionRow> = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .query_decisions(&DecisionQuery {
                route: Some(route.to_string()),
                from_ms: Some(from_ms),
                before: before.clone(),
                limit: PAGE,
                ..Default::default()
            })
            .await
            .map_err(store_err)?;
        let n = page.len();
        before = page.last().map(|d| (d.ts_ms, d.request_id.clone()));
        out.extend(page);
        if n < PAGE {
            return Ok((out, false));
        }
        if out.len() >= MAX_ROWS {
            return Ok((out, true));
        }
    }
}

async fn traces(
    store: &dyn Store,
    route: &str,
    from_ms: i64,
) -> Result<(Vec<TraceRecord>, bool), GatewayError> {
    let mut out = Vec::new();
    let mut after: Option<Cursor> = None;
    loop {
        let page = store
            .query_logs(&LogQuery {
                filter: LogFilter {
                    start_ms: Some(from_ms),
                    route: Some(route.to_string()),
                    ..Default::default()
                },
                limit: PAGE,
                after: after.clone(),
            })
            .await
            .map_err(store_err)?;
        out.extend(page.records.into_iter().map(|mut r| {
            // Never carried into the report (and dropped early to bound memory).
            r.request_body = None;
            r.response_body = None;
            r
        }));
        match page.next {
            Some(c) if out.len() < MAX_ROWS => after = Some(c),
            Some(_) => return Ok((out, true)),
            None => return Ok((out, false)),
        }
    }
}

/// Normalised score of a stored feedback row (`None` if its scale is unknown).
fn unit_score(value: f64, scale: &str) -> Option<f64> {
    if scale == "nps" {
        return nps_to_unit(value).ok();
    }
    normalise(value, parse_scale(scale)?).ok()
}

pub async fn shadow(
    slot: Option<&StoreSlot>,
    rt: &Runtime,
    auto: &AutoState,
    req: &AdminRequest,
) -> Result<AdminResponse, GatewayError> {
    req.caller.require(Scope::Read)?;
    if req.method != "GET" {
        return Err(GatewayError::MethodNotAllowed(
            "use GET on /v1/report/shadow".into(),
        ));
    }
    let route = req
        .param("route")
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            GatewayError::invalid_code(
                "Missing required parameter: 'route'.",
                Some("route"),
                "missing_required_parameter",
            )
        })?;
    let vis = req.caller.visibility(Some(&rt.config));
    // Another project's route answers like an undefined one.
    let rc = match rt.route(route).filter(|_| vis.owns_route(route)) {
        Some(rc) if rc.is_feedback() => rc,
        Some(_) => {
            return Err(GatewayError::invalid(
                format!("route '{route}' is a static rule, not a feedback route (no baseline)"),
                Some("route"),
            ))
        }
        None => {
            return Err(GatewayError::NotFound {
                message: format!("Routing rule '{route}' is not defined."),
                code: "route_not_found",
                param: Some("route".into()),
            })
        }
    };
    let window_s = req.param("window").unwrap_or("24h");
    let window = parse_window(window_s).ok_or_else(|| {
        GatewayError::invalid(
            "'window' must be a duration such as 30m, 24h or 7d (at most 90d)",
            Some("window"),
        )
    })?;
    let store = store_for(slot, "the report reads stored traces", &vis).await?;
    let now_ms = chrono::Utc::now().timestamp_millis();
    let from_ms = now_ms - window as i64 * 1000;
    let table = auto.table.load();
    let prepared = table.routes.get(route).map(|r| r.prepared.clone());
    let max_regression = prepared
        .as_ref()
        .map_or(rc.constraints.max_regression, |p| {
            p.constraints.max_regression
        });
    let mode = prepared
        .as_ref()
        .map_or(rc.mode.as_str(), |p| p.mode.as_str());
    let baseline_model = rc.baseline.clone().unwrap_or_default();

    let (decs, decs_cut) = decisions(&*store, route, from_ms).await?;
    let (recs, recs_cut) = traces(&*store, route, from_ms).await?;
    let mut served: HashMap<&str, &TraceRecord> = HashMap::new();
    let mut shadows: HashMap<&str, Vec<&TraceRecord>> = HashMap::new();
    for r in &recs {
        match r.endpoint.as_str() {
            "shadow" if r.shadow => {
                if let Some((_, of)) = r.properties.iter().find(|(k, _)| k == "shadow_of") {
                    shadows.entry(of.as_str()).or_default().push(r);
                }
            }
            "chat.completions" | "messages" if !r.shadow => {
                served.insert(r.request_id.as_str(), r);
            }
            _ => {}
        }
    }

    let mut base = Arm::default();
    let mut pick = Arm::default();
    // (served request id, its shadow call): the judged pairs are looked up through them.
    let mut pairs: Vec<(&str, &TraceRecord)> = Vec::new();
    let mut switched = 0usize;
    for d in &decs {
        if d.chosen != d.baseline {
            switched += 1;
        }
        let t = served.get(d.request_id.as_str()).copied();
        if d.served == d.baseline {
            if let Some(t) = t {
                base.traces.push(t);
                base.ids.insert(d.request_id.clone());
                *base.models.entry(d.served.clone()).or_default() += 1;
            }
            for s in shadows.get(d.request_id.as_str()).into_iter().flatten() {
                pick.traces.push(s);
                pick.ids.insert(s.request_id.clone());
                *pick.models.entry(s.requested_model.clone()).or_default() += 1;
                pairs.push((d.request_id.as_str(), s));
            }
        } else if let Some(t) = t {
            pick.traces.push(t);
            pick.ids.insert(d.request_id.clone());
            *pick.models.entry(d.served.clone()).or_default() += 1;
        }
    }

    // Feedback of the window: judge scores, per-request feedback, admin ratings, session NPS.
    let mut judge: HashMap<String, f64> = HashMap::new();
    let mut after = 0i64;
    let mut read = 0usize;
    let mut fb_cut = false;
    loop {
        let page = store
            .feedback_since(after, 5_000)
            .await
            .map_err(store_err)?;
        let n = page.len();
        read += n;
        for f in &page {
            after = after.max(f.seq);
            if f.at_ms < from_ms {
                continue;
            }
            let Some(score) = unit_score(f.value, &f.scale) else {
                continue;
            };
            if f.signal == "session_nps" {
                for (r, m, _) in &f.targets {
                    if r != route {
                        continue;
                    }
                    let arm = if *m == baseline_model {
                        &mut base
                    } else {
                        &mut pick
                    };
                    arm.scores.push(score);
                    *arm.by_signal.entry(f.signal.clone()).or_default() += 1;
                }
                continue;
            }
            if f.route.as_deref() != Some(route) {
                continue;
            }
            let Some(id) = f.request_id.as_deref() else {
                continue;
            };
            if f.signal == "judge" {
                judge.insert(id.to_string(), score);
            }
            for arm in [&mut base, &mut pick] {
                if arm.ids.contains(id) {
                    arm.scores.push(score);
                    *arm.by_signal.entry(f.signal.clone()).or_default() += 1;
                }
            }
        }
        if n < 5_000 {
            break;
        }
        if read >= MAX_FEEDBACK_ROWS {
            fb_cut = true;
            break;
        }
    }

    // Judged pairs: the baseline answer and the shadow answer to the same request.
    let mut judged_pairs = 0usize;
    let mut regressions = 0usize;
    let mut paired_diffs: Vec<f64> = Vec::new();
    for (rid, s) in &pairs {
        if let (Some(b), Some(p)) = (judge.get(*rid), judge.get(&s.request_id)) {
            judged_pairs += 1;
            if *p < *b - max_regression {
                regressions += 1;
            }
        }
        if let Some(bt) = served.get(rid) {
            if s.status < 400 && s.error.is_none() {
                paired_diffs.push(bt.cost_usd - s.cost_usd);
            }
        }
    }

    let mut notes: Vec<String> = Vec::new();
    if decs.is_empty() {
        notes.push(format!(
            "no routed requests on route '{route}' in the last {window_s}: send traffic with model \"auto\" (or auto:{route})"
        ));
    }
    if base.traces.is_empty() && !decs.is_empty() {
        notes.push("no stored baseline-served requests in the window".into());
    }
    if pick.traces.is_empty() {
        notes.push(match mode {
            "shadow" => format!("no shadow calls in the window: they need routes.{route}.shadow.share > 0, a router pick that differs from the baseline, and budget left (routes.{route}.shadow.daily_budget)"),
            "live" => "no request in the window was served by a candidate".into(),
            _ => format!("route '{route}' is off: set mode = \"shadow\" to compare without changing what clients get"),
        });
    }
    if base.scores.is_empty() && pick.scores.is_empty() {
        notes.push("no quality scores in the window: enable the judge ([judge].model and routes.<route>.judge.share) or send feedback".into());
    }
    if judged_pairs == 0 {
        notes.push("no judged pairs (a served baseline answer and its shadow answer both scored by the judge): regression events need shadow mode with the judge on".into());
    }
    if decs_cut || recs_cut || fb_cut {
        notes.push(format!(
            "the window holds more than {MAX_ROWS} rows; the report covers the most recent ones"
        ));
    }

    let base_cpr = base.cost_per_request();
    let pick_cpr = pick.cost_per_request();
    let (per_request, basis) = if !paired_diffs.is_empty() {
        (
            Some(paired_diffs.iter().sum::<f64>() / paired_diffs.len() as f64),
            "paired",
        )
    } else {
        match (base_cpr, pick_cpr) {
            (Some(b), Some(p)) => (Some(b - p), "arms"),
            _ => (None, "none"),
        }
    };
    let projected = per_request.map(|s| {
        let usd = s * switched as f64;
        let total = base_cpr.map(|b| b * decs.len() as f64);
        json!({
            "usd": usd,
            "per_switched_request_usd": s,
            "switched_requests": switched,
            "share_of_baseline_spend": total.filter(|t| *t > 0.0).map(|t| usd / t),
            "basis": basis,
        })
    });
    if projected.is_none() {
        notes.push(
            "no projected saving: it needs the cost of both the baseline and loopgate's pick"
                .into(),
        );
    }
    let regression = json!({
        "count": regressions,
        "total": judged_pairs,
        "rate": (judged_pairs > 0).then(|| regressions as f64 / judged_pairs as f64),
        "max_regression": max_regression,
    });
    let mut b = base.json();
    b["model"] = json!(baseline_model);
    let mut p = pick.json();
    p["source"] = json!(match mode {
        "shadow" => "shadow_calls",
        "live" => "served",
        _ => "none",
    });
    Ok(AdminResponse::json(
        200,
        &json!({
            "object": "report.shadow",
            "route": route,
            "mode": mode,
            "window": window_s,
            "from_ms": from_ms,
            "to_ms": now_ms,
            "routed_requests": decs.len(),
            "baseline": b,
            "loopgate": p,
            "regression_events": regression,
            "projected_saving": projected,
            "notes": notes,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_with_units_and_bounds() {
        assert_eq!(parse_window("24h"), Some(86_400));
        assert_eq!(parse_window("30m"), Some(1_800));
        assert_eq!(parse_window("7d"), Some(7 * 86_400));
        assert_eq!(parse_window("90"), Some(90));
        assert_eq!(parse_window("0h"), None);
        assert_eq!(parse_window("91d"), None);
        assert_eq!(parse_window("1w"), None);
        assert_eq!(parse_window("h"), None);
        assert_eq!(parse_window(""), None);
        assert_eq!(parse_window("99999999999999999999d"), None);
    }

    #[test]
    fn mean_interval_is_a_t_interval_clamped_to_unit() {
        assert_eq!(mean_interval(&[]), Value::Null);
        let one = mean_interval(&[0.5]);
        assert_eq!(one["mean"], 0.5);
        assert!(one["interval_95"].is_null());
        // n = 4, mean 0.5, s = sqrt(1/3): half-width = 3.182 * s / 2.
        let v = mean_interval(&[0.0, 1.0, 0.5, 0.5]);
        let half = 3.182 * (1.0f64 / 6.0).sqrt() / 2.0;
        let lo = v["interval_95"][0].as_f64().unwrap();
        assert!((lo - (0.5 - half).max(0.0)).abs() < 1e-9, "{v}");
        assert_eq!(v["interval_95"][1], 1.0);
        let tight = mean_interval(&vec![0.8; 100]);
        assert!((tight["interval_95"][0].as_f64().unwrap() - 0.8).abs() < 1e-9);
    }

    /// Live mode from a real SQLite store: the pick's side is the traffic candidates served.
    #[tokio::test]
    async fn live_route_compares_served_arms_from_the_store() {
        use crate::store::{DecisionRow, FeedbackRow};
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("r.db");
        let store: std::sync::Arc<dyn Store> = std::sync::Arc::new(
            crate::store::sqlite::SqliteStore::open(db.to_str().unwrap(), 2000)
                .await
                .unwrap(),
        );
        let cfg = crate::config::GatewayConfig::parse(
            "[routes.r]\nbaseline = \"gpt-4o\"\ncandidates = [\"gpt-4o-mini\"]\nmode = \"live\"\n",
            "test",
        )
        .unwrap();
        let rt = Runtime::build(cfg, 1).unwrap();
        let auto = AutoState::new(Some("k".into()), "k1", 60, 100);
        let now = chrono::Utc::now().timestamp_millis();
        let mut recs = Vec::new();
        for i in 0..8i64 {
            let mini = i % 2 == 1;
            let model = if mini { "gpt-4o-mini" } else { "gpt-4o" };
            let id = format!("chatcmpl-{i}");
            recs.push(TraceRecord {
                request_id: id.clone(),
                ts_ms: now - 1000 + i,
                endpoint: "chat.completions".into(),
                route: Some("r".into()),
                requested_model: "auto".into(),
                served_model: Some(model.into()),
                status: 200,
                cost_usd: if mini { 0.0002 } else { 0.003 },
                latency_ms: 100.0 + i as f64,
                decision: Some(Box::new(DecisionRow {
                    request_id: id,
                    ts_ms: now - 1000 + i,
                    route: "r".into(),
                    mode: "live".into(),
                    chosen: model.into(),
                    served: model.into(),
                    baseline: "gpt-4o".into(),
                    kind: "explored".into(),
                    signed: "{}".into(),
                    ..Default::default()
                })),
                ..Default::default()
            });
        }
        assert_eq!(store.insert_traces(&recs).await.unwrap(), 8);
        for (i, score) in [(0, 1.0), (1, 0.0)] {
            let row = FeedbackRow {
                id: format!("fb_{i}"),
                dedup_key: format!("request:chatcmpl-{i}:feedback"),
                signal: "feedback".into(),
                request_id: Some(format!("chatcmpl-{i}")),
                route: Some("r".into()),
                model: Some("m".into()),
                value: score,
                scale: "thumbs".into(),
                at_ms: now - 500,
                received_ms: now,
                ..Default::default()
            };
            store.insert_feedback(&row).await.unwrap();
        }
        let slot = StoreSlot::with(store);
        let req = AdminRequest {
            method: "GET".into(),
            path: "/v1/report/shadow".into(),
            query: vec![("route".into(), "r".into()), ("window".into(), "1h".into())],
            body: bytes::Bytes::new(),
            caller: crate::admin::Caller {
                key_id: Some("reader".into()),
                scopes: vec![Scope::Read],
                project: None,
            },
            headers: Vec::new(),
        };
        let resp = shadow(Some(&slot), &rt, &auto, &req).await.unwrap();
        let crate::admin::AdminBody::Full(b) = resp.body else {
            panic!("not a full body")
        };
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["mode"], "live", "{v}");
        assert_eq!(v["routed_requests"], 8);
        assert_eq!(v["baseline"]["requests"], 4);
        assert_eq!(v["loopgate"]["requests"], 4);
        assert_eq!(v["loopgate"]["source"], "served");
        assert_eq!(v["loopgate"]["models"]["gpt-4o-mini"], 4);
        assert!((v["baseline"]["cost_per_request_usd"].as_f64().unwrap() - 0.003).abs() < 1e-12);
        assert_eq!(v["baseline"]["p95_latency_ms"], 106.0);
        assert_eq!(v["baseline"]["quality"]["mean"], 1.0);
        assert_eq!(v["loopgate"]["quality"]["mean"], 0.0);
        assert_eq!(v["regression_events"]["total"], 0);
        let saving = &v["projected_saving"];
        assert_eq!(saving["basis"], "arms");
        assert_eq!(saving["switched_requests"], 4);
        assert!(
            (saving["usd"].as_f64().unwrap() - 4.0 * 0.0028).abs() < 1e-12,
            "{v}"
        );
        // Without the read scope: refused.
        let mut anon = req.clone();
        anon.caller.scopes = vec![Scope::Inference];
        assert!(shadow(Some(&slot), &rt, &auto, &anon).await.is_err());
    }

    #[test]
    fn stored_scales_normalise() {
        assert_eq!(unit_score(1.0, "thumbs"), Some(1.0));
        assert_eq!(unit_score(3.0, "one_to_five"), Some(0.5));
        assert_eq!(unit_score(0.25, "unit"), Some(0.25));
        assert_eq!(unit_score(10.0, "nps"), Some(1.0));
        assert_eq!(unit_score(1.0, "percent"), None);
    }
}
