//! The Confluent Schema Registry REST API, as far as vigil needs it: registering a record type's
//! current schema under `<topic>-value` (the topic name strategy) at start-up, and fetching a
//! writer schema by id when a record names one this process has not seen.
//!
//! Registration is idempotent: the registry answers the existing id when the schema is already
//! registered under the subject, and refuses (409) a schema its compatibility setting rejects,
//! which stops the worker at start-up with the registry's reason.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::avro::{Codec, CodecError, RecordType};
use super::http::{self, Url};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Connecting or reading failed: worth retrying.
    #[error("schema registry {url} unreachable: {source}")]
    Unreachable { url: String, source: std::io::Error },
    /// The registry answered with an error: retrying will not help.
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
            RegistryError::Unreachable { .. } => true,
            RegistryError::Refused { status, .. } => *status >= 500,
        }
    }
}

/// A Confluent-compatible schema registry at one base URL.
#[derive(Debug, Clone)]
pub struct Registry {
    url: Url,
    /// The URL as given, for messages.
    display: String,
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
    /// `url`: `http://host:port[/base]`.
    pub fn new(url: &str) -> Result<Registry, String> {
        Ok(Registry {
            url: Url::parse(url, "--schema-registry")?,
            display: url.to_string(),
        })
    }

    /// The subject a topic's record values are registered under.
    pub fn value_subject(topic: &str) -> String {
        format!("{topic}-value")
    }

    async fn call<A: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        what: &str,
    ) -> Result<A, RegistryError> {
        let r = http::request(
            method,
            &self.url,
            &self.url.path_with(path),
            CONTENT_TYPE,
            body,
            TIMEOUT,
        )
        .await
        .map_err(|source| RegistryError::Unreachable {
            url: self.display.clone(),
            source,
        })?;
        let refused = |message: String| RegistryError::Refused {
            url: self.display.clone(),
            what: what.to_string(),
            status: r.status,
            message,
        };
        if !r.ok() {
            let message = serde_json::from_slice::<ErrorAnswer>(&r.body)
                .ok()
                .and_then(|e| e.message)
                .unwrap_or_else(|| String::from_utf8_lossy(&r.body).into_owned());
            return Err(refused(message));
        }
        serde_json::from_slice(&r.body).map_err(|e| {
            refused(format!(
                "unexpected answer ({e}): {}",
                String::from_utf8_lossy(&r.body)
            ))
        })
    }

    /// Registers `schema` under `subject` (or finds it registered) and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let body = serde_json::to_vec(&RegisterRequest { schema }).expect("serialises");
        let a: IdAnswer = self
            .call(
                "POST",
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
                "GET",
                &format!("/schemas/ids/{id}"),
                b"",
                &format!("schema id {id}"),
            )
            .await?;
        Ok(a.schema)
    }

    /// [`Registry::register`], retrying an unreachable registry with backoff for about
    /// `patience` (a worker and its registry often start together).
    pub async fn register_patiently(
        &self,
        subject: &str,
        schema: &str,
        patience: Duration,
    ) -> Result<u32, RegistryError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut delay = Duration::from_millis(200);
        loop {
            match self.register(subject, schema).await {
                Err(e) if e.retryable() && tokio::time::Instant::now() + delay < deadline => {
                    tracing::warn!(subject, error = %e, "schema registration failed, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
                other => return other,
            }
        }
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

    /// A reader using the registry at `url`, if any (`--schema-registry`).
    pub fn with_registry_url(
        rt: &RecordType,
        url: Option<&str>,
    ) -> Result<RecordReader<T>, String> {
        Ok(RecordReader::new(rt, url.map(Registry::new).transpose()?))
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
