#!/usr/bin/env python3
"""Checks `taskpath export-onnx` output with onnx and onnxruntime.

For every manifest given: `onnx.checker.check_model` (full check) on every
graph, then every graph (f32 and int8) run by onnxruntime on every dumped
input under reference/<graph>/<k>/, compared with the CPU runtime's outputs
dumped beside it: max|ort - cpu| <= tol * max|cpu| per output, with `tol`
from the graph's manifest entry (f32: 1e-5; int8: by graph kind, docs/NPU.md). Prints one
row per (graph kind, precision) and exits non-zero on any failure.
"""
import json
import pathlib
import sys

import numpy as np
import onnx
import onnxruntime as ort


def rel_error(got, want):
    diff = float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))) if want.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    if np.isnan(diff):
        return float("inf")
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


def main(manifests):
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    worst = {}
    failures = []
    graphs_checked = 0
    for mpath in map(pathlib.Path, manifests):
        root = mpath.parent
        m = json.loads(mpath.read_text())
        assert m["opset"] == 17, m["opset"]
        for g in m["graphs"]:
            tol = g["tolerance"]
            refs = sorted((root / "reference" / g["name"]).glob("*"), key=lambda p: int(p.name))
            for prec, fname in g["files"].items():
                path = root / fname
                model = onnx.load(str(path))
                onnx.checker.check_model(model, full_check=True)
                graphs_checked += 1
                names_in = [i.name for i in model.graph.input]
                names_out = [o.name for o in model.graph.output]
                assert names_in == [p["name"] for p in g["inputs"]], (fname, names_in)
                assert names_out == [p["name"] for p in g["outputs"]], (fname, names_out)
                sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
                for r in refs:
                    feeds = {p["name"]: np.load(r / f"in.{p['name']}.npy") for p in g["inputs"]}
                    got = sess.run(None, feeds)
                    for p, v in zip(g["outputs"], got):
                        want = np.load(r / f"out.{p['name']}.npy")
                        assert v.shape == want.shape == tuple(p["shape"]), (fname, v.shape, want.shape)
                        e = rel_error(v, want)
                        key = (g["kind"], prec)
                        w = worst.setdefault(key, [0.0, 0])
                        w[0] = max(w[0], e)
                        w[1] += 1
                        if e > tol[prec]:
                            failures.append(f"{m['task']['name']}/{fname} sample {r.name} output {p['name']}: "
                                            f"relative error {e:.3e} > {tol[prec]:.0e}")
    print(f"onnx.checker: {graphs_checked} graphs OK; onnxruntime {ort.__version__}")
    print("| graph kind | precision | max relative error vs CPU runtime | outputs compared |")
    print("|---|---|---|---|")
    for (k, p), (e, n) in sorted(worst.items()):
        print(f"| {k} | {p} | {e:.2e} | {n} |")
    if not worst:
        failures.append("no reference values were found (run export-onnx with --dump-reference)")
    for f in failures:
        print("FAIL:", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: onnx_check.py DIR/manifest.json ...")
    sys.exit(main(sys.argv[1:]))
