//! A minimal HTTP/1.1 client over tokio for the two plain-`http://` services vigil talks to: the
//! alert webhook and the schema registry. One request per connection (`Connection: close`),
//! with a timeout on connecting and on reading the answer. For https, put a TLS proxy in front.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A parsed `http://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `host:port`, port 80 when the URL gives none.
    pub hostport: String,
    /// Path (and query) as given, `""` for none.
    pub path: String,
}

impl Url {
    /// Parses `url`; `flag` names the option it came from, for the error.
    pub fn parse(url: &str, flag: &str) -> Result<Url, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{flag} {url}: only http:// URLs are supported (put a TLS proxy in front for https)")
        })?;
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if hostport.is_empty() {
            return Err(format!("{flag} {url}: no host"));
        }
        let hostport = if hostport.contains(':') {
            hostport.to_string()
        } else {
            format!("{hostport}:80")
        };
        Ok(Url {
            hostport,
            path: path.to_string(),
        })
    }

    /// The URL's own path (`/` for none) when `suffix` is empty; otherwise the path without its
    /// trailing slash followed by `suffix` (which starts with `/`).
    pub fn path_with(&self, suffix: &str) -> String {
        if suffix.is_empty() {
            return if self.path.is_empty() {
                "/".into()
            } else {
                self.path.clone()
            };
        }
        format!("{}{suffix}", self.path.trim_end_matches('/'))
    }
}

/// An answer: status code and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// The status line, for error messages.
    pub status_line: String,
    pub body: Vec<u8>,
}

impl Response {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Sends one request and reads the whole answer.
pub async fn request(
    method: &str,
    url: &Url,
    path: &str,
    content_type: &str,
    body: &[u8],
    timeout: Duration,
) -> std::io::Result<Response> {
    let mut s = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(&url.hostport))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nAccept: application/vnd.schemaregistry.v1+json, application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        url.hostport,
        body.len()
    );
    s.write_all(head.as_bytes()).await?;
    s.write_all(body).await?;
    let mut buf = Vec::new();
    tokio::time::timeout(timeout, s.read_to_end(&mut buf))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "answer timed out"))??;
    parse_response(&buf).ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP answer")
    })
}

/// Splits a complete HTTP/1.x answer (read to EOF) into status and body, undoing chunked
/// transfer encoding.
fn parse_response(buf: &[u8]) -> Option<Response> {
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..split]);
    let mut lines = head.lines();
    let status_line = lines.next()?.to_string();
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let raw = &buf[split + 4..];
    let body = if chunked { dechunk(raw)? } else { raw.to_vec() };
    Some(Response {
        status,
        status_line,
        body,
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_field = std::str::from_utf8(&raw[..eol]).ok()?;
        let size = usize::from_str_radix(size_field.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("http://127.0.0.1:8081", "--x").unwrap();
        assert_eq!(u.hostport, "127.0.0.1:8081");
        assert_eq!(u.path_with(""), "/");
        assert_eq!(u.path_with("/schemas/ids/3"), "/schemas/ids/3");
        let u = Url::parse("http://registry/base/", "--x").unwrap();
        assert_eq!(u.hostport, "registry:80");
        assert_eq!(u.path_with("/subjects"), "/base/subjects");
        assert_eq!(u.path_with(""), "/base/");
        assert!(Url::parse("https://x", "--x").unwrap_err().contains("--x"));
        assert!(Url::parse("http:///p", "--x").is_err());
    }

    #[test]
    fn answers_plain_and_chunked() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, b"{}".as_slice()));
        let r = parse_response(
            b"HTTP/1.1 409 Conflict\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((r.status, r.body.as_slice()), (409, b"abcde".as_slice()));
        assert!(!r.ok());
        assert!(parse_response(b"garbage").is_none());
    }
}
