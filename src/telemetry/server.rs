//! The HTTP endpoint of the worker and the gateway (axum): `GET /metrics` (Prometheus text),
//! `GET /healthz` (the process is up), `GET /readyz` (200 only while the process does its work:
//! for a worker, once its partitions are assigned and their episode state restored). At most
//! [`MAX_CONNECTIONS`] connections are served at once (more wait in the listen backlog), a
//! failing `accept` backs off instead of spinning, and [`Server::shutdown`] stops it with the
//! process.

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
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use super::metrics::encode;

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

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
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            1 => Phase::Restoring,
            2 => Phase::Ready,
            3 => Phase::Stopping,
            _ => Phase::Starting,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Restoring => "restoring",
            Phase::Ready => "ready",
            Phase::Stopping => "stopping",
        }
    }
}

/// The readiness the process reports; cheap to clone and set from any thread.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicU8>);

impl Readiness {
    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Release);
    }

    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.0.load(Ordering::Acquire))
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
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Stops accepting, lets requests in progress finish (2 s at most) and returns.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(Duration::from_secs(2), &mut self.task)
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
    let limited = Limited {
        listener,
        slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(limited, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(Server {
        addr: bound,
        stop: Some(stop),
        task,
    })
}

/// A listener that holds a permit per open connection.
struct Limited {
    listener: TcpListener,
    slots: Arc<Semaphore>,
}

impl axum::serve::Listener for Limited {
    type Io = Connection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Connection, SocketAddr) {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        loop {
            match self.listener.accept().await {
                Ok((io, peer)) => {
                    return (
                        Connection {
                            io,
                            _permit: permit,
                        },
                        peer,
                    )
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "metrics endpoint cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A connection and the permit it holds until it closes.
struct Connection {
    io: TcpStream,
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
}
