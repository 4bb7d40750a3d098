//! Per-camera metric series, bounded: a worker exports series for at most `limit` cameras at
//! once, and a camera silent (by the wall clock) for `idle` loses its series, making room. A
//! flood of camera ids (a misconfigured gateway, an attacker) cannot grow the registry without
//! end; cameras refused a series are counted.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus::{GaugeVec, IntCounter, IntCounterVec};

/// Default most cameras with series per worker.
pub const DEFAULT_CAMERA_LIMIT: usize = 10_000;
/// A camera without a frame for this long loses its series.
pub const CAMERA_IDLE: Duration = Duration::from_secs(600);

/// Exported cameras: (site, camera) → when last seen, and the rules with a violation series.
type Seen = HashMap<(String, String), (Instant, Vec<String>)>;

pub struct CameraSeries {
    last_frame: GaugeVec,
    violations: IntCounterVec,
    /// Cameras refused a series because `limit` were exported.
    pub refused: IntCounter,
    seen: Mutex<Seen>,
    limit: usize,
}

impl CameraSeries {
    pub fn new(
        last_frame: GaugeVec,
        violations: IntCounterVec,
        refused: IntCounter,
        limit: usize,
    ) -> Self {
        CameraSeries {
            last_frame,
            violations,
            refused,
            seen: Mutex::default(),
            limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A frame of the camera arrived, captured at `captured_at_s` (Unix seconds).
    pub fn frame(&self, site: &str, camera: &str, captured_at_s: f64) {
        let mut seen = self.lock();
        let key = (site.to_string(), camera.to_string());
        let full = seen.len() >= self.limit;
        match seen.get_mut(&key) {
            Some(entry) => entry.0 = Instant::now(),
            None if full => {
                self.refused.inc();
                return;
            }
            None => {
                seen.insert(key, (Instant::now(), Vec::new()));
            }
        }
        self.last_frame
            .with_label_values(&[site, camera])
            .set(captured_at_s);
    }

    /// A frame of the camera was judged a violation of `rule`.
    pub fn violation(&self, site: &str, camera: &str, rule: &str) {
        let mut seen = self.lock();
        let Some(entry) = seen.get_mut(&(site.to_string(), camera.to_string())) else {
            return;
        };
        if !entry.1.iter().any(|r| r == rule) {
            entry.1.push(rule.to_string());
        }
        self.violations
            .with_label_values(&[site, camera, rule])
            .inc();
    }

    /// Drops the series of cameras idle for `idle`; returns how many cameras keep series.
    pub fn sweep(&self, idle: Duration) -> usize {
        let mut seen = self.lock();
        let now = Instant::now();
        seen.retain(|(site, camera), (at, rules)| {
            let keep = now.duration_since(*at) < idle;
            if !keep {
                let _ = self.last_frame.remove_label_values(&[site, camera]);
                for rule in rules.iter() {
                    let _ = self.violations.remove_label_values(&[site, camera, rule]);
                }
            }
            keep
        });
        seen.len()
    }

    /// Cameras with series.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::core::Collector;
    use prometheus::Opts;

    fn series(limit: usize) -> CameraSeries {
        CameraSeries::new(
            GaugeVec::new(Opts::new("last", "h"), &["site", "camera"]).unwrap(),
            IntCounterVec::new(Opts::new("v", "h"), &["site", "camera", "rule"]).unwrap(),
            IntCounter::new("refused", "h").unwrap(),
            limit,
        )
    }

    #[test]
    fn a_flood_of_camera_ids_is_capped_and_idle_ones_make_room() {
        let s = series(100);
        for i in 0..10_000 {
            s.frame("site", &format!("cam-{i}"), 1.0);
            s.violation("site", &format!("cam-{i}"), "mask");
        }
        assert_eq!(s.len(), 100);
        assert_eq!(s.refused.get(), 9_900);
        assert_eq!(s.last_frame.collect()[0].get_metric().len(), 100);
        assert_eq!(s.violations.collect()[0].get_metric().len(), 100);
        // Known cameras keep updating; idle ones go.
        s.frame("site", "cam-0", 2.0);
        assert_eq!(s.refused.get(), 9_900);
        assert_eq!(s.sweep(Duration::ZERO), 0);
        assert!(s.last_frame.collect()[0].get_metric().is_empty());
        assert!(s.violations.collect()[0].get_metric().is_empty());
        s.frame("site", "cam-new", 3.0);
        assert_eq!(s.len(), 1);
    }
}
