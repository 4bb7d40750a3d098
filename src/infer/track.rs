//! Tracking (pure): not re-judging what has not changed.
//!
//! A cook stays at a station for minutes, and the crop classifier is most of a frame's cost. So
//! each camera's detections (per rule) are linked across frames into tracks by overlap (IoU),
//! and a track's crop is classified again only when the track is new, has moved or grown since
//! it was last classified, or every `every` frames (DeepStream's secondary-inference interval);
//! otherwise the track's last scores are reused (or, while its first classification is still
//! running, awaited). `every = 1` classifies every crop.
//!
//! Tracks that begin together (every camera's faces after a start, a restart or a rebalance)
//! would otherwise be re-classified together for ever: one frame in `every` of each camera would
//! carry all its crops, and with cameras started in step the classifier would get its whole
//! load in bursts. So a track's first cycle is shortened by a part of the interval that depends
//! on its id, which spreads the cycles; a track is still never reused for longer than the policy
//! allows.

use std::collections::HashMap;
use std::hash::Hash;

/// When a tracked detection is classified again.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrackPolicy {
    /// Smallest IoU with which a detection continues a track.
    pub match_iou: f32,
    /// Classified again when its centre moved more than this fraction of its size since the
    /// last classification…
    pub max_shift: f32,
    /// …or its width or height changed by more than this fraction…
    pub max_scale: f32,
    /// …or at least every this many frames (1: every frame, no reuse)…
    pub every: u32,
    /// …or when its last classification is older than this (capture time, ms), however few
    /// frames a slow camera has sent since.
    pub max_age_ms: i64,
    /// Tracks unseen for this long (capture time, ms) are forgotten. Longer than a slow
    /// camera's frame interval (cameras sending a frame every 2 s are common), or such a
    /// camera's faces would be new in every frame.
    pub forget_ms: i64,
}

impl Default for TrackPolicy {
    fn default() -> Self {
        TrackPolicy {
            match_iou: 0.3,
            max_shift: 0.15,
            max_scale: 0.2,
            // Reuse is opt-in: reused scores are not carried across a restart or rebalance, so
            // with reuse a worker's replacement can judge a frame differently than it would have.
            every: 1,
            max_age_ms: 10_000,
            forget_ms: 10_000,
        }
    }
}

/// What to do with one detection's crop.
#[derive(Debug, Clone, PartialEq)]
pub enum CropPlan {
    /// Run the classifier; report its scores for this track with [`Tracker::scored`].
    Classify { track: u64 },
    /// Reuse the track's last scores.
    Reuse { track: u64, scores: Vec<f32> },
    /// Wait for the track's first classification, which an earlier frame is running (frames
    /// of a backlog arrive faster than crops are classified).
    Await { track: u64 },
}

#[derive(Debug, Clone)]
struct Track {
    id: u64,
    /// Latest box.
    bbox: [f32; 4],
    /// Box at the last classification.
    classified: [f32; 4],
    /// Capture time of the frame of the last classification.
    classified_ms: i64,
    /// Scores of the last classification (`None` while it is running).
    scores: Option<Vec<f32>>,
    /// Frames since the last classification was planned.
    since: u32,
    last_seen_ms: i64,
}

/// The tracks of every camera (and rule) a worker judges: keyed by `K`.
#[derive(Debug)]
pub struct Tracker<K> {
    policy: TrackPolicy,
    tracks: HashMap<K, Vec<Track>>,
    next_id: u64,
}

pub fn iou(a: [f32; 4], b: [f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: [f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// How many of `every` frames a track's first cycle is shortened by: 0 for the first track, then
/// 1, 2, … in turn, so tracks created together are re-classified in different frames.
fn stagger(id: u64, every: u32) -> u32 {
    (id.saturating_sub(1) % u64::from(every.max(1))) as u32
}

/// Whether `now` moved or changed size too much from `then` to reuse a classification.
fn changed(then: [f32; 4], now: [f32; 4], p: &TrackPolicy) -> bool {
    let (w0, h0) = ((then[2] - then[0]).max(1e-6), (then[3] - then[1]).max(1e-6));
    let (w1, h1) = (now[2] - now[0], now[3] - now[1]);
    let dx = ((now[0] + now[2]) - (then[0] + then[2])).abs() / 2.0 / w0;
    let dy = ((now[1] + now[3]) - (then[1] + then[3])).abs() / 2.0 / h0;
    dx > p.max_shift
        || dy > p.max_shift
        || (w1 / w0 - 1.0).abs() > p.max_scale
        || (h1 / h0 - 1.0).abs() > p.max_scale
}

impl<K: Hash + Eq + Clone> Tracker<K> {
    pub fn new(policy: TrackPolicy) -> Tracker<K> {
        Tracker {
            policy,
            tracks: HashMap::new(),
            next_id: 1,
        }
    }

    /// Plans the crops of one frame's kept detections (`boxes`, normalised) for `key`, captured
    /// at `at_ms`: one [`CropPlan`] per box, in order.
    pub fn plan(&mut self, key: &K, at_ms: i64, boxes: &[[f32; 4]]) -> Vec<CropPlan> {
        let p = self.policy;
        let tracks = self.tracks.entry(key.clone()).or_default();
        tracks.retain(|t| at_ms.saturating_sub(t.last_seen_ms) <= p.forget_ms);
        // Greedy matching, best overlap first, each track and box used once.
        let mut pairs: Vec<(f32, usize, usize)> = Vec::new();
        for (b, &bbox) in boxes.iter().enumerate() {
            for (t, track) in tracks.iter().enumerate() {
                let o = iou(bbox, track.bbox);
                if o >= p.match_iou {
                    pairs.push((o, b, t));
                }
            }
        }
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let mut of_box: Vec<Option<usize>> = vec![None; boxes.len()];
        let mut taken = vec![false; tracks.len()];
        for (_, b, t) in pairs {
            if of_box[b].is_none() && !taken[t] {
                of_box[b] = Some(t);
                taken[t] = true;
            }
        }
        let mut out = Vec::with_capacity(boxes.len());
        for (b, &bbox) in boxes.iter().enumerate() {
            match of_box[b] {
                Some(t) => {
                    let track = &mut tracks[t];
                    track.bbox = bbox;
                    track.last_seen_ms = track.last_seen_ms.max(at_ms);
                    track.since += 1;
                    let still = track.since < p.every
                        && at_ms.saturating_sub(track.classified_ms) < p.max_age_ms
                        && !changed(track.classified, bbox, &p);
                    out.push(match (&track.scores, still) {
                        (Some(s), true) => CropPlan::Reuse {
                            track: track.id,
                            scores: s.clone(),
                        },
                        (None, true) => CropPlan::Await { track: track.id },
                        (_, false) => {
                            track.since = 0;
                            track.classified = bbox;
                            track.classified_ms = at_ms;
                            CropPlan::Classify { track: track.id }
                        }
                    });
                }
                None => {
                    let id = self.next_id;
                    self.next_id += 1;
                    tracks.push(Track {
                        id,
                        bbox,
                        classified: bbox,
                        classified_ms: at_ms,
                        scores: None,
                        since: 0,
                        last_seen_ms: at_ms,
                    });
                    out.push(CropPlan::Classify { track: id });
                }
            }
        }
        if tracks.is_empty() {
            self.tracks.remove(key);
        }
        out
    }

    /// Records a classification's scores for a track (ignored if it was forgotten meanwhile).
    pub fn scored(&mut self, key: &K, track: u64, scores: &[f32]) {
        let p = self.policy;
        if let Some(t) = self
            .tracks
            .get_mut(key)
            .and_then(|ts| ts.iter_mut().find(|t| t.id == track))
        {
            if t.scores.is_none() {
                // The first scores: start the cycle part-way through (never later than due).
                let head = stagger(t.id, p.every);
                t.since = t.since.max(head);
                t.classified_ms -= i64::from(head) * p.max_age_ms / i64::from(p.every.max(1));
            }
            t.scores = Some(scores.to_vec());
        }
    }

    /// Keys with live tracks (for tests and gauges).
    pub fn len(&self) -> usize {
        self.tracks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tracks.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The policy with reuse on (every 5th frame classified), as `--reclassify-every 5`.
    fn reusing() -> TrackPolicy {
        TrackPolicy {
            every: 5,
            ..TrackPolicy::default()
        }
    }
    use proptest::prelude::*;

    const A: [f32; 4] = [0.1, 0.1, 0.3, 0.4];
    const B: [f32; 4] = [0.6, 0.2, 0.8, 0.5];

    fn classify(p: &CropPlan) -> bool {
        matches!(p, CropPlan::Classify { .. })
    }

    fn run(t: &mut Tracker<&'static str>, at: i64, boxes: &[[f32; 4]]) -> Vec<bool> {
        let plans = t.plan(&"cam", at, boxes);
        for p in &plans {
            if let CropPlan::Classify { track } = p {
                t.scored(&"cam", *track, &[0.9, 0.1]);
            }
        }
        plans.iter().map(classify).collect()
    }

    #[test]
    fn a_still_face_is_classified_every_n_frames() {
        let mut t = Tracker::new(reusing());
        let got: Vec<bool> = (0..11).map(|i| run(&mut t, i * 500, &[A])[0]).collect();
        assert_eq!(
            got,
            [true, false, false, false, false, true, false, false, false, false, true]
        );
    }

    #[test]
    fn moving_or_growing_or_new_means_classify() {
        let mut t = Tracker::new(reusing());
        assert_eq!(run(&mut t, 0, &[A]), [true]);
        assert_eq!(run(&mut t, 500, &[A]), [false]);
        let moved = [0.14, 0.1, 0.34, 0.4]; // centre moved by 20 % of the width
        assert_eq!(run(&mut t, 1000, &[moved]), [true]);
        assert_eq!(run(&mut t, 1500, &[moved]), [false]);
        let grown = [0.14, 0.1, 0.40, 0.4]; // 30 % wider
        assert_eq!(
            run(&mut t, 2000, &[grown, B]),
            [true, true],
            "grown, and new"
        );
        assert_eq!(run(&mut t, 2500, &[grown, B]), [false, false]);
    }

    #[test]
    fn a_running_first_classification_is_awaited_for_a_while() {
        let mut t: Tracker<&str> = Tracker::new(reusing());
        let CropPlan::Classify { track } = t.plan(&"cam", 0, &[A])[0] else {
            panic!("a new track is classified")
        };
        // The first classification has not come back yet: wait for it…
        for i in 1..5 {
            assert_eq!(t.plan(&"cam", i * 100, &[A])[0], CropPlan::Await { track });
        }
        // …but not for ever (it may have been lost): classify again.
        assert!(classify(&t.plan(&"cam", 500, &[A])[0]));
        let moved = [0.2, 0.1, 0.4, 0.4];
        assert!(
            classify(&t.plan(&"cam", 600, &[moved])[0]),
            "moved: no waiting"
        );
    }

    #[test]
    fn cameras_are_apart_and_unseen_tracks_are_forgotten() {
        let mut t = Tracker::new(reusing());
        assert_eq!(run(&mut t, 0, &[A]), [true]);
        let other = t.plan(&"other", 0, &[A]);
        assert!(classify(&other[0]), "another camera's face is another face");
        assert_eq!(run(&mut t, 1_000, &[]), Vec::<bool>::new());
        assert_eq!(
            run(&mut t, 1_500, &[A]),
            [false],
            "a short gap keeps the track"
        );
        assert_eq!(run(&mut t, 12_000, &[A]), [true], "a long gap forgets it");
        t.plan(&"other", 30_000, &[]);
        assert_eq!(t.len(), 1, "a camera without tracks is dropped");
    }

    #[test]
    fn a_slow_camera_keeps_its_tracks_and_scores_age_in_time() {
        let mut t = Tracker::new(reusing());
        // A frame every 2 s: reused for 4 frames, classified on the 5th.
        let got: Vec<bool> = (0..7).map(|i| run(&mut t, i * 2_000, &[A])[0]).collect();
        assert_eq!(got, [true, false, false, false, false, true, false]);
        // A frame every 4 s: the scores are never reused past 10 s.
        let mut t = Tracker::new(reusing());
        let got: Vec<bool> = (0..7).map(|i| run(&mut t, i * 4_000, &[A])[0]).collect();
        assert_eq!(got, [true, false, false, true, false, false, true]);
    }

    #[test]
    fn tracks_that_begin_together_are_reclassified_apart() {
        // 20 cameras, one still face each, all first seen in the same round, a frame each
        // every 2 s: without the stagger all 20 would be re-classified in every fifth round.
        let p = reusing();
        let mut t: Tracker<u32> = Tracker::new(p);
        let mut last = [0i64; 20];
        let mut per_round = Vec::new();
        for round in 0..30i64 {
            let mut n = 0;
            for cam in 0..20u32 {
                let at = round * 2_000 + i64::from(cam) * 100;
                if let CropPlan::Classify { track } = t.plan(&cam, at, &[A])[0] {
                    t.scored(&cam, track, &[0.9, 0.1]);
                    last[cam as usize] = round;
                    n += 1;
                } else {
                    // Never reused past the policy's frame count.
                    assert!(
                        round - last[cam as usize] < i64::from(p.every),
                        "camera {cam}"
                    );
                }
            }
            per_round.push(n);
        }
        assert_eq!(per_round[0], 20, "all new");
        assert!(
            per_round[1..].iter().all(|&n| n <= 8),
            "re-classifications per round: {per_round:?}"
        );
        assert!(
            per_round[1..].iter().sum::<i32>() >= 20 * 29 / 5,
            "{per_round:?}"
        );
    }

    #[test]
    fn every_one_means_no_reuse() {
        let mut t = Tracker::new(TrackPolicy {
            every: 1,
            ..reusing()
        });
        assert!((0..5).all(|i| run(&mut t, i * 500, &[A, B]) == [true, true]));
    }

    proptest! {
        /// One plan per box; a reused score is always the last classification's; two boxes of
        /// one frame never share a track.
        #[test]
        fn plans_are_consistent(
            frames in proptest::collection::vec(
                proptest::collection::vec((0f32..0.8, 0f32..0.8, 0.05f32..0.2), 0..4), 1..30),
        ) {
            let mut t = Tracker::new(reusing());
            let mut last: HashMap<u64, Vec<f32>> = HashMap::new();
            for (i, dets) in frames.iter().enumerate() {
                let boxes: Vec<[f32; 4]> = dets.iter().map(|&(x, y, s)| [x, y, x + s, y + s]).collect();
                let plans = t.plan(&0u8, i as i64 * 500, &boxes);
                prop_assert_eq!(plans.len(), boxes.len());
                let mut ids = std::collections::HashSet::new();
                for p in &plans {
                    let id = match p {
                        CropPlan::Classify { track } | CropPlan::Reuse { track, .. } | CropPlan::Await { track } => *track,
                    };
                    prop_assert!(ids.insert(id), "two boxes on one track");
                    match p {
                        CropPlan::Reuse { track, scores } => prop_assert_eq!(Some(scores), last.get(track)),
                        CropPlan::Await { .. } => {}
                        CropPlan::Classify { track } => {
                            let s = vec![i as f32, 1.0];
                            t.scored(&0u8, *track, &s);
                            last.insert(*track, s);
                        }
                    }
                }
            }
        }
    }
}
