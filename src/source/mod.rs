//! The source stage: frame records in from the frames topic.
//!
//! - [`consumer`]: the group consumer on a thread of its own;
//! - [`rebalance`]: its callbacks, on that thread: rebalances drain, commit and restore there,
//!   never on the async runtime;
//! - [`offsets`] (pure) and [`inflight`]: which offsets may be committed;
//! - [`intake`]: the checks made before a decode is spent on a frame.

pub mod consumer;
pub mod inflight;
pub mod intake;
pub mod offsets;
pub mod rebalance;

pub use consumer::{start, Acknowledger, Record, Source, SourceConfig};
pub use intake::validate;
pub use offsets::OffsetTracker;
pub use rebalance::{commit_stored, PartitionHooks};
