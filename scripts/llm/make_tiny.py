#!/usr/bin/env python3
"""Tiny random-init decoder-MoE checkpoints of six architectures, plus their tokenizers.

Adapted from shared/LLM-TOOLCHAIN.md (appendix: make_tokenizers.py, make_models.py).

usage: make_tiny.py OUT WORK
  OUT   models/llm-tiny (committed):
          <arch>/                 config.json, generation_config.json, model.safetensors (f32), tokenizer files
          qwen3moe-sharded/       the qwen3moe weights in 3 shards + model.safetensors.index.json
          olmoe-bf16/             the olmoe weights cast to bf16
          mixtral-f16/            the mixtral weights cast to f16
          tokenizer-corpus.json   the files the tokenizers were trained on, with sha256
  WORK  scratch, not committed:
          tok/bpe512, tok/spm1000 the tokenizers
          qwen3moe-k256/          hidden 256 / expert ffn 256 model for the K-quant GGUFs (f32 is 9 MB;
                                  only its Q4_K / Q6_K GGUFs are committed)

Everything is seeded; a rerun on the same machine and package versions is byte-identical
(scripts/llm/check_fixtures.py --regen checks it). The tokenizer corpus is the system's
/usr/share/common-licenses/* plus the first 60 stdlib *.py files; its sha256 is recorded so a
different corpus (another distro or Python) is reported instead of silently changing the vocab.
"""
import glob
import hashlib
import io
import json
import os
import shutil
import sys
import sysconfig

import sentencepiece as spm
import torch
import transformers
from safetensors import safe_open
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()


def corpus_files():
    files = sorted(f for f in glob.glob("/usr/share/common-licenses/*") if os.path.isfile(f))
    files += sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))[:60]
    return files


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def make_tokenizers(tokdir, out):
    files = corpus_files()
    corpus = [{"path": f, "sha256": sha256_file(f)} for f in files]
    total = hashlib.sha256("".join(c["sha256"] for c in corpus).encode()).hexdigest()
    with open(os.path.join(out, "tokenizer-corpus.json"), "w") as fh:
        json.dump({"note": "training text of the tokenizers (make_tiny.py); sha256 of the joined per-file hashes",
                   "sha256": total, "files": corpus}, fh, indent=1)
        fh.write("\n")
    print(f"tokenizer corpus: {len(files)} files, sha256 {total[:16]}")

    # 1) GPT-2 style byte-level BPE, 512 ids (254 merges + 256 bytes + 2 specials)
    bpe_dir = os.path.join(tokdir, "bpe512")
    shutil.rmtree(bpe_dir, ignore_errors=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=512, min_frequency=2,
                                  special_tokens=["<|endoftext|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train(files, trainer)
    assert tok.get_vocab_size() == 512, tok.get_vocab_size()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                   eos_token="<|endoftext|>", pad_token="<|pad|>", unk_token=None)
    fast.save_pretrained(bpe_dir)

    # 2) SentencePiece (llama style: BPE, byte_fallback, <unk>=0 <s>=1 </s>=2), 1000 pieces.
    # model_writer (no model_prefix) keeps the output path out of the .model bytes.
    spm_dir = os.path.join(tokdir, "spm1000")
    shutil.rmtree(spm_dir, ignore_errors=True)
    os.makedirs(spm_dir)
    text = []
    for f in files:
        with open(f, encoding="utf-8", errors="ignore") as fh:
            text += [line.rstrip("\n") for line in fh if line.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(text), model_writer=buf,
        model_type="bpe", vocab_size=1000, byte_fallback=True, character_coverage=1.0,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True,
        split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        minloglevel=2)
    with open(os.path.join(spm_dir, "tokenizer.model"), "wb") as fh:
        fh.write(buf.getvalue())
    with open(os.path.join(spm_dir, "tokenizer_config.json"), "w") as fh:
        json.dump({"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                   "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False,
                   "legacy": False}, fh, indent=2)
        fh.write("\n")
    sp = spm.SentencePieceProcessor(model_file=os.path.join(spm_dir, "tokenizer.model"))
    # Also ship the HF-converted fast tokenizer (tokenizer.json) for the Rust `tokenizers` crate.
    # It differs from sentencepiece on leading spaces ("  leading", " a", "   "), see the unicode_ws
    # text in fixtures/manifest.json; `sentencepiece` (and llama.cpp, which agrees with it) is the SPM reference.
    from transformers import AutoTokenizer
    AutoTokenizer.from_pretrained(spm_dir)._tokenizer.save(os.path.join(spm_dir, "tokenizer.json"))
    print(f"bpe512: {tok.get_vocab_size()} ids; spm1000: {sp.get_piece_size()} pieces")


COMMON = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
              initializer_range=0.1, bos_token_id=0, eos_token_id=0, pad_token_id=1)
BPE = dict(vocab_size=512)
# name: (config class, model class, tokenizer, config kwargs)
SPECS = {
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", "spm1000",
                dict(COMMON, vocab_size=1000, bos_token_id=1, eos_token_id=2, pad_token_id=None,
                     intermediate_size=128, num_local_experts=4, num_experts_per_tok=2)),
    # llama.cpp's olmoe loader needs num_key_value_heads == num_attention_heads (k_norm shape)
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", "bpe512",
              dict(COMMON, **BPE, num_key_value_heads=4, intermediate_size=96, num_experts=8,
                   num_experts_per_tok=2, norm_topk_prob=False)),
    "qwen2moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", "bpe512",
                 dict(COMMON, **BPE, intermediate_size=128, moe_intermediate_size=96,
                      shared_expert_intermediate_size=128, num_experts=8, num_experts_per_tok=2,
                      norm_topk_prob=False, decoder_sparse_step=1)),
    "qwen3moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", "bpe512",
                 dict(COMMON, **BPE, head_dim=32, intermediate_size=128, moe_intermediate_size=96,
                      num_experts=8, num_experts_per_tok=2, norm_topk_prob=True, decoder_sparse_step=1)),
    "granitemoe": ("GraniteMoeConfig", "GraniteMoeForCausalLM", "bpe512",
                   dict(COMMON, **BPE, intermediate_size=96, num_local_experts=4, num_experts_per_tok=2,
                        embedding_multiplier=4.0, residual_multiplier=0.5, attention_multiplier=0.125,
                        logits_scaling=2.0)),
    # llama.cpp's deepseek2 loader needs q_lora_rank set (it detects "Lite" only by n_layer 26/27)
    "deepseekv2": ("DeepseekV2Config", "DeepseekV2ForCausalLM", "bpe512",
                   dict(COMMON, **BPE, num_key_value_heads=4, intermediate_size=128, moe_intermediate_size=96,
                        q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16,
                        v_head_dim=16, n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2,
                        first_k_dense_replace=1, moe_layer_freq=1, topk_method="greedy", n_group=1,
                        topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=False)),
    # K-quant test model: every quantized row length (hidden, nH*head_dim, expert ffn) is 256.
    "qwen3moe-k256": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", "bpe512",
                      dict(COMMON, **BPE, hidden_size=256, head_dim=64, intermediate_size=256,
                           moe_intermediate_size=256, num_experts=4, num_experts_per_tok=2,
                           norm_topk_prob=True, decoder_sparse_step=1)),
}
ARCHS = ["mixtral", "olmoe", "qwen2moe", "qwen3moe", "granitemoe", "deepseekv2"]


def build(name):
    cfg_cls, model_cls, _, kw = SPECS[name]
    torch.manual_seed(0)
    cfg = getattr(transformers, cfg_cls)(**kw)
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():  # make norms/biases non-trivial so mis-mapped tensors show up
        g = torch.Generator().manual_seed(1)
        for _, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def save(model, d, tokdir, tok, **kw):
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True, **kw)
    for f in sorted(os.listdir(os.path.join(tokdir, tok))):
        shutil.copy(os.path.join(tokdir, tok, f), d)
    size = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
    print(f"  -> {d}: {sorted(os.listdir(d))}, {size} bytes")


def main():
    out, work = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    tokdir = os.path.join(work, "tok")
    os.makedirs(tokdir, exist_ok=True)
    make_tokenizers(tokdir, out)
    for name in ARCHS + ["qwen3moe-k256"]:
        model = build(name)
        tok = SPECS[name][2]
        n = sum(p.numel() for p in model.parameters())
        print(f"== {name}: {SPECS[name][1]}, {n} params")
        if name == "qwen3moe-k256":
            save(model, os.path.join(work, name), tokdir, tok)
            continue
        save(model, os.path.join(out, name), tokdir, tok)
        if name == "qwen3moe":  # same weights, 3 shards (index + model-0000x-of-00003.safetensors)
            save(model, os.path.join(out, "qwen3moe-sharded"), tokdir, tok, max_shard_size="700KB")
        if name == "olmoe":
            save(model.to(torch.bfloat16), os.path.join(out, "olmoe-bf16"), tokdir, tok)
        if name == "mixtral":
            save(model.to(torch.float16), os.path.join(out, "mixtral-f16"), tokdir, tok)
    # print the tensor names of one layer per arch (documentation in the log)
    for name in ARCHS:
        with safe_open(os.path.join(out, name, "model.safetensors"), "pt") as f:
            for k in f.keys():
                if k.startswith("model.layers.1.") and ".experts." in k and ".experts.0." not in k:
                    continue
                if k.startswith("model.layers.1.") or not k.startswith("model.layers."):
                    print(f"   {name} {k} {tuple(f.get_slice(k).get_shape())} {f.get_slice(k).get_dtype()}")


if __name__ == "__main__":
    main()
