//! Stored state of feedback-driven routing: decisions, feedback events, the audit log and
//! per-route operator state (constraint overrides, pins).
//!
//! Decisions travel with their trace (`TraceRecord::decision`) and are written in the same
//! transaction, so the spill/replay path that protects traces protects decisions too.
//! Feedback rows are append-only with a store-assigned sequence number: every instance's
//! aggregator reads `feedback_since(cursor)` and so folds the same events in the same order.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One routing decision as stored; defined with the trace record that carries it.
pub use crate::trace::DecisionRow;

/// Filter for `GET /v1/decisions`. Ordered by `(ts_ms desc, request_id desc)`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecisionQuery {
    pub session_id: Option<String>,
    pub route: Option<String>,
    /// Matches the served model.
    pub model: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub min_confidence: Option<f64>,
    pub max_confidence: Option<f64>,
    pub min_quality: Option<f64>,
    pub max_quality: Option<f64>,
    /// Keyset cursor: rows strictly older than `(ts_ms, request_id)`.
    pub before: Option<(i64, String)>,
    pub limit: usize,
    /// Only this project's decisions (set by the tenancy scope, see `store::scoped`).
    pub project: Option<String>,
}

/// One feedback event as stored. `route`/`model` (and `targets` for a session NPS) are resolved
/// when the event is accepted, so folding needs no joins and is identical on every instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FeedbackRow {
    /// Assigned by the store on insert (ignored on input); strictly increasing.
    pub seq: i64,
    /// Public event id (`fb_…`).
    pub id: String,
    /// Unique: a second event with the same key is a duplicate (e.g. `request:<id>:feedback`,
    /// `session:<sid>`, `admin:<id>:<key>`).
    pub dedup_key: String,
    /// `feedback`, `judge`, `session_nps`, `admin`.
    pub signal: String,
    pub request_id: Option<String>,
    pub session_id: Option<String>,
    pub route: Option<String>,
    pub model: Option<String>,
    /// Prompt-context bucket of the scored request's decision (contextual routing).
    pub context: Option<String>,
    /// The score as sent (not normalised).
    pub value: f64,
    /// `binary`, `five`, `ten`, `unit`, `nps`.
    pub scale: String,
    /// Session NPS: (route, served model, context bucket or "") of each routed request of the
    /// session.
    pub targets: Vec<(String, String, String)>,
    /// When the scored thing happened (request time); discounting uses this.
    pub at_ms: i64,
    pub received_ms: i64,
    /// Gateway key id of the sender (never the key).
    pub key_id: Option<String>,
    pub comment: Option<String>,
    /// Free JSON detail (judge dimensions, rubric version).
    pub detail: Option<String>,
    /// Project of the scored request(s): the tenancy scope and, on `learning = "project"`
    /// routes, the learning pool the event trains.
    #[serde(default)]
    pub project: Option<String>,
}

/// Result of inserting feedback.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedbackInsert {
    /// Stored with this sequence number.
    Inserted(FeedbackRow),
    /// An event with the same `dedup_key` exists: the stored one, unchanged.
    Duplicate(FeedbackRow),
}

/// What to append to the audit log; the store assigns `seq`, `prev_hash` and `hash`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditAppend {
    pub ts_ms: i64,
    /// Key id of who made the change (`master` for the master key).
    pub actor: String,
    /// e.g. `constraints.update`, `route.pin`, `route.unpin`, `route.auto_pin`.
    pub action: String,
    pub route: Option<String>,
    /// JSON of the old and new values.
    pub old: Option<String>,
    pub new: Option<String>,
    pub reason: Option<String>,
}

/// One audit-log entry: append-only, each hash covers the previous one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub seq: i64,
    pub ts_ms: i64,
    pub actor: String,
    pub action: String,
    pub route: Option<String>,
    pub old: Option<String>,
    pub new: Option<String>,
    pub reason: Option<String>,
    /// Hex SHA-256 of the previous entry (64 zeros for the first).
    pub prev_hash: String,
    pub hash: String,
}

/// The hash of the first entry's predecessor.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

impl AuditEntry {
    /// SHA-256 over a length-prefixed canonical form of every field but `hash`.
    pub fn compute_hash(&self) -> String {
        let mut h = Sha256::new();
        let seq = self.seq.to_string();
        let ts = self.ts_ms.to_string();
        let fields: [Option<&str>; 9] = [
            Some(&seq),
            Some(&ts),
            Some(&self.actor),
            Some(&self.action),
            self.route.as_deref(),
            self.old.as_deref(),
            self.new.as_deref(),
            self.reason.as_deref(),
            Some(&self.prev_hash),
        ];
        for f in fields {
            match f {
                // Length prefixes keep ("ab","c") and ("a","bc") apart; None differs from "".
                Some(s) => {
                    h.update(b"s");
                    h.update((s.len() as u64).to_be_bytes());
                    h.update(s.as_bytes());
                }
                None => h.update(b"n"),
            }
        }
        hex::encode(h.finalize())
    }

    /// Build the next entry of a chain from its predecessor's hash and sequence.
    pub fn next(prev: Option<(&str, i64)>, a: AuditAppend) -> AuditEntry {
        let (prev_hash, seq) = match prev {
            Some((h, s)) => (h.to_string(), s + 1),
            None => (GENESIS_HASH.to_string(), 1),
        };
        let mut e = AuditEntry {
            seq,
            ts_ms: a.ts_ms,
            actor: a.actor,
            action: a.action,
            route: a.route,
            old: a.old,
            new: a.new,
            reason: a.reason,
            prev_hash,
            hash: String::new(),
        };
        e.hash = e.compute_hash();
        e
    }
}

/// Check a contiguous run of entries: each hash matches its content and links to the previous.
/// `prev` is the hash before the first entry (GENESIS for a chain starting at seq 1).
pub fn verify_chain(prev: &str, entries: &[AuditEntry]) -> Result<(), String> {
    let mut prev = prev.to_string();
    for e in entries {
        if e.prev_hash != prev {
            return Err(format!("entry {}: prev_hash does not link", e.seq));
        }
        if e.compute_hash() != e.hash {
            return Err(format!("entry {}: hash does not match its content", e.seq));
        }
        prev.clone_from(&e.hash);
    }
    Ok(())
}

/// Operator state of a route that outlives restarts and is shared by every instance.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RouteStateRow {
    pub route: String,
    /// `constraints` (JSON of the override), `pin` (JSON `{"model":..,"reason":..}`), `mode`.
    pub key: String,
    pub value: String,
    pub updated_ms: i64,
}

/// A per-request score joined with the decision it scores (canaries and rollback monitors).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScoredDecision {
    /// Feedback sequence number (replay order).
    pub seq: i64,
    pub request_id: String,
    /// Decision time.
    pub ts_ms: i64,
    /// Decision kind (`holdback`, `canary`, `promoted`, ...).
    pub kind: String,
    pub served: String,
    pub baseline: String,
    /// `feedback`, `judge` or `admin`.
    pub signal: String,
    pub value: f64,
    pub scale: String,
}

/// Served-traffic aggregates of one (route, served model) since a time (shadow rows excluded).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteModelStats {
    pub route: String,
    pub model: String,
    pub requests: u64,
    /// Requests that ended in an error status (>= 400) or an error message.
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// p95 of latency_ms over the most recent (at most 5,000) rows of the window.
    pub p95_latency_ms: Option<f64>,
}

/// Requests one model served on a route among the route's most recent decisions (the
/// realized exploration account of the quality budget, docs/routing-math.md §3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteServed {
    pub route: String,
    /// The route's model name as the decision recorded it (`decisions.served`).
    pub model: String,
    pub requests: u64,
}

/// Served-model counts of one route over its last `LIMIT` decisions, newest by `ts_ms`
/// (parameters: route, limit; an index range scan of `decisions_route_ts`).
pub(crate) fn recent_served_sql(pg: bool) -> String {
    let (cast, r, l) = if pg {
        ("::BIGINT", "$1", "$2")
    } else {
        ("", "?1", "?2")
    };
    format!(
        "SELECT served, COUNT(*){cast} FROM (SELECT served FROM decisions WHERE route = {r} \
         ORDER BY ts_ms DESC LIMIT {l}) AS w GROUP BY served ORDER BY served"
    )
}

/// Upper bound of `last` in `Store::recent_served` (the setting is validated below it).
pub const MAX_RECENT_SERVED: usize = 1_000_000;

// ---- helpers shared by the two backends (crate-internal) ----

/// Column order of `decisions` reads and writes.
pub(crate) const DECISION_COLS: &str =
    "request_id, ts_ms, route, mode, session_id, chosen, served, \
baseline, context, kind, shadow, confidence, quality, propensity, table_version, signed, project_id";
pub(crate) const DECISION_NCOLS: usize = 17;

/// Column order of `feedback` reads (`seq` first) and writes (without `seq`).
pub(crate) const FEEDBACK_COLS: &str =
    "id, dedup_key, signal, request_id, session_id, route, model, \
context, value, scale, targets, at_ms, received_ms, key_id, comment, detail, project_id";
pub(crate) const FEEDBACK_NCOLS: usize = 17;

/// Column order of `audit_log` reads and writes.
pub(crate) const AUDIT_COLS: &str =
    "seq, ts_ms, actor, action, route, old_value, new_value, reason, prev_hash, hash";

/// Most recent rows per (route, model) that the p95 latency is computed over.
pub(crate) const P95_WINDOW: i64 = 5_000;
/// Upper bound of one `query_decisions` page.
pub(crate) const MAX_DECISIONS: usize = 1_000;

/// A bound parameter of the routing queries (floats are needed for the confidence filters).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RParam {
    Int(i64),
    Real(f64),
    Text(String),
}

/// `SELECT` text and parameters for a decision query (`pg` selects `$N` placeholders).
/// `to_ms` is exclusive, like the logs filters.
pub(crate) fn decisions_sql(q: &DecisionQuery, pg: bool) -> (String, Vec<RParam>) {
    let mut ps: Vec<RParam> = Vec::new();
    let mut conds: Vec<String> = Vec::new();
    let p = |ps: &mut Vec<RParam>, v: RParam| {
        ps.push(v);
        if pg {
            format!("${}", ps.len())
        } else {
            format!("?{}", ps.len())
        }
    };
    let text_eq = [
        ("session_id", &q.session_id),
        ("route", &q.route),
        ("served", &q.model),
        ("project_id", &q.project),
    ];
    for (col, v) in text_eq {
        if let Some(v) = v {
            let ph = p(&mut ps, RParam::Text(v.clone()));
            conds.push(format!("{col} = {ph}"));
        }
    }
    if let Some(f) = q.from_ms {
        let ph = p(&mut ps, RParam::Int(f));
        conds.push(format!("ts_ms >= {ph}"));
    }
    if let Some(t) = q.to_ms {
        let ph = p(&mut ps, RParam::Int(t));
        conds.push(format!("ts_ms < {ph}"));
    }
    let ranges = [
        ("confidence", ">=", q.min_confidence),
        ("confidence", "<=", q.max_confidence),
        ("quality", ">=", q.min_quality),
        ("quality", "<=", q.max_quality),
    ];
    for (col, op, v) in ranges {
        if let Some(v) = v {
            let ph = p(&mut ps, RParam::Real(v));
            conds.push(format!("{col} {op} {ph}"));
        }
    }
    if let Some((ts, id)) = &q.before {
        let a = p(&mut ps, RParam::Int(*ts));
        let b = p(&mut ps, RParam::Int(*ts));
        let c = p(&mut ps, RParam::Text(id.clone()));
        conds.push(format!(
            "(ts_ms < {a} OR (ts_ms = {b} AND request_id < {c}))"
        ));
    }
    let mut sql = format!("SELECT {DECISION_COLS} FROM decisions");
    if !conds.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conds.join(" AND "));
    }
    let lim = p(&mut ps, RParam::Int(q.limit.min(MAX_DECISIONS) as i64));
    sql.push_str(&format!(
        " ORDER BY ts_ms DESC, request_id DESC LIMIT {lim}"
    ));
    (sql, ps)
}

/// Shared `WHERE` of `route_model_stats` (one parameter: `since_ms`).
pub(crate) fn stats_where(pg: bool) -> String {
    let ph = if pg { "$1" } else { "?1" };
    format!(
        "ts_ms >= {ph} AND route IS NOT NULL AND served_model IS NOT NULL AND NOT shadow \
         AND endpoint <> 'judge'"
    )
}

/// Per (route, model) totals: route, model, requests, errors, prompt, completion, cost.
pub(crate) fn stats_totals_sql(pg: bool) -> String {
    let cast = if pg { "::BIGINT" } else { "" };
    format!(
        "SELECT route, served_model, COUNT(*){cast}, \
         SUM(CASE WHEN status >= 400 OR error IS NOT NULL THEN 1 ELSE 0 END){cast}, \
         SUM(prompt_tokens){cast}, SUM(completion_tokens){cast}, SUM(cost_usd) \
         FROM traces WHERE {} GROUP BY route, served_model ORDER BY route, served_model",
        stats_where(pg)
    )
}

/// The latencies of the most recent `P95_WINDOW` rows of each (route, model).
pub(crate) fn stats_latency_sql(pg: bool) -> String {
    format!(
        "SELECT route, served_model, latency_ms FROM (SELECT route, served_model, latency_ms, \
         ROW_NUMBER() OVER (PARTITION BY route, served_model ORDER BY ts_ms DESC, request_id DESC) AS rn \
         FROM traces WHERE {}) AS w WHERE rn <= {P95_WINDOW}",
        stats_where(pg)
    )
}

/// Nearest-rank percentile (`q` in (0, 1]): the smallest value with at least `q` of the
/// values at or below it. Sorts `v`; `None` when empty. NaNs sort last.
pub fn percentile_nearest_rank(v: &mut [f64], q: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = (q * v.len() as f64).ceil() as usize;
    let i = rank.clamp(1, v.len()) - 1;
    v.get(i).copied()
}

/// Merge per-group totals with their latency samples into `RouteModelStats`.
pub(crate) fn assemble_stats(
    mut totals: Vec<RouteModelStats>,
    mut latencies: std::collections::HashMap<(String, String), Vec<f64>>,
) -> Vec<RouteModelStats> {
    for t in &mut totals {
        if let Some(v) = latencies.get_mut(&(t.route.clone(), t.model.clone())) {
            t.p95_latency_ms = percentile_nearest_rank(v, 0.95);
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(i: i64) -> AuditAppend {
        AuditAppend {
            ts_ms: 1_000 + i,
            actor: "k1".into(),
            action: "constraints.update".into(),
            route: Some("default".into()),
            old: Some("{}".into()),
            new: Some(format!("{{\"min_samples\":{i}}}")),
            reason: None,
        }
    }

    #[test]
    fn chain_links_and_detects_tampering() {
        let a = AuditEntry::next(None, append(1));
        let b = AuditEntry::next(Some((&a.hash, a.seq)), append(2));
        assert_eq!(a.prev_hash, GENESIS_HASH);
        assert_eq!(b.seq, 2);
        let mut chain = vec![a, b];
        assert!(verify_chain(GENESIS_HASH, &chain).is_ok());
        chain[0].new = Some("{\"min_samples\":99}".into());
        assert!(verify_chain(GENESIS_HASH, &chain).is_err());
    }

    #[test]
    fn none_and_empty_hash_differently() {
        let mut a = AuditEntry::next(None, append(1));
        let h1 = a.compute_hash();
        a.reason = Some(String::new());
        assert_ne!(h1, a.compute_hash());
    }

    #[test]
    fn nearest_rank_percentile() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile_nearest_rank(&mut v, 0.95), Some(95.0));
        let mut v = vec![3.0, 1.0, 2.0];
        assert_eq!(percentile_nearest_rank(&mut v, 0.95), Some(3.0));
        assert_eq!(percentile_nearest_rank(&mut v, 0.5), Some(2.0));
        assert_eq!(percentile_nearest_rank(&mut [], 0.95), None);
        assert_eq!(percentile_nearest_rank(&mut [7.0], 0.95), Some(7.0));
    }

    #[test]
    fn decision_query_numbers_placeholders_in_order() {
        let q = DecisionQuery {
            route: Some("r".into()),
            min_confidence: Some(0.5),
            before: Some((10, "x".into())),
            limit: 5_000,
            ..Default::default()
        };
        let (sql, ps) = decisions_sql(&q, true);
        assert!(
            sql.contains("route = $1") && sql.contains("confidence >= $2"),
            "{sql}"
        );
        assert!(sql.ends_with("LIMIT $6"), "{sql}");
        assert_eq!(ps.len(), 6);
        assert_eq!(ps[5], RParam::Int(MAX_DECISIONS as i64));
        let (sql, _) = decisions_sql(&DecisionQuery::default(), false);
        assert!(!sql.contains("WHERE") && sql.ends_with("LIMIT ?1"), "{sql}");
    }
}
