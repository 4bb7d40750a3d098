//! Helpers for the site gateway's tests: RTSP cameras (GStreamer's RTSP server,
//! `tests/tools/rtsp_cameras.py`), a port that accepts and never answers, a `vigil gateway
//! --cameras-file` process with its metrics, a broker of a test's own that can be killed and
//! restarted, and a frames reader independent of vigil's client (confluent-kafka).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use super::{get, log_dir, python, repo, scraped, unique, Result};

/// A loopback port nothing listens on (yet).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One RTSP server process serving still images as live H.264 streams, one mount per camera.
pub struct RtspCameras {
    /// The port it listens on (kept across restarts).
    pub port: u16,
    /// Its command line, to start it again.
    args: Vec<String>,
    child: Option<Child>,
}

impl RtspCameras {
    /// Serves `mounts` (name, image) on a free port at `fps`, `size` (width, height) if given.
    pub fn start(mounts: &[(&str, PathBuf)], fps: u32, size: Option<(u32, u32)>) -> Result<Self> {
        let port = free_port()?;
        let mut args = vec![
            repo()
                .join("tests/tools/rtsp_cameras.py")
                .display()
                .to_string(),
            "--port".into(),
            port.to_string(),
            "--fps".into(),
            fps.to_string(),
        ];
        if let Some((w, h)) = size {
            args.extend([
                "--width".into(),
                w.to_string(),
                "--height".into(),
                h.to_string(),
            ]);
        }
        for (name, image) in mounts {
            args.extend(["--mount".into(), format!("{name}={}", image.display())]);
        }
        let mut cams = RtspCameras {
            port,
            args,
            child: None,
        };
        cams.restart()?;
        Ok(cams)
    }

    /// The URL of a mount.
    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{mount}", self.port)
    }

    /// Starts the server (again), waiting for its `ready` line.
    pub fn restart(&mut self) -> Result {
        let mut child = Command::new("/usr/bin/python3")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("rtsp_cameras.py (Debian: python3-gi gir1.2-gst-rtsp-server-1.0)")?;
        let stdout = child.stdout.take().context("stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        if !line.starts_with("ready") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the RTSP server did not start: {line:?}");
        }
        self.child = Some(child);
        Ok(())
    }

    /// Kills the server at once, as a camera losing power.
    pub fn kill(&mut self) -> Result {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for RtspCameras {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A `vigil gateway --cameras-file` process logging JSON to a file; killed when dropped.
pub struct Gateway {
    pub child: Child,
    pub log: PathBuf,
    /// Its `--metrics-addr`.
    pub metrics: String,
}

impl Gateway {
    /// Starts a gateway on `brokers` with the camera file, buffer folder and extra arguments.
    pub fn start(
        brokers: &str,
        frames_topic: &str,
        status_topic: &str,
        cameras_file: &Path,
        buffer_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Gateway> {
        let log = log_dir().join(format!("{}.log", unique("gateway")));
        let metrics = super::free_addr()?;
        let child = Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(["--log-format", "json", "gateway", "--brokers", brokers])
            .args([
                "--frames-topic",
                frames_topic,
                "--status-topic",
                status_topic,
            ])
            .arg("--cameras-file")
            .arg(cameras_file)
            .arg("--buffer-dir")
            .arg(buffer_dir)
            .args(["--metrics-addr", &metrics, "--progress-secs", "2"])
            .args(extra)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("spawn vigil gateway")?;
        Ok(Gateway {
            child,
            log,
            metrics,
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `/metrics` text, empty while it does not answer.
    pub fn scrape(&self) -> String {
        get(&self.metrics, "/metrics").unwrap_or_default()
    }

    /// A camera's series of a per-camera metric (0 when absent).
    pub fn camera(&self, scrape: &str, metric: &str, camera: &str) -> f64 {
        scraped(scrape, &format!("{metric}{{camera=\"{camera}\"")).unwrap_or(0.0)
    }

    /// Fails if the gateway has exited.
    pub fn alive(&mut self, when: &str) -> Result {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the gateway exited ({status}) {when}; log:\n{}",
                self.log_text()
            );
        }
        Ok(())
    }

    pub fn signal(&self, sig: &str) -> Result {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()?;
        ensure!(st.success(), "kill -{sig} failed");
        Ok(())
    }

    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait()? {
                return Ok(st);
            }
            ensure!(
                Instant::now() < deadline,
                "gateway still running after {timeout:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory, in bytes (Linux).
    pub fn rss(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .context("VmRSS")?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()?;
        Ok(kb * 1024)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A frame read back by `tests/tools/read_frames.py` (confluent-kafka).
#[derive(Debug, Clone)]
pub struct FrameSeen {
    pub partition: i32,
    pub offset: i64,
    pub camera: String,
    pub site: String,
    pub zone: Option<String>,
    pub captured_at: i64,
    pub seq: u64,
    pub bytes: u64,
    /// The value's first two bytes, hex (`ffd8` for a JPEG).
    pub head: String,
}

/// Every record of `topic`, read with confluent-kafka until `idle` passes without one (after
/// the first, which may take up to a minute).
pub fn read_frames(brokers: &str, topic: &str, idle: Duration) -> Result<Vec<FrameSeen>> {
    let out = Command::new(python())
        .arg(repo().join("tests/tools/read_frames.py"))
        .args([brokers, topic, &idle.as_secs_f64().to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "read_frames.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut frames = Vec::new();
    for line in std::str::from_utf8(&out.stdout)?.lines() {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let h = &v["headers"];
        let s = |k: &str| h[k].as_str().map(str::to_string);
        frames.push(FrameSeen {
            partition: v["partition"].as_i64().context("partition")? as i32,
            offset: v["offset"].as_i64().context("offset")?,
            camera: s("camera").context("camera header")?,
            site: s("site").context("site header")?,
            zone: s("zone"),
            captured_at: s("captured_at").context("captured_at")?.parse()?,
            seq: s("seq").context("seq")?.parse()?,
            bytes: v["bytes"].as_u64().unwrap_or(0),
            head: v["head"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(frames)
}

/// Checks that each camera's frames are in order on the topic (by offset within its
/// partition): `seq` strictly increasing (so none twice) and `captured_at` never going back.
pub fn in_order_once(frames: &[FrameSeen]) -> Result {
    ensure!(!frames.is_empty(), "no frames to check");
    let mut by_camera: std::collections::BTreeMap<&str, Vec<&FrameSeen>> = Default::default();
    for f in frames {
        by_camera.entry(&f.camera).or_default().push(f);
    }
    for (camera, mut fs) in by_camera {
        let partitions: std::collections::HashSet<i32> = fs.iter().map(|f| f.partition).collect();
        ensure!(
            partitions.len() == 1,
            "{camera}: frames on several partitions {partitions:?}"
        );
        fs.sort_by_key(|f| f.offset);
        for w in fs.windows(2) {
            ensure!(
                w[1].seq > w[0].seq && w[1].captured_at >= w[0].captured_at,
                "{camera}: offset {} (seq {}, captured_at {}) after offset {} (seq {}, captured_at {})",
                w[1].offset, w[1].seq, w[1].captured_at, w[0].offset, w[0].seq, w[0].captured_at
            );
        }
    }
    Ok(())
}

/// A broker of a test's own (nisshi, as `scripts/broker.sh` starts it) on a fixed loopback
/// port, storing in a temporary folder; it can be killed and started again on the same data.
pub struct PrivateBroker {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn nisshi() -> PathBuf {
    std::env::var_os("VIGIL_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools"))
        .join("bin/nisshi")
}

impl PrivateBroker {
    pub fn start() -> Result<PrivateBroker> {
        let mut b = PrivateBroker {
            dir: tempfile::tempdir()?,
            port: free_port()?,
            child: None,
        };
        b.restart()?;
        Ok(b)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("broker.log")).unwrap_or_default()
    }

    /// Starts the broker (again) on the same port and data, and waits until it listens.
    pub fn restart(&mut self) -> Result {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("broker.log"))?;
        let url = format!("tcp://{}", self.addr());
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

    /// Kills the broker at once, as a crash (or a cut link) would.
    pub fn kill(&mut self) -> Result {
        if let Some(mut c) = self.child.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// Creates topics on `brokers` (1 replica, `partitions` each).
pub async fn create_topics_on(brokers: &str, names: &[&str], partitions: i32) -> Result {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::config::ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()?;
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(n, e)| anyhow::anyhow!("create {n}: {e}"))?;
    }
    Ok(())
}
