//! `vigil console`: the page managers use. At start-up it reads the events, acknowledgements,
//! observations and camera-status topics from the beginning: open episodes and each camera's
//! last known state are kept in memory ([`view`]), the rest in an SQLite read model ([`store`])
//! that is rebuilt each time (the topics are the record).
//! It serves, with axum ([`routes`]):
//!
//! - `GET /login`, `POST /login` (form fields `username`, `password`), `POST /logout`: sign-in
//!   against the users file ([`users`]), sessions, CSRF checks and throttling ([`auth`]);
//! - `GET /` the open episodes of the viewer's sites, each with its picture, how long it has been
//!   open, its acknowledgement or a form to give one, and an `overdue` mark when nobody has
//!   acknowledged it for `--ack-overdue-secs`; the site's cameras its gateway reports down
//!   (so that a quiet site reads as "camera offline", not as "no violation"; an episode of an
//!   offline camera says so); it refreshes itself every few seconds;
//! - `POST /episodes/{id}/ack` (fields `csrf`, `note`): publishes an acknowledgement ([`acks`]);
//! - `GET /api/open` the open episodes as JSON; `GET /api/episode/{id}`, `GET /episode/{id}`
//!   one episode with its timeline; `GET /evidence/{id}` its picture, read from the evidence
//!   store (`--evidence-url`, `file://` or `s3://`), so that a browser needs no access to it;
//! - `GET /api/cameras` the viewer's cameras with their latest status (up or down, since when,
//!   why);
//! - `GET /history` past and open episodes, filtered; `GET /scorecard`, `GET /scorecard.csv`
//!   the compliance scorecard ([`scorecard`]);
//! - `GET /healthz`.
//!
//! A viewer sees only their sites: another site's episode, picture or JSON is answered 403.
//! Without `--users` the console has no sign-in and every viewer sees every site, which it
//! allows only on a loopback address. Idle clients cannot exhaust it: it accepts at most
//! [`MAX_CONNECTIONS`] connections at once and closes a connection whose client has not sent a
//! request's headers within [`HEADER_TIMEOUT`] ([`crate::telemetry::server::limited_server`]).

pub mod acks;
pub mod auth;
pub mod pages;
pub mod proxy;
mod reports;
mod routes;
pub mod scorecard;
pub mod store;
pub mod users;
pub mod view;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use axum::Router;
use rdkafka::message::Message;
use rdkafka::producer::FutureProducer;
use tokio::sync::mpsc;

use crate::codec::avro::{Codec, ACKNOWLEDGEMENT, OBSERVATION, VIOLATION_EVENT};
use crate::codec::registry::{RecordReader, Registry, RegistryConfig};
use crate::evidence::EvidenceStore;
use crate::kafka::{self, KafkaArgs};
use crate::telemetry::server::{limited_server, ConnectionLimits, PeerAddr};
use acks::Acknowledgement;
use auth::{Sessions, Throttle};
use store::{Record, Store};
use users::Users;
use view::View;

/// Connections served at once: a browser opens about six to load a page's pictures, so this
/// is some forty managers' browsers; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a client may take to send a request's headers, from when its connection opens or
/// falls idle after a response (a browser reconnects when a kept-alive connection was closed).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long requests in progress may finish once the console is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Records waiting for the read model, at most (the topic readers wait when it is full).
const RECORD_QUEUE: usize = 4096;

/// What `vigil console` needs.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// How to reach the brokers that hold the topics.
    pub kafka: KafkaArgs,
    /// The events topic.
    pub topic: String,
    /// The acknowledgements topic (written and read).
    pub acks_topic: String,
    /// The observations topic (the scorecard's compliance shares); none: no shares.
    pub observations_topic: Option<String>,
    /// The site gateways' camera-status topic (JSON); none: cameras' states are not shown.
    pub camera_status_topic: Option<String>,
    /// Where the page is served (`--addr`).
    pub addr: SocketAddr,
    /// Where the workers keep evidence pictures (to serve them to the page).
    pub evidence_url: Option<String>,
    /// The schema registry the records' writer schemas are read from (and the
    /// acknowledgement schema registered in), when one is used.
    pub schema_registry: Option<RegistryConfig>,
    /// Seconds between the page's reloads.
    pub refresh_secs: u32,
    /// The users file; none: no sign-in (loopback only).
    pub users: Option<PathBuf>,
    /// An episode unacknowledged this long after it opened (event time) is overdue.
    pub ack_overdue: Duration,
    /// The read model's SQLite file; none: in memory.
    pub db: Option<PathBuf>,
    /// PEM certificate chain and key to serve HTTPS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Mark cookies `Secure` although this process serves plain HTTP (a TLS-terminating
    /// proxy is in front).
    pub secure_cookies: bool,
    /// Failed sign-ins per user and per address before further tries are refused (429).
    pub login_max_failures: u32,
    /// How long failed sign-ins are counted, and a refusal lasts.
    pub login_window: Duration,
    /// Identities from a trusted reverse proxy's headers.
    pub proxy: proxy::ProxyConfig,
    /// Origins (`scheme://host[:port]`) the console is reached at through a proxy that
    /// rewrites `Host` (`--public-url`): accepted in `Origin`.
    pub public_origins: Vec<String>,
}

/// Publishes acknowledgements.
struct AckPublisher {
    /// An idempotent producer.
    producer: FutureProducer,
    /// Avro, single-object or registered.
    codec: Codec<Acknowledgement>,
    /// The acknowledgements topic.
    topic: String,
}

pub(crate) struct AppState {
    /// The open episodes, as the events topic has told them so far.
    view: RwLock<View>,
    /// The read model: history, acknowledgements, scorecard facts.
    db: Arc<Mutex<Store>>,
    /// Where the pictures are read from (`--evidence-url`); none: no pictures are served.
    evidence: Option<EvidenceStore>,
    /// Seconds between the page's reloads.
    refresh_secs: u32,
    /// Who may sign in; none: no sign-in, every viewer sees every site.
    users: Option<Arc<Users>>,
    /// The signed-in sessions of this replica.
    sessions: Mutex<Sessions>,
    /// Failed sign-ins by user and by address.
    throttle: Mutex<Throttle>,
    /// The CSRF token of the console without sign-in (one per process).
    open_csrf: String,
    /// Whether cookies are marked `Secure` (served over TLS, or behind a TLS proxy).
    secure: bool,
    /// Where acknowledgements go; none in unit tests.
    acks: Option<AckPublisher>,
    /// When an unacknowledged episode becomes overdue.
    ack_overdue: Duration,
    /// This replica's name in acknowledgements.
    console_id: String,
    /// Identities from a trusted reverse proxy's headers.
    proxy: proxy::ProxyConfig,
    /// CSRF tokens of proxy-authenticated users.
    proxy_tokens: Mutex<proxy::ProxyTokens>,
    /// Origins the console is also reached at (`--public-url`).
    public_origins: Vec<String>,
}

impl AppState {
    /// Whether anyone must be identified (a users file or a trusted proxy): without either the
    /// console is open (loopback only).
    fn signs_in(&self) -> bool {
        self.users.is_some() || !self.proxy.trusted.is_empty()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves until `shutdown` resolves.
pub async fn run(
    cfg: ConsoleConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let users = match &cfg.users {
        Some(path) => {
            let u = Users::load(path).map_err(|e| anyhow!(e))?;
            tracing::info!(users = u.len(), file = %path.display(), "users loaded");
            Some(Arc::new(u))
        }
        None if !cfg.proxy.trusted.is_empty() => {
            tracing::info!(proxies = ?cfg.proxy.trusted, "identities from the trusted proxy only (no --users)");
            None
        }
        None if cfg.addr.ip().is_loopback() => {
            tracing::warn!(addr = %cfg.addr, "console without sign-in (no --users): every viewer sees every site; allowed on loopback only");
            None
        }
        None => bail!(
            "--users or --trusted-proxy is required to serve on {} (only a loopback address may go without sign-in)",
            cfg.addr
        ),
    };
    let evidence = cfg
        .evidence_url
        .as_deref()
        .map(|u| EvidenceStore::open(u, "--evidence-url"))
        .transpose()
        .map_err(|e| anyhow!(e))?;
    let tls = match &cfg.tls {
        Some((cert, key)) => {
            let loaded = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .with_context(|| {
                    format!(
                        "--tls-cert {} / --tls-key {}: cannot load them",
                        cert.display(),
                        key.display()
                    )
                })?;
            // The server speaks HTTP/1.1 only: offering h2 in ALPN would make browsers speak
            // HTTP/2 to it.
            let mut config = (*loaded.get_inner()).clone();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Some(axum_server::tls_rustls::RustlsConfig::from_config(
                Arc::new(config),
            ))
        }
        None => None,
    };
    let db_path = cfg.db.clone();
    let db = tokio::task::spawn_blocking(move || Store::open(db_path.as_deref()))
        .await?
        .context("cannot open the read model (--db)")?;
    kafka::check_connection_async(&cfg.kafka, kafka::CONNECT_TIMEOUT).await?;
    let registry = cfg
        .schema_registry
        .as_ref()
        .map(Registry::new)
        .transpose()
        .map_err(|e| anyhow!(e))?;
    let codec = match &registry {
        Some(r) => r
            .codec_for(&ACKNOWLEDGEMENT, &cfg.acks_topic, Duration::from_secs(30))
            .await
            .map_err(|e| anyhow!(e))?,
        None => Codec::new(&ACKNOWLEDGEMENT),
    };
    let producer: FutureProducer = cfg
        .kafka
        .config(&[
            ("enable.idempotence", "true"),
            ("acks", "all"),
            ("linger.ms", "0"),
            ("message.timeout.ms", "15000"),
        ])?
        .create()
        .context("cannot create the acknowledgement producer")?;
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let state = Arc::new(AppState {
        view: RwLock::new(View::default()),
        db: Arc::new(Mutex::new(db)),
        evidence,
        refresh_secs: cfg.refresh_secs.max(1),
        users,
        sessions: Mutex::new(Sessions::default()),
        throttle: Mutex::new(Throttle::new(cfg.login_max_failures, cfg.login_window)),
        open_csrf: auth::random_token(),
        secure: cfg.tls.is_some() || cfg.secure_cookies,
        acks: Some(AckPublisher {
            producer,
            codec,
            topic: cfg.acks_topic.clone(),
        }),
        ack_overdue: cfg.ack_overdue,
        console_id: format!("{}/{}", host.trim(), std::process::id()),
        proxy: cfg.proxy.clone(),
        proxy_tokens: Mutex::new(proxy::ProxyTokens::default()),
        public_origins: cfg.public_origins.clone(),
    });
    let (tx, rx) = mpsc::channel::<Record>(RECORD_QUEUE);
    let mut tasks = vec![tokio::spawn(write_loop(state.db.clone(), rx))];
    tasks.push(follow(
        &cfg,
        &cfg.topic,
        RecordReader::with_registry(&VIOLATION_EVENT, cfg.schema_registry.as_ref())
            .map_err(|e| anyhow!(e))?,
        tx.clone(),
        Some(state.clone()),
        |e| Record::Event(Box::new(e)),
    )?);
    tasks.push(follow(
        &cfg,
        &cfg.acks_topic,
        RecordReader::with_registry(&ACKNOWLEDGEMENT, cfg.schema_registry.as_ref())
            .map_err(|e| anyhow!(e))?,
        tx.clone(),
        None,
        Record::Ack,
    )?);
    if let Some(obs) = &cfg.observations_topic {
        tasks.push(follow(
            &cfg,
            obs,
            RecordReader::with_registry(&OBSERVATION, cfg.schema_registry.as_ref())
                .map_err(|e| anyhow!(e))?,
            tx.clone(),
            None,
            |o| Record::Observation(Box::new(o)),
        )?);
    }
    if let Some(topic) = &cfg.camera_status_topic {
        // Made here too if no gateway has yet, so that the subscription finds it at once.
        if let Err(e) = kafka::ensure_single_partition_topic(&cfg.kafka, topic).await {
            tracing::warn!(%topic, error = %e, "cannot create the camera status topic");
        }
        tasks.push(follow_status(&cfg, topic, state.clone())?);
    }
    drop(tx);
    let app = routes::router(state);
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .with_context(|| format!("cannot listen on --addr {}", cfg.addr))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, topic = %cfg.topic, acks_topic = %cfg.acks_topic, tls = tls.is_some(), sign_in = cfg.users.is_some(), trusted_proxies = cfg.proxy.trusted.len(), "console listening");
    println!("console listening on {bound}");
    let limits = ConnectionLimits {
        max_connections: MAX_CONNECTIONS,
        header_timeout: HEADER_TIMEOUT,
    };
    let served = serve(listener, app, limits, tls, shutdown).await;
    for t in tasks {
        t.abort();
    }
    served.context("console server")
}

/// Reads `topic` from the start, decoding each record with `reader` into the read model (and,
/// for events, the open view).
fn follow<T: serde::Serialize + serde::de::DeserializeOwned + Send + 'static>(
    cfg: &ConsoleConfig,
    topic: &str,
    mut reader: RecordReader<T>,
    tx: mpsc::Sender<Record>,
    view: Option<Arc<AppState>>,
    wrap: fn(T) -> Record,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    // A group of its own each time: the model is rebuilt from the start of the topic.
    let consumer = kafka::read_from_start(&cfg.kafka, "vigil-console", topic, 50)?;
    let topic = topic.to_string();
    Ok(tokio::spawn(async move {
        let mut failures = 0u64;
        loop {
            let msg = match consumer.recv().await {
                Ok(m) => m,
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(topic = %topic, error = %e, failures, "topic read failed");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            match reader.decode(msg.payload().unwrap_or_default()).await {
                Ok(rec) => {
                    let rec = wrap(rec);
                    if let (Some(state), Record::Event(ev)) = (&view, &rec) {
                        if let Ok(mut v) = state.view.write() {
                            v.apply(ev);
                        }
                    }
                    if tx.send(rec).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, partition = msg.partition(), offset = msg.offset(), error = %e, "record not readable, skipped")
                }
            }
        }
    }))
}

/// Reads the camera-status topic from the start into the view. A record that is not a status
/// record is skipped and logged.
fn follow_status(
    cfg: &ConsoleConfig,
    topic: &str,
    state: Arc<AppState>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let consumer = kafka::read_from_start(&cfg.kafka, "vigil-console", topic, 100)?;
    let topic = topic.to_string();
    Ok(tokio::spawn(async move {
        let mut failures = 0u64;
        loop {
            let msg = match consumer.recv().await {
                Ok(m) => m,
                Err(e) => {
                    failures += 1;
                    if failures.is_power_of_two() {
                        tracing::warn!(topic = %topic, error = %e, failures, "topic read failed");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let payload = msg.payload().unwrap_or_default();
            match serde_json::from_slice::<crate::contract::StatusRecord>(payload) {
                Ok(rec) => {
                    if let Ok(mut v) = state.view.write() {
                        v.apply_status(rec);
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %topic, partition = msg.partition(), offset = msg.offset(), error = %e, "camera status record not readable, skipped")
                }
            }
        }
    }))
}

/// Applies records to the read model in batches, on the blocking pool.
async fn write_loop(db: Arc<Mutex<Store>>, mut rx: mpsc::Receiver<Record>) {
    let mut batch = Vec::with_capacity(512);
    while rx.recv_many(&mut batch, 512).await > 0 {
        let records = std::mem::take(&mut batch);
        let db = db.clone();
        let applied = tokio::task::spawn_blocking(move || lock(&db).apply(&records)).await;
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "read model update failed"),
            Err(e) => tracing::error!(error = %e, "read model update panicked"),
        }
    }
}

/// Serves `app` on `listener` within `limits` (over TLS with `tls`) until `shutdown` resolves,
/// then lets requests in progress finish ([`SHUTDOWN_GRACE`] at most) and closes idle
/// connections.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    tls: Option<axum_server::tls_rustls::RustlsConfig>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let service = app.into_make_service_with_connect_info::<PeerAddr>();
    let server = limited_server(listener, limits).handle(handle.clone());
    let serving: std::pin::Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>> = match tls {
        Some(tls) => Box::pin(
            server
                .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(tls))
                .serve(service),
        ),
        None => Box::pin(server.serve(service)),
    };
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => return served,
        _ = shutdown => {}
    }
    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    serving.await
}

#[cfg(test)]
mod tests;

#[cfg(test)]
impl AppState {
    /// A console without a broker: records are applied directly, acknowledgements are not
    /// published.
    fn for_tests(users: Option<Users>, evidence: Option<EvidenceStore>) -> AppState {
        AppState {
            view: RwLock::new(View::default()),
            db: Arc::new(Mutex::new(Store::open(None).expect("sqlite in memory"))),
            evidence,
            refresh_secs: 5,
            users: users.map(Arc::new),
            sessions: Mutex::new(Sessions::default()),
            throttle: Mutex::new(Throttle::new(3, Duration::from_secs(60))),
            open_csrf: auth::random_token(),
            secure: false,
            acks: None,
            ack_overdue: Duration::from_secs(600),
            console_id: "test".into(),
            proxy: proxy::ProxyConfig::default(),
            proxy_tokens: Mutex::new(proxy::ProxyTokens::default()),
            public_origins: Vec::new(),
        }
    }
}
