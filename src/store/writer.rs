//! The off-path trace writer.
//!
//! ```text
//! request path --submit()--> bounded channel --> writer task --> batch insert (one transaction)
//!                 (never blocks;                   |  store down or slow:
//!                  full = counted drop)            +-> memory buffer (buffer_max) -> spill file (JSONL, fsync)
//!                                                  +-> store back: replay spill, then truncate it
//! ```
//!
//! Inserts are idempotent on `request_id`, so a retried batch (after a timeout whose
//! transaction did commit) or a replayed spill file never stores a trace twice.
//! The writer opens the store itself inside [`BackgroundService::start`] because Pingora
//! creates service runtimes only after startup.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use async_trait::async_trait;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::metrics;
use crate::store::{self as store, ProjectSel, PurgeRule, StorageConfig, Store, StoreError};
use crate::trace::fresh::{Recent, State};
use crate::trace::TraceRecord;

enum Msg {
    Rec(Box<TraceRecord>),
    Flush(oneshot::Sender<Result<(), StoreError>>),
}

/// Where the admin API finds the store once the writer has opened it, and how it reads its
/// own writes (see [`crate::trace::fresh`]).
#[derive(Clone, Default)]
pub struct StoreSlot {
    store: Arc<ArcSwapOption<Arc<dyn Store>>>,
    fresh: Arc<Fresh>,
}

/// Read-your-writes state shared by the request path, the sink and the lookups.
#[derive(Default)]
struct Fresh {
    recent: Arc<Recent>,
    /// The writer's channel (absent for a slot built around a ready store).
    writer: Option<mpsc::Sender<Msg>>,
    /// How long feedback for an unknown id stays pending (0: unknown ids are rejected at once).
    pending_window_ms: i64,
    flush_timeout: Duration,
}

/// How long a lookup waits for an in-flight request's record to be submitted.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(2);

impl StoreSlot {
    pub fn new() -> StoreSlot {
        StoreSlot::default()
    }

    /// The ids this instance served recently (the request path marks them).
    pub fn recent(&self) -> Arc<Recent> {
        self.fresh.recent.clone()
    }

    /// How long feedback for a not-yet-known request id stays pending, in milliseconds
    /// (`storage.pending_feedback_secs`; 0 rejects unknown ids at once).
    pub fn pending_window_ms(&self) -> i64 {
        self.fresh.pending_window_ms
    }

    /// Make a request this instance served visible in the store before a lookup: if `id` is
    /// recent here, wait for its record to be submitted (bounded), then flush the writer.
    /// Ids this instance did not serve cost one atomic load.
    pub async fn settle(&self, id: &str) {
        let recent = &self.fresh.recent;
        let Some(mut st) = recent.state(id) else {
            return;
        };
        let deadline = Instant::now() + IN_FLIGHT_WAIT;
        while st == State::InFlight && Instant::now() < deadline {
            // The logging phase runs right after the last byte; poll briefly.
            tokio::time::sleep(Duration::from_millis(1)).await;
            match recent.state(id) {
                Some(s) => st = s,
                None => return,
            }
        }
        if st == State::Submitted {
            self.flush_writer().await;
        }
    }

    /// Flush the writer before a listing, so the newest rows this instance served are in it.
    pub async fn settle_all(&self) {
        self.flush_writer().await;
    }

    async fn flush_writer(&self) {
        let Some(tx) = &self.fresh.writer else { return };
        let (otx, orx) = oneshot::channel();
        let timeout = self.fresh.flush_timeout;
        let res = tokio::time::timeout(timeout, async {
            tx.send(Msg::Flush(otx)).await.ok()?;
            orx.await.ok()
        })
        .await;
        if !matches!(res, Ok(Some(Ok(())))) {
            // The store is slow or down: the lookup answers from what is stored.
            tracing::debug!("read-your-writes flush did not complete");
        }
    }

    /// A slot already holding a store (tests, CLI tools).
    pub fn with(store: Arc<dyn Store>) -> StoreSlot {
        let s = StoreSlot::default();
        s.set(store);
        s
    }

    pub fn get(&self) -> Option<Arc<dyn Store>> {
        self.store.load_full().map(|a| (*a).clone())
    }

    /// The store, waiting up to `within` for the writer to open it (requests that arrive
    /// while the gateway is still starting).
    pub async fn wait(&self, within: Duration) -> Option<Arc<dyn Store>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(s) = self.get() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn set(&self, store: Arc<dyn Store>) {
        self.store.store(Some(Arc::new(store)));
    }
}

/// Opens the store; the default calls [`store::open`]. Tests inject failing stores here.
pub type StoreOpener = Arc<
    dyn Fn() -> Pin<Box<dyn Future<Output = Result<Arc<dyn Store>, StoreError>> + Send>>
        + Send
        + Sync,
>;

struct DropLog {
    last_ms: AtomicI64,
    since: AtomicU64,
}

/// The request path's handle: cheap to clone, never blocks.
#[derive(Clone)]
pub struct TraceSink {
    tx: mpsc::Sender<Msg>,
    drops: Arc<DropLog>,
    // Resolved once: a labelled lookup per request would cost a hash and a lock.
    enqueued: prometheus::IntCounter,
    recent: Arc<Recent>,
}

impl TraceSink {
    /// Hand a record to the writer. Never blocks or awaits: a full channel counts a drop
    /// (`loopgate_trace_dropped_total{reason="channel_full"}`) and logs, at most once a second.
    pub fn submit(&self, rec: TraceRecord) {
        // Marked after the send: a lookup that sees "submitted" queues its flush behind the
        // record. The id is copied first because the record moves into the channel.
        let id_slot = self.recent.slot_of(&rec.request_id);
        match self.tx.try_send(Msg::Rec(Box::new(rec))) {
            Ok(()) => {
                self.recent.mark_submitted(id_slot);
                self.enqueued.inc();
                metrics().trace_queue_depth.inc();
            }
            Err(mpsc::error::TrySendError::Full(m)) => {
                self.forget(m);
                self.dropped("channel_full")
            }
            Err(mpsc::error::TrySendError::Closed(m)) => {
                self.forget(m);
                self.dropped("writer_closed")
            }
        }
    }

    /// Mark a request as served by this instance before its response starts (read-your-writes).
    pub fn begin(&self, request_id: &str) {
        self.recent.begin(request_id);
    }

    fn forget(&self, m: Msg) {
        if let Msg::Rec(r) = m {
            self.recent.forget(&r.request_id);
        }
    }

    fn dropped(&self, reason: &'static str) {
        metrics().trace_dropped.with_label_values(&[reason]).inc();
        let n = self.drops.since.fetch_add(1, Ordering::Relaxed) + 1;
        let now = chrono::Utc::now().timestamp_millis();
        let last = self.drops.last_ms.load(Ordering::Relaxed);
        if now - last >= 1000
            && self
                .drops
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.drops.since.store(0, Ordering::Relaxed);
            tracing::warn!(reason, dropped = n, "trace records dropped");
        }
    }

    /// Wait until everything submitted before this call is stored. Errors when the store
    /// is unavailable (the records stay buffered or spilled and are written later).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Msg::Flush(tx))
            .await
            .map_err(|_| StoreError::Unavailable("trace writer stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("trace writer stopped".into()))?
    }
}

/// The writer as a Pingora background service.
pub struct TraceWriterService {
    state: Mutex<Option<Writer>>,
}

#[async_trait]
impl BackgroundService for TraceWriterService {
    async fn start(&self, shutdown: ShutdownWatch) {
        let w = match self.state.lock() {
            Ok(mut g) => g.take(),
            Err(_) => None,
        };
        match w {
            Some(w) => w.run(shutdown).await,
            None => tracing::error!("trace writer started twice"),
        }
    }
}

impl TraceWriterService {
    /// Run outside Pingora (tests, CLI tools) on the current runtime.
    pub fn spawn(self, shutdown: ShutdownWatch) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move { self.start(shutdown).await })
    }
}

/// Build the sink, the writer service and the store slot from the `[storage]` config.
pub fn trace_pipeline(cfg: &StorageConfig) -> (TraceSink, TraceWriterService, StoreSlot) {
    let c = cfg.clone();
    let opener: StoreOpener = Arc::new(move || {
        let c = c.clone();
        Box::pin(async move { store::open(&c).await })
    });
    trace_pipeline_with_opener(cfg, opener)
}

/// [`trace_pipeline`] with a custom way to open the store.
pub fn trace_pipeline_with_opener(
    cfg: &StorageConfig,
    opener: StoreOpener,
) -> (TraceSink, TraceWriterService, StoreSlot) {
    let (tx, rx) = mpsc::channel(cfg.channel_capacity.max(1));
    let recent = Arc::new(Recent::default());
    let slot = StoreSlot {
        store: Arc::default(),
        fresh: Arc::new(Fresh {
            recent: recent.clone(),
            writer: Some(tx.clone()),
            pending_window_ms: (cfg.pending_feedback_secs as i64).saturating_mul(1000),
            flush_timeout: Duration::from_millis(cfg.write_timeout_ms.max(1)),
        }),
    };
    let now = Instant::now();
    let w = Writer {
        cfg: cfg.clone(),
        rx,
        slot: slot.clone(),
        opener,
        store: None,
        pending: VecDeque::new(),
        spill: Spill::new(PathBuf::from(&cfg.spill_path)),
        next_attempt: now,
        backoff: Duration::from_millis(cfg.retry_initial_ms.max(1)),
        next_purge: now,
        purging: Arc::new(AtomicBool::new(false)),
        reconciling: Arc::new(AtomicBool::new(false)),
        down_logged: false,
    };
    let sink = TraceSink {
        recent,
        tx,
        drops: Arc::new(DropLog {
            last_ms: AtomicI64::new(0),
            since: AtomicU64::new(0),
        }),
        enqueued: metrics().trace_enqueued.with_label_values(&["trace"]),
    };
    (
        sink,
        TraceWriterService {
            state: Mutex::new(Some(w)),
        },
        slot,
    )
}

/// The purge rules for a config at `now_ms`: one per project override, then the default
/// for everything else.
pub fn retention_rules(cfg: &StorageConfig, now_ms: i64) -> Vec<PurgeRule> {
    let day = 86_400_000i64;
    let mut out: Vec<PurgeRule> = cfg
        .project_retention_days
        .iter()
        .map(|(p, d)| PurgeRule {
            before_ms: now_ms - *d as i64 * day,
            projects: ProjectSel::Only(p.clone()),
        })
        .collect();
    if let Some(d) = cfg.retention_days {
        out.push(PurgeRule {
            before_ms: now_ms - d as i64 * day,
            projects: ProjectSel::AllExcept(cfg.project_retention_days.keys().cloned().collect()),
        });
    }
    out
}

/// The append-only spill file and how far it has been replayed.
struct Spill {
    path: PathBuf,
    /// Records in the file not yet replayed (approximate after a crash: counted on start).
    count: u64,
    /// Byte offset of the first record not yet replayed.
    offset: u64,
    counted: bool,
}

impl Spill {
    fn new(path: PathBuf) -> Spill {
        Spill {
            path,
            count: 0,
            offset: 0,
            counted: false,
        }
    }

    /// Count records left over from a previous run.
    fn count_existing(&mut self) {
        if self.counted {
            return;
        }
        self.counted = true;
        if let Ok(f) = File::open(&self.path) {
            self.count = BufReader::new(f)
                .lines()
                .map_while(Result::ok)
                .filter(|l| !l.is_empty())
                .count() as u64;
            if self.count > 0 {
                tracing::info!(path = %self.path.display(), records = self.count, "trace spill file found; will replay");
            }
        }
    }

    fn append(&mut self, recs: &[TraceRecord]) -> std::io::Result<()> {
        let mut buf = Vec::with_capacity(recs.len() * 512);
        for r in recs {
            serde_json::to_writer(&mut buf, r).map_err(std::io::Error::other)?;
            buf.push(b'\n');
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&buf)?;
        f.sync_data()?;
        self.count += recs.len() as u64;
        Ok(())
    }

    /// Read up to `n` records from `offset`; returns records, new offset, corrupt lines.
    fn read_chunk(&self, n: usize) -> std::io::Result<(Vec<TraceRecord>, u64, u64)> {
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(self.offset))?;
        let mut r = BufReader::new(f);
        let mut out = Vec::with_capacity(n);
        let mut off = self.offset;
        let mut corrupt = 0;
        let mut line = String::new();
        while out.len() < n {
            line.clear();
            let read = r.read_line(&mut line)?;
            if read == 0 {
                break;
            }
            if !line.ends_with('\n') {
                // A torn last line (crash mid-append): stop before it; it is dropped at truncate.
                break;
            }
            off += read as u64;
            let t = line.trim();
            if t.is_empty() {
                continue;
            }
            match serde_json::from_str::<TraceRecord>(t) {
                Ok(rec) => out.push(rec),
                Err(_) => corrupt += 1,
            }
        }
        Ok((out, off, corrupt))
    }

    fn truncate(&mut self) -> std::io::Result<()> {
        let f = OpenOptions::new().write(true).open(&self.path)?;
        f.set_len(0)?;
        f.sync_all()?;
        self.count = 0;
        self.offset = 0;
        Ok(())
    }
}

struct Writer {
    cfg: StorageConfig,
    rx: mpsc::Receiver<Msg>,
    slot: StoreSlot,
    opener: StoreOpener,
    store: Option<Arc<dyn Store>>,
    pending: VecDeque<TraceRecord>,
    spill: Spill,
    next_attempt: Instant,
    backoff: Duration,
    next_purge: Instant,
    purging: Arc<AtomicBool>,
    reconciling: Arc<AtomicBool>,
    down_logged: bool,
}

/// How often pending feedback is reconciled when no batch triggers it.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);

/// Bounded wait for the channel to empty during shutdown.
const DRAIN_MAX_MESSAGES: usize = 10_000_000;

impl Writer {
    async fn run(mut self, mut shutdown: ShutdownWatch) {
        self.spill.count_existing();
        // Open (create and migrate) the store at start, so the admin API and the database
        // file exist before the first trace; failures are retried by the normal path.
        if let Err(e) = self.ensure_store().await {
            tracing::warn!(error = %e, "trace store not available at start; retrying in the background");
        }
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.cfg.flush_interval_ms.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Pending feedback also settles right after each written batch (see `write_pending`);
        // this timer covers expiry and traces written by other instances.
        let mut reconcile_tick = tokio::time::interval(RECONCILE_EVERY);
        reconcile_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                r = shutdown.changed() => {
                    if r.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                _ = tick.tick() => {
                    let _ = self.write_pending(false).await;
                    self.maybe_purge();
                }
                _ = reconcile_tick.tick() => self.maybe_reconcile(),
                m = self.rx.recv() => match m {
                    Some(Msg::Rec(r)) => {
                        self.accept(*r);
                        let mut flushes = Vec::new();
                        while self.pending.len() < self.cfg.batch_size {
                            match self.rx.try_recv() {
                                Ok(Msg::Rec(r)) => self.accept(*r),
                                Ok(Msg::Flush(tx)) => { flushes.push(tx); break; }
                                Err(_) => break,
                            }
                        }
                        if self.pending.len() >= self.cfg.batch_size || !flushes.is_empty() {
                            let res = self.write_pending(!flushes.is_empty()).await;
                            for f in flushes {
                                let _ = f.send(clone_res(&res));
                            }
                        }
                    }
                    Some(Msg::Flush(tx)) => {
                        let res = self.write_pending(true).await;
                        let _ = tx.send(res);
                    }
                    None => break,
                },
            }
        }
        self.shutdown().await;
    }

    /// Strip what must not be stored before the record is buffered or spilled, and render and
    /// sign its decision trace (deferred by the request path to this thread).
    fn accept(&mut self, mut r: TraceRecord) {
        store::sanitize_for_storage(&self.cfg, &mut r);
        if let Some(d) = r.decision.as_mut() {
            if let Err(e) = d.settle() {
                // The trace is stored without its decision row; the failure is counted and logged.
                metrics()
                    .trace_dropped
                    .with_label_values(&["decision_unsigned"])
                    .inc();
                tracing::error!(request_id = %r.request_id, error = %e, "decision trace could not be signed");
                r.decision = None;
            }
        }
        self.pending.push_back(r);
    }

    async fn shutdown(&mut self) {
        self.rx.close();
        let deadline = Instant::now() + Duration::from_millis(self.cfg.shutdown_drain_ms);
        let mut waiters = Vec::new();
        for _ in 0..DRAIN_MAX_MESSAGES {
            match self.rx.try_recv() {
                Ok(Msg::Rec(r)) => self.accept(*r),
                Ok(Msg::Flush(tx)) => waiters.push(tx),
                Err(_) => break,
            }
        }
        while !self.pending.is_empty() || self.spill.count > 0 {
            if Instant::now() >= deadline {
                break;
            }
            if self.write_pending(true).await.is_err() {
                break;
            }
        }
        // Whatever could not be stored goes to the spill file for the next start.
        if !self.pending.is_empty() {
            let all: Vec<TraceRecord> = self.pending.drain(..).collect();
            self.spill_records(all);
        }
        let res = if self.pending.is_empty() && self.spill.count == 0 {
            Ok(())
        } else {
            Err(StoreError::Unavailable(
                "writer stopped with records spilled".into(),
            ))
        };
        for w in waiters {
            let _ = w.send(clone_res(&res));
        }
        tracing::info!(spilled_left = self.spill.count, "trace writer stopped");
    }

    fn fail(&mut self, e: &StoreError) {
        self.next_attempt = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(Duration::from_millis(self.cfg.retry_max_ms.max(1)));
        if !self.down_logged {
            tracing::warn!(error = %e, buffered = self.pending.len(), "trace store unavailable; buffering");
            self.down_logged = true;
        }
    }

    fn recovered(&mut self) {
        self.backoff = Duration::from_millis(self.cfg.retry_initial_ms.max(1));
        if self.down_logged {
            tracing::info!("trace store available again");
            self.down_logged = false;
        }
    }

    async fn ensure_store(&mut self) -> Result<Arc<dyn Store>, StoreError> {
        if let Some(s) = &self.store {
            return Ok(s.clone());
        }
        let timeout = Duration::from_millis(self.cfg.write_timeout_ms.max(1));
        let s = match tokio::time::timeout(timeout, (self.opener)()).await {
            Ok(r) => r?,
            Err(_) => return Err(StoreError::Timeout(self.cfg.write_timeout_ms)),
        };
        self.slot.set(s.clone());
        self.store = Some(s.clone());
        tracing::info!(backend = s.backend(), "trace store open");
        Ok(s)
    }

    async fn insert(&self, s: &Arc<dyn Store>, batch: &[TraceRecord]) -> Result<usize, StoreError> {
        let ms = self.cfg.write_timeout_ms.max(1);
        match tokio::time::timeout(Duration::from_millis(ms), s.insert_traces(batch)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(ms)),
        }
    }

    /// Insert a batch; a batch the store rejects (not an outage) is retried record by
    /// record so one bad record cannot block the rest, and the bad one is counted.
    async fn insert_resilient(
        &self,
        s: &Arc<dyn Store>,
        batch: &[TraceRecord],
    ) -> Result<usize, StoreError> {
        match self.insert(s, batch).await {
            Err(StoreError::Query(e)) | Err(StoreError::Corrupt(e)) => {
                tracing::warn!(error = %e, records = batch.len(), "trace batch rejected; retrying one by one");
                let mut n = 0;
                for r in batch {
                    match self.insert(s, std::slice::from_ref(r)).await {
                        Ok(k) => n += k,
                        Err(StoreError::Query(e)) | Err(StoreError::Corrupt(e)) => {
                            metrics()
                                .trace_dropped
                                .with_label_values(&["rejected"])
                                .inc();
                            tracing::error!(error = %e, request_id = %r.request_id, "trace record rejected by the store");
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok(n)
            }
            other => other,
        }
    }

    /// Write spill then pending records. `force` ignores the retry backoff (flush requests).
    async fn write_pending(&mut self, force: bool) -> Result<(), StoreError> {
        let had = !self.pending.is_empty() || self.spill.count > 0;
        let res = self.try_write(force).await;
        self.overflow();
        if had && res.is_ok() {
            // Feedback parked for these requests (on any instance) can settle now.
            self.maybe_reconcile();
        }
        res
    }

    async fn try_write(&mut self, force: bool) -> Result<(), StoreError> {
        if self.pending.is_empty() && self.spill.count == 0 {
            return Ok(());
        }
        if !force && Instant::now() < self.next_attempt {
            return Err(StoreError::Unavailable("waiting to retry".into()));
        }
        let s = match self.ensure_store().await {
            Ok(s) => s,
            Err(e) => {
                self.fail(&e);
                return Err(e);
            }
        };
        if self.spill.count > 0 {
            if let Err(e) = self.replay(&s).await {
                self.fail(&e);
                return Err(e);
            }
        }
        while !self.pending.is_empty() {
            let n = self.pending.len().min(self.cfg.batch_size.max(1));
            // Moved out, not copied (a batch can be thousands of records); put back in
            // order if the store fails.
            let batch: Vec<TraceRecord> = self.pending.drain(..n).collect();
            match self.insert_resilient(&s, &batch).await {
                Ok(new) => {
                    let m = metrics();
                    m.trace_written
                        .with_label_values(&[s.backend()])
                        .inc_by(new as u64);
                    m.trace_queue_depth.sub(n as i64);
                }
                Err(e) => {
                    for r in batch.into_iter().rev() {
                        self.pending.push_front(r);
                    }
                    self.fail(&e);
                    return Err(e);
                }
            }
        }
        self.recovered();
        Ok(())
    }

    async fn replay(&mut self, s: &Arc<dyn Store>) -> Result<(), StoreError> {
        let bs = self.cfg.batch_size.max(1);
        // Bounded: each round consumes at least one line or ends.
        loop {
            let (recs, off, corrupt) = match self.spill.read_chunk(bs) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.spill.count = 0;
                    self.spill.offset = 0;
                    return Ok(());
                }
                Err(e) => return Err(StoreError::Unavailable(format!("reading spill file: {e}"))),
            };
            if corrupt > 0 {
                metrics()
                    .trace_dropped
                    .with_label_values(&["spill_corrupt"])
                    .inc_by(corrupt);
                tracing::error!(
                    lines = corrupt,
                    "corrupt lines in the trace spill file skipped"
                );
            }
            if recs.is_empty() && off == self.spill.offset {
                break;
            }
            let new = self.insert_resilient(s, &recs).await?;
            let m = metrics();
            m.trace_written
                .with_label_values(&[s.backend()])
                .inc_by(new as u64);
            m.trace_spilled
                .with_label_values(&["replayed"])
                .inc_by(recs.len() as u64);
            self.spill.offset = off;
            self.spill.count = self.spill.count.saturating_sub(recs.len() as u64 + corrupt);
        }
        self.spill
            .truncate()
            .map_err(|e| StoreError::Unavailable(format!("truncating spill file: {e}")))?;
        tracing::info!("trace spill file replayed");
        Ok(())
    }

    /// Move what exceeds `buffer_max` from memory to the spill file.
    fn overflow(&mut self) {
        if self.pending.len() <= self.cfg.buffer_max {
            return;
        }
        let excess = self.pending.len() - self.cfg.buffer_max;
        let recs: Vec<TraceRecord> = self.pending.drain(..excess).collect();
        self.spill_records(recs);
    }

    fn spill_records(&mut self, recs: Vec<TraceRecord>) {
        let n = recs.len() as u64;
        let m = metrics();
        m.trace_queue_depth.sub(n as i64);
        match self.spill.append(&recs) {
            Ok(()) => m.trace_spilled.with_label_values(&["spilled"]).inc_by(n),
            Err(e) => {
                m.trace_dropped
                    .with_label_values(&["spill_failed"])
                    .inc_by(n);
                tracing::error!(error = %e, records = n, path = %self.spill.path.display(), "trace spill failed; records lost");
            }
        }
    }

    fn maybe_purge(&mut self) {
        let Some(s) = self.store.clone() else { return };
        if Instant::now() < self.next_purge {
            return;
        }
        self.next_purge = Instant::now() + Duration::from_secs(self.cfg.purge_interval_secs.max(1));
        let rules = retention_rules(&self.cfg, chrono::Utc::now().timestamp_millis());
        if rules.is_empty() || self.purging.swap(true, Ordering::AcqRel) {
            return;
        }
        let flag = self.purging.clone();
        // Off the writer loop so a long purge never delays inserts.
        tokio::spawn(async move {
            for r in rules {
                match s.purge(&r).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(deleted = n, projects = ?r.projects, "retention purge")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "retention purge failed"),
                }
            }
            flag.store(false, Ordering::Release);
        });
    }
}

impl Writer {
    /// Settle pending feedback whose request has landed (from any instance) and expire the
    /// rest, off the writer loop like the purge.
    fn maybe_reconcile(&mut self) {
        if self.cfg.pending_feedback_secs == 0 {
            return;
        }
        let Some(s) = self.store.clone() else { return };
        if self.reconciling.swap(true, Ordering::AcqRel) {
            return;
        }
        let flag = self.reconciling.clone();
        tokio::spawn(async move {
            let now = chrono::Utc::now().timestamp_millis();
            match store::pending::reconcile(&*s, now).await {
                Ok(r) if r.settled + r.expired > 0 => {
                    let m = &metrics().feedback_received;
                    m.with_label_values(&["pending", "settled"])
                        .inc_by(r.settled as u64);
                    m.with_label_values(&["pending", "expired"])
                        .inc_by(r.expired as u64);
                    tracing::debug!(
                        settled = r.settled,
                        expired = r.expired,
                        "pending feedback reconciled"
                    )
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "pending feedback reconcile failed; will retry")
                }
            }
            flag.store(false, Ordering::Release);
        });
    }
}

fn clone_res(r: &Result<(), StoreError>) -> Result<(), StoreError> {
    match r {
        Ok(()) => Ok(()),
        Err(e) => Err(StoreError::Unavailable(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_rules_cover_overrides_then_default() {
        let mut cfg = StorageConfig::default();
        assert!(retention_rules(&cfg, 0).is_empty());
        cfg.retention_days = Some(30);
        cfg.project_retention_days.insert("a".into(), 1);
        let r = retention_rules(&cfg, 100 * 86_400_000);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].projects, ProjectSel::Only("a".into()));
        assert_eq!(r[0].before_ms, 99 * 86_400_000);
        assert_eq!(r[1].projects, ProjectSel::AllExcept(vec!["a".into()]));
        assert_eq!(r[1].before_ms, 70 * 86_400_000);
    }

    #[test]
    fn spill_roundtrip_and_torn_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("spill.jsonl");
        let mut s = Spill::new(path.clone());
        let recs: Vec<TraceRecord> = (0..3)
            .map(|i| TraceRecord {
                request_id: format!("r{i}"),
                ..Default::default()
            })
            .collect();
        s.append(&recs).expect("append");
        // a torn line and a garbage line
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(b"garbage\n{\"request_id\":").expect("write");
        let (got, off, corrupt) = s.read_chunk(10).expect("read");
        assert_eq!(got.len(), 3);
        assert_eq!(corrupt, 1);
        s.offset = off;
        let (got, _, _) = s.read_chunk(10).expect("read");
        assert!(got.is_empty());
        let mut s2 = Spill::new(path);
        s2.count_existing();
        assert_eq!(s2.count, 5);
        s2.truncate().expect("truncate");
        assert_eq!(s2.read_chunk(10).expect("read").0.len(), 0);
    }
}
