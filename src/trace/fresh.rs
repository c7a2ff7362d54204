//! Read-your-writes on one instance.
//!
//! A served request's trace reaches the store a batch later (the writer flushes every
//! `flush_interval_ms`). A client that posts feedback, looks up the decision or lists logs
//! right after its response must still find it. The request path marks its id in
//! [`Recent`], a fixed-size table of atomics (no lock, no allocation, bounded memory): *in
//! flight* when the request starts, *submitted* once the logging phase handed the record to
//! the writer. A lookup that misses the store and finds the id here waits for the submit (the
//! logging phase runs microseconds after the last byte) and then asks the writer to flush
//! (`store::writer::StoreSlot::settle`), so the store stays the one source of truth
//! and every scoping rule the store applies applies here too.
//!
//! The table is direct-mapped by a keyed hash: a newer id may overwrite an older one in the
//! same slot. That costs only immediacy: a forgotten id is treated as unknown, and unknown
//! feedback is accepted as pending and reconciled when the trace lands.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};

/// Slots in the table (2 MiB of atomics).
pub const SLOTS: usize = 1 << 18;

const STATE_MASK: u64 = 0b11;
const IN_FLIGHT: u64 = 1;
const SUBMITTED: u64 = 2;

/// Where a recently served id is on its way to the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// The request is being served; its record is not built yet.
    InFlight,
    /// The record is in the writer's queue or already stored.
    Submitted,
}

/// A slot and tag computed from an id.
#[derive(Debug, Clone, Copy)]
pub struct SlotRef(usize, u64);

pub struct Recent {
    slots: Box<[AtomicU64]>,
    hasher: RandomState,
}

impl Default for Recent {
    fn default() -> Self {
        Recent::new(SLOTS)
    }
}

impl Recent {
    /// A table of `slots` entries (rounded up to a power of two).
    pub fn new(slots: usize) -> Recent {
        let n = slots.max(2).next_power_of_two();
        Recent {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            hasher: RandomState::new(),
        }
    }

    fn key(&self, id: &str) -> (usize, u64) {
        let h = self.hasher.hash_one(id);
        let idx = (h as usize) & (self.slots.len() - 1);
        // The tag keeps the upper bits; 0 is reserved for "empty".
        let tag = (h & !STATE_MASK).max(STATE_MASK + 1);
        (idx, tag)
    }

    fn set(&self, id: &str, state: u64) {
        let (i, tag) = self.key(id);
        self.slots[i].store(tag | state, Ordering::Release);
    }

    /// The request started (call before anything can reach the client).
    pub fn begin(&self, id: &str) {
        self.set(id, IN_FLIGHT);
    }

    /// The record was handed to the writer.
    pub fn submitted(&self, id: &str) {
        self.set(id, SUBMITTED);
    }

    /// Where `id` lives, for [`Recent::mark_submitted`] once the id itself has moved on.
    pub fn slot_of(&self, id: &str) -> SlotRef {
        let (i, tag) = self.key(id);
        SlotRef(i, tag)
    }

    pub fn mark_submitted(&self, s: SlotRef) {
        self.slots[s.0].store(s.1 | SUBMITTED, Ordering::Release);
    }

    /// The record will never reach the store (dropped): lookups must not wait for it.
    pub fn forget(&self, id: &str) {
        let (i, tag) = self.key(id);
        let cur = self.slots[i].load(Ordering::Acquire);
        if cur & !STATE_MASK == tag {
            let _ = self.slots[i].compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    pub fn state(&self, id: &str) -> Option<State> {
        let (i, tag) = self.key(id);
        let v = self.slots[i].load(Ordering::Acquire);
        if v & !STATE_MASK != tag {
            return None;
        }
        match v & STATE_MASK {
            IN_FLIGHT => Some(State::InFlight),
            SUBMITTED => Some(State::Submitted),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_move_and_unknown_ids_are_unknown() {
        let r = Recent::new(1024);
        assert_eq!(r.state("a"), None);
        r.begin("a");
        assert_eq!(r.state("a"), Some(State::InFlight));
        r.submitted("a");
        assert_eq!(r.state("a"), Some(State::Submitted));
        r.forget("a");
        assert_eq!(r.state("a"), None);
        assert_eq!(r.state("b"), None);
    }

    #[test]
    fn memory_is_bounded_and_collisions_only_forget() {
        let r = Recent::new(8);
        assert_eq!(r.slots.len(), 8);
        for i in 0..1000 {
            r.submitted(&format!("id{i}"));
        }
        // The newest id is always found; an overwritten one reads as unknown, never as
        // another id's state.
        assert_eq!(r.state("id999"), Some(State::Submitted));
        let known = (0..1000)
            .filter(|i| r.state(&format!("id{i}")).is_some())
            .count();
        assert!(known <= 8, "{known}");
    }
}
