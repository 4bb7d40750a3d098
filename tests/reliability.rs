//! Records that once stopped a partition for good, sent by an outside producer between good
//! frames, against the real broker: each gets exactly one outcome with the right reason, the
//! worker stays up, and the partition keeps moving past every one of them.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use common::*;

/// The dead-letter topic's record size limit in this test (the frames topic takes more).
const DLQ_LIMIT: usize = 120_000;

struct Case {
    case: String,
    expect: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_pills_are_dead_lettered_and_the_partition_keeps_moving() -> Result {
    let limit = DLQ_LIMIT.to_string();
    // One partition: a pill that stopped it would stop everything after it.
    let topics = create_topics_with(
        1,
        &[
            ("dlq", "max.message.bytes", &limit),
            ("frames", "max.message.bytes", "1000000"),
        ],
    )
    .await?;
    let out = std::process::Command::new(python())
        .arg(repo().join("tests/tools/pills.py"))
        .args([&brokers(), &topics.frames, &limit])
        .output()
        .context("run the pill producer (bootstrap installs confluent-kafka into .venv)")?;
    ensure!(
        out.status.success(),
        "pill producer failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut cases: HashMap<i64, Case> = HashMap::new();
    for line in String::from_utf8(out.stdout)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        cases.insert(
            v["offset"].as_i64().context("offset")?,
            Case {
                case: v["case"].as_str().context("case")?.into(),
                expect: v["expect"].as_str().context("expect")?.into(),
            },
        );
    }
    let good: HashSet<(i32, i64)> = cases
        .iter()
        .filter(|(_, c)| c.expect == "observation")
        .map(|(&o, _)| (0, o))
        .collect();
    let bad = cases.len() - good.len();
    ensure!(
        good.len() >= 6 && bad >= 11,
        "the corpus: {} cases",
        cases.len()
    );

    let mut worker = Worker::start(&topics, &unique("g"), &["--max-frame-bytes", "250000"])?;
    let dead = collect(
        &topics.dlq,
        bad,
        Duration::from_secs(120),
        Duration::from_secs(2),
    )
    .await
    .with_context(|| worker.log_text())?;
    let observed = collect(
        &topics.observations,
        good.len(),
        Duration::from_secs(120),
        Duration::from_secs(2),
    )
    .await
    .with_context(|| worker.log_text())?;

    ensure!(
        dead.len() == bad,
        "each pill dead-lettered once, got {}",
        dead.len()
    );
    for d in &dead {
        let offset: i64 = d
            .header("source_offset")
            .context("source_offset")?
            .parse()?;
        let c = cases
            .get(&offset)
            .context("a dead letter of a sent record")?;
        ensure!(
            d.header("reason").as_deref() == Some(c.expect.as_str()),
            "{}: reason {:?}, expected {} ({:?})",
            c.case,
            d.header("reason"),
            c.expect,
            d.header("reason_detail")
        );
        if c.case == "dead_letter_too_large" {
            ensure!(
                d.payload.is_empty()
                    && d.header("payload_dropped") == Some((DLQ_LIMIT + 1024).to_string()),
                "a dead letter over the topic's limit goes without its payload, saying so: {} bytes, {:?}",
                d.payload.len(),
                d.header("payload_dropped")
            );
        } else {
            ensure!(
                !d.payload.is_empty(),
                "{}: the payload is kept ({:?})",
                c.case,
                d.header("payload_dropped")
            );
        }
    }
    let seen = sources_once(&observed)?;
    ensure!(
        seen == good,
        "every good frame observed once, the non-UTF-8 header name and zstd batch included"
    );
    ensure!(
        worker.child.try_wait()?.is_none(),
        "the worker is still running:\n{}",
        worker.log_text()
    );
    worker.signal("TERM")?;
    ensure!(worker.wait(Duration::from_secs(30))?.success());
    Ok(())
}

/// A JPEG of `size` bytes: a real photo with comment segments after its start-of-image marker.
fn jpeg_of_size(size: usize) -> Vec<u8> {
    let photo = face("grace_hopper.jpg");
    let mut out = photo[..2].to_vec();
    let mut room = size - photo.len();
    while room > 0 {
        let body = (room - 4).min(65_533);
        out.extend_from_slice(&[0xFF, 0xFE]);
        out.extend_from_slice(&((body + 2) as u16).to_be_bytes());
        out.extend(std::iter::repeat_n(b'x', body));
        room -= body + 4;
    }
    out.extend_from_slice(&photo[2..]);
    out
}

/// The contract allows 4 MiB frames: `vigil topics create` sizes the topics for them, and one
/// travels from an outside producer through the worker to its observation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_4_mib_frame_travels_end_to_end() -> Result {
    let base = unique("big");
    let topics = Topics {
        frames: format!("{base}.frames"),
        observations: format!("{base}.observations"),
        dlq: format!("{base}.dlq"),
        violations: format!("{base}.violations"),
        state: format!("{base}.state"),
    };
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "topics",
            "create",
            "--brokers",
            &brokers(),
            "--partitions",
            "1",
        ])
        .args(["--frames-topic", &topics.frames])
        .args(["--observations-topic", &topics.observations])
        .args(["--dlq-topic", &topics.dlq])
        .args(["--violations-topic", &topics.violations])
        .args(["--state-topic", &topics.state])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 4 MiB exactly, and its headers on top.
    let big = jpeg_of_size(4 * 1024 * 1024);
    ensure!(vigil::contract::jpeg::sniff(&big).is_ok(), "a valid JPEG");
    let rec = frame("cam-big", "site-001", 0, big);
    let sent = produce(&topics.frames, &[rec]).await?;
    let worker = Worker::start(&topics, &unique("g"), &[])?;
    let got = collect(
        &topics.observations,
        1,
        Duration::from_secs(120),
        Duration::from_secs(1),
    )
    .await
    .with_context(|| worker.log_text())?;
    let o = got[0].observation()?;
    ensure!((o.source.partition, o.source.offset) == sent[0]);
    ensure!(o.frame.width == 512 && o.frame.height == 600, "decoded");
    ensure!(
        !worker.log_text().contains("max.message.bytes is below"),
        "the topics were sized for the frame limit:\n{}",
        worker.log_text()
    );
    Ok(())
}

/// The sum of a metric's samples in a scrape.
fn metric(scrape: &str, name: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("VmRSS")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// Produces `ids` frames of a tiny JPEG, each from a camera of its own, without waiting for each.
async fn flood(topic: &str, ids: std::ops::Range<u32>, jpeg: &[u8]) -> Result {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::FutureRecord;
    let p = producer()?;
    let now = vigil::contract::now_ms().to_string();
    let mut pending = Vec::new();
    for i in ids {
        let camera = format!("flood-{i:06}");
        let headers = [
            ("site", "site-flood"),
            ("camera", camera.as_str()),
            ("captured_at", now.as_str()),
            ("seq", "0"),
            ("zone", "dining"),
        ]
        .iter()
        .fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        });
        let mut rec = FutureRecord::to(topic)
            .key(&camera)
            .payload(jpeg)
            .headers(headers);
        loop {
            match p.send_result(rec) {
                Ok(f) => break pending.push(f),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((e, _)) => bail!("produce: {e}"),
            }
        }
    }
    for f in pending {
        f.await?
            .map_err(|(e, _)| anyhow::anyhow!("delivery: {e}"))?;
    }
    Ok(())
}

async fn processed_at_least(addr: &str, n: f64, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let scrape = get(addr, "/metrics")?;
        if metric(&scrape, "vigil_frames_processed_total") >= n {
            return Ok(scrape);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out waiting for {n} frames processed, at {}",
                metric(&scrape, "vigil_frames_processed_total")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// 100,000 distinct camera ids (a misconfigured gateway, or an attacker): the per-camera series
/// stop at their limit and the worker's memory stops growing with the number of ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_camera_ids_keeps_memory_bounded() -> Result {
    let topics = create_topics(2).await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let worker = Worker::start(
        &topics,
        &unique("g"),
        &["--metrics-addr", &addr, "--metrics-camera-limit", "1000"],
    )?;
    let tiny = {
        use opencv::core::{Mat, Scalar, CV_8UC3};
        let img = Mat::new_rows_cols_with_default(16, 16, CV_8UC3, Scalar::all(128.0))?;
        vigil::decode::encode_jpeg(&img, 80)?
    };
    flood(&topics.frames, 0..20_000, &tiny).await?;
    processed_at_least(&addr, 20_000.0, Duration::from_secs(300))
        .await
        .with_context(|| worker.log_text())?;
    let early = rss(worker.child.id())?;
    flood(&topics.frames, 20_000..100_000, &tiny).await?;
    let scrape = processed_at_least(&addr, 100_000.0, Duration::from_secs(600))
        .await
        .with_context(|| worker.log_text())?;
    let late = rss(worker.child.id())?;
    eprintln!(
        "worker memory: {} MiB after 20,000 camera ids, {} MiB after 100,000",
        early >> 20,
        late >> 20
    );
    let series = scrape
        .lines()
        .filter(|l| l.starts_with("vigil_camera_last_frame_timestamp_seconds{"))
        .count();
    ensure!(
        series == 1000,
        "per-camera series capped at the limit: {series}"
    );
    ensure!(
        metric(&scrape, "vigil_camera_series_refused_total") >= 99_000.0,
        "the rest counted"
    );
    ensure!(
        late.saturating_sub(early) < 64 << 20,
        "memory grew by {} MiB over 80,000 new camera ids ({} → {} MiB)",
        (late.saturating_sub(early)) >> 20,
        early >> 20,
        late >> 20
    );
    Ok(())
}

/// `vigil alerts` reads events any producer may write: an episode id that is not ASCII (once
/// sliced at byte 12, panicking the subscriber on every restart) is printed, and the events
/// after it are handled too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigil_alerts_survives_an_episode_id_of_any_text() -> Result {
    use vigil::contract::{EventKind, Severity, ViolationEvent};
    let topics = create_topics(1).await?;
    let codec = vigil::codec::event_codec();
    let event = |id: &str, episode: &str| ViolationEvent {
        event_id: id.into(),
        kind: EventKind::Opened,
        episode_id: episode.into(),
        site: "site-001".into(),
        camera: "cam-u".into(),
        zone: None,
        rule: "mask_required".into(),
        severity: Severity::Minor,
        reason: None,
        opened_at: 1_776_600_000_000,
        last_seen_at: 1_776_600_003_000,
        resolved_at: None,
        event_time: 1_776_600_003_000,
        peak_level: 0.9,
        mean_level: 0.8,
        frames: 5,
        evidence: None,
        models: Vec::new(),
        worker: "outside".into(),
        sequence: Some(0),
        evidence_uri: None,
    };
    let recs: Vec<Rec> = [
        event("e-1", "épisode-ñ-ü-✓-0123456789"),
        event("e-2", "plain-episode-id"),
    ]
    .iter()
    .map(|e| -> Result<Rec> {
        Ok(Rec {
            key: Some(b"cam-u".to_vec()),
            headers: Vec::new(),
            payload: codec.encode(e)?,
        })
    })
    .collect::<Result<_>>()?;
    produce(&topics.violations, &recs).await?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "alerts",
            "--brokers",
            &brokers(),
            "--topic",
            &topics.violations,
        ])
        .args(["--group", &unique("alerts"), "--idle-secs", "5"])
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        stdout.contains("episode=épisode-ñ-ü-") && stdout.contains("episode=plain-episod"),
        "both events printed:\n{stdout}"
    );
    Ok(())
}
