#!/usr/bin/env python3
"""Random-weight Mixtral-shaped GGUF (llama arch + MoE) for benchmarks, written with gguf-py + numpy only.

usage: make_bench_model.py OUT.gguf [--layers 8] [--d 1024] [--ffn 2816] [--experts 8] [--top-k 2]
                           [--heads D/128] [--kv-heads HEADS/4] [--vocab 32000] [--ctx 4096]
                           [--type Q4_0|Q8_0|F16|F32] [--seed 0] [--dry-run]

No torch, no llama.cpp needed. Tensors are generated, quantized (gguf.quants, numpy, block-wise) and
written chunk by chunk (at most --chunk elements at a time, default 8M), so memory stays bounded
(~0.5 GB peak) whatever the model size. Deterministic: each tensor has its own numpy PCG64 stream
seeded with (seed, tensor index); a rerun gives the same bytes.

Weights: matrices N(0, 0.02^2); RMSNorm weights 1 + 0.02*N(0,1); router (ffn_gate_inp) stays F32,
norms stay F32, everything else (embeddings and output included) has --type, like
`llama-quantize --pure`. With RMSNorm before every block the activations stay O(1) over thousands of
tokens. The vocab is SentencePiece-like (tokenizer.ggml.model = llama): <unk> <s> </s>, 256 byte
tokens <0x00>..<0xFF>, then synthetic pieces ("▁a", "ab", ...) with decreasing scores; it loads and
detokenizes in llama.cpp but is meaningless as text (benchmarks feed token ids).

Shapes (see scripts/llm/README.md for sizes measured with --dry-run):
  default   --layers 8  --d 1024 --ffn 2816 --experts 8 --top-k 2      ~0.36 GB at Q4_0
  >= 2 GB   --layers 16 --d 2048 --ffn 5632 --experts 8 --top-k 2      ~2.7 GB at Q4_0
"""
import argparse
import itertools
import os
import string
import sys
import time

import numpy as np
import gguf
from gguf.quants import quantize

T = gguf.GGMLQuantizationType
FTYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7}


def vocab(n):
    toks, scores, types = ["<unk>", "<s>", "</s>"], [0.0, 0.0, 0.0], [2, 3, 3]  # UNKNOWN, CONTROL
    for b in range(256):
        toks.append(f"<0x{b:02X}>"); scores.append(0.0); types.append(6)    # BYTE
    seen = set(toks)
    alpha = string.ascii_lowercase

    def pieces():
        for c in alpha + string.ascii_uppercase + string.digits + string.punctuation:
            yield "\u2581" + c
            yield c
        for k in itertools.count(2):
            for tup in itertools.product(alpha, repeat=k):
                s = "".join(tup)
                yield "\u2581" + s
                yield s
    for p in pieces():
        if len(toks) >= n:
            break
        if p in seen:
            continue
        seen.add(p)
        toks.append(p); scores.append(-float(len(toks))); types.append(1)  # NORMAL
    return toks, scores, types


def tensor_plan(a):
    hd = a.d // a.heads
    kv = a.kv_heads * hd
    plan = [("token_embd.weight", (a.vocab, a.d), "w")]
    for i in range(a.layers):
        p = f"blk.{i}."
        plan += [(p + "attn_norm.weight", (a.d,), "norm"),
                 (p + "attn_q.weight", (a.d, a.d), "w"),
                 (p + "attn_k.weight", (kv, a.d), "w"),
                 (p + "attn_v.weight", (kv, a.d), "w"),
                 (p + "attn_output.weight", (a.d, a.d), "w"),
                 (p + "ffn_norm.weight", (a.d,), "norm"),
                 (p + "ffn_gate_inp.weight", (a.experts, a.d), "router"),
                 (p + "ffn_gate_exps.weight", (a.experts, a.ffn, a.d), "w"),
                 (p + "ffn_up_exps.weight", (a.experts, a.ffn, a.d), "w"),
                 (p + "ffn_down_exps.weight", (a.experts, a.d, a.ffn), "w")]
    plan += [("output_norm.weight", (a.d,), "norm"), ("output.weight", (a.vocab, a.d), "w")]
    return plan


def qtype_of(kind, a):
    return T.F32 if kind in ("norm", "router") else T[a.type]


def nbytes(shape, qt):
    bs, ts = gguf.GGML_QUANT_SIZES[qt]
    n = int(np.prod(shape))
    assert shape[-1] % bs == 0, (shape, qt)
    return n // bs * ts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--ffn", type=int, default=2816)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--kv-heads", type=int, default=None)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--type", default="Q4_0", choices=sorted(FTYPE))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk", type=int, default=8 << 20, help="max elements generated at once")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the file size, write nothing")
    a = ap.parse_args()
    a.heads = a.heads or max(1, a.d // 128)
    a.kv_heads = a.kv_heads or max(1, a.heads // 4)
    assert a.d % a.heads == 0 and a.heads % a.kv_heads == 0

    plan = tensor_plan(a)
    n_params = sum(int(np.prod(s)) for _, s, _ in plan)
    data_bytes = sum(nbytes(s, qtype_of(k, a)) for _, s, k in plan)
    toks, scores, types = vocab(a.vocab)

    w = gguf.GGUFWriter(None if a.dry_run else a.out, "llama")
    w.add_name(f"taskpath-bench-moe-{a.layers}L-d{a.d}-ffn{a.ffn}-{a.experts}x{a.top_k}-{a.type}")
    w.add_context_length(a.ctx)
    w.add_embedding_length(a.d)
    w.add_block_count(a.layers)
    w.add_feed_forward_length(a.ffn)
    w.add_head_count(a.heads)
    w.add_head_count_kv(a.kv_heads)
    w.add_rope_dimension_count(a.d // a.heads)
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(a.experts)
    w.add_expert_used_count(a.top_k)
    w.add_vocab_size(a.vocab)
    w.add_file_type(FTYPE[a.type])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    for name, shape, kind in plan:
        qt = qtype_of(kind, a)
        w.add_tensor_info(name, shape, np.dtype(np.float32), nbytes(shape, qt), raw_dtype=qt)

    print(f"{a.out}: llama MoE {a.layers}L d{a.d} ffn{a.ffn} {a.experts} experts top-{a.top_k} "
          f"heads {a.heads}/{a.kv_heads} vocab {a.vocab} {a.type}: {len(plan)} tensors, "
          f"{n_params} params ({n_params / 1e9:.3f} G), tensor data {data_bytes} bytes "
          f"({data_bytes / 2**30:.3f} GiB)", flush=True)
    if a.dry_run:
        return

    t0 = time.time()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    for idx, (name, shape, kind) in enumerate(plan):
        qt = qtype_of(kind, a)
        rng = np.random.default_rng([a.seed, idx])
        w.write_padding(fout, fout.tell())
        row = shape[-1]
        rows = int(np.prod(shape[:-1]))
        step = max(1, a.chunk // row)
        written = 0
        for r0 in range(0, rows, step):
            n = min(step, rows - r0)
            x = rng.standard_normal((n, row), dtype=np.float32)
            if kind == "norm":
                x = 1.0 + 0.02 * x
            else:
                x *= np.float32(0.02)
            b = quantize(x, qt) if qt != T.F32 else x
            b = np.ascontiguousarray(b)
            b.tofile(fout)
            written += b.nbytes
        assert written == nbytes(shape, qt), (name, written)
        w.write_padding(fout, written)
        if name.endswith("down_exps.weight") or not name.startswith("blk."):
            print(f"  {name} {qt.name} {list(shape)} ({time.time() - t0:.0f} s)", flush=True)
    w.close()
    size = os.path.getsize(a.out)
    print(f"wrote {a.out}: {size} bytes ({size / 2**30:.3f} GiB) in {time.time() - t0:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
