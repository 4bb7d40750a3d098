//! The HTTP endpoint of the worker and the gateway (axum): `GET /metrics` (Prometheus text),
//! `GET /healthz` (the process is up), `GET /readyz` (200 only while the process does its work:
//! for a worker, once its partitions are assigned and their episode state restored), and
//! [`Server::shutdown`] stops it with the process.
//!
//! Idle clients cannot hold it: served with axum-server (HTTP/1.1 only), at most
//! [`MAX_CONNECTIONS`] connections are accepted at once (more wait in the listen backlog,
//! holding none of the process's file descriptors), and a connection whose client has not sent
//! a request's headers within [`HEADER_TIMEOUT`], counted from when it opens or falls idle
//! after a response (hyper re-arms its header timer then, so this is also the keep-alive idle
//! timeout), is closed. A failing `accept` backs off instead of spinning. The console serves
//! its page the same way ([`limited_server`], [`ConnectionLimits`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::encode;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send a request's headers, from when its connection opens or
/// falls idle after a response. Prometheus sends a scrape's headers at once and reconnects
/// when a kept-alive connection has been closed.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long [`Server::shutdown`] lets requests in progress finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// What a server allows its clients, so that idle or slow ones cannot take it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections served at once. Past it the listener stops accepting, so further clients
    /// wait in the kernel's listen backlog and hold no file descriptor of the process.
    pub max_connections: usize,
    /// How long a client may take to send a request's headers, counted from when its
    /// connection opens or falls idle after a response; the connection is closed then. The
    /// same timer bounds a kept-alive connection's idleness between requests.
    pub header_timeout: Duration,
}

impl Default for ConnectionLimits {
    /// The metrics endpoint's: [`MAX_CONNECTIONS`] and [`HEADER_TIMEOUT`].
    fn default() -> Self {
        ConnectionLimits {
            max_connections: MAX_CONNECTIONS,
            header_timeout: HEADER_TIMEOUT,
        }
    }
}

/// What the process is doing, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Loading models, connecting, waiting for partitions.
    Starting = 0,
    /// Partitions assigned; their state is being read back.
    Restoring = 1,
    /// Working.
    Ready = 2,
    /// Draining before exit.
    Stopping = 3,
    /// The brokers cannot be reached: the work waits for them (reported over any phase but
    /// `Stopping`, see [`Readiness::set_reachable`]; never set itself).
    Unreachable = 4,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Restoring,
            2 => Phase::Ready,
            3 => Phase::Stopping,
            4 => Phase::Unreachable,
            _ => Phase::Starting,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Restoring => "restoring",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
            Phase::Unreachable => "unreachable",
        }
    }
}

/// The readiness the process reports; cheap to clone and set from any thread. It holds the
/// phase and, apart from it, whether the brokers can be reached: while they cannot, the phase
/// reads [`Phase::Unreachable`], and the phase underneath comes back with them. `Stopping` is
/// final: nothing set later revives a process that is draining.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

/// The bit of [`Readiness`] that says the brokers cannot be reached.
const UNREACHABLE: u8 = 0x80;

impl Readiness {
    pub fn set(&self, phase: Phase) {
        debug_assert!(phase != Phase::Unreachable, "reported, not set");
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (Phase::from_u8(v & !UNREACHABLE) != Phase::Stopping)
                    .then_some(phase as u8 | (v & UNREACHABLE))
            });
    }

    pub fn phase(&self) -> Phase {
        let v = self.0.load(Ordering::Acquire);
        match Phase::from_u8(v & !UNREACHABLE) {
            Phase::Stopping => Phase::Stopping,
            _ if v & UNREACHABLE != 0 => Phase::Unreachable,
            phase => phase,
        }
    }

    /// Records whether the brokers can be reached; true when that changed.
    pub fn set_reachable(&self, reachable: bool) -> bool {
        let before = if reachable {
            self.0.fetch_and(!UNREACHABLE, Ordering::AcqRel)
        } else {
            self.0.fetch_or(UNREACHABLE, Ordering::AcqRel)
        };
        (before & UNREACHABLE == 0) != reachable
    }

    /// Whether the brokers could be reached when last heard of.
    pub fn reachable(&self) -> bool {
        self.0.load(Ordering::Acquire) & UNREACHABLE == 0
    }
}

#[derive(Clone)]
struct AppState {
    registry: Registry,
    readiness: Readiness,
}

async fn metrics(State(s): State<AppState>) -> impl IntoResponse {
    // Encoding walks every series: off the runtime's worker threads if it is large.
    let registry = s.registry.clone();
    let body = tokio::task::spawn_blocking(move || encode(&registry))
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let phase = s.readiness.phase();
    let status = if phase == Phase::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, format!("{}\n", phase.as_str()))
}

/// A running endpoint.
pub struct Server {
    /// The bound address (useful with port 0).
    pub addr: SocketAddr,
    /// Tells the server to stop accepting and to close its connections.
    handle: axum_server::Handle<PeerAddr>,
    /// The serving task, awaited by [`Server::shutdown`].
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting, lets requests in progress finish (2 s at most), closes idle
    /// connections and returns.
    pub async fn shutdown(mut self) {
        self.handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
        if tokio::time::timeout(SHUTDOWN_GRACE + Duration::from_secs(1), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Serves the endpoint on `addr` until [`Server::shutdown`].
pub async fn serve(
    registry: Registry,
    addr: SocketAddr,
    readiness: Readiness,
) -> std::io::Result<Server> {
    serve_with(registry, addr, readiness, ConnectionLimits::default()).await
}

/// [`serve`] within the given limits (tests use short timeouts and few connections).
async fn serve_with(
    registry: Registry,
    addr: SocketAddr,
    readiness: Readiness,
    limits: ConnectionLimits,
) -> std::io::Result<Server> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState {
            registry,
            readiness,
        });
    let handle = axum_server::Handle::new();
    let server = limited_server(listener, limits).handle(handle.clone());
    let task = tokio::spawn(async move {
        if let Err(e) = server.serve(app.into_make_service()).await {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(Server {
        addr: bound,
        handle,
        task,
    })
}

/// An HTTP/1.1 server on `listener` within `limits`: serve it with a router's
/// `into_make_service()`, and stop it through a [`axum_server::Handle`] set with `.handle()`.
/// HTTP/2 is off: neither the metrics endpoint nor the console needs it, and hyper's header
/// timeout (what closes idle connections) is an HTTP/1 setting.
pub fn limited_server(
    listener: TcpListener,
    limits: ConnectionLimits,
) -> axum_server::Server<PeerAddr> {
    let mut server = axum_server::Server::from_listener(Limited {
        listener,
        slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
    })
    .http1_only();
    server
        .http_builder()
        .http1()
        .header_read_timeout(Some(limits.header_timeout));
    server
}

/// A client's address, as [`limited_server`] accepts connections: the address type that ties
/// axum-server to the [`Limited`] listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

impl axum_server::Address for PeerAddr {
    type Stream = Connection;
    type Listener = Limited;
}

/// A listener that holds a permit per open connection and accepts only with one in hand.
pub struct Limited {
    /// The bound socket.
    listener: TcpListener,
    /// One permit per connection that may be open; a connection returns its own on close.
    slots: Arc<Semaphore>,
}

impl axum_server::AddrListener<Connection, PeerAddr> for Limited {
    /// Binds with the metrics endpoint's connection cap ([`limited_server`] is given a bound
    /// listener instead, with its own cap).
    async fn bind_to(addr: PeerAddr) -> io::Result<Self> {
        Ok(Limited {
            listener: TcpListener::bind(addr.0).await?,
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
        })
    }

    async fn accept_stream(&self) -> io::Result<(Connection, PeerAddr)> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((io, peer)) => {
                    return Ok((
                        Connection {
                            io,
                            _permit: permit,
                        },
                        PeerAddr(peer),
                    ))
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "http server cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    fn get_local_addr(&self) -> io::Result<PeerAddr> {
        self.listener.local_addr().map(PeerAddr)
    }
}

/// A connection and the permit it holds until it closes.
pub struct Connection {
    /// The client's socket.
    io: TcpStream,
    /// The connection's slot, returned to the listener when the connection is dropped.
    _permit: OwnedSemaphorePermit,
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Handlers read the client's address as `ConnectInfo<PeerAddr>` (sign-in throttling).
impl axum::extract::connect_info::Connected<PeerAddr> for PeerAddr {
    fn connect_info(addr: PeerAddr) -> Self {
        addr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{addr}{path}")).await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness_and_stops() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("vigil_test_total", "a test counter").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc();
        let ready = Readiness::default();
        let server = serve(registry, "127.0.0.1:0".parse().unwrap(), ready.clone())
            .await
            .unwrap();
        let addr = server.addr;
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("vigil_test_total 1"), "{body}");
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_string()));
        assert_eq!(get(addr, "/readyz").await, (503, "starting\n".to_string()));
        ready.set(Phase::Restoring);
        assert_eq!(get(addr, "/readyz").await.0, 503);
        ready.set(Phase::Ready);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_string()));
        assert_eq!(get(addr, "/nothing").await.0, 404);
        server.shutdown().await;
        assert!(reqwest::get(format!("http://{addr}/healthz"))
            .await
            .is_err());
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_wait_for_a_free_slot() {
        let server = serve(
            Registry::new(),
            "127.0.0.1:0".parse().unwrap(),
            Readiness::default(),
        )
        .await
        .unwrap();
        // Idle connections take every slot…
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(TcpStream::connect(server.addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // …so a request waits,
        let addr = server.addr;
        let waiting = tokio::spawn(async move { get(addr, "/healthz").await });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished());
        // and is served once one closes.
        idle.pop();
        let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("served after a slot freed")
            .unwrap();
        assert_eq!(answer.0, 200);
        server.shutdown().await;
    }

    /// Limits short enough for a test: 8 connections, headers within 400 ms.
    const TEST_LIMITS: ConnectionLimits = ConnectionLimits {
        max_connections: 8,
        header_timeout: Duration::from_millis(400),
    };

    /// Waits until the server closes `s` (end of stream or reset); how long that took.
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
        use tokio::io::AsyncReadExt;
        let started = tokio::time::Instant::now();
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(started + limit, s.read(&mut buf)).await {
                Err(_) => return None,
                Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
                // A response (a timed-out client may be told so): read on to the close.
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_closed_and_a_request_is_still_served() {
        let server = serve_with(
            Registry::new(),
            "127.0.0.1:0".parse().unwrap(),
            Readiness::default(),
            TEST_LIMITS,
        )
        .await
        .unwrap();
        let addr = server.addr;
        // Three times the cap of clients that connect and send nothing: the first eight are
        // accepted, the rest wait in the backlog behind them.
        let mut idle = Vec::new();
        for _ in 0..3 * TEST_LIMITS.max_connections {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let started = tokio::time::Instant::now();
        // A real request queued behind all of them is served once the header timeout has
        // freed their slots, a batch at a time.
        let request = tokio::spawn(async move { get(addr, "/healthz").await });
        let answer = tokio::time::timeout(Duration::from_secs(10), request)
            .await
            .expect("served once idle clients were cut off")
            .unwrap();
        assert_eq!(answer, (200, "ok\n".to_string()));
        assert!(
            started.elapsed() >= TEST_LIMITS.header_timeout,
            "every slot was taken, so it had to wait: {:?}",
            started.elapsed()
        );
        // Every idle client was closed by the server.
        for (i, s) in idle.iter_mut().enumerate() {
            closed_within(s, Duration::from_secs(10))
                .await
                .unwrap_or_else(|| panic!("idle connection {i} still open"));
        }
        // The endpoint answers right away again.
        let t = tokio::time::Instant::now();
        assert_eq!(get(addr, "/healthz").await.0, 200);
        assert!(
            t.elapsed() < TEST_LIMITS.header_timeout,
            "{:?}",
            t.elapsed()
        );
        server.shutdown().await;
    }

    #[tokio::test]
    async fn slow_headers_and_idle_kept_alive_connections_are_closed() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let server = serve_with(
            Registry::new(),
            "127.0.0.1:0".parse().unwrap(),
            Readiness::default(),
            TEST_LIMITS,
        )
        .await
        .unwrap();
        // A client trickling its headers, a byte every 50 ms, never finishing them: the
        // timeout counts from the connection's opening, not from the last byte.
        let mut slow = TcpStream::connect(server.addr).await.unwrap();
        let trickle = tokio::spawn(async move {
            let opened = tokio::time::Instant::now();
            slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
            for b in b"X-Slow: ".iter().cycle() {
                if slow.write_all(&[*b]).await.is_err() || opened.elapsed() > Duration::from_secs(5)
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                // Cut off: the server has closed its end.
                if closed_within(&mut slow, Duration::ZERO).await.is_some() {
                    break;
                }
            }
            opened.elapsed()
        });
        // A kept-alive client that made one request and then stays silent.
        let mut kept = TcpStream::connect(server.addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut response = [0u8; 256];
        let n = kept.read(&mut response).await.unwrap();
        let response = String::from_utf8_lossy(&response[..n]).to_string();
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.ends_with("ok\n"), "{response}");
        let waited = closed_within(&mut kept, Duration::from_secs(5))
            .await
            .expect("an idle kept-alive connection is closed");
        assert!(
            waited >= TEST_LIMITS.header_timeout - Duration::from_millis(50),
            "closed after {waited:?}"
        );
        let elapsed = trickle.await.unwrap();
        assert!(
            elapsed >= TEST_LIMITS.header_timeout && elapsed < Duration::from_secs(3),
            "the trickling client was cut off after {elapsed:?}"
        );
        server.shutdown().await;
    }

    #[test]
    fn unreachable_brokers_mask_the_phase_until_they_answer_and_stopping_is_final() {
        let r = Readiness::default();
        r.set(Phase::Ready);
        assert!(r.set_reachable(false), "a change");
        assert!(!r.set_reachable(false), "no change");
        assert_eq!(r.phase(), Phase::Unreachable);
        r.set(Phase::Restoring);
        assert_eq!(
            r.phase(),
            Phase::Unreachable,
            "the phase underneath moves on"
        );
        assert!(r.set_reachable(true) && r.reachable());
        assert_eq!(r.phase(), Phase::Restoring);
        r.set(Phase::Stopping);
        r.set_reachable(false);
        assert_eq!(r.phase(), Phase::Stopping, "a draining process says so");
        r.set(Phase::Ready);
        r.set_reachable(true);
        assert_eq!(r.phase(), Phase::Stopping, "nothing revives it");
    }
}
