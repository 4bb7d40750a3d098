//! `vigil ingest` against the real broker, with a real HTTP client (reqwest): good uploads are
//! acknowledged with their offset and observed by a worker exactly once (1,000 uploads from 20
//! concurrent clients), bad ones are refused with the right code and nothing is published, a
//! flood gets 429 while other cameras are accepted, a wrong-site token is refused, a slow
//! client times out, a broker that goes away gives 503, and HTTPS is served with rustls.

mod common;

use std::io::{BufRead, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use common::pki::{path, Pki};
use common::*;

const CAMERA_TOKEN: &str = "token-for-site-a";
const ADMIN_TOKEN: &str = "token-for-every-site";

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A running `vigil ingest`, killed when dropped.
struct Ingest {
    child: Child,
    /// `http(s)://127.0.0.1:PORT`.
    base: String,
    _tokens: tempfile::NamedTempFile,
    log: std::path::PathBuf,
}

impl Ingest {
    fn start(brokers: &str, topic: &str, extra: &[&str], tls: Option<&Pki>) -> Result<Ingest> {
        let tokens = tempfile::NamedTempFile::new()?;
        std::fs::write(
            tokens.path(),
            format!(
                "# test credentials\n{} site-a\n{} *\n",
                sha256_hex(CAMERA_TOKEN),
                sha256_hex(ADMIN_TOKEN)
            ),
        )?;
        let log = log_dir().join(format!("{}.log", unique("ingest")));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
        cmd.args(["ingest", "--brokers", brokers, "--frames-topic", topic])
            .args(["--addr", "127.0.0.1:0", "--tokens", path(tokens.path())])
            .args(extra);
        if let Some(pki) = tls {
            cmd.args(["--tls-cert", path(&pki.server_cert)])
                .args(["--tls-key", path(&pki.server_key)]);
        }
        let mut child = cmd
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("ingest listening on ")
            .with_context(|| {
                format!(
                    "ingest said {line:?}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })?
            .to_string();
        let scheme = if tls.is_some() { "https" } else { "http" };
        Ok(Ingest {
            child,
            base: format!("{scheme}://{addr}"),
            _tokens: tokens,
            log,
        })
    }

    fn addr(&self) -> &str {
        self.base.split("://").nth(1).unwrap_or_default()
    }

    fn url(&self, query: &str) -> String {
        format!("{}/v1/frames?{query}", self.base)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small JPEG of an empty scene (cheap for the worker: nobody to judge).
fn empty_jpeg() -> Vec<u8> {
    use opencv::core::{Mat, Scalar, CV_8UC3};
    let img =
        Mat::new_rows_cols_with_default(240, 320, CV_8UC3, Scalar::new(90.0, 120.0, 140.0, 0.0))
            .unwrap();
    vigil::decode::encode_jpeg(&img, 80).unwrap()
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    content_type: &str,
    body: Vec<u8>,
) -> Result<(u16, serde_json::Value, Option<String>)> {
    let mut req = client
        .post(url)
        .header("Content-Type", content_type)
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await?;
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, body, retry))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_uploads_from_twenty_clients_are_each_observed_once() -> Result {
    let topics = create_topics(3).await?;
    let ingest = Ingest::start(
        &brokers(),
        &topics.frames,
        &["--camera-rate", "1000", "--token-rate", "10000"],
        None,
    )?;
    let client = reqwest::Client::new();
    let jpeg = empty_jpeg();

    // A camera's raw JPEG and a phone's form upload first.
    let (status, body, _) = post(
        &client,
        &ingest.url("site=site-a&camera=cam-http&zone=kitchen"),
        Some(CAMERA_TOKEN),
        "image/jpeg",
        jpeg.clone(),
    )
    .await?;
    ensure!(status == 202, "{status}: {body}");
    ensure!(
        body["topic"] == topics.frames.as_str() && body["offset"].is_i64(),
        "{body}"
    );
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(jpeg.clone())
            .file_name("IMG_0001.jpg")
            .mime_str("image/jpeg")?,
    );
    let r = client
        .post(ingest.url("site=site-b&camera=phone-7"))
        .bearer_auth(ADMIN_TOKEN)
        .multipart(form)
        .send()
        .await?;
    ensure!(r.status().as_u16() == 202, "{}", r.text().await?);

    // 1,000 uploads from 20 concurrent clients, 50 each, on 20 cameras.
    let started = Instant::now();
    let mut clients = Vec::new();
    for c in 0..20 {
        let (client, jpeg) = (client.clone(), jpeg.clone());
        let url = ingest.url(&format!("site=site-a&camera=cam-{c:02}"));
        clients.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for _ in 0..50 {
                let t = Instant::now();
                let (status, body, _) = post(
                    &client,
                    &url,
                    Some(CAMERA_TOKEN),
                    "image/jpeg",
                    jpeg.clone(),
                )
                .await?;
                ensure!(status == 202, "{status}: {body}");
                acks.push((
                    body["partition"].as_i64().context("partition")? as i32,
                    body["offset"].as_i64().context("offset")?,
                    t.elapsed(),
                ));
            }
            Ok::<_, anyhow::Error>(acks)
        }));
    }
    let mut acks = Vec::new();
    for c in clients {
        acks.extend(c.await??);
    }
    let took = started.elapsed();
    let mut latencies: Vec<Duration> = acks.iter().map(|a| a.2).collect();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    eprintln!(
        "ingest: 1000 uploads from 20 clients in {:.2} s ({:.0}/s); upload→202 p50 {:?} p90 {:?} p99 {:?} max {:?}",
        took.as_secs_f64(),
        1000.0 / took.as_secs_f64(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        latencies[latencies.len() - 1]
    );
    let offsets: std::collections::HashSet<(i32, i64)> =
        acks.iter().map(|(p, o, _)| (*p, *o)).collect();
    ensure!(offsets.len() == 1000, "each 202 names its own offset");

    // A worker observes each frame exactly once, at the offsets the 202s named.
    let w = Worker::start(&topics, &unique("g"), &[])?;
    let obs = collect(
        &topics.observations,
        1002,
        Duration::from_secs(240),
        Duration::from_secs(3),
    )
    .await
    .with_context(|| w.log_text())?;
    let seen = sources_once(&obs)?;
    ensure!(seen.len() == 1002, "{} observations", seen.len());
    ensure!(
        offsets.is_subset(&seen),
        "every acknowledged upload was observed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_are_refused_with_the_right_code_and_nothing_is_published() -> Result {
    let topics = create_topics(1).await?;
    let ingest = Ingest::start(
        &brokers(),
        &topics.frames,
        &["--max-frame-bytes", "100000"],
        None,
    )?;
    let client = reqwest::Client::new();
    let jpeg = empty_jpeg();
    let png = {
        let img = opencv::core::Mat::new_rows_cols_with_default(
            8,
            8,
            opencv::core::CV_8UC3,
            opencv::core::Scalar::all(0.0),
        )?;
        let mut buf = opencv::core::Vector::<u8>::new();
        opencv::imgcodecs::imencode(".png", &img, &mut buf, &opencv::core::Vector::new())?;
        opencv::core::VectorToVec::to_vec(&buf)
    };
    let good = "site=site-a&camera=cam-1";
    let far_future = format!(
        "{good}&captured_at={}",
        vigil::contract::now_ms() + 3_600_000
    );
    // (what, query, token, content type, body, status, error code)
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        &'a str,
        Vec<u8>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "not a JPEG",
            good.into(),
            Some(CAMERA_TOKEN),
            "image/jpeg",
            b"hello, not an image".to_vec(),
            400,
            "not_jpeg",
        ),
        (
            "a truncated JPEG",
            good.into(),
            Some(CAMERA_TOKEN),
            "image/jpeg",
            jpeg[..jpeg.len() / 2].to_vec(),
            400,
            "truncated",
        ),
        (
            "an empty body",
            good.into(),
            Some(CAMERA_TOKEN),
            "image/jpeg",
            vec![],
            400,
            "empty",
        ),
        (
            "no camera",
            "site=site-a".into(),
            Some(CAMERA_TOKEN),
            "image/jpeg",
            jpeg.clone(),
            400,
            "missing_parameter",
        ),
        (
            "a camera id with a newline",
            "site=site-a&camera=cam%0A1".into(),
            Some(CAMERA_TOKEN),
            "image/jpeg",
            jpeg.clone(),
            400,
            "bad_header",
        ),
        (
            "a misspelt parameter",
            format!("{good}&zonee=prep"),
            Some(CAMERA_TOKEN),
            "image/jpeg",
            jpeg.clone(),
            400,
            "bad_parameter",
        ),
        (
            "a capture time an hour ahead",
            far_future,
            Some(CAMERA_TOKEN),
            "image/jpeg",
            jpeg.clone(),
            400,
            "bad_header",
        ),
        (
            "no credential",
            good.into(),
            None,
            "image/jpeg",
            jpeg.clone(),
            401,
            "unauthorized",
        ),
        (
            "an unknown token",
            good.into(),
            Some("guessed-token"),
            "image/jpeg",
            jpeg.clone(),
            401,
            "unauthorized",
        ),
        (
            "a token for another site",
            "site=site-b&camera=cam-1".into(),
            Some(CAMERA_TOKEN),
            "image/jpeg",
            jpeg.clone(),
            403,
            "forbidden",
        ),
        (
            "too big",
            good.into(),
            Some(CAMERA_TOKEN),
            "image/jpeg",
            vec![0xFF; 150_000],
            413,
            "oversize",
        ),
        (
            "a PNG by its type",
            good.into(),
            Some(CAMERA_TOKEN),
            "image/png",
            png.clone(),
            415,
            "unsupported_media_type",
        ),
        (
            "a PNG by its bytes",
            good.into(),
            Some(CAMERA_TOKEN),
            "application/octet-stream",
            png,
            415,
            "unsupported_media_type",
        ),
        (
            "a form-encoded body",
            good.into(),
            Some(CAMERA_TOKEN),
            "application/x-www-form-urlencoded",
            jpeg.clone(),
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, query, token, ctype, body, want, code) in cases {
        let (status, answer, _) = post(&client, &ingest.url(&query), token, ctype, body).await?;
        ensure!(
            status == want && answer["error"] == code && answer["message"].is_string(),
            "{what}: wanted {want} {code}, got {status} {answer}"
        );
    }
    // 413 without reading the body: a declared size over the limit is answered at once, with
    // the body never sent.
    let mut s = std::net::TcpStream::connect(ingest.addr())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "POST /v1/frames?{good} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CAMERA_TOKEN}\r\nContent-Type: image/jpeg\r\nContent-Length: 50000000\r\n\r\n"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    ensure!(
        &head == b"HTTP/1.1 413",
        "{}",
        String::from_utf8_lossy(&head)
    );

    // The token never reaches the log.
    ensure!(!ingest.log_text().contains(CAMERA_TOKEN));
    // Nothing was published: one good upload is the only record.
    let (status, body, _) = post(
        &client,
        &ingest.url(good),
        Some(CAMERA_TOKEN),
        "image/jpeg",
        jpeg,
    )
    .await?;
    ensure!(status == 202, "{status} {body}");
    let got = collect(
        &topics.frames,
        1,
        Duration::from_secs(20),
        Duration::from_secs(2),
    )
    .await?;
    ensure!(got.len() == 1 && got[0].offset == body["offset"].as_i64().unwrap_or(-1));
    ensure!(got[0].header("camera").as_deref() == Some("cam-1"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_gets_429_while_other_cameras_are_accepted() -> Result {
    let topics = create_topics(1).await?;
    // The token's quota (3/s, bursts of 6) is smaller than the flood: the flood must spend
    // the camera's quota, not the token's, or the quiet camera would be refused too.
    let ingest = Ingest::start(
        &brokers(),
        &topics.frames,
        &["--camera-rate", "2", "--token-rate", "3"],
        None,
    )?;
    let client = reqwest::Client::new();
    let jpeg = empty_jpeg();
    let (mut accepted, mut limited, mut retry_after) = (0, 0, None);
    for _ in 0..12 {
        let (status, body, retry) = post(
            &client,
            &ingest.url("site=site-a&camera=flooding"),
            Some(CAMERA_TOKEN),
            "image/jpeg",
            jpeg.clone(),
        )
        .await?;
        match status {
            202 => accepted += 1,
            429 => {
                limited += 1;
                ensure!(body["error"] == "rate_limited");
                retry_after = retry;
            }
            other => anyhow::bail!("unexpected {other}: {body}"),
        }
    }
    ensure!(
        accepted >= 2 && limited >= 3,
        "{accepted} accepted, {limited} limited"
    );
    ensure!(
        retry_after.as_deref().and_then(|r| r.parse::<u64>().ok()) >= Some(1),
        "Retry-After: {retry_after:?}"
    );
    let (status, _, _) = post(
        &client,
        &ingest.url("site=site-a&camera=quiet"),
        Some(CAMERA_TOKEN),
        "image/jpeg",
        jpeg,
    )
    .await?;
    ensure!(status == 202, "another camera is still accepted: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_client_times_out() -> Result {
    let topics = create_topics(1).await?;
    let ingest = Ingest::start(
        &brokers(),
        &topics.frames,
        &["--read-timeout-secs", "2"],
        None,
    )?;
    // Headers that never end: the connection is closed.
    let mut s = std::net::TcpStream::connect(ingest.addr())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(b"POST /v1/frames?site=site-a&camera=c HTTP/1.1\r\nHost: x\r\n")?;
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    ensure!(
        started.elapsed() < Duration::from_secs(6),
        "closed after {:?}",
        started.elapsed()
    );
    // A body that stops half way: 408.
    let mut s = std::net::TcpStream::connect(ingest.addr())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "POST /v1/frames?site=site-a&camera=c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {CAMERA_TOKEN}\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\n0123456789"
    )?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    ensure!(
        &head == b"HTTP/1.1 408",
        "{}",
        String::from_utf8_lossy(&head)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_uploads_and_a_lost_broker_gives_503() -> Result {
    let pki = Pki::generate()?;
    // A broker of this test's own, so that it can be stopped.
    let dir = tempfile::tempdir()?;
    let out = Command::new(repo().join("scripts/broker.sh"))
        .args(["start", path(dir.path()), "1"])
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let own = String::from_utf8(out.stdout)?
        .trim()
        .strip_prefix("VIGIL_BROKERS=")
        .context("broker address")?
        .to_string();
    let stop = || {
        Command::new(repo().join("scripts/broker.sh"))
            .args(["stop", path(dir.path())])
            .status()
    };
    let ingest = Ingest::start(
        &own,
        "vigil.frames",
        &["--ack-timeout-secs", "3"],
        Some(&pki),
    )?;
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&pki.ca)?)?)
        .build()?;
    let jpeg = empty_jpeg();
    let url = ingest.url("site=site-a&camera=cam-tls");
    let (status, body, _) = post(
        &client,
        &url,
        Some(CAMERA_TOKEN),
        "image/jpeg",
        jpeg.clone(),
    )
    .await?;
    ensure!(status == 202, "over HTTPS: {status} {body}");
    // Plain HTTP against the TLS port is not served.
    let plain = reqwest::Client::new()
        .post(url.replace("https://", "http://"))
        .bearer_auth(CAMERA_TOKEN)
        .body(jpeg.clone())
        .send()
        .await;
    ensure!(plain.is_err() || !plain?.status().is_success());

    stop()?;
    let started = Instant::now();
    let (status, body, retry) = post(&client, &url, Some(CAMERA_TOKEN), "image/jpeg", jpeg).await?;
    ensure!(
        status == 503 && body["error"] == "broker_unavailable" && retry.is_some(),
        "{status} {body} {retry:?}\n{}",
        ingest.log_text()
    );
    // The 3 s acknowledgement timeout, plus librdkafka's timeout scan, on a busy machine.
    ensure!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}
