//! Rules: what is checked on which camera.
//!
//! A rule is one of three pipelines, told apart by the models it names:
//! - **detector → classifier** (`detector` and `classifier`): the classifier runs on the crop of
//!   each detection the rule keeps; a crop whose top label is one of `violation_label` is a
//!   violation (`mask_required`: faces → mask classifier → `no_mask` or `mask_incorrect`);
//! - **whole-frame classifier** (`classifier` only): the classifier sees the whole frame (a
//!   cleanliness or open/closed classifier);
//! - **detector presence** (`detector` only): a detection of one of `classes` at or above
//!   `min_detection_score` is the violation (`no_animals`: cats and dogs), or, with
//!   `violation_when = "absent"`, the lack of one is (a station that must be staffed).
//!
//! Detectors may emit several classes (their manifest's labels); `classes` keeps only those a
//! rule is about. Several rules on one camera share each model's run on a frame.
//! Assignments map sites, zones and cameras to rules; the most specific matching assignment
//! wins. A camera no assignment covers is observed but never produces a violation.
//!
//! Configuration (`--rules FILE`, TOML); without a file the built-in default applies
//! ([`DEFAULT_RULES`]):
//!
//! ```toml
//! [rules.mask_required]
//! detector = "face-yunet"       # detector model (manifest name)
//! classifier = "mask-v2"        # classifier run on each detection's crop
//! violation_label = ["no_mask", "mask_incorrect"]  # one label or several
//! min_detection_score = 0.75    # chosen by cross-validation (models/README.md)
//! crop_margin = 0.15            # crop grows by this fraction of the box on each side
//! min_box_px = 8                # smaller detections (shorter side, decoded frame) are ignored
//!
//! [rules.mask_required.episode] # how verdicts become alerts (see `episodes`); all optional
//! half_life_secs = 4.0
//! open_threshold = 0.6
//! close_threshold = 0.3
//! min_open_secs = 3.0
//! clear_secs = 10.0
//! cooldown_secs = 30.0
//!
//! [rules.no_animals]            # presence: no classifier
//! detector = "objectron-int8"
//! classes = ["cat", "dog"]
//! min_detection_score = 0.6
//! every_secs = 2.0              # judged at most once per 2 s of each camera's footage
//!
//! [rules.counter_clean]
//! classifier = "cleanliness"    # no detector: the classifier sees the whole frame
//! violation_label = "dirty"
//!
//! [[assign]]                    # no selector: every camera
//! rules = ["mask_required", "no_animals"]
//! closeups = true               # a frame up to closeup_max_px (320) with no face is searched
//!                               # again shrunk, then judged whole (phone photos, close-ups)
//! [[assign]]
//! zone = "dining"
//! rules = []
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::contract::FrameMeta;

mod policy;
pub use policy::EpisodePolicy;

/// One label or several (`violation_label = "x"` or `violation_label = ["x", "y"]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Labels {
    One(String),
    Many(Vec<String>),
}

impl Labels {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Labels::One(l) => vec![l.clone()],
            Labels::Many(v) => v.clone(),
        }
    }
}

/// When a presence rule (detector, no classifier) sees a violation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ViolationWhen {
    /// A kept detection is the violation (an animal in the kitchen).
    #[default]
    Present,
    /// The lack of any kept detection is the violation (an unstaffed station).
    Absent,
}

/// Which of the three pipelines a rule is (from the models it names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// Detector, then the classifier on each kept detection's crop.
    Cascade,
    /// The classifier on the whole frame.
    WholeFrame,
    /// The presence (or absence) of kept detections.
    Presence,
}

/// One rule's pipeline and thresholds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Detector model; when absent the classifier runs on the whole frame.
    #[serde(default)]
    pub detector: Option<String>,
    /// Classifier model: on each detection's crop, or on the whole frame. When absent (and a
    /// detector is named) the rule judges the presence of detections.
    #[serde(default)]
    pub classifier: Option<String>,
    /// Classifier label(s) that mean "violation" (classifier rules only).
    #[serde(default, alias = "violation_labels")]
    pub violation_label: Option<Labels>,
    /// Classifier label(s) meaning the crop cannot be judged (a face turned away, hidden or
    /// blurred): a crop whose unjudged labels outweigh the rest counts neither way, and a frame
    /// whose every crop is unjudged is `unknown` (`not_judgeable`). Classifier rules only.
    #[serde(default, alias = "unjudged_labels")]
    pub unjudged_label: Option<Labels>,
    /// Detector classes (manifest labels) the rule keeps; all of them when absent.
    #[serde(default)]
    pub classes: Option<Vec<String>>,
    /// Presence rules: whether a detection or its absence is the violation.
    #[serde(default)]
    pub violation_when: Option<ViolationWhen>,
    /// Detections scoring below this are ignored.
    #[serde(default = "default_min_detection_score")]
    pub min_detection_score: f32,
    /// Crop margin around a detection, as a fraction of its width/height on each side.
    #[serde(default = "default_crop_margin")]
    pub crop_margin: f32,
    /// Detections smaller than this many pixels (shorter side, in the decoded frame) are ignored.
    #[serde(default = "default_min_box_px")]
    pub min_box_px: u32,
    /// At most this many detections per frame are kept (highest scores first).
    #[serde(default = "default_max_detections")]
    pub max_detections: usize,
    /// How often the rule must be judged per camera, in seconds of the camera's footage
    /// (`captured_at`); absent: on every frame. On the frames in between the rule is not judged
    /// (`unknown`, reason `not_due`): its models do not run for it, and its episodes take
    /// those frames as no new evidence. An animal in a kitchen does not come and go within a
    /// second; a mask can.
    #[serde(default)]
    pub every_secs: Option<f64>,
    /// How verdicts become episodes (`[rules.<name>.episode]`; defaults otherwise).
    #[serde(default)]
    pub episode: EpisodePolicy,
}

impl Rule {
    /// Which pipeline this rule is; `None` when it names neither a detector nor a classifier.
    pub fn kind(&self) -> Option<RuleKind> {
        match (&self.detector, &self.classifier) {
            (Some(_), Some(_)) => Some(RuleKind::Cascade),
            (None, Some(_)) => Some(RuleKind::WholeFrame),
            (Some(_), None) => Some(RuleKind::Presence),
            (None, None) => None,
        }
    }

    /// `every_secs` in milliseconds, when the rule is not judged on every frame.
    pub fn every_ms(&self) -> Option<i64> {
        self.every_secs
            .filter(|s| *s > 0.0)
            .map(|s| (s * 1e3).round() as i64)
    }

    /// The classifier labels that mean "cannot be judged".
    pub fn unjudged_labels(&self) -> Vec<String> {
        self.unjudged_label
            .as_ref()
            .map(Labels::to_vec)
            .unwrap_or_default()
    }

    /// The classifier labels that mean "violation" (empty for presence rules).
    pub fn violation_labels(&self) -> Vec<String> {
        self.violation_label
            .as_ref()
            .map(Labels::to_vec)
            .unwrap_or_default()
    }
}

fn default_min_detection_score() -> f32 {
    0.5
}
fn default_crop_margin() -> f32 {
    0.15
}
fn default_min_box_px() -> u32 {
    16
}
fn default_max_detections() -> usize {
    16
}

/// Which cameras a set of rules applies to; an absent selector matches everything.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub camera: Option<String>,
    pub rules: Vec<String>,
    /// The cameras may show one face filling the whole frame (phone photos, a counter
    /// close-up), which a detector misses once the frame is enlarged to its input. When a
    /// detector → classifier rule on a face detector (a `face` label in its manifest: close-ups
    /// are of faces, not hands) keeps nothing on a frame whose longer side is at most
    /// `closeup_max_px`, the frame is searched again shrunk into the middle of the detector's
    /// input, keeping the best face at a lower score; failing that, the frame is judged whole
    /// (its classifier sees the whole frame as the crop).
    #[serde(default)]
    pub closeups: bool,
    /// Frames larger than this (longer side, pixels) are never searched again or judged whole:
    /// a camera's frames with nobody in view must not pay a second detector run, nor have an
    /// empty room judged as a face.
    #[serde(default = "default_closeup_max_px")]
    pub closeup_max_px: u32,
}

fn default_closeup_max_px() -> u32 {
    320
}

impl Assignment {
    fn matches(&self, m: &FrameMeta) -> bool {
        self.site.as_ref().is_none_or(|s| *s == m.site)
            && self.camera.as_ref().is_none_or(|c| *c == m.camera)
            && self
                .zone
                .as_ref()
                .is_none_or(|z| m.zone.as_ref() == Some(z))
    }

    /// Camera beats site+zone beats zone beats site beats the catch-all.
    fn specificity(&self) -> u8 {
        (self.camera.is_some() as u8) * 4
            + (self.site.is_some() as u8) * 2
            + self.zone.is_some() as u8
    }
}

/// The parsed rules configuration.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSet {
    pub rules: BTreeMap<String, Rule>,
    #[serde(default)]
    pub assign: Vec<Assignment>,
}

#[derive(Debug, thiserror::Error)]
#[error("rules {source_name}: {message}")]
pub struct RulesError {
    pub source_name: String,
    pub message: String,
}

/// The default when no `--rules` file is given. Every kitchen camera checks masks (a mask worn
/// below the nose counts as a violation) and animals; cameras in the `prep` zone also check
/// gloves; cameras in the `dining` zone are observed only. Animals are looked for once per 2 s
/// of each camera's footage, masks and gloves on every frame, with Objectron's INT8 copy (its cat
/// verdicts hold against fp32 on held-out frames: `models/measurements/objectron-int8.md`).
/// Thresholds come from the measurements in `models/README.md`.
pub const DEFAULT_RULES: &str = r#"
[rules.mask_required]
detector = "face-yunet"
classifier = "mask-v2"
violation_label = ["no_mask", "mask_incorrect"]
unjudged_label = "unclear"
min_detection_score = 0.75
crop_margin = 0.15
min_box_px = 8

[rules.gloves_required]
detector = "hand-palm"
classifier = "gloves"
violation_label = "bare_hand"
min_detection_score = 0.5
crop_margin = 0.8

[rules.no_animals]
detector = "objectron-int8"
classes = ["cat", "dog"]
min_detection_score = 0.6
every_secs = 2.0

[[assign]]
rules = ["mask_required", "no_animals"]
closeups = true

[[assign]]
zone = "prep"
rules = ["mask_required", "gloves_required", "no_animals"]
closeups = true

[[assign]]
zone = "dining"
rules = []
"#;

impl RuleSet {
    pub fn parse(text: &str, source_name: &str) -> Result<RuleSet, RulesError> {
        let err = |message: String| RulesError {
            source_name: source_name.to_string(),
            message,
        };
        let set: RuleSet = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        for (i, a) in set.assign.iter().enumerate() {
            for r in &a.rules {
                if !set.rules.contains_key(r) {
                    return Err(err(format!(
                        "assign[{i}] names rule `{r}`, which is not defined (defined: {})",
                        set.rules.keys().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        for (name, r) in &set.rules {
            let kind = r.kind().ok_or_else(|| {
                err(format!(
                    "rules.{name} names neither a detector nor a classifier (it needs one or both)"
                ))
            })?;
            match kind {
                RuleKind::Cascade | RuleKind::WholeFrame => {
                    if r.violation_labels().is_empty() {
                        return Err(err(format!(
                            "rules.{name}.violation_label is missing: name the classifier label(s) that mean a violation"
                        )));
                    }
                    if r.violation_when.is_some() {
                        return Err(err(format!(
                            "rules.{name}.violation_when applies only to presence rules (a detector without a classifier)"
                        )));
                    }
                }
                RuleKind::Presence => {
                    if r.unjudged_label.is_some() {
                        return Err(err(format!(
                            "rules.{name}.unjudged_label needs a classifier; a presence rule has none"
                        )));
                    }
                    if r.violation_label.is_some() {
                        return Err(err(format!(
                            "rules.{name}.violation_label needs a classifier; a presence rule's violation is a detection of `classes`"
                        )));
                    }
                }
            }
            if let Some(e) = r.every_secs {
                if !e.is_finite() || !(0.0..=86_400.0).contains(&e) {
                    return Err(err(format!(
                        "rules.{name}.every_secs must be between 0 (every frame) and 86400 seconds, got {e}"
                    )));
                }
            }
            if let Some(l) = r
                .unjudged_labels()
                .into_iter()
                .find(|l| r.violation_labels().contains(l))
            {
                return Err(err(format!(
                    "rules.{name}: `{l}` is both a violation_label and an unjudged_label"
                )));
            }
            if kind == RuleKind::WholeFrame && r.classes.is_some() {
                return Err(err(format!(
                    "rules.{name}.classes filters a detector's classes, and the rule has no detector"
                )));
            }
            if r.classes.as_ref().is_some_and(Vec::is_empty) {
                return Err(err(format!(
                    "rules.{name}.classes is empty: leave it out to keep every class"
                )));
            }
            if !(0.0..=1.0).contains(&r.min_detection_score) {
                return Err(err(format!(
                    "rules.{name}.min_detection_score must be within 0..1"
                )));
            }
            if !(0.0..=2.0).contains(&r.crop_margin) {
                return Err(err(format!("rules.{name}.crop_margin must be within 0..2")));
            }
            r.episode
                .validate()
                .map_err(|e| err(format!("rules.{name}.episode: {e}")))?;
        }
        Ok(set)
    }

    pub fn load(path: Option<&Path>) -> Result<RuleSet, RulesError> {
        match path {
            None => RuleSet::parse(DEFAULT_RULES, "(built-in default)"),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| RulesError {
                    source_name: p.display().to_string(),
                    message: e.to_string(),
                })?;
                RuleSet::parse(&text, &p.display().to_string())
            }
        }
    }

    /// The most specific assignment matching this frame's camera, if any.
    fn assignment_for(&self, meta: &FrameMeta) -> Option<&Assignment> {
        let mut best: Option<&Assignment> = None;
        for a in self.assign.iter().filter(|a| a.matches(meta)) {
            if best.is_none_or(|b| a.specificity() > b.specificity()) {
                best = Some(a);
            }
        }
        best
    }

    /// Names of the rules that apply to this frame's camera (possibly none).
    pub fn rules_for(&self, meta: &FrameMeta) -> &[String] {
        self.assignment_for(meta)
            .map_or(&[], |a| a.rules.as_slice())
    }

    /// The largest frame (longer side, pixels) searched again for a close-up on this camera;
    /// `None` where its assignment does not allow close-ups.
    pub fn closeups_for(&self, meta: &FrameMeta) -> Option<u32> {
        self.assignment_for(meta)
            .filter(|a| a.closeups)
            .map(|a| a.closeup_max_px)
    }

    /// Every model name any rule uses, detectors first, each once.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for d in self.rules.values().filter_map(|r| r.detector.as_ref()) {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        for c in self.rules.values().filter_map(|r| r.classifier.as_ref()) {
            if !out.contains(c) {
                out.push(c.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(site: &str, camera: &str, zone: Option<&str>) -> FrameMeta {
        FrameMeta {
            site: site.into(),
            camera: camera.into(),
            captured_at_ms: 0,
            seq: 0,
            zone: zone.map(Into::into),
        }
    }

    #[test]
    fn every_secs_is_a_period_in_seconds() {
        let r = |every: &str| {
            RuleSet::parse(
                &format!("[rules.a]\ndetector = 'd'\nevery_secs = {every}\n"),
                "t",
            )
        };
        assert_eq!(r("2.5").unwrap().rules["a"].every_ms(), Some(2_500));
        assert_eq!(
            r("0").unwrap().rules["a"].every_ms(),
            None,
            "0: every frame"
        );
        let e = r("-1").unwrap_err().to_string();
        assert!(e.contains("rules.a.every_secs"), "{e}");
        let e = r("'often'").unwrap_err().to_string();
        assert!(e.contains("every_secs"), "{e}");
        let d = RuleSet::parse(DEFAULT_RULES, "default").unwrap();
        assert_eq!(d.rules["no_animals"].every_ms(), Some(2_000));
        assert_eq!(d.rules["mask_required"].every_ms(), None);
    }

    #[test]
    fn default_checks_masks_and_animals_gloves_in_prep_nothing_in_dining() {
        let r = RuleSet::load(None).unwrap();
        assert_eq!(
            r.rules_for(&meta("s", "c", Some("kitchen"))),
            ["mask_required", "no_animals"]
        );
        assert_eq!(
            r.rules_for(&meta("s", "c", None)),
            ["mask_required", "no_animals"]
        );
        assert_eq!(
            r.rules_for(&meta("s", "c", Some("prep"))),
            ["mask_required", "gloves_required", "no_animals"]
        );
        assert!(r.rules_for(&meta("s", "c", Some("dining"))).is_empty());
        assert_eq!(
            r.models(),
            [
                "hand-palm",
                "face-yunet",
                "objectron-int8",
                "gloves",
                "mask-v2"
            ]
        );
        let pack1 =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/rules/pack1.toml");
        let old = RuleSet::load(Some(&pack1)).unwrap();
        assert_eq!(old.models(), ["face-blazeface", "mask"]);
    }

    #[test]
    fn the_most_specific_assignment_wins() {
        let r = RuleSet::parse(
            r#"
            [rules.a]
            classifier = "x"
            violation_label = "bad"
            [rules.b]
            detector = "d"
            classifier = "y"
            violation_label = "bad"
            [[assign]]
            zone = "kitchen"
            rules = ["a"]
            [[assign]]
            site = "s1"
            zone = "kitchen"
            rules = ["b"]
            [[assign]]
            camera = "c9"
            rules = []
            "#,
            "t",
        )
        .unwrap();
        assert_eq!(r.rules_for(&meta("s2", "c1", Some("kitchen"))), ["a"]);
        assert_eq!(r.rules_for(&meta("s1", "c1", Some("kitchen"))), ["b"]);
        assert!(r.rules_for(&meta("s1", "c9", Some("kitchen"))).is_empty());
        assert!(
            r.rules_for(&meta("s1", "c1", Some("dining"))).is_empty(),
            "no match: no rules"
        );
        assert_eq!(r.models(), ["d", "x", "y"]);
    }

    #[test]
    fn close_ups_are_allowed_per_assignment_up_to_a_frame_size() {
        let r = RuleSet::parse(
            r#"
            [rules.m]
            detector = "d"
            classifier = "c"
            violation_label = "bad"
            [[assign]]
            rules = ["m"]
            closeups = true
            [[assign]]
            zone = "counter"
            rules = ["m"]
            closeups = true
            closeup_max_px = 1200
            [[assign]]
            camera = "c9"
            rules = ["m"]
            "#,
            "t",
        )
        .unwrap();
        assert_eq!(r.closeups_for(&meta("s", "c1", None)), Some(320));
        assert_eq!(
            r.closeups_for(&meta("s", "c1", Some("counter"))),
            Some(1200)
        );
        assert_eq!(
            r.closeups_for(&meta("s", "c9", None)),
            None,
            "not said: none"
        );
        let err = RuleSet::parse(
            "[rules.m]\nclassifier='c'\nviolation_label='x'\n[[assign]]\nrules=['m']\ncloseups='yes'",
            "t",
        )
        .unwrap_err();
        assert!(err.message.contains("closeups"), "{err}");
    }

    #[test]
    fn three_kinds_of_rule() {
        let r = RuleSet::parse(
            r#"
            [rules.masks]
            detector = "faces"
            classifier = "mask"
            violation_label = ["no_mask", "mask_incorrect"]
            [rules.clean]
            classifier = "cleanliness"
            violation_label = "dirty"
            [rules.animals]
            detector = "objects"
            classes = ["cat", "dog"]
            [rules.staffed]
            detector = "objects"
            classes = ["person"]
            violation_when = "absent"
            "#,
            "t",
        )
        .unwrap();
        assert_eq!(r.rules["masks"].kind(), Some(RuleKind::Cascade));
        assert_eq!(
            r.rules["masks"].violation_labels(),
            ["no_mask", "mask_incorrect"]
        );
        assert_eq!(r.rules["clean"].kind(), Some(RuleKind::WholeFrame));
        assert_eq!(r.rules["clean"].violation_labels(), ["dirty"]);
        assert_eq!(r.rules["animals"].kind(), Some(RuleKind::Presence));
        assert_eq!(
            r.rules["staffed"].violation_when,
            Some(ViolationWhen::Absent)
        );
        assert_eq!(r.models(), ["objects", "faces", "cleanliness", "mask"]);
    }

    #[test]
    fn rule_kind_mistakes_are_named() {
        let bad = |text: &str, needle: &str| {
            let e = RuleSet::parse(text, "f.toml").unwrap_err().to_string();
            assert!(e.contains(needle), "{e} should name {needle}");
        };
        bad(
            "[rules.a]\nmin_detection_score=0.5",
            "neither a detector nor a classifier",
        );
        bad(
            "[rules.a]\nclassifier='c'",
            "rules.a.violation_label is missing",
        );
        bad(
            "[rules.a]\ndetector='d'\nviolation_label='x'",
            "rules.a.violation_label needs a classifier",
        );
        bad(
            "[rules.a]\nclassifier='c'\nviolation_label='x'\nclasses=['cat']",
            "rules.a.classes",
        );
        bad(
            "[rules.a]\ndetector='d'\nclasses=[]",
            "rules.a.classes is empty",
        );
        bad(
            "[rules.a]\ndetector='d'\nunjudged_label='unclear'",
            "rules.a.unjudged_label needs a classifier",
        );
        bad(
            "[rules.a]\ndetector='d'\nclassifier='c'\nviolation_label=['x','y']\nunjudged_label='y'",
            "`y` is both a violation_label and an unjudged_label",
        );
        bad(
            "[rules.a]\nclassifier='c'\nviolation_label='x'\nviolation_when='absent'",
            "rules.a.violation_when",
        );
        bad(
            "[rules.a]\ndetector='d'\nviolation_when='sometimes'",
            "sometimes",
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = RuleSet::parse(
            "[rules.a]\nclassifier='x'\nviolation_label='v'\n[[assign]]\nrules=['nope']",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("nope") && e.contains("f.toml"), "{e}");
        let e = RuleSet::parse("[rules.a]\nclassifer='x'\nviolation_label='v'", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("classifer"), "{e}");
        let e = RuleSet::parse(
            "[rules.a]\nclassifier='x'\nviolation_label='v'\nmin_detection_score=3",
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("min_detection_score"), "{e}");
        let e = RuleSet::parse(
            "[rules.a]\nclassifier='x'\nviolation_label='v'\n[rules.a.episode]\nopen_threshold=0.2",
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("rules.a.episode") && e.contains("open_threshold"),
            "{e}"
        );
        let e = RuleSet::parse(
            "[rules.a]\nclassifier='x'\nviolation_label='v'\n[rules.a.episode]\nhalf_life=2",
            "f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("half_life"), "{e}");
    }
}
