//! Expert residency: a byte budget of RAM between the package (flash or an
//! mmap: slow, or simply not RAM) and the kernels.
//!
//! Expert components are the only blobs a task touches sparsely, so they are
//! the ones worth caching: trunks, routers and heads run for every sample.
//! The cache holds fixed-size slots (the largest expert blob, rounded up to a
//! cache line) carved from caller memory, evicts the least recently used
//! unpinned slot, and can pin a task's hot experts. No allocation.

use crate::error::{Error, Result};
use crate::model::Model;
use taskpath_format::records::blob_kind;

/// Most slots one cache manages.
pub const MAX_SLOTS: usize = 256;

const EMPTY: u32 = u32::MAX;

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
    /// Whether `blob` is resident now (a fetch would hit), for tracers;
    /// `None` when the source cannot tell.
    fn holds(&self, _blob: u32) -> Option<bool> {
        None
    }
}

/// Counters of a [`ResidencyCache`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Fetches served from a resident slot.
    pub hits: u64,
    /// Fetches that copied the blob in.
    pub misses: u64,
    /// Slots overwritten while holding another blob.
    pub evictions: u64,
    /// Bytes copied from the package into slots.
    pub bytes_copied: u64,
    /// Most bytes held in slots at once (never more than the budget).
    pub peak_resident_bytes: u64,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    blob: u32,
    len: usize,
    last_use: u64,
    pinned: bool,
}

/// LRU cache of expert blobs in caller-provided RAM, with pinning.
#[derive(Debug)]
pub struct ResidencyCache<'r> {
    mem: &'r mut [u8],
    slot_bytes: usize,
    n_slots: usize,
    slots: [Slot; MAX_SLOTS],
    tick: u64,
    stats: CacheStats,
}

impl<'r> ResidencyCache<'r> {
    /// Bytes one slot needs for `model`: its largest expert blob, rounded up to 64.
    pub fn slot_bytes(model: &Model<'_>) -> usize {
        (0..model.blob_count() as u32)
            .filter_map(|i| model.blob(i))
            .filter(|b| b.rec.kind == blob_kind::EXPERT)
            .map(|b| b.bytes.len())
            .max()
            .unwrap_or(0)
            .div_ceil(64)
            * 64
    }

    /// A cache over `mem`; its length is the budget. Fails when the budget
    /// cannot hold one expert blob, or when `mem` is not 16-byte aligned.
    pub fn new(model: &Model<'_>, mem: &'r mut [u8]) -> Result<Self> {
        let slot_bytes = Self::slot_bytes(model).max(64);
        if mem.len() < slot_bytes {
            return Err(Error::BudgetTooSmall {
                need: slot_bytes,
                have: mem.len(),
            });
        }
        if !(mem.as_ptr() as usize).is_multiple_of(16) {
            return Err(Error::ArenaMisaligned);
        }
        let n_slots = (mem.len() / slot_bytes).min(MAX_SLOTS);
        let slot = Slot {
            blob: EMPTY,
            len: 0,
            last_use: 0,
            pinned: false,
        };
        Ok(Self {
            mem,
            slot_bytes,
            n_slots,
            slots: [slot; MAX_SLOTS],
            tick: 0,
            stats: CacheStats::default(),
        })
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.n_slots
    }
    /// Bytes per slot.
    pub fn slot_size(&self) -> usize {
        self.slot_bytes
    }
    /// Counters so far.
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
    /// Bytes currently held in slots.
    pub fn resident_bytes(&self) -> usize {
        self.slots[..self.n_slots]
            .iter()
            .filter(|s| s.blob != EMPTY)
            .map(|s| s.len)
            .sum()
    }
    /// Blobs currently resident.
    pub fn resident(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots[..self.n_slots]
            .iter()
            .filter(|s| s.blob != EMPTY)
            .map(|s| s.blob)
    }

    /// Loads and pins `blob`; pinned blobs are never evicted. At least one
    /// slot always stays unpinned, so pinning fails when it would take the last.
    pub fn pin(&mut self, model: &Model<'_>, blob: u32) -> Result<()> {
        let pinned = self.slots[..self.n_slots]
            .iter()
            .filter(|s| s.pinned)
            .count();
        let i = self.load(model, blob)?;
        if !self.slots[i].pinned && pinned + 1 >= self.n_slots {
            return Err(Error::BudgetTooSmall {
                need: (pinned + 2) * self.slot_bytes,
                have: self.mem.len(),
            });
        }
        self.slots[i].pinned = true;
        Ok(())
    }

    /// Unpins everything (the slots stay resident).
    pub fn unpin_all(&mut self) {
        self.slots.iter_mut().for_each(|s| s.pinned = false);
    }

    fn load(&mut self, model: &Model<'_>, blob: u32) -> Result<usize> {
        self.tick += 1;
        if let Some(i) = self.slots[..self.n_slots]
            .iter()
            .position(|s| s.blob == blob)
        {
            self.slots[i].last_use = self.tick;
            self.stats.hits += 1;
            return Ok(i);
        }
        let src = model.blob(blob).ok_or(Error::InvalidProgram {
            op: 0,
            why: "no such blob",
        })?;
        if src.bytes.len() > self.slot_bytes {
            return Err(Error::BudgetTooSmall {
                need: src.bytes.len(),
                have: self.slot_bytes,
            });
        }
        let victim = self.slots[..self.n_slots]
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.pinned)
            .min_by_key(|(_, s)| if s.blob == EMPTY { 0 } else { s.last_use + 1 })
            .map(|(i, _)| i)
            .ok_or(Error::BudgetTooSmall {
                need: self.slot_bytes * (self.n_slots + 1),
                have: self.mem.len(),
            })?;
        if self.slots[victim].blob != EMPTY {
            self.stats.evictions += 1;
        }
        let start = victim * self.slot_bytes;
        self.mem[start..start + src.bytes.len()].copy_from_slice(src.bytes);
        self.slots[victim] = Slot {
            blob,
            len: src.bytes.len(),
            last_use: self.tick,
            pinned: false,
        };
        self.stats.misses += 1;
        self.stats.bytes_copied += src.bytes.len() as u64;
        self.stats.peak_resident_bytes = self
            .stats
            .peak_resident_bytes
            .max(self.resident_bytes() as u64);
        Ok(victim)
    }
}

impl BlobSource for ResidencyCache<'_> {
    fn can_hold(&self, bytes: usize) -> bool {
        bytes <= self.slot_bytes
    }
    fn capacity(&self) -> usize {
        self.slot_bytes
    }
    fn holds(&self, blob: u32) -> Option<bool> {
        Some(self.resident().any(|b| b == blob))
    }
    fn fetch(&mut self, model: &Model<'_>, blob: u32) -> Result<&[u8]> {
        let i = self.load(model, blob)?;
        let start = i * self.slot_bytes;
        Ok(&self.mem[start..start + self.slots[i].len])
    }
}
