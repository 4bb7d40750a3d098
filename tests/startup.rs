//! Start-up refusals: a worker that cannot trust its model or configuration stops at once with
//! a message naming the problem, before it joins a consumer group.

mod common;

use std::process::Command;

use anyhow::{ensure, Context};
use common::*;
use rdkafka::producer::Producer;

fn worker(args: &[&str]) -> Result<(i32, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["worker", "--metrics-addr", ""])
        .args(args)
        .output()?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// A copy of the model pack in a temporary folder, for tampering.
fn pack_copy() -> Result<tempfile::TempDir> {
    let d = tempfile::tempdir()?;
    for e in std::fs::read_dir(repo().join("models"))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "toml" || x == "onnx") {
            std::fs::copy(&p, d.path().join(p.file_name().unwrap()))?;
        }
    }
    Ok(d)
}

#[test]
fn a_model_whose_hash_differs_is_refused() -> Result {
    let d = pack_copy()?;
    let onnx = d.path().join("mask_v2.onnx");
    let mut bytes = std::fs::read(&onnx)?;
    let n = bytes.len();
    bytes[n - 10] ^= 0xFF;
    std::fs::write(&onnx, bytes)?;
    let (code, err) = worker(&[
        "--model-dir",
        d.path().to_str().unwrap(),
        "--brokers",
        "127.0.0.1:1",
    ])?;
    ensure!(code == 1, "exit code {code}: {err}");
    ensure!(
        err.contains("sha256") && err.contains("mask_v2.onnx"),
        "{err}"
    );
    Ok(())
}

#[test]
fn a_missing_model_file_is_refused() -> Result {
    let d = pack_copy()?;
    std::fs::remove_file(d.path().join("mask_v2.onnx"))?;
    let (code, err) = worker(&[
        "--model-dir",
        d.path().to_str().unwrap(),
        "--brokers",
        "127.0.0.1:1",
    ])?;
    ensure!(code == 1 && err.contains("is missing"), "{code}: {err}");
    Ok(())
}

#[test]
fn a_manifest_that_disagrees_with_the_graph_is_refused() -> Result {
    let d = pack_copy()?;
    let m = d.path().join("mask_v2.toml");
    let text = std::fs::read_to_string(&m)?.replace("width = 224", "width = 256");
    std::fs::write(&m, text)?;
    let (code, err) = worker(&[
        "--model-dir",
        d.path().to_str().unwrap(),
        "--brokers",
        "127.0.0.1:1",
    ])?;
    ensure!(
        code == 1 && err.contains("shape") && err.contains("image"),
        "{code}: {err}"
    );
    Ok(())
}

/// Runs a worker with a rules file holding `text`.
fn worker_with_rules(text: &str) -> Result<(i32, String)> {
    let f = tempfile::NamedTempFile::new()?;
    std::fs::write(f.path(), text)?;
    worker(&[
        "--rules",
        f.path().to_str().unwrap(),
        "--brokers",
        "127.0.0.1:1",
    ])
}

#[test]
fn rules_that_disagree_with_the_pack_are_refused() -> Result {
    let (code, err) = worker_with_rules(
        "[rules.helmets]\nclassifier = 'helmet'\nviolation_label = 'no_helmet'\n",
    )?;
    ensure!(
        code == 1 && err.contains("helmet") && err.contains("mask"),
        "names the missing model and what exists: {code}: {err}"
    );

    let (code, err) = worker_with_rules(
        "[rules.m]\ndetector = 'face-ssd'\nclassifier = 'mask'\nviolation_label = 'unmasked'\n",
    )?;
    ensure!(
        code == 1 && err.contains("unmasked") && err.contains("no_mask"),
        "{code}: {err}"
    );

    let (code, err) = worker_with_rules(
        "[rules.m]\ndetector = 'mask'\nclassifier = 'face-ssd'\nviolation_label = 'face'\n",
    )?;
    ensure!(
        code == 1 && err.contains("detector `mask`"),
        "{code}: {err}"
    );

    let (code, err) =
        worker_with_rules("[rules.m]\nclasifier = 'mask'\nviolation_label = 'no_mask'\n")?;
    ensure!(code == 1 && err.contains("clasifier"), "{code}: {err}");
    Ok(())
}

#[test]
fn bad_options_name_the_key() -> Result {
    let (code, err) = worker(&["-X", "linger.ms"])?;
    ensure!(code == 2 && err.contains("linger.ms"), "{code}: {err}");
    let (code, err) = worker(&["-X", "enable.auto.offset.store=true"])?;
    ensure!(
        code != 0 && err.contains("enable.auto.offset.store"),
        "{code}: {err}"
    );
    let (code, err) = worker(&["--max-batch", "0"])?;
    ensure!(code == 2 && err.contains("--max-batch"), "{code}: {err}");
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["worker", "--metrics-addr", "nonsense"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(2) && err.contains("--metrics-addr"),
        "{err}"
    );
    let (code, err) = worker(&["--schema-registry", "ftp://registry:8081"])?;
    ensure!(
        code == 2 && err.contains("--schema-registry") && err.contains("https://"),
        "{code}: {err}"
    );
    let (code, err) = worker(&[
        "--schema-registry",
        "https://registry:8081",
        "--ca-file",
        "/nonexistent/ca.pem",
    ])?;
    ensure!(
        code == 2 && err.contains("--ca-file") && err.contains("/nonexistent/ca.pem"),
        "{code}: {err}"
    );
    let (code, err) = worker(&["--kafka-config", "/nonexistent/kafka.properties"])?;
    ensure!(
        code != 0 && err.contains("--kafka-config") && err.contains("kafka.properties"),
        "{code}: {err}"
    );
    let (code, err) = worker(&["--device", "cuda", "--brokers", "127.0.0.1:1"])?;
    if !cfg!(feature = "cuda") {
        ensure!(
            code == 1 && err.contains("cuda"),
            "asking for cuda without it is an error: {code}: {err}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_is_named_at_start_up() -> Result {
    let topics = create_topics(1).await?;
    let out = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["worker", "--metrics-addr", "", "--brokers", &brokers()])
        .args([
            "--frames-topic",
            &topics.frames,
            "--observations-topic",
            &topics.observations,
        ])
        .args(["--dlq-topic", "no-such-topic-here"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && err.contains("no-such-topic-here"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_create_makes_all_six_topics_once() -> Result {
    let base = unique("tc");
    let names = ["frames", "obs", "dlq", "vio", "state", "acks"].map(|n| format!("{base}.{n}"));
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args([
                "topics",
                "create",
                "--brokers",
                &brokers(),
                "--partitions",
                "3",
            ])
            .args([
                "--frames-topic",
                &names[0],
                "--observations-topic",
                &names[1],
            ])
            .args(["--dlq-topic", &names[2], "--violations-topic", &names[3]])
            .args(["--state-topic", &names[4], "--acks-topic", &names[5]])
            .output()
    };
    let first = run()?;
    let text = String::from_utf8_lossy(&first.stdout).to_string();
    ensure!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for n in &names {
        ensure!(
            text.contains(&format!("{n}: created")),
            "{n} created: {text}"
        );
    }
    let again = run()?;
    let text = String::from_utf8_lossy(&again.stdout).to_string();
    ensure!(
        again.status.success() && names.iter().all(|n| text.contains(&format!("{n}: exists"))),
        "idempotent: {text}"
    );
    // A worker accepts them (the state topic is co-partitioned with the frames topic).
    let p = producer()?;
    let md = p
        .client()
        .fetch_metadata(None, std::time::Duration::from_secs(10))?;
    for n in &names {
        let t = md
            .topics()
            .iter()
            .find(|t| t.name() == n)
            .context("listed")?;
        ensure!(t.partitions().len() == 3, "{n} has 3 partitions");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_the_registry_refuses_stops_the_worker() -> Result {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A registry whose compatibility check rejects whatever is registered, answering as the
    // Confluent API documents (409, error_code 409).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let server = tokio::spawn(async move {
        let mut paths = Vec::new();
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 64 * 1024];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).into_owned();
            paths.push(head.lines().next().unwrap_or_default().to_string());
            let body = r#"{"error_code":409,"message":"Schema being registered is incompatible with an earlier schema"}"#;
            let answer = format!(
                "HTTP/1.1 409 Conflict\r\nContent-Type: application/vnd.schemaregistry.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(answer.as_bytes()).await;
            if paths.len() == 1 {
                return paths;
            }
        }
        paths
    });
    let topics = create_topics(1).await?;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["worker", "--metrics-addr", "", "--brokers", &brokers()])
        .args([
            "--observations-topic",
            &topics.observations,
            "--schema-registry",
            &url,
        ])
        .output()
        .await?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1)
            && err.contains(&format!("{}-value", topics.observations))
            && err.contains("incompatible"),
        "{err}"
    );
    let paths = server.await?;
    ensure!(
        paths[0].starts_with(&format!(
            "POST /subjects/{}-value/versions ",
            topics.observations
        )),
        "{paths:?}"
    );
    Ok(())
}

#[test]
fn a_drain_timeout_not_below_the_session_timeout_is_refused() -> Result {
    // A revoke may wait the whole drain timeout; past the session timeout the group would evict
    // the worker mid-drain.
    let (code, err) = worker(&["--brokers", "127.0.0.1:1", "--drain-timeout-secs", "20"])?;
    ensure!(code == 2, "exit code {code}: {err}");
    ensure!(
        err.contains("--drain-timeout-secs") && err.contains("session.timeout.ms = 10000 ms"),
        "{err}"
    );
    let (code, err) = worker(&[
        "--brokers",
        "127.0.0.1:1",
        "--drain-timeout-secs",
        "20",
        "-X",
        "session.timeout.ms=15000",
    ])?;
    ensure!(
        code == 2 && err.contains("session.timeout.ms = 15000 ms"),
        "{code}: {err}"
    );
    Ok(())
}
