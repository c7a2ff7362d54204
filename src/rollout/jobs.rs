//! The background job queues of one gateway: the request path hands judge and shadow work
//! to them with `try_send` (never waits), the background services drain them.
//!
//! They are fields of the gateway state (`Gateway::jobs`), not process-wide statics, so two
//! gateways in one process (tests, the demo) each have their own queues, and a service that
//! is not installed simply leaves its queue unset (nothing is sampled for it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::dialect::Usage;

/// One answer to score.
#[derive(Debug, Clone)]
pub struct JudgeJob {
    /// The judged request: the served request, or the shadow call.
    pub request_id: String,
    pub route: String,
    /// The route's name of the model that wrote the answer.
    pub model: String,
    pub context: Option<String>,
    pub session_id: Option<String>,
    /// When the judged request happened.
    pub at_ms: i64,
    /// The client's request body (the conversation), in memory only.
    pub raw: Bytes,
    /// The assistant text, in memory only.
    pub answer: String,
    /// For a shadow answer: the served request it shadows.
    pub shadow_of: Option<String>,
    pub project_id: Option<String>,
    pub zero_retention: bool,
}

/// One background call of a would-have model.
#[derive(Debug, Clone)]
pub struct ShadowJob {
    /// The client's request id (the served request).
    pub shadow_of: String,
    pub route: String,
    /// The route's name of the would-have model.
    pub model: String,
    pub context: Option<String>,
    pub raw: Bytes,
    /// Usage of the served baseline answer (the cost estimate's token mix).
    pub served_usage: Usage,
    pub at_ms: i64,
    pub project_id: Option<String>,
    pub key_id: Option<String>,
    pub zero_retention: bool,
    /// Judge the shadow answer too (the served one is judged: a pair).
    pub judge: bool,
}

/// The queues of one gateway. A queue exists once its service is installed.
#[derive(Debug, Default)]
pub struct JobQueues {
    judge: OnceLock<mpsc::Sender<JudgeJob>>,
    shadow: OnceLock<mpsc::Sender<ShadowJob>>,
    /// Judge jobs taken off the queue and not finished yet (the demo's backpressure).
    judge_in_flight: AtomicUsize,
}

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotQueued {
    /// The service is not running in this gateway.
    NotRunning,
    /// The queue is full: the job is dropped (the caller counts it).
    Full,
}

impl JobQueues {
    /// Create the judge queue; `None` when it already exists (installed twice).
    pub fn install_judge(&self, capacity: usize) -> Option<mpsc::Receiver<JudgeJob>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.judge.set(tx).is_ok().then_some(rx)
    }

    /// Create the shadow queue; `None` when it already exists (installed twice).
    pub fn install_shadow(&self, capacity: usize) -> Option<mpsc::Receiver<ShadowJob>> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        self.shadow.set(tx).is_ok().then_some(rx)
    }

    pub fn judge_running(&self) -> bool {
        self.judge.get().is_some()
    }

    pub fn shadow_running(&self) -> bool {
        self.shadow.get().is_some()
    }

    pub fn try_judge(&self, job: JudgeJob) -> Result<(), NotQueued> {
        let tx = self.judge.get().ok_or(NotQueued::NotRunning)?;
        tx.try_send(job).map_err(|_| NotQueued::Full)
    }

    pub fn try_shadow(&self, job: ShadowJob) -> Result<(), NotQueued> {
        let tx = self.shadow.get().ok_or(NotQueued::NotRunning)?;
        tx.try_send(job).map_err(|_| NotQueued::Full)
    }

    /// Judge jobs queued plus being judged, and the queue's capacity; `None` when the judge
    /// is not running.
    pub fn judge_backlog(&self) -> Option<(usize, usize)> {
        let tx = self.judge.get()?;
        let queued = tx.max_capacity() - tx.capacity();
        Some((
            queued + self.judge_in_flight.load(Ordering::Relaxed),
            tx.max_capacity(),
        ))
    }

    /// Shadow calls queued and the queue's capacity; `None` when not running.
    pub fn shadow_backlog(&self) -> Option<(usize, usize)> {
        let tx = self.shadow.get()?;
        Some((tx.max_capacity() - tx.capacity(), tx.max_capacity()))
    }

    /// A judge job left the queue (`started`) or finished.
    pub fn judge_in_flight(&self, started: bool) {
        if started {
            self.judge_in_flight.fetch_add(1, Ordering::Relaxed);
        } else {
            self.judge_in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: &str) -> ShadowJob {
        ShadowJob {
            shadow_of: id.into(),
            route: "r".into(),
            model: "m".into(),
            context: None,
            raw: Bytes::new(),
            served_usage: Usage::default(),
            at_ms: 0,
            project_id: None,
            key_id: None,
            zero_retention: false,
            judge: false,
        }
    }

    #[test]
    fn each_gateway_has_its_own_bounded_queues() {
        let a = JobQueues::default();
        let b = JobQueues::default();
        assert_eq!(a.try_shadow(job("1")), Err(NotQueued::NotRunning));
        let mut rx = a.install_shadow(1).expect("first install");
        assert!(a.install_shadow(1).is_none(), "a queue is installed once");
        assert_eq!(a.try_shadow(job("1")), Ok(()));
        assert_eq!(a.try_shadow(job("2")), Err(NotQueued::Full));
        assert_eq!(a.shadow_backlog(), Some((1, 1)));
        // Another gateway in the same process is unaffected.
        assert!(!b.shadow_running());
        assert!(b.install_shadow(4).is_some());
        assert_eq!(b.shadow_backlog(), Some((0, 4)));
        assert_eq!(
            rx.try_recv().map(|j| j.shadow_of).ok(),
            Some("1".to_string())
        );
        assert_eq!(a.shadow_backlog(), Some((0, 1)));
    }
}
