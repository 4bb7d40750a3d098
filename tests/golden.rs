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
