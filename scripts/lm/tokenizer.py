#!/usr/bin/env python3
"""Train the byte-level BPE tokenizer of the lm-domains model on the corpus train splits.

Usage: .venv-llm/bin/python scripts/lm/tokenizer.py [--vocab 4096] [--out models/lm-domains/model]

GPT-2-style: ByteLevel(add_prefix_space=False, use_regex=True) pre-tokenizer (its regex is llama.cpp's
`gpt-2` pre-tokenizer), ByteLevel decoder and post-processor, no normalizer. Ids 0 and 1 are the special
tokens <|endoftext|> and <|pad|>; they never occur in the corpus text. Recipe from LLM-TOOLCHAIN.md
(section 3, make_tokenizers.py), with the corpus train splits as input.
"""
import argparse, glob, json, os
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CORPUS = os.path.join(ROOT, "models", "lm-domains", "corpus")

ap = argparse.ArgumentParser()
ap.add_argument("--vocab", type=int, default=4096)
ap.add_argument("--out", default=os.path.join(ROOT, "models", "lm-domains", "model"))
a = ap.parse_args()

files = sorted(glob.glob(os.path.join(CORPUS, "*", "train.txt")))
assert len(files) == 7, files
tok = Tokenizer(models.BPE())
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
tok.decoder = decoders.ByteLevel()
tok.post_processor = processors.ByteLevel(trim_offsets=False)
trainer = trainers.BpeTrainer(vocab_size=a.vocab, min_frequency=2,
                              special_tokens=["<|endoftext|>", "<|pad|>"],
                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                              show_progress=False)
tok.train(files, trainer)
fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                               pad_token="<|pad|>", unk_token=None)
os.makedirs(a.out, exist_ok=True)
fast.save_pretrained(a.out)
print("vocab", tok.get_vocab_size(), "->", a.out)
for d in sorted(os.listdir(CORPUS)):
    p = os.path.join(CORPUS, d, "test.txt")
    if os.path.isfile(p):
        text = open(p, encoding="utf-8").read()
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text, d           # lossless round trip
        print(f"{d:10s} test bytes {len(text.encode()):6d} tokens {len(ids):6d} bytes/token {len(text.encode())/len(ids):.3f}")
