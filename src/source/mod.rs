//! The source stage: frame records in from the frames topic.
//!
//! - [`consumer`]: the group consumer on a thread of its own; rebalances drain, commit and
//!   restore there, never on the async runtime;
//! - [`offsets`] (pure) and [`inflight`]: which offsets may be committed;
//! - [`intake`]: the checks made before a decode is spent on a frame.

pub mod consumer;
pub mod inflight;
pub mod intake;
pub mod offsets;

pub use consumer::{
    commit_stored, start, Acknowledger, PartitionHooks, Record, Source, SourceConfig,
};
pub use intake::validate;
pub use offsets::OffsetTracker;
