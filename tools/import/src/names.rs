//! Neutral tensor names, their shapes under a configuration, and where each
//! lives in a Hugging Face checkpoint and in a GGUF file (docs/IMPORT.md has
//! the full table).

use std::fmt;

use crate::config::{Arch, LlmConfig, QkNorm};

/// A tensor of the model, named independently of the file format.
///
/// Every tensor is returned as a matrix `[rows, cols]` with `rows` the output
/// dimension (a vector is one row, `[1, n]`) in Hugging Face row order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TensorName {
    /// Token embedding `[vocab, hidden]`.
    TokenEmbd,
    /// Final RMSNorm weight `[1, hidden]`.
    OutputNorm,
    /// Output projection `[vocab, hidden]` (the embedding when tied).
    Output,
    /// RMSNorm before attention `[1, hidden]`.
    AttnNorm {
        /// Layer.
        layer: usize,
    },
    /// RMSNorm before the FFN/MoE block `[1, hidden]`.
    FfnNorm {
        /// Layer.
        layer: usize,
    },
    /// Query projection `[heads * head_dim, hidden]` (MLA Lite: `[heads * (nope + rope), hidden]`).
    AttnQ {
        /// Layer.
        layer: usize,
    },
    /// Key projection `[kv_heads * head_dim, hidden]`.
    AttnK {
        /// Layer.
        layer: usize,
    },
    /// Value projection `[kv_heads * head_dim, hidden]`.
    AttnV {
        /// Layer.
        layer: usize,
    },
    /// Attention output projection `[hidden, heads * head_dim]` (MLA: `[hidden, heads * v_head_dim]`).
    AttnOutput {
        /// Layer.
        layer: usize,
    },
    /// Query bias `[1, heads * head_dim]`.
    AttnQBias {
        /// Layer.
        layer: usize,
    },
    /// Key bias `[1, kv_heads * head_dim]`.
    AttnKBias {
        /// Layer.
        layer: usize,
    },
    /// Value bias `[1, kv_heads * head_dim]`.
    AttnVBias {
        /// Layer.
        layer: usize,
    },
    /// Output projection bias `[1, hidden]`.
    AttnOutputBias {
        /// Layer.
        layer: usize,
    },
    /// Query RMSNorm weight: `[1, heads * head_dim]` (whole) or `[1, head_dim]` (per head).
    AttnQNorm {
        /// Layer.
        layer: usize,
    },
    /// Key RMSNorm weight: `[1, kv_heads * head_dim]` (whole) or `[1, head_dim]` (per head).
    AttnKNorm {
        /// Layer.
        layer: usize,
    },
    /// MLA query down-projection `[q_lora_rank, hidden]`.
    AttnQA {
        /// Layer.
        layer: usize,
    },
    /// MLA query RMSNorm `[1, q_lora_rank]`.
    AttnQANorm {
        /// Layer.
        layer: usize,
    },
    /// MLA query up-projection `[heads * (nope + rope), q_lora_rank]`.
    AttnQB {
        /// Layer.
        layer: usize,
    },
    /// MLA key/value down-projection with the shared rope key `[kv_lora_rank + rope, hidden]`.
    AttnKvA {
        /// Layer.
        layer: usize,
    },
    /// MLA key/value RMSNorm `[1, kv_lora_rank]`.
    AttnKvANorm {
        /// Layer.
        layer: usize,
    },
    /// MLA key/value up-projection `[heads * (nope + v_head_dim), kv_lora_rank]`
    /// (per head: `nope` key rows, then `v_head_dim` value rows).
    AttnKvB {
        /// Layer.
        layer: usize,
    },
    /// Router `[experts, hidden]`.
    Router {
        /// Layer.
        layer: usize,
    },
    /// Routed expert gate projection `[expert_ffn, hidden]`.
    ExpertGate {
        /// Layer.
        layer: usize,
        /// Expert.
        expert: usize,
    },
    /// Routed expert up projection `[expert_ffn, hidden]`.
    ExpertUp {
        /// Layer.
        layer: usize,
        /// Expert.
        expert: usize,
    },
    /// Routed expert down projection `[hidden, expert_ffn]`.
    ExpertDown {
        /// Layer.
        layer: usize,
        /// Expert.
        expert: usize,
    },
    /// Shared expert gate projection `[shared_ffn, hidden]`.
    SharedGate {
        /// Layer.
        layer: usize,
    },
    /// Shared expert up projection `[shared_ffn, hidden]`.
    SharedUp {
        /// Layer.
        layer: usize,
    },
    /// Shared expert down projection `[hidden, shared_ffn]`.
    SharedDown {
        /// Layer.
        layer: usize,
    },
    /// Shared expert sigmoid gate `[1, hidden]` (Qwen2-MoE).
    SharedExpertGate {
        /// Layer.
        layer: usize,
    },
    /// Dense FFN gate projection `[dense_ffn, hidden]`.
    DenseGate {
        /// Layer.
        layer: usize,
    },
    /// Dense FFN up projection `[dense_ffn, hidden]`.
    DenseUp {
        /// Layer.
        layer: usize,
    },
    /// Dense FFN down projection `[hidden, dense_ffn]`.
    DenseDown {
        /// Layer.
        layer: usize,
    },
}

use TensorName as T;

impl TensorName {
    /// The layer, for per-layer tensors.
    pub fn layer(self) -> Option<usize> {
        match self {
            T::TokenEmbd | T::OutputNorm | T::Output => None,
            T::AttnNorm { layer }
            | T::FfnNorm { layer }
            | T::AttnQ { layer }
            | T::AttnK { layer }
            | T::AttnV { layer }
            | T::AttnOutput { layer }
            | T::AttnQBias { layer }
            | T::AttnKBias { layer }
            | T::AttnVBias { layer }
            | T::AttnOutputBias { layer }
            | T::AttnQNorm { layer }
            | T::AttnKNorm { layer }
            | T::AttnQA { layer }
            | T::AttnQANorm { layer }
            | T::AttnQB { layer }
            | T::AttnKvA { layer }
            | T::AttnKvANorm { layer }
            | T::AttnKvB { layer }
            | T::Router { layer }
            | T::ExpertGate { layer, .. }
            | T::ExpertUp { layer, .. }
            | T::ExpertDown { layer, .. }
            | T::SharedGate { layer }
            | T::SharedUp { layer }
            | T::SharedDown { layer }
            | T::SharedExpertGate { layer }
            | T::DenseGate { layer }
            | T::DenseUp { layer }
            | T::DenseDown { layer } => Some(layer),
        }
    }

    /// The expert, for routed-expert tensors.
    pub fn expert(self) -> Option<usize> {
        match self {
            T::ExpertGate { expert, .. }
            | T::ExpertUp { expert, .. }
            | T::ExpertDown { expert, .. } => Some(expert),
            _ => None,
        }
    }

    /// Every tensor the model described by `cfg` has, globals first, then
    /// layer by layer (experts in order). The output projection is listed even
    /// when tied (it then resolves to the embedding).
    pub fn all(cfg: &LlmConfig) -> Vec<TensorName> {
        let mut v = vec![T::TokenEmbd, T::OutputNorm, T::Output];
        for layer in 0..cfg.num_layers {
            v.push(T::AttnNorm { layer });
            if let Some(mla) = cfg.mla {
                if mla.q_lora_rank.is_some() {
                    v.extend([
                        T::AttnQA { layer },
                        T::AttnQANorm { layer },
                        T::AttnQB { layer },
                    ]);
                } else {
                    v.push(T::AttnQ { layer });
                }
                v.extend([
                    T::AttnKvA { layer },
                    T::AttnKvANorm { layer },
                    T::AttnKvB { layer },
                ]);
            } else {
                v.extend([T::AttnQ { layer }, T::AttnK { layer }, T::AttnV { layer }]);
                if cfg.qkv_bias {
                    v.extend([
                        T::AttnQBias { layer },
                        T::AttnKBias { layer },
                        T::AttnVBias { layer },
                    ]);
                }
                if cfg.qk_norm != QkNorm::None {
                    v.extend([T::AttnQNorm { layer }, T::AttnKNorm { layer }]);
                }
            }
            v.push(T::AttnOutput { layer });
            if cfg.o_bias {
                v.push(T::AttnOutputBias { layer });
            }
            v.push(T::FfnNorm { layer });
            if cfg.is_dense_layer(layer) {
                v.extend([
                    T::DenseGate { layer },
                    T::DenseUp { layer },
                    T::DenseDown { layer },
                ]);
                continue;
            }
            v.push(T::Router { layer });
            for expert in 0..cfg.num_experts {
                v.extend([
                    T::ExpertGate { layer, expert },
                    T::ExpertUp { layer, expert },
                    T::ExpertDown { layer, expert },
                ]);
            }
            if let Some(s) = cfg.shared_expert {
                v.extend([
                    T::SharedGate { layer },
                    T::SharedUp { layer },
                    T::SharedDown { layer },
                ]);
                if s.sigmoid_gate {
                    v.push(T::SharedExpertGate { layer });
                }
            }
        }
        v
    }

    /// The shape `[rows, cols]` `cfg` implies, or `None` when the model has
    /// no such tensor (wrong layer, expert, or a part its architecture lacks).
    pub fn shape(self, cfg: &LlmConfig) -> Option<[usize; 2]> {
        if let Some(l) = self.layer() {
            if l >= cfg.num_layers {
                return None;
            }
        }
        if let Some(e) = self.expert() {
            if e >= cfg.num_experts {
                return None;
            }
        }
        let h = cfg.hidden_size;
        let q = cfg.num_heads * cfg.head_dim;
        let kv = cfg.num_kv_heads * cfg.head_dim;
        let dense = self.layer().is_some_and(|l| cfg.is_dense_layer(l));
        let mla = cfg.mla;
        Some(match self {
            T::TokenEmbd | T::Output => [cfg.vocab_size, h],
            T::OutputNorm | T::AttnNorm { .. } | T::FfnNorm { .. } => [1, h],
            T::AttnQ { .. } => match mla {
                Some(m) if m.q_lora_rank.is_some() => return None,
                _ => [q, h],
            },
            T::AttnK { .. } | T::AttnV { .. } if mla.is_none() => [kv, h],
            T::AttnOutput { .. } => match mla {
                Some(m) => [h, cfg.num_heads * m.v_head_dim],
                None => [h, q],
            },
            T::AttnQBias { .. } if cfg.qkv_bias && mla.is_none() => [1, q],
            T::AttnKBias { .. } | T::AttnVBias { .. } if cfg.qkv_bias && mla.is_none() => [1, kv],
            T::AttnOutputBias { .. } if cfg.o_bias => [1, h],
            T::AttnQNorm { .. } => match cfg.qk_norm {
                QkNorm::None => return None,
                QkNorm::Whole => [1, q],
                QkNorm::PerHead => [1, cfg.head_dim],
            },
            T::AttnKNorm { .. } => match cfg.qk_norm {
                QkNorm::None => return None,
                QkNorm::Whole => [1, kv],
                QkNorm::PerHead => [1, cfg.head_dim],
            },
            T::AttnQA { .. } => [mla?.q_lora_rank?, h],
            T::AttnQANorm { .. } => [1, mla?.q_lora_rank?],
            T::AttnQB { .. } => [q, mla?.q_lora_rank?],
            T::AttnKvA { .. } => {
                let m = mla?;
                [m.kv_lora_rank + m.qk_rope_head_dim, h]
            }
            T::AttnKvANorm { .. } => [1, mla?.kv_lora_rank],
            T::AttnKvB { .. } => {
                let m = mla?;
                [
                    cfg.num_heads * (m.qk_nope_head_dim + m.v_head_dim),
                    m.kv_lora_rank,
                ]
            }
            T::Router { .. } if !dense => [cfg.num_experts, h],
            T::ExpertGate { .. } | T::ExpertUp { .. } if !dense => [cfg.expert_ffn, h],
            T::ExpertDown { .. } if !dense => [h, cfg.expert_ffn],
            T::SharedGate { .. } | T::SharedUp { .. } if !dense => [cfg.shared_expert?.ffn, h],
            T::SharedDown { .. } if !dense => [h, cfg.shared_expert?.ffn],
            T::SharedExpertGate { .. } if !dense && cfg.shared_expert?.sigmoid_gate => [1, h],
            T::DenseGate { .. } | T::DenseUp { .. } if dense => [cfg.dense_layers?.ffn, h],
            T::DenseDown { .. } if dense => [h, cfg.dense_layers?.ffn],
            _ => return None,
        })
    }
}

impl fmt::Display for TensorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.short_name())
    }
}

impl TensorName {
    /// The short name `Display` prints (`blk.1.expert.7.down`, `token_embd`).
    pub fn short_name(&self) -> String {
        let s = match self {
            T::TokenEmbd => return "token_embd".into(),
            T::OutputNorm => return "output_norm".into(),
            T::Output => return "output".into(),
            T::ExpertGate { layer, expert } => return format!("blk.{layer}.expert.{expert}.gate"),
            T::ExpertUp { layer, expert } => return format!("blk.{layer}.expert.{expert}.up"),
            T::ExpertDown { layer, expert } => return format!("blk.{layer}.expert.{expert}.down"),
            T::AttnNorm { .. } => "attn_norm",
            T::FfnNorm { .. } => "ffn_norm",
            T::AttnQ { .. } => "attn_q",
            T::AttnK { .. } => "attn_k",
            T::AttnV { .. } => "attn_v",
            T::AttnOutput { .. } => "attn_output",
            T::AttnQBias { .. } => "attn_q_bias",
            T::AttnKBias { .. } => "attn_k_bias",
            T::AttnVBias { .. } => "attn_v_bias",
            T::AttnOutputBias { .. } => "attn_output_bias",
            T::AttnQNorm { .. } => "attn_q_norm",
            T::AttnKNorm { .. } => "attn_k_norm",
            T::AttnQA { .. } => "attn_q_a",
            T::AttnQANorm { .. } => "attn_q_a_norm",
            T::AttnQB { .. } => "attn_q_b",
            T::AttnKvA { .. } => "attn_kv_a",
            T::AttnKvANorm { .. } => "attn_kv_a_norm",
            T::AttnKvB { .. } => "attn_kv_b",
            T::Router { .. } => "router",
            T::SharedGate { .. } => "shared.gate",
            T::SharedUp { .. } => "shared.up",
            T::SharedDown { .. } => "shared.down",
            T::SharedExpertGate { .. } => "shared.sigmoid_gate",
            T::DenseGate { .. } => "dense.gate",
            T::DenseUp { .. } => "dense.up",
            T::DenseDown { .. } => "dense.down",
        };
        format!("blk.{}.{s}", self.layer().unwrap_or(0))
    }
}

/// Where a tensor lives in a Hugging Face checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum HfSource {
    /// A tensor of its own.
    Whole(String),
    /// Rows `row0..row0 + rows` of expert `expert` of a 3-D `[E, R, C]` tensor.
    Stacked {
        name: String,
        expert: usize,
        row0: usize,
    },
}

/// The candidate locations of `t` in a Hugging Face checkpoint, most usual
/// first (transformers 5's fused expert tensors are the fallback).
pub(crate) fn hf_sources(cfg: &LlmConfig, t: TensorName) -> Vec<HfSource> {
    let w = |s: String| vec![HfSource::Whole(s)];
    let Some(layer) = t.layer() else {
        return w(match t {
            T::TokenEmbd => "model.embed_tokens.weight",
            T::OutputNorm => "model.norm.weight",
            _ => "lm_head.weight",
        }
        .into());
    };
    let p = format!("model.layers.{layer}.");
    let moe = match cfg.arch {
        Arch::Mixtral | Arch::GraniteMoe => "block_sparse_moe",
        _ => "mlp",
    };
    let (shared, sgate) = match cfg.arch {
        Arch::DeepseekV2 => ("mlp.shared_experts", ""),
        _ => ("mlp.shared_expert", "mlp.shared_expert_gate.weight"),
    };
    let i = cfg.expert_ffn;
    let expert = |expert: usize, which: usize| -> Vec<HfSource> {
        let mut v = Vec::new();
        if cfg.arch == Arch::GraniteMoe {
            let (name, row0) = match which {
                0 => ("input_linear", 0),
                1 => ("input_linear", i),
                _ => ("output_linear", 0),
            };
            v.push(HfSource::Stacked {
                name: format!("{p}block_sparse_moe.{name}.weight"),
                expert,
                row0,
            });
            return v;
        }
        let legacy = match (cfg.arch, which) {
            (Arch::Mixtral, 0) => "w1",
            (Arch::Mixtral, 1) => "w3",
            (Arch::Mixtral, _) => "w2",
            (_, 0) => "gate_proj",
            (_, 1) => "up_proj",
            _ => "down_proj",
        };
        v.push(HfSource::Whole(format!(
            "{p}{moe}.experts.{expert}.{legacy}.weight"
        )));
        for m in ["mlp", "block_sparse_moe"] {
            let (name, row0) = match which {
                0 => ("gate_up_proj", 0),
                1 => ("gate_up_proj", i),
                _ => ("down_proj", 0),
            };
            v.push(HfSource::Stacked {
                name: format!("{p}{m}.experts.{name}"),
                expert,
                row0,
            });
        }
        v
    };
    let s = |x: &str| w(format!("{p}{x}"));
    match t {
        T::AttnNorm { .. } => s("input_layernorm.weight"),
        T::FfnNorm { .. } => s("post_attention_layernorm.weight"),
        T::AttnQ { .. } => s("self_attn.q_proj.weight"),
        T::AttnK { .. } => s("self_attn.k_proj.weight"),
        T::AttnV { .. } => s("self_attn.v_proj.weight"),
        T::AttnOutput { .. } => s("self_attn.o_proj.weight"),
        T::AttnQBias { .. } => s("self_attn.q_proj.bias"),
        T::AttnKBias { .. } => s("self_attn.k_proj.bias"),
        T::AttnVBias { .. } => s("self_attn.v_proj.bias"),
        T::AttnOutputBias { .. } => s("self_attn.o_proj.bias"),
        T::AttnQNorm { .. } => s("self_attn.q_norm.weight"),
        T::AttnKNorm { .. } => s("self_attn.k_norm.weight"),
        T::AttnQA { .. } => s("self_attn.q_a_proj.weight"),
        T::AttnQANorm { .. } => s("self_attn.q_a_layernorm.weight"),
        T::AttnQB { .. } => s("self_attn.q_b_proj.weight"),
        T::AttnKvA { .. } => s("self_attn.kv_a_proj_with_mqa.weight"),
        T::AttnKvANorm { .. } => s("self_attn.kv_a_layernorm.weight"),
        T::AttnKvB { .. } => s("self_attn.kv_b_proj.weight"),
        T::Router { .. } => match cfg.arch {
            Arch::GraniteMoe => s("block_sparse_moe.router.layer.weight"),
            _ => s(&format!("{moe}.gate.weight")),
        },
        T::ExpertGate { expert: e, .. } => expert(e, 0),
        T::ExpertUp { expert: e, .. } => expert(e, 1),
        T::ExpertDown { expert: e, .. } => expert(e, 2),
        T::SharedGate { .. } => s(&format!("{shared}.gate_proj.weight")),
        T::SharedUp { .. } => s(&format!("{shared}.up_proj.weight")),
        T::SharedDown { .. } => s(&format!("{shared}.down_proj.weight")),
        T::SharedExpertGate { .. } => s(sgate),
        T::DenseGate { .. } => s("mlp.gate_proj.weight"),
        T::DenseUp { .. } => s("mlp.up_proj.weight"),
        T::DenseDown { .. } => s("mlp.down_proj.weight"),
        T::TokenEmbd | T::OutputNorm | T::Output => Vec::new(),
    }
}

/// Where a tensor lives in a GGUF file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum GgufSource {
    /// A tensor of its own.
    Whole(String),
    /// Expert `expert` of a stacked `ffn_*_exps` tensor.
    Stacked { name: String, expert: usize },
    /// MLA `kv_b`: the old single tensor, else assembled from `attn_k_b` + `attn_v_b`.
    KvB {
        whole: String,
        k_b: String,
        v_b: String,
    },
}

/// The location of `t` in a GGUF file written by llama.cpp's converter.
pub(crate) fn gguf_source(t: TensorName) -> GgufSource {
    let Some(layer) = t.layer() else {
        return GgufSource::Whole(
            match t {
                T::TokenEmbd => "token_embd.weight",
                T::OutputNorm => "output_norm.weight",
                _ => "output.weight",
            }
            .into(),
        );
    };
    let b = |s: &str| GgufSource::Whole(format!("blk.{layer}.{s}"));
    let st = |s: &str, expert: usize| GgufSource::Stacked {
        name: format!("blk.{layer}.{s}"),
        expert,
    };
    match t {
        T::AttnNorm { .. } => b("attn_norm.weight"),
        T::FfnNorm { .. } => b("ffn_norm.weight"),
        T::AttnQ { .. } => b("attn_q.weight"),
        T::AttnK { .. } => b("attn_k.weight"),
        T::AttnV { .. } => b("attn_v.weight"),
        T::AttnOutput { .. } => b("attn_output.weight"),
        T::AttnQBias { .. } => b("attn_q.bias"),
        T::AttnKBias { .. } => b("attn_k.bias"),
        T::AttnVBias { .. } => b("attn_v.bias"),
        T::AttnOutputBias { .. } => b("attn_output.bias"),
        T::AttnQNorm { .. } => b("attn_q_norm.weight"),
        T::AttnKNorm { .. } => b("attn_k_norm.weight"),
        T::AttnQA { .. } => b("attn_q_a.weight"),
        T::AttnQANorm { .. } => b("attn_q_a_norm.weight"),
        T::AttnQB { .. } => b("attn_q_b.weight"),
        T::AttnKvA { .. } => b("attn_kv_a_mqa.weight"),
        T::AttnKvANorm { .. } => b("attn_kv_a_norm.weight"),
        T::AttnKvB { .. } => GgufSource::KvB {
            whole: format!("blk.{layer}.attn_kv_b.weight"),
            k_b: format!("blk.{layer}.attn_k_b.weight"),
            v_b: format!("blk.{layer}.attn_v_b.weight"),
        },
        T::Router { .. } => b("ffn_gate_inp.weight"),
        T::ExpertGate { expert, .. } => st("ffn_gate_exps.weight", expert),
        T::ExpertUp { expert, .. } => st("ffn_up_exps.weight", expert),
        T::ExpertDown { expert, .. } => st("ffn_down_exps.weight", expert),
        T::SharedGate { .. } => b("ffn_gate_shexp.weight"),
        T::SharedUp { .. } => b("ffn_up_shexp.weight"),
        T::SharedDown { .. } => b("ffn_down_shexp.weight"),
        T::SharedExpertGate { .. } => b("ffn_gate_inp_shexp.weight"),
        T::DenseGate { .. } => b("ffn_gate.weight"),
        T::DenseUp { .. } => b("ffn_up.weight"),
        T::DenseDown { .. } => b("ffn_down.weight"),
        T::TokenEmbd | T::OutputNorm | T::Output => b(""),
    }
}
