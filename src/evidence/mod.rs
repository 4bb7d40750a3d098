//! Evidence snapshots: when an episode opens or its severity rises, the frame that did it is
//! drawn ([`render`]: faces pixelated, violations outlined) and written to object storage
//! ([`store`]); the event carries the picture's URI (`evidence_uri`).
//!
//! The URI is known before the write (keys come from the event id), so the event is published
//! without waiting for storage: a write runs in the background, is retried with backoff, and a
//! write that fails for good is counted and logged. Nothing here ever holds back an offset.

pub mod render;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use opencv::core::Mat;
use tokio::sync::mpsc;

use crate::contract::observation::DetectionResult;
use crate::contract::{EventKind, ViolationEvent};
use crate::telemetry::Metrics;
pub use render::Faces;
pub use store::EvidenceStore;

/// Pictures waiting to be written, at most; past that a picture is dropped (and counted).
const QUEUE: usize = 64;

/// The evidence settings of a worker.
#[derive(Debug, Clone)]
pub struct EvidenceConfig {
    /// `--evidence-url`.
    pub url: String,
    /// `--evidence-faces`.
    pub faces: Faces,
    /// `--evidence-max-age-secs`: pictures older than this are deleted (local directories).
    pub max_age: Option<Duration>,
}

/// Snapshots for one worker.
pub struct Evidence {
    store: EvidenceStore,
    faces: Faces,
    /// Detector models whose detections are faces (their manifest labels say `face`).
    face_detectors: HashSet<String>,
    /// The labels each rule's violating detections carry.
    violation_labels: HashMap<String, Vec<String>>,
    writes: mpsc::Sender<(object_store::path::Path, Vec<u8>)>,
    metrics: Arc<Metrics>,
}

/// Whether an event deserves a picture: an opening, or a rise in severity.
pub fn wants_snapshot(ev: &ViolationEvent) -> bool {
    ev.kind == EventKind::Opened
        || (ev.kind == EventKind::Updated && ev.reason.as_deref() == Some("severity"))
}

impl Evidence {
    /// Opens the store and starts the writer (and the pruner, with a maximum age).
    pub fn start(
        cfg: &EvidenceConfig,
        face_detectors: HashSet<String>,
        violation_labels: HashMap<String, Vec<String>>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Evidence>, String> {
        let store = EvidenceStore::open(&cfg.url, "--evidence-url")?;
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_loop(store.clone(), rx, metrics.clone()));
        if let Some(max_age) = cfg.max_age {
            let store = store.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(
                    Duration::from_secs(60).min(max_age.max(Duration::from_secs(1))),
                );
                loop {
                    tick.tick().await;
                    match store.prune(max_age).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(deleted = n, "old evidence pictures deleted"),
                        Err(e) => tracing::warn!(error = %e, "evidence pruning failed"),
                    }
                }
            });
        }
        Ok(Arc::new(Evidence {
            store,
            faces: cfg.faces,
            face_detectors,
            violation_labels,
            writes: tx,
            metrics,
        }))
    }

    /// Draws the picture of each event that wants one, sets its `evidence_uri` and queues the
    /// write. Rendering runs on the blocking pool; the caller waits only for that.
    pub async fn snapshot(
        self: &Arc<Self>,
        events: &mut [ViolationEvent],
        image: &Arc<Mat>,
        detections: &[DetectionResult],
    ) {
        for ev in events.iter_mut().filter(|e| wants_snapshot(e)) {
            let Some(labels) = self.violation_labels.get(&ev.rule) else {
                continue;
            };
            let marks = render::marks(detections, &ev.rule, labels, |d| {
                self.face_detectors.contains(d)
            });
            let (image, faces) = (image.clone(), self.faces);
            let started = Instant::now();
            let drawn =
                tokio::task::spawn_blocking(move || render::render(&image, &marks, faces)).await;
            self.metrics
                .evidence_render_seconds
                .observe(started.elapsed().as_secs_f64());
            let jpeg = match drawn {
                Ok(Ok(j)) => j,
                Ok(Err(e)) => {
                    self.count("failed");
                    tracing::warn!(error = %e, event = %ev.event_id, "evidence picture not drawn");
                    continue;
                }
                Err(e) => {
                    self.count("failed");
                    tracing::warn!(error = %e, event = %ev.event_id, "evidence drawing panicked");
                    continue;
                }
            };
            let key = self.store.key(&ev.site, &ev.camera, &ev.event_id);
            let uri = self.store.uri(&key);
            match self.writes.try_send((key, jpeg)) {
                Ok(()) => ev.evidence_uri = Some(uri),
                Err(_) => {
                    // The store is too slow: the event goes out without a picture rather than
                    // late.
                    self.count("dropped");
                    tracing::warn!(event = %ev.event_id, "evidence write queue full; picture dropped");
                }
            }
        }
    }

    fn count(&self, outcome: &str) {
        self.metrics
            .evidence_writes
            .with_label_values(&[outcome])
            .inc();
    }
}

/// Writes queued pictures, retrying each with jittered backoff (about half a minute in all).
async fn write_loop(
    store: EvidenceStore,
    mut rx: mpsc::Receiver<(object_store::path::Path, Vec<u8>)>,
    metrics: Arc<Metrics>,
) {
    while let Some((key, jpeg)) = rx.recv().await {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(500))
            .with_max_delay(Duration::from_secs(8))
            .with_jitter()
            .with_max_times(6);
        let put = || store.put(&key, jpeg.clone());
        let result = put
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .notify(|e, d| {
                metrics.evidence_writes.with_label_values(&["retried"]).inc();
                tracing::warn!(key = %key, error = %e, retry_in_ms = d.as_millis() as u64, "evidence write failed, retrying")
            })
            .await;
        let outcome = match result {
            Ok(()) => "written",
            Err(e) => {
                tracing::error!(key = %key, error = %e, "evidence picture not written");
                "failed"
            }
        };
        metrics.evidence_writes.with_label_values(&[outcome]).inc();
    }
}
