//! The Avro readers `vigil tail` and `vigil alerts` run on every record they consume: a record
//! decodes or is refused, never a panic; what decodes can be described and encoded again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil::codec::avro::{Codec, OBSERVATION, VIOLATION_EVENT};
use vigil::contract::{Observation, ViolationEvent};

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static CODECS: (Codec<ViolationEvent>, Codec<Observation>) =
            (Codec::new(&VIOLATION_EVENT), Codec::new(&OBSERVATION));
    }
    CODECS.with(|(events, observations)| {
        if let Ok(e) = events.decode(data) {
            let _ = vigil::commands::alerts::describe(&e);
            let _ = events.encode(&e);
        }
        if let Ok(o) = observations.decode(data) {
            let _ = vigil::commands::tail::describe_observation(Ok(o.clone()), data.len(), 0, 0);
            let _ = observations.encode(&o);
        }
    });
});
