//! The episodes stage: per-frame verdicts smoothed over event time into violation episodes.
//!
//! - [`machine`]: the smoother and episode state machine of one (camera, rule); pure;
//! - [`store`]: the state of every (camera, rule) of the assigned partitions; pure;
//! - [`judge`]: the stage that applies observations in frame order and builds the events.

pub mod judge;
pub mod machine;
pub mod store;

pub use judge::Judge;
pub use machine::{episode_id, EpisodeState, Event, Phase, Sample};
pub use store::{StateStore, StoredState};
