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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::avro::{Codec, OBSERVATION};

    fn sample() -> Observation {
        Observation {
            camera: "cam-0001".into(),
            site: "site-001".into(),
            zone: Some("kitchen".into()),
            captured_at_ms: 1_700_000_000_123,
            seq: 42,
            frame: FrameSize {
                width: 1280,
                height: 720,
                decoded_width: 640,
                decoded_height: 360,
            },
            rules: vec![
                RuleResult {
                    rule: "mask_required".into(),
                    verdict: Verdict::Violation,
                    reason: None,
                    level: Some(0.93),
                    detections: 2,
                },
                RuleResult {
                    rule: "hairnet".into(),
                    verdict: Verdict::Unknown,
                    reason: Some("no_detection".into()),
                    level: None,
                    detections: 0,
                },
            ],
            detections: vec![DetectionResult {
                rule: "mask_required".into(),
                detector: "face-blazeface".into(),
                score: 0.88,
                bbox: [0.1, 0.2, 0.3, 0.4],
                classifier: "mask".into(),
                label: "no_mask".into(),
                scores: BTreeMap::from([("mask".into(), 0.07), ("no_mask".into(), 0.93)]),
            }],
            classifications: vec![Classification {
                model: "brightness".into(),
                label: "dark".into(),
                scores: BTreeMap::from([("dark".into(), 1.0)]),
            }],
            models: vec![ModelRef {
                name: "mask".into(),
                version: "1".into(),
                provider: "CPUExecutionProvider".into(),
            }],
            timings: Timings {
                decode_ms: 1.5,
                preprocess_ms: 0.25,
                crop_ms: 0.125,
                stages: vec![StageTiming {
                    model: "mask".into(),
                    inference_ms: 12.0,
                    batch_size: 9,
                    batch_wait_ms: 3.5,
                }],
                total_ms: 20.0,
            },
            source: SourceRef {
                topic: "vigil.frames".into(),
                partition: 3,
                offset: 99,
            },
            worker: "w1".into(),
            processed_at_ms: 1_700_000_000_456,
        }
    }

    #[test]
    fn observations_round_trip_in_both_framings() {
        for codec in [Codec::new(&OBSERVATION), Codec::registered(&OBSERVATION, 7)] {
            let bytes = codec.encode(&sample()).unwrap();
            assert_eq!(codec.decode(&bytes).unwrap(), sample());
            // The reference path writes the same record (map entries may come in another order).
            let reference = codec.encode_via_value(&sample()).unwrap();
            assert_eq!(codec.decode(&reference).unwrap(), sample());
        }
    }
}
