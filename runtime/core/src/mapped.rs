//! Memory-mapped models and aligned arenas (std).

use std::fs::File;
use std::path::Path;

use memmap2::Mmap;
use taskpath_format::{Layout, Package};

use crate::error::{Error, Result};
use crate::model::Model;

/// A model whose packages are memory-mapped files. The mappings are read-only
/// and shared: pages are read from the file only when a session touches them.
#[derive(Debug)]
pub struct MappedModel {
    maps: Vec<(Mmap, Layout)>,
}

fn map(path: &Path) -> Result<Mmap> {
    let f = File::open(path).map_err(|_| Error::Io("cannot open package file"))?;
    // SAFETY: the map is read-only and private to this process; the file may be
    // changed by another process, which is the caller's contract (as for every
    // mmap-based loader); the reader never trusts the bytes beyond validation.
    unsafe { Mmap::map(&f) }.map_err(|_| Error::Io("cannot memory-map package file"))
}

impl MappedModel {
    /// Maps and validates a base package.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with_deltas(path, &[] as &[&Path])
    }

    /// Maps a base package and a chain of delta packs (in order) and validates
    /// the chain; the base file is never written.
    pub fn open_with_deltas<P: AsRef<Path>>(base: impl AsRef<Path>, deltas: &[P]) -> Result<Self> {
        let mut maps = Vec::new();
        let m = map(base.as_ref())?;
        let layout = Package::parse(&m)?.layout();
        maps.push((m, layout));
        for d in deltas {
            let m = map(d.as_ref())?;
            let layout = Package::parse(&m)?.layout();
            maps.push((m, layout));
        }
        let s = Self { maps };
        s.model()?;
        Ok(s)
    }

    /// The model view (chain checks are repeated; they read only metadata).
    pub fn model(&self) -> Result<Model<'_>> {
        fn view((m, l): &(Mmap, Layout)) -> Result<Package<'_>> {
            Package::view(m, *l).ok_or(Error::Io("mapping changed size"))
        }
        let mut model = Model::from_package(view(&self.maps[0])?)?;
        for part in &self.maps[1..] {
            model = model.with_delta_package(view(part)?)?;
        }
        Ok(model)
    }

    /// The mapped bytes of package `i` of the chain.
    pub fn bytes(&self, i: usize) -> Option<&[u8]> {
        self.maps.get(i).map(|(m, _)| &m[..])
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
