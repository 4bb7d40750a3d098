//! One capture per camera, each on its own: a thread for the cameras OpenCV reads (streams,
//! video files, directories), an async task for HTTP snapshot cameras. A camera that is down,
//! slow or sends garbage holds only its own thread; the others never wait for it. Captured
//! frames go to the publisher through a bounded queue without waiting: if it is full, the
//! frame is dropped and counted (`queue_full`).
//!
//! A stream is read continuously (`grab`, which keeps its decoder and the server's buffer
//! current) and only the frames due at the camera's `fps` are converted and encoded
//! (`retrieve`, resize, JPEG). `captured_at` is the gateway's clock at the grab. A failure
//! (no RTSP answer within 3 s, cannot open within 5 s, no frame for 5 s, end of stream, ten
//! garbage frames in a row) marks the camera down and retries with jittered exponential
//! backoff from 1 s to 30 s.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opencv::core::{Mat, Vector};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc, videoio};
use tokio::sync::{mpsc, Notify};

use super::backoff::{Backoff, Jitter};
use super::buffer::Frame;
use super::config::{Camera, SourceKind};
use super::health::CameraHealth;
use crate::contract::now_ms;
use crate::decode::encode_jpeg;

/// First reconnection delay's step.
pub const BACKOFF_INITIAL: Duration = Duration::from_secs(1);
/// Longest reconnection delay.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// How long OpenCV may take to open a stream, and to read a frame from it. OpenCV opens one
/// stream at a time (see [`super::probe`]): this also bounds how long a camera that answers
/// the handshake and then stalls can delay the others' connections.
const STREAM_TIMEOUT_MS: i32 = 5_000;
/// How long the RTSP handshake before an open may take, per step.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);
/// Garbage frames in a row after which the stream is reopened.
const GARBAGE_LIMIT: u32 = 10;

/// A frame on its way to the publisher.
#[derive(Debug)]
pub struct Captured {
    /// The camera's position in the camera file (for its caps).
    pub index: usize,
    /// The frame as it will be published.
    pub frame: Frame,
}

/// Tells captures to stop; threads check it between frames and while they wait.
#[derive(Default)]
pub struct Stop {
    /// Set once.
    flag: AtomicBool,
    /// Wakes async waiters.
    notify: Notify,
}

impl Stop {
    pub fn set(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Resolves once told to stop.
    pub async fn wait(&self) {
        loop {
            let woken = self.notify.notified();
            if self.is_set() {
                return;
            }
            woken.await;
        }
    }

    /// Sleeps `d` on a thread, waking every 100 ms to check; whether it was told to stop.
    fn sleep_blocking(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while !self.is_set() {
            let now = Instant::now();
            if now >= until {
                return false;
            }
            std::thread::sleep((until - now).min(Duration::from_millis(100)));
        }
        true
    }

    /// Sleeps `d` in a task; whether it was told to stop.
    async fn sleep(&self, d: Duration) -> bool {
        let woken = self.notify.notified();
        if self.is_set() {
            return true;
        }
        tokio::select! {
            _ = woken => true,
            _ = tokio::time::sleep(d) => self.is_set(),
        }
    }
}

/// What one capture needs.
pub struct Capture {
    /// The camera's position in the file.
    pub index: usize,
    /// The camera, as configured.
    pub camera: Camera,
    /// The site id (the `site` header).
    pub site: String,
    /// Its health: state changes, metrics, status records.
    pub health: Arc<CameraHealth>,
    /// To the publisher.
    pub tx: mpsc::Sender<Captured>,
    /// Set when the gateway stops.
    pub stop: Arc<Stop>,
    /// Larger frames are dropped (`oversize`).
    pub max_frame_bytes: usize,
}

/// Per camera, strictly increasing `seq` values: the capture time in microseconds, or one more
/// than the last, so that they keep increasing across restarts while the clock does.
#[derive(Debug, Default)]
pub struct SeqClock {
    /// The last value given.
    last: u64,
}

impl SeqClock {
    pub fn next(&mut self, captured_at_ms: i64) -> u64 {
        let us = (captured_at_ms.max(0) as u64).saturating_mul(1000);
        self.last = us.max(self.last + 1);
        self.last
    }
}

impl Capture {
    /// Starts the capture: a thread, or a task for a snapshot camera.
    pub fn spawn(self) -> std::io::Result<()> {
        match self.camera.kind {
            SourceKind::Snapshot => {
                tokio::spawn(self.snapshots());
                Ok(())
            }
            _ => std::thread::Builder::new()
                .name(format!("capture-{}", self.index))
                .spawn(move || self.run_blocking())
                .map(|_| ()),
        }
    }

    fn period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.camera.fps)
    }

    /// Hands a JPEG captured at `at_ms` to the publisher, without waiting.
    fn emit(&self, seq: &mut SeqClock, at_ms: i64, jpeg: Vec<u8>) {
        self.health.captured(at_ms);
        if jpeg.len() > self.max_frame_bytes {
            self.health.dropped("oversize");
            return;
        }
        let frame = Frame {
            site: self.site.clone(),
            camera: self.camera.id.clone(),
            zone: self.camera.zone.clone(),
            captured_at_ms: at_ms,
            seq: seq.next(at_ms),
            jpeg,
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(Captured {
            index: self.index,
            frame,
        }) {
            self.health.dropped("queue_full");
        }
    }

    /// Waits out a failure; false when told to stop meanwhile.
    fn back_off_blocking(&self, backoff: &mut Backoff, jitter: &mut Jitter, reason: &str) -> bool {
        self.health.down(reason);
        if self.stop.sleep_blocking(backoff.next_delay(jitter.draw())) {
            return false;
        }
        self.health.reconnecting();
        true
    }

    fn run_blocking(self) {
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_CAP);
        let mut jitter = Jitter::from_os();
        let mut seq = SeqClock::default();
        while !self.stop.is_set() {
            let reason = match self.camera.kind {
                SourceKind::Directory => self.directory(&mut seq, &mut backoff),
                _ => self.video(&mut seq, &mut backoff),
            };
            if self.stop.is_set() || !self.back_off_blocking(&mut backoff, &mut jitter, &reason) {
                break;
            }
        }
    }

    /// Reads a stream or file until it fails; returns why.
    fn video(&self, seq: &mut SeqClock, backoff: &mut Backoff) -> String {
        let url = self.camera.url.expose();
        let file = self.camera.kind == SourceKind::File;
        let params = Vector::<i32>::from_slice(&[
            videoio::CAP_PROP_OPEN_TIMEOUT_MSEC,
            STREAM_TIMEOUT_MS,
            videoio::CAP_PROP_READ_TIMEOUT_MSEC,
            STREAM_TIMEOUT_MS,
        ]);
        if url
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("rtsp://"))
        {
            if let Err(e) = super::probe::rtsp_answers(url, PROBE_TIMEOUT) {
                return e;
            }
        }
        let api = if file {
            videoio::CAP_ANY
        } else {
            videoio::CAP_FFMPEG
        };
        let mut cap = match videoio::VideoCapture::from_file_with_params(url, api, &params) {
            Ok(c) if c.is_opened().unwrap_or(false) => c,
            Ok(_) => return "cannot open the stream".into(),
            Err(e) => return format!("cannot open the stream ({})", e.code),
        };
        let period = self.period();
        // A file plays at its own rate: one frame in `step` is published, at the camera's fps.
        let native = cap.get(videoio::CAP_PROP_FPS).unwrap_or(0.0);
        let step = if file && native > self.camera.fps {
            (native / self.camera.fps).round().max(1.0) as u32
        } else {
            1
        };
        let mut due = Instant::now();
        let mut garbage = 0;
        let mut img = Mat::default();
        loop {
            if self.stop.is_set() {
                return "stopping".into();
            }
            if file {
                if self
                    .stop
                    .sleep_blocking(due.saturating_duration_since(Instant::now()))
                {
                    return "stopping".into();
                }
                for _ in 1..step {
                    if !cap.grab().unwrap_or(false) {
                        break;
                    }
                }
            }
            if !cap.grab().unwrap_or(false) {
                if file {
                    // The end of the file: play it again.
                    match videoio::VideoCapture::from_file(url, videoio::CAP_ANY) {
                        Ok(c) if c.is_opened().unwrap_or(false) => {
                            cap = c;
                            continue;
                        }
                        _ => return "cannot reopen the file".into(),
                    }
                }
                return "the stream ended or timed out".into();
            }
            let now = Instant::now();
            if now < due {
                continue;
            }
            let at_ms = now_ms();
            let jpeg = cap
                .retrieve(&mut img, 0)
                .ok()
                .filter(|ok| *ok && !img.empty())
                .and_then(|_| self.encode(&img).ok());
            let Some(jpeg) = jpeg else {
                self.health.dropped("garbage");
                garbage += 1;
                if garbage >= GARBAGE_LIMIT {
                    return format!("{GARBAGE_LIMIT} unreadable frames in a row");
                }
                continue;
            };
            garbage = 0;
            self.health.up();
            backoff.reset();
            self.emit(seq, at_ms, jpeg);
            due += period;
            if due < now {
                // Behind (a slow encode, a stalled stream): sample from now on.
                due = now + period;
            }
        }
    }

    /// Shows a directory's images in turn at the camera's rate, for ever.
    fn directory(&self, seq: &mut SeqClock, backoff: &mut Backoff) -> String {
        let dir = std::path::Path::new(self.camera.url.expose());
        let mut files: Vec<_> = match std::fs::read_dir(dir) {
            Ok(d) => d.filter_map(|e| e.ok().map(|e| e.path())).collect(),
            Err(e) => return format!("cannot read the directory: {e}"),
        };
        files.sort();
        let mut frames = Vec::new();
        for f in files {
            let Ok(img) = imgcodecs::imread(f.to_string_lossy().as_ref(), imgcodecs::IMREAD_COLOR)
            else {
                continue;
            };
            if !img.empty() {
                if let Ok(jpeg) = self.encode(&img) {
                    frames.push(jpeg);
                }
            }
        }
        if frames.is_empty() {
            return "no readable images in the directory".into();
        }
        self.health.up();
        backoff.reset();
        let mut due = Instant::now();
        for jpeg in frames.iter().cycle() {
            if self
                .stop
                .sleep_blocking(due.saturating_duration_since(Instant::now()))
            {
                break;
            }
            self.emit(seq, now_ms(), jpeg.clone());
            due += self.period();
        }
        "stopping".into()
    }

    /// Resizes (if the camera has a width) and encodes.
    fn encode(&self, img: &Mat) -> opencv::Result<Vec<u8>> {
        encode_scaled(img, self.camera.width, self.camera.quality)
    }

    /// Fetches a snapshot at the camera's rate, for ever.
    async fn snapshots(self) {
        let client = match reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10).max(self.period()))
            .build()
        {
            Ok(c) => c,
            Err(e) => {
                self.health
                    .down(&format!("no HTTP client: {}", e.without_url()));
                return;
            }
        };
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_CAP);
        let mut jitter = Jitter::from_os();
        let mut seq = SeqClock::default();
        let mut tick = tokio::time::interval(self.period());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.sleep(Duration::from_secs(3600)) => {}
            }
            if self.stop.is_set() {
                return;
            }
            let at_ms = now_ms();
            match self.fetch(&client).await {
                Ok(jpeg) => {
                    self.health.up();
                    backoff.reset();
                    self.emit(&mut seq, at_ms, jpeg);
                }
                Err(Fetch::Garbage) => self.health.dropped("garbage"),
                Err(Fetch::Failed(reason)) => {
                    self.health.down(&reason);
                    if self.stop.sleep(backoff.next_delay(jitter.draw())).await {
                        return;
                    }
                    self.health.reconnecting();
                    tick.reset();
                }
            }
        }
    }

    async fn fetch(&self, client: &reqwest::Client) -> Result<Vec<u8>, Fetch> {
        // reqwest's errors name the URL, credentials included: shown without it.
        let failed = |e: reqwest::Error| Fetch::Failed(e.without_url().to_string());
        let resp = client
            .get(self.camera.url.expose())
            .send()
            .await
            .map_err(failed)?;
        if !resp.status().is_success() {
            return Err(Fetch::Failed(format!("answered {}", resp.status())));
        }
        if resp
            .content_length()
            .is_some_and(|n| n as usize > self.max_frame_bytes)
        {
            self.health.dropped("oversize");
            return Err(Fetch::Garbage);
        }
        let body = resp.bytes().await.map_err(failed)?;
        if !body.starts_with(&[0xFF, 0xD8]) {
            return Err(Fetch::Garbage);
        }
        if self.camera.width.is_none() {
            return Ok(body.to_vec());
        }
        let (width, quality) = (self.camera.width, self.camera.quality);
        tokio::task::spawn_blocking(move || {
            let img = imgcodecs::imdecode(&Mat::from_slice(&body)?, imgcodecs::IMREAD_COLOR)?;
            encode_scaled(&img, width, quality)
        })
        .await
        .map_err(|e| Fetch::Failed(e.to_string()))?
        .map_err(|_| Fetch::Garbage)
    }
}

/// Why a snapshot brought no frame.
enum Fetch {
    /// The camera answered with something that is not a JPEG we can use: counted, no backoff.
    Garbage,
    /// The camera did not answer properly: down, with backoff.
    Failed(String),
}

/// The image as JPEG, resized to `width` first if it has another.
fn encode_scaled(img: &Mat, width: Option<u32>, quality: i32) -> opencv::Result<Vec<u8>> {
    match resize_to_width(img, width)? {
        Some(resized) => encode_jpeg(&resized, quality),
        None => encode_jpeg(img, quality),
    }
}

/// The image resized to `width` (keeping aspect), or `None` when it already has that width or
/// no width is asked for.
fn resize_to_width(img: &Mat, width: Option<u32>) -> opencv::Result<Option<Mat>> {
    let Some(w) = width else { return Ok(None) };
    if img.cols() as u32 == w || img.cols() == 0 {
        return Ok(None);
    }
    let h = (img.rows() as f64 * w as f64 / img.cols() as f64).round() as i32;
    let mut out = Mat::default();
    imgproc::resize(
        img,
        &mut out,
        opencv::core::Size::new(w as i32, h.max(1)),
        0.0,
        0.0,
        imgproc::INTER_AREA,
    )?;
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_increases_with_the_clock_and_never_repeats() {
        let mut s = SeqClock::default();
        assert_eq!(s.next(1_000), 1_000_000);
        assert_eq!(s.next(1_000), 1_000_001);
        assert_eq!(
            s.next(999),
            1_000_002,
            "a clock step back does not repeat a seq"
        );
        assert_eq!(s.next(2_000), 2_000_000);
    }
}
