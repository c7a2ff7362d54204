//! Admin and analytics API (served on the main listener under `/v1/`).
//!
//! Handlers are plain async functions from an [`AdminRequest`] to an [`AdminResponse`],
//! independent of Pingora, so they are tested in-process; the proxy adapts them.

pub mod analytics;
pub mod decisions;
pub mod experiments;
pub mod export;
pub mod feedback;
pub mod keys;
pub mod logs;
pub mod provider_keys;
pub mod report;
pub mod routes;
pub mod routing;

/// The handler interface and the endpoint table live below the proxy (`crate::api`), so the
/// proxy serves this API without importing it.
pub use crate::api::{endpoints, AdminBody, AdminRequest, AdminResponse, AdminRoutes};
pub use crate::store::scoped::Visibility;

pub use crate::auth::Caller;
pub use crate::config::Scope;
