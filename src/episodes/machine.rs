//! Violation episodes per (camera, rule): per-frame verdicts become alerts that do not flap.
//!
//! Pure and synchronous, driven only by event time (`captured_at`), so replaying the same frames
//! in the same order yields the same events with the same ids.
//!
//! **Smoothing.** An exponential average of the violation level whose weight decays with the
//! *time* between frames: `level += (x − level) · (1 − 2^(−Δt / half_life))`. It copes with
//! irregular spacing and gaps (a frame after a long gap counts fully, frames in a burst count
//! little each), needs constant state (a few numbers, cheap to persist), and has one intuitive
//! parameter. A vote over a time window would need the window's frames kept in state.
//! Frames without evidence (`Unknown`, e.g. no face found) leave the level untouched.
//!
//! **Hysteresis.** An episode opens when the level stays at or above `open_threshold` for
//! `min_open`; it clears when the level stays at or below `close_threshold` for `clear_for`.
//! Between the thresholds neither clock runs. A cleared episode is only *resolved* after
//! `cooldown`: if the level climbs back above `open_threshold` meanwhile, the same episode goes
//! on (no new alert). A camera silent for `silence_timeout` resolves its episode (`camera_silent`).
//! Frames older than the camera's newest by more than `lateness` are counted and ignored.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::contract::Verdict;
pub use crate::contract::{EventKind, Severity};
pub use crate::rules::EpisodePolicy;

/// Milliseconds of a policy duration (validated finite and non-negative; `as` saturates).
fn ms(secs: f64) -> i64 {
    (secs * 1e3).round() as i64
}

/// The severity of an episode open for `open_for_ms`.
fn severity(p: &EpisodePolicy, open_for_ms: i64) -> Severity {
    if open_for_ms >= ms(p.critical_after_secs) {
        Severity::Critical
    } else if open_for_ms >= ms(p.major_after_secs) {
        Severity::Major
    } else {
        Severity::Minor
    }
}

/// Where the most telling frame of an episode is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub partition: i32,
    pub offset: i64,
    pub captured_at_ms: i64,
    pub level: f64,
}

/// An open (or clearing) episode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Episode {
    /// Stable id: derived from camera, rule and the time the violation began.
    pub id: String,
    pub opened_at_ms: i64,
    /// Event time of the latest frame showing the violation.
    pub last_seen_ms: i64,
    pub peak_level: f64,
    level_sum: f64,
    /// Evidence frames counted while open.
    pub frames: u64,
    pub severity: Severity,
    /// Events emitted for this episode so far (numbers the next `event_id`).
    pub events: u32,
    last_event_ms: i64,
    pub evidence: Option<Evidence>,
}

impl Episode {
    pub fn mean_level(&self) -> f64 {
        if self.frames == 0 {
            0.0
        } else {
            self.level_sum / self.frames as f64
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "phase")]
pub enum Phase {
    Idle,
    Open {
        episode: Episode,
    },
    /// Cleared at `cleared_at_ms`; resolved once the cooldown has passed without a relapse.
    Clearing {
        episode: Episode,
        cleared_at_ms: i64,
    },
}

/// Everything the machine remembers about one (camera, rule): small, serialisable, and the
/// same after a restore as before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpisodeState {
    pub level: f64,
    /// Event time of the newest frame (for lateness and silence).
    pub last_frame_ms: Option<i64>,
    /// Event time of the newest frame with evidence (for the smoother's Δt).
    pub last_evidence_ms: Option<i64>,
    above_since_ms: Option<i64>,
    below_since_ms: Option<i64>,
    pub phase: Phase,
    /// Frames ignored for arriving too late.
    pub late_frames: u64,
}

impl Default for EpisodeState {
    fn default() -> Self {
        EpisodeState {
            level: 0.0,
            last_frame_ms: None,
            last_evidence_ms: None,
            above_since_ms: None,
            below_since_ms: None,
            phase: Phase::Idle,
            late_frames: 0,
        }
    }
}

/// One frame's verdict for the rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub captured_at_ms: i64,
    pub verdict: Verdict,
    /// Violation level (0..1) when there was evidence.
    pub level: Option<f64>,
    pub partition: i32,
    pub offset: i64,
}

/// An episode event to publish.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Deterministic: the same frames always produce the same id.
    pub event_id: String,
    pub kind: EventKind,
    pub episode: Episode,
    /// Event time at which it happened.
    pub at_ms: i64,
    /// `resolved`: `cleared` or `camera_silent`; `updated`: `severity` or `heartbeat`.
    pub reason: Option<&'static str>,
    pub resolved_at_ms: Option<i64>,
}

/// The stable episode id for a violation of `rule` on `camera` that began at `start_ms`.
pub fn episode_id(camera: &str, rule: &str, start_ms: i64) -> String {
    digest(&[camera, rule, &start_ms.to_string()])
}

fn digest(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl EpisodeState {
    /// Feeds one frame; returns the events it causes (usually none).
    pub fn apply(&mut self, camera: &str, rule: &str, s: &Sample, p: &EpisodePolicy) -> Vec<Event> {
        let mut events = Vec::new();
        let mut ts = s.captured_at_ms;
        if let Some(last) = self.last_frame_ms {
            if ts < last.saturating_sub(ms(p.lateness_secs)) {
                self.late_frames += 1;
                return events;
            }
            // Within the allowed lateness: counted, but time does not go backwards.
            ts = ts.max(last);
            if ts.saturating_sub(last) > ms(p.silence_timeout_secs) {
                self.silence(camera, rule, last, &mut events);
            }
        }
        self.last_frame_ms = Some(ts);
        if let (Some(x), Verdict::Violation | Verdict::Compliant) = (s.level, s.verdict) {
            let x = x.clamp(0.0, 1.0);
            // Without earlier evidence the scene counts as clear (level 0) one half-life ago,
            // so a single frame moves the level halfway, never all the way.
            let dt = match self.last_evidence_ms {
                None => p.half_life_secs,
                Some(prev) => ts.saturating_sub(prev).max(0) as f64 / 1e3,
            };
            let alpha = 1.0 - (-dt / p.half_life_secs).exp2();
            self.level += (x - self.level) * alpha;
            self.last_evidence_ms = Some(ts);
            if self.level >= p.open_threshold {
                self.above_since_ms.get_or_insert(ts);
                self.below_since_ms = None;
            } else if self.level <= p.close_threshold {
                self.below_since_ms.get_or_insert(ts);
                self.above_since_ms = None;
            } else {
                self.above_since_ms = None;
                self.below_since_ms = None;
            }
            let showing = s.verdict == Verdict::Violation;
            match &mut self.phase {
                Phase::Open { episode } | Phase::Clearing { episode, .. } => {
                    episode.frames += 1;
                    episode.level_sum += self.level;
                    if self.level > episode.peak_level {
                        episode.peak_level = self.level;
                    }
                    if showing {
                        episode.last_seen_ms = ts;
                        if episode.evidence.as_ref().is_none_or(|e| x > e.level) {
                            episode.evidence = Some(Evidence {
                                partition: s.partition,
                                offset: s.offset,
                                captured_at_ms: ts,
                                level: x,
                            });
                        }
                    }
                }
                Phase::Idle => {}
            }
        }
        self.step(camera, rule, ts, s, p, &mut events);
        events
    }

    /// Advances event time without a frame of this camera (the partition's watermark): resolves
    /// an episode whose camera fell silent, or whose cooldown has passed.
    pub fn advance(
        &mut self,
        camera: &str,
        rule: &str,
        watermark_ms: i64,
        p: &EpisodePolicy,
    ) -> Vec<Event> {
        let mut events = Vec::new();
        if let Some(last) = self.last_frame_ms {
            if watermark_ms.saturating_sub(last) > ms(p.silence_timeout_secs)
                && !matches!(self.phase, Phase::Idle)
            {
                self.silence(camera, rule, last, &mut events);
            }
        }
        if let Phase::Clearing { cleared_at_ms, .. } = self.phase {
            if watermark_ms.saturating_sub(cleared_at_ms) >= ms(p.cooldown_secs) {
                self.resolve(
                    camera,
                    rule,
                    cleared_at_ms,
                    watermark_ms,
                    "cleared",
                    &mut events,
                );
            }
        }
        events
    }

    fn step(
        &mut self,
        camera: &str,
        rule: &str,
        ts: i64,
        s: &Sample,
        p: &EpisodePolicy,
        events: &mut Vec<Event>,
    ) {
        match &mut self.phase {
            Phase::Idle => {
                if let Some(start) = self
                    .above_since_ms
                    .filter(|&t| ts.saturating_sub(t) >= ms(p.min_open_secs))
                {
                    let mut episode = Episode {
                        id: episode_id(camera, rule, start),
                        opened_at_ms: start,
                        last_seen_ms: ts,
                        peak_level: self.level,
                        level_sum: self.level,
                        frames: 1,
                        severity: severity(p, ts.saturating_sub(start)),
                        events: 0,
                        last_event_ms: ts,
                        evidence: s.level.map(|l| Evidence {
                            partition: s.partition,
                            offset: s.offset,
                            captured_at_ms: ts,
                            level: l,
                        }),
                    };
                    events.push(emit(
                        camera,
                        rule,
                        &mut episode,
                        EventKind::Opened,
                        ts,
                        None,
                        None,
                    ));
                    self.phase = Phase::Open { episode };
                }
            }
            Phase::Open { episode } => {
                let severity = severity(p, ts.saturating_sub(episode.opened_at_ms));
                let reason = if severity != episode.severity {
                    episode.severity = severity;
                    Some("severity")
                } else if ts.saturating_sub(episode.last_event_ms) >= ms(p.heartbeat_secs) {
                    Some("heartbeat")
                } else {
                    None
                };
                if reason.is_some() {
                    events.push(emit(
                        camera,
                        rule,
                        episode,
                        EventKind::Updated,
                        ts,
                        reason,
                        None,
                    ));
                }
                if let Some(cleared) = self
                    .below_since_ms
                    .filter(|&t| ts.saturating_sub(t) >= ms(p.clear_secs))
                {
                    let episode = episode.clone();
                    self.phase = Phase::Clearing {
                        episode,
                        cleared_at_ms: cleared,
                    };
                    // The cooldown may already have passed (sparse frames).
                    if ts.saturating_sub(cleared) >= ms(p.cooldown_secs) {
                        self.resolve(camera, rule, cleared, ts, "cleared", events);
                    }
                }
            }
            Phase::Clearing {
                episode,
                cleared_at_ms,
            } => {
                if self.above_since_ms.is_some() {
                    // A relapse within the cooldown: the same episode goes on.
                    let episode = episode.clone();
                    self.phase = Phase::Open { episode };
                } else if ts.saturating_sub(*cleared_at_ms) >= ms(p.cooldown_secs) {
                    let cleared = *cleared_at_ms;
                    self.resolve(camera, rule, cleared, ts, "cleared", events);
                }
            }
        }
    }

    fn resolve(
        &mut self,
        camera: &str,
        rule: &str,
        resolved_at: i64,
        now: i64,
        reason: &'static str,
        events: &mut Vec<Event>,
    ) {
        if let Phase::Open { episode } | Phase::Clearing { episode, .. } = &mut self.phase {
            let mut ep = episode.clone();
            events.push(emit(
                camera,
                rule,
                &mut ep,
                EventKind::Resolved,
                now,
                Some(reason),
                Some(resolved_at),
            ));
        }
        self.phase = Phase::Idle;
    }

    fn silence(&mut self, camera: &str, rule: &str, last_frame: i64, events: &mut Vec<Event>) {
        let reason = match self.phase {
            Phase::Clearing { .. } => "cleared",
            _ => "camera_silent",
        };
        let resolved_at = match self.phase {
            Phase::Clearing { cleared_at_ms, .. } => cleared_at_ms,
            _ => last_frame,
        };
        if !matches!(self.phase, Phase::Idle) {
            self.resolve(camera, rule, resolved_at, last_frame, reason, events);
        }
        // Nothing is known about the scene after a silence: start afresh.
        self.level = 0.0;
        self.last_evidence_ms = None;
        self.above_since_ms = None;
        self.below_since_ms = None;
    }
}

fn emit(
    camera: &str,
    rule: &str,
    episode: &mut Episode,
    kind: EventKind,
    at_ms: i64,
    reason: Option<&'static str>,
    resolved_at_ms: Option<i64>,
) -> Event {
    let kind_s = match kind {
        EventKind::Opened => "opened",
        EventKind::Updated => "updated",
        EventKind::Resolved => "resolved",
    };
    let event_id = digest(&[
        camera,
        rule,
        &episode.opened_at_ms.to_string(),
        kind_s,
        &episode.events.to_string(),
    ]);
    episode.events += 1;
    episode.last_event_ms = at_ms;
    Event {
        event_id,
        kind,
        episode: episode.clone(),
        at_ms,
        reason,
        resolved_at_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(t_ms: i64, verdict: Verdict, level: f64) -> Sample {
        Sample {
            captured_at_ms: t_ms,
            verdict,
            level: (verdict != Verdict::Unknown).then_some(level),
            partition: 0,
            offset: t_ms / 100,
        }
    }

    fn run(samples: &[Sample], p: &EpisodePolicy) -> (EpisodeState, Vec<Event>) {
        let mut st = EpisodeState::default();
        let mut out = Vec::new();
        for s in samples {
            out.extend(st.apply("cam", "mask_required", s, p));
        }
        (st, out)
    }

    /// `secs` seconds of frames at 2 fps starting at `from_ms`.
    fn scene(from_ms: i64, secs: i64, verdict: Verdict, level: f64) -> Vec<Sample> {
        (0..secs * 2)
            .map(|i| sample(from_ms + i * 500, verdict, level))
            .collect()
    }

    fn kinds(events: &[Event]) -> Vec<EventKind> {
        events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn a_sustained_violation_opens_once_and_resolves_after_clear_and_cooldown() {
        let p = EpisodePolicy::default();
        let mut frames = scene(0, 20, Verdict::Violation, 0.95);
        frames.extend(scene(20_000, 60, Verdict::Compliant, 0.05));
        let (_, ev) = run(&frames, &p);
        assert_eq!(kinds(&ev), vec![EventKind::Opened, EventKind::Resolved]);
        let opened = &ev[0];
        let start = opened.episode.opened_at_ms;
        assert!(
            start > 0 && start < 3_000,
            "the episode starts when the level crossed: {start}"
        );
        assert_eq!(opened.at_ms - start, 3_000, "opened after min_open");
        assert_eq!(ev[1].episode.id, opened.episode.id);
        assert_eq!(ev[1].reason, Some("cleared"));
        let resolved_at = ev[1].resolved_at_ms.unwrap();
        // The smoothed level needs a few half-lives to fall from 0.95 to 0.3.
        assert!(
            resolved_at > 20_000 && resolved_at < 30_000,
            "cleared when the level fell: {resolved_at}"
        );
        assert!(
            ev[1].at_ms >= resolved_at + 30_000,
            "resolved only after the cooldown"
        );
        assert!(ev[1].episode.peak_level > 0.9);
    }

    #[test]
    fn flickering_input_never_opens() {
        let p = EpisodePolicy::default();
        let frames: Vec<_> = (0..400)
            .map(|i| {
                sample(
                    i * 500,
                    if i % 2 == 0 {
                        Verdict::Violation
                    } else {
                        Verdict::Compliant
                    },
                    if i % 2 == 0 { 0.95 } else { 0.05 },
                )
            })
            .collect();
        let (st, ev) = run(&frames, &p);
        assert!(ev.is_empty(), "{ev:?}");
        assert!(
            st.level > 0.3 && st.level < 0.6,
            "alternation settles between the thresholds: {}",
            st.level
        );
    }

    #[test]
    fn a_blip_inside_a_violation_does_not_split_the_episode() {
        let p = EpisodePolicy::default();
        let mut frames = scene(0, 30, Verdict::Violation, 0.95);
        frames.extend(scene(30_000, 4, Verdict::Compliant, 0.05)); // a few clear frames
        frames.extend(scene(34_000, 4, Verdict::Unknown, 0.0)); // face lost for a moment
        frames.extend(scene(38_000, 30, Verdict::Violation, 0.95));
        let (st, ev) = run(&frames, &p);
        let not_updates: Vec<_> = kinds(&ev)
            .into_iter()
            .filter(|k| *k != EventKind::Updated)
            .collect();
        assert_eq!(
            not_updates,
            vec![EventKind::Opened],
            "one episode, still open"
        );
        assert!(matches!(st.phase, Phase::Open { .. }));
    }

    #[test]
    fn a_relapse_within_the_cooldown_continues_the_same_episode() {
        let p = EpisodePolicy::default();
        let mut frames = scene(0, 20, Verdict::Violation, 0.95);
        frames.extend(scene(20_000, 25, Verdict::Compliant, 0.05)); // cleared, in cooldown
        frames.extend(scene(45_000, 20, Verdict::Violation, 0.95)); // back
        frames.extend(scene(65_000, 60, Verdict::Compliant, 0.05));
        let (_, ev) = run(&frames, &p);
        let main: Vec<_> = ev.iter().filter(|e| e.kind != EventKind::Updated).collect();
        assert_eq!(main.len(), 2, "{ev:?}");
        assert_eq!(
            (main[0].kind, main[1].kind),
            (EventKind::Opened, EventKind::Resolved)
        );
        assert_eq!(
            main[0].episode.id, main[1].episode.id,
            "the relapse continued the episode"
        );
    }

    #[test]
    fn severity_escalates_and_heartbeats_come_while_open() {
        let p = EpisodePolicy {
            heartbeat_secs: 20.0,
            ..EpisodePolicy::default()
        };
        let (_, ev) = run(&scene(0, 320, Verdict::Violation, 0.95), &p);
        let updates: Vec<_> = ev.iter().filter(|e| e.kind == EventKind::Updated).collect();
        assert!(updates
            .iter()
            .any(|e| e.reason == Some("severity") && e.episode.severity == Severity::Major));
        assert!(updates
            .iter()
            .any(|e| e.reason == Some("severity") && e.episode.severity == Severity::Critical));
        assert!(updates.iter().any(|e| e.reason == Some("heartbeat")));
        for w in ev.windows(2) {
            assert!(
                w[1].at_ms - w[0].at_ms <= 20_500,
                "an update at least every heartbeat"
            );
        }
    }

    #[test]
    fn a_silent_camera_resolves_its_episode() {
        let p = EpisodePolicy::default();
        let (mut st, ev) = run(&scene(0, 10, Verdict::Violation, 0.95), &p);
        assert_eq!(kinds(&ev), vec![EventKind::Opened]);
        assert!(st.advance("cam", "mask_required", 30_000, &p).is_empty());
        let ev = st.advance("cam", "mask_required", 70_000, &p);
        assert_eq!(kinds(&ev), vec![EventKind::Resolved]);
        assert_eq!(ev[0].reason, Some("camera_silent"));
        assert_eq!(ev[0].resolved_at_ms, Some(9_500));
        // A frame after a silence also resolves (when no watermark came first).
        let (mut st, _) = run(&scene(0, 10, Verdict::Violation, 0.95), &p);
        let ev = st.apply(
            "cam",
            "mask_required",
            &sample(200_000, Verdict::Compliant, 0.0),
            &p,
        );
        assert_eq!(ev[0].reason, Some("camera_silent"));
    }

    #[test]
    fn late_frames_are_counted_and_ignored() {
        let p = EpisodePolicy::default();
        let (mut st, _) = run(&scene(0, 20, Verdict::Compliant, 0.0), &p);
        let before = st.clone();
        let ev = st.apply(
            "cam",
            "mask_required",
            &sample(1_000, Verdict::Violation, 1.0),
            &p,
        );
        assert!(ev.is_empty());
        assert_eq!(st.late_frames, 1);
        assert_eq!(st.level, before.level);
    }

    #[test]
    fn policy_errors_name_the_key() {
        let bad = EpisodePolicy {
            close_threshold: 0.7,
            ..EpisodePolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("close_threshold"));
        let bad = EpisodePolicy {
            heartbeat_secs: 0.0,
            ..EpisodePolicy::default()
        };
        assert!(bad.validate().unwrap_err().contains("heartbeat_secs"));
    }

    fn arbitrary_frames() -> impl Strategy<Value = Vec<Sample>> {
        proptest::collection::vec((0i64..3_000, 0u8..3, 0f64..1.0), 1..300).prop_map(|steps| {
            let mut t = 0;
            steps
                .into_iter()
                .map(|(dt, v, level)| {
                    t += dt;
                    let verdict =
                        [Verdict::Violation, Verdict::Compliant, Verdict::Unknown][v as usize];
                    sample(t, verdict, level)
                })
                .collect()
        })
    }

    proptest! {
        /// Whatever the input: each episode has one `opened`, then `updated`s, then at most one
        /// `resolved`; event ids never repeat; replay gives identical events.
        #[test]
        fn events_are_well_formed_unique_and_replayable(frames in arbitrary_frames()) {
            let p = EpisodePolicy { min_open_secs: 1.0, clear_secs: 2.0, cooldown_secs: 5.0, silence_timeout_secs: 20.0, heartbeat_secs: 10.0, ..EpisodePolicy::default() };
            let (_, ev) = run(&frames, &p);
            let (_, again) = run(&frames, &p);
            prop_assert_eq!(&ev, &again);
            let mut ids = std::collections::HashSet::new();
            let mut open: Option<String> = None;
            for e in &ev {
                prop_assert!(ids.insert(e.event_id.clone()), "duplicate event id");
                match e.kind {
                    EventKind::Opened => { prop_assert!(open.is_none()); open = Some(e.episode.id.clone()); }
                    EventKind::Updated => prop_assert_eq!(open.as_ref(), Some(&e.episode.id)),
                    EventKind::Resolved => { prop_assert_eq!(open.as_ref(), Some(&e.episode.id)); open = None; }
                }
            }
        }

        /// Stopping anywhere, persisting the state and resuming gives exactly the events of an
        /// undisturbed run: state survives a restart.
        #[test]
        fn state_persisted_midway_resumes_identically(frames in arbitrary_frames(), cut in 0usize..300) {
            let p = EpisodePolicy { min_open_secs: 1.0, clear_secs: 2.0, cooldown_secs: 5.0, ..EpisodePolicy::default() };
            let cut = cut % (frames.len() + 1);
            let (_, whole) = run(&frames, &p);
            let (first_state, mut first) = run(&frames[..cut], &p);
            let json = serde_json::to_string(&first_state).unwrap();
            let mut restored: EpisodeState = serde_json::from_str(&json).unwrap();
            prop_assert_eq!(&restored, &first_state);
            for s in &frames[cut..] {
                first.extend(restored.apply("cam", "mask_required", s, &p));
            }
            prop_assert_eq!(first, whole);
        }
    }
}
