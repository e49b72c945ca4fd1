//! Reads the decoder-MoE language models users already have — Hugging Face
//! checkpoint directories and GGUF files — into one neutral, validated,
//! zero-copy description (docs/IMPORT.md).
//!
//! ```no_run
//! use taskpath_import::{Checkpoint, TensorName};
//!
//! let ckpt = Checkpoint::open("models/llm-tiny/qwen3moe")?; // or a .gguf file
//! let cfg = ckpt.config();
//! let w = ckpt.tensor(TensorName::ExpertGate { layer: 0, expert: 3 })?;
//! assert_eq!(w.shape(), [cfg.expert_ffn, cfg.hidden_size]);
//! let values: Vec<f32> = w.to_f32()?;
//! let ids = ckpt.tokenizer()?.encode("Hello world")?;
//! # Ok::<(), taskpath_import::Error>(())
//! ```
//!
//! - [`LlmConfig`]: the architecture's hyper-parameters, the same whether read
//!   from `config.json` or GGUF metadata ([`config`]).
//! - [`Checkpoint`]: opens a path (a directory with `config.json`, or a file
//!   starting with `GGUF`), memory-maps every file read-only, validates every
//!   header ([`gguf`], [`safetensors`]) and locates and shape-checks every
//!   tensor the configuration implies before returning. [`Checkpoint::tensor`]
//!   gives a [`Tensor`] by [`TensorName`]: `[rows, cols]`, [`DType`] and bytes,
//!   a view into the mapping (one expert of a stacked 3-D tensor is a slice),
//!   except for GGUF's row-permuted Q/K and DeepSeek's split `kv_b`.
//! - [`quant`]: the GGML block layouts, dequantization, and zero-copy Q8_0/Q4_0
//!   block views.
//! - [`Tokenizer`]: from `tokenizer.json`, `tokenizer.model`, or the GGUF vocabulary.
//!
//! This crate depends on no other Taskpath crate. It never panics on bad
//! input and allocates only in proportion to what the files contain.

#![deny(missing_docs)]

pub mod checkpoint;
pub mod config;
pub mod error;
pub mod gguf;
pub mod names;
pub mod quant;
pub mod safetensors;
pub mod tokenizer;

pub use checkpoint::{unpermute_rows, Checkpoint, GgufFile, SourceKind, Tensor};
pub use config::{
    Arch, DenseLayers, ExpertGroups, GraniteScales, LlmConfig, Mla, QkNorm, Rope, RopeScaling,
    RopeStyle, SharedExpert,
};
pub use error::{Error, Result};
pub use names::TensorName;
pub use quant::{BlockQ4_0, BlockQ8_0, DType};
pub use tokenizer::Tokenizer;
