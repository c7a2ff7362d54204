//! Background services: every long-lived task the server registers next to the proxy.
//!
//! - [`aggregator`]: folds stored feedback into posteriors and publishes the router table
//! - [`reload`]: configuration hot reload (SIGHUP, file watch)
//! - [`refresh`]: provider credential refresh (OAuth tokens)
//! - [`judge_service`]: the background LLM-as-judge
//! - [`shadow`]: shadow calls and their budget
//! - [`otlp`]: OpenTelemetry span export (batches from a bounded queue)

pub mod aggregator;
pub mod judge_service;
pub mod otlp;
pub mod refresh;
pub mod reload;
pub mod shadow;
