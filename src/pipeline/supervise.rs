//! Stage supervision: a stage that fails or panics stops the worker (through the fatal channel)
//! instead of leaving its frames in flight forever; they are not committed and are read again.
//! What the brokers' absence makes fail is retried instead ([`wait_out`]): only what waiting
//! cannot cure stops the worker.

use std::future::Future;
use std::time::{Duration, Instant};

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

/// First wait before a failed attempt is made again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between attempts.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Makes `attempt` until it succeeds, waiting out the trouble of systems outside the worker: an
/// error of the external domain (brokers away, a time-out, a rebalance under way) is tried again
/// after a wait (1 s, doubling to 30 s); an error of any other domain (a record that cannot be
/// read, a setting) is returned at once, and so is the last one when `give_up` says so (the
/// worker stops). Logged when the trouble begins and when it ends, not at each attempt.
/// Blocking: for the consumer thread.
pub fn wait_out<T>(
    what: &str,
    mut attempt: impl FnMut() -> Result<T, StageError>,
    give_up: impl Fn() -> bool,
) -> Result<T, StageError> {
    let started = Instant::now();
    let mut wait = RETRY_FIRST;
    let mut failures = 0u32;
    loop {
        match attempt() {
            Ok(v) => {
                if failures > 0 {
                    tracing::info!(
                        what,
                        attempts = failures + 1,
                        waited_s = format!("{:.1}", started.elapsed().as_secs_f64()),
                        "succeeded after waiting"
                    );
                }
                return Ok(v);
            }
            Err(e) if e.domain != Domain::External => return Err(e),
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(what, error = %e, "failed; trying again until it succeeds");
                } else {
                    tracing::debug!(what, error = %e, attempt = failures, "failed again");
                }
                let until = Instant::now() + wait;
                while Instant::now() < until {
                    if give_up() {
                        return Err(e);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_trouble_is_tried_again_and_the_rest_is_not() {
        let mut calls = 0;
        let got = wait_out(
            "restore",
            || {
                calls += 1;
                if calls < 2 {
                    Err(StageError::stop("restore", Domain::External, "timed out"))
                } else {
                    Ok(calls)
                }
            },
            || false,
        );
        assert_eq!(got.unwrap(), 2, "a failure waited out");

        let mut calls = 0;
        let err = wait_out(
            "restore",
            || -> Result<(), StageError> {
                calls += 1;
                Err(StageError::stop(
                    "restore",
                    Domain::Internal,
                    "unreadable state record",
                ))
            },
            || false,
        )
        .unwrap_err();
        assert_eq!(
            (calls, err.domain),
            (1, Domain::Internal),
            "not tried again"
        );

        let err = wait_out(
            "restore",
            || -> Result<(), StageError> {
                Err(StageError::stop("restore", Domain::External, "timed out"))
            },
            || true,
        )
        .unwrap_err();
        assert_eq!(err.message, "timed out", "given up when the worker stops");
    }
}
