//! Restoring episode state: the assigned partitions of the state topic read from their start to
//! their end by one consumer, all partitions at once, keeping per key the entry that applies to
//! the most frames (a tombstone removes it). Records of every format version this release knows
//! are read ([`StateValue::parse`]); one it cannot read stops the worker, naming why.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::contract::{Domain, StageError};
use crate::episodes::store::{Restored, StateValue};
use crate::kafka::KafkaArgs;

/// Reads `partitions` of the state topic up to their current end and returns the latest entry
/// per key of each. Blocking (the consumer thread calls it while partitions are assigned).
pub fn restore(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<HashMap<i32, Restored>, StageError> {
    let fail = |message: String| StageError::stop("restore", Domain::External, message);
    // Per partition, per key by content: the record's own key and value.
    let mut latest: HashMap<i32, HashMap<String, (String, StateValue)>> =
        partitions.iter().map(|&p| (p, HashMap::new())).collect();
    if partitions.is_empty() {
        return Ok(HashMap::new());
    }
    let consumer: BaseConsumer = kafka
        .config(&[
            ("group.id", &format!("{group}.state-restore")),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "5"),
        ])
        .map_err(|e| fail(e.to_string()))?
        .create()
        .map_err(|e| fail(format!("restore consumer: {e}")))?;
    let deadline = Instant::now() + timeout;
    // The end of each partition as of now: what must be read before its frames are judged.
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, p, deadline.saturating_duration_since(Instant::now()))
            .map_err(|e| fail(format!("watermarks of {topic}/{p}: {e}")))?;
        if high > low {
            ends.insert(p, high);
            tpl.add_partition_offset(topic, p, Offset::Offset(low))
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    if !ends.is_empty() {
        consumer
            .assign(&tpl)
            .map_err(|e| fail(format!("assigning {topic}: {e}")))?;
    }
    while !ends.is_empty() {
        if Instant::now() >= deadline {
            let left: Vec<_> = ends.keys().collect();
            return Err(fail(format!(
                "timed out reading {topic} partitions {left:?} up to their end"
            )));
        }
        let m = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(e)) => return Err(fail(format!("reading {topic}: {e}"))),
            Some(Ok(m)) => m,
        };
        let p = m.partition();
        let Some(&end) = ends.get(&p) else { continue };
        let entries = latest.entry(p).or_default();
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        match (key, m.payload()) {
            (Some(k), Some(v)) => match StateValue::parse(v) {
                // The entry that applies to the most frames wins, whatever the write order: a
                // record left behind by an earlier owner cannot take the state back in time.
                Ok(s) => {
                    let key = s.key();
                    if entries
                        .get(&key)
                        .is_none_or(|(_, old)| old.progress() <= s.progress())
                    {
                        entries.insert(key, (k, s));
                    }
                }
                Err(e) => {
                    return Err(StageError::stop(
                        "restore",
                        Domain::Internal,
                        format!("{topic}/{p}@{}: unreadable state record: {e}", m.offset()),
                    ))
                }
            },
            (Some(k), None) => {
                // A tombstone removes what was written under its key (not an entry that a
                // newer format moved to another key).
                entries.retain(|_, (from, _)| *from != k);
            }
            _ => {}
        }
        if m.offset() >= end - 1 {
            ends.remove(&p);
        }
    }
    Ok(latest
        .into_iter()
        .map(|(p, entries)| {
            let mut r = Restored::default();
            for (key, (from, value)) in entries {
                if from != key {
                    r.legacy_keys.push(from);
                }
                r.add(value);
            }
            (p, r)
        })
        .collect())
}
