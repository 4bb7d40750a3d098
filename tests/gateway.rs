//! The site gateway (`vigil gateway --cameras-file`) against real RTSP cameras (GStreamer's
//! RTSP server, `tests/tools/rtsp_cameras.py`) and the shared broker of `scripts/test.sh`:
//!
//! - eight RTSP cameras on one gateway; one camera's server killed and restarted mid-run comes
//!   back within its backoff while the other seven keep publishing throughout; a camera whose
//!   address accepts connections and never answers does not hold up start-up, and its
//!   credentials (from the environment) appear in no log line and no metric; the camera-status
//!   topic says which camera went down and came back, and `vigil console` shows the silent
//!   camera offline from it; each camera's frames are in order, once.
//! - with the brokers unreachable, frames over the buffer's size limit and the site's cap are
//!   dropped oldest first and counted, memory stays bounded, and a restart applies the age
//!   limit to what the buffer kept.

mod common;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use common::site::*;
use common::*;

const UP: &str = "vigil_gateway_camera_up";
const PUBLISHED: &str = "vigil_gateway_frames_published_total";

fn image(i: usize) -> std::path::PathBuf {
    let names = [
        "grace_hopper.jpg",
        "sample1.jpg",
        "sample2.jpg",
        "sample3.jpg",
    ];
    repo().join("tests/data/faces").join(names[i % names.len()])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_rtsp_cameras_one_restarted_and_one_that_never_answers() -> Result {
    let topics = create_topics(2).await?;
    let status_topic = format!("{}.camera-status", topics.frames);
    // cam-01 on a server of its own, to be killed; cam-02..08 on another.
    let mut lone = RtspCameras::start(&[("cam-01", image(0))], 10, Some((640, 360)))?;
    let others: Vec<(String, std::path::PathBuf)> =
        (2..=8).map(|i| (format!("cam-{i:02}"), image(i))).collect();
    let mounts: Vec<(&str, std::path::PathBuf)> = others
        .iter()
        .map(|(n, p)| (n.as_str(), p.clone()))
        .collect();
    let many = RtspCameras::start(&mounts, 10, Some((640, 360)))?;
    // Accepts TCP connections (the kernel's backlog) and never says a word.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let silent_port = silent.local_addr()?.port();

    let dir = tempfile::tempdir()?;
    let mut file = String::from("site = \"site-gw\"\n");
    file += &format!(
        "[[camera]]\nid = \"cam-01\"\nzone = \"kitchen\"\nurl = \"{}\"\nfps = 2.0\n",
        lone.url("cam-01")
    );
    for (name, _) in &others {
        file += &format!(
            "[[camera]]\nid = \"{name}\"\nzone = \"dining\"\nurl = \"{}\"\nfps = 2.0\nwidth = 320\n",
            many.url(name)
        );
    }
    file += &format!(
        "[[camera]]\nid = \"cam-mute\"\nurl = \"rtsp://${{GW_USER}}:${{GW_PASS}}@127.0.0.1:{silent_port}/x\"\n"
    );
    let cameras = dir.path().join("site.toml");
    std::fs::write(&cameras, file)?;
    let secret = "pa55-never-shown";
    let started = Instant::now();
    let mut gw = Gateway::start(
        &brokers(),
        &topics.frames,
        &status_topic,
        &cameras,
        &dir.path().join("buffer"),
        &[],
        &[("GW_USER", "admin"), ("GW_PASS", secret)],
    )?;

    // Every reachable camera up and publishing soon, the silent one notwithstanding.
    let all: Vec<String> = (1..=8).map(|i| format!("cam-{i:02}")).collect();
    loop {
        gw.alive("at start-up")?;
        let s = gw.scrape();
        if all.iter().all(|c| gw.camera(&s, PUBLISHED, c) >= 1.0) {
            break;
        }
        ensure!(
            started.elapsed() < Duration::from_secs(40),
            "not every camera published within 40 s:\n{s}\nlog:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let first_frames = started.elapsed();
    eprintln!("all eight cameras published within {first_frames:?}");

    // cam-01 loses power for 8 s; the seven others publish in every 2-second slice meanwhile.
    lone.kill()?;
    let killed = Instant::now();
    let mut last: Vec<f64> = {
        let s = gw.scrape();
        all[1..]
            .iter()
            .map(|c| gw.camera(&s, PUBLISHED, c))
            .collect()
    };
    let mut went_down = false;
    while killed.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        gw.alive("while a camera was down")?;
        let s = gw.scrape();
        went_down |= gw.camera(&s, UP, "cam-01") == 0.0;
        for (i, c) in all[1..].iter().enumerate() {
            let now = gw.camera(&s, PUBLISHED, c);
            ensure!(
                now > last[i],
                "{c} paused while cam-01 was down ({now} frames)"
            );
            last[i] = now;
        }
    }
    ensure!(
        went_down,
        "cam-01 was never reported down:\n{}",
        gw.scrape()
    );
    lone.restart()?;
    let back = Instant::now();
    let before = gw.camera(&gw.scrape(), PUBLISHED, "cam-01");
    loop {
        let s = gw.scrape();
        if gw.camera(&s, UP, "cam-01") == 1.0 && gw.camera(&s, PUBLISHED, "cam-01") > before {
            break;
        }
        // The backoff's steps reach 8 s (jittered to 4-8 s) within an 8 s outage: the next
        // attempt comes within 8 s of the restart, 16 s at most if one more step passed, plus
        // the stream's opening.
        ensure!(
            back.elapsed() < Duration::from_secs(25),
            "cam-01 did not come back within its backoff:\n{s}\nlog:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "cam-01 back {:?} after its server restarted",
        back.elapsed()
    );
    let s = gw.scrape();
    ensure!(gw.camera(&s, "vigil_gateway_camera_reconnects_total", "cam-01") >= 1.0);
    ensure!(
        gw.camera(&s, UP, "cam-mute") == 0.0,
        "the silent camera is down"
    );

    gw.signal("TERM")?;
    let status = gw.wait(Duration::from_secs(30))?;
    ensure!(
        status.success(),
        "SIGTERM exits 0 ({status}); log:\n{}",
        gw.log_text()
    );

    // No credential anywhere; one line per state change, not per attempt.
    let log = gw.log_text();
    ensure!(
        !log.contains(secret) && !s.contains(secret),
        "the password leaked:\n{log}"
    );
    ensure!(
        log.contains("rtsp://***@127.0.0.1"),
        "the URL is shown redacted:\n{log}"
    );
    let downs = log
        .lines()
        .filter(|l| l.contains("camera down") && l.contains("\"cam-01\""))
        .count();
    ensure!(downs == 1, "cam-01's outage logged {downs} times:\n{log}");

    // The status topic: cam-01 down, then up; the silent camera down.
    let records = collect(
        &status_topic,
        10,
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await?;
    let states: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_slice(&r.payload).unwrap_or_default();
            (
                v["camera"].as_str().unwrap_or("").into(),
                v["state"].as_str().unwrap_or("").into(),
            )
        })
        .collect();
    let of = |c: &str| -> Vec<&str> {
        states
            .iter()
            .filter(|(k, _)| k == c)
            .map(|(_, s)| s.as_str())
            .collect()
    };
    ensure!(
        of("cam-01") == ["up", "down", "up"],
        "cam-01: {:?}",
        of("cam-01")
    );
    ensure!(of("cam-mute") == ["down"], "cam-mute: {:?}", of("cam-mute"));
    ensure!(of("cam-05") == ["up"], "cam-05: {:?}", of("cam-05"));

    // The console reads the same records: the site shows the silent camera offline, and
    // cam-01 (back) and the others not.
    console_shows_offline(&status_topic, &topics.violations, &all).await?;

    // The frames: the contract's headers, JPEGs, in order once per camera.
    let frames = read_frames(&brokers(), &topics.frames, Duration::from_secs(3))?;
    in_order_once(&frames)?;
    for f in &frames {
        ensure!(f.site == "site-gw" && f.head == "ffd8", "{f:?}");
    }
    let zones: Vec<_> = frames
        .iter()
        .filter(|f| f.camera == "cam-01")
        .map(|f| f.zone.clone())
        .collect();
    ensure!(
        zones.iter().all(|z| z.as_deref() == Some("kitchen")),
        "{zones:?}"
    );
    drop(silent);
    Ok(())
}

/// Starts `vigil console` (loopback, no sign-in) on the camera-status topic and waits until its
/// JSON and page agree with the gateway's records: `cam-mute` offline, `up` cameras not.
async fn console_shows_offline(status_topic: &str, events: &str, up: &[String]) -> Result {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["console", "--brokers", &brokers(), "--topic", events])
        .args([
            "--camera-status-topic",
            status_topic,
            "--observations-topic",
            "",
        ])
        .args([
            "--acks-topic",
            &format!("{events}.acks"),
            "--addr",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(
            log_dir().join(format!("{}.log", unique("gw-console"))),
        )?)
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let result = async {
        let addr = line
            .trim()
            .strip_prefix("console listening on ")
            .with_context(|| format!("console said {line:?}"))?
            .to_string();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let cams: serde_json::Value = reqwest::get(format!("http://{addr}/api/cameras"))
                .await?
                .json()
                .await?;
            let state = |c: &str| -> Option<String> {
                cams["sites"][0]["cameras"]
                    .as_array()?
                    .iter()
                    .find(|r| r["camera"] == c)
                    .and_then(|r| r["state"].as_str().map(String::from))
            };
            let seen = cams["sites"][0]["site"] == "site-gw"
                && state("cam-mute").as_deref() == Some("down")
                && up.iter().all(|c| state(c).as_deref() == Some("up"));
            if seen {
                break;
            }
            ensure!(Instant::now() < deadline, "the console's cameras: {cams}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let page = reqwest::get(format!("http://{addr}/"))
            .await?
            .text()
            .await?;
        ensure!(
            page.contains(r#"data-site="site-gw""#)
                && page.contains(r#"<li data-camera="cam-mute">"#)
                && page.contains("1 camera offline")
                && !page.contains(r#"<li data-camera="cam-01">"#),
            "{page}"
        );
        Ok(())
    }
    .await;
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_limits_the_buffer_drops_the_oldest_and_memory_stays_bounded() -> Result {
    // The brokers are unreachable (a port nothing listens on): every frame is buffered.
    let nowhere = format!("127.0.0.1:{}", free_port()?);
    let dir = tempfile::tempdir()?;
    let images = dir.path().join("images");
    std::fs::create_dir(&images)?;
    for i in 0..4 {
        std::fs::copy(image(i), images.join(format!("{i}.jpg")))?;
    }
    let mut file = String::from("site = \"site-full\"\nmax_fps = 40.0\n");
    for i in 0..4 {
        file +=
            &format!("[[camera]]\nid = \"cam-{i}\"\nurl = \"images\"\nfps = 20.0\nquality = 100\n");
    }
    let cameras = dir.path().join("site.toml");
    std::fs::write(&cameras, file)?;
    let buffer = dir.path().join("buffer");
    let max_bytes = 40u64 << 20;
    let mut gw = Gateway::start(
        &nowhere,
        "frames",
        "status",
        &cameras,
        &buffer,
        &["--buffer-max-bytes", &max_bytes.to_string()],
        &[],
    )?;
    let sum = |s: &str, reason: &str| -> f64 {
        (0..4)
            .map(|i| {
                scraped(
                    s,
                    &format!(
                    "vigil_gateway_frames_dropped_total{{camera=\"cam-{i}\",reason=\"{reason}\""
                ),
                )
                .unwrap_or(0.0)
            })
            .sum()
    };
    // Full, then three times as much again: the bytes held stay at the limit, memory flat.
    let deadline = Instant::now() + Duration::from_secs(90);
    let full_rss = loop {
        gw.alive("while buffering")?;
        let s = gw.scrape();
        if sum(&s, "buffer_full") > 0.0 {
            break gw.rss()?;
        }
        ensure!(Instant::now() < deadline, "the buffer never filled:\n{s}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let s0 = gw.scrape();
    let dropped0 = sum(&s0, "buffer_full");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let s = gw.scrape();
    let rss = gw.rss()?;
    let held = scraped(&s, "vigil_gateway_buffer_bytes").context("buffer bytes")?;
    ensure!(held <= max_bytes as f64, "{held} bytes held over the limit");
    ensure!(
        sum(&s, "buffer_full") > dropped0 + 50.0,
        "drops go on:\n{s}"
    );
    ensure!(
        sum(&s, "site_fps_cap") > 0.0,
        "the site's cap of 40 frames/s dropped some of 80:\n{s}"
    );
    ensure!(
        scraped(&s, "vigil_gateway_broker_reachable") == Some(0.0),
        "{s}"
    );
    ensure!(
        rss < full_rss + (48 << 20),
        "memory grew from {full_rss} to {rss} bytes while the buffer stayed full"
    );
    eprintln!("buffer full at {held} bytes; RSS {full_rss} -> {rss}");
    gw.signal("TERM")?;
    ensure!(
        gw.wait(Duration::from_secs(30))?.success(),
        "{}",
        gw.log_text()
    );

    // A restart keeps the buffer; with a 1 s age limit, everything it kept is too old.
    let mut gw = Gateway::start(
        &nowhere,
        "frames",
        "status",
        &cameras,
        &buffer,
        &[
            "--buffer-max-bytes",
            &max_bytes.to_string(),
            "--buffer-max-age-secs",
            "1",
        ],
        &[],
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        gw.alive("after the restart")?;
        let s = gw.scrape();
        if sum(&s, "buffer_age") > 100.0 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the kept frames were not aged out:\n{s}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(
        gw.log_text()
            .contains("buffered frames from an earlier run"),
        "{}",
        gw.log_text()
    );
    gw.signal("TERM")?;
    ensure!(
        gw.wait(Duration::from_secs(30))?.success(),
        "{}",
        gw.log_text()
    );
    Ok(())
}

/// A tiny HTTP camera: `/snap.jpg` (basic auth required) answers a JPEG, `/garbage` some
/// text. Serves until the test ends (a detached thread on a listener the test owns).
fn http_camera(jpeg: Vec<u8>) -> Result<u16> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = vec![0u8; 4096];
            let n = c.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let (status, kind, body) = if !req.to_ascii_lowercase().contains("authorization: basic")
            {
                ("401 Unauthorized", "text/plain", b"who are you".to_vec())
            } else if req.starts_with("GET /snap.jpg") {
                ("200 OK", "image/jpeg", jpeg.clone())
            } else {
                ("200 OK", "text/plain", b"not a picture".to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = c
                .write_all(head.as_bytes())
                .and_then(|_| c.write_all(&body));
        }
    });
    Ok(port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_snapshot_cameras_publish_and_garbage_is_counted() -> Result {
    let topics = create_topics(1).await?;
    let port = http_camera(face("grace_hopper.jpg"))?;
    let closed = free_port()?;
    let dir = tempfile::tempdir()?;
    let auth = "${SNAP_USER}:${SNAP_PASS}";
    let file = format!(
        "site = \"site-http\"\n\
         [[camera]]\nid = \"snap\"\nurl = \"http://{auth}@127.0.0.1:{port}/snap.jpg\"\nfps = 4.0\n\
         [[camera]]\nid = \"small\"\nurl = \"http://{auth}@127.0.0.1:{port}/snap.jpg\"\nfps = 2.0\nwidth = 160\n\
         [[camera]]\nid = \"junk\"\nurl = \"http://{auth}@127.0.0.1:{port}/garbage\"\nfps = 2.0\n\
         [[camera]]\nid = \"gone\"\nurl = \"http://127.0.0.1:{closed}/snap.jpg\"\n"
    );
    let cameras = dir.path().join("site.toml");
    std::fs::write(&cameras, file)?;
    let mut gw = Gateway::start(
        &brokers(),
        &topics.frames,
        &format!("{}.status", topics.frames),
        &cameras,
        &dir.path().join("buffer"),
        &[],
        &[("SNAP_USER", "viewer"), ("SNAP_PASS", "hunter2-secret")],
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let s = loop {
        gw.alive("while fetching snapshots")?;
        let s = gw.scrape();
        let garbage = scraped(
            &s,
            "vigil_gateway_frames_dropped_total{camera=\"junk\",reason=\"garbage\"",
        )
        .unwrap_or(0.0);
        if gw.camera(&s, PUBLISHED, "snap") >= 8.0
            && gw.camera(&s, PUBLISHED, "small") >= 2.0
            && garbage >= 2.0
            && gw.camera(&s, "vigil_gateway_camera_reconnects_total", "gone") >= 1.0
        {
            break s;
        }
        ensure!(
            Instant::now() < deadline,
            "snapshots not published:\n{s}\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    ensure!(gw.camera(&s, PUBLISHED, "junk") == 0.0, "{s}");
    ensure!(
        gw.camera(&s, UP, "gone") == 0.0 && gw.camera(&s, UP, "snap") == 1.0,
        "{s}"
    );
    gw.signal("TERM")?;
    ensure!(
        gw.wait(Duration::from_secs(30))?.success(),
        "{}",
        gw.log_text()
    );
    ensure!(!gw.log_text().contains("hunter2"), "{}", gw.log_text());
    let frames = read_frames(&brokers(), &topics.frames, Duration::from_secs(3))?;
    in_order_once(&frames)?;
    let original = face("grace_hopper.jpg").len() as u64;
    ensure!(frames
        .iter()
        .any(|f| f.camera == "snap" && f.bytes == original));
    ensure!(frames
        .iter()
        .filter(|f| f.camera == "small")
        .all(|f| f.bytes < original / 2));
    Ok(())
}

#[test]
fn a_bad_camera_file_stops_start_up_naming_the_camera_and_the_key() -> Result {
    let dir = tempfile::tempdir()?;
    let cameras = dir.path().join("site.toml");
    let cases = [
        (
            "site = \"s\"\n[[camera]]\nid = \"cam-01\"\nurl = \"rtsp://h/x\"\nfps = -1.0\n",
            "camera `cam-01`: key `fps`",
        ),
        (
            "site = \"s\"\n[[camera]]\nid = \"cam-02\"\nurl = \"rtsp://h/x\"\nfsp = 1.0\n",
            "camera `cam-02`: unknown field `fsp`",
        ),
        (
            "site = \"s\"\n[[camera]]\nid = \"cam-03\"\nurl = \"rtsp://${NO_SUCH_VAR_28}@h/x\"\n",
            "camera `cam-03`: key `url`: `${NO_SUCH_VAR_28}`",
        ),
    ];
    for (text, expected) in cases {
        std::fs::write(&cameras, text)?;
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["gateway", "--brokers", "127.0.0.1:1", "--cameras-file"])
            .arg(&cameras)
            .arg("--buffer-dir")
            .arg(dir.path().join("buffer"))
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.code() == Some(2) && stderr.contains(expected),
            "{expected}: exit {:?}\n{stderr}",
            out.status.code()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_stamps_a_backlog_as_footage_at_its_rate() -> Result {
    let topics = create_topics(2).await?;
    let before = vigil::contract::now_ms();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "gateway",
            "--brokers",
            &brokers(),
            "--frames-topic",
            &topics.frames,
        ])
        .arg("--source")
        .arg(repo().join("tests/data/faces"))
        .args([
            "--cameras",
            "2",
            "--frames",
            "4",
            "--fps",
            "1000",
            "--footage-fps",
            "2",
        ])
        .args(["--width", "160"])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames = read_frames(&brokers(), &topics.frames, Duration::from_secs(2))?;
    ensure!(frames.len() == 8, "{frames:?}");
    for camera in ["cam-0001", "cam-0002"] {
        let mut mine: Vec<&FrameSeen> = frames.iter().filter(|f| f.camera == camera).collect();
        mine.sort_by_key(|f| f.seq);
        let at: Vec<i64> = mine.iter().map(|f| f.captured_at).collect();
        // Four frames half a second apart, the footage ending when the simulator started.
        ensure!(
            at.windows(2).all(|w| (w[1] - w[0] - 500).abs() <= 1),
            "{camera}: {at:?}"
        );
        ensure!(
            at[0] >= before - 2_100 && at[3] < vigil::contract::now_ms(),
            "{camera}: {at:?} (started after {before})"
        );
    }
    Ok(())
}
