//! `vigil alerts`: the reference subscriber of the violations topic. Decodes each Avro event,
//! prints one readable line, optionally POSTs it as JSON to a webhook (with retries and
//! exponential backoff), and deduplicates by `event_id`: a re-published event (same id, after a
//! worker crash) is shown and delivered once. Offsets are stored only once an event is handled,
//! so a crash of the subscriber re-delivers, never loses.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use crate::codec::avro::{ACKNOWLEDGEMENT, VIOLATION_EVENT};
use crate::codec::registry::{ReadError, RecordReader};
use crate::console::acks::Acknowledgement;
use crate::contract::ViolationEvent;
use crate::http::{Auth, Endpoint, HttpError, RetryPolicy, TlsSettings};
use crate::kafka::{self, KafkaArgs};
use anyhow::{anyhow, Context};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

#[derive(Debug, Clone)]
pub struct AlertsConfig {
    pub kafka: KafkaArgs,
    pub topic: String,
    /// Consumer group: alerts resume where they stopped.
    pub group: String,
    /// POST each new event here.
    pub webhook: Option<WebhookConfig>,
    /// Attempts per event before giving up (the subscriber then stops without committing it).
    pub max_attempts: u32,
    /// Print events as JSON lines instead of readable lines.
    pub json: bool,
    /// Stop after this long without an event.
    pub idle_timeout: Option<Duration>,
    /// Event ids remembered for deduplication.
    pub remember: usize,
    /// Registry for events in the Confluent wire format.
    pub schema_registry: Option<crate::codec::registry::RegistryConfig>,
    /// The acknowledgements topic to follow too (`--acks-topic`).
    pub acks_topic: Option<String>,
    /// Notify once more about an episode unacknowledged this long after it opened.
    pub renotify_overdue: Option<Duration>,
}

/// Open episodes not yet acknowledged, for `--renotify-overdue-secs`: pure, time passed in.
#[derive(Debug, Default)]
pub struct Overdue {
    /// Open, unacknowledged, not yet re-notified episodes: their latest event.
    waiting: std::collections::HashMap<String, ViolationEvent>,
    /// Episodes acknowledged, resolved or re-notified already (a replayed opening does not
    /// bring them back).
    done: Dedup,
}

impl Overdue {
    pub fn new(remember: usize) -> Overdue {
        Overdue {
            waiting: Default::default(),
            done: Dedup::new(remember),
        }
    }

    pub fn event(&mut self, ev: &ViolationEvent) {
        if self.done.contains(&ev.episode_id) {
            return;
        }
        if ev.kind == crate::contract::EventKind::Resolved {
            self.waiting.remove(&ev.episode_id);
            self.done.first_time(&ev.episode_id);
        } else {
            self.waiting.insert(ev.episode_id.clone(), ev.clone());
        }
    }

    pub fn acknowledged(&mut self, episode_id: &str) {
        self.waiting.remove(episode_id);
        self.done.first_time(episode_id);
    }

    /// Episodes overdue at `now_ms` (each returned once), oldest first.
    pub fn due(&mut self, now_ms: i64, after: Duration) -> Vec<ViolationEvent> {
        let limit = after.as_millis() as i64;
        let mut due: Vec<ViolationEvent> = self
            .waiting
            .values()
            .filter(|e| now_ms - e.opened_at > limit)
            .cloned()
            .collect();
        due.sort_by_key(|e| e.opened_at);
        for e in &due {
            self.waiting.remove(&e.episode_id);
            self.done.first_time(&e.episode_id);
        }
        due
    }
}

/// The webhook: where, with which credential, trusting which CA.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `http(s)://host[:port]/path`.
    pub url: String,
    /// A bearer token or a custom header (`--webhook-token-file`, `VIGIL_WEBHOOK_TOKEN`).
    pub auth: Auth,
    pub tls: TlsSettings,
}

impl WebhookConfig {
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        Endpoint::new(
            &self.url,
            "--webhook",
            &self.tls,
            self.auth.clone(),
            Duration::from_secs(10),
        )
    }
}

/// Recently seen event ids, bounded.
#[derive(Debug)]
pub struct Dedup {
    seen: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup::new(100_000)
    }
}

impl Dedup {
    pub fn new(capacity: usize) -> Self {
        Dedup {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether an id has been offered (and is still remembered).
    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains(id)
    }

    /// True the first time an id is offered.
    pub fn first_time(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        self.seen.insert(id.to_string());
        self.order.push_back(id.to_string());
        if self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// One readable line per event.
pub fn describe(e: &ViolationEvent) -> String {
    let mut s = format!(
        "{:<8} {:<8} site={} camera={} rule={} episode={} peak={:.2} mean={:.2} frames={}",
        e.kind.as_str().to_uppercase(),
        e.severity,
        e.site,
        e.camera,
        e.rule,
        e.episode_id.chars().take(12).collect::<String>(),
        e.peak_level,
        e.mean_level,
        e.frames
    );
    if let Some(r) = &e.reason {
        s.push_str(&format!(" reason={r}"));
    }
    if let Some(ev) = &e.evidence {
        s.push_str(&format!(
            " frame={}:{}/{}",
            ev.topic, ev.partition, ev.offset
        ));
    }
    if let Some(uri) = &e.evidence_uri {
        s.push_str(&format!(" evidence={uri}"));
    }
    s.push_str(&format!(" event={}", e.event_id));
    s
}

/// POSTs with jittered exponential backoff (0.5 s doubling to 30 s), `attempts` times at
/// most; failures that will not pass (TLS, 401/403, other 4xx) are not retried.
pub async fn post_with_retries(
    hook: &Endpoint,
    body: &[u8],
    attempts: u32,
) -> Result<(), HttpError> {
    let retry = RetryPolicy {
        attempts: attempts.max(1),
        first: Duration::from_millis(500),
        max_delay: Duration::from_secs(30),
    };
    hook.send_with_retries(
        reqwest::Method::POST,
        "",
        "application/json",
        body,
        &retry,
        |e, delay| {
            tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "webhook failed, retrying")
        },
    )
    .await
    .map(|_| ())
}

pub async fn run(
    cfg: AlertsConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let hook = cfg
        .webhook
        .as_ref()
        .map(WebhookConfig::endpoint)
        .transpose()
        .map_err(|e| anyhow!(e))?;
    kafka::check_connection_async(&cfg.kafka, kafka::CONNECT_TIMEOUT).await?;
    let consumer: StreamConsumer = cfg
        .kafka
        .config(&[
            ("group.id", &cfg.group),
            ("enable.auto.commit", "true"),
            ("enable.auto.offset.store", "false"),
            ("auto.offset.reset", "earliest"),
            ("fetch.wait.max.ms", "5"),
        ])
        .map_err(|e| anyhow!(e))?
        .create()
        .context("cannot create consumer")?;
    let mut topics = vec![cfg.topic.as_str()];
    topics.extend(cfg.acks_topic.as_deref());
    consumer.subscribe(&topics)?;
    let mut reader: RecordReader<ViolationEvent> =
        RecordReader::with_registry(&VIOLATION_EVENT, cfg.schema_registry.as_ref())
            .map_err(|e| anyhow!(e))?;
    let mut ack_reader: RecordReader<Acknowledgement> =
        RecordReader::with_registry(&ACKNOWLEDGEMENT, cfg.schema_registry.as_ref())
            .map_err(|e| anyhow!(e))?;
    let mut dedup = Dedup::new(cfg.remember);
    let mut acked = Dedup::new(cfg.remember);
    let mut overdue = Overdue::new(cfg.remember);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let (mut shown, mut repeats) = (0u64, 0u64);
    tokio::pin!(shutdown);
    // The idle limit counts from the last record, not from the last overdue check.
    let mut last_record = std::time::Instant::now();
    loop {
        let idle = cfg
            .idle_timeout
            .map(|d| d.saturating_sub(last_record.elapsed()));
        let next = tokio::select! {
            m = kafka::next_message(&consumer, idle, shutdown.as_mut()) => m,
            _ = tick.tick(), if cfg.renotify_overdue.is_some() => {
                for ev in overdue.due(crate::contract::now_ms(), cfg.renotify_overdue.unwrap_or_default()) {
                    let since = chrono::DateTime::from_timestamp_millis(ev.opened_at).map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default();
                    let line = format!("OVERDUE  site={} camera={} rule={} episode={} opened={since} unacknowledged", ev.site, ev.camera, ev.rule, ev.episode_id.chars().take(12).collect::<String>());
                    println!("{line}");
                    if let Some(hook) = &hook {
                        let body = serde_json::to_vec(&serde_json::json!({"overdue": true, "event": ev}))?;
                        post_with_retries(hook, &body, cfg.max_attempts).await.with_context(|| format!("overdue notice of {} not delivered to the webhook", ev.episode_id))?;
                    }
                }
                continue;
            }
        };
        let Some(msg) = next else {
            break;
        };
        let msg = msg?;
        last_record = std::time::Instant::now();
        let payload = msg.payload().unwrap_or_default();
        if cfg.acks_topic.as_deref() == Some(msg.topic()) {
            match ack_reader.decode(payload).await {
                Ok(a) => {
                    overdue.acknowledged(&a.episode_id);
                    if acked.first_time(&a.episode_id) {
                        if cfg.json {
                            println!("{}", serde_json::to_string(&a)?);
                        } else {
                            println!("{}", crate::console::acks::describe(&a));
                        }
                        if let Some(hook) = &hook {
                            let body =
                                serde_json::to_vec(&serde_json::json!({"acknowledgement": a}))?;
                            post_with_retries(hook, &body, cfg.max_attempts)
                                .await
                                .with_context(|| format!("acknowledgement of {} not delivered to the webhook; stopping without committing it", a.episode_id))?;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "not an acknowledgement, skipped")
                }
            }
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(
                msg.topic(),
                msg.partition(),
                Offset::Offset(msg.offset() + 1),
            )?;
            consumer.store_offsets(&tpl)?;
            continue;
        }
        match reader.decode(payload).await {
            Err(e @ (ReadError::Registry(_) | ReadError::NeedsRegistry(_))) => {
                // Not the record's fault: stop without storing its offset, so that a restart
                // (with a reachable registry, or with --schema-registry) reads it.
                return Err(anyhow!(e).context(format!(
                    "cannot look up the schema of {}:{}; stopping without committing it",
                    msg.partition(),
                    msg.offset()
                )));
            }
            Err(e) => {
                tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "not a violation event, skipped")
            }
            Ok(ev) => {
                overdue.event(&ev);
                if dedup.first_time(&ev.event_id) {
                    if cfg.json {
                        println!("{}", serde_json::to_string(&ev)?);
                    } else {
                        println!("{}", describe(&ev));
                    }
                    if let Some(hook) = &hook {
                        let body = serde_json::to_vec(&ev)?;
                        post_with_retries(hook, &body, cfg.max_attempts)
                            .await
                            .with_context(|| format!("event {} not delivered to the webhook; stopping without committing it", ev.event_id))?;
                    }
                    shown += 1;
                } else {
                    repeats += 1;
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(
            msg.topic(),
            msg.partition(),
            Offset::Offset(msg.offset() + 1),
        )?;
        consumer.store_offsets(&tpl)?;
    }
    let _ = consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync);
    eprintln!("alerts: {shown} events, {repeats} repeats suppressed");
    Ok(())
}

impl super::AlertsArgs {
    /// The webhook's settings, checked.
    pub fn webhook(&self) -> Result<Option<WebhookConfig>, String> {
        let Some(url) = &self.webhook else {
            return Ok(None);
        };
        let token = crate::http::Secret::from_env_or_file(
            "VIGIL_WEBHOOK_TOKEN",
            self.webhook_token_file.as_deref(),
            "--webhook-token-file",
        )?;
        let auth = match (token, &self.webhook_auth_header) {
            (None, None) => crate::http::Auth::None,
            (None, Some(_)) => return Err(
                "--webhook-auth-header needs a token (VIGIL_WEBHOOK_TOKEN or --webhook-token-file)"
                    .into(),
            ),
            (Some(t), None) => crate::http::Auth::Bearer(t),
            (Some(t), Some(name)) => crate::http::Auth::Header {
                name: name.clone(),
                value: t,
            },
        };
        let cfg = WebhookConfig {
            url: url.clone(),
            auth,
            tls: self.registry.tls(),
        };
        cfg.endpoint()?;
        Ok(Some(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_is_bounded_and_exact() {
        let mut d = Dedup::new(2);
        assert!(d.first_time("a"));
        assert!(!d.first_time("a"));
        assert!(d.first_time("b"));
        assert!(d.first_time("c"));
        assert!(d.first_time("a"), "forgotten beyond capacity");
    }

    #[test]
    fn overdue_episodes_are_renotified_once_unless_acknowledged_or_resolved() {
        let base = crate::contract::event::tests::sample_events()[0].clone();
        let ep = |id: &str, kind: crate::contract::EventKind| {
            let mut e = base.clone();
            e.episode_id = id.into();
            e.kind = kind;
            e.opened_at = 1_000;
            e
        };
        use crate::contract::EventKind::{Opened, Resolved};
        let mut o = Overdue::new(100);
        o.event(&ep("a", Opened));
        o.event(&ep("b", Opened));
        o.event(&ep("c", Opened));
        o.acknowledged("b");
        o.event(&ep("c", Resolved));
        let after = Duration::from_secs(60);
        assert!(o.due(60_000, after).is_empty(), "not yet");
        let due: Vec<String> = o
            .due(62_000, after)
            .into_iter()
            .map(|e| e.episode_id)
            .collect();
        assert_eq!(due, ["a"]);
        assert!(o.due(120_000, after).is_empty(), "once");
        o.event(&ep("a", Opened));
        assert!(
            o.due(120_000, after).is_empty(),
            "a replay does not bring it back"
        );
    }

    #[test]
    fn lines_name_the_essentials() {
        let e = &crate::contract::event::tests::sample_events()[2];
        let line = describe(e);
        assert!(
            line.starts_with("RESOLVED")
                && line.contains("camera=cam-0001")
                && line.contains("reason=cleared"),
            "{line}"
        );
    }

    #[test]
    fn an_episode_id_of_any_text_is_shortened_without_panicking() {
        // An outside producer may write any string; byte 12 of this one falls inside a
        // character.
        let mut e = crate::contract::event::tests::sample_events()[0].clone();
        e.episode_id = "épisode-ñ-ü-✓-long".into();
        let line = describe(&e);
        assert!(line.contains("episode=épisode-ñ-ü- "), "{line}");
    }
}
