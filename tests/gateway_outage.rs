//! Store and forward through a broker outage: the site gateway's broker (this test's own, so
//! that the shared one of `scripts/test.sh` stays up for the other tests) is killed for
//! `OUTAGE` while four cameras keep capturing; halfway through, the gateway itself is killed
//! (SIGKILL) and started again, still without a broker. When the broker returns, every frame
//! captured during the outage reaches the frames topic exactly once, in order per camera, with
//! its original `captured_at` (read back with confluent-kafka).
//!
//! The cameras are directories of images (the RTSP path is `tests/gateway.rs`'s): what is
//! tested here is the buffer, not the capture. No worker observes the frames: the frames
//! topic is read directly, which is what a worker would read.

mod common;

use std::time::{Duration, Instant};

use anyhow::ensure;
use common::site::*;
use common::*;

/// How long the broker stays away (the two minutes; `VIGIL_GATEWAY_OUTAGE_SECS`
/// shortens it for a quick run).
fn outage() -> Duration {
    let secs = std::env::var("VIGIL_GATEWAY_OUTAGE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

const CAMERAS: usize = 4;
const FPS: f64 = 2.0;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_captured_during_a_broker_outage_arrive_once_in_order_across_a_gateway_kill(
) -> Result {
    let mut broker = PrivateBroker::start()?;
    let frames_topic = unique("gw-outage.frames");
    let status_topic = unique("gw-outage.status");
    create_topics_on(&broker.addr(), &[&frames_topic, &status_topic], 2).await?;

    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir(&images)?;
    for (i, name) in ["grace_hopper.jpg", "sample1.jpg", "sample2.jpg"]
        .iter()
        .enumerate()
    {
        std::fs::copy(
            repo().join("tests/data/faces").join(name),
            images.join(format!("{i}.jpg")),
        )?;
    }
    let mut file = String::from("site = \"site-out\"\n");
    for i in 0..CAMERAS {
        file += &format!(
            "[[camera]]\nid = \"cam-{i}\"\nzone = \"kitchen\"\nurl = \"images\"\nfps = {FPS}\nwidth = 320\n"
        );
    }
    let cameras = dir.path().join("site.toml");
    std::fs::write(&cameras, file)?;
    let buffer = dir.path().join("buffer");
    let addr = broker.addr();
    let start = |extra: &[&str]| {
        Gateway::start(
            &addr,
            &frames_topic,
            &status_topic,
            &cameras,
            &buffer,
            extra,
            &[],
        )
    };
    let mut gw = start(&[])?;
    let published = |gw: &Gateway| -> f64 {
        let s = gw.scrape();
        (0..CAMERAS)
            .map(|i| {
                gw.camera(
                    &s,
                    "vigil_gateway_frames_published_total",
                    &format!("cam-{i}"),
                )
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while published(&gw) < (2 * CAMERAS) as f64 {
        gw.alive("before the outage")?;
        ensure!(
            Instant::now() < deadline,
            "nothing published:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let outage = outage();
    broker.kill()?;
    let broker_down_ms = vigil::contract::now_ms();
    let down = Instant::now();
    eprintln!("broker killed; back in {outage:?}");
    tokio::time::sleep(outage / 2).await;
    gw.alive("during the outage")?;
    let s = gw.scrape();
    ensure!(
        scraped(&s, "vigil_gateway_broker_reachable") == Some(0.0),
        "{s}"
    );
    ensure!(
        scraped(&s, "vigil_gateway_buffer_frames").unwrap_or(0.0) > 10.0,
        "{s}"
    );
    gw.signal("KILL")?;
    gw.wait(Duration::from_secs(10))?;
    let killed_ms = vigil::contract::now_ms();
    let mut gw = start(&[])?;
    let restarted_ms = vigil::contract::now_ms();
    tokio::time::sleep(outage.saturating_sub(down.elapsed())).await;
    gw.alive("when the outage ended")?;
    let back_ms = vigil::contract::now_ms();
    broker.restart()?;

    // The backlog drains: the buffer empties.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        gw.alive("while the backlog drained")?;
        let s = gw.scrape();
        if scraped(&s, "vigil_gateway_buffer_frames") == Some(0.0)
            && scraped(&s, "vigil_gateway_broker_reachable") == Some(1.0)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the buffer did not drain:\n{s}\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s = gw.scrape();
    for reason in ["buffer_full", "buffer_age", "queue_full", "rejected"] {
        ensure!(
            !s.lines()
                .any(|l| l.starts_with("vigil_gateway_frames_dropped_total")
                    && l.contains(reason)
                    && !l.ends_with(" 0")),
            "frames dropped ({reason}) within the buffer's limits:\n{s}"
        );
    }
    gw.signal("TERM")?;
    ensure!(
        gw.wait(Duration::from_secs(30))?.success(),
        "{}",
        gw.log_text()
    );

    // Once each, in order per camera, and none missing while the broker was away: each
    // camera's frames follow each other at its rate, but for the gateway's own restart.
    let frames = read_frames(&broker.addr(), &frames_topic, Duration::from_secs(3))?;
    in_order_once(&frames)?;
    let period_ms = (1000.0 / FPS) as i64;
    for i in 0..CAMERAS {
        let camera = format!("cam-{i}");
        let mut at: Vec<i64> = frames
            .iter()
            .filter(|f| f.camera == camera)
            .map(|f| f.captured_at)
            .collect();
        at.sort();
        let during: Vec<i64> = at
            .iter()
            .copied()
            .filter(|t| (broker_down_ms..back_ms).contains(t))
            .collect();
        // Frames from the broker's loss to the gateway's kill, and from its restart to the
        // broker's return; the restart itself (a second or two without a gateway) is the
        // only gap allowed.
        let expected_ms = (killed_ms - broker_down_ms) + (back_ms - restarted_ms);
        let expected = expected_ms / period_ms;
        ensure!(
            during.len() as i64 >= expected - 6,
            "{camera}: {} frames captured during the outage reached the topic, expected about {expected}",
            during.len()
        );
        for w in during.windows(2) {
            let gap = w[1] - w[0];
            let across_restart = w[0] <= killed_ms && w[1] >= restarted_ms;
            ensure!(
                gap <= 3 * period_ms || across_restart,
                "{camera}: {gap} ms without a frame at {} during the outage (lost frames)",
                w[0]
            );
        }
        eprintln!(
            "{camera}: {} frames captured during the outage, all delivered",
            during.len()
        );
    }
    Ok(())
}
