//! Where evidence pictures are kept: any `object_store` backend named by a URL. `file:///dir`
//! (the default in the demo and tests) is a local directory; `s3://bucket/prefix` is S3 or an
//! S3-compatible store, with credentials and region from the usual `AWS_*` environment
//! variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` for
//! MinIO and the like).
//!
//! Keys are made from the event id alone (`<site>/<camera>/<event id>.jpg`), so a replay after
//! a crash writes the same object again instead of a second one.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::{Path, PathPart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// An evidence store and the URL its keys are shown under.
#[derive(Clone)]
pub struct EvidenceStore {
    store: Arc<dyn ObjectStore>,
    /// The URL as given, without a trailing slash: `uri()` appends keys to it.
    base: String,
    /// The prefix inside the store (an S3 URL's path).
    prefix: Path,
}

impl std::fmt::Debug for EvidenceStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EvidenceStore")
            .field("base", &self.base)
            .finish()
    }
}

impl EvidenceStore {
    /// Opens the store a URL names (`file:///abs/dir` or `s3://bucket[/prefix]`); the flag
    /// names the option in errors.
    pub fn open(url: &str, flag: &str) -> Result<EvidenceStore, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("{flag} {url}: {e}"))?;
        let base = url.trim_end_matches('/').to_string();
        match parsed.scheme() {
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| format!("{flag} {url}: not an absolute file:/// path"))?;
                std::fs::create_dir_all(&dir)
                    .map_err(|e| format!("{flag} {url}: cannot create {}: {e}", dir.display()))?;
                let fs = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .map_err(|e| format!("{flag} {url}: {e}"))?;
                Ok(EvidenceStore {
                    store: Arc::new(fs),
                    base,
                    prefix: Path::default(),
                })
            }
            "s3" => {
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(url)
                    .build()
                    .map_err(|e| format!("{flag} {url}: {e}"))?;
                Ok(EvidenceStore {
                    store: Arc::new(s3),
                    base,
                    prefix: Path::from(parsed.path().trim_matches('/')),
                })
            }
            other => Err(format!(
                "{flag} {url}: `{other}://` is not supported; use file:///DIR or s3://BUCKET/PREFIX"
            )),
        }
    }

    /// The key of an event's picture. Parts are percent-encoded where a character is not
    /// allowed in a key, so any id is safe.
    pub fn key(&self, site: &str, camera: &str, event_id: &str) -> Path {
        let file = format!("{event_id}.jpg");
        let parts = [
            PathPart::from(site),
            PathPart::from(camera),
            PathPart::from(file.as_str()),
        ];
        Path::from_iter(self.prefix.parts().chain(parts))
    }

    /// The URI of a key, as events carry it.
    pub fn uri(&self, key: &Path) -> String {
        let rel = key
            .as_ref()
            .strip_prefix(self.prefix.as_ref())
            .unwrap_or(key.as_ref())
            .trim_start_matches('/');
        format!("{}/{}", self.base, rel)
    }

    /// The key a URI of this store names (`None` for a URI of another store).
    pub fn key_of(&self, uri: &str) -> Option<Path> {
        let rel = uri.strip_prefix(&self.base)?.trim_start_matches('/');
        let prefix = self.prefix.as_ref();
        let full = if prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{prefix}/{rel}")
        };
        Path::parse(full).ok()
    }

    pub async fn put(&self, key: &Path, jpeg: Vec<u8>) -> object_store::Result<()> {
        self.store
            .put(key, PutPayload::from(jpeg))
            .await
            .map(|_| ())
    }

    pub async fn get(&self, key: &Path) -> object_store::Result<Vec<u8>> {
        Ok(self.store.get(key).await?.bytes().await?.to_vec())
    }

    /// Deletes pictures older than `max_age`; returns how many. For the local directory (an
    /// object store in production has lifecycle rules for this).
    pub async fn prune(&self, max_age: Duration) -> object_store::Result<usize> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(max_age).unwrap_or(chrono::Duration::MAX);
        let prefix = (!self.prefix.as_ref().is_empty()).then_some(&self.prefix);
        let mut listing = self.store.list(prefix);
        let mut old = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta?;
            if meta.last_modified < cutoff {
                old.push(meta.location);
            }
        }
        for key in &old {
            self.store.delete(key).await?;
        }
        Ok(old.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deterministic_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/evidence", dir.path().display());
        let s = EvidenceStore::open(&url, "--evidence-url").unwrap();
        let k = s.key("site-1", "cam/7", "ev-123");
        assert_eq!(k, s.key("site-1", "cam/7", "ev-123"));
        let uri = s.uri(&k);
        assert!(
            uri.starts_with(&url) && uri.ends_with("ev-123.jpg"),
            "{uri}"
        );
        assert_eq!(s.key_of(&uri), Some(k.clone()));
        assert_eq!(s.key_of("s3://elsewhere/x.jpg"), None);
        s.put(&k, b"one".to_vec()).await.unwrap();
        s.put(&k, b"two".to_vec()).await.unwrap();
        assert_eq!(s.get(&k).await.unwrap(), b"two");
        let files: Vec<_> = walk(dir.path());
        assert_eq!(
            files.len(),
            1,
            "a second write replaces the object: {files:?}"
        );
        assert_eq!(s.prune(Duration::from_secs(3600)).await.unwrap(), 0);
        assert_eq!(s.prune(Duration::ZERO).await.unwrap(), 1);
        assert!(s.get(&k).await.is_err());
    }

    fn walk(p: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(p).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                out.extend(walk(&path));
            } else {
                out.push(path);
            }
        }
        out
    }

    #[test]
    fn unsupported_urls_are_named() {
        let e = EvidenceStore::open("ftp://x/y", "--evidence-url").unwrap_err();
        assert!(e.contains("--evidence-url") && e.contains("ftp"), "{e}");
        assert!(EvidenceStore::open("file://relative", "--evidence-url").is_err());
    }
}
