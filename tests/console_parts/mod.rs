//! The parts `tests/console.rs` runs: console replicas, the browser, the outside scorecard,
//! moto's S3 server.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use super::common::*;
use super::{DAY, PASSWORD, T0};

/// A child process killed when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vigil console`, killed when dropped.
pub struct Console {
    _proc: Proc,
    pub addr: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// A client that trusts the console's certificate and follows no redirects.
    pub client: reqwest::Client,
}

impl Console {
    /// A console replica; with `tls`, serving HTTPS with the test PKI's server certificate.
    pub fn start(
        t: &Topics,
        acks: &str,
        users: &std::path::Path,
        evidence: &str,
        tls: Option<&pki::Pki>,
    ) -> Result<Console> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vigil"));
        cmd.args(["console", "--brokers", &brokers(), "--topic", &t.violations]);
        let mut client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none());
        if let Some(p) = tls {
            cmd.arg("--tls-cert")
                .arg(&p.server_cert)
                .arg("--tls-key")
                .arg(&p.server_key);
            client = client
                .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&p.ca)?)?);
        }
        let mut child = cmd
            .args([
                "--acks-topic",
                acks,
                "--observations-topic",
                &t.observations,
            ])
            .args(["--addr", "127.0.0.1:0", "--evidence-url", evidence])
            .arg("--users")
            .arg(users)
            .args(["--refresh-secs", "2", "--ack-overdue-secs", "600"])
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
        Ok(Console {
            _proc: Proc(child),
            addr,
            scheme: if tls.is_some() { "https" } else { "http" },
            client: client.build()?,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in with reqwest; returns the status and the session cookie (`name=value`).
pub async fn sign_in(c: &Console, user: &str, password: &str) -> Result<(u16, Option<String>)> {
    let r = c
        .client
        .post(c.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "username={user}&password={}",
            password.replace(' ', "+")
        ))
        .send()
        .await?;
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_string);
    Ok((r.status().as_u16(), cookie))
}

pub async fn get_as(c: &Console, cookie: &str, path: &str) -> Result<(u16, String)> {
    let r = c
        .client
        .get(c.url(path))
        .header("cookie", cookie)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// Runs browser steps (`tests/tools/browser.py`); one JSON result per step.
pub fn browser(steps: serde_json::Value) -> Result<Vec<serde_json::Value>> {
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), steps.to_string())?;
    let out = Command::new("timeout")
        .arg("120")
        .arg(python())
        .arg(repo().join("tests/tools/browser.py"))
        .arg(file.path())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "browser: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_str(text.trim())?)
}

/// The scorecard CSV computed outside vigil from the topics, as a sorted list of lines.
pub fn outside_scorecard(t: &Topics, acks: &str, sites: &[&str]) -> Result<Vec<String>> {
    let out = Command::new(python())
        .arg(repo().join("tests/tools/scorecard.py"))
        .args([&brokers(), &t.observations, &t.violations, acks, DAY, DAY])
        .args(sites)
        .output()?;
    ensure!(
        out.status.success(),
        "scorecard.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(sorted_lines(&String::from_utf8(out.stdout)?))
}

pub fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// One camera's scene at a site.
pub fn scene_at(site: &str, camera: &str, script: &str) -> Vec<Rec> {
    let mut recs = scene(camera, T0, 0, script);
    for r in &mut recs {
        r.headers[0].1 = site.as_bytes().to_vec();
    }
    recs
}

/// moto's S3 server on a free port with a bucket; killed when dropped.
pub async fn s3(bucket: &str) -> Result<(Proc, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let proc = Proc(
        Command::new(repo().join(".venv/bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                log_dir().join(format!("{}.log", unique("moto"))),
            )?)
            .spawn()
            .context("moto_server (scripts/requirements.txt: moto[server])")?,
    );
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client().put(format!("{endpoint}/{bucket}")).send().await {
            ensure!(r.status().is_success(), "create bucket: {}", r.status());
            break;
        }
        ensure!(Instant::now() < deadline, "moto_server never answered");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok((proc, endpoint))
}

/// Dan's session on a console.
pub async fn dan_on(c: &Console) -> Result<String> {
    sign_in(c, "dan", PASSWORD)
        .await?
        .1
        .context("dan's session")
}

/// Runs a future to completion from a synchronous condition (on another thread's runtime).
pub fn futures_block<F: std::future::Future + Send>(f: F) -> F::Output
where
    F::Output: Send,
{
    std::thread::scope(|s| {
        s.spawn(|| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime")
                .block_on(f)
        })
        .join()
        .expect("no panic")
    })
}
