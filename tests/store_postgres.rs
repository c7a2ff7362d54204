//! The trace pipeline and read API on a real PostgreSQL server started from the machine's
//! binaries (see `support/pg.rs`). Fails, never skips, when PostgreSQL is missing.

#[path = "support/store_cases.rs"]
mod cases;
#[path = "support/pg.rs"]
mod pg;

use std::time::Duration;

use cases::{load_records, Pipeline};
use loopgate::store::{Backend, StorageConfig};

fn cfg(url: String, dir: &tempfile::TempDir, name: &str) -> StorageConfig {
    StorageConfig {
        backend: Backend::Postgres,
        postgres_url: Some(url),
        spill_path: dir
            .path()
            .join(format!("{name}.jsonl"))
            .to_string_lossy()
            .into_owned(),
        flush_interval_ms: 20,
        ..Default::default()
    }
}

fn server() -> pg::PgServer {
    // initdb/pg_ctl are blocking processes: fine in a test's setup.
    pg::PgServer::start()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_endpoint_and_two_gateways_share_traces() {
    let srv = server();
    let dir = tempfile::tempdir().expect("tempdir");
    cases::api_suite(cfg(srv.url(), &dir, "suite")).await;

    // Routing state through two stores (two gateways) on a fresh database.
    srv.create_db("routing");
    let rc = cfg(srv.url_for("routing"), &dir, "routing");
    let ra = loopgate::store::open(&rc).await.expect("open a");
    let rb = loopgate::store::open(&rc).await.expect("open b");
    cases::routing_suite(ra, rb).await;

    // Two gateways (two pipelines, two connections) on one database see each other's traces,
    // and their rollups add up (concurrent upserts on the same rollup rows).
    srv.create_db("fleet");
    let a = Pipeline::start(&cfg(srv.url_for("fleet"), &dir, "a"));
    let b = Pipeline::start(&cfg(srv.url_for("fleet"), &dir, "b"));
    let ra = load_records("gw-a", 300);
    let rb = load_records("gw-b", 300);
    for (x, y) in ra.iter().zip(&rb) {
        a.sink.submit(x.clone());
        b.sink.submit(y.clone());
    }
    a.sink.flush().await.expect("flush a");
    b.sink.flush().await.expect("flush b");
    let sa = a.store().await;
    let sb = b.store().await;
    assert_eq!(sa.count_traces().await.expect("count"), 600);
    assert!(sa.get_trace("gw-b-000123").await.expect("get").is_some());
    assert!(sb.get_trace("gw-a-000042").await.expect("get").is_some());
    let r = cases::get(&a.slot, "/v1/analytics", &[("group_by", "project")]).await;
    let total: u64 = r.json()["data"]
        .as_array()
        .expect("data")
        .iter()
        .filter_map(|d| d["requests"].as_u64())
        .sum();
    assert_eq!(total, 600);
    let via_b = cases::all_ids(&b.slot, cases::admin(), &[("session", "s3")], 1000).await;
    assert!(
        via_b.iter().any(|id| id.starts_with("gw-a"))
            && via_b.iter().any(|id| id.starts_with("gw-b"))
    );
    a.shutdown().await;
    b.shutdown().await;

    // The bulk path (COPY) on awkward batches: an id twice in one batch (stored once, the
    // first occurrence), a property pair repeated in one record, a record with every
    // optional column empty; then an overlapping retry (COPY refuses it, the INSERT path
    // stores only the new rows) — counts and the rollup never double.
    srv.create_db("copy");
    let store = loopgate::store::open(&cfg(srv.url_for("copy"), &dir, "copy"))
        .await
        .expect("open");
    let mut batch: Vec<_> = (0..30).map(cases::record).collect();
    let mut again = batch[3].clone();
    again.latency_ms += 1000.0;
    batch.push(again);
    let pair = batch[5].properties[0].clone();
    batch[5].properties.push(pair);
    batch[7] = loopgate::trace::TraceRecord {
        request_id: batch[7].request_id.clone(),
        ts_ms: batch[7].ts_ms,
        endpoint: "chat.completions".into(),
        requested_model: "m".into(),
        ..Default::default()
    };
    assert_eq!(store.insert_traces(&batch).await.expect("copy"), 30);
    assert_eq!(store.count_traces().await.expect("count"), 30);
    for i in [3, 5, 7, 29] {
        let got = store
            .get_trace(&batch[i].request_id)
            .await
            .expect("get")
            .expect("stored");
        cases::assert_same(&got, &batch[i]);
    }
    let more: Vec<_> = (20..45).map(cases::record).collect();
    assert_eq!(store.insert_traces(&more).await.expect("retry"), 15);
    assert_eq!(store.count_traces().await.expect("count"), 45);
    let rows = store
        .rollup_rows("model", None, None, Some(loopgate::store::ALL_PROJECTS))
        .await
        .expect("rollup");
    let requests: u64 = rows.iter().map(|r| r.stats.requests).sum();
    assert_eq!(requests, 45, "each stored trace counted once in the rollup");
}

/// Stop the PostgreSQL server mid-load and start it again: every trace is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_nothing_lost_when_the_server_restarts() {
    let srv = server();
    let dir = tempfile::tempdir().expect("tempdir");
    let c = StorageConfig {
        batch_size: 32,
        buffer_max: 50,
        retry_initial_ms: 20,
        retry_max_ms: 200,
        write_timeout_ms: 3000,
        ..cfg(srv.url(), &dir, "restart")
    };
    let p = Pipeline::start(&c);
    let recs = load_records("pgr", 600);
    cases::submit_all(&p.sink, &recs[..200]).await;
    let store = p.store().await;
    assert_eq!(store.count_traces().await.expect("count"), 200);

    srv.stop_server();
    for chunk in recs[200..450].chunks(50) {
        for r in chunk {
            p.sink.submit(r.clone());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        p.sink.flush().await.is_err(),
        "flush must fail while the server is down"
    );
    assert!(
        std::fs::metadata(&c.spill_path)
            .map(|m| m.len())
            .unwrap_or(0)
            > 0,
        "overflow beyond buffer_max is spilled"
    );
    srv.start_server();
    for r in &recs[450..] {
        p.sink.submit(r.clone());
    }
    let mut ok = false;
    for _ in 0..100 {
        if p.sink.flush().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "writer never recovered after the restart");
    assert_eq!(store.count_traces().await.expect("count"), 600);
    for r in recs.iter().step_by(41) {
        assert!(store.get_trace(&r.request_id).await.expect("get").is_some());
    }
    // the read API reconnected too
    let r = cases::get(&p.slot, "/v1/logs", &[("limit", "1")]).await;
    assert_eq!(r.status, 200);
    p.shutdown().await;
}

/// A database at schema version 8 with traces (some without a project, session or user) is
/// upgraded in place by migration 9 (partial project, session and user indexes, no
/// `decision_id` index); every filter still finds exactly its rows, and the session, user and
/// project filters can search their partial index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_upgrade_to_partial_trace_indexes_keeps_rows_and_answers() {
    use loopgate::store::query::{Sql, SqlParam};
    use loopgate::store::LogFilter;

    let srv = server();
    let dir = tempfile::tempdir().expect("tempdir");
    srv.create_db("upgrade");
    let c = cfg(srv.url_for("upgrade"), &dir, "upgrade");
    let recs = cases::records_some_without_session_or_project(300);
    {
        let s = loopgate::store::open(&c).await.expect("open");
        assert_eq!(s.insert_traces(&recs).await.expect("insert"), 300);
    }
    let (client, conn) = tokio_postgres::connect(&srv.url_for("upgrade"), tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(conn);
    // Back to version 8: the indexes exactly as migration 1 created them.
    client
        .batch_execute(
            "DROP INDEX traces_project_ts; DROP INDEX traces_session_ts; DROP INDEX traces_user_ts; \
             CREATE INDEX traces_project_ts ON traces (project_id, ts_ms); \
             CREATE INDEX traces_session_ts ON traces (session_id, ts_ms); \
             CREATE INDEX traces_user_ts ON traces (user_id, ts_ms); \
             CREATE INDEX traces_decision ON traces (decision_id) WHERE decision_id IS NOT NULL; \
             DELETE FROM schema_migrations WHERE version > 8;",
        )
        .await
        .expect("version 8 schema");
    let s = loopgate::store::open(&c).await.expect("open upgrades");
    assert_eq!(
        s.schema_version().await.expect("v"),
        cases::latest_version()
    );
    assert_eq!(s.count_traces().await.expect("count"), 300);
    let defs: Vec<(String, String)> = client
        .query(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'traces' ORDER BY indexname",
            &[],
        )
        .await
        .expect("indexes")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let names: Vec<&str> = defs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "traces_pkey",
            "traces_project_ts",
            "traces_provider_ts",
            "traces_requested_model_ts",
            "traces_served_model_ts",
            "traces_session_ts",
            "traces_ts",
            "traces_user_ts"
        ]
    );
    for (n, def) in &defs {
        let partial = matches!(
            n.as_str(),
            "traces_project_ts" | "traces_session_ts" | "traces_user_ts"
        );
        assert_eq!(def.contains("IS NOT NULL"), partial, "{n}: {def}");
    }
    let f = |g: &dyn Fn(&mut LogFilter)| {
        let mut f = LogFilter::default();
        g(&mut f);
        f
    };
    let cases_: [(LogFilter, &str); 4] = [
        (f(&|f| f.session = Some("s3".into())), "traces_session_ts"),
        (
            f(&|f| {
                f.user = Some("u1".into());
                f.start_ms = Some(cases::T0 + 6 * cases::HOUR);
            }),
            "traces_user_ts",
        ),
        (
            f(&|f| f.project = Some("alpha".into())),
            "traces_project_ts",
        ),
        (LogFilter::default(), ""),
    ];
    // The plan with sequential scans priced out (the table is tiny).
    client
        .batch_execute("SET enable_seqscan = off")
        .await
        .expect("set");
    for (filter, index) in &cases_ {
        cases::assert_logs_match(&*s, &recs, filter).await;
        if index.is_empty() {
            continue;
        }
        // The analytics' raw rows (no ORDER BY that the time index could answer instead).
        let mut sql = Sql::new(true);
        let text = sql.raw_rows_query(filter, &loopgate::store::GroupBy::Model);
        let owned: Vec<Box<dyn tokio_postgres::types::ToSql + Sync + Send>> = sql
            .params
            .iter()
            .map(|p| -> Box<dyn tokio_postgres::types::ToSql + Sync + Send> {
                match p {
                    SqlParam::Int(i) => Box::new(*i),
                    SqlParam::Text(s) => Box::new(s.clone()),
                }
            })
            .collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = owned
            .iter()
            .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        let plan: Vec<String> = client
            .query(&format!("EXPLAIN {text}"), &params)
            .await
            .expect("explain")
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            plan.iter().any(|l| l.contains(index)),
            "{filter:?} does not use {index}: {plan:#?}"
        );
    }
}
