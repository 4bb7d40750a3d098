//! The episodes stage: per-frame verdicts smoothed over event time into violation episodes.
//!
//! - [`machine`]: the smoother and episode state machine of one (camera, rule); pure;
//! - [`cameras`]: which site owns each camera id, and the partition clock; pure;
//! - [`book`]: those cameras for every assigned partition, and the state records a frame
//!   changes;
//! - [`store`]: the state of every (site, camera, rule) of the assigned partitions, and the
//!   versioned state records; pure;
//! - [`judge`]: the stage that applies observations in frame order and builds the events.

pub mod book;
pub mod cameras;
pub mod judge;
pub mod machine;
pub mod store;

pub use judge::Judge;
pub use machine::{episode_id, EpisodeState, Event, Phase, Sample};
pub use store::{StateStore, StoredState};
