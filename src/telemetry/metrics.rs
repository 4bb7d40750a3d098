//! Prometheus metrics: every handle a worker or gateway counts with.
//!
//! Every metric vigil exports is registered here, so this file and the catalogue in
//! `docs/metrics.md` can be compared line by line (a test does). Labels stay low-cardinality:
//! reason codes, model names, partitions; never camera ids.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::cameras::CameraSeries;
use crate::contract::Reason;

/// Buckets for per-stage latencies: 0.5 ms to 10 s.
const STAGE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Buckets for end-to-end latency from capture to delivered observation: 10 ms to 2 min.
const E2E_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// All metric handles of a worker or gateway process.
#[derive(Clone)]
pub struct Metrics {
    /// The registry `/metrics` encodes.
    pub registry: Registry,
    pub frames_received: IntCounter,
    pub frames_processed: IntCounter,
    pub frames_dead_lettered: IntCounterVec,
    /// Frames not judged, by reason (`skipped_stale`: load shedding).
    pub frames_skipped: IntCounterVec,
    /// Detection crops per rule: `classified` (the classifier ran) or `reused` (a still track's
    /// last scores).
    pub crops: IntCounterVec,
    /// Frames of close-up cameras searched again because a rule kept no detection, per rule,
    /// by outcome (`found`: the second search found a face; `whole`: the frame is judged whole).
    pub closeup_searches: IntCounterVec,
    pub decode_seconds: Histogram,
    pub preprocess_seconds: Histogram,
    pub inference_seconds: HistogramVec,
    pub batch_size: HistogramVec,
    pub produce_seconds: Histogram,
    pub end_to_end_seconds: Histogram,
    pub frames_in_flight: IntGauge,
    pub queue_depth: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    pub partitions_assigned: IntGauge,
    pub model_info: IntGaugeVec,
    pub rule_outcomes: IntCounterVec,
    pub episode_events: IntCounterVec,
    pub episodes_open: IntGaugeVec,
    pub violation_seconds: prometheus::CounterVec,
    pub frames_stale: IntCounterVec,
    /// Per-camera series; `None` when camera labels are switched off (cardinality budget).
    /// Per-camera series (last frame, violations), bounded; `None` when switched off.
    pub cameras: Option<std::sync::Arc<CameraSeries>>,
    pub producer_errors: IntCounter,
    /// Errors the frames consumer reported: `unreadable` data (the same batch fails on every
    /// fetch) or `other` (broker or transport trouble, waited out).
    pub consumer_errors: IntCounterVec,
    pub offsets_committed: IntCounter,
    /// Times the worker lost every broker (librdkafka's `AllBrokersDown`): it waits for them,
    /// not ready, instead of stopping.
    pub broker_outages: IntCounter,
    /// 1 while the brokers answer, 0 while none can be reached.
    pub broker_reachable: IntGauge,
    pub build_info: IntGaugeVec,
    /// Evidence pictures by outcome: `written`, `retried` (a failed attempt that will be
    /// retried), `failed` (not drawn, or not written after the retries), `dropped` (queue full
    /// or closed at shutdown), `abandoned` (still unwritten when the shutdown drain ended).
    pub evidence_writes: IntCounterVec,
    /// Time to draw and encode one evidence picture.
    pub evidence_render_seconds: Histogram,
}

/// Metrics of a gateway process (its own registry: a worker never exposes them).
#[derive(Clone)]
pub struct GatewayMetrics {
    pub registry: Registry,
    pub frames_sent: IntCounter,
    pub errors: IntCounterVec,
}

impl GatewayMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let m = GatewayMetrics {
            frames_sent: reg(
                &r,
                IntCounter::new(
                    "vigil_gateway_frames_sent_total",
                    "Frames the gateway delivered to the frames topic.",
                )
                .expect("valid"),
            ),
            errors: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vigil_gateway_errors_total",
                        "Gateway failures, by kind (capture, encode, oversize, delivery).",
                    ),
                    &["kind"],
                )
                .expect("valid"),
            ),
            registry: r,
        };
        for kind in ["capture", "encode", "oversize", "delivery"] {
            m.errors.with_label_values(&[kind]);
        }
        m
    }
}

impl Default for GatewayMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The metrics of `vigil ingest`.
pub struct IngestMetrics {
    pub registry: Registry,
    /// Uploads answered, by HTTP status code.
    pub uploads: IntCounterVec,
    /// Image bytes of accepted uploads.
    pub bytes: IntCounter,
    /// From the request's arrival to the broker's acknowledgement, for accepted uploads.
    pub ack_seconds: Histogram,
}

impl IngestMetrics {
    pub fn new() -> Self {
        let r = Registry::new();
        let m = IngestMetrics {
            uploads: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vigil_ingest_uploads_total",
                        "Uploads answered, by HTTP status code.",
                    ),
                    &["code"],
                )
                .expect("valid"),
            ),
            bytes: reg(
                &r,
                IntCounter::new(
                    "vigil_ingest_bytes_total",
                    "Image bytes of accepted uploads.",
                )
                .expect("valid"),
            ),
            ack_seconds: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "vigil_ingest_ack_seconds",
                        "Seconds from an upload's arrival to the broker's acknowledgement.",
                    )
                    .buckets(vec![
                        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ]),
                )
                .expect("valid"),
            ),
            registry: r,
        };
        for code in [
            "202", "400", "401", "403", "408", "413", "415", "429", "503",
        ] {
            m.uploads.with_label_values(&[code]);
        }
        m
    }
}

impl Default for IngestMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The Prometheus text exposition of a registry.
pub fn encode(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding cannot fail");
    String::from_utf8(buf).expect("text format is UTF-8")
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique and valid");
    m
}

impl Metrics {
    /// `camera_limit`: export per-camera series (one, plus one per rule violated) for at most
    /// this many cameras at once; `None` exports none.
    pub fn new(camera_limit: Option<usize>) -> Self {
        let r = Registry::new();
        // process_cpu_seconds_total, process_resident_memory_bytes…: what the load tool reads
        // to report a worker's CPU use.
        r.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("the process collector registers once");
        let counter = |name: &str, help: &str| reg(&r, IntCounter::new(name, help).expect("valid"));
        let hist = |name: &str, help: &str, buckets: &[f64]| {
            reg(
                &r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
                    .expect("valid"),
            )
        };
        let m = Metrics {
            frames_received: counter(
                "vigil_frames_received_total",
                "Frames read from the frames topic.",
            ),
            frames_processed: counter(
                "vigil_frames_processed_total",
                "Frames whose observation was delivered to the observations topic.",
            ),
            frames_dead_lettered: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vigil_frames_dead_lettered_total",
                        "Frames delivered to the dead-letter topic, by reason code.",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            frames_skipped: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vigil_frames_skipped_total",
                        "Frames observed without being judged, by reason (skipped_stale: load shedding).",
                    ),
                    &["reason"],
                )
                .expect("valid"),
            ),
            crops: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vigil_crops_total",
                        "Detection crops per rule: classified, or reused from a still track.",
                    ),
                    &["rule", "outcome"],
                )
                .expect("valid"),
            ),
            closeup_searches: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vigil_closeup_searches_total",
                        "Frames of close-up cameras searched again, shrunk, after a rule kept no \
                         detection: per rule, found (a face) or whole (the frame judged whole).",
                    ),
                    &["rule", "outcome"],
                )
                .expect("valid"),
            ),
            decode_seconds: hist(
                "vigil_decode_duration_seconds",
                "Time to decode one JPEG frame.",
                STAGE_BUCKETS,
            ),
            preprocess_seconds: hist(
                "vigil_preprocess_duration_seconds",
                "Time to resize and normalise one image into a model input.",
                STAGE_BUCKETS,
            ),
            inference_seconds: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "vigil_inference_duration_seconds",
                        "Time of one model run over one batch.",
                    )
                    .buckets(STAGE_BUCKETS.to_vec()),
                    &["model"],
                )
                .expect("valid"),
            ),
            batch_size: reg(
                &r,
                HistogramVec::new(
                    HistogramOpts::new("vigil_batch_size", "Items per model run.")
                        .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
                    &["model"],
                )
                .expect("valid"),
            ),
            produce_seconds: hist(
                "vigil_produce_duration_seconds",
                "Time from handing an output record to the producer until the broker acknowledged it.",
                STAGE_BUCKETS,
            ),
            end_to_end_seconds: hist(
                "vigil_end_to_end_latency_seconds",
                "Time from a frame's captured_at until its observation was acknowledged.",
                E2E_BUCKETS,
            ),
            frames_in_flight: reg(
                &r,
                IntGauge::new(
                    "vigil_frames_in_flight",
                    "Frames read but whose outcome is not yet delivered.",
                )
                .expect("valid"),
            ),
            queue_depth: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("vigil_queue_depth", "Items waiting in a pipeline stage's queue."),
                    &["stage"],
                )
                .expect("valid"),
            ),
            consumer_lag: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "vigil_consumer_lag_messages",
                        "Messages between the partition's high watermark and this worker's position.",
                    ),
                    &["topic", "partition"],
                )
                .expect("valid"),
            ),
            partitions_assigned: reg(
                &r,
                IntGauge::new(
                    "vigil_partitions_assigned",
                    "Frames-topic partitions currently assigned to this worker.",
                )
                .expect("valid"),
            ),
            model_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "vigil_model_info",
                        "Models loaded, with the execution provider that really runs them (value 1).",
                    ),
                    &["model", "version", "provider", "requested_device"],
                )
                .expect("valid"),
            ),
            rule_outcomes: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vigil_frames_evaluated_total",
                        "Frames evaluated per site and rule, by verdict (compliant, violation, unknown).",
                    ),
                    &["site", "rule", "verdict"],
                )
                .expect("valid"),
            ),
            episode_events: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vigil_episode_events_total",
                        "Episode events published, per rule and kind (opened, updated, resolved).",
                    ),
                    &["rule", "kind"],
                )
                .expect("valid"),
            ),
            episodes_open: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "vigil_episodes_open",
                        "Violation episodes open (or clearing) on this worker's partitions, per site and rule.",
                    ),
                    &["site", "rule"],
                )
                .expect("valid"),
            ),
            violation_seconds: reg(
                &r,
                prometheus::CounterVec::new(
                    Opts::new(
                        "vigil_violation_seconds_total",
                        "Event-time seconds cameras spent in an open violation episode, per site and rule.",
                    ),
                    &["site", "rule"],
                )
                .expect("valid"),
            ),
            frames_stale: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "vigil_frames_stale_total",
                        "Frames skipped by a rule's episodes for arriving later than its allowed lateness.",
                    ),
                    &["rule"],
                )
                .expect("valid"),
            ),
            cameras: camera_limit.map(|limit| {
                std::sync::Arc::new(CameraSeries::new(
                    reg(
                        &r,
                        prometheus::GaugeVec::new(
                            Opts::new(
                                "vigil_camera_last_frame_timestamp_seconds",
                                "captured_at of the newest frame read from each camera (Unix seconds).",
                            ),
                            &["site", "camera"],
                        )
                        .expect("valid"),
                    ),
                    reg(
                        &r,
                        IntCounterVec::new(
                            Opts::new(
                                "vigil_camera_violation_frames_total",
                                "Frames judged a violation, per camera and rule.",
                            ),
                            &["site", "camera", "rule"],
                        )
                        .expect("valid"),
                    ),
                    counter(
                        "vigil_camera_series_refused_total",
                        "Frames of cameras refused per-camera series because the limit was reached.",
                    ),
                    limit,
                ))
            }),
            producer_errors: counter(
                "vigil_producer_errors_total",
                "Output records the producer failed to deliver.",
            ),
            consumer_errors: {
                let v = reg(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "vigil_consumer_errors_total",
                            "Errors the frames consumer reported, by kind (unreadable, other).",
                        ),
                        &["kind"],
                    )
                    .expect("valid"),
                );
                for kind in ["unreadable", "other"] {
                    v.with_label_values(&[kind]);
                }
                v
            },
            offsets_committed: counter(
                "vigil_offset_commits_total",
                "Successful offset commits to the consumer group.",
            ),
            broker_outages: counter(
                "vigil_broker_outages_total",
                "Times every broker became unreachable (the worker waits for them, not ready).",
            ),
            broker_reachable: reg(
                &r,
                IntGauge::new(
                    "vigil_broker_reachable",
                    "1 while the brokers answer, 0 while none can be reached.",
                )
                .expect("valid"),
            ),
            evidence_writes: {
                let v = reg(
                    &r,
                    IntCounterVec::new(
                        Opts::new(
                            "vigil_evidence_writes_total",
                            "Evidence pictures by outcome (written, retried, failed, dropped, abandoned).",
                        ),
                        &["outcome"],
                    )
                    .expect("valid"),
                );
                for outcome in ["written", "retried", "failed", "dropped", "abandoned"] {
                    v.with_label_values(&[outcome]);
                }
                v
            },
            evidence_render_seconds: hist(
                "vigil_evidence_render_seconds",
                "Time to draw and encode one evidence picture (faces hidden, violations outlined).",
                STAGE_BUCKETS,
            ),
            build_info: reg(
                &r,
                IntGaugeVec::new(
                    Opts::new("vigil_build_info", "The running vigil version (value 1)."),
                    &["version"],
                )
                .expect("valid"),
            ),
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.broker_reachable.set(1);
        // Pre-create every reason so dashboards show zeros instead of "no data".
        for reason in Reason::ALL {
            m.frames_dead_lettered.with_label_values(&[reason.as_str()]);
        }
        m.frames_skipped
            .with_label_values(&[crate::infer::shed::SKIPPED_STALE]);
        for stage in ["decode", "output"] {
            m.queue_depth.with_label_values(&[stage]);
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        encode(&self.registry)
    }

    /// Counts a verdict, creating the rule's other verdict series at zero so that ratios over
    /// them have data from the first frame on.
    pub fn count_verdict(&self, site: &str, rule: &str, verdict: &str) {
        for v in ["compliant", "violation", "unknown"] {
            let c = self.rule_outcomes.with_label_values(&[site, rule, v]);
            if v == verdict {
                c.inc();
            }
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new(Some(super::cameras::DEFAULT_CAMERA_LIMIT))
    }
}
