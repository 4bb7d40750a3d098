//! The emitter: produces outcomes as they arrive, and acknowledges each frame (so that its offset
//! may be stored) once its outcome is delivered.

use std::sync::Arc;

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::FutureProducer;
use tokio::sync::mpsc;

use super::produce::{Delivery, Sink};
use crate::contract::{now_ms, Domain, Outcome, StageError};
use crate::source::Acknowledger;
use crate::telemetry::Metrics;

/// Runs until its input closes and every delivery is settled. A failed delivery stops the
/// worker: the frame must not be committed.
pub async fn emit(
    sink: Arc<Sink>,
    producer: FutureProducer,
    acks: Acknowledger,
    metrics: Arc<Metrics>,
    mut rx: mpsc::Receiver<Outcome>,
) -> Result<(), StageError> {
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(d) = pending.next(), if !pending.is_empty() => {
                let d: Delivery = d;
                match d.result {
                    Ok(()) => {
                        metrics.produce_seconds.observe(d.took.as_secs_f64());
                        match (d.captured_at_ms, d.reason) {
                            (Some(at), _) => {
                                metrics.frames_processed.inc();
                                let e2e = now_ms().saturating_sub(at).max(0) as f64 / 1e3;
                                metrics.end_to_end_seconds.observe(e2e);
                            }
                            (None, Some(reason)) => metrics.frames_dead_lettered.with_label_values(&[reason.as_str()]).inc(),
                            (None, None) => {}
                        }
                        acks.ack(d.origin.ticket);
                    }
                    Err(e) => {
                        metrics.producer_errors.inc();
                        let err = StageError::stop("sink", Domain::External, format!(
                            "delivery failed for the frame at partition {} offset {}: {e}; stopping so that it is not committed",
                            d.origin.ticket.partition, d.origin.ticket.offset
                        ));
                        tracing::error!(error = %err, "producer failed");
                        return Err(err);
                    }
                }
            }
            o = rx.recv(), if open => match o {
                Some(o) => pending.push(sink.produce(&producer, o)),
                None => open = false,
            },
            else => return Ok(()),
        }
    }
}
