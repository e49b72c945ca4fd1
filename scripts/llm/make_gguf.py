#!/usr/bin/env python3
"""GGUF files of the tiny models, their dequantized oracles, and dequantization fixtures.

usage: make_gguf.py OUT WORK
  needs: LLAMA_CPP_DIR (llama.cpp tree with convert_hf_to_gguf.py; scripts/llm/setup.sh unpacks it)
         llama-cpp-python in the same venv (K-quants go through libllama's quantizer)
  reads: OUT/<arch>/ (make_tiny.py), WORK/qwen3moe-k256/
  writes (committed):
    OUT/gguf/<arch>-{f32,f16,q8_0}.gguf   llama.cpp's convert_hf_to_gguf.py --outtype (via convert_any_bpe.py);
                                          f16 only for mixtral and deepseekv2 (the others: WORK/gguf)
    OUT/gguf/<arch>-q4_0.gguf             gguf_tools.py quantize (numpy; == libllama --pure Q4_0)
    OUT/gguf/qwen3moe-k256-{q4_k,q6_k}.gguf  libllama quantizer, pure (every matrix is Q4_K / Q6_K)
    OUT/fixtures/dequant/                 gguf.quants.dequantize of selected tensors (raw LE f32) +
                                          dequant.json (per file: every tensor's type, ne, data offset,
                                          sha256 of the raw and of the dequantized bytes)
  writes (WORK, not committed):
    WORK/gguf/<arch>-{q8_0,q4_0}-deq.gguf, qwen3moe-k256-{f32,q4_k-deq,q6_k-deq}.gguf
    WORK/gguf/<arch>-q4_0-libllama.gguf   libllama --pure Q4_0, checked tensor-identical to <arch>-q4_0
"""
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time

import numpy as np
import gguf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gguf_tools  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHS = ["mixtral", "olmoe", "qwen2moe", "qwen3moe", "granitemoe", "deepseekv2"]
# f16 GGUFs are committed for two archs only (size budget); the others go to WORK and are still
# compared in the fixtures' summary.
F16_COMMITTED = ("mixtral", "deepseekv2")

# Dequantization fixtures: file -> [(tensor, first row, row count)] over the tensor's 2-D view
# [prod(leading dims), row_len]; count None = the whole tensor.
DEQUANT = {
    "qwen3moe-q4_0": [("blk.0.attn_q.weight", 0, None), ("blk.1.ffn_down_exps.weight", 448, 64),
                      ("token_embd.weight", 0, 32)],
    "qwen3moe-q8_0": [("blk.0.attn_q.weight", 0, None), ("blk.1.ffn_down_exps.weight", 448, 64),
                      ("token_embd.weight", 0, 32)],
    "qwen3moe-k256-q4_k": [("blk.0.attn_k.weight", 0, None), ("blk.1.ffn_down_exps.weight", 992, 32),
                           ("output.weight", 0, 32)],
    "qwen3moe-k256-q6_k": [("blk.0.attn_k.weight", 0, None), ("blk.1.ffn_down_exps.weight", 992, 32),
                           ("output.weight", 0, 32)],
}


def sh(cmd, env=None):
    print("+", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-4000:]}")


def convert(model_dir, outtype, outfile):
    env = dict(os.environ, GGUF_PRE="gpt-2", HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    sh([sys.executable, os.path.join(HERE, "convert_any_bpe.py"), model_dir,
        "--outtype", outtype, "--outfile", outfile], env)


def llama_quantize(inp, out, ftype):
    sh([sys.executable, os.path.join(HERE, "quantize_llamacpp.py"), inp, out, ftype, "--pure"])


def same_tensors(a, b):
    ta = {t.name: t for t in gguf.GGUFReader(a).tensors}
    tb = gguf.GGUFReader(b).tensors
    assert len(ta) == len(tb), (a, b)
    for t in tb:
        u = ta[t.name]
        assert t.tensor_type == u.tensor_type and np.asarray(t.data).tobytes() == np.asarray(u.data).tobytes(), \
            f"{a} vs {b}: {t.name} differs ({u.tensor_type.name} vs {t.tensor_type.name})"
    print(f"  {os.path.basename(a)}: all {len(tb)} tensors byte-identical to libllama --pure")


def sha(b):
    return hashlib.sha256(b).hexdigest()


def dequant_fixtures(out, gdir):
    ddir = os.path.join(out, "fixtures", "dequant")
    os.makedirs(ddir, exist_ok=True)
    index = {"note": "gguf.quants.dequantize (gguf-py) of GGUF tensors; raw little-endian f32. "
                     "`rows` = [first, count] of the tensor's 2-D view [prod(ne[1:]), ne[0]]; "
                     "sha256_f32 is over the whole dequantized tensor (row-major, numpy shape = reversed ne), "
                     "sha256_raw over its quantized bytes as stored in the file.",
             "gguf_version": importlib.metadata.version("gguf"),
             "files": {}}
    for stem, picks in DEQUANT.items():
        path = os.path.join(gdir, stem + ".gguf")
        r = gguf.GGUFReader(path)
        tensors = {}
        for t in r.tensors:
            deq = gguf_tools.dequantize_tensor(t)
            tensors[t.name] = dict(type=t.tensor_type.name, ne=[int(x) for x in t.shape],
                                   data_offset=int(t.data_offset), n_bytes=int(t.n_bytes),
                                   sha256_raw=sha(np.asarray(t.data).tobytes()),
                                   sha256_f32=sha(deq.astype("<f4").tobytes()))
        picked = []
        for name, first, count in picks:
            t = next(t for t in r.tensors if t.name == name)
            deq = gguf_tools.dequantize_tensor(t)
            rows = deq.reshape(-1, deq.shape[-1])
            count = rows.shape[0] - first if count is None else count
            sel = np.ascontiguousarray(rows[first:first + count]).astype("<f4")
            fname = f"{stem}.{name.removesuffix('.weight')}.f32"
            with open(os.path.join(ddir, fname), "wb") as fh:
                fh.write(sel.tobytes())
            picked.append(dict(tensor=name, file=fname, type=t.tensor_type.name,
                               rows=[first, count], shape=list(sel.shape), dtype="f32",
                               sha256=sha(sel.tobytes())))
            print(f"  dequant {stem} {name} {t.tensor_type.name} rows {first}..{first + count} -> {fname}")
        index["files"][f"gguf/{stem}.gguf"] = dict(sha256=sha(open(path, "rb").read()),
                                                   picked=picked, tensors=tensors)
    with open(os.path.join(ddir, "dequant.json"), "w") as fh:
        json.dump(index, fh, indent=1, sort_keys=True)
        fh.write("\n")


def main():
    out, work = sys.argv[1], sys.argv[2]
    gdir = os.path.join(out, "gguf")
    wdir = os.path.join(work, "gguf")
    os.makedirs(gdir, exist_ok=True)
    os.makedirs(wdir, exist_ok=True)
    t0 = time.time()
    for arch in ARCHS:
        for typ in ("f32", "f16", "q8_0"):
            d = wdir if typ == "f16" and arch not in F16_COMMITTED else gdir
            convert(os.path.join(out, arch), typ, os.path.join(d, f"{arch}-{typ}.gguf"))
        gguf_tools.requantize(os.path.join(gdir, f"{arch}-f32.gguf"), os.path.join(gdir, f"{arch}-q4_0.gguf"), "Q4_0")
        # cross-check: libllama's quantizer (--pure) gives the same tensors as the numpy route
        llama_quantize(os.path.join(gdir, f"{arch}-f32.gguf"), os.path.join(wdir, f"{arch}-q4_0-libllama.gguf"), "Q4_0")
        same_tensors(os.path.join(gdir, f"{arch}-q4_0.gguf"), os.path.join(wdir, f"{arch}-q4_0-libllama.gguf"))
        for typ in ("q8_0", "q4_0"):
            gguf_tools.dequantize_file(os.path.join(gdir, f"{arch}-{typ}.gguf"), os.path.join(wdir, f"{arch}-{typ}-deq.gguf"))
        print(f"== {arch}: {time.time() - t0:.1f} s", flush=True)
    k = "qwen3moe-k256"
    convert(os.path.join(work, k), "f32", os.path.join(wdir, f"{k}-f32.gguf"))
    # LLAMA_FTYPE_MOSTLY_Q4_K_M with pure: every quantizable tensor gets the base type Q4_K
    for ftype, qtype in (("Q4_K_M", "Q4_K"), ("Q6_K", "Q6_K")):
        q = os.path.join(gdir, f"{k}-{qtype.lower()}.gguf")
        llama_quantize(os.path.join(wdir, f"{k}-f32.gguf"), q, ftype)
        types = {t.tensor_type.name for t in gguf.GGUFReader(q).tensors}
        print(f"  {os.path.basename(q)}: tensor types {sorted(types)}")
        assert qtype in types and not types - {qtype, "F32"}, types
        gguf_tools.dequantize_file(q, os.path.join(wdir, f"{k}-{qtype.lower()}-deq.gguf"))
    print(f"== {k}: {time.time() - t0:.1f} s", flush=True)
    dequant_fixtures(out, gdir)
    for f in sorted(os.listdir(gdir)):
        print(f"  {f} {os.path.getsize(os.path.join(gdir, f))}")


if __name__ == "__main__":
    main()
