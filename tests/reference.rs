//! The Python reference pipeline (`scripts/pipeline.py`), which `scripts/load.py --compare`
//! measures vigil against, must do the same job: on the same frames from the same broker, its
//! observations agree with a worker's, rule by rule and face by face. If the worker's rules or
//! models change and the reference does not follow, the comparison would flatter one side; this
//! test fails instead.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{ensure, Context};
use common::*;
use vigil::contract::observation::Observation;

/// Kills the reference pipeline when the test ends, however it ends.
struct Reference(Child);

impl Drop for Reference {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn photos(dir: &str, ext: &[&str]) -> Result<Vec<std::path::PathBuf>> {
    let mut v: Vec<_> = std::fs::read_dir(repo().join("tests/data").join(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| ext.contains(&x.to_string_lossy().as_ref()))
        })
        .collect();
    v.sort();
    Ok(v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_reference_does_what_the_worker_does() -> Result {
    // Bare and masked faces in a kitchen, bare and gloved hands in a prep area, a cat.
    let mut recs = Vec::new();
    let mut add = |camera: String, zone: &str, jpeg: Vec<u8>| {
        let mut r = frame(&camera, "site-001", 0, jpeg);
        r.headers.push(("zone".into(), zone.as_bytes().to_vec()));
        recs.push(r);
    };
    for set in ["faces", "masked"] {
        for p in photos(set, &["jpg", "png"])? {
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            add(format!("{set}.{stem}"), "kitchen", jpeg_of(&p)?);
        }
    }
    for p in photos("gloves", &["jpg"])? {
        let stem = p.file_stem().unwrap().to_string_lossy().to_string();
        add(format!("prep.{stem}"), "prep", std::fs::read(&p)?);
    }
    add(
        "pet.chelsea".into(),
        "kitchen",
        std::fs::read(repo().join("tests/data/animals/chelsea.jpg"))?,
    );
    let n = recs.len();

    let topics = create_topics(2).await?;
    let theirs_topic = format!("{}.py", topics.observations);
    produce(&topics.frames, &recs).await?;
    let worker = Worker::start(&topics, &unique("g"), &[])?;
    let log = std::fs::File::create(log_dir().join(format!("{}.log", unique("reference"))))?;
    let _reference = Reference(
        Command::new(python())
            .arg(repo().join("scripts/pipeline.py"))
            .args(["--brokers", &brokers(), "--group", &unique("py")])
            .args(["--frames-topic", &topics.frames])
            .args(["--observations-topic", &theirs_topic])
            .args(["--dlq-topic", &topics.dlq])
            // As the test worker: every crop classified.
            .args(["--reclassify-every", "1", "--intra-threads", "1"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("start scripts/pipeline.py")?,
    );
    let read = |got: Vec<Got>| -> Result<HashMap<String, Observation>> {
        got.iter()
            .map(|g| g.observation().map(|o| (o.camera.clone(), o)))
            .collect()
    };
    let ours = read(
        collect(
            &topics.observations,
            n,
            Duration::from_secs(180),
            Duration::from_secs(1),
        )
        .await
        .with_context(|| worker.log_text())?,
    )?;
    let theirs = read(
        collect(
            &theirs_topic,
            n,
            Duration::from_secs(180),
            Duration::from_secs(1),
        )
        .await?,
    )?;
    ensure!(
        ours.len() == n && theirs.len() == n,
        "one observation per frame each"
    );

    let mut faces = 0;
    for (camera, o) in &ours {
        let t = &theirs[camera];
        let verdicts = |o: &Observation| -> BTreeMap<String, String> {
            o.rules
                .iter()
                .map(|r| (r.rule.clone(), r.verdict.as_str().to_string()))
                .collect()
        };
        ensure!(
            verdicts(o) == verdicts(t),
            "{camera}: vigil {:?}, python {:?}",
            verdicts(o),
            verdicts(t)
        );
        ensure!(
            o.detections.len() == t.detections.len(),
            "{camera}: vigil found {}, python {}",
            o.detections.len(),
            t.detections.len()
        );
        // Same order: by rule, then detector score.
        let key = |d: &vigil::contract::observation::DetectionResult| {
            (d.rule.clone(), -(d.score * 1e4) as i64)
        };
        let mut a: Vec<_> = o.detections.iter().collect();
        let mut b: Vec<_> = t.detections.iter().collect();
        a.sort_by_key(|d| key(d));
        b.sort_by_key(|d| key(d));
        for (x, y) in a.iter().zip(&b) {
            ensure!(
                x.rule == y.rule && x.label == y.label,
                "{camera}: {x:?} vs {y:?}"
            );
            let off = x
                .bbox
                .iter()
                .zip(&y.bbox)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0, f32::max);
            ensure!(
                off < 1e-3,
                "{camera}: boxes differ by {off}: {x:?} vs {y:?}"
            );
            ensure!((x.score - y.score).abs() < 1e-3, "{camera}: scores differ");
            faces += 1;
        }
    }
    eprintln!("{n} frames, {faces} detections: the same verdicts, labels and boxes");
    ensure!(
        faces >= 40,
        "the frames hold faces, hands and a cat: {faces}"
    );
    Ok(())
}
