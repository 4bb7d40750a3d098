//! Violation events in Avro (`schemas/violation_event.avsc`), in Avro single-object encoding:
//! `C3 01`, the schema's 8-byte CRC-64-AVRO (Rabin) fingerprint, then the binary datum. A reader
//! knows the schema from the fingerprint without a registry.

use apache_avro::schema::Schema;
use apache_avro::{from_avro_datum, from_value, to_avro_datum, to_value};
use serde::{Deserialize, Serialize};

use crate::episodes::{Event, EventKind, Severity};

/// The violation event schema, as committed.
pub const VIOLATION_SCHEMA: &str = include_str!("../schemas/violation_event.avsc");

/// A violation event as published (and as `vigil alerts` posts it, in JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViolationEvent {
    pub event_id: String,
    /// `opened`, `updated` or `resolved`.
    pub kind: String,
    pub episode_id: String,
    pub site: String,
    pub camera: String,
    pub zone: Option<String>,
    pub rule: String,
    /// `minor`, `major` or `critical`.
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not an Avro single-object record (no C3 01 marker)")]
    NotSingleObject,
    #[error("written with an unknown schema (fingerprint {0})")]
    UnknownSchema(String),
    #[error("avro: {0}")]
    Avro(String),
}

/// The schema's CRC-64-AVRO fingerprint over the specification's Parsing Canonical Form,
/// little-endian, as single-object encoding requires.
///
/// apache-avro 0.21 renders a logical type such as `{"type": "long", "logicalType":
/// "timestamp-millis"}` as `{"type":"long"}` in its canonical form, where the specification (and
/// other implementations, e.g. fastavro and Java) write `"long"`, so its fingerprint of a schema
/// with logical types matches nobody else's. The canonical form drops logical types anyway:
/// fingerprinting the schema without them gives the standard value.
pub fn spec_fingerprint(schema_json: &str) -> Vec<u8> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("logicalType");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_str(schema_json).expect("schema is JSON");
    strip(&mut v);
    let plain = Schema::parse(&v).expect("schema without logical types parses");
    plain.fingerprint::<apache_avro::rabin::Rabin>().bytes
}

/// Encodes and decodes violation events.
pub struct EventCodec {
    schema: Schema,
    /// `C3 01` + the schema's Rabin fingerprint.
    header: Vec<u8>,
}

impl EventCodec {
    pub fn new() -> EventCodec {
        let schema = Schema::parse_str(VIOLATION_SCHEMA).expect("the committed schema parses");
        let mut header = vec![0xC3, 0x01];
        header.extend_from_slice(&spec_fingerprint(VIOLATION_SCHEMA));
        EventCodec { schema, header }
    }

    pub fn schema(&self) -> &Schema {
        &self.schema
    }

    pub fn encode(&self, e: &ViolationEvent) -> Result<Vec<u8>, CodecError> {
        let avro = |e: apache_avro::Error| CodecError::Avro(e.to_string());
        let value = to_value(e)
            .map_err(avro)?
            .resolve(&self.schema)
            .map_err(avro)?;
        let mut out = self.header.clone();
        out.extend(to_avro_datum(&self.schema, value).map_err(avro)?);
        Ok(out)
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<ViolationEvent, CodecError> {
        if bytes.len() < 10 || bytes[..2] != [0xC3, 0x01] {
            return Err(CodecError::NotSingleObject);
        }
        if bytes[..10] != self.header[..] {
            return Err(CodecError::UnknownSchema(
                bytes[2..10].iter().map(|b| format!("{b:02x}")).collect(),
            ));
        }
        let avro = |e: apache_avro::Error| CodecError::Avro(e.to_string());
        let value = from_avro_datum(&self.schema, &mut &bytes[10..], None).map_err(avro)?;
        from_value(&value).map_err(avro)
    }
}

impl Default for EventCodec {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
        };
        let updated = ViolationEvent {
            event_id: "e2".into(),
            kind: "updated".into(),
            severity: "major".into(),
            reason: Some("severity".into()),
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
            ..base.clone()
        };
        vec![base, updated, resolved]
    }

    #[test]
    fn events_round_trip_in_single_object_encoding() {
        let codec = EventCodec::new();
        for e in sample_events() {
            let bytes = codec.encode(&e).unwrap();
            assert_eq!(&bytes[..2], &[0xC3, 0x01]);
            assert_eq!(codec.decode(&bytes).unwrap(), e);
        }
    }

    #[test]
    fn the_fingerprint_is_the_specification_s() {
        // CRC-64-AVRO of the Parsing Canonical Form in little-endian byte order, as fastavro
        // computes it for this schema.
        let fp: String = spec_fingerprint(VIOLATION_SCHEMA)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(fp, "020aab04122c1735");
    }

    #[test]
    fn foreign_bytes_are_refused() {
        let codec = EventCodec::new();
        assert!(matches!(
            codec.decode(b"{\"json\": 1}"),
            Err(CodecError::NotSingleObject)
        ));
        let mut bytes = codec.encode(&sample_events()[0]).unwrap();
        bytes[5] ^= 0xFF;
        assert!(matches!(
            codec.decode(&bytes),
            Err(CodecError::UnknownSchema(_))
        ));
    }

    #[test]
    fn an_unknown_enum_symbol_is_refused() {
        let mut e = sample_events()[0].clone();
        e.kind = "reopened".into();
        assert!(EventCodec::new().encode(&e).is_err());
    }
}
