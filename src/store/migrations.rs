//! Versioned schema migrations, one list per backend, applied in order on open and
//! recorded in `schema_migrations(version, name, applied_ms)`.
//!
//! Append new migrations (feedback, decisions, audit, config state) at the end with the
//! next version number; never edit an applied one.

/// One migration: version, name, SQL (may hold several statements).
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

pub const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "traces",
        sql: r#"
CREATE TABLE traces (
    request_id TEXT PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    endpoint TEXT NOT NULL,
    key_id TEXT,
    session_id TEXT,
    session_name TEXT,
    session_path TEXT,
    project_id TEXT,
    user_id TEXT,
    route TEXT,
    requested_model TEXT NOT NULL,
    served_model TEXT,
    provider TEXT,
    status INTEGER NOT NULL,
    stream INTEGER NOT NULL,
    cancelled INTEGER NOT NULL,
    fallback_used INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens INTEGER NOT NULL,
    cache_creation_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    usage_reported INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    latency_ms REAL NOT NULL,
    ttft_ms REAL,
    request_bytes INTEGER NOT NULL,
    response_bytes INTEGER NOT NULL,
    error TEXT,
    decision_id TEXT,
    zero_retention INTEGER NOT NULL,
    shadow INTEGER NOT NULL,
    properties TEXT NOT NULL,
    attempts TEXT NOT NULL,
    request_body TEXT,
    response_body TEXT
);
CREATE INDEX traces_ts ON traces (ts_ms, request_id);
CREATE INDEX traces_project_ts ON traces (project_id, ts_ms);
CREATE INDEX traces_session_ts ON traces (session_id, ts_ms);
CREATE INDEX traces_user_ts ON traces (user_id, ts_ms);
CREATE INDEX traces_served_model_ts ON traces (served_model, ts_ms);
CREATE INDEX traces_requested_model_ts ON traces (requested_model, ts_ms);
CREATE INDEX traces_provider_ts ON traces (provider, ts_ms);
CREATE INDEX traces_decision ON traces (decision_id) WHERE decision_id IS NOT NULL;
CREATE TABLE trace_properties (
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    request_id TEXT NOT NULL,
    ts_ms INTEGER NOT NULL,
    PRIMARY KEY (name, value, request_id)
) WITHOUT ROWID;
CREATE INDEX trace_properties_request ON trace_properties (request_id);
CREATE TABLE rollup_hourly (
    dim TEXT NOT NULL,
    bucket_ms INTEGER NOT NULL,
    value TEXT NOT NULL,
    project_id TEXT NOT NULL,
    requests INTEGER NOT NULL,
    errors INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL,
    latency_sum_ms REAL NOT NULL,
    hist TEXT NOT NULL,
    PRIMARY KEY (dim, bucket_ms, value, project_id)
) WITHOUT ROWID;
CREATE INDEX rollup_hourly_project ON rollup_hourly (dim, project_id, bucket_ms);
"#,
    },
    Migration {
        version: 2,
        name: "routing",
        sql: r#"
CREATE TABLE decisions (
    request_id TEXT PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    route TEXT NOT NULL,
    mode TEXT NOT NULL,
    session_id TEXT,
    chosen TEXT NOT NULL,
    served TEXT NOT NULL,
    baseline TEXT NOT NULL,
    context TEXT,
    kind TEXT NOT NULL,
    shadow INTEGER NOT NULL,
    confidence REAL,
    quality REAL,
    propensity REAL NOT NULL,
    table_version INTEGER NOT NULL,
    signed TEXT NOT NULL
);
CREATE INDEX decisions_ts ON decisions (ts_ms, request_id);
CREATE INDEX decisions_session_ts ON decisions (session_id, ts_ms);
CREATE INDEX decisions_route_ts ON decisions (route, ts_ms);
CREATE INDEX decisions_served_ts ON decisions (served, ts_ms);
CREATE TABLE feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    dedup_key TEXT NOT NULL UNIQUE,
    signal TEXT NOT NULL,
    request_id TEXT,
    session_id TEXT,
    route TEXT,
    model TEXT,
    context TEXT,
    value REAL NOT NULL,
    scale TEXT NOT NULL,
    targets TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    received_ms INTEGER NOT NULL,
    key_id TEXT,
    comment TEXT,
    detail TEXT
);
CREATE INDEX feedback_request ON feedback (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX feedback_session ON feedback (session_id) WHERE session_id IS NOT NULL;
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    route TEXT,
    old_value TEXT,
    new_value TEXT,
    reason TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE route_state (
    route TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (route, key)
);
"#,
    },
    Migration {
        version: 3,
        name: "project_scope",
        // The tenancy scope of decisions and feedback (see `store::scoped`); older rows take
        // their trace's project.
        sql: r#"
ALTER TABLE decisions ADD COLUMN project_id TEXT;
ALTER TABLE feedback ADD COLUMN project_id TEXT;
UPDATE decisions SET project_id = (SELECT t.project_id FROM traces t WHERE t.request_id = decisions.request_id);
UPDATE feedback SET project_id = (SELECT d.project_id FROM decisions d WHERE d.request_id = feedback.request_id) WHERE request_id IS NOT NULL;
CREATE INDEX decisions_project_ts ON decisions (project_id, ts_ms);
"#,
    },
    Migration {
        version: 4,
        name: "pending_feedback",
        // Feedback whose request is not stored yet (see `store::pending`); every row expires.
        sql: r#"
CREATE TABLE pending_feedback (
    id TEXT PRIMARY KEY,
    dedup_key TEXT NOT NULL UNIQUE,
    request_id TEXT,
    session_id TEXT,
    received_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    row_json TEXT NOT NULL
);
CREATE INDEX pending_feedback_received ON pending_feedback (received_ms);
"#,
    },
    Migration {
        version: 5,
        name: "cost_unknown",
        sql: "ALTER TABLE traces ADD COLUMN cost_unknown INTEGER NOT NULL DEFAULT 0;",
    },
    Migration {
        version: 6,
        name: "virtual_keys",
        sql: r#"
CREATE TABLE virtual_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    project TEXT,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
"#,
    },
    Migration {
        version: 7,
        name: "mcp_tokens",
        sql: r#"
CREATE TABLE mcp_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    project TEXT,
    spec TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    revoked_ms INTEGER
);
CREATE INDEX mcp_tokens_expires ON mcp_tokens (expires_ms);
"#,
    },
];

pub const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "traces",
        sql: r#"
CREATE TABLE traces (
    request_id TEXT PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    endpoint TEXT NOT NULL,
    key_id TEXT,
    session_id TEXT,
    session_name TEXT,
    session_path TEXT,
    project_id TEXT,
    user_id TEXT,
    route TEXT,
    requested_model TEXT NOT NULL,
    served_model TEXT,
    provider TEXT,
    status BIGINT NOT NULL,
    stream BOOLEAN NOT NULL,
    cancelled BOOLEAN NOT NULL,
    fallback_used BOOLEAN NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cached_tokens BIGINT NOT NULL,
    cache_creation_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    usage_reported BOOLEAN NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    latency_ms DOUBLE PRECISION NOT NULL,
    ttft_ms DOUBLE PRECISION,
    request_bytes BIGINT NOT NULL,
    response_bytes BIGINT NOT NULL,
    error TEXT,
    decision_id TEXT,
    zero_retention BOOLEAN NOT NULL,
    shadow BOOLEAN NOT NULL,
    properties TEXT NOT NULL,
    attempts TEXT NOT NULL,
    request_body TEXT,
    response_body TEXT
);
CREATE INDEX traces_ts ON traces (ts_ms, request_id);
CREATE INDEX traces_project_ts ON traces (project_id, ts_ms);
CREATE INDEX traces_session_ts ON traces (session_id, ts_ms);
CREATE INDEX traces_user_ts ON traces (user_id, ts_ms);
CREATE INDEX traces_served_model_ts ON traces (served_model, ts_ms);
CREATE INDEX traces_requested_model_ts ON traces (requested_model, ts_ms);
CREATE INDEX traces_provider_ts ON traces (provider, ts_ms);
CREATE INDEX traces_decision ON traces (decision_id) WHERE decision_id IS NOT NULL;
CREATE TABLE trace_properties (
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    request_id TEXT NOT NULL,
    ts_ms BIGINT NOT NULL,
    PRIMARY KEY (name, value, request_id)
);
CREATE INDEX trace_properties_request ON trace_properties (request_id);
CREATE TABLE rollup_hourly (
    dim TEXT NOT NULL,
    bucket_ms BIGINT NOT NULL,
    value TEXT NOT NULL,
    project_id TEXT NOT NULL,
    requests BIGINT NOT NULL,
    errors BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL,
    completion_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    latency_sum_ms DOUBLE PRECISION NOT NULL,
    hist TEXT NOT NULL,
    PRIMARY KEY (dim, bucket_ms, value, project_id)
);
CREATE INDEX rollup_hourly_project ON rollup_hourly (dim, project_id, bucket_ms);
"#,
    },
    Migration {
        version: 2,
        name: "routing",
        sql: r#"
CREATE TABLE decisions (
    request_id TEXT PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    route TEXT NOT NULL,
    mode TEXT NOT NULL,
    session_id TEXT,
    chosen TEXT NOT NULL,
    served TEXT NOT NULL,
    baseline TEXT NOT NULL,
    context TEXT,
    kind TEXT NOT NULL,
    shadow BOOLEAN NOT NULL,
    confidence DOUBLE PRECISION,
    quality DOUBLE PRECISION,
    propensity DOUBLE PRECISION NOT NULL,
    table_version BIGINT NOT NULL,
    signed TEXT NOT NULL
);
CREATE INDEX decisions_ts ON decisions (ts_ms, request_id);
CREATE INDEX decisions_session_ts ON decisions (session_id, ts_ms);
CREATE INDEX decisions_route_ts ON decisions (route, ts_ms);
CREATE INDEX decisions_served_ts ON decisions (served, ts_ms);
CREATE TABLE feedback (
    seq BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    dedup_key TEXT NOT NULL UNIQUE,
    signal TEXT NOT NULL,
    request_id TEXT,
    session_id TEXT,
    route TEXT,
    model TEXT,
    context TEXT,
    value DOUBLE PRECISION NOT NULL,
    scale TEXT NOT NULL,
    targets TEXT NOT NULL,
    at_ms BIGINT NOT NULL,
    received_ms BIGINT NOT NULL,
    key_id TEXT,
    comment TEXT,
    detail TEXT
);
CREATE INDEX feedback_request ON feedback (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX feedback_session ON feedback (session_id) WHERE session_id IS NOT NULL;
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    ts_ms BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    route TEXT,
    old_value TEXT,
    new_value TEXT,
    reason TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE route_state (
    route TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_ms BIGINT NOT NULL,
    PRIMARY KEY (route, key)
);
"#,
    },
    Migration {
        version: 3,
        name: "project_scope",
        // The tenancy scope of decisions and feedback (see `store::scoped`); older rows take
        // their trace's project.
        sql: r#"
ALTER TABLE decisions ADD COLUMN project_id TEXT;
ALTER TABLE feedback ADD COLUMN project_id TEXT;
UPDATE decisions SET project_id = (SELECT t.project_id FROM traces t WHERE t.request_id = decisions.request_id);
UPDATE feedback SET project_id = (SELECT d.project_id FROM decisions d WHERE d.request_id = feedback.request_id) WHERE request_id IS NOT NULL;
CREATE INDEX decisions_project_ts ON decisions (project_id, ts_ms);
"#,
    },
    Migration {
        version: 4,
        name: "pending_feedback",
        // Feedback whose request is not stored yet (see `store::pending`); every row expires.
        sql: r#"
CREATE TABLE pending_feedback (
    id TEXT PRIMARY KEY,
    dedup_key TEXT NOT NULL UNIQUE,
    request_id TEXT,
    session_id TEXT,
    received_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    row_json TEXT NOT NULL
);
CREATE INDEX pending_feedback_received ON pending_feedback (received_ms);
"#,
    },
    Migration {
        version: 5,
        name: "cost_unknown",
        sql: "ALTER TABLE traces ADD COLUMN cost_unknown BOOLEAN NOT NULL DEFAULT FALSE;",
    },
    Migration {
        version: 6,
        name: "virtual_keys",
        sql: r#"
CREATE TABLE virtual_keys (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    project TEXT,
    spec TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
"#,
    },
    Migration {
        version: 7,
        name: "mcp_tokens",
        sql: r#"
CREATE TABLE mcp_tokens (
    id TEXT PRIMARY KEY,
    hash TEXT NOT NULL UNIQUE,
    project TEXT,
    spec TEXT NOT NULL,
    created_ms BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    revoked_ms BIGINT
);
CREATE INDEX mcp_tokens_expires ON mcp_tokens (expires_ms);
"#,
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase() {
        for list in [SQLITE, POSTGRES] {
            for (i, m) in list.iter().enumerate() {
                assert_eq!(m.version as usize, i + 1, "{}", m.name);
            }
        }
        // Both backends keep the same schema version sequence.
        let names = |l: &[Migration]| l.iter().map(|m| m.name).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES));
    }

    /// Every SQLite migration applies, in order, to an empty in-memory database.
    #[test]
    fn sqlite_migrations_apply() {
        let c = rusqlite::Connection::open_in_memory().expect("memory db");
        for m in SQLITE {
            c.execute_batch(m.sql).expect(m.name);
        }
        let n: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name IN \
                 ('decisions', 'feedback', 'audit_log', 'route_state', 'pending_feedback')",
                [],
                |r| r.get(0),
            )
            .expect("tables");
        assert_eq!(n, 5);
    }
}
