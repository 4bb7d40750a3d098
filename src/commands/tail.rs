//! `vigil tail`: prints what the observations or dead-letter topic carries, one line a record
//! (observations decoded from Avro in either framing).
//! Reads from the beginning with a throw-away consumer group, commits nothing.

use std::time::Duration;

use anyhow::anyhow;
use rdkafka::message::Message;

use crate::codec::avro::OBSERVATION;
use crate::codec::registry::{ReadError, RecordReader};
use crate::contract::header;
use crate::contract::Observation;
use crate::kafka::{self, KafkaArgs};

#[derive(Debug, Clone)]
pub struct TailConfig {
    pub kafka: KafkaArgs,
    pub topic: String,
    /// Stop after this many records.
    pub count: Option<u64>,
    /// Stop when nothing arrives for this long.
    pub idle_timeout: Option<Duration>,
    /// Print each record as a JSON line (observations decoded from Avro; dead letters as their
    /// headers and size) instead of a summary.
    pub json: bool,
    /// Registry for records in the Confluent wire format.
    pub schema_registry: Option<crate::codec::registry::RegistryConfig>,
}

/// One readable line for a dead letter (a record with a `reason` header), `None` for others.
pub fn describe_dead_letter(
    headers: &[(String, Vec<u8>)],
    bytes: usize,
    partition: i32,
    offset: i64,
) -> Option<String> {
    let h = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    let reason = h(header::REASON)?;
    Some(format!(
        "dead-letter p{partition}@{offset} camera={} reason={reason} ({}) from {}:{}/{} bytes={bytes}",
        h(header::CAMERA).unwrap_or_else(|| "?".into()),
        h(header::REASON_DETAIL).unwrap_or_default(),
        h(header::SOURCE_TOPIC).unwrap_or_default(),
        h(header::SOURCE_PARTITION).unwrap_or_default(),
        h(header::SOURCE_OFFSET).unwrap_or_default(),
    ))
}

/// One readable line for an observation record, or for why it is not one.
pub fn describe_observation(
    decoded: Result<Observation, ReadError>,
    bytes: usize,
    partition: i32,
    offset: i64,
) -> String {
    match decoded {
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
        Err(e) => format!("record p{partition}@{offset} ({bytes} bytes, not an observation: {e})"),
    }
}

pub async fn run(
    cfg: TailConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    kafka::check_connection_async(&cfg.kafka, kafka::CONNECT_TIMEOUT).await?;
    let consumer = kafka::read_from_start(&cfg.kafka, "vigil-tail", &cfg.topic, 5)?;
    let mut reader: RecordReader<Observation> =
        RecordReader::with_registry(&OBSERVATION, cfg.schema_registry.as_ref())
            .map_err(|e| anyhow!(e))?;
    let mut seen = 0u64;
    tokio::pin!(shutdown);
    while cfg.count.is_none_or(|n| seen < n) {
        let Some(msg) = kafka::next_message(&consumer, cfg.idle_timeout, shutdown.as_mut()).await
        else {
            break;
        };
        let msg = msg?;
        let (partition, offset) = (msg.partition(), msg.offset());
        let value = msg.payload().unwrap_or_default();
        let headers = kafka::record_headers(&msg);
        let line = match describe_dead_letter(&headers, value.len(), partition, offset) {
            Some(_) if cfg.json => serde_json::json!({
                "partition": partition,
                "offset": offset,
                "headers": headers.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect::<std::collections::BTreeMap<_, _>>(),
                "bytes": value.len(),
            })
            .to_string(),
            Some(line) => line,
            None => match reader.decode(value).await {
                Ok(o) if cfg.json => serde_json::to_string(&o)?,
                Err(e) if cfg.json => {
                    serde_json::json!({"partition": partition, "offset": offset, "error": e.to_string()})
                        .to_string()
                }
                decoded => describe_observation(decoded, value.len(), partition, offset),
            },
        };
        println!("{line}");
        seen += 1;
    }
    eprintln!("tail: {seen} records from {}", cfg.topic);
    Ok(())
}
