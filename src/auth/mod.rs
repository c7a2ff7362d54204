//! Layer 5: who may call, and how much.
//!
//! - [`virtual_keys`]: gateway keys created through `/v1/keys`, kept in the store and
//!   mirrored in process (revocation reaches every instance within one refresh).
//! - [`limits`]: per-key requests / tokens per minute and USD budgets, in process.

pub mod limits;
pub mod virtual_keys;
