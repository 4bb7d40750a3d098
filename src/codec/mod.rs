//! Record encodings: Avro ([`avro`]: single-object encoding or the Confluent wire format) and
//! the schema [`registry`] client (over [`crate::http`]).

pub mod avro;
pub mod bounds;
pub mod registry;

use crate::contract::{Observation, ViolationEvent};
use avro::{Codec, OBSERVATION, VIOLATION_EVENT};

/// Reads and writes violation events.
pub type EventCodec = Codec<ViolationEvent>;

/// The violation-event codec in single-object encoding.
pub fn event_codec() -> EventCodec {
    Codec::new(&VIOLATION_EVENT)
}

/// The Avro writers of a worker's two record types.
pub struct Codecs {
    pub observations: Codec<Observation>,
    pub events: EventCodec,
}

impl Codecs {
    /// Single-object encoding, for a worker without a schema registry.
    pub fn single_object() -> Codecs {
        Codecs {
            observations: Codec::new(&OBSERVATION),
            events: event_codec(),
        }
    }
}
