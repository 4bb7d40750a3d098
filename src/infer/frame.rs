//! What the infer stage's parts share: its fixed settings ([`Infer`]), a frame on its way
//! through the models ([`InFrame`]), and the messages between the collector and the model tasks
//! ([`InferItem`], [`Reply`]). The parts depend on this module, and this module on none of
//! them: the model tasks (`stage`) start the collector (`collect`), which hands finished frames
//! to `observe`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opencv::core::Mat;

use super::model::{Detection, ModelOutput};
use super::plan::{FramePlan, Planner};
use super::shed::{Admission, Shedder};
use super::track::TrackPolicy;
use crate::contract::observation::{FrameSize, StageTiming};
use crate::contract::{FrameMeta, Origin};
use crate::telemetry::Metrics;

#[derive(Debug, Clone)]
pub struct DebugImages {
    pub dir: PathBuf,
    /// Cameras whose frames are drawn.
    pub cameras: Vec<String>,
}

/// What the infer stage's tasks share, fixed at start-up.
pub struct Infer {
    pub planner: Arc<Planner>,
    pub metrics: Arc<Metrics>,
    /// Named in each observation's source reference.
    pub frames_topic: String,
    /// Written into each observation.
    pub worker_id: String,
    pub debug: Option<DebugImages>,
    /// Load shedding: which stale frames are skipped (shared with the intake).
    pub shedder: Arc<Mutex<Shedder>>,
    /// When a tracked detection's crop is classified again (`--reclassify-every`).
    pub track: TrackPolicy,
    /// Permits for model runs at once across the models (`--concurrent-runs`); `None`: no
    /// limit.
    pub run_slots: Option<Arc<tokio::sync::Semaphore>>,
}

/// Which part of a frame a model input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Whole,
    /// The whole frame again, shrunk into the detector's input: a close-up searched again
    /// ([`super::cascade::closeup_canvas`]).
    Closeup,
    /// Crop of detection `det` kept by rule `rule`.
    Crop {
        rule: usize,
        det: usize,
    },
}

/// One input queued for a model.
pub(crate) struct InferItem {
    pub(crate) frame: u64,
    pub(crate) slot: Slot,
    pub(crate) tensor: Vec<f32>,
    pub(crate) queued_at: Instant,
    /// Whole-frame items: the frame's load-shedding decision, made just before its first run.
    pub(crate) admission: Option<Arc<Admission>>,
}

/// What comes back to the collector.
pub(crate) enum Reply {
    Model {
        model: usize,
        frame: u64,
        slot: Slot,
        output: ModelOutput,
        timing: StageTiming,
    },
    /// A close-up's canvas for detector `model`, ready for it (`None`: it could not be made;
    /// the rules searching again keep nothing).
    Closeup {
        frame: u64,
        model: usize,
        tensor: Option<Vec<f32>>,
    },
    /// The frame was skipped by load shedding before this model ran it.
    Skipped { frame: u64 },
    /// A crop job's cut crops; `attempted` are every crop it was to cut (a frame with two
    /// detectors, faces and hands, has a job per detector).
    Crops {
        frame: u64,
        items: Vec<(usize, Slot, Vec<f32>)>,
        attempted: Vec<Slot>,
        crop_ms: f64,
    },
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A frame between decode and its observation.
pub(crate) struct InFrame {
    pub(crate) origin: Origin,
    pub(crate) meta: FrameMeta,
    pub(crate) size: FrameSize,
    pub(crate) plan: FramePlan,
    pub(crate) image: Option<Arc<Mat>>,
    /// Model replies and crop jobs still to come.
    pub(crate) outstanding: usize,
    /// Detections each detector rule (cascade or presence) kept, by rule.
    pub(crate) kept: HashMap<usize, Vec<Detection>>,
    /// Crop scores by (rule, detection index).
    pub(crate) crop_scores: HashMap<(usize, usize), Vec<f32>>,
    /// Track of each crop sent to a classifier, by (rule, detection index).
    pub(crate) tracks: HashMap<(usize, usize), u64>,
    /// Close-ups searched again: by detector, the rules whose detections the second search
    /// decides.
    pub(crate) closeup: HashMap<usize, Vec<usize>>,
    /// Whole-frame classifier scores by model.
    pub(crate) whole_scores: HashMap<usize, Vec<f32>>,
    pub(crate) stages: Vec<StageTiming>,
    pub(crate) used_models: Vec<usize>,
    pub(crate) decode_ms: f64,
    pub(crate) preprocess_ms: f64,
    pub(crate) crop_ms: f64,
    pub(crate) started: Instant,
}
