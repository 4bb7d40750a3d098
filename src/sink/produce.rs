//! Publishing one frame's outcome: its observation and events, then its state; or its dead
//! letter. Each future resolves once the broker has acknowledged every record of the outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::codec::Codecs;
use crate::contract::{header, DeadLetter, Judged, Origin, Outcome, Reason};
use crate::kafka;

/// Where the sink publishes, and how it encodes.
pub struct Topics {
    pub frames: String,
    pub observations: String,
    pub dlq: String,
    pub violations: String,
    pub state: String,
}

/// Everything the sink needs to turn outcomes into records.
pub struct Sink {
    pub topics: Topics,
    pub codecs: Codecs,
    /// Written into dead letters (`worker` header).
    pub worker_id: String,
}

/// Why an outcome was not delivered.
#[derive(Debug)]
pub enum DeliveryError {
    /// The broker refused or lost a record.
    Kafka(KafkaError),
    /// A record could not be encoded for its schema.
    Encode(String),
}

impl std::fmt::Display for DeliveryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeliveryError::Kafka(e) => write!(f, "{e}"),
            DeliveryError::Encode(e) => write!(f, "cannot encode a record: {e}"),
        }
    }
}

/// Result of one outcome's produce: the frame it settles, and how it went.
pub struct Delivery {
    pub origin: Origin,
    pub result: Result<(), DeliveryError>,
    pub took: Duration,
    /// Some(captured_at) for observations (end-to-end latency), None for dead letters.
    pub captured_at_ms: Option<i64>,
    pub reason: Option<Reason>,
}

pub type Pending = Pin<Box<dyn Future<Output = Delivery> + Send>>;

const AVRO: &[u8] = b"application/vnd.apache.avro+binary";

impl Sink {
    /// Starts producing one outcome; the future resolves when the broker acknowledged it.
    pub fn produce(self: &Arc<Self>, producer: &FutureProducer, outcome: Outcome) -> Pending {
        let producer = producer.clone();
        let sink = self.clone();
        match outcome {
            Outcome::Observation(origin, judged) => Box::pin(async move {
                let t = Instant::now();
                let captured_at_ms = Some(judged.obs.captured_at_ms);
                let result = sink
                    .observation(&producer, origin.ticket.partition, *judged)
                    .await;
                Delivery {
                    origin,
                    result,
                    took: t.elapsed(),
                    captured_at_ms,
                    reason: None,
                }
            }),
            Outcome::DeadLetter(dl) => {
                tracing::debug!(reason = %dl.rejection.reason, detail = %dl.rejection.detail,
                    partition = dl.origin.ticket.partition, offset = dl.origin.ticket.offset, "frame dead-lettered");
                Box::pin(async move {
                    let t = Instant::now();
                    let DeadLetter {
                        origin,
                        raw,
                        rejection,
                    } = *dl;
                    let partition = origin.ticket.partition.to_string();
                    let offset = origin.ticket.offset.to_string();
                    let mut all: Vec<(&str, &[u8])> = raw
                        .headers
                        .iter()
                        .filter(|(k, _)| {
                            !k.starts_with("reason")
                                && !k.starts_with("source_")
                                && k != header::WORKER
                        })
                        .map(|(k, v)| (k.as_str(), v.as_slice()))
                        .collect();
                    all.extend([
                        (header::REASON, rejection.reason.as_str().as_bytes()),
                        (header::REASON_DETAIL, rejection.detail.as_bytes()),
                        (header::SOURCE_TOPIC, sink.topics.frames.as_bytes()),
                        (header::SOURCE_PARTITION, partition.as_bytes()),
                        (header::SOURCE_OFFSET, offset.as_bytes()),
                        (header::WORKER, sink.worker_id.as_bytes()),
                    ]);
                    let mut rec = FutureRecord::to(&sink.topics.dlq)
                        .payload(&raw.payload)
                        .headers(kafka::headers_from(all));
                    if let Some(k) = raw.key.as_deref() {
                        rec = rec.key(k);
                    }
                    let result = producer
                        .send(rec, Timeout::Never)
                        .await
                        .map(|_| ())
                        .map_err(|(e, _)| DeliveryError::Kafka(e));
                    Delivery {
                        origin,
                        result,
                        took: t.elapsed(),
                        captured_at_ms: None,
                        reason: Some(rejection.reason),
                    }
                })
            }
        }
    }

    /// Phase 1: the observation and the episode events, concurrently. Phase 2: the state, only
    /// once the events it accounts for are acknowledged, into the frame's own partition number
    /// (co-partitioned).
    async fn observation(
        &self,
        producer: &FutureProducer,
        partition: i32,
        judged: Judged,
    ) -> Result<(), DeliveryError> {
        let Judged {
            obs,
            events,
            states,
        } = judged;
        let encode = |e: crate::codec::avro::CodecError| DeliveryError::Encode(e.to_string());
        let payload = self.codecs.observations.encode(&obs).map_err(encode)?;
        let mut encoded = Vec::with_capacity(events.len());
        for ev in &events {
            encoded.push((
                ev.camera.as_bytes(),
                self.codecs.events.encode(ev).map_err(encode)?,
            ));
        }
        let mut first = Vec::with_capacity(1 + events.len());
        let obs_headers = kafka::headers_from([
            (header::CAMERA, obs.camera.as_bytes()),
            (header::SITE, obs.site.as_bytes()),
            ("content-type", AVRO),
        ]);
        first.push(
            enqueue(
                producer,
                &self.topics.observations,
                obs.camera.as_bytes(),
                &payload,
                obs_headers,
                None,
            )
            .await,
        );
        for (key, value) in &encoded {
            let h = kafka::headers_from([("content-type", AVRO)]);
            first.push(enqueue(producer, &self.topics.violations, key, value, h, None).await);
        }
        settle_all(first).await?;
        if !states.is_empty() {
            let mut second = Vec::with_capacity(states.len());
            for s in &states {
                second.push(
                    enqueue(
                        producer,
                        &self.topics.state,
                        s.key.as_bytes(),
                        &s.value,
                        OwnedHeaders::new(),
                        Some(partition),
                    )
                    .await,
                );
            }
            settle_all(second).await?;
        }
        Ok(())
    }
}

/// Hands a record to the producer, waiting while its queue is full; the future resolves on the
/// broker's acknowledgement.
async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
    headers: OwnedHeaders,
    partition: Option<i32>,
) -> Result<DeliveryFuture, KafkaError> {
    let mut rec = FutureRecord::to(topic)
        .key(key)
        .payload(value)
        .headers(headers);
    if let Some(p) = partition {
        rec = rec.partition(p);
    }
    loop {
        match producer.send_result(rec) {
            Ok(f) => return Ok(f),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Waits for every delivery; the first error, if any. Each produce call either queued (and is
/// awaited) or failed at once (queue full is retried by waiting briefly).
async fn settle_all(sends: Vec<Result<DeliveryFuture, KafkaError>>) -> Result<(), DeliveryError> {
    let mut result = Ok(());
    for s in sends {
        let r = match s {
            Ok(fut) => match fut.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e),
                Err(_) => Err(KafkaError::Canceled),
            },
            Err(e) => Err(e),
        };
        if result.is_ok() {
            result = r;
        }
    }
    result.map_err(DeliveryError::Kafka)
}
