//! Publishing one frame's outcome: its observation and events, then its state; or its dead
//! letter. Each future resolves once the broker has acknowledged every record of the outcome.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::util::Timeout;

use crate::codec::Codecs;
use crate::contract::observation::RuleResult;
use crate::contract::{
    admission, header, DeadLetter, Judged, Observation, Origin, Outcome, RawFrame, Reason,
    Rejection, StateRecord, ViolationEvent,
};
use crate::infer::plan::NOT_DUE;
use crate::infer::shed::SKIPPED_STALE;
use crate::kafka::{self, OutputProducer};

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
    /// Dead letters have a producer of their own, whose batches fit `dlq_limit`: the broker
    /// refuses a whole batch over the topic's `max.message.bytes`, good records with the bad.
    pub dlq_producer: OutputProducer,
    /// The dead-letter topic's `max.message.bytes`, when the brokers said.
    pub dlq_limit: Option<usize>,
    /// The observations topic has as many partitions as the frames topic: each observation goes
    /// to its frame's partition number, where the next owner of that partition reads back how
    /// the frames it will read again were decided ([`super::replay`]). Otherwise they are keyed
    /// by camera.
    pub co_partitioned: bool,
}

/// Bytes a dead letter takes beyond its payload and headers (record and batch framing).
const RECORD_OVERHEAD: usize = 512;

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
    /// The frame's state changes, to be checkpointed once delivered.
    pub states: Vec<StateRecord>,
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
    pub fn produce(self: &Arc<Self>, producer: &OutputProducer, outcome: Outcome) -> Pending {
        let producer = producer.clone();
        let sink = self.clone();
        match outcome {
            Outcome::Observation(origin, judged) => Box::pin(async move {
                let t = Instant::now();
                let captured_at_ms = Some(judged.obs.captured_at_ms);
                let Judged {
                    obs,
                    events,
                    states,
                } = *judged;
                match sink.observation(&producer, &origin, &obs, &events).await {
                    Err(DeliveryError::Encode(e)) => {
                        // A defect, not the frame's fault; but it would fail again after every
                        // restart, so the frame is dead-lettered (its bytes are gone by now: the
                        // dead letter carries its headers and the reason) and the partition
                        // moves on. Its state changes stand: the episodes already applied them.
                        tracing::error!(error = %e, camera = %obs.camera, partition = origin.ticket.partition,
                            offset = origin.ticket.offset, "observation or event not encodable; frame dead-lettered");
                        let raw = RawFrame {
                            key: Some(obs.camera.as_bytes().to_vec()),
                            headers: vec![
                                (header::SITE.into(), obs.site.clone().into_bytes()),
                                (header::CAMERA.into(), obs.camera.clone().into_bytes()),
                                (
                                    header::CAPTURED_AT.into(),
                                    obs.captured_at_ms.to_string().into_bytes(),
                                ),
                                (header::SEQ.into(), obs.seq.to_string().into_bytes()),
                            ],
                            payload: Vec::new(),
                        };
                        let rejection = Rejection::new(Reason::EncodeFailed, e);
                        Delivery {
                            result: sink.dead_letter(&origin, &raw, &rejection).await,
                            origin,
                            states,
                            took: t.elapsed(),
                            captured_at_ms: None,
                            reason: Some(Reason::EncodeFailed),
                        }
                    }
                    result => Delivery {
                        origin,
                        states,
                        result,
                        took: t.elapsed(),
                        captured_at_ms,
                        reason: None,
                    },
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
                    let result = sink.dead_letter(&origin, &raw, &rejection).await;
                    Delivery {
                        origin,
                        states: Vec::new(),
                        result,
                        took: t.elapsed(),
                        captured_at_ms: None,
                        reason: Some(rejection.reason),
                    }
                })
            }
        }
    }

    /// The observation and the episode events, concurrently. The frame's state follows at the
    /// next checkpoint.
    async fn observation(
        &self,
        producer: &OutputProducer,
        origin: &Origin,
        obs: &Observation,
        events: &[ViolationEvent],
    ) -> Result<(), DeliveryError> {
        let encode = |e: crate::codec::avro::CodecError| DeliveryError::Encode(e.to_string());
        let payload = self.codecs.observations.encode(obs).map_err(encode)?;
        let mut encoded = Vec::with_capacity(events.len());
        for ev in events {
            encoded.push((
                ev.camera.as_bytes(),
                self.codecs.events.encode(ev).map_err(encode)?,
            ));
        }
        let mut first = Vec::with_capacity(1 + events.len());
        let (partition, offset) = (
            origin.ticket.partition.to_string(),
            origin.ticket.offset.to_string(),
        );
        let mut obs_headers = vec![
            (header::CAMERA, obs.camera.as_bytes()),
            (header::SITE, obs.site.as_bytes()),
            ("content-type", AVRO),
            (header::SOURCE_TOPIC, self.topics.frames.as_bytes()),
            (header::SOURCE_PARTITION, partition.as_bytes()),
            (header::SOURCE_OFFSET, offset.as_bytes()),
        ];
        if let Some(admission) = admission_of(obs) {
            obs_headers.push((header::ADMISSION, admission.as_bytes()));
        }
        first.push(
            enqueue(
                producer,
                &self.topics.observations,
                obs.camera.as_bytes(),
                Some(&payload),
                kafka::headers_from(obs_headers),
                self.co_partitioned.then_some(origin.ticket.partition),
            )
            .await,
        );
        for (key, value) in &encoded {
            let h = kafka::headers_from([("content-type", AVRO)]);
            first.push(enqueue(producer, &self.topics.violations, key, Some(value), h, None).await);
        }
        settle_all(first).await
    }

    /// The dead letter: the frame as read, with the reason headers. One that the dead-letter topic
    /// refuses as too large is replaced by one without the payload (a `payload_dropped` header
    /// gives its size), so that an oversized frame cannot stop its partition.
    async fn dead_letter(
        &self,
        origin: &Origin,
        raw: &RawFrame,
        rejection: &Rejection,
    ) -> Result<(), DeliveryError> {
        let partition = origin.ticket.partition.to_string();
        let offset = origin.ticket.offset.to_string();
        let dropped = raw.payload.len().to_string();
        let mut headers: Vec<(&str, &[u8])> = raw
            .headers
            .iter()
            .filter(|(k, _)| {
                !k.starts_with("reason")
                    && !k.starts_with("source_")
                    && k != header::WORKER
                    && k != header::PAYLOAD_DROPPED
            })
            .map(|(k, v)| (k.as_str(), v.as_slice()))
            .collect();
        headers.extend([
            (header::REASON, rejection.reason.as_str().as_bytes()),
            (header::REASON_DETAIL, rejection.detail.as_bytes()),
            (header::SOURCE_TOPIC, self.topics.frames.as_bytes()),
            (header::SOURCE_PARTITION, partition.as_bytes()),
            (header::SOURCE_OFFSET, offset.as_bytes()),
            (header::WORKER, self.worker_id.as_bytes()),
        ]);
        let key = raw.key.as_deref();
        let producer = &self.dlq_producer;
        let size = raw.payload.len()
            + key.map_or(0, <[u8]>::len)
            + headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + RECORD_OVERHEAD;
        let fits = self.dlq_limit.is_none_or(|limit| size <= limit);
        let sent = if fits {
            send(producer, &self.topics.dlq, key, &raw.payload, &headers).await
        } else {
            Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge,
            ))
        };
        match sent {
            Ok(()) => Ok(()),
            Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)) => {
                tracing::warn!(
                    bytes = raw.payload.len(),
                    partition = origin.ticket.partition,
                    offset = origin.ticket.offset,
                    "dead letter too large for the dead-letter topic; sent without its payload"
                );
                headers.push((header::PAYLOAD_DROPPED, dropped.as_bytes()));
                send(producer, &self.topics.dlq, key, &[], &headers)
                    .await
                    .map_err(DeliveryError::Kafka)
            }
            Err(e) => Err(DeliveryError::Kafka(e)),
        }
    }

    /// Writes a checkpoint of one partition: the records, into the frames' own partition number
    /// of the state topic (co-partitioned), all acknowledged before this returns.
    pub async fn write_state(
        &self,
        producer: &OutputProducer,
        partition: i32,
        records: &[StateRecord],
    ) -> Result<(), DeliveryError> {
        let mut sends = Vec::with_capacity(records.len());
        for r in records {
            sends.push(
                enqueue(
                    producer,
                    &self.topics.state,
                    r.key.as_bytes(),
                    r.value.as_deref(),
                    OwnedHeaders::new(),
                    Some(partition),
                )
                .await,
            );
        }
        settle_all(sends).await
    }
}

/// How load shedding admitted the frame an observation is of: `None` when no rule was to be
/// judged on it (none applies, or none was due: the shedder was not asked).
pub fn admission_of(obs: &Observation) -> Option<&'static str> {
    fn reason(r: &RuleResult) -> Option<&str> {
        r.reason.as_deref()
    }
    if obs.rules.iter().any(|r| reason(r) == Some(SKIPPED_STALE)) {
        Some(admission::SKIPPED)
    } else if obs.rules.iter().any(|r| reason(r) != Some(NOT_DUE)) {
        Some(admission::JUDGED)
    } else {
        None
    }
}

/// Produces one record and waits for the broker's acknowledgement.
async fn send(
    producer: &OutputProducer,
    topic: &str,
    key: Option<&[u8]>,
    payload: &[u8],
    headers: &[(&str, &[u8])],
) -> Result<(), KafkaError> {
    let mut rec = FutureRecord::to(topic)
        .payload(payload)
        .headers(kafka::headers_from(headers.iter().copied()));
    if let Some(k) = key {
        rec = rec.key(k);
    }
    producer
        .send(rec, Timeout::Never)
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
}

/// Hands a record to the producer, waiting while its queue is full; the future resolves on the
/// broker's acknowledgement.
async fn enqueue(
    producer: &OutputProducer,
    topic: &str,
    key: &[u8],
    value: Option<&[u8]>,
    headers: OwnedHeaders,
    partition: Option<i32>,
) -> Result<DeliveryFuture, KafkaError> {
    let mut rec = FutureRecord::to(topic).key(key).headers(headers);
    if let Some(v) = value {
        rec = rec.payload(v);
    }
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
