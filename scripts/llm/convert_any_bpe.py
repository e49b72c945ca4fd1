#!/usr/bin/env python3
"""Run llama.cpp's convert_hf_to_gguf.py with the BPE pre-tokenizer hash check bypassed.

Adapted from shared/LLM-TOOLCHAIN.md (appendix: convert_any_bpe.py).

usage: LLAMA_CPP_DIR=... [GGUF_PRE=gpt-2] convert_any_bpe.py MODEL_DIR --outtype f32 --outfile X.gguf

Our byte-level BPE tokenizer is not in llama.cpp's table of known tokenizer hashes, so the
converter stops with "BPE pre-tokenizer was not recognized". GGUF_PRE names the llama.cpp
pre-tokenizer to record instead; `gpt-2` is the one whose regex equals HF
ByteLevel(use_regex=True). SentencePiece models (Mixtral) never reach this hook.
"""
import os
import runpy
import sys

lc = os.environ["LLAMA_CPP_DIR"]
sys.path[:0] = [lc, os.path.join(lc, "gguf-py")]
import conversion.base as base  # noqa: E402  (from the llama.cpp tree)

base.TextModel.get_vocab_base_pre = lambda self, tokenizer: os.environ.get("GGUF_PRE", "gpt-2")
sys.argv = [os.path.join(lc, "convert_hf_to_gguf.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
