//! `vigil console`: its arguments, and the `hash-password` helper. The server is
//! [`crate::console`].

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};

use super::RegistryArgs;
use crate::kafka::KafkaArgs;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ConsoleArgs {
    #[command(subcommand)]
    pub action: Option<ConsoleAction>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum ConsoleAction {
    /// Read a password from standard input (one line; prompted on a terminal) and print its
    /// argon2id PHC string, for `password_hash` in the users file.
    HashPassword,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Topic of the episode events.
    #[arg(
        long,
        env = "VIGIL_VIOLATIONS_TOPIC",
        default_value = "vigil.violations"
    )]
    pub topic: String,
    /// Topic of the acknowledgements (written by the console, read by every replica and by
    /// `vigil alerts --acks-topic`).
    #[arg(long, env = "VIGIL_ACKS_TOPIC", default_value = "vigil.acks")]
    pub acks_topic: String,
    /// Topic of the observations, for the scorecard's compliance shares; empty: none.
    #[arg(
        long,
        env = "VIGIL_OBSERVATIONS_TOPIC",
        default_value = "vigil.observations"
    )]
    pub observations_topic: String,
    /// The site gateways' camera-status topic (their --status-topic): the page shows which
    /// cameras are offline. Empty: none.
    #[arg(
        long,
        env = "VIGIL_CAMERA_STATUS_TOPIC",
        default_value = "vigil.camera-status"
    )]
    pub camera_status_topic: String,
    /// Address to serve the page on.
    #[arg(long, env = "VIGIL_CONSOLE_ADDR", default_value = "127.0.0.1:8080")]
    pub addr: SocketAddr,
    /// The users file (TOML: `[[user]]` name, password_hash, role, sites). Required unless
    /// --addr is a loopback address.
    #[arg(long, env = "VIGIL_CONSOLE_USERS", value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// The store the workers write evidence pictures to (their --evidence-url).
    #[arg(long, env = "VIGIL_EVIDENCE_URL")]
    pub evidence_url: Option<String>,
    /// Seconds between the page's reloads.
    #[arg(long, default_value_t = 5)]
    pub refresh_secs: u32,
    /// An open episode nobody has acknowledged this many seconds after it opened (event time)
    /// is marked overdue.
    #[arg(long, default_value_t = 600)]
    pub ack_overdue_secs: u64,
    /// SQLite file of the read model (rebuilt from the topics at each start); default: in
    /// memory.
    #[arg(long, env = "VIGIL_CONSOLE_DB", value_name = "FILE")]
    pub db: Option<PathBuf>,
    /// PEM certificate chain to serve HTTPS with (with --tls-key).
    #[arg(long, requires = "tls_key", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Mark the session cookie `Secure` although this process serves plain HTTP: a
    /// TLS-terminating proxy is in front.
    #[arg(long)]
    pub secure_cookies: bool,
    /// Failed sign-ins per user name and per client address before further tries are answered
    /// 429, for --login-window-secs.
    #[arg(long, default_value_t = 5)]
    pub login_max_failures: u32,
    /// How long failed sign-ins are counted, and a lock-out lasts.
    #[arg(long, default_value_t = 900)]
    pub login_window_secs: u64,
    /// Addresses of reverse proxies that authenticate users, comma-separated: their
    /// --proxy-user-header and --proxy-groups-header are believed (from nowhere else).
    #[arg(long, env = "VIGIL_CONSOLE_TRUSTED_PROXY", value_delimiter = ',')]
    pub trusted_proxy: Vec<std::net::IpAddr>,
    /// The header naming the user, set by the trusted proxy.
    #[arg(long, default_value = "X-Forwarded-User")]
    pub proxy_user_header: String,
    /// The address browsers reach the console at through a proxy that rewrites `Host`
    /// (https://console.example.com): state changes from it pass the origin check.
    /// Repeatable.
    #[arg(long, value_name = "URL")]
    pub public_url: Vec<url::Url>,
    /// The header listing the user's groups (comma-separated: vigil-admin, vigil-district,
    /// vigil-site:<site>), set by the trusted proxy.
    #[arg(long, default_value = "X-Forwarded-Groups")]
    pub proxy_groups_header: String,
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Runs the console (or the helper); the error carries the exit code (2: bad configuration).
pub async fn run(
    a: ConsoleArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), (u8, anyhow::Error)> {
    if let Some(ConsoleAction::HashPassword) = a.action {
        return hash_password().map_err(|e| (2, e));
    }
    let a = a.serve;
    if let Some(path) = &a.users {
        // A bad users file is a configuration error, named before anything else starts.
        crate::console::users::Users::load(path).map_err(|e| (2, anyhow::anyhow!(e)))?;
    }
    let cfg = crate::console::ConsoleConfig {
        schema_registry: a.registry.registry().map_err(|e| (2, anyhow::anyhow!(e)))?,
        kafka: a.kafka,
        topic: a.topic,
        acks_topic: a.acks_topic,
        observations_topic: Some(a.observations_topic).filter(|t| !t.is_empty()),
        camera_status_topic: Some(a.camera_status_topic).filter(|t| !t.is_empty()),
        addr: a.addr,
        evidence_url: a.evidence_url,
        refresh_secs: a.refresh_secs,
        users: a.users,
        ack_overdue: Duration::from_secs(a.ack_overdue_secs),
        db: a.db,
        tls: a.tls_cert.zip(a.tls_key),
        secure_cookies: a.secure_cookies,
        login_max_failures: a.login_max_failures,
        login_window: Duration::from_secs(a.login_window_secs),
        proxy: crate::console::proxy::ProxyConfig {
            trusted: a.trusted_proxy,
            user_header: a.proxy_user_header.to_ascii_lowercase(),
            groups_header: a.proxy_groups_header.to_ascii_lowercase(),
        },
        public_origins: a
            .public_url
            .iter()
            .map(|u| u.origin().ascii_serialization())
            .collect(),
    };
    for h in [&cfg.proxy.user_header, &cfg.proxy.groups_header] {
        axum::http::HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
            (
                2,
                anyhow::anyhow!("--proxy-*-header {h:?} is not a header name"),
            )
        })?;
    }
    if cfg.users.is_none() && cfg.proxy.trusted.is_empty() && !cfg.addr.ip().is_loopback() {
        return Err((
            2,
            anyhow::anyhow!(
                "--users or --trusted-proxy is required to serve on {} (only a loopback address may go without sign-in)",
                cfg.addr
            ),
        ));
    }
    crate::console::run(cfg, shutdown).await.map_err(|e| (1, e))
}

fn hash_password() -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password (shown as typed; pipe it in to keep it off the screen): ");
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let password = line.trim_end_matches(['\r', '\n']);
    anyhow::ensure!(!password.is_empty(), "an empty password");
    let hash = crate::console::users::hash_password(password).map_err(|e| anyhow::anyhow!(e))?;
    println!("password_hash = \"{hash}\"");
    Ok(())
}
