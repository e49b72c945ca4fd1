#!/usr/bin/env python3
"""Reference outputs of transformers and llama.cpp on the tiny MoE models, as small raw files.

usage: make_fixtures.py OUT WORK
  reads:  OUT/<arch>/ (make_tiny.py), OUT/gguf/ and WORK/gguf/ (make_gguf.py), WORK/qwen3moe-k256/
  writes: OUT/fixtures/manifest.json, OUT/fixtures/tokenizer/<text>.txt, OUT/fixtures/<arch>/*.{f32,u32}

Raw little-endian files, row-major: .f32 = float32, .u32 = uint32. manifest.json lists every file
with shape, dtype, source and sha256, the settings, tool versions, and the agreement summary
(transformers vs llama.cpp per arch and GGUF type; llama.cpp on quantized weights vs llama.cpp on
the same weights dequantized to F32, the "oracle"). Per arch (`hf` = transformers f32, CPU):
  prompt.u32                  64 prompt ids (fixed text through the model's HF tokenizer)
  hf.logits.f32               [96, V] logits of the sequence prompt + hf.greedy[:32] (one full forward):
                              rows 0..63 the prompt, rows 64..95 the 32 decode steps
  hf.greedy.u32               [64] greedy tokens after the prompt (full recompute per step, no KV cache)
  llamacpp.<type>.logits.f32  [64, V] llama.cpp logits of the prompt (one batch, f32 KV cache)
  llamacpp.<type>.greedy.u32  [64] llama.cpp greedy tokens (argmax, KV cache, one token per decode)
     <type>: f32, f16 (mixtral, deepseekv2), q8_0, q4_0 (gguf/<arch>-<type>.gguf); q8_0-deq, q4_0-deq (those files
     dequantized to F32 with gguf.quants; the oracle for the quantized weights)
  tok.<text>.<source>.u32     token ids of fixtures/tokenizer/<text>.txt: hf (tokenizers,
     tokenizer.json, add_special_tokens=False), llamacpp (GGUF vocab, add_bos=False, special=False),
     llamacpp-special (special=True), spm (sentencepiece; Mixtral only, the SPM reference)
qwen3moe-k256 (K-quant model; its HF weights and f32 GGUF are not committed) has prompt.u32 and
llamacpp.{q4_k,q4_k-deq,q6_k,q6_k-deq}.*; its HF / f32 agreement is in the summary only.
"""
import hashlib
import importlib.metadata as md
import json
import os
import platform
import sys

import numpy as np
import sentencepiece as spm
import tokenizers
import torch
import transformers
from llama_cpp import Llama
import llama_cpp
from transformers import AutoModelForCausalLM, AutoTokenizer

torch.set_num_threads(1)
transformers.utils.logging.disable_progress_bar()

ARCHS = ["mixtral", "olmoe", "qwen2moe", "qwen3moe", "granitemoe", "deepseekv2"]
N_PROMPT, N_DECODE_LOGITS, N_GREEDY = 64, 32, 64
LLAMA_KW = dict(n_ctx=256, n_batch=256, n_ubatch=256, logits_all=True, n_threads=2, n_threads_batch=2,
                type_k=0, type_v=0, seed=0, verbose=False)  # type_k/v 0 = GGML_TYPE_F32 KV cache

PROMPT_TEXT = (
    "The quick brown fox jumps over the lazy dog. A mixture-of-experts model routes every token to a "
    "few small feed-forward networks, so only a fraction of its weights is read for each step. On an "
    "edge device the experts live in flash memory and are paged in when the router asks for them, "
    "which makes the order of the experts and the size of each read matter more than raw arithmetic.")

TOK_TEXTS = {
    "ascii_prose": (
        "It was the best of times, it was the worst of times; the license grants you the right to copy, "
        "modify and distribute the Software, provided that the above copyright notice appears in all "
        "copies.\nNumbers: 3.14159, 2024-12-04, 1,000,000 and 0x1F. Don't stop; we'll see (maybe).\n"),
    "unicode_ws": (  # the leading spaces are where HF's converted SPM tokenizer.json departs from sentencepiece
        "   Grüße aus Köln! naïve café \u2014 \u201cquotes\u201d \u2026 日本語のテキスト 한국어 Ελληνικά русский "
        "🤖🚀 👩\u200d💻 🇩🇪\n\n\ttabs\t\tand    four spaces,  two;\r\n trailing   \n\n\n   "),
    "python_src": (
        "def fib(n: int) -> int:\n"
        "    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
        "    a, b = 0, 1\n"
        "    for _ in range(n):\n"
        "        a, b = b, a + b\n"
        "    return a\n"
        "\n\n"
        "if __name__ == \"__main__\":\n"
        "    print([fib(i) for i in range(10)])  # [0, 1, 1, 2, ...]\n"),
    "endoftext": (
        "First document.<|endoftext|>Second document, after the separator.\n"
        "<|endoftext|>  <|endoftext|>x"),
}

COMMANDS = [
    "scripts/llm/setup.sh",
    "scripts/llm/oracles.sh   # runs the four steps below",
    ".venv-llm/bin/python scripts/llm/make_tiny.py models/llm-tiny target/llm-work",
    "LLAMA_CPP_DIR=.venv-llm/src/llama_cpp_python-0.3.36/vendor/llama.cpp "
    ".venv-llm/bin/python scripts/llm/make_gguf.py models/llm-tiny target/llm-work",
    ".venv-llm/bin/python scripts/llm/make_fixtures.py models/llm-tiny target/llm-work",
    "(cd models/llm-tiny && sha256sum of every file) > models/llm-tiny/SHA256SUMS",
]


class Out:
    def __init__(self, root):
        self.root = root
        self.files = {}

    def write(self, arch, name, arr, source):
        arr = np.ascontiguousarray(arr)
        if arr.dtype.kind == "f":
            arr, ext, dt = arr.astype("<f4"), "f32", "f32"
        else:
            arr, ext, dt = arr.astype("<u4"), "u32", "u32"
        rel = f"{arch}/{name}.{ext}"
        os.makedirs(os.path.join(self.root, arch), exist_ok=True)
        b = arr.tobytes()
        with open(os.path.join(self.root, rel), "wb") as fh:
            fh.write(b)
        self.files[rel] = dict(shape=list(arr.shape), dtype=dt, source=source,
                               sha256=hashlib.sha256(b).hexdigest())
        return rel


def versions():
    v = {p: md.version(p) for p in ("torch", "transformers", "tokenizers", "safetensors", "gguf", "numpy",
                                    "sentencepiece", "llama_cpp_python")}
    v["python"] = platform.python_version()
    v["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode().strip()
    return v


def hf_reference(model_dir):
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return m


def hf_run(m, prompt):
    with torch.no_grad():
        seq = list(prompt)
        step_logits = []
        for _ in range(N_GREEDY):  # greedy, full recompute (no KV cache)
            last = m(torch.tensor([seq])).logits[0, -1]
            step_logits.append(last.numpy().copy())
            seq.append(int(last.argmax()))
        greedy = seq[len(prompt):]
        full = prompt + greedy[:N_DECODE_LOGITS]
        logits = m(torch.tensor([full])).logits[0].numpy().astype(np.float32)
    # rows 63..95 of the single forward predict the same tokens as steps 0..32 of the loop
    loop = np.stack(step_logits[:N_DECODE_LOGITS + 1])
    fwd = logits[N_PROMPT - 1:N_PROMPT + N_DECODE_LOGITS]
    consistency = float(np.abs(loop - fwd).max() / np.abs(fwd).max())
    return logits, np.array(greedy), consistency


def llama_run(path, prompt, teacher):
    """Prompt logits (one batch), teacher-forced decode logits, greedy tokens."""
    llm = Llama(model_path=path, **LLAMA_KW)
    llm.reset()
    llm.eval(prompt)
    prompt_logits = np.array(llm.scores[:N_PROMPT], dtype=np.float32)
    for t in teacher:  # HF's greedy tokens, one decode call each (KV cache path)
        llm.eval([t])
    tf_logits = np.array(llm.scores[N_PROMPT:N_PROMPT + len(teacher)], dtype=np.float32)
    llm.reset()
    llm.eval(prompt)
    again = np.array(llm.scores[:N_PROMPT], dtype=np.float32)
    assert np.array_equal(again, prompt_logits), "llama.cpp prompt logits not reproducible"
    greedy = []
    for _ in range(N_GREEDY):
        t = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        greedy.append(t)
        llm.eval([t])
    del llm
    return prompt_logits, tf_logits, np.array(greedy)


def rel(a, ref):
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def row_stats(a, ref):
    """Per-row max|a-ref| / max|ref| (global max): median, p90, and how many rows exceed 5e-2.
    On these random MoE models a few rows carry most of the error (top-k routing flips)."""
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    r = np.abs(a - ref).max(-1) / np.abs(ref).max()
    return dict(row_rel_median=float(np.median(r)), row_rel_p90=float(np.percentile(r, 90)),
                rows_over_5e_2=int((r > 5e-2).sum()), rows=int(r.size))


def top1(a, ref):
    return float((np.argmax(a, -1) == np.argmax(ref, -1)).mean())


def prefix(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def main():
    out, work = sys.argv[1], sys.argv[2]
    froot = os.path.join(out, "fixtures")
    o = Out(froot)
    tdir = os.path.join(froot, "tokenizer")
    os.makedirs(tdir, exist_ok=True)
    for name, text in TOK_TEXTS.items():
        with open(os.path.join(tdir, name + ".txt"), "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
    manifest = dict(
        format="raw little-endian, row-major: .f32 = float32, .u32 = uint32; shapes below; "
               "max_rel = max|a-ref| / max|ref| over all entries; top1 = fraction of rows with equal argmax",
        tools=versions(), commands=COMMANDS,
        settings=dict(
            transformers="AutoModelForCausalLM.from_pretrained(dir, dtype=float32), eval, CPU, "
                         "torch.set_num_threads(1); greedy = argmax, full recompute per step",
            llama_cpp="llama_cpp.Llama(" + ", ".join(f"{k}={v}" for k, v in LLAMA_KW.items()) +
                      "); llm.eval(prompt) -> llm.scores[:64]; greedy: argmax of the last row, "
                      "llm.eval([t]) per token (KV cache)",
            tokenizer="hf: tokenizers.Tokenizer.from_file(tokenizer.json).encode(text, add_special_tokens=False).ids; "
                      "llamacpp: Llama(gguf <arch>-f32, vocab_only=True).tokenize(text.encode(), add_bos=False, "
                      "special=False|True); spm: sentencepiece.SentencePieceProcessor(tokenizer.model).encode(text)"),
        prompt=dict(text=PROMPT_TEXT, n=N_PROMPT,
                    how="AutoTokenizer(model dir)(text)['input_ids'][:64] (BPE: no special tokens added; "
                        "Mixtral: <s> first, ids equal to sentencepiece's)"),
        tokenizer_texts={k: dict(file=f"tokenizer/{k}.txt", chars=len(v), utf8_bytes=len(v.encode()))
                         for k, v in TOK_TEXTS.items()},
        archs={}, summary=[])
    gdir, wdir = os.path.join(out, "gguf"), os.path.join(work, "gguf")

    for arch in ARCHS + ["qwen3moe-k256"]:
        k256 = arch == "qwen3moe-k256"
        mdir = os.path.join(work if k256 else out, arch)
        tok = AutoTokenizer.from_pretrained(mdir)
        ids = tok(PROMPT_TEXT)["input_ids"]
        assert len(ids) >= N_PROMPT, (arch, len(ids))
        prompt = [int(i) for i in ids[:N_PROMPT]]
        if arch == "mixtral":
            sp = spm.SentencePieceProcessor(model_file=os.path.join(mdir, "tokenizer.model"))
            assert [1] + sp.encode(PROMPT_TEXT)[:N_PROMPT - 1] == prompt, "HF vs sentencepiece prompt ids"
        A = dict(model_dir=None if k256 else arch, vocab=None, files={}, agreement={}, tokenizer={})
        o.write(arch, "prompt", np.array(prompt), "tokenizer(prompt text)")
        m = hf_reference(mdir)
        A["hf_class"] = type(m).__name__
        logits, greedy, cons = hf_run(m, prompt)
        del m
        V = logits.shape[1]
        A["vocab"] = V
        A["hf_decode_loop_vs_full_forward_max_rel"] = cons
        if not k256:  # (k256: its HF weights are not committed; the HF numbers are in the summary only)
            o.write(arch, "hf.logits", logits, "transformers f32, one forward of prompt + hf.greedy[:32]")
            o.write(arch, "hf.greedy", greedy, "transformers f32 greedy, full recompute")
        teacher = [int(t) for t in greedy[:N_DECODE_LOGITS]]
        if k256:
            types = [("f32", os.path.join(wdir, f"{arch}-f32.gguf"), False)]
            for q in ("q4_k", "q6_k"):
                types += [(q, os.path.join(gdir, f"{arch}-{q}.gguf"), True),
                          (q + "-deq", os.path.join(wdir, f"{arch}-{q}-deq.gguf"), True)]
        else:
            f16 = os.path.join(gdir, f"{arch}-f16.gguf")
            types = [("f32", os.path.join(gdir, f"{arch}-f32.gguf"), True),
                     ("f16", f16, True) if os.path.exists(f16) else ("f16", os.path.join(wdir, f"{arch}-f16.gguf"), False)]
            for q in ("q8_0", "q4_0"):
                types += [(q, os.path.join(gdir, f"{arch}-{q}.gguf"), True),
                          (q + "-deq", os.path.join(wdir, f"{arch}-{q}-deq.gguf"), True)]
        res = {}
        for typ, path, keep in types:
            pl, tf, gr = llama_run(path, prompt, teacher)
            res[typ] = (pl, gr)
            if keep:
                o.write(arch, f"llamacpp.{typ}.logits", pl,
                        f"llama.cpp, {os.path.relpath(path, out) if path.startswith(out) else os.path.basename(path) + ' (WORK, not committed)'}, prompt")
                o.write(arch, f"llamacpp.{typ}.greedy", gr, "llama.cpp greedy argmax, KV cache")
            ag = dict(max_rel_vs_hf=rel(pl, logits[:N_PROMPT]), top1_vs_hf=top1(pl, logits[:N_PROMPT]),
                      row_rel_median_vs_hf=row_stats(pl, logits[:N_PROMPT])["row_rel_median"],
                      committed=keep,
                      decode_max_rel_vs_hf=rel(tf, logits[N_PROMPT:]),
                      decode_top1_vs_hf=top1(tf, logits[N_PROMPT:]),
                      greedy_equal_prefix=prefix(gr, greedy), greedy_equal=bool(np.array_equal(gr, greedy)))
            if typ.endswith("-deq"):
                q = typ[:-4]
                qp, qg = res[q]
                res[q + ":vs_oracle"] = dict(max_rel=rel(qp, pl), top1=top1(qp, pl),
                                             greedy_equal_prefix=prefix(qg, gr), **row_stats(qp, pl))
                A["agreement"][q]["llamacpp_vs_dequant_oracle"] = res[q + ":vs_oracle"]
            A["agreement"][typ] = ag
            print(f"  {arch:14s} {typ:9s} max_rel_vs_hf {ag['max_rel_vs_hf']:.2e} top1 {ag['top1_vs_hf']:.3f} "
                  f"decode {ag['decode_max_rel_vs_hf']:.2e} greedy= {ag['greedy_equal_prefix']}/64"
                  + (f"  | {typ[:-4]} vs oracle {res[typ[:-4] + ':vs_oracle']['max_rel']:.2e}"
                     if typ.endswith("-deq") else ""), flush=True)

        # tokenizer conformance
        if not k256:
            from tokenizers import Tokenizer
            htok = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
            vocab_llm = Llama(model_path=os.path.join(gdir, f"{arch}-f32.gguf"), vocab_only=True, verbose=False)
            for name, text in TOK_TEXTS.items():
                src = {"hf": htok.encode(text, add_special_tokens=False).ids,
                       "llamacpp": vocab_llm.tokenize(text.encode(), add_bos=False, special=False),
                       "llamacpp-special": vocab_llm.tokenize(text.encode(), add_bos=False, special=True)}
                if arch == "mixtral":
                    src["spm"] = sp.encode(text)
                ref = "spm" if arch == "mixtral" else "hf"
                entry = dict(reference=ref)
                for s, v in src.items():
                    entry[s] = o.write(arch, f"tok.{name}.{s}", np.array(v, dtype=np.uint32),
                                       f"tokenizer ids ({s}) of tokenizer/{name}.txt")
                    entry[f"{s}_len"] = len(v)
                    entry[f"{s}_equals_{ref}"] = list(v) == list(src[ref])
                A["tokenizer"][name] = entry
                print(f"  {arch:14s} tok {name:12s} " + " ".join(
                    f"{s}={len(v)}{'=' if list(v) == list(src[ref]) else '!'}" for s, v in src.items()), flush=True)
            del vocab_llm
        A["files"] = {k: v for k, v in o.files.items() if k.startswith(arch + "/")}
        manifest["archs"][arch] = A
        for typ, ag in A["agreement"].items():
            row = dict(arch=arch, type=typ, committed=ag["committed"], max_rel_vs_hf=ag["max_rel_vs_hf"],
                       row_rel_median_vs_hf=ag["row_rel_median_vs_hf"], top1_vs_hf=ag["top1_vs_hf"],
                       decode_max_rel_vs_hf=ag["decode_max_rel_vs_hf"],
                       greedy_equal_prefix=ag["greedy_equal_prefix"])
            if "llamacpp_vs_dequant_oracle" in ag:
                row["llamacpp_vs_dequant_oracle_max_rel"] = ag["llamacpp_vs_dequant_oracle"]["max_rel"]
                row["llamacpp_vs_dequant_oracle_top1"] = ag["llamacpp_vs_dequant_oracle"]["top1"]
                row["llamacpp_vs_dequant_oracle_row_rel_median"] = ag["llamacpp_vs_dequant_oracle"]["row_rel_median"]
                row["llamacpp_vs_dequant_oracle_rows_over_5e_2"] = ag["llamacpp_vs_dequant_oracle"]["rows_over_5e_2"]
            manifest["summary"].append(row)

    with open(os.path.join(froot, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")
    print("\n| arch | type | max_rel vs HF (64 prompt rows) | row median | top1 | decode max_rel (32 rows) "
          "| greedy = HF (of 64) | llama.cpp vs dequant oracle: max_rel / row median / rows > 5e-2 / top1 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in manifest["summary"]:
        orc = (f"{r['llamacpp_vs_dequant_oracle_max_rel']:.2e} / {r['llamacpp_vs_dequant_oracle_row_rel_median']:.2e}"
               f" / {r['llamacpp_vs_dequant_oracle_rows_over_5e_2']} / {r['llamacpp_vs_dequant_oracle_top1']:.2f}"
               if "llamacpp_vs_dequant_oracle_max_rel" in r else "")
        print(f"| {r['arch']} | {r['type']}{'' if r['committed'] else ' (not committed)'} | {r['max_rel_vs_hf']:.2e} | "
              f"{r['row_rel_median_vs_hf']:.2e} | {r['top1_vs_hf']:.2f} | "
              f"{r['decode_max_rel_vs_hf']:.2e} | {r['greedy_equal_prefix']} | {orc} |")
    total = sum(os.path.getsize(os.path.join(dp, f)) for dp, _, fs in os.walk(froot) for f in fs)
    print(f"fixtures: {len(o.files)} files, {total} bytes")


if __name__ == "__main__":
    main()
