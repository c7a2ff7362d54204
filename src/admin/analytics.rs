//! `GET /v1/analytics?group_by=...&bucket=...&start=&end=&<filters>`: requests, errors,
//! error rate, tokens, cost and p50/p95 latency per group and time bucket.

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
    check_params(req, &["group_by", "bucket"])?;
    let group_name = req.param("group_by").unwrap_or("model");
    let group_by = GroupBy::parse(group_name).ok_or_else(|| {
        GatewayError::invalid(
            "'group_by' must be one of model, provider, project, user, route, property:<name>",
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
    let (mut requests, mut errors, mut pt, mut ct, mut cost) = (0u64, 0u64, 0u64, 0u64, 0f64);
    for r in &rows {
        requests += r.requests;
        errors += r.errors;
        pt += r.prompt_tokens;
        ct += r.completion_tokens;
        cost += r.cost_usd;
    }
    Ok(AdminResponse::json(
        200,
        &json!({
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
            },
            "data": rows,
        }),
    ))
}
