//! The console managers use, with real parts: a real broker, a real `vigil worker` writing
//! evidence pictures to an S3 API (moto's server, from PyPI), two `vigil console` replicas with a
//! users file made by `vigil console hash-password`, `vigil alerts` following acknowledgements,
//! and headless Chromium driven over the DevTools protocol (`tests/tools/browser.py`): a
//! manager of site-001 is sent to the sign-in page, fills the form, sees her open episode with
//! its picture (marked overdue), acknowledges it with a note; the acknowledgement shows on the
//! second replica and in `vigil alerts`; site-002's episode, picture and JSON are refused (403);
//! a forged cross-site form post changes nothing. The scorecard's CSV equals the one computed by
//! an outside client from the topics (`tests/tools/scorecard.py`, confluent-kafka + fastavro),
//! for the manager and for the district manager. Wrong passwords throttle; a users file with a
//! plaintext password is refused naming its line. Screenshots go to `target/test-logs/`.

mod common;

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use common::*;
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

/// Scene start (2026-04-19 12:00 UTC): a real capture time, in the past.
const T0: i64 = 1_776_600_000_000;
const DAY: &str = "2026-04-19";
const PASSWORD: &str = "kitchen rules 2026";

/// A child process killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `vigil console`, killed when dropped.
struct Console {
    _proc: Proc,
    addr: String,
    /// `http` or `https`.
    scheme: &'static str,
    /// A client that trusts the console's certificate and follows no redirects.
    client: reqwest::Client,
}

impl Console {
    /// A console replica; with `tls`, serving HTTPS with the test PKI's server certificate.
    fn start(
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

    fn url(&self, path: &str) -> String {
        format!("{}://{}{path}", self.scheme, self.addr)
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Signs in with reqwest; returns the status and the session cookie (`name=value`).
async fn sign_in(c: &Console, user: &str, password: &str) -> Result<(u16, Option<String>)> {
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

async fn get_as(c: &Console, cookie: &str, path: &str) -> Result<(u16, String)> {
    let r = c
        .client
        .get(c.url(path))
        .header("cookie", cookie)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// Runs browser steps (`tests/tools/browser.py`); one JSON result per step.
fn browser(steps: serde_json::Value) -> Result<Vec<serde_json::Value>> {
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
fn outside_scorecard(t: &Topics, acks: &str, sites: &[&str]) -> Result<Vec<String>> {
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

fn sorted_lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_string).collect();
    v.sort();
    v
}

/// One camera's scene at a site.
fn scene_at(site: &str, camera: &str, script: &str) -> Vec<Rec> {
    let mut recs = scene(camera, T0, 0, script);
    for r in &mut recs {
        r.headers[0].1 = site.as_bytes().to_vec();
    }
    recs
}

/// moto's S3 server on a free port with a bucket; killed when dropped.
async fn s3(bucket: &str) -> Result<(Proc, String)> {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managers_sign_in_see_their_sites_acknowledge_and_score() -> Result {
    // A users file made with the helper: ana manages site-001, dan the district of both.
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["console", "hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(PASSWORD.as_bytes())?;
            c.wait_with_output()
        })?;
    let line = String::from_utf8(out.stdout)?;
    ensure!(line.starts_with("password_hash = \"$argon2id$"), "{line}");
    let users = tempfile::NamedTempFile::new()?;
    std::fs::write(
        users.path(),
        format!(
            "[[user]]\nname = \"ana\"\n{line}role = \"manager\"\nsites = [\"site-001\"]\n\n[[user]]\nname = \"dan\"\n{line}role = \"district\"\nsites = [\"site-001\", \"site-002\"]\n"
        ),
    )?;
    // A plaintext password is refused at start-up, naming the line and the user.
    let bad = tempfile::NamedTempFile::new()?;
    std::fs::write(
        bad.path(),
        "[[user]]\nname = \"eve\"\nrole = \"admin\"\npassword_hash = \"hunter2\"\n",
    )?;
    let refused = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["console", "--brokers", &brokers(), "--users"])
        .arg(bad.path())
        .output()?;
    let err = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        refused.status.code() == Some(2) && err.contains("line 4") && err.contains("\"eve\""),
        "{:?} {err}",
        refused.status
    );

    // Evidence in an S3 API; the worker and the consoles reach it through AWS_* variables.
    let bucket = "vigil-evidence";
    let (_moto, endpoint) = s3(bucket).await?;
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
        ("AWS_ENDPOINT", endpoint.as_str()),
    ] {
        std::env::set_var(k, v);
    }
    let evidence = format!("s3://{bucket}/evidence");
    let topics = create_topics(1).await?;
    let acks = format!("{}.acks", topics.frames.trim_end_matches(".frames"));
    {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .create()?;
        admin
            .create_topics(
                &[NewTopic::new(&acks, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await?;
    }
    let rules = tempfile::NamedTempFile::new()?;
    std::fs::write(rules.path(), RULES)?;
    // Site 001: an unmasked cook, still open. Site 002: unmasked, then masked (resolves).
    let mut frames = scene_at("site-001", "cam-a", &"V".repeat(16));
    frames.extend(scene_at(
        "site-002",
        "cam-b",
        &format!("{}{}", "V".repeat(16), "C".repeat(20)),
    ));
    produce(&topics.frames, &frames).await?;
    let worker = Worker::start(
        &topics,
        &unique("g"),
        &[
            "--rules",
            rules.path().to_str().unwrap(),
            "--evidence-url",
            &evidence,
        ],
    )?;
    let alerts_log = log_dir().join(format!("{}.out", unique("alerts")));
    let _alerts = Proc(
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args([
                "alerts",
                "--brokers",
                &brokers(),
                "--topic",
                &topics.violations,
            ])
            .args(["--acks-topic", &acks, "--renotify-overdue-secs", "60"])
            .args(["--group", &unique("alerts")])
            .stdout(std::fs::File::create(&alerts_log)?)
            .stderr(Stdio::null())
            .spawn()?,
    );
    let codec = event_codec();
    let deadline = Instant::now() + Duration::from_secs(120);
    let (a, b) = loop {
        let got = collect(
            &topics.violations,
            1,
            Duration::from_secs(20),
            Duration::from_secs(1),
        )
        .await
        .unwrap_or_default();
        let events: Vec<ViolationEvent> = got
            .iter()
            .filter_map(|g| codec.decode(&g.payload).ok())
            .collect();
        let opened = |cam: &str| {
            events
                .iter()
                .find(|e| e.camera == cam && e.kind.as_str() == "opened")
                .cloned()
        };
        let b_resolved = events
            .iter()
            .any(|e| e.camera == "cam-b" && e.kind.as_str() == "resolved");
        if let (Some(a), Some(b), true) = (opened("cam-a"), opened("cam-b"), b_resolved) {
            break (a, b);
        }
        ensure!(
            Instant::now() < deadline,
            "episodes never opened and resolved: {events:?}\n{}",
            worker.log_text()
        );
    };
    ensure!(
        a.evidence_uri
            .as_deref()
            .is_some_and(|u| u.starts_with(&evidence)),
        "{:?}",
        a.evidence_uri
    );
    let (ida, idb) = (a.episode_id.clone(), b.episode_id.clone());

    // Replica 2 serves HTTPS itself: its session cookie is Secure.
    let tls = pki::Pki::generate()?;
    let c1 = Console::start(&topics, &acks, users.path(), &evidence, None)?;
    let c2 = Console::start(&topics, &acks, users.path(), &evidence, Some(&tls))?;
    // Without a session pages go to the sign-in and the API answers 401.
    for (path, want) in [
        ("/", 303),
        ("/history", 303),
        ("/evidence/x", 303),
        ("/api/open", 401),
    ] {
        let r = c2.client.get(c2.url(path)).send().await?;
        ensure!(r.status().as_u16() == want, "{path}: {}", r.status());
    }
    // Replica 1 has read the episode (its JSON, as the district manager).
    let (_, dan) = sign_in(&c1, "dan", PASSWORD).await?;
    let dan = dan.context("dan's session")?;
    wait_for(
        "replica 1 shows the episode",
        Duration::from_secs(30),
        || futures_block(get_as(&c1, &dan, "/api/open")).is_ok_and(|(_, b)| b.contains(&ida)),
    )
    .await?;

    // In the browser: sign in by the form, see the picture, acknowledge with a note.
    let shot = |name: &str| log_dir().join(name).display().to_string();
    let card = format!(r#"article[data-episode="{ida}"]"#);
    let r = browser(serde_json::json!([
        {"goto": c1.url("/")},
        {"submit": format!("document.querySelector('input[name=username]').value='ana';document.querySelector('input[name=password]').value='{PASSWORD}';document.getElementById('login').submit()")},
        {"eval": format!(r#"(() => {{ const c = document.querySelector('{card}'); return {{ overdue: c.classList.contains('overdue'), width: c.querySelector('img').naturalWidth, sites: [...document.querySelectorAll('section.site')].map(s => s.dataset.site), other: document.body.innerHTML.includes('{idb}') }}; }})()"#)},
        {"screenshot": shot("console-signed-in.png")},
        {"submit": format!(r#"(() => {{ const c = document.querySelector('{card}'); c.querySelector('input[name=note]').value = 'mask handed out'; c.querySelector('form button').click(); }})()"#)},
        {"eval": format!(r#"document.querySelector('{card} .ack').textContent"#)},
        {"screenshot": shot("console-acknowledged.png")},
        {"eval": format!("Promise.all(['/evidence/{idb}', '/api/episode/{idb}', '/episode/{idb}', '/api/episode/{ida}', '/evidence/{ida}'].map(p => fetch(p).then(r => r.status)))")},
        {"goto": format!("data:text/html,<form id=f method=post action='{}'><input name=csrf value=forged><input name=note value=forged></form><script>document.getElementById('f').submit()</script>", c1.url(&format!("/episodes/{ida}/ack")))},
        {"sleep": 1},
        {"eval": "location.href"},
        {"goto": c1.url(&format!("/history?from={DAY}&to={DAY}"))},
        {"eval": "[...document.querySelectorAll('tr[data-episode]')].map(r => [r.dataset.episode, r.querySelector('.ackcell').textContent])"},
        {"screenshot": shot("console-history.png")},
        {"goto": c1.url(&format!("/scorecard?from=2026-03-23&to={DAY}"))},
        {"eval": "document.querySelectorAll('svg.chart circle').length"},
        {"screenshot": shot("console-scorecard.png")},
    ]))?;
    ensure!(
        r[0].as_str().is_some_and(|u| u.ends_with("/login")),
        "not sent to the sign-in: {r:?}"
    );
    ensure!(r[1] == c1.url("/"), "signed in and back: {r:?}");
    ensure!(
        r[2]["overdue"] == true && r[2]["width"].as_i64() > Some(100) && r[2]["other"] == false,
        "the open episode with its picture, overdue, and nothing of site-002: {r:?}"
    );
    ensure!(r[2]["sites"] == serde_json::json!(["site-001"]), "{r:?}");
    let ack_text = r[5].as_str().unwrap_or_default();
    ensure!(
        ack_text.contains("acknowledged by ana") && ack_text.contains("mask handed out"),
        "{ack_text}"
    );
    ensure!(
        r[7] == serde_json::json!([403, 403, 403, 200, 200]),
        "another site's picture, JSON and page are refused: {r:?}"
    );
    // The forged form from another site carried no cookie (SameSite): it met the sign-in.
    ensure!(
        r[10].as_str().is_some_and(|u| u.ends_with("/login")),
        "{r:?}"
    );
    let rows = r[12].as_array().context("history rows")?;
    ensure!(
        rows.len() == 1
            && rows[0][0] == ida.as_str()
            && rows[0][1].as_str().is_some_and(|t| t.contains("ana")),
        "history shows site-001's episode with its acknowledgement: {rows:?}"
    );
    ensure!(r[15].as_i64() >= Some(1), "a point on the chart: {r:?}");

    // A forged post with a stolen cookie but a foreign origin, or without the token: 403.
    let (_, ana) = sign_in(&c1, "ana", PASSWORD).await?;
    let ana = ana.context("ana's session")?;
    for (origin, body) in [
        (Some("https://evil.example"), "csrf=x&note=forged"),
        (None, "note=forged"),
    ] {
        let mut req = client()
            .post(c1.url(&format!("/episodes/{ida}/ack")))
            .header("cookie", &ana)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req
                .header("origin", o)
                .header("sec-fetch-site", "cross-site");
        }
        ensure!(req.send().await?.status() == 403, "{origin:?} {body}");
    }
    // Oversized and malformed notes: 400.
    let (_, page) = get_as(&c1, &ana, "/").await?;
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .context("a csrf token")?
        .to_string();
    for body in [
        format!("csrf={csrf}&note={}", "x".repeat(501)),
        format!("csrf={csrf}&note=%01"),
        format!("csrf={csrf}&note=%FF"),
    ] {
        let r = client()
            .post(c1.url(&format!("/episodes/{ida}/ack")))
            .header("cookie", &ana)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await?;
        ensure!(
            r.status() == 400,
            "{}: {}",
            &body[..body.len().min(80)],
            r.status()
        );
    }

    // The second replica and vigil alerts see the acknowledgement.
    let (_, ana2) = sign_in(&c2, "ana", PASSWORD).await?;
    let ana2 = ana2.context("ana's session on replica 2")?;
    let set = c2
        .client
        .post(c2.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "username=ana&password={}",
            PASSWORD.replace(' ', "+")
        ))
        .send()
        .await?;
    let set = set.headers()["set-cookie"].to_str()?.to_string();
    ensure!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Secure"),
        "{set}"
    );
    wait_for(
        "replica 2 shows the acknowledgement",
        Duration::from_secs(30),
        || {
            futures_block(get_as(&c2, &ana2, "/api/open")).is_ok_and(|(_, b)| {
                let v: serde_json::Value = serde_json::from_str(&b).unwrap_or_default();
                v["sites"][0]["episodes"][0]["ack"]["note"] == "mask handed out"
                    && v["sites"][0]["episodes"][0]["overdue"] == false
            })
        },
    )
    .await?;
    wait_for(
        "vigil alerts prints the acknowledgement",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&alerts_log)
                .is_ok_and(|t| t.contains("ACKED") && t.contains("by=ana"))
        },
    )
    .await?;
    let alerts_text = std::fs::read_to_string(&alerts_log)?;
    ensure!(
        alerts_text
            .lines()
            .filter(|l| l.starts_with("ACKED"))
            .count()
            == 1,
        "once: {alerts_text}"
    );

    // The scorecard equals the outside client's, for the manager and for the district.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let want_ana = outside_scorecard(&topics, &acks, &["site-001"])?;
        let want_dan = outside_scorecard(&topics, &acks, &[])?;
        let q = format!("/scorecard.csv?from={DAY}&to={DAY}");
        let got_ana = sorted_lines(&get_as(&c2, &ana2, &q).await?.1);
        let got_dan = sorted_lines(&get_as(&c2, &dan_on(&c2).await?, &q).await?.1);
        let judged: i64 = want_dan
            .iter()
            .filter_map(|l| l.split(',').nth(4)?.parse::<i64>().ok())
            .sum();
        if got_ana == want_ana && got_dan == want_dan && judged >= 52 {
            ensure!(want_dan.len() == 3 && want_ana.len() == 2, "{want_dan:?}");
            break;
        }
        if Instant::now() > deadline {
            bail!("scorecards differ:\nana {got_ana:?}\n vs {want_ana:?}\ndan {got_dan:?}\n vs {want_dan:?}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    // The district manager's scorecard: both sites ranked, a chart each.
    let r = browser(serde_json::json!([
        {"goto": c2.url("/")},
        {"submit": format!("document.querySelector('input[name=username]').value='dan';document.querySelector('input[name=password]').value='{PASSWORD}';document.getElementById('login').submit()")},
        {"goto": c2.url(&format!("/scorecard?from=2026-03-23&to={DAY}"))},
        {"eval": "[[...document.querySelectorAll('table.ranking tr[data-site]')].map(r => r.dataset.site), document.querySelectorAll('svg.chart').length]"},
        {"screenshot": shot("console-scorecard-district.png")},
    ]))?;
    ensure!(
        r[3] == serde_json::json!([["site-002", "site-001"], 2]),
        "site-002 (masked in the end) ranks above site-001, a chart each: {r:?}"
    );

    // Wrong passwords throttle: 401 five times, then 429 (the right one too).
    for i in 0..5 {
        ensure!(sign_in(&c2, "ana", "wrong").await?.0 == 401, "try {i}");
    }
    ensure!(sign_in(&c2, "ana", "wrong").await?.0 == 429);
    ensure!(sign_in(&c2, "ana", PASSWORD).await?.0 == 429);
    Ok(())
}

/// Dan's session on a console.
async fn dan_on(c: &Console) -> Result<String> {
    sign_in(c, "dan", PASSWORD)
        .await?
        .1
        .context("dan's session")
}

/// Runs a future to completion from a synchronous condition (on another thread's runtime).
fn futures_block<F: std::future::Future + Send>(f: F) -> F::Output
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
