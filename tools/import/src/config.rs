//! The neutral model description: [`Arch`] and [`LlmConfig`], read from a
//! Hugging Face `config.json` or from GGUF metadata (llama.cpp's keys), with
//! the same result for the same model.
//!
//! Where the two sources spell a quantity differently, the neutral value is:
//!
//! - `head_dim`: `config.head_dim` or `hidden / heads`; GGUF
//!   `{arch}.attention.key_length` or `hidden / heads`. For DeepSeek-V2 (MLA)
//!   it is `qk_nope_head_dim + qk_rope_head_dim`, and `num_kv_heads` equals
//!   `num_heads` (llama.cpp writes `head_count_kv = 1` for its MQA rewrite).
//! - `vocab_size`: `config.vocab_size`; GGUF `{arch}.vocab_size` or the rows of
//!   `token_embd.weight`.
//! - `norm_topk_prob`: Mixtral and GraniteMoE always renormalise (softmax over
//!   the kept logits); the others read `norm_topk_prob`, GGUF
//!   `{arch}.expert_weights_norm` or llama.cpp's fixed choice for the arch.
//! - RoPE: transformers 5 writes `rope_parameters {rope_theta, rope_type, ...}`;
//!   older files `rope_theta` + `rope_scaling`; GGUF `rope.freq_base`,
//!   `rope.scaling.*`, `rope.dimension_count`.
//! - biases: from the config for HF; from the presence of `blk.0.attn_q.bias`
//!   and `blk.0.attn_output.bias` for GGUF.
//! - `tie_word_embeddings`: the config's flag; for GGUF, no `output.weight`.

use crate::error::{Error, Result};
use crate::gguf::{GgufHeader, Metadata};

/// Most tensors a configuration may imply (DeepSeek-V3, 61 layers of 256
/// experts, has about 47,000).
pub const MAX_TENSORS: usize = 1 << 22;

/// Largest width, layer count or head count a configuration may state: the
/// package's op fields are 32-bit and hold products of two of these
/// (released models stay below 2^15).
pub const MAX_DIM: usize = 1 << 20;

/// Most experts per layer: a task path's expert mask has 256 bits
/// (`taskpath_format::records::MASK_WORDS` words of 64).
pub const MAX_EXPERTS: usize = 256;

/// The supported architectures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `MixtralForCausalLM` (GGUF `llama` with experts).
    Mixtral,
    /// `OlmoeForCausalLM` (GGUF `olmoe`).
    Olmoe,
    /// `Qwen2MoeForCausalLM` (GGUF `qwen2moe`).
    Qwen2Moe,
    /// `Qwen3MoeForCausalLM` (GGUF `qwen3moe`).
    Qwen3Moe,
    /// `GraniteMoeForCausalLM` (GGUF `granitemoe`).
    GraniteMoe,
    /// `DeepseekV2ForCausalLM` (GGUF `deepseek2`).
    DeepseekV2,
}

impl Arch {
    /// Every supported architecture.
    pub const ALL: [Arch; 6] = [
        Arch::Mixtral,
        Arch::Olmoe,
        Arch::Qwen2Moe,
        Arch::Qwen3Moe,
        Arch::GraniteMoe,
        Arch::DeepseekV2,
    ];

    /// The Hugging Face class name (`config.architectures[0]`).
    pub const fn hf_name(self) -> &'static str {
        match self {
            Arch::Mixtral => "MixtralForCausalLM",
            Arch::Olmoe => "OlmoeForCausalLM",
            Arch::Qwen2Moe => "Qwen2MoeForCausalLM",
            Arch::Qwen3Moe => "Qwen3MoeForCausalLM",
            Arch::GraniteMoe => "GraniteMoeForCausalLM",
            Arch::DeepseekV2 => "DeepseekV2ForCausalLM",
        }
    }

    /// llama.cpp's `general.architecture`.
    pub const fn gguf_name(self) -> &'static str {
        match self {
            Arch::Mixtral => "llama",
            Arch::Olmoe => "olmoe",
            Arch::Qwen2Moe => "qwen2moe",
            Arch::Qwen3Moe => "qwen3moe",
            Arch::GraniteMoe => "granitemoe",
            Arch::DeepseekV2 => "deepseek2",
        }
    }

    /// The architecture of a Hugging Face class name.
    pub fn from_hf(name: &str) -> Result<Arch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.hf_name() == name)
            .ok_or_else(|| Error::UnknownArchitecture {
                found: name.to_string(),
                supported: Arch::ALL.map(Arch::hf_name).join(", "),
            })
    }

    /// The architecture of a GGUF `general.architecture` value.
    pub fn from_gguf(name: &str) -> Result<Arch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.gguf_name() == name)
            .ok_or_else(|| Error::UnknownArchitecture {
                found: name.to_string(),
                supported: Arch::ALL.map(Arch::gguf_name).join(", "),
            })
    }

    /// Whether llama.cpp's converter permutes the rows of `attn_q`/`attn_k`
    /// for this architecture (see [`crate::unpermute_rows`]).
    pub const fn gguf_permutes_qk(self) -> bool {
        matches!(self, Arch::Mixtral | Arch::GraniteMoe)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hf_name())
    }
}

/// How RoPE pairs the dimensions of a head, in Hugging Face row order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// Dimension `i` pairs with `i + dims / 2` (transformers' `rotate_half`;
    /// llama.cpp's NEOX, or NORM on the permuted llama/granite rows).
    HalfSplit,
    /// Dimension `2i` pairs with `2i + 1` (DeepSeek-V2's complex form;
    /// llama.cpp's NORM).
    Interleaved,
}

/// RoPE frequency scaling as configured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RopeScaling {
    /// None (`rope_type: "default"`).
    None,
    /// Positions divided by `factor`.
    Linear {
        /// The factor.
        factor: f32,
    },
    /// YaRN.
    Yarn {
        /// The context extension factor.
        factor: f32,
        /// The context length the model was trained with.
        original_max_positions: usize,
        /// 0.1 × `mscale_all_dim` (GGUF `rope.scaling.yarn_log_multiplier`); 0 when absent.
        log_multiplier: f32,
    },
}

/// Rotary position embedding.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    /// Base frequency (`rope_theta`, GGUF `rope.freq_base`).
    pub theta: f32,
    /// Number of rotated dimensions per head (the rest pass through).
    pub dims: usize,
    /// Pairing of the rotated dimensions.
    pub style: RopeStyle,
    /// Frequency scaling.
    pub scaling: RopeScaling,
}

/// Normalisation of the query and key projections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QkNorm {
    /// None.
    None,
    /// One RMSNorm over the whole projection (`q_norm.weight [heads * head_dim]`; OLMoE).
    Whole,
    /// RMSNorm per head (`q_norm.weight [head_dim]`; Qwen3).
    PerHead,
}

/// A shared (always active) expert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedExpert {
    /// Its FFN width (DeepSeek: `n_shared_experts × moe_intermediate_size`).
    pub ffn: usize,
    /// Whether its output is scaled by `sigmoid(shared_expert_gate · x)` (Qwen2-MoE).
    pub sigmoid_gate: bool,
}

/// Dense FFN layers before the MoE layers (DeepSeek `first_k_dense_replace`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenseLayers {
    /// How many leading layers are dense.
    pub count: usize,
    /// Their FFN width.
    pub ffn: usize,
}

/// GraniteMoE's scalar multipliers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GraniteScales {
    /// Embeddings are multiplied by this (`embedding_multiplier`).
    pub embedding: f32,
    /// Each residual branch output is multiplied by this (`residual_multiplier`).
    pub residual: f32,
    /// The attention softmax scale, replacing `1/sqrt(head_dim)` (`attention_multiplier`).
    pub attention: f32,
    /// Logits are divided by this (`logits_scaling`).
    pub logits: f32,
}

/// DeepSeek multi-head latent attention dimensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mla {
    /// Rank of the query compression; `None` for the Lite form (`q_proj`).
    pub q_lora_rank: Option<usize>,
    /// Rank of the key/value compression.
    pub kv_lora_rank: usize,
    /// Per-head query/key dimensions without RoPE.
    pub qk_nope_head_dim: usize,
    /// Per-head query/key dimensions with RoPE (shared key part).
    pub qk_rope_head_dim: usize,
    /// Per-head value dimension.
    pub v_head_dim: usize,
}

/// Group-limited routing (DeepSeek `n_group`/`topk_group`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertGroups {
    /// Number of expert groups.
    pub groups: usize,
    /// Groups kept per token.
    pub used: usize,
}

/// The neutral description of a decoder MoE language model.
#[derive(Clone, Debug, PartialEq)]
pub struct LlmConfig {
    /// Architecture.
    pub arch: Arch,
    /// Rows of the token embedding.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// Decoder layers.
    pub num_layers: usize,
    /// Attention (query) heads.
    pub num_heads: usize,
    /// Key/value heads.
    pub num_kv_heads: usize,
    /// Query/key head dimension (see the module docs for MLA).
    pub head_dim: usize,
    /// RoPE.
    pub rope: Rope,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// Routed experts per MoE layer.
    pub num_experts: usize,
    /// Experts used per token.
    pub experts_per_token: usize,
    /// Whether the kept routing weights are renormalised to sum to 1.
    pub norm_topk_prob: bool,
    /// Routing weights are multiplied by this (DeepSeek `routed_scaling_factor`; else 1).
    pub routed_scaling_factor: f32,
    /// Group-limited routing, when configured with more than one group.
    pub expert_groups: Option<ExpertGroups>,
    /// FFN width of one routed expert.
    pub expert_ffn: usize,
    /// The shared expert, if any.
    pub shared_expert: Option<SharedExpert>,
    /// Leading dense layers, if any.
    pub dense_layers: Option<DenseLayers>,
    /// Query/key normalisation.
    pub qk_norm: QkNorm,
    /// Whether q, k and v projections have a bias.
    pub qkv_bias: bool,
    /// Whether the output projection has a bias.
    pub o_bias: bool,
    /// GraniteMoE multipliers.
    pub granite: Option<GraniteScales>,
    /// Whether the output projection is the token embedding.
    pub tie_word_embeddings: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_token_id: Option<u32>,
    /// Trained context length.
    pub max_position_embeddings: usize,
    /// MLA dimensions (DeepSeek-V2).
    pub mla: Option<Mla>,
}

impl LlmConfig {
    /// Whether `layer` is a dense-FFN layer (else an MoE layer).
    pub fn is_dense_layer(&self, layer: usize) -> bool {
        self.dense_layers.is_some_and(|d| layer < d.count)
    }

    fn check(self, file: &str) -> Result<LlmConfig> {
        let bad = |key: &str, detail: String| Error::Config {
            file: file.to_string(),
            key: key.to_string(),
            detail,
        };
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
            ("num_experts", self.num_experts),
            ("num_experts_per_tok", self.experts_per_token),
            ("expert intermediate size", self.expert_ffn),
        ] {
            if v == 0 {
                return Err(bad(k, "must be positive".into()));
            }
            let max = match k {
                "vocab_size" => crate::tokenizer::MAX_VOCAB,
                "num_experts" => MAX_EXPERTS,
                _ => MAX_DIM,
            };
            if v > max {
                return Err(bad(
                    k,
                    format!("{v} is beyond the package format's limit of {max}"),
                ));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} query heads are not a multiple of {} key/value heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if self.experts_per_token > self.num_experts {
            return Err(bad(
                "num_experts_per_tok",
                format!(
                    "{} exceeds the {} experts",
                    self.experts_per_token, self.num_experts
                ),
            ));
        }
        if self.rope.dims > self.head_dim || !self.rope.dims.is_multiple_of(2) {
            return Err(bad(
                "rope dimensions",
                format!(
                    "{} rotated dimensions for a head of {}",
                    self.rope.dims, self.head_dim
                ),
            ));
        }
        if self.arch.gguf_permutes_qk() && !self.head_dim.is_multiple_of(2) {
            return Err(bad("head_dim", format!("{} is odd", self.head_dim)));
        }
        if let Some(d) = self.dense_layers {
            if d.count > self.num_layers {
                return Err(bad(
                    "first_k_dense_replace",
                    format!("{} exceeds the {} layers", d.count, self.num_layers),
                ));
            }
        }
        // Shapes are products of these; keep every product far from overflow.
        let mla = self.mla.unwrap_or(Mla {
            q_lora_rank: None,
            kv_lora_rank: 0,
            qk_nope_head_dim: 0,
            qk_rope_head_dim: 0,
            v_head_dim: 0,
        });
        let big = [
            self.vocab_size,
            self.hidden_size,
            self.num_layers,
            self.num_heads,
            self.head_dim,
            self.num_experts,
            self.expert_ffn,
            self.shared_expert.map_or(0, |s| s.ffn),
            self.dense_layers.map_or(0, |d| d.ffn),
            mla.q_lora_rank.unwrap_or(0),
            mla.kv_lora_rank,
            mla.qk_nope_head_dim,
            mla.qk_rope_head_dim,
            mla.v_head_dim,
        ];
        if big.iter().any(|&v| v > 1 << 24) {
            return Err(bad("sizes", format!("{big:?}: a dimension exceeds 2^24")));
        }
        // The tensor list has about layers x (3 x experts + 20) entries.
        let names = self
            .num_layers
            .saturating_mul(self.num_experts.saturating_mul(3).saturating_add(20));
        if names > MAX_TENSORS {
            return Err(bad(
                "num_hidden_layers",
                format!(
                    "{} layers of {} experts make more than {MAX_TENSORS} tensors",
                    self.num_layers, self.num_experts
                ),
            ));
        }
        Ok(self)
    }

    /// Reads a Hugging Face `config.json` (its text). `file` names it in errors.
    pub fn from_hf_json(text: &[u8], file: &str) -> Result<LlmConfig> {
        let v: serde_json::Value = serde_json::from_slice(text).map_err(|e| Error::Config {
            file: file.to_string(),
            key: "(file)".into(),
            detail: format!("not valid JSON: {e}"),
        })?;
        let Some(map) = v.as_object() else {
            return Err(Error::Config {
                file: file.to_string(),
                key: "(file)".into(),
                detail: "not a JSON object".into(),
            });
        };
        let j = Json { map, file };
        let arch_name = match map.get("architectures").and_then(|a| a.as_array()) {
            Some(a) => a
                .first()
                .and_then(|x| x.as_str())
                .ok_or_else(|| j.err("architectures", "empty or not a list of strings"))?,
            None => return Err(j.err("architectures", "missing")),
        };
        let arch = Arch::from_hf(arch_name)?;
        let hidden = j.req("hidden_size")?;
        let heads = j.req("num_attention_heads")?;
        let mut kv_heads = j.opt("num_key_value_heads")?.unwrap_or(heads);
        let mut head_dim = match j.opt("head_dim")? {
            Some(d) => d,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let (theta, scaling) = j.rope()?;
        let mut rope_dims = head_dim;
        if let Some(f) = j.f32_opt("partial_rotary_factor")? {
            rope_dims = (head_dim as f32 * f) as usize;
        }
        let mut style = RopeStyle::HalfSplit;
        let expert_key = |keys: &[&'static str]| -> Result<usize> {
            for k in keys {
                if let Some(v) = j.opt(k)? {
                    return Ok(v);
                }
            }
            Err(j.err(keys[0], "missing"))
        };
        let mut cfg = LlmConfig {
            arch,
            vocab_size: j.req("vocab_size")?,
            hidden_size: hidden,
            num_layers: j.req("num_hidden_layers")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rope: Rope {
                theta,
                dims: rope_dims,
                style,
                scaling,
            },
            rms_norm_eps: j.f32_req("rms_norm_eps")?,
            num_experts: 0,
            experts_per_token: j.req("num_experts_per_tok")?,
            norm_topk_prob: true,
            routed_scaling_factor: 1.0,
            expert_groups: None,
            expert_ffn: 0,
            shared_expert: None,
            dense_layers: None,
            qk_norm: QkNorm::None,
            qkv_bias: false,
            o_bias: false,
            granite: None,
            tie_word_embeddings: j.bool_opt("tie_word_embeddings")?.unwrap_or(false),
            bos_token_id: j.token("bos_token_id")?,
            eos_token_id: j.token("eos_token_id")?,
            max_position_embeddings: j.req("max_position_embeddings")?,
            mla: None,
        };
        let attention_bias = j.bool_opt("attention_bias")?.unwrap_or(false);
        let sparse_every_layer = || -> Result<()> {
            if let Some(s) = j.opt("decoder_sparse_step")? {
                if s != 1 {
                    return Err(j.err(
                        "decoder_sparse_step",
                        format!("{s}: only 1 (every layer MoE) is supported"),
                    ));
                }
            }
            if let Some(l) = map.get("mlp_only_layers").and_then(|l| l.as_array()) {
                if !l.is_empty() {
                    return Err(j.err(
                        "mlp_only_layers",
                        "dense layers among MoE layers are not supported",
                    ));
                }
            }
            Ok(())
        };
        match arch {
            Arch::Mixtral => {
                cfg.num_experts = j.req("num_local_experts")?;
                cfg.expert_ffn = j.req("intermediate_size")?;
            }
            Arch::Olmoe => {
                cfg.num_experts = expert_key(&["num_experts", "num_local_experts"])?;
                cfg.expert_ffn = j.req("intermediate_size")?;
                cfg.norm_topk_prob = j.bool_opt("norm_topk_prob")?.unwrap_or(false);
                cfg.qk_norm = QkNorm::Whole;
                cfg.qkv_bias = attention_bias;
                cfg.o_bias = attention_bias;
                if map.get("clip_qkv").is_some_and(|c| !c.is_null()) {
                    return Err(j.err("clip_qkv", "clipping of q/k/v is not supported"));
                }
            }
            Arch::Qwen2Moe => {
                sparse_every_layer()?;
                cfg.num_experts = expert_key(&["num_experts", "num_local_experts"])?;
                cfg.expert_ffn = j.req("moe_intermediate_size")?;
                cfg.norm_topk_prob = j.bool_opt("norm_topk_prob")?.unwrap_or(false);
                cfg.qkv_bias = true;
                let s = j.opt("shared_expert_intermediate_size")?.unwrap_or(0);
                if s > 0 {
                    cfg.shared_expert = Some(SharedExpert {
                        ffn: s,
                        sigmoid_gate: true,
                    });
                }
            }
            Arch::Qwen3Moe => {
                sparse_every_layer()?;
                cfg.num_experts = expert_key(&["num_experts", "num_local_experts"])?;
                cfg.expert_ffn = j.req("moe_intermediate_size")?;
                cfg.norm_topk_prob = j.bool_opt("norm_topk_prob")?.unwrap_or(false);
                cfg.qk_norm = QkNorm::PerHead;
                cfg.qkv_bias = attention_bias;
                cfg.o_bias = attention_bias;
            }
            Arch::GraniteMoe => {
                cfg.num_experts = j.req("num_local_experts")?;
                cfg.expert_ffn = j.req("intermediate_size")?;
                cfg.qkv_bias = attention_bias;
                cfg.o_bias = attention_bias;
                cfg.granite = Some(GraniteScales {
                    embedding: j.f32_opt("embedding_multiplier")?.unwrap_or(1.0),
                    residual: j.f32_opt("residual_multiplier")?.unwrap_or(1.0),
                    attention: j.f32_opt("attention_multiplier")?.unwrap_or(1.0),
                    logits: j.f32_opt("logits_scaling")?.unwrap_or(1.0),
                });
            }
            Arch::DeepseekV2 => {
                if let Some(f) = j.opt("moe_layer_freq")? {
                    if f != 1 {
                        return Err(j.err("moe_layer_freq", format!("{f}: only 1 is supported")));
                    }
                }
                cfg.num_experts = j.req("n_routed_experts")?;
                cfg.expert_ffn = j.req("moe_intermediate_size")?;
                cfg.norm_topk_prob = j.bool_opt("norm_topk_prob")?.unwrap_or(false);
                cfg.routed_scaling_factor = j.f32_opt("routed_scaling_factor")?.unwrap_or(1.0);
                let groups = j.opt("n_group")?.unwrap_or(1);
                if groups > 1 {
                    cfg.expert_groups = Some(ExpertGroups {
                        groups,
                        used: j.req("topk_group")?,
                    });
                }
                let shared = j.opt("n_shared_experts")?.unwrap_or(0);
                if shared > 0 {
                    cfg.shared_expert = Some(SharedExpert {
                        ffn: shared.saturating_mul(cfg.expert_ffn),
                        sigmoid_gate: false,
                    });
                }
                let dense = j.opt("first_k_dense_replace")?.unwrap_or(0);
                if dense > 0 {
                    cfg.dense_layers = Some(DenseLayers {
                        count: dense,
                        ffn: j.req("intermediate_size")?,
                    });
                }
                let mla = Mla {
                    q_lora_rank: j.opt("q_lora_rank")?,
                    kv_lora_rank: j.req("kv_lora_rank")?,
                    qk_nope_head_dim: j.req("qk_nope_head_dim")?,
                    qk_rope_head_dim: j.req("qk_rope_head_dim")?,
                    v_head_dim: j.req("v_head_dim")?,
                };
                head_dim = mla.qk_nope_head_dim.saturating_add(mla.qk_rope_head_dim);
                kv_heads = heads;
                rope_dims = mla.qk_rope_head_dim;
                style = RopeStyle::Interleaved;
                cfg.head_dim = head_dim;
                cfg.num_kv_heads = kv_heads;
                cfg.rope.dims = rope_dims;
                cfg.rope.style = style;
                cfg.mla = Some(mla);
                cfg.qkv_bias = attention_bias;
                cfg.o_bias = attention_bias;
            }
        }
        cfg.check(file)
    }

    /// Reads GGUF metadata (llama.cpp's keys) and the tensor table (for the
    /// vocabulary size, biases and tied embeddings).
    pub fn from_gguf(header: &GgufHeader, bytes: &[u8], file: &str) -> Result<LlmConfig> {
        let m = Metadata {
            header,
            bytes,
            file,
        };
        let arch_name = m
            .str("general.architecture")?
            .ok_or_else(|| Error::Config {
                file: file.to_string(),
                key: "general.architecture".into(),
                detail: "missing".into(),
            })?;
        let arch = Arch::from_gguf(arch_name)?;
        let a = arch_name;
        let k = |s: &str| format!("{a}.{s}");
        let hidden = m.req_usize(&k("embedding_length"))?;
        let heads = m.req_usize(&k("attention.head_count"))?;
        let num_experts = m.usize(&k("expert_count"))?.unwrap_or(0);
        if num_experts == 0 {
            return Err(Error::UnknownArchitecture {
                found: format!("{a} without experts (a dense model)"),
                supported: Arch::ALL.map(Arch::gguf_name).join(", ") + " (with experts)",
            });
        }
        let vocab = match m.usize(&k("vocab_size"))? {
            Some(v) => v,
            None => match header.tensor("token_embd.weight") {
                Some(t) if t.ne.len() == 2 => usize::try_from(t.ne[1]).unwrap_or(0),
                _ => {
                    return Err(Error::MissingTensor {
                        tensor: "token_embd".into(),
                        source_name: "token_embd.weight".into(),
                        file: file.to_string(),
                    })
                }
            },
        };
        let mut head_dim = match m.usize(&k("attention.key_length"))? {
            Some(d) => d,
            None if heads > 0 => hidden / heads,
            None => 0,
        };
        let mut kv_heads = m.usize(&k("attention.head_count_kv"))?.unwrap_or(heads);
        let theta = m.f64(&k("rope.freq_base"))?.unwrap_or(10000.0) as f32;
        let scaling = match m.str(&k("rope.scaling.type"))? {
            None | Some("none") => match m.f64(&k("rope.scale_linear"))? {
                Some(f) if f != 1.0 => RopeScaling::Linear { factor: f as f32 },
                _ => RopeScaling::None,
            },
            Some("linear") => RopeScaling::Linear {
                factor: m.f64(&k("rope.scaling.factor"))?.unwrap_or(1.0) as f32,
            },
            Some("yarn") => RopeScaling::Yarn {
                factor: m.f64(&k("rope.scaling.factor"))?.unwrap_or(1.0) as f32,
                original_max_positions: m
                    .usize(&k("rope.scaling.original_context_length"))?
                    .unwrap_or(0),
                log_multiplier: m
                    .f64(&k("rope.scaling.yarn_log_multiplier"))?
                    .unwrap_or(0.0) as f32,
            },
            Some(other) => {
                return Err(Error::Config {
                    file: file.to_string(),
                    key: k("rope.scaling.type"),
                    detail: format!("`{other}` is not supported (none, linear, yarn are)"),
                })
            }
        };
        let expert_ffn = match m.usize(&k("expert_feed_forward_length"))? {
            Some(v) => v,
            None => m.req_usize(&k("feed_forward_length"))?,
        };
        let token = |key: &str| -> Result<Option<u32>> {
            m.usize(key)?
                .map(|v| {
                    u32::try_from(v).map_err(|_| Error::Config {
                        file: file.to_string(),
                        key: key.to_string(),
                        detail: format!("{v} is not a token id"),
                    })
                })
                .transpose()
        };
        let has = |t: &str| header.tensor(t).is_some();
        let mut cfg = LlmConfig {
            arch,
            vocab_size: vocab,
            hidden_size: hidden,
            num_layers: m.req_usize(&k("block_count"))?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
            rope: Rope {
                theta,
                dims: m.usize(&k("rope.dimension_count"))?.unwrap_or(head_dim),
                style: RopeStyle::HalfSplit,
                scaling,
            },
            rms_norm_eps: m
                .f64(&k("attention.layer_norm_rms_epsilon"))?
                .ok_or_else(|| Error::Config {
                    file: file.to_string(),
                    key: k("attention.layer_norm_rms_epsilon"),
                    detail: "missing".into(),
                })? as f32,
            num_experts,
            experts_per_token: m.req_usize(&k("expert_used_count"))?,
            norm_topk_prob: match m.bool(&k("expert_weights_norm"))? {
                Some(b) => b,
                // llama.cpp's fixed choice per architecture.
                None => matches!(arch, Arch::Mixtral | Arch::GraniteMoe | Arch::Qwen3Moe),
            },
            routed_scaling_factor: m.f64(&k("expert_weights_scale"))?.unwrap_or(1.0) as f32,
            expert_groups: None,
            expert_ffn,
            shared_expert: None,
            dense_layers: None,
            qk_norm: QkNorm::None,
            qkv_bias: has("blk.0.attn_q.bias"),
            o_bias: has("blk.0.attn_output.bias"),
            granite: None,
            tie_word_embeddings: !has("output.weight"),
            bos_token_id: token("tokenizer.ggml.bos_token_id")?,
            eos_token_id: token("tokenizer.ggml.eos_token_id")?,
            max_position_embeddings: m.req_usize(&k("context_length"))?,
            mla: None,
        };
        let groups = m.usize(&k("expert_group_count"))?.unwrap_or(1);
        if groups > 1 {
            cfg.expert_groups = Some(ExpertGroups {
                groups,
                used: m.req_usize(&k("expert_group_used_count"))?,
            });
        }
        match arch {
            Arch::Mixtral => {}
            Arch::Olmoe => cfg.qk_norm = QkNorm::Whole,
            Arch::Qwen2Moe => {
                let s = m
                    .usize(&k("expert_shared_feed_forward_length"))?
                    .unwrap_or(0);
                if s > 0 {
                    cfg.shared_expert = Some(SharedExpert {
                        ffn: s,
                        sigmoid_gate: true,
                    });
                }
            }
            Arch::Qwen3Moe => cfg.qk_norm = QkNorm::PerHead,
            Arch::GraniteMoe => {
                let f = |s: &str| -> Result<f32> { Ok(m.f64(&k(s))?.unwrap_or(1.0) as f32) };
                cfg.granite = Some(GraniteScales {
                    embedding: f("embedding_scale")?,
                    residual: f("residual_scale")?,
                    attention: f("attention.scale")?,
                    logits: f("logit_scale")?,
                });
            }
            Arch::DeepseekV2 => {
                let shared = m.usize(&k("expert_shared_count"))?.unwrap_or(0);
                if shared > 0 {
                    cfg.shared_expert = Some(SharedExpert {
                        ffn: shared.saturating_mul(expert_ffn),
                        sigmoid_gate: false,
                    });
                }
                let dense = m.usize(&k("leading_dense_block_count"))?.unwrap_or(0);
                if dense > 0 {
                    cfg.dense_layers = Some(DenseLayers {
                        count: dense,
                        ffn: m.req_usize(&k("feed_forward_length"))?,
                    });
                }
                let rope = m.req_usize(&k("rope.dimension_count"))?;
                // New converters write the MQA-rewritten key/value lengths
                // under key_length/value_length and the per-head ones under *_mla.
                let qk = match m.usize(&k("attention.key_length_mla"))? {
                    Some(v) => v,
                    None => m.req_usize(&k("attention.key_length"))?,
                };
                let v = match m.usize(&k("attention.value_length_mla"))? {
                    Some(v) => v,
                    None => m.req_usize(&k("attention.value_length"))?,
                };
                let bad = |key: &str, d: String| Error::Config {
                    file: file.to_string(),
                    key: k(key),
                    detail: d,
                };
                if qk < rope {
                    return Err(bad(
                        "attention.key_length_mla",
                        format!("{qk} is less than the rope dimensions {rope}"),
                    ));
                }
                let mla = Mla {
                    q_lora_rank: m.usize(&k("attention.q_lora_rank"))?.filter(|&r| r > 0),
                    kv_lora_rank: m.req_usize(&k("attention.kv_lora_rank"))?,
                    qk_nope_head_dim: qk - rope,
                    qk_rope_head_dim: rope,
                    v_head_dim: v,
                };
                head_dim = qk;
                kv_heads = heads;
                cfg.head_dim = head_dim;
                cfg.num_kv_heads = kv_heads;
                cfg.rope.dims = rope;
                cfg.rope.style = RopeStyle::Interleaved;
                cfg.mla = Some(mla);
            }
        }
        cfg.check(file)
    }
}

struct Json<'a> {
    map: &'a serde_json::Map<String, serde_json::Value>,
    file: &'a str,
}

impl Json<'_> {
    fn err(&self, key: &str, detail: impl Into<String>) -> Error {
        Error::Config {
            file: self.file.to_string(),
            key: key.to_string(),
            detail: detail.into(),
        }
    }

    fn opt(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|u| usize::try_from(u).ok())
                .map(Some)
                .ok_or_else(|| self.err(key, format!("{v} is not a non-negative integer"))),
        }
    }

    fn req(&self, key: &str) -> Result<usize> {
        self.opt(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    fn f32_opt(&self, key: &str) -> Result<Option<f32>> {
        self.f32_in(self.map, key)
    }

    fn f32_in(
        &self,
        map: &serde_json::Map<String, serde_json::Value>,
        key: &str,
    ) -> Result<Option<f32>> {
        match map.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|f| Some(f as f32))
                .ok_or_else(|| self.err(key, format!("{v} is not a number"))),
        }
    }

    fn f32_req(&self, key: &str) -> Result<f32> {
        self.f32_opt(key)?.ok_or_else(|| self.err(key, "missing"))
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, format!("{v} is not a bool"))),
        }
    }

    /// A token id, or the first of a list of ids.
    fn token(&self, key: &str) -> Result<Option<u32>> {
        let v = match self.map.get(key) {
            None | Some(serde_json::Value::Null) => return Ok(None),
            Some(serde_json::Value::Array(a)) => match a.first() {
                None => return Ok(None),
                Some(v) => v,
            },
            Some(v) => v,
        };
        v.as_u64()
            .and_then(|u| u32::try_from(u).ok())
            .map(Some)
            .ok_or_else(|| self.err(key, format!("{v} is not a token id")))
    }

    /// (theta, scaling) from `rope_parameters` or `rope_theta` + `rope_scaling`.
    fn rope(&self) -> Result<(f32, RopeScaling)> {
        let params = match self.map.get("rope_parameters") {
            Some(serde_json::Value::Object(p)) => Some(p),
            None | Some(serde_json::Value::Null) => None,
            Some(_) => return Err(self.err("rope_parameters", "not an object")),
        };
        let (theta, scaling, key) = match params {
            Some(p) => (
                self.f32_in(p, "rope_theta")?,
                Some(p),
                "rope_parameters.rope_type",
            ),
            None => (
                self.f32_opt("rope_theta")?,
                self.map.get("rope_scaling").and_then(|s| s.as_object()),
                "rope_scaling.type",
            ),
        };
        let theta = theta.ok_or_else(|| {
            self.err(
                "rope_parameters.rope_theta",
                "missing (neither rope_parameters.rope_theta nor rope_theta)",
            )
        })?;
        let Some(s) = scaling else {
            return Ok((theta, RopeScaling::None));
        };
        let ty = s
            .get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(|t| t.as_str())
            .unwrap_or("default");
        let factor = || -> Result<f32> { Ok(self.f32_in(s, "factor")?.unwrap_or(1.0)) };
        let scaling = match ty {
            "default" => RopeScaling::None,
            "linear" => RopeScaling::Linear { factor: factor()? },
            "yarn" => RopeScaling::Yarn {
                factor: factor()?,
                original_max_positions: s
                    .get("original_max_position_embeddings")
                    .and_then(|v| v.as_u64())
                    .and_then(|v| usize::try_from(v).ok())
                    .unwrap_or(0),
                log_multiplier: self.f32_in(s, "mscale_all_dim")?.map_or(0.0, |m| 0.1 * m),
            },
            other => {
                return Err(self.err(
                    key,
                    format!("`{other}` is not supported (default, linear, yarn are)"),
                ))
            }
        };
        Ok((theta, scaling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_architecture_names_supported_ones() {
        let e = LlmConfig::from_hf_json(br#"{"architectures": ["LlamaForCausalLM"]}"#, "c.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown architecture `LlamaForCausalLM`"), "{e}");
        for a in Arch::ALL {
            assert!(e.contains(a.hf_name()), "{e}");
        }
        let e = Arch::from_gguf("gemma").unwrap_err().to_string();
        assert!(
            e.contains("`gemma`") && e.contains("qwen3moe") && e.contains("deepseek2"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_bad_keys_are_named() {
        let e = LlmConfig::from_hf_json(br#"{"architectures": ["MixtralForCausalLM"]}"#, "c.json")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("c.json: config key `hidden_size`: missing"),
            "{e}"
        );
        let base: serde_json::Value = serde_json::from_slice(include_bytes!(
            "../../../models/llm-tiny/mixtral/config.json"
        ))
        .unwrap();
        for (key, value, named, limit) in [
            ("num_local_experts", 257, "num_experts", MAX_EXPERTS),
            ("hidden_size", 2 * MAX_DIM, "hidden_size", MAX_DIM),
        ] {
            let mut j = base.clone();
            j[key] = value.into();
            let e = LlmConfig::from_hf_json(&serde_json::to_vec(&j).unwrap(), "c.json")
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(named) && e.contains(&format!("limit of {limit}")),
                "{e}"
            );
        }
        LlmConfig::from_hf_json(&serde_json::to_vec(&base).unwrap(), "c.json")
            .expect("the unedited config is valid");
        let e = LlmConfig::from_hf_json(b"{", "c.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not valid JSON"), "{e}");
    }
}
