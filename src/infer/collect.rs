//! The collector: routes each decoded frame to its models, crops detections for the
//! classifiers, and emits each frame's observation once every model answered, in frame order
//! within its partition. Partitions do not wait for each other: a frame whose faces queue for
//! the classifier holds back only the later frames of its own partition (and so of its own
//! cameras), which is the order episodes and offset commits need.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use opencv::core::{Mat, Rect};
use opencv::prelude::*;
use tokio::sync::mpsc;

use super::cascade;
use super::frame::{ms, InFrame, Infer, InferItem, Reply, Slot};
use super::model::{Detection, ModelOutput};
use super::observe::finish;
use super::plan::{FramePlan, CLOSEUP_SCALE};
use super::shed::{Admission, At, SKIPPED_STALE};
use super::track::{CropPlan, Tracker};
use crate::contract::{FrameMeta, Observation, Observed, Origin};
use crate::decode::{preprocess, Decoded, Letterbox, Resize};

/// Tracks are per camera and rule.
type TrackKey = (String, String, usize);

fn track_key(meta: &FrameMeta, rule: usize) -> TrackKey {
    (meta.site.clone(), meta.camera.clone(), rule)
}

/// A finished frame waiting for its turn: where it came from, its observation, its image.
type Finished = (Origin, Box<Observation>, Option<Arc<opencv::core::Mat>>);

/// Routes frames to models, crops detections for classifiers, and emits each frame's
/// observation once every model has answered, in frame order within its partition.
pub(crate) async fn collect(
    infer: Arc<Infer>,
    mut frames: mpsc::Receiver<Decoded<FramePlan>>,
    model_txs: Vec<mpsc::Sender<InferItem>>,
    mut replies: mpsc::UnboundedReceiver<Reply>,
    reply_tx: mpsc::UnboundedSender<Reply>,
    out_tx: mpsc::Sender<Observed>,
) {
    let mut state: HashMap<u64, InFrame> = HashMap::new();
    let mut tracker: Tracker<TrackKey> = Tracker::new(infer.track);
    // Crops waiting for a classification of their track that another frame is running.
    let mut waiting: Waiting = HashMap::new();
    let mut done: HashMap<u64, Finished> = HashMap::new();
    // Per partition, its frames in arrival order; each leaves when it and all before it are done.
    let mut order: HashMap<i32, VecDeque<u64>> = HashMap::new();
    let mut next_seq = 0u64;
    let mut open = true;
    while open || !state.is_empty() {
        let mut finished: Vec<u64> = Vec::new();
        tokio::select! {
            f = frames.recv(), if open => match f {
                None => { open = false; }
                Some(d) => {
                    let seq = next_seq;
                    next_seq += 1;
                    let mut f = InFrame {
                        origin: d.origin, meta: d.meta, size: d.size, plan: d.plan, image: d.image,
                        outstanding: d.tensors.len(), kept: HashMap::new(), crop_scores: HashMap::new(), tracks: HashMap::new(),
                        closeup: HashMap::new(), whole_scores: HashMap::new(), stages: Vec::new(), used_models: Vec::new(),
                        decode_ms: d.decode_ms, preprocess_ms: d.preprocess_ms, crop_ms: 0.0, started: Instant::now(),
                    };
                    let at = At { partition: f.origin.ticket.partition, offset: f.origin.ticket.offset };
                    let admission = Arc::new(Admission::new(at, &f.meta.site, &f.meta.camera, f.meta.captured_at_ms));
                    for (m, tensor) in d.tensors {
                        f.used_models.push(m);
                        let item = InferItem {
                            frame: seq, slot: Slot::Whole, tensor, queued_at: Instant::now(),
                            admission: Some(admission.clone()),
                        };
                        if model_txs[m].send(item).await.is_err() {
                            return;
                        }
                    }
                    if f.outstanding == 0 { finished.push(seq); }
                    order.entry(f.origin.ticket.partition).or_default().push_back(seq);
                    state.insert(seq, f);
                }
            },
            r = replies.recv() => match r {
                None => return,
                Some(Reply::Model { model, frame, slot, output, timing }) => {
                    let Some(f) = state.get_mut(&frame) else { continue };
                    f.outstanding -= 1;
                    f.stages.push(timing);
                    let mut release = None;
                    match (slot, output) {
                        (Slot::Whole, ModelOutput::Detections(dets)) => {
                            let dets = in_frame(&infer, f, model, dets);
                            let again = closeup_rules(&infer, f, model, &dets);
                            let mut c = Crops { tracker: &mut tracker, waiting: &mut waiting, reply_tx: &reply_tx };
                            schedule_crops(&infer, frame, f, model, &dets, Pass::Frame { except: &again }, &mut c);
                            if !again.is_empty() {
                                search_closeup(&infer, frame, f, model, again, &reply_tx);
                            }
                        }
                        (Slot::Closeup, ModelOutput::Detections(dets)) => {
                            let dets = from_closeup(&infer, f, model, dets);
                            let again = f.closeup.get(&model).cloned().unwrap_or_default();
                            let mut c = Crops { tracker: &mut tracker, waiting: &mut waiting, reply_tx: &reply_tx };
                            schedule_crops(&infer, frame, f, model, &dets, Pass::Closeup { rules: &again }, &mut c);
                        }
                        (Slot::Whole, ModelOutput::Scores(s)) => { f.whole_scores.insert(model, s); }
                        (Slot::Crop { rule, det }, ModelOutput::Scores(s)) => {
                            if !f.used_models.contains(&model) { f.used_models.push(model); }
                            if let Some(&track) = f.tracks.get(&(rule, det)) {
                                let key = track_key(&f.meta, rule);
                                tracker.scored(&key, track, &s);
                                release = Some(((key, track), s.clone()));
                            }
                            f.crop_scores.insert((rule, det), s);
                        }
                        (Slot::Crop { .. }, ModelOutput::Detections(_)) | (Slot::Closeup, ModelOutput::Scores(_)) => {}
                    }
                    if f.outstanding == 0 { finished.push(frame); }
                    if let Some((k, s)) = release {
                        release_waiters(&mut waiting, &mut state, &k, Some(&s), &mut finished);
                    }
                }
                Some(Reply::Closeup { frame, model, tensor }) => {
                    let Some(f) = state.get_mut(&frame) else { continue };
                    f.outstanding -= 1;
                    match tensor {
                        Some(tensor) => {
                            f.outstanding += 1;
                            let item = InferItem { frame, slot: Slot::Closeup, tensor, queued_at: Instant::now(), admission: None };
                            if model_txs[model].send(item).await.is_err() {
                                return;
                            }
                        }
                        None => {
                            let again = f.closeup.get(&model).cloned().unwrap_or_default();
                            let mut c = Crops { tracker: &mut tracker, waiting: &mut waiting, reply_tx: &reply_tx };
                            schedule_crops(&infer, frame, f, model, &[], Pass::Closeup { rules: &again }, &mut c);
                        }
                    }
                    if f.outstanding == 0 { finished.push(frame); }
                }
                Some(Reply::Skipped { frame }) => {
                    let Some(f) = state.get_mut(&frame) else { continue };
                    f.outstanding -= 1;
                    f.used_models.clear();
                    if f.plan.skipped.is_none() {
                        f.plan.skipped = Some(SKIPPED_STALE);
                        infer.metrics.frames_skipped.with_label_values(&[SKIPPED_STALE]).inc();
                    }
                    if f.outstanding == 0 { finished.push(frame); }
                }
                Some(Reply::Crops { frame, items, attempted, crop_ms }) => {
                    let Some(f) = state.get_mut(&frame) else { continue };
                    f.outstanding -= 1;
                    f.crop_ms += crop_ms;
                    f.outstanding += items.len();
                    // A crop that could not be cut never reports: its waiters go on without it.
                    let cut: Vec<Slot> = items.iter().map(|(_, s, _)| *s).collect();
                    let lost: Vec<TrackId> = lost_tracks(&f.tracks, &attempted, &cut)
                        .into_iter()
                        .map(|(rule, track)| (track_key(&f.meta, rule), track))
                        .collect();
                    if f.outstanding == 0 { finished.push(frame); }
                    for (m, slot, tensor) in items {
                        let item = InferItem { frame, slot, tensor, queued_at: Instant::now(), admission: None };
                        if model_txs[m].send(item).await.is_err() {
                            return;
                        }
                    }
                    for k in lost {
                        release_waiters(&mut waiting, &mut state, &k, None, &mut finished);
                    }
                }
            },
        };
        for seq in finished {
            let Some(f) = state.remove(&seq) else {
                continue;
            };
            let partition = f.origin.ticket.partition;
            done.insert(seq, finish(&infer, f));
            // Emit what this frame completed: its partition's finished frames up to the first
            // one still open.
            let Some(queue) = order.get_mut(&partition) else {
                continue;
            };
            while let Some((origin, obs, image)) = queue.front().and_then(|s| done.remove(s)) {
                queue.pop_front();
                if out_tx.send(Observed { origin, obs, image }).await.is_err() {
                    return;
                }
            }
            if queue.is_empty() {
                order.remove(&partition);
            }
        }
    }
}

/// A track of one camera's rule.
type TrackId = (TrackKey, u64);

/// Crops waiting for their track's running classification: (frame, rule, detection).
type Waiting = HashMap<TrackId, Vec<(u64, usize, usize)>>;

/// Gives a track's new scores (or, when its crop was lost, nothing) to the crops waiting for
/// them; frames with nothing else outstanding are finished.
fn release_waiters(
    waiting: &mut Waiting,
    state: &mut HashMap<u64, InFrame>,
    track: &TrackId,
    scores: Option<&Vec<f32>>,
    finished: &mut Vec<u64>,
) {
    for (frame, rule, det) in waiting.remove(track).unwrap_or_default() {
        let Some(f) = state.get_mut(&frame) else {
            continue;
        };
        if let Some(s) = scores {
            f.crop_scores.insert((rule, det), s.clone());
        }
        f.outstanding -= 1;
        if f.outstanding == 0 {
            finished.push(frame);
        }
    }
}

/// The tracks (rule, track) whose crop a crop job was to cut (`attempted`) but did not
/// (`cut` holds what it did). Only the job's own crops count: the crops of a frame's other
/// detector (hands beside faces) are another job's, still running or already reported.
fn lost_tracks(
    tracks: &HashMap<(usize, usize), u64>,
    attempted: &[Slot],
    cut: &[Slot],
) -> Vec<(usize, u64)> {
    tracks
        .iter()
        .filter(|(&(rule, det), _)| {
            let slot = Slot::Crop { rule, det };
            attempted.contains(&slot) && !cut.contains(&slot)
        })
        .map(|(&(rule, _), &track)| (rule, track))
        .collect()
}

/// What scheduling crops needs besides the frame: the tracks, the waiting crops, the replies.
struct Crops<'a> {
    tracker: &'a mut Tracker<TrackKey>,
    waiting: &'a mut Waiting,
    reply_tx: &'a mpsc::UnboundedSender<Reply>,
}

/// A detector's detections on the whole frame, boxes mapped from its input to the frame.
fn in_frame(infer: &Infer, f: &InFrame, detector: usize, dets: Vec<Detection>) -> Vec<Detection> {
    let (w, h) = (f.size.decoded_width, f.size.decoded_height);
    let input = &infer.planner.models[detector].input;
    if input.resize != Resize::Letterbox {
        return dets;
    }
    let lb = Letterbox::fit(w, h, input.width, input.height);
    map_boxes(dets, |b| lb.to_image(b))
}

/// A detector's detections on a close-up's canvas, boxes mapped from its input to the frame.
fn from_closeup(
    infer: &Infer,
    f: &InFrame,
    detector: usize,
    dets: Vec<Detection>,
) -> Vec<Detection> {
    let (w, h) = (f.size.decoded_width, f.size.decoded_height);
    let input = &infer.planner.models[detector].input;
    let canvas = cascade::closeup_canvas(w, h, CLOSEUP_SCALE);
    let lb = Letterbox::fit(
        canvas.input_width,
        canvas.input_height,
        input.width,
        input.height,
    );
    map_boxes(dets, |b| canvas.to_image(lb.to_image(b)))
}

fn map_boxes(dets: Vec<Detection>, map: impl Fn([f32; 4]) -> [f32; 4]) -> Vec<Detection> {
    dets.into_iter()
        .map(|d| Detection {
            bbox: map(d.bbox),
            ..d
        })
        .collect()
}

/// The detector → classifier rules of `detector` that keep nothing on a frame of a close-up
/// camera no larger than its assignment allows: they search the frame again, shrunk. Close-ups
/// are of faces: only a face detector's rules search again (a small frame of the `prep` zone
/// with no hand found is not a hand filling the frame, and must not be judged whole).
fn closeup_rules(infer: &Infer, f: &InFrame, detector: usize, dets: &[Detection]) -> Vec<usize> {
    let (w, h) = (f.size.decoded_width, f.size.decoded_height);
    let Some(max_px) = f.plan.closeup_max_px else {
        return Vec::new();
    };
    if w.max(h) > max_px || f.image.is_none() || !infer.planner.finds_faces(detector) {
        return Vec::new();
    }
    f.plan
        .rules
        .iter()
        .copied()
        .filter(|r| !f.plan.not_due.contains(r))
        .filter(|&r| {
            let rule = &infer.planner.rules[r];
            rule.detector == Some(detector)
                && rule.classifier.is_some()
                && cascade::select(&rule.rule, rule.classes.as_deref(), dets, w, h).is_empty()
        })
        .collect()
}

/// Starts a blocking job making the close-up canvas of frame `frame` for `detector`; its tensor
/// comes back as [`Reply::Closeup`].
fn search_closeup(
    infer: &Arc<Infer>,
    frame: u64,
    f: &mut InFrame,
    detector: usize,
    rules: Vec<usize>,
    reply_tx: &mpsc::UnboundedSender<Reply>,
) {
    let Some(image) = f.image.clone() else {
        return;
    };
    f.closeup.insert(detector, rules);
    f.outstanding += 1;
    let infer = infer.clone();
    let tx = reply_tx.clone();
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let canvas =
            cascade::closeup_canvas(image.cols() as u32, image.rows() as u32, CLOSEUP_SCALE);
        let mut padded = Mat::default();
        let mut scratch = Mat::default();
        let mut tensor = Vec::new();
        let made = opencv::core::copy_make_border(
            &*image,
            &mut padded,
            canvas.y as i32,
            (canvas.input_height - canvas.height - canvas.y) as i32,
            canvas.x as i32,
            (canvas.input_width - canvas.width - canvas.x) as i32,
            opencv::core::BORDER_CONSTANT,
            opencv::core::Scalar::all(0.0),
        )
        .and_then(|()| {
            preprocess(
                &padded,
                &infer.planner.models[detector].input,
                &mut scratch,
                &mut tensor,
            )
        });
        if let Err(e) = &made {
            tracing::warn!(error = %e, "close-up canvas failed; the frame is not searched again");
        }
        tracing::trace!(took_ms = ms(t.elapsed()), "close-up canvas");
        let _ = tx.send(Reply::Closeup {
            frame,
            model: detector,
            tensor: made.ok().map(|()| tensor),
        });
    });
}

/// Which of a detector's rules a call of [`schedule_crops`] decides.
#[derive(Clone, Copy)]
enum Pass<'a> {
    /// The detector's run on the frame: every rule of it but those searching again.
    Frame { except: &'a [usize] },
    /// A close-up's second search: the rules that asked for it.
    Closeup { rules: &'a [usize] },
}

/// Keeps the detections (boxes in the frame) of the rules of `detector` that `pass` decides
/// and starts a blocking job cutting their crops (those whose track's scores cannot be reused
/// or awaited).
fn schedule_crops(
    infer: &Arc<Infer>,
    frame: u64,
    f: &mut InFrame,
    detector: usize,
    dets: &[Detection],
    pass: Pass<'_>,
    c: &mut Crops<'_>,
) {
    let (w, h) = (f.size.decoded_width, f.size.decoded_height);
    let mut jobs: Vec<(usize, Slot, [f32; 4], f32)> = Vec::new();
    for &r in &f.plan.rules {
        let rule = &infer.planner.rules[r];
        if rule.detector != Some(detector) || f.plan.not_due.contains(&r) {
            continue;
        }
        let classes = rule.classes.as_deref();
        let kept = match pass {
            Pass::Frame { except } if !except.contains(&r) => {
                cascade::select(&rule.rule, classes, dets, w, h)
            }
            Pass::Closeup { rules } if rules.contains(&r) => {
                let kept = cascade::select_closeup(&rule.rule, classes, dets, w, h);
                let outcome = if kept.score > 0.0 { "found" } else { "whole" };
                infer
                    .metrics
                    .closeup_searches
                    .with_label_values(&[&rule.name, outcome])
                    .inc();
                vec![kept]
            }
            _ => continue,
        };
        if let Some(classifier) = rule.classifier {
            let boxes: Vec<[f32; 4]> = kept.iter().map(|d| d.bbox).collect();
            let key = track_key(&f.meta, r);
            // A close-up's crop is never tracked: a camera of close-ups shows a new face (or,
            // judged whole, the same full-frame box) in every frame.
            let plans: Vec<Option<CropPlan>> = match pass {
                Pass::Frame { .. } => c
                    .tracker
                    .plan(&key, f.meta.captured_at_ms, &boxes)
                    .into_iter()
                    .map(Some)
                    .collect(),
                Pass::Closeup { .. } => kept.iter().map(|_| None).collect(),
            };
            let (mut run, mut reused) = (0u64, 0u64);
            for (i, (d, plan)) in kept.iter().zip(plans).enumerate() {
                let crop = (
                    classifier,
                    Slot::Crop { rule: r, det: i },
                    d.bbox,
                    rule.rule.crop_margin,
                );
                let Some(plan) = plan else {
                    run += 1;
                    jobs.push(crop);
                    continue;
                };
                match plan {
                    CropPlan::Reuse { scores, .. } => {
                        reused += 1;
                        f.crop_scores.insert((r, i), scores);
                    }
                    CropPlan::Await { track } => {
                        reused += 1;
                        f.outstanding += 1;
                        c.waiting
                            .entry((key.clone(), track))
                            .or_default()
                            .push((frame, r, i));
                    }
                    CropPlan::Classify { track } => {
                        run += 1;
                        f.tracks.insert((r, i), track);
                        jobs.push(crop);
                    }
                }
            }
            let counter = &infer.metrics.crops;
            counter
                .with_label_values(&[&rule.name, "classified"])
                .inc_by(run);
            counter
                .with_label_values(&[&rule.name, "reused"])
                .inc_by(reused);
        }
        f.kept.insert(r, kept);
    }
    let Some(image) = f.image.clone().filter(|_| !jobs.is_empty()) else {
        return;
    };
    f.outstanding += 1;
    let infer = infer.clone();
    let tx = c.reply_tx.clone();
    let attempted: Vec<Slot> = jobs.iter().map(|(_, slot, _, _)| *slot).collect();
    tokio::task::spawn_blocking(move || {
        let t = Instant::now();
        let mut items = Vec::with_capacity(jobs.len());
        let mut scratch = Mat::default();
        for (classifier, slot, bbox, margin) in jobs {
            let (x, y, cw, ch) = cascade::crop_rect(bbox, margin, w, h);
            let mut tensor = Vec::new();
            let ok = Mat::roi(&*image, Rect::new(x, y, cw, ch))
                .and_then(|roi| roi.try_clone())
                .and_then(|crop| {
                    preprocess(
                        &crop,
                        &infer.planner.models[classifier].input,
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
            attempted,
            crop_ms: ms(t.elapsed()),
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crop_job_loses_only_its_own_crops_never_another_detectors() {
        // A prep-zone frame: rule 0 (faces) kept two detections, rule 1 (hands) one; each
        // detector's crops are cut by a job of their own.
        let tracks = HashMap::from([((0, 0), 10), ((0, 1), 11), ((1, 0), 20)]);
        let faces = [
            Slot::Crop { rule: 0, det: 0 },
            Slot::Crop { rule: 0, det: 1 },
        ];
        let hands = [Slot::Crop { rule: 1, det: 0 }];
        // The faces job cut both of its crops: nothing is lost, the hand's track included
        // (its job has not reported yet; its waiters must keep waiting for its scores).
        assert!(lost_tracks(&tracks, &faces, &faces).is_empty());
        // The faces job could cut only its first crop: the second face's track is lost.
        assert_eq!(lost_tracks(&tracks, &faces, &faces[..1]), [(0, 11)]);
        // The hands job could cut nothing: only the hand's track is lost.
        assert_eq!(lost_tracks(&tracks, &hands, &[]), [(1, 20)]);
    }
}
