//! The console managers use, with real parts: a real broker, a real `vigil worker` writing
//! evidence pictures to an S3 API (moto's server, from PyPI), two `vigil console` replicas (the
//! second serving HTTPS) with a users file made by `vigil console hash-password`, `vigil alerts`
//! following acknowledgements, and headless Chromium driven over the DevTools protocol
//! (`tests/tools/browser.py`): a manager of site-001 is sent to the sign-in page, fills the
//! form, sees her open episode with its picture (marked overdue), acknowledges it with a note;
//! the acknowledgement shows on the second replica and in `vigil alerts`; site-002's episode,
//! picture and JSON are refused (403); forms on another site posting an acknowledgement and a
//! sign-out change nothing. The scorecard's CSV equals the one computed by an outside client
//! from the topics (`tests/tools/scorecard.py`, confluent-kafka + fastavro), for the manager
//! and for the district manager. Wrong passwords throttle; a users file with a plaintext
//! password is refused naming its line. Screenshots go to `target/test-logs/`.

mod common;
#[path = "console_parts/mod.rs"]
mod parts;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use common::*;
use parts::*;
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
pub const T0: i64 = 1_776_600_000_000;
pub const DAY: &str = "2026-04-19";
pub const PASSWORD: &str = "kitchen rules 2026";

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
        ("/scorecard", 303),
        ("/scorecard.csv", 303),
        ("/episode/x", 303),
        ("/evidence/x", 303),
        ("/api/episode/x", 401),
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
    // Forms on another site that post to the console: an acknowledgement and a sign-out.
    let forged = |path: String| {
        format!("data:text/html,<form id=f method=post action='{}'><input name=csrf value=forged><input name=note value=forged></form><script>document.getElementById('f').submit()</script>", c1.url(&path))
    };
    let r = browser(serde_json::json!([
        {"goto": c1.url("/")},
        {"submit": format!("document.querySelector('input[name=username]').value='ana';document.querySelector('input[name=password]').value='{PASSWORD}';document.getElementById('login').submit()")},
        {"eval": format!(r#"(() => {{ const c = document.querySelector('{card}'); return {{ overdue: c.classList.contains('overdue'), width: c.querySelector('img').naturalWidth, sites: [...document.querySelectorAll('section.site')].map(s => s.dataset.site), other: document.body.innerHTML.includes('{idb}') }}; }})()"#)},
        {"screenshot": shot("console-signed-in.png")},
        {"goto": forged(format!("/episodes/{ida}/ack"))},
        {"sleep": 2},
        {"goto": forged("/logout".into())},
        {"sleep": 2},
        {"goto": c1.url("/")},
        {"eval": format!("document.querySelector('{card} .ack') === null && document.querySelector('{card} form.ackform') !== null")},
        {"submit": format!(r#"(() => {{ const c = document.querySelector('{card}'); c.querySelector('input[name=note]').value = 'mask handed out'; c.querySelector('form button').click(); }})()"#)},
        {"eval": format!(r#"document.querySelector('{card} .ack').textContent"#)},
        {"screenshot": shot("console-acknowledged.png")},
        {"eval": format!("Promise.all(['/evidence/{idb}', '/api/episode/{idb}', '/episode/{idb}', '/api/episode/{ida}', '/evidence/{ida}'].map(p => fetch(p).then(r => r.status)))")},
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
    // The forged sign-out changed nothing (still signed in), nor did the forged acknowledgement.
    ensure!(
        r[8] == c1.url("/") && r[9] == true,
        "forged posts refused: {r:?}"
    );
    let ack_text = r[11].as_str().unwrap_or_default();
    ensure!(
        ack_text.contains("acknowledged by ana") && ack_text.contains("mask handed out"),
        "{ack_text}"
    );
    ensure!(
        r[13] == serde_json::json!([403, 403, 403, 200, 200]),
        "another site's picture, JSON and page are refused: {r:?}"
    );
    let rows = r[15].as_array().context("history rows")?;
    ensure!(
        rows.len() == 1
            && rows[0][0] == ida.as_str()
            && rows[0][1].as_str().is_some_and(|t| t.contains("ana")),
        "history shows site-001's episode with its acknowledgement: {rows:?}"
    );
    ensure!(r[18].as_i64() >= Some(1), "a point on the chart: {r:?}");

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
        set.contains("HttpOnly") && set.contains("SameSite=Lax") && set.contains("Secure"),
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
    // Site 001's episode was overdue (opened in April) before anyone acknowledged it.
    ensure!(
        alerts_text
            .lines()
            .any(|l| l.starts_with("OVERDUE") && l.contains("site=site-001")),
        "re-notified as overdue: {alerts_text}"
    );
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
    let dan2 = dan_on(&c2).await?;
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

    // The district's history, filtered: site-002's resolved episode with its whole timeline.
    let (_, hist) = get_as(
        &c2,
        &dan2,
        &format!("/history?from={DAY}&to={DAY}&camera=cam-b&severity=minor"),
    )
    .await?;
    ensure!(
        hist.contains(&format!(r#"<tr data-episode="{idb}">"#))
            && !hist.contains(&format!(r#"data-episode="{ida}""#))
            && hist.contains(" opened ")
            && hist.contains(" resolved "),
        "{hist}"
    );
    let (_, hist) = get_as(
        &c2,
        &dan2,
        &format!("/history?from={DAY}&to={DAY}&zone=nowhere"),
    )
    .await?;
    ensure!(hist.contains("<p>0 episodes</p>"), "{hist}");
    let (status, _) = get_as(&c2, &dan2, "/history?from=yesterday").await?;
    ensure!(status == 400, "a malformed day: {status}");

    // Wrong passwords throttle: 401 five times, then 429 (the right one too).
    for i in 0..5 {
        ensure!(sign_in(&c2, "ana", "wrong").await?.0 == 401, "try {i}");
    }
    ensure!(sign_in(&c2, "ana", "wrong").await?.0 == 429);
    ensure!(sign_in(&c2, "ana", PASSWORD).await?.0 == 429);
    Ok(())
}
