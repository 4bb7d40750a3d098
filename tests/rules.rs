//! Rules through the worker: a user model dropped into the pack with its manifest runs without
//! code changes, a whole-frame classifier rule works beside the face cascade, and a camera no
//! rule covers is observed but never judged.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context};
use common::*;
use opencv::core::{Mat, Scalar, CV_8UC3};
use vigil::contract::observation::Verdict;

fn flat_jpeg(value: f64) -> Result<Vec<u8>> {
    let img = Mat::new_rows_cols_with_default(120, 160, CV_8UC3, Scalar::all(value))?;
    Ok(vigil::decode::encode_jpeg(&img, 90)?)
}

fn zoned(camera: &str, zone: &str, seq: u64, jpeg: Vec<u8>) -> Rec {
    let mut r = frame(camera, "site-002", seq, jpeg);
    r.headers.push(("zone".into(), zone.as_bytes().to_vec()));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_model_and_whole_frame_rule_run_beside_the_face_cascade() -> Result {
    let pack = tempfile::tempdir()?;
    for dir in [repo().join("models"), repo().join("tests/data/user_model")] {
        for e in std::fs::read_dir(dir)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == "toml" || x == "onnx") {
                std::fs::copy(&p, pack.path().join(p.file_name().unwrap()))?;
            }
        }
    }
    let rules = pack.path().join("rules.toml");
    std::fs::write(
        &rules,
        r#"
[rules.lights_on]
classifier = "brightness"
violation_label = "dark"

[rules.mask_required]
detector = "face-blazeface"
classifier = "mask"
violation_label = "no_mask"

[[assign]]
zone = "storage"
rules = ["lights_on"]

[[assign]]
zone = "kitchen"
rules = ["mask_required"]
"#,
    )?;
    let topics = create_topics(1).await?;
    let recs = vec![
        zoned("cam-store", "storage", 0, flat_jpeg(10.0)?),
        zoned("cam-store", "storage", 1, flat_jpeg(240.0)?),
        zoned("cam-kitchen", "kitchen", 0, face("grace_hopper.jpg")),
        zoned("cam-dining", "dining", 0, face("grace_hopper.jpg")),
    ];
    produce(&topics.frames, &recs).await?;
    let worker = Worker::start(
        &topics,
        &unique("g"),
        &[
            "--model-dir",
            pack.path().to_str().unwrap(),
            "--rules",
            rules.to_str().unwrap(),
        ],
    )?;
    let got = collect(
        &topics.observations,
        4,
        Duration::from_secs(90),
        Duration::from_secs(1),
    )
    .await
    .with_context(|| worker.log_text())?;
    let obs: Vec<_> = got.iter().map(|g| g.observation()).collect::<Result<_>>()?;
    let by = |cam: &str, seq: u64| {
        obs.iter()
            .find(|o| o.camera == cam && o.seq == seq)
            .context("observed")
    };

    let dark = by("cam-store", 0)?;
    ensure!(dark.rules.len() == 1 && dark.rules[0].rule == "lights_on");
    ensure!(
        dark.rules[0].verdict == Verdict::Violation,
        "lights off is a violation: {:?}",
        dark.rules
    );
    ensure!(
        dark.classifications[0].model == "brightness" && dark.classifications[0].label == "dark"
    );
    ensure!(dark.detections.is_empty() && dark.models.iter().all(|m| m.name == "brightness"));
    let bright = by("cam-store", 1)?;
    ensure!(bright.rules[0].verdict == Verdict::Compliant && bright.rules[0].level.unwrap() < 0.5);

    let kitchen = by("cam-kitchen", 0)?;
    ensure!(
        kitchen.rules[0].rule == "mask_required" && kitchen.rules[0].verdict == Verdict::Violation
    );
    ensure!(kitchen.detections.len() == 1 && kitchen.detections[0].label == "no_mask");

    let dining = by("cam-dining", 0)?;
    ensure!(
        dining.rules.is_empty() && dining.detections.is_empty() && dining.models.is_empty(),
        "a camera without rules is observed, never judged: {dining:?}"
    );
    ensure!(
        worker.log_text().contains("brightness"),
        "the user model was loaded"
    );
    Ok(())
}
