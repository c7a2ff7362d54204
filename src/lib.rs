//! loopgate: a self-hosted LLM gateway on Pingora.
//!
//! Module map (one concern each):
//! - [`config`]: typed configuration, loading, hot reload
//! - [`providers`]: provider profiles from `filters/`, activation, request signing
//! - [`dialect`]: pure OpenAI <-> native API translation per provider family
//! - [`catalog`]: the model catalog (prices, context windows, capabilities)
//! - [`routing`]: routing-table snapshot, model resolution, strategies, the `auto` router
//! - [`rollout`]: safe rollout blocks: webhooks, LLM-as-judge, canaries, rollback monitor
//! - [`proxy`]: the Pingora `ProxyHttp` data plane
//! - [`trace`]: per-request trace records and the off-path writer
//! - [`store`]: trace/feedback storage backends
//! - [`cache`]: the exact response cache (store and policy)
//! - [`admin`]: admin and analytics API
//! - [`metrics`]: Prometheus metrics
//! - [`demo`]: `loopgate demo`: a simulated provider fleet replaying recorded outcomes

pub mod admin;
pub mod auth;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dialect;
pub mod error;
pub mod feedback;
pub mod firewall;
pub mod install;
pub mod logging;
pub mod mcp;
pub mod metrics;
pub mod providers;
pub mod proxy;
pub mod rollout;
pub mod routing;
pub mod server;
pub mod services;
pub mod store;
pub mod trace;
pub mod upstream;
