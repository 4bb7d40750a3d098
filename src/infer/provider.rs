//! Execution providers: which ONNX Runtime backend a model's session runs on (CPU always; CUDA
//! or TensorRT in a binary built with `--features cuda`), and why the one asked for is not
//! there (the model loader names the model in its error).

#[cfg(not(feature = "cuda"))]
use ort::ep::ExecutionProvider;

/// Which execution provider to ask ONNX Runtime for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// CPU only.
    Cpu,
    /// CUDA; a start-up error if it cannot be used.
    Cuda,
    /// TensorRT (with CUDA as its fallback for unsupported nodes); a start-up error if unusable.
    Tensorrt,
    /// The best one that works: TensorRT, CUDA, then CPU.
    Auto,
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Device::Cpu => "cpu",
            Device::Cuda => "cuda",
            Device::Tensorrt => "tensorrt",
            Device::Auto => "auto",
        })
    }
}

/// A device this binary or machine cannot give a model.
#[derive(Debug)]
pub struct Unavailable {
    pub device: Device,
    pub message: String,
}

/// ONNX Runtime's name for its CPU execution provider, as `register` returns it.
pub const CPU: &str = "CPUExecutionProvider";

/// Registers the execution provider for `device` and returns the name of the one that will run.
pub(crate) fn register(
    builder: &mut ort::session::builder::SessionBuilder,
    device: Device,
    model: &str,
) -> Result<&'static str, Unavailable> {
    match device {
        Device::Cpu => Ok(CPU),
        #[cfg(feature = "cuda")]
        Device::Cuda | Device::Tensorrt | Device::Auto => gpu::register(builder, device, model),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda | Device::Tensorrt => {
            let _ = builder;
            let _ = model;
            Err(Unavailable {
                device,
                message: "this vigil binary was built without GPU support; rebuild with \
                          `--features cuda` and load the onnxruntime-gpu library"
                    .into(),
            })
        }
        #[cfg(not(feature = "cuda"))]
        Device::Auto => {
            let _ = ort::ep::CPU::is_available();
            Ok(CPU)
        }
    }
}

#[cfg(feature = "cuda")]
mod gpu {
    use super::{Device, Unavailable, CPU};
    use ort::ep::ExecutionProvider;

    pub(super) fn register(
        builder: &mut ort::session::builder::SessionBuilder,
        device: Device,
        model: &str,
    ) -> Result<&'static str, Unavailable> {
        if matches!(device, Device::Tensorrt | Device::Auto) {
            let trt = ort::ep::TensorRT::default();
            match trt.register(builder) {
                Ok(()) => return Ok("TensorrtExecutionProvider"),
                Err(e) if device == Device::Tensorrt => {
                    return Err(Unavailable {
                        device,
                        message: e.to_string(),
                    })
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
            Err(e) => Err(Unavailable {
                device,
                message: e.to_string(),
            }),
        }
    }
}
