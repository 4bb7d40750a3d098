//! The camera file (`vigil gateway --cameras-file site.toml`): the site, its cameras and their
//! limits, read and checked at start-up so that a mistake stops the gateway before it runs,
//! with a message naming the camera and the key.
//!
//! ```toml
//! site = "site-001"
//! credentials_file = "/etc/vigil/cameras.env"   # optional: NAME=value lines for ${NAME}
//! max_fps = 20.0                                # optional: the whole site, frames/s
//! max_bytes_per_sec = 2_000_000                 # optional: the whole site, bytes/s
//!
//! [[camera]]
//! id = "cam-01"
//! zone = "kitchen"
//! url = "rtsp://${CAM01_USER}:${CAM01_PASS}@10.0.0.21:554/stream1"
//! fps = 1.0
//! width = 1280              # optional: resize (keeping aspect) before encoding
//! quality = 85              # optional: JPEG quality
//! max_bytes_per_sec = 400000  # optional: this camera's cap
//! ```
//!
//! Credentials never sit in the file: `${NAME}` in a URL is replaced by the environment
//! variable `NAME`, or else by `NAME=value` from `credentials_file`. The resolved URL lives in a
//! [`CameraUrl`], whose `Display` and `Debug` show it [`redact`]ed (no userinfo, no query
//! values), so no log line or metric can carry a password.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::contract::frame::check_id;

/// Highest sampling rate a camera may ask for: a gateway samples stills, it does not record.
pub const MAX_FPS: f64 = 30.0;

/// The camera file as written (before checks).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SiteFile {
    /// The site (restaurant) id every frame carries.
    site: String,
    /// `NAME=value` lines that fill `${NAME}` in URLs when the environment has no `NAME`.
    credentials_file: Option<PathBuf>,
    /// Cap on the site's frames per second (all cameras).
    max_fps: Option<f64>,
    /// Cap on the site's JPEG bytes per second (all cameras), for the uplink.
    max_bytes_per_sec: Option<u64>,
    /// The cameras, kept as tables so that each one's errors can name it.
    #[serde(default)]
    camera: Vec<toml::Table>,
}

/// One `[[camera]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CameraEntry {
    /// The camera id: the frames' key and `camera` header.
    id: String,
    /// The `zone` header (kitchen, dining, prep…), if any.
    zone: Option<String>,
    /// rtsp://, http(s):// (a JPEG snapshot), a video file or a directory of images.
    url: String,
    /// Frames sampled per second.
    #[serde(default = "default_fps")]
    fps: f64,
    /// Resize to this width before encoding (keeping aspect).
    width: Option<u32>,
    /// JPEG quality of re-encoded frames.
    quality: Option<i32>,
    /// Cap on this camera's JPEG bytes per second.
    max_bytes_per_sec: Option<u64>,
}

fn default_fps() -> f64 {
    1.0
}

/// How a camera's frames are obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    /// A stream OpenCV reads continuously (RTSP, RTMP…), sampled at the camera's rate.
    Stream,
    /// A JPEG fetched over HTTP(S) at the camera's rate.
    Snapshot,
    /// A video file, played at its own pace and looped.
    File,
    /// A directory of images, shown in turn and looped.
    Directory,
}

/// A camera's resolved URL; shown only redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct CameraUrl(String);

impl CameraUrl {
    /// The URL with its credentials, for the capture only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CameraUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

impl fmt::Debug for CameraUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CameraUrl({})", redact(&self.0))
    }
}

/// One camera, checked.
#[derive(Debug, Clone)]
pub struct Camera {
    /// The camera id (frames' key and `camera` header).
    pub id: String,
    /// The `zone` header, if any.
    pub zone: Option<String>,
    /// Where its frames come from (credentials resolved).
    pub url: CameraUrl,
    /// What kind of source the URL names.
    pub kind: SourceKind,
    /// Frames sampled per second.
    pub fps: f64,
    /// Resize to this width before encoding, if set.
    pub width: Option<u32>,
    /// JPEG quality of re-encoded frames.
    pub quality: i32,
    /// Cap on this camera's bytes per second, if any.
    pub max_bytes_per_sec: Option<u64>,
}

/// The camera file, checked.
#[derive(Debug, Clone)]
pub struct Site {
    /// The site id.
    pub site: String,
    /// Cap on the site's frames per second, if any.
    pub max_fps: Option<f64>,
    /// Cap on the site's bytes per second, if any.
    pub max_bytes_per_sec: Option<u64>,
    /// The cameras, in file order.
    pub cameras: Vec<Camera>,
}

/// Reads and checks a camera file; `env` looks up environment variables.
pub fn load(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Site, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--cameras-file {}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, env).map_err(|e| format!("--cameras-file {}: {e}", path.display()))
}

/// Parses and checks a camera file's text; relative paths are taken from `base`.
pub fn parse(
    text: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Site, String> {
    let file: SiteFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
    check_id("site", &file.site).map_err(|e| format!("key `site`: {}", e.detail))?;
    let credentials = match &file.credentials_file {
        Some(p) => {
            let p = base.join(p);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("key `credentials_file` ({}): {e}", p.display()))?;
            parse_credentials(&text)
                .map_err(|e| format!("key `credentials_file` ({}): {e}", p.display()))?
        }
        None => HashMap::new(),
    };
    let lookup = |name: &str| env(name).or_else(|| credentials.get(name).cloned());
    if let Some(f) = file.max_fps {
        positive("key `max_fps`", f)?;
    }
    if file.max_bytes_per_sec == Some(0) {
        return Err("key `max_bytes_per_sec`: must be above 0".into());
    }
    if file.camera.is_empty() {
        return Err("no [[camera]]: a site needs at least one camera".into());
    }
    let mut cameras = Vec::new();
    let mut seen = HashSet::new();
    for (i, table) in file.camera.into_iter().enumerate() {
        let name = match table.get("id").and_then(|v| v.as_str()) {
            Some(id) => format!("camera `{id}`"),
            None => format!("camera #{}", i + 1),
        };
        let camera = check_camera(table, base, &lookup).map_err(|e| format!("{name}: {e}"))?;
        if !seen.insert(camera.id.clone()) {
            return Err(format!("{name}: key `id`: listed twice"));
        }
        cameras.push(camera);
    }
    Ok(Site {
        site: file.site,
        max_fps: file.max_fps,
        max_bytes_per_sec: file.max_bytes_per_sec,
        cameras,
    })
}

fn positive(what: &str, v: f64) -> Result<(), String> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(format!("{what}: must be a positive number, got {v}"))
    }
}

fn check_camera(
    table: toml::Table,
    base: &Path,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Camera, String> {
    let e: CameraEntry = toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.message().to_string())?;
    check_id("camera", &e.id).map_err(|r| format!("key `id`: {}", r.detail))?;
    if let Some(z) = &e.zone {
        check_id("zone", z).map_err(|r| format!("key `zone`: {}", r.detail))?;
    }
    positive("key `fps`", e.fps)?;
    if e.fps > MAX_FPS {
        return Err(format!("key `fps`: at most {MAX_FPS}, got {}", e.fps));
    }
    if let Some(w) = e.width {
        if !(16..=8192).contains(&w) {
            return Err(format!("key `width`: between 16 and 8192, got {w}"));
        }
    }
    let quality = e.quality.unwrap_or(85);
    if !(1..=100).contains(&quality) {
        return Err(format!("key `quality`: between 1 and 100, got {quality}"));
    }
    if e.max_bytes_per_sec == Some(0) {
        return Err("key `max_bytes_per_sec`: must be above 0".into());
    }
    let url = expand(&e.url, lookup).map_err(|m| format!("key `url`: {m}"))?;
    let kind = kind_of(&url, base).map_err(|m| format!("key `url` ({}): {m}", redact(&url)))?;
    let url = match kind {
        SourceKind::File | SourceKind::Directory => base.join(&url).to_string_lossy().into_owned(),
        _ => url,
    };
    Ok(Camera {
        id: e.id,
        zone: e.zone,
        url: CameraUrl(url),
        kind,
        fps: e.fps,
        width: e.width,
        quality,
        max_bytes_per_sec: e.max_bytes_per_sec,
    })
}

fn kind_of(url: &str, base: &Path) -> Result<SourceKind, String> {
    if let Some((scheme, _)) = url.split_once("://") {
        return match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => Ok(SourceKind::Snapshot),
            "rtsp" | "rtsps" | "rtmp" | "rtmps" | "udp" | "rtp" | "srt" => Ok(SourceKind::Stream),
            other => Err(format!(
                "scheme `{other}` is not one a gateway reads (rtsp, http, https, …)"
            )),
        };
    }
    let p = base.join(url);
    if p.is_dir() {
        Ok(SourceKind::Directory)
    } else if p.is_file() {
        Ok(SourceKind::File)
    } else {
        Err("no such file or directory, and not a URL".into())
    }
}

/// Replaces each `${NAME}` with its value; an unknown or malformed name is an error naming it
/// (never a value).
pub fn expand(template: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "`${` without a closing `}`".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{name}}}`: a variable name is letters, digits and _"
            ));
        }
        let value = lookup(name).ok_or_else(|| {
            format!("`${{{name}}}` is neither in the environment nor in credentials_file")
        })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `NAME=value` lines (`#` comments and blank lines skipped), as an env file.
pub fn parse_credentials(text: &str) -> Result<HashMap<String, String>, String> {
    let mut out = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        let (k, v) = t
            .split_once('=')
            .ok_or_else(|| format!("line {}: not NAME=value", i + 1))?;
        out.insert(k.trim().to_string(), v.trim().to_string());
    }
    Ok(out)
}

/// The URL fit to print: userinfo replaced by `***`, and every query value too (snapshot URLs
/// often carry `?user=…&pwd=…`). Not a URL (a path): unchanged.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = match authority.rfind('@') {
        Some(i) => format!("***@{}", &authority[i + 1..]),
        None => authority.to_string(),
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let mut out = format!("{scheme}://{host}{path}");
    if let Some(q) = query {
        let q = q.split('#').next().unwrap_or_default();
        let shown: Vec<String> = q
            .split('&')
            .map(|kv| match kv.split_once('=') {
                Some((k, _)) => format!("{k}=***"),
                None => kv.to_string(),
            })
            .collect();
        out.push('?');
        out.push_str(&shown.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn site(text: &str) -> Result<Site, String> {
        parse(text, Path::new("."), &no_env)
    }

    #[test]
    fn the_issue_s_file_reads() {
        let s = site(
            r#"
            site = "site-001"
            [[camera]]
            id = "cam-01"
            zone = "kitchen"
            url = "rtsp://10.0.0.21:554/stream1"
            fps = 1.0
            [[camera]]
            id = "cam-02"
            url = "https://10.0.0.22/snapshot.jpg"
            width = 640
            quality = 70
            "#,
        )
        .unwrap();
        assert_eq!(s.site, "site-001");
        assert_eq!(s.cameras.len(), 2);
        assert_eq!(s.cameras[0].kind, SourceKind::Stream);
        assert_eq!(s.cameras[0].zone.as_deref(), Some("kitchen"));
        assert_eq!(s.cameras[1].kind, SourceKind::Snapshot);
        assert_eq!((s.cameras[1].fps, s.cameras[1].quality), (1.0, 70));
    }

    #[test]
    fn errors_name_the_camera_and_the_key() {
        let head = "site = \"s\"\n[[camera]]\nid = \"cam-07\"\nurl = \"rtsp://h/x\"\n";
        let e = site(&format!("{head}fsp = 2.0\n")).unwrap_err();
        assert!(e.contains("camera `cam-07`") && e.contains("fsp"), "{e}");
        let e = site(&format!("{head}fps = 0.0\n")).unwrap_err();
        assert!(e.contains("camera `cam-07`: key `fps`"), "{e}");
        let e = site(&format!("{head}quality = 101\n")).unwrap_err();
        assert!(e.contains("camera `cam-07`: key `quality`"), "{e}");
        let e = site("site = \"s\"\n[[camera]]\nurl = \"rtsp://h/x\"\n").unwrap_err();
        assert!(e.contains("camera #1") && e.contains("id"), "{e}");
        let e = site(&format!("{head}{}", &head[11..])).unwrap_err();
        assert!(e.contains("camera `cam-07`: key `id`: listed twice"), "{e}");
        let e = site("site = \"s\"\n[[camera]]\nid = \"c\"\nurl = \"ftp://h/x\"\n").unwrap_err();
        assert!(e.contains("key `url`") && e.contains("ftp"), "{e}");
        let e = site("site = \"s\"\nsurprise = 1\n").unwrap_err();
        assert!(e.contains("surprise"), "{e}");
        assert!(site("site = \"s\"\n")
            .unwrap_err()
            .contains("at least one camera"));
    }

    #[test]
    fn credentials_come_from_the_environment_or_the_file_and_never_show() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("creds.env"), "# cams\nCAM_PASS=s3cret\n").unwrap();
        let text = "site = \"s\"\ncredentials_file = \"creds.env\"\n[[camera]]\nid = \"c\"\n\
                    url = \"rtsp://${CAM_USER}:${CAM_PASS}@10.0.0.21/s?token=${CAM_PASS}\"\n";
        let env = |n: &str| (n == "CAM_USER").then(|| "admin".to_string());
        let s = parse(text, dir.path(), &env).unwrap();
        let url = &s.cameras[0].url;
        assert_eq!(url.expose(), "rtsp://admin:s3cret@10.0.0.21/s?token=s3cret");
        assert_eq!(url.to_string(), "rtsp://***@10.0.0.21/s?token=***");
        assert!(!format!("{s:?}").contains("s3cret"));
        let e = parse(text, dir.path(), &no_env).unwrap_err();
        assert!(e.contains("${CAM_USER}") && !e.contains("s3cret"), "{e}");
    }

    #[test]
    fn redaction_keeps_what_an_operator_needs() {
        assert_eq!(redact("rtsp://10.0.0.1:554/s1"), "rtsp://10.0.0.1:554/s1");
        assert_eq!(redact("rtsp://u:p@h:554/s1"), "rtsp://***@h:554/s1");
        assert_eq!(redact("http://u@h"), "http://***@h");
        assert_eq!(
            redact("http://h/snap.jpg?user=a&pwd=b"),
            "http://h/snap.jpg?user=***&pwd=***"
        );
        assert_eq!(redact("/srv/video.mp4"), "/srv/video.mp4");
        assert_eq!(redact("rtsp://a:b@c@h/x"), "rtsp://***@h/x");
    }

    #[test]
    fn expansion_refuses_unclosed_and_odd_names() {
        let env = |_: &str| Some("v".to_string());
        assert_eq!(expand("a${X}b${Y_2}", &env).unwrap(), "avbv");
        assert!(expand("a${X", &env).is_err());
        assert!(expand("a${X-Y}", &env).is_err());
        assert_eq!(expand("no vars", &no_env).unwrap(), "no vars");
    }
}
