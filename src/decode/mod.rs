//! The decode stage: JPEG bytes to model input tensors. Blocking OpenCV work runs on the blocking
//! pool, never on the async runtime.
//!
//! - [`spec`]: what a model's input tensor must look like (from its manifest);
//! - [`image`]: decoding (at a reduced size where the models allow), letterboxing, tensors;
//! - [`stage`]: the per-frame job and the sequencer that restores read order.

pub mod image;
pub mod spec;
pub mod stage;

pub use image::{decode, encode_jpeg, preprocess, reduction_factor, Letterbox};
pub use spec::{ChannelOrder, InputSpec, Layout, Resize};
pub use stage::{sequence, DecodeJob, Decoded, Decoder, Pending};
