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

pub mod view;

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
use view::{OpenEpisode, View};

/// What `vigil console` needs.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    pub kafka: KafkaArgs,
    /// The events topic.
    pub topic: String,
    pub addr: SocketAddr,
    /// Where the workers keep evidence pictures (to serve them to the page).
    pub evidence_url: Option<String>,
    pub schema_registry: Option<RegistryConfig>,
    /// Seconds between the page's reloads.
    pub refresh_secs: u32,
}

struct AppState {
    view: RwLock<View>,
    store: Option<EvidenceStore>,
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
    let app = Router::new()
        .route("/", get(page))
        .route("/api/open", get(api_open))
        .route("/evidence/{episode}", get(evidence))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .with_context(|| format!("cannot listen on --addr {}", cfg.addr))?;
    let bound = listener.local_addr()?;
    tracing::info!(addr = %bound, topic = %cfg.topic, "console listening");
    println!("console listening on {bound}");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    follower.abort();
    served.context("console server")
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
