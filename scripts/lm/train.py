#!/usr/bin/env python3
"""Train the lm-domains OLMoE model (or its dense baseline) from scratch on CPU with transformers.

Usage (from the repository root, with the corpus built and the tokenizer in models/lm-domains/model):
    .venv-llm/bin/python scripts/lm/train.py                       # MoE  -> models/lm-domains/model/
    .venv-llm/bin/python scripts/lm/train.py --dense               # dense -> models/lm-domains/dense/
    .venv-llm/bin/python scripts/lm/train.py --steps 20 --out /tmp/x   # short run (determinism check)

Data: each domain's train.txt is tokenized (no special tokens) and cut into non-overlapping windows of
CTX=256 tokens (the tail shorter than 256 is dropped). Every step takes --per-domain windows from each of the
7 domains, in the fixed DOMAINS order, so every batch is domain-balanced. Each domain walks through its own
windows in a random order drawn by numpy's PCG64 seeded with [seed, domain index, epoch]; when a domain's
windows run out, its next epoch starts with a fresh order (so a smaller domain, es-man, repeats sooner).
Loss: mean next-token cross-entropy over the batch (labels = input ids, transformers shifts them) plus
router_aux_loss_coef (0.01) x the Switch-style load-balancing loss over all layers (transformers'
load_balancing_loss_func, enabled by output_router_logits=True). The dense model has no router loss.
Optimiser: AdamW(betas 0.9/0.95, eps 1e-8, weight decay 0.1 on tensors with >= 2 dims), linear warm-up
then cosine decay to 10 % of --lr, gradient-norm clipping at 1.0. Matmuls run under CPU bf16 autocast
(--precision bf16, the default; master weights, optimiser state and the loss are f32); --precision f32
turns that off. The saved checkpoint is the f32 master weights rounded to float16.
"""
import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time

T0 = time.time()
# Passive OpenMP waiting: on this shared 2-core machine, spinning worker threads made a step 2-4x slower
# whenever other processes were running (measured: 560-900 tok/s spinning vs 2000-2300 tok/s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dense", action="store_true")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--per-domain", type=int, default=2, help="windows per domain per step")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--precision", choices=["bf16", "f32"], default="bf16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--val-every", type=int, default=0, help="val loss on the first 8 val windows per domain")
    ap.add_argument("--out", default=None)
    ap.add_argument("--log", default=None, help="json training log (default: <out>/../train-<kind>.json)")
    a = ap.parse_args()
    kind = "dense" if a.dense else "moe"
    out = a.out or (os.path.join(common.LM, "dense") if a.dense else common.MODEL_DIR)
    log_path = a.log or os.path.join(common.LM, f"train-{kind}.json")

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    torch.use_deterministic_algorithms(True)
    from transformers import OlmoeForCausalLM

    tok = common.tokenizer()
    cfg = common.model_config(dense=a.dense, vocab_size=tok.get_vocab_size())
    model = OlmoeForCausalLM(cfg)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    E, K, I, H, L = cfg.num_experts, cfg.num_experts_per_tok, cfg.intermediate_size, cfg.hidden_size, cfg.num_hidden_layers
    n_active = n_params - L * (E - K) * 3 * H * I - cfg.vocab_size * H  # minus unused experts and the embedding lookup
    print(f"{kind}: {n_params} parameters, {n_active} active per token (without the embedding table)", flush=True)

    # ---- data ----
    wins = []
    for d in common.DOMAINS:
        ids = np.asarray(common.encode(tok, common.read(d, "train")), dtype=np.int64)
        n = len(ids) // common.CTX
        wins.append(ids[: n * common.CTX].reshape(n, common.CTX))
        print(f"  {d:10s} train tokens {len(ids):8d} windows {n}", flush=True)
    val = torch.tensor(np.concatenate([np.asarray(common.encode(tok, common.read(d, "val"))[: 8 * common.CTX],
                                                  dtype=np.int64).reshape(-1, common.CTX) for d in common.DOMAINS]))
    cursor = [0] * len(wins)
    epoch = [0] * len(wins)
    order = [np.random.default_rng([a.seed, i, 0]).permutation(len(w)) for i, w in enumerate(wins)]

    def next_batch():
        rows = []
        for i, w in enumerate(wins):
            for _ in range(a.per_domain):
                if cursor[i] == len(w):
                    epoch[i] += 1
                    cursor[i] = 0
                    order[i] = np.random.default_rng([a.seed, i, epoch[i]]).permutation(len(w))
                rows.append(w[order[i][cursor[i]]])
                cursor[i] += 1
        return torch.from_numpy(np.stack(rows))

    # ---- optimiser ----
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step):
        if step < a.warmup:
            return a.lr * (step + 1) / a.warmup
        p = (step - a.warmup) / max(1, a.steps - a.warmup)
        return a.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))

    log = {"kind": kind, "args": vars(a), "parameters": n_params, "active_parameters_per_token": n_active,
           "torch": torch.__version__, "threads": a.threads, "machine": platform.processor() or platform.machine(),
           "steps": []}
    t_train = time.time()
    tokens = 0
    acc = {"ce": 0.0, "aux": 0.0, "n": 0}
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        x = next_batch()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            res = model(input_ids=x, labels=x)
        loss = res.loss
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += x.numel()
        aux = float(res.aux_loss.detach()) if res.aux_loss is not None else 0.0
        acc["ce"] += float(loss) - (cfg.router_aux_loss_coef * aux if not a.dense else 0.0)
        acc["aux"] += aux
        acc["n"] += 1
        if (step + 1) % a.log_every == 0 or step + 1 == a.steps:
            el = time.time() - t_train
            rec = {"step": step + 1, "ce": acc["ce"] / acc["n"], "aux": acc["aux"] / acc["n"], "lr": lr_at(step),
                   "grad_norm": float(gn), "tokens": tokens, "elapsed_s": round(el, 1),
                   "epochs": [round(e + c / len(w), 3) for e, c, w in zip(epoch, cursor, wins)]}
            if a.val_every and ((step + 1) % a.val_every == 0 or step + 1 == a.steps):
                model.eval()
                with torch.no_grad():
                    vo = model(input_ids=val, labels=val, output_router_logits=False)
                rec["val_ce"] = float(vo.loss)
                model.train()
            log["steps"].append(rec)
            print(json.dumps(rec), f"{tokens / el:.0f} tok/s", flush=True)
            acc = {"ce": 0.0, "aux": 0.0, "n": 0}

    train_s = time.time() - t_train
    model = model.to(torch.float16)
    model.config.use_cache = True
    model.save_pretrained(out)
    if os.path.abspath(out) != os.path.abspath(common.MODEL_DIR):
        tok.save(os.path.join(out, "tokenizer.json"))
    st = os.path.join(out, "model.safetensors")
    log.update(train_loop_s=round(train_s, 1), total_wall_s=round(time.time() - T0, 1), tokens_seen=tokens,
               safetensors_sha256=hashlib.sha256(open(st, "rb").read()).hexdigest(),
               safetensors_bytes=os.path.getsize(st), load_avg_at_end=os.getloadavg())
    with open(log_path, "w") as f:
        json.dump(log, f, indent=1)
        f.write("\n")
    print(f"saved {out}: {log['safetensors_bytes']} bytes sha256 {log['safetensors_sha256']}; "
          f"train loop {train_s:.1f}s, total {log['total_wall_s']}s, {tokens} tokens", flush=True)


if __name__ == "__main__":
    main()
