//! Cameras of a partition (pure): which site owns each camera id, and a partition clock that no
//! single camera's clock can run ahead.
//!
//! **Sites.** Frames are keyed by camera, so every frame of a camera id lands on one partition,
//! whatever site it claims. The first site seen with a camera id owns it on that partition until
//! the camera has been silent for the state's time-to-live; a frame claiming another site for
//! it is refused ([`Refusal::SiteConflict`]), so a token of site B can never continue, clear or
//! re-label an episode of site A.
//!
//! **The partition clock.** Silence and cooldown of a camera are judged when *other* cameras'
//! frames show that time has passed. Each camera's frames only ever measure intervals on that
//! camera's own clock: a camera's frame is placed on the partition clock at its last frame's
//! place plus the time its own clock says has passed since ([`Stamp::mapped_ms`]), and the
//! partition clock is the furthest place any camera has reached. So a camera whose clock is
//! minutes fast (or slow) moves the partition clock exactly as fast as a correct one, and
//! cannot end another camera's episode. A frame that claims more time has passed on its camera
//! than the partition saw by more than [`MAX_JUMP_MS`], while other cameras of the partition
//! sent within that time (they witness that it did not pass), is refused ([`Refusal::ClockJump`]); after
//! [`REANCHOR_AFTER`] such frames in a row that agree with each other, the camera's clock is
//! taken as it now is (a clock that was stepped), placed where the partition clock is, without
//! moving it. A camera without witnesses (alone on its partition, or back when every other
//! camera had been silent too) moves the clock as its frames say, which can only affect cameras
//! already silent.
//!
//! Everything is a function of the partition's frames in offset order (and of the records a
//! restore brings back), so a new owner of the partition decides exactly as the old one did.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

pub use crate::contract::Stamp;

/// Largest lead (ms) of a frame over the partition clock, measured on its own camera's clock,
/// that is taken as time passing rather than as a clock jump. Frames a camera sends late (a
/// gateway forwarding what it buffered) lag the clock, never lead it.
pub const MAX_JUMP_MS: i64 = 60_000;

/// Refused jumps in a row, each consistent with the one before, after which a camera's clock is
/// taken as it now is.
pub const REANCHOR_AFTER: u32 = 3;

/// What is remembered of one camera (a state-topic record, `kind = "camera"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CameraRecord {
    /// The site that owns this camera id on this partition.
    pub site: String,
    pub camera: String,
    /// `captured_at` of the camera's newest accepted frame (its own clock).
    pub last_ms: i64,
    /// Where that frame sits on the partition clock.
    pub place_ms: i64,
    /// Frames refused in a row as clock jumps, and the newest of them (`captured_at`): a
    /// stepped clock is taken once enough agree.
    #[serde(default)]
    pub jumps: u32,
    #[serde(default)]
    pub jump_ms: i64,
    /// Offset of the camera's newest accepted frame.
    pub last_offset: i64,
    /// Rules judged at a cadence (`every_secs`): (rule, `captured_at` of the camera's last frame
    /// that judged it). A short list, not a map: there is one per camera, and a flood of camera
    /// ids must not cost a tree node each. Records of earlier releases have none (every such
    /// rule is due at once).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub judged: Vec<(String, i64)>,
}

/// A rule with `every_secs` is due again once this share of its period has passed (frames are
/// stamped with some jitter: a camera sending every second must not skip a beat every time it
/// stamps a frame 2 ms early).
const DUE_SLACK_PERMILLE: i64 = 100;

/// Why a frame is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// The camera id belongs to another site on this partition.
    SiteConflict { owner: String },
    /// The frame's own clock claims `ahead_ms` more time passed than the partition saw.
    ClockJump { ahead_ms: i64 },
}

impl Refusal {
    /// The dead letter's detail.
    pub fn detail(&self, site: &str, camera: &str) -> String {
        match self {
            Refusal::SiteConflict { owner } => format!(
                "camera `{camera}` belongs to site `{owner}`; this frame claims site `{site}` \
                 (camera ids are owned by the first site seen until silent for the state TTL)"
            ),
            Refusal::ClockJump { ahead_ms } => format!(
                "captured_at is {:.1} s ahead of camera `{camera}`'s own recent frames, while the \
                 partition's other cameras saw less time pass (a clock jump; over {} s is refused)",
                *ahead_ms as f64 / 1e3,
                MAX_JUMP_MS / 1000
            ),
        }
    }
}

/// One partition's cameras and clock.
#[derive(Debug, Default, Clone)]
pub struct PartitionCameras {
    /// The partition clock: the furthest place any camera's frames reached.
    clock_ms: Option<i64>,
    /// By camera id (the site inside).
    cameras: HashMap<String, CameraRecord>,
}

impl PartitionCameras {
    /// The partition as restored from its records.
    pub fn restored(records: impl IntoIterator<Item = CameraRecord>) -> PartitionCameras {
        let mut p = PartitionCameras::default();
        for r in records {
            p.clock_ms = Some(p.clock_ms.map_or(r.place_ms, |c| c.max(r.place_ms)));
            p.cameras.insert(r.camera.clone(), r);
        }
        p
    }

    /// The cameras, given up (a revoked partition's).
    pub fn into_cameras(self) -> impl Iterator<Item = CameraRecord> {
        self.cameras.into_values()
    }

    /// The partition clock, once a frame has set it.
    pub fn clock_ms(&self) -> Option<i64> {
        self.clock_ms
    }

    /// The camera's record, if it is known.
    pub fn get(&self, camera: &str) -> Option<&CameraRecord> {
        self.cameras.get(camera)
    }

    /// Decides one frame (in offset order). On acceptance or refusal alike the camera's record
    /// may change: the caller persists [`PartitionCameras::get`] with the frame.
    pub fn admit(
        &mut self,
        site: &str,
        camera: &str,
        captured_at_ms: i64,
        offset: i64,
    ) -> Result<Stamp, Refusal> {
        let clock = *self.clock_ms.get_or_insert(captured_at_ms);
        let Some(rec) = self.cameras.get_mut(camera) else {
            // A new camera: its clock is placed where the partition's is, moving nothing.
            self.cameras.insert(
                camera.to_string(),
                CameraRecord {
                    site: site.to_string(),
                    camera: camera.to_string(),
                    last_ms: captured_at_ms,
                    place_ms: clock,
                    jumps: 0,
                    jump_ms: 0,
                    last_offset: offset,
                    judged: Vec::new(),
                },
            );
            return Ok(Stamp {
                clock_ms: clock,
                mapped_ms: clock,
            });
        };
        if rec.site != site {
            return Err(Refusal::SiteConflict {
                owner: rec.site.clone(),
            });
        }
        let delta = captured_at_ms - rec.last_ms;
        if delta <= 0 {
            // Late or repeated: placed by its own clock, moving nothing.
            rec.last_offset = offset;
            return Ok(Stamp {
                clock_ms: clock,
                mapped_ms: rec.place_ms + delta,
            });
        }
        let mapped = rec.place_ms.saturating_add(delta);
        let ahead = mapped - clock;
        // Witnesses: other cameras that sent within the last MAX_JUMP of the clock.
        let witnessed = ahead > MAX_JUMP_MS
            && self
                .cameras
                .values()
                .any(|r| r.camera != camera && r.place_ms >= clock - MAX_JUMP_MS);
        let Some(rec) = self.cameras.get_mut(camera) else {
            unreachable!("looked up above")
        };
        if witnessed {
            let consistent = rec.jumps > 0
                && captured_at_ms >= rec.jump_ms
                && captured_at_ms - rec.jump_ms <= MAX_JUMP_MS;
            rec.jumps = if consistent { rec.jumps + 1 } else { 1 };
            rec.jump_ms = captured_at_ms;
            if rec.jumps < REANCHOR_AFTER {
                return Err(Refusal::ClockJump { ahead_ms: ahead });
            }
            // The camera's clock was stepped: take it as it is now, where the partition is.
            rec.last_ms = captured_at_ms;
            rec.place_ms = clock;
            rec.jumps = 0;
            rec.last_offset = offset;
            return Ok(Stamp {
                clock_ms: clock,
                mapped_ms: clock,
            });
        }
        rec.last_ms = captured_at_ms;
        rec.place_ms = mapped;
        rec.jumps = 0;
        rec.last_offset = offset;
        let clock = clock.max(mapped);
        self.clock_ms = Some(clock);
        Ok(Stamp {
            clock_ms: clock,
            mapped_ms: mapped,
        })
    }

    /// Whether `rule`, judged once per `every_ms` of the camera's footage, is due on the
    /// camera's frame captured at `captured_at_ms` (an admitted frame); if so, the frame is the
    /// one that judges it. A clock stepped back by more than the period makes it due too.
    pub fn due(&mut self, camera: &str, rule: &str, every_ms: i64, captured_at_ms: i64) -> bool {
        let Some(rec) = self.cameras.get_mut(camera) else {
            return true;
        };
        let period = every_ms - every_ms * DUE_SLACK_PERMILLE / 1000;
        match rec.judged.iter_mut().find(|(r, _)| r == rule) {
            Some((_, last)) if (captured_at_ms - *last).abs() < period => false,
            Some((_, last)) => {
                *last = captured_at_ms;
                true
            }
            None => {
                rec.judged.push((rule.to_string(), captured_at_ms));
                true
            }
        }
    }

    /// Forgets cameras silent (on the partition clock) for longer than `ttl_ms`; returns them.
    pub fn evict(&mut self, ttl_ms: i64) -> Vec<CameraRecord> {
        let Some(clock) = self.clock_ms else {
            return Vec::new();
        };
        let cutoff = clock.saturating_sub(ttl_ms);
        let gone: Vec<String> = self
            .cameras
            .iter()
            .filter(|(_, r)| r.place_ms < cutoff)
            .map(|(k, _)| k.clone())
            .collect();
        gone.iter().filter_map(|k| self.cameras.remove(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn a_camera_of_another_site_is_refused_and_changes_nothing() {
        let mut p = PartitionCameras::default();
        assert!(p.admit("site-a", "cam-1", T0, 0).is_ok());
        assert_eq!(
            p.admit("site-b", "cam-1", T0 + 1_000, 1),
            Err(Refusal::SiteConflict {
                owner: "site-a".into()
            })
        );
        assert_eq!(p.get("cam-1").unwrap().site, "site-a");
        assert_eq!(p.get("cam-1").unwrap().last_ms, T0);
    }

    #[test]
    fn a_fast_camera_moves_the_clock_no_faster_than_a_right_one() {
        let mut p = PartitionCameras::default();
        // cam-a is right; cam-b runs 4 minutes fast from its first frame on.
        for i in 0..60 {
            let t = T0 + i * 1_000;
            let a = p.admit("s", "cam-a", t, 2 * i).unwrap();
            let b = p.admit("s", "cam-b", t + 240_000, 2 * i + 1).unwrap();
            assert!(
                b.clock_ms <= t + 1_000,
                "frame {i}: clock {}",
                b.clock_ms - T0
            );
            assert_eq!(a.mapped_ms, t);
        }
        assert_eq!(p.clock_ms(), Some(T0 + 59_000));
    }

    #[test]
    fn a_frame_that_jumps_ahead_of_its_camera_is_refused_while_others_send() {
        let mut p = PartitionCameras::default();
        let mut off = 0;
        let mut next = || {
            off += 1;
            off
        };
        for i in 0..10 {
            p.admit("s", "cam-a", T0 + i * 1_000, next()).unwrap();
            p.admit("s", "cam-b", T0 + i * 1_000, next()).unwrap();
        }
        // One upload of cam-b claims a capture two minutes later.
        let r = p.admit("s", "cam-b", T0 + 130_000, next());
        assert!(matches!(r, Err(Refusal::ClockJump { ahead_ms }) if ahead_ms > 100_000));
        assert_eq!(p.clock_ms(), Some(T0 + 9_000), "the clock did not move");
        // cam-b's next right frame is accepted as if nothing happened.
        let s = p.admit("s", "cam-b", T0 + 10_000, next()).unwrap();
        assert_eq!(s.mapped_ms, T0 + 10_000);
    }

    #[test]
    fn a_stepped_clock_is_taken_after_a_few_frames_without_moving_the_partition() {
        let mut p = PartitionCameras::default();
        let mut off = 0;
        for i in 0..10 {
            off += 2;
            p.admit("s", "cam-a", T0 + i * 1_000, off).unwrap();
            p.admit("s", "cam-b", T0 + i * 1_000, off + 1).unwrap();
        }
        let mut refused = 0;
        for i in 10..20 {
            off += 2;
            p.admit("s", "cam-a", T0 + i * 1_000, off).unwrap();
            // cam-b's clock was stepped 10 minutes forward.
            match p.admit("s", "cam-b", T0 + 600_000 + i * 1_000, off + 1) {
                Err(Refusal::ClockJump { .. }) => refused += 1,
                Ok(s) => assert!(s.clock_ms <= T0 + i * 1_000),
                Err(e) => panic!("{e:?}"),
            }
        }
        assert_eq!(refused, REANCHOR_AFTER - 1);
        assert_eq!(p.clock_ms(), Some(T0 + 19_000));
    }

    #[test]
    fn a_camera_back_after_an_outage_is_on_time() {
        let mut p = PartitionCameras::default();
        p.admit("s", "cam-b", T0, 0).unwrap();
        // cam-b is offline for 10 minutes while cam-a sends.
        for i in 0..=600 {
            p.admit("s", "cam-a", T0 + i * 1_000, 1 + i).unwrap();
        }
        let s = p.admit("s", "cam-b", T0 + 600_500, 700).unwrap();
        assert_eq!(s.clock_ms, T0 + 600_500);
    }

    #[test]
    fn a_forwarded_backlog_lags_the_clock_and_moves_nothing() {
        let mut p = PartitionCameras::default();
        p.admit("s", "cam-b", T0, 0).unwrap();
        for i in 0..=600 {
            p.admit("s", "cam-a", T0 + i * 1_000, 1 + i).unwrap();
        }
        // cam-b's gateway forwards the 10 minutes it buffered, as fast as it can.
        for i in 1..600 {
            let s = p.admit("s", "cam-b", T0 + i * 1_000, 700 + i).unwrap();
            assert_eq!(s.clock_ms, T0 + 600_000);
        }
    }

    #[test]
    fn a_camera_alone_moves_the_clock_as_it_says() {
        let mut p = PartitionCameras::default();
        p.admit("s", "cam-a", T0, 0).unwrap();
        let s = p.admit("s", "cam-a", T0 + 600_000, 1).unwrap();
        assert_eq!(s.clock_ms, T0 + 600_000);
    }

    #[test]
    fn a_rule_with_a_cadence_is_due_once_per_period_of_the_cameras_own_footage() {
        let mut p = PartitionCameras::default();
        let mut judged = Vec::new();
        // Two frames a second, stamped with a few ms of jitter; a 2 s cadence.
        for i in 0..20i64 {
            let at = T0 + i * 500 + [0, -3, 4, -2][i as usize % 4];
            p.admit("s", "cam", at, i).unwrap();
            if p.due("cam", "animals", 2_000, at) {
                judged.push(i);
            }
        }
        assert_eq!(
            judged,
            [0, 4, 8, 12, 16],
            "every fourth frame, jitter or not"
        );
        // The record carries it: a restored partition goes on where this one was.
        let rec = p.get("cam").unwrap().clone();
        assert_eq!(rec.judged, [("animals".to_string(), T0 + 16 * 500)]);
        let mut restored = PartitionCameras::restored([rec]);
        let at = T0 + 20 * 500;
        restored.admit("s", "cam", at, 20).unwrap();
        assert!(restored.due("cam", "animals", 2_000, at));
        // Another rule has its own period; another camera its own clock.
        assert!(restored.due("cam", "lights", 60_000, at));
        assert!(!restored.due("cam", "lights", 60_000, at + 1_000));
        // A clock stepped back by more than the period: due again at once.
        assert!(restored.due("cam", "animals", 2_000, at - 10_000));
        // A record of an earlier release (no `judged`) reads, with every rule due.
        let old: CameraRecord = serde_json::from_str(
            r#"{"site":"s","camera":"c","last_ms":1,"place_ms":1,"last_offset":0}"#,
        )
        .unwrap();
        assert!(old.judged.is_empty());
    }

    #[test]
    fn silent_cameras_are_evicted_and_free_their_id() {
        let mut p = PartitionCameras::default();
        p.admit("site-a", "cam-1", T0, 0).unwrap();
        for i in 1..=20 {
            p.admit("site-a", "cam-2", T0 + i * 60_000, i).unwrap();
        }
        let gone = p.evict(10 * 60_000);
        assert_eq!(gone.len(), 1);
        assert!(p.admit("site-b", "cam-1", T0 + 20 * 60_000, 30).is_ok());
    }

    proptest! {
        /// Restoring the records a partition had after any prefix of its frames decides the
        /// rest exactly as the partition that saw them all (the record of each camera is what a
        /// checkpoint keeps).
        #[test]
        fn restored_records_decide_the_rest_identically(
            frames in proptest::collection::vec((0u8..4, 0u8..2, -5_000i64..400_000), 1..80),
            cut in 0usize..80,
        ) {
            let mut whole = PartitionCameras::default();
            let mut first = PartitionCameras::default();
            let cut = cut.min(frames.len());
            let mut t = [T0; 4];
            let stamped: Vec<(String, String, i64)> = frames.iter().map(|&(c, s, dt)| {
                t[c as usize] += dt;
                (format!("s{s}"), format!("c{c}"), t[c as usize])
            }).collect();
            for (i, (s, c, at)) in stamped[..cut].iter().enumerate() {
                let _ = first.admit(s, c, *at, i as i64);
            }
            let records: Vec<CameraRecord> = first.cameras.values().cloned().collect();
            let mut restored = PartitionCameras::restored(records);
            for (i, (s, c, at)) in stamped.iter().enumerate() {
                let a = whole.admit(s, c, *at, i as i64);
                if i >= cut {
                    let b = restored.admit(s, c, *at, i as i64);
                    prop_assert_eq!(a, b);
                }
            }
        }
    }
}
