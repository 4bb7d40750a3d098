//! The frame contract: what a camera gateway puts on the frames topic, and the checks a worker
//! makes before spending a decode on it.
//!
//! A frame is one Kafka record: key = camera id, value = JPEG bytes, headers `site`, `camera`,
//! `captured_at` (epoch milliseconds), `seq` and optionally `zone`. Everything here is pure so
//! that the rules can be tested without a broker.

use super::reject::{Reason, Rejection};

/// Header names of the frame contract, shared by the gateway (writer) and the worker (reader).
pub mod header {
    pub const SITE: &str = "site";
    pub const CAMERA: &str = "camera";
    pub const CAPTURED_AT: &str = "captured_at";
    pub const SEQ: &str = "seq";
    pub const ZONE: &str = "zone";
    /// Added by the worker on dead-lettered records: the stable reason code.
    pub const REASON: &str = "reason";
    /// Added by the worker on dead-lettered records: a human-readable explanation.
    pub const REASON_DETAIL: &str = "reason_detail";
    /// Added by the worker on dead-lettered records and observations: where the frame came
    /// from (a frame read again after a restart is found by them).
    pub const SOURCE_TOPIC: &str = "source_topic";
    pub const SOURCE_PARTITION: &str = "source_partition";
    pub const SOURCE_OFFSET: &str = "source_offset";
    pub const WORKER: &str = "worker";
    /// Added by the worker on a dead letter sent without its payload (the dead-letter topic
    /// refused it as too large): the payload's size in bytes.
    pub const PAYLOAD_DROPPED: &str = "payload_dropped";
    /// Added by the worker on observations of frames that rules apply to: `judged`, or
    /// `skipped` by load shedding. A frame read again after a restart is decided the same way.
    pub const ADMISSION: &str = "admission";
}

/// Values of the `admission` header.
pub mod admission {
    pub const JUDGED: &str = "judged";
    pub const SKIPPED: &str = "skipped";
}

/// Default largest frame, in bytes, that gateways publish and workers accept.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 4 * 1024 * 1024;
/// Default pixel budget: a frame whose JPEG header claims more pixels is refused before decoding.
/// 8K UHD (7680×4320) is 33.2 MP; anything past 40 MP is not a camera frame.
pub const DEFAULT_MAX_PIXELS: u64 = 40_000_000;

/// The parsed headers of a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameMeta {
    /// Site (restaurant) the camera belongs to; a metrics label and an event field.
    pub site: String,
    /// Camera id; equals the record key and is the unit of ordering.
    pub camera: String,
    /// When the camera captured the frame (epoch ms): event time for everything downstream.
    pub captured_at_ms: i64,
    /// Gateway sequence number per camera: lets consumers spot gaps and repeats.
    pub seq: u64,
    /// Optional area of the site (kitchen, dining…) that rules are chosen by.
    pub zone: Option<String>,
}

/// The earliest capture time accepted (2020-01-01T00:00:00Z, epoch ms): anything earlier is a
/// camera clock that was never set, or a timestamp in the wrong unit.
pub const EVENT_TIME_FLOOR_MS: i64 = 1_577_836_800_000;
/// Default for how far a capture time may lie ahead of the worker's clock.
pub const DEFAULT_MAX_FUTURE_MS: i64 = 5 * 60 * 1000;

/// Limits a worker enforces before decoding.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted record value in bytes.
    pub max_frame_bytes: usize,
    /// Largest accepted width × height claimed by the JPEG header.
    pub max_pixels: u64,
    /// How far `captured_at` may lie ahead of the worker's clock, in ms: a frame from the
    /// future would move the partition's event time and silence every other camera.
    pub max_future_ms: i64,
    /// How far `captured_at` may lie behind the worker's clock, in ms; `None` accepts any age
    /// (replaying old footage).
    pub max_age_ms: Option<i64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_future_ms: DEFAULT_MAX_FUTURE_MS,
            max_age_ms: None,
        }
    }
}

/// Checks a capture time against the floor and, relative to `now_ms`, the limits.
pub fn check_event_time(
    captured_at_ms: i64,
    now_ms: i64,
    limits: &Limits,
) -> Result<(), Rejection> {
    let bad = |why: String| {
        Err(Rejection::new(
            Reason::BadHeader,
            format!("header `captured_at` is {captured_at_ms}: {why}"),
        ))
    };
    if captured_at_ms < EVENT_TIME_FLOOR_MS {
        return bad(format!(
            "before 2020-01-01 ({EVENT_TIME_FLOOR_MS} ms); it must be milliseconds since the Unix epoch"
        ));
    }
    let ahead = captured_at_ms.saturating_sub(now_ms);
    if ahead > limits.max_future_ms {
        return bad(format!(
            "{ahead} ms ahead of the worker's clock, over the {} ms allowed (--max-future-secs)",
            limits.max_future_ms
        ));
    }
    if let Some(max_age) = limits.max_age_ms {
        let age = now_ms.saturating_sub(captured_at_ms);
        if age > max_age {
            return bad(format!(
                "{age} ms old, over the {max_age} ms allowed (--max-age-secs)"
            ));
        }
    }
    Ok(())
}

/// Longest site, camera or zone id, in bytes: ids are metric labels, log fields and record
/// keys, so they stay short.
pub const MAX_ID_BYTES: usize = 128;

/// A site, camera or zone id: non-empty, at most [`MAX_ID_BYTES`], no control characters (a
/// newline in an id would forge log lines and break the metrics exposition), no surrounding
/// spaces.
pub fn check_id(name: &str, value: &str) -> Result<(), Rejection> {
    let bad = |why: &str| {
        Err(Rejection::new(
            Reason::BadHeader,
            format!(
                "`{name}` {:?} {why}",
                value.chars().take(40).collect::<String>()
            ),
        ))
    };
    if value.trim().is_empty() {
        return bad("is empty");
    }
    if value.len() > MAX_ID_BYTES {
        return bad(&format!("is longer than {MAX_ID_BYTES} bytes"));
    }
    if value.chars().any(char::is_control) {
        return bad("contains control characters");
    }
    if value.trim() != value {
        return bad("has leading or trailing spaces");
    }
    Ok(())
}

/// Looks a header up by name in a list of (name, raw value) pairs.
fn find<'a>(headers: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_slice())
}

fn text_header(headers: &[(String, Vec<u8>)], name: &str) -> Result<Option<String>, Rejection> {
    match find(headers, name) {
        None => Ok(None),
        Some(raw) => {
            let s = std::str::from_utf8(raw).map_err(|_| {
                Rejection::new(Reason::BadHeader, format!("header `{name}` is not UTF-8"))
            })?;
            let s = s.trim();
            if s.is_empty() {
                return Err(Rejection::new(
                    Reason::BadHeader,
                    format!("header `{name}` is empty"),
                ));
            }
            Ok(Some(s.to_string()))
        }
    }
}

fn required(headers: &[(String, Vec<u8>)], name: &str) -> Result<String, Rejection> {
    text_header(headers, name)?.ok_or_else(|| {
        Rejection::new(
            Reason::MissingHeader,
            format!("required header `{name}` is missing"),
        )
    })
}

fn number<T: std::str::FromStr>(headers: &[(String, Vec<u8>)], name: &str) -> Result<T, Rejection> {
    let s = required(headers, name)?;
    s.parse().map_err(|_| {
        Rejection::new(
            Reason::BadHeader,
            format!("header `{name}` is not a valid number: {s:?}"),
        )
    })
}

/// Parses the frame headers. The record key must be present and equal the `camera` header: a
/// missing or different key would route a camera's frames to two partitions and break
/// per-camera order. `seq` must fit an Avro long (0 ..= i64::MAX).
pub fn parse_meta(
    key: Option<&[u8]>,
    headers: &[(String, Vec<u8>)],
) -> Result<FrameMeta, Rejection> {
    let camera = required(headers, header::CAMERA)?;
    let site = required(headers, header::SITE)?;
    let captured_at_ms: i64 = number(headers, header::CAPTURED_AT)?;
    let seq: u64 = number(headers, header::SEQ)?;
    if seq > i64::MAX as u64 {
        return Err(Rejection::new(
            Reason::BadHeader,
            format!(
                "header `seq` is {seq}, over the largest sequence number {}",
                i64::MAX
            ),
        ));
    }
    let zone = text_header(headers, header::ZONE)?;
    check_id(header::CAMERA, &camera)?;
    check_id(header::SITE, &site)?;
    if let Some(z) = &zone {
        check_id(header::ZONE, z)?;
    }
    match key {
        None => {
            return Err(Rejection::new(
                Reason::MissingHeader,
                format!("the record has no key; it must be the camera id {camera:?}"),
            ))
        }
        Some(key) if key != camera.as_bytes() => {
            return Err(Rejection::new(
                Reason::BadHeader,
                format!(
                    "record key {:?} differs from header `camera` {camera:?}",
                    String::from_utf8_lossy(key)
                ),
            ))
        }
        Some(_) => {}
    }
    Ok(FrameMeta {
        site,
        camera,
        captured_at_ms,
        seq,
        zone,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    pub(crate) fn good() -> Vec<(String, Vec<u8>)> {
        headers(&[
            ("site", "site-001"),
            ("camera", "cam-0001"),
            ("captured_at", "1700000000123"),
            ("seq", "42"),
        ])
    }

    #[test]
    fn parses_the_contract() -> Result<(), Rejection> {
        let mut h = good();
        h.push(("zone".into(), b"kitchen".to_vec()));
        let meta = parse_meta(Some(b"cam-0001"), &h)?;
        assert_eq!(meta.camera, "cam-0001");
        assert_eq!(meta.site, "site-001");
        assert_eq!(meta.captured_at_ms, 1_700_000_000_123);
        assert_eq!(meta.seq, 42);
        assert_eq!(meta.zone.as_deref(), Some("kitchen"));
        Ok(())
    }

    #[test]
    fn each_required_header_is_named_when_missing() {
        for name in ["site", "camera", "captured_at", "seq"] {
            let h: Vec<_> = good().into_iter().filter(|(k, _)| k != name).collect();
            let err = parse_meta(None, &h).unwrap_err();
            assert_eq!(err.reason, Reason::MissingHeader);
            assert!(err.detail.contains(name), "{}", err.detail);
        }
    }

    #[test]
    fn bad_numbers_and_empty_values_are_bad_headers() {
        let mut h = good();
        h[2].1 = b"yesterday".to_vec();
        assert_eq!(parse_meta(None, &h).unwrap_err().reason, Reason::BadHeader);
        let mut h = good();
        h[0].1 = b"  ".to_vec();
        assert_eq!(parse_meta(None, &h).unwrap_err().reason, Reason::BadHeader);
        let mut h = good();
        h[1].1 = vec![0xff, 0xfe];
        assert_eq!(parse_meta(None, &h).unwrap_err().reason, Reason::BadHeader);
    }

    #[test]
    fn key_must_match_camera() {
        let err = parse_meta(Some(b"cam-9"), &good()).unwrap_err();
        assert_eq!(err.reason, Reason::BadHeader);
        assert!(err.detail.contains("cam-9"));
    }

    #[test]
    fn a_missing_key_is_refused() {
        let err = parse_meta(None, &good()).unwrap_err();
        assert_eq!(err.reason, Reason::MissingHeader);
        assert!(err.detail.contains("no key"), "{}", err.detail);
    }

    #[test]
    fn seq_must_fit_an_avro_long() {
        let mut h = good();
        h[3].1 = (i64::MAX as u64 + 1).to_string().into_bytes();
        let err = parse_meta(Some(b"cam-0001"), &h).unwrap_err();
        assert_eq!(err.reason, Reason::BadHeader);
        assert!(err.detail.contains("seq"), "{}", err.detail);
        h[3].1 = i64::MAX.to_string().into_bytes();
        assert_eq!(
            parse_meta(Some(b"cam-0001"), &h).unwrap().seq,
            i64::MAX as u64
        );
        h[3].1 = b"-1".to_vec();
        assert_eq!(
            parse_meta(Some(b"cam-0001"), &h).unwrap_err().reason,
            Reason::BadHeader
        );
    }

    #[test]
    fn event_time_is_bounded() {
        let now = 1_800_000_000_000;
        let limits = Limits::default();
        for bad in [
            i64::MIN,
            -1,
            0,
            1_700_000_000,   // seconds, not milliseconds
            now + 3_600_000, // an hour ahead
            i64::MAX,
        ] {
            let err = check_event_time(bad, now, &limits).unwrap_err();
            assert_eq!(err.reason, Reason::BadHeader, "{bad}");
            assert!(err.detail.contains("captured_at"), "{}", err.detail);
        }
        assert!(check_event_time(now + 60_000, now, &limits).is_ok());
        assert!(check_event_time(EVENT_TIME_FLOOR_MS, now, &limits).is_ok());
        let aged = Limits {
            max_age_ms: Some(86_400_000),
            ..limits
        };
        assert!(check_event_time(now - 2 * 86_400_000, now, &aged).is_err());
        assert!(check_event_time(now - 3_600_000, now, &aged).is_ok());
    }

    #[test]
    fn reason_codes_are_distinct() {
        let set: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(set.len(), Reason::ALL.len());
    }
}
