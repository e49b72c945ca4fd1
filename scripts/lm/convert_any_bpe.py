#!/usr/bin/env python3
# Run llama.cpp's convert_hf_to_gguf.py with the BPE pre-tokenizer hash check bypassed.
# Copied from /work/shared/LLM-TOOLCHAIN.md (appendix "convert_any_bpe.py", verified 2026-12-04).
# Usage: LLAMA_CPP_DIR=... GGUF_PRE=gpt-2 python convert_any_bpe.py MODEL_DIR --outtype f16 --outfile X.gguf
# GGUF_PRE must name a llama.cpp pre-tokenizer whose regex equals the tokenizer's
# (HF ByteLevel(use_regex=True) == "gpt-2"); the converter only knows hashes of published vocabularies.
import os, sys, runpy
lc = os.environ["LLAMA_CPP_DIR"]
sys.path[:0] = [lc, os.path.join(lc, "gguf-py")]
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: os.environ.get("GGUF_PRE", "gpt-2")
sys.argv = [os.path.join(lc, "convert_hf_to_gguf.py")] + sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
