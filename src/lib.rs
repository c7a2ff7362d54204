//! loopgate: a self-hosted LLM gateway on Pingora.
//!
//! Module map (one concern each):
//! - [`config`]: typed configuration, loading, hot reload
//! - [`upstream`]: the transport: what is sent where, Pingora's pooled connector
//! - [`providers`]: provider profiles from `filters/`, activation, request signing
//! - [`dialect`]: pure OpenAI <-> native API translation per provider family
//! - [`catalog`]: the model catalog (prices, context windows, capabilities)
//! - [`routing`]: routing-table snapshot, model resolution, strategies, the `auto` router
//! - [`rollout`]: safe rollout blocks: webhooks, LLM-as-judge, canaries, rollback monitor
//! - [`exchange`]: the exchange engine: validate, build, sign, send, translate, price; fallback for background callers
//! - [`gateway`]: the state shared by the proxy and the background services
//! - [`proxy`]: the Pingora `ProxyHttp` data plane
//! - [`trace`]: per-request trace records and the off-path writer
//! - [`store`]: trace/feedback storage backends
//! - [`cache`]: the exact response cache (store and policy)
//! - [`api`]: the handler interface the proxy serves the admin API and MCP through
//! - [`admin`]: admin and analytics API
//! - [`metrics`]: Prometheus metrics
//! - [`demo`]: `loopgate demo`: a simulated provider fleet replaying recorded outcomes

pub mod admin;
pub mod api;
pub mod auth;
pub mod cache;
pub mod catalog;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dialect;
pub mod error;
pub mod exchange;
pub mod feedback;
pub mod firewall;
pub mod gateway;
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
pub mod ui;
pub mod upstream;
