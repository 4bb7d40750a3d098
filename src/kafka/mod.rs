//! Kafka client configuration shared by every subcommand ([`settings`]: properties from a file,
//! the environment and `-X`), the start-up connection check ([`probe`]), header conversion and
//! topic administration. The only other places that touch rdkafka are the worker's source
//! (consumer) and sink (producer).

pub mod probe;
pub mod settings;

pub use probe::{
    check_connection, check_connection_async, wait_for_brokers_async, BrokerLink, LinkContext,
    CONNECT_TIMEOUT,
};

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{BorrowedMessage, Header, OwnedHeaders};
use rdkafka::producer::FutureProducer;

/// Connection settings every subcommand takes.
#[derive(Clone, Default, clap::Args)]
pub struct KafkaArgs {
    /// Bootstrap brokers, comma-separated HOST:PORT.
    #[arg(long, env = "VIGIL_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// A librdkafka properties file (`key=value` lines, e.g. `security.protocol=SASL_SSL`),
    /// applied over vigil's defaults. Environment variables `VIGIL_KAFKA_<PROPERTY>`
    /// (`VIGIL_KAFKA_SASL_PASSWORD`) come next, then `-X`.
    #[arg(long, env = "VIGIL_KAFKA_CONFIG", value_name = "FILE")]
    pub kafka_config: Option<std::path::PathBuf>,
    /// Any librdkafka property, as kcat takes it (`-X security.protocol=SSL`); may repeat.
    /// Applied last, so it overrides vigil's defaults, the properties file and the environment.
    #[arg(short = 'X', value_name = "KEY=VALUE", value_parser = parse_property)]
    pub property: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let props: Vec<String> = self
            .property
            .iter()
            .map(|(k, v)| settings::shown(k, v))
            .collect();
        f.debug_struct("KafkaArgs")
            .field("brokers", &self.brokers)
            .field("kafka_config", &self.kafka_config)
            .field("property", &props)
            .finish()
    }
}

/// Parses `key=value` for `-X`, naming the problem when it is malformed.
pub fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE (e.g. -X security.protocol=SSL)"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("`{s}` has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

/// What can go wrong setting up a Kafka client or topics; each message names the option, topic or
/// broker concerned.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("-X {key}={value}: `{key}` is set by vigil to keep its delivery guarantees and cannot be overridden")]
    Guarded { key: String, value: String },
    #[error("cannot create {what}: {source}")]
    Create {
        what: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot reach the brokers: {0}")]
    Unreachable(rdkafka::error::KafkaError),
    #[error("topic `{0}` does not exist on the brokers; create it (`vigil topics create`) or point the matching --*-topic option at an existing one")]
    MissingTopic(String),
    #[error("create topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error("{0}")]
    Settings(String),
    #[error(transparent)]
    Connect(#[from] probe::ConnectError),
}

/// Properties vigil sets for its delivery guarantees; overriding them with `-X` is refused.
const GUARDED: &[&str] = &["enable.auto.offset.store", "enable.idempotence"];

impl KafkaArgs {
    /// Base client configuration, with `-X` overrides applied on top of `defaults`.
    pub fn config(&self, defaults: &[(&str, &str)]) -> Result<ClientConfig, ClientError> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        c.set("client.id", "vigil");
        for (k, v) in defaults {
            c.set(*k, *v);
        }
        for (k, v) in self.properties()? {
            if GUARDED.contains(&k.as_str()) {
                return Err(ClientError::Guarded { key: k, value: v });
            }
            c.set(k, v);
        }
        Ok(c)
    }

    /// The user's properties in the order they apply: the file, the environment, `-X`.
    pub fn properties(&self) -> Result<Vec<(String, String)>, ClientError> {
        let mut out = match &self.kafka_config {
            Some(path) => settings::read_file(path).map_err(ClientError::Settings)?,
            None => Vec::new(),
        };
        out.extend(settings::from_env(std::env::vars()));
        out.extend(self.property.iter().cloned());
        Ok(out)
    }

    /// An idempotent producer: retries never duplicate or reorder a partition's records.
    pub fn producer(&self, max_message_bytes: usize) -> Result<FutureProducer, ClientError> {
        self.producer_batched(max_message_bytes, None)
    }

    /// An idempotent producer whose record batches stay within `batch_bytes`: for a topic whose
    /// `max.message.bytes` (which limits whole batches) is below librdkafka's default batch.
    pub fn producer_batched(
        &self,
        max_message_bytes: usize,
        batch_bytes: Option<usize>,
    ) -> Result<FutureProducer, ClientError> {
        self.producer_config(max_message_bytes, batch_bytes, "120000")?
            .create()
            .map_err(|source| ClientError::Create {
                what: "producer",
                source,
            })
    }

    /// A producer of the worker's outcomes: idempotent, batches within `batch_bytes` (as
    /// [`producer_batched`](Self::producer_batched)), and patient: a record waits for the
    /// brokers however long they are away (`message.timeout.ms=0`; librdkafka retries it, and
    /// idempotence keeps the retries from duplicating it), so a broker outage delays outcomes
    /// instead of failing them, which would stop the worker. `-X message.timeout.ms` still
    /// applies over it. Lost brokers are reported to `link`.
    pub fn output_producer(
        &self,
        max_message_bytes: usize,
        batch_bytes: Option<usize>,
        link: &BrokerLink,
    ) -> Result<OutputProducer, ClientError> {
        self.producer_config(max_message_bytes, batch_bytes, "0")?
            .create_with_context(LinkContext::new(link.clone(), "producer"))
            .map_err(|source| ClientError::Create {
                what: "producer",
                source,
            })
    }

    fn producer_config(
        &self,
        max_message_bytes: usize,
        batch_bytes: Option<usize>,
        message_timeout_ms: &str,
    ) -> Result<ClientConfig, ClientError> {
        let max = max_message_bytes.to_string();
        let batch = batch_bytes.map(|b| b.clamp(1, 1_000_000).to_string());
        let mut settings = vec![
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "5"),
            ("message.max.bytes", max.as_str()),
            ("message.timeout.ms", message_timeout_ms),
        ];
        if let Some(b) = &batch {
            settings.push(("batch.size", b.as_str()));
        }
        self.config(&settings)
    }
}

/// The worker's producers: their error reports go to a [`BrokerLink`].
pub type OutputProducer = FutureProducer<LinkContext>;

/// Copies a consumed record's headers into owned (name, bytes) pairs, in order. Names are read
/// as bytes and decoded lossily: a name that is not UTF-8 (any producer can write one) must not
/// stop a partition, as rdkafka's own accessor would by panicking.
pub fn record_headers(msg: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    use rdkafka_sys as rdsys;
    use rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR as NO_ERROR;
    let mut out = Vec::new();
    // SAFETY: `msg` keeps the native message (and so its headers) alive for this call; every
    // pointer librdkafka hands back is checked for null and read within the size it reports.
    unsafe {
        let mut hdrs: *mut rdsys::rd_kafka_headers_t = std::ptr::null_mut();
        if rdsys::rd_kafka_message_headers(msg.ptr(), &mut hdrs) != NO_ERROR || hdrs.is_null() {
            return out;
        }
        for i in 0..rdsys::rd_kafka_header_cnt(hdrs) {
            let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0usize);
            if rdsys::rd_kafka_header_get_all(hdrs, i, &mut name, &mut value, &mut size) != NO_ERROR
            {
                break;
            }
            let key = if name.is_null() {
                String::new()
            } else {
                String::from_utf8_lossy(std::ffi::CStr::from_ptr(name).to_bytes()).into_owned()
            };
            let value = if value.is_null() {
                Vec::new()
            } else {
                std::slice::from_raw_parts(value as *const u8, size).to_vec()
            };
            out.push((key, value));
        }
    }
    out
}

/// Builds Kafka headers from (name, bytes) pairs.
pub fn headers_from<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> OwnedHeaders {
    pairs.into_iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v),
        })
    })
}

/// Room for a frame's headers (and a dead letter's reason headers) on top of its payload.
pub const HEADER_ROOM: usize = 256 * 1024;

/// The `max.message.bytes` a topic needs to carry frames of up to `max_frame_bytes`.
pub fn message_bytes_for(max_frame_bytes: usize) -> usize {
    max_frame_bytes + HEADER_ROOM
}

/// Creates `topic` with one partition if it is missing: with three replicas where the
/// cluster has them, one on a single broker. For small topics of records keyed by camera
/// (camera status), read whole by every reader. Returns whether it was created.
pub async fn ensure_single_partition_topic(
    kafka: &KafkaArgs,
    topic: &str,
) -> Result<bool, ClientError> {
    let names = [topic.to_string()];
    match create_topics(kafka, &names, 1, 3, &[], &[]).await {
        Ok(t) => Ok(t.iter().any(|(_, new)| *new)),
        Err(_) => Ok(create_topics(kafka, &names, 1, 1, &[], &[])
            .await?
            .iter()
            .any(|(_, new)| *new)),
    }
}

/// Creates topics that do not exist yet; existing ones are left alone (idempotent). Topics in
/// `compacted` get `cleanup.policy=compact`; `sized` ones get `max.message.bytes` set to the
/// given size.
pub async fn create_topics(
    kafka: &KafkaArgs,
    names: &[String],
    partitions: i32,
    replication: i32,
    compacted: &[String],
    sized: &[(String, usize)],
) -> Result<Vec<(String, bool)>, ClientError> {
    let admin: AdminClient<DefaultClientContext> =
        kafka
            .config(&[])?
            .create()
            .map_err(|source| ClientError::Create {
                what: "admin client",
                source,
            })?;
    let sizes: Vec<(String, String)> = sized
        .iter()
        .map(|(n, b)| (n.clone(), b.to_string()))
        .collect();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| {
            let mut t = NewTopic::new(n, partitions, TopicReplication::Fixed(replication));
            if compacted.contains(n) {
                t = t.set("cleanup.policy", "compact");
            }
            if let Some((_, b)) = sizes.iter().find(|(s, _)| s == n) {
                t = t.set("max.message.bytes", b);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    // One request per topic, so that each answer is checked: a topic the broker did not answer
    // for must not pass as created.
    let mut out = Vec::new();
    for topic in &topics {
        let results = admin
            .create_topics(std::slice::from_ref(topic), &opts)
            .await
            .map_err(|e| ClientError::CreateTopic {
                topic: topic.name.to_string(),
                reason: e.to_string(),
            })?;
        match results.into_iter().next() {
            Some(Ok(name)) => out.push((name, true)),
            Some(Err((name, RDKafkaErrorCode::TopicAlreadyExists))) => out.push((name, false)),
            Some(Err((name, code))) => {
                return Err(ClientError::CreateTopic {
                    topic: name,
                    reason: code.to_string(),
                })
            }
            None => {
                return Err(ClientError::CreateTopic {
                    topic: topic.name.to_string(),
                    reason: "the broker did not answer for it".into(),
                })
            }
        }
    }
    Ok(out)
}

/// The `max.message.bytes` each topic has on the brokers, where they answer (`None` for a topic
/// they gave no value for, or for all if describing configs is not supported).
pub async fn max_message_bytes(kafka: &KafkaArgs, topics: &[&str]) -> Vec<Option<usize>> {
    use rdkafka::admin::ResourceSpecifier;
    let none = vec![None; topics.len()];
    let Ok(admin) = kafka.config(&[]).and_then(|c| {
        c.create::<AdminClient<DefaultClientContext>>()
            .map_err(|source| ClientError::Create {
                what: "admin client",
                source,
            })
    }) else {
        return none;
    };
    let specs: Vec<ResourceSpecifier> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    match admin.describe_configs(&specs, &opts).await {
        Ok(results) => results
            .into_iter()
            .map(|r| {
                r.ok()?
                    .get("max.message.bytes")?
                    .value
                    .as_deref()?
                    .parse()
                    .ok()
            })
            .collect(),
        Err(_) => none,
    }
}

/// Describes the topics' `max.message.bytes` and warns, naming the keys, where one cannot carry
/// frames of `--max-frame-bytes` (records over it would be refused by the broker). Returns the
/// sizes, as [`max_message_bytes`] does.
pub async fn check_message_sizes(
    kafka: &KafkaArgs,
    topics: &[&str],
    max_frame_bytes: usize,
) -> Vec<Option<usize>> {
    let sizes = max_message_bytes(kafka, topics).await;
    for (topic, size) in topics.iter().zip(&sizes) {
        if let Some(size) = size.filter(|&s| s < max_frame_bytes) {
            tracing::warn!(topic, max_message_bytes = size, max_frame_bytes,
                "the topic's max.message.bytes is below --max-frame-bytes: larger frames will be refused by the broker; raise max.message.bytes (vigil topics create sets it) or lower --max-frame-bytes");
        }
    }
    sizes
}

/// Returns the partition count of each named topic, or an error naming the first missing one.
/// Topics created a moment ago may take a little while to appear in the brokers' metadata, so a
/// missing topic is looked for again until `timeout` has passed. Blocking.
pub fn partition_counts(
    client: &rdkafka::client::Client<impl rdkafka::client::ClientContext>,
    topics: &[&str],
    timeout: Duration,
) -> Result<Vec<usize>, ClientError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let md = client
            .fetch_metadata(None, timeout)
            .map_err(ClientError::Unreachable)?;
        let counts: Result<Vec<usize>, ClientError> = topics
            .iter()
            .map(|t| {
                md.topics()
                    .iter()
                    .find(|m| m.name() == *t && m.error().is_none() && !m.partitions().is_empty())
                    .map(|m| m.partitions().len())
                    .ok_or_else(|| ClientError::MissingTopic(t.to_string()))
            })
            .collect();
        match counts {
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(250));
            }
            other => return other,
        }
    }
}

/// A consumer that reads `topic` from its start under a group of its own (`<prefix>-<pid>-<ms>`),
/// committing nothing: for readers that rebuild their view each time (`tail`, `console`).
pub fn read_from_start(
    kafka: &KafkaArgs,
    prefix: &str,
    topic: &str,
    fetch_wait_ms: u32,
) -> Result<StreamConsumer, ClientError> {
    use rdkafka::consumer::Consumer;
    let group = format!(
        "{prefix}-{}-{}",
        std::process::id(),
        crate::contract::now_ms()
    );
    let wait = fetch_wait_ms.to_string();
    let consumer: StreamConsumer = kafka
        .config(&[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", &wait),
        ])?
        .create()
        .map_err(|source| ClientError::Create {
            what: "consumer",
            source,
        })?;
    consumer
        .subscribe(&[topic])
        .map_err(|source| ClientError::Create {
            what: "subscription",
            source,
        })?;
    Ok(consumer)
}

/// The next message of a reading subcommand (`tail`, `alerts`): `None` once `shutdown`
/// resolves, or when nothing arrived for `idle` (if given).
pub async fn next_message<'c, C: ConsumerContext + 'static>(
    consumer: &'c StreamConsumer<C>,
    idle: Option<Duration>,
    shutdown: Pin<&mut impl Future<Output = ()>>,
) -> Option<KafkaResult<BorrowedMessage<'c>>> {
    let recv = async {
        match idle {
            Some(d) => tokio::time::timeout(d, consumer.recv()).await.ok(),
            None => Some(consumer.recv().await),
        }
    };
    tokio::select! {
        _ = shutdown => None,
        m = recv => m,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn property_parsing_names_the_problem() {
        assert_eq!(
            parse_property("a.b=c=d").unwrap(),
            ("a.b".to_string(), "c=d".to_string())
        );
        assert!(parse_property("novalue").unwrap_err().contains("novalue"));
        assert!(parse_property("=x").unwrap_err().contains("empty key"));
    }

    #[test]
    fn guarded_properties_are_refused() {
        let k = KafkaArgs {
            brokers: "x:1".into(),
            property: vec![("enable.auto.offset.store".into(), "true".into())],
            ..Default::default()
        };
        let err = k.config(&[]).unwrap_err().to_string();
        assert!(err.contains("enable.auto.offset.store"), "{err}");
    }

    #[test]
    fn overrides_win_over_defaults() {
        let k = KafkaArgs {
            brokers: "x:1".into(),
            property: vec![("linger.ms".into(), "50".into())],
            ..Default::default()
        };
        let c = k.config(&[("linger.ms", "5")]).unwrap();
        assert_eq!(c.get("linger.ms"), Some("50"));
    }

    #[test]
    fn the_properties_file_applies_under_the_command_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kafka.properties");
        std::fs::write(
            &path,
            "linger.ms=20\nsocket.timeout.ms=7000\nsasl.password=s3cret\n",
        )
        .unwrap();
        let k = KafkaArgs {
            brokers: "x:1".into(),
            kafka_config: Some(path.clone()),
            property: vec![("linger.ms".into(), "50".into())],
        };
        let c = k.config(&[("linger.ms", "5")]).unwrap();
        assert_eq!(c.get("linger.ms"), Some("50"));
        assert_eq!(c.get("socket.timeout.ms"), Some("7000"));
        let shown = format!("{k:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        std::fs::write(&path, "enable.idempotence=false\n").unwrap();
        assert!(matches!(k.config(&[]), Err(ClientError::Guarded { .. })));
        std::fs::write(&path, "security.protocol\n").unwrap();
        let err = k.config(&[]).unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("kafka.properties"),
            "{err}"
        );
    }

    #[test]
    fn secrets_given_with_x_are_not_shown() {
        let k = KafkaArgs {
            brokers: "x:1".into(),
            property: vec![("sasl.password".into(), "hunter2".into())],
            ..Default::default()
        };
        assert!(!format!("{k:?}").contains("hunter2"));
    }
}
