//! The episodes stage: each observation, in its partition's frame order, applied to its
//! camera's episodes; the events it raises and the state it changed travel with it to the sink.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;

use super::machine::{Event, EventKind};
use super::store::{shed_key, RaisedEvent, StateRef, StateStore};
use crate::contract::{
    EvidenceRef, Judged, Observation, Observed, Outcome, Stamp, StateRecord, ViolationEvent,
};
use crate::evidence::Evidence;
use crate::rules::{EpisodePolicy, RuleSet};
use crate::telemetry::Metrics;

/// Judges observations against the episode state of the assigned partitions.
pub struct Judge {
    /// Episode state of the assigned partitions (restored and dropped on rebalances).
    pub store: Arc<StateStore>,
    /// Episode policy per rule name.
    policies: HashMap<String, EpisodePolicy>,
    metrics: Arc<Metrics>,
    /// Named in each event's evidence reference.
    frames_topic: String,
    /// Written into each event.
    worker_id: String,
    /// Whether load shedding is on: then each judged frame's camera gets its shedding record
    /// written, so that a new owner skips what this one would have.
    shedding: bool,
}

impl Judge {
    pub fn new(
        ruleset: &RuleSet,
        store: Arc<StateStore>,
        metrics: Arc<Metrics>,
        frames_topic: String,
        worker_id: String,
        shedding: bool,
    ) -> Judge {
        let policies = ruleset
            .rules
            .iter()
            .map(|(n, r)| (n.clone(), r.episode.clone()))
            .collect();
        for name in ruleset.rules.keys() {
            metrics.frames_stale.with_label_values(&[name]);
            for kind in [EventKind::Opened, EventKind::Updated, EventKind::Resolved] {
                metrics
                    .episode_events
                    .with_label_values(&[name, kind.as_str()]);
            }
        }
        Judge {
            store,
            policies,
            metrics,
            frames_topic,
            worker_id,
            shedding,
        }
    }

    /// Applies an observation to its cameras' episodes (in frame order; `stamp` is its place on
    /// the partition clock): the events it raises and the state entries it changed, serialised
    /// for the state topic.
    pub fn judge(
        &self,
        partition: i32,
        offset: i64,
        obs: Observation,
        stamp: Option<&Stamp>,
    ) -> Judged {
        let j = self
            .store
            .judge(partition, offset, &obs, stamp, &self.policies);
        for rule in &j.stale {
            self.metrics.frames_stale.with_label_values(&[rule]).inc();
        }
        for (site, rule, secs) in &j.violation_secs {
            self.metrics
                .violation_seconds
                .with_label_values(&[site, rule])
                .inc_by(*secs);
        }
        let mut events = Vec::with_capacity(j.events.len());
        for r in &j.events {
            let ev = self.event(r);
            self.metrics
                .episode_events
                .with_label_values(&[&ev.rule, ev.kind.as_str()])
                .inc();
            if ev.kind != EventKind::Updated {
                tracing::info!(kind = %ev.kind, site = %ev.site, camera = %ev.camera, rule = %ev.rule,
                    episode = %ev.episode_id, event = %ev.event_id, reason = ev.reason.as_deref().unwrap_or(""), "episode event");
            }
            events.push(ev);
        }
        let mut states: Vec<StateRecord> = j
            .changed
            .iter()
            .map(|s| StateRecord {
                key: s.key(),
                value: Some(StateRef::Episode(s).to_bytes()),
            })
            .collect();
        for e in &j.evicted {
            states.push(StateRecord {
                key: e.key(),
                value: None,
            });
        }
        if let (true, Some(shed)) = (self.shedding, j.shed) {
            states.push(StateRecord {
                key: shed_key(&shed.site, &shed.camera),
                value: Some(StateRef::Shed(&shed).to_bytes()),
            });
        }
        Judged {
            obs,
            events,
            states,
        }
    }

    /// The published form of an episode event.
    fn event(&self, r: &RaisedEvent) -> ViolationEvent {
        let e: &Event = &r.event;
        let ep = &e.episode;
        ViolationEvent {
            event_id: e.event_id.clone(),
            kind: e.kind,
            episode_id: ep.id.clone(),
            site: r.site.clone(),
            camera: r.camera.clone(),
            zone: r.zone.clone(),
            rule: r.rule.clone(),
            severity: ep.severity,
            reason: e.reason.map(Into::into),
            opened_at: ep.opened_at_ms,
            last_seen_at: ep.last_seen_ms,
            resolved_at: e.resolved_at_ms,
            event_time: e.at_ms,
            peak_level: ep.peak_level,
            mean_level: ep.mean_level(),
            frames: ep.frames as i64,
            evidence: ep.evidence.as_ref().map(|ev| EvidenceRef {
                topic: self.frames_topic.clone(),
                partition: ev.partition,
                offset: ev.offset,
                captured_at: ev.captured_at_ms,
                level: ev.level,
            }),
            models: r.models.clone(),
            worker: self.worker_id.clone(),
            // `emit` numbered this event, then counted it.
            sequence: Some(i64::from(ep.events) - 1),
            // Set by the evidence stage when it takes a picture.
            evidence_uri: None,
        }
    }
}

/// The stage task: judges observations in the order they arrive and hands each frame's outcome
/// to the sink; with `evidence`, an opening or a rise in severity gets its picture first.
/// Ends when its input closes.
pub async fn run(
    judge: Arc<Judge>,
    evidence: Option<Arc<Evidence>>,
    mut rx: mpsc::Receiver<Observed>,
    out: mpsc::Sender<Outcome>,
) {
    while let Some(Observed { origin, obs, image }) = rx.recv().await {
        let mut judged = judge.judge(
            origin.ticket.partition,
            origin.ticket.offset,
            *obs,
            origin.stamp.as_ref(),
        );
        if let (Some(evidence), Some(image)) = (&evidence, &image) {
            if judged.events.iter().any(crate::evidence::wants_snapshot) {
                evidence
                    .snapshot(&mut judged.events, image, &judged.obs.detections)
                    .await;
            }
        }
        drop(image);
        if out
            .send(Outcome::Observation(origin, Box::new(judged)))
            .await
            .is_err()
        {
            return;
        }
    }
}
