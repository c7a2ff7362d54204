//! Pending feedback: feedback for a request (or a session) the store does not know yet.
//!
//! On a fleet, feedback may reach another instance than the one that served the request,
//! before that instance's writer has flushed the trace. Such feedback is parked in the
//! `pending_feedback` table (bounded: every row expires after
//! `storage.pending_feedback_secs`) and answered `202` with `"status": "pending"`. Every
//! instance's writer runs [`reconcile`] on its tick: a pending event whose target has landed
//! is completed exactly as if it had arrived late (route, model and context from the stored
//! decision) and inserted with its original id; one whose target never lands is dropped when
//! it expires (`GET /v1/feedback/{id}` then answers 404). A session NPS whose session has no
//! routed request yet waits the same way for one, and at expiry is stored crediting none.
//!
//! Settling inserts first and deletes second: two instances settling the same row, or a
//! crash between the two steps, end in one stored event (the insert is deduplicated on
//! `dedup_key`).

use serde_json::{json, Value};

use super::{DecisionQuery, DecisionRow, FeedbackRow, Store, StoreError};
use crate::feedback::router::PickKind;
use crate::trace::TraceRecord;

/// Routed requests of one session an NPS can credit.
pub const MAX_SESSION_REQUESTS: usize = 1000;
/// Pending rows examined per reconcile round.
const RECONCILE_BATCH: usize = 500;

/// One parked event.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingFeedback {
    /// The event's public id (kept when it is settled).
    pub id: String,
    pub dedup_key: String,
    pub request_id: Option<String>,
    pub session_id: Option<String>,
    pub received_ms: i64,
    pub expires_ms: i64,
    /// The [`FeedbackRow`] as JSON, target fields still empty.
    pub row: String,
}

/// Result of parking an event.
#[derive(Debug, Clone, PartialEq)]
pub enum PendingInsert {
    Inserted,
    /// An event with the same `dedup_key` exists, stored (`pending: false`) or pending.
    Duplicate {
        id: String,
        pending: bool,
    },
}

impl PendingFeedback {
    pub fn new(row: &FeedbackRow, expires_ms: i64) -> Result<PendingFeedback, StoreError> {
        Ok(PendingFeedback {
            id: row.id.clone(),
            dedup_key: row.dedup_key.clone(),
            request_id: row.request_id.clone(),
            session_id: row.session_id.clone(),
            received_ms: row.received_ms,
            expires_ms,
            row: serde_json::to_string(row).map_err(|e| StoreError::Query(e.to_string()))?,
        })
    }

    /// The API object for a pending event.
    pub fn to_json(&self) -> Value {
        let what = match (&self.request_id, &self.session_id) {
            (Some(r), _) => format!("request '{r}'"),
            (None, Some(s)) => format!("a routed request of session '{s}'"),
            _ => "its target".into(),
        };
        json!({
            "object": "feedback",
            "id": self.id,
            "status": "pending",
            "request_id": self.request_id,
            "session_id": self.session_id,
            "received_ms": self.received_ms,
            "expires_ms": self.expires_ms,
            "message": format!(
                "Accepted as pending: {what} is not stored yet (it may have been served by another instance). It is applied when the trace lands; if it does not by expires_ms the event is dropped. Check with GET /v1/feedback/{}.",
                self.id
            ),
        })
    }
}

/// Whether a pending event may credit a request of `target` project: an event sent by a key
/// locked to a project (it carries that project) never credits another project's request.
fn same_tenant(row: &FeedbackRow, target: Option<&str>) -> bool {
    row.project.is_none() || row.project.as_deref() == target
}

/// Fill a per-request event's target from the request's stored decision.
pub fn target_from_decision(row: &mut FeedbackRow, d: &DecisionRow) {
    row.project = d.project.clone();
    row.route = Some(d.route.clone());
    row.model = Some(d.served.clone());
    row.context = d.context.clone();
    row.session_id = d.session_id.clone();
    row.at_ms = d.ts_ms;
}

/// Fill a per-request event's target from a request that was not routed (moves no route).
pub fn target_from_trace(row: &mut FeedbackRow, t: &TraceRecord) {
    row.project = t.project_id.clone();
    row.route = None;
    row.model = t.served_model.clone();
    row.context = None;
    row.session_id = t.session_id.clone();
    row.at_ms = t.ts_ms;
}

/// The stored routed requests of a session as NPS targets, and the newest one's time.
pub async fn session_targets(
    store: &dyn Store,
    session: &str,
    project: Option<&str>,
) -> Result<(Vec<(String, String, String)>, i64), StoreError> {
    let rows = store
        .query_decisions(&DecisionQuery {
            session_id: Some(session.to_string()),
            limit: MAX_SESSION_REQUESTS,
            project: project.map(str::to_string),
            ..Default::default()
        })
        .await?;
    let latest = rows.iter().map(|d| d.ts_ms).max().unwrap_or(0);
    let targets = nps_credited(rows.into_iter().map(|d| {
        let held = held_session(&d);
        ((d.route, d.served, d.context.unwrap_or_default()), held)
    }));
    Ok((targets, latest))
}

/// Whether a stored routed request held its session: every pick does except a reference
/// refresh (an explored pick of the baseline, which leaves the session on the promoted model).
pub fn held_session(d: &DecisionRow) -> bool {
    !(d.kind == PickKind::Explored.as_str() && d.chosen == d.baseline)
}

/// The requests a session NPS credits, from each request and whether it held the session
/// ([`held_session`]). A session NPS rates what the session was held on: a reference refresh
/// served the baseline once inside a session held on the promoted model, and crediting it
/// would give the baseline a share of a score that rates the promoted model. A session of
/// such requests alone credits all of them.
pub fn nps_credited<T>(requests: impl IntoIterator<Item = (T, bool)>) -> Vec<T> {
    let all: Vec<(T, bool)> = requests.into_iter().collect();
    let any_held = all.iter().any(|(_, held)| *held);
    all.into_iter()
        .filter(|(_, held)| !any_held || *held)
        .map(|(t, _)| t)
        .collect()
}

/// What one reconcile round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconciled {
    pub settled: usize,
    pub expired: usize,
}

/// Settle the pending events whose target is stored now; drop (request) or store uncredited
/// (session NPS) those past their expiry.
pub async fn reconcile(store: &dyn Store, now_ms: i64) -> Result<Reconciled, StoreError> {
    let mut out = Reconciled::default();
    for p in store.pending_feedback(RECONCILE_BATCH).await? {
        let mut row: FeedbackRow = match serde_json::from_str(&p.row) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(id = %p.id, error = %e, "unreadable pending feedback dropped");
                store.delete_pending_feedback(&p.id).await?;
                continue;
            }
        };
        let expired = p.expires_ms <= now_ms;
        let ready = if row.signal == "session_nps" {
            let sid = row.session_id.clone().unwrap_or_default();
            let (targets, latest) = session_targets(store, &sid, row.project.as_deref()).await?;
            if !targets.is_empty() {
                row.targets = targets;
                row.at_ms = latest;
                true
            } else {
                // Stored for any session: at expiry it is kept, crediting no request.
                expired
            }
        } else {
            let rid = row.request_id.clone().unwrap_or_default();
            let decision = store.get_decision(&rid).await?;
            let trace = match decision {
                Some(_) => None,
                None => store.get_trace(&rid).await?,
            };
            let target_project = match (&decision, &trace) {
                (Some(d), _) => Some(d.project.as_deref()),
                (None, Some(t)) => Some(t.project_id.as_deref()),
                (None, None) => None,
            };
            if let Some(tp) = target_project.filter(|tp| !same_tenant(&row, *tp)) {
                // Another project's request: answered like an unknown id (dropped, never
                // credited; `GET /v1/feedback/{id}` reads 404 as after an expiry).
                tracing::debug!(id = %p.id, target_project = ?tp, "pending feedback for another project's request dropped");
                if store.delete_pending_feedback(&p.id).await? {
                    out.expired += 1;
                }
                false
            } else if let Some(d) = decision {
                target_from_decision(&mut row, &d);
                true
            } else if let Some(t) = trace {
                target_from_trace(&mut row, &t);
                true
            } else {
                if expired && store.delete_pending_feedback(&p.id).await? {
                    out.expired += 1;
                }
                false
            }
        };
        if ready {
            store.insert_feedback(&row).await?;
            if store.delete_pending_feedback(&p.id).await? {
                out.settled += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_nps_skips_the_requests_that_did_not_hold_the_session() {
        assert_eq!(
            nps_credited([("m1", true), ("m0", false), ("m1", true)]),
            vec!["m1", "m1"]
        );
        // Nothing held it: everything is credited, nothing is lost.
        assert_eq!(
            nps_credited([("m0", false), ("m0", false)]),
            vec!["m0", "m0"]
        );
        assert!(nps_credited(Vec::<(&str, bool)>::new()).is_empty());
    }

    #[test]
    fn only_a_reference_refresh_does_not_hold_its_session() {
        let row = |kind: &str, chosen: &str| DecisionRow {
            kind: kind.into(),
            chosen: chosen.into(),
            baseline: "base".into(),
            ..Default::default()
        };
        assert!(!held_session(&row("explored", "base")));
        assert!(held_session(&row("explored", "cand")));
        for kind in [
            "baseline", "promoted", "sticky", "holdback", "canary", "pinned",
        ] {
            assert!(held_session(&row(kind, "base")), "{kind}");
        }
    }
}
