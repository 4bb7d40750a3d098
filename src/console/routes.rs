//! The console's HTTP handlers. A middleware resolves the viewer from the session cookie (or
//! lets everyone in as an admin when the console has no users file); without a session pages
//! redirect to `/login` and `/api/…` answers 401.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use rdkafka::producer::FutureRecord;

use super::acks::{self, Acknowledgement, MAX_FORM_BYTES};
use super::auth::{self, RequestOrigin, Viewer};
use super::pages::{self, esc};
use super::proxy;
use super::reports;
use super::store::EpisodeRow;
use super::users::{Access, Role};
use super::view::OpenEpisode;
use super::{lock, AppState};
use crate::contract::{now_ms, StatusRecord};
use crate::telemetry::server::PeerAddr;

type St = State<Arc<AppState>>;

pub(super) fn router(state: Arc<AppState>) -> Router {
    let guarded = Router::new()
        .route("/", get(open_page))
        .route("/api/open", get(api_open))
        .route("/api/cameras", get(api_cameras))
        .route("/api/episode/{episode}", get(api_episode))
        .route("/episode/{episode}", get(episode_page))
        .route("/evidence/{episode}", get(evidence))
        .route("/episodes/{episode}/ack", post(acknowledge))
        .route("/history", get(reports::history))
        .route("/scorecard", get(reports::scorecard_page))
        .route("/scorecard.csv", get(reports::scorecard_csv))
        .route("/logout", post(logout))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_viewer,
        ));
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(guarded)
        // Forms are small; a larger body is cut off here (and answered 400 by the handlers'
        // own checks below this limit).
        .layer(DefaultBodyLimit::max(4 * MAX_FORM_BYTES))
        .with_state(state)
}

fn header_str(h: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn origin_of<'a>(s: &'a AppState, h: &'a HeaderMap) -> RequestOrigin<'a> {
    RequestOrigin {
        host: header_str(h, header::HOST),
        origin: header_str(h, header::ORIGIN),
        fetch_site: h.get("sec-fetch-site").and_then(|v| v.to_str().ok()),
        public: &s.public_origins,
    }
}

/// The viewer of a request: from a trusted proxy's headers, else from its session cookie.
/// `Err(())`: a proxy-authenticated user who holds no site.
fn viewer_of(s: &AppState, h: &HeaderMap, peer: Option<PeerAddr>) -> Result<Option<Viewer>, ()> {
    if !s.signs_in() {
        return Ok(Some(Viewer {
            name: "anonymous".into(),
            role: Role::Admin,
            access: Access::All,
            csrf: s.open_csrf.clone(),
        }));
    }
    let trusted = peer.is_some_and(|p| s.proxy.trusted.contains(&p.0.ip()));
    if trusted {
        if let Some(name) = h
            .get(s.proxy.user_header.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|n| !n.is_empty())
        {
            let groups = h
                .get(s.proxy.groups_header.as_str())
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let Some((role, access)) = proxy::role_of(s.users.as_deref(), name, groups) else {
                return Err(());
            };
            return Ok(Some(Viewer {
                name: name.to_string(),
                role,
                access,
                csrf: lock(&s.proxy_tokens).token(name),
            }));
        }
    }
    let Some(cookies) = header_str(h, header::COOKIE) else {
        return Ok(None);
    };
    let Some(id) = auth::cookie_value(cookies, auth::COOKIE) else {
        return Ok(None);
    };
    Ok(lock(&s.sessions).get(id, Instant::now()))
}

async fn require_viewer(State(s): St, mut req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<PeerAddr>>().map(|c| c.0);
    match viewer_of(&s, req.headers(), peer) {
        Ok(Some(v)) => {
            req.extensions_mut().insert(v);
            next.run(req).await
        }
        Err(()) => (StatusCode::FORBIDDEN, "your groups hold no site\n").into_response(),
        Ok(None) if req.uri().path().starts_with("/api/") => {
            (StatusCode::UNAUTHORIZED, "sign in first\n").into_response()
        }
        Ok(None) => Redirect::to("/login").into_response(),
    }
}

/// A form's fields; `Err` is the 400 answer.
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, (StatusCode, String)> {
    let bad = |why: &str| (StatusCode::BAD_REQUEST, format!("{why}\n"));
    if body.len() > MAX_FORM_BYTES {
        return Err(bad("form too large"));
    }
    let mut out = HashMap::new();
    for pair in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let (k, v) = match pair.iter().position(|b| *b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        // Percent-decoded bytes must be UTF-8: nothing is replaced silently.
        let decode = |x: &[u8]| {
            let plus: Vec<u8> = x
                .iter()
                .map(|b| if *b == b'+' { b' ' } else { *b })
                .collect();
            percent_encoding::percent_decode(&plus)
                .decode_utf8()
                .map(|c| c.into_owned())
        };
        let (Ok(k), Ok(v)) = (decode(k), decode(v)) else {
            return Err(bad("form is not UTF-8"));
        };
        if out.insert(k, v).is_some() {
            return Err(bad("a form field repeats"));
        }
    }
    Ok(out)
}

async fn login_form(State(s): St, h: HeaderMap) -> Response {
    if s.users.is_none() || matches!(viewer_of(&s, &h, None), Ok(Some(_))) {
        return Redirect::to("/").into_response();
    }
    Html(pages::login(None)).into_response()
}

async fn login(
    State(s): St,
    ConnectInfo(peer): ConnectInfo<PeerAddr>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(users) = s.users.clone() else {
        return Redirect::to("/").into_response();
    };
    if let Err(r) = auth::check_origin(&origin_of(&s, &h)) {
        tracing::warn!(reason = r.as_str(), peer = %peer.0, "sign-in refused");
        return (StatusCode::FORBIDDEN, "cross-site sign-in refused\n").into_response();
    }
    let form = match parse_form(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    let (Some(name), Some(password)) = (form.get("username"), form.get("password")) else {
        return (
            StatusCode::BAD_REQUEST,
            "username and password are required\n",
        )
            .into_response();
    };
    let user_key = format!("user:{name}");
    let addr_key = format!("addr:{}", peer.0.ip());
    {
        let th = lock(&s.throttle);
        let now = Instant::now();
        if let Some(wait) = th.locked(&user_key, now).or(th.locked(&addr_key, now)) {
            tracing::warn!(user = %name, peer = %peer.0, "sign-in throttled");
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, wait.as_secs().max(1).to_string())],
                Html(pages::login(Some(
                    "Too many failed sign-ins: wait and try again.",
                ))),
            )
                .into_response();
        }
    }
    let (n, p) = (name.clone(), password.clone());
    let verified = tokio::task::spawn_blocking(move || users.verify(&n, &p))
        .await
        .ok()
        .flatten();
    let Some(user) = verified else {
        let mut th = lock(&s.throttle);
        th.fail(&user_key, Instant::now());
        th.fail(&addr_key, Instant::now());
        tracing::info!(user = %name, peer = %peer.0, "sign-in failed");
        return (
            StatusCode::UNAUTHORIZED,
            Html(pages::login(Some("Wrong name or password."))),
        )
            .into_response();
    };
    lock(&s.throttle).clear(&user_key);
    let viewer = Viewer {
        name: user.name.clone(),
        role: user.role,
        access: user.access.clone(),
        csrf: auth::random_token(),
    };
    let id = lock(&s.sessions).open(viewer, Instant::now());
    tracing::info!(user = %user.name, role = user.role.as_str(), peer = %peer.0, "signed in");
    (
        [(
            header::SET_COOKIE,
            auth::session_cookie(Some(&id), s.secure),
        )],
        Redirect::to("/"),
    )
        .into_response()
}

async fn logout(
    State(s): St,
    Extension(v): Extension<Viewer>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match parse_form(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = auth::check_csrf(
        &origin_of(&s, &h),
        &v.csrf,
        form.get("csrf").map(String::as_str),
    ) {
        return (StatusCode::FORBIDDEN, format!("{}\n", r.as_str())).into_response();
    }
    if let Some(id) =
        header_str(&h, header::COOKIE).and_then(|c| auth::cookie_value(c, auth::COOKIE))
    {
        lock(&s.sessions).close(id);
    }
    (
        [(header::SET_COOKIE, auth::session_cookie(None, s.secure))],
        Redirect::to("/login"),
    )
        .into_response()
}

/// The viewer's open episodes by site, and the acknowledgements of those episodes.
async fn open_for(
    s: &Arc<AppState>,
    v: &Viewer,
) -> (
    Vec<(String, Vec<OpenEpisode>)>,
    HashMap<String, pages::AckView>,
) {
    let sites: Vec<_> = s
        .view
        .read()
        .map(|view| view.by_site())
        .unwrap_or_default()
        .into_iter()
        .filter(|(site, _)| v.access.allows(site))
        .collect();
    let ids: Vec<String> = sites
        .iter()
        .flat_map(|(_, e)| e.iter().map(|e| e.episode_id.clone()))
        .collect();
    let db = s.db.clone();
    let acks = tokio::task::spawn_blocking(move || {
        let db = lock(&db);
        ids.into_iter()
            .filter_map(|id| db.ack_of(&id).ok().flatten().map(|a| (id, a)))
            .collect::<HashMap<_, _>>()
    })
    .await
    .unwrap_or_default();
    (sites, acks)
}

fn is_overdue(s: &AppState, e: &OpenEpisode) -> bool {
    now_ms() - e.opened_at > s.ack_overdue.as_millis() as i64
}

/// The viewer's cameras with their latest status records, by site.
fn cameras_for(s: &AppState, v: &Viewer) -> Vec<(String, Vec<StatusRecord>)> {
    s.view
        .read()
        .map(|view| view.cameras_by_site())
        .unwrap_or_default()
        .into_iter()
        .filter(|(site, _)| v.access.allows(site))
        .collect()
}

async fn open_page(State(s): St, Extension(v): Extension<Viewer>) -> Html<String> {
    let (sites, acks) = open_for(&s, &v).await;
    let offline: Vec<(String, Vec<StatusRecord>)> = cameras_for(&s, &v)
        .into_iter()
        .map(|(site, cams)| (site, cams.into_iter().filter(|c| c.is_down()).collect()))
        .filter(|(_, cams): &(String, Vec<StatusRecord>)| !cams.is_empty())
        .collect();
    Html(pages::open_page(
        &v,
        &sites,
        &offline,
        &acks,
        &|e| is_overdue(&s, e),
        s.refresh_secs,
    ))
}

async fn api_cameras(State(s): St, Extension(v): Extension<Viewer>) -> Response {
    let sites: Vec<serde_json::Value> = cameras_for(&s, &v)
        .into_iter()
        .map(|(site, cameras)| serde_json::json!({"site": site, "cameras": cameras}))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"sites": sites, "generated_at": now_ms()}).to_string(),
    )
        .into_response()
}

async fn api_open(State(s): St, Extension(v): Extension<Viewer>) -> Response {
    let (sites, acks) = open_for(&s, &v).await;
    let body: Vec<serde_json::Value> = sites
        .into_iter()
        .map(|(site, episodes)| {
            let episodes: Vec<serde_json::Value> = episodes
                .iter()
                .map(|e| {
                    let mut j = serde_json::to_value(e).unwrap_or_default();
                    let ack = acks.get(&e.episode_id);
                    j["ack"] = ack
                        .map(|(u, n, at)| serde_json::json!({"user": u, "note": n, "acked_at": at}))
                        .unwrap_or(serde_json::Value::Null);
                    j["overdue"] = (ack.is_none() && is_overdue(&s, e)).into();
                    j
                })
                .collect();
            serde_json::json!({"site": site, "episodes": episodes})
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({"sites": body, "generated_at": now_ms(), "user": v.name}).to_string(),
    )
        .into_response()
}

/// An episode the viewer may see: open (the view) or past (the read model). Err: the answer.
async fn visible_episode(s: &Arc<AppState>, v: &Viewer, id: &str) -> Result<EpisodeRow, Response> {
    let db = s.db.clone();
    let key = id.to_string();
    let row = tokio::task::spawn_blocking(move || lock(&db).episode(&key))
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    let row = match row {
        Some(r) => r,
        None => {
            // Not in the read model yet (it lags the view by a batch): the open view's facts.
            let open = s.view.read().ok().and_then(|view| view.get(id).cloned());
            match open {
                Some(e) => EpisodeRow {
                    episode_id: e.episode_id,
                    site: e.site,
                    camera: e.camera,
                    zone: e.zone,
                    rule: e.rule,
                    severity: e.severity.as_str().into(),
                    opened_at: e.opened_at,
                    resolved_at: None,
                    resolve_reason: None,
                    frames: e.frames,
                    evidence_uri: e.evidence_uri,
                    timeline: Vec::new(),
                    ack: None,
                },
                None => return Err((StatusCode::NOT_FOUND, "no such episode\n").into_response()),
            }
        }
    };
    if !v.access.allows(&row.site) {
        tracing::warn!(user = %v.name, episode = %id, site = %row.site, "another site's episode refused");
        return Err((StatusCode::FORBIDDEN, "not one of your sites\n").into_response());
    }
    Ok(row)
}

async fn api_episode(
    State(s): St,
    Extension(v): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    match visible_episode(&s, &v, &id).await {
        Ok(row) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&row).unwrap_or_default(),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn episode_page(
    State(s): St,
    Extension(v): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    match visible_episode(&s, &v, &id).await {
        Ok(row) => Html(pages::shell(
            "vigil: episode",
            Some(&v),
            "",
            &format!(
                "<main><h1>Episode {}</h1>{}{}</tbody></table></main>",
                esc(&row.episode_id),
                pages::TABLE_HEAD,
                pages::history_row(&row)
            ),
        ))
        .into_response(),
        Err(r) => r,
    }
}

async fn evidence(
    State(s): St,
    Extension(v): Extension<Viewer>,
    Path(id): Path<String>,
) -> Response {
    let row = match visible_episode(&s, &v, &id).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let (Some(store), Some(uri)) = (&s.evidence, row.evidence_uri) else {
        return (StatusCode::NOT_FOUND, "no picture\n").into_response();
    };
    let Some(key) = store.key_of(&uri) else {
        return (StatusCode::NOT_FOUND, "the picture is in another store\n").into_response();
    };
    match store.get(&key).await {
        Ok(bytes) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "private, max-age=3600"),
            ],
            bytes,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(uri = %uri, error = %e, "evidence picture not readable");
            (StatusCode::NOT_FOUND, "picture not found\n").into_response()
        }
    }
}

async fn acknowledge(
    State(s): St,
    Extension(v): Extension<Viewer>,
    Path(id): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let form = match parse_form(&body) {
        Ok(f) => f,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = auth::check_csrf(
        &origin_of(&s, &h),
        &v.csrf,
        form.get("csrf").map(String::as_str),
    ) {
        tracing::warn!(user = %v.name, episode = %id, reason = r.as_str(), "acknowledgement refused");
        return (StatusCode::FORBIDDEN, format!("{}\n", r.as_str())).into_response();
    }
    let note = match acks::clean_note(form.get("note").map(String::as_str)) {
        Ok(n) => n,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let Some(open) = s.view.read().ok().and_then(|view| view.get(&id).cloned()) else {
        return (StatusCode::NOT_FOUND, "no such open episode\n").into_response();
    };
    if !v.access.allows(&open.site) {
        return (StatusCode::FORBIDDEN, "not one of your sites\n").into_response();
    }
    let db = s.db.clone();
    let key = id.clone();
    let already = tokio::task::spawn_blocking(move || lock(&db).ack_of(&key))
        .await
        .ok()
        .and_then(|r| r.ok())
        .flatten();
    if already.is_none() {
        let ack = Acknowledgement {
            ack_id: auth::random_token(),
            episode_id: open.episode_id.clone(),
            site: open.site.clone(),
            camera: open.camera.clone(),
            rule: open.rule.clone(),
            user: v.name.clone(),
            note,
            acked_at: now_ms(),
            console: s.console_id.clone(),
        };
        if let Some(p) = &s.acks {
            let bytes = match p.codec.encode(&ack) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "acknowledgement not encodable");
                    return (StatusCode::INTERNAL_SERVER_ERROR, "not recorded\n").into_response();
                }
            };
            let rec = FutureRecord::to(&p.topic)
                .key(&ack.episode_id)
                .payload(&bytes);
            if let Err((e, _)) = p
                .producer
                .send(rec, std::time::Duration::from_secs(15))
                .await
            {
                tracing::error!(error = %e, episode = %id, "acknowledgement not published");
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the broker did not take it; try again\n",
                )
                    .into_response();
            }
        }
        tracing::info!(user = %v.name, episode = %id, site = %open.site, "episode acknowledged");
        // Shown at once; the first acknowledgement the topic holds replaces it (another
        // replica's may have come first).
        let db = s.db.clone();
        let _ = tokio::task::spawn_blocking(move || {
            lock(&db).apply(&[super::store::Record::AckPending(ack)])
        })
        .await;
    }
    Redirect::to("/").into_response()
}
