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

/// Exported cameras: site → camera → when last seen, and the rules with a violation series.
/// Nested so that a known camera is found from borrowed names, without allocating per frame.
type Seen = HashMap<String, HashMap<String, (Instant, Vec<String>)>>;

pub struct CameraSeries {
    last_frame: GaugeVec,
    violations: IntCounterVec,
    /// Cameras refused a series because `limit` were exported.
    pub refused: IntCounter,
    seen: Mutex<(Seen, usize)>,
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

    /// The cameras, and how many there are.
    fn lock(&self) -> std::sync::MutexGuard<'_, (Seen, usize)> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A frame of the camera arrived, captured at `captured_at_s` (Unix seconds).
    pub fn frame(&self, site: &str, camera: &str, captured_at_s: f64) {
        let mut guard = self.lock();
        let (seen, count) = &mut *guard;
        match seen.get_mut(site).and_then(|c| c.get_mut(camera)) {
            Some(entry) => entry.0 = Instant::now(),
            None if *count >= self.limit => {
                self.refused.inc();
                return;
            }
            None => {
                seen.entry(site.to_string())
                    .or_default()
                    .insert(camera.to_string(), (Instant::now(), Vec::new()));
                *count += 1;
            }
        }
        self.last_frame
            .with_label_values(&[site, camera])
            .set(captured_at_s);
    }

    /// A frame of the camera was judged a violation of `rule`.
    pub fn violation(&self, site: &str, camera: &str, rule: &str) {
        let mut guard = self.lock();
        let Some(entry) = guard.0.get_mut(site).and_then(|c| c.get_mut(camera)) else {
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
        let mut guard = self.lock();
        let (seen, count) = &mut *guard;
        let now = Instant::now();
        for (site, cameras) in seen.iter_mut() {
            cameras.retain(|camera, (at, rules)| {
                let keep = now.duration_since(*at) < idle;
                if !keep {
                    let _ = self.last_frame.remove_label_values(&[site, camera]);
                    for rule in rules.iter() {
                        let _ = self.violations.remove_label_values(&[site, camera, rule]);
                    }
                }
                keep
            });
        }
        seen.retain(|_, cameras| !cameras.is_empty());
        *count = seen.values().map(HashMap::len).sum();
        *count
    }

    /// Cameras with series.
    pub fn len(&self) -> usize {
        self.lock().1
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
