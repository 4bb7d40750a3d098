//! The worker: stages wired with bounded channels ([`wire`]), supervised ([`supervise`]), with
//! their configuration ([`config`]), start-up loading ([`load`]) and progress reporting
//! ([`progress`]). Nothing here decides anything about a frame: that is the stages' work.

pub mod config;
mod load;
mod progress;
pub mod supervise;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use crate::contract::StageError;
use crate::episodes::StateStore;
use crate::kafka::KafkaArgs;
use crate::sink::Checkpoints;
use crate::source::PartitionHooks;
use crate::telemetry::{Phase, Readiness};

pub use config::{default_worker_id, session_timeout, WorkerConfig, DEFAULT_SESSION_TIMEOUT};
pub use wire::run;

/// Longest wait for one attempt at reading the assigned partitions' state back (attempts that
/// fail because the brokers are away are made again).
const RESTORE_TIMEOUT: Duration = Duration::from_secs(60);

/// Restores assigned partitions' episode state before their frames are read, and forgets
/// revoked ones.
struct Restorer {
    kafka: KafkaArgs,
    group: String,
    state_topic: String,
    store: Arc<StateStore>,
    /// Delivered frames' state, checkpointed on request before a revoke commits.
    checkpoints: Arc<Checkpoints>,
    /// `/readyz`: restoring while state is read back, ready once it is.
    readiness: Readiness,
}

impl PartitionHooks for Restorer {
    fn assigned(&self, partitions: &[i32]) -> Result<(), StageError> {
        self.readiness.set(Phase::Restoring);
        // Brokers away, a time-out: tried again until it works (not ready meanwhile). A state
        // record that cannot be read (not the external domain) stops the worker.
        let mut restored = supervise::wait_out(
            "episode state restore",
            || {
                crate::sink::restore(
                    &self.kafka,
                    &self.group,
                    &self.state_topic,
                    partitions,
                    RESTORE_TIMEOUT,
                )
            },
            || self.readiness.phase() == Phase::Stopping,
        )?;
        for &p in partitions {
            let entries = restored.remove(&p).unwrap_or_default();
            tracing::info!(
                partition = p,
                entries = entries.len(),
                "episode state restored"
            );
            self.store.install(p, entries);
        }
        self.readiness.set(Phase::Ready);
        Ok(())
    }

    fn revoking(&self, _partitions: &[i32]) {
        // A rebalance: not ready until the next assignment is restored.
        self.readiness.set(Phase::Starting);
        self.checkpoints.wake.notify_one();
    }

    fn revoked(&self, partitions: &[i32]) {
        self.store.remove(partitions);
        self.checkpoints.forget(partitions);
    }
}
