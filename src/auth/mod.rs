//! Layer 5: who may call, and how much.
//!
//! - [`virtual_keys`]: gateway keys created through `/v1/keys`, kept in the store and
//!   mirrored in process (revocation reaches every instance within one refresh).
//! - [`limits`]: per-key requests / tokens per minute and USD budgets, in process.

pub mod limits;
pub mod virtual_keys;

/// What a gateway key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Call models (`/v1/chat/completions`, `/v1/embeddings`, ...), send feedback.
    Inference,
    /// Read traces, sessions, analytics, decisions, exports.
    Read,
    /// Change constraints, pins, experiments; admin ratings.
    Admin,
}
