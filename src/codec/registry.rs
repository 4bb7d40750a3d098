//! The Confluent Schema Registry REST API, as far as vigil needs it: registering a record type's
//! current schema under `<topic>-value` (the topic name strategy) at start-up, and fetching a
//! writer schema by id when a record names one this process has not seen.
//!
//! Registration is idempotent: the registry answers the existing id when the schema is already
//! registered under the subject, and refuses (409) a schema its compatibility setting rejects,
//! which stops the worker at start-up with the registry's reason.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::avro::{Codec, CodecError, RecordType};
use crate::http::{Auth, Endpoint, HttpError, TlsSettings};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Where the registry is and how to talk to it (`--schema-registry` and friends).
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// `http(s)://host:port[/base]`.
    pub url: String,
    /// Basic auth (`--schema-registry-user-info`), as Confluent's clients configure it.
    pub auth: Auth,
    /// A private CA to trust (`--ca-file`).
    pub tls: TlsSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Connecting, TLS or reading failed (retryable when the cause may pass).
    #[error("schema registry {0}")]
    Http(HttpError),
    /// The registry answered with an error: retrying will not help (unless 5xx).
    #[error("schema registry {url} refused {what}: {status} {message}")]
    Refused {
        url: String,
        what: String,
        status: u16,
        message: String,
    },
}

impl RegistryError {
    pub fn retryable(&self) -> bool {
        match self {
            RegistryError::Http(e) => e.retryable(),
            RegistryError::Refused { status, .. } => *status >= 500,
        }
    }
}

/// A Confluent-compatible schema registry at one base URL.
#[derive(Debug, Clone)]
pub struct Registry {
    endpoint: Endpoint,
}

#[derive(Serialize)]
struct RegisterRequest<'a> {
    schema: &'a str,
}

#[derive(Deserialize)]
struct IdAnswer {
    id: u32,
}

#[derive(Deserialize)]
struct SchemaAnswer {
    schema: String,
}

#[derive(Deserialize)]
struct ErrorAnswer {
    message: Option<String>,
}

impl Registry {
    pub fn new(cfg: &RegistryConfig) -> Result<Registry, String> {
        Ok(Registry {
            endpoint: Endpoint::new(
                &cfg.url,
                "--schema-registry",
                &cfg.tls,
                cfg.auth.clone(),
                TIMEOUT,
            )?,
        })
    }

    /// The subject a topic's record values are registered under.
    pub fn value_subject(topic: &str) -> String {
        format!("{topic}-value")
    }

    async fn call<A: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &[u8],
        what: &str,
    ) -> Result<A, RegistryError> {
        let refused = |status: u16, message: String| RegistryError::Refused {
            url: self.endpoint.display(),
            what: what.to_string(),
            status,
            message,
        };
        let answer = match self.endpoint.send(method, path, CONTENT_TYPE, body).await {
            Ok(a) => a,
            Err(HttpError::Status { status, body, .. })
            | Err(HttpError::Unauthorized { status, body, .. }) => {
                let message = serde_json::from_str::<ErrorAnswer>(&body)
                    .ok()
                    .and_then(|e| e.message)
                    .unwrap_or(body);
                let message = if status == 401 || status == 403 {
                    format!("{message} (check --schema-registry-user-info)")
                } else {
                    message
                };
                return Err(refused(status, message));
            }
            Err(e) => return Err(RegistryError::Http(e)),
        };
        serde_json::from_slice(&answer.body).map_err(|e| {
            refused(
                answer.status,
                format!(
                    "unexpected answer ({e}): {}",
                    String::from_utf8_lossy(&answer.body)
                ),
            )
        })
    }

    /// Registers `schema` under `subject` (or finds it registered) and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let body = serde_json::to_vec(&RegisterRequest { schema }).expect("serialises");
        let a: IdAnswer = self
            .call(
                reqwest::Method::POST,
                &format!("/subjects/{subject}/versions"),
                &body,
                &format!("the schema for subject {subject}"),
            )
            .await?;
        Ok(a.id)
    }

    /// The schema (JSON text) registered with `id`.
    pub async fn schema(&self, id: u32) -> Result<String, RegistryError> {
        let a: SchemaAnswer = self
            .call(
                reqwest::Method::GET,
                &format!("/schemas/ids/{id}"),
                b"",
                &format!("schema id {id}"),
            )
            .await?;
        Ok(a.schema)
    }

    /// [`Registry::register`], retrying an unreachable registry with jittered backoff for about
    /// `patience` (a worker and its registry often start together).
    pub async fn register_patiently(
        &self,
        subject: &str,
        schema: &str,
        patience: Duration,
    ) -> Result<u32, RegistryError> {
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .with_total_delay(Some(patience))
            .without_max_times();
        (|| self.register(subject, schema))
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(RegistryError::retryable)
            .notify(
                |e, _| tracing::warn!(subject, error = %e, "schema registration failed, retrying"),
            )
            .await
    }

    /// A codec writing `rt` in the Confluent wire format, its schema registered for `topic`.
    pub async fn codec_for<T: Serialize + DeserializeOwned>(
        &self,
        rt: &RecordType,
        topic: &str,
        patience: Duration,
    ) -> Result<Codec<T>, RegistryError> {
        let subject = Registry::value_subject(topic);
        let id = self
            .register_patiently(&subject, rt.current, patience)
            .await?;
        tracing::info!(subject = %subject, id, record = rt.name, "schema registered");
        Ok(Codec::registered(rt, id))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("record written with schema registry id {0}: pass --schema-registry to read it")]
    NeedsRegistry(u32),
}

/// Reads records of one type in either framing, looking writer schemas up in the registry
/// (once per id) when one is configured.
pub struct RecordReader<T> {
    codec: Codec<T>,
    registry: Option<Registry>,
}

impl<T: Serialize + DeserializeOwned> RecordReader<T> {
    pub fn new(rt: &RecordType, registry: Option<Registry>) -> RecordReader<T> {
        RecordReader {
            codec: Codec::new(rt),
            registry,
        }
    }

    /// A reader using the configured registry, if any (`--schema-registry`).
    pub fn with_registry(
        rt: &RecordType,
        cfg: Option<&RegistryConfig>,
    ) -> Result<RecordReader<T>, String> {
        Ok(RecordReader::new(rt, cfg.map(Registry::new).transpose()?))
    }

    pub async fn decode(&mut self, bytes: &[u8]) -> Result<T, ReadError> {
        match self.codec.decode(bytes) {
            Err(CodecError::UnknownRegistryId(id)) => {
                let registry = self.registry.as_ref().ok_or(ReadError::NeedsRegistry(id))?;
                let schema = registry.schema(id).await?;
                self.codec.learn(id, &schema)?;
                Ok(self.codec.decode(bytes)?)
            }
            other => Ok(other?),
        }
    }
}
