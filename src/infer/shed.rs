//! Load shedding (pure): when frames arrive later than `--max-staleness` behind real time, each
//! camera is judged at a lower rate instead of every camera falling further behind.
//!
//! A frame whose age (`now − captured_at`) is within the bound is always judged. A stale frame
//! is judged only when its camera's last judged frame was captured at least `max_staleness`
//! earlier, and at least as long before it as the frame is late; the rest are skipped. The
//! later the worker runs, the fewer frames per camera it judges, until the judged ones fit its
//! capacity: with `n` cameras and capacity `c` frames/s the lateness settles near
//! `max(max_staleness, n / c)`, and every camera is judged once per that interval. The decision is made when the frame's first whole-frame model
//! is about to run it ([`Admission`]), so time spent queueing inside the worker counts; frames
//! already hopeless when read ([`Shedder::would_skip`]) are not even decoded. While the worker lags, every camera therefore keeps one
//! judged frame per `max_staleness` of its footage, skipping costs next to nothing (no decode,
//! no inference), and the backlog drains until frames are fresh again. Skipped frames are not
//! lost: each still yields an observation whose rules say `unknown` (reason `skipped_stale`),
//! its offset is committed, and the episodes treat it as a gap, not as evidence.
//!
//! A frame read again after a restart or a rebalance (its offset was not committed yet) is
//! decided as its previous owner decided it, whenever that owner's observation of it was
//! published: each observation says how its frame was admitted (the `admission` header) and
//! where it was read from, and the new owner reads them back ([`crate::sink::replay`]) before
//! it reads the frames ([`Shedder::inherit`]). Without that, a frame judged while it was fresh
//! would be skipped as stale on its replay a minute later, and the episodes could differ.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

/// Why a frame was not judged (the `reason` label of `vigil_frames_skipped_total`).
pub const SKIPPED_STALE: &str = "skipped_stale";

/// Most cameras remembered; beyond it the oldest half is forgotten (a forgotten camera's next
/// stale frame is judged, which errs on the side of judging).
const MAX_CAMERAS: usize = 100_000;

/// Where a frame was read: a previous owner's decision about it is found by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct At {
    pub partition: i32,
    pub offset: i64,
}

/// Decides, frame by frame, which stale frames are skipped.
#[derive(Debug)]
pub struct Shedder {
    /// Frames older than this (milliseconds) are stale; `None` disables shedding.
    max_staleness_ms: Option<i64>,
    /// `captured_at` of each camera's last judged frame, keyed by (site, camera).
    last_judged: HashMap<(String, String), i64>,
    /// Per partition, by offset: whether a previous owner judged (`true`) or skipped a frame it
    /// published an outcome for but did not commit. Each is used once, when the frame is read
    /// again, and the partition's are dropped when it is revoked.
    inherited: HashMap<i32, HashMap<i64, bool>>,
}

impl Shedder {
    pub fn new(max_staleness_ms: Option<i64>) -> Shedder {
        Shedder {
            max_staleness_ms: max_staleness_ms.filter(|&m| m > 0),
            last_judged: HashMap::new(),
            inherited: HashMap::new(),
        }
    }

    /// Takes over a partition's decisions from its previous owner (replacing any held).
    pub fn inherit(&mut self, partition: i32, decisions: HashMap<i64, bool>) {
        if decisions.is_empty() {
            self.inherited.remove(&partition);
        } else {
            self.inherited.insert(partition, decisions);
        }
    }

    /// Decisions still held for frames not read again yet, over all partitions.
    pub fn inherited(&self) -> usize {
        self.inherited.values().map(HashMap::len).sum()
    }

    /// Drops a revoked partition's inherited decisions.
    pub fn forget_partition(&mut self, partition: i32) {
        self.inherited.remove(&partition);
    }

    fn decided_before(&self, at: At) -> Option<bool> {
        self.inherited
            .get(&at.partition)
            .and_then(|d| d.get(&at.offset))
            .copied()
    }

    /// [`Shedder::would_skip`], and when it says skip, the frame is settled: an inherited
    /// decision for it is used up (the frame is not decoded, so `admit` never sees it).
    pub fn skip_unread(
        &mut self,
        at: At,
        site: &str,
        camera: &str,
        captured_at_ms: i64,
        now_ms: i64,
    ) -> bool {
        let skip = self.would_skip(at, site, camera, captured_at_ms, now_ms);
        if skip {
            if let Some(d) = self.inherited.get_mut(&at.partition) {
                d.remove(&at.offset);
            }
        }
        skip
    }

    /// Whether `admit` would skip this frame now, without recording anything. A frame skipped
    /// now would be skipped later too: its age only grows, and so does its camera's last
    /// judged time.
    pub fn would_skip(
        &self,
        at: At,
        site: &str,
        camera: &str,
        captured_at_ms: i64,
        now_ms: i64,
    ) -> bool {
        if let Some(judged) = self.decided_before(at) {
            return !judged;
        }
        let Some(max) = self.max_staleness_ms else {
            return false;
        };
        let age = now_ms.saturating_sub(captured_at_ms);
        age > max
            && self
                .last_judged
                .get(&(site.to_string(), camera.to_string()))
                .is_some_and(|&last| captured_at_ms.saturating_sub(last) < max.max(age))
    }

    /// Whether this frame is judged (`true`) or skipped as stale (`false`).
    pub fn admit(
        &mut self,
        at: At,
        site: &str,
        camera: &str,
        captured_at_ms: i64,
        now_ms: i64,
    ) -> bool {
        let inherited = self
            .inherited
            .get_mut(&at.partition)
            .and_then(|d| d.remove(&at.offset));
        let key = (site.to_string(), camera.to_string());
        match (inherited, self.max_staleness_ms) {
            // As its previous owner decided.
            (Some(false), _) => return false,
            (Some(true), _) => {}
            (None, None) => return true,
            (None, Some(max)) => {
                let age = now_ms.saturating_sub(captured_at_ms);
                let fresh = age <= max;
                let due = self
                    .last_judged
                    .get(&key)
                    .is_none_or(|&last| captured_at_ms.saturating_sub(last) >= max.max(age));
                if !(fresh || due) {
                    return false;
                }
            }
        }
        if self.last_judged.len() >= MAX_CAMERAS && !self.last_judged.contains_key(&key) {
            self.forget_oldest_half();
        }
        let last = self.last_judged.entry(key).or_insert(captured_at_ms);
        *last = (*last).max(captured_at_ms);
        true
    }

    /// Sets a camera's last judged frame as a restored record says (a partition assigned to
    /// this worker): what its previous owner judged, it does not judge again.
    pub fn restore(&mut self, site: &str, camera: &str, captured_at_ms: i64) {
        self.last_judged
            .insert((site.to_string(), camera.to_string()), captured_at_ms);
    }

    /// Forgets a camera (its partition went to another worker).
    pub fn forget(&mut self, site: &str, camera: &str) {
        self.last_judged
            .remove(&(site.to_string(), camera.to_string()));
    }

    fn forget_oldest_half(&mut self) {
        let mut times: Vec<i64> = self.last_judged.values().copied().collect();
        times.sort_unstable();
        let cut = times[times.len() / 2];
        self.last_judged.retain(|_, &mut t| t > cut);
    }
}

/// One frame's admission, decided once by whichever of its whole-frame models runs it first.
#[derive(Debug)]
pub struct Admission {
    pub at: At,
    pub site: String,
    pub camera: String,
    pub captured_at_ms: i64,
    decided: OnceLock<bool>,
}

impl Admission {
    pub fn new(at: At, site: &str, camera: &str, captured_at_ms: i64) -> Admission {
        Admission {
            at,
            site: site.to_string(),
            camera: camera.to_string(),
            captured_at_ms,
            decided: OnceLock::new(),
        }
    }

    /// Whether the frame is judged; the first call decides (and records) it.
    pub fn admitted(&self, shedder: &Mutex<Shedder>, now_ms: i64) -> bool {
        *self.decided.get_or_init(|| {
            shedder.lock().unwrap_or_else(|e| e.into_inner()).admit(
                self.at,
                &self.site,
                &self.camera,
                self.captured_at_ms,
                now_ms,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Where the frames of tests without a previous owner were read (nothing is inherited).
    const AT: At = At {
        partition: 0,
        offset: 0,
    };

    #[test]
    fn fresh_frames_are_always_judged() {
        let mut s = Shedder::new(Some(3_000));
        for i in 0..100 {
            assert!(s.admit(AT, "s", "c", i * 100, i * 100 + 2_000));
        }
    }

    #[test]
    fn off_means_everything_is_judged() {
        let mut s = Shedder::new(None);
        assert!((0..50).all(|i| s.admit(AT, "s", "c", i, 1_000_000)));
        let mut s = Shedder::new(Some(0));
        assert!((0..50).all(|i| s.admit(AT, "s", "c", i, 1_000_000)));
    }

    #[test]
    fn stale_frames_are_thinned_per_camera() {
        let mut s = Shedder::new(Some(3_000));
        // Two cameras, 10 frames/s each for 9 s, all 3.5 s late: each camera keeps one frame
        // per 3.5 s.
        let mut judged = HashMap::<&str, Vec<i64>>::new();
        for i in 0..90 {
            for cam in ["a", "b"] {
                let t = i * 100;
                if s.admit(AT, "s", cam, t, t + 3_500) {
                    judged.entry(cam).or_default().push(t);
                }
            }
        }
        assert_eq!(judged["a"], [0, 3_500, 7_000]);
        assert_eq!(judged["b"], [0, 3_500, 7_000]);
    }

    #[test]
    fn the_later_the_fewer() {
        // 20 s late: one frame per camera per 20 s of footage.
        let mut s = Shedder::new(Some(3_000));
        let judged: Vec<i64> = (0..600)
            .map(|i| i * 100)
            .filter(|&t| s.admit(AT, "s", "c", t, t + 20_000))
            .collect();
        assert_eq!(judged, [0, 20_000, 40_000]);
    }

    #[test]
    fn would_skip_agrees_with_admit_and_changes_nothing() {
        let mut s = Shedder::new(Some(1_000));
        assert!(
            !s.would_skip(AT, "s", "c", 0, 5_000),
            "first frame of a camera"
        );
        assert!(s.admit(AT, "s", "c", 0, 5_000));
        assert!(s.would_skip(AT, "s", "c", 500, 5_000));
        assert!(
            s.would_skip(AT, "s", "c", 500, 5_000),
            "asking twice changes nothing"
        );
        assert!(!s.admit(AT, "s", "c", 500, 5_000));
        assert!(!s.would_skip(AT, "s", "c", 4_500, 5_000), "fresh");
        assert!(
            !s.would_skip(AT, "s", "c", 3_000, 5_000),
            "due: 3 s after the last, 2 s late"
        );
        assert!(
            s.would_skip(AT, "s", "c", 1_000, 5_000),
            "1 s after the last, 4 s late"
        );
    }

    #[test]
    fn a_frame_is_decided_once_for_all_its_models() {
        let shedder = Mutex::new(Shedder::new(Some(1_000)));
        let first = Admission::new(AT, "s", "c", 0);
        assert!(first.admitted(&shedder, 5_000));
        assert!(first.admitted(&shedder, 9_000), "the second model agrees");
        let second = Admission::new(AT, "s", "c", 10);
        assert!(!second.admitted(&shedder, 5_000));
        assert!(!second.admitted(&shedder, 5_000));
    }

    #[test]
    fn the_same_camera_on_another_site_is_another_camera() {
        let mut s = Shedder::new(Some(1_000));
        assert!(s.admit(AT, "s1", "c", 0, 10_000));
        assert!(s.admit(AT, "s2", "c", 0, 10_000));
        assert!(!s.admit(AT, "s1", "c", 10, 10_000));
    }

    #[test]
    fn a_replayed_frame_is_decided_as_its_previous_owner_decided() {
        let at = |offset| At {
            partition: 3,
            offset,
        };
        let mut s = Shedder::new(Some(60_000));
        s.restore("s", "c", 0);
        // The previous owner judged frame 11 while it was fresh and skipped 12; both come back
        // 90 s late, when this owner would skip 11 (stale, 1 s after the last judged) and judge
        // 12 (on its own it could not know).
        s.inherit(3, HashMap::from([(11, true), (12, false), (14, false)]));
        assert_eq!(s.inherited(), 3);
        assert!(!s.would_skip(at(11), "s", "c", 1_000, 91_000));
        assert!(
            s.admit(at(11), "s", "c", 1_000, 91_000),
            "judged, as before"
        );
        assert!(s.would_skip(at(12), "s", "c", 70_000, 160_000));
        assert!(
            s.skip_unread(at(12), "s", "c", 70_000, 160_000),
            "skipped, as before"
        );
        assert!(
            !s.admit(at(14), "s", "c", 200_000, 200_500),
            "skipped although fresh"
        );
        assert_eq!(s.inherited(), 0, "each decision is used once");
        // A frame the previous owner never published an outcome for is this owner's to decide:
        // 61 s after the last judged (frame 11), 62 s late, so not yet due.
        assert!(!s.admit(at(13), "s", "c", 62_000, 124_000));
        assert!(s.admit(at(15), "s", "c", 130_000, 131_000), "fresh");
        // A revoked partition's decisions go with it; a frame of another partition at the same
        // offset is another frame.
        s.inherit(3, HashMap::from([(20, false)]));
        assert!(s.would_skip(at(20), "s", "c", 140_000, 140_100));
        assert!(!s.would_skip(
            At {
                partition: 4,
                offset: 20
            },
            "s",
            "c",
            140_000,
            140_100
        ));
        s.forget_partition(3);
        assert!(!s.would_skip(at(20), "s", "c", 140_000, 140_100));
    }

    proptest! {
        /// Whatever the arrival order and ages, every camera's first frame is judged, and judged
        /// stale frames of one camera are at least `max` apart from the camera's latest judged
        /// frame before them.
        #[test]
        fn every_camera_is_judged_and_stale_ones_are_spaced(
            frames in proptest::collection::vec((0u8..5, 0i64..60_000, 0i64..20_000), 1..300),
        ) {
            let max = 2_000;
            let mut s = Shedder::new(Some(max));
            let mut seen = std::collections::HashSet::new();
            let mut last: HashMap<u8, i64> = HashMap::new();
            for (cam, t, age) in frames {
                let now = t + age;
                let would_skip = s.would_skip(AT, "s", &cam.to_string(), t, now);
                let ok = s.admit(AT, "s", &cam.to_string(), t, now);
                prop_assert_eq!(would_skip, !ok);
                if seen.insert(cam) {
                    prop_assert!(ok, "a camera's first frame is judged");
                }
                if ok && age > max {
                    if let Some(&l) = last.get(&cam) {
                        prop_assert!(t - l >= max);
                    }
                }
                if ok {
                    let e = last.entry(cam).or_insert(t);
                    *e = (*e).max(t);
                }
            }
        }
    }
}
