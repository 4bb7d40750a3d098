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
    /// Outcome of each rule that applies to this camera (empty: observed, never a violation).
    pub rules: Vec<RuleResult>,
    /// Detections kept by the rules, with their crop's class scores.
    pub detections: Vec<DetectionResult>,
    /// Whole-frame classifier results.
    pub classifications: Vec<Classification>,
    /// Every model that ran on this frame.
    pub models: Vec<ModelRef>,
    pub timings: Timings,
    /// Where the frame was read from: the key to replay or audit it.
    pub source: SourceRef,
    /// Worker that produced this observation.
    pub worker: String,
    /// When the worker finished with the frame (epoch ms).
    pub processed_at_ms: i64,
}

/// What a rule concluded for one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Compliant,
    Violation,
    /// No evidence either way (e.g. no face found): counts as neither.
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Compliant => "compliant",
            Verdict::Violation => "violation",
            Verdict::Unknown => "unknown",
        }
    }
}

/// One rule's result on one frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleResult {
    pub rule: String,
    pub verdict: Verdict,
    /// Why the verdict is unknown (`no_detection`), if it is.
    pub reason: Option<String>,
    /// Strength of the violation evidence, 0..1: the highest violation-label score among the
    /// crops (or of the whole frame); `None` when there was no evidence.
    pub level: Option<f32>,
    /// Detections the rule classified.
    pub detections: usize,
}

/// A detection and what the rule's classifier said about its crop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionResult {
    pub rule: String,
    pub detector: String,
    pub score: f32,
    /// `[x1, y1, x2, y2]`, normalised to the frame.
    pub bbox: [f32; 4],
    pub classifier: String,
    /// Top label of the crop.
    pub label: String,
    pub scores: BTreeMap<String, f32>,
}

/// A whole-frame classifier's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub model: String,
    pub label: String,
    pub scores: BTreeMap<String, f32>,
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
    /// Whole-frame preprocessing for every model the frame feeds.
    pub preprocess_ms: f64,
    /// Crop extraction and preprocessing.
    pub crop_ms: f64,
    /// One entry per model run the frame took part in.
    pub stages: Vec<StageTiming>,
    /// From decoded to fully evaluated.
    pub total_ms: f64,
}

/// One model run a frame was part of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    pub model: String,
    pub inference_ms: f64,
    /// Items in that run (frames or crops, possibly from many cameras).
    pub batch_size: usize,
    /// Time the item waited for its batch to start.
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
