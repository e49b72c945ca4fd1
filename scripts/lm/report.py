#!/usr/bin/env python3
"""Print the markdown tables of models/lm-domains/README.md from the committed json files
(fixtures/ppl.json, fixtures/routing.json, fixtures/gguf.json, train-moe.json, train-dense.json).
Usage: python3 scripts/lm/report.py"""
import json
import math
import os

LM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "models", "lm-domains")


def load(name):
    p = os.path.join(LM, name)
    return json.load(open(p)) if os.path.exists(p) else None


ppl, rt, gg = load("fixtures/ppl.json"), load("fixtures/routing.json"), load("fixtures/gguf.json")
tr = {k: load(f"train-{k}.json") for k in ("moe", "dense")}

print("### Training\n")
print("| model | parameters | active / token (no embedding) | steps | tokens | train loop | total wall | final train CE (last 50 steps) |")
print("|---|---|---|---|---|---|---|---|")
for k, t in tr.items():
    if t:
        last = t["steps"][-1]
        print(f"| {k} | {t['parameters']:,} | {t['active_parameters_per_token']:,} | {last['step']} | {t['tokens_seen']:,} | "
              f"{t['train_loop_s'] / 60:.1f} min | {t['total_wall_s'] / 60:.1f} min | {last['ce']:.3f} |")

print("\n### Test perplexity per domain (transformers, f32, from the f16 checkpoints)\n")
has_dense = any("dense_test_ppl" in r for r in ppl["domains"].values())
print("| domain | test bytes | tokens | scored | unigram | MoE | dense | MoE / dense | MoE val | dense val |")
print("|---|---|---|---|---|---|---|---|---|---|")
for d, r in ppl["domains"].items():
    dn = r.get("dense_test_ppl")
    f = lambda x: f"{x:.3f}" if x is not None else "-"
    print(f"| {d} | {r['test_bytes']} | {r['test_tokens']} | {r['scored_tokens']} | {r['unigram_ppl']:.1f} | "
          f"{r['moe_test_ppl']:.3f} | {f(dn)} | {f(r['moe_test_ppl'] / dn if dn else None)} | "
          f"{f(r.get('moe_val_ppl'))} | {f(r.get('dense_val_ppl'))} |")
tot = {}
for k in ("moe", "dense"):
    if all(f"{k}_test_nll_sum" in r for r in ppl["domains"].values()):
        nll = sum(r[f"{k}_test_nll_sum"] for r in ppl["domains"].values())
        n = sum(r["scored_tokens"] for r in ppl["domains"].values())
        tot[k] = math.exp(nll / n)
print("\nAll domains pooled (exp of total NLL / total scored tokens):", {k: round(v, 3) for k, v in tot.items()})

print("\n### Routing on the test split: entropy of each domain's expert distribution (bits; uniform = "
      f"{rt['entropy_uniform_bits']:.3f})\n")
L = rt["layers"]
print("| domain | " + " | ".join(f"layer {l}" for l in range(L)) + " | experts for 90 % of selections (per layer) |")
print("|---|" + "---|" * L + "---|")
for d in rt["domains"]:
    print(f"| {d} | " + " | ".join(f"{x:.3f}" for x in rt["entropy_bits"][d]) + " | "
          + ", ".join(map(str, rt["experts_for_90pct_of_selections"][d])) + " |")
print("| all domains pooled | " + " | ".join(f"{x:.3f}" for x in rt["entropy_pooled_bits"]) + " | |")
print("| I(domain; expert) | " + " | ".join(f"{x:.3f}" for x in rt["mutual_information_domain_expert_bits"]) + " | |")

print("\n### Share of each expert in each domain's top-2 selections (%), per layer\n")
for l in range(L):
    print(f"Layer {l}:\n")
    print("| domain | " + " | ".join(f"e{e}" for e in range(rt["experts"])) + " |")
    print("|---|" + "---|" * rt["experts"])
    for d in rt["domains"]:
        c = rt["counts"][d][l]
        s = sum(c)
        print(f"| {d} | " + " | ".join(f"{100 * x / s:.1f}" for x in c) + " |")
    print()

if gg:
    print("### GGUF (llama-cpp-python " + gg["llama_cpp_python"] + ")\n")
    print("| file | bytes | tensor types | committed |")
    print("|---|---|---|---|")
    for k, f in gg["files"].items():
        print(f"| {f['path']} | {f['bytes']:,} | {f['tensor_types']} | {'yes' if f['committed'] else 'no'} |")
    print("\n| domain | transformers f32 | llama.cpp f16 | rel | llama.cpp q8_0 | rel | llama.cpp q4_0 | rel |")
    print("|---|---|---|---|---|---|---|---|")
    for d in ppl["domains"]:
        row = [f"{gg['ppl']['f16'][d]['transformers_f32_ppl']:.4f}"]
        for k in ("f16", "q8_0", "q4_0"):
            row += [f"{gg['ppl'][k][d]['ppl']:.4f}", f"{gg['ppl'][k][d]['rel_diff']:+.1e}"]
        print(f"| {d} | " + " | ".join(row) + " |")
    print("\nrust first 64 tokens, llama.cpp f16 vs transformers f32 logits:", gg["rust_first64_logits_vs_transformers_f32"])
    print("tokenization equal on all test files:", all(v["equal"] for v in gg["tokenization"].values()))
