//! [`Checkpoint`]: one model opened from a Hugging Face directory or a GGUF
//! file, its files memory-mapped and every header validated at open, its
//! tensors returned by neutral name as views into the mapping.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use memmap2::{Mmap, MmapOptions};

use crate::config::{Arch, LlmConfig};
use crate::error::{format_err, Error, Result};
use crate::gguf::{GgufHeader, Metadata, GGUF_MAGIC};
use crate::names::{gguf_source, hf_sources, GgufSource, HfSource, TensorName};
use crate::quant::{blocks_q4_0, blocks_q8_0, dequantize_into, BlockQ4_0, BlockQ8_0, DType};
use crate::safetensors::StHeader;
use crate::tokenizer::Tokenizer;

/// Most shard files a `model.safetensors.index.json` may name.
pub const MAX_SHARDS: usize = 10_000;

/// Largest `config.json`, `tokenizer_config.json`, `tokenizer.model` or
/// safetensors index read.
pub const MAX_JSON: u64 = 64 << 20;

/// A file's bytes: a read-only private mapping, or a buffer (tests, fuzzing).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn map_file(path: &Path) -> Result<Bytes> {
    let file = File::open(path).map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if len == 0 {
        // mmap of an empty file fails; an empty buffer gives the same
        // "truncated" error as any other short file.
        return Ok(Bytes::Owned(Vec::new()));
    }
    // SAFETY: a private (copy-on-write) read-only mapping: this process never
    // writes through it and only reads it as plain bytes, whose every value is
    // valid. What the mapping cannot rule out is another process truncating
    // or rewriting the file while it is open (reads would then see new bytes
    // or fault); like llama.cpp and the safetensors library we require that a
    // model file is not modified while a Checkpoint has it open. All offsets
    // are validated against the length the mapping has.
    let map = unsafe { MmapOptions::new().map_copy_read_only(&file) }.map_err(io_err(path))?;
    Ok(Bytes::Mapped(map))
}

pub(crate) fn read_small(path: &Path) -> Result<Vec<u8>> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut v = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut v)
        .map_err(io_err(path))?;
    if v.len() as u64 > MAX_JSON {
        return Err(format_err(
            &path.display().to_string(),
            "file size",
            format!("larger than the {MAX_JSON}-byte limit for JSON files"),
        ));
    }
    Ok(v)
}

/// Which kind of source a checkpoint was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A Hugging Face directory (config.json + safetensors).
    HuggingFace,
    /// A GGUF file.
    Gguf,
}

struct StFile {
    name: String,
    bytes: Bytes,
    header: StHeader,
}

/// A GGUF file with its validated header.
pub struct GgufFile {
    name: String,
    bytes: Bytes,
    header: GgufHeader,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("name", &self.name)
            .field("len", &self.bytes.len())
            .field("tensors", &self.header.tensors().len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and validates a GGUF file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let bytes = map_file(path)?;
        let name = path.display().to_string();
        let header = GgufHeader::parse(&bytes, &name)?;
        Ok(GgufFile {
            name,
            bytes,
            header,
        })
    }

    /// Validates a GGUF file held in memory; `name` is used in messages.
    pub fn from_bytes(bytes: Vec<u8>, name: &str) -> Result<GgufFile> {
        let header = GgufHeader::parse(&bytes, name)?;
        Ok(GgufFile {
            name: name.to_string(),
            bytes: Bytes::Owned(bytes),
            header,
        })
    }

    /// The validated header.
    pub fn header(&self) -> &GgufHeader {
        &self.header
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// A reader for the metadata values.
    pub fn metadata(&self) -> Metadata<'_> {
        Metadata {
            header: &self.header,
            bytes: &self.bytes,
            file: &self.name,
        }
    }

    /// The name used in messages (the path).
    pub fn name(&self) -> &str {
        &self.name
    }
}

enum Inner {
    Hf {
        dir: String,
        files: Vec<StFile>,
        index: HashMap<String, (usize, usize)>,
        tokenizer_dir: Option<PathBuf>,
    },
    Gguf(GgufFile),
}

/// A tensor by neutral name: `[rows, cols]` (rows = output dimension) in
/// Hugging Face row order, its element type, and its bytes.
///
/// `data` borrows the file mapping (`Cow::Borrowed`) except in the two cases
/// where a GGUF file stores the tensor differently and it must be rebuilt
/// (`Cow::Owned`, see [`Checkpoint::needs_copy`]): the row-permuted `attn_q`
/// and `attn_k` of `llama` (Mixtral) and `granitemoe` files, and DeepSeek's
/// `kv_b`, which llama.cpp splits into `attn_k_b` and `attn_v_b`.
#[derive(Clone, Debug)]
pub struct Tensor<'a> {
    /// The neutral name.
    pub name: TensorName,
    /// The name in the source file (with a `[expert e]` suffix for a slice of
    /// a stacked tensor).
    pub source_name: String,
    /// Element type.
    pub dtype: DType,
    /// Output dimension.
    pub rows: usize,
    /// Input dimension (the row length; a multiple of the block length).
    pub cols: usize,
    /// `rows` rows of `dtype.row_bytes(cols)` bytes each.
    pub data: Cow<'a, [u8]>,
}

impl<'a> Tensor<'a> {
    /// `[rows, cols]`.
    pub fn shape(&self) -> [usize; 2] {
        [self.rows, self.cols]
    }

    /// Whether the bytes are a view into the file (no copy was made).
    pub fn is_borrowed(&self) -> bool {
        matches!(self.data, Cow::Borrowed(_))
    }

    /// Bytes of one row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// Row `r`'s bytes.
    pub fn row(&self, r: usize) -> Option<&[u8]> {
        let rb = self.row_bytes();
        self.data.get(r.checked_mul(rb)?..(r + 1).checked_mul(rb)?)
    }

    /// Every element as f32 (dequantized as ggml does), row-major.
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        let n = self.rows.checked_mul(self.cols).ok_or_else(|| {
            Error::Usage(format!(
                "{}: {} x {} overflows",
                self.source_name, self.rows, self.cols
            ))
        })?;
        let mut out = vec![0f32; n];
        dequantize_into(self.dtype, &self.data, &mut out)?;
        Ok(out)
    }

    /// The Q8_0 blocks, row-major (`cols / 32` per row), without copying.
    pub fn q8_0_blocks(&self) -> Result<&[BlockQ8_0]> {
        self.expect(DType::Q8_0)?;
        blocks_q8_0(&self.data)
    }

    /// The Q4_0 blocks, row-major (`cols / 32` per row), without copying.
    pub fn q4_0_blocks(&self) -> Result<&[BlockQ4_0]> {
        self.expect(DType::Q4_0)?;
        blocks_q4_0(&self.data)
    }

    fn expect(&self, d: DType) -> Result<()> {
        if self.dtype != d {
            return Err(Error::Usage(format!(
                "{} ({}) is {}, not {d}",
                self.source_name, self.name, self.dtype
            )));
        }
        Ok(())
    }
}

/// Undoes llama.cpp's row permutation of `attn_q`/`attn_k` (and their biases)
/// in `llama` and `granitemoe` GGUF files.
///
/// The converter stores `w.reshape(heads, 2, d/2, cols).swapaxes(1, 2)`, with
/// `d = rows / heads` (heads = key/value heads for `attn_k`): stored row
/// `h*d + 2i + j` is Hugging Face row `h*d + j*d/2 + i`. `data` holds `rows`
/// rows of equal size, which are moved whole, so quantized blocks stay
/// bit-exact. The result is a new buffer: this is the one place the importer
/// copies tensor bytes for a non-DeepSeek model.
pub fn unpermute_rows(data: &[u8], rows: usize, heads: usize) -> Result<Vec<u8>> {
    if rows == 0
        || heads == 0
        || !rows.is_multiple_of(heads)
        || !(rows / heads).is_multiple_of(2)
        || !data.len().is_multiple_of(rows)
    {
        return Err(Error::Usage(format!(
            "cannot unpermute {rows} rows ({} bytes) over {heads} heads: each head needs an even \
             number of equal rows",
            data.len()
        )));
    }
    let rb = data.len() / rows;
    let d = rows / heads;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for j in 0..2 {
                let src = h * d + 2 * i + j;
                let dst = h * d + j * (d / 2) + i;
                out[dst * rb..(dst + 1) * rb].copy_from_slice(&data[src * rb..(src + 1) * rb]);
            }
        }
    }
    Ok(out)
}

/// A stored tensor found for a neutral name: where its bytes are and how to
/// turn them into the neutral form.
struct Located<'a> {
    source_name: String,
    dtype: DType,
    rows: usize,
    cols: usize,
    bytes: &'a [u8],
    fix: Fix<'a>,
}

enum Fix<'a> {
    None,
    /// Undo the Q/K row permutation over this many heads.
    Unpermute(usize),
    /// Build MLA kv_b from k_b `[heads, kvr, nope]` and v_b `[heads, v, kvr]`.
    KvB {
        k: (DType, &'a [u8]),
        v: (DType, &'a [u8]),
        heads: usize,
        nope: usize,
        vdim: usize,
    },
}

/// A model opened from a Hugging Face directory or a GGUF file.
pub struct Checkpoint {
    path: PathBuf,
    config: LlmConfig,
    inner: Inner,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("kind", &self.kind())
            .field("arch", &self.config.arch)
            .finish()
    }
}

fn dtype_of_st(name: &str, dtype: &str) -> Result<DType> {
    match dtype {
        "F32" => Ok(DType::F32),
        "F16" => Ok(DType::F16),
        "BF16" => Ok(DType::BF16),
        other => Err(Error::UnsupportedType {
            tensor: name.to_string(),
            dtype: other.to_string(),
        }),
    }
}

/// Whether a stored shape (outermost first) is the neutral `[rows, cols]`
/// (a vector may be stored as `[n]` or `[1, n]`).
fn shape_is(found: &[u64], want: [usize; 2]) -> bool {
    let w = [want[0] as u64, want[1] as u64];
    match found {
        [c] => w[0] == 1 && *c == w[1],
        [r, c] => [*r, *c] == w,
        _ => false,
    }
}

impl Checkpoint {
    /// Opens a model: a directory with `config.json` (Hugging Face; also the
    /// path of that `config.json`), or a file starting with the GGUF magic.
    /// Every header is validated and every tensor the configuration implies is
    /// located and shape-checked before this returns; no tensor data is read.
    pub fn open(path: impl AsRef<Path>) -> Result<Checkpoint> {
        let path = path.as_ref();
        let meta = std::fs::metadata(path).map_err(io_err(path))?;
        if meta.is_dir() {
            if path.join("config.json").is_file() {
                return Self::open_hf(path);
            }
            return Err(Error::NotAModel {
                path: path.to_path_buf(),
                detail: "a directory without config.json".into(),
            });
        }
        if path.file_name().is_some_and(|n| n == "config.json") {
            let dir = path.parent().unwrap_or(Path::new("."));
            return Self::open_hf(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            });
        }
        let mut magic = [0u8; 4];
        let mut f = File::open(path).map_err(io_err(path))?;
        let n = read_up_to(&mut f, &mut magic).map_err(io_err(path))?;
        if n == 4 && magic == GGUF_MAGIC {
            return Self::from_gguf(GgufFile::open(path)?);
        }
        Err(Error::NotAModel {
            path: path.to_path_buf(),
            detail: format!(
                "a file starting with {:02x?}, not the GGUF magic",
                &magic[..n]
            ),
        })
    }

    /// Opens a validated GGUF file.
    pub fn from_gguf(file: GgufFile) -> Result<Checkpoint> {
        let config = LlmConfig::from_gguf(&file.header, &file.bytes, &file.name)?;
        let c = Checkpoint {
            path: PathBuf::from(&file.name),
            config,
            inner: Inner::Gguf(file),
        };
        c.check_tensors()?;
        Ok(c)
    }

    /// Builds a Hugging Face checkpoint from in-memory parts: the text of
    /// `config.json` and safetensors files as (name, bytes). For tests and
    /// fuzzing; it has no tokenizer.
    pub fn from_hf_parts(config_json: &[u8], shards: Vec<(String, Vec<u8>)>) -> Result<Checkpoint> {
        let config = LlmConfig::from_hf_json(config_json, "config.json")?;
        let mut files = Vec::new();
        for (name, bytes) in shards {
            let header = StHeader::parse(&bytes, &name)?;
            files.push(StFile {
                name,
                bytes: Bytes::Owned(bytes),
                header,
            });
        }
        Self::hf(PathBuf::from("(memory)"), config, files, None)
    }

    fn open_hf(dir: &Path) -> Result<Checkpoint> {
        let cfg_path = dir.join("config.json");
        let config =
            LlmConfig::from_hf_json(&read_small(&cfg_path)?, &cfg_path.display().to_string())?;
        let index_path = dir.join("model.safetensors.index.json");
        let mut names: Vec<String> = Vec::new();
        let mut weight_map: Vec<(String, String)> = Vec::new();
        if index_path.is_file() {
            let iname = index_path.display().to_string();
            let v: serde_json::Value = serde_json::from_slice(&read_small(&index_path)?)
                .map_err(|e| format_err(&iname, "JSON", e.to_string()))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| format_err(&iname, "weight_map", "missing or not an object"))?;
            for (tensor, file) in map {
                let file = file.as_str().ok_or_else(|| {
                    format_err(&iname, format!("weight_map `{tensor}`"), "not a string")
                })?;
                let plain =
                    !file.is_empty() && !file.contains(['/', '\\']) && file != "." && file != "..";
                if !plain {
                    return Err(format_err(
                        &iname,
                        format!("weight_map `{tensor}`"),
                        format!("`{file}` is not a plain file name in the checkpoint directory"),
                    ));
                }
                if !names.iter().any(|n| n == file) {
                    if names.len() == MAX_SHARDS {
                        return Err(format_err(
                            &iname,
                            "weight_map",
                            format!("more than {MAX_SHARDS} files"),
                        ));
                    }
                    names.push(file.to_string());
                }
                weight_map.push((tensor.clone(), file.to_string()));
            }
        } else if dir.join("model.safetensors").is_file() {
            names.push("model.safetensors".into());
        } else {
            return Err(Error::NotAModel {
                path: dir.to_path_buf(),
                detail: "no model.safetensors or model.safetensors.index.json".into(),
            });
        }
        let mut files = Vec::with_capacity(names.len());
        for n in &names {
            let p = dir.join(n);
            let bytes = map_file(&p)?;
            let name = p.display().to_string();
            let header = StHeader::parse(&bytes, &name)?;
            files.push(StFile {
                name,
                bytes,
                header,
            });
        }
        for (tensor, file) in &weight_map {
            let Some(f) = names.iter().position(|n| n == file) else {
                continue;
            };
            if files[f].header.tensor(tensor).is_none() {
                return Err(Error::MissingTensor {
                    tensor: "(listed in the index)".into(),
                    source_name: tensor.clone(),
                    file: files[f].name.clone(),
                });
            }
        }
        Self::hf(dir.to_path_buf(), config, files, Some(dir.to_path_buf()))
    }

    fn hf(
        path: PathBuf,
        config: LlmConfig,
        files: Vec<StFile>,
        tok: Option<PathBuf>,
    ) -> Result<Checkpoint> {
        let mut index = HashMap::new();
        for (fi, f) in files.iter().enumerate() {
            for (ti, t) in f.header.tensors().iter().enumerate() {
                if let Some((other, _)) = index.insert(t.name.clone(), (fi, ti)) {
                    let other: usize = other;
                    return Err(format_err(
                        &f.name,
                        format!("tensor `{}`", t.name),
                        format!("also in {}", files[other].name),
                    ));
                }
            }
        }
        let c = Checkpoint {
            config,
            inner: Inner::Hf {
                dir: path.display().to_string(),
                files,
                index,
                tokenizer_dir: tok,
            },
            path,
        };
        c.check_tensors()?;
        Ok(c)
    }

    /// The model's configuration.
    pub fn config(&self) -> &LlmConfig {
        &self.config
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hugging Face or GGUF.
    pub fn kind(&self) -> SourceKind {
        match self.inner {
            Inner::Hf { .. } => SourceKind::HuggingFace,
            Inner::Gguf(_) => SourceKind::Gguf,
        }
    }

    /// The GGUF file, for a GGUF checkpoint (metadata beyond the config).
    pub fn gguf(&self) -> Option<&GgufFile> {
        match &self.inner {
            Inner::Gguf(g) => Some(g),
            Inner::Hf { .. } => None,
        }
    }

    /// Every tensor of the model, in order (see [`TensorName::all`]).
    pub fn tensor_names(&self) -> Vec<TensorName> {
        TensorName::all(&self.config)
    }

    /// Locates and shape-checks every tensor the configuration implies (done
    /// by the constructors).
    pub fn check_tensors(&self) -> Result<()> {
        for t in self.tensor_names() {
            self.locate(t)?;
        }
        Ok(())
    }

    /// Whether [`Checkpoint::tensor`] has to build `name` in a new buffer
    /// instead of returning a view of the file.
    pub fn needs_copy(&self, name: TensorName) -> Result<bool> {
        Ok(!matches!(self.locate(name)?.fix, Fix::None))
    }

    /// The tensor `name`. A view into the file, except where the module
    /// documentation of [`Tensor`] says a copy is needed. Asking for the
    /// output projection of a model with tied embeddings returns the
    /// embedding (with `name` = `Output`).
    pub fn tensor(&self, name: TensorName) -> Result<Tensor<'_>> {
        let l = self.locate(name)?;
        let data = match l.fix {
            Fix::None => Cow::Borrowed(l.bytes),
            Fix::Unpermute(heads) => {
                // A bias is `[1, n]`: its elements are the rows to move.
                let rows = if l.rows == 1 { l.cols } else { l.rows };
                Cow::Owned(unpermute_rows(l.bytes, rows, heads)?)
            }
            Fix::KvB {
                k,
                v,
                heads,
                nope,
                vdim,
            } => Cow::Owned(assemble_kv_b(k, v, heads, nope, vdim, l.cols, l.dtype)?),
        };
        Ok(Tensor {
            name,
            source_name: l.source_name,
            dtype: l.dtype,
            rows: l.rows,
            cols: l.cols,
            data,
        })
    }

    fn locate(&self, name: TensorName) -> Result<Located<'_>> {
        let cfg = &self.config;
        let Some(want) = name.shape(cfg) else {
            return Err(Error::Usage(format!(
                "{name} is not a tensor of this {} model ({} layers, {} experts)",
                cfg.arch, cfg.num_layers, cfg.num_experts
            )));
        };
        let lookup = if name == TensorName::Output && cfg.tie_word_embeddings {
            TensorName::TokenEmbd
        } else {
            name
        };
        match &self.inner {
            Inner::Hf {
                dir, files, index, ..
            } => {
                let cands = hf_sources(cfg, lookup);
                let found = cands.iter().find(|c| {
                    let n = match c {
                        HfSource::Whole(n) | HfSource::Stacked { name: n, .. } => n,
                    };
                    index.contains_key(n)
                });
                let Some(src) = found else {
                    let first = match cands.first() {
                        Some(HfSource::Whole(n)) | Some(HfSource::Stacked { name: n, .. }) => {
                            n.clone()
                        }
                        None => String::new(),
                    };
                    return Err(Error::MissingTensor {
                        tensor: name.to_string(),
                        source_name: first,
                        file: dir.clone(),
                    });
                };
                match src {
                    HfSource::Whole(n) => {
                        let (fi, ti) = index[n];
                        let f = &files[fi];
                        let t = &f.header.tensors()[ti];
                        if !shape_is(&t.shape, want) {
                            return Err(Error::ShapeMismatch {
                                tensor: name.to_string(),
                                source_name: n.clone(),
                                expected: if want[0] == 1 {
                                    vec![want[1] as u64]
                                } else {
                                    vec![want[0] as u64, want[1] as u64]
                                },
                                found: t.shape.clone(),
                            });
                        }
                        Ok(Located {
                            source_name: n.clone(),
                            dtype: dtype_of_st(n, &t.dtype)?,
                            rows: want[0],
                            cols: want[1],
                            bytes: &f.bytes[t.data.clone()],
                            fix: Fix::None,
                        })
                    }
                    HfSource::Stacked {
                        name: n,
                        expert,
                        row0,
                    } => {
                        let (fi, ti) = index[n];
                        let f = &files[fi];
                        let t = &f.header.tensors()[ti];
                        // input_linear / gate_up_proj hold gate and up rows: [E, 2I, H].
                        let total_rows = if matches!(lookup, TensorName::ExpertDown { .. }) {
                            want[0]
                        } else {
                            2 * want[0]
                        };
                        let expected = [cfg.num_experts as u64, total_rows as u64, want[1] as u64];
                        if t.shape != expected {
                            return Err(Error::ShapeMismatch {
                                tensor: name.to_string(),
                                source_name: n.clone(),
                                expected: expected.to_vec(),
                                found: t.shape.clone(),
                            });
                        }
                        let dtype = dtype_of_st(n, &t.dtype)?;
                        let rb = dtype.row_bytes(want[1]).unwrap_or(0);
                        let start = t.data.start + (expert * total_rows + row0) * rb;
                        Ok(Located {
                            source_name: format!("{n}[expert {expert}]"),
                            dtype,
                            rows: want[0],
                            cols: want[1],
                            bytes: &f.bytes[start..start + want[0] * rb],
                            fix: Fix::None,
                        })
                    }
                }
            }
            Inner::Gguf(g) => self.locate_gguf(g, name, lookup, want),
        }
    }

    fn locate_gguf<'a>(
        &self,
        g: &'a GgufFile,
        name: TensorName,
        lookup: TensorName,
        want: [usize; 2],
    ) -> Result<Located<'a>> {
        let cfg = &self.config;
        let get = |n: &str| {
            g.header.tensor(n).ok_or_else(|| Error::MissingTensor {
                tensor: name.to_string(),
                source_name: n.to_string(),
                file: g.name.clone(),
            })
        };
        let dtype_of = |t: &crate::gguf::TensorInfo| {
            DType::from_ggml(t.ggml_type).ok_or_else(|| Error::UnsupportedType {
                tensor: t.name.clone(),
                dtype: t.type_name().to_string(),
            })
        };
        let mismatch = |n: &str, expected: Vec<u64>, found: Vec<u64>| Error::ShapeMismatch {
            tensor: name.to_string(),
            source_name: n.to_string(),
            expected,
            found,
        };
        let neutral_np = |w: [usize; 2]| {
            if w[0] == 1 {
                vec![w[1] as u64]
            } else {
                vec![w[0] as u64, w[1] as u64]
            }
        };
        match gguf_source(lookup) {
            GgufSource::Whole(n) => {
                let t = get(&n)?;
                let np = t.numpy_shape();
                // 1-D vectors may be written as [n] or [1, n].
                if !shape_is(&np, want) {
                    return Err(mismatch(&n, neutral_np(want), np));
                }
                let dtype = dtype_of(t)?;
                let fix = match lookup {
                    TensorName::AttnQ { .. } | TensorName::AttnQBias { .. }
                        if cfg.arch.gguf_permutes_qk() =>
                    {
                        Fix::Unpermute(cfg.num_heads)
                    }
                    TensorName::AttnK { .. } | TensorName::AttnKBias { .. }
                        if cfg.arch.gguf_permutes_qk() =>
                    {
                        Fix::Unpermute(cfg.num_kv_heads)
                    }
                    _ => Fix::None,
                };
                if matches!(fix, Fix::Unpermute(_)) && want[0] == 1 && dtype.is_quantized() {
                    return Err(Error::UnsupportedType {
                        tensor: n,
                        dtype: format!("{dtype} (a quantized permuted bias)"),
                    });
                }
                Ok(Located {
                    source_name: n,
                    dtype,
                    rows: want[0],
                    cols: want[1],
                    bytes: &g.bytes[t.data.clone()],
                    fix,
                })
            }
            GgufSource::Stacked { name: n, expert } => {
                let t = get(&n)?;
                let np = t.numpy_shape();
                let expected = vec![cfg.num_experts as u64, want[0] as u64, want[1] as u64];
                if np != expected {
                    return Err(mismatch(&n, expected, np));
                }
                let dtype = dtype_of(t)?;
                let per = t.data.len() / cfg.num_experts;
                let start = t.data.start + expert * per;
                Ok(Located {
                    source_name: format!("{n}[expert {expert}]"),
                    dtype,
                    rows: want[0],
                    cols: want[1],
                    bytes: &g.bytes[start..start + per],
                    fix: Fix::None,
                })
            }
            GgufSource::KvB { whole, k_b, v_b } => {
                if let Some(t) = g.header.tensor(&whole) {
                    let np = t.numpy_shape();
                    if !shape_is(&np, want) {
                        return Err(mismatch(&whole, neutral_np(want), np));
                    }
                    return Ok(Located {
                        source_name: whole,
                        dtype: dtype_of(t)?,
                        rows: want[0],
                        cols: want[1],
                        bytes: &g.bytes[t.data.clone()],
                        fix: Fix::None,
                    });
                }
                let mla = cfg
                    .mla
                    .ok_or_else(|| Error::Usage(format!("{name} needs MLA dimensions")))?;
                let (heads, kvr, nope, vd) = (
                    cfg.num_heads as u64,
                    mla.kv_lora_rank as u64,
                    mla.qk_nope_head_dim as u64,
                    mla.v_head_dim as u64,
                );
                let kt = get(&k_b)?;
                let vt = get(&v_b)?;
                if kt.numpy_shape() != [heads, kvr, nope] {
                    return Err(mismatch(&k_b, vec![heads, kvr, nope], kt.numpy_shape()));
                }
                if vt.numpy_shape() != [heads, vd, kvr] {
                    return Err(mismatch(&v_b, vec![heads, vd, kvr], vt.numpy_shape()));
                }
                let (kd, vdt) = (dtype_of(kt)?, dtype_of(vt)?);
                let dtype = if kd == vdt && !kd.is_quantized() {
                    kd
                } else {
                    DType::F32
                };
                Ok(Located {
                    source_name: format!("{k_b} + {v_b}"),
                    dtype,
                    rows: want[0],
                    cols: want[1],
                    bytes: &[],
                    fix: Fix::KvB {
                        k: (kd, &g.bytes[kt.data.clone()]),
                        v: (vdt, &g.bytes[vt.data.clone()]),
                        heads: cfg.num_heads,
                        nope: mla.qk_nope_head_dim,
                        vdim: mla.v_head_dim,
                    },
                })
            }
        }
    }

    /// The tokenizer: for a Hugging Face directory from `tokenizer.json` (or
    /// `tokenizer.model`), for GGUF from the file's vocabulary. Fails with
    /// [`Error::VocabMismatch`] when it has more ids than the embedding has rows.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let tok = match &self.inner {
            Inner::Gguf(g) => Tokenizer::from_gguf(&g.metadata())?,
            Inner::Hf {
                tokenizer_dir: Some(d),
                ..
            } => Tokenizer::from_hf_dir(d, &self.config)?,
            Inner::Hf {
                tokenizer_dir: None,
                ..
            } => {
                return Err(Error::Tokenizer {
                    source_name: "(memory)".into(),
                    detail: "a checkpoint built from memory has no tokenizer files".into(),
                })
            }
        };
        tok.check_vocab(self.config.vocab_size)?;
        Ok(tok)
    }

    /// The architecture.
    pub fn arch(&self) -> Arch {
        self.config.arch
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// MLA `kv_b` `[heads * (nope + v), kvr]` from llama.cpp's `attn_k_b`
/// `[heads, kvr, nope]` (transposed per head) and `attn_v_b` `[heads, v, kvr]`.
/// Float inputs of one type keep it (elements moved bit-exactly); anything
/// else is dequantized and the result is F32.
fn assemble_kv_b(
    k: (DType, &[u8]),
    v: (DType, &[u8]),
    heads: usize,
    nope: usize,
    vdim: usize,
    kvr: usize,
    out_dtype: DType,
) -> Result<Vec<u8>> {
    let rows = heads * (nope + vdim);
    if out_dtype != DType::F32 || k.0 == DType::F32 && v.0 == DType::F32 {
        if out_dtype.is_quantized() {
            return Err(Error::Usage("kv_b: quantized output".into()));
        }
        let es = out_dtype.block_bytes();
        let mut out = vec![0u8; rows * kvr * es];
        for h in 0..heads {
            for r in 0..nope {
                for c in 0..kvr {
                    let src = ((h * kvr + c) * nope + r) * es;
                    let dst = ((h * (nope + vdim) + r) * kvr + c) * es;
                    out[dst..dst + es].copy_from_slice(&k.1[src..src + es]);
                }
            }
            let vs = h * vdim * kvr * es;
            let vd = (h * (nope + vdim) + nope) * kvr * es;
            out[vd..vd + vdim * kvr * es].copy_from_slice(&v.1[vs..vs + vdim * kvr * es]);
        }
        return Ok(out);
    }
    // Mixed or quantized: dequantize (k_b rows are `nope` long, v_b rows `kvr`).
    let mut kf = vec![0f32; heads * kvr * nope];
    dequantize_into(k.0, k.1, &mut kf)?;
    let mut vf = vec![0f32; heads * vdim * kvr];
    dequantize_into(v.0, v.1, &mut vf)?;
    let mut out = Vec::with_capacity(rows * kvr * 4);
    for h in 0..heads {
        for r in 0..nope {
            for c in 0..kvr {
                out.extend(kf[(h * kvr + c) * nope + r].to_le_bytes());
            }
        }
        for x in &vf[h * vdim * kvr..(h + 1) * vdim * kvr] {
            out.extend(x.to_le_bytes());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_the_converter() {
        // rows = 2 heads x d 4, 1 byte per row: python's permute of [0..8).
        let heads = 2;
        let d = 4;
        let orig: Vec<u8> = (0..8).collect();
        // permuted[h, i, j] = orig[h, j, i] with shape (heads, d/2, 2).
        let mut perm = vec![0u8; 8];
        for h in 0..heads {
            for i in 0..d / 2 {
                for j in 0..2 {
                    perm[h * d + 2 * i + j] = orig[h * d + j * (d / 2) + i];
                }
            }
        }
        assert_eq!(perm, vec![0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(unpermute_rows(&perm, 8, heads).unwrap(), orig);
        assert!(unpermute_rows(&perm, 8, 3).is_err());
        assert!(unpermute_rows(&perm, 6, 3).is_err());
    }

    #[test]
    fn kv_b_assembly() {
        // heads 1, nope 2, v 1, kvr 3 (f32): hf rows [k0, k1, v0].
        let hf: Vec<f32> = (0..9).map(|x| x as f32).collect();
        // k_b[c][r] = hf[r][c]; v_b[r][c] = hf[2 + r][c].
        let mut kb = Vec::new();
        for c in 0..3 {
            for r in 0..2 {
                kb.extend(hf[r * 3 + c].to_le_bytes());
            }
        }
        let vb: Vec<u8> = hf[6..].iter().flat_map(|x| x.to_le_bytes()).collect();
        let out =
            assemble_kv_b((DType::F32, &kb), (DType::F32, &vb), 1, 2, 1, 3, DType::F32).unwrap();
        let want: Vec<u8> = hf.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(out, want);
    }
}
