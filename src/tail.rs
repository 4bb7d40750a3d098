//! `vigil tail`: prints what the observations or dead-letter topic carries, one line a record.
//! Reads from the beginning with a throw-away consumer group, commits nothing.

use std::time::Duration;

use anyhow::anyhow;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;

use crate::frame::header;
use crate::kafka::{self, KafkaArgs};
use crate::observation::Observation;

#[derive(Debug, Clone)]
pub struct TailConfig {
    pub kafka: KafkaArgs,
    pub topic: String,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Stop when nothing arrives for this long.
    pub idle_timeout: Option<Duration>,
    /// Print the raw JSON value instead of a summary.
    pub json: bool,
}

/// One readable line for a record.
pub fn describe(
    value: &[u8],
    headers: &[(String, Vec<u8>)],
    partition: i32,
    offset: i64,
) -> String {
    let h = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    if let Some(reason) = h(header::REASON) {
        return format!(
            "dead-letter p{partition}@{offset} camera={} reason={reason} ({}) from {}:{}/{} bytes={}",
            h(header::CAMERA).unwrap_or_else(|| "?".into()),
            h(header::REASON_DETAIL).unwrap_or_default(),
            h(header::SOURCE_TOPIC).unwrap_or_default(),
            h(header::SOURCE_PARTITION).unwrap_or_default(),
            h(header::SOURCE_OFFSET).unwrap_or_default(),
            value.len()
        );
    }
    match serde_json::from_slice::<Observation>(value) {
        Ok(o) => {
            let rules: Vec<String> = o
                .rules
                .iter()
                .map(|r| match r.level {
                    Some(l) => format!("{}={}({l:.2})", r.rule, r.verdict.as_str()),
                    None => format!(
                        "{}={}",
                        r.rule,
                        r.reason.as_deref().unwrap_or(r.verdict.as_str())
                    ),
                })
                .collect();
            let dets: Vec<String> = o
                .detections
                .iter()
                .map(|d| {
                    format!(
                        "{}:{:.2}",
                        d.label,
                        d.scores.get(&d.label).copied().unwrap_or(0.0)
                    )
                })
                .collect();
            let infer: f64 = o
                .timings
                .stages
                .iter()
                .map(|s| s.inference_ms)
                .fold(0.0, |a, b| a + b);
            let batches: Vec<String> = o
                .timings
                .stages
                .iter()
                .map(|s| s.batch_size.to_string())
                .collect();
            format!(
                "observation p{partition}@{offset} site={} camera={} zone={} seq={} rules=[{}] faces=[{}] frame {}:{}/{} {}x{} decode={:.1}ms infer={:.1}ms batches=[{}] worker={}",
                o.site,
                o.camera,
                o.zone.as_deref().unwrap_or("-"),
                o.seq,
                if rules.is_empty() { "none".to_string() } else { rules.join(" ") },
                dets.join(" "),
                o.source.topic,
                o.source.partition,
                o.source.offset,
                o.frame.width,
                o.frame.height,
                o.timings.decode_ms,
                infer,
                batches.join(","),
                o.worker
            )
        }
        Err(_) => format!(
            "record p{partition}@{offset} ({} bytes, not an observation)",
            value.len()
        ),
    }
}

pub async fn run(
    cfg: TailConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let group = format!(
        "vigil-tail-{}-{}",
        std::process::id(),
        crate::observation::now_ms()
    );
    let consumer: StreamConsumer = cfg
        .kafka
        .config(&[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "5"),
        ])
        .map_err(|e| anyhow!(e))?
        .create()?;
    consumer.subscribe(&[&cfg.topic])?;
    let mut seen = 0u64;
    let idle = cfg
        .idle_timeout
        .unwrap_or(Duration::from_secs(365 * 24 * 3600));
    tokio::pin!(shutdown);
    while cfg.count.is_none_or(|n| seen < n) {
        let msg = tokio::select! {
            _ = &mut shutdown => break,
            r = tokio::time::timeout(idle, consumer.recv()) => match r {
                Err(_) => break,
                Ok(m) => m?,
            },
        };
        let value = msg.payload().unwrap_or_default();
        if cfg.json {
            println!("{}", String::from_utf8_lossy(value));
        } else {
            let headers = kafka::headers_to_vec(msg.headers());
            println!(
                "{}",
                describe(value, &headers, msg.partition(), msg.offset())
            );
        }
        seen += 1;
    }
    eprintln!("tail: {seen} records from {}", cfg.topic);
    Ok(())
}
