//! Golden outputs: Rust decoding and preprocessing fed through `ort` give the same scores as the
//! Python reference (OpenCV-Python + onnxruntime, written by models/build_mask_classifier.py).

mod common;

use anyhow::{ensure, Context};
use common::*;
use vigil::infer::model::{Device, ExecutionConfig, Model};

fn mask_model() -> Result<Model> {
    let (env, _) = vigil::infer::runtime::init(None)?;
    let exec = ExecutionConfig {
        device: Device::Cpu,
        intra_threads: 1,
        spinning: false,
    };
    Ok(Model::load_named(
        env,
        &repo().join("models"),
        "mask",
        exec,
    )?)
}

#[test]
fn rust_preprocessing_and_ort_match_the_python_reference() -> Result {
    let mut m = mask_model()?;
    let reference = std::fs::read_to_string(repo().join("tests/data/mask_reference.tsv"))?;
    let mut checked = 0;
    let mut worst = 0f32;
    for line in reference.lines().filter(|l| !l.starts_with('#')) {
        let cols: Vec<&str> = line.split('\t').collect();
        let (name, want) = (cols[0], [cols[1].parse::<f32>()?, cols[2].parse::<f32>()?]);
        let bytes = face(name);
        let img = opencv::imgcodecs::imdecode(
            &opencv::core::Mat::from_slice(&bytes)?,
            opencv::imgcodecs::IMREAD_COLOR,
        )?;
        let mut scratch = opencv::core::Mat::default();
        let mut tensor = Vec::new();
        vigil::decode::preprocess(&img, &m.manifest.input, &mut scratch, &mut tensor)?;
        let got = m.classify(&[&tensor]).with_context(|| name.to_string())?;
        for (g, w) in got[0].iter().zip(want) {
            worst = worst.max((g - w).abs());
        }
        checked += 1;
    }
    ensure!(checked == 8, "all reference photos checked");
    // Different libjpeg builds (Debian's vs the wheel's) may round a few pixels differently.
    ensure!(worst < 0.02, "max score difference {worst}");
    Ok(())
}

#[test]
fn a_batch_gives_the_same_scores_as_single_runs() -> Result {
    let mut m = mask_model()?;
    let mut tensors = Vec::new();
    for name in ["grace_hopper.jpg", "sample1.jpg", "sample3.jpg"] {
        let img = vigil::decode::decode(&face(name), 2).map_err(|r| anyhow::anyhow!("{r:?}"))?;
        let mut t = Vec::new();
        vigil::decode::preprocess(
            &img,
            &m.manifest.input,
            &mut opencv::core::Mat::default(),
            &mut t,
        )?;
        tensors.push(t);
    }
    let refs: Vec<&[f32]> = tensors.iter().map(Vec::as_slice).collect();
    let batch = m.classify(&refs)?;
    for (i, t) in tensors.iter().enumerate() {
        let single = m.classify(&[t])?;
        for (a, b) in single[0].iter().zip(&batch[i]) {
            ensure!((a - b).abs() < 1e-4, "item {i}: batch {b} vs single {a}");
        }
    }
    Ok(())
}

/// The Python tools' geometry (models/geometry.py: training crops, evaluation, the reference
/// worker) against the worker's own, on thousands of seeded cases, including the half-pixel
/// ties where Python's round() and Rust's differ: every answer identical.
#[test]
fn the_python_tools_cut_and_fit_boxes_exactly_as_the_worker() -> Result {
    use vigil::decode::{reduction_factor, Letterbox};
    use vigil::infer::cascade::{closeup_canvas, crop_rect};
    // A small seeded generator (xorshift): the same cases every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut cases = Vec::new();
    for i in 0..3000u64 {
        // Sizes from 1 px to 4K; one case in five a tie, where the fitted size is an exact
        // half (an odd width at half scale), which Python's round() takes to the even side.
        let sizes = [(640, 384), (224, 224), (192, 192), (300, 300), (320, 240)];
        let (w, h, (in_w, in_h)) = match i % 10 {
            0 => (1 + 2 * (next() % 640) as u32, 768, sizes[0]),
            1 => (1 + 2 * (next() % 224) as u32, 448, sizes[1]),
            _ => (
                1 + (next() % 3840) as u32,
                1 + (next() % 2160) as u32,
                sizes[(next() % 5) as usize],
            ),
        };
        let f = |v: u64| (v % 10_001) as f32 / 10_000.0;
        let (a, b, c, d) = (f(next()), f(next()), f(next()), f(next()));
        let bbox = [a.min(c), b.min(d), a.max(c), b.max(d)];
        let margin = [0.0f32, 0.15, 0.8, 0.33][(next() % 4) as usize];
        let scale = [0.6f32, 0.5, 0.45, 0.3][(next() % 4) as usize];
        let lb = Letterbox::fit(w, h, in_w, in_h);
        let mapped = lb.to_image(bbox);
        let canvas = closeup_canvas(w, h, scale);
        cases.push(serde_json::json!({
            "w": w, "h": h, "in_w": in_w, "in_h": in_h, "box": bbox, "margin": margin,
            "scale": scale,
            "rust": {
                "reduction": reduction_factor(w, h, in_w, in_h),
                "fit": [lb.width, lb.height, lb.x, lb.y],
                "to_image": mapped,
                "crop": crop_rect(bbox, margin, w, h),
                "canvas": [canvas.input_width, canvas.input_height, canvas.x, canvas.y],
            }
        }));
    }
    let script = r#"
import json, sys
from vigil_tools import geometry as g
bad = []
for c in json.load(sys.stdin):
    w, h, iw, ih = c["w"], c["h"], c["in_w"], c["in_h"]
    fit = g.letterbox_fit(w, h, iw, ih)
    py = {"reduction": g.reduction_factor(w, h, iw, ih), "fit": list(fit),
          "to_image": list(g.to_image(c["box"], fit, iw, ih)),
          "crop": list(g.crop_rect(c["box"], c["margin"], w, h)),
          "canvas": list(g.closeup_canvas(w, h, c["scale"]))}
    for k, v in py.items():
        if v != c["rust"][k]:
            bad.append({"case": {x: c[x] for x in ("w", "h", "in_w", "in_h", "box", "margin", "scale")},
                        "what": k, "rust": c["rust"][k], "python": v})
print(json.dumps({"bad": bad[:5], "n_bad": len(bad)}))
"#;
    let mut child = std::process::Command::new(python())
        .args(["-c", script])
        .current_dir(repo())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("the project's Python (.venv: scripts/bootstrap.sh)")?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(serde_json::to_string(&cases)?.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    ensure!(out.status.success(), "python failed");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        answer["n_bad"] == 0,
        "models/geometry.py differs from the worker in {} of {} cases: {}",
        answer["n_bad"],
        cases.len(),
        answer["bad"]
    );
    Ok(())
}
