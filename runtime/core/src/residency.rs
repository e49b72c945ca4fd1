//! Expert residency: a byte budget of RAM between the package (flash or an
//! mmap: slow, or simply not RAM) and the kernels.
//!
//! Expert components are the only blobs a task touches sparsely, so they are
//! the ones worth caching: trunks, routers and heads run for every sample.
//! The cache places each blob at a 64-byte aligned offset of caller memory,
//! taking exactly its size rounded up to 64 bytes (a first-fit arena of
//! variable-size slots: the low-rank components of later stages are several
//! times smaller than stage-1 ones, and fixed slots sized for the largest
//! would waste that difference). It evicts the least recently used unpinned
//! blobs until the new one fits the budget, and when the free bytes are
//! enough but no gap is, it compacts the arena (slides resident blobs down)
//! instead of evicting more: so its hits are exactly those of an LRU over a
//! byte capacity, which `taskpath residency` simulates offline. No allocation.

use crate::error::{Error, Result};
use crate::model::Model;

/// Most blobs one cache holds at once.
pub const MAX_SLOTS: usize = 256;

/// Granule of the cache's arena: every blob starts on it and takes a
/// multiple of it (a cache line; f32 and the kernels' packed rows need 16).
pub const CACHE_ALIGN: usize = 64;

/// Bytes a blob of `len` bytes takes in a [`ResidencyCache`].
pub const fn cache_footprint(len: usize) -> usize {
    len.div_ceil(CACHE_ALIGN) * CACHE_ALIGN
}

/// Where the bytes of an expert blob come from during `run`.
pub trait BlobSource {
    /// The bytes of blob `blob` (global index), valid until the next call.
    fn fetch(&mut self, model: &Model<'_>, blob: u32) -> Result<&[u8]>;
    /// Whether a blob of `bytes` fits.
    fn can_hold(&self, _bytes: usize) -> bool {
        true
    }
    /// Bytes the source can hold (for error messages).
    fn capacity(&self) -> usize {
        usize::MAX
    }
    /// The whole budget, pinned blobs included (a pinned blob may be one of
    /// the experts a token needs): what a layer's active set is checked
    /// against.
    fn budget(&self) -> usize {
        self.capacity()
    }
    /// Whether `blob` is resident now (a fetch would hit), for tracers;
    /// `None` when the source cannot tell.
    fn holds(&self, _blob: u32) -> Option<bool> {
        None
    }
    /// The counters of a caching source (e.g. a [`ResidencyCache`]); `None`
    /// for sources that keep none.
    fn cache_stats(&self) -> Option<CacheStats> {
        None
    }
}

/// Told which blobs a session will likely fetch next, so that a reader can
/// start bringing them in while the current modality computes.
///
/// A session with a prefetcher ([`crate::Session::with_prefetch`]) calls it
/// when it starts encoding input `i` of a task with the expert component
/// blobs its router for input `i + 1` may pick (the task path's mask for that
/// modality, components `0..=stage`), in file order, which the packer makes
/// hottest first. On std, `MmapPrefetch` (madvise `MADV_WILLNEED`) and
/// `PrefetchReader` (a background reader thread) implement it; on bare metal
/// the firmware implements it, e.g. to start a DMA of `bytes` from external
/// flash. The hook must not block for long: the session waits for it.
pub trait Prefetch {
    /// Blob `blob` (global index), whose package bytes are `bytes`, will
    /// likely be fetched soon.
    fn will_need(&mut self, blob: u32, bytes: &[u8]);
    /// Blob `blob` was just copied out of `bytes` into a cache: the package
    /// copy is not needed again soon. Default: nothing.
    fn filled(&mut self, _blob: u32, _bytes: &[u8]) {}
    /// Fills `dst` (a [`ResidencyCache`] slot, `bytes.len()` long) with blob
    /// `blob`, whose package bytes are `bytes`. The default hints the read
    /// ([`Prefetch::will_need`]), copies `bytes` and reports it
    /// ([`Prefetch::filled`]); a reader that brings blobs in another way
    /// (positioned reads of the file: `PrefetchHints`) reads them into `dst`
    /// instead, and its I/O error fails the fetch, so a session step that
    /// needed the blob returns the error rather than computing on stale bytes.
    fn fill(&mut self, blob: u32, bytes: &[u8], dst: &mut [u8]) -> Result<()> {
        self.will_need(blob, bytes);
        dst.copy_from_slice(bytes);
        self.filled(blob, bytes);
        Ok(())
    }
}

/// Counters of a [`ResidencyCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Fetches served from a resident slot.
    pub hits: u64,
    /// Fetches that copied the blob in.
    pub misses: u64,
    /// Blobs dropped to make room for another.
    pub evictions: u64,
    /// Bytes copied from the package into slots.
    pub bytes_copied: u64,
    /// Most bytes held in slots at once (never more than the budget).
    pub peak_resident_bytes: u64,
    /// Times the arena was compacted because no gap fitted.
    pub compactions: u64,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    blob: u32,
    /// Offset in the arena (multiple of [`CACHE_ALIGN`]).
    off: usize,
    /// Bytes of the blob.
    len: usize,
    last_use: u64,
    pinned: bool,
}

const NO_SLOT: Slot = Slot {
    blob: u32::MAX,
    off: 0,
    len: 0,
    last_use: 0,
    pinned: false,
};

/// LRU cache of expert blobs in caller-provided RAM, with pinning.
#[derive(Debug)]
pub struct ResidencyCache<'r> {
    mem: &'r mut [u8],
    /// Resident blobs, sorted by offset: `slots[..n]`.
    slots: [Slot; MAX_SLOTS],
    n: usize,
    /// Footprint of the largest expert blob: what pinning must leave free.
    largest: usize,
    tick: u64,
    stats: CacheStats,
    /// Told about each blob just before it is copied in.
    fill: Option<FillHint<'r>>,
}

/// The hook of [`ResidencyCache::with_fill_hint`].
struct FillHint<'r>(&'r mut dyn Prefetch);

impl core::fmt::Debug for FillHint<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("FillHint")
    }
}

impl<'r> ResidencyCache<'r> {
    /// The smallest budget for `model`: its largest expert blob, rounded up
    /// to [`CACHE_ALIGN`].
    pub fn min_budget(model: &Model<'_>) -> usize {
        model
            .expert_blobs()
            .map(|b| cache_footprint(b.bytes.len()))
            .max()
            .unwrap_or(0)
            .max(CACHE_ALIGN)
    }

    /// A cache over `mem`; its length is the budget. Fails when the budget
    /// cannot hold the largest expert blob, or when `mem` is not 16-byte aligned.
    pub fn new(model: &Model<'_>, mem: &'r mut [u8]) -> Result<Self> {
        let largest = Self::min_budget(model);
        if mem.len() < largest {
            return Err(Error::BudgetTooSmall {
                need: largest,
                have: mem.len(),
            });
        }
        if !(mem.as_ptr() as usize).is_multiple_of(16) {
            return Err(Error::ArenaMisaligned);
        }
        Ok(Self {
            mem,
            slots: [NO_SLOT; MAX_SLOTS],
            n: 0,
            largest,
            tick: 0,
            stats: CacheStats::default(),
            fill: None,
        })
    }

    /// Fills each missed blob through `hint` ([`Prefetch::fill`]) instead of
    /// copying it from the package bytes: over a memory map, `MmapPrefetch`
    /// turns the copy's page-by-page faults into one read of the whole blob;
    /// `PrefetchHints` reads it from the file (or hands over its read-ahead copy).
    #[must_use]
    pub fn with_fill_hint(mut self, hint: &'r mut dyn Prefetch) -> Self {
        self.fill = Some(FillHint(hint));
        self
    }

    /// The budget in bytes.
    pub fn budget(&self) -> usize {
        self.mem.len()
    }
    /// Number of blobs resident now.
    pub fn resident_count(&self) -> usize {
        self.n
    }
    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
    /// Bytes of the blobs currently held.
    pub fn resident_bytes(&self) -> usize {
        self.slots[..self.n].iter().map(|s| s.len).sum()
    }
    /// Arena bytes taken (blob sizes rounded up to [`CACHE_ALIGN`]).
    pub fn used_bytes(&self) -> usize {
        self.slots[..self.n]
            .iter()
            .map(|s| cache_footprint(s.len))
            .sum()
    }
    fn pinned_bytes(&self) -> usize {
        self.slots[..self.n]
            .iter()
            .filter(|s| s.pinned)
            .map(|s| cache_footprint(s.len))
            .sum()
    }
    /// Blobs currently resident, by arena offset.
    pub fn resident(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots[..self.n].iter().map(|s| s.blob)
    }

    /// Loads and pins `blob`; pinned blobs are never evicted. Pinning always
    /// leaves room for the model's largest expert blob, so it fails (and
    /// leaves the blob unpinned) when it would take that room.
    pub fn pin(&mut self, model: &Model<'_>, blob: u32) -> Result<()> {
        let len = model.blob(blob).ok_or(NO_BLOB)?.bytes.len();
        let need = self.pinned_bytes() + cache_footprint(len) + self.largest;
        if need > self.mem.len() {
            return Err(Error::BudgetTooSmall {
                need,
                have: self.mem.len(),
            });
        }
        let i = self.load(model, blob)?;
        self.slots[i].pinned = true;
        Ok(())
    }

    /// Unpins everything (the blobs stay resident).
    pub fn unpin_all(&mut self) {
        self.slots.iter_mut().for_each(|s| s.pinned = false);
    }

    fn evict_lru(&mut self) -> Result<()> {
        let victim = self.slots[..self.n]
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.pinned)
            .min_by_key(|(_, s)| s.last_use)
            .map(|(i, _)| i)
            .ok_or(Error::BudgetTooSmall {
                need: self.used_bytes() + self.largest,
                have: self.mem.len(),
            })?;
        self.slots.copy_within(victim + 1..self.n, victim);
        self.n -= 1;
        self.stats.evictions += 1;
        Ok(())
    }

    /// First gap of `need` bytes: `(index to insert at, offset)`.
    fn first_fit(&self, need: usize) -> Option<(usize, usize)> {
        let mut end = 0;
        for (i, s) in self.slots[..self.n].iter().enumerate() {
            if s.off - end >= need {
                return Some((i, end));
            }
            end = s.off + cache_footprint(s.len);
        }
        (self.mem.len() - end >= need).then_some((self.n, end))
    }

    /// Slides every blob down to close the gaps (order kept).
    fn compact(&mut self) {
        let mut end = 0;
        for s in &mut self.slots[..self.n] {
            if s.off != end {
                self.mem.copy_within(s.off..s.off + s.len, end);
                s.off = end;
            }
            end += cache_footprint(s.len);
        }
        self.stats.compactions += 1;
    }

    fn load(&mut self, model: &Model<'_>, blob: u32) -> Result<usize> {
        self.tick += 1;
        if let Some(i) = self.slots[..self.n].iter().position(|s| s.blob == blob) {
            self.slots[i].last_use = self.tick;
            self.stats.hits += 1;
            return Ok(i);
        }
        let src = model.blob(blob).ok_or(NO_BLOB)?;
        let need = cache_footprint(src.bytes.len());
        if need + self.pinned_bytes() > self.mem.len() {
            return Err(Error::BudgetTooSmall {
                need: need + self.pinned_bytes(),
                have: self.mem.len(),
            });
        }
        while self.used_bytes() + need > self.mem.len() || self.n == MAX_SLOTS {
            self.evict_lru()?;
        }
        let (i, off) = match self.first_fit(need) {
            Some(f) => f,
            None => {
                self.compact();
                (self.n, self.used_bytes())
            }
        };
        let dst = &mut self.mem[off..off + src.bytes.len()];
        match self.fill.as_mut() {
            // A failed fill leaves the slot unrecorded: its bytes are never served.
            Some(h) => h.0.fill(blob, src.bytes, dst)?,
            None => dst.copy_from_slice(src.bytes),
        }
        self.slots.copy_within(i..self.n, i + 1);
        self.slots[i] = Slot {
            blob,
            off,
            len: src.bytes.len(),
            last_use: self.tick,
            pinned: false,
        };
        self.n += 1;
        self.stats.misses += 1;
        self.stats.bytes_copied += src.bytes.len() as u64;
        self.stats.peak_resident_bytes = self
            .stats
            .peak_resident_bytes
            .max(self.resident_bytes() as u64);
        Ok(i)
    }
}

const NO_BLOB: Error = Error::InvalidProgram {
    op: 0,
    why: "no such blob",
};

impl BlobSource for ResidencyCache<'_> {
    fn can_hold(&self, bytes: usize) -> bool {
        cache_footprint(bytes) + self.pinned_bytes() <= self.mem.len()
    }
    fn capacity(&self) -> usize {
        self.mem.len() - self.pinned_bytes()
    }
    fn budget(&self) -> usize {
        self.mem.len()
    }
    fn holds(&self, blob: u32) -> Option<bool> {
        Some(self.resident().any(|b| b == blob))
    }
    fn cache_stats(&self) -> Option<CacheStats> {
        Some(self.stats)
    }
    fn fetch(&mut self, model: &Model<'_>, blob: u32) -> Result<&[u8]> {
        let i = self.load(model, blob)?;
        let s = self.slots[i];
        Ok(&self.mem[s.off..s.off + s.len])
    }
}
