//! Episode state per (camera, rule), held per frames-topic partition.
//!
//! The worker keeps it in memory, writes each changed entry to the state topic (compacted,
//! co-partitioned with the frames topic: same partition number) once the frame's events are
//! acknowledged, and restores a partition's entries when the partition is assigned to it. Each
//! entry records the frame offset up to which it applies, so a restored entry never applies the
//! same frame twice. Pure and synchronous: the Kafka side lives in the sink.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::machine::{EpisodePolicy, EpisodeState, Event, Phase, Sample};
use crate::contract::{ModelVersion, Observation};

/// One state-topic record's value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredState {
    pub camera: String,
    pub rule: String,
    pub site: String,
    pub zone: Option<String>,
    /// Every frame of the partition up to this offset has been applied.
    pub applied_offset: i64,
    /// Models of the latest frame (carried into events raised without a frame, e.g. silence).
    pub models: Vec<ModelVersion>,
    pub state: EpisodeState,
}

impl StoredState {
    /// The state-topic key: unique per (camera, rule), so compaction keeps the latest of each.
    pub fn key(&self) -> String {
        state_key(&self.camera, &self.rule)
    }
}

pub fn state_key(camera: &str, rule: &str) -> String {
    serde_json::to_string(&[camera, rule]).expect("strings serialise")
}

/// An event with the context it was raised in.
#[derive(Debug, Clone)]
pub struct RaisedEvent {
    pub event: Event,
    pub camera: String,
    pub rule: String,
    pub site: String,
    pub zone: Option<String>,
    pub models: Vec<ModelVersion>,
}

/// What applying one frame produced.
#[derive(Debug, Default)]
pub struct Judgement {
    pub events: Vec<RaisedEvent>,
    /// Entries to write to the state topic (after the events are acknowledged).
    pub changed: Vec<StoredState>,
    /// Frames ignored for arriving later than the allowed lateness, per rule.
    pub stale: Vec<String>,
    /// Seconds (event time) spent in an open episode, per (site, rule).
    pub violation_secs: Vec<(String, String, f64)>,
    /// Entries evicted for silence past the store's TTL: their state-topic keys get tombstones.
    pub evicted: Vec<StoredState>,
}

#[derive(Debug, Default)]
struct PartitionStates {
    /// Newest `captured_at` seen on the partition: event time for silence and cooldown checks.
    watermark: i64,
    /// Watermark of the last eviction sweep.
    swept_at: i64,
    entries: HashMap<(String, String), StoredState>,
}

/// Default time-to-live of an idle entry: a camera silent (in event time) for an hour is
/// forgotten, and its state-topic key tombstoned.
pub const DEFAULT_STATE_TTL_MS: i64 = 60 * 60 * 1000;
/// How often (in event time) a partition is swept for entries past their TTL.
const SWEEP_EVERY_MS: i64 = 60 * 1000;

/// Every assigned partition's entries.
#[derive(Debug)]
pub struct StateStore {
    partitions: Mutex<HashMap<i32, PartitionStates>>,
    /// Idle entries whose camera has been silent this long (event time) are evicted.
    ttl_ms: i64,
}

impl Default for StateStore {
    fn default() -> Self {
        StateStore::with_ttl(DEFAULT_STATE_TTL_MS)
    }
}

impl StateStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_ttl(ttl_ms: i64) -> Self {
        StateStore {
            partitions: Mutex::default(),
            ttl_ms,
        }
    }

    /// Replaces a partition's entries with restored ones.
    pub fn install(&self, partition: i32, entries: Vec<StoredState>) {
        let mut p = PartitionStates::default();
        for e in entries {
            p.swept_at = p.swept_at.max(e.state.last_frame_ms.unwrap_or(0));
            p.watermark = p.watermark.max(e.state.last_frame_ms.unwrap_or(0));
            p.entries.insert((e.camera.clone(), e.rule.clone()), e);
        }
        self.partitions
            .lock()
            .expect("state lock")
            .insert(partition, p);
    }

    /// Forgets revoked partitions.
    pub fn remove(&self, partitions: &[i32]) {
        let mut all = self.partitions.lock().expect("state lock");
        for p in partitions {
            all.remove(p);
        }
    }

    /// Open (or clearing) episodes per (site, rule).
    pub fn open_episodes(&self) -> HashMap<(String, String), i64> {
        let mut out = HashMap::new();
        for p in self.partitions.lock().expect("state lock").values() {
            for e in p.entries.values() {
                if !matches!(e.state.phase, Phase::Idle) {
                    *out.entry((e.site.clone(), e.rule.clone())).or_default() += 1;
                }
            }
        }
        out
    }

    /// Applies one frame's rule verdicts, then lets the partition's new watermark resolve other
    /// cameras' episodes (silence, cooldown).
    pub fn judge(
        &self,
        partition: i32,
        offset: i64,
        obs: &Observation,
        policies: &HashMap<String, EpisodePolicy>,
    ) -> Judgement {
        let mut out = Judgement::default();
        let mut all = self.partitions.lock().expect("state lock");
        let part = all.entry(partition).or_default();
        let models: Vec<ModelVersion> = obs
            .models
            .iter()
            .map(|m| ModelVersion {
                name: m.name.clone(),
                version: m.version.clone(),
            })
            .collect();
        for r in &obs.rules {
            let Some(policy) = policies.get(&r.rule) else {
                continue;
            };
            let entry = part
                .entries
                .entry((obs.camera.clone(), r.rule.clone()))
                .or_insert_with(|| StoredState {
                    camera: obs.camera.clone(),
                    rule: r.rule.clone(),
                    site: obs.site.clone(),
                    zone: obs.zone.clone(),
                    applied_offset: -1,
                    models: Vec::new(),
                    state: EpisodeState::default(),
                });
            if entry.applied_offset >= offset {
                continue; // applied before a restart; its events were already published
            }
            let was_open = !matches!(entry.state.phase, Phase::Idle);
            let prev = entry.state.last_frame_ms;
            let late_before = entry.state.late_frames;
            let sample = Sample {
                captured_at_ms: obs.captured_at_ms,
                verdict: r.verdict,
                level: r.level.map(f64::from),
                partition,
                offset,
            };
            let events = entry.state.apply(&obs.camera, &r.rule, &sample, policy);
            if entry.state.late_frames > late_before {
                out.stale.push(r.rule.clone());
            }
            if let (true, Some(prev), false) =
                (was_open, prev, matches!(entry.state.phase, Phase::Idle))
            {
                let dt = (entry.state.last_frame_ms.unwrap_or(prev) - prev).max(0) as f64 / 1e3;
                out.violation_secs
                    .push((obs.site.clone(), r.rule.clone(), dt));
            }
            entry.applied_offset = offset;
            entry.site = obs.site.clone();
            entry.zone = obs.zone.clone();
            entry.models = models.clone();
            for event in events {
                out.events.push(raised(entry, event));
            }
            out.changed.push(entry.clone());
        }
        part.watermark = part.watermark.max(obs.captured_at_ms);
        let watermark = part.watermark;
        for ((camera, rule), entry) in part.entries.iter_mut() {
            if *camera == obs.camera || matches!(entry.state.phase, Phase::Idle) {
                continue;
            }
            let Some(policy) = policies.get(rule) else {
                continue;
            };
            let events = entry.state.advance(camera, rule, watermark, policy);
            if !events.is_empty() {
                entry.applied_offset = entry.applied_offset.max(offset);
                for event in events {
                    out.events.push(raised(entry, event));
                }
                out.changed.push(entry.clone());
            }
        }
        // Idle entries of cameras silent past the TTL are forgotten, so that the store (and
        // the state topic, through tombstones) holds the cameras that are live, not every camera
        // ever seen. Driven by event time, like everything else here: replays evict the same.
        if watermark.saturating_sub(part.swept_at) >= SWEEP_EVERY_MS {
            part.swept_at = watermark;
            let cutoff = watermark.saturating_sub(self.ttl_ms);
            part.entries.retain(|_, e| {
                let keep = !matches!(e.state.phase, Phase::Idle)
                    || e.state.last_frame_ms.is_some_and(|t| t >= cutoff);
                if !keep {
                    out.evicted.push(e.clone());
                }
                keep
            });
        }
        out
    }
}

fn raised(entry: &StoredState, event: Event) -> RaisedEvent {
    RaisedEvent {
        event,
        camera: entry.camera.clone(),
        rule: entry.rule.clone(),
        site: entry.site.clone(),
        zone: entry.zone.clone(),
        models: entry.models.clone(),
    }
}

#[cfg(test)]
impl StateStore {
    /// Entries held, over all partitions.
    fn len(&self) -> usize {
        self.partitions
            .lock()
            .expect("state lock")
            .values()
            .map(|p| p.entries.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::observation::{FrameSize, RuleResult, SourceRef, Timings};
    use crate::contract::{EventKind, Verdict};

    fn obs(camera: &str, t: i64, verdict: Verdict, level: f32) -> Observation {
        Observation {
            camera: camera.into(),
            site: "s".into(),
            zone: None,
            captured_at_ms: t,
            seq: 0,
            frame: FrameSize {
                width: 1,
                height: 1,
                decoded_width: 1,
                decoded_height: 1,
            },
            rules: vec![RuleResult {
                rule: "r".into(),
                verdict,
                reason: None,
                level: Some(level),
                detections: 1,
            }],
            detections: vec![],
            classifications: vec![],
            models: vec![],
            timings: Timings {
                decode_ms: 0.0,
                preprocess_ms: 0.0,
                crop_ms: 0.0,
                stages: vec![],
                total_ms: 0.0,
            },
            source: SourceRef {
                topic: "f".into(),
                partition: 0,
                offset: 0,
            },
            worker: "w".into(),
            processed_at_ms: 0,
        }
    }

    fn policies() -> HashMap<String, EpisodePolicy> {
        HashMap::from([(
            "r".to_string(),
            EpisodePolicy {
                min_open_secs: 1.0,
                clear_secs: 1.0,
                cooldown_secs: 1.0,
                silence_timeout_secs: 10.0,
                ..EpisodePolicy::default()
            },
        )])
    }

    #[test]
    fn a_restored_partition_skips_frames_it_already_applied() {
        let p = policies();
        let store = StateStore::new();
        let mut events = Vec::new();
        for i in 0..10 {
            events.extend(
                store
                    .judge(0, i, &obs("a", i * 500, Verdict::Violation, 0.9), &p)
                    .events,
            );
        }
        assert_eq!(
            events
                .iter()
                .filter(|e| e.event.kind == EventKind::Opened)
                .count(),
            1
        );
        // Persist, restore elsewhere, replay the last frames (as after a crash): nothing new.
        let saved: Vec<StoredState> = store.partitions.lock().unwrap()[&0]
            .entries
            .values()
            .cloned()
            .collect();
        let other = StateStore::new();
        other.install(0, saved);
        for i in 5..10 {
            let j = other.judge(0, i, &obs("a", i * 500, Verdict::Violation, 0.9), &p);
            assert!(
                j.events.is_empty() && j.changed.is_empty(),
                "frame {i} applied twice"
            );
        }
        assert_eq!(
            other.open_episodes()[&("s".to_string(), "r".to_string())],
            1
        );
    }

    #[test]
    fn the_watermark_resolves_a_silent_camera_on_the_same_partition() {
        let p = policies();
        let store = StateStore::new();
        for i in 0..12 {
            store.judge(0, i, &obs("a", i * 500, Verdict::Violation, 0.9), &p);
        }
        assert_eq!(store.open_episodes().len(), 1);
        let j = store.judge(0, 12, &obs("b", 20_000, Verdict::Compliant, 0.0), &p);
        let resolved: Vec<_> = j
            .events
            .iter()
            .filter(|e| e.event.kind == EventKind::Resolved)
            .collect();
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].camera, "a");
        assert_eq!(resolved[0].event.reason, Some("camera_silent"));
        assert!(j
            .changed
            .iter()
            .any(|s| s.camera == "a" && s.applied_offset == 12));
    }

    #[test]
    fn idle_cameras_silent_past_the_ttl_are_evicted() {
        let store = StateStore::with_ttl(120_000);
        let policies = policies();
        let t0 = 1_700_000_000_000;
        for i in 0..5 {
            store.judge(
                0,
                i,
                &obs(&format!("cam-{i}"), t0, Verdict::Compliant, 0.0),
                &policies,
            );
        }
        assert_eq!(store.len(), 5);
        store.judge(
            0,
            50,
            &obs("cam-recent", t0 + 100_000, Verdict::Compliant, 0.0),
            &policies,
        );
        // Sweeps run every 60 s of event time: the next one is due at t0 + 160 s.
        let j = store.judge(
            0,
            100,
            &obs("cam-late", t0 + 170_000, Verdict::Compliant, 0.0),
            &policies,
        );
        let mut evicted: Vec<_> = j.evicted.iter().map(|e| e.camera.clone()).collect();
        evicted.sort();
        assert_eq!(evicted, ["cam-0", "cam-1", "cam-2", "cam-3", "cam-4"]);
        assert_eq!(store.len(), 2, "cam-recent and cam-late stay");
    }
}
