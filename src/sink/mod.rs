//! The sink stage: every frame's outcome published, and its offset released only once the
//! broker has acknowledged it.
//!
//! - [`produce`]: an outcome's records (observation and events, then state; or a dead letter);
//! - [`emit`]: the emitter task that produces outcomes, completes frames and checkpoints;
//! - [`checkpoint`]: delivered frames' state, written in offset order before offsets are stored;
//! - [`restore`]: episode state read back from the state topic on assignment;
//! - [`replay`]: how the previous owner admitted the frames that will be read again.

pub mod checkpoint;
pub mod emit;
pub mod produce;
pub mod replay;
pub mod restore;

pub use checkpoint::Checkpoints;
pub use emit::Emitter;
pub use produce::{Delivery, DeliveryError, Sink, Topics};
pub use restore::restore;
