//! `vigil topics create`: vigil's six topics, with the partition count, compaction and record
//! size limits the worker relies on.

use clap::{Args, Subcommand};

use super::TopicArgs;
use crate::contract::DEFAULT_MAX_FRAME_BYTES;
use crate::kafka::{self, KafkaArgs};

#[derive(Debug, Args)]
pub struct TopicsArgs {
    #[command(subcommand)]
    pub action: TopicsAction,
}

#[derive(Debug, Subcommand)]
pub enum TopicsAction {
    /// Create the frames, observations, dead-letter, violations, acknowledgements and
    /// (compacted) state topics,
    /// all with the same partition count; existing ones are kept.
    Create {
        #[command(flatten)]
        kafka: KafkaArgs,
        #[command(flatten)]
        topics: TopicArgs,
        /// Partitions per topic; the unit of parallelism across workers.
        #[arg(long, default_value_t = 6)]
        partitions: i32,
        /// Replication factor.
        #[arg(long, default_value_t = 1)]
        replication: i32,
        /// Largest frame the topics must carry: the frames and dead-letter topics get
        /// `max.message.bytes` of this plus room for headers.
        #[arg(long, env = "VIGIL_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
        max_frame_bytes: usize,
    },
}

pub async fn run(args: TopicsArgs) -> anyhow::Result<()> {
    let TopicsAction::Create {
        kafka,
        topics,
        partitions,
        replication,
        max_frame_bytes,
    } = args.action;
    let names = vec![
        topics.frames_topic.clone(),
        topics.observations_topic,
        topics.dlq_topic.clone(),
        topics.violations_topic,
        topics.state_topic.clone(),
        topics.acks_topic,
    ];
    // The state topic is compacted; all share one partition count (co-partitioned); frames and
    // their dead letters fit the frame size limit.
    kafka::check_connection_async(&kafka, kafka::CONNECT_TIMEOUT).await?;
    let compacted = [topics.state_topic];
    let bytes = kafka::message_bytes_for(max_frame_bytes);
    let sized = [(topics.frames_topic, bytes), (topics.dlq_topic, bytes)];
    let created =
        kafka::create_topics(&kafka, &names, partitions, replication, &compacted, &sized).await?;
    for (name, new) in created {
        println!("{name}: {}", if new { "created" } else { "exists" });
    }
    Ok(())
}
