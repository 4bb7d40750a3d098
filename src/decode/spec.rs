//! What a model needs its input tensor to look like (from its manifest's `[input]` table): the
//! decode stage builds tensors to this spec.

use serde::Deserialize;

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Layout {
    NCHW,
    NHWC,
}

/// Channel order the model expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ChannelOrder {
    RGB,
    BGR,
}

/// How an image is fitted to the input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Resized to the input size, aspect ratio ignored.
    #[default]
    Stretch,
    /// Resized keeping the aspect ratio, centred, the rest padded with black; a detector's
    /// boxes are mapped back to the frame.
    Letterbox,
}

/// How to build the input tensor from an image.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Input tensor name in the ONNX graph.
    pub name: String,
    /// Width the image is resized to.
    pub width: u32,
    /// Height the image is resized to.
    pub height: u32,
    pub layout: Layout,
    pub channels: ChannelOrder,
    /// Per-channel value subtracted from each 0–255 pixel, in the model's channel order.
    pub mean: [f32; 3],
    /// Per-channel divisor applied after the mean: value = (pixel − mean) / std.
    pub std: [f32; 3],
    /// How the image is fitted to width × height.
    #[serde(default)]
    pub resize: Resize,
}
