//! The emitter: produces outcomes as they arrive, completes each frame once its outcome is
//! delivered, and checkpoints each partition's state before its offsets are stored.
//!
//! The producer is patient ([`crate::kafka::KafkaArgs::output_producer`]): while the brokers
//! are away, outcomes and checkpoints wait in it, their frames stay in flight and uncommitted,
//! and the consumer stops reading once `--max-in-flight` frames wait. A delivery that fails all
//! the same is one that waiting does not cure (a record or topic the brokers refuse), and it
//! stops the worker.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::mpsc;

use super::checkpoint::Checkpoints;
use super::produce::{Delivery, DeliveryError, Sink};
use crate::contract::{now_ms, Domain, Outcome, StageError};
use crate::kafka::{BrokerLink, OutputProducer};
use crate::source::Acknowledger;
use crate::telemetry::Metrics;

/// What the emitter is given.
pub struct Emitter {
    pub sink: Arc<Sink>,
    pub producer: OutputProducer,
    pub acks: Acknowledger,
    /// Told of every acknowledgement: the brokers answer.
    pub link: BrokerLink,
    pub checkpoints: Arc<Checkpoints>,
    pub metrics: Arc<Metrics>,
    /// How often delivered frames' state is checkpointed (and their offsets stored).
    pub checkpoint_interval: Duration,
}

/// A checkpoint in progress: resolves to the commit points it covers once written.
type Checkpoint = Pin<Box<dyn Future<Output = Result<Vec<(i32, u64, i64)>, DeliveryError>> + Send>>;

impl Emitter {
    /// Starts a checkpoint of every partition whose commit point moved; `None` if none did.
    fn checkpoint(&self) -> Option<Checkpoint> {
        let targets = self.acks.checkpoint_targets();
        if targets.is_empty() {
            return None;
        }
        let batches: Vec<_> = targets
            .iter()
            .map(|&(p, _, point)| (p, self.checkpoints.take(p, point)))
            .collect();
        let (sink, producer) = (self.sink.clone(), self.producer.clone());
        Some(Box::pin(async move {
            for (p, records) in &batches {
                if !records.is_empty() {
                    sink.write_state(&producer, *p, records).await?;
                }
            }
            Ok(targets)
        }))
    }

    fn stored(
        &self,
        result: Result<Vec<(i32, u64, i64)>, DeliveryError>,
    ) -> Result<(), StageError> {
        match result {
            Ok(points) => {
                self.link.answered();
                for (p, generation, point) in points {
                    self.acks.store(p, generation, point);
                }
                Ok(())
            }
            Err(e) => Err(self.failed(format!(
                "episode state checkpoint failed: {e}; stopping so that its frames are not committed"
            ))),
        }
    }

    /// A write the broker refused (the producer waits out brokers that are away): the worker
    /// stops without committing it.
    fn failed(&self, message: String) -> StageError {
        self.metrics.producer_errors.inc();
        let err = StageError::stop("sink", Domain::External, message);
        tracing::error!(error = %err, "producer failed");
        err
    }

    fn delivered(&self, d: Delivery) -> Result<(), StageError> {
        match d.result {
            Ok(()) => {
                self.link.answered();
                self.metrics.produce_seconds.observe(d.took.as_secs_f64());
                match (d.captured_at_ms, d.reason) {
                    (Some(at), _) => {
                        self.metrics.frames_processed.inc();
                        let e2e = now_ms().saturating_sub(at).max(0) as f64 / 1e3;
                        self.metrics.end_to_end_seconds.observe(e2e);
                    }
                    (None, Some(reason)) => self
                        .metrics
                        .frames_dead_lettered
                        .with_label_values(&[reason.as_str()])
                        .inc(),
                    (None, None) => {}
                }
                let t = d.origin.ticket;
                // The intake's records (the camera's) first, then the episodes'.
                let mut states = d.origin.states;
                states.extend(d.states);
                self.checkpoints.add(t.partition, t.offset, states);
                self.acks.complete(t);
                Ok(())
            }
            Err(e) => Err(self.failed(format!(
                "delivery failed for the frame at partition {} offset {}: {e}; stopping so that it is not committed",
                d.origin.ticket.partition, d.origin.ticket.offset
            ))),
        }
    }

    /// Runs until its input closes and every delivery and checkpoint is settled. Deliveries wait
    /// for absent brokers; one that fails all the same, or a failed checkpoint, stops the worker:
    /// the frame must not be committed.
    pub async fn run(self, mut rx: mpsc::Receiver<Outcome>) -> Result<(), StageError> {
        let mut pending = FuturesUnordered::new();
        let mut checkpoint: Option<Checkpoint> = None;
        let mut tick = tokio::time::interval(self.checkpoint_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut open = true;
        loop {
            if !open && pending.is_empty() && checkpoint.is_none() {
                // Everything delivered: a last checkpoint, so that a clean stop commits it all.
                if let Some(last) = self.checkpoint() {
                    self.stored(last.await)?;
                }
                return Ok(());
            }
            tokio::select! {
                biased;
                Some(d) = pending.next(), if !pending.is_empty() => self.delivered(d)?,
                r = async { checkpoint.as_mut().expect("guarded").await }, if checkpoint.is_some() => {
                    checkpoint = None;
                    self.stored(r)?;
                }
                _ = self.checkpoints.wake.notified(), if checkpoint.is_none() => checkpoint = self.checkpoint(),
                _ = tick.tick(), if checkpoint.is_none() => checkpoint = self.checkpoint(),
                o = rx.recv(), if open => match o {
                    Some(o) => pending.push(self.sink.produce(&self.producer, o)),
                    None => open = false,
                },
            }
        }
    }
}
