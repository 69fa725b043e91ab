//! The shared file cache: a file is read once and its `Bytes` shared by every
//! transfer (a PXE storm of hundreds of clients fetching one initrd reads it
//! once). Keyed by path and version (size, mtime, inode), so a replaced file is
//! read afresh; bounded in total bytes, least recently used first out;
//! concurrent misses of one file wait for a single read.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::OnceCell;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Version {
    size: u64,
    mtime: Option<SystemTime>,
    ino: u64,
}

impl Version {
    fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(meta);
        #[cfg(not(unix))]
        let ino = 0;
        Self {
            size: meta.len(),
            mtime: meta.modified().ok(),
            ino,
        }
    }
}

#[derive(Debug)]
struct Entry {
    version: Version,
    cell: Arc<OnceCell<Bytes>>,
    last_used: u64,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<PathBuf, Entry>,
    used: u64,
    tick: u64,
}

/// A bounded cache of whole files.
#[derive(Debug)]
pub struct FileCache {
    inner: Mutex<Inner>,
    budget: u64,
    max_file: u64,
    loads: AtomicU64,
}

impl FileCache {
    /// At most `budget` bytes in total; files over `max_file` are not cached.
    pub fn new(budget: u64, max_file: u64) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            budget,
            max_file: max_file.min(budget),
            loads: AtomicU64::new(0),
        }
    }

    /// How many times a file was actually read from disk.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// Bytes currently held (or reserved by reads in flight).
    pub fn used(&self) -> u64 {
        self.inner.lock().unwrap().used
    }

    /// The contents of `path` (described by `meta`), from memory or read once;
    /// `Ok(None)` if the file is too large to cache.
    pub async fn get(
        &self,
        path: &Path,
        meta: &std::fs::Metadata,
    ) -> std::io::Result<Option<Bytes>> {
        let version = Version::of(meta);
        if version.size > self.max_file {
            return Ok(None);
        }
        let cell = {
            let mut g = self.inner.lock().unwrap();
            g.tick += 1;
            let tick = g.tick;
            let fresh = match g.map.get_mut(path) {
                Some(e) if e.version == version => {
                    e.last_used = tick;
                    None
                }
                _ => Some(()),
            };
            if fresh.is_some() {
                if let Some(old) = g.map.remove(path) {
                    g.used -= old.version.size;
                }
                while g.used + version.size > self.budget {
                    let Some(victim) = g
                        .map
                        .iter()
                        .min_by_key(|(_, e)| e.last_used)
                        .map(|(k, _)| k.clone())
                    else {
                        break;
                    };
                    let e = g.map.remove(&victim).expect("present");
                    g.used -= e.version.size;
                }
                g.used += version.size;
                g.map.insert(
                    path.to_owned(),
                    Entry {
                        version,
                        cell: Arc::new(OnceCell::new()),
                        last_used: tick,
                    },
                );
            }
            g.map[path].cell.clone()
        };
        let bytes = cell
            .get_or_try_init(|| async {
                self.loads.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(path = %path.display(), size = version.size, "cache load");
                let p = path.to_owned();
                let data = tokio::task::spawn_blocking(move || std::fs::read(p))
                    .await
                    .map_err(std::io::Error::other)??;
                Ok::<_, std::io::Error>(Bytes::from(data))
            })
            .await;
        match bytes {
            Ok(b) => Ok(Some(b.clone())),
            Err(e) => {
                let mut g = self.inner.lock().unwrap();
                if g.map.get(path).is_some_and(|e| Arc::ptr_eq(&e.cell, &cell)) {
                    let e = g.map.remove(path).expect("present");
                    g.used -= e.version.size;
                }
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_misses_read_once_and_budget_holds() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        std::fs::write(&a, vec![1u8; 100_000]).unwrap();
        let cache = Arc::new(FileCache::new(150_000, 150_000));
        let meta = std::fs::metadata(&a).unwrap();
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (c, a, m) = (cache.clone(), a.clone(), meta.clone());
            tasks.push(tokio::spawn(async move {
                c.get(&a, &m).await.unwrap().unwrap().len()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 100_000);
        }
        assert_eq!(cache.loads(), 1);
        // A second file does not fit beside the first: the first is evicted.
        let b = dir.path().join("b");
        std::fs::write(&b, vec![2u8; 80_000]).unwrap();
        let mb = std::fs::metadata(&b).unwrap();
        assert_eq!(cache.get(&b, &mb).await.unwrap().unwrap()[0], 2);
        assert_eq!(cache.used(), 80_000);
        assert_eq!(cache.loads(), 2);
        // Replacing the file (new version) reads it again.
        std::fs::write(&b, vec![3u8; 80_001]).unwrap();
        let mb = std::fs::metadata(&b).unwrap();
        assert_eq!(cache.get(&b, &mb).await.unwrap().unwrap()[0], 3);
        assert_eq!(cache.loads(), 3);
        // Too large to cache.
        let c = dir.path().join("c");
        std::fs::write(&c, vec![0u8; 200_000]).unwrap();
        let mc = std::fs::metadata(&c).unwrap();
        assert!(cache.get(&c, &mc).await.unwrap().is_none());
    }
}
