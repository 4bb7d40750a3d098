//! `vigil ingest`: its arguments, and the `hash-token` helper. The server is [`crate::ingest`].

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::contract::{Limits, DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_PIXELS};
use crate::ingest::{IngestConfig, Policy};
use crate::kafka::KafkaArgs;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct IngestArgs {
    #[command(subcommand)]
    pub action: Option<IngestAction>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum IngestAction {
    /// Make a new random token: prints the token (give it to the camera or phone, once) and
    /// its tokens-file line (which holds only the token's sha256).
    HashToken {
        /// Sites the token may publish for, comma-separated, or `*` for all.
        #[arg(long, default_value = "*")]
        sites: String,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic the frames are published to.
    #[arg(long, env = "VIGIL_FRAMES_TOPIC", default_value = "vigil.frames")]
    pub frames_topic: String,
    /// Address to listen on.
    #[arg(long, env = "VIGIL_INGEST_ADDR", default_value = "127.0.0.1:8443")]
    pub addr: SocketAddr,
    /// The tokens file: `<sha256 hex> <site>[,<site>…]` per line (`*`: every site).
    #[arg(long, env = "VIGIL_INGEST_TOKENS")]
    pub tokens: Option<PathBuf>,
    /// Certificate chain (PEM) to serve HTTPS directly; needs --tls-key. Without both, plain
    /// HTTP (put a TLS proxy in front).
    #[arg(long, env = "VIGIL_INGEST_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "VIGIL_INGEST_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest accepted image, in bytes (the frame contract's limit).
    #[arg(long, env = "VIGIL_MAX_FRAME_BYTES", default_value_t = DEFAULT_MAX_FRAME_BYTES)]
    pub max_frame_bytes: usize,
    /// Largest width × height accepted.
    #[arg(long, env = "VIGIL_MAX_PIXELS", default_value_t = DEFAULT_MAX_PIXELS)]
    pub max_pixels: u64,
    /// Largest lead, in seconds, of `captured_at` over this server's clock.
    #[arg(long, default_value_t = 300.0)]
    pub max_future_secs: f64,
    /// Uploads per second allowed per camera (a burst of twice as many is let through).
    #[arg(long, default_value_t = 5)]
    pub camera_rate: u32,
    /// Uploads per second allowed per token (a site's cameras usually share one).
    #[arg(long, default_value_t = 500)]
    pub token_rate: u32,
    /// Seconds a client has to send a request's headers and body.
    #[arg(long, default_value_t = 15.0)]
    pub read_timeout_secs: f64,
    /// Seconds to wait for the broker's acknowledgement before answering 503.
    #[arg(long, default_value_t = 10.0)]
    pub ack_timeout_secs: f64,
    /// Uploads handled at once; more are answered 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_uploads: usize,
    /// Address for Prometheus `/metrics`, `/healthz` and `/readyz` (default: none).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
}

fn positive_secs(name: &str, v: f64) -> Result<Duration, String> {
    if v.is_nan() || v <= 0.0 || v.is_infinite() {
        return Err(format!(
            "{name} must be a positive number of seconds, got {v}"
        ));
    }
    Ok(Duration::from_secs_f64(v))
}

fn rate(name: &str, v: u32) -> Result<(NonZeroU32, NonZeroU32), String> {
    let r = NonZeroU32::new(v).ok_or_else(|| format!("{name} must be at least 1"))?;
    Ok((r, r.saturating_mul(NonZeroU32::MIN.saturating_add(1))))
}

impl ServeArgs {
    /// The server's configuration, naming the option at fault.
    pub fn into_config(self) -> Result<IngestConfig, String> {
        let tokens = self
            .tokens
            .ok_or("--tokens / VIGIL_INGEST_TOKENS is required: the file of token hashes and sites (`vigil ingest hash-token` makes a line)")?;
        if self.max_frame_bytes == 0 {
            return Err("--max-frame-bytes must be positive".into());
        }
        let max_future = if self.max_future_secs >= 0.0 && self.max_future_secs.is_finite() {
            Duration::from_secs_f64(self.max_future_secs)
        } else {
            return Err(format!(
                "--max-future-secs must not be negative, got {}",
                self.max_future_secs
            ));
        };
        Ok(IngestConfig {
            kafka: self.kafka,
            topic: self.frames_topic,
            addr: self.addr,
            tokens,
            tls: self.tls_cert.zip(self.tls_key),
            policy: Policy {
                limits: Limits {
                    max_frame_bytes: self.max_frame_bytes,
                    max_pixels: self.max_pixels,
                    max_future_ms: max_future.as_millis() as i64,
                    max_age_ms: None,
                },
                camera_rate: rate("--camera-rate", self.camera_rate)?,
                token_rate: rate("--token-rate", self.token_rate)?,
                read_timeout: positive_secs("--read-timeout-secs", self.read_timeout_secs)?,
                ack_timeout: positive_secs("--ack-timeout-secs", self.ack_timeout_secs)?,
                max_uploads: self.max_uploads.max(1),
            },
            metrics_addr: self.metrics_addr,
        })
    }
}

/// `vigil ingest hash-token`: prints the token and its line.
pub fn hash_token(sites: &str) -> anyhow::Result<()> {
    let (token, line) = crate::ingest::tokens::new_token(sites).map_err(anyhow::Error::msg)?;
    println!("token (give it to the uploader; it is not stored anywhere): {token}");
    println!("tokens-file line: {line}");
    Ok(())
}
