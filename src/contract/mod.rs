//! The leaf vocabulary every stage speaks; it depends on no other module of vigil.
//!
//! - [`frame`]: the frame contract (headers, [`FrameMeta`], [`Limits`]) and header parsing;
//! - [`jpeg`]: the JPEG structure a frame value must have, read without decoding;
//! - [`reject`]: why a frame is dead-lettered ([`Reason`], [`Rejection`]);
//! - [`envelope`]: what travels between stages ([`Origin`], [`Outcome`], [`DeadLetter`]…);
//! - [`observation`] and [`event`]: the records published (observations, violation events);
//! - [`camera_status`]: a site gateway's word that a camera went down or came back;
//! - [`error`]: errors that cross stages, with whose fault they are.

pub mod camera_status;
pub mod envelope;
pub mod error;
pub mod event;
pub mod frame;
pub mod jpeg;
pub mod observation;
pub mod reject;

pub use camera_status::StatusRecord;
pub use envelope::{
    DeadLetter, Judged, Observed, Origin, Outcome, RawFrame, Stamp, StateRecord, Ticket,
};
pub use error::{Domain, StageError};
pub use event::{EventKind, EvidenceRef, ModelVersion, Severity, ViolationEvent};
pub use frame::{
    admission, header, parse_meta, FrameMeta, Limits, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_PIXELS,
};
pub use observation::{now_ms, Observation, Verdict};
pub use reject::{Reason, Rejection};
