//! The HTTP side of `vigil ingest`: one route, `POST /v1/frames`, that turns an upload into a
//! frame on the frames topic and answers once the broker has acknowledged it.
//!
//! A request meets, in order: the upload slots (503 when all are busy), the query (400), the
//! credential (401/403), the rate limits (429), the declared size and type (413/415, before
//! the body is read), the body read with a deadline (408) and a size cap (413), the frame
//! contract the workers apply (400/413), and the producer (503 when the broker does not
//! acknowledge in time). Every answer is counted by status; no token is ever logged.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::StreamExt;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::Semaphore;

use super::tokens::{Denied, Tokens};
use super::upload::{self, BodyKind, Refusal, UploadParams};
use crate::contract::{now_ms, Limits};
use crate::telemetry::IngestMetrics;

/// Limits and rates of the endpoint.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The frame contract's checks (size, JPEG structure, pixels, capture time).
    pub limits: Limits,
    /// Uploads per second per camera, and the burst allowed above it.
    pub camera_rate: (NonZeroU32, NonZeroU32),
    /// Uploads per second per credential, and its burst.
    pub token_rate: (NonZeroU32, NonZeroU32),
    /// Longest time to receive a request's body (and, in the server, its headers).
    pub read_timeout: Duration,
    /// Longest wait for the broker's acknowledgement before answering 503.
    pub ack_timeout: Duration,
    /// Uploads handled at once; more get 503 at once instead of queueing in memory.
    pub max_uploads: usize,
}

/// What the handlers share.
pub struct App {
    pub policy: Policy,
    pub tokens: Tokens,
    pub producer: FutureProducer,
    pub topic: String,
    pub metrics: Arc<IngestMetrics>,
    per_camera: DefaultKeyedRateLimiter<String>,
    per_token: DefaultKeyedRateLimiter<String>,
    slots: Semaphore,
    /// The last `seq` given: sequence numbers are microseconds of the receive time, kept
    /// increasing, so that they grow per camera across restarts.
    last_seq: AtomicU64,
}

impl App {
    pub fn new(
        policy: Policy,
        tokens: Tokens,
        producer: FutureProducer,
        topic: String,
        metrics: Arc<IngestMetrics>,
    ) -> App {
        let quota =
            |(rate, burst): (NonZeroU32, NonZeroU32)| Quota::per_second(rate).allow_burst(burst);
        App {
            per_camera: RateLimiter::keyed(quota(policy.camera_rate)),
            per_token: RateLimiter::keyed(quota(policy.token_rate)),
            slots: Semaphore::new(policy.max_uploads.max(1)),
            last_seq: AtomicU64::new(0),
            policy,
            tokens,
            producer,
            topic,
            metrics,
        }
    }

    /// Forgets rate-limit state of keys idle long enough to be full again.
    pub fn prune(&self) {
        self.per_camera.retain_recent();
        self.per_token.retain_recent();
    }

    fn next_seq(&self) -> u64 {
        let now_us = (now_ms().max(0) as u64) * 1000;
        let mut prev = self.last_seq.load(Ordering::Relaxed);
        loop {
            let next = now_us.max(prev + 1);
            match self.last_seq.compare_exchange_weak(
                prev,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return next,
                Err(p) => prev = p,
            }
        }
    }
}

/// The router: `POST /v1/frames` and `GET /healthz`.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/frames", post(frames))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(app)
}

fn answer(status: u16, body: serde_json::Value, retry_after: Option<u64>) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response();
    if let Some(s) = retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    if status == 401 {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

async fn frames(
    State(app): State<Arc<App>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let mut body = Some(body);
    let result = handle(&app, query.as_deref(), &headers, &mut body).await;
    if let (Err(_), Some(unread)) = (&result, body.take()) {
        drain(unread, &app, &headers).await;
    }
    let (status, response) = match result {
        Ok(accepted) => {
            app.metrics
                .ack_seconds
                .observe(started.elapsed().as_secs_f64());
            (202, answer(202, accepted, None))
        }
        Err(r) => {
            if r.status >= 500 {
                tracing::warn!(status = r.status, error = r.code, message = %r.message, "upload not accepted");
            } else {
                tracing::debug!(status = r.status, error = r.code, message = %r.message, "upload refused");
            }
            (r.status, answer(r.status, r.body(), r.retry_after))
        }
    };
    app.metrics
        .uploads
        .with_label_values(&[&status.to_string()])
        .inc();
    response
}

/// Reads and drops the body of an upload refused before its body was read (credentials, rate,
/// type, a declared size over the limit), so that a client still sending it reads the refusal
/// instead of a broken connection (CI once saw a 150 kB upload over a 100 kB limit fail so).
/// Bodies declared at more than four times the limit are never read: the refusal goes out at
/// once and the connection closes. Others are read up to that, within the read timeout.
async fn drain(body: Body, app: &App, headers: &HeaderMap) {
    let cap = 4 * (app.policy.limits.max_frame_bytes + 64 * 1024);
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return;
    }
    let mut stream = body.into_data_stream();
    let mut read = 0usize;
    let _ = tokio::time::timeout(app.policy.read_timeout, async {
        while let Some(Ok(chunk)) = stream.next().await {
            read += chunk.len();
            if read > cap {
                break;
            }
        }
    })
    .await;
}

/// Seconds until a rate limiter lets the key through again.
fn wait_secs(not_until: governor::NotUntil<governor::clock::QuantaInstant>) -> u64 {
    not_until
        .wait_time_from(DefaultClock::default().now())
        .as_secs_f64()
        .ceil() as u64
}

async fn handle(
    app: &App,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &mut Option<Body>,
) -> Result<serde_json::Value, Refusal> {
    let _slot = app.slots.try_acquire().map_err(|_| {
        Refusal::new(
            503,
            "busy",
            "the server is handling as many uploads as it may",
        )
        .retry_after(1)
    })?;
    let params = upload::parse_query(query)?;
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let credential = app.tokens.check(auth, &params.site).map_err(|d| match d {
        Denied::Missing => Refusal::new(
            401,
            "unauthorized",
            "an `Authorization: Bearer <token>` header is required",
        ),
        Denied::Unknown => Refusal::new(401, "unauthorized", "the token is not valid"),
        Denied::WrongSite => Refusal::new(
            403,
            "forbidden",
            format!("the token may not publish for site `{}`", params.site),
        ),
    })?;
    // The camera's limit first: a camera that floods spends its own quota, not the quota its
    // token shares with the site's other cameras.
    let camera_key = format!("{}/{}", params.site, params.camera);
    if let Err(n) = app.per_camera.check_key(&camera_key) {
        return Err(Refusal::new(
            429,
            "rate_limited",
            format!("too many uploads for camera `{}`", params.camera),
        )
        .retry_after(wait_secs(n)));
    }
    if let Err(n) = app.per_token.check_key(&credential) {
        return Err(
            Refusal::new(429, "rate_limited", "too many uploads with this credential")
                .retry_after(wait_secs(n)),
        );
    }
    let max = app.policy.limits.max_frame_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let kind = upload::body_kind(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
    )?;
    let too_big = |n: String| {
        Refusal::new(
            413,
            "oversize",
            format!("the upload is {n}, over the {max} byte limit (--max-frame-bytes)"),
        )
    };
    // Forms carry a little framing around the file.
    let cap = match kind {
        BodyKind::Raw => max,
        BodyKind::Multipart(_) => max + 64 * 1024,
    };
    if let Some(n) = declared.filter(|&n| n > cap as u64) {
        return Err(too_big(format!("{n} bytes")));
    }
    let body = body.take().unwrap_or_default();
    let payload = tokio::time::timeout(app.policy.read_timeout, read_image(body, &kind, max))
        .await
        .map_err(|_| {
            Refusal::new(
                408,
                "timeout",
                format!(
                    "the upload did not arrive within {} s",
                    app.policy.read_timeout.as_secs_f64()
                ),
            )
        })??;
    if upload::is_png(&payload) {
        return Err(upload::unsupported("a PNG image"));
    }
    publish(app, &params, payload).await
}

/// Reads the image: the whole body, or the `file` part of a form, at most `max` bytes.
async fn read_image(body: Body, kind: &BodyKind, max: usize) -> Result<Vec<u8>, Refusal> {
    let too_big = || {
        Refusal::new(
            413,
            "oversize",
            format!("the image is over the {max} byte limit (--max-frame-bytes)"),
        )
    };
    match kind {
        BodyKind::Raw => {
            let mut out = Vec::new();
            let mut stream = body.into_data_stream();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    Refusal::new(400, "bad_body", format!("the body could not be read: {e}"))
                })?;
                if out.len() + chunk.len() > max {
                    return Err(too_big());
                }
                out.extend_from_slice(&chunk);
            }
            Ok(out)
        }
        BodyKind::Multipart(boundary) => {
            let constraints = multer::Constraints::new().size_limit(
                multer::SizeLimit::new()
                    .whole_stream((max + 64 * 1024) as u64)
                    .per_field(max as u64),
            );
            let mut form =
                multer::Multipart::with_constraints(body.into_data_stream(), boundary, constraints);
            let bad = |e: multer::Error| match e {
                multer::Error::FieldSizeExceeded { .. }
                | multer::Error::StreamSizeExceeded { .. } => too_big(),
                other => Refusal::new(
                    400,
                    "bad_multipart",
                    format!("the form could not be read: {other}"),
                ),
            };
            while let Some(field) = form.next_field().await.map_err(bad)? {
                if field.name() != Some("file") {
                    continue;
                }
                if let Some(ct) = field.content_type() {
                    upload::body_kind(Some(ct.essence_str())).and_then(|k| match k {
                        BodyKind::Raw => Ok(()),
                        BodyKind::Multipart(_) => Err(upload::unsupported("a nested form")),
                    })?;
                }
                return Ok(field.bytes().await.map_err(bad)?.to_vec());
            }
            Err(Refusal::new(
                400,
                "bad_multipart",
                "the form has no `file` part holding the JPEG",
            ))
        }
    }
}

/// Checks the frame as a worker would, publishes it, and waits for the acknowledgement.
async fn publish(
    app: &App,
    params: &UploadParams,
    payload: Vec<u8>,
) -> Result<serde_json::Value, Refusal> {
    let now = now_ms();
    let captured_at = params.captured_at_ms.unwrap_or(now);
    let seq = app.next_seq();
    let headers = upload::frame_headers(params, captured_at, seq);
    crate::source::validate(
        Some(params.camera.as_bytes()),
        &headers,
        &payload,
        &app.policy.limits,
        now,
    )
    .map_err(|r| upload::refusal_of(&r))?;
    let bytes = payload.len();
    let record = FutureRecord::to(&app.topic)
        .key(params.camera.as_bytes())
        .payload(&payload)
        .headers(crate::kafka::headers_from(
            headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        ));
    let unavailable = |why: String| {
        Refusal::new(
            503,
            "broker_unavailable",
            format!("the frame was not acknowledged by the brokers: {why}"),
        )
        .retry_after(5)
    };
    // Queue-full is answered at once; the acknowledgement is awaited up to the ack timeout
    // (the producer's message.timeout.ms).
    let delivered = app
        .producer
        .send(record, Timeout::After(Duration::ZERO))
        .await
        .map_err(|(e, _)| unavailable(e.to_string()))?;
    app.metrics.bytes.inc_by(bytes as u64);
    Ok(serde_json::json!({
        "topic": app.topic,
        "partition": delivered.partition,
        "offset": delivered.offset,
        "site": params.site,
        "camera": params.camera,
        "captured_at": captured_at,
        "seq": seq,
        "bytes": bytes,
    }))
}
