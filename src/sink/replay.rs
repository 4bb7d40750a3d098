//! What a previous owner decided about the frames a new owner will read again: on assignment,
//! the tail of each partition's observations is read back and, for every frame past the group's
//! committed offset, how load shedding admitted it (the observation's `admission` header).
//!
//! Observations go to their frame's partition number when the two topics have as many
//! partitions ([`super::Sink::co_partitioned`]), so partition `p`'s are all in observations
//! partition `p`. Where to start reading: each owner's observations of frames past the commit
//! point follow at most `max_in_flight` observations of earlier frames (a frame is read only
//! while fewer than that wait for delivery), and every owner since the commit point wrote at
//! most one observation per frame it read. Reading back [`SPAN_OWNERS`] owners' worth of frames
//! past the commit point, plus the in-flight slack, covers the usual restart and the chaos of
//! several in a row; a decision older than that is not found, and the frame is decided afresh.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::contract::{admission, header, Domain, StageError};
use crate::kafka::KafkaArgs;

/// How many owners' observations of the uncommitted frames are read back.
const SPAN_OWNERS: i64 = 4;

/// Most observations read back per partition.
const MAX_SPAN: i64 = 200_000;

/// Where to look, and what for.
pub struct ReplayArgs<'a> {
    pub kafka: &'a KafkaArgs,
    /// The worker's consumer group: its committed offsets mark where reading resumes.
    pub group: &'a str,
    pub frames_topic: &'a str,
    pub observations_topic: &'a str,
    /// The worker's `--max-in-flight` (the previous owner's is assumed no larger).
    pub max_in_flight: usize,
    pub timeout: Duration,
}

/// Per assigned partition, by frame offset: whether the frame was judged (`true`) or skipped
/// as stale by whoever published its observation last. Blocking (called on assignment).
pub fn inherited_admissions(
    args: &ReplayArgs<'_>,
    partitions: &[i32],
) -> Result<HashMap<i32, HashMap<i64, bool>>, StageError> {
    let fail = |message: String| StageError::stop("replay", Domain::External, message);
    let mut found: HashMap<i32, HashMap<i64, bool>> = HashMap::new();
    if partitions.is_empty() {
        return Ok(found);
    }
    let deadline = Instant::now() + args.timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    // The group's own id, to read its committed offsets; it never joins or commits.
    let consumer: BaseConsumer = args
        .kafka
        .config(&[
            ("group.id", args.group),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("fetch.wait.max.ms", "5"),
        ])
        .map_err(|e| fail(e.to_string()))?
        .create()
        .map_err(|e| fail(format!("replay consumer: {e}")))?;
    let mut asked = TopicPartitionList::new();
    for &p in partitions {
        asked.add_partition(args.frames_topic, p);
    }
    let committed = consumer
        .committed_offsets(asked, left())
        .map_err(|e| fail(format!("committed offsets of {}: {e}", args.frames_topic)))?;
    // Per partition: the first uncommitted frame, and the observations' end when asked.
    let mut from: HashMap<i32, i64> = HashMap::new();
    let mut ends: HashMap<i32, i64> = HashMap::new();
    let mut tpl = TopicPartitionList::new();
    for &p in partitions {
        let (frames_low, frames_high) = consumer
            .fetch_watermarks(args.frames_topic, p, left())
            .map_err(|e| fail(format!("watermarks of {}/{p}: {e}", args.frames_topic)))?;
        let commit = match committed
            .find_partition(args.frames_topic, p)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(c)) => c,
            // Never committed: everything is read again.
            _ => frames_low,
        };
        if commit >= frames_high {
            continue;
        }
        let (low, high) = consumer
            .fetch_watermarks(args.observations_topic, p, left())
            .map_err(|e| {
                fail(format!(
                    "watermarks of {}/{p}: {e}",
                    args.observations_topic
                ))
            })?;
        let span = (SPAN_OWNERS * (frames_high - commit) + 2 * args.max_in_flight as i64 + 64)
            .min(MAX_SPAN);
        let start = (high - span).max(low);
        if high > start {
            from.insert(p, commit);
            ends.insert(p, high);
            tpl.add_partition_offset(args.observations_topic, p, Offset::Offset(start))
                .map_err(|e| fail(e.to_string()))?;
        }
    }
    if ends.is_empty() {
        return Ok(found);
    }
    consumer
        .assign(&tpl)
        .map_err(|e| fail(format!("assigning {}: {e}", args.observations_topic)))?;
    while !ends.is_empty() {
        if Instant::now() >= deadline {
            let left: Vec<_> = ends.keys().collect();
            return Err(fail(format!(
                "timed out reading {} partitions {left:?} up to their end",
                args.observations_topic
            )));
        }
        let m = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(e)) => return Err(fail(format!("reading {}: {e}", args.observations_topic))),
            Some(Ok(m)) => m,
        };
        let p = m.partition();
        let Some(&end) = ends.get(&p) else { continue };
        if let Some((offset, judged)) = m.headers().and_then(|h| decision(h, args.frames_topic, p))
        {
            if offset >= from[&p] {
                // The latest observation of a frame says how it was last decided.
                found.entry(p).or_default().insert(offset, judged);
            }
        }
        if m.offset() >= end - 1 {
            ends.remove(&p);
        }
    }
    Ok(found)
}

/// The frame offset and admission an observation's headers give, if it is of a frame of
/// `frames_topic` partition `partition` and says how it was admitted.
fn decision(headers: &impl Headers, frames_topic: &str, partition: i32) -> Option<(i64, bool)> {
    let (mut topic, mut part, mut offset, mut judged) = (None, None, None, None);
    for h in headers.iter() {
        let v = h.value.and_then(|v| std::str::from_utf8(v).ok());
        match h.key {
            header::SOURCE_TOPIC => topic = v,
            header::SOURCE_PARTITION => part = v.and_then(|v| v.parse::<i32>().ok()),
            header::SOURCE_OFFSET => offset = v.and_then(|v| v.parse::<i64>().ok()),
            header::ADMISSION => {
                judged = match v {
                    Some(admission::JUDGED) => Some(true),
                    Some(admission::SKIPPED) => Some(false),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    (topic == Some(frames_topic) && part == Some(partition))
        .then_some(())
        .and(offset.zip(judged))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{Header, OwnedHeaders};

    fn headers(pairs: &[(&str, &str)]) -> OwnedHeaders {
        pairs.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
            h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            })
        })
    }

    #[test]
    fn an_observation_says_where_its_frame_was_and_how_it_was_admitted() {
        let full = |admission: &str, topic: &str, partition: &str| {
            headers(&[
                ("camera", "c"),
                (header::SOURCE_TOPIC, topic),
                (header::SOURCE_PARTITION, partition),
                (header::SOURCE_OFFSET, "41"),
                (header::ADMISSION, admission),
            ])
        };
        assert_eq!(
            decision(&full("judged", "frames", "2"), "frames", 2),
            Some((41, true))
        );
        assert_eq!(
            decision(&full("skipped", "frames", "2"), "frames", 2),
            Some((41, false))
        );
        assert_eq!(decision(&full("judged", "frames", "3"), "frames", 2), None);
        assert_eq!(decision(&full("judged", "other", "2"), "frames", 2), None);
        assert_eq!(decision(&full("maybe", "frames", "2"), "frames", 2), None);
        // An observation no rule applied to (no admission), or from an older release.
        assert_eq!(
            decision(&headers(&[(header::SOURCE_OFFSET, "41")]), "frames", 2),
            None
        );
    }
}
