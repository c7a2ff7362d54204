//! Hot reload: on SIGHUP and on file change, parse and validate the whole config, then
//! swap the routing table. An invalid config is logged and counted; the old one keeps
//! serving. Requests in flight keep the snapshot they started with.
//!
//! This runs as a Pingora background service: anything spawned before `run_forever()`
//! would not survive a daemon fork.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::GatewayConfig;
use crate::metrics::metrics;
use crate::proxy::Gateway;
use crate::routing::Runtime;

pub struct ReloadService {
    gw: Arc<Gateway>,
    config_path: Option<PathBuf>,
    version: AtomicU64,
}

impl ReloadService {
    pub fn new(gw: Arc<Gateway>, config_path: Option<PathBuf>) -> Self {
        let v = gw.runtime.load().version;
        ReloadService {
            gw,
            config_path,
            version: AtomicU64::new(v),
        }
    }

    /// Build a new runtime from disk and publish it. Returns the error text on failure.
    pub fn reload(&self) -> Result<u64, String> {
        let built = GatewayConfig::load(self.config_path.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                let v = self.version.load(Ordering::Relaxed) + 1;
                Runtime::build(cfg, v).map_err(|e| e.to_string())
            });
        match built {
            Ok(rt) => {
                let v = rt.version;
                self.version.store(v, Ordering::Relaxed);
                self.gw.runtime.store(Arc::new(rt));
                self.gw.auto.nudge.notify_one();
                metrics().config_reloads.with_label_values(&["ok"]).inc();
                metrics().config_version.set(v as i64);
                tracing::info!(version = v, "configuration reloaded");
                Ok(v)
            }
            Err(e) => {
                metrics()
                    .config_reloads
                    .with_label_values(&["failed"])
                    .inc();
                tracing::error!(error = %e, "configuration reload failed; the previous configuration keeps serving");
                Err(e)
            }
        }
    }
}

#[async_trait]
impl BackgroundService for ReloadService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGHUP");
                None
            }
        };
        // File watching: notify delivers on its own thread; forward into tokio.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(16);
        let rt = self.gw.runtime.load();
        let _watcher = if rt.config.server.watch {
            watch(rt.config.watched_paths(), tx)
        } else {
            None
        };
        drop(rt);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(_) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    tracing::info!("SIGHUP: reloading configuration");
                    let _ = self.reload();
                }
                Some(_) = rx.recv() => {
                    // Editors write in several steps: let the burst settle.
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    while rx.try_recv().is_ok() {}
                    let _ = self.reload();
                }
            }
        }
    }
}

fn watch(
    paths: Vec<PathBuf>,
    tx: tokio::sync::mpsc::Sender<()>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    // Only events on the config file, the catalog file or `.toml` files in the filters
    // directory count: other files share those directories (the SQLite database, say).
    // notify reports absolute paths.
    let paths: Vec<PathBuf> = paths
        .into_iter()
        .map(|p| std::fs::canonicalize(&p).unwrap_or(p))
        .collect();
    let relevant: Vec<PathBuf> = paths.clone();
    let mut w = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            let kind_ok = matches!(
                ev.kind,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_)
            );
            let path_ok = ev.paths.iter().any(|p| {
                relevant.iter().any(|r| {
                    p == r
                        || (r.is_dir()
                            && p.parent() == Some(r.as_path())
                            && p.extension().is_some_and(|x| x == "toml"))
                })
            });
            if kind_ok && path_ok {
                let _ = tx.try_send(());
            }
        }
    })
    .map_err(|e| tracing::error!(error = %e, "file watching unavailable; SIGHUP still reloads"))
    .ok()?;
    for p in paths {
        // Watch the directory of a file so editors that replace files are seen.
        let target = if p.is_dir() {
            p.clone()
        } else {
            p.parent().map(|d| d.to_path_buf()).unwrap_or(p.clone())
        };
        if let Err(e) = w.watch(&target, RecursiveMode::NonRecursive) {
            tracing::warn!(path = %target.display(), error = %e, "cannot watch path");
        }
    }
    Some(w)
}
