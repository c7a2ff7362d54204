//! Request traces: the record and its writer (bounded channel, batched, never blocking).

pub mod record;

pub use record::{Attempt, TraceRecord};
