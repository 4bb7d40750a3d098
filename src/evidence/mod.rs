//! Evidence snapshots: when an episode opens or its severity rises, the frame that did it is
//! drawn ([`render`]: faces pixelated, violations outlined) and written to object storage
//! ([`store`]); the event carries the picture's URI (`evidence_uri`).
//!
//! The URI is known before the write (keys come from the event id), so the event is published
//! without waiting for storage: a write runs in the background, is retried with backoff, and a
//! write that fails for good is counted and logged. Nothing here ever holds back an offset.
//!
//! At shutdown [`Evidence::drain`] closes the queue and waits, until the worker's drain deadline
//! at the latest, for the pictures already queued (whose URIs went out in events) to be written;
//! any still unwritten then are counted (`outcome="abandoned"`) and logged, never dropped
//! silently.

pub mod render;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use opencv::core::Mat;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

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

/// A picture waiting to be written: its key and its JPEG bytes.
type Write = (object_store::path::Path, Vec<u8>);

/// Snapshots for one worker.
pub struct Evidence {
    /// Where pictures go; also makes their keys and URIs.
    store: EvidenceStore,
    /// Whether faces are pixelated (`--evidence-faces`).
    faces: Faces,
    /// Detector models whose detections are faces (their manifest labels say `face`).
    face_detectors: HashSet<String>,
    /// The labels each rule's violating detections carry.
    violation_labels: HashMap<String, Vec<String>>,
    /// The writer's queue; `None` once [`Evidence::drain`] has closed it, so that a picture
    /// drawn after that is counted as dropped and its event goes out without a URI (a URI is
    /// only ever published for a picture the writer has been given).
    writes: Mutex<Option<mpsc::Sender<Write>>>,
    /// Pictures queued or being written: what a shutdown waits for, and what it counts as
    /// abandoned when the deadline comes first.
    pending: Arc<AtomicUsize>,
    /// The writer task, awaited by [`Evidence::drain`] (and stopped past its deadline).
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The pruner task (with `--evidence-max-age-secs`), stopped by [`Evidence::drain`].
    pruner: Mutex<Option<JoinHandle<()>>>,
    /// Where write outcomes and drawing times are counted.
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
        let pending = Arc::new(AtomicUsize::new(0));
        let writer = tokio::spawn(write_loop(
            store.clone(),
            rx,
            pending.clone(),
            metrics.clone(),
        ));
        let pruner = cfg.max_age.map(|max_age| {
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
            })
        });
        Ok(Arc::new(Evidence {
            store,
            faces: cfg.faces,
            face_detectors,
            violation_labels,
            writes: Mutex::new(Some(tx)),
            pending,
            writer: Mutex::new(Some(writer)),
            pruner: Mutex::new(pruner),
            metrics,
        }))
    }

    /// Stops taking pictures and waits, until `deadline` at the latest, for the queued ones to
    /// be written (each with its retries). Their events already carry their URIs, so a picture
    /// still unwritten at the deadline is counted (`outcome="abandoned"`) and logged; returns
    /// how many were. Called once, at shutdown, after the stages have ended; a picture drawn
    /// after it is dropped (and counted) and its event carries no URI.
    pub async fn drain(&self, deadline: tokio::time::Instant) -> usize {
        // Dropping the only sender closes the queue: the writer ends once it has written what
        // the queue holds.
        drop(lock(&self.writes).take());
        if let Some(pruner) = lock(&self.pruner).take() {
            pruner.abort();
        }
        let Some(mut writer) = lock(&self.writer).take() else {
            return 0;
        };
        let queued = self.pending.load(Ordering::Acquire);
        if queued > 0 {
            tracing::info!(pictures = queued, "waiting for queued evidence pictures");
        }
        if tokio::time::timeout_at(deadline, &mut writer).await.is_ok() {
            if queued > 0 {
                tracing::info!(pictures = queued, "evidence queue drained");
            }
            return 0;
        }
        // Stop the writer before counting, so nothing is written (or counted) behind us.
        writer.abort();
        let _ = writer.await;
        let abandoned = self.pending.swap(0, Ordering::AcqRel);
        self.metrics
            .evidence_writes
            .with_label_values(&["abandoned"])
            .inc_by(abandoned as u64);
        tracing::error!(
            pictures = abandoned,
            "evidence pictures not written before the drain deadline; their events name missing pictures"
        );
        abandoned
    }

    /// Hands a picture to the writer; false (and counted as dropped) when the queue is full or
    /// already closed, in which case the caller must not publish its URI.
    fn queue(&self, key: object_store::path::Path, jpeg: Vec<u8>) -> bool {
        let writes = lock(&self.writes);
        let Some(tx) = writes.as_ref() else {
            drop(writes);
            self.count("dropped");
            tracing::warn!(key = %key, "evidence queue closed for shutdown; picture dropped");
            return false;
        };
        // Counted before the send: the writer may finish it before `try_send` returns.
        self.pending.fetch_add(1, Ordering::AcqRel);
        match tx.try_send((key, jpeg)) {
            Ok(()) => true,
            Err(e) => {
                drop(writes);
                self.pending.fetch_sub(1, Ordering::AcqRel);
                // The store is too slow: the event goes out without a picture rather than
                // late.
                self.count("dropped");
                tracing::warn!(key = %e.into_inner().0, "evidence write queue full; picture dropped");
                false
            }
        }
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
            if self.queue(key, jpeg) {
                ev.evidence_uri = Some(uri);
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

/// Locks a mutex, whether or not a thread panicked while holding it (what it guards stays
/// consistent: a sender, a task handle).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes queued pictures, retrying each with jittered backoff (about half a minute in all),
/// until the queue is closed and empty. `pending` goes down as each picture is settled.
async fn write_loop(
    store: EvidenceStore,
    mut rx: mpsc::Receiver<Write>,
    pending: Arc<AtomicUsize>,
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
        pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(url: &str) -> (Arc<Evidence>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::default());
        let evidence = Evidence::start(
            &EvidenceConfig {
                url: url.to_string(),
                faces: Faces::Blur,
                max_age: None,
            },
            HashSet::new(),
            HashMap::new(),
            metrics.clone(),
        )
        .unwrap();
        (evidence, metrics)
    }

    fn outcome(metrics: &Metrics, outcome: &str) -> u64 {
        metrics.evidence_writes.with_label_values(&[outcome]).get()
    }

    #[tokio::test]
    async fn drain_waits_for_queued_pictures_then_refuses_new_ones() {
        let dir = tempfile::tempdir().unwrap();
        let (evidence, metrics) = start(&format!("file://{}/evidence", dir.path().display()));
        let keys: Vec<_> = (0..10)
            .map(|i| evidence.store.key("site-1", "cam-1", &format!("ev-{i}")))
            .collect();
        for k in &keys {
            assert!(evidence.queue(k.clone(), b"jpeg".to_vec()));
        }
        // Nothing has run on this (current-thread) runtime yet: the writer has written none.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        assert_eq!(evidence.drain(deadline).await, 0);
        for k in &keys {
            assert_eq!(evidence.store.get(k).await.unwrap(), b"jpeg", "{k}");
        }
        assert_eq!(outcome(&metrics, "written"), 10);
        assert_eq!(outcome(&metrics, "abandoned"), 0);
        assert_eq!(evidence.pending.load(Ordering::Acquire), 0);
        // After the drain a picture is refused, so its URI is never published.
        let late = evidence.store.key("site-1", "cam-1", "ev-late");
        assert!(!evidence.queue(late.clone(), b"jpeg".to_vec()));
        assert_eq!(outcome(&metrics, "dropped"), 1);
        assert!(evidence.store.get(&late).await.is_err());
        assert_eq!(
            evidence.drain(deadline).await,
            0,
            "a second drain is a no-op"
        );
    }

    #[tokio::test]
    async fn pictures_unwritten_at_the_deadline_are_counted_as_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("evidence");
        let (evidence, metrics) = start(&format!("file://{}", root.display()));
        // The store's directory becomes a file: every write fails and is retried with backoff
        // (half a second first), far past the deadline below.
        std::fs::remove_dir(&root).unwrap();
        std::fs::write(&root, b"not a directory").unwrap();
        for i in 0..3 {
            let k = evidence.store.key("site-1", "cam-1", &format!("ev-{i}"));
            assert!(evidence.queue(k, b"jpeg".to_vec()));
        }
        let started = tokio::time::Instant::now();
        let abandoned = evidence.drain(started + Duration::from_millis(300)).await;
        assert_eq!(abandoned, 3);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "bounded by the deadline: {:?}",
            started.elapsed()
        );
        assert_eq!(outcome(&metrics, "abandoned"), 3);
        assert_eq!(outcome(&metrics, "written"), 0);
        assert_eq!(evidence.pending.load(Ordering::Acquire), 0);
    }
}
