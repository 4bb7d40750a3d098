//! JPEG decoding and tensor preprocessing with OpenCV. Blocking: call from a blocking thread,
//! never from the async runtime.

use opencv::core::{Mat, Size};
use opencv::prelude::*;
use opencv::{imgcodecs, imgproc};

use super::spec::{ChannelOrder, InputSpec, Layout, Resize};
use crate::contract::{Reason, Rejection};

/// Where a letterboxed image sits inside the model input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Letterbox {
    /// Size of the resized image inside the input.
    pub width: u32,
    pub height: u32,
    /// Offset of its top-left corner.
    pub x: u32,
    pub y: u32,
    /// Input size.
    pub input_width: u32,
    pub input_height: u32,
}

impl Letterbox {
    /// The placement of a `w`×`h` image fitted, aspect kept and centred, into `in_w`×`in_h`.
    pub fn fit(w: u32, h: u32, in_w: u32, in_h: u32) -> Letterbox {
        let s = (in_w as f64 / w.max(1) as f64).min(in_h as f64 / h.max(1) as f64);
        let width = ((w as f64 * s).round() as u32).clamp(1, in_w);
        let height = ((h as f64 * s).round() as u32).clamp(1, in_h);
        Letterbox {
            width,
            height,
            x: (in_w - width) / 2,
            y: (in_h - height) / 2,
            input_width: in_w,
            input_height: in_h,
        }
    }

    /// Maps a box normalised to the input back to one normalised to the original image.
    pub fn to_image(&self, b: [f32; 4]) -> [f32; 4] {
        let fx = |v: f32| {
            ((v * self.input_width as f32 - self.x as f32) / self.width as f32).clamp(0.0, 1.0)
        };
        let fy = |v: f32| {
            ((v * self.input_height as f32 - self.y as f32) / self.height as f32).clamp(0.0, 1.0)
        };
        [fx(b[0]), fy(b[1]), fx(b[2]), fy(b[3])]
    }
}

/// The largest libjpeg scale-down factor (1, 2, 4 or 8) that still leaves the image at least
/// `need_w` × `need_h`. Decoding at 1/2 or 1/4 costs markedly less than a full decode followed
/// by a resize, and the model never sees the lost detail.
pub fn reduction_factor(width: u32, height: u32, need_w: u32, need_h: u32) -> u32 {
    [8, 4, 2]
        .into_iter()
        .find(|f| width / f >= need_w && height / f >= need_h)
        .unwrap_or(1)
}

/// Decodes JPEG bytes to a BGR image, scaled down by `factor` (1, 2, 4 or 8).
pub fn decode(bytes: &[u8], factor: u32) -> Result<Mat, Rejection> {
    let flags = match factor {
        8 => imgcodecs::IMREAD_REDUCED_COLOR_8,
        4 => imgcodecs::IMREAD_REDUCED_COLOR_4,
        2 => imgcodecs::IMREAD_REDUCED_COLOR_2,
        _ => imgcodecs::IMREAD_COLOR,
    };
    let failed = |detail: String| Rejection::new(Reason::DecodeFailed, detail);
    let buf = Mat::from_slice(bytes).map_err(|e| failed(format!("opencv: {e}")))?;
    let img = imgcodecs::imdecode(&buf, flags).map_err(|e| failed(format!("opencv: {e}")))?;
    if img.empty() {
        return Err(failed("opencv could not decode the JPEG data".into()));
    }
    Ok(img)
}

/// Resizes a BGR image to the model's input size and writes it, normalised and in the model's
/// layout and channel order, into `out` (cleared first). `scratch` holds the resized image
/// between calls so that steady state allocates nothing.
pub fn preprocess(
    img: &Mat,
    spec: &InputSpec,
    scratch: &mut Mat,
    out: &mut Vec<f32>,
) -> opencv::Result<()> {
    let (w, h) = (spec.width as usize, spec.height as usize);
    let fit = match spec.resize {
        Resize::Stretch => Letterbox::fit(w as u32, h as u32, w as u32, h as u32),
        Resize::Letterbox => {
            Letterbox::fit(img.cols() as u32, img.rows() as u32, w as u32, h as u32)
        }
    };
    let resized: &Mat = if img.cols() as u32 == fit.width && img.rows() as u32 == fit.height {
        img
    } else {
        imgproc::resize(
            img,
            scratch,
            Size::new(fit.width as i32, fit.height as i32),
            0.0,
            0.0,
            imgproc::INTER_LINEAR,
        )?;
        scratch
    };
    let continuous;
    let data: &[u8] = if resized.is_continuous() {
        resized.data_bytes()?
    } else {
        continuous = resized.try_clone()?;
        continuous.data_bytes()?
    };
    // Source channel for each model channel: OpenCV images are BGR.
    let src = match spec.channels {
        ChannelOrder::RGB => [2, 1, 0],
        ChannelOrder::BGR => [0, 1, 2],
    };
    let scale = [1.0 / spec.std[0], 1.0 / spec.std[1], 1.0 / spec.std[2]];
    let plane = w * h;
    let (rw, rh) = (fit.width as usize, fit.height as usize);
    let (x0, y0) = (fit.x as usize, fit.y as usize);
    // Padding is black (pixel value 0) after normalisation; the image rows overwrite the rest.
    let pad = |c: usize| -spec.mean[c] * scale[c];
    let ([s0, s1, s2], [m0, m1, m2], [k0, k1, k2]) = (src, spec.mean, scale);
    out.clear();
    out.reserve_exact(3 * plane);
    // Row by row, with the layout decided once: this loop runs over every pixel of every frame.
    match spec.layout {
        Layout::NCHW => {
            for c in 0..3 {
                out.extend(std::iter::repeat_n(pad(c), plane));
            }
            // One pass over each row, writing the three planes together.
            let (p0, rest) = out.split_at_mut(plane);
            let (p1, p2) = rest.split_at_mut(plane);
            for (y, row) in data.chunks_exact(rw * 3).take(rh).enumerate() {
                let at = (y0 + y) * w + x0;
                let dst = p0[at..at + rw]
                    .iter_mut()
                    .zip(&mut p1[at..at + rw])
                    .zip(&mut p2[at..at + rw]);
                for (((d0, d1), d2), px) in dst.zip(row.chunks_exact(3)) {
                    *d0 = (px[s0] as f32 - m0) * k0;
                    *d1 = (px[s1] as f32 - m1) * k1;
                    *d2 = (px[s2] as f32 - m2) * k2;
                }
            }
        }
        Layout::NHWC => {
            let fill = [pad(0), pad(1), pad(2)];
            for _ in 0..plane {
                out.extend_from_slice(&fill);
            }
            for (y, row) in data.chunks_exact(rw * 3).take(rh).enumerate() {
                let at = ((y0 + y) * w + x0) * 3;
                for (d, px) in out[at..at + rw * 3]
                    .chunks_exact_mut(3)
                    .zip(row.chunks_exact(3))
                {
                    d[0] = (px[s0] as f32 - m0) * k0;
                    d[1] = (px[s1] as f32 - m1) * k1;
                    d[2] = (px[s2] as f32 - m2) * k2;
                }
            }
        }
    }
    Ok(())
}

/// Encodes a BGR image as JPEG at `quality` (1–100).
pub fn encode_jpeg(img: &Mat, quality: i32) -> opencv::Result<Vec<u8>> {
    let mut buf = opencv::core::Vector::<u8>::new();
    let params =
        opencv::core::Vector::<i32>::from_slice(&[imgcodecs::IMWRITE_JPEG_QUALITY, quality]);
    imgcodecs::imencode(".jpg", img, &mut buf, &params)?;
    Ok(buf.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduction_keeps_the_model_input_covered() {
        assert_eq!(reduction_factor(1280, 720, 224, 224), 2);
        assert_eq!(reduction_factor(1920, 1080, 224, 224), 4);
        assert_eq!(reduction_factor(3840, 2160, 224, 224), 8);
        assert_eq!(reduction_factor(300, 300, 224, 224), 1);
        assert_eq!(reduction_factor(100, 100, 224, 224), 1);
        for (w, h) in [(640, 480), (1280, 720), (4000, 3000), (225, 900)] {
            let f = reduction_factor(w, h, 224, 224);
            assert!(f == 1 || (w / f >= 224 && h / f >= 224));
        }
    }

    fn spec(layout: Layout, channels: ChannelOrder) -> InputSpec {
        InputSpec {
            name: "x".into(),
            width: 2,
            height: 1,
            layout,
            channels,
            mean: [0.0, 0.0, 0.0],
            std: [1.0, 1.0, 1.0],
            resize: Resize::Stretch,
        }
    }

    #[test]
    fn letterbox_centres_and_maps_back() -> opencv::Result<()> {
        let lb = Letterbox::fit(200, 100, 10, 10);
        assert_eq!((lb.width, lb.height, lb.x, lb.y), (10, 5, 0, 2));
        let b = lb.to_image([0.0, 0.2, 1.0, 0.7]);
        assert!(
            (b[0] - 0.0).abs() < 1e-6 && (b[1] - 0.0).abs() < 1e-6 && (b[3] - 1.0).abs() < 1e-6
        );
        // A 2x1 image into a 2x2 NCHW input: one row of padding (black), one of pixels.
        let img =
            Mat::from_bytes::<opencv::core::Vec3b>(&[10u8, 20, 30, 40, 50, 60])?.try_clone()?;
        let mut s = spec(Layout::NCHW, ChannelOrder::BGR);
        s.height = 2;
        s.mean = [1.0, 1.0, 1.0];
        s.resize = Resize::Letterbox;
        let mut out = Vec::new();
        preprocess(&img, &s, &mut Mat::default(), &mut out)?;
        assert_eq!(&out[0..4], &[9.0, 39.0, -1.0, -1.0]);
        Ok(())
    }

    /// The per-pixel definition the row loops must match: every model pixel is the
    /// normalised image pixel under it, or normalised black where the letterbox pads.
    fn naive(data: &[u8], rw: usize, fit: Letterbox, s: &InputSpec) -> Vec<f32> {
        let (w, h) = (s.width as usize, s.height as usize);
        let src = match s.channels {
            ChannelOrder::RGB => [2, 1, 0],
            ChannelOrder::BGR => [0, 1, 2],
        };
        let mut out = vec![0.0; 3 * w * h];
        for y in 0..h {
            for x in 0..w {
                let (ix, iy) = (x as i64 - fit.x as i64, y as i64 - fit.y as i64);
                let inside = ix >= 0 && iy >= 0 && ix < rw as i64 && iy < fit.height as i64;
                for c in 0..3 {
                    let p = if inside {
                        data[(iy as usize * rw + ix as usize) * 3 + src[c]] as f32
                    } else {
                        0.0
                    };
                    let v = (p - s.mean[c]) / s.std[c];
                    match s.layout {
                        Layout::NCHW => out[c * w * h + y * w + x] = v,
                        Layout::NHWC => out[(y * w + x) * 3 + c] = v,
                    }
                }
            }
        }
        out
    }

    #[test]
    fn row_loops_match_the_per_pixel_definition() -> opencv::Result<()> {
        // A 4x2 image (no resize needed into a 4-wide input) letterboxed into 4x5, and
        // stretched into 4x2, in both layouts and channel orders.
        let data: Vec<u8> = (0..24u8).map(|v| v * 7 + 3).collect();
        let img = Mat::from_bytes::<opencv::core::Vec3b>(&data)?
            .reshape(0, 2)?
            .try_clone()?;
        for layout in [Layout::NCHW, Layout::NHWC] {
            for channels in [ChannelOrder::RGB, ChannelOrder::BGR] {
                for (height, resize) in [(5, Resize::Letterbox), (2, Resize::Stretch)] {
                    let mut s = spec(layout, channels);
                    (s.width, s.height, s.resize) = (4, height, resize);
                    (s.mean, s.std) = ([1.0, 2.0, 3.0], [2.0, 4.0, 0.5]);
                    let fit = Letterbox::fit(4, 2, 4, height);
                    let mut out = vec![9.0; 3];
                    preprocess(&img, &s, &mut Mat::default(), &mut out)?;
                    assert_eq!(
                        out,
                        naive(&data, 4, fit, &s),
                        "{layout:?} {channels:?} {resize:?}"
                    );
                }
            }
        }
        Ok(())
    }

    #[test]
    fn layout_and_channel_order_are_honoured() -> opencv::Result<()> {
        // Two BGR pixels: (1,2,3) and (4,5,6).
        let img = Mat::from_bytes::<opencv::core::Vec3b>(&[1u8, 2, 3, 4, 5, 6])?.try_clone()?;
        let mut scratch = Mat::default();
        let mut out = Vec::new();
        preprocess(
            &img,
            &spec(Layout::NCHW, ChannelOrder::RGB),
            &mut scratch,
            &mut out,
        )?;
        assert_eq!(out, vec![3.0, 6.0, 2.0, 5.0, 1.0, 4.0]);
        preprocess(
            &img,
            &spec(Layout::NHWC, ChannelOrder::BGR),
            &mut scratch,
            &mut out,
        )?;
        assert_eq!(out, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        Ok(())
    }

    #[test]
    fn garbage_is_a_decode_failure() {
        let mut junk = vec![0xFF, 0xD8, 0xFF, 0xE0];
        junk.extend(std::iter::repeat_n(0x55, 200));
        assert_eq!(decode(&junk, 1).unwrap_err().reason, Reason::DecodeFailed);
    }
}
