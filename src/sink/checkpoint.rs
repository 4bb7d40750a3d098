//! Checkpoints: episode state written to the state topic in offset order, a partition at a time,
//! before the offsets it covers are committed (Kafka Streams' cache-and-commit model).
//!
//! Each delivered frame leaves its state changes here. A checkpoint of a partition takes the
//! changes of every frame before the partition's commit point (all of them delivered), keeps the
//! latest record per key, writes them, and only once the broker has acknowledged them stores the
//! commit point. So the committed offset never runs ahead of the written state, and a restore can
//! never go back in time. The state topic gets one record per changed key per checkpoint instead
//! of one per frame.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::contract::StateRecord;

/// State changes of delivered frames, per partition, waiting for the next checkpoint.
#[derive(Default)]
pub struct Checkpoints {
    /// Per partition: the frames' state records by frame offset.
    ready: Mutex<HashMap<i32, BTreeMap<i64, Vec<StateRecord>>>>,
    /// Asks the sink for a checkpoint now (a revoke is waiting for one).
    pub wake: Notify,
}

impl Checkpoints {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, BTreeMap<i64, Vec<StateRecord>>>> {
        self.ready.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Keeps a delivered frame's state changes until its partition is checkpointed.
    pub fn add(&self, partition: i32, offset: i64, states: Vec<StateRecord>) {
        if !states.is_empty() {
            self.lock()
                .entry(partition)
                .or_default()
                .insert(offset, states);
        }
    }

    /// The changes of the partition's frames before `upto`, merged: the latest record per key.
    pub fn take(&self, partition: i32, upto: i64) -> Vec<StateRecord> {
        let mut all = self.lock();
        let Some(frames) = all.get_mut(&partition) else {
            return Vec::new();
        };
        let later = frames.split_off(&upto);
        let due = std::mem::replace(frames, later);
        merge(due.into_values())
    }

    /// Forgets revoked partitions: their state is no longer this worker's to write.
    pub fn forget(&self, partitions: &[i32]) {
        let mut all = self.lock();
        for p in partitions {
            all.remove(p);
        }
    }
}

/// Merges frames' state records, given in offset order, into the latest record per key (a
/// tombstone included), ordered by key.
pub fn merge(frames: impl IntoIterator<Item = Vec<StateRecord>>) -> Vec<StateRecord> {
    let mut latest: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    for records in frames {
        for r in records {
            latest.insert(r.key, r.value);
        }
    }
    latest
        .into_iter()
        .map(|(key, value)| StateRecord { key, value })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(key: &str, value: Option<&str>) -> StateRecord {
        StateRecord {
            key: key.into(),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    fn view(records: &[StateRecord]) -> Vec<(String, Option<String>)> {
        records
            .iter()
            .map(|r| {
                (
                    r.key.clone(),
                    r.value
                        .as_ref()
                        .map(|v| String::from_utf8_lossy(v).into_owned()),
                )
            })
            .collect()
    }

    #[test]
    fn only_frames_before_the_commit_point_are_taken_and_later_wins() {
        let c = Checkpoints::default();
        c.add(0, 10, vec![rec("a", Some("a10")), rec("b", Some("b10"))]);
        c.add(0, 12, vec![rec("a", Some("a12"))]);
        c.add(0, 11, vec![rec("b", None)]);
        c.add(1, 5, vec![rec("z", Some("z5"))]);
        assert_eq!(
            view(&c.take(0, 12)),
            vec![("a".into(), Some("a10".into())), ("b".into(), None)],
            "frame 12 is past the commit point; 11's tombstone follows 10's write"
        );
        assert!(c.take(0, 12).is_empty(), "taken once");
        assert_eq!(view(&c.take(0, 13)), vec![("a".into(), Some("a12".into()))]);
        c.forget(&[1]);
        assert!(c.take(1, 100).is_empty());
    }
}
