//! The frames consumer, driven from a thread of its own.
//!
//! librdkafka runs rebalance callbacks inside `poll`, on the polling thread, and they must block:
//! a revoke has to wait until the partition's in-flight frames are delivered and commit them, and
//! an assignment has to restore the partitions' episode state before any of their frames is read.
//! Polling from a dedicated thread (as quickwit's and vector's Kafka sources do) lets those waits
//! block that thread alone: the async runtime, where the stages deliver the very frames a revoke
//! waits for, keeps every one of its threads, even on a single core.
//!
//! ```text
//!  consumer thread: poll ──► record (+ in-flight slot, ticket) ──► bounded channel ──► intake
//!        │ rebalance callbacks (same thread)
//!        ├─ revoke: wait until drained ► commit ► hooks.revoked
//!        └─ assign: hooks.assigned (restore) ► then the partitions' frames are polled
//! ```
//!
//! Broker outages, and the rebalances around them, are waited out. A revoke waits for its
//! frames however long it takes (the brokers may be away: the frames are delivered once they
//! are back); a commit the group refuses (`UnknownMemberId`, `WaitingForCoordinator`, a lost
//! assignment) is made when the partitions come back to this worker, so that their frames are
//! not read twice; consumer errors are counted and logged once per kind. Only what waiting
//! cannot cure stops the worker: refused credentials or permissions, data that cannot be read,
//! a restore that fails for another reason than the brokers' absence.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, Semaphore};

use super::inflight::InFlight;
pub use super::rebalance::commit_stored;
use super::rebalance::{lock, PartitionHooks, SourceContext};
use crate::contract::{Domain, Origin, RawFrame, StageError, Ticket};
use crate::kafka::{self, BrokerLink, KafkaArgs};
use crate::telemetry::Metrics;

/// A frame record read from the frames topic, registered as in flight.
pub struct Record {
    pub origin: Origin,
    pub raw: RawFrame,
}

pub type FramesConsumer = BaseConsumer<SourceContext>;

/// How the source is set up.
pub struct SourceConfig {
    pub kafka: KafkaArgs,
    pub group: String,
    pub topic: String,
    /// How long a revoke waits for its frames before saying so (it waits on after that).
    pub drain_timeout: Duration,
    /// `session.timeout.ms` of the group membership.
    pub session_timeout: Duration,
    /// Frames read but not yet delivered, at most.
    pub max_in_flight: usize,
    /// Whether the brokers answer: the consumer reports what it sees there.
    pub link: BrokerLink,
}

/// The running source: records arrive on `records`; `stop` ends the polling thread.
pub struct Source {
    pub consumer: Arc<FramesConsumer>,
    pub records: mpsc::Receiver<Record>,
    pub inflight: Arc<InFlight>,
    stop: Arc<AtomicBool>,
    /// Per partition, the last commit point stored.
    stored: Arc<Mutex<HashMap<i32, i64>>>,
    thread: Option<JoinHandle<()>>,
}

/// Creates the consumer, subscribes, and starts the polling thread.
pub fn start(
    cfg: &SourceConfig,
    metrics: Arc<Metrics>,
    hooks: Arc<dyn PartitionHooks>,
    fatal: mpsc::Sender<StageError>,
) -> Result<Source, StageError> {
    let setup = |e: String| StageError::stop("source", Domain::User, e);
    let inflight = Arc::new(InFlight::new(metrics.clone()));
    let failed = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let stored = Arc::new(Mutex::new(HashMap::new()));
    let context = SourceContext {
        inflight: inflight.clone(),
        metrics: metrics.clone(),
        topic: cfg.topic.clone(),
        drain_timeout: cfg.drain_timeout,
        hooks,
        fatal: fatal.clone(),
        failed: failed.clone(),
        stop: stop.clone(),
        link: cfg.link.clone(),
        stored: stored.clone(),
        resume: Mutex::default(),
        commits_failing: AtomicBool::new(false),
    };
    let session_ms = cfg.session_timeout.as_millis().to_string();
    let consumer: FramesConsumer = cfg
        .kafka
        .config(&[
            ("group.id", &cfg.group),
            ("enable.auto.commit", "true"),
            ("auto.commit.interval.ms", "1000"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "5"),
            ("session.timeout.ms", &session_ms),
            // A rebalance moves only the partitions that change owner; the others are judged
            // throughout (with the eager protocol every member stops for every rebalance).
            ("partition.assignment.strategy", "cooperative-sticky"),
            ("heartbeat.interval.ms", "1000"),
            ("statistics.interval.ms", "5000"),
        ])
        .map_err(|e| setup(e.to_string()))?
        .create_with_context(context)
        .map_err(|e| setup(format!("cannot create consumer: {e}")))?;
    consumer
        .subscribe(&[&cfg.topic])
        .map_err(|e| setup(format!("cannot subscribe to the frames topic: {e}")))?;
    let consumer = Arc::new(consumer);
    let (tx, records) = mpsc::channel(cfg.max_in_flight.max(1));
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let thread = {
        let (consumer, inflight, link) = (consumer.clone(), inflight.clone(), cfg.link.clone());
        // Reading stops when asked to, and when a rebalance failed.
        let stops = [stop.clone(), failed];
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("vigil-consumer".into())
            .spawn(move || {
                let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    poll(
                        &consumer, &inflight, &metrics, &link, &slots, &tx, &stops, &fatal,
                        &runtime,
                    )
                }));
                if let Err(panic) = polled {
                    let what = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    tracing::error!(panic = %what, "consumer thread panicked; stopping the worker");
                    let _ = fatal.blocking_send(StageError::stop(
                        "source",
                        Domain::Internal,
                        format!("consumer thread panicked: {what}"),
                    ));
                }
            })
            .map_err(|e| {
                StageError::stop("source", Domain::Internal, format!("consumer thread: {e}"))
            })?
    };
    Ok(Source {
        consumer,
        records,
        inflight,
        stop,
        stored,
        thread: Some(thread),
    })
}

/// Consumer errors that mean "this data cannot be read" rather than "the broker is away": the
/// same batch comes back on every fetch, so they repeat forever instead of passing.
const UNREADABLE: &[RDKafkaErrorCode] = &[
    RDKafkaErrorCode::BadMessage,
    RDKafkaErrorCode::InvalidMessage,
    RDKafkaErrorCode::BadCompression,
    RDKafkaErrorCode::NotImplemented,
    RDKafkaErrorCode::UnsupportedFeature,
    RDKafkaErrorCode::UnsupportedCompressionType,
];
/// How often an unreadable-data error repeats in a row before the worker stops.
const UNREADABLE_REPEATS: u32 = 20;
/// Consumer errors that waiting will not cure either: the brokers refuse vigil's credentials or
/// permissions. The first one stops the worker, naming it.
const REFUSED: &[RDKafkaErrorCode] = &[
    RDKafkaErrorCode::Authentication,
    RDKafkaErrorCode::SaslAuthenticationFailed,
    RDKafkaErrorCode::TopicAuthorizationFailed,
    RDKafkaErrorCode::GroupAuthorizationFailed,
    RDKafkaErrorCode::ClusterAuthorizationFailed,
];

/// The consumer thread: takes an in-flight slot, polls (serving rebalance callbacks), registers
/// the frame and hands it to the intake. Ends on `stop` or when the intake is gone.
#[allow(clippy::too_many_arguments)]
fn poll(
    consumer: &FramesConsumer,
    inflight: &InFlight,
    metrics: &Metrics,
    link: &BrokerLink,
    slots: &Arc<Semaphore>,
    tx: &mpsc::Sender<Record>,
    stops: &[Arc<AtomicBool>; 2],
    fatal: &mpsc::Sender<StageError>,
    runtime: &tokio::runtime::Handle,
) {
    let stopped = || stops.iter().any(|s| s.load(Ordering::Relaxed));
    // The last unreadable-data error and how often it repeated without a record in between.
    let mut unreadable: (Option<RDKafkaErrorCode>, u32) = (None, 0);
    // The last error logged since the last record: the same one again is logged at debug.
    let mut logged: Option<RDKafkaErrorCode> = None;
    const TICK: Duration = Duration::from_millis(100);
    let mut slot = None;
    while !stopped() {
        if slot.is_none() {
            slot = slots.clone().try_acquire_owned().ok();
        }
        if slot.is_none() {
            // Every slot is taken: wait for one, a tick at a time so that `stop` is seen.
            let acquire = async { tokio::time::timeout(TICK, slots.clone().acquire_owned()).await };
            match runtime.block_on(acquire) {
                Ok(Ok(s)) => slot = Some(s),
                Ok(Err(_)) => return,
                // Every slot is taken: frames in flight free them as they are delivered, whatever
                // this thread does (heartbeats run on librdkafka's own threads).
                Err(_) => continue,
            }
        }
        let msg = match consumer.poll(TICK) {
            None => continue,
            Some(Err(e)) => {
                let any = e.rdkafka_error_code();
                if let KafkaError::MessageConsumptionFatal(code) = e {
                    metrics.consumer_errors.with_label_values(&["other"]).inc();
                    tracing::error!(error = %e, "the consumer failed for good; stopping");
                    let _ = fatal.blocking_send(StageError::stop(
                        "source",
                        Domain::External,
                        format!("librdkafka cannot go on with the consumer: {code}"),
                    ));
                    return;
                }
                if let Some(refused) = any.filter(|c| REFUSED.contains(c)) {
                    metrics.consumer_errors.with_label_values(&["other"]).inc();
                    tracing::error!(error = %e, "the brokers refuse vigil's credentials or permissions; stopping");
                    let _ = fatal.blocking_send(StageError::stop(
                        "source",
                        Domain::User,
                        format!(
                            "the brokers refused the consumer ({refused:?}: {e}): check \
                             sasl.username, sasl.password and the ACLs of the group and topics"
                        ),
                    ));
                    return;
                }
                let code = any.filter(|c| UNREADABLE.contains(c));
                let kind = if code.is_some() {
                    "unreadable"
                } else {
                    "other"
                };
                metrics.consumer_errors.with_label_values(&[kind]).inc();
                // Broker trouble repeats while it lasts: logged when it changes, not each time,
                // and not while the brokers are known to be away (that is logged once).
                if link.is_lost() || (logged.is_some() && logged == any) {
                    tracing::debug!(error = %e, kind, "consumer error");
                } else {
                    tracing::warn!(error = %e, kind, "consumer error");
                    logged = any;
                }
                if let Some(code) = code {
                    unreadable = if unreadable.0 == Some(code) {
                        (Some(code), unreadable.1 + 1)
                    } else {
                        (Some(code), 1)
                    };
                    if unreadable.1 >= UNREADABLE_REPEATS {
                        // librdkafka fetches the same batch again and again: no dead letter can
                        // be made of bytes it cannot hand over, so stop, loudly.
                        let _ = fatal.blocking_send(StageError::stop(
                            "source",
                            Domain::External,
                            format!(
                                "the consumer failed {UNREADABLE_REPEATS} times in a row on data it \
                                 cannot read ({e}), e.g. a batch in a compression codec this build \
                                 lacks; stopping rather than fetching it forever"
                            ),
                        ));
                        return;
                    }
                }
                continue;
            }
            Some(Ok(m)) => m,
        };
        unreadable = (None, 0);
        logged = None;
        if stopped() {
            // A rebalance inside this poll failed: the record is left for the next owner.
            return;
        }
        metrics.frames_received.inc();
        let Some(permit) = slot.take() else { continue };
        let origin = Origin::new(inflight.register(msg.partition(), msg.offset()), permit);
        let raw = RawFrame {
            key: msg.key().map(<[u8]>::to_vec),
            headers: kafka::record_headers(&msg),
            payload: msg.payload().unwrap_or_default().to_vec(),
        };
        drop(msg);
        if tx.blocking_send(Record { origin, raw }).is_err() {
            return;
        }
    }
}

impl Source {
    /// Stops reading: the polling thread ends after its current poll. Records read but not yet
    /// taken by the intake are dropped unprocessed; their offsets are never stored, so they are
    /// read again after a restart.
    pub fn stop_reading(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.records.close();
        while self.records.try_recv().is_ok() {}
    }

    /// Waits for the polling thread to end and forgets frames that will never be delivered, so
    /// that the revoke on close does not wait for them. Blocking.
    pub fn finish(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.inflight.abandon_all();
    }

    /// A handle for the sink: completes frames and stores offsets.
    pub fn acknowledger(&self, topic: &str) -> Acknowledger {
        Acknowledger {
            consumer: self.consumer.clone(),
            inflight: self.inflight.clone(),
            topic: topic.to_string(),
            stored: self.stored.clone(),
        }
    }
}

/// The sink's handle on the source: completes frames once their outcome is delivered, and stores
/// a partition's commit point once the state before it is checkpointed (librdkafka commits
/// stored offsets in the background).
#[derive(Clone)]
pub struct Acknowledger {
    consumer: Arc<FramesConsumer>,
    inflight: Arc<InFlight>,
    topic: String,
    /// Per partition, the last commit point stored, for a revoke whose commit is refused.
    stored: Arc<Mutex<HashMap<i32, i64>>>,
}

impl Acknowledger {
    /// The frame's outcome is delivered.
    pub fn complete(&self, ticket: Ticket) {
        self.inflight.complete(ticket);
    }

    /// Partitions whose commit point is ahead of what is stored: (partition, generation, point).
    pub fn checkpoint_targets(&self) -> Vec<(i32, u64, i64)> {
        self.inflight.checkpoint_targets()
    }

    /// Every frame before `point` is delivered and its state checkpointed: store the offset.
    pub fn store(&self, partition: i32, generation: u64, point: i64) {
        self.inflight.mark_stored(partition, generation, point, || {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&self.topic, partition, Offset::Offset(point))
                .is_err()
            {
                return;
            }
            match self.consumer.store_offsets(&tpl) {
                Ok(()) => {
                    lock(&self.stored).insert(partition, point);
                }
                // The partition was revoked meanwhile; its new owner starts from the last commit.
                Err(e) => tracing::debug!(error = %e, partition, "offset not stored"),
            }
        });
    }
}
