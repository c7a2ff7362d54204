//! The OTLP exporter service: drains the span queue the request path fills
//! (`trace::otel::Otel::submit`), batches it (`otlp.batch_size` spans or
//! `otlp.export_interval_ms`, whichever comes first) and exports each batch with
//! opentelemetry-otlp's exporter over HTTP/protobuf or gRPC, one call at a time.
//!
//! ```text
//! request path --submit()--> bounded queue --> this service --> SpanExporter::export
//!                (full = counted drop)           |   failure: spans counted as dropped,
//!                                                |   the failure counted, logged at most once a minute
//!                                                +-- shutdown: drain and export, bounded
//! ```

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use opentelemetry_sdk::Resource;
use pingora_core::server::ShutdownWatch;
use pingora_core::services::background::BackgroundService;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::metrics;
use crate::trace::otel::{OtlpConfig, OtlpProtocol};

/// How often an export failure is logged at most (the counter has every one).
const LOG_EVERY: Duration = Duration::from_secs(60);

/// Build the exporter the config names (no connection is made yet).
pub fn exporter(cfg: &OtlpConfig) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let url = cfg.resolved_endpoint();
    let timeout = Duration::from_millis(cfg.timeout_ms);
    let built = match cfg.protocol {
        OtlpProtocol::HttpProtobuf => {
            let headers: HashMap<String, String> = cfg.headers.clone().into_iter().collect();
            opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(url)
                .with_timeout(timeout)
                .with_headers(headers)
                .build()
        }
        OtlpProtocol::Grpc => {
            let mut hm = http::HeaderMap::new();
            for (k, v) in &cfg.headers {
                let name = http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|_| format!("otlp.headers: '{k}' is not a valid metadata key"))?;
                let value = http::HeaderValue::from_str(v)
                    .map_err(|_| format!("otlp.headers.{k}: not a valid metadata value"))?;
                hm.insert(name, value);
            }
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(url)
                .with_timeout(timeout)
                .with_metadata(
                    opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(hm),
                )
                .build()
        }
    };
    // The builder's error names the setting, never a header value.
    let mut e = built.map_err(|e| format!("otlp exporter: {e}"))?;
    e.set_resource(
        &Resource::builder()
            .with_service_name(cfg.service_name.clone())
            .build(),
    );
    Ok(e)
}

/// Ask the service to export what is queued and stop (the shutdown coordinator's handle).
#[derive(Clone)]
pub struct OtlpFlush {
    tx: mpsc::Sender<oneshot::Sender<()>>,
    timeout: Duration,
}

impl OtlpFlush {
    /// Export the queue and wait for it, at most `otlp.shutdown_timeout_ms`.
    pub async fn flush_and_stop(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(tx).await.is_err() {
            return;
        }
        if tokio::time::timeout(self.timeout, rx).await.is_err() {
            tracing::warn!(
                timeout_ms = self.timeout.as_millis() as u64,
                "otlp: spans still queued at shutdown were not all exported in time"
            );
        }
    }
}

/// The span queue and the shutdown flush requests.
type Queues = (
    mpsc::Receiver<SpanData>,
    mpsc::Receiver<oneshot::Sender<()>>,
);

pub struct OtlpService {
    cfg: OtlpConfig,
    rx: Mutex<Option<Queues>>,
}

impl OtlpService {
    /// The service draining `rx`, and the handle that flushes it at shutdown.
    pub fn new(cfg: OtlpConfig, rx: mpsc::Receiver<SpanData>) -> (OtlpService, OtlpFlush) {
        let (ftx, frx) = mpsc::channel(1);
        let flush = OtlpFlush {
            tx: ftx,
            timeout: Duration::from_millis(cfg.shutdown_timeout_ms),
        };
        (
            OtlpService {
                cfg,
                rx: Mutex::new(Some((rx, frx))),
            },
            flush,
        )
    }
}

/// Export state: the exporter and the rate limit of failure logs.
struct Sink {
    exporter: opentelemetry_otlp::SpanExporter,
    timeout: Duration,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl Sink {
    async fn export(&mut self, batch: &mut Vec<SpanData>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let spans = std::mem::take(batch);
        // The exporter has its own timeout; this bounds the call whatever it does.
        let res = tokio::time::timeout(
            self.timeout + Duration::from_millis(500),
            self.exporter.export(spans),
        )
        .await;
        let m = metrics();
        let err = match res {
            Ok(Ok(())) => {
                m.otlp_exported.inc_by(n);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_string(),
        };
        m.otlp_export_failures.inc();
        m.otlp_dropped
            .with_label_values(&["export_failed"])
            .inc_by(n);
        self.unlogged += 1;
        if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            tracing::warn!(
                error = %err,
                spans = n,
                failures = self.unlogged,
                "otlp: export failed; spans dropped (logged at most once a minute; see loopgate_otlp_export_failures_total)"
            );
            self.last_log = Some(Instant::now());
            self.unlogged = 0;
        }
    }
}

#[async_trait]
impl BackgroundService for OtlpService {
    async fn start(&self, _pingora_shutdown: ShutdownWatch) {
        // Stopped by the shutdown coordinator's flush, after the last request logged.
        let Some((mut rx, mut flush_rx)) = self.rx.lock().ok().and_then(|mut g| g.take()) else {
            return;
        };
        let exporter = match exporter(&self.cfg) {
            Ok(e) => e,
            Err(e) => {
                // Dropping the receiver: every span is counted as dropped (`closed`).
                tracing::error!(error = %e, "otlp: exporter could not be built; no spans are exported");
                return;
            }
        };
        tracing::info!(
            endpoint = %self.cfg.resolved_endpoint(),
            protocol = self.cfg.protocol.as_str(),
            "otlp: exporting one span per model call"
        );
        let mut sink = Sink {
            exporter,
            timeout: Duration::from_millis(self.cfg.timeout_ms),
            last_log: None,
            unlogged: 0,
        };
        let size = self.cfg.batch_size.max(1);
        let interval = Duration::from_millis(self.cfg.export_interval_ms);
        let mut batch: Vec<SpanData> = Vec::with_capacity(size);
        let mut deadline: Option<tokio::time::Instant> = None;
        let done = loop {
            let room = size - batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, room) => {
                    if n == 0 {
                        break None;
                    }
                    if batch.len() >= size {
                        metrics().otlp_queue_depth.set(rx.len() as i64);
                        sink.export(&mut batch).await;
                        deadline = None;
                    } else if deadline.is_none() {
                        deadline = Some(tokio::time::Instant::now() + interval);
                    }
                }
                _ = async { if let Some(d) = deadline { tokio::time::sleep_until(d).await } }, if deadline.is_some() => {
                    metrics().otlp_queue_depth.set(rx.len() as i64);
                    sink.export(&mut batch).await;
                    deadline = None;
                }
                f = flush_rx.recv() => break f,
            }
        };
        // Shutdown: what is queued goes out (the coordinator bounds the wait).
        rx.close();
        while let Some(s) = rx.recv().await {
            batch.push(s);
            if batch.len() >= size {
                sink.export(&mut batch).await;
            }
        }
        sink.export(&mut batch).await;
        metrics().otlp_queue_depth.set(0);
        let _ = sink.exporter.shutdown();
        if let Some(done) = done {
            let _ = done.send(());
        }
    }
}
