//! The worker: stages wired with bounded channels ([`wire`]), supervised ([`supervise`]), with
//! their configuration ([`config`]), start-up loading ([`load`]) and progress reporting
//! ([`progress`]). Nothing here decides anything about a frame: that is the stages' work.

pub mod config;
mod intake;
mod load;
mod progress;
pub mod supervise;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use crate::contract::{StageError, StateRecord};
use crate::episodes::book::CameraBook;
use crate::episodes::store::StateRef;
use crate::episodes::StateStore;
use crate::infer::shed::Shedder;
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
    /// The intake's cameras and partition clocks, restored with the episodes.
    cameras: Arc<CameraBook>,
    /// Load shedding's memory of each camera's last judged frame, restored with the episodes,
    /// and how the previous owner admitted the frames that will be read again.
    shedder: Arc<std::sync::Mutex<Shedder>>,
    frames_topic: String,
    observations_topic: String,
    /// Observations are co-partitioned with frames, so a previous owner's decisions can be
    /// read back ([`crate::sink::replay`]).
    co_partitioned: bool,
    /// The worker's `--max-in-flight`: how far behind its commit point a partition's
    /// observations may reach.
    max_in_flight: usize,
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
        let mut inherited = if self.co_partitioned {
            let args = crate::sink::replay::ReplayArgs {
                kafka: &self.kafka,
                group: &self.group,
                frames_topic: &self.frames_topic,
                observations_topic: &self.observations_topic,
                max_in_flight: self.max_in_flight,
                timeout: RESTORE_TIMEOUT,
            };
            supervise::wait_out(
                "previous owner's decisions",
                || crate::sink::replay::inherited_admissions(&args, partitions),
                || self.readiness.phase() == Phase::Stopping,
            )?
        } else {
            Default::default()
        };
        for &p in partitions {
            let r = restored.remove(&p).unwrap_or_default();
            let decisions = inherited.remove(&p).unwrap_or_default();
            tracing::info!(
                partition = p,
                entries = r.episodes.len(),
                cameras = r.cameras.len(),
                inherited = decisions.len(),
                legacy = r.legacy_keys.len(),
                "episode state restored"
            );
            if !r.legacy_keys.is_empty() {
                // Records of the previous format: written again under their new keys, and
                // the old keys tombstoned, at the partition's next checkpoint.
                let mut moved: Vec<StateRecord> = r
                    .episodes
                    .iter()
                    .map(|e| StateRecord {
                        key: e.key(),
                        value: Some(StateRef::Episode(e).to_bytes()),
                    })
                    .collect();
                moved.extend(r.legacy_keys.iter().map(|k| StateRecord {
                    key: k.clone(),
                    value: None,
                }));
                self.checkpoints.add(p, -1, moved);
            }
            {
                let mut shedder = self.shedder.lock().unwrap_or_else(|e| e.into_inner());
                for s in &r.shed {
                    shedder.restore(&s.site, &s.camera, s.last_judged_ms);
                }
                shedder.inherit(p, decisions);
            }
            self.cameras.install(p, r.cameras);
            self.store.install(p, r.episodes, r.shed);
        }
        self.readiness.set(Phase::Ready);
        Ok(())
    }

    fn revoking(&self, _partitions: &[i32], keeps: bool) {
        // A rebalance that takes every partition: not ready until the next assignment is
        // restored. One that moves only some leaves the rest judged meanwhile.
        if !keeps {
            self.readiness.set(Phase::Starting);
        }
        self.checkpoints.wake.notify_one();
    }

    fn revoked(&self, partitions: &[i32]) {
        let gone = self.cameras.remove(partitions);
        {
            let mut shedder = self.shedder.lock().unwrap_or_else(|e| e.into_inner());
            for (site, camera) in &gone {
                shedder.forget(site, camera);
            }
            for &p in partitions {
                shedder.forget_partition(p);
            }
        }
        self.store.remove(partitions);
        self.checkpoints.forget(partitions);
    }
}
