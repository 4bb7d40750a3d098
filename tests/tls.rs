//! Production connectivity against real TLS endpoints, with a private CA generated here by
//! `openssl`:
//!
//! - Kafka over TLS: the test broker has no TLS listener of its own, so Debian's `stunnel4`
//!   terminates TLS in front of it (the broker advertises stunnel's port). Worker, gateway, tail,
//!   alerts and `topics create` run through it with server verification, and with client
//!   certificates (mTLS); SASL/SCRAM-SHA-512 (which the broker supports) runs over TLS.
//! - A wrong CA, a missing client certificate, a plaintext client and a wrong password each stop
//!   the client at start-up within a bounded time, naming the cause.
//! - HTTPS: `vigil alerts` posts to an HTTPS webhook trusted through `--ca-file` with a bearer
//!   token; a wrong CA and a wrong token are refused with messages that say so; the worker
//!   registers its schemas with an HTTPS registry that requires basic auth.
//!
//! The settings reach the clients by every route: `-X`, a properties file (`--kafka-config`)
//! and `VIGIL_KAFKA_*` environment variables.

mod common;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use common::pki::{path, run, Pki};
use common::*;

fn vigil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn nisshi() -> PathBuf {
    std::env::var_os("VIGIL_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools"))
        .join("bin/nisshi")
}

/// Waits until something accepts connections on `port`.
fn wait_listening(port: u16, what: &str, child: &mut Child, log: &Path) -> Result {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "{what} exited ({status}): {}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} did not listen on {port}")
}

/// A broker reachable only through TLS (stunnel in front), optionally demanding client
/// certificates and SASL/SCRAM. Both processes are killed when dropped.
struct TlsBroker {
    dir: tempfile::TempDir,
    broker: Child,
    stunnel: Child,
    /// `127.0.0.1:PORT` of the TLS listener.
    addr: String,
}

impl TlsBroker {
    fn start(pki: &Pki, mtls: bool, users: &[(&str, &str)]) -> Result<TlsBroker> {
        let dir = tempfile::tempdir()?;
        let (plain, tls) = (free_port()?, free_port()?);
        let broker_cmd = |auth: bool| -> Result<Child> {
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join("broker.log"))?;
            let mut c = Command::new(nisshi());
            c.current_dir(dir.path())
                .args([
                    "broker",
                    "--listener-url",
                    &format!("tcp://127.0.0.1:{plain}"),
                ])
                .args([
                    "--advertised-listener-url",
                    &format!("tcp://127.0.0.1:{tls}"),
                ])
                .args(["--storage-engine", "sqlite://broker.db"]);
            if auth {
                c.arg("--authentication");
            }
            Ok(c.stdout(log.try_clone()?).stderr(log).spawn()?)
        };
        let log = dir.path().join("broker.log");
        let mut broker = broker_cmd(false)?;
        wait_listening(plain, "broker", &mut broker, &log)?;
        if !users.is_empty() {
            // SCRAM credentials are stored by the broker; it then restarts requiring them.
            for (user, password) in users {
                run(Command::new(nisshi()).args([
                    "user",
                    "create",
                    "--broker",
                    &format!("tcp://127.0.0.1:{plain}"),
                    "--mechanism",
                    "scram512",
                    user,
                    password,
                ]))?;
            }
            broker.kill()?;
            broker.wait()?;
            broker = broker_cmd(true)?;
            wait_listening(plain, "broker", &mut broker, &log)?;
        }
        let conf = dir.path().join("stunnel.conf");
        let mut text = format!(
            "foreground = yes\npid =\ndebug = 4\noutput = {}\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\ncert = {}\nkey = {}\n",
            path(&dir.path().join("stunnel.log")),
            path(&pki.server_cert),
            path(&pki.server_key)
        );
        if mtls {
            text.push_str(&format!(
                "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                path(&pki.ca)
            ));
        }
        std::fs::write(&conf, text)?;
        let stunnel_log = dir.path().join("stunnel.log");
        let mut stunnel = Command::new("stunnel4")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stunnel.err"))?)
            .spawn()
            .context("stunnel4 (Debian package stunnel4; scripts/bootstrap.sh installs it)")?;
        wait_listening(tls, "stunnel", &mut stunnel, &stunnel_log)?;
        Ok(TlsBroker {
            dir,
            broker,
            stunnel,
            addr: format!("127.0.0.1:{tls}"),
        })
    }

    fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!(
            "--- broker\n{}\n--- stunnel\n{}",
            read("broker.log"),
            read("stunnel.log")
        )
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        for c in [&mut self.broker, &mut self.stunnel] {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `-X` arguments for a TLS client trusting `ca`, with the client certificate when `client`.
fn tls_x(pki: &Pki, ca: &Path, client: bool) -> Vec<String> {
    let mut v = vec![
        "-X".to_string(),
        "security.protocol=SSL".into(),
        "-X".into(),
        format!("ssl.ca.location={}", path(ca)),
    ];
    if client {
        v.extend([
            "-X".into(),
            format!("ssl.certificate.location={}", path(&pki.client_cert)),
            "-X".into(),
            format!("ssl.key.location={}", path(&pki.client_key)),
        ]);
    }
    v
}

/// Creates fresh topics through `vigil topics create` on `addr`.
fn create_topics_on(addr: &str, x: &[String]) -> Result<Topics> {
    let t = Topics {
        frames: unique("tls-frames"),
        observations: unique("tls-observations"),
        dlq: unique("tls-dlq"),
        violations: unique("tls-violations"),
        state: unique("tls-state"),
    };
    run(vigil()
        .args(["topics", "create", "--brokers", addr, "--partitions", "2"])
        .args(x)
        .args([
            "--frames-topic",
            &t.frames,
            "--observations-topic",
            &t.observations,
        ])
        .args(["--dlq-topic", &t.dlq, "--violations-topic", &t.violations])
        .args(["--state-topic", &t.state]))?;
    Ok(t)
}

/// Short episode clocks so that a few seconds of an unmasked face open an episode.
const RULES: &str = r#"
[rules.mask_required]
detector = "face-blazeface"
classifier = "mask"
violation_label = "no_mask"

[rules.mask_required.episode]
half_life_secs = 0.5
min_open_secs = 1.0
clear_secs = 2.0
cooldown_secs = 3.0
silence_timeout_secs = 120.0

[[assign]]
rules = ["mask_required"]
"#;

/// The HTTPS webhook receiver (`tests/tools/https_hook.py`): its URL and the posted bodies.
struct Hook {
    child: Child,
    url: String,
    posted: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Hook {
    fn start(pki: &Pki, token: &str) -> Result<Hook> {
        let mut child = Command::new(python())
            .arg(repo().join("tests/tools/https_hook.py"))
            .args([path(&pki.server_cert), path(&pki.server_key), token])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut lines = std::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        let first = lines.next().context("hook said nothing")??;
        let port = first
            .strip_prefix("listening ")
            .with_context(|| format!("hook said {first:?}"))?
            .to_string();
        let (tx, posted) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(|l| l.ok()) {
                if let Some(body) = line.strip_prefix("posted ") {
                    if let Ok(v) = serde_json::from_str(body) {
                        let _ = tx.send(v);
                    }
                }
            }
        });
        Ok(Hook {
            child,
            url: format!("https://127.0.0.1:{port}/hooks/vigil"),
            posted,
        })
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Gateway → worker → tail and alerts (posting to an HTTPS webhook), every Kafka client
/// through the TLS listener. With `mtls`, the listener demands client certificates.
fn whole_pipeline_over_tls(mtls: bool) -> Result {
    let pki = Pki::generate()?;
    let broker = TlsBroker::start(&pki, mtls, &[])?;
    let x = tls_x(&pki, &pki.ca, mtls);
    let topics = create_topics_on(&broker.addr, &x).with_context(|| broker.logs())?;

    // The gateway: settings by -X.
    let frames = tempfile::tempdir()?;
    std::fs::copy(
        repo().join("tests/data/faces/grace_hopper.jpg"),
        frames.path().join("grace_hopper.jpg"),
    )?;
    run(vigil()
        .args(["gateway", "--brokers", &broker.addr])
        .args(&x)
        .args([
            "--frames-topic",
            &topics.frames,
            "--source",
            path(frames.path()),
        ])
        .args(["--cameras", "2", "--fps", "4", "--frames", "16", "--loop"]))
    .with_context(|| broker.logs())?;

    // The worker: settings from a properties file.
    let props = tempfile::NamedTempFile::new()?;
    let mut text = format!(
        "# TLS to the test listener\nsecurity.protocol=SSL\nssl.ca.location={}\n",
        path(&pki.ca)
    );
    if mtls {
        text.push_str(&format!(
            "ssl.certificate.location={}\nssl.key.location={}\n",
            path(&pki.client_cert),
            path(&pki.client_key)
        ));
    }
    std::fs::write(props.path(), text)?;
    let rules = tempfile::NamedTempFile::new()?;
    std::fs::write(rules.path(), RULES)?;
    let metrics_port = free_port()?.to_string();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let mut worker = Worker::start_on(
        &[],
        &broker.addr,
        &topics,
        &unique("tls-workers"),
        &[
            "--kafka-config",
            path(props.path()),
            "--rules",
            path(rules.path()),
            "--metrics-addr",
            &metrics_addr,
        ],
    )?;

    // Tail: settings from VIGIL_KAFKA_* variables.
    let mut tail = vigil();
    tail.args([
        "tail",
        "--brokers",
        &broker.addr,
        "--topic",
        &topics.observations,
    ])
    .args(["--count", "32", "--idle-secs", "60", "--json"])
    .env("VIGIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    .env("VIGIL_KAFKA_SSL_CA_LOCATION", &pki.ca);
    if mtls {
        tail.env("VIGIL_KAFKA_SSL_CERTIFICATE_LOCATION", &pki.client_cert)
            .env("VIGIL_KAFKA_SSL_KEY_LOCATION", &pki.client_key);
    }
    let out = run(&mut tail).with_context(|| worker.log_text())?;
    let observations = String::from_utf8(out.stdout)?.lines().count();
    ensure!(
        observations == 32,
        "32 observations over TLS, got {observations}"
    );
    // Ready: assigned and restored, through the library-served endpoint.
    ensure!(get(&metrics_addr, "/readyz")?.starts_with("ready"));

    // Alerts, posting each event to the HTTPS webhook with a bearer token and --ca-file.
    let hook = Hook::start(&pki, "hook-t0ken")?;
    let out = run(vigil()
        .args([
            "alerts",
            "--brokers",
            &broker.addr,
            "--topic",
            &topics.violations,
        ])
        .args(&x)
        .args([
            "--group",
            &unique("tls-alerts"),
            "--idle-secs",
            "10",
            "--json",
        ])
        .args(["--webhook", &hook.url, "--ca-file", path(&pki.ca)])
        .env("VIGIL_WEBHOOK_TOKEN", "hook-t0ken"))
    .with_context(|| worker.log_text())?;
    let printed: Vec<serde_json::Value> = String::from_utf8(out.stdout)?
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    ensure!(
        printed.iter().any(|e| e["kind"] == "opened"),
        "an episode opened: {printed:?}"
    );
    let posted: Vec<serde_json::Value> = hook.posted.try_iter().collect();
    ensure!(
        posted.len() == printed.len()
            && posted
                .iter()
                .zip(&printed)
                .all(|(a, b)| a["event_id"] == b["event_id"]),
        "each event posted over HTTPS: {posted:?} vs {printed:?}"
    );
    worker.signal("TERM")?;
    let status = worker.wait(Duration::from_secs(30))?;
    ensure!(status.success(), "{}", worker.log_text());
    Ok(())
}

#[test]
fn worker_gateway_tail_and_alerts_run_over_tls() -> Result {
    whole_pipeline_over_tls(false)
}

#[test]
fn worker_gateway_tail_and_alerts_run_over_mutual_tls() -> Result {
    whole_pipeline_over_tls(true)
}

/// Runs a command that must fail; its exit code, stderr and how long it took.
fn fails(cmd: &mut Command) -> Result<(i32, String, Duration)> {
    let started = Instant::now();
    let out = cmd.output()?;
    let took = started.elapsed();
    ensure!(!out.status.success(), "{cmd:?} should have failed");
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        took,
    ))
}

#[test]
fn misconfigured_tls_clients_fail_fast_naming_the_cause() -> Result {
    let pki = Pki::generate()?;
    let broker = TlsBroker::start(&pki, true, &[])?;
    let bound = Duration::from_secs(15);
    let tail = |x: Vec<String>| {
        let mut c = vigil();
        c.args([
            "tail",
            "--brokers",
            &broker.addr,
            "--topic",
            "vigil.observations",
        ])
        .args(x)
        .args(["--idle-secs", "60"]);
        c
    };

    // A CA that did not sign the broker's certificate.
    let (_, err, took) = fails(&mut tail(tls_x(&pki, &pki.other_ca, true)))?;
    ensure!(
        err.contains("not trusted") && err.contains("ssl.ca.location"),
        "{err}"
    );
    ensure!(took < bound, "took {took:?}");

    // The right CA but no client certificate, where the listener demands one.
    let (_, err, took) = fails(&mut tail(tls_x(&pki, &pki.ca, false)))?;
    ensure!(err.contains("client certificate"), "{err}");
    ensure!(took < bound, "took {took:?}");

    // A plaintext client in front of the TLS listener.
    let (_, err, took) = fails(&mut tail(vec![]))?;
    ensure!(err.contains("expects TLS"), "{err}");
    ensure!(took < bound, "took {took:?}");

    // The worker too stops at start-up, before joining a group.
    let (code, err, took) = fails(
        vigil()
            .args(["worker", "--brokers", &broker.addr, "--metrics-addr", ""])
            .args(tls_x(&pki, &pki.other_ca, true)),
    )?;
    ensure!(code == 1 && err.contains("not trusted"), "{code}: {err}");
    ensure!(took < bound, "took {took:?}");
    Ok(())
}

#[test]
fn scram_over_tls_authenticates_and_a_wrong_password_fails_fast() -> Result {
    let pki = Pki::generate()?;
    let broker = TlsBroker::start(&pki, false, &[("vigil", "s3cret-pw")])?;
    let sasl = |password: &str| {
        let mut x = tls_x(&pki, &pki.ca, false);
        x[1] = "security.protocol=SASL_SSL".into();
        x.extend(
            [
                "sasl.mechanisms=SCRAM-SHA-512",
                "sasl.username=vigil",
                &format!("sasl.password={password}"),
            ]
            .iter()
            .flat_map(|p| ["-X".to_string(), p.to_string()]),
        );
        x
    };
    let topics =
        create_topics_on(&broker.addr, &sasl("s3cret-pw")).with_context(|| broker.logs())?;
    let frames = tempfile::tempdir()?;
    std::fs::copy(
        repo().join("tests/data/faces/sample1.jpg"),
        frames.path().join("sample1.jpg"),
    )?;
    run(vigil()
        .args(["gateway", "--brokers", &broker.addr])
        .args(sasl("s3cret-pw"))
        .args([
            "--frames-topic",
            &topics.frames,
            "--source",
            path(frames.path()),
        ])
        .args(["--fps", "20", "--frames", "5", "--loop"]))
    .with_context(|| broker.logs())?;
    let out = run(vigil()
        .args(["tail", "--brokers", &broker.addr, "--topic", &topics.frames])
        .args(sasl("s3cret-pw"))
        .args(["--count", "5", "--idle-secs", "30"]))?;
    ensure!(String::from_utf8(out.stdout)?.lines().count() == 5);

    let (_, err, took) = fails(
        vigil()
            .args(["tail", "--brokers", &broker.addr, "--topic", &topics.frames])
            .args(sasl("wrong-pw"))
            .args(["--idle-secs", "30"]),
    )?;
    ensure!(
        err.contains("SASL authentication failed") && !err.contains("wrong-pw"),
        "{err}"
    );
    ensure!(took < Duration::from_secs(15), "took {took:?}");
    Ok(())
}

/// One event on a fresh violations topic of the plain test broker, written with vigil's codec.
async fn one_event() -> Result<Topics> {
    let topics = create_topics(1).await?;
    let event: vigil::contract::ViolationEvent = serde_json::from_value(serde_json::json!({
        "event_id": unique("event"), "kind": "opened", "episode_id": "e-1", "site": "site-1",
        "camera": "cam-1", "zone": "kitchen", "rule": "mask_required", "severity": "minor",
        "reason": null, "opened_at": 1_776_600_000_000i64, "last_seen_at": 1_776_600_003_000i64,
        "resolved_at": null, "event_time": 1_776_600_003_000i64, "peak_level": 0.9,
        "mean_level": 0.8, "frames": 6, "evidence": null, "models": [], "worker": "w",
        "sequence": 1
    }))?;
    let bytes = vigil::codec::event_codec().encode(&event)?;
    let producer = producer()?;
    producer
        .send(
            rdkafka::producer::FutureRecord::to(&topics.violations)
                .key("cam-1")
                .payload(&bytes),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)?;
    Ok(topics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_with_the_wrong_ca_or_token_is_refused_clearly() -> Result {
    let pki = Pki::generate()?;
    let hook = Hook::start(&pki, "right-token")?;
    let topics = one_event().await?;
    let alerts = |ca: Option<&Path>, token: &str| {
        let mut c = vigil();
        c.args([
            "alerts",
            "--brokers",
            &brokers(),
            "--topic",
            &topics.violations,
        ])
        .args(["--group", &unique("alerts"), "--idle-secs", "5"])
        .args(["--webhook", &hook.url])
        .env("VIGIL_WEBHOOK_TOKEN", token);
        if let Some(ca) = ca {
            c.args(["--ca-file", path(ca)]);
        }
        c
    };
    // Not trusted: the system's roots do not know the test CA; not retried.
    let (_, err, took) = fails(&mut alerts(None, "right-token"))?;
    ensure!(err.contains("TLS") && err.contains("--ca-file"), "{err}");
    ensure!(!err.contains("webhook failed, retrying"), "{err}");
    ensure!(took < Duration::from_secs(20), "took {took:?}");
    // Trusted, wrong token: a 401, reported as such, not retried, the token never printed.
    let (_, err, _) = fails(&mut alerts(Some(&pki.ca), "wrong-token"))?;
    ensure!(
        err.contains("refused the credentials") && err.contains("401"),
        "{err}"
    );
    ensure!(
        !err.contains("wrong-token") && !err.contains("retrying"),
        "{err}"
    );
    ensure!(hook.posted.try_iter().count() == 0);
    // Trusted with the right token: delivered.
    run(&mut alerts(Some(&pki.ca), "right-token"))?;
    let posted: Vec<_> = hook.posted.try_iter().collect();
    ensure!(
        posted.len() == 1 && posted[0]["camera"] == "cam-1",
        "{posted:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_registers_its_schemas_with_an_https_registry_using_basic_auth() -> Result {
    let pki = Pki::generate()?;
    let mut registry = Command::new(python())
        .arg(repo().join("tests/tools/registry.py"))
        .args(["--tls", path(&pki.server_cert), path(&pki.server_key)])
        .args(["--user-info", "sr-user:sr-pass"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    std::io::BufReader::new(registry.stdout.take().context("stdout")?).read_line(&mut line)?;
    let url = format!(
        "https://127.0.0.1:{}",
        line.trim()
            .strip_prefix("listening ")
            .context("registry port")?
    );
    let topics = create_topics(1).await?;
    // Credentials from a file (a mounted secret), as Confluent's `basic.auth.user.info`.
    let user_info = tempfile::NamedTempFile::new()?;
    let start = |credentials: &str| -> Result<Worker> {
        std::fs::write(user_info.path(), format!("{credentials}\n"))?;
        Worker::start(
            &topics,
            &unique("g"),
            &[
                "--schema-registry",
                &url,
                "--ca-file",
                path(&pki.ca),
                "--schema-registry-user-info-file",
                path(user_info.path()),
            ],
        )
    };
    let mut w = start("sr-user:wrong-pass")?;
    let status = w.wait(Duration::from_secs(30))?;
    let log = w.log_text();
    ensure!(
        !status.success() && log.contains("401") && log.contains("--schema-registry-user-info"),
        "{log}"
    );
    ensure!(!log.contains("wrong-pass"), "{log}");

    let w = start("sr-user:sr-pass")?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&pki.ca)?)?)
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let subjects: Vec<String> = client
            .get(format!("{url}/subjects"))
            .basic_auth("sr-user", Some("sr-pass"))
            .send()
            .await?
            .json()
            .await?;
        if subjects.contains(&format!("{}-value", topics.observations))
            && subjects.contains(&format!("{}-value", topics.violations))
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "not registered: {subjects:?}\n{}",
            w.log_text()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(w);
    let _ = registry.kill();
    let _ = registry.wait();
    Ok(())
}
