//! The evidence picture: the frame as decoded, every face pixelated, the violating detections
//! outlined and labelled with the rule and score. Blocking (OpenCV): run it off the runtime.
//!
//! **Faces.** The whole face box is pixelated into a coarse mosaic (about [`MOSAIC_CELLS`]
//! cells across), not only the eyes: a face detector still finds faces whose eyes alone are
//! blurred (it is trained on masked faces, whose lower half is hidden), so only the whole box
//! keeps a face from being found, and recognised. A mosaic that coarse keeps the colours of
//! the lower face, so a surgical or cloth mask (a large, even patch of one colour) stays
//! visible, and the label above each box says what the classifier saw.

use opencv::core::{Mat, Point, Rect, Scalar, Size};
use opencv::imgproc;
use opencv::prelude::*;

use crate::contract::observation::DetectionResult;

/// Mosaic cells across a face box.
pub const MOSAIC_CELLS: i32 = 6;

/// Whether faces are hidden (`--evidence-faces`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Faces {
    /// Pixelate every face (the default).
    Blur,
    /// Leave faces as they are (for sites whose policy allows it).
    Clear,
}

/// One box to draw.
#[derive(Debug, Clone)]
pub struct Mark {
    /// `[x1, y1, x2, y2]`, normalised.
    pub bbox: [f32; 4],
    /// A face (hidden unless faces are clear).
    pub face: bool,
    /// Outlined in red with `label`, when it is the violation.
    pub violation: bool,
    pub label: String,
}

/// The marks of one rule's event in a frame's detections: faces from face detectors, and the
/// rule's violating detections.
pub fn marks(
    detections: &[DetectionResult],
    rule: &str,
    violation_labels: &[String],
    is_face_detector: impl Fn(&str) -> bool,
) -> Vec<Mark> {
    detections
        .iter()
        .map(|d| {
            let violation = d.rule == rule && violation_labels.contains(&d.label);
            let score = d.scores.get(&d.label).copied().unwrap_or(0.0);
            Mark {
                bbox: d.bbox,
                face: is_face_detector(&d.detector),
                violation,
                label: format!("{rule}: {} {score:.2}", d.label),
            }
        })
        .collect()
}

fn pixel_rect(b: [f32; 4], w: i32, h: i32) -> Option<Rect> {
    let x1 = ((b[0].clamp(0.0, 1.0)) * w as f32).floor() as i32;
    let y1 = ((b[1].clamp(0.0, 1.0)) * h as f32).floor() as i32;
    let x2 = ((b[2].clamp(0.0, 1.0)) * w as f32).ceil() as i32;
    let y2 = ((b[3].clamp(0.0, 1.0)) * h as f32).ceil() as i32;
    (x2 - x1 >= 2 && y2 - y1 >= 2).then(|| Rect::new(x1, y1, x2 - x1, y2 - y1))
}

/// Replaces `r` of `img` by a mosaic of [`MOSAIC_CELLS`] cells across.
fn pixelate(img: &mut Mat, r: Rect) -> opencv::Result<()> {
    let roi = Mat::roi(img, r)?.try_clone()?;
    let cells_x = MOSAIC_CELLS.min(r.width).max(1);
    let cells_y = ((MOSAIC_CELLS * r.height) / r.width.max(1)).clamp(1, r.height);
    let mut small = Mat::default();
    imgproc::resize(
        &roi,
        &mut small,
        Size::new(cells_x, cells_y),
        0.0,
        0.0,
        imgproc::INTER_AREA,
    )?;
    let mut big = Mat::default();
    imgproc::resize(
        &small,
        &mut big,
        Size::new(r.width, r.height),
        0.0,
        0.0,
        imgproc::INTER_NEAREST,
    )?;
    let mut target = Mat::roi_mut(img, r)?;
    big.copy_to(&mut target)?;
    Ok(())
}

/// Draws the evidence picture on a copy of `image` and encodes it as JPEG.
pub fn render(image: &Mat, marks: &[Mark], faces: Faces) -> opencv::Result<Vec<u8>> {
    let mut img = image.try_clone()?;
    let (w, h) = (img.cols(), img.rows());
    // Faces hidden first, so that no outline or text is pixelated.
    if faces == Faces::Blur {
        for m in marks.iter().filter(|m| m.face) {
            if let Some(r) = pixel_rect(m.bbox, w, h) {
                pixelate(&mut img, r)?;
            }
        }
    }
    let red = Scalar::new(0.0, 0.0, 255.0, 0.0);
    let thickness = (w.max(h) / 400).max(2);
    let scale = (w.max(h) as f64 / 1400.0).max(0.5);
    for m in marks.iter().filter(|m| m.violation) {
        let Some(r) = pixel_rect(m.bbox, w, h) else {
            continue;
        };
        imgproc::rectangle(&mut img, r, red, thickness, imgproc::LINE_8, 0)?;
        let mut baseline = 0;
        let text = imgproc::get_text_size(
            &m.label,
            imgproc::FONT_HERSHEY_SIMPLEX,
            scale,
            1,
            &mut baseline,
        )?;
        // The label stays inside the picture.
        let x = r.x.min(w - text.width - 4).max(0);
        let y = if r.y - text.height - 6 >= 0 {
            r.y - 4
        } else {
            (r.y + r.height + text.height + 4).min(h - 2)
        };
        imgproc::rectangle(
            &mut img,
            Rect::new(x, y - text.height - 2, text.width + 4, text.height + 6),
            red,
            -1,
            imgproc::LINE_8,
            0,
        )?;
        imgproc::put_text(
            &mut img,
            &m.label,
            Point::new(x + 2, y),
            imgproc::FONT_HERSHEY_SIMPLEX,
            scale,
            Scalar::new(255.0, 255.0, 255.0, 0.0),
            1,
            imgproc::LINE_AA,
            false,
        )?;
    }
    crate::decode::encode_jpeg(&img, 85)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opencv::core::CV_8UC3;

    fn checkerboard() -> Mat {
        let mut img = Mat::new_rows_cols_with_default(200, 300, CV_8UC3, Scalar::all(0.0)).unwrap();
        for y in 0..200 {
            for x in 0..300 {
                if (x / 5 + y / 5) % 2 == 0 {
                    *img.at_2d_mut::<opencv::core::Vec3b>(y, x).unwrap() =
                        opencv::core::Vec3b::from([255, 255, 255]);
                }
            }
        }
        img
    }

    fn variance(img: &Mat, r: Rect) -> f64 {
        let roi = Mat::roi(img, r).unwrap();
        let mut mean = Mat::default();
        let mut std = Mat::default();
        opencv::core::mean_std_dev(&roi, &mut mean, &mut std, &opencv::core::no_array()).unwrap();
        *std.at::<f64>(0).unwrap()
    }

    #[test]
    fn faces_are_pixelated_and_violations_outlined() {
        let img = checkerboard();
        let face = Mark {
            bbox: [0.1, 0.1, 0.5, 0.7],
            face: true,
            violation: true,
            label: "mask_required: no_mask 0.97".into(),
        };
        let jpeg = render(&img, std::slice::from_ref(&face), Faces::Blur).unwrap();
        let out = crate::decode::image::decode(&jpeg, 1).unwrap();
        assert_eq!((out.cols(), out.rows()), (300, 200));
        // Inside the face box (away from the outline) the fine pattern is gone…
        let inner = Rect::new(50, 40, 50, 60);
        let before = variance(&img, inner);
        let after_cells = {
            // A mosaic cell is uniform: the variance inside one is near zero.
            variance(&out, Rect::new(42, 32, 8, 8))
        };
        assert!(
            before > 100.0 && after_cells < 25.0,
            "{before} {after_cells}"
        );
        // …outside it the picture is untouched.
        assert!(variance(&out, Rect::new(200, 20, 60, 60)) > 100.0);
        // With faces clear, the face keeps its detail.
        let jpeg = render(&img, &[face], Faces::Clear).unwrap();
        let clear = crate::decode::image::decode(&jpeg, 1).unwrap();
        assert!(variance(&clear, Rect::new(42, 32, 8, 8)) > 100.0);
    }

    #[test]
    fn marks_pick_the_rules_violations_and_the_faces() {
        let d = |rule: &str, detector: &str, label: &str| DetectionResult {
            rule: rule.into(),
            detector: detector.into(),
            score: 0.9,
            bbox: [0.1, 0.1, 0.2, 0.2],
            classifier: "mask".into(),
            label: label.into(),
            scores: [(label.to_string(), 0.8f32)].into_iter().collect(),
        };
        let m = marks(
            &[
                d("mask_required", "face-blazeface", "no_mask"),
                d("mask_required", "face-blazeface", "mask"),
                d("gloves", "palm", "bare_hand"),
            ],
            "mask_required",
            &["no_mask".to_string(), "mask_incorrect".to_string()],
            |det| det.starts_with("face"),
        );
        assert_eq!(
            m.iter().map(|m| (m.face, m.violation)).collect::<Vec<_>>(),
            vec![(true, true), (true, false), (false, false)]
        );
        assert_eq!(m[0].label, "mask_required: no_mask 0.80");
    }
}
