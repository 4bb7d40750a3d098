//! The start-up connection check: every subcommand asks the brokers for metadata before it
//! starts, within a bounded time, so that a wrong CA, a wrong password or a plaintext client in
//! front of a TLS listener stops it at once with the cause named, instead of a client that
//! retries silently forever. librdkafka reports those causes only through its error callback,
//! so the check's client records them ([`ProbeContext`]) and [`diagnose`] names the cause.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;

use super::{ClientError, KafkaArgs};

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
    /// The error reports so far (the first few: the cause comes first).
    errors: Mutex<Vec<String>>,
}

impl ProbeContext {
    fn reports(&self) -> Vec<String> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl ProbeContext {
    fn record(&self, report: &str) {
        if let Ok(mut e) = self.errors.lock() {
            if e.len() < 16 {
                e.push(report.to_string());
            }
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
    let rules: [(Cause, &[&str]); 5] = [
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
        (
            Cause::Plaintext,
            &[
                "connecting to a ssl listener",
                "incorrect security.protocol",
            ],
        ),
    ];
    for (cause, words) in rules {
        if let Some(r) = reports.iter().find(|r| has(r, words)) {
            return Some((cause, r.clone()));
        }
    }
    // A TLS listener (or terminator) drops a plaintext client's first request.
    if plaintext {
        if let Some(r) = reports
            .iter()
            .find(|r| has(r, &["disconnected"]) && has(r, &["state apiversion_query"]))
        {
            return Some((Cause::Plaintext, r.clone()));
        }
    }
    None
}

/// Asks the brokers for metadata until they answer, a final cause shows up, or `timeout` has
/// passed. Blocking: call it off the async runtime.
pub fn check_connection(kafka: &KafkaArgs, timeout: Duration) -> Result<(), ClientError> {
    let started = Instant::now();
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
        if let Some((cause, detail)) = diagnose(&reports, plaintext) {
            if cause.is_final() {
                return Err(fail(cause, detail));
            }
        }
        if started.elapsed() >= timeout {
            let detail = reports.last().cloned().unwrap_or(last);
            return Err(fail(Cause::Unreachable, detail));
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

#[cfg(test)]
mod tests {
    use super::*;

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
