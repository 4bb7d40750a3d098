//! Violation episodes through real workers and a real broker: replaying the same frames gives
//! the same events, a flickering camera gives one episode, workers with the shipped defaults
//! stopped (SIGTERM) or killed (SIGKILL) in the middle of a scene are replaced without changing
//! any event (after deduplication by event_id the events equal those of an undisturbed run),
//! sites cannot touch each other's cameras, a camera with a fast clock ends no other camera's
//! episode, the previous release's state records restore, `vigil alerts` shows each event
//! once, and an independent Avro implementation (fastavro) decodes every event type.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context};
use common::*;
use vigil::{codec::event_codec, contract::ViolationEvent};

/// Short episode clocks so that a scene plays out in a few dozen frames.
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
heartbeat_secs = 4.0
silence_timeout_secs = 120.0

[[assign]]
rules = ["mask_required"]
"#;

fn rules_file() -> Result<tempfile::NamedTempFile> {
    let f = tempfile::NamedTempFile::new()?;
    std::fs::write(f.path(), RULES)?;
    Ok(f)
}

/// Decoded events of a topic, in order, once `until` holds for them.
async fn events_until(
    topic: &str,
    min: usize,
    timeout: Duration,
) -> Result<Vec<(ViolationEvent, Vec<u8>)>> {
    let codec = event_codec();
    let got = collect(topic, min, timeout, Duration::from_secs(2)).await?;
    got.into_iter()
        .map(|g| {
            Ok((
                codec.decode(&g.payload).context("event decodes")?,
                g.payload,
            ))
        })
        .collect()
}

/// (event_id, kind, episode_id) of each distinct event, in first-seen order.
fn dedup(events: &[(ViolationEvent, Vec<u8>)]) -> Vec<(String, String, String)> {
    let mut seen = HashSet::new();
    events
        .iter()
        .filter(|(e, _)| seen.insert(e.event_id.clone()))
        .map(|(e, _)| (e.event_id.clone(), e.kind.to_string(), e.episode_id.clone()))
        .collect()
}

/// Runs frames through a fresh pipeline and returns its events.
async fn run_once(recs: &[Rec], expect: usize) -> Result<Vec<(ViolationEvent, Vec<u8>)>> {
    Ok(run_on_topics(recs, expect).await?.1)
}

/// Runs frames through a fresh pipeline; returns its topics and events.
async fn run_on_topics(
    recs: &[Rec],
    expect: usize,
) -> Result<(Topics, Vec<(ViolationEvent, Vec<u8>)>)> {
    run_with(recs, expect, Worker::start).await
}

/// Runs frames through a fresh pipeline whose worker `start` starts; returns its topics and
/// events.
async fn run_with(
    recs: &[Rec],
    expect: usize,
    start: fn(&Topics, &str, &[&str]) -> Result<Worker>,
) -> Result<(Topics, Vec<(ViolationEvent, Vec<u8>)>)> {
    let topics = create_topics(2).await?;
    produce(&topics.frames, recs).await?;
    let rules = rules_file()?;
    let w = start(
        &topics,
        &unique("g"),
        &["--rules", rules.path().to_str().unwrap()],
    )?;
    let events = events_until(&topics.violations, expect, Duration::from_secs(120))
        .await
        .with_context(|| w.log_text())?;
    Ok((topics, events))
}

/// Scene start (2026-04-19): a real capture time, in the past, as the frame contract requires.
const T0: i64 = 1_776_600_000_000;

/// A scene start for workers with the shipped defaults: two minutes ahead of now (the frame
/// contract allows five), so that no frame of a test that lasts a few minutes is older than the
/// default staleness bound (60 s) when it is judged, and load shedding judges them all.
fn fresh_t0() -> i64 {
    vigil::contract::now_ms() + 120_000
}

/// Runs frames through a fresh pipeline whose worker has the shipped defaults.
async fn run_default(recs: &[Rec], expect: usize) -> Result<Vec<(ViolationEvent, Vec<u8>)>> {
    Ok(run_with(recs, expect, Worker::start_default).await?.1)
}

/// One JSON value per line of a command's output.
fn json_lines(out: &[u8]) -> Result<Vec<serde_json::Value>> {
    Ok(std::str::from_utf8(out)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?)
}

fn violation_then_clear() -> Vec<Rec> {
    // 8 s of violation, then 10 s masked.
    let mut recs = scene("cam-x", T0, 0, &"V".repeat(16));
    recs.extend(scene("cam-x", T0 + 8_000, 16, &"C".repeat(20)));
    recs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_same_frames_gives_identical_events_that_fastavro_reads() -> Result {
    let recs = violation_then_clear();
    let first = run_once(&recs, 3).await?;
    let second = run_once(&recs, 3).await?;
    let kinds: Vec<&str> = first.iter().map(|(e, _)| e.kind.as_str()).collect();
    ensure!(
        kinds.first() == Some(&"opened") && kinds.last() == Some(&"resolved"),
        "{kinds:?}"
    );
    ensure!(
        kinds.contains(&"updated"),
        "a heartbeat while open: {kinds:?}"
    );
    ensure!(kinds.iter().filter(|k| **k == "opened").count() == 1);
    let strip = |v: &[(ViolationEvent, Vec<u8>)]| -> Vec<ViolationEvent> {
        // The runs differ only in their topic names and worker ids.
        v.iter()
            .map(|(e, _)| {
                let mut e = ViolationEvent {
                    worker: String::new(),
                    ..e.clone()
                };
                if let Some(ev) = e.evidence.as_mut() {
                    ev.topic.clear();
                }
                e
            })
            .collect()
    };
    ensure!(
        strip(&first) == strip(&second),
        "replay differs:\n{:?}\n{:?}",
        strip(&first),
        strip(&second)
    );
    let (opened, resolved) = (&first[0].0, &first.last().unwrap().0);
    ensure!(opened.episode_id == resolved.episode_id);
    ensure!(resolved.reason.as_deref() == Some("cleared") && resolved.resolved_at.is_some());
    ensure!(
        opened.opened_at >= T0 && opened.opened_at < T0 + 4_000,
        "event time, not processing time"
    );
    let ev = opened.evidence.as_ref().context("evidence")?;
    ensure!(
        ev.captured_at >= T0 && ev.captured_at < T0 + 8_000,
        "evidence points at a violation frame"
    );
    ensure!(
        opened.models.iter().any(|m| m.name == "mask")
            && opened.models.iter().any(|m| m.name == "face-blazeface")
    );

    // fastavro decodes every event to the same fields.
    let schema = repo().join("schemas/violation_event.avsc");
    let payloads: Vec<&[u8]> = first.iter().map(|(_, b)| b.as_slice()).collect();
    let decoded = decode_outside("single", schema.to_str().unwrap(), &payloads)?;
    let mut kinds_seen = HashSet::new();
    for (d, (e, _)) in decoded.iter().zip(&first) {
        ensure!(
            d["event_id"] == e.event_id.as_str()
                && d["kind"] == e.kind.as_str()
                && d["episode_id"] == e.episode_id.as_str()
        );
        ensure!(d["camera"] == "cam-x" && d["rule"] == "mask_required" && d["frames"] == e.frames);
        ensure!(d["sequence"] == e.sequence.context("sequence")?);
        kinds_seen.insert(e.kind);
    }
    ensure!(
        kinds_seen.len() == 3,
        "fastavro read opened, updated and resolved: {kinds_seen:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flickering_camera_yields_one_episode() -> Result {
    // A violation interrupted by single masked frames and moments with nobody in view.
    let script = "VVVVCVVUVVVCVVVUUVVVCVVVVVCVVVUVVVV";
    let mut recs = scene("cam-f", T0, 0, script);
    recs.extend(scene(
        "cam-f",
        T0 + script.len() as i64 * 500,
        script.len() as u64,
        &"C".repeat(20),
    ));
    let events = run_once(&recs, 2).await?;
    let main: Vec<_> = events
        .iter()
        .filter(|(e, _)| e.kind != "updated")
        .map(|(e, _)| e.kind.as_str())
        .collect();
    ensure!(
        main == ["opened", "resolved"],
        "one episode, not many: {main:?}"
    );
    Ok(())
}

/// Every deploy restarts workers mid-episode, and every scale-out moves partitions. State is
/// checkpointed in offset order before offsets are committed, so however often a worker stops
/// and another takes over, or a newcomer takes partitions away, the episode keeps its id and,
/// after deduplication, the events equal an undisturbed run's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_rebalances_mid_episode_never_change_the_episode_id() -> Result {
    // A violation that clears, then relapses (a second episode), judged by workers with the
    // shipped defaults (frames stamped near now, so that none is stale).
    let script = format!("{}{}{}", "V".repeat(16), "C".repeat(20), "V".repeat(12));
    let all = scene("cam-r", fresh_t0(), 0, &script);
    let undisturbed = dedup(&run_default(&all, 4).await?);
    let opened = undisturbed.iter().filter(|e| e.1 == "opened").count();
    ensure!(opened == 2, "the scene opens two episodes: {undisturbed:?}");

    let topics = create_topics(2).await?;
    let group = unique("g");
    let rules = rules_file()?;
    let args = ["--rules", rules.path().to_str().unwrap()];
    let mut current = Worker::start_default(&topics, &group, &args)?;
    let mut sent = 0;
    for (round, chunk) in all.chunks(8).enumerate() {
        produce(&topics.frames, chunk).await?;
        sent += chunk.len();
        collect(
            &topics.observations,
            sent,
            Duration::from_secs(120),
            Duration::ZERO,
        )
        .await
        .with_context(|| format!("round {round}:\n{}", current.log_text()))?;
        let next = Worker::start_default(&topics, &group, &args)?;
        if round % 2 == 1 {
            // A rebalance: the newcomer joins while this worker runs, taking partitions away.
            wait_for(
                "the newcomer to be given partitions",
                Duration::from_secs(90),
                || next.assigned().is_some_and(|p| !p.is_empty()),
            )
            .await
            .with_context(|| format!("round {round}:\n{}", next.log_text()))?;
        }
        // Then (or at once: a restart) this worker stops and the newcomer takes everything.
        current.signal("TERM")?;
        let status = current.wait(Duration::from_secs(40))?;
        ensure!(
            status.success(),
            "round {round}: SIGTERM exits 0:\n{}",
            current.log_text()
        );
        current = next;
    }
    let events = events_until(
        &topics.violations,
        undisturbed.len(),
        Duration::from_secs(30),
    )
    .await?;
    let got = dedup(&events);
    ensure!(
        got == undisturbed,
        "after dedup by event_id:\n{got:?}\nundisturbed:\n{undisturbed:?}"
    );
    let ids: BTreeSet<&str> = events.iter().map(|(e, _)| e.episode_id.as_str()).collect();
    ensure!(
        ids.len() == 2,
        "two episode ids (the relapse's) across restarts and rebalances: {ids:?}"
    );
    current.signal("TERM")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_episode_keeps_the_episode_and_loses_nothing() -> Result {
    // The shipped defaults, frames stamped near now.
    let t0 = fresh_t0();
    let phase1 = scene("cam-k", t0, 0, &"V".repeat(16));
    let phase2 = scene("cam-k", t0 + 8_000, 16, &"C".repeat(20));
    let undisturbed = {
        let all: Vec<Rec> = phase1.iter().chain(&phase2).cloned().collect();
        dedup(&run_default(&all, 3).await?)
    };

    let topics = create_topics(2).await?;
    let group = unique("g");
    let rules = rules_file()?;
    let args = ["--rules", rules.path().to_str().unwrap()];
    let mut a = Worker::start_default(&topics, &group, &args)?;
    produce(&topics.frames, &phase1).await?;
    events_until(&topics.violations, 1, Duration::from_secs(120))
        .await
        .with_context(|| a.log_text())?;
    a.signal("KILL")?;
    a.wait(Duration::from_secs(10))?;
    produce(&topics.frames, &phase2).await?;
    let b = Worker::start_default(&topics, &group, &args)?;
    let all = events_until(
        &topics.violations,
        undisturbed.len(),
        Duration::from_secs(120),
    )
    .await
    .with_context(|| b.log_text())?;
    let got = dedup(&all);
    ensure!(
        got == undisturbed,
        "after dedup by event_id:\n{got:?}\nundisturbed:\n{undisturbed:?}"
    );
    let opened: BTreeMap<&str, usize> =
        all.iter()
            .filter(|(e, _)| e.kind == "opened")
            .fold(BTreeMap::new(), |mut m, (e, _)| {
                *m.entry(e.episode_id.as_str()).or_default() += 1;
                m
            });
    ensure!(opened.len() == 1, "no second episode id: {opened:?}");
    ensure!(
        b.log_text().contains("episode state restored"),
        "the survivor restored the state"
    );
    ensure!(
        all.iter()
            .any(|(e, _)| e.kind == "resolved" && e.worker == b.id),
        "the survivor resolved it"
    );
    Ok(())
}

/// Round-robin over several cameras' frames, as a partition holds them.
fn interleave(lists: &[&[Rec]]) -> Vec<Rec> {
    let longest = lists.iter().map(|l| l.len()).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| lists.iter().filter_map(move |l| l.get(i).cloned()))
        .collect()
}

/// One partition, one worker with the shipped defaults, frames stamped now:
/// - site A's camera shows a violation while frames claiming site B with the same camera id
///   arrive (a token of site B can send them): each is dead-lettered `site_conflict`, and
///   site A's episode is neither cleared nor re-labelled;
/// - a camera whose clock is 4 minutes fast sends beside it (the silence timeout is 2 minutes):
///   it resolves no other camera's episode;
/// - an episode open in a state record of the previous format (version 1, keyed by camera
///   alone) is restored and resolved under its id when its camera's frames clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sites_cannot_touch_each_other_and_a_fast_clock_ends_no_other_episode() -> Result {
    use rdkafka::producer::FutureRecord;
    let topics = create_topics(1).await?;
    let t0 = vigil::contract::now_ms();
    let legacy_id = "5eed0000000000000000000000000001";
    let v1 = serde_json::json!({
        "camera": "cam-l", "rule": "mask_required", "site": "site-009", "zone": "kitchen",
        "applied_offset": -1, "models": [{"name": "face-blazeface", "version": "1"}],
        "state": {
            "level": 0.9, "last_frame_ms": t0 - 500, "last_evidence_ms": t0 - 500,
            "above_since_ms": t0 - 10_000, "below_since_ms": null,
            "phase": {"phase": "open", "episode": {
                "id": legacy_id, "opened_at_ms": t0 - 10_000, "last_seen_ms": t0 - 500,
                "peak_level": 0.95, "level_sum": 9.0, "frames": 10, "severity": "minor",
                "events": 1, "last_event_ms": t0 - 8_000, "evidence": null}},
            "late_frames": 0}
    });
    let key = serde_json::to_string(&["cam-l", "mask_required"])?;
    let payload = serde_json::to_vec(&v1)?;
    producer()?
        .send(
            FutureRecord::to(&topics.state)
                .key(&key)
                .payload(&payload)
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;

    let a = scene("cam-a", t0, 0, &"V".repeat(24));
    let mut intruder = scene("cam-a", t0 + 6_000, 100, &"C".repeat(12));
    for r in &mut intruder {
        r.headers[0].1 = b"site-010".to_vec();
    }
    let fast = scene("cam-fast", t0 + 240_000, 0, &"C".repeat(12));
    let legacy = scene("cam-l", t0, 0, &"C".repeat(24));
    let frames = interleave(&[&a, &intruder, &fast, &legacy]);
    produce(&topics.frames, &frames).await?;
    let rules = rules_file()?;
    let w = Worker::start_default(
        &topics,
        &unique("g"),
        &["--rules", rules.path().to_str().unwrap()],
    )?;
    let judged = a.len() + fast.len() + legacy.len();
    collect(
        &topics.observations,
        judged,
        Duration::from_secs(120),
        Duration::ZERO,
    )
    .await
    .with_context(|| w.log_text())?;
    let dead = collect(
        &topics.dlq,
        intruder.len(),
        Duration::from_secs(30),
        Duration::from_secs(1),
    )
    .await
    .with_context(|| w.log_text())?;
    ensure!(
        dead.len() == intruder.len()
            && dead
                .iter()
                .all(|d| d.header("reason").as_deref() == Some("site_conflict")),
        "every frame claiming site-010 for site-009's camera is dead-lettered site_conflict: {:?}",
        dead.iter().map(|d| d.header("reason")).collect::<Vec<_>>()
    );
    let events = events_until(&topics.violations, 2, Duration::from_secs(30))
        .await
        .with_context(|| w.log_text())?;
    let of = |camera: &str| -> Vec<&ViolationEvent> {
        events
            .iter()
            .map(|(e, _)| e)
            .filter(|e| e.camera == camera && e.kind != "updated")
            .collect()
    };
    let a_events = of("cam-a");
    ensure!(
        a_events.len() == 1 && a_events[0].kind == "opened" && a_events[0].site == "site-009",
        "site-009's cam-a opened once and was neither resolved nor re-labelled: {a_events:?}"
    );
    ensure!(of("cam-fast").is_empty(), "the fast camera is compliant");
    ensure!(
        events.iter().all(|(e, _)| e.site == "site-009"),
        "no event for site-010"
    );
    let l = of("cam-l");
    ensure!(
        l.len() == 1
            && l[0].kind == "resolved"
            && l[0].episode_id == legacy_id
            && l[0].reason.as_deref() == Some("cleared"),
        "the version 1 episode was restored and resolved under its id: {l:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigil_alerts_shows_each_event_once() -> Result {
    let (topics, events) = run_on_topics(&violation_then_clear(), 3).await?;
    // Publish a repeat of the first event, as a worker restarting after a crash may.
    let repeat = Rec {
        key: Some(b"cam-x".to_vec()),
        headers: vec![],
        payload: events[0].1.clone(),
    };
    produce(&topics.violations, &[repeat]).await?;
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "alerts",
            "--brokers",
            &brokers(),
            "--topic",
            &topics.violations,
        ])
        .args(["--group", &unique("alerts"), "--idle-secs", "8", "--json"])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout)?;
    let ids: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["event_id"].as_str())
        .collect();
    let unique_ids: HashSet<&str> = ids.iter().copied().collect();
    ensure!(
        ids.len() == unique_ids.len() && ids.len() == dedup(&events).len(),
        "each event once: {ids:?}"
    );
    ensure!(String::from_utf8_lossy(&out.stderr).contains("1 repeats suppressed"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigil_alerts_posts_each_event_to_a_webhook_retrying_failures() -> Result {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (topics, events) = run_on_topics(&violation_then_clear(), 3).await?;

    // A webhook that fails its first request with 503, then accepts; it records the bodies.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hooks/vigil", listener.local_addr()?);
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<serde_json::Value>::new()));
    let server = {
        let bodies = bodies.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut s, _)) = listener.accept().await {
                n += 1;
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let k = s.read(&mut chunk).await.unwrap_or(0);
                    if k == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..k]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (name, value) = l.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length").then_some(value)
                            })
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if body.len() >= len {
                            if n > 1 {
                                bodies
                                    .lock()
                                    .unwrap()
                                    .push(serde_json::from_str(&body[..len]).unwrap());
                            }
                            break;
                        }
                    }
                }
                let status = if n == 1 {
                    "503 Service Unavailable"
                } else {
                    "204 No Content"
                };
                let _ = s
                    .write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        })
    };
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "alerts",
            "--brokers",
            &brokers(),
            "--topic",
            &topics.violations,
        ])
        .args([
            "--group",
            &unique("alerts"),
            "--idle-secs",
            "8",
            "--webhook",
            &url,
        ])
        .output()
        .await?;
    server.abort();
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = bodies.lock().unwrap().clone();
    let ids: Vec<&str> = got.iter().filter_map(|b| b["event_id"].as_str()).collect();
    let want: Vec<String> = dedup(&events).into_iter().map(|(id, _, _)| id).collect();
    ensure!(
        ids == want,
        "each event posted once, in order, after a retry: {ids:?} vs {want:?}"
    );
    ensure!(
        got[0]["camera"] == "cam-x"
            && got[0]["kind"] == "opened"
            && got[0]["episode_id"].is_string()
    );
    ensure!(String::from_utf8_lossy(&out.stderr).contains("webhook failed, retrying"));
    Ok(())
}

/// The schema-registry stand-in (`tests/tools/registry.py`; see its header for why a stand-in),
/// killed when dropped.
struct RegistryProcess {
    child: std::process::Child,
    url: String,
}

impl RegistryProcess {
    fn start() -> Result<RegistryProcess> {
        use std::io::BufRead;
        let mut child = Command::new(python())
            .arg(repo().join("tests/tools/registry.py"))
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let port = line
            .trim()
            .strip_prefix("listening ")
            .with_context(|| format!("registry said {line:?}"))?;
        Ok(RegistryProcess {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }

    /// GET a path; the JSON answer.
    async fn get(&self, path: &str) -> Result<serde_json::Value> {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.url))
            .timeout(Duration::from_secs(5))
            .send()
            .await?;
        ensure!(r.status().is_success(), "{path}: {}", r.status());
        Ok(r.json().await?)
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_schema_registry_records_use_the_confluent_wire_format() -> Result {
    let registry = RegistryProcess::start()?;
    let topics = create_topics(2).await?;

    // An older producer, outside vigil, published an event with version 1 of the schema; its
    // serializer registered version 1 under the topic's subject.
    let v1_event = serde_json::json!({
        "event_id": "old-1", "kind": "opened", "episode_id": "old-episode", "site": "site-009",
        "camera": "cam-old", "zone": null, "rule": "mask_required", "severity": "minor",
        "reason": null, "opened_at": T0, "last_seen_at": T0, "resolved_at": null,
        "event_time": T0, "peak_level": 0.9, "mean_level": 0.8, "frames": 3, "evidence": null,
        "models": [], "worker": "an-older-worker"
    });
    let out = Command::new(python())
        .arg(repo().join("tests/tools/confluent_produce.py"))
        .args([&brokers(), &topics.violations, &registry.url])
        .arg(repo().join("schemas/history/violation_event.v1.avsc"))
        .args(["cam-old", &v1_event.to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "confluent_produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v1_id: u32 = String::from_utf8(out.stdout)?.trim().parse()?;
    // And another with version 2 (which has `sequence` but no `evidence_uri`).
    let mut v2_event = v1_event.clone();
    v2_event["event_id"] = "old-2".into();
    v2_event["camera"] = "cam-old2".into();
    v2_event["sequence"] = 0.into();
    let out = Command::new(python())
        .arg(repo().join("tests/tools/confluent_produce.py"))
        .args([&brokers(), &topics.violations, &registry.url])
        .arg(repo().join("schemas/history/violation_event.v2.avsc"))
        .args(["cam-old2", &v2_event.to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "confluent_produce v2: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v2_id: u32 = String::from_utf8(out.stdout)?.trim().parse()?;

    produce(&topics.frames, &violation_then_clear()).await?;
    let rules = rules_file()?;
    let w = Worker::start(
        &topics,
        &unique("g"),
        &[
            "--rules",
            rules.path().to_str().unwrap(),
            "--schema-registry",
            &registry.url,
        ],
    )?;
    let observations = collect(
        &topics.observations,
        36,
        Duration::from_secs(60),
        Duration::from_secs(1),
    )
    .await
    .with_context(|| w.log_text())?;

    let got = collect(
        &topics.violations,
        5,
        Duration::from_secs(120),
        Duration::from_secs(2),
    )
    .await
    .with_context(|| w.log_text())?;
    // The worker registered the current schemas under <topic>-value: version 3 of the events'
    // subject, version 1 of the observations'.
    let subject = format!("{}-value", topics.violations);
    let versions = registry
        .get(&format!("/subjects/{subject}/versions"))
        .await?;
    ensure!(
        versions == serde_json::json!([1, 2, 3]),
        "{subject}: {versions}"
    );
    let latest = registry
        .get(&format!("/subjects/{subject}/versions/latest"))
        .await?;
    let v3_id = latest["id"].as_u64().context("id")? as u32;
    ensure!(v3_id != v1_id && v3_id != v2_id && v1_id != v2_id);
    let registered: serde_json::Value =
        serde_json::from_str(latest["schema"].as_str().context("schema")?)?;
    let committed: serde_json::Value =
        serde_json::from_str(vigil::codec::avro::VIOLATION_EVENT.current)?;
    ensure!(
        registered == committed,
        "the committed schema was registered"
    );
    let obs_subject = format!("{}-value", topics.observations);
    let obs_latest = registry
        .get(&format!("/subjects/{obs_subject}/versions/latest"))
        .await?;
    let obs_id = obs_latest["id"].as_u64().context("id")? as u32;

    // Every record carries the Confluent framing with its schema's id.
    let framed =
        |bytes: &[u8], id: u32| bytes.len() > 5 && bytes[0] == 0 && bytes[1..5] == id.to_be_bytes();
    // The outside record and the worker's are on different partitions (keys cam-old, cam-x):
    // nothing below depends on the order between them. The worker's are in order (one key).
    ensure!(
        got.iter().filter(|g| framed(&g.payload, v1_id)).count() == 1
            && got.iter().filter(|g| framed(&g.payload, v2_id)).count() == 1,
        "one version-1 record and one version-2 record"
    );
    ensure!(got.iter().all(|g| framed(&g.payload, v1_id)
        || framed(&g.payload, v2_id)
        || framed(&g.payload, v3_id)));
    ensure!(observations.iter().all(|g| framed(&g.payload, obs_id)));

    // confluent-kafka's deserializer reads every record, old and new, through the registry.
    let payloads: Vec<&[u8]> = got.iter().map(|g| g.payload.as_slice()).collect();
    let outside = decode_outside("registry", &registry.url, &payloads)?;
    let (old, new): (Vec<_>, Vec<_>) = outside
        .iter()
        .partition(|d| d["camera"] == "cam-old" || d["camera"] == "cam-old2");
    ensure!(
        old.len() == 2
            && old
                .iter()
                .any(|d| d["event_id"] == "old-1" && d.get("sequence").is_none())
            && old
                .iter()
                .any(|d| d["event_id"] == "old-2" && d.get("evidence_uri").is_none()),
        "{old:?}"
    );
    let kinds: Vec<&str> = new.iter().filter_map(|d| d["kind"].as_str()).collect();
    ensure!(
        kinds.first() == Some(&"opened") && kinds.last() == Some(&"resolved"),
        "{kinds:?}"
    );
    for (i, d) in new.iter().enumerate() {
        ensure!(d["camera"] == "cam-x" && d["sequence"] == i as i64, "{d}");
    }
    let payloads: Vec<&[u8]> = observations.iter().map(|g| g.payload.as_slice()).collect();
    let outside = decode_outside("registry", &registry.url, &payloads)?;
    ensure!(outside
        .iter()
        .all(|d| d["camera"] == "cam-x" && d["rules"][0]["rule"] == "mask_required"));

    // `vigil alerts` reads all three versions through the registry: the v1 event with no
    // sequence, the v1 and v2 events with no evidence_uri.
    let alerts = |with_registry: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_vigil"));
        c.args([
            "alerts",
            "--brokers",
            &brokers(),
            "--topic",
            &topics.violations,
        ])
        .args(["--group", &unique("alerts"), "--idle-secs", "6", "--json"]);
        if with_registry {
            c.args(["--schema-registry", &registry.url]);
        }
        c.output()
    };
    let out = alerts(true)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = json_lines(&out.stdout)?;
    ensure!(lines.len() == got.len(), "{lines:?}");
    let (old, new): (Vec<_>, Vec<_>) = lines
        .iter()
        .partition(|l| l["camera"] == "cam-old" || l["camera"] == "cam-old2");
    ensure!(
        old.len() == 2
            && old
                .iter()
                .any(|l| l["event_id"] == "old-1" && l["sequence"].is_null())
            && old
                .iter()
                .any(|l| l["event_id"] == "old-2" && l["sequence"] == 0)
            && old.iter().all(|l| l["evidence_uri"].is_null()),
        "{old:?}"
    );
    ensure!(
        new[0]["sequence"] == 0 && new[0]["kind"] == "opened",
        "{new:?}"
    );

    // Without the registry it stops, says what to pass, and commits nothing.
    let out = alerts(false)?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("--schema-registry"),
        "{err}"
    );

    // `vigil tail` decodes the observations through the registry too.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "tail",
            "--brokers",
            &brokers(),
            "--topic",
            &topics.observations,
        ])
        .args([
            "--count",
            "3",
            "--idle-secs",
            "20",
            "--schema-registry",
            &registry.url,
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success()
            && text
                .lines()
                .filter(|l| l.starts_with("observation "))
                .count()
                == 3,
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
