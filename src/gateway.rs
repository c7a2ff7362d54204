//! The state every request and every background service shares: the published runtime
//! snapshot, the trace outlet, the router state, keys, limits and cache, and the handlers of
//! the APIs served on top of the proxy.
//!
//! It sits below `services` and `proxy`: both take an `Arc<Gateway>`, neither imports the
//! other.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::api::AdminRoutes;
use crate::routing::Runtime;
use crate::trace::TraceRecord;

/// Where finished traces go (the trace writer's channel in production).
pub type TraceHook = Box<dyn Fn(TraceRecord) + Send + Sync>;

/// State shared by every request: the current routing table and the outlets.
pub struct Gateway {
    pub runtime: Arc<ArcSwap<Runtime>>,
    pub traces: TraceHook,
    /// False with `storage.backend = "none"`: the trace record is not even built.
    pub tracing: bool,
    pub admin: Vec<Box<dyn AdminRoutes>>,
    /// Feedback routing: the published router table and per-request routing state.
    pub auto: Arc<crate::routing::auto::AutoState>,
    /// Ids served by this instance, for read-your-writes lookups (`trace::fresh`).
    pub recent: Option<Arc<crate::trace::fresh::Recent>>,
    /// Prompt-level routing: per-route indexes and the memory of labelled prompts.
    pub prompt: Arc<crate::feedback::prompt::state::PromptState>,
    /// Keys created through `/v1/keys`, mirrored from the store.
    pub vkeys: Arc<crate::auth::virtual_keys::VirtualKeys>,
    /// Provider API keys added at runtime (decrypted mirror, cooldowns).
    pub provider_keys: Arc<crate::auth::provider_keys::ProviderKeys>,
    /// Per-key rate limits and budgets of virtual keys (in process).
    pub limits: Arc<crate::auth::limits::Limiter>,
    /// The exact response cache (sized from `[cache]` at start).
    pub cache: Arc<crate::cache::Cache>,
    /// The MCP server at `/mcp` (`None`: 404). It checks its own scoped tokens, so it gets
    /// the request before gateway-key auth; the server assembles it (`mcp` module).
    pub mcp: Option<Arc<dyn AdminRoutes>>,
    /// The operator dashboard's static assets at `/ui` (`None`: 404). Served before
    /// gateway-key auth: the pages sign in from the browser with a key the API checks.
    pub ui: Option<Arc<dyn AdminRoutes>>,
    /// The semantic cache (sized from `[cache.semantic]` at start).
    pub semantic: Arc<crate::cache::semantic::SemanticCache>,
    /// The trace store, for `previous_response_id` on `/v1/responses` (`None`: no store).
    pub store: Option<crate::store::writer::StoreSlot>,
    /// The judge and shadow queues (the services create them when installed).
    pub jobs: Arc<crate::rollout::jobs::JobQueues>,
    /// OpenTelemetry span outlet (`[otlp] enabled`; `None`: no trace context, no spans).
    pub otlp: Option<Arc<crate::trace::otel::Otel>>,
}

impl Gateway {
    pub fn new(rt: Runtime, traces: TraceHook) -> Gateway {
        let cache = Arc::new(crate::cache::Cache::new(&rt.config.cache));
        let semantic = Arc::new(crate::cache::semantic::SemanticCache::new(
            &rt.config.cache.semantic,
        ));
        Gateway {
            cache,
            runtime: Arc::new(ArcSwap::from_pointee(rt)),
            traces,
            tracing: true,
            admin: Vec::new(),
            auto: Arc::new(crate::routing::auto::AutoState::new(
                None,
                "ephemeral",
                3600,
                100_000,
            )),
            recent: None,
            prompt: Arc::new(crate::feedback::prompt::state::PromptState::new()),
            vkeys: Arc::new(crate::auth::virtual_keys::VirtualKeys::new()),
            provider_keys: Arc::default(),
            limits: Arc::new(crate::auth::limits::Limiter::new()),
            mcp: None,
            ui: None,
            semantic,
            store: None,
            jobs: Arc::default(),
            otlp: None,
        }
    }
}
