//! `vigil console`: its arguments. The server is [`crate::console`].

use std::net::SocketAddr;

use clap::Args;

use super::RegistryArgs;
use crate::kafka::KafkaArgs;

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic of the episode events.
    #[arg(
        long,
        env = "VIGIL_VIOLATIONS_TOPIC",
        default_value = "vigil.violations"
    )]
    pub topic: String,
    /// Address to serve the page on.
    #[arg(long, env = "VIGIL_CONSOLE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The store the workers write evidence pictures to (their --evidence-url).
    #[arg(long, env = "VIGIL_EVIDENCE_URL")]
    pub evidence_url: Option<String>,
    /// Seconds between the page's reloads.
    #[arg(long, default_value_t = 5)]
    pub refresh_secs: u32,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Runs the console; the error carries the exit code (2: bad configuration).
pub async fn run(
    a: ConsoleArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), (u8, anyhow::Error)> {
    let cfg = crate::console::ConsoleConfig {
        schema_registry: a.registry.registry().map_err(|e| (2, anyhow::anyhow!(e)))?,
        kafka: a.kafka,
        topic: a.topic,
        addr: a.addr,
        evidence_url: a.evidence_url,
        refresh_secs: a.refresh_secs,
    };
    crate::console::run(cfg, shutdown).await.map_err(|e| (1, e))
}
