//! The dashboards, alert rules and metrics catalogue against a real Prometheus scraping a worker
//! under traffic: every dashboard query and every alert's signal returns data, every rule loads
//! and evaluates cleanly, promtool accepts the rules and a real scrape, and the README's catalogue
//! names exactly the metrics `/metrics` exposes.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use common::*;

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn query(prom: &str, q: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value =
        serde_json::from_str(&get(prom, &format!("/api/v1/query?query={}", encode(q)))?)?;
    ensure!(v["status"] == "success", "query failed: {q}: {v}");
    Ok(v)
}

fn has_data(v: &serde_json::Value) -> bool {
    match v["data"]["resultType"].as_str() {
        Some("vector") | Some("matrix") => v["data"]["result"]
            .as_array()
            .is_some_and(|a| !a.is_empty()),
        Some("scalar") => true,
        _ => false,
    }
}

/// Every PromQL expression in the dashboards, template variables resolved to "all".
fn dashboard_queries() -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(repo().join("grafana/dashboards"))? {
        let p = e?.path();
        let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p)?)?;
        for panel in d["panels"].as_array().context("panels")? {
            ensure!(
                panel["datasource"]["uid"] == "prometheus",
                "{}: panel datasource is the provisioned one",
                p.display()
            );
            for t in panel["targets"].as_array().context("targets")? {
                let expr = t["expr"]
                    .as_str()
                    .context("expr")?
                    .replace("$site", ".*")
                    .replace("$rule", ".*");
                out.push((format!("{} / {}", d["title"], panel["title"]), expr));
            }
        }
    }
    Ok(out)
}

/// Metric names and types listed in the README's catalogue table.
fn catalogue() -> Result<BTreeMap<String, String>> {
    let readme = std::fs::read_to_string(repo().join("README.md"))?;
    let section = readme
        .split("## Metrics")
        .nth(1)
        .context("README has a Metrics section")?;
    // The worker's table ends where the next (sub)section starts (### Gateway: its own process).
    let section = section.split("\n#").next().unwrap_or(section);
    let mut out = BTreeMap::new();
    for line in section
        .lines()
        .filter(|l| l.starts_with("| `vigil_") || l.starts_with("| `process_"))
    {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        out.insert(cols[1].trim_matches('`').to_string(), cols[2].to_string());
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_alerts_work_against_a_real_prometheus() -> Result {
    let prometheus = which("prometheus")
        .context("Debian's prometheus package (scripts/bootstrap.sh installs it)")?;
    let topics = create_topics(2).await?;
    let metrics_port = free_port()?;
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let worker = Worker::start(
        &topics,
        &unique("g"),
        &["--metrics-addr", &metrics_addr, "--device", "auto"],
    )?;

    let dir = tempfile::tempdir()?;
    let prom_addr = format!("127.0.0.1:{}", free_port()?);
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{:?}]\nscrape_configs:\n  - job_name: vigil-worker\n    static_configs: [{{targets: [\"{metrics_addr}\"]}}]\n",
            repo().join("compose/prometheus/alerts.yml")
        ),
    )?;
    let mut prom = ChildGuard(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(
                log_dir().join(format!("{}.prometheus.log", worker.id)),
            )?)
            .spawn()?,
    );
    wait_for("prometheus to be ready", Duration::from_secs(30), || {
        get(&prom_addr, "/-/ready").is_ok_and(|b| b.contains("Ready"))
    })
    .await?;

    // Traffic: kitchen cameras (judged) and a dining camera (observed only), captured over the
    // last 10 s, 1.2 s apart: long enough for the kitchen cameras to open episodes.
    let now = vigil::contract::observation::now_ms();
    let mut recs = Vec::new();
    for seq in 0..8u64 {
        for (cam, zone) in [
            ("cam-k1", "kitchen"),
            ("cam-k2", "kitchen"),
            ("cam-d1", "dining"),
        ] {
            let mut r = frame(
                cam,
                "site-042",
                seq,
                face(["grace_hopper.jpg", "sample1.jpg"][seq as usize % 2]),
            );
            r.headers[2].1 = (now - 10_000 + seq as i64 * 1_200).to_string().into_bytes();
            r.headers.push(("zone".into(), zone.as_bytes().to_vec()));
            recs.push(r);
        }
    }
    let mut bad = frame("cam-k1", "site-042", 99, b"not a jpeg".to_vec());
    bad.headers[2].1 = now.to_string().into_bytes();
    // One frame far too late for the episode clock: counted as stale.
    let mut late = frame("cam-k2", "site-042", 100, face("grace_hopper.jpg"));
    late.headers[2].1 = (now - 60_000).to_string().into_bytes();
    late.headers.push(("zone".into(), b"kitchen".to_vec()));
    recs.push(bad);
    recs.push(late);
    produce(&topics.frames, &recs).await?;
    collect(
        &topics.observations,
        recs.len() - 1,
        Duration::from_secs(120),
        Duration::ZERO,
    )
    .await
    .with_context(|| worker.log_text())?;
    // Consumer lag comes from librdkafka statistics (every 5 s); let Prometheus see it and
    // evaluate the rules a few times.
    wait_for(
        "consumer lag to be scraped",
        Duration::from_secs(30),
        || query(&prom_addr, "vigil_consumer_lag_messages").is_ok_and(|v| has_data(&v)),
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut failures = Vec::new();
    for (panel, expr) in dashboard_queries()? {
        match query(&prom_addr, &expr) {
            Ok(v) if has_data(&v) => {}
            Ok(_) => failures.push(format!("no data: {panel}: {expr}")),
            Err(e) => failures.push(format!("{panel}: {e}")),
        }
    }
    let rules: serde_json::Value = serde_json::from_str(&get(&prom_addr, "/api/v1/rules")?)?;
    let mut names = BTreeSet::new();
    for group in rules["data"]["groups"].as_array().context("rule groups")? {
        for r in group["rules"].as_array().context("rules")? {
            let name = r["name"].as_str().unwrap_or("?").to_string();
            if r["health"] != "ok" {
                failures.push(format!(
                    "rule {name}: health {} {}",
                    r["health"], r["lastError"]
                ));
            }
            match r["annotations"]["signal"].as_str() {
                None => failures.push(format!("rule {name} has no signal annotation")),
                Some(signal) => match query(&prom_addr, signal) {
                    Ok(v) if has_data(&v) => {}
                    Ok(_) => failures.push(format!("no data for the signal of {name}: {signal}")),
                    Err(e) => failures.push(format!("{name}: {e}")),
                },
            }
            if let Some(expr) = r["query"].as_str() {
                if let Err(e) = query(&prom_addr, expr) {
                    failures.push(format!("{name}: {e}"));
                }
            }
            names.insert(name);
        }
    }
    ensure!(names.len() == 6, "all alert rules loaded: {names:?}");
    // The worker asked for `auto` and runs on CPU: that alert must be pending or firing.
    let alerts: serde_json::Value = serde_json::from_str(&get(&prom_addr, "/api/v1/alerts")?)?;
    let cpu_alert = alerts["data"]["alerts"].as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x["labels"]["alertname"] == "VigilRunningOnCpuDespiteGpuRequest")
    });
    if !cpu_alert {
        failures.push(format!(
            "VigilRunningOnCpuDespiteGpuRequest did not trigger: {alerts}"
        ));
    }

    // promtool on the rules and on a real scrape.
    let rules_check = Command::new("promtool")
        .args(["check", "rules"])
        .arg(repo().join("compose/prometheus/alerts.yml"))
        .output()?;
    ensure!(
        rules_check.status.success(),
        "promtool check rules: {}",
        String::from_utf8_lossy(&rules_check.stdout)
    );
    let scrape = get(&metrics_addr, "/metrics")?;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(scrape.as_bytes())?;
    let out = promtool.wait_with_output()?;
    ensure!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // The catalogue names exactly what /metrics exposes, with the right types.
    let exposed: BTreeMap<String, String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    let listed = catalogue()?;
    for (name, kind) in &exposed {
        match listed.get(name) {
            None => failures.push(format!(
                "{name} ({kind}) is exposed but not in the README catalogue"
            )),
            Some(k) if k != kind => {
                failures.push(format!("{name}: catalogue says {k}, /metrics says {kind}"))
            }
            _ => {}
        }
    }
    for name in listed.keys().filter(|n| !exposed.contains_key(*n)) {
        failures.push(format!("{name} is in the catalogue but not exposed"));
    }
    drop(prom.0.kill());
    if !failures.is_empty() {
        bail!("{} problems:\n{}", failures.len(), failures.join("\n"));
    }
    Ok(())
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}
