//! Errors that cross stage boundaries. Each says whose fault it is (the domain) and what the
//! pipeline does about it (the disposition), so that a stage never decides by parsing text.
//!
//! A problem with one record is a [`Rejection`](super::Rejection) and becomes a dead letter; a
//! [`StageError`] is about the stage itself and is either waited out or stops the worker (its
//! frames are then not committed and are read again by the next owner).

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

/// What the pipeline does with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Wait and try again; the offset is kept.
    Retry,
    /// Stop the worker without committing what is in flight.
    Stop,
}

/// A stage could not go on.
#[derive(Debug)]
pub struct StageError {
    /// The stage that failed (`decode`, `model:mask`, `sink`, `restore`…).
    pub stage: String,
    pub domain: Domain,
    pub disposition: Disposition,
    /// What happened, in words, naming the frame, partition or key concerned.
    pub message: String,
}

impl StageError {
    /// An error that stops the worker.
    pub fn stop(stage: impl Into<String>, domain: Domain, message: impl Into<String>) -> Self {
        StageError {
            stage: stage.into(),
            domain,
            disposition: Disposition::Stop,
            message: message.into(),
        }
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.stage, self.message)
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
