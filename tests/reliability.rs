//! Records that once stopped a partition for good, sent by an outside producer between good
//! frames, against the real broker: each gets exactly one outcome with the right reason, the
//! worker stays up, and the partition keeps moving past every one of them.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{ensure, Context};
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
