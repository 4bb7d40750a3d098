//! `vigil worker`: the stages wired with bounded channels.
//!
//! ```text
//!  source (consumer thread) ─► intake ─► decode (blocking pool) ─► sequencer ─► infer ─► episodes
//!      ▲ offsets stored          │ refused            │ decode failed                      │
//!      │                         ▼                    ▼                                    ▼
//!      └──── acknowledge ◄──── sink: produce each outcome, await the broker's acknowledgement
//! ```
//!
//! Every frame read gets exactly one outcome (an observation or a dead letter). Its offset
//! becomes committable only when that outcome, and the outcome of every earlier frame of the
//! partition, has been acknowledged by the broker. All stages are joined by bounded channels and
//! an in-flight limit, so a slow stage slows the consumer instead of growing memory.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::WorkerConfig;
use super::intake::{Intake, Taken};
use super::progress::watch_queues;
use super::supervise::{spawn_infallible, spawn_stage};
use super::{load, Restorer};
use crate::codec::Codecs;
use crate::contract::{Domain, Observed, Outcome, StageError};
use crate::decode::{Decoder, Pending};
use crate::episodes::book::CameraBook;
use crate::episodes::{Judge, StateStore};
use crate::evidence::Evidence;
use crate::infer::model::Model;
use crate::infer::shed::Shedder;
use crate::infer::{FramePlan, Infer, Planner};
use crate::kafka;
use crate::sink::{Checkpoints, Emitter, Sink, Topics};
use crate::source::{self, Source, SourceConfig};
use crate::telemetry::{self, Metrics, Phase, Readiness};

/// How often delivered frames' episode state is checkpointed and their offsets stored (the
/// consumer commits stored offsets every second).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// Runs a worker until `shutdown` resolves, then drains, commits and returns.
pub async fn run(
    cfg: WorkerConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    cfg.validate().map_err(|e| anyhow!(e))?;
    let metrics = Arc::new(Metrics::new(
        cfg.camera_labels.then_some(cfg.camera_series_limit),
    ));

    let Connected {
        planner,
        models,
        codecs,
        readiness,
        link,
        endpoint,
        producer,
        dlq_producer,
        dlq_limit,
        co_partitioned,
    } = connect(&cfg, &metrics).await?;

    let evidence = match &cfg.evidence {
        Some(e) => Some(
            crate::evidence::Evidence::start(
                e,
                planner.face_detectors(),
                planner.violation_labels(),
                metrics.clone(),
            )
            .map_err(|e| anyhow!(e))?,
        ),
        None => None,
    };
    let store = Arc::new(StateStore::new());
    let cameras = Arc::new(CameraBook::new(store.ttl_ms()));
    let shedder = Arc::new(std::sync::Mutex::new(Shedder::new(
        cfg.max_staleness
            .map(|d| d.as_millis().min(i64::MAX as u128) as i64),
    )));
    let judge = Arc::new(Judge::new(
        &planner.ruleset,
        store.clone(),
        metrics.clone(),
        cfg.frames_topic.clone(),
        cfg.worker_id.clone(),
        cfg.max_staleness.is_some(),
    ));
    let (fatal_tx, mut fatal_rx) = mpsc::channel::<StageError>(4);
    let checkpoints = Arc::new(Checkpoints::default());
    let hooks = Arc::new(Restorer {
        kafka: cfg.kafka.clone(),
        group: cfg.group.clone(),
        state_topic: cfg.state_topic.clone(),
        store: store.clone(),
        cameras: cameras.clone(),
        shedder: shedder.clone(),
        frames_topic: cfg.frames_topic.clone(),
        observations_topic: cfg.observations_topic.clone(),
        co_partitioned,
        max_in_flight: cfg.max_in_flight,
        checkpoints: checkpoints.clone(),
        readiness: readiness.clone(),
    });
    let mut source = source::start(
        &SourceConfig {
            kafka: cfg.kafka.clone(),
            group: cfg.group.clone(),
            topic: cfg.frames_topic.clone(),
            drain_timeout: cfg.drain_timeout,
            session_timeout: cfg.session_timeout,
            max_in_flight: cfg.max_in_flight,
            link: link.clone(),
        },
        metrics.clone(),
        hooks,
        fatal_tx.clone(),
    )?;

    // The stages, from the sink upstream, each holding the sender of the next.
    let (out_tx, out_rx) = mpsc::channel::<Outcome>(cfg.max_in_flight.max(1));
    let sink = Arc::new(Sink {
        topics: Topics {
            frames: cfg.frames_topic.clone(),
            observations: cfg.observations_topic.clone(),
            dlq: cfg.dlq_topic.clone(),
            violations: cfg.violations_topic.clone(),
            state: cfg.state_topic.clone(),
        },
        codecs,
        worker_id: cfg.worker_id.clone(),
        dlq_producer: dlq_producer.clone(),
        dlq_limit,
        co_partitioned,
    });
    let emitter = spawn_stage(
        "sink",
        fatal_tx.clone(),
        Emitter {
            sink,
            producer: producer.clone(),
            link: link.clone(),
            acks: source.acknowledger(&cfg.frames_topic),
            checkpoints: checkpoints.clone(),
            metrics: metrics.clone(),
            checkpoint_interval: CHECKPOINT_INTERVAL,
        }
        .run(out_rx),
    );
    let (observed_tx, observed_rx) = mpsc::channel::<Observed>(cfg.batch.queue_depth() * 2);
    let mut stages = vec![spawn_infallible(
        "episodes",
        fatal_tx.clone(),
        crate::episodes::judge::run(judge, evidence.clone(), observed_rx, out_tx.clone()),
    )];
    let infer = crate::infer::start(
        Arc::new(Infer {
            shedder: shedder.clone(),
            track: cfg.track,
            run_slots: (cfg.concurrent_runs > 0)
                .then(|| Arc::new(tokio::sync::Semaphore::new(cfg.concurrent_runs))),
            planner: planner.clone(),
            metrics: metrics.clone(),
            frames_topic: cfg.frames_topic.clone(),
            worker_id: cfg.worker_id.clone(),
            debug: cfg.debug.clone(),
        }),
        models,
        cfg.batch,
        observed_tx,
    );
    for (name, task) in infer.tasks {
        stages.push(spawn_stage(name, fatal_tx.clone(), task));
    }
    let (decode_tx, decode_rx) = mpsc::channel::<Pending<FramePlan>>(cfg.decode_threads.max(1));
    let sequencer = spawn_infallible(
        "sequencer",
        fatal_tx.clone(),
        crate::decode::sequence(decode_rx, infer.input, out_tx.clone()),
    );
    let decoder = Arc::new(Decoder::new(planner.input_specs(), metrics.clone()));
    let intake = Intake {
        limits: cfg.limits,
        cameras: cameras.clone(),
        planner: planner.clone(),
        shedder: shedder.clone(),
        evidence: evidence.is_some(),
        metrics: metrics.clone(),
    };
    let gauges = tokio::spawn(watch_queues(
        metrics.clone(),
        store.clone(),
        decode_tx.downgrade(),
        out_tx.downgrade(),
        cfg.progress_interval,
    ));
    drop(fatal_tx);

    tracing::info!(group = %cfg.group, topic = %cfg.frames_topic, worker = %cfg.worker_id, "worker started");
    let failure = feed(
        &mut source,
        &intake,
        &decoder,
        &decode_tx,
        &out_tx,
        &mut fatal_rx,
        shutdown,
    )
    .await;

    drain(
        &cfg,
        Running {
            source,
            producer,
            dlq_producer,
            decode_tx,
            out_tx,
            sequencer,
            stages,
            emitter,
            gauges,
            fatal_rx,
            failure,
        },
        &readiness,
        &metrics,
        evidence.as_deref(),
        endpoint,
    )
    .await
}

/// What a worker has before it joins the group: a worker that cannot infer or publish must
/// not take partitions.
struct Connected {
    /// Which models each frame needs, by rule.
    planner: Arc<Planner>,
    /// The loaded sessions, one per model.
    models: Vec<Model>,
    /// The Avro writers (registered when a schema registry is used).
    codecs: Codecs,
    /// What `/readyz` answers.
    readiness: Readiness,
    /// Whether the brokers answer (the worker waits while they do not).
    link: kafka::BrokerLink,
    /// The `/metrics` endpoint, when `--metrics-addr` is set.
    endpoint: Option<telemetry::server::Server>,
    /// Observations, events and state records.
    producer: kafka::OutputProducer,
    /// Dead letters (batches limited to the dead-letter topic's message size).
    dlq_producer: kafka::OutputProducer,
    /// The dead-letter topic's `max.message.bytes`, when known.
    dlq_limit: Option<usize>,
    /// Whether observations go to their frame's partition number.
    co_partitioned: bool,
}

/// Loads the models, waits for the brokers, checks the topics and schemas, and opens the
/// producers and the metrics endpoint.
async fn connect(cfg: &WorkerConfig, metrics: &Arc<Metrics>) -> anyhow::Result<Connected> {
    // Models, brokers and schemas first: a worker that cannot infer or publish must not join
    // the group. Local checks come before the network's; a wrong CA or password stops the
    // worker here, naming the cause.
    let (planner, models) = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || load::models(&cfg)).await??
    };
    // Brokers that do not answer are waited for (a worker may start during an outage); a wrong
    // CA or password stops it here, naming the cause.
    kafka::wait_for_brokers_async(&cfg.kafka).await?;
    let codecs = load::codecs(cfg).await?;
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

    let readiness = Readiness::default();
    // Whether the brokers answer: `/readyz` is 503 while they do not, and the worker waits.
    let link = kafka::BrokerLink::new(readiness.clone(), metrics.clone());
    let endpoint = match cfg.metrics_addr {
        Some(addr) => {
            let server = telemetry::serve(metrics.registry.clone(), addr, readiness.clone())
                .await
                .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
            tracing::info!(addr = %server.addr, "metrics endpoint listening");
            Some(server)
        }
        None => None,
    };

    let producer = cfg
        .kafka
        .output_producer(64 * 1024 * 1024, None, &link)
        .map_err(|e| anyhow!(e))?;
    let co_partitioned = check_topics(cfg, &producer).await?;
    let dlq_limit = kafka::check_message_sizes(
        &cfg.kafka,
        &[&cfg.frames_topic, &cfg.dlq_topic],
        cfg.limits.max_frame_bytes,
    )
    .await
    .pop()
    .flatten();
    let dlq_producer = cfg
        .kafka
        .output_producer(64 * 1024 * 1024, dlq_limit, &link)
        .map_err(|e| anyhow!(e))?;

    Ok(Connected {
        planner,
        models,
        codecs,
        readiness,
        link,
        endpoint,
        producer,
        dlq_producer,
        dlq_limit,
        co_partitioned,
    })
}

/// Reads frames until `shutdown` resolves or a stage fails, handing each to the intake: a
/// refused frame goes to the sink as a dead letter, an admitted one to the decoders (on the
/// blocking pool). Returns the failure, if one ended it.
async fn feed(
    source: &mut Source,
    intake: &Intake,
    decoder: &Arc<Decoder>,
    decode_tx: &mpsc::Sender<Pending<FramePlan>>,
    out_tx: &mpsc::Sender<Outcome>,
    fatal_rx: &mut mpsc::Receiver<StageError>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Option<StageError> {
    let mut failure: Option<StageError> = None;
    tokio::pin!(shutdown);
    loop {
        let record = tokio::select! {
            _ = &mut shutdown => break,
            e = fatal_rx.recv() => { failure = e; break }
            r = source.records.recv() => match r {
                Some(r) => r,
                None => {
                    // The consumer thread ended without being asked to: it reported why.
                    failure = Some(fatal_rx.try_recv().unwrap_or_else(|_| {
                        StageError::stop("source", Domain::Internal, "the consumer thread ended")
                    }));
                    break;
                }
            },
        };
        match intake.take(record) {
            Taken::Refused(dl) => {
                if out_tx.send(Outcome::DeadLetter(dl)).await.is_err() {
                    break;
                }
            }
            Taken::Decode(job) => {
                let decoder = decoder.clone();
                let pending = tokio::task::spawn_blocking(move || decoder.run(*job));
                if decode_tx.send(pending).await.is_err() {
                    break;
                }
            }
        }
    }
    failure
}

/// A running worker's parts that the drain stops, in order.
struct Running {
    /// The frames consumer (its thread, offsets and group membership).
    source: Source,
    /// Observations, events and state records.
    producer: kafka::OutputProducer,
    /// Dead letters.
    dlq_producer: kafka::OutputProducer,
    /// The intake's sender to the decoders: dropped first, so the stages finish.
    decode_tx: mpsc::Sender<Pending<FramePlan>>,
    /// The intake's sender to the sink (dead letters).
    out_tx: mpsc::Sender<Outcome>,
    /// The stages, upstream first.
    sequencer: JoinHandle<()>,
    stages: Vec<JoinHandle<()>>,
    emitter: JoinHandle<()>,
    /// The queue-depth gauges.
    gauges: JoinHandle<()>,
    /// Failures of stages that end after the reading stopped.
    fatal_rx: mpsc::Receiver<StageError>,
    /// The failure that ended the reading, if any.
    failure: Option<StageError>,
}

/// Stops reading, lets every stage finish what it holds (within the drain timeout), commits
/// what was delivered, writes the queued evidence pictures and stops the metrics endpoint.
async fn drain(
    cfg: &WorkerConfig,
    running: Running,
    readiness: &Readiness,
    metrics: &Arc<Metrics>,
    evidence: Option<&Evidence>,
    endpoint: Option<telemetry::server::Server>,
) -> anyhow::Result<()> {
    let Running {
        mut source,
        producer,
        dlq_producer,
        decode_tx,
        out_tx,
        sequencer,
        stages,
        emitter,
        gauges,
        mut fatal_rx,
        mut failure,
    } = running;
    let consumer = source.consumer.clone();
    // Drain: stop reading, then closing the intake's senders lets each stage finish what it
    // holds and end.
    tracing::info!("worker stopping, draining in-flight frames");
    readiness.set(Phase::Stopping);
    source.stop_reading();
    drop(decode_tx);
    drop(out_tx);
    // One deadline for the whole drain: the stages, then the evidence pictures they queued.
    let deadline = tokio::time::Instant::now() + cfg.drain_timeout;
    let drained = tokio::time::timeout_at(deadline, async {
        let _ = sequencer.await;
        for h in stages {
            let _ = h.await;
        }
        emitter.await
    })
    .await;
    gauges.abort();
    if drained.is_err() {
        tracing::warn!(
            timeout_s = cfg.drain_timeout.as_secs_f64(),
            "drain timed out; undelivered frames will be processed again after restart"
        );
    }
    if failure.is_none() {
        failure = fatal_rx.try_recv().ok();
    }
    // Commit what was delivered, flush, and leave the group (the consumer's close revokes its
    // partitions through the same callback), all off the runtime.
    {
        let metrics = metrics.clone();
        tokio::task::spawn_blocking(move || {
            source.finish();
            source::commit_stored(&*consumer, &metrics);
            let _ = producer.flush(Timeout::After(Duration::from_secs(10)));
            let _ = dlq_producer.flush(Timeout::After(Duration::from_secs(10)));
            drop(source);
            drop(consumer);
        })
        .await?;
    }
    // Events already name the queued pictures: write them (they went on while the offsets were
    // committed), counting any the deadline leaves unwritten.
    if let Some(evidence) = evidence {
        evidence.drain(deadline).await;
    }
    if let Some(server) = endpoint {
        server.shutdown().await;
    }
    match failure {
        Some(e) => Err(anyhow!(e)),
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

/// Every topic must exist, and the state topic must have as many partitions as the frames topic.
/// Whether the observations topic has as many too (then observations are co-partitioned).
async fn check_topics(
    cfg: &WorkerConfig,
    producer: &kafka::OutputProducer,
) -> anyhow::Result<bool> {
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
    let co_partitioned = counts[0] == counts[1];
    if !co_partitioned {
        tracing::warn!(
            observations = counts[1],
            frames = counts[0],
            "the observations topic has another partition count than the frames topic: a frame \
             read again after a restart is admitted afresh, and load shedding may decide it \
             otherwise than its first reader did; give both topics the same count"
        );
    }
    Ok(co_partitioned)
}
