//! Why a frame is refused: the dead-letter vocabulary every stage shares (stable reason codes
//! and a detail in words).

use std::fmt;

/// Why a frame went to the dead-letter topic. The code is a stable label (metrics, the `reason`
/// header); the detail says what exactly was wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Stable, low-cardinality reason code.
    pub reason: Reason,
    /// Human-readable explanation for whoever reads the dead-letter topic.
    pub detail: String,
}

/// Stable reason codes for dead-lettered frames. They are metric label values and the value of
/// the `reason` header, so they never change once published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A required header is absent.
    MissingHeader,
    /// A header is present but unparsable (non-UTF-8, not a number, empty).
    BadHeader,
    /// The record has no value.
    Empty,
    /// The value is larger than the configured maximum frame size.
    Oversize,
    /// The value does not start like a JPEG.
    NotJpeg,
    /// The JPEG's structure ends before its image data does.
    Truncated,
    /// The JPEG header claims more pixels than the budget allows.
    PixelBudget,
    /// OpenCV refused to decode the bytes.
    DecodeFailed,
    /// The frame's observation or events could not be encoded for their schema (a defect in
    /// vigil, never the frame's fault; dead-lettered so that it cannot stop the partition).
    EncodeFailed,
    /// The frame's camera id belongs to another site on its partition (a token of one site
    /// cannot touch another site's cameras).
    SiteConflict,
    /// The frame's `captured_at` jumps ahead of its camera's own recent frames by more than the
    /// partition's other cameras saw pass.
    ClockJump,
}

impl Reason {
    pub const ALL: [Reason; 11] = [
        Reason::MissingHeader,
        Reason::BadHeader,
        Reason::Empty,
        Reason::Oversize,
        Reason::NotJpeg,
        Reason::Truncated,
        Reason::PixelBudget,
        Reason::DecodeFailed,
        Reason::EncodeFailed,
        Reason::SiteConflict,
        Reason::ClockJump,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingHeader => "missing_header",
            Reason::BadHeader => "bad_header",
            Reason::Empty => "empty",
            Reason::Oversize => "oversize",
            Reason::NotJpeg => "not_jpeg",
            Reason::Truncated => "truncated",
            Reason::PixelBudget => "pixel_budget",
            Reason::DecodeFailed => "decode_failed",
            Reason::EncodeFailed => "encode_failed",
            Reason::SiteConflict => "site_conflict",
            Reason::ClockJump => "clock_jump",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Rejection {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Rejection {
            reason,
            detail: detail.into(),
        }
    }
}
