//! Shared helpers for the tests that run against a real Kafka-protocol broker.
//!
//! The broker is started by `scripts/test.sh` (nisshi on a free loopback port) and named in
//! `VIGIL_TEST_BROKERS`. Every test creates its own topics and consumer groups, so tests run in
//! parallel without seeing each other's records.
#![allow(dead_code)]

pub mod pki;
pub mod site;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

pub type Result<T = ()> = anyhow::Result<T>;

pub fn brokers() -> String {
    std::env::var("VIGIL_TEST_BROKERS").expect(
        "VIGIL_TEST_BROKERS is not set: run the tests with scripts/test.sh, which starts a broker, \
         or point VIGIL_TEST_BROKERS at one whose topics may be created",
    )
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn face(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/data/faces").join(name)).expect("test photo exists")
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    format!(
        "{prefix}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The three topics a worker needs, created fresh for one test.
#[derive(Debug, Clone)]
pub struct Topics {
    pub frames: String,
    pub observations: String,
    pub dlq: String,
    pub violations: String,
    pub state: String,
}

pub async fn create_topics(partitions: i32) -> Result<Topics> {
    create_topics_with(partitions, &[]).await
}

/// Creates fresh topics; `configs` sets topic configs by topic (`frames`, `dlq`, …).
pub async fn create_topics_with(partitions: i32, configs: &[(&str, &str, &str)]) -> Result<Topics> {
    let base = unique("t");
    let t = Topics {
        frames: format!("{base}.frames"),
        observations: format!("{base}.observations"),
        dlq: format!("{base}.dlq"),
        violations: format!("{base}.violations"),
        state: format!("{base}.state"),
    };
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()?;
    let topics: Vec<NewTopic> = [&t.frames, &t.observations, &t.dlq, &t.violations, &t.state]
        .iter()
        .map(|n| {
            let mut topic = NewTopic::new(n, partitions, TopicReplication::Fixed(1));
            if *n == &t.state {
                topic = topic.set("cleanup.policy", "compact");
            }
            for (which, key, value) in configs {
                if *n == &format!("{base}.{which}") {
                    topic = topic.set(key, value);
                }
            }
            topic
        })
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(n, e)| anyhow!("create {n}: {e}"))?;
    }
    Ok(t)
}

/// One record to produce.
#[derive(Debug, Clone)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
}

/// A frame following the contract.
pub fn frame(camera: &str, site: &str, seq: u64, jpeg: Vec<u8>) -> Rec {
    Rec {
        key: Some(camera.as_bytes().to_vec()),
        headers: vec![
            ("site".into(), site.as_bytes().to_vec()),
            ("camera".into(), camera.as_bytes().to_vec()),
            (
                "captured_at".into(),
                (1_700_000_000_000u64 + seq * 500).to_string().into_bytes(),
            ),
            ("seq".into(), seq.to_string().into_bytes()),
        ],
        payload: jpeg,
    }
}

pub fn producer() -> Result<FutureProducer> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("message.max.bytes", "10000000")
        .create()?)
}

/// The record `r` as rdkafka sends it to `topic`.
pub fn record<'a>(topic: &'a str, r: &'a Rec) -> FutureRecord<'a, Vec<u8>, Vec<u8>> {
    let headers = r.headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v),
        })
    });
    let rec = FutureRecord::to(topic).payload(&r.payload).headers(headers);
    match &r.key {
        Some(k) => rec.key(k),
        None => rec,
    }
}

/// Produces records in order and returns the (partition, offset) of each.
pub async fn produce(topic: &str, recs: &[Rec]) -> Result<Vec<(i32, i64)>> {
    let p = producer()?;
    let mut out = Vec::new();
    for r in recs {
        let d = p
            .send(record(topic, r), Timeout::After(Duration::from_secs(30)))
            .await
            .map_err(|(e, _)| anyhow!("produce: {e}"))?;
        out.push((d.partition, d.offset));
    }
    Ok(out)
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Got {
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
    pub partition: i32,
    pub offset: i64,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The record as an observation (Avro, single-object encoding).
    pub fn observation(&self) -> Result<vigil::contract::observation::Observation> {
        let codec = vigil::codec::avro::Codec::new(&vigil::codec::avro::OBSERVATION);
        Ok(codec.decode(&self.payload)?)
    }
}

/// Reads a topic from the beginning until `n` records arrived, then `settle` longer to catch any
/// extra (duplicate) record; fails if `n` do not arrive within `timeout`.
pub async fn collect(
    topic: &str,
    n: usize,
    timeout: Duration,
    settle: Duration,
) -> Result<Vec<Got>> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()?;
    c.subscribe(&[topic])?;
    let mut got = Vec::new();
    let deadline = Instant::now() + timeout;
    // Expecting nothing: read for `settle` once the group has had time to join.
    let mut settle_until: Option<Instant> =
        (n == 0).then(|| Instant::now() + settle.max(Duration::from_secs(5)));
    loop {
        let until = settle_until.unwrap_or(deadline);
        let now = Instant::now();
        if now >= until {
            break;
        }
        match tokio::time::timeout(until - now, c.recv()).await {
            Err(_) => break,
            Ok(m) => {
                let m = m?;
                got.push(Got {
                    key: m.key().map(<[u8]>::to_vec),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    partition: m.partition(),
                    offset: m.offset(),
                });
                if got.len() >= n && settle_until.is_none() {
                    settle_until = Some(Instant::now() + settle);
                }
            }
        }
    }
    if got.len() < n {
        bail!(
            "{topic}: expected {n} records within {timeout:?}, got {}",
            got.len()
        );
    }
    Ok(got)
}

/// Source (partition, offset) of each observation, checking that none repeats.
pub fn sources_once(obs: &[Got]) -> Result<HashSet<(i32, i64)>> {
    let mut seen = HashSet::new();
    for g in obs {
        let o = g.observation()?;
        if !seen.insert((o.source.partition, o.source.offset)) {
            bail!(
                "frame {}:{} observed twice",
                o.source.partition,
                o.source.offset
            );
        }
    }
    Ok(seen)
}

/// A `vigil worker` child process, logging JSON to a file; killed if still running when dropped.
pub struct Worker {
    pub child: Child,
    pub log: PathBuf,
    pub id: String,
}

pub fn log_dir() -> PathBuf {
    let d = repo().join("target").join("test-logs");
    std::fs::create_dir_all(&d).expect("log dir");
    d
}

impl Worker {
    pub fn start(topics: &Topics, group: &str, extra: &[&str]) -> Result<Worker> {
        Worker::start_under(&[], topics, group, extra)
    }

    /// Starts a worker through a wrapper command (e.g. `taskset -c 0`).
    pub fn start_under(
        wrapper: &[&str],
        topics: &Topics,
        group: &str,
        extra: &[&str],
    ) -> Result<Worker> {
        Worker::start_on(wrapper, &brokers(), topics, group, extra)
    }

    /// Starts a worker with the shipped defaults: only the topics, group, worker id and a
    /// free metrics port are given (frames must be stamped near now, or shedding thins them).
    pub fn start_default(topics: &Topics, group: &str, extra: &[&str]) -> Result<Worker> {
        Worker::launch(&[], &brokers(), topics, group, extra, true)
    }

    /// Starts a worker against the given brokers (e.g. a TLS listener).
    pub fn start_on(
        wrapper: &[&str],
        brokers: &str,
        topics: &Topics,
        group: &str,
        extra: &[&str],
    ) -> Result<Worker> {
        Worker::launch(wrapper, brokers, topics, group, extra, false)
    }

    fn launch(
        wrapper: &[&str],
        brokers: &str,
        topics: &Topics,
        group: &str,
        extra: &[&str],
        shipped_defaults: bool,
    ) -> Result<Worker> {
        let id = unique("worker");
        let log = log_dir().join(format!("{id}.log"));
        let file = std::fs::File::create(&log)?;
        let mut cmd = match wrapper.split_first() {
            None => Command::new(env!("CARGO_BIN_EXE_vigil")),
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_vigil"));
                c
            }
        };
        let child = cmd
            .args(["--log-format", "json", "worker", "--brokers", brokers])
            .args(["--frames-topic", &topics.frames])
            .args(["--observations-topic", &topics.observations])
            .args(["--dlq-topic", &topics.dlq])
            .args([
                "--violations-topic",
                &topics.violations,
                "--state-topic",
                &topics.state,
            ])
            .args(["--group", group, "--worker-id", &id])
            .args(if extra.contains(&"--metrics-addr") {
                &[][..]
            } else {
                &["--metrics-addr", "127.0.0.1:0"][..]
            })
            // Most tests replay frames captured in 2023 or 2026-04 (fixed times, so that their
            // events are comparable across runs): with load shedding on, frames that old would
            // be judged one per camera. So shedding is off unless a test asks for it or runs
            // with the shipped defaults (and stamps its frames near now).
            .args(
                if shipped_defaults || extra.contains(&"--max-staleness-secs") {
                    &[][..]
                } else {
                    &["--max-staleness-secs", "0"][..]
                },
            )
            .args(if shipped_defaults {
                &[][..]
            } else {
                &["--decode-threads", "2"][..]
            })
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .context("spawn vigil worker")?;
        Ok(Worker { child, log, id })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Log lines as JSON objects.
    pub fn log_events(&self) -> Vec<serde_json::Value> {
        BufReader::new(std::fs::File::open(&self.log).expect("log"))
            .lines()
            .map_while(|l| l.ok())
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// Partitions in the most recent "partitions assigned" line, if any.
    pub fn assigned(&self) -> Option<Vec<i32>> {
        self.log_events()
            .iter()
            .rev()
            .find(|e| e["message"] == "partitions assigned" || e["message"] == "partitions revoked")
            .and_then(|e| {
                if e["message"] == "partitions revoked" {
                    return Some(Vec::new());
                }
                let s = e["partitions"]
                    .as_str()?
                    .trim_matches(|c| c == '[' || c == ']')
                    .to_string();
                Some(s.split(',').filter_map(|p| p.trim().parse().ok()).collect())
            })
    }

    pub fn signal(&self, sig: &str) -> Result {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()?;
        if !st.success() {
            bail!("kill -{sig} failed");
        }
        Ok(())
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!(
                    "worker {} still running after {timeout:?}; log:\n{}",
                    self.id,
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits until `cond` holds, polling.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Result {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

pub fn python() -> PathBuf {
    repo().join(".venv/bin/python")
}

/// Decodes Avro records with an independent implementation (`tests/tools/decode_avro.py`):
/// `mode` `single` with a schema file (fastavro) or `registry` with a registry URL
/// (confluent-kafka's deserializer). One JSON value per record, in order.
pub fn decode_outside(mode: &str, arg: &str, records: &[&[u8]]) -> Result<Vec<serde_json::Value>> {
    let dir = tempfile::tempdir()?;
    let mut paths = Vec::new();
    for (i, bytes) in records.iter().enumerate() {
        let p = dir.path().join(format!("{i}.avro"));
        std::fs::write(&p, bytes)?;
        paths.push(p);
    }
    let out = Command::new(python())
        .arg(repo().join("tests/tools/decode_avro.py"))
        .args([mode, arg])
        .args(&paths)
        .output()?;
    ensure!(
        out.status.success(),
        "decode_avro.py {mode}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let values: Vec<serde_json::Value> = std::str::from_utf8(&out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    ensure!(values.len() == records.len(), "one line per record");
    Ok(values)
}

pub fn exists(p: &Path) -> bool {
    p.exists()
}

/// A plain HTTP GET on loopback, returning the body.
pub fn get(addr: &str, path: &str) -> Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("http response")?;
    if head.contains("Transfer-Encoding: chunked") {
        // Decode chunked bodies (Prometheus uses them for larger answers).
        let mut out = String::new();
        let mut rest = body;
        loop {
            let (len, after) = rest.split_once("\r\n").context("chunk")?;
            let n = usize::from_str_radix(len.trim(), 16)?;
            if n == 0 {
                break;
            }
            out.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        return Ok(out);
    }
    Ok(body.to_string())
}

/// A face photo with a mask drawn on (`tests/data/masked`).
pub fn masked(name: &str) -> Vec<u8> {
    std::fs::read(repo().join("tests/data/masked").join(name)).expect("masked photo")
}

/// One camera's scene at 2 fps from `start`: `script` has 'V' (no mask), 'C' (mask) or 'U'
/// (nobody in view) per frame.
pub fn scene(camera: &str, start_ms: i64, first_seq: u64, script: &str) -> Vec<Rec> {
    let (bare, covered) = (face("grace_hopper.jpg"), masked("grace_hopper.jpg"));
    let empty = {
        use opencv::core::{Mat, Scalar, CV_8UC3};
        let img = Mat::new_rows_cols_with_default(
            480,
            640,
            CV_8UC3,
            Scalar::new(90.0, 120.0, 140.0, 0.0),
        )
        .unwrap();
        vigil::decode::encode_jpeg(&img, 85).unwrap()
    };
    script
        .chars()
        .enumerate()
        .map(|(i, c)| {
            let jpeg = match c {
                'V' => bare.clone(),
                'C' => covered.clone(),
                _ => empty.clone(),
            };
            let seq = first_seq + i as u64;
            let mut r = frame(camera, "site-009", seq, jpeg);
            r.headers[2].1 = (start_ms + i as i64 * 500).to_string().into_bytes();
            r.headers.push(("zone".into(), b"kitchen".to_vec()));
            r
        })
        .collect()
}

/// A free loopback address for a worker's `--metrics-addr`.
pub fn free_addr() -> Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("127.0.0.1:{port}"))
}

/// The value of the first series in a Prometheus text scrape whose line starts with `series`.
pub fn scraped(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
}

/// A photo as JPEG bytes: JPEGs as they are, other formats (PNG) decoded and re-encoded.
pub fn jpeg_of(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path)?;
    if bytes.starts_with(&[0xFF, 0xD8]) {
        return Ok(bytes);
    }
    let img = opencv::imgcodecs::imdecode(
        &opencv::core::Mat::from_slice(&bytes)?,
        opencv::imgcodecs::IMREAD_COLOR,
    )?;
    Ok(vigil::decode::encode_jpeg(&img, 95)?)
}
