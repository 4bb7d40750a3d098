//! Avro records on the output topics, in one of two framings:
//!
//! - **single-object encoding** (no registry): `C3 01`, the writer schema's 8-byte CRC-64-AVRO
//!   fingerprint (little-endian), then the binary datum;
//! - **Confluent wire format** (`--schema-registry`): `00`, the schema's registry id (4 bytes,
//!   big-endian), then the binary datum.
//!
//! A [`Codec`] writes with the current schema of its [`RecordType`] and reads records written by
//! the current schema or any earlier version in `schemas/history/` (by fingerprint), or by any
//! registry id it has been taught ([`Codec::learn`]); older records are resolved to the current
//! schema, so fields added since come back with their defaults.

use std::collections::HashMap;
use std::marker::PhantomData;

use apache_avro::schema::Schema;
use apache_avro::{from_avro_datum, from_value, to_avro_datum, to_value, write_avro_datum_ref};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A record type's schema: the current version and every earlier one, oldest first.
#[derive(Debug)]
pub struct RecordType {
    /// File stem in `schemas/`, e.g. `violation_event`.
    pub name: &'static str,
    pub current: &'static str,
    pub history: &'static [&'static str],
}

/// Episode events on `vigil.violations`.
pub static VIOLATION_EVENT: RecordType = RecordType {
    name: "violation_event",
    current: include_str!("../../schemas/violation_event.avsc"),
    history: &[
        include_str!("../../schemas/history/violation_event.v1.avsc"),
        include_str!("../../schemas/history/violation_event.v2.avsc"),
    ],
};

/// Per-frame results on `vigil.observations`.
pub static OBSERVATION: RecordType = RecordType {
    name: "observation",
    current: include_str!("../../schemas/observation.avsc"),
    history: &[],
};

/// Acknowledgements of episodes on `vigil.acks` (written by `vigil console`).
pub static ACKNOWLEDGEMENT: RecordType = RecordType {
    name: "acknowledgement",
    current: include_str!("../../schemas/acknowledgement.avsc"),
    history: &[],
};

/// Every record type vigil publishes.
pub static RECORD_TYPES: [&RecordType; 3] = [&VIOLATION_EVENT, &OBSERVATION, &ACKNOWLEDGEMENT];

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("not an Avro record in single-object encoding or the Confluent wire format")]
    NotAvro,
    #[error("written with an unknown schema (fingerprint {0}): neither the current schema nor one in schemas/history")]
    UnknownSchema(String),
    /// The record names a registry id this codec has not fetched yet: look it up and
    /// [`Codec::learn`] it, then retry.
    #[error("written with registry schema id {0}, which is not known yet")]
    UnknownRegistryId(u32),
    #[error("avro: {0}")]
    Avro(String),
    /// The datum's lengths or counts do not fit its bytes (refused before decoding).
    #[error("malformed Avro datum: {0}")]
    Malformed(String),
}

fn avro_err(e: apache_avro::Error) -> CodecError {
    CodecError::Avro(e.to_string())
}

/// The schema's CRC-64-AVRO fingerprint over the specification's Parsing Canonical Form,
/// little-endian, as single-object encoding requires.
///
/// apache-avro 0.21 renders a logical type such as `{"type": "long", "logicalType":
/// "timestamp-millis"}` as `{"type":"long"}` in its canonical form, where the specification (and
/// other implementations, e.g. fastavro and Java) write `"long"`, so its fingerprint of a schema
/// with logical types matches nobody else's. The canonical form drops logical types anyway:
/// fingerprinting the schema without them gives the standard value.
pub fn spec_fingerprint(schema_json: &str) -> [u8; 8] {
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
    let bytes = plain.fingerprint::<apache_avro::rabin::Rabin>().bytes;
    bytes.try_into().expect("a Rabin fingerprint has 8 bytes")
}

/// Hex of a fingerprint, for messages and docs.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes `T` with the current schema of its record type and decodes any known version.
pub struct Codec<T> {
    /// The current schema: what is written, and what every record read is resolved to.
    reader: Schema,
    /// Prefix of every record written: the single-object header or the registry framing.
    header: Vec<u8>,
    /// Writer schemas by single-object fingerprint: the current one and the history.
    by_fingerprint: HashMap<[u8; 8], Schema>,
    /// Writer schemas by registry id, as taught by [`Codec::learn`].
    by_id: HashMap<u32, Schema>,
    _record: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> Codec<T> {
    /// A codec writing single-object encoding.
    pub fn new(rt: &RecordType) -> Codec<T> {
        let reader = Schema::parse_str(rt.current).expect("the committed schema parses");
        let fp = spec_fingerprint(rt.current);
        let mut header = vec![0xC3, 0x01];
        header.extend_from_slice(&fp);
        let mut by_fingerprint = HashMap::from([(fp, reader.clone())]);
        for old in rt.history {
            let schema = Schema::parse_str(old).expect("a committed historic schema parses");
            by_fingerprint.insert(spec_fingerprint(old), schema);
        }
        Codec {
            reader,
            header,
            by_fingerprint,
            by_id: HashMap::new(),
            _record: PhantomData,
        }
    }

    /// A codec writing the Confluent wire format under the current schema's registry `id`.
    pub fn registered(rt: &RecordType, id: u32) -> Codec<T> {
        let mut c = Codec::new(rt);
        c.header = vec![0x00];
        c.header.extend_from_slice(&id.to_be_bytes());
        c.by_id.insert(id, c.reader.clone());
        c
    }

    /// Teaches the codec the schema behind a registry id.
    pub fn learn(&mut self, id: u32, schema_json: &str) -> Result<(), CodecError> {
        let schema = Schema::parse_str(schema_json).map_err(avro_err)?;
        self.by_id.insert(id, schema);
        Ok(())
    }

    /// Serialises straight into the schema's binary encoding, refusing a value the schema does
    /// not allow (e.g. an unknown enum symbol).
    pub fn encode(&self, record: &T) -> Result<Vec<u8>, CodecError> {
        let mut out = self.header.clone();
        write_avro_datum_ref(&self.reader, record, &mut out).map_err(avro_err)?;
        Ok(out)
    }

    /// [`Codec::encode`] through apache-avro's generic `Value` tree: about 10× slower, kept as
    /// the reference the direct path is checked against.
    pub fn encode_via_value(&self, record: &T) -> Result<Vec<u8>, CodecError> {
        let value = to_value(record)
            .map_err(avro_err)?
            .resolve(&self.reader)
            .map_err(avro_err)?;
        let mut out = self.header.clone();
        out.extend(to_avro_datum(&self.reader, value).map_err(avro_err)?);
        Ok(out)
    }

    pub fn decode(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (writer, mut datum) = match bytes {
            [0xC3, 0x01, a, b, c, d, e, f, g, h, rest @ ..] => {
                let fp = [*a, *b, *c, *d, *e, *f, *g, *h];
                let w = self
                    .by_fingerprint
                    .get(&fp)
                    .ok_or_else(|| CodecError::UnknownSchema(hex(&fp)))?;
                (w, rest)
            }
            [0x00, a, b, c, d, rest @ ..] => {
                let id = u32::from_be_bytes([*a, *b, *c, *d]);
                let w = self
                    .by_id
                    .get(&id)
                    .ok_or(CodecError::UnknownRegistryId(id))?;
                (w, rest)
            }
            _ => return Err(CodecError::NotAvro),
        };
        super::bounds::check(writer, datum).map_err(CodecError::Malformed)?;
        let value = from_avro_datum(writer, &mut datum, Some(&self.reader)).map_err(avro_err)?;
        from_value(&value).map_err(avro_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_datum_claiming_more_than_it_holds_is_refused_not_allocated() {
        // Found by the avro_readers fuzz target: an observation whose map block claims billions
        // of entries made apache-avro reserve 43 GB and abort.
        let crash = [
            195u8, 1, 154, 194, 228, 66, 157, 15, 78, 252, 2, 120, 2, 120, 0, 88, 0, 0, 0, 0, 0, 0,
            0, 2, 2, 2, 2, 2, 251, 255, 255, 255, 2, 2, 2, 120, 0, 0, 0, 2, 0, 120, 2, 120, 18, 2,
            2, 2, 120, 0, 99, 63, 247,
        ];
        let codec: Codec<crate::contract::Observation> = Codec::new(&OBSERVATION);
        assert!(matches!(
            codec.decode(&crash),
            Err(CodecError::Malformed(_))
        ));
    }
    use apache_avro::schema_compatibility::SchemaCompatibility;

    #[test]
    fn every_schema_reads_every_earlier_version() {
        // BACKWARD, transitively: a consumer on the current schema reads anything still on the
        // topics. The data-level check is in `events::tests` and tests/episodes.rs (fastavro).
        for rt in RECORD_TYPES {
            let current = Schema::parse_str(rt.current).unwrap();
            for (v, old) in rt.history.iter().enumerate() {
                let writer = Schema::parse_str(old).unwrap();
                SchemaCompatibility::can_read(&writer, &current).unwrap_or_else(|e| {
                    panic!(
                        "schemas/{}.avsc cannot read version {} (schemas/history): {e}",
                        rt.name,
                        v + 1
                    )
                });
            }
        }
    }

    #[test]
    fn schema_changes_keep_their_history() {
        // Changing a schema changes its fingerprint: this test then fails until the previous
        // version is saved in schemas/history/ and the pinned fingerprint below is updated.
        let pinned = [
            ("violation_event", "f77aa5f1610749ee"),
            ("observation", "9ac2e4429d0f4efc"),
            ("acknowledgement", "2e8af05d5d4ae3cf"),
        ];
        for rt in RECORD_TYPES {
            let (_, want) = pinned.iter().find(|(n, _)| *n == rt.name).unwrap();
            assert_eq!(
                hex(&spec_fingerprint(rt.current)),
                *want,
                "schemas/{}.avsc changed: save the previous version in schemas/history/, check \
                 that the change follows schemas/README.md, then pin the new fingerprint",
                rt.name
            );
            let mut seen = std::collections::HashSet::new();
            for s in rt.history.iter().chain([&rt.current]) {
                assert!(
                    seen.insert(spec_fingerprint(s)),
                    "{}: a version repeats",
                    rt.name
                );
            }
        }
    }

    #[test]
    fn foreign_bytes_are_refused() {
        let c: Codec<serde_json::Value> = Codec::new(&OBSERVATION);
        assert!(matches!(
            c.decode(b"{\"json\": 1}"),
            Err(CodecError::NotAvro)
        ));
        assert!(matches!(c.decode(b""), Err(CodecError::NotAvro)));
        assert!(matches!(
            c.decode(&[0xC3, 0x01, 1, 2, 3, 4, 5, 6, 7, 8, 0]),
            Err(CodecError::UnknownSchema(_))
        ));
        assert!(matches!(
            c.decode(&[0, 0, 0, 0, 7, 1]),
            Err(CodecError::UnknownRegistryId(7))
        ));
    }
}
