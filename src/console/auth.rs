//! Sessions, CSRF checks and sign-in throttling: the pure parts of the console's sign-in, with
//! time passed in so that tests need no clock.
//!
//! - A session is a random 256-bit token in a cookie (`HttpOnly`, `SameSite=Lax`: a link from
//!   an alert opens the page signed in, a cross-site POST carries no cookie; `Secure`
//!   when the console is reached over TLS), valid for [`SESSION_TTL`] after sign-in. Sessions
//!   live in this replica's memory: a restart or another replica asks to sign in again.
//! - Every state change (a POST) must carry the session's CSRF token in a form field (compared
//!   in constant time) and must not come from another origin: an `Origin` header, when sent,
//!   must name the console's own host, and `Sec-Fetch-Site`, when sent, must be `same-origin`
//!   (or `none`: typed by the user).
//! - Failed sign-ins are counted per user name and per client address; after
//!   [`Throttle::max_failures`] within [`Throttle::window`] further tries are answered 429
//!   until the window has passed, whether or not the password is right.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::users::{Access, Role};

/// How long a session lasts after sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// Sessions kept at most; past that the oldest are dropped (their users sign in again).
const MAX_SESSIONS: usize = 10_000;

/// The session cookie's name.
pub const COOKIE: &str = "vigil_session";

/// 32 random bytes, hex: session ids and CSRF tokens.
pub fn random_token() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the operating system's randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Who is looking, and what they may see.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The user's name (in acknowledgements and logs).
    pub name: String,
    /// The user's role (district managers get a ranking).
    pub role: Role,
    /// The sites the viewer may see.
    pub access: Access,
    /// The token every form of this session carries.
    pub csrf: String,
}

/// A signed-in session.
#[derive(Debug, Clone)]
struct Session {
    /// The user, as they signed in.
    viewer: Viewer,
    /// When the session stops being valid.
    expires: Instant,
}

/// The sessions of this replica.
#[derive(Debug, Default)]
pub struct Sessions {
    /// Sessions by cookie value.
    by_id: HashMap<String, Session>,
}

impl Sessions {
    /// Opens a session for `viewer`; returns the cookie value.
    pub fn open(&mut self, viewer: Viewer, now: Instant) -> String {
        if self.by_id.len() >= MAX_SESSIONS {
            self.by_id.retain(|_, s| s.expires > now);
            if self.by_id.len() >= MAX_SESSIONS {
                if let Some(oldest) = self
                    .by_id
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
                {
                    self.by_id.remove(&oldest);
                }
            }
        }
        let id = random_token();
        self.by_id.insert(
            id.clone(),
            Session {
                viewer,
                expires: now + SESSION_TTL,
            },
        );
        id
    }

    /// The viewer of a live session.
    pub fn get(&self, id: &str, now: Instant) -> Option<Viewer> {
        self.by_id
            .get(id)
            .filter(|s| s.expires > now)
            .map(|s| s.viewer.clone())
    }

    pub fn close(&mut self, id: &str) {
        self.by_id.remove(id);
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The `Set-Cookie` value of a session (or, with `None`, one that clears it).
pub fn session_cookie(id: Option<&str>, secure: bool) -> String {
    let (value, age) = match id {
        Some(id) => (id, SESSION_TTL.as_secs()),
        None => ("", 0),
    };
    format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={age}{}",
        if secure { "; Secure" } else { "" }
    )
}

/// Why a state change was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CsrfRefusal {
    /// `Origin` names another site (or is `null`).
    ForeignOrigin,
    /// `Sec-Fetch-Site` says the request came from another site.
    CrossSite,
    /// The form's token is missing or is not the session's.
    BadToken,
}

impl CsrfRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            CsrfRefusal::ForeignOrigin => "foreign origin",
            CsrfRefusal::CrossSite => "cross-site request",
            CsrfRefusal::BadToken => "missing or wrong csrf token",
        }
    }
}

/// The headers a cross-site check reads.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestOrigin<'a> {
    /// `Host`: the console's own host and port, as the browser reached it.
    pub host: Option<&'a str>,
    /// `Origin`, if the browser sent one.
    pub origin: Option<&'a str>,
    /// `Sec-Fetch-Site`, if the browser sent one.
    pub fetch_site: Option<&'a str>,
    /// Origins the console is also reached at (`--public-url`): behind a proxy that rewrites
    /// `Host`, the browser's `Origin` names the public address, not the one this process sees.
    pub public: &'a [String],
}

/// Refuses a request that a browser says came from another site.
pub fn check_origin(r: &RequestOrigin) -> Result<(), CsrfRefusal> {
    if let Some(site) = r.fetch_site {
        if !matches!(site, "same-origin" | "none") {
            return Err(CsrfRefusal::CrossSite);
        }
    }
    if let Some(origin) = r.origin {
        let authority = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        let own_host =
            matches!((authority, r.host), (Some(a), Some(host)) if a.eq_ignore_ascii_case(host));
        let public = r.public.iter().any(|p| p.eq_ignore_ascii_case(origin));
        if !own_host && !public {
            return Err(CsrfRefusal::ForeignOrigin);
        }
    }
    Ok(())
}

/// [`check_origin`], then the form's token against the session's, in constant time.
pub fn check_csrf(
    r: &RequestOrigin,
    expected: &str,
    sent: Option<&str>,
) -> Result<(), CsrfRefusal> {
    check_origin(r)?;
    let sent = sent.unwrap_or("");
    if sent.is_empty() || !bool::from(sent.as_bytes().ct_eq(expected.as_bytes())) {
        return Err(CsrfRefusal::BadToken);
    }
    Ok(())
}

/// Failed sign-ins per key (a user name or an address), in fixed windows.
#[derive(Debug)]
pub struct Throttle {
    /// Failures allowed in a window before further tries are refused.
    pub max_failures: u32,
    /// How long failures are counted (and a refusal lasts).
    pub window: Duration,
    /// Failures and the window's start, by key.
    failures: HashMap<String, (u32, Instant)>,
}

impl Throttle {
    pub fn new(max_failures: u32, window: Duration) -> Throttle {
        Throttle {
            max_failures: max_failures.max(1),
            window,
            failures: HashMap::new(),
        }
    }

    /// How long `key` must wait before trying again, if it is locked out.
    pub fn locked(&self, key: &str, now: Instant) -> Option<Duration> {
        let (n, since) = self.failures.get(key)?;
        let until = *since + self.window;
        (*n >= self.max_failures && until > now).then(|| until - now)
    }

    /// Counts a failed sign-in.
    pub fn fail(&mut self, key: &str, now: Instant) {
        if self.failures.len() > 100_000 {
            let w = self.window;
            self.failures.retain(|_, (_, since)| *since + w > now);
        }
        let e = self.failures.entry(key.to_string()).or_insert((0, now));
        if e.1 + self.window <= now {
            *e = (0, now);
        }
        e.0 += 1;
    }

    /// Forgets the failures of `key` (after a successful sign-in).
    pub fn clear(&mut self, key: &str) {
        self.failures.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer() -> Viewer {
        Viewer {
            name: "ana".into(),
            role: Role::Manager,
            access: Access::Sites(["site-001".to_string()].into()),
            csrf: random_token(),
        }
    }

    #[test]
    fn sessions_expire_and_close() {
        let t = Instant::now();
        let mut s = Sessions::default();
        let id = s.open(viewer(), t);
        assert_eq!(id.len(), 64);
        assert_eq!(s.get(&id, t).unwrap().name, "ana");
        assert!(s.get(&id, t + SESSION_TTL).is_none());
        assert!(s.get("forged", t).is_none());
        s.close(&id);
        assert!(s.get(&id, t).is_none());
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        let c = session_cookie(Some("abc"), true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Lax") && c.ends_with("Secure"));
        assert!(!session_cookie(Some("abc"), false).contains("Secure"));
        assert!(session_cookie(None, false).contains("Max-Age=0"));
        assert_eq!(
            cookie_value("a=1; vigil_session=xyz; b=2", COOKIE),
            Some("xyz")
        );
        assert_eq!(cookie_value("a=1", COOKIE), None);
    }

    #[test]
    fn csrf_needs_the_token_and_no_foreign_origin() {
        let own = RequestOrigin {
            host: Some("127.0.0.1:8080"),
            origin: Some("http://127.0.0.1:8080"),
            fetch_site: Some("same-origin"),
            public: &[],
        };
        assert_eq!(check_csrf(&own, "tok", Some("tok")), Ok(()));
        assert_eq!(
            check_csrf(&own, "tok", Some("tox")),
            Err(CsrfRefusal::BadToken)
        );
        assert_eq!(check_csrf(&own, "tok", None), Err(CsrfRefusal::BadToken));
        assert_eq!(check_csrf(&own, "", Some("")), Err(CsrfRefusal::BadToken));
        let foreign = RequestOrigin {
            origin: Some("https://evil.example"),
            fetch_site: None,
            ..own
        };
        assert_eq!(
            check_csrf(&foreign, "tok", Some("tok")),
            Err(CsrfRefusal::ForeignOrigin)
        );
        let null = RequestOrigin {
            origin: Some("null"),
            fetch_site: None,
            ..own
        };
        assert_eq!(check_origin(&null), Err(CsrfRefusal::ForeignOrigin));
        let cross = RequestOrigin {
            fetch_site: Some("cross-site"),
            ..own
        };
        assert_eq!(check_origin(&cross), Err(CsrfRefusal::CrossSite));
        // Behind a proxy that rewrites Host, the public origin is accepted.
        let public = ["https://console.example".to_string()];
        let proxied = RequestOrigin {
            host: Some("10.0.0.7:8080"),
            origin: Some("https://console.example"),
            fetch_site: Some("same-origin"),
            public: &public,
        };
        assert_eq!(check_csrf(&proxied, "tok", Some("tok")), Ok(()));
        let elsewhere = RequestOrigin {
            origin: Some("https://evil.example"),
            ..proxied
        };
        assert_eq!(check_origin(&elsewhere), Err(CsrfRefusal::ForeignOrigin));
        // A client that sends neither header (curl) needs only the token.
        let bare = RequestOrigin {
            host: Some("h"),
            ..Default::default()
        };
        assert_eq!(check_csrf(&bare, "tok", Some("tok")), Ok(()));
    }

    #[test]
    fn the_throttle_locks_after_failures_until_the_window_passes() {
        let t = Instant::now();
        let mut th = Throttle::new(3, Duration::from_secs(60));
        for _ in 0..2 {
            th.fail("ana", t);
        }
        assert!(th.locked("ana", t).is_none());
        th.fail("ana", t);
        assert_eq!(th.locked("ana", t), Some(Duration::from_secs(60)));
        assert!(th.locked("bo", t).is_none());
        assert!(th.locked("ana", t + Duration::from_secs(60)).is_none());
        // A new window starts afresh.
        th.fail("ana", t + Duration::from_secs(61));
        assert!(th.locked("ana", t + Duration::from_secs(61)).is_none());
        th.clear("ana");
        assert!(th.locked("ana", t).is_none());
    }
}
