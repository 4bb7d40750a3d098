//! Which offsets may be committed: a frame's offset becomes committable only when it and every
//! earlier frame of its partition have had their outcome (observation or dead letter) delivered.
//!
//! Frames finish out of order (decode and inference run in parallel, dead letters skip the
//! model), so the commit point of a partition is the lowest offset still pending, or one past the
//! highest registered offset when nothing is pending.
//!
//! A commit point is only *stored* (handed to the consumer for committing) once the episode
//! state of every frame before it has been checkpointed; [`OffsetTracker::checkpoint_targets`]
//! and [`OffsetTracker::mark_stored`] track that second step, and a partition is *settled* when
//! nothing is in flight and its commit point is stored. Pure and synchronous.

use std::collections::{BTreeSet, HashMap};

use crate::contract::Ticket;

#[derive(Debug, Default)]
struct PartitionState {
    /// Assignment generation this state belongs to.
    generation: u64,
    /// Registered offsets whose outcome is not yet delivered.
    pending: BTreeSet<i64>,
    /// Highest offset ever registered in this generation.
    max_registered: Option<i64>,
    /// Last commit point handed out (next offset to read), so each is reported once.
    reported: Option<i64>,
    /// Last commit point stored (its frames' state checkpointed).
    stored: Option<i64>,
}

impl PartitionState {
    fn commit_point(&self) -> Option<i64> {
        match self.pending.first() {
            Some(&lowest) => Some(lowest),
            None => self.max_registered.map(|m| m + 1),
        }
    }
}

/// Tracks in-flight frames per partition of one topic.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    /// State per assigned partition.
    partitions: HashMap<i32, PartitionState>,
    /// Source of assignment generations.
    next_generation: u64,
}

impl OffsetTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// The partitions being tracked.
    pub fn partitions(&self) -> Vec<i32> {
        self.partitions.keys().copied().collect()
    }

    /// Records that the frame at `offset` has been read and is now in flight.
    pub fn register(&mut self, partition: i32, offset: i64) -> Ticket {
        let next_generation = &mut self.next_generation;
        let state = self.partitions.entry(partition).or_insert_with(|| {
            *next_generation += 1;
            PartitionState {
                generation: *next_generation,
                // Nothing before the first frame read is ours to commit.
                reported: Some(offset),
                ..PartitionState::default()
            }
        });
        state.pending.insert(offset);
        state.max_registered = Some(state.max_registered.map_or(offset, |m| m.max(offset)));
        Ticket {
            partition,
            offset,
            generation: state.generation,
        }
    }

    /// Records that the frame's outcome was delivered. Returns the partition's new commit point
    /// (the next offset to read) when it moved forward, `None` otherwise, and also when the
    /// ticket belongs to a revoked assignment.
    pub fn complete(&mut self, ticket: Ticket) -> Option<i64> {
        let state = self.partitions.get_mut(&ticket.partition)?;
        if state.generation != ticket.generation || !state.pending.remove(&ticket.offset) {
            return None;
        }
        let point = state.commit_point()?;
        if state.reported.is_some_and(|r| r >= point) {
            return None;
        }
        state.reported = Some(point);
        Some(point)
    }

    /// Partitions whose commit point is ahead of what is stored: (partition, generation, point).
    /// Their state up to `point` is to be checkpointed, then [`mark_stored`](Self::mark_stored).
    pub fn checkpoint_targets(&self) -> Vec<(i32, u64, i64)> {
        let mut out: Vec<(i32, u64, i64)> = self
            .partitions
            .iter()
            .filter_map(|(&p, s)| {
                let point = s.commit_point()?;
                (s.stored.is_none_or(|st| st < point)).then_some((p, s.generation, point))
            })
            .collect();
        out.sort_unstable();
        out
    }

    /// Records that the partition's commit point `point` was stored; false (and nothing done)
    /// if the partition was revoked or re-assigned since `generation`.
    pub fn mark_stored(&mut self, partition: i32, generation: u64, point: i64) -> bool {
        match self.partitions.get_mut(&partition) {
            Some(s) if s.generation == generation => {
                s.stored = Some(s.stored.map_or(point, |st| st.max(point)));
                true
            }
            _ => false,
        }
    }

    /// Nothing in flight on the partition, and its commit point stored.
    pub fn settled(&self, partition: i32) -> bool {
        self.partitions.get(&partition).is_none_or(|s| {
            s.pending.is_empty()
                && match (s.commit_point(), s.stored) {
                    (None, _) => true,
                    (Some(point), Some(stored)) => stored >= point,
                    (Some(_), None) => false,
                }
        })
    }

    /// Forgets the given partitions (after a revoke); their outstanding tickets become no-ops.
    pub fn revoke(&mut self, partitions: &[i32]) {
        for p in partitions {
            self.partitions.remove(p);
        }
    }

    /// Frames in flight on the given partition.
    pub fn in_flight(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |s| s.pending.len())
    }

    /// Frames in flight on all partitions.
    pub fn total_in_flight(&self) -> usize {
        self.partitions.values().map(|s| s.pending.len()).sum()
    }

    /// The current commit point of every tracked partition (for a final commit).
    pub fn commit_points(&self) -> Vec<(i32, i64)> {
        let mut v: Vec<_> = self
            .partitions
            .iter()
            .filter_map(|(p, s)| s.commit_point().map(|c| (*p, c)))
            .collect();
        v.sort_unstable();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_completion_advances_one_by_one() {
        let mut t = OffsetTracker::new();
        let a = t.register(0, 10);
        let b = t.register(0, 11);
        assert_eq!(t.complete(a), Some(11));
        assert_eq!(t.complete(b), Some(12));
        assert_eq!(t.total_in_flight(), 0);
    }

    #[test]
    fn out_of_order_completion_waits_for_the_gap() {
        let mut t = OffsetTracker::new();
        let a = t.register(3, 0);
        let b = t.register(3, 1);
        let c = t.register(3, 2);
        assert_eq!(t.complete(c), None);
        assert_eq!(t.complete(b), None);
        assert_eq!(t.complete(a), Some(3));
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        let a = t.register(0, 5);
        let b = t.register(1, 7);
        assert_eq!(t.complete(b), Some(8));
        assert_eq!(t.in_flight(0), 1);
        assert_eq!(t.complete(a), Some(6));
    }

    #[test]
    fn revoked_tickets_are_ignored_even_after_reassignment() {
        let mut t = OffsetTracker::new();
        let old = t.register(0, 5);
        t.revoke(&[0]);
        let new = t.register(0, 5);
        assert_eq!(
            t.complete(old),
            None,
            "stale ticket must not complete the new frame"
        );
        assert_eq!(t.in_flight(0), 1);
        assert_eq!(t.complete(new), Some(6));
    }

    #[test]
    fn double_completion_is_harmless() {
        let mut t = OffsetTracker::new();
        let a = t.register(0, 1);
        assert_eq!(t.complete(a), Some(2));
        assert_eq!(t.complete(a), None);
    }

    proptest! {
        /// Whatever order outcomes arrive in, commit points only move forward, never pass a frame
        /// that is still pending, and end one past the last offset.
        #[test]
        fn commit_point_never_passes_a_pending_frame(
            gaps in proptest::collection::vec(1i64..4, 1..60),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 60),
        ) {
            let mut t = OffsetTracker::new();
            let mut offset = 100;
            let mut tickets = Vec::new();
            for g in gaps {
                offset += g;
                tickets.push(t.register(0, offset));
            }
            let last = offset;
            let mut remaining = tickets.clone();
            let mut done = std::collections::BTreeSet::new();
            let mut previous = i64::MIN;
            let mut i = 0;
            while !remaining.is_empty() {
                let idx = order[i % order.len()].index(remaining.len());
                i += 1;
                let ticket = remaining.swap_remove(idx);
                done.insert(ticket.offset);
                if let Some(point) = t.complete(ticket) {
                    prop_assert!(point > previous);
                    previous = point;
                    for tk in &tickets {
                        if tk.offset < point {
                            prop_assert!(done.contains(&tk.offset), "committed past pending {}", tk.offset);
                        }
                    }
                }
            }
            prop_assert_eq!(previous, last + 1);
            prop_assert_eq!(t.commit_points(), vec![(0, last + 1)]);
        }
    }

    #[test]
    fn a_partition_settles_once_its_commit_point_is_stored() {
        let mut t = OffsetTracker::new();
        let a = t.register(0, 10);
        let b = t.register(0, 11);
        // Nothing delivered: the commit point is the first frame read, storing it is harmless.
        let (_, g0, first) = t.checkpoint_targets()[0];
        assert_eq!(first, 10);
        assert!(t.mark_stored(0, g0, first));
        assert!(!t.settled(0), "frames in flight");
        t.complete(b);
        assert!(t.checkpoint_targets().is_empty(), "10 is still pending");
        t.complete(a);
        let targets = t.checkpoint_targets();
        assert_eq!(targets.len(), 1);
        let (p, generation, point) = targets[0];
        assert_eq!((p, point), (0, 12));
        assert!(!t.settled(0), "delivered but not yet checkpointed");
        assert!(t.mark_stored(p, generation, point));
        assert!(t.settled(0));
        assert!(t.checkpoint_targets().is_empty());
        // A checkpoint taken before a revoke cannot mark the next assignment stored.
        t.revoke(&[0]);
        let c = t.register(0, 12);
        assert!(!t.mark_stored(0, generation, 13));
        t.complete(c);
        assert!(!t.settled(0));
        assert_eq!(t.checkpoint_targets()[0].2, 13);
    }
}
