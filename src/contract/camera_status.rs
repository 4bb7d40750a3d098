//! The camera-status record: a site gateway's word that one of its cameras went down or came
//! back (JSON on the camera-status topic, key = camera). The console reads it to tell "camera
//! offline" from "no violation".

use serde::{Deserialize, Serialize};

/// A camera went down or came back: the value of a camera-status record (JSON; key = camera).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusRecord {
    /// The site id.
    pub site: String,
    /// The camera id (also the record's key).
    pub camera: String,
    /// The camera's zone, if any.
    pub zone: Option<String>,
    /// `up` or `down`.
    pub state: String,
    /// Why it went down (empty when up): the capture's words, without the URL's credentials.
    pub reason: String,
    /// When the gateway saw the change, ms since the epoch.
    pub at_ms: i64,
    /// Reconnection attempts of the camera so far.
    pub reconnects: u64,
}

impl StatusRecord {
    /// Whether the camera is down by this record.
    pub fn is_down(&self) -> bool {
        self.state == "down"
    }
}
