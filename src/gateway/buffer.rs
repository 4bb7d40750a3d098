//! Store and forward: every frame the gateway accepts is written here before it is sent, and
//! removed when the broker has acknowledged it. While the link to Kafka is down, frames pile up
//! on disk, not in memory; when it returns they go out in the order they were written (so in
//! order per camera), with their original `captured_at` and headers. A restart, even a
//! SIGKILL, keeps them: the next run sends them first.
//!
//! The store is [redb](https://www.redb.org), an embedded, crash-safe key-value store (one file,
//! `frames.redb` under `--buffer-dir`; each write transaction is made durable before it
//! returns). Keys are a sequence number of the buffer's own; a second table holds each frame's
//! camera, capture time and size, so that opening the buffer reads the index, not the images.
//!
//! Bounded: past `--buffer-max-bytes`, or for frames older than `--buffer-max-age-secs`, the
//! oldest frames not yet handed to the producer are dropped first, and each drop is reported to
//! the caller to be counted. Frames handed to the producer (at most the publisher's window) are
//! not dropped: they are already in the producer's memory and will be delivered.
//!
//! Synchronous and blocking (disk): called from the blocking pool only.

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;

use redb::{Database, ReadableTableMetadata, TableDefinition};

use crate::contract::error::{Domain, StageError};

/// A stored frame: (site, camera, zone, captured_at ms, seq, JPEG).
type Stored<'a> = (&'a str, &'a str, Option<&'a str>, i64, u64, &'a [u8]);
/// The frames: id → [`Stored`].
const FRAMES: TableDefinition<u64, Stored> = TableDefinition::new("frames");
/// The index: id → (camera, captured_at ms, JPEG bytes).
const INDEX: TableDefinition<u64, (&str, i64, u64)> = TableDefinition::new("index");

/// The store's page cache: frames are written once and read back once, so a small one will do.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

/// A frame as published: the record's key and headers, and the JPEG.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The `site` header.
    pub site: String,
    /// The key and `camera` header.
    pub camera: String,
    /// The `zone` header, if any.
    pub zone: Option<String>,
    /// The `captured_at` header: the gateway's clock when it was captured, ms since the epoch.
    pub captured_at_ms: i64,
    /// The `seq` header.
    pub seq: u64,
    /// The record's value.
    pub jpeg: Vec<u8>,
}

/// The buffer's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// JPEG bytes held at most.
    pub max_bytes: u64,
    /// Frames older than this (by `captured_at`) are dropped, in ms.
    pub max_age_ms: i64,
}

/// Why a frame was dropped from the buffer (the `reason` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Eviction {
    /// Over `--buffer-max-bytes`.
    Full,
    /// Older than `--buffer-max-age-secs`.
    Aged,
}

impl Eviction {
    pub fn reason(self) -> &'static str {
        match self {
            Eviction::Full => "buffer_full",
            Eviction::Aged => "buffer_age",
        }
    }
}

/// A frame dropped unsent: its camera and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The camera it came from (for the metric's label).
    pub camera: String,
    /// Why.
    pub why: Eviction,
}

/// What the buffer knows of a frame without reading it.
#[derive(Debug, Clone)]
struct Entry {
    /// The buffer's key.
    id: u64,
    /// For the drop's label.
    camera: String,
    /// For the age limit.
    captured_at_ms: i64,
    /// For the size limit.
    bytes: u64,
}

/// The on-disk buffer.
pub struct Buffer {
    /// The store.
    db: Database,
    /// Bounds.
    limits: Limits,
    /// The key the next frame gets.
    next_id: u64,
    /// Frames not yet handed to the producer, oldest first.
    waiting: VecDeque<Entry>,
    /// Frames handed to the producer and not yet acknowledged, by id.
    handed: BTreeMap<u64, Entry>,
    /// JPEG bytes held (waiting and handed).
    bytes: u64,
}

fn err(what: &str, e: impl std::fmt::Display) -> StageError {
    StageError::stop("buffer", Domain::External, format!("{what}: {e}"))
}

impl Buffer {
    /// Opens (or creates) the buffer in `dir`; frames left by an earlier run are kept, waiting.
    pub fn open(dir: &Path, limits: Limits) -> Result<Buffer, StageError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| err(&format!("cannot create --buffer-dir {}", dir.display()), e))?;
        let path = dir.join("frames.redb");
        // redb caches up to 1 GiB by default; frames are written once and read once.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| err(&format!("{}", path.display()), e))?;
        let txn = db.begin_write().map_err(|e| err("open", e))?;
        txn.open_table(FRAMES).map_err(|e| err("open", e))?;
        txn.open_table(INDEX).map_err(|e| err("open", e))?;
        txn.commit().map_err(|e| err("open", e))?;
        let mut waiting = VecDeque::new();
        let mut bytes = 0;
        {
            let read = db.begin_read().map_err(|e| err("read", e))?;
            let index = read.open_table(INDEX).map_err(|e| err("read", e))?;
            for row in index.range::<u64>(..).map_err(|e| err("read", e))? {
                let (k, v) = row.map_err(|e| err("read", e))?;
                let (camera, at, n) = v.value();
                bytes += n;
                waiting.push_back(Entry {
                    id: k.value(),
                    camera: camera.to_string(),
                    captured_at_ms: at,
                    bytes: n,
                });
            }
        }
        let next_id = waiting.back().map_or(0, |e| e.id + 1);
        Ok(Buffer {
            db,
            limits,
            next_id,
            waiting,
            handed: BTreeMap::new(),
            bytes,
        })
    }

    /// Frames held (waiting and handed).
    pub fn len(&self) -> usize {
        self.waiting.len() + self.handed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// JPEG bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Capture time of the oldest frame held, if any.
    pub fn oldest_ms(&self) -> Option<i64> {
        let handed = self.handed.values().next().map(|e| e.captured_at_ms);
        let waiting = self.waiting.front().map(|e| e.captured_at_ms);
        handed.into_iter().chain(waiting).min()
    }

    /// Frames waiting to be handed to the producer.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Writes `frames` (in order, in one durable transaction), then drops what is over the
    /// limits, oldest first; returns the drops.
    pub fn append(&mut self, frames: &[Frame], now_ms: i64) -> Result<Vec<Dropped>, StageError> {
        let txn = self.db.begin_write().map_err(|e| err("write", e))?;
        let mut added = Vec::with_capacity(frames.len());
        {
            let mut data = txn.open_table(FRAMES).map_err(|e| err("write", e))?;
            let mut index = txn.open_table(INDEX).map_err(|e| err("write", e))?;
            for (i, f) in frames.iter().enumerate() {
                let id = self.next_id + i as u64;
                let value = (
                    f.site.as_str(),
                    f.camera.as_str(),
                    f.zone.as_deref(),
                    f.captured_at_ms,
                    f.seq,
                    f.jpeg.as_slice(),
                );
                data.insert(id, value).map_err(|e| err("write", e))?;
                let n = f.jpeg.len() as u64;
                index
                    .insert(id, (f.camera.as_str(), f.captured_at_ms, n))
                    .map_err(|e| err("write", e))?;
                added.push(Entry {
                    id,
                    camera: f.camera.clone(),
                    captured_at_ms: f.captured_at_ms,
                    bytes: n,
                });
            }
        }
        self.next_id += frames.len() as u64;
        for e in added {
            self.bytes += e.bytes;
            self.waiting.push_back(e);
        }
        let dropped = self.evict(&txn, now_ms)?;
        txn.commit().map_err(|e| err("commit", e))?;
        Ok(dropped)
    }

    /// Drops frames older than the age limit (without new frames arriving); returns the drops.
    pub fn expire(&mut self, now_ms: i64) -> Result<Vec<Dropped>, StageError> {
        let stale = self
            .waiting
            .front()
            .is_some_and(|e| now_ms - e.captured_at_ms > self.limits.max_age_ms);
        if !stale {
            return Ok(Vec::new());
        }
        let txn = self.db.begin_write().map_err(|e| err("write", e))?;
        let dropped = self.evict(&txn, now_ms)?;
        txn.commit().map_err(|e| err("commit", e))?;
        Ok(dropped)
    }

    fn evict(
        &mut self,
        txn: &redb::WriteTransaction,
        now_ms: i64,
    ) -> Result<Vec<Dropped>, StageError> {
        let mut dropped = Vec::new();
        let mut data = txn.open_table(FRAMES).map_err(|e| err("write", e))?;
        let mut index = txn.open_table(INDEX).map_err(|e| err("write", e))?;
        loop {
            let why = match self.waiting.front() {
                Some(e) if now_ms - e.captured_at_ms > self.limits.max_age_ms => Eviction::Aged,
                Some(_) if self.bytes > self.limits.max_bytes => Eviction::Full,
                _ => break,
            };
            let Some(e) = self.waiting.pop_front() else {
                break;
            };
            data.remove(e.id).map_err(|x| err("write", x))?;
            index.remove(e.id).map_err(|x| err("write", x))?;
            self.bytes -= e.bytes;
            dropped.push(Dropped {
                camera: e.camera,
                why,
            });
        }
        Ok(dropped)
    }

    /// Hands the oldest waiting frames to the caller (to be sent): at most `max_frames`, and
    /// at most `max_bytes` unless the first frame alone is larger. They stay on disk until
    /// [`remove`](Self::remove)d.
    pub fn take(
        &mut self,
        max_frames: usize,
        max_bytes: u64,
    ) -> Result<Vec<(u64, Frame)>, StageError> {
        let mut ids = Vec::new();
        let mut total = 0;
        for e in self.waiting.iter().take(max_frames) {
            if !ids.is_empty() && total + e.bytes > max_bytes {
                break;
            }
            total += e.bytes;
            ids.push(e.id);
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let read = self.db.begin_read().map_err(|e| err("read", e))?;
        let data = read.open_table(FRAMES).map_err(|e| err("read", e))?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let row = data.get(id).map_err(|e| err("read", e))?.ok_or_else(|| {
                StageError::stop(
                    "buffer",
                    Domain::Internal,
                    format!("frame {id} is in the index but not stored"),
                )
            })?;
            let (site, camera, zone, at, seq, jpeg) = row.value();
            out.push((
                id,
                Frame {
                    site: site.to_string(),
                    camera: camera.to_string(),
                    zone: zone.map(str::to_string),
                    captured_at_ms: at,
                    seq,
                    jpeg: jpeg.to_vec(),
                },
            ));
            if let Some(e) = self.waiting.pop_front() {
                self.handed.insert(e.id, e);
            }
        }
        Ok(out)
    }

    /// Removes handed frames (acknowledged, or refused for good), in one transaction.
    pub fn remove(&mut self, ids: &[u64]) -> Result<(), StageError> {
        if ids.is_empty() {
            return Ok(());
        }
        let txn = self.db.begin_write().map_err(|e| err("write", e))?;
        {
            let mut data = txn.open_table(FRAMES).map_err(|e| err("write", e))?;
            let mut index = txn.open_table(INDEX).map_err(|e| err("write", e))?;
            for id in ids {
                data.remove(*id).map_err(|e| err("write", e))?;
                index.remove(*id).map_err(|e| err("write", e))?;
                if let Some(e) = self.handed.remove(id) {
                    self.bytes -= e.bytes;
                }
            }
        }
        txn.commit().map_err(|e| err("commit", e))?;
        Ok(())
    }

    /// Frames stored, by the store's own count (a consistency check for the tests).
    pub fn stored(&self) -> Result<u64, StageError> {
        let read = self.db.begin_read().map_err(|e| err("read", e))?;
        let data = read.open_table(FRAMES).map_err(|e| err("read", e))?;
        data.len().map_err(|e| err("read", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(camera: &str, seq: u64, at: i64, n: usize) -> Frame {
        Frame {
            site: "s".into(),
            camera: camera.into(),
            zone: (seq % 2 == 0).then(|| "kitchen".into()),
            captured_at_ms: at,
            seq,
            jpeg: vec![seq as u8; n],
        }
    }

    const ROOMY: Limits = Limits {
        max_bytes: 1 << 30,
        max_age_ms: 3_600_000,
    };

    #[test]
    fn frames_come_back_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let sent: Vec<Frame> = (0..10)
            .map(|i| frame(["a", "b"][i % 2], i as u64, 1000, 10))
            .collect();
        {
            let mut b = Buffer::open(dir.path(), ROOMY).unwrap();
            assert!(b.append(&sent[..6], 1000).unwrap().is_empty());
            assert!(b.append(&sent[6..], 1000).unwrap().is_empty());
            let first = b.take(3, u64::MAX).unwrap();
            assert_eq!(
                first.iter().map(|(_, f)| f.clone()).collect::<Vec<_>>(),
                sent[..3]
            );
            b.remove(&[first[0].0, first[1].0]).unwrap();
            assert_eq!((b.len(), b.bytes()), (8, 80));
            // Dropped without a clean close: the third was handed but never acknowledged.
        }
        let mut b = Buffer::open(dir.path(), ROOMY).unwrap();
        assert_eq!(
            (b.len(), b.waiting(), b.bytes(), b.stored().unwrap()),
            (8, 8, 80, 8)
        );
        let rest: Vec<Frame> = b
            .take(100, u64::MAX)
            .unwrap()
            .into_iter()
            .map(|(_, f)| f)
            .collect();
        assert_eq!(
            rest,
            sent[2..],
            "the unacknowledged frame first, then the rest, in order"
        );
        b.append(&[frame("a", 99, 1000, 1)], 1000).unwrap();
        let (id, f) = b.take(1, 0).unwrap().remove(0);
        assert_eq!((f.seq, id), (99, 10), "ids go on after a reopen");
    }

    #[test]
    fn over_the_size_limit_the_oldest_waiting_frames_go_first() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 100,
            max_age_ms: 3_600_000,
        };
        let mut b = Buffer::open(dir.path(), limits).unwrap();
        b.append(
            &(0..5).map(|i| frame("a", i, 1000, 20)).collect::<Vec<_>>(),
            1000,
        )
        .unwrap();
        let handed = b.take(1, u64::MAX).unwrap();
        assert_eq!(handed[0].1.seq, 0);
        let dropped = b.append(&[frame("b", 5, 1000, 30)], 1000).unwrap();
        // 130 bytes: frames 1 and 2 (the oldest waiting; 0 is with the producer) are dropped.
        assert_eq!(
            dropped,
            vec![
                Dropped {
                    camera: "a".into(),
                    why: Eviction::Full
                };
                2
            ]
        );
        assert_eq!((b.len(), b.bytes(), b.stored().unwrap()), (4, 90, 4));
        let left: Vec<u64> = b
            .take(10, u64::MAX)
            .unwrap()
            .iter()
            .map(|(_, f)| f.seq)
            .collect();
        assert_eq!(left, [3, 4, 5]);
    }

    #[test]
    fn frames_older_than_the_age_limit_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits {
            max_bytes: 1 << 20,
            max_age_ms: 60_000,
        };
        let mut b = Buffer::open(dir.path(), limits).unwrap();
        b.append(&[frame("a", 0, 0, 5), frame("a", 1, 30_000, 5)], 30_000)
            .unwrap();
        assert!(b.expire(60_000).unwrap().is_empty());
        let dropped = b.expire(70_000).unwrap();
        assert_eq!(
            dropped,
            vec![Dropped {
                camera: "a".into(),
                why: Eviction::Aged
            }]
        );
        assert_eq!((b.len(), b.stored().unwrap()), (1, 1));
        assert_eq!(Eviction::Aged.reason(), "buffer_age");
    }

    #[test]
    fn a_take_stops_at_its_byte_budget_but_always_hands_one() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Buffer::open(dir.path(), ROOMY).unwrap();
        b.append(&(0..4).map(|i| frame("a", i, 1, 50)).collect::<Vec<_>>(), 1)
            .unwrap();
        assert_eq!(b.take(10, 10).unwrap().len(), 1);
        assert_eq!(b.take(10, 100).unwrap().len(), 2);
        assert_eq!(b.take(10, 100).unwrap().len(), 1);
        assert!(b.take(10, 100).unwrap().is_empty());
    }
}
