//! The worker's inference stages, between the Kafka source and sink:
//!
//! ```text
//!  decode (blocking, per frame: the camera's rules say which models see the whole frame)
//!     │ in read order
//!     ▼
//!  collector ──► model task per model (batcher → ONNX Runtime on a blocking thread)
//!     ▲  │            │ replies (detections, scores)
//!     │  └─ crops ◄───┘ (blocking: cut each kept detection, preprocess for the classifier)
//!     │
//!     └─► observation, in frame order ──► emitter
//! ```
//!
//! One ONNX Runtime session per model, fed by its own batcher, so a batch mixes frames (or crops)
//! from every camera the worker serves. Replies travel on an unbounded channel: it cannot
//! deadlock with the bounded model queues, and it is bounded in practice by the in-flight frame
//! limit times `max_detections`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use opencv::core::{Mat, Rect};
use opencv::prelude::*;
use tokio::sync::mpsc;

use crate::avro::{Codec, OBSERVATION};
use crate::batcher::{BatchPolicy, Batcher};
use crate::cascade;
use crate::decode;
use crate::episodes::EpisodePolicy;
use crate::events::{event_codec, EventCodec, EventContext, ViolationEvent};
use crate::frame::{self, FrameMeta, Rejection};
use crate::jpeg::JpegInfo;
use crate::metrics::Metrics;
use crate::model::{Detection, InputSpec, Model, ModelOutput, Resize, Task};
use crate::observation::{
    now_ms, Classification, DetectionResult, FrameSize, ModelRef, Observation, RuleResult,
    SourceRef, StageTiming, Timings, Verdict,
};
use crate::rules::{Rule, RuleSet};
use crate::state::StateStore;
use crate::worker::{DeadLetter, Judged, Origin, Outcome};

/// Static facts about a loaded model that the stages need.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    pub provider: &'static str,
    pub input: InputSpec,
    pub labels: Vec<String>,
    pub task: Task,
}

/// A rule resolved against the model pack.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub name: String,
    pub rule: Rule,
    /// Index of the detector model, for detector → classifier rules.
    pub detector: Option<usize>,
    pub classifier: usize,
    /// Index of the violation label in the classifier's labels.
    pub violation: usize,
}

/// Where annotated debug images go.
#[derive(Debug, Clone)]
pub struct DebugImages {
    pub dir: PathBuf,
    /// Cameras whose frames are drawn.
    pub cameras: Vec<String>,
}

/// The Avro writers of a worker's two record types.
pub struct Codecs {
    pub observations: Codec<Observation>,
    pub events: EventCodec,
}

impl Codecs {
    /// Single-object encoding, for a worker without a schema registry.
    pub fn single_object() -> Codecs {
        Codecs {
            observations: Codec::new(&OBSERVATION),
            events: event_codec(),
        }
    }
}

/// Everything the stages share, fixed at start-up.
pub struct Engine {
    /// Episode state of the assigned partitions (shared with the rebalance callbacks).
    pub store: Arc<StateStore>,
    /// Episode policy per rule name.
    policies: HashMap<String, EpisodePolicy>,
    /// Writers for the output topics, in the framing chosen at start-up.
    codecs: Codecs,
    pub ruleset: RuleSet,
    pub rules: Vec<CompiledRule>,
    rule_index: HashMap<String, usize>,
    pub models: Vec<ModelInfo>,
    pub metrics: Arc<Metrics>,
    pub frames_topic: String,
    pub worker_id: String,
    pub debug: Option<DebugImages>,
}

impl Engine {
    /// Resolves the rules against the loaded models, naming the first inconsistency.
    pub fn new(
        ruleset: RuleSet,
        models: &[Model],
        metrics: Arc<Metrics>,
        frames_topic: String,
        worker_id: String,
        debug: Option<DebugImages>,
        codecs: Codecs,
    ) -> Result<Engine, String> {
        let policies = ruleset
            .rules
            .iter()
            .map(|(n, r)| (n.clone(), r.episode.clone()))
            .collect();
        for name in ruleset.rules.keys() {
            metrics.frames_stale.with_label_values(&[name]);
            for kind in ["opened", "updated", "resolved"] {
                metrics.episode_events.with_label_values(&[name, kind]);
            }
        }
        let infos: Vec<ModelInfo> = models
            .iter()
            .map(|m| ModelInfo {
                name: m.manifest.name.clone(),
                version: m.manifest.version.clone(),
                provider: m.provider,
                input: m.manifest.input.clone(),
                labels: m.manifest.labels.clone(),
                task: m.manifest.task,
            })
            .collect();
        let find = |name: &str, task: Task, rule: &str, key: &str| -> Result<usize, String> {
            let i = infos
                .iter()
                .position(|m| m.name == name)
                .ok_or_else(|| format!("rule `{rule}`: {key} `{name}` is not loaded"))?;
            if infos[i].task != task {
                return Err(format!(
                    "rule `{rule}`: {key} `{name}` is a {:?} model, expected {task:?}",
                    infos[i].task
                ));
            }
            Ok(i)
        };
        let mut rules = Vec::new();
        let mut rule_index = HashMap::new();
        for (name, rule) in &ruleset.rules {
            let detector = rule
                .detector
                .as_deref()
                .map(|d| find(d, Task::Detect, name, "detector"))
                .transpose()?;
            let classifier = find(&rule.classifier, Task::Classify, name, "classifier")?;
            let violation = infos[classifier]
                .labels
                .iter()
                .position(|l| *l == rule.violation_label)
                .ok_or_else(|| {
                    format!(
                        "rule `{name}`: violation_label `{}` is not a label of `{}` ({})",
                        rule.violation_label,
                        rule.classifier,
                        infos[classifier].labels.join(", ")
                    )
                })?;
            rule_index.insert(name.clone(), rules.len());
            rules.push(CompiledRule {
                name: name.clone(),
                rule: rule.clone(),
                detector,
                classifier,
                violation,
            });
        }
        Ok(Engine {
            store: Arc::new(StateStore::new()),
            policies,
            codecs,
            ruleset,
            rules,
            rule_index,
            models: infos,
            metrics,
            frames_topic,
            worker_id,
            debug,
        })
    }

    /// Indices of the rules applying to this frame's camera.
    pub fn plan(&self, meta: &FrameMeta) -> Vec<usize> {
        self.ruleset
            .rules_for(meta)
            .iter()
            .filter_map(|n| self.rule_index.get(n).copied())
            .collect()
    }

    /// Models that see the whole frame under these rules: detectors and whole-frame classifiers.
    fn whole_frame_models(&self, rules: &[usize]) -> Vec<usize> {
        let mut out = Vec::new();
        for &r in rules {
            let m = self.rules[r].detector.unwrap_or(self.rules[r].classifier);
            if !out.contains(&m) {
                out.push(m);
            }
        }
        out
    }

    /// Applies an observation to its cameras' episodes (in frame order): the events it raises,
    /// encoded, and the state entries it changed, serialised.
    fn judge(&self, partition: i32, offset: i64, obs: Observation) -> Judged {
        let j = self.store.judge(partition, offset, &obs, &self.policies);
        for rule in &j.stale {
            self.metrics.frames_stale.with_label_values(&[rule]).inc();
        }
        for (site, rule, secs) in &j.violation_secs {
            self.metrics
                .violation_seconds
                .with_label_values(&[site, rule])
                .inc_by(*secs);
        }
        let mut events = Vec::with_capacity(j.events.len());
        for r in &j.events {
            let ctx = EventContext {
                site: &r.site,
                camera: &r.camera,
                zone: r.zone.as_deref(),
                rule: &r.rule,
                frames_topic: &self.frames_topic,
                models: &r.models,
                worker: &self.worker_id,
            };
            let ev = ViolationEvent::from_episode(&r.event, &ctx);
            self.metrics
                .episode_events
                .with_label_values(&[&ev.rule, &ev.kind])
                .inc();
            if ev.kind != "updated" {
                tracing::info!(kind = %ev.kind, site = %ev.site, camera = %ev.camera, rule = %ev.rule,
                    episode = %ev.episode_id, event = %ev.event_id, reason = ev.reason.as_deref().unwrap_or(""), "episode event");
            }
            let bytes = self
                .codecs
                .events
                .encode(&ev)
                .expect("events built from the schema's own types encode");
            events.push((ev.camera, bytes));
        }
        let states = j
            .changed
            .iter()
            .map(|s| (s.key(), serde_json::to_vec(s).expect("state serialises")))
            .collect();
        let observation = self
            .codecs
            .observations
            .encode(&obs)
            .expect("observations built from the schema's own types encode");
        Judged {
            obs,
            observation,
            events,
            states,
        }
    }

    fn model_ref(&self, m: usize) -> ModelRef {
        ModelRef {
            name: self.models[m].name.clone(),
            version: self.models[m].version.clone(),
            provider: self.models[m].provider.to_string(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A decoded frame with its whole-frame model inputs.
pub(crate) struct Decoded {
    origin: Origin,
    meta: FrameMeta,
    size: FrameSize,
    rules: Vec<usize>,
    /// The decoded image, kept while crops may be needed.
    image: Option<Arc<Mat>>,
    /// (model, input tensor) for every whole-frame model.
    tensors: Vec<(usize, Vec<f32>)>,
    decode_ms: f64,
    preprocess_ms: f64,
}

/// Blocking: decodes and preprocesses a frame for the models its camera's rules need. Cameras
/// without rules are not decoded at all (their frames were checked structurally at intake).
#[allow(clippy::too_many_arguments)]
pub(crate) fn decode_frame(
    engine: &Engine,
    origin: Origin,
    meta: FrameMeta,
    info: JpegInfo,
    key: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    payload: Vec<u8>,
) -> Result<Decoded, Box<DeadLetter>> {
    thread_local! {
        static SCRATCH: std::cell::RefCell<Mat> = std::cell::RefCell::new(Mat::default());
    }
    let rules = engine.plan(&meta);
    let whole = engine.whole_frame_models(&rules);
    let mut size = FrameSize {
        width: info.width,
        height: info.height,
        decoded_width: 0,
        decoded_height: 0,
    };
    if whole.is_empty() {
        return Ok(Decoded {
            origin,
            meta,
            size,
            rules,
            image: None,
            tensors: Vec::new(),
            decode_ms: 0.0,
            preprocess_ms: 0.0,
        });
    }
    let (need_w, need_h) = whole.iter().fold((0, 0), |(w, h), &m| {
        let i = &engine.models[m].input;
        (w.max(i.width), h.max(i.height))
    });
    let t0 = Instant::now();
    let factor = decode::reduction_factor(info.width, info.height, need_w, need_h);
    let img = match decode::decode(&payload, factor) {
        Ok(img) => img,
        Err(rejection) => {
            return Err(Box::new(DeadLetter {
                origin,
                key,
                headers,
                payload,
                rejection,
            }));
        }
    };
    let decode_time = t0.elapsed();
    let t1 = Instant::now();
    let mut tensors = Vec::with_capacity(whole.len());
    for m in whole {
        let mut t = Vec::new();
        let r = SCRATCH.with(|s| {
            decode::preprocess(&img, &engine.models[m].input, &mut s.borrow_mut(), &mut t)
        });
        if let Err(e) = r {
            let rejection = Rejection::new(frame::Reason::DecodeFailed, format!("preprocess: {e}"));
            return Err(Box::new(DeadLetter {
                origin,
                key,
                headers,
                payload,
                rejection,
            }));
        }
        tensors.push((m, t));
    }
    let preprocess_time = t1.elapsed();
    engine
        .metrics
        .decode_seconds
        .observe(decode_time.as_secs_f64());
    engine
        .metrics
        .preprocess_seconds
        .observe(preprocess_time.as_secs_f64());
    size.decoded_width = img.cols() as u32;
    size.decoded_height = img.rows() as u32;
    let needs_crops = rules.iter().any(|&r| engine.rules[r].detector.is_some());
    Ok(Decoded {
        origin,
        meta,
        size,
        rules,
        image: needs_crops.then(|| Arc::new(img)),
        tensors,
        decode_ms: ms(decode_time),
        preprocess_ms: ms(preprocess_time),
    })
}

/// Which part of a frame a model input is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Slot {
    Whole,
    /// Crop of detection `det` kept by rule `rule`.
    Crop {
        rule: usize,
        det: usize,
    },
}

/// One input queued for a model.
pub(crate) struct InferItem {
    frame: u64,
    slot: Slot,
    tensor: Vec<f32>,
    queued_at: Instant,
}

/// What comes back to the collector.
pub(crate) enum Reply {
    Model {
        model: usize,
        frame: u64,
        slot: Slot,
        output: ModelOutput,
        timing: StageTiming,
    },
    Crops {
        frame: u64,
        items: Vec<(usize, Slot, Vec<f32>)>,
        crop_ms: f64,
    },
}

/// A frame between decode and its observation.
struct InFrame {
    origin: Origin,
    meta: FrameMeta,
    size: FrameSize,
    rules: Vec<usize>,
    image: Option<Arc<Mat>>,
    /// Model replies and crop jobs still to come.
    outstanding: usize,
    /// Detections each detector rule kept, by rule.
    kept: HashMap<usize, Vec<Detection>>,
    /// Crop scores by (rule, detection index).
    crop_scores: HashMap<(usize, usize), Vec<f32>>,
    /// Whole-frame classifier scores by model.
    whole_scores: HashMap<usize, Vec<f32>>,
    stages: Vec<StageTiming>,
    used_models: Vec<usize>,
    decode_ms: f64,
    preprocess_ms: f64,
    crop_ms: f64,
    started: Instant,
}

/// Spawns a pipeline stage. A stage that panics stops the worker (through `fatal`) instead of
/// leaving its frames in flight forever; they are not committed and are read again.
pub(crate) fn spawn_stage(
    name: &'static str,
    fatal: mpsc::Sender<anyhow::Error>,
    stage: impl std::future::Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    use futures_util::FutureExt;
    tokio::spawn(async move {
        if let Err(panic) = std::panic::AssertUnwindSafe(stage).catch_unwind().await {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            tracing::error!(stage = name, panic = %what, "pipeline stage panicked; stopping the worker");
            let _ = fatal
                .send(anyhow!("pipeline stage {name} panicked: {what}"))
                .await;
        }
    })
}

/// Spawns one model task per model and the collector; returns the collector's input.
pub(crate) fn start(
    engine: Arc<Engine>,
    models: Vec<Model>,
    policy: BatchPolicy,
    out_tx: mpsc::Sender<Outcome>,
    fatal: mpsc::Sender<anyhow::Error>,
) -> (mpsc::Sender<Decoded>, Vec<tokio::task::JoinHandle<()>>) {
    let (reply_tx, reply_rx) = mpsc::unbounded_channel::<Reply>();
    let mut handles = Vec::new();
    let mut model_txs = Vec::new();
    for (i, model) in models.into_iter().enumerate() {
        let (tx, rx) = mpsc::channel::<InferItem>(policy.max_batch * 4);
        model_txs.push(tx);
        handles.push(spawn_stage(
            "model",
            fatal.clone(),
            model_task(
                engine.clone(),
                i,
                model,
                policy,
                rx,
                reply_tx.clone(),
                fatal.clone(),
            ),
        ));
    }
    let (frame_tx, frame_rx) = mpsc::channel::<Decoded>(policy.max_batch * 2);
    handles.push(spawn_stage(
        "collector",
        fatal,
        collect(engine, frame_rx, model_txs, reply_rx, reply_tx, out_tx),
    ));
    (frame_tx, handles)
}

/// Batches a model's inputs and runs them, one batch at a time, on a blocking thread.
async fn model_task(
    engine: Arc<Engine>,
    index: usize,
    model: Model,
    policy: BatchPolicy,
    mut rx: mpsc::Receiver<InferItem>,
    replies: mpsc::UnboundedSender<Reply>,
    fatal: mpsc::Sender<anyhow::Error>,
) {
    let name = engine.models[index].name.clone();
    let mut batcher: Batcher<InferItem> = Batcher::new(policy);
    let mut model = Some(model);
    loop {
        let batch = match batcher.deadline() {
            Some(deadline) => tokio::select! {
                item = rx.recv() => match item {
                    Some(item) => batcher.push(item, Instant::now()).or_else(|| batcher.poll(Instant::now())),
                    None => Some(batcher.drain()),
                },
                _ = tokio::time::sleep_until(deadline.into()) => batcher.poll(Instant::now()),
            },
            None => match rx.recv().await {
                Some(item) => batcher.push(item, Instant::now()),
                None => Some(batcher.drain()),
            },
        };
        engine
            .metrics
            .queue_depth
            .with_label_values(&[&format!("model:{name}")])
            .set((rx.len() + batcher.len()) as i64);
        let closed = rx.is_closed() && rx.is_empty() && batcher.is_empty();
        if let Some(batch) = batch.filter(|b| !b.is_empty()) {
            if let Err(e) = run_batch(&engine, index, &mut model, batch, &replies).await {
                tracing::error!(model = %name, error = %e, "inference failed; stopping the worker without committing these frames");
                let _ = fatal.send(e).await;
                return;
            }
        }
        if closed {
            return;
        }
    }
}

async fn run_batch(
    engine: &Engine,
    index: usize,
    model: &mut Option<Model>,
    mut batch: Vec<InferItem>,
    replies: &mpsc::UnboundedSender<Reply>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let tensors: Vec<Vec<f32>> = batch
        .iter_mut()
        .map(|i| std::mem::take(&mut i.tensor))
        .collect();
    let m = model
        .take()
        .ok_or_else(|| anyhow!("model lost after an earlier failure"))?;
    let (m, result, elapsed) = tokio::task::spawn_blocking(move || {
        let mut m = m;
        let refs: Vec<&[f32]> = tensors.iter().map(Vec::as_slice).collect();
        let t = Instant::now();
        let r = m.infer(&refs);
        (m, r, t.elapsed())
    })
    .await?;
    *model = Some(m);
    let outputs = result?;
    let name = &engine.models[index].name;
    let n = batch.len();
    engine
        .metrics
        .inference_seconds
        .with_label_values(&[name])
        .observe(elapsed.as_secs_f64());
    engine
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

/// Routes frames to models, crops detections for classifiers, and emits each frame's
/// observation in frame order once every model has answered.
async fn collect(
    engine: Arc<Engine>,
    mut frames: mpsc::Receiver<Decoded>,
    model_txs: Vec<mpsc::Sender<InferItem>>,
    mut replies: mpsc::UnboundedReceiver<Reply>,
    reply_tx: mpsc::UnboundedSender<Reply>,
    out_tx: mpsc::Sender<Outcome>,
) {
    let mut state: HashMap<u64, InFrame> = HashMap::new();
    let mut done: BTreeMap<u64, (Origin, Box<Observation>)> = BTreeMap::new();
    let (mut next_seq, mut next_emit) = (0u64, 0u64);
    let mut open = true;
    while open || !state.is_empty() {
        let finished: Option<u64> = tokio::select! {
            f = frames.recv(), if open => match f {
                None => { open = false; None }
                Some(d) => {
                    let seq = next_seq;
                    next_seq += 1;
                    let mut f = InFrame {
                        origin: d.origin, meta: d.meta, size: d.size, rules: d.rules, image: d.image,
                        outstanding: d.tensors.len(), kept: HashMap::new(), crop_scores: HashMap::new(),
                        whole_scores: HashMap::new(), stages: Vec::new(), used_models: Vec::new(),
                        decode_ms: d.decode_ms, preprocess_ms: d.preprocess_ms, crop_ms: 0.0, started: Instant::now(),
                    };
                    for (m, tensor) in d.tensors {
                        f.used_models.push(m);
                        let item = InferItem { frame: seq, slot: Slot::Whole, tensor, queued_at: Instant::now() };
                        if model_txs[m].send(item).await.is_err() {
                            return;
                        }
                    }
                    let empty = f.outstanding == 0;
                    state.insert(seq, f);
                    empty.then_some(seq)
                }
            },
            r = replies.recv() => match r {
                None => return,
                Some(Reply::Model { model, frame, slot, output, timing }) => {
                    let Some(f) = state.get_mut(&frame) else { continue };
                    f.outstanding -= 1;
                    f.stages.push(timing);
                    match (slot, output) {
                        (Slot::Whole, ModelOutput::Detections(dets)) => {
                            schedule_crops(&engine, frame, f, model, &dets, &reply_tx);
                        }
                        (Slot::Whole, ModelOutput::Scores(s)) => { f.whole_scores.insert(model, s); }
                        (Slot::Crop { rule, det }, ModelOutput::Scores(s)) => {
                            if !f.used_models.contains(&model) { f.used_models.push(model); }
                            f.crop_scores.insert((rule, det), s);
                        }
                        (Slot::Crop { .. }, ModelOutput::Detections(_)) => {}
                    }
                    (f.outstanding == 0).then_some(frame)
                }
                Some(Reply::Crops { frame, items, crop_ms }) => {
                    let Some(f) = state.get_mut(&frame) else { continue };
                    f.outstanding -= 1;
                    f.crop_ms += crop_ms;
                    f.outstanding += items.len();
                    for (m, slot, tensor) in items {
                        let item = InferItem { frame, slot, tensor, queued_at: Instant::now() };
                        if model_txs[m].send(item).await.is_err() {
                            return;
                        }
                    }
                    (f.outstanding == 0).then_some(frame)
                }
            },
        };
        if let Some(seq) = finished {
            if let Some(f) = state.remove(&seq) {
                let origin_obs = finish(&engine, f);
                done.insert(seq, origin_obs);
            }
            while let Some((origin, obs)) = done.remove(&next_emit) {
                next_emit += 1;
                let judged = engine.judge(origin.ticket.partition, origin.ticket.offset, *obs);
                if out_tx
                    .send(Outcome::Observation(origin, Box::new(judged)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }
}

/// Keeps each detector rule's detections and starts a blocking job cutting their crops.
fn schedule_crops(
    engine: &Arc<Engine>,
    frame: u64,
    f: &mut InFrame,
    detector: usize,
    dets: &[Detection],
    reply_tx: &mpsc::UnboundedSender<Reply>,
) {
    let (w, h) = (f.size.decoded_width, f.size.decoded_height);
    let input = &engine.models[detector].input;
    let mapped: Vec<Detection>;
    let dets = if input.resize == Resize::Letterbox {
        let lb = decode::Letterbox::fit(w, h, input.width, input.height);
        mapped = dets
            .iter()
            .map(|d| Detection {
                bbox: lb.to_image(d.bbox),
                ..*d
            })
            .collect();
        &mapped[..]
    } else {
        dets
    };
    let mut jobs: Vec<(usize, Slot, [f32; 4], f32)> = Vec::new();
    for &r in &f.rules {
        let rule = &engine.rules[r];
        if rule.detector != Some(detector) {
            continue;
        }
        let kept = cascade::select(&rule.rule, dets, w, h);
        for (i, d) in kept.iter().enumerate() {
            jobs.push((
                r,
                Slot::Crop { rule: r, det: i },
                d.bbox,
                rule.rule.crop_margin,
            ));
        }
        f.kept.insert(r, kept);
    }
    let Some(image) = f.image.clone().filter(|_| !jobs.is_empty()) else {
        return;
    };
    f.outstanding += 1;
    let engine = engine.clone();
    let tx = reply_tx.clone();
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut items = Vec::with_capacity(jobs.len());
        let mut scratch = Mat::default();
        for (r, slot, bbox, margin) in jobs {
            let classifier = engine.rules[r].classifier;
            let (x, y, cw, ch) = cascade::crop_rect(bbox, margin, w, h);
            let mut tensor = Vec::new();
            let ok = Mat::roi(&*image, Rect::new(x, y, cw, ch))
                .and_then(|roi| roi.try_clone())
                .and_then(|crop| {
                    decode::preprocess(
                        &crop,
                        &engine.models[classifier].input,
                        &mut scratch,
                        &mut tensor,
                    )
                });
            match ok {
                Ok(()) => items.push((classifier, slot, tensor)),
                Err(e) => {
                    tracing::warn!(error = %e, "crop failed; the detection is left unclassified")
                }
            }
        }
        let _ = tx.send(Reply::Crops {
            frame,
            items,
            crop_ms: ms(t.elapsed()),
        });
    });
}

/// Evaluates the rules and builds the observation.
fn finish(engine: &Engine, f: InFrame) -> (Origin, Box<Observation>) {
    let mut rules = Vec::new();
    let mut detections = Vec::new();
    for &r in &f.rules {
        let cr = &engine.rules[r];
        let classifier = &engine.models[cr.classifier];
        let (scores, n, reason): (Vec<Vec<f32>>, usize, Option<String>) = match cr.detector {
            Some(d) => {
                let kept = f.kept.get(&r).map(Vec::as_slice).unwrap_or_default();
                let mut s = Vec::new();
                for (i, det) in kept.iter().enumerate() {
                    if let Some(cs) = f.crop_scores.get(&(r, i)) {
                        detections.push(DetectionResult {
                            rule: cr.name.clone(),
                            detector: engine.models[d].name.clone(),
                            score: det.score,
                            bbox: det.bbox,
                            classifier: classifier.name.clone(),
                            label: classifier.labels[cascade::argmax(cs)].clone(),
                            scores: classifier
                                .labels
                                .iter()
                                .cloned()
                                .zip(cs.iter().copied())
                                .collect(),
                        });
                        s.push(cs.clone());
                    }
                }
                let n = s.len();
                (s, n, (n == 0).then(|| "no_detection".to_string()))
            }
            None => match f.whole_scores.get(&cr.classifier) {
                Some(s) => (vec![s.clone()], 0, None),
                None => (Vec::new(), 0, Some("not_classified".to_string())),
            },
        };
        let (verdict, level) = cascade::verdict(&scores, cr.violation);
        engine
            .metrics
            .count_verdict(&f.meta.site, &cr.name, verdict.as_str());
        if verdict == Verdict::Violation {
            if let Some(c) = &engine.metrics.camera_violations {
                c.with_label_values(&[&f.meta.site, &f.meta.camera, &cr.name])
                    .inc();
            }
        }
        rules.push(RuleResult {
            rule: cr.name.clone(),
            verdict,
            reason: if verdict == Verdict::Unknown {
                reason
            } else {
                None
            },
            level,
            detections: n,
        });
    }
    let classifications = f
        .whole_scores
        .iter()
        .map(|(&m, s)| Classification {
            model: engine.models[m].name.clone(),
            label: engine.models[m].labels[cascade::argmax(s)].clone(),
            scores: engine.models[m]
                .labels
                .iter()
                .cloned()
                .zip(s.iter().copied())
                .collect(),
        })
        .collect();
    let obs = Observation {
        camera: f.meta.camera,
        site: f.meta.site,
        zone: f.meta.zone,
        captured_at_ms: f.meta.captured_at_ms,
        seq: f.meta.seq,
        frame: f.size,
        rules,
        detections,
        classifications,
        models: f.used_models.iter().map(|&m| engine.model_ref(m)).collect(),
        timings: Timings {
            decode_ms: f.decode_ms,
            preprocess_ms: f.preprocess_ms,
            crop_ms: f.crop_ms,
            stages: f.stages,
            total_ms: ms(f.started.elapsed()) + f.decode_ms + f.preprocess_ms,
        },
        source: SourceRef {
            topic: engine.frames_topic.clone(),
            partition: f.origin.ticket.partition,
            offset: f.origin.ticket.offset,
        },
        worker: engine.worker_id.clone(),
        processed_at_ms: now_ms(),
    };
    if let (Some(debug), Some(image)) = (&engine.debug, f.image) {
        if debug.cameras.iter().any(|c| *c == obs.camera) {
            let obs = obs.clone();
            let dir = debug.dir.clone();
            let violating: Vec<bool> = obs
                .detections
                .iter()
                .map(|d| {
                    engine
                        .rules
                        .iter()
                        .any(|r| r.name == d.rule && r.rule.violation_label == d.label)
                })
                .collect();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = draw_debug(&image, &obs, &violating, &dir) {
                    tracing::warn!(error = %e, camera = %obs.camera, "debug image not written");
                }
            });
        }
    }
    (f.origin, Box::new(obs))
}

/// Writes `DIR/<camera>-<seq>.jpg` with each detection's box and label drawn.
fn draw_debug(
    image: &Mat,
    obs: &Observation,
    violating: &[bool],
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use opencv::core::{Point, Scalar};
    use opencv::imgproc;
    let mut img = image.try_clone()?;
    let (w, h) = (img.cols() as f32, img.rows() as f32);
    for (d, &violation) in obs.detections.iter().zip(violating) {
        let colour = if violation {
            Scalar::new(0.0, 0.0, 255.0, 0.0)
        } else {
            Scalar::new(0.0, 200.0, 0.0, 0.0)
        };
        let (x1, y1) = ((d.bbox[0] * w) as i32, (d.bbox[1] * h) as i32);
        let (x2, y2) = ((d.bbox[2] * w) as i32, (d.bbox[3] * h) as i32);
        imgproc::rectangle(
            &mut img,
            Rect::new(x1, y1, x2 - x1, y2 - y1),
            colour,
            2,
            imgproc::LINE_8,
            0,
        )?;
        let best = d.scores.get(&d.label).copied().unwrap_or(0.0);
        let text = format!("{} {:.2} (face {:.2})", d.label, best, d.score);
        imgproc::put_text(
            &mut img,
            &text,
            Point::new(x1, (y1 - 4).max(10)),
            imgproc::FONT_HERSHEY_SIMPLEX,
            0.45,
            colour,
            1,
            imgproc::LINE_AA,
            false,
        )?;
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}-{:06}.jpg", obs.camera, obs.seq));
    std::fs::write(&path, decode::encode_jpeg(&img, 90)?)?;
    Ok(())
}
