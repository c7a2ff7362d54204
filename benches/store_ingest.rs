//! Sustained trace ingest (records/s) through the whole pipeline: `TraceSink::submit` ->
//! bounded channel -> batched writer -> store, ending with a flush, per backend.
//!
//! `cargo bench --bench store_ingest` (filter: `-- postgres`). PostgreSQL runs against a
//! throwaway server started from the machine's binaries (as in the tests), twice: the
//! shipped binary-`COPY` path (`postgres_copy`) and multi-row `INSERT`s (`postgres_insert`,
//! `storage.postgres_copy = false`), each into a fresh database. Without the binaries that
//! backend is skipped with a printed note. SQLite runs twice too: records with a project,
//! session, user and property (`sqlite`), and records shaped like a plain request through a
//! gateway key without any of them (`sqlite_plain`).

#[path = "../tests/support/pg.rs"]
mod pg;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use loopgate::store::writer::{trace_pipeline, StoreSlot, TraceSink};
use loopgate::store::{Backend, StorageConfig};
use loopgate::trace::{Attempt, TraceRecord};

const PER_ITER: usize = 20_000;
static SEQ: AtomicU64 = AtomicU64::new(0);

fn rec(i: u64) -> TraceRecord {
    let models = ["gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet", "llama-3.1-8b"];
    let m = models[(i % 4) as usize];
    TraceRecord {
        request_id: format!("bench-{i:012}"),
        ts_ms: 1_767_225_600_000 + i as i64 * 10,
        endpoint: "chat.completions".into(),
        key_id: Some("k1".into()),
        session_id: Some(format!("s{}", i / 8)),
        project_id: Some(format!("p{}", i % 10)),
        user_id: Some(format!("u{}", i % 500)),
        properties: vec![(
            "env".into(),
            if i.is_multiple_of(3) { "dev" } else { "prod" }.into(),
        )],
        route: Some("chat".into()),
        requested_model: m.into(),
        served_model: Some(m.into()),
        provider: Some("openai".into()),
        attempts: vec![Attempt {
            provider: "openai".into(),
            model: m.into(),
            status: Some(200),
            outcome: "ok".into(),
            latency_ms: 120.0,
            error: None,
        }],
        status: if i.is_multiple_of(50) { 500 } else { 200 },
        prompt_tokens: 500 + i % 1000,
        completion_tokens: 100 + i % 300,
        usage_reported: true,
        cost_usd: 0.001,
        latency_ms: 100.0 + (i % 900) as f64,
        ttft_ms: Some(30.0),
        request_bytes: 2000,
        response_bytes: 800,
        ..Default::default()
    }
}

/// A plain request's record: no project, session, user, route or property (the shape of
/// `cargo bench --bench instructions`' requests); the provider answers with a dated model.
fn rec_plain(i: u64) -> TraceRecord {
    let r = rec(i);
    TraceRecord {
        session_id: None,
        project_id: None,
        user_id: None,
        properties: Vec::new(),
        route: None,
        served_model: Some(format!("{}-2024-07-18", r.requested_model)),
        ..r
    }
}

/// Builds the `i`-th record of a run.
type MakeRecord = fn(u64) -> TraceRecord;

struct Running {
    sink: TraceSink,
    _slot: StoreSlot,
    _stop: tokio::sync::watch::Sender<bool>,
}

fn start(rt: &tokio::runtime::Runtime, cfg: &StorageConfig) -> Running {
    let (sink, svc, slot) = trace_pipeline(cfg);
    let (stop, rx) = tokio::sync::watch::channel(false);
    rt.spawn(async move {
        use pingora_core::services::background::BackgroundService;
        svc.start(rx).await
    });
    Running {
        sink,
        _slot: slot,
        _stop: stop,
    }
}

/// CPU time of this whole process (user + system): the writer, the store client and, for
/// SQLite, the database engine itself; the submitting loop is a small part.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a zeroed rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

fn ingest(rt: &tokio::runtime::Runtime, run: &Running, iters: u64, make: MakeRecord) -> Duration {
    let mut total = Duration::ZERO;
    let mut cpu = Duration::ZERO;
    for _ in 0..iters {
        let base = SEQ.fetch_add(PER_ITER as u64, Ordering::Relaxed);
        let recs: Vec<TraceRecord> = (base..base + PER_ITER as u64).map(make).collect();
        let t = Instant::now();
        let c0 = cpu_time();
        rt.block_on(async {
            for r in recs {
                run.sink.submit(r);
            }
            run.sink.flush().await
        })
        .unwrap_or_else(|e| panic!("flush failed: {e}"));
        total += t.elapsed();
        cpu += cpu_time().saturating_sub(c0);
    }
    let n = iters as f64 * PER_ITER as f64;
    eprintln!(
        "  {} records: {:.0} records/s, {:.2} CPU-seconds per 100k records ({:.0}% of one core)",
        n,
        n / total.as_secs_f64().max(1e-9),
        cpu.as_secs_f64() * 100_000.0 / n,
        100.0 * cpu.as_secs_f64() / total.as_secs_f64().max(1e-9)
    );
    total
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("trace_ingest");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(PER_ITER as u64));

    let dir = tempfile::tempdir().expect("tempdir");
    let base = StorageConfig {
        channel_capacity: PER_ITER * 2,
        spill_path: dir
            .path()
            .join("spill.jsonl")
            .to_string_lossy()
            .into_owned(),
        ..Default::default()
    };
    let sqlite_runs: [(&str, MakeRecord); 2] = [("sqlite", rec), ("sqlite_plain", rec_plain)];
    for (name, make) in sqlite_runs {
        let sqlite = StorageConfig {
            backend: Backend::Sqlite,
            sqlite_path: dir
                .path()
                .join(format!("{name}.db"))
                .to_string_lossy()
                .into_owned(),
            ..base.clone()
        };
        let run = start(&rt, &sqlite);
        g.bench_function(BenchmarkId::new("pipeline", name), |b| {
            b.iter_custom(|iters| ingest(&rt, &run, iters, make))
        });
        drop(run);
    }

    if pg::find_bindir().is_none() {
        println!("note: PostgreSQL binaries not found; skipping the postgres ingest benchmark");
    } else {
        let srv = pg::PgServer::start();
        let pgc = StorageConfig {
            backend: Backend::Postgres,
            postgres_url: Some(srv.url()),
            spill_path: dir
                .path()
                .join("spill-pg.jsonl")
                .to_string_lossy()
                .into_owned(),
            ..base.clone()
        };
        // The shipped bulk path (binary COPY) and the multi-row INSERT path it replaced,
        // each into its own fresh database on the same server, in the same run.
        for (name, copy) in [("postgres_copy", true), ("postgres_insert", false)] {
            srv.create_db(name);
            let cfg = StorageConfig {
                postgres_url: Some(srv.url_for(name)),
                postgres_copy: copy,
                spill_path: dir
                    .path()
                    .join(format!("spill-{name}.jsonl"))
                    .to_string_lossy()
                    .into_owned(),
                ..pgc.clone()
            };
            let run = start(&rt, &cfg);
            g.bench_function(BenchmarkId::new("pipeline", name), |b| {
                b.iter_custom(|iters| ingest(&rt, &run, iters, rec))
            });
            drop(run);
        }
        drop(srv);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
