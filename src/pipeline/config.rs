//! The worker's configuration, and the checks that refuse a bad one at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::contract::Limits;
use crate::infer::model::ExecutionConfig;
use crate::infer::{BatchSettings, DebugImages};
use crate::kafka::KafkaArgs;

/// The consumer group's session timeout unless `-X session.timeout.ms` says otherwise: short, so
/// that a dead worker's partitions move on quickly.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything `vigil worker` is configured with.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub kafka: KafkaArgs,
    /// Consumer group; workers sharing it split the frames topic's partitions.
    pub group: String,
    pub frames_topic: String,
    pub observations_topic: String,
    pub dlq_topic: String,
    /// Episode events (Avro).
    pub violations_topic: String,
    /// Episode state (compacted, co-partitioned with the frames topic).
    pub state_topic: String,
    pub limits: Limits,
    /// Model pack directory; found automatically when `None`.
    pub model_dir: Option<PathBuf>,
    /// Rules file; the built-in default when `None`.
    pub rules: Option<PathBuf>,
    /// Annotated debug images for some cameras.
    pub debug: Option<DebugImages>,
    /// ONNX Runtime library; found automatically when `None`.
    pub ort_lib: Option<PathBuf>,
    pub exec: ExecutionConfig,
    /// Batch size (by device unless chosen) and wait for the models' batches.
    pub batch: BatchSettings,
    /// Frames decoded concurrently.
    pub decode_threads: usize,
    /// Model runs at once, across every model's session (0: no limit, one per model).
    pub concurrent_runs: usize,
    /// Frames read but not yet delivered, at most.
    pub max_in_flight: usize,
    /// Address of the `/metrics` endpoint, if any.
    pub metrics_addr: Option<SocketAddr>,
    /// Frames older than this behind real time are thinned per camera (see `source::shed`);
    /// `None` judges every frame however late.
    pub max_staleness: Option<Duration>,
    /// When a tracked detection's crop is classified again.
    pub track: crate::infer::track::TrackPolicy,
    /// Longest wait for in-flight frames at shutdown or revoke; below `session_timeout`.
    pub drain_timeout: Duration,
    /// The consumer group's session timeout (`session.timeout.ms`): a worker silent for longer
    /// loses its partitions.
    pub session_timeout: Duration,
    /// Name written into observations and dead letters.
    pub worker_id: String,
    /// Interval of the progress log line.
    pub progress_interval: Duration,
    /// Export per-camera metric series.
    pub camera_labels: bool,
    /// Most cameras with per-camera series at once.
    pub camera_series_limit: usize,
    /// Confluent-compatible schema registry: Avro in the Confluent wire format when set,
    /// single-object encoding otherwise.
    pub schema_registry: Option<crate::codec::registry::RegistryConfig>,
    /// Evidence pictures (`--evidence-url`), none when not set.
    pub evidence: Option<crate::evidence::EvidenceConfig>,
}

/// A default worker id: host name and process id.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "vigil".into());
    format!("{host}-{}", std::process::id())
}

impl WorkerConfig {
    /// Checks what cannot be checked option by option, naming the keys at fault.
    pub fn validate(&self) -> Result<(), String> {
        // A revoke waits up to the drain timeout before giving partitions away; if that outlasts
        // the session timeout, the group evicts the worker mid-drain and its frames are read
        // twice.
        if self.drain_timeout >= self.session_timeout {
            return Err(format!(
                "--drain-timeout-secs ({} s) must be below the consumer group's session timeout \
                 (session.timeout.ms = {} ms): lower --drain-timeout-secs or raise \
                 -X session.timeout.ms",
                self.drain_timeout.as_secs_f64(),
                self.session_timeout.as_millis()
            ));
        }
        Ok(())
    }
}

/// The session timeout the user's properties set (`-X`, the environment or the properties
/// file), or the default.
pub fn session_timeout(kafka: &KafkaArgs) -> Result<Duration, String> {
    let props = kafka.properties().map_err(|e| e.to_string())?;
    match props.iter().rev().find(|(k, _)| k == "session.timeout.ms") {
        None => Ok(DEFAULT_SESSION_TIMEOUT),
        Some((_, v)) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| format!("-X session.timeout.ms={v}: not a whole number of milliseconds")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kafka(props: &[(&str, &str)]) -> KafkaArgs {
        KafkaArgs {
            brokers: "x:1".into(),
            property: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_session_timeout_comes_from_x_or_the_default() {
        assert_eq!(
            session_timeout(&kafka(&[])).unwrap(),
            DEFAULT_SESSION_TIMEOUT
        );
        assert_eq!(
            session_timeout(&kafka(&[("session.timeout.ms", "45000")])).unwrap(),
            Duration::from_secs(45)
        );
        let err = session_timeout(&kafka(&[("session.timeout.ms", "soon")])).unwrap_err();
        assert!(err.contains("session.timeout.ms"), "{err}");
    }
}
