//! The frame path end to end, against a real broker: gateway/outside producers → Kafka →
//! `vigil worker` processes → observations and dead letters.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use common::*;

const PHOTOS: [&str; 4] = [
    "grace_hopper.jpg",
    "sample1.jpg",
    "sample2.jpg",
    "sample5.jpg",
];

fn frames(cameras: usize, per_camera: u64) -> Vec<Rec> {
    let photos: Vec<Vec<u8>> = PHOTOS.iter().map(|p| face(p)).collect();
    let mut recs = Vec::new();
    for seq in 0..per_camera {
        for c in 0..cameras {
            let camera = format!("cam-{c:02}");
            recs.push(frame(
                &camera,
                "site-001",
                seq,
                photos[(c + seq as usize) % photos.len()].clone(),
            ));
        }
    }
    recs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_in_observations_out() -> Result {
    let topics = create_topics(3).await?;
    let recs = frames(3, 4);
    let sent = produce(&topics.frames, &recs).await?;
    let group = unique("g");
    let worker = Worker::start(&topics, &group, &[])?;
    let got = collect(
        &topics.observations,
        recs.len(),
        Duration::from_secs(120),
        Duration::from_secs(2),
    )
    .await
    .with_context(|| worker.log_text())?;
    let seen = sources_once(&got)?;
    ensure!(
        seen == sent.iter().copied().collect::<HashSet<_>>(),
        "observed frames differ from sent ones"
    );
    for g in &got {
        let o = g.observation()?;
        let (p, off) = (o.source.partition, o.source.offset);
        let i = sent
            .iter()
            .position(|s| *s == (p, off))
            .context("unknown source")?;
        let r = &recs[i];
        ensure!(
            g.key.as_deref() == r.key.as_deref(),
            "observation key is the camera id"
        );
        ensure!(
            Some(o.camera.as_bytes()) == r.key.as_deref(),
            "camera matches the frame"
        );
        ensure!(o.seq == i as u64 / 3, "seq carried over");
        ensure!(o
            .models
            .iter()
            .any(|m| m.name == "face-yunet" && m.provider == "CPUExecutionProvider"));
        ensure!(
            o.rules.len() == 2
                && o.rules[0].rule == "mask_required"
                && o.rules[1].rule == "no_animals",
            "default rules: masks and animals checked"
        );
        ensure!(
            !o.detections.is_empty(),
            "a face is found in {}: {:?}",
            PHOTOS[(i % 3 + i / 3) % PHOTOS.len()],
            o
        );
        for d in &o.detections {
            ensure!(
                ["mask", "no_mask", "mask_incorrect"].contains(&d.label.as_str()),
                "a mask-v2 label: {d:?}"
            );
            let total: f32 = d.scores.values().sum();
            ensure!(
                (total - 1.0).abs() < 1e-3,
                "softmax scores sum to 1, got {total}"
            );
            ensure!(
                d.bbox[0] < d.bbox[2]
                    && d.bbox[1] < d.bbox[3]
                    && d.bbox.iter().all(|v| (0.0..=1.0).contains(v))
            );
        }
        ensure!(
            o.rules[0].verdict == vigil::contract::observation::Verdict::Violation,
            "nobody in these photos wears a mask"
        );
        // Animals are looked for once per 2 s of a camera's footage (frames are 0.5 s apart):
        // in between, the rule is not judged and its detector does not run.
        let objectron = o.models.iter().any(|m| m.name == "objectron-int8");
        if o.seq % 4 == 0 {
            ensure!(
                o.rules[1].verdict == vigil::contract::observation::Verdict::Compliant && objectron,
                "no animal in these photos: {:?}",
                o.rules[1]
            );
        } else {
            ensure!(
                o.rules[1].verdict == vigil::contract::observation::Verdict::Unknown
                    && o.rules[1].reason.as_deref() == Some("not_due")
                    && !objectron,
                "not due 0.5-1.5 s after the camera's last look for animals: {:?} {:?}",
                o.rules[1],
                o.models
            );
        }
        // Decoded as small as libjpeg allows while covering YuNet's 640×384 input.
        ensure!(
            (o.frame.decoded_width >= 640 && o.frame.decoded_height >= 384)
                || o.frame.decoded_width == o.frame.width,
            "decoded size {}x{} of {}x{}",
            o.frame.decoded_width,
            o.frame.decoded_height,
            o.frame.width,
            o.frame.height
        );
        ensure!(
            o.frame.decoded_width * 2 < 640
                || o.frame.decoded_height * 2 < 384
                || o.frame.decoded_width < o.frame.width / 2 + 1
                || o.frame.width < 1280,
            "large frames decode reduced"
        );
        ensure!(o.worker == worker.id);
    }
    // fastavro reads the observations as vigil wrote them.
    let schema = repo().join("schemas/observation.avsc");
    let payloads: Vec<&[u8]> = got.iter().map(|g| g.payload.as_slice()).collect();
    let outside = decode_outside("single", schema.to_str().unwrap(), &payloads)?;
    for (d, g) in outside.iter().zip(&got) {
        let o = g.observation()?;
        ensure!(
            d["camera"] == o.camera.as_str()
                && d["source"]["offset"] == o.source.offset
                && d["rules"][0]["verdict"] == "violation"
                && d["detections"].as_array().map(Vec::len) == Some(o.detections.len()),
            "fastavro reads {d} differently from {o:?}"
        );
    }
    // Per camera, observations come out in frame order.
    let mut last: HashMap<String, u64> = HashMap::new();
    for g in &got {
        let o = g.observation()?;
        if let Some(prev) = last.insert(o.camera.clone(), o.seq) {
            ensure!(
                o.seq > prev,
                "camera {} out of order: {} after {}",
                o.camera,
                o.seq,
                prev
            );
        }
    }
    let dlq = collect(
        &topics.dlq,
        0,
        Duration::from_secs(1),
        Duration::from_secs(1),
    )
    .await?;
    ensure!(
        dlq.is_empty(),
        "good frames never reach the dead-letter topic"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_from_an_outside_producer_are_dead_lettered() -> Result {
    let topics = create_topics(2).await?;
    let out = std::process::Command::new(python())
        .arg(repo().join("tests/tools/outside_producer.py"))
        .args([&brokers(), &topics.frames, "250000"])
        .output()
        .context("run the outside producer (bootstrap installs confluent-kafka into .venv)")?;
    ensure!(
        out.status.success(),
        "outside producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cases: HashMap<(i32, i64), String> = HashMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        cases.insert(
            (
                v["partition"].as_i64().unwrap() as i32,
                v["offset"].as_i64().unwrap(),
            ),
            v["case"].as_str().unwrap().to_string(),
        );
    }
    ensure!(cases.len() == 10, "the corpus has 10 records");
    let good = cases.values().filter(|c| *c == "good").count();
    let bad = cases.len() - good;

    let worker = Worker::start(&topics, &unique("g"), &["--max-frame-bytes", "250000"])?;
    let dead = collect(
        &topics.dlq,
        bad,
        Duration::from_secs(90),
        Duration::from_secs(2),
    )
    .await
    .with_context(|| worker.log_text())?;
    let expected = HashMap::from([
        ("empty", "empty"),
        ("truncated", "truncated"),
        ("png", "not_jpeg"),
        ("bomb", "pixel_budget"),
        ("no_camera", "missing_header"),
        ("oversize", "oversize"),
        ("bad_captured_at", "bad_header"),
    ]);
    ensure!(
        dead.len() == bad,
        "each malformed frame is dead-lettered once, got {}",
        dead.len()
    );
    for d in &dead {
        let case = d.header("case").context("original headers are kept")?;
        let reason = d.header("reason").context("reason header")?;
        ensure!(
            expected.get(case.as_str()) == Some(&reason.as_str()),
            "case {case}: reason {reason}"
        );
        ensure!(
            !d.header("reason_detail").unwrap_or_default().is_empty(),
            "a human-readable detail"
        );
        let src = (
            d.header("source_partition")
                .context("source partition")?
                .parse::<i32>()?,
            d.header("source_offset")
                .context("source offset")?
                .parse::<i64>()?,
        );
        ensure!(
            cases.get(&src) == Some(&case),
            "source coordinates point at the original record"
        );
        ensure!(d.header("source_topic").as_deref() == Some(topics.frames.as_str()));
        ensure!(d.header("worker").as_deref() == Some(worker.id.as_str()));
        if case == "oversize" {
            ensure!(d.payload.len() > 250_000, "the original bytes are kept");
        }
        if case != "no_camera" {
            ensure!(d.key.is_some(), "the original key is kept");
        }
    }
    let obs = collect(
        &topics.observations,
        good,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await?;
    let seen = sources_once(&obs)?;
    let good_sources: HashSet<_> = cases
        .iter()
        .filter(|(_, c)| *c == "good")
        .map(|(k, _)| *k)
        .collect();
    ensure!(
        seen == good_sources,
        "every good frame observed, and only those"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_split_the_partitions_and_observe_each_frame_once() -> Result {
    let topics = create_topics(4).await?;
    let group = unique("g");
    let a = Worker::start(&topics, &group, &[])?;
    let b = Worker::start(&topics, &group, &[])?;
    wait_for(
        "both workers to share all 4 partitions",
        Duration::from_secs(90),
        || match (a.assigned(), b.assigned()) {
            (Some(x), Some(y)) if !x.is_empty() && !y.is_empty() => {
                let all: HashSet<i32> = x.iter().chain(&y).copied().collect();
                all.len() == 4 && x.len() + y.len() == 4
            }
            _ => false,
        },
    )
    .await
    .with_context(|| format!("A:\n{}\nB:\n{}", a.log_text(), b.log_text()))?;
    let recs = frames(8, 4);
    let sent = produce(&topics.frames, &recs).await?;
    let got = collect(
        &topics.observations,
        recs.len(),
        Duration::from_secs(120),
        Duration::from_secs(3),
    )
    .await?;
    let seen = sources_once(&got)?;
    ensure!(
        seen == sent.into_iter().collect::<HashSet<_>>(),
        "every frame observed exactly once"
    );
    let by_worker: HashSet<String> = got
        .iter()
        .map(|g| g.observation().map(|o| o.worker))
        .collect::<Result<_>>()?;
    ensure!(
        by_worker.len() == 2,
        "both workers produced observations: {by_worker:?}"
    );
    // Each partition was handled by one worker only.
    let mut owner: HashMap<i32, String> = HashMap::new();
    for g in &got {
        let o = g.observation()?;
        let prev = owner.insert(o.source.partition, o.worker.clone());
        ensure!(
            prev.is_none_or(|p| p == o.worker),
            "partition {} split between workers",
            o.source.partition
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_commits_and_a_restart_resumes_without_loss_or_repeat() -> Result {
    let topics = create_topics(2).await?;
    let group = unique("g");
    let first = frames(2, 5);
    let sent1 = produce(&topics.frames, &first).await?;
    // The shipped defaults: the frames are from 2023, so all but each camera's first are
    // skipped as stale, and every one still gets its observation exactly once.
    let mut w1 = Worker::start_default(&topics, &group, &[])?;
    collect(
        &topics.observations,
        first.len(),
        Duration::from_secs(120),
        Duration::ZERO,
    )
    .await
    .with_context(|| w1.log_text())?;
    w1.signal("TERM")?;
    let status = w1.wait(Duration::from_secs(40))?;
    ensure!(
        status.success(),
        "SIGTERM exits 0, got {status:?}; log:\n{}",
        w1.log_text()
    );
    ensure!(w1.log_text().contains("worker stopped cleanly"));

    let second = frames(2, 5);
    let sent2 = produce(&topics.frames, &second).await?;
    let w2 = Worker::start_default(&topics, &group, &[])?;
    let total = first.len() + second.len();
    let got = collect(
        &topics.observations,
        total,
        Duration::from_secs(120),
        Duration::from_secs(4),
    )
    .await
    .with_context(|| w2.log_text())?;
    let seen =
        sources_once(&got).context("a frame committed before SIGTERM was processed again")?;
    let all: HashSet<_> = sent1.iter().chain(&sent2).copied().collect();
    ensure!(seen == all, "every frame observed once across the restart");
    let by_second: HashSet<(i32, i64)> = got
        .iter()
        .filter_map(|g| g.observation().ok())
        .filter(|o| o.worker == w2.id)
        .map(|o| (o.source.partition, o.source.offset))
        .collect();
    ensure!(
        by_second == sent2.iter().copied().collect::<HashSet<_>>(),
        "the restarted worker resumed at the committed offsets"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_publishes_the_frame_contract_for_many_cameras() -> Result {
    let topics = create_topics(3).await?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "gateway",
            "--brokers",
            &brokers(),
            "--frames-topic",
            &topics.frames,
        ])
        .args([
            "--source",
            repo().join("tests/data/faces").to_str().unwrap(),
        ])
        .args([
            "--cameras",
            "5",
            "--sites",
            "2",
            "--zones",
            "kitchen,dining",
            "--fps",
            "20",
            "--frames",
            "3",
            "--width",
            "640",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "gateway failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = collect(
        &topics.frames,
        15,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await?;
    ensure!(got.len() == 15, "5 cameras x 3 frames, got {}", got.len());
    let mut per_camera: HashMap<String, Vec<u64>> = HashMap::new();
    for g in &got {
        let (meta, info) = vigil::source::intake::validate(
            g.key.as_deref(),
            &g.headers,
            &g.payload,
            &Default::default(),
            vigil::contract::now_ms(),
        )
        .map_err(|r| anyhow::anyhow!("gateway frame breaks the contract: {r:?}"))?;
        ensure!(info.width == 640, "resized to --width");
        ensure!(meta.zone.is_some());
        ensure!(meta.site == "site-001" || meta.site == "site-002");
        per_camera.entry(meta.camera).or_default().push(meta.seq);
    }
    ensure!(per_camera.len() == 5);
    for (cam, seqs) in per_camera {
        if seqs != vec![0, 1, 2] {
            bail!("camera {cam}: seqs {seqs:?} (one partition per camera keeps order)");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_samples_a_video_file_at_the_requested_rate() -> Result {
    use opencv::core::{Mat, Size};
    use opencv::prelude::*;
    use opencv::videoio::{VideoWriter, VideoWriterTrait};
    // A real 2-second MJPG video at 10 fps made from a photo.
    let dir = tempfile::tempdir()?;
    let video = dir.path().join("kitchen.avi");
    let photo = opencv::imgcodecs::imdecode(
        &Mat::from_slice(&face("grace_hopper.jpg"))?,
        opencv::imgcodecs::IMREAD_COLOR,
    )?;
    let mut small = Mat::default();
    opencv::imgproc::resize(
        &photo,
        &mut small,
        Size::new(320, 376),
        0.0,
        0.0,
        opencv::imgproc::INTER_AREA,
    )?;
    let fourcc = VideoWriter::fourcc('M', 'J', 'P', 'G')?;
    let mut writer = VideoWriter::new(
        video.to_str().unwrap(),
        fourcc,
        10.0,
        Size::new(320, 376),
        true,
    )?;
    ensure!(writer.is_opened()?, "OpenCV can write MJPG AVI files");
    for _ in 0..20 {
        writer.write(&small)?;
    }
    writer.release()?;

    let topics = create_topics(1).await?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "gateway",
            "--brokers",
            &brokers(),
            "--frames-topic",
            &topics.frames,
        ])
        .args([
            "--source",
            video.to_str().unwrap(),
            "--fps",
            "5",
            "--cameras",
            "2",
        ])
        .output()?;
    ensure!(
        out.status.success(),
        "gateway failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 20 source frames at 10 fps sampled at 5 fps: 10 per camera.
    let got = collect(
        &topics.frames,
        20,
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await?;
    ensure!(got.len() == 20, "got {}", got.len());
    for g in &got {
        let (_, info) = vigil::source::intake::validate(
            g.key.as_deref(),
            &g.headers,
            &g.payload,
            &Default::default(),
            vigil::contract::now_ms(),
        )
        .map_err(|r| anyhow::anyhow!("{r:?}"))?;
        ensure!((info.width, info.height) == (320, 376));
    }
    Ok(())
}

/// The rebalance callbacks run on the consumer's own thread, so a revoke can wait for the
/// partition's in-flight frames while the async runtime delivers them, even when the whole
/// worker has one core (one runtime thread). The pinned worker must report the revoked
/// partitions drained, and the worker that takes them over must not repeat a frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_on_one_core_drains_and_commits_on_revoke() -> Result {
    if std::process::Command::new("taskset")
        .arg("-V")
        .output()
        .is_err()
    {
        bail!("taskset (util-linux) is needed to pin the worker to one core");
    }
    let topics = create_topics(4).await?;
    let group = unique("g");
    // A backlog, so that frames are in flight when the second worker joins.
    let recs = frames(8, 8);
    let sent = produce(&topics.frames, &recs).await?;
    let a = Worker::start_under(
        &["taskset", "-c", "0"],
        &topics,
        &group,
        &["--max-in-flight", "8"],
    )?;
    collect(
        &topics.observations,
        4,
        Duration::from_secs(120),
        Duration::ZERO,
    )
    .await
    .with_context(|| a.log_text())?;
    let b = Worker::start(&topics, &group, &[])?;
    wait_for(
        "the pinned worker to give partitions away",
        Duration::from_secs(60),
        || {
            a.log_events()
                .iter()
                .any(|e| e["message"] == "partitions revoked")
        },
    )
    .await
    .with_context(|| a.log_text())?;
    let revokes: Vec<serde_json::Value> = a
        .log_events()
        .into_iter()
        .filter(|e| e["message"] == "partitions revoked")
        .collect();
    ensure!(
        revokes.iter().all(|e| e["drained"] == true),
        "every revoke drained within the drain timeout: {revokes:?}\n{}",
        a.log_text()
    );
    let got = collect(
        &topics.observations,
        recs.len(),
        Duration::from_secs(180),
        Duration::from_secs(3),
    )
    .await
    .with_context(|| format!("A:\n{}\nB:\n{}", a.log_text(), b.log_text()))?;
    let seen = sources_once(&got).context("a frame committed on revoke was processed again")?;
    ensure!(
        seen == sent.into_iter().collect::<HashSet<_>>(),
        "every frame observed exactly once across the rebalance"
    );
    Ok(())
}
