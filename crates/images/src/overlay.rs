//! Copy-on-write overlay: a [`BlockDevice`] whose writes land in its own file
//! (format in [`crate::format`]) while unwritten clusters read through to a
//! read-only base (a raw file or another overlay, so chains of any depth).
//!
//! # Concurrency
//! The cluster map lives in memory as one `AtomicU8` per cluster. Reads and
//! writes of allocated clusters take no lock at all: they load the state and do
//! positional I/O. Only a state change takes a lock, one of [`ALLOC_SHARDS`]
//! mutexes picked by cluster index, so that two writers to one unallocated
//! cluster do not both copy it up (the second sees `Data` after the first).
//!
//! # Crash consistency
//! Invariant: on disk, a map entry that says `Data` only ever points at data
//! that was made durable before that entry was. Steps:
//! 1. A cluster becomes `Data` only after its whole content (base copy merged
//!    with the new bytes, or zeroes merged with them) has been written with
//!    `pwrite`; the state store happens after (release ordering).
//! 2. `flush` first *snapshots* the dirty map pages (clearing their dirty bit
//!    before reading the states), then `fdatasync`s, which makes every data
//!    write the snapshot refers to durable, then writes the snapshot pages and
//!    `fdatasync`s again. States that change during the flush are not in the
//!    snapshot; their pages are dirty again and go out with the next flush.
//! 3. Map entries are single bytes, so a torn page write leaves each entry
//!    either its old value (the state at the previous flush, still valid:
//!    clusters are never moved, and a trimmed cluster's old data may read as
//!    zero, which is what the unflushed trim asked for) or its new value.
//!
//! So after `flush` returns, every write that completed before it survives a
//! `kill -9` or power loss, and the image is consistent at every instant.

use std::fs::{File, OpenOptions};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use crate::device::{check_range, Allocation, BlockDevice, Extent};
use crate::format::{
    ClusterState, Header, HeaderError, DEFAULT_CLUSTER_BITS, HEADER_LEN, MAP_PAGE,
};
use crate::lock::{lock, LockKind};
use crate::{chain, Error, Result};

/// Number of allocation mutexes; a power of two well above the number of
/// threads a target runs, so unrelated clusters rarely share one.
pub const ALLOC_SHARDS: usize = 64;

/// `block_status` stops after this many extents (callers ask again from where
/// the answer ends), so one query cannot build an unbounded list.
pub const MAX_EXTENTS: usize = 4096;

/// Options for a new overlay.
#[derive(Debug, Clone, Copy)]
pub struct CreateOptions {
    /// Virtual size; default: the base's size (must not be smaller).
    pub size: Option<u64>,
    /// log2 of the cluster size; default [`DEFAULT_CLUSTER_BITS`] (64 KiB).
    pub cluster_bits: u32,
}

impl Default for CreateOptions {
    fn default() -> Self {
        Self {
            size: None,
            cluster_bits: DEFAULT_CLUSTER_BITS,
        }
    }
}

/// A copy-on-write overlay device.
pub struct Overlay {
    file: File,
    path: Option<PathBuf>,
    base: Option<Arc<dyn BlockDevice>>,
    header: Header,
    bits: u32,
    states: Box<[AtomicU8]>,
    dirty: Box<[AtomicBool]>,
    alloc_locks: Box<[Mutex<()>]>,
    flush_lock: Mutex<()>,
    read_only: bool,
    /// Whether flush makes anything durable. Throwaway overlays die with the
    /// attachment, so syncing them would be wasted I/O.
    durable: bool,
}

impl std::fmt::Debug for Overlay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overlay")
            .field("path", &self.path)
            .field("size", &self.header.size)
            .field("cluster_size", &self.header.cluster_size())
            .field("read_only", &self.read_only)
            .field("base", &self.base)
            .finish()
    }
}

fn format_err(path: Option<&Path>, problem: impl Into<String>) -> Error {
    Error::Format {
        path: path
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("<memory>")),
        problem: problem.into(),
    }
}

impl Overlay {
    /// Creates a new, empty overlay file at `path` (which must not exist) on
    /// `base` (opened read-only; `None`: an overlay over nothing, reads zero).
    /// The base path is stored relative when both files share a directory, so
    /// a directory of images can be moved as a whole.
    pub fn create(path: &Path, base: Option<&Path>, opts: CreateOptions) -> Result<Self> {
        Self::create_with(path, base, opts, true)
    }

    /// Like [`Overlay::create`], but nothing about it is ever synced: for
    /// throwaway overlays, which no crash needs to preserve ([`Overlay::flush`]
    /// is then a no-op).
    pub fn create_volatile(path: &Path, base: Option<&Path>, opts: CreateOptions) -> Result<Self> {
        Self::create_with(path, base, opts, false)
    }

    fn create_with(
        path: &Path,
        base: Option<&Path>,
        opts: CreateOptions,
        durable: bool,
    ) -> Result<Self> {
        let base_dev = base.map(|b| chain::open_image(b, true)).transpose()?;
        let stored = base.map(|b| stored_base_path(path, b)).transpose()?;
        let size = resolve_size(&base_dev, opts)?;
        let header = Header::new(size, opts.cluster_bits, stored);
        // Build the file under a temporary name and link it into place, so
        // nobody ever opens a half-written overlay at `path`, and exactly one
        // of two racing creators wins (link fails with AlreadyExists).
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let tmp = path.with_file_name(format!(
            ".{}.new-{}-{}",
            path.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        let init = (|| -> Result<()> {
            lock(&file, LockKind::Exclusive, path)?;
            init_file(&file, &header)?;
            if durable {
                file.sync_all()?;
            }
            std::fs::hard_link(&tmp, path)?;
            Ok(())
        })();
        let _ = std::fs::remove_file(&tmp);
        init?;
        if durable {
            sync_parent(path)?;
        }
        Ok(Self::from_parts(
            file,
            Some(path.to_owned()),
            base_dev,
            header,
            false,
            durable,
        ))
    }

    /// An overlay kept in an anonymous memfd on `base` (benchmarks, tests).
    pub fn memory(base: Option<Arc<dyn BlockDevice>>, opts: CreateOptions) -> Result<Self> {
        let size = resolve_size(&base, opts)?;
        let header = Header::new(size, opts.cluster_bits, None);
        // SAFETY: valid C string; the fd is checked and then owned by `File`.
        let fd = unsafe { libc::memfd_create(c"anyboot-ovl".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Io(std::io::Error::last_os_error()));
        }
        // SAFETY: fresh descriptor nothing else owns.
        let file = unsafe { File::from_raw_fd(fd) };
        init_file(&file, &header)?;
        Ok(Self::from_parts(file, None, base, header, false, true))
    }

    /// Opens an existing overlay and its whole base chain. A writable open
    /// takes an exclusive lock ([`Error::Locked`] if another open holds any
    /// lock on it) and is refused for a frozen snapshot.
    pub fn open(path: &Path, read_only: bool) -> Result<Self> {
        Self::open_depth(path, read_only, 0)
    }

    pub(crate) fn open_depth(path: &Path, read_only: bool, depth: usize) -> Result<Self> {
        // Checked before opening: without root, opening a chmod-ed snapshot
        // for writing would fail with a less telling EACCES.
        if !read_only && chain::mode_is_frozen(path)? {
            return Err(Error::ReadOnly);
        }
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let header = read_header(&file, path)?;
        if !read_only && header.frozen() {
            return Err(Error::ReadOnly);
        }
        let kind = if read_only {
            LockKind::Shared
        } else {
            LockKind::Exclusive
        };
        lock(&file, kind, path)?;
        let len = file.metadata()?.len();
        if len < header.data_offset {
            return Err(format_err(
                Some(path),
                "file shorter than its header and map",
            ));
        }
        let base = match header.resolved_base(path) {
            Some(b) => Some(chain::open_depth(&b, true, depth + 1)?),
            None => None,
        };
        if let Some(b) = &base {
            if b.size() > header.size {
                return Err(format_err(Some(path), "base is larger than the overlay"));
            }
        }
        let mut map = vec![0u8; header.clusters() as usize];
        file.read_exact_at(&mut map, header.map_offset)?;
        if map.iter().any(|&b| ClusterState::from_byte(b).is_none()) {
            return Err(format_err(Some(path), "unknown cluster state in map"));
        }
        let ov = Self::from_parts(file, Some(path.to_owned()), base, header, read_only, true);
        for (s, b) in ov.states.iter().zip(map) {
            s.store(b, Ordering::Relaxed);
        }
        Ok(ov)
    }

    fn from_parts(
        file: File,
        path: Option<PathBuf>,
        base: Option<Arc<dyn BlockDevice>>,
        header: Header,
        read_only: bool,
        durable: bool,
    ) -> Self {
        let clusters = header.clusters() as usize;
        Self {
            file,
            path,
            base,
            bits: header.cluster_bits,
            states: (0..clusters).map(|_| AtomicU8::new(0)).collect(),
            dirty: (0..clusters.div_ceil(MAP_PAGE))
                .map(|_| AtomicBool::new(false))
                .collect(),
            alloc_locks: (0..ALLOC_SHARDS).map(|_| Mutex::new(())).collect(),
            flush_lock: Mutex::new(()),
            header,
            read_only,
            durable,
        }
    }

    /// Makes `flush` a no-op (throwaway overlays: nothing must survive).
    pub fn set_volatile(&mut self) {
        self.durable = false;
    }

    /// Whether `flush` makes writes durable (false for volatile overlays).
    pub fn is_durable(&self) -> bool {
        self.durable
    }

    /// The decoded header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The overlay file's path (none for memory overlays).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The base device, if any.
    pub fn base(&self) -> Option<&Arc<dyn BlockDevice>> {
        self.base.as_ref()
    }

    /// Number of clusters in each state: (data, zero).
    pub fn counts(&self) -> (u64, u64) {
        let mut data = 0;
        let mut zero = 0;
        for s in self.states.iter() {
            match s.load(Ordering::Relaxed) {
                1 => data += 1,
                2 => zero += 1,
                _ => {}
            }
        }
        (data, zero)
    }

    /// The state of cluster `ci` (panics past the last cluster).
    pub fn cluster_state(&self, ci: u64) -> ClusterState {
        ClusterState::from_byte(self.state(ci)).unwrap_or(ClusterState::Unallocated)
    }

    fn state(&self, ci: u64) -> u8 {
        self.states[ci as usize].load(Ordering::Acquire)
    }

    fn set_state(&self, ci: u64, s: ClusterState) {
        self.states[ci as usize].store(s as u8, Ordering::Release);
        self.dirty[ci as usize / MAP_PAGE].store(true, Ordering::Release);
    }

    fn cluster_size(&self) -> u64 {
        1 << self.bits
    }

    /// End (exclusive) of the run of clusters with the same state as `ci`,
    /// clipped to `limit` bytes.
    fn run_end(&self, ci: u64, state: u8, limit: u64) -> u64 {
        let mut c = ci + 1;
        while (c << self.bits) < limit && self.state(c) == state {
            c += 1;
        }
        (c << self.bits).min(limit)
    }

    /// Reads virtual bytes `[off, off + buf.len())` from the base (zeroes past
    /// its end, or without one).
    fn read_base(&self, buf: &mut [u8], off: u64) -> Result<()> {
        let Some(base) = &self.base else {
            buf.fill(0);
            return Ok(());
        };
        let bsize = base.size();
        let avail = bsize.saturating_sub(off).min(buf.len() as u64) as usize;
        if avail > 0 {
            base.read_at(&mut buf[..avail], off)?;
        }
        buf[avail..].fill(0);
        Ok(())
    }

    fn check_write(&self, offset: u64, len: u64) -> Result<()> {
        check_range(offset, len, self.header.size)?;
        if self.read_only {
            return Err(Error::ReadOnly);
        }
        Ok(())
    }

    /// Writes `data` at virtual `off` inside cluster `ci`, which was not `Data`
    /// when the caller looked: under the cluster's allocation lock, fill the
    /// whole cluster (base copy or zeroes merged with `data`), then publish.
    fn write_allocating(&self, ci: u64, data: &[u8], off: u64) -> Result<()> {
        let _g = self.alloc_locks[ci as usize % ALLOC_SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let state = self.state(ci);
        let data_off = self.header.data_offset;
        if state == ClusterState::Data as u8 {
            return self
                .file
                .write_all_at(data, data_off + off)
                .map_err(Error::from_io);
        }
        let cstart = ci << self.bits;
        let clen = self.cluster_size().min(self.header.size - cstart) as usize;
        if off == cstart && data.len() == clen {
            self.file
                .write_all_at(data, data_off + off)
                .map_err(Error::from_io)?;
        } else {
            let mut tmp = vec![0u8; clen];
            if state == ClusterState::Unallocated as u8 {
                self.read_base(&mut tmp, cstart)?;
            }
            let rel = (off - cstart) as usize;
            tmp[rel..rel + data.len()].copy_from_slice(data);
            self.file
                .write_all_at(&tmp, data_off + cstart)
                .map_err(Error::from_io)?;
        }
        self.set_state(ci, ClusterState::Data);
        Ok(())
    }

    fn write_inner(&self, buf: &[u8], offset: u64) -> Result<()> {
        let end = offset + buf.len() as u64;
        let mut off = offset;
        while off < end {
            let ci = off >> self.bits;
            let state = self.state(ci);
            let pos = (off - offset) as usize;
            if state == ClusterState::Data as u8 {
                // Allocated clusters: one pwrite for the whole run, no lock.
                let run_end = self.run_end(ci, state, end);
                let n = (run_end - off) as usize;
                self.file
                    .write_all_at(&buf[pos..pos + n], self.header.data_offset + off)
                    .map_err(Error::from_io)?;
                off = run_end;
            } else {
                let cend = ((ci + 1) << self.bits).min(end);
                let n = (cend - off) as usize;
                self.write_allocating(ci, &buf[pos..pos + n], off)?;
                off = cend;
            }
        }
        Ok(())
    }

    /// Makes `[offset, offset + len)` read as zeroes: whole clusters become
    /// `Zero` (their space is punched out), partial ones get zero bytes.
    fn zero_inner(&self, offset: u64, len: u64) -> Result<()> {
        let end = offset + len;
        let cs = self.cluster_size();
        let mut off = offset;
        while off < end {
            let ci = off >> self.bits;
            let cstart = ci << self.bits;
            let cend = (cstart + cs).min(self.header.size);
            let seg_end = cend.min(end);
            if off == cstart && seg_end == cend {
                // A run of whole clusters.
                let mut last = ci;
                while ((last + 1) << self.bits) < end
                    && (((last + 2) << self.bits).min(self.header.size)) <= end
                {
                    last += 1;
                }
                let run_end = ((last + 1) << self.bits).min(self.header.size);
                // Punch first, then publish `Zero` under each cluster's lock:
                // an allocation that wins the lock afterwards writes its whole
                // cluster after our punch, so a `Data` cluster never ends up
                // with punched-out contents.
                self.punch(
                    self.header.data_offset + cstart,
                    ((last + 1) << self.bits) - cstart,
                )?;
                for c in ci..=last {
                    let _g = self.alloc_locks[c as usize % ALLOC_SHARDS]
                        .lock()
                        .unwrap_or_else(|p| p.into_inner());
                    if self.state(c) != ClusterState::Zero as u8 {
                        self.set_state(c, ClusterState::Zero);
                    }
                }
                off = run_end;
            } else {
                if self.state(ci) != ClusterState::Zero as u8 {
                    let zeroes = vec![0u8; (seg_end - off) as usize];
                    self.write_inner(&zeroes, off)?;
                }
                off = seg_end;
            }
        }
        Ok(())
    }

    fn punch(&self, offset: u64, len: u64) -> Result<()> {
        // SAFETY: fallocate on our own descriptor with in-file offsets.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        // Space reclaim is an optimisation: a `Zero` cluster is never read
        // from the data area, so a filesystem without hole punching is fine.
        if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
            Ok(())
        } else {
            Err(Error::from_io(e))
        }
    }

    fn persist_map(&self) -> Result<()> {
        let _g = self.flush_lock.lock().unwrap_or_else(|p| p.into_inner());
        // 1. Snapshot dirty pages: clear the bit, then read the states.
        let mut pages: Vec<(usize, Vec<u8>)> = Vec::new();
        for (p, d) in self.dirty.iter().enumerate() {
            if d.swap(false, Ordering::AcqRel) {
                let start = p * MAP_PAGE;
                let end = (start + MAP_PAGE).min(self.states.len());
                let mut bytes = vec![0u8; MAP_PAGE];
                for (b, s) in bytes.iter_mut().zip(&self.states[start..end]) {
                    *b = s.load(Ordering::Acquire);
                }
                pages.push((p, bytes));
            }
        }
        let result = (|| {
            // 2. Every data write the snapshot points at becomes durable.
            self.file.sync_data().map_err(Error::from_io)?;
            if pages.is_empty() {
                return Ok(());
            }
            // 3. Then the map pages that point at it.
            for (p, bytes) in &pages {
                let at = self.header.map_offset + (p * MAP_PAGE) as u64;
                self.file.write_all_at(bytes, at).map_err(Error::from_io)?;
            }
            self.file.sync_data().map_err(Error::from_io)
        })();
        if result.is_err() {
            for (p, _) in &pages {
                self.dirty[*p].store(true, Ordering::Release);
            }
        }
        result
    }
}

impl BlockDevice for Overlay {
    fn size(&self) -> u64 {
        self.header.size
    }

    fn block_size(&self) -> u32 {
        self.base.as_ref().map(|b| b.block_size()).unwrap_or(512)
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        check_range(offset, buf.len() as u64, self.header.size)?;
        let end = offset + buf.len() as u64;
        let mut off = offset;
        while off < end {
            let ci = off >> self.bits;
            let state = self.state(ci);
            let run_end = self.run_end(ci, state, end);
            let pos = (off - offset) as usize;
            let chunk = &mut buf[pos..pos + (run_end - off) as usize];
            match ClusterState::from_byte(state) {
                Some(ClusterState::Data) => self
                    .file
                    .read_exact_at(chunk, self.header.data_offset + off)
                    .map_err(Error::from_io)?,
                Some(ClusterState::Zero) => chunk.fill(0),
                _ => self.read_base(chunk, off)?,
            }
            off = run_end;
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<()> {
        self.check_write(offset, buf.len() as u64)?;
        self.write_inner(buf, offset)?;
        if fua {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        if self.read_only || !self.durable {
            return Ok(());
        }
        self.persist_map()
    }

    fn trim(&self, offset: u64, len: u64) -> Result<()> {
        self.check_write(offset, len)?;
        self.zero_inner(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool) -> Result<()> {
        // Without `may_trim` the range should stay allocated; a `Zero` cluster
        // is a recorded allocation in the overlay's terms (the next write
        // fills it in place), so both cases take the same path.
        self.check_write(offset, len)?;
        self.zero_inner(offset, len)
    }

    fn can_fast_zero(&self) -> bool {
        !self.read_only
    }

    fn block_status(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        check_range(offset, len, self.header.size)?;
        let end = offset + len;
        let mut out: Vec<Extent> = Vec::new();
        fn push(out: &mut Vec<Extent>, len: u64, state: Allocation) {
            if len == 0 {
                return;
            }
            match out.last_mut() {
                Some(e) if e.state == state => e.len += len,
                _ => out.push(Extent { len, state }),
            }
        }
        let mut off = offset;
        while off < end {
            if out.len() >= MAX_EXTENTS {
                break;
            }
            let ci = off >> self.bits;
            let state = self.state(ci);
            let run_end = self.run_end(ci, state, end);
            match ClusterState::from_byte(state) {
                Some(ClusterState::Data) => push(&mut out, run_end - off, Allocation::Data),
                Some(ClusterState::Zero) => push(&mut out, run_end - off, Allocation::Zero),
                _ => {
                    let bsize = self.base.as_ref().map(|b| b.size()).unwrap_or(0);
                    let mut pos = off;
                    let base_end = run_end.min(bsize.max(off));
                    while pos < base_end {
                        let Some(base) = &self.base else { break };
                        let exts = base.block_status(pos, base_end - pos)?;
                        if exts.is_empty() {
                            break;
                        }
                        for e in exts {
                            push(&mut out, e.len, e.state);
                            pos += e.len;
                        }
                    }
                    push(&mut out, run_end - pos, Allocation::Hole);
                }
            }
            off = run_end;
        }
        Ok(out)
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        // A clean close persists the map, so closing and reopening never
        // loses completed writes (a crash still may, until the next flush).
        if !self.read_only && self.durable {
            if let Err(e) = self.persist_map() {
                tracing::warn!(path = ?self.path, error = %e, "overlay map not saved on close");
            }
        }
    }
}

fn resolve_size(base: &Option<Arc<dyn BlockDevice>>, opts: CreateOptions) -> Result<u64> {
    if !(9..=24).contains(&opts.cluster_bits) {
        return Err(Error::Unsupported("cluster size must be 512 B ..= 16 MiB"));
    }
    let bsize = base.as_ref().map(|b| b.size()).unwrap_or(0);
    let size = opts.size.unwrap_or(bsize);
    if size < bsize {
        return Err(Error::Unsupported(
            "an overlay cannot be smaller than its base",
        ));
    }
    if size.div_ceil(1 << opts.cluster_bits) > crate::format::MAX_CLUSTERS {
        return Err(Error::Unsupported(
            "too many clusters for this size: use a larger cluster size",
        ));
    }
    Ok(size)
}

fn init_file(file: &File, header: &Header) -> Result<()> {
    let block = header
        .emit()
        .map_err(|_| Error::Unsupported("base path longer than the header allows"))?;
    file.write_all_at(&block, 0)?;
    file.set_len(header.file_len())?;
    Ok(())
}

/// Reads and validates the header of the overlay file `file` at `path`.
pub(crate) fn read_header(file: &File, path: &Path) -> Result<Header> {
    let mut block = [0u8; HEADER_LEN];
    let n = read_up_to(file, &mut block)?;
    Header::parse(&block[..n]).map_err(|e| match e {
        HeaderError::NotOverlay => format_err(Some(path), "not an anyboot overlay"),
        HeaderError::Malformed(m) => format_err(Some(path), m),
    })
}

/// Writes a header block back (freezing); the caller holds the file exclusively.
pub(crate) fn write_header(file: &File, header: &Header) -> Result<()> {
    let block = header
        .emit()
        .map_err(|_| Error::Unsupported("base path longer than the header allows"))?;
    file.write_all_at(&block, 0)?;
    file.sync_data()?;
    Ok(())
}

pub(crate) fn read_up_to(file: &File, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], n as u64)? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// How a new overlay at `overlay` names `base`: just the file name when both
/// live in one directory, else the absolute path.
pub(crate) fn stored_base_path(overlay: &Path, base: &Path) -> Result<PathBuf> {
    let base_abs = std::fs::canonicalize(base)?;
    let dir = overlay
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_abs = std::fs::canonicalize(dir)?;
    if base_abs.parent() == Some(dir_abs.as_path()) {
        if let Some(name) = base_abs.file_name() {
            return Ok(PathBuf::from(name));
        }
    }
    Ok(base_abs)
}

/// fsyncs the directory holding `path`, so a new or renamed entry is durable.
pub(crate) fn sync_parent(path: &Path) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::RawFile;

    fn base_with(pattern: u8, size: u64) -> Arc<dyn BlockDevice> {
        let raw = RawFile::memory(size).unwrap();
        raw.write_at(&vec![pattern; size as usize], 0, false)
            .unwrap();
        Arc::new(raw)
    }

    #[test]
    fn reads_through_copies_up_and_hides_trimmed_base() {
        let base = base_with(0x11, 256 << 10);
        let ov = Overlay::memory(Some(base.clone()), CreateOptions::default()).unwrap();
        // Partial write: the rest of the cluster keeps the base's bytes.
        ov.write_at(&[0x22; 100], 65536 + 10, false).unwrap();
        let mut buf = vec![0u8; 200];
        ov.read_at(&mut buf, 65536).unwrap();
        assert!(buf[..10].iter().all(|&b| b == 0x11));
        assert!(buf[10..110].iter().all(|&b| b == 0x22));
        assert!(buf[110..].iter().all(|&b| b == 0x11));
        // The base itself is untouched.
        base.read_at(&mut buf, 65536).unwrap();
        assert!(buf.iter().all(|&b| b == 0x11));
        // Trim a whole cluster: zeroes, not base data.
        ov.trim(0, 65536).unwrap();
        ov.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        let st = ov.block_status(0, 256 << 10).unwrap();
        assert_eq!(
            st,
            vec![
                Extent {
                    len: 65536,
                    state: Allocation::Zero
                },
                Extent {
                    len: 196608,
                    state: Allocation::Data
                },
            ]
        );
    }

    #[test]
    fn block_status_passes_through_base_holes() {
        let raw = RawFile::memory(4 << 16).unwrap();
        raw.write_at(&[1; 512], 2 << 16, false).unwrap();
        let ov = Overlay::memory(Some(Arc::new(raw)), CreateOptions::default()).unwrap();
        ov.write_zeroes(0, 1 << 16, false).unwrap();
        let st = ov.block_status(0, 4 << 16).unwrap();
        assert_eq!(st.iter().map(|e| e.len).sum::<u64>(), 4 << 16);
        assert_eq!(
            st[0],
            Extent {
                len: 1 << 16,
                state: Allocation::Zero
            }
        );
        assert_eq!(
            st[1],
            Extent {
                len: 1 << 16,
                state: Allocation::Hole
            }
        );
        assert_eq!(st[2].state, Allocation::Data);
    }

    #[test]
    fn created_overlays_appear_whole_and_only_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("o.ovl");
        let opts = CreateOptions {
            size: Some(1 << 20),
            ..Default::default()
        };
        let ov = Overlay::create(&p, None, opts).unwrap();
        assert!(ov.is_durable());
        // A second creator loses cleanly; no temporary files are left.
        let again = Overlay::create(&p, None, opts);
        assert!(
            matches!(again, Err(Error::Io(ref e)) if e.kind() == std::io::ErrorKind::AlreadyExists)
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // The winner holds the lock under the final name.
        assert!(matches!(Overlay::open(&p, true), Err(Error::Locked(_))));
        drop(ov);
        let v = Overlay::create_volatile(&dir.path().join("v.ovl"), None, opts).unwrap();
        assert!(!v.is_durable());
        v.write_at(&[1; 512], 0, false).unwrap();
        v.flush().unwrap();
    }

    #[test]
    fn block_status_is_bounded_and_resumable() {
        let n = (MAX_EXTENTS as u64) * 2 + 10;
        let opts = CreateOptions {
            size: Some(n * 512),
            cluster_bits: 9,
        };
        let ov = Overlay::memory(None, opts).unwrap();
        for c in (0..n).step_by(2) {
            ov.write_at(&[1; 512], c * 512, false).unwrap();
        }
        let mut off = 0;
        let mut calls = 0;
        while off < n * 512 {
            let st = ov.block_status(off, n * 512 - off).unwrap();
            assert!(!st.is_empty() && st.len() <= MAX_EXTENTS);
            for e in &st {
                let expect = if (off / 512) % 2 == 0 {
                    Allocation::Data
                } else {
                    Allocation::Hole
                };
                assert_eq!((e.len, e.state), (512, expect));
                off += e.len;
            }
            calls += 1;
        }
        assert_eq!(off, n * 512);
        assert_eq!(calls, 3);
    }

    #[test]
    fn out_of_range_is_refused_before_any_access() {
        let ov = Overlay::memory(
            None,
            CreateOptions {
                size: Some(1 << 20),
                ..Default::default()
            },
        )
        .unwrap();
        let mut buf = [0u8; 512];
        assert!(matches!(
            ov.read_at(&mut buf, (1 << 20) - 511),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            ov.write_at(&buf, u64::MAX - 10, false),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(ov.trim(1 << 20, 1), Err(Error::OutOfRange { .. })));
        assert!(matches!(
            ov.block_status(0, (1 << 20) + 1),
            Err(Error::OutOfRange { .. })
        ));
        assert_eq!(ov.counts(), (0, 0));
    }

    #[test]
    fn concurrent_writers_to_one_cluster_keep_both_writes() {
        // Every thread writes its own 512-byte slot of the same fresh clusters,
        // in the same order, starting together: they race to allocate each
        // cluster. Without the allocation lock, a second copy-up from the base
        // would overwrite the first writer's slot.
        const THREADS: usize = 4;
        const CLUSTERS: u64 = 2048;
        let opts = CreateOptions {
            size: None,
            cluster_bits: 12,
        };
        let base = base_with(0x33, CLUSTERS << 12);
        let ov = Arc::new(Overlay::memory(Some(base), opts).unwrap());
        let barrier = Arc::new(std::sync::Barrier::new(THREADS));
        let threads: Vec<_> = (0..THREADS)
            .map(|t| {
                let (ov, barrier) = (ov.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for c in 0..CLUSTERS {
                        let off = (c << 12) + t as u64 * 512;
                        ov.write_at(&[t as u8 + 1; 512], off, false).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut buf = vec![0u8; 4096];
        for c in 0..CLUSTERS {
            ov.read_at(&mut buf, c << 12).unwrap();
            for t in 0..THREADS {
                let slot = &buf[t * 512..(t + 1) * 512];
                assert!(
                    slot.iter().all(|&b| b == t as u8 + 1),
                    "cluster {c} slot {t}"
                );
            }
            assert!(buf[THREADS * 512..].iter().all(|&b| b == 0x33));
        }
    }
}
