//! The console's HTTP handlers. A middleware resolves the viewer from the session cookie (or
//! lets everyone in as an admin when the console has no users file); without a session pages
//! redirect to `/login` and `/api/…` answers 401.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use rdkafka::producer::FutureRecord;

use super::acks::{self, Acknowledgement, MAX_FORM_BYTES};
use super::auth::{self, RequestOrigin, Viewer};
use super::pages::{self, esc};
use super::scorecard;
use super::store::{day_of, EpisodeRow, HistoryFilter};
use super::users::{Access, Role};
use super::view::OpenEpisode;
use super::{lock, AppState};
use crate::contract::now_ms;
use crate::telemetry::server::PeerAddr;

type St = State<Arc<AppState>>;

pub(super) fn router(state: Arc<AppState>) -> Router {
    let guarded = Router::new()
        .route("/", get(open_page))
        .route("/api/open", get(api_open))
        .route("/api/episode/{episode}", get(api_episode))
        .route("/episode/{episode}", get(episode_page))
        .route("/evidence/{episode}", get(evidence))
        .route("/episodes/{episode}/ack", post(acknowledge))
        .route("/history", get(history))
        .route("/scorecard", get(scorecard_page))
        .route("/scorecard.csv", get(scorecard_csv))
        .route("/logout", post(logout))
        .layer(middleware::from_fn_with_state(state.clone(), require_viewer));
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/healthz", get(|| async { "ok\n" }))
        .merge(guarded)
        // Forms are small; a larger body is cut off here (and answered 400 by the handlers'
        // own checks below this limit).
        .layer(DefaultBodyLimit::max(4 * MAX_FORM_BYTES))
        .with_state(state)
}

fn header_str<'a>(h: &'a HeaderMap, name: header::HeaderName) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn origin_of(h: &HeaderMap) -> RequestOrigin<'_> {
    RequestOrigin {
        host: header_str(h, header::HOST),
        origin: header_str(h, header::ORIGIN),
        fetch_site: h.get("sec-fetch-site").and_then(|v| v.to_str().ok()),
    }
}

/// The viewer of a request, from its session cookie.
fn viewer_of(s: &AppState, h: &HeaderMap) -> Option<Viewer> {
    if s.users.is_none() {
        return Some(Viewer {
            name: "anonymous".into(),
            role: Role::Admin,
            access: Access::All,
            csrf: s.open_csrf.clone(),
        });
    }
    let cookies = header_str(h, header::COOKIE)?;
    let id = auth::cookie_value(cookies, auth::COOKIE)?;
    lock(&s.sessions).get(id, Instant::now())
}

async fn require_viewer(State(s): St, mut req: Request, next: Next) -> Response {
    match viewer_of(&s, req.headers()) {
        Some(v) => {
            req.extensions_mut().insert(v);
            next.run(req).await
        }
        None if req.uri().path().starts_with("/api/") => {
            (StatusCode::UNAUTHORIZED, "sign in first\n").into_response()
        }
        None => Redirect::to("/login").into_response(),
    }
}

fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, Response> {
    if body.len() > MAX_FORM_BYTES {
        return Err((StatusCode::BAD_REQUEST, "form too large\n").into_response());
    }
    let mut out = HashMap::new();
    if std::str::from_utf8(body).is_err() {
        return Err((StatusCode::BAD_REQUEST, "form is not UTF-8\n").into_response());
    }
    for (k, v) in form_urlencoded::parse(body) {
        if out.insert(k.into_owned(), v.into_owned()).is_some() {
            return Err((StatusCode::BAD_REQUEST, "a form field repeats\n").into_response());
        }
    }
    Ok(out)
}

async fn login_form(State(s): St, h: HeaderMap) -> Response {
    if s.users.is_none() || viewer_of(&s, &h).is_some() {
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
    if let Err(r) = auth::check_origin(&origin_of(&h)) {
        tracing::warn!(reason = r.as_str(), peer = %peer.0, "sign-in refused");
        return (StatusCode::FORBIDDEN, "cross-site sign-in refused\n").into_response();
    }
    let form = match parse_form(&body) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let (Some(name), Some(password)) = (form.get("username"), form.get("password")) else {
        return (StatusCode::BAD_REQUEST, "username and password are required\n").into_response();
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
                Html(pages::login(Some("Too many failed sign-ins: wait and try again."))),
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
        [(header::SET_COOKIE, auth::session_cookie(Some(&id), s.secure))],
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
        Err(r) => return r,
    };
    if let Err(r) = auth::check_csrf(&origin_of(&h), &v.csrf, form.get("csrf").map(String::as_str))
    {
        return (StatusCode::FORBIDDEN, format!("{}\n", r.as_str())).into_response();
    }
    if let Some(id) = header_str(&h, header::COOKIE).and_then(|c| auth::cookie_value(c, auth::COOKIE)) {
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
) -> (Vec<(String, Vec<OpenEpisode>)>, HashMap<String, pages::AckView>) {
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

async fn open_page(State(s): St, Extension(v): Extension<Viewer>) -> Html<String> {
    let (sites, acks) = open_for(&s, &v).await;
    Html(pages::open_page(
        &v,
        &sites,
        &acks,
        &|e| is_overdue(&s, e),
        s.refresh_secs,
    ))
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
    let row = tokio::task::spawn_blocking(move || {
        let db = lock(&db);
        db.history(
            &Access::All,
            &HistoryFilter::default(),
            usize::MAX,
        )
        .map(|rows| rows.into_iter().find(|r| r.episode_id == key))
    })
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

async fn api_episode(State(s): St, Extension(v): Extension<Viewer>, Path(id): Path<String>) -> Response {
    match visible_episode(&s, &v, &id).await {
        Ok(row) => (
            [(header::CONTENT_TYPE, "application/json")],
            serde_json::to_string(&row).unwrap_or_default(),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn episode_page(State(s): St, Extension(v): Extension<Viewer>, Path(id): Path<String>) -> Response {
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

async fn evidence(State(s): St, Extension(v): Extension<Viewer>, Path(id): Path<String>) -> Response {
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
        Err(r) => return r,
    };
    if let Err(r) = auth::check_csrf(&origin_of(&h), &v.csrf, form.get("csrf").map(String::as_str))
    {
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
            let rec = FutureRecord::to(&p.topic).key(&ack.episode_id).payload(&bytes);
            if let Err((e, _)) = p.producer.send(rec, std::time::Duration::from_secs(15)).await {
                tracing::error!(error = %e, episode = %id, "acknowledgement not published");
                return (StatusCode::SERVICE_UNAVAILABLE, "the broker did not take it; try again\n")
                    .into_response();
            }
        }
        tracing::info!(user = %v.name, episode = %id, site = %open.site, "episode acknowledged");
        // Shown at once; the copy read back from the topic changes nothing (first one wins).
        let db = s.db.clone();
        let _ = tokio::task::spawn_blocking(move || {
            lock(&db).apply(&[super::store::Record::Ack(ack)])
        })
        .await;
    }
    Redirect::to("/").into_response()
}

/// The history's query string: a period in days and the filters.
#[derive(Debug, Default, serde::Deserialize)]
struct HistoryQuery {
    /// First day shown (`YYYY-MM-DD`, UTC), default 7 days ago.
    from: Option<String>,
    /// Last day shown (`YYYY-MM-DD`, UTC), default today.
    to: Option<String>,
    site: Option<String>,
    camera: Option<String>,
    zone: Option<String>,
    rule: Option<String>,
    severity: Option<String>,
}

fn some(s: &Option<String>) -> Option<String> {
    s.as_ref().filter(|v| !v.is_empty()).cloned()
}

/// Parses a day; `Err` is a 400 answer.
fn day(s: &Option<String>, default: i64) -> Result<(String, i64), Response> {
    match some(s) {
        None => Ok((day_of(default), start_of(&day_of(default)).unwrap_or(default))),
        Some(d) => match start_of(&d) {
            Some(ms) => Ok((d, ms)),
            None => Err((StatusCode::BAD_REQUEST, "days are YYYY-MM-DD\n").into_response()),
        },
    }
}

fn start_of(day: &str) -> Option<i64> {
    let d = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

const DAY_MS: i64 = 86_400_000;

async fn history(State(s): St, Extension(v): Extension<Viewer>, Query(q): Query<HistoryQuery>) -> Response {
    let now = now_ms();
    let ((from, from_ms), (to, to_ms)) = match (day(&q.from, now - 7 * DAY_MS), day(&q.to, now)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let filter = HistoryFilter {
        from_ms: Some(from_ms),
        to_ms: Some(to_ms + DAY_MS),
        site: some(&q.site),
        camera: some(&q.camera),
        zone: some(&q.zone),
        rule: some(&q.rule),
        severity: some(&q.severity),
    };
    let db = s.db.clone();
    let access = v.access.clone();
    let f2 = filter.clone();
    let found = tokio::task::spawn_blocking(move || {
        let db = lock(&db);
        let rows = db.history(&access, &f2, 500)?;
        let lists: Vec<Vec<String>> = ["site", "camera", "zone", "rule"]
            .iter()
            .map(|c| db.distinct(c))
            .collect::<rusqlite::Result<_>>()?;
        Ok::<_, rusqlite::Error>((rows, lists))
    })
    .await;
    let (rows, lists) = match found {
        Ok(Ok(x)) => x,
        _ => return (StatusCode::INTERNAL_SERVER_ERROR, "history unavailable\n").into_response(),
    };
    let sites: Vec<String> = lists[0].iter().filter(|x| v.access.allows(x)).cloned().collect();
    let severities: Vec<String> = ["minor", "major", "critical"].map(String::from).to_vec();
    let mut body = format!(
        r#"<main><h1>History</h1><form method="get" action="/history" class="filters"><input type="date" name="from" value="{from}"> – <input type="date" name="to" value="{to}"> {} {} {} {} {} <button>Show</button></form><p>{n} episodes</p>{}"#,
        pages::select("site", &sites, filter.site.as_deref()),
        pages::select("camera", &lists[1], filter.camera.as_deref()),
        pages::select("zone", &lists[2], filter.zone.as_deref()),
        pages::select("rule", &lists[3], filter.rule.as_deref()),
        pages::select("severity", &severities, filter.severity.as_deref()),
        pages::TABLE_HEAD,
        from = esc(&from),
        to = esc(&to),
        n = rows.len(),
    );
    for r in &rows {
        body.push_str(&pages::history_row(r));
    }
    body.push_str("</tbody></table></main>");
    Html(pages::shell("vigil: history", Some(&v), "", &body)).into_response()
}

/// The scorecard's period: from and to (days, inclusive), default the last four weeks.
#[derive(Debug, Default, serde::Deserialize)]
struct Period {
    from: Option<String>,
    to: Option<String>,
}

type Facts = std::collections::BTreeMap<(String, String), super::store::DayFacts>;

async fn facts_for(s: &Arc<AppState>, v: &Viewer, p: &Period) -> Result<(Vec<String>, Facts), Response> {
    let now = now_ms();
    let (from, from_ms) = day(&p.from, now - 27 * DAY_MS)?;
    let (to, to_ms) = day(&p.to, now)?;
    if to_ms < from_ms || to_ms - from_ms > 366 * DAY_MS {
        return Err((StatusCode::BAD_REQUEST, "the period is from <= to, a year at most\n").into_response());
    }
    let days: Vec<String> = (0..=(to_ms - from_ms) / DAY_MS)
        .map(|i| day_of(from_ms + i * DAY_MS))
        .collect();
    let db = s.db.clone();
    let access = v.access.clone();
    let facts = tokio::task::spawn_blocking(move || lock(&db).day_facts(&access, &from, &to))
        .await
        .ok()
        .and_then(|r| r.ok())
        .ok_or_else(|| (StatusCode::INTERNAL_SERVER_ERROR, "scorecard unavailable\n").into_response())?;
    Ok((days, facts))
}

async fn scorecard_csv(State(s): St, Extension(v): Extension<Viewer>, Query(p): Query<Period>) -> Response {
    match facts_for(&s, &v, &p).await {
        Ok((_, facts)) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"scorecard.csv\""),
            ],
            scorecard::csv(&facts),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn scorecard_page(State(s): St, Extension(v): Extension<Viewer>, Query(p): Query<Period>) -> Response {
    let (days, facts) = match facts_for(&s, &v, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (first, last) = (days.first().cloned().unwrap_or_default(), days.last().cloned().unwrap_or_default());
    let mut body = format!(
        r#"<main><h1>Compliance scorecard</h1><form method="get" action="/scorecard"><input type="date" name="from" value="{f}"> – <input type="date" name="to" value="{l}"> <button>Show</button> <a href="/scorecard.csv?from={f}&amp;to={l}">CSV</a></form>"#,
        f = esc(&first),
        l = esc(&last)
    );
    let ranking = scorecard::ranking(&facts);
    if v.role != Role::Manager && !ranking.is_empty() {
        body.push_str(r#"<h2>Ranking</h2><table class="ranking"><tr><th>#</th><th>site</th><th>compliant</th><th>judged frames</th><th>episodes</th></tr>"#);
        for (i, (site, c, j, o)) in ranking.iter().enumerate() {
            body.push_str(&format!(
                r#"<tr data-site="{s}"><td>{}</td><td>{s}</td><td>{}</td><td>{j}</td><td>{o}</td></tr>"#,
                i + 1,
                scorecard::share(*c, j - c).map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "—".into()),
                s = esc(site)
            ));
        }
        body.push_str("</table>");
    }
    for (site, ..) in &ranking {
        body.push_str(&format!(r#"<section class="site" data-site="{s}"><h2>{s}</h2>{}"#, scorecard::chart(site, &days, &facts), s = esc(site)));
        body.push_str("<table><tr><th>day</th><th>compliant share per rule</th><th>episodes opened</th><th>median to resolve</th><th>median to acknowledge</th><th>cameras seen</th><th>cameras offline</th></tr>");
        for ((_, d), f) in facts.range((site.clone(), String::new())..).take_while(|((s2, _), _)| s2 == site) {
            let rules: Vec<String> = f
                .judged
                .iter()
                .map(|(r, (c, x))| format!("{}: {}", esc(r), scorecard::share(*c, *x).map(|v| format!("{:.1}%", v * 100.0)).unwrap_or_default()))
                .collect();
            let med = |v: &[i64]| scorecard::median(v).map(|m| pages::duration(m as i64)).unwrap_or_else(|| "—".into());
            body.push_str(&format!(
                "<tr><td>{d}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                rules.join("<br>"),
                f.opened,
                med(&f.resolve_ms),
                med(&f.ack_ms),
                f.cameras_seen,
                f.cameras_offline
            ));
        }
        body.push_str("</table></section>");
    }
    if ranking.is_empty() {
        body.push_str("<p>Nothing judged in this period.</p>");
    }
    body.push_str("</main>");
    Html(pages::shell("vigil: scorecard", Some(&v), "", &body)).into_response()
}
