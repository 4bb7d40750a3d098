//! The intake: what becomes of each record read, before a decode is spent on it. In the
//! partition's read order, one record at a time:
//!
//! 1. the structural checks ([`crate::source::validate`]): headers, event time, size, JPEG
//!    header, pixel budget;
//! 2. the camera book ([`CameraBook::admit`]): which site owns the camera, the frame's place
//!    on the partition clock, and which rules with a cadence (`every_secs`) are due on it;
//! 3. the plan ([`Planner`]): the rules that apply to the camera and the models they need, less
//!    the rules not due;
//! 4. load shedding ([`Shedder::skip_unread`]): a frame already hopelessly late is not decoded.
//!
//! A refusal becomes a dead letter; anything else a decode job. Every decision here is a
//! function of the partition's frames in read order and of the restored state (and, for load
//! shedding, of the clock), so a partition's next owner decides as this one did.

use std::sync::{Arc, Mutex};

use crate::contract::{now_ms, DeadLetter, Limits, Reason, Rejection};
use crate::decode::DecodeJob;
use crate::episodes::book::CameraBook;
use crate::episodes::cameras::Refusal;
use crate::infer::shed::{At, Shedder, SKIPPED_STALE};
use crate::infer::{FramePlan, Planner};
use crate::source::{self, Record};
use crate::telemetry::Metrics;

/// What the intake decides with.
pub struct Intake {
    /// The frame contract's limits (`--max-frame-bytes`, event-time bounds, pixel budget).
    pub limits: Limits,
    /// Sites, partition clocks and rule cadences of the assigned partitions.
    pub cameras: Arc<CameraBook>,
    /// Rules and models.
    pub planner: Arc<Planner>,
    /// Load shedding, shared with the inference stage (which decides at run time).
    pub shedder: Arc<Mutex<Shedder>>,
    /// Evidence pictures are drawn on decoded frames: keep them for frames with rules.
    pub evidence: bool,
    pub metrics: Arc<Metrics>,
}

/// What becomes of a record.
pub enum Taken {
    Refused(Box<DeadLetter>),
    Decode(Box<DecodeJob<FramePlan>>),
}

impl Intake {
    /// Decides one record (called in the partition's read order).
    pub fn take(&self, record: Record) -> Taken {
        let Record { mut origin, raw } = record;
        let (meta, info) = match source::validate(
            raw.key.as_deref(),
            &raw.headers,
            &raw.payload,
            &self.limits,
            now_ms(),
        ) {
            Ok(ok) => ok,
            Err(rejection) => {
                return Taken::Refused(Box::new(DeadLetter {
                    origin,
                    raw,
                    rejection,
                }))
            }
        };
        let mut plan = self.planner.plan(&meta);
        let cadences = self.planner.cadences(&plan);
        let named: Vec<(&str, i64)> = cadences.iter().map(|&(_, n, ms)| (n, ms)).collect();
        let (admitted, states) = self.cameras.admit(
            origin.ticket.partition,
            origin.ticket.offset,
            &meta.site,
            &meta.camera,
            meta.captured_at_ms,
            &named,
        );
        origin.states = states;
        let due = match admitted {
            Ok((stamp, due)) => {
                origin.stamp = Some(stamp);
                due
            }
            Err(refusal) => {
                let reason = match refusal {
                    Refusal::SiteConflict { .. } => Reason::SiteConflict,
                    Refusal::ClockJump { .. } => Reason::ClockJump,
                };
                let rejection = Rejection::new(reason, refusal.detail(&meta.site, &meta.camera));
                return Taken::Refused(Box::new(DeadLetter {
                    origin,
                    raw,
                    rejection,
                }));
            }
        };
        let not_due: Vec<usize> = cadences
            .iter()
            .zip(due)
            .filter(|(_, due)| !due)
            .map(|(&(r, _, _), _)| r)
            .collect();
        plan = self.planner.defer(plan, not_due);
        if let Some(c) = &self.metrics.cameras {
            c.frame(&meta.site, &meta.camera, meta.captured_at_ms as f64 / 1e3);
        }
        let at = At {
            partition: origin.ticket.partition,
            offset: origin.ticket.offset,
        };
        if plan.judges()
            && self
                .shedder
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .skip_unread(at, &meta.site, &meta.camera, meta.captured_at_ms, now_ms())
        {
            // Hopeless already: not even decoded.
            self.metrics
                .frames_skipped
                .with_label_values(&[SKIPPED_STALE])
                .inc();
            plan = Planner::skip(plan, SKIPPED_STALE);
        }
        Taken::Decode(Box::new(DecodeJob {
            origin,
            meta,
            info,
            raw,
            inputs: plan.whole_frame.clone(),
            // Evidence pictures are drawn on the decoded frame.
            keep_image: plan.needs_crops || (self.evidence && plan.judges()),
            plan,
        }))
    }
}
