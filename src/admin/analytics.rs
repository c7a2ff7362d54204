//! `GET /v1/analytics?group_by=...&bucket=...&start=&end=&<filters>`: requests, errors,
//! error rate, tokens, cost and p50/p95 latency per group and time bucket, and the exact
//! cache's hits with the cost and latency they saved.

use serde_json::json;

use super::logs::{check_params, check_read, scoped_filter, store_err, store_of};
use super::{AdminRequest, AdminResponse};
use crate::error::GatewayError;
use crate::store::writer::StoreSlot;
use crate::store::{AnalyticsQuery, Bucket, GroupBy};

pub async fn handle(store: &StoreSlot, req: &AdminRequest) -> Option<AdminResponse> {
    if req.path.trim_end_matches('/') != "/v1/analytics" {
        return None;
    }
    Some(
        run(store, req)
            .await
            .unwrap_or_else(|e| AdminResponse::error(&e)),
    )
}

async fn run(slot: &StoreSlot, req: &AdminRequest) -> Result<AdminResponse, GatewayError> {
    check_read(req)?;
    check_params(req, &["group_by", "bucket", "resolved_nps"])?;
    let resolved_nps = match req.param("resolved_nps") {
        None => None,
        Some(v) => Some(
            v.parse::<f64>()
                .ok()
                .filter(|n| (0.0..=10.0).contains(n))
                .ok_or_else(|| {
                    GatewayError::invalid(
                        "'resolved_nps' must be a number 0..=10 (the session NPS at or above which a session counts as resolved)",
                        Some("resolved_nps"),
                    )
                })?,
        ),
    };
    let group_name = req.param("group_by").unwrap_or("model");
    let group_by = GroupBy::parse(group_name).ok_or_else(|| {
        GatewayError::invalid(
            "'group_by' must be one of model, provider, project, user, route, key, property:<name>",
            Some("group_by"),
        )
    })?;
    let bucket_name = req.param("bucket").unwrap_or("none");
    let bucket = Bucket::parse(bucket_name).ok_or_else(|| {
        GatewayError::invalid("'bucket' must be hour, day or none", Some("bucket"))
    })?;
    let filter = scoped_filter(req)?;
    let store = store_of(slot, &req.caller.visibility(None))?;
    let q = AnalyticsQuery {
        filter: filter.clone(),
        group_by,
        bucket,
    };
    let rows = store.analytics(&q).await.map_err(store_err)?;
    // Exact-cache hits and what they saved (cost and latency of the original answers).
    let savings = crate::store::query::fold_cache_savings(
        store
            .cache_savings(&q.filter, &q.group_by)
            .await
            .map_err(store_err)?,
        q.bucket,
    );
    let mut saved_total = crate::store::CacheSavings::default();
    for s in savings.values() {
        saved_total.cache_hits += s.cache_hits;
        saved_total.cache_saved_usd += s.cache_saved_usd;
        saved_total.cache_saved_ms += s.cache_saved_ms;
    }
    let data: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut v = json!(r);
            let s = savings
                .get(&(r.bucket_start_ms, r.group.clone()))
                .cloned()
                .unwrap_or_default();
            v["cache_hits"] = json!(s.cache_hits);
            v["cache_saved_usd"] = json!(round9(s.cache_saved_usd));
            v["cache_saved_ms"] = json!(round3(s.cache_saved_ms));
            v
        })
        .collect();
    let resolved = match resolved_nps {
        Some(t) => {
            // Feedback pages are read unscoped (a narrowed page would end the scan early)
            // and filtered by the caller's visibility here.
            let vis = req.caller.visibility(None);
            let raw = store_of(slot, &crate::store::scoped::Visibility::All)?;
            let s = Rated {
                feedback: &*raw,
                logs: &*store,
                vis: &vis,
            };
            Some(resolved_sessions(s, &filter, &q.group_by, t).await?)
        }
        None => None,
    };
    let (mut requests, mut errors, mut pt, mut ct, mut cost) = (0u64, 0u64, 0u64, 0u64, 0f64);
    for r in &rows {
        requests += r.requests;
        errors += r.errors;
        pt += r.prompt_tokens;
        ct += r.completion_tokens;
        cost += r.cost_usd;
    }
    let mut body = json!({
            "object": "analytics",
            "group_by": group_name,
            "bucket": bucket_name,
            "start_ms": filter.start_ms,
            "end_ms": filter.end_ms,
            "project": filter.project,
            "totals": {
                "requests": requests,
                "errors": errors,
                "error_rate": if requests > 0 { ((errors as f64 / requests as f64) * 1e6).round() / 1e6 } else { 0.0 },
                "prompt_tokens": pt,
                "completion_tokens": ct,
                "total_tokens": pt + ct,
                "cost_usd": (cost * 1e9).round() / 1e9,
                "cache_hits": saved_total.cache_hits,
                "cache_saved_usd": round9(saved_total.cache_saved_usd),
                "cache_saved_ms": round3(saved_total.cache_saved_ms),
            },
            "data": data,
    });
    if let Some(r) = resolved {
        body["resolved_sessions"] = r;
    }
    Ok(AdminResponse::json(200, &body))
}

fn round9(v: f64) -> f64 {
    (v * 1e9).round() / 1e9
}

fn round3(v: f64) -> f64 {
    (v * 1e3).round() / 1e3
}

/// How many sessions (with a session NPS in the window) the cost-per-resolved-session
/// figure reads at most, and how many feedback rows it scans.
const MAX_RATED_SESSIONS: usize = 500;
const MAX_FEEDBACK_SCAN: usize = 100_000;

/// Cost per resolved session: of the sessions rated (session NPS) in the filter's window, the
/// resolved ones have NPS >= `threshold`. Per group (e.g. model), the rated sessions the group
/// served in, their whole cost, and that cost divided by the resolved ones among them (a
/// session served by two models counts for both).
struct Rated<'a> {
    feedback: &'a dyn crate::store::Store,
    logs: &'a dyn crate::store::Store,
    vis: &'a crate::store::scoped::Visibility,
}

async fn resolved_sessions(
    stores: Rated<'_>,
    filter: &crate::store::LogFilter,
    group_by: &GroupBy,
    threshold: f64,
) -> Result<serde_json::Value, GatewayError> {
    use std::collections::{BTreeMap, HashMap};
    let (from, to) = (
        filter.start_ms.unwrap_or(i64::MIN),
        filter.end_ms.unwrap_or(i64::MAX),
    );
    // The last NPS of each session rated in the window.
    let mut nps: HashMap<String, f64> = HashMap::new();
    let (mut after, mut scanned, mut truncated) = (0i64, 0usize, false);
    loop {
        let page = stores
            .feedback
            .feedback_since(after, 5_000)
            .await
            .map_err(store_err)?;
        let n = page.len();
        scanned += n;
        for f in page {
            after = after.max(f.seq);
            if f.signal != "session_nps"
                || f.at_ms < from
                || f.at_ms > to
                || !stores.vis.sees(f.project.as_deref())
            {
                continue;
            }
            if let Some(s) = f.session_id {
                if nps.len() < MAX_RATED_SESSIONS || nps.contains_key(&s) {
                    nps.insert(s, f.value);
                } else {
                    truncated = true;
                }
            }
        }
        if n < 5_000 {
            break;
        }
        if scanned >= MAX_FEEDBACK_SCAN {
            truncated = true;
            break;
        }
    }
    #[derive(Default)]
    struct Acc {
        sessions: u64,
        resolved: u64,
        cost: f64,
    }
    let mut groups: BTreeMap<String, Acc> = BTreeMap::new();
    let (mut sessions, mut resolved, mut cost) = (0u64, 0u64, 0f64);
    for (sid, score) in &nps {
        let mut f = filter.clone();
        f.session = Some(sid.clone());
        // The session's requests of any time: a session rated in the window is costed whole.
        f.start_ms = None;
        f.end_ms = None;
        let page = stores
            .logs
            .query_logs(&crate::store::LogQuery {
                filter: f,
                limit: 1_000,
                after: None,
            })
            .await
            .map_err(store_err)?;
        if page.records.is_empty() {
            continue;
        }
        let ok = *score >= threshold;
        let session_cost: f64 = page.records.iter().map(|r| r.cost_usd).sum();
        sessions += 1;
        resolved += u64::from(ok);
        cost += session_cost;
        let mut keys: Vec<String> = page
            .records
            .iter()
            .map(|r| match group_by {
                GroupBy::Model => r
                    .served_model
                    .clone()
                    .unwrap_or_else(|| r.requested_model.clone()),
                GroupBy::Provider => r.provider.clone().unwrap_or_default(),
                GroupBy::Project => r.project_id.clone().unwrap_or_default(),
                GroupBy::User => r.user_id.clone().unwrap_or_default(),
                GroupBy::Route => r.route.clone().unwrap_or_default(),
                GroupBy::Key => r.key_id.clone().unwrap_or_default(),
                GroupBy::Property(p) => r
                    .properties
                    .iter()
                    .find(|(k, _)| k == p)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default(),
            })
            .collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let a = groups.entry(k).or_default();
            a.sessions += 1;
            a.resolved += u64::from(ok);
            a.cost += session_cost;
        }
    }
    let per = |cost: f64, resolved: u64| {
        (resolved > 0).then(|| ((cost / resolved as f64) * 1e9).round() / 1e9)
    };
    let data: Vec<serde_json::Value> = groups
        .into_iter()
        .map(|(k, a)| {
            json!({
                "group": k,
                "rated_sessions": a.sessions,
                "resolved_sessions": a.resolved,
                "cost_usd": (a.cost * 1e9).round() / 1e9,
                "cost_per_resolved_session": per(a.cost, a.resolved),
            })
        })
        .collect();
    Ok(json!({
        "threshold_nps": threshold,
        "rated_sessions": sessions,
        "resolved_sessions": resolved,
        "cost_usd": (cost * 1e9).round() / 1e9,
        "cost_per_resolved_session": per(cost, resolved),
        "truncated": truncated,
        "data": data,
    }))
}
