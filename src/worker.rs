//! `vigil worker`: a consumer-group member that turns frames into observations.
//!
//! ```text
//!  consumer ──► intake ──► decode (blocking pool, order kept) ──► batcher ──► model (blocking)
//!               │  validate                  │ decode failed                    │
//!               ▼                            ▼                                  ▼
//!            dead letter ────────────────► emitter ◄──────────────────── observation
//!                                            │ produce, await ack
//!                                            ▼
//!                                  offset tracker ──► store offset ──► (auto) commit
//! ```
//!
//! Every frame read gets exactly one outcome (an observation or a dead letter). Its offset
//! becomes committable only when that outcome, and the outcome of every earlier frame of the
//! partition, has been acknowledged by the broker. All stages are joined by bounded channels and
//! an in-flight limit, so a slow stage slows the consumer instead of growing memory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::statistics::Statistics;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::avro::{OBSERVATION, VIOLATION_EVENT};
use crate::batcher::BatchPolicy;
use crate::frame::{self, header, Limits, Rejection};
use crate::inference::{self, Codecs, DebugImages, Decoded, Engine};
use crate::kafka::{self, KafkaArgs};
use crate::metrics::{self, Metrics};
use crate::model::{self, ExecutionConfig, Model};
use crate::observation::{now_ms, Observation};
use crate::offsets::{OffsetTracker, Ticket};
use crate::registry::Registry;
use crate::rules::RuleSet;
use crate::state::{StateStore, StoredState};

/// Everything `vigil worker` is configured with.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub kafka: KafkaArgs,
    /// Consumer group; workers sharing it split the frames topic's partitions.
    pub group: String,
    pub frames_topic: String,
    pub observations_topic: String,
    pub dlq_topic: String,
    /// Episode events (Avro).
    pub violations_topic: String,
    /// Episode state (compacted, co-partitioned with the frames topic).
    pub state_topic: String,
    pub limits: Limits,
    /// Model pack directory; found automatically when `None`.
    pub model_dir: Option<PathBuf>,
    /// Rules file; the built-in default when `None`.
    pub rules: Option<PathBuf>,
    /// Annotated debug images for some cameras.
    pub debug: Option<DebugImages>,
    /// ONNX Runtime library; found automatically when `None`.
    pub ort_lib: Option<PathBuf>,
    pub exec: ExecutionConfig,
    pub batch: BatchPolicy,
    /// Frames decoded concurrently.
    pub decode_threads: usize,
    /// Frames read but not yet delivered, at most.
    pub max_in_flight: usize,
    /// Address of the `/metrics` endpoint, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Longest wait for in-flight frames at shutdown or revoke.
    pub drain_timeout: Duration,
    /// Name written into observations and dead letters.
    pub worker_id: String,
    /// Interval of the progress log line.
    pub progress_interval: Duration,
    /// Export per-camera metric series.
    pub camera_labels: bool,
    /// Confluent-compatible schema registry: Avro in the Confluent wire format when set,
    /// single-object encoding otherwise.
    pub schema_registry: Option<String>,
}

/// A default worker id: host name and process id.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "vigil".into());
    format!("{host}-{}", std::process::id())
}

/// Frames in flight, shared by the intake (registers), the emitter (completes) and the
/// rebalance callback (waits for a revoked partition to drain).
struct InFlight {
    tracker: Mutex<OffsetTracker>,
    /// Signalled whenever a frame completes, for `wait_drained`.
    changed: Condvar,
    metrics: Arc<Metrics>,
}

impl InFlight {
    fn register(&self, partition: i32, offset: i64) -> Ticket {
        let mut t = self.tracker.lock().expect("tracker lock");
        let ticket = t.register(partition, offset);
        self.metrics
            .frames_in_flight
            .set(t.total_in_flight() as i64);
        ticket
    }

    fn complete(&self, ticket: Ticket) -> Option<i64> {
        let mut t = self.tracker.lock().expect("tracker lock");
        let point = t.complete(ticket);
        self.metrics
            .frames_in_flight
            .set(t.total_in_flight() as i64);
        self.changed.notify_all();
        point
    }

    /// Blocks until the partitions have nothing in flight or `timeout` passes; true if drained.
    fn wait_drained(&self, partitions: &[i32], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut t = self.tracker.lock().expect("tracker lock");
        loop {
            if partitions.iter().all(|p| t.in_flight(*p) == 0) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            t = self
                .changed
                .wait_timeout(t, deadline - now)
                .expect("tracker lock")
                .0;
        }
    }

    fn revoke(&self, partitions: &[i32]) {
        let mut t = self.tracker.lock().expect("tracker lock");
        t.revoke(partitions);
        self.metrics
            .frames_in_flight
            .set(t.total_in_flight() as i64);
    }
}

/// Consumer callbacks: drain before giving partitions away, lag from statistics.
struct WorkerContext {
    inflight: Arc<InFlight>,
    metrics: Arc<Metrics>,
    topic: String,
    drain_timeout: Duration,
    /// Episode state of the assigned partitions: restored on assign, dropped on revoke.
    store: Arc<StateStore>,
    /// For the restore consumer.
    kafka: KafkaArgs,
    group: String,
    state_topic: String,
    /// A partition whose state cannot be restored stops the worker.
    fatal: mpsc::Sender<anyhow::Error>,
}

/// Reads a partition of the state topic from the beginning to its end and returns the latest
/// entry per key. Blocking.
fn restore_partition(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    partition: i32,
    timeout: Duration,
) -> Result<Vec<StoredState>, String> {
    use rdkafka::consumer::BaseConsumer;
    let consumer: BaseConsumer = kafka
        .config(&[
            ("group.id", &format!("{group}.state-restore")),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "5"),
        ])?
        .create()
        .map_err(|e| format!("restore consumer: {e}"))?;
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .map_err(|e| format!("watermarks of {topic}/{partition}: {e}"))?;
    let mut latest: std::collections::HashMap<String, StoredState> = Default::default();
    if high > low {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, partition, Offset::Offset(low))
            .map_err(|e| e.to_string())?;
        consumer.assign(&tpl).map_err(|e| e.to_string())?;
        let deadline = Instant::now() + timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(format!(
                    "timed out reading {topic}/{partition} up to offset {high}"
                ));
            }
            match consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(e)) => return Err(format!("reading {topic}/{partition}: {e}")),
                Some(Ok(m)) => {
                    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                    match (key, m.payload()) {
                        (Some(k), Some(v)) => match serde_json::from_slice::<StoredState>(v) {
                            Ok(s) => {
                                latest.insert(k, s);
                            }
                            Err(e) => {
                                return Err(format!(
                                    "{topic}/{partition}@{}: unreadable state: {e}",
                                    m.offset()
                                ))
                            }
                        },
                        (Some(k), None) => {
                            latest.remove(&k);
                        }
                        _ => {}
                    }
                    if m.offset() >= high - 1 {
                        break;
                    }
                }
            }
        }
    }
    Ok(latest.into_values().collect())
}

impl ClientContext for WorkerContext {
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

fn partitions_of(tpl: &TopicPartitionList, topic: &str) -> Vec<i32> {
    tpl.elements_for_topic(topic)
        .iter()
        .map(|e| e.partition())
        .collect()
}

/// Commits stored offsets; "nothing stored" is not an error.
fn commit_stored<C: ConsumerContext, K: Consumer<C>>(consumer: &K, metrics: &Metrics) {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => metrics.offsets_committed.inc(),
        Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
        Err(e) => {
            tracing::warn!(error = %e, "offset commit failed; frames since the last commit will be processed again")
        }
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let parts = partitions_of(tpl, &self.topic);
            let drained = self.inflight.wait_drained(&parts, self.drain_timeout);
            commit_stored(consumer, &self.metrics);
            self.inflight.revoke(&parts);
            self.store.remove(&parts);
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
                // Restore each partition's episode state before any of its frames is read.
                for &p in &parts {
                    match restore_partition(
                        &self.kafka,
                        &self.group,
                        &self.state_topic,
                        p,
                        Duration::from_secs(60),
                    ) {
                        Ok(entries) => {
                            tracing::info!(
                                partition = p,
                                entries = entries.len(),
                                "episode state restored"
                            );
                            self.store.install(p, entries);
                        }
                        Err(e) => {
                            tracing::error!(partition = p, error = %e, "episode state not restored; stopping");
                            let _ = self.fatal.try_send(anyhow!(
                                "cannot restore the episode state of partition {p}: {e}"
                            ));
                        }
                    }
                }
                tracing::info!(partitions = ?parts, "partitions assigned");
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

type WorkerConsumer = StreamConsumer<WorkerContext>;

/// Where a frame came from, and its place in flight.
pub(crate) struct Origin {
    pub(crate) ticket: Ticket,
    /// One of `max_in_flight` slots; released when the outcome is delivered (or dropped).
    _slot: OwnedSemaphorePermit,
}

/// A frame that failed a check, with everything needed to dead-letter it unchanged.
pub(crate) struct DeadLetter {
    pub(crate) origin: Origin,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) headers: Vec<(String, Vec<u8>)>,
    pub(crate) payload: Vec<u8>,
    pub(crate) rejection: Rejection,
}

/// What the emitter publishes for a frame.
pub(crate) enum Outcome {
    Observation(Origin, Box<Judged>),
    DeadLetter(Box<DeadLetter>),
}

/// A frame's observation with the episode events and state changes it caused.
pub(crate) struct Judged {
    pub(crate) obs: Observation,
    /// `obs`, encoded (Avro).
    pub(crate) observation: Vec<u8>,
    /// Encoded (Avro) events, keyed by camera.
    pub(crate) events: Vec<(String, Vec<u8>)>,
    /// State-topic records (key, JSON), written once the events are acknowledged.
    pub(crate) states: Vec<(String, Vec<u8>)>,
}

/// Static facts the source and sink need.
struct Ctx {
    cfg: WorkerConfig,
    metrics: Arc<Metrics>,
}

/// Loads ONNX Runtime, the rules and every model they use; checks them against each other.
fn load_engine(
    cfg: &WorkerConfig,
    metrics: Arc<Metrics>,
    codecs: Codecs,
) -> anyhow::Result<(Engine, Vec<Model>)> {
    let (env, lib) = crate::runtime::init(cfg.ort_lib.as_deref())?;
    let ruleset = RuleSet::load(cfg.rules.as_deref())?;
    let dir = model::locate_pack(cfg.model_dir.as_deref()).ok_or_else(|| {
        anyhow!("no model pack found: pass --model-dir or set VIGIL_MODEL_DIR to the folder holding the manifests")
    })?;
    let mut models = Vec::new();
    for name in ruleset.models() {
        let manifest = model::find_manifest(&dir, &name)?;
        let m = Model::load(env, manifest, cfg.exec)?;
        tracing::info!(model = %m.manifest.name, version = %m.manifest.version, task = ?m.manifest.task,
            provider = m.provider, requested = %cfg.exec.device, library = %lib.display(), dir = %dir.display(), "model loaded");
        models.push(m);
    }
    let engine = Engine::new(
        ruleset,
        &models,
        metrics,
        cfg.frames_topic.clone(),
        cfg.worker_id.clone(),
        cfg.debug.clone(),
        codecs,
    )
    .map_err(|e| anyhow!("{e}"))?;
    Ok((engine, models))
}

/// Runs a worker until `shutdown` resolves, then drains, commits and returns.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new(cfg.camera_labels));

    // Schemas and models first: a worker that cannot publish or infer must not join the group.
    let codecs = match &cfg.schema_registry {
        None => Codecs::single_object(),
        Some(url) => {
            let registry = Registry::new(url).map_err(|e| anyhow!(e))?;
            let patience = Duration::from_secs(30);
            Codecs {
                observations: registry
                    .codec_for(&OBSERVATION, &cfg.observations_topic, patience)
                    .await
                    .context("cannot register the observation schema (--schema-registry)")?,
                events: registry
                    .codec_for(&VIOLATION_EVENT, &cfg.violations_topic, patience)
                    .await
                    .context("cannot register the violation event schema (--schema-registry)")?,
            }
        }
    };
    let (engine, models) = {
        let cfg = cfg.clone();
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || load_engine(&cfg, metrics, codecs)).await??
    };
    for m in &models {
        metrics
            .model_info
            .with_label_values(&[
                &m.manifest.name,
                &m.manifest.version,
                m.provider,
                &cfg.exec.device.to_string(),
            ])
            .set(1);
    }
    let engine = Arc::new(engine);

    if let Some(addr) = cfg.metrics_addr {
        let bound = metrics::serve(metrics.registry.clone(), addr)
            .await
            .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
        tracing::info!(addr = %bound, "metrics endpoint listening");
    }

    let producer = cfg
        .kafka
        .producer(64 * 1024 * 1024)
        .map_err(|e| anyhow!(e))?;
    {
        let p = producer.clone();
        let topics = [
            cfg.frames_topic.clone(),
            cfg.observations_topic.clone(),
            cfg.dlq_topic.clone(),
            cfg.violations_topic.clone(),
            cfg.state_topic.clone(),
        ];
        let counts = tokio::task::spawn_blocking(move || {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            kafka::partition_counts(p.client(), &names, Duration::from_secs(15))
        })
        .await?
        .map_err(|e| anyhow!(e))?;
        if counts[0] != counts[4] {
            return Err(anyhow!(
                "the state topic `{}` has {} partitions but the frames topic `{}` has {}: they must have the same \
                 count (state is co-partitioned with frames); recreate the state topic",
                cfg.state_topic, counts[4], cfg.frames_topic, counts[0]
            ));
        }
    }

    let inflight = Arc::new(InFlight {
        tracker: Mutex::new(OffsetTracker::new()),
        changed: Condvar::new(),
        metrics: metrics.clone(),
    });
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<anyhow::Error>(4);
    let context = WorkerContext {
        inflight: inflight.clone(),
        metrics: metrics.clone(),
        topic: cfg.frames_topic.clone(),
        drain_timeout: cfg.drain_timeout,
        store: engine.store.clone(),
        kafka: cfg.kafka.clone(),
        group: cfg.group.clone(),
        state_topic: cfg.state_topic.clone(),
        fatal: fatal_tx.clone(),
    };
    let consumer: Arc<WorkerConsumer> = Arc::new(
        cfg.kafka
            .config(&[
                ("group.id", &cfg.group),
                ("enable.auto.commit", "true"),
                ("auto.commit.interval.ms", "1000"),
                ("enable.auto.offset.store", "false"),
                ("auto.offset.reset", "earliest"),
                ("fetch.wait.max.ms", "5"),
                ("session.timeout.ms", "10000"),
                ("heartbeat.interval.ms", "1000"),
                ("statistics.interval.ms", "5000"),
            ])
            .map_err(|e| anyhow!(e))?
            .create_with_context(context)
            .context("cannot create consumer")?,
    );
    consumer
        .subscribe(&[&cfg.frames_topic])
        .context("cannot subscribe to the frames topic")?;

    let ctx = Arc::new(Ctx {
        metrics: metrics.clone(),
        cfg: cfg.clone(),
    });

    type DecodeJob = JoinHandle<Result<Decoded, Box<DeadLetter>>>;
    let (decode_tx, decode_rx) = mpsc::channel::<DecodeJob>(cfg.decode_threads.max(1));
    let (out_tx, out_rx) = mpsc::channel::<Outcome>(cfg.max_in_flight.max(1));

    let (frame_tx, stage_handles) = inference::start(
        engine.clone(),
        models,
        cfg.batch,
        out_tx.clone(),
        fatal_tx.clone(),
    );
    let sequencer = inference::spawn_stage(
        "sequencer",
        fatal_tx.clone(),
        sequence(decode_rx, frame_tx, out_tx.clone()),
    );
    let emitter = tokio::spawn(emit(
        ctx.clone(),
        producer.clone(),
        consumer.clone(),
        inflight.clone(),
        out_rx,
        fatal_tx,
    ));
    let gauges = tokio::spawn(watch_queues(
        metrics.clone(),
        engine.store.clone(),
        decode_tx.downgrade(),
        out_tx.downgrade(),
        cfg.progress_interval,
    ));

    tracing::info!(group = %cfg.group, topic = %cfg.frames_topic, worker = %cfg.worker_id, "worker started");
    let slots = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let mut failure: Option<anyhow::Error> = None;
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            _ = &mut shutdown => break,
            e = fatal_rx.recv() => { failure = e; break }
            s = slots.clone().acquire_owned() => s.expect("semaphore is never closed"),
        };
        let msg = tokio::select! {
            _ = &mut shutdown => break,
            e = fatal_rx.recv() => { failure = e; break }
            m = consumer.recv() => m,
        };
        let msg = match msg {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "consumer error");
                continue;
            }
        };
        metrics.frames_received.inc();
        let origin = Origin {
            ticket: inflight.register(msg.partition(), msg.offset()),
            _slot: slot,
        };
        let key = msg.key().map(<[u8]>::to_vec);
        let headers = kafka::headers_to_vec(msg.headers());
        let payload = msg.payload().unwrap_or_default().to_vec();
        drop(msg);
        match frame::validate(key.as_deref(), &headers, &payload, &cfg.limits) {
            Err(rejection) => {
                let dl = DeadLetter {
                    origin,
                    key,
                    headers,
                    payload,
                    rejection,
                };
                if out_tx
                    .send(Outcome::DeadLetter(Box::new(dl)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok((meta, info)) => {
                if let Some(g) = &metrics.camera_last_frame {
                    g.with_label_values(&[&meta.site, &meta.camera])
                        .set(meta.captured_at_ms as f64 / 1e3);
                }
                let engine = engine.clone();
                let job = tokio::task::spawn_blocking(move || {
                    inference::decode_frame(&engine, origin, meta, info, key, headers, payload)
                });
                if decode_tx.send(job).await.is_err() {
                    break;
                }
            }
        }
    }

    // Drain: closing the intake's senders lets each stage finish what it holds and end.
    tracing::info!("worker stopping, draining in-flight frames");
    drop(decode_tx);
    drop(out_tx);
    let drained = tokio::time::timeout(cfg.drain_timeout, async {
        let _ = sequencer.await;
        for h in stage_handles {
            let _ = h.await;
        }
        emitter.await
    })
    .await;
    gauges.abort();
    match drained {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => failure = failure.or(Some(e)),
        Ok(Err(e)) => failure = failure.or(Some(anyhow!("emitter panicked: {e}"))),
        Err(_) => tracing::warn!(
            timeout_s = cfg.drain_timeout.as_secs_f64(),
            "drain timed out; undelivered frames will be processed again after restart"
        ),
    }
    if failure.is_none() {
        if let Ok(e) = fatal_rx.try_recv() {
            failure = Some(e);
        }
    }
    {
        let consumer = consumer.clone();
        let metrics = metrics.clone();
        let producer = producer.clone();
        tokio::task::spawn_blocking(move || {
            commit_stored(&*consumer, &metrics);
            let _ = producer.flush(Timeout::After(Duration::from_secs(10)));
        })
        .await?;
    }
    match failure {
        Some(e) => Err(e),
        None => {
            tracing::info!(
                processed = metrics.frames_processed.get(),
                received = metrics.frames_received.get(),
                "worker stopped cleanly"
            );
            Ok(())
        }
    }
}

/// Awaits decode jobs in the order frames were read, so each camera's frames reach the
/// inference stages (and the observations topic) in order although they decode in parallel.
async fn sequence(
    mut jobs: mpsc::Receiver<JoinHandle<Result<Decoded, Box<DeadLetter>>>>,
    frame_tx: mpsc::Sender<Decoded>,
    out_tx: mpsc::Sender<Outcome>,
) {
    while let Some(job) = jobs.recv().await {
        let sent = match job.await {
            Ok(Ok(d)) => frame_tx.send(d).await.is_ok(),
            Ok(Err(dl)) => out_tx.send(Outcome::DeadLetter(dl)).await.is_ok(),
            Err(e) => {
                tracing::error!(error = %e, "decode task panicked");
                false
            }
        };
        if !sent {
            return;
        }
    }
}

/// Result of one produce: the frame it settles, and how it went.
struct Delivery {
    origin: Origin,
    result: Result<(), KafkaError>,
    took: Duration,
    /// Some(captured_at) for observations (end-to-end latency), None for dead letters.
    captured_at_ms: Option<i64>,
    reason: Option<frame::Reason>,
}

/// Produces outcomes, and stores offsets as their deliveries are acknowledged.
async fn emit(
    ctx: Arc<Ctx>,
    producer: FutureProducer,
    consumer: Arc<WorkerConsumer>,
    inflight: Arc<InFlight>,
    mut rx: mpsc::Receiver<Outcome>,
    fatal: mpsc::Sender<anyhow::Error>,
) -> anyhow::Result<()> {
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some(d) = pending.next(), if !pending.is_empty() => {
                let d: Delivery = d;
                match d.result {
                    Ok(()) => {
                        ctx.metrics.produce_seconds.observe(d.took.as_secs_f64());
                        match (d.captured_at_ms, d.reason) {
                            (Some(at), _) => {
                                ctx.metrics.frames_processed.inc();
                                let e2e = (now_ms() - at).max(0) as f64 / 1e3;
                                ctx.metrics.end_to_end_seconds.observe(e2e);
                            }
                            (None, Some(reason)) => ctx.metrics.frames_dead_lettered.with_label_values(&[reason.as_str()]).inc(),
                            (None, None) => {}
                        }
                        if let Some(next) = inflight.complete(d.origin.ticket) {
                            let mut tpl = TopicPartitionList::new();
                            tpl.add_partition_offset(&ctx.cfg.frames_topic, d.origin.ticket.partition, Offset::Offset(next))
                                .expect("valid offset");
                            if let Err(e) = consumer.store_offsets(&tpl) {
                                // The partition was revoked meanwhile; its new owner starts from the last commit.
                                tracing::debug!(error = %e, partition = d.origin.ticket.partition, "offset not stored");
                            }
                        }
                    }
                    Err(e) => {
                        ctx.metrics.producer_errors.inc();
                        let err = anyhow!(
                            "delivery failed for the frame at partition {} offset {}: {e}; stopping so that it is not committed",
                            d.origin.ticket.partition, d.origin.ticket.offset
                        );
                        tracing::error!(error = %err, "producer failed");
                        let _ = fatal.send(anyhow!("{err}")).await;
                        return Err(err);
                    }
                }
            }
            o = rx.recv(), if open => match o {
                Some(o) => pending.push(produce(&ctx, &producer, o)),
                None => open = false,
            },
            else => return Ok(()),
        }
    }
}

/// Starts producing one outcome; the future resolves when the broker acknowledged it.
fn produce(
    ctx: &Ctx,
    producer: &FutureProducer,
    outcome: Outcome,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Delivery> + Send>> {
    let producer = producer.clone();
    match outcome {
        Outcome::Observation(origin, judged) => {
            let cfg = ctx.cfg.clone();
            Box::pin(async move {
                let t = Instant::now();
                let Judged {
                    obs,
                    observation: payload,
                    events,
                    states,
                } = *judged;
                let partition = origin.ticket.partition;
                // Phase 1: the observation and the episode events, concurrently.
                let mut first = Vec::with_capacity(1 + events.len());
                let obs_headers = kafka::headers_from([
                    (header::CAMERA, obs.camera.as_bytes()),
                    (header::SITE, obs.site.as_bytes()),
                    (
                        "content-type",
                        b"application/vnd.apache.avro+binary".as_slice(),
                    ),
                ]);
                first.push(
                    enqueue(
                        &producer,
                        &cfg.observations_topic,
                        obs.camera.as_bytes(),
                        &payload,
                        obs_headers,
                        None,
                    )
                    .await,
                );
                for (key, value) in &events {
                    let h = kafka::headers_from([(
                        "content-type",
                        b"application/vnd.apache.avro+binary".as_slice(),
                    )]);
                    first.push(
                        enqueue(
                            &producer,
                            &cfg.violations_topic,
                            key.as_bytes(),
                            value,
                            h,
                            None,
                        )
                        .await,
                    );
                }
                let mut result = settle_all(first).await;
                // Phase 2: the state, only once the events it accounts for are acknowledged, and
                // into the frame's own partition number (co-partitioned).
                if result.is_ok() && !states.is_empty() {
                    let mut second = Vec::with_capacity(states.len());
                    for (key, value) in &states {
                        let h = rdkafka::message::OwnedHeaders::new();
                        second.push(
                            enqueue(
                                &producer,
                                &cfg.state_topic,
                                key.as_bytes(),
                                value,
                                h,
                                Some(partition),
                            )
                            .await,
                        );
                    }
                    result = settle_all(second).await;
                }
                Delivery {
                    origin,
                    result,
                    took: t.elapsed(),
                    captured_at_ms: Some(obs.captured_at_ms),
                    reason: None,
                }
            })
        }
        Outcome::DeadLetter(dl) => {
            let topic = ctx.cfg.dlq_topic.clone();
            let source_topic = ctx.cfg.frames_topic.clone();
            let worker = ctx.cfg.worker_id.clone();
            tracing::debug!(reason = %dl.rejection.reason, detail = %dl.rejection.detail,
                partition = dl.origin.ticket.partition, offset = dl.origin.ticket.offset, "frame dead-lettered");
            Box::pin(async move {
                let t = Instant::now();
                let DeadLetter {
                    origin,
                    key,
                    headers,
                    payload,
                    rejection,
                } = *dl;
                let partition = origin.ticket.partition.to_string();
                let offset = origin.ticket.offset.to_string();
                let mut all: Vec<(&str, &[u8])> = headers
                    .iter()
                    .filter(|(k, _)| {
                        !k.starts_with("reason") && !k.starts_with("source_") && k != header::WORKER
                    })
                    .map(|(k, v)| (k.as_str(), v.as_slice()))
                    .collect();
                all.extend([
                    (header::REASON, rejection.reason.as_str().as_bytes()),
                    (header::REASON_DETAIL, rejection.detail.as_bytes()),
                    (header::SOURCE_TOPIC, source_topic.as_bytes()),
                    (header::SOURCE_PARTITION, partition.as_bytes()),
                    (header::SOURCE_OFFSET, offset.as_bytes()),
                    (header::WORKER, worker.as_bytes()),
                ]);
                let mut rec = FutureRecord::to(&topic)
                    .payload(&payload)
                    .headers(kafka::headers_from(all));
                if let Some(k) = key.as_deref() {
                    rec = rec.key(k);
                }
                let result = producer
                    .send(rec, Timeout::Never)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e);
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

/// Hands a record to the producer, waiting while its queue is full; the future resolves on the
/// broker's acknowledgement.
async fn enqueue(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    value: &[u8],
    headers: rdkafka::message::OwnedHeaders,
    partition: Option<i32>,
) -> Result<rdkafka::producer::DeliveryFuture, KafkaError> {
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

/// Waits for every delivery; the first error, if any. Each produce call either queues (and is
/// awaited) or fails at once (queue full is retried by waiting briefly).
async fn settle_all(
    sends: Vec<Result<rdkafka::producer::DeliveryFuture, KafkaError>>,
) -> Result<(), KafkaError> {
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
    result
}

/// Updates queue-depth gauges every second and logs a progress line at `interval`. Holds only
/// weak senders so that it never keeps a stage alive.
async fn watch_queues(
    metrics: Arc<Metrics>,
    store: Arc<StateStore>,
    decode: mpsc::WeakSender<JoinHandle<Result<Decoded, Box<DeadLetter>>>>,
    output: mpsc::WeakSender<Outcome>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_log = Instant::now();
    let mut last_processed = 0;
    loop {
        tick.tick().await;
        let open = store.open_episodes();
        metrics.episodes_open.reset();
        for ((site, rule), n) in open {
            metrics
                .episodes_open
                .with_label_values(&[&site, &rule])
                .set(n);
        }
        if let Some(s) = decode.upgrade() {
            metrics
                .queue_depth
                .with_label_values(&["decode"])
                .set((s.max_capacity() - s.capacity()) as i64);
        }
        if let Some(s) = output.upgrade() {
            metrics
                .queue_depth
                .with_label_values(&["output"])
                .set((s.max_capacity() - s.capacity()) as i64);
        }
        if last_log.elapsed() >= interval {
            let processed = metrics.frames_processed.get();
            let rate = (processed - last_processed) as f64 / last_log.elapsed().as_secs_f64();
            let dead: u64 = frame::Reason::ALL
                .iter()
                .map(|r| {
                    metrics
                        .frames_dead_lettered
                        .with_label_values(&[r.as_str()])
                        .get()
                })
                .sum();
            tracing::info!(
                received = metrics.frames_received.get(),
                processed,
                dead_lettered = dead,
                in_flight = metrics.frames_in_flight.get(),
                rate_per_s = format!("{rate:.1}"),
                "worker progress"
            );
            last_log = Instant::now();
            last_processed = processed;
        }
    }
}
