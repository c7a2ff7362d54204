//! Versioned schema migrations, applied in order on open and recorded in
//! `schema_migrations(version, name, applied_ms)`.
//!
//! One list for both backends: each migration's SQL is written once, with a placeholder
//! wherever SQLite and PostgreSQL spell a column type or clause differently (see [`TYPES`]),
//! and rendered per backend by [`Migration::sql`]. Append new migrations at the end with the
//! next version number; never edit an applied one (its rendered text is what a database
//! already ran).

/// A backend the migrations are rendered for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    Sqlite,
    Postgres,
}

/// The spellings that differ: placeholder, SQLite, PostgreSQL. Everything else in a
/// migration is SQL both accept.
pub const TYPES: &[(&str, &str, &str)] = &[
    // A 64-bit row id that counts up (feedback sequence numbers).
    (
        "{SERIAL_PK}",
        "INTEGER PRIMARY KEY AUTOINCREMENT",
        "BIGSERIAL PRIMARY KEY",
    ),
    ("{INT_PK}", "INTEGER PRIMARY KEY", "BIGINT PRIMARY KEY"),
    ("{INT}", "INTEGER", "BIGINT"),
    ("{REAL}", "REAL", "DOUBLE PRECISION"),
    // SQLite has no boolean type: 0 / 1 in an INTEGER column.
    ("{BOOL}", "INTEGER", "BOOLEAN"),
    ("{FALSE}", "0", "FALSE"),
    // Index-organised tables (SQLite only; PostgreSQL keeps a heap and a primary key index).
    ("{WITHOUT_ROWID}", " WITHOUT ROWID", ""),
];

/// One migration: version, name, SQL template (may hold several statements).
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    sql: &'static str,
}

impl Migration {
    /// The migration's SQL for one backend.
    pub fn sql(&self, dialect: SqlDialect) -> String {
        let mut s = self.sql.to_string();
        for (placeholder, sqlite, postgres) in TYPES {
            let spelled = match dialect {
                SqlDialect::Sqlite => sqlite,
                SqlDialect::Postgres => postgres,
            };
            s = s.replace(placeholder, spelled);
        }
        s
    }
}

/// Every migration, oldest first (both backends share the version sequence).
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "traces",
        sql: r#"
CREATE TABLE traces (
    request_id TEXT PRIMARY KEY,
    ts_ms {INT} NOT NULL,
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
    status {INT} NOT NULL,
    stream {BOOL} NOT NULL,
    cancelled {BOOL} NOT NULL,
    fallback_used {BOOL} NOT NULL,
    prompt_tokens {INT} NOT NULL,
    completion_tokens {INT} NOT NULL,
    cached_tokens {INT} NOT NULL,
    cache_creation_tokens {INT} NOT NULL,
    reasoning_tokens {INT} NOT NULL,
    usage_reported {BOOL} NOT NULL,
    cost_usd {REAL} NOT NULL,
    latency_ms {REAL} NOT NULL,
    ttft_ms {REAL},
    request_bytes {INT} NOT NULL,
    response_bytes {INT} NOT NULL,
    error TEXT,
    decision_id TEXT,
    zero_retention {BOOL} NOT NULL,
    shadow {BOOL} NOT NULL,
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
    ts_ms {INT} NOT NULL,
    PRIMARY KEY (name, value, request_id)
){WITHOUT_ROWID};
CREATE INDEX trace_properties_request ON trace_properties (request_id);
CREATE TABLE rollup_hourly (
    dim TEXT NOT NULL,
    bucket_ms {INT} NOT NULL,
    value TEXT NOT NULL,
    project_id TEXT NOT NULL,
    requests {INT} NOT NULL,
    errors {INT} NOT NULL,
    prompt_tokens {INT} NOT NULL,
    completion_tokens {INT} NOT NULL,
    cost_usd {REAL} NOT NULL,
    latency_sum_ms {REAL} NOT NULL,
    hist TEXT NOT NULL,
    PRIMARY KEY (dim, bucket_ms, value, project_id)
){WITHOUT_ROWID};
CREATE INDEX rollup_hourly_project ON rollup_hourly (dim, project_id, bucket_ms);
"#,
    },
    Migration {
        version: 2,
        name: "routing",
        sql: r#"
CREATE TABLE decisions (
    request_id TEXT PRIMARY KEY,
    ts_ms {INT} NOT NULL,
    route TEXT NOT NULL,
    mode TEXT NOT NULL,
    session_id TEXT,
    chosen TEXT NOT NULL,
    served TEXT NOT NULL,
    baseline TEXT NOT NULL,
    context TEXT,
    kind TEXT NOT NULL,
    shadow {BOOL} NOT NULL,
    confidence {REAL},
    quality {REAL},
    propensity {REAL} NOT NULL,
    table_version {INT} NOT NULL,
    signed TEXT NOT NULL
);
CREATE INDEX decisions_ts ON decisions (ts_ms, request_id);
CREATE INDEX decisions_session_ts ON decisions (session_id, ts_ms);
CREATE INDEX decisions_route_ts ON decisions (route, ts_ms);
CREATE INDEX decisions_served_ts ON decisions (served, ts_ms);
CREATE TABLE feedback (
    seq {SERIAL_PK},
    id TEXT NOT NULL UNIQUE,
    dedup_key TEXT NOT NULL UNIQUE,
    signal TEXT NOT NULL,
    request_id TEXT,
    session_id TEXT,
    route TEXT,
    model TEXT,
    context TEXT,
    value {REAL} NOT NULL,
    scale TEXT NOT NULL,
    targets TEXT NOT NULL,
    at_ms {INT} NOT NULL,
    received_ms {INT} NOT NULL,
    key_id TEXT,
    comment TEXT,
    detail TEXT
);
CREATE INDEX feedback_request ON feedback (request_id) WHERE request_id IS NOT NULL;
CREATE INDEX feedback_session ON feedback (session_id) WHERE session_id IS NOT NULL;
CREATE TABLE audit_log (
    seq {INT_PK},
    ts_ms {INT} NOT NULL,
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
    updated_ms {INT} NOT NULL,
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
        sql: "ALTER TABLE traces ADD COLUMN cost_unknown {BOOL} NOT NULL DEFAULT {FALSE};",
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
    created_ms {INT} NOT NULL,
    updated_ms {INT} NOT NULL,
    revoked_ms {INT}
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
    created_ms {INT} NOT NULL,
    expires_ms {INT} NOT NULL,
    revoked_ms {INT}
);
CREATE INDEX mcp_tokens_expires ON mcp_tokens (expires_ms);
"#,
    },
    Migration {
        version: 8,
        name: "provider_keys",
        // Provider API keys added at runtime, encrypted (`auth::provider_keys`).
        sql: r#"
CREATE TABLE provider_keys (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    label TEXT,
    weight {INT} NOT NULL,
    last4 TEXT NOT NULL,
    kid TEXT NOT NULL,
    secret TEXT NOT NULL,
    created_ms {INT} NOT NULL,
    updated_ms {INT} NOT NULL
);
CREATE INDEX provider_keys_provider ON provider_keys (provider, created_ms);
"#,
    },
    Migration {
        version: 9,
        name: "traces_partial_indexes",
        // Less B-tree work per stored trace. Every query that reads `traces` by project,
        // session or user compares the column with a value (`project_id = ?`), which implies
        // `IS NOT NULL`, so both backends still use these indexes for it; rows without a
        // project, session or user (most plain requests) no longer get an entry. Nothing
        // reads `traces` by `decision_id` (a decision is found by its request id), so that
        // index goes. Rebuilding the three indexes reads the table once, under the
        // migration's write lock.
        sql: r#"
DROP INDEX traces_project_ts;
CREATE INDEX traces_project_ts ON traces (project_id, ts_ms) WHERE project_id IS NOT NULL;
DROP INDEX traces_session_ts;
CREATE INDEX traces_session_ts ON traces (session_id, ts_ms) WHERE session_id IS NOT NULL;
DROP INDEX traces_user_ts;
CREATE INDEX traces_user_ts ON traces (user_id, ts_ms) WHERE user_id IS NOT NULL;
DROP INDEX traces_decision;
"#,
    },
];

/// The newest schema version.
pub fn latest_version() -> u32 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase() {
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1, "{}", m.name);
        }
        assert_eq!(latest_version() as usize, MIGRATIONS.len());
    }

    /// Every placeholder is rendered: no `{...}` is left for either backend.
    #[test]
    fn every_placeholder_is_rendered() {
        for m in MIGRATIONS {
            for d in [SqlDialect::Sqlite, SqlDialect::Postgres] {
                let sql = m.sql(d);
                assert!(!sql.contains('{'), "{} ({d:?}): {sql}", m.name);
            }
        }
        assert!(MIGRATIONS[0]
            .sql(SqlDialect::Postgres)
            .contains("ts_ms BIGINT NOT NULL"));
        assert!(MIGRATIONS[0]
            .sql(SqlDialect::Sqlite)
            .contains(") WITHOUT ROWID;"));
    }

    /// Every SQLite migration applies, in order, to an empty in-memory database.
    #[test]
    fn sqlite_migrations_apply() {
        let c = rusqlite::Connection::open_in_memory().expect("memory db");
        for m in MIGRATIONS {
            c.execute_batch(&m.sql(SqlDialect::Sqlite)).expect(m.name);
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
