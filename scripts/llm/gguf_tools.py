#!/usr/bin/env python3
"""GGUF re-quantization and dequantization with the `gguf` package (numpy only, no torch, no libllama).

Adapted from shared/LLM-TOOLCHAIN.md (appendix: quantize_gguf_py.py, dequantize_gguf.py).

usage: gguf_tools.py quantize IN_f32.gguf OUT.gguf [Q4_0|Q4_1|Q5_0|Q5_1|Q8_0]
       gguf_tools.py dequantize IN.gguf OUT_f32.gguf
       gguf_tools.py dump IN.gguf

quantize: every F32 tensor with >= 2 dims (ggml_n_dims) except the MoE routers (ffn_gate_inp) is quantized; one whose
row length is not a multiple of the block size (deepseek2 attn_k_b, row 16) becomes F16 instead, as in
libllama; the rest (norms, routers) is copied. For Q4_0 every tensor is byte-identical to libllama's
`llama-quantize --pure ... Q4_0` (checked on all six tiny archs, see scripts/llm/README.md).
dequantize: every tensor becomes F32 through gguf.quants.dequantize (the "oracle" GGUF for
quantized weights: run it in llama.cpp to separate weight error from llama.cpp's activation
quantization). gguf.quants has no K-quant *quantizer* but does dequantize Q4_K / Q6_K.
"""
import sys

import numpy as np
import gguf
from gguf.quants import dequantize, quantize

FTYPE = {"F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9}


def _copy_fields(r, w, file_type):
    for f in r.fields.values():
        if f.name == "general.architecture" or f.name.startswith("GGUF."):
            continue
        vt = f.types[0]
        st = f.types[-1] if vt == gguf.GGUFValueType.ARRAY else None
        val = file_type if f.name == "general.file_type" else f.contents()
        w.add_key_value(f.name, val, vt, sub_type=st)


def _finish(w):
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def requantize(inp, out, qname="Q4_0"):
    qt = gguf.GGMLQuantizationType[qname]
    r = gguf.GGUFReader(inp)
    w = gguf.GGUFWriter(out, r.fields["general.architecture"].contents())
    _copy_fields(r, w, FTYPE[qname])
    block = gguf.GGML_QUANT_SIZES[qt][0]
    for t in r.tensors:
        data = np.asarray(t.data)  # numpy shape is the reversed GGUF ne: (..., rows, row_len)
        # ggml_n_dims() >= 2 (trailing 1s do not count: qwen2moe's ffn_gate_inp_shexp [64, 1] is 1-D)
        quantizable = (t.tensor_type == gguf.GGMLQuantizationType.F32 and data.ndim >= 2
                       and int(np.prod(data.shape[:-1])) > 1 and not t.name.endswith("ffn_gate_inp.weight"))
        if quantizable and data.shape[-1] % block == 0:
            w.add_tensor(t.name, quantize(data, qt), raw_dtype=qt)
        elif quantizable:  # row length not a multiple of the block: F16, like libllama's fallback
            w.add_tensor(t.name, data.astype(np.float16), raw_dtype=gguf.GGMLQuantizationType.F16)
        else:
            w.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    _finish(w)


def dequantize_tensor(t):
    """F32 numpy array (shape = reversed GGUF ne) of a GGUFReader tensor."""
    return np.ascontiguousarray(dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32))


def dequantize_file(inp, out):
    r = gguf.GGUFReader(inp)
    w = gguf.GGUFWriter(out, r.fields["general.architecture"].contents())
    _copy_fields(r, w, 0)
    for t in r.tensors:
        w.add_tensor(t.name, dequantize_tensor(t), raw_dtype=gguf.GGMLQuantizationType.F32)
    _finish(w)


def dump(path):
    r = gguf.GGUFReader(path)
    for k, f in r.fields.items():
        if k.startswith("tokenizer.ggml.") and k.split(".")[-1] in ("tokens", "scores", "token_type", "merges"):
            print(f"  {k}: [{len(f.data)} items]")
            continue
        try:
            v = f.contents()
        except Exception:  # noqa: BLE001 - print what can be printed
            v = "?"
        print(f"  {k} = {v!r}"[:160])
    for t in r.tensors:
        print(f"  T {t.name} {t.tensor_type.name} ne={list(int(x) for x in t.shape)} offset={t.data_offset}")


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "quantize":
        requantize(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "Q4_0")
    elif cmd == "dequantize":
        dequantize_file(sys.argv[2], sys.argv[3])
    elif cmd == "dump":
        dump(sys.argv[2])
    else:
        sys.exit(__doc__)
