//! The site gateway (`vigil gateway --cameras-file site.toml`): the box in a restaurant that
//! pulls each camera's stream, samples frames and publishes them to the frames topic over the
//! site's link, riding out cameras that reboot and a link that drops.
//!
//! ```text
//! config   the camera file: site, cameras (RTSP, HTTP snapshot, file, directory), caps;
//!          credentials from the environment or a file, URLs shown redacted
//! capture  one capture per camera (a thread for OpenCV, a task for HTTP snapshots), each with
//!          its own reconnection backoff; frames to the publisher without waiting
//! health   each camera's up/down state: logged once per change, counted, and published as a
//!          camera-status record
//! publish  caps, then the on-disk buffer, then the patient producer, in order
//! buffer   store and forward on disk (redb): bounded by bytes and age, kept across restarts
//! limit    token buckets per camera and per site
//! probe    an RTSP handshake before OpenCV opens a stream (OpenCV opens one at a time)
//! backoff  jittered exponential reconnection delays
//! ```
//!
//! The simulator (`vigil gateway --source … --cameras N`, for load tests) lives with the
//! command, in `src/commands/gateway.rs`.

pub mod backoff;
pub mod buffer;
pub mod capture;
pub mod config;
pub mod health;
pub mod limit;
pub mod probe;
pub mod publish;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::contract::error::{Domain, StageError};
use crate::kafka::{self, BrokerLink, KafkaArgs};
use crate::telemetry::{Phase, Readiness, SiteMetrics};

/// Frames queued between the captures and the publisher, per camera.
const QUEUE_PER_CAMERA: usize = 8;
/// How long a stopping gateway waits for its frames in flight to be acknowledged.
const DRAIN: Duration = Duration::from_secs(10);

/// The environment variable OpenCV's FFmpeg backend reads its open options from.
const FFMPEG_OPTIONS: &str = "OPENCV_FFMPEG_CAPTURE_OPTIONS";
/// FFmpeg probes a stream for 5 s by default before the first frame, and OpenCV opens one
/// stream at a time (see [`probe`]): 8 cameras took 23 s to come up. One second of probing
/// (the SDP of an RTSP camera names the codec and size) brings an open to about 0.6 s. A
/// value the operator sets is kept.
const FFMPEG_PROBING: &str = "analyzeduration;1000000|probesize;1000000";

/// Everything `vigil gateway --cameras-file` is configured with.
#[derive(Debug, Clone)]
pub struct SiteConfig {
    /// How to reach the brokers.
    pub kafka: KafkaArgs,
    /// The frames topic.
    pub topic: String,
    /// The topic camera-status records go to.
    pub status_topic: String,
    /// The camera file.
    pub cameras_file: PathBuf,
    /// Where the store-and-forward buffer lives.
    pub buffer_dir: PathBuf,
    /// The buffer's bounds.
    pub buffer_limits: buffer::Limits,
    /// Larger frames are dropped (`oversize`).
    pub max_frame_bytes: usize,
    /// Address of `/metrics`, `/healthz` and `/readyz`, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Seconds between progress lines.
    pub progress_interval: Duration,
}

/// Runs the site gateway until `shutdown` resolves. Errors say whose fault they are.
pub async fn run(
    cfg: SiteConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), StageError> {
    let user = |e: String| StageError::stop("gateway", Domain::User, e);
    let site = config::load(&cfg.cameras_file, &|n| std::env::var(n).ok()).map_err(user)?;
    if cfg.buffer_limits.max_bytes < 2 * publish::WINDOW_BYTES {
        return Err(user(format!(
            "--buffer-max-bytes must be at least {} (twice the frames in flight)",
            2 * publish::WINDOW_BYTES
        )));
    }
    if std::env::var_os(FFMPEG_OPTIONS).is_none() {
        // Before any capture thread reads it (OpenCV reads it at each open).
        std::env::set_var(FFMPEG_OPTIONS, FFMPEG_PROBING);
    }
    let ids: Vec<String> = site.cameras.iter().map(|c| c.id.clone()).collect();
    let metrics = Arc::new(SiteMetrics::new(&site.site, &ids));
    let readiness = Readiness::default();
    let endpoint = match cfg.metrics_addr {
        Some(addr) => {
            let server = crate::telemetry::serve(metrics.registry.clone(), addr, readiness.clone())
                .await
                .map_err(|e| user(format!("cannot listen on --metrics-addr {addr}: {e}")))?;
            tracing::info!(addr = %server.addr, "metrics endpoint listening");
            Some(server)
        }
        None => None,
    };
    let buffer = {
        let (dir, limits) = (cfg.buffer_dir.clone(), cfg.buffer_limits);
        tokio::task::spawn_blocking(move || buffer::Buffer::open(&dir, limits))
            .await
            .map_err(|e| StageError::stop("buffer", Domain::Internal, e.to_string()))??
    };
    if !buffer.is_empty() {
        tracing::info!(
            frames = buffer.len(),
            bytes = buffer.bytes(),
            "buffered frames from an earlier run are sent first"
        );
    }
    // The worker's metrics are not served by a gateway: the link's own counters go nowhere.
    let link = BrokerLink::new(
        readiness.clone(),
        Arc::new(crate::telemetry::Metrics::default()),
    );
    let producer = cfg
        .kafka
        .output_producer(kafka::message_bytes_for(cfg.max_frame_bytes), None, &link)
        .map_err(|e| user(e.to_string()))?;
    let now = Instant::now();
    let caps = limit::Caps::new(
        &site
            .cameras
            .iter()
            .map(|c| c.max_bytes_per_sec)
            .collect::<Vec<_>>(),
        site.max_fps,
        site.max_bytes_per_sec,
        now,
    );
    let (tx, rx) = mpsc::channel(QUEUE_PER_CAMERA * site.cameras.len());
    let (status_tx, status_rx) = mpsc::channel(16 * site.cameras.len());
    let publisher = publish::Publisher {
        producer,
        link,
        topic: cfg.topic.clone(),
        status_topic: cfg.status_topic.clone(),
        buffer: Arc::new(Mutex::new(buffer)),
        caps,
        pace: site
            .max_bytes_per_sec
            .map(|r| limit::TokenBucket::new(r as f64, r as f64, now)),
        metrics: metrics.clone(),
    };
    let stop = Arc::new(capture::Stop::default());
    let publishing = tokio::spawn(publisher.run(rx, status_rx, stop.clone(), DRAIN));
    for (index, camera) in site.cameras.iter().enumerate() {
        let health = Arc::new(health::CameraHealth::new(
            &camera.id,
            &site.site,
            camera.zone.clone(),
            camera.url.clone(),
            metrics.clone(),
            status_tx.clone(),
        ));
        capture::Capture {
            index,
            camera: camera.clone(),
            site: site.site.clone(),
            health,
            tx: tx.clone(),
            stop: stop.clone(),
            max_frame_bytes: cfg.max_frame_bytes,
        }
        .spawn()
        .map_err(|e| StageError::stop("capture", Domain::External, e.to_string()))?;
    }
    drop((tx, status_tx));
    readiness.set(Phase::Ready);
    tracing::info!(
        site = %site.site,
        cameras = site.cameras.len(),
        topic = %cfg.topic,
        "gateway started"
    );
    tokio::pin!(shutdown);
    // Captures run meanwhile: a gateway starts during an outage as well, and buffers until
    // the brokers answer. Settings the brokers refuse (TLS, credentials) stop it.
    let prepared = prepare_topics(&cfg);
    tokio::pin!(prepared);
    let mut checking = true;
    let mut failed = None;
    let mut progress = tokio::time::interval(cfg.progress_interval.max(Duration::from_secs(1)));
    progress.tick().await;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            checked = &mut prepared, if checking => {
                checking = false;
                if let Err(e) = checked {
                    failed = Some(e);
                    break;
                }
            }
            _ = progress.tick() => log_progress(&metrics, &ids),
        }
    }
    readiness.set(Phase::Stopping);
    stop.set();
    // The publisher stops with the captures (threads blocked opening a dead stream are not
    // waited for: they hold no frame) and drains its frames in flight for up to DRAIN.
    let result = publishing
        .await
        .map_err(|e| StageError::stop("publish", Domain::Internal, e.to_string()))?;
    log_progress(&metrics, &ids);
    if let Some(server) = endpoint {
        server.shutdown().await;
    }
    match failed {
        Some(e) => Err(e),
        None => result,
    }
}

/// Checks the frames topic and creates the status topic if the brokers answer now; if they do
/// not, says so and goes on (frames wait in the buffer).
async fn prepare_topics(cfg: &SiteConfig) -> Result<(), StageError> {
    match kafka::check_connection_async(&cfg.kafka, Duration::from_secs(5)).await {
        Ok(()) => {}
        Err(kafka::ClientError::Connect(e)) if e.cause == kafka::probe::Cause::Unreachable => {
            tracing::warn!(
                "brokers unreachable at start-up; frames wait in the buffer until they answer"
            );
            return Ok(());
        }
        Err(e) => return Err(StageError::stop("gateway", Domain::User, e.to_string())),
    }
    let topic = &cfg.status_topic;
    match kafka::ensure_single_partition_topic(&cfg.kafka, topic).await {
        Ok(true) => tracing::info!(%topic, "camera status topic created"),
        Ok(false) => {}
        Err(e) => tracing::warn!(%topic, error = %e, "cannot create the camera status topic"),
    }
    let _ = kafka::check_message_sizes(&cfg.kafka, &[&cfg.topic], cfg.max_frame_bytes).await;
    Ok(())
}

fn log_progress(m: &SiteMetrics, ids: &[String]) {
    let sum = |v: &prometheus::IntCounterVec| -> u64 {
        ids.iter().map(|c| v.with_label_values(&[c]).get()).sum()
    };
    let up: i64 = ids
        .iter()
        .map(|c| m.camera_up.with_label_values(&[c]).get())
        .sum();
    let dropped: u64 = ids
        .iter()
        .flat_map(|c| {
            crate::telemetry::gateway::DROP_REASONS
                .iter()
                .map(move |r| m.dropped.with_label_values(&[c.as_str(), r]).get())
        })
        .sum();
    tracing::info!(
        cameras_up = up,
        cameras = ids.len(),
        captured = sum(&m.captured),
        published = sum(&m.published),
        dropped,
        buffered = m.buffer_frames.get(),
        "gateway progress"
    );
}
