//! Intake: every check that can be made on a frame record before a decode is spent on it.

use crate::contract::frame::check_event_time;
use crate::contract::jpeg::{self, JpegInfo};
use crate::contract::{parse_meta, FrameMeta, Limits, Reason, Rejection};

/// Every check that can be made without decoding: headers, event time (against `now_ms`), size,
/// JPEG structure and the pixel budget. Returns the parsed headers and the dimensions the JPEG header claims.
pub fn validate(
    key: Option<&[u8]>,
    headers: &[(String, Vec<u8>)],
    payload: &[u8],
    limits: &Limits,
    now_ms: i64,
) -> Result<(FrameMeta, JpegInfo), Rejection> {
    let meta = parse_meta(key, headers)?;
    check_event_time(meta.captured_at_ms, now_ms, limits)?;
    if payload.is_empty() {
        return Err(Rejection::new(Reason::Empty, "record value is empty"));
    }
    if payload.len() > limits.max_frame_bytes {
        return Err(Rejection::new(
            Reason::Oversize,
            format!(
                "frame is {} bytes, over the {} byte limit",
                payload.len(),
                limits.max_frame_bytes
            ),
        ));
    }
    let info = jpeg::sniff(payload)?;
    let pixels = info.width as u64 * info.height as u64;
    if pixels > limits.max_pixels {
        return Err(Rejection::new(
            Reason::PixelBudget,
            format!(
                "JPEG header claims {}x{} = {pixels} pixels, over the budget of {}",
                info.width, info.height, limits.max_pixels
            ),
        ));
    }
    Ok((meta, info))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::frame::tests::good;

    /// The tests' `good()` frame was captured at 1700000000123.
    const NOW: i64 = 1_700_000_000_500;

    #[test]
    fn size_checks_come_before_structure() {
        let limits = Limits {
            max_frame_bytes: 10,
            max_pixels: 100,
            ..Limits::default()
        };
        let err = validate(Some(b"cam-0001"), &good(), &[], &limits, NOW).unwrap_err();
        assert_eq!(err.reason, Reason::Empty);
        let err = validate(Some(b"cam-0001"), &good(), &[0u8; 11], &limits, NOW).unwrap_err();
        assert_eq!(err.reason, Reason::Oversize);
    }

    #[test]
    fn pixel_budget_is_checked_from_the_header() {
        let jpeg = crate::contract::jpeg::tests::minimal_jpeg(60000, 60000);
        let err = validate(Some(b"cam-0001"), &good(), &jpeg, &Limits::default(), NOW).unwrap_err();
        assert_eq!(err.reason, Reason::PixelBudget);
        assert!(err.detail.contains("60000x60000"), "{}", err.detail);
        let small = crate::contract::jpeg::tests::minimal_jpeg(640, 480);
        let (_, info) =
            validate(Some(b"cam-0001"), &good(), &small, &Limits::default(), NOW).unwrap();
        assert_eq!((info.width, info.height), (640, 480));
    }
}
