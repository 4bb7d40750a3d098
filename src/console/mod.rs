//! `vigil console`: a read-only page of open violations for managers. It consumes the events
//! topic from the beginning at start-up (no database: the topic is the record), keeps the open
//! episodes ([`view`]), and serves, with axum:
//!
//! - `GET /` the page: open episodes by site, newest first, each with its evidence picture,
//!   rule, camera, severity and how long it has been open; it reloads itself every few seconds;
//! - `GET /api/open` the same data as JSON;
//! - `GET /evidence/{episode_id}` the episode's picture, read from the evidence store (the same
//!   `--evidence-url` the workers write to), so that a browser needs no access to the store;
//! - `GET /healthz`.
//!
//! Idle clients cannot exhaust it: it accepts at most [`MAX_CONNECTIONS`] connections at once
//! (more wait in the listen backlog) and closes a connection whose client has not sent a
//! request's headers within [`HEADER_TIMEOUT`] of its opening or of its last response
//! ([`crate::telemetry::server::limited_server`]).

pub mod view;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use rdkafka::message::Message;

use crate::codec::avro::VIOLATION_EVENT;
use crate::codec::registry::{RecordReader, RegistryConfig};
use crate::contract::{now_ms, ViolationEvent};
use crate::evidence::EvidenceStore;
use crate::kafka::{self, KafkaArgs};
use crate::telemetry::server::{limited_server, ConnectionLimits};
use view::{OpenEpisode, View};

/// Connections served at once: a browser opens about six to load a page's pictures, so this
/// is some forty managers' browsers; more wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 256;

/// How long a client may take to send a request's headers, from when its connection opens or
/// falls idle after a response (a browser reconnects when a kept-alive connection was closed).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// How long requests in progress may finish once the console is told to stop.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What `vigil console` needs.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// How to reach the brokers that hold the events topic.
    pub kafka: KafkaArgs,
    /// The events topic.
    pub topic: String,
    /// Where the page is served (`--addr`).
    pub addr: SocketAddr,
    /// Where the workers keep evidence pictures (to serve them to the page).
    pub evidence_url: Option<String>,
    /// The schema registry the events' writer schemas are read from, when one is used.
    pub schema_registry: Option<RegistryConfig>,
    /// Seconds between the page's reloads.
    pub refresh_secs: u32,
}

struct AppState {
    /// The open episodes, as the events topic has told them so far.
    view: RwLock<View>,
    /// Where the pictures are read from (`--evidence-url`); none: no pictures are served.
    store: Option<EvidenceStore>,
    /// Seconds between the page's reloads.
    refresh_secs: u32,
}

/// Serves until `shutdown` resolves.
pub async fn run(
    cfg: ConsoleConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = cfg
        .evidence_url
        .as_deref()
        .map(|u| EvidenceStore::open(u, "--evidence-url"))
        .transpose()
        .map_err(|e| anyhow!(e))?;
    kafka::check_connection_async(&cfg.kafka, kafka::CONNECT_TIMEOUT).await?;
    // A group of its own each time: the view is rebuilt from the start of the topic.
    let consumer = kafka::read_from_start(&cfg.kafka, "vigil-console", &cfg.topic, 50)?;
    let mut reader: RecordReader<ViolationEvent> =
        RecordReader::with_registry(&VIOLATION_EVENT, cfg.schema_registry.as_ref())
            .map_err(|e| anyhow!(e))?;
    let state = Arc::new(AppState {
        view: RwLock::new(View::default()),
        store,
        refresh_secs: cfg.refresh_secs.max(1),
    });
    let follower = {
        let state = state.clone();
        tokio::spawn(async move {
            loop {
                let msg = match consumer.recv().await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "events topic read failed");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                match reader.decode(msg.payload().unwrap_or_default()).await {
                    Ok(ev) => {
                        if let Ok(mut v) = state.view.write() {
                            v.apply(&ev);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(partition = msg.partition(), offset = msg.offset(), error = %e, "not a violation event, skipped")
                    }
                }
            }
        })
    };
    let app = router(state);
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .with_context(|| format!("cannot listen on --addr {}", cfg.addr))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, topic = %cfg.topic, "console listening");
    println!("console listening on {bound}");
    let limits = ConnectionLimits {
        max_connections: MAX_CONNECTIONS,
        header_timeout: HEADER_TIMEOUT,
    };
    let served = serve(listener, app, limits, shutdown).await;
    follower.abort();
    served.context("console server")
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/open", get(api_open))
        .route("/evidence/{episode}", get(evidence))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then lets requests in
/// progress finish ([`SHUTDOWN_GRACE`] at most) and closes idle connections.
async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let handle = axum_server::Handle::new();
    let serving = limited_server(listener, limits)
        .handle(handle.clone())
        .serve(app.into_make_service());
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => return served,
        _ = shutdown => {}
    }
    handle.graceful_shutdown(Some(SHUTDOWN_GRACE));
    serving.await
}

async fn api_open(State(s): State<Arc<AppState>>) -> Response {
    let sites = s.view.read().map(|v| v.by_site()).unwrap_or_default();
    let body: Vec<serde_json::Value> = sites
        .into_iter()
        .map(|(site, episodes)| serde_json::json!({"site": site, "episodes": episodes}))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"sites": body, "generated_at": now_ms()}).to_string(),
    )
        .into_response()
}

async fn evidence(State(s): State<Arc<AppState>>, Path(episode): Path<String>) -> Response {
    let uri = s
        .view
        .read()
        .ok()
        .and_then(|v| v.get(&episode).and_then(|e| e.evidence_uri.clone()));
    let (Some(store), Some(uri)) = (&s.store, uri) else {
        return (StatusCode::NOT_FOUND, "no picture\n").into_response();
    };
    let Some(key) = store.key_of(&uri) else {
        return (StatusCode::NOT_FOUND, "the picture is in another store\n").into_response();
    };
    match store.get(&key).await {
        Ok(bytes) => ([(header::CONTENT_TYPE, "image/jpeg")], bytes).into_response(),
        Err(e) => {
            tracing::warn!(uri = %uri, error = %e, "evidence picture not readable");
            (StatusCode::NOT_FOUND, "picture not found\n").into_response()
        }
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn duration(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

/// One episode's card. Durations are in event time (capture times), so that replayed footage
/// reads as it happened.
fn card(e: &OpenEpisode) -> String {
    let picture = if e.evidence_uri.is_some() {
        format!(
            r#"<img src="/evidence/{id}" alt="evidence for {camera}" data-episode="{id}">"#,
            id = esc(&e.episode_id),
            camera = esc(&e.camera)
        )
    } else {
        r#"<div class="nopic">no picture</div>"#.to_string()
    };
    format!(
        r#"<article class="episode {sev}" data-episode="{id}">{picture}<div class="facts"><b>{rule}</b> <span class="sev">{sev}</span><br>camera {camera}{zone}<br>open {open} · last seen {seen} · {frames} frames · peak {peak:.2}</div></article>"#,
        sev = e.severity.as_str(),
        id = esc(&e.episode_id),
        rule = esc(&e.rule),
        camera = esc(&e.camera),
        zone = e
            .zone
            .as_deref()
            .map(|z| format!(" · zone {}", esc(z)))
            .unwrap_or_default(),
        open = duration(e.last_seen_at - e.opened_at),
        seen = chrono::DateTime::from_timestamp_millis(e.last_seen_at)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default(),
        frames = e.frames,
        peak = e.peak_level,
    )
}

async fn page(State(s): State<Arc<AppState>>) -> Html<String> {
    let (sites, count) = s
        .view
        .read()
        .map(|v| (v.by_site(), v.open_count()))
        .unwrap_or_default();
    let mut body = String::new();
    if sites.is_empty() {
        body.push_str(r#"<p class="none">No open violations.</p>"#);
    }
    for (site, episodes) in &sites {
        body.push_str(&format!(
            r#"<section class="site" data-site="{s}"><h2>{s} <small>{n} open</small></h2><div class="grid">"#,
            s = esc(site),
            n = episodes.len()
        ));
        for e in episodes {
            body.push_str(&card(e));
        }
        body.push_str("</div></section>");
    }
    Html(format!(
        include_str!("page.html"),
        refresh = s.refresh_secs,
        count = count,
        body = body
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};
    use tokio::time::Instant;

    /// Waits until the server closes `s` (end of stream or reset); false if it stays open.
    async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 1024];
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => {}
            }
        }
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_closed_and_the_page_is_still_served() {
        let limits = ConnectionLimits {
            max_connections: 4,
            header_timeout: Duration::from_millis(400),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(AppState {
            view: RwLock::new(View::default()),
            store: None,
            refresh_secs: 5,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router(state), limits, async {
            let _ = stopped.await;
        }));
        // Three times the cap of clients that connect and send nothing.
        let mut idle = Vec::new();
        for _ in 0..3 * limits.max_connections {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let started = Instant::now();
        // A browser's request behind them is served once the header timeout has cut them off.
        let page = tokio::spawn(async move {
            let r = reqwest::get(format!("http://{addr}/api/open"))
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), page)
            .await
            .expect("served once the idle clients were cut off")
            .unwrap();
        assert_eq!(status, 200);
        assert!(body.contains(r#""sites":[]"#), "{body}");
        assert!(
            started.elapsed() >= limits.header_timeout,
            "every slot was taken, so it had to wait: {:?}",
            started.elapsed()
        );
        for (i, s) in idle.iter_mut().enumerate() {
            assert!(
                closed_within(s, Duration::from_secs(10)).await,
                "idle connection {i} still open"
            );
        }
        let t = Instant::now();
        let r = reqwest::get(format!("http://{addr}/")).await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert!(r.text().await.unwrap().contains("No open violations."));
        assert!(t.elapsed() < limits.header_timeout, "{:?}", t.elapsed());
        // Stopping closes idle connections at once instead of waiting for them.
        let mut lingering = TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("stopped within the grace period")
            .unwrap()
            .unwrap();
        assert!(closed_within(&mut lingering, Duration::from_secs(1)).await);
        assert!(t.elapsed() < SHUTDOWN_GRACE, "{:?}", t.elapsed());
    }
}
