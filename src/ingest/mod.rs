//! `vigil ingest`: an HTTP(S) endpoint for cameras, NVRs and phones that cannot speak Kafka.
//! Each upload becomes one frame on the frames topic, exactly as a gateway would publish it
//! (key = camera, the contract's headers and size limit), and is answered `202 Accepted` with
//! its topic, partition and offset once the broker has acknowledged it.
//!
//! [`tokens`] holds the credentials (hashes only), [`upload`] the pure rules of a request,
//! [`server`] the axum handlers. TLS is served directly (rustls) when `--tls-cert` and
//! `--tls-key` are given, or left to a proxy in front.

pub mod server;
pub mod tokens;
pub mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};

use crate::kafka::{self, KafkaArgs};
use crate::telemetry::{self, IngestMetrics, Phase, Readiness};
pub use server::Policy;
pub use tokens::Tokens;

/// Everything `vigil ingest` needs.
#[derive(Debug, Clone)]
pub struct IngestConfig {
    pub kafka: KafkaArgs,
    /// The frames topic uploads go to.
    pub topic: String,
    /// Where to listen.
    pub addr: SocketAddr,
    /// The tokens file (hashes and sites).
    pub tokens: PathBuf,
    /// Certificate chain and private key (PEM) to serve HTTPS directly.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub policy: Policy,
    /// Prometheus `/metrics`, `/healthz`, `/readyz` (none: not served).
    pub metrics_addr: Option<SocketAddr>,
}

/// Serves until `shutdown` resolves, then lets uploads in progress finish (up to the ack
/// timeout) and flushes the producer.
pub async fn run(
    cfg: IngestConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let tokens = Tokens::load(&cfg.tokens).map_err(|e| anyhow!(e))?;
    let tls = match &cfg.tls {
        Some((cert, key)) => {
            // rustls needs a crypto provider chosen once per process: ring, as reqwest uses.
            let _ = rustls::crypto::ring::default_provider().install_default();
            Some(
                axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                    .await
                    .with_context(|| {
                        format!(
                            "--tls-cert {} / --tls-key {}: cannot load them",
                            cert.display(),
                            key.display()
                        )
                    })?,
            )
        }
        None => None,
    };
    kafka::check_connection_async(&cfg.kafka, kafka::CONNECT_TIMEOUT).await?;
    let timeout_ms = cfg.policy.ack_timeout.as_millis().max(1000).to_string();
    let max_message = kafka::message_bytes_for(cfg.policy.limits.max_frame_bytes).to_string();
    let producer: rdkafka::producer::FutureProducer = cfg
        .kafka
        .config(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "2"),
            ("message.max.bytes", max_message.as_str()),
            ("message.timeout.ms", timeout_ms.as_str()),
        ])?
        .create()
        .context("cannot create the producer")?;
    {
        let p = producer.clone();
        let topic = cfg.topic.clone();
        tokio::task::spawn_blocking(move || {
            use rdkafka::producer::Producer;
            kafka::partition_counts(p.client(), &[&topic], Duration::from_secs(15))
        })
        .await?
        .map_err(|e| anyhow!(e))?;
    }
    let _ =
        kafka::check_message_sizes(&cfg.kafka, &[&cfg.topic], cfg.policy.limits.max_frame_bytes)
            .await;

    let metrics = Arc::new(IngestMetrics::new());
    let readiness = Readiness::default();
    let endpoint = match cfg.metrics_addr {
        Some(addr) => Some(
            telemetry::serve(metrics.registry.clone(), addr, readiness.clone())
                .await
                .with_context(|| format!("cannot listen on --metrics-addr {addr}"))?,
        ),
        None => None,
    };
    let app = Arc::new(server::App::new(
        cfg.policy.clone(),
        tokens,
        producer.clone(),
        cfg.topic.clone(),
        metrics,
    ));
    let pruner = {
        let app = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                app.prune();
            }
        })
    };
    let handle = axum_server::Handle::new();
    let service = server::router(app).into_make_service();
    let listener = std::net::TcpListener::bind(cfg.addr)
        .with_context(|| format!("cannot listen on --addr {}", cfg.addr))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let read_timeout = cfg.policy.read_timeout;
    let serving = match tls {
        Some(tls) => {
            let mut s = axum_server::from_tcp_rustls(listener, tls)?
                .handle(handle.clone())
                .first_request_timeout(read_timeout);
            s.http_builder()
                .http1()
                .header_read_timeout(Some(read_timeout));
            tokio::spawn(s.serve(service))
        }
        None => {
            let mut s = axum_server::from_tcp(listener)?
                .handle(handle.clone())
                .first_request_timeout(read_timeout);
            s.http_builder()
                .http1()
                .header_read_timeout(Some(read_timeout));
            tokio::spawn(s.serve(service))
        }
    };
    readiness.set(Phase::Ready);
    tracing::info!(addr = %bound, tls = cfg.tls.is_some(), topic = %cfg.topic, tokens = %cfg.tokens.display(), "ingest listening");
    println!("ingest listening on {bound}");

    tokio::pin!(serving);
    let result = tokio::select! {
        _ = shutdown => Ok(()),
        r = &mut serving => r.map_err(anyhow::Error::from).and_then(|r| r.map_err(anyhow::Error::from)),
    };
    readiness.set(Phase::Stopping);
    handle.graceful_shutdown(Some(cfg.policy.ack_timeout + Duration::from_secs(1)));
    let _ = tokio::time::timeout(cfg.policy.ack_timeout + Duration::from_secs(2), serving).await;
    pruner.abort();
    {
        use rdkafka::producer::Producer;
        let p = producer.clone();
        let _ = tokio::task::spawn_blocking(move || {
            p.flush(rdkafka::util::Timeout::After(Duration::from_secs(10)))
        })
        .await;
    }
    if let Some(server) = endpoint {
        server.shutdown().await;
    }
    tracing::info!("ingest stopped");
    result
}
