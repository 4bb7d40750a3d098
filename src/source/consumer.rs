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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, Semaphore};

use super::inflight::InFlight;
use crate::contract::{Domain, Origin, RawFrame, StageError, Ticket};
use crate::kafka::{self, KafkaArgs};
use crate::telemetry::Metrics;

/// What the pipeline does when partitions come and go. Called on the consumer thread, where
/// blocking is allowed.
pub trait PartitionHooks: Send + Sync + 'static {
    /// Before any frame of `partitions` is read (restore their state). An error stops the worker.
    fn assigned(&self, partitions: &[i32]) -> Result<(), StageError>;
    /// After the partitions' in-flight frames were delivered and committed.
    fn revoked(&self, partitions: &[i32]);
}

/// A frame record read from the frames topic, registered as in flight.
pub struct Record {
    pub origin: Origin,
    pub raw: RawFrame,
}

/// Consumer callbacks: drain before giving partitions away, hooks on assignment, lag from
/// statistics.
pub struct SourceContext {
    inflight: Arc<InFlight>,
    metrics: Arc<Metrics>,
    /// The frames topic (the only one subscribed).
    topic: String,
    /// Longest wait for a revoked partition's frames.
    drain_timeout: Duration,
    hooks: Arc<dyn PartitionHooks>,
    /// A failed assignment stops the worker.
    fatal: mpsc::Sender<StageError>,
}

pub type FramesConsumer = BaseConsumer<SourceContext>;

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// Commits stored offsets; "nothing stored" is not an error. Blocking.
pub fn commit_stored<C: ConsumerContext, K: Consumer<C>>(consumer: &K, metrics: &Metrics) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => metrics.offsets_committed.inc(),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "offset commit failed; frames since the last commit will be processed again")
        }
    }
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        if let Some(t) = stats.topics.get(&self.topic) {
            for p in t.partitions.values() {
                if p.partition >= 0 && p.consumer_lag >= 0 {
                    self.metrics
                        .consumer_lag
                        .with_label_values(&[&self.topic, &p.partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions_of(tpl, &self.topic);
            let drained = self.inflight.wait_drained(&parts, self.drain_timeout);
            commit_stored(consumer, &self.metrics);
            self.inflight.revoke(&parts);
            self.hooks.revoked(&parts);
            for p in &parts {
                let _ = self
                    .metrics
                    .consumer_lag
                    .remove_label_values(&[&self.topic, &p.to_string()]);
            }
            tracing::info!(partitions = ?parts, drained, "partitions revoked");
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let parts = partitions_of(tpl, &self.topic);
                match self.hooks.assigned(&parts) {
                    Ok(()) => tracing::info!(partitions = ?parts, "partitions assigned"),
                    Err(e) => {
                        tracing::error!(partitions = ?parts, error = %e, "assigned partitions not ready; stopping");
                        let _ = self.fatal.try_send(e);
                    }
                }
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
        if let Ok(a) = consumer.assignment() {
            self.metrics.partitions_assigned.set(a.count() as i64);
        }
    }

    fn commit_callback(&self, result: rdkafka::error::KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) => self.metrics.offsets_committed.inc(),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }
}

/// How the source is set up.
pub struct SourceConfig {
    pub kafka: KafkaArgs,
    pub group: String,
    pub topic: String,
    pub drain_timeout: Duration,
    /// `session.timeout.ms` of the group membership.
    pub session_timeout: Duration,
    /// Frames read but not yet delivered, at most.
    pub max_in_flight: usize,
}

/// The running source: records arrive on `records`; `stop` ends the polling thread.
pub struct Source {
    pub consumer: Arc<FramesConsumer>,
    pub records: mpsc::Receiver<Record>,
    pub inflight: Arc<InFlight>,
    stop: Arc<AtomicBool>,
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
    let context = SourceContext {
        inflight: inflight.clone(),
        metrics: metrics.clone(),
        topic: cfg.topic.clone(),
        drain_timeout: cfg.drain_timeout,
        hooks,
        fatal: fatal.clone(),
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
    let stop = Arc::new(AtomicBool::new(false));
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let thread = {
        let (consumer, inflight, stop) = (consumer.clone(), inflight.clone(), stop.clone());
        let runtime = tokio::runtime::Handle::current();
        std::thread::Builder::new()
            .name("vigil-consumer".into())
            .spawn(move || {
                let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    poll(&consumer, &inflight, &metrics, &slots, &tx, &stop, &runtime)
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
        thread: Some(thread),
    })
}

/// The consumer thread: takes an in-flight slot, polls (serving rebalance callbacks), registers
/// the frame and hands it to the intake. Ends on `stop` or when the intake is gone.
fn poll(
    consumer: &FramesConsumer,
    inflight: &InFlight,
    metrics: &Metrics,
    slots: &Arc<Semaphore>,
    tx: &mpsc::Sender<Record>,
    stop: &AtomicBool,
    runtime: &tokio::runtime::Handle,
) {
    const TICK: Duration = Duration::from_millis(100);
    let mut slot = None;
    while !stop.load(Ordering::Relaxed) {
        if slot.is_none() {
            // Wait for a slot, a tick at a time so that `stop` is seen.
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
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
            Some(Ok(m)) => m,
        };
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
        }
    }
}

/// Completes frames once their outcome is delivered, and stores the offsets that become
/// committable (librdkafka commits stored offsets in the background).
#[derive(Clone)]
pub struct Acknowledger {
    consumer: Arc<FramesConsumer>,
    inflight: Arc<InFlight>,
    topic: String,
}

impl Acknowledger {
    pub fn ack(&self, ticket: Ticket) {
        if let Some(next) = self.inflight.complete(ticket) {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(&self.topic, ticket.partition, Offset::Offset(next))
                .is_err()
            {
                return;
            }
            if let Err(e) = self.consumer.store_offsets(&tpl) {
                // The partition was revoked meanwhile; its new owner starts from the last commit.
                tracing::debug!(error = %e, partition = ticket.partition, "offset not stored");
            }
        }
    }
}
