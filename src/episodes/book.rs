//! The camera book: the cameras of every assigned partition ([`PartitionCameras`], pure),
//! behind one lock, and the state records each admitted frame changes (the camera's record,
//! tombstones of cameras swept out), to be checkpointed with the frame's outcome.

use std::collections::HashMap;
use std::sync::Mutex;

use super::cameras::{CameraRecord, PartitionCameras, Refusal, Stamp};
use super::store::{camera_key, shed_key, StateRef};
use crate::contract::StateRecord;

/// A frame's admission: its stamp and which of the asked cadences are due on it, or why it is
/// refused.
pub type Admitted = Result<(Stamp, Vec<bool>), Refusal>;

/// How often (on the partition clock) a partition's cameras are swept for silent ones.
const SWEEP_EVERY_MS: i64 = 60_000;

/// The cameras of every assigned partition, shared by the intake (which admits frames in read
/// order) and the restore (which installs what a partition's records say).
#[derive(Debug)]
pub struct CameraBook {
    partitions: Mutex<HashMap<i32, (PartitionCameras, i64)>>,
    /// A camera silent this long (partition clock) is forgotten, freeing its id.
    ttl_ms: i64,
}

impl CameraBook {
    pub fn new(ttl_ms: i64) -> CameraBook {
        CameraBook {
            partitions: Mutex::default(),
            ttl_ms,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, (PartitionCameras, i64)>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Installs a partition's restored records.
    pub fn install(&self, partition: i32, records: Vec<CameraRecord>) {
        let cams = PartitionCameras::restored(records);
        let swept = cams.clock_ms().unwrap_or(i64::MIN);
        self.lock().insert(partition, (cams, swept));
    }

    /// Forgets revoked partitions; returns their cameras as (site, camera).
    pub fn remove(&self, partitions: &[i32]) -> Vec<(String, String)> {
        let mut all = self.lock();
        partitions
            .iter()
            .filter_map(|p| all.remove(p))
            .flat_map(|(c, _)| c.into_cameras().map(|r| (r.site, r.camera)))
            .collect()
    }

    /// Admits one frame (in the partition's offset order): its stamp and which of `cadences`
    /// (rules judged once per so many ms of footage) are due on it, or why it is refused;
    /// either way the state records the frame changed (the camera's record, tombstones of
    /// cameras swept out), to be checkpointed with the frame's outcome.
    pub fn admit(
        &self,
        partition: i32,
        offset: i64,
        site: &str,
        camera: &str,
        captured_at_ms: i64,
        cadences: &[(&str, i64)],
    ) -> (Admitted, Vec<StateRecord>) {
        let mut all = self.lock();
        let (cams, swept) = all
            .entry(partition)
            .or_insert_with(|| (PartitionCameras::default(), i64::MIN));
        let result = cams
            .admit(site, camera, captured_at_ms, offset)
            .map(|stamp| {
                let due = cadences
                    .iter()
                    .map(|&(rule, every)| cams.due(camera, rule, every, captured_at_ms))
                    .collect();
                (stamp, due)
            });
        let mut states = Vec::new();
        // Every admitted frame changes its camera's record (a refused jump its count); only a
        // frame of another site leaves the owner's record as it was.
        let changed = !matches!(result, Err(Refusal::SiteConflict { .. }));
        if let Some(rec) = cams.get(camera).filter(|_| changed) {
            states.push(StateRecord {
                key: camera_key(&rec.site, &rec.camera),
                value: Some(StateRef::Camera(rec).to_bytes()),
            });
        }
        let clock = cams.clock_ms().unwrap_or(captured_at_ms);
        if *swept == i64::MIN {
            *swept = clock;
        } else if clock.saturating_sub(*swept) >= SWEEP_EVERY_MS {
            *swept = clock;
            for gone in cams.evict(self.ttl_ms) {
                for key in [
                    camera_key(&gone.site, &gone.camera),
                    shed_key(&gone.site, &gone.camera),
                ] {
                    states.push(StateRecord { key, value: None });
                }
            }
        }
        (result, states)
    }
}
