//! Stage supervision: a stage that fails or panics stops the worker (through the fatal channel)
//! instead of leaving its frames in flight forever; they are not committed and are read again.

use std::future::Future;

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::contract::{Domain, StageError};

/// Spawns a stage; its error, or its panic, is reported on `fatal`.
pub fn spawn_stage(
    name: impl Into<String>,
    fatal: mpsc::Sender<StageError>,
    stage: impl Future<Output = Result<(), StageError>> + Send + 'static,
) -> JoinHandle<()> {
    let name = name.into();
    tokio::spawn(async move {
        let error = match std::panic::AssertUnwindSafe(stage).catch_unwind().await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => e,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                tracing::error!(stage = %name, panic = %what, "pipeline stage panicked; stopping the worker");
                StageError::stop(name, Domain::Internal, format!("panicked: {what}"))
            }
        };
        let _ = fatal.send(error).await;
    })
}

/// Spawns a stage that cannot fail (only panic).
pub fn spawn_infallible(
    name: impl Into<String>,
    fatal: mpsc::Sender<StageError>,
    stage: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    spawn_stage(name, fatal, stage.map(Ok))
}
