//! Execution providers: which ONNX Runtime backend a model's session runs on (CPU always; CUDA
//! or TensorRT in a binary built with `--features cuda`), and the error that names the model
//! when the one asked for is not there.

use super::model::{Device, ModelError};
#[cfg(not(feature = "cuda"))]
use ort::ep::ExecutionProvider;

/// ONNX Runtime's name for its CPU execution provider, as `register` returns it.
pub const CPU: &str = "CPUExecutionProvider";

/// Registers the execution provider for `device` and returns the name of the one that will run.
pub(crate) fn register(
    builder: &mut ort::session::builder::SessionBuilder,
    device: Device,
    model: &str,
) -> Result<&'static str, ModelError> {
    match device {
        Device::Cpu => Ok(CPU),
        #[cfg(feature = "cuda")]
        Device::Cuda | Device::Tensorrt | Device::Auto => gpu::register(builder, device, model),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda | Device::Tensorrt => {
            let _ = builder;
            Err(unavailable(
                model,
                device,
                "this vigil binary was built without GPU support; rebuild with `--features cuda` \
                 and load the onnxruntime-gpu library"
                    .into(),
            ))
        }
        #[cfg(not(feature = "cuda"))]
        Device::Auto => {
            let _ = ort::ep::CPU::is_available();
            Ok(CPU)
        }
    }
}

/// The error for a device this binary or machine cannot give `model`.
fn unavailable(model: &str, device: Device, message: String) -> ModelError {
    ModelError::Device {
        model: model.to_string(),
        device,
        message,
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::{unavailable, Device, ModelError, CPU};
    use ort::ep::ExecutionProvider;

    pub(super) fn register(
        builder: &mut ort::session::builder::SessionBuilder,
        device: Device,
        model: &str,
    ) -> Result<&'static str, ModelError> {
        if matches!(device, Device::Tensorrt | Device::Auto) {
            let trt = ort::ep::TensorRT::default();
            match trt.register(builder) {
                Ok(()) => return Ok("TensorrtExecutionProvider"),
                Err(e) if device == Device::Tensorrt => {
                    return Err(unavailable(model, device, e.to_string()))
                }
                Err(e) => tracing::info!(model, error = %e, "tensorrt unavailable, trying cuda"),
            }
        }
        let cuda = ort::ep::CUDA::default();
        match cuda.register(builder) {
            Ok(()) => Ok("CUDAExecutionProvider"),
            Err(e) if device == Device::Auto => {
                tracing::warn!(model, error = %e, "cuda unavailable, running on cpu");
                Ok(CPU)
            }
            Err(e) => Err(unavailable(model, device, e.to_string())),
        }
    }
}
