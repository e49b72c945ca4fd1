//! The device expert cache's bookkeeping: which blob lives in which
//! fixed-size slot of device memory. The policy is the CPU
//! `ResidencyCache`'s — evict the least recently used unpinned slot, empty
//! slots first; pinning never takes the last unpinned slot — so residency
//! numbers measured on the CPU side carry over. Pure host logic: the device
//! side only copies where this says.

use taskpath_runtime::CacheStats;

use crate::error::{CudaError, Result};

const EMPTY: u32 = u32::MAX;

#[derive(Clone, Copy, Debug)]
struct Slot {
    blob: u32,
    len: usize,
    last_use: u64,
    pinned: bool,
}

/// Where a requested blob is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Already resident in this slot.
    Hit(usize),
    /// Must be copied into this slot; `evicted` is the blob it held.
    Miss {
        /// The slot to fill.
        slot: usize,
        /// The blob that was there, if any.
        evicted: Option<u32>,
    },
}

impl Lookup {
    /// The slot either way.
    pub fn slot(self) -> usize {
        match self {
            Self::Hit(s) | Self::Miss { slot: s, .. } => s,
        }
    }
}

/// LRU + pin bookkeeping over `slots` slots of `slot_bytes` each.
#[derive(Debug, Clone)]
pub struct SlotCache {
    slot_bytes: usize,
    slots: Vec<Slot>,
    tick: u64,
    stats: CacheStats,
}

impl SlotCache {
    /// Slots of `slot_bytes` (the largest expert blob, rounded up to 256 so
    /// every slot starts aligned for any kernel) in a `budget` of bytes.
    pub fn new(slot_bytes: usize, budget: usize) -> Result<Self> {
        let slot_bytes = slot_bytes.max(1).div_ceil(256) * 256;
        if budget < slot_bytes {
            return Err(CudaError::Budget(format!(
                "a budget of {budget} bytes cannot hold one expert blob of {slot_bytes} bytes"
            )));
        }
        let slot = Slot {
            blob: EMPTY,
            len: 0,
            last_use: 0,
            pinned: false,
        };
        Ok(Self {
            slot_bytes,
            slots: vec![slot; budget / slot_bytes],
            tick: 0,
            stats: CacheStats::default(),
        })
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }
    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }
    /// Slots not pinned.
    pub fn unpinned(&self) -> usize {
        self.slots.iter().filter(|s| !s.pinned).count()
    }
    /// Counters so far (same meaning as the CPU cache's).
    pub fn stats(&self) -> CacheStats {
        self.stats
    }
    /// Blobs resident, in slot order.
    pub fn resident(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots
            .iter()
            .filter(|s| s.blob != EMPTY)
            .map(|s| s.blob)
    }
    fn resident_bytes(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.blob != EMPTY)
            .map(|s| s.len)
            .sum()
    }

    /// Finds `blob` (of `len` bytes) or picks the slot to copy it into.
    pub fn lookup(&mut self, blob: u32, len: usize) -> Result<Lookup> {
        self.tick += 1;
        if let Some(i) = self.slots.iter().position(|s| s.blob == blob) {
            self.slots[i].last_use = self.tick;
            self.stats.hits += 1;
            return Ok(Lookup::Hit(i));
        }
        if len > self.slot_bytes {
            return Err(CudaError::Budget(format!(
                "blob {blob} has {len} bytes, a slot {}",
                self.slot_bytes
            )));
        }
        let victim = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.pinned)
            .min_by_key(|(_, s)| if s.blob == EMPTY { 0 } else { s.last_use + 1 })
            .map(|(i, _)| i)
            .ok_or_else(|| CudaError::Budget("every slot is pinned".into()))?;
        let old = self.slots[victim].blob;
        if old != EMPTY {
            self.stats.evictions += 1;
        }
        self.slots[victim] = Slot {
            blob,
            len,
            last_use: self.tick,
            pinned: false,
        };
        self.stats.misses += 1;
        self.stats.bytes_copied += len as u64;
        self.stats.peak_resident_bytes = self
            .stats
            .peak_resident_bytes
            .max(self.resident_bytes() as u64);
        Ok(Lookup::Miss {
            slot: victim,
            evicted: (old != EMPTY).then_some(old),
        })
    }

    /// Looks `blob` up and pins it; fails when that would pin the last unpinned slot.
    pub fn pin(&mut self, blob: u32, len: usize) -> Result<Lookup> {
        let pinned = self.slots.len() - self.unpinned();
        let l = self.lookup(blob, len)?;
        let i = l.slot();
        if !self.slots[i].pinned && pinned + 1 >= self.slots.len() {
            return Err(CudaError::Budget(format!(
                "pinning blob {blob} would leave no unpinned slot ({} slots)",
                self.slots.len()
            )));
        }
        self.slots[i].pinned = true;
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_evicts_the_oldest_unpinned_and_reports_it() {
        let mut c = SlotCache::new(1000, 3 * 1024).unwrap();
        assert_eq!(c.slot_bytes(), 1024);
        assert_eq!(c.slots(), 3);
        assert_eq!(
            c.lookup(7, 900).unwrap(),
            Lookup::Miss {
                slot: 0,
                evicted: None
            }
        );
        assert_eq!(
            c.lookup(8, 900).unwrap(),
            Lookup::Miss {
                slot: 1,
                evicted: None
            }
        );
        assert_eq!(
            c.lookup(9, 900).unwrap(),
            Lookup::Miss {
                slot: 2,
                evicted: None
            }
        );
        assert_eq!(c.lookup(7, 900).unwrap(), Lookup::Hit(0));
        // 8 is now the least recently used.
        assert_eq!(
            c.lookup(10, 900).unwrap(),
            Lookup::Miss {
                slot: 1,
                evicted: Some(8)
            }
        );
        c.pin(9, 900).unwrap();
        // 7 is older than 10; 9 is pinned and must survive.
        assert_eq!(
            c.lookup(11, 900).unwrap(),
            Lookup::Miss {
                slot: 0,
                evicted: Some(7)
            }
        );
        assert_eq!(
            c.lookup(12, 900).unwrap(),
            Lookup::Miss {
                slot: 1,
                evicted: Some(10)
            }
        );
        c.pin(11, 900).unwrap();
        assert!(
            c.pin(12, 900).is_err(),
            "the last unpinned slot cannot be pinned"
        );
        assert_eq!(c.unpinned(), 1);
        let s = c.stats();
        assert_eq!(
            (s.hits, s.misses, s.evictions),
            (4, 6, 3),
            "pins look up too"
        );
        assert!(c.lookup(13, 2000).is_err(), "a blob larger than a slot");
        assert!(
            SlotCache::new(1000, 1000).is_err(),
            "budget below one (rounded) slot"
        );
    }
}
