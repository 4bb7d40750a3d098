//! Evidence a manager can look at, through a real worker, a real broker, a real object store (a
//! local directory through `object_store`) and a real browser (Debian's Chromium, headless):
//! an unmasked cook's episode opens with an `evidence_uri`; the picture exists, is a JPEG with
//! the violation outlined in red, and the worker's own face detector finds no face in it while
//! it finds the face in the original frame; a worker killed with SIGKILL and replaced does not
//! make a second picture; `vigil console` shows the episode with its picture in Chromium and
//! drops it once the episode resolves. Screenshots are kept in `target/test-logs/`.

mod common;

use std::collections::HashSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use common::*;
use opencv::prelude::*;
use vigil::codec::event_codec;
use vigil::contract::ViolationEvent;

const RULES: &str = r#"
[rules.mask_required]
detector = "face-blazeface"
classifier = "mask"
violation_label = "no_mask"

[rules.mask_required.episode]
half_life_secs = 1.0
min_open_secs = 2.0
clear_secs = 2.0
cooldown_secs = 3.0
heartbeat_secs = 30.0
silence_timeout_secs = 120.0

[[assign]]
rules = ["mask_required"]
"#;

/// Scene start (2026-04-19): a real capture time, in the past.
const T0: i64 = 1_776_600_000_000;

fn events(got: &[Got]) -> Result<Vec<ViolationEvent>> {
    let codec = event_codec();
    got.iter()
        .map(|g| codec.decode(&g.payload).context("event decodes"))
        .collect()
}

fn files_under(p: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

/// Pixels that are the outline's pure red.
fn red_pixels(img: &opencv::core::Mat) -> Result<usize> {
    let mut n = 0;
    for y in 0..img.rows() {
        for x in 0..img.cols() {
            let p = img.at_2d::<opencv::core::Vec3b>(y, x)?;
            if p[2] > 200 && p[1] < 60 && p[0] < 60 {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Headless Chromium: the DOM after scripts ran, and a screenshot.
fn chromium(url: &str, screenshot: &Path) -> Result<String> {
    let profile = tempfile::tempdir()?;
    let base = |c: &mut Command| {
        c.args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .stdin(Stdio::null());
    };
    // A hard limit too: a browser that never settles must fail the test, not hang it.
    let mut dump = Command::new("timeout");
    dump.args(["60", "chromium"]);
    base(&mut dump);
    let out = dump
        .args(["--virtual-time-budget=4000", "--dump-dom", url])
        .output()
        .context("chromium (Debian package chromium; scripts/bootstrap.sh installs it)")?;
    ensure!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut shot = Command::new("timeout");
    shot.args(["60", "chromium"]);
    base(&mut shot);
    let status = shot
        .args(["--virtual-time-budget=4000", "--window-size=1280,900"])
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg(url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    ensure!(status.success() && screenshot.exists(), "no screenshot");
    Ok(String::from_utf8(out.stdout)?)
}

/// `vigil console`, killed when dropped.
struct Console {
    child: Child,
    addr: String,
}

impl Console {
    fn start(topic: &str, evidence_url: &str) -> Result<Console> {
        let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["console", "--brokers", &brokers(), "--topic", topic])
            .args(["--addr", "127.0.0.1:0", "--evidence-url", evidence_url])
            .args(["--refresh-secs", "2"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(
                log_dir().join(format!("{}.log", unique("console"))),
            )?)
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("console listening on ")
            .with_context(|| format!("console said {line:?}"))?
            .to_string();
        Ok(Console { child, addr })
    }

    /// Open episodes (ids) from the JSON endpoint.
    fn open(&self) -> Result<Vec<serde_json::Value>> {
        let v: serde_json::Value = serde_json::from_str(&get(&self.addr, "/api/open")?)?;
        Ok(v["sites"]
            .as_array()
            .context("sites")?
            .iter()
            .flat_map(|s| s["episodes"].as_array().cloned().unwrap_or_default())
            .collect())
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_episode_opens_with_a_picture_of_hidden_faces_that_the_console_shows_until_resolved(
) -> Result {
    let topics = create_topics(1).await?;
    let store = tempfile::tempdir()?;
    let url = format!("file://{}/evidence", store.path().display());
    let rules = tempfile::NamedTempFile::new()?;
    std::fs::write(rules.path(), RULES)?;
    let group = unique("g");
    let args = [
        "--rules",
        rules.path().to_str().unwrap(),
        "--evidence-url",
        &url,
    ];

    // Eight seconds of an unmasked cook.
    produce(&topics.frames, &scene("cam-e", T0, 0, &"V".repeat(16))).await?;
    let mut w = Worker::start(&topics, &group, &args)?;
    let got = collect(
        &topics.violations,
        1,
        Duration::from_secs(120),
        Duration::from_secs(1),
    )
    .await
    .with_context(|| w.log_text())?;
    let opened = events(&got)?
        .into_iter()
        .find(|e| e.kind.as_str() == "opened")
        .context("an opened event")?;
    // Killed at once, and replaced: the frames since the last commit are judged again.
    w.signal("KILL")?;
    let _ = w.wait(Duration::from_secs(10));
    let w = Worker::start(&topics, &group, &args)?;

    let uri = opened
        .evidence_uri
        .clone()
        .context("the opened event has an evidence_uri")?;
    ensure!(uri.starts_with(&url) && uri.ends_with(".jpg"), "{uri}");
    let path = PathBuf::from(uri.strip_prefix("file://").unwrap());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !path.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} never written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let picture = std::fs::read(&path)?;
    let img = opencv::imgcodecs::imdecode(
        &opencv::core::Vector::<u8>::from_slice(&picture),
        opencv::imgcodecs::IMREAD_COLOR,
    )?;
    ensure!(img.cols() > 100 && img.rows() > 100, "a JPEG picture");
    ensure!(red_pixels(&img)? > 200, "the violation is outlined in red");

    // The worker's face detector finds the face in the original frame and none in the picture.
    let evidence_frame = frame("cam-picture", "site-009", 0, picture.clone());
    let original_frame = frame("cam-original", "site-009", 0, face("grace_hopper.jpg"));
    produce(&topics.frames, &[evidence_frame, original_frame]).await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut in_picture, mut in_original) = (None, None);
    while in_picture.is_none() || in_original.is_none() {
        ensure!(
            Instant::now() < deadline,
            "no observations of the two frames\n{}",
            w.log_text()
        );
        for g in collect(
            &topics.observations,
            1,
            Duration::from_secs(5),
            Duration::from_secs(1),
        )
        .await?
        {
            let o = g.observation()?;
            match o.camera.as_str() {
                "cam-picture" => in_picture = Some(o.detections.len()),
                "cam-original" => in_original = Some(o.detections.len()),
                _ => {}
            }
        }
    }
    ensure!(
        in_original >= Some(1),
        "the original frame shows a face: {in_original:?}"
    );
    ensure!(
        in_picture == Some(0),
        "no face is found in the picture: {in_picture:?}"
    );

    // The console shows the open episode with its picture, in a browser.
    let console = Console::start(&topics.violations, &url)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = console.open()?;
        if open
            .iter()
            .any(|e| e["episode_id"] == opened.episode_id.as_str())
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the console never showed the episode: {open:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let page = format!("http://{}/", console.addr);
    let dom = chromium(&page, &log_dir().join("console-open.png"))?;
    let id = &opened.episode_id;
    ensure!(
        dom.contains(&format!(
            r#"<article class="episode minor" data-episode="{id}""#
        )) || dom.contains(&format!(r#"data-episode="{id}""#)),
        "the page shows the episode: {dom}"
    );
    let loaded = dom
        .split("<img ")
        .skip(1)
        .find(|tag| tag.contains(&format!(r#"data-episode="{id}""#)))
        .and_then(|tag| tag.split(r#"data-loaded=""#).nth(1))
        .and_then(|rest| rest.split('"').next())
        .and_then(|w| w.parse::<i32>().ok());
    ensure!(
        loaded == Some(img.cols()),
        "the browser loaded the picture at its width ({}): {loaded:?}\n{dom}",
        img.cols()
    );

    // The cook puts a mask on: the episode resolves and leaves the page.
    produce(
        &topics.frames,
        &scene("cam-e", T0 + 8_000, 16, &"C".repeat(20)),
    )
    .await?;
    let deadline = Instant::now() + Duration::from_secs(90);
    while console
        .open()?
        .iter()
        .any(|e| e["episode_id"] == id.as_str())
    {
        if Instant::now() > deadline {
            bail!("the episode never resolved on the page\n{}", w.log_text());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let dom = chromium(&page, &log_dir().join("console-resolved.png"))?;
    ensure!(!dom.contains(&format!(r#"data-episode="{id}""#)), "{dom}");
    ensure!(dom.contains("No open violations"), "{dom}");

    // The replacement replayed frames, yet there is one picture per event that has one.
    let all = events(
        &collect(
            &topics.violations,
            2,
            Duration::from_secs(30),
            Duration::from_secs(2),
        )
        .await?,
    )?;
    let uris: HashSet<String> = all.iter().filter_map(|e| e.evidence_uri.clone()).collect();
    let files = files_under(&store.path().join("evidence"));
    ensure!(
        files.len() == uris.len(),
        "one object per event id: {files:?} vs {uris:?}"
    );
    for u in &uris {
        ensure!(
            Path::new(u.strip_prefix("file://").unwrap()).exists(),
            "{u}"
        );
    }
    Ok(())
}
