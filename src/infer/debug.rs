//! Annotated debug images (`--debug-camera`): each detection's box and label drawn on the frame.

use opencv::core::{Mat, Rect};
use opencv::prelude::*;

use crate::contract::Observation;
use crate::decode::encode_jpeg;

/// Writes `DIR/<camera>-<seq>.jpg` with each detection's box and label drawn.
pub(crate) fn draw_debug(
    image: &Mat,
    obs: &Observation,
    violating: &[bool],
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use opencv::core::{Point, Scalar};
    use opencv::imgproc;
    let mut img = image.try_clone()?;
    let (w, h) = (img.cols() as f32, img.rows() as f32);
    for (d, &violation) in obs.detections.iter().zip(violating) {
        let colour = if violation {
            Scalar::new(0.0, 0.0, 255.0, 0.0)
        } else {
            Scalar::new(0.0, 200.0, 0.0, 0.0)
        };
        let (x1, y1) = ((d.bbox[0] * w) as i32, (d.bbox[1] * h) as i32);
        let (x2, y2) = ((d.bbox[2] * w) as i32, (d.bbox[3] * h) as i32);
        imgproc::rectangle(
            &mut img,
            Rect::new(x1, y1, x2 - x1, y2 - y1),
            colour,
            2,
            imgproc::LINE_8,
            0,
        )?;
        let best = d.scores.get(&d.label).copied().unwrap_or(0.0);
        let text = format!("{} {:.2} (face {:.2})", d.label, best, d.score);
        imgproc::put_text(
            &mut img,
            &text,
            Point::new(x1, (y1 - 4).max(10)),
            imgproc::FONT_HERSHEY_SIMPLEX,
            0.45,
            colour,
            1,
            imgproc::LINE_AA,
            false,
        )?;
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join(format!("{}-{:06}.jpg", obs.camera, obs.seq));
    std::fs::write(&path, encode_jpeg(&img, 90)?)?;
    Ok(())
}
