//! Rule planning: the rules resolved against the loaded models once at start-up, and, per frame,
//! which rules apply and which models must see the whole frame. Pure and synchronous.

use std::collections::HashMap;

use super::model::{InputSpec, Model, Task};
use crate::contract::observation::ModelRef;
use crate::contract::FrameMeta;
use crate::rules::{Rule, RuleSet};

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
    /// Index of the detector model, for detector → classifier rules.
    pub detector: Option<usize>,
    pub classifier: usize,
    /// Index of the violation label in the classifier's labels.
    pub violation: usize,
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
}

impl Planner {
    /// Detector models whose detections are faces (a `face` label in their manifest).
    pub fn face_detectors(&self) -> std::collections::HashSet<String> {
        self.models
            .iter()
            .filter(|m| m.task == Task::Detect && m.labels.iter().any(|l| l == "face"))
            .map(|m| m.name.clone())
            .collect()
    }

    /// The label each rule counts as a violation.
    pub fn violation_labels(&self) -> HashMap<String, String> {
        self.rules
            .iter()
            .map(|r| (r.name.clone(), r.rule.violation_label.clone()))
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
            let detector = rule
                .detector
                .as_deref()
                .map(|d| find(d, Task::Detect, name, "detector"))
                .transpose()?;
            let classifier = find(&rule.classifier, Task::Classify, name, "classifier")?;
            let violation = models[classifier]
                .labels
                .iter()
                .position(|l| *l == rule.violation_label)
                .ok_or_else(|| PlanError {
                    rule: name.clone(),
                    message: format!(
                        "violation_label `{}` is not a label of `{}` ({})",
                        rule.violation_label,
                        rule.classifier,
                        models[classifier].labels.join(", ")
                    ),
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
        let mut whole_frame = Vec::new();
        for &r in &rules {
            let m = self.rules[r].detector.unwrap_or(self.rules[r].classifier);
            if !whole_frame.contains(&m) {
                whole_frame.push(m);
            }
        }
        let needs_crops = rules.iter().any(|&r| self.rules[r].detector.is_some());
        FramePlan {
            rules,
            whole_frame,
            needs_crops,
        }
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
