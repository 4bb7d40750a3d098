//! `vigil worker`'s arguments, and their checks: each bad value is refused naming its option.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::{secs, RegistryArgs, TopicArgs};
use crate::contract::{Limits, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_PIXELS};
use crate::infer::model::{Device, ExecutionConfig};
use crate::infer::{BatchPolicy, BatchSettings};
use crate::kafka::KafkaArgs;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// Consumer group; workers sharing it split the partitions.
    #[arg(long, env = "VIGIL_GROUP", default_value = "vigil-workers")]
    pub group: String,
    /// Address for the Prometheus `/metrics` endpoint (empty to disable).
    #[arg(long, env = "VIGIL_METRICS_ADDR", default_value = "127.0.0.1:9898")]
    pub metrics_addr: String,
    /// Model pack directory (default: `models/` beside the binary or the repository).
    #[arg(long, env = "VIGIL_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Rules file (TOML) mapping sites, zones and cameras to rules (default: masks checked
    /// everywhere except the `dining` zone).
    #[arg(long, env = "VIGIL_RULES")]
    pub rules: Option<PathBuf>,
    /// Write annotated debug images (boxes, labels) for these cameras (comma-separated)…
    #[arg(long, value_delimiter = ',')]
    pub debug_camera: Vec<String>,
    /// …into this folder.
    #[arg(long, default_value = "vigil-debug")]
    pub debug_dir: PathBuf,
    /// Path of libonnxruntime.so (default: found in the project's .venv).
    #[arg(long, env = "VIGIL_ORT_LIB")]
    pub ort_lib: Option<PathBuf>,
    /// Execution provider.
    #[arg(long, env = "VIGIL_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// ONNX Runtime threads per operator (0 = ONNX Runtime's default, one per core). The
    /// default, 1, lets the models' sessions run side by side on separate cores instead of each
    /// spreading over all of them: on two cores it cut the p99 latency at a steady rate and drained
    /// a backlog at least as fast (BENCHMARKS.md, "Under load").
    #[arg(long, env = "VIGIL_INTRA_THREADS", default_value_t = 1)]
    pub intra_threads: usize,
    /// Let ONNX Runtime's idle threads spin (busy-wait) for work: faster for one model alone,
    /// slower when several sessions and the decoder share few cores.
    #[arg(long, env = "VIGIL_ORT_SPINNING", default_value_t = false, action = clap::ArgAction::Set)]
    pub ort_spinning: bool,
    /// Largest batch per model run (default: 4 for a model on the CPU, where larger batches
    /// cost more per item, 16 on a GPU; BENCHMARKS.md, "Under load").
    #[arg(long, env = "VIGIL_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Longest wait, in milliseconds from when its first item was queued, for a batch to fill
    /// (0: whatever is queued runs as soon as the model is free).
    #[arg(long, env = "VIGIL_MAX_DELAY_MS", default_value_t = BatchPolicy::default().max_delay.as_millis() as u64)]
    pub max_delay_ms: u64,
    /// Model runs at once across all models (0: no limit, each model's session runs when its
    /// batch is ready). One at a time halves each run's time on two cores but leaves cores idle
    /// between runs: 0 drained 1.2–1.3× as many frames (BENCHMARKS.md, "Under load").
    #[arg(long, env = "VIGIL_CONCURRENT_RUNS", default_value_t = 0)]
    pub concurrent_runs: usize,
    /// Frames decoded concurrently (default: half the CPUs, at least one; the models' sessions
    /// need the rest).
    #[arg(long, env = "VIGIL_DECODE_THREADS")]
    pub decode_threads: Option<usize>,
    /// Frames read but not yet delivered, at most.
    #[arg(long, default_value_t = 128)]
    pub max_in_flight: usize,
    /// Largest accepted frame, in bytes.
    #[arg(long, env = "VIGIL_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Largest accepted width × height (checked from the JPEG header before decoding).
    #[arg(long, env = "VIGIL_MAX_PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Largest lead, in seconds, of a frame's `captured_at` over the worker's clock; frames
    /// further in the future are dead-lettered (`bad_header`).
    #[arg(long, env = "VIGIL_MAX_FUTURE_SECS", default_value_t = 300.0)]
    pub max_future_secs: f64,
    /// Largest age, in seconds, of a frame's `captured_at`; older frames are dead-lettered.
    /// Off by default, so that old footage can be replayed.
    #[arg(long, env = "VIGIL_MAX_AGE_SECS")]
    pub max_age_secs: Option<f64>,
    /// Load shedding: frames more than this many seconds behind real time (`captured_at`) are
    /// stale; of those, each camera keeps one judged frame per this many seconds of footage, or
    /// per its lateness if longer, and the others are skipped (counted, observed as `unknown`
    /// with reason `skipped_stale`, committed). 0 judges every frame, for replaying footage.
    /// The default, 60, outlasts a crashed worker's replacement (session timeout plus restore)
    /// and the broker outages a worker rides out, so that neither changes which frames are
    /// judged.
    #[arg(long, env = "VIGIL_MAX_STALENESS_SECS", default_value_t = 60.0)]
    pub max_staleness_secs: f64,
    /// A detection that stays put (same track, not moved or grown) has its crop classified
    /// again only every this many frames; in between its last scores are reused. 1 (the
    /// default) classifies every crop of every frame: reused scores are not carried across a
    /// restart or rebalance, so above 1 a restart can change a camera's events.
    #[arg(long, env = "VIGIL_RECLASSIFY_EVERY", default_value_t = crate::infer::track::TrackPolicy::default().every)]
    pub reclassify_every: u32,
    /// Seconds to wait for in-flight frames at shutdown, and to wait for a revoked partition's
    /// frames before saying so (a revoke during a broker outage waits for its frames however
    /// long the outage lasts); must be below the group's session timeout
    /// (`-X session.timeout.ms`, 10 s by default).
    #[arg(long, env = "VIGIL_DRAIN_TIMEOUT_SECS", default_value_t = 8.0)]
    pub drain_timeout_secs: f64,
    /// Name written into observations and dead letters (default: host name and pid).
    #[arg(long, env = "VIGIL_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 10.0)]
    pub progress_secs: f64,
    /// Export per-camera metric series (last frame time, violation frames). Switch off when the
    /// number of cameras per worker would exceed the metrics budget.
    #[arg(long, env = "VIGIL_METRICS_CAMERA_LABELS", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_camera_labels: bool,
    /// Most cameras given per-camera series at once; a camera silent for 10 minutes gives its
    /// place up. Frames of cameras past the limit are counted, not exported per camera.
    #[arg(long, env = "VIGIL_METRICS_CAMERA_LIMIT", default_value_t = crate::telemetry::cameras::DEFAULT_CAMERA_LIMIT)]
    pub metrics_camera_limit: usize,
    /// Write an evidence picture (faces pixelated, the violation outlined) when an episode
    /// opens or its severity rises, to this object store: file:///DIR or s3://BUCKET/PREFIX
    /// (AWS_* environment variables for credentials). Events carry its URI.
    #[arg(long, env = "VIGIL_EVIDENCE_URL")]
    pub evidence_url: Option<String>,
    /// Faces in evidence pictures: `blur` (pixelated, the default) or `clear` where the site's
    /// policy allows it.
    #[arg(long, env = "VIGIL_EVIDENCE_FACES", default_value = "blur")]
    pub evidence_faces: crate::evidence::Faces,
    /// Delete evidence pictures older than this many seconds (checked every minute); for a
    /// local directory; object stores in production use lifecycle rules instead.
    #[arg(long, env = "VIGIL_EVIDENCE_MAX_AGE_SECS")]
    pub evidence_max_age_secs: Option<f64>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

impl WorkerArgs {
    /// Turns arguments into a worker configuration, naming the option at fault.
    pub fn into_config(self) -> Result<crate::pipeline::WorkerConfig, String> {
        if self.max_batch == Some(0) {
            return Err("--max-batch must be at least 1".into());
        }
        if self.max_frame_bytes == 0 {
            return Err("--max-frame-bytes must be positive".into());
        }
        let metrics_addr = match self.metrics_addr.trim() {
            "" => None,
            s => Some(s.parse::<SocketAddr>().map_err(|e| {
                format!("--metrics-addr / VIGIL_METRICS_ADDR: `{s}` is not HOST:PORT ({e})")
            })?),
        };
        let session_timeout = crate::pipeline::session_timeout(&self.kafka)?;
        let cfg = crate::pipeline::WorkerConfig {
            kafka: self.kafka,
            group: self.group,
            frames_topic: self.topics.frames_topic,
            observations_topic: self.topics.observations_topic,
            dlq_topic: self.topics.dlq_topic,
            violations_topic: self.topics.violations_topic,
            state_topic: self.topics.state_topic,
            limits: Limits {
                max_frame_bytes: self.max_frame_bytes,
                max_pixels: self.max_pixels,
                max_future_ms: secs("--max-future-secs", self.max_future_secs)?.as_millis() as i64,
                max_age_ms: self
                    .max_age_secs
                    .map(|s| secs("--max-age-secs", s).map(|d| d.as_millis() as i64))
                    .transpose()?,
            },
            model_dir: self.model_dir,
            rules: self.rules,
            debug: (!self.debug_camera.is_empty()).then_some(crate::infer::DebugImages {
                dir: self.debug_dir,
                cameras: self.debug_camera,
            }),
            ort_lib: self.ort_lib,
            exec: ExecutionConfig {
                device: self.device,
                intra_threads: self.intra_threads,
                spinning: self.ort_spinning,
            },
            batch: BatchSettings {
                max_batch: self.max_batch,
                max_delay: Duration::from_millis(self.max_delay_ms),
            },
            decode_threads: self.decode_threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
            }),
            concurrent_runs: self.concurrent_runs,
            max_in_flight: self.max_in_flight.max(1),
            metrics_addr,
            track: crate::infer::track::TrackPolicy {
                every: self.reclassify_every.max(1),
                ..Default::default()
            },
            max_staleness: Some(secs("--max-staleness-secs", self.max_staleness_secs)?)
                .filter(|d| !d.is_zero()),
            drain_timeout: secs("--drain-timeout-secs", self.drain_timeout_secs)?,
            session_timeout,
            worker_id: self
                .worker_id
                .unwrap_or_else(crate::pipeline::default_worker_id),
            progress_interval: secs("--progress-secs", self.progress_secs)?,
            camera_labels: self.metrics_camera_labels,
            camera_series_limit: self.metrics_camera_limit,
            schema_registry: self.registry.registry()?,
            evidence: match self.evidence_url {
                None => None,
                Some(url) => {
                    // Checks the URL (and creates a local directory) now, naming the option.
                    crate::evidence::EvidenceStore::open(&url, "--evidence-url")?;
                    Some(crate::evidence::EvidenceConfig {
                        url,
                        faces: self.evidence_faces,
                        max_age: self
                            .evidence_max_age_secs
                            .map(|s| secs("--evidence-max-age-secs", s))
                            .transpose()?,
                    })
                }
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}
