//! `vigil gateway`: with `--cameras-file`, the site gateway ([`crate::gateway`]); with
//! `--source`, the simulator for load tests, which publishes one source for `--cameras N`
//! simulated cameras: a directory of images, a video file or a stream URL (OpenCV
//! VideoCapture, e.g. RTSP), sampled at `--fps` and re-encoded at `--quality`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures_util::stream::{FuturesUnordered, StreamExt};
use opencv::core::Mat;
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc, videoio};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

use crate::contract::{header, now_ms};
use crate::decode::encode_jpeg;
use crate::kafka::{self, KafkaArgs};
use crate::telemetry::GatewayMetrics;

/// Everything `vigil gateway` is configured with.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub kafka: KafkaArgs,
    pub topic: String,
    /// Directory of images, video file, or stream URL.
    pub source: String,
    /// Frames per second per camera.
    pub fps: f64,
    /// JPEG quality of the published frames.
    pub quality: i32,
    /// Simulated cameras; each publishes the source under its own id.
    pub cameras: usize,
    /// Sites the cameras are spread over.
    pub sites: usize,
    /// Zones assigned to cameras round-robin (none: no `zone` header).
    pub zones: Vec<String>,
    /// Start again when the source ends.
    pub repeat: bool,
    /// Each camera keeps showing one image of the directory (a still scene) instead of
    /// stepping through them.
    pub still: bool,
    /// Stop after this many frames per camera.
    pub frames: Option<u64>,
    /// Stamp frames as footage recorded at this rate per camera, ending at start-up, instead
    /// of when they are published (a backlog with real-time spacing).
    pub footage_fps: Option<f64>,
    /// Resize frames to this width first (keeping aspect), if set.
    pub width: Option<u32>,
    pub max_frame_bytes: usize,
    pub camera_prefix: String,
    pub progress_interval: Duration,
    /// Address of the gateway's `/metrics` endpoint, if any.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Runs `vigil gateway` as parsed: the site gateway or the simulator. Exit code 2 for a
/// configuration error, 1 for anything else.
pub async fn run_args(
    a: super::GatewayArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), (u8, anyhow::Error)> {
    let bad = |e: String| (2, anyhow!(e));
    let progress_interval = super::secs("--progress-secs", a.progress_secs).map_err(bad)?;
    if let Some(cameras_file) = a.cameras_file {
        let buffer_dir = a
            .buffer_dir
            .ok_or_else(|| bad("--buffer-dir is required with --cameras-file".into()))?;
        let max_age = super::secs("--buffer-max-age-secs", a.buffer_max_age_secs).map_err(bad)?;
        let cfg = crate::gateway::SiteConfig {
            kafka: a.kafka,
            topic: a.topics.frames_topic,
            status_topic: a.status_topic,
            cameras_file,
            buffer_dir,
            buffer_limits: crate::gateway::buffer::Limits {
                max_bytes: a.buffer_max_bytes,
                max_age_ms: max_age.as_millis().min(i64::MAX as u128) as i64,
            },
            max_frame_bytes: a.max_frame_bytes,
            metrics_addr: a.metrics_addr,
            progress_interval,
        };
        return crate::gateway::run(cfg, shutdown).await.map_err(|e| {
            let code = if e.domain == crate::contract::error::Domain::User {
                2
            } else {
                1
            };
            (code, anyhow!(e))
        });
    }
    let cfg = GatewayConfig {
        kafka: a.kafka,
        topic: a.topics.frames_topic,
        source: a.source.unwrap_or_default(),
        fps: a.fps,
        quality: a.quality,
        cameras: a.cameras,
        sites: a.sites,
        zones: a.zones,
        repeat: a.repeat,
        still: a.still,
        frames: a.frames,
        footage_fps: a.footage_fps,
        width: a.width,
        max_frame_bytes: a.max_frame_bytes,
        camera_prefix: a.camera_prefix,
        metrics_addr: a.metrics_addr,
        progress_interval,
    };
    run(cfg, shutdown).await.map_err(|e| (1, e))
}

/// Camera id, site and zone of simulated camera `i`.
pub fn camera_identity(cfg: &GatewayConfig, i: usize) -> (String, String, Option<String>) {
    let camera = format!("{}{:04}", cfg.camera_prefix, i + 1);
    let site = format!("site-{:03}", i % cfg.sites.max(1) + 1);
    let zone = (!cfg.zones.is_empty()).then(|| cfg.zones[i % cfg.zones.len()].clone());
    (camera, site, zone)
}

enum Source {
    /// Pre-encoded frames, one per image file.
    Images(Vec<Arc<Vec<u8>>>),
    /// A capture; one frame is read (and encoded) per tick and shared by all cameras.
    Video {
        cap: videoio::VideoCapture,
        /// Source frames skipped between published frames, to honour --fps.
        step: u32,
        url: String,
    },
}

fn resize_to_width(img: Mat, width: Option<u32>) -> opencv::Result<Mat> {
    let Some(w) = width else { return Ok(img) };
    if img.cols() as u32 == w || img.cols() == 0 {
        return Ok(img);
    }
    let h = (img.rows() as f64 * w as f64 / img.cols() as f64).round() as i32;
    let mut out = Mat::default();
    imgproc::resize(
        &img,
        &mut out,
        opencv::core::Size::new(w as i32, h.max(1)),
        0.0,
        0.0,
        imgproc::INTER_AREA,
    )?;
    Ok(out)
}

fn open_source(cfg: &GatewayConfig) -> anyhow::Result<Source> {
    let path = Path::new(&cfg.source);
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension().and_then(|x| x.to_str()).is_some_and(|x| {
                    matches!(
                        x.to_ascii_lowercase().as_str(),
                        "jpg" | "jpeg" | "png" | "bmp"
                    )
                })
            })
            .collect();
        files.sort();
        let mut frames = Vec::new();
        for f in &files {
            let img = imgcodecs::imread(f.as_os_str(), imgcodecs::IMREAD_COLOR)?;
            if img.empty() {
                tracing::warn!(file = %f.display(), "not an image, skipped");
                continue;
            }
            let img = resize_to_width(img, cfg.width)?;
            frames.push(Arc::new(encode_jpeg(&img, cfg.quality)?));
        }
        if frames.is_empty() {
            bail!(
                "--source {}: no readable images (jpg, jpeg, png, bmp) in the directory",
                cfg.source
            );
        }
        return Ok(Source::Images(frames));
    }
    let cap = videoio::VideoCapture::from_file(&cfg.source, videoio::CAP_ANY)?;
    if !cap.is_opened()? {
        bail!(
            "--source {}: not a directory, and OpenCV cannot open it as a video file or stream",
            cfg.source
        );
    }
    let native = cap.get(videoio::CAP_PROP_FPS).unwrap_or(0.0);
    let step = if native > cfg.fps && cfg.fps > 0.0 {
        (native / cfg.fps).round().max(1.0) as u32
    } else {
        1
    };
    Ok(Source::Video {
        cap,
        step,
        url: cfg.source.clone(),
    })
}

/// Reads the next sampled frame of a capture; `None` at the end of the source.
fn next_video_frame(
    cap: &mut videoio::VideoCapture,
    step: u32,
    cfg: &GatewayConfig,
) -> anyhow::Result<Option<Vec<u8>>> {
    let mut img = Mat::default();
    for _ in 0..step {
        if !cap.read(&mut img)? || img.empty() {
            return Ok(None);
        }
    }
    let img = resize_to_width(img, cfg.width)?;
    Ok(Some(encode_jpeg(&img, cfg.quality)?))
}

/// Runs the gateway until the source ends (or `--frames` is reached), or `shutdown` resolves.
pub async fn run(
    cfg: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    describe_source(&cfg.source)?;
    if cfg.fps <= 0.0 || !cfg.fps.is_finite() {
        bail!("--fps must be a positive number, got {}", cfg.fps);
    }
    if cfg.footage_fps.is_some_and(|f| f <= 0.0 || !f.is_finite()) {
        bail!("--footage-fps must be a positive number");
    }
    if cfg.cameras == 0 {
        bail!("--cameras must be at least 1");
    }
    if !(1..=100).contains(&cfg.quality) {
        bail!("--quality must be between 1 and 100, got {}", cfg.quality);
    }
    kafka::check_connection_async(&cfg.kafka, kafka::CONNECT_TIMEOUT).await?;
    let metrics = GatewayMetrics::new();
    let readiness = crate::telemetry::Readiness::default();
    let endpoint = match cfg.metrics_addr {
        Some(addr) => {
            let server = crate::telemetry::serve(metrics.registry.clone(), addr, readiness.clone())
                .await
                .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?;
            tracing::info!(addr = %server.addr, "metrics endpoint listening");
            Some(server)
        }
        None => None,
    };
    let producer: FutureProducer = cfg
        .kafka
        .producer(cfg.max_frame_bytes + 64 * 1024)
        .map_err(|e| anyhow!(e))?;
    {
        let p = producer.clone();
        let topic = cfg.topic.clone();
        tokio::task::spawn_blocking(move || {
            kafka::partition_counts(p.client(), &[&topic], Duration::from_secs(15))
        })
        .await?
        .map_err(|e| anyhow!(e))?;
    }
    let _ = kafka::check_message_sizes(&cfg.kafka, &[&cfg.topic], cfg.max_frame_bytes).await;
    let mut source = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || open_source(&cfg)).await??
    };
    let ids: Vec<_> = (0..cfg.cameras).map(|i| camera_identity(&cfg, i)).collect();
    let period = Duration::from_secs_f64(1.0 / cfg.fps);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pending = FuturesUnordered::new();
    let started = Instant::now();
    let mut last_progress = Instant::now();
    let mut round: u64 = 0;
    let mut oversize: u64 = 0;
    // With --footage-fps: round r of camera c was "captured" at footage_start + (r + c/N) / fps.
    let footage = cfg.footage_fps.map(|f| {
        let period_ms = 1000.0 / f;
        let rounds = cfg.frames.unwrap_or(1) as f64;
        (now_ms() as f64 - rounds * period_ms, period_ms)
    });
    tokio::pin!(shutdown);
    readiness.set(crate::telemetry::Phase::Ready);
    tracing::info!(cameras = cfg.cameras, fps = cfg.fps, source = %cfg.source, topic = %cfg.topic, "gateway started");
    'rounds: loop {
        if cfg.frames.is_some_and(|n| round >= n) {
            break;
        }
        let round_start = tokio::select! {
            _ = &mut shutdown => break,
            t = tick.tick() => t,
        };
        // One frame per camera this round.
        let frames: Vec<Arc<Vec<u8>>> = match &mut source {
            Source::Images(list) => {
                if !cfg.repeat && round >= list.len() as u64 {
                    break;
                }
                (0..cfg.cameras)
                    .map(|c| {
                        let step = if cfg.still { 0 } else { round as usize };
                        list[(step + c) % list.len()].clone()
                    })
                    .collect()
            }
            Source::Video { cap, step, url } => {
                let got = tokio::task::block_in_place(|| next_video_frame(cap, *step, &cfg));
                let frame = match got {
                    Ok(Some(f)) => f,
                    Ok(None) if cfg.repeat => {
                        let reopened =
                            videoio::VideoCapture::from_file(url.as_str(), videoio::CAP_ANY)?;
                        *cap = reopened;
                        match tokio::task::block_in_place(|| next_video_frame(cap, *step, &cfg))? {
                            Some(f) => f,
                            None => bail!("--source {url}: no frames after reopening"),
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        metrics.errors.with_label_values(&["capture"]).inc();
                        tracing::warn!(error = %e, "capture failed");
                        continue 'rounds;
                    }
                };
                // One shared copy for every simulated camera.
                let frame = Arc::new(frame);
                (0..cfg.cameras).map(|_| frame.clone()).collect()
            }
        };
        let seq = round.to_string();
        for (c, ((camera, site, zone), frame)) in ids.iter().zip(frames).enumerate() {
            // Cameras are not synchronised: each one's frame goes out at its own point of the
            // round, spread evenly, so the load arrives as a steady stream, not in bursts.
            if c > 0 {
                let at = round_start + period.mul_f64(c as f64 / ids.len() as f64);
                tokio::select! {
                    _ = &mut shutdown => break 'rounds,
                    _ = tokio::time::sleep_until(at) => {}
                }
            }
            let captured_at = match footage {
                Some((start, period_ms)) => {
                    let at = (round as f64 + c as f64 / ids.len() as f64) * period_ms;
                    (start + at) as i64
                }
                None => now_ms(),
            }
            .to_string();
            if frame.len() > cfg.max_frame_bytes {
                oversize += 1;
                metrics.errors.with_label_values(&["oversize"]).inc();
                continue;
            }
            let mut hs: Vec<(&str, &[u8])> = vec![
                (header::SITE, site.as_bytes()),
                (header::CAMERA, camera.as_bytes()),
                (header::CAPTURED_AT, captured_at.as_bytes()),
                (header::SEQ, seq.as_bytes()),
            ];
            if let Some(z) = zone {
                hs.push((header::ZONE, z.as_bytes()));
            }
            let headers = kafka::headers_from(hs);
            let producer = producer.clone();
            let topic = cfg.topic.clone();
            let key = camera.clone();
            pending.push(async move {
                let rec = FutureRecord::to(&topic)
                    .key(key.as_bytes())
                    .payload(frame.as_slice())
                    .headers(headers);
                producer
                    .send(rec, Timeout::Never)
                    .await
                    .map(|_| ())
                    .map_err(|(e, _)| e)
            });
            // Polling hands the new record to librdkafka now (a send future does nothing until
            // polled), and settles what has been acknowledged without waiting on the rest.
            while let Some(Some(r)) = futures_util::FutureExt::now_or_never(pending.next()) {
                settle(&metrics, r);
            }
        }
        round += 1;
        if last_progress.elapsed() >= cfg.progress_interval {
            progress(&metrics, started, oversize);
            last_progress = Instant::now();
        }
    }
    readiness.set(crate::telemetry::Phase::Stopping);
    while let Some(r) = pending.next().await {
        settle(&metrics, r);
    }
    let p = producer.clone();
    tokio::task::spawn_blocking(move || p.flush(Timeout::After(Duration::from_secs(30)))).await??;
    progress(&metrics, started, oversize);
    if let Some(server) = endpoint {
        server.shutdown().await;
    }
    let errors = metrics.errors.with_label_values(&["delivery"]).get();
    if errors > 0 {
        bail!("{errors} frames could not be delivered");
    }
    Ok(())
}

fn settle(metrics: &GatewayMetrics, r: Result<(), rdkafka::error::KafkaError>) {
    match r {
        Ok(()) => metrics.frames_sent.inc(),
        Err(e) => {
            metrics.errors.with_label_values(&["delivery"]).inc();
            tracing::warn!(error = %e, "frame not delivered");
        }
    }
}

fn progress(metrics: &GatewayMetrics, started: Instant, oversize: u64) {
    let sent = metrics.frames_sent.get();
    let secs = started.elapsed().as_secs_f64().max(1e-3);
    let errors: u64 = ["capture", "encode", "oversize", "delivery"]
        .iter()
        .map(|k| metrics.errors.with_label_values(&[k]).get())
        .sum();
    tracing::info!(
        sent,
        rate_per_s = format!("{:.1}", sent as f64 / secs),
        errors,
        oversize,
        "gateway progress"
    );
}

/// Context for the error when the gateway's source cannot be read.
pub fn describe_source(s: &str) -> anyhow::Result<()> {
    let p = Path::new(s);
    if !p.exists() && !s.contains("://") {
        return Err(anyhow!("--source {s}: no such file or directory")).context("gateway source");
    }
    Ok(())
}
