//! What travels between the stages: where a frame came from, and what the sink publishes for it.

use tokio::sync::OwnedSemaphorePermit;

use super::event::ViolationEvent;
use super::observation::Observation;
use super::reject::Rejection;

/// Proof that a frame was registered as in flight, handed back on completion. The generation
/// stops a frame fetched before a partition was revoked and re-assigned from completing a frame
/// of the new assignment that happens to have the same offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub partition: i32,
    pub offset: i64,
    /// Assignment generation of the partition when the frame was read.
    pub(crate) generation: u64,
}

/// Where a frame came from, and its place in flight. Every stage passes it on untouched; the sink
/// hands it back once the frame's outcome is acknowledged.
pub struct Origin {
    /// The frame's partition and offset, for the offset tracker.
    pub ticket: Ticket,
    /// One of `max_in_flight` slots; released when the outcome is delivered (or dropped).
    _slot: OwnedSemaphorePermit,
    /// The frame's place on its partition's clock, set by the intake once the frame is
    /// accepted; the episodes judge silence by it.
    pub stamp: Option<Stamp>,
    /// State records the intake changed with this frame (its camera's record, tombstones of
    /// cameras gone silent), checkpointed with the frame's outcome whatever it is.
    pub states: Vec<StateRecord>,
}

impl Origin {
    pub fn new(ticket: Ticket, slot: OwnedSemaphorePermit) -> Origin {
        Origin {
            ticket,
            _slot: slot,
            stamp: None,
            states: Vec::new(),
        }
    }
}

/// A frame's place in time on its partition ([`crate::episodes::cameras`]), handed from the
/// intake to the episodes.
#[derive(Debug, Clone, PartialEq)]
pub struct Stamp {
    /// The partition clock after this frame.
    pub clock_ms: i64,
    /// Where this frame sits on the partition clock.
    pub mapped_ms: i64,
}

/// A frame record as read, kept whole until its outcome is known, so that a frame refused at
/// any stage is dead-lettered byte for byte.
pub struct RawFrame {
    /// The record key (camera id), as sent.
    pub key: Option<Vec<u8>>,
    /// The record headers, in order; names decoded lossily.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The record value (JPEG bytes).
    pub payload: Vec<u8>,
}

/// A frame that failed a check, with everything needed to dead-letter it unchanged.
pub struct DeadLetter {
    pub origin: Origin,
    pub raw: RawFrame,
    /// Why it was refused (the `reason` and `reason_detail` headers).
    pub rejection: Rejection,
}

/// A state-topic record: one (site, camera, rule)'s episode state, or one camera's record,
/// serialised by the intake or the episodes stage.
#[derive(Debug, Clone, PartialEq)]
pub struct StateRecord {
    /// Unique per entry, so compaction keeps the latest of each.
    pub key: String,
    /// The serialised state (JSON); `None` is a tombstone (the entry was evicted).
    pub value: Option<Vec<u8>>,
}

/// A frame's observation with the episode events and state changes it caused.
pub struct Judged {
    pub obs: Observation,
    /// Events the frame raised, keyed by their camera when published.
    pub events: Vec<ViolationEvent>,
    /// State records, checkpointed once the observation and events are acknowledged.
    pub states: Vec<StateRecord>,
}

/// What the sink publishes for a frame: exactly one of these per frame read.
pub enum Outcome {
    Observation(Origin, Box<Judged>),
    DeadLetter(Box<DeadLetter>),
}

impl Outcome {
    /// The frame this outcome settles.
    pub fn origin(&self) -> &Origin {
        match self {
            Outcome::Observation(o, _) => o,
            Outcome::DeadLetter(d) => &d.origin,
        }
    }
}

/// A frame's observation, on its way from the infer stage to the episodes stage.
pub struct Observed {
    pub origin: Origin,
    pub obs: Box<Observation>,
    /// The decoded frame, when it was kept (for crops, or for evidence pictures).
    pub image: Option<std::sync::Arc<opencv::core::Mat>>,
}
