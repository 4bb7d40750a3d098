//! Reads a JPEG's structure without decoding it: the claimed dimensions (to refuse
//! decompression bombs before OpenCV allocates for them) and whether the stream is complete.
//!
//! libjpeg "decodes" a truncated file by padding it with grey and only warns, so truncation has
//! to be caught here, from the markers.

use super::reject::{Reason, Rejection};

/// What the JPEG header says about the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegInfo {
    /// Width in pixels claimed by the start-of-frame marker.
    pub width: u32,
    /// Height in pixels claimed by the start-of-frame marker.
    pub height: u32,
    /// Colour components (1 = grey, 3 = YCbCr, 4 = CMYK).
    pub components: u8,
}

/// How far from the end the end-of-image marker may sit (some encoders pad the file).
const EOI_SLACK: usize = 64;

/// Walks the markers up to the start of scan, returns the SOF dimensions and checks that the
/// stream ends with an end-of-image marker.
pub fn sniff(data: &[u8]) -> Result<JpegInfo, Rejection> {
    if data.len() < 4 || data[0] != 0xFF || data[1] != 0xD8 || data[2] != 0xFF {
        return Err(Rejection::new(
            Reason::NotJpeg,
            format!(
                "value does not start with a JPEG start-of-image marker (first bytes {:02x?})",
                &data[..data.len().min(4)]
            ),
        ));
    }
    let truncated = |what: &str| Rejection::new(Reason::Truncated, format!("JPEG ends {what}"));
    let mut pos = 2;
    let mut info: Option<JpegInfo> = None;
    loop {
        // Markers may be preceded by any number of 0xFF fill bytes.
        while pos < data.len() && data[pos] == 0xFF {
            pos += 1;
        }
        if pos >= data.len() {
            return Err(truncated("inside its header"));
        }
        let marker = data[pos];
        pos += 1;
        match marker {
            // Standalone markers: no length.
            0x01 | 0xD0..=0xD7 => continue,
            0xD9 => return Err(truncated("before any image data")),
            _ => {}
        }
        if pos + 2 > data.len() {
            return Err(truncated("inside a marker length"));
        }
        let len = u16::from_be_bytes([data[pos], data[pos + 1]]) as usize;
        if len < 2 {
            return Err(Rejection::new(
                Reason::NotJpeg,
                format!("JPEG marker 0x{marker:02x} has an impossible length {len}"),
            ));
        }
        if pos + len > data.len() {
            return Err(truncated("inside a marker segment"));
        }
        let segment = &data[pos + 2..pos + len];
        // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC).
        if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
            if segment.len() < 6 {
                return Err(Rejection::new(
                    Reason::NotJpeg,
                    "JPEG start-of-frame segment is too short",
                ));
            }
            let height = u16::from_be_bytes([segment[1], segment[2]]) as u32;
            let width = u16::from_be_bytes([segment[3], segment[4]]) as u32;
            if width == 0 || height == 0 {
                return Err(Rejection::new(
                    Reason::NotJpeg,
                    format!("JPEG header claims a {width}x{height} image"),
                ));
            }
            info = Some(JpegInfo {
                width,
                height,
                components: segment[5],
            });
        }
        pos += len;
        if marker == 0xDA {
            break;
        }
    }
    let info = info.ok_or_else(|| {
        Rejection::new(
            Reason::NotJpeg,
            "JPEG has no start-of-frame marker before its scan",
        )
    })?;
    let tail_start = data.len().saturating_sub(EOI_SLACK).max(pos);
    let has_eoi = data[tail_start..].windows(2).any(|w| w == [0xFF, 0xD9]);
    if !has_eoi {
        return Err(truncated("without an end-of-image marker (file cut short)"));
    }
    Ok(info)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest structure `sniff` accepts: SOI, SOF0, SOS, one byte of scan, EOI.
    /// Not decodable; enough to test the header logic.
    pub(crate) fn minimal_jpeg(width: u16, height: u16) -> Vec<u8> {
        let mut v = vec![0xFF, 0xD8];
        v.extend_from_slice(&[0xFF, 0xC0, 0x00, 0x11, 0x08]);
        v.extend_from_slice(&height.to_be_bytes());
        v.extend_from_slice(&width.to_be_bytes());
        v.extend_from_slice(&[0x03, 1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        v.extend_from_slice(&[
            0xFF, 0xDA, 0x00, 0x0C, 0x03, 1, 0, 2, 0x11, 3, 0x11, 0, 0x3F, 0,
        ]);
        v.extend_from_slice(&[0x12, 0x34]);
        v.extend_from_slice(&[0xFF, 0xD9]);
        v
    }

    #[test]
    fn reads_dimensions() {
        let info = sniff(&minimal_jpeg(1280, 720)).unwrap();
        assert_eq!((info.width, info.height, info.components), (1280, 720, 3));
    }

    #[test]
    fn refuses_non_jpeg() {
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n....").unwrap_err().reason,
            Reason::NotJpeg
        );
        assert_eq!(sniff(b"").unwrap_err().reason, Reason::NotJpeg);
    }

    #[test]
    fn every_cut_is_truncated_or_not_jpeg() {
        let full = minimal_jpeg(64, 48);
        for cut in 4..full.len() - 1 {
            let err = sniff(&full[..cut]).unwrap_err();
            assert!(
                matches!(err.reason, Reason::Truncated | Reason::NotJpeg),
                "cut at {cut}: {err:?}"
            );
        }
    }

    #[test]
    fn zero_dimensions_are_refused() {
        assert_eq!(
            sniff(&minimal_jpeg(0, 10)).unwrap_err().reason,
            Reason::NotJpeg
        );
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = sniff(&data);
        }

        #[test]
        fn never_panics_on_mutated_jpegs(pos in 0usize..40, byte in proptest::num::u8::ANY) {
            let mut j = minimal_jpeg(320, 240);
            let p = pos % j.len();
            j[p] = byte;
            let _ = sniff(&j);
        }
    }
}
