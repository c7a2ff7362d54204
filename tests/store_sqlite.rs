//! The trace pipeline and read API on a real SQLite file.

#[path = "support/store_cases.rs"]
mod cases;

use std::time::Duration;

use cases::{load_records, Pipeline};
use loopgate::metrics::metrics;
use loopgate::store::writer::trace_pipeline;
use loopgate::store::{Backend, StorageConfig};

/// The newest migration (every migration recorded once, numbered 1..=latest).
fn latest() -> u32 {
    loopgate::store::migrations::latest_version()
}

fn cfg(dir: &tempfile::TempDir) -> StorageConfig {
    StorageConfig {
        backend: Backend::Sqlite,
        sqlite_path: dir
            .path()
            .join("loopgate.db")
            .to_string_lossy()
            .into_owned(),
        spill_path: dir
            .path()
            .join("spill.jsonl")
            .to_string_lossy()
            .into_owned(),
        flush_interval_ms: 20,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_endpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    cases::api_suite(cfg(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_file_is_wal_and_migrations_are_recorded_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(&dir);
    let s1 = loopgate::store::open(&c).await.expect("open");
    let s2 = loopgate::store::open(&c)
        .await
        .expect("reopen migrates nothing twice");
    assert_eq!(s2.schema_version().await.expect("v"), latest());
    drop((s1, s2));
    let conn = rusqlite::Connection::open(&c.sqlite_path).expect("open raw");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("mode");
    assert_eq!(mode, "wal");
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM schema_migrations", [], |r| r.get(0))
        .expect("migrations");
    assert_eq!(n, i64::from(latest()));
}

/// Decisions, feedback, audit log, route state and stats, through two stores on one file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_routing_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(&dir);
    let a = loopgate::store::open(&c).await.expect("open a");
    let b = loopgate::store::open(&c).await.expect("open b");
    cases::routing_suite(a, b).await;
}

/// A database created by migration 1 alone gains the routing tables on open, traces intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrades_a_version_1_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(&dir);
    {
        let conn = rusqlite::Connection::open(&c.sqlite_path).expect("open raw");
        let m1 = &loopgate::store::migrations::MIGRATIONS[0];
        conn.execute_batch(&format!(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL); \
             {} INSERT INTO schema_migrations VALUES (1, 'traces', 0);",
            m1.sql(loopgate::store::migrations::SqlDialect::Sqlite)
        ))
        .expect("version 1 schema");
    }
    let s = loopgate::store::open(&c).await.expect("open");
    assert_eq!(s.schema_version().await.expect("v"), latest());
    let recs = load_records("old", 3);
    assert_eq!(s.insert_traces(&recs).await.expect("insert"), 3);
    assert!(s.route_states().await.expect("route state").is_empty());
}

/// A version 8 database with traces (some without a project, session or user) is upgraded
/// in place by migration 9 (partial project, session and user indexes, no `decision_id`
/// index): every row is still there and every filter still finds exactly its rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_upgrade_to_partial_trace_indexes_keeps_rows_and_answers() {
    use loopgate::store::migrations::{SqlDialect, MIGRATIONS};
    use loopgate::store::{AnalyticsQuery, Bucket, GroupBy, LogFilter, Store};

    let dir = tempfile::tempdir().expect("tempdir");
    let c = cfg(&dir);
    let recs = cases::records_some_without_session_or_project(300);
    // The rows as the store writes them (decisions, properties, rollups), copied into a
    // database built by migrations 1 to 8: the tables' columns are the same in both.
    let scratch = dir.path().join("scratch.db");
    let reference = loopgate::store::sqlite::SqliteStore::open(&scratch.to_string_lossy(), 2000)
        .await
        .expect("scratch store");
    assert_eq!(reference.insert_traces(&recs).await.expect("insert"), 300);
    {
        let conn = rusqlite::Connection::open(&c.sqlite_path).expect("open raw");
        conn.execute_batch(
            "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_ms INTEGER NOT NULL)",
        )
        .expect("migrations table");
        for m in MIGRATIONS.iter().filter(|m| m.version <= 8) {
            conn.execute_batch(&m.sql(SqlDialect::Sqlite))
                .expect(m.name);
            conn.execute(
                "INSERT INTO schema_migrations VALUES (?1, ?2, 0)",
                rusqlite::params![m.version, m.name],
            )
            .expect("record");
        }
        conn.execute(
            "ATTACH DATABASE ?1 AS s",
            [scratch.to_string_lossy().as_ref()],
        )
        .expect("attach");
        conn.execute_batch(
            "INSERT INTO traces SELECT * FROM s.traces; \
             INSERT INTO trace_properties SELECT * FROM s.trace_properties; \
             INSERT INTO rollup_hourly SELECT * FROM s.rollup_hourly; DETACH DATABASE s;",
        )
        .expect("copy rows");
        let old: String = conn
            .query_row(
                "SELECT sql FROM sqlite_master WHERE name = 'traces_session_ts'",
                [],
                |r| r.get(0),
            )
            .expect("old index");
        assert!(!old.contains("WHERE"), "{old}");
    }
    let s = loopgate::store::open(&c).await.expect("open upgrades");
    assert_eq!(s.schema_version().await.expect("v"), latest());
    assert_eq!(s.count_traces().await.expect("count"), 300);
    {
        let conn = rusqlite::Connection::open(&c.sqlite_path).expect("open raw");
        let indexes: Vec<(String, String)> = conn
            .prepare(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'traces' \
                 AND sql IS NOT NULL ORDER BY name",
            )
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("indexes")
            .collect::<Result<_, _>>()
            .expect("rows");
        let names: Vec<&str> = indexes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "traces_project_ts",
                "traces_provider_ts",
                "traces_requested_model_ts",
                "traces_served_model_ts",
                "traces_session_ts",
                "traces_ts",
                "traces_user_ts"
            ]
        );
        for (n, sql) in &indexes {
            let col = n.trim_start_matches("traces_").trim_end_matches("_ts");
            let partial = matches!(col, "project" | "session" | "user");
            assert_eq!(sql.contains("IS NOT NULL"), partial, "{n}: {sql}");
        }
        // Only rows with a session are in the session index.
        let with_session = recs.iter().filter(|r| r.session_id.is_some()).count();
        let in_index: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM traces INDEXED BY traces_session_ts WHERE session_id IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .expect("count via index");
        assert_eq!(in_index as usize, with_session);
    }
    // Rows written after the upgrade are found the same way.
    let later: Vec<_> = (300..340).map(cases::record).collect();
    assert_eq!(s.insert_traces(&later).await.expect("insert"), 40);
    assert_eq!(reference.insert_traces(&later).await.expect("insert"), 40);
    let all: Vec<_> = recs.iter().chain(&later).cloned().collect();
    let filters = [
        LogFilter::default(),
        LogFilter {
            session: Some("s3".into()),
            ..Default::default()
        },
        LogFilter {
            session: Some("s31".into()),
            ..Default::default()
        },
        LogFilter {
            user: Some("u1".into()),
            start_ms: Some(cases::T0 + 6 * cases::HOUR),
            ..Default::default()
        },
        LogFilter {
            project: Some("alpha".into()),
            ..Default::default()
        },
        LogFilter {
            project: Some("beta".into()),
            session: Some("s7".into()),
            ..Default::default()
        },
        LogFilter {
            project: Some("beta".into()),
            user: Some("u3".into()),
            ..Default::default()
        },
        LogFilter {
            model: Some("gpt-4o".into()),
            ..Default::default()
        },
    ];
    for f in &filters {
        cases::assert_logs_match(&*s, &all, f).await;
        for g in [GroupBy::User, GroupBy::Model, GroupBy::Project] {
            let q = AnalyticsQuery {
                filter: f.clone(),
                group_by: g,
                bucket: Bucket::Hour,
            };
            assert_eq!(
                s.analytics(&q).await.expect("analytics"),
                reference.analytics(&q).await.expect("analytics"),
                "{q:?}"
            );
        }
    }
    for r in all.iter().step_by(29) {
        let got = s
            .get_trace(&r.request_id)
            .await
            .expect("get")
            .expect("found");
        cases::assert_same(&got, r);
    }
}

/// A second connection holds the write lock mid-load: the writer buffers, spills to disk,
/// and once the lock is released replays everything; every trace is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_nothing_lost_while_the_database_is_locked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = StorageConfig {
        sqlite_busy_timeout_ms: 30,
        batch_size: 16,
        buffer_max: 40,
        retry_initial_ms: 20,
        retry_max_ms: 100,
        ..cfg(&dir)
    };
    let p = Pipeline::start(&c);
    let recs = load_records("lock", 500);
    cases::submit_all(&p.sink, &recs[..100]).await;
    let store = p.store().await;
    assert_eq!(store.count_traces().await.expect("count"), 100);

    let spilled0 = metrics()
        .trace_spilled
        .with_label_values(&["spilled"])
        .get();
    let replayed0 = metrics()
        .trace_spilled
        .with_label_values(&["replayed"])
        .get();
    let locker = rusqlite::Connection::open(&c.sqlite_path).expect("second connection");
    locker
        .execute_batch("BEGIN EXCLUSIVE")
        .expect("take the write lock");
    for chunk in recs[100..400].chunks(50) {
        for r in chunk {
            p.sink.submit(r.clone());
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(
        p.sink.flush().await.is_err(),
        "flush must fail while the store is locked"
    );
    // more than buffer_max is waiting: the excess went to the spill file
    let spill_len = std::fs::metadata(&c.spill_path)
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(spill_len > 0, "records were spilled");
    assert!(
        metrics()
            .trace_spilled
            .with_label_values(&["spilled"])
            .get()
            > spilled0
    );
    locker.execute_batch("ROLLBACK").expect("release");
    drop(locker);
    for r in &recs[400..] {
        p.sink.submit(r.clone());
    }
    let mut ok = false;
    for _ in 0..100 {
        if p.sink.flush().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "store never recovered");
    assert_eq!(store.count_traces().await.expect("count"), 500);
    for r in recs.iter().step_by(37) {
        assert!(
            store.get_trace(&r.request_id).await.expect("get").is_some(),
            "{}",
            r.request_id
        );
    }
    assert!(
        metrics()
            .trace_spilled
            .with_label_values(&["replayed"])
            .get()
            > replayed0
    );
    assert_eq!(
        std::fs::metadata(&c.spill_path)
            .map(|m| m.len())
            .unwrap_or(0),
        0,
        "spill truncated"
    );
    p.shutdown().await;
}

/// Records spilled by a writer that never reached its store are replayed by the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spill_file_is_replayed_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = cfg(&dir);
    let bad = StorageConfig {
        sqlite_path: dir
            .path()
            .join("missing-dir/x.db")
            .to_string_lossy()
            .into_owned(),
        buffer_max: 5,
        retry_initial_ms: 10,
        ..good.clone()
    };
    let p = Pipeline::start(&bad);
    let recs = load_records("restart", 30);
    for r in &recs {
        p.sink.submit(r.clone());
    }
    assert!(p.sink.flush().await.is_err());
    p.shutdown().await;
    let lines = std::fs::read_to_string(&good.spill_path)
        .expect("spill file")
        .lines()
        .count();
    assert_eq!(lines, 30, "shutdown spills everything it could not store");

    let p = Pipeline::start(&good);
    p.sink.flush().await.expect("replay");
    let store = p.store().await;
    assert_eq!(store.count_traces().await.expect("count"), 30);
    p.shutdown().await;
}

/// A full channel is counted, never silent, and submit never blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_channel_counts_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = StorageConfig {
        channel_capacity: 4,
        ..cfg(&dir)
    };
    // The writer is never started, so nothing drains the channel.
    let (sink, _svc, _slot) = trace_pipeline(&c);
    let before = metrics()
        .trace_dropped
        .with_label_values(&["channel_full"])
        .get();
    let t = std::time::Instant::now();
    for r in load_records("full", 10) {
        sink.submit(r);
    }
    assert!(t.elapsed() < Duration::from_secs(1));
    let after = metrics()
        .trace_dropped
        .with_label_values(&["channel_full"])
        .get();
    assert_eq!(after - before, 6);
}
