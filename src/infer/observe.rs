//! The observation of a frame: rule verdicts from the model outputs the collector gathered.

use std::sync::Arc;

use super::cascade;
use super::collect::InFrame;
use super::debug::draw_debug;
use super::stage::{ms, Infer};
use crate::contract::observation::{
    Classification, DetectionResult, RuleResult, SourceRef, Timings,
};
use crate::contract::{now_ms, Observation, Origin, Verdict};

/// Evaluates the rules and builds the observation.
pub(crate) fn finish(
    infer: &Infer,
    f: InFrame,
) -> (Origin, Box<Observation>, Option<Arc<opencv::core::Mat>>) {
    let mut rules = Vec::new();
    let mut detections = Vec::new();
    for &r in &f.plan.rules {
        let cr = &infer.planner.rules[r];
        let classifier = &infer.planner.models[cr.classifier];
        let (scores, n, reason): (Vec<Vec<f32>>, usize, Option<String>) = match cr.detector {
            Some(d) => {
                let kept = f.kept.get(&r).map(Vec::as_slice).unwrap_or_default();
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
                let n = s.len();
                (s, n, (n == 0).then(|| "no_detection".to_string()))
            }
            None => match f.whole_scores.get(&cr.classifier) {
                Some(s) => (vec![s.clone()], 0, None),
                None => (Vec::new(), 0, Some("not_classified".to_string())),
            },
        };
        let (verdict, level) = cascade::verdict(&scores, cr.violation);
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
    (f.origin, Box::new(obs), f.image)
}
