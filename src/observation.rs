//! The per-frame result a worker publishes to the observations topic (JSON, keyed by camera).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One frame's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub camera: String,
    pub site: String,
    pub zone: Option<String>,
    /// Event time: when the camera captured the frame (epoch ms).
    pub captured_at_ms: i64,
    /// Gateway sequence number of the frame for its camera.
    pub seq: u64,
    pub frame: FrameSize,
    pub model: ModelRef,
    /// Highest-scoring label.
    pub label: String,
    /// Score per label.
    pub scores: BTreeMap<String, f32>,
    pub timings: Timings,
    /// Where the frame was read from: the key to replay or audit it.
    pub source: SourceRef,
    /// Worker that produced this observation.
    pub worker: String,
    /// When the worker finished inference (epoch ms).
    pub processed_at_ms: i64,
}

/// Frame dimensions as sent and as decoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameSize {
    pub width: u32,
    pub height: u32,
    /// Dimensions after reduced-size decoding.
    pub decoded_width: u32,
    pub decoded_height: u32,
}

/// Which model produced the scores, and where it ran.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
    pub provider: String,
}

/// Time spent per stage, in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub decode_ms: f64,
    pub preprocess_ms: f64,
    /// Duration of the model run this frame was part of.
    pub inference_ms: f64,
    /// Items in that run.
    pub batch_size: usize,
    /// Time the frame waited for its batch to start.
    pub batch_wait_ms: f64,
}

/// Kafka coordinates of the frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
