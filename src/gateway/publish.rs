//! The publisher: one task between the captures and the brokers.
//!
//! 1. Captured frames arrive on a bounded queue; the caps ([`super::limit`]) drop what is over
//!    the camera's or the site's rate; the rest is written to the buffer ([`super::buffer`]),
//!    which drops its oldest frames when over its limits.
//! 2. The oldest buffered frames are handed to the producer, at most [`WINDOW_FRAMES`] frames
//!    and [`WINDOW_BYTES`] at once, in the buffer's order (so in order per camera, and one
//!    camera's frames all go to one partition by key).
//! 3. The producer is patient (idempotent, `message.timeout.ms=0`): while the brokers are away
//!    it retries the window without duplicating or reordering it, and the rest waits on disk.
//!    Acknowledged frames are removed from the buffer.
//!
//! Disk work runs on the blocking pool; the task itself only moves handles. Camera-status
//! records go straight to the producer (they are few, and small).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::stream::{FuturesUnordered, StreamExt};
use rdkafka::producer::FutureRecord;
use tokio::sync::mpsc;

use super::buffer::{Buffer, Frame};
use super::capture::{Captured, Stop};
use super::limit::{Caps, TokenBucket};
use crate::contract::error::{Domain, StageError};
use crate::contract::StatusRecord;
use crate::contract::{header, now_ms};
use crate::kafka::{self, BrokerLink, OutputProducer};
use crate::telemetry::SiteMetrics;

/// Frames handed to the producer at most at once.
pub const WINDOW_FRAMES: usize = 64;
/// JPEG bytes handed to the producer at most at once (one larger frame still goes alone).
pub const WINDOW_BYTES: u64 = 16 * 1024 * 1024;
/// How often acknowledged frames are removed, the age limit applied and the gauges updated.
const TICK: Duration = Duration::from_millis(100);
/// Frames written to the buffer in one transaction at most.
const INTAKE_BATCH: usize = 256;

/// A delivery in flight: the buffer id, the camera, the outcome.
type Delivery = Pin<Box<dyn Future<Output = (u64, String, Result<(), String>)> + Send>>;

/// What the publisher works with.
pub struct Publisher {
    /// The patient, idempotent producer.
    pub producer: OutputProducer,
    /// Whether the brokers answer (shared with the producer's context).
    pub link: BrokerLink,
    /// The frames topic.
    pub topic: String,
    /// The camera-status topic.
    pub status_topic: String,
    /// The store-and-forward buffer, used on the blocking pool only.
    pub buffer: Arc<Mutex<Buffer>>,
    /// The bandwidth caps (frames over them are dropped).
    pub caps: Caps,
    /// The site's bytes/s cap as a pace for sending: a backlog drained after an outage goes
    /// out no faster than the live frames may (it waits, it is not dropped).
    pub pace: Option<TokenBucket>,
    /// The gateway's metrics.
    pub metrics: Arc<SiteMetrics>,
}

fn locked(b: &Mutex<Buffer>) -> std::sync::MutexGuard<'_, Buffer> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

impl Publisher {
    /// Runs until `stop` (or until every capture has gone), buffers what the captures queued,
    /// then waits up to `drain` for the frames in flight; what is not acknowledged by then
    /// stays buffered for the next run.
    pub async fn run(
        mut self,
        mut frames: mpsc::Receiver<Captured>,
        mut status: mpsc::Receiver<StatusRecord>,
        stop: Arc<Stop>,
        drain: Duration,
    ) -> Result<(), StageError> {
        let mut inflight: FuturesUnordered<Delivery> = FuturesUnordered::new();
        let mut inflight_bytes: u64 = 0;
        let mut sizes = std::collections::HashMap::new();
        let mut done: Vec<u64> = Vec::new();
        let mut statuses = FuturesUnordered::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut batch = Vec::with_capacity(INTAKE_BATCH);
        let mut open = true;
        while open {
            tokio::select! {
                n = frames.recv_many(&mut batch, INTAKE_BATCH) => {
                    if n == 0 {
                        open = false;
                        continue;
                    }
                    self.intake(std::mem::take(&mut batch)).await?;
                    self.fill(&mut inflight, &mut inflight_bytes, &mut sizes).await?;
                }
                Some(record) = status.recv() => statuses.push(self.send_status(record)),
                Some(()) = statuses.next(), if !statuses.is_empty() => {}
                Some((id, camera, outcome)) = inflight.next(), if !inflight.is_empty() => {
                    inflight_bytes -= sizes.remove(&id).unwrap_or(0);
                    self.settle(&camera, outcome);
                    done.push(id);
                }
                _ = tick.tick() => {
                    self.housekeep(std::mem::take(&mut done)).await?;
                    self.fill(&mut inflight, &mut inflight_bytes, &mut sizes).await?;
                }
                _ = stop.wait() => open = false,
            }
        }
        // What the captures queued before they stopped is kept.
        while let Ok(c) = frames.try_recv() {
            batch.push(c);
        }
        if !batch.is_empty() {
            self.intake(batch).await?;
        }
        // Stopping: the frames in flight get `drain` to be acknowledged (none while the
        // brokers are away: they stay buffered).
        let drain = if self.link.is_lost() {
            Duration::ZERO
        } else {
            drain
        };
        let deadline = tokio::time::Instant::now() + drain;
        while !inflight.is_empty() {
            match tokio::time::timeout_at(deadline, inflight.next()).await {
                Ok(Some((id, camera, outcome))) => {
                    self.settle(&camera, outcome);
                    done.push(id);
                }
                _ => break,
            }
        }
        while let Ok(Some(())) = tokio::time::timeout_at(deadline, statuses.next()).await {}
        self.housekeep(done).await?;
        let left = self.blocking(|b| Ok(b.len())).await?;
        if left > 0 {
            tracing::info!(frames = left, "frames left in the buffer for the next run");
        }
        Ok(())
    }

    /// Runs `f` on the buffer on the blocking pool.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Buffer) -> Result<T, StageError> + Send + 'static,
    ) -> Result<T, StageError> {
        let buffer = self.buffer.clone();
        tokio::task::spawn_blocking(move || f(&mut locked(&buffer)))
            .await
            .map_err(|e| StageError::stop("buffer", Domain::Internal, e.to_string()))?
    }

    /// Caps, then the buffer.
    async fn intake(&mut self, batch: Vec<Captured>) -> Result<(), StageError> {
        let now = Instant::now();
        let mut admitted: Vec<Frame> = Vec::with_capacity(batch.len());
        for c in batch {
            match self.caps.admit(c.index, c.frame.jpeg.len(), now) {
                Ok(()) => admitted.push(c.frame),
                Err(over) => self.metrics.drop_frame(&c.frame.camera, over.reason()),
            }
        }
        if admitted.is_empty() {
            return Ok(());
        }
        let dropped = self
            .blocking(move |b| b.append(&admitted, now_ms()))
            .await?;
        for d in dropped {
            self.metrics.drop_frame(&d.camera, d.why.reason());
        }
        Ok(())
    }

    /// Hands the oldest buffered frames to the producer, up to the window.
    async fn fill(
        &mut self,
        inflight: &mut FuturesUnordered<Delivery>,
        inflight_bytes: &mut u64,
        sizes: &mut std::collections::HashMap<u64, u64>,
    ) -> Result<(), StageError> {
        let room = WINDOW_FRAMES.saturating_sub(inflight.len());
        let mut bytes = WINDOW_BYTES.saturating_sub(*inflight_bytes);
        if let Some(pace) = &mut self.pace {
            let available = pace.available(Instant::now());
            if available < 1.0 {
                return Ok(());
            }
            bytes = bytes.min(available as u64);
        }
        if room == 0 || bytes == 0 {
            return Ok(());
        }
        let frames = self.blocking(move |b| b.take(room, bytes)).await?;
        for (id, f) in frames {
            let n = f.jpeg.len() as u64;
            if let Some(pace) = &mut self.pace {
                // One frame larger than what is left is sent on credit, repaid before the next.
                pace.owe(n as f64);
            }
            *inflight_bytes += n;
            sizes.insert(id, n);
            inflight.push(self.send(id, f));
        }
        Ok(())
    }

    /// Sends one frame; the future says how it went.
    fn send(&self, id: u64, f: Frame) -> Delivery {
        let at = f.captured_at_ms.to_string();
        let seq = f.seq.to_string();
        let mut hs: Vec<(&str, &[u8])> = vec![
            (header::SITE, f.site.as_bytes()),
            (header::CAMERA, f.camera.as_bytes()),
            (header::CAPTURED_AT, at.as_bytes()),
            (header::SEQ, seq.as_bytes()),
        ];
        if let Some(z) = &f.zone {
            hs.push((header::ZONE, z.as_bytes()));
        }
        let record = FutureRecord::to(&self.topic)
            .key(f.camera.as_bytes())
            .payload(f.jpeg.as_slice())
            .headers(kafka::headers_from(hs));
        let sent = self
            .producer
            .send_result(record)
            .map_err(|(e, _)| e.to_string());
        let camera = f.camera;
        Box::pin(async move {
            let outcome = match sent {
                Err(e) => Err(e),
                Ok(delivery) => match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer was dropped".to_string()),
                },
            };
            (id, camera, outcome)
        })
    }

    /// Counts a delivery's outcome. A refusal is final (outages are retried inside the
    /// producer, never failed): the frame is dropped as `rejected`.
    fn settle(&self, camera: &str, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => {
                self.link.answered();
                self.metrics.published.with_label_values(&[camera]).inc();
            }
            Err(e) => {
                self.metrics.drop_frame(camera, "rejected");
                tracing::warn!(camera, error = %e, "the broker refused a frame; dropped");
            }
        }
    }

    fn send_status(&self, record: StatusRecord) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let value = serde_json::to_vec(&record).unwrap_or_default();
        let rec = FutureRecord::to(&self.status_topic)
            .key(record.camera.as_bytes())
            .payload(&value);
        let sent = self
            .producer
            .send_result(rec)
            .map_err(|(e, _)| e.to_string());
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let outcome = match sent {
                Ok(d) => match d.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e.to_string()),
                    Err(_) => Err("the producer was dropped".into()),
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => metrics.status_records.inc(),
                Err(error) => {
                    tracing::warn!(
                        camera = %record.camera,
                        state = %record.state,
                        error,
                        "camera status record not published"
                    )
                }
            }
        })
    }

    /// Removes acknowledged frames, applies the age limit, updates the gauges.
    async fn housekeep(&self, done: Vec<u64>) -> Result<(), StageError> {
        let (dropped, len, bytes, oldest) = self
            .blocking(move |b| {
                b.remove(&done)?;
                let dropped = b.expire(now_ms())?;
                Ok((dropped, b.len(), b.bytes(), b.oldest_ms()))
            })
            .await?;
        for d in dropped {
            self.metrics.drop_frame(&d.camera, d.why.reason());
        }
        self.metrics.buffer_frames.set(len as i64);
        self.metrics.buffer_bytes.set(bytes as i64);
        self.metrics
            .buffer_oldest
            .set(oldest.map_or(0.0, |ms| ms as f64 / 1000.0));
        self.metrics
            .broker_reachable
            .set(i64::from(!self.link.is_lost()));
        Ok(())
    }
}
