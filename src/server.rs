//! Assembling the daemon: the Pingora server with the proxy service, the metrics
//! listener and the background services (trace writer, config reload, credential
//! refresh).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::protocols::http::ServerSession;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::Server;
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::routes::StoreRoutes;
use crate::config::GatewayConfig;
use crate::proxy::{Gateway, LoopgateProxy};
use crate::routing::Runtime;
use crate::services::refresh::CredentialRefresher;
use crate::services::reload::ReloadService;
use crate::store::writer::{trace_pipeline, TraceSink, TraceWriterService};
use crate::store::Backend;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// `/metrics` in Prometheus text format; everything else 404.
pub struct MetricsApp;

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> http::Response<Vec<u8>> {
        let path = session.req_header().uri.path();
        let (status, ctype, body) = match path {
            "/metrics" => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                crate::metrics::render(),
            ),
            "/health" | "/healthz" => (200, "text/plain", b"ok\n".to_vec()),
            _ => (404, "text/plain", b"not found\n".to_vec()),
        };
        let len = body.len();
        http::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", len)
            .body(body)
            .unwrap_or_else(|_| http::Response::new(Vec::new()))
    }
}

/// Graceful shutdown that ends as soon as it can: after SIGTERM, wait until the
/// requests in flight have finished (at most the grace period), flush the traces, and
/// exit — instead of always sleeping Pingora's whole grace period.
pub struct ShutdownCoordinator {
    /// `None` when storage is disabled.
    pub sink: Option<TraceSink>,
    pub grace: Duration,
    /// Tells the trace writer to stop, only once nothing can submit traces any more.
    pub stop_writer: watch::Sender<bool>,
    /// Removed on exit while it still names this process.
    pub pid_file: Option<PathBuf>,
    /// The OTLP exporter's queue, exported (bounded) before exit (`[otlp]` on).
    pub otlp: Option<crate::services::otlp::OtlpFlush>,
}

#[async_trait]
impl BackgroundService for ShutdownCoordinator {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        let deadline = Instant::now() + self.grace;
        while crate::proxy::ctx::in_flight() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = crate::proxy::ctx::in_flight();
        if left > 0 {
            tracing::warn!(
                in_flight = left,
                "grace period over with requests still in flight"
            );
        }
        if let Some(sink) = &self.sink {
            match tokio::time::timeout(Duration::from_secs(10), sink.flush()).await {
                Ok(Ok(())) => tracing::info!("traces flushed; exiting"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "trace flush incomplete (buffered records are spilled to disk)")
                }
                Err(_) => tracing::warn!("trace flush timed out"),
            }
        }
        if let Some(o) = &self.otlp {
            o.flush_and_stop().await;
        }
        let _ = self.stop_writer.send(true);
        tokio::time::sleep(Duration::from_millis(200)).await;
        if let Some(p) = &self.pid_file {
            crate::daemon::remove_pid_file_if_ours(p);
        }
        std::process::exit(0);
    }
}

/// Runs the trace writer on the coordinator's stop signal rather than Pingora's, so
/// traces of requests finishing during the grace period are still written.
struct CoordinatedWriter {
    inner: TraceWriterService,
    stop: watch::Receiver<bool>,
}

#[async_trait]
impl BackgroundService for CoordinatedWriter {
    async fn start(&self, _pingora_shutdown: ShutdownWatch) {
        self.inner.start(self.stop.clone()).await;
    }
}

/// Runs the webhook worker on Pingora's background runtime.
struct WebhookService(std::sync::Mutex<Option<crate::rollout::webhook::WebhookWorker>>);

#[async_trait]
impl BackgroundService for WebhookService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let worker = self.0.lock().ok().and_then(|mut w| w.take());
        if let Some(w) = worker {
            tokio::select! {
                _ = w.run() => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

pub struct ServeOptions {
    pub config: Option<PathBuf>,
    /// Take over listeners from a running instance (Pingora graceful upgrade).
    pub upgrade: bool,
    /// The gateway's judge and shadow queues: pass a shared one to watch their backlog
    /// (the demo's backpressure); otherwise `Default::default()`.
    pub jobs: Arc<crate::rollout::jobs::JobQueues>,
}

/// Bind and release `addr`, so a taken port is an error now rather than Pingora's endless retry.
fn check_bindable(key: &str, env: &str, addr: &str) -> Result<(), String> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "{key} {addr}: address already in use (another loopgate or another program listens there): stop it, or choose another address with {key} or {env} (`loopgate serve --upgrade` takes over from a running loopgate)"
        )),
        Err(e) => Err(format!("{key} {addr}: cannot listen: {e}")),
    }
}

/// A listen address after port 0 is resolved, and what holds that port.
struct Listen {
    addr: String,
    /// Set for port 0: the socket that picked the port, bound with `SO_REUSEPORT` and never
    /// listening (so it takes no connection); Pingora binds the same port with `SO_REUSEPORT`.
    /// Unlike probing a free port and releasing it, no other program can take the port in
    /// between. Held for the life of the process.
    hold: Option<socket2::Socket>,
}

impl Listen {
    /// `addr` unchanged, or for port 0 the port the kernel picked (named in the
    /// "starting loopgate" log line, which is how a test or script learns it).
    fn resolve(key: &str, addr: &str, upgrade: bool) -> Result<Listen, String> {
        use socket2::{Domain, Protocol, Socket, Type};
        let at: std::net::SocketAddr = addr
            .parse()
            .map_err(|_| format!("{key} '{addr}' is not an address:port"))?;
        if at.port() != 0 {
            return Ok(Listen {
                addr: addr.to_string(),
                hold: None,
            });
        }
        if upgrade {
            // The running instance's port is not in the config: nothing to take over.
            return Err(format!(
                "{key} {addr}: port 0 cannot be taken over by an upgrade; give a fixed port"
            ));
        }
        let cannot = |e: std::io::Error| format!("{key} {addr}: cannot pick a port: {e}");
        let sock = Socket::new(Domain::for_address(at), Type::STREAM, Some(Protocol::TCP))
            .map_err(cannot)?;
        sock.set_reuse_port(true).map_err(cannot)?;
        sock.bind(&at.into()).map_err(cannot)?;
        let bound = sock
            .local_addr()
            .map_err(cannot)?
            .as_socket()
            .ok_or_else(|| format!("{key} {addr}: the picked port has no IP address"))?;
        Ok(Listen {
            addr: bound.to_string(),
            hold: Some(sock),
        })
    }

    /// Add this address to a Pingora listening service.
    fn add_to<A>(&self, service: &mut Service<A>) {
        if self.hold.is_some() {
            let mut opts = pingora::listeners::TcpSocketOptions::default();
            opts.so_reuseport = Some(true);
            service.add_tcp_with_settings(&self.addr, opts);
        } else {
            service.add_tcp(&self.addr);
        }
    }
}

/// `vault.master_key_file`, resolved against the config's directory.
fn rt_vault_file(cfg: &GatewayConfig) -> Option<PathBuf> {
    cfg.vault
        .master_key_file
        .as_deref()
        .map(|f| cfg.resolve_path(f))
}

/// The runtime a start builds (and `loopgate check` checks): runtime keys are not read
/// yet, so with a vault master key set a route, fallback chain or judge model that only a
/// provider a runtime key alone activates would serve is a warning, not an error (the
/// store poll activates that provider once it reads its key).
pub fn start_runtime(cfg: GatewayConfig) -> Result<Runtime, String> {
    let keys_possible =
        crate::auth::provider_keys::MasterKeys::load(rt_vault_file(&cfg).as_deref())
            .is_ok_and(|m| m.is_set());
    Runtime::build_checked_keyed(cfg, 1, std::collections::BTreeSet::new(), keys_possible)
        .map_err(|e| e.to_string())
}

/// Build and run the daemon; returns only on startup errors.
pub fn serve(opts: ServeOptions) -> Result<(), String> {
    let cfg = GatewayConfig::load(opts.config.as_deref()).map_err(|e| e.to_string())?;
    let rt = start_runtime(cfg)?;
    if !opts.upgrade {
        // Pingora retries a taken port forever; fail fast with what to do instead.
        // (An upgrade takes the sockets over from the running instance instead.)
        for (key, env, addr) in [
            ("server.listen", "LOOPGATE_LISTEN", &rt.config.server.listen),
            (
                "server.metrics_listen",
                "LOOPGATE_METRICS_LISTEN",
                &rt.config.server.metrics_listen,
            ),
        ] {
            check_bindable(key, env, addr)?;
        }
    }
    // The writer keeps the `[storage]` it started with: backend, batching, retention and
    // turning capture on need a restart. Turning capture off and adding zero-retention
    // projects apply on reload (the request path stops capturing at once).
    let storage = rt.storage.clone();
    for w in &rt.warnings {
        tracing::warn!("config: {w}");
    }
    crate::metrics::metrics().config_version.set(1);
    let mut s = rt.config.server.clone();
    // Port 0 becomes a concrete port here, before anything logs or probes the address.
    let listen = Listen::resolve("server.listen", &s.listen, opts.upgrade)?;
    let metrics_listen = Listen::resolve("server.metrics_listen", &s.metrics_listen, opts.upgrade)?;
    s.listen = listen.addr.clone();
    s.metrics_listen = metrics_listen.addr.clone();
    if let Some(dir) = &s.state_dir {
        let made = {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(dir)
        };
        made.map_err(|e| format!("state directory {dir}: {e}"))?;
        tracing::info!(state_dir = %dir, from = rt.config.state_dir_from, "state directory");
    }
    if rt.open_access {
        tracing::warn!(
            "no gateway key configured: accepting unauthenticated requests on loopback only"
        );
    }
    tracing::info!(
        listen = %s.listen,
        metrics = %s.metrics_listen,
        providers = ?rt.active_names().collect::<Vec<_>>(),
        catalog_models = rt.catalog.len(),
        "starting loopgate"
    );

    let tracing_on = storage.backend != Backend::None;
    let (sink, writer, slot) = trace_pipeline(&storage);
    let (stop_writer, writer_stop) = watch::channel(false);
    let mut coordinator = ShutdownCoordinator {
        sink: tracing_on.then(|| sink.clone()),
        grace: Duration::from_secs(s.grace_period_secs),
        stop_writer,
        pid_file: s.pid_file.as_deref().map(PathBuf::from),
        otlp: None,
    };
    let hook: crate::proxy::TraceHook = if tracing_on {
        Box::new(move |r| sink.submit(r))
    } else {
        tracing::warn!("storage backend \"none\": no traces are recorded");
        Box::new(|_| {})
    };
    let routing = rt.config.routing.clone();
    let limits_cfg = rt.config.limits.clone();
    let mut gw = Gateway::new(rt, hook);
    gw.jobs = Arc::clone(&opts.jobs);
    gw.limits = Arc::new(
        crate::auth::limits::Limiter::with_config(&limits_cfg)
            .map_err(|e| format!("limits: {e}"))?,
    );
    match gw.limits.endpoint() {
        Some(at) => tracing::info!(
            redis = %at,
            failure_mode = ?limits_cfg.failure_mode,
            timeout_ms = limits_cfg.timeout_ms,
            "limits: rate counters and budget spend shared through Redis"
        ),
        None => tracing::debug!("limits: rate counters and budget spend in process"),
    }
    gw.tracing = tracing_on;
    gw.recent = tracing_on.then(|| slot.recent());
    gw.store = tracing_on.then(|| slot.clone());
    let signing_key = std::env::var(&routing.signing_key_env).ok();
    gw.auto = Arc::new(crate::routing::auto::AutoState::new(
        signing_key,
        &routing.signing_key_id,
        routing.sticky_ttl_secs,
        routing.recent_capacity,
    ));
    // Only feedback routes sign decisions: without one an ephemeral key is no concern.
    let feedback_routes = gw
        .runtime
        .load()
        .config
        .routes
        .values()
        .any(|r| r.baseline.is_some());
    if gw.auto.ephemeral_key && !feedback_routes {
        tracing::info!(
            env = %routing.signing_key_env,
            "no decision signing key set; a random one is used if a feedback route is added"
        );
    } else if gw.auto.ephemeral_key {
        tracing::warn!(
            env = %routing.signing_key_env,
            "no decision signing key set: using a random key; exported decisions verify only until restart"
        );
    }
    let mut webhook_worker = None;
    if let Some(mut wc) = gw.runtime.load().config.webhook.clone() {
        wc.resolve_secret(|k| std::env::var(k).ok())
            .map_err(|e| format!("webhook: {e}"))?;
        let stats = crate::rollout::webhook::WebhookStats::new()
            .and_then(|s| {
                s.register(prometheus::default_registry())?;
                Ok(s)
            })
            .map_err(|e| format!("webhook: {e}"))?;
        let (sender, worker) = crate::rollout::webhook::WebhookSender::new(wc, Arc::new(stats))
            .map_err(|e| format!("webhook: {e}"))?;
        gw.limits.set_webhook(sender.clone());
        let _ = gw.auto.webhook.set(sender);
        webhook_worker = Some(worker);
    }
    gw.admin.push(Box::new(StoreRoutes { slot: slot.clone() }));
    gw.admin
        .push(Box::new(crate::admin::routing::RoutingRoutes {
            slot: tracing_on.then(|| slot.clone()),
            auto: gw.auto.clone(),
            runtime: gw.runtime.clone(),
        }));
    gw.admin.push(Box::new(crate::admin::keys::KeyRoutes {
        slot: tracing_on.then(|| slot.clone()),
        vkeys: gw.vkeys.clone(),
        runtime: gw.runtime.clone(),
        auto: gw.auto.clone(),
        limits: gw.limits.clone(),
    }));
    let vault_file = rt_vault_file(&gw.runtime.load().config);
    let master = crate::auth::provider_keys::MasterKeys::load(vault_file.as_deref())
        .map_err(|e| format!("vault: {e}"))?;
    match master.kid() {
        Some(kid) => {
            tracing::info!(master_key_id = %kid, "vault: provider keys added at runtime are encrypted under this master key")
        }
        None => tracing::info!(
            "vault: no master key ({}); provider keys cannot be added at runtime",
            crate::auth::provider_keys::ENV_KEY
        ),
    }
    // Without a master key this gateway can use no runtime key, so its first requests have
    // nothing to wait for (a bounded call such as a prompt-routing embedding would otherwise
    // time out waiting for the store's first read).
    let wait_for_store = tracing_on && master.is_set();
    gw.provider_keys = Arc::new(crate::auth::provider_keys::ProviderKeys::new(
        master,
        gw.runtime.load().config.vault.clone(),
        wait_for_store,
    ));
    gw.admin
        .push(Box::new(crate::admin::provider_keys::ProviderKeyRoutes {
            slot: tracing_on.then(|| slot.clone()),
            keys: gw.provider_keys.clone(),
            runtime: gw.runtime.clone(),
            auto: gw.auto.clone(),
        }));
    let otlp_cfg = gw.runtime.load().config.otlp.clone();
    let mut otlp_service = None;
    if otlp_cfg.enabled {
        let (outlet, rx) = crate::trace::otel::Otel::channel(&otlp_cfg);
        gw.otlp = Some(Arc::new(outlet));
        let (svc, flush) = crate::services::otlp::OtlpService::new(otlp_cfg, rx);
        coordinator.otlp = Some(flush);
        otlp_service = Some(svc);
    }
    gw.ui = Some(Arc::new(crate::ui::Ui::new(gw.runtime.clone())));
    gw.admin.push(Box::new(crate::ui::WhoAmI));
    let mcp = crate::mcp::Mcp::assemble(&mut gw, tracing_on.then(|| slot.clone()));
    let vkeys = gw.vkeys.clone();
    let provider_keys = gw.provider_keys.clone();
    let gw = Arc::new(gw);
    mcp.bind(&gw);
    crate::services::aggregator::AggregatorService::initial_table(&gw);

    // Pingora sleeps its whole grace period; the coordinator exits earlier once idle.
    let conf = ServerConf {
        threads: s.threads.max(1),
        grace_period_seconds: Some(s.grace_period_secs),
        graceful_shutdown_timeout_seconds: Some(s.graceful_shutdown_timeout_secs),
        pid_file: s.pid_file.clone().unwrap_or_default(),
        upgrade_sock: s.upgrade_sock.clone().unwrap_or_default(),
        ..Default::default()
    };
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();

    let mut proxy = pingora_proxy::http_proxy_service_with_name(
        &server.configuration,
        LoopgateProxy { gw: gw.clone() },
        "loopgate proxy",
    );
    listen.add_to(&mut proxy);
    let mut metrics = Service::new(
        "loopgate metrics".to_string(),
        HttpServer::new_app(MetricsApp),
    );
    metrics_listen.add_to(&mut metrics);
    metrics.threads = Some(1);

    server.add_service(proxy);
    server.add_service(metrics);
    if tracing_on {
        server.add_service(background_service(
            "trace writer",
            CoordinatedWriter {
                inner: writer,
                stop: writer_stop,
            },
        ));
    }
    server.add_service(background_service("shutdown", coordinator));
    if let Some(svc) = otlp_service {
        server.add_service(background_service("otlp exporter", svc));
    }
    if tracing_on {
        server.add_service(background_service(
            "virtual keys",
            crate::auth::virtual_keys::RefreshService {
                keys: vkeys,
                provider_keys: Some(provider_keys),
                slot: slot.clone(),
            },
        ));
        if !gw.limits.is_shared() {
            server.add_service(background_service(
                "limits spend reload",
                crate::auth::limits::SpendReload {
                    limiter: gw.limits.clone(),
                    slot: slot.clone(),
                    groups: limits_cfg.clone(),
                },
            ));
        }
    }
    server.add_service(background_service(
        "config reload",
        ReloadService::new(gw.clone(), opts.config.clone()),
    ));
    if let Some(w) = webhook_worker {
        server.add_service(background_service(
            "webhook",
            WebhookService(std::sync::Mutex::new(Some(w))),
        ));
    }
    server.add_service(background_service(
        "shadow calls",
        crate::services::shadow::ShadowService::install(
            gw.clone(),
            tracing_on.then(|| slot.clone()),
        ),
    ));
    if tracing_on {
        server.add_service(background_service(
            "judge",
            crate::services::judge_service::JudgeService::install(gw.clone(), slot.clone()),
        ));
    }
    server.add_service(background_service(
        "feedback aggregator",
        crate::services::aggregator::AggregatorService {
            gw: gw.clone(),
            slot: tracing_on.then_some(slot),
        },
    ));
    server.add_service(background_service(
        "credential refresh",
        CredentialRefresher { gw },
    ));
    crate::daemon::watch_lifecycle(
        server.watch_execution_phase(),
        vec![s.listen.clone(), s.metrics_listen.clone()],
        s.pid_file.as_deref().map(PathBuf::from),
    );
    server.run_forever();
}
