#!/usr/bin/env python3
"""Convert the committed lm-domains checkpoint to GGUF with llama.cpp's converter and check it with
llama-cpp-python (tokenization and test perplexity against transformers).

Usage: .venv-llm/bin/python scripts/lm/to_gguf.py [--llama-cpp-dir .venv-llm/src/llama_cpp_python-0.3.36/vendor/llama.cpp]

Writes models/lm-domains/gguf/lm-domains-f16.gguf (committed), models/lm-domains/work/lm-domains-{q8_0,q4_0}.gguf
(not committed) and models/lm-domains/fixtures/gguf.json.
- f16:  convert_hf_to_gguf.py --outtype f16 (through convert_any_bpe.py: tokenizer.ggml.pre = "gpt-2").
        The checkpoint is float16, so the f16 GGUF holds the same weights bit for bit (norms and routers as F32).
- q8_0: convert_hf_to_gguf.py --outtype q8_0.
- q4_0: libllama's quantizer (llama_model_quantize, the code of the llama-quantize tool) on the f16 GGUF,
        ftype MOSTLY_Q4_0 with pure=False (its default mix).
Perplexity in llama.cpp uses the same windows as scripts/lm/eval.py: each window is evaluated from an empty
KV cache (f32 K/V), logits of every position, NLL of tokens 1..len-1 of the window.
"""
import argparse
import glob
import hashlib
import json
import math
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def sha(p):
    return hashlib.sha256(open(p, "rb").read()).hexdigest()


def convert(lc, outtype, out):
    env = dict(os.environ, LLAMA_CPP_DIR=lc, GGUF_PRE="gpt-2")
    t = time.time()
    r = subprocess.run([sys.executable, os.path.join(HERE, "convert_any_bpe.py"), common.MODEL_DIR,
                        "--outtype", outtype, "--outfile", out], env=env, capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stdout[-3000:], r.stderr[-3000:])
        raise SystemExit(f"convert {outtype} failed")
    return time.time() - t


def quantize_q4_0(inp, out):
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0
    p.nthread = 2
    t = time.time()
    rc = llama_cpp.llama_model_quantize(inp.encode(), out.encode(), p)
    if rc != 0:
        raise SystemExit(f"quantize rc={rc}")
    return time.time() - t


def tensor_types(path):
    import gguf
    r = gguf.GGUFReader(path)
    types = {}
    for t in r.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return types, {k: r.fields[k].contents() for k in ("general.architecture", "tokenizer.ggml.pre",
                                                        "olmoe.expert_count", "olmoe.expert_used_count",
                                                        "olmoe.context_length") if k in r.fields}


def llama_ppl(llm, ids):
    total, n = 0.0, 0
    first = None
    for s, e in common.eval_windows(len(ids)):
        w = ids[s:e]
        llm.reset()
        llm.eval(w)
        sc = np.array(llm.scores[: len(w)], dtype=np.float64)
        if first is None:
            first = sc
        m = sc.max(-1, keepdims=True)
        logz = (m + np.log(np.exp(sc - m).sum(-1, keepdims=True)))[:, 0]
        nll = logz[:-1] - sc[np.arange(len(w) - 1), w[1:]]
        total += float(nll.sum())
        n += len(w) - 1
    return math.exp(total / n), n, first


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp-dir", default=sorted(glob.glob(os.path.join(
        common.ROOT, ".venv-llm", "src", "llama_cpp_python-*", "vendor", "llama.cpp")))[-1])
    a = ap.parse_args()
    gdir = os.path.join(common.LM, "gguf")
    os.makedirs(gdir, exist_ok=True)
    os.makedirs(common.WORK, exist_ok=True)
    files = {"f16": os.path.join(gdir, "lm-domains-f16.gguf"),
             "q8_0": os.path.join(common.WORK, "lm-domains-q8_0.gguf"),
             "q4_0": os.path.join(common.WORK, "lm-domains-q4_0.gguf")}
    res = {"llama_cpp_dir": os.path.relpath(a.llama_cpp_dir, common.ROOT), "files": {}, "ppl": {},
           "tokenization": {}}
    secs = {"f16": convert(a.llama_cpp_dir, "f16", files["f16"]),
            "q8_0": convert(a.llama_cpp_dir, "q8_0", files["q8_0"]),
            "q4_0": quantize_q4_0(files["f16"], files["q4_0"])}
    for k, p in files.items():
        types, meta = tensor_types(p)
        res["files"][k] = {"path": os.path.relpath(p, common.LM), "bytes": os.path.getsize(p), "sha256": sha(p),
                           "tensor_types": types, "metadata": meta, "seconds": round(secs[k], 1),
                           "committed": k == "f16"}
        print(k, res["files"][k], flush=True)

    import llama_cpp
    from llama_cpp import Llama
    res["llama_cpp_python"] = llama_cpp.__version__
    tok = common.tokenizer()
    ids = {d: common.encode(tok, common.read(d, "test")) for d in common.DOMAINS}
    with open(os.path.join(common.FIXTURES, "ppl.json")) as f:
        ref = json.load(f)
    ref_logits = np.fromfile(os.path.join(common.FIXTURES, "logits-rust-64.f32"), dtype="<f4").reshape(64, -1)
    for k, p in files.items():
        llm = Llama(model_path=p, n_ctx=common.CTX, n_batch=common.CTX, logits_all=True, n_threads=2,
                    verbose=False, seed=0, type_k=0, type_v=0)
        if k == "f16":
            for d in common.DOMAINS:
                text = common.read(d, "test")
                lt = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
                res["tokenization"][d] = {"equal": lt == ids[d], "llama_cpp_tokens": len(lt),
                                          "tokenizers_tokens": len(ids[d])}
            print("tokenization", res["tokenization"], flush=True)
            llm.reset()
            llm.eval(ids["rust"][:64])
            got = np.array(llm.scores[:64], dtype=np.float64)
            d_ = np.abs(got - ref_logits)
            res["rust_first64_logits_vs_transformers_f32"] = {
                "max_abs": float(d_.max()), "ref_absmax": float(np.abs(ref_logits).max()),
                "max_rel": float(d_.max() / np.abs(ref_logits).max()),
                "top1_agree": float((got.argmax(-1) == ref_logits.argmax(-1)).mean())}
            print("logits", res["rust_first64_logits_vs_transformers_f32"], flush=True)
        res["ppl"][k] = {}
        t = time.time()
        for d in common.DOMAINS:
            ppl, n, _ = llama_ppl(llm, ids[d])
            hf = ref["domains"][d]["moe_test_ppl"]
            assert n == ref["domains"][d]["scored_tokens"]
            res["ppl"][k][d] = {"ppl": ppl, "scored_tokens": n, "transformers_f32_ppl": hf,
                                "rel_diff": ppl / hf - 1}
            print(f"{k:5s} {d:10s} llama.cpp ppl {ppl:9.4f}  transformers {hf:9.4f}  rel {ppl / hf - 1:+.2e}",
                  flush=True)
        res["ppl"][k]["_seconds"] = round(time.time() - t, 1)
        del llm
    with open(os.path.join(common.FIXTURES, "gguf.json"), "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
