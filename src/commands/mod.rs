//! The command line: argument parsing (clap, with environment variables and defaults) and
//! dispatch to the subcommands: [`gateway`], `worker` (the [`pipeline`](crate::pipeline)),
//! [`ingest`], `topics`, [`tail`] and [`alerts`]. `main.rs` only parses and calls [`run`].

pub mod alerts;
pub mod console;
pub mod gateway;
pub mod ingest;
pub mod tail;
pub mod topics;
mod worker;
pub use worker::WorkerArgs;

use topics::TopicsArgs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::contract::DEFAULT_MAX_FRAME_BYTES;
use crate::kafka::KafkaArgs;

#[derive(Debug, Parser)]
#[command(
    name = "vigil",
    version,
    about = "Camera frames in from Kafka, compliance observations out"
)]
pub struct Cli {
    /// Log line format.
    #[arg(long, global = true, env = "VIGIL_LOG_FORMAT", default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

// The worker's arguments are the largest variant; the command line is parsed once.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish JPEG frames: a site's cameras (--cameras-file), or simulated cameras from images,
    /// a video file or a stream (--source, for load tests).
    Gateway(GatewayArgs),
    /// Consume frames, run the model, publish observations (a consumer-group member).
    Worker(WorkerArgs),
    /// Accept JPEG uploads over HTTP(S) from cameras and phones and publish them as frames.
    Ingest(ingest::IngestArgs),
    /// Serve a page of open violations with their evidence pictures (read-only).
    Console(console::ConsoleArgs),
    /// Create vigil's topics (idempotent).
    Topics(TopicsArgs),
    /// Print the records of a topic (observations, dead letters) in readable form.
    Tail(TailArgs),
    /// Follow violation episode events: print them, optionally POST them to a webhook,
    /// each event once (deduplicated by event_id).
    Alerts(AlertsArgs),
}

#[derive(Debug, Args)]
pub struct AlertsArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic of the episode events.
    #[arg(
        long,
        env = "VIGIL_VIOLATIONS_TOPIC",
        default_value = "vigil.violations"
    )]
    pub topic: String,
    /// Consumer group (alerts resume where they stopped).
    #[arg(long, default_value = "vigil-alerts")]
    pub group: String,
    /// POST each event as JSON to this http:// or https:// URL (https verified against the
    /// system's roots and --ca-file).
    #[arg(long, env = "VIGIL_WEBHOOK")]
    pub webhook: Option<String>,
    /// File holding the webhook's token (first line), sent as `Authorization: Bearer …` (or in
    /// --webhook-auth-header). The environment variable VIGIL_WEBHOOK_TOKEN takes precedence.
    #[arg(long, value_name = "FILE")]
    pub webhook_token_file: Option<PathBuf>,
    /// Send the token in this header instead of `Authorization: Bearer` (e.g. X-Api-Key).
    #[arg(long, value_name = "NAME")]
    pub webhook_auth_header: Option<String>,
    /// Attempts per webhook delivery (jittered backoff 0.5 s doubling to 30 s); TLS failures
    /// and 4xx answers are not retried.
    #[arg(long, default_value_t = 8)]
    pub max_attempts: u32,
    /// Print events as JSON lines.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds without an event.
    #[arg(long)]
    pub idle_secs: Option<f64>,
    /// Also follow this acknowledgements topic (`vigil console` writes it): print each
    /// acknowledgement once (deduplicated by episode) and POST it to the webhook.
    #[arg(long, env = "VIGIL_ACKS_TOPIC")]
    pub acks_topic: Option<String>,
    /// With --acks-topic: notify once more about an episode still open and unacknowledged this
    /// many seconds after it opened (event time), as the console marks it overdue.
    #[arg(long, requires = "acks_topic")]
    pub renotify_overdue_secs: Option<u64>,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// The schema registry, shared by the subcommands that write or read Avro.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// Confluent-compatible schema registry (http://host:port). With it, Avro records use the
    /// Confluent wire format and the worker registers its schemas under `<topic>-value`; without
    /// it, Avro single-object encoding. Readers need it to read records written with it.
    #[arg(long, env = "VIGIL_SCHEMA_REGISTRY")]
    pub schema_registry: Option<String>,
    /// File holding the registry's basic-auth `USER:PASSWORD` (first line), as Confluent's
    /// `basic.auth.user.info`. The environment variable VIGIL_SCHEMA_REGISTRY_USER_INFO takes
    /// precedence.
    #[arg(long, value_name = "FILE")]
    pub schema_registry_user_info_file: Option<PathBuf>,
    /// PEM file of CA certificates trusted for https:// (the schema registry and the webhook)
    /// besides the system's roots.
    #[arg(long, env = "VIGIL_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
}

impl RegistryArgs {
    /// The TLS settings for outgoing HTTPS.
    pub fn tls(&self) -> crate::http::TlsSettings {
        crate::http::TlsSettings {
            ca_file: self.ca_file.clone(),
        }
    }

    /// The registry's settings, checked (URL, CA file, credentials).
    pub fn registry(&self) -> Result<Option<crate::codec::registry::RegistryConfig>, String> {
        let Some(url) = &self.schema_registry else {
            return Ok(None);
        };
        let user_info = crate::http::Secret::from_env_or_file(
            "VIGIL_SCHEMA_REGISTRY_USER_INFO",
            self.schema_registry_user_info_file.as_deref(),
            "--schema-registry-user-info-file",
        )?;
        let auth = match user_info {
            Some(u) => crate::http::Auth::basic(
                &u,
                "VIGIL_SCHEMA_REGISTRY_USER_INFO / --schema-registry-user-info-file",
            )?,
            None => crate::http::Auth::None,
        };
        let cfg = crate::codec::registry::RegistryConfig {
            url: url.clone(),
            auth,
            tls: self.tls(),
        };
        // Checks the URL and the CA file now, naming the option.
        crate::codec::registry::Registry::new(&cfg)?;
        Ok(Some(cfg))
    }
}

/// Topic names, shared by the subcommands.
#[derive(Debug, Clone, Args)]
pub struct TopicArgs {
    /// Topic the gateways publish frames to.
    #[arg(long, env = "VIGIL_FRAMES_TOPIC", default_value = "vigil.frames")]
    pub frames_topic: String,
    /// Topic observations are published to.
    #[arg(
        long,
        env = "VIGIL_OBSERVATIONS_TOPIC",
        default_value = "vigil.observations"
    )]
    pub observations_topic: String,
    /// Dead-letter topic for frames that cannot be handled.
    #[arg(long, env = "VIGIL_DLQ_TOPIC", default_value = "vigil.dlq")]
    pub dlq_topic: String,
    /// Topic violation episode events (Avro) are published to.
    #[arg(
        long,
        env = "VIGIL_VIOLATIONS_TOPIC",
        default_value = "vigil.violations"
    )]
    pub violations_topic: String,
    /// Topic `vigil console` publishes acknowledgements of episodes to (Avro).
    #[arg(long, env = "VIGIL_ACKS_TOPIC", default_value = "vigil.acks")]
    pub acks_topic: String,
    /// Compacted topic holding episode state, co-partitioned with the frames topic.
    #[arg(long, env = "VIGIL_STATE_TOPIC", default_value = "vigil.state")]
    pub state_topic: String,
}

#[derive(Debug, Args)]
pub struct GatewayArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    #[command(flatten)]
    pub topics: TopicArgs,
    /// The site's camera file (TOML: `site`, `[[camera]]` with `id`, `zone`, `url`, `fps`…): runs the site
    /// gateway, with reconnects, camera health, caps and the on-disk buffer.
    #[arg(long, conflicts_with = "source", value_name = "FILE")]
    pub cameras_file: Option<PathBuf>,
    /// With --cameras-file: the store-and-forward buffer's folder (kept across restarts).
    #[arg(long, env = "VIGIL_GATEWAY_BUFFER_DIR", requires = "cameras_file")]
    pub buffer_dir: Option<PathBuf>,
    /// With --cameras-file: the buffer's size limit in bytes; past it the oldest frames are dropped.
    #[arg(long, default_value_t = 1 << 30)]
    pub buffer_max_bytes: u64,
    /// With --cameras-file: frames older than this are dropped from the buffer.
    #[arg(long, default_value_t = 86_400.0)]
    pub buffer_max_age_secs: f64,
    /// With --cameras-file: the topic camera-status records (JSON) go to.
    #[arg(
        long,
        env = "VIGIL_CAMERA_STATUS_TOPIC",
        default_value = "vigil.camera-status"
    )]
    pub status_topic: String,
    /// Simulator: directory of images, video file, or stream URL (rtsp://…).
    #[arg(long, required_unless_present = "cameras_file")]
    pub source: Option<String>,
    /// Simulator: frames per second, per camera (a camera file gives each camera's `fps`).
    #[arg(long, conflicts_with = "cameras_file", default_value_t = 2.0)]
    pub fps: f64,
    /// JPEG quality of published frames (1–100).
    #[arg(long, conflicts_with = "cameras_file", default_value_t = 85)]
    pub quality: i32,
    /// Number of simulated cameras.
    #[arg(long, conflicts_with = "cameras_file", default_value_t = 1)]
    pub cameras: usize,
    /// Number of sites the cameras are spread over.
    #[arg(long, conflicts_with = "cameras_file", default_value_t = 1)]
    pub sites: usize,
    /// Zones given to cameras round-robin, comma-separated (e.g. kitchen,dining).
    #[arg(long, value_delimiter = ',')]
    pub zones: Vec<String>,
    /// Start the source again when it ends.
    #[arg(long = "loop")]
    pub repeat: bool,
    /// With a directory: each camera keeps showing its own image (a still scene, as a kitchen
    /// camera mostly sees) instead of stepping through the images.
    #[arg(long)]
    pub still: bool,
    /// Stop after this many frames per camera.
    #[arg(long, conflicts_with = "cameras_file")]
    pub frames: Option<u64>,
    /// Simulator: stamp `captured_at` as footage recorded at this many frames per second per
    /// camera, ending when the gateway starts (a backlog spaced as in real time, so that rules
    /// with their own rate see a real camera's cadence), instead of the moment each frame is
    /// published. Needs --frames.
    #[arg(long, conflicts_with = "cameras_file", requires = "frames")]
    pub footage_fps: Option<f64>,
    /// Resize frames to this width (keeping aspect ratio) before encoding.
    #[arg(long, conflicts_with = "cameras_file")]
    pub width: Option<u32>,
    /// Largest frame published, in bytes; larger frames are counted and skipped.
    #[arg(long, env = "VIGIL_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Prefix of the simulated camera ids.
    #[arg(long, default_value = "cam-")]
    pub camera_prefix: String,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5.0)]
    pub progress_secs: f64,
    /// Address for the gateway's Prometheus `/metrics` endpoint (default: none).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic to read.
    #[arg(long, default_value = "vigil.observations")]
    pub topic: String,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this many seconds without a record.
    #[arg(long)]
    pub idle_secs: Option<f64>,
    /// Print records as JSON lines instead of summaries.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

pub(crate) fn secs(name: &str, v: f64) -> Result<Duration, String> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| format!("{name} must be a non-negative number of seconds, got {v}"))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown requested");
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,ort=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

/// Runs the parsed command; the process exit code says how it went (0 ok, 1 failed, 2 bad config).
pub fn run(cli: Cli) -> ExitCode {
    init_logging(cli.log_format);
    // One TLS crypto provider for the whole process (rustls serves ingest, reqwest calls the
    // webhook, the registry and S3).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result: Result<(), (u8, anyhow::Error)> = rt.block_on(async move {
        match cli.command {
            Command::Worker(args) => {
                let cfg = args.into_config().map_err(|e| (2, anyhow::anyhow!(e)))?;
                crate::pipeline::run(cfg, shutdown_signal())
                    .await
                    .map_err(|e| (1, e))
            }
            Command::Gateway(a) => gateway::run_args(a, shutdown_signal()).await,
            Command::Topics(args) => topics::run(args).await.map_err(|e| (1, e)),
            Command::Console(a) => console::run(a, shutdown_signal()).await,
            Command::Ingest(a) => match a.action {
                Some(ingest::IngestAction::HashToken { sites }) => {
                    ingest::hash_token(&sites).map_err(|e| (2, e))
                }
                None => {
                    let cfg = a.serve.into_config().map_err(|e| (2, anyhow::anyhow!(e)))?;
                    crate::ingest::run(cfg, shutdown_signal())
                        .await
                        .map_err(|e| (1, e))
                }
            },
            Command::Alerts(a) => {
                let webhook = a.webhook().map_err(|e| (2, anyhow::anyhow!(e)))?;
                let cfg = alerts::AlertsConfig {
                    kafka: a.kafka,
                    topic: a.topic,
                    group: a.group,
                    webhook,
                    max_attempts: a.max_attempts,
                    json: a.json,
                    idle_timeout: a
                        .idle_secs
                        .map(|s| secs("--idle-secs", s))
                        .transpose()
                        .map_err(|e| (2, anyhow::anyhow!(e)))?,
                    remember: 100_000,
                    acks_topic: a.acks_topic,
                    renotify_overdue: a.renotify_overdue_secs.map(Duration::from_secs),
                    schema_registry: a.registry.registry().map_err(|e| (2, anyhow::anyhow!(e)))?,
                };
                alerts::run(cfg, shutdown_signal())
                    .await
                    .map_err(|e| (1, e))
            }
            Command::Tail(a) => {
                let cfg = tail::TailConfig {
                    kafka: a.kafka,
                    topic: a.topic,
                    count: a.count,
                    idle_timeout: a
                        .idle_secs
                        .map(|s| secs("--idle-secs", s))
                        .transpose()
                        .map_err(|e| (2, anyhow::anyhow!(e)))?,
                    json: a.json,
                    schema_registry: a.registry.registry().map_err(|e| (2, anyhow::anyhow!(e)))?,
                };
                tail::run(cfg, shutdown_signal()).await.map_err(|e| (1, e))
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, e)) => {
            tracing::error!(error = format!("{e:#}"), "vigil failed");
            eprintln!("vigil: error: {e:#}");
            ExitCode::from(code)
        }
    }
}
