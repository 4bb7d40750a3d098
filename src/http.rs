//! Outgoing HTTP(S) for the two services vigil calls: the alert webhook and the schema
//! registry. `reqwest` with rustls: the system's root certificates plus an optional CA file
//! (`--ca-file` / `VIGIL_CA_FILE`, for a private CA), a timeout on every call, credentials
//! (basic auth, a bearer token or a custom header) that never reach a log, and retries with
//! jittered exponential backoff (`backon`) for failures worth retrying.

use std::path::{Path, PathBuf};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use reqwest::header::{HeaderName, HeaderValue};

/// A secret (password, token): its `Debug` shows `***`, so configurations can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The secret in `env` if set, else the first line of `file` if given (so that it can live
    /// in a mounted secret file rather than the environment).
    pub fn from_env_or_file(
        env: &str,
        file: Option<&Path>,
        flag: &str,
    ) -> Result<Option<Secret>, String> {
        if let Ok(v) = std::env::var(env) {
            if !v.is_empty() {
                return Ok(Some(Secret(v)));
            }
        }
        let Some(path) = file else { return Ok(None) };
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{flag} {}: {e}", path.display()))?;
        let line = text.lines().next().unwrap_or("").trim().to_string();
        if line.is_empty() {
            return Err(format!("{flag} {}: the file is empty", path.display()));
        }
        Ok(Some(Secret(line)))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// How a request proves who sends it.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    None,
    /// HTTP basic authentication (the registry's `basic.auth.user.info`, `user:password`).
    Basic { user: String, password: Secret },
    /// `Authorization: Bearer <token>`.
    Bearer(Secret),
    /// A custom header carrying the token (`X-Api-Key: <token>`).
    Header { name: String, value: Secret },
}

impl Auth {
    /// Basic auth from `user:password`.
    pub fn basic(user_info: &Secret, flag: &str) -> Result<Auth, String> {
        let (user, password) = user_info
            .expose()
            .split_once(':')
            .ok_or_else(|| format!("{flag}: expected USER:PASSWORD"))?;
        Ok(Auth::Basic {
            user: user.to_string(),
            password: Secret::new(password),
        })
    }
}

/// Transport settings shared by the HTTP services.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    /// A PEM file of CA certificates trusted besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

/// What went wrong with a call; messages name the URL, never the credentials.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "{url}: TLS failed: {detail} (a private CA can be trusted with --ca-file / VIGIL_CA_FILE)"
    )]
    Tls { url: String, detail: String },
    #[error("{url} unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{url} refused the credentials: {status} {body}")]
    Unauthorized {
        url: String,
        status: u16,
        body: String,
    },
    #[error("{url} answered {status} {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

impl HttpError {
    /// Connection failures, timeouts, 5xx and 429 may pass; TLS and 4xx will not.
    pub fn retryable(&self) -> bool {
        match self {
            HttpError::Unreachable { .. } => true,
            HttpError::Status { status, .. } => *status >= 500 || *status == 429,
            HttpError::Tls { .. } | HttpError::Unauthorized { .. } => false,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            HttpError::Status { status, .. } | HttpError::Unauthorized { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

/// One endpoint (a base URL with its client and credentials).
#[derive(Debug, Clone)]
pub struct Endpoint {
    client: reqwest::Client,
    base: reqwest::Url,
    auth: Auth,
}

/// An answer: status and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Endpoint {
    /// `url` must be `http://` or `https://`; `flag` names the option it came from. Fails on an
    /// unreadable or invalid CA file, naming it.
    pub fn new(
        url: &str,
        flag: &str,
        tls: &TlsSettings,
        auth: Auth,
        timeout: Duration,
    ) -> Result<Endpoint, String> {
        let base = reqwest::Url::parse(url).map_err(|e| format!("{flag} {url}: {e}"))?;
        if !matches!(base.scheme(), "http" | "https") || base.host_str().is_none() {
            return Err(format!(
                "{flag} {url}: expected an http:// or https:// URL with a host"
            ));
        }
        // Credentials that cannot travel in a header are refused now, not retried later.
        match &auth {
            Auth::Header { name, value } => {
                HeaderName::try_from(name.as_str())
                    .map_err(|e| format!("{flag}: header name `{name}`: {e}"))?;
                HeaderValue::from_str(value.expose())
                    .map_err(|_| format!("{flag}: the token is not a valid header value"))?;
            }
            Auth::Bearer(t) => {
                HeaderValue::from_str(&format!("Bearer {}", t.expose()))
                    .map_err(|_| format!("{flag}: the token is not a valid header value"))?;
            }
            Auth::Basic { .. } | Auth::None => {}
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &tls.ca_file {
            let pem =
                std::fs::read(path).map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| format!("--ca-file {}: not PEM certificates: {e}", path.display()))?;
            if certs.is_empty() {
                return Err(format!(
                    "--ca-file {}: holds no certificate",
                    path.display()
                ));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b
            .build()
            .map_err(|e| format!("{flag}: cannot set up the HTTP client: {e}"))?;
        Ok(Endpoint { client, base, auth })
    }

    /// The base URL without credentials or query, for messages.
    pub fn display(&self) -> String {
        let mut u = self.base.clone();
        let _ = u.set_username("");
        let _ = u.set_password(None);
        u.set_query(None);
        u.to_string()
    }

    /// The base URL's path without its trailing slash followed by `suffix` (`""`: the URL
    /// itself).
    fn url_with(&self, suffix: &str) -> reqwest::Url {
        if suffix.is_empty() {
            return self.base.clone();
        }
        let mut u = self.base.clone();
        let path = format!("{}{suffix}", self.base.path().trim_end_matches('/'));
        u.set_path(&path);
        u
    }

    /// One request; non-2xx answers are errors.
    pub async fn send(
        &self,
        method: reqwest::Method,
        suffix: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<Answer, HttpError> {
        let url = self.url_with(suffix);
        let shown = {
            let mut u = url.clone();
            let _ = u.set_password(None);
            u.to_string()
        };
        let mut req = self
            .client
            .request(method, url)
            .header(
                reqwest::header::ACCEPT,
                "application/vnd.schemaregistry.v1+json, application/json",
            )
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body.to_vec());
        req = match &self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password.expose())),
            Auth::Bearer(t) => req.bearer_auth(t.expose()),
            Auth::Header { name, value } => {
                let mut v =
                    HeaderValue::from_str(value.expose()).map_err(|_| HttpError::Unreachable {
                        url: shown.clone(),
                        detail: format!("the value for header {name} is not a valid header value"),
                    })?;
                v.set_sensitive(true);
                req.header(name.as_str(), v)
            }
        };
        let resp = req.send().await.map_err(|e| classify(&shown, &e))?;
        let status = resp.status().as_u16();
        let body = resp
            .bytes()
            .await
            .map_err(|e| classify(&shown, &e))?
            .to_vec();
        if (200..300).contains(&status) {
            return Ok(Answer { status, body });
        }
        let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        Err(if status == 401 || status == 403 {
            HttpError::Unauthorized {
                url: shown,
                status,
                body: text,
            }
        } else {
            HttpError::Status {
                url: shown,
                status,
                body: text,
            }
        })
    }

    /// [`Endpoint::send`], retrying retryable failures with jittered exponential backoff
    /// (from `retry.first` doubling to `retry.max_delay`) at most `retry.attempts` times in
    /// all; `on_retry` sees each failure that will be retried.
    pub async fn send_with_retries(
        &self,
        method: reqwest::Method,
        suffix: &str,
        content_type: &str,
        body: &[u8],
        retry: &RetryPolicy,
        on_retry: impl Fn(&HttpError, Duration),
    ) -> Result<Answer, HttpError> {
        let op = || self.send(method.clone(), suffix, content_type, body);
        op.retry(retry.backoff())
            .sleep(tokio::time::sleep)
            .when(HttpError::retryable)
            .notify(|e, d| on_retry(e, d))
            .await
    }
}

/// Retry schedule for HTTP calls.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts in all (1: no retry).
    pub attempts: u32,
    /// First delay.
    pub first: Duration,
    /// Longest delay.
    pub max_delay: Duration,
}

impl RetryPolicy {
    fn backoff(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(self.first)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(self.attempts.saturating_sub(1) as usize)
    }
}

/// Sorts a reqwest failure into TLS or unreachable, with the whole cause chain (reqwest's own
/// message says only "error sending request").
fn classify(url: &str, e: &reqwest::Error) -> HttpError {
    let mut chain = vec![e.to_string()];
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        chain.push(s.to_string());
        src = s.source();
    }
    chain.dedup();
    let detail = chain.join(": ");
    let l = detail.to_ascii_lowercase();
    if l.contains("certificate") || l.contains("tls") || l.contains("handshake") {
        HttpError::Tls {
            url: url.to_string(),
            detail,
        }
    } else {
        HttpError::Unreachable {
            url: url.to_string(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str) -> Result<Endpoint, String> {
        Endpoint::new(
            url,
            "--x",
            &TlsSettings::default(),
            Auth::None,
            Duration::from_secs(1),
        )
    }

    #[test]
    fn urls_are_checked_and_joined() {
        let e = ep("https://registry.example:8081/base/").unwrap();
        assert_eq!(
            e.url_with("/subjects").as_str(),
            "https://registry.example:8081/base/subjects"
        );
        assert_eq!(
            e.url_with("").as_str(),
            "https://registry.example:8081/base/"
        );
        assert!(ep("ftp://x").unwrap_err().contains("--x"));
        assert!(ep("not a url").unwrap_err().contains("--x"));
        let e = ep("http://user:pw@h:1/p?token=x").unwrap();
        assert!(!e.display().contains("pw") && !e.display().contains("token"));
    }

    #[test]
    fn a_bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate").unwrap();
        let tls = TlsSettings {
            ca_file: Some(path),
        };
        let err = Endpoint::new("https://h", "--x", &tls, Auth::None, Duration::from_secs(1))
            .unwrap_err();
        assert!(err.contains("--ca-file") && err.contains("ca.pem"), "{err}");
        let tls = TlsSettings {
            ca_file: Some(dir.path().join("missing.pem")),
        };
        let err = Endpoint::new("https://h", "--x", &tls, Auth::None, Duration::from_secs(1))
            .unwrap_err();
        assert!(err.contains("missing.pem"), "{err}");
    }

    #[test]
    fn tokens_that_cannot_be_sent_are_refused_at_start() {
        let with = |auth| {
            Endpoint::new(
                "https://h",
                "--webhook",
                &TlsSettings::default(),
                auth,
                Duration::from_secs(1),
            )
        };
        let err = with(Auth::Bearer(Secret::new("two\nlines"))).unwrap_err();
        assert!(err.contains("--webhook") && !err.contains("two"), "{err}");
        assert!(with(Auth::Header {
            name: "X-Api-Key".into(),
            value: Secret::new("bad\r\nvalue"),
        })
        .is_err());
        assert!(with(Auth::Header {
            name: "bad name".into(),
            value: Secret::new("ok"),
        })
        .is_err());
        assert!(with(Auth::Bearer(Secret::new("fine-token"))).is_ok());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let a = Auth::basic(&Secret::new("vigil:hunter2"), "--x").unwrap();
        let shown = format!("{a:?}");
        assert!(
            shown.contains("vigil") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(Auth::basic(&Secret::new("nocolon"), "--x").is_err());
        assert!(!format!("{:?}", Auth::Bearer(Secret::new("t0ken"))).contains("t0ken"));
    }

    #[test]
    fn which_failures_are_retried() {
        let s = |status| HttpError::Status {
            url: String::new(),
            status,
            body: String::new(),
        };
        assert!(s(503).retryable() && s(429).retryable() && !s(400).retryable());
        assert!(!HttpError::Unauthorized {
            url: String::new(),
            status: 401,
            body: String::new()
        }
        .retryable());
    }
}
