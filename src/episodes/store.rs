//! Episode state per (site, camera, rule), held per frames-topic partition.
//!
//! The worker keeps it in memory, writes each changed entry to the state topic (compacted,
//! co-partitioned with the frames topic: same partition number) once the frame's events are
//! acknowledged, and restores a partition's entries when the partition is assigned to it. Each
//! entry records the frame offset up to which it applies, so a restored entry never applies the
//! same frame twice. Pure and synchronous: the Kafka side lives in the sink.
//!
//! Silence and cooldown of a camera are judged on the partition clock ([`super::cameras`]):
//! the time since a camera's last frame is what the partition clock moved since, so no other
//! camera's clock can end its episode.
//!
//! **State records** are versioned JSON ([`StateValue`], [`STATE_VERSION`]): version 1 (no `v`
//! field, the releases before it) held episodes keyed by camera alone, and is still read;
//! a record of a newer version than this release knows stops the worker, naming the version.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::cameras::{CameraRecord, Stamp};
use super::machine::{EpisodePolicy, EpisodeState, Event, Phase, Sample};
use crate::contract::{ModelVersion, Observation};

/// The state-record format this release writes. Version 1 (no `v`): episode entries keyed
/// `[camera, rule]`. Version 2: a `v` and a `kind` (`episode`, `camera` or `shed`) in every
/// value; keys `["episode", site, camera, rule]`, `["camera", site, camera]`, `["shed", site,
/// camera]`; episode entries carry their place on the partition clock.
pub const STATE_VERSION: u32 = 2;

/// One state-topic record's value (an episode entry).
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
    /// Where the camera's newest frame sits on the partition clock (absent in version 1: taken
    /// as the clock of the first frame judged after the restore).
    #[serde(default)]
    pub clock_ms: Option<i64>,
}

impl StoredState {
    /// The state-topic key: unique per (site, camera, rule), so compaction keeps the latest.
    pub fn key(&self) -> String {
        state_key(&self.site, &self.camera, &self.rule)
    }
}

pub fn state_key(site: &str, camera: &str, rule: &str) -> String {
    serde_json::to_string(&["episode", site, camera, rule]).expect("strings serialise")
}

/// The key of a camera's record ([`CameraRecord`]).
pub fn camera_key(site: &str, camera: &str) -> String {
    serde_json::to_string(&["camera", site, camera]).expect("strings serialise")
}

/// The key of a camera's load-shedding record ([`ShedRecord`]).
pub fn shed_key(site: &str, camera: &str) -> String {
    serde_json::to_string(&["shed", site, camera]).expect("strings serialise")
}

/// When a camera's last judged frame was captured, for load shedding: a new owner of the
/// partition skips exactly what the old one would have.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShedRecord {
    pub site: String,
    pub camera: String,
    pub last_judged_ms: i64,
}

/// A state record's value, of any kind.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateValue {
    Episode(Box<StoredState>),
    Camera(CameraRecord),
    Shed(ShedRecord),
}

/// A state value to write, borrowed (the same JSON as [`StateValue`]).
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StateRef<'a> {
    Episode(&'a StoredState),
    Camera(&'a CameraRecord),
    Shed(&'a ShedRecord),
}

impl StateRef<'_> {
    /// The value as written: JSON with the format version.
    pub fn to_bytes(self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Versioned<'a> {
            v: u32,
            #[serde(flatten)]
            value: StateRef<'a>,
        }
        // Strings and numbers: serialising cannot fail.
        serde_json::to_vec(&Versioned {
            v: STATE_VERSION,
            value: self,
        })
        .unwrap_or_default()
    }
}

impl StateValue {
    /// The value as written: JSON with the format version.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            StateValue::Episode(e) => StateRef::Episode(e),
            StateValue::Camera(c) => StateRef::Camera(c),
            StateValue::Shed(s) => StateRef::Shed(s),
        }
        .to_bytes()
    }

    /// Reads a value of any version this release knows. A newer one is an error naming it.
    pub fn parse(bytes: &[u8]) -> Result<StateValue, String> {
        let json: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        match json.get("v").map(serde_json::Value::as_u64) {
            None => serde_json::from_value::<StoredState>(json)
                .map(|e| StateValue::Episode(Box::new(e)))
                .map_err(|e| format!("version 1 episode record: {e}")),
            Some(Some(v)) if v == u64::from(STATE_VERSION) => {
                // The `v` beside `kind` and the fields is read above.
                serde_json::from_value::<StateValue>(json)
                    .map_err(|e| format!("version {v} record: {e}"))
            }
            Some(Some(v)) if v > u64::from(STATE_VERSION) => Err(format!(
                "state record format version {v} is newer than this release reads (1 to \
                 {STATE_VERSION}): a newer vigil wrote it; run that release or newer"
            )),
            Some(v) => Err(format!("state record format version {v:?} is not known")),
        }
    }

    /// The record's key, by content (a version 1 episode gets its version 2 key).
    pub fn key(&self) -> String {
        match self {
            StateValue::Episode(s) => s.key(),
            StateValue::Camera(c) => camera_key(&c.site, &c.camera),
            StateValue::Shed(s) => shed_key(&s.site, &s.camera),
        }
    }

    /// How many of the partition's frames the record covers, to keep the newest of two records
    /// of one key (a record an earlier owner left behind cannot take the state back in time).
    pub fn progress(&self) -> i64 {
        match self {
            StateValue::Episode(s) => s.applied_offset,
            StateValue::Camera(c) => c.last_offset,
            StateValue::Shed(s) => s.last_judged_ms,
        }
    }
}

/// What a restore brings back for one partition.
#[derive(Debug, Default)]
pub struct Restored {
    pub episodes: Vec<StoredState>,
    pub cameras: Vec<CameraRecord>,
    pub shed: Vec<ShedRecord>,
    /// Keys of version 1 records, tombstoned once their entries are written under new keys.
    pub legacy_keys: Vec<String>,
}

impl Restored {
    pub fn add(&mut self, value: StateValue) {
        match value {
            StateValue::Episode(e) => self.episodes.push(*e),
            StateValue::Camera(c) => self.cameras.push(c),
            StateValue::Shed(s) => self.shed.push(s),
        }
    }
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
    /// The camera's load-shedding record, when the frame was judged (not skipped).
    pub shed: Option<ShedRecord>,
}

#[derive(Debug, Default)]
struct PartitionStates {
    /// The partition clock as of the newest frame judged ([`super::cameras`]): event time for
    /// silence and cooldown checks.
    clock: i64,
    /// Clock of the last eviction sweep.
    swept_at: i64,
    entries: HashMap<(String, String, String), StoredState>,
    /// Load shedding: `captured_at` of each (site, camera)'s last judged frame.
    shed: HashMap<(String, String), i64>,
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

/// The id scope of a camera's episodes: the same camera id on two sites is two cameras.
fn scope(site: &str, camera: &str) -> String {
    serde_json::to_string(&[site, camera]).expect("strings serialise")
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

    /// The time-to-live of idle entries (ms of event time).
    pub fn ttl_ms(&self) -> i64 {
        self.ttl_ms
    }

    /// Replaces a partition's entries with restored ones.
    pub fn install(&self, partition: i32, entries: Vec<StoredState>, shed: Vec<ShedRecord>) {
        let mut p = PartitionStates::default();
        for e in entries {
            let place = e.clock_ms.or(e.state.last_frame_ms).unwrap_or(0);
            p.swept_at = p.swept_at.max(place);
            p.clock = p.clock.max(place);
            p.entries
                .insert((e.site.clone(), e.camera.clone(), e.rule.clone()), e);
        }
        for s in shed {
            p.shed.insert((s.site, s.camera), s.last_judged_ms);
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

    /// Applies one frame's rule verdicts, then lets the partition clock resolve other cameras'
    /// episodes (silence, cooldown). `stamp` is the frame's place on the partition clock
    /// ([`super::cameras::PartitionCameras::admit`]); without one, the frame's own
    /// `captured_at` is taken as its place.
    pub fn judge(
        &self,
        partition: i32,
        offset: i64,
        obs: &Observation,
        stamp: Option<&Stamp>,
        policies: &HashMap<String, EpisodePolicy>,
    ) -> Judgement {
        let mut out = Judgement::default();
        let mut all = self.partitions.lock().expect("state lock");
        let part = all.entry(partition).or_default();
        let stamp = stamp.cloned().unwrap_or(Stamp {
            clock_ms: part.clock.max(obs.captured_at_ms),
            mapped_ms: obs.captured_at_ms,
        });
        let clock = part.clock.max(stamp.clock_ms);
        let models: Vec<ModelVersion> = obs
            .models
            .iter()
            .map(|m| ModelVersion {
                name: m.name.clone(),
                version: m.version.clone(),
            })
            .collect();
        let ids = scope(&obs.site, &obs.camera);
        let mut judged = false;
        for r in &obs.rules {
            if !matches!(
                r.reason.as_deref(),
                Some(crate::infer::shed::SKIPPED_STALE | crate::infer::plan::NOT_DUE)
            ) {
                judged = true;
            }
            let Some(policy) = policies.get(&r.rule) else {
                continue;
            };
            let entry = part
                .entries
                .entry((obs.site.clone(), obs.camera.clone(), r.rule.clone()))
                .or_insert_with(|| StoredState {
                    camera: obs.camera.clone(),
                    rule: r.rule.clone(),
                    site: obs.site.clone(),
                    zone: obs.zone.clone(),
                    applied_offset: -1,
                    models: Vec::new(),
                    state: EpisodeState::default(),
                    clock_ms: None,
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
            let events = entry.state.apply(&ids, &r.rule, &sample, policy);
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
            entry.clock_ms = Some(
                entry
                    .clock_ms
                    .map_or(stamp.mapped_ms, |c| c.max(stamp.mapped_ms)),
            );
            entry.zone = obs.zone.clone();
            entry.models = models.clone();
            for event in events {
                out.events.push(raised(entry, event));
            }
            out.changed.push(entry.clone());
        }
        if judged {
            let last = part
                .shed
                .entry((obs.site.clone(), obs.camera.clone()))
                .or_insert(obs.captured_at_ms);
            *last = (*last).max(obs.captured_at_ms);
            out.shed = Some(ShedRecord {
                site: obs.site.clone(),
                camera: obs.camera.clone(),
                last_judged_ms: *last,
            });
        }
        part.clock = clock;
        for ((site, camera, rule), entry) in part.entries.iter_mut() {
            if (*site == obs.site && *camera == obs.camera)
                || matches!(entry.state.phase, Phase::Idle)
            {
                continue;
            }
            let Some(policy) = policies.get(rule) else {
                continue;
            };
            // A version 1 entry has no place yet: it is taken as seen now.
            let place = *entry.clock_ms.get_or_insert(clock);
            let Some(last) = entry.state.last_frame_ms else {
                continue;
            };
            // The camera's own clock, moved on by what the partition clock saw since.
            let now = last.saturating_add(clock.saturating_sub(place));
            let events = entry.state.advance(&scope(site, camera), rule, now, policy);
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
        // ever seen. Driven by the partition clock, like everything else here: replays evict the
        // same.
        if clock.saturating_sub(part.swept_at) >= SWEEP_EVERY_MS {
            part.swept_at = clock;
            let cutoff = clock.saturating_sub(self.ttl_ms);
            part.entries.retain(|_, e| {
                let keep = !matches!(e.state.phase, Phase::Idle)
                    || e.clock_ms
                        .or(e.state.last_frame_ms)
                        .is_some_and(|t| t >= cutoff);
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

    thread_local! {
        /// The site of the frames `obs` makes.
        static SITE: std::cell::RefCell<String> = std::cell::RefCell::new("s".into());
    }

    fn on_site<T>(site: &str, f: impl FnOnce() -> T) -> T {
        let old = SITE.with(|s| s.replace(site.into()));
        let out = f();
        SITE.with(|s| *s.borrow_mut() = old);
        out
    }

    fn obs(camera: &str, t: i64, verdict: Verdict, level: f32) -> Observation {
        Observation {
            camera: camera.into(),
            site: SITE.with(|s| s.borrow().clone()),
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
                    .judge(0, i, &obs("a", i * 500, Verdict::Violation, 0.9), None, &p)
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
        other.install(0, saved, Vec::new());
        for i in 5..10 {
            let j = other.judge(0, i, &obs("a", i * 500, Verdict::Violation, 0.9), None, &p);
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
            store.judge(0, i, &obs("a", i * 500, Verdict::Violation, 0.9), None, &p);
        }
        assert_eq!(store.open_episodes().len(), 1);
        let j = store.judge(0, 12, &obs("b", 20_000, Verdict::Compliant, 0.0), None, &p);
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
                None,
                &policies,
            );
        }
        assert_eq!(store.len(), 5);
        store.judge(
            0,
            50,
            &obs("cam-recent", t0 + 100_000, Verdict::Compliant, 0.0),
            None,
            &policies,
        );
        // Sweeps run every 60 s of event time: the next one is due at t0 + 160 s.
        let j = store.judge(
            0,
            100,
            &obs("cam-late", t0 + 170_000, Verdict::Compliant, 0.0),
            None,
            &policies,
        );
        let mut evicted: Vec<_> = j.evicted.iter().map(|e| e.camera.clone()).collect();
        evicted.sort();
        assert_eq!(evicted, ["cam-0", "cam-1", "cam-2", "cam-3", "cam-4"]);
        assert_eq!(store.len(), 2, "cam-recent and cam-late stay");
    }

    #[test]
    fn the_same_camera_id_on_two_sites_never_shares_an_episode() {
        let p = policies();
        let store = StateStore::new();
        for i in 0..10 {
            store.judge(
                0,
                i,
                &obs("cam", i * 500, Verdict::Violation, 0.9),
                None,
                &p,
            );
        }
        // Site B's frames of a camera with the same id clear nothing of site A's.
        let mut events = Vec::new();
        for i in 10..30 {
            let j = on_site("b", || {
                store.judge(
                    0,
                    i,
                    &obs("cam", i * 500, Verdict::Compliant, 0.0),
                    None,
                    &p,
                )
            });
            events.extend(j.events);
        }
        assert!(
            events.iter().all(|e| e.site == "b"),
            "site A's episode untouched"
        );
        assert_eq!(
            store.open_episodes()[&("s".to_string(), "r".to_string())],
            1
        );
    }

    #[test]
    fn a_camera_four_minutes_fast_resolves_no_other_cameras_episode() {
        use crate::episodes::cameras::PartitionCameras;
        let p = policies();
        let store = StateStore::new();
        let mut cams = PartitionCameras::default();
        let t0 = 1_800_000_000_000;
        let mut off = 0;
        let mut events = Vec::new();
        for i in 0..40 {
            let t = t0 + i * 500;
            for (camera, at, verdict, level) in [
                ("a", t, Verdict::Violation, 0.9),
                ("fast", t + 240_000, Verdict::Compliant, 0.0),
            ] {
                let stamp = cams.admit("s", camera, at, off).expect("accepted");
                let j = store.judge(0, off, &obs(camera, at, verdict, level), Some(&stamp), &p);
                events.extend(j.events);
                off += 1;
            }
        }
        let a: Vec<_> = events.iter().filter(|e| e.camera == "a").collect();
        assert_eq!(
            a.len(),
            1,
            "camera a's episode opened and stays open: {a:?}"
        );
        assert_eq!(a[0].event.kind, EventKind::Opened);
    }

    #[test]
    fn state_records_of_the_previous_format_restore_and_newer_ones_are_refused() {
        // A record as the release before versioned state wrote it (key `[camera, rule]`).
        let v1 = br#"{"camera":"cam-1","rule":"mask","site":"site-001","zone":"kitchen","applied_offset":41,"models":[{"name":"yunet","version":"1"}],"state":{"level":0.8,"last_frame_ms":1700000000000,"last_evidence_ms":1700000000000,"above_since_ms":1699999990000,"below_since_ms":null,"phase":{"phase":"open","episode":{"id":"0123456789abcdef0123456789abcdef","opened_at_ms":1699999990000,"last_seen_ms":1700000000000,"peak_level":0.9,"level_sum":8.0,"frames":10,"severity":"minor","events":1,"last_event_ms":1699999995000,"evidence":null}},"late_frames":0}}"#;
        let v = StateValue::parse(v1).expect("version 1 reads");
        let StateValue::Episode(e) = &v else {
            panic!("{v:?}")
        };
        assert_eq!((e.site.as_str(), e.applied_offset), ("site-001", 41));
        assert_eq!(v.key(), r#"["episode","site-001","cam-1","mask"]"#);
        // Written again, it is version 2 and reads back the same.
        let again = StateValue::parse(&v.to_bytes()).unwrap();
        assert_eq!(again, v);
        assert!(String::from_utf8(v.to_bytes())
            .unwrap()
            .contains(r#""v":2"#));
        // A newer release's record stops the restore, naming its version.
        let err = StateValue::parse(br#"{"v":3,"kind":"episode","whatever":1}"#).unwrap_err();
        assert!(err.contains("version 3"), "{err}");
        // A restored version 1 entry judges on, under its site.
        let store = StateStore::new();
        store.install(0, vec![(**e).clone()], Vec::new());
        assert_eq!(
            store.open_episodes()[&("site-001".to_string(), "mask".to_string())],
            1
        );
    }
}
