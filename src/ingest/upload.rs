//! The pure part of an upload: its query parameters, its content type, the frame it becomes,
//! and the HTTP status of each refusal. No I/O here, so every rule is tested directly.

use crate::contract::frame::check_id;
use crate::contract::{header, Reason, Rejection};

/// Where the frame comes from, from the query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadParams {
    pub site: String,
    pub camera: String,
    pub zone: Option<String>,
    /// Capture time (epoch ms); the receive time when not given.
    pub captured_at_ms: Option<i64>,
}

/// A refusal: HTTP status, a stable code and a sentence for the JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds for `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
}

impl Refusal {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn retry_after(mut self, secs: u64) -> Refusal {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut v = serde_json::json!({"error": self.code, "message": self.message});
        if let Some(s) = self.retry_after {
            v["retry_after_secs"] = s.into();
        }
        v
    }
}

/// The status of a frame the contract refuses: too big is 413, anything else 400.
pub fn refusal_of(r: &Rejection) -> Refusal {
    let status = if r.reason == Reason::Oversize {
        413
    } else {
        400
    };
    Refusal::new(status, r.reason.as_str(), r.detail.clone())
}

/// Parses `site=S&camera=C[&zone=Z][&captured_at=MS]`; unknown or repeated parameters are
/// refused (a typo must not publish a frame without its zone).
pub fn parse_query(query: Option<&str>) -> Result<UploadParams, Refusal> {
    let bad = |m: String| Refusal::new(400, "bad_parameter", m);
    let (mut site, mut camera, mut zone, mut captured) = (None, None, None, None);
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let slot = match k.as_ref() {
            "site" => &mut site,
            "camera" => &mut camera,
            "zone" => &mut zone,
            "captured_at" => &mut captured,
            other => {
                return Err(bad(format!(
                    "unknown query parameter `{other}` (expected site, camera, zone, captured_at)"
                )))
            }
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(bad(format!("query parameter `{k}` given twice")));
        }
    }
    let required = |v: Option<String>, name: &str| {
        v.ok_or_else(|| {
            Refusal::new(
                400,
                "missing_parameter",
                format!("query parameter `{name}` is required"),
            )
        })
    };
    let site = required(site, "site")?;
    let camera = required(camera, "camera")?;
    for (name, value) in [
        ("site", Some(&site)),
        ("camera", Some(&camera)),
        ("zone", zone.as_ref()),
    ] {
        if let Some(v) = value {
            check_id(name, v).map_err(|r| Refusal::new(400, r.reason.as_str(), r.detail))?;
        }
    }
    let captured_at_ms = captured
        .map(|c| {
            c.trim().parse::<i64>().map_err(|_| {
                bad(format!(
                    "`captured_at` must be milliseconds since the Unix epoch, got {c:?}"
                ))
            })
        })
        .transpose()?;
    Ok(UploadParams {
        site,
        camera,
        zone,
        captured_at_ms,
    })
}

/// How the body carries the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyKind {
    /// The JPEG bytes themselves (`image/jpeg`, `application/octet-stream`, or no type).
    Raw,
    /// `multipart/form-data` with this boundary; the image is the `file` part.
    Multipart(String),
}

/// Classifies a `Content-Type`; anything but a JPEG or a form is 415.
pub fn body_kind(content_type: Option<&str>) -> Result<BodyKind, Refusal> {
    let Some(ct) = content_type else {
        return Ok(BodyKind::Raw);
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "image/jpeg" | "image/jpg" | "image/pjpeg" | "application/octet-stream" | "" => {
            Ok(BodyKind::Raw)
        }
        "multipart/form-data" => multer::parse_boundary(ct)
            .map(BodyKind::Multipart)
            .map_err(|e| {
                Refusal::new(
                    400,
                    "bad_multipart",
                    format!("multipart/form-data without a usable boundary: {e}"),
                )
            }),
        other => Err(unsupported(other)),
    }
}

/// 415 for a type vigil does not take, saying what it does take.
pub fn unsupported(what: &str) -> Refusal {
    Refusal::new(
        415,
        "unsupported_media_type",
        format!(
            "{what} is not accepted: send the JPEG itself (Content-Type: image/jpeg) or a \
             multipart/form-data upload whose `file` part is a JPEG; convert PNG or HEIC photos \
             to JPEG first"
        ),
    )
}

/// PNG by its signature: phones send screenshots; refused with 415, not converted (a
/// conversion would make evidence that is not what the camera took).
pub fn is_png(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x89PNG\r\n\x1a\n")
}

/// The record headers of the frame (the frame contract's names), and its key (the camera).
pub fn frame_headers(p: &UploadParams, captured_at_ms: i64, seq: u64) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        (header::SITE.to_string(), p.site.clone().into_bytes()),
        (header::CAMERA.to_string(), p.camera.clone().into_bytes()),
        (
            header::CAPTURED_AT.to_string(),
            captured_at_ms.to_string().into_bytes(),
        ),
        (header::SEQ.to_string(), seq.to_string().into_bytes()),
    ];
    if let Some(z) = &p.zone {
        h.push((header::ZONE.to_string(), z.clone().into_bytes()));
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters() {
        let p = parse_query(Some(
            "site=site-1&camera=cam%201&zone=kitchen&captured_at=1776600000000",
        ))
        .unwrap();
        assert_eq!(
            p,
            UploadParams {
                site: "site-1".into(),
                camera: "cam 1".into(),
                zone: Some("kitchen".into()),
                captured_at_ms: Some(1_776_600_000_000),
            }
        );
        let p = parse_query(Some("camera=c&site=s")).unwrap();
        assert_eq!((p.zone, p.captured_at_ms), (None, None));
        let e = parse_query(Some("site=s")).unwrap_err();
        assert_eq!((e.status, e.code), (400, "missing_parameter"));
        assert!(e.message.contains("camera"));
        let e = parse_query(Some("site=s&camera=c&camra=x")).unwrap_err();
        assert!(e.message.contains("camra"));
        assert!(parse_query(Some("site=s&camera=c&camera=d"))
            .unwrap_err()
            .message
            .contains("twice"));
        assert!(parse_query(Some("site=s&camera=c&captured_at=soon")).is_err());
        let e = parse_query(Some("site=s&camera=a%0Ab")).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("camera"), "{}", e.message);
        let long = "x".repeat(200);
        assert!(parse_query(Some(&format!("site=s&camera={long}"))).is_err());
        assert!(parse_query(None).is_err());
    }

    #[test]
    fn content_types() {
        assert_eq!(body_kind(None).unwrap(), BodyKind::Raw);
        assert_eq!(body_kind(Some("image/jpeg")).unwrap(), BodyKind::Raw);
        assert_eq!(body_kind(Some("Image/JPEG; q=1")).unwrap(), BodyKind::Raw);
        assert_eq!(
            body_kind(Some("multipart/form-data; boundary=abc")).unwrap(),
            BodyKind::Multipart("abc".into())
        );
        assert_eq!(
            body_kind(Some("multipart/form-data")).unwrap_err().status,
            400
        );
        assert_eq!(body_kind(Some("image/png")).unwrap_err().status, 415);
        assert_eq!(
            body_kind(Some("application/x-www-form-urlencoded"))
                .unwrap_err()
                .status,
            415
        );
        assert!(is_png(b"\x89PNG\r\n\x1a\n...."));
    }

    #[test]
    fn refusals_map_to_statuses() {
        let r = refusal_of(&Rejection::new(Reason::Oversize, "too big"));
        assert_eq!((r.status, r.code), (413, "oversize"));
        let r = refusal_of(&Rejection::new(Reason::NotJpeg, "no SOI"));
        assert_eq!((r.status, r.code), (400, "not_jpeg"));
        let r = Refusal::new(429, "rate_limited", "slow down").retry_after(0);
        assert_eq!(r.body()["retry_after_secs"], 1);
    }

    #[test]
    fn frames_follow_the_contract() {
        let p = parse_query(Some("site=s&camera=c&zone=prep")).unwrap();
        let h = frame_headers(&p, 1_776_600_000_000, 7);
        let meta = crate::contract::parse_meta(Some(b"c"), &h).unwrap();
        assert_eq!(
            (
                meta.site.as_str(),
                meta.camera.as_str(),
                meta.seq,
                meta.zone.as_deref()
            ),
            ("s", "c", 7, Some("prep"))
        );
    }
}
