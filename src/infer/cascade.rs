//! The pure parts of the rule pipelines: which detections a rule keeps, where their crops lie
//! in the decoded frame, and what a rule concludes from scores or from the detections alone.

use super::model::Detection;
use crate::contract::Verdict;
use crate::rules::{Rule, ViolationWhen};

/// The detections a rule keeps: one of its `classes` (any class when `None`), score at least
/// `min_detection_score`, shorter side at least `min_box_px` in the decoded frame, at most
/// `max_detections`, best first.
pub fn select(
    rule: &Rule,
    classes: Option<&[u32]>,
    dets: &[Detection],
    width: u32,
    height: u32,
) -> Vec<Detection> {
    let mut kept: Vec<Detection> = dets
        .iter()
        .filter(|d| classes.is_none_or(|c| c.contains(&d.class_id)))
        .filter(|d| d.score >= rule.min_detection_score)
        .filter(|d| {
            let w = (d.bbox[2] - d.bbox[0]) * width as f32;
            let h = (d.bbox[3] - d.bbox[1]) * height as f32;
            w.min(h) >= rule.min_box_px as f32
        })
        .copied()
        .collect();
    kept.sort_by(|a, b| b.score.total_cmp(&a.score));
    kept.truncate(rule.max_detections);
    kept
}

/// Pixel rectangle `(x, y, w, h)` of a detection's crop: the box grown by `margin` of its size
/// on each side, clamped to the frame, never empty.
pub fn crop_rect(bbox: [f32; 4], margin: f32, width: u32, height: u32) -> (i32, i32, i32, i32) {
    let (bw, bh) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
    let x1 = ((bbox[0] - bw * margin) * width as f32).floor().max(0.0) as i32;
    let y1 = ((bbox[1] - bh * margin) * height as f32).floor().max(0.0) as i32;
    let x2 = ((bbox[2] + bw * margin) * width as f32)
        .ceil()
        .min(width as f32) as i32;
    let y2 = ((bbox[3] + bh * margin) * height as f32)
        .ceil()
        .min(height as f32) as i32;
    let x1 = x1.min(width as i32 - 1);
    let y1 = y1.min(height as i32 - 1);
    (x1, y1, (x2 - x1).max(1), (y2 - y1).max(1))
}

/// Index of the highest score.
pub fn argmax(scores: &[f32]) -> usize {
    scores
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map_or(0, |(i, _)| i)
}

/// A rule's conclusion from its classifier's scores: one vector per crop (detector rules) or
/// exactly one (whole-frame rules). A crop whose `unjudged` labels together outweigh the others
/// (a face turned away or hidden) is left out; of the rest, a crop is a violation when its
/// violation labels together outweigh the others (with one violation label among two, the top
/// label decides). No scores left means no evidence: `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Judgement {
    pub verdict: Verdict,
    /// The highest share of violation-label scores among the judged crops.
    pub level: Option<f32>,
    /// Crops that were judged (not left out as unjudged).
    pub judged: usize,
}

pub fn verdict(scores: &[Vec<f32>], violation: &[usize], unjudged: &[usize]) -> Judgement {
    let share = |s: &Vec<f32>, labels: &[usize]| {
        let part: f32 = labels
            .iter()
            .map(|&v| s.get(v).copied().unwrap_or(0.0))
            .sum();
        let total: f32 = s.iter().sum();
        if total > 0.0 {
            (part / total).clamp(0.0, 1.0)
        } else {
            0.0
        }
    };
    let (judged, level) = scores
        .iter()
        .filter(|s| share(s, unjudged) <= 0.5)
        .fold((0, f32::MIN), |(n, top), s| {
            (n + 1, top.max(share(s, violation)))
        });
    let verdict = match judged {
        0 => Verdict::Unknown,
        _ if level > 0.5 => Verdict::Violation,
        _ => Verdict::Compliant,
    };
    Judgement {
        verdict,
        level: (judged > 0).then_some(level),
        judged,
    }
}

/// A presence rule's conclusion from the detections it kept. The detector ran, so there is
/// always evidence; the level is 1 for a violation and 0 otherwise (the score threshold has
/// already decided).
pub fn presence_verdict(kept: usize, when: ViolationWhen) -> (Verdict, Option<f32>) {
    let violated = match when {
        ViolationWhen::Present => kept > 0,
        ViolationWhen::Absent => kept == 0,
    };
    if violated {
        (Verdict::Violation, Some(1.0))
    } else {
        (Verdict::Compliant, Some(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule() -> Rule {
        crate::rules::RuleSet::parse(
            "[rules.m]\ndetector='d'\nclassifier='c'\nviolation_label='bad'",
            "t",
        )
        .unwrap()
        .rules["m"]
            .clone()
    }

    fn det(score: f32, bbox: [f32; 4]) -> Detection {
        Detection {
            class_id: 0,
            score,
            bbox,
        }
    }

    #[test]
    fn selection_keeps_only_the_rule_classes() {
        let r = rule();
        let dets = [
            Detection {
                class_id: 3,
                ..det(0.9, [0.1, 0.1, 0.3, 0.3])
            },
            Detection {
                class_id: 7,
                ..det(0.8, [0.4, 0.1, 0.6, 0.3])
            },
            Detection {
                class_id: 19,
                ..det(0.7, [0.6, 0.1, 0.9, 0.3])
            },
        ];
        let ids = |k: Vec<Detection>| k.iter().map(|d| d.class_id).collect::<Vec<_>>();
        assert_eq!(ids(select(&r, Some(&[7, 19]), &dets, 640, 480)), [7, 19]);
        assert_eq!(ids(select(&r, None, &dets, 640, 480)), [3, 7, 19]);
        assert!(select(&r, Some(&[1]), &dets, 640, 480).is_empty());
    }

    #[test]
    fn presence_verdicts() {
        use crate::rules::ViolationWhen::*;
        assert_eq!(
            presence_verdict(2, Present),
            (Verdict::Violation, Some(1.0))
        );
        assert_eq!(
            presence_verdict(0, Present),
            (Verdict::Compliant, Some(0.0))
        );
        assert_eq!(presence_verdict(0, Absent), (Verdict::Violation, Some(1.0)));
        assert_eq!(presence_verdict(1, Absent), (Verdict::Compliant, Some(0.0)));
    }

    #[test]
    fn selection_thresholds_sizes_and_caps() {
        let mut r = rule();
        r.max_detections = 2;
        let dets = [
            det(0.9, [0.1, 0.1, 0.3, 0.3]),
            det(0.4, [0.5, 0.5, 0.7, 0.7]), // below the score threshold
            det(0.95, [0.0, 0.0, 0.01, 0.01]), // too small: 6 px on a 640 frame
            det(0.7, [0.4, 0.1, 0.6, 0.3]),
            det(0.6, [0.7, 0.1, 0.9, 0.3]), // over max_detections
        ];
        let kept = select(&r, None, &dets, 640, 480);
        assert_eq!(
            kept.iter().map(|d| d.score).collect::<Vec<_>>(),
            vec![0.9, 0.7]
        );
    }

    #[test]
    fn crop_grows_by_the_margin_and_stays_inside() {
        assert_eq!(
            crop_rect([0.25, 0.25, 0.75, 0.75], 0.0, 100, 100),
            (25, 25, 50, 50)
        );
        assert_eq!(
            crop_rect([0.25, 0.25, 0.75, 0.75], 0.1, 100, 100),
            (20, 20, 60, 60)
        );
        assert_eq!(
            crop_rect([0.0, 0.0, 1.0, 1.0], 0.5, 100, 80),
            (0, 0, 100, 80)
        );
    }

    fn v(scores: &[Vec<f32>], violation: &[usize], unjudged: &[usize]) -> (Verdict, Option<f32>) {
        let j = verdict(scores, violation, unjudged);
        (j.verdict, j.level)
    }

    #[test]
    fn verdicts() {
        assert_eq!(v(&[], &[1], &[]), (Verdict::Unknown, None));
        assert_eq!(
            v(&[vec![0.9, 0.1]], &[1], &[]),
            (Verdict::Compliant, Some(0.1))
        );
        assert_eq!(
            v(&[vec![0.9, 0.1], vec![0.2, 0.8]], &[1], &[]),
            (Verdict::Violation, Some(0.8))
        );
        // Several violation labels: together they must outweigh the rest.
        let (verdict_, level) = v(&[vec![0.5, 0.2, 0.3]], &[1, 2], &[]);
        assert_eq!(verdict_, Verdict::Compliant);
        assert!((level.unwrap() - 0.5).abs() < 1e-6);
        let (verdict_, level) = v(&[vec![0.4, 0.35, 0.25]], &[1, 2], &[]);
        assert_eq!(
            verdict_,
            Verdict::Violation,
            "neither violation label is on top"
        );
        assert!((level.unwrap() - 0.6).abs() < 1e-6);
    }

    #[test]
    fn unjudged_crops_count_neither_way() {
        // Labels: mask, no_mask, unclear. A hidden face that looks unmasked is left out.
        let hidden = vec![0.05, 0.4, 0.55];
        let masked = vec![0.9, 0.05, 0.05];
        let bare = vec![0.1, 0.8, 0.1];
        let j = verdict(std::slice::from_ref(&hidden), &[1], &[2]);
        assert_eq!((j.verdict, j.level, j.judged), (Verdict::Unknown, None, 0));
        let j = verdict(&[hidden.clone(), masked.clone()], &[1], &[2]);
        assert_eq!((j.verdict, j.judged), (Verdict::Compliant, 1));
        assert!((j.level.unwrap() - 0.05).abs() < 1e-6);
        let j = verdict(&[hidden.clone(), masked, bare], &[1], &[2]);
        assert_eq!((j.verdict, j.judged), (Verdict::Violation, 2));
        // Without unjudged labels the same crop is a violation.
        assert_eq!(verdict(&[hidden], &[1], &[]).verdict, Verdict::Compliant);
        assert_eq!(
            verdict(&[vec![0.05, 0.6, 0.35]], &[1], &[]).verdict,
            Verdict::Violation
        );
    }

    proptest! {
        #[test]
        fn crops_are_never_empty_or_outside(
            x1 in 0f32..1.0, y1 in 0f32..1.0, w in 0f32..1.0, h in 0f32..1.0,
            margin in 0f32..2.0, width in 1u32..4000, height in 1u32..4000,
        ) {
            let bbox = [x1, y1, (x1 + w).min(1.0), (y1 + h).min(1.0)];
            let (x, y, cw, ch) = crop_rect(bbox, margin, width, height);
            prop_assert!(x >= 0 && y >= 0 && cw >= 1 && ch >= 1);
            prop_assert!(x + cw <= width as i32 && y + ch <= height as i32);
        }
    }
}
