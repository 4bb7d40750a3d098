//! The console's read model in SQLite: episodes (opened, resolved, their timeline), their
//! acknowledgements, and the per-site, per-day counts the scorecard needs, rebuilt from the
//! events, acknowledgements and observations topics at every start (`--db PATH`, in memory by
//! default: the file is a cache, emptied at start).
//!
//! Everything here is synchronous (rusqlite): callers run it on the blocking pool. Days are UTC
//! dates of event time (the frames' capture times), so that replayed footage counts on the day
//! it was filmed.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use super::acks::Acknowledgement;
use super::users::Access;
use crate::contract::observation::{Observation, Verdict};
use crate::contract::{EventKind, ViolationEvent};

const SCHEMA: &str = "
DROP TABLE IF EXISTS episodes; DROP TABLE IF EXISTS timeline; DROP TABLE IF EXISTS acks;
DROP TABLE IF EXISTS judged; DROP TABLE IF EXISTS camera_days; DROP TABLE IF EXISTS frames_seen;
CREATE TABLE episodes (
  episode_id TEXT PRIMARY KEY, site TEXT NOT NULL, camera TEXT NOT NULL, zone TEXT,
  rule TEXT NOT NULL, severity TEXT NOT NULL, opened_at INTEGER NOT NULL,
  last_seen_at INTEGER NOT NULL, resolved_at INTEGER, resolve_reason TEXT,
  frames INTEGER NOT NULL, peak_level REAL NOT NULL, evidence_uri TEXT, last_seq INTEGER NOT NULL);
CREATE INDEX episodes_by_site ON episodes (site, opened_at);
CREATE TABLE timeline (
  event_id TEXT PRIMARY KEY, episode_id TEXT NOT NULL, kind TEXT NOT NULL,
  severity TEXT NOT NULL, reason TEXT, event_time INTEGER NOT NULL, seq INTEGER);
CREATE INDEX timeline_by_episode ON timeline (episode_id, event_time);
CREATE TABLE acks (
  episode_id TEXT PRIMARY KEY, ack_id TEXT NOT NULL, site TEXT NOT NULL, user TEXT NOT NULL,
  note TEXT, acked_at INTEGER NOT NULL, from_topic INTEGER NOT NULL);
CREATE TABLE judged (
  site TEXT NOT NULL, day TEXT NOT NULL, rule TEXT NOT NULL,
  compliant INTEGER NOT NULL, violation INTEGER NOT NULL, PRIMARY KEY (site, day, rule));
CREATE TABLE camera_days (
  site TEXT NOT NULL, camera TEXT NOT NULL, day TEXT NOT NULL, frames INTEGER NOT NULL,
  PRIMARY KEY (site, camera, day));
CREATE TABLE frames_seen (
  topic TEXT NOT NULL, partition INTEGER NOT NULL, offset INTEGER NOT NULL,
  PRIMARY KEY (topic, partition, offset));
";

/// Frames remembered to recognise one judged twice (far more than a worker holds in flight).
const FRAMES_REMEMBERED: i64 = 200_000;

/// The UTC date of an epoch-millisecond time, `YYYY-MM-DD`.
pub fn day_of(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| "1970-01-01".into())
}

/// A record read from one of the console's topics.
#[derive(Debug, Clone)]
pub enum Record {
    /// From the events topic.
    Event(Box<ViolationEvent>),
    /// From the acknowledgements topic: the first of an episode counts.
    Ack(Acknowledgement),
    /// Given on this replica and published, not yet read back: shown at once, and replaced by
    /// the first one the topic holds (another replica's may have come first).
    AckPending(Acknowledgement),
    /// From the observations topic.
    Observation(Box<Observation>),
}

/// A past or open episode, as the history shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct EpisodeRow {
    /// The episode's stable id (links, acknowledgements).
    pub episode_id: String,
    /// Whose episode it is: access is decided on it.
    pub site: String,
    /// Where it was seen (a filter and a column).
    pub camera: String,
    /// The camera's zone, when it has one (a filter and a column).
    pub zone: Option<String>,
    /// The rule broken (a filter and a column).
    pub rule: String,
    /// The latest severity (`minor`, `major`, `critical`).
    pub severity: String,
    /// When it opened (event time, epoch ms): the period filter and the scorecard's day.
    pub opened_at: i64,
    /// When it resolved, if it has.
    pub resolved_at: Option<i64>,
    /// Why it resolved (`cleared`, `camera_silent`).
    pub resolve_reason: Option<String>,
    /// Frames it lasted, as its latest event says.
    pub frames: i64,
    /// Its latest picture, to serve at `/evidence/{id}`.
    pub evidence_uri: Option<String>,
    /// `(kind, severity, reason, event_time)` of each event, oldest first.
    pub timeline: Vec<(String, String, Option<String>, i64)>,
    /// `(user, note, acked_at)` of the acknowledgement, if any.
    pub ack: Option<(String, Option<String>, i64)>,
}

/// What the history is asked for: a period of opening times and optional exact filters.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct HistoryFilter {
    /// Opened at or after (epoch ms).
    pub from_ms: Option<i64>,
    /// Opened before (epoch ms).
    pub to_ms: Option<i64>,
    /// Only this site (still within the viewer's access).
    pub site: Option<String>,
    /// Only this camera.
    pub camera: Option<String>,
    /// Only this zone.
    pub zone: Option<String>,
    /// Only this rule.
    pub rule: Option<String>,
    /// Only this severity (the latest one).
    pub severity: Option<String>,
}

/// The raw facts of one site on one day, from which the scorecard computes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayFacts {
    /// `(compliant, violation)` frames per rule.
    pub judged: BTreeMap<String, (i64, i64)>,
    /// Episodes opened that day.
    pub opened: i64,
    /// Opening-to-resolution times (ms) of that day's episodes that resolved.
    pub resolve_ms: Vec<i64>,
    /// Opening-to-acknowledgement times (ms) of that day's episodes that were acknowledged.
    pub ack_ms: Vec<i64>,
    /// Cameras that sent frames that day.
    pub cameras_seen: i64,
    /// Cameras seen at the site on some day of the period but not that day.
    pub cameras_offline: i64,
}

/// The read model.
pub struct Store {
    /// The database (a file, or in memory).
    conn: Connection,
}

impl Store {
    /// Opens (or creates) the database and empties it: it is rebuilt from the topics.
    pub fn open(path: Option<&std::path::Path>) -> rusqlite::Result<Store> {
        let conn = match path {
            Some(p) => Connection::open(p)?,
            None => Connection::open_in_memory()?,
        };
        conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn })
    }

    /// Applies a batch of records in one transaction.
    pub fn apply(&mut self, records: &[Record]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        for r in records {
            match r {
                Record::Event(e) => apply_event(&tx, e)?,
                Record::Ack(a) => {
                    tx.execute(
                        "INSERT INTO acks (episode_id, ack_id, site, user, note, acked_at, from_topic) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 1)
                         ON CONFLICT (episode_id) DO UPDATE SET ack_id = ?2, user = ?4, note = ?5, acked_at = ?6, from_topic = 1
                         WHERE from_topic = 0",
                        params![a.episode_id, a.ack_id, a.site, a.user, a.note, a.acked_at],
                    )?;
                }
                Record::AckPending(a) => {
                    tx.execute(
                        "INSERT OR IGNORE INTO acks (episode_id, ack_id, site, user, note, acked_at, from_topic) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0)",
                        params![a.episode_id, a.ack_id, a.site, a.user, a.note, a.acked_at],
                    )?;
                }
                Record::Observation(o) => apply_observation(&tx, o)?,
            }
        }
        // Duplicates come from a frame judged again soon after (a replaced worker): the latest
        // frames are enough to recognise them, and memory stays bounded.
        tx.execute(
            "DELETE FROM frames_seen WHERE rowid <= (SELECT MAX(rowid) FROM frames_seen) - ?1",
            [FRAMES_REMEMBERED],
        )?;
        tx.commit()
    }

    /// The acknowledgement of an episode: `(user, note, acked_at)`.
    pub fn ack_of(
        &self,
        episode_id: &str,
    ) -> rusqlite::Result<Option<(String, Option<String>, i64)>> {
        self.conn
            .query_row(
                "SELECT user, note, acked_at FROM acks WHERE episode_id = ?1",
                [episode_id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
    }

    /// One episode (for access checks on episodes no longer open).
    pub fn episode(&self, episode_id: &str) -> rusqlite::Result<Option<EpisodeRow>> {
        let mut rows = self.query(
            "SELECT episode_id, site, camera, zone, rule, severity, opened_at, resolved_at, resolve_reason, frames, evidence_uri FROM episodes WHERE episode_id = ?1",
            &[&episode_id],
        )?;
        Ok(rows.pop())
    }

    /// Episodes opened in the filter's period, newest first, those of sites `access` allows.
    pub fn history(
        &self,
        access: &Access,
        f: &HistoryFilter,
        limit: usize,
    ) -> rusqlite::Result<Vec<EpisodeRow>> {
        let rows = self.query(
            "SELECT episode_id, site, camera, zone, rule, severity, opened_at, resolved_at, resolve_reason, frames, evidence_uri FROM episodes
             WHERE opened_at >= ?1 AND opened_at < ?2
               AND (?3 IS NULL OR site = ?3) AND (?4 IS NULL OR camera = ?4) AND (?5 IS NULL OR zone = ?5)
               AND (?6 IS NULL OR rule = ?6) AND (?7 IS NULL OR severity = ?7)
             ORDER BY opened_at DESC, episode_id",
            &[
                &f.from_ms.unwrap_or(i64::MIN),
                &f.to_ms.unwrap_or(i64::MAX),
                &f.site,
                &f.camera,
                &f.zone,
                &f.rule,
                &f.severity,
            ],
        )?;
        Ok(rows
            .into_iter()
            .filter(|r| access.allows(&r.site))
            .take(limit)
            .collect())
    }

    fn query(&self, sql: &str, p: &[&dyn rusqlite::ToSql]) -> rusqlite::Result<Vec<EpisodeRow>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let mut rows: Vec<EpisodeRow> = stmt
            .query_map(p, |r| {
                Ok(EpisodeRow {
                    episode_id: r.get(0)?,
                    site: r.get(1)?,
                    camera: r.get(2)?,
                    zone: r.get(3)?,
                    rule: r.get(4)?,
                    severity: r.get(5)?,
                    opened_at: r.get(6)?,
                    resolved_at: r.get(7)?,
                    resolve_reason: r.get(8)?,
                    frames: r.get(9)?,
                    evidence_uri: r.get(10)?,
                    timeline: Vec::new(),
                    ack: None,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut tl = self.conn.prepare_cached(
            "SELECT kind, severity, reason, event_time FROM timeline WHERE episode_id = ?1 ORDER BY event_time, seq",
        )?;
        for row in &mut rows {
            row.timeline = tl
                .query_map([&row.episode_id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            row.ack = self.ack_of(&row.episode_id)?;
        }
        Ok(rows)
    }

    /// The distinct sites, cameras, zones and rules seen (for the history's filter lists).
    pub fn distinct(&self, column: &str) -> rusqlite::Result<Vec<String>> {
        let col = match column {
            "site" | "camera" | "zone" | "rule" => column,
            _ => return Ok(Vec::new()),
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT DISTINCT {col} FROM episodes WHERE {col} IS NOT NULL ORDER BY {col}"
        ))?;
        let out = stmt
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(out)
    }

    /// Raw facts per (site, day) for days `from..=to` (`YYYY-MM-DD`), sites `access` allows.
    pub fn day_facts(
        &self,
        access: &Access,
        from: &str,
        to: &str,
    ) -> rusqlite::Result<BTreeMap<(String, String), DayFacts>> {
        let mut out: BTreeMap<(String, String), DayFacts> = BTreeMap::new();
        let mut stmt = self.conn.prepare_cached(
            "SELECT site, day, rule, compliant, violation FROM judged WHERE day >= ?1 AND day <= ?2",
        )?;
        let judged = stmt.query_map([from, to], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        for j in judged {
            let (site, day, rule, c, v) = j?;
            out.entry((site, day))
                .or_default()
                .judged
                .insert(rule, (c, v));
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT e.site, e.opened_at, e.resolved_at, a.acked_at FROM episodes e LEFT JOIN acks a ON a.episode_id = e.episode_id",
        )?;
        let eps = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<i64>>(3)?,
            ))
        })?;
        for e in eps {
            let (site, opened, resolved, acked) = e?;
            let day = day_of(opened);
            if day.as_str() < from || day.as_str() > to {
                continue;
            }
            let f = out.entry((site, day)).or_default();
            f.opened += 1;
            if let Some(r) = resolved {
                f.resolve_ms.push(r - opened);
            }
            if let Some(a) = acked {
                f.ack_ms.push(a - opened);
            }
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT site, day, COUNT(*) FROM camera_days WHERE day >= ?1 AND day <= ?2 GROUP BY site, day",
        )?;
        let seen = stmt.query_map([from, to], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for s in seen {
            let (site, day, n) = s?;
            out.entry((site, day)).or_default().cameras_seen = n;
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT site, COUNT(DISTINCT camera) FROM camera_days WHERE day >= ?1 AND day <= ?2 GROUP BY site",
        )?;
        let known: BTreeMap<String, i64> = stmt
            .query_map([from, to], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for ((site, _), f) in out.iter_mut() {
            f.cameras_offline = known.get(site).copied().unwrap_or(0) - f.cameras_seen;
        }
        out.retain(|(site, _), _| access.allows(site));
        Ok(out)
    }
}

fn apply_event(tx: &rusqlite::Transaction, e: &ViolationEvent) -> rusqlite::Result<()> {
    let seq = e.sequence.unwrap_or(0);
    tx.execute(
        "INSERT OR IGNORE INTO timeline (event_id, episode_id, kind, severity, reason, event_time, seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![e.event_id, e.episode_id, e.kind.as_str(), e.severity.as_str(), e.reason, e.event_time, seq],
    )?;
    tx.execute(
        "INSERT OR IGNORE INTO episodes (episode_id, site, camera, zone, rule, severity, opened_at, last_seen_at, frames, peak_level, evidence_uri, last_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, -1)",
        params![e.episode_id, e.site, e.camera, e.zone, e.rule, e.severity.as_str(), e.opened_at, e.last_seen_at, e.frames, e.peak_level, e.evidence_uri],
    )?;
    if e.kind == EventKind::Resolved {
        tx.execute(
            "UPDATE episodes SET resolved_at = ?2, resolve_reason = ?3, last_seen_at = MAX(last_seen_at, ?4), frames = ?5 WHERE episode_id = ?1",
            params![e.episode_id, e.resolved_at.unwrap_or(e.event_time), e.reason, e.last_seen_at, e.frames],
        )?;
    } else {
        // A newer event's facts win; an older one replayed late changes nothing.
        tx.execute(
            "UPDATE episodes SET severity = ?2, last_seen_at = MAX(last_seen_at, ?3), frames = ?4, peak_level = ?5,
               evidence_uri = COALESCE(?6, evidence_uri), last_seq = ?7
             WHERE episode_id = ?1 AND last_seq <= ?7 AND resolved_at IS NULL",
            params![e.episode_id, e.severity.as_str(), e.last_seen_at, e.frames, e.peak_level, e.evidence_uri, seq],
        )?;
    }
    Ok(())
}

fn apply_observation(tx: &rusqlite::Transaction, o: &Observation) -> rusqlite::Result<()> {
    // A frame judged twice (a worker replaced mid-batch) counts once.
    let fresh = tx.execute(
        "INSERT OR IGNORE INTO frames_seen (topic, partition, offset) VALUES (?1, ?2, ?3)",
        params![o.source.topic, o.source.partition, o.source.offset],
    )?;
    if fresh == 0 {
        return Ok(());
    }
    let day = day_of(o.captured_at_ms);
    tx.execute(
        "INSERT INTO camera_days (site, camera, day, frames) VALUES (?1, ?2, ?3, 1)
         ON CONFLICT (site, camera, day) DO UPDATE SET frames = frames + 1",
        params![o.site, o.camera, day],
    )?;
    for r in &o.rules {
        let (c, v) = match r.verdict {
            Verdict::Compliant => (1, 0),
            Verdict::Violation => (0, 1),
            Verdict::Unknown => continue,
        };
        tx.execute(
            "INSERT INTO judged (site, day, rule, compliant, violation) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (site, day, rule) DO UPDATE SET compliant = compliant + ?4, violation = violation + ?5",
            params![o.site, day, r.rule, c, v],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::event::tests::sample_events;
    use crate::contract::Severity;

    fn ev(kind: EventKind, episode: &str, site: &str, at: i64, seq: i64) -> Record {
        let mut e = sample_events()[0].clone();
        e.kind = kind;
        e.episode_id = episode.into();
        e.site = site.into();
        e.opened_at = 1_000;
        e.event_time = at;
        e.sequence = Some(seq);
        e.event_id = format!("{episode}-{seq}");
        if kind == EventKind::Resolved {
            e.resolved_at = Some(at);
        }
        Record::Event(Box::new(e))
    }

    fn ack(user: &str) -> Acknowledgement {
        Acknowledgement {
            ack_id: format!("{user}-ack"),
            episode_id: "a".into(),
            site: "site-1".into(),
            camera: "c".into(),
            rule: "r".into(),
            user: user.into(),
            note: None,
            acked_at: 31_000,
            console: "t".into(),
        }
    }

    #[test]
    fn history_keeps_resolved_episodes_with_timeline_and_ack_per_site() {
        let mut s = Store::open(None).unwrap();
        s.apply(&[
            ev(EventKind::Opened, "a", "site-1", 1_000, 0),
            ev(EventKind::Opened, "b", "site-2", 1_000, 0),
            ev(EventKind::Resolved, "a", "site-1", 61_000, 2),
            ev(EventKind::Opened, "a", "site-1", 1_000, 0),
            Record::Ack(ack("ana")),
        ])
        .unwrap();
        // Another replica's acknowledgement came first on the topic: it replaces this
        // replica's pending one; later ones change nothing.
        let mut pending = ack("bo");
        pending.episode_id = "b".into();
        let mut first = ack("cy");
        first.episode_id = "b".into();
        let mut later = ack("di");
        later.episode_id = "b".into();
        s.apply(&[Record::AckPending(pending.clone())]).unwrap();
        assert_eq!(s.ack_of("b").unwrap().unwrap().0, "bo");
        s.apply(&[
            Record::Ack(first),
            Record::Ack(later),
            Record::AckPending(pending),
        ])
        .unwrap();
        assert_eq!(s.ack_of("b").unwrap().unwrap().0, "cy");
        let only1 = Access::Sites(["site-1".to_string()].into());
        let h = s.history(&only1, &HistoryFilter::default(), 100).unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].resolved_at, Some(61_000));
        assert_eq!(h[0].timeline.len(), 2, "{:?}", h[0].timeline);
        assert_eq!(h[0].ack.as_ref().unwrap().0, "ana");
        assert_eq!(
            s.history(&Access::All, &HistoryFilter::default(), 100)
                .unwrap()
                .len(),
            2
        );
        let f = HistoryFilter {
            site: Some("site-2".into()),
            severity: Some(Severity::Minor.as_str().into()),
            ..Default::default()
        };
        assert_eq!(s.history(&Access::All, &f, 100).unwrap().len(), 1);
        let facts = s
            .day_facts(&Access::All, "1970-01-01", "1970-01-01")
            .unwrap();
        let f1 = &facts[&("site-1".to_string(), "1970-01-01".to_string())];
        assert_eq!(
            (f1.opened, f1.resolve_ms.clone(), f1.ack_ms.clone()),
            (1, vec![60_000], vec![30_000])
        );
    }

    fn observation(camera: &str, site: &str, at: i64, offset: i64, verdict: &str) -> Record {
        let o: Observation = serde_json::from_value(serde_json::json!({
            "camera": camera, "site": site, "zone": null, "captured_at_ms": at, "seq": offset,
            "frame": {"width": 1, "height": 1, "decoded_width": 1, "decoded_height": 1},
            "rules": [{"rule": "mask", "verdict": verdict, "reason": null, "level": null, "detections": 1}],
            "detections": [], "classifications": [], "models": [],
            "timings": {"decode_ms": 0.0, "preprocess_ms": 0.0, "crop_ms": 0.0, "stages": [], "total_ms": 0.0},
            "source": {"topic": "frames", "partition": 0, "offset": offset},
            "worker": "w", "processed_at_ms": at
        }))
        .unwrap();
        Record::Observation(Box::new(o))
    }

    #[test]
    fn judged_frames_count_once_and_silent_cameras_are_offline() {
        const DAY_MS: i64 = 86_400_000;
        let mut s = Store::open(None).unwrap();
        s.apply(&[
            observation("cam-1", "site-1", 0, 0, "compliant"),
            observation("cam-1", "site-1", 1, 1, "violation"),
            // The same frame judged again by a replacement worker.
            observation("cam-1", "site-1", 1, 1, "violation"),
            observation("cam-1", "site-1", 2, 2, "unknown"),
            observation("cam-2", "site-1", 3, 3, "compliant"),
            // The next day only cam-1 sends frames.
            observation("cam-1", "site-1", DAY_MS, 4, "compliant"),
        ])
        .unwrap();
        let facts = s
            .day_facts(&Access::All, "1970-01-01", "1970-01-02")
            .unwrap();
        let d1 = &facts[&("site-1".to_string(), "1970-01-01".to_string())];
        assert_eq!(d1.judged["mask"], (2, 1));
        assert_eq!((d1.cameras_seen, d1.cameras_offline), (2, 0));
        let d2 = &facts[&("site-1".to_string(), "1970-01-02".to_string())];
        assert_eq!(d2.judged["mask"], (1, 0));
        assert_eq!((d2.cameras_seen, d2.cameras_offline), (1, 1));
        let none = Access::Sites(["site-9".to_string()].into());
        assert!(s
            .day_facts(&none, "1970-01-01", "1970-01-02")
            .unwrap()
            .is_empty());
    }
}
