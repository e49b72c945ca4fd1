#!/usr/bin/env python3
"""Quality figures and Rust-conformance fixtures of the lm-domains model, computed by transformers in f32
from the committed float16 checkpoint.

Usage: .venv-llm/bin/python scripts/lm/eval.py [--dense-dir models/lm-domains/dense]

Writes models/lm-domains/fixtures/:
  ppl.json                 per-domain test (and val) perplexity of the MoE and the dense model, unigram baseline,
                           exact token / window / scored-token counts, the definition
  tokens/<domain>.test.u16 the test split's token ids (little-endian u16, no special tokens)
  logits-<D>-64.f32        f32 logits [64, vocab] (row-major, little-endian) of the first 64 test tokens of
                           domain D run as one sequence from position 0; logits-<D>-64.json describes it
  routing.json             per domain x layer x expert: how often the expert is in a token's top-2 on the
                           test split (same windows as the perplexity), entropies, mutual information
  traces/<domain>.u8       per-token routing trace of the test split, layout in routing.json["trace_layout"]
"""
import argparse
import hashlib
import json
import math
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

LOGITS_DOMAIN = "rust"
LOGITS_TOKENS = 64

DEFINITION = (
    "Text: the domain's test.txt (UTF-8, as committed). Tokens: tokenizer.json, encode(text, "
    "add_special_tokens=False): no BOS/EOS. Windows: the token sequence is cut into non-overlapping windows "
    "[0,256), [256,512), ...; the last window may be shorter and is dropped if it has fewer than 2 tokens. "
    "Each window is evaluated on its own from position 0 (no state carried between windows). Within a window "
    "the logits at position t score token t+1, so the first token of every window is not scored: "
    "n_scored = n_tokens_in_windows - n_windows. NLL = -log_softmax(logits)[target] with f32 logits, summed "
    "in f64. ppl = exp(sum NLL / n_scored).")


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def load(model_dir):
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return m.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", default=common.MODEL_DIR)
    ap.add_argument("--dense-dir", default=os.path.join(common.LM, "dense"))
    ap.add_argument("--out", default=common.FIXTURES)
    ap.add_argument("--splits", default="test,val")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    os.makedirs(os.path.join(a.out, "tokens"), exist_ok=True)
    os.makedirs(os.path.join(a.out, "traces"), exist_ok=True)
    tok = common.tokenizer(a.model_dir)
    V = tok.get_vocab_size()

    ids = {s: {d: common.encode(tok, common.read(d, s)) for d in common.DOMAINS} for s in a.splits.split(",")}
    train_ids = {d: common.encode(tok, common.read(d, "train")) for d in common.DOMAINS}
    for d in common.DOMAINS:
        p = os.path.join(a.out, "tokens", f"{d}.test.u16")
        np.asarray(ids["test"][d], dtype="<u2").tofile(p)

    result = {"definition": DEFINITION, "context": common.CTX, "vocab_size": V,
              "checkpoint_dtype": "float16", "eval_dtype": "float32",
              "torch": torch.__version__, "domains": {}}
    for d in common.DOMAINS:
        n = len(ids["test"][d])
        w = common.eval_windows(n)
        uni, n_uni = common.unigram_ppl(train_ids[d], ids["test"][d], V)
        result["domains"][d] = {
            "test_file": f"corpus/{d}/test.txt", "test_sha256": sha(os.path.join(common.CORPUS, d, "test.txt")),
            "test_bytes": os.path.getsize(os.path.join(common.CORPUS, d, "test.txt")),
            "test_tokens": n, "windows": len(w), "tokens_in_windows": w[-1][1] if w else 0,
            "scored_tokens": sum(e - s - 1 for s, e in w),
            "unigram_ppl": uni}
        assert n_uni == result["domains"][d]["scored_tokens"]

    models = {"moe": a.model_dir}
    if a.dense_dir and os.path.exists(os.path.join(a.dense_dir, "model.safetensors")):
        models["dense"] = a.dense_dir
    for kind, mdir in models.items():
        model = load(mdir)
        cfg = model.config
        result[f"{kind}_checkpoint"] = {"dir": os.path.relpath(mdir, common.LM),
                                        "safetensors_sha256": sha(os.path.join(mdir, "model.safetensors")),
                                        "parameters": sum(p.numel() for p in model.parameters())}
        L, E, K = cfg.num_hidden_layers, cfg.num_experts, cfg.num_experts_per_tok
        routing = np.zeros((len(common.DOMAINS), L, E), dtype=np.int64)
        for di, d in enumerate(common.DOMAINS):
            for split in ids:
                trace = []

                def on_window(part, x, out):
                    if kind != "moe" or split != "test":
                        return
                    # router_logits: tuple over layers of [batch*seq, E]; top-k of the softmax = top-k of logits
                    sel = torch.stack([torch.topk(torch.softmax(r.float(), -1), K, dim=-1).indices
                                       for r in out.router_logits], dim=1)            # [batch*seq, L, K]
                    trace.append(sel.reshape(x.shape[0], x.shape[1], L, K).reshape(-1, L, K).numpy())

                ppl, nll, ns = common.perplexity(model, ids[split][d], on_window=on_window)
                rec = result["domains"][d]
                assert split != "test" or ns == rec["scored_tokens"]
                rec[f"{kind}_{split}_ppl"] = ppl
                rec[f"{kind}_{split}_nll_sum"] = nll
                if split != "test":
                    rec[f"{split}_scored_tokens"] = ns
                print(f"{kind:5s} {d:10s} {split:4s} ppl {ppl:9.3f} scored {ns}", flush=True)
                if trace:
                    t = np.concatenate(trace).astype(np.uint8)                         # [tokens, L, K]
                    assert t.shape[0] == rec["tokens_in_windows"]
                    t.tofile(os.path.join(a.out, "traces", f"{d}.u8"))
                    for l in range(L):
                        routing[di, l] = np.bincount(t[:, l, :].reshape(-1), minlength=E)
        if kind == "moe":
            write_routing(a.out, routing, L, E, K, result)
            write_logits(a.out, model, ids["test"][LOGITS_DOMAIN][:LOGITS_TOKENS], V)
        del model

    for d, rec in result["domains"].items():
        if "dense_test_ppl" in rec:
            rec["moe_vs_dense_test_ppl_ratio"] = rec["moe_test_ppl"] / rec["dense_test_ppl"]
    with open(os.path.join(a.out, "ppl.json"), "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print_table(result)


def entropy_bits(c):
    p = c / c.sum()
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def write_routing(out, routing, L, E, K, result):
    doms = common.DOMAINS
    ent = {d: [entropy_bits(routing[i, l]) for l in range(L)] for i, d in enumerate(doms)}
    pooled = [entropy_bits(routing[:, l].sum(0)) for l in range(L)]
    # domains are weighted by their number of routed tokens, so I(domain; expert) = H(pooled) - sum_d w_d H(d)
    w = routing[:, 0].sum(1) / routing[:, 0].sum()
    mi = [pooled[l] - float(sum(w[i] * ent[d][l] for i, d in enumerate(doms))) for l in range(L)]
    top90 = {d: [int(np.searchsorted(np.cumsum(np.sort(routing[i, l])[::-1]) / routing[i, l].sum(), 0.9) + 1)
                 for l in range(L)] for i, d in enumerate(doms)}
    r = {"domains": doms, "layers": L, "experts": E, "top_k": K, "split": "test",
         "selection": "top-2 of softmax(router logits) of transformers' OlmoeTopKRouter, f32, per token of the "
                      "perplexity windows (all tokens of every window, including its first token)",
         "counts": {d: routing[i].tolist() for i, d in enumerate(doms)},
         "tokens": {d: int(routing[i, 0].sum() // K) for i, d in enumerate(doms)},
         "entropy_bits": ent, "entropy_uniform_bits": math.log2(E), "entropy_pooled_bits": pooled,
         "mutual_information_domain_expert_bits": mi,
         "experts_for_90pct_of_selections": top90,
         "trace_layout": ("traces/<domain>.u8: uint8 array [n_tokens][layers][top_k], C order: for every token of "
                          "the test split in order (token i of fixtures/tokens/<domain>.test.u16, covering the "
                          "perplexity windows), for each layer 0..L-1, the ids of its top-2 experts in descending "
                          "router probability (torch.topk order). n_tokens = tokens_in_windows of ppl.json."),
         "trace_files": {d: {"tokens": int(routing[i, 0].sum() // K),
                             "sha256": sha(os.path.join(out, "traces", f"{d}.u8"))} for i, d in enumerate(doms)}}
    with open(os.path.join(out, "routing.json"), "w") as f:
        json.dump(r, f, indent=1)
        f.write("\n")
    print("entropy (bits, uniform = %.3f) per layer; pooled:" % math.log2(E), [round(x, 3) for x in pooled],
          "MI:", [round(x, 3) for x in mi])
    for d in doms:
        print(f"  {d:10s}", [round(x, 3) for x in ent[d]], "experts for 90%:", top90[d])


@torch.no_grad()
def write_logits(out, model, tids, V):
    x = torch.tensor([tids], dtype=torch.long)
    logits = model(input_ids=x).logits[0].float()
    arr = logits.numpy().astype("<f4")
    p = os.path.join(out, f"logits-{LOGITS_DOMAIN}-{LOGITS_TOKENS}.f32")
    arr.tofile(p)
    logp = torch.log_softmax(logits, -1)
    nll = -logp[:-1].gather(-1, x[0, 1:, None]).squeeze(-1).double()
    meta = {"domain": LOGITS_DOMAIN, "source": f"corpus/{LOGITS_DOMAIN}/test.txt, first {len(tids)} tokens",
            "token_ids": list(map(int, tids)), "shape": list(arr.shape), "dtype": "float32 little-endian, row-major "
            "[position][vocab]", "positions": "0..63, one sequence, no BOS", "file": os.path.basename(p),
            "sha256": sha(p), "max_abs": float(np.abs(arr).max()),
            "argmax": arr.argmax(-1).tolist(), "scored_nll_sum": float(nll.sum()),
            "ppl_63_scored": math.exp(float(nll.mean())),
            "note": "transformers OlmoeForCausalLM in f32 from the float16 checkpoint"}
    with open(os.path.join(out, f"logits-{LOGITS_DOMAIN}-{LOGITS_TOKENS}.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")


def print_table(result):
    print("| domain | test tokens | scored | unigram ppl | MoE ppl | dense ppl | MoE/dense |")
    for d, r in result["domains"].items():
        dn = r.get("dense_test_ppl", float("nan"))
        print(f"| {d} | {r['test_tokens']} | {r['scored_tokens']} | {r['unigram_ppl']:.2f} | "
              f"{r['moe_test_ppl']:.3f} | {dn:.3f} | {r['moe_test_ppl'] / dn:.3f} |")


if __name__ == "__main__":
    main()
