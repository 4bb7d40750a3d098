//! The console over HTTP, without a broker: connection limits, sign-in, per-site access,
//! CSRF checks, throttling and acknowledgements.

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
    let state = Arc::new(AppState::for_tests(None, None));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        routes::router(state),
        limits,
        None,
        async {
            let _ = stopped.await;
        },
    ));
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

use crate::contract::event::tests::sample_events;
use crate::contract::ViolationEvent;

const PASSWORD: &str = "correct horse battery";

fn opened(episode: &str, site: &str) -> ViolationEvent {
    let mut e = sample_events()[0].clone();
    e.episode_id = episode.into();
    e.site = site.into();
    e.event_id = format!("{episode}-0");
    e.evidence_uri = Some(format!("file:///nowhere/{episode}.jpg"));
    e
}

/// A console with ana (manager of site-001), two open episodes (site-001 and site-002), served
/// on loopback; returns its address and the server task.
async fn console() -> (String, Arc<AppState>) {
    let hash = users::hash_password(PASSWORD).unwrap();
    let u = Users::parse(&format!(
        "[[user]]\nname = \"ana\"\npassword_hash = \"{hash}\"\nrole = \"manager\"\nsites = [\"site-001\"]\n"
    ))
    .unwrap();
    let state = Arc::new(AppState::for_tests(Some(u), None));
    for (id, site) in [("ep-a", "site-001"), ("ep-b", "site-002")] {
        let e = opened(id, site);
        state.view.write().unwrap().apply(&e);
        lock(&state.db)
            .apply(&[Record::Event(Box::new(e))])
            .unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let limits = ConnectionLimits {
        max_connections: 16,
        header_timeout: Duration::from_secs(5),
    };
    tokio::spawn(serve(
        listener,
        routes::router(state.clone()),
        limits,
        None,
        std::future::pending(),
    ));
    (addr, state)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn sign_in(c: &reqwest::Client, addr: &str, user: &str, password: &str) -> reqwest::Response {
    c.post(format!("http://{addr}/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "username={user}&password={}",
            password.replace(' ', "+")
        ))
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_sees_only_their_sites_and_state_changes_need_the_token() {
    let (addr, state) = console().await;
    let c = client();
    // Without a session: pages redirect to the sign-in, the API answers 401.
    for path in [
        "/",
        "/history",
        "/scorecard",
        "/evidence/ep-a",
        "/episode/ep-a",
    ] {
        let r = c.get(format!("http://{addr}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 303, "{path}");
        assert_eq!(r.headers()["location"], "/login", "{path}");
    }
    let r = c
        .get(format!("http://{addr}/api/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // A cross-site sign-in is refused.
    let r = c
        .post(format!("http://{addr}/login"))
        .header("origin", "https://evil.example")
        .body("username=ana&password=x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let r = sign_in(&c, &addr, "ana", PASSWORD).await;
    assert_eq!(r.status(), 303);
    let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    let get = |path: &str| {
        c.get(format!("http://{addr}{path}"))
            .header("cookie", &cookie)
            .send()
    };
    let open: serde_json::Value = get("/api/open").await.unwrap().json().await.unwrap();
    let sites: Vec<&str> = open["sites"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["site"].as_str().unwrap())
        .collect();
    assert_eq!(sites, ["site-001"]);
    let page = get("/").await.unwrap().text().await.unwrap();
    assert!(
        page.contains(r#"data-episode="ep-a""#) && !page.contains("ep-b"),
        "{page}"
    );
    for path in ["/api/episode/ep-b", "/evidence/ep-b", "/episode/ep-b"] {
        assert_eq!(get(path).await.unwrap().status(), 403, "{path}");
    }
    assert_eq!(get("/api/episode/ep-a").await.unwrap().status(), 200);
    assert_eq!(get("/api/episode/nothing").await.unwrap().status(), 404);

    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let ack = |episode: &str, body: String, origin: Option<&str>| {
        let mut r = c
            .post(format!("http://{addr}/episodes/{episode}/ack"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    let own = format!("http://{addr}");
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(
        status(ack("ep-a", "note=x".into(), Some(&own)).await.unwrap()),
        403,
        "no token"
    );
    assert_eq!(
        status(
            ack("ep-a", "csrf=wrong&note=x".into(), Some(&own))
                .await
                .unwrap()
        ),
        403
    );
    assert_eq!(
        status(
            ack("ep-a", format!("csrf={csrf}"), Some("https://evil.example"))
                .await
                .unwrap()
        ),
        403,
        "foreign origin"
    );
    let long = "n".repeat(acks::MAX_NOTE_CHARS + 1);
    assert_eq!(
        status(
            ack("ep-a", format!("csrf={csrf}&note={long}"), Some(&own))
                .await
                .unwrap()
        ),
        400
    );
    assert_eq!(
        status(
            ack("ep-a", format!("csrf={csrf}&note=%00"), Some(&own))
                .await
                .unwrap()
        ),
        400,
        "control characters"
    );
    assert_eq!(
        status(
            ack("ep-a", format!("csrf={csrf}&note=%FF"), Some(&own))
                .await
                .unwrap()
        ),
        400,
        "not UTF-8 once decoded"
    );
    assert_eq!(
        status(
            ack("ep-a", format!("csrf={csrf}&csrf={csrf}"), Some(&own))
                .await
                .unwrap()
        ),
        400,
        "a repeated field"
    );
    let huge = "n".repeat(5 * acks::MAX_FORM_BYTES);
    assert!(
        matches!(
            status(
                ack("ep-a", format!("csrf={csrf}&note={huge}"), Some(&own))
                    .await
                    .unwrap()
            ),
            400 | 413
        ),
        "oversized"
    );
    assert_eq!(
        status(
            ack("ep-b", format!("csrf={csrf}"), Some(&own))
                .await
                .unwrap()
        ),
        403,
        "another site's episode"
    );
    assert!(lock(&state.db).ack_of("ep-a").unwrap().is_none());
    assert_eq!(
        status(
            ack(
                "ep-a",
                format!("csrf={csrf}&note=mask+handed+out"),
                Some(&own)
            )
            .await
            .unwrap()
        ),
        303
    );
    let first = lock(&state.db).ack_of("ep-a").unwrap().unwrap();
    assert_eq!(first.0, "ana");
    assert_eq!(first.1.as_deref(), Some("mask handed out"));
    // Twice changes nothing.
    assert_eq!(
        status(
            ack("ep-a", format!("csrf={csrf}&note=again"), Some(&own))
                .await
                .unwrap()
        ),
        303
    );
    assert_eq!(lock(&state.db).ack_of("ep-a").unwrap().unwrap(), first);
    let open: serde_json::Value = get("/api/open").await.unwrap().json().await.unwrap();
    assert_eq!(open["sites"][0]["episodes"][0]["ack"]["user"], "ana");
    assert_eq!(open["sites"][0]["episodes"][0]["overdue"], false);

    // Wrong passwords throttle (3 here), the right one too once locked.
    for _ in 0..3 {
        assert_eq!(sign_in(&c, &addr, "ana", "wrong").await.status(), 401);
    }
    assert_eq!(sign_in(&c, &addr, "ana", "wrong").await.status(), 429);
    assert_eq!(sign_in(&c, &addr, "ana", PASSWORD).await.status(), 429);
}

#[tokio::test]
async fn without_users_everything_is_open_on_loopback() {
    let state = Arc::new(AppState::for_tests(None, None));
    state
        .view
        .write()
        .unwrap()
        .apply(&opened("ep-a", "site-009"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let limits = ConnectionLimits {
        max_connections: 4,
        header_timeout: Duration::from_secs(5),
    };
    tokio::spawn(serve(
        listener,
        routes::router(state),
        limits,
        None,
        std::future::pending(),
    ));
    let r = client()
        .get(format!("http://{addr}/api/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("site-009"));
}

/// A console behind a proxy at `trusted`, with `console()`'s two episodes.
async fn behind_proxy(trusted: &str) -> String {
    let mut state = AppState::for_tests(None, None);
    state.proxy = proxy::ProxyConfig {
        trusted: vec![trusted.parse().unwrap()],
        user_header: "x-forwarded-user".into(),
        groups_header: "x-forwarded-groups".into(),
    };
    let state = Arc::new(state);
    for (id, site) in [("ep-a", "site-001"), ("ep-b", "site-002")] {
        let e = opened(id, site);
        state.view.write().unwrap().apply(&e);
        lock(&state.db)
            .apply(&[Record::Event(Box::new(e))])
            .unwrap();
    }
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let limits = ConnectionLimits {
        max_connections: 8,
        header_timeout: Duration::from_secs(5),
    };
    tokio::spawn(serve(
        listener,
        routes::router(state),
        limits,
        None,
        std::future::pending(),
    ));
    addr
}

#[tokio::test]
async fn a_trusted_proxy_names_the_user_and_their_groups_their_sites() {
    let addr = behind_proxy("127.0.0.1").await;
    let c = client();
    let as_pat = |path: &str, groups: &str| {
        c.get(format!("http://{addr}{path}"))
            .header("x-forwarded-user", "pat")
            .header("x-forwarded-groups", groups)
            .send()
    };
    let open: serde_json::Value = as_pat("/api/open", "staff,vigil-site:site-002")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(open["user"], "pat");
    assert_eq!(open["sites"][0]["site"], "site-002");
    assert_eq!(open["sites"].as_array().unwrap().len(), 1);
    let r = as_pat("/evidence/ep-a", "vigil-site:site-002")
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "another site's picture");
    assert_eq!(as_pat("/api/open", "staff").await.unwrap().status(), 403);
    let all: serde_json::Value = as_pat("/api/open", "vigil-admin")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["sites"].as_array().unwrap().len(), 2);
    // The proxy user acknowledges with their own CSRF token.
    let page = as_pat("/", "vigil-site:site-002")
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let r = c
        .post(format!("http://{addr}/episodes/ep-b/ack"))
        .header("x-forwarded-user", "pat")
        .header("x-forwarded-groups", "vigil-site:site-002")
        .body(format!("csrf={csrf}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    // Without the headers there is no identity.
    let r = c
        .get(format!("http://{addr}/api/open"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn identity_headers_from_an_untrusted_address_are_ignored() {
    let addr = behind_proxy("10.9.8.7").await;
    let r = client()
        .get(format!("http://{addr}/api/open"))
        .header("x-forwarded-user", "mallory")
        .header("x-forwarded-groups", "vigil-admin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_sees_which_of_their_cameras_are_offline_and_no_other_sites() {
    let (addr, state) = console().await;
    let status = |site: &str, camera: &str, st: &str, at_ms: i64| crate::contract::StatusRecord {
        site: site.into(),
        camera: camera.into(),
        zone: Some("kitchen".into()),
        state: st.into(),
        reason: if st == "down" {
            "no answer within 10 s".into()
        } else {
            String::new()
        },
        at_ms,
        reconnects: 3,
    };
    {
        let mut v = state.view.write().unwrap();
        // ep-a is on site-001's cam-0001 (sample_events): its camera goes down.
        v.apply_status(status("site-001", "cam-0001", "up", 1_000));
        v.apply_status(status("site-001", "cam-0001", "down", 2_000));
        v.apply_status(status("site-001", "cam-0002", "up", 1_500));
        v.apply_status(status("site-002", "cam-0009", "down", 2_500));
    }
    let c = client();
    let r = sign_in(&c, &addr, "ana", PASSWORD).await;
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_string();
    let get = |path: &str| {
        c.get(format!("http://{addr}{path}"))
            .header("cookie", &cookie)
            .send()
    };
    let cams: serde_json::Value = get("/api/cameras").await.unwrap().json().await.unwrap();
    let sites = cams["sites"].as_array().unwrap();
    assert_eq!(sites.len(), 1, "{cams}");
    assert_eq!(sites[0]["site"], "site-001");
    let states: Vec<(&str, &str)> = sites[0]["cameras"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["camera"].as_str().unwrap(), c["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, [("cam-0001", "down"), ("cam-0002", "up")]);
    let page = get("/").await.unwrap().text().await.unwrap();
    assert!(
        page.contains(r#"<li data-camera="cam-0001">camera cam-0001 (kitchen) offline since"#)
            && page.contains("no answer within 10 s")
            && page.contains("1 camera offline")
            && !page.contains("cam-0002\">")
            && !page.contains("cam-0009"),
        "{page}"
    );
    // The episode of the offline camera says so.
    let card = page
        .split(r#"<article class="episode"#)
        .find(|a| a.contains(r#"data-episode="ep-a""#))
        .and_then(|a| a.split("</article>").next())
        .unwrap();
    assert!(card.contains("camera offline"), "{page}");
    // It comes back: no longer listed.
    state
        .view
        .write()
        .unwrap()
        .apply_status(status("site-001", "cam-0001", "up", 3_000));
    let page = get("/").await.unwrap().text().await.unwrap();
    assert!(
        !page.contains("offline since") && !page.contains("camera offline"),
        "{page}"
    );
}
