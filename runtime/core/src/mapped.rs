//! Memory-mapped models and aligned arenas (std).

use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::path::Path;
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use memmap2::{Mmap, MmapOptions};
use taskpath_format::{Layout, Package};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::residency::{BlobSource, Prefetch};

/// A model whose packages are memory-mapped files. The mappings are
/// read-only and private, advised `MADV_RANDOM`: a page is read from the
/// file only when a session touches it, without the kernel's readahead
/// around it, so the resident pages of a package are its metadata plus what
/// its sessions use ([`MappedModel::will_need_task`] asks for a task's path
/// in advance).
#[derive(Debug)]
pub struct MappedModel {
    maps: Vec<(Backing, Layout)>,
}

/// How [`MappedModel::open_with`] brings a package's bytes into memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Load {
    /// Map each file (private, read-only, `MADV_RANDOM`): only the pages
    /// sessions touch are read. Truncating a file, or editing it in place,
    /// while the process runs makes a later touch of a lost page fault
    /// (SIGBUS) or read the new bytes; replacing it by rename is safe.
    #[default]
    Map,
    /// Read each file whole into heap memory at open: every byte is
    /// resident, and a file changed or truncated afterwards cannot affect
    /// the process (a change while it is being read is an I/O error).
    Read,
}

#[derive(Debug)]
enum Backing {
    Map(Mmap),
    Read(AlignedArena),
}

impl std::ops::Deref for Backing {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Self::Map(m) => m,
            Self::Read(a) => a.as_slice(),
        }
    }
}

fn read(path: &Path) -> Result<AlignedArena> {
    use std::io::Read as _;
    let mut f = File::open(path).map_err(|_| Error::Io("cannot open package file"))?;
    let len = f
        .metadata()
        .map_err(|_| Error::Io("cannot stat package file"))?
        .len();
    let len = usize::try_from(len).map_err(|_| Error::Io("package file too large"))?;
    let mut lines = Vec::new();
    lines
        .try_reserve_exact(len.div_ceil(64))
        .map_err(|_| Error::Io("not enough memory to read the package file"))?;
    lines.resize(len.div_ceil(64), Line([0; 64]));
    let mut a = AlignedArena { lines, len };
    f.read_exact(a.as_mut_slice())
        .map_err(|_| Error::Io("cannot read package file (truncated while read?)"))?;
    Ok(a)
}

fn map(path: &Path) -> Result<Mmap> {
    let f = File::open(path).map_err(|_| Error::Io("cannot open package file"))?;
    // SAFETY: the mapping is read-only and private (MAP_PRIVATE, PROT_READ):
    // this process never writes through it. Another process may still
    // change the file's pages (private mappings share unmodified pages with
    // the page cache) or truncate it, which turns later touches into
    // SIGBUS; not doing that is the caller's contract, as for every
    // mmap-based loader, and the reader never trusts the bytes beyond
    // validation. Replacing the file by rename leaves this mapping on the
    // old inode.
    let m = unsafe { MmapOptions::new().map_copy_read_only(&f) }
        .map_err(|_| Error::Io("cannot memory-map package file"))?;
    // No readahead: a fault reads its page only, so touching one blob does
    // not pull in its neighbours (the path would otherwise be the whole file).
    // Advice is a hint; its failure is too.
    #[cfg(unix)]
    let _ = m.advise(memmap2::Advice::Random);
    Ok(m)
}

impl MappedModel {
    /// Maps and validates a base package.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_deltas(path, &[] as &[&Path])
    }

    /// Maps a base package and a chain of delta packs (in order) and validates
    /// the chain, including every task's program ([`crate::plan::check_all`]);
    /// the base file is never written.
    pub fn open_with_deltas<P: AsRef<Path>>(base: impl AsRef<Path>, deltas: &[P]) -> Result<Self> {
        Self::open_with(base.as_ref(), deltas, None, Load::Map)
    }

    /// [`MappedModel::open_with_deltas`] where the base and every delta
    /// must be signed by `key` (an ed25519 public key), each checked before
    /// it is parsed, as [`Model::from_bytes_verified`] does. Reads every
    /// byte of every file once (the signature covers them all).
    pub fn open_verified<P: AsRef<Path>>(
        base: impl AsRef<Path>,
        deltas: &[P],
        key: &[u8; 32],
    ) -> Result<Self> {
        Self::open_with(base.as_ref(), deltas, Some(key), Load::Map)
    }

    /// Opens a base and its deltas, each checked against `key` when one is
    /// given, mapped or read whole as `load` says.
    pub fn open_with<P: AsRef<Path>>(
        base: &Path,
        deltas: &[P],
        key: Option<&[u8; 32]>,
        load: Load,
    ) -> Result<Self> {
        let mut maps = Vec::new();
        for path in std::iter::once(base).chain(deltas.iter().map(AsRef::as_ref)) {
            let m = match load {
                Load::Map => Backing::Map(map(path)?),
                Load::Read => Backing::Read(read(path)?),
            };
            if let Some(key) = key {
                taskpath_format::signature::verify_package(&m, key)?;
            }
            let layout = Package::parse(&m)?.layout();
            maps.push((m, layout));
        }
        let s = Self { maps };
        // What sessions rely on and do not repeat (it allocates).
        crate::plan::check_all(&s.model()?)?;
        Ok(s)
    }

    /// The model view (chain checks are repeated; they read only metadata).
    pub fn model(&self) -> Result<Model<'_>> {
        fn view((m, l): &(Backing, Layout)) -> Result<Package<'_>> {
            Package::view(m, *l).ok_or(Error::Io("mapping changed size"))
        }
        let mut model = Model::from_package(view(&self.maps[0])?)?;
        for part in &self.maps[1..] {
            model = model.with_delta_package(view(part)?)?;
        }
        Ok(model)
    }

    /// Asks the kernel to start reading task `task`'s path (madvise
    /// `MADV_WILLNEED` over each of its blobs): one large read per blob in
    /// the background instead of a fault per page, and nothing else of the
    /// package. A hint: errors are ignored, and so is an unknown task.
    pub fn will_need_task(&self, task: usize) {
        self.will_need_path(task, true);
    }

    /// [`MappedModel::will_need_task`] without the expert blobs: for a
    /// session whose experts come from a residency cache, which reads each
    /// one when it is first routed to (asking for all of them would read
    /// the whole expert pool into a page cache that may not hold it).
    pub fn will_need_shared(&self, task: usize) {
        self.will_need_path(task, false);
    }

    fn will_need_path(&self, task: usize, experts: bool) {
        let Ok(model) = self.model() else { return };
        let Ok(info) = model.task(task) else { return };
        let mut pf = MmapPrefetch(self);
        for b in model.path_blobs(&info) {
            if experts || b.rec.kind != taskpath_format::records::blob_kind::EXPERT {
                pf.will_need(b.index, b.bytes);
            }
        }
    }

    /// The mapped bytes of package `i` of the chain.
    pub fn bytes(&self, i: usize) -> Option<&[u8]> {
        self.maps.get(i).map(|(m, _)| &m[..])
    }
}

/// A [`Prefetch`] over a [`MappedModel`]: madvise(`MADV_WILLNEED`) over each
/// hinted blob's pages, so the kernel starts reading them from the file in
/// the background and the session's later touch of the next modality's
/// experts finds them in the page cache. Bytes outside the model's mappings
/// are ignored; advice is a hint and its failure is too. Unix only (a no-op
/// elsewhere).
#[derive(Clone, Copy, Debug)]
pub struct MmapPrefetch<'m>(pub &'m MappedModel);

impl Prefetch for MmapPrefetch<'_> {
    /// On Linux, asks the kernel to reclaim the blob's page-cache pages
    /// (MADV_PAGEOUT): under a memory limit that counts the page cache, a
    /// blob copied into an expert cache would otherwise be held twice.
    fn filled(&mut self, _blob: u32, bytes: &[u8]) {
        #[cfg(target_os = "linux")]
        for (m, _) in &self.0.maps {
            let Backing::Map(m) = m else { continue };
            let (base, p) = (m.as_ptr() as usize, bytes.as_ptr() as usize);
            if p >= base && p + bytes.len() <= base + m.len() {
                // Blobs start on a page boundary of the file and the mapping
                // on one of memory; round the start down to be sure.
                let start = p & !4095;
                // SAFETY: [start, p + len) lies in this live mapping (the
                // check above; `start` rounds down to the page that holds
                // `p`, which is inside the page-aligned mapping). The
                // mapping is private, read-only and file-backed, so paging
                // its pages out changes no byte anyone can read: a later
                // touch reads them from the file again. madvise takes no
                // Rust references and its failure is ignored (a hint).
                unsafe {
                    libc::madvise(
                        start as *mut libc::c_void,
                        p + bytes.len() - start,
                        libc::MADV_PAGEOUT,
                    );
                }
                return;
            }
        }
    }

    fn will_need(&mut self, _blob: u32, bytes: &[u8]) {
        let p = bytes.as_ptr() as usize;
        for (m, _) in &self.0.maps {
            let Backing::Map(m) = m else { continue };
            let base = m.as_ptr() as usize;
            if p >= base && p + bytes.len() <= base + m.len() {
                #[cfg(unix)]
                let _ = m.advise_range(memmap2::Advice::WillNeed, p - base, bytes.len());
                return;
            }
        }
    }
}

impl Model<'static> {
    /// Maps a package file; see [`MappedModel::open`].
    pub fn open(path: impl AsRef<Path>) -> Result<MappedModel> {
        MappedModel::open(path)
    }
    /// Maps a base and its deltas; see [`MappedModel::open_with_deltas`].
    pub fn open_with_deltas<P: AsRef<Path>>(
        base: impl AsRef<Path>,
        deltas: &[P],
    ) -> Result<MappedModel> {
        MappedModel::open_with_deltas(base, deltas)
    }
    /// Maps a base and its deltas, each required to be signed by `key`; see
    /// [`MappedModel::open_verified`].
    pub fn open_verified<P: AsRef<Path>>(
        base: impl AsRef<Path>,
        deltas: &[P],
        key: &[u8; 32],
    ) -> Result<MappedModel> {
        MappedModel::open_verified(base, deltas, key)
    }
}

/// A heap buffer aligned to 64 bytes, for arenas and for package bytes read
/// into memory (`Model::from_bytes` needs 16-byte alignment).
#[derive(Clone, Debug)]
pub struct AlignedArena {
    lines: Vec<Line>,
    len: usize,
}

#[derive(Clone, Copy, Debug)]
#[repr(C, align(64))]
struct Line([u8; 64]);

impl AlignedArena {
    /// `len` zero bytes.
    pub fn new(len: usize) -> Self {
        Self {
            lines: vec![Line([0; 64]); len.div_ceil(64)],
            len,
        }
    }
    /// A copy of `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut a = Self::new(bytes.len());
        a.as_mut_slice().copy_from_slice(bytes);
        a
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &bytemuck_lines(&self.lines)[..self.len]
    }
    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut bytemuck_lines_mut(&mut self.lines)[..len]
    }
}

fn bytemuck_lines(l: &[Line]) -> &[u8] {
    // SAFETY: Line is repr(C) of a [u8; 64] with no padding (size 64, align 64),
    // so a slice of n Lines is exactly 64 n initialised bytes.
    unsafe { std::slice::from_raw_parts(l.as_ptr().cast::<u8>(), l.len() * 64) }
}

fn bytemuck_lines_mut(l: &mut [Line]) -> &mut [u8] {
    // SAFETY: as in `bytemuck_lines`; the borrow is unique.
    unsafe { std::slice::from_raw_parts_mut(l.as_mut_ptr().cast::<u8>(), l.len() * 64) }
}

/// Reads blob bytes: `(package index in the chain, byte offset in that
/// package's file, destination)`.
pub type ReadAt = dyn Fn(usize, u64, &mut [u8]) -> std::io::Result<()> + Send + Sync;

/// Counters of a [`PrefetchReader`] and of its [`PrefetchHints`] fills.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrefetchStats {
    /// Fetches served by a prefetched copy that was already complete.
    pub ready: u64,
    /// Fetches that found their blob still being read and waited for it.
    pub waited: u64,
    /// Fetches of blobs never hinted (or dropped): read on the spot.
    pub direct: u64,
    /// Hints ignored because the prefetch budget was full of reads in flight.
    pub dropped: u64,
    /// Prefetched blobs discarded unused to make room for newer hints.
    pub stale: u64,
    /// Bytes of the `stale` blobs: read ahead and never used.
    pub stale_bytes: u64,
    /// Bytes the background thread read ahead.
    pub ahead_bytes: u64,
    /// Time spent inside `fetch` and `fill` (waiting for the reader or reading).
    pub fetch_time: Duration,
}

/// Granule of direct I/O: an `O_DIRECT` read's file offset, length and
/// buffer address are multiples of it (the largest logical block size in use).
const DIRECT_ALIGN: usize = 4096;

/// A reusable heap buffer whose bytes start on a [`DIRECT_ALIGN`] boundary,
/// as an `O_DIRECT` read needs of its destination.
#[derive(Debug, Default)]
struct PageBuf {
    v: Vec<u8>,
    pad: usize,
    len: usize,
}

impl PageBuf {
    /// Makes it `len` bytes long, keeping the allocation when it is large enough.
    fn set_len(&mut self, len: usize) {
        if self.v.len() < len + DIRECT_ALIGN {
            self.v = vec![0; len.next_multiple_of(DIRECT_ALIGN) + DIRECT_ALIGN];
            // `align_offset` may decline (usize::MAX); the bytes are then
            // unaligned, which costs the direct reader a bounce, not correctness.
            self.pad = self.v.as_ptr().align_offset(DIRECT_ALIGN);
            if self.pad >= DIRECT_ALIGN {
                self.pad = 0;
            }
        }
        self.len = len;
    }
    fn bytes(&self) -> &[u8] {
        &self.v[self.pad..self.pad + self.len]
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.v[self.pad..self.pad + self.len]
    }
}

#[derive(Debug, Default)]
struct ReaderState {
    ready: HashMap<u32, PageBuf>,
    /// Ready blobs, oldest first: hints never fetched (the router picked
    /// other experts) make room for newer ones in this order.
    order: VecDeque<u32>,
    pending: HashSet<u32>,
    /// Bytes of `ready` + `pending`.
    held: usize,
    /// Buffers of blobs handed over or discarded, for the next reads: in a
    /// steady state the reader allocates nothing.
    free: Vec<PageBuf>,
    stats: PrefetchStats,
}

type Shared = (Mutex<ReaderState>, Condvar);

/// A blob to read, or `None` to stop the reader thread.
type Job = Option<(u32, usize, u64, usize)>;

/// Per global blob: (package index, file offset, length).
type Locs = Arc<Vec<(usize, u64, usize)>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, ReaderState> {
    s.0.lock().unwrap_or_else(PoisonError::into_inner)
}

const READ_FAILED: Error = Error::Io("cannot read an expert blob");

/// Waits while the reader thread is reading `blob`, then takes its
/// read-ahead copy; `None` when there is none (never hinted, dropped,
/// discarded, or its read failed): the caller reads the blob itself.
fn take_ready(shared: &Shared, blob: u32, len: usize) -> Option<PageBuf> {
    let mut st = lock(shared);
    let mut waited = false;
    while st.pending.contains(&blob) {
        waited = true;
        st = shared.1.wait(st).unwrap_or_else(PoisonError::into_inner);
    }
    let Some(b) = st.ready.remove(&blob) else {
        st.stats.direct += 1;
        return None;
    };
    st.held -= len;
    st.order.retain(|&x| x != blob);
    if waited {
        st.stats.waited += 1;
    } else {
        st.stats.ready += 1;
    }
    Some(b)
}

/// A [`BlobSource`] that reads expert blobs through a slow reader (a package
/// on an SD card or eMMC read with `pread`, a network file), with a
/// background thread that reads hinted blobs ahead into RAM, at most
/// `budget` bytes at a time. Hints go through its [`PrefetchHints`] handle
/// ([`PrefetchReader::hints`]), which a session takes as its [`Prefetch`]
/// and a [`crate::ResidencyCache`] as its fill hook (misses are then read
/// from the file into the cache, not copied from a mapping). A prefetched
/// blob is handed over on its first fetch; hints never fetched are
/// discarded oldest first when newer ones need the room. Outputs are those
/// of reading in place: only where the bytes come from, and when, changes.
pub struct PrefetchReader {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
    worker: Option<JoinHandle<()>>,
    read: Arc<ReadAt>,
    locs: Locs,
    budget: usize,
    current: PageBuf,
    mode: String,
}

impl std::fmt::Debug for PrefetchReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefetchReader")
            .field("blobs", &self.locs.len())
            .field("budget", &self.budget)
            .field("mode", &self.mode)
            .field("stats", &self.stats())
            .finish()
    }
}

/// The hint side of a [`PrefetchReader`]: queues hinted blobs for its
/// background thread, and fills a cache slot from the file. Cheap to clone;
/// hints after the reader is dropped are ignored.
#[derive(Clone)]
pub struct PrefetchHints {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Job>,
    read: Arc<ReadAt>,
    locs: Locs,
    budget: usize,
}

impl std::fmt::Debug for PrefetchHints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefetchHints")
            .field("budget", &self.budget)
            .finish()
    }
}

impl PrefetchReader {
    /// A reader of `model`'s blobs through `read`, prefetching at most
    /// `budget` bytes ahead on one background thread. `read`'s destination
    /// starts on a 4 KiB boundary when the reader owns it (read-ahead and
    /// [`BlobSource::fetch`]); a cache slot it fills need not.
    pub fn new(
        model: &Model<'_>,
        budget: usize,
        read: impl Fn(usize, u64, &mut [u8]) -> std::io::Result<()> + Send + Sync + 'static,
    ) -> Result<Self> {
        let mut locs = Vec::with_capacity(model.blob_count());
        for (part, p) in model.parts().enumerate() {
            for local in 0..p.blobs().len() {
                let off = p
                    .blob_file_offset(local)
                    .ok_or(Error::Io("blob offset out of range"))?;
                let len = p.blob_bytes(local).map_or(0, <[u8]>::len);
                locs.push((part, off, len));
            }
        }
        let read: Arc<ReadAt> = Arc::new(read);
        let shared: Arc<Shared> = Arc::default();
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = {
            let (shared, read) = (Arc::clone(&shared), Arc::clone(&read));
            std::thread::Builder::new()
                .name("taskpath-prefetch".into())
                .spawn(move || {
                    while let Ok(Some((blob, part, off, len))) = rx.recv() {
                        let mut buf = lock(&shared).free.pop().unwrap_or_default();
                        buf.set_len(len);
                        let ok = read(part, off, buf.bytes_mut()).is_ok();
                        let mut st = lock(&shared);
                        st.pending.remove(&blob);
                        if ok {
                            st.ready.insert(blob, buf);
                            st.order.push_back(blob);
                            st.stats.ahead_bytes += len as u64;
                        } else {
                            // The fetch reads it again and reports the error.
                            st.held -= len;
                            st.free.push(buf);
                        }
                        shared.1.notify_all();
                    }
                })
                .map_err(|_| Error::Io("cannot start the prefetch thread"))?
        };
        Ok(Self {
            shared,
            tx,
            worker: Some(worker),
            read,
            locs: Arc::new(locs),
            budget,
            current: PageBuf::default(),
            mode: "custom reader".into(),
        })
    }

    /// A reader of the package files themselves (`paths[i]` is package `i`
    /// of the chain), with buffered positioned reads (`pread`) and the
    /// kernel's readahead off (`POSIX_FADV_RANDOM`), so a read brings in its
    /// blob and nothing around it.
    #[cfg(unix)]
    pub fn from_files<P: AsRef<Path>>(
        model: &Model<'_>,
        paths: &[P],
        budget: usize,
    ) -> Result<Self> {
        use std::os::unix::fs::FileExt;
        let files = paths
            .iter()
            .map(|p| File::open(p).map_err(|_| Error::Io("cannot open package file")))
            .collect::<Result<Vec<File>>>()?;
        #[cfg(target_os = "linux")]
        for f in &files {
            use std::os::fd::AsRawFd;
            // SAFETY: `f` is an open file whose descriptor lives as long as
            // `f`; posix_fadvise takes no memory. Advice is a hint: its
            // failure is ignored.
            unsafe {
                libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
            }
        }
        let mut r = Self::new(model, budget, move |part, off, out| {
            files
                .get(part)
                .ok_or_else(|| std::io::Error::other("no such package"))?
                .read_exact_at(out, off)
        })?;
        r.mode = "pread, buffered".into();
        Ok(r)
    }

    /// [`PrefetchReader::from_files`] with `O_DIRECT` reads, which bypass the
    /// page cache (under a memory limit that counts it, a blob read into an
    /// expert cache is then held once). Blobs start on 4 KiB boundaries of
    /// the file; lengths are rounded up through a bounce page. Where the
    /// filesystem refuses `O_DIRECT` (tmpfs, some overlays), falls back to
    /// buffered reads and says why in [`PrefetchReader::io_mode`].
    #[cfg(target_os = "linux")]
    pub fn from_files_direct<P: AsRef<Path>>(
        model: &Model<'_>,
        paths: &[P],
        budget: usize,
    ) -> Result<Self> {
        match open_direct(paths) {
            Ok(files) => {
                let bounce = Mutex::new(PageBuf::default());
                let mut r = Self::new(model, budget, move |part, off, out| {
                    let f = files
                        .get(part)
                        .ok_or_else(|| std::io::Error::other("no such package"))?;
                    read_direct(f, off, out, &bounce)
                })?;
                r.mode = "pread, O_DIRECT".into();
                Ok(r)
            }
            Err(why) => {
                let mut r = Self::from_files(model, paths, budget)?;
                r.mode = format!("pread, buffered (O_DIRECT refused: {why})");
                Ok(r)
            }
        }
    }

    /// How the reader reads: "pread, O_DIRECT", "pread, buffered", the
    /// reason a direct reader fell back to buffered reads, or "custom reader".
    pub fn io_mode(&self) -> &str {
        &self.mode
    }

    /// The handle a session takes as its [`Prefetch`].
    pub fn hints(&self) -> PrefetchHints {
        PrefetchHints {
            shared: Arc::clone(&self.shared),
            tx: self.tx.clone(),
            read: Arc::clone(&self.read),
            locs: Arc::clone(&self.locs),
            budget: self.budget,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> PrefetchStats {
        lock(&self.shared).stats
    }
}

/// Opens each package for `O_DIRECT` reads and proves one read works (some
/// filesystems accept the flag at open and refuse the reads).
#[cfg(target_os = "linux")]
fn open_direct<P: AsRef<Path>>(paths: &[P]) -> std::result::Result<Vec<File>, String> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut probe = PageBuf::default();
    probe.set_len(DIRECT_ALIGN);
    let bounce = Mutex::new(PageBuf::default());
    paths
        .iter()
        .map(|p| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(p)
                .map_err(|e| e.to_string())?;
            read_direct(&f, 0, probe.bytes_mut(), &bounce).map_err(|e| e.to_string())?;
            Ok(f)
        })
        .collect()
}

/// Reads into `buf` from `off` until it is full or the file ends; returns
/// the bytes read. A short `O_DIRECT` read means the end of the file.
#[cfg(target_os = "linux")]
fn read_upto(f: &File, off: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        let n = f.read_at(&mut buf[done..], off + done as u64)?;
        done += n;
        if n == 0 || n % DIRECT_ALIGN != 0 {
            break;
        }
    }
    Ok(done)
}

/// One `O_DIRECT` read of `out.len()` bytes at `off` (a multiple of
/// [`DIRECT_ALIGN`]): the whole pages straight into `out` when it is
/// aligned, the rest (or all of an unaligned `out`) through `bounce`.
#[cfg(target_os = "linux")]
fn read_direct(f: &File, off: u64, out: &mut [u8], bounce: &Mutex<PageBuf>) -> std::io::Result<()> {
    let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    if !off.is_multiple_of(DIRECT_ALIGN as u64) {
        return Err(std::io::Error::other("blob not page-aligned in the file"));
    }
    let head = if (out.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
        out.len() / DIRECT_ALIGN * DIRECT_ALIGN
    } else {
        0
    };
    if read_upto(f, off, &mut out[..head])? < head {
        return Err(eof());
    }
    let rest = out.len() - head;
    if rest > 0 {
        let mut b = bounce.lock().unwrap_or_else(PoisonError::into_inner);
        b.set_len(rest.next_multiple_of(DIRECT_ALIGN));
        if read_upto(f, off + head as u64, b.bytes_mut())? < rest {
            return Err(eof());
        }
        out[head..].copy_from_slice(&b.bytes()[..rest]);
    }
    Ok(())
}

impl Drop for PrefetchReader {
    fn drop(&mut self) {
        let _ = self.tx.send(None);
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl PrefetchHints {
    /// The counters of the reader these hints feed ([`PrefetchReader::stats`]).
    pub fn stats(&self) -> PrefetchStats {
        lock(&self.shared).stats
    }
}

impl Prefetch for PrefetchHints {
    fn will_need(&mut self, blob: u32, _bytes: &[u8]) {
        let Some(&(part, off, len)) = self.locs.get(blob as usize) else {
            return;
        };
        let mut st = lock(&self.shared);
        if st.ready.contains_key(&blob) || st.pending.contains(&blob) {
            return;
        }
        while st.held + len > self.budget {
            let Some(old) = st.order.pop_front() else {
                break;
            };
            if let Some(v) = st.ready.remove(&old) {
                st.held -= v.len;
                st.stats.stale += 1;
                st.stats.stale_bytes += v.len as u64;
                st.free.push(v);
            }
        }
        if st.held + len > self.budget {
            st.stats.dropped += 1;
            return;
        }
        if self.tx.send(Some((blob, part, off, len))).is_ok() {
            st.pending.insert(blob);
            st.held += len;
        }
    }

    /// Reads the blob into the cache slot from the file (or copies the
    /// read-ahead copy), never from the mapping `_bytes` lies in.
    fn fill(&mut self, blob: u32, _bytes: &[u8], dst: &mut [u8]) -> Result<()> {
        let t0 = Instant::now();
        let &(part, off, len) = self
            .locs
            .get(blob as usize)
            .ok_or(Error::Io("no such blob"))?;
        if len != dst.len() {
            return Err(Error::Io("cache slot and blob lengths differ"));
        }
        let got = match take_ready(&self.shared, blob, len) {
            Some(b) => {
                dst.copy_from_slice(b.bytes());
                lock(&self.shared).free.push(b);
                Ok(())
            }
            None => (self.read)(part, off, dst).map_err(|_| READ_FAILED),
        };
        lock(&self.shared).stats.fetch_time += t0.elapsed();
        got
    }
}

impl BlobSource for PrefetchReader {
    fn fetch(&mut self, _model: &Model<'_>, blob: u32) -> Result<&[u8]> {
        let t0 = Instant::now();
        let &(part, off, len) = self
            .locs
            .get(blob as usize)
            .ok_or(Error::Io("no such blob"))?;
        let got = match take_ready(&self.shared, blob, len) {
            Some(b) => {
                let old = std::mem::replace(&mut self.current, b);
                if !old.v.is_empty() {
                    lock(&self.shared).free.push(old);
                }
                Ok(())
            }
            None => {
                self.current.set_len(len);
                (self.read)(part, off, self.current.bytes_mut()).map_err(|_| READ_FAILED)
            }
        };
        lock(&self.shared).stats.fetch_time += t0.elapsed();
        got?;
        Ok(self.current.bytes())
    }
}
