//! The console's reports: the history of episodes (filtered) and the compliance scorecard
//! (page and CSV), read from the SQLite read model on the blocking pool.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;

use super::auth::Viewer;
use super::pages::{self, esc};
use super::scorecard;
use super::store::{day_of, HistoryFilter};
use super::users::Role;
use super::{lock, AppState};
use crate::contract::now_ms;

type St = State<Arc<AppState>>;

/// The history's query string: a period in days and the filters.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct HistoryQuery {
    /// First day shown (`YYYY-MM-DD`, UTC), default 7 days ago.
    from: Option<String>,
    /// Last day shown (`YYYY-MM-DD`, UTC), default today.
    to: Option<String>,
    /// The filters, empty meaning any ([`HistoryFilter`]).
    site: Option<String>,
    /// See `site`.
    camera: Option<String>,
    /// See `site`.
    zone: Option<String>,
    /// See `site`.
    rule: Option<String>,
    /// See `site`.
    severity: Option<String>,
}

fn some(s: &Option<String>) -> Option<String> {
    s.as_ref().filter(|v| !v.is_empty()).cloned()
}

/// Parses a day; `Err` is a 400 answer.
fn day(s: &Option<String>, default: i64) -> Result<(String, i64), (StatusCode, &'static str)> {
    match some(s) {
        None => Ok((
            day_of(default),
            start_of(&day_of(default)).unwrap_or(default),
        )),
        Some(d) => match start_of(&d) {
            Some(ms) => Ok((d, ms)),
            None => Err((StatusCode::BAD_REQUEST, "days are YYYY-MM-DD\n")),
        },
    }
}

fn start_of(day: &str) -> Option<i64> {
    let d = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp_millis())
}

const DAY_MS: i64 = 86_400_000;

pub(super) async fn history(
    State(s): St,
    Extension(v): Extension<Viewer>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let now = now_ms();
    let ((from, from_ms), (to, to_ms)) = match (day(&q.from, now - 7 * DAY_MS), day(&q.to, now)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return r.into_response(),
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
    let sites: Vec<String> = lists[0]
        .iter()
        .filter(|x| v.access.allows(x))
        .cloned()
        .collect();
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
pub(super) struct Period {
    /// First day (`YYYY-MM-DD`, UTC).
    from: Option<String>,
    /// Last day, inclusive.
    to: Option<String>,
}

type Facts = std::collections::BTreeMap<(String, String), super::store::DayFacts>;

async fn facts_for(
    s: &Arc<AppState>,
    v: &Viewer,
    p: &Period,
) -> Result<(Vec<String>, Facts), Response> {
    let now = now_ms();
    let (from, from_ms) = day(&p.from, now - 27 * DAY_MS).map_err(IntoResponse::into_response)?;
    let (to, to_ms) = day(&p.to, now).map_err(IntoResponse::into_response)?;
    if to_ms < from_ms || to_ms - from_ms > 366 * DAY_MS {
        return Err((
            StatusCode::BAD_REQUEST,
            "the period is from <= to, a year at most\n",
        )
            .into_response());
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
        .ok_or_else(|| {
            (StatusCode::INTERNAL_SERVER_ERROR, "scorecard unavailable\n").into_response()
        })?;
    Ok((days, facts))
}

pub(super) async fn scorecard_csv(
    State(s): St,
    Extension(v): Extension<Viewer>,
    Query(p): Query<Period>,
) -> Response {
    match facts_for(&s, &v, &p).await {
        Ok((_, facts)) => (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"scorecard.csv\"",
                ),
            ],
            scorecard::csv(&facts),
        )
            .into_response(),
        Err(r) => r,
    }
}

pub(super) async fn scorecard_page(
    State(s): St,
    Extension(v): Extension<Viewer>,
    Query(p): Query<Period>,
) -> Response {
    let (days, facts) = match facts_for(&s, &v, &p).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let (first, last) = (
        days.first().cloned().unwrap_or_default(),
        days.last().cloned().unwrap_or_default(),
    );
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
        body.push_str(&format!(
            r#"<section class="site" data-site="{s}"><h2>{s}</h2>{}"#,
            scorecard::chart(site, &days, &facts),
            s = esc(site)
        ));
        body.push_str("<table><tr><th>day</th><th>compliant share per rule</th><th>episodes opened</th><th>median to resolve</th><th>median to acknowledge</th><th>cameras seen</th><th>cameras offline</th></tr>");
        for ((_, d), f) in facts
            .range((site.clone(), String::new())..)
            .take_while(|((s2, _), _)| s2 == site)
        {
            let rules: Vec<String> = f
                .judged
                .iter()
                .map(|(r, (c, x))| {
                    format!(
                        "{}: {}",
                        esc(r),
                        scorecard::share(*c, *x)
                            .map(|v| format!("{:.1}%", v * 100.0))
                            .unwrap_or_default()
                    )
                })
                .collect();
            let med = |v: &[i64]| {
                scorecard::median(v)
                    .map(|m| pages::duration(m as i64))
                    .unwrap_or_else(|| "—".into())
            };
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
