//! A broker outage is waited out: a worker with the shipped defaults keeps running while its
//! broker is killed (SIGKILL) for 18 s and restarted on the same data and port, `/readyz` says
//! 503 while the broker is away and 200 once it is back, and every frame, read before, during
//! or after the outage, gets exactly one outcome (an observation or a dead letter).
//!
//! The broker is this test's own (`nisshi`, as `scripts/broker.sh` starts it), not the shared
//! one of `scripts/test.sh`, which other tests use while this one kills its broker. The shared
//! helpers (`create_topics`, `produce`, `collect`) read the broker's address from
//! `VIGIL_TEST_BROKERS`, so this binary's only test points it at its own broker first.

mod common;

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use common::*;

/// How long the broker stays away: longer than the group's session timeout (10 s), so that the
/// consumer loses its assignment and the commits are refused, as in a real outage.
const OUTAGE: Duration = Duration::from_secs(18);

fn nisshi() -> PathBuf {
    std::env::var_os("VIGIL_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools"))
        .join("bin/nisshi")
}

/// A broker of this test's own on a fixed loopback port, storing in a temporary folder; it can
/// be killed and started again on the same data. Killed when dropped.
struct Broker {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start() -> Result<Broker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut b = Broker {
            dir: tempfile::tempdir()?,
            port,
            child: None,
        };
        b.restart()?;
        Ok(b)
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Starts the broker (again) on the same port and data, and waits until it listens.
    fn restart(&mut self) -> Result {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))?;
        let url = format!("tcp://{}", self.addr());
        // nisshi reads sqlite://PATH relative to its working directory.
        let mut child = Command::new(nisshi())
            .current_dir(self.dir.path())
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "sqlite://broker.db"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("nisshi (scripts/bootstrap.sh builds it into .tools/bin)")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            if let Some(status) = child.try_wait()? {
                bail!("broker exited ({status}):\n{}", self.log());
            }
            ensure!(
                Instant::now() < deadline,
                "broker did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Kills the broker at once, as a crash would.
    fn kill(&mut self) -> Result {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// `/readyz`'s body (`ready` with 200, otherwise 503), or the error that kept it from answering.
fn readyz(addr: &str) -> String {
    get(addr, "/readyz")
        .map(|b| b.trim().to_string())
        .unwrap_or_else(|e| format!("no answer: {e}"))
}

/// Fails if the worker is no longer running.
fn alive(worker: &mut Worker, when: &str) -> Result {
    if let Some(status) = worker.child.try_wait()? {
        bail!(
            "the worker exited ({status}) {when}; log:\n{}",
            worker.log_text()
        );
    }
    Ok(())
}

/// Produces records all at once (one batch, so that the worker reads them together) and returns
/// the (partition, offset) of each.
async fn produce_burst(topic: &str, recs: &[Rec]) -> Result<Vec<(i32, i64)>> {
    let p = producer()?;
    let sends = recs
        .iter()
        .map(|r| p.send(record(topic, r), Duration::from_secs(30)));
    futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|d| {
            d.map(|d| (d.partition, d.offset))
                .map_err(|(e, _)| anyhow::anyhow!("produce: {e}"))
        })
        .collect()
}

/// `n` good frames of two cameras, stamped now (shedding is on, as shipped, and judges frames
/// this recent), and one frame that is not a JPEG (a dead letter).
fn batch(first_seq: u64, n: u64) -> (Vec<Rec>, Vec<Rec>) {
    let now = vigil::contract::now_ms();
    let good: Vec<Rec> = (0..n)
        .map(|i| {
            let camera = if i % 2 == 0 { "cam-out-1" } else { "cam-out-2" };
            let mut r = frame(camera, "site-out", first_seq + i, face("grace_hopper.jpg"));
            r.headers[2].1 = (now + i as i64 * 100).to_string().into_bytes();
            r
        })
        .collect();
    let mut bad = frame("cam-out-3", "site-out", first_seq, b"not a jpeg".to_vec());
    bad.headers[2].1 = now.to_string().into_bytes();
    (good, vec![bad])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_is_waited_out_and_every_frame_gets_one_outcome() -> Result {
    let mut broker = Broker::start()?;
    // Before any client exists: the shared helpers read the broker from here.
    std::env::set_var("VIGIL_TEST_BROKERS", broker.addr());
    let topics = create_topics(2).await?;
    let metrics = free_addr()?;
    let group = unique("outage");
    // The shipped defaults, but for `--max-staleness-secs`: the helper switches shedding off
    // unless given, so its shipped value is given (the frames are stamped now).
    let mut worker = Worker::start_on(
        &[],
        &broker.addr(),
        &topics,
        &group,
        &["--metrics-addr", &metrics, "--max-staleness-secs", "60"],
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while readyz(&metrics) != "ready" {
        alive(&mut worker, "before it was ready")?;
        ensure!(Instant::now() < deadline, "the worker never got ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Frames, and the broker killed as soon as the worker has read them all, while their
    // outcomes are still being made: they wait through the outage.
    let (mut frames_a, bad_a) = batch(0, 12);
    frames_a.extend(bad_a);
    let mut sent = produce_burst(&topics.frames, &frames_a).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let in_flight = loop {
        let scrape = get(&metrics, "/metrics")?;
        if scraped(&scrape, "vigil_frames_received_total") == Some(sent.len() as f64) {
            break scraped(&scrape, "vigil_frames_in_flight").unwrap_or(0.0);
        }
        ensure!(
            Instant::now() < deadline,
            "the worker did not read the frames"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    broker.kill()?;
    let killed = Instant::now();
    eprintln!("broker killed with {in_flight} frames in flight");
    let mut seen = HashSet::new();
    while killed.elapsed() < OUTAGE {
        alive(&mut worker, "while the broker was away")?;
        seen.insert(readyz(&metrics));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ensure!(
        seen.iter().any(|s| s != "ready"),
        "/readyz said ready throughout the outage: {seen:?}"
    );
    ensure!(
        seen.contains("unreachable"),
        "/readyz never said the broker was unreachable: {seen:?}"
    );

    broker.restart()?;
    let (good_b, bad_b) = batch(100, 4);
    sent.extend(produce(&topics.frames, &good_b).await?);
    sent.extend(produce(&topics.frames, &bad_b).await?);
    let deadline = Instant::now() + Duration::from_secs(60);
    while readyz(&metrics) != "ready" {
        alive(&mut worker, "after the broker came back")?;
        ensure!(
            Instant::now() < deadline,
            "the worker did not get ready again after the broker came back; log:\n{}",
            worker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Every frame once: an observation or a dead letter, never both, never twice.
    let settle = Duration::from_secs(3);
    let observations = collect(&topics.observations, 16, Duration::from_secs(60), settle)
        .await
        .with_context(|| worker.log_text())?;
    let dead = collect(&topics.dlq, 2, Duration::from_secs(30), settle).await?;
    let observed = sources_once(&observations)?;
    let mut outcomes = observed.clone();
    for d in &dead {
        let source = (
            d.header("source_partition")
                .context("source_partition")?
                .parse()?,
            d.header("source_offset")
                .context("source_offset")?
                .parse()?,
        );
        ensure!(
            d.header("reason").as_deref() == Some("not_jpeg"),
            "{:?}",
            d.headers
        );
        ensure!(outcomes.insert(source), "frame {source:?} got two outcomes");
    }
    let expected: HashSet<(i32, i64)> = sent.iter().copied().collect();
    ensure!(
        outcomes == expected,
        "outcomes {outcomes:?} are not one per frame sent {expected:?}; log:\n{}",
        worker.log_text()
    );
    ensure!(observations.len() + dead.len() == sent.len());

    let scrape = get(&metrics, "/metrics")?;
    ensure!(
        scraped(&scrape, "vigil_broker_outages_total").unwrap_or(0.0) >= 1.0
            && scraped(&scrape, "vigil_broker_reachable") == Some(1.0),
        "the outage is not counted:\n{scrape}"
    );
    alive(&mut worker, "after the outage")?;
    worker.signal("TERM")?;
    let status = worker.wait(Duration::from_secs(30))?;
    ensure!(
        status.success(),
        "a clean stop after the outage exits 0 ({status}); log:\n{}",
        worker.log_text()
    );
    Ok(())
}
