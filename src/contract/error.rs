//! Errors that cross stage boundaries, each saying whose fault it is (the domain), so that the
//! operator reading the worker's last line knows whether to fix a setting, look at the broker,
//! or report a defect.
//!
//! A problem with one record is a [`Rejection`](super::Rejection) and becomes a dead letter. A
//! [`StageError`] is about the stage itself and stops the worker: its frames in flight are not
//! committed and are read again by the next owner. Transient trouble never becomes one; it is
//! waited out where it happens (the worker's producers retry without a time limit, consumer
//! transport errors are counted and polling goes on, restores are tried again).

use std::fmt;

/// Whose fault an error is (after arroyo's `ErrorDomain`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// Configuration or input the operator controls: fix it and restart.
    User,
    /// A system outside the worker (broker, registry, webhook): it may recover by itself.
    External,
    /// A defect or broken invariant in vigil.
    Internal,
}

/// A stage could not go on; the worker stops.
#[derive(Debug)]
pub struct StageError {
    /// The stage that failed (`decode`, `model:mask`, `sink`, `restore`…).
    pub stage: String,
    pub domain: Domain,
    /// What happened, in words, naming the frame, partition or key concerned.
    pub message: String,
}

impl StageError {
    /// An error that stops the worker.
    pub fn stop(stage: impl Into<String>, domain: Domain, message: impl Into<String>) -> Self {
        StageError {
            stage: stage.into(),
            domain,
            message: message.into(),
        }
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({} error): {}",
            self.stage, self.domain, self.message
        )
    }
}

impl std::error::Error for StageError {}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Domain::User => "user",
            Domain::External => "external",
            Domain::Internal => "internal",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_says_whose_fault_it_is() {
        let e = StageError::stop("restore", Domain::External, "timed out reading vigil.state");
        assert_eq!(
            e.to_string(),
            "restore (external error): timed out reading vigil.state"
        );
    }
}
