//! The console's picture of the world: open episodes, rebuilt from the events topic, and each
//! camera's last known state, from the site gateways' camera-status topic. Pure: records go in
//! (in any order a replay gives: duplicates, an `opened` again after its `resolved`, a status
//! record delivered twice), the page's data comes out.

use std::collections::{HashMap, HashSet, VecDeque};

use serde::Serialize;

use crate::contract::{EventKind, Severity, StatusRecord, ViolationEvent};

/// Resolved episodes remembered, so that a replayed `opened` does not bring one back.
const REMEMBER_RESOLVED: usize = 100_000;

/// One open episode, as the page shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpenEpisode {
    pub episode_id: String,
    pub site: String,
    pub camera: String,
    pub zone: Option<String>,
    pub rule: String,
    pub severity: Severity,
    pub opened_at: i64,
    pub last_seen_at: i64,
    pub frames: i64,
    pub peak_level: f64,
    /// The latest picture of the episode (the opening's, or a severity rise's).
    pub evidence_uri: Option<String>,
    /// The sequence number of the latest event applied (older ones are ignored).
    #[serde(skip)]
    sequence: i64,
}

/// Open episodes by id.
#[derive(Debug, Default)]
pub struct View {
    open: HashMap<String, OpenEpisode>,
    resolved: HashSet<String>,
    resolved_order: VecDeque<String>,
    /// Events applied (for the page's footer and the tests).
    pub events_seen: u64,
    /// Each camera's latest status record, by (site, camera): a camera's id is unique only
    /// within its site.
    cameras: HashMap<(String, String), StatusRecord>,
}

impl View {
    pub fn apply(&mut self, ev: &ViolationEvent) {
        self.events_seen += 1;
        let id = &ev.episode_id;
        if self.resolved.contains(id) {
            return;
        }
        let seq = ev.sequence.unwrap_or(0);
        match ev.kind {
            EventKind::Resolved => {
                self.open.remove(id);
                self.resolved.insert(id.clone());
                self.resolved_order.push_back(id.clone());
                if self.resolved_order.len() > REMEMBER_RESOLVED {
                    if let Some(old) = self.resolved_order.pop_front() {
                        self.resolved.remove(&old);
                    }
                }
            }
            EventKind::Opened | EventKind::Updated => {
                let e = self.open.entry(id.clone()).or_insert_with(|| OpenEpisode {
                    episode_id: id.clone(),
                    site: ev.site.clone(),
                    camera: ev.camera.clone(),
                    zone: ev.zone.clone(),
                    rule: ev.rule.clone(),
                    severity: ev.severity,
                    opened_at: ev.opened_at,
                    last_seen_at: ev.last_seen_at,
                    frames: ev.frames,
                    peak_level: ev.peak_level,
                    evidence_uri: None,
                    sequence: -1,
                });
                if seq < e.sequence {
                    return;
                }
                e.sequence = seq;
                e.severity = ev.severity;
                e.last_seen_at = e.last_seen_at.max(ev.last_seen_at);
                e.frames = ev.frames;
                e.peak_level = ev.peak_level;
                if ev.evidence_uri.is_some() {
                    e.evidence_uri = ev.evidence_uri.clone();
                }
            }
        }
    }

    pub fn get(&self, episode_id: &str) -> Option<&OpenEpisode> {
        self.open.get(episode_id)
    }

    /// Open episodes grouped by site (sites in name order), newest first within a site.
    pub fn by_site(&self) -> Vec<(String, Vec<OpenEpisode>)> {
        let mut sites: HashMap<&str, Vec<OpenEpisode>> = HashMap::new();
        for e in self.open.values() {
            sites.entry(&e.site).or_default().push(e.clone());
        }
        let mut out: Vec<(String, Vec<OpenEpisode>)> = sites
            .into_iter()
            .map(|(s, mut v)| {
                v.sort_by(|a, b| {
                    b.opened_at
                        .cmp(&a.opened_at)
                        .then(a.episode_id.cmp(&b.episode_id))
                });
                (s.to_string(), v)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    /// Takes a camera-status record; an older one than the camera's latest (a duplicate, a
    /// replay) changes nothing.
    pub fn apply_status(&mut self, rec: StatusRecord) {
        let key = (rec.site.clone(), rec.camera.clone());
        match self.cameras.get(&key) {
            Some(known) if known.at_ms > rec.at_ms => {}
            _ => {
                self.cameras.insert(key, rec);
            }
        }
    }

    /// Whether the gateway last said this camera is down.
    pub fn camera_down(&self, site: &str, camera: &str) -> Option<&StatusRecord> {
        self.cameras
            .get(&(site.to_string(), camera.to_string()))
            .filter(|r| r.is_down())
    }

    /// Every camera's latest status, by site (sites and cameras in name order).
    pub fn cameras_by_site(&self) -> Vec<(String, Vec<StatusRecord>)> {
        let mut all: Vec<&StatusRecord> = self.cameras.values().collect();
        all.sort_by(|a, b| (&a.site, &a.camera).cmp(&(&b.site, &b.camera)));
        let mut out: Vec<(String, Vec<StatusRecord>)> = Vec::new();
        for r in all {
            match out.last_mut() {
                Some((site, v)) if *site == r.site => v.push(r.clone()),
                _ => out.push((r.site.clone(), vec![r.clone()])),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::event::tests::sample_events;

    fn ev(kind: EventKind, episode: &str, site: &str, opened_at: i64, seq: i64) -> ViolationEvent {
        let mut e = sample_events()[0].clone();
        e.kind = kind;
        e.episode_id = episode.into();
        e.site = site.into();
        e.opened_at = opened_at;
        e.sequence = Some(seq);
        e.event_id = format!("{episode}-{seq}");
        e
    }

    #[test]
    fn open_episodes_by_site_newest_first_until_resolved() {
        let mut v = View::default();
        v.apply(&ev(EventKind::Opened, "a", "site-2", 100, 0));
        v.apply(&ev(EventKind::Opened, "b", "site-1", 200, 0));
        v.apply(&ev(EventKind::Opened, "c", "site-1", 300, 0));
        let sites = v.by_site();
        assert_eq!(sites[0].0, "site-1");
        assert_eq!(
            sites[0]
                .1
                .iter()
                .map(|e| e.episode_id.as_str())
                .collect::<Vec<_>>(),
            ["c", "b"]
        );
        let mut up = ev(EventKind::Updated, "c", "site-1", 300, 1);
        up.severity = Severity::Major;
        up.evidence_uri = Some("file:///e/c-1.jpg".into());
        v.apply(&up);
        assert_eq!(v.get("c").unwrap().severity, Severity::Major);
        assert_eq!(
            v.get("c").unwrap().evidence_uri.as_deref(),
            Some("file:///e/c-1.jpg")
        );
        // An older event replayed late does not undo a newer one.
        v.apply(&ev(EventKind::Opened, "c", "site-1", 300, 0));
        assert_eq!(v.get("c").unwrap().severity, Severity::Major);
        v.apply(&ev(EventKind::Resolved, "c", "site-1", 300, 2));
        assert!(v.get("c").is_none());
        // A replayed opening of a resolved episode does not bring it back.
        v.apply(&ev(EventKind::Opened, "c", "site-1", 300, 0));
        assert!(v.get("c").is_none());
        assert_eq!(v.open_count(), 2);
    }

    fn status(site: &str, camera: &str, state: &str, at_ms: i64) -> StatusRecord {
        StatusRecord {
            site: site.into(),
            camera: camera.into(),
            zone: None,
            state: state.into(),
            reason: if state == "down" {
                "no answer".into()
            } else {
                String::new()
            },
            at_ms,
            reconnects: 0,
        }
    }

    #[test]
    fn a_camera_is_as_its_latest_status_record_says_within_its_own_site() {
        let mut v = View::default();
        v.apply_status(status("site-1", "cam-a", "down", 200));
        v.apply_status(status("site-2", "cam-a", "up", 100));
        assert!(v.camera_down("site-1", "cam-a").is_some());
        assert!(
            v.camera_down("site-2", "cam-a").is_none(),
            "another site's cam-a"
        );
        // A duplicate of an older record, delivered late, changes nothing.
        v.apply_status(status("site-1", "cam-a", "up", 150));
        assert!(v.camera_down("site-1", "cam-a").is_some());
        v.apply_status(status("site-1", "cam-a", "up", 300));
        assert!(v.camera_down("site-1", "cam-a").is_none());
        v.apply_status(status("site-1", "cam-b", "down", 310));
        let by_site = v.cameras_by_site();
        let names: Vec<(String, Vec<String>)> = by_site
            .iter()
            .map(|(s, c)| (s.clone(), c.iter().map(|r| r.camera.clone()).collect()))
            .collect();
        assert_eq!(
            names,
            [
                (
                    "site-1".to_string(),
                    vec!["cam-a".to_string(), "cam-b".to_string()]
                ),
                ("site-2".to_string(), vec!["cam-a".to_string()])
            ]
        );
    }
}
