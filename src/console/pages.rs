//! The console's HTML: server-rendered, no framework; every value from a record is escaped.

use std::collections::HashMap;

use super::auth::Viewer;
use super::store::EpisodeRow;
use super::view::OpenEpisode;
use crate::contract::StatusRecord;

/// HTML-escapes text.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub fn duration(ms: i64) -> String {
    let s = (ms / 1000).max(0);
    match s {
        0..=59 => format!("{s} s"),
        60..=3599 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}

pub fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_default()
}

/// An acknowledgement as shown: `(user, note, acked_at)`.
pub type AckView = (String, Option<String>, i64);

/// The page's shell: title, navigation (who is signed in, sign-out), body.
pub fn shell(title: &str, viewer: Option<&Viewer>, head: &str, body: &str) -> String {
    let nav = match viewer {
        Some(v) => format!(
            r#"<nav><a href="/">Open</a> · <a href="/history">History</a> · <a href="/scorecard">Scorecard</a> <span class="who">{name} ({role})</span> <form method="post" action="/logout" class="inline"><input type="hidden" name="csrf" value="{csrf}"><button>Sign out</button></form></nav>"#,
            name = esc(&v.name),
            role = v.role.as_str(),
            csrf = esc(&v.csrf)
        ),
        None => String::new(),
    };
    format!(
        include_str!("shell.html"),
        title = esc(title),
        head = head,
        nav = nav,
        body = body
    )
}

/// The sign-in form.
pub fn login(message: Option<&str>) -> String {
    let msg = message
        .map(|m| format!(r#"<p class="error">{}</p>"#, esc(m)))
        .unwrap_or_default();
    shell(
        "vigil: sign in",
        None,
        "",
        &format!(
            r#"<main><h1>Sign in</h1>{msg}<form method="post" action="/login" id="login"><label>Name <input name="username" autocomplete="username" required></label><label>Password <input name="password" type="password" autocomplete="current-password" required></label><button type="submit">Sign in</button></form></main>"#
        ),
    )
}

/// One open episode's card, with its acknowledgement or the form to give one.
pub fn card(
    e: &OpenEpisode,
    ack: Option<&AckView>,
    overdue: bool,
    offline: Option<&StatusRecord>,
    csrf: &str,
) -> String {
    let picture = if e.evidence_uri.is_some() {
        format!(
            r#"<img src="/evidence/{id}" alt="evidence for {camera}" data-episode="{id}">"#,
            id = esc(&e.episode_id),
            camera = esc(&e.camera)
        )
    } else {
        r#"<div class="nopic">no picture</div>"#.to_string()
    };
    let ack_html = match ack {
        Some((user, note, at)) => format!(
            r#"<div class="ack" data-acked-by="{u}">acknowledged by {u} at {t}{n}</div>"#,
            u = esc(user),
            t = time(*at),
            n = note
                .as_deref()
                .map(|n| format!(": <q>{}</q>", esc(n)))
                .unwrap_or_default()
        ),
        None => format!(
            r#"<form method="post" action="/episodes/{id}/ack" class="ackform"><input type="hidden" name="csrf" value="{csrf}"><input name="note" maxlength="500" placeholder="note (optional)"><button>Acknowledge</button></form>"#,
            id = esc(&e.episode_id),
            csrf = esc(csrf)
        ),
    };
    format!(
        r#"<article class="episode {sev}{od}" data-episode="{id}">{picture}<div class="facts"><b>{rule}</b> <span class="sev">{sev}</span>{odl}{offl}<br>camera {camera}{zone}<br>open {open} · last seen {seen} · {frames} frames · peak {peak:.2}<br><a href="/episode/{id}">timeline</a></div>{ack_html}</article>"#,
        sev = e.severity.as_str(),
        od = if overdue { " overdue" } else { "" },
        odl = if overdue {
            r#" <span class="overdue-label">overdue</span>"#
        } else {
            ""
        },
        offl = offline
            .map(|c| format!(
                r#" <span class="offline-label" title="{}">camera offline</span>"#,
                esc(&c.reason)
            ))
            .unwrap_or_default(),
        id = esc(&e.episode_id),
        rule = esc(&e.rule),
        camera = esc(&e.camera),
        zone = e
            .zone
            .as_deref()
            .map(|z| format!(" · zone {}", esc(z)))
            .unwrap_or_default(),
        open = duration(e.last_seen_at - e.opened_at),
        seen = time(e.last_seen_at),
        frames = e.frames,
        peak = e.peak_level,
    )
}

/// The list of a site's cameras its gateway reports down.
fn offline_list(cameras: &[StatusRecord]) -> String {
    let items: Vec<String> = cameras
        .iter()
        .map(|c| {
            format!(
                r#"<li data-camera="{camera}">camera {camera}{zone} offline since {since}{why}</li>"#,
                camera = esc(&c.camera),
                zone = c
                    .zone
                    .as_deref()
                    .map(|z| format!(" ({})", esc(z)))
                    .unwrap_or_default(),
                since = time(c.at_ms),
                why = if c.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", esc(&c.reason))
                },
            )
        })
        .collect();
    format!(r#"<ul class="offline">{}</ul>"#, items.join(""))
}

/// The open episodes page: per site, its open episodes and its cameras reported offline (a
/// site with offline cameras is shown although nothing is open there).
pub fn open_page(
    viewer: &Viewer,
    sites: &[(String, Vec<OpenEpisode>)],
    offline: &[(String, Vec<StatusRecord>)],
    acks: &HashMap<String, AckView>,
    overdue: &dyn Fn(&OpenEpisode) -> bool,
    refresh_secs: u32,
) -> String {
    let count: usize = sites.iter().map(|(_, e)| e.len()).sum();
    let mut body = format!(r#"<main id="open"><h1>Open violations: {count}</h1>"#);
    if sites.is_empty() {
        body.push_str(r#"<p class="none">No open violations.</p>"#);
    }
    let mut names: Vec<&str> = sites
        .iter()
        .map(|(s, _)| s.as_str())
        .chain(offline.iter().map(|(s, _)| s.as_str()))
        .collect();
    names.sort_unstable();
    names.dedup();
    for site in names {
        let episodes: &[OpenEpisode] = sites
            .iter()
            .find(|(s, _)| s == site)
            .map(|(_, e)| e.as_slice())
            .unwrap_or_default();
        let down: &[StatusRecord] = offline
            .iter()
            .find(|(s, _)| s == site)
            .map(|(_, c)| c.as_slice())
            .unwrap_or_default();
        body.push_str(&format!(
            r#"<section class="site" data-site="{s}"><h2>{s} <small>{n} open{d}</small></h2>"#,
            s = esc(site),
            n = episodes.len(),
            d = if down.is_empty() {
                String::new()
            } else {
                let n = down.len();
                format!(" · {n} camera{} offline", if n == 1 { "" } else { "s" })
            }
        ));
        if !down.is_empty() {
            body.push_str(&offline_list(down));
        }
        body.push_str(r#"<div class="grid">"#);
        for e in episodes {
            let ack = acks.get(&e.episode_id);
            let camera_down = down.iter().find(|c| c.camera == e.camera);
            body.push_str(&card(
                e,
                ack,
                ack.is_none() && overdue(e),
                camera_down,
                &viewer.csrf,
            ));
        }
        body.push_str("</div></section>");
    }
    body.push_str(&format!(
        r#"</main><footer>vigil console · refreshes every {refresh_secs} s · <a href="/api/open">JSON</a></footer>"#
    ));
    let head = format!(
        "<script>{}</script>",
        include_str!("refresh.js").replace("REFRESH_SECS", &refresh_secs.to_string())
    );
    shell(
        &format!("vigil: {count} open violations"),
        Some(viewer),
        &head,
        &body,
    )
}

/// One history row (also the episode page).
pub fn history_row(r: &EpisodeRow) -> String {
    let picture = if r.evidence_uri.is_some() {
        format!(
            r#"<a href="/evidence/{id}"><img class="thumb" src="/evidence/{id}" alt="evidence" loading="lazy"></a>"#,
            id = esc(&r.episode_id)
        )
    } else {
        String::new()
    };
    let timeline: Vec<String> = r
        .timeline
        .iter()
        .map(|(kind, sev, reason, at)| {
            format!(
                "<li>{} {} {}{}</li>",
                time(*at),
                esc(kind),
                esc(sev),
                reason
                    .as_deref()
                    .map(|x| format!(" ({})", esc(x)))
                    .unwrap_or_default()
            )
        })
        .collect();
    let ack = match &r.ack {
        Some((u, n, at)) => format!(
            "{} at {}{}",
            esc(u),
            time(*at),
            n.as_deref()
                .map(|n| format!(": <q>{}</q>", esc(n)))
                .unwrap_or_default()
        ),
        None => "—".into(),
    };
    format!(
        r#"<tr data-episode="{id}"><td>{pic}</td><td>{site}</td><td>{camera}</td><td>{zone}</td><td>{rule}</td><td>{sev}</td><td>{opened}</td><td>{resolved}</td><td><ol>{tl}</ol></td><td class="ackcell">{ack}</td></tr>"#,
        id = esc(&r.episode_id),
        pic = picture,
        site = esc(&r.site),
        camera = esc(&r.camera),
        zone = esc(r.zone.as_deref().unwrap_or("")),
        rule = esc(&r.rule),
        sev = esc(&r.severity),
        opened = time(r.opened_at),
        resolved = r.resolved_at.map(time).unwrap_or_else(|| "open".into()),
        tl = timeline.join(""),
    )
}

/// A `<select>` of the values seen, with the chosen one selected.
pub fn select(name: &str, values: &[String], chosen: Option<&str>) -> String {
    let mut s = format!(r#"<select name="{name}"><option value="">any {name}</option>"#);
    for v in values {
        s.push_str(&format!(
            r#"<option{}>{}</option>"#,
            if chosen == Some(v.as_str()) {
                " selected"
            } else {
                ""
            },
            esc(v)
        ));
    }
    s.push_str("</select>");
    s
}

pub const TABLE_HEAD: &str = "<table class=\"history\"><thead><tr><th>picture</th><th>site</th><th>camera</th><th>zone</th><th>rule</th><th>severity</th><th>opened</th><th>resolved</th><th>timeline</th><th>acknowledged</th></tr></thead><tbody>";
