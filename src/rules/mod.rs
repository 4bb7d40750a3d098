//! Rules: what is checked on which camera.
//!
//! A rule names a pipeline, either a detector followed by a classifier on each detection's crop
//! (`mask_required`: faces → mask classifier → `no_mask` is a violation) or a classifier on the
//! whole frame (a cleanliness or open/closed classifier). Assignments map sites, zones and
//! cameras to rules; the most specific matching assignment wins. A camera no assignment covers is
//! observed but never produces a violation.
//!
//! Configuration (`--rules FILE`, TOML); without a file the built-in default applies:
//!
//! ```toml
//! [rules.mask_required]
//! detector = "face-blazeface"  # detector model (manifest name)
//! classifier = "mask"          # classifier run on each detection's crop
//! violation_label = "no_mask"
//! min_detection_score = 0.5
//! crop_margin = 0.15           # crop grows by this fraction of the box on each side
//!
//! [rules.mask_required.episode] # how verdicts become alerts (see `episodes`); all optional
//! half_life_secs = 4.0
//! open_threshold = 0.6
//! close_threshold = 0.3
//! min_open_secs = 3.0
//! clear_secs = 10.0
//! cooldown_secs = 30.0
//!
//! [rules.counter_clean]
//! classifier = "cleanliness"   # no detector: the classifier sees the whole frame
//! violation_label = "dirty"
//!
//! [[assign]]                   # no selector: every camera
//! rules = ["mask_required"]
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

/// One rule's pipeline and thresholds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Detector model; when absent the classifier runs on the whole frame.
    #[serde(default)]
    pub detector: Option<String>,
    /// Classifier model: on each detection's crop, or on the whole frame.
    pub classifier: String,
    /// Classifier label that means "violation".
    pub violation_label: String,
    /// Detections scoring below this are ignored.
    #[serde(default = "default_min_detection_score")]
    pub min_detection_score: f32,
    /// Crop margin around a detection, as a fraction of its width/height on each side.
    #[serde(default = "default_crop_margin")]
    pub crop_margin: f32,
    /// Detections smaller than this many pixels (shorter side, in the decoded frame) are ignored.
    #[serde(default = "default_min_box_px")]
    pub min_box_px: u32,
    /// At most this many detections per frame are classified (highest scores first).
    #[serde(default = "default_max_detections")]
    pub max_detections: usize,
    /// How verdicts become episodes (`[rules.<name>.episode]`; defaults otherwise).
    #[serde(default)]
    pub episode: EpisodePolicy,
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

/// The default when no `--rules` file is given: every camera checks masks, except cameras in
/// the `dining` zone, which are observed only.
pub const DEFAULT_RULES: &str = r#"
[rules.mask_required]
detector = "face-blazeface"
classifier = "mask"
violation_label = "no_mask"

[[assign]]
rules = ["mask_required"]

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

    /// Names of the rules that apply to this frame's camera (possibly none).
    pub fn rules_for(&self, meta: &FrameMeta) -> &[String] {
        let mut best: Option<&Assignment> = None;
        for a in self.assign.iter().filter(|a| a.matches(meta)) {
            if best.is_none_or(|b| a.specificity() > b.specificity()) {
                best = Some(a);
            }
        }
        best.map_or(&[], |a| a.rules.as_slice())
    }

    /// Every model name any rule uses, detectors first, each once.
    pub fn models(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for r in self.rules.values() {
            if let Some(d) = &r.detector {
                if !out.contains(d) {
                    out.insert(0, d.clone());
                }
            }
        }
        for r in self.rules.values() {
            if !out.contains(&r.classifier) {
                out.push(r.classifier.clone());
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
    fn default_checks_masks_except_in_dining() {
        let r = RuleSet::load(None).unwrap();
        assert_eq!(
            r.rules_for(&meta("s", "c", Some("kitchen"))),
            ["mask_required"]
        );
        assert_eq!(r.rules_for(&meta("s", "c", None)), ["mask_required"]);
        assert!(r.rules_for(&meta("s", "c", Some("dining"))).is_empty());
        assert_eq!(r.models(), ["face-blazeface", "mask"]);
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
