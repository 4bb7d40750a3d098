//! The infer stage's tasks: one model task per model (its batcher, then ONNX Runtime on a
//! blocking thread) and the collector that routes frames and crops to them.
//!
//! ```text
//!  decoded frame ──► collector ──► model task per model (batcher → ONNX Runtime, blocking)
//!                      ▲  │              │ replies (detections, scores)
//!                      │  └─ crops ◄─────┘ (blocking: cut each kept detection, preprocess)
//!                      └─► observation, in frame order per partition ──► episodes stage
//! ```
//!
//! One ONNX Runtime session per model, fed by its own batcher, so a batch mixes frames (or crops)
//! from every camera the worker serves. Replies travel on an unbounded channel: it cannot
//! deadlock with the bounded model queues, and it is bounded in practice by the in-flight frame
//! limit times `max_detections`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc;

use super::batcher::{BatchPolicy, BatchSettings, Batcher};
use super::collect::collect;
use super::frame::{ms, InferItem, Reply};
pub use super::frame::{DebugImages, Infer};
use super::model::Model;
use super::plan::FramePlan;
use crate::contract::observation::StageTiming;
use crate::contract::{Domain, Observed, StageError};
use crate::decode::Decoded;

/// Where annotated debug images go.
/// A task of the stage, for the pipeline to spawn and supervise.
pub type StageTask = Pin<Box<dyn Future<Output = Result<(), StageError>> + Send>>;

/// The infer stage, ready to be spawned: its input and its tasks (named).
pub struct InferStage {
    pub input: mpsc::Sender<Decoded<FramePlan>>,
    pub tasks: Vec<(String, StageTask)>,
}

/// Builds one model task per model and the collector; observations leave on `out_tx` in the
/// order frames arrived within each partition.
pub fn start(
    infer: Arc<Infer>,
    models: Vec<Model>,
    batching: BatchSettings,
    out_tx: mpsc::Sender<Observed>,
) -> InferStage {
    let (reply_tx, reply_rx) = mpsc::unbounded_channel::<Reply>();
    // Zeros for dashboards before the first close-up: every rule of a face detector with a
    // classifier (the rules a close-up is searched for).
    for rule in infer
        .planner
        .rules
        .iter()
        .filter(|r| r.classifier.is_some())
    {
        let Some(d) = rule.detector else { continue };
        if infer.planner.finds_faces(d) {
            for outcome in ["found", "whole"] {
                infer
                    .metrics
                    .closeup_searches
                    .with_label_values(&[&rule.name, outcome]);
            }
        }
    }
    let mut tasks: Vec<(String, StageTask)> = Vec::new();
    let mut model_txs = Vec::new();
    for (i, model) in models.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<InferItem>(batching.queue_depth() * 4);
        model_txs.push(tx);
        let name = format!("model:{}", infer.planner.models[i].name);
        tasks.push((
            name,
            Box::pin(model_task(
                infer.clone(),
                i,
                batching.policy(model.provider),
                model,
                rx,
                reply_tx.clone(),
            )),
        ));
    }
    let (frame_tx, frame_rx) = mpsc::channel::<Decoded<FramePlan>>(batching.queue_depth() * 2);
    tasks.push((
        "collector".into(),
        Box::pin(async move {
            collect(infer, frame_rx, model_txs, reply_rx, reply_tx, out_tx).await;
            Ok(())
        }),
    ));
    InferStage {
        input: frame_tx,
        tasks,
    }
}

/// Batches a model's inputs and runs them, one batch at a time, on a blocking thread. A failed
/// run stops the worker: its frames are not committed and are read again.
async fn model_task(
    infer: Arc<Infer>,
    index: usize,
    policy: BatchPolicy,
    model: Model,
    mut rx: mpsc::Receiver<InferItem>,
    replies: mpsc::UnboundedSender<Reply>,
) -> Result<(), StageError> {
    let name = infer.planner.models[index].name.clone();
    let depth = infer
        .metrics
        .queue_depth
        .with_label_values(&[&format!("model:{name}")]);
    let mut batcher: Batcher<InferItem> = Batcher::new(policy);
    let mut model = Some(model);
    loop {
        let item = match batcher.deadline() {
            Some(deadline) => tokio::select! {
                item = rx.recv() => Some(item),
                _ = tokio::time::sleep_until(deadline.into()) => None,
            },
            None => Some(rx.recv().await),
        };
        let batch = match item {
            // A closed queue: run what is left.
            Some(None) => Some(batcher.drain()),
            Some(Some(item)) => {
                // Everything already queued joins at once (what arrived while the last batch ran
                // is a batch by itself); each item's wait counts from when it was queued, so a
                // busy model never makes an item wait twice.
                let mut full = push_queued(&mut batcher, item);
                while full.is_none() {
                    match rx.try_recv() {
                        Ok(item) => full = push_queued(&mut batcher, item),
                        Err(_) => break,
                    }
                }
                full.or_else(|| batcher.poll(Instant::now()))
            }
            None => batcher.poll(Instant::now()),
        };
        depth.set((rx.len() + batcher.len()) as i64);
        let closed = rx.is_closed() && rx.is_empty() && batcher.is_empty();
        if let Some(batch) = batch.filter(|b| !b.is_empty()) {
            run_batch(&infer, index, &mut model, batch, &replies)
                .await
                .map_err(|e| {
                    tracing::error!(model = %name, error = %e, "inference failed; stopping the worker without committing these frames");
                    e
                })?;
        }
        if closed {
            return Ok(());
        }
    }
}

fn push_queued(batcher: &mut Batcher<InferItem>, item: InferItem) -> Option<Vec<InferItem>> {
    let queued_at = item.queued_at;
    batcher.push(item, queued_at)
}

async fn run_batch(
    infer: &Infer,
    index: usize,
    model: &mut Option<Model>,
    mut batch: Vec<InferItem>,
    replies: &mpsc::UnboundedSender<Reply>,
) -> Result<(), StageError> {
    let name = &infer.planner.models[index].name;
    let stage = || format!("model:{name}");
    let now = crate::contract::now_ms();
    batch.retain(|item| {
        let admitted = item
            .admission
            .as_ref()
            .is_none_or(|a| a.admitted(&infer.shedder, now));
        if !admitted {
            let _ = replies.send(Reply::Skipped { frame: item.frame });
        }
        admitted
    });
    if batch.is_empty() {
        return Ok(());
    }
    let tensors: Vec<Vec<f32>> = batch
        .iter_mut()
        .map(|i| std::mem::take(&mut i.tensor))
        .collect();
    let m = model.take().ok_or_else(|| {
        StageError::stop(
            stage(),
            Domain::Internal,
            "model lost after an earlier failure",
        )
    })?;
    // Waiting for a run slot counts as the batch's wait, not its compute.
    let slot = match &infer.run_slots {
        Some(s) => Some(
            s.clone()
                .acquire_owned()
                .await
                .map_err(|_| StageError::stop(stage(), Domain::Internal, "run slots closed"))?,
        ),
        None => None,
    };
    let started = Instant::now();
    let (m, result, elapsed) = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        let mut m = m;
        let refs: Vec<&[f32]> = tensors.iter().map(Vec::as_slice).collect();
        let t = Instant::now();
        let r = m.infer(&refs);
        (m, r, t.elapsed())
    })
    .await
    .map_err(|e| StageError::stop(stage(), Domain::Internal, format!("inference task: {e}")))?;
    *model = Some(m);
    let outputs = result.map_err(|e| StageError::stop(stage(), Domain::Internal, e.to_string()))?;
    let n = batch.len();
    infer
        .metrics
        .inference_seconds
        .with_label_values(&[name])
        .observe(elapsed.as_secs_f64());
    infer
        .metrics
        .batch_size
        .with_label_values(&[name])
        .observe(n as f64);
    for (item, output) in batch.into_iter().zip(outputs) {
        let timing = StageTiming {
            model: name.clone(),
            inference_ms: ms(elapsed),
            batch_size: n,
            batch_wait_ms: ms(started.saturating_duration_since(item.queued_at)),
        };
        // The collector outlives every model task; a send fails only during teardown.
        let _ = replies.send(Reply::Model {
            model: index,
            frame: item.frame,
            slot: item.slot,
            output,
            timing,
        });
    }
    Ok(())
}
