#!/usr/bin/env python3
"""Quantize a GGUF with libllama's quantizer (the code behind `llama-quantize`) through llama-cpp-python.

Adapted from shared/LLM-TOOLCHAIN.md (appendix: quantize_llamacpp.py).

usage: quantize_llamacpp.py IN.gguf OUT.gguf [FTYPE=Q4_0] [--pure]
FTYPE is any LLAMA_FTYPE_MOSTLY_* suffix (Q4_0, Q8_0, Q4_K_M, Q4_K_S, Q6_K, ...). --pure gives every
quantizable tensor the FTYPE's base type (no Q8_0/Q6_K mix for output.weight and attn_v); MoE routers
(ffn_gate_inp) and 1-D tensors stay F32. K-quants need row lengths divisible by 256, otherwise the
tensor falls back to another type (libllama prints "required fallback quantization").
"""
import sys

import llama_cpp

inp, out = sys.argv[1], sys.argv[2]
ftype = sys.argv[3] if len(sys.argv) > 3 and not sys.argv[3].startswith("--") else "Q4_0"
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
p.nthread = 2
p.pure = "--pure" in sys.argv
sys.exit(llama_cpp.llama_model_quantize(inp.encode(), out.encode(), p))
