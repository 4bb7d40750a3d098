//! The observation of a frame: rule verdicts from the model outputs the collector gathered.

use std::sync::Arc;

use super::cascade;
use super::debug::draw_debug;
use super::frame::{ms, InFrame, Infer};
use super::plan::NOT_DUE;
use crate::contract::observation::{
    Classification, DetectionResult, RuleResult, SourceRef, Timings,
};
use crate::contract::{now_ms, Observation, Origin, Verdict};
use crate::rules::RuleKind;

/// Evaluates the rules and builds the observation.
pub(crate) fn finish(
    infer: &Infer,
    f: InFrame,
) -> (Origin, Box<Observation>, Option<Arc<opencv::core::Mat>>) {
    let mut rules = Vec::new();
    let mut detections = Vec::new();
    for &r in &f.plan.rules {
        let cr = &infer.planner.rules[r];
        let kept = f.kept.get(&r).map(Vec::as_slice).unwrap_or_default();
        let (verdict, level, n, reason) = match (cr.kind, cr.detector, cr.classifier) {
            _ if f.plan.not_due.contains(&r) => (Verdict::Unknown, None, 0, Some(NOT_DUE)),
            _ if f.plan.skipped.is_some() => (Verdict::Unknown, None, 0, f.plan.skipped),
            (RuleKind::Presence, Some(d), _) => {
                let detector = &infer.planner.models[d];
                for det in kept {
                    let label = detector
                        .labels
                        .get(det.class_id as usize)
                        .cloned()
                        .unwrap_or_else(|| format!("class_{}", det.class_id));
                    detections.push(DetectionResult {
                        rule: cr.name.clone(),
                        detector: detector.name.clone(),
                        score: det.score,
                        bbox: det.bbox,
                        classifier: String::new(),
                        scores: [(label.clone(), det.score)].into_iter().collect(),
                        label,
                    });
                }
                let when = cr.rule.violation_when.unwrap_or_default();
                let (v, level) = cascade::presence_verdict(kept.len(), when);
                (v, level, kept.len(), None)
            }
            (_, Some(d), Some(c)) => {
                let classifier = &infer.planner.models[c];
                let mut s = Vec::new();
                for (i, det) in kept.iter().enumerate() {
                    if let Some(cs) = f.crop_scores.get(&(r, i)) {
                        detections.push(DetectionResult {
                            rule: cr.name.clone(),
                            detector: infer.planner.models[d].name.clone(),
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
                let j = cascade::verdict(&s, &cr.violation, &cr.unjudged);
                let why = if s.is_empty() {
                    "no_detection"
                } else {
                    "not_judgeable"
                };
                (j.verdict, j.level, s.len(), Some(why))
            }
            (_, None, Some(c)) => {
                let s: Vec<Vec<f32>> = f.whole_scores.get(&c).cloned().into_iter().collect();
                let j = cascade::verdict(&s, &cr.violation, &cr.unjudged);
                let why = if s.is_empty() {
                    "not_classified"
                } else {
                    "not_judgeable"
                };
                (j.verdict, j.level, 0, Some(why))
            }
            _ => (Verdict::Unknown, None, 0, Some("no_model")),
        };
        infer
            .metrics
            .count_verdict(&f.meta.site, &cr.name, verdict.as_str());
        if verdict == Verdict::Violation {
            if let Some(c) = &infer.metrics.cameras {
                c.violation(&f.meta.site, &f.meta.camera, &cr.name);
            }
        }
        rules.push(RuleResult {
            rule: cr.name.clone(),
            verdict,
            reason: if verdict == Verdict::Unknown {
                reason.map(str::to_string)
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
            model: infer.planner.models[m].name.clone(),
            label: infer.planner.models[m].labels[cascade::argmax(s)].clone(),
            scores: infer.planner.models[m]
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
        models: f
            .used_models
            .iter()
            .map(|&m| infer.planner.model_ref(m))
            .collect(),
        timings: Timings {
            decode_ms: f.decode_ms,
            preprocess_ms: f.preprocess_ms,
            crop_ms: f.crop_ms,
            stages: f.stages,
            total_ms: ms(f.started.elapsed()) + f.decode_ms + f.preprocess_ms,
        },
        source: SourceRef {
            topic: infer.frames_topic.clone(),
            partition: f.origin.ticket.partition,
            offset: f.origin.ticket.offset,
        },
        worker: infer.worker_id.clone(),
        processed_at_ms: now_ms(),
    };
    if let (Some(debug), Some(image)) = (&infer.debug, f.image.clone()) {
        if debug.cameras.contains(&obs.camera) {
            let obs = obs.clone();
            let dir = debug.dir.clone();
            let violating: Vec<bool> = obs
                .detections
                .iter()
                .map(|d| {
                    infer
                        .planner
                        .rules
                        .iter()
                        .any(|r| r.name == d.rule && r.violation_names.contains(&d.label))
                })
                .collect();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = draw_debug(&image, &obs, &violating, &dir) {
                    tracing::warn!(error = %e, camera = %obs.camera, "debug image not written");
                }
            });
        }
    }
    (f.origin, Box::new(obs), f.image)
}
