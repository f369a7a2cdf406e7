//! The disk tier: an SQLite file under the data dir (WAL), bounded in
//! bytes (least recently used entries go first), entries expiring with the
//! TTL, kept across restarts. One writer thread owns every write, so
//! requests never wait on the disk to store; reads run on the blocking
//! pool.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};

use super::core::{CacheOpenError, Invalidation};
use super::memory::Stored;
use crate::auth::now_ms;

const SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS cache_entries (
        key TEXT PRIMARY KEY,
        model TEXT NOT NULL,
        value BLOB NOT NULL,
        size INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER NOT NULL
    );
    CREATE INDEX IF NOT EXISTS cache_entries_by_model ON cache_entries (model);
    CREATE INDEX IF NOT EXISTS cache_entries_by_use ON cache_entries (used_at);
    CREATE INDEX IF NOT EXISTS cache_entries_by_expiry ON cache_entries (expires_at);
";

/// Writes waiting for the writer thread; beyond this, stores are dropped
/// (counted) rather than queued without bound.
const QUEUE: usize = 4096;

enum Write {
    Put { key: String, stored: Stored, expires_at: i64 },
    Touch { key: String, at: i64 },
    Remove(Invalidation),
    Sweep,
    Flush(tokio::sync::oneshot::Sender<()>),
}

pub struct DiskTier {
    reader: Arc<Mutex<Connection>>,
    writes: Sender<Write>,
    bytes: Arc<AtomicU64>,
    entries: Arc<AtomicU64>,
}

fn open_connection(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "NORMAL")?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(connection)
}

impl DiskTier {
    /// Opens (or creates) `<directory>/cache.db`, holding at most
    /// `capacity_bytes` of values.
    pub fn open(directory: &Path, capacity_bytes: u64) -> Result<Self, CacheOpenError> {
        crate::files::private_directory(directory)?;
        let path = directory.join("cache.db");
        crate::files::private_file(&path)?;
        let failed = |source: rusqlite::Error| CacheOpenError::Database { path: path.clone(), source };
        let writer = open_connection(&path).map_err(failed)?;
        writer.execute_batch(SCHEMA).map_err(failed)?;
        let (bytes, entries): (i64, i64) = writer
            .query_row("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM cache_entries", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .map_err(failed)?;
        let reader = open_connection(&path).map_err(failed)?;
        let (writes, queue) = crossbeam_channel::bounded(QUEUE);
        let tier = Self {
            reader: Arc::new(Mutex::new(reader)),
            writes,
            bytes: Arc::new(AtomicU64::new(bytes.max(0) as u64)),
            entries: Arc::new(AtomicU64::new(entries.max(0) as u64)),
        };
        let (bytes, entries) = (tier.bytes.clone(), tier.entries.clone());
        std::thread::Builder::new()
            .name("cache-disk".to_owned())
            .spawn(move || Writer { connection: writer, capacity_bytes, bytes, entries }.run(&queue))
            .map_err(CacheOpenError::Writer)?;
        Ok(tier)
    }

    pub async fn get(&self, key: &str) -> Option<Stored> {
        let reader = self.reader.clone();
        let owned = key.to_owned();
        let now = now_ms();
        let found = actix_rt::task::spawn_blocking(move || {
            let connection = reader.lock();
            connection
                .prepare_cached("SELECT model, value FROM cache_entries WHERE key = ?1 AND expires_at > ?2")
                .and_then(|mut statement| {
                    statement
                        .query_row(params![owned, now], |row| {
                            Ok((row.get::<_, String>(0)?, row.get::<_, Vec<u8>>(1)?))
                        })
                        .optional()
                })
        })
        .await;
        match found {
            Ok(Ok(Some((model, value)))) => {
                self.send(Write::Touch { key: key.to_owned(), at: now });
                Some(Stored { model: model.into(), value: value.into() })
            }
            Ok(Ok(None)) => None,
            Ok(Err(error)) => {
                metrics::counter!("blaze_cache_errors_total", "tier" => "disk").increment(1);
                tracing::warn!(error = %error, "cache: cannot read the disk tier");
                None
            }
            Err(_) => None,
        }
    }

    /// Stores a value off the request path.
    pub fn put(&self, key: &str, stored: Stored, ttl_ms: i64) {
        self.send(Write::Put { key: key.to_owned(), stored, expires_at: now_ms() + ttl_ms });
    }

    pub fn remove(&self, invalidation: Invalidation) {
        self.send(Write::Remove(invalidation));
    }

    pub fn sweep(&self) {
        self.send(Write::Sweep);
    }

    /// Waits until every write sent before is on disk.
    pub async fn flush(&self) {
        let (done, wait) = tokio::sync::oneshot::channel();
        if self.writes.send(Write::Flush(done)).is_ok() {
            let _ = wait.await;
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    pub fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    fn send(&self, write: Write) {
        if let Err(TrySendError::Full(_)) = self.writes.try_send(write) {
            metrics::counter!("blaze_cache_dropped_writes_total", "tier" => "disk").increment(1);
        }
    }
}

struct Writer {
    connection: Connection,
    capacity_bytes: u64,
    bytes: Arc<AtomicU64>,
    entries: Arc<AtomicU64>,
}

impl Writer {
    fn run(mut self, queue: &Receiver<Write>) {
        while let Ok(write) = queue.recv() {
            let result = match write {
                Write::Put { key, stored, expires_at } => self.put(&key, &stored, expires_at),
                Write::Touch { key, at } => self
                    .connection
                    .execute("UPDATE cache_entries SET used_at = ?2 WHERE key = ?1", params![key, at])
                    .map(drop),
                Write::Remove(invalidation) => self.remove(&invalidation),
                Write::Sweep => self.sweep(),
                Write::Flush(done) => {
                    let _ = done.send(());
                    Ok(())
                }
            };
            if let Err(error) = result {
                metrics::counter!("blaze_cache_errors_total", "tier" => "disk").increment(1);
                tracing::warn!(error = %error, "cache: a disk tier write failed");
            }
        }
    }

    fn put(&mut self, key: &str, stored: &Stored, expires_at: i64) -> rusqlite::Result<()> {
        let size = stored.value.len() as u64;
        if size > self.capacity_bytes {
            return Ok(());
        }
        let transaction = self.connection.transaction()?;
        let replaced: Option<i64> = transaction
            .query_row("SELECT size FROM cache_entries WHERE key = ?1", [key], |row| row.get(0))
            .optional()?;
        transaction.execute(
            "INSERT OR REPLACE INTO cache_entries (key, model, value, size, expires_at, used_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![key, &*stored.model, &*stored.value, size as i64, expires_at, now_ms()],
        )?;
        transaction.commit()?;
        match replaced {
            Some(old) => {
                self.bytes.fetch_sub(old.max(0) as u64, Ordering::Relaxed);
            }
            None => {
                self.entries.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
        self.evict()
    }

    /// Drops the least recently used entries until the tier fits.
    fn evict(&mut self) -> rusqlite::Result<()> {
        while self.bytes.load(Ordering::Relaxed) > self.capacity_bytes {
            let victims: Vec<(String, i64)> = {
                let mut statement = self
                    .connection
                    .prepare_cached("SELECT key, size FROM cache_entries ORDER BY used_at LIMIT 32")?;
                let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            if victims.is_empty() {
                return self.recount();
            }
            for (key, size) in victims {
                self.connection.execute("DELETE FROM cache_entries WHERE key = ?1", [&key])?;
                self.bytes.fetch_sub(size.max(0) as u64, Ordering::Relaxed);
                self.entries.fetch_sub(1, Ordering::Relaxed);
                metrics::counter!("blaze_cache_evictions_total", "tier" => "disk").increment(1);
                if self.bytes.load(Ordering::Relaxed) <= self.capacity_bytes {
                    break;
                }
            }
        }
        Ok(())
    }

    fn remove(&mut self, invalidation: &Invalidation) -> rusqlite::Result<()> {
        match invalidation {
            Invalidation::All => self.connection.execute("DELETE FROM cache_entries", [])?,
            Invalidation::Model(model) => {
                self.connection.execute("DELETE FROM cache_entries WHERE model = ?1", [model])?
            }
            Invalidation::Key(key) => {
                self.connection.execute("DELETE FROM cache_entries WHERE key = ?1", [key])?
            }
        };
        self.recount()
    }

    fn sweep(&mut self) -> rusqlite::Result<()> {
        self.connection.execute("DELETE FROM cache_entries WHERE expires_at <= ?1", [now_ms()])?;
        self.recount()
    }

    fn recount(&mut self) -> rusqlite::Result<()> {
        let (bytes, entries): (i64, i64) = self.connection.query_row(
            "SELECT COALESCE(SUM(size), 0), COUNT(*) FROM cache_entries",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        self.bytes.store(bytes.max(0) as u64, Ordering::Relaxed);
        self.entries.store(entries.max(0) as u64, Ordering::Relaxed);
        Ok(())
    }
}
