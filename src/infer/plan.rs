//! Rule planning: the rules resolved against the loaded models once at start-up, and, per frame,
//! which rules apply and which models must see the whole frame. Pure and synchronous.

use std::collections::HashMap;

use super::model::{InputSpec, Model, Task};
use crate::contract::observation::ModelRef;
use crate::contract::FrameMeta;
use crate::rules::{Rule, RuleKind, RuleSet};

/// Static facts about a loaded model that the stages need.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub name: String,
    pub version: String,
    /// Execution provider the session runs on (`cpu`, `cuda`…), as reported in observations.
    pub provider: &'static str,
    pub input: InputSpec,
    pub labels: Vec<String>,
    pub task: Task,
}

impl ModelInfo {
    pub fn of(m: &Model) -> ModelInfo {
        ModelInfo {
            name: m.manifest.name.clone(),
            version: m.manifest.version.clone(),
            provider: m.provider,
            input: m.manifest.input.clone(),
            labels: m.manifest.labels.clone(),
            task: m.manifest.task,
        }
    }
}

/// A rule resolved against the model pack.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    pub name: String,
    pub rule: Rule,
    pub kind: RuleKind,
    /// Index of the detector model (cascade and presence rules).
    pub detector: Option<usize>,
    /// Index of the classifier model (cascade and whole-frame rules).
    pub classifier: Option<usize>,
    /// Indices of the violation labels in the classifier's labels.
    pub violation: Vec<usize>,
    /// Indices of the labels meaning "cannot be judged" in the classifier's labels.
    pub unjudged: Vec<usize>,
    /// Detector class ids the rule keeps; `None` keeps every class.
    pub classes: Option<Vec<u32>>,
    /// Names of the labels a violating detection carries: the classifier's violation labels,
    /// or, for a presence rule, the kept classes (evidence pictures outline these).
    pub violation_names: Vec<String>,
}

/// A rule that does not fit the loaded models; the worker refuses to start.
#[derive(Debug, thiserror::Error)]
#[error("rule `{rule}`: {message}")]
pub struct PlanError {
    pub rule: String,
    pub message: String,
}

/// The rules, compiled against the models (indices into `models`).
#[derive(Debug)]
pub struct Planner {
    pub ruleset: RuleSet,
    pub rules: Vec<CompiledRule>,
    rule_index: HashMap<String, usize>,
    pub models: Vec<ModelInfo>,
}

/// What a frame needs, decided before it is decoded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FramePlan {
    /// Indices of the rules applying to the frame's camera.
    pub rules: Vec<usize>,
    /// Models that see the whole frame: detectors and whole-frame classifiers.
    pub whole_frame: Vec<usize>,
    /// Whether detections will be cropped, so the decoded image must be kept.
    pub needs_crops: bool,
    /// Why the frame is not judged at all (load shedding), if it is not.
    pub skipped: Option<&'static str>,
    /// Rules of `rules` not judged on this frame: their `every_secs` has not passed since the
    /// camera's last frame that judged them (observed `unknown`, reason [`NOT_DUE`]).
    pub not_due: Vec<usize>,
    /// Whether the camera's assignment allows close-ups, and up to which frame size (longer
    /// side, pixels): a detector → classifier rule that keeps nothing on such a frame searches
    /// it again, shrunk into the detector's input ([`CLOSEUP_SCALE`]).
    pub closeup_max_px: Option<u32>,
}

/// A close-up searched again fills this share of the detector's input (longer side), centred
/// on black: a face filling a small frame is too large for the detector once the frame is
/// enlarged to the input. 0.6 found the most faces on close-ups cut from held-out photos
/// (models/README.md "Close-ups").
pub const CLOSEUP_SCALE: f32 = 0.6;

/// The reason of a rule not judged on a frame because its `every_secs` has not passed.
pub const NOT_DUE: &str = "not_due";

impl FramePlan {
    /// Whether any rule is judged on the frame (then load shedding has a say).
    pub fn judges(&self) -> bool {
        self.rules.len() > self.not_due.len()
    }
}

impl Planner {
    /// Detector models whose detections are faces (a `face` label in their manifest).
    pub fn face_detectors(&self) -> std::collections::HashSet<String> {
        (0..self.models.len())
            .filter(|&m| self.finds_faces(m))
            .map(|m| self.models[m].name.clone())
            .collect()
    }

    /// Whether model `m` is a detector of faces (a `face` label in its manifest).
    pub fn finds_faces(&self, m: usize) -> bool {
        let model = &self.models[m];
        model.task == Task::Detect && model.labels.iter().any(|l| l == "face")
    }

    /// The labels each rule's violating detections carry.
    pub fn violation_labels(&self) -> HashMap<String, Vec<String>> {
        self.rules
            .iter()
            .map(|r| (r.name.clone(), r.violation_names.clone()))
            .collect()
    }

    /// Resolves the rules against the loaded models, naming the first inconsistency.
    pub fn new(ruleset: RuleSet, models: Vec<ModelInfo>) -> Result<Planner, PlanError> {
        let find = |name: &str, task: Task, rule: &str, key: &str| -> Result<usize, PlanError> {
            let err = |message: String| PlanError {
                rule: rule.to_string(),
                message,
            };
            let i = models
                .iter()
                .position(|m| m.name == name)
                .ok_or_else(|| err(format!("{key} `{name}` is not loaded")))?;
            if models[i].task != task {
                return Err(err(format!(
                    "{key} `{name}` is a {:?} model, expected {task:?}",
                    models[i].task
                )));
            }
            Ok(i)
        };
        let mut rules = Vec::new();
        let mut rule_index = HashMap::new();
        for (name, rule) in &ruleset.rules {
            let err = |message: String| PlanError {
                rule: name.clone(),
                message,
            };
            let kind = rule
                .kind()
                .ok_or_else(|| err("names neither a detector nor a classifier".into()))?;
            let detector = rule
                .detector
                .as_deref()
                .map(|d| find(d, Task::Detect, name, "detector"))
                .transpose()?;
            let classifier = rule
                .classifier
                .as_deref()
                .map(|c| find(c, Task::Classify, name, "classifier"))
                .transpose()?;
            let (mut violation, mut unjudged) = (Vec::new(), Vec::new());
            if let Some(c) = classifier {
                let labels = &models[c].labels;
                for (key, names, out) in [
                    ("violation_label", rule.violation_labels(), &mut violation),
                    ("unjudged_label", rule.unjudged_labels(), &mut unjudged),
                ] {
                    for l in names {
                        let i = labels.iter().position(|x| *x == l).ok_or_else(|| {
                            err(format!(
                                "{key} `{l}` is not a label of `{}` ({})",
                                models[c].name,
                                labels.join(", ")
                            ))
                        })?;
                        out.push(i);
                    }
                }
            }
            let classes = match (&rule.classes, detector) {
                (Some(wanted), Some(d)) => {
                    let labels = &models[d].labels;
                    let mut ids = Vec::new();
                    for c in wanted {
                        let i = labels.iter().position(|x| x == c).ok_or_else(|| {
                            err(format!(
                                "class `{c}` is not a label of detector `{}` ({})",
                                models[d].name,
                                labels.join(", ")
                            ))
                        })?;
                        ids.push(i as u32);
                    }
                    Some(ids)
                }
                _ => None,
            };
            let violation_names = match (kind, detector) {
                (RuleKind::Presence, Some(d)) => match &classes {
                    Some(ids) => ids
                        .iter()
                        .map(|&i| models[d].labels[i as usize].clone())
                        .collect(),
                    None => models[d].labels.clone(),
                },
                _ => rule.violation_labels(),
            };
            rule_index.insert(name.clone(), rules.len());
            rules.push(CompiledRule {
                name: name.clone(),
                rule: rule.clone(),
                kind,
                detector,
                classifier,
                violation,
                unjudged,
                classes,
                violation_names,
            });
        }
        Ok(Planner {
            ruleset,
            rules,
            rule_index,
            models,
        })
    }

    /// Which rules apply to this frame's camera, and what they need from the frame.
    pub fn plan(&self, meta: &FrameMeta) -> FramePlan {
        let rules: Vec<usize> = self
            .ruleset
            .rules_for(meta)
            .iter()
            .filter_map(|n| self.rule_index.get(n).copied())
            .collect();
        let mut plan = self.plan_rules(rules, Vec::new());
        plan.closeup_max_px = self.ruleset.closeups_for(meta);
        plan
    }

    /// The rules of `plan` judged at a cadence (`every_secs`): (rule index, name, period ms).
    pub fn cadences<'a>(&'a self, plan: &FramePlan) -> Vec<(usize, &'a str, i64)> {
        plan.rules
            .iter()
            .filter_map(|&r| {
                let cr = &self.rules[r];
                cr.rule.every_ms().map(|ms| (r, cr.name.as_str(), ms))
            })
            .collect()
    }

    /// `plan` with `not_due` rules left unjudged: the models only they need do not run.
    pub fn defer(&self, plan: FramePlan, not_due: Vec<usize>) -> FramePlan {
        if not_due.is_empty() {
            return plan;
        }
        let closeup_max_px = plan.closeup_max_px;
        let mut plan = self.plan_rules(plan.rules, not_due);
        plan.closeup_max_px = closeup_max_px;
        plan
    }

    fn plan_rules(&self, rules: Vec<usize>, not_due: Vec<usize>) -> FramePlan {
        let mut whole_frame = Vec::new();
        for &r in rules.iter().filter(|r| !not_due.contains(r)) {
            let m = match (self.rules[r].detector, self.rules[r].classifier) {
                (Some(d), _) => d,
                (None, Some(c)) => c,
                (None, None) => continue,
            };
            if !whole_frame.contains(&m) {
                whole_frame.push(m);
            }
        }
        let needs_crops = rules
            .iter()
            .any(|&r| self.rules[r].kind == RuleKind::Cascade && !not_due.contains(&r));
        FramePlan {
            rules,
            whole_frame,
            needs_crops,
            skipped: None,
            not_due,
            closeup_max_px: None,
        }
    }

    /// What a frame skipped by load shedding needs: nothing decoded, nothing run; its rules
    /// are observed `unknown` with `reason`.
    pub fn skip(mut plan: FramePlan, reason: &'static str) -> FramePlan {
        plan.whole_frame.clear();
        plan.needs_crops = false;
        plan.skipped = Some(reason);
        plan
    }

    /// How observations name model `m`.
    pub fn model_ref(&self, m: usize) -> ModelRef {
        ModelRef {
            name: self.models[m].name.clone(),
            version: self.models[m].version.clone(),
            provider: self.models[m].provider.to_string(),
        }
    }

    /// The input spec of every model, by index (what the decode stage builds tensors to).
    pub fn input_specs(&self) -> Vec<InputSpec> {
        self.models.iter().map(|m| m.input.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{ChannelOrder, Layout, Resize};

    fn model(name: &str, task: Task, labels: &[&str]) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            version: "1".into(),
            provider: "cpu",
            input: InputSpec {
                name: "image".into(),
                width: 64,
                height: 64,
                layout: Layout::NCHW,
                channels: ChannelOrder::RGB,
                mean: [0.0; 3],
                std: [1.0; 3],
                resize: Resize::Stretch,
            },
            labels: labels.iter().map(|l| l.to_string()).collect(),
            task,
        }
    }

    fn pack() -> Vec<ModelInfo> {
        vec![
            model("faces", Task::Detect, &["face"]),
            model("objects", Task::Detect, &["person", "cat", "dog"]),
            model(
                "mask",
                Task::Classify,
                &["mask", "no_mask", "mask_incorrect", "unclear"],
            ),
        ]
    }

    const RULES: &str = r#"
        [rules.masks]
        detector = "faces"
        classifier = "mask"
        violation_label = ["no_mask", "mask_incorrect"]
        unjudged_label = "unclear"
        [rules.animals]
        detector = "objects"
        classes = ["cat", "dog"]
        [rules.people]
        detector = "objects"
        classes = ["person"]
        [[assign]]
        rules = ["masks", "animals", "people"]
        [[assign]]
        zone = "dining"
        rules = ["people"]
    "#;

    fn meta(zone: &str) -> FrameMeta {
        FrameMeta {
            site: "s".into(),
            camera: "c".into(),
            captured_at_ms: 0,
            seq: 0,
            zone: Some(zone.into()),
        }
    }

    #[test]
    fn rules_resolve_labels_and_classes() {
        let p = Planner::new(RuleSet::parse(RULES, "t").unwrap(), pack()).unwrap();
        let by = |n: &str| p.rules.iter().find(|r| r.name == n).unwrap();
        assert_eq!(by("masks").violation, [1, 2]);
        assert_eq!(by("masks").unjudged, [3]);
        assert!(by("animals").unjudged.is_empty());
        assert_eq!(by("masks").classes, None);
        assert_eq!(by("animals").classes, Some(vec![1, 2]));
        assert_eq!(by("animals").violation_names, ["cat", "dog"]);
        assert_eq!(by("animals").classifier, None);
        assert_eq!(by("people").classes, Some(vec![0]));
    }

    #[test]
    fn rules_sharing_a_detector_run_it_once() {
        let p = Planner::new(RuleSet::parse(RULES, "t").unwrap(), pack()).unwrap();
        let kitchen = p.plan(&meta("kitchen"));
        assert_eq!(kitchen.rules.len(), 3);
        assert_eq!(kitchen.whole_frame, [0, 1], "faces once, objects once");
        assert!(kitchen.needs_crops);
        let dining = p.plan(&meta("dining"));
        assert_eq!(dining.whole_frame, [1]);
        assert!(!dining.needs_crops, "a presence rule crops nothing");
    }

    #[test]
    fn a_rule_not_due_runs_none_of_the_models_only_it_needs() {
        let rules = RULES.replace(
            "[rules.animals]",
            "[rules.animals]\n        every_secs = 2.0",
        );
        let p = Planner::new(RuleSet::parse(&rules, "t").unwrap(), pack()).unwrap();
        let kitchen = p.plan(&meta("kitchen"));
        let animals = p.rules.iter().position(|r| r.name == "animals").unwrap();
        let people = p.rules.iter().position(|r| r.name == "people").unwrap();
        let masks = p.rules.iter().position(|r| r.name == "masks").unwrap();
        assert_eq!(p.cadences(&kitchen), [(animals, "animals", 2_000)]);
        // People share the objects detector: it still runs for them.
        let deferred = p.defer(kitchen.clone(), vec![animals]);
        assert_eq!(deferred.rules.len(), 3, "every rule is still observed");
        assert_eq!(deferred.whole_frame, [0, 1]);
        assert!(deferred.judges());
        // Alone, the deferred rule's detector does not run; nor do crops for a deferred cascade.
        let deferred = p.defer(kitchen, vec![animals, people, masks]);
        assert!(deferred.whole_frame.is_empty() && !deferred.needs_crops);
        assert!(
            !deferred.judges(),
            "nothing to judge: load shedding is not asked"
        );
    }

    #[test]
    fn unknown_classes_and_labels_are_named() {
        let e = Planner::new(
            RuleSet::parse("[rules.a]\ndetector='objects'\nclasses=['horse']", "t").unwrap(),
            pack(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("horse") && e.contains("person, cat, dog"), "{e}");
        let e = Planner::new(
            RuleSet::parse(
                "[rules.a]\ndetector='faces'\nclassifier='mask'\nviolation_label=['no_mask','nose']",
                "t",
            )
            .unwrap(),
            pack(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("`nose`"), "{e}");
        let e = Planner::new(
            RuleSet::parse(
                "[rules.a]\ndetector='faces'\nclassifier='mask'\nviolation_label='no_mask'\nunjudged_label='blurry'",
                "t",
            )
            .unwrap(),
            pack(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("unjudged_label `blurry`") && e.contains("unclear"),
            "{e}"
        );
    }
}
