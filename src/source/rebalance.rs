//! Rebalances of the frames consumer, on its thread: a revoke waits until the partitions'
//! in-flight frames are delivered and checkpointed and commits them; an assignment commits what
//! a refused revoke could not, then restores the partitions' state through [`PartitionHooks`]
//! before any of their frames is read. Also the consumer's error, log and statistics callbacks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;

use super::inflight::InFlight;
use crate::contract::StageError;
use crate::kafka::BrokerLink;
use crate::telemetry::Metrics;

/// What the pipeline does when partitions come and go. Called on the consumer thread, where
/// blocking is allowed.
pub trait PartitionHooks: Send + Sync + 'static {
    /// Before any frame of `partitions` is read (restore their state). An error stops the worker
    /// (unless it is stopping anyway): trouble that waiting cures is to be waited out here.
    fn assigned(&self, partitions: &[i32]) -> Result<(), StageError>;
    /// A revoke has begun: what is delivered should be checkpointed now, not at the next tick.
    /// `keeps`: the worker keeps other partitions meanwhile (a cooperative rebalance moves only
    /// some), so it goes on judging their frames.
    fn revoking(&self, partitions: &[i32], keeps: bool);
    /// After the partitions' in-flight frames were delivered, checkpointed and committed (or
    /// abandoned because the worker is stopping).
    fn revoked(&self, partitions: &[i32]);
}

/// Consumer callbacks: drain before giving partitions away, hooks on assignment, lag from
/// statistics.
pub struct SourceContext {
    pub(super) inflight: Arc<InFlight>,
    pub(super) metrics: Arc<Metrics>,
    /// The frames topic (the only one subscribed).
    pub(super) topic: String,
    /// How long a revoke waits for its frames before it says that it still waits.
    pub(super) drain_timeout: Duration,
    pub(super) hooks: Arc<dyn PartitionHooks>,
    /// A failed assignment stops the worker.
    pub(super) fatal: mpsc::Sender<StageError>,
    /// Set when an assignment failed: the consumer thread reads nothing more.
    pub(super) failed: Arc<AtomicBool>,
    /// Set when the worker stops: a revoke stops waiting for its frames.
    pub(super) stop: Arc<AtomicBool>,
    /// Whether the brokers answer (`/readyz`).
    pub(super) link: BrokerLink,
    /// Per partition, the last commit point stored (shared with the [`Acknowledger`]).
    pub(super) stored: Arc<Mutex<HashMap<i32, i64>>>,
    /// Commit points a revoke could not commit (the group refused it): committed when the
    /// partitions come back to this worker, so that it does not read their frames again.
    pub(super) resume: Mutex<HashMap<i32, i64>>,
    /// Whether the last background commit failed: failures are logged when they begin and end.
    pub(super) commits_failing: AtomicBool,
}

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// Locks a map, taking it as is if a panic poisoned it (every update is a single insert or
/// remove).
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Commits stored offsets; "nothing stored" is not an error. Blocking. False if the group
/// refused the commit (the broker away, a rebalance in between).
pub fn commit_stored<C: ConsumerContext, K: Consumer<C>>(consumer: &K, metrics: &Metrics) -> bool {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => {
            metrics.offsets_committed.inc();
            true
        }
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => true,
        Err(e) => {
            tracing::warn!(error = %e, "offset commit failed");
            false
        }
    }
}

/// Longest wait for the group's committed offsets when partitions come back after a refused
/// commit.
const RESUME_TIMEOUT: Duration = Duration::from_secs(10);

impl SourceContext {
    /// Waits until the revoked partitions' frames are delivered, checkpointed and their offsets
    /// stored: however long the brokers are away, since those frames must neither be lost nor
    /// read twice. Past `drain_timeout` it says once that it still waits. False only when the
    /// worker stops meanwhile.
    fn drain(&self, parts: &[i32]) -> bool {
        const SLICE: Duration = Duration::from_millis(250);
        let started = Instant::now();
        let mut said = false;
        loop {
            if self.inflight.wait_drained(parts, SLICE) {
                if said {
                    tracing::info!(partitions = ?parts, waited_s = format!("{:.1}", started.elapsed().as_secs_f64()),
                        "revoked partitions drained");
                }
                return true;
            }
            if self.stop.load(Ordering::Relaxed) {
                return false;
            }
            if !said && started.elapsed() >= self.drain_timeout {
                said = true;
                tracing::warn!(partitions = ?parts, waited_s = self.drain_timeout.as_secs_f64(),
                    brokers_reachable = !self.link.is_lost(),
                    "revoked partitions still draining; waiting for their frames to be delivered");
            }
        }
    }

    /// Partitions assigned back after a revoke whose commit the group refused: commits the
    /// points that revoke stored, unless the group has moved past them, so that reading goes on
    /// after the frames this worker delivered. Everything before such a point was delivered and
    /// its state checkpointed before it was stored.
    fn resume(&self, consumer: &BaseConsumer<Self>, parts: &[i32]) {
        let resume = std::mem::take(&mut *lock(&self.resume));
        let due: Vec<(i32, i64)> = parts
            .iter()
            .filter_map(|p| resume.get(p).map(|&point| (*p, point)))
            .collect();
        if due.is_empty() {
            return;
        }
        let mut asked = TopicPartitionList::new();
        for (p, _) in &due {
            asked.add_partition(&self.topic, *p);
        }
        let committed = match consumer.committed_offsets(asked, RESUME_TIMEOUT) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, partitions = ?due,
                    "cannot read the group's offsets; frames since its last commit will be processed again");
                return;
            }
        };
        let mut behind = TopicPartitionList::new();
        for (p, point) in &due {
            let ahead = match committed
                .find_partition(&self.topic, *p)
                .map(|e| e.offset())
            {
                Some(Offset::Offset(c)) => c >= *point,
                _ => false,
            };
            if !ahead
                && behind
                    .add_partition_offset(&self.topic, *p, Offset::Offset(*point))
                    .is_err()
            {
                return;
            }
        }
        if behind.count() == 0 {
            return;
        }
        match consumer.commit(&behind, CommitMode::Sync) {
            Ok(()) => {
                self.metrics.offsets_committed.inc();
                tracing::info!(partitions = ?due, "offsets the group refused at the last revoke committed; reading resumes after them");
            }
            Err(e) => tracing::warn!(error = %e, partitions = ?due,
                "cannot commit the offsets the group refused at the last revoke; frames since its last commit will be processed again"),
        }
    }
}

impl ClientContext for SourceContext {
    /// The same error comes back from `poll`, which counts it and decides what it means. Its
    /// `AllBrokersDown` is not taken as an outage: reports queue up while this thread waits in
    /// a rebalance or for a free slot, and would come late, after the brokers are back. The
    /// producers, whose reports are served at once, say when the brokers are lost.
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "kafka consumer error");
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.link.client_log("consumer", level, fac, log_message);
    }

    fn stats(&self, stats: Statistics) {
        self.link.stats(&stats);
        if let Some(t) = stats.topics.get(&self.topic) {
            for p in t.partitions.values() {
                if p.partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[&self.topic, &p.partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let parts = partitions_of(tpl, &self.topic);
                let lost = consumer.assignment_lost();
                let keeps = consumer.assignment().is_ok_and(|a| {
                    partitions_of(&a, &self.topic)
                        .iter()
                        .any(|p| !parts.contains(p))
                });
                self.hooks.revoking(&parts, keeps);
                // Not drained only when the worker stops: what is left is not committed and is
                // read again by the partitions' next owner.
                let drained = self.drain(&parts);
                let committed = commit_stored(consumer, &self.metrics);
                {
                    let mut stored = lock(&self.stored);
                    let mut resume = lock(&self.resume);
                    for p in &parts {
                        match stored.remove(p) {
                            Some(point) if !committed => resume.insert(*p, point),
                            _ => resume.remove(p),
                        };
                    }
                }
                self.inflight.revoke(&parts);
                self.hooks.revoked(&parts);
                for p in &parts {
                    let _ = self
                        .metrics
                        .consumer_lag
                        .remove_label_values(&[&self.topic, &p.to_string()]);
                }
                tracing::info!(partitions = ?parts, drained, committed, lost, keeps, "partitions revoked");
            }
            Rebalance::Assign(tpl) => self.resume(consumer, &partitions_of(tpl, &self.topic)),
            Rebalance::Error(_) => {}
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                // The group just answered.
                self.link.answered();
                let parts = partitions_of(tpl, &self.topic);
                match self.hooks.assigned(&parts) {
                    Ok(()) => tracing::info!(partitions = ?parts, "partitions assigned"),
                    Err(e) if self.stop.load(Ordering::Relaxed) => {
                        // Given up because the worker stops: nothing more is read either way.
                        tracing::info!(partitions = ?parts, error = %e, "assigned partitions not restored; the worker is stopping");
                        self.failed.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        // No frame of these partitions may be judged against missing state.
                        tracing::error!(partitions = ?parts, error = %e, "assigned partitions not ready; stopping");
                        self.failed.store(true, Ordering::Relaxed);
                        let _ = self.fatal.try_send(e);
                    }
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
        if let Ok(a) = consumer.assignment() {
            self.metrics.partitions_assigned.set(a.count() as i64);
        }
    }

    /// Background commits: a failure (the broker away, a rebalance under way) is logged when
    /// failures begin and when commits go through again; the offsets stay stored and the next
    /// commit carries them.
    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) => {
                self.metrics.offsets_committed.inc();
                if self.commits_failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("offset commits go through again");
                }
            }
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => {
                if self.commits_failing.swap(true, Ordering::Relaxed) {
                    tracing::debug!(error = %e, "offset commit failed");
                } else {
                    tracing::warn!(error = %e, "offset commit failed; retried with the next commit");
                }
            }
        }
    }
}
