//! Request traces: the record and its writer (bounded channel, batched, never blocking).

pub mod fresh;
pub mod ids;
pub mod otel;
pub mod record;

pub use record::{Attempt, DecisionRow, DeferredTrace, TraceRecord};
