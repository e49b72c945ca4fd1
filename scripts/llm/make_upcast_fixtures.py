#!/usr/bin/env python3
"""The exact oracle for checkpoints stored in f16 / bf16: transformers in f32 on those weights
upcast (exactly) to f32. Taskpath computes f16/bf16 weights times f32 activations, so this is the
function it should reproduce; llama.cpp's own F16 path also rounds activations to f16, which
costs it about 1e-3 relative (its fixtures stay as a second, looser comparison).

usage: make_upcast_fixtures.py OUT     (after make_fixtures.py; scripts/llm/oracles.sh runs it)
  writes OUT/fixtures/mixtral/hf-f16.{logits.f32,greedy.u32}  from OUT/mixtral-f16
         OUT/fixtures/olmoe/hf-bf16.{logits.f32,greedy.u32}   from OUT/olmoe-bf16
  and adds them to OUT/fixtures/manifest.json (same shapes and meaning as hf.*).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import Out, hf_reference, hf_run  # noqa: E402

SOURCES = [("mixtral", "mixtral-f16", "hf-f16"), ("olmoe", "olmoe-bf16", "hf-bf16")]


def main():
    out = sys.argv[1]
    froot = os.path.join(out, "fixtures")
    o = Out(froot)
    mpath = os.path.join(froot, "manifest.json")
    with open(mpath) as fh:
        manifest = json.load(fh)
    for arch, src, who in SOURCES:
        prompt = np.fromfile(os.path.join(froot, arch, "prompt.u32"), dtype="<u4").tolist()
        m = hf_reference(os.path.join(out, src))  # dtype=float32: the f16/bf16 weights upcast exactly
        logits, greedy, cons = hf_run(m, [int(t) for t in prompt])
        del m
        o.write(arch, f"{who}.logits", logits, f"transformers f32 on {src}'s weights upcast to f32, "
                                               "one forward of prompt + greedy[:32]")
        o.write(arch, f"{who}.greedy", greedy, f"transformers f32 greedy on {src}'s weights upcast")
        ref = np.fromfile(os.path.join(froot, arch, "hf.logits.f32"), dtype="<f4").reshape(logits.shape)
        err = float(np.abs(logits - ref).max() / np.abs(ref).max())
        manifest["archs"][arch].setdefault("agreement", {})[f"{who}_vs_hf_f32_max_rel"] = err
        print(f"{arch}: {who} vs f32 weights max_rel {err:.3e}, loop/forward {cons:.1e}")
    for rel, info in o.files.items():
        arch = rel.split("/")[0]
        manifest["archs"][arch]["files"][rel] = info
    with open(mpath, "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
