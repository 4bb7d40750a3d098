//! Restoring episode state: the assigned partitions of the state topic read from their start to
//! their end by one consumer, all partitions at once, keeping per key the entry that applies to
//! the most frames (a tombstone removes it).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use crate::contract::{Domain, StageError};
use crate::episodes::StoredState;
use crate::kafka::KafkaArgs;

/// Reads `partitions` of the state topic up to their current end and returns the latest entry
/// per key of each. Blocking (the consumer thread calls it while partitions are assigned).
pub fn restore(
    kafka: &KafkaArgs,
    group: &str,
    topic: &str,
    partitions: &[i32],
    timeout: Duration,
) -> Result<HashMap<i32, Vec<StoredState>>, StageError> {
    let fail = |message: String| StageError::stop("restore", Domain::External, message);
    let mut latest: HashMap<i32, HashMap<String, StoredState>> =
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
            (Some(k), Some(v)) => match serde_json::from_slice::<StoredState>(v) {
                // The entry that applies to the most frames wins, whatever the write order: a
                // record left behind by an earlier owner cannot take the state back in time.
                Ok(s) => {
                    if entries
                        .get(&k)
                        .is_none_or(|old| old.applied_offset <= s.applied_offset)
                    {
                        entries.insert(k, s);
                    }
                }
                Err(e) => {
                    return Err(fail(format!(
                        "{topic}/{p}@{}: unreadable state: {e}",
                        m.offset()
                    )))
                }
            },
            (Some(k), None) => {
                entries.remove(&k);
            }
            _ => {}
        }
        if m.offset() >= end - 1 {
            ends.remove(&p);
        }
    }
    Ok(latest
        .into_iter()
        .map(|(p, e)| (p, e.into_values().collect()))
        .collect())
}
