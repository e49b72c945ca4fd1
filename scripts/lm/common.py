"""Shared definitions of the lm-domains scripts (train.py, eval.py): domains, paths, model shapes,
tokenization and the perplexity definition."""
import math
import os

import numpy as np
import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
LM = os.path.join(ROOT, "models", "lm-domains")
CORPUS = os.path.join(LM, "corpus")
MODEL_DIR = os.path.join(LM, "model")
FIXTURES = os.path.join(LM, "fixtures")
WORK = os.path.join(LM, "work")                    # gitignored scratch (GGUF variants that are not committed)

# Fixed domain order: domain index i in every fixture is DOMAINS[i].
DOMAINS = ["en-bible", "rust", "python", "c-headers", "de-man", "fr-man", "es-man"]
CTX = 256                                          # training and evaluation window (tokens)


def model_config(dense=False, vocab_size=4096):
    """OLMoE shapes. MoE: 8 experts of SwiGLU width 256, top-2 (no renormalisation of the two weights,
    as in OLMoE and llama.cpp's olmoe graph). Dense: the same model with one expert of width 512 = top_k x 256,
    i.e. a dense SwiGLU FFN with the same active parameters per token (its 1-expert router's softmax is 1.0)."""
    from transformers import OlmoeConfig
    kw = dict(vocab_size=vocab_size, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=4,            # llama.cpp's olmoe loader needs n_kv_heads == n_heads
              max_position_embeddings=CTX, rms_norm_eps=1e-5, hidden_act="silu",
              initializer_range=0.02, tie_word_embeddings=False, attention_bias=False, clip_qkv=None,
              bos_token_id=0, eos_token_id=0, pad_token_id=1, norm_topk_prob=False,
              router_aux_loss_coef=0.01)
    if dense:
        kw.update(num_experts=1, num_experts_per_tok=1, intermediate_size=512, output_router_logits=False)
    else:
        kw.update(num_experts=8, num_experts_per_tok=2, intermediate_size=256, output_router_logits=True)
    return OlmoeConfig(**kw)


def tokenizer(model_dir=MODEL_DIR):
    from tokenizers import Tokenizer
    return Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))


def read(domain, split):
    with open(os.path.join(CORPUS, domain, f"{split}.txt"), encoding="utf-8") as f:
        return f.read()


def encode(tok, text):
    """Plain tokenization: no BOS/EOS or other special tokens are added."""
    return tok.encode(text, add_special_tokens=False).ids


def eval_windows(n_tokens, ctx=CTX):
    """Perplexity windows: [start, end) pairs that tile 0..n_tokens without overlap, each ctx long except
    possibly the last; a last window shorter than 2 tokens is dropped (it would score nothing)."""
    return [(s, min(s + ctx, n_tokens)) for s in range(0, n_tokens, ctx) if min(s + ctx, n_tokens) - s >= 2]


@torch.no_grad()
def perplexity(model, ids, ctx=CTX, batch=16, on_window=None):
    """Perplexity of token list `ids` (see eval_windows): every window is run on its own (fresh context,
    positions 0..len-1); position t predicts token t+1 within the window, so the first token of every
    window is conditioning only and is not scored. NLL = -log_softmax(f32 logits)[target], summed in f64.
    Returns (ppl, total_nll, n_scored). on_window(w_index, window_ids, outputs) is called for each window."""
    wins = eval_windows(len(ids), ctx)
    total, n = 0.0, 0
    for b0 in range(0, len(wins), batch):
        group = wins[b0:b0 + batch]
        # full windows are batched together; a short last window runs alone
        full = [w for w in group if w[1] - w[0] == ctx]
        parts = ([full] if full else []) + [[w] for w in group if w[1] - w[0] != ctx]
        for part in parts:
            x = torch.tensor([ids[s:e] for s, e in part], dtype=torch.long)
            out = model(input_ids=x, output_router_logits=getattr(model.config, "num_experts", 1) > 1)
            logp = torch.log_softmax(out.logits.float(), dim=-1)
            tgt = x[:, 1:]
            nll = -logp[:, :-1].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            total += float(nll.double().sum())
            n += tgt.numel()
            if on_window is not None:
                on_window(part, x, out)
    return math.exp(total / n), total, n


def unigram_ppl(train_ids, test_ids, vocab_size):
    """Add-one smoothed unigram model estimated on train_ids, scored on the same tokens of test_ids as
    perplexity() scores (every token except the first of each window)."""
    counts = np.bincount(np.asarray(train_ids), minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    scored = [t for s, e in eval_windows(len(test_ids)) for t in test_ids[s + 1:e]]
    return math.exp(-float(logp[np.asarray(scored)].mean())), len(scored)
