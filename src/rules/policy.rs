//! Episode parameters of a rule (`[rules.<name>.episode]` in the rules file): how the episodes
//! stage smooths verdicts and when it opens, clears and resolves an episode.

use serde::Deserialize;

/// Episode parameters of a rule (`[rules.<name>.episode]` in the rules file).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EpisodePolicy {
    /// Half-life of the smoothed level, seconds.
    pub half_life_secs: f64,
    pub open_threshold: f64,
    pub close_threshold: f64,
    /// Seconds the level must stay at or above `open_threshold` to open an episode.
    pub min_open_secs: f64,
    /// Seconds the level must stay at or below `close_threshold` to clear it.
    pub clear_secs: f64,
    /// Seconds a cleared episode waits before it is resolved; a relapse meanwhile continues it.
    pub cooldown_secs: f64,
    /// Seconds without any frame after which a camera's episode is resolved.
    pub silence_timeout_secs: f64,
    /// Frames older than the camera's newest by more than this many seconds are ignored.
    pub lateness_secs: f64,
    /// An open episode emits `updated` at least this often (seconds).
    pub heartbeat_secs: f64,
    /// Open for this many seconds: severity `major`.
    pub major_after_secs: f64,
    /// Open for this many seconds: severity `critical`.
    pub critical_after_secs: f64,
}

impl Default for EpisodePolicy {
    fn default() -> Self {
        EpisodePolicy {
            half_life_secs: 4.0,
            open_threshold: 0.6,
            close_threshold: 0.3,
            min_open_secs: 3.0,
            clear_secs: 10.0,
            cooldown_secs: 30.0,
            silence_timeout_secs: 60.0,
            lateness_secs: 5.0,
            heartbeat_secs: 60.0,
            major_after_secs: 60.0,
            critical_after_secs: 300.0,
        }
    }
}

impl EpisodePolicy {
    /// Checks the parameters, naming the first bad one. The negated comparisons are
    /// deliberate: `!(x > 0.0)` refuses NaN too.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn validate(&self) -> Result<(), String> {
        let p = self;
        if !(p.half_life_secs > 0.0) {
            return Err("half_life_secs must be positive".into());
        }
        if !(0.0 <= p.close_threshold
            && p.close_threshold < p.open_threshold
            && p.open_threshold <= 1.0)
        {
            return Err(
                "thresholds must satisfy 0 <= close_threshold < open_threshold <= 1".into(),
            );
        }
        for (name, v) in [
            ("min_open_secs", p.min_open_secs),
            ("clear_secs", p.clear_secs),
            ("cooldown_secs", p.cooldown_secs),
            ("lateness_secs", p.lateness_secs),
        ] {
            if !(v >= 0.0) {
                return Err(format!("{name} must not be negative"));
            }
        }
        for (name, v) in [
            ("silence_timeout_secs", p.silence_timeout_secs),
            ("heartbeat_secs", p.heartbeat_secs),
        ] {
            if !(v > 0.0) {
                return Err(format!("{name} must be positive"));
            }
        }
        if !(p.major_after_secs <= p.critical_after_secs) {
            return Err("major_after_secs must not exceed critical_after_secs".into());
        }
        Ok(())
    }
}
