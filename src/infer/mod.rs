//! The infer stage: rules planned per frame, ONNX models run in batches across cameras, and a
//! detector → classifier cascade over each detection's crop.
//!
//! - [`plan`]: the rules compiled against the loaded models; per frame, which rules and models;
//! - [`model`] (loaded through [`runtime`]): manifests and one ONNX Runtime session per model,
//!   on the execution provider `provider` picks (CPU, or CUDA / TensorRT with `--features cuda`);
//! - [`batcher`]: when a model's batch is run (size or deadline);
//! - [`cascade`]: which detections are kept and cropped, and the verdict from their scores;
//! - [`stage`]: the model tasks; `collect`: routing and crops; `observe`: the observation;
//!   `frame`: what they share (settings, a frame in flight, their messages);
//! - [`shed`] (pure): which stale frames are skipped when the worker falls behind;
//! - [`track`] (pure): which crops need the classifier, and which reuse a track's scores.

pub mod batcher;
pub mod cascade;
mod collect;
mod debug;
mod frame;
pub mod model;
mod observe;
pub mod plan;
mod provider;
pub mod runtime;
pub mod shed;
pub mod stage;
pub mod track;

pub use batcher::{BatchPolicy, BatchSettings, Batcher};
pub use plan::{FramePlan, ModelInfo, PlanError, Planner};
pub use stage::{start, DebugImages, Infer, InferStage, StageTask};
