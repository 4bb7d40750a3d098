//! The metrics of a site gateway (`vigil gateway --cameras-file`): camera health as data. Per
//! camera (the `camera` label; ids come from the camera file, so the series are bounded by it):
//! up or down, last frame time, reconnections, frames captured, published and dropped by
//! reason; for the site: the store-and-forward buffer and the link to the brokers. URLs never
//! appear in a label.

use prometheus::{
    Gauge, GaugeVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Why a frame was dropped (the `reason` label); every one is exported from the start at 0.
pub const DROP_REASONS: &[&str] = &[
    // The publisher was behind (its intake queue full): the capture does not wait for it.
    "queue_full",
    // The camera sent something that is not an image (or OpenCV could not convert it).
    "garbage",
    // Larger than --max-frame-bytes.
    "oversize",
    "camera_bytes_cap",
    "site_fps_cap",
    "site_bytes_cap",
    "buffer_full",
    "buffer_age",
    // The broker refused it for good (not an outage: those are waited out).
    "rejected",
];

/// Every metric handle of a site gateway.
pub struct SiteMetrics {
    /// What `/metrics` serves.
    pub registry: Registry,
    /// 1 while the camera delivers frames, 0 while it is down or not yet connected.
    pub camera_up: IntGaugeVec,
    /// Unix time of the camera's last captured frame, in seconds.
    pub last_frame: GaugeVec,
    /// Reconnection attempts after a failure.
    pub reconnects: IntCounterVec,
    /// Frames sampled from the camera.
    pub captured: IntCounterVec,
    /// Frames the broker acknowledged.
    pub published: IntCounterVec,
    /// Frames dropped, by camera and reason.
    pub dropped: IntCounterVec,
    /// Frames held in the buffer (waiting or in flight).
    pub buffer_frames: IntGauge,
    /// JPEG bytes held in the buffer.
    pub buffer_bytes: IntGauge,
    /// 1 while a broker answers, 0 while none does.
    pub broker_reachable: IntGauge,
    /// Camera-status records published (state changes).
    pub status_records: IntCounter,
    /// Unix time of the oldest frame in the buffer (0 when empty): how late the backlog is.
    pub buffer_oldest: Gauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone()))
        .expect("metric names are unique and valid");
    m
}

fn by_camera(name: &str, help: &str) -> Opts {
    Opts::new(name, help)
}

impl SiteMetrics {
    /// The metrics, with every camera's series present from the start.
    pub fn new(site: &str, cameras: &[String]) -> SiteMetrics {
        let r = Registry::new_custom(None, Some([("site".to_string(), site.to_string())].into()))
            .expect("a valid site label");
        let m = SiteMetrics {
            camera_up: reg(&r, IntGaugeVec::new(by_camera("vigil_gateway_camera_up", "1 while the camera delivers frames, 0 while it is down or not yet connected."), &["camera"]).expect("valid")),
            last_frame: reg(&r, GaugeVec::new(by_camera("vigil_gateway_camera_last_frame_timestamp_seconds", "Unix time of the camera's last captured frame."), &["camera"]).expect("valid")),
            reconnects: reg(&r, IntCounterVec::new(by_camera("vigil_gateway_camera_reconnects_total", "Reconnection attempts after the camera failed."), &["camera"]).expect("valid")),
            captured: reg(&r, IntCounterVec::new(by_camera("vigil_gateway_frames_captured_total", "Frames sampled from the camera."), &["camera"]).expect("valid")),
            published: reg(&r, IntCounterVec::new(by_camera("vigil_gateway_frames_published_total", "Frames of the camera the broker acknowledged."), &["camera"]).expect("valid")),
            dropped: reg(&r, IntCounterVec::new(by_camera("vigil_gateway_frames_dropped_total", "Frames dropped unpublished, by camera and reason."), &["camera", "reason"]).expect("valid")),
            buffer_frames: reg(&r, IntGauge::new("vigil_gateway_buffer_frames", "Frames in the store-and-forward buffer (waiting or in flight).").expect("valid")),
            buffer_bytes: reg(&r, IntGauge::new("vigil_gateway_buffer_bytes", "JPEG bytes in the store-and-forward buffer.").expect("valid")),
            broker_reachable: reg(&r, IntGauge::new("vigil_gateway_broker_reachable", "1 while a broker answers, 0 while none does.").expect("valid")),
            status_records: reg(&r, IntCounter::new("vigil_gateway_camera_status_records_total", "Camera-status records published (a camera went down or came back).").expect("valid")),
            buffer_oldest: reg(&r, Gauge::new("vigil_gateway_buffer_oldest_timestamp_seconds", "Capture time of the oldest frame in the buffer (0 when empty).").expect("valid")),
            registry: r,
        };
        m.broker_reachable.set(1);
        for c in cameras {
            m.camera_up.with_label_values(&[c]).set(0);
            m.last_frame.with_label_values(&[c]);
            m.reconnects.with_label_values(&[c]);
            m.captured.with_label_values(&[c]);
            m.published.with_label_values(&[c]);
            for reason in DROP_REASONS {
                m.dropped.with_label_values(&[c.as_str(), reason]);
            }
        }
        m
    }

    /// A frame of `camera` dropped for `reason` (one of [`DROP_REASONS`]).
    pub fn drop_frame(&self, camera: &str, reason: &str) {
        self.dropped.with_label_values(&[camera, reason]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_camera_s_series_exist_from_the_start() {
        let m = SiteMetrics::new("site-001", &["cam-01".into(), "cam-02".into()]);
        m.drop_frame("cam-02", "buffer_full");
        let text = super::super::metrics::encode(&m.registry);
        assert!(
            text.contains(r#"vigil_gateway_camera_up{camera="cam-01",site="site-001"} 0"#),
            "{text}"
        );
        assert!(text.contains(r#"vigil_gateway_frames_dropped_total{camera="cam-02",reason="buffer_full",site="site-001"} 1"#));
        assert!(text.contains(r#"vigil_gateway_frames_dropped_total{camera="cam-01",reason="queue_full",site="site-001"} 0"#));
    }
}
