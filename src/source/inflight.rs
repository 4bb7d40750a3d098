//! Frames in flight, shared by the consumer thread (registers, and waits for a revoked
//! partition to drain) and the sink (completes).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::offsets::OffsetTracker;
use crate::contract::Ticket;
use crate::telemetry::Metrics;

pub struct InFlight {
    tracker: Mutex<OffsetTracker>,
    /// Signalled whenever a frame completes, for `wait_drained`.
    changed: Condvar,
    /// For the in-flight gauge.
    metrics: Arc<Metrics>,
}

impl InFlight {
    pub fn new(metrics: Arc<Metrics>) -> InFlight {
        InFlight {
            tracker: Mutex::new(OffsetTracker::new()),
            changed: Condvar::new(),
            metrics,
        }
    }

    /// The tracker; a panic while it was held cannot leave it inconsistent (every method
    /// finishes its update before anything can panic), so a poisoned lock is taken as is.
    fn lock(&self) -> MutexGuard<'_, OffsetTracker> {
        self.tracker.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn register(&self, partition: i32, offset: i64) -> Ticket {
        let mut t = self.lock();
        let ticket = t.register(partition, offset);
        self.metrics
            .frames_in_flight
            .set(t.total_in_flight() as i64);
        ticket
    }

    /// Marks a frame's outcome delivered; the partition's new commit point, if it moved (it is
    /// stored once the state before it is checkpointed).
    pub fn complete(&self, ticket: Ticket) -> Option<i64> {
        let mut t = self.lock();
        let point = t.complete(ticket);
        self.metrics
            .frames_in_flight
            .set(t.total_in_flight() as i64);
        self.changed.notify_all();
        point
    }

    /// Partitions whose commit point is ahead of what is stored.
    pub fn checkpoint_targets(&self) -> Vec<(i32, u64, i64)> {
        self.lock().checkpoint_targets()
    }

    /// Stores a checkpointed commit point through `store` (which hands it to the consumer), unless
    /// the partition was revoked or re-assigned since `generation`.
    pub fn mark_stored(
        &self,
        partition: i32,
        generation: u64,
        point: i64,
        store: impl FnOnce(),
    ) -> bool {
        let mut t = self.lock();
        let current = t.mark_stored(partition, generation, point);
        if current {
            store();
        }
        self.changed.notify_all();
        current
    }

    /// Blocks until the partitions are settled (nothing in flight, commit point stored) or
    /// `timeout` passes; true if settled. Only for the consumer thread, never the async runtime.
    pub fn wait_drained(&self, partitions: &[i32], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut t = self.lock();
        loop {
            if partitions.iter().all(|p| t.settled(*p)) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            t = self
                .changed
                .wait_timeout(t, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    pub fn revoke(&self, partitions: &[i32]) {
        let mut t = self.lock();
        t.revoke(partitions);
        self.metrics
            .frames_in_flight
            .set(t.total_in_flight() as i64);
    }

    /// Forgets every frame in flight (at shutdown, once the stages have drained or timed out).
    pub fn abandon_all(&self) {
        let mut t = self.lock();
        let all = t.partitions();
        t.revoke(&all);
        self.metrics
            .frames_in_flight
            .set(t.total_in_flight() as i64);
    }
}
