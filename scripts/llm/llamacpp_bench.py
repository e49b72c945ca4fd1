#!/usr/bin/env python3
"""llama-bench-like prompt-processing and decode throughput of a GGUF through llama-cpp-python's C API.

usage: llamacpp_bench.py MODEL.gguf [--threads 1] [--pp 512] [--tg 128] [--reps 3] [--batch 512]
                         [--kv f16|f32] [--flash-attn] [--no-mmap] [--no-repack] [--seed 0]

Prints one JSON line per test (pp<N>, tg<N>) like `llama-bench -o jsonl`: avg_ts / stddev_ts / median_ts
(tokens per second), the raw samples, every parameter, and the 1-min load average before the test
(on a shared machine the median is the more stable number). Method (as llama-bench):
  - one context (n_ctx = pp + tg), n_threads = n_threads_batch = --threads, n_batch = n_ubatch = --batch,
    KV cache type --kv (llama-bench's default is f16), flash attention off unless --flash-attn, mmap on;
  - one untimed warm-up run of each test first;
  - pp: memory cleared, then --pp random token ids decoded in batches of --batch, only the last
    position's logits requested; time = wall time of all llama_decode calls (+ synchronize);
  - tg: memory cleared, then --tg tokens decoded one at a time (positions 0..tg-1), logits for each;
    the token fed is random (the model is not sampled), as llama-bench does.
Model load time is not timed.
"""
import argparse
import ctypes
import json
import os
import statistics
import sys
import time

import numpy as np
import llama_cpp as L


_QUIET = L.llama_log_callback(lambda level, text, user: None)  # module-level: must outlive every call


def decode_tokens(ctx, batch, toks, pos0, all_logits):
    batch.n_tokens = len(toks)
    for i, t in enumerate(toks):
        batch.token[i] = int(t)
        batch.pos[i] = pos0 + i
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = 0
        batch.logits[i] = 1 if (all_logits or i == len(toks) - 1) else 0
    rc = L.llama_decode(ctx, batch)
    if rc != 0:
        raise RuntimeError(f"llama_decode returned {rc}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--kv", default="f16", choices=["f16", "f32"])
    ap.add_argument("--flash-attn", action="store_true")
    ap.add_argument("--no-mmap", action="store_true")
    # llama.cpp's default CPU loader repacks Q4_0 into interleaved blocks in
    # anonymous memory (its "extra buffer types"): the whole model leaves
    # the mapping. This keeps the weights in the mapped file instead.
    ap.add_argument("--no-repack", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    L.llama_backend_init()
    L.llama_log_set(_QUIET, ctypes.c_void_p(0))
    mp = L.llama_model_default_params()
    mp.use_mmap = not a.no_mmap
    mp.use_extra_bufts = not a.no_repack
    t0 = time.perf_counter()
    model = L.llama_model_load_from_file(a.model.encode(), mp)
    if not model:
        sys.exit(f"cannot load {a.model}")
    t_load = time.perf_counter() - t0
    cp = L.llama_context_default_params()
    cp.n_ctx = a.pp + a.tg
    cp.n_batch = cp.n_ubatch = a.batch
    cp.n_threads = cp.n_threads_batch = a.threads
    cp.type_k = cp.type_v = {"f16": 1, "f32": 0}[a.kv]
    cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if a.flash_attn else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
    cp.no_perf = True
    ctx = L.llama_init_from_model(model, cp)
    if not ctx:
        sys.exit("cannot create context")
    n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))
    mem = L.llama_get_memory(ctx)
    batch = L.llama_batch_init(max(a.batch, 1), 0, 1)
    rng = np.random.default_rng(a.seed)

    def run_pp():
        L.llama_memory_clear(mem, True)
        toks = rng.integers(0, n_vocab, a.pp)
        t = time.perf_counter()
        for i in range(0, a.pp, a.batch):
            decode_tokens(ctx, batch, toks[i:i + a.batch], i, False)
        L.llama_synchronize(ctx)
        return time.perf_counter() - t

    def run_tg():
        L.llama_memory_clear(mem, True)
        toks = rng.integers(0, n_vocab, a.tg)
        t = time.perf_counter()
        for i in range(a.tg):
            decode_tokens(ctx, batch, toks[i:i + 1], i, True)
        L.llama_synchronize(ctx)
        return time.perf_counter() - t

    common = dict(model=os.path.basename(a.model), model_size=int(L.llama_model_size(model)),
                  model_n_params=int(L.llama_model_n_params(model)), file_size=os.path.getsize(a.model),
                  n_threads=a.threads, n_batch=a.batch, n_ubatch=a.batch, type_k=a.kv, type_v=a.kv,
                  flash_attn=a.flash_attn, use_mmap=not a.no_mmap, repack=not a.no_repack, load_s=round(t_load, 3),
                  build=f"llama-cpp-python {L.__version__}",
                  cpu_info=L.llama_print_system_info().decode().strip())
    for name, n, fn in (("pp", a.pp, run_pp), ("tg", a.tg, run_tg)):
        if n <= 0:
            continue
        load0 = open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else None
        fn()  # warm-up
        samples = [fn() for _ in range(a.reps)]
        ts = [n / s for s in samples]
        print(json.dumps(dict(common, test=f"{name}{n}", n_prompt=n if name == "pp" else 0,
                              n_gen=n if name == "tg" else 0, reps=a.reps,
                              samples_ns=[int(s * 1e9) for s in samples], samples_ts=[round(x, 3) for x in ts],
                              avg_ts=round(statistics.mean(ts), 3), median_ts=round(statistics.median(ts), 3),
                              loadavg_before=load0,
                              stddev_ts=round(statistics.stdev(ts), 3) if len(ts) > 1 else 0.0)), flush=True)
    L.llama_batch_free(batch)
    L.llama_free(ctx)
    L.llama_model_free(model)


if __name__ == "__main__":
    main()
