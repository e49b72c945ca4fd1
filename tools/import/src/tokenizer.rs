//! Tokenizers for the imported models, in pure Rust.
//!
//! - A Hugging Face directory: `tokenizer.json` through the `tokenizers` crate
//!   (built without its C/C++ features: `fancy-regex` instead of oniguruma),
//!   except that a SentencePiece BPE `tokenizer.model` (protobuf, parsed here)
//!   is preferred when present, run with the SentencePiece BPE algorithm
//!   below: transformers' conversion of it to tokenizer.json departs from
//!   sentencepiece on runs of spaces, and llama.cpp follows sentencepiece.
//! - A GGUF file, from its vocabulary (`tokenizer.ggml.*`):
//!   - `model = "gpt2"` with `pre = "gpt-2"`: a byte-level BPE built from
//!     `tokens` and `merges` (through the `tokenizers` crate, with the GPT-2
//!     split regex, which is llama.cpp's `gpt-2` pre-tokenizer); tokens of type
//!     CONTROL (3) become special added tokens, USER_DEFINED (4) plain added
//!     tokens.
//!   - `model = "llama"`: SentencePiece-style BPE with byte fallback from
//!     `tokens`, `scores` and `token_type`, as llama.cpp's SPM tokenizer does
//!     it: prepend a space (`add_space_prefix`, default true), replace spaces
//!     with U+2581, split into characters, repeatedly merge the adjacent pair
//!     whose concatenation is a token with the highest score (leftmost on
//!     ties), then emit each symbol's token, re-splitting a symbol that is not
//!     a token along its merge history and falling back to `<0xXX>` byte
//!     tokens for characters that are not tokens.
//!
//! [`Tokenizer::encode`] never adds BOS/EOS ([`Tokenizer::encode_with_special`]
//! does, as the model's files ask). With the `tokenizers` crate an added token
//! written in the text (e.g. `<|endoftext|>`) maps to its id, as in
//! transformers; the SentencePiece path treats all text as text, as llama.cpp
//! does without `parse_special`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;
use std::str::FromStr;

use serde_json::json;

use crate::checkpoint::read_small;
use crate::config::LlmConfig;
use crate::error::{Error, Result};
use crate::gguf::Metadata;

/// SentencePiece / GGUF token types.
const TYPE_NORMAL: i64 = 1;
const TYPE_UNKNOWN: i64 = 2;
const TYPE_CONTROL: i64 = 3;
const TYPE_USER_DEFINED: i64 = 4;
const TYPE_BYTE: i64 = 6;

/// Most tokens accepted in one vocabulary.
pub const MAX_VOCAB: usize = 1 << 22;

enum Inner {
    Hf(Box<tokenizers::Tokenizer>),
    Spm(Spm),
}

/// A tokenizer with the model's special tokens.
pub struct Tokenizer {
    inner: Inner,
    source: String,
    size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
    add_bos: bool,
    add_eos: bool,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("source", &self.source)
            .field("kind", &self.kind())
            .field("size", &self.size)
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl Tokenizer {
    fn err(source: &str, detail: impl Into<String>) -> Error {
        Error::Tokenizer {
            source_name: source.to_string(),
            detail: detail.into(),
        }
    }

    /// `"tokenizers"` (byte-level BPE and any tokenizer.json) or `"spm"`.
    pub fn kind(&self) -> &'static str {
        match self.inner {
            Inner::Hf(_) => "tokenizers",
            Inner::Spm(_) => "spm",
        }
    }

    /// Number of ids (one past the largest id).
    pub fn vocab_size(&self) -> usize {
        self.size
    }

    /// The beginning-of-sequence id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Whether [`Tokenizer::encode_with_special`] prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Fails when the vocabulary has more ids than `embedding_rows`.
    pub fn check_vocab(&self, embedding_rows: usize) -> Result<()> {
        if self.size > embedding_rows {
            return Err(Error::VocabMismatch {
                vocab: self.size,
                embedding_rows,
            });
        }
        Ok(())
    }

    /// Token ids of `text`, without BOS/EOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match &self.inner {
            Inner::Hf(t) => t
                .encode(text, false)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Self::err(&self.source, e.to_string())),
            Inner::Spm(s) => Ok(s.encode(text)),
        }
    }

    /// Token ids of `text`, with BOS and EOS where the model's files ask for them.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        if let (true, Some(b)) = (self.add_bos, self.bos) {
            ids.push(b);
        }
        ids.extend(self.encode(text)?);
        if let (true, Some(e)) = (self.add_eos, self.eos) {
            ids.push(e);
        }
        Ok(ids)
    }

    /// The text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        match &self.inner {
            Inner::Hf(t) => t
                .decode(ids, true)
                .map_err(|e| Self::err(&self.source, e.to_string())),
            Inner::Spm(s) => s.decode(ids).map_err(|d| Self::err(&self.source, d)),
        }
    }

    /// The tokenizer as one self-contained JSON document (what a package
    /// stores, see [`Tokenizer::from_package_json`]): the `tokenizer.json`
    /// or the SentencePiece pieces, and the special-token settings.
    pub fn to_package_json(&self) -> Result<String> {
        let mut v = serde_json::json!({
            "taskpath_tokenizer": 1,
            "bos": self.bos,
            "eos": self.eos,
            "add_bos": self.add_bos,
            "add_eos": self.add_eos,
        });
        match &self.inner {
            Inner::Hf(t) => {
                let json = t
                    .to_string(false)
                    .map_err(|e| Self::err(&self.source, e.to_string()))?;
                v["kind"] = "tokenizers".into();
                v["tokenizer"] = serde_json::from_str(&json)
                    .map_err(|e| Self::err(&self.source, e.to_string()))?;
            }
            Inner::Spm(s) => {
                v["kind"] = "spm".into();
                v["add_space_prefix"] = s.add_space_prefix.into();
                v["pieces"] = s
                    .tokens
                    .iter()
                    .map(|(t, score, ty)| serde_json::json!([t, score, ty]))
                    .collect();
            }
        }
        Ok(v.to_string())
    }

    /// Reads what [`Tokenizer::to_package_json`] wrote (`source` names it in errors).
    pub fn from_package_json(bytes: &[u8], source: &str) -> Result<Tokenizer> {
        let bad = |d: &str| Self::err(source, d.to_string());
        let v: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| bad(&format!("not valid JSON: {e}")))?;
        if v.get("taskpath_tokenizer")
            .and_then(serde_json::Value::as_u64)
            != Some(1)
        {
            return Err(bad("not a taskpath tokenizer document (version 1)"));
        }
        let id = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_u64)
                .and_then(|i| u32::try_from(i).ok())
        };
        let flag = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_bool)
                .unwrap_or(false)
        };
        let mut tok = match v.get("kind").and_then(serde_json::Value::as_str) {
            Some("tokenizers") => {
                let t = v.get("tokenizer").ok_or_else(|| bad("no tokenizer"))?;
                let t: tokenizers::Tokenizer = t
                    .to_string()
                    .parse()
                    .map_err(|e: tokenizers::Error| bad(&e.to_string()))?;
                Self::hf(t, source.to_string())
            }
            Some("spm") => {
                let pieces = v
                    .get("pieces")
                    .and_then(serde_json::Value::as_array)
                    .ok_or_else(|| bad("no pieces"))?;
                let mut tokens = Vec::with_capacity(pieces.len().min(MAX_VOCAB));
                for p in pieces {
                    let (Some(t), Some(score), Some(ty)) = (
                        p.get(0).and_then(serde_json::Value::as_str),
                        p.get(1).and_then(serde_json::Value::as_f64),
                        p.get(2).and_then(serde_json::Value::as_i64),
                    ) else {
                        return Err(bad("a piece is not [text, score, type]"));
                    };
                    tokens.push((t.to_string(), score as f32, ty));
                }
                let spm = Spm::new(tokens, flag("add_space_prefix")).map_err(|d| bad(&d))?;
                Tokenizer {
                    size: spm.tokens.len(),
                    inner: Inner::Spm(spm),
                    source: source.to_string(),
                    bos: None,
                    eos: None,
                    add_bos: false,
                    add_eos: false,
                }
            }
            _ => return Err(bad("unknown tokenizer kind")),
        };
        tok.bos = id("bos");
        tok.eos = id("eos");
        tok.add_bos = flag("add_bos");
        tok.add_eos = flag("add_eos");
        Ok(tok)
    }

    /// Loads a `tokenizer.json`.
    pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer> {
        let source = path.display().to_string();
        let tok = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| Self::err(&source, e.to_string()))?;
        Ok(Self::hf(tok, source))
    }

    fn hf(tok: tokenizers::Tokenizer, source: String) -> Tokenizer {
        let size = tok
            .get_vocab(true)
            .values()
            .max()
            .map_or(0, |&m| m as usize + 1);
        Tokenizer {
            inner: Inner::Hf(Box::new(tok)),
            source,
            size,
            bos: None,
            eos: None,
            add_bos: false,
            add_eos: false,
        }
    }

    /// The tokenizer of a Hugging Face checkpoint directory: a SentencePiece
    /// BPE `tokenizer.model` if there is one, else `tokenizer.json`; BOS/EOS ids from the config, whether to add
    /// them from `tokenizer_config.json` (`add_bos_token`, `add_eos_token`;
    /// when absent, BOS is added for a `LlamaTokenizer`/SentencePiece model).
    pub fn from_hf_dir(dir: &Path, cfg: &LlmConfig) -> Result<Tokenizer> {
        let tc_path = dir.join("tokenizer_config.json");
        let tc: Option<serde_json::Value> = if tc_path.is_file() {
            Some(serde_json::from_slice(&read_small(&tc_path)?).map_err(|e| {
                Self::err(
                    &tc_path.display().to_string(),
                    format!("not valid JSON: {e}"),
                )
            })?)
        } else {
            None
        };
        let class = tc
            .as_ref()
            .and_then(|v| v.get("tokenizer_class"))
            .and_then(|c| c.as_str())
            .unwrap_or("");
        let json = dir.join("tokenizer.json");
        let model = dir.join("tokenizer.model");
        // A SentencePiece BPE model is preferred: it is the reference its
        // tokenizer.json was converted from (the conversion departs from it on
        // runs of spaces) and what llama.cpp reproduces from a GGUF.
        let spm = if model.is_file() {
            let bytes = read_small(&model)?;
            match Self::from_sentencepiece_model(&bytes, &model.display().to_string()) {
                Ok(t) => Some(t),
                Err(e) if !json.is_file() => return Err(e),
                Err(_) => None,
            }
        } else {
            None
        };
        let mut tok = if let Some(t) = spm {
            t
        } else if json.is_file() {
            Self::from_tokenizer_json(&json)?
        } else {
            return Err(Self::err(
                &dir.display().to_string(),
                "no tokenizer.json or tokenizer.model",
            ));
        };
        let spm_like = tok.kind() == "spm" || class.contains("Llama");
        let flag = |k: &str| tc.as_ref().and_then(|v| v.get(k)).and_then(|b| b.as_bool());
        tok.add_bos = flag("add_bos_token").unwrap_or(spm_like);
        tok.add_eos = flag("add_eos_token").unwrap_or(false);
        tok.bos = cfg.bos_token_id.or(tok.bos);
        tok.eos = cfg.eos_token_id.or(tok.eos);
        Ok(tok)
    }

    /// Parses a SentencePiece `tokenizer.model` (BPE models only).
    pub fn from_sentencepiece_model(bytes: &[u8], source: &str) -> Result<Tokenizer> {
        let m = proto::parse_model(bytes).map_err(|d| Self::err(source, d))?;
        if m.model_type != 2 {
            return Err(Self::err(
                source,
                format!(
                    "SentencePiece model type {} is not supported (BPE = 2 is)",
                    m.model_type
                ),
            ));
        }
        let spm = Spm::new(m.pieces, m.add_dummy_prefix).map_err(|d| Self::err(source, d))?;
        let n = spm.tokens.len();
        let id = |i: i64| u32::try_from(i).ok().filter(|&i| (i as usize) < n);
        Ok(Tokenizer {
            size: n,
            inner: Inner::Spm(spm),
            source: source.to_string(),
            bos: id(m.bos_id),
            eos: id(m.eos_id),
            add_bos: true,
            add_eos: false,
        })
    }

    /// The tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(m: &Metadata<'_>) -> Result<Tokenizer> {
        let source = m.file.to_string();
        let model = m
            .str("tokenizer.ggml.model")?
            .ok_or_else(|| Error::Config {
                file: source.clone(),
                key: "tokenizer.ggml.model".into(),
                detail: "missing".into(),
            })?;
        let tokens = m
            .str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| Error::Config {
                file: source.clone(),
                key: "tokenizer.ggml.tokens".into(),
                detail: "missing".into(),
            })?;
        if tokens.len() > MAX_VOCAB {
            return Err(Self::err(
                &source,
                format!("{} tokens (limit {MAX_VOCAB})", tokens.len()),
            ));
        }
        let types = m.num_array("tokenizer.ggml.token_type")?;
        if let Some(t) = &types {
            if t.len() != tokens.len() {
                return Err(Self::err(
                    &source,
                    format!("{} token types for {} tokens", t.len(), tokens.len()),
                ));
            }
        }
        let ty = |i: usize| types.as_ref().map_or(TYPE_NORMAL, |t| t[i] as i64);
        let text = |i: usize| {
            std::str::from_utf8(tokens[i])
                .map_err(|_| Self::err(&source, format!("token {i} is not valid UTF-8")))
        };
        let id = |k: &str| -> Result<Option<u32>> {
            Ok(m.usize(k)?.and_then(|v| u32::try_from(v).ok()))
        };
        let (bos, eos) = (
            id("tokenizer.ggml.bos_token_id")?,
            id("tokenizer.ggml.eos_token_id")?,
        );
        let (inner, default_bos) = match model {
            "gpt2" => {
                let pre = m.str("tokenizer.ggml.pre")?.unwrap_or("default");
                if pre != "gpt-2" {
                    return Err(Self::err(
                        &source,
                        format!("BPE pre-tokenizer `{pre}` is not supported (gpt-2 is)"),
                    ));
                }
                let merges = m.str_array("tokenizer.ggml.merges")?.unwrap_or_default();
                let mut vocab = serde_json::Map::new();
                let mut added = Vec::new();
                for i in 0..tokens.len() {
                    let t = text(i)?;
                    vocab.insert(t.to_string(), json!(i));
                    let special = match ty(i) {
                        _ if t.is_empty() => continue,
                        TYPE_CONTROL => true,
                        TYPE_USER_DEFINED => false,
                        _ => continue,
                    };
                    added.push(
                        json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": special}),
                    );
                }
                let mut pairs = Vec::with_capacity(merges.len());
                for (i, mg) in merges.iter().enumerate() {
                    let s = std::str::from_utf8(mg)
                        .map_err(|_| Self::err(&source, format!("merge {i} is not valid UTF-8")))?;
                    let Some((a, b)) = s.split_once(' ') else {
                        return Err(Self::err(
                            &source,
                            format!("merge {i} `{s}` is not two tokens"),
                        ));
                    };
                    pairs.push(json!([a, b]));
                }
                let j = json!({
                    "version": "1.0",
                    "truncation": null,
                    "padding": null,
                    "added_tokens": added,
                    "normalizer": null,
                    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
                    "post_processor": null,
                    "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                    "model": {"type": "BPE", "dropout": null, "unk_token": null,
                        "continuing_subword_prefix": null, "end_of_word_suffix": null,
                        "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                        "vocab": vocab, "merges": pairs},
                });
                let tok = tokenizers::Tokenizer::from_str(&j.to_string())
                    .map_err(|e| Self::err(&source, e.to_string()))?;
                (Inner::Hf(Box::new(tok)), false)
            }
            "llama" => {
                let scores =
                    m.num_array("tokenizer.ggml.scores")?
                        .ok_or_else(|| Error::Config {
                            file: source.clone(),
                            key: "tokenizer.ggml.scores".into(),
                            detail: "missing (needed by a SentencePiece vocabulary)".into(),
                        })?;
                if scores.len() != tokens.len() {
                    return Err(Self::err(
                        &source,
                        format!("{} scores for {} tokens", scores.len(), tokens.len()),
                    ));
                }
                let mut pieces = Vec::with_capacity(tokens.len());
                for (i, s) in scores.iter().enumerate() {
                    pieces.push((text(i)?.to_string(), *s as f32, ty(i)));
                }
                let prefix = m.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
                (
                    Inner::Spm(Spm::new(pieces, prefix).map_err(|d| Self::err(&source, d))?),
                    true,
                )
            }
            other => {
                return Err(Self::err(
                    &source,
                    format!("tokenizer model `{other}` is not supported (gpt2, llama are)"),
                ))
            }
        };
        let size = match &inner {
            Inner::Hf(t) => t
                .get_vocab(true)
                .values()
                .max()
                .map_or(0, |&m| m as usize + 1),
            Inner::Spm(s) => s.tokens.len(),
        };
        Ok(Tokenizer {
            inner,
            source,
            size,
            bos,
            eos,
            add_bos: m
                .bool("tokenizer.ggml.add_bos_token")?
                .unwrap_or(default_bos),
            add_eos: m.bool("tokenizer.ggml.add_eos_token")?.unwrap_or(false),
        })
    }
}

/// SentencePiece-style BPE (llama.cpp's `llm_tokenizer_spm`).
struct Spm {
    /// (text, score, type) per id.
    tokens: Vec<(String, f32, i64)>,
    index: HashMap<String, u32>,
    add_space_prefix: bool,
    unk: Option<u32>,
}

#[derive(Clone, Copy)]
struct Sym {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Highest score first; on equal scores the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

impl Spm {
    fn new(
        tokens: Vec<(String, f32, i64)>,
        add_space_prefix: bool,
    ) -> std::result::Result<Spm, String> {
        if tokens.is_empty() {
            return Err("empty vocabulary".into());
        }
        if tokens.len() > MAX_VOCAB {
            return Err(format!("{} tokens (limit {MAX_VOCAB})", tokens.len()));
        }
        let mut index = HashMap::with_capacity(tokens.len());
        let mut unk = None;
        for (i, t) in tokens.iter().enumerate() {
            // Later duplicates win, as in llama.cpp's token_to_id map.
            index.insert(t.0.clone(), i as u32);
            if t.2 == TYPE_UNKNOWN && unk.is_none() {
                unk = Some(i as u32);
            }
        }
        Ok(Spm {
            tokens,
            index,
            add_space_prefix,
            unk,
        })
    }

    fn encode(&self, raw: &str) -> Vec<u32> {
        let mut text = String::with_capacity(raw.len() + 3);
        if self.add_space_prefix {
            text.push(' ');
        }
        text.push_str(raw);
        let text = text.replace(' ', "\u{2581}");
        let mut out = Vec::new();
        if text.is_empty() {
            return out;
        }
        let mut syms: Vec<Sym> = Vec::new();
        for (i, (start, c)) in text.char_indices().enumerate() {
            syms.push(Sym {
                start,
                len: c.len_utf8(),
                prev: i.checked_sub(1),
                next: None,
            });
            if i > 0 {
                syms[i - 1].next = Some(i);
            }
        }
        let mut heap = BinaryHeap::new();
        // For every merged text, the last pair that produced it (llama.cpp's rev_merge).
        let mut rev: HashMap<&str, (usize, usize)> = HashMap::new();
        let text: &str = &text;
        for i in 1..syms.len() {
            self.try_add(Some(i - 1), Some(i), &syms, &mut heap, &mut rev, text);
        }
        while let Some(b) = heap.pop() {
            let (l, r) = (b.left, b.right);
            if syms[l].len == 0 || syms[r].len == 0 || syms[l].len + syms[r].len != b.size {
                continue;
            }
            syms[l].len += syms[r].len;
            syms[r].len = 0;
            syms[l].next = syms[r].next;
            if let Some(n) = syms[r].next {
                syms[n].prev = Some(l);
            }
            self.try_add(syms[l].prev, Some(l), &syms, &mut heap, &mut rev, text);
            self.try_add(Some(l), syms[l].next, &syms, &mut heap, &mut rev, text);
        }
        let mut i = Some(0);
        while let Some(s) = i {
            self.resegment(&syms, s, text, &rev, &mut out, 0);
            i = syms[s].next;
        }
        out
    }

    fn try_add<'t>(
        &self,
        l: Option<usize>,
        r: Option<usize>,
        syms: &[Sym],
        heap: &mut BinaryHeap<Bigram>,
        rev: &mut HashMap<&'t str, (usize, usize)>,
        text: &'t str,
    ) {
        let (Some(l), Some(r)) = (l, r) else {
            return;
        };
        let s = &text[syms[l].start..syms[r].start + syms[r].len];
        let Some(&id) = self.index.get(s) else {
            return;
        };
        heap.push(Bigram {
            left: l,
            right: r,
            score: self.tokens[id as usize].1,
            size: s.len(),
        });
        rev.insert(s, (l, r));
    }

    fn resegment(
        &self,
        syms: &[Sym],
        s: usize,
        text: &str,
        rev: &HashMap<&str, (usize, usize)>,
        out: &mut Vec<u32>,
        depth: usize,
    ) {
        let sym = syms[s];
        let piece = &text[sym.start..sym.start + sym.len];
        if let Some(&id) = self.index.get(piece) {
            out.push(id);
            return;
        }
        match rev.get(piece) {
            Some(&(l, r)) if depth < 4096 => {
                self.resegment(syms, l, text, rev, out, depth + 1);
                self.resegment(syms, r, text, rev, out, depth + 1);
            }
            _ => {
                for b in piece.bytes() {
                    let name = format!("<0x{b:02X}>");
                    if let Some(&id) = self.index.get(&name) {
                        out.push(id);
                    } else if let Some(u) = self.unk {
                        out.push(u);
                    }
                }
            }
        }
    }

    fn decode(&self, ids: &[u32]) -> std::result::Result<String, String> {
        let mut bytes = Vec::new();
        let mut first = true;
        for &id in ids {
            let Some((t, _, ty)) = self.tokens.get(id as usize) else {
                return Err(format!(
                    "id {id} is not in the {}-token vocabulary",
                    self.tokens.len()
                ));
            };
            let mut piece: Vec<u8> = match *ty {
                TYPE_CONTROL => continue,
                TYPE_BYTE => match t
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => vec![b],
                    None => t.as_bytes().to_vec(),
                },
                TYPE_USER_DEFINED => t.as_bytes().to_vec(),
                _ => t.replace('\u{2581}', " ").into_bytes(),
            };
            if first && self.add_space_prefix && piece.first() == Some(&b' ') {
                piece.remove(0);
            }
            first = false;
            bytes.extend(piece);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Minimal protobuf reading of SentencePiece's `ModelProto`.
mod proto {
    pub(super) struct Model {
        pub pieces: Vec<(String, f32, i64)>,
        pub model_type: i64,
        pub add_dummy_prefix: bool,
        pub bos_id: i64,
        pub eos_id: i64,
    }

    struct R<'a> {
        b: &'a [u8],
        p: usize,
    }

    impl<'a> R<'a> {
        fn varint(&mut self) -> Result<u64, String> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let &byte = self.b.get(self.p).ok_or("truncated varint")?;
                self.p += 1;
                v |= u64::from(byte & 0x7F) << shift;
                if byte & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err("varint longer than 10 bytes".into())
        }

        fn bytes(&mut self, n: u64) -> Result<&'a [u8], String> {
            let end = usize::try_from(n)
                .ok()
                .and_then(|n| self.p.checked_add(n))
                .filter(|&e| e <= self.b.len())
                .ok_or("truncated field")?;
            let s = &self.b[self.p..end];
            self.p = end;
            Ok(s)
        }

        /// (field, wire type, varint value or fixed32 bits, bytes of a length-delimited field).
        fn field(&mut self) -> Result<(u64, u64, u64, &'a [u8]), String> {
            let key = self.varint()?;
            let (f, w) = (key >> 3, key & 7);
            match w {
                0 => Ok((f, w, self.varint()?, &[])),
                1 => Ok((f, w, 0, self.bytes(8)?)),
                2 => {
                    let n = self.varint()?;
                    Ok((f, w, 0, self.bytes(n)?))
                }
                5 => {
                    let b = self.bytes(4)?;
                    Ok((
                        f,
                        w,
                        u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
                        &[],
                    ))
                }
                _ => Err(format!("unsupported protobuf wire type {w}")),
            }
        }

        fn done(&self) -> bool {
            self.p >= self.b.len()
        }
    }

    pub(super) fn parse_model(b: &[u8]) -> Result<Model, String> {
        let mut m = Model {
            pieces: Vec::new(),
            model_type: 1,
            add_dummy_prefix: true,
            bos_id: 1,
            eos_id: 2,
        };
        let mut r = R { b, p: 0 };
        while !r.done() {
            let (f, w, _, s) = r.field()?;
            match (f, w) {
                (1, 2) => {
                    let mut pr = R { b: s, p: 0 };
                    let (mut text, mut score, mut ty) = (String::new(), 0f32, 1i64);
                    while !pr.done() {
                        let (pf, pw, pv, ps) = pr.field()?;
                        match (pf, pw) {
                            (1, 2) => {
                                text = std::str::from_utf8(ps)
                                    .map_err(|_| "piece is not valid UTF-8")?
                                    .to_string()
                            }
                            (2, 5) => score = f32::from_bits(pv as u32),
                            (3, 0) => ty = pv as i64,
                            _ => {}
                        }
                    }
                    if m.pieces.len() >= super::MAX_VOCAB {
                        return Err(format!("more than {} pieces", super::MAX_VOCAB));
                    }
                    m.pieces.push((text, score, ty));
                }
                (2, 2) => {
                    let mut tr = R { b: s, p: 0 };
                    while !tr.done() {
                        let (tf, tw, tv, _) = tr.field()?;
                        match (tf, tw) {
                            (3, 0) => m.model_type = tv as i64,
                            (41, 0) => m.bos_id = tv as i32 as i64,
                            (42, 0) => m.eos_id = tv as i32 as i64,
                            _ => {}
                        }
                    }
                }
                (3, 2) => {
                    let mut nr = R { b: s, p: 0 };
                    while !nr.done() {
                        let (nf, nw, nv, _) = nr.field()?;
                        if (nf, nw) == (3, 0) {
                            m.add_dummy_prefix = nv != 0;
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spm() -> Spm {
        let mut t: Vec<(String, f32, i64)> = vec![
            ("<unk>".into(), 0.0, TYPE_UNKNOWN),
            ("<s>".into(), 0.0, TYPE_CONTROL),
            ("</s>".into(), 0.0, TYPE_CONTROL),
        ];
        for b in 0..=255u8 {
            t.push((format!("<0x{b:02X}>"), 0.0, TYPE_BYTE));
        }
        for (p, s) in [
            ("\u{2581}", -1.0),
            ("h", -2.0),
            ("e", -2.0),
            ("l", -2.0),
            ("o", -2.0),
            ("\u{2581}h", -3.0),
            ("ll", -4.0),
            ("\u{2581}he", -5.0),
            ("llo", -6.0),
            ("\u{2581}hello", -7.0),
        ] {
            t.push((p.into(), s, TYPE_NORMAL));
        }
        Spm::new(t, true).unwrap()
    }

    #[test]
    fn spm_merges_by_score_and_falls_back_to_bytes() {
        let s = spm();
        let id = |p: &str| s.index[p];
        assert_eq!(s.encode("hello"), vec![id("\u{2581}hello")]);
        // 'z' is not a token: byte fallback <0x7A>; a space becomes ▁.
        assert_eq!(
            s.encode("he z"),
            vec![id("\u{2581}he"), id("\u{2581}"), id("<0x7A>")]
        );
        // Multi-byte character: its UTF-8 bytes.
        assert_eq!(
            s.encode("é"),
            vec![id("\u{2581}"), id("<0xC3>"), id("<0xA9>")]
        );
        let ids = s.encode("hello he zé");
        assert_eq!(s.decode(&ids).unwrap(), "hello he zé");
        assert!(s.encode("").iter().all(|&i| i == id("\u{2581}")));
    }

    #[test]
    fn sentencepiece_proto() {
        // ModelProto { pieces: [{piece "<unk>" type 2}, {piece "a" score -1}], trainer_spec { model_type 2 } }
        fn field(out: &mut Vec<u8>, f: u8, w: u8, payload: &[u8]) {
            out.push((f << 3) | w);
            if w == 2 {
                out.push(payload.len() as u8);
            }
            out.extend(payload);
        }
        let mut p1 = Vec::new();
        field(&mut p1, 1, 2, b"<unk>");
        field(&mut p1, 3, 0, &[2]);
        let mut p2 = Vec::new();
        field(&mut p2, 1, 2, b"a");
        field(&mut p2, 2, 5, &(-1f32).to_le_bytes());
        let mut ts = Vec::new();
        field(&mut ts, 3, 0, &[2]);
        let mut m = Vec::new();
        field(&mut m, 1, 2, &p1);
        field(&mut m, 1, 2, &p2);
        field(&mut m, 2, 2, &ts);
        let t = Tokenizer::from_sentencepiece_model(&m, "t.model").unwrap();
        assert_eq!(t.vocab_size(), 2);
        assert_eq!(t.kind(), "spm");
        let e = Tokenizer::from_sentencepiece_model(&m[..m.len() - 1], "t.model")
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.model") && e.contains("truncated"), "{e}");
    }
}
