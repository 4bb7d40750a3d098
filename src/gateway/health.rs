//! Camera health as data: each camera's [`CameraHealth`] is the one place its state changes are
//! logged, counted and announced, so the log, `/metrics` and the camera-status topic always
//! agree. A change (up → down, down → up) is logged once and published as a
//! [`StatusRecord`]; the attempts in between are only counted.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::config::CameraUrl;
use crate::contract::{now_ms, StatusRecord};
use crate::telemetry::SiteMetrics;

/// Where a camera stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not yet connected since the gateway started.
    Starting,
    Up,
    Down,
}

/// One camera's health: its state, metrics and announcements.
pub struct CameraHealth {
    /// The camera id.
    pub camera: String,
    /// The site id, for the status records.
    site: String,
    /// The zone, for the status records.
    zone: Option<String>,
    /// The URL, redacted when shown, for the log lines.
    url: CameraUrl,
    /// The gateway's metrics.
    metrics: Arc<SiteMetrics>,
    /// The current state.
    state: Mutex<State>,
    /// Where status records go to be published; bounded, never waited on.
    status: mpsc::Sender<StatusRecord>,
}

impl CameraHealth {
    pub fn new(
        camera: &str,
        site: &str,
        zone: Option<String>,
        url: CameraUrl,
        metrics: Arc<SiteMetrics>,
        status: mpsc::Sender<StatusRecord>,
    ) -> CameraHealth {
        CameraHealth {
            camera: camera.to_string(),
            site: site.to_string(),
            zone,
            url,
            metrics,
            state: Mutex::new(State::Starting),
            status,
        }
    }

    /// Moves to `to`; whether that was a change.
    fn change(&self, to: State) -> bool {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let changed = *s != to;
        *s = to;
        changed
    }

    fn announce(&self, state: &str, reason: &str) {
        let record = StatusRecord {
            site: self.site.clone(),
            camera: self.camera.clone(),
            zone: self.zone.clone(),
            state: state.to_string(),
            reason: reason.to_string(),
            at_ms: now_ms(),
            reconnects: self
                .metrics
                .reconnects
                .with_label_values(&[&self.camera])
                .get(),
        };
        if self.status.try_send(record).is_err() {
            tracing::warn!(
                camera = %self.camera,
                state,
                "camera status record not published: its queue is full"
            );
        }
    }

    /// The camera delivered a frame.
    pub fn up(&self) {
        if self.change(State::Up) {
            self.metrics
                .camera_up
                .with_label_values(&[&self.camera])
                .set(1);
            tracing::info!(camera = %self.camera, url = %self.url, "camera up");
            self.announce("up", "");
        }
    }

    /// The camera failed (`reason`: no credentials in it). Announced once per outage; a camera
    /// that never came up since start-up is announced down too.
    pub fn down(&self, reason: &str) {
        if self.change(State::Down) {
            self.metrics
                .camera_up
                .with_label_values(&[&self.camera])
                .set(0);
            tracing::warn!(
                camera = %self.camera,
                url = %self.url,
                reason,
                "camera down; reconnecting with backoff"
            );
            self.announce("down", reason);
        } else {
            tracing::debug!(camera = %self.camera, reason, "camera still down");
        }
    }

    /// A reconnection attempt.
    pub fn reconnecting(&self) {
        self.metrics
            .reconnects
            .with_label_values(&[&self.camera])
            .inc();
    }

    /// A frame was sampled at `at_ms`.
    pub fn captured(&self, at_ms: i64) {
        self.metrics
            .captured
            .with_label_values(&[&self.camera])
            .inc();
        self.metrics
            .last_frame
            .with_label_values(&[&self.camera])
            .set(at_ms as f64 / 1000.0);
    }

    /// A frame of this camera was dropped for `reason`.
    pub fn dropped(&self, reason: &str) {
        self.metrics.drop_frame(&self.camera, reason);
    }
}
