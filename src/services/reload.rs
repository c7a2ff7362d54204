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

use crate::config::GatewayConfig;
use crate::gateway::Gateway;
use crate::metrics::metrics;
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
            .and_then(|cfg| self.build(cfg));
        self.publish(built, "configuration reloaded")
    }

    /// The providers with runtime keys changed (`auth::provider_keys`, mirrored by the
    /// store poll): rebuild the running configuration with them and publish it the way a
    /// reload does, so a provider whose first key was just added becomes active and one
    /// whose last key was removed inactive (unless its variable is set). A no-op when the
    /// running snapshot already has that set.
    pub fn rekey(&self) -> Result<u64, String> {
        let old = self.gw.runtime.load_full();
        if old.keyed == self.gw.provider_keys.keyed_providers() {
            return Ok(old.version);
        }
        // A route only the deactivated provider served becomes unservable (a logged
        // warning) rather than keeping a provider whose key is gone.
        let built = self.build(old.config.clone());
        if let Ok(rt) = &built {
            log_key_activation(&old, rt);
        }
        self.publish(
            built,
            "configuration rebuilt: the providers with runtime keys changed",
        )
    }

    /// Build the next version of the runtime from `cfg` with the providers that have
    /// runtime keys now; when this gateway can hold runtime keys (a vault master key),
    /// entries only a key-activated provider would serve are warnings (see
    /// [`Runtime::build_checked_keyed`]).
    fn build(&self, cfg: GatewayConfig) -> Result<Runtime, String> {
        let v = self.version.load(Ordering::Relaxed) + 1;
        Runtime::build_checked_keyed(
            cfg,
            v,
            self.gw.provider_keys.keyed_providers(),
            self.gw.provider_keys.master().is_set(),
        )
        .map_err(|e| e.to_string())
    }

    /// Publish a built runtime (one atomic swap; requests in flight keep theirs), or log
    /// why it could not be built and keep the running one.
    fn publish(&self, built: Result<Runtime, String>, what: &str) -> Result<u64, String> {
        match built {
            Ok(rt) => {
                let v = rt.version;
                for w in &rt.warnings {
                    tracing::warn!("config: {w}");
                }
                let old = self.gw.runtime.load();
                let restart = needs_restart(&old.config, &rt.config);
                drop(old);
                if !restart.is_empty() {
                    tracing::warn!(
                        sections = %restart.join(", "),
                        "configuration reloaded, but these changed settings apply only after a restart; they keep their running values until then"
                    );
                }
                metrics().config_restart_pending.set(restart.len() as i64);
                self.version.store(v, Ordering::Relaxed);
                self.gw.runtime.store(Arc::new(rt));
                self.gw.auto.nudge.notify_one();
                metrics().config_reloads.with_label_values(&["ok"]).inc();
                metrics().config_version.set(v as i64);
                tracing::info!(version = v, "{what}");
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

/// One line per provider that became active or inactive through its runtime keys between
/// `old` and `new` (names only, never a key); a warning for a provider that has runtime
/// keys but needs more than a key to be active.
fn log_key_activation(old: &Runtime, new: &Runtime) {
    let by_key =
        |rt: &Runtime, name: &str| rt.provider(name).filter(|p| p.by_runtime_key).is_some();
    for p in &new.known {
        let (was, is) = (by_key(old, &p.name), by_key(new, &p.name));
        if is && !was && old.provider(&p.name).is_none() {
            tracing::info!(provider = %p.name, "provider active: it has a runtime key (POST /v1/providers/{}/keys)", p.name);
        } else if was && new.provider(&p.name).is_none() {
            tracing::info!(provider = %p.name, "provider inactive: its last runtime key was removed and {} is not set", p.activation_vars().join(" or "));
        } else if new.keyed.contains(&p.name)
            && !old.keyed.contains(&p.name)
            && new.provider(&p.name).is_none()
        {
            tracing::warn!(provider = %p.name, "provider has runtime keys but stays inactive: a key alone does not activate it (set {})", p.activation_vars().join(" or "));
        }
    }
}

/// Settings read once at start (listeners, runtimes, the trace writer, the decision
/// signer, queues and the webhook worker): changed in a reload, they wait for a restart.
pub fn needs_restart(old: &GatewayConfig, new: &GatewayConfig) -> Vec<String> {
    let mut out = Vec::new();
    let (a, b) = (&old.server, &new.server);
    let mut diff = |name: &str, changed: bool| {
        if changed {
            out.push(name.to_string());
        }
    };
    diff("server.listen", a.listen != b.listen);
    diff(
        "server.metrics_listen",
        a.metrics_listen != b.metrics_listen,
    );
    diff("server.threads", a.threads != b.threads);
    diff(
        "server.grace_period_secs",
        a.grace_period_secs != b.grace_period_secs,
    );
    diff(
        "server.graceful_shutdown_timeout_secs",
        a.graceful_shutdown_timeout_secs != b.graceful_shutdown_timeout_secs,
    );
    diff("server.watch", a.watch != b.watch);
    diff("server.pid_file", a.pid_file != b.pid_file);
    diff("server.upgrade_sock", a.upgrade_sock != b.upgrade_sock);
    diff(
        "cache.max_bytes",
        old.cache.max_bytes != new.cache.max_bytes,
    );
    diff("[cache] backend", {
        // The store is built at start: its backend and Redis settings apply after a restart.
        let backend = |c: &crate::cache::CacheConfig| {
            (
                c.backend,
                c.redis_url.clone(),
                c.redis_timeout_ms,
                c.redis_key_prefix.clone(),
                c.l1,
            )
        };
        backend(&old.cache) != backend(&new.cache)
    });
    let sem =
        |c: &crate::cache::semantic::SemanticConfig| (c.max_entries, c.max_scopes, c.max_bytes);
    diff(
        "cache.semantic.max_entries, max_scopes, max_bytes",
        sem(&old.cache.semantic) != sem(&new.cache.semantic),
    );
    diff("[limits]", {
        // The limits of projects, teams and users apply on reload; the backend does not.
        let backend = |l: &crate::config::LimitsConfig| {
            (
                l.backend,
                l.redis_url.clone(),
                l.timeout_ms,
                l.failure_mode,
                l.key_prefix.clone(),
            )
        };
        backend(&old.limits) != backend(&new.limits)
    });
    diff("[otlp]", old.otlp != new.otlp);
    // Turning body capture off and zero-retention projects apply at once; turning capture
    // on and the rest of [storage] (backend, batching, retention) do not.
    let storage = |t: &toml::Table| {
        let mut t = t.clone();
        t.remove("capture_bodies");
        t.remove("zero_retention_projects");
        t
    };
    diff("[storage]", storage(&old.storage) != storage(&new.storage));
    let capture = |t: &toml::Table| t.get("capture_bodies").and_then(toml::Value::as_bool);
    diff(
        "storage.capture_bodies (turned on)",
        capture(&old.storage) != Some(true) && capture(&new.storage) == Some(true),
    );
    let (r, s) = (&old.routing, &new.routing);
    diff(
        "routing.signing_key_env",
        r.signing_key_env != s.signing_key_env,
    );
    diff(
        "routing.signing_key_id",
        r.signing_key_id != s.signing_key_id,
    );
    diff(
        "routing.sticky_ttl_secs",
        r.sticky_ttl_secs != s.sticky_ttl_secs,
    );
    diff(
        "routing.recent_capacity",
        r.recent_capacity != s.recent_capacity,
    );
    diff("judge.queue", old.judge.queue != new.judge.queue);
    diff(
        "judge.concurrency",
        old.judge.concurrency != new.judge.concurrency,
    );
    diff(
        "[webhook]",
        format!("{:?}", old.webhook) != format!("{:?}", new.webhook),
    );
    out
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
        // Activation by runtime key: the store poll republishes the set of providers with
        // keys; a change (or one before this service started) rebuilds the snapshot.
        let mut keyed = self.gw.provider_keys.watch_keyed();
        let _ = self.rekey();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Ok(()) = keyed.changed() => {
                    let _ = self.rekey();
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_limits_backend_waits_for_a_restart() {
        let old = GatewayConfig::default();
        let mut new = old.clone();
        assert!(needs_restart(&old, &new).is_empty());
        new.limits.backend = crate::config::LimitsBackend::Redis;
        new.limits.redis_url = Some("redis://127.0.0.1:6379".into());
        assert_eq!(needs_restart(&old, &new), vec!["[limits]".to_string()]);
    }
}
