//! The start-up connection check: every subcommand asks the brokers for metadata before it
//! starts, within a bounded time, so that a wrong CA, a wrong password or a plaintext client in
//! front of a TLS listener stops it at once with the cause named, instead of a client that
//! retries silently forever. librdkafka reports those causes only through its error callback,
//! so the check's client records them ([`ProbeContext`]) and [`diagnose`] names the cause.
//!
//! Once a worker runs, brokers that go away are waited for, not a reason to stop: the
//! [`BrokerLink`] follows whether they answer, for `/readyz` and the logs.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;

use super::{ClientError, KafkaArgs};
use crate::telemetry::{Metrics, Readiness};

/// Longest wait for the brokers at start-up when they are merely unreachable (a failed TLS
/// handshake or authentication ends the wait at once).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the brokers could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The broker's certificate did not verify against the trusted CAs.
    UntrustedCertificate,
    /// The broker wants a client certificate (mTLS) and got none it accepts.
    ClientCertificate,
    /// Some other TLS failure (e.g. a TLS client against a plaintext listener).
    Tls,
    /// SASL authentication failed (user name, password or mechanism).
    Authentication,
    /// A plaintext client against a listener that speaks TLS (or SASL is needed).
    Plaintext,
    /// No answer: wrong address, broker down, network.
    Unreachable,
}

impl Cause {
    fn advice(&self) -> &'static str {
        match self {
            Cause::UntrustedCertificate => "the broker's TLS certificate is not trusted: give the CA that signed it with ssl.ca.location (or check the broker's host name)",
            Cause::ClientCertificate => "the broker requires a client certificate it trusts: set ssl.certificate.location and ssl.key.location",
            Cause::Tls => "the TLS handshake failed: check that the listener speaks TLS (security.protocol=SSL or SASL_SSL needs a TLS listener) and the TLS settings",
            Cause::Authentication => "SASL authentication failed: check sasl.username, sasl.password and sasl.mechanisms",
            Cause::Plaintext => "the broker closed the plaintext connection: the listener probably expects TLS (set security.protocol=SSL or SASL_SSL) or SASL",
            Cause::Unreachable => "the brokers did not answer: check --brokers / VIGIL_BROKERS and that they are up",
        }
    }

    /// Failures that waiting will not cure.
    fn is_final(&self) -> bool {
        !matches!(self, Cause::Unreachable)
    }
}

/// The failed check: the cause, with librdkafka's own words.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the brokers {brokers} (after {waited_ms} ms): {advice}; librdkafka said: {detail}", advice = cause.advice())]
pub struct ConnectError {
    pub brokers: String,
    pub cause: Cause,
    pub detail: String,
    pub waited_ms: u128,
}

/// A client context that keeps librdkafka's error reports for [`diagnose`].
#[derive(Default)]
pub struct ProbeContext {
    /// The error reports so far (the first few, and the latest few).
    errors: Mutex<Vec<String>>,
}

impl ProbeContext {
    fn reports(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl ProbeContext {
    /// Keeps the first reports (the cause comes first) and the latest (a wait may be long,
    /// and the cause may change: a broker back with a listener the client cannot speak to).
    fn record(&self, report: &str) {
        if let Ok(mut e) = self.errors.lock() {
            if e.len() >= 16 {
                e.remove(8);
            }
            e.push(report.to_string());
        }
    }
}

impl ClientContext for ProbeContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(error = %error, reason, "kafka client error during the connection check");
        self.record(reason);
    }

    /// Connection failures (facility `FAIL`) carry the cause; librdkafka reports some of them
    /// (a reset during the first request) only here.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(
            ?level,
            fac,
            message = log_message,
            "librdkafka during the connection check"
        );
        if fac == "FAIL" {
            self.record(log_message);
        }
    }
}

impl ConsumerContext for ProbeContext {}

/// Names the cause among librdkafka's error reports (`None` when none is recognised).
/// `plaintext`: the client speaks no TLS (`security.protocol` PLAINTEXT or SASL_PLAINTEXT).
pub fn diagnose(reports: &[String], plaintext: bool) -> Option<(Cause, String)> {
    let has = |r: &str, words: &[&str]| {
        let l = r.to_ascii_lowercase();
        words.iter().any(|w| l.contains(w))
    };
    // Specific causes first, whichever report carries them.
    let rules: [(Cause, &[&str]); 4] = [
        (
            Cause::UntrustedCertificate,
            &[
                "certificate verify failed",
                "unable to get local issuer",
                "self-signed certificate",
                "self signed certificate",
                "unknown ca",
            ],
        ),
        (
            Cause::ClientCertificate,
            &["certificate required", "peer did not return a certificate"],
        ),
        (
            Cause::Authentication,
            &[
                "authentication failed",
                "sasl authentication error",
                "invalid username or password",
                "illegal sasl",
                "unsupported sasl mechanism",
            ],
        ),
        (Cause::Tls, &["ssl handshake failed", "ssl routines"]),
    ];
    for (cause, words) in rules {
        if let Some(r) = reports.iter().find(|r| has(r, words)) {
            return Some((cause, r.clone()));
        }
    }
    // A TLS listener (or terminator) drops a plaintext client's first request. So may a broker
    // that is stopping: the cause holds only while no later report says the broker is merely
    // away (refused connections), and the caller waits a little before it believes it.
    if plaintext {
        let dropped = |r: &String| {
            has(
                r,
                &[
                    "connecting to a ssl listener",
                    "incorrect security.protocol",
                ],
            ) || (has(r, &["disconnected"]) && has(r, &["state apiversion_query"]))
        };
        if let Some(i) = reports.iter().rposition(dropped) {
            let away_since = reports[i + 1..]
                .iter()
                .any(|r| has(r, &["connection refused", "state connect"]));
            if !away_since {
                return Some((Cause::Plaintext, reports[i].clone()));
            }
        }
    }
    None
}

/// How long a plaintext client sees its first requests dropped, with no sign of a broker that
/// is merely away, before it concludes that the listener wants TLS.
const PLAINTEXT_PATIENCE: Duration = Duration::from_secs(5);

/// Asks the brokers for metadata until they answer, a final cause shows up, or `timeout` has
/// passed. Blocking: call it off the async runtime.
pub fn check_connection(kafka: &KafkaArgs, timeout: Duration) -> Result<(), ClientError> {
    connect(kafka, Some(timeout))
}

/// [`check_connection`] for a worker, which rides out broker outages, starting during one as
/// well: brokers that merely do not answer are waited for however long it takes (said once,
/// after [`CONNECT_TIMEOUT`]); a final cause (TLS, credentials) still stops it at once.
/// Blocking.
pub fn wait_for_brokers(kafka: &KafkaArgs) -> Result<(), ClientError> {
    connect(kafka, None)
}

/// [`wait_for_brokers`] on the blocking pool.
pub async fn wait_for_brokers_async(kafka: &KafkaArgs) -> Result<(), ClientError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || wait_for_brokers(&kafka))
        .await
        .map_err(|e| ClientError::Settings(format!("connection check panicked: {e}")))?
}

/// The connection check: until `timeout` if given, for ever otherwise.
fn connect(kafka: &KafkaArgs, timeout: Option<Duration>) -> Result<(), ClientError> {
    let started = Instant::now();
    let mut said = false;
    // Since when the brokers have dropped the first request, with nothing said since.
    let mut dropped_since: Option<Instant> = None;
    // A consumer that never subscribes: its group id only gives it the queue its error
    // reports arrive on (served by `poll`).
    let client: BaseConsumer<ProbeContext> = kafka
        .config(&[("group.id", "vigil-connection-check")])?
        .create_with_context(ProbeContext::default())
        .map_err(|source| ClientError::Create {
            what: "client",
            source,
        })?;
    let plaintext = kafka
        .properties()?
        .iter()
        .rev()
        .find(|(k, _)| k == "security.protocol")
        .is_none_or(|(_, v)| v.to_ascii_lowercase().ends_with("plaintext"));
    let fail = |cause: Cause, detail: String| {
        ClientError::Connect(ConnectError {
            brokers: kafka.brokers.clone(),
            cause,
            detail,
            waited_ms: started.elapsed().as_millis(),
        })
    };
    loop {
        let last = match client.fetch_metadata(None, Duration::from_millis(1500)) {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        // Serves the error callbacks (no message can come: nothing is subscribed).
        let _ = client.poll(Duration::from_millis(50));
        let reports = client.context().reports();
        match diagnose(&reports, plaintext) {
            Some((Cause::Plaintext, detail)) => {
                let since = *dropped_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= PLAINTEXT_PATIENCE {
                    return Err(fail(Cause::Plaintext, detail));
                }
            }
            Some((cause, detail)) if cause.is_final() => return Err(fail(cause, detail)),
            _ => dropped_since = None,
        }
        if started.elapsed() >= timeout.unwrap_or(CONNECT_TIMEOUT) {
            let detail = reports.last().cloned().unwrap_or(last);
            if timeout.is_some() {
                return Err(fail(Cause::Unreachable, detail));
            }
            if !said {
                said = true;
                tracing::warn!(brokers = %kafka.brokers, detail, waited_s = started.elapsed().as_secs(),
                    "the brokers do not answer; waiting for them (check --brokers if they should)");
            }
        }
    }
}

/// [`check_connection`] on the blocking pool.
pub async fn check_connection_async(
    kafka: &KafkaArgs,
    timeout: Duration,
) -> Result<(), ClientError> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || check_connection(&kafka, timeout))
        .await
        .map_err(|e| ClientError::Settings(format!("connection check panicked: {e}")))?
}

/// Whether the brokers answer, as a running worker's clients see them. librdkafka's
/// `AllBrokersDown`, from one of the worker's producers, marks them lost; an answer (an outcome delivered,
/// a group joined, statistics showing a connection up) marks them back. While they are lost,
/// `/readyz` answers 503 `unreachable` and `vigil_broker_reachable` is 0; each loss is counted
/// (`vigil_broker_outages_total`) and logged once, and so is the return, while the clients'
/// failed reconnections are logged at debug. Nothing stops for it: outcomes wait in the
/// producer, and offsets wait to be committed.
#[derive(Clone)]
pub struct BrokerLink {
    /// Where `/readyz` reads it.
    readiness: Readiness,
    /// `vigil_broker_outages_total` and `vigil_broker_reachable`.
    metrics: Arc<Metrics>,
    /// While the brokers are out of reach, since when: the instant and the Unix second. Both
    /// changes of the link are made holding it.
    since: Arc<Mutex<Option<(Instant, i64)>>>,
}

/// Answers that arrive this soon after the brokers were lost may be older than the loss (each
/// client reports on a thread of its own): they do not count.
const GRACE: Duration = Duration::from_secs(1);

impl BrokerLink {
    pub fn new(readiness: Readiness, metrics: Arc<Metrics>) -> BrokerLink {
        BrokerLink {
            readiness,
            metrics,
            since: Arc::default(),
        }
    }

    fn since(&self) -> std::sync::MutexGuard<'_, Option<(Instant, i64)>> {
        self.since.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every broker is out of reach (`detail`: librdkafka's words).
    pub fn lost(&self, detail: &str) {
        let mut since = self.since();
        if self.readiness.set_reachable(false) {
            *since = Some((Instant::now(), crate::contract::now_ms().div_euclid(1000)));
            self.metrics.broker_outages.inc();
            self.metrics.broker_reachable.set(0);
            tracing::warn!(
                detail,
                "brokers unreachable; waiting for them, not ready meanwhile"
            );
        }
    }

    /// A broker answered just now. Cheap while they do (called for every delivery).
    pub fn answered(&self) {
        self.found(|(at, _)| at.elapsed() >= GRACE);
    }

    /// Statistics a client emitted: a connection up to a broker (not one of librdkafka's
    /// internal ones) is an answer, if the statistics are newer than the loss (a client that
    /// was busy may serve them late).
    pub fn stats(&self, stats: &Statistics) {
        if self.readiness.reachable() {
            return;
        }
        let up = stats
            .brokers
            .values()
            .any(|b| b.state == "UP" && (b.source == "learned" || b.source == "configured"));
        if up {
            self.found(|(_, lost)| stats.time > *lost);
        }
    }

    /// The brokers are back, if `fresh` says the evidence is newer than their loss.
    fn found(&self, fresh: impl FnOnce(&(Instant, i64)) -> bool) {
        if self.readiness.reachable() {
            return;
        }
        let mut since = self.since();
        if since.as_ref().is_some_and(|s| !fresh(s)) || !self.readiness.set_reachable(true) {
            return;
        }
        let away = since
            .take()
            .map_or(0.0, |(at, _)| at.elapsed().as_secs_f64());
        self.metrics.broker_reachable.set(1);
        tracing::info!(
            unreachable_s = format!("{away:.1}"),
            "brokers reachable again"
        );
    }

    /// Whether the brokers are out of reach now.
    pub fn is_lost(&self) -> bool {
        !self.readiness.reachable()
    }

    /// A client's error report: `AllBrokersDown` loses the link; the others are transport
    /// trouble that librdkafka retries by itself (logged at debug), except a fatal one, which
    /// the client's next operation reports as well.
    pub fn client_error(&self, client: &str, error: &KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            Some(RDKafkaErrorCode::AllBrokersDown) => self.lost(reason),
            Some(RDKafkaErrorCode::Fatal) => {
                tracing::error!(client, error = %error, reason, "kafka client failed")
            }
            _ => tracing::debug!(client, error = %error, reason, "kafka client error"),
        }
    }

    /// A librdkafka log line: at its own level, except failed connections (`FAIL`) while the
    /// brokers are known to be away, which repeat at every attempt (at debug then).
    pub fn client_log(&self, client: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if fac == "FAIL" && self.is_lost() {
            tracing::debug!(client, fac, message, "librdkafka");
            return;
        }
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(client, fac, message, "librdkafka"),
            RDKafkaLogLevel::Warning => tracing::warn!(client, fac, message, "librdkafka"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(client, fac, message, "librdkafka")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(client, fac, message, "librdkafka"),
        }
    }
}

/// A client context that reports to a [`BrokerLink`] (the worker's producers).
pub struct LinkContext {
    link: BrokerLink,
    /// Which client it is, for the logs.
    client: &'static str,
}

impl LinkContext {
    pub fn new(link: BrokerLink, client: &'static str) -> LinkContext {
        LinkContext { link, client }
    }
}

impl ClientContext for LinkContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.link.client_error(self.client, &error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.link.client_log(self.client, level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        self.link.stats(&statistics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_is_lost_once_and_found_once_per_outage() {
        let (readiness, metrics) = (Readiness::default(), Arc::new(Metrics::default()));
        readiness.set(crate::telemetry::Phase::Ready);
        let link = BrokerLink::new(readiness.clone(), metrics.clone());
        let down = KafkaError::Global(RDKafkaErrorCode::AllBrokersDown);
        let transport = KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure);
        link.client_error("consumer", &transport, "disconnected");
        assert!(!link.is_lost(), "one connection lost is not an outage");
        link.client_error("consumer", &down, "1/1 brokers are down");
        link.client_error("producer", &down, "1/1 brokers are down");
        assert!(link.is_lost());
        assert_eq!(readiness.phase(), crate::telemetry::Phase::Unreachable);
        assert_eq!(
            metrics.broker_outages.get(),
            1,
            "one outage, however many reports"
        );
        assert_eq!(metrics.broker_reachable.get(), 0);
        link.answered();
        assert!(
            link.is_lost(),
            "an answer right after the loss may predate it"
        );
        std::thread::sleep(GRACE);
        link.answered();
        link.answered();
        assert_eq!(readiness.phase(), crate::telemetry::Phase::Ready);
        assert_eq!(metrics.broker_reachable.get(), 1);
        link.lost("again");
        assert_eq!(metrics.broker_outages.get(), 2);
    }

    fn d(reports: &[&str]) -> Option<Cause> {
        let r: Vec<String> = reports.iter().map(|s| s.to_string()).collect();
        diagnose(&r, true).map(|(c, _)| c)
    }

    #[test]
    fn librdkafka_reports_name_the_cause() {
        assert_eq!(
            d(&["ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 3ms in state SSL_HANDSHAKE)", "1/1 brokers are down"]),
            Some(Cause::UntrustedCertificate)
        );
        assert_eq!(
            d(&["sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 10ms in state AUTH_REQ)"]),
            Some(Cause::Authentication)
        );
        assert_eq!(
            d(&["127.0.0.1:9093/bootstrap: Disconnected while requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request) (after 1ms in state APIVERSION_QUERY)"]),
            Some(Cause::Plaintext)
        );
        assert_eq!(
            d(&["127.0.0.1:9093/bootstrap: Disconnected: connection reset by peer (after 3ms in state APIVERSION_QUERY)", "1/1 brokers are down"]),
            Some(Cause::Plaintext)
        );
        // A broker that stopped while the client connected, then refused it: it is away.
        assert_eq!(
            d(&["127.0.0.1:9093/bootstrap: Disconnected: connection reset by peer (after 4780ms in state APIVERSION_QUERY)", "1/1 brokers are down", "127.0.0.1:9093/bootstrap: Connect to ipv4#127.0.0.1:9093 failed: Connection refused (after 0ms in state CONNECT)"]),
            None
        );
        let r = vec![
            "ssl://127.0.0.1:9093/bootstrap: Disconnected (after 3ms in state APIVERSION_QUERY)"
                .to_string(),
        ];
        assert_eq!(diagnose(&r, false), None);
        assert_eq!(
            d(&["ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A00010B:SSL routines::wrong version number (after 0ms in state SSL_HANDSHAKE)"]),
            Some(Cause::Tls)
        );
        assert_eq!(
            d(&["ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A00045C:SSL routines::tlsv13 alert certificate required: SSL alert number 116"]),
            Some(Cause::ClientCertificate)
        );
        assert_eq!(
            d(&["127.0.0.1:1/bootstrap: Connect to ipv4#127.0.0.1:1 failed: Connection refused (after 0ms in state CONNECT)", "1/1 brokers are down"]),
            None
        );
        assert!(!Cause::Unreachable.is_final() && Cause::Authentication.is_final());
    }
}
