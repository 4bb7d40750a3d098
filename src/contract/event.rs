//! Violation events: the record `schemas/violation_event.avsc` describes, published by the
//! episodes stage and read by `vigil alerts`.

use serde::{Deserialize, Serialize};

/// A violation event as published (and as `vigil alerts` posts it, in JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViolationEvent {
    pub event_id: String,
    pub kind: EventKind,
    pub episode_id: String,
    pub site: String,
    pub camera: String,
    pub zone: Option<String>,
    pub rule: String,
    pub severity: Severity,
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
    /// The evidence picture in object storage (schema version 3): set on `opened` and
    /// severity `updated` events when the worker takes pictures (`--evidence-url`).
    #[serde(default)]
    pub evidence_uri: Option<String>,
}

/// What happened to an episode. Serialised as the Avro enum symbol of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Opened,
    Updated,
    Resolved,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Updated => "updated",
            EventKind::Resolved => "resolved",
        }
    }
}

/// How long an episode has been open. Serialised as the Avro enum symbol of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Minor,
    Major,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Minor => "minor",
            Severity::Major => "major",
            Severity::Critical => "critical",
        }
    }
}

macro_rules! symbol_text {
    ($t:ty) => {
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.as_str() == *other
            }
        }
    };
}
symbol_text!(EventKind);
symbol_text!(Severity);

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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::codec::avro::{hex, spec_fingerprint, Codec, VIOLATION_EVENT};
    use crate::codec::event_codec;
    use apache_avro::schema::Schema;
    use apache_avro::types::Value;
    use apache_avro::{to_avro_datum, to_value};

    pub(crate) fn sample_events() -> Vec<ViolationEvent> {
        let base = ViolationEvent {
            event_id: "e1".into(),
            kind: EventKind::Opened,
            episode_id: "ep".into(),
            site: "site-001".into(),
            camera: "cam-0001".into(),
            zone: Some("kitchen".into()),
            rule: "mask_required".into(),
            severity: Severity::Minor,
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
            evidence_uri: Some("file:///var/lib/vigil/evidence/site-001/cam-0001/e1.jpg".into()),
        };
        let updated = ViolationEvent {
            event_id: "e2".into(),
            kind: EventKind::Updated,
            severity: Severity::Major,
            reason: Some("severity".into()),
            sequence: Some(1),
            ..base.clone()
        };
        let resolved = ViolationEvent {
            event_id: "e3".into(),
            kind: EventKind::Resolved,
            severity: Severity::Critical,
            reason: Some("cleared".into()),
            resolved_at: Some(1_700_000_400_000),
            zone: None,
            evidence: None,
            sequence: Some(2),
            evidence_uri: None,
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
            fields.retain(|(k, _)| k != "sequence" && k != "evidence_uri");
            let datum = to_avro_datum(&v1, Value::Record(fields).resolve(&v1).unwrap()).unwrap();
            let mut bytes = vec![0xC3, 0x01];
            bytes.extend_from_slice(&spec_fingerprint(VIOLATION_EVENT.history[0]));
            bytes.extend(datum);
            let read = codec.decode(&bytes).unwrap();
            assert_eq!(
                read,
                ViolationEvent {
                    sequence: None,
                    evidence_uri: None,
                    ..e
                }
            );
        }
    }

    #[test]
    fn an_unknown_enum_symbol_is_refused() {
        // The kind is an enum all the way to the writer, so an unknown symbol cannot be built;
        // on the reading side (JSON from a webhook or a tool) it is refused.
        let mut json = serde_json::to_value(&sample_events()[0]).unwrap();
        assert_eq!(json["kind"], "opened");
        json["kind"] = "reopened".into();
        assert!(serde_json::from_value::<ViolationEvent>(json).is_err());
    }
}
