//! Violation events in Avro (`schemas/violation_event.avsc`), framed as [`crate::avro`]
//! describes.

use serde::ser::Error as _;
use serde::{Deserialize, Serialize, Serializer};

use crate::avro::{Codec, VIOLATION_EVENT};
use crate::episodes::{Event, EventKind, Severity};

/// A violation event as published (and as `vigil alerts` posts it, in JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViolationEvent {
    pub event_id: String,
    /// `opened`, `updated` or `resolved`.
    #[serde(serialize_with = "kind_symbol")]
    pub kind: String,
    pub episode_id: String,
    pub site: String,
    pub camera: String,
    pub zone: Option<String>,
    pub rule: String,
    /// `minor`, `major` or `critical`.
    #[serde(serialize_with = "severity_symbol")]
    pub severity: String,
    pub reason: Option<String>,
    pub opened_at: i64,
    pub last_seen_at: i64,
    pub resolved_at: Option<i64>,
    pub event_time: i64,
    pub peak_level: f64,
    pub mean_level: f64,
    pub frames: i64,
    pub evidence: Option<EvidenceRef>,
    pub models: Vec<ModelVersion>,
    pub worker: String,
    /// The event's number within its episode (0 for `opened`); `None` when written by schema
    /// version 1, which did not carry it.
    pub sequence: Option<i64>,
}

/// Serialises a string field as the Avro enum symbol it names (as JSON, the same string), so
/// that Avro's schema-aware serializer can write it; an unknown symbol is an error.
fn symbol<S: Serializer>(
    name: &'static str,
    symbols: &'static [&'static str],
    value: &str,
    s: S,
) -> Result<S::Ok, S::Error> {
    let i = symbols
        .iter()
        .position(|x| *x == value)
        .ok_or_else(|| S::Error::custom(format!("`{value}` is not a {name} symbol")))?;
    s.serialize_unit_variant(name, i as u32, symbols[i])
}

fn kind_symbol<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    symbol("EventKind", &["opened", "updated", "resolved"], v, s)
}

fn severity_symbol<S: Serializer>(v: &str, s: S) -> Result<S::Ok, S::Error> {
    symbol("Severity", &["minor", "major", "critical"], v, s)
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub captured_at: i64,
    pub level: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
}

/// Where an event was raised.
pub struct EventContext<'a> {
    pub site: &'a str,
    pub camera: &'a str,
    pub zone: Option<&'a str>,
    pub rule: &'a str,
    pub frames_topic: &'a str,
    pub models: &'a [ModelVersion],
    pub worker: &'a str,
}

impl ViolationEvent {
    pub fn from_episode(e: &Event, c: &EventContext<'_>) -> ViolationEvent {
        let ep = &e.episode;
        ViolationEvent {
            event_id: e.event_id.clone(),
            kind: match e.kind {
                EventKind::Opened => "opened",
                EventKind::Updated => "updated",
                EventKind::Resolved => "resolved",
            }
            .into(),
            episode_id: ep.id.clone(),
            site: c.site.into(),
            camera: c.camera.into(),
            zone: c.zone.map(Into::into),
            rule: c.rule.into(),
            severity: match ep.severity {
                Severity::Minor => "minor",
                Severity::Major => "major",
                Severity::Critical => "critical",
            }
            .into(),
            reason: e.reason.map(Into::into),
            opened_at: ep.opened_at_ms,
            last_seen_at: ep.last_seen_ms,
            resolved_at: e.resolved_at_ms,
            event_time: e.at_ms,
            peak_level: ep.peak_level,
            mean_level: ep.mean_level(),
            frames: ep.frames as i64,
            evidence: ep.evidence.as_ref().map(|ev| EvidenceRef {
                topic: c.frames_topic.into(),
                partition: ev.partition,
                offset: ev.offset,
                captured_at: ev.captured_at_ms,
                level: ev.level,
            }),
            models: c.models.to_vec(),
            worker: c.worker.into(),
            // `emit` numbered this event, then counted it.
            sequence: Some(i64::from(ep.events) - 1),
        }
    }
}

/// Reads and writes violation events.
pub type EventCodec = Codec<ViolationEvent>;

/// The violation-event codec in single-object encoding.
pub fn event_codec() -> EventCodec {
    Codec::new(&VIOLATION_EVENT)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::avro::{hex, spec_fingerprint};
    use apache_avro::schema::Schema;
    use apache_avro::types::Value;
    use apache_avro::{to_avro_datum, to_value};

    pub(crate) fn sample_events() -> Vec<ViolationEvent> {
        let base = ViolationEvent {
            event_id: "e1".into(),
            kind: "opened".into(),
            episode_id: "ep".into(),
            site: "site-001".into(),
            camera: "cam-0001".into(),
            zone: Some("kitchen".into()),
            rule: "mask_required".into(),
            severity: "minor".into(),
            reason: None,
            opened_at: 1_700_000_000_000,
            last_seen_at: 1_700_000_003_000,
            resolved_at: None,
            event_time: 1_700_000_003_000,
            peak_level: 0.97,
            mean_level: 0.9,
            frames: 7,
            evidence: Some(EvidenceRef {
                topic: "vigil.frames".into(),
                partition: 3,
                offset: 42,
                captured_at: 1_700_000_001_000,
                level: 0.99,
            }),
            models: vec![ModelVersion {
                name: "mask".into(),
                version: "1".into(),
            }],
            worker: "w1".into(),
            sequence: Some(0),
        };
        let updated = ViolationEvent {
            event_id: "e2".into(),
            kind: "updated".into(),
            severity: "major".into(),
            reason: Some("severity".into()),
            sequence: Some(1),
            ..base.clone()
        };
        let resolved = ViolationEvent {
            event_id: "e3".into(),
            kind: "resolved".into(),
            severity: "critical".into(),
            reason: Some("cleared".into()),
            resolved_at: Some(1_700_000_400_000),
            zone: None,
            evidence: None,
            sequence: Some(2),
            ..base.clone()
        };
        vec![base, updated, resolved]
    }

    #[test]
    fn events_round_trip_in_both_framings() {
        for codec in [event_codec(), Codec::registered(&VIOLATION_EVENT, 41)] {
            for e in sample_events() {
                let bytes = codec.encode(&e).unwrap();
                assert_eq!(bytes, codec.encode_via_value(&e).unwrap());
                assert!(bytes[..2] == [0xC3, 0x01] || bytes[..5] == [0, 0, 0, 0, 41]);
                assert_eq!(codec.decode(&bytes).unwrap(), e);
            }
        }
    }

    #[test]
    fn the_fingerprint_is_the_specification_s() {
        // CRC-64-AVRO of the Parsing Canonical Form in little-endian byte order, as fastavro
        // computes it for these schemas (tests/episodes.rs checks it against fastavro).
        assert_eq!(
            hex(&spec_fingerprint(VIOLATION_EVENT.history[0])),
            "020aab04122c1735"
        );
    }

    #[test]
    fn records_written_by_version_1_are_read() {
        // A version-1 writer: the v1 schema, fed the fields v1 had.
        let v1 = Schema::parse_str(VIOLATION_EVENT.history[0]).unwrap();
        let codec = event_codec();
        for e in sample_events() {
            let mut fields = match to_value(&e).unwrap() {
                Value::Record(f) => f,
                other => panic!("{other:?}"),
            };
            fields.retain(|(k, _)| k != "sequence");
            let datum = to_avro_datum(&v1, Value::Record(fields).resolve(&v1).unwrap()).unwrap();
            let mut bytes = vec![0xC3, 0x01];
            bytes.extend_from_slice(&spec_fingerprint(VIOLATION_EVENT.history[0]));
            bytes.extend(datum);
            let read = codec.decode(&bytes).unwrap();
            assert_eq!(
                read,
                ViolationEvent {
                    sequence: None,
                    ..e
                }
            );
        }
    }

    #[test]
    fn an_unknown_enum_symbol_is_refused() {
        let mut e = sample_events()[0].clone();
        e.kind = "reopened".into();
        assert!(event_codec().encode(&e).is_err());
    }
}
